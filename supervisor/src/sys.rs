//! The supervisor's raw system calls: the only module of the workspace with
//! `unsafe` code. Everything here is a thin wrapper that the rest of the crate
//! calls safely:
//!
//! - [`spawn_with_control`]: the supervisor starting the spawner (clone3 and
//!   exec). On x86_64 the child shares the supervisor's memory until its
//!   exec (`CLONE_VM | CLONE_VFORK`, as posix_spawn does), on a stack of its
//!   own: no copy of the multithreaded supervisor's page tables. The child
//!   runs only raw system calls on memory prepared before the clone, with
//!   every signal blocked: no allocation, no locks, no logging, no handler.
//! - [`clone_job_init`]: the spawner cloning a job's init straight into the
//!   job's cgroup and new namespaces, as a child of the supervisor (a
//!   fork-like clone3 of the single-threaded spawner, no exec).
//! - [`spawn_sharing_memory`]: the job's init starting the command (a
//!   vfork-like clone; the init is single-threaded).
//! - [`loopback_up`]: the `SIOCSIFFLAGS` ioctl that brings `lo` up.
//! - [`default_signal_dispositions`], [`close_fds_from`], [`take_control_fd`]:
//!   process hygiene around exec.
//! - [`set_mount_attributes`] (mount_setattr) and [`join_new_session_keyring`]
//!   (keyctl): the two calls of the job's sandbox that rustix does not wrap.
#![allow(
    unsafe_code,
    reason = "the supervisor's syscall module: clone3, fork, ioctl, sigaction"
)]

use std::ffi::{CStr, CString, c_char};
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The fd number at which the job's init finds its end of the control
/// socket.
pub const INIT_CONTROL_FD: RawFd = 3;

/// `CLONE_INTO_CGROUP` (libc's constant is deprecated and overflows `c_int`).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The namespaces every job gets.
const NAMESPACES: u64 = (libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP) as u64;

/// `struct clone_args` of clone3(2), version 2 (with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// A process started by [`spawn_with_control`] or [`clone_job_init`].
#[derive(Debug)]
pub struct Spawned {
    /// Its pid in the host's pid namespace.
    pub pid: u32,
    /// A pidfd of it.
    pub pidfd: OwnedFd,
}

/// The stack of [`spawn_with_control`]'s child while it shares the supervisor's
/// memory: it makes a few raw system calls and execs.
#[cfg(target_arch = "x86_64")]
const CHILD_STACK: usize = 64 << 10;

/// Starts `program` with `argv` and `envp` in a new process (in the
/// caller's cgroup and namespaces), `control` at fd [`INIT_CONTROL_FD`] and
/// every signal blocked; if the exec fails, the child exits with status
/// 127. The calling thread waits until the child has exec'd or exited.
///
/// All memory the child touches is prepared here before the clone.
pub fn spawn_with_control(
    control: BorrowedFd<'_>,
    program: &CStr,
    argv: &[CString],
    envp: &[CString],
) -> io::Result<Spawned> {
    let exec = ChildExec::new(control, program, argv, envp);
    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64 | SHARE_UNTIL_EXEC,
        pidfd: &raw mut pidfd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    let pid = with_signals_blocked(|| clone3_exec(args, &exec))?;
    // SAFETY: with CLONE_PIDFD, a successful clone3 stored a new pidfd that
    // nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned { pid, pidfd })
}

/// Fails unless the calling process has exactly one thread.
pub fn single_threaded() -> io::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!(
            "the process has {threads} threads; it must have one"
        )));
    }
    Ok(())
}

/// Which side of [`clone_job_init`] returned.
#[derive(Debug)]
pub enum Cloned {
    /// The new process: the job's init.
    Child,
    /// The caller, with the new process's pid and pidfd.
    Parent(Spawned),
}

// The child of `clone_job_init` runs on after a raw clone3 with glibc's
// state copied as it was; what that relies on is glibc's (see the SAFETY
// comment there).
#[cfg(not(target_env = "gnu"))]
compile_error!("the spawner's fork-like clone3 is reasoned about for glibc only");

