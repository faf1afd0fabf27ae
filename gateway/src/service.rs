//! `jobworker.v1.JobService`: each call takes the caller's identity from its
//! connection, passes the role gate of `jobworker_ipc::policy` (a role that
//! may never make the call is refused here, at no cost to the supervisor),
//! has its fields validated ([`crate::convert`]), and is forwarded to the
//! supervisor on the caller's behalf ([`crate::supervisor`]) in one round
//! trip. The supervisor applies the same policy in full: a job of another
//! user is NOT_FOUND there. Every call is logged with who made it, on which
//! job, and how it ended; never with its payload.
//!
//! In fleet mode the calls go through [`crate::fleet`] instead (the
//! fleet's database, and the gateway of the host where a job runs). The
//! same service also serves a fleet's peer port ([`Port::Peer`]): there
//! only the fleet's gateways call, for the callers they name, and nothing
//! is forwarded again.
//!
//! An output stream outlives its supervisor connection: when the supervisor
//! goes away (a restart), the stream is opened again from the first byte
//! not yet sent, with backoff, for up to [`RESUME_LIMIT`]; the gRPC client
//! sees a pause, not an error, and no byte twice. The followers of one job
//! share one supervisor stream once it has two ([`crate::fanout`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use jobworker_ipc::client::StreamFrame;
use jobworker_ipc::policy::{self, Action, Actor};
use jobworker_ipc::{Identity, IpcError, JobId, JobInfo, Request as IpcRequest, Response as Ipc};
use jobworker_proto::v1;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::fanout::{Fanout, Follower, Member, Shared};
use crate::fleet::Fleet;
use crate::fleet::calls::{Got, Place, Shown, Stopped};
use crate::fleet::peers::{ON_BEHALF_OF_ROLE, ON_BEHALF_OF_USER};
use crate::listener::ConnInfo;
use crate::supervisor::{OutputStream, StreamSlots, Supervisor, SupervisorError};

/// How long an output stream whose supervisor went away is retried before
/// the client is told (UNAVAILABLE).
pub const RESUME_LIMIT: Duration = Duration::from_secs(60);

/// The first and the longest pause between attempts to resume.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// The stream of a `StreamOutput` call.
pub type OutputChunks = Pin<Box<dyn Stream<Item = Result<v1::OutputChunk, Status>> + Send>>;

/// Which port a job service serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// The public port: callers with client certificates.
    Public,
    /// A fleet's peer port: the other hosts' gateways, forwarding
    /// `GetJob`, `StopJob` and `StreamOutput` of this host's jobs for the
    /// callers they name (see [`crate::fleet::peers`]).
    Peer,
}

/// The job service.
pub struct JobService {
    port: Port,
    supervisor: Arc<Supervisor>,
    /// The shared streams of followed jobs.
    fanout: Arc<Fanout>,
    /// Turns true when the gateway stops: output streams end then.
    stopping: watch::Receiver<bool>,
    /// Fleet mode's state, in fleet mode.
    fleet: Option<Arc<Fleet>>,
}

impl JobService {
    /// The service, forwarding to `supervisor`, its followers sharing the
    /// streams of `fanout`; its output streams end when `stopping` turns
    /// true. In fleet mode, `fleet` serves the calls over the fleet. It
    /// serves `port`.
    pub fn new(
        port: Port,
        supervisor: Arc<Supervisor>,
        fanout: Arc<Fanout>,
        stopping: watch::Receiver<bool>,
        fleet: Option<Arc<Fleet>>,
    ) -> Self {
        Self {
            port,
            supervisor,
            fanout,
            stopping,
            fleet,
        }
    }

    /// The fleet's hosts, from its database.
    async fn hosts(&self) -> Result<v1::ListHostsResponse, Status> {
        let Some(fleet) = &self.fleet else {
            return Err(Status::failed_precondition(
                "this gateway is in no fleet: its configuration has no [fleet] table",
            ));
        };
        fleet.list_hosts().await
    }

