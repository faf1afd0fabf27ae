//! The host's agent in fleet mode: it keeps this host's row in
//! `jobworker_hosts`. It connects (again and again, with a growing pause,
//! while PostgreSQL is away; the host meanwhile serves as before), applies
//! the migrations, registers the host with a new generation, and renews the
//! lease every third of its length on the database's clock. A renewal that
//! finds the lease run out (the host was cut off or stopped for longer than
//! the lease) or the generation moved on (another registration of the same
//! `host_id`) changes nothing: the agent registers again, with a new
//! generation, so that whatever the old one wrote can be told apart.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::{DbError, FleetConfig, db, schema};

/// The first pause after a failed session, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause between attempts to reach PostgreSQL.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What this binary records as its version in its host row.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the agent for the life of the gateway.
pub async fn run(config: FleetConfig) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let began = Instant::now();
        let Err(e) = session(&config).await;
        if began.elapsed() > config.lease {
            backoff = MIN_BACKOFF;
        }
        tracing::warn!(
            host_id = %config.host_id,
            error = %e,
            retry_in = ?backoff,
            "fleet: the database is unreachable or refused a write; running jobs are not \
             affected, and the host registers again once it answers"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: migrate, register, renew until something fails.
async fn session(config: &FleetConfig) -> Result<std::convert::Infallible, DbError> {
    let (mut client, connection) = config
        .database
        .connect(NoTls)
        .await
        .map_err(db("connecting to PostgreSQL"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "fleet: the database connection ended");
        }
    });
    let schema = schema::migrate(&mut client).await?;
    if schema > schema::known_version() {
        tracing::info!(
            schema,
            known = schema::known_version(),
            "fleet: the schema is newer than this binary (a newer release migrated it); \
             using it as it is"
        );
    }
    loop {
        let generation = register(&client, config).await?;
        tracing::info!(
            host_id = %config.host_id,
            generation,
            slots = config.slots,
            labels = %config.labels,
            lease = ?config.lease,
            "fleet: registered this host"
        );
        loop {
            tokio::time::sleep(config.lease / 3).await;
            if !renew(&client, config, generation).await? {
                tracing::warn!(
                    host_id = %config.host_id,
                    generation,
                    "fleet: the lease ran out or another registration took over; \
                     registering again with a new generation"
                );
                break;
            }
        }
    }
}

/// Inserts or takes over this host's row with the next generation and a
/// fresh lease (keeping an operator's `draining`); returns the generation.
pub async fn register(client: &Client, config: &FleetConfig) -> Result<i64, DbError> {
    let labels: Vec<String> = config
        .labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let slots = i32::try_from(config.slots).unwrap_or(i32::MAX);
    let row = client
        .query_one(
            "INSERT INTO jobworker_hosts (id, labels, slots, generation, lease_until, version)
             VALUES ($1, $2, $3, 1, now() + make_interval(secs => $4), $5)
             ON CONFLICT (id) DO UPDATE SET
                 labels = EXCLUDED.labels,
                 slots = EXCLUDED.slots,
                 version = EXCLUDED.version,
                 lease_until = EXCLUDED.lease_until,
                 generation = jobworker_hosts.generation + 1,
                 registered_at = now()
             RETURNING generation",
            &[
                &config.host_id,
                &labels,
                &slots,
                &config.lease.as_secs_f64(),
                &VERSION,
            ],
        )
        .await
        .map_err(db("registering the host"))?;
    Ok(row.get(0))
}

/// Extends the lease of `generation` if it still holds; `false` if the
/// lease ran out or the generation is no longer the host's.
pub async fn renew(
    client: &Client,
    config: &FleetConfig,
    generation: i64,
) -> Result<bool, DbError> {
    let renewed = client
        .execute(
            "UPDATE jobworker_hosts SET lease_until = now() + make_interval(secs => $3)
             WHERE id = $1 AND generation = $2 AND lease_until > now()",
            &[&config.host_id, &generation, &config.lease.as_secs_f64()],
        )
        .await
        .map_err(db("renewing the lease"))?;
    Ok(renewed == 1)
}
