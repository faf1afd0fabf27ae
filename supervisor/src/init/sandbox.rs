//! The job's sandbox, built by its init inside the job's fresh namespaces
//! before anything of the job runs: one linear script, [`build`], whose
//! numbered steps a reader follows top to bottom. Each failure is a start
//! error that names its step; there is no half-sandboxed job, because the
//! init starts the command only once every step has succeeded.
//!
//! The job's mount namespace starts as a copy of the host's (clone3
//! `CLONE_NEWNS`). The sandbox changes that copy in place, never the
//! host's: its mounts are made private, the masked paths covered, then the
//! whole tree made read-only, nosuid and nodev by one recursive
//! `mount_setattr`, and the host's `/proc`, `/sys`, `/dev` and `/tmp`
//! covered by the job's own. No new root is built: binding the host's
//! top-level directories one by one into one, and pivoting into it, cost
//! ~150 µs of every start (BENCHMARKS.md). The price is that a mount point
//! the job needs must exist on the host (the engine makes [`WORK_MOUNT`]
//! at start; the configuration checks each bind's target) unless it lies
//! in one of the sandbox's own tmpfs mounts, where it is made here.
//!
//! What the job sees afterwards (README.md, "What a job can and cannot do"):
//!
//! - the host's tree, all of it read-only, nosuid and nodev;
//! - the masked paths (`/run`, `/var/run`, `/home`, `/root`, `/boot` by
//!   default) empty and read-only, so no host socket, home, runtime file or
//!   kernel image is reachable (a masked file cannot be opened);
//! - a fresh `/proc` of its pid namespace and a read-only `/sys` of its
//!   network namespace;
//! - a `/dev` of its own: null, zero, full, random, urandom, tty, a private
//!   devpts with ptmx, and `/dev/shm`;
//! - private tmpfs mounts, owned by the job's uid and sized by `tmp_size`, on
//!   `/tmp`, `/var/tmp`, `/dev/shm` and `/run/lock`;
//! - its work directory at [`WORK_MOUNT`], writable, and the operator's
//!   `bind_paths`;
//! - `lo` up in its own network namespace, and its own hostname.
//!
//! What the sandbox covers stays in the job's mount table, out of its
//! reach: uncovering needs `umount2`, which takes `CAP_SYS_ADMIN` and which
//! the seccomp filter refuses anyway.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};
use rustix::mount::{
    MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, mount, mount_change,
    mount_remount, move_mount, open_tree,
};

use crate::handoff::{InitSpec, PRIVATE_TMP, Sandbox, WORK_MOUNT};
use crate::sys;

/// The character devices of the job's `/dev`: name, major, minor.
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Builds the sandbox of `spec`'s job around the calling init. See the
/// module docs for what the job sees afterwards.
pub fn build(spec: &InitSpec) -> Result<(), String> {
    let sandbox = &spec.sandbox;
    // Modes below are meant as written (the command gets 022 back).
    rustix::process::umask(Mode::empty());

    // 1. Nothing mounted from here on reaches the host, nor anything the host
    //    mounts later the job. The init leaves the directory it started in.
    mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(failed("making the mount tree private"))?;
    rustix::process::chdir("/").map_err(failed("entering /"))?;

    // 2. Detached copies of what the job gets at other paths than the
    //    host's, taken before anything is covered: the work directory and
    //    the operator's bind mounts, with their attributes.
    let (work, binds) = copies(sandbox)?;

    // 3. What the job must not see: an empty tmpfs over each masked
    //    directory, holding the mount points needed inside it later (as
    //    /run/lock in /run); /dev/null over a masked file, which step 4
    //    makes nodev: it cannot be opened.
    for path in &sandbox.masked_paths {
        mask(path, sandbox).map_err(failed(&format!("masking {}", path.display())))?;
    }

    // 4. The host's tree, masks included, read-only, nosuid and nodev in one
    //    call. What is mounted from here on keeps its own attributes.
    let attributes = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    sys::set_mount_attributes(CWD, c"/", libc::AT_RECURSIVE, attributes, 0)
        .map_err(failed("making the host's tree read-only"))?;

    // 5. Over the host's: /proc of the job's pid namespace, /sys of its
    //    network namespace, a /dev of its own with no device of the host's
    //    disks.
    let hidden = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount("proc", "/proc", "proc", hidden, None).map_err(failed("mounting /proc"))?;
    mount("sysfs", "/sys", "sysfs", hidden | MountFlags::RDONLY, None)
        .map_err(failed("mounting /sys"))?;
    devices().map_err(failed("making /dev"))?;

    // 6. Private temporary directories over the host's.
    private_tmps(spec)?;

    // 7. The work directory and the operator's bind mounts.
    attach(work, Path::new(WORK_MOUNT), true).map_err(failed(&format!(
        "mounting the work directory at {WORK_MOUNT}"
    )))?;
    for (target, tree, is_dir) in binds {
        attach(tree, &target, is_dir)
            .map_err(failed(&format!("binding at {}", target.display())))?;
    }

    // 8. Its network (lo only) and its hostname.
    sys::loopback_up().map_err(failed("bringing lo up"))?;
    rustix::system::sethostname(spec.hostname.as_bytes()).map_err(failed("setting the hostname"))
}