    /// One call that answers with one job.
    async fn job_call(&self, identity: &Identity, request: IpcRequest) -> Result<JobInfo, Status> {
        match self.supervisor.call(identity, request).await? {
            Ipc::Job(info) => Ok(*info),
            Ipc::Error(e) => Err(convert::status_of(&e)),
            other => Err(unexpected(&other)),
        }
    }

    async fn start(
        &self,
        identity: &Identity,
        mut request: v1::StartJobRequest,
    ) -> Result<(v1::StartJobResponse, JobId), Status> {
        let placement = std::mem::take(&mut request.placement);
        let placement = jobworker_ipc::Labels::new("placement", placement.into_iter().collect())
            .map_err(convert::invalid)?;
        let spec = convert::job_spec(request).map_err(convert::invalid)?;
        let job = match &self.fleet {
            Some(fleet) => fleet.start_job(identity, spec, placement).await?,
            None if !placement.is_empty() => {
                return Err(convert::invalid(jobworker_ipc::Invalid {
                    field: "placement".into(),
                    reason: "this gateway is in no fleet: its host runs every job it starts".into(),
                }));
            }
            None => self
                .job_call(identity, IpcRequest::StartJob(spec))
                .await?
                .into(),
        };
        let id = convert::job_id(&job.id).map_err(convert::invalid)?;
        Ok((
            v1::StartJobResponse {
                job_id: job.id.clone(),
                job: Some(job),
            },
            id,
        ))
    }

    async fn stop(
        &self,
        identity: &Identity,
        job: JobId,
        grace_period: Option<prost_types::Duration>,
    ) -> Result<v1::StopJobResponse, Status> {
        let grace = convert::grace(grace_period).map_err(convert::invalid)?;
        if let Some(fleet) = &self.fleet {
            return match fleet.stop_job(identity, job, grace).await? {
                Stopped::Job(job) => Ok(v1::StopJobResponse { job: Some(*job) }),
                Stopped::Elsewhere { host } => {
                    self.not_here(&host)?;
                    let request = v1::StopJobRequest {
                        job_id: job.to_string(),
                        grace_period,
                    };
                    fleet.forward_stop(identity, &host, request).await
                }
            };
        }
        let info = self
            .job_call(identity, IpcRequest::StopJob { job, grace })
            .await?;
        Ok(v1::StopJobResponse {
            job: Some(info.into()),
        })
    }

    async fn list(
        &self,
        identity: &Identity,
        request: v1::ListJobsRequest,
    ) -> Result<v1::ListJobsResponse, Status> {
        let query = convert::list_query(request).map_err(convert::invalid)?;
        if let Some(fleet) = &self.fleet {
            return fleet.list_jobs(identity, query).await;
        }
        let Some(request) = convert::list_request(query) else {
            // No job of one host is ever queued.
            return Ok(v1::ListJobsResponse::default());
        };
        match self.supervisor.call(identity, request).await? {
            Ipc::Jobs { jobs, next } => Ok(v1::ListJobsResponse {
                jobs: jobs.into_iter().map(v1::Job::from).collect(),
                next_page_token: next.as_ref().map(convert::page_token).unwrap_or_default(),
            }),
            Ipc::Error(e) => Err(convert::status_of(&e)),
            other => Err(unexpected(&other)),
        }
    }

    /// On the peer port, a job of another host is an error (a forwarded
    /// call is never forwarded again); on the public port, it is
    /// forwarded.
    fn not_here(&self, host: &str) -> Result<(), Status> {
        match self.port {
            Port::Public => Ok(()),
            Port::Peer => Err(Status::failed_precondition(format!(
                "the job runs on host {host}, not on this one: a forwarded call is not forwarded \
                 again"
            ))),
        }
    }

