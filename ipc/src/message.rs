//! The messages: a client sends [`Call`]s, the supervisor answers with
//! [`Response`]s.
//!
//! The exchange on one connection is strictly one call at a time: every call
//! gets exactly one response, except [`Request::StreamOutput`], which gets any
//! number of [`Response::Output`] frames followed by one [`Response::End`] (or
//! one [`Response::Error`]). A client that wants to stop a stream early closes
//! the connection.

use serde::{Deserialize, Serialize};

use crate::error::IpcError;
use crate::labels::{LabelSelector, Labels};
use crate::metrics::SupervisorMetrics;
use crate::types::{
    Args, Command, Env, GraceMs, Identity, Invalid, JobId, Limits, Owner, PageSize, RequestId,
    TimeoutMs, UnixMicros, WorkingDir,
};

/// The most bytes one [`Response::Output`] frame carries.
pub const MAX_OUTPUT_CHUNK: usize = 64 * 1024;

/// One request and on whose behalf it is made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// The remote caller the gateway acts for. The gateway must always set it;
    /// a local operator leaves it unset and acts as `local:<account>`. The
    /// supervisor decides from the connection's peer credentials which of the
    /// two a connection may do.
    pub on_behalf_of: Option<Identity>,
    /// What is asked.
    pub request: Request,
}

/// Every operation of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Protocol version, uptime, cgroup facts. Answered with [`Response::Pong`].
    Ping,
    /// Start a job. Answered with [`Response::Job`] once the command was
    /// exec'd, or an error.
    StartJob(JobSpec),
    /// Stop a job. Answered with [`Response::Job`] once no process of it
    /// remains.
    StopJob {
        /// The job.
        job: JobId,
        /// The grace period between SIGTERM and kill; the server's default
        /// when unset, and never more than its maximum.
        grace: Option<GraceMs>,
    },
    /// A job's status. Answered with [`Response::Job`].
    GetJob {
        /// The job.
        job: JobId,
    },
    /// The jobs the caller may see, newest first. Answered with
    /// [`Response::Jobs`].
    ListJobs {
        /// Only jobs in this state.
        state: Option<JobState>,
        /// At most this many.
        limit: PageSize,
        /// Only jobs after this one in the listing order (the previous page's
        /// `next`).
        after: Option<ListCursor>,
        /// Only jobs carrying every one of these labels.
        labels: LabelSelector,
    },
    /// A job's output from `offset`. Answered with [`Response::Output`]
    /// frames, then [`Response::End`].
    StreamOutput {
        /// The job.
        job: JobId,
        /// The first byte to send.
        offset: u64,
        /// Keep sending while the job runs; when false, end after the bytes
        /// written so far.
        follow: bool,
    },
    /// The supervisor's figures, for the gateway's metrics endpoint or a
    /// local operator. Answered with [`Response::Metrics`].
    Metrics,
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The command: an absolute path or a name looked up in `PATH`.
    pub command: Command,
    /// Its arguments (not counting the command).
    pub args: Args,
    /// Variables added to the clean environment.
    pub env: Env,
    /// The working directory; the server's default when unset.
    pub working_dir: Option<WorkingDir>,
    /// Limits; each unset one takes the server's default.
    pub limits: Limits,
    /// An idempotency token.
    pub request_id: Option<RequestId>,
    /// The longest the command may run; the server's default when unset.
    pub timeout: Option<TimeoutMs>,
    /// Labels to find the job by.
    pub labels: Labels,
}

/// Where a list page ended: the last job it held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListCursor {
    /// That job's creation time.
    pub created_at: UnixMicros,
    /// That job's id.
    pub job: JobId,
}

/// Every answer of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to [`Request::Ping`].
    Pong(ServerInfo),
    /// One job's status.
    Job(Box<JobInfo>),
    /// A page of jobs.
    Jobs {
        /// The jobs, newest first.
        jobs: Vec<JobInfo>,
        /// Set when more jobs follow: pass it as `after`.
        next: Option<ListCursor>,
    },
    /// Output bytes of a stream.
    Output {
        /// The offset of the first byte of `data` in the job's output.
        offset: u64,
        /// The bytes.
        data: OutputData,
    },
    /// The last frame of a stream: the job's status when it ended.
    End(Box<JobInfo>),
    /// The answer to [`Request::Metrics`].
    Metrics(Box<SupervisorMetrics>),
    /// The call failed.
    Error(IpcError),
}

impl Response {
    /// The variant's name (`Pong`, `Job`, `Jobs`, `Output`, `End`,
    /// `Metrics`, `Error`),
    /// for messages that must not quote a payload.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Pong(_) => "Pong",
            Self::Job(_) => "Job",
            Self::Jobs { .. } => "Jobs",
            Self::Output { .. } => "Output",
            Self::End(_) => "End",
            Self::Metrics(_) => "Metrics",
            Self::Error(_) => "Error",
        }
    }
}

/// Output bytes, at most [`MAX_OUTPUT_CHUNK`] of them: a shared buffer, so
/// that one job's output goes to each of its followers without a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputData(bytes::Bytes);

