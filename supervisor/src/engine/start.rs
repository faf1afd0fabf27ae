//! Starting a job, step by step: its limits, its uid, its directory, its
//! cgroup, its record, its init. A [`StartGuard`] records each thing as it is
//! made and undoes them all, in one place, when a step fails. Every way a
//! start can fail is a [`StartError`], and [`IpcError::from`] is the one
//! place that decides what the caller is told.

use std::io;
use std::ops::RangeInclusive;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jobworker_ipc::{
    EnforcedLimits, IpcError, JobId, JobInfo, JobSpec, Limits, Owner, RequestId, TimeoutMs,
    UnixMicros,
};

use super::job::{self, Job, Status};
use super::spawn::{ExitWatch, ReportError, SpawnError, Spawned};
use super::uids::JobIds;
use super::workers::WorkFailed;
use super::{DEFAULT_PATH, DEFAULT_TMP_SIZE, Engine, WORK_DIR, internal, lifecycle, lock, monitor};
use crate::cgroup::{CgroupError, JobCgroup};
use crate::handoff::{InitReport, InitSpec, JobFiles, OUTPUT_FILE, Sandbox};

/// How long a failed start's init may take to exit after SIGKILL, and its
/// cgroup to empty after `cgroup.kill`.
const UNDO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a job could not be started; every message names the operation and,
/// where there is one, the path.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A requested (or default) limit is above the configured maximum.
    #[error("limits.{key} is above the maximum this server allows")]
    OverMax {
        /// The limit's field.
        key: &'static str,
    },
    /// The requested time limit is above the configured maximum.
    #[error("a time limit of {asked} is longer than this server's maximum of {max}")]
    TimeoutOverMax {
        /// The limit asked for.
        asked: TimeoutMs,
        /// The maximum.
        max: TimeoutMs,
    },
    /// The owner has as many jobs running (or starting) as one owner may.
    #[error(
        "{owner} has {running} jobs running or starting, and this server runs at most {cap} \
         per user (max_running_jobs_per_user): wait for one to end, or stop one"
    )]
    TooManyRunning {
        /// Who.
        owner: Owner,
        /// Their jobs running or starting.
        running: usize,
        /// The cap.
        cap: usize,
    },
    /// The state directory's file system is (nearly) full.
    #[error(
        "the state directory's file system is full ({free} bytes free, {inodes} inodes; \
         starts need {floor} bytes, min_free_bytes): free space there, or wait for jobs \
         to end and retention to remove them"
    )]
    DiskFull {
        /// The state directory.
        dir: PathBuf,
        /// Bytes free.
        free: u64,
        /// Inodes free.
        inodes: u64,
        /// The floor.
        floor: u64,
    },
    /// The free space of the state directory's file system could not be
    /// read.
    #[error("reading the free space of {}: {source}", dir.display())]
    FreeSpace {
        /// The state directory.
        dir: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Every uid of the pool is held by a running job.
    #[error(
        "every job uid of {}-{} is held by a running job ({held} held); \
         widen job_uids or wait for jobs to end",
        range.start(),
        range.end()
    )]
    UidsExhausted {
        /// The pool's uids.
        range: RangeInclusive<u32>,
        /// How many are held.
        held: usize,
    },
    /// Per-job uids are configured but the engine has no pool.
    #[error("no uid pool for per-job uids")]
    NoUidPool,
    /// The task removing an ended job's work directory failed.
    #[error("the reclaiming task failed: {0}")]
    ReclaimTask(#[source] tokio::task::JoinError),
    /// An ended job's work directory could not be removed to free its uid.
    #[error("reclaiming a job uid: removing {}: {source}", path.display())]
    Reclaim {
        /// The work directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The job's directory could not be made.
    #[error("creating {}: {source}", path.display())]
    JobDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The job's work directory could not be made or given to its uid.
    #[error("creating the work directory {}: {source}", path.display())]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The job's cgroup could not be made (the error names its path).
    #[error("creating the job's cgroup: {0}")]
    Cgroup(#[source] CgroupError),
    /// A requested limit cannot be enforced and strict limits are configured.
    #[error(
        "the {limit} limit cannot be enforced on this host (no {limit} controller \
         under {}) and strict limits are configured",
        root.display()
    )]
    Unenforced {
        /// The limit's controller.
        limit: &'static str,
        /// The cgroup subtree root.
        root: PathBuf,
    },
    /// The job's record could not be written.
    #[error("writing the job's record {}: {source}", path.display())]
    Record {
        /// The record file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The init could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The init started but gave no report.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The init could not start the command; its message names the command
    /// or path.
    #[error("{0}")]
    Refused(String),
    /// The task running the start failed.
    #[error("the start task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// A step on the engine's threads failed (it panicked).
    #[error(transparent)]
    Worker(#[from] WorkFailed),
}

impl From<StartError> for IpcError {
    fn from(error: StartError) -> Self {
        let reason = error.to_string();
        match error {
            StartError::TimeoutOverMax { .. } => Self::InvalidArgument {
                field: "timeout".into(),
                reason,
            },
            StartError::OverMax { .. }
            | StartError::UidsExhausted { .. }
            | StartError::TooManyRunning { .. }
            | StartError::DiskFull { .. } => Self::ResourceExhausted { reason },
            StartError::Unenforced { .. } | StartError::Refused(_) => {
                Self::FailedPrecondition { reason }
            }
            // The disk filled between the free-space check and the write.
            StartError::JobDir { source, .. }
            | StartError::WorkDir { source, .. }
            | StartError::Record { source, .. }
                if crate::atomic::is_full(&source) =>
            {
                tracing::warn!(%reason, "a start found the state directory's file system full");
                Self::ResourceExhausted {
                    reason: "the state directory's file system is full; free space there, or \
                             wait for jobs to end and retention to remove them"
                        .into(),
                }
            }
            StartError::Spawn(SpawnError::Clone { source, .. }) => match clone_shortage(&source) {
                Some(what) => {
                    tracing::warn!(%reason, "the host refused a job's init");
                    Self::ResourceExhausted {
                        reason: format!("{what} ({reason})"),
                    }
                }
                None => internal(reason),
            },
            _ => internal(reason),
        }
    }
}

/// What the host is out of, and what to do about it, when clone3 of a job's
/// init fails with `error`; `None` if it is not a shortage. `EAGAIN`: too
/// many processes (`kernel.pid_max` of a pid namespace, `kernel.threads-max`,
/// a `pids.max`); `ENOMEM`: memory, or a pid namespace whose init is gone;
/// `ENOSPC`: a namespace count (`/proc/sys/user/max_*_namespaces`) or the
/// nesting depth of pid namespaces. (`EUSERS` was the nesting error of user
/// namespaces before Linux 4.9; jobs get none.)
fn clone_shortage(error: &io::Error) -> Option<&'static str> {
    match error.raw_os_error()? {
        libc::EAGAIN => Some(
            "the host has too many processes to start another (kernel.pid_max, \
             kernel.threads-max or a pids limit); retry once other jobs have ended",
        ),
        libc::ENOMEM => Some(
            "the host has no memory for another process; \
             retry once other jobs have ended",
        ),
        libc::ENOSPC => Some(
            "the host has reached its limit on namespaces (/proc/sys/user/max_*_namespaces, \
             or the nesting depth of pid namespaces); retry once other jobs have ended, \
             or raise the limit",
        ),
        _ => None,
    }
}

impl Engine {
    /// Starts a job; returns once its command was exec'd, or with the reason
    /// it could not be (then nothing of the job remains). A request id that
    /// `owner` used before returns that job instead.
    pub async fn start(self: &Arc<Self>, owner: Owner, spec: JobSpec) -> Result<JobInfo, IpcError> {
        // In a task of its own: a caller that goes away (a dropped connection,
        // a shutdown) must not cancel a start half-way and orphan the job.
        let engine = Arc::clone(self);
        let asked = std::time::Instant::now();
        let started = tokio::spawn(async move { engine.start_job(owner, spec, asked).await })
            .await
            .unwrap_or_else(|e| Err(StartError::Task(e)));
        if started.is_err() {
            self.figures.start_failed();
        }
        started.map_err(IpcError::from)
    }

    /// A start asked for at `asked`.
    async fn start_job(
        self: Arc<Self>,
        owner: Owner,
        spec: JobSpec,
        asked: std::time::Instant,
    ) -> Result<JobInfo, StartError> {
        let _one_at_a_time = match &spec.request_id {
            Some(request_id) => {
                let turn = self.requests.turn(&owner, request_id).await;
                if let Some(job) = self.started_before(&owner, request_id) {
                    return Ok(job.recorded_info());
                }
                Some(turn)
            }
            None => None,
        };
        let limits = self.limits_of(&spec)?;
        let _counted = self.reserve_start(&owner)?;
        let mut spec = spec;
        spec.timeout = lifecycle::timeout(spec.timeout, self.config.timeouts).map_err(|max| {
            StartError::TimeoutOverMax {
                asked: spec.timeout.unwrap_or(max),
                max,
            }
        })?;
        let mut guard = StartGuard::new(&self, JobId::random());
        let ids = match self.allocate_ids(guard.made.job).await {
            Ok(ids) => ids,
            Err(error) => {
                guard.undo().await;
                return Err(error);
            }
        };
        guard.made.uid = Some(ids.0);
        // The file system work and clone3 block: on the engine's threads,
        // with the guard (a panic there drops it there, which undoes the
        // start).
        let engine = Arc::clone(&self);
        let (mut guard, made) = self
            .workers
            .run(move || {
                let made = engine.launch(&mut guard, owner, spec, limits, ids);
                (guard, made)
            })
            .await?;
        let (job, spawned) = match made {
            Ok(made) => made,
            Err(error) => {
                guard.undo().await;
                return Err(error);
            }
        };
        let report = spawned.handoff.report().await;
        let error = match report {
            Ok((InitReport::Started, exit)) => {
                // The command runs: from here on the job is settled when it
                // ends, never undone.
                guard.commit();
                self.figures.started(asked.elapsed());
                self.refill_spare();
                self.running(&job, spawned.pidfd, exit);
                return Ok(job.recorded_info());
            }
            Ok((InitReport::Failed(reason), _)) => StartError::Refused(reason),
            Err(e) => StartError::Report(e),
        };
        guard.made.init = Some(spawned.pidfd);
        guard.undo().await;
        Err(error)
    }

    /// Counts a start of a remote user's against their cap on running jobs
    /// until the returned guard drops (by then a started job is among the
    /// running ones); refuses it if they are at the cap. Local operators
    /// are not capped.
    fn reserve_start(&self, owner: &Owner) -> Result<Starting<'_>, StartError> {
        let cap = match owner {
            Owner::Remote(_) => self.config.max_running_per_owner,
            Owner::Local(_) => 0,
        };
        let running = self.running.get(owner);
        self.starting
            .add_unless(owner, |pending| cap > 0 && running + pending >= cap)
            .map_err(|pending| StartError::TooManyRunning {
                owner: owner.clone(),
                running: running + pending,
                cap,
            })?;
        Ok(Starting {
            engine: self,
            owner: owner.clone(),
        })
    }

    /// Refuses a start while the state file system has less than
    /// `min_free_bytes` free (or a twentieth of its size, on one smaller
    /// than twenty times that), or no inode: the job's directory, log and
    /// record need room, and running jobs' output and records come first.
    /// Blocks (one `statvfs`).
    fn check_free_space(&self) -> Result<(), StartError> {
        let dir = &self.config.state_dir;
        let stat = rustix::fs::statvfs(dir).map_err(|e| StartError::FreeSpace {
            dir: dir.clone(),
            source: e.into(),
        })?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        let size = stat.f_blocks.saturating_mul(stat.f_frsize);
        let floor = self.config.min_free_bytes.min(size / 20);
        if free < floor.max(1) || (stat.f_favail == 0 && stat.f_files > 0) {
            return Err(StartError::DiskFull {
                dir: dir.clone(),
                free,
                inodes: stat.f_favail,
                floor,
            });
        }
        Ok(())
    }

    /// The job `owner` started with `request_id`, if any.
    fn started_before(&self, owner: &Owner, request_id: &RequestId) -> Option<Arc<Job>> {
        self.jobs().started_with(owner, request_id).cloned()
    }

    /// The limits a job gets: its own, else the defaults, else the maxima.
    fn limits_of(&self, spec: &JobSpec) -> Result<Limits, StartError> {
        let limits = spec
            .limits
            .or(self.config.default_limits)
            .or(self.config.max_limits);
        match crate::config::over_max(&limits, &self.config.max_limits) {
            Some(key) => Err(StartError::OverMax { key }),
            None => Ok(limits),
        }
    }

    /// Makes the job (its directory, cgroup and record) and clones its init;
    /// returns the job and the init, whose report is still to come.
    /// `guard` learns of each thing as it is made; what it holds when this
    /// fails is undone here, as nothing ran yet. Blocks.
    fn launch(
        &self,
        guard: &mut StartGuard,
        owner: Owner,
        spec: JobSpec,
        limits: Limits,
        ids: (u32, u32),
    ) -> Result<(Arc<Job>, Spawned), StartError> {
        let launched = self.make_and_clone(guard, owner, spec, limits, ids);
        if launched.is_err() {
            // Undone on the thread that made it: a host out of pids
            // (clone3's EAGAIN) may have no thread to spare later.
            guard.made.take().remove(self);
        }
        launched
    }

    fn make_and_clone(
        &self,
        guard: &mut StartGuard,
        owner: Owner,
        spec: JobSpec,
        limits: Limits,
        (uid, gid): (u32, u32),
    ) -> Result<(Arc<Job>, Spawned), StartError> {
        self.check_free_space()?;
        let id = guard.made.job;
        let (dir, files) = self.make_job_dir(guard, (uid, gid))?;
        let (cgroup, enforced) = self.make_cgroup(guard, &limits)?;
        let init_spec = self.init_spec(&id, &dir, &spec, &limits, (uid, gid));
        let fixed = job::Spec {
            id,
            owner,
            command: spec.command,
            args: spec.args,
            limits,
            enforced,
            created_at: UnixMicros::now(),
            request_id: spec.request_id,
            uid: Some(uid),
            gid: Some(gid),
            timeout: spec.timeout,
            labels: spec.labels,
        };
        let job = Arc::new(Job::new(fixed, dir, cgroup, Status::starting()));
        // Recorded before the clone: a supervisor that dies from here on
        // finds the job on disk (and its cgroup) after a restart.
        job.persist(&self.records)
            .map_err(|source| StartError::Record {
                path: job::record_path(&job.dir),
                source,
            })?;
        let spawned = match self.take_spare() {
            Some(spare) => match spare.hand_over(&job.cgroup, &init_spec, &files) {
                Ok(spawned) => spawned,
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "the spare init could not take the job; cloning one for it");
                    self.spawner.clone_init(&job.cgroup, &init_spec, &files)?
                }
            },
            None => self.spawner.clone_init(&job.cgroup, &init_spec, &files)?,
        };
        // Not recorded until the job ends: a supervisor restarted meanwhile
        // finds the init in the job's cgroup (see recovery).
        job.status().pid = Some(spawned.pid);
        Ok((job, spawned))
    }

    /// Makes the job's directory, in it its work directory, owned by its
    /// uid and private to it, and its (empty) output log; returns the
    /// directory and what its init writes through.
    fn make_job_dir(
        &self,
        guard: &mut StartGuard,
        (uid, gid): (u32, u32),
    ) -> Result<(PathBuf, JobFiles), StartError> {
        let dir = self
            .config
            .state_dir
            .join("jobs")
            .join(guard.made.job.to_string());
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StartError::JobDir {
                path: dir.clone(),
                source,
            })?;
        guard.made.dir = Some(dir.clone());
        let work = dir.join(WORK_DIR);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&work)
            .and_then(|()| std::os::unix::fs::chown(&work, Some(uid), Some(gid)))
            .map_err(|source| StartError::WorkDir { path: work, source })?;
        // Made here, so that followers are woken from the first byte on (the
        // init appends to it).
        let log = dir.join(OUTPUT_FILE);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&log)
            .map_err(|source| StartError::JobDir { path: log, source })?;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&dir)
            .map_err(|source| StartError::JobDir {
                path: dir.clone(),
                source,
            })?;
        Ok((dir, JobFiles { dir: opened, log }))
    }

    /// Makes the job's cgroup with its limits; refuses limits it cannot
    /// enforce if strict limits are configured.
    fn make_cgroup(
        &self,
        guard: &mut StartGuard,
        limits: &Limits,
    ) -> Result<(JobCgroup, EnforcedLimits), StartError> {
        let (cgroup, enforced) = self
            .cgroups
            .create_job(&guard.made.job.to_string(), limits, self.io_device)
            .map_err(StartError::Cgroup)?;
        guard.made.cgroup = Some(cgroup.clone());
        if self.config.strict_limits
            && let Some(limit) = unenforced(limits, &enforced)
        {
            return Err(StartError::Unenforced {
                limit,
                root: self.cgroups.root().to_path_buf(),
            });
        }
        Ok((cgroup, enforced))
    }

    /// Notes that a job's command runs, and takes charge of it. Nothing is
    /// written: the record of its start holds what a restarted supervisor
    /// needs, and its end record (which the init's exit record completes)
    /// the rest.
    fn running(self: &Arc<Self>, job: &Arc<Job>, pidfd: OwnedFd, exit: ExitWatch) {
        job.status().started_at = Some(UnixMicros::now());
        self.adopt(job, pidfd, Some(exit));
    }

    /// The uid and gid of a new job: its own from the pool (reclaiming the
    /// oldest ended job's work directory if every uid is held), or the
    /// shared account's.
    async fn allocate_ids(&self, id: JobId) -> Result<(u32, u32), StartError> {
        let Some(pool) = &self.uid_pool else {
            let JobIds::Shared { uid, gid } = self.config.job_ids else {
                return Err(StartError::NoUidPool);
            };
            return Ok((uid, gid));
        };
        loop {
            if let Some(uid) = lock(pool).allocate(id) {
                return Ok((uid, uid));
            }
            let Some(job) = self.oldest_ended_holding_uid() else {
                let pool = lock(pool);
                return Err(StartError::UidsExhausted {
                    range: pool.range().clone(),
                    held: pool.held(),
                });
            };
            let work = job.dir.join(WORK_DIR);
            tracing::info!(job = %job.spec.id, "every job uid is held: removing the work directory of the oldest ended job");
            let path = work.clone();
            tokio::task::spawn_blocking(move || super::remove_work_dir(&work))
                .await
                .map_err(StartError::ReclaimTask)?
                .map_err(|source| StartError::Reclaim { path, source })?;
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
            .filter(|job| {
                job.spec
                    .uid
                    .is_some_and(|uid| pool.is_held_by(uid, job.spec.id))
            })
            .cloned()
            .collect();
        drop(pool);
        ended.sort_by_key(|job| (job.status().ended_at, job.spec.created_at));
        ended.into_iter().next()
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

/// A start counted against its owner's cap ([`Engine::reserve_start`]).
struct Starting<'a> {
    engine: &'a Engine,
    owner: Owner,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.engine.starting.remove(&self.owner);
    }
}

