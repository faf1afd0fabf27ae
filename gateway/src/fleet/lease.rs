//! This host's row in `jobworker_hosts` and its lease. The session
//! connects (again and again, with a growing pause, while PostgreSQL is
//! away; the host meanwhile serves as before), applies the migrations,
//! `LISTEN`s to the jobs' channel (its notices go to every waiter through
//! [`Fleet`]), registers the host with a new generation (published as the
//! [`Fence`] the agent claims and reports with), and renews the lease every
//! third of its length on the database's clock. A renewal that
//! finds the lease run out (the host was cut off or stopped for longer than
//! the lease) or the generation moved on (another registration of the same
//! `host_id`) changes nothing: the agent registers again, with a new
//! generation, so that whatever the old one wrote can be told apart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobworker_fleet::jobs::{self, Fence};
use jobworker_fleet::{DbError, FleetConfig, hosts, schema};

use super::{Fleet, Notice};

/// The first pause after a failed session, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause between attempts to reach PostgreSQL.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The least time connecting and migrating may take (a short lease does
/// not make them faster).
const DB_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps the lease for the life of the gateway.
pub async fn run(fleet: Arc<Fleet>) {
    let config = &fleet.config;
    let mut backoff = MIN_BACKOFF;
    // The generation this host holds, kept across lost connections: a
    // lease that still holds is renewed, not taken again.
    let mut held = None;
    loop {
        let began = Instant::now();
        let Err(e) = session(&fleet, &mut held).await;
        if began.elapsed() > config.lease {
            backoff = MIN_BACKOFF;
        }
        tracing::warn!(
            host_id = %config.host_id,
            error = %e,
            retry_in = ?backoff,
            "fleet: the database is unreachable or refused a write; running jobs are not \
             affected, and the host renews its lease (or registers again) once it answers"
        );
        tokio::time::sleep(backoff).await;
        // Never so long that a restart the lease outlives costs it.
        backoff = (backoff * 2).min(MAX_BACKOFF).min(config.lease / 4);
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The database did not answer in time.
    #[error("{0} took longer than {1:?}")]
    TimedOut(&'static str, Duration),
}

/// `step` with a bound of `limit`.
async fn bounded<T>(
    what: &'static str,
    limit: Duration,
    step: impl Future<Output = Result<T, DbError>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(limit, step).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(SessionError::TimedOut(what, limit)),
    }
}

/// One connection's life: migrate, listen, renew the generation still held
/// or register, and renew every third of the lease until something fails.
async fn session(
    fleet: &Fleet,
    held: &mut Option<i64>,
) -> Result<std::convert::Infallible, SessionError> {
    let config: &FleetConfig = &fleet.config;
    // Each step must end well within the lease (it is renewed every third).
    let limit = config.lease / 3;
    let setup = DB_SETUP_TIMEOUT.max(limit);
    let (mut client, mut notifications) = bounded(
        "connecting to PostgreSQL",
        setup,
        config.database.connect_listening(),
    )
    .await?;
    let schema = bounded("migrating the schema", setup, schema::migrate(&mut client)).await?;
    bounded(
        "listening to the jobs' channel",
        limit,
        jobs::listen(&client),
    )
    .await?;
    let notices = fleet.notices.clone();
    tokio::spawn(async move {
        while let Some((_, payload)) = notifications.recv().await {
            if let Some(notice) = Notice::of(&payload) {
                // No receiver: nobody waits now.
                let _ = notices.send(notice);
            }
        }
    });
    if schema > schema::known_version() {
        tracing::info!(
            schema,
            known = schema::known_version(),
            "fleet: the schema is newer than this binary (a newer release migrated it); \
             using it as it is"
        );
    }
    loop {
        let generation = match *held {
            Some(generation)
                if bounded(
                    "renewing the lease",
                    limit,
                    hosts::renew(&client, config, generation),
                )
                .await? =>
            {
                generation
            }
            _ => {
                let generation =
                    bounded("registering", limit, hosts::register(&client, config)).await?;
                tracing::info!(
                    host_id = %config.host_id,
                    generation,
                    slots = config.slots,
                    labels = %config.labels,
                    lease = ?config.lease,
                    "fleet: registered this host"
                );
                generation
            }
        };
        *held = Some(generation);
        fleet.fence.send_replace(Some(Fence {
            host: config.host_id.clone(),
            generation,
        }));
        loop {
            tokio::time::sleep(limit).await;
            if bounded(
                "renewing the lease",
                limit,
                hosts::renew(&client, config, generation),
            )
            .await?
            {
                continue;
            }
            *held = None;
            fleet.fence.send_replace(None);
            let current = bounded(
                "reading the host's row",
                limit,
                hosts::get(&client, &config.host_id),
            )
            .await?;
            match current {
                Some(row) if row.generation > generation && row.lease_held() => {
                    tracing::error!(
                        host_id = %config.host_id,
                        generation,
                        theirs = row.generation,
                        "fleet: another gateway registered as this host_id while this one \
                         held it: two hosts share a host_id? Waiting a whole lease before \
                         registering again"
                    );
                    tokio::time::sleep(config.lease).await;
                }
                _ => tracing::warn!(
                    host_id = %config.host_id,
                    generation,
                    "fleet: the lease ran out; registering again with a new generation"
                ),
            }
            break;
        }
    }
}
