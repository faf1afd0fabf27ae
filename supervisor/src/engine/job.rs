//! One job as the engine holds it: what was asked (fixed at start), what
//! happened (its status, behind a lock), and a watch channel that wakes output
//! readers when the log grows or the job ends. The status is persisted in
//! `job.json` in the job's directory on every change of state (a line
//! each), through the engine's [`Records`].

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use jobworker_ipc::{
    Args, Command, EnforcedLimits, JobId, JobInfo, JobState, Labels, Limits, Owner, RequestId,
    StopReason, Termination, TimeoutMs, UnixMicros, Usage,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::output::Tail;
use super::records::{self, Records};
use crate::cgroup::JobCgroup;
use crate::handoff::OUTPUT_FILE;

/// The job's record file in its directory.
pub const RECORD_FILE: &str = "job.json";

/// What changes over a job's life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    pub started_at: Option<UnixMicros>,
    /// When the job ended.
    pub ended_at: Option<UnixMicros>,
    /// Usage, final once the job has ended.
    pub usage: Usage,
    /// Output bytes written (final once ended).
    pub output_bytes: u64,
    /// Output bytes dropped over the cap.
    pub truncated_bytes: u64,
    /// Output bytes dropped because the disk was full at the job's end
    /// (records before version 4 have none).
    #[serde(default)]
    pub disk_full_bytes: u64,
    /// Why the job failed.
    pub failure: Option<String>,
    /// A stop was requested while it ran (by a caller, or by its time
    /// limit).
    pub stop_requested: bool,
    /// The stop was its time limit's (records before version 4 have none).
    #[serde(default)]
    pub timed_out: bool,
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
            disk_full_bytes: 0,
            failure: None,
            stop_requested: false,
            timed_out: false,
        }
    }

    /// Why the job was stopped, if it ended STOPPED.
    pub fn stop_reason(&self) -> Option<StopReason> {
        (self.state == JobState::Stopped).then_some(if self.timed_out {
            StopReason::TimedOut
        } else {
            StopReason::Requested
        })
    }
}

/// The version of [`Record`] this supervisor writes.
pub const RECORD_VERSION: u32 = 5;

/// The job's record on disk (`job.json`): a type of its own, versioned, so
/// that the wire type ([`JobInfo`]) can change without the disk's format.
/// Older versions are still read ([`Record::decode`]): version 1 (no
/// `version` field) held the wire type itself, versions 1 and 2 held
/// times in milliseconds (microseconds since version 3), version 4 added
/// time limits and labels, and version 5 records are lines of a file that
/// holds a job's records ([`super::records`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// What was asked, fixed at start.
    pub spec: Spec,
    /// What happened since.
    pub status: Status,
}

/// What a job is, fixed when it starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spec {
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
    pub created_at: UnixMicros,
    /// The idempotency token it was started with.
    pub request_id: Option<RequestId>,
    /// The uid its processes run as (unknown in records of version 1 from
    /// before per-job uids).
    pub uid: Option<u32>,
    /// The gid its processes run as.
    pub gid: Option<u32>,
    /// Its time limit, counted from `created_at` (the deadline is
    /// `created_at + timeout`, so that a restarted supervisor enforces it).
    #[serde(default)]
    pub timeout: Option<TimeoutMs>,
    /// Its labels.
    #[serde(default)]
    pub labels: Labels,
}

/// Why a record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read.
    #[error("reading the job record: {0}")]
    Read(#[from] std::io::Error),
    /// Not JSON, or not a record of the version it says.
    #[error("decoding a job record: {0}")]
    Decode(#[from] serde_json::Error),
    /// Written by a newer supervisor.
    #[error(
        "the job record has version {0}, newer than this supervisor's {RECORD_VERSION}: \
         run the newer supervisor, or keep its records apart"
    )]
    Newer(u64),
}

