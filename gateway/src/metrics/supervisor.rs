//! The supervisor's figures at one scrape: the answer to the ipc
//! `Request::Metrics` that the gateway makes on its own behalf, encoded by a
//! prometheus-client [`Collector`]. When the supervisor did not answer, only
//! `jobworker_supervisor_up 0` is exposed: a scrape never fails for it.
//!
//! Figures about jobs are `jobworker_jobs_*`, `jobworker_job_*` and
//! `jobworker_output_*`; figures about the supervisor process itself are
//! `jobworker_supervisor_*`. Counters count since the supervisor started
//! (Prometheus sees a restart as a counter reset).

use std::fmt;

use jobworker_ipc::metrics::{DURATION_SECONDS_BUCKETS, Histogram, START_SECONDS_BUCKETS};
use jobworker_ipc::{EndReason, JobState, StopReason, SupervisorMetrics, Termination};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// The supervisor's answer at one scrape; `None` if it gave none.
#[derive(Debug)]
pub struct Snapshot(pub Option<SupervisorMetrics>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        one(
            &mut encoder,
            "jobworker_supervisor_up",
            "Whether the supervisor answered the gateway at this scrape (1) or not (0).",
            None,
            &ConstGauge::new(i64::from(self.0.is_some())),
        )?;
        let Some(m) = &self.0 else {
            return Ok(());
        };
        let e = &mut encoder;
        labelled(
            e,
            "jobworker_supervisor_build_info",
            "The supervisor's version (always 1).",
            None,
            &[([("version", m.version.as_str())], ConstGauge::new(1))],
        )?;
        one(
            e,
            "jobworker_supervisor_uptime",
            "How long the supervisor has been running.",
            Some(&Unit::Seconds),
            &ConstGauge::new(std::time::Duration::from_millis(m.uptime_ms).as_secs_f64()),
        )?;
        one(
            e,
            "jobworker_jobs_started",
            "Jobs whose command was started.",
            None,
            &ConstCounter::new(m.jobs_started),
        )?;
        one(
            e,
            "jobworker_jobs_start_failures",
            "Job starts that failed or were refused after they were authorized.",
            None,
            &ConstCounter::new(m.start_failures),
        )?;
        let ended: Vec<_> = ended_counts(m)
            .into_iter()
            .map(|((state, reason), count)| {
                (
                    [("state", state.as_str()), ("reason", reason.as_str())],
                    ConstCounter::new(count),
                )
            })
            .collect();
        labelled(
            e,
            "jobworker_jobs_ended",
            "Jobs that ended, by final state and why.",
            None,
            &ended,
        )?;
        one(
            e,
            "jobworker_jobs_running",
            "Jobs running now.",
            None,
            &ConstGauge::new(m.jobs_running),
        )?;
        histogram(
            e,
            "jobworker_job_start_duration",
            "Time from a start request to its command's exec.",
            &START_SECONDS_BUCKETS,
            &m.start_seconds,
        )?;
        histogram(
            e,
            "jobworker_job_duration",
            "Run time of jobs that ended, from their command's exec to their end.",
            &DURATION_SECONDS_BUCKETS,
            &m.duration_seconds,
        )?;
        one(
            e,
            "jobworker_output",
            "Output bytes stored by jobs that ended.",
            Some(&Unit::Bytes),
            &ConstCounter::new(m.output_bytes),
        )?;
        labelled(
            e,
            "jobworker_output_dropped",
            "Output bytes that jobs that ended could not store, by cause (over the per-job \
             cap, or the state file system full).",
            Some(&Unit::Bytes),
            &[
                (
                    [("cause", "output_cap")],
                    ConstCounter::new(m.output_dropped_bytes.output_cap),
                ),
                (
                    [("cause", "disk_full")],
                    ConstCounter::new(m.output_dropped_bytes.disk_full),
                ),
            ],
        )?;
        one(
            e,
            "jobworker_supervisor_output_followers",
            "Output streams open now.",
            None,
            &ConstGauge::new(m.followers),
        )?;
        let enforced = m.limits_enforced;
        let limits = [
            ("cpu", enforced.cpu),
            ("memory", enforced.memory),
            ("io", enforced.io),
            ("pids", enforced.pids),
        ]
        .map(|(limit, on)| ([("limit", limit)], ConstGauge::new(i64::from(on))));
        labelled(
            e,
            "jobworker_supervisor_limit_enforced",
            "Whether this host enforces each kind of job limit (0: accepted, not enforced).",
            None,
            &limits,
        )
    }
}

