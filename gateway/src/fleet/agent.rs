//! The agent: while this host holds its lease (and is not drained), it
//! claims the oldest queued jobs it may run for its free slots, when a job
//! is queued (a notice: after a pause that grows with its own load, so that
//! the least busy hosts take the work first), when one of its jobs ends,
//! and every second. It
//! starts each on the local supervisor under the owner's identity, with
//! the job's fleet id as the request id, so that starting it again (after
//! any outage) finds the job it started instead of running it twice. It
//! follows each started job to its end and records it. A job its supervisor
//! refuses (a full disk, no free uid, limits over this host's maximum, a
//! command missing here, a supervisor stopping) goes back to the queue for
//! the other hosts, and this one never claims it again; it fails once every
//! live host that may run it has refused it. A supervisor that
//! cannot be reached gets no claim; a job whose start got no answer stays
//! the host's, and is started again (found) when the supervisor is back:
//! it may have started, so no other host may run it.
//!
//! Every tick it also reaps (one gateway of the fleet at a time): the jobs
//! of a host whose lease ran out are shown "host unreachable", and after
//! `host_lost_ms` declared FAILED ("host lost"); a host that comes back
//! reports how they stand instead. Nothing is run again.
//!
//! After each registration, and every 5 s, it reconciles: it takes its
//! jobs over into the current generation, starts again those left starting
//! (idempotent, as above), follows those running that it does not follow
//! yet (after its own restart, say), and asks the supervisor how each job
//! the reaper gave up on stands. The supervisor's records are the host's
//! truth; the database catches up.

use std::sync::Arc;
use std::time::Duration;

use jobworker_fleet::jobs::{self, Fence, Job, Refused, State};
use jobworker_ipc::{Identity, IpcError, JobId, JobInfo, JobState, Request, RequestId, Response};
use tokio::sync::broadcast::error::RecvError;

use super::{Fleet, Notice};

/// How often the agent looks for work without being told.
const TICK: Duration = Duration::from_secs(1);
/// Reconcile every this many ticks.
const RECONCILE_EVERY: u32 = 5;
/// The first and the longest pause between attempts to follow a job whose
/// supervisor went away.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// Why a round of the agent failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// No pooled connection.
    #[error("connecting to the fleet's database: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] jobworker_fleet::DbError),
}

/// Runs the agent for the life of the gateway.
pub async fn run(fleet: Arc<Fleet>) {
    let mut fences = fleet.fence.subscribe();
    let mut notices = fleet.notices.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0_u32;
    let mut reconciled = None;
    loop {
        let mut reap_due = false;
        let mut queued = false;
        tokio::select! {
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(RECONCILE_EVERY) {
                    reconciled = None;
                }
                reap_due = true;
            }
            notice = notices.recv() => match notice {
                Ok(Notice::Queued) | Err(RecvError::Lagged(_)) => queued = true,
                Ok(Notice::Changed(_)) => continue,
                Err(RecvError::Closed) => return,
            },
            changed = fences.changed() => if changed.is_err() {
                return;
            },
            () = fleet.wake.notified() => {}
        }
        let Some(fence) = fleet.fence() else {
            continue;
        };
        if reconciled != Some(fence.generation) {
            match reconcile(&fleet, &fence).await {
                Ok(()) => reconciled = Some(fence.generation),
                Err(e) => {
                    tracing::warn!(error = %e, "fleet: reconciling this host's jobs");
                    continue;
                }
            }
        }
        if queued {
            tokio::time::sleep(pace(&fleet)).await;
        }
        if let Err(e) = claim(&fleet, &fence).await {
            tracing::warn!(error = %e, "fleet: claiming queued jobs");
        }
        if reap_due && let Err(e) = reap(&fleet).await {
            tracing::warn!(error = %e, "fleet: reaping the jobs of unreachable hosts");
        }
    }
}

/// How long the agent waits, told a job was queued, before it claims: 2 ms
/// for each job it is starting or running, and up to 1 ms more at random,
/// so that every agent woken by the same notice does not race for the job
/// and the least busy hosts (and, among equals, any of them) take the
/// work first.
fn pace(fleet: &Fleet) -> Duration {
    const PER_JOB: Duration = Duration::from_millis(2);
    let busy = fleet.followed().len() + fleet.starting().len();
    let busy = u32::try_from(busy.min(usize::try_from(fleet.config.slots).unwrap_or(usize::MAX)))
        .unwrap_or(u32::MAX);
    // The clock's nanoseconds: random enough to break ties.
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| now.subsec_nanos() % 1_000_000);
    PER_JOB * busy + Duration::from_nanos(u64::from(jitter))
}

