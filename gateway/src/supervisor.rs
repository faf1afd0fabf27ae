//! The supervisor's client: Unix-socket connections that speak the ipc
//! protocol, each call asserting the caller's identity.
//!
//! The ipc protocol carries one call at a time per connection, so
//! concurrency comes from connections:
//!
//! - each `StreamOutput` gets a connection of its own for its whole life
//!   (at most `max_output_streams` at once; more are refused with
//!   RESOURCE_EXHAUSTED). Dropping the stream closes the connection, which
//!   ends the stream on the supervisor's side too;
//! - unary calls (at most `max_unary_calls` in flight; more wait their turn)
//!   take an idle connection from a small pool (at most
//!   `max_idle_supervisor_connections`, each kept at most
//!   [`IDLE_LIFETIME`]) or open a new one, and give it back after the
//!   answer. A pooled connection is checked for a hang-up before use, and a
//!   call that fails on one is retried once on a new connection, except a
//!   `StartJob` without a request id, which is never repeated and always
//!   gets a new connection.
//!
//! Nothing is shared between calls but the pool, so a slow call (a stop
//! waiting out its grace period, a stream following a job) never holds up
//! another. When the supervisor cannot be reached a call fails at once with
//! [`SupervisorError::Unreachable`]; the next call tries again, so the
//! gateway recovers by itself when the supervisor is back.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use jobworker_ipc::codec::{self, ClientFramed};
use jobworker_ipc::{Call, FrameError, Identity, Request, Response};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How long an idle connection stays in the pool (well under the
/// supervisor's default idle timeout of 5 minutes).
pub const IDLE_LIFETIME: Duration = Duration::from_secs(30);

type Conn = ClientFramed<UnixStream>;

/// Why a call to the supervisor failed (the supervisor's own refusals are
/// answers, not errors: see [`Response::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// No connection could be made.
    #[error("the job supervisor is unreachable ({reason}); try again later")]
    Unreachable {
        /// Why, without the socket's path.
        reason: String,
    },
    /// The connection broke before the answer was complete.
    #[error("the connection to the job supervisor was lost ({reason}); try again later")]
    Lost {
        /// Why.
        reason: String,
    },
    /// The supervisor does not speak our protocol version.
    #[error("the gateway and the job supervisor do not speak the same protocol: {0}")]
    Protocol(String),
    /// The supervisor sent something that is not a valid answer.
    #[error("the job supervisor sent an invalid answer: {0}")]
    Unexpected(String),
    /// Too many output streams are open.
    #[error(
        "too many output streams are open on this gateway (max_output_streams = {max}); \
         try again later"
    )]
    Busy {
        /// The limit.
        max: usize,
    },
}

