//! The supervisor's client: Unix-socket connections that speak the ipc
//! protocol, each call asserting the caller's identity.
//!
//! The ipc protocol carries one call at a time per connection, so
//! concurrency comes from connections:
//!
//! - each `StreamOutput` gets a connection of its own for its whole life
//!   (at most `max_output_streams` at once; more are refused with
//!   RESOURCE_EXHAUSTED): an idle one from the pool below if there is one
//!   (the one a start just used, typically), else a new one. Dropping the
//!   stream before its end closes the connection, which ends the stream on
//!   the supervisor's side too; after its end the connection goes back to
//!   the pool (the next start needs no connect and handshake);
//! - unary calls (at most `max_unary_calls` in flight; more wait their turn)
//!   take an idle connection from a small pool (at most
//!   `max_idle_supervisor_connections`, each kept at most
//!   [`IDLE_LIFETIME`]) or open a new one, and give it back after the
//!   answer. A pooled connection is checked for a hang-up before use, and a
//!   call that fails on one is retried once on a new connection, except a
//!   `StartJob` without a request id that the supervisor may have read
//!   (it is retried only when it provably never reached the supervisor,
//!   [`ClientError::unseen`]: a repeat would start a second job).
//!
//! Nothing is shared between calls but the pool, so a slow call (a stop
//! waiting out its grace period, a stream following a job) never holds up
//! another. Below the shared limits each user has a fair share
//! ([`crate::shares`]): at most `max_output_streams_per_user` streams and
//! `max_unary_calls_per_user` calls in flight (a user's further calls wait
//! for their own, holding nothing shared). A `StopJob`, which waits out a
//! job's grace period, takes one of the turns of its own
//! (`max_stop_calls`), never one of the `max_unary_calls`, so that hundreds
//! of stops leave every other call its turn. When the supervisor cannot be
//! reached a call fails at once with
//! [`SupervisorError::Unreachable`]; the next call tries again, so the
//! gateway recovers by itself when the supervisor is back.
//!
//! The connections themselves (connect, handshake, frames, their errors) are
//! [`jobworker_ipc::client`]'s; this module adds the pool, the limits, the
//! reachability watch, the messages for remote users, and the count of
//! reconnections (`jobworker_gateway_supervisor_reconnects_total`): a
//! connection opened after the gateway lost one (a pooled connection the
//! supervisor had closed, or one that failed a call) or failed to connect,
//! so one per recovery, not one per connection the pool opens.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jobworker_ipc::client::{self, ClientError, Connection, StreamFrame};
use jobworker_ipc::{FrameError, Identity, Request, Response};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::shares::{Share, ShareLimits, Shares, TooManyStreams};

/// How long an idle connection stays in the pool (well under the
/// supervisor's default idle timeout of 5 minutes).
pub const IDLE_LIFETIME: Duration = Duration::from_secs(30);

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
    /// The caller holds as many output streams as one user may.
    #[error(transparent)]
    UserBusy(#[from] TooManyStreams),
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

impl SupervisorError {
    /// Whether the supervisor went away (it is restarting, or stopped):
    /// worth trying again once it is back.
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Lost { .. })
    }
}

impl From<SupervisorError> for tonic::Status {
    fn from(e: SupervisorError) -> Self {
        let code = match e {
            SupervisorError::Unreachable { .. } | SupervisorError::Lost { .. } => {
                tonic::Code::Unavailable
            }
            SupervisorError::Protocol(_) | SupervisorError::Unexpected(_) => tonic::Code::Internal,
            SupervisorError::Busy { .. } | SupervisorError::UserBusy(_) => {
                tonic::Code::ResourceExhausted
            }
        };
        tonic::Status::new(code, e.to_string())
    }
}

