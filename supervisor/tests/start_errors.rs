//! Starts the host refuses, provoked for real: clone3 of a job's init fails
//! with EAGAIN when its pid namespace has no pid left, and with ENOSPC when
//! pid namespaces are nested as deep as the kernel allows. Both are
//! RESOURCE_EXHAUSTED, and the failed start leaves nothing behind.
//!
//! The host's own limits are never touched: each test runs this binary again
//! as a helper inside private pid namespaces (`unshare --pid --fork`), where
//! `kernel.pid_max` is the namespace's own (Linux 6.14 and later) and the
//! nesting depth is the helper's. Run as root; the tests fail (never skip)
//! otherwise.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

#[allow(dead_code, reason = "the fixture is shared by several test crates")]
mod common;

use std::process::{Child, Command, Stdio};

use common::TestEngine;
use jobworker_ipc::{IpcError, Termination};
use jobworker_supervisor::engine::uids::JobIds;

/// In a helper's environment: the outer test's pid and pid namespace.
const HELPER: &str = "JOBWORKER_START_ERRORS_OUTER";

/// The deepest level of pid namespace the kernel makes (`MAX_PID_NS_LEVEL`;
/// the host's is level 0).
const MAX_PID_NS_LEVEL: usize = 32;

/// The smallest `kernel.pid_max` (`PID_MAX_MIN`): pids 1 to 300, and after
/// the first wrap only 300 (the lower ones are reserved).
const PID_MAX_MIN: &str = "301";

const PID_MAX: &str = "/proc/sys/kernel/pid_max";

/// The only uid jobs get: a failed start that kept it would make the next
/// start fail for want of uids instead.
const ONE_UID: u32 = 61184;

#[test]
fn clone3_without_a_free_pid_is_resource_exhausted() {
    run_helper("helper_without_a_free_pid", 1);
}

#[test]
fn clone3_beyond_the_deepest_pid_namespace_is_resource_exhausted() {
    run_helper("helper_in_the_deepest_pid_namespace", MAX_PID_NS_LEVEL);
}

/// Runs the test `name` of this binary as the init of a pid namespace
/// `depth` levels below this one, and fails unless it passed.
fn run_helper(name: &str, depth: usize) {
    common::require_root_and_cgroup2();
    let mut command = Command::new("timeout");
    command.arg("120");
    for _ in 0..depth {
        command.args(["unshare", "--pid", "--fork", "--kill-child"]);
    }
    let output = command
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture"])
        .env(
            HELPER,
            format!("{} {}", std::process::id(), pid_namespace()),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the helper {name} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

/// The pid of the outer test if this is a helper it started as the init of
/// a pid namespace of its own; `None` when the test was run directly.
fn outer_test() -> Option<u32> {
    let Ok(outer) = std::env::var(HELPER) else {
        eprintln!("nothing to do: this test runs only as a helper of another");
        return None;
    };
    let (pid, namespace) = outer.split_once(' ').unwrap();
    assert_eq!(
        std::process::id(),
        1,
        "a helper is the init of its namespace"
    );
    assert_ne!(
        pid_namespace(),
        namespace,
        "a helper has a pid namespace of its own"
    );
    Some(pid.parse().unwrap())
}

fn pid_namespace() -> String {
    let link = std::fs::read_link("/proc/self/ns/pid").unwrap();
    link.to_string_lossy().into_owned()
}

/// An engine like [`TestEngine::new`]'s with one job uid, under a cgroup
/// root named after the outer test's pid and `helper`: a helper's own pid is
/// 1, as is every other helper's.
fn engine_with_one_uid(outer: u32, helper: &str) -> TestEngine {
    TestEngine::at(&format!("jobworker-test-{outer}-{helper}"), |c| {
        c.job_ids = JobIds::PerJob {
            range: ONE_UID..=ONE_UID,
            excluded: Default::default(),
        };
    })
}

/// Asserts that a start was refused as RESOURCE_EXHAUSTED by clone3 with
/// `errno`, saying `what`, and left no directory or cgroup.
fn assert_refused(t: &TestEngine, err: &IpcError, errno: i32, what: &str) {
    let IpcError::ResourceExhausted { reason } = err else {
        panic!("{err:?}");
    };
    assert!(
        reason.contains(what)
            && reason.contains(&format!("clone3 into {}", t.cgroup_root.display()))
            && reason.contains(&format!("(os error {errno})")),
        "{reason}"
    );
    assert!(t.job_dirs().is_empty(), "no job directory remains");
    assert!(t.job_cgroups().is_empty(), "no job cgroup remains");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a helper of clone3_without_a_free_pid_is_resource_exhausted"]
async fn helper_without_a_free_pid() {
    let Some(outer) = outer_test() else {
        return;
    };
    let t = engine_with_one_uid(outer, "without-a-free-pid");
    assert!(
        linux_at_least(6, 14),
        "kernel.pid_max is per pid namespace from Linux 6.14 on; before, this would set the host's"
    );
    let pid_max = std::fs::read_to_string(PID_MAX).unwrap();
    std::fs::write(PID_MAX, PID_MAX_MIN).unwrap();
    let mut last = hold_the_last_pid();
    let fork = Command::new("true").status();
    // Nothing has run on tokio's blocking pool, so it has no thread, and no
    // thread can be made now: the failed start must clean up without one.
    let refused = t.start("true", &[]).await;
    last.kill().unwrap();
    last.wait().unwrap();
    std::fs::write(PID_MAX, pid_max.trim()).unwrap();

    let fork = fork.unwrap_err();
    assert_eq!(
        fork.raw_os_error(),
        Some(libc::EAGAIN),
        "no pid is left: {fork}"
    );
    assert_refused(
        &t,
        &refused.unwrap_err(),
        libc::EAGAIN,
        "too many processes",
    );
    let job = t.start("true", &[]).await.unwrap();
    assert_eq!(job.uid, Some(ONE_UID), "the failed start gave its uid back");
    let (_, end) = t.output(&job).await;
    assert_eq!(end.termination, Some(Termination::Exited(0)));
}

/// Whether the running kernel is Linux `major.minor` or later.
fn linux_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (major, minor)
}

/// Holds pid 300 (with `kernel.pid_max` at 301): then no pid is left.
fn hold_the_last_pid() -> Child {
    for _ in 0..400 {
        let mut child = Command::new("sleep")
            .arg("600")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        if child.id() == 300 {
            return child;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    panic!("no child got pid 300");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a helper of clone3_beyond_the_deepest_pid_namespace_is_resource_exhausted"]
async fn helper_in_the_deepest_pid_namespace() {
    let Some(outer) = outer_test() else {
        return;
    };
    let t = engine_with_one_uid(outer, "in-the-deepest-pid-namespace");
    // Twice: the second would fail for want of uids had the first kept its.
    for _ in 0..2 {
        let err = t.start("true", &[]).await.unwrap_err();
        assert_refused(&t, &err, libc::ENOSPC, "limit on namespaces");
    }
}
