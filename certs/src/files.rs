//! Writing certificates and private keys atomically, with their file modes.
//!
//! Each file is written to a temporary file in the destination directory,
//! created with its final mode at open time (so a private key is never
//! readable by others, not even briefly), synced, then moved into place.

use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;

/// What to do when an output file already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Fail with [`Error::AlreadyExists`].
    Refuse,
    /// Replace the file.
    Replace,
}

/// The kind of a file written here, which sets its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A PEM certificate, mode 0644.
    Certificate,
    /// A PEM PKCS#8 private key, mode 0600.
    PrivateKey,
}

impl FileKind {
    /// The permission bits of files of this kind.
    pub const fn mode(self) -> u32 {
        match self {
            FileKind::Certificate => 0o644,
            FileKind::PrivateKey => 0o600,
        }
    }

    const fn noun(self) -> &'static str {
        match self {
            FileKind::Certificate => "certificate",
            FileKind::PrivateKey => "private key",
        }
    }

    const fn writing(self) -> &'static str {
        match self {
            FileKind::Certificate => "writing certificate",
            FileKind::PrivateKey => "writing private key",
        }
    }
}

/// A file that was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Where it is.
    pub path: PathBuf,
    /// What it holds.
    pub kind: FileKind,
}

impl fmt::Display for WrittenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} {} (mode {:04o})",
            self.kind.noun(),
            self.path.display(),
            self.kind.mode()
        )
    }
}

/// Checks, before anything is generated, that no output file exists unless
/// overwriting is allowed.
pub(crate) fn check_absent<P: AsRef<Path>>(paths: &[P], overwrite: Overwrite) -> Result<(), Error> {
    if overwrite == Overwrite::Replace {
        return Ok(());
    }
    match paths
        .iter()
        .find(|path| path.as_ref().symlink_metadata().is_ok())
    {
        Some(path) => Err(Error::AlreadyExists {
            path: path.as_ref().to_path_buf(),
        }),
        None => Ok(()),
    }
}

/// Writes `contents` to `path` atomically, with the mode of `kind`.
///
/// With [`Overwrite::Refuse`] the file is hard-linked into place, which fails
/// rather than replace a file that appeared since [`check_absent`].
pub(crate) fn write_file(
    path: &Path,
    contents: &[u8],
    kind: FileKind,
    overwrite: Overwrite,
) -> Result<WrittenFile, Error> {
    let io_error = |cause: io::Error| Error::Io {
        op: kind.writing(),
        path: path.to_path_buf(),
        cause,
    };
    let temp = temp_path(path).map_err(io_error)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(kind.mode())
        .open(&temp)
        .map_err(io_error)?;
    let result =
        fill(file, contents, kind.mode()).and_then(|()| move_into_place(&temp, path, overwrite));
    if result.is_err() {
        // The temporary file is ours (created above); a failure to remove it
        // matters less than the error being reported.
        let _ = fs::remove_file(&temp);
    }
    result.map_err(|cause| {
        if overwrite == Overwrite::Refuse && cause.kind() == io::ErrorKind::AlreadyExists {
            Error::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            io_error(cause)
        }
    })?;
    Ok(WrittenFile {
        path: path.to_path_buf(),
        kind,
    })
}

/// A fresh name for a hidden temporary file beside `path`.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file")
    })?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    Ok(path.with_file_name(format!(
        ".{}.{}.{nanos}.tmp",
        name.to_string_lossy(),
        process::id()
    )))
}

/// Sets the exact mode (the umask may have narrowed it), writes and syncs.
fn fill(mut file: fs::File, contents: &[u8], mode: u32) -> io::Result<()> {
    file.set_permissions(Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

fn move_into_place(temp: &Path, path: &Path, overwrite: Overwrite) -> io::Result<()> {
    match overwrite {
        Overwrite::Replace => fs::rename(temp, path),
        Overwrite::Refuse => {
            fs::hard_link(temp, path)?;
            fs::remove_file(temp)
        }
    }
}
