//! Setting up the job's namespaces from the inside: the mount tree made
//! private (nothing the job mounts propagates to the host), a fresh `/proc`
//! of the job's own pid namespace, a fresh read-only `/sys` of its network
//! namespace, the loopback interface up, the hostname,
//! and the init itself exempt from the OOM killer where the host allows it.

use nix::mount::{MsFlags, mount};

/// The init's OOM score adjustment.
pub const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";
/// The value that exempts a process from the OOM killer.
pub const OOM_EXEMPT: &str = "-1000";

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
    // A sysfs mounted here shows the job's network namespace: /sys/class/net
    // lists only lo, not the host's interfaces. Read-only: it is the host's
    // kernel all the same.
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mounting /sys: {e}"))?;
    sys::loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
    // The OOM killer should pick the job's processes, not the init that
    // records how they ended (the command puts its own score back). Where
    // the host does not allow it (no CAP_SYS_RESOURCE in a container), the
    // init runs unexempted.
    if let Err(e) = std::fs::write(OOM_SCORE_ADJ, OOM_EXEMPT) {
        eprintln!("jobworker-supervisor init: cannot exempt the init from the OOM killer: {e}");
    }
    rustix::system::sethostname(hostname.as_bytes())
        .map_err(|e| format!("setting the hostname: {e}"))
}
