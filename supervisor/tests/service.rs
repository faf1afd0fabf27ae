//! The supervisor as a daemon: the real binary, its real socket, real peer
//! credentials (other uids through `setpriv`), socket activation through
//! `systemd-socket-activate`, `kill -9` and restart. Run as root, with
//! `socat` installed; the tests fail (never skip) otherwise.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

mod daemon;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use daemon::{BINARY, Daemon, decode_responses, encode_call};
use futures::{SinkExt, StreamExt};
use jobworker_ipc::{
    Call, IpcError, JobId, JobInfo, JobSpec, JobState, Owner, PageSize, Request, RequestId,
    Response, Role, StopReason, Termination, UserName, frame, handshake,
};
use jobworker_tests::fixture::supervisor::job_spec;
use jobworker_tests::procs;

fn spec(command: &str, args: &[&str]) -> JobSpec {
    job_spec(command, args).unwrap()
}

fn start(command: &str, args: &[&str]) -> Request {
    Request::StartJob(spec(command, args))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_operator_can_do_everything() {
    let d = Daemon::start("");
    let Response::Pong(info) = d.local(Request::Ping).await else {
        panic!("no pong");
    };
    assert_eq!(info.caller, Owner::Local(UserName::new("root").unwrap()));
    assert_eq!(info.cgroup_root, d.cgroup_root().display().to_string());

    let job = d.local_job(start("/bin/echo", &["hi"])).await;
    assert_eq!(job.owner.to_string(), "local:root");
    let (output, end) = d.output(&job).await;
    assert_eq!(output, b"hi\n");
    assert_eq!(end.termination, Some(Termination::Exited(0)));
    let got = d.local_job(Request::GetJob { job: job.id }).await;
    assert_eq!(got.state, JobState::Finished);

    let sleeper = d.local_job(start("sleep", &["1000"])).await;
    let Response::Jobs { jobs, next } = d
        .local(Request::ListJobs {
            state: None,
            limit: PageSize::DEFAULT,
            after: None,
            labels: Default::default(),
        })
        .await
    else {
        panic!("no list");
    };
    assert_eq!(
        jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        [sleeper.id, job.id],
        "newest first"
    );
    assert!(next.is_none());
    let Response::Jobs { jobs, .. } = d
        .local(Request::ListJobs {
            state: Some(JobState::Running),
            limit: PageSize::new(1).unwrap(),
            after: None,
            labels: Default::default(),
        })
        .await
    else {
        panic!("no list");
    };
    assert_eq!(jobs.len(), 1);
    let stopped = d
        .local_job(Request::StopJob {
            job: sleeper.id,
            grace: None,
        })
        .await;
    assert_eq!(stopped.state, JobState::Stopped);

    let missing = JobId::random();
    assert_eq!(
        d.local(Request::GetJob { job: missing }).await,
        Response::Error(IpcError::NotFound { job: missing })
    );
    let log = d.log_text();
    assert!(
        log.contains("audit") && log.contains("op=\"start\""),
        "{log}"
    );
}

/// A remote user at `max_running_jobs_per_user` is refused with the figure,
/// also when the starts come at once; others are not, nor is a local
/// operator; a slot frees when a job ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_runs_at_most_the_cap() {
    let d = Daemon::start("max_running_jobs_per_user = 3\n");
    let starts: Vec<Vec<Response>> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| d.as_gateway("alice", Role::User, start("sleep", &["600"]))))
            .collect();
        starts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let (ok, refused): (Vec<_>, Vec<_>) = starts
        .into_iter()
        .map(|mut r| r.pop().unwrap())
        .partition(|r| matches!(r, Response::Job(_)));
    assert_eq!((ok.len(), refused.len()), (3, 3), "{refused:?}");
    for r in &refused {
        assert!(
            matches!(r, Response::Error(IpcError::ResourceExhausted { reason })
                if reason.contains("alice has 3 jobs running or starting")
                    && reason.contains("at most 3 per user")),
            "{r:?}"
        );
    }
    assert!(matches!(
        d.as_gateway("bob", Role::User, start("/bin/true", &[]))
            .as_slice(),
        [Response::Job(_)]
    ));
    let local = d.local_job(start("sleep", &["600"])).await;
    assert_eq!(local.state, JobState::Running);
    let Response::Job(first) = &ok[0] else {
        unreachable!()
    };
    let stop = Request::StopJob {
        job: first.id,
        grace: None,
    };
    assert!(matches!(
        d.as_gateway("alice", Role::User, stop).as_slice(),
        [Response::Job(_)]
    ));
    assert!(matches!(
        d.as_gateway("alice", Role::User, start("/bin/true", &[]))
            .as_slice(),
        [Response::Job(_)]
    ));
}

