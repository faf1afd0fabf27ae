//! `jobworker.v1.JobService`: each call takes the caller's identity from its
//! connection, is authorized ([`crate::authz`]) as early as the information
//! allows, has its fields validated ([`crate::convert`]), and is forwarded
//! to the supervisor on the caller's behalf ([`crate::supervisor`]).
//!
//! Job-scoped calls (stop, get, stream) first ask the supervisor for the job
//! on the caller's behalf, to learn its owner; the supervisor applies the
//! same rules to the identity the gateway asserts. Every call is logged with
//! who made it, on which job, and how it ended; never with its payload.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use jobworker_ipc::{Identity, IpcError, JobId, JobInfo, Request as IpcRequest, Response as Ipc};
use jobworker_proto::v1;
use tonic::{Request, Response, Status};

use crate::authz::{Denied, Rpc, authorize};
use crate::convert;
use crate::listener::ConnInfo;
use crate::supervisor::{OutputStream, Supervisor};

/// The stream of a `StreamOutput` call.
pub type OutputChunks = Pin<Box<dyn Stream<Item = Result<v1::OutputChunk, Status>> + Send>>;

/// The job service.
pub struct JobService {
    supervisor: Arc<Supervisor>,
}

impl JobService {
    /// The service, forwarding to `supervisor`.
    pub fn new(supervisor: Arc<Supervisor>) -> Self {
        Self { supervisor }
    }

    /// One call that answers with one job.
    async fn job_call(&self, identity: &Identity, request: IpcRequest) -> Result<JobInfo, Status> {
        match self.supervisor.call(identity, request).await? {
            Ipc::Job(info) => Ok(*info),
            Ipc::Error(e) => Err(convert::status_of(&e)),
            other => Err(unexpected(&other)),
        }
    }

    /// The job `job`, as the caller may see it, and whether the caller may
    /// make `rpc` on it.
    async fn authorized_job(
        &self,
        identity: &Identity,
        rpc: Rpc,
        job: JobId,
    ) -> Result<JobInfo, Status> {
        let info = self.job_call(identity, IpcRequest::GetJob { job }).await?;
        authorize(identity, rpc, Some(&info.owner)).map_err(|d| denied(d, job))?;
        Ok(info)
    }

    async fn start(
        &self,
        identity: &Identity,
        request: v1::StartJobRequest,
    ) -> Result<(v1::StartJobResponse, JobId), Status> {
        authorize(identity, Rpc::StartJob, None).map_err(denied_no_job)?;
        let spec = convert::job_spec(request).map_err(convert::invalid)?;
        let info = self.job_call(identity, IpcRequest::StartJob(spec)).await?;
        Ok((
            v1::StartJobResponse {
                job_id: info.id.to_string(),
            },
            info.id,
        ))
    }

    async fn stop(
        &self,
        identity: &Identity,
        job: JobId,
        grace_period: Option<prost_types::Duration>,
    ) -> Result<v1::StopJobResponse, Status> {
        self.authorized_job(identity, Rpc::StopJob, job).await?;
        let grace = convert::grace(grace_period).map_err(convert::invalid)?;
        let info = self
            .job_call(identity, IpcRequest::StopJob { job, grace })
            .await?;
        Ok(v1::StopJobResponse {
            job: Some(convert::job(info)),
        })
    }

    async fn list(
        &self,
        identity: &Identity,
        request: v1::ListJobsRequest,
    ) -> Result<v1::ListJobsResponse, Status> {
        authorize(identity, Rpc::ListJobs, None).map_err(denied_no_job)?;
        let request = convert::list_request(request).map_err(convert::invalid)?;
        match self.supervisor.call(identity, request).await? {
            Ipc::Jobs { jobs, next } => Ok(v1::ListJobsResponse {
                // The supervisor lists only what the caller may see; checked
                // again here all the same.
                jobs: jobs
                    .into_iter()
                    .filter(|job| authorize(identity, Rpc::GetJob, Some(&job.owner)).is_ok())
                    .map(convert::job)
                    .collect(),
                next_page_token: next.as_ref().map(convert::page_token).unwrap_or_default(),
            }),
            Ipc::Error(e) => Err(convert::status_of(&e)),
            other => Err(unexpected(&other)),
        }
    }

    async fn stream(
        &self,
        identity: &Identity,
        job: JobId,
        offset: u64,
        follow: bool,
    ) -> Result<OutputChunks, Status> {
        self.authorized_job(identity, Rpc::StreamOutput, job)
            .await?;
        let stream = self
            .supervisor
            .stream(
                identity,
                IpcRequest::StreamOutput {
                    job,
                    offset,
                    follow,
                },
            )
            .await?;
        Ok(Box::pin(chunks(stream)))
    }
}

