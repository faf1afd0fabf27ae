//! The scenarios: each starts real jobs through the real supervisor and holds
//! what the supervisor reports against what the kernel reports.
//!
//! A scenario returns an [`Outcome`]: the figures it measured, in one line,
//! and the checks that failed (none when it passed). An `Err` means the
//! scenario could not be carried out at all (e.g. a call was refused); the
//! runner reports it as a failure too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use jobworker_ipc::{JobId, JobInfo, JobState, Limits, Termination};

use super::client::{Client, Ended};
use super::kernel::{self, Cgroup};

/// How long a job that should end by itself may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the cgroup files of a running job are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// The grace period of the stop requests.
const STOP_GRACE_MS: u32 = 1000;

const MIB: u64 = 1 << 20;
/// How far the kernel may force a cgroup's memory past `memory.max` (see
/// [`memory`]).
const MEMORY_SLACK: u64 = MIB;

/// Where the scenarios find things in the guest.
#[derive(Clone, Debug)]
pub struct Bed {
    /// The supervisor's socket.
    pub client: Client,
    /// The cgroup2 mount point (`/sys/fs/cgroup`).
    pub cgroup_mount: PathBuf,
    /// The supervisor's configured cgroup root, under the mount.
    pub cgroup_root: PathBuf,
    /// A directory on the io-limited disk that the job user may write to.
    pub io_dir: PathBuf,
    /// That disk's `MAJ:MIN`.
    pub io_device: String,
}

impl Bed {
    /// `<root>/jobs`, the parent of every job cgroup. Its `memory.events`,
    /// `memory.peak` and `io.stat` count its children too, and outlive them.
    pub fn jobs(&self) -> Cgroup {
        Cgroup::new(self.cgroup_root.join("jobs"))
    }

    /// A job's cgroup, `<root>/jobs/<id>`.
    pub fn job(&self, id: JobId) -> Cgroup {
        Cgroup::new(self.cgroup_root.join("jobs").join(id.to_string()))
    }

    /// `/<root>/jobs` as `/proc/<pid>/cgroup` shows it.
    pub fn jobs_cgroup_name(&self) -> Result<String> {
        let relative = self
            .cgroup_root
            .strip_prefix(&self.cgroup_mount)
            .with_context(|| {
                format!(
                    "the cgroup root {} is not under {}",
                    self.cgroup_root.display(),
                    self.cgroup_mount.display()
                )
            })?;
        Ok(format!("/{}/jobs", relative.display()))
    }

    /// A job's cgroup as `/proc/<pid>/cgroup` shows it.
    pub fn job_cgroup_name(&self, id: JobId) -> Result<String> {
        Ok(format!("{}/{id}", self.jobs_cgroup_name()?))
    }
}

/// What one scenario found.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The measured figures, in one line.
    pub figure: String,
    /// The checks that failed.
    pub failures: Vec<String>,
}

impl Outcome {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Collects failed checks.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    /// Records `what` as failed unless `ok`.
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    fn outcome(self, figure: String) -> Outcome {
        Outcome {
            figure,
            failures: self.failures,
        }
    }
}

/// `bytes` in MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// `bytes` in MiB with three decimals (4 KiB pages show).
fn mib3(bytes: u64) -> String {
    format!("{:.3} MiB", bytes as f64 / MIB as f64)
}

/// A sampled value for a figure: the number, or "max", or "-" when never seen.
fn shown(value: Option<u64>) -> String {
    match value {
        Some(u64::MAX) => "max".into(),
        Some(v) => v.to_string(),
        None => "-".into(),
    }
}

/// Follows a job's output to its end in a task of its own, so that the
/// caller can sample its cgroup meanwhile.
fn follow(client: &Client, id: JobId) -> tokio::task::JoinHandle<Result<Ended>> {
    let client = client.clone();
    tokio::spawn(async move { client.follow_to_end(id, JOB_TIMEOUT).await })
}

/// Waits for a follower task's result.
async fn ended(follower: tokio::task::JoinHandle<Result<Ended>>) -> Result<Ended> {
    follower
        .await
        .map_err(|e| anyhow!("the output follower task failed: {e}"))?
}

/// A short description of how a job ended, for figures.
fn status(info: &JobInfo) -> String {
    let termination = match info.termination {
        Some(Termination::Exited(code)) => format!("exit {code}"),
        Some(Termination::Signaled(signal)) => format!("signal {signal}"),
        None => "no termination".into(),
    };
    let oom = if info.oom_killed { ", oom_killed" } else { "" };
    let failure = info
        .failure
        .as_deref()
        .map(|f| format!(", failure: {f}"))
        .unwrap_or_default();
    format!("{:?} ({termination}{oom}{failure})", info.state)
}

