//! The job's sandbox and its uid, through the real engine and the real init,
//! as root on this host: the uid pool's holds and releases, a failed sandbox
//! step that names itself and leaves nothing, and the parts of the seccomp
//! filter a shell cannot reach (x32 numbers, clone3, io_uring).
//! (The sandbox as users meet it, two users through jobctl, is in
//! `cli/tests/e2e/sandbox.rs`.)

#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

#[allow(dead_code, reason = "the fixture is shared by several test crates")]
mod common;

use common::{TestEngine, read_all};
use jobworker_ipc::{IpcError, JobState, Termination};
use jobworker_supervisor::engine::uids::JobIds;
use jobworker_supervisor::handoff::BindPath;

/// An engine whose pool has `count` uids.
fn engine_with_uids(count: u32) -> TestEngine {
    TestEngine::with(|c| {
        c.job_ids = JobIds::PerJob {
            range: 61184..=61184 + count - 1,
            excluded: Default::default(),
        };
    })
}

/// Runs `sh -c script` to its end; its output and final status.
async fn run(t: &TestEngine, script: &str) -> (String, jobworker_ipc::JobInfo) {
    let job = t.start("sh", &["-c", script]).await.unwrap();
    let (output, end) = read_all(&t.engine, &job, 0).await;
    (String::from_utf8(output).unwrap(), end)
}

/// A uid is held while its job runs and while its work directory has files;
/// a start that finds every uid held takes the oldest ended job's work
/// directory away, and fails only when every uid is held by a running job.
#[tokio::test(flavor = "multi_thread")]
async fn a_uid_is_held_until_nothing_of_the_job_is_left() {
    let t = engine_with_uids(2);

    // A ends with a file in /work: its uid stays held.
    let (_, a) = run(&t, "echo kept > /work/result").await;
    assert_eq!(a.termination, Some(Termination::Exited(0)));
    let a_work = t
        .state
        .path()
        .join("jobs")
        .join(a.id.to_string())
        .join("work");
    assert!(a_work.join("result").exists(), "A's work directory is kept");

    // B runs: it holds the other uid.
    let b = t.start("sleep", &["1000"]).await.unwrap();
    assert_ne!(b.uid, a.uid);

    // C: every uid is held, so A's work directory goes and C gets A's uid.
    let c = t.start("sleep", &["1000"]).await.unwrap();
    assert_eq!(c.uid, a.uid, "A's uid, reclaimed");
    assert!(!a_work.exists(), "A's work directory was removed for it");
    let a_now = t.engine.get(a.id).await.unwrap();
    assert_eq!(a_now.state, JobState::Finished, "A's record stays");

    // D: both uids are held by running jobs.
    let err = t.start("true", &[]).await.unwrap_err();
    let IpcError::ResourceExhausted { reason } = &err else {
        panic!("{err:?}");
    };
    assert!(
        reason.contains("61184-61185") && reason.contains("held"),
        "{reason}"
    );
    assert_eq!(t.job_dirs().len(), 3, "the refused start left nothing");

    // B ends with nothing in /work: its uid is free as soon as it has ended.
    t.engine.stop(b.id, None).await.unwrap();
    let d = t.start("id", &["-u"]).await.unwrap();
    assert_eq!(d.uid, b.uid, "B's uid, given back at its end");
    let (output, _) = read_all(&t.engine, &d, 0).await;
    assert_eq!(
        String::from_utf8(output).unwrap(),
        format!("{}\n", b.uid.unwrap())
    );
    t.engine.stop(c.id, None).await.unwrap();
}

/// A sandbox step that fails is a start error naming the step, and the
/// start leaves no record, directory, cgroup or held uid behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_sandbox_step_is_named_and_leaves_nothing() {
    let gone = tempfile::tempdir().unwrap();
    let source = gone.path().join("data");
    std::fs::create_dir(&source).unwrap();
    let t = TestEngine::with(|c| {
        c.job_ids = JobIds::PerJob {
            range: 61184..=61184,
            excluded: Default::default(),
        };
        c.sandbox.bind_paths.push(BindPath {
            source: source.clone(),
            target: None,
            writable: false,
        });
    });
    std::fs::remove_dir(&source).unwrap();
    let err = t.start("true", &[]).await.unwrap_err();
    let IpcError::FailedPrecondition { reason } = &err else {
        panic!("{err:?}");
    };
    assert!(
        reason.starts_with(&format!("binding {}: ", source.display()))
            && reason.contains("No such file"),
        "{reason}"
    );
    assert!(t.job_dirs().is_empty(), "no job directory remains");
    assert!(t.job_cgroups().is_empty(), "no job cgroup remains");
    std::fs::create_dir(&source).unwrap();
    let job = t.start("true", &[]).await.unwrap();
    assert_eq!(job.uid, Some(61184), "the only uid was given back");
}

