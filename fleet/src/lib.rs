//! Fleet mode's side in PostgreSQL, shared by the gateway's agent (which
//! keeps its host's row) and the operators' tool (which lists, drains and
//! undrains hosts). The root supervisor never talks to the database.
//!
//! - [`config`]: the `[fleet]` table of gateway.toml, resolved and checked.
//! - [`schema`]: the numbered, expand-only migrations, applied under an
//!   advisory lock, so that binaries N and N+1 share a schema.
//! - [`hosts`]: a host's row: registration with the next fencing
//!   generation, the lease on the database's clock, drains, the listing.
#![forbid(unsafe_code)]

pub mod config;
pub mod hosts;
pub mod schema;

pub use config::{FleetConfig, FleetFileConfig};

/// A pool of connections to the fleet's database, for a gateway's calls.
pub type Pool = deadpool_postgres::Pool;

/// How long a call waits for a pooled connection, or to make one.
const POOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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

impl DbError {
    /// Whether the database could not be reached (or the connection was
    /// lost), rather than refusing what was asked.
    pub fn unreachable(&self) -> bool {
        self.op == CONNECTING || self.source.is_closed()
    }
}

/// The operation of a failed connection.
const CONNECTING: &str = "connecting to PostgreSQL";

/// A closure that names a database error's operation.
pub(crate) fn db(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
    move |source| DbError { op, source }
}

/// Connects to PostgreSQL (no TLS: a Unix socket, or a network the
/// operator secures) and drives the connection on a task of its own, which
/// ends when the client is dropped or the connection is lost.
pub async fn connect(database: &tokio_postgres::Config) -> Result<tokio_postgres::Client, DbError> {
    let (client, connection) = database
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(db(CONNECTING))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "fleet: the database connection ended");
        }
    });
    Ok(client)
}

/// A pool of at most `size` connections to `database`, made as they are
/// needed (none yet: an unreachable database fails the calls, not this).
pub fn pool(
    database: &tokio_postgres::Config,
    size: usize,
) -> Result<Pool, deadpool_postgres::BuildError> {
    let manager = deadpool_postgres::Manager::from_config(
        database.clone(),
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .build()
}
