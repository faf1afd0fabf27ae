//! One connection: peer credentials, handshake (with a timeout), then calls
//! one at a time (with an idle timeout), each authorized, carried out by the
//! engine, answered, and written to the audit log. A frame that does not
//! decode closes this connection and nothing else. A client that closes the
//! connection during a stream ends the stream.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use jobworker_ipc::codec::{self, ServerFramed};
use jobworker_ipc::policy::Action;
use jobworker_ipc::{
    Call, FrameError, GraceMs, IpcError, JobId, JobInfo, JobSpec, JobState, LabelSelector,
    ListCursor, OutputData, PROTOCOL_VERSION, PageSize, Request, Response, ServerInfo,
};
use tokio::net::UnixStream;

use super::auth::{Peer, Principal, classify};
use crate::config::Config;
use crate::engine::{Chunk, Engine, OutputStream};

/// The most bytes of job records one list page carries, so that the page
/// fits a frame whatever the jobs' arguments; the cursor gets the rest.
const LIST_PAGE_BUDGET: usize = jobworker_ipc::MAX_FRAME_LEN / 2;

/// How much of an error's text an audit line keeps.
const AUDIT_ERROR_CHARS: usize = 200;

/// What every connection needs.
pub struct Context {
    /// The configuration.
    pub config: Config,
    /// The engine.
    pub engine: Arc<Engine>,
}

type Sink = futures::stream::SplitSink<ServerFramed<UnixStream>, Response>;
type Source = futures::stream::SplitStream<ServerFramed<UnixStream>>;

/// Serves one connection until it closes, fails, idles out or is refused.
pub async fn serve(stream: UnixStream, ctx: Arc<Context>) {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            tracing::warn!(error = %e, "reading the peer's credentials; closing");
            return;
        }
    };
    let peer_uid = cred.uid();
    let peer = match classify(cred.uid(), cred.gid(), &ctx.config) {
        Ok(peer) => peer,
        Err(reason) => {
            tracing::warn!(target: "audit", peer_uid, peer_pid = ?cred.pid(), %reason, "connection refused");
            return;
        }
    };
    let framed =
        match tokio::time::timeout(ctx.config.handshake_timeout, codec::server(stream)).await {
            Ok(Ok(framed)) => framed,
            Ok(Err(FrameError::Io { source, .. })) if is_hang_up(&source) => {
                // A peer that connects and leaves (a liveness probe) is no news.
                tracing::debug!(peer_uid, "peer left before the handshake");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(peer_uid, error = %e, "handshake failed; closing");
                return;
            }
            Err(_) => {
                tracing::warn!(peer_uid, "no handshake in time; closing");
                return;
            }
        };
    let (mut sink, mut source) = framed.split();
    loop {
        let call = match tokio::time::timeout(ctx.config.idle_timeout, source.next()).await {
            Err(_) => {
                tracing::debug!(peer_uid, "idle connection closed");
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                log_bad_frame(peer_uid, &e);
                return;
            }
            Ok(Some(Ok(call))) => call,
        };
        if handle(call, &peer, peer_uid, &ctx, &mut sink, &mut source)
            .await
            .is_err()
        {
            return;
        }
    }
}

fn is_hang_up(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
    )
}

fn log_bad_frame(peer_uid: u32, e: &FrameError) {
    // The error text names what was wrong, never the payload.
    tracing::warn!(peer_uid, error = %e, "bad frame; closing the connection");
}

/// The connection is done (the client went away or broke the protocol).
struct Closed;

/// What a request comes to: one response, or a stream of output frames.
enum Answer {
    /// One response, or the error to answer with.
    Reply(Result<Response, IpcError>),
    /// The job's output to stream, or the error to answer with.
    Stream(Result<OutputStream, IpcError>),
}

