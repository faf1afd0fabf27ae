//! The engine's figures, as the metrics request reads them: counts kept as
//! jobs start and end (since this supervisor started; Prometheus takes a
//! restart's reset in its stride), gauges read when asked. Cheap to keep: a
//! short lock per start and per end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jobworker_ipc::EndReason;
use jobworker_ipc::metrics::{
    DURATION_SECONDS_BUCKETS, DroppedBytes, EndedCount, Histogram, START_SECONDS_BUCKETS,
};

use super::job::Status;

/// The counts, behind one lock.
#[derive(Debug)]
struct Counts {
    jobs_started: u64,
    start_failures: u64,
    jobs_ended: Vec<EndedCount>,
    start_seconds: Histogram,
    duration_seconds: Histogram,
    output_bytes: u64,
    output_dropped: DroppedBytes,
}

/// What the engine counts.
#[derive(Debug)]
pub struct Figures {
    counts: Mutex<Counts>,
    followers: Arc<AtomicU64>,
}

impl Default for Figures {
    fn default() -> Self {
        Self {
            counts: Mutex::new(Counts {
                jobs_started: 0,
                start_failures: 0,
                jobs_ended: Vec::new(),
                start_seconds: Histogram::new(&START_SECONDS_BUCKETS),
                duration_seconds: Histogram::new(&DURATION_SECONDS_BUCKETS),
                output_bytes: 0,
                output_dropped: DroppedBytes::default(),
            }),
            followers: Arc::default(),
        }
    }
}

/// The figures as they stand.
#[derive(Debug)]
pub struct Snapshot {
    /// Jobs whose command was exec'd.
    pub jobs_started: u64,
    /// Starts that failed or were refused.
    pub start_failures: u64,
    /// Ended jobs by state and reason.
    pub jobs_ended: Vec<EndedCount>,
    /// Request -> exec.
    pub start_seconds: Histogram,
    /// Exec -> end.
    pub duration_seconds: Histogram,
    /// Output stored by ended jobs.
    pub output_bytes: u64,
    /// Output ended jobs could not store.
    pub output_dropped: DroppedBytes,
    /// Follow streams open now.
    pub followers: u64,
}

impl Figures {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A job's command was exec'd `took` after its request arrived.
    pub fn started(&self, took: Duration) {
        let mut counts = self.counts();
        counts.jobs_started += 1;
        counts.start_seconds.observe(&START_SECONDS_BUCKETS, took);
    }

    /// A start failed or was refused.
    pub fn start_failed(&self) {
        self.counts().start_failures += 1;
    }

    /// A job ended with `status`.
    pub fn ended(&self, status: &Status) {
        let Some(reason) = EndReason::of(
            status.state,
            status.stop_reason(),
            status.oom_killed,
            status.termination,
        ) else {
            return;
        };
        let mut counts = self.counts();
        match counts
            .jobs_ended
            .iter_mut()
            .find(|c| (c.state, c.reason) == (status.state, reason))
        {
            Some(count) => count.count += 1,
            None => counts.jobs_ended.push(EndedCount {
                state: status.state,
                reason,
                count: 1,
            }),
        }
        if let (Some(started), Some(ended)) = (status.started_at, status.ended_at) {
            let ran = Duration::from_micros(ended.0.saturating_sub(started.0));
            counts
                .duration_seconds
                .observe(&DURATION_SECONDS_BUCKETS, ran);
        }
        let dropped = status
            .truncated_bytes
            .saturating_add(status.disk_full_bytes);
        let stored = status.output_bytes.saturating_sub(dropped);
        counts.output_bytes = counts.output_bytes.saturating_add(stored);
        let by_cause = &mut counts.output_dropped;
        by_cause.output_cap = by_cause.output_cap.saturating_add(status.truncated_bytes);
        by_cause.disk_full = by_cause.disk_full.saturating_add(status.disk_full_bytes);
    }

    /// Counts a follower for as long as the returned guard lives.
    pub fn follower(&self) -> Follower {
        self.followers.fetch_add(1, Ordering::Relaxed);
        Follower(Arc::clone(&self.followers))
    }

    /// The figures as they stand.
    pub fn snapshot(&self) -> Snapshot {
        let counts = self.counts();
        let mut jobs_ended = counts.jobs_ended.clone();
        jobs_ended.sort_by_key(|c| (c.state.as_str(), c.reason));
        Snapshot {
            jobs_started: counts.jobs_started,
            start_failures: counts.start_failures,
            jobs_ended,
            start_seconds: counts.start_seconds.clone(),
            duration_seconds: counts.duration_seconds.clone(),
            output_bytes: counts.output_bytes,
            output_dropped: counts.output_dropped,
            followers: self.followers.load(Ordering::Relaxed),
        }
    }
}

/// One follower, counted while it lives.
#[derive(Debug)]
pub struct Follower(Arc<AtomicU64>);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use jobworker_ipc::{JobState, Termination, UnixMicros};

    use super::*;

    fn ended(state: JobState, termination: Termination, timed_out: bool) -> Status {
        let mut status = Status::starting();
        status.state = state;
        status.termination = Some(termination);
        status.stop_requested = state == JobState::Stopped;
        status.timed_out = timed_out;
        status.started_at = Some(UnixMicros(1_000_000));
        status.ended_at = Some(UnixMicros(3_000_000));
        status.output_bytes = 100;
        status.truncated_bytes = 40;
        status
    }

    #[test]
    fn ends_are_counted_by_state_and_reason() {
        let figures = Figures::default();
        figures.ended(&ended(JobState::Finished, Termination::Exited(0), false));
        figures.ended(&ended(JobState::Finished, Termination::Exited(0), false));
        figures.ended(&ended(JobState::Finished, Termination::Exited(3), false));
        figures.ended(&ended(JobState::Stopped, Termination::Signaled(15), true));
        figures.ended(&ended(JobState::Stopped, Termination::Signaled(15), false));
        figures.ended(&Status::starting()); // running: not counted
        let snapshot = figures.snapshot();
        let count = |state, reason| {
            snapshot
                .jobs_ended
                .iter()
                .find(|c| (c.state, c.reason) == (state, reason))
                .map(|c| c.count)
        };
        assert_eq!(count(JobState::Finished, EndReason::ExitZero), Some(2));
        assert_eq!(count(JobState::Finished, EndReason::ExitNonzero), Some(1));
        assert_eq!(count(JobState::Stopped, EndReason::Timeout), Some(1));
        assert_eq!(count(JobState::Stopped, EndReason::StopRequest), Some(1));
        assert_eq!(snapshot.duration_seconds.count(), 5);
        assert!((snapshot.duration_seconds.sum_seconds() - 10.0).abs() < 1e-9);
        assert_eq!(
            (snapshot.output_bytes, snapshot.output_dropped.output_cap),
            (300, 200)
        );
    }

    #[test]
    fn followers_are_counted_while_they_live() {
        let figures = Figures::default();
        let (a, b) = (figures.follower(), figures.follower());
        assert_eq!(figures.snapshot().followers, 2);
        drop(a);
        assert_eq!(figures.snapshot().followers, 1);
        drop(b);
        assert_eq!(figures.snapshot().followers, 0);
    }
}