/// Everything a start has made so far. A failed start awaits
/// [`undo`](Self::undo); a successful one calls [`commit`](Self::commit).
/// Dropped with neither (the start panicked, or the runtime is shutting
/// down), it undoes in a task of its own, never on the dropping thread.
struct StartGuard {
    engine: Arc<Engine>,
    made: Made,
}

/// What [`StartGuard`] undoes.
struct Made {
    job: JobId,
    /// The uid taken from the pool for the job (or the shared one).
    uid: Option<u32>,
    dir: Option<PathBuf>,
    cgroup: Option<JobCgroup>,
    /// A pidfd of an init that was started but did not start the command.
    init: Option<OwnedFd>,
}

impl StartGuard {
    fn new(engine: &Arc<Engine>, job: JobId) -> Self {
        Self {
            engine: Arc::clone(engine),
            made: Made {
                job,
                uid: None,
                dir: None,
                cgroup: None,
                init: None,
            },
        }
    }

    /// The start succeeded: keep everything.
    fn commit(mut self) {
        drop(self.made.take());
    }

    /// The start failed: undo everything made so far.
    async fn undo(mut self) {
        let engine = Arc::clone(&self.engine);
        self.made.take().undo(&engine).await;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        let made = self.made.take();
        if made.is_nothing() {
            return;
        }
        let job = made.job;
        let engine = Arc::clone(&self.engine);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { made.undo(&engine).await });
            }
            Err(_) => tracing::error!(%job, "a failed start's job is left for the next restart"),
        }
    }
}

