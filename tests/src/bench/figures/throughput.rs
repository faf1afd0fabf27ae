//! Figure 3, job throughput: jobs started and finished per second with 1, 8
//! and 32 concurrent clients, each on its own mTLS connection, each looping
//! `StartJob(/bin/true)` then following the job's output to its end (the
//! stream's last message is the final status, so no polling). The baseline
//! runs the floor program (`/bin/true` in a fresh cgroup and namespaces) in
//! as many concurrent loops for as long.
//!
//! Jobs per second is sampled per one-second window (completions in each
//! whole second of the run), so the median and p99 are over windows; each
//! job's start-to-end time is a separate row.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use jobworker_proto::v1;

use crate::bench::Options;
use crate::bench::floor::Floor;
use crate::bench::report::{Report, Unit};
use crate::bench::stack::{self, CpuReading, USER};
use crate::bench::stats::Samples;
use crate::fixture::Cgroup;

/// The phases of one job, from its record's timestamps and the client's
/// clock (the same host's).
const PHASES: [(&str, &str); 4] = [
    ("sent_created", "client sends StartJob -> record created_at"),
    (
        "created_started",
        "created_at -> started_at (cgroup, clone3, init, exec)",
    ),
    (
        "started_ended",
        "started_at -> ended_at (the command runs until the init reaps it)",
    ),
    (
        "ended_seen",
        "ended_at -> the client reads the stream's end (the init's exit record, the settle, the end through the gateway)",
    ),
];

/// The seconds since the epoch of a protobuf timestamp or a system time.
fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The four [`PHASES`] of a job, when its record has every timestamp.
fn phases(sent: SystemTime, job: &v1::Job, seen: SystemTime) -> Option<[f64; 4]> {
    let ts =
        |t: Option<&prost_types::Timestamp>| t.map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9);
    let created = ts(job.created_at.as_ref())?;
    let started = ts(job.started_at.as_ref())?;
    let ended = ts(job.ended_at.as_ref())?;
    Some([
        created - epoch(sent),
        started - created,
        ended - started,
        epoch(seen) - ended,
    ])
}

/// Completions per whole second since `start`, for `secs` seconds.
pub(crate) fn per_second(start: Instant, done: &[Instant], secs: u64) -> Samples {
    let mut buckets = vec![0.0; usize::try_from(secs).unwrap_or(0)];
    for t in done {
        let second = usize::try_from(t.duration_since(start).as_secs()).unwrap_or(usize::MAX);
        if let Some(b) = buckets.get_mut(second) {
            *b += 1.0;
        }
    }
    Samples::from_values(buckets)
}

/// Runs the floor's command line `argv` in `clients` loops for `secs`: the
/// start, the completion instants and each run's duration.
fn floor_loops(
    argv: &[String],
    clients: usize,
    secs: u64,
) -> Result<(Instant, Vec<Instant>, Samples)> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(move || -> Result<Vec<(Instant, Duration)>> {
                    let mut out = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let status = std::process::Command::new(&argv[0])
                            .args(&argv[1..])
                            .status()?;
                        if !status.success() {
                            bail!("the floor failed: {status}");
                        }
                        out.push((Instant::now(), t.elapsed()));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a floor loop panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut done = Vec::new();
    let mut each = Samples::new();
    for (t, d) in results.into_iter().flatten() {
        done.push(t);
        each.push_duration(d);
    }
    Ok((start, done, each))
}

/// Runs the figure.
pub async fn run(options: &Options, report: &mut Report) -> Result<()> {
    let secs = options.throughput_secs;
    let floor = Floor::compile()?;
    let cgroup = Cgroup::fresh("floor")?;
    std::fs::create_dir(cgroup.path())?;
    let f = "3 throughput";
    for &clients in &options.throughput_clients {
        // The floor.
        let argv = floor.command(cgroup.path(), &["/bin/true"]);
        // The floor's processes are this one's children: their CPU, all in.
        let floor_cpu_before = stack::cpu_seconds(std::process::id())?.1;
        let (start, done, each) =
            tokio::task::spawn_blocking(move || floor_loops(&argv, clients, secs)).await??;
        let floor_cpu_per_job = (stack::cpu_seconds(std::process::id())?.1 - floor_cpu_before)
            / done.len().max(1) as f64;
        let floor_key = format!("tput.floor.c{clients}");
        report.add(
            f,
            &floor_key,
            format!(
                "floor: {clients} concurrent loops of the C floor running /bin/true, per 1 s window"
            ),
            Unit::JobsPerSec,
            per_second(start, &done, secs),
            None,
        );
        report.add(
            f,
            &format!("tput.floor.c{clients}.each"),
            format!("floor: one run's time, {clients} loops"),
            Unit::Seconds,
            each,
            None,
        );

        // The stack, fresh for each level.
        let stack = stack::start(options, "")?;
        let mut clients_v = Vec::new();
        for _ in 0..clients {
            clients_v.push(stack.client(USER).await?);
        }
        let cpu_before = CpuReading::of(&stack)?;
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        let tasks: Vec<_> = clients_v
            .into_iter()
            .map(|mut client| {
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let sent = SystemTime::now();
                        let (id, job) = stack::run_true(&mut client).await?;
                        let seen = SystemTime::now();
                        if job.state != v1::JobState::Finished as i32 || job.exit_code != Some(0) {
                            bail!("job {id} did not finish cleanly: {job:?}");
                        }
                        out.push((Instant::now(), t.elapsed(), phases(sent, &job, seen)));
                    }
                    anyhow::Ok(out)
                })
            })
            .collect();
        let mut done = Vec::new();
        let mut each = Samples::new();
        let mut split: [Samples; 4] = Default::default();
        for task in tasks {
            for (t, d, p) in task.await?? {
                done.push(t);
                each.push_duration(d);
                for (samples, value) in split.iter_mut().zip(p.into_iter().flatten()) {
                    samples.push(value);
                }
            }
        }
        let cpu = CpuReading::of(&stack)?.since(&cpu_before);
        let wall = start.elapsed().as_secs_f64();
        drop(stack);
        let jobs = each.len().max(1) as f64;
        report.note(format!(
            "throughput, {clients} clients: {} jobs in {wall:.1} s; {}; the floor, all in (its C program and /bin/true): {:.2} ms per job, so the jobs' inits take at least {:.2} ms per job beyond it (the floor's figure holds its clone3 of the namespaces, which the stack pays in the spawner's time); the bench's wall time over 2 CPUs = {:.2} ms of CPU per job available",
            each.len(),
            cpu.describe_per(jobs, "job"),
            floor_cpu_per_job * 1e3,
            (cpu.children / jobs - floor_cpu_per_job) * 1e3,
            wall * 2e3 / jobs,
        ));
        report.add(f, &format!("tput.stack.c{clients}"), format!("stack: {clients} concurrent clients, StartJob(/bin/true) + follow to end, per 1 s window"), Unit::JobsPerSec, per_second(start, &done, secs), Some(&floor_key));
        report.add(
            f,
            &format!("tput.stack.c{clients}.each"),
            format!("stack: one job's StartJob-to-end time, {clients} clients"),
            Unit::Seconds,
            each,
            Some(&format!("tput.floor.c{clients}.each")),
        );
        if clients == 1 {
            for (samples, (key, what)) in split.into_iter().zip(PHASES) {
                report.add(
                    f,
                    &format!("tput.c1.{key}"),
                    format!("breakdown, 1 client: {what} (record timestamps, µs resolution)"),
                    Unit::Seconds,
                    samples,
                    None,
                );
            }
        }
    }
    Ok(())
}
