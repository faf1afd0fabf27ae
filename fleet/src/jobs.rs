//! The fleet's jobs (`jobworker_jobs`). Any gateway queues a job
//! ([`enqueue`], idempotent per owner and request id); the agent of a host
//! with free slots, its lease held and not drained, claims the oldest it may
//! run ([`claim`]: `FOR UPDATE SKIP LOCKED`, so that hosts never wait for
//! each other and never take the same job), starts it on its supervisor and
//! reports what the supervisor says ([`report`], [`refused`]: a job one
//! host refused goes on to the others, and fails once all have); a job this
//! version cannot read goes back to the queue (for a host of a newer
//! release) rather than blocking its host. Every report
//! names the host's generation ([`Fence`]): one whose generation has moved
//! on (the host was cut off and registered again) changes nothing.
//!
//! Each change is announced on [`CHANNEL`]: [`QUEUED`] when a job joins the
//! queue (agents wake to claim), the job's id when its state changes
//! (callers waiting for it wake). The ipc types travel as JSON and are
//! validated again when read, as any input is.

use jobworker_ipc::{
    Identity, IpcError, JobId, JobInfo, JobSpec, JobState, Labels, ListCursor, Owner, StopReason,
    UnixMicros, UserName,
};
use tokio_postgres::{Client, Row};

use crate::{DbError, db};

/// The channel of `NOTIFY`s about jobs.
pub const CHANNEL: &str = "jobworker_jobs";
/// The payload that says a job joined the queue.
pub const QUEUED: &str = "queued";

/// Where a job stands in the fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for a host.
    Queued,
    /// Claimed by a host, which is starting it.
    Starting,
    /// Running on its host.
    Running,
    /// Stopped (while queued, or on its host).
    Stopped,
    /// Its command ended by itself.
    Finished,
    /// It could not run to completion (its host's supervisor refused it,
    /// or the system failed).
    Failed,
}

impl State {
    /// The states a listing can ask for, by name.
    pub const ALL: [State; 6] = [
        Self::Queued,
        Self::Starting,
        Self::Running,
        Self::Stopped,
        Self::Finished,
        Self::Failed,
    ];

    /// The name the database holds.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Finished => "finished",
            Self::Failed => "failed",
        }
    }

    /// The state of a job its host reports.
    pub const fn of(state: JobState) -> Self {
        match state {
            JobState::Running => Self::Running,
            JobState::Stopped => Self::Stopped,
            JobState::Finished => Self::Finished,
            JobState::Failed => Self::Failed,
        }
    }

    /// Whether no host runs it yet (queued, or claimed and starting).
    pub fn is_waiting(self) -> bool {
        matches!(self, Self::Queued | Self::Starting)
    }

    /// Whether it has ended: nothing about it changes any more.
    pub fn is_ended(self) -> bool {
        matches!(self, Self::Stopped | Self::Finished | Self::Failed)
    }
}

/// The host a report comes from, and the generation it claimed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The host's id.
    pub host: String,
    /// Its registration's generation.
    pub generation: i64,
}

/// A job as the fleet's database holds it.
#[derive(Clone, Debug)]
pub struct Job {
    /// Its id in the fleet (the one its owner knows).
    pub id: JobId,
    /// Who started it, with the role they started it with.
    pub owner: Identity,
    /// What to run.
    pub spec: JobSpec,
    /// The labels a host must carry to run it.
    pub placement: Labels,
    /// Where it stands.
    pub state: State,
    /// The host that claimed it.
    pub host: Option<String>,
    /// The generation its host claimed it with.
    pub generation: Option<i64>,
    /// Its id on its host's supervisor.
    pub local_id: Option<JobId>,
    /// Its host's last report.
    pub info: Option<JobInfo>,
    /// Why its host's supervisor refused to start it.
    pub refusal: Option<IpcError>,
    /// When it was queued, on the database's clock.
    pub created_at: UnixMicros,
    /// Its host's lease ran out while it was starting or running: it may
    /// still run there, but nothing is known of it since.
    pub unreachable: bool,
    /// The reaper declared it FAILED after the grace ("host lost"); its
    /// host's report replaces that if it comes back.
    pub lost: bool,
}