/// Memory: a job that allocates and touches 256 MiB under a 64 MiB limit is
/// OOM-killed and never holds more than the limit.
///
/// `dd bs=256M` allocates a 256 MiB buffer and `read(2)`s `/dev/zero` into
/// it, so the kernel faults in (touches) every page of it. The command
/// sleeps 1 s first so that the driver sees the cgroup before the kill, and
/// `exec`s dd so that dd is the job's command and its SIGKILL its
/// termination.
///
/// Tolerance: the kernel documents that "under certain circumstances, the
/// usage may go over the limit temporarily" (cgroup-v2.rst, `memory.max`):
/// charges that must not fail (`__GFP_NOFAIL`, atomic allocations, a dying
/// OOM victim's last pages) are forced past the limit. Seen here: the
/// parent `jobs/memory.peak` 8 KiB over. So the parent's peak may exceed the
/// limit by [`MEMORY_SLACK`] (1 MiB), nothing next to the 192 MiB over it the
/// job tries to take; the job's own `memory.peak` and the supervisor's report
/// of it must stay at or under the limit, as the issue asks.
pub async fn memory(bed: &Bed) -> Result<Outcome> {
    const LIMIT: u64 = 64 * MIB;
    const CEILING: u64 = LIMIT + MEMORY_SLACK;
    let jobs = bed.jobs();
    let ooms_before = jobs.keyed("memory.events", "oom_kill")?.unwrap_or(0);
    let limits = Limits::new(None, Some(LIMIT), None, None, None)?;
    let script = "sleep 1; exec dd if=/dev/zero of=/dev/null bs=256M count=1";
    let started = bed.client.start("sh", &["-c", script], limits).await?;
    let id = started.id;
    let cgroup = bed.job(id);
    let follower = follow(&bed.client, id);

    let mut memory_max = None;
    let mut peak: Option<u64> = None;
    let mut samples = 0u32;
    while !follower.is_finished() {
        if memory_max.is_none() {
            memory_max = cgroup.number("memory.max")?;
        }
        if let Some(p) = cgroup.number("memory.peak")? {
            peak = Some(peak.unwrap_or(0).max(p));
            samples += 1;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let end = ended(follower).await?.info;
    // The job's record, asked for afresh, must say the same as the stream's end.
    let record = bed.client.get(id).await?;
    let ooms = jobs
        .keyed("memory.events", "oom_kill")?
        .unwrap_or(0)
        .saturating_sub(ooms_before);
    let jobs_peak = jobs.number("memory.peak")?;
    // The kernel's own record of the kill names the victim's cgroup.
    let task_memcg = format!("task_memcg={},", bed.job_cgroup_name(id)?);
    let kill_line = kernel::kernel_log()?
        .into_iter()
        .find(|line| line.starts_with("oom-kill:") && line.contains(&task_memcg));
    let victim = kill_line.as_deref().map(|line| {
        let field = |name: &str| {
            line.split(',')
                .find_map(|kv| kv.strip_prefix(name))
                .unwrap_or("?")
                .to_owned()
        };
        format!("{} uid {}", field("task="), field("uid="))
    });
    let supervisor_peak = end.usage.memory_peak_bytes;

    let mut checks = Checks::default();
    checks.check(
        started.enforced.memory,
        "the supervisor reports memory as not enforced",
    );
    checks.check(
        memory_max == Some(LIMIT),
        format!("memory.max reads {} instead of {LIMIT}", shown(memory_max)),
    );
    checks.check(
        samples > 0,
        "memory.peak was never readable while the job ran",
    );
    checks.check(
        peak.is_some_and(|p| p <= LIMIT),
        format!("the job's memory.peak reached {} > the limit", shown(peak)),
    );
    checks.check(
        jobs_peak.is_some_and(|p| p <= CEILING),
        format!(
            "jobs/memory.peak reached {} > the limit + 1 MiB",
            shown(jobs_peak)
        ),
    );
    checks.check(
        ooms >= 1,
        "the kernel counted no oom_kill in jobs/memory.events",
    );
    checks.check(
        kill_line.is_some(),
        "the kernel log has no oom-kill line for the job's cgroup",
    );
    checks.check(
        end.state == JobState::Finished,
        format!("state {:?}, expected Finished", end.state),
    );
    checks.check(
        end.termination == Some(Termination::Signaled(9)),
        format!("termination {:?}, expected Signaled(9)", end.termination),
    );
    checks.check(end.oom_killed, "the supervisor does not report oom_killed");
    checks.check(
        record.oom_killed == end.oom_killed
            && record.termination == end.termination
            && record.state == end.state,
        format!(
            "GetJob says {}, the stream's End said {}",
            status(&record),
            status(&end)
        ),
    );
    checks.check(
        supervisor_peak.is_some_and(|p| p <= LIMIT),
        format!(
            "the supervisor's memory_peak_bytes is {} > the limit",
            shown(supervisor_peak)
        ),
    );

    let figure = format!(
        "limit {} (memory.max {}): job memory.peak {} over {samples} samples, jobs/memory.peak {}, \
         oom_kill +{ooms} (killed {}); supervisor: {}, memory_peak_bytes {}",
        mib(LIMIT),
        shown(memory_max),
        peak.map_or("-".into(), mib3),
        jobs_peak.map_or("-".into(), mib3),
        victim.unwrap_or_else(|| "-".into()),
        status(&end),
        supervisor_peak.map_or("-".into(), mib3),
    );
    Ok(checks.outcome(figure))
}

/// Placement: the job's command runs in the job's own cgroup.
pub async fn placement(bed: &Bed) -> Result<Outcome> {
    let started = bed
        .client
        .start("cat", &["/proc/self/cgroup"], Limits::default())
        .await?;
    let end = bed.client.follow_to_end(started.id, JOB_TIMEOUT).await?;
    let expected = format!("0::{}\n", bed.job_cgroup_name(started.id)?);
    let shown_output = String::from_utf8_lossy(&end.output).into_owned();

    let mut checks = Checks::default();
    checks.check(
        shown_output == expected,
        format!("/proc/self/cgroup reads {shown_output:?}, expected {expected:?}"),
    );
    checks.check(
        end.info.termination == Some(Termination::Exited(0)),
        format!("the job ended {}", status(&end.info)),
    );
    Ok(checks.outcome(format!(
        "/proc/self/cgroup of the command: {:?}; {}",
        shown_output.trim_end(),
        status(&end.info)
    )))
}

/// CPU share of a busy loop over a window, in percent of one CPU.
struct CpuRun {
    percent: f64,
    cpu_max: Option<String>,
    stopped: JobInfo,
}

/// Runs a busy loop with `limits`, measures its share of one CPU over
/// `window` from `cpu.stat` `usage_usec`, and stops it.
async fn busy_loop(bed: &Bed, limits: Limits, window: Duration) -> Result<CpuRun> {
    let started = bed
        .client
        .start("sh", &["-c", "while :; do :; done"], limits)
        .await?;
    let cgroup = bed.job(started.id);
    let cpu_max = cgroup.read("cpu.max")?.map(|s| s.trim().to_owned());
    // Let it get going (the init forks and execs the shell) before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let usage = |cgroup: &Cgroup| -> Result<u64> {
        cgroup
            .keyed("cpu.stat", "usage_usec")?
            .ok_or_else(|| anyhow!("{}/cpu.stat is gone", cgroup.path().display()))
    };
    let (u0, t0) = (usage(&cgroup)?, Instant::now());
    tokio::time::sleep(window).await;
    let (u1, t1) = (usage(&cgroup)?, Instant::now());
    let stopped = bed.client.stop(started.id, STOP_GRACE_MS).await?;
    let wall = t1.duration_since(t0).as_micros() as f64;
    Ok(CpuRun {
        percent: (u1.saturating_sub(u0)) as f64 / wall * 100.0,
        cpu_max,
        stopped,
    })
}

/// CPU: a busy loop under 200 millicores gets about 20% of one CPU, against
/// nearly all of one without the limit.
///
/// Tolerance: CFS bandwidth control hands out 20 ms of quota per 100 ms
/// period; a 5 s window holds 50 periods, so misaligned window edges cost at
/// most one period's quota (0.4% of the window), and runtime is charged in
/// slices of 5 ms (`sched_cfs_bandwidth_slice_us`), which can overrun a
/// period by at most one slice per CPU. Under TCG the guest's clocks jitter
/// with the host's load. Allowed: 20% + 3 points at most; at least 14%
/// (less would mean the loop did not run, not that the limit held). The
/// unlimited loop must get at least 60% and three times the limited share,
/// so that the comparison shows the limit, not a slow VM, holding it down.
pub async fn cpu(bed: &Bed) -> Result<Outcome> {
    const MILLICORES: u32 = 200;
    const WINDOW: Duration = Duration::from_secs(5);
    let limited = busy_loop(
        bed,
        Limits::new(Some(MILLICORES), None, None, None, None)?,
        WINDOW,
    )
    .await?;
    let free = busy_loop(bed, Limits::default(), WINDOW).await?;

    let mut checks = Checks::default();
    checks.check(
        limited.cpu_max.as_deref() == Some("20000 100000"),
        format!(
            "cpu.max reads {:?}, expected \"20000 100000\"",
            limited.cpu_max
        ),
    );
    checks.check(
        limited.stopped.enforced.cpu,
        "the supervisor reports cpu as not enforced",
    );
    checks.check(
        limited.percent <= 23.0,
        format!("{:.1}% of one CPU under 200m is over 23%", limited.percent),
    );
    checks.check(
        limited.percent >= 14.0,
        format!(
            "{:.1}% of one CPU under 200m is under 14%: did the loop run?",
            limited.percent
        ),
    );
    checks.check(
        free.percent >= 60.0 && free.percent >= 3.0 * limited.percent,
        format!(
            "{:.1}% unlimited is not clearly above the limited share",
            free.percent
        ),
    );
    for run in [&limited, &free] {
        checks.check(
            run.stopped.state == JobState::Stopped,
            format!("a stopped busy loop is {}", status(&run.stopped)),
        );
    }
    Ok(checks.outcome(format!(
        "{:.1}% of one CPU with cpu.max {} (200m); {:.1}% unlimited (usage_usec over {}s)",
        limited.percent,
        limited.cpu_max.as_deref().unwrap_or("-"),
        free.percent,
        WINDOW.as_secs()
    )))
}

/// One `dd oflag=direct` run and its rate.
struct IoRun {
    bytes: u64,
    seconds: f64,
    io_max: Option<String>,
    end: JobInfo,
}

impl IoRun {
    fn rate(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(0.001)
    }
}

/// Writes `count` 64 KiB blocks with O_DIRECT to `file` in the io
/// directory under `limits`; the bytes are the kernel's (`wbytes` of the
/// disk in `jobs/io.stat`, which counts every job cgroup, removed ones too),
/// the time is from the exec of the command to its end.
async fn direct_write(bed: &Bed, file: &str, count: u32, limits: Limits) -> Result<IoRun> {
    let jobs = bed.jobs();
    let written = |jobs: &Cgroup| -> Result<u64> {
        jobs.io_written(&bed.io_device)?
            .ok_or_else(|| anyhow!("{}/io.stat is gone", jobs.path().display()))
    };
    let before = written(&jobs)?;
    let target = bed.io_dir.join(file);
    let of = format!("of={}", target.display());
    let count_arg = format!("count={count}");
    let started = bed
        .client
        .start(
            "dd",
            &["if=/dev/zero", &of, "bs=64k", &count_arg, "oflag=direct"],
            limits,
        )
        .await?;
    let io_max = bed
        .job(started.id)
        .read("io.max")?
        .map(|s| s.trim().to_owned());
    let end = bed
        .client
        .follow_to_end(started.id, JOB_TIMEOUT)
        .await?
        .info;
    let bytes = written(&jobs)?.saturating_sub(before);
    let millis = match (end.started_at, end.ended_at) {
        (Some(start), Some(stop)) => stop.0.saturating_sub(start.0),
        _ => 0,
    };
    // The file is not needed any more; the disk is small.
    let _ = std::fs::remove_file(&target);
    Ok(IoRun {
        bytes,
        seconds: millis as f64 / 1000.0,
        io_max,
        end,
    })
}

/// IO: O_DIRECT writes under a 2 MiB/s write limit run at about that rate,
/// against the disk's speed without it.
///
/// Tolerance: blk-throttle lets a bio through once the budget accrued since
/// the start of its time slice covers it, so a 64 KiB write can at most run
/// one bio ahead of the rate, and a slice (100 ms) of budget can be carried:
/// about 0.2 MiB over 10 MiB, 2%. The job's start and end are stamped in
/// milliseconds, but its exec and reaping add tens of ms under TCG. Allowed:
/// at most 110% of the limit; at least 75% (less would mean a slow VM, not
/// the limit). The unlimited run must be at least 3 times the limit.
pub async fn io(bed: &Bed) -> Result<Outcome> {
    const WBPS: u64 = 2 * MIB;
    const BLOCKS: u32 = 160; // 10 MiB: 5 s at 2 MiB/s
    let limited = direct_write(
        bed,
        "throttled",
        BLOCKS,
        Limits::new(None, None, None, Some(WBPS), None)?,
    )
    .await?;
    let free = direct_write(bed, "free", BLOCKS, Limits::default()).await?;
    let expected_bytes = u64::from(BLOCKS) * 64 * 1024;

    let mut checks = Checks::default();
    let expected_max = format!("{} rbps=max wbps={WBPS} riops=max wiops=max", bed.io_device);
    checks.check(
        limited.io_max.as_deref() == Some(expected_max.as_str()),
        format!(
            "io.max reads {:?}, expected {expected_max:?}",
            limited.io_max
        ),
    );
    checks.check(
        limited.end.enforced.io,
        "the supervisor reports io as not enforced",
    );
    for run in [&limited, &free] {
        checks.check(
            run.end.termination == Some(Termination::Exited(0)),
            format!("dd ended {}", status(&run.end)),
        );
        checks.check(
            run.bytes >= expected_bytes,
            format!(
                "the kernel counted {} written, expected {}",
                run.bytes, expected_bytes
            ),
        );
    }
    let limited_share = limited.rate() / WBPS as f64;
    checks.check(
        limited_share <= 1.10,
        format!(
            "{:.2} MiB/s under a 2 MiB/s limit is over 110%",
            limited.rate() / MIB as f64
        ),
    );
    checks.check(
        limited_share >= 0.75,
        format!(
            "{:.2} MiB/s under a 2 MiB/s limit is under 75%",
            limited.rate() / MIB as f64
        ),
    );
    checks.check(
        free.rate() >= 3.0 * WBPS as f64,
        format!(
            "{:.2} MiB/s unlimited is not clearly above the limit",
            free.rate() / MIB as f64
        ),
    );
    Ok(checks.outcome(format!(
        "{:.2} MiB/s under a 2 MiB/s write limit (io.max \"{}\"; {} in {:.2}s); \
         {:.1} MiB/s unlimited ({} in {:.2}s)",
        limited.rate() / MIB as f64,
        limited.io_max.as_deref().unwrap_or("-"),
        mib(limited.bytes),
        limited.seconds,
        free.rate() / MIB as f64,
        mib(free.bytes),
        free.seconds,
    )))
}

/// Pids: a fork bomb under a 32-task limit never has more than 32 tasks,
/// the supervisor keeps serving meanwhile, and stopping the bomb leaves
/// nothing behind.
pub async fn pids(bed: &Bed) -> Result<Outcome> {
    const LIMIT: u32 = 32;
    const BOMB_TIME: Duration = Duration::from_secs(4);
    let limits = Limits::new(None, None, None, None, Some(LIMIT))?;
    // Each call of f forks a pipeline of two more calls in the background;
    // the shell itself then becomes `sleep`, so the job lives on.
    let bomb = "f() { f | f & }; f; exec sleep 600";
    let started = bed.client.start("sh", &["-c", bomb], limits).await?;
    let id = started.id;
    let cgroup = bed.job(id);
    let job_cgroup = bed.job_cgroup_name(id)?;

    // Meanwhile, a second job must start and finish.
    let client = bed.client.clone();
    let second = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = Instant::now();
        let info = client
            .start("echo", &["still serving"], Limits::default())
            .await?;
        let end = client.follow_to_end(info.id, JOB_TIMEOUT).await?;
        Ok::<_, anyhow::Error>((end, t.elapsed()))
    });

    let mut most = 0u64;
    let mut samples = 0u32;
    let mut over = false;
    let t0 = Instant::now();
    while t0.elapsed() < BOMB_TIME || !second.is_finished() {
        if let Some(current) = cgroup.number("pids.current")? {
            most = most.max(current);
            samples += 1;
            if current > u64::from(LIMIT) {
                // The limit does not hold: stop now, before the VM drowns.
                over = true;
                break;
            }
        }
        if t0.elapsed() > JOB_TIMEOUT {
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let pids_max = cgroup.number("pids.max")?;
    let peak = cgroup.number("pids.peak")?;
    let refused = cgroup.keyed("pids.events", "max")?;
    let t_stop = Instant::now();
    let stopped = bed.client.stop(id, STOP_GRACE_MS).await;
    let stop_time = t_stop.elapsed();
    let left = kernel::processes_under(&job_cgroup)?;
    let mut gone_after = None;
    while t_stop.elapsed() < Duration::from_secs(10) {
        if !cgroup.exists() {
            gone_after = Some(t_stop.elapsed());
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let second = if second.is_finished() {
        second
            .await
            .map_err(|e| anyhow!("the second job's task failed: {e}"))?
    } else {
        second.abort();
        Err(anyhow!("the second job did not finish"))
    };

    let mut checks = Checks::default();
    checks.check(
        started.enforced.pids,
        "the supervisor reports pids as not enforced",
    );
    checks.check(
        pids_max == Some(u64::from(LIMIT)),
        format!("pids.max reads {}", shown(pids_max)),
    );
    checks.check(
        !over && most <= u64::from(LIMIT),
        format!("pids.current reached {most}"),
    );
    checks.check(
        peak.is_some_and(|p| p <= u64::from(LIMIT)),
        format!("pids.peak reads {}", shown(peak)),
    );
    checks.check(
        refused.is_some_and(|n| n > 0),
        format!(
            "pids.events max is {}: the bomb never hit the limit",
            shown(refused)
        ),
    );
    let second_figure = match &second {
        Ok((end, took)) => {
            checks.check(
                end.output == b"still serving\n"
                    && end.info.termination == Some(Termination::Exited(0)),
                format!(
                    "the second job printed {:?} and ended {}",
                    String::from_utf8_lossy(&end.output),
                    status(&end.info)
                ),
            );
            format!("second job done in {:.2}s", took.as_secs_f64())
        }
        Err(e) => {
            checks.check(false, format!("the second job: {e:#}"));
            "second job failed".into()
        }
    };
    let stop_figure = match &stopped {
        Ok(info) => {
            checks.check(
                info.state == JobState::Stopped,
                format!("after StopJob the bomb is {}", status(info)),
            );
            format!("stopped in {:.2}s", stop_time.as_secs_f64())
        }
        Err(e) => {
            checks.check(false, format!("StopJob: {e:#}"));
            "stop failed".into()
        }
    };
    checks.check(
        left.is_empty(),
        format!("processes left in the job's cgroup after the stop: {left:?}"),
    );
    checks.check(
        gone_after.is_some(),
        "the job's cgroup still exists 10 s after the stop",
    );
    Ok(checks.outcome(format!(
        "pids.current at most {most} over {samples} samples, pids.peak {}, pids.events max {} \
         (limit {LIMIT}); {second_figure}; {stop_figure}, cgroup gone {}, {} processes left",
        shown(peak),
        shown(refused),
        gone_after.map_or("never".into(), |d| format!("after {:.2}s", d.as_secs_f64())),
        left.len(),
    )))
}

/// The job user's uid (`nobody`).
const JOB_UID: u32 = 65534;

/// Cleanup: after everything, no job cgroup, no job process (none in a job
/// cgroup, none of the job user anywhere), no running job.
pub async fn cleanup(bed: &Bed) -> Result<Outcome> {
    let cgroups = bed.jobs().children()?;
    let processes = kernel::processes_under(&bed.jobs_cgroup_name()?)?;
    let of_job_user = kernel::processes_of_uid(JOB_UID)?;
    let running = bed.client.running().await?;
    let mut checks = Checks::default();
    checks.check(cgroups.is_empty(), format!("job cgroups left: {cgroups:?}"));
    checks.check(
        processes.is_empty(),
        format!("job processes left: {processes:?}"),
    );
    checks.check(
        of_job_user.is_empty(),
        format!("processes of uid {JOB_UID} left: {of_job_user:?}"),
    );
    checks.check(
        running.is_empty(),
        format!(
            "jobs still running: {:?}",
            running.iter().map(|j| j.id.to_string()).collect::<Vec<_>>()
        ),
    );
    Ok(checks.outcome(format!(
        "{} job cgroups, {} processes in job cgroups, {} of uid {JOB_UID}, {} running jobs left",
        cgroups.len(),
        processes.len(),
        of_job_user.len(),
        running.len()
    )))
}

/// Stops every job that is still running (after a scenario that failed
/// half-way), so that the next scenario starts clean. Returns their ids.
pub async fn stop_leftovers(client: &Client) -> Result<Vec<JobId>> {
    let mut stopped = Vec::new();
    for job in client.running().await? {
        client.stop(job.id, 0).await?;
        stopped.push(job.id);
    }
    Ok(stopped)
}
