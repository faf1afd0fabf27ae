//! The engine's decisions about a job's life, as pure functions of what is
//! known and of the time (passed in, never read here): how a stop
//! escalates, how a job ends, what recovery does with a job found on disk,
//! which ended jobs retention removes and in what order. No I/O happens
//! here: the engine gathers the facts (records, the init's exit record,
//! files), carries out what these decide, and each decision is unit-tested
//! without root.

use std::time::Duration;

use jobworker_ipc::{IpcError, JobState, Termination, TimeoutMs, UnixMicros};

use super::job::Status;
use super::retention::Retention;
use crate::config::Timeouts;
use crate::handoff::ExitRecord;

/// How long the init may take to stop everything after SIGUSR1, before the
/// engine kills the job's cgroup (init included).
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// How long a job's cgroup may take to empty after `cgroup.kill` before a
/// stop gives up.
pub const CGROUP_KILL_WAIT: Duration = Duration::from_secs(30);

/// One step of a stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopStep {
    /// SIGTERM to the init, which forwards it to every process of the job.
    Terminate,
    /// SIGUSR1 to the init, which SIGKILLs every process of the job, drains
    /// the output and records the end.
    KillAll,
    /// `cgroup.kill`: the init itself did not end.
    KillCgroup,
}

/// A stop's escalation: each step, and how long to wait for the job's end
/// before the next; after the last wait the stop fails.
pub fn stop_plan(grace: Duration) -> [(StopStep, Duration); 3] {
    [
        (StopStep::Terminate, grace),
        (StopStep::KillAll, KILL_GRACE),
        (StopStep::KillCgroup, CGROUP_KILL_WAIT),
    ]
}

/// The grace period of a stop: the one asked for, unless it is longer than
/// `max`, which is also the default.
pub fn grace(asked: Option<Duration>, max: Duration) -> Result<Duration, IpcError> {
    match asked {
        None => Ok(max),
        Some(asked) if asked <= max => Ok(asked),
        Some(asked) => Err(IpcError::InvalidArgument {
            field: "grace_period".into(),
            reason: format!(
                "{} ms is longer than this server's maximum of {} ms",
                asked.as_millis(),
                max.as_millis()
            ),
        }),
    }
}

/// The time limit a job gets: the one it asks for, unless that is longer
/// than the maximum (`Err` with the maximum); the default, or the maximum,
/// when it asks for none.
pub fn timeout(asked: Option<TimeoutMs>, limits: Timeouts) -> Result<Option<TimeoutMs>, TimeoutMs> {
    match (asked, limits.max) {
        (Some(asked), Some(max)) if asked > max => Err(max),
        (Some(asked), _) => Ok(Some(asked)),
        (None, max) => Ok(limits.default.or(max)),
    }
}

/// How long a job created at `created_at` with time limit `timeout` may
/// still run at `now`: nothing once its deadline (`created_at + timeout`)
/// has passed, which a supervisor restarted past it finds at once.
pub fn time_left(created_at: UnixMicros, timeout: TimeoutMs, now: UnixMicros) -> Duration {
    let deadline = created_at
        .0
        .saturating_add(timeout.millis().saturating_mul(1000));
    Duration::from_micros(deadline.saturating_sub(now.0))
}

/// Marks a job's status as being stopped, by a caller or by its time limit
/// (`timed_out`), unless it has ended; the first stop's reason stays.
/// Returns whether it had ended.
pub fn stopping(status: &mut Status, timed_out: bool) -> bool {
    if status.state.is_ended() {
        return true;
    }
    if !status.stop_requested {
        status.stop_requested = true;
        status.timed_out = timed_out;
    }
    false
}