/// Every (state, reason) a job can end with, by state and then reason, each
/// with its count (0 until one occurred): a series exists before its first
/// event, so that rates and alerts see it go from 0 to 1.
fn ended_counts(m: &SupervisorMetrics) -> Vec<((JobState, EndReason), u64)> {
    let mut counts = Vec::new();
    for state in [JobState::Finished, JobState::Stopped, JobState::Failed] {
        for reason in EndReason::ALL {
            if can_end(state, reason) {
                counts.push(((state, reason), 0));
            }
        }
    }
    for ended in &m.jobs_ended {
        let key = (ended.state, ended.reason);
        match counts.iter_mut().find(|(k, _)| *k == key) {
            Some((_, count)) => *count += ended.count,
            None => counts.push((key, ended.count)),
        }
    }
    counts
}

/// Whether a job can end in `state` for `reason`, by the one function that
/// tells why a job ended.
fn can_end(state: JobState, reason: EndReason) -> bool {
    let stops = [
        None,
        Some(StopReason::Requested),
        Some(StopReason::TimedOut),
    ];
    let terminations = [
        None,
        Some(Termination::Exited(0)),
        Some(Termination::Exited(1)),
        Some(Termination::Signaled(9)),
    ];
    stops.into_iter().any(|stop| {
        [false, true].into_iter().any(|oom| {
            terminations
                .into_iter()
                .any(|end| EndReason::of(state, stop, oom, end) == Some(reason))
        })
    })
}

/// A metric of no labels.
fn one(
    encoder: &mut DescriptorEncoder<'_>,
    name: &'static str,
    help: &str,
    unit: Option<&Unit>,
    metric: &impl EncodeMetric,
) -> fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// A metric with one series per label set.
fn labelled<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &'static str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(L, M)],
) -> fmt::Result {
    let Some((_, first)) = series.first() else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, unit, first.metric_type())?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// A histogram in seconds over `bounds`, from the supervisor's per-bucket
