//! Reading a job's output: any number of readers, each from any offset,
//! following the log as it grows and ending after the last byte of an ended
//! job.
//!
//! The job's init appends to the log. A job that has followers has a
//! [`Tail`]: one reader (on the engine's threads) reads each new byte of the
//! log once, woken by one inotify instance watching the log of every running
//! job that has had a follower (`IN_MODIFY`; watched from its first
//! follower on, so that the writes of a job nobody follows wake nothing),
//! and keeps the last [`TAIL_BYTES`] as shared buffers
//! ([`Bytes`]) that every follower takes without a copy; the job's watch
//! channel wakes them. The tail never waits for a follower: one that falls
//! behind it (or starts before it) reads the log itself, in large reads on
//! the engine's threads, until it catches up. And the tail reads only for
//! followers waiting at its end ("parked"): while every follower is behind
//! a job that writes faster than they read, nothing reads a byte that the
//! followers will read again themselves. Without followers nothing reads
//! the log.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use jobworker_ipc::{JobInfo, MAX_OUTPUT_CHUNK};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::job::Job;
use super::metrics::Follower;
use super::workers::Workers;
use crate::sys::{self, Registered};

/// The most recent output a job's tail keeps for its followers.
pub const TAIL_BYTES: u64 = 4 << 20;

/// The most the tail's reader, or a follower behind the tail, reads from
/// the log at once (then handed out in chunks of [`MAX_OUTPUT_CHUNK`]).
const CATCH_UP_READ: usize = 1 << 20;

/// One step of an output stream.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes at an offset.
    Data {
        /// Where `bytes` start in the output.
        offset: u64,
        /// At most [`MAX_OUTPUT_CHUNK`] bytes.
        bytes: Bytes,
    },
    /// The stream is complete: the job's status at its end.
    End(Box<JobInfo>),
}

/// The shared recent output of a job with followers.
#[derive(Default)]
pub struct Tail {
    state: Mutex<TailState>,
}

#[derive(Default)]
struct TailState {
    /// Followers attached.
    followers: usize,
    /// Counts the times the tail was set up: a reader of an earlier one
    /// keeps nothing.
    generation: u64,
    /// The log, and where the tail's reader is in it; `None` until the
    /// first follower's tail is set up (and again after the last left).
    log: Option<(Arc<File>, u64)>,
    /// The kept output, contiguous, ending at the reader's position.
    chunks: VecDeque<Bytes>,
    kept: u64,
    /// The reader runs, or is to run.
    reading: bool,
    /// The log grew since the reader last found its end.
    grown: bool,
    /// The log is watched (or was, or will not be: the job ended).
    watched: bool,
    /// Followers waiting at the tail's end for more ([`Parked`]): the
    /// reader reads only while there are some.
    parked: usize,
}

/// Where an offset is, seen from the tail.
enum Place {
    /// In the tail: these bytes start there.
    Kept(Bytes),
    /// Before the tail's first kept byte, past its end (the follower read
    /// the log itself further than the tail has), or there is no tail yet:
    /// read the log.
    Behind,
    /// At the tail's end: wait for more.
    Ahead,
}

impl Tail {
    fn state(&self) -> MutexGuard<'_, TailState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where `offset` is, and at most [`MAX_OUTPUT_CHUNK`] bytes from it if
    /// they are kept.
    fn place(&self, offset: u64) -> Place {
        let state = self.state();
        let Some((_, end)) = state.log else {
            return Place::Behind;
        };
        if offset > end {
            return Place::Behind;
        }
        if offset == end {
            return Place::Ahead;
        }
        let mut at = end - state.kept;
        if offset < at {
            return Place::Behind;
        }
        for chunk in &state.chunks {
            let len = chunk.len() as u64;
            if offset < at + len {
                let from = usize::try_from(offset - at).unwrap_or(0);
                let to = chunk.len().min(from + MAX_OUTPUT_CHUNK);
                return Place::Kept(chunk.slice(from..to));
            }
            at += len;
        }
        Place::Ahead
    }

    /// Notes that the log grew; says whether the caller is to start the
    /// reader (a follower waits for it and it is not running).
    fn grew(&self) -> bool {
        let mut state = self.state();
        state.grown = true;
        state.wants_reader()
    }

