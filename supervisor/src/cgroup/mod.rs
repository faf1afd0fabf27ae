//! Jobworker's cgroup v2 subtree: finding it, preparing it, and one cgroup per
//! job.
//!
//! The subtree root is a configured directory on the cgroup2 mount (under
//! systemd, the cgroup of `jobworker-jobs.service`, delegated with
//! `Delegate=yes`) or the supervisor's own cgroup. Cgroup v2's "no internal
//! processes" rule means the root cannot both hold processes and hand
//! controllers to its children, so [`CgroupTree::setup`] lays it out as:
//!
//! ```text
//! <root>/                 controllers enabled in cgroup.subtree_control
//! <root>/supervisor/      what ran in the root: the supervisor itself when
//!                         the root is its own cgroup, the systemd unit's
//!                         holder process (a leaf)
//! <root>/jobs/            controllers enabled in cgroup.subtree_control
//! <root>/jobs/<job id>/   one leaf per job, with its limits
//! ```
//!
//! Only cgroup v2 is used; v1 hierarchies (on hybrid hosts) are never touched.
//! A controller that the host does not offer (a hybrid host's cgroup2 mount
//! typically offers none of ours) is not an error: the limits it would enforce
//! are reported as not enforced.
//!
//! One concern a file:
//!
//! - `discover`: the cgroup2 mount ([`cgroup2_mount`]) and the subtree root,
//!   configured or our own cgroup.
//! - `tree`: [`CgroupTree`], the subtree: its layout, the controllers enabled
//!   for jobs, creating and listing job cgroups.
//! - `limits`: writing a new job cgroup's limits (and [`SKIP_LIMITS_ENV`], the
//!   tests' sabotage switch).
//! - `job`: [`JobCgroup`], one job's cgroup: its descriptor for clone3,
//!   `cgroup.kill`, waiting on `cgroup.events` until it is empty, its
//!   processes, usage and OOM kills, its removal.
//! - `device`: [`block_device_of`], the block device of a path, for `io.max`.
//! - `parse`: pure parsers and formatters of the kernel's files.
//! - `fake` (unit tests only): a fake cgroupfs, directories holding just the
//!   files the kernel makes.
//!
//! This file holds what they share: [`CgroupError`], [`Controllers`] and the
//! file helpers. Those never create a file: on cgroupfs only the kernel makes
//! them, so writing one it does not have is an error naming the path.

mod device;
mod discover;
mod job;
mod limits;
mod parse;
mod tree;

#[cfg(test)]
mod fake;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use device::block_device_of;
pub use discover::cgroup2_mount;
pub use job::JobCgroup;
pub use limits::SKIP_LIMITS_ENV;
pub use tree::CgroupTree;

/// The leaf that holds the supervisor process.
const SUPERVISOR_LEAF: &str = "supervisor";
/// The parent of every job cgroup.
const JOBS_DIR: &str = "jobs";
/// The cgroup of the engine's spare init, until a job takes it.
const SPARE_DIR: &str = "spare";

/// What went wrong with a cgroup operation; every message names the operation
/// and the path.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The supervisor runs in the root cgroup and no root was configured:
    /// it will not make its subtree at the top of the host's hierarchy.
    #[error(
        "the supervisor runs in the root cgroup of {}; set cgroup_root (e.g. {}, \
         or system.slice/jobworker-jobs.service under systemd)",
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

/// Writes `value` to an existing cgroup file in one write. Never creates the
/// file (no `O_CREAT`): a name the kernel does not have is an error, not a
/// new file.
fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(io_error(format!("writing {value} to"), path))
}

/// Whether `path` exists.
fn exists(path: &Path) -> Result<bool, CgroupError> {
    path.try_exists().map_err(io_error("looking for", path))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lists_the_set_controllers_in_order() {
        let all = Controllers {
            cpu: true,
            memory: true,
            io: true,
            pids: true,
        };
        assert_eq!(all.names(), ["cpu", "memory", "io", "pids"]);
        assert!(Controllers::default().names().is_empty());
        let some = Controllers {
            memory: true,
            pids: true,
            ..Controllers::default()
        };
        assert_eq!(some.names(), ["memory", "pids"]);
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

    #[test]
    fn writing_a_file_the_kernel_does_not_have_is_an_error_not_a_new_file() {
        let dir = fake::cgroup("cpu");
        // A misspelled cpu.max.
        let missing = dir.path().join("cpu.maximum");
        let message = write(&missing, "max 100000").unwrap_err().to_string();
        let expected = format!("writing max 100000 to {}: ", missing.display());
        assert!(message.starts_with(&expected), "{message}");
        assert!(!missing.exists(), "the write created {}", missing.display());
        // The file the kernel has is written, replacing what it held.
        write(&dir.path().join("cpu.max"), "50000 100000").unwrap();
        assert_eq!(fake::content(dir.path().join("cpu.max")), "50000 100000");
    }
}
