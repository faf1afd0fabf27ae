//! Generating and loading ECDSA P-256 key pairs.

use std::fs;
use std::path::Path;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};

use crate::error::Error;

/// Generates a fresh ECDSA P-256 key pair for `owner` (named in errors).
pub(crate) fn generate(owner: &str) -> Result<KeyPair, Error> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|cause| Error::Rcgen {
        op: format!("generating the key pair of {owner}"),
        cause,
    })
}

/// Loads a PEM PKCS#8 private key.
pub(crate) fn load(path: &Path) -> Result<KeyPair, Error> {
    let pem = fs::read_to_string(path).map_err(|cause| Error::Io {
        op: "reading private key",
        path: path.to_path_buf(),
        cause,
    })?;
    KeyPair::from_pem(&pem).map_err(|cause| Error::Rcgen {
        op: format!("parsing private key {}", path.display()),
        cause,
    })
}