impl Job {
    /// Its status in the ipc's model: its host's last report, or, while no
    /// host has reported, what its request says; always with the fleet's
    /// id and creation time. A job not started yet shows as RUNNING there:
    /// [`State::is_waiting`] tells it apart.
    pub fn info(&self) -> JobInfo {
        let mut info = self.info.clone().unwrap_or_else(|| JobInfo {
            id: self.id,
            owner: Owner::Remote(self.owner.user.clone()),
            command: self.spec.command.clone(),
            args: self.spec.args.clone(),
            state: JobState::Running,
            pid: None,
            uid: None,
            gid: None,
            termination: None,
            oom_killed: false,
            created_at: self.created_at,
            started_at: None,
            ended_at: None,
            limits: self.spec.limits,
            enforced: jobworker_ipc::EnforcedLimits::default(),
            usage: jobworker_ipc::Usage::default(),
            output_bytes: 0,
            output_truncated_bytes: 0,
            output_disk_full_bytes: 0,
            failure: None,
            stop_reason: None,
            timeout: self.spec.timeout,
            labels: self.spec.labels.clone(),
        });
        info.id = self.id;
        info.created_at = self.created_at;
        info
    }
}

/// The columns a [`Job`] is read from, of `jobworker_jobs j`.
const COLUMNS: &str = "j.id, j.owner, j.role, j.spec, j.placement, j.state, j.host, \
                       j.generation, j.local_id, j.info, j.refusal, j.created_us, \
                       j.unreachable_since IS NOT NULL, j.lost";

/// `key=value` strings of labels, as the database holds them.
pub(crate) fn pairs(labels: &Labels) -> Vec<String> {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

/// A value as JSON for a JSONB column.
fn json<T: serde::Serialize>(op: &'static str, value: &T) -> Result<serde_json::Value, DbError> {
    serde_json::to_value(value).map_err(|e| DbError::Row {
        op,
        reason: e.to_string(),
    })
}

/// The value of JSONB column `column` (`what`), if set, checked as a `T`.
fn from_json<T: serde::de::DeserializeOwned>(
    op: &'static str,
    row: &Row,
    column: usize,
    what: &str,
) -> Result<Option<T>, DbError> {
    let bad = |reason: String| DbError::Row {
        op,
        reason: format!("{what}: {reason}"),
    };
    row.try_get::<_, Option<serde_json::Value>>(column)
        .map_err(|e| bad(e.to_string()))?
        .map(|value| serde_json::from_value(value).map_err(|e| bad(e.to_string())))
        .transpose()
}

/// A job of a row of [`COLUMNS`].
fn job(op: &'static str, row: &Row) -> Result<Job, DbError> {
    let bad = |reason: String| DbError::Row { op, reason };
    let state: String = row.get(5);
    let state = State::ALL
        .into_iter()
        .find(|s| s.as_str() == state)
        .ok_or_else(|| bad(format!("state {state:?} is unknown")))?;
    let user = UserName::new(row.get::<_, String>(1)).map_err(|e| bad(e.to_string()))?;
    let role = row
        .get::<_, String>(2)
        .parse()
        .map_err(|e: jobworker_ipc::UnknownRole| bad(e.to_string()))?;
    let placement: Vec<String> = row.get(4);
    Ok(Job {
        id: JobId::from_uuid(row.get(0)),
        owner: Identity { user, role },
        spec: from_json(op, row, 3, "spec")?.ok_or_else(|| bad("spec is null".into()))?,
        placement: Labels::parse("placement", placement.iter().map(String::as_str))
            .map_err(|e| bad(e.to_string()))?,
        state,
        host: row.get(6),
        generation: row.get(7),
        local_id: row.get::<_, Option<uuid::Uuid>>(8).map(JobId::from_uuid),
        info: from_json(op, row, 9, "info")?,
        refusal: from_json(op, row, 10, "refusal")?,
        created_at: UnixMicros(
            u64::try_from(row.get::<_, i64>(11)).map_err(|e| bad(e.to_string()))?,
        ),
        unreachable: row.get(12),
        lost: row.get(13),
    })
}

/// The jobs of `rows` this version can read; each other one is logged (a
/// newer release wrote it, or someone edited it) and left out, so that one
/// row never blocks a listing or a host. Returns the ids of those left out.
fn readable(op: &'static str, rows: &[Row]) -> (Vec<Job>, Vec<uuid::Uuid>) {
    let mut jobs = Vec::with_capacity(rows.len());
    let mut unread = Vec::new();
    for row in rows {
        match job(op, row) {
            Ok(job) => jobs.push(job),
            Err(e) => {
                let id: uuid::Uuid = row.get(0);
                tracing::error!(job = %id, error = %e, "fleet: left out a job this version cannot read");
                unread.push(id);
            }
        }
    }
    (jobs, unread)
}

/// Queues a job for `owner`, placed on hosts carrying `placement`. With a
/// request id that `owner` used before, nothing is queued: the job of that
/// first request is returned, with `false`.
pub async fn enqueue(
    client: &Client,
    owner: &Identity,
    spec: &JobSpec,
    placement: &Labels,
) -> Result<(JobId, bool), DbError> {
    const OP: &str = "queueing a job";
    let id = JobId::random();
    let request_id = spec.request_id.as_ref().map(|r| r.as_str());
    let inserted = client
        .query_opt(
            &format!(
                "WITH new AS (
                     INSERT INTO jobworker_jobs
                         (id, owner, role, request_id, spec, placement, labels, created_us)
                     VALUES ($1, $2, $3, $4, $5, $6, $7,
                             (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
                     ON CONFLICT (owner, request_id) DO NOTHING
                     RETURNING id
                 )
                 SELECT id, pg_notify('{CHANNEL}', '{QUEUED}')::text FROM new"
            ),
            &[
                &id.as_uuid(),
                &owner.user.as_str(),
                &owner.role.as_str(),
                &request_id,
                &json(OP, spec)?,
                &pairs(placement),
                &pairs(&spec.labels),
            ],
        )
        .await
        .map_err(db(OP))?;
    if inserted.is_some() {
        return Ok((id, true));
    }
    let row = client
        .query_one(
            "SELECT id FROM jobworker_jobs WHERE owner = $1 AND request_id = $2",
            &[&owner.user.as_str(), &request_id],
        )
        .await
        .map_err(db("reading the job of a repeated request"))?;
    Ok((JobId::from_uuid(row.get(0)), false))
}

/// Job `id`, if the fleet has it.
pub async fn get(client: &Client, id: JobId) -> Result<Option<Job>, DbError> {
    const OP: &str = "reading a job";
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM jobworker_jobs j WHERE j.id = $1"),
            &[&id.as_uuid()],
        )
        .await
        .map_err(db(OP))?;
    row.as_ref().map(|row| job(OP, row)).transpose()
}

/// What a listing asks for.
#[derive(Clone, Debug, Default)]
pub struct Filter<'a> {
    /// Only this user's jobs; every user's when unset.
    pub owner: Option<&'a UserName>,
    /// Only jobs in one of these states; any when empty.
    pub states: &'a [State],
    /// Only jobs carrying every one of these labels.
    pub labels: Option<&'a Labels>,
}