impl OutputData {
    /// Validates a chunk of output.
    pub fn new(data: impl Into<bytes::Bytes>) -> Result<Self, Invalid> {
        let data = data.into();
        if data.len() > MAX_OUTPUT_CHUNK {
            return Err(Invalid {
                field: "output".into(),
                reason: format!(
                    "{} bytes in one frame, the limit is {MAX_OUTPUT_CHUNK}",
                    data.len()
                ),
            });
        }
        Ok(Self(data))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes from the `from`th on (none when `from` is past the end),
    /// sharing this buffer.
    #[must_use]
    pub fn tail(&self, from: usize) -> Self {
        Self(self.0.slice(from.min(self.0.len())..))
    }

    /// The shared buffer itself: handing it on copies nothing.
    pub fn into_bytes(self) -> bytes::Bytes {
        self.0
    }
}

impl Serialize for OutputData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

/// Decodes output as the bytes the frame holds: copied out of the frame once
/// its length is checked, into memory that is not zeroed first. (Decoding
/// them as a `Vec<u8>` zeroes a fresh buffer for every chunk, which the
/// allocator does by handing its pages back and faulting them in again.)
impl<'de> Deserialize<'de> for OutputData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = OutputData;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "at most {MAX_OUTPUT_CHUNK} bytes of output")
            }

            fn visit_bytes<E: serde::de::Error>(self, data: &[u8]) -> Result<OutputData, E> {
                if data.len() > MAX_OUTPUT_CHUNK {
                    return Err(E::invalid_length(data.len(), &self));
                }
                Ok(OutputData(bytes::Bytes::copy_from_slice(data)))
            }
        }

        deserializer.deserialize_bytes(Visitor)
    }
}

/// Facts about the supervisor, for operators and health checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// How long it has been running, in milliseconds.
    pub uptime_ms: u64,
    /// Who it takes the caller to be.
    pub caller: Owner,
    /// The cgroup under which it creates job cgroups.
    pub cgroup_root: String,
    /// The cgroup v2 controllers available to jobs (e.g. `cpu`, `memory`).
    pub controllers: Vec<String>,
}

/// The state of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Its command is running.
    Running,
    /// It was stopped by a request.
    Stopped,
    /// Its command exited (or was killed by a signal) by itself.
    Finished,
    /// It could not run to completion for a reason of the system.
    Failed,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 4] = [Self::Running, Self::Stopped, Self::Finished, Self::Failed];

    /// Whether the job has ended.
    pub fn is_ended(self) -> bool {
        self != Self::Running
    }

    /// The state's name: `running`, `stopped`, `finished`, `failed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Finished => "finished",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| Invalid {
                field: "state".into(),
                reason: "is none of running, stopped, finished, failed".into(),
            })
    }
}

/// How a job's command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Termination {
    /// It exited with this code.
    Exited(i32),
    /// A signal with this number killed it.
    Signaled(i32),
}

/// Why a STOPPED job was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// A stop request.
    Requested,
    /// Its time limit ran out.
    TimedOut,
}

/// Which limits the kernel enforces on a job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcedLimits {
    /// `cpu.max` is in force.
    pub cpu: bool,
    /// `memory.max` is in force.
    pub memory: bool,
    /// `io.max` is in force.
    pub io: bool,
    /// `pids.max` is in force.
    pub pids: bool,
}

/// What a job used, read from its cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time, user + system, in microseconds.
    pub cpu_usec: u64,
    /// Peak memory in bytes, where the kernel reports it.
    pub memory_peak_bytes: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: u64,
    /// Bytes written to block devices.
    pub io_write_bytes: u64,
}

/// A job's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Its id.
    pub id: JobId,
    /// Who started it.
    pub owner: Owner,
    /// The command.
    pub command: Command,
    /// The arguments.
    pub args: Args,
    /// Its state.
    pub state: JobState,
    /// Its init process's pid in the host's pid namespace.
    pub pid: Option<u32>,
    /// The uid its command runs as (its own, unless the server runs every
    /// job as one configured account). Unset in records of older versions.
    #[serde(default)]
    pub uid: Option<u32>,
    /// The gid its command runs as.
    #[serde(default)]
    pub gid: Option<u32>,
    /// How its command ended, once it has.
    pub termination: Option<Termination>,
    /// The OOM killer killed a process of the job.
    pub oom_killed: bool,
    /// When it was asked for.
    pub created_at: UnixMicros,
    /// When its command was exec'd.
    pub started_at: Option<UnixMicros>,
    /// When it ended.
    pub ended_at: Option<UnixMicros>,
    /// The limits in effect.
    pub limits: Limits,
    /// Which of them the kernel enforces.
    pub enforced: EnforcedLimits,
    /// What it used.
    pub usage: Usage,
    /// Bytes of output it wrote: while it runs, those in its log so far;
    /// once it has ended, all of them, including any dropped over the cap.
    pub output_bytes: u64,
    /// Bytes dropped over the per-job output cap.
    pub output_truncated_bytes: u64,
    /// Bytes dropped because the state file system stayed full (or failed)
    /// when the job ended: while it runs, a full disk pauses its output
    /// instead. Included in `output_bytes`.
    #[serde(default)]
    pub output_disk_full_bytes: u64,
    /// Why it FAILED, when it did.
    pub failure: Option<String>,
    /// Why it was STOPPED, when it was. (Defaults, like `uid` and `gid`,
    /// for the supervisor's records of version 1, which held this type.)
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
    /// Its time limit, if it has one.
    #[serde(default)]
    pub timeout: Option<TimeoutMs>,
    /// Its labels.
    #[serde(default)]
    pub labels: Labels,
}
