//! The role extension: which of jobworker's roles a client certificate grants.
//!
//! The extension has OID [`ROLE_OID`] and holds one DER UTF8String naming the
//! role. It is non-critical, because TLS stacks (rustls among them) reject a
//! certificate carrying a critical extension they do not know.

use std::fmt;
use std::str::FromStr;

use rcgen::CustomExtension;
use thiserror::Error;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::Oid;

use crate::parse::{CertificateParseError, parse_certificate};

/// The OID of the role extension, as arcs.
pub const ROLE_OID: &[u64] = &[1, 2, 840, 10070, 8, 1];

/// The OID of the role extension, in dotted form.
pub const ROLE_OID_STR: &str = "1.2.840.10070.8.1";

/// A role that a client certificate grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Every operation on every job.
    Admin,
    /// Start jobs; stop, get, stream and list their own.
    User,
    /// Get, stream and list every job; never start or stop.
    Reader,
}

impl Role {
    /// Every role, in decreasing order of privilege.
    pub const ALL: [Role; 3] = [Role::Admin, Role::User, Role::Reader];

    /// The name of the role, as stored in the extension.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Reader => "reader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown role {0:?} (expected admin, user or reader)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Builds the non-critical role extension granting `role`.
pub fn role_extension(role: Role) -> CustomExtension {
    role_extension_value(role.as_str())
}

/// Builds a non-critical role extension holding any string as a DER UTF8String.
///
/// Only [`role_extension`] makes valid certificates; this exists so that tests
/// can produce a certificate naming an unknown role.
pub fn role_extension_value(value: &str) -> CustomExtension {
    let content = yasna::construct_der(|writer| writer.write_utf8_string(value));
    let mut extension = CustomExtension::from_oid_content(ROLE_OID, content);
    extension.set_criticality(false);
    extension
}

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
    /// The role extension's value is not a DER UTF8String.
    #[error("the role extension ({ROLE_OID_STR}) is not a DER UTF8String: {cause}")]
    Malformed {
        /// The decoding error.
        cause: yasna::ASN1Error,
    },
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
    let values: Vec<&[u8]> = cert
        .iter_extensions()
        .filter(|extension| is_role_oid(&extension.oid))
        .map(|extension| extension.value)
        .collect();
    match values.as_slice() {
        [] => Err(RoleError::Missing),
        [value] => {
            let name = yasna::parse_der(value, |reader| reader.read_utf8string())
                .map_err(|cause| RoleError::Malformed { cause })?;
            Ok(name.parse()?)
        }
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
    fn names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        assert_eq!(
            "Admin".parse::<Role>(),
            Err(UnknownRole("Admin".to_owned()))
        );
        assert_eq!("".parse::<Role>(), Err(UnknownRole(String::new())));
    }

    #[test]
    fn dotted_oid_matches_arcs() {
        let dotted: Vec<String> = ROLE_OID.iter().map(u64::to_string).collect();
        assert_eq!(dotted.join("."), ROLE_OID_STR);
    }

    #[test]
    fn extension_is_non_critical_utf8_string() {
        let extension = role_extension(Role::Reader);
        assert!(!extension.criticality());
        assert!(extension.oid_components().eq(ROLE_OID.iter().copied()));
        // UTF8String tag 12, length 6, "reader".
        assert_eq!(extension.content(), b"\x0c\x06reader");
    }
}