impl Made {
    /// Moves everything out, leaving nothing.
    fn take(&mut self) -> Self {
        Self {
            job: self.job,
            uid: self.uid.take(),
            dir: self.dir.take(),
            cgroup: self.cgroup.take(),
            init: self.init.take(),
        }
    }

    fn is_nothing(&self) -> bool {
        self.uid.is_none() && self.dir.is_none() && self.cgroup.is_none() && self.init.is_none()
    }

    /// Kills and reaps the init, if one was started, then undoes the rest
    /// on the engine's threads ([`Made::remove`]; tokio's blocking pool may
    /// be unable to make a thread on a host out of pids).
    async fn undo(mut self, engine: &Arc<Engine>) {
        let job = self.job;
        if let Some(init) = self.init.take() {
            stop_init(job, init).await;
        }
        if self.is_nothing() {
            return;
        }
        let removing = Arc::clone(engine);
        if let Err(e) = engine.workers.run(move || self.remove(&removing)).await {
            tracing::error!(%job, error = %e, "removing a failed job");
        }
    }

    /// Destroys the cgroup (waiting up to [`UNDO_TIMEOUT`] until it is
    /// empty), removes the directory, gives the uid back. Blocks.
    fn remove(self, engine: &Engine) {
        let job = self.job;
        if let Some(cgroup) = self.cgroup {
            match cgroup.destroy(UNDO_TIMEOUT) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(%job, "a failed job's cgroup did not empty after cgroup.kill")
                }
                Err(e) => tracing::error!(%job, error = %e, "destroying a failed job's cgroup"),
            }
        }
        if let Some(dir) = self.dir
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::error!(%job, error = %e, path = %dir.display(), "removing a failed job's directory");
        }
        if let (Some(pool), Some(uid)) = (&engine.uid_pool, self.uid) {
            lock(pool).release(uid, job);
        }
    }
}

