//! The job engine: starts jobs (a cgroup, a clone3 of the init into it, the
//! init's report), stops them (SIGTERM, grace, SIGKILL of every process), and
//! answers status, list and output queries. It knows nothing of callers or
//! permissions: the service in front of it decides who may do what.
//!
//! - [`job`]: one job's state and record.
//! - [`spawn`]: clone3 and the handoff to the init.
//! - [`monitor`]: waiting for the init to exit and settling the job.
//! - [`output`]: output readers and the inotify watcher that wakes them.
//! - [`recovery`]: accounting for every job on disk after a restart.
//! - [`retention`]: removing the oldest ended jobs.
//! - [`uids`]: the uid and gid each job runs as.

pub mod job;
pub mod monitor;
pub mod output;
pub mod recovery;
pub mod retention;
pub mod spawn;
pub mod uids;

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobworker_ipc::{
    EnforcedLimits, IpcError, JobId, JobInfo, JobSpec, JobState, Limits, ListCursor, Owner,
    UnixMillis,
};

use crate::cgroup::{CgroupTree, Controllers};
use crate::handoff::{BindPath, InitReport, InitSpec, Sandbox, WORK_MOUNT};
use job::{Job, Status};
pub use output::{Chunk, OutputStream};
pub use retention::Retention;
use uids::{JobIds, UidPool};

