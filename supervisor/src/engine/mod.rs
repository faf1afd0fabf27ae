//! The job engine: starts jobs (a cgroup, a clone3 of the init into it, the
//! init's report), stops them (SIGTERM, grace, SIGKILL of every process), and
//! answers status, list and output queries. It knows nothing of callers or
//! permissions: the service in front of it decides who may do what.
//!
//! - [`job`]: one job's state and record.
//! - [`lifecycle`]: the engine's decisions (a stop's escalation, time
//!   limits, a job's end, recovery, retention) as pure functions,
//!   unit-tested without root.
//! - [`metrics`]: the engine's figures for the metrics request.
//! - [`owners`]: counts per owner, for the cap on a user's running jobs.
//! - [`start`]: the steps of a start, its errors, and the guard that undoes
//!   a failed one.
//! - [`spawn`]: the spawner process, the clone of an init and the handoff
//!   to it.
//! - [`spare`]: one init cloned ahead of demand, for the next start.
//! - [`monitor`]: waiting for the init to exit and settling the job.
//! - [`records`]: writing job records, and the durability contract.
//! - [`requests`]: starts that carry a request id, one at a time per owner
//!   and request id.
//! - [`output`]: output readers, each job's shared tail, and the inotify
//!   watcher that wakes them.
//! - [`recovery`]: accounting for every job on disk after a restart.
//! - [`retention`]: removing the oldest ended jobs.
//! - [`table`]: the jobs, by id and by the request id each was started
//!   with.
//! - [`uids`]: the uid and gid each job runs as.
//! - [`workers`]: the engine's own threads for blocking steps.

pub mod job;
pub mod lifecycle;
pub mod metrics;
pub mod monitor;
pub mod output;
pub mod owners;
pub mod records;
pub mod recovery;
pub mod requests;
pub mod retention;
pub mod spare;
pub mod spawn;
pub mod start;
pub mod table;
pub mod uids;
pub mod workers;

use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobworker_ipc::{
    EnforcedLimits, IpcError, JobId, JobInfo, JobState, LabelSelector, Limits, ListCursor,
    SupervisorMetrics, UnixMicros,
};

use crate::cgroup::{CgroupTree, Controllers};
use crate::handoff::{BindPath, WORK_MOUNT};
use job::{Job, RECORD_VERSION};
use lifecycle::StopStep;
pub use output::{Chunk, OutputStream};
use records::Records;
pub use retention::Retention;
use spawn::ExitWatch;
use uids::{JobIds, UidPool};

/// The `PATH` a job gets unless its request sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a stop waits for an ended job's cleanup (its cgroup removed,
/// its record written) before it answers anyway.
const CLEANUP_WAIT: Duration = Duration::from_secs(15);

/// A job's writable directory, in its directory on the host.
pub const WORK_DIR: &str = "work";

/// The size of a job's private tmpfs mounts when `tmp_size` is unset and the
/// job has no memory limit; with one, a quarter of it.
pub const DEFAULT_TMP_SIZE: u64 = 64 << 20;

/// The engine's settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Where job directories go (`<state_dir>/jobs/<id>`).
    pub state_dir: PathBuf,
    /// The init program (`jobworker-init`): started once as the spawner of
    /// every job's init (see [`crate::spawner`]).
    pub init_program: PathBuf,
    /// The uid and gid jobs run as.
    pub job_ids: JobIds,
    /// What every job's sandbox holds.
    pub sandbox: SandboxConfig,
    /// Limits of a job that asks for none.
    pub default_limits: Limits,
    /// The most a job may ask for; an unset limit with a maximum gets it.
    pub max_limits: Limits,
    /// How long ended jobs are kept.
    pub retention: Retention,
    /// Refuse a job whose limits cannot all be enforced.
    pub strict_limits: bool,
    /// Output bytes kept per job.
    pub output_cap: u64,
    /// Starts are refused while the state file system has less free.
    pub min_free_bytes: u64,
    /// The grace period of a stop, and the longest a request may ask for (a
    /// longer one is refused).
    pub grace: Duration,
    /// Jobs' time limits: the default and the maximum.
    pub timeouts: crate::config::Timeouts,
    /// The most jobs one remote user may have running; 0: no cap.
    pub max_running_per_owner: usize,
    /// The block device io limits apply to; `None` means the one holding
    /// the state directory.
    pub io_device: Option<(u32, u32)>,
    /// The working directory of a job that asks for none.
    pub working_dir: String,
}