/// counts (prometheus-client's encoder makes them cumulative). Counts
/// beyond the known bounds (a supervisor with more buckets) fall in +Inf.
fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &'static str,
    help: &str,
    bounds: &[f64],
    histogram: &Histogram,
) -> fmt::Result {
    let counts = histogram.buckets();
    let mut buckets: Vec<(f64, u64)> = bounds
        .iter()
        .enumerate()
        .map(|(i, &bound)| (bound, counts.get(i).copied().unwrap_or(0)))
        .collect();
    buckets.push((f64::INFINITY, counts.iter().skip(bounds.len()).sum()));
    encoder
        .encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(histogram.sum_seconds(), histogram.count(), &buckets, None)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jobworker_ipc::message::EnforcedLimits;
    use jobworker_ipc::metrics::{DroppedBytes, EndedCount};

    use super::*;
    use crate::metrics::Metrics;

    fn sample() -> SupervisorMetrics {
        let mut start_seconds = Histogram::new(&START_SECONDS_BUCKETS);
        for ms in [1, 1, 3, 7000] {
            start_seconds.observe(&START_SECONDS_BUCKETS, Duration::from_millis(ms));
        }
        SupervisorMetrics {
            version: "9.8.7".into(),
            jobs_started: 5,
            start_failures: 1,
            jobs_ended: vec![
                EndedCount {
                    state: JobState::Finished,
                    reason: EndReason::ExitNonzero,
                    count: 2,
                },
                EndedCount {
                    state: JobState::Stopped,
                    reason: EndReason::Timeout,
                    count: 1,
                },
            ],
            jobs_running: 2,
            start_seconds,
            duration_seconds: Histogram::default(),
            output_bytes: 1234,
            output_dropped_bytes: DroppedBytes {
                output_cap: 10,
                disk_full: 20,
            },
            followers: 3,
            limits_enforced: EnforcedLimits {
                cpu: true,
                memory: true,
                io: false,
                pids: true,
            },
            uptime_ms: 61_500,
        }
    }

    #[test]
    fn an_unreachable_supervisor_is_down_and_nothing_else() {
        let text = Metrics::new().render(None);
        assert!(text.contains("jobworker_supervisor_up 0\n"), "{text}");
        assert!(!text.contains("jobworker_jobs"), "{text}");
    }

    #[test]
    fn a_snapshot_is_exposed_in_full() {
        let text = Metrics::new().render(Some(sample()));
        for line in [
            "jobworker_supervisor_up 1\n",
            "jobworker_supervisor_build_info{version=\"9.8.7\"} 1\n",
            "jobworker_supervisor_uptime_seconds 61.5\n",
            "# TYPE jobworker_jobs_started counter\n",
            "jobworker_jobs_started_total 5\n",
            "jobworker_jobs_start_failures_total 1\n",
            "jobworker_jobs_ended_total{state=\"finished\",reason=\"exit_nonzero\"} 2\n",
            "jobworker_jobs_ended_total{state=\"stopped\",reason=\"timeout\"} 1\n",
            "jobworker_jobs_running 2\n",
            "jobworker_job_start_duration_seconds_count 4\n",
            "jobworker_job_start_duration_seconds_sum 7.005\n",
            "jobworker_job_start_duration_seconds_bucket{le=\"0.001\"} 2\n",
            "jobworker_job_start_duration_seconds_bucket{le=\"0.002\"} 2\n",
            "jobworker_job_start_duration_seconds_bucket{le=\"0.005\"} 3\n",
            "jobworker_job_start_duration_seconds_bucket{le=\"1.0\"} 3\n",
            "jobworker_job_start_duration_seconds_bucket{le=\"5.0\"} 3\n",
            "jobworker_job_start_duration_seconds_bucket{le=\"+Inf\"} 4\n",
            "jobworker_job_duration_seconds_count 0\n",
            "jobworker_job_duration_seconds_bucket{le=\"+Inf\"} 0\n",
            "# TYPE jobworker_output_bytes counter\n",
            "jobworker_output_bytes_total 1234\n",
            "jobworker_output_dropped_bytes_total{cause=\"output_cap\"} 10\n",
            "jobworker_output_dropped_bytes_total{cause=\"disk_full\"} 20\n",
            "jobworker_supervisor_output_followers 3\n",
            "jobworker_supervisor_limit_enforced{limit=\"cpu\"} 1\n",
            "jobworker_supervisor_limit_enforced{limit=\"io\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn every_possible_end_has_a_series() {
        let text = Metrics::new().render(Some(sample()));
        let ended: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("jobworker_jobs_ended_total{"))
            .collect();
        assert_eq!(
            ended,
            [
                "jobworker_jobs_ended_total{state=\"finished\",reason=\"exit_zero\"} 0",
                "jobworker_jobs_ended_total{state=\"finished\",reason=\"exit_nonzero\"} 2",
                "jobworker_jobs_ended_total{state=\"finished\",reason=\"signal\"} 0",
                "jobworker_jobs_ended_total{state=\"finished\",reason=\"oom\"} 0",
                "jobworker_jobs_ended_total{state=\"stopped\",reason=\"stop_request\"} 0",
                "jobworker_jobs_ended_total{state=\"stopped\",reason=\"timeout\"} 1",
                "jobworker_jobs_ended_total{state=\"failed\",reason=\"system\"} 0",
            ]
        );
    }
}
