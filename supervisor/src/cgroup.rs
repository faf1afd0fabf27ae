//! Jobworker's cgroup v2 subtree: finding it, preparing it, and one cgroup per
//! job.
//!
//! The subtree root is the supervisor's own cgroup (under systemd, its
//! service's cgroup, delegated with `Delegate=yes`) or a configured directory
//! on the cgroup2 mount. Cgroup v2's "no internal processes" rule means the
//! root cannot both hold processes and hand controllers to its children, so
//! [`CgroupTree::setup`] lays it out as:
//!
//! ```text
//! <root>/                 controllers enabled in cgroup.subtree_control
//! <root>/supervisor/      the supervisor process itself (a leaf)
//! <root>/jobs/            controllers enabled in cgroup.subtree_control
//! <root>/jobs/<job id>/   one leaf per job, with its limits
//! ```
//!
//! Only cgroup v2 is used; v1 hierarchies (on hybrid hosts) are never touched.
//! A controller that the host does not offer (a hybrid host's cgroup2 mount
//! typically offers none of ours) is not an error: the limits it would enforce
//! are reported as not enforced.

mod parse;

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use jobworker_ipc::{EnforcedLimits, Limits, Usage};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
use rustix::fs::{Mode, OFlags};

/// The leaf that holds the supervisor process.
const SUPERVISOR_LEAF: &str = "supervisor";
/// The parent of every job cgroup.
const JOBS_DIR: &str = "jobs";
/// Where the kernel describes block devices by number.
const SYS_DEV_BLOCK: &str = "/sys/dev/block";
/// How often [`JobCgroup::wait_empty`] looks when inotify cannot be used.
const FALLBACK_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What went wrong with a cgroup operation; every message names the operation
/// and the path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The supervisor runs in the root cgroup and no root was configured:
    /// it will not make its subtree at the top of the host's hierarchy.
    #[error(
        "the supervisor runs in the root cgroup of {}; set cgroup_root (e.g. {}) \
         or start it with systemd (Delegate=yes)",
        mount.display(),
        mount.join("jobworker").display()
    )]
    RootCgroup {
        /// The cgroup2 mount point.
        mount: PathBuf,
    },
    /// A file-system operation on a cgroup (or proc, or sysfs) file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `writing 50000 100000 to`.
        op: String,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A file did not have the format the kernel documents.
    #[error("parsing {}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `/proc/self/mountinfo` lists no cgroup2 file system.
    #[error("no cgroup2 file system is mounted (none in /proc/self/mountinfo)")]
    NoCgroup2Mount,
    /// `/proc/self/cgroup` has no cgroup v2 (`0::`) line.
    #[error("/proc/self/cgroup has no cgroup v2 (\"0::\") line")]
    NoUnifiedCgroup,
    /// Our cgroup is outside the part of the hierarchy the cgroup2 mount shows.
    #[error(
        "our cgroup {cgroup} is not under the root {} of the cgroup2 mount at {}",
        mount_root.display(),
        mount.display()
    )]
    CgroupNotVisible {
        /// Our cgroup, from `/proc/self/cgroup`.
        cgroup: String,
        /// The cgroup2 mount point.
        mount: PathBuf,
        /// The cgroup the mount shows as its root.
        mount_root: PathBuf,
    },
    /// The configured subtree root is not a directory on the cgroup2 mount.
    #[error(
        "the configured cgroup root {} is not a plain absolute path on the cgroup2 mount at {}",
        path.display(),
        mount.display()
    )]
    NotOnCgroup2 {
        /// The configured path.
        path: PathBuf,
        /// The cgroup2 mount point.
        mount: PathBuf,
    },
    /// A job cgroup name that is not 1 to 64 bytes of `[a-z0-9-]`.
    #[error("invalid job cgroup name {name:?}: it must be 1 to 64 bytes of [a-z0-9-]")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// The job's cgroup directory exists already.
    #[error("creating job cgroup {}: it already exists", path.display())]
    JobExists {
        /// The directory.
        path: PathBuf,
    },
}

/// A closure that wraps an I/O error with the operation and path.
fn io_error(op: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let op = op.into();
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

/// A parse error about `path`.
fn parse_error(path: &Path, reason: impl Into<String>) -> CgroupError {
    CgroupError::Parse {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads a whole file.
fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(io_error("reading", path))
}

/// Reads a whole file, `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("reading", path)(e)),
    }
}

/// Writes `value` to a cgroup file in one write (creating it, which only
/// matters for plain directories in tests: on cgroupfs the file exists).
fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_error(format!("writing {value} to"), path))
}

/// Whether `path` exists.
fn exists(path: &Path) -> Result<bool, CgroupError> {
    path.try_exists().map_err(io_error("looking for", path))
}

/// Creates a directory; one that exists already is fine.
fn create_dir_idempotent(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_error("creating", path)(e)),
        _ => Ok(()),
    }
}

/// The controllers of ours a cgroup directory offers (its `cgroup.controllers`).
fn read_controllers(dir: &Path) -> Result<Controllers, CgroupError> {
    read(&dir.join("cgroup.controllers")).map(|text| parse::controllers(&text))
}

