//! Starting the job's command with everything it must not have taken away:
//! resource limits reset to [`RLIMITS`] (not the supervisor's), supplementary
//! groups cleared, uid/gid set to the job's, every capability dropped
//! (bounding, ambient, inheritable, permitted, effective), a fresh session
//! keyring, no_new_privs set, the seccomp filter installed, every signal at
//! its default action and none blocked, umask 022, stdin on `/dev/null`,
//! stdout and stderr on the output pipe, no other fd, the given environment
//! only.
//!
//! The command is started once the sandbox is complete ([`spawn`]), by a
//! vfork-like clone that shares the init's memory until it execs: no page
//! table is copied, the init waits, and the child runs on the init's CPU
//! rather than waking another. Exec errors are synchronous: the child
//! reports a failure on a close-on-exec pipe (an exec that succeeds closes
//! it with nothing written), so `spawn` returns only once the command runs
//! or it is known why it cannot.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::CpuSet;
use nix::sys::resource::Resource;
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::unistd::{Gid, Pid, Uid};
use rustix::thread::CapabilitySet;

use super::seccomp;
use crate::handoff::InitSpec;
use crate::sys;

/// A step of the child's preparation, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Stdio = 1,
    Limits = 2,
    Privileges = 3,
    Keyring = 4,
    WorkingDir = 5,
    Seccomp = 6,
    Exec = 7,
}

impl Step {
    fn from_byte(b: u8) -> Option<Self> {
        [
            Self::Stdio,
            Self::Limits,
            Self::Privileges,
            Self::Keyring,
            Self::WorkingDir,
            Self::Seccomp,
            Self::Exec,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }
}

/// A resource limit of the command: soft and hard. `None` is the job's
/// process limit (`max_processes`), which counts the processes of its uid.
type Rlimit = (Resource, Option<(u64, u64)>);

/// The command's resource limits, whatever the supervisor's are.
pub const RLIMITS: &[Rlimit] = &[
    (Resource::RLIMIT_CORE, Some((0, 0))),
    (Resource::RLIMIT_NOFILE, Some((1024, 524_288))),
    (Resource::RLIMIT_NPROC, None),
    (Resource::RLIMIT_STACK, Some((8 << 20, INFINITY))),
    (Resource::RLIMIT_MEMLOCK, Some((8 << 20, 8 << 20))),
    (Resource::RLIMIT_FSIZE, Some((INFINITY, INFINITY))),
    (Resource::RLIMIT_CPU, Some((INFINITY, INFINITY))),
    (Resource::RLIMIT_AS, Some((INFINITY, INFINITY))),
    (Resource::RLIMIT_DATA, Some((INFINITY, INFINITY))),
    (Resource::RLIMIT_LOCKS, Some((INFINITY, INFINITY))),
    (Resource::RLIMIT_MSGQUEUE, Some((819_200, 819_200))),
    (Resource::RLIMIT_NICE, Some((0, 0))),
    (Resource::RLIMIT_RTPRIO, Some((0, 0))),
    (Resource::RLIMIT_RTTIME, Some((INFINITY, INFINITY))),
];

const INFINITY: u64 = libc::RLIM_INFINITY;

/// Everything the child needs, prepared before the fork.
pub struct Prepared {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    working_dir: CString,
    uid: Uid,
    gid: Gid,
    last_cap: u32,
    max_processes: u64,
    filters: seccomp::Filters,
}

fn c_string(what: &str, s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

/// Everything the command needs, prepared from the spec while the host's
/// `/proc` is still there (for `cap_last_cap`).
pub fn prepare(spec: &InitSpec) -> Result<Prepared, String> {
    let path_var = spec
        .env
        .iter()
        .find_map(|var| var.strip_prefix("PATH="))
        .unwrap_or("");
    let candidates = if spec.command.contains('/') {
        vec![c_string("command", &spec.command)?]
    } else {
        path_var
            .split(':')
            .filter(|dir| !dir.is_empty())
            .map(|dir| c_string("PATH", &format!("{dir}/{}", spec.command)))
            .collect::<Result<_, _>>()?
    };
    let argv = std::iter::once(spec.command.as_str())
        .chain(spec.args.iter().map(String::as_str))
        .map(|arg| c_string("argument", arg))
        .collect::<Result<_, _>>()?;
    let envp = spec
        .env
        .iter()
        .map(|var| c_string("environment", var))
        .collect::<Result<_, _>>()?;
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&n: &u32| n < 64)
        .ok_or("reading /proc/sys/kernel/cap_last_cap")?;
    Ok(Prepared {
        candidates,
        argv,
        envp,
        working_dir: c_string("working directory", &spec.working_dir)?,
        uid: Uid::from_raw(spec.uid),
        gid: Gid::from_raw(spec.gid),
        last_cap,
        max_processes: spec.sandbox.max_processes,
        filters: seccomp::compile(spec.sandbox.allow_io_uring)?,
    })
}

/// The stack the command's child runs on until it execs.
const CHILD_STACK: usize = 256 << 10;

/// Starts the command in the complete sandbox; returns its pid and the read
/// end of its output pipe once it runs, or why it cannot.
pub fn spawn(prepared: &Prepared, spec: &InitSpec) -> Result<(Pid, OwnedFd), String> {
    let (output_r, output_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("creating the output pipe: {e}"))?;
    // A larger pipe means fewer wakeups for a chatty job; the default size
    // works too, so a refusal is not an error.
    let _ = rustix::pipe::fcntl_setpipe_size(&output_r, 1 << 20);
    let (status_r, status_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("creating the status pipe: {e}"))?;
    let mut stack = vec![0u8; CHILD_STACK];
    let affinity = pin_to_this_cpu();
    // The child shares this memory: it borrows, and moves or drops nothing.
    let mut child = || -> isize {
        let (step, errno) = exec_child(prepared, output_w.as_fd(), affinity.as_ref());
        let mut report = [0u8; 5];
        report[0] = step as u8;
        report[1..].copy_from_slice(&(errno as i32).to_le_bytes());
        let _ = rustix::io::write(&status_w, &report);
        sys::exit_now(127)
    };
    let pid = sys::spawn_sharing_memory(&mut child, &mut stack)
        .map_err(|e| format!("starting the command: {e}"));
    if let Some(affinity) = &affinity {
        let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), affinity);
    }
    let pid = pid?;
    drop(output_w);
    drop(status_w);
    let mut report = Vec::new();
    File::from(status_r)
        .read_to_end(&mut report)
        .map_err(|e| format!("reading the exec status: {e}"))?;
    if report.is_empty() {
        return Ok((pid, output_r));
    }
    let _ = nix::sys::wait::waitpid(pid, None);
    Err(describe_failure(spec, &report))
}