/// The `PATH` a job gets unless its request sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long the init may take to stop everything after SIGUSR1, before the
/// engine kills the job's cgroup (init included).
const KILL_GRACE: Duration = Duration::from_secs(2);

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
    /// The program exec'd as each job's init (the supervisor binary).
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
    /// The grace period of a stop, and the longest a request may ask for (a
    /// longer one is refused).
    pub grace: Duration,
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
    /// inotify could not be set up.
    #[error("setting up inotify for output followers: {0}")]
    Inotify(std::io::Error),
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
    jobs: Mutex<HashMap<JobId, Arc<Job>>>,
    watcher: Arc<output::Watcher>,
    /// The uids jobs get, unless they all run as one account.
    uid_pool: Option<Mutex<UidPool>>,
    started: Instant,
    /// Held across a start that carries a request id, so that two retries of
    /// one request cannot both start a job.
    idempotency: tokio::sync::Mutex<()>,
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
        let watcher = output::Watcher::new().map_err(EngineError::Inotify)?;
        tokio::spawn(Arc::clone(&watcher).run());
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
            jobs: Mutex::new(HashMap::new()),
            watcher,
            uid_pool,
            started: Instant::now(),
            idempotency: tokio::sync::Mutex::new(()),
        }))
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

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job with this id.
    pub fn job(&self, id: JobId) -> Result<Arc<Job>, IpcError> {
        self.jobs()
            .get(&id)
            .cloned()
            .ok_or(IpcError::NotFound { job: id })
    }

    /// Starts a job; returns once its command was exec'd, or with the reason
    /// it could not be (then nothing of the job remains). A request id that
    /// `owner` used before returns that job instead.
    pub async fn start(self: &Arc<Self>, owner: Owner, spec: JobSpec) -> Result<JobInfo, IpcError> {
        // In a task of its own: a caller that goes away (a dropped connection,
        // a shutdown) must not cancel a start half-way and orphan the job.
        let engine = Arc::clone(self);
        tokio::spawn(async move { engine.start_job(owner, spec).await })
            .await
            .unwrap_or_else(|e| Err(internal(format!("the start task failed: {e}"))))
    }

    async fn start_job(self: Arc<Self>, owner: Owner, spec: JobSpec) -> Result<JobInfo, IpcError> {
        let _one_at_a_time = match &spec.request_id {
            Some(request_id) => {
                let guard = self.idempotency.lock().await;
                let earlier = self
                    .jobs()
                    .values()
                    .find(|job| job.owner == owner && job.request_id.as_ref() == Some(request_id))
                    .cloned();
                if let Some(job) = earlier {
                    return Ok(job.info());
                }
                Some(guard)
            }
            None => None,
        };
        let limits = spec
            .limits
            .or(self.config.default_limits)
            .or(self.config.max_limits);
        if let Some(key) = crate::config::over_max(&limits, &self.config.max_limits) {
            return Err(IpcError::ResourceExhausted {
                reason: format!("limits.{key} is above the maximum this server allows"),
            });
        }
        // Everything made from here on is undone if the start fails.
        let id = JobId::random();
        let mut undo = Undo::new(&self, id);
        let (uid, gid) = self.allocate_ids(id).await?;
        undo.uid = self.uid_pool.as_ref().map(|_| uid);
        let dir = self.config.state_dir.join("jobs").join(id.to_string());
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| internal(format!("creating {}: {e}", dir.display())))?;
        undo.dir = Some(dir.clone());
        make_work_dir(&dir.join(WORK_DIR), uid, gid).map_err(internal)?;
        let (cgroup, enforced) = self
            .cgroups
            .create_job(&id.to_string(), &limits, self.io_device)
            .map_err(|e| internal(format!("creating the job's cgroup: {e}")))?;
        undo.cgroup = Some(cgroup.clone());
        if self.config.strict_limits
            && let Some(limit) = unenforced(&limits, &enforced)
        {
            return Err(IpcError::FailedPrecondition {
                reason: format!(
                    "the {limit} limit cannot be enforced on this host (no {limit} controller \
                     under {}) and strict limits are configured",
                    self.cgroups.root().display()
                ),
            });
        }
        let init_spec = self.init_spec(&id, &dir, &spec, &limits, (uid, gid));
        let job = Arc::new(Job::new(
            id,
            owner,
            spec.command,
            spec.args,
            limits,
            enforced,
            UnixMillis::now(),
            spec.request_id,
            dir,
            cgroup,
            (Some(uid), Some(gid)),
            Status::starting(),
        ));
        // Recorded before the clone: a supervisor that dies from here on
        // finds the job on disk (and its cgroup) after a restart.
        job.persist()
            .map_err(|e| internal(format!("writing the job's record: {e}")))?;

        let started = spawn::start(&self.config.init_program, &job.cgroup, &init_spec)
            .await
            .map_err(internal)?;
        let failure = match started.report {
            Ok(InitReport::Started) => None,
            Ok(InitReport::Failed(reason)) => Some(IpcError::FailedPrecondition { reason }),
            Err(reason) => Some(internal(reason)),
        };
        if let Some(error) = failure {
            // The init exits by itself after a failed exec; kill it (and its
            // cgroup) in case it hangs, reap it, and let `undo` remove the
            // rest once the cgroup is empty.
            let _ =
                rustix::process::pidfd_send_signal(&started.pidfd, rustix::process::Signal::KILL);
            let _ = job.cgroup.kill();
            if tokio::time::timeout(Duration::from_secs(10), monitor::wait_exit(started.pidfd))
                .await
                .is_err()
            {
                tracing::error!(job = %id, "a failed job's init did not exit after SIGKILL");
            }
            let cleanup = job.cgroup.clone();
            let _ =
                tokio::task::spawn_blocking(move || cleanup.wait_empty(Duration::from_secs(10)))
                    .await;
            return Err(error);
        }
        undo.commit();

        {
            let mut status = job.status();
            status.pid = Some(started.pid);
            status.started_at = Some(UnixMillis::now());
        }
        if let Err(e) = job.persist() {
            tracing::error!(job = %id, error = %e, "writing the job's record");
        }
        self.adopt(&job, started.pidfd);
        Ok(job.info())
    }

    /// The uid and gid of a new job: its own from the pool (reclaiming the
    /// oldest ended job's work directory if every uid is held), or the
    /// shared account's.
    async fn allocate_ids(&self, id: JobId) -> Result<(u32, u32), IpcError> {
        let Some(pool) = &self.uid_pool else {
            let JobIds::Shared { uid, gid } = self.config.job_ids else {
                return Err(internal("no uid pool for per-job uids".into()));
            };
            return Ok((uid, gid));
        };
        loop {
            if let Some(uid) = lock(pool).allocate(id) {
                return Ok((uid, uid));
            }
            let Some(job) = self.oldest_ended_holding_uid() else {
                let pool = lock(pool);
                return Err(IpcError::ResourceExhausted {
                    reason: format!(
                        "every job uid of {}-{} is held by a running job ({} held); \
                         widen job_uids or wait for jobs to end",
                        pool.range().start(),
                        pool.range().end(),
                        pool.held()
                    ),
                });
            };
            let work = job.dir.join(WORK_DIR);
            tracing::info!(job = %job.id, "every job uid is held: removing the work directory of the oldest ended job");
            let removed = tokio::task::spawn_blocking(move || remove_work_dir(&work))
                .await
                .map_err(|e| internal(format!("the reclaiming task failed: {e}")))?;
            removed.map_err(|e| internal(format!("reclaiming a job uid: {e}")))?;
            self.release_ids(&job);
        }
    }

    /// The ended job that has held its uid longest.
    fn oldest_ended_holding_uid(&self) -> Option<Arc<Job>> {
        let pool = lock(self.uid_pool.as_ref()?);
        let mut ended: Vec<Arc<Job>> = self
            .jobs()
            .values()
            .filter(|job| job.is_ended())
            .filter(|job| job.uid.is_some_and(|uid| pool.is_held_by(uid, job.id)))
            .cloned()
            .collect();
        drop(pool);
        ended.sort_by_key(|job| (job.status().ended_at, job.created_at));
        ended.into_iter().next()
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
        let (Some(pool), Some(uid)) = (&self.uid_pool, job.uid) else {
            return;
        };
        if job.is_ended() && remove_empty_work_dir(job) {
            return;
        }
        let mut pool = lock(pool);
        if !pool.hold(uid, job.id) && pool.range().contains(&uid) {
            tracing::warn!(job = %job.id, uid,
                "a recovered job's uid is held by another job, or names an account of the host");
        }
    }

    /// Gives a job's uid back to the pool.
    fn release_ids(&self, job: &Job) {
        if let (Some(pool), Some(uid)) = (&self.uid_pool, job.uid) {
            lock(pool).release(uid, job.id);
        }
    }

    /// Takes charge of a running job: its pidfd, its output watch, and a task
    /// that settles it when its init exits.
    fn adopt(self: &Arc<Self>, job: &Arc<Job>, pidfd: std::os::fd::OwnedFd) {
        match pidfd.try_clone() {
            Ok(watched) => {
                *job.pidfd.lock().unwrap_or_else(|p| p.into_inner()) = Some(pidfd);
                self.supervise(job, Some(watched));
            }
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "duplicating the init's pidfd");
                self.supervise(job, Some(pidfd));
            }
        }
    }

    /// Registers `job` and spawns the task that settles it: after its init
    /// (behind `pidfd`) exits, or at once when there is none.
    fn supervise(self: &Arc<Self>, job: &Arc<Job>, pidfd: Option<std::os::fd::OwnedFd>) {
        if let Err(e) = self.watcher.watch(job) {
            tracing::warn!(job = %job.id, error = %e,
                "watching the output log; followers wake only at the job's end");
        }
        self.jobs().insert(job.id, Arc::clone(job));
        let engine = Arc::clone(self);
        let job = Arc::clone(job);
        tokio::spawn(async move {
            if let Some(pidfd) = pidfd
                && let Err(e) = monitor::wait_exit(pidfd).await
            {
                tracing::error!(job = %job.id, error = %e, "waiting for the job's init");
            }
            monitor::settle(&job).await;
            *job.pidfd.lock().unwrap_or_else(|p| p.into_inner()) = None;
            engine.watcher.unwatch(&job);
            // Before the waiters wake: whoever saw the job end may start
            // another at once, and finds its uid free.
            engine.release_if_nothing_left(&job);
            job.notify();
            engine.enforce_retention();
        });
    }

    fn init_spec(
        &self,
        id: &JobId,
        dir: &Path,
        spec: &JobSpec,
        limits: &Limits,
        (uid, gid): (u32, u32),
    ) -> InitSpec {
        let mut env = Vec::with_capacity(spec.env.as_slice().len() + 1);
        if !spec.env.as_slice().iter().any(|var| var.name == "PATH") {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        env.extend(
            spec.env
                .as_slice()
                .iter()
                .map(|var| format!("{}={}", var.name, var.value)),
        );
        let sandbox = &self.config.sandbox;
        InitSpec {
            job_dir: dir.to_path_buf(),
            command: spec.command.as_str().to_owned(),
            args: spec.args.as_slice().to_vec(),
            env,
            working_dir: spec.working_dir.as_ref().map_or_else(
                || self.config.working_dir.clone(),
                |d| d.as_str().to_owned(),
            ),
            uid,
            gid,
            hostname: format!("job-{}", id.short()),
            output_cap: self.config.output_cap,
            sandbox: Sandbox {
                work_dir: dir.join(WORK_DIR),
                tmp_size: sandbox.tmp_size.unwrap_or_else(|| {
                    limits
                        .memory_bytes()
                        .map_or(DEFAULT_TMP_SIZE, |memory| (memory / 4).max(1 << 20))
                }),
                masked_paths: sandbox.masked_paths.clone(),
                bind_paths: sandbox.bind_paths.clone(),
                allow_io_uring: sandbox.allow_io_uring,
                max_processes: limits.pids().map_or(sandbox.max_processes, u64::from),
            },
        }
    }

    /// Stops a job: SIGTERM to its init (which forwards it to the command),
    /// the grace period, then SIGKILL to every process of the job. Returns
    /// once nothing of the job runs. Stopping an ended job returns it as is.
    pub async fn stop(&self, id: JobId, grace: Option<Duration>) -> Result<JobInfo, IpcError> {
        let job = self.job(id)?;
        let grace = match grace {
            None => self.config.grace,
            Some(asked) if asked <= self.config.grace => asked,
            Some(asked) => {
                return Err(IpcError::InvalidArgument {
                    field: "grace_period".into(),
                    reason: format!(
                        "{} ms is longer than this server's maximum of {} ms",
                        asked.as_millis(),
                        self.config.grace.as_millis()
                    ),
                });
            }
        };
        let mut changes = job.subscribe();
        let already_ended = {
            let mut status = job.status();
            status.stop_requested |= !status.state.is_ended();
            status.state.is_ended()
        };
        if already_ended {
            return Ok(job.info());
        }
        let _ = job.persist();
        self.signal_init(&job, rustix::process::Signal::TERM);
        if !wait_ended(&job, &mut changes, grace).await {
            self.signal_init(&job, rustix::process::Signal::USR1);
            if !wait_ended(&job, &mut changes, KILL_GRACE).await {
                if let Err(e) = job.cgroup.kill() {
                    tracing::error!(job = %id, error = %e, "killing the job's cgroup");
                }
                if !wait_ended(&job, &mut changes, Duration::from_secs(30)).await {
                    return Err(internal(format!(
                        "job {id} did not end after its cgroup was killed"
                    )));
                }
            }
        }
        Ok(job.info())
    }

    fn signal_init(&self, job: &Job, signal: rustix::process::Signal) {
        if let Some(pidfd) = job.pidfd.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && let Err(e) = rustix::process::pidfd_send_signal(pidfd, signal)
            && e != rustix::io::Errno::SRCH
        {
            tracing::warn!(job = %job.id, error = %e, "signalling the job's init");
        }
    }

    /// The status of a job.
    pub fn get(&self, id: JobId) -> Result<JobInfo, IpcError> {
        Ok(self.job(id)?.info())
    }

    /// Jobs for which `visible` holds, newest first, in `state` if given, at
    /// most `limit`, after `after`; with the cursor of the next page if more
    /// follow.
    pub fn list(
        &self,
        visible: impl Fn(&Job) -> bool,
        state: Option<JobState>,
        limit: usize,
        after: Option<ListCursor>,
    ) -> (Vec<JobInfo>, Option<ListCursor>) {
        let mut jobs: Vec<Arc<Job>> = self
            .jobs()
            .values()
            .filter(|job| visible(job))
            .filter(|job| after.is_none_or(|c| (job.created_at, job.id) < (c.created_at, c.job)))
            .cloned()
            .collect();
        jobs.sort_by_key(|job| std::cmp::Reverse((job.created_at, job.id)));
        let infos: Vec<JobInfo> = jobs
            .iter()
            .map(|job| job.info())
            .filter(|info| state.is_none_or(|s| info.state == s))
            .take(limit.saturating_add(1))
            .collect();
        page(infos, limit)
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
        Ok(OutputStream::new(job, offset, follow))
    }
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

/// The first requested limit that is not enforced.
fn unenforced(limits: &Limits, enforced: &EnforcedLimits) -> Option<&'static str> {
    [
        (limits.cpu_millicores().is_some() && !enforced.cpu, "cpu"),
        (
            limits.memory_bytes().is_some() && !enforced.memory,
            "memory",
        ),
        (
            (limits.io_read_bps().is_some() || limits.io_write_bps().is_some()) && !enforced.io,
            "io",
        ),
        (limits.pids().is_some() && !enforced.pids, "pids"),
    ]
    .into_iter()
    .find_map(|(missing, name)| missing.then_some(name))
}

/// What a failed start leaves behind, undone on drop unless committed: the
/// job's uid, its directory, its cgroup.
struct Undo<'a> {
    engine: &'a Engine,
    job: JobId,
    uid: Option<u32>,
    dir: Option<PathBuf>,
    cgroup: Option<crate::cgroup::JobCgroup>,
}

impl<'a> Undo<'a> {
    fn new(engine: &'a Engine, job: JobId) -> Self {
        Self {
            engine,
            job,
            uid: None,
            dir: None,
            cgroup: None,
        }
    }

    /// The start succeeded: keep everything.
    fn commit(mut self) {
        self.uid = None;
        self.dir = None;
        self.cgroup = None;
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            let _ = cgroup.remove();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let (Some(pool), Some(uid)) = (&self.engine.uid_pool, self.uid.take()) {
            lock(pool).release(uid, self.job);
        }
    }
}

/// The job's writable directory, owned by its uid and private to it.
fn make_work_dir(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .and_then(|()| std::os::unix::fs::chown(path, Some(uid), Some(gid)))
        .map_err(|e| format!("creating the work directory {}: {e}", path.display()))
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
