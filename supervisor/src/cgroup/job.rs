//! [`JobCgroup`]: one job's cgroup. Its directory's descriptor (for clone3),
//! `cgroup.kill`, whether it is populated and waiting until it is not (on
//! `cgroup.events`, with inotify), its processes, what it used, OOM kills,
//! and its removal.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use jobworker_ipc::Usage;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use rustix::fs::{Mode, OFlags};

use super::{CgroupError, Controllers, io_error, parse, parse_error, read, read_optional, write};

/// How often [`JobCgroup::wait_empty`] looks when inotify cannot be used.
const FALLBACK_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// One job's cgroup directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobCgroup {
    path: PathBuf,
    /// Our controllers the cgroup has (its parent enables them for it):
    /// the files of the others are never looked for.
    controllers: Controllers,
}

impl JobCgroup {
    /// The job cgroup at `path` (made by [`CgroupTree`](super::CgroupTree)),
    /// which has `controllers`.
    pub(super) fn new(path: PathBuf, controllers: Controllers) -> Self {
        Self { path, controllers }
    }

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

    /// Moves the process `pid` (a spare init, single-threaded) into the
    /// cgroup (writes it to `cgroup.procs`).
    pub fn adopt(&self, pid: u32) -> Result<(), CgroupError> {
        write(&self.path.join("cgroup.procs"), &pid.to_string())
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
    /// `io.stat` summed over devices. The file of a controller the cgroup
    /// does not have is not looked for, and a missing one (a kernel without
    /// `memory.peak`) counts as nothing used; an unreadable or garbled one
    /// is an error.
    pub fn usage(&self) -> Result<Usage, CgroupError> {
        let cpu_stat = self.path.join("cpu.stat");
        let cpu_usec = match read_optional(&cpu_stat)? {
            Some(text) => parse::keyed_value(&text, "usage_usec")
                .and_then(|v| v.ok_or_else(|| "no usage_usec line".to_owned()))
                .map_err(|reason| parse_error(&cpu_stat, reason))?,
            None => 0,
        };
        let memory_peak_bytes = if self.controllers.memory {
            let peak = self.path.join("memory.peak");
            read_optional(&peak)?
                .map(|text| parse::number(&text).map_err(|reason| parse_error(&peak, reason)))
                .transpose()?
        } else {
            None
        };
        let io_stat = self.path.join("io.stat");
        let io_text = if self.controllers.io {
            read_optional(&io_stat)?
        } else {
            None
        };
        let (io_read_bytes, io_write_bytes) = match io_text {
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
    /// (`oom_kill` in `memory.events`; false without the memory controller
    /// or that file).
    pub fn oom_killed(&self) -> Result<bool, CgroupError> {
        if !self.controllers.memory {
            return Ok(false);
        }
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

    /// Ends the cgroup: kills every process in it ([`kill`](Self::kill)),
    /// waits up to `timeout` until it is empty
    /// ([`wait_empty`](Self::wait_empty)), then removes it
    /// ([`remove`](Self::remove)). Returns whether it was removed: `false`
    /// if it still held processes when `timeout` passed, and then it is left
    /// in place. Blocks, so async callers run it on a blocking thread.
    ///
    /// A failed kill is not an error of its own: what matters is whether the
    /// cgroup empties (one whose processes have all exited does anyway), and
    /// the result says that.
    pub fn destroy(&self, timeout: Duration) -> Result<bool, CgroupError> {
        let _ = self.kill();
        if !self.wait_empty(timeout)? {
            return Ok(false);
        }
        self.remove()?;
        Ok(true)
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
    use crate::cgroup::fake;

    /// A fake job cgroup offering `controllers`, and the job's handle on it.
    fn fake_job(controllers: &str) -> (tempfile::TempDir, JobCgroup) {
        let dir = fake::cgroup(controllers);
        let job = JobCgroup::new(dir.path().to_path_buf(), parse::controllers(controllers));
        (dir, job)
    }

    #[test]
    fn job_cgroup_reads_fake_kernel_files() {
        // No controllers: cpu.stat (in every cgroup) but no memory or io files.
        let (dir, job) = fake_job("");
        fake::set(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n");
        fake::set(dir.path().join("cgroup.procs"), "10\n11\n");
        assert!(job.is_populated().unwrap());
        assert_eq!(job.pids().unwrap(), [10, 11]);
        fake::set(
            dir.path().join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        );
        assert_eq!(
            job.usage().unwrap(),
            Usage {
                cpu_usec: 1500,
                ..Usage::default()
            }
        );
        assert!(!job.oom_killed().unwrap());
        // The files of controllers it does not have are not looked at, even
        // where one is there (as none is on cgroupfs).
        for file in ["memory.peak", "memory.events", "io.stat"] {
            fs::write(dir.path().join(file), "garbled\n").unwrap();
        }
        assert_eq!(job.usage().unwrap().cpu_usec, 1500);
        assert!(!job.oom_killed().unwrap());
        fake::set(dir.path().join("cgroup.events"), "populated 0\nfrozen 0\n");
        assert!(!job.is_populated().unwrap());
        assert!(job.wait_empty(Duration::from_secs(1)).unwrap());

        // With the memory and io controllers.
        let (dir, job) = fake_job("memory io");
        assert_eq!(
            job.usage().unwrap(),
            Usage {
                memory_peak_bytes: Some(0),
                ..Usage::default()
            }
        );
        fake::set(
            dir.path().join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        );
        fake::set(dir.path().join("memory.peak"), "2097152\n");
        fake::set(
            dir.path().join("io.stat"),
            "8:0 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n\
             8:16 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n",
        );
        assert!(!job.oom_killed().unwrap());
        fake::set(dir.path().join("memory.events"), "oom 1\noom_kill 1\n");
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
    }

    #[test]
    fn garbled_files_are_errors_naming_the_file() {
        let (dir, job) = fake_job("memory io");
        fake::set(dir.path().join("cgroup.events"), "frozen 0\n");
        let err = job.is_populated().unwrap_err().to_string();
        assert!(
            err.contains("cgroup.events") && err.contains("populated"),
            "{err}"
        );
        fake::set(dir.path().join("cpu.stat"), "usage_usec lots\n");
        let err = job.usage().unwrap_err().to_string();
        assert!(
            err.starts_with("parsing ") && err.contains("cpu.stat"),
            "{err}"
        );
        fake::set(dir.path().join("cpu.stat"), "usage_usec 1\n");
        fake::set(dir.path().join("memory.peak"), "max\n");
        let err = job.usage().unwrap_err().to_string();
        assert!(err.contains("memory.peak"), "{err}");
        fake::set(dir.path().join("memory.peak"), "0\n");
        fake::set(dir.path().join("io.stat"), "8:0 rbytes=?\n");
        let err = job.usage().unwrap_err().to_string();
        assert!(err.contains("io.stat"), "{err}");
        fake::set(dir.path().join("memory.events"), "oom_kill -1\n");
        let err = job.oom_killed().unwrap_err().to_string();
        assert!(err.contains("memory.events"), "{err}");
        fake::set(dir.path().join("cgroup.procs"), "1\nabc\n");
        assert!(job.pids().unwrap_err().to_string().contains("cgroup.procs"));
    }

    #[test]
    fn wait_empty_times_out_on_a_populated_cgroup() {
        let (dir, job) = fake_job("");
        fake::set(dir.path().join("cgroup.events"), "populated 1\n");
        let start = Instant::now();
        assert!(!job.wait_empty(Duration::from_millis(100)).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn wait_empty_wakes_up_on_a_change() {
        let (dir, job) = fake_job("");
        let events = dir.path().join("cgroup.events");
        fake::set(&events, "populated 1\nfrozen 0\n");
        let writer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            // Overwritten in place with one write of the same length, as the
            // kernel's file changes: fake::set would truncate first, and the
            // waiter could wake up to an empty file no kernel ever shows.
            let mut file = fs::OpenOptions::new().write(true).open(&events).unwrap();
            io::Write::write_all(&mut file, b"populated 0\nfrozen 0\n").unwrap();
        });
        let start = Instant::now();
        assert!(job.wait_empty(Duration::from_secs(10)).unwrap());
        assert!(start.elapsed() < Duration::from_secs(5));
        writer.join().unwrap();
        // A timeout too long for an Instant waits forever, and still returns.
        assert!(job.wait_empty(Duration::MAX).unwrap());
    }

    #[test]
    fn kill_writes_cgroup_kill() {
        let (dir, job) = fake_job("");
        job.kill().unwrap();
        assert_eq!(fake::content(dir.path().join("cgroup.kill")), "1");
    }

    #[test]
    fn destroy_leaves_a_cgroup_that_does_not_empty() {
        let (dir, job) = fake_job("");
        fake::set(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n");
        assert!(!job.destroy(Duration::from_millis(50)).unwrap());
        assert_eq!(fake::content(dir.path().join("cgroup.kill")), "1");
        assert!(dir.path().is_dir());
    }

    #[test]
    fn destroy_removes_an_empty_cgroup_or_says_why_not() {
        // Empty: killed, then removed. The fake's files make the rmdir fail,
        // which the error names (on cgroupfs it succeeds).
        let (dir, job) = fake_job("");
        let err = job.destroy(Duration::from_secs(1)).unwrap_err().to_string();
        assert!(err.starts_with("removing "), "{err}");
        assert_eq!(fake::content(dir.path().join("cgroup.kill")), "1");
        // Gone already: nothing to kill, and no cgroup.events to wait on.
        let gone = JobCgroup::new(dir.path().join("gone"), Controllers::default());
        let err = gone
            .destroy(Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("reading ") && err.contains("gone"), "{err}");
    }

    #[test]
    fn remove_tolerates_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobCgroup::new(dir.path().join("gone"), Controllers::default());
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
        let job = JobCgroup::new(dir.path().to_path_buf(), Controllers::default());
        let fd = job.open_fd().unwrap();
        let stat = rustix::fs::fstat(&fd).unwrap();
        assert_eq!(
            rustix::fs::FileType::from_raw_mode(stat.st_mode),
            rustix::fs::FileType::Directory
        );
        let flags = rustix::io::fcntl_getfd(&fd).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        let missing = JobCgroup::new(dir.path().join("missing"), Controllers::default());
        let err = missing.open_fd().unwrap_err().to_string();
        assert!(
            err.starts_with("opening ") && err.contains("missing"),
            "{err}"
        );
    }
}