/// One round of the reaper (unless another gateway's is under way).
async fn reap(fleet: &Fleet) -> Result<(), Failure> {
    let mut db = fleet.db().await?;
    let reaped = jobs::reap(&mut db, fleet.config.host_lost).await?;
    if reaped.unreachable > 0 {
        tracing::warn!(
            jobs = reaped.unreachable,
            "fleet: a host's lease ran out: its jobs are now shown as host unreachable"
        );
    }
    if reaped.lost > 0 {
        tracing::warn!(
            jobs = reaped.lost,
            grace = ?fleet.config.host_lost,
            "fleet: jobs of a host unreachable for longer than host_lost_ms are declared \
             FAILED (host lost); nothing is run again"
        );
    }
    Ok(())
}

/// Claims what the host has room for, if its supervisor answers, and
/// starts each claimed job.
async fn claim(fleet: &Arc<Fleet>, fence: &Fence) -> Result<(), Failure> {
    let reachable = *fleet.supervisor.reachability().borrow();
    if !reachable && fleet.supervisor.call_own(Request::Ping).await.is_err() {
        return Ok(());
    }
    let claimed = {
        let db = fleet.db().await?;
        jobs::claim(&db, fence, fleet.config.slots).await?
    };
    for job in claimed {
        tracing::debug!(job = %job.id, "fleet: claimed a job");
        spawn_start(fleet, fence, job);
    }
    Ok(())
}

/// Starts `job` on a task of its own, unless a start of it is under way.
fn spawn_start(fleet: &Arc<Fleet>, fence: &Fence, job: Job) {
    if let Some(starting) = Starting::begin(fleet, job.id) {
        tokio::spawn(start(Arc::clone(fleet), fence.clone(), job, starting));
    }
}

/// A start under way: one per job at a time, so that a start that hangs
/// (its supervisor stopped, say) is not joined by another every
/// reconciliation.
struct Starting {
    fleet: Arc<Fleet>,
    job: JobId,
}

impl Starting {
    /// Marks a start of `job` under way, unless one is.
    fn begin(fleet: &Arc<Fleet>, job: JobId) -> Option<Self> {
        fleet.starting().insert(job).then(|| Self {
            fleet: Arc::clone(fleet),
            job,
        })
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.fleet.starting().remove(&self.job);
    }
}

/// Takes the host's jobs over into `fence`'s generation, starts again
/// those left starting, and follows those running.
async fn reconcile(fleet: &Arc<Fleet>, fence: &Fence) -> Result<(), Failure> {
    let mine = {
        let db = fleet.db().await?;
        jobs::adopt(&db, fence).await?
    };
    for job in mine {
        match (job.state, job.local_id) {
            // A job the reaper declared lost: its record here says how it
            // stands now, and it is followed like a running one.
            (_, Some(local)) if job.lost => {
                tokio::spawn(resync(Arc::clone(fleet), fence.clone(), job, local));
            }
            (State::Running, Some(local)) => follow(fleet, job.id, &job.owner, local),
            (State::Starting, _) | (State::Running, None) => spawn_start(fleet, fence, job),
            _ => {}
        }
    }
    Ok(())
}

