//! Parsing a DER certificate with x509-parser, rejecting trailing bytes.

use thiserror::Error;
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::prelude::FromDer;

/// Why bytes could not be read as one DER certificate.
#[derive(Debug, Error)]
pub enum CertificateParseError {
    /// The bytes are not a DER X.509 certificate.
    #[error("parsing certificate DER: {0}")]
    Der(x509_parser::nom::Err<X509Error>),
    /// A certificate was read but bytes follow it.
    #[error("parsing certificate DER: {len} trailing bytes after the certificate")]
    TrailingData {
        /// How many bytes follow the certificate.
        len: usize,
    },
}

/// Parses exactly one DER-encoded X.509 certificate.
pub fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, CertificateParseError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(CertificateParseError::Der)?;
    if rest.is_empty() {
        Ok(cert)
    } else {
        Err(CertificateParseError::TrailingData { len: rest.len() })
    }
}
