//! One supervisor at a time on a state directory: an exclusive `flock` on
//! `<state_dir>/supervisor.lock`, taken before the jobs on disk are read and
//! held for the process's life (the kernel drops it however the process
//! ends). A second supervisor, or `--stop-jobs` while one serves, is refused
//! instead of adopting the same jobs twice.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "supervisor.lock";

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The state directory or the lock file could not be made or opened.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The directory or file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds it.
    #[error(
        "another jobworker-supervisor uses the state directory {} ({} is locked): \
         stop it first (systemctl stop jobworker-supervisor.service)",
        dir.display(),
        path.display()
    )]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// The lock file.
        path: PathBuf,
    },
}

impl StateLock {
    /// Creates the state directory (0700) if missing and takes its lock
    /// without waiting.
    pub fn acquire(state_dir: &Path) -> Result<Self, LockError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { op, path, source }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io("creating", state_dir))?;
        let path = state_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io("opening", &path))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Self { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(LockError::Held {
                dir: state_dir.to_path_buf(),
                path,
            }),
            Err(e) => Err(io("locking", &path)(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let held = StateLock::acquire(&state).unwrap();
        let err = StateLock::acquire(&state).unwrap_err().to_string();
        assert!(err.contains("another jobworker-supervisor"), "{err}");
        assert!(err.contains(LOCK_FILE), "{err}");
        drop(held);
        StateLock::acquire(&state).unwrap();
    }
}
