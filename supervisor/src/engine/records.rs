//! Writing job records, and what survives what (the durability contract):
//!
//! - **A record file holds a job's records, one per line, the last whole
//!   one current.** The first is written whole under the file's final name
//!   (a temporary file renamed to `job.json`: a reader finds the record or
//!   no file, never a part); each change after it is appended as one line,
//!   so a change makes no new file and frees none. An append starts a new
//!   line first: a part left by an append that failed (a full disk) or was
//!   cut short by a host crash stays a line of its own, which readers skip
//!   ([`lines_newest_first`]), and the change after it still reads.
//! - **A supervisor crash loses nothing.** [`Records::write`] returns once
//!   the record is in the page cache. A restarted supervisor reads what the
//!   kernel holds.
//! - **A host crash loses at most the last [`MAX_LAG`] of record changes.**
//!   One syncer thread makes records durable in rounds (group commit): a
//!   round begins [`GATHER`] after the first change since the last one
//!   (at once for [`Records::flush`]), takes every record written until
//!   then, `fdatasync`s each and `fsync`s the directories of new ones once,
//!   however many changes a record had meanwhile. A write waits while the
//!   round in progress is older than half of what [`GATHER`] leaves of
//!   [`MAX_LAG`] (a disk that slow sets the pace): a change waits for at
//!   most the rest of that round, [`GATHER`] and one more round, so no
//!   change stays volatile longer than about [`MAX_LAG`]. A file whose sync
//!   fails is synced again in the next round. A job whose last changes were
//!   lost reads as it was before them: running (then FAILED by recovery, as
//!   its init is gone) or not yet ended.
//!
//! One second because that is what a job's own data gets anyway (its output
//! log and exit record are never synced: a host crash ends every job, and
//! the kernel writes dirty pages back within seconds), and a shorter bound
//! would only add fsyncs under load. The gathering is what makes a round
//! cheap per job: a short job's records (made, started, ended) all fall in
//! one round, so its file and its directory are synced once, and the jobs'
//! directory once per round, not once per job.
//!
//! Writers run on blocking threads (the start, the settling of a job), never
//! on the async runtime's workers; the syncer is a thread of its own.
//!
//! **A full state file system loses no record.** [`Records`] holds back
//! [`RESERVE_BYTES`] in a file of the state directory (`records.reserve`,
//! preallocated). A record write that finds the file system full gives back
//! [`RELEASE_STEP`] of it (the file is cut shorter) and tries again, so the
//! records of jobs that end or stop while a job fills the disk are still
//! written: a few hundred of them, however fast paused output takes back
//! what is given (jobs' output waits for space meanwhile, and starts are
//! refused). [`Records::hold_reserve`] makes it whole again once there is
//! room.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use serde::Serialize;

use crate::atomic;

/// The longest a record change may stay in the page cache only; see the
/// module docs.
pub const MAX_LAG: Duration = Duration::from_secs(1);

/// How long the syncer gathers changes before a round; see the module docs.
const GATHER: Duration = Duration::from_millis(250);

/// A round in progress older than this holds up writes: half of what
/// [`GATHER`] leaves of [`MAX_LAG`]; see the module docs.
const SLOW_ROUND: Duration = Duration::from_millis(375);
const _: () = assert!(2 * SLOW_ROUND.as_millis() + GATHER.as_millis() == MAX_LAG.as_millis());

/// How long the syncer waits after a round in which a sync failed.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The room held back for records on the state file system: a few
/// thousand records' worth.
pub const RESERVE_BYTES: u64 = 8 << 20;

/// The file that holds it, in the state directory.
const RESERVE_FILE: &str = "records.reserve";

/// How much of it one record write that finds the file system full gives
/// back: a record's worth, with room to spare.
pub const RELEASE_STEP: u64 = 32 << 10;

/// The most steps one record write gives back (when paused output takes
/// back the room as fast as it is given, the write gives up after these).
const MAX_RELEASES_PER_WRITE: usize = 4;

/// Whether the file system of `path` is out of inodes: ENOSPC then, and no
/// room given back in bytes would help.
fn out_of_inodes(path: &Path) -> bool {
    let dir = path.parent().unwrap_or(path);
    rustix::fs::statvfs(dir).is_ok_and(|stat| stat.f_files > 0 && stat.f_favail == 0)
}

/// The record writer and its syncer thread.
pub struct Records {
    /// The file holding back room for records.
    reserve: PathBuf,
    state: Mutex<State>,
    /// Wakes the syncer when there are records to sync, or a flush waits;
    /// wakes writers and [`Records::flush`] when a round ends.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// The records written since the last round began, and whether each
    /// file was made by one of them (its directories are then synced too).
    dirty: HashMap<PathBuf, bool>,
    /// When the first of them was written.
    dirty_since: Option<Instant>,
    /// Callers of [`Records::flush`] waiting: the next round begins at once.
    flushing: usize,
    /// When the round in progress began.
    round_began: Option<Instant>,
    /// Writes so far, and writes known durable.
    written: u64,
    synced: u64,
}