/// Up to `limit` jobs matching `filter`, newest first, after `after` (the
/// previous page's last); the cursor of the next page when more follow.
pub async fn list(
    client: &Client,
    filter: &Filter<'_>,
    limit: usize,
    after: Option<ListCursor>,
) -> Result<(Vec<Job>, Option<ListCursor>), DbError> {
    const OP: &str = "listing jobs";
    let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
    let labels = filter.labels.map(pairs).unwrap_or_default();
    let (after_us, after_id) = match after {
        Some(cursor) => (
            Some(i64::try_from(cursor.created_at.0).unwrap_or(i64::MAX)),
            Some(cursor.job.as_uuid()),
        ),
        None => (None, None),
    };
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM jobworker_jobs j
                 WHERE ($1::text IS NULL OR j.owner = $1)
                   AND (cardinality($2::text[]) = 0 OR j.state = ANY($2))
                   AND j.labels @> $3
                   AND ($4::bigint IS NULL OR (j.created_us, j.id) < ($4, $5::uuid))
                 ORDER BY j.created_us DESC, j.id DESC
                 LIMIT $6"
            ),
            &[
                &filter.owner.map(UserName::as_str),
                &states,
                &labels,
                &after_us,
                &after_id,
                &i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX),
            ],
        )
        .await
        .map_err(db(OP))?;
    let (mut jobs, _) = readable(OP, &rows);
    if jobs.len() <= limit {
        return Ok((jobs, None));
    }
    jobs.truncate(limit);
    let next = jobs.last().map(|last| ListCursor {
        created_at: last.created_at,
        job: last.id,
    });
    Ok((jobs, next))
}