    /// Counts a follower at `offset` among those waiting at the tail's end,
    /// moving the tail there first if the follower read the log itself
    /// past it; says whether the caller is to start the reader (the log
    /// grew since it last ran).
    fn park(&self, offset: u64) -> bool {
        let mut state = self.state();
        state.parked += 1;
        if let Some((_, end)) = state.log.as_mut()
            && offset > *end
        {
            // What the tail would read up to here, this follower has read:
            // the tail starts again where it waits (a reader still running
            // notices and starts again there too).
            *end = offset;
            state.chunks.clear();
            state.kept = 0;
            state.generation += 1;
        }
        state.wants_reader()
    }
}

impl TailState {
    /// Whether the reader is to start now, then marked running: the log
    /// grew, a follower waits at the tail's end, and it is not running.
    fn wants_reader(&mut self) -> bool {
        if !self.grown
            || self.parked == 0
            || self.followers == 0
            || self.log.is_none()
            || self.reading
        {
            return false;
        }
        self.reading = true;
        true
    }
}

/// A follower waiting at the tail's end ([`Tail::park`]), until dropped.
struct Parked<'a>(&'a Tail);

impl<'a> Parked<'a> {
    /// Parks a follower of `job` at `offset`, starting the tail's reader on
    /// `workers` if it is wanted.
    fn new(job: &'a Arc<Job>, workers: &Workers, offset: u64) -> Self {
        if job.tail.park(offset) {
            start_reader(workers, job);
        }
        Self(&job.tail)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.parked = state.parked.saturating_sub(1);
    }
}

/// Runs [`read_tail`] for `job` on `workers` (its tail is marked reading).
fn start_reader(workers: &Workers, job: &Arc<Job>) {
    let reading = Arc::clone(job);
    if let Err(e) = workers.spawn(move || read_tail(&reading)) {
        job.tail.state().reading = false;
        tracing::error!(job = %job.spec.id, error = %e, "reading a job's output for its followers");
    }
}

/// Reads what the log gained into `job`'s tail, until nothing more came
/// meanwhile or no follower waits for more, waking the followers after each
/// read. Blocks.
fn read_tail(job: &Job) {
    loop {
        let (file, mut end, generation) = {
            let mut state = job.tail.state();
            let wanted = state.grown && state.followers > 0 && state.parked > 0;
            match (&state.log, wanted) {
                (Some((file, end)), true) => {
                    let pass = (Arc::clone(file), *end, state.generation);
                    state.grown = false;
                    pass
                }
                _ => {
                    state.reading = false;
                    return;
                }
            }
        };
        loop {
            match read_at(&file, end, CATCH_UP_READ) {
                Ok(Some(bytes)) => {
                    end += bytes.len() as u64;
                    let after = keep(&job.tail, bytes, end, generation);
                    if after != AfterKeep::Stale {
                        job.notify();
                    }
                    if after != AfterKeep::ReadOn {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The next growth tries again; at the job's end its
                    // followers read the rest of the log themselves.
                    tracing::warn!(job = %job.spec.id, error = %e, "reading the output log for its followers");
                    break;
                }
            }
        }
    }
}

/// What the tail's reader does after [`keep`]ing a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterKeep {
    /// Kept, and followers still wait at the tail's end: read on.
    ReadOn,
    /// Kept, and no follower waits now (they are busy with what came):
    /// pause until one waits again (there may be more: the log counts as
    /// grown).
    Pause,
    /// Not kept: the tail was set up again, or moved, since (or is gone).
    Stale,
}

/// Appends `bytes` (which end at `end`) to the tail, dropping its oldest
/// bytes beyond [`TAIL_BYTES`].
fn keep(tail: &Tail, bytes: Bytes, end: u64, generation: u64) -> AfterKeep {
    let mut state = tail.state();
    if state.generation != generation {
        return AfterKeep::Stale;
    }
    let Some((_, position)) = state.log.as_mut() else {
        return AfterKeep::Stale;
    };
    *position = end;
    state.kept += bytes.len() as u64;
    state.chunks.push_back(bytes);
    while state.kept > TAIL_BYTES {
        let Some(oldest) = state.chunks.pop_front() else {
            break;
        };
        state.kept -= oldest.len() as u64;
    }
    if state.parked == 0 {
        state.grown = true;
        return AfterKeep::Pause;
    }
    AfterKeep::ReadOn
}