/// Enables `controllers` for the children of `dir`, in one write (the kernel
/// applies all of it or none of it).
fn enable_controllers(dir: &Path, controllers: Controllers) -> Result<(), CgroupError> {
    let names = controllers.names();
    if names.is_empty() {
        return Ok(());
    }
    let line: Vec<String> = names.iter().map(|name| format!("+{name}")).collect();
    write(&dir.join("cgroup.subtree_control"), &line.join(" "))
}

/// The controllers jobworker uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Controllers {
    /// `cpu`: `cpu.max`.
    pub cpu: bool,
    /// `memory`: `memory.max`, `memory.swap.max`, `memory.peak`, `memory.events`.
    pub memory: bool,
    /// `io`: `io.max`, `io.stat`.
    pub io: bool,
    /// `pids`: `pids.max`.
    pub pids: bool,
}

impl Controllers {
    /// The names of the controllers that are set, in the order cpu, memory,
    /// io, pids.
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("cpu", self.cpu),
            ("memory", self.memory),
            ("io", self.io),
            ("pids", self.pids),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// Where jobworker's cgroup subtree is, and which of our controllers it
/// offers.
#[derive(Clone, Debug)]
pub struct CgroupTree {
    root: PathBuf,
    available: Controllers,
}

impl CgroupTree {
    /// Finds the cgroup2 mount (in `/proc/self/mountinfo`) and our own cgroup
    /// (the `0::` line of `/proc/self/cgroup`); the subtree root is our own
    /// cgroup, unless `configured` is given: an absolute path that must lie
    /// on the cgroup2 mount, created if missing.
    ///
    /// If our own cgroup is the `supervisor` leaf of an existing subtree (the
    /// supervisor was started in it again, e.g. by systemd's
    /// `DelegateSubgroup=supervisor`), the subtree root is its parent.
    pub fn discover(configured: Option<&Path>) -> Result<Self, CgroupError> {
        let mount = find_cgroup2_mount()?;
        let root = match configured {
            Some(path) => configured_root(path, &mount.point)?,
            None => own_cgroup_root(&mount)?,
        };
        Self::at(root)
    }

    /// Uses `root` as the subtree root directly, reading its
    /// `cgroup.controllers` to learn which controllers are available (for
    /// tests against a directory of fake cgroup files).
    pub fn at(root: PathBuf) -> Result<Self, CgroupError> {
        let available = read_controllers(&root)?;
        Ok(Self { root, available })
    }

    /// The subtree root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The controllers available: at first those the root offers, after
    /// [`setup`](Self::setup) those enabled for job cgroups.
    pub fn available(&self) -> Controllers {
        self.available
    }

    /// Prepares the subtree: creates `<root>/supervisor` and moves process
    /// `pid` (the supervisor itself; `None` in tests that run an engine
    /// in-process and must not move the test harness) into it, enables the available
    /// controllers of cpu, memory, io and pids in `<root>/cgroup.subtree_control`,
    /// creates `<root>/jobs` and enables there whatever reached it.
    ///
    /// Idempotent: a restarted supervisor calls it again. Returns the
    /// controllers enabled for job cgroups, which are also what
    /// [`available`](Self::available) reports from then on.
    pub fn setup(&mut self, pid: Option<u32>) -> Result<Controllers, CgroupError> {
        let leaf = self.root.join(SUPERVISOR_LEAF);
        create_dir_idempotent(&leaf)?;
        if let Some(pid) = pid {
            write(&leaf.join("cgroup.procs"), &pid.to_string())?;
        }
        enable_controllers(&self.root, read_controllers(&self.root)?)?;
        let jobs = self.root.join(JOBS_DIR);
        create_dir_idempotent(&jobs)?;
        let for_jobs = read_controllers(&jobs)?;
        enable_controllers(&jobs, for_jobs)?;
        self.available = for_jobs;
        Ok(for_jobs)
    }

    /// Creates `<root>/jobs/<name>` and writes each requested limit whose
    /// controller is available: `cpu.max`, `memory.max` (and `memory.swap.max`
    /// 0, if that file exists), `io.max` for `io_device` (no io limit without
    /// a device), `pids.max`. Unset limits keep the kernel default (`max`).
    ///
    /// Returns the job cgroup and which limits are enforced: a limit is
    /// enforced iff it was requested, its controller is available and the
    /// write succeeded. A failed write is an error (and the new directory is
    /// removed again), as is a directory that exists already.
    pub fn create_job(
        &self,
        name: &str,
        limits: &Limits,
        io_device: Option<(u32, u32)>,
    ) -> Result<(JobCgroup, EnforcedLimits), CgroupError> {
        let path = self.job_path(name)?;
        fs::create_dir(&path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => CgroupError::JobExists { path: path.clone() },
            _ => io_error("creating", &path)(e),
        })?;
        match write_limits(&path, self.available, limits, io_device) {
            Ok(enforced) => Ok((JobCgroup { path }, enforced)),
            Err(err) => {
                if let Err(e) = fs::remove_dir(&path) {
                    tracing::warn!(path = %path.display(), error = %e,
                        "could not remove a job cgroup whose limits failed");
                }
                Err(err)
            }
        }
    }

    /// The cgroup of job `name`, whether or not its directory exists (a job
    /// that has ended has none left).
    pub fn job_handle(&self, name: &str) -> Result<JobCgroup, CgroupError> {
        Ok(JobCgroup {
            path: self.job_path(name)?,
        })
    }

