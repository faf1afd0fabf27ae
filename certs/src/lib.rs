//! Certificates for jobworker's mutual-TLS gateway.
//!
//! The library creates two separate certificate authorities (one signs the
//! gateway's server certificate, the other signs client certificates), issues
//! leaf certificates from them, and writes them to disk with safe modes.
//!
//! What a certificate says is read by `jobworker_identity` (the gateway's
//! side, x509-parser only); the roles and the user-name rule are
//! `jobworker_ipc`'s ([`Role`](jobworker_ipc::Role),
//! [`UserName`](jobworker_ipc::UserName)).
//!
//! Keys are ECDSA P-256, generated afresh for every certificate. Serial numbers
//! are left to rcgen, which derives them from the new public key (20 bytes of
//! its SHA-256 digest), so they are as unpredictable as the key.

#![forbid(unsafe_code)]

mod ca;
mod error;
mod files;
mod identity;
mod keys;
mod leaf;
mod role;
mod validity;

pub use ca::{CaKind, init};
pub use error::Error;
pub use files::{FileKind, Overwrite, WrittenFile};
pub use identity::ORGANIZATION;
pub use leaf::{ClientRequest, ServerRequest, issue_client, issue_server};
pub use role::{role_extension, role_extension_value};
pub use validity::{CLOCK_SKEW, Validity};
