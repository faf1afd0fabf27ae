//! Reading a job's output: any number of readers, each from any offset,
//! following the log as it grows and ending after the last byte of an ended
//! job.
//!
//! The job's init appends to the log; the supervisor learns of growth from one
//! inotify instance watching every running job's log (`IN_MODIFY`), which
//! wakes that job's readers through its watch channel. Each reader reads the
//! file itself, at its own pace: a slow reader delays no one.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::{Arc, Mutex, Weak};

use jobworker_ipc::{JobInfo, MAX_OUTPUT_CHUNK};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use super::job::Job;
use crate::sys::{self, Registered};

/// One step of an output stream.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes at an offset.
    Data {
        /// Where `bytes` start in the output.
        offset: u64,
        /// At most [`MAX_OUTPUT_CHUNK`] bytes.
        bytes: Vec<u8>,
    },
    /// The stream is complete: the job's status at its end.
    End(Box<JobInfo>),
}

/// Reads a job's output from an offset, optionally following it.
pub struct OutputStream {
    job: Arc<Job>,
    file: Option<tokio::fs::File>,
    offset: u64,
    follow: bool,
    changes: watch::Receiver<u64>,
    done: bool,
}

impl OutputStream {
    /// A stream of `job`'s output from `offset`.
    pub fn new(job: Arc<Job>, offset: u64, follow: bool) -> Self {
        let changes = job.subscribe();
        Self {
            job,
            file: None,
            offset,
            follow,
            changes,
            done: false,
        }
    }

    /// The next chunk; `None` after [`Chunk::End`].
    pub async fn next(&mut self) -> std::io::Result<Option<Chunk>> {
        let mut buf = vec![0; MAX_OUTPUT_CHUNK];
        while !self.done {
            // Mark the current generation seen *before* reading: growth or an
            // end after this point wakes `changed()` below.
            self.changes.borrow_and_update();
            let ended = self.job.is_ended();
            let n = self.read(&mut buf).await?;
            if n > 0 {
                buf.truncate(n);
                let chunk = Chunk::Data {
                    offset: self.offset,
                    bytes: buf,
                };
                self.offset += n as u64;
                return Ok(Some(chunk));
            }
            if ended || !self.follow {
                self.done = true;
                return Ok(Some(Chunk::End(Box::new(self.job.info()))));
            }
            if self.changes.changed().await.is_err() {
                // The job is gone from the engine; read what is there and end.
                self.follow = false;
            }
        }
        Ok(None)
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.file.is_none() {
            let mut file = match tokio::fs::File::open(self.job.output_path()).await {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            // Past the end there is nothing to read yet (and a seek beyond
            // what the file system allows fails): try again once it grows.
            if self.offset > file.metadata().await?.len() {
                return Ok(0);
            }
            file.seek(SeekFrom::Start(self.offset)).await?;
            self.file = Some(file);
        }
        match self.file.as_mut() {
            Some(file) => file.read(buf).await,
            None => Ok(0),
        }
    }
}

/// Watches the logs of running jobs and wakes their readers.
pub struct Watcher {
    inotify: AsyncFd<Registered<Inotify>>,
    watches: Mutex<HashMap<WatchDescriptor, Weak<Job>>>,
}

impl Watcher {
    /// A watcher; call [`Watcher::run`] in a task.
    pub fn new() -> std::io::Result<Arc<Self>> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        Ok(Arc::new(Self {
            inotify: sys::register(inotify, tokio::io::Interest::READABLE)?,
            watches: Mutex::new(HashMap::new()),
        }))
    }

    fn watches(&self) -> std::sync::MutexGuard<'_, HashMap<WatchDescriptor, Weak<Job>>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts waking `job`'s readers when its log grows.
    pub fn watch(&self, job: &Arc<Job>) -> std::io::Result<()> {
        let wd = self
            .inotify
            .get_ref()
            .get_ref()
            .add_watch(&job.output_path(), AddWatchFlags::IN_MODIFY)?;
        self.watches().insert(wd, Arc::downgrade(job));
        Ok(())
    }

    /// Stops watching `job` (it has ended).
    pub fn unwatch(&self, job: &Job) {
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
                    tracing::error!(error = %e, "inotify failed; output readers fall back to job ends");
                    return;
                }
            };
            match guard.try_io(|fd| {
                fd.get_ref()
                    .get_ref()
                    .read_events()
                    .map_err(std::io::Error::from)
            }) {
                Ok(Ok(events)) => {
                    let watches = self.watches();
                    let overflow = events
                        .iter()
                        .any(|e| e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW));
                    for job in watches.iter().filter_map(|(wd, job)| {
                        (overflow || events.iter().any(|e| e.wd == *wd)).then(|| job.upgrade())?
                    }) {
                        job.notify();
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "reading inotify events"),
                Err(_would_block) => {}
            }
        }
    }
}
