//! The role extension: which of jobworker's roles a client certificate
//! grants.
//!
//! The extension has OID [`ROLE_OID`] and holds one DER UTF8String naming the
//! role ([`Role::as_str`]). It is non-critical, because TLS stacks (rustls
//! among them) reject a certificate carrying a critical extension they do
//! not know.

use jobworker_ipc::{Role, UnknownRole};
use thiserror::Error;
use x509_parser::asn1_rs::FromDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::Oid;

use crate::certificate::{CertificateParseError, parse_certificate};

/// The OID of the role extension, as arcs.
pub const ROLE_OID: &[u64] = &[1, 2, 840, 10070, 8, 1];

/// The OID of the role extension, in dotted form.
pub const ROLE_OID_STR: &str = "1.2.840.10070.8.1";

/// Why a certificate grants no role.
#[derive(Debug, Error)]
pub enum RoleError {
    /// The bytes are not a certificate.
    #[error(transparent)]
    Certificate(#[from] CertificateParseError),
    /// The certificate has no role extension.
    #[error("the certificate has no role extension ({ROLE_OID_STR})")]
    Missing,
    /// The certificate has more than one role extension.
    #[error("the certificate has {count} role extensions ({ROLE_OID_STR}); one is allowed")]
    Duplicate {
        /// How many role extensions it has.
        count: usize,
    },
    /// The role extension's value is not exactly one DER UTF8String.
    #[error("the role extension ({ROLE_OID_STR}) is malformed: not a DER UTF8String")]
    Malformed,
    /// The role extension names no known role.
    #[error("the role extension names an {0}")]
    Unknown(#[from] UnknownRole),
}

/// Reads the role granted by a DER-encoded certificate.
pub fn role_from_der(der: &[u8]) -> Result<Role, RoleError> {
    role_of(&parse_certificate(der)?)
}

/// Reads the role granted by a parsed certificate.
pub fn role_of(cert: &X509Certificate<'_>) -> Result<Role, RoleError> {
    Ok(role_name_of(cert)?.parse()?)
}

/// The text of a parsed certificate's one role extension, whatever role
/// it names.
pub fn role_name_of(cert: &X509Certificate<'_>) -> Result<String, RoleError> {
    let values: Vec<&[u8]> = cert
        .iter_extensions()
        .filter(|extension| is_role_oid(&extension.oid))
        .map(|extension| extension.value)
        .collect();
    match values.as_slice() {
        [] => Err(RoleError::Missing),
        [value] => match String::from_der(value) {
            Ok(([], name)) => Ok(name),
            _ => Err(RoleError::Malformed),
        },
        many => Err(RoleError::Duplicate { count: many.len() }),
    }
}

fn is_role_oid(oid: &Oid<'_>) -> bool {
    oid.iter()
        .is_some_and(|arcs| arcs.eq(ROLE_OID.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_oid_matches_arcs() {
        let dotted: Vec<String> = ROLE_OID.iter().map(u64::to_string).collect();
        assert_eq!(dotted.join("."), ROLE_OID_STR);
    }
}
