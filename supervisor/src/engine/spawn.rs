//! Starting a job's init: clone3 into the job's cgroup and namespaces (see
//! [`crate::sys::clone_init`]), hand it its [`InitSpec`] over a socket pair,
//! and wait for its report on the exec.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cgroup::{CgroupError, JobCgroup};
use crate::handoff::{self, InitReport, InitSpec};
use crate::sys;

/// How long an init may take to set up and exec the command.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a job's init could not be started (nothing of it runs).
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The init program's path cannot be passed to exec.
    #[error("the init program path {} contains a NUL byte", path.display())]
    ProgramPath {
        /// The path.
        path: PathBuf,
    },
    /// The job's cgroup could not be opened for `CLONE_INTO_CGROUP`.
    #[error("opening the job's cgroup: {0}")]
    OpenCgroup(#[source] CgroupError),
    /// The socket pair to the init could not be made.
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
    /// The job spec could not be encoded.
    #[error("encoding the job spec: {0}")]
    Encode(#[source] io::Error),
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

/// A started init and its answer.
pub struct Started {
    /// The init's host pid.
    pub pid: u32,
    /// A pidfd of it.
    pub pidfd: OwnedFd,
    /// What it reported (an error if it never did).
    pub report: Result<InitReport, ReportError>,
}

/// Clones the init of a job into `cgroup` and hands it `spec`.
pub async fn start(
    init_program: &Path,
    cgroup: &JobCgroup,
    spec: &InitSpec,
) -> Result<Started, SpawnError> {
    let program =
        CString::new(init_program.as_os_str().as_bytes()).map_err(|_| SpawnError::ProgramPath {
            path: init_program.to_path_buf(),
        })?;
    let argv = [program.clone(), c"init".to_owned()];
    let cgroup_fd = cgroup.open_fd().map_err(SpawnError::OpenCgroup)?;
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(SpawnError::ControlSocket)?;
    let spawned = sys::clone_init(cgroup_fd.as_fd(), theirs.as_fd(), &program, &argv, &[])
        .map_err(|source| SpawnError::Clone {
            cgroup: cgroup.path().to_path_buf(),
            source,
        })?;
    drop(theirs);

    // From here on the init runs: every failure becomes its report, so that
    // the caller kills and reaps it.
    let report = match ours
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(ours))
    {
        Ok(mut control) => tokio::time::timeout(REPORT_TIMEOUT, exchange(&mut control, spec))
            .await
            .unwrap_or(Err(ReportError::Timeout)),
        Err(e) => Err(ReportError::Socket(e)),
    };
    Ok(Started {
        pid: spawned.pid,
        pidfd: spawned.pidfd,
        report,
    })
}

async fn exchange(
    control: &mut tokio::net::UnixStream,
    spec: &InitSpec,
) -> Result<InitReport, ReportError> {
    let mut message = Vec::new();
    handoff::write_message(&mut message, spec).map_err(ReportError::Encode)?;
    control
        .write_all(&message)
        .await
        .map_err(ReportError::Send)?;
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