/// Kills a failed start's init and waits (a while) until it has exited and
/// is reaped. The init exits by itself after a failed exec; the kill is for
/// one that hangs.
async fn stop_init(job: JobId, init: OwnedFd) {
    let _ = rustix::process::pidfd_send_signal(&init, rustix::process::Signal::KILL);
    match tokio::time::timeout(UNDO_TIMEOUT, monitor::wait_exit_of(init)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(%job, error = %e, "waiting for a failed job's init"),
        Err(_) => tracing::error!(%job, "a failed job's init did not exit after SIGKILL"),
    }
}

#[cfg(test)]
mod tests {
    use jobworker_ipc::ErrorCode;

    use super::*;

    fn clone_failing(errno: i32) -> StartError {
        StartError::Spawn(SpawnError::Clone {
            cgroup: PathBuf::from("/sys/fs/cgroup/jobworker/jobs/j"),
            source: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn clone3_out_of_processes_memory_or_namespaces_is_resource_exhausted() {
        for (errno, what) in [
            (libc::EAGAIN, "too many processes"),
            (libc::ENOMEM, "no memory"),
            (libc::ENOSPC, "limit on namespaces"),
        ] {
            let error = IpcError::from(clone_failing(errno));
            let IpcError::ResourceExhausted { reason } = &error else {
                panic!("errno {errno}: {error:?}");
            };
            assert!(
                reason.contains(what)
                    && reason.contains("retry once other jobs have ended")
                    && reason.contains("clone3 into /sys/fs/cgroup/jobworker/jobs/j: ")
                    && reason.contains(&format!("(os error {errno})")),
                "{reason}"
            );
        }
    }

    #[test]
    fn other_clone3_failures_are_internal() {
        for errno in [libc::EPERM, libc::EINVAL, libc::EUSERS] {
            let error = IpcError::from(clone_failing(errno));
            assert_eq!(
                error.code(),
                ErrorCode::Internal,
                "errno {errno}: {error:?}"
            );
        }
        let error = IpcError::from(StartError::Report(ReportError::Timeout));
        assert_eq!(
            error,
            IpcError::Internal {
                reason: "the job's init did not report within 30 s".into()
            }
        );
    }

    #[test]
    fn refusals_keep_their_codes_and_messages() {
        assert_eq!(
            IpcError::from(StartError::Refused(
                "cannot execute /x: No such file".into()
            )),
            IpcError::FailedPrecondition {
                reason: "cannot execute /x: No such file".into()
            }
        );
        assert_eq!(
            IpcError::from(StartError::OverMax {
                key: "memory_bytes"
            }),
            IpcError::ResourceExhausted {
                reason: "limits.memory_bytes is above the maximum this server allows".into()
            }
        );
        assert_eq!(
            IpcError::from(StartError::UidsExhausted {
                range: 61184..=61185,
                held: 2
            }),
            IpcError::ResourceExhausted {
                reason: "every job uid of 61184-61185 is held by a running job (2 held); \
                         widen job_uids or wait for jobs to end"
                    .into()
            }
        );
        assert_eq!(
            IpcError::from(StartError::Unenforced {
                limit: "io",
                root: PathBuf::from("/sys/fs/cgroup/jobworker"),
            }),
            IpcError::FailedPrecondition {
                reason: "the io limit cannot be enforced on this host (no io controller under \
                         /sys/fs/cgroup/jobworker) and strict limits are configured"
                    .into()
            }
        );
    }
}
