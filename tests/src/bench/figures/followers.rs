//! Figure 6, followers of a steady writer: what N followers of one job cost
//! the supervisor and the gateway. The job prints a 1,500-byte line about
//! every 10 ms (~150 KB/s) for the whole figure; the supervisor's and the
//! gateway's CPU (as a share of one core) and the supervisor's threads are
//! read over [`WINDOW`] with no follower, then with N (each on its own mTLS
//! connection, following from the job's current end). The baselines are the
//! same readings with no follower, in the same run.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::bench::Options;
use crate::bench::report::{Report, Unit};
use crate::bench::stack::{self, USER};
use crate::bench::stats::Samples;
use crate::fixture::Stack;
use crate::fixture::gateway::start_request;

/// How long each reading lasts.
const WINDOW: Duration = Duration::from_secs(5);

/// The steady writer: a 1,500-byte line, then 10 ms of sleep, forever.
const WRITER: &str = "while :; do printf '%1499s\\n' x; sleep 0.01; done";

/// The threads of a process (`Threads:` of /proc/<pid>/status).
fn threads(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .ok_or_else(|| anyhow!("no Threads in /proc/{pid}/status"))?
        .trim()
        .parse()
        .context("parsing Threads")
}

/// The supervisor's and the gateway's CPU over [`WINDOW`], as percent of
/// one core, and the supervisor's threads at its end.
async fn reading(stack: &Stack) -> Result<(f64, f64, u64)> {
    let before = stack::CpuReading::of(stack)?;
    let began = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let used = stack::CpuReading::of(stack)?.since(&before);
    let secs = began.elapsed().as_secs_f64();
    Ok((
        used.supervisor * 100.0 / secs,
        used.gateway * 100.0 / secs,
        threads(stack.supervisor.pid())?,
    ))
}

fn one(value: f64) -> Samples {
    Samples::from_values(vec![value])
}

/// Runs the figure.
pub async fn run(options: &Options, report: &mut Report) -> Result<()> {
    let f = "6 followers";
    let n = options.steady_followers;
    let stack = stack::start(options, "")?;
    let mut control = stack.client(USER).await?;
    let id = control
        .start_job(start_request("/bin/sh", &["-c", WRITER]))
        .await
        .context("StartJob")?
        .into_inner()
        .job_id;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sup0, gw0, threads0) = reading(&stack).await?;
    let log = stack
        .supervisor
        .state_dir
        .join("jobs")
        .join(&id)
        .join("output.log");
    let offset = std::fs::metadata(&log).map_or(0, |m| m.len());
    let followers = stack::Followers::start(&stack, &id, n, offset).await?;
    let (sup, gw, threads_n) = reading(&stack).await?;
    let delivered = followers.stop_job(&mut control, &id).await?;
    let what = "a job printing a 1,500-byte line every ~10 ms";
    let rows = [
        (
            "steady.sup.cpu.f0",
            format!("supervisor CPU, % of one core, {what}, no follower"),
            sup0,
            None,
        ),
        (
            "steady.sup.cpu",
            format!("supervisor CPU, % of one core, {what}, {n} followers"),
            sup,
            Some("steady.sup.cpu.f0"),
        ),
        (
            "steady.gw.cpu.f0",
            format!("gateway CPU, % of one core, {what}, no follower"),
            gw0,
            None,
        ),
        (
            "steady.gw.cpu",
            format!(
                "gateway CPU, % of one core, {what}, {n} followers (each its own mTLS connection)"
            ),
            gw,
            Some("steady.gw.cpu.f0"),
        ),
    ];
    for (key, what, value, baseline) in rows {
        report.add(f, key, what, Unit::Percent, one(value), baseline);
    }
    report.add(
        f,
        "steady.sup.threads.f0",
        "supervisor threads, no follower",
        Unit::Count,
        one(threads0 as f64),
        None,
    );
    report.add(
        f,
        "steady.sup.threads",
        format!("supervisor threads, {n} followers"),
        Unit::Count,
        one(threads_n as f64),
        Some("steady.sup.threads.f0"),
    );
    report.note(format!(
        "followers of a steady writer: {n} followers received {:.1} MiB in all",
        delivered as f64 / f64::from(1 << 20)
    ));
    drop(stack);
    Ok(())
}