/// Up to `max` bytes of `file` from `offset`; `None` at its end. The read
/// goes into fresh capacity: no buffer is zeroed first.
fn read_at(file: &File, offset: u64, max: usize) -> std::io::Result<Option<Bytes>> {
    let len = file.metadata()?.len();
    let want = usize::try_from(len.saturating_sub(offset)).map_or(max, |left| left.min(max));
    if want == 0 {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(want);
    let n = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), offset)?;
    Ok((n > 0).then(|| Bytes::from(buf)))
}

/// Reads a job's output from an offset, optionally following it.
pub struct OutputStream {
    job: Arc<Job>,
    workers: Arc<Workers>,
    watcher: Arc<Watcher>,
    offset: u64,
    follow: bool,
    /// Counts this stream among the followers while it follows.
    _follower: Option<Follower>,
    changes: watch::Receiver<u64>,
    /// The log, opened by the first read this stream makes itself.
    file: Option<Arc<File>>,
    /// Read ahead by this stream itself, from `offset` on.
    pending: VecDeque<Bytes>,
    attached: bool,
    done: bool,
}

impl OutputStream {
    /// A stream of `job`'s output from `offset`; one that follows the job
    /// while it runs when it is given its `follower` count (its log is then
    /// watched by `watcher`).
    pub fn new(
        job: Arc<Job>,
        (workers, watcher): (Arc<Workers>, Arc<Watcher>),
        offset: u64,
        follower: Option<Follower>,
    ) -> Self {
        let changes = job.subscribe();
        Self {
            job,
            workers,
            watcher,
            offset,
            follow: follower.is_some(),
            _follower: follower,
            changes,
            file: None,
            pending: VecDeque::new(),
            attached: false,
            done: false,
        }
    }

    /// The next chunk; `None` after [`Chunk::End`].
    pub async fn next(&mut self) -> std::io::Result<Option<Chunk>> {
        while !self.done {
            if let Some(bytes) = self.pending.pop_front() {
                return Ok(Some(self.data(bytes)));
            }
            // Mark the current generation seen *before* looking: growth or
            // an end after this point wakes `changed()` below.
            self.changes.borrow_and_update();
            let ended = self.job.is_ended();
            if self.follow && !ended && !self.attached {
                // It may have read from this stream's offset: look again.
                self.attach().await?;
                continue;
            }
            match self.job.tail.place(self.offset) {
                Place::Kept(bytes) => return Ok(Some(self.data(bytes))),
                Place::Behind => {
                    if self.read_ahead().await? {
                        continue;
                    }
                }
                Place::Ahead => {}
            }
            if ended || !self.follow {
                // Whatever the tail did not read yet is in the log.
                if self.read_ahead().await? {
                    continue;
                }
                self.done = true;
                return Ok(Some(Chunk::End(Box::new(self.status().await))));
            }
            let _parked = Parked::new(&self.job, &self.workers, self.offset);
            if self.changes.changed().await.is_err() {
                // The job is gone from the engine; read what is there and end.
                self.follow = false;
            }
        }
        Ok(None)
    }

    /// The job's status for the stream's end: as recorded once it has
    /// ended; a running one's read live on the engine's threads.
    async fn status(&self) -> JobInfo {
        if self.job.is_ended() {
            return self.job.recorded_info();
        }
        let job = Arc::clone(&self.job);
        self.workers
            .run(move || job.info())
            .await
            .unwrap_or_else(|_| self.job.recorded_info())
    }

    fn data(&mut self, bytes: Bytes) -> Chunk {
        let offset = self.offset;
        self.offset += bytes.len() as u64;
        Chunk::Data { offset, bytes }
    }

    /// Joins the job's followers, setting up its tail if this is the first
    /// (the log watched and its end found on the engine's threads, and in
    /// the same trip the log read from this stream's offset, into
    /// `pending`).
    async fn attach(&mut self) -> std::io::Result<()> {
        self.attached = true;
        let first = {
            let mut state = self.job.tail.state();
            state.followers += 1;
            state.log.is_none()
        };
        if !first {
            return Ok(());
        }
        let (job, opened, offset) = (Arc::clone(&self.job), self.file.clone(), self.offset);
        let watcher = Arc::clone(&self.watcher);
        let read = self
            .workers
            .run(move || {
                watcher.watch(&job);
                set_up_tail(&job)?;
                read_log(opened, &job.output_path(), offset)
            })
            .await
            .map_err(std::io::Error::other)??;
        self.keep_read(read);
        Ok(())
    }

