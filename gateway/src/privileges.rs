//! Dropping root: started as root, the gateway reads its key and binds its
//! port, then (still single-threaded, before accepting any connection)
//! switches to the configured account: supplementary groups (the account's,
//! from the group database), then real, effective and saved gid, then uid.
//! The bounding set is emptied first (it needs CAP_SETPCAP), and the kernel
//! clears every other capability set when the uids leave 0. It then sets
//! `no_new_privs` and checks the result: no uid or gid 0 left, no capability
//! in the effective, permitted, ambient or bounding sets. If any step fails, the
//! gateway does not start.

use std::ffi::CString;

use nix::unistd::{
    Gid, Uid, getgrouplist, getgroups, getresgid, getresuid, setgroups, setresgid, setresuid,
};

use crate::config::RunAs;

/// Why the gateway cannot run unprivileged.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Started as root without an account to switch to.
    #[error(
        "started as root, but run_as_user is not set: the gateway never runs as root; \
         set run_as_user (and run_as_group) to an unprivileged account"
    )]
    NoRunAsUser,
    /// A system call failed.
    #[error("{op}: {error}")]
    Sys {
        /// What was being done.
        op: String,
        /// The error.
        error: nix::Error,
    },
    /// A privilege is left after the switch.
    #[error("still privileged: {0}")]
    StillPrivileged(String),
}

/// The ids the gateway runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
    /// Whether this process switched from root.
    pub switched: bool,
}

/// Switches to `run_as` when running as root, then checks that no
/// privilege is left. Call it while the process has a single thread.
pub fn drop_privileges(run_as: Option<&RunAs>) -> Result<Running, PrivilegeError> {
    let uids = getresuid().map_err(sys("reading the uids"))?;
    let root = [uids.real, uids.effective, uids.saved]
        .iter()
        .any(|uid| uid.is_root());
    if root {
        let run_as = run_as.ok_or(PrivilegeError::NoRunAsUser)?;
        switch(run_as)?;
    } else if let Some(run_as) = run_as
        && uids.effective.as_raw() != run_as.uid
    {
        tracing::warn!(
            uid = uids.effective.as_raw(),
            run_as_user = %run_as.user,
            "not started as root, so staying with the uid it was started with"
        );
    }
    nix::sys::prctl::set_no_new_privs().map_err(sys("setting no_new_privs"))?;
    let mut running = verify()?;
    running.switched = root;
    if root {
        let status = std::fs::read_to_string("/proc/self/status").map_err(|e| {
            PrivilegeError::StillPrivileged(format!("cannot read /proc/self/status: {e}"))
        })?;
        let bounding = status
            .lines()
            .find_map(|line| line.strip_prefix("CapBnd:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
        if bounding != Some(0) {
            return Err(PrivilegeError::StillPrivileged(format!(
                "the capability bounding set is not empty ({bounding:?})"
            )));
        }
    }
    Ok(running)
}

fn switch(run_as: &RunAs) -> Result<(), PrivilegeError> {
    let uid = Uid::from_raw(run_as.uid);
    let gid = Gid::from_raw(run_as.gid);
    let name = CString::new(run_as.user.as_str()).map_err(|_| {
        PrivilegeError::StillPrivileged(format!("the user name {:?} has a NUL", run_as.user))
    })?;
    let groups =
        getgrouplist(&name, gid).map_err(sys(&format!("listing the groups of {}", run_as.user)))?;
    if groups.iter().any(|g| g.as_raw() == 0) {
        return Err(PrivilegeError::StillPrivileged(format!(
            "{} is a member of group 0 (root); use an account outside it",
            run_as.user
        )));
    }
    drop_bounding_set()?;
    setgroups(&groups).map_err(sys("setting the supplementary groups"))?;
    setresgid(gid, gid, gid).map_err(sys(&format!("switching to gid {gid}")))?;
    setresuid(uid, uid, uid).map_err(sys(&format!("switching to uid {uid}")))?;
    Ok(())
}

/// Empties the capability bounding set, so that nothing the gateway ever
/// executes could regain a capability. Needs CAP_SETPCAP: before the switch.
fn drop_bounding_set() -> Result<(), PrivilegeError> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|&last| last < 64)
        .ok_or_else(|| {
            PrivilegeError::StillPrivileged("cannot read /proc/sys/kernel/cap_last_cap".into())
        })?;
    for cap in 0..=last {
        rustix::thread::remove_capability_from_bounding_set(
            rustix::thread::CapabilitySet::from_bits_retain(1 << cap),
        )
        .map_err(|e| PrivilegeError::Sys {
            op: format!("dropping capability {cap} from the bounding set"),
            error: nix::Error::from_raw(e.raw_os_error()),
        })?;
    }
    Ok(())
}

