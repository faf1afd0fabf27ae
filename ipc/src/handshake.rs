//! The handshake that opens every connection: each side first sends the
//! protocol's magic bytes and its protocol version (8 bytes, no frame around
//! them), then reads the other's. A peer with other magic does not speak this
//! protocol; a peer with another version is refused with both versions named.
//! Both sides send before they read, so neither waits for the other.

use crate::error::FrameError;

/// The magic bytes that start a connection.
pub const MAGIC: [u8; 6] = *b"JOBWKR";

/// The protocol version this crate speaks. Any change to a message's encoding
/// must bump it.
pub const PROTOCOL_VERSION: u16 = 3;

/// The size of a hello.
pub const HELLO_LEN: usize = 8;

/// Our hello: magic, then the version in big-endian.
pub fn hello() -> [u8; HELLO_LEN] {
    let mut out = [0; HELLO_LEN];
    out[..6].copy_from_slice(&MAGIC);
    out[6..].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out
}

/// Checks the peer's hello.
pub fn check_hello(theirs: &[u8; HELLO_LEN]) -> Result<(), FrameError> {
    let (magic, version) = theirs.split_at(6);
    if magic != MAGIC {
        let mut got = [0; 6];
        got.copy_from_slice(magic);
        return Err(FrameError::BadMagic(got));
    }
    let theirs = u16::from_be_bytes([version[0], version[1]]);
    if theirs != PROTOCOL_VERSION {
        return Err(FrameError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    Ok(())
}
