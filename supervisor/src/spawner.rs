//! The spawner: the one process that clones every job's init, and its
//! protocol with the supervisor.
//!
//! The supervisor is multithreaded, so a child it clones may run nothing but
//! raw system calls until it execs: a job's init would have to be exec'd,
//! which costs about as much as the rest of a job's start. The spawner is
//! `jobworker-init` exec'd once, by the supervisor's engine as it starts (and
//! again if it dies). It is single-threaded, so a fork-like clone3 of it may
//! run ordinary code: each job's init is such a clone, which goes straight on
//! as the init ([`crate::init`]) with no exec. The spawner holds no state
//! but whether inits may exempt themselves from the OOM killer (checked
//! once), opens nothing, handles no signal (all stay blocked) and exits when
//! the supervisor's end of its socket closes.
//!
//! The protocol, on a private `SOCK_SEQPACKET` socket pair, one request at a
//! time:
//! - the spawner sends the byte [`READY`] once it has set itself up (the
//!   supervisor waits for it, so that a spawner that cannot run fails the
//!   engine's start with its exit status, not the first job);
//! - the supervisor sends the byte [`REQUEST`] with two fds (`SCM_RIGHTS`):
//!   the job's cgroup and the init's end of its control socket, on which the
//!   job's spec is already waiting;
//! - the spawner clones the init into that cgroup and new namespaces, as a
//!   child of the supervisor ([`sys::clone_job_init`]), and answers with the
//!   init's pid (4 bytes, native order) and a pidfd of it, or with clone3's
//!   errno, negated;
//! - the clone puts its control socket at [`sys::INIT_CONTROL_FD`] and runs
//!   the init.
//!
//! Every init is a copy of the spawner's memory, so they share its address
//! space layout; none of it is reachable by the job, whose command runs
//! exec'd, under its own uid.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;

use crate::fdpass::{self, whole};
use crate::sys::{self, Cloned, Spawned};

/// The one request's byte.
pub const REQUEST: u8 = b'c';
/// The spawner's first message: it is ready for requests.
pub const READY: u8 = b'r';

/// The comm (`/proc/PID/comm`) of the spawner; each init sets its own back
/// to [`INIT_NAME`].
pub const SPAWNER_NAME: &std::ffi::CStr = c"jobworker-spawn";
/// The comm of a job's init (pid 1 of the job's view).
pub const INIT_NAME: &std::ffi::CStr = c"jobworker-init";

/// Runs the spawner until the supervisor closes its socket; in each clone,
/// runs the job's init instead. The process exits with the result.
pub fn main() -> ExitCode {
    match serve() {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(init)) => match init.into_control() {
            Ok((control, oom_exempt)) => crate::init::main(control, oom_exempt),
            Err(e) => {
                crate::init::say!("jobworker-init: taking the control socket: {e}");
                ExitCode::FAILURE
            }
        },
        Err(message) => {
            crate::init::say!("jobworker-init (spawner): {message}");
            ExitCode::FAILURE
        }
    }
}

/// A clone of the spawner, about to become a job's init.
struct NewInit {
    /// The spawner's socket to the supervisor, at [`sys::INIT_CONTROL_FD`].
    socket: OwnedFd,
    /// The init's control socket.
    control: OwnedFd,
    /// Whether inits may exempt themselves from the OOM killer here.
    oom_exempt: bool,
}

impl NewInit {
    /// Puts the control socket at [`sys::INIT_CONTROL_FD`], in place of the
    /// spawner's socket (which the init must not hold), and names the
    /// process; with whether the init may exempt itself from the OOM killer.
    fn into_control(self) -> io::Result<(OwnedFd, bool)> {
        let Self {
            mut socket,
            control,
            oom_exempt,
        } = self;
        rustix::io::dup2(&control, &mut socket)?;
        drop(control);
        rustix::thread::set_name(INIT_NAME)?;
        Ok((socket, oom_exempt))
    }
}

/// Whether this process may lower an OOM score (`CAP_SYS_RESOURCE`), as
/// each init does for itself; said once here when it may not (a container
/// without the capability), rather than by every job's init.
fn may_exempt_from_the_oom_killer() -> bool {
    let may = rustix::thread::capabilities(None).is_ok_and(|caps| {
        caps.effective
            .contains(rustix::thread::CapabilitySet::SYS_RESOURCE)
    });
    if !may {
        crate::init::say!(
            "jobworker-init (spawner): no CAP_SYS_RESOURCE here: jobs' inits run without an \
             exemption from the OOM killer"
        );
    }
    may
}

