//! Accounting for every job on disk when the supervisor starts again (after a
//! crash, `kill -9`, or a restart that left the jobs running):
//!
//! - an ended job is loaded as it was recorded;
//! - a running job whose init still runs is re-adopted: its pidfd is watched,
//!   its output followed, stop and status work on it (the init is the
//!   process of the job's cgroup that is pid 1 of its pid namespace: a
//!   running job's record names no pid);
//! - a running job whose init has exited meanwhile is settled from the exit
//!   record the init left (its real exit status);
//! - a job directory without a record, no output and no exit record is a
//!   start that failed (or was cut short) before it wrote its record, and
//!   so before its clone: nothing of it ever ran and its caller was told it
//!   failed. It is removed, with its cgroup, and not listed (one with
//!   output lost its record to a host crash: it is FAILED, saying so);
//! - a job whose state cannot be recovered (no init and no exit record, a
//!   record that cannot be read, a start that never reached its clone) is
//!   FAILED with the reason, and whatever is left of it is killed through its
//!   cgroup. A start that did reach its clone is adopted like a running job
//!   (its caller may have had its answer; a retry with the same request id
//!   finds the job): an init that then fails to start the command exits
//!   without an exit record, and the job is FAILED saying so;
//! - a job cgroup with no job directory is killed and removed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jobworker_ipc::{Args, Command, JobId, Owner, UnixMicros, UserName};

use super::job::{Job, RECORD_VERSION, Record, RecordError, Spec, Status, record_path};
use super::lifecycle::{self, Found, Recovery};
use super::{Engine, EngineError};
use crate::cgroup::JobCgroup;
use crate::handoff::EXIT_FILE;

/// How many jobs recovery found in each condition.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Jobs that had ended.
    pub ended: usize,
    /// Running jobs re-adopted.
    pub adopted: usize,
    /// Jobs that ended while the supervisor was down (or could not be
    /// recovered), settled now.
    pub settled: usize,
    /// Job cgroups without a job, killed and removed.
    pub orphans: usize,
    /// Job directories without a record (starts that failed before they
    /// wrote one), removed.
    pub discarded: usize,
}

impl Engine {
    /// Loads every job of the state directory; see the module docs.
    pub fn recover(self: &Arc<Self>) -> Result<Recovered, EngineError> {
        let jobs_dir = self.config.state_dir.join("jobs");
        let entries = std::fs::read_dir(&jobs_dir).map_err(|source| EngineError::StateDir {
            path: jobs_dir.clone(),
            source,
        })?;
        let mut recovered = Recovered::default();
        let mut known = HashSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(id) = name.parse::<JobId>() else {
                tracing::warn!(path = %entry.path().display(), "not a job directory; left alone");
                continue;
            };
            known.insert(name.clone());
            match self.recover_job(id, &entry.path()) {
                Ok(Kind::Discarded) => {
                    // Its cgroup, if the start made one, goes with the orphans.
                    known.remove(&name);
                    recovered.discarded += 1;
                }
                Ok(Kind::Newer(version)) => {
                    return Err(EngineError::NewerRecord {
                        path: record_path(&entry.path()),
                        version,
                    });
                }
                Ok(Kind::Ended) => recovered.ended += 1,
                Ok(Kind::Adopted) => recovered.adopted += 1,
                Ok(Kind::Settled) => recovered.settled += 1,
                Err(e) => tracing::error!(job = %id, error = %e, "recovering a job"),
            }
        }
        for name in self.cgroups.job_names().unwrap_or_default() {
            if known.contains(&name) {
                continue;
            }
            if let Some(cgroup) = self.cgroups.job(&name) {
                tracing::warn!(cgroup = %cgroup.path().display(), "a job cgroup without a job: killing it");
                match cgroup.destroy(Duration::from_secs(10)) {
                    Ok(true) => {}
                    Ok(false) => tracing::error!(cgroup = %cgroup.path().display(),
                        "an orphan cgroup did not empty after cgroup.kill; left in place"),
                    Err(e) => tracing::error!(cgroup = %cgroup.path().display(), error = %e,
                        "removing an orphan cgroup"),
                }
                recovered.orphans += 1;
            }
        }
        Ok(recovered)
    }

    fn recover_job(self: &Arc<Self>, id: JobId, dir: &Path) -> Result<Kind, String> {
        let cgroup = self
            .cgroups
            .job_handle(&id.to_string())
            .map_err(|e| e.to_string())?;
        let record = match read_record(dir) {
            Err(RecordError::Read(e))
                if e.kind() == std::io::ErrorKind::NotFound && never_ran(dir) =>
            {
                tracing::warn!(job = %id, "a job directory without a record (a start that \
                    failed before it wrote one; nothing of it ran): removing it");
                return std::fs::remove_dir_all(dir)
                    .map(|()| Kind::Discarded)
                    .map_err(|e| format!("removing {}: {e}", dir.display()));
            }
            Ok(record) if record.spec.id == id => record,
            Ok(_) => unreadable(id, "its record names another job".into()),
            // Neither touched nor taken: the supervisor refuses to start.
            Err(RecordError::Newer(version)) => return Ok(Kind::Newer(version)),
            Err(e) => unreadable(id, format!("{}: {e}", record_path(dir).display())),
        };
        let Record { spec, status, .. } = record;
        let (ended, pid) = (status.state.is_ended(), status.pid);
        let job = Arc::new(Job::new(spec, dir.to_path_buf(), cgroup, status));
        // Its uid stays held until nothing of the job is left, as before
        // the restart (an ended job with an empty work directory holds none).
        self.hold_recovered_uid(&job);
        let exit_record = dir.join(EXIT_FILE).exists();
        // A job's pid is recorded only at its end: a running one's init is
        // found in its cgroup (a record from before that names it).
        let init = if ended || exit_record {
            None
        } else {
            match pid {
                Some(pid) => live_init(&job.cgroup, pid).map(|pidfd| (pid, pidfd)),
                None => find_init(&job.cgroup),
            }
        };
        let found = Found {
            ended,
            exit_record,
            init_runs: init.is_some(),
            pid_recorded: pid.is_some(),
        };
        let decision = lifecycle::recover(found, &job.status());
        match (decision, init) {
            (Recovery::Ended, _) => {
                // A crash while settling may have left the (empty) cgroup.
                if job.cgroup.path().exists() {
                    let _ = job.cgroup.destroy(Duration::from_secs(10));
                }
                self.index_recovered(&job);
                self.jobs().insert(job);
                Ok(Kind::Ended)
            }
            (Recovery::Adopt, Some((pid, pidfd))) => {
                job.status().pid = Some(pid);
                self.adopt(&job, pidfd, None);
                Ok(Kind::Adopted)
            }
            (Recovery::SettleUnrecorded(Some(failure)), _) => {
                job.status().failure = Some(failure);
                self.supervise(&job, None, None);
                Ok(Kind::Settled)
            }
            _ => {
                self.supervise(&job, None, None);
                Ok(Kind::Settled)
            }
        }
    }
}