    async fn get(&self, identity: &Identity, job: JobId) -> Result<v1::Job, Status> {
        match &self.fleet {
            Some(fleet) => match fleet.get_job(identity, job).await? {
                Got::Job(job) => Ok(*job),
                // A forwarded call is not forwarded again.
                Got::Elsewhere { recorded, .. } if self.port == Port::Peer => Ok(*recorded),
                Got::Elsewhere { host, recorded } => {
                    let request = v1::GetJobRequest {
                        job_id: job.to_string(),
                    };
                    match fleet.forward_get(identity, &host, request).await {
                        Ok(live) => Ok(live),
                        Err(status) => {
                            tracing::debug!(%job, %host, error = %status.message(),
                                "its host's gateway did not answer a GetJob; answering from \
                                 the database");
                            Ok(*recorded)
                        }
                    }
                }
            },
            None => self
                .job_call(identity, IpcRequest::GetJob { job })
                .await
                .map(v1::Job::from),
        }
    }

    async fn stream(
        &self,
        identity: &Identity,
        job: JobId,
        offset: u64,
        follow: bool,
    ) -> Result<OutputChunks, Status> {
        let (job, shown) = match &self.fleet {
            None => (job, None),
            Some(fleet) => match fleet
                .locate(identity, job, follow, self.stopping.clone())
                .await?
            {
                Place::Here { local, shown } => (local, Some(shown)),
                Place::Queued(job) => {
                    let end = v1::OutputChunk {
                        kind: Some(v1::output_chunk::Kind::End(*job)),
                    };
                    return Ok(Box::pin(futures::stream::iter([Ok(end)])));
                }
                Place::Elsewhere { host } => {
                    self.not_here(&host)?;
                    let request = v1::StreamOutputRequest {
                        job_id: job.to_string(),
                        offset,
                        follow: Some(follow),
                    };
                    let relayed = fleet.forward_stream(identity, &host, request).await?;
                    return Ok(Box::pin(relay(relayed, offset, self.stopping.clone())));
                }
            },
        };
        let request = IpcRequest::StreamOutput {
            job,
            offset,
            follow,
        };
        let stream = self.supervisor.stream(identity, request).await?;
        let resuming = Resuming {
            supervisor: Arc::clone(&self.supervisor),
            identity: identity.clone(),
            job,
            offset,
            follow,
            shown,
            follower: follow.then(|| self.fanout.follower(job)),
            state: Some(Held::Open(stream)),
        };
        Ok(Box::pin(chunks(resuming, self.stopping.clone())))
    }
}

/// An output stream and what it takes to open it again where it stopped.
struct Resuming {
    supervisor: Arc<Supervisor>,
    identity: Identity,
    job: JobId,
    follow: bool,
    /// The offset of the next byte to send.
    offset: u64,
    /// In fleet mode, how callers see the job (its final status is shown
    /// so).
    shown: Option<Shown>,
    /// A follower, counted among its job's followers.
    follower: Option<Follower>,
    /// The supervisor's stream, or the slots it held while it is resumed.
    state: Option<Held>,
}

/// What a [`Resuming`] stream holds.
enum Held {
    /// A supervisor stream of its own.
    Open(OutputStream),
    /// A place on its job's shared stream, and its slots of the limits.
    Shared(Member, StreamSlots),
    /// Its slots of the limits, while the supervisor is away.
    Lost(StreamSlots),
}

