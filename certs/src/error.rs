//! The error type of the operations that create and write certificates.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why creating, loading or writing a certificate or key failed.
///
/// Each message names the operation and, where there is one, the file.
#[derive(Debug, Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{op} {}: {cause}", path.display())]
    Io {
        /// What was being done, e.g. "writing private key".
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        cause: io::Error,
    },
    /// An output file exists and overwriting was not allowed.
    #[error("refusing to overwrite existing file {} (pass --force to replace it)", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// Generating a key or signing a certificate failed.
    #[error("{op}: {cause}")]
    Rcgen {
        /// What was being done, e.g. "signing the client certificate of alice".
        op: String,
        /// The underlying error.
        cause: rcgen::Error,
    },
    /// A CA certificate file does not hold a usable certificate.
    #[error("reading CA certificate {}: {reason}", path.display())]
    CaCertificate {
        /// The CA certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A CA private key does not belong to the CA certificate beside it.
    #[error("CA key {} does not match CA certificate {}", key.display(), cert.display())]
    CaKeyMismatch {
        /// The CA certificate file.
        cert: PathBuf,
        /// The CA private key file.
        key: PathBuf,
    },
    /// A client user name is not allowed (see `jobworker_ipc::UserName`).
    #[error("invalid user name {name:?}: {reason}")]
    InvalidUserName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A server name is neither an IP address nor a DNS name.
    #[error("invalid server name {name:?}: not an IP address nor a DNS name")]
    InvalidServerName {
        /// The rejected name.
        name: String,
    },
    /// An output prefix is empty or is a path rather than a file name.
    #[error("invalid output prefix {prefix:?}: give a file name without '/'")]
    InvalidOutputPrefix {
        /// The rejected prefix.
        prefix: String,
    },
    /// The requested validity period is empty or out of range.
    #[error("invalid validity period: {reason}")]
    InvalidValidity {
        /// What is wrong with it.
        reason: String,
    },
}
