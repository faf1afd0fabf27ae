//! The cgroup module against this machine's real cgroup2 mount. These tests
//! need root and a cgroup2 mount, and fail (never skip) without them.
//!
//! Each test works in its own subtree, `<cgroup2 mount>/jobworker-test-<pid>-<n>`,
//! which a guard removes even when the test fails. The test process itself is
//! never moved: `setup` gets the pid of a `sleep` child instead.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use jobworker_ipc::Limits;
use jobworker_supervisor::cgroup::{self, CgroupError, CgroupTree, Controllers, block_device_of};

const JOB: &str = "0b6f1e8e-6c39-4d4e-9f51-2f3b0c1a9d7e";

/// The cgroup2 mount point and the cgroup it shows as its root, read from
/// mountinfo independently of the module under test.
fn cgroup2_mount() -> (PathBuf, String) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            if fs.split(' ').next() != Some("cgroup2") {
                return None;
            }
            let fields: Vec<&str> = mount.split(' ').collect();
            Some((PathBuf::from(fields[4]), fields[3].to_owned()))
        })
        .expect("these tests need a cgroup2 mount, and /proc/self/mountinfo lists none")
}

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root: they create cgroups on the cgroup2 mount"
    );
}

/// The `0::` line of `/proc/<pid>/cgroup`.
fn unified_cgroup_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
        .unwrap()
}

/// A cgroup path as `/proc/<pid>/cgroup` shows it.
fn cgroup_name(mount: &Path, mount_root: &str, dir: &Path) -> String {
    let relative = dir.strip_prefix(mount).unwrap();
    Path::new(mount_root)
        .join(relative)
        .to_string_lossy()
        .into_owned()
}

/// A test's own subtree on the cgroup2 mount, and the children it started;
/// dropping it kills them and removes every cgroup under the subtree.
struct Fixture {
    mount: PathBuf,
    mount_root: String,
    root: PathBuf,
    children: Vec<Child>,
}

impl Fixture {
    fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        require_root();
        let (mount, mount_root) = cgroup2_mount();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = mount.join(format!("jobworker-test-{}-{n}", std::process::id()));
        assert!(!root.exists(), "{} exists already", root.display());
        Self {
            mount,
            mount_root,
            root,
            children: Vec::new(),
        }
    }

    /// Starts a child (kept for cleanup) and returns its pid.
    fn spawn(&mut self, command: &mut Command) -> u32 {
        let child = command.spawn().unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn sleeper(&mut self) -> u32 {
        self.spawn(Command::new("sleep").arg("30"))
    }

    /// A `sh -c script` that waits for a line on stdin before it runs
    /// `script`, so it can be moved into a cgroup first; `go` sends the line.
    fn gated_shell(&mut self, script: &str) -> u32 {
        self.spawn(
            Command::new("sh")
                .arg("-c")
                .arg(format!("read go; {script}"))
                .stdin(Stdio::piped()),
        )
    }

    fn go(&mut self, pid: u32) {
        let child = self.children.iter_mut().find(|c| c.id() == pid).unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }

    fn wait(&mut self, pid: u32) -> std::process::ExitStatus {
        let child = self.children.iter_mut().find(|c| c.id() == pid).unwrap();
        child.wait().unwrap()
    }

    fn cgroup_of(&self, dir: &Path) -> String {
        cgroup_name(&self.mount, &self.mount_root, dir)
    }
}

