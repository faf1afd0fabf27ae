//! Figure 7, the fleet: StartJob -> first output byte, and jobs per second
//! with 8 concurrent clients, through a fleet of three hosts (each its own
//! supervisor and gateway in fleet mode, 8 slots, on one private
//! PostgreSQL of Debian's, fsync on), against one host with no database in
//! the same run. The fleet's clients call h1's gateway for the start
//! figure (a job that lands on another host is streamed through h1's
//! forwarding) and spread over the three gateways for the rate. All six
//! daemons and PostgreSQL share this machine's CPUs, which a real fleet's
//! hosts would not.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use jobworker_proto::v1;
use jobworker_proto::v1::job_service_client::JobServiceClient;
use tonic::transport::Channel;

use crate::bench::Options;
use crate::bench::report::{Report, Unit};
use crate::bench::stack::{self, USER};
use crate::bench::stats::Samples;
use crate::fixture::{Gateway, GatewayOptions, Pki, Postgres, Supervisor, SupervisorOptions};

/// The command of the start figure.
/// Warm-up runs, not sampled.
const WARMUP: usize = 3;
/// Concurrent clients of the rate.
const CLIENTS: usize = 8;
/// The fleet's hosts.
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// StartJob -> first byte, `n` samples after a warm-up, through `client`.
async fn to_first_byte(client: &mut JobServiceClient<Channel>, n: usize) -> Result<Samples> {
    let mut samples = Samples::new();
    for i in 0..WARMUP + n {
        let (_, first) = stack::echo_to_first_byte(client).await?;
        if i >= WARMUP {
            samples.push_duration(first);
        }
    }
    Ok(samples)
}

/// Jobs per one-second window of `clients` looping StartJob(/bin/true) and
/// following each to its end, for `secs`.
async fn rate(clients: Vec<JobServiceClient<Channel>>, secs: u64) -> Result<Samples> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut done = Vec::new();
                while Instant::now() < deadline {
                    let (id, job) = stack::run_true(&mut client).await?;
                    if job.state() != v1::JobState::Finished {
                        bail!("job {id} did not finish: {job:?}");
                    }
                    done.push(Instant::now());
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.extend(task.await??);
    }
    Ok(super::throughput::per_second(start, &done, secs))
}

/// A host of the fleet: its supervisor and its gateway.
struct Host {
    gateway: Gateway,
    _supervisor: Supervisor,
}

/// Runs the figure.
pub async fn run(options: &Options, report: &mut Report) -> Result<()> {
    let n = options.start_samples;
    let secs = options.throughput_secs;
    let f = "7 fleet";

    // One host, no database.
    let single = stack::start(options, "")?;
    let mut client = single.client(USER).await?;
    let single_first = to_first_byte(&mut client, n).await?;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(single.client(USER).await?);
    }
    let single_rate = rate(clients, secs).await?;
    drop(single);

    // Three hosts on one PostgreSQL.
    let pg = Postgres::start()?;
    let peers: Vec<(&str, &[&str])> = HOSTS
        .iter()
        .map(|host| (*host, &[jobworker_identity::PEER_ROLE][..]))
        .collect();
    let pki = Pki::new(&[&[(USER, &["user"][..])][..], &peers].concat())?;
    let mut hosts = Vec::new();
    for host in HOSTS {
        let supervisor = Supervisor::start(&SupervisorOptions {
            extra: "grace_period_ms = 2000\n".into(),
            dir_in: Some(options.files_in.clone()),
            ..SupervisorOptions::default()
        })?;
        let extra = format!(
            "max_output_streams_per_user = 512\nmax_unary_calls_per_user = 256\n\
             [fleet]\ndatabase_url = {:?}\nhost_id = {host:?}\nslots = 8\n\
             peer_listen = \"127.0.0.1:0\"\npeer_cert = {:?}\npeer_key = {:?}\npeer_ca = {:?}\n",
            pg.url(),
            pki.path(&format!("{host}.pem")),
            pki.path(&format!("{host}.key")),
            pki.server_ca(),
        );
        let gateway = Gateway::start(
            &pki,
            &supervisor.socket,
            &GatewayOptions {
                extra,
                ..GatewayOptions::default()
            },
        )?;
        hosts.push(Host {
            gateway,
            _supervisor: supervisor,
        });
    }
    // Every host holds its lease before anything is measured.
    let mut admin = hosts[0].gateway.client(&pki, USER).await?;
    let ready = Instant::now();
    while admin
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .is_err()
        || ready.elapsed() < Duration::from_secs(1)
    {
        if ready.elapsed() > Duration::from_secs(30) {
            bail!("the fleet did not come up within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fleet_first = to_first_byte(&mut admin, n).await?;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(hosts[i % HOSTS.len()].gateway.client(&pki, USER).await?);
    }
    let fleet_rate = rate(clients, secs).await?;
    drop(hosts);
    drop(pg);

    report.add(
        f,
        "fleet.single.start",
        "one host, no database: StartJob -> first output byte",
        Unit::Seconds,
        single_first,
        None,
    );
    report.add(
        f,
        "fleet.start",
        "fleet of 3 hosts (one PostgreSQL): StartJob -> first output byte through h1's gateway (queued, NOTIFY, claimed by any host, started, streamed there or through h1's forwarding)",
        Unit::Seconds,
        fleet_first,
        Some("fleet.single.start"),
    );
    report.add(
        f,
        "fleet.single.tput.c8",
        "one host, no database: 8 clients, StartJob(/bin/true) + follow to end, per 1 s window",
        Unit::JobsPerSec,
        single_rate,
        None,
    );
    report.add(
        f,
        "fleet.tput.c8",
        "fleet of 3 hosts: 8 clients spread over the 3 gateways, StartJob(/bin/true) + follow to end, per 1 s window",
        Unit::JobsPerSec,
        fleet_rate,
        Some("fleet.single.tput.c8"),
    );
    report.note(
        "fleet: the three hosts, their gateways and PostgreSQL share this machine's 2 CPUs with the client, so the fleet's rate here is the cost of its coordination, not the capacity of three machines",
    );
    Ok(())
}
