//! What the kernel reports, read directly: cgroup v2 interface files, the
//! `0::` line of `/proc/<pid>/cgroup`, the ids and seccomp mode of
//! `/proc/<pid>/status`, and the kernel log (`/dev/kmsg`).
//!
//! Nothing here trusts the supervisor: these are the figures the scenarios
//! hold the supervisor's claims against.

use std::fs;
use std::io::{self, Read};
use std::ops::RangeInclusive;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// One cgroup directory on the cgroup2 mount.
#[derive(Clone, Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// The cgroup at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the directory still exists.
    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// The content of interface file `file`, or `None` if the file (or the
    /// whole cgroup, which the supervisor removes when a job ends) is gone.
    pub fn read(&self, file: &str) -> Result<Option<String>> {
        let path = self.path.join(file);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            // ENODEV: the cgroup was removed between open and read.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// A single-number file (`memory.peak`, `pids.current`, ...); `None` if
    /// it is gone. `max` is [`u64::MAX`].
    pub fn number(&self, file: &str) -> Result<Option<u64>> {
        let Some(text) = self.read(file)? else {
            return Ok(None);
        };
        parse_number(text.trim())
            .map(Some)
            .with_context(|| format!("{}/{file}: {:?}", self.path.display(), text.trim()))
    }

    /// The value of `key` in a flat-keyed file (`memory.events`,
    /// `pids.events`, `cpu.stat`); `None` if the file is gone or has no such
    /// key.
    pub fn keyed(&self, file: &str, key: &str) -> Result<Option<u64>> {
        let Some(text) = self.read(file)? else {
            return Ok(None);
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some(key) {
                let value = words.next().unwrap_or_default();
                return parse_number(value)
                    .map(Some)
                    .with_context(|| format!("{}/{file}: {key} {value:?}", self.path.display()));
            }
        }
        Ok(None)
    }

    /// The `wbytes` of `device` (`MAJ:MIN`) in `io.stat`: 0 when the device
    /// has no line yet, `None` if the file is gone.
    pub fn io_written(&self, device: &str) -> Result<Option<u64>> {
        let Some(text) = self.read("io.stat")? else {
            return Ok(None);
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some(device) {
                continue;
            }
            for word in words {
                if let Some(value) = word.strip_prefix("wbytes=") {
                    return parse_number(value)
                        .map(Some)
                        .with_context(|| format!("{}/io.stat: {line:?}", self.path.display()));
                }
            }
        }
        Ok(Some(0))
    }

    /// The pids in `cgroup.procs` (the processes in this cgroup itself, in
    /// the reader's pid namespace); `None` if the cgroup is gone.
    pub fn procs(&self) -> Result<Option<Vec<u32>>> {
        let Some(text) = self.read("cgroup.procs")? else {
            return Ok(None);
        };
        text.lines()
            .map(|line| {
                line.trim()
                    .parse()
                    .with_context(|| format!("{}/cgroup.procs: {line:?}", self.path.display()))
            })
            .collect::<Result<Vec<u32>>>()
            .map(Some)
    }

    /// The names of its child cgroups.
    pub fn children(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let entries =
            fs::read_dir(&self.path).with_context(|| format!("listing {}", self.path.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", self.path.display()))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// A decimal number, or `max`.
fn parse_number(text: &str) -> Result<u64> {
    if text == "max" {
        return Ok(u64::MAX);
    }
    text.parse()
        .with_context(|| format!("{text:?} is not a number"))
}

/// A process, its real uid and the cgroup the kernel says it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// Its pid.
    pub pid: u32,
    /// Its real uid (the first id of the `Uid:` line of `/proc/<pid>/status`);
    /// `None` if the process ended before it was read.
    pub uid: Option<u32>,
    /// Its command name (`/proc/<pid>/comm`).
    pub comm: String,
    /// The path of its `0::` line in `/proc/<pid>/cgroup`.
    pub cgroup: String,
}

/// Every process of `/proc` with what `keep` accepts of its uid and cgroup
/// (`None` for either when it could not be read: the process may end while
/// we look).
fn processes(keep: impl Fn(Option<u32>, Option<&str>) -> bool) -> Result<Vec<Placed>> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").context("listing /proc")? {
        let entry = entry.context("listing /proc")?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let uid = fs::read_to_string(entry.path().join("status"))
            .ok()
            .and_then(|status| status_ids(&status, "Uid:"))
            .map(|ids| ids[0]);
        let cgroup_file = fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        let cgroup = cgroup_file
            .lines()
            .find_map(|line| line.strip_prefix("0::"));
        if keep(uid, cgroup) {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push(Placed {
                pid,
                uid,
                comm: comm.trim().to_owned(),
                cgroup: cgroup.unwrap_or_default().to_owned(),
            });
        }
    }
    Ok(found)
}

/// Every process whose cgroup (the `0::` line of `/proc/<pid>/cgroup`) is
/// `prefix` or below it.
pub fn processes_under(prefix: &str) -> Result<Vec<Placed>> {
    processes(|_, cgroup| {
        cgroup
            .and_then(|cgroup| cgroup.strip_prefix(prefix))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Every process whose real uid is in `uids` (from `/proc/<pid>/status`).
pub fn processes_of_uids(uids: RangeInclusive<u32>) -> Result<Vec<Placed>> {
    processes(|uid, _| uid.is_some_and(|uid| uids.contains(&uid)))
}

/// Every process whose real uid is `uid`.
pub fn processes_of_uid(uid: u32) -> Result<Vec<Placed>> {
    processes_of_uids(uid..=uid)
}

/// The four ids (real, effective, saved, file system) of the `Uid:` or
/// `Gid:` line of a `/proc/<pid>/status` text.
pub fn status_ids(status: &str, key: &str) -> Option<[u32; 4]> {
    let line = status.lines().find_map(|line| line.strip_prefix(key))?;
    let ids: Vec<u32> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    ids.try_into().ok()
}

/// The value of `key` (e.g. `Seccomp`) in a `/proc/<pid>/status` text,
/// without the tab that follows the colon.
pub fn status_value<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        line.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// The text of `/proc/<pid>/status`; `None` once the process is gone.
pub fn status_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// The messages of every record in the kernel log buffer, oldest first
/// (`/dev/kmsg` read without blocking until its end).
pub fn kernel_log() -> Result<Vec<String>> {
    let mut kmsg = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .context("opening /dev/kmsg")?;
    let mut messages = Vec::new();
    // One read returns one record; records are at most about 8 KiB.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                // "<prio>,<seq>,<usec>,<flags>;<message>\n continuation..."
                if let Some((_, message)) = record.split_once(';') {
                    messages.push(message.lines().next().unwrap_or_default().to_owned());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // EPIPE: records were overwritten while we read; go on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("reading /dev/kmsg: {e}"),
        }
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroup directory with the given files.
    fn fake(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            fs::write(dir.path().join(name), content).unwrap();
        }
        dir
    }

    #[test]
    fn numbers_and_max() {
        let dir = fake(&[("memory.peak", "67117056\n"), ("memory.max", "max\n")]);
        let cgroup = Cgroup::new(dir.path());
        assert_eq!(cgroup.number("memory.peak").unwrap(), Some(67_117_056));
        assert_eq!(cgroup.number("memory.max").unwrap(), Some(u64::MAX));
        assert_eq!(cgroup.number("pids.peak").unwrap(), None);
    }

    #[test]
    fn a_garbled_number_is_an_error_naming_the_file() {
        let dir = fake(&[("pids.current", "lots\n")]);
        let err = Cgroup::new(dir.path()).number("pids.current").unwrap_err();
        assert!(format!("{err:#}").contains("pids.current"), "{err:#}");
    }

    #[test]
    fn keyed_values() {
        let dir = fake(&[(
            "memory.events",
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        )]);
        let cgroup = Cgroup::new(dir.path());
        assert_eq!(cgroup.keyed("memory.events", "oom_kill").unwrap(), Some(1));
        assert_eq!(cgroup.keyed("memory.events", "max").unwrap(), Some(12));
        assert_eq!(cgroup.keyed("memory.events", "nope").unwrap(), None);
        assert_eq!(cgroup.keyed("pids.events", "max").unwrap(), None);
    }

    #[test]
    fn io_stat_wbytes_of_one_device() {
        let dir = fake(&[(
            "io.stat",
            "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n\
             254:0 rbytes=4096 wbytes=10485760 rios=1 wios=160 dbytes=0 dios=0\n",
        )]);
        let cgroup = Cgroup::new(dir.path());
        assert_eq!(cgroup.io_written("254:0").unwrap(), Some(10_485_760));
        assert_eq!(cgroup.io_written("8:0").unwrap(), Some(2));
        assert_eq!(cgroup.io_written("254:16").unwrap(), Some(0));
        let gone = Cgroup::new(dir.path().join("removed"));
        assert_eq!(gone.io_written("254:0").unwrap(), None);
        assert!(!gone.exists());
    }

    #[test]
    fn children_are_the_subdirectories() {
        let dir = fake(&[("cgroup.procs", "")]);
        fs::create_dir(dir.path().join("b")).unwrap();
        fs::create_dir(dir.path().join("a")).unwrap();
        assert_eq!(Cgroup::new(dir.path()).children().unwrap(), ["a", "b"]);
    }

    #[test]
    fn our_own_process_is_found_by_cgroup_and_uid() {
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let Some(cgroup) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
            return; // no cgroup2 line on this host: nothing to look for
        };
        let pid = std::process::id();
        assert!(
            processes_under(cgroup)
                .unwrap()
                .iter()
                .any(|p| p.pid == pid)
        );
        let uid = fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next().map(str::to_owned))
            .unwrap();
        let uid: u32 = uid.parse().unwrap();
        assert!(processes_of_uid(uid).unwrap().iter().any(|p| p.pid == pid));
        assert!(
            processes_of_uids(uid.saturating_sub(1)..=uid)
                .unwrap()
                .iter()
                .any(|p| p.pid == pid && p.uid == Some(uid))
        );
    }

    #[test]
    fn status_lines() {
        let status = "Name:\tsh\nUid:\t61184\t61184\t61184\t61184\n\
                      Gid:\t61184\t61184\t61184\t61185\nSeccomp:\t2\n\
                      Seccomp_filters:\t1\n";
        assert_eq!(status_ids(status, "Uid:"), Some([61184; 4]));
        assert_eq!(
            status_ids(status, "Gid:"),
            Some([61184, 61184, 61184, 61185])
        );
        assert_eq!(status_ids("Uid:\t1\t2\n", "Uid:"), None);
        assert_eq!(status_value(status, "Seccomp"), Some("2"));
        assert_eq!(status_value(status, "Seccomp_filters"), Some("1"));
        assert_eq!(status_value(status, "NoNewPrivs"), None);
    }

    #[test]
    fn procs_lists_pids() {
        let dir = fake(&[("cgroup.procs", "12\n345\n")]);
        assert_eq!(
            Cgroup::new(dir.path()).procs().unwrap(),
            Some(vec![12, 345])
        );
        assert_eq!(Cgroup::new(dir.path().join("gone")).procs().unwrap(), None);
    }
}
