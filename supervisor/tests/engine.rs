//! The job engine with real jobs: clone3 into real namespaces and a real
//! cgroup on this host's cgroup2 mount, the real `jobworker-init` as their init.
//! Run as root; the tests fail (never skip) otherwise.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

mod common;

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::{JOB_UIDS, TestEngine, drain, read_all, spec};
use jobworker_ipc::{IpcError, JobState, Termination};
use jobworker_supervisor::handoff::BindPath;

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// A world-readable scratch directory (the job runs as nobody).
/// A directory of the host's /tmp (which jobs do not see) and an engine
/// whose jobs see it, read-only, through the operator's `bind_paths`.
fn public_dir() -> (tempfile::TempDir, TestEngine) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let source = dir.path().to_path_buf();
    let t = TestEngine::with(|c| {
        c.sandbox.bind_paths.push(BindPath {
            source,
            target: None,
            writable: false,
        });
    });
    (dir, t)
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_gives_exactly_its_output() {
    let t = TestEngine::new();
    let job = t.start("/bin/echo", &["hello"]).await.unwrap();
    assert_eq!(job.state, JobState::Running);
    assert!(job.pid.is_some());
    let (output, end) = t.output(&job).await;
    assert_eq!(output, b"hello\n");
    assert_eq!(end.state, JobState::Finished);
    assert_eq!(end.termination, Some(Termination::Exited(0)));
    assert_eq!(end.output_bytes, 6);
    assert_eq!(end.output_truncated_bytes, 0);
    assert!(end.ended_at.is_some() && end.started_at.is_some());
    let log = std::fs::read(
        t.state
            .path()
            .join("jobs")
            .join(job.id.to_string())
            .join("output.log"),
    );
    assert_eq!(log.unwrap(), b"hello\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_and_signals_are_recorded() {
    let t = TestEngine::new();
    let exit3 = t.start("sh", &["-c", "exit 3"]).await.unwrap();
    let killed = t.start("sh", &["-c", "kill -9 $$"]).await.unwrap();
    let (_, end) = t.output(&exit3).await;
    assert_eq!(end.termination, Some(Termination::Exited(3)));
    assert_eq!(end.state, JobState::Finished);
    let (_, end) = t.output(&killed).await;
    assert_eq!(end.termination, Some(Termination::Signaled(9)));
    assert_eq!(end.state, JobState::Finished);
}

async fn run_text(t: &TestEngine, command: &str, args: &[&str]) -> String {
    let job = t.start(command, args).await.unwrap();
    let (output, end) = t.output(&job).await;
    let text = String::from_utf8(output).unwrap();
    assert_eq!(
        end.termination,
        Some(Termination::Exited(0)),
        "{command} {args:?}: {text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_are_isolated() {
    let t = TestEngine::new();

    let pids = run_text(&t, "sh", &["-c", "ls /proc | grep -E '^[0-9]+$'"]).await;
    let pids: Vec<u32> = pids.lines().map(|l| l.parse().unwrap()).collect();
    assert!(pids.contains(&1), "the init is pid 1: {pids:?}");
    assert!(pids.len() <= 4, "only the job's own processes: {pids:?}");

    let dev = run_text(&t, "cat", &["/proc/net/dev"]).await;
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"], "{dev}");
    let sys_net = run_text(&t, "ls", &["/sys/class/net"]).await;
    assert_eq!(
        sys_net.trim(),
        "lo",
        "sysfs shows the job's network namespace"
    );
    let lo_up = run_text(&t, "cat", &["/sys/class/net/lo/operstate"]).await;
    assert_ne!(lo_up.trim(), "down", "lo is up");

    let hostname = run_text(&t, "hostname", &[]).await;
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    assert_ne!(hostname.trim(), host);
    assert!(hostname.starts_with("job-"), "{hostname}");

    let job = t.start("sh", &["-c", "id -u; id -g; id -G"]).await.unwrap();
    let (output, end) = t.output(&job).await;
    let uid = end.uid.expect("a job's status names its uid");
    assert!(JOB_UIDS.contains(&uid), "uid {uid} from the job range");
    assert_eq!(end.gid, Some(uid), "the same number as gid");
    assert_eq!(
        String::from_utf8(output).unwrap(),
        format!("{uid}\n{uid}\n{uid}\n"),
        "runs as its uid and gid, no supplementary groups"
    );

    let status = run_text(
        &t,
        "grep",
        &["-E", "^(Cap|NoNewPrivs|SigBlk|SigIgn)", "/proc/self/status"],
    )
    .await;
    for line in status.lines() {
        let (key, value) = line.split_once(':').unwrap();
        let expected = if key == "NoNewPrivs" {
            "1"
        } else {
            "0000000000000000"
        };
        assert_eq!(value.trim(), expected, "{line}");
    }
    assert_eq!(status.lines().count(), 8, "{status}");

    let fds = run_text(&t, "ls", &["/proc/self/fd"]).await;
    let mut fds: Vec<u32> = fds.lines().map(|l| l.parse().unwrap()).collect();
    fds.sort_unstable();
    // 0, 1, 2, and the directory ls itself opened to list them.
    assert_eq!(&fds[..3], [0, 1, 2]);
    assert!(fds.len() <= 4, "no inherited descriptors: {fds:?}");

    let env = run_text(&t, "env", &[]).await;
    assert_eq!(
        env.trim(),
        format!("PATH={}", jobworker_supervisor::engine::DEFAULT_PATH)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_job_is_in_its_cgroup_from_its_first_instruction() {
    let t = TestEngine::new();
    // The job's cgroup namespace was made at the clone: its root is the
    // cgroup the init was cloned into, so the job's cgroup itself reads "/".
    let job = t.start("/bin/cat", &["/proc/self/cgroup"]).await.unwrap();
    let (output, _) = t.output(&job).await;
    let text = String::from_utf8(output).unwrap();
    let v2 = text.lines().find(|l| l.starts_with("0::")).unwrap();
    assert_eq!(v2, "0::/", "the job sees its own cgroup as the root");
    // And that cgroup is the job's, as the host sees it.
    let job = t.start("sleep", &["30"]).await.unwrap();
    let host_view = std::fs::read_to_string(format!("/proc/{}/cgroup", job.pid.unwrap())).unwrap();
    let v2 = host_view.lines().find(|l| l.starts_with("0::")).unwrap();
    assert!(
        v2.ends_with(&format!("/jobs/{}", job.id)),
        "the init runs in {v2}, not in its job cgroup"
    );
    t.engine.stop(job.id, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_leaves_no_process_behind() {
    let t = TestEngine::new();
    let job = t
        .start("sh", &["-c", "sleep 1000 & sleep 1000"])
        .await
        .unwrap();
    let cgroup = t.cgroup_root.join("jobs").join(job.id.to_string());
    let pids = wait_for_pids(&cgroup, 4).await;
    let stopped = t.engine.stop(job.id, None).await.unwrap();
    assert_eq!(stopped.state, JobState::Stopped);
    assert!(stopped.pid.is_none());
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} of the stopped job survived"
        );
    }
    assert!(t.job_cgroups().is_empty(), "the job's cgroup is gone");
    let again = t.engine.stop(job.id, None).await.unwrap();
    assert_eq!(again, stopped, "stopping an ended job returns it as it is");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_ignoring_sigterm_is_killed_after_the_grace_period() {
    let t = TestEngine::new();
    let job = t
        .start(
            "sh",
            &["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
        )
        .await
        .unwrap();
    let mut stream = t.engine.output(job.id, 0, true).unwrap();
    let first = stream.next().await.unwrap();
    assert!(matches!(
        first,
        Some(jobworker_supervisor::engine::Chunk::Data { .. })
    ));
    let stopped = t
        .engine
        .stop(job.id, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(stopped.state, JobState::Stopped);
    assert_eq!(
        stopped.termination,
        Some(Termination::Signaled(9)),
        "SIGTERM was ignored, so SIGKILL ended it"
    );
    assert!(t.job_cgroups().is_empty());
}

async fn wait_for_pids(cgroup: &std::path::Path, at_least: usize) -> Vec<u32> {
    for _ in 0..500 {
        let pids: Vec<u32> = std::fs::read_to_string(cgroup.join("cgroup.procs"))
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        if pids.len() >= at_least {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the job never had {at_least} processes");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_readers_get_identical_bytes() {
    let t = TestEngine::new();
    let job = t
        .start("sh", &["-c", "head -c 52428800 /dev/urandom"])
        .await
        .unwrap();
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let engine = t.engine.clone();
            let job = job.clone();
            tokio::spawn(async move {
                let (bytes, end) = read_all(&engine, &job, 0).await;
                (bytes.len(), hash(&bytes), end)
            })
        })
        .collect();
    let mut results = Vec::new();
    for reader in readers {
        results.push(reader.await.unwrap());
    }
    let log = t.output_log(&job);
    assert_eq!(log.len(), 50 << 20);
    for (len, h, end) in &results {
        assert_eq!(*len, log.len());
        assert_eq!(*h, hash(&log));
        assert_eq!(end.state, JobState::Finished);
        assert_eq!(end.output_bytes, 50 << 20);
    }

    let (late, _) = read_all(&t.engine, &job, 0).await;
    assert_eq!(
        hash(&late),
        hash(&log),
        "a reader after the end gets everything"
    );
    let (rest, _) = read_all(&t.engine, &job, 1_000_000).await;
    assert_eq!(
        rest,
        log[1_000_000..],
        "a reader at an offset gets the rest"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_byte_value_round_trips() {
    let (dir, t) = public_dir();
    let path = dir.path().join("bytes");
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    std::fs::write(&path, &all).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let job = t.start("cat", &[path.to_str().unwrap()]).await.unwrap();
    let (output, _) = t.output(&job).await;
    assert_eq!(output, all);
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_that_cannot_run_fail_at_start_and_leave_nothing() {
    let t = TestEngine::new();
    let err = t.start("/nonexistent", &[]).await.unwrap_err();
    let IpcError::FailedPrecondition { reason } = &err else {
        panic!("{err:?}");
    };
    assert!(
        reason.contains("/nonexistent") && reason.contains("No such file"),
        "{reason}"
    );

    let (dir, with_dir) = public_dir();
    let script = dir.path().join("not-executable");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = with_dir
        .start(script.to_str().unwrap(), &[])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not-executable") && err.to_string().contains("Permission denied"),
        "{err}"
    );
    assert!(with_dir.job_dirs().is_empty(), "no job directory remains");

    let err = t.start("no-such-command-anywhere", &[]).await.unwrap_err();
    assert!(
        err.to_string().contains("no-such-command-anywhere"),
        "{err}"
    );

    let mut in_missing_dir = spec("/bin/true", &[]);
    in_missing_dir.working_dir = Some(jobworker_ipc::WorkingDir::new("/nonexistent-dir").unwrap());
    let err = t.start_spec(in_missing_dir).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent-dir"), "{err}");

    let (jobs, _) = t
        .engine
        .list(|_| true, None, &Default::default(), 100, None)
        .await;
    assert!(jobs.is_empty(), "no job remains: {jobs:?}");
    assert!(t.job_dirs().is_empty(), "no job directory remains");
    assert!(t.job_cgroups().is_empty(), "no job cgroup remains");
}

#[tokio::test(flavor = "multi_thread")]
async fn output_over_the_cap_is_dropped_and_counted() {
    let t = TestEngine::with(|c| c.output_cap = 1000);
    let job = t.start("head", &["-c", "5000", "/dev/zero"]).await.unwrap();
    let (output, end) = t.output(&job).await;
    assert_eq!(output.len(), 1000);
    assert_eq!(end.state, JobState::Finished);
    assert_eq!(end.termination, Some(Termination::Exited(0)));
    assert_eq!(end.output_bytes, 5000);
    assert_eq!(end.output_truncated_bytes, 4000);
}

#[tokio::test(flavor = "multi_thread")]
async fn unenforceable_limits_are_reported_or_refused() {
    let limits =
        jobworker_ipc::Limits::new(Some(500), Some(64 << 20), None, Some(1 << 20), Some(32))
            .unwrap();
    let t = TestEngine::new();
    let controllers = t.engine.controllers();
    let mut limited = spec("/bin/true", &[]);
    limited.limits = limits;
    let job = t.start_spec(limited.clone()).await.unwrap();
    assert_eq!(job.limits, limits);
    assert_eq!(job.enforced.cpu, controllers.cpu);
    assert_eq!(job.enforced.memory, controllers.memory);
    assert_eq!(job.enforced.pids, controllers.pids);
    t.output(&job).await;

    let strict = TestEngine::with(|c| c.strict_limits = true);
    let all_enforceable =
        controllers.cpu && controllers.memory && controllers.io && controllers.pids;
    match strict.start_spec(limited).await {
        Ok(job) => {
            assert!(
                all_enforceable,
                "strict limits let an unenforceable job start"
            );
            strict.output(&job).await;
        }
        Err(err) => {
            assert!(
                !all_enforceable,
                "strict limits refused an enforceable job: {err}"
            );
            assert!(
                matches!(err, IpcError::FailedPrecondition { ref reason } if reason.contains("cannot be enforced")),
                "{err:?}"
            );
            assert!(strict.job_dirs().is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_racing_with_the_commands_own_end_leaves_it_finished() {
    let t = TestEngine::new();
    let job = t.start("sh", &["-c", "sleep 0.2; exit 7"]).await.unwrap();
    let cgroup = t.cgroup_root.join("jobs").join(job.id.to_string());
    // Wait until only the init is left (the command has ended), then stop.
    for _ in 0..2000 {
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        if procs.lines().count() <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let info = t.engine.stop(job.id, None).await.unwrap();
    assert_eq!(info.termination, Some(Termination::Exited(7)));
    assert_eq!(info.state, JobState::Finished, "it ended by itself");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grace_period_over_the_maximum_is_refused() {
    let t = TestEngine::with(|c| c.grace = Duration::from_secs(2));
    let job = t.start("sleep", &["1000"]).await.unwrap();
    let err = t
        .engine
        .stop(job.id, Some(Duration::from_secs(3)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, IpcError::InvalidArgument { ref field, .. } if field == "grace_period"),
        "{err:?}"
    );
    let stopped = t
        .engine
        .stop(job.id, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(stopped.state, JobState::Stopped);
}

/// A stop's SIGTERM reaches every process of the job, not only its command:
/// a child that cleans up on SIGTERM gets to, while the command itself
/// ignores the signal and only waits for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_gives_every_process_its_sigterm() {
    let t = TestEngine::new();
    let script = "sh -c 'trap \"echo child cleaned up; exit 0\" TERM; echo child ready; \
                  while :; do sleep 0.05; done' & trap '' TERM; wait; wait";
    let job = t.start("sh", &["-c", script]).await.unwrap();
    let mut ready = false;
    for _ in 0..200 {
        if read_all_now(&t, &job).await.contains("child ready") {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "the child never started");
    let stopped = t.engine.stop(job.id, None).await.unwrap();
    assert_eq!(stopped.state, JobState::Stopped);
    let (output, _) = t.output(&job).await;
    let output = String::from_utf8(output).unwrap();
    // (The child's own sleep got the SIGTERM too: its shell may say so.)
    assert!(
        output.starts_with("child ready\n") && output.ends_with("child cleaned up\n"),
        "{output:?}"
    );
    assert_eq!(
        stopped.termination,
        Some(Termination::Exited(0)),
        "the command ended by itself once its child had"
    );
}

/// The output a job has written so far.
async fn read_all_now(t: &TestEngine, job: &jobworker_ipc::JobInfo) -> String {
    let mut stream = t.engine.output(job.id, 0, false).unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await.unwrap() {
        match chunk {
            jobworker_supervisor::engine::Chunk::Data { bytes: data, .. } => {
                bytes.extend_from_slice(&data);
            }
            jobworker_supervisor::engine::Chunk::End(_) => break,
        }
    }
    String::from_utf8(bytes).unwrap()
}

/// An offset no output can reach is refused as such (a seek there would
/// fail), after the job's existence is checked; the largest valid one is an
/// empty read.
#[tokio::test(flavor = "multi_thread")]
async fn an_offset_beyond_any_output_is_an_invalid_argument() {
    let t = TestEngine::new();
    let job = t.start("echo", &["hi"]).await.unwrap();
    let _ = t.output(&job).await;
    for offset in [1 << 63, u64::MAX] {
        let Err(err) = t.engine.output(job.id, offset, true) else {
            panic!("offset {offset} accepted");
        };
        assert!(
            matches!(&err, IpcError::InvalidArgument { field, .. } if field == "offset"),
            "{err:?}"
        );
    }
    let (rest, end) = read_all(&t.engine, &job, i64::MAX as u64).await;
    assert!(rest.is_empty());
    assert_eq!(end.state, JobState::Finished);
}

/// A record written by a newer supervisor is left as it is, and recovery
/// refuses to go on: this supervisor would misread it.
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_record_stops_recovery_and_stays_untouched() {
    let t = TestEngine::new();
    let dir = t
        .state
        .path()
        .join("jobs")
        .join(jobworker_ipc::JobId::random().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let newer = jobworker_supervisor::engine::job::RECORD_VERSION + 1;
    let record = format!(r#"{{"version": {newer}, "spec": {{}}, "status": {{}}}}"#);
    std::fs::write(dir.join("job.json"), &record).unwrap();
    let err = t.engine.recover().unwrap_err().to_string();
    assert!(
        err.contains(&format!("record version {newer}, newer than")),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("job.json")).unwrap(),
        record
    );
}

/// A follower learns of output while the job runs (its log is watched from
/// its first follower on), not only at the job's end: the job here writes
/// its second line only once the follower has its first, and never ends by
/// itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_is_woken_by_output_while_the_job_runs() {
    let t = TestEngine::new();
    let job = t
        .start(
            "sh",
            &[
                "-c",
                "echo first; while [ ! -e /work/go ]; do sleep 0.05; done; echo second; sleep 1000",
            ],
        )
        .await
        .unwrap();
    let go = t.job_dir(&job).join("work").join("go");
    let mut stream = t.engine.output(job.id, 0, true).unwrap();
    let mut seen = Vec::new();
    // Bounded so that a broken watch fails rather than hangs: without it,
    // output after the follower's first read would come only with the
    // job's end, which never comes.
    let woken = tokio::time::timeout(Duration::from_secs(60), async {
        for (line, then) in [(&b"first\n"[..], Some(&go)), (b"second\n", None)] {
            while !seen.ends_with(line) {
                match stream.next().await.unwrap() {
                    Some(jobworker_supervisor::engine::Chunk::Data { bytes, .. }) => {
                        seen.extend_from_slice(&bytes);
                    }
                    other => panic!("the job's output ended early: {other:?}"),
                }
            }
            if let Some(path) = then {
                std::fs::write(path, b"").unwrap();
            }
        }
    })
    .await;
    let state = t.engine.get(job.id).await.unwrap().state;
    t.engine.stop(job.id, None).await.unwrap();
    assert!(woken.is_ok(), "the follower was not woken: {seen:?}");
    assert_eq!(state, JobState::Running, "woken while the job runs");
}

/// Followers of one job share its tail; one that falls far behind it (more
/// than the tail keeps) reads the rest from the log; each gets every byte
/// exactly once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn followers_share_the_tail_and_a_slow_one_catches_up_from_the_log() {
    let t = TestEngine::new();
    let big = jobworker_supervisor::engine::output::TAIL_BYTES + (1 << 20);
    let script = format!(
        "for i in $(seq 1 2000); do echo $i; done; sleep 0.3; \
         head -c {big} /dev/zero | tr '\\0' x; echo; sleep 0.3; echo end"
    );
    let job = t.start("sh", &["-c", &script]).await.unwrap();
    let engine = Arc::clone(&t.engine);
    let fast: Vec<_> = (0..8)
        .map(|_| {
            let (engine, job) = (Arc::clone(&engine), job.clone());
            tokio::spawn(async move { read_all(&engine, &job, 0).await })
        })
        .collect();
    // Attached now, read only once the job has written more than the tail
    // keeps.
    let slow = t.engine.output(job.id, 0, true).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (slow_bytes, _) = drain(slow, 0).await;
    let log = t.output_log(&job);
    assert!(log.len() as u64 > big && log.ends_with(b"\nend\n"));
    assert!(
        slow_bytes == log,
        "the slow follower got the log byte for byte"
    );
    for follower in fast {
        let (bytes, end) = follower.await.unwrap();
        assert!(bytes == log, "a follower got the log byte for byte");
        assert_eq!(end.termination, Some(Termination::Exited(0)));
    }
}

/// The pids in the cgroup `dir`.
fn cgroup_pids(dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// Waits (up to 10 s) until the engine's spare init waits in `<root>/spare`;
/// its pid.
async fn spare_init(t: &TestEngine) -> u32 {
    let spare = t.cgroup_root.join("spare");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let [pid] = cgroup_pids(&spare)[..] {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no spare init after a start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_on_the_spare_init_runs_in_its_own_cgroup_rooted_there() {
    let t = TestEngine::new();
    let first = t.start("/bin/true", &[]).await.unwrap();
    t.output(&first).await;

    // A start after it takes the spare init the first left: the init is
    // moved into the job's cgroup, and nothing is left in the spare's.
    let spare = spare_init(&t).await;
    let job = t.start("sleep", &["1"]).await.unwrap();
    assert_eq!(job.pid, Some(spare), "the spare init took the job");
    let job_cgroup = t.cgroup_root.join("jobs").join(job.id.to_string());
    let in_job = cgroup_pids(&job_cgroup);
    assert!(in_job.contains(&spare), "{in_job:?}");
    assert_eq!(in_job.len(), 2, "the init and sleep: {in_job:?}");
    assert!(
        !cgroup_pids(&t.cgroup_root.join("spare")).contains(&spare),
        "the init left the spare's cgroup"
    );
    let (_, end) = t.output(&job).await;
    assert_eq!(end.termination, Some(Termination::Exited(0)));

    // Its view of cgroups is rooted at its own.
    let spare = spare_init(&t).await;
    let job = t.start("cat", &["/proc/self/cgroup"]).await.unwrap();
    assert_eq!(job.pid, Some(spare), "the spare init took the job");
    let (output, end) = t.output(&job).await;
    let output = String::from_utf8_lossy(&output);
    let unified: Vec<&str> = output.lines().filter(|l| l.starts_with("0::")).collect();
    assert_eq!(unified, ["0::/"], "{output}");
    assert_eq!(end.termination, Some(Termination::Exited(0)));
}