/// Stops job `id` if it is still queued (it never runs); `None` if it is
/// not (a host claimed it meanwhile, or it is gone).
pub async fn stop_queued(client: &Client, id: JobId) -> Result<Option<Job>, DbError> {
    const OP: &str = "stopping a queued job";
    let Some(mut queued) = get(client, id).await?.filter(|j| j.state == State::Queued) else {
        return Ok(None);
    };
    let now = UnixMicros::now();
    let mut info = queued.info();
    info.state = JobState::Stopped;
    info.stop_reason = Some(StopReason::Requested);
    info.ended_at = Some(now);
    let changed = client
        .execute(
            &format!(
                "UPDATE jobworker_jobs j SET state = 'stopped', info = $2, updated_at = now(),
                     ended_us = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
                 WHERE j.id = $1 AND j.state = 'queued'
                 RETURNING pg_notify('{CHANNEL}', j.id::text)::text"
            ),
            &[&id.as_uuid(), &json(OP, &info)?],
        )
        .await
        .map_err(db(OP))?;
    if changed == 0 {
        return Ok(None);
    }
    queued.state = State::Stopped;
    queued.info = Some(info);
    Ok(Some(queued))
}

/// Claims up to `most` of the oldest queued jobs that host `fence` may run
/// (its placement's labels among the host's), within its free slots, if
/// its generation holds an unexpired lease and it is not drained.
pub async fn claim(client: &Client, fence: &Fence, most: u32) -> Result<Vec<Job>, DbError> {
    const OP: &str = "claiming queued jobs";
    let rows = client
        .query(
            &format!(
                "WITH me AS (
                     SELECT h.labels,
                            LEAST($3::bigint, h.slots - (
                                SELECT count(*) FROM jobworker_jobs b
                                WHERE b.host = $1 AND b.state IN ('starting', 'running')
                            )) AS free
                     FROM jobworker_hosts h
                     WHERE h.id = $1 AND h.generation = $2 AND h.lease_until > now()
                       AND NOT h.draining
                 ),
                 picked AS (
                     SELECT q.id FROM jobworker_jobs q
                     WHERE q.state = 'queued' AND q.placement <@ (SELECT labels FROM me)
                       AND NOT ($1 = ANY(q.refused_by))
                     ORDER BY q.seq
                     LIMIT GREATEST((SELECT free FROM me), 0)
                     FOR UPDATE OF q SKIP LOCKED
                 )
                 UPDATE jobworker_jobs j SET state = 'starting', host = $1, generation = $2,
                     updated_at = now()
                 FROM picked WHERE j.id = picked.id
                 RETURNING {COLUMNS}"
            ),
            &[&fence.host, &fence.generation, &i64::from(most)],
        )
        .await
        .map_err(db(OP))?;
    let (mut jobs, unread) = readable(OP, &rows);
    for id in unread {
        release(client, fence, JobId::from_uuid(id)).await?;
    }
    // The queue's order (RETURNING keeps none).
    jobs.sort_by_key(|job| job.created_at);
    Ok(jobs)
}

/// The condition that makes a host's write fenced: the job is the host's,
/// claimed with its current generation (`$1` host, `$2` generation, `$3`
/// the job).
const FENCED: &str = "j.id = $3 AND j.host = $1 AND j.generation = $2
                      AND EXISTS (SELECT 1 FROM jobworker_hosts h
                                  WHERE h.id = $1 AND h.generation = $2)";

/// Records what host `fence`'s supervisor says of job `id` (started, or
/// ended) while the job is the host's to report (starting, running, or
/// declared lost by the reaper: the host's truth replaces that); `false`
/// if it is not (a newer generation holds the host, or the job has ended).
pub async fn report(
    client: &Client,
    fence: &Fence,
    id: JobId,
    info: &JobInfo,
) -> Result<bool, DbError> {
    const OP: &str = "recording a job's state";
    let ended_us = info
        .ended_at
        .map(|at| i64::try_from(at.0).unwrap_or(i64::MAX));
    let changed = client
        .execute(
            &format!(
                "UPDATE jobworker_jobs j SET state = $4, local_id = $5, info = $6,
                     ended_us = $7, unreachable_since = NULL, lost = false, updated_at = now()
                 WHERE {FENCED} AND (j.state IN ('starting', 'running') OR j.lost)
                 RETURNING pg_notify('{CHANNEL}', j.id::text)::text"
            ),
            &[
                &fence.host,
                &fence.generation,
                &id.as_uuid(),
                &State::of(info.state).as_str(),
                &info.id.as_uuid(),
                &json(OP, info)?,
                &ended_us,
            ],
        )
        .await
        .map_err(db(OP))?;
    Ok(changed > 0)
}