/// The parts of every job's sandbox that the configuration sets.
#[derive(Clone, Debug, Default)]
pub struct SandboxConfig {
    /// The size of each private tmpfs; see [`DEFAULT_TMP_SIZE`] when unset.
    pub tmp_size: Option<u64>,
    /// Host paths hidden from jobs.
    pub masked_paths: Vec<PathBuf>,
    /// Host paths shown to jobs besides the read-only host tree.
    pub bind_paths: Vec<BindPath>,
    /// Whether jobs may use io_uring.
    pub allow_io_uring: bool,
    /// `RLIMIT_NPROC` of a job without a pids limit.
    pub max_processes: u64,
}

/// Why the engine could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state directory could not be prepared.
    #[error("preparing the state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The block device for io limits could not be found.
    #[error("finding the block device of {path}: {source}")]
    IoDevice {
        /// The state directory.
        path: PathBuf,
        /// The error.
        source: crate::cgroup::CgroupError,
    },
    /// A job record was written by a newer supervisor: this one would
    /// misread it, so it does not start.
    #[error(
        "{path} has record version {version}, newer than this supervisor's {RECORD_VERSION}: \
         run the newer supervisor (a downgrade cannot read its records)",
        path = path.display()
    )]
    NewerRecord {
        /// The record.
        path: PathBuf,
        /// Its version.
        version: u64,
    },
    /// inotify could not be set up.
    #[error("setting up inotify for output followers: {0}")]
    Inotify(std::io::Error),
    /// The thread that makes job records durable could not be started.
    #[error("starting the job record syncer thread: {0}")]
    Syncer(std::io::Error),
    /// The engine's worker threads could not be started.
    #[error("starting the engine's worker threads: {0}")]
    Workers(std::io::Error),
    /// The spawner of jobs' inits could not be started.
    #[error("{0}")]
    Spawner(spawn::SpawnError),
    /// The mount point of jobs' work directories is missing and could not
    /// be made, or is not a directory.
    #[error(
        "making {WORK_MOUNT}, where every job's work directory is mounted in its view of the host \
         (make it an empty directory): {0}"
    )]
    WorkMount(std::io::Error),
}

/// The job engine.
pub struct Engine {
    config: EngineConfig,
    cgroups: CgroupTree,
    controllers: Controllers,
    io_device: Option<(u32, u32)>,
    jobs: Mutex<table::JobTable>,
    records: Arc<Records>,
    workers: Arc<workers::Workers>,
    watcher: Arc<output::Watcher>,
    /// The process that clones jobs' inits.
    spawner: spawn::Spawner,
    /// The init cloned ahead of the next start.
    spare: spare::Slot,
    /// The uids jobs get, unless they all run as one account.
    uid_pool: Option<Mutex<UidPool>>,
    started: Instant,
    /// Starts that carry a request id, one at a time per owner and request
    /// id, so that two retries of one request cannot both start a job.
    requests: requests::InFlight,
    /// Starts under way, per owner: with the running jobs, what the cap on
    /// an owner's running jobs counts.
    starting: owners::PerOwner,
    /// Running jobs, per owner (kept as jobs are adopted and end, so that a
    /// start's check of its owner's cap walks no job).
    running: owners::PerOwner,
    /// The ended jobs retention may remove.
    retention: Mutex<retention::Index>,
    /// What the engine counts.
    figures: metrics::Figures,
}

