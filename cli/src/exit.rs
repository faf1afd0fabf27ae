//! The errors of both tools and the exit code of each kind.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other failure (the server failed, a job FAILED, a local I/O error) |
//! | 2 | usage: a bad command line or setting, an argument the server refused as invalid, an ambiguous job id prefix |
//! | 3 | connection or TLS: the server is unreachable or unavailable, a TLS handshake or certificate problem, the supervisor's socket is missing |
//! | 4 | permission denied or unauthenticated (including a supervisor that refuses the connection) |
//! | 5 | not found: no such job, or none the caller may see |
//! | 130 | `jobctl run` interrupted by Ctrl-C (after stopping the job) |
//! | 141 | standard output was closed (as if killed by SIGPIPE) |
//!
//! `jobctl run` otherwise exits with the job's exit code, or 128 + the
//! number of the signal that killed it.

use jobworker_ipc::{ErrorCode, FrameError, IpcError};

/// Any other failure.
pub const OTHER: u8 = 1;
/// A usage error.
pub const USAGE: u8 = 2;
/// A connection or TLS failure.
pub const CONNECTION: u8 = 3;
/// Permission denied or unauthenticated.
pub const PERMISSION: u8 = 4;
/// No such job.
pub const NOT_FOUND: u8 = 5;
/// `jobctl run` was interrupted with Ctrl-C.
pub const INTERRUPTED: u8 = 130;
/// `jobctl run` stopped its job on SIGTERM (128 + 15).
pub const TERMINATED: u8 = 143;
/// Standard output was closed by its reader.
pub const STDOUT_CLOSED: u8 = 141;

/// The exit codes as shown in `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    other failure (server error, job FAILED, local I/O error)
  2    usage error (bad arguments or settings, invalid request, ambiguous id prefix)
  3    connection or TLS failure (unreachable or unavailable server, certificate problem)
  4    permission denied or unauthenticated
  5    job not found
  141  standard output closed";

/// Which kind of failure an error is, which sets the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Anything else.
    Other,
    /// The command line, a setting or an argument is wrong.
    Usage,
    /// The server or socket cannot be reached or spoken to securely.
    Connection,
    /// The caller may not do this, or was not authenticated.
    Permission,
    /// No such job.
    NotFound,
    /// Standard output was closed.
    StdoutClosed,
}

impl Class {
    /// The exit code.
    pub fn code(self) -> u8 {
        match self {
            Self::Other => OTHER,
            Self::Usage => USAGE,
            Self::Connection => CONNECTION,
            Self::Permission => PERMISSION,
            Self::NotFound => NOT_FOUND,
            Self::StdoutClosed => STDOUT_CLOSED,
        }
    }

    /// The class of a gRPC status code.
    pub fn of_grpc(code: tonic::Code) -> Self {
        use tonic::Code;
        match code {
            Code::InvalidArgument | Code::OutOfRange => Self::Usage,
            Code::Unavailable => Self::Connection,
            Code::Unauthenticated | Code::PermissionDenied => Self::Permission,
            Code::NotFound => Self::NotFound,
            _ => Self::Other,
        }
    }

    /// The class of a supervisor error code.
    pub fn of_ipc(code: ErrorCode) -> Self {
        match code {
            ErrorCode::InvalidArgument => Self::Usage,
            ErrorCode::Unavailable => Self::Connection,
            ErrorCode::PermissionDenied => Self::Permission,
            ErrorCode::NotFound => Self::NotFound,
            ErrorCode::ResourceExhausted | ErrorCode::FailedPrecondition | ErrorCode::Internal => {
                Self::Other
            }
        }
    }
}

