//! Figure 1, start latency: from a client's `StartJob` to the job's first
//! output byte reaching that client, through the whole stack, against the
//! floor (bare clone3 + namespaces + cgroup + exec) and the peers `unshare`
//! and `bwrap`, all running the same command.
//!
//! Breakdown rows: the `StartJob` reply alone through the gateway, and the
//! same start-then-first-byte straight over ipc to the supervisor (no TLS,
//! no gateway), and a plain spawn of the command with no namespaces.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use jobworker_ipc::client::StreamFrame;
use jobworker_ipc::{Request, Response};

use crate::bench::Options;
use crate::bench::floor::{self, Floor};
use crate::bench::report::{Report, Unit};
use crate::bench::stack::{self, USER};
use crate::bench::stats::Samples;
use crate::fixture::{Cgroup, supervisor};

/// Warm-up runs per variant, not sampled.
const WARMUP: usize = 3;

/// Times `argv` `n` times from spawn to first byte.
fn sample_program(argv: &[String], n: usize) -> Result<Samples> {
    for _ in 0..WARMUP {
        floor::first_byte(argv)?;
    }
    let mut samples = Samples::new();
    for _ in 0..n {
        samples.push_duration(floor::first_byte(argv)?.0);
    }
    Ok(samples)
}

/// Runs the figure.
pub async fn run(options: &Options, report: &mut Report) -> Result<()> {
    let n = options.start_samples;
    let command: Vec<String> = stack::ECHO.iter().map(|s| (*s).to_owned()).collect();

    // The bare programs, on a blocking thread.
    let floor = Floor::compile()?;
    let cgroup = Cgroup::fresh("floor")?;
    std::fs::create_dir(cgroup.path())
        .with_context(|| format!("creating {}", cgroup.path().display()))?;
    let floor_argv = floor.command(cgroup.path(), &stack::ECHO);
    let unshare: Vec<String> = [
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "--net",
        "--uts",
        "--ipc",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(command.iter().cloned())
    .collect();
    let bwrap: Vec<String> = [
        "bwrap",
        "--unshare-all",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain(command.iter().cloned())
    .collect();
    if !floor::on_path("bwrap") {
        bail!("bwrap is missing: install Debian's bubblewrap (`apt-get install -y bubblewrap`)");
    }
    let programs = tokio::task::spawn_blocking(move || -> Result<Vec<Samples>> {
        Ok(vec![
            sample_program(&command, n)?,
            sample_program(&floor_argv, n)?,
            sample_program(&unshare, n)?,
            sample_program(&bwrap, n)?,
        ])
    })
    .await??;
    drop(cgroup);
    drop(floor);
    let mut programs = programs.into_iter();
    let mut next = || programs.next().unwrap_or_default();
    let plain = next();
    let floor_samples = next();
    let unshare_samples = next();
    let bwrap_samples = next();

    // The stack.
    let stack = stack::start(options, "")?;
    let mut client = stack.client(USER).await?;
    let mut to_first = Samples::new();
    let mut reply = Samples::new();
    for i in 0..WARMUP + n {
        let (replied, first) = stack::echo_to_first_byte(&mut client).await?;
        if i >= WARMUP {
            to_first.push_duration(first);
            reply.push_duration(replied);
        }
    }

    // Straight over ipc, as the local admin.
    let mut ipc = Samples::new();
    let mut control = stack.supervisor.connect().await?;
    for i in 0..WARMUP + n {
        let spec = supervisor::job_spec(stack::ECHO[0], &stack::ECHO[1..])?;
        let start = Instant::now();
        let job = match control.call(Request::StartJob(spec)).await? {
            Response::Job(info) => info.id,
            other => bail!("StartJob over ipc: {other:?}"),
        };
        let request = Request::StreamOutput {
            job,
            offset: 0,
            follow: true,
        };
        let mut stream = stack.supervisor.connect().await?.stream(request).await?;
        let mut first = None;
        while let Some(frame) = stream.next().await? {
            match frame {
                StreamFrame::Output { data, .. } => {
                    if first.is_none() && !data.as_slice().is_empty() {
                        first = Some(start.elapsed());
                    }
                }
                StreamFrame::End(_) => {}
                StreamFrame::Error(e) => bail!("StreamOutput over ipc: {e}"),
            }
        }
        let first = first.context("the job wrote nothing (ipc)")?;
        if i >= WARMUP {
            ipc.push_duration(first);
        }
    }
    drop(stack);

    let f = "1 start";
    report.add(f, "start.floor", "floor: C clone3 (NEWPID, NEWNS, NEWNET, NEWUTS, NEWIPC, INTO_CGROUP of a fresh cgroup) + exec, spawn -> first byte", Unit::Seconds, floor_samples, None);
    report.add(
        f,
        "start.stack",
        "stack: StartJob -> first output byte at the client (mTLS, gateway, ipc, supervisor)",
        Unit::Seconds,
        to_first,
        Some("start.floor"),
    );
    report.add(
        f,
        "start.unshare",
        "peer: unshare --pid --fork --mount-proc --net --uts --ipc",
        Unit::Seconds,
        unshare_samples,
        Some("start.floor"),
    );
    report.add(
        f,
        "start.bwrap",
        "peer: bwrap --unshare-all --ro-bind / / --proc /proc --dev /dev",
        Unit::Seconds,
        bwrap_samples,
        Some("start.floor"),
    );
    report.add(
        f,
        "start.plain",
        "breakdown: plain spawn of the command, no namespaces",
        Unit::Seconds,
        plain,
        Some("start.floor"),
    );
    report.add(
        f,
        "start.reply",
        "breakdown: StartJob reply only (job exec'd), through the stack",
        Unit::Seconds,
        reply,
        Some("start.floor"),
    );
    report.add(
        f,
        "start.ipc",
        "breakdown: StartJob -> first byte straight over ipc (no TLS, no gateway)",
        Unit::Seconds,
        ipc,
        Some("start.floor"),
    );
    Ok(())
}