/// A job directory without a record, output or exit record (a start that
/// failed before writing its record, e.g. out of file descriptors) is
/// removed at the next start, never listed as a FAILED job of unknown
/// command; one with output is kept, FAILED saying why.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_that_never_wrote_its_record_leaves_no_job() {
    let mut d = Daemon::start("");
    let kept = d.local_job(start("/bin/true", &[])).await;
    d.kill9();
    let phantom = JobId::random();
    let dir = d.state_dir.join(format!("jobs/{phantom}"));
    std::fs::create_dir_all(dir.join("work")).unwrap();
    // One whose record a host crash lost, but whose job did run: kept,
    // FAILED saying why.
    let ran = JobId::random();
    let ran_dir = d.state_dir.join(format!("jobs/{ran}"));
    std::fs::create_dir_all(&ran_dir).unwrap();
    std::fs::write(ran_dir.join("output.log"), b"some output\n").unwrap();
    d.restart().unwrap();
    let jobs = listed(&d).await;
    assert!(jobs.contains_key(&kept.id));
    assert!(!jobs.contains_key(&phantom), "{:?}", jobs.get(&phantom));
    assert!(!dir.exists(), "its directory is left");
    assert!(d.log_text().contains("a job directory without a record"));
    let info = &jobs[&ran];
    assert_eq!(info.state, JobState::Failed);
    assert!(
        info.failure
            .as_deref()
            .is_some_and(|f| f.contains("its record could not be recovered")),
        "{info:?}"
    );
    assert!(ran_dir.join("output.log").exists(), "its output is kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthorized_uid_is_refused() {
    let d = Daemon::start("");
    let call = Call {
        on_behalf_of: None,
        request: Request::Ping,
    };
    let reply = d.raw_as("nobody", &encode_call(&call));
    assert!(reply.is_empty(), "nobody got {} bytes back", reply.len());
    assert!(d.log_text().contains("connection refused"));
    // The supervisor still serves others.
    assert!(matches!(d.local(Request::Ping).await, Response::Pong(_)));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_acts_for_users_within_their_rights() {
    let d = Daemon::start("");
    let started = |responses: Vec<Response>| match responses.as_slice() {
        [Response::Job(info)] => (**info).clone(),
        other => panic!("expected a job, got {other:?}"),
    };
    let bobs = started(d.as_gateway("bob", Role::User, start("sleep", &["1000"])));
    assert_eq!(bobs.owner, Owner::Remote(UserName::new("bob").unwrap()));
    let alices = started(d.as_gateway("alice", Role::User, start("/bin/true", &[])));

    for request in [
        Request::GetJob { job: bobs.id },
        Request::StopJob {
            job: bobs.id,
            grace: None,
        },
        Request::StreamOutput {
            job: bobs.id,
            offset: 0,
            follow: false,
        },
    ] {
        assert_eq!(
            d.as_gateway("alice", Role::User, request),
            [Response::Error(IpcError::NotFound { job: bobs.id })],
            "alice must not see bob's job"
        );
    }
    let list = d.as_gateway(
        "alice",
        Role::User,
        Request::ListJobs {
            state: None,
            limit: PageSize::DEFAULT,
            after: None,
            labels: Default::default(),
        },
    );
    let [Response::Jobs { jobs, .. }] = list.as_slice() else {
        panic!("{list:?}");
    };
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [alices.id]);

    let reader = d.as_gateway("rita", Role::Reader, start("/bin/true", &[]));
    assert!(
        matches!(
            reader.as_slice(),
            [Response::Error(IpcError::PermissionDenied { .. })]
        ),
        "{reader:?}"
    );
    let seen = d.as_gateway("rita", Role::Reader, Request::GetJob { job: bobs.id });
    assert!(matches!(seen.as_slice(), [Response::Job(_)]), "{seen:?}");

    // Only the gateway may assert identities, and it must.
    let mallory = jobworker_ipc::Identity {
        user: UserName::new("mallory").unwrap(),
        role: Role::Admin,
    };
    let mut client = d.connect().await;
    assert!(matches!(
        client.call_as(&mallory, Request::Ping).await.unwrap(),
        Response::Error(IpcError::PermissionDenied { .. })
    ));
    // On its own behalf the gateway may ping and read the metrics, nothing
    // else.
    let own = |request| {
        let call = Call {
            on_behalf_of: None,
            request,
        };
        decode_responses(&d.raw_as(daemon::GATEWAY_USER, &encode_call(&call)))
    };
    assert!(matches!(own(Request::Ping).as_slice(), [Response::Pong(_)]));
    assert!(matches!(
        own(Request::Metrics).as_slice(),
        [Response::Metrics(m)] if m.jobs_started >= 1
    ));
    for request in [
        Request::GetJob { job: bobs.id },
        Request::ListJobs {
            state: None,
            limit: PageSize::DEFAULT,
            after: None,
            labels: Default::default(),
        },
    ] {
        let reply = own(request);
        assert!(
            matches!(
                reply.as_slice(),
                [Response::Error(IpcError::PermissionDenied { reason })]
                    if reason.contains("on whose behalf")
            ),
            "{reply:?}"
        );
    }
    // Remote callers never read the supervisor's metrics.
    assert!(matches!(
        d.as_gateway("root", Role::Admin, Request::Metrics)
            .as_slice(),
        [Response::Error(IpcError::PermissionDenied { .. })]
    ));

    let admin = d.as_gateway(
        "root",
        Role::Admin,
        Request::StopJob {
            job: bobs.id,
            grace: None,
        },
    );
    assert!(matches!(admin.as_slice(), [Response::Job(info)] if info.state == JobState::Stopped));
}

