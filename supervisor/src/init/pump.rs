//! The init's event loop: output from the pipe into the log (up to the cap,
//! the rest drained and counted), SIGTERM/SIGINT forwarded to every process
//! of the job, SIGUSR1 ("stop now") turned into SIGKILL for every process of the job,
//! orphans reaped. When the command has ended, whatever is left of the job is
//! killed and reaped, and what remains in the pipe is drained (without waiting
//! for an end of file that a process outside the job could hold back).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use jobworker_ipc::{Termination, UnixMicros};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

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
    /// Bytes dropped over the cap (or because the log could not be written).
    pub dropped_bytes: u64,
}

/// Counts output and writes what fits under the cap into the log.
struct Sink {
    log: File,
    cap: u64,
    written: u64,
    dropped: u64,
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
            failed: false,
        }
    }

    fn take(&mut self, data: &[u8]) {
        let room = usize::try_from(self.cap.saturating_sub(self.written)).unwrap_or(usize::MAX);
        let mut keep = if self.failed { 0 } else { data.len().min(room) };
        if keep > 0 {
            match self.log.write_all(&data[..keep]) {
                Ok(()) => self.written += keep as u64,
                Err(e) => {
                    eprintln!(
                        "jobworker-init: writing the output log: {e}; \
                         output is dropped from here on"
                    );
                    self.failed = true;
                    keep = 0;
                }
            }
        }
        self.dropped += (data.len() - keep) as u64;
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
    let mut buf = vec![0u8; 64 * 1024];

    while termination.is_none() {
        let ready = wait(signals, output.as_ref())?;
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
        output_bytes: sink.written + sink.dropped,
        dropped_bytes: sink.dropped,
    })
}

/// Polls the signalfd and, while it is open, the output pipe until either
/// has something to read (or a signal interrupts the poll).
fn wait(signals: &SignalFd, output: Option<&File>) -> io::Result<Ready> {
    let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
    if let Some(pipe) = output {
        fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
    }
    match poll(&mut fds, PollTimeout::NONE) {
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
fn read_output(output: &mut Option<File>, sink: &mut Sink, buf: &mut [u8]) -> io::Result<()> {
    let Some(pipe) = output.as_mut() else {
        return Ok(());
    };
    match pipe.read(buf) {
        Ok(0) => *output = None,
        Ok(n) => sink.take(&buf[..n]),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => return Err(e),
    }
    Ok(())
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
/// drains the pipe if it is still open, and flushes the log to disk.
fn end_job(output: Option<File>, sink: &mut Sink, buf: &mut [u8]) -> io::Result<()> {
    // The job is its command: what it left behind goes with it. As pid 1,
    // kill(-1) reaches every other process of the namespace; collect them
    // all, so that none lingers as a zombie and none still writes.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while waitpid(Pid::from_raw(-1), None).is_ok() {}
    if let Some(mut pipe) = output {
        drain(&mut pipe, sink, buf)?;
    }
    sink.log.sync_data()
}

/// Reads what is left in the pipe once every process of the job is gone. It
/// does not wait for EOF: a process outside the job that got hold of the
/// pipe's write end must not keep the job from ending.
fn drain(pipe: &mut File, sink: &mut Sink, buf: &mut [u8]) -> io::Result<()> {
    rustix::fs::fcntl_setfl(&*pipe, rustix::fs::OFlags::NONBLOCK)?;
    loop {
        match pipe.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => sink.take(&buf[..n]),
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