impl Resuming {
    /// The next frame, opening the stream again (from the next byte) if
    /// the supervisor went away, for up to [`RESUME_LIMIT`].
    async fn next(&mut self) -> Result<Option<StreamFrame>, SupervisorError> {
        let mut since: Option<Instant> = None;
        let mut pause = BACKOFF.0;
        loop {
            let error = match self.state.take() {
                Some(Held::Open(mut stream)) => match stream.next().await {
                    Ok(frame) => {
                        let shared = match &frame {
                            Some(StreamFrame::Output { offset, data }) => {
                                self.offset = offset.saturating_add(data.len() as u64);
                                self.follower.as_ref().and_then(|follower| {
                                    follower.share(&self.supervisor, &self.identity, self.offset)
                                })
                            }
                            _ => None,
                        };
                        self.state = Some(match shared {
                            Some(member) => Held::Shared(member, stream.into_slots()),
                            None => Held::Open(stream),
                        });
                        return Ok(frame);
                    }
                    Err(e) => {
                        if e.is_gone() {
                            tracing::warn!(job = %self.job, offset = self.offset, error = %e,
                                "an output stream lost the supervisor; resuming when it is back");
                        }
                        self.state = Some(Held::Lost(stream.into_slots()));
                        e
                    }
                },
                Some(Held::Shared(mut member, slots)) => match member.next().await {
                    Shared::Output { offset, data } => {
                        self.offset = offset.saturating_add(data.len() as u64);
                        self.state = Some(Held::Shared(member, slots));
                        return Ok(Some(StreamFrame::Output { offset, data }));
                    }
                    Shared::End(info) => return Ok(Some(StreamFrame::End(info))),
                    Shared::Alone => {
                        // From a stream of its own, at once.
                        if let Some(follower) = &mut self.follower {
                            follower.leave(member);
                        }
                        self.state = Some(Held::Lost(slots));
                        continue;
                    }
                },
                Some(Held::Lost(slots)) => {
                    let request = IpcRequest::StreamOutput {
                        job: self.job,
                        offset: self.offset,
                        follow: self.follow,
                    };
                    match self
                        .supervisor
                        .stream_in(slots, &self.identity, request)
                        .await
                    {
                        Ok(stream) => {
                            if since.is_some() {
                                tracing::info!(job = %self.job, offset = self.offset,
                                    "resumed an output stream after the supervisor came back");
                            }
                            self.state = Some(Held::Open(stream));
                            continue;
                        }
                        Err((e, slots)) => {
                            self.state = Some(Held::Lost(slots));
                            e
                        }
                    }
                }
                None => return Ok(None),
            };
            let began = *since.get_or_insert_with(Instant::now);
            if !error.is_gone() || began.elapsed() >= RESUME_LIMIT {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(BACKOFF.1);
        }
    }
}

/// The gRPC messages of an output stream: output frames, then the final
/// status (or an error) last; UNAVAILABLE naming the offset to resume from
/// when the gateway stops. Dropped by tonic when the client goes away,
/// which closes the supervisor connection.
fn chunks(
    stream: Resuming,
    stopping: watch::Receiver<bool>,
) -> impl Stream<Item = Result<v1::OutputChunk, Status>> + Send {
    futures::stream::unfold(Some((stream, stopping)), |state| async move {
        let (mut stream, mut stopping) = state?;
        let next = tokio::select! {
            biased;
            _ = stopping.wait_for(|stopping| *stopping) => {
                return Some((Err(stopping_status(stream.offset)), None));
            }
            next = stream.next() => next,
        };
        let (item, more) = match next {
            Ok(Some(StreamFrame::Output { offset, data })) => (
                Ok(v1::OutputChunk {
                    kind: Some(v1::output_chunk::Kind::Output(v1::Output {
                        offset,
                        data: data.into_bytes(),
                    })),
                }),
                true,
            ),
            Ok(Some(StreamFrame::End(info))) => {
                let job = match &stream.shown {
                    Some(shown) => shown.job(*info),
                    None => (*info).into(),
                };
                (
                    Ok(v1::OutputChunk {
                        kind: Some(v1::output_chunk::Kind::End(job)),
                    }),
                    false,
                )
            }
            Ok(Some(StreamFrame::Error(e))) => (Err(convert::status_of(&e)), false),
            Ok(None) => return None,
            Err(e) => (Err(Status::from(e)), false),
        };
        Some((item, more.then_some((stream, stopping))))
    })
}

/// UNAVAILABLE for a stream the gateway's stop cuts, naming the offset to
/// resume from.
fn stopping_status(offset: u64) -> Status {
    Status::unavailable(format!(
        "the gateway is stopping (a restart, or an upgrade): resume from byte {offset}"
    ))
}

/// The messages of a stream forwarded from another host's gateway, as
/// they come, until the last (or the gateway stops: UNAVAILABLE, naming
/// the offset to resume from).
fn relay(
    stream: tonic::Streaming<v1::OutputChunk>,
    offset: u64,
    stopping: watch::Receiver<bool>,
) -> impl Stream<Item = Result<v1::OutputChunk, Status>> + Send {
    futures::stream::unfold(Some((stream, stopping, offset)), |state| async move {
        let (mut stream, mut stopping, offset) = state?;
        let next = tokio::select! {
            biased;
            _ = stopping.wait_for(|stopping| *stopping) => {
                return Some((Err(stopping_status(offset)), None));
            }
            next = stream.message() => next,
        };
        match next {
            Ok(Some(chunk)) => {
                let (offset, last) = match &chunk.kind {
                    Some(v1::output_chunk::Kind::Output(out)) => {
                        (out.offset.saturating_add(out.data.len() as u64), false)
                    }
                    Some(v1::output_chunk::Kind::End(_)) => (offset, true),
                    None => (offset, false),
                };
                Some((Ok(chunk), (!last).then_some((stream, stopping, offset))))
            }
            Ok(None) => None,
            Err(status) => Some((Err(status), None)),
        }
    })
}

fn unexpected(response: &Ipc) -> Status {
    let kind = response.name();
    tracing::error!(answer = kind, "the supervisor answered out of protocol");
    Status::internal(format!(
        "the job supervisor sent an unexpected answer ({kind})"
    ))
}

/// A call in progress: who makes it and which RPC it is, for the log line
/// that ends it.
struct Caller {
    identity: Identity,
    rpc: &'static str,
    peer: String,
}

impl Caller {
    /// The caller of `request` on `port`, the RPC `rpc` doing `action`:
    /// refused (PERMISSION_DENIED, saying why) when its certificate names
    /// no usable identity (on the peer port: is no peer certificate, or the
    /// call is not one a peer forwards) or its role may never do `action`.
    fn of<T>(
        port: Port,
        request: &Request<T>,
        rpc: &'static str,
        action: Action,
    ) -> Result<Self, Status> {
        let Some(info) = request.extensions().get::<ConnInfo>() else {
            return Err(Status::unauthenticated("no client certificate"));
        };
        let refused = |reason: String| {
            tracing::info!(
                peer = %info.peer, rpc = %rpc, outcome = "PermissionDenied", error = %reason,
                "call refused"
            );
            convert::status_of(&IpcError::PermissionDenied { reason })
        };
        let (identity, peer) = match (port, info.identity.as_ref(), &info.peer_host) {
            (Port::Public, Ok(identity), _) => (identity.clone(), info.peer.to_string()),
            (Port::Public, Err(e), _) => return Err(refused(e.to_string())),
            (Port::Peer, _, None) => {
                return Err(refused(
                    "this is a fleet's peer port: only the fleet's gateways (with a peer \
                     certificate) may call it"
                        .into(),
                ));
            }
            (Port::Peer, _, Some(_))
                if !matches!(action, Action::Get | Action::Stop | Action::Stream) =>
            {
                return Err(refused(
                    "the peer port serves only forwarded GetJob, StopJob and StreamOutput calls"
                        .into(),
                ));
            }
            (Port::Peer, _, Some(host)) => (
                asserted(request.metadata()).map_err(|e| convert::status_of(&e.into()))?,
                format!("{} (gateway of {host})", info.peer),
            ),
        };
        let caller = Self {
            identity,
            rpc,
            peer,
        };
        if let Err(e) = policy::authorize(Actor::Remote(&caller.identity), action, None) {
            let status = convert::status_of(&e);
            caller.log(None, Some(&status));
            return Err(status);
        }
        Ok(caller)
    }

