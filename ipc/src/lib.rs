//! The supervisor's protocol, spoken over its Unix socket by the gateway and
//! the operators' debug tool.
//!
//! - [`handshake`]: 8 bytes each way (magic + version) open every connection.
//! - [`frame`]: the pure codec: 4-byte big-endian length + bincode body,
//!   bounded before allocation, trailing bytes rejected. No I/O.
//! - [`message`]: the closed [`Request`] / [`Response`] enums.
//! - [`labels`]: jobs' labels and the selectors that find jobs by them.
//! - [`metrics`]: the supervisor's figures, as a metrics request answers.
//! - [`types`]: validated newtypes ([`JobId`], [`UserName`], [`Limits`], ...):
//!   a value that decoded is a value that validated.
//! - [`policy`]: who may do what with jobs, one pure function
//!   ([`policy::authorize`]) that the supervisor applies in full and the
//!   gateway as its role gate.
//! - [`error`]: the wire error [`IpcError`] and the local [`FrameError`].
//! - [`codec`]: the tokio-util adapter and the async handshake.
//! - [`client`]: the one client of the socket: connect with a timeout, the
//!   handshake, unary calls and output streams, typed errors that name the
//!   socket. No pool and no retries; its users add their own.
#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod labels;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod types;

pub use error::{ErrorCode, FrameError, IpcError};
pub use frame::MAX_FRAME_LEN;
pub use handshake::PROTOCOL_VERSION;
pub use labels::{LabelSelector, Labels};
pub use message::{
    Call, EnforcedLimits, JobInfo, JobSpec, JobState, ListCursor, MAX_OUTPUT_CHUNK, OutputData,
    Request, Response, ServerInfo, StopReason, Termination, Usage,
};
pub use metrics::{EndReason, SupervisorMetrics};
pub use types::{
    Args, Command, Env, EnvVar, GraceMs, Identity, Invalid, JobId, Limits, Owner, PageSize,
    RequestId, Role, TimeoutMs, UnixMicros, UnknownRole, UserName, WorkingDir,
};
