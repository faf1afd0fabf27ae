//! Figure 5, footprint: the supervisor's and the gateway's resident memory
//! (VmRSS of /proc/<pid>/status) idle, with N finished jobs on record, and
//! with M concurrent output streams (M clients, each on its own mTLS
//! connection, following one job that prints a line every 100 ms) and 15 s
//! after those streams ended (what memory comes back); and the
//! disk taken per job record (allocated blocks of `<state>/jobs/`, divided
//! by the number of jobs). Each value is one reading: median = p99.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bench::Options;
use crate::bench::report::{Report, Unit};
use crate::bench::stack::{self, USER};
use crate::bench::stats::Samples;
use crate::fixture::gateway::start_request;

/// (allocated bytes, apparent bytes) of everything under `dir`.
fn disk_usage(dir: &Path) -> Result<(u64, u64)> {
    let mut allocated = 0;
    let mut apparent = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        allocated += meta.blocks() * 512;
        apparent += meta.len();
        if meta.is_dir() {
            let (a, b) = disk_usage(&entry.path())?;
            allocated += a;
            apparent += b;
        }
    }
    Ok((allocated, apparent))
}

fn one(value: u64) -> Samples {
    Samples::from_values(vec![value as f64])
}

/// The supervisor's and the gateway's VmRSS now, as `fp.sup.<when>` and
/// `fp.gw.<when>`, against their idle readings (unless this is the idle one).
fn add_rss(
    report: &mut Report,
    (sup, gw): (u32, u32),
    when: &str,
    (sup_what, gw_what): (String, String),
) -> Result<()> {
    let f = "5 footprint";
    let idle = when != "idle";
    for (daemon, pid, what) in [("sup", sup, sup_what), ("gw", gw, gw_what)] {
        report.add(
            f,
            &format!("fp.{daemon}.{when}"),
            what,
            Unit::Bytes,
            one(stack::rss_bytes(pid)?),
            idle.then(|| format!("fp.{daemon}.idle")).as_deref(),
        );
    }
    Ok(())
}

/// Runs the figure.
pub async fn run(options: &Options, report: &mut Report) -> Result<()> {
    let f = "5 footprint";
    let stack = stack::start(options, "")?;
    let (sup, gw) = (stack.supervisor.pid(), stack.gateway.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    add_rss(
        report,
        (sup, gw),
        "idle",
        (
            "supervisor VmRSS, idle".into(),
            "gateway VmRSS, idle".into(),
        ),
    )?;

    // N finished jobs, from 16 clients.
    let jobs = options.footprint_jobs;
    let clients = 16.min(jobs.max(1));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = stack.client(USER).await?;
        let count = jobs / clients + usize::from(c < jobs % clients);
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                stack::run_true(&mut client).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let jobs_dir = stack.supervisor.state_dir.join("jobs");
    let records = std::fs::read_dir(&jobs_dir)?.count();
    if records < jobs {
        bail!(
            "{records} job records in {}, expected {jobs}",
            jobs_dir.display()
        );
    }
    add_rss(
        report,
        (sup, gw),
        "jobs",
        (
            format!("supervisor VmRSS, {jobs} finished jobs on record"),
            format!("gateway VmRSS, after {jobs} jobs"),
        ),
    )?;
    let (allocated, apparent) = disk_usage(&jobs_dir)?;
    let n = records as u64;
    report.add(
        f,
        "fp.disk.job",
        "disk per finished job record (allocated blocks; /bin/true, no output)",
        Unit::Bytes,
        one(allocated / n),
        None,
    );
    report.add(
        f,
        "fp.disk.job.apparent",
        "disk per finished job record (apparent size)",
        Unit::Bytes,
        one(apparent / n),
        None,
    );

    // M concurrent streams on one job.
    let streams = options.footprint_streams;
    let mut control = stack.client(USER).await?;
    let id = control
        .start_job(start_request(
            "/bin/sh",
            &["-c", "while :; do echo tick; sleep 0.1; done"],
        ))
        .await
        .context("StartJob")?
        .into_inner()
        .job_id;
    let followers = stack::Followers::start(&stack, &id, streams, 0).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    add_rss(
        report,
        (sup, gw),
        "streams",
        (
            format!("supervisor VmRSS, {streams} concurrent streams"),
            format!("gateway VmRSS, {streams} concurrent streams ({streams} mTLS connections)"),
        ),
    )?;
    followers.stop_job(&mut control, &id).await?;
    // Memory that comes back: what the daemons hold once the load is gone.
    tokio::time::sleep(AFTER_LOAD).await;
    add_rss(
        report,
        (sup, gw),
        "after",
        (
            format!(
                "supervisor VmRSS, {}s after the {streams} streams ended",
                AFTER_LOAD.as_secs()
            ),
            format!(
                "gateway VmRSS, {}s after the {streams} streams ended",
                AFTER_LOAD.as_secs()
            ),
        ),
    )?;
    drop(stack);
    Ok(())
}

/// How long after the streams end the last reading is taken.
const AFTER_LOAD: Duration = Duration::from_secs(15);