    /// Logs how the call ended and returns its result.
    fn finish<T>(
        self,
        job: Option<JobId>,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        self.log(job, result.as_ref().err());
        result.map(Response::new)
    }

    /// The log line that ends the call: ok, or the refusal.
    fn log(&self, job: Option<JobId>, refusal: Option<&Status>) {
        let job = job.map_or_else(|| "-".to_owned(), |job| job.to_string());
        match refusal {
            None => tracing::info!(
                peer = %self.peer, user = %self.identity.user, role = %self.identity.role,
                rpc = %self.rpc, %job, outcome = "ok", "call"
            ),
            Some(status) => tracing::info!(
                peer = %self.peer, user = %self.identity.user, role = %self.identity.role,
                rpc = %self.rpc, %job, outcome = ?status.code(),
                error = %shortened(status.message()), "call"
            ),
        }
    }
}

/// The identity a peer gateway asserts for a forwarded call.
fn asserted(metadata: &tonic::metadata::MetadataMap) -> Result<Identity, jobworker_ipc::Invalid> {
    let text = |key: &str| {
        metadata
            .get(key)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| jobworker_ipc::Invalid {
                field: key.to_owned(),
                reason: "is missing from a forwarded call".into(),
            })
    };
    let user = jobworker_ipc::UserName::new(text(ON_BEHALF_OF_USER)?)?;
    let role = text(ON_BEHALF_OF_ROLE)?
        .parse()
        .map_err(|e: jobworker_ipc::UnknownRole| jobworker_ipc::Invalid {
            field: ON_BEHALF_OF_ROLE.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(Identity { user, role })
}

/// How much of an error's text a log line keeps: errors may quote a
/// command, and a log line is no place for a payload.
const LOG_ERROR_CHARS: usize = 200;

fn shortened(text: &str) -> String {
    match text.char_indices().nth(LOG_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[tonic::async_trait]
impl v1::job_service_server::JobService for JobService {
    async fn start_job(
        &self,
        request: Request<v1::StartJobRequest>,
    ) -> Result<Response<v1::StartJobResponse>, Status> {
        let caller = Caller::of(self.port, &request, "StartJob", Action::Start)?;
        match self.start(&caller.identity, request.into_inner()).await {
            Ok((response, job)) => caller.finish(Some(job), Ok(response)),
            Err(status) => caller.finish(None, Err(status)),
        }
    }

    async fn stop_job(
        &self,
        request: Request<v1::StopJobRequest>,
    ) -> Result<Response<v1::StopJobResponse>, Status> {
        let caller = Caller::of(self.port, &request, "StopJob", Action::Stop)?;
        let request = request.into_inner();
        match convert::job_id(&request.job_id) {
            Ok(job) => {
                let result = self.stop(&caller.identity, job, request.grace_period).await;
                caller.finish(Some(job), result)
            }
            Err(e) => caller.finish(None, Err(convert::invalid(e))),
        }
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let caller = Caller::of(self.port, &request, "GetJob", Action::Get)?;
        match convert::job_id(&request.get_ref().job_id) {
            Ok(job) => {
                let result = self.get(&caller.identity, job).await;
                caller.finish(Some(job), result)
            }
            Err(e) => caller.finish(None, Err(convert::invalid(e))),
        }
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let caller = Caller::of(self.port, &request, "ListJobs", Action::List)?;
        let result = self.list(&caller.identity, request.into_inner()).await;
        caller.finish(None, result)
    }

    async fn list_hosts(
        &self,
        request: Request<v1::ListHostsRequest>,
    ) -> Result<Response<v1::ListHostsResponse>, Status> {
        let caller = Caller::of(self.port, &request, "ListHosts", Action::ListHosts)?;
        let result = self.hosts().await;
        caller.finish(None, result)
    }

    type StreamOutputStream = OutputChunks;

    async fn stream_output(
        &self,
        request: Request<v1::StreamOutputRequest>,
    ) -> Result<Response<OutputChunks>, Status> {
        let caller = Caller::of(self.port, &request, "StreamOutput", Action::Stream)?;
        let request = request.into_inner();
        match convert::job_id(&request.job_id) {
            Ok(job) => {
                let result = self
                    .stream(
                        &caller.identity,
                        job,
                        request.offset,
                        request.follow.unwrap_or(true),
                    )
                    .await;
                caller.finish(Some(job), result)
            }
            Err(e) => caller.finish(None, Err(convert::invalid(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_keep_errors_short() {
        assert_eq!(shortened("no job x"), "no job x");
        let long = "é".repeat(LOG_ERROR_CHARS + 10);
        let short = shortened(&long);
        assert_eq!(short.chars().count(), LOG_ERROR_CHARS + 1);
        assert!(short.ends_with('…'));
    }
}