/// What went wrong. Each message is one line that says what failed and, where
/// it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad argument or setting.
    #[error("{0}")]
    Usage(String),
    /// A TLS file (CA, certificate, key) cannot be used.
    #[error("{what}: {detail}")]
    Tls {
        /// What was being done.
        what: String,
        /// Why it failed.
        detail: String,
    },
    /// The connection to the gateway could not be made.
    #[error("cannot connect to {server}: {detail} ({hint})")]
    Connect {
        /// The server address.
        server: String,
        /// Why.
        detail: String,
        /// What to check.
        hint: &'static str,
    },
    /// A gRPC call failed.
    #[error("{what}: {message}")]
    Rpc {
        /// What was being done.
        what: String,
        /// The status code.
        code: tonic::Code,
        /// The server's message (and any transport detail), with a hint.
        message: String,
        /// The call failed in the connection (TLS, HTTP/2), not at the server.
        transport: bool,
    },
    /// A lost connection that did not come back in time.
    #[error("{error} (gave up after {}s of trying to reconnect)", after.as_secs())]
    GaveUp {
        /// How long it was retried.
        after: std::time::Duration,
        /// The last error.
        error: Box<CliError>,
    },
    /// A job id prefix matches no job the caller may see.
    #[error("no job matches {prefix:?} among the jobs you may see (see the ids in the job list)")]
    NoSuchJob {
        /// The prefix as given.
        prefix: String,
    },
    /// A job id prefix matches more than one job.
    #[error("job id prefix {prefix:?} matches {} jobs: {}; give more characters", candidates.len(), shown(candidates))]
    AmbiguousId {
        /// The prefix as given.
        prefix: String,
        /// The ids it matches.
        candidates: Vec<String>,
    },
    /// The supervisor's socket cannot be reached.
    #[error(
        "cannot connect to the supervisor at {path}: {error} ({})",
        socket_hint(error)
    )]
    Socket {
        /// The socket.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// The supervisor closed the connection before its handshake: it refuses
    /// this peer.
    #[error(
        "the supervisor refused this connection: run as root or as a member of the operator group"
    )]
    Refused,
    /// The supervisor closed the connection before its handshake although
    /// this peer is root: it is at capacity or shutting down.
    #[error(
        "the supervisor closed the connection before the handshake (too many connections, or shutting down? see its log)"
    )]
    ClosedEarly,
    /// The supervisor closed the connection instead of answering.
    #[error("the supervisor closed the connection without answering {what} (see its log)")]
    HungUp {
        /// What was asked.
        what: String,
    },
    /// The supervisor answered a call with an error.
    #[error("{what}: {error}")]
    Ipc {
        /// What was being done.
        what: String,
        /// The supervisor's error.
        error: IpcError,
    },
    /// Talking to the supervisor failed (framing, version, I/O).
    #[error("{what}: {error}")]
    Frame {
        /// What was being done.
        what: String,
        /// The error.
        error: FrameError,
    },
    /// Something unexpected: an answer the protocol does not allow here, or
    /// a local failure of no other kind.
    #[error("{0}")]
    Unexpected(String),
    /// A job ended FAILED (in `jobctl run`).
    #[error("job {id} FAILED: {failure}")]
    JobFailed {
        /// The job.
        id: String,
        /// Why.
        failure: String,
    },
    /// Writing standard output failed.
    #[error("writing the output: {0}")]
    Output(std::io::Error),
    /// The fleet's database could not be reached or refused a query.
    #[error("the fleet's database: {error} (is PostgreSQL up, and database_url in [fleet] right?)")]
    Database {
        /// The failure, naming the operation.
        error: jobworker_fleet::DbError,
    },
    /// No host of the fleet has this id.
    #[error("no host {host:?} is registered in the fleet (see jobworker-debug hosts)")]
    NoSuchHost {
        /// The id as given.
        host: String,
    },
}

fn shown(candidates: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = candidates
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if candidates.len() > SHOWN {
        text.push_str(&format!(" and {} more", candidates.len() - SHOWN));
    }
    text
}

fn socket_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => "run as root or as a member of the socket's group",
        _ => "is jobworker-supervisor running? pass its socket with --socket or JOBWORKER_SOCKET",
    }
}

impl CliError {
    /// The kind of failure.
    pub fn class(&self) -> Class {
        match self {
            Self::Usage(_) | Self::AmbiguousId { .. } => Class::Usage,
            Self::Tls { .. }
            | Self::Connect { .. }
            | Self::Frame { .. }
            | Self::ClosedEarly
            | Self::HungUp { .. } => Class::Connection,
            Self::Rpc {
                transport: true, ..
            } => Class::Connection,
            Self::Rpc { code, .. } => Class::of_grpc(*code),
            Self::GaveUp { .. } => Class::Connection,
            Self::NoSuchJob { .. } | Self::NoSuchHost { .. } => Class::NotFound,
            Self::Database { error } if error.unreachable() => Class::Connection,
            Self::Database { .. } => Class::Other,
            Self::Socket { error, .. } => match error.kind() {
                std::io::ErrorKind::PermissionDenied => Class::Permission,
                _ => Class::Connection,
            },
            Self::Refused => Class::Permission,
            Self::Ipc { error, .. } => Class::of_ipc(error.code()),
            Self::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Class::StdoutClosed,
            Self::Unexpected(_) | Self::JobFailed { .. } | Self::Output(_) => Class::Other,
        }
    }

    /// The exit code.
    pub fn exit_code(&self) -> u8 {
        self.class().code()
    }

