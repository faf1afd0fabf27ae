//! Errors: [`IpcError`] travels on the wire as the supervisor's answer to a
//! call that failed; [`FrameError`] is what reading or writing frames can go
//! wrong with locally.

use serde::{Deserialize, Serialize};

use crate::types::{Invalid, JobId};

/// Why the supervisor refused or failed a call. Each variant has exactly one
/// [`ErrorCode`], which the gateway maps one to one onto a gRPC status code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum IpcError {
    /// A field of the request is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field, as the user would name it.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No such job, or none the caller may see.
    #[error("no job {job}")]
    NotFound {
        /// The id asked for.
        job: JobId,
    },
    /// The caller may not do this.
    #[error("permission denied: {reason}")]
    PermissionDenied {
        /// Why not.
        reason: String,
    },
    /// A limit or the server's capacity refuses the request.
    #[error("resource exhausted: {reason}")]
    ResourceExhausted {
        /// Which limit.
        reason: String,
    },
    /// The request is valid but cannot be carried out on this host, e.g. a
    /// limit that cannot be enforced while strict limits are configured, or a
    /// command that cannot be executed.
    #[error("{reason}")]
    FailedPrecondition {
        /// Why not.
        reason: String,
    },
    /// The server cannot take the call right now (e.g. it is shutting down);
    /// retrying later may work.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// Something failed inside the server; its log says more.
    #[error("internal error: {reason}")]
    Internal {
        /// What failed.
        reason: String,
    },
}

/// The kind of an [`IpcError`], named after the gRPC status code it becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// `INVALID_ARGUMENT`.
    InvalidArgument,
    /// `NOT_FOUND`.
    NotFound,
    /// `PERMISSION_DENIED`.
    PermissionDenied,
    /// `RESOURCE_EXHAUSTED`.
    ResourceExhausted,
    /// `FAILED_PRECONDITION`.
    FailedPrecondition,
    /// `UNAVAILABLE`.
    Unavailable,
    /// `INTERNAL`.
    Internal,
}

impl IpcError {
    /// The error's code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Self::NotFound { .. } => ErrorCode::NotFound,
            Self::PermissionDenied { .. } => ErrorCode::PermissionDenied,
            Self::ResourceExhausted { .. } => ErrorCode::ResourceExhausted,
            Self::FailedPrecondition { .. } => ErrorCode::FailedPrecondition,
            Self::Unavailable { .. } => ErrorCode::Unavailable,
            Self::Internal { .. } => ErrorCode::Internal,
        }
    }
}

impl From<Invalid> for IpcError {
    fn from(e: Invalid) -> Self {
        Self::InvalidArgument {
            field: e.field,
            reason: e.reason,
        }
    }
}

/// What can go wrong reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`crate::MAX_FRAME_LEN`] bytes;
    /// nothing was allocated for it.
    #[error("frame of {len} bytes announced, the limit is {max}")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The connection ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({missing} bytes missing)")]
    Truncated {
        /// How many bytes were still expected.
        missing: usize,
    },
    /// The body decoded but did not use every byte of the frame.
    #[error("frame has {extra} bytes after its message")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// The body is not a valid message (including a field that fails
    /// validation).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A message to send does not fit in a frame.
    #[error("message of {len} bytes does not fit in a frame (limit {max})")]
    EncodeTooLarge {
        /// The encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message could not be encoded.
    #[error("encoding a frame: {0}")]
    Encode(String),
    /// The peer's handshake did not start with the protocol's magic bytes: it
    /// does not speak this protocol.
    #[error("the peer does not speak the jobworker ipc protocol (bad magic {0:02x?})")]
    BadMagic([u8; 6]),
    /// The peer speaks another version of the protocol.
    #[error(
        "protocol version mismatch: we speak {ours}, the peer speaks {theirs}; \
         run the same jobworker version on both sides"
    )]
    VersionMismatch {
        /// Ours.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// Reading or writing the socket failed.
    #[error("{op} on the ipc socket: {source}")]
    Io {
        /// What was being done ("reading", "writing", "handshake").
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<std::io::Error> for FrameError {
    fn from(source: std::io::Error) -> Self {
        Self::Io {
            op: "reading or writing",
            source,
        }
    }
}