/// Keeps the init on the CPU it runs on until [`spawn`] is done, so that
/// the command's child, which inherits this, starts there at once (the init
/// waits for it) rather than on another CPU that must first be woken up: on
/// a virtual machine waking an idle vCPU can take longer than the child's
/// whole preparation (BENCHMARKS.md). Returns the affinity to go back to,
/// or None where the host refuses (then nothing changed).
fn pin_to_this_cpu() -> Option<CpuSet> {
    let original = nix::sched::sched_getaffinity(Pid::from_raw(0)).ok()?;
    let mut here = CpuSet::new();
    here.set(nix::sched::sched_getcpu().ok()?).ok()?;
    nix::sched::sched_setaffinity(Pid::from_raw(0), &here).ok()?;
    Some(original)
}

fn describe_failure(spec: &InitSpec, report: &[u8]) -> String {
    let step = report.first().copied().and_then(Step::from_byte);
    let errno = report
        .get(1..5)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_le_bytes)
        .map_or(Errno::UnknownErrno, Errno::from_raw);
    let reason = std::io::Error::from_raw_os_error(errno as i32);
    match step {
        Some(Step::Exec) => format!("cannot execute {}: {reason}", spec.command),
        Some(Step::WorkingDir) => format!(
            "cannot enter the working directory {}: {reason}",
            spec.working_dir
        ),
        Some(Step::Privileges) => format!(
            "cannot switch to uid {} gid {} without capabilities: {reason}",
            spec.uid, spec.gid
        ),
        Some(Step::Limits) => format!("setting the command's resource limits and CPUs: {reason}"),
        Some(Step::Keyring) => format!("joining a fresh session keyring: {reason}"),
        Some(Step::Seccomp) => format!("installing the seccomp filter: {reason}"),
        Some(Step::Stdio) | None => format!("cannot set up the command's stdio: {reason}"),
    }
}