    /// Whether the message is worth printing: a closed standard output is
    /// the reader's choice, not news.
    pub fn is_silent(&self) -> bool {
        self.class() == Class::StdoutClosed
    }
}

/// The exit code of an error that reached a binary's edge: the code of the
/// first [`CliError`] in its chain, else [`OTHER`].
pub fn code_of(error: &anyhow::Error) -> u8 {
    class_of(error).map_or(OTHER, Class::code)
}

/// The class of the first [`CliError`] in an error's chain.
pub fn class_of(error: &anyhow::Error) -> Option<Class> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<CliError>())
        .map(CliError::class)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobworker_ipc::JobId;

    fn rpc(code: tonic::Code) -> CliError {
        CliError::Rpc {
            what: "x".into(),
            code,
            message: "y".into(),
            transport: false,
        }
    }

    #[test]
    fn grpc_codes() {
        use tonic::Code;
        for (code, exit) in [
            (Code::InvalidArgument, USAGE),
            (Code::Unavailable, CONNECTION),
            (Code::Unauthenticated, PERMISSION),
            (Code::PermissionDenied, PERMISSION),
            (Code::NotFound, NOT_FOUND),
            (Code::Internal, OTHER),
            (Code::FailedPrecondition, OTHER),
            (Code::ResourceExhausted, OTHER),
            (Code::Unknown, OTHER),
        ] {
            assert_eq!(rpc(code).exit_code(), exit, "{code:?}");
        }
        let broken = CliError::Rpc {
            what: "x".into(),
            code: Code::Unknown,
            message: "connection error: received fatal alert".into(),
            transport: true,
        };
        assert_eq!(broken.exit_code(), CONNECTION);
    }

    #[test]
    fn ipc_errors() {
        let job = JobId::random();
        for (error, exit) in [
            (IpcError::NotFound { job }, NOT_FOUND),
            (
                IpcError::PermissionDenied { reason: "r".into() },
                PERMISSION,
            ),
            (
                IpcError::InvalidArgument {
                    field: "f".into(),
                    reason: "r".into(),
                },
                USAGE,
            ),
            (IpcError::Unavailable { reason: "r".into() }, CONNECTION),
            (IpcError::Internal { reason: "r".into() }, OTHER),
        ] {
            let e = CliError::Ipc {
                what: "x".into(),
                error,
            };
            assert_eq!(e.exit_code(), exit, "{e}");
        }
    }

    #[test]
    fn local_errors() {
        use std::io::{Error, ErrorKind};
        assert_eq!(CliError::Usage("u".into()).exit_code(), USAGE);
        assert_eq!(
            CliError::AmbiguousId {
                prefix: "a".into(),
                candidates: vec!["a1".into(), "a2".into()]
            }
            .exit_code(),
            USAGE
        );
        assert_eq!(
            CliError::NoSuchJob { prefix: "a".into() }.exit_code(),
            NOT_FOUND
        );
        let connect = CliError::Connect {
            server: "https://h:1".into(),
            detail: "refused".into(),
            hint: "h",
        };
        assert_eq!(connect.exit_code(), CONNECTION);
        let tls = CliError::Tls {
            what: "w".into(),
            detail: "d".into(),
        };
        assert_eq!(tls.exit_code(), CONNECTION);
        assert_eq!(CliError::Refused.exit_code(), PERMISSION);
        let socket = |kind| CliError::Socket {
            path: "/s".into(),
            error: Error::from(kind),
        };
        assert_eq!(socket(ErrorKind::NotFound).exit_code(), CONNECTION);
        assert_eq!(socket(ErrorKind::PermissionDenied).exit_code(), PERMISSION);
        let pipe = CliError::Output(Error::from(ErrorKind::BrokenPipe));
        assert_eq!(pipe.exit_code(), STDOUT_CLOSED);
        assert!(pipe.is_silent());
        assert_eq!(
            CliError::Output(Error::from(ErrorKind::Other)).exit_code(),
            OTHER
        );
    }

    #[test]
    fn the_edge_finds_the_cli_error_in_a_chain() {
        let e = anyhow::Error::new(rpc(tonic::Code::NotFound)).context("more context");
        assert_eq!(code_of(&e), NOT_FOUND);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), OTHER);
    }

    #[test]
    fn messages_are_one_line() {
        let e = CliError::AmbiguousId {
            prefix: "ab".into(),
            candidates: (0..10).map(|i| format!("ab{i}")).collect(),
        };
        let text = e.to_string();
        assert!(
            text.contains("matches 10 jobs") && text.contains("and 2 more"),
            "{text}"
        );
        assert!(!text.contains('\n'));
        assert!(CliError::Refused.to_string().contains("operator group"));
    }
}
