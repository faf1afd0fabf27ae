//! Finding the cgroup2 mount (in `/proc/self/mountinfo`) and the subtree
//! root: a configured directory on that mount, or our own cgroup (the `0::`
//! line of `/proc/self/cgroup`).

use std::fs;
use std::path::{Component, Path, PathBuf};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

use super::{CgroupError, JOBS_DIR, SUPERVISOR_LEAF, io_error, parse, read};

/// Where the cgroup2 file system is mounted: the first cgroup2 mount in
/// `/proc/self/mountinfo` (`/sys/fs/cgroup` on a pure cgroup v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    find_cgroup2_mount().map(|mount| mount.point)
}

/// The subtree root: `configured` if given (see [`configured_path`];
/// created if missing), else our own cgroup, or its parent if our own is
/// the `supervisor` leaf of an existing subtree (the supervisor was started
/// in it again, e.g. by systemd's `DelegateSubgroup=supervisor`).
pub(super) fn subtree_root(configured: Option<&Path>) -> Result<PathBuf, CgroupError> {
    let mount = find_cgroup2_mount()?;
    match configured {
        Some(path) => configured_root(&configured_path(path, &mount.point)?, &mount.point),
        None => own_cgroup_root(&mount),
    }
}

/// A configured subtree root as a directory: an absolute path as it is (it
/// must lie under the cgroup2 mount), a relative one under the mount (so
/// that `system.slice/jobworker-jobs.service` names that unit's cgroup on a
/// pure cgroup v2 host and on a hybrid one alike). Neither may hold `.` or
/// `..`.
pub(super) fn configured_path(path: &Path, mount: &Path) -> Result<PathBuf, CgroupError> {
    let resolved = if path.is_relative() {
        mount.join(path)
    } else {
        path.to_path_buf()
    };
    if plain_path_under(&resolved, mount) {
        Ok(resolved)
    } else {
        Err(CgroupError::NotOnCgroup2 {
            path: path.to_path_buf(),
            mount: mount.to_path_buf(),
        })
    }
}

/// The first cgroup2 mount in `/proc/self/mountinfo`.
fn find_cgroup2_mount() -> Result<parse::Mount, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    // Lossy: a non-UTF-8 mount point elsewhere must not hide the cgroup2 line.
    let mountinfo = fs::read(path).map_err(io_error("reading", path))?;
    parse::cgroup2_mount(&String::from_utf8_lossy(&mountinfo)).ok_or(CgroupError::NoCgroup2Mount)
}

/// Creates a configured subtree root (from [`configured_path`]) if missing
/// and checks that it is on a cgroup2 file system.
fn configured_root(path: &Path, mount: &Path) -> Result<PathBuf, CgroupError> {
    let not_on_cgroup2 = || CgroupError::NotOnCgroup2 {
        path: path.to_path_buf(),
        mount: mount.to_path_buf(),
    };
    fs::create_dir_all(path).map_err(io_error("creating", path))?;
    let fs_stat = statfs(path).map_err(|e| io_error("inspecting", path)(e.into()))?;
    if fs_stat.filesystem_type() != CGROUP2_SUPER_MAGIC {
        return Err(not_on_cgroup2());
    }
    Ok(path.to_path_buf())
}

/// Whether `path` is absolute, has no `.` or `..`, and lies under `mount`.
fn plain_path_under(path: &Path, mount: &Path) -> bool {
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    path.is_absolute() && plain && path.starts_with(mount)
}

/// Our own cgroup's directory on the cgroup2 mount, or its parent if it is
/// the supervisor leaf of a subtree already set up.
fn own_cgroup_root(mount: &parse::Mount) -> Result<PathBuf, CgroupError> {
    let proc_cgroup_path = Path::new("/proc/self/cgroup");
    let proc_cgroup = read(proc_cgroup_path)?;
    let cgroup = parse::unified_cgroup(&proc_cgroup).ok_or(CgroupError::NoUnifiedCgroup)?;
    let relative =
        Path::new(cgroup)
            .strip_prefix(&mount.root)
            .map_err(|_| CgroupError::CgroupNotVisible {
                cgroup: cgroup.to_owned(),
                mount: mount.point.clone(),
                mount_root: mount.root.clone(),
            })?;
    if relative.as_os_str().is_empty() {
        return Err(CgroupError::RootCgroup {
            mount: mount.point.clone(),
        });
    }
    let own = mount.point.join(relative);
    match own.parent() {
        Some(parent)
            if own.file_name() == Some(SUPERVISOR_LEAF.as_ref())
                && parent.join(JOBS_DIR).is_dir() =>
        {
            Ok(parent.to_path_buf())
        }
        _ => Ok(own),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_roots_must_be_plain_paths_under_the_mount() {
        let mount = Path::new("/sys/fs/cgroup/unified");
        for bad in [
            "../memory/x",
            "system.slice/../../x",
            "/sys/fs/cgroup/memory/x",
            "/sys/fs/cgroup/unified/../memory",
            "/tmp",
        ] {
            let err = configured_path(Path::new(bad), mount).unwrap_err();
            assert!(
                matches!(err, CgroupError::NotOnCgroup2 { .. }),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(
            configured_path(Path::new("system.slice/jobworker-jobs.service"), mount).unwrap(),
            mount.join("system.slice/jobworker-jobs.service")
        );
        assert_eq!(
            configured_path(Path::new("/sys/fs/cgroup/unified/x"), mount).unwrap(),
            mount.join("x")
        );
        // Under the mount point lexically but on another file system.
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("x");
        let err = configured_root(&inside, dir.path()).unwrap_err();
        assert!(matches!(err, CgroupError::NotOnCgroup2 { .. }), "{err:?}");
    }
}
