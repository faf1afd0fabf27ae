//! Watching a job's init until it exits, then settling the job: its exit
//! record (written by the init), its usage and OOM kills (read from its cgroup
//! before the cgroup goes), its state, and its cgroup emptied and removed.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use jobworker_ipc::{JobState, Termination, UnixMicros, Usage};

use super::job::{Job, Status};
use crate::handoff::{EXIT_FILE, ExitRecord};

/// How long a job's cgroup may take to empty after `cgroup.kill`.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until the process behind `pidfd` has exited (a pidfd becomes
/// readable then), and reaps it if it is our child.
pub async fn wait_exit(pidfd: OwnedFd) -> std::io::Result<()> {
    let fd = crate::sys::register(pidfd, tokio::io::Interest::READABLE)?;
    let _ready = fd.readable().await?;
    // Not our child after a supervisor restart: then there is nothing to reap.
    let _ = rustix::process::waitid(
        rustix::process::WaitId::PidFd(fd.get_ref().get_ref().as_fd()),
        rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
    );
    Ok(())
}

/// Settles a job whose init has exited (the caller wakes its waiters).
pub async fn settle(job: &Arc<Job>) {
    let exit = read_exit_record(job);
    let (usage, oom_killed) = remove_cgroup(job).await;
    {
        let mut status = job.status();
        status.pid = None;
        status.oom_killed = oom_killed;
        if let Some(usage) = usage {
            status.usage = usage;
        }
        match &exit {
            Some(record) => end_as_recorded(&mut status, record),
            None => end_unrecorded(&mut status, job),
        }
    }
    if let Err(e) = job.persist() {
        tracing::error!(job = %job.spec.id, error = %e, "writing the job's record");
    }
}

/// The exit record the init wrote in the job's directory, if there is one
/// that parses.
fn read_exit_record(job: &Job) -> Option<ExitRecord> {
    std::fs::read(job.dir.join(EXIT_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

/// Reads the job's usage and whether the OOM killer struck, then empties
/// and removes its cgroup (off the runtime's threads), logging a cgroup that
/// would not go. Returns the usage (if it could be read) and the OOM kill.
async fn remove_cgroup(job: &Job) -> (Option<Usage>, bool) {
    let cgroup = job.cgroup.clone();
    let settled = tokio::task::spawn_blocking(move || {
        let usage = cgroup.usage();
        let oom = cgroup.oom_killed().unwrap_or(false);
        // The init killed the rest of the job before it exited, and the kernel
        // kills a pid namespace whose init dies; the kill is the backstop.
        // The cgroup goes before the job counts as ended: whoever waits for
        // the end (a stop) then finds nothing of the job left.
        let destroyed = cgroup.destroy(EMPTY_TIMEOUT);
        (usage.ok(), oom, destroyed.map_err(|e| e.to_string()))
    })
    .await;
    let (usage, oom_killed, destroyed) = match settled {
        Ok(settled) => settled,
        Err(e) => (None, false, Err(format!("the settling task failed: {e}"))),
    };
    match destroyed {
        Ok(true) => {}
        Ok(false) => {
            tracing::error!(job = %job.spec.id, "the job's cgroup did not empty after cgroup.kill")
        }
        Err(e) => tracing::error!(job = %job.spec.id, error = %e, "destroying the job's cgroup"),
    }
    (usage, oom_killed)
}

/// Ends the job's status as the init's exit record tells: how and when the
/// command ended, its output, and whether it failed, was stopped or
/// finished.
fn end_as_recorded(status: &mut Status, record: &ExitRecord) {
    status.termination = Some(record.termination);
    status.ended_at = Some(record.ended_at_us);
    status.output_bytes = record.output_bytes;
    status.truncated_bytes = record.truncated_bytes;
    // Stopped only if the stop reached the init while the command still ran:
    // a stop that raced with the command's own end leaves the job FINISHED,
    // as it ended by itself.
    status.state = if status.failure.is_some() {
        JobState::Failed
    } else if record.stopped {
        JobState::Stopped
    } else {
        JobState::Finished
    };
}

/// Ends the job's status when the init left no exit record: stopped (killed
/// through its cgroup) if a stop was asked for, failed otherwise.
fn end_unrecorded(status: &mut Status, job: &Job) {
    status.ended_at = Some(UnixMicros::now());
    status.output_bytes = std::fs::metadata(job.output_path()).map_or(0, |m| m.len());
    if status.stop_requested {
        // Killed through its cgroup after the grace period.
        status.termination = Some(Termination::Signaled(libc::SIGKILL));
        status.state = JobState::Stopped;
    } else {
        status.state = JobState::Failed;
        status.failure.get_or_insert_with(|| {
            "the job's init ended without recording how the command ended".into()
        });
    }
}
