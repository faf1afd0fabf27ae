//! Fleet mode against a real PostgreSQL (Debian's, private, on a Unix
//! socket): the gateway's agent applies the schema once, registers its host
//! with a generation, renews the lease on the database's clock, registers
//! again with a new generation when fenced or restarted, and rides out the
//! database going away while the host's jobs run on. Jobs go through the
//! fleet's queue to hosts (each a real supervisor and gateway) with free
//! slots, in order, idempotently, visible from every gateway with the same
//! roles and ownership as on one host.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

#[allow(
    dead_code,
    unused_imports,
    reason = "the helpers are shared by several test files"
)]
mod common;

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use common::{Gateway, Pki, Supervisor, get, output, start_job, wait_ended};
use jobworker_certs::Validity;
use jobworker_proto::v1;
use jobworker_proto::v1::job_service_client::JobServiceClient;
use jobworker_tests::fixture::Postgres;
use jobworker_tests::fixture::gateway::start_request;
use tonic::transport::Channel;

/// A `[fleet]` table for host `host` with a lease of `lease_ms`.
fn fleet(pg: &Postgres, host: &str, lease_ms: u64) -> String {
    fleet_in(pg, host, lease_ms, "a")
}

/// A `[fleet]` table for host `host` in zone `zone`: 2 slots, and
/// `StartJob` waits at most 2 s for a start.
fn fleet_in(pg: &Postgres, host: &str, lease_ms: u64, zone: &str) -> String {
    format!(
        "[fleet]\ndatabase_url = {:?}\nhost_id = {host:?}\nslots = 2\nlease_ms = {lease_ms}\n\
         start_wait_ms = 500\nhost_lost_ms = {}\nlabels = {{ zone = {zone:?} }}\n",
        pg.url(),
        lease_ms.max(4000)
    )
}

/// The keys of a peer port on 127.0.0.1 for host `host`, whose peer
/// certificate `pki` issues.
fn peer_port(pki: &Pki, host: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity::new(
        now - time::Duration::days(1),
        now + time::Duration::days(10),
    )
    .unwrap();
    pki.issue_client(host, &[jobworker_identity::PEER_ROLE], validity)
        .unwrap();
    format!(
        "peer_listen = \"127.0.0.1:0\"\npeer_cert = {:?}\npeer_key = {:?}\npeer_ca = {:?}\n",
        pki.path(&format!("{host}.pem")),
        pki.path(&format!("{host}.key")),
        pki.server_ca(),
    )
}

/// A database, certificates and a supervisor: what the hosts of a test
/// share.
struct Bed {
    pg: Postgres,
    pki: Pki,
    supervisor: Supervisor,
}

impl Bed {
    fn new() -> Self {
        Self {
            pg: Postgres::start().unwrap(),
            pki: Pki::new(),
            supervisor: Supervisor::start(),
        }
    }

    /// A gateway in fleet mode as host `host`, with a lease of `lease_ms`.
    fn host(&self, host: &str, lease_ms: u64) -> Gateway {
        Gateway::start(
            &self.pki,
            &self.supervisor.socket,
            &fleet(&self.pg, host, lease_ms),
        )
    }

    /// A whole host: its own supervisor, and a gateway in fleet mode as
    /// host `host` in zone `zone`.
    fn whole_host(&self, host: &str, zone: &str) -> Host {
        self.whole_host_with(host, zone, "")
    }

    /// A whole host whose supervisor has `supervisor_extra` in its
    /// configuration.
    fn whole_host_with(&self, host: &str, zone: &str, supervisor_extra: &str) -> Host {
        let supervisor = Supervisor::start_with(supervisor_extra);
        let gateway = Gateway::start(
            &self.pki,
            &supervisor.socket,
            &(fleet_in(&self.pg, host, 3000, zone) + &peer_port(&self.pki, host)),
        );
        Host {
            gateway,
            supervisor,
        }
    }
}

