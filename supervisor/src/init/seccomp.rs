//! The job's seccomp filter: the system calls a job never needs and that
//! would let it out of its sandbox or at the host's kernel, refused before
//! the kernel looks at them. Built in the init before the fork, installed
//! (with seccompiler) by the command's child as the last step before exec,
//! after no_new_privs, and inherited by every process of the job.
//!
//! One classic BPF program decides, in this order:
//!
//! 1. an architecture other than the host's (the 32-bit entry points) kills
//!    the process;
//! 2. x32 system call numbers (bit 30 set, same architecture value as
//!    x86_64) answer `EPERM`: the checks below match exact 64-bit numbers,
//!    and an x32 `mount` has another number;
//! 3. `clone3` answers `ENOSYS`: its flags are behind a pointer that seccomp
//!    cannot read, and glibc falls back to `clone` on ENOSYS (with EPERM every
//!    thread creation would fail);
//! 4. `clone` and `unshare` answer `EPERM` when their flags ask for a new
//!    user namespace;
//! 5. [`REFUSED`] (and [`IO_URING`] unless allowed) answer `EPERM`, found
//!    by a binary search over their sorted numbers;
//! 6. everything else is allowed.
//!
//! The program is built here rather than by seccompiler's compiler because
//! of its shape: seccompiler emits one linear chain of checks (167
//! instructions for this list), and on every install the kernel runs a new
//! filter once per system call number to fill its action cache, which for
//! that chain took ~190 µs of each job's start on this project's test
//! machine; the binary search takes a few instructions per number
//! (BENCHMARKS.md). The tests below run the program, in an interpreter of
//! the instructions it uses, for every system call number against the
//! table.
//!
//! README.md's "What a job can and cannot do" has the table of reasons; keep
//! the two in step.

use seccompiler::{BpfProgram, sock_filter};

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

/// The audit architecture value of the host's system calls.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xC000_00F3;

/// The x32 ABI's bit in a system call number (x86_64 only).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets in `struct seccomp_data`: the number, the architecture, and the
/// low 32 bits of the first argument (little-endian hosts).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;

/// A BPF instruction's code: libc spells the classic BPF opcodes as `u32`,
/// and every one of them fits the 16 bits of `sock_filter::code`.
#[allow(
    clippy::cast_possible_truncation,
    reason = "BPF opcodes are below 0x100"
)]
const fn opcode(code: u32) -> u16 {
    code as u16
}

/// The compiled filter.
pub struct Filters(BpfProgram);

/// Builds the job's filter for this machine's architecture.
pub fn compile(allow_io_uring: bool) -> Result<Filters, String> {
    let mut refused: Vec<u32> = REFUSED
        .iter()
        .chain(if allow_io_uring { &[][..] } else { IO_URING })
        .map(|&(_, nr)| u32::try_from(nr).map_err(|_| format!("system call number {nr}")))
        .collect::<Result<_, _>>()?;
    refused.sort_unstable();
    refused.dedup();
    let number = |nr: libc::c_long| u32::try_from(nr).map_err(|_| format!("number {nr}"));

    let mut p = Program::default();
    p.load(ARCH);
    p.jump_unless(Cmp::Eq, AUDIT_ARCH, Target::Kill);
    p.load(NR);
    if cfg!(target_arch = "x86_64") {
        p.jump_if(Cmp::Set, X32_SYSCALL_BIT, Target::Eperm);
    }
    p.jump_if(Cmp::Eq, number(libc::SYS_clone3)?, Target::Enosys);
    p.jump_if(Cmp::Eq, number(libc::SYS_clone)?, Target::NewUserNamespace);
    p.jump_if(
        Cmp::Eq,
        number(libc::SYS_unshare)?,
        Target::NewUserNamespace,
    );
    p.search(&refused);
    p.finish().map(Filters)
}

impl Filters {
    /// Installs the filter on the calling thread. no_new_privs must be set.
    pub fn apply(&self) -> Result<(), std::io::Error> {
        seccompiler::apply_filter(&self.0).map_err(|e| match e {
            seccompiler::Error::Seccomp(io) | seccompiler::Error::Prctl(io) => io,
            other => std::io::Error::other(other.to_string()),
        })
    }
}

