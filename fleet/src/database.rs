//! How a gateway (or the operators' tool) reaches the fleet's PostgreSQL:
//! [`Database`], the connection string of `fleet.database_url` and its TLS
//! (rustls, through tokio-postgres-rustls). Over a Unix socket there is no
//! TLS. Over TCP, with `fleet.database_ca` set, the server's certificate
//! must chain to that CA and name the host dialed (`sslmode=require`
//! refuses a server without TLS; the default, `prefer`, takes TLS when the
//! server offers it); without it, no TLS is tried, and `sslmode=require` is
//! refused when the configuration is read.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{CONNECTING, DbError, Notification, POOL_TIMEOUT, Pool, db};

/// How long connecting may take when `database_url` does not say
/// (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long sent data may go unacknowledged, and a quiet connection
/// unprobed, before the connection is given up: a database cut off fails
/// the calls on it within about this (and the probes') time.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);
/// The server-side bounds of every session, unless `database_url`'s
/// `options` says otherwise: a statement that runs longer is cancelled, and
/// a session of a gateway that vanished inside a transaction (holding the
/// reaper's lock, say) is ended.
const SESSION_OPTIONS: &str = "-c statement_timeout=10s -c idle_in_transaction_session_timeout=30s";

/// The fleet's database: where it is, and how its connections are secured.
#[derive(Clone)]
pub struct Database {
    /// The connection's settings.
    pub config: tokio_postgres::Config,
    /// TLS for TCP connections (never used with `sslmode=disable`).
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Database {
    /// tokio-postgres's `Config` does not show the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Parses `fleet.database_url` and reads `fleet.database_ca`; an error
    /// names the key. A connection that does not say otherwise gives up
    /// connecting after 5 s, gives up a database cut off within about
    /// 10 s, and runs its sessions with `statement_timeout=10s` and
    /// `idle_in_transaction_session_timeout=30s`.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Self, (&'static str, String)> {
        let mut config = url.parse::<tokio_postgres::Config>().map_err(|e| {
            (
                "fleet.database_url",
                format!(
                    "is not a PostgreSQL connection string ({e}); e.g. \
                     \"host=/run/postgresql dbname=jobworker user=jobworker-gateway\""
                ),
            )
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config
            .keepalives(true)
            .keepalives_idle(NETWORK_TIMEOUT / 2)
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(NETWORK_TIMEOUT);
        if config.get_options().is_none() {
            config.options(SESSION_OPTIONS);
        }
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            None if config.get_ssl_mode() == SslMode::Require => {
                return Err((
                    "fleet.database_ca",
                    "must be set when database_url asks for sslmode=require: the CA \
                     certificate PostgreSQL's server certificate is checked against"
                        .into(),
                ));
            }
            None => {
                config.ssl_mode(SslMode::Disable);
            }
            Some(path) => {
                let shown = path.display();
                let certificates = CertificateDer::pem_file_iter(path)
                    .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| ("fleet.database_ca", format!("reading {shown}: {e}")))?;
                if certificates.is_empty() {
                    return Err((
                        "fleet.database_ca",
                        format!("{shown} holds no PEM certificate"),
                    ));
                }
                for certificate in certificates {
                    roots.add(certificate).map_err(|e| {
                        (
                            "fleet.database_ca",
                            format!("{shown} holds a certificate rustls cannot use: {e}"),
                        )
                    })?;
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ("fleet.database_ca", format!("setting up TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(tls),
        })
    }

    /// Connects and drives the connection on a task of its own, which ends
    /// when the client is dropped or the connection is lost.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, DbError> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(db(CONNECTING))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "fleet: the database connection ended");
            }
        });
        Ok(client)
    }

    /// Connects like [`Self::connect`], and also hands each notification
    /// the connection receives (of the channels its client `LISTEN`s to) to
    /// the returned receiver, which ends when the connection does.
    pub async fn connect_listening(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::sync::mpsc::UnboundedReceiver<Notification>,
        ),
        DbError,
    > {
        let (client, mut connection) = self
            .config
            .connect(self.tls.clone())
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

    /// A pool of at most `size` connections, made as they are needed (none
    /// yet: an unreachable database fails the calls, not this).
    pub fn pool(&self, size: usize) -> Result<Pool, deadpool_postgres::BuildError> {
        let manager = deadpool_postgres::Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
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
}
