//! Certificates for jobworker's mutual-TLS gateway.
//!
//! The library creates two separate certificate authorities (one signs the
//! gateway's server certificate, the other signs client certificates), issues
//! leaf certificates from them, and writes them to disk with safe modes.
//!
//! It also holds what the gateway reuses to read a client's identity: the
//! [`ROLE_OID`] extension with its [`Role`] values ([`role_of`],
//! [`role_from_der`]), and the subject common name ([`common_name_of`],
//! [`common_name_from_der`]).
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
mod parse;
mod role;
mod validity;

pub use ca::{CaKind, init};
pub use error::Error;
pub use files::{FileKind, Overwrite, WrittenFile};
pub use identity::{
    CommonNameError, InvalidUserName, MAX_USER_NAME_LEN, ORGANIZATION, common_name_from_der,
    common_name_of, validate_user_name,
};
pub use leaf::{ClientRequest, ServerRequest, issue_client, issue_server};
pub use parse::{CertificateParseError, parse_certificate};
pub use role::{
    ROLE_OID, ROLE_OID_STR, Role, RoleError, UnknownRole, role_extension, role_extension_value,
    role_from_der, role_of,
};
pub use validity::{CLOCK_SKEW, Validity};