    /// The existing cgroup of job `name` (after a restart), if its directory
    /// exists and the name is valid.
    pub fn job(&self, name: &str) -> Option<JobCgroup> {
        let path = self.job_path(name).ok()?;
        path.is_dir().then_some(JobCgroup { path })
    }

    /// The names of the directories under `<root>/jobs`, sorted (none if
    /// that directory does not exist yet). Names that are not UTF-8 are
    /// skipped with a warning.
    pub fn job_names(&self) -> Result<Vec<String>, CgroupError> {
        let jobs = self.root.join(JOBS_DIR);
        let entries = match fs::read_dir(&jobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("listing", &jobs)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("listing", &jobs))?;
            let file_type = entry
                .file_type()
                .map_err(io_error("inspecting", &entry.path()))?;
            if !file_type.is_dir() {
                continue;
            }
            match entry.file_name().into_string() {
                Ok(name) => names.push(name),
                Err(name) => tracing::warn!(name = ?name, dir = %jobs.display(),
                    "skipping a job cgroup whose name is not UTF-8"),
            }
        }
        names.sort();
        Ok(names)
    }

    /// `<root>/jobs/<name>`, once `name` is checked.
    fn job_path(&self, name: &str) -> Result<PathBuf, CgroupError> {
        if !parse::valid_job_name(name) {
            return Err(CgroupError::InvalidName {
                name: name.to_owned(),
            });
        }
        Ok(self.root.join(JOBS_DIR).join(name))
    }
}

/// Where the cgroup2 file system is mounted: the first cgroup2 mount in
/// `/proc/self/mountinfo` (`/sys/fs/cgroup` on a pure cgroup v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    find_cgroup2_mount().map(|mount| mount.point)
}

/// The first cgroup2 mount in `/proc/self/mountinfo`.
fn find_cgroup2_mount() -> Result<parse::Mount, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    // Lossy: a non-UTF-8 mount point elsewhere must not hide the cgroup2 line.
    let mountinfo = fs::read(path).map_err(io_error("reading", path))?;
    parse::cgroup2_mount(&String::from_utf8_lossy(&mountinfo)).ok_or(CgroupError::NoCgroup2Mount)
}

/// Checks a configured subtree root (absolute, no `.` or `..`, under the
/// cgroup2 mount point), creates it if missing and checks that it is on a
/// cgroup2 file system.
fn configured_root(path: &Path, mount: &Path) -> Result<PathBuf, CgroupError> {
    let not_on_cgroup2 = || CgroupError::NotOnCgroup2 {
        path: path.to_path_buf(),
        mount: mount.to_path_buf(),
    };
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !path.is_absolute() || !plain || !path.starts_with(mount) {
        return Err(not_on_cgroup2());
    }
    fs::create_dir_all(path).map_err(io_error("creating", path))?;
    let fs_stat = statfs(path).map_err(|e| io_error("inspecting", path)(e.into()))?;
    if fs_stat.filesystem_type() != CGROUP2_SUPER_MAGIC {
        return Err(not_on_cgroup2());
    }
    Ok(path.to_path_buf())
}

/// Our own cgroup's directory on the cgroup2 mount, or its parent if it is
/// the supervisor leaf of a subtree already set up.
fn own_cgroup_root(mount: &parse::Mount) -> Result<PathBuf, CgroupError> {
    let proc_cgroup_path = Path::new("/proc/self/cgroup");
    let proc_cgroup = read(proc_cgroup_path)?;
    let cgroup = parse::unified_cgroup(&proc_cgroup).ok_or(CgroupError::NoUnifiedCgroup)?;
    let relative =
        Path::new(cgroup)
            .strip_prefix(&mount.root)
            .map_err(|_| CgroupError::CgroupNotVisible {
                cgroup: cgroup.to_owned(),
                mount: mount.point.clone(),
                mount_root: mount.root.clone(),
            })?;
    if relative.as_os_str().is_empty() {
        return Err(CgroupError::RootCgroup {
            mount: mount.point.clone(),
        });
    }
    let own = mount.point.join(relative);
    match own.parent() {
        Some(parent)
            if own.file_name() == Some(SUPERVISOR_LEAF.as_ref())
                && parent.join(JOBS_DIR).is_dir() =>
        {
            Ok(parent.to_path_buf())
        }
        _ => Ok(own),
    }
}

/// A test-only sabotage switch: the limits it names (comma-separated `cpu`,
/// `memory`, `io`, `pids`) are reported as enforced but never written, so
/// that the tests which measure limits on a real kernel can be shown to fail.
/// Never set it in production; the supervisor warns at startup when it is.
pub const SKIP_LIMITS_ENV: &str = "JOBWORKER_TESTING_SKIP_LIMITS";

/// Whether [`SKIP_LIMITS_ENV`] names `controller`.
fn sabotaged(controller: &str) -> bool {
    std::env::var(SKIP_LIMITS_ENV).is_ok_and(|v| v.split(',').any(|c| c.trim() == controller))
}

/// Writes `value` to a limit file unless the limit is sabotaged.
fn write_limit(controller: &str, path: &Path, value: &str) -> Result<(), CgroupError> {
    if sabotaged(controller) {
        tracing::warn!(path = %path.display(), "{SKIP_LIMITS_ENV}: not writing this limit");
        return Ok(());
    }
    write(path, value)
}

