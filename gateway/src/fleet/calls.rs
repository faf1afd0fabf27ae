//! The job service's calls over the fleet. `StartJob` queues the job in the
//! database and waits (at most `start_wait`) for a host to start it;
//! `GetJob` and `ListJobs` read the database, with the owner scoping in the
//! query; `StopJob` takes a queued job off the queue (it never runs) and
//! stops a running one where it runs; `StreamOutput` waits for a queued
//! job to start, then reads its output where it runs. Roles and ownership
//! are `jobworker_ipc::policy`'s, as on one host: another user's job is
//! NOT_FOUND. A job that runs on another host is answered by that host's
//! gateway.

use std::time::{Duration, Instant};

use jobworker_fleet::DbError;
use jobworker_fleet::jobs::{self, Filter, Job, State};
use jobworker_ipc::policy::{self, Action, Actor};
use jobworker_ipc::{
    GraceMs, Identity, IpcError, JobId, JobInfo, JobSpec, Labels, Owner, Request, Response,
    UnixMicros,
};
use jobworker_proto::v1;
use tokio::sync::{broadcast, watch};
use tonic::Status;

use super::{Fleet, Notice};
use crate::convert::{self, ListQuery};

/// How often a caller waiting for a job's change reads the database again
/// when no notice came (the listening connection may be down).
const POLL: Duration = Duration::from_millis(250);

/// How long a stop waits for a claimed job to start before it gives up.
const STARTING_WAIT: Duration = Duration::from_secs(30);

/// A job of this host as callers see it: under its fleet id and creation
/// time, on this host.
#[derive(Clone, Debug)]
pub struct Shown {
    id: JobId,
    created_at: UnixMicros,
    host: String,
}

impl Shown {
    /// The job of the supervisor's `info`, as callers see it.
    pub fn job(&self, mut info: JobInfo) -> v1::Job {
        info.id = self.id;
        info.created_at = self.created_at;
        let mut job = v1::Job::from(info);
        job.host.clone_from(&self.host);
        job
    }
}

/// Where a job's output is to be read.
pub enum Place {
    /// On this host's supervisor, as `local`.
    Here {
        /// Its id there.
        local: JobId,
        /// How callers see it.
        shown: Shown,
    },
    /// Nowhere yet: it is queued (and the caller does not follow).
    Queued(Box<v1::Job>),
    /// On another host.
    Elsewhere {
        /// That host's id.
        host: String,
    },
}

/// What a stop came to.
pub enum Stopped {
    /// The job as it stands after the stop.
    Job(Box<v1::Job>),
    /// It runs on another host, whose gateway stops it.
    Elsewhere {
        /// That host's id.
        host: String,
    },
}

/// What a `GetJob` came to.
pub enum Got {
    /// The job.
    Job(Box<v1::Job>),
    /// It runs on another host, whose gateway has it live; `recorded` is
    /// the database's, for when that gateway does not answer.
    Elsewhere {
        /// That host's id.
        host: String,
        /// The job as the database holds it.
        recorded: Box<v1::Job>,
    },
}

/// A job as callers see it.
pub fn view(job: &Job) -> v1::Job {
    let mut shown = v1::Job::from(job.info());
    if job.state.is_waiting() && !job.unreachable {
        shown.state = v1::JobState::Queued.into();
    } else {
        shown.host = job.host.clone().unwrap_or_default();
    }
    shown.host_unreachable = job.unreachable;
    shown
}

/// UNAVAILABLE for a database that could not be reached (or failed).
pub(super) fn unavailable(e: &dyn std::fmt::Display) -> Status {
    tracing::warn!(error = %e, "fleet: a call could not use the database");
    Status::unavailable(
        "the fleet's database is unreachable: running jobs are not affected; try again later",
    )
}

/// UNAVAILABLE for a pooled connection not had: the database is away, or
/// every connection of the pool is busy.
pub(super) fn no_connection(e: &deadpool_postgres::PoolError) -> Status {
    match e {
        deadpool_postgres::PoolError::Timeout(_) => {
            tracing::warn!(error = %e, "fleet: every database connection of the pool was busy");
            Status::unavailable(
                "the fleet's database is busy or unreachable: running jobs are not affected; \
                 try again later",
            )
        }
        _ => unavailable(e),
    }
}

/// The status of a database error.
pub(super) fn db_status(e: &DbError) -> Status {
    if e.unreachable() {
        return unavailable(e);
    }
    tracing::error!(error = %e, "fleet: the database refused a call's query");
    match e {
        DbError::Postgres { .. } => Status::internal(
            "the fleet's database refused this gateway's query; the gateway's log says why",
        ),
        DbError::Row { .. } => {
            Status::internal("the fleet's database holds a job this gateway cannot read")
        }
    }
}