/// Serves one call: finds whom it is for, has it carried out, writes the
/// audit line and answers (with output frames for a stream).
async fn handle(
    call: Call,
    peer: &Peer,
    peer_uid: u32,
    ctx: &Context,
    sink: &mut Sink,
    source: &mut Source,
) -> Result<(), Closed> {
    let op = op_of(&call.request);
    let job = job_of(&call.request);
    let principal = match Principal::of(peer, call.on_behalf_of) {
        Ok(principal) => principal,
        Err(e) => {
            audit(peer_uid, None, op, job, Err(&e));
            return respond(sink, e).await;
        }
    };
    let caller = Some(&principal);
    match dispatch(call.request, &principal, ctx).await {
        Answer::Reply(response) => {
            let job = match &response {
                Ok(Response::Job(info)) => Some(info.id),
                _ => job,
            };
            audit(peer_uid, caller, op, job, response.as_ref().map(|_| ()));
            let response = response.unwrap_or_else(Response::Error);
            sink.send(response).await.map_err(|_| Closed)
        }
        Answer::Stream(Ok(stream)) => {
            audit(peer_uid, caller, op, job, Ok(()));
            stream_output(stream, sink, source).await
        }
        Answer::Stream(Err(e)) => {
            audit(peer_uid, caller, op, job, Err(&e));
            respond(sink, e).await
        }
    }
}

/// Carries out `request` for `principal`, authorized as its kind requires.
async fn dispatch(request: Request, principal: &Principal, ctx: &Context) -> Answer {
    let reply = match request {
        Request::Ping => Ok(pong(principal, ctx)),
        Request::StartJob(spec) => start(principal, spec, ctx).await,
        Request::StopJob { job, grace } => stop(principal, job, grace, ctx).await,
        Request::GetJob { job } => match authorize_job(principal, Action::Get, job, ctx) {
            Ok(()) => ctx
                .engine
                .get(job)
                .await
                .map(|info| Response::Job(Box::new(info))),
            Err(e) => Err(e),
        },
        Request::ListJobs {
            state,
            limit,
            after,
            labels,
        } => list(principal, state, &labels, limit, after, ctx).await,
        Request::Metrics => principal
            .authorize(Action::Metrics, None)
            .map(|()| Response::Metrics(Box::new(ctx.engine.metrics()))),
        Request::StreamOutput {
            job,
            offset,
            follow,
        } => {
            return Answer::Stream(
                authorize_job(principal, Action::Stream, job, ctx)
                    .and_then(|()| ctx.engine.output(job, offset, follow)),
            );
        }
    };
    Answer::Reply(reply)
}

/// The answer to a ping: the protocol version, the server's uptime, the
/// caller as the server sees it, and the cgroup root and controllers.
fn pong(principal: &Principal, ctx: &Context) -> Response {
    Response::Pong(ServerInfo {
        protocol_version: PROTOCOL_VERSION,
        uptime_ms: u64::try_from(ctx.engine.uptime().as_millis()).unwrap_or(u64::MAX),
        caller: principal.owner(),
        cgroup_root: ctx.engine.cgroup_root().display().to_string(),
        controllers: ctx
            .engine
            .controllers()
            .names()
            .into_iter()
            .map(String::from)
            .collect(),
    })
}

/// Starts a job owned by the caller, if the caller may start jobs.
async fn start(principal: &Principal, spec: JobSpec, ctx: &Context) -> Result<Response, IpcError> {
    principal.authorize(Action::Start, None)?;
    ctx.engine
        .start(principal.owner(), spec)
        .await
        .map(|info| Response::Job(Box::new(info)))
}

/// Stops a job the caller may stop, with the grace period it asks for (the
/// engine's default when it asks for none).
async fn stop(
    principal: &Principal,
    job: JobId,
    grace: Option<GraceMs>,
    ctx: &Context,
) -> Result<Response, IpcError> {
    authorize_job(principal, Action::Stop, job, ctx)?;
    ctx.engine
        .stop(job, grace.map(|g| Duration::from_millis(g.millis().into())))
        .await
        .map(|info| Response::Job(Box::new(info)))
}

/// One page of the jobs the caller may see (its own, or every job if it
/// sees all) that carry `labels`, cut to fit a frame.
async fn list(
    principal: &Principal,
    state: Option<JobState>,
    labels: &LabelSelector,
    limit: PageSize,
    after: Option<ListCursor>,
    ctx: &Context,
) -> Result<Response, IpcError> {
    principal.authorize(Action::List, None)?;
    let owner = principal.owner();
    let all = principal.sees_all();
    let (jobs, next) = ctx
        .engine
        .list(
            |job| all || job.spec.owner == owner,
            state,
            labels,
            limit.get() as usize,
            after,
        )
        .await;
    Ok(fit_page(jobs, next))
}

