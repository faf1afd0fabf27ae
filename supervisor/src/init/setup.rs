//! Setting up the job's namespaces from the inside: the mount tree made
//! private (nothing the job mounts propagates to the host), a fresh `/proc`
//! of the job's own pid namespace, the loopback interface up, the hostname.

use nix::mount::{MsFlags, mount};

use crate::sys;

/// Sets up the namespaces of a freshly cloned init.
pub fn namespaces(hostname: &str) -> Result<(), String> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making the mount tree private: {e}"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mounting /proc: {e}"))?;
    sys::loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
    rustix::system::sethostname(hostname.as_bytes())
        .map_err(|e| format!("setting the hostname: {e}"))
}
