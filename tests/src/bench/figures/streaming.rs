//! Figure 4, streaming: a job writing N bytes as fast as it can
//! (`head -c N /dev/zero`): bytes per second into its log (N over the job's
//! own run time, `ended_at - started_at` of its record), bytes per second
//! delivered to 1, 8 and 64 concurrent following clients (each on its own
//! mTLS connection, from its `StreamOutput` call to the stream's end), and
//! the job's own run time with 64 followers against none. Baseline: the
//! same bytes from the same command through a plain pipe into a file (the
//! bench reads the pipe in 64 KiB reads and writes the file), on the same
//! file system as the supervisor's state directory, in turns with the job
//! alone (one of each, three times). Each run starts with that file
//! system's dirty pages written back and the earlier runs' files dropped
//! from the cache ([`settle`]).
//!
//! The fan-out runs (8 and 64 followers) use a smaller job when
//! `fanout_bytes < stream_bytes`; the report says so.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jobworker_proto::v1;
use jobworker_proto::v1::job_service_client::JobServiceClient;
use tonic::transport::Channel;

use crate::bench::Options;
use crate::bench::report::{Report, Unit};
use crate::bench::stack::{self, CpuReading, USER};
use crate::bench::stats::Samples;
use crate::fixture::Stack;
use crate::fixture::gateway::start_request;

/// Runs of the job alone and of the pipe.
const REPEATS: usize = 3;

/// Before each run: writes back every dirty page of the file system of
/// `dir` and drops the cached pages of the files under `dir` (the pipe's
/// files, the jobs' logs), so that every run, the pipe's and the job's
/// alike, writes into memory in the same state. Otherwise a run after
/// others is throttled to the disk's pace by their dirty pages (the
/// kernel's dirty limits), and on this VM it also writes into memory the
/// host must first back (free memory is handed back to the host, see
/// BENCHMARKS.md): the order of the runs, not what they measure, would
/// decide their rates. Blocks.
fn settle(dir: &Path) -> Result<()> {
    let file = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    nix::unistd::syncfs(&file)
        .with_context(|| format!("syncing the file system of {}", dir.display()))?;
    drop_cached(dir)
}

