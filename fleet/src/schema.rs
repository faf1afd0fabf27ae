//! The fleet's schema: numbered migrations, each applied once, in order, in
//! one transaction under a transaction-scoped advisory lock (so gateways
//! starting together apply each exactly once). Migrations only expand (new
//! tables, new nullable or defaulted columns); what a release stops using is
//! dropped by a later one, once no binary of the release before reads it.
//! A database whose schema is newer than this binary is used as it is.

use tokio_postgres::Client;

use crate::{DbError, db};

/// The advisory lock key of migrations ("jobworkr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6a6f_6277_6f72_6b72;

/// The migrations, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "hosts", include_str!("migrations/0001_hosts.sql")),
    (2, "jobs", include_str!("migrations/0002_jobs.sql")),
    (
        3,
        "peer_address",
        include_str!("migrations/0003_peer_address.sql"),
    ),
    (4, "reaper", include_str!("migrations/0004_reaper.sql")),
    (
        5,
        "refused_by",
        include_str!("migrations/0005_refused_by.sql"),
    ),
];

/// The newest schema version this binary knows.
pub fn known_version() -> i32 {
    MIGRATIONS.last().map_or(0, |&(version, _, _)| version)
}

/// Applies the migrations the database lacks; returns the database's
/// schema version afterwards (newer than [`known_version`] if a newer
/// binary migrated it).
pub async fn migrate(client: &mut Client) -> Result<i32, DbError> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting the migration transaction"))?;
    // Another gateway migrating holds the lock for moments; a lock held
    // longer is a stuck session, which this one must not wait for forever.
    tx.batch_execute("SET LOCAL lock_timeout = '10s'")
        .await
        .map_err(db("bounding the wait for the migration lock"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db("taking the migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS jobworker_schema (
             version INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(db("creating jobworker_schema"))?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM jobworker_schema",
            &[],
        )
        .await
        .map_err(db("reading the schema version"))?
        .get(0);
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql)
            .await
            .map_err(db("applying a migration"))?;
        tx.execute(
            "INSERT INTO jobworker_schema (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(db("recording a migration"))?;
        tracing::info!(version, name, "applied a schema migration");
    }
    tx.commit().await.map_err(db("committing the migrations"))?;
    Ok(current.max(known_version()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (i, &(version, name, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(version).unwrap(), i + 1, "{name}");
            assert!(!sql.trim().is_empty(), "{name}");
        }
        assert_eq!(known_version(), i32::try_from(MIGRATIONS.len()).unwrap());
    }
}
