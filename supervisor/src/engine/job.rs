//! One job as the engine holds it: what was asked (fixed at start), what
//! happened (its status, behind a lock), and a watch channel that wakes output
//! readers when the log grows or the job ends. The status is persisted as
//! `job.json` in the job's directory on every change of state.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use jobworker_ipc::{
    Args, Command, EnforcedLimits, JobId, JobInfo, JobState, Limits, Owner, RequestId, Termination,
    UnixMillis, Usage,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::atomic;
use crate::cgroup::JobCgroup;
use crate::handoff::OUTPUT_FILE;

/// The job's record file in its directory.
pub const RECORD_FILE: &str = "job.json";

/// What changes over a job's life.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The state.
    pub state: JobState,
    /// The init's host pid while it runs.
    pub pid: Option<u32>,
    /// How the command ended.
    pub termination: Option<Termination>,
    /// The OOM killer struck.
    pub oom_killed: bool,
    /// When the command was exec'd.
    pub started_at: Option<UnixMillis>,
    /// When the job ended.
    pub ended_at: Option<UnixMillis>,
    /// Usage, final once the job has ended.
    pub usage: Usage,
    /// Output bytes written (final once ended).
    pub output_bytes: u64,
    /// Output bytes dropped over the cap.
    pub truncated_bytes: u64,
    /// Why the job failed.
    pub failure: Option<String>,
    /// A stop was requested while it ran.
    pub stop_requested: bool,
}

impl Status {
    /// A job being started: running, no pid yet.
    pub fn starting() -> Self {
        Self {
            state: JobState::Running,
            pid: None,
            termination: None,
            oom_killed: false,
            started_at: None,
            ended_at: None,
            usage: Usage::default(),
            output_bytes: 0,
            truncated_bytes: 0,
            failure: None,
            stop_requested: false,
        }
    }

    /// The status a record holds.
    pub fn from_record(record: &Record) -> Self {
        let info = &record.info;
        Self {
            state: info.state,
            pid: info.pid,
            termination: info.termination,
            oom_killed: info.oom_killed,
            started_at: info.started_at,
            ended_at: info.ended_at,
            usage: info.usage,
            output_bytes: info.output_bytes,
            truncated_bytes: info.output_truncated_bytes,
            failure: info.failure.clone(),
            stop_requested: record.stop_requested,
        }
    }
}

/// The job's record on disk.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    /// The job's status as a client sees it.
    pub info: JobInfo,
    /// The idempotency token it was started with.
    pub request_id: Option<RequestId>,
    /// A stop was requested while it ran.
    pub stop_requested: bool,
}

/// A job.
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Who started it.
    pub owner: Owner,
    /// The command.
    pub command: Command,
    /// Its arguments.
    pub args: Args,
    /// The limits in effect.
    pub limits: Limits,
    /// Which of them are enforced.
    pub enforced: EnforcedLimits,
    /// When it was asked for.
    pub created_at: UnixMillis,
    /// The idempotency token it was started with.
    pub request_id: Option<RequestId>,
    /// Its directory.
    pub dir: PathBuf,
    /// Its cgroup.
    pub cgroup: JobCgroup,
    /// The uid its processes run as (unknown for records of older versions).
    pub uid: Option<u32>,
    /// The gid its processes run as.
    pub gid: Option<u32>,
    /// A pidfd of its init, while it runs.
    pub pidfd: Mutex<Option<OwnedFd>>,
    status: Mutex<Status>,
    changed: watch::Sender<u64>,
    /// Held while the record is built and written, so that the last write
    /// holds the latest status.
    persisting: Mutex<()>,
    /// The bytes its directory takes, once it has ended (it no longer
    /// changes then), so that retention measures each job once.
    pub ended_size: OnceLock<u64>,
}

impl Job {
    /// A job whose init has just reported the command running.
    #[allow(clippy::too_many_arguments, reason = "one constructor, called once")]
    pub fn new(
        id: JobId,
        owner: Owner,
        command: Command,
        args: Args,
        limits: Limits,
        enforced: EnforcedLimits,
        created_at: UnixMillis,
        request_id: Option<RequestId>,
        dir: PathBuf,
        cgroup: JobCgroup,
        (uid, gid): (Option<u32>, Option<u32>),
        status: Status,
    ) -> Self {
        Self {
            id,
            owner,
            command,
            args,
            limits,
            enforced,
            created_at,
            request_id,
            dir,
            cgroup,
            uid,
            gid,
            pidfd: Mutex::new(None),
            status: Mutex::new(status),
            changed: watch::channel(0).0,
            persisting: Mutex::new(()),
            ended_size: OnceLock::new(),
        }
    }

    /// The status, locked.
    pub fn status(&self) -> MutexGuard<'_, Status> {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the job has ended.
    pub fn is_ended(&self) -> bool {
        self.status().state.is_ended()
    }

    /// The output log.
    pub fn output_path(&self) -> PathBuf {
        self.dir.join(OUTPUT_FILE)
    }

    /// Wakes everyone waiting on the job (output readers, stoppers).
    pub fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver woken by [`Job::notify`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The job as a client sees it. While it runs, usage comes live from its
    /// cgroup and the output size from the log.
    pub fn info(&self) -> JobInfo {
        let status = self.status().clone();
        let (usage, output_bytes) = if status.state.is_ended() {
            (status.usage, status.output_bytes)
        } else {
            (
                self.cgroup.usage().unwrap_or(status.usage),
                std::fs::metadata(self.output_path()).map_or(0, |m| m.len()),
            )
        };
        JobInfo {
            id: self.id,
            owner: self.owner.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            state: status.state,
            pid: status.pid,
            uid: self.uid,
            gid: self.gid,
            termination: status.termination,
            oom_killed: status.oom_killed,
            created_at: self.created_at,
            started_at: status.started_at,
            ended_at: status.ended_at,
            limits: self.limits,
            enforced: self.enforced,
            usage,
            output_bytes,
            output_truncated_bytes: status.truncated_bytes,
            failure: status.failure,
        }
    }

    /// Writes the record atomically.
    pub fn persist(&self) -> std::io::Result<()> {
        let _one_at_a_time = self.persisting.lock().unwrap_or_else(|p| p.into_inner());
        let record = Record {
            info: self.info(),
            request_id: self.request_id.clone(),
            stop_requested: self.status().stop_requested,
        };
        atomic::write_json(&record_path(&self.dir), &record)
    }
}

/// Where a job's record lives.
pub fn record_path(dir: &Path) -> PathBuf {
    dir.join(RECORD_FILE)
}
