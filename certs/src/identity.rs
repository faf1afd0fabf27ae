//! Who a certificate names: subjects, user names and reading the common name.

use rcgen::{DistinguishedName, DnType};
use thiserror::Error;
use x509_parser::certificate::X509Certificate;

use crate::parse::{CertificateParseError, parse_certificate};

/// The organization (O) in the subject of every certificate issued here.
pub const ORGANIZATION: &str = "jobworker";

/// The longest user name a client certificate may carry.
pub const MAX_USER_NAME_LEN: usize = 64;

/// A user name that a client certificate may not carry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid user name {name:?}: use 1 to {MAX_USER_NAME_LEN} characters from A-Z a-z 0-9 . _ - \
     (names with ':' are reserved for local identities)"
)]
pub struct InvalidUserName {
    /// The rejected name.
    pub name: String,
}

/// Checks that `name` is 1 to [`MAX_USER_NAME_LEN`] characters of `[A-Za-z0-9._-]`.
pub fn validate_user_name(name: &str) -> Result<(), InvalidUserName> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if (1..=MAX_USER_NAME_LEN).contains(&name.len()) && name.chars().all(allowed) {
        Ok(())
    } else {
        Err(InvalidUserName {
            name: name.to_owned(),
        })
    }
}

/// The subject `O=jobworker, CN=common_name`.
pub(crate) fn subject(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    name
}

/// Why the subject common name of a certificate could not be read.
#[derive(Debug, Error)]
pub enum CommonNameError {
    /// The bytes are not a certificate.
    #[error(transparent)]
    Certificate(#[from] CertificateParseError),
    /// The subject has no common name.
    #[error("the certificate subject has no common name")]
    Missing,
    /// The subject has more than one common name.
    #[error("the certificate subject has {count} common names; one is allowed")]
    Multiple {
        /// How many common names it has.
        count: usize,
    },
    /// The common name is not a UTF-8 string.
    #[error("the certificate subject common name is not a UTF-8 string")]
    NotUtf8,
}

/// Reads the single subject common name (CN) of a DER-encoded certificate.
pub fn common_name_from_der(der: &[u8]) -> Result<String, CommonNameError> {
    common_name_of(&parse_certificate(der)?).map(str::to_owned)
}

/// Reads the single subject common name (CN) of a parsed certificate.
pub fn common_name_of<'a>(cert: &'a X509Certificate<'a>) -> Result<&'a str, CommonNameError> {
    let names: Vec<_> = cert.subject().iter_common_name().collect();
    match names.as_slice() {
        [] => Err(CommonNameError::Missing),
        [name] => name.as_str().map_err(|_| CommonNameError::NotUtf8),
        many => Err(CommonNameError::Multiple { count: many.len() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for good in ["alice", "a", "Bob_2.x-y", &"z".repeat(MAX_USER_NAME_LEN)] {
            assert_eq!(validate_user_name(good), Ok(()), "{good}");
        }
        let too_long = "z".repeat(MAX_USER_NAME_LEN + 1);
        for bad in ["", "local:alice", "a b", "a/b", "é", too_long.as_str()] {
            assert!(validate_user_name(bad).is_err(), "{bad}");
        }
    }
}
