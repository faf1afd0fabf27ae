//! The hosts' rows (`jobworker_hosts`): a host registers with the next
//! generation and renews its lease on the database's clock; an operator
//! drains and undrains hosts and lists them. The drain survives the host's
//! registrations: only an operator sets or clears it.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::{DbError, FleetConfig, db};

/// What a binary records as its version in its host row.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Inserts or takes over this host's row with the next generation and a
/// fresh lease (keeping an operator's drain); returns the generation.
pub async fn register(client: &Client, config: &FleetConfig) -> Result<i64, DbError> {
    let labels = crate::jobs::pairs(&config.labels);
    let slots = i32::try_from(config.slots).unwrap_or(i32::MAX);
    let row = client
        .query_one(
            "INSERT INTO jobworker_hosts
                 (id, labels, slots, generation, lease_until, version, peer_address)
             VALUES ($1, $2, $3, 1, now() + make_interval(secs => $4), $5, $6)
             ON CONFLICT (id) DO UPDATE SET
                 labels = EXCLUDED.labels,
                 peer_address = EXCLUDED.peer_address,
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
                &config.peer_address,
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

/// Drains host `id` (it claims no new job; its running jobs go on) or
/// undrains it; `false` if no such host is registered.
pub async fn set_draining(client: &Client, id: &str, draining: bool) -> Result<bool, DbError> {
    let changed = client
        .execute(
            "UPDATE jobworker_hosts SET draining = $2 WHERE id = $1",
            &[&id, &draining],
        )
        .await
        .map_err(db("changing a host's drain"))?;
    Ok(changed == 1)
}

/// A host as the database holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    /// Its `host_id`.
    pub id: String,
    /// Its registration's generation.
    pub generation: i64,
    /// How long its lease has left (negative: how long ago it ran out).
    pub lease_left: f64,
    /// Whether an operator drained it.
    pub draining: bool,
    /// How many jobs it runs at once.
    pub slots: i32,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The version of its gateway.
    pub version: String,
    /// Where the other gateways reach its peer port, if it has one.
    pub peer_address: Option<String>,
}

impl Host {
    /// Whether its lease holds.
    pub fn lease_held(&self) -> bool {
        self.lease_left > 0.0
    }

    /// The lease's time left, or how long ago it ran out.
    pub fn lease_text(&self) -> String {
        let seconds = self.lease_left.abs();
        if self.lease_held() {
            format!("held, {seconds:.1}s left")
        } else {
            format!("ran out {seconds:.1}s ago")
        }
    }
}

/// The columns a [`Host`] is read from.
const HOST_COLUMNS: &str = "id, generation, EXTRACT(EPOCH FROM lease_until - now())::float8, \
                            draining, slots, labels, version, peer_address";

/// Every registered host, by id.
pub async fn list(client: &Client) -> Result<Vec<Host>, DbError> {
    let rows = client
        .query(
            &format!("SELECT {HOST_COLUMNS} FROM jobworker_hosts ORDER BY id"),
            &[],
        )
        .await
        .map_err(db("listing the hosts"))?;
    Ok(rows.iter().map(host).collect())
}

/// Host `id`, if it is registered.
pub async fn get(client: &Client, id: &str) -> Result<Option<Host>, DbError> {
    let row = client
        .query_opt(
            &format!("SELECT {HOST_COLUMNS} FROM jobworker_hosts WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(db("reading a host"))?;
    Ok(row.as_ref().map(host))
}

/// A host from a row of [`HOST_COLUMNS`].
fn host(row: &tokio_postgres::Row) -> Host {
    Host {
        id: row.get(0),
        generation: row.get(1),
        lease_left: row.get(2),
        draining: row.get(3),
        slots: row.get(4),
        labels: row
            .get::<_, Vec<String>>(5)
            .iter()
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key.to_owned(), value.to_owned())
            })
            .collect(),
        version: row.get(6),
        peer_address: row.get(7),
    }
}

/// Whether any registered host carries every one of `labels` (whether a
/// job placed on them can ever run).
pub async fn any_carries(client: &Client, labels: &jobworker_ipc::Labels) -> Result<bool, DbError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM jobworker_hosts WHERE labels @> $1)",
            &[&crate::jobs::pairs(labels)],
        )
        .await
        .map_err(db("looking for a host with the placement's labels"))?;
    Ok(row.get(0))
}