/// Clones the calling process like fork, the child directly in the cgroup
/// `cgroup` (no moment outside it), in new pid, mount, network, uts, ipc and
/// cgroup namespaces (the job's cgroup is the root of the latter), and a
/// child of the caller's parent (`CLONE_PARENT`: the supervisor, which
/// reaps it through the pidfd), with the caller's exit signal. Returns
/// twice, as fork does: [`Cloned::Child`] in the child, which continues on
/// a copy of the caller's memory and fds. Refuses (nothing is cloned) if
/// the process has more than one thread, checked at each call.
pub fn clone_job_init(cgroup: BorrowedFd<'_>) -> io::Result<Cloned> {
    single_threaded()?;
    let cgroup_fd =
        u64::try_from(cgroup.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64
            | libc::CLONE_PARENT as u64
            | CLONE_INTO_CGROUP
            | NAMESPACES,
        pidfd: &raw mut pidfd as u64,
        // clone3 wants 0 with CLONE_PARENT: the child gets the caller's.
        exit_signal: 0,
        cgroup: cgroup_fd,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack behaves like fork:
    // the child continues on a copy of this thread's stack and memory.
    // `args` is a valid clone_args of the size passed. The process has one
    // thread (checked above, and only the spawner, which never starts one,
    // calls this), so no lock or allocator state is held by a thread that
    // the child would lack. glibc's cached thread id in the child is the
    // caller's: glibc's `raise` asks the kernel instead, and the locks that
    // record it as their owner (recursive, error-checking or robust
    // mutexes) are free at the clone and taken and released by the child
    // alone, consistently.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &raw const args, size_of::<CloneArgs>()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if ret == 0 {
        return Ok(Cloned::Child);
    }
    let pid = clone3_result(ret)?;
    // SAFETY: with CLONE_PIDFD, a successful clone3 stored a new pidfd in
    // the parent that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Cloned::Parent(Spawned { pid, pidfd }))
}

/// The clone flags that make [`spawn_with_control`]'s child share the
/// supervisor's memory until its exec, where [`clone3_exec`] supports it.
#[cfg(target_arch = "x86_64")]
const SHARE_UNTIL_EXEC: u64 = (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
#[cfg(not(target_arch = "x86_64"))]
const SHARE_UNTIL_EXEC: u64 = 0;

/// Runs `f` with every signal blocked in the calling thread (glibc's own
/// two included: the raw system call), then restores the thread's mask,
/// also if `f` panics. Fails if the mask cannot be set (nothing runs then).
fn with_signals_blocked<T>(f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    /// Puts the thread's mask back when dropped.
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: as in `with_signals_blocked`, restoring the mask it read.
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigprocmask,
                    libc::SIG_SETMASK,
                    &raw const self.0,
                    std::ptr::null_mut::<u64>(),
                    KERNEL_SIGSET_SIZE,
                );
            }
        }
    }
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask reads one mask of the kernel's sigset size and
    // writes one, both valid for the call; blocking signals in this thread
    // is always sound.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const all,
            &raw mut old,
            KERNEL_SIGSET_SIZE,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    let _restore = Restore(old);
    f()
}

/// The kernel's `sigset_t` (64 signals) on the architectures the supervisor
/// is built for (x86_64, aarch64).
const KERNEL_SIGSET_SIZE: usize = 8;

/// The child's pid of a clone3 that returned `ret` (negated errno on
/// failure).
fn clone3_result(ret: libc::c_long) -> io::Result<u32> {
    if ret < 0 {
        let errno = i32::try_from(-ret).unwrap_or(libc::EINVAL);
        return Err(io::Error::from_raw_os_error(errno));
    }
    u32::try_from(ret).map_err(|_| io::Error::other("clone3 returned a bad pid"))
}

