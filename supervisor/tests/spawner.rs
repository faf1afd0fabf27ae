//! The spawner of jobs' inits, the real `jobworker-init`: its protocol, and
//! the engine replacing one that died. Run as root; the tests fail (never
//! skip) otherwise.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

#[allow(dead_code, reason = "the fixture is shared by several test crates")]
mod common;

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;

use std::path::Path;

use common::TestEngine;
use jobworker_ipc::{JobState, Termination};
use jobworker_supervisor::engine::spawn::Spawner;
use jobworker_supervisor::spawner::{self, RequestError};
use jobworker_supervisor::sys;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvFlags, SendAncillaryBuffer, SendFlags, SocketFlags,
    SocketType,
};
use rustix::process::{WaitId, WaitIdOptions};
use tokio::sync::Mutex;

/// Both tests start spawners, children of this process with one name: one
/// at a time, so that each finds its own.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The live (not zombie) children of this process named `jobworker-spawn`.
fn spawners() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap() {
        let Ok(pid) = entry.unwrap().file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) && state != Some("Z") && head.ends_with("(jobworker-spawn") {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spawner_that_died_is_replaced_and_no_start_fails() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = TestEngine::new();
    let job = t.start("/bin/echo", &["first"]).await.unwrap();
    assert_eq!(t.output(&job).await.0, b"first\n");
    let [first] = spawners()[..] else {
        panic!("one spawner: {:?}", spawners());
    };
    // The job's init is the engine's child (CLONE_PARENT), not the spawner's.
    let init = job.pid.unwrap();
    assert_ne!(init, first);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Dead (a zombie until the engine reaps it) before the next start.
    let dead = std::time::Instant::now();
    while !spawners().is_empty() {
        assert!(
            dead.elapsed() < std::time::Duration::from_secs(5),
            "the spawner did not die"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // The first may run on the spare init the dead spawner made before it
    // died; the second's init needs a spawner either way.
    for word in ["second", "third"] {
        let job = t.start("/bin/echo", &[word]).await.unwrap();
        let (output, end) = t.output(&job).await;
        assert_eq!(output, format!("{word}\n").as_bytes());
        assert_eq!(end.state, JobState::Finished);
        assert_eq!(end.termination, Some(Termination::Exited(0)));
    }
    let [second] = spawners()[..] else {
        panic!("one spawner: {:?}", spawners());
    };
    assert_ne!(second, first, "a new spawner");
    assert!(
        !Path::new(&format!("/proc/{first}")).exists(),
        "the dead spawner was reaped"
    );
}

#[test]
fn the_spawner_says_it_is_ready_refuses_a_malformed_request_answers_clone3_s_errno_and_exits_with_its_socket()
 {
    let _one = ONE_AT_A_TIME.blocking_lock();
    common::require_root_and_cgroup2();
    let program = std::ffi::CString::new(env!("CARGO_BIN_EXE_jobworker-init")).unwrap();
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let spawned = sys::spawn_with_control(
        theirs.as_fd(),
        &program,
        &[spawner::INIT_NAME.to_owned()],
        &[],
    )
    .unwrap();
    drop(theirs);
    spawner::wait_ready(ours.as_fd()).unwrap();

    // A request without its two fds.
    let mut none = SendAncillaryBuffer::new(&mut []);
    rustix::net::sendmsg(
        &ours,
        &[IoSlice::new(&[spawner::REQUEST])],
        &mut none,
        SendFlags::NOSIGNAL,
    )
    .unwrap();
    let mut code = [0_u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let answer = rustix::net::recvmsg(
        &ours,
        &mut [IoSliceMut::new(&mut code)],
        &mut ancillary,
        RecvFlags::CMSG_CLOEXEC,
    )
    .unwrap();
    assert_eq!(answer.bytes, 4);
    assert_eq!(i32::from_ne_bytes(code), -libc::EPROTO);

    // A well-formed request whose "cgroup" is no cgroup: clone3 refuses it,
    // and its errno comes back.
    let not_a_cgroup = std::fs::File::open("/").unwrap();
    let (control, _init_end) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = spawner::request(ours.as_fd(), not_a_cgroup.as_fd(), control.as_fd()).unwrap_err();
    let RequestError::Clone(errno) = err else {
        panic!("{err:?}");
    };
    assert!(errno.raw_os_error().is_some(), "{errno}");

    // The supervisor's end closed: the spawner exits, successfully.
    drop(ours);
    let status =
        rustix::process::waitid(WaitId::PidFd(spawned.pidfd.as_fd()), WaitIdOptions::EXITED)
            .unwrap()
            .unwrap();
    assert_eq!(status.exit_status(), Some(0));
}

#[test]
fn a_spawner_that_cannot_run_fails_the_engine_s_start_with_the_reason() {
    let _one = ONE_AT_A_TIME.blocking_lock();
    let exited = Spawner::start(Path::new("/bin/false")).err().unwrap();
    assert!(
        exited.to_string().contains(
            "starting the init spawner /bin/false: it exited with status 1 before it was ready"
        ),
        "{exited}"
    );
    let missing = Spawner::start(Path::new("/nonexistent/jobworker-init"))
        .err()
        .unwrap();
    assert!(missing.to_string().contains("its exec failed"), "{missing}");
}