impl Record {
    /// The current record of a record file, of any version this supervisor
    /// knows: its newest line that is a whole record (see
    /// [`super::records`]), else its first JSON value (a file of version 4
    /// or older: one record, written whole over several lines).
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        for line in records::lines_newest_first(bytes) {
            match serde_json::from_slice(line)
                .map_err(RecordError::from)
                .and_then(Self::from_value)
            {
                Ok(record) => return Ok(record),
                Err(newer @ RecordError::Newer(_)) => return Err(newer),
                // A line cut short, or a line of a record over several.
                Err(_) => {}
            }
        }
        let first = serde_json::Deserializer::from_slice(bytes)
            .into_iter()
            .next()
            .unwrap_or_else(|| serde_json::from_slice(bytes))?;
        Self::from_value(first)
    }

    fn from_value(value: serde_json::Value) -> Result<Self, RecordError> {
        match value.get("version").and_then(serde_json::Value::as_u64) {
            None => Ok(Record::from(serde_json::from_value::<RecordV1>(value)?).in_micros()),
            Some(version) if version < 3 => {
                Ok(serde_json::from_value::<Record>(value)?.in_micros())
            }
            Some(version) if version <= u64::from(RECORD_VERSION) => {
                Ok(serde_json::from_value(value)?)
            }
            Some(version) => Err(RecordError::Newer(version)),
        }
    }

    /// This record, read from a version that held times in milliseconds,
    /// with its times in microseconds.
    fn in_micros(mut self) -> Self {
        let micros = |at: UnixMicros| UnixMicros::from_millis(at.0);
        self.version = RECORD_VERSION;
        self.spec.created_at = micros(self.spec.created_at);
        self.status.started_at = self.status.started_at.map(micros);
        self.status.ended_at = self.status.ended_at.map(micros);
        self
    }
}

/// Version 1 of the record: the wire type, and what it lacks.
#[derive(Deserialize)]
struct RecordV1 {
    info: JobInfo,
    request_id: Option<RequestId>,
    stop_requested: bool,
}

impl From<RecordV1> for Record {
    fn from(old: RecordV1) -> Self {
        let info = old.info;
        Self {
            version: RECORD_VERSION,
            spec: Spec {
                id: info.id,
                owner: info.owner,
                command: info.command,
                args: info.args,
                limits: info.limits,
                enforced: info.enforced,
                created_at: info.created_at,
                request_id: old.request_id,
                uid: info.uid,
                gid: info.gid,
                timeout: None,
                labels: Labels::default(),
            },
            status: Status {
                state: info.state,
                pid: info.pid,
                termination: info.termination,
                oom_killed: info.oom_killed,
                started_at: info.started_at,
                ended_at: info.ended_at,
                usage: info.usage,
                output_bytes: info.output_bytes,
                truncated_bytes: info.output_truncated_bytes,
                disk_full_bytes: info.output_disk_full_bytes,
                failure: info.failure,
                stop_requested: old.stop_requested,
                timed_out: false,
            },
        }
    }
}

/// A job.
pub struct Job {
    /// What it is, fixed when it starts.
    pub spec: Spec,
    /// Its directory.
    pub dir: PathBuf,
    /// Its cgroup.
    pub cgroup: JobCgroup,
    /// A pidfd of its init, while it runs.
    pub pidfd: Mutex<Option<OwnedFd>>,
    /// Its recent output, shared by its followers.
    pub tail: Tail,
    status: Mutex<Status>,
    changed: watch::Sender<u64>,
    /// Held while the record is built and written, so that the last write
    /// holds the latest status.
    persisting: Mutex<()>,
    /// Nothing of the ended job is left but its directory: its cgroup is
    /// removed and its record written.
    cleaned_up: AtomicBool,
    /// Counted among its owner's running jobs (from its adoption to its
    /// end).
    pub counted_running: AtomicBool,
}