impl Engine {
    /// An engine over a prepared cgroup subtree (see [`CgroupTree::setup`]).
    /// Must be called inside a tokio runtime: it spawns the output watcher.
    pub fn new(
        config: EngineConfig,
        cgroups: CgroupTree,
        controllers: Controllers,
    ) -> Result<Arc<Self>, EngineError> {
        let jobs_dir = config.state_dir.join("jobs");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&jobs_dir)
            .map_err(|source| EngineError::StateDir {
                path: jobs_dir.clone(),
                source,
            })?;
        make_work_mount()?;
        let io_device = match config.io_device {
            Some(device) => Some(device),
            None => crate::cgroup::block_device_of(&config.state_dir).map_err(|source| {
                EngineError::IoDevice {
                    path: config.state_dir.clone(),
                    source,
                }
            })?,
        };
        let records = Records::start(&config.state_dir).map_err(EngineError::Syncer)?;
        let workers = workers::Workers::start(&tokio::runtime::Handle::current())
            .map(Arc::new)
            .map_err(EngineError::Workers)?;
        let watcher = output::Watcher::new(Arc::clone(&workers)).map_err(EngineError::Inotify)?;
        tokio::spawn(Arc::clone(&watcher).run());
        let spawner = spawn::Spawner::start(&config.init_program).map_err(EngineError::Spawner)?;
        let uid_pool = match &config.job_ids {
            JobIds::Shared { .. } => None,
            JobIds::PerJob { range, excluded } => {
                Some(Mutex::new(UidPool::new(range.clone(), excluded.clone())))
            }
        };
        Ok(Arc::new(Self {
            config,
            cgroups,
            controllers,
            io_device,
            jobs: Mutex::new(table::JobTable::default()),
            records,
            workers,
            watcher,
            spawner,
            spare: spare::Slot::default(),
            uid_pool,
            started: Instant::now(),
            requests: requests::InFlight::default(),
            starting: owners::PerOwner::default(),
            running: owners::PerOwner::default(),
            retention: Mutex::new(retention::Index::default()),
            figures: metrics::Figures::default(),
        }))
    }

    /// Waits until every record written so far is durable. Blocks.
    pub fn flush_records(&self) {
        self.records.flush();
    }

    /// How long the engine has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The cgroup subtree root.
    pub fn cgroup_root(&self) -> &Path {
        self.cgroups.root()
    }

    /// The controllers jobs get.
    pub fn controllers(&self) -> Controllers {
        self.controllers
    }

    /// Counts `job` among its owner's running jobs, once.
    fn count_running(&self, job: &Job) {
        if !job
            .counted_running
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.running.add(&job.spec.owner);
        }
    }

    /// No longer counts the ended `job` among its owner's running jobs.
    fn uncount_running(&self, job: &Job) {
        if job
            .counted_running
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            self.running.remove(&job.spec.owner);
        }
    }

    /// The engine's figures since it started, and the jobs running now.
    pub fn metrics(&self) -> SupervisorMetrics {
        let jobs_running = self.running.total();
        let figures = self.figures.snapshot();
        SupervisorMetrics {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            jobs_started: figures.jobs_started,
            start_failures: figures.start_failures,
            jobs_ended: figures.jobs_ended,
            jobs_running: u64::try_from(jobs_running).unwrap_or(u64::MAX),
            start_seconds: figures.start_seconds,
            duration_seconds: figures.duration_seconds,
            output_bytes: figures.output_bytes,
            output_dropped_bytes: figures.output_dropped,
            followers: figures.followers,
            limits_enforced: EnforcedLimits {
                cpu: self.controllers.cpu,
                memory: self.controllers.memory,
                io: self.controllers.io,
                pids: self.controllers.pids,
            },
            uptime_ms: u64::try_from(self.uptime().as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, table::JobTable> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job with this id.
    pub fn job(&self, id: JobId) -> Result<Arc<Job>, IpcError> {
        self.jobs()
            .get(&id)
            .cloned()
            .ok_or(IpcError::NotFound { job: id })
    }

    /// Gives an ended job's uid back once nothing of the job is left: its
    /// work directory is removed if it is empty (the common case); one with
    /// files keeps the uid held until retention (or a shortage of uids)
    /// removes it.
    fn release_if_nothing_left(&self, job: &Job) {
        if self.uid_pool.is_some() && remove_empty_work_dir(job) {
            self.release_ids(job);
        }
    }

    /// Holds the uid of a job recovered after a restart, unless it has
    /// ended and nothing of it is left.
    fn hold_recovered_uid(&self, job: &Job) {
        let (Some(pool), Some(uid)) = (&self.uid_pool, job.spec.uid) else {
            return;
        };
        if job.is_ended() && remove_empty_work_dir(job) {
            return;
        }
        let mut pool = lock(pool);
        if !pool.hold(uid, job.spec.id) && pool.range().contains(&uid) {
            tracing::warn!(job = %job.spec.id, uid,
                "a recovered job's uid is held by another job, or names an account of the host");
        }
    }

    /// Gives a job's uid back to the pool.
    fn release_ids(&self, job: &Job) {
        if let (Some(pool), Some(uid)) = (&self.uid_pool, job.spec.uid) {
            lock(pool).release(uid, job.spec.id);
        }
    }

    /// Takes charge of a running job: its pidfd, a task that settles it when
    /// its init exits (learning how from `exit`, the init's control socket,
    /// when this supervisor started it), and one that stops it at its
    /// deadline if it has a time limit.
    fn adopt(self: &Arc<Self>, job: &Arc<Job>, pidfd: OwnedFd, exit: Option<ExitWatch>) {
        self.count_running(job);
        match pidfd.try_clone() {
            Ok(watched) => {
                *job.pidfd.lock().unwrap_or_else(|p| p.into_inner()) = Some(pidfd);
                self.supervise(job, Some(watched), exit);
            }
            Err(e) => {
                tracing::error!(job = %job.spec.id, error = %e, "duplicating the init's pidfd");
                self.supervise(job, Some(pidfd), exit);
            }
        }
        // Last: a deadline already passed stops the job at once, and its
        // SIGTERM needs the pidfd stored above.
        self.enforce_time_limit(job);
    }

    /// Registers `job` and spawns the task that settles it: when its init
    /// (behind `pidfd`) sends its exit record or exits, or at once when
    /// there is none.
    fn supervise(
        self: &Arc<Self>,
        job: &Arc<Job>,
        pidfd: Option<OwnedFd>,
        exit: Option<ExitWatch>,
    ) {
        self.jobs().insert(Arc::clone(job));
        let engine = Arc::clone(self);
        let job = Arc::clone(job);
        tokio::spawn(async move {
            // The record comes as the init ends, when every other process
            // of the job is gone: the job has ended, and the init's exit is
            // waited for after its followers know. Without a record, the
            // init's exit decides.
            let record = match exit {
                Some(exit) => exit.exit_record().await,
                None => None,
            };
            let init = match (pidfd, &record) {
                (Some(pidfd), None) => {
                    monitor::wait_exit(&job, pidfd).await;
                    None
                }
                (pidfd, _) => pidfd,
            };
            engine.settle(job, record, init).await;
        });
    }

    /// Stops `job` with the default grace period once its time limit (if it
    /// has one) runs out, counted from its creation: a task that ends
    /// early when the job does.
    fn enforce_time_limit(self: &Arc<Self>, job: &Arc<Job>) {
        let Some(timeout) = job.spec.timeout else {
            return;
        };
        let left = lifecycle::time_left(job.spec.created_at, timeout, UnixMicros::now());
        let (engine, job) = (Arc::clone(self), Arc::clone(job));
        tokio::spawn(async move {
            let mut changes = job.subscribe();
            if wait_ended(&job, &mut changes, left).await {
                return;
            }
            tracing::info!(job = %job.spec.id, %timeout, "the job's time limit ran out: stopping it");
            if let Err(e) = engine.stop_job(&job, Stop::TimedOut).await {
                tracing::error!(job = %job.spec.id, error = %e, "stopping a job at its time limit");
            }
        });
    }

    /// Stops a job: SIGTERM to its init (which forwards it to the command),
    /// the grace period, then SIGKILL to every process of the job. Returns
    /// once nothing of the job runs. Stopping an ended job returns it as is.
    pub async fn stop(
        self: &Arc<Self>,
        id: JobId,
        grace: Option<Duration>,
    ) -> Result<JobInfo, IpcError> {
        let job = self.job(id)?;
        let grace = lifecycle::grace(grace, self.config.grace)?;
        self.stop_job(&job, Stop::Requested(grace)).await
    }

    /// Stops every running job at once, each as [`stop`](Self::stop) does
    /// with the configured grace period, and returns once every job has
    /// ended and is cleaned up: how many were stopped, and how many could
    /// not be. Only jobs whose init runs are stopped; one that recovery is
    /// settling (it ended while no supervisor ran) keeps the end it had.
    pub async fn stop_all(self: &Arc<Self>) -> (usize, usize) {
        let pending: Vec<Arc<Job>> = self
            .jobs()
            .values()
            .filter(|job| !job.is_cleaned_up())
            .cloned()
            .collect();
        let mut stops = tokio::task::JoinSet::new();
        for job in pending {
            let engine = Arc::clone(self);
            stops.spawn(async move {
                let init_runs = !job.is_ended()
                    && job
                        .pidfd
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_some();
                if !init_runs {
                    engine.settled_info(&job, &mut job.subscribe()).await;
                    return None;
                }
                let stopped = engine
                    .stop_job(&job, Stop::Requested(engine.config.grace))
                    .await;
                if let Err(e) = &stopped {
                    tracing::error!(job = %job.spec.id, error = %e, "stopping a job");
                }
                Some(stopped.is_ok())
            });
        }
        let (mut stopped, mut failed) = (0, 0);
        while let Some(done) = stops.join_next().await {
            match done {
                Ok(None) => {}
                Ok(Some(true)) => stopped += 1,
                Ok(Some(false)) | Err(_) => failed += 1,
            }
        }
        (stopped, failed)
    }

    /// Stops `job`, as a caller asked or because its time limit ran out.
    async fn stop_job(self: &Arc<Self>, job: &Arc<Job>, stop: Stop) -> Result<JobInfo, IpcError> {
        let id = job.spec.id;
        let (grace, timed_out) = match stop {
            Stop::Requested(grace) => (grace, false),
            Stop::TimedOut => (self.config.grace, true),
        };
        let mut changes = job.subscribe();
        let already_ended = lifecycle::stopping(&mut job.status(), timed_out);
        if already_ended {
            return Ok(self.settled_info(job, &mut changes).await);
        }
        self.persist_in_background(job);
        for (step, wait) in lifecycle::stop_plan(grace) {
            match step {
                StopStep::Terminate => self.signal_init(job, rustix::process::Signal::TERM),
                StopStep::KillAll => self.signal_init(job, rustix::process::Signal::USR1),
                StopStep::KillCgroup => {
                    if let Err(e) = job.cgroup.kill() {
                        tracing::error!(job = %id, error = %e, "killing the job's cgroup");
                    }
                }
            }
            if wait_ended(job, &mut changes, wait).await {
                return Ok(self.settled_info(job, &mut changes).await);
            }
        }
        Err(internal(format!(
            "job {id} did not end after its cgroup was killed"
        )))
    }

    /// An ended job once it is cleaned up (its cgroup removed, its record
    /// written): whoever stopped it then finds nothing of it left.
    async fn settled_info(
        &self,
        job: &Job,
        changes: &mut tokio::sync::watch::Receiver<u64>,
    ) -> JobInfo {
        let cleaned_up = async {
            loop {
                changes.borrow_and_update();
                if job.is_cleaned_up() || changes.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(CLEANUP_WAIT, cleaned_up)
            .await
            .is_err()
        {
            tracing::warn!(job = %job.spec.id, "the ended job's cleanup is still under way");
        }
        job.recorded_info()
    }

    /// Writes `job`'s record on the engine's threads, without waiting for
    /// it.
    fn persist_in_background(self: &Arc<Self>, job: &Arc<Job>) {
        let (records, job) = (Arc::clone(&self.records), Arc::clone(job));
        let written = self.workers.spawn(move || {
            if let Err(e) = job.persist(&records) {
                tracing::error!(job = %job.spec.id, error = %e, "writing the job's record");
            }
        });
        if let Err(e) = written {
            tracing::error!(error = %e, "writing a job's record");
        }
    }

    fn signal_init(&self, job: &Job, signal: rustix::process::Signal) {
        if let Some(pidfd) = job.pidfd.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && let Err(e) = rustix::process::pidfd_send_signal(pidfd, signal)
            && e != rustix::io::Errno::SRCH
        {
            tracing::warn!(job = %job.spec.id, error = %e, "signalling the job's init");
        }
    }

    /// The status of a job (a running one's usage read on a blocking
    /// thread).
    pub async fn get(&self, id: JobId) -> Result<JobInfo, IpcError> {
        self.infos(vec![self.job(id)?])
            .await
            .pop()
            .ok_or_else(|| internal(format!("job {id} vanished while read")))
    }

    /// Jobs for which `visible` holds, newest first, in `state` if given,
    /// carrying every label of `labels`, at most `limit`, after `after`;
    /// with the cursor of the next page if more follow.
    pub async fn list(
        &self,
        visible: impl Fn(&Job) -> bool,
        state: Option<JobState>,
        labels: &LabelSelector,
        limit: usize,
        after: Option<ListCursor>,
    ) -> (Vec<JobInfo>, Option<ListCursor>) {
        let mut jobs: Vec<Arc<Job>> = self
            .jobs()
            .values()
            .filter(|job| visible(job))
            .filter(|job| job.spec.labels.matches(labels))
            .filter(|job| state.is_none_or(|s| job.status().state == s))
            .filter(|job| {
                after.is_none_or(|c| (job.spec.created_at, job.spec.id) < (c.created_at, c.job))
            })
            .cloned()
            .collect();
        jobs.sort_by_key(|job| std::cmp::Reverse((job.spec.created_at, job.spec.id)));
        jobs.truncate(limit.saturating_add(1));
        page(self.infos(jobs).await, limit)
    }

    /// The jobs as clients see them: on the engine's threads if one of them
    /// runs (its usage and output size are read from files then).
    async fn infos(&self, jobs: Vec<Arc<Job>>) -> Vec<JobInfo> {
        if jobs.iter().all(|job| job.is_ended()) {
            return jobs.iter().map(|job| job.info()).collect();
        }
        let read = jobs.clone();
        match self
            .workers
            .run(move || read.iter().map(|job| job.info()).collect())
            .await
        {
            Ok(infos) => infos,
            Err(e) => {
                tracing::error!(error = %e, "reading running jobs' usage");
                jobs.iter().map(|job| job.recorded_info()).collect()
            }
        }
    }

    /// A reader of a job's output.
    pub fn output(&self, id: JobId, offset: u64, follow: bool) -> Result<OutputStream, IpcError> {
        let job = self.job(id)?;
        // No file reaches that far; a seek there would fail as EINVAL.
        if i64::try_from(offset).is_err() {
            return Err(IpcError::InvalidArgument {
                field: "offset".into(),
                reason: format!(
                    "{offset} is beyond the largest possible output ({} bytes)",
                    i64::MAX
                ),
            });
        }
        Ok(OutputStream::new(
            job,
            (Arc::clone(&self.workers), Arc::clone(&self.watcher)),
            offset,
            follow.then(|| self.figures.follower()),
        ))
    }
}

/// Why a job is stopped.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// A caller asked, with this grace period.
    Requested(Duration),
    /// Its time limit ran out (the default grace period applies).
    TimedOut,
}

/// Cuts `infos` (up to `limit + 1` of them) to a page and its cursor.
fn page(mut infos: Vec<JobInfo>, limit: usize) -> (Vec<JobInfo>, Option<ListCursor>) {
    if infos.len() <= limit {
        return (infos, None);
    }
    infos.truncate(limit);
    let next = infos.last().map(|last| ListCursor {
        created_at: last.created_at,
        job: last.id,
    });
    (infos, next)
}

/// Waits up to `timeout` for the job to end.
async fn wait_ended(
    job: &Job,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    timeout: Duration,
) -> bool {
    let ended = async {
        loop {
            changes.borrow_and_update();
            if job.is_ended() {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(timeout, ended).await.is_ok() && job.is_ended()
}

/// Whether nothing is left of an ended job's work directory: it was
/// empty and is now removed, or it was gone already.
fn remove_empty_work_dir(job: &Job) -> bool {
    match std::fs::remove_dir(job.dir.join(WORK_DIR)) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Makes [`WORK_MOUNT`] on the host, an empty directory of root's, if the
/// host has none: the sandbox mounts each job's work directory over it in
/// the job's own view of the host, and cannot make it there (the host's
/// tree is read-only in that view).
fn make_work_mount() -> Result<(), EngineError> {
    match std::fs::DirBuilder::new().mode(0o755).create(WORK_MOUNT) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(EngineError::WorkMount(e));
        }
        _ => {}
    }
    if !Path::new(WORK_MOUNT).is_dir() {
        return Err(EngineError::WorkMount(std::io::Error::from(
            std::io::ErrorKind::NotADirectory,
        )));
    }
    Ok(())
}

/// Removes a job's work directory and everything in it (a job may leave
/// directories it made unreadable: root removes them all the same).
fn remove_work_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn internal(reason: String) -> IpcError {
    tracing::error!(%reason, "internal error");
    IpcError::Internal { reason }
}
