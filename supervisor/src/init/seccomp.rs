//! The job's seccomp filter: the system calls a job never needs and that
//! would let it out of its sandbox or at the host's kernel, refused before
//! the kernel looks at them. Compiled with seccompiler in the init before the
//! fork, installed by the command's child as the last step before exec (after
//! no_new_privs), inherited by every process of the job.
//!
//! Three filters are stacked (the kernel applies the strictest answer):
//!
//! 1. [`REFUSED`] answer `EPERM`, and so do `clone` and `unshare` when their
//!    flags ask for a new user namespace. An architecture other than the
//!    host's (the 32-bit entry points) kills the process.
//! 2. `clone3` answers `ENOSYS`: its flags are behind a pointer that seccomp
//!    cannot read, and glibc falls back to `clone` on ENOSYS (with EPERM every
//!    thread creation would fail).
//! 3. x32 system call numbers (bit 30 set, same architecture value as x86_64)
//!    answer `EPERM`: filter 1 matches exact numbers only, and an x32 `mount`
//!    has another number than the 64-bit one.
//!
//! README.md's "What a job can and cannot do" has the table of reasons; keep
//! the two in step.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// System calls refused outright with `EPERM`.
pub const REFUSED: &[(&str, libc::c_long)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("acct", libc::SYS_acct),
    ("userfaultfd", libc::SYS_userfaultfd),
];

/// io_uring's calls, refused unless the configuration allows them.
pub const IO_URING: &[(&str, libc::c_long)] = &[
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];

/// The x32 ABI's bit in a system call number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The compiled filters, in the order they are installed.
pub struct Filters(Vec<BpfProgram>);

/// Compiles the job's filters for this machine's architecture.
pub fn compile(allow_io_uring: bool) -> Result<Filters, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("no seccomp filter for this architecture: {e:?}"))?;
    let refused = REFUSED
        .iter()
        .chain(if allow_io_uring { &[][..] } else { IO_URING })
        .map(|&(_, nr)| (nr, Vec::new()));
    let new_user_namespace = |nr: libc::c_long| -> Result<_, String> {
        let flag = libc::CLONE_NEWUSER as u64;
        let condition = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .map_err(|e| format!("{e:?}"))?;
        Ok((
            nr,
            vec![SeccompRule::new(vec![condition]).map_err(|e| format!("{e:?}"))?],
        ))
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = refused.collect();
    for nr in [libc::SYS_clone, libc::SYS_unshare] {
        let (nr, rule) = new_user_namespace(nr)?;
        rules.insert(nr, rule);
    }
    let eperm = program(rules, libc::EPERM, arch)?;
    let enosys = program(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        libc::ENOSYS,
        arch,
    )?;
    let mut filters = vec![eperm, enosys];
    if arch == TargetArch::x86_64 {
        filters.push(x32_refused());
    }
    Ok(Filters(filters))
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    errno: i32,
    arch: TargetArch,
) -> Result<BpfProgram, String> {
    let errno = u32::try_from(errno).map_err(|_| format!("errno {errno}"))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        arch,
    )
    .map_err(|e| format!("building the seccomp filter: {e}"))?;
    BpfProgram::try_from(filter).map_err(|e| format!("compiling the seccomp filter: {e}"))
}

/// `nr & X32_SYSCALL_BIT` -> EPERM, everything else allowed (the other
/// filters decide). Four instructions that seccompiler has no rule for.
fn x32_refused() -> BpfProgram {
    // struct seccomp_data: nr at offset 0.
    const LD_NR: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let eperm = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);
    vec![
        sock_filter {
            code: LD_NR,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: JSET,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: eperm,
        },
        sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ]
}

impl Filters {
    /// Installs the filters on the calling thread. no_new_privs must be set.
    pub fn apply(&self) -> Result<(), std::io::Error> {
        for program in &self.0 {
            seccompiler::apply_filter(program).map_err(|e| match e {
                seccompiler::Error::Seccomp(io) | seccompiler::Error::Prctl(io) => io,
                other => std::io::Error::other(other.to_string()),
            })?;
        }
        Ok(())
    }

    /// How many filters there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_for_this_machine() {
        let filters = compile(false).unwrap();
        assert_eq!(
            filters.len(),
            if cfg!(target_arch = "x86_64") { 3 } else { 2 }
        );
        assert!(compile(true).unwrap().0[0].len() < filters.0[0].len());
    }

    #[test]
    fn every_refused_call_is_named_once() {
        let mut names: Vec<_> = REFUSED.iter().chain(IO_URING).map(|(n, _)| *n).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before);
    }
}
