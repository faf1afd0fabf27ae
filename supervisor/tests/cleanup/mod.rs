//! Removing a test's cgroup subtree: every process in it killed, every
//! directory removed, leaves first.

use std::path::Path;
use std::time::Duration;

/// Kills and removes a test cgroup subtree, leaves first.
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
    for _ in 0..200 {
        if std::fs::remove_dir(root).is_ok() || !root.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("could not remove test cgroup {}", root.display());
}
