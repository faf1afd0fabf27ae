//! The `[fleet]` table of gateway.toml: [`FleetFileConfig`] as written,
//! [`FleetConfig`] as checked. Without the table, a host is a single host
//! and no database is used.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jobworker_ipc::Labels;
use serde::{Deserialize, Serialize};

use crate::Database;

/// The most slots a host may offer.
pub const MAX_SLOTS: u32 = 100_000;
/// The shortest lease (renewed every third of it).
pub const MIN_LEASE_MS: u64 = 300;
/// The longest lease.
pub const MAX_LEASE_MS: u64 = 3_600_000;

/// The `[fleet]` table as written. Its `Debug` hides `database_url`,
/// which may hold a password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFileConfig {
    /// The PostgreSQL connection string: `host=/run/postgresql
    /// dbname=jobworker user=jobworker` or a `postgresql://` URL.
    pub database_url: String,
    /// The CA certificate (PEM) PostgreSQL's server certificate must chain
    /// to, for TLS over TCP; unset: no TLS.
    #[serde(default)]
    pub database_ca: Option<PathBuf>,
    /// This host's name in the fleet: 1 to 63 of `[a-z0-9-]`, unique.
    pub host_id: String,
    /// How many of the fleet's jobs this host runs at once.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// This host's labels, which a job's placement may ask for.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How long the host's lease lasts without renewal, in milliseconds;
    /// it is renewed every third of it.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How long a `StartJob` waits for a host to start the job before it
    /// answers with the job QUEUED, in milliseconds.
    #[serde(default = "default_start_wait_ms")]
    pub start_wait_ms: u64,
    /// How long the jobs of a host whose lease ran out stay "host
    /// unreachable" (they may still run there) before they are declared
    /// FAILED, "host lost", in milliseconds.
    #[serde(default = "default_host_lost_ms")]
    pub host_lost_ms: u64,
    /// The peer port: where the other hosts' gateways forward the calls on
    /// this host's jobs (mutual TLS with the gateway's certificate; only
    /// peer certificates are served). Unset: no other gateway can reach
    /// this host's jobs' output or stop them.
    #[serde(default)]
    pub peer_listen: Option<SocketAddr>,
    /// The address the other gateways dial for the peer port (`host:port`,
    /// a name or address in the gateway's certificate); by default
    /// `peer_listen`'s.
    #[serde(default)]
    pub peer_address: Option<String>,
    /// This host's peer certificate (`jobworker-certs peer`), which it
    /// presents to the other hosts' peer ports.
    #[serde(default)]
    pub peer_cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub peer_key: Option<PathBuf>,
    /// The CA that signed the gateways' certificates (the server CA), which
    /// the peer ports must present a certificate of.
    #[serde(default)]
    pub peer_ca: Option<PathBuf>,
}

impl std::fmt::Debug for FleetFileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetFileConfig")
            .field("database_url", &"(not shown)")
            .field("database_ca", &self.database_ca)
            .field("host_id", &self.host_id)
            .field("slots", &self.slots)
            .field("labels", &self.labels)
            .field("lease_ms", &self.lease_ms)
            .field("start_wait_ms", &self.start_wait_ms)
            .field("host_lost_ms", &self.host_lost_ms)
            .field("peer_listen", &self.peer_listen)
            .field("peer_address", &self.peer_address)
            .field("peer_cert", &self.peer_cert)
            .field("peer_key", &self.peer_key)
            .field("peer_ca", &self.peer_ca)
            .finish()
    }
}

fn default_slots() -> u32 {
    8
}

fn default_lease_ms() -> u64 {
    15_000
}

/// A host with a free slot starts a job within milliseconds of its
/// queueing; a second without one means every host is busy.
fn default_start_wait_ms() -> u64 {
    1_000
}

/// A host away for five minutes is more likely gone than restarting.
fn default_host_lost_ms() -> u64 {
    300_000
}

/// The longest `host_lost_ms`: a week (the shortest is `lease_ms`).
pub const MAX_HOST_LOST_MS: u64 = 7 * 24 * 3_600_000;

/// The longest `start_wait_ms`.
pub const MAX_START_WAIT_MS: u64 = 60_000;

