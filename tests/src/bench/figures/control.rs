//! Figure 2, control-plane latency: a `GetJob` round trip through the stack
//! (client -> mTLS -> gateway -> ipc -> supervisor and back) against a bare
//! gRPC round trip on the same mTLS connection: the gateway's health `Check`,
//! which the gateway answers itself without the supervisor. Both run on one
//! channel, interleaved, so they share the connection and its state.
//!
//! Breakdown: `GetJob` straight over one ipc connection to the supervisor.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use jobworker_ipc::{JobId, Request, Response};
use jobworker_proto::v1;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::bench::Options;
use crate::bench::report::{Report, Unit};
use crate::bench::stack::{self, USER};
use crate::bench::stats::Samples;
use crate::fixture::gateway::start_request;

/// Warm-up round trips, not sampled.
const WARMUP: usize = 100;

/// Runs the figure.
pub async fn run(options: &Options, report: &mut Report) -> Result<()> {
    let stack = stack::start(options, "")?;
    let channel = stack.channel(USER).await?;
    let mut jobs = v1::job_service_client::JobServiceClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let id = jobs
        .start_job(start_request("/bin/true", &[]))
        .await
        .context("StartJob")?
        .into_inner()
        .job_id;
    stack::follow(&mut jobs, &id).await?;

    let mut get = Samples::new();
    let mut check = Samples::new();
    for i in 0..WARMUP + options.control_samples {
        let start = Instant::now();
        let job = jobs
            .get_job(v1::GetJobRequest { job_id: id.clone() })
            .await
            .context("GetJob")?
            .into_inner();
        let took = start.elapsed();
        if job.id != id {
            bail!("GetJob answered for job {}", job.id);
        }
        let start = Instant::now();
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .context("health Check")?;
        if i >= WARMUP {
            get.push_duration(took);
            check.push_duration(start.elapsed());
        }
    }

    let mut ipc = Samples::new();
    let job: JobId = id
        .parse()
        .map_err(|e| anyhow::anyhow!("job id {id}: {e:?}"))?;
    let mut connection = stack.supervisor.connect().await?;
    for i in 0..WARMUP + options.control_samples {
        let start = Instant::now();
        match connection.call(Request::GetJob { job }).await? {
            Response::Job(_) => {}
            other => bail!("GetJob over ipc: {other:?}"),
        }
        if i >= WARMUP {
            ipc.push_duration(start.elapsed());
        }
    }
    drop(stack);

    let f = "2 control";
    report.add(
        f,
        "control.check",
        "bare: grpc.health.v1 Check on the same mTLS channel (gateway only)",
        Unit::Seconds,
        check,
        None,
    );
    report.add(
        f,
        "control.get",
        "stack: GetJob round trip (mTLS, gateway, ipc, supervisor)",
        Unit::Seconds,
        get,
        Some("control.check"),
    );
    report.add(
        f,
        "control.ipc",
        "breakdown: GetJob over one ipc connection, straight to the supervisor",
        Unit::Seconds,
        ipc,
        Some("control.check"),
    );
    Ok(())
}
