//! Starting a job's init: clone3 into the job's cgroup and namespaces (see
//! [`crate::sys::clone_init`]), hand it its [`InitSpec`] over a socket pair,
//! and wait for its report on the exec.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cgroup::JobCgroup;
use crate::handoff::{self, InitReport, InitSpec};
use crate::sys;

/// How long an init may take to set up and exec the command.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// A started init and its answer.
pub struct Started {
    /// The init's host pid.
    pub pid: u32,
    /// A pidfd of it.
    pub pidfd: OwnedFd,
    /// What it reported (an error if it never did).
    pub report: Result<InitReport, String>,
}

/// Clones the init of a job into `cgroup` and hands it `spec`.
pub async fn start(
    init_program: &Path,
    cgroup: &JobCgroup,
    spec: &InitSpec,
) -> Result<Started, String> {
    let program = CString::new(init_program.as_os_str().as_bytes())
        .map_err(|_| "the init program path contains a NUL byte".to_owned())?;
    let argv = [program.clone(), c"init".to_owned()];
    let cgroup_fd = cgroup
        .open_fd()
        .map_err(|e| format!("opening the job's cgroup: {e}"))?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| format!("creating the control socket: {e}"))?;
    let spawned = sys::clone_init(cgroup_fd.as_fd(), theirs.as_fd(), &program, &argv, &[])
        .map_err(|e| format!("clone3 into {}: {e}", cgroup.path().display()))?;
    drop(theirs);

    // From here on the init runs: every failure becomes its report, so that
    // the caller kills and reaps it.
    let report = match ours
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(ours))
    {
        Ok(mut control) => tokio::time::timeout(REPORT_TIMEOUT, exchange(&mut control, spec))
            .await
            .unwrap_or_else(|_| Err("the job's init did not report within 30 s".into())),
        Err(e) => Err(format!("control socket: {e}")),
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
) -> Result<InitReport, String> {
    let mut message = Vec::new();
    handoff::write_message(&mut message, spec)
        .map_err(|e| format!("encoding the job spec: {e}"))?;
    control
        .write_all(&message)
        .await
        .map_err(|e| format!("sending the job spec to its init: {e}"))?;
    let mut prefix = [0; 4];
    control
        .read_exact(&mut prefix)
        .await
        .map_err(|e| format!("the job's init exited before reporting ({e})"))?;
    let len = handoff::body_len(prefix).map_err(|e| format!("the job's init: {e}"))?;
    let mut body = vec![0; len];
    control
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("reading the init's report: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("decoding the init's report: {e}"))
}