impl From<ClientError> for SupervisorError {
    /// The error a remote user is told: without the socket's path.
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect { source, .. }
            | ClientError::ClosedInHandshake { source, .. }
            | ClientError::Handshake {
                source: FrameError::Io { source, .. },
                ..
            } => Self::Unreachable {
                reason: kind(&source),
            },
            ClientError::TimedOut { .. } => Self::Unreachable {
                reason: "timed out".into(),
            },
            ClientError::Handshake { source, .. } => Self::Protocol(source.to_string()),
            ClientError::Send { source, .. } | ClientError::Receive { source, .. } => {
                match source {
                    FrameError::Io { source, .. } => Self::Lost {
                        reason: kind(&source),
                    },
                    e @ FrameError::Truncated { .. } => Self::Lost {
                        reason: e.to_string(),
                    },
                    e => Self::Unexpected(e.to_string()),
                }
            }
            ClientError::Closed { .. } => Self::Lost {
                reason: "the supervisor closed the connection".into(),
            },
            ClientError::Unexpected {
                response, expected, ..
            } => Self::Unexpected(format!("{} where {expected} was due", response.name())),
        }
    }
}

/// How many connections the client may use.
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    /// Unary calls in flight at once.
    pub max_unary_calls: usize,
    /// Stops in flight at once.
    pub max_stop_calls: usize,
    /// Output streams open at once.
    pub max_output_streams: usize,
    /// Idle connections kept.
    pub max_idle: usize,
    /// Each user's share of the unary calls and the streams.
    pub per_user: ShareLimits,
}

/// The supervisor's client, shared by every call.
pub struct Supervisor {
    socket: PathBuf,
    connect_timeout: Duration,
    limits: PoolLimits,
    unary: Semaphore,
    stops: Semaphore,
    streams: Arc<Semaphore>,
    idle: Arc<Idle>,
    shares: Shares,
    reachable: watch::Sender<bool>,
    /// A connection was lost, or connecting failed, since the last
    /// connection was opened.
    lost: AtomicBool,
    reconnects: Counter,
}

impl Supervisor {
    /// A client of the supervisor at `socket`; nothing is connected yet.
    /// `reconnects` counts the connections opened after one was lost (see
    /// the module's documentation).
    pub fn new(
        socket: PathBuf,
        connect_timeout: Duration,
        limits: PoolLimits,
        reconnects: Counter,
    ) -> Self {
        Self {
            socket,
            connect_timeout,
            limits,
            unary: Semaphore::new(limits.max_unary_calls),
            stops: Semaphore::new(limits.max_stop_calls),
            streams: Arc::new(Semaphore::new(limits.max_output_streams)),
            idle: Arc::new(Idle {
                conns: Mutex::new(Vec::new()),
                max: limits.max_idle,
            }),
            shares: Shares::new(limits.per_user),
            reachable: watch::channel(true).0,
            lost: AtomicBool::new(false),
            reconnects,
        }
    }

    /// Whether the last connection attempt succeeded, and its changes.
    pub fn reachability(&self) -> watch::Receiver<bool> {
        self.reachable.subscribe()
    }

    /// One call with one answer (anything but `StreamOutput`) on behalf of
    /// `identity`: first a turn among the user's own calls, then one of the
    /// shared turns (a stop's among the stops').
    pub async fn call(
        &self,
        identity: &Identity,
        request: Request,
    ) -> Result<Response, SupervisorError> {
        let _share = self.shares.call(&identity.user).await;
        self.unary(Some(identity), request).await
    }

    /// One call the gateway makes on its own behalf, asserting no identity:
    /// the supervisor lets it `Ping` and read `Metrics`, nothing else.
    pub async fn call_own(&self, request: Request) -> Result<Response, SupervisorError> {
        self.unary(None, request).await
    }