/// What became of a job its host refused ([`refused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Back in the queue, for a live host that has not refused it.
    Requeued,
    /// FAILED: every live host that may run it has refused it; whoever
    /// waits for its start gets the last refusal.
    Failed,
}

/// Records that host `fence`'s supervisor refused to start job `id` with
/// `refusal`. A refusal says what one host cannot do (its disk is full, it
/// has no free uid, the limits are over its maximum, the command is
/// missing there, it is stopping), so the job goes back to the queue while
/// a live host that may run it (its lease held, its labels the job's
/// placement) has not refused it yet; the hosts that did never claim it
/// again. Once none is left, it FAILED with the last refusal. `None` if
/// the write was fenced.
pub async fn refused(
    client: &Client,
    fence: &Fence,
    job: &Job,
    refusal: &IpcError,
) -> Result<Option<Refused>, DbError> {
    const OP: &str = "recording a job its host refused";
    let mut info = job.info();
    info.state = JobState::Failed;
    info.failure = Some(format!(
        "no host could start it; the last, {}: {refusal}",
        fence.host
    ));
    info.ended_at = Some(UnixMicros::now());
    let row = client
        .query_opt(
            &format!(
                "WITH other AS (
                     SELECT EXISTS (
                         SELECT 1 FROM jobworker_hosts h, jobworker_jobs q
                         WHERE q.id = $3 AND h.id <> $1 AND h.lease_until > now()
                           AND q.placement <@ h.labels AND NOT (h.id = ANY(q.refused_by))
                     ) AS untried
                 )
                 UPDATE jobworker_jobs j SET
                     refused_by = array_append(j.refused_by, $1::text),
                     state = CASE WHEN other.untried THEN 'queued' ELSE 'failed' END,
                     host = CASE WHEN other.untried THEN NULL ELSE j.host END,
                     generation = CASE WHEN other.untried THEN NULL ELSE j.generation END,
                     info = CASE WHEN other.untried THEN j.info ELSE $4::jsonb END,
                     refusal = CASE WHEN other.untried THEN NULL ELSE $5::jsonb END,
                     ended_us = CASE WHEN other.untried THEN NULL
                         ELSE (extract(epoch FROM clock_timestamp()) * 1000000)::bigint END,
                     updated_at = now()
                 FROM other
                 WHERE {FENCED} AND j.state = 'starting'
                 RETURNING other.untried,
                     pg_notify('{CHANNEL}',
                         CASE WHEN other.untried THEN '{QUEUED}' ELSE j.id::text END)::text"
            ),
            &[
                &fence.host,
                &fence.generation,
                &job.id.as_uuid(),
                &json(OP, &info)?,
                &json(OP, refusal)?,
            ],
        )
        .await
        .map_err(db(OP))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let requeued = row.try_get::<_, bool>(0).map_err(|e| DbError::Row {
        op: OP,
        reason: e.to_string(),
    })?;
    Ok(Some(if requeued {
        Refused::Requeued
    } else {
        Refused::Failed
    }))
}

/// Gives job `id`, claimed by host `fence` but not started (this version
/// cannot read it), back to the queue.
async fn release(client: &Client, fence: &Fence, id: JobId) -> Result<bool, DbError> {
    let changed = client
        .execute(
            &format!(
                "UPDATE jobworker_jobs j SET state = 'queued', host = NULL, generation = NULL,
                     updated_at = now()
                 WHERE {FENCED} AND j.state = 'starting'
                 RETURNING pg_notify('{CHANNEL}', '{QUEUED}')::text"
            ),
            &[&fence.host, &fence.generation, &id.as_uuid()],
        )
        .await
        .map_err(db("giving a job back to the queue"))?;
    Ok(changed > 0)
}