/// The child's side: never returns on success (the exec replaces it).
fn exec_child(p: &Prepared, output: BorrowedFd<'_>, affinity: Option<&CpuSet>) -> (Step, Errno) {
    if let Err(e) = stdio(output) {
        return (Step::Stdio, e);
    }
    if let Err(e) = limits(p.max_processes, affinity) {
        return (Step::Limits, e);
    }
    if let Err(e) = drop_privileges(p) {
        return (Step::Privileges, e);
    }
    // Owned by the job's uid, and no keyring of the supervisor's reachable.
    if let Err(e) = sys::join_new_session_keyring() {
        return (Step::Keyring, io_errno(&e));
    }
    // From here on the job's rules hold; what is left (opening /dev/null,
    // chdir, close_range, execve) they allow.
    if let Err(e) = p.filters.apply() {
        return (Step::Seccomp, io_errno(&e));
    }
    if let Err(e) = stdin_from_dev_null() {
        return (Step::Stdio, e);
    }
    if let Err(e) = nix::unistd::chdir(p.working_dir.as_c_str()) {
        return (Step::WorkingDir, e);
    }
    if let Err(e) = sys::close_fds_from(3, sys::CloseMode::CloseOnExec) {
        return (Step::Stdio, io_errno(&e));
    }
    // Like execvp: a candidate that does not exist lets the search go on; one
    // that exists but cannot be run is reported if nothing else can be.
    let mut error = Errno::ENOENT;
    for path in &p.candidates {
        let Err(e) = nix::unistd::execve(path, &p.argv, &p.envp);
        match e {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES | Errno::EPERM | Errno::ENOEXEC => error = e,
            other => return (Step::Exec, other),
        }
    }
    (Step::Exec, error)
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Sets [`RLIMITS`], and the CPUs the init may use again if it was pinned
/// ([`pin_to_this_cpu`]). A hard limit above the init's own needs
/// CAP_SYS_RESOURCE; where the host withholds it (some containers), the job
/// gets the init's hard limit instead, and a soft limit at most that.
fn limits(max_processes: u64, affinity: Option<&CpuSet>) -> Result<(), Errno> {
    use nix::sys::resource::{getrlimit, setrlimit};
    if let Some(affinity) = affinity {
        nix::sched::sched_setaffinity(Pid::from_raw(0), affinity)?;
    }
    for &(resource, values) in RLIMITS {
        let (soft, hard) = values.unwrap_or((max_processes, max_processes));
        match setrlimit(resource, soft, hard) {
            Err(Errno::EPERM) => {
                let (_, ceiling) = getrlimit(resource)?;
                let hard = hard.min(ceiling);
                setrlimit(resource, soft.min(hard), hard)?;
            }
            other => other?,
        }
    }
    Ok(())
}

fn stdio(output: BorrowedFd<'_>) -> Result<(), Errno> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    sys::default_signal_dispositions();
    nix::unistd::setsid()?;
    rustix::stdio::dup2_stdout(output).map_err(to_errno)?;
    rustix::stdio::dup2_stderr(output).map_err(to_errno)?;
    Ok(())
}

/// Stdin on the sandbox's `/dev/null`.
fn stdin_from_dev_null() -> Result<(), Errno> {
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    rustix::stdio::dup2_stdin(null.as_fd()).map_err(to_errno)?;
    Ok(())
}

fn drop_privileges(p: &Prepared) -> Result<(), Errno> {
    // The bounding set can only shrink while we still hold CAP_SETPCAP, so
    // it goes first.
    for cap in 0..=p.last_cap {
        rustix::thread::remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(
            1 << cap,
        ))
        .map_err(to_errno)?;
    }
    nix::unistd::setgroups(&[])?;
    nix::unistd::setresgid(p.gid, p.gid, p.gid)?;
    nix::unistd::setresuid(p.uid, p.uid, p.uid)?;
    rustix::thread::clear_ambient_capability_set().map_err(to_errno)?;
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(to_errno)?;
    rustix::thread::set_no_new_privs(true).map_err(to_errno)?;
    Ok(())
}

fn to_errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}