/// Writes the limits of a new job cgroup at `dir` (see
/// [`CgroupTree::create_job`]).
fn write_limits(
    dir: &Path,
    available: Controllers,
    limits: &Limits,
    io_device: Option<(u32, u32)>,
) -> Result<EnforcedLimits, CgroupError> {
    let mut enforced = EnforcedLimits::default();
    if available.cpu
        && let Some(millicores) = limits.cpu_millicores()
    {
        write_limit("cpu", &dir.join("cpu.max"), &parse::cpu_max(millicores))?;
        enforced.cpu = true;
    }
    if available.memory
        && let Some(bytes) = limits.memory_bytes()
    {
        write_limit("memory", &dir.join("memory.max"), &bytes.to_string())?;
        let swap = dir.join("memory.swap.max");
        if exists(&swap)? {
            write_limit("memory", &swap, "0")?;
        }
        enforced.memory = true;
    }
    if available.io
        && let Some(device) = io_device
        && let Some(line) = parse::io_max(device, limits.io_read_bps(), limits.io_write_bps())
    {
        write_limit("io", &dir.join("io.max"), &line)?;
        enforced.io = true;
    }
    if available.pids
        && let Some(pids) = limits.pids()
    {
        write_limit("pids", &dir.join("pids.max"), &pids.to_string())?;
        enforced.pids = true;
    }
    Ok(enforced)
}

/// The block device (major, minor) that holds `path`, as `io.max` wants it:
/// a partition is resolved to its whole disk. `None` if the file system is
/// not on a block device listed under `/sys/dev/block` (tmpfs, overlay,
/// btrfs subvolumes...): io limits cannot be enforced for it.
pub fn block_device_of(path: &Path) -> Result<Option<(u32, u32)>, CgroupError> {
    let dev = fs::metadata(path)
        .map_err(io_error("inspecting", path))?
        .dev();
    whole_disk(
        Path::new(SYS_DEV_BLOCK),
        (rustix::fs::major(dev), rustix::fs::minor(dev)),
    )
}

/// Resolves `(major, minor)` in a `/sys/dev/block`-like directory: a
/// partition (its entry has a `partition` file) to the `dev` of its parent
/// disk.
fn whole_disk(
    sys_dev_block: &Path,
    (major, minor): (u32, u32),
) -> Result<Option<(u32, u32)>, CgroupError> {
    let entry = sys_dev_block.join(format!("{major}:{minor}"));
    if !exists(&entry)? {
        return Ok(None);
    }
    if !exists(&entry.join("partition"))? {
        return Ok(Some((major, minor)));
    }
    let device = fs::canonicalize(&entry).map_err(io_error("resolving", &entry))?;
    let disk = device
        .parent()
        .ok_or_else(|| parse_error(&device, "a partition without a parent disk"))?;
    let dev_file = disk.join("dev");
    let text = read(&dev_file)?;
    parse::device_numbers(&text)
        .map(Some)
        .ok_or_else(|| parse_error(&dev_file, format!("{:?} is not MAJ:MIN", text.trim())))
}

/// One job's cgroup directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobCgroup {
    path: PathBuf,
}