/// Step 6: a tmpfs of the job's on each of [`PRIVATE_TMP`], owned by its
/// uid, `tmp_size` large.
fn private_tmps(spec: &InitSpec) -> Result<(), String> {
    let options = format!(
        "size={},mode=1777,uid={},gid={}",
        spec.sandbox.tmp_size, spec.uid, spec.gid
    );
    for path in PRIVATE_TMP {
        private_tmp(Path::new(path), &options)
            .map_err(failed(&format!("mounting a private {path}")))?;
    }
    Ok(())
}

/// A detached bind mount: where it goes, the tree, whether a directory.
type Detached = (PathBuf, OwnedFd, bool);

/// Step 2: the work directory and the operator's bind mounts, detached.
fn copies(sandbox: &Sandbox) -> Result<(OwnedFd, Vec<Detached>), String> {
    let work = copy_tree(&sandbox.work_dir, true, false).map_err(failed(&format!(
        "preparing the work directory {}",
        sandbox.work_dir.display()
    )))?;
    let binds = sandbox
        .bind_paths
        .iter()
        .map(|bind| {
            copy_tree(&bind.source, bind.writable, true)
                .map(|tree| (bind.target().to_path_buf(), tree, bind.source.is_dir()))
                .map_err(failed(&format!("binding {}", bind.source.display())))
        })
        .collect::<Result<_, _>>()?;
    Ok((work, binds))
}

/// A step's error as a start error that names the step.
fn failed<E: std::fmt::Display>(step: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("{step}: {e}")
}

/// A detached copy of the mount tree at `path` (with every mount below it
/// when `recursive`), nosuid and nodev, read-only unless `writable`.
fn copy_tree(path: &Path, writable: bool, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    let mut at = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
        at |= libc::AT_RECURSIVE;
    }
    let tree = open_tree(CWD, path, flags)?;
    let mut set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    let mut clear = 0;
    if writable {
        clear |= libc::MOUNT_ATTR_RDONLY;
    } else {
        set |= libc::MOUNT_ATTR_RDONLY;
    }
    sys::set_mount_attributes(tree.as_fd(), c"", at, set, clear)?;
    Ok(tree)
}

/// Mounts a detached tree at `target`, creating a missing mount point (a
/// directory, or an empty file for a file) where it can be: only in a
/// tmpfs of the sandbox's, since the host's tree is read-only by now.
fn attach(tree: OwnedFd, target: &Path, is_dir: bool) -> io::Result<()> {
    if fs::symlink_metadata(target).is_err() {
        make_mount_point(target, is_dir)?;
    }
    move_mount(
        tree.as_fd(),
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// Makes `path` (with its missing parents) to mount on: a directory, or
/// an empty file.
fn make_mount_point(path: &Path, is_dir: bool) -> io::Result<()> {
    let mut dirs = fs::DirBuilder::new();
    dirs.recursive(true).mode(0o755);
    if is_dir {
        dirs.create(path)
    } else {
        if let Some(parent) = path.parent() {
            dirs.create(parent)?;
        }
        File::create(path).map(drop)
    }
}

fn make_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o755).create(path)
}

/// A tmpfs over the host's `/dev` with the job's devices, a private
/// devpts, and the mount point of `/dev/shm`; then read-only.
fn devices() -> io::Result<()> {
    mount(
        "tmpfs",
        "/dev",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        c"mode=0755,size=64k",
    )?;
    for &(name, major, minor) in DEVICES {
        mknodat(
            CWD,
            Path::new("/dev").join(name),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            makedev(major, minor),
        )?;
    }
    make_dir(Path::new("/dev/pts"))?;
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        c"newinstance,ptmxmode=0666,mode=0620",
    )?;
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, link)?;
    }
    make_dir(Path::new("/dev/shm"))?;
    // Read-only (even to a root job), its mount points made.
    mount_remount(
        "/dev",
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NOEXEC,
        "",
    )
    .map_err(Into::into)
}

/// A tmpfs of the job's on `path`. A path the host does not have, and that
/// cannot be made (its parent is the host's, read-only, or missing too, as
/// `/var` in an initramfs), is left out: there is nothing to share.
fn private_tmp(path: &Path, options: &str) -> io::Result<()> {
    if fs::symlink_metadata(path).is_err() {
        match make_dir(path) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS | libc::ENOENT)) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    let options = CString::new(options).map_err(io::Error::other)?;
    mount(
        "tmpfs",
        path,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        options.as_c_str(),
    )?;
    Ok(())
}

/// Hides `path`: an empty tmpfs over a directory, with the mount points
/// below it that later steps need made in it (a private temporary
/// directory, a bind's target); `/dev/null` over a file. A symlink is left
/// alone (what it points to is masked on its own, or not), and so is a path
/// that does not exist.
fn mask(path: &Path, sandbox: &Sandbox) -> io::Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if !meta.is_dir() {
        return mount("/dev/null", path, "", MountFlags::BIND, None).map_err(Into::into);
    }
    mount(
        "tmpfs",
        path,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        c"mode=0755,size=4k",
    )?;
    let private_tmp = PRIVATE_TMP.iter().map(|tmp| (Path::new(tmp), true));
    let targets = sandbox
        .bind_paths
        .iter()
        .map(|bind| (bind.target(), bind.source.is_dir()));
    for (point, is_dir) in private_tmp.chain(targets) {
        if point.starts_with(path) && point != path {
            make_mount_point(point, is_dir)?;
        }
    }
    Ok(())
}