/// Fleet mode's settings, checked.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// How to reach PostgreSQL.
    pub database: Database,
    /// This host's name in the fleet.
    pub host_id: String,
    /// How many of the fleet's jobs this host runs at once.
    pub slots: u32,
    /// This host's labels, which a job's placement may ask for.
    pub labels: Labels,
    /// How long the host's lease lasts without renewal; it is renewed every
    /// third of it.
    pub lease: Duration,
    /// How long a `StartJob` waits for a host to start the job.
    pub start_wait: Duration,
    /// How long the jobs of a host whose lease ran out stay unreachable
    /// before they are declared lost.
    pub host_lost: Duration,
    /// The peer port.
    pub peer_listen: Option<SocketAddr>,
    /// The address the other gateways dial for it: as configured, else
    /// (once bound) the port's own.
    pub peer_address: Option<String>,
    /// The files this gateway reaches the other hosts' peer ports with.
    pub peer_client: Option<PeerFiles>,
}

/// A gateway's files for calling the other hosts' peer ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerFiles {
    /// Its peer certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA of the gateways' certificates.
    pub ca: PathBuf,
}

impl FleetConfig {
    /// Checks the table (and reads `database_ca`); an error names the key
    /// (`fleet.<key>`) and says what is wrong.
    pub fn resolve(fleet: &FleetFileConfig) -> Result<Self, (&'static str, String)> {
        let database = Database::new(&fleet.database_url, fleet.database_ca.as_deref())?;
        let id = &fleet.host_id;
        if !jobworker_ipc::types::is_host_id(id) {
            return Err((
                "fleet.host_id",
                format!("{id:?} is not 1 to 63 of [a-z0-9-] (not starting with -)"),
            ));
        }
        if !(1..=MAX_SLOTS).contains(&fleet.slots) {
            return Err((
                "fleet.slots",
                format!("{} is out of range 1..={MAX_SLOTS}", fleet.slots),
            ));
        }
        if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&fleet.lease_ms) {
            return Err((
                "fleet.lease_ms",
                format!(
                    "{} is out of range {MIN_LEASE_MS}..={MAX_LEASE_MS}",
                    fleet.lease_ms
                ),
            ));
        }
        if fleet.start_wait_ms > MAX_START_WAIT_MS {
            return Err((
                "fleet.start_wait_ms",
                format!(
                    "{} is out of range 0..={MAX_START_WAIT_MS}",
                    fleet.start_wait_ms
                ),
            ));
        }
        if !(fleet.lease_ms..=MAX_HOST_LOST_MS).contains(&fleet.host_lost_ms) {
            return Err((
                "fleet.host_lost_ms",
                format!(
                    "{} is out of range {}..={MAX_HOST_LOST_MS} (at least lease_ms: a host is \
                     not lost before its lease could run out)",
                    fleet.host_lost_ms, fleet.lease_ms
                ),
            ));
        }
        let labels = Labels::new("fleet.labels", fleet.labels.clone())
            .map_err(|e| ("fleet.labels", e.reason))?;
        match (fleet.peer_listen, &fleet.peer_address) {
            (None, Some(_)) => {
                return Err((
                    "fleet.peer_address",
                    "is set without peer_listen, the port it names".into(),
                ));
            }
            (Some(listen), None) if listen.ip().is_unspecified() => {
                return Err((
                    "fleet.peer_address",
                    format!(
                        "must be set: peer_listen {listen} is every address, so it does not \
                         say which the other gateways should dial"
                    ),
                ));
            }
            _ => {}
        }
        let peer_client = match (&fleet.peer_cert, &fleet.peer_key, &fleet.peer_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(PeerFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            }),
            (cert, key, _) => {
                let missing = if cert.is_none() {
                    "fleet.peer_cert"
                } else if key.is_none() {
                    "fleet.peer_key"
                } else {
                    "fleet.peer_ca"
                };
                return Err((
                    missing,
                    "must be set with the other two of peer_cert, peer_key and peer_ca".into(),
                ));
            }
        };
        Ok(Self {
            database,
            host_id: id.clone(),
            slots: fleet.slots,
            labels,
            lease: Duration::from_millis(fleet.lease_ms),
            start_wait: Duration::from_millis(fleet.start_wait_ms),
            host_lost: Duration::from_millis(fleet.host_lost_ms),
            peer_listen: fleet.peer_listen,
            peer_address: fleet.peer_address.clone(),
            peer_client,
        })
    }
}
