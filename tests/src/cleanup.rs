//! Removing a test's (or a benchmark's) cgroup subtree: every process in it
//! killed through `cgroup.kill`, every directory removed, leaves first. Used
//! by [`crate::fixture`] (every real supervisor, and the bench's cgroups) and
//! by the supervisor's in-process engine fixture.

use std::path::Path;
use std::time::Duration;

/// Kills and removes the cgroup subtree at `root`, leaves first; a missing
/// `root` is fine. Gives up (and says so) after about 3 s per directory.
pub fn remove_cgroup_tree(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().is_dir() {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = std::fs::write(root.join("cgroup.kill"), "1");
    for _ in 0..300 {
        if std::fs::remove_dir(root).is_ok() || !root.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("could not remove test cgroup {}", root.display());
}
