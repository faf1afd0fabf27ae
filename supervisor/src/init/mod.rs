//! The job's init: pid 1 of the job's namespaces, a clone of the spawner
//! ([`crate::spawner`]) that runs on without an exec. It is single-threaded
//! and owes the supervisor nothing once the command runs:
//!
//! 1. reads its [`InitSpec`] from the control socket, with the job's
//!    directory and log ([`JobFiles`]);
//! 2. builds the job's sandbox ([`sandbox`]): the host's tree read-only
//!    with its private parts masked, a fresh `/proc` and `/sys`, a `/dev`
//!    of its own, private temporary directories, its work directory, `lo`
//!    up, its hostname;
//! 3. starts the command ([`command`]), which drops its privileges, resets
//!    its resource limits and installs the seccomp filter ([`seccomp`])
//!    before its exec, and tells the supervisor whether the exec succeeded;
//! 4. exempts itself from the OOM killer;
//! 5. pumps the command's output into the log, forwards SIGTERM/SIGINT,
//!    reaps orphans ([`pump`]);
//! 6. when the command has ended, kills and reaps whatever is left of the
//!    job, drains the last output, sends the [`ExitRecord`] on the control
//!    socket (the supervisor ends the job there), writes it in the job's
//!    directory, flushes the log and exits.
//!
//! Because the init, not the supervisor, holds the output pipe and records the
//! exit, a supervisor restart loses neither bytes nor exit statuses.

/// Writes one line to stderr (the supervisor's log) as `eprintln!` does,
/// except that a line that cannot be written (stderr on a full disk) is
/// lost, where `eprintln!` would panic: the init must go on to record how
/// its job ended.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use say;

mod command;
mod pump;
pub mod sandbox;
pub mod seccomp;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use jobworker_ipc::UnixMicros;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::handoff::{self, EXIT_FILE, ExitRecord, InitReport, InitSpec, JobFiles};
use crate::{atomic, sys};

/// The signals the init handles through its signalfd.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGCHLD,
    ] {
        set.add(signal);
    }
    set
}

/// Runs the init with its control socket (at [`sys::INIT_CONTROL_FD`]),
/// exempting itself from the OOM killer if `oom_exempt` (the host allows
/// it); the process exits with the result. It exits at once: nothing is
/// buffered (stderr is not), and the C library's and Rust's exit handlers
/// would only fault in pages of the spawner's memory that the init never
/// touched.
pub fn main(control: OwnedFd, oom_exempt: bool) -> ! {
    match run(control, oom_exempt) {
        Ok(()) => sys::exit_now(0),
        Err(message) => {
            say!("jobworker-init: {message}");
            sys::exit_now(1)
        }
    }
}