    /// Reads up to [`CATCH_UP_READ`] bytes of the log from this stream's
    /// offset on the engine's threads, into `pending`; says whether any came.
    async fn read_ahead(&mut self) -> std::io::Result<bool> {
        let (opened, path, offset) = (self.file.clone(), self.job.output_path(), self.offset);
        let read = self
            .workers
            .run(move || read_log(opened, &path, offset))
            .await
            .map_err(std::io::Error::other)??;
        Ok(self.keep_read(read))
    }

    /// Keeps what [`read_log`] read (the log, and its bytes in chunks of at
    /// most [`MAX_OUTPUT_CHUNK`]); says whether any bytes came.
    fn keep_read(&mut self, read: Option<(Arc<File>, Option<Bytes>)>) -> bool {
        let Some((file, bytes)) = read else {
            return false;
        };
        self.file = Some(file);
        let Some(bytes) = bytes else {
            return false;
        };
        let mut at = 0;
        while at < bytes.len() {
            let to = bytes.len().min(at + MAX_OUTPUT_CHUNK);
            self.pending.push_back(bytes.slice(at..to));
            at = to;
        }
        true
    }
}

/// Up to [`CATCH_UP_READ`] bytes of the log at `path` (`opened` already, or
/// opened now) from `offset`, with the open log; `None` if there is no log.
/// Blocks.
fn read_log(
    opened: Option<Arc<File>>,
    path: &std::path::Path,
    offset: u64,
) -> std::io::Result<Option<(Arc<File>, Option<Bytes>)>> {
    let file = match opened {
        Some(file) => file,
        None => match File::open(path) {
            Ok(file) => Arc::new(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        },
    };
    let bytes = read_at(&file, offset, CATCH_UP_READ)?;
    Ok(Some((file, bytes)))
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        if !self.attached {
            return;
        }
        let mut state = self.job.tail.state();
        state.followers = state.followers.saturating_sub(1);
        if state.followers == 0 {
            // Nothing reads the log until a follower comes again (a reader
            // still running stops at its next read).
            state.log = None;
            state.chunks.clear();
            state.kept = 0;
            state.generation += 1;
        }
    }
}

/// Opens the log for the job's tail and starts it at the log's end, unless
/// another follower did meanwhile; then reads what came since (its inotify
/// event may have come before the tail was there). Blocks.
fn set_up_tail(job: &Job) -> std::io::Result<()> {
    let file = File::open(job.output_path())?;
    let end = file.metadata()?.len();
    {
        let mut state = job.tail.state();
        if state.log.is_some() || state.followers == 0 {
            return Ok(());
        }
        state.log = Some((Arc::new(file), end));
        state.generation += 1;
        state.grown = true;
        if state.reading {
            return Ok(());
        }
        state.reading = true;
    }
    read_tail(job);
    Ok(())
}

/// Watches the logs of running jobs and wakes their tails.
pub struct Watcher {
    inotify: AsyncFd<Registered<Inotify>>,
    watches: Mutex<HashMap<WatchDescriptor, Weak<Job>>>,
    workers: Arc<Workers>,
}