/// Removes a cgroup directory, retrying while it is busy (its last processes
/// may still be exiting).
fn rmdir_patiently(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if e.raw_os_error() != Some(libc::EBUSY) || Instant::now() >= deadline => {
                eprintln!("cleanup: could not remove {}: {e}", dir.display());
                return;
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let jobs = self.root.join("jobs");
        let job_dirs: Vec<PathBuf> = fs::read_dir(&jobs)
            .map(|entries| {
                entries
                    .filter_map(|e| Some(e.ok()?.path()))
                    .filter(|path| path.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        for dir in &job_dirs {
            let _ = fs::write(dir.join("cgroup.kill"), "1");
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in &job_dirs {
            rmdir_patiently(dir);
        }
        rmdir_patiently(&jobs);
        rmdir_patiently(&self.root.join("supervisor"));
        rmdir_patiently(&self.root);
    }
}

/// A tree set up in the fixture's subtree, with a `sleep` child standing in
/// for the supervisor.
fn set_up(fixture: &mut Fixture) -> (CgroupTree, Controllers) {
    let holder = fixture.sleeper();
    let mut tree = CgroupTree::discover(Some(&fixture.root)).unwrap();
    let enabled = tree.setup(&[holder]).unwrap();
    (tree, enabled)
}

#[test]
fn discover_finds_our_cgroup_on_the_cgroup2_mount() {
    require_root();
    let (mount, mount_root) = cgroup2_mount();
    assert!(
        mount == Path::new("/sys/fs/cgroup/unified") || mount == Path::new("/sys/fs/cgroup"),
        "unexpected cgroup2 mount point {}",
        mount.display()
    );
    assert_eq!(cgroup::cgroup2_mount().unwrap(), mount);
    let own = unified_cgroup_of(std::process::id());
    let relative = Path::new(&own).strip_prefix(&mount_root).unwrap();
    if relative.as_os_str().is_empty() {
        // In the root cgroup (as on this machine's shells and CI), the
        // supervisor refuses to make its subtree at the top of the host's
        // hierarchy and says what to configure.
        let err = CgroupTree::discover(None).unwrap_err();
        assert!(err.to_string().contains("set cgroup_root"), "{err}");
        return;
    }
    let tree = CgroupTree::discover(None).unwrap();
    assert_eq!(tree.root(), mount.join(relative));
    eprintln!(
        "cgroup2 at {}, our cgroup {own}, available {:?}",
        mount.display(),
        tree.available().names()
    );
}

#[test]
fn discover_refuses_a_root_off_the_cgroup2_mount() {
    require_root();
    let path = PathBuf::from(format!("/tmp/jobworker-test-{}", std::process::id()));
    let err = CgroupTree::discover(Some(&path)).unwrap_err();
    assert!(matches!(err, CgroupError::NotOnCgroup2 { .. }), "{err:?}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    assert!(!path.exists(), "the refused root was created");
}

#[test]
fn setup_creates_the_layout_and_moves_the_process() {
    let mut fixture = Fixture::new();
    let holder = fixture.sleeper();
    let mut tree = CgroupTree::discover(Some(&fixture.root)).unwrap();
    assert_eq!(tree.root(), fixture.root);
    assert!(fixture.root.is_dir());

    let enabled = tree.setup(&[holder]).unwrap();
    assert_eq!(tree.available(), enabled);
    let leaf = fixture.root.join("supervisor");
    assert!(leaf.is_dir() && fixture.root.join("jobs").is_dir());
    assert_eq!(unified_cgroup_of(holder), fixture.cgroup_of(&leaf));
    let subtree_control = fs::read_to_string(fixture.root.join("jobs/cgroup.subtree_control"));
    for name in enabled.names() {
        assert!(subtree_control.as_ref().unwrap().contains(name), "{name}");
    }

    // A restart does it again.
    assert_eq!(tree.setup(&[holder]).unwrap(), enabled);
    assert_eq!(unified_cgroup_of(holder), fixture.cgroup_of(&leaf));
    eprintln!("enabled for jobs: {:?}", enabled.names());
}

#[test]
fn job_lifecycle() {
    let mut fixture = Fixture::new();
    let (tree, enabled) = set_up(&mut fixture);
    let device = block_device_of(Path::new("/")).unwrap();
    let limits = Limits::new(Some(500), Some(64 << 20), Some(1 << 20), None, Some(64)).unwrap();

    let (job, enforced) = tree.create_job(JOB, &limits, device).unwrap();
    assert_eq!(job.path(), fixture.root.join("jobs").join(JOB));
    assert!(job.path().is_dir());
    // Enforced exactly where the controller is available (none of ours on a
    // hybrid host), and then with the value written.
    assert_eq!(enforced.cpu, enabled.cpu);
    assert_eq!(enforced.memory, enabled.memory);
    assert_eq!(enforced.io, enabled.io && device.is_some());
    assert_eq!(enforced.pids, enabled.pids);
    let read = |file: &str| fs::read_to_string(job.path().join(file)).unwrap();
    if enforced.cpu {
        assert_eq!(read("cpu.max").trim(), "50000 100000");
    }
    if enforced.memory {
        assert_eq!(read("memory.max").trim(), "67108864");
    }
    if enforced.io {
        assert!(
            read("io.max").contains("rbps=1048576"),
            "{}",
            read("io.max")
        );
    }
    if enforced.pids {
        assert_eq!(read("pids.max").trim(), "64");
    }

    let err = tree.create_job(JOB, &limits, device).unwrap_err();
    assert!(matches!(err, CgroupError::JobExists { .. }), "{err:?}");
    assert_eq!(tree.job_names().unwrap(), [JOB]);
    assert_eq!(tree.job(JOB).as_ref(), Some(&job));
    drop(job.open_fd().unwrap());

    // An empty cgroup.
    assert!(!job.is_populated().unwrap());
    assert!(job.pids().unwrap().is_empty());
    assert!(job.wait_empty(Duration::from_secs(1)).unwrap());

    // A process in it.
    let sleeper = fixture.sleeper();
    fs::write(job.path().join("cgroup.procs"), sleeper.to_string()).unwrap();
    assert_eq!(unified_cgroup_of(sleeper), fixture.cgroup_of(job.path()));
    assert_eq!(job.pids().unwrap(), [sleeper]);
    assert!(job.is_populated().unwrap());
    let start = Instant::now();
    assert!(!job.wait_empty(Duration::from_millis(200)).unwrap());
    assert!(start.elapsed() >= Duration::from_millis(200));

    // A busy cgroup cannot be removed.
    let err = job.remove().unwrap_err().to_string();
    assert!(err.starts_with("removing ") && err.contains(JOB), "{err}");

    // Killed, and seen empty before the process is reaped.
    job.kill().unwrap();
    assert!(job.wait_empty(Duration::from_secs(5)).unwrap());
    assert!(job.pids().unwrap().is_empty());
    assert_eq!(fixture.wait(sleeper).signal(), Some(libc::SIGKILL));
    assert!(!job.oom_killed().unwrap());

    job.remove().unwrap();
    assert!(!job.path().exists());
    job.remove().unwrap();
    assert_eq!(tree.job(JOB), None);
    assert!(tree.job_names().unwrap().is_empty());
}

#[test]
fn kill_reaches_every_process_of_the_job() {
    let mut fixture = Fixture::new();
    let (tree, _) = set_up(&mut fixture);
    let (job, _) = tree.create_job(JOB, &Limits::default(), None).unwrap();
    let shell = fixture.gated_shell("sleep 30 & sleep 30 & wait");
    fs::write(job.path().join("cgroup.procs"), shell.to_string()).unwrap();
    fixture.go(shell);
    let deadline = Instant::now() + Duration::from_secs(5);
    while job.pids().unwrap().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the shell's children never appeared"
        );
        thread::sleep(Duration::from_millis(10));
    }
    job.kill().unwrap();
    assert!(job.wait_empty(Duration::from_secs(5)).unwrap());
    assert_eq!(fixture.wait(shell).signal(), Some(libc::SIGKILL));
    job.remove().unwrap();
}

#[test]
fn wait_empty_wakes_up_when_the_last_process_exits() {
    let mut fixture = Fixture::new();
    let (tree, _) = set_up(&mut fixture);
    let (job, _) = tree.create_job(JOB, &Limits::default(), None).unwrap();
    let shell = fixture.gated_shell("sleep 0.3");
    fs::write(job.path().join("cgroup.procs"), shell.to_string()).unwrap();
    fixture.go(shell);
    let start = Instant::now();
    // The shell is not reaped yet: an exited process no longer counts.
    assert!(job.wait_empty(Duration::from_secs(10)).unwrap());
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(fixture.wait(shell).success());
    job.remove().unwrap();
}

#[test]
fn usage_reports_cpu_time() {
    let mut fixture = Fixture::new();
    let (tree, enabled) = set_up(&mut fixture);
    let (job, _) = tree.create_job(JOB, &Limits::default(), None).unwrap();
    assert_eq!(job.usage().unwrap().cpu_usec, 0);
    let shell = fixture.gated_shell("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done");
    fs::write(job.path().join("cgroup.procs"), shell.to_string()).unwrap();
    fixture.go(shell);
    assert!(fixture.wait(shell).success());
    assert!(job.wait_empty(Duration::from_secs(5)).unwrap());

    let usage = job.usage().unwrap();
    eprintln!("usage: {usage:?}");
    assert!(usage.cpu_usec > 0, "{usage:?}");
    assert_eq!(
        usage.memory_peak_bytes.is_some(),
        job.path().join("memory.peak").exists()
    );
    if !enabled.io {
        assert_eq!((usage.io_read_bytes, usage.io_write_bytes), (0, 0));
    }
    job.remove().unwrap();
}

#[test]
fn block_device_of_the_root_file_system_is_a_whole_disk() {
    let (major, minor) = block_device_of(Path::new("/"))
        .unwrap()
        .expect("/ is not on a block device");
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    assert!(sys.exists(), "{} does not exist", sys.display());
    assert!(
        !sys.join("partition").exists(),
        "{major}:{minor} is a partition"
    );
    eprintln!("/ is on {major}:{minor}");

    assert_eq!(block_device_of(Path::new("/proc")).unwrap(), None);
    let err = block_device_of(Path::new("/nonexistent/jobworker"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/jobworker"), "{err}");
}