/// What a shell cannot show of the filter: x32 system call numbers and
/// io_uring are refused, clone3 answers ENOSYS so that threads still start
/// (through clone), and `allow_io_uring` lets io_uring through.
#[tokio::test(flavor = "multi_thread")]
async fn the_seccomp_filter_refuses_what_a_shell_cannot_reach() {
    // perl's syscall() sets $! from the raw call. 0x40000027 is x32 getpid;
    // 425 is io_uring_setup (a NULL params pointer: EFAULT if let through);
    // 435 is clone3 (NULL args: EFAULT if let through).
    let probe = "perl -e 'for my $nr (0x40000027, 425, 435) { \
                 my $r = syscall($nr, 1, 0); print \"$nr $r $!\\n\" }'; \
                 python3 -c 'import threading; t = threading.Thread(target=print, \
                 args=(\"a thread ran\",)); t.start(); t.join()'";
    let t = TestEngine::new();
    let (output, end) = run(&t, probe).await;
    assert_eq!(end.termination, Some(Termination::Exited(0)), "{output}");
    assert_eq!(
        output,
        "1073741863 -1 Operation not permitted\n\
         425 -1 Operation not permitted\n\
         435 -1 Function not implemented\n\
         a thread ran\n"
    );

    let t = TestEngine::with(|c| c.sandbox.allow_io_uring = true);
    let (output, _) = run(&t, probe).await;
    assert!(output.contains("425 -1 Bad address\n"), "{output}");
}

/// The job's view: its uid, its private directories, the host read-only.
#[tokio::test(flavor = "multi_thread")]
async fn the_job_sees_a_read_only_host_and_its_own_directories() {
    let t = TestEngine::new();
    let script = "pwd; stat -c '%u %a' /work /tmp /var/tmp /dev/shm /run/lock; \
                  ls -A /tmp | wc -l; cat /proc/1/comm; \
                  for d in / /etc /usr /var /home /root /run; do \
                    touch $d/probe 2>&1 | sed 's/.*: //'; done; \
                  ls -A /home; ls -A /root; ls -A /run; \
                  grep '^0::' /proc/self/cgroup; grep Seccomp: /proc/self/status; \
                  ulimit -n; ulimit -c";
    let (output, end) = run(&t, script).await;
    let uid = end.uid.unwrap();
    let owned = format!("{uid} 1777");
    let expected = [
        "/work".to_owned(),
        format!("{uid} 700"),
        owned.clone(),
        owned.clone(),
        owned.clone(),
        owned,
    ]
    .into_iter()
    .chain(["0".to_owned(), "jobworker-init".to_owned()])
    .chain(std::iter::repeat_n("Read-only file system".to_owned(), 7))
    .chain([
        "lock".into(),
        "0::/".into(),
        "Seccomp:\t2".into(),
        "1024".into(),
        "0".into(),
    ])
    .collect::<Vec<_>>()
    .join("\n")
        + "\n";
    assert_eq!(output, expected);
}

/// The weaker choice an operator can still make: every job as one
/// configured account (`job_user`). The job runs as it, its work directory
/// and private tmpfs mounts are its, and nothing is taken from the pool.
#[tokio::test(flavor = "multi_thread")]
async fn a_shared_job_account_is_still_a_choice() {
    let t = TestEngine::with(|c| c.job_ids = JobIds::Shared { uid: 1, gid: 1 });
    let (output, end) = run(&t, "id -u; id -g; stat -c '%u %g' /work /tmp").await;
    assert_eq!((end.uid, end.gid), (Some(1), Some(1)));
    assert_eq!(output, "1\n1\n1 1\n1 1\n");
}

/// With the state directory on the host's tree (as the default
/// `/var/lib/jobworker` is), which the sandbox makes read-only for the job,
/// the init still writes the job's log and exit record (through a detached
/// copy of the job's directory, opened before), and the job cannot look in.
#[tokio::test(flavor = "multi_thread")]
async fn the_state_directory_stays_writable_for_the_init_alone() {
    let state = tempfile::Builder::new().tempdir_in("/var/lib").unwrap();
    let state_dir = state.path().to_path_buf();
    let t = TestEngine::with(|c| c.state_dir = state_dir.clone());
    let script = format!(
        "echo hi; ls {} 2>&1 | sed 's/.*: //'; exit 3",
        state_dir.join("jobs").display()
    );
    let (output, end) = run(&t, &script).await;
    assert_eq!(output, "hi\nPermission denied\n");
    assert_eq!(end.termination, Some(Termination::Exited(3)));
}
