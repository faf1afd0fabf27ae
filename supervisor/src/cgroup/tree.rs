//! [`CgroupTree`]: jobworker's subtree on the cgroup2 mount. Laying it out
//! (the supervisor's leaf, the jobs' parent), enabling controllers down to
//! the job cgroups, creating a job's cgroup with its limits, and finding the
//! job cgroups that exist (after a restart).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use jobworker_ipc::{EnforcedLimits, Limits};

use super::limits::write_limits;
use super::{
    CgroupError, Controllers, JOBS_DIR, JobCgroup, SPARE_DIR, SUPERVISOR_LEAF, discover, io_error,
    parse, parse_error, read, write,
};

/// How long a spare init left in `<root>/spare` may take to die.
const SPARE_EXIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where jobworker's cgroup subtree is, and which of our controllers it
/// offers.
#[derive(Clone, Debug)]
pub struct CgroupTree {
    root: PathBuf,
    available: Controllers,
    /// Makes a cgroup directory: `fs::create_dir`, after which the kernel
    /// fills it with the cgroup's files. The unit tests put a fake kernel's
    /// `mkdir` here.
    mkdir: fn(&Path) -> io::Result<()>,
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
        Self::at(discover::subtree_root(configured)?)
    }

    /// Uses `root` as the subtree root directly, reading its
    /// `cgroup.controllers` to learn which controllers are available (for
    /// tests against a directory of fake cgroup files).
    pub fn at(root: PathBuf) -> Result<Self, CgroupError> {
        let available = read_controllers(&root)?;
        Ok(Self {
            root,
            available,
            mkdir: |path| fs::create_dir(path),
        })
    }

    /// The subtree a supervisor left at the configured `root` (absolute on
    /// the cgroup2 mount, or relative to it), if it exists: `None` if
    /// `<root>/jobs` does not. Creates nothing (a subtree that was never set
    /// up has no jobs to account for).
    pub fn existing(root: &Path) -> Result<Option<Self>, CgroupError> {
        let root = discover::configured_path(root, &discover::cgroup2_mount()?)?;
        if !root.join(JOBS_DIR).is_dir() {
            return Ok(None);
        }
        Self::at(root).map(Some)
    }

    /// The processes in the subtree root itself (`<root>/cgroup.procs`):
    /// those [`setup`](Self::setup) must move into the leaf before the root
    /// can enable controllers for its children.
    pub fn root_processes(&self) -> Result<Vec<u32>, CgroupError> {
        let path = self.root.join("cgroup.procs");
        read(&path)?
            .lines()
            .map(|line| {
                line.trim()
                    .parse()
                    .map_err(|_| parse_error(&path, format!("{line:?} is not a pid")))
            })
            .collect()
    }

    /// Removes `<root>/jobs` if it is there, once every job cgroup in it is
    /// gone, and `<root>/spare` (killing a spare init still in it: it ends
    /// by itself once its supervisor has gone); the rest belongs to whoever
    /// made the root (systemd removes a unit's cgroup with its holder in the
    /// leaf).
    pub fn remove_jobs_dir(&self) -> Result<(), CgroupError> {
        let spare = self.root.join(SPARE_DIR);
        if spare.is_dir() && !JobCgroup::new(spare.clone(), self.available).destroy(SPARE_EXIT)? {
            return Err(io_error("removing", &spare)(io::Error::from_raw_os_error(
                libc::EBUSY,
            )));
        }
        let path = self.root.join(JOBS_DIR);
        match fs::remove_dir(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    /// `<root>/spare`, made if missing: where the engine's spare init waits
    /// for a job (see the engine's `spare`).
    pub fn spare(&self) -> Result<JobCgroup, CgroupError> {
        let path = self.root.join(SPARE_DIR);
        self.create_dir_idempotent(&path)?;
        Ok(JobCgroup::new(path, self.available))
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

    /// Prepares the subtree: creates `<root>/supervisor` and moves
    /// `processes` into it (the [`root_processes`](Self::root_processes): the
    /// supervisor itself when the root is its own cgroup, the holder of a
    /// systemd unit's delegated cgroup; none in tests that run an engine
    /// in-process on a fresh root), enables the available controllers of
    /// cpu, memory, io and pids in `<root>/cgroup.subtree_control`, creates
    /// `<root>/jobs` and enables there whatever reached it.
    ///
    /// Idempotent: a restarted supervisor calls it again. Returns the
    /// controllers enabled for job cgroups, which are also what
    /// [`available`](Self::available) reports from then on.
    pub fn setup(&mut self, processes: &[u32]) -> Result<Controllers, CgroupError> {
        let leaf = self.root.join(SUPERVISOR_LEAF);
        self.create_dir_idempotent(&leaf)?;
        for pid in processes {
            match write(&leaf.join("cgroup.procs"), &pid.to_string()) {
                // It exited meanwhile: nothing to move.
                Err(CgroupError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ESRCH) => {}
                result => result?,
            }
        }
        enable_controllers(&self.root, read_controllers(&self.root)?)?;
        let jobs = self.root.join(JOBS_DIR);
        self.create_dir_idempotent(&jobs)?;
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
        (self.mkdir)(&path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => CgroupError::JobExists { path: path.clone() },
            _ => io_error("creating", &path)(e),
        })?;
        match write_limits(&path, self.available, limits, io_device) {
            Ok(enforced) => Ok((JobCgroup::new(path, self.available), enforced)),
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
        self.job_path(name)
            .map(|path| JobCgroup::new(path, self.available))
    }

    /// The existing cgroup of job `name` (after a restart), if its directory
    /// exists and the name is valid.
    pub fn job(&self, name: &str) -> Option<JobCgroup> {
        let path = self.job_path(name).ok()?;
        path.is_dir().then(|| JobCgroup::new(path, self.available))
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

    /// Creates a cgroup directory; one that exists already is fine.
    fn create_dir_idempotent(&self, path: &Path) -> Result<(), CgroupError> {
        match (self.mkdir)(path) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                Err(io_error("creating", path)(e))
            }
            _ => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::fake::{self, ALL};

    const JOB: &str = "0b6f1e8e-6c39-4d4e-9f51-2f3b0c1a9d7e";

    /// A tree on the fake subtree root `root`, whose new cgroups the fake
    /// kernel makes.
    fn fake_tree(root: &tempfile::TempDir) -> CgroupTree {
        let mut tree = CgroupTree::at(root.path().to_path_buf()).unwrap();
        tree.mkdir = fake::mkdir;
        tree
    }

    /// A fake subtree root offering `controllers`, set up, and its tree.
    fn set_up(controllers: &str) -> (tempfile::TempDir, CgroupTree) {
        let root = fake::cgroup(controllers);
        let mut tree = fake_tree(&root);
        tree.setup(&[]).unwrap();
        (root, tree)
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
    fn at_reads_the_available_controllers() {
        let dir = fake::cgroup("cpu memory io pids hugetlb");
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
    fn setup_lays_out_a_new_subtree() {
        let dir = fake::cgroup("cpu memory io pids hugetlb");
        let mut tree = fake_tree(&dir);
        assert_eq!(tree.setup(&[4242]).unwrap(), ALL);
        assert_eq!(tree.available(), ALL);
        assert_eq!(
            fake::content(dir.path().join("supervisor/cgroup.procs")),
            "4242"
        );
        assert_eq!(
            fake::content(dir.path().join("cgroup.subtree_control")),
            "+cpu +memory +io +pids"
        );
        assert_eq!(
            fake::content(dir.path().join("jobs/cgroup.controllers")),
            "cpu memory io pids\n"
        );
        assert_eq!(
            fake::content(dir.path().join("jobs/cgroup.subtree_control")),
            "+cpu +memory +io +pids"
        );
    }

    #[test]
    fn setup_moves_the_process_and_enables_controllers() {
        let dir = fake::cgroup("cpu memory io pids hugetlb");
        // A jobs cgroup from before a restart, which io does not reach.
        let jobs = dir.path().join("jobs");
        fs::create_dir(&jobs).unwrap();
        fake::populate(&jobs, "cpu memory pids hugetlb");
        let mut tree = fake_tree(&dir);
        let enabled = tree.setup(&[4242]).unwrap();
        let expected = Controllers { io: false, ..ALL };
        assert_eq!(enabled, expected);
        assert_eq!(tree.available(), expected);
        assert_eq!(
            fake::content(dir.path().join("supervisor/cgroup.procs")),
            "4242"
        );
        assert_eq!(
            fake::content(dir.path().join("cgroup.subtree_control")),
            "+cpu +memory +io +pids"
        );
        assert_eq!(
            fake::content(dir.path().join("jobs/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        // A restart does it all again, with the same result.
        assert_eq!(tree.setup(&[4243]).unwrap(), expected);
        assert_eq!(
            fake::content(dir.path().join("supervisor/cgroup.procs")),
            "4243"
        );
    }

    #[test]
    fn setup_without_controllers_writes_no_subtree_control() {
        let dir = fake::cgroup("hugetlb");
        let mut tree = fake_tree(&dir);
        assert_eq!(tree.setup(&[1]).unwrap(), Controllers::default());
        // As the kernel made them.
        assert_eq!(
            fake::content(dir.path().join("cgroup.subtree_control")),
            "\n"
        );
        assert_eq!(
            fake::content(dir.path().join("jobs/cgroup.subtree_control")),
            "\n"
        );
        assert!(dir.path().join("supervisor").is_dir());
    }

    #[test]
    fn create_job_writes_the_limits_of_available_controllers() {
        let (dir, tree) = set_up("cpu memory io pids");
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
        assert_eq!(fake::content(job.path().join("cpu.max")), "50000 100000");
        assert_eq!(fake::content(job.path().join("memory.max")), "67108864");
        assert_eq!(fake::content(job.path().join("memory.swap.max")), "0");
        assert_eq!(
            fake::content(job.path().join("io.max")),
            "254:0 rbps=1048576 wbps=max"
        );
        assert_eq!(fake::content(job.path().join("pids.max")), "100");
        assert_eq!(tree.job(JOB), Some(job));
    }

    #[test]
    fn unavailable_controllers_are_not_enforced_and_not_written() {
        let (_dir, tree) = set_up("memory hugetlb");
        let limits = limits(Some(500), Some(64 << 20), Some(4096), Some(4096), Some(10));
        let (job, enforced) = tree.create_job(JOB, &limits, Some((8, 0))).unwrap();
        assert_eq!(
            enforced,
            EnforcedLimits {
                memory: true,
                ..EnforcedLimits::default()
            }
        );
        // The kernel makes no files for controllers the cgroup does not
        // offer, and none were made.
        for file in ["cpu.max", "io.max", "pids.max"] {
            assert!(!job.path().join(file).exists(), "{file} was written");
        }
    }

    #[test]
    fn unset_limits_and_unknown_devices_write_nothing() {
        let (_dir, tree) = set_up("cpu memory io pids");
        let (job, enforced) = tree.create_job(JOB, &Limits::default(), None).unwrap();
        assert_eq!(enforced, EnforcedLimits::default());
        // The kernel's defaults are left alone.
        for (file, default) in [
            ("cpu.max", "max 100000\n"),
            ("memory.max", "max\n"),
            ("memory.swap.max", "max\n"),
            ("io.max", ""),
            ("pids.max", "max\n"),
        ] {
            assert_eq!(fake::content(job.path().join(file)), default, "{file}");
        }
        // An io limit without a device cannot be enforced.
        let io_only = limits(None, None, None, Some(8192), None);
        let (job, enforced) = tree.create_job("other", &io_only, None).unwrap();
        assert_eq!(enforced, EnforcedLimits::default());
        assert_eq!(fake::content(job.path().join("io.max")), "");
        let (job, enforced) = tree.create_job("third", &io_only, Some((8, 16))).unwrap();
        assert!(enforced.io);
        assert_eq!(
            fake::content(job.path().join("io.max")),
            "8:16 rbps=max wbps=8192"
        );
    }

    #[test]
    fn create_job_refuses_an_existing_directory() {
        let (_dir, tree) = set_up("");
        tree.create_job(JOB, &Limits::default(), None).unwrap();
        let err = tree.create_job(JOB, &Limits::default(), None).unwrap_err();
        assert!(matches!(err, CgroupError::JobExists { .. }), "{err:?}");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert!(err.to_string().contains(JOB), "{err}");
    }

    #[test]
    fn job_names_are_validated() {
        let dir = fake::cgroup("");
        let tree = fake_tree(&dir);
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
        let dir = fake::cgroup("");
        let mut tree = fake_tree(&dir);
        assert_eq!(tree.job_names().unwrap(), Vec::<String>::new());
        assert_eq!(tree.job(JOB), None);
        tree.setup(&[]).unwrap();
        fake::mkdir(&dir.path().join("jobs/b-2")).unwrap();
        fake::mkdir(&dir.path().join("jobs/a-1")).unwrap();
        // The jobs cgroup's own files are not job cgroups.
        assert_eq!(tree.job_names().unwrap(), ["a-1", "b-2"]);
        assert_eq!(tree.job("a-1").unwrap().path(), dir.path().join("jobs/a-1"));
        assert_eq!(tree.job("cgroup.procs"), None);
    }

    #[test]
    fn the_root_processes_are_read_from_its_cgroup_procs() {
        let dir = fake::cgroup("cpu memory io pids");
        let tree = fake_tree(&dir);
        fake::set(dir.path().join("cgroup.procs"), "");
        assert_eq!(tree.root_processes().unwrap(), Vec::<u32>::new());
        fake::set(dir.path().join("cgroup.procs"), "4242\n17\n");
        assert_eq!(tree.root_processes().unwrap(), [4242, 17]);
        fake::set(dir.path().join("cgroup.procs"), "x\n");
        let err = tree.root_processes().unwrap_err().to_string();
        assert!(err.contains("is not a pid"), "{err}");
    }

    #[test]
    fn the_jobs_dir_goes_once_empty() {
        let dir = fake::cgroup("cpu memory io pids");
        let tree = fake_tree(&dir);
        tree.remove_jobs_dir().unwrap();
        fs::create_dir_all(dir.path().join("jobs/a-1")).unwrap();
        let err = tree.remove_jobs_dir().unwrap_err().to_string();
        assert!(
            err.starts_with("removing ") && err.contains("jobs"),
            "{err}"
        );
        fs::remove_dir(dir.path().join("jobs/a-1")).unwrap();
        tree.remove_jobs_dir().unwrap();
        assert!(!dir.path().join("jobs").exists());
        assert!(dir.path().exists(), "the root stays");
    }
}