impl Watcher {
    /// A watcher whose tails read on `workers`; call [`Watcher::run`] in a
    /// task.
    pub fn new(workers: Arc<Workers>) -> std::io::Result<Arc<Self>> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        Ok(Arc::new(Self {
            inotify: sys::register(inotify, tokio::io::Interest::READABLE)?,
            watches: Mutex::new(HashMap::new()),
            workers,
        }))
    }

    fn watches(&self) -> MutexGuard<'_, HashMap<WatchDescriptor, Weak<Job>>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts waking `job`'s tail when its log grows, if it is not watched
    /// yet and has not ended (its first follower calls this, before the
    /// tail finds the log's end, so that no growth is missed). A failure is
    /// logged: the job's followers then wake only at its end. Blocks
    /// (inotify looks up the path).
    pub fn watch(&self, job: &Arc<Job>) {
        if job.is_ended() || std::mem::replace(&mut job.tail.state().watched, true) {
            return;
        }
        match self
            .inotify
            .get_ref()
            .get_ref()
            .add_watch(&job.output_path(), AddWatchFlags::IN_MODIFY)
        {
            Ok(wd) => {
                self.watches().insert(wd, Arc::downgrade(job));
            }
            Err(e) => tracing::warn!(job = %job.spec.id, error = %e,
                "watching the output log; followers wake only at the job's end"),
        }
    }

    /// Stops watching `job` (it has ended), if it was.
    pub fn unwatch(&self, job: &Job) {
        job.tail.state().watched = true;
        let mut watches = self.watches();
        let gone: Vec<_> = watches
            .iter()
            .filter(|(_, w)| w.upgrade().is_none_or(|j| j.spec.id == job.spec.id))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            watches.remove(&wd);
            let _ = self.inotify.get_ref().get_ref().rm_watch(wd);
        }
    }

    /// Dispatches events until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            let mut guard = match self.inotify.readable().await {
                Ok(guard) => guard,
                Err(e) => {
                    tracing::error!(error = %e, "inotify failed; output followers fall back to job ends");
                    return;
                }
            };
            match guard.try_io(|fd| {
                fd.get_ref()
                    .get_ref()
                    .read_events()
                    .map_err(std::io::Error::from)
            }) {
                Ok(Ok(events)) => self.dispatch(&events),
                Ok(Err(e)) => tracing::warn!(error = %e, "reading inotify events"),
                Err(_would_block) => {}
            }
        }
    }

    /// Starts the tail reader of each job whose log grew.
    fn dispatch(&self, events: &[nix::sys::inotify::InotifyEvent]) {
        let overflow = events
            .iter()
            .any(|e| e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW));
        let grown: Vec<Arc<Job>> = self
            .watches()
            .iter()
            .filter(|(wd, _)| overflow || events.iter().any(|e| e.wd == **wd))
            .filter_map(|(_, job)| job.upgrade())
            .collect();
        for job in grown {
            if job.tail.grew() {
                start_reader(&self.workers, &job);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tail over a log of `len` bytes whose reader is at its end, with
    /// one follower attached.
    fn tail_at(len: u64) -> (Tail, tempfile::NamedTempFile) {
        let log = tempfile::NamedTempFile::new().unwrap();
        let tail = Tail::default();
        {
            let mut state = tail.state();
            state.followers = 1;
            state.log = Some((Arc::new(log.reopen().unwrap()), len));
        }
        (tail, log)
    }

    #[test]
    fn the_reader_starts_only_for_a_follower_waiting_at_the_end() {
        let (tail, _log) = tail_at(100);
        assert!(!tail.grew(), "nobody waits: the growth is only noted");
        assert!(tail.park(100), "a follower waits and the log grew");
        assert!(!tail.grew(), "the reader runs already");
        tail.state().reading = false;
        tail.state().grown = false;
        assert!(!tail.park(100), "nothing new to read");
        assert!(tail.grew(), "two wait, and the log grew");
    }

    #[test]
    fn a_read_nobody_waits_for_pauses_the_reader() {
        let (tail, _log) = tail_at(0);
        let generation = tail.state().generation;
        let bytes = Bytes::from_static(b"0123456789");
        assert_eq!(keep(&tail, bytes.clone(), 10, generation), AfterKeep::Pause);
        assert!(
            tail.state().grown,
            "there may be more: the next waiter starts the reader"
        );
        tail.state().parked = 1;
        assert_eq!(
            keep(&tail, bytes.clone(), 20, generation),
            AfterKeep::ReadOn
        );
        assert_eq!(keep(&tail, bytes, 30, generation + 1), AfterKeep::Stale);
        assert!(matches!(tail.place(15), Place::Kept(b) if b.as_ref() == b"56789"));
    }

    #[test]
    fn a_follower_that_read_past_the_tail_moves_it_to_where_it_waits() {
        let (tail, _log) = tail_at(0);
        let generation = tail.state().generation;
        tail.state().parked = 1;
        keep(&tail, Bytes::from_static(b"0123456789"), 10, generation);
        assert!(
            matches!(tail.place(50), Place::Behind),
            "past the tail: read the log"
        );
        assert!(!tail.park(50));
        assert!(matches!(tail.place(50), Place::Ahead));
        assert!(
            matches!(tail.place(5), Place::Behind),
            "the tail kept nothing before it"
        );
        assert_eq!(
            keep(&tail, Bytes::from_static(b"x"), 11, generation),
            AfterKeep::Stale,
            "a reader still at the old place starts again at the new one"
        );
    }
}
