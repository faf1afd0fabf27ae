//! The supervisor's listening socket: the one systemd passed (socket
//! activation), or one it binds itself at the configured path with mode 0660
//! and the configured group. Binding happens before the runtime starts, while
//! the process is single-threaded, so the umask can make the socket private
//! from its first moment; it is bound beside the path and renamed to it once
//! its group and mode are set.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use nix::sys::stat::{Mode, umask};
use nix::unistd::{Gid, chown};

/// What the socket is bound as first, beside its path: `<path>.new`.
const NEW_SUFFIX: &str = ".new";

/// The longest socket path the supervisor can bind, in bytes: a Unix
/// socket's address holds 107 (and a NUL), and the socket is bound as
/// `<path>.new` first.
pub const MAX_PATH_BYTES: usize = 107 - NEW_SUFFIX.len();

/// Where the listening socket came from.
#[derive(Debug)]
pub enum Origin {
    /// systemd passed it.
    Activated,
    /// We bound it at this path.
    Bound(std::path::PathBuf),
}

/// The listening socket: `activated` if systemd passed one, else bound at
/// `path`, mode 0660, group `gid`.
pub fn listener(
    activated: Option<OwnedFd>,
    path: &Path,
    gid: Option<u32>,
) -> io::Result<(UnixListener, Origin)> {
    if let Some(fd) = activated {
        return Ok((UnixListener::from(fd), Origin::Activated));
    }
    let context = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| context("creating the directory of", e))?;
    }
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} is in use: another supervisor is serving it",
                path.display()
            ),
        ));
    }
    remove_left_socket(path)?;
    // Bound under a name of its own, given its group and mode, then renamed
    // into place: a client (the gateway) never finds the socket before it
    // may connect to it, as it would between a bind at the path and the
    // chown and chmod after it (EACCES).
    let mut new_name = path.as_os_str().to_owned();
    new_name.push(NEW_SUFFIX);
    let new_path = Path::new(&new_name);
    remove_left_socket(new_path)?;
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(new_path);
    umask(previous);
    let listener = bound.map_err(|e| context("binding beside", e))?;
    let placed = (|| {
        if let Some(gid) = gid {
            chown(new_path, None, Some(Gid::from_raw(gid)))
                .map_err(|e| context("setting the group of the socket for", e.into()))?;
        }
        std::fs::set_permissions(new_path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| context("setting the mode of the socket for", e))?;
        std::fs::rename(new_path, path).map_err(|e| context("moving the socket to", e))
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(new_path);
        return Err(e);
    }
    Ok((listener, Origin::Bound(path.to_path_buf())))
}

/// Removes a socket an earlier supervisor left at `path` (no one serves
/// it), if there is one; refuses to replace anything else there.
fn remove_left_socket(path: &Path) -> io::Result<()> {
    let failed = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| failed("removing the stale socket", e))
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(failed("inspecting", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_in_place_with_its_mode_and_refuses_a_file_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervisor.sock");
        let beside = dir.path().join("supervisor.sock.new");
        // A socket left beside the path (a start that died midway) goes.
        drop(UnixListener::bind(&beside).unwrap());
        let (bound, origin) = listener(None, &path, None).unwrap();
        assert!(matches!(origin, Origin::Bound(ref p) if p == &path));
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660);
        assert!(!beside.exists());
        UnixStream::connect(&path).unwrap();
        drop(bound);
        // Anything else beside it is not replaced.
        std::fs::write(&beside, b"an operator's file").unwrap();
        let err = listener(None, &path, None).unwrap_err().to_string();
        assert!(err.contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read(&beside).unwrap(), b"an operator's file");
    }

    /// The longest path the configuration lets through binds; one byte more
    /// cannot (so the configuration's check is not stricter than it must
    /// be).
    #[test]
    fn the_longest_allowed_path_binds() {
        let dir = tempfile::tempdir().unwrap();
        let room = MAX_PATH_BYTES - dir.path().as_os_str().len() - 1;
        let path = dir.path().join("s".repeat(room));
        assert_eq!(path.as_os_str().len(), MAX_PATH_BYTES);
        let (_bound, _) = listener(None, &path, None).unwrap();
        UnixStream::connect(&path).unwrap();
        let longer = dir.path().join("s".repeat(room + 1));
        let err = listener(None, &longer, None).unwrap_err().to_string();
        assert!(err.contains("binding beside"), "{err}");
    }
}