/// Ends a job's status. With the init's exit record: how and when the
/// command ended, its output, and FAILED (a failure was recorded before),
/// STOPPED (the stop reached the init while the command ran) or FINISHED (a
/// stop that raced with the command's own end leaves it FINISHED: it ended
/// by itself). Without one: STOPPED by SIGKILL if a stop was asked for (the
/// job was killed through its cgroup), else FAILED saying why; its output
/// is the log's length `log_len`, its end `now`.
pub fn end(status: &mut Status, exit: Option<&ExitRecord>, log_len: u64, now: UnixMicros) {
    status.pid = None;
    let Some(record) = exit else {
        status.ended_at = Some(now);
        status.output_bytes = log_len;
        if status.stop_requested {
            status.termination = Some(Termination::Signaled(libc::SIGKILL));
            status.state = JobState::Stopped;
        } else {
            status.state = JobState::Failed;
            status.failure.get_or_insert_with(|| {
                "the job's init ended without recording how the command ended".into()
            });
        }
        return;
    };
    // A supervisor restarted while the job ran learns its start here.
    status.started_at = status.started_at.or(record.started_at_us);
    status.termination = Some(record.termination);
    status.ended_at = Some(record.ended_at_us);
    status.output_bytes = record.output_bytes;
    status.truncated_bytes = record.truncated_bytes;
    status.disk_full_bytes = record.disk_full_bytes;
    status.state = if status.failure.is_some() {
        JobState::Failed
    } else if record.stopped {
        JobState::Stopped
    } else {
        JobState::Finished
    };
}

/// What recovery found of a job on disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct Found {
    /// Its record says it ended.
    pub ended: bool,
    /// The init left an exit record.
    pub exit_record: bool,
    /// Its init still runs (found by the recorded pid or in its cgroup).
    pub init_runs: bool,
    /// Its record names its init's pid (records of older versions did).
    pub pid_recorded: bool,
}

/// What recovery does with a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Load it as recorded.
    Ended,
    /// Take charge of it again: it runs.
    Adopt,
    /// Settle it now from its exit record: it ended while the supervisor
    /// was down.
    SettleRecorded,
    /// Settle it now without an exit record (see [`end`]), first recording
    /// this failure if it has none and was not being stopped.
    SettleUnrecorded(Option<String>),
}

/// What recovery does with a job it `found`, whose status is `status`.
pub fn recover(found: Found, status: &Status) -> Recovery {
    if found.ended {
        return Recovery::Ended;
    }
    if found.exit_record {
        return Recovery::SettleRecorded;
    }
    if found.init_runs {
        return Recovery::Adopt;
    }
    // A job being stopped whose init is gone was killed through its cgroup:
    // settling records it STOPPED. Any other is FAILED.
    if status.stop_requested || status.failure.is_some() {
        return Recovery::SettleUnrecorded(None);
    }
    Recovery::SettleUnrecorded(Some(if found.pid_recorded {
        "the job's init is gone and left no exit record".into()
    } else {
        "the supervisor stopped while the job was starting, or the job's init is gone and \
         left no exit record"
            .into()
    }))
}

/// The order in which retention considers ended jobs: the longest ended
/// first, the oldest first among those that ended together.
pub fn retention_order(ended_at: UnixMicros, created_at: UnixMicros) -> (UnixMicros, UnixMicros) {
    (ended_at, created_at)
}