async fn respond(sink: &mut Sink, error: IpcError) -> Result<(), Closed> {
    sink.send(Response::Error(error)).await.map_err(|_| Closed)
}

/// Authorizes `op` on an existing job.
fn authorize_job(
    principal: &Principal,
    op: Action,
    job: JobId,
    ctx: &Context,
) -> Result<(), IpcError> {
    let found = ctx.engine.job(job)?;
    principal.authorize(op, Some((job, &found.spec.owner)))
}

/// Sends output frames until the stream ends, the client goes away, or the
/// client sends anything (which a stream does not allow).
async fn stream_output(
    mut stream: OutputStream,
    sink: &mut Sink,
    source: &mut Source,
) -> Result<(), Closed> {
    loop {
        let chunk = tokio::select! {
            chunk = stream.next() => chunk,
            _ = source.next() => return Err(Closed),
        };
        let response = match chunk {
            Ok(Some(Chunk::Data { offset, bytes })) => match OutputData::new(bytes) {
                Ok(data) => Response::Output { offset, data },
                Err(e) => Response::Error(IpcError::from(e)),
            },
            Ok(Some(Chunk::End(info))) => Response::End(info),
            Ok(None) => return Ok(()),
            Err(e) => Response::Error(IpcError::Internal {
                reason: format!("reading the job's output: {e}"),
            }),
        };
        let last = matches!(response, Response::End(_) | Response::Error(_));
        sink.send(response).await.map_err(|_| Closed)?;
        if last {
            return Ok(());
        }
    }
}

/// Cuts a page so that it fits a frame: jobs are kept while their encoded
/// size fits the budget; if any are cut, the cursor points after the last kept.
fn fit_page(jobs: Vec<JobInfo>, next: Option<ListCursor>) -> Response {
    let mut used = 0;
    let mut kept = Vec::with_capacity(jobs.len());
    let total = jobs.len();
    for job in jobs {
        let mut buf = Vec::new();
        let size = jobworker_ipc::frame::encode(&job, &mut buf).map_or(usize::MAX, |()| buf.len());
        if !kept.is_empty() && used + size > LIST_PAGE_BUDGET {
            break;
        }
        used = used.saturating_add(size);
        kept.push(job);
    }
    let next = if kept.len() < total {
        kept.last().map(|last| ListCursor {
            created_at: last.created_at,
            job: last.id,
        })
    } else {
        next
    };
    Response::Jobs { jobs: kept, next }
}

fn op_of(request: &Request) -> Action {
    match request {
        Request::Ping => Action::Ping,
        Request::StartJob(_) => Action::Start,
        Request::StopJob { .. } => Action::Stop,
        Request::GetJob { .. } => Action::Get,
        Request::ListJobs { .. } => Action::List,
        Request::StreamOutput { .. } => Action::Stream,
        Request::Metrics => Action::Metrics,
    }
}

fn job_of(request: &Request) -> Option<JobId> {
    match request {
        Request::StopJob { job, .. }
        | Request::GetJob { job }
        | Request::StreamOutput { job, .. } => Some(*job),
        Request::Ping | Request::StartJob(_) | Request::ListJobs { .. } | Request::Metrics => None,
    }
}

/// Writes the audit line of one request: who, from which uid, what, on which
/// job, and how it went. Never a payload or an environment value; error texts
/// (which may quote a command) are cut short.
fn audit(
    peer_uid: u32,
    caller: Option<&Principal>,
    op: Action,
    job: Option<JobId>,
    outcome: Result<(), &IpcError>,
) {
    let caller = caller.map_or_else(|| "-".to_owned(), Principal::name);
    let job = job.map_or_else(|| "-".to_owned(), |j| j.to_string());
    match outcome {
        Ok(()) => tracing::info!(
            target: "audit", peer_uid, %caller, op = op.name(), %job, outcome = "ok"
        ),
        Err(e) => {
            let mut error = e.to_string();
            if let Some((cut, _)) = error.char_indices().nth(AUDIT_ERROR_CHARS) {
                error.truncate(cut);
                error.push('…');
            }
            tracing::info!(
                target: "audit", peer_uid, %caller, op = op.name(), %job,
                outcome = ?e.code(), %error
            );
        }
    }
}
