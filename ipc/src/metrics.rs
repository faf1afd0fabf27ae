//! The supervisor's figures, as [`Request::Metrics`](crate::Request::Metrics)
//! answers them: plain counts, gauges and histograms, which the gateway
//! exposes to Prometheus (the supervisor opens no network port). Labels are
//! closed enums, so that no label carries an unbounded value.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::message::{JobState, StopReason, Termination};
use crate::types::Invalid;

/// The upper bounds, in seconds, of the start latency histogram's buckets
/// (request received -> command exec'd).
pub const START_SECONDS_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The upper bounds, in seconds, of the job duration histogram's buckets
/// (command exec'd -> job ended).
pub const DURATION_SECONDS_BUCKETS: [f64; 12] = [
    0.01,
    0.1,
    1.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    24.0 * 3600.0,
];

/// Why a job ended, as a metric's label: a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EndReason {
    /// Its command exited with code 0.
    ExitZero,
    /// Its command exited with another code.
    ExitNonzero,
    /// A signal killed its command (not the OOM killer's, not a stop's).
    Signal,
    /// The OOM killer killed a process of it.
    Oom,
    /// A stop request stopped it.
    StopRequest,
    /// Its time limit stopped it.
    Timeout,
    /// It failed for a reason of the system (see its `failure`).
    System,
}

impl EndReason {
    /// Every reason.
    pub const ALL: [EndReason; 7] = [
        Self::ExitZero,
        Self::ExitNonzero,
        Self::Signal,
        Self::Oom,
        Self::StopRequest,
        Self::Timeout,
        Self::System,
    ];

    /// Why a job ended, from its final state, its stop reason, whether the
    /// OOM killer struck and how its command ended; `None` while it runs.
    pub fn of(
        state: JobState,
        stop_reason: Option<StopReason>,
        oom_killed: bool,
        termination: Option<Termination>,
    ) -> Option<Self> {
        Some(match state {
            JobState::Running => return None,
            JobState::Failed => Self::System,
            JobState::Stopped => match stop_reason {
                Some(StopReason::TimedOut) => Self::Timeout,
                _ => Self::StopRequest,
            },
            JobState::Finished if oom_killed => Self::Oom,
            JobState::Finished => match termination {
                Some(Termination::Exited(0)) => Self::ExitZero,
                Some(Termination::Exited(_)) => Self::ExitNonzero,
                Some(Termination::Signaled(_)) | None => Self::Signal,
            },
        })
    }

    /// The label value: `exit_zero`, `exit_nonzero`, `signal`, `oom`,
    /// `stop_request`, `timeout`, `system`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ExitZero => "exit_zero",
            Self::ExitNonzero => "exit_nonzero",
            Self::Signal => "signal",
            Self::Oom => "oom",
            Self::StopRequest => "stop_request",
            Self::Timeout => "timeout",
            Self::System => "system",
        }
    }
}

/// How many jobs ended in one state for one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedCount {
    /// The final state.
    pub state: JobState,
    /// Why.
    pub reason: EndReason,
    /// How many, since the supervisor started.
    pub count: u64,
}

/// A histogram of durations: a count per bucket of fixed upper bounds (the
/// bounds are this crate's constants, e.g. [`START_SECONDS_BUCKETS`]), and
/// their sum. Bucket counts are not cumulative.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HistogramWire")]
pub struct Histogram {
    buckets: Vec<u64>,
    sum_micros: u64,
}

#[derive(Deserialize)]
struct HistogramWire {
    buckets: Vec<u64>,
    sum_micros: u64,
}

impl TryFrom<HistogramWire> for Histogram {
    type Error = Invalid;

    fn try_from(wire: HistogramWire) -> Result<Self, Invalid> {
        // One bucket per bound, and one beyond the last (+Inf).
        let most = START_SECONDS_BUCKETS
            .len()
            .max(DURATION_SECONDS_BUCKETS.len())
            + 1;
        if wire.buckets.len() > most {
            return Err(Invalid {
                field: "histogram".into(),
                reason: format!("{} buckets, the most is {most}", wire.buckets.len()),
            });
        }
        Ok(Self {
            buckets: wire.buckets,
            sum_micros: wire.sum_micros,
        })
    }
}

impl Histogram {
    /// An empty histogram over `bounds`.
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            buckets: vec![0; bounds.len() + 1],
            sum_micros: 0,
        }
    }

    /// Counts one observation into the bucket of `bounds` it falls in.
    pub fn observe(&mut self, bounds: &[f64], took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = bounds
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(bounds.len());
        if let Some(count) = self.buckets.get_mut(bucket) {
            *count += 1;
            self.sum_micros = self
                .sum_micros
                .saturating_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        }
    }

    /// The count of each bucket (the last one beyond every bound).
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// The sum of the observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        Duration::from_micros(self.sum_micros).as_secs_f64()
    }

    /// The number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Output bytes dropped, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedBytes {
    /// Over the per-job output cap.
    pub output_cap: u64,
    /// The state file system was full (or failing) when the job ended.
    pub disk_full: u64,
}

/// The supervisor's figures since it started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorMetrics {
    /// Its version (the crate's).
    pub version: String,
    /// Jobs whose command was exec'd.
    pub jobs_started: u64,
    /// Starts that failed or were refused after they were authorized.
    pub start_failures: u64,
    /// Jobs that ended, by state and reason (only pairs that occurred).
    pub jobs_ended: Vec<EndedCount>,
    /// Jobs running now.
    pub jobs_running: u64,
    /// Start latency: request received -> command exec'd.
    pub start_seconds: Histogram,
    /// Run time of ended jobs: command exec'd -> job ended.
    pub duration_seconds: Histogram,
    /// Output bytes stored by jobs that ended.
    pub output_bytes: u64,
    /// Output bytes jobs that ended could not store.
    pub output_dropped_bytes: DroppedBytes,
    /// Output streams open now.
    pub followers: u64,
    /// Which kinds of limits the host enforces (a controller missing from
    /// the cgroup subtree is a limit accepted but not enforced).
    pub limits_enforced: crate::message::EnforcedLimits,
    /// How long it has been running, in milliseconds.
    pub uptime_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fall_in_their_bucket() {
        let bounds = [0.001, 0.01];
        let mut h = Histogram::new(&bounds);
        for us in [500, 1000, 2000, 5_000_000] {
            h.observe(&bounds, Duration::from_micros(us));
        }
        assert_eq!(h.buckets(), &[2, 1, 1]);
        assert_eq!(h.count(), 4);
        assert!((h.sum_seconds() - 5.0035).abs() < 1e-9);
    }
}