/// Takes the jobs host `fence.host` claimed with an older generation over
/// into `fence`'s (after it registered again: it is reachable, so no job
/// of it is unreachable any more), and returns every job it is starting or
/// running, or that the reaper declared lost after it started: what it
/// must reconcile with its supervisor. (One lost before it was known to
/// start stays FAILED: starting it now would run a job its owner was told
/// had failed.)
pub async fn adopt(client: &Client, fence: &Fence) -> Result<Vec<Job>, DbError> {
    const OP: &str = "reading the host's jobs";
    let rows = client
        .query(
            &format!(
                "UPDATE jobworker_jobs j SET generation = $2, unreachable_since = NULL
                 WHERE j.host = $1
                   AND (j.state IN ('starting', 'running') OR (j.lost AND j.local_id IS NOT NULL))
                   AND EXISTS (SELECT 1 FROM jobworker_hosts h
                               WHERE h.id = $1 AND h.generation = $2)
                 RETURNING {COLUMNS}"
            ),
            &[&fence.host, &fence.generation],
        )
        .await
        .map_err(db(OP))?;
    Ok(readable(OP, &rows).0)
}

/// The advisory lock key of the reaper ("jwreaper" in ASCII): one gateway
/// reaps at a time.
const REAPER_LOCK: i64 = 0x6a77_7265_6170_6572;

/// What a round of the reaper did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Jobs newly marked unreachable.
    pub unreachable: u64,
    /// Jobs declared FAILED, their host lost.
    pub lost: u64,
}

/// One round of the reaper, unless another gateway's is under way: marks
/// the starting and running jobs of every host whose lease ran out
/// unreachable (they may still run there), and declares those unreachable
/// for longer than `grace` FAILED ("host lost"). Nothing is run again.
pub async fn reap(client: &mut Client, grace: std::time::Duration) -> Result<Reaped, DbError> {
    const OP: &str = "reaping the jobs of unreachable hosts";
    let tx = client.transaction().await.map_err(db(OP))?;
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&REAPER_LOCK])
        .await
        .map_err(db(OP))?
        .get(0);
    if !locked {
        return Ok(Reaped::default());
    }
    let unreachable = tx
        .execute(
            &format!(
                "UPDATE jobworker_jobs j SET unreachable_since = now(), updated_at = now()
                 FROM jobworker_hosts h
                 WHERE h.id = j.host AND h.lease_until < now()
                   AND j.state IN ('starting', 'running') AND j.unreachable_since IS NULL
                 RETURNING pg_notify('{CHANNEL}', j.id::text)::text"
            ),
            &[],
        )
        .await
        .map_err(db(OP))?;
    let rows = tx
        .query(
            &format!(
                "SELECT {COLUMNS}, EXTRACT(EPOCH FROM now() - h.lease_until)::float8
                 FROM jobworker_jobs j JOIN jobworker_hosts h ON h.id = j.host
                 WHERE j.state IN ('starting', 'running') AND h.lease_until < now()
                   AND j.unreachable_since < now() - make_interval(secs => $1)
                 FOR UPDATE OF j"
            ),
            &[&grace.as_secs_f64()],
        )
        .await
        .map_err(db(OP))?;
    let mut lost = 0;
    for row in &rows {
        // One this version cannot read is logged and left to a newer one.
        let Some(job) = readable(OP, std::slice::from_ref(row)).0.pop() else {
            continue;
        };
        let since: f64 = row.get(14);
        let mut info = job.info();
        if let Some(local) = job.local_id {
            info.id = local;
        }
        info.state = JobState::Failed;
        info.failure = Some(format!(
            "host lost: host {}'s lease ran out {since:.0}s ago (the job may have run on; \
             the host's own record replaces this if it comes back)",
            job.host.as_deref().unwrap_or("?"),
        ));
        info.ended_at = Some(UnixMicros::now());
        lost += tx
            .execute(
                &format!(
                    "UPDATE jobworker_jobs j SET state = 'failed', lost = true, info = $2,
                         ended_us = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                         updated_at = now()
                     WHERE j.id = $1
                     RETURNING pg_notify('{CHANNEL}', j.id::text)::text"
                ),
                &[&job.id.as_uuid(), &json(OP, &info)?],
            )
            .await
            .map_err(db(OP))?;
    }
    tx.commit().await.map_err(db(OP))?;
    Ok(Reaped { unreachable, lost })
}

/// Subscribes `client`'s connection to [`CHANNEL`].
pub async fn listen(client: &Client) -> Result<(), DbError> {
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(db("listening to the jobs' channel"))
}