impl JobCgroup {
    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An `O_RDONLY | O_DIRECTORY | O_CLOEXEC` descriptor of the directory,
    /// for clone3's `CLONE_INTO_CGROUP`.
    pub fn open_fd(&self) -> Result<OwnedFd, CgroupError> {
        rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_error("opening", &self.path)(e.into()))
    }

    /// Kills every process in the cgroup, atomically, including ones being
    /// forked (writes 1 to `cgroup.kill`).
    pub fn kill(&self) -> Result<(), CgroupError> {
        write(&self.path.join("cgroup.kill"), "1")
    }

    /// Whether the cgroup holds any process (`populated` in `cgroup.events`).
    pub fn is_populated(&self) -> Result<bool, CgroupError> {
        let events = self.path.join("cgroup.events");
        let text = read(&events)?;
        match parse::keyed_value(&text, "populated") {
            Ok(Some(value)) => Ok(value != 0),
            Ok(None) => Err(parse_error(&events, "no populated line")),
            Err(reason) => Err(parse_error(&events, reason)),
        }
    }

    /// Blocks until the cgroup is empty or `timeout` passes; returns whether
    /// it became empty. Sleeps on inotify's `IN_MODIFY` on `cgroup.events`
    /// (which the kernel signals when `populated` changes), or, if inotify
    /// cannot be used, looks every 10 ms.
    pub fn wait_empty(&self, timeout: Duration) -> Result<bool, CgroupError> {
        let deadline = Instant::now().checked_add(timeout);
        // Watch before the first look, so a change in between is not missed.
        let waiter = Waiter::new(&self.path.join("cgroup.events"));
        loop {
            if !self.is_populated()? {
                return Ok(true);
            }
            let remaining = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if remaining.is_zero() {
                return Ok(false);
            }
            waiter.wait(remaining)?;
        }
    }

    /// The processes in the cgroup (`cgroup.procs`).
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let procs = self.path.join("cgroup.procs");
        let text = read(&procs)?;
        parse::pids(&text).map_err(|reason| parse_error(&procs, reason))
    }

    /// What the job used: CPU time from `cpu.stat`, peak memory from
    /// `memory.peak` (`None` without it), bytes read and written from
    /// `io.stat` summed over devices. A missing file (its controller is not
    /// enabled) counts as nothing used; an unreadable or garbled one is an
    /// error.
    pub fn usage(&self) -> Result<Usage, CgroupError> {
        let cpu_stat = self.path.join("cpu.stat");
        let cpu_usec = match read_optional(&cpu_stat)? {
            Some(text) => parse::keyed_value(&text, "usage_usec")
                .and_then(|v| v.ok_or_else(|| "no usage_usec line".to_owned()))
                .map_err(|reason| parse_error(&cpu_stat, reason))?,
            None => 0,
        };
        let peak = self.path.join("memory.peak");
        let memory_peak_bytes = read_optional(&peak)?
            .map(|text| parse::number(&text).map_err(|reason| parse_error(&peak, reason)))
            .transpose()?;
        let io_stat = self.path.join("io.stat");
        let (io_read_bytes, io_write_bytes) = match read_optional(&io_stat)? {
            Some(text) => {
                parse::io_stat_bytes(&text).map_err(|reason| parse_error(&io_stat, reason))?
            }
            None => (0, 0),
        };
        Ok(Usage {
            cpu_usec,
            memory_peak_bytes,
            io_read_bytes,
            io_write_bytes,
        })
    }

    /// Whether the kernel's OOM killer killed a process of the cgroup
    /// (`oom_kill` in `memory.events`; false without that file).
    pub fn oom_killed(&self) -> Result<bool, CgroupError> {
        let events = self.path.join("memory.events");
        let Some(text) = read_optional(&events)? else {
            return Ok(false);
        };
        parse::keyed_value(&text, "oom_kill")
            .map(|count| count.unwrap_or(0) > 0)
            .map_err(|reason| parse_error(&events, reason))
    }

    /// Removes the (empty) cgroup directory. One that is gone already is
    /// fine; one that still holds processes is an error (`EBUSY`).
    pub fn remove(&self) -> Result<(), CgroupError> {
        match fs::remove_dir(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_error("removing", &self.path)(e))
            }
            _ => Ok(()),
        }
    }
}

/// How [`JobCgroup::wait_empty`] sleeps until `cgroup.events` may have
/// changed.
enum Waiter {
    /// An inotify watch for `IN_MODIFY` on `cgroup.events`.
    Inotify { inotify: Inotify, events: PathBuf },
    /// No inotify: sleep a short while.
    Sleep,
}