fn run(control: OwnedFd, oom_exempt: bool) -> Result<(), String> {
    // Whatever else the spawner held.
    sys::close_fds_from(sys::INIT_CONTROL_FD + 1, sys::CloseMode::Close)
        .map_err(|e| format!("closing inherited fds: {e}"))?;
    // Held until the end (the exit record goes there too), never by the command.
    rustix::io::fcntl_setfd(&control, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| format!("control socket: {e}"))?;
    let mut control = UnixStream::from(control);
    // Its own session: a terminal's Ctrl-C or hangup that reaches the
    // supervisor's process group must not reach the jobs.
    nix::unistd::setsid().map_err(|e| format!("starting a session: {e}"))?;
    let (spec, files) =
        handoff::read_spec(&mut control).map_err(|e| format!("reading the job spec: {e}"))?;
    // A cgroup namespace rooted at the job's cgroup: a spare init was cloned
    // into another and moved into the job's before its spec came.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| format!("making the job's cgroup namespace: {e}"))?;

    let signals = handled_signals();
    // Exactly these: the spawner, and so its clone, has every signal blocked.
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&signals), None)
        .map_err(|e| format!("blocking signals: {e}"))?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("creating the signalfd: {e}"))?;

    let started = start(&spec, files);
    let started_at = UnixMicros::now();
    let report = match &started {
        Ok(_) => InitReport::Started,
        Err(message) => InitReport::Failed(message.clone()),
    };
    // The supervisor may be gone (restarted); the job goes on regardless.
    let _ = handoff::write_message(&mut control, &report);
    let Started {
        child,
        output,
        files: JobFiles { dir: job_dir, log },
    } = started?;
    // Off the start's critical path: the supervisor has its answer.
    if oom_exempt {
        exempt_from_the_oom_killer();
    }
    // Room for the exit record, made now: a job that fills its disk still
    // gets its exit status recorded (best effort: a disk already full, or
    // one that cannot preallocate, gets the plain write at the end).
    let exit_file = atomic::Prepared::new(&job_dir, EXIT_FILE.as_ref(), EXIT_ROOM)
        .map_err(|e| say!("jobworker-init: making room for the exit record: {e}"))
        .ok();

    let outcome = match pump::run(child, output, log, spec.output_cap, &signal_fd) {
        Ok(outcome) => outcome,
        Err(e) => {
            if let Some(prepared) = exit_file {
                prepared.abandon(&job_dir);
            }
            return Err(format!("pumping output: {e}"));
        }
    };
    let record = ExitRecord {
        termination: outcome.termination,
        stopped: outcome.stopped,
        output_bytes: outcome.output_bytes,
        truncated_bytes: outcome.dropped_bytes,
        disk_full_bytes: outcome.lost_bytes,
        started_at_us: Some(started_at),
        ended_at_us: outcome.ended_at,
    };
    // The message first: the supervisor that started the job learns of its
    // end from it (every other process of the job is gone, killed and
    // reaped above) without reading the file, even if that cannot be
    // written. The file next, at once (unsynced, into room made at the
    // start: no wait on the disk), so that a supervisor restarted from here
    // on finds the end the followers were told. The log's flush last, off
    // the followers' path and before the init's exit, on which the
    // supervisor records the end.
    let _ = handoff::write_message(&mut control, &record);
    let written = write_exit_record(&job_dir, exit_file, &record)
        .map_err(|e| format!("writing {}: {e}", spec.job_dir.join(EXIT_FILE).display()));
    pump::flush(outcome.log.as_ref());
    written
}

/// The room made for the exit record at the job's start: more than a
/// record takes, in any file system's blocks.
const EXIT_ROOM: u64 = 4096;

/// Writes the exit record: into the file prepared at the start if there is
/// one (it needs no new room), else (or if that fails) as a plain atomic
/// write.
fn write_exit_record(
    job_dir: &File,
    prepared: Option<atomic::Prepared>,
    record: &ExitRecord,
) -> std::io::Result<()> {
    if let Some(prepared) = prepared {
        match prepared.commit_json(job_dir, record) {
            Ok(()) => return Ok(()),
            Err(e) => say!("jobworker-init: writing the prepared exit record: {e}"),
        }
    }
    atomic::write_json_at(job_dir, EXIT_FILE.as_ref(), record)
}

/// The OOM killer should pick the job's processes, not the init that
/// records how they ended (the command, forked before this, keeps the
/// default score). Where the host does not allow it (no CAP_SYS_RESOURCE, as
/// in some containers), the init runs unexempted: the spawner said so once.
fn exempt_from_the_oom_killer() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        say!("jobworker-init: cannot exempt the init from the OOM killer: {e}");
    }
}

/// A started command and what the init keeps of its start.
struct Started {
    child: nix::unistd::Pid,
    output: OwnedFd,
    files: JobFiles,
}

/// Builds the sandbox and starts the command; keeps the job's directory and
/// log (the job cannot reach either: the state directory is root's alone).
fn start(spec: &InitSpec, files: JobFiles) -> Result<Started, String> {
    let prepared = command::prepare(spec)?;
    sandbox::build(spec)?;
    let (child, output) = command::spawn(&prepared, spec)?;
    Ok(Started {
        child,
        output,
        files,
    })
}