/// The endings every check jumps to, laid out after the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// The next instruction.
    Next,
    /// `n` instructions further on.
    Skip(usize),
    Allow,
    Eperm,
    Enosys,
    Kill,
    /// Checks the first argument for `CLONE_NEWUSER`.
    NewUserNamespace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ge,
    /// Any of the bits set.
    Set,
}

/// One instruction before its jumps are resolved.
struct Insn {
    code: u16,
    k: u32,
    jt: Target,
    jf: Target,
}

/// A program being built: checks first, then the endings.
#[derive(Default)]
struct Program(Vec<Insn>);

impl Program {
    fn load(&mut self, offset: u32) {
        self.0.push(Insn {
            code: opcode(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS),
            k: offset,
            jt: Target::Next,
            jf: Target::Next,
        });
    }

    fn jump(&mut self, cmp: Cmp, k: u32, jt: Target, jf: Target) {
        let op = match cmp {
            Cmp::Eq => libc::BPF_JEQ,
            Cmp::Ge => libc::BPF_JGE,
            Cmp::Set => libc::BPF_JSET,
        };
        self.0.push(Insn {
            code: opcode(libc::BPF_JMP | op | libc::BPF_K),
            k,
            jt,
            jf,
        });
    }

    /// An unconditional jump (its offset goes in `k`).
    fn goto(&mut self, to: Target) {
        self.0.push(Insn {
            code: opcode(libc::BPF_JMP | libc::BPF_JA),
            k: 0,
            jt: to,
            jf: Target::Next,
        });
    }

    fn jump_if(&mut self, cmp: Cmp, k: u32, to: Target) {
        self.jump(cmp, k, to, Target::Next);
    }

    fn jump_unless(&mut self, cmp: Cmp, k: u32, to: Target) {
        self.jump(cmp, k, Target::Next, to);
    }

    /// A binary search of the loaded number in `sorted`: EPERM if found,
    /// allowed if not. Runs of three or fewer are checked one by one.
    fn search(&mut self, sorted: &[u32]) {
        if sorted.len() <= 3 {
            for &nr in sorted {
                self.jump_if(Cmp::Eq, nr, Target::Eperm);
            }
            self.goto(Target::Allow);
            return;
        }
        let (low, high) = sorted.split_at(sorted.len() / 2);
        let mut below = Program::default();
        below.search(low);
        self.jump(Cmp::Ge, high[0], Target::Skip(below.0.len()), Target::Next);
        self.0.extend(below.0);
        self.search(high);
    }

    /// Appends the endings and resolves every jump.
    fn finish(mut self) -> Result<BpfProgram, String> {
        let checks = self.0.len();
        self.load(ARG0_LOW);
        self.jump(
            Cmp::Set,
            libc::CLONE_NEWUSER as u32,
            Target::Eperm,
            Target::Allow,
        );
        let errno = |e: i32| libc::SECCOMP_RET_ERRNO | (e.cast_unsigned() & libc::SECCOMP_RET_DATA);
        for k in [
            libc::SECCOMP_RET_ALLOW,
            errno(libc::EPERM),
            errno(libc::ENOSYS),
            libc::SECCOMP_RET_KILL_PROCESS,
        ] {
            self.0.push(Insn {
                code: opcode(libc::BPF_RET | libc::BPF_K),
                k,
                jt: Target::Next,
                jf: Target::Next,
            });
        }
        self.0
            .iter()
            .enumerate()
            .map(|(index, insn)| insn.resolve(index, checks))
            .collect()
    }
}

impl Target {
    /// Where an ending starts, counted from the first instruction after
    /// the checks, in the order [`Program::finish`] appends them.
    fn ending(self) -> usize {
        match self {
            Target::NewUserNamespace => 0,
            Target::Allow => 2,
            Target::Eperm => 3,
            Target::Enosys => 4,
            Target::Kill => 5,
            Target::Next | Target::Skip(_) => unreachable!("relative"),
        }
    }
}

