//! The init's event loop: output from the pipe into the log (up to the cap,
//! the rest drained and counted), SIGTERM/SIGINT forwarded to every process
//! of the job, SIGUSR1 ("stop now") turned into SIGKILL for every process of the job,
//! orphans reaped. When the command has ended, whatever is left of the job is
//! killed and reaped, and what remains in the pipe is drained (without waiting
//! for an end of file that a process outside the job could hold back).
//!
//! A full file system (ENOSPC, EDQUOT) pauses the output instead of losing
//! it: the bytes that did not fit are kept, the pipe is not read (so the
//! job blocks on its next write once the pipe is full: it is slowed, not
//! cut), and the write is retried every [`RETRY`] until space returns. Only
//! at the job's end, if the disk is still full after [`END_WAIT`], is what
//! is left dropped, and counted apart from the cap's drops.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use jobworker_ipc::{Termination, UnixMicros};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::atomic::is_full;

/// What the pump saw.
pub struct Outcome {
    /// How the command ended.
    pub termination: Termination,
    /// When the command ended.
    pub ended_at: UnixMicros,
    /// A stop (SIGTERM, SIGINT or SIGUSR1) reached the init before the
    /// command ended.
    pub stopped: bool,
    /// Bytes the job wrote.
    pub output_bytes: u64,
    /// Bytes dropped over the cap.
    pub dropped_bytes: u64,
    /// Bytes dropped because the log could not take them at the job's end
    /// (its file system still full), or at all (it failed otherwise).
    pub lost_bytes: u64,
    /// The output log, to flush once the end is reported; `None` when
    /// nothing went into it (an empty log has nothing to flush).
    pub log: Option<File>,
}

/// How often a paused output retries its write.
pub const RETRY: Duration = Duration::from_millis(100);

/// How long the job's end waits for space for the last bytes. Within the
/// 2 s the supervisor gives the init after a "stop now".
pub const END_WAIT: Duration = Duration::from_secs(1);

/// Counts output and writes what fits under the cap into the log, holding
/// back what a full file system refuses.
struct Sink {
    log: File,
    cap: u64,
    /// In the log.
    written: u64,
    /// Over the cap.
    dropped: u64,
    /// Lost to a full or failing file system.
    lost: u64,
    /// Taken from the pipe, not yet in the log: the file system is full.
    pending: Vec<u8>,
    /// The log failed for a reason other than space: output is dropped.
    failed: bool,
}

impl Sink {
    /// A sink that writes up to `cap` bytes into `log`.
    fn new(log: File, cap: u64) -> Self {
        Self {
            log,
            cap,
            written: 0,
            dropped: 0,
            lost: 0,
            pending: Vec::new(),
            failed: false,
        }
    }

    /// Whether output waits for space (and the pipe is left unread).
    fn paused(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Takes bytes read from the pipe: what fits under the cap goes to the
    /// log (or waits for space behind what already waits), the rest is
    /// counted as dropped over the cap.
    fn take(&mut self, data: &[u8]) {
        let taken = self.written + self.pending.len() as u64;
        let room = usize::try_from(self.cap.saturating_sub(taken)).unwrap_or(usize::MAX);
        let keep = data.len().min(room);
        self.dropped += (data.len() - keep) as u64;
        if self.failed {
            self.lost += keep as u64;
        } else if self.paused() {
            self.pending.extend_from_slice(&data[..keep]);
        } else {
            let done = self.write(&data[..keep]);
            self.pending.extend_from_slice(&data[done..keep]);
        }
    }

    /// Retries what waits for space; what fits now goes to the log.
    fn retry(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let done = self.write(&pending);
        self.pending = pending;
        self.pending.drain(..done);
    }

    /// Writes `data` into the log; returns how much went in. Stops short at
    /// a full file system (the rest is to be retried); any other error
    /// marks the log failed and counts the rest as lost.
    fn write(&mut self, data: &[u8]) -> usize {
        let mut done = 0;
        while done < data.len() {
            match self.log.write(&data[done..]) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    self.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_full(&e) => break,
                Err(e) => {
                    crate::init::say!(
                        "jobworker-init: writing the output log: {e}; \
                         output is dropped from here on"
                    );
                    self.failed = true;
                    self.lost += (data.len() - done) as u64;
                    return data.len();
                }
            }
        }
        done
    }

    /// At the job's end: waits up to `limit` for space for what is held
    /// back, then counts what still does not fit as lost.
    fn finish(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.paused() {
            self.retry();
            if !self.paused() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(RETRY);
        }
        if self.paused() {
            crate::init::say!(
                "jobworker-init: the output log's file system is still full at the job's end: \
                 {} bytes dropped",
                self.pending.len()
            );
            self.lost += self.pending.len() as u64;
            self.pending.clear();
        }
    }
}

/// Which of the polled fds have something to read.
struct Ready {
    /// The output pipe (never while it is closed).
    output: bool,
    /// The signalfd.
    signals: bool,
}