/// clone3 with `args`, the child running [`ChildExec::run_in_child`] on a
/// stack of its own (it shares this process's memory, and this thread waits
/// until it has exec'd or exited: `CLONE_VM | CLONE_VFORK`). Returns the
/// child's pid.
#[cfg(target_arch = "x86_64")]
fn clone3_exec(mut args: CloneArgs, exec: &ChildExec<'_>) -> io::Result<u32> {
    extern "C" fn child(exec: *const ChildExec<'_>) -> ! {
        // SAFETY: `exec` points at the parent's ChildExec, alive and
        // unchanged while the parent is suspended (CLONE_VFORK); we are
        // the child of the clone3 below, and call this once.
        unsafe { (*exec).run_in_child() }
    }
    // The child needs well under 1 KiB of it (a few calls into libc's
    // syscall wrapper, then execve); it has no guard page.
    let mut stack = vec![0_u8; CHILD_STACK];
    // The stack's top, aligned to 16 bytes as the ABI wants before a call.
    let base = stack.as_mut_ptr() as u64;
    let top = (base + stack.len() as u64) & !15;
    args.stack = base;
    args.stack_size = top - base;
    let ret: libc::c_long;
    // SAFETY: `args` is a valid clone_args of the size passed, its stack
    // ours and unused until the child is done with it (this thread is
    // suspended until the child execs or exits). The child starts on that
    // stack with the registers of the syscall: it calls `child` with
    // `exec` (kept in r12 and r13, which the syscall preserves) and never
    // returns; the parent goes on past label 2 with rax = the result.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &raw const args,
            in("rsi") size_of::<CloneArgs>(),
            in("r12") exec as *const ChildExec<'_>,
            in("r13") child as extern "C" fn(*const ChildExec<'_>) -> !,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    drop(stack);
    clone3_result(ret)
}

/// clone3 with `args` like fork (no stack: the child continues on a copy of
/// this thread's stack) and the child running
/// [`ChildExec::run_in_child`]; for the architectures [`clone3_exec`]'s
/// shared-memory form does not cover.
#[cfg(not(target_arch = "x86_64"))]
fn clone3_exec(args: CloneArgs, exec: &ChildExec<'_>) -> io::Result<u32> {
    // SAFETY: clone3 with no stack behaves like fork: the child continues
    // on a copy of this thread's stack. `args` is a valid clone_args of the
    // size we pass. In the child, only async-signal-safe raw system calls
    // run, on memory prepared before (`exec`), and the child never returns
    // from `exec.run_in_child()`: it execs or _exits.
    let ret = unsafe { libc::syscall(libc::SYS_clone3, &raw const args, size_of::<CloneArgs>()) };
    if ret == 0 {
        // SAFETY: we are the child of the clone3 above, and call this once.
        unsafe { exec.run_in_child() }
    }
    clone3_result(if ret < 0 {
        -libc::c_long::from(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL),
        )
    } else {
        ret
    })
}

/// Everything the child of [`spawn_with_control`] uses between clone3 and exec,
/// prepared by the parent before the clone so that the child allocates
/// nothing.
struct ChildExec<'a> {
    /// The control socket, to put at [`INIT_CONTROL_FD`].
    control_fd: RawFd,
    /// The program to exec.
    program: &'a CStr,
    /// `argv`'s pointers, NULL-terminated.
    argv: Vec<*const c_char>,
    /// `envp`'s pointers, NULL-terminated.
    envp: Vec<*const c_char>,
    /// The strings `argv` and `envp` point into, borrowed for as long as the
    /// pointers live.
    strings: PhantomData<&'a [CString]>,
}

impl<'a> ChildExec<'a> {
    /// Prepares the exec of `program` with `argv` and `envp`, `control` to
    /// become fd [`INIT_CONTROL_FD`].
    fn new(
        control: BorrowedFd<'_>,
        program: &'a CStr,
        argv: &'a [CString],
        envp: &'a [CString],
    ) -> Self {
        let argv = null_terminated(argv);
        let envp = null_terminated(envp);
        let control_fd = control.as_raw_fd();
        Self {
            control_fd,
            program,
            argv,
            envp,
            strings: PhantomData,
        }
    }

