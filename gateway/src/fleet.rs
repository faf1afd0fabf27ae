//! Fleet mode's agent (opt-in: the `[fleet]` table): it keeps this host's
//! row in `jobworker_hosts` (through `jobworker_fleet`). It connects (again and again, with a growing pause,
//! while PostgreSQL is away; the host meanwhile serves as before), applies
//! the migrations, registers the host with a new generation, and renews the
//! lease every third of its length on the database's clock. A renewal that
//! finds the lease run out (the host was cut off or stopped for longer than
//! the lease) or the generation moved on (another registration of the same
//! `host_id`) changes nothing: the agent registers again, with a new
//! generation, so that whatever the old one wrote can be told apart.

use std::time::{Duration, Instant};

use jobworker_fleet::{DbError, FleetConfig, hosts, schema};

/// The first pause after a failed session, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause between attempts to reach PostgreSQL.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

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
    let mut client = jobworker_fleet::connect(&config.database).await?;
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
        let generation = hosts::register(&client, config).await?;
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
            if !hosts::renew(&client, config, generation).await? {
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