/// Drops the (clean) cached pages of every regular file under `dir`; what
/// goes meanwhile (an ended job's empty work directory) is skipped.
fn drop_cached(dir: &Path) -> Result<()> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let entries = match std::fs::read_dir(dir) {
        Err(e) if gone(&e) => return Ok(()),
        entries => entries.with_context(|| format!("reading {}", dir.display()))?,
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            drop_cached(&entry.path())?;
        } else if kind.is_file() {
            let file = match std::fs::File::open(entry.path()) {
                Err(e) if gone(&e) => continue,
                file => file.with_context(|| format!("opening {}", entry.path().display()))?,
            };
            let advice = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
            nix::fcntl::posix_fadvise(&file, 0, 0, advice)
                .with_context(|| format!("dropping the cache of {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// `head -c N /dev/zero` into a pipe, read by us into a new file `name`
/// (kept, like a job's log, until the stack is dropped): bytes/s, and the
/// CPU seconds of the bench and of its reaped children (`head`) meanwhile
/// (not counting the settling before).
fn pipe_to_file(bytes: u64, dir: &Path, name: &str) -> Result<(f64, f64, f64)> {
    settle(dir)?;
    let (cpu_before, children_before) = stack::cpu_seconds(std::process::id())?;
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path)?;
    let start = Instant::now();
    let mut child = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut pipe = child.stdout.take().context("piped stdout")?;
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = pipe.read(&mut buf)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
        total += n as u64;
    }
    child.wait()?;
    let secs = start.elapsed().as_secs_f64();
    let (cpu_after, children_after) = stack::cpu_seconds(std::process::id())?;
    if total != bytes {
        bail!("the pipe carried {total} bytes, not {bytes}");
    }
    Ok((
        bytes as f64 / secs,
        cpu_after - cpu_before,
        children_after - children_before,
    ))
}

/// Waits until the job has ended; its record.
async fn wait_ended(client: &mut JobServiceClient<Channel>, id: &str) -> Result<v1::Job> {
    loop {
        let job = client
            .get_job(v1::GetJobRequest {
                job_id: id.to_owned(),
            })
            .await?
            .into_inner();
        if job.state != v1::JobState::Running as i32 {
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The job's own run time from its record, checking it wrote `bytes`.
fn run_time(job: &v1::Job, bytes: u64) -> Result<f64> {
    if job.output_bytes != bytes || job.output_truncated_bytes != 0 {
        bail!(
            "job {} stored {} bytes ({} dropped), expected {bytes}",
            job.id,
            job.output_bytes,
            job.output_truncated_bytes
        );
    }
    stack::seconds_between(job.started_at.as_ref(), job.ended_at.as_ref())
        .context("the job's record has no start or end time")
}

/// One run with `followers` clients: the job's run time, each follower's
/// bytes/s, and the total delivered bytes/s (all bytes over the wall time).
async fn run_once(
    stack: &Stack,
    control: &mut JobServiceClient<Channel>,
    followers: &[JobServiceClient<Channel>],
    bytes: u64,
) -> Result<(f64, Samples, f64, String)> {
    let n = bytes.to_string();
    let dir = stack.supervisor.dir().to_owned();
    tokio::task::spawn_blocking(move || settle(&dir)).await??;
    let cpu_before = CpuReading::of(stack)?;
    let id = control
        .start_job(start_request("head", &["-c", &n, "/dev/zero"]))
        .await
        .context("StartJob")?
        .into_inner()
        .job_id;
    let start = Instant::now();
    let tasks: Vec<_> = followers
        .iter()
        .cloned()
        .map(|mut client| {
            let id = id.clone();
            tokio::spawn(async move {
                let opened = Instant::now();
                let (got, _, _) = stack::follow(&mut client, &id).await?;
                anyhow::Ok((got, opened.elapsed()))
            })
        })
        .collect();
    let mut rates = Samples::new();
    for task in tasks {
        let (got, took) = task.await??;
        if got != bytes {
            bail!("a follower received {got} bytes of {bytes}");
        }
        rates.push(bytes as f64 / took.as_secs_f64());
    }
    let wall = start.elapsed().as_secs_f64();
    let job = wait_ended(control, &id).await?;
    let cpu = CpuReading::of(stack)?.since(&cpu_before);
    let mib = bytes as f64 / f64::from(1 << 20);
    let note = format!(
        "streaming {mib:.0} MiB to {} followers: {}",
        followers.len(),
        cpu.describe_per(
            mib * followers.len().max(1) as f64,
            "MiB delivered (or written, with no follower)"
        )
    );
    Ok((
        run_time(&job, bytes)?,
        rates,
        bytes as f64 * followers.len() as f64 / wall,
        note,
    ))
}

/// Runs the figure.
pub async fn run(options: &Options, report: &mut Report) -> Result<()> {
    let f = "4 streaming";
    let big = options.stream_bytes;
    let small = options.fanout_bytes;
    let cap = big.max(small) + (1 << 20);
    let stack = stack::start(
        options,
        &format!("output_cap_bytes = {cap}\n[retention]\nmax_total_bytes = 0\nmax_age_secs = 0\n"),
    )?;
    let mib = |b: u64| b as f64 / f64::from(1 << 20);

    // The plain pipe into a file, next to the supervisor's state directory,
    // and the job alone, in turns: both then meet the machine in the same
    // state (its memory, the kernel's cleanup of earlier figures' jobs), so
    // the baseline is not the one run that paid for it.
    let mut control = stack.client(USER).await?;
    let mut pipe = Samples::new();
    let mut alone = Samples::new();
    let (mut pipe_cpu, mut pipe_cpu_children) = (0.0, 0.0);
    let mut last_note = String::new();
    for i in 0..REPEATS {
        let dir = stack.supervisor.dir().to_owned();
        let (rate, cpu, cpu_children) =
            tokio::task::spawn_blocking(move || pipe_to_file(big, &dir, &format!("pipe-{i}.out")))
                .await??;
        pipe.push(rate);
        pipe_cpu += cpu;
        pipe_cpu_children += cpu_children;
        let (secs, _, _, note) = run_once(&stack, &mut control, &[], big).await?;
        alone.push(big as f64 / secs);
        last_note = note;
    }
    let written = mib(big) * REPEATS as f64;
    report.note(format!(
        "streaming baseline, plain pipe: CPU per MiB written: the reader and file writer (the bench) {:.2} ms, the writer (head, a reaped child) {:.2} ms",
        pipe_cpu * 1e3 / written,
        pipe_cpu_children * 1e3 / written,
    ));
    report.add(
        f,
        "stream.pipe",
        format!(
            "baseline: head -c {:.0}MiB /dev/zero, plain pipe read into a file",
            mib(big)
        ),
        Unit::BytesPerSec,
        pipe,
        None,
    );

    report.note(last_note);
    report.add(
        f,
        "stream.log",
        format!(
            "stack: job writing {:.0}MiB -> output.log, no follower (bytes / job run time)",
            mib(big)
        ),
        Unit::BytesPerSec,
        alone,
        Some("stream.pipe"),
    );

    // One follower on the full size.
    let one = vec![stack.client(USER).await?];
    let (secs, rates, _, note) = run_once(&stack, &mut control, &one, big).await?;
    report.note(note);
    report.add(
        f,
        "stream.f1",
        format!(
            "stack: delivered to 1 follower over mTLS ({:.0}MiB)",
            mib(big)
        ),
        Unit::BytesPerSec,
        rates,
        Some("stream.pipe"),
    );
    report.add(
        f,
        "stream.f1.log",
        format!("stack: job -> log with 1 follower ({:.0}MiB)", mib(big)),
        Unit::BytesPerSec,
        Samples::from_values(vec![big as f64 / secs]),
        Some("stream.log"),
    );

    // Fan-out.
    if small < big {
        report.note(format!(
            "SCALED DOWN: the fan-out runs (8 and 64 followers, and their 0-follower reference) use a {:.0} MiB job, not {:.0} MiB, so the run stays within minutes on this machine (--fanout-mib to change)",
            mib(small),
            mib(big)
        ));
    }
    let mut pool: Vec<JobServiceClient<Channel>> = Vec::new();
    let max = options.fanout_followers.iter().copied().max().unwrap_or(0);
    for _ in 0..max {
        pool.push(stack.client(USER).await?);
    }
    let (secs0, _, _, _) = run_once(&stack, &mut control, &[], small).await?;
    report.add(
        f,
        "stream.time.f0",
        format!("stack: job run time, {:.0}MiB, no follower", mib(small)),
        Unit::Seconds,
        Samples::from_values(vec![secs0]),
        None,
    );
    for &k in &options.fanout_followers {
        let (secs, rates, total, note) = run_once(&stack, &mut control, &pool[..k], small).await?;
        report.note(note);
        report.add(
            f,
            &format!("stream.f{k}"),
            format!(
                "stack: per follower, {k} followers ({:.0}MiB job)",
                mib(small)
            ),
            Unit::BytesPerSec,
            rates,
            Some("stream.pipe"),
        );
        report.add(
            f,
            &format!("stream.f{k}.total"),
            format!("stack: all {k} followers together (bytes x {k} / wall)"),
            Unit::BytesPerSec,
            Samples::from_values(vec![total]),
            Some("stream.pipe"),
        );
        report.add(
            f,
            &format!("stream.time.f{k}"),
            format!(
                "stack: job run time with {k} followers ({:.0}MiB)",
                mib(small)
            ),
            Unit::Seconds,
            Samples::from_values(vec![secs]),
            Some("stream.time.f0"),
        );
    }
    drop(stack);
    Ok(())
}
