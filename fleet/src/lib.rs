//! Fleet mode's side in PostgreSQL, shared by the gateway's agent (which
//! keeps its host's row) and the operators' tool (which lists, drains and
//! undrains hosts). The root supervisor never talks to the database.
//!
//! - [`config`]: the `[fleet]` table of gateway.toml, resolved and checked.
//! - [`database`]: reaching PostgreSQL (its TLS over TCP), one connection
//!   or a pool.
//! - [`schema`]: the numbered, expand-only migrations, applied under an
//!   advisory lock, so that binaries N and N+1 share a schema.
//! - [`hosts`]: a host's row: registration with the next fencing
//!   generation, the lease on the database's clock, drains, the listing.
//! - [`jobs`]: the fleet's jobs: the queue (inserted by any gateway,
//!   idempotent per owner and request id), claims by hosts with free slots
//!   (`FOR UPDATE SKIP LOCKED`), the hosts' fenced reports, and the
//!   listing; each change announced with `NOTIFY` on [`jobs::CHANNEL`].
#![forbid(unsafe_code)]

pub mod config;
pub mod database;
pub mod hosts;
pub mod jobs;
pub mod schema;

pub use config::{FleetConfig, FleetFileConfig, PeerFiles};
pub use database::Database;

/// A pool of connections to the fleet's database, for a gateway's calls.
pub type Pool = deadpool_postgres::Pool;

/// How long a call waits for a pooled connection, or to make one.
pub(crate) const POOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A database operation that failed, named.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// PostgreSQL refused it, or could not be reached.
    #[error("{op}: {}", detail(.source))]
    Postgres {
        /// What was being done.
        op: &'static str,
        /// PostgreSQL's answer (or the connection's failure).
        #[source]
        source: tokio_postgres::Error,
    },
    /// A row holds what this version cannot read (a newer release wrote
    /// it, or someone edited it by hand).
    #[error("{op}: a row of the fleet's database holds what this version cannot read: {reason}")]
    Row {
        /// What was being done.
        op: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// PostgreSQL's own words for an error it answered with (tokio-postgres's
/// `Display` says only "db error"), else the connection's failure.
fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

impl DbError {
    /// Whether the database could not be reached, or went away (a lost
    /// connection, a server shutting down or starting, an I/O error),
    /// rather than refusing what was asked.
    pub fn unreachable(&self) -> bool {
        let Self::Postgres { op, source } = self else {
            return false;
        };
        if *op == CONNECTING || source.is_closed() {
            return true;
        }
        match source.code() {
            // Class 08: connection exception; 57P01-57P03: the server is
            // shutting down, crashed, or is not ready yet.
            Some(code) => {
                let code = code.code();
                code.starts_with("08") || ["57P01", "57P02", "57P03"].contains(&code)
            }
            // No SQLSTATE: the connection itself failed.
            None => std::error::Error::source(source)
                .is_some_and(|cause| cause.downcast_ref::<std::io::Error>().is_some()),
        }
    }
}

/// The operation of a failed connection.
pub(crate) const CONNECTING: &str = "connecting to PostgreSQL";

/// A closure that names a database error's operation.
pub(crate) fn db(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
    move |source| DbError::Postgres { op, source }
}

/// A notification of a `LISTEN`ed channel: (channel, payload).
pub type Notification = (String, String);
