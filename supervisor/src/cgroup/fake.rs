//! A fake cgroup2 file system for the unit tests: plain directories holding
//! the files the kernel makes in a (non-root) cgroup, with the kernel's
//! initial contents, and nothing else. Production code never creates a file,
//! so a file name the kernel does not have fails the test that writes it.
//!
//! The files are those of Linux 6.x: the core `cgroup.*` files, `cpu.stat`
//! and the pressure files in every cgroup, and the files of each of our
//! controllers the cgroup offers (in its `cgroup.controllers`, i.e. enabled
//! in its parent's `cgroup.subtree_control`). Files the kernel makes only in
//! some configurations (`memory.swap.*` needs swap accounting) are made; a
//! test removes one to stand for a kernel without it.

use std::fs;
use std::io;
use std::path::Path;

use super::Controllers;

/// Every controller we use, all available.
pub const ALL: Controllers = Controllers {
    cpu: true,
    memory: true,
    io: true,
    pids: true,
};

/// A pressure file's contents with no stall.
const NO_PRESSURE: &str = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n\
                           full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";

/// The files of every cgroup, but `cgroup.controllers`, with their contents.
const CORE: &[(&str, &str)] = &[
    ("cgroup.events", "populated 0\nfrozen 0\n"),
    ("cgroup.freeze", "0\n"),
    // Write-only in the kernel; here it keeps what was written.
    ("cgroup.kill", ""),
    ("cgroup.max.depth", "max\n"),
    ("cgroup.max.descendants", "max\n"),
    ("cgroup.pressure", "1\n"),
    ("cgroup.procs", ""),
    ("cgroup.stat", "nr_descendants 0\nnr_dying_descendants 0\n"),
    ("cgroup.subtree_control", "\n"),
    ("cgroup.threads", ""),
    ("cgroup.type", "domain\n"),
    (
        "cpu.stat",
        "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnice_usec 0\n",
    ),
    ("cpu.pressure", NO_PRESSURE),
    ("io.pressure", NO_PRESSURE),
    ("memory.pressure", NO_PRESSURE),
];

/// The files each of our controllers adds to a cgroup that offers it.
const CONTROLLER_FILES: &[(&str, &[(&str, &str)])] = &[
    (
        "cpu",
        &[
            ("cpu.idle", "0\n"),
            ("cpu.max", "max 100000\n"),
            ("cpu.max.burst", "0\n"),
            ("cpu.weight", "100\n"),
            ("cpu.weight.nice", "0\n"),
        ],
    ),
    (
        "memory",
        &[
            ("memory.current", "0\n"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
            ),
            (
                "memory.events.local",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
            ),
            ("memory.high", "max\n"),
            ("memory.low", "0\n"),
            ("memory.max", "max\n"),
            ("memory.min", "0\n"),
            ("memory.oom.group", "0\n"),
            ("memory.peak", "0\n"),
            ("memory.reclaim", ""),
            ("memory.stat", "anon 0\nfile 0\nkernel 0\n"),
            ("memory.swap.current", "0\n"),
            ("memory.swap.events", "high 0\nmax 0\nfail 0\n"),
            ("memory.swap.high", "max\n"),
            ("memory.swap.max", "max\n"),
            ("memory.swap.peak", "0\n"),
        ],
    ),
    (
        "io",
        &[
            ("io.max", ""),
            ("io.stat", ""),
            ("io.weight", "default 100\n"),
        ],
    ),
    (
        "pids",
        &[
            ("pids.current", "0\n"),
            ("pids.events", "max 0\n"),
            ("pids.events.local", "max 0\n"),
            ("pids.max", "max\n"),
            ("pids.peak", "0\n"),
        ],
    ),
];

/// Fills the existing, empty directory `dir` with the files of a cgroup that
/// offers `controllers` (names separated by spaces, as in
/// `cgroup.controllers`; ones other than ours add no files).
pub(super) fn populate(dir: &Path, controllers: &str) {
    let names: Vec<&str> = controllers.split_ascii_whitespace().collect();
    let offered = CONTROLLER_FILES
        .iter()
        .filter(|(controller, _)| names.contains(controller))
        .flat_map(|(_, files)| files.iter().copied());
    let listed = format!("{}\n", names.join(" "));
    let files = CORE
        .iter()
        .copied()
        .chain([("cgroup.controllers", listed.as_str())])
        .chain(offered);
    for (name, text) in files {
        let path = dir.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("making {}: {e}", path.display()));
    }
}

/// A new temporary directory laid out as a cgroup that offers `controllers`.
pub(super) fn cgroup(controllers: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    populate(dir.path(), controllers);
    dir
}

/// What `mkdir` does on cgroupfs: makes the directory (failing as
/// `fs::create_dir` does, e.g. if it exists) and fills it with a cgroup's
/// files, offering what the parent's `cgroup.subtree_control` enables.
pub(super) fn mkdir(path: &Path) -> io::Result<()> {
    fs::create_dir(path)?;
    let parent = path.parent().unwrap_or(path);
    let enabled = fs::read_to_string(parent.join("cgroup.subtree_control"))?;
    let controllers: Vec<&str> = enabled
        .split_ascii_whitespace()
        .map(|word| word.trim_start_matches('+'))
        .collect();
    populate(path, &controllers.join(" "));
    Ok(())
}

/// Sets what a kernel file of the fake holds; the file must exist. Not for
/// a file being waited on: it is truncated first, which the kernel never
/// shows.
pub(super) fn set(path: impl AsRef<Path>, text: &str) {
    let path = path.as_ref();
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: not a file the kernel has: {e}", path.display()));
    io::Write::write_all(&mut file, text.as_bytes()).expect("writing a fake kernel file");
}

/// What a file holds.
pub(super) fn content(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