/// The spawner's loop: `Ok(None)` when the supervisor has gone, `Ok(Some)`
/// in a clone (the new init).
fn serve() -> Result<Option<NewInit>, String> {
    sys::close_fds_from(sys::INIT_CONTROL_FD + 1, sys::CloseMode::Close)
        .map_err(|e| format!("closing inherited fds: {e}"))?;
    let socket = sys::take_control_fd().map_err(|e| format!("its socket: {e}"))?;
    sys::single_threaded().map_err(|e| format!("cannot clone inits: {e}"))?;
    rustix::thread::set_name(SPAWNER_NAME).map_err(|e| format!("naming itself: {e}"))?;
    let oom_exempt = may_exempt_from_the_oom_killer();
    fdpass::send(socket.as_fd(), &[READY], &[]).map_err(|e| format!("telling it is ready: {e}"))?;
    loop {
        let answer = match receive(&socket).map_err(|e| format!("receiving a request: {e}"))? {
            Received::Closed => return Ok(None),
            Received::Malformed => Err(io::Error::from_raw_os_error(libc::EPROTO)),
            Received::Request { cgroup, control } => match sys::clone_job_init(cgroup.as_fd()) {
                Ok(Cloned::Child) => {
                    return Ok(Some(NewInit {
                        socket,
                        control,
                        oom_exempt,
                    }));
                }
                Ok(Cloned::Parent(spawned)) => Ok(spawned),
                Err(e) => Err(e),
            },
        };
        send_answer(&socket, answer).map_err(|e| format!("answering: {e}"))?;
    }
}

/// What the spawner received.
enum Received {
    /// The supervisor closed its end.
    Closed,
    /// Not a request (its fds, if any, are closed).
    Malformed,
    /// A request.
    Request {
        /// The job's cgroup.
        cgroup: OwnedFd,
        /// The init's control socket.
        control: OwnedFd,
    },
}

fn receive(socket: &OwnedFd) -> io::Result<Received> {
    let mut byte = [0_u8; 1];
    let (message, fds) = fdpass::receive(socket.as_fd(), &mut byte)?;
    if message.bytes == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    match <[OwnedFd; 2]>::try_from(fds) {
        Ok([cgroup, control]) if whole(&message) && byte == [REQUEST] => {
            Ok(Received::Request { cgroup, control })
        }
        _ => Ok(Received::Malformed),
    }
}

fn send_answer(socket: &OwnedFd, answer: io::Result<Spawned>) -> io::Result<()> {
    match &answer {
        Ok(spawned) => {
            let pid =
                i32::try_from(spawned.pid).map_err(|_| io::Error::other("pid out of range"))?;
            fdpass::send(socket.as_fd(), &pid.to_ne_bytes(), &[spawned.pidfd.as_fd()]).map(drop)
        }
        Err(e) => {
            let code = -e.raw_os_error().unwrap_or(libc::EIO);
            fdpass::send(socket.as_fd(), &code.to_ne_bytes(), &[]).map(drop)
        }
    }
}

/// Why the spawner cloned no init.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// clone3 failed in the spawner, with this errno: nothing was started.
    #[error("{0}")]
    Clone(#[source] io::Error),
    /// The spawner is gone without having read the request: it could not
    /// be sent, or the spawner's end closed with it unread (`ECONNRESET`).
    #[error("the init spawner is gone: {0}")]
    Unseen(#[source] io::Error),
    /// No well-formed answer came (the spawner died, hung or misbehaved);
    /// an init may have been started.
    #[error("the init spawner's answer: {0}")]
    Answer(#[source] io::Error),
}

/// Asks the spawner at the other end of `socket` for a job's init in
/// `cgroup` with the control socket `control`; blocks until it answers (or
/// the socket's receive timeout passes). One request at a time per socket.
pub fn request(
    socket: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    control: BorrowedFd<'_>,
) -> Result<Spawned, RequestError> {
    fdpass::send(socket, &[REQUEST], &[cgroup, control]).map_err(RequestError::Unseen)?;
    let mut code = [0_u8; 4];
    let (message, mut fds) = fdpass::receive(socket, &mut code).map_err(|e| {
        match e.raw_os_error() {
            // A Unix socket closed with data unread tells its peer so.
            Some(libc::ECONNRESET) => RequestError::Unseen(e),
            // The socket's receive timeout passed.
            Some(libc::EAGAIN) => RequestError::Answer(io::Error::new(
                io::ErrorKind::TimedOut,
                "none came in time (the spawner is stuck)",
            )),
            _ => RequestError::Answer(e),
        }
    })?;
    if message.bytes == 0 {
        return Err(RequestError::Answer(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "it exited",
        )));
    }
    let malformed =
        || RequestError::Answer(io::Error::new(io::ErrorKind::InvalidData, "malformed"));
    if message.bytes != code.len() || !whole(&message) {
        return Err(malformed());
    }
    let code = i32::from_ne_bytes(code);
    if code < 0 {
        return Err(RequestError::Clone(io::Error::from_raw_os_error(-code)));
    }
    match (u32::try_from(code), fds.pop(), fds.is_empty()) {
        (Ok(pid), Some(pidfd), true) if pid > 0 => Ok(Spawned { pid, pidfd }),
        _ => Err(malformed()),
    }
}

/// Waits for the spawner at the other end of `socket` to say it is ready
/// (see the module docs); an error if it exited (`UnexpectedEof`) or said
/// something else.
pub fn wait_ready(socket: BorrowedFd<'_>) -> io::Result<()> {
    let mut byte = [0_u8; 1];
    let (message, _) = fdpass::receive(socket, &mut byte)?;
    match (message.bytes, byte) {
        (0, _) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "it exited before it was ready",
        )),
        (1, [READY]) if whole(&message) => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it said something other than that it is ready",
        )),
    }
}