impl Records {
    /// A writer of records in `state_dir`, holding back room there for
    /// them; starts the syncer thread.
    pub fn start(state_dir: &Path) -> io::Result<Arc<Self>> {
        let records = Arc::new(Self {
            reserve: state_dir.join(RESERVE_FILE),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let syncer = Arc::clone(&records);
        std::thread::Builder::new()
            .name("jobworker-sync".into())
            .spawn(move || syncer.sync_forever())?;
        records.hold_reserve();
        Ok(records)
    }

    /// Holds back [`RESERVE_BYTES`] for records, if they are not held
    /// whole already and the file system has the room. Blocks.
    pub fn hold_reserve(&self) {
        let held = std::fs::metadata(&self.reserve).map_or(0, |m| m.len());
        if held >= RESERVE_BYTES {
            return;
        }
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.reserve)
            .and_then(|file| {
                rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, RESERVE_BYTES)
                    .map_err(io::Error::from)
            });
        match made {
            Ok(()) => tracing::info!(path = %self.reserve.display(), bytes = RESERVE_BYTES,
                "holding back room for job records"),
            Err(e) => tracing::warn!(path = %self.reserve.display(), held, error = %e,
                "cannot hold back all the room for job records; retried later"),
        }
    }

    /// Gives back [`RELEASE_STEP`] of the reserve; says whether there was
    /// any to give.
    fn release_some(&self) -> bool {
        let file = std::fs::OpenOptions::new().write(true).open(&self.reserve);
        let released = file.and_then(|file| {
            let held = file.metadata()?.len();
            file.set_len(held.saturating_sub(RELEASE_STEP))?;
            Ok(held)
        });
        match released {
            Ok(held) if held > 0 => {
                tracing::error!(path = %self.reserve.display(), left = held.saturating_sub(RELEASE_STEP),
                    "the state file system is full: giving room held back to job records");
                true
            }
            _ => false,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `value` to the record file `path` as one line of JSON (made
    /// with it, if there is none), into the page cache; the syncer makes it
    /// durable within [`MAX_LAG`]. Blocks: call it from a blocking thread.
    pub fn write<T: Serialize>(&self, path: &Path, value: &T) -> io::Result<()> {
        let mut state = self.state();
        while state
            .round_began
            .is_some_and(|began| began.elapsed() > SLOW_ROUND)
        {
            state = self
                .changed
                .wait_timeout(state, SLOW_ROUND)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(state);
        let line = record_line(value)?;
        let mut written = append_or_make(path, &line);
        for _ in 0..MAX_RELEASES_PER_WRITE {
            if !written.as_ref().is_err_and(atomic::is_full)
                || out_of_inodes(path)
                || !self.release_some()
            {
                break;
            }
            written = append_or_make(path, &line);
        }
        let made = written?;
        let mut state = self.state();
        *state.dirty.entry(path.to_path_buf()).or_default() |= made;
        state.written += 1;
        let first = state.dirty_since.is_none();
        state.dirty_since.get_or_insert_with(Instant::now);
        drop(state);
        if first {
            self.changed.notify_all();
        }
        Ok(())
    }

    /// Waits until every record written before this call is durable.
    /// Blocks.
    pub fn flush(&self) {
        let mut state = self.state();
        let target = state.written;
        state.flushing += 1;
        self.changed.notify_all();
        while state.synced < target {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.flushing -= 1;
    }

    /// Waits until a round is due: [`GATHER`] after the first change since
    /// the last round, or at once if a flush waits.
    fn next_round(&self) -> MutexGuard<'_, State> {
        let mut state = self.state();
        loop {
            let wait = match state.dirty_since {
                Some(_) if state.flushing > 0 => return state,
                Some(since) => match GATHER.checked_sub(since.elapsed()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return state,
                },
                None => Duration::MAX,
            };
            state = self
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn sync_forever(&self) {
        loop {
            let (files, upto) = {
                let mut state = self.next_round();
                state.dirty_since = None;
                state.round_began = Some(Instant::now());
                (std::mem::take(&mut state.dirty), state.written)
            };
            let failed = sync_round(&files);
            let mut state = self.state();
            state.round_began = None;
            let retry = !failed.is_empty();
            if retry {
                for (file, made) in failed {
                    *state.dirty.entry(file).or_default() |= made;
                }
                state.dirty_since.get_or_insert_with(Instant::now);
            } else {
                state.synced = upto;
            }
            drop(state);
            self.changed.notify_all();
            if retry {
                // A failing disk is not retried at full speed.
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

/// One record as a line of its file: a newline first (see the module
/// docs), then the record as compact JSON, which holds no newline.
fn record_line<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut line = vec![b'\n'];
    serde_json::to_writer(&mut line, value)?;
    line.push(b'\n');
    Ok(line)
}

/// Appends `line` to the record file `path`, or makes the file with it
/// (atomically, without the leading newline); says whether it made it.
fn append_or_make(path: &Path, line: &[u8]) -> io::Result<bool> {
    let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(file) => File::from(file).write_all(line).map(|()| false),
        Err(rustix::io::Errno::NOENT) => atomic::write(path, &line[1..]).map(|()| true),
        Err(e) => Err(e.into()),
    }
}

/// The lines of a record file that are not blank, newest first: the
/// current record is the first of them that is a whole record.
pub fn lines_newest_first(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .rsplit(|&b| b == b'\n')
        .filter(|line| !line.trim_ascii().is_empty())
}

/// Makes `files` durable, and the directories of those made since the last
/// round; returns the files that could not be (each logged), to be synced
/// again, with whether each was made.
fn sync_round(files: &HashMap<PathBuf, bool>) -> Vec<(PathBuf, bool)> {
    let mut dirs = HashSet::new();
    let mut failed = Vec::new();
    for (file, &made) in files {
        if let Err(e) = File::open(file).and_then(|f| f.sync_data()) {
            // A job removed by retention meanwhile: nothing to keep.
            if e.kind() != io::ErrorKind::NotFound {
                tracing::error!(path = %file.display(), error = %e, "syncing a job record");
                failed.push((file.clone(), made));
            }
        }
        if made && let Some(dir) = file.parent() {
            dirs.insert(dir);
            // A new job's directory is an entry of its parent.
            dirs.extend(dir.parent());
        }
    }
    for dir in dirs {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all())
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::error!(path = %dir.display(), error = %e, "syncing a job directory");
            failed.extend(
                files
                    .iter()
                    .filter(|(f, _)| f.parent() == Some(dir))
                    .map(|(f, &made)| (f.clone(), made)),
            );
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn writes_are_visible_at_once_and_durable_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::start(dir.path()).unwrap();
        assert!(dir.path().join(RESERVE_FILE).metadata().unwrap().len() >= RESERVE_BYTES);
        let path = dir.path().join("job.json");
        for n in 0..50 {
            records.write(&path, &n).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                lines_newest_first(&bytes).next(),
                Some(n.to_string().as_bytes())
            );
        }
        records.flush();
        let state = records.state();
        assert_eq!((state.written, state.synced), (50, 50));
        assert!(state.dirty.is_empty() && state.round_began.is_none());
    }

    #[test]
    fn a_record_is_made_whole_then_changed_by_lines_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::start(dir.path()).unwrap();
        let path = dir.path().join("job.json");
        records.write(&path, &[1]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"[1]\n");
        let made = std::fs::metadata(&path).unwrap().ino();
        // What an append cut short by a host crash, or by a full disk, leaves.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"\n[2, 3").unwrap();
        assert_eq!(
            lines_newest_first(&std::fs::read(&path).unwrap()).collect::<Vec<_>>(),
            [&b"[2, 3"[..], b"[1]"]
        );
        records.write(&path, &[4]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"[1]\n\n[2, 3\n[4]\n");
        assert_eq!(
            lines_newest_first(&std::fs::read(&path).unwrap()).next(),
            Some(&b"[4]"[..])
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            made,
            "changed in place"
        );
        records.flush();
        assert!(records.state().dirty.is_empty());
    }

    #[test]
    fn changes_are_made_durable_after_the_gathering_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::start(dir.path()).unwrap();
        for n in 0..3 {
            records
                .write(&dir.path().join(format!("{n}.json")), &n)
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while records.state().synced < 3 {
            assert!(Instant::now() < deadline, "not synced within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        let state = records.state();
        assert!(state.dirty.is_empty() && state.dirty_since.is_none());
    }

    #[test]
    fn a_removed_record_does_not_stop_the_syncer() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::start(dir.path()).unwrap();
        let path = dir.path().join("gone").join("job.json");
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        records.write(&path, &1).unwrap();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        let kept = dir.path().join("job.json");
        records.write(&kept, &2).unwrap();
        let (done, flushed) = std::sync::mpsc::channel();
        let flushing = Arc::clone(&records);
        std::thread::spawn(move || {
            flushing.flush();
            let _ = done.send(());
        });
        flushed
            .recv_timeout(Duration::from_secs(10))
            .expect("the syncer goes on past a removed record");
        assert_eq!(records.state().synced, 2);
    }
}
