//! The VM driver's client of the real supervisor, on the ipc crate's
//! client: one connection per call, as the local admin (connecting as
//! root).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use jobworker_ipc::client::{Connection, StreamFrame};
use jobworker_ipc::{
    GraceMs, JobId, JobInfo, JobSpec, JobState, Limits, PageSize, Request, Response, ServerInfo,
};

use crate::fixture::supervisor;

/// How long one request/response exchange may take. TCG is slow, but no
/// single answer of the supervisor should take this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Talks to the supervisor's socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

/// A job's output and its final status, as a followed stream delivered them.
#[derive(Clone, Debug)]
pub struct Ended {
    /// Every output byte from offset 0.
    pub output: Vec<u8>,
    /// The status carried by the stream's `End` frame.
    pub info: JobInfo,
}

impl Client {
    /// A client of the socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits until the supervisor answers a ping, for at most `within`.
    pub async fn wait_ready(&self, within: Duration) -> Result<ServerInfo> {
        let deadline = Instant::now() + within;
        loop {
            match self.ping().await {
                Ok(info) => return Ok(info),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "the supervisor did not answer on {} within {within:?}",
                        self.socket.display()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Connects and performs the handshake.
    async fn connect(&self) -> Result<Connection> {
        Ok(Connection::connect(&self.socket, CALL_TIMEOUT).await?)
    }

    /// Sends one call on a new connection and reads its single response.
    pub async fn call(&self, request: Request) -> Result<Response> {
        let what = request_name(&request);
        let mut connection = self.connect().await?;
        tokio::time::timeout(CALL_TIMEOUT, connection.call(request))
            .await
            .with_context(|| format!("{what}: no answer within {CALL_TIMEOUT:?}"))?
            .with_context(|| format!("{what} call"))
    }

    /// `Ping`.
    pub async fn ping(&self) -> Result<ServerInfo> {
        match self.call(Request::Ping).await? {
            Response::Pong(info) => Ok(info),
            other => Err(unexpected("Ping", &other)),
        }
    }

    /// `StartJob` with a command, its arguments and limits.
    pub async fn start(&self, command: &str, args: &[&str], limits: Limits) -> Result<JobInfo> {
        let spec = JobSpec {
            limits,
            ..supervisor::job_spec(command, args)?
        };
        match self.call(Request::StartJob(spec)).await? {
            Response::Job(info) => Ok(*info),
            other => Err(unexpected("StartJob", &other)),
        }
    }

    /// `GetJob`.
    pub async fn get(&self, job: JobId) -> Result<JobInfo> {
        match self.call(Request::GetJob { job }).await? {
            Response::Job(info) => Ok(*info),
            other => Err(unexpected("GetJob", &other)),
        }
    }

    /// `StopJob` with a grace period in milliseconds.
    pub async fn stop(&self, job: JobId, grace_ms: u32) -> Result<JobInfo> {
        let grace = Some(GraceMs::new(grace_ms)?);
        match self.call(Request::StopJob { job, grace }).await? {
            Response::Job(info) => Ok(*info),
            other => Err(unexpected("StopJob", &other)),
        }
    }

    /// The jobs that are still running (`ListJobs` with state `Running`).
    pub async fn running(&self) -> Result<Vec<JobInfo>> {
        let request = Request::ListJobs {
            state: Some(JobState::Running),
            limit: PageSize::DEFAULT,
            after: None,
            labels: Default::default(),
        };
        match self.call(request).await? {
            Response::Jobs { jobs, .. } => Ok(jobs),
            other => Err(unexpected("ListJobs", &other)),
        }
    }

    /// Follows a job's output from offset 0 until its `End` frame, for at
    /// most `within`.
    pub async fn follow_to_end(&self, job: JobId, within: Duration) -> Result<Ended> {
        let connection = self.connect().await?;
        let stream = async {
            let request = Request::StreamOutput {
                job,
                offset: 0,
                follow: true,
            };
            let mut stream = connection
                .stream(request)
                .await
                .context("sending StreamOutput")?;
            let mut output = Vec::new();
            loop {
                match stream.next().await.context("reading a stream frame")? {
                    Some(StreamFrame::Output { offset, data }) => {
                        if offset != output.len() as u64 {
                            bail!(
                                "an Output frame at offset {offset}, expected {}",
                                output.len()
                            );
                        }
                        output.extend_from_slice(data.as_slice());
                    }
                    Some(StreamFrame::End(info)) => {
                        return Ok(Ended {
                            output,
                            info: *info,
                        });
                    }
                    Some(StreamFrame::Error(e)) => bail!("StreamOutput failed: {e}"),
                    None => bail!("the stream closed before its End frame"),
                }
            }
        };
        tokio::time::timeout(within, stream)
            .await
            .with_context(|| format!("job {job} did not end within {within:?}"))?
    }
}

/// The name of a request, for error messages.
fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Ping => "Ping",
        Request::StartJob(_) => "StartJob",
        Request::StopJob { .. } => "StopJob",
        Request::GetJob { .. } => "GetJob",
        Request::ListJobs { .. } => "ListJobs",
        Request::StreamOutput { .. } => "StreamOutput",
        Request::Metrics => "Metrics",
    }
}

/// An error for an answer of the wrong kind (including `Response::Error`).
fn unexpected(call: &str, response: &Response) -> anyhow::Error {
    match response {
        Response::Error(e) => anyhow!("{call} failed: {e}"),
        other => anyhow!("{call}: unexpected answer {other:?}"),
    }
}