/// Whether `identity` may do `action` on `job` (NOT_FOUND if not its own).
fn authorize(identity: &Identity, action: Action, job: &Job) -> Result<(), Status> {
    let owner = Owner::Remote(job.owner.user.clone());
    policy::authorize(Actor::Remote(identity), action, Some((job.id, &owner)))
        .map_err(|e| convert::status_of(&e))
}

impl Fleet {
    /// Job `id`, or NOT_FOUND.
    async fn read(&self, id: JobId) -> Result<Job, Status> {
        let db = self.db().await.map_err(|e| no_connection(&e))?;
        jobs::get(&db, id)
            .await
            .map_err(|e| db_status(&e))?
            .ok_or_else(|| convert::status_of(&IpcError::NotFound { job: id }))
    }

    /// Waits until job `id` may have changed: its notice, a lag, [`POLL`],
    /// or `until`, whichever comes first.
    async fn changed(notices: &mut broadcast::Receiver<Notice>, id: JobId, until: Instant) {
        let wait = until.saturating_duration_since(Instant::now()).min(POLL);
        let _ = tokio::time::timeout(wait, async {
            loop {
                match notices.recv().await {
                    Ok(Notice::Changed(changed)) if changed == id => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    // The lease's session ended: poll.
                    Err(broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                    }
                }
            }
        })
        .await;
    }

    /// Queues a job for `identity` and waits (at most `start_wait`) for a
    /// host to start it: the job as it stands then, or the refusal of the
    /// host's supervisor (as one host would answer it).
    pub async fn start_job(
        &self,
        identity: &Identity,
        spec: JobSpec,
        placement: Labels,
    ) -> Result<v1::Job, Status> {
        let mut notices = self.notices.subscribe();
        let id = {
            let db = self.db().await.map_err(|e| no_connection(&e))?;
            if !placement.is_empty()
                && !jobworker_fleet::hosts::any_carries(&db, &placement)
                    .await
                    .map_err(|e| db_status(&e))?
            {
                return Err(Status::failed_precondition(format!(
                    "no host of the fleet carries the labels of the placement ({placement}): an \
                     admin's `jobctl hosts` lists the hosts and their labels"
                )));
            }
            jobs::enqueue(&db, identity, &spec, &placement)
                .await
                .map_err(|e| db_status(&e))?
                .0
        };
        let deadline = Instant::now() + self.config.start_wait;
        loop {
            let job = self.read(id).await?;
            if !job.state.is_waiting() {
                if let Some(refusal) = &job.refusal {
                    return Err(convert::status_of(refusal));
                }
                return Ok(view(&job));
            }
            if Instant::now() >= deadline {
                return Ok(view(&job));
            }
            Self::changed(&mut notices, id, deadline).await;
        }
    }

    /// The fleet's hosts.
    pub async fn list_hosts(&self) -> Result<v1::ListHostsResponse, Status> {
        let db = self.db().await.map_err(|e| no_connection(&e))?;
        let hosts = jobworker_fleet::hosts::list(&db)
            .await
            .map_err(|e| db_status(&e))?;
        Ok(v1::ListHostsResponse {
            hosts: hosts.into_iter().map(convert::host).collect(),
        })
    }

    /// Job `id` as `identity` may see it: one running here as its
    /// supervisor sees it now; one running on another host as the
    /// database last heard of it, with that host to ask for it now.
    pub async fn get_job(&self, identity: &Identity, id: JobId) -> Result<Got, Status> {
        let job = self.read(id).await?;
        authorize(identity, Action::Get, &job)?;
        // Otherwise (or when the supervisor does not answer), the
        // database's record.
        if let Some((local, shown)) = self.here(&job)
            && let Ok(Response::Job(info)) = self
                .supervisor
                .call(identity, Request::GetJob { job: local })
                .await
        {
            return Ok(Got::Job(Box::new(shown.job(*info))));
        }
        let recorded = Box::new(view(&job));
        Ok(match &job.host {
            Some(host)
                if job.state == State::Running && !job.unreachable && host != self.host_id() =>
            {
                Got::Elsewhere {
                    host: host.clone(),
                    recorded,
                }
            }
            _ => Got::Job(recorded),
        })
    }

    /// A page of the jobs `identity` may see, across the fleet.
    pub async fn list_jobs(
        &self,
        identity: &Identity,
        query: ListQuery,
    ) -> Result<v1::ListJobsResponse, Status> {
        let states: &[State] = match query.state {
            None | Some(v1::JobState::Unspecified) => &[],
            Some(v1::JobState::Queued) => &[State::Queued, State::Starting],
            Some(v1::JobState::Running) => &[State::Running],
            Some(v1::JobState::Stopped) => &[State::Stopped],
            Some(v1::JobState::Finished) => &[State::Finished],
            Some(v1::JobState::Failed) => &[State::Failed],
        };
        let owner = (!policy::sees_all(Actor::Remote(identity))).then_some(&identity.user);
        let filter = Filter {
            owner,
            states,
            labels: Some(&query.labels),
        };
        let db = self.db().await.map_err(|e| no_connection(&e))?;
        let limit = usize::try_from(query.limit.get()).unwrap_or(usize::MAX);
        let (jobs, next) = jobs::list(&db, &filter, limit, query.after)
            .await
            .map_err(|e| db_status(&e))?;
        Ok(v1::ListJobsResponse {
            jobs: jobs.iter().map(view).collect(),
            next_page_token: next.as_ref().map(convert::page_token).unwrap_or_default(),
        })
    }