    /// The child's part of [`spawn_with_control`]: puts the control socket at
    /// [`INIT_CONTROL_FD`] and execs the program (signals stay blocked: the
    /// program sets its own mask), or exits with 127 if the exec fails. Raw
    /// system calls only, on `self` (prepared before the clone): nothing
    /// allocates, takes a lock, logs or drops anything. The only memory it
    /// writes is errno (libc's wrapper sets it when a call fails), which in
    /// shared memory is the suspended parent thread's, and which the parent
    /// does not read.
    ///
    /// # Safety
    ///
    /// Only the child of the clone3 in [`spawn_with_control`] may call this: it
    /// replaces whatever is at fd [`INIT_CONTROL_FD`], and it never returns.
    #[inline(always)]
    unsafe fn run_in_child(&self) -> ! {
        // SAFETY: we are the child (the caller's contract). Each call is a raw
        // system call on memory prepared before the clone; none allocates or
        // takes a lock.
        unsafe {
            if self.control_fd == INIT_CONTROL_FD {
                libc::syscall(libc::SYS_fcntl, self.control_fd, libc::F_SETFD, 0);
            } else {
                libc::syscall(libc::SYS_dup3, self.control_fd, INIT_CONTROL_FD, 0);
            }
            libc::syscall(
                libc::SYS_execve,
                self.program.as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            );
            libc::_exit(127);
        }
    }
}

/// The pointers of `strings`, followed by a NULL pointer: an `argv` or
/// `envp` for execve.
fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect()
}

/// Runs `child` in a new process that shares the caller's memory until it
/// execs or exits, the caller suspended meanwhile (clone with `CLONE_VM |
/// CLONE_VFORK`, as posix_spawn does): no page table is copied, and nothing
/// the child does to memory can race the caller. Only the job's init calls
/// this, and the init is single-threaded: it checks that first and refuses
/// otherwise. `child` runs on `stack`; it must exec or [`exit_now`], and it
/// must not move or drop anything the caller owns (it shares the caller's
/// memory, not its fd table).
pub fn spawn_sharing_memory(
    child: &mut dyn FnMut() -> isize,
    stack: &mut [u8],
) -> io::Result<nix::unistd::Pid> {
    single_threaded()?;
    let flags = nix::sched::CloneFlags::CLONE_VM | nix::sched::CloneFlags::CLONE_VFORK;
    // SAFETY: the process is single-threaded (checked above) and suspended
    // until the child execs or exits, so the child's use of the shared
    // memory (the heap included) cannot race anything; `stack` is the
    // child's alone and outlives it, since the call returns only once the
    // child no longer runs on it.
    unsafe { nix::sched::clone(Box::new(child), stack, flags, Some(libc::SIGCHLD)) }
        .map_err(io::Error::from)
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = c_char::from_ne_bytes([*src]);
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of a valid
    // ifreq that outlives the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let up = libc::c_short::try_from(libc::IFF_UP | libc::IFF_RUNNING).map_err(io::Error::other)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= up;
    }
    // SAFETY: as above, with SIOCSIFFLAGS reading the ifreq.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's `struct sigaction` for `rt_sigaction` on x86_64 and
/// aarch64 (not glibc's, which is larger and reordered).
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Puts every signal back to its default action: signals the supervisor (or
/// whoever started it) ignores, SIGPIPE among them since the Rust runtime
/// ignores it, would otherwise stay ignored in the exec'd command. The raw
/// system call reaches the signals glibc reserves for itself (32, 33), which
/// its `signal()` refuses to touch.
pub fn default_signal_dispositions() {
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `default` is a valid kernel sigaction that installs no
        // handler (SIG_DFL), so no code can run in signal context; the old
        // action is not asked for; the mask size is the kernel's (64 bits).
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &raw const default,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            );
        }
    }
}

/// What [`close_fds_from`] does to each fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
    /// Close it now.
    Close,
    /// Mark it close-on-exec.
    CloseOnExec,
}