/// Runs until the command has ended and the pipe is drained.
pub fn run(
    command: Pid,
    output: OwnedFd,
    log: File,
    cap: u64,
    signals: &SignalFd,
) -> io::Result<Outcome> {
    let mut output = Some(File::from(output));
    let mut sink = Sink::new(log, cap);
    let mut termination = None;
    let mut ended_at = UnixMicros(0);
    let mut stopped = false;
    // Filled by each read, never zeroed: a job that writes little touches
    // (and faults in) little of it.
    let mut buf = Vec::with_capacity(64 * 1024);

    while termination.is_none() {
        // While output waits for space the pipe is left unread, and the
        // wait wakes to retry.
        let paused = sink.paused();
        let ready = wait(signals, output.as_ref().filter(|_| !paused), paused)?;
        if paused {
            sink.retry();
        }
        if ready.output {
            read_output(&mut output, &mut sink, &mut buf)?;
        }
        if ready.signals {
            // Reaped first: a stop read in the same batch as the command's
            // SIGCHLD came after the command had ended by itself.
            if reap(command, &mut termination)? {
                ended_at = UnixMicros::now();
            }
            let stop = forward_signals(signals)?;
            stopped |= stop && termination.is_none();
            if reap(command, &mut termination)? {
                ended_at = UnixMicros::now();
            }
        }
    }
    end_job(output, &mut sink, &mut buf)?;
    Ok(Outcome {
        termination: termination.ok_or_else(|| io::Error::other("command status lost"))?,
        ended_at,
        stopped,
        output_bytes: sink.written + sink.dropped + sink.lost,
        dropped_bytes: sink.dropped,
        lost_bytes: sink.lost,
        log: (sink.written > 0).then_some(sink.log),
    })
}

/// Polls the signalfd and the output pipe (when given) until either has
/// something to read, a signal interrupts the poll, or, when `retry`, for at
/// most [`RETRY`].
fn wait(signals: &SignalFd, output: Option<&File>, retry: bool) -> io::Result<Ready> {
    let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
    if let Some(pipe) = output {
        fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
    }
    let timeout = if retry {
        PollTimeout::from(u16::try_from(RETRY.as_millis()).unwrap_or(u16::MAX))
    } else {
        PollTimeout::NONE
    };
    match poll(&mut fds, timeout) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(e) => return Err(e.into()),
    }
    let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
    Ok(Ready {
        output: fds.get(1).is_some_and(ready),
        signals: ready(&fds[0]),
    })
}

/// Moves one read's worth of output from the pipe into the sink; at end of
/// file, closes the pipe (sets `output` to `None`).
fn read_output(output: &mut Option<File>, sink: &mut Sink, buf: &mut Vec<u8>) -> io::Result<()> {
    let Some(pipe) = output.as_ref() else {
        return Ok(());
    };
    match read(pipe, buf) {
        Ok([]) => *output = None,
        Ok(bytes) => sink.take(bytes),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => return Err(e),
    }
    Ok(())
}

/// One read from `pipe` into `buf`'s capacity (what it held before is
/// dropped); the bytes read.
fn read<'a>(pipe: &File, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
    buf.clear();
    rustix::io::read(pipe, rustix::buffer::spare_capacity(buf))?;
    Ok(buf)
}

/// Reads every pending signal and passes stops on to every process of the
/// job: SIGTERM and SIGINT as they are, SIGUSR1 as SIGKILL. Says whether a
/// stop came.
fn forward_signals(signals: &SignalFd) -> io::Result<bool> {
    let mut stopped = false;
    while let Some(info) = signals.read_signal()? {
        match Signal::try_from(info.ssi_signo.cast_signed()) {
            // To every process of the job, not only the command, so that each
            // gets the grace period to clean up. As pid 1, kill(-1) reaches
            // every other process of the namespace.
            Ok(sig @ (Signal::SIGTERM | Signal::SIGINT)) => {
                stopped = true;
                let _ = kill(Pid::from_raw(-1), sig);
            }
            Ok(Signal::SIGUSR1) => {
                stopped = true;
                let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            }
            _ => {}
        }
    }
    Ok(stopped)
}

/// Once the command has ended: kills and reaps whatever is left of the job,
/// drains the pipe if it is still open, and gives held-back output up to
/// [`END_WAIT`] to find space.
fn end_job(output: Option<File>, sink: &mut Sink, buf: &mut Vec<u8>) -> io::Result<()> {
    // The job is its command: what it left behind goes with it. As pid 1,
    // kill(-1) reaches every other process of the namespace; collect them
    // all, so that none lingers as a zombie and none still writes.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while waitpid(Pid::from_raw(-1), None).is_ok() {}
    if let Some(pipe) = output {
        drain(&pipe, sink, buf)?;
    }
    sink.finish(END_WAIT);
    Ok(())
}

/// Flushes the ended job's log to disk (if anything went into it), before
/// the init exits (so before the supervisor records the end durably).
/// Best effort: a log that cannot be flushed still has its bytes in the
/// page cache, and the job's exit status matters more.
pub fn flush(log: Option<&File>) {
    let Some(log) = log else {
        return;
    };
    if let Err(e) = log.sync_data() {
        crate::init::say!("jobworker-init: flushing the output log: {e}");
    }
}

/// Reads what is left in the pipe once every process of the job is gone. It
/// does not wait for EOF: a process outside the job that got hold of the
/// pipe's write end must not keep the job from ending.
fn drain(pipe: &File, sink: &mut Sink, buf: &mut Vec<u8>) -> io::Result<()> {
    rustix::fs::fcntl_setfl(pipe, rustix::fs::OFlags::NONBLOCK)?;
    loop {
        match read(pipe, buf) {
            Ok([]) => return Ok(()),
            Ok(bytes) => sink.take(bytes),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Reaps every exited child; records the command's status when it is one,
/// and says whether it was.
fn reap(command: Pid, termination: &mut Option<Termination>) -> io::Result<bool> {
    let mut found = false;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => {
                *termination = Some(Termination::Exited(code));
                found = true;
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                *termination = Some(Termination::Signaled(signal as i32));
                found = true;
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(found),
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
