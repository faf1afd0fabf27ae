//! The two certificate authorities: one for the server, one for clients.
//!
//! They are kept apart so that a client certificate can never pass as the
//! gateway's, nor a server certificate as a client's.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use x509_parser::pem::parse_x509_pem;

use crate::error::Error;
use crate::files::{FileKind, Overwrite, WrittenFile, check_absent, write_file};
use crate::identity::subject;
use crate::keys;
use crate::validity::Validity;

/// Which certificate authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKind {
    /// Signs the gateway's server certificate; clients trust it.
    Server,
    /// Signs client certificates; the gateway trusts it.
    Client,
}

impl CaKind {
    /// Both authorities.
    pub const ALL: [CaKind; 2] = [CaKind::Server, CaKind::Client];

    /// The subject common name of the authority.
    pub const fn common_name(self) -> &'static str {
        match self {
            CaKind::Server => "jobworker server CA",
            CaKind::Client => "jobworker client CA",
        }
    }

    const fn file_stem(self) -> &'static str {
        match self {
            CaKind::Server => "server-ca",
            CaKind::Client => "client-ca",
        }
    }

    /// The authority's certificate in `dir`: `server-ca.pem` or `client-ca.pem`.
    pub fn cert_path(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.pem", self.file_stem()))
    }

    /// The authority's private key in `dir`: `server-ca.key` or `client-ca.key`.
    pub fn key_path(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.key", self.file_stem()))
    }
}

/// Creates both authorities in `dir`, writing each one's key then certificate.
///
/// With [`Overwrite::Refuse`], nothing is written if any of the four files exists.
pub fn init(
    dir: &Path,
    validity: &Validity,
    overwrite: Overwrite,
) -> Result<Vec<WrittenFile>, Error> {
    let paths: Vec<PathBuf> = CaKind::ALL
        .into_iter()
        .flat_map(|kind| [kind.key_path(dir), kind.cert_path(dir)])
        .collect();
    check_absent(&paths, overwrite)?;
    let mut written = Vec::new();
    for kind in CaKind::ALL {
        let issuer = create(kind, validity)?;
        let key_pem = issuer.key().serialize_pem();
        written.push(write_file(
            &kind.key_path(dir),
            key_pem.as_bytes(),
            FileKind::PrivateKey,
            overwrite,
        )?);
        written.push(write_file(
            &kind.cert_path(dir),
            issuer.pem().as_bytes(),
            FileKind::Certificate,
            overwrite,
        )?);
    }
    Ok(written)
}

fn create(kind: CaKind, validity: &Validity) -> Result<CertifiedIssuer<'static, KeyPair>, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(kind.common_name());
    validity.apply(&mut params);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, keys::generate(kind.common_name())?).map_err(|cause| {
        Error::Rcgen {
            op: format!("self-signing the {}", kind.common_name()),
            cause,
        }
    })
}

/// Loads an authority from `dir`, checking that its key matches its certificate.
pub(crate) fn load(dir: &Path, kind: CaKind) -> Result<Issuer<'static, KeyPair>, Error> {
    let cert_path = kind.cert_path(dir);
    let key_path = kind.key_path(dir);
    let invalid = |reason: String| Error::CaCertificate {
        path: cert_path.clone(),
        reason,
    };
    let bytes = fs::read(&cert_path).map_err(|cause| Error::Io {
        op: "reading CA certificate",
        path: cert_path.clone(),
        cause,
    })?;
    let (_, pem) = parse_x509_pem(&bytes).map_err(|err| invalid(err.to_string()))?;
    let cert = pem.parse_x509().map_err(|err| invalid(err.to_string()))?;
    let key = keys::load(&key_path)?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(Error::CaKeyMismatch {
            cert: cert_path,
            key: key_path,
        });
    }
    Issuer::from_ca_cert_der(&pem.contents.as_slice().into(), key)
        .map_err(|err| invalid(err.to_string()))
}