/// Closes (or marks close-on-exec) every fd from `first` on.
pub fn close_fds_from(first: RawFd, mode: CloseMode) -> io::Result<()> {
    let first = u32::try_from(first).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let flags = match mode {
        CloseMode::Close => 0,
        CloseMode::CloseOnExec => libc::CLOSE_RANGE_CLOEXEC,
    };
    // SAFETY: close_range only closes fds or changes their flags; callers
    // hold no OwnedFd at or above `first` (the init calls it before it opens
    // anything, the command's child just before exec).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, flags) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes ownership of the socket the supervisor left at
/// [`INIT_CONTROL_FD`] when it started the spawner. Called once, by the
/// spawner; a second call fails.
pub fn take_control_fd() -> io::Result<OwnedFd> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(io::Error::other("the control socket was taken already"));
    }
    // SAFETY: F_GETFD only reads the fd's flags.
    if unsafe { libc::fcntl(INIT_CONTROL_FD, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd is open (checked above), was put there by
    // spawn_with_control for this process, and nothing else here owns it:
    // this is the one call that takes it (`TAKEN`).
    Ok(unsafe { OwnedFd::from_raw_fd(INIT_CONTROL_FD) })
}

/// Sets and clears mount attributes (`MOUNT_ATTR_*`) of the mount at
/// `dirfd`/`path` (with `AT_EMPTY_PATH`: of `dirfd` itself, e.g. a tree from
/// `open_tree`), and of every mount below it with `AT_RECURSIVE`. Also makes
/// the mounts private.
pub fn set_mount_attributes(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    at_flags: libc::c_int,
    set: u64,
    clear: u64,
) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clear,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: `path` is a valid NUL-terminated string and `attr` a valid
    // mount_attr of the size passed; the kernel only reads both.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            at_flags,
            &raw const attr,
            size_of::<libc::mount_attr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the calling process a new, anonymous session keyring owned by its
/// current uid, so that no keyring of whoever started it is reachable.
pub fn join_new_session_keyring() -> io::Result<()> {
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with a NULL name takes no other
    // pointer; it only changes the calling process's credentials.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<c_char>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ends the calling process at once, without running exit handlers or
/// flushing stdio: for a forked child whose exec failed, and for a job's
/// init when it is done.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

/// A value that owns an fd, registered with tokio's reactor. It cannot be
/// taken out, so its fd stays open and the same for as long as the
/// registration lives.
pub struct Registered<T: AsFd>(T);

impl<T: AsFd> Registered<T> {
    /// The value.
    pub fn get_ref(&self) -> &T {
        &self.0
    }
}

impl<T: AsFd> AsRawFd for Registered<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers an fd-owning value with tokio's reactor for readiness. Must run
/// inside a tokio runtime.
pub fn register<T: AsFd>(
    inner: T,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<Registered<T>>> {
    // SAFETY: `Registered` owns `inner` and never gives it away, so the fd it
    // returns stays open and refers to the same file for the AsyncFd's whole
    // life (it is closed only when the AsyncFd drops it).
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(Registered(inner), interest) }
        .map_err(|e| e.into_parts().1)
}

/// Takes the listening socket systemd passed by socket activation, if any
/// (exactly one is expected), and unsets `LISTEN_PID`/`LISTEN_FDS`. Must be
/// called before the process starts a second thread.
pub fn take_activation_socket() -> io::Result<Option<OwnedFd>> {
    // SAFETY: the caller runs this at the start of main, before any other
    // thread exists, so removing environment variables races with nothing.
    let fds: Vec<RawFd> = unsafe { sd_notify::listen_fds_and_unset_env() }?.collect();
    match fds.as_slice() {
        [] => Ok(None),
        // SAFETY: systemd passed this fd to this very process (sd-notify
        // checked LISTEN_PID) for it to own; nothing else here uses it.
        [fd] => Ok(Some(unsafe { OwnedFd::from_raw_fd(*fd) })),
        more => Err(io::Error::other(format!(
            "systemd passed {} sockets; the supervisor listens on exactly one",
            more.len()
        ))),
    }
}