impl Job {
    /// A job of `spec` in directory `dir` and cgroup `cgroup`, with its
    /// status so far.
    pub fn new(spec: Spec, dir: PathBuf, cgroup: JobCgroup, status: Status) -> Self {
        // A job recorded as ended (recovered after a restart) was cleaned
        // up before its record said so.
        let cleaned_up = AtomicBool::new(status.state.is_ended());
        Self {
            spec,
            dir,
            cgroup,
            pidfd: Mutex::new(None),
            tail: Tail::default(),
            status: Mutex::new(status),
            changed: watch::channel(0).0,
            persisting: Mutex::new(()),
            cleaned_up,
            counted_running: AtomicBool::new(false),
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

    /// Whether the ended job has been cleaned up ([`Job::set_cleaned_up`]).
    pub fn is_cleaned_up(&self) -> bool {
        self.cleaned_up.load(Ordering::Acquire)
    }

    /// Records that the ended job's cgroup is removed and its record
    /// written, and wakes whoever waits for that (a stop).
    pub fn set_cleaned_up(&self) {
        self.cleaned_up.store(true, Ordering::Release);
        self.notify();
    }

    /// Wakes everyone waiting on the job (output followers, stoppers).
    pub fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver woken by [`Job::notify`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The job as a client sees it. While it runs, usage comes live from its
    /// cgroup and the output size from the log: that reads files, so call it
    /// on a blocking thread then (see [`Job::recorded_info`]).
    pub fn info(&self) -> JobInfo {
        let mut status = self.status().clone();
        if !status.state.is_ended() {
            status.usage = self.cgroup.usage().unwrap_or(status.usage);
            status.output_bytes = std::fs::metadata(self.output_path()).map_or(0, |m| m.len());
        }
        self.info_of(status)
    }

    /// The job as recorded, reading no file: a running job's usage and
    /// output size are as of its last settled figures (none at its start).
    pub fn recorded_info(&self) -> JobInfo {
        self.info_of(self.status().clone())
    }

    fn info_of(&self, status: Status) -> JobInfo {
        let spec = &self.spec;
        JobInfo {
            id: spec.id,
            owner: spec.owner.clone(),
            command: spec.command.clone(),
            args: spec.args.clone(),
            state: status.state,
            pid: status.pid,
            uid: spec.uid,
            gid: spec.gid,
            termination: status.termination,
            oom_killed: status.oom_killed,
            created_at: spec.created_at,
            started_at: status.started_at,
            ended_at: status.ended_at,
            limits: spec.limits,
            enforced: spec.enforced,
            usage: status.usage,
            output_bytes: status.output_bytes,
            output_truncated_bytes: status.truncated_bytes,
            output_disk_full_bytes: status.disk_full_bytes,
            stop_reason: status.stop_reason(),
            failure: status.failure,
            timeout: spec.timeout,
            labels: spec.labels.clone(),
        }
    }

    /// Writes the record through `records` (atomically, durable within its
    /// bound). Blocks: call it from a blocking thread.
    pub fn persist(&self, records: &Records) -> std::io::Result<()> {
        let _one_at_a_time = self.persisting.lock().unwrap_or_else(|p| p.into_inner());
        let record = Record {
            version: RECORD_VERSION,
            spec: self.spec.clone(),
            status: self.status().clone(),
        };
        records.write(&record_path(&self.dir), &record)
    }
}

/// Where a job's record lives.
pub fn record_path(dir: &Path) -> PathBuf {
    dir.join(RECORD_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as a version-1 supervisor wrote it (taken from a real
    /// state directory, the command shortened).
    const VERSION_1: &str = r#"{
      "info": {
        "id": "441056a5-0c6d-45d9-9e60-73b3c1d4c672",
        "owner": { "Remote": "admin" },
        "command": "sh",
        "args": ["-c", "echo hi"],
        "state": "Finished",
        "pid": null,
        "uid": 61184,
        "gid": 61184,
        "termination": { "Exited": 0 },
        "oom_killed": false,
        "created_at": 1796218823907,
        "started_at": 1796218823914,
        "ended_at": 1796218825431,
        "limits": { "cpu_millicores": null, "memory_bytes": null, "io_read_bps": null,
                    "io_write_bps": null, "pids": null },
        "enforced": { "cpu": false, "memory": false, "io": false, "pids": false },
        "usage": { "cpu_usec": 23454, "memory_peak_bytes": null, "io_read_bytes": 0,
                   "io_write_bytes": 0 },
        "output_bytes": 344,
        "output_truncated_bytes": 0,
        "failure": null
      },
      "request_id": null,
      "stop_requested": true
    }"#;

    #[test]
    fn a_version_1_record_still_reads() {
        let record = Record::decode(VERSION_1.as_bytes()).unwrap();
        assert_eq!(record.version, RECORD_VERSION);
        assert_eq!(
            record.spec.id.to_string(),
            "441056a5-0c6d-45d9-9e60-73b3c1d4c672"
        );
        assert_eq!(record.spec.owner.to_string(), "admin");
        assert_eq!(
            (record.spec.uid, record.spec.gid),
            (Some(61184), Some(61184))
        );
        assert_eq!(record.status.state, JobState::Finished);
        assert_eq!(record.status.termination, Some(Termination::Exited(0)));
        assert_eq!(record.status.output_bytes, 344);
        assert!(record.status.stop_requested);
        assert_eq!(record.spec.created_at, UnixMicros(1_796_218_823_907_000));
        assert_eq!(
            record.status.ended_at,
            Some(UnixMicros(1_796_218_825_431_000))
        );
        // A record from before per-job uids has none.
        let older = VERSION_1
            .replace("\"uid\": 61184,", "")
            .replace("\"gid\": 61184,", "");
        assert_eq!(Record::decode(older.as_bytes()).unwrap().spec.uid, None);
    }

    #[test]
    fn a_record_round_trips_and_a_newer_one_is_refused() {
        let record = Record::decode(VERSION_1.as_bytes()).unwrap();
        let written = serde_json::to_vec(&record).unwrap();
        assert_eq!(Record::decode(&written).unwrap(), record);
        let mut newer: serde_json::Value = serde_json::from_slice(&written).unwrap();
        let next = RECORD_VERSION + 1;
        newer["version"] = next.into();
        let err = Record::decode(newer.to_string().as_bytes()).unwrap_err();
        assert!(
            matches!(err, RecordError::Newer(v) if v == u64::from(next)),
            "{err}"
        );
        // Version 2: the same but times in milliseconds.
        let mut version_2: serde_json::Value = serde_json::from_slice(&written).unwrap();
        version_2["version"] = 2.into();
        version_2["spec"]["created_at"] = 1_796_218_823_907_u64.into();
        assert_eq!(
            Record::decode(version_2.to_string().as_bytes())
                .unwrap()
                .spec
                .created_at,
            UnixMicros(1_796_218_823_907_000)
        );
        assert!(matches!(
            Record::decode(b"{\"version\": 3}"),
            Err(RecordError::Decode(_))
        ));
        // Version 3: no time limit, labels or timed_out.
        let mut version_3: serde_json::Value = serde_json::from_slice(&written).unwrap();
        version_3["version"] = 3.into();
        for (part, key) in [
            ("spec", "timeout"),
            ("spec", "labels"),
            ("status", "timed_out"),
        ] {
            version_3[part].as_object_mut().unwrap().remove(key);
        }
        let read = Record::decode(version_3.to_string().as_bytes()).unwrap();
        assert_eq!((read.spec.timeout, read.status.timed_out), (None, false));
        assert!(read.spec.labels.is_empty());
    }

    #[test]
    fn a_record_file_reads_as_its_newest_whole_record() {
        let first = Record::decode(VERSION_1.as_bytes()).unwrap();
        let mut ended = first.clone();
        ended.status.output_bytes = 345;
        let line = |record: &Record| serde_json::to_string(record).unwrap();
        // As written: the first record whole, each change a line after it.
        let file = format!("{}\n\n{}\n", line(&first), line(&ended));
        assert_eq!(Record::decode(file.as_bytes()).unwrap(), ended);
        // The last change cut short by a host crash: the one before it.
        let torn = format!("{}\n\n{}", line(&first), &line(&ended)[..40]);
        assert_eq!(Record::decode(torn.as_bytes()).unwrap(), first);
        // A change after a line cut short by a full disk still reads.
        let after = format!("{torn}\n{}\n", line(&ended));
        assert_eq!(Record::decode(after.as_bytes()).unwrap(), ended);
        // A record of an older version, written whole over several lines,
        // then changed by this supervisor, with or without that change torn.
        let older = serde_json::to_string_pretty(&first).unwrap();
        let changed = format!("{older}\n\n{}\n", line(&ended));
        assert_eq!(Record::decode(changed.as_bytes()).unwrap(), ended);
        let cut = format!("{older}\n\n{}", &line(&ended)[..40]);
        assert_eq!(Record::decode(cut.as_bytes()).unwrap(), first);
        assert!(matches!(Record::decode(b""), Err(RecordError::Decode(_))));
        assert!(matches!(
            Record::decode(b"{\"ver"),
            Err(RecordError::Decode(_))
        ));
    }
}