fn sys(op: &str) -> impl FnOnce(nix::Error) -> PrivilegeError + '_ {
    move |error| PrivilegeError::Sys {
        op: op.to_owned(),
        error,
    }
}

/// Checks that this process has no uid or gid 0 and no capability.
pub fn verify() -> Result<Running, PrivilegeError> {
    let uids = getresuid().map_err(sys("reading the uids"))?;
    let gids = getresgid().map_err(sys("reading the gids"))?;
    let groups = getgroups().map_err(sys("reading the supplementary groups"))?;
    if [uids.real, uids.effective, uids.saved]
        .iter()
        .any(|uid| uid.is_root())
    {
        return Err(PrivilegeError::StillPrivileged(format!(
            "uids (real, effective, saved) are ({}, {}, {})",
            uids.real, uids.effective, uids.saved
        )));
    }
    if [gids.real, gids.effective, gids.saved]
        .iter()
        .chain(&groups)
        .any(|gid| gid.as_raw() == 0)
    {
        return Err(PrivilegeError::StillPrivileged(
            "group 0 (root) is among the process's groups".into(),
        ));
    }
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| {
        PrivilegeError::StillPrivileged(format!("cannot read /proc/self/status to check: {e}"))
    })?;
    let caps = capabilities(&status).map_err(PrivilegeError::StillPrivileged)?;
    if caps.iter().any(|(_, set)| *set != 0) {
        let shown: Vec<String> = caps
            .iter()
            .map(|(name, set)| format!("{name} {set:016x}"))
            .collect();
        return Err(PrivilegeError::StillPrivileged(format!(
            "capabilities remain ({}); start the gateway as root with run_as_user, or \
             without capabilities",
            shown.join(", ")
        )));
    }
    Ok(Running {
        uid: uids.effective.as_raw(),
        gid: gids.effective.as_raw(),
        switched: false,
    })
}

/// The effective, permitted and ambient capability sets in a
/// `/proc/<pid>/status` text.
pub fn capabilities(status: &str) -> Result<[(&'static str, u64); 3], String> {
    let set = |name: &'static str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .ok_or_else(|| format!("no {name} line in /proc/self/status"))
            .and_then(|hex| {
                u64::from_str_radix(hex.trim(), 16)
                    .map_err(|e| format!("{name} in /proc/self/status: {e}"))
            })
            .map(|value| (name, value))
    };
    Ok([set("CapEff")?, set("CapPrm")?, set("CapAmb")?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_sets_are_read() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
                      CapEff:\t00000000000000ff\nCapBnd:\t000001ffffffffff\n\
                      CapAmb:\t0000000000000000\n";
        assert_eq!(
            capabilities(status),
            Ok([("CapEff", 0xff), ("CapPrm", 0), ("CapAmb", 0)])
        );
        capabilities("CapEff:\tzz\n").unwrap_err();
        assert!(capabilities("").unwrap_err().contains("CapEff"));
    }

    #[test]
    fn root_without_an_account_is_refused() {
        // The test process must not switch, so only the refusal is checked.
        assert!(
            getresuid().unwrap().effective.is_root(),
            "the gateway's tests run as root"
        );
        assert!(matches!(
            drop_privileges(None),
            Err(PrivilegeError::NoRunAsUser)
        ));
        assert!(verify().is_err(), "root is privileged");
    }
}