impl Bed {
    /// Whole hosts of `(host, zone)`, each registered (generation 1), and a
    /// connection of the test's own to the database.
    async fn fleet(&self, hosts: &[(&str, &str)]) -> (Vec<Host>, tokio_postgres::Client) {
        let started = hosts
            .iter()
            .map(|(host, zone)| self.whole_host(host, zone))
            .collect();
        let db = connect(&self.pg).await;
        for (host, _) in hosts {
            registered(&db, host, 1).await;
        }
        (started, db)
    }
}

/// Stops job `id` for `client` (the server's grace period).
async fn stop(client: &mut JobServiceClient<Channel>, id: &str) -> Result<v1::Job, tonic::Status> {
    client
        .stop_job(v1::StopJobRequest {
            job_id: id.to_owned(),
            grace_period: None,
        })
        .await
        .map(|response| response.into_inner().job.unwrap())
}

/// A host of the fleet: a supervisor and its gateway.
struct Host {
    gateway: Gateway,
    supervisor: Supervisor,
}

/// A connection of the test's own to the database.
async fn connect(pg: &Postgres) -> tokio_postgres::Client {
    jobworker_fleet::Database::new(&pg.url(), None)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A host's row as the database holds it.
#[derive(Debug, PartialEq)]
struct HostRow {
    generation: i64,
    lease_held: bool,
    lease_until: SystemTime,
    slots: i32,
    labels: Vec<String>,
    version: String,
}

async fn host(db: &tokio_postgres::Client, id: &str) -> Option<HostRow> {
    let row = db
        .query_opt(
            "SELECT generation, lease_until > now(), lease_until, slots, labels, version
             FROM jobworker_hosts WHERE id = $1",
            &[&id],
        )
        .await;
    // Before the first agent migrated, there is no table yet.
    let row = match row {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
        other => other.unwrap(),
    }?;
    Some(HostRow {
        generation: row.get(0),
        lease_held: row.get(1),
        lease_until: row.get(2),
        slots: row.get(3),
        labels: row.get(4),
        version: row.get(5),
    })
}

/// Polls `probe` until it gives a value (at most 20 s).
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until host `id` holds its lease with generation `generation`.
async fn registered(db: &tokio_postgres::Client, id: &str, generation: i64) -> HostRow {
    eventually(
        &format!("{id} registered with generation {generation}"),
        || async {
            host(db, id)
                .await
                .filter(|h| h.generation == generation && h.lease_held)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_registers_renews_its_lease_and_registers_again_when_fenced() {
    let bed = Bed::new();
    let gateway = bed.host("h1", 3000);
    let db = connect(&bed.pg).await;

    let first = registered(&db, "h1", 1).await;
    assert_eq!(first.slots, 2);
    assert_eq!(first.labels, ["zone=a"]);
    assert_eq!(first.version, env!("CARGO_PKG_VERSION"));
    // Renewed every third of the lease, on the database's clock.
    eventually("the lease renewed", || async {
        host(&db, "h1")
            .await
            .filter(|h| h.lease_until > first.lease_until && h.generation == 1)
    })
    .await;

    // Another registration took over: the agent's renewal changes nothing;
    // it says two hosts may share a host_id, waits a whole lease, and
    // registers again with the next generation.
    db.execute(
        "UPDATE jobworker_hosts SET generation = 7 WHERE id = 'h1'",
        &[],
    )
    .await
    .unwrap();
    registered(&db, "h1", 8).await;
    gateway.wait_log("two hosts share a host_id?", 1);

    // A lease that ran out (the host was stopped or cut off) is not
    // renewed: the agent registers again.
    db.execute(
        "UPDATE jobworker_hosts SET lease_until = now() - interval '1 second' WHERE id = 'h1'",
        &[],
    )
    .await
    .unwrap();
    registered(&db, "h1", 9).await;
    gateway.wait_log("the lease ran out; registering again", 1);

    let versions: Vec<i32> = db
        .query("SELECT version FROM jobworker_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let known: Vec<i32> = jobworker_fleet::schema::MIGRATIONS
        .iter()
        .map(|&(version, _, _)| version)
        .collect();
    assert_eq!(versions, known);
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_starting_together_share_one_schema_and_a_restart_is_a_new_generation() {
    let bed = Bed::new();
    let mut gateways: Vec<Gateway> = ["h1", "h2", "h3"]
        .iter()
        .map(|id| bed.host(id, 3000))
        .collect();
    let db = connect(&bed.pg).await;
    for id in ["h1", "h2", "h3"] {
        registered(&db, id, 1).await;
    }
    let applied: i64 = db
        .query_one("SELECT count(*) FROM jobworker_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        usize::try_from(applied).unwrap(),
        jobworker_fleet::schema::MIGRATIONS.len(),
        "each migration applied once"
    );

    gateways[1].restart().unwrap();
    registered(&db, "h2", 2).await;
    assert_eq!(host(&db, "h1").await.unwrap().generation, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_database_jobs_run_on_starts_are_unavailable_and_all_catches_up() {
    let bed = Bed::new();
    let (hosts, db) = bed.fleet(&[("h1", "a")]).await;
    drop(db);
    let h1 = &hosts[0];
    let mut alice = h1.gateway.client(&bed.pki, "alice").await;
    let job = start_job(&mut alice, "sh", &["-c", "sleep 2; echo outlived"]).await;
    assert_eq!(
        get(&mut alice, &job).await.unwrap().state(),
        v1::JobState::Running
    );

    bed.pg.stop().unwrap();
    h1.gateway.wait_log("the database is unreachable", 1);
    for status in [
        alice
            .start_job(start_request("true", &[]))
            .await
            .unwrap_err(),
        get(&mut alice, &job).await.unwrap_err(),
    ] {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("database is unreachable"),
            "{status:?}"
        );
    }
    // Longer than the job and the lease: both have run out by the time the
    // database is back.
    tokio::time::sleep(Duration::from_millis(3200)).await;

    bed.pg.restart().unwrap();
    let db = connect(&bed.pg).await;
    registered(&db, "h1", 2).await;
    // The job ran to its end untouched, and its row caught up.
    let ended = wait_ended(&mut alice, &job).await;
    assert_eq!(ended.state(), v1::JobState::Finished, "{ended:?}");
    assert_eq!(ended.host, "h1");
    let (bytes, _) = output(&mut alice, &job).await.unwrap();
    assert_eq!(bytes, b"outlived\n");
    let again = start_job(&mut alice, "true", &[]).await;
    assert_eq!(
        wait_ended(&mut alice, &again).await.state(),
        v1::JobState::Finished
    );
}

/// Starts `sh -c script` for `client`, as the API answers.
async fn start_sh(client: &mut JobServiceClient<Channel>, script: &str) -> v1::StartJobResponse {
    client
        .start_job(start_request("sh", &["-c", script]))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_wait_for_a_free_slot_in_order_and_a_stopped_queued_job_never_runs() {
    let bed = Bed::new();
    let (hosts, _db) = bed.fleet(&[("h1", "a"), ("h2", "a")]).await;
    let mut alice = hosts[0].gateway.client(&bed.pki, "alice").await;

    // Two hosts of two slots: four jobs run (ending half a second apart),
    // the next three wait in the queue.
    let mut running = Vec::new();
    for i in 0..4 {
        let started = start_sh(&mut alice, &format!("sleep {}", 2.0 + f64::from(i) * 0.5)).await;
        let job = started.job.unwrap();
        assert_eq!(job.state(), v1::JobState::Running, "{job:?}");
        running.push(job);
    }
    let mut on = running
        .iter()
        .map(|job| job.host.as_str())
        .collect::<Vec<_>>();
    on.sort_unstable();
    assert_eq!(on, ["h1", "h1", "h2", "h2"], "each host fills its slots");
    let mut queued = Vec::new();
    for _ in 0..3 {
        let job = start_sh(&mut alice, "echo ran").await.job.unwrap();
        assert_eq!(job.state(), v1::JobState::Queued, "{job:?}");
        assert_eq!(job.host, "");
        queued.push(job.id);
    }
    let listed = alice
        .list_jobs(v1::ListJobsRequest {
            state: Some(v1::JobState::Queued.into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 3, "{listed:?}");

    // Stopping a queued job takes it off the queue: it never runs.
    let stopped = stop(&mut alice, &queued[1]).await.unwrap();
    assert_eq!(stopped.state(), v1::JobState::Stopped);
    assert_eq!(stopped.stop_reason(), v1::StopReason::Requested);

    // The others start as slots come free, oldest first, and all end.
    for job in running
        .iter()
        .map(|job| job.id.clone())
        .chain([queued[0].clone(), queued[2].clone()])
    {
        let ended = wait_ended(&mut alice, &job).await;
        assert_eq!(ended.state(), v1::JobState::Finished, "{ended:?}");
    }
    let first = get(&mut alice, &queued[0]).await.unwrap();
    let third = get(&mut alice, &queued[2]).await.unwrap();
    let started = |job: &v1::Job| {
        let at = job.started_at.unwrap();
        (at.seconds, at.nanos)
    };
    assert!(started(&first) < started(&third), "{first:?} {third:?}");
    // Its output is read through the gateway of the host it ran on.
    let host = if third.host == "h1" {
        &hosts[0]
    } else {
        &hosts[1]
    };
    let mut there = host.gateway.client(&bed.pki, "alice").await;
    let (bytes, _) = output(&mut there, &queued[2]).await.unwrap();
    assert_eq!(bytes, b"ran\n");
    let never = get(&mut alice, &queued[1]).await.unwrap();
    assert_eq!(never.state(), v1::JobState::Stopped);
    assert_eq!(
        (never.host.as_str(), never.pid, never.started_at),
        ("", None, None)
    );
}

/// A start of `sh -c "echo ran"` asking for `pids` tasks.
fn start_with_pids(pids: u32) -> v1::StartJobRequest {
    v1::StartJobRequest {
        limits: Some(v1::Limits {
            pids: Some(pids),
            ..Default::default()
        }),
        ..start_request("sh", &["-c", "echo ran"])
    }
}

/// The hosts that refused job `id`, as the database holds them.
async fn refused_by(db: &tokio_postgres::Client, id: &str) -> Vec<String> {
    db.query_one(
        "SELECT refused_by FROM jobworker_jobs WHERE id::text = $1",
        &[&id],
    )
    .await
    .unwrap()
    .get(0)
}

/// Drains host `id`, or undrains it.
async fn drain(db: &tokio_postgres::Client, id: &str, draining: bool) {
    let changed = jobworker_fleet::hosts::set_draining(db, id, draining).await;
    assert!(changed.unwrap(), "no host {id}");
}

/// Drains h2 and starts a job of `pids` tasks for `client`, which h1 claims
/// and refuses; returns its id once the database shows the refusal.
async fn refused_by_h1(
    client: &mut JobServiceClient<Channel>,
    db: &tokio_postgres::Client,
    pids: u32,
) -> String {
    drain(db, "h2", true).await;
    let started = client.start_job(start_with_pids(pids)).await.unwrap();
    let job = started.into_inner().job.unwrap().id;
    eventually("h1 refused the job", || async {
        (refused_by(db, &job).await == ["h1"]).then_some(())
    })
    .await;
    job
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_a_host_refuses_runs_on_another_and_fails_once_every_host_has() {
    let bed = Bed::new();
    // h1 allows a job at most 10 tasks, h2 at most 100.
    let h1 = bed.whole_host_with("h1", "a", "[max_limits]\npids = 10\n");
    let h2 = bed.whole_host_with("h2", "a", "[max_limits]\npids = 100\n");
    let db = connect(&bed.pg).await;
    registered(&db, "h1", 1).await;
    registered(&db, "h2", 1).await;
    let mut alice = h1.gateway.client(&bed.pki, "alice").await;

    // With h2 drained, h1 claims a job of 50 tasks and refuses it: the job
    // is not failed but queued again, for h2, and h1 never claims it again.
    let job = refused_by_h1(&mut alice, &db, 50).await;
    h1.gateway.wait_log("back in the queue for another host", 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let queued = get(&mut alice, &job).await.unwrap();
    assert_eq!(queued.state(), v1::JobState::Queued, "{queued:?}");
    assert_eq!(refused_by(&db, &job).await, ["h1"], "claimed once only");

    // Undrained, h2 runs it.
    drain(&db, "h2", false).await;
    let ended = wait_ended(&mut alice, &job).await;
    assert_eq!(ended.state(), v1::JobState::Finished, "{ended:?}");
    assert_eq!(ended.host, "h2");
    let mut there = h2.gateway.client(&bed.pki, "alice").await;
    let (bytes, _) = output(&mut there, &job).await.unwrap();
    assert_eq!(bytes, b"ran\n");

    // A job of 500 tasks, over both maximums: h1 refuses it (h2 drained),
    // then h2 does, and with no live host left to try it fails, saying so.
    let job = refused_by_h1(&mut alice, &db, 500).await;
    drain(&db, "h2", false).await;
    let failed = wait_ended(&mut alice, &job).await;
    assert_eq!(failed.state(), v1::JobState::Failed, "{failed:?}");
    let failure = &failed.failure;
    assert!(
        failure.starts_with("no host could start it; the last, h2: ")
            && failure.contains("limits.pids is above the maximum"),
        "{failure}"
    );
    assert_eq!(refused_by(&db, &job).await, ["h1", "h2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn any_gateway_answers_for_any_job_with_the_roles_of_one_host() {
    let bed = Bed::new();
    let (hosts, db) = bed.fleet(&[("h1", "a"), ("h2", "b")]).await;
    let mut alice1 = hosts[0].gateway.client(&bed.pki, "alice").await;
    let mut alice2 = hosts[1].gateway.client(&bed.pki, "alice").await;

    // The same request id through both gateways at once: one job.
    let request = v1::StartJobRequest {
        request_id: Some("r-1".into()),
        ..start_request("sh", &["-c", "sleep 0.5; echo ticking; exec sleep 30"])
    };
    let (first, second) = tokio::join!(
        alice1.start_job(request.clone()),
        alice2.start_job(request.clone())
    );
    let (first, second) = (first.unwrap().into_inner(), second.unwrap().into_inner());
    assert_eq!(first.job_id, second.job_id);
    let rows: i64 = db
        .query_one(
            "SELECT count(*) FROM jobworker_jobs WHERE request_id = 'r-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    let sleeper = first.job_id;

    // A placement runs the job on a host that carries its labels, whatever
    // gateway queued it; its output is read where it runs.
    let placed = alice1
        .start_job(v1::StartJobRequest {
            placement: [("zone".into(), "b".into())].into(),
            ..start_request("sh", &["-c", "echo placed"])
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(placed.job.unwrap().host, "h2");
    // Through h1's gateway, which forwards the stream to h2's.
    let (bytes, end) = output(&mut alice1, &placed.job_id).await.unwrap();
    assert_eq!(bytes, b"placed\n");
    assert_eq!(
        (end.id.as_str(), end.host.as_str()),
        (placed.job_id.as_str(), "h2")
    );
    assert_eq!(end.state(), v1::JobState::Finished);
    let seen = wait_ended(&mut alice1, &placed.job_id).await;
    assert_eq!(
        (seen.state(), seen.host.as_str()),
        (v1::JobState::Finished, "h2")
    );
    let status = alice1
        .start_job(v1::StartJobRequest {
            placement: [("zone".into(), "c".into())].into(),
            ..start_request("true", &[])
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("no host"), "{status:?}");

    // A command its host's supervisor refuses fails the start as on one
    // host.
    let status = alice2
        .start_job(start_request("/no/such/command", &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("/no/such/command"), "{status:?}");

    // Bob sees nothing of Alice's, through either gateway; readers and
    // admins see everything, readers stop nothing.
    for gateway in [&hosts[0].gateway, &hosts[1].gateway] {
        let mut bob = gateway.client(&bed.pki, "bob").await;
        let status = get(&mut bob, &sleeper).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        let status = stop(&mut bob, &sleeper).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        let listed = bob
            .list_jobs(v1::ListJobsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .jobs;
        assert!(listed.is_empty(), "{listed:?}");
        for who in ["rita", "admin"] {
            let mut client = gateway.client(&bed.pki, who).await;
            let listed = client
                .list_jobs(v1::ListJobsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .jobs;
            assert_eq!(listed.len(), 3, "{who}: {listed:?}");
        }
        let mut rita = gateway.client(&bed.pki, "rita").await;
        let status = stop(&mut rita, &sleeper).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }

    // Paging covers the whole fleet.
    let mut admin = hosts[1].gateway.client(&bed.pki, "admin").await;
    let page = admin
        .list_jobs(v1::ListJobsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.jobs.len(), 2);
    let rest = admin
        .list_jobs(v1::ListJobsRequest {
            page_size: 2,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.jobs.len(), 1);
    assert!(rest.next_page_token.is_empty());

    // The peer ports serve the fleet's gateways only, and authorize the
    // caller they name again: bob, named by h1's gateway, finds nothing of
    // Alice's on h2. The public ports take no peer certificate.
    let on = get(&mut alice1, &sleeper).await.unwrap().host;
    let (here, there) = if on == "h1" {
        ("h2", "h1")
    } else {
        ("h1", "h2")
    };
    let peer_address: String = db
        .query_one(
            "SELECT peer_address FROM jobworker_hosts WHERE id = $1",
            &[&there],
        )
        .await
        .unwrap()
        .get(0);
    let peer_channel = |user: &'static str| {
        let (address, pki) = (peer_address.clone(), &bed.pki);
        async move {
            JobServiceClient::new(
                jobworker_tests::fixture::gateway::channel_to(&address, pki, user)
                    .await
                    .unwrap(),
            )
        }
    };
    let stream_request = |id: &str| {
        let mut request = tonic::Request::new(v1::StreamOutputRequest {
            job_id: id.to_owned(),
            offset: 0,
            follow: Some(false),
        });
        request
            .metadata_mut()
            .insert("jobworker-on-behalf-of-user", "bob".parse().unwrap());
        request
            .metadata_mut()
            .insert("jobworker-on-behalf-of-role", "user".parse().unwrap());
        request
    };
    let status = peer_channel("alice")
        .await
        .stream_output(stream_request(&sleeper))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("peer port"), "{status:?}");
    let status = peer_channel(here)
        .await
        .stream_output(stream_request(&sleeper))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = get(&mut hosts[0].gateway.client(&bed.pki, here).await, &sleeper)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // Its status through the other host's gateway is its host's, live:
    // the database recorded it before it wrote anything.
    let recorded = jobworker_fleet::jobs::get(&db, sleeper.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded.info.unwrap().output_bytes, 0);
    let through_here = if here == "h1" {
        alice1.clone()
    } else {
        alice2.clone()
    };
    let live = eventually(
        "the job's live status through the other gateway",
        || async {
            Some(get(&mut through_here.clone(), &sleeper).await.unwrap())
                .filter(|job| job.output_bytes == 8)
        },
    )
    .await;
    assert_eq!(live.host, there, "{live:?}");

    // The owner stops it through the gateway of the other host.
    let mut owner = if here == "h1" { alice1 } else { alice2 };
    let stopped = stop(&mut owner, &sleeper).await.unwrap();
    assert_eq!(
        (stopped.state(), stopped.host.as_str()),
        (v1::JobState::Stopped, on.as_str())
    );
    assert_eq!(stopped.id, sleeper);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_cut_off_is_unreachable_then_lost_and_its_truth_wins_when_it_is_back() {
    let bed = Bed::new();
    let (hosts, db) = bed.fleet(&[("h1", "a"), ("h2", "b")]).await;
    let mut alice = hosts[1].gateway.client(&bed.pki, "alice").await;
    let in_zone_a = |script: &str| v1::StartJobRequest {
        placement: [("zone".into(), "a".into())].into(),
        ..start_request("sh", &["-c", script])
    };
    let job = alice
        .start_job(in_zone_a("sleep 12; echo survived"))
        .await
        .unwrap()
        .into_inner()
        .job_id;

    // h1's gateway stops answering (its supervisor and the job run on).
    hosts[0].gateway.signal(nix::sys::signal::Signal::SIGSTOP);
    let shown = eventually("the job shown host unreachable", || async {
        Some(get(&mut alice.clone(), &job).await.unwrap()).filter(|j| j.host_unreachable)
    })
    .await;
    assert_eq!(
        (shown.state(), shown.host.as_str()),
        (v1::JobState::Running, "h1")
    );
    // A host without its lease claims nothing.
    let waiting = alice
        .start_job(in_zone_a("echo claimed"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(waiting.job.unwrap().state(), v1::JobState::Queued);
    let lost = eventually("the job declared lost", || async {
        Some(get(&mut alice.clone(), &job).await.unwrap())
            .filter(|j| j.state() == v1::JobState::Failed)
    })
    .await;
    assert!(lost.failure.contains("host lost"), "{lost:?}");

    // Back: it registers again, its generation's truth replaces the
    // reaper's guess, and it claims what waited for it.
    hosts[0].gateway.signal(nix::sys::signal::Signal::SIGCONT);
    registered(&db, "h1", 2).await;
    let running = eventually("the host's report that the job still runs", || async {
        Some(get(&mut alice.clone(), &job).await.unwrap())
            .filter(|j| j.state() == v1::JobState::Running)
    })
    .await;
    assert!(
        !running.host_unreachable && running.failure.is_empty(),
        "{running:?}"
    );
    let back = eventually("the host's own report", || async {
        Some(get(&mut alice.clone(), &job).await.unwrap())
            .filter(|j| j.state() == v1::JobState::Finished)
    })
    .await;
    assert!(
        !back.host_unreachable && back.failure.is_empty(),
        "{back:?}"
    );
    let (bytes, _) = output(&mut alice, &job).await.unwrap();
    assert_eq!(bytes, b"survived\n");
    let claimed = wait_ended(&mut alice, &waiting.job_id).await;
    assert_eq!(
        (claimed.state(), claimed.host.as_str()),
        (v1::JobState::Finished, "h1")
    );
    // A write of the old generation changes nothing.
    let row = jobworker_fleet::jobs::get(&db, job.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut stale = row.info.clone().unwrap();
    stale.state = jobworker_ipc::JobState::Failed;
    let fence = jobworker_fleet::jobs::Fence {
        host: "h1".into(),
        generation: 1,
    };
    assert!(
        !jobworker_fleet::jobs::report(&db, &fence, row.id, &stale)
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_ends_while_its_gateway_is_down_is_recorded_when_it_is_back() {
    let bed = Bed::new();
    let (mut hosts, _db) = bed.fleet(&[("h1", "a")]).await;
    let h1 = &mut hosts[0];
    let mut alice = h1.gateway.client(&bed.pki, "alice").await;
    let job = start_job(&mut alice, "sh", &["-c", "sleep 1; echo late"]).await;
    h1.gateway.restart().unwrap();
    // And its supervisor is killed and started again while another runs.
    let mut alice = h1.gateway.client(&bed.pki, "alice").await;
    let other = start_job(&mut alice, "sh", &["-c", "sleep 1; echo later"]).await;
    h1.supervisor.kill9();
    h1.supervisor.spawn();
    for (job, text) in [(&job, "late\n"), (&other, "later\n")] {
        let ended = wait_ended(&mut alice, job).await;
        assert_eq!(ended.state(), v1::JobState::Finished, "{ended:?}");
        let (bytes, _) = output(&mut alice, job).await.unwrap();
        assert_eq!(bytes, text.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_is_reached_over_tls_checked_against_database_ca() {
    let pki = Pki::new();
    let pg = Postgres::start_tls(&pki.path("server.pem"), &pki.path("server.key")).unwrap();
    let supervisor = Supervisor::start();
    let table = |host: &str, ca: &std::path::Path| {
        format!(
            "[fleet]\ndatabase_url = {:?}\ndatabase_ca = {ca:?}\nhost_id = {host:?}\n\
             lease_ms = 3000\n",
            pg.tls_url().unwrap()
        )
    };
    let _gateway = Gateway::start(&pki, &supervisor.socket, &table("h1", &pki.server_ca()));
    let db = connect(&pg).await;
    registered(&db, "h1", 1).await;
    let over_tcp: Vec<bool> = db
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.client_addr IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        !over_tcp.is_empty() && over_tcp.iter().all(|ssl| *ssl),
        "{over_tcp:?}"
    );

    // A CA that did not sign the server's certificate: no connection.
    let wrong = Gateway::start(
        &pki,
        &supervisor.socket,
        &table("h2", &pki.path("client-ca.pem")),
    );
    wrong.wait_log("the database is unreachable", 1);
    assert!(host(&db, "h2").await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_list_the_hosts_through_the_api() {
    let bed = Bed::new();
    let gateway = bed.host("h1", 3000);
    let db = connect(&bed.pg).await;
    registered(&db, "h1", 1).await;

    let mut admin = gateway.client(&bed.pki, "admin").await;
    let hosts = admin
        .list_hosts(v1::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    let host = &hosts[0];
    assert_eq!(
        (host.id.as_str(), host.generation, host.slots),
        ("h1", 1, 2)
    );
    assert!((1..=3000).contains(&host.lease_left_ms), "{host:?}");
    assert!(!host.draining);
    assert_eq!(host.labels.get("zone").map(String::as_str), Some("a"));
    assert_eq!(host.version, env!("CARGO_PKG_VERSION"));

    for user in ["alice", "rita"] {
        let status = gateway
            .client(&bed.pki, user)
            .await
            .list_hosts(v1::ListHostsRequest {})
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{user}: {status:?}"
        );
        assert!(status.message().contains("only admins"), "{status:?}");
    }

    let single = Gateway::start(&bed.pki, &bed.supervisor.socket, "");
    let status = single
        .client(&bed.pki, "admin")
        .await
        .list_hosts(v1::ListHostsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("no [fleet]"), "{status:?}");

    bed.pg.stop().unwrap();
    let status = admin.list_hosts(v1::ListHostsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

/// A database restart that the lease outlives costs no new generation:
/// the agent renews the one it holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_short_database_outage_keeps_the_generation() {
    let bed = Bed::new();
    let gateway = bed.host("h1", 6000);
    let db = connect(&bed.pg).await;
    registered(&db, "h1", 1).await;
    drop(db);
    bed.pg.stop().unwrap();
    gateway.wait_log("the database is unreachable", 1);
    bed.pg.restart().unwrap();
    let db = connect(&bed.pg).await;
    // Only a renewal after the restart reaches past its time plus a lease.
    let restarted: SystemTime = db.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let renewed_after = restarted + Duration::from_secs(6);
    eventually("the lease renewed after the restart", || async {
        host(&db, "h1")
            .await
            .filter(|h| h.lease_until > renewed_after)
    })
    .await;
    let after = host(&db, "h1").await.unwrap();
    assert_eq!(after.generation, 1, "{after:?}");
    assert!(after.lease_held);
}
