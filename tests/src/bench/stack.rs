//! The system under test for the bench: the fixture's [`Stack`] (see
//! [`crate::fixture`]) with a client certificate for [`USER`], and what the
//! figures measure it with: following a job's output over gRPC (one client, or
//! many followers), and the memory and CPU time of the stack's processes from
//! `/proc`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use jobworker_proto::v1;
use jobworker_proto::v1::job_service_client::JobServiceClient;
use tonic::transport::Channel;

use super::Options;
use crate::fixture::{GatewayOptions, Stack, StackOptions, SupervisorOptions};

/// The remote user the bench acts as (role `user`).
pub const USER: &str = "bench";

/// Starts a stack with a certificate for [`USER`]; the supervisor's stop
/// grace period is 2 s, `supervisor_extra` lines are added to its
/// configuration, and its files stay in the run's directory
/// ([`Options::files_in`]) until the run ends. The bench's one user may use the whole gateway (its
/// per-user shares are raised to the shared limits): it measures capacity,
/// not fairness.
pub fn start(bench: &Options, supervisor_extra: &str) -> Result<Stack> {
    let options = StackOptions {
        supervisor: SupervisorOptions {
            extra: format!("grace_period_ms = 2000\n{supervisor_extra}"),
            dir_in: Some(bench.files_in.clone()),
            ..SupervisorOptions::default()
        },
        gateway: GatewayOptions {
            extra: "max_output_streams_per_user = 512\nmax_unary_calls_per_user = 256\n".into(),
            ..GatewayOptions::default()
        },
    };
    Stack::start(&[(USER, &["user"])], &options)
}

/// Starts `/bin/true` for `client` and follows its output to its end: the
/// job's id and its final status.
pub async fn run_true(client: &mut JobServiceClient<Channel>) -> Result<(String, v1::Job)> {
    let id = client
        .start_job(crate::fixture::gateway::start_request("/bin/true", &[]))
        .await
        .context("StartJob")?
        .into_inner()
        .job_id;
    let (_, _, job) = follow(client, &id).await?;
    Ok((id, job))
}

/// The command every start variant runs: it writes one line and ends.
pub const ECHO: [&str; 2] = ["/bin/echo", "hi"];

/// Starts [`ECHO`] through `client` and follows it to its end: the time
/// from sending StartJob to its reply, and to the job's first output byte.
pub async fn echo_to_first_byte(
    client: &mut JobServiceClient<Channel>,
) -> Result<(Duration, Duration)> {
    let start = Instant::now();
    let id = client
        .start_job(crate::fixture::gateway::start_request(ECHO[0], &ECHO[1..]))
        .await
        .context("StartJob")?
        .into_inner()
        .job_id;
    let replied = start.elapsed();
    let (bytes, first, _) = follow(client, &id).await?;
    let first = first
        .filter(|_| bytes > 0)
        .with_context(|| format!("job {id} wrote nothing"))?;
    Ok((replied, first - start))
}

/// Follows a job's output from offset 0 to its end: (bytes received, the
/// time the first data byte arrived, the final status).
pub async fn follow(
    client: &mut JobServiceClient<Channel>,
    job_id: &str,
) -> Result<(u64, Option<Instant>, v1::Job)> {
    let mut stream = client
        .stream_output(v1::StreamOutputRequest {
            job_id: job_id.to_owned(),
            offset: 0,
            follow: Some(true),
        })
        .await
        .context("StreamOutput")?
        .into_inner();
    let mut bytes = 0u64;
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        match chunk.context("reading the stream")?.kind {
            Some(v1::output_chunk::Kind::Output(output)) => {
                if first.is_none() && !output.data.is_empty() {
                    first = Some(Instant::now());
                }
                bytes += output.data.len() as u64;
            }
            Some(v1::output_chunk::Kind::End(job)) => return Ok((bytes, first, job)),
            None => {}
        }
    }
    bail!("the stream of job {job_id} ended without its last message")
}

/// Followers of one job, each on its own mTLS connection.
pub struct Followers {
    tasks: Vec<tokio::task::JoinHandle<Result<u64>>>,
}

