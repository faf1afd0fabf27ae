//! Fleet mode (opt-in: the `[fleet]` table of gateway.toml): the hosts of a
//! fleet coordinate through PostgreSQL. The root supervisor never talks to
//! the database; each host's gateway runs an agent that does.
//!
//! - [`schema`]: the versioned migrations, applied at start under an
//!   advisory lock, expand-only so that binaries N and N+1 share a schema.
//! - [`agent`]: the host's row: registration with a new fencing
//!   generation, and the lease it renews on the database's clock.

pub mod agent;
pub mod schema;

use std::time::Duration;

use jobworker_ipc::Labels;

/// Fleet mode's settings, resolved from the `[fleet]` table.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// How to reach PostgreSQL.
    pub database: tokio_postgres::Config,
    /// This host's name in the fleet.
    pub host_id: String,
    /// How many of the fleet's jobs this host runs at once.
    pub slots: u32,
    /// This host's labels, which a job's placement may ask for.
    pub labels: Labels,
    /// How long the host's lease lasts without renewal; it is renewed every
    /// third of it.
    pub lease: Duration,
}

/// A database operation that failed, named.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct DbError {
    /// What was being done.
    pub op: &'static str,
    /// PostgreSQL's answer (or the connection's failure).
    #[source]
    pub source: tokio_postgres::Error,
}

/// A closure that names a database error's operation.
fn db(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
    move |source| DbError { op, source }
}