    /// One call, in a shared turn: a stop (which waits out a job's grace
    /// period) in one of the stops', anything else in one of the others'.
    async fn unary(
        &self,
        identity: Option<&Identity>,
        request: Request,
    ) -> Result<Response, SupervisorError> {
        let turns = match request {
            Request::StopJob { .. } => &self.stops,
            _ => &self.unary,
        };
        let _turn = turns
            .acquire()
            .await
            .map_err(|_| SupervisorError::Unexpected("the client is shutting down".into()))?;
        // A start without a request id would start a second job if it were
        // repeated after the supervisor had read it.
        let repeatable = !matches!(&request, Request::StartJob(spec) if spec.request_id.is_none());
        if let Some(mut conn) = self.take_idle() {
            match exchange(&mut conn, identity, request.clone()).await {
                Ok(response) => {
                    self.put_idle(conn);
                    return Ok(response);
                }
                Err(e) if !repeatable && !e.unseen() => {
                    self.lost.store(true, Ordering::Relaxed);
                    return Err(e.into());
                }
                Err(e) => {
                    self.lost.store(true, Ordering::Relaxed);
                    tracing::debug!(error = %e, "a pooled supervisor connection failed; retrying");
                }
            }
        }
        let mut conn = self.connect().await?;
        let response = exchange(&mut conn, identity, request).await?;
        self.put_idle(conn);
        Ok(response)
    }

    /// Opens a `StreamOutput` call on a connection it keeps for its life.
    pub async fn stream(
        &self,
        identity: &Identity,
        request: Request,
    ) -> Result<OutputStream, SupervisorError> {
        let share = self.shares.stream(&identity.user)?;
        let slot =
            Arc::clone(&self.streams)
                .try_acquire_owned()
                .map_err(|_| SupervisorError::Busy {
                    max: self.limits.max_output_streams,
                })?;
        let slots = StreamSlots {
            _slot: slot,
            _share: share,
        };
        self.stream_in(slots, identity, request)
            .await
            .map_err(|(e, _)| e)
    }

    /// Opens a `StreamOutput` call in `slots` already held (a stream being
    /// resumed keeps its own); they come back with the error, if any.
    pub async fn stream_in(
        &self,
        slots: StreamSlots,
        identity: &Identity,
        request: Request,
    ) -> Result<OutputStream, (SupervisorError, StreamSlots)> {
        // An idle connection when there is one (the one a StartJob just
        // used, typically): no connect and handshake before the first byte.
        let conn = match self.take_idle() {
            Some(conn) => conn,
            None => match self.connect().await {
                Ok(conn) => conn,
                Err(e) => return Err((e, slots)),
            },
        };
        match conn.stream_as(identity, request).await {
            Ok(stream) => Ok(OutputStream {
                stream: Some(stream),
                slots,
                idle: Arc::clone(&self.idle),
            }),
            Err(e) => Err((e.into(), slots)),
        }
    }

    /// Waits on a connection of its own (outside the limits of the callers'
    /// streams: the fleet's agent follows each job it started) until `job`
    /// ends, and returns how it ended, or the supervisor's refusal. It
    /// follows the job from past the end of any output, so no output byte
    /// is sent.
    pub async fn await_end(
        &self,
        identity: &Identity,
        job: jobworker_ipc::JobId,
    ) -> Result<Result<jobworker_ipc::JobInfo, jobworker_ipc::IpcError>, SupervisorError> {
        let request = Request::StreamOutput {
            job,
            offset: i64::MAX.unsigned_abs(),
            follow: true,
        };
        let mut stream = self.stream_outside_limits(identity, request).await?;
        loop {
            match stream.next().await? {
                Some(StreamFrame::Output { .. }) => {}
                Some(StreamFrame::End(info)) => return Ok(Ok(*info)),
                Some(StreamFrame::Error(e)) => return Ok(Err(e)),
                None => {
                    return Err(SupervisorError::Lost {
                        reason: "the stream ended without the job's end".into(),
                    });
                }
            }
        }
    }

    /// Opens a `StreamOutput` call on a connection of its own, outside the
    /// limits of the callers' streams: for the gateway's own streams (the
    /// fleet's agent awaiting a job's end, the stream a job's followers
    /// share), each bounded by the callers' streams it serves.
    pub async fn stream_outside_limits(
        &self,
        identity: &Identity,
        request: Request,
    ) -> Result<client::OutputStream, SupervisorError> {
        Ok(self.connect().await?.stream_as(identity, request).await?)
    }

