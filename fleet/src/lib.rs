//! Fleet mode's side in PostgreSQL, shared by the gateway's agent (which
//! keeps its host's row) and the operators' tool (which lists, drains and
//! undrains hosts). The root supervisor never talks to the database.
//!
//! - [`config`]: the `[fleet]` table of gateway.toml, resolved and checked.
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
pub mod hosts;
pub mod jobs;
pub mod schema;

pub use config::{FleetConfig, FleetFileConfig, PeerFiles};

/// A pool of connections to the fleet's database, for a gateway's calls.
pub type Pool = deadpool_postgres::Pool;

/// How long a call waits for a pooled connection, or to make one.
const POOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// Whether the database could not be reached (or the connection was
    /// lost), rather than refusing what was asked.
    pub fn unreachable(&self) -> bool {
        match self {
            Self::Postgres { op, source } => *op == CONNECTING || source.is_closed(),
            Self::Row { .. } => false,
        }
    }
}

/// The operation of a failed connection.
const CONNECTING: &str = "connecting to PostgreSQL";

/// A closure that names a database error's operation.
pub(crate) fn db(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
    move |source| DbError::Postgres { op, source }
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

/// A notification of a `LISTEN`ed channel: (channel, payload).
pub type Notification = (String, String);

/// Connects like [`connect`], and also hands each notification the
/// connection receives (of the channels its client `LISTEN`s to) to the
/// returned receiver, which ends when the connection does.
pub async fn connect_listening(
    database: &tokio_postgres::Config,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<Notification>,
    ),
    DbError,
> {
    let (client, mut connection) = database
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(db(CONNECTING))?;
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    // Nobody listens any more: the session ended.
                    if sender
                        .send((n.channel().to_owned(), n.payload().to_owned()))
                        .is_err()
                    {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "fleet: the database connection ended");
                    return;
                }
                None => return,
            }
        }
    });
    Ok((client, receiver))
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