/// The gRPC messages of an output stream: output frames, then the final
/// status (or an error) last. Dropped by tonic when the client goes away,
/// which closes the supervisor connection.
fn chunks(stream: OutputStream) -> impl Stream<Item = Result<v1::OutputChunk, Status>> + Send {
    futures::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        let (item, more) = match stream.next().await {
            Ok(Ipc::Output { offset, data }) => (
                Ok(v1::OutputChunk {
                    kind: Some(v1::output_chunk::Kind::Output(v1::Output {
                        offset,
                        data: data.into_vec(),
                    })),
                }),
                true,
            ),
            Ok(Ipc::End(info)) => (
                Ok(v1::OutputChunk {
                    kind: Some(v1::output_chunk::Kind::End(convert::job(*info))),
                }),
                false,
            ),
            Ok(Ipc::Error(e)) => (Err(convert::status_of(&e)), false),
            Ok(other) => (Err(unexpected(&other)), false),
            Err(e) => (Err(Status::from(e)), false),
        };
        Some((item, more.then_some(stream)))
    })
}

fn unexpected(response: &Ipc) -> Status {
    let kind = match response {
        Ipc::Pong(_) => "Pong",
        Ipc::Job(_) => "Job",
        Ipc::Jobs { .. } => "Jobs",
        Ipc::Output { .. } => "Output",
        Ipc::End(_) => "End",
        Ipc::Error(_) => "Error",
    };
    tracing::error!(answer = kind, "the supervisor answered out of protocol");
    Status::internal(format!(
        "the job supervisor sent an unexpected answer ({kind})"
    ))
}

/// The status of a refusal on job `job`: NOT_FOUND is worded exactly as the
/// supervisor words a job that does not exist.
fn denied(denied: Denied, job: JobId) -> Status {
    match denied {
        Denied::NotFound => convert::status_of(&IpcError::NotFound { job }),
        Denied::PermissionDenied(reason) => {
            convert::status_of(&IpcError::PermissionDenied { reason })
        }
    }
}

/// The status of a refusal of an RPC that names no job.
fn denied_no_job(denied: Denied) -> Status {
    match denied {
        Denied::NotFound => Status::not_found("no such job"),
        Denied::PermissionDenied(reason) => {
            convert::status_of(&IpcError::PermissionDenied { reason })
        }
    }
}

/// A call in progress: who makes it and which RPC it is, for the log line
/// that ends it.
struct Caller {
    identity: Identity,
    rpc: Rpc,
    peer: String,
}

impl Caller {
    /// The caller of `request`, or PERMISSION_DENIED saying why its
    /// certificate names no usable identity.
    fn of<T>(request: &Request<T>, rpc: Rpc) -> Result<Self, Status> {
        let Some(info) = request.extensions().get::<ConnInfo>() else {
            return Err(Status::unauthenticated("no client certificate"));
        };
        match info.identity.as_ref() {
            Ok(identity) => Ok(Self {
                identity: identity.clone(),
                rpc,
                peer: info.peer.to_string(),
            }),
            Err(e) => {
                tracing::info!(
                    peer = %info.peer, rpc = %rpc.name(), outcome = "PermissionDenied", error = %e,
                    "call refused"
                );
                Err(convert::status_of(&IpcError::PermissionDenied {
                    reason: e.to_string(),
                }))
            }
        }
    }

    /// Logs how the call ended and returns its result.
    fn finish<T>(
        self,
        job: Option<JobId>,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        let job = job.map_or_else(|| "-".to_owned(), |job| job.to_string());
        match &result {
            Ok(_) => tracing::info!(
                peer = %self.peer, user = %self.identity.user, role = %self.identity.role,
                rpc = %self.rpc.name(), %job, outcome = "ok", "call"
            ),
            Err(status) => tracing::info!(
                peer = %self.peer, user = %self.identity.user, role = %self.identity.role,
                rpc = %self.rpc.name(), %job, outcome = ?status.code(),
                error = %shortened(status.message()), "call"
            ),
        }
        result.map(Response::new)
    }
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
        let caller = Caller::of(&request, Rpc::StartJob)?;
        match self.start(&caller.identity, request.into_inner()).await {
            Ok((response, job)) => caller.finish(Some(job), Ok(response)),
            Err(status) => caller.finish(None, Err(status)),
        }
    }

    async fn stop_job(
        &self,
        request: Request<v1::StopJobRequest>,
    ) -> Result<Response<v1::StopJobResponse>, Status> {
        let caller = Caller::of(&request, Rpc::StopJob)?;
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
        let caller = Caller::of(&request, Rpc::GetJob)?;
        match convert::job_id(&request.get_ref().job_id) {
            Ok(job) => {
                let result = self
                    .authorized_job(&caller.identity, Rpc::GetJob, job)
                    .await
                    .map(convert::job);
                caller.finish(Some(job), result)
            }
            Err(e) => caller.finish(None, Err(convert::invalid(e))),
        }
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let caller = Caller::of(&request, Rpc::ListJobs)?;
        let result = self.list(&caller.identity, request.into_inner()).await;
        caller.finish(None, result)
    }

    type StreamOutputStream = OutputChunks;

    async fn stream_output(
        &self,
        request: Request<v1::StreamOutputRequest>,
    ) -> Result<Response<OutputChunks>, Status> {
        let caller = Caller::of(&request, Rpc::StreamOutput)?;
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