enum Kind {
    /// Its record is of a newer supervisor (this version).
    Newer(u64),
    Ended,
    Adopted,
    Settled,
    /// A directory without a record, removed.
    Discarded,
}

/// Whether nothing of the job in `dir` ever ran: no output and no exit
/// record. (A host crash can lose a start's record from the page cache
/// while its job's output survives: that job is reported, not removed.)
fn never_ran(dir: &Path) -> bool {
    let output = std::fs::metadata(dir.join(crate::handoff::OUTPUT_FILE)).map_or(0, |m| m.len());
    output == 0 && !dir.join(EXIT_FILE).exists()
}

fn read_record(dir: &Path) -> Result<Record, RecordError> {
    Record::decode(&std::fs::read(record_path(dir))?)
}

/// A record for a job whose own record cannot be read: FAILED, with why. Its
/// owner is unknown, so only admins see it.
fn unreadable(id: JobId, reason: String) -> Record {
    tracing::error!(job = %id, %reason, "a job's record cannot be read; reporting it FAILED");
    let mut status = Status::starting();
    status.failure = Some(format!("its record could not be recovered: {reason}"));
    Record {
        version: RECORD_VERSION,
        spec: Spec {
            id,
            owner: Owner::Local(UserName::new("root").expect("a valid constant")),
            command: Command::new("unknown").expect("a valid constant"),
            args: Args::default(),
            limits: Default::default(),
            enforced: Default::default(),
            created_at: UnixMicros::now(),
            request_id: None,
            uid: None,
            gid: None,
            timeout: None,
            labels: Default::default(),
        },
        status,
    }
}

/// The init behind `pid`, if it still runs and is the job's of `cgroup`: a
/// pidfd opened for the pid, then checked to be in the job's cgroup (so a
/// reused pid is never taken for the init).
fn live_init(cgroup: &JobCgroup, pid: u32) -> Option<std::os::fd::OwnedFd> {
    let raw = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).ok()?;
    cgroup.pids().ok()?.contains(&pid).then_some(pidfd)
}

/// The init of the job of `cgroup`, found without its pid: the process of
/// the cgroup that is pid 1 of its own pid namespace (`NSpid` in
/// `/proc/<pid>/status` ends in 1), as a pidfd checked against the cgroup
/// like [`live_init`]'s.
pub(super) fn find_init(cgroup: &JobCgroup) -> Option<(u32, std::os::fd::OwnedFd)> {
    cgroup.pids().ok()?.into_iter().find_map(|pid| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
        (nspid.split_whitespace().last()? == "1")
            .then(|| live_init(cgroup, pid))
            .flatten()
            .map(|pidfd| (pid, pidfd))
    })
}
