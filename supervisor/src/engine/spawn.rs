//! Starting a job's init: its [`InitSpec`] written into a socket pair (as
//! much as the socket holds: all of any ordinary spec, so that the init reads
//! it at once), the job's directory and log with it ([`JobFiles`]), the init
//! cloned into the job's cgroup and namespaces by the spawner
//! ([`crate::spawner`]), which this module starts and keeps running; or an
//! init cloned ahead of its job ([`Spare`]) moved into the job's cgroup and
//! given the spec then. Then, asynchronously, the rest of the spec and the
//! wait for the init's report on the exec.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cgroup::{CgroupError, JobCgroup};
use crate::handoff::{self, ExitRecord, InitReport, InitSpec, JobFiles};
use crate::spawner::{self, RequestError};
use crate::sys;

/// How long an init may take to set up and exec the command.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the spawner may take to answer a request: a clone3 takes about
/// a millisecond; one that takes this long is stuck, and the spawner is
/// replaced.
const SPAWNER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a job's init could not be started (nothing of it runs).
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The init program's path cannot be passed to exec.
    #[error("the init program path {} contains a NUL byte", path.display())]
    ProgramPath {
        /// The path.
        path: PathBuf,
    },
    /// The spawner could not be started.
    #[error("starting the init spawner {}: {source}", path.display())]
    StartSpawner {
        /// The init program.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The spawner did not answer (it is replaced for the next start).
    #[error("{0}")]
    Spawner(#[source] RequestError),
    /// The job's cgroup could not be opened for `CLONE_INTO_CGROUP`.
    #[error("opening the job's cgroup: {0}")]
    OpenCgroup(#[source] CgroupError),
    /// The spare init could not be moved into the job's cgroup.
    #[error("moving the spare init into the job's cgroup: {0}")]
    Adopt(#[source] CgroupError),
    /// The job spec could not be encoded.
    #[error("encoding the job spec: {0}")]
    Encode(#[source] io::Error),
    /// The socket pair to the init could not be made, or the spec written.
    #[error("creating the control socket: {0}")]
    ControlSocket(#[source] io::Error),
    /// clone3 refused: its errno says whether the host is out of something.
    #[error("clone3 into {}: {source}", cgroup.display())]
    Clone {
        /// The job's cgroup directory.
        cgroup: PathBuf,
        /// The error, with clone3's errno.
        #[source]
        source: io::Error,
    },
}

/// Why a started init gave no report on its exec.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Our end of the control socket could not be handed to tokio.
    #[error("control socket: {0}")]
    Socket(#[source] io::Error),
    /// The init said nothing in time.
    #[error("the job's init did not report within {} s", REPORT_TIMEOUT.as_secs())]
    Timeout,
    /// The job spec could not be sent.
    #[error("sending the job spec to its init: {0}")]
    Send(#[source] io::Error),
    /// The control socket closed before a report came.
    #[error("the job's init exited before reporting ({0})")]
    Exited(#[source] io::Error),
    /// The report's length prefix is out of bounds.
    #[error("the job's init: {0}")]
    Length(#[source] io::Error),
    /// The report could not be read.
    #[error("reading the init's report: {0}")]
    Read(#[source] io::Error),
    /// The report is not an [`InitReport`].
    #[error("decoding the init's report: {0}")]
    Decode(#[source] serde_json::Error),
}

/// A started init, before its report.
pub struct Spawned {
    /// The init's host pid.
    pub pid: u32,
    /// A pidfd of it.
    pub pidfd: OwnedFd,
    /// What is left of the handoff: the report.
    pub handoff: Handoff,
}

/// The control socket of a started init.
pub struct Handoff {
    control: UnixStream,
    /// The part of the spec's message the socket did not hold yet.
    rest: Vec<u8>,
}

/// The spawner of this engine's inits: started with the engine, started
/// again by the first start after it died or stopped answering. Starts go
/// to it one at a time, each on the engine thread that runs it.
pub struct Spawner {
    /// The init program (the spawner is the init program's process).
    program: CString,
    /// The running spawner, if any.
    running: Mutex<Option<SpawnerProcess>>,
}

/// A running spawner.
struct SpawnerProcess {
    /// Our end of its socket.
    socket: OwnedFd,
    /// Its pid, for the log.
    pid: u32,
    /// A pidfd of it (our child), to end and reap it.
    pidfd: OwnedFd,
}

impl Spawner {
    /// Starts the spawner, `init_program`. Blocks until it says it is ready
    /// (a few milliseconds) or fails.
    pub fn start(init_program: &Path) -> Result<Self, SpawnError> {
        let program = CString::new(init_program.as_os_str().as_bytes()).map_err(|_| {
            SpawnError::ProgramPath {
                path: init_program.to_path_buf(),
            }
        })?;
        let spawner = Self {
            program,
            running: Mutex::new(None),
        };
        let process = spawner.launch()?;
        *spawner.lock() = Some(process);
        Ok(spawner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SpawnerProcess>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn launch(&self) -> Result<SpawnerProcess, SpawnError> {
        let failed = |source| SpawnError::StartSpawner {
            path: PathBuf::from(std::ffi::OsStr::from_bytes(self.program.as_bytes())),
            source,
        };
        let (ours, theirs) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| failed(e.into()))?;
        rustix::net::sockopt::set_socket_timeout(
            &ours,
            rustix::net::sockopt::Timeout::Recv,
            Some(SPAWNER_TIMEOUT),
        )
        .map_err(|e| failed(e.into()))?;
        let argv = [spawner::INIT_NAME.to_owned()];
        let spawned =
            sys::spawn_with_control(theirs.as_fd(), &self.program, &argv, &[]).map_err(failed)?;
        drop(theirs);
        let process = SpawnerProcess {
            socket: ours,
            pid: spawned.pid,
            pidfd: spawned.pidfd,
        };
        if let Err(e) = spawner::wait_ready(process.socket.as_fd()) {
            return Err(failed(process.failed_start(e)));
        }
        tracing::debug!(pid = process.pid, "the init spawner started");
        Ok(process)
    }

    /// Writes `spec` into a new control socket, with the job's `files`, and
    /// has the spawner clone the init of a job into `cgroup` with the other
    /// end. Blocks until the spawner answers, about a millisecond (other
    /// starts wait their turn).
    pub fn clone_init(
        &self,
        cgroup: &JobCgroup,
        spec: &InitSpec,
        files: &JobFiles,
    ) -> Result<Spawned, SpawnError> {
        let (control, theirs) = control_pair()?;
        // Written first, so that the init reads it at once.
        let rest = write_spec(&control, spec, files)?;
        let spawned = self.clone_into(cgroup, theirs)?;
        Ok(Spawned {
            pid: spawned.pid,
            pidfd: spawned.pidfd,
            handoff: Handoff { control, rest },
        })
    }

    /// Has the spawner clone an init into `cgroup` ahead of its job: it
    /// waits for its spec ([`Spare::hand_over`]). Blocks until the spawner
    /// answers.
    pub fn clone_spare(&self, cgroup: &JobCgroup) -> Result<Spare, SpawnError> {
        let (control, theirs) = control_pair()?;
        let spawned = self.clone_into(cgroup, theirs)?;
        Ok(Spare {
            init: Some((spawned, control)),
        })
    }

    /// Has the spawner clone an init into `cgroup` with `control`, the
    /// init's end of its control socket.
    fn clone_into(&self, cgroup: &JobCgroup, control: OwnedFd) -> Result<sys::Spawned, SpawnError> {
        let cgroup_fd = cgroup.open_fd().map_err(SpawnError::OpenCgroup)?;
        match self.request(cgroup_fd.as_fd(), control.as_fd()) {
            Ok(spawned) => Ok(spawned),
            Err(SpawnError::Spawner(RequestError::Clone(source))) => Err(SpawnError::Clone {
                cgroup: cgroup.path().to_path_buf(),
                source,
            }),
            // The spawner is gone (dead and reaped) after it may have
            // cloned the init: if it did, the init is in the cgroup, reading
            // its control socket, and goes on (else it would run unknown,
            // and a retry twice).
            Err(SpawnError::Spawner(RequestError::Answer(e))) => {
                match super::recovery::find_init(cgroup) {
                    Some((pid, pidfd)) => {
                        tracing::warn!(pid, error = %e, "the init spawner failed after cloning a job's init; the start goes on with it");
                        Ok(sys::Spawned { pid, pidfd })
                    }
                    None => Err(SpawnError::Spawner(RequestError::Answer(e))),
                }
            }
            Err(other) => Err(other),
        }
    }

    /// One request to the spawner, started first if it is not running. A
    /// request it never saw is sent again to a new spawner, once; after one
    /// it may have seen and not answered, the spawner is killed and reaped
    /// here (so that no clone of it can still appear), and another is
    /// started for the next job.
    fn request(
        &self,
        cgroup: std::os::fd::BorrowedFd<'_>,
        control: std::os::fd::BorrowedFd<'_>,
    ) -> Result<sys::Spawned, SpawnError> {
        let mut running = self.lock();
        let mut resent = false;
        loop {
            let process = match running.take() {
                Some(process) => process,
                None => self.launch()?,
            };
            match spawner::request(process.socket.as_fd(), cgroup, control) {
                Ok(spawned) => {
                    *running = Some(process);
                    return Ok(spawned);
                }
                Err(RequestError::Clone(e)) => {
                    *running = Some(process);
                    return Err(SpawnError::Spawner(RequestError::Clone(e)));
                }
                Err(RequestError::Unseen(e)) if !resent => {
                    tracing::error!(pid = process.pid, error = %e, "the init spawner is gone; starting another");
                    resent = true;
                }
                Err(e) => {
                    tracing::error!(pid = process.pid, error = %e, "the init spawner failed; another is started for the next job");
                    return Err(SpawnError::Spawner(e));
                }
            }
        }
    }
}

/// A new control socket: our end (non-blocking: the spec is written as far
/// as it fits, the rest with the report) and the init's.
fn control_pair() -> Result<(UnixStream, OwnedFd), SpawnError> {
    let (ours, theirs) = UnixStream::pair().map_err(SpawnError::ControlSocket)?;
    ours.set_nonblocking(true)
        .map_err(SpawnError::ControlSocket)?;
    Ok((ours, theirs.into()))
}

/// Writes `spec` into `control`, the job's `files` with its first bytes (a
/// fresh socket has room for them), as much of the rest as fits now; what
/// is left to send with the report.
fn write_spec(
    mut control: &UnixStream,
    spec: &InitSpec,
    files: &JobFiles,
) -> Result<Vec<u8>, SpawnError> {
    let mut message = Vec::new();
    handoff::write_message(&mut message, spec).map_err(SpawnError::Encode)?;
    let mut sent =
        handoff::send_spec(control.as_fd(), &message, files).map_err(SpawnError::ControlSocket)?;
    while sent < message.len() {
        match control.write(&message[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(SpawnError::ControlSocket(e)),
        }
    }
    message.drain(..sent);
    Ok(message)
}

/// An init cloned ahead of its job ([`Spawner::clone_spare`]), waiting for
/// its spec in the cgroup it was cloned into. Dropped without a job, it is
/// killed and reaped. Blocks then.
pub struct Spare {
    init: Option<(sys::Spawned, UnixStream)>,
}

impl Spare {
    /// Gives the spare its job: moves it into the job's `cgroup`, then
    /// writes `spec` and the job's `files` for it. On an error the spare
    /// is killed and reaped (nothing of the job ran).
    pub fn hand_over(
        mut self,
        cgroup: &JobCgroup,
        spec: &InitSpec,
        files: &JobFiles,
    ) -> Result<Spawned, SpawnError> {
        let Some((spawned, control)) = self.init.take() else {
            return Err(SpawnError::ControlSocket(
                io::ErrorKind::NotConnected.into(),
            ));
        };
        let handed = cgroup
            .adopt(spawned.pid)
            .map_err(SpawnError::Adopt)
            .and_then(|()| write_spec(&control, spec, files));
        match handed {
            Ok(rest) => Ok(Spawned {
                pid: spawned.pid,
                pidfd: spawned.pidfd,
                handoff: Handoff { control, rest },
            }),
            Err(e) => {
                kill_and_reap(&spawned.pidfd);
                Err(e)
            }
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if let Some((spawned, _)) = self.init.take() {
            kill_and_reap(&spawned.pidfd);
        }
    }
}

/// Kills the process behind `pidfd` (our child: an init that will not get
/// its job, or a spawner) and reaps it. Blocks until it has exited.
fn kill_and_reap(pidfd: &OwnedFd) {
    let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
    let _ = rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd.as_fd()),
        rustix::process::WaitIdOptions::EXITED,
    );
}

impl SpawnerProcess {
    /// Why a spawner that did not become ready failed, with its exit status
    /// if it exited (it wrote its reason to the log); it is killed and
    /// reaped.
    fn failed_start(self, error: io::Error) -> io::Error {
        if error.kind() == io::ErrorKind::WouldBlock {
            return io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "it did not say it was ready within {} s",
                    SPAWNER_TIMEOUT.as_secs()
                ),
            );
        }
        if error.kind() != io::ErrorKind::UnexpectedEof {
            return io::Error::new(error.kind(), format!("it did not become ready: {error}"));
        }
        let status = rustix::process::waitid(
            rustix::process::WaitId::PidFd(self.pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        );
        match status {
            Ok(Some(status)) => match (status.exit_status(), status.terminating_signal()) {
                (Some(127), _) => io::Error::other("its exec failed (exit status 127)"),
                (Some(code), _) => io::Error::other(format!(
                    "it exited with status {code} before it was ready (its reason is in this log, \
                     from `jobworker-init (spawner)`)"
                )),
                (_, Some(signal)) => io::Error::other(format!(
                    "it was killed by signal {signal} before it was ready"
                )),
                _ => error,
            },
            _ => error,
        }
    }
}

impl Drop for SpawnerProcess {
    /// Ends the spawner (it would end by itself once its socket closes) and
    /// reaps it: SIGKILL, so that the wait is short.
    fn drop(&mut self) {
        kill_and_reap(&self.pidfd);
    }
}

impl Handoff {
    /// Sends the rest of the spec and waits for the init's report, within
    /// [`REPORT_TIMEOUT`]; with the control socket, on which the init sends
    /// its exit record when the job ends.
    pub async fn report(self) -> Result<(InitReport, ExitWatch), ReportError> {
        let mut control =
            tokio::net::UnixStream::from_std(self.control).map_err(ReportError::Socket)?;
        let report = tokio::time::timeout(REPORT_TIMEOUT, exchange(&mut control, &self.rest))
            .await
            .unwrap_or(Err(ReportError::Timeout))?;
        Ok((report, ExitWatch { control }))
    }
}

/// The control socket of a running init, on which its exit record comes.
pub struct ExitWatch {
    control: tokio::net::UnixStream,
}

impl ExitWatch {
    /// The exit record the init sends as it ends; `None` if it ended without
    /// one (killed, or it failed to record), or sent one that does not
    /// decode.
    pub async fn exit_record(mut self) -> Option<ExitRecord> {
        let mut prefix = [0; 4];
        self.control.read_exact(&mut prefix).await.ok()?;
        let mut body = vec![0; handoff::body_len(prefix).ok()?];
        self.control.read_exact(&mut body).await.ok()?;
        serde_json::from_slice(&body).ok()
    }
}

async fn exchange(
    control: &mut tokio::net::UnixStream,
    rest: &[u8],
) -> Result<InitReport, ReportError> {
    control.write_all(rest).await.map_err(ReportError::Send)?;
    let mut prefix = [0; 4];
    control
        .read_exact(&mut prefix)
        .await
        .map_err(ReportError::Exited)?;
    let len = handoff::body_len(prefix).map_err(ReportError::Length)?;
    let mut body = vec![0; len];
    control
        .read_exact(&mut body)
        .await
        .map_err(ReportError::Read)?;
    serde_json::from_slice(&body).map_err(ReportError::Decode)
}
