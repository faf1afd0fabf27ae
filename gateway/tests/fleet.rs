//! Fleet mode against a real PostgreSQL (Debian's, private, on a Unix
//! socket): the gateway's agent applies the schema once, registers its host
//! with a generation, renews the lease on the database's clock, registers
//! again with a new generation when fenced or restarted, and rides out the
//! database going away while the host serves as before.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

#[allow(
    dead_code,
    unused_imports,
    reason = "the helpers are shared by several test files"
)]
mod common;

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use common::{Gateway, Pki, Supervisor, output, start_job};
use jobworker_proto::v1;
use jobworker_tests::fixture::Postgres;

/// A `[fleet]` table for host `host` with a lease of `lease_ms`.
fn fleet(pg: &Postgres, host: &str, lease_ms: u64) -> String {
    format!(
        "[fleet]\ndatabase_url = {:?}\nhost_id = {host:?}\nslots = 2\nlease_ms = {lease_ms}\n\
         labels = {{ zone = \"a\" }}\n",
        pg.url()
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
}

/// A connection of the test's own to the database.
async fn connect(pg: &Postgres) -> tokio_postgres::Client {
    jobworker_fleet::connect(&pg.url().parse().unwrap())
        .await
        .unwrap()
}

/// A host's row as the database holds it.
#[derive(Debug, PartialEq)]
struct Host {
    generation: i64,
    lease_held: bool,
    lease_until: SystemTime,
    slots: i32,
    labels: Vec<String>,
    version: String,
}

async fn host(db: &tokio_postgres::Client, id: &str) -> Option<Host> {
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
    Some(Host {
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
async fn registered(db: &tokio_postgres::Client, id: &str, generation: i64) -> Host {
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
    assert_eq!(versions, [1]);
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
    assert_eq!(applied, 1, "each migration applied once");

    gateways[1].restart().unwrap();
    registered(&db, "h2", 2).await;
    assert_eq!(host(&db, "h1").await.unwrap().generation, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_database_the_host_serves_and_registers_again_when_it_returns() {
    let bed = Bed::new();
    let gateway = bed.host("h1", 3000);
    {
        let db = connect(&bed.pg).await;
        registered(&db, "h1", 1).await;
    }

    bed.pg.stop().unwrap();
    gateway.wait_log("the database is unreachable", 1);
    let mut alice = gateway.client(&bed.pki, "alice").await;
    let job = start_job(&mut alice, "sh", &["-c", "echo still serving"]).await;
    let (bytes, end) = output(&mut alice, &job).await.unwrap();
    assert_eq!(bytes, b"still serving\n");
    assert_eq!(end.state(), v1::JobState::Finished);
    // Longer than the lease: it has run out by the time the database is back.
    tokio::time::sleep(Duration::from_millis(3200)).await;

    bed.pg.restart().unwrap();
    let db = connect(&bed.pg).await;
    registered(&db, "h1", 2).await;
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