    /// Stops job `id`: a queued one leaves the queue and never runs; one
    /// being started is stopped once started; one running here is stopped
    /// here, one running elsewhere is left to its host's gateway.
    pub async fn stop_job(
        &self,
        identity: &Identity,
        id: JobId,
        grace: Option<GraceMs>,
    ) -> Result<Stopped, Status> {
        let mut notices = self.notices.subscribe();
        let deadline = Instant::now() + STARTING_WAIT;
        loop {
            let job = self.read(id).await?;
            authorize(identity, Action::Stop, &job)?;
            match job.state {
                State::Queued => {
                    let db = self.db().await.map_err(|e| no_connection(&e))?;
                    if let Some(stopped) = jobs::stop_queued(&db, id)
                        .await
                        .map_err(|e| db_status(&e))?
                    {
                        return Ok(Stopped::Job(Box::new(view(&stopped))));
                    }
                    // A host claimed it meanwhile: stop it there.
                }
                State::Starting => {
                    if Instant::now() >= deadline {
                        return Err(Status::unavailable(format!(
                            "host {} claimed the job but has not started it for {}s; try again \
                             later",
                            job.host.as_deref().unwrap_or("?"),
                            STARTING_WAIT.as_secs()
                        )));
                    }
                    Self::changed(&mut notices, id, deadline).await;
                }
                State::Running => return self.stop_running(identity, &job, grace).await,
                State::Stopped | State::Finished | State::Failed => {
                    return Ok(Stopped::Job(Box::new(view(&job))));
                }
            }
        }
    }

    /// Stops a running job here, or says where it runs.
    async fn stop_running(
        &self,
        identity: &Identity,
        job: &Job,
        grace: Option<GraceMs>,
    ) -> Result<Stopped, Status> {
        let Some((local, shown)) = self.here(job) else {
            return Ok(Stopped::Elsewhere {
                host: job.host.clone().unwrap_or_default(),
            });
        };
        let info = match self
            .supervisor
            .call(identity, Request::StopJob { job: local, grace })
            .await?
        {
            Response::Job(info) => *info,
            Response::Error(e) => return Err(convert::status_of(&e)),
            other => {
                return Err(Status::internal(format!(
                    "the job supervisor sent an unexpected answer ({})",
                    other.name()
                )));
            }
        };
        // The agent records it too, when its follower sees the end; this
        // makes the database say so before the call returns.
        if let (Some(fence), Ok(db)) = (self.fence(), self.db().await)
            && let Err(e) = jobs::report(&db, &fence, job.id, &info).await
        {
            tracing::warn!(job = %job.id, error = %e, "fleet: recording a stopped job");
        }
        Ok(Stopped::Job(Box::new(shown.job(info))))
    }

    /// Where `identity` reads job `id`'s output: a queued job is waited
    /// for when the caller follows (until the gateway stops), and shown as
    /// it is when not.
    pub async fn locate(
        &self,
        identity: &Identity,
        id: JobId,
        follow: bool,
        mut stopping: watch::Receiver<bool>,
    ) -> Result<Place, Status> {
        let mut notices = self.notices.subscribe();
        loop {
            let job = self.read(id).await?;
            authorize(identity, Action::Stream, &job)?;
            if !job.state.is_waiting() {
                return Ok(match self.here(&job) {
                    Some((local, shown)) => Place::Here { local, shown },
                    None if job.local_id.is_none() => Place::Queued(Box::new(view(&job))),
                    None => Place::Elsewhere {
                        host: job.host.clone().unwrap_or_default(),
                    },
                });
            }
            if !follow {
                return Ok(Place::Queued(Box::new(view(&job))));
            }
            tokio::select! {
                _ = stopping.wait_for(|stopping| *stopping) => {
                    return Err(Status::unavailable(
                        "the gateway is stopping (a restart, or an upgrade): the job is still \
                         queued; follow it again",
                    ));
                }
                () = Self::changed(&mut notices, id, Instant::now() + POLL) => {}
            }
        }
    }

    /// The job's id on this host's supervisor and how callers see it, if it
    /// runs (or ran) here.
    fn here(&self, job: &Job) -> Option<(JobId, Shown)> {
        let local = job.local_id?;
        (job.host.as_deref() == Some(self.host_id())).then(|| {
            (
                local,
                Shown {
                    id: job.id,
                    created_at: job.created_at,
                    host: self.host_id().to_owned(),
                },
            )
        })
    }
}
