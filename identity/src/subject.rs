//! The subject's common name (CN): who a certificate names.

use thiserror::Error;
use x509_parser::certificate::X509Certificate;

use crate::certificate::{CertificateParseError, parse_certificate};

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