impl Insn {
    /// The instruction at `index`, its jumps resolved; the endings start at
    /// `checks`.
    fn resolve(&self, index: usize, checks: usize) -> Result<sock_filter, String> {
        let offset = |target: Target| -> Result<u8, String> {
            let offset = match target {
                Target::Next => 0,
                Target::Skip(n) => n,
                ending => checks + ending.ending() - index - 1,
            };
            u8::try_from(offset).map_err(|_| "the seccomp filter is too long to jump".to_owned())
        };
        if u32::from(self.code) == libc::BPF_JMP | libc::BPF_JA {
            return Ok(sock_filter {
                code: self.code,
                jt: 0,
                jf: 0,
                k: u32::from(offset(self.jt)?),
            });
        }
        Ok(sock_filter {
            code: self.code,
            jt: offset(self.jt)?,
            jf: offset(self.jf)?,
            k: self.k,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the program answers for a call: the instructions it uses, run
    /// as the kernel runs them.
    fn run(program: &[sock_filter], arch: u32, nr: u32, arg0: u64) -> (u32, usize) {
        let data = |offset: u32| match offset {
            NR => nr,
            ARCH => arch,
            ARG0_LOW => u32::try_from(arg0 & 0xffff_ffff).unwrap(),
            other => panic!("loads offset {other}"),
        };
        let (mut pc, mut acc, mut steps) = (0, 0, 0);
        loop {
            let insn = &program[pc];
            steps += 1;
            let code = u32::from(insn.code);
            match code & 0x07 {
                libc::BPF_LD => acc = data(insn.k),
                libc::BPF_RET => return (insn.k, steps),
                libc::BPF_JMP if code & 0xf0 == libc::BPF_JA => pc += insn.k as usize,
                libc::BPF_JMP => {
                    let taken = match code & 0xf0 {
                        libc::BPF_JEQ => acc == insn.k,
                        libc::BPF_JGE => acc >= insn.k,
                        libc::BPF_JSET => acc & insn.k != 0,
                        other => panic!("jump op {other:#x}"),
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                other => panic!("class {other:#x}"),
            }
            pc += 1;
        }
    }

    fn errno(e: i32) -> u32 {
        libc::SECCOMP_RET_ERRNO | e.cast_unsigned()
    }

    /// The answer the table above says the program must give.
    fn expected(nr: u32, arg0: u64, allow_io_uring: bool) -> u32 {
        let nr = libc::c_long::from(nr);
        let listed = |table: &[(&str, libc::c_long)]| table.iter().any(|&(_, n)| n == nr);
        let x32 = cfg!(target_arch = "x86_64") && nr & libc::c_long::from(X32_SYSCALL_BIT) != 0;
        let new_user_namespace = (nr == libc::SYS_clone || nr == libc::SYS_unshare)
            && arg0 & libc::CLONE_NEWUSER as u64 != 0;
        let refused = listed(REFUSED) || (!allow_io_uring && listed(IO_URING));
        if nr == libc::SYS_clone3 && !x32 {
            errno(libc::ENOSYS)
        } else if x32 || new_user_namespace || refused {
            errno(libc::EPERM)
        } else {
            libc::SECCOMP_RET_ALLOW
        }
    }

    #[test]
    fn every_system_call_number_gets_the_tables_answer() {
        for allow_io_uring in [false, true] {
            let Filters(program) = compile(allow_io_uring).unwrap();
            let mut longest = 0;
            for nr in (0..1024).chain((0..1024).map(|nr| nr | X32_SYSCALL_BIT)) {
                for arg0 in [0, libc::CLONE_NEWUSER as u64, libc::CLONE_NEWNS as u64] {
                    let (answer, steps) = run(&program, AUDIT_ARCH, nr, arg0);
                    assert_eq!(
                        answer,
                        expected(nr, arg0, allow_io_uring),
                        "nr {nr} arg0 {arg0:#x}"
                    );
                    longest = longest.max(steps);
                }
            }
            assert!(
                longest <= 20,
                "a call takes {longest} instructions to decide"
            );
        }
    }

    #[test]
    fn another_architecture_is_killed() {
        let Filters(program) = compile(false).unwrap();
        // i386's audit architecture: the 32-bit entry points.
        let (answer, _) = run(&program, 0x4000_0003, 39, 0);
        assert_eq!(answer, libc::SECCOMP_RET_KILL_PROCESS);
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