impl From<SupervisorError> for tonic::Status {
    fn from(e: SupervisorError) -> Self {
        let code = match e {
            SupervisorError::Unreachable { .. } | SupervisorError::Lost { .. } => {
                tonic::Code::Unavailable
            }
            SupervisorError::Protocol(_) | SupervisorError::Unexpected(_) => tonic::Code::Internal,
            SupervisorError::Busy { .. } => tonic::Code::ResourceExhausted,
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// How many connections the client may use.
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    /// Unary calls in flight at once.
    pub max_unary_calls: usize,
    /// Output streams open at once.
    pub max_output_streams: usize,
    /// Idle connections kept.
    pub max_idle: usize,
}

/// The supervisor's client, shared by every call.
pub struct Supervisor {
    socket: PathBuf,
    connect_timeout: Duration,
    limits: PoolLimits,
    unary: Semaphore,
    streams: Arc<Semaphore>,
    idle: Mutex<Vec<(Conn, Instant)>>,
    reachable: watch::Sender<bool>,
}

impl Supervisor {
    /// A client of the supervisor at `socket`; nothing is connected yet.
    pub fn new(socket: PathBuf, connect_timeout: Duration, limits: PoolLimits) -> Self {
        Self {
            socket,
            connect_timeout,
            limits,
            unary: Semaphore::new(limits.max_unary_calls),
            streams: Arc::new(Semaphore::new(limits.max_output_streams)),
            idle: Mutex::new(Vec::new()),
            reachable: watch::channel(true).0,
        }
    }

    /// Whether the last connection attempt succeeded, and its changes.
    pub fn reachability(&self) -> watch::Receiver<bool> {
        self.reachable.subscribe()
    }

    /// One call with one answer (anything but `StreamOutput`) on behalf of
    /// `identity`.
    pub async fn call(
        &self,
        identity: &Identity,
        request: Request,
    ) -> Result<Response, SupervisorError> {
        let _turn = self
            .unary
            .acquire()
            .await
            .map_err(|_| SupervisorError::Unexpected("the client is shutting down".into()))?;
        let repeatable = !matches!(&request, Request::StartJob(spec) if spec.request_id.is_none());
        let call = Call {
            on_behalf_of: Some(identity.clone()),
            request,
        };
        if repeatable && let Some(conn) = self.take_idle() {
            match exchange(conn, call.clone()).await {
                Ok((response, conn)) => {
                    self.put_idle(conn);
                    return Ok(response);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a pooled supervisor connection failed; retrying");
                }
            }
        }
        let conn = self.connect().await?;
        let (response, conn) = exchange(conn, call).await?;
        self.put_idle(conn);
        Ok(response)
    }

    /// Opens a `StreamOutput` call on a connection of its own.
    pub async fn stream(
        &self,
        identity: &Identity,
        request: Request,
    ) -> Result<OutputStream, SupervisorError> {
        let slot =
            Arc::clone(&self.streams)
                .try_acquire_owned()
                .map_err(|_| SupervisorError::Busy {
                    max: self.limits.max_output_streams,
                })?;
        let mut conn = self.connect().await?;
        conn.send(Call {
            on_behalf_of: Some(identity.clone()),
            request,
        })
        .await
        .map_err(lost)?;
        Ok(OutputStream { conn, _slot: slot })
    }

    /// A new connection, handshake done. A failure is logged here with the
    /// details (the socket's path among them) that the caller's error leaves
    /// out.
    async fn connect(&self) -> Result<Conn, SupervisorError> {
        let unreachable = |e: &io::Error| SupervisorError::Unreachable { reason: kind(e) };
        let attempt = async {
            let stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| (unreachable(&e), format!("connecting: {e}")))?;
            codec::client(stream).await.map_err(|e| match e {
                FrameError::Io { source, .. } => (
                    unreachable(&source),
                    format!(
                        "handshake: {source} (if the supervisor closed the connection at once, \
                         check that its gateway_user is this gateway's account and that its \
                         max_connections is not reached)"
                    ),
                ),
                e => (SupervisorError::Protocol(e.to_string()), e.to_string()),
            })
        };
        let result = match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err((
                SupervisorError::Unreachable {
                    reason: "timed out".into(),
                },
                format!("no connection within {:?}", self.connect_timeout),
            )),
        };
        match result {
            Ok(conn) => {
                if self.set_reachable(true) {
                    tracing::info!(socket = %self.socket.display(), "the supervisor is reachable again");
                }
                Ok(conn)
            }
            Err((error, detail)) => {
                if self.set_reachable(false) {
                    tracing::warn!(socket = %self.socket.display(), error = %detail, "the supervisor is unreachable");
                } else {
                    tracing::debug!(socket = %self.socket.display(), error = %detail, "the supervisor is still unreachable");
                }
                Err(error)
            }
        }
    }

    /// Records whether the supervisor was reached; true if that changed.
    fn set_reachable(&self, reachable: bool) -> bool {
        self.reachable.send_if_modified(|current| {
            let changed = *current != reachable;
            *current = reachable;
            changed
        })
    }

    /// A pooled connection that is still open, if any.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_LIFETIME && is_open(&conn) {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|(_, since)| since.elapsed() < IDLE_LIFETIME);
        if idle.len() < self.limits.max_idle && conn.read_buffer().is_empty() {
            idle.push((conn, Instant::now()));
        }
    }
}

/// The answers of one `StreamOutput` call. Dropping it closes its
/// connection, which ends the stream on the supervisor's side.
pub struct OutputStream {
    conn: Conn,
    _slot: OwnedSemaphorePermit,
}

impl OutputStream {
    /// The next frame: `Output`, then `End` or `Error` last.
    pub async fn next(&mut self) -> Result<Response, SupervisorError> {
        receive(&mut self.conn).await
    }
}

/// Sends `call` and reads its one answer; the connection comes back with it.
async fn exchange(mut conn: Conn, call: Call) -> Result<(Response, Conn), SupervisorError> {
    conn.send(call).await.map_err(lost)?;
    let response = receive(&mut conn).await?;
    match response {
        Response::Output { .. } | Response::End(_) => Err(SupervisorError::Unexpected(
            "an output frame to a call that is not a stream".into(),
        )),
        response => Ok((response, conn)),
    }
}

async fn receive(conn: &mut Conn) -> Result<Response, SupervisorError> {
    match conn.next().await {
        Some(Ok(response)) => Ok(response),
        Some(Err(e)) => Err(lost(e)),
        None => Err(SupervisorError::Lost {
            reason: "the supervisor closed the connection".into(),
        }),
    }
}

fn lost(e: FrameError) -> SupervisorError {
    match e {
        FrameError::Io { source, .. } => SupervisorError::Lost {
            reason: kind(&source),
        },
        FrameError::Truncated { .. } => SupervisorError::Lost {
            reason: e.to_string(),
        },
        e => SupervisorError::Unexpected(e.to_string()),
    }
}

/// The kind of an I/O error in words ("connection refused"), for messages
/// that go to remote users: no paths.
fn kind(e: &io::Error) -> String {
    e.kind().to_string()
}

/// Whether an idle connection is still open: the supervisor has not hung up
/// (a read would block) and sent nothing unasked.
fn is_open(conn: &Conn) -> bool {
    let mut byte = [0; 1];
    matches!(conn.get_ref().try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}
