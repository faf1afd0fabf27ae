//! Atomic file replacement: write a temporary file beside the target and
//! rename it over the target. A reader (and a supervisor restarted after a
//! crash) sees the old content or the new, never a part. Nothing is synced
//! here: when a file becomes durable is the caller's contract (job records:
//! [`crate::engine::records`]). A [`Prepared`] replacement makes (and
//! preallocates) its temporary file ahead of time, so that the write itself
//! needs no new room: the job's exit record, written when its disk may be
//! full.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};
use serde::Serialize;

/// Replaces `path` with `contents` atomically; the file gets mode 0600.
pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = File::open(path.parent().unwrap_or(Path::new(".")))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
    write_at(&dir, name, contents)
}

/// Replaces the file `name` in the open directory `dir` with `contents`
/// atomically; the file gets mode 0600. For a writer that can no longer
/// reach the directory by path (the job's init, once in its sandbox).
pub fn write_at(dir: &File, name: &OsStr, contents: &[u8]) -> io::Result<()> {
    let tmp = temp_name(name);
    let result = (|| {
        let mut file = create_temp(dir, &tmp)?;
        file.write_all(contents)?;
        rustix::fs::renameat(dir.as_fd(), &tmp, dir.as_fd(), name)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir.as_fd(), &tmp, AtFlags::empty());
    }
    result
}

/// Creates (or empties) the temporary file `tmp` in `dir`, mode 0600,
/// never through a symlink.
fn create_temp(dir: &File, tmp: &OsStr) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir.as_fd(),
        tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// A replacement of one file prepared ahead: its temporary file made, with
/// room for `room` bytes allocated.
pub struct Prepared {
    file: File,
    tmp: OsString,
    name: OsString,
}

impl Prepared {
    /// Makes the temporary file for replacing `name` in `dir`, with `room`
    /// bytes allocated on the file system now.
    pub fn new(dir: &File, name: &OsStr, room: u64) -> io::Result<Self> {
        let mut tmp = name.to_os_string();
        tmp.push(".next");
        let file = create_temp(dir, &tmp)?;
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, room)?;
        Ok(Self {
            file,
            tmp,
            name: name.to_os_string(),
        })
    }

    /// Writes `value` as pretty JSON into the prepared file and renames it
    /// over the target (the allocated room that goes unused is freed).
    pub fn commit_json<T: Serialize>(mut self, dir: &File, value: &T) -> io::Result<()> {
        let body = json(value)?;
        self.file.write_all(&body)?;
        self.file.set_len(body.len() as u64)?;
        rustix::fs::renameat(dir.as_fd(), &self.tmp, dir.as_fd(), &self.name)?;
        Ok(())
    }

    /// Removes the prepared file (nothing to write after all).
    pub fn abandon(self, dir: &File) {
        let _ = rustix::fs::unlinkat(dir.as_fd(), &self.tmp, AtFlags::empty());
    }
}

/// Whether a write failed for want of room on its file system (space or
/// quota).
pub fn is_full(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == libc::ENOSPC || code == libc::EDQUOT
    )
}

/// Replaces `name` in `dir` with `value` as pretty JSON, atomically.
pub fn write_json_at<T: Serialize>(dir: &File, name: &OsStr, value: &T) -> io::Result<()> {
    write_at(dir, name, &json(value)?)
}

fn json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(value)?;
    body.push(b'\n');
    Ok(body)
}

/// A temporary name beside `name`, unique to this process and this call, so
/// that concurrent writers never share (or delete) each other's file.
fn temp_name(name: &OsStr) -> OsString {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut tmp = name.to_os_string();
    tmp.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    tmp
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        write(&path, b"first").unwrap();
        write(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn concurrent_writers_never_mix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.json");
        std::thread::scope(|scope| {
            for writer in [b'a', b'b', b'c', b'd'] {
                let path = &path;
                scope.spawn(move || {
                    for round in 0..200 {
                        let len = if round % 2 == 0 { 100 } else { 4100 };
                        write(path, &vec![writer; len]).unwrap();
                    }
                });
            }
        });
        let content = fs::read(&path).unwrap();
        assert!(content.iter().all(|&b| b == content[0]), "mixed content");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
