//! Watching a job's init until it ends, then settling the job. The end is
//! decided by the exit record the init sends as it ends (it has killed and
//! reaped every other process of the job by then: it is pid 1 of the job's
//! pid namespace), or by its exit without one; nothing waits for the
//! cgroup to report itself empty (`cgroup.events` is rate-limited to one
//! notification per ~10-16 ms). In order: the usage (read before the cgroup
//! goes), the status, the waiters woken (followers see the end here), then,
//! once the init has exited, the record written and the cgroup removed
//! (`cgroup.kill` and a wait only if it is, unexpectedly, still busy).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use jobworker_ipc::UnixMicros;

use super::job::Job;
use super::{Engine, lifecycle};
use crate::handoff::{EXIT_FILE, ExitRecord};

/// How long a job's cgroup may take to empty after `cgroup.kill`, when it
/// did not go at once.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until `job`'s init behind `pidfd` has exited (a pidfd becomes
/// readable then), and reaps it if it is our child; logs a failure to
/// wait.
pub async fn wait_exit(job: &Job, pidfd: OwnedFd) {
    if let Err(e) = wait_exit_of(pidfd).await {
        tracing::error!(job = %job.spec.id, error = %e, "waiting for the job's init");
    }
}

/// Waits until the process behind `pidfd` has exited, and reaps it if it
/// is our child.
pub async fn wait_exit_of(pidfd: OwnedFd) -> std::io::Result<()> {
    let fd = crate::sys::register(pidfd, tokio::io::Interest::READABLE)?;
    let _ready = fd.readable().await?;
    // Not our child after a supervisor restart: then there is nothing to reap.
    let _ = rustix::process::waitid(
        rustix::process::WaitId::PidFd(fd.get_ref().get_ref().as_fd()),
        rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
    );
    Ok(())
}

impl Engine {
    /// Settles a job whose init sent its exit record (`exit`; the init,
    /// behind `init`, may still be exiting) or has exited without one (or
    /// that has none): see the module docs. The job ends on the engine's
    /// threads, which read its cgroup's usage files (and, without the
    /// record, the record file): no file is read on the runtime. Once the
    /// init has exited, the cleanup (record, cgroup, uid, retention) runs
    /// there too.
    pub(super) async fn settle(
        self: &Arc<Self>,
        job: Arc<Job>,
        exit: Option<ExitRecord>,
        init: Option<OwnedFd>,
    ) {
        let ending = Arc::clone(&job);
        let ended = self.workers.run(move || {
            let record = exit.or_else(|| read_exit_record(&ending));
            end(&ending, record.as_ref());
        });
        if let Err(e) = ended.await {
            tracing::error!(job = %job.spec.id, error = %e, "ending the job");
        }
        self.figures.ended(&job.status());
        self.uncount_running(&job);
        if let Some(init) = init {
            wait_exit(&job, init).await;
        }
        let engine = Arc::clone(self);
        let cleanup = self.workers.spawn(move || engine.clean_up(&job));
        if let Err(e) = cleanup {
            tracing::error!(error = %e, "cleaning up after a job");
        }
    }

    /// What follows a job's end (and its init's exit), off its critical
    /// path. Blocks.
    fn clean_up(self: &Arc<Self>, job: &Arc<Job>) {
        self.watcher.unwatch(job);
        // Read again now that the init has exited: its flush of the log
        // and its last moments count too.
        if let Ok(usage) = job.cgroup.usage() {
            job.status().usage = usage;
        }
        if let Err(e) = job.persist(&self.records) {
            tracing::error!(job = %job.spec.id, error = %e, "writing the job's record");
        }
        // The cgroup before the uid: a job settled without an init (after a
        // restart) may still have processes, which its removal kills.
        if job.cgroup.remove().is_ok() {
            self.finish_clean_up(job);
            return;
        }
        // Still busy (a job settled without an init, or the kernel lags):
        // killed and waited for on tokio's blocking pool, not on the
        // engine's few threads.
        let (engine, job) = (Arc::clone(self), Arc::clone(job));
        tokio::task::spawn_blocking(move || {
            destroy_cgroup(&job);
            engine.finish_clean_up(&job);
        });
    }

    /// The uid given back (if nothing is left of the job), the cleanup
    /// marked done, retention applied.
    fn finish_clean_up(self: &Arc<Self>, job: &Arc<Job>) {
        self.release_if_nothing_left(job);
        job.set_cleaned_up();
        self.retain_ended(job);
    }
}

/// Ends the job's status (as its exit record tells, if there is one; see
/// [`lifecycle::end`]) with its final usage, and wakes its waiters:
/// followers see the end here. It reads the cgroup's files (and, without an
/// exit record, the log's length): call it on the engine's threads.
fn end(job: &Job, exit: Option<&ExitRecord>) {
    let usage = job.cgroup.usage();
    let oom_killed = job.cgroup.oom_killed().unwrap_or(false);
    let log_len = match exit {
        Some(_) => 0,
        None => std::fs::metadata(job.output_path()).map_or(0, |m| m.len()),
    };
    {
        let mut status = job.status();
        status.oom_killed = oom_killed;
        if let Ok(usage) = usage {
            status.usage = usage;
        }
        lifecycle::end(&mut status, exit, log_len, UnixMicros::now());
    }
    *job.pidfd.lock().unwrap_or_else(|p| p.into_inner()) = None;
    job.notify();
}

/// The exit record the init wrote in the job's directory, if there is one
/// that parses.
fn read_exit_record(job: &Job) -> Option<ExitRecord> {
    std::fs::read(job.dir.join(EXIT_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

/// Kills what is left in the ended job's cgroup, waits until it is empty
/// and removes it; logs one that will not go. Blocks up to [`EMPTY_TIMEOUT`].
fn destroy_cgroup(job: &Job) {
    match job.cgroup.destroy(EMPTY_TIMEOUT) {
        Ok(true) => {}
        Ok(false) => {
            tracing::error!(job = %job.spec.id, "the job's cgroup did not empty after cgroup.kill")
        }
        Err(e) => tracing::error!(job = %job.spec.id, error = %e, "destroying the job's cgroup"),
    }
}