impl Waiter {
    fn new(events: &Path) -> Self {
        let watch =
            Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).and_then(|inotify| {
                inotify.add_watch(events, AddWatchFlags::IN_MODIFY)?;
                Ok(inotify)
            });
        match watch {
            Ok(inotify) => Self::Inotify {
                inotify,
                events: events.to_path_buf(),
            },
            Err(e) => {
                tracing::warn!(path = %events.display(), error = %e,
                    "cannot watch with inotify; looking every 10 ms instead");
                Self::Sleep
            }
        }
    }

    /// Sleeps until the file may have changed, at most `max`.
    fn wait(&self, max: Duration) -> Result<(), CgroupError> {
        let Self::Inotify { inotify, events } = self else {
            thread::sleep(max.min(FALLBACK_POLL_INTERVAL));
            return Ok(());
        };
        let failed = |e: Errno| io_error("waiting for a change of", events)(e.into());
        // Round up, so a sub-millisecond remainder does not spin.
        let millis = max.as_nanos().div_ceil(1_000_000);
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(failed(e)),
        }
        match inotify.read_events() {
            Ok(_) | Err(Errno::EAGAIN) => Ok(()),
            Err(e) => Err(failed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Controllers = Controllers {
        cpu: true,
        memory: true,
        io: true,
        pids: true,
    };
    const JOB: &str = "0b6f1e8e-6c39-4d4e-9f51-2f3b0c1a9d7e";

    /// A temp dir laid out like a cgroup with `controllers` offered.
    fn fake_root(controllers: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
        fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        dir
    }

    /// Adds `<root>/jobs` offering `controllers`, as the kernel would after
    /// they were enabled in the root.
    fn fake_jobs(root: &Path, controllers: &str) {
        fs::create_dir(root.join("jobs")).unwrap();
        fs::write(root.join("jobs/cgroup.controllers"), controllers).unwrap();
        fs::write(root.join("jobs/cgroup.subtree_control"), "").unwrap();
    }

    fn content(path: impl AsRef<Path>) -> String {
        fs::read_to_string(path).unwrap()
    }

    fn limits(
        cpu: Option<u32>,
        memory: Option<u64>,
        read: Option<u64>,
        write: Option<u64>,
        pids: Option<u32>,
    ) -> Limits {
        Limits::new(cpu, memory, read, write, pids).unwrap()
    }

    #[test]
    fn names_lists_the_set_controllers_in_order() {
        assert_eq!(ALL.names(), ["cpu", "memory", "io", "pids"]);
        assert!(Controllers::default().names().is_empty());
        let some = Controllers {
            memory: true,
            pids: true,
            ..Controllers::default()
        };
        assert_eq!(some.names(), ["memory", "pids"]);
    }

    #[test]
    fn at_reads_the_available_controllers() {
        let dir = fake_root("cpu memory io pids hugetlb\n");
        let tree = CgroupTree::at(dir.path().to_path_buf()).unwrap();
        assert_eq!(tree.root(), dir.path());
        assert_eq!(tree.available(), ALL);
    }

    #[test]
    fn at_fails_without_cgroup_controllers() {
        let dir = tempfile::tempdir().unwrap();
        let err = CgroupTree::at(dir.path().to_path_buf()).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("reading "), "{message}");
        assert!(message.contains("cgroup.controllers"), "{message}");
    }

    #[test]
    fn setup_moves_the_process_and_enables_controllers() {
        let dir = fake_root("cpu memory io pids hugetlb\n");
        fake_jobs(dir.path(), "cpu memory pids hugetlb\n");
        let mut tree = CgroupTree::at(dir.path().to_path_buf()).unwrap();
        let enabled = tree.setup(Some(4242)).unwrap();
        let expected = Controllers { io: false, ..ALL };
        assert_eq!(enabled, expected);
        assert_eq!(tree.available(), expected);
        assert_eq!(content(dir.path().join("supervisor/cgroup.procs")), "4242");
        assert_eq!(
            content(dir.path().join("cgroup.subtree_control")),
            "+cpu +memory +io +pids"
        );
        assert_eq!(
            content(dir.path().join("jobs/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        // A restart does it all again, with the same result.
        assert_eq!(tree.setup(Some(4243)).unwrap(), expected);
        assert_eq!(content(dir.path().join("supervisor/cgroup.procs")), "4243");
    }

    #[test]
    fn setup_without_controllers_writes_no_subtree_control() {
        let dir = fake_root("hugetlb\n");
        fake_jobs(dir.path(), "");
        let mut tree = CgroupTree::at(dir.path().to_path_buf()).unwrap();
        assert_eq!(tree.setup(Some(1)).unwrap(), Controllers::default());
        assert_eq!(content(dir.path().join("cgroup.subtree_control")), "");
        assert_eq!(content(dir.path().join("jobs/cgroup.subtree_control")), "");
        assert!(dir.path().join("supervisor").is_dir());
    }

    #[test]
    fn create_job_writes_the_limits_of_available_controllers() {
        let dir = fake_root("cpu memory io pids\n");
        fake_jobs(dir.path(), "");
        let tree = CgroupTree::at(dir.path().to_path_buf()).unwrap();
        let limits = limits(Some(500), Some(64 << 20), Some(1 << 20), None, Some(100));
        let (job, enforced) = tree.create_job(JOB, &limits, Some((254, 0))).unwrap();
        assert_eq!(job.path(), dir.path().join("jobs").join(JOB));
        assert_eq!(
            enforced,
            EnforcedLimits {
                cpu: true,
                memory: true,
                io: true,
                pids: true
            }
        );
        assert_eq!(content(job.path().join("cpu.max")), "50000 100000");
        assert_eq!(content(job.path().join("memory.max")), "67108864");
        assert_eq!(
            content(job.path().join("io.max")),
            "254:0 rbps=1048576 wbps=max"
        );
        assert_eq!(content(job.path().join("pids.max")), "100");
        // No memory.swap.max here (as with swap accounting off): not written.
        assert!(!job.path().join("memory.swap.max").exists());
        assert_eq!(tree.job(JOB), Some(job));
    }

    #[test]
    fn memory_swap_max_is_zeroed_when_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("memory.swap.max"), "max\n").unwrap();
        let limits = limits(None, Some(1 << 30), None, None, None);
        let enforced = write_limits(dir.path(), ALL, &limits, None).unwrap();
        assert_eq!(
            enforced,
            EnforcedLimits {
                memory: true,
                ..EnforcedLimits::default()
            }
        );
        assert_eq!(content(dir.path().join("memory.max")), "1073741824");
        assert_eq!(content(dir.path().join("memory.swap.max")), "0");
    }

    #[test]
    fn unavailable_controllers_are_not_enforced_and_not_written() {
        let dir = fake_root("memory hugetlb\n");
        fake_jobs(dir.path(), "");
        let tree = CgroupTree::at(dir.path().to_path_buf()).unwrap();
        let limits = limits(Some(500), Some(64 << 20), Some(4096), Some(4096), Some(10));
        let (job, enforced) = tree.create_job(JOB, &limits, Some((8, 0))).unwrap();
        assert_eq!(
            enforced,
            EnforcedLimits {
                memory: true,
                ..EnforcedLimits::default()
            }
        );
        for file in ["cpu.max", "io.max", "pids.max"] {
            assert!(!job.path().join(file).exists(), "{file} was written");
        }
    }

    #[test]
    fn unset_limits_and_unknown_devices_write_nothing() {
        let dir = fake_root("cpu memory io pids\n");
        fake_jobs(dir.path(), "");
        let tree = CgroupTree::at(dir.path().to_path_buf()).unwrap();
        let (job, enforced) = tree.create_job(JOB, &Limits::default(), None).unwrap();
        assert_eq!(enforced, EnforcedLimits::default());
        assert_eq!(fs::read_dir(job.path()).unwrap().count(), 0);
        // An io limit without a device cannot be enforced.
        let io_only = limits(None, None, None, Some(8192), None);
        let (job, enforced) = tree.create_job("other", &io_only, None).unwrap();
        assert_eq!(enforced, EnforcedLimits::default());
        assert!(!job.path().join("io.max").exists());
        let (job, enforced) = tree.create_job("third", &io_only, Some((8, 16))).unwrap();
        assert!(enforced.io);
        assert_eq!(
            content(job.path().join("io.max")),
            "8:16 rbps=max wbps=8192"
        );
    }

    #[test]
    fn create_job_refuses_an_existing_directory() {
        let dir = fake_root("");
        fake_jobs(dir.path(), "");
        let tree = CgroupTree::at(dir.path().to_path_buf()).unwrap();
        tree.create_job(JOB, &Limits::default(), None).unwrap();
        let err = tree.create_job(JOB, &Limits::default(), None).unwrap_err();
        assert!(matches!(err, CgroupError::JobExists { .. }), "{err:?}");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert!(err.to_string().contains(JOB), "{err}");
    }

    #[test]
    fn a_failed_limit_write_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where cpu.max should be makes the write fail, as the
        // kernel refusing a value would.
        fs::create_dir(dir.path().join("cpu.max")).unwrap();
        let limits = limits(Some(250), None, None, None, None);
        let err = write_limits(dir.path(), ALL, &limits, None).unwrap_err();
        let message = err.to_string();
        let expected = format!(
            "writing 25000 100000 to {}: ",
            dir.path().join("cpu.max").display()
        );
        assert!(message.starts_with(&expected), "{message}");
    }

    #[test]
    fn job_names_are_validated() {
        let dir = fake_root("");
        let tree = CgroupTree::at(dir.path().to_path_buf()).unwrap();
        for bad in ["", "..", "../../etc", "a/b", "UP", &"a".repeat(65)] {
            let err = tree.create_job(bad, &Limits::default(), None).unwrap_err();
            assert!(
                matches!(err, CgroupError::InvalidName { .. }),
                "{bad:?}: {err:?}"
            );
            assert_eq!(tree.job(bad), None);
        }
        assert!(!dir.path().join("jobs").exists());
    }

    #[test]
    fn job_and_job_names_find_existing_job_cgroups() {
        let dir = fake_root("");
        let tree = CgroupTree::at(dir.path().to_path_buf()).unwrap();
        assert_eq!(tree.job_names().unwrap(), Vec::<String>::new());
        assert_eq!(tree.job(JOB), None);
        fs::create_dir_all(dir.path().join("jobs/b-2")).unwrap();
        fs::create_dir_all(dir.path().join("jobs/a-1")).unwrap();
        fs::write(dir.path().join("jobs/cgroup.procs"), "").unwrap();
        assert_eq!(tree.job_names().unwrap(), ["a-1", "b-2"]);
        assert_eq!(tree.job("a-1").unwrap().path(), dir.path().join("jobs/a-1"));
        assert_eq!(tree.job("cgroup.procs"), None);
    }

    #[test]
    fn job_cgroup_reads_fake_kernel_files() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobCgroup {
            path: dir.path().to_path_buf(),
        };
        fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        fs::write(dir.path().join("cgroup.procs"), "10\n11\n").unwrap();
        assert!(job.is_populated().unwrap());
        assert_eq!(job.pids().unwrap(), [10, 11]);
        // Only cpu.stat: no memory or io controller.
        fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        )
        .unwrap();
        assert_eq!(
            job.usage().unwrap(),
            Usage {
                cpu_usec: 1500,
                ..Usage::default()
            }
        );
        assert!(!job.oom_killed().unwrap());
        fs::write(dir.path().join("memory.peak"), "2097152\n").unwrap();
        fs::write(
            dir.path().join("io.stat"),
            "8:0 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n\
             8:16 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n",
        )
        .unwrap();
        fs::write(dir.path().join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        assert_eq!(
            job.usage().unwrap(),
            Usage {
                cpu_usec: 1500,
                memory_peak_bytes: Some(2_097_152),
                io_read_bytes: 11,
                io_write_bytes: 22,
            }
        );
        assert!(job.oom_killed().unwrap());
        fs::write(dir.path().join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        assert!(!job.is_populated().unwrap());
        assert!(job.wait_empty(Duration::from_secs(1)).unwrap());
    }

    #[test]
    fn garbled_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobCgroup {
            path: dir.path().to_path_buf(),
        };
        fs::write(dir.path().join("cgroup.events"), "frozen 0\n").unwrap();
        let err = job.is_populated().unwrap_err().to_string();
        assert!(
            err.contains("cgroup.events") && err.contains("populated"),
            "{err}"
        );
        fs::write(dir.path().join("cpu.stat"), "usage_usec lots\n").unwrap();
        let err = job.usage().unwrap_err().to_string();
        assert!(
            err.starts_with("parsing ") && err.contains("cpu.stat"),
            "{err}"
        );
        fs::write(dir.path().join("cpu.stat"), "usage_usec 1\n").unwrap();
        fs::write(dir.path().join("memory.peak"), "max\n").unwrap();
        let err = job.usage().unwrap_err().to_string();
        assert!(err.contains("memory.peak"), "{err}");
        fs::remove_file(dir.path().join("memory.peak")).unwrap();
        fs::write(dir.path().join("io.stat"), "8:0 rbytes=?\n").unwrap();
        let err = job.usage().unwrap_err().to_string();
        assert!(err.contains("io.stat"), "{err}");
        fs::write(dir.path().join("memory.events"), "oom_kill -1\n").unwrap();
        let err = job.oom_killed().unwrap_err().to_string();
        assert!(err.contains("memory.events"), "{err}");
        fs::write(dir.path().join("cgroup.procs"), "1\nabc\n").unwrap();
        assert!(job.pids().unwrap_err().to_string().contains("cgroup.procs"));
    }

    #[test]
    fn wait_empty_times_out_on_a_populated_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobCgroup {
            path: dir.path().to_path_buf(),
        };
        fs::write(dir.path().join("cgroup.events"), "populated 1\n").unwrap();
        let start = Instant::now();
        assert!(!job.wait_empty(Duration::from_millis(100)).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn wait_empty_wakes_up_on_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("cgroup.events");
        fs::write(&events, "populated 1\n").unwrap();
        let job = JobCgroup {
            path: dir.path().to_path_buf(),
        };
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            // Overwritten in place with one write of the same length, as the
            // kernel's file changes: fs::write would truncate first, and the
            // waiter could wake up to an empty file no kernel ever shows.
            let mut file = fs::OpenOptions::new().write(true).open(&events).unwrap();
            io::Write::write_all(&mut file, b"populated 0\n").unwrap();
        });
        let start = Instant::now();
        assert!(job.wait_empty(Duration::from_secs(10)).unwrap());
        assert!(start.elapsed() < Duration::from_secs(5));
        writer.join().unwrap();
        // A timeout too long for an Instant waits forever, and still returns.
        assert!(job.wait_empty(Duration::MAX).unwrap());
    }

    #[test]
    fn remove_tolerates_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobCgroup {
            path: dir.path().join("gone"),
        };
        fs::create_dir(job.path()).unwrap();
        job.remove().unwrap();
        assert!(!job.path().exists());
        job.remove().unwrap();
        fs::create_dir(job.path()).unwrap();
        fs::write(job.path().join("file"), "").unwrap();
        let err = job.remove().unwrap_err().to_string();
        assert!(
            err.starts_with("removing ") && err.contains("gone"),
            "{err}"
        );
    }

    #[test]
    fn open_fd_opens_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobCgroup {
            path: dir.path().to_path_buf(),
        };
        let fd = job.open_fd().unwrap();
        let stat = rustix::fs::fstat(&fd).unwrap();
        assert_eq!(
            rustix::fs::FileType::from_raw_mode(stat.st_mode),
            rustix::fs::FileType::Directory
        );
        let flags = rustix::io::fcntl_getfd(&fd).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        let missing = JobCgroup {
            path: dir.path().join("missing"),
        };
        let err = missing.open_fd().unwrap_err().to_string();
        assert!(
            err.starts_with("opening ") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn whole_disk_resolves_partitions() {
        let sys = tempfile::tempdir().unwrap();
        let disk = sys.path().join("devices/virtual/block/vda");
        fs::create_dir_all(disk.join("vda1")).unwrap();
        fs::write(disk.join("dev"), "254:0\n").unwrap();
        fs::write(disk.join("vda1/dev"), "254:1\n").unwrap();
        fs::write(disk.join("vda1/partition"), "1\n").unwrap();
        let block = sys.path().join("dev/block");
        fs::create_dir_all(&block).unwrap();
        std::os::unix::fs::symlink(disk.join("vda1"), block.join("254:1")).unwrap();
        std::os::unix::fs::symlink(&disk, block.join("254:0")).unwrap();
        assert_eq!(whole_disk(&block, (254, 1)).unwrap(), Some((254, 0)));
        assert_eq!(whole_disk(&block, (254, 0)).unwrap(), Some((254, 0)));
        assert_eq!(whole_disk(&block, (0, 42)).unwrap(), None);
        fs::write(disk.join("dev"), "vda\n").unwrap();
        let err = whole_disk(&block, (254, 1)).unwrap_err().to_string();
        assert!(err.contains("dev") && err.contains("MAJ:MIN"), "{err}");
    }

    #[test]
    fn configured_roots_must_be_plain_paths_under_the_mount() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        for bad in [
            "relative/x",
            "/sys/fs/cgroup/memory/x",
            "/sys/fs/cgroup/unified/../memory",
            "/tmp",
        ] {
            let err = configured_root(Path::new(bad), mount).unwrap_err();
            assert!(
                matches!(err, CgroupError::NotOnCgroup2 { .. }),
                "{bad}: {err:?}"
            );
        }
        // Under the mount point lexically but on another file system.
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("x");
        let err = configured_root(&inside, dir.path()).unwrap_err();
        assert!(matches!(err, CgroupError::NotOnCgroup2 { .. }), "{err:?}");
    }

    #[test]
    fn errors_name_the_operation_and_the_path() {
        let err = io_error("writing 100000 to", Path::new("/sys/fs/cgroup/x/cpu.max"))(
            io::Error::from_raw_os_error(libc::EINVAL),
        );
        let message = err.to_string();
        assert!(
            message.starts_with("writing 100000 to /sys/fs/cgroup/x/cpu.max: Invalid argument"),
            "{message}"
        );
    }
}