/// Why retention removes an ended job, if it does: it ended longer ago than
/// the maximum age, or all jobs take more than the maximum (`total` bytes
/// now). Zero in either setting means no limit.
pub fn expired(
    policy: Retention,
    now: UnixMicros,
    ended_at: UnixMicros,
    total: u64,
) -> Option<(bool, bool)> {
    let too_old = policy.max_age_ms > 0
        && now.0.saturating_sub(ended_at.0) > policy.max_age_ms.saturating_mul(1000);
    let too_big = policy.max_total_bytes > 0 && total > policy.max_total_bytes;
    (too_old || too_big).then_some((too_old, too_big))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobworker_ipc::StopReason;

    fn ms(ms: u64) -> TimeoutMs {
        TimeoutMs::new(ms).unwrap()
    }

    #[test]
    fn a_time_limit_is_the_asked_one_the_default_or_the_maximum() {
        let none = Timeouts::default();
        let max_only = Timeouts {
            default: None,
            max: Some(ms(60_000)),
        };
        let both = Timeouts {
            default: Some(ms(1_000)),
            max: Some(ms(60_000)),
        };
        assert_eq!(timeout(None, none), Ok(None));
        assert_eq!(timeout(Some(ms(5)), none), Ok(Some(ms(5))));
        assert_eq!(timeout(None, max_only), Ok(Some(ms(60_000))));
        assert_eq!(timeout(None, both), Ok(Some(ms(1_000))));
        assert_eq!(timeout(Some(ms(60_000)), both), Ok(Some(ms(60_000))));
        assert_eq!(timeout(Some(ms(60_001)), both), Err(ms(60_000)));
    }

    #[test]
    fn the_deadline_counts_from_the_creation_and_survives_a_restart() {
        let created = UnixMicros(10_000_000);
        let limit = ms(1_500);
        assert_eq!(
            time_left(created, limit, created),
            Duration::from_millis(1_500)
        );
        assert_eq!(
            time_left(created, limit, UnixMicros(11_000_000)),
            Duration::from_millis(500)
        );
        // A supervisor back after the deadline stops the job at once.
        assert_eq!(
            time_left(created, limit, UnixMicros(99_000_000)),
            Duration::ZERO
        );
    }

    #[test]
    fn the_first_stop_gives_the_reason() {
        let mut status = Status::starting();
        assert!(!stopping(&mut status, true));
        assert!(!stopping(&mut status, false));
        status.state = JobState::Stopped;
        assert_eq!(status.stop_reason(), Some(StopReason::TimedOut));
        assert!(stopping(&mut status, false), "it has ended");
        let mut requested = Status::starting();
        stopping(&mut requested, false);
        stopping(&mut requested, true);
        requested.state = JobState::Stopped;
        assert_eq!(requested.stop_reason(), Some(StopReason::Requested));
        // A stop that raced with the command's own end: no stop reason.
        requested.state = JobState::Finished;
        assert_eq!(requested.stop_reason(), None);
    }

    fn record(stopped: bool) -> ExitRecord {
        ExitRecord {
            termination: Termination::Exited(7),
            stopped,
            output_bytes: 12,
            truncated_bytes: 2,
            disk_full_bytes: 0,
            started_at_us: Some(UnixMicros(1_000)),
            ended_at_us: UnixMicros(5_000),
        }
    }

    #[test]
    fn a_stop_escalates_after_the_grace_then_kills_the_cgroup() {
        let plan = stop_plan(Duration::from_secs(5));
        assert_eq!(
            plan,
            [
                (StopStep::Terminate, Duration::from_secs(5)),
                (StopStep::KillAll, KILL_GRACE),
                (StopStep::KillCgroup, CGROUP_KILL_WAIT),
            ]
        );
        let max = Duration::from_secs(10);
        assert_eq!(grace(None, max), Ok(max));
        assert_eq!(grace(Some(Duration::ZERO), max), Ok(Duration::ZERO));
        assert_eq!(grace(Some(max), max), Ok(max));
        let err = grace(Some(Duration::from_millis(10_001)), max).unwrap_err();
        assert_eq!(
            err,
            IpcError::InvalidArgument {
                field: "grace_period".into(),
                reason: "10001 ms is longer than this server's maximum of 10000 ms".into()
            }
        );
    }

    #[test]
    fn a_job_ends_as_its_exit_record_says() {
        let now = UnixMicros(9_000);
        let mut finished = Status::starting();
        finished.stop_requested = true; // raced with the command's own end
        end(&mut finished, Some(&record(false)), 0, now);
        assert_eq!(finished.state, JobState::Finished);
        assert_eq!(finished.termination, Some(Termination::Exited(7)));
        assert_eq!((finished.output_bytes, finished.truncated_bytes), (12, 2));
        assert_eq!(finished.ended_at, Some(UnixMicros(5_000)));
        assert_eq!(
            finished.started_at,
            Some(UnixMicros(1_000)),
            "learnt from the record"
        );

        let mut stopped = Status::starting();
        stopped.started_at = Some(UnixMicros(2_000));
        stopped.pid = Some(42);
        end(&mut stopped, Some(&record(true)), 0, now);
        assert_eq!(stopped.state, JobState::Stopped);
        assert_eq!(
            stopped.started_at,
            Some(UnixMicros(2_000)),
            "its own start is kept"
        );
        assert_eq!(stopped.pid, None);

        let mut failed = Status::starting();
        failed.failure = Some("its record could not be recovered".into());
        end(&mut failed, Some(&record(false)), 0, now);
        assert_eq!(failed.state, JobState::Failed);
    }

    #[test]
    fn a_job_without_an_exit_record_was_killed_or_failed() {
        let now = UnixMicros(9_000);
        let mut killed = Status::starting();
        killed.stop_requested = true;
        end(&mut killed, None, 300, now);
        assert_eq!(killed.state, JobState::Stopped);
        assert_eq!(
            killed.termination,
            Some(Termination::Signaled(libc::SIGKILL))
        );
        assert_eq!((killed.output_bytes, killed.ended_at), (300, Some(now)));

        let mut failed = Status::starting();
        end(&mut failed, None, 0, now);
        assert_eq!(failed.state, JobState::Failed);
        assert!(failed.failure.unwrap().contains("without recording"));
    }

    #[test]
    fn recovery_settles_what_ended_while_it_was_down_and_adopts_what_runs() {
        let running = Status::starting();
        let found = |ended, exit_record, init_runs, pid_recorded| Found {
            ended,
            exit_record,
            init_runs,
            pid_recorded,
        };
        assert_eq!(
            recover(found(true, true, false, false), &running),
            Recovery::Ended
        );
        // Ended while the supervisor was down: its exit record tells how,
        // even if a stale pid's process were found.
        assert_eq!(
            recover(found(false, true, true, true), &running),
            Recovery::SettleRecorded
        );
        assert_eq!(
            recover(found(false, false, true, false), &running),
            Recovery::Adopt
        );
        let Recovery::SettleUnrecorded(Some(gone)) =
            recover(found(false, false, false, true), &running)
        else {
            panic!("a job whose init vanished is failed");
        };
        assert!(
            gone.contains("no exit record") && !gone.contains("starting"),
            "{gone}"
        );
        let Recovery::SettleUnrecorded(Some(starting)) =
            recover(found(false, false, false, false), &running)
        else {
            panic!("a start cut short is failed");
        };
        assert!(
            starting.contains("while the job was starting"),
            "{starting}"
        );
        let mut stopping = Status::starting();
        stopping.stop_requested = true;
        assert_eq!(
            recover(found(false, false, false, true), &stopping),
            Recovery::SettleUnrecorded(None),
            "a job being stopped whose init is gone was killed: STOPPED, not FAILED"
        );
    }

    #[test]
    fn retention_removes_the_longest_ended_first_by_age_or_size() {
        let mut jobs = [
            ("b", UnixMicros(200), UnixMicros(10)),
            ("c", UnixMicros(200), UnixMicros(5)),
            ("a", UnixMicros(100), UnixMicros(50)),
        ];
        jobs.sort_by_key(|(_, ended, created)| retention_order(*ended, *created));
        let order: Vec<_> = jobs.iter().map(|(name, ..)| *name).collect();
        assert_eq!(order, ["a", "c", "b"]);

        let day_ms = 86_400_000;
        let by_age = Retention {
            max_age_ms: day_ms,
            max_total_bytes: 0,
        };
        let now = UnixMicros(10 * day_ms * 1000);
        let two_days_ago = UnixMicros(8 * day_ms * 1000);
        let an_hour_ago = UnixMicros(now.0 - 3_600_000_000);
        assert_eq!(
            expired(by_age, now, two_days_ago, u64::MAX),
            Some((true, false))
        );
        assert_eq!(expired(by_age, now, an_hour_ago, u64::MAX), None);

        let by_size = Retention {
            max_age_ms: 0,
            max_total_bytes: 1000,
        };
        assert_eq!(
            expired(by_size, now, an_hour_ago, 1001),
            Some((false, true))
        );
        assert_eq!(expired(by_size, now, two_days_ago, 1000), None);
        assert_eq!(
            expired(Retention::default(), now, UnixMicros(0), u64::MAX),
            None
        );
    }
}