/// Sends `bytes` on a fresh connection as root and returns what came back
/// until the supervisor closed the connection.
async fn raw(d: &Daemon, bytes: &[u8]) -> Vec<u8> {
    let mut stream = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return reply,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            // Closing with our bytes unread makes the kernel reset the
            // connection: closed all the same.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return reply,
            Err(e) => panic!("reading the reply: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_close_only_their_connection() {
    let d = Daemon::start("");
    let hello = handshake::hello().to_vec();
    let with_hello = |rest: &[u8]| [hello.as_slice(), rest].concat();

    let garbage = with_hello(&[0, 0, 0, 5, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB]);
    let oversized = with_hello(&u32::MAX.to_be_bytes());
    let mut wrong_version = hello.clone();
    wrong_version[6..].copy_from_slice(&999u16.to_be_bytes());
    // A call whose identity has a NUL byte: encode a valid one, then patch.
    let call = Call {
        on_behalf_of: Some(jobworker_ipc::Identity {
            user: UserName::new("alice").unwrap(),
            role: Role::User,
        }),
        request: Request::Ping,
    };
    let mut nul = Vec::new();
    frame::encode(&call, &mut nul).unwrap();
    let at = nul.windows(5).position(|w| w == b"alice").unwrap();
    nul[at + 2] = 0;
    let nul_identity = with_hello(&nul);

    for (what, bytes) in [
        ("garbage", garbage),
        ("oversized length", oversized),
        ("wrong protocol version", wrong_version),
        ("identity with a NUL byte", nul_identity),
        ("not even a hello", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ] {
        let reply = raw(&d, &bytes).await;
        // At most our hello came back: no response frame, connection closed.
        assert!(reply.len() <= 8, "{what}: got {} bytes", reply.len());
        assert!(
            matches!(d.local(Request::Ping).await, Response::Pong(_)),
            "the next connection is served after {what}"
        );
    }
    let log = d.log_text();
    assert!(
        log.contains("bad frame") && log.contains("handshake failed"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// The socket it binds itself appears with its group and mode 0660 already
/// set (it is bound beside its path and renamed there), and a restart binds
/// it again in its place.
#[tokio::test(flavor = "multi_thread")]
async fn the_bound_socket_appears_with_its_group_and_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut d = Daemon::start("");
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    for round in ["first start", "restart"] {
        let meta = std::fs::symlink_metadata(&d.socket).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660, "{round}");
        assert_eq!(meta.gid(), nogroup.gid.as_raw(), "{round}");
        let mut beside = d.socket.clone().into_os_string();
        beside.push(".new");
        assert!(!std::path::Path::new(&beside).exists(), "{round}");
        assert!(
            matches!(d.local(Request::Ping).await, Response::Pong(_)),
            "{round}"
        );
        d.restart().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_activation_serves_the_passed_socket_and_reports_ready() {
    let mut d = Daemon::start("");
    d.kill9();
    std::fs::remove_file(&d.socket).unwrap();
    let notify_path = d.dir().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let activated = d.dir().join("activated.sock");
    let mut manager = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&activated)
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .args([BINARY, "--config"])
        .arg(&d.config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (Debian's systemd package) is needed");
    // The configured socket_path is not used: the passed socket is. (Its
    // file appears at bind(), a moment before it listens.)
    let mut stream = None;
    for _ in 0..200 {
        if let Ok(connected) = tokio::net::UnixStream::connect(&activated).await {
            stream = Some(connected);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stream = stream.expect("the activated socket never took a connection");
    let mut client = jobworker_ipc::codec::client(stream).await.unwrap();
    client
        .send(Call {
            on_behalf_of: None,
            request: Request::Ping,
        })
        .await
        .unwrap();
    assert!(matches!(
        client.next().await.unwrap().unwrap(),
        Response::Pong(_)
    ));
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 on NOTIFY_SOCKET");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    assert!(!d.socket.exists(), "the configured path was not bound");
    let _ = manager.kill();
    let _ = manager.wait();
}

async fn wait_state(d: &Daemon, job: JobId, state: JobState) -> JobInfo {
    for _ in 0..500 {
        let info = d.local_job(Request::GetJob { job }).await;
        if info.state == state {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {job} never reached {state:?}");
}

/// A supervisor whose log cannot be written (stderr on a full disk:
/// `/dev/full`) loses its log lines and serves on: each request, which logs
/// an audit line, is answered, and a job runs to its end (its init, which
/// writes to the same stderr, records it).
#[tokio::test(flavor = "multi_thread")]
async fn a_log_on_a_full_disk_does_not_stop_the_service() {
    let mut d = Daemon::start("");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    d.restart_writing_to(full).unwrap();
    let mut connection = d.connect().await;
    for _ in 0..3 {
        assert!(matches!(
            connection.call(Request::Ping).await.unwrap(),
            Response::Pong(_)
        ));
    }
    let job = d.local_job(start("sh", &["-c", "echo done"])).await;
    let ended = wait_state(&d, job.id, JobState::Finished).await;
    assert_eq!(ended.output_bytes, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_outlive_a_killed_supervisor() {
    let mut d = Daemon::start("");
    let finished = d.local_job(start("sh", &["-c", "echo done"])).await;
    wait_state(&d, finished.id, JobState::Finished).await;
    let counter = d
        .local_job(start(
            "sh",
            &[
                "-c",
                "i=0; while :; do echo $i; i=$((i+1)); sleep 0.1; done",
            ],
        ))
        .await;
    let later = d.local_job(start("sh", &["-c", "sleep 1; exit 5"])).await;

    let log = d.state_dir.join(format!("jobs/{}/output.log", counter.id));
    let counted = || std::fs::read_to_string(&log).unwrap().lines().count();
    d.kill9();
    let at_kill = counted();
    // `later` ends while nobody supervises; `counter` keeps counting.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let at_restart = counted();
    assert!(
        at_restart > at_kill,
        "no count while the supervisor was down ({at_kill} at its kill, {at_restart} 2 s later)"
    );
    d.restart().unwrap();

    let info = wait_state(&d, finished.id, JobState::Finished).await;
    assert_eq!(info.termination, Some(Termination::Exited(0)));
    assert_eq!(d.output(&info).await.0, b"done\n");
    let info = wait_state(&d, later.id, JobState::Finished).await;
    assert_eq!(
        info.termination,
        Some(Termination::Exited(5)),
        "its real exit status"
    );
    let info = d.local_job(Request::GetJob { job: counter.id }).await;
    assert_eq!(info.state, JobState::Running, "re-adopted");
    assert_eq!(info.pid, counter.pid);

    // Follow the re-adopted job, then stop it: every count appears once.
    let follower = {
        let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        let mut client = jobworker_ipc::codec::client(stream).await.unwrap();
        client
            .send(Call {
                on_behalf_of: None,
                request: Request::StreamOutput {
                    job: counter.id,
                    offset: 0,
                    follow: true,
                },
            })
            .await
            .unwrap();
        tokio::spawn(async move {
            let mut bytes = Vec::new();
            loop {
                match client.next().await.unwrap().unwrap() {
                    Response::Output { data, .. } => bytes.extend_from_slice(data.as_slice()),
                    Response::End(info) => return (bytes, *info),
                    other => panic!("{other:?}"),
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = d
        .local_job(Request::StopJob {
            job: counter.id,
            grace: None,
        })
        .await;
    assert_eq!(stopped.state, JobState::Stopped);
    let (bytes, end) = follower.await.unwrap();
    assert_eq!(end.state, JobState::Stopped);
    let text = String::from_utf8(bytes).unwrap();
    let counts: Vec<u64> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        counts.len() > at_restart,
        "no count after the restart: {} in all, {at_restart} at the restart",
        counts.len()
    );
    assert!(
        counts.iter().enumerate().all(|(i, &c)| c == i as u64),
        "a gap or a repeat in {counts:?}"
    );
    let left: Vec<_> = std::fs::read_dir(d.cgroup_root().join("jobs"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "job cgroups left: {left:?}");
}

/// `jobworker-supervisor --stop-jobs` on `d`'s configuration: its exit
/// status and its log.
fn stop_jobs(d: &Daemon) -> (std::process::ExitStatus, String) {
    let out = Command::new(BINARY)
        .arg("--config")
        .arg(&d.config)
        .arg("--stop-jobs")
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What jobworker-jobs.service runs when it stops: every job ends as a stop
/// would end it, its record says so, and the job cgroups are gone.
#[tokio::test(flavor = "multi_thread")]
async fn stop_jobs_ends_every_job_once_the_supervisor_is_down() {
    let mut d = Daemon::start("grace_period_ms = 1000");
    let finished = d.local_job(start("true", &[])).await;
    wait_state(&d, finished.id, JobState::Finished).await;
    let running = [
        d.local_job(start("sleep", &["1000"])).await,
        // Ignores SIGTERM: ends only at the kill after the grace period.
        d.local_job(start("sh", &["-c", "trap '' TERM; sleep 1000"]))
            .await,
    ];

    let (status, log) = stop_jobs(&d);
    assert!(!status.success(), "refused while a supervisor serves");
    assert!(log.contains("another jobworker-supervisor uses"), "{log}");
    for job in &running {
        let info = d.local_job(Request::GetJob { job: job.id }).await;
        assert_eq!(info.state, JobState::Running, "{log}");
    }

    d.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    d.wait_exit(Duration::from_secs(10)).unwrap();
    let (status, log) = stop_jobs(&d);
    assert!(status.success(), "{log}");
    assert!(log.contains("every job stopped"), "{log}");
    for job in &running {
        // Gone, or a zombie that nobody reaped yet (the supervisor that
        // started it is gone).
        let pid = job.pid.unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        assert!(
            matches!(state, None | Some("Z")),
            "job {} (pid {pid}) still runs: {stat}",
            job.id
        );
    }
    let jobs = d.cgroup_root().join("jobs");
    assert!(!jobs.exists(), "{} is left", jobs.display());
    let (status, log) = stop_jobs(&d);
    assert!(status.success(), "nothing left to stop: {log}");
    assert!(log.contains("no job to stop"), "{log}");

    d.restart().unwrap();
    for job in &running {
        let info = d.local_job(Request::GetJob { job: job.id }).await;
        assert_eq!(info.state, JobState::Stopped, "{info:?}");
        assert_eq!(info.stop_reason, Some(StopReason::Requested));
    }
    let info = d.local_job(Request::GetJob { job: finished.id }).await;
    assert_eq!(info.termination, Some(Termination::Exited(0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unrecoverable_job_is_failed_and_killed() {
    let mut d = Daemon::start("");
    let job = d.local_job(start("sleep", &["1000"])).await;
    d.kill9();
    // Its init is killed while nobody watches, and leaves no exit record.
    let init = job.pid.unwrap();
    let _ = Command::new("kill")
        .args(["-9", &init.to_string()])
        .status();
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.restart().unwrap();
    let info = wait_state(&d, job.id, JobState::Failed).await;
    assert!(info.failure.unwrap().contains("no exit record"));
    // A stop of an ended job answers once its cleanup is done.
    let stopped = d
        .local_job(Request::StopJob {
            job: job.id,
            grace: None,
        })
        .await;
    assert_eq!(stopped.state, JobState::Failed);
    assert!(
        !d.cgroup_root()
            .join("jobs")
            .join(job.id.to_string())
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_the_oldest_ended_jobs_and_never_a_running_one() {
    let d = Daemon::start("[retention]\nmax_age_secs = 0\nmax_total_bytes = 250000\n");
    let running = d.local_job(start("sleep", &["1000"])).await;
    let mut ended = Vec::new();
    for _ in 0..3 {
        let job = d
            .local_job(start("head", &["-c", "100000", "/dev/zero"]))
            .await;
        d.output(&job).await;
        ended.push(job);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        d.local(Request::GetJob { job: ended[0].id }).await,
        Response::Error(IpcError::NotFound { job: ended[0].id }),
        "the oldest ended job went"
    );
    assert!(
        !d.state_dir
            .join("jobs")
            .join(ended[0].id.to_string())
            .exists()
    );
    for job in &ended[1..] {
        assert_eq!(
            d.local_job(Request::GetJob { job: job.id }).await.state,
            JobState::Finished
        );
    }
    assert_eq!(
        d.local_job(Request::GetJob { job: running.id }).await.state,
        JobState::Running
    );
}

/// A request id names one job of its owner's: a retry finds it, after a
/// restart too; another owner's start with the same id is another job.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_request_id_gives_one_job() {
    let mut d = Daemon::start("");
    let mut retried = spec("sleep", &["1000"]);
    retried.request_id = Some(RequestId::new("retry-42").unwrap());
    let first = d.local_job(Request::StartJob(retried.clone())).await;
    let second = d.local_job(Request::StartJob(retried.clone())).await;
    assert_eq!(first.id, second.id);
    assert_eq!(listed(&d).await.len(), 1);

    let as_bob = |d: &Daemon| match d
        .as_gateway("bob", Role::User, Request::StartJob(retried.clone()))
        .as_slice()
    {
        [Response::Job(info)] => info.id,
        other => panic!("expected a job, got {other:?}"),
    };
    let bobs = as_bob(&d);
    assert_ne!(bobs, first.id);
    assert_eq!(listed(&d).await.len(), 2);

    d.restart().unwrap();
    let after = d.local_job(Request::StartJob(retried.clone())).await;
    assert_eq!(after.id, first.id);
    assert_eq!(as_bob(&d), bobs);
    assert_eq!(listed(&d).await.len(), 2);
}

#[test]
fn check_config_prints_the_effective_config_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "state_dir = \"/srv/jobs\"\n").unwrap();
    let out = Command::new(BINARY)
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // By default each job gets a uid of its own: no shared job account.
    assert!(
        text.contains("state_dir = \"/srv/jobs\"")
            && text.contains("[job_uids]\nfirst = 61184\nlast = 65519\n")
            && !text.contains("job_user"),
        "{text}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "stat_dir = \"/srv/jobs\"\n").unwrap();
    let out = Command::new(BINARY)
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stat_dir"));
}

/// The uids (and gids) jobs get by default (`job_uids`).
const JOB_IDS: std::ops::RangeInclusive<u32> = 61184..=65519;

/// A job's uid, checked: set, equal to its gid, in the range.
fn job_uid(info: &JobInfo) -> u32 {
    let uid = info
        .uid
        .unwrap_or_else(|| panic!("job {} has no uid", info.id));
    assert_eq!(info.gid, Some(uid), "job {}: gid differs from uid", info.id);
    assert!(
        JOB_IDS.contains(&uid),
        "job {}: uid {uid} not in {JOB_IDS:?}",
        info.id
    );
    uid
}

/// Checks from the host that the command of each running job runs as the
/// job's uid and gid, with no supplementary groups.
fn assert_commands_run_as_their_jobs(jobs: &[JobInfo]) {
    for job in jobs {
        let init = job
            .pid
            .unwrap_or_else(|| panic!("job {} has no pid", job.id));
        let command = procs::command_pid(init);
        assert_eq!(
            procs::ids(command),
            Some(procs::expected_ids(job_uid(job))),
            "job {}'s command (pid {command})",
            job.id
        );
    }
}

/// Stops every job in `jobs` and checks that nothing of them is left: each
/// is STOPPED, its command's process is gone, its (empty) work directory is
/// removed, and no job cgroup remains.
async fn stop_all_and_check_nothing_is_left(d: &Daemon, jobs: &[JobInfo]) {
    let commands: Vec<(u32, u32)> = jobs
        .iter()
        .map(|job| (procs::command_pid(job.pid.unwrap()), job_uid(job)))
        .collect();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let stopped = d.stop_many(&ids, 16).await;
    assert_eq!(stopped.len(), jobs.len());
    for job in &stopped {
        assert_eq!(job.state, JobState::Stopped, "job {}", job.id);
    }
    for (pid, uid) in commands {
        // The pid may have been reused since, but not by a process of the job.
        if let Some(ids) = procs::ids(pid) {
            assert_ne!(ids, procs::expected_ids(uid), "job command {pid} left");
        }
    }
    let work_dirs = |d: &Daemon| -> Vec<JobId> {
        ids.iter()
            .copied()
            .filter(|id| d.state_dir.join(format!("jobs/{id}/work")).exists())
            .collect()
    };
    for _ in 0..500 {
        if work_dirs(d).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(work_dirs(d), [], "work directories left");
    assert_eq!(
        d.job_cgroups_left(),
        Vec::<String>::new(),
        "job cgroups left"
    );
}

/// Every job ListJobs shows (one page of up to 1000), by id.
async fn listed(d: &Daemon) -> HashMap<JobId, JobInfo> {
    let Response::Jobs { jobs, next } = d
        .local(Request::ListJobs {
            state: None,
            limit: PageSize::new(1000).unwrap(),
            after: None,
            labels: Default::default(),
        })
        .await
    else {
        panic!("no list");
    };
    assert!(next.is_none(), "more than one page");
    jobs.into_iter().map(|j| (j.id, j)).collect()
}

/// 500 jobs started at once over 16 connections get 500 distinct uids, all
/// in the job range, each with gid == uid, and their commands really run as
/// them (from the host's /proc); after stopping them all, no process and no
/// cgroup of theirs is left.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_jobs_get_distinct_uids() {
    let d = Daemon::start("");
    let jobs = d.start_many(&spec("sleep", &["120"]), 500, 16).await;
    assert_eq!(jobs.len(), 500);
    let uids: HashSet<u32> = jobs.iter().map(job_uid).collect();
    assert_eq!(uids.len(), 500, "two running jobs share a uid");
    for job in &jobs {
        assert_eq!(job.state, JobState::Running, "job {}", job.id);
    }
    assert_commands_run_as_their_jobs(&jobs);
    // The supervisor reports the same ids later.
    let list = listed(&d).await;
    assert_eq!(list.len(), 500);
    for job in &jobs {
        let again = &list[&job.id];
        assert_eq!((again.uid, again.gid), (job.uid, job.gid), "job {}", job.id);
    }
    stop_all_and_check_nothing_is_left(&d, &jobs).await;
}

/// The uid allocator across `kill -9` and a restart of the supervisor:
/// re-adopted running jobs keep their uids (GetJob and ListJobs say so, and
/// their commands still run as them), ended jobs that left files in their
/// work directory keep holding theirs, and none of 50 jobs started after
/// the restart gets a uid one of those holds.
#[tokio::test(flavor = "multi_thread")]
async fn uids_are_kept_and_never_reused_across_a_restart() {
    let mut d = Daemon::start("");
    let ended = d
        .start_many(&spec("sh", &["-c", "echo kept > /work/kept"]), 5, 5)
        .await;
    let running = d.start_many(&spec("sleep", &["120"]), 20, 4).await;
    let mut held: HashMap<u32, JobId> = HashMap::new();
    for job in running.iter().chain(&ended) {
        if let Some(other) = held.insert(job_uid(job), job.id) {
            panic!("jobs {other} and {} share a uid", job.id);
        }
    }
    for job in &ended {
        let info = wait_state(&d, job.id, JobState::Finished).await;
        assert_eq!(
            info.termination,
            Some(Termination::Exited(0)),
            "job {}",
            job.id
        );
        assert_eq!((info.uid, info.gid), (job.uid, job.gid), "job {}", job.id);
        // Its work directory is still on disk, so its uid stays held.
        let kept = d.state_dir.join(format!("jobs/{}/work/kept", job.id));
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "kept\n");
    }

    d.kill9();
    d.restart().unwrap();

    for job in &running {
        let again = d.local_job(Request::GetJob { job: job.id }).await;
        assert_eq!(again.state, JobState::Running, "job {} re-adopted", job.id);
        assert_eq!(again.pid, job.pid);
        assert_eq!((again.uid, again.gid), (job.uid, job.gid), "job {}", job.id);
    }
    let list = listed(&d).await;
    assert_eq!(list.len(), 25);
    for job in running.iter().chain(&ended) {
        let again = &list[&job.id];
        assert_eq!((again.uid, again.gid), (job.uid, job.gid), "job {}", job.id);
    }
    assert_commands_run_as_their_jobs(&running);

    let more = d.start_many(&spec("sleep", &["120"]), 50, 8).await;
    for job in &more {
        assert_eq!(job.state, JobState::Running, "job {}", job.id);
        if let Some(holder) = held.insert(job_uid(job), job.id) {
            panic!(
                "job {} got uid {}, which job {holder} holds",
                job.id,
                job_uid(job)
            );
        }
    }
    assert_commands_run_as_their_jobs(&more);

    let all: Vec<JobInfo> = running.into_iter().chain(more).collect();
    stop_all_and_check_nothing_is_left(&d, &all).await;
}

/// A job that ended before a restart is cleaned up already: stopping it
/// answers at once (the stop of an ended job waits for its cleanup, 15 s at
/// most).
#[tokio::test(flavor = "multi_thread")]
async fn stopping_a_job_that_ended_before_a_restart_answers_at_once() {
    let mut d = Daemon::start("");
    let job = d.local_job(start("true", &[])).await;
    wait_state(&d, job.id, JobState::Finished).await;
    d.kill9();
    d.restart().unwrap();
    let stop = d.local_job(Request::StopJob {
        job: job.id,
        grace: None,
    });
    let stopped = tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("the stop answered within 5 s");
    assert_eq!(stopped.state, JobState::Finished);
}

/// Retries of one request that arrive while its start is still under way
/// wait for it and get its job: one job, whatever the interleaving.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_retried_during_its_start_gives_one_job() {
    let d = Daemon::start("");
    let mut retried = spec("sleep", &["1000"]);
    retried.request_id = Some(RequestId::new("retry-during-start").unwrap());
    let starts = (0..8).map(|_| d.local_job(Request::StartJob(retried.clone())));
    let jobs = futures::future::join_all(starts).await;
    assert!(
        jobs.iter().all(|job| job.id == jobs[0].id),
        "{:?}",
        jobs.iter().map(|job| job.id).collect::<Vec<_>>()
    );
    assert_eq!(listed(&d).await.len(), 1);
}