/// Records how a job the reaper declared lost stands on the supervisor, and
/// follows it if it runs.
async fn resync(fleet: Arc<Fleet>, fence: Fence, job: Job, local: JobId) {
    match fleet
        .supervisor
        .call(&job.owner, Request::GetJob { job: local })
        .await
    {
        Ok(Response::Job(info)) => {
            let recorded = match fleet.db().await {
                Ok(db) => jobs::report(&db, &fence, job.id, &info)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = recorded {
                tracing::warn!(job = %job.id, error = %e,
                    "fleet: recording a job the reaper gave up on (reconciled again later)");
            }
            if !info.state.is_ended() {
                follow(&fleet, job.id, &job.owner, local);
            }
        }
        // Gone from the supervisor: its end is recorded as lost.
        Ok(Response::Error(IpcError::NotFound { .. })) => {
            follow(&fleet, job.id, &job.owner, local);
        }
        Ok(_) | Err(_) => {
            tracing::debug!(job = %job.id, "fleet: the supervisor did not say how a lost job stands; asking again when reconciling");
        }
    }
}

/// Starts a claimed job on the supervisor and records the answer. A start
/// that fails without an answer leaves the job starting: the supervisor may
/// have started it, and only starting it again (with the same request id,
/// which finds it) can tell, so the job is never given to another host.
async fn start(fleet: Arc<Fleet>, fence: Fence, job: Job, _starting: Starting) {
    let mut spec = job.spec.clone();
    // A UUID's text always makes a request id.
    spec.request_id = RequestId::new(job.id.to_string()).ok();
    let answer = fleet
        .supervisor
        .call(&job.owner, Request::StartJob(spec))
        .await;
    let db = match fleet.db().await {
        Ok(db) => db,
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e,
                "fleet: recording a job's start (reconciled once the database answers)");
            return;
        }
    };
    let recorded = match answer {
        Ok(Response::Job(info)) => {
            let started = jobs::report(&db, &fence, job.id, &info).await;
            if matches!(started, Ok(true)) && !info.state.is_ended() {
                follow(&fleet, job.id, &job.owner, info.id);
            }
            started
        }
        Ok(Response::Error(e)) => match jobs::refused(&db, &fence, &job, &e).await {
            Ok(Some(Refused::Requeued)) => {
                tracing::info!(job = %job.id, error = %e,
                    "fleet: the supervisor refused a job; back in the queue for another host");
                Ok(true)
            }
            Ok(Some(Refused::Failed)) => {
                tracing::info!(job = %job.id, error = %e,
                    "fleet: the supervisor refused a job every live host has refused; it failed");
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        },
        Ok(other) => {
            tracing::error!(job = %job.id, answer = other.name(),
                "fleet: the supervisor answered a start out of protocol");
            return;
        }
        Err(e) => {
            // It may have started: only starting it again (which finds it)
            // can tell.
            tracing::warn!(job = %job.id, error = %e,
                "fleet: starting a job; trying again when reconciling");
            return;
        }
    };
    match recorded {
        Ok(true) => {}
        Ok(false) => tracing::info!(job = %job.id, generation = fence.generation,
            "fleet: a start's record was fenced (the host registered again meanwhile)"),
        Err(e) => tracing::warn!(job = %job.id, error = %e,
            "fleet: recording a job's start (reconciled once the database answers)"),
    }
}

/// Follows job `id` (`local` on the supervisor) to its end, unless it is
/// followed already.
fn follow(fleet: &Arc<Fleet>, id: JobId, owner: &Identity, local: JobId) {
    let mut followed = fleet.followed();
    if followed.get(&id).is_some_and(|task| !task.is_finished()) {
        return;
    }
    let task = tokio::spawn(follow_to_end(Arc::clone(fleet), id, owner.clone(), local));
    followed.insert(id, task.abort_handle());
}

/// Waits for the job's end (riding out supervisor restarts) and records
/// it; then the agent may claim again.
async fn follow_to_end(fleet: Arc<Fleet>, id: JobId, owner: Identity, local: JobId) {
    let mut pause = BACKOFF.0;
    let ended = loop {
        match fleet.supervisor.await_end(&owner, local).await {
            Ok(Ok(info)) => break Some(info),
            Ok(Err(IpcError::NotFound { .. })) => break lost(&fleet, id).await,
            Ok(Err(e)) => {
                tracing::warn!(job = %id, error = %e, "fleet: following a job");
                break None;
            }
            Err(e) if e.is_gone() => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKOFF.1);
            }
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "fleet: following a job");
                break None;
            }
        }
    };
    if let (Some(info), Some(fence)) = (ended, fleet.fence()) {
        let recorded = match fleet.db().await {
            Ok(db) => jobs::report(&db, &fence, id, &info)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = recorded {
            tracing::warn!(job = %id, error = %e,
                "fleet: recording a job's end (reconciled once the database answers)");
        }
    }
    fleet.followed().remove(&id);
    fleet.wake.notify_one();
}

/// The end of a job whose record the supervisor no longer has: FAILED.
async fn lost(fleet: &Fleet, id: JobId) -> Option<JobInfo> {
    let db = fleet.db().await.ok()?;
    let job = jobs::get(&db, id).await.ok()??;
    let mut info = job.info();
    info.id = job.local_id.unwrap_or(id);
    info.state = JobState::Failed;
    info.failure = Some(format!(
        "its record on host {} is gone (removed by the host's retention while the fleet \
         could not record its end, or the host's state directory was lost)",
        fleet.host_id()
    ));
    info.ended_at = Some(jobworker_ipc::UnixMicros::now());
    Some(info)
}