impl Followers {
    /// Starts `n` followers of job `id` from `offset` and returns once each
    /// has received its first message (within 60 s).
    pub async fn start(stack: &Stack, id: &str, n: usize, offset: u64) -> Result<Self> {
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let mut client = stack.client(USER).await?;
            let (id, ready) = (id.to_owned(), ready_tx.clone());
            tasks.push(tokio::spawn(async move {
                let mut stream = client
                    .stream_output(v1::StreamOutputRequest {
                        job_id: id,
                        offset,
                        follow: Some(true),
                    })
                    .await?
                    .into_inner();
                let mut bytes = 0_u64;
                let mut told = false;
                while let Some(chunk) = stream.message().await? {
                    if !told {
                        let _ = ready.send(()).await;
                        told = true;
                    }
                    match chunk.kind {
                        Some(v1::output_chunk::Kind::Output(out)) => {
                            bytes += out.data.len() as u64;
                        }
                        Some(v1::output_chunk::Kind::End(_)) => break,
                        None => {}
                    }
                }
                anyhow::Ok(bytes)
            }));
        }
        drop(ready_tx);
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
                .await
                .context("the followers did not all receive output within 60 s")?;
        }
        Ok(Self { tasks })
    }

    /// Stops job `id` through `control` and waits until every follower's
    /// stream has ended; the bytes they received in all.
    pub async fn stop_job(self, control: &mut JobServiceClient<Channel>, id: &str) -> Result<u64> {
        control
            .stop_job(v1::StopJobRequest {
                job_id: id.to_owned(),
                grace_period: None,
            })
            .await
            .context("StopJob")?;
        let mut bytes = 0;
        for task in self.tasks {
            bytes += task.await??;
        }
        Ok(bytes)
    }
}

/// The resident memory of a process in bytes (VmRSS of /proc/<pid>/status).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?
        .parse::<u64>()?;
    Ok(kib * 1024)
}

/// The seconds between two protobuf timestamps.
pub fn seconds_between(
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
) -> Option<f64> {
    let (from, to) = (from?, to?);
    Some((to.seconds - from.seconds) as f64 + f64::from(to.nanos - from.nanos) / 1e9)
}

/// CPU time of a process from /proc/<pid>/stat, in seconds: (its own
/// threads, user + system; its reaped children, user + system). Assumes
/// the kernel's USER_HZ of 100, which Linux fixes on x86 and arm.
pub fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("garbled /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<f64> {
        let value: u64 = fields
            .get(n - 3)
            .ok_or_else(|| anyhow!("/proc/{pid}/stat has no field {n}"))?
            .parse()?;
        Ok(value as f64 / 100.0)
    };
    Ok((field(14)? + field(15)?, field(16)? + field(17)?))
}

/// The pid of the supervisor's spawner of inits: its child named
/// `jobworker-spawn` (found by scanning /proc: this kernel may lack
/// `/proc/PID/task/TID/children`).
fn spawner_pid(supervisor: u32) -> Result<u32> {
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": the comm may hold spaces.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(supervisor) && head.ends_with("(jobworker-spawn") {
            return Ok(pid);
        }
    }
    bail!("the supervisor (pid {supervisor}) has no child named jobworker-spawn")
}

/// CPU used by the supervisor (own threads; its spawner, which clones each
/// job's init; its reaped children: the jobs' inits and, through them,
/// their commands) and the gateway between two readings.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuReading {
    /// The supervisor's own threads.
    pub supervisor: f64,
    /// The supervisor's spawner of inits (its clone3 of each).
    pub spawner: f64,
    /// The supervisor's reaped children.
    pub children: f64,
    /// The gateway.
    pub gateway: f64,
    /// This bench process (the clients).
    pub bench: f64,
}

impl CpuReading {
    /// The CPU time used so far by the processes of `stack` and the bench.
    pub fn of(stack: &Stack) -> Result<Self> {
        let (supervisor, children) = cpu_seconds(stack.supervisor.pid())?;
        let (spawner, _) = cpu_seconds(spawner_pid(stack.supervisor.pid())?)?;
        let (gateway, _) = cpu_seconds(stack.gateway.pid())?;
        let (bench, _) = cpu_seconds(std::process::id())?;
        Ok(Self {
            supervisor,
            spawner,
            children,
            gateway,
            bench,
        })
    }

    /// The CPU used between `earlier` and this reading.
    pub fn since(&self, earlier: &CpuReading) -> CpuReading {
        CpuReading {
            supervisor: self.supervisor - earlier.supervisor,
            spawner: self.spawner - earlier.spawner,
            children: self.children - earlier.children,
            gateway: self.gateway - earlier.gateway,
            bench: self.bench - earlier.bench,
        }
    }

    /// For a note: each part divided by `per` (e.g. jobs), in ms.
    pub fn describe_per(&self, per: f64, what: &str) -> String {
        format!(
            "CPU per {what}: supervisor {:.2} ms, its spawner (clone3 of each init) {:.2} ms, its reaped children (inits + commands) {:.2} ms, gateway {:.2} ms, bench clients {:.2} ms",
            self.supervisor * 1e3 / per,
            self.spawner * 1e3 / per,
            self.children * 1e3 / per,
            self.gateway * 1e3 / per,
            self.bench * 1e3 / per,
        )
    }
}
