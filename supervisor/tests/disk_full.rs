//! A full state file system: the real supervisor on a small tmpfs, a job
//! filling it while a neighbour prints a counter. Output waits for space
//! and loses nothing, records and exit statuses are kept, starts are
//! refused while it lasts, and everything resumes when space returns. Run
//! as root (it mounts).
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

#[allow(
    dead_code,
    reason = "the daemon tests' shared module: this file uses a part of it"
)]
mod daemon;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use daemon::Daemon;
use jobworker_ipc::{IpcError, JobId, JobInfo, JobState, Request, Response, Termination};
use jobworker_tests::fixture::supervisor::job_spec;

fn start(command: &str, args: &[&str]) -> Request {
    Request::StartJob(job_spec(command, args).unwrap())
}

/// A tmpfs mounted over a directory, lazily unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ],
            dir,
        );
        Self(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        run("mount", &["-o", &format!("remount,size={size}")], &self.0);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(program: &str, args: &[&str], dir: &Path) {
    let status = Command::new(program).args(args).arg(dir).status().unwrap();
    assert!(
        status.success(),
        "{program} {args:?} {}: {status}",
        dir.display()
    );
}

/// `script`, run once the job's gate is open (a file `go` in its working
/// directory, made by [`open_gate`]).
fn gated(script: &str) -> String {
    format!("while [ ! -e go ]; do sleep 0.01; done; {script}")
}

/// Opens the gate of `job`, whose state directory is `state_dir`.
fn open_gate(state_dir: &Path, job: &JobInfo) {
    std::fs::write(state_dir.join(format!("jobs/{}/work/go", job.id)), "").unwrap();
}

/// Bytes free on the file system of `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let stat = rustix::fs::statvfs(dir).unwrap();
    stat.f_bavail * stat.f_frsize
}

async fn get(d: &Daemon, job: JobId) -> JobInfo {
    d.local_job(Request::GetJob { job }).await
}

async fn wait_ended(d: &Daemon, job: JobId, limit: Duration) -> JobInfo {
    let began = Instant::now();
    loop {
        let info = get(d, job).await;
        if info.state.is_ended() {
            return info;
        }
        assert!(began.elapsed() < limit, "job {job} did not end: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_disk_pauses_output_and_loses_nothing() {
    let mut d = Daemon::start("min_free_bytes = 1048576\n");
    d.kill9();
    let state_dir = d.state_dir.clone();
    let disk = Tmpfs::mount(&state_dir, "24m");
    d.restart().unwrap();

    let counter = "i=0; while [ $i -lt 400 ]; do echo $i; i=$((i+1)); sleep 0.01; done";
    let neighbour = d.local_job(start("sh", &["-c", counter])).await;
    // The two that fill the disk wait until both have started: a start on
    // a full disk is refused.
    let writer = d
        .local_job(start(
            "sh",
            &["-c", &gated("head -c 40000000 /dev/zero; exit 5")],
        ))
        .await;
    let stopped = d
        .local_job(start(
            "sh",
            &["-c", &gated("exec head -c 40000000 /dev/zero")],
        ))
        .await;
    for job in [&writer, &stopped] {
        open_gate(&state_dir, job);
    }
    let began = Instant::now();
    while free_bytes(&state_dir) >= 1 << 20 {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the disk never filled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Full: a start is refused, saying why.
    let refused = d.local(start("/bin/true", &[])).await;
    assert!(
        matches!(&refused, Response::Error(IpcError::ResourceExhausted { reason })
            if reason.contains("the state directory's file system is full")),
        "{refused:?}"
    );
    // A job stopped while the disk is full: its record and its end are
    // written all the same, and what it could not store (the room given
    // back to records may take it, or not) is counted as lost to the full
    // disk, not to the cap.
    let info = d
        .local_job(Request::StopJob {
            job: stopped.id,
            grace: None,
        })
        .await;
    assert_eq!(info.state, JobState::Stopped, "{info:?}");
    assert_eq!(info.output_truncated_bytes, 0, "{info:?}");
    eprintln!(
        "stopped while the disk was full: {} bytes stored, {} lost to the full disk",
        info.output_bytes - info.output_disk_full_bytes,
        info.output_disk_full_bytes
    );
    let stored = std::fs::metadata(state_dir.join(format!("jobs/{}/output.log", stopped.id)))
        .unwrap()
        .len();
    assert_eq!(
        stored + info.output_disk_full_bytes,
        info.output_bytes,
        "{info:?}"
    );
    // ... and survive a restart while the disk is still full.
    d.kill9();
    d.restart().unwrap();
    let after = get(&d, stopped.id).await;
    assert_eq!(after.state, JobState::Stopped, "{after:?}");
    assert_eq!(after.output_disk_full_bytes, info.output_disk_full_bytes);
    assert_eq!(get(&d, writer.id).await.state, JobState::Running);
    assert_eq!(get(&d, neighbour.id).await.state, JobState::Running);

    // Room again: both running jobs resume where they paused.
    disk.resize("256m");
    let info = wait_ended(&d, writer.id, Duration::from_secs(60)).await;
    assert_eq!(info.termination, Some(Termination::Exited(5)), "{info:?}");
    assert_eq!(info.output_bytes, 40_000_000, "{info:?}");
    assert_eq!(
        (info.output_disk_full_bytes, info.output_truncated_bytes),
        (0, 0)
    );
    let (bytes, info) = d.output(&neighbour).await;
    assert_eq!(info.termination, Some(Termination::Exited(0)), "{info:?}");
    let expected: String = (0..400).map(|i| format!("{i}\n")).collect();
    assert!(
        bytes == expected.as_bytes(),
        "the neighbour's log is not every counter value once ({} bytes)",
        bytes.len()
    );
    assert!(matches!(
        d.local(start("/bin/true", &[])).await,
        Response::Job(_)
    ));
    drop(disk);
}
