//! The scenarios: each starts real jobs through the real supervisor and holds
//! what the supervisor reports against what the kernel reports.
//!
//! A scenario returns an [`Outcome`]: the figures it measured, in one line,
//! and the checks that failed (none when it passed). An `Err` means the
//! scenario could not be carried out at all (e.g. a call was refused); the
//! runner reports it as a failure too.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
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
    /// The `MAJ:MIN` of the disk holding the supervisor's `state_dir`, and
    /// so the jobs' work directories: the one io limits apply to.
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

/// Placement: the job's command runs in the job's own cgroup, as the
/// kernel shows it from outside, and sees that cgroup as the root of its
/// cgroup namespace from inside.
///
/// The command prints its own `/proc/self/cgroup` and becomes `sleep`; the
/// driver finds its processes by the job's uid (not by their cgroup) in
/// `/proc`, reads their `0::` lines there, and stops the job.
pub async fn placement(bed: &Bed) -> Result<Outcome> {
    let script = "cat /proc/self/cgroup; exec sleep 600";
    let started = bed
        .client
        .start("sh", &["-c", script], Limits::default())
        .await?;
    let id = started.id;
    let follower = follow(&bed.client, id);
    let uid = started
        .uid
        .ok_or_else(|| anyhow!("the supervisor reports no uid for job {id}"))?;
    let expected = bed.job_cgroup_name(id)?;
    // Once the shell has become sleep, cat has run.
    let mut seen = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) && !follower.is_finished() {
        seen = kernel::processes_of_uid(uid)?;
        if seen.iter().any(|p| p.comm == "sleep") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped = bed.client.stop(id, STOP_GRACE_MS).await?;
    let end = ended(follower).await?;
    let own_view = String::from_utf8_lossy(&end.output).into_owned();

    let mut checks = Checks::default();
    checks.check(
        seen.iter().any(|p| p.comm == "sleep"),
        format!("no sleep process of the job's uid {uid} within 30 s (seen: {seen:?})"),
    );
    checks.check(
        seen.iter().all(|p| p.cgroup == expected),
        format!("processes of the job's uid outside {expected}: {seen:?}"),
    );
    checks.check(
        own_view == "0::/\n",
        format!("the command's /proc/self/cgroup reads {own_view:?}, expected \"0::/\\n\""),
    );
    checks.check(
        stopped.state == JobState::Stopped,
        format!("after StopJob the job is {}", status(&stopped)),
    );
    let host_view: Vec<String> = seen
        .iter()
        .map(|p| format!("{} {}: 0::{}", p.comm, p.pid, p.cgroup))
        .collect();
    Ok(checks.outcome(format!(
        "the command (uid {uid}) from /proc: {}; its own /proc/self/cgroup: {:?}; {}",
        if host_view.is_empty() {
            "-".into()
        } else {
            host_view.join(", ")
        },
        own_view.trim_end(),
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

/// Writes `count` 64 KiB blocks with O_DIRECT to `file` in the job's own
/// work directory (its working directory, `/work`, kept under the
/// supervisor's `state_dir` on the io disk) under `limits`, then removes it
/// (an empty work directory is removed when the job ends, which gives its
/// uid back). The bytes are the kernel's (`wbytes` of the disk in
/// `jobs/io.stat`, which counts every job cgroup, removed ones too), the time
/// is from the exec of the command to its end.
async fn direct_write(bed: &Bed, file: &str, count: u32, limits: Limits) -> Result<IoRun> {
    let jobs = bed.jobs();
    let written = |jobs: &Cgroup| -> Result<u64> {
        jobs.io_written(&bed.io_device)?
            .ok_or_else(|| anyhow!("{}/io.stat is gone", jobs.path().display()))
    };
    let before = written(&jobs)?;
    let script = format!(
        "dd if=/dev/zero of={file} bs=64k count={count} oflag=direct; \
         status=$?; rm -f {file}; exit $status"
    );
    let started = bed.client.start("sh", &["-c", &script], limits).await?;
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
    let micros = match (end.started_at, end.ended_at) {
        (Some(start), Some(stop)) => stop.0.saturating_sub(start.0),
        _ => 0,
    };
    Ok(IoRun {
        bytes,
        seconds: micros as f64 / 1e6,
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

/// The uids (and gids) the supervisor gives jobs: its default `job_uids`,
/// which the guest's configuration keeps.
pub const JOB_UIDS: RangeInclusive<u32> = 61184..=65519;

/// How long the driver waits for a sandbox job to reach each of its steps.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The shell script of a sandbox job, run as `sh -c SCRIPT sandbox NAME
/// OTHER`: it reports what it is and may do in sections (`== <what>` and
/// the lines that follow), leaves a file named NAME in `/tmp` and
/// `/dev/shm`, and waits for the driver twice: for `/tmp/go` before it lists
/// both directories (then it leaves `/tmp/listed`), and for `/tmp/end`
/// before it exits. The driver writes those files through
/// `/proc/<init pid>/root`, the job's own root. Nothing in it forks while
/// it waits but `sleep`.
const SANDBOX_SCRIPT: &str = r#"
wait_for() {
    n=0
    while [ ! -e "$1" ]; do
        n=$((n + 1))
        if [ "$n" -gt 1200 ]; then echo "== timed out waiting for $1"; exit 3; fi
        sleep 0.1
    done
}
echo "== id"; id -u; id -g
echo "== cgroup"; cat /proc/self/cgroup
echo "== seccomp"; grep '^Seccomp:' /proc/self/status
echo "== nofile"; ulimit -n
echo "== write /"; touch /sandbox-probe 2>&1 && echo written
echo "== write /etc"; touch /etc/sandbox-probe 2>&1 && echo written
echo "== write /tmp"; echo "$1" > "/tmp/$1" && echo written
echo "== write /dev/shm"; echo "$1" > "/dev/shm/$1" && echo written
echo "== write /work"; echo "$1" > "/work/$1" && rm "/work/$1" && echo written
echo "== unshare -U"; unshare -U true 2>&1 && echo unshared
wait_for /tmp/go
echo "== ls /tmp"; ls /tmp
echo "== ls /dev/shm"; ls /dev/shm
: > /tmp/listed
wait_for /tmp/end
"#;

/// A job's output split into its `== <what>` sections (lines before the
/// first one are under "").
fn sections(output: &str) -> BTreeMap<String, Vec<String>> {
    let mut sections = BTreeMap::new();
    let mut current = String::new();
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            current = name.to_owned();
            sections.entry(current.clone()).or_insert_with(Vec::new);
        } else {
            sections
                .entry(current.clone())
                .or_insert_with(Vec::new)
                .push(line.to_owned());
        }
    }
    sections
}

/// Waits until `ready` holds, for at most `within`; whether it did.
async fn wait_until(within: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if t0.elapsed() >= within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One of the sandbox scenario's two jobs.
struct SandboxJob {
    name: &'static str,
    other: &'static str,
    started: JobInfo,
    uid: u32,
    gid: u32,
    /// `/proc/<init pid>/root`: the job's root, as seen from the host.
    root: PathBuf,
}

impl SandboxJob {
    /// Starts the job and follows its output (in a task of its own).
    async fn start(
        bed: &Bed,
        name: &'static str,
        other: &'static str,
    ) -> Result<(Self, tokio::task::JoinHandle<Result<Ended>>)> {
        let started = bed
            .client
            .start(
                "sh",
                &["-c", SANDBOX_SCRIPT, "sandbox", name, other],
                Limits::default(),
            )
            .await?;
        let id = started.id;
        let follower = follow(&bed.client, id);
        let (Some(uid), Some(gid)) = (started.uid, started.gid) else {
            return Err(anyhow!(
                "the supervisor reports uid {:?} gid {:?} for job {id}",
                started.uid,
                started.gid
            ));
        };
        let pid = match started.pid {
            Some(pid) => pid,
            None => bed
                .client
                .get(id)
                .await?
                .pid
                .ok_or_else(|| anyhow!("the supervisor reports no pid for job {id}"))?,
        };
        let job = Self {
            name,
            other,
            started,
            uid,
            gid,
            root: PathBuf::from(format!("/proc/{pid}/root")),
        };
        Ok((job, follower))
    }

    /// `path` (absolute) in the job's root.
    fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Whether the job's file `path` exists (false once the job is gone).
    fn has(&self, path: &str) -> bool {
        self.path(path).exists()
    }

    /// Its own files are in its `/tmp` and `/dev/shm`.
    fn has_own_files(&self) -> bool {
        self.has(&format!("/tmp/{}", self.name)) && self.has(&format!("/dev/shm/{}", self.name))
    }

    /// Writes the (empty) file `path` in the job's root for its script.
    fn signal(&self, path: &str) -> Result<()> {
        let path = self.path(path);
        std::fs::write(&path, b"").with_context(|| format!("writing {}", path.display()))
    }
}

/// What the host saw of one sandbox job while it ran.
struct HostView {
    /// The job's cgroup's `cgroup.procs`, read twice (around the scan).
    procs: Vec<u32>,
    /// The processes of the job's uid.
    of_uid: Vec<kernel::Placed>,
    /// Pids in the cgroup that are neither the init nor of the job's uid.
    foreign: Vec<u32>,
    /// The `/proc/<pid>/status` of the job's shell.
    shell_status: Option<String>,
}

/// Reads which processes the job's cgroup holds and where the processes
/// of the job's uid are, from the host.
fn host_view(bed: &Bed, job: &SandboxJob) -> Result<HostView> {
    let cgroup = bed.job(job.started.id);
    let before = cgroup.procs()?.unwrap_or_default();
    let of_uid = kernel::processes_of_uid(job.uid)?;
    let after = cgroup.procs()?.unwrap_or_default();
    let mut procs = before;
    procs.extend(after);
    procs.sort_unstable();
    procs.dedup();
    let init = job.started.pid;
    // A `sleep` of the script may come and go between the reads: a pid that
    // is gone by now is not held against the cgroup.
    let foreign = procs
        .iter()
        .copied()
        .filter(|&pid| Some(pid) != init && !of_uid.iter().any(|p| p.pid == pid))
        .filter(|&pid| {
            kernel::status_of(pid).is_some_and(|status| {
                kernel::status_ids(&status, "Uid:").is_none_or(|ids| ids[0] != job.uid)
            })
        })
        .collect();
    let shell_status = of_uid
        .iter()
        .find(|p| p.comm == "sh")
        .and_then(|p| kernel::status_of(p.pid));
    Ok(HostView {
        procs,
        of_uid,
        foreign,
        shell_status,
    })
}

/// Sandbox: two jobs running at once are kept apart and kept in.
///
/// Each gets a uid and gid of its own from [`JOB_UIDS`] (the supervisor's
/// status, `id` in the job and the kernel's `/proc/<pid>/status` agree);
/// the file each writes in its `/tmp` and `/dev/shm` is in neither the
/// other job's nor the host's (seen from inside, and from the host through
/// `/proc/<init pid>/root`); its `/proc/self/cgroup` reads exactly `0::/`
/// (a cgroup namespace rooted at its cgroup; the only line, cgroup2 being
/// the only hierarchy); its command runs under seccomp (`Seccomp: 2`,
/// `unshare -U` refused), without capabilities, with no_new_privs and
/// `ulimit -n` 1024; `/` and `/etc` are read-only while `/tmp`, `/dev/shm`
/// and `/work` are writable; the job's cgroup, seen from the host, holds
/// the job's processes and nothing else; once both have ended, neither
/// their cgroups nor any process of their uids is left.
pub async fn sandbox(bed: &Bed) -> Result<Outcome> {
    let (left, left_follower) = SandboxJob::start(bed, "left", "right").await?;
    let (right, right_follower) = SandboxJob::start(bed, "right", "left").await?;
    let jobs = [left, right];
    let followers = [left_follower, right_follower];
    // A job that ended early will not get any further.
    let ended_early = || followers.iter().any(|f| f.is_finished());
    let mut checks = Checks::default();

    // Both have left their files and wait for /tmp/go: what the host sees.
    let ready = wait_until(STEP_TIMEOUT, || {
        ended_early() || jobs.iter().all(SandboxJob::has_own_files)
    })
    .await
        && jobs.iter().all(SandboxJob::has_own_files);
    checks.check(
        ready,
        format!(
            "the jobs did not both leave their files in /tmp and /dev/shm within {STEP_TIMEOUT:?}"
        ),
    );
    let mut views = Vec::new();
    for job in &jobs {
        for dir in ["/tmp", "/dev/shm"] {
            let other = format!("{dir}/{}", job.other);
            checks.check(
                !job.has(&other),
                format!("the {} job's root has the other job's {other}", job.name),
            );
            let host = PathBuf::from(format!("{dir}/{}", job.name));
            checks.check(
                !host.exists(),
                format!(
                    "the host's {dir} has the {} job's file {}",
                    job.name,
                    host.display()
                ),
            );
        }
        views.push(host_view(bed, job)?);
    }

    // Let both list their /tmp and /dev/shm while both files exist, then end.
    for job in &jobs {
        if let Err(e) = job.signal("/tmp/go") {
            checks.check(false, format!("{e:#}"));
        }
    }
    let listed = wait_until(STEP_TIMEOUT, || {
        ended_early() || jobs.iter().all(|j| j.has("/tmp/listed"))
    })
    .await
        && !ended_early();
    checks.check(
        listed,
        format!("the jobs did not both list their directories within {STEP_TIMEOUT:?}"),
    );
    for job in &jobs {
        checks.check(
            job.has_own_files(),
            format!(
                "the {} job's files were gone before both jobs had listed theirs",
                job.name
            ),
        );
        if let Err(e) = job.signal("/tmp/end") {
            checks.check(false, format!("{e:#}"));
        }
    }
    let mut outputs = Vec::new();
    let mut records = Vec::new();
    for (job, follower) in jobs.into_iter().zip(followers) {
        let end = ended(follower).await?;
        records.push(bed.client.get(job.started.id).await?);
        outputs.push((job, end));
    }

    // Afterwards: nothing of either job is left.
    let t_end = Instant::now();
    let gone = wait_until(Duration::from_secs(10), || {
        outputs
            .iter()
            .all(|(job, _)| !bed.job(job.started.id).exists())
    })
    .await;
    let gone_after = t_end.elapsed();
    let mut left_behind = Vec::new();
    for (job, _) in &outputs {
        left_behind.extend(kernel::processes_of_uid(job.uid)?);
        left_behind.extend(kernel::processes_under(
            &bed.job_cgroup_name(job.started.id)?,
        )?);
    }
    checks.check(
        gone,
        "a job's cgroup still exists 10 s after both jobs ended",
    );
    checks.check(
        left_behind.is_empty(),
        format!("processes left of the jobs' uids or in their cgroups: {left_behind:?}"),
    );

    // The ids.
    let (a, b) = (&outputs[0].0, &outputs[1].0);
    checks.check(a.uid != b.uid, format!("both jobs run as uid {}", a.uid));
    for ((job, end), (record, view)) in outputs.iter().zip(records.iter().zip(&views)) {
        let name = job.name;
        let expected_cgroup = bed.job_cgroup_name(job.started.id)?;
        checks.check(
            JOB_UIDS.contains(&job.uid),
            format!(
                "the {name} job's uid {} is outside {}-{}",
                job.uid,
                JOB_UIDS.start(),
                JOB_UIDS.end()
            ),
        );
        checks.check(
            job.gid == job.uid,
            format!("the {name} job runs as uid {} but gid {}", job.uid, job.gid),
        );
        checks.check(
            record.uid == Some(job.uid) && record.gid == Some(job.gid),
            format!(
                "GetJob says uid {:?} gid {:?} for the {name} job, StartJob said {} {}",
                record.uid, record.gid, job.uid, job.gid
            ),
        );
        checks.check(
            record.state == JobState::Finished
                && record.termination == Some(Termination::Exited(0)),
            format!("the {name} job ended {}", status(record)),
        );

        // What the host saw while it ran.
        checks.check(
            !view.of_uid.is_empty() && view.of_uid.iter().all(|p| p.cgroup == expected_cgroup),
            format!(
                "the {name} job's processes (uid {}) are not all in {expected_cgroup}: {:?}",
                job.uid, view.of_uid
            ),
        );
        checks.check(
            view.of_uid
                .iter()
                .all(|p| view.procs.contains(&p.pid) || kernel::status_of(p.pid).is_none()),
            format!(
                "the {name} job's cgroup.procs {:?} lacks some of its processes {:?}",
                view.procs, view.of_uid
            ),
        );
        checks.check(
            job.started.pid.is_some_and(|pid| view.procs.contains(&pid)),
            format!(
                "the {name} job's cgroup.procs {:?} lacks its init {:?}",
                view.procs, job.started.pid
            ),
        );
        checks.check(
            view.foreign.is_empty(),
            format!(
                "the {name} job's cgroup holds processes of another uid: {:?}",
                view.foreign
            ),
        );
        match &view.shell_status {
            Some(text) => {
                let all = |id: u32| Some([id; 4]);
                checks.check(
                    kernel::status_ids(text, "Uid:") == all(job.uid)
                        && kernel::status_ids(text, "Gid:") == all(job.gid),
                    format!(
                        "the {name} job's shell has Uid {:?} Gid {:?} in /proc/<pid>/status, \
                         expected {} and {} four times",
                        kernel::status_ids(text, "Uid:"),
                        kernel::status_ids(text, "Gid:"),
                        job.uid,
                        job.gid
                    ),
                );
                let value = |key| kernel::status_value(text, key).unwrap_or("-");
                checks.check(
                    value("Seccomp") == "2",
                    format!(
                        "the {name} job's shell has Seccomp {}, expected 2",
                        value("Seccomp")
                    ),
                );
                checks.check(
                    value("NoNewPrivs") == "1",
                    format!(
                        "the {name} job's shell has NoNewPrivs {}",
                        value("NoNewPrivs")
                    ),
                );
                checks.check(
                    value("CapEff").trim_start_matches('0').is_empty()
                        && value("CapPrm").trim_start_matches('0').is_empty(),
                    format!(
                        "the {name} job's shell has capabilities: CapEff {} CapPrm {}",
                        value("CapEff"),
                        value("CapPrm")
                    ),
                );
            }
            None => checks.check(
                false,
                format!("the {name} job's shell was not found in /proc"),
            ),
        }

        // What the job saw.
        let output = String::from_utf8_lossy(&end.output);
        let sections = sections(&output);
        let section = |what: &str| sections.get(what).cloned().unwrap_or_default();
        let expect = |checks: &mut Checks, what: &str, expected: &[&str]| {
            let got = section(what);
            checks.check(
                got == expected,
                format!("the {name} job's {what:?} reads {got:?}, expected {expected:?}"),
            );
        };
        let timeouts: Vec<&String> = sections
            .keys()
            .filter(|k| k.starts_with("timed out"))
            .collect();
        checks.check(timeouts.is_empty(), format!("the {name} job {timeouts:?}"));
        expect(
            &mut checks,
            "id",
            &[&job.uid.to_string(), &job.gid.to_string()],
        );
        expect(&mut checks, "cgroup", &["0::/"]);
        expect(&mut checks, "seccomp", &["Seccomp:\t2"]);
        expect(&mut checks, "nofile", &["1024"]);
        for what in ["write /", "write /etc"] {
            let got = section(what);
            checks.check(
                got.iter().any(|l| l.contains("Read-only file system"))
                    && !got.iter().any(|l| l == "written"),
                format!(
                    "the {name} job's {what:?} reads {got:?}, expected \"Read-only file system\""
                ),
            );
        }
        for what in ["write /tmp", "write /dev/shm", "write /work"] {
            expect(&mut checks, what, &["written"]);
        }
        let unshare = section("unshare -U");
        checks.check(
            unshare.iter().any(|l| l.contains("Operation not permitted"))
                && !unshare.iter().any(|l| l == "unshared"),
            format!("the {name} job's \"unshare -U\" reads {unshare:?}, expected \"Operation not permitted\""),
        );
        for what in ["ls /tmp", "ls /dev/shm"] {
            let got = section(what);
            checks.check(
                got.iter().any(|l| l == job.name) && !got.iter().any(|l| l == job.other),
                format!(
                    "the {name} job's {what:?} reads {got:?}: expected its own {:?} and not the other's {:?}",
                    job.name, job.other
                ),
            );
        }
    }

    let figure = format!(
        "uids {} and {} (gid = uid; id -u, GetJob and /proc/<pid>/status agree); \
         cgroups held {} and {} processes (init + command); \
         in the jobs: /proc/self/cgroup {:?}, {:?}, ulimit -n {:?}, unshare -U {:?}, \
         write / {:?}, /etc {:?}, /tmp /dev/shm /work {}; \
         each /tmp and /dev/shm held only its own file; \
         {}; afterwards cgroups gone {}, {} processes left",
        a.uid,
        b.uid,
        views[0].procs.len(),
        views[1].procs.len(),
        first_line(&outputs[0].1, "cgroup"),
        first_line(&outputs[0].1, "seccomp"),
        first_line(&outputs[0].1, "nofile"),
        short_error(&first_line(&outputs[0].1, "unshare -U")),
        short_error(&first_line(&outputs[0].1, "write /")),
        short_error(&first_line(&outputs[0].1, "write /etc")),
        if ["write /tmp", "write /dev/shm", "write /work"]
            .iter()
            .all(|w| first_line(&outputs[0].1, w) == "written")
        {
            "writable"
        } else {
            "NOT all writable"
        },
        outputs
            .iter()
            .map(|(job, end)| format!("{} {}", job.name, status(&end.info)))
            .collect::<Vec<_>>()
            .join(", "),
        if gone {
            format!("after {:.2}s", gone_after.as_secs_f64())
        } else {
            "never".into()
        },
        left_behind.len(),
    );
    Ok(checks.outcome(figure))
}

/// The first line of a section of a sandbox job's output ("" if none).
fn first_line(end: &Ended, what: &str) -> String {
    sections(&String::from_utf8_lossy(&end.output))
        .get(what)
        .and_then(|lines| lines.first().cloned())
        .unwrap_or_default()
}

/// The error at the end of a `tool: what: error` line.
fn short_error(line: &str) -> String {
    line.rsplit(": ").next().unwrap_or_default().to_owned()
}

/// Cleanup: after everything, no job cgroup, no job process (none in a job
/// cgroup, none of a job uid anywhere), no running job.
pub async fn cleanup(bed: &Bed) -> Result<Outcome> {
    let cgroups = bed.jobs().children()?;
    let processes = kernel::processes_under(&bed.jobs_cgroup_name()?)?;
    let of_job_uids = kernel::processes_of_uids(JOB_UIDS)?;
    let running = bed.client.running().await?;
    let (first, last) = (JOB_UIDS.start(), JOB_UIDS.end());
    let mut checks = Checks::default();
    checks.check(cgroups.is_empty(), format!("job cgroups left: {cgroups:?}"));
    checks.check(
        processes.is_empty(),
        format!("job processes left: {processes:?}"),
    );
    checks.check(
        of_job_uids.is_empty(),
        format!("processes of job uids ({first}-{last}) left: {of_job_uids:?}"),
    );
    checks.check(
        running.is_empty(),
        format!(
            "jobs still running: {:?}",
            running.iter().map(|j| j.id.to_string()).collect::<Vec<_>>()
        ),
    );
    Ok(checks.outcome(format!(
        "{} job cgroups, {} processes in job cgroups, {} of uids {first}-{last}, {} running jobs left",
        cgroups.len(),
        processes.len(),
        of_job_uids.len(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_split_the_output() {
        let output = "early\n== id\n61184\n61184\n== write /\n\
                      touch: /p: Read-only file system\n== empty\n== ls /tmp\ngo\nleft\n";
        let sections = sections(output);
        assert_eq!(sections[""], ["early"]);
        assert_eq!(sections["id"], ["61184", "61184"]);
        assert_eq!(sections["write /"], ["touch: /p: Read-only file system"]);
        assert!(sections["empty"].is_empty());
        assert_eq!(sections["ls /tmp"], ["go", "left"]);
        assert_eq!(
            short_error("touch: /p: Read-only file system"),
            "Read-only file system"
        );
    }
}
