//! Writing job records, and what survives what (the durability contract):
//!
//! - **A supervisor crash loses nothing.** [`Records::write`] returns once
//!   the record is in the page cache under its final name (a temporary file
//!   renamed over `job.json`: a reader sees the old record or the new, never
//!   a part). A restarted supervisor reads what the kernel holds.
//! - **A host crash loses at most the last [`MAX_LAG`] of record changes.**
//!   One syncer thread makes records durable in rounds (group commit): it
//!   takes every record written since its last round, `fdatasync`s each and
//!   `fsync`s each directory once, however many changes a record had
//!   meanwhile. A write waits while the round in progress is older than half
//!   of [`MAX_LAG`] (a disk that slow sets the pace): a change waits for at
//!   most the rest of that round and one more, so no change stays volatile
//!   longer than about [`MAX_LAG`]. A file whose sync fails is synced again
//!   in the next round. A job whose last changes were lost
//!   reads as it was before them: running (then FAILED by recovery, as its
//!   init is gone) or not yet ended.
//!
//! One second because that is what a job's own data gets anyway (its output
//! log and exit record are never synced: a host crash ends every job, and
//! the kernel writes dirty pages back within seconds), and a shorter bound
//! would only add fsyncs under load: the round's cost, not its period, is
//! what rounds take here (a few ms on an idle disk).
//!
//! Writers run on blocking threads (the start, the settling of a job), never
//! on the async runtime's workers; the syncer is a thread of its own.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::atomic;

/// The longest a record change may stay in the page cache only; see the
/// module docs.
pub const MAX_LAG: Duration = Duration::from_secs(1);

/// How long the syncer waits after a round in which a sync failed.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The record writer and its syncer thread.
pub struct Records {
    state: Mutex<State>,
    /// Wakes the syncer when records are written; wakes writers and
    /// [`Records::flush`] when a round ends.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Files written since the syncer's round began.
    dirty: HashSet<PathBuf>,
    /// When the round in progress began.
    round_began: Option<Instant>,
    /// Writes so far, and writes known durable.
    written: u64,
    synced: u64,
}

impl Records {
    /// A writer; starts the syncer thread.
    pub fn start() -> io::Result<Arc<Self>> {
        let records = Arc::new(Self {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let syncer = Arc::clone(&records);
        std::thread::Builder::new()
            .name("jobworker-sync".into())
            .spawn(move || syncer.sync_forever())?;
        Ok(records)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces `path` with `value` as JSON, atomically, into the page cache;
    /// the syncer makes it durable within [`MAX_LAG`]. Blocks: call it from a
    /// blocking thread.
    pub fn write<T: Serialize>(&self, path: &Path, value: &T) -> io::Result<()> {
        let mut state = self.state();
        while state
            .round_began
            .is_some_and(|began| began.elapsed() > MAX_LAG / 2)
        {
            state = self
                .changed
                .wait_timeout(state, MAX_LAG / 2)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(state);
        atomic::write_json(path, value)?;
        let mut state = self.state();
        state.dirty.insert(path.to_path_buf());
        state.written += 1;
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// Waits until every record written before this call is durable.
    /// Blocks.
    pub fn flush(&self) {
        let mut state = self.state();
        let target = state.written;
        while state.synced < target {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn sync_forever(&self) {
        loop {
            let (files, upto) = {
                let mut state = self.state();
                while state.dirty.is_empty() {
                    state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                state.round_began = Some(Instant::now());
                (std::mem::take(&mut state.dirty), state.written)
            };
            let failed = sync_round(&files);
            let mut state = self.state();
            state.round_began = None;
            let retry = !failed.is_empty();
            if retry {
                state.dirty.extend(failed);
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

/// Makes `files` and their directories durable; returns the files that
/// could not be (each logged), to be synced again.
fn sync_round(files: &HashSet<PathBuf>) -> Vec<PathBuf> {
    let mut dirs = HashSet::new();
    let mut failed = Vec::new();
    for file in files {
        if let Err(e) = File::open(file).and_then(|f| f.sync_data()) {
            // A job removed by retention meanwhile: nothing to keep.
            if e.kind() != io::ErrorKind::NotFound {
                tracing::error!(path = %file.display(), error = %e, "syncing a job record");
                failed.push(file.clone());
            }
        }
        if let Some(dir) = file.parent() {
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
            failed.extend(files.iter().filter(|f| f.parent() == Some(dir)).cloned());
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_visible_at_once_and_durable_after_flush() {
        let records = Records::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.json");
        for n in 0..50 {
            records.write(&path, &n).unwrap();
            assert_eq!(
                std::fs::read_to_string(&path).unwrap().trim(),
                n.to_string()
            );
        }
        records.flush();
        let state = records.state();
        assert_eq!((state.written, state.synced), (50, 50));
        assert!(state.dirty.is_empty() && state.round_began.is_none());
    }

    #[test]
    fn a_removed_record_does_not_stop_the_syncer() {
        let records = Records::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
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
