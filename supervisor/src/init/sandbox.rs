//! The job's sandbox, built by its init inside the job's fresh namespaces
//! before anything of the job runs: one linear script in two parts whose
//! numbered steps a reader follows top to bottom, [`enter_root`] (the new
//! root, the host's tree out of reach) and [`finish`] (what the job gets
//! inside it); the init forks the command between the two, so that the
//! command prepares itself meanwhile, and lets it exec only after
//! [`finish`] (see `init::start`). Each failure is a start error that
//! names its step; there is no half-sandboxed job, because the command
//! never execs unless every step has succeeded.
//!
//! What the job sees afterwards (README.md, "What a job can and cannot do"):
//!
//! - a root of its own: a tmpfs holding bind mounts of the host's top-level
//!   directories (every mount below them included), the host's symlinks, and
//!   nothing of `/proc`, `/sys`, `/dev` and `/tmp` of the host; all of it
//!   read-only, nosuid and nodev (one recursive `mount_setattr`);
//! - a fresh `/proc` of its pid namespace and a read-only `/sys` of its
//!   network namespace;
//! - a `/dev` of its own: null, zero, full, random, urandom, tty, a private
//!   devpts with ptmx, and `/dev/shm`;
//! - private tmpfs mounts, owned by the job's uid and sized by `tmp_size`, on
//!   `/tmp`, `/var/tmp`, `/dev/shm` and `/run/lock`;
//! - the masked paths (`/run`, `/var/run`, `/home`, `/root`, `/boot` by
//!   default) empty and read-only, so no host socket, home, runtime file or
//!   kernel image is reachable;
//! - its work directory at [`WORK_MOUNT`], writable, and the operator's
//!   `bind_paths`;
//! - `lo` up in its own network namespace, and its own hostname.
//!
//! The host's tree leaves the job's view with `pivot_root` (or, where the
//! host's root is the initramfs that cannot be pivoted away from, a move of
//! the new root onto `/` and a chroot). After a pivot, the old root waits
//! in [`PARKED`], a directory only root may enter, until the init detaches
//! it ([`HostRoot::detach`]) once the command runs: detaching waits for an
//! RCU grace period (~0.1 ms here) that need not delay the start.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};
use rustix::mount::{
    MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags, mount,
    mount_bind_recursive, mount_change, mount_move, mount_remount, move_mount, open_tree, unmount,
};

use crate::handoff::{InitSpec, Sandbox, WORK_MOUNT};
use crate::sys;

/// The host's top-level directories the job gets fresh ones of instead.
const REPLACED: &[&str] = &["proc", "sys", "dev", "tmp"];

/// The character devices of the job's `/dev`: name, major, minor.
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Where the host's old root waits, after a pivot, to be detached: below a
/// directory of mode 0700 owned by root, which no process of the job (no
/// capabilities) can enter. The empty directory stays.
pub const PARKED: &str = ".jobworker";

/// Where the new root is built: a mount point outside every directory the
/// root binds in (the job gets a `/proc` of its own, never the host's), so
/// that no recursive bind copies the half-built root into itself, as a bind
/// of `/var` would if it were built in the job's directory under
/// `/var/lib/jobworker`.
const STAGING: &str = "/proc";

/// The job's private temporary directories besides `/dev/shm`.
const PRIVATE_TMP: &[&str] = &["/tmp", "/var/tmp", "/run/lock"];

/// The host's old root, parked after the pivot until [`HostRoot::detach`].
#[must_use = "the host's root stays mounted (unreachable) until detached"]
pub struct HostRoot {
    parked: bool,
}

impl HostRoot {
    /// Detaches the host's old root from the job's mount namespace. Failing
    /// leaves it where no process of the job can reach it; the init says
    /// so and goes on.
    pub fn detach(self) {
        if !self.parked {
            return;
        }
        let old = Path::new("/").join(PARKED).join("host");
        if let Err(e) = unmount(&old, UnmountFlags::DETACH) {
            eprintln!(
                "jobworker-supervisor init: detaching the host's root from {}: {e}",
                old.display()
            );
        }
    }
}

/// The sandbox with its root in place: what [`finish`] mounts next.
#[must_use = "the sandbox is not complete until finished"]
pub struct Rooted {
    /// The host's old root, parked.
    host_root: HostRoot,
    /// The work directory, detached, for [`WORK_MOUNT`].
    work: OwnedFd,
    /// The operator's bind mounts, detached: target, tree, a directory?
    binds: Vec<(PathBuf, OwnedFd, bool)>,
}

