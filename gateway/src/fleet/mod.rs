//! Fleet mode (opt-in: the `[fleet]` table): this gateway is one host of a
//! fleet whose jobs are coordinated through PostgreSQL
//! (`jobworker_fleet`). The root supervisor never talks to the database:
//! the gateway's agent does, for its host.
//!
//! - [`lease`]: this host's row, its lease and fencing generation, and the
//!   connection that `LISTEN`s to the jobs' channel.
//! - [`agent`]: claims queued jobs for the host's free slots, starts them on
//!   the local supervisor, follows each to its end and reports every change,
//!   and reconciles the database with the supervisor's records after any
//!   outage.
//! - [`calls`]: the job service's calls over the fleet: `StartJob` queues,
//!   `GetJob` and `ListJobs` read the database (owner scoping in the
//!   query; a running job's `GetJob` is answered where it runs),
//!   `StopJob` and `StreamOutput` act on the job where it is.
//! - [`peers`]: the calls forwarded to the gateway of the host where a
//!   job runs, over mutual TLS with peer certificates.
//!
//! [`Fleet`] is what they share.

pub mod agent;
pub mod calls;
pub mod lease;
pub mod peers;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use jobworker_fleet::jobs::{self, Fence};
use jobworker_fleet::{FleetConfig, Pool};
use jobworker_ipc::JobId;
use tokio::sync::{Notify, broadcast, watch};

use self::peers::{PeerTls, Peers};
use crate::supervisor::Supervisor;

/// The most connections to the fleet's database the gateway's calls hold.
const POOL_SIZE: usize = 16;

/// What a `NOTIFY` on the jobs' channel says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A job joined the queue.
    Queued,
    /// This job's state changed.
    Changed(JobId),
}

impl Notice {
    /// The notice of a payload on [`jobs::CHANNEL`].
    fn of(payload: &str) -> Option<Self> {
        if payload == jobs::QUEUED {
            return Some(Self::Queued);
        }
        payload.parse().ok().map(Self::Changed)
    }
}

/// What fleet mode's parts share.
pub struct Fleet {
    /// The `[fleet]` table.
    pub config: FleetConfig,
    /// Connections for the calls and the agent.
    pool: Pool,
    /// The local supervisor.
    supervisor: Arc<Supervisor>,
    /// The generation this host holds, once registered.
    fence: watch::Sender<Option<Fence>>,
    /// The notices of the jobs' channel.
    notices: broadcast::Sender<Notice>,
    /// Wakes the agent: a slot may have come free.
    wake: Notify,
    /// The jobs the agent follows to their end, by fleet id.
    followed: Mutex<HashMap<JobId, tokio::task::AbortHandle>>,
    /// The jobs the agent is starting.
    starting: Mutex<HashSet<JobId>>,
    /// The other hosts' gateways.
    peers: Peers,
}

/// How many notices a slow waiter may miss before it is told it lagged
/// (and reads the database again).
const NOTICES: usize = 1024;

impl Fleet {
    /// Fleet mode's state; starts the lease and the agent on the current
    /// runtime. With `peer_tls`, calls on jobs of other hosts are
    /// forwarded to their gateways.
    pub fn start(
        config: FleetConfig,
        supervisor: Arc<Supervisor>,
        peer_tls: Option<PeerTls>,
    ) -> Result<Arc<Self>, deadpool_postgres::BuildError> {
        let pool = config.database.pool(POOL_SIZE)?;
        let fleet = Arc::new(Self {
            config,
            pool,
            supervisor,
            fence: watch::channel(None).0,
            notices: broadcast::channel(NOTICES).0,
            wake: Notify::new(),
            followed: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashSet::new()),
            peers: Peers::new(peer_tls),
        });
        tokio::spawn(lease::run(Arc::clone(&fleet)));
        tokio::spawn(agent::run(Arc::clone(&fleet)));
        Ok(fleet)
    }

    /// The host's id.
    pub fn host_id(&self) -> &str {
        &self.config.host_id
    }

    /// A pooled connection.
    async fn db(&self) -> Result<deadpool_postgres::Object, deadpool_postgres::PoolError> {
        self.pool.get().await
    }

    /// The generation held now, if any.
    fn fence(&self) -> Option<Fence> {
        self.fence.borrow().clone()
    }

    /// The jobs being started, locked.
    fn starting(&self) -> std::sync::MutexGuard<'_, HashSet<JobId>> {
        self.starting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The followed jobs, locked.
    fn followed(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, tokio::task::AbortHandle>> {
        self.followed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
