//! Issuing leaf certificates: the gateway's server certificate and client certificates.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType, string::Ia5String,
};

use crate::ca::{self, CaKind};
use crate::error::Error;
use crate::files::{FileKind, Overwrite, WrittenFile, check_absent, write_file};
use crate::identity::subject;
use crate::keys;
use crate::role::role_extension_value;
use crate::validity::Validity;

/// What to put in the gateway's server certificate.
#[derive(Debug, Clone)]
pub struct ServerRequest {
    /// The subject common name, also the first subject alternative name.
    pub host: String,
    /// More subject alternative names: IP addresses, else DNS names.
    pub extra_names: Vec<String>,
    /// When the certificate is valid.
    pub validity: Validity,
    /// The output files are `<prefix>.pem` and `<prefix>.key`.
    pub prefix: String,
    /// Whether existing output files may be replaced.
    pub overwrite: Overwrite,
}

/// What to put in a client certificate.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// The user name, the subject common name: a valid
    /// [`UserName`](jobworker_ipc::UserName).
    pub user: String,
    /// The values of the role extensions, one extension each.
    ///
    /// A valid certificate has exactly one, a [`Role`](jobworker_ipc::Role) name; none,
    /// several, or another string only make certificates for negative tests.
    pub role_values: Vec<String>,
    /// When the certificate is valid.
    pub validity: Validity,
    /// The output files are `<prefix>.pem` and `<prefix>.key`.
    pub prefix: String,
    /// Whether existing output files may be replaced.
    pub overwrite: Overwrite,
}

/// Issues the gateway's server certificate, signed by the server CA in `dir`.
///
/// The certificate is for TLS server authentication only; `<prefix>.pem`
/// holds it alone, without the CA certificate.
pub fn issue_server(dir: &Path, request: &ServerRequest) -> Result<Vec<WrittenFile>, Error> {
    let mut names = vec![request.host.clone()];
    for name in &request.extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut params = leaf_params(&request.host, &request.validity);
    params.subject_alt_names = names
        .into_iter()
        .map(subject_alt_name)
        .collect::<Result<_, _>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let owner = format!("the server certificate of {}", request.host);
    issue(
        dir,
        CaKind::Server,
        params,
        &owner,
        &request.prefix,
        request.overwrite,
    )
}

/// Issues a client certificate, signed by the client CA in `dir`.
///
/// The certificate is for TLS client authentication only and carries the
/// role extensions of [`ClientRequest::role_values`].
pub fn issue_client(dir: &Path, request: &ClientRequest) -> Result<Vec<WrittenFile>, Error> {
    jobworker_ipc::UserName::new(request.user.as_str()).map_err(|e| Error::InvalidUserName {
        name: request.user.clone(),
        reason: e.reason,
    })?;
    let mut params = leaf_params(&request.user, &request.validity);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.custom_extensions = request
        .role_values
        .iter()
        .map(|value| role_extension_value(value))
        .collect();
    let owner = format!("the client certificate of {}", request.user);
    issue(
        dir,
        CaKind::Client,
        params,
        &owner,
        &request.prefix,
        request.overwrite,
    )
}

/// Parameters common to both leaves: subject, validity, not a CA, signing only.
fn leaf_params(common_name: &str, validity: &Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name);
    validity.apply(&mut params);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params
}

fn subject_alt_name(name: String) -> Result<SanType, Error> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if !is_dns_name(&name) {
        return Err(Error::InvalidServerName { name });
    }
    Ia5String::try_from(name.as_str())
        .map(SanType::DnsName)
        .map_err(|_| Error::InvalidServerName { name })
}

/// Whether `name` is a DNS name of letters, digits and hyphens, possibly with
/// a leading `*.` wildcard label.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    name.len() <= 253 && name.split('.').all(label_ok)
}

/// Signs `params` with a fresh key and writes `<prefix>.key` then `<prefix>.pem`.
fn issue(
    dir: &Path,
    ca: CaKind,
    params: CertificateParams,
    owner: &str,
    prefix: &str,
    overwrite: Overwrite,
) -> Result<Vec<WrittenFile>, Error> {
    if prefix.is_empty() || prefix.contains('/') {
        return Err(Error::InvalidOutputPrefix {
            prefix: prefix.to_owned(),
        });
    }
    let key_path = dir.join(format!("{prefix}.key"));
    let cert_path = dir.join(format!("{prefix}.pem"));
    check_absent(&[&key_path, &cert_path], overwrite)?;
    let issuer = ca::load(dir, ca)?;
    let key = keys::generate(owner)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|cause| Error::Rcgen {
            op: format!("signing {owner}"),
            cause,
        })?;
    Ok(vec![
        write_file(
            &key_path,
            key.serialize_pem().as_bytes(),
            FileKind::PrivateKey,
            overwrite,
        )?,
        write_file(
            &cert_path,
            cert.pem().as_bytes(),
            FileKind::Certificate,
            overwrite,
        )?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for good in ["localhost", "gw.example.com", "*.example.com", "a-1.b"] {
            assert!(is_dns_name(good), "{good}");
        }
        for bad in [
            "",
            "a..b",
            "-a",
            "a-",
            "a b",
            "é.com",
            "a.*.b",
            &"x".repeat(64),
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn subject_alt_names() {
        assert!(matches!(
            subject_alt_name("127.0.0.1".into()),
            Ok(SanType::IpAddress(_))
        ));
        assert!(matches!(
            subject_alt_name("::1".into()),
            Ok(SanType::IpAddress(_))
        ));
        assert!(matches!(
            subject_alt_name("gw.local".into()),
            Ok(SanType::DnsName(_))
        ));
        assert!(matches!(
            subject_alt_name("no spaces".into()),
            Err(Error::InvalidServerName { .. })
        ));
    }
}
