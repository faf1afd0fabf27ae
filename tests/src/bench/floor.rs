//! The floor and the peers of a job start, as programs run by the bench.
//!
//! The floor is a tiny C program, written to a temporary directory and
//! compiled with the system `cc` at bench time (the tests crate forbids
//! `unsafe`, so it cannot make the syscalls itself): it makes a fresh cgroup
//! under the directory it is given (on the cgroup2 mount), `clone3`s with
//! `CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC |
//! CLONE_INTO_CGROUP` (the supervisor's flags), `execv`s the command in the
//! child, waits for it and removes the cgroup. Nothing else: no /proc mount,
//! no loopback, no account switch, no output capture beyond a pipe.
//!
//! [`first_byte`] times any such program from `spawn` to the first byte of
//! its standard output, then waits for it to end.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The floor's source.
const FLOOR_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct clone_args_v2 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
        tls, set_tid, set_tid_size, cgroup;
};

#define INTO_CGROUP 0x200000000ULL

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: floor CGROUP_PARENT COMMAND [ARG...]\n");
        return 125;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/floor-%d", argv[1], (int)getpid());
    if (mkdir(path, 0755) != 0) { perror("mkdir cgroup"); return 125; }
    int cgroup = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cgroup < 0) { perror("open cgroup"); rmdir(path); return 125; }
    struct clone_args_v2 args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS |
                 CLONE_NEWIPC | INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.cgroup = (uint64_t)cgroup;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0) { perror("clone3"); rmdir(path); return 125; }
    if (pid == 0) {
        execv(argv[2], argv + 2);
        _exit(127);
    }
    int status = 0;
    while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR) {}
    close(cgroup);
    for (int i = 0; i < 1000 && rmdir(path) != 0 && errno == EBUSY; i++) usleep(100);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
"#;

/// The compiled floor program, in its temporary directory.
#[derive(Debug)]
pub struct Floor {
    /// The executable.
    pub binary: PathBuf,
    _dir: tempfile::TempDir,
}

impl Floor {
    /// Writes the source and compiles it with `cc -O2`.
    pub fn compile() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("jobworker-bench-floor-")
            .tempdir()?;
        let source = dir.path().join("floor.c");
        std::fs::write(&source, FLOOR_C)?;
        let binary = dir.path().join("floor");
        let output = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&binary)
            .arg(&source)
            .output()
            .context("running cc (install gcc to build the floor)")?;
        if !output.status.success() {
            bail!(
                "cc failed to compile the floor:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Self { binary, _dir: dir })
    }

    /// The floor's command line for `command` with the job cgroup made
    /// under `cgroup_parent`.
    pub fn command(&self, cgroup_parent: &Path, command: &[&str]) -> Vec<String> {
        let mut argv = vec![
            self.binary.display().to_string(),
            cgroup_parent.display().to_string(),
        ];
        argv.extend(command.iter().map(|s| (*s).to_owned()));
        argv
    }
}

/// Runs `argv` once: the time from spawn to the first byte of its standard
/// output, and the time to its end. Fails if it writes nothing or fails.
pub fn first_byte(argv: &[String]) -> Result<(Duration, Duration)> {
    let (program, args) = argv.split_first().context("an empty command line")?;
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    let mut stdout = child.stdout.take().context("piped stdout")?;
    let mut byte = [0u8; 1];
    let n = stdout.read(&mut byte)?;
    let first = start.elapsed();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest)?;
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr)?;
    }
    let status = child.wait()?;
    let end = start.elapsed();
    if n == 0 || !status.success() {
        bail!("{argv:?} ended with {status} and no output: {stderr}");
    }
    Ok((first, end))
}

/// Whether a program is on the PATH.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}