    /// A new connection, handshake done. A failure is logged here with the
    /// details (the socket's path among them) that the caller's error leaves
    /// out.
    async fn connect(&self) -> Result<Connection, SupervisorError> {
        match Connection::connect(&self.socket, self.connect_timeout).await {
            Ok(conn) => {
                if self.lost.swap(false, Ordering::Relaxed) {
                    self.reconnects.inc();
                }
                if self.set_reachable(true) {
                    tracing::info!(socket = %self.socket.display(), "the supervisor is reachable again");
                }
                Ok(conn)
            }
            Err(e) => {
                let detail = match &e {
                    ClientError::ClosedInHandshake { .. }
                    | ClientError::Handshake {
                        source: FrameError::Io { .. },
                        ..
                    } => format!(
                        "{e} (if the supervisor closed the connection at once, check that its \
                         gateway_user is this gateway's account and that its max_connections \
                         is not reached)"
                    ),
                    e => e.to_string(),
                };
                self.lost.store(true, Ordering::Relaxed);
                if self.set_reachable(false) {
                    tracing::warn!(socket = %self.socket.display(), error = %detail, "the supervisor is unreachable");
                } else {
                    tracing::debug!(socket = %self.socket.display(), error = %detail, "the supervisor is still unreachable");
                }
                Err(e.into())
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
    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.lock();
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() >= IDLE_LIFETIME {
                continue;
            }
            if conn.is_reusable() {
                return Some(conn);
            }
            // The supervisor closed it (it restarted, say).
            self.lost.store(true, Ordering::Relaxed);
        }
        None
    }

    fn put_idle(&self, conn: Connection) {
        self.idle.put(conn);
    }
}

/// The idle connections, each with when it was last used.
struct Idle {
    conns: Mutex<Vec<(Connection, Instant)>>,
    /// The most kept.
    max: usize,
}

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Connection, Instant)>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `conn` for the next call, if there is room and it is still
    /// open.
    fn put(&self, conn: Connection) {
        let mut idle = self.lock();
        idle.retain(|(_, since)| since.elapsed() < IDLE_LIFETIME);
        if idle.len() < self.max && conn.is_reusable() {
            idle.push((conn, Instant::now()));
        }
    }
}

/// One call on `conn`, on behalf of `identity` or of the gateway itself.
async fn exchange(
    conn: &mut Connection,
    identity: Option<&Identity>,
    request: Request,
) -> Result<Response, ClientError> {
    match identity {
        Some(identity) => conn.call_as(identity, request).await,
        None => conn.call(request).await,
    }
}

/// The frames of one `StreamOutput` call. Dropping it before its last
/// frame closes its connection, which ends the stream on the supervisor's
/// side; after its last frame the connection is idle again, and pooled for
/// the next call (a start, typically: no connect and handshake for it).
pub struct OutputStream {
    /// `None` once the last frame came.
    stream: Option<client::OutputStream>,
    slots: StreamSlots,
    idle: Arc<Idle>,
}

/// What an output stream holds of the limits: one of `max_output_streams`
/// and one of its user's share, kept while it is resumed.
pub struct StreamSlots {
    _slot: OwnedSemaphorePermit,
    _share: Share,
}

impl OutputStream {
    /// The next frame: `Output`, then `End` or `Error` last; `None` after it.
    pub async fn next(&mut self) -> Result<Option<StreamFrame>, SupervisorError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        let frame = stream.next().await?;
        if matches!(frame, Some(StreamFrame::End(_) | StreamFrame::Error(_)))
            && let Some(conn) = self.stream.take().and_then(client::OutputStream::into_idle)
        {
            self.idle.put(conn);
        }
        Ok(frame)
    }

    /// Closes the connection, keeping the slots (to resume in them).
    pub fn into_slots(self) -> StreamSlots {
        self.slots
    }
}

/// The kind of an I/O error in words ("connection refused"), for messages
/// that go to remote users: no paths.
fn kind(e: &io::Error) -> String {
    e.kind().to_string()
}