/// Steps 1-5 of the sandbox of `spec`'s job: the calling init ends up in
/// its new root, read-only, with the host's tree out of reach, and a
/// `/proc` of the job's own (which forking checks). See the
/// module docs for what the job sees once [`finish`] is done too.
pub fn enter_root(spec: &InitSpec) -> Result<Rooted, String> {
    let sandbox = &spec.sandbox;
    // Modes below are meant as written (the command gets 022 back).
    rustix::process::umask(Mode::empty());

    // 1. Nothing mounted from here on reaches the host, nor anything the host
    //    mounts later the job.
    mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(failed("making the mount tree private"))?;

    // 2. Detached copies of what the job gets from outside the host's
    //    tree, taken while that is still reachable: the work directory and
    //    the operator's bind mounts, with their attributes.
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
        .collect::<Result<Vec<_>, _>>()?;

    // 3. The new root: an empty tmpfs (staged over the host's /proc, in
    //    this mount namespace only) holding bind mounts of the host's
    //    top-level directories (every mount below them included), the host's
    //    symlinks and every mount point needed from here on; then all of it
    //    read-only, nosuid and nodev in one call.
    let root = Path::new(STAGING);
    mount(
        "tmpfs",
        root,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        c"mode=0755,size=1m",
    )
    .map_err(failed("mounting the new root"))?;
    populate_root(root, sandbox).map_err(failed("bringing in the host's directories"))?;
    let root_c = CString::new(root.as_os_str().as_bytes()).map_err(failed("the new root"))?;
    sys::set_mount_attributes(
        CWD,
        &root_c,
        libc::AT_RECURSIVE,
        libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        0,
    )
    .map_err(failed("making the new root read-only"))?;

    // 4. Into it; the host's tree leaves the job's view.
    let host_root = pivot(root).map_err(failed("switching to the new root"))?;

    // 5. /proc of the job's pid namespace, /sys of its network namespace.
    mount(
        "proc",
        "/proc",
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(failed("mounting /proc"))?;
    mount(
        "sysfs",
        "/sys",
        "sysfs",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(failed("mounting /sys"))?;

    Ok(Rooted {
        host_root,
        work,
        binds,
    })
}

/// Steps 6-10: what the job gets inside its root. The command may already be
/// forked and preparing itself; it runs only after this.
pub fn finish(spec: &InitSpec, rooted: Rooted) -> Result<HostRoot, String> {
    let Rooted {
        host_root,
        work,
        binds,
    } = rooted;
    let sandbox = &spec.sandbox;
    let tmp_options = format!(
        "size={},mode=1777,uid={},gid={}",
        sandbox.tmp_size, spec.uid, spec.gid
    );

    // 6. A /dev of its own, with no device of the host's disks.
    devices(&tmp_options).map_err(failed("making /dev"))?;

    // 7. Private temporary directories.
    for path in PRIVATE_TMP {
        private_tmp(Path::new(path), &tmp_options)
            .map_err(failed(&format!("mounting a private {path}")))?;
    }

    // 8. What the job must not see of the host below the top level.
    for path in &sandbox.masked_paths {
        mask(path).map_err(failed(&format!("masking {}", path.display())))?;
    }

    // 9. The work directory and the operator's bind mounts.
    attach(work, Path::new(WORK_MOUNT), true).map_err(failed(&format!(
        "mounting the work directory at {WORK_MOUNT}"
    )))?;
    for (target, tree, is_dir) in binds {
        attach(tree, &target, is_dir)
            .map_err(failed(&format!("binding at {}", target.display())))?;
    }

    // 10. Its network (lo only) and its hostname.
    sys::loopback_up().map_err(failed("bringing lo up"))?;
    rustix::system::sethostname(spec.hostname.as_bytes())
        .map_err(failed("setting the hostname"))?;

    Ok(host_root)
}

/// A step's error as a start error that names the step.
fn failed<E: std::fmt::Display>(step: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("{step}: {e}")
}

/// Fills the new root at `root` (a fresh tmpfs): a bind mount of each of
/// the host's top-level directories and files with everything mounted
/// below it, the host's top-level symlinks, empty directories for what the
/// sandbox replaces or masks, and the mount points used after the pivot.
/// Everything it creates is in the new root's own tmpfs.
fn populate_root(root: &Path, sandbox: &Sandbox) -> io::Result<()> {
    let mut empty: Vec<PathBuf> = REPLACED.iter().map(PathBuf::from).collect();
    empty.extend(top_level(Path::new(WORK_MOUNT)));
    empty.extend(sandbox.masked_paths.iter().filter_map(|p| top_level(p)));
    for entry in fs::read_dir("/")? {
        let entry = entry?;
        let name = PathBuf::from(entry.file_name());
        if empty.contains(&name) {
            continue;
        }
        let kind = entry.file_type()?;
        let target = root.join(&name);
        if kind.is_symlink() {
            symlink(fs::read_link(entry.path())?, target)?;
        } else if kind.is_dir() || kind.is_file() {
            if kind.is_dir() {
                make_dir(&target)?;
            } else {
                File::create(&target)?;
            }
            mount_bind_recursive(entry.path(), &target)?;
        }
    }
    for name in &empty {
        make_dir(&root.join(name))?;
    }
    // The host's old root is parked here by the pivot.
    fs::DirBuilder::new()
        .mode(0o700)
        .create(root.join(PARKED))?;
    make_dir(&root.join(PARKED).join("host"))?;
    // Mount points inside what was just made empty (/run/lock in a masked
    // /run), and top-level bind targets the host does not have.
    for path in PRIVATE_TMP.iter().map(Path::new) {
        let inside = root.join(path.strip_prefix("/").map_err(io::Error::other)?);
        if inside.parent().is_some_and(|dir| dir.is_dir()) && !inside.exists() {
            make_dir(&inside)?;
        }
    }
    for bind in &sandbox.bind_paths {
        let Some(name) = top_level(bind.target()) else {
            continue;
        };
        let inside = root.join(name);
        if fs::symlink_metadata(&inside).is_err() {
            if bind.source.is_dir() {
                make_dir(&inside)?;
            } else {
                File::create(&inside)?;
            }
        }
    }
    Ok(())
}

/// The name of `path` if it is a top-level path (`/run` -> `run`).
fn top_level(path: &Path) -> Option<PathBuf> {
    let name = path.strip_prefix("/").ok()?;
    (name.components().count() == 1).then(|| name.to_path_buf())
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
/// tmpfs of the sandbox's, since everything from the host is read-only by
/// now.
fn attach(tree: OwnedFd, target: &Path, is_dir: bool) -> io::Result<()> {
    if fs::symlink_metadata(target).is_err() {
        if is_dir {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(target)?;
        } else {
            File::create(target)?;
        }
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

fn make_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o755).create(path)
}

/// Makes `root` the root of the calling process (and its working
/// directory), with the old root parked below [`PARKED`].
fn pivot(root: &Path) -> io::Result<HostRoot> {
    rustix::process::chdir(root)?;
    let parked = match rustix::process::pivot_root(".", Path::new(PARKED).join("host")) {
        Ok(()) => true,
        // The host's root is the initramfs, which cannot be pivoted away
        // from: the new root goes over it instead.
        Err(rustix::io::Errno::INVAL) => {
            mount_move(".", "/")?;
            rustix::process::chroot(".")?;
            false
        }
        Err(e) => return Err(e.into()),
    };
    rustix::process::chdir("/")?;
    Ok(HostRoot { parked })
}

fn devices(tmp_options: &str) -> io::Result<()> {
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
    private_tmp(Path::new("/dev/shm"), tmp_options)?;
    mount_remount(
        "/dev",
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NOEXEC,
        "",
    )?;
    Ok(())
}

/// A tmpfs of the job's on `path`. A path the host does not have, and that
/// cannot be made (its parent is a read-only copy of the host's, or missing
/// too, as `/var` in an initramfs), is left out: there is nothing to share.
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

/// Hides `path`: an empty read-only tmpfs over a directory, `/dev/null`
/// over a file. A symlink is left alone (what it points to is masked on its
/// own, or not), and so is a path that does not exist; a top-level path was
/// never bound in (see [`populate_root`]).
fn mask(path: &Path) -> io::Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if top_level(path).is_some() || meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        mount(
            "tmpfs",
            path,
            "tmpfs",
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            c"mode=0755,size=4k",
        )?;
    } else {
        mount("/dev/null", path, "", MountFlags::BIND, None)?;
    }
    Ok(())
}
