//! The contract's job beside the ipc's: conversions both ways, next to the
//! generated types, so that the gateway (ipc -> proto) and jobctl (proto ->
//! ipc) say them once. Times are `google.protobuf.Timestamp`s of the ipc's
//! Unix microseconds; CPU time a `google.protobuf.Duration` of its
//! microseconds. A proto value the ipc model cannot hold (an unknown state,
//! an owner or command that does not validate) is an [`Invalid`] naming the
//! field.

use jobworker_ipc::{
    Args, Command, EnforcedLimits, Invalid, JobInfo, JobState, Labels, Limits, StopReason,
    Termination, TimeoutMs, UnixMicros, Usage,
};

use crate::v1;

impl From<JobState> for v1::JobState {
    fn from(state: JobState) -> Self {
        match state {
            JobState::Running => Self::Running,
            JobState::Stopped => Self::Stopped,
            JobState::Finished => Self::Finished,
            JobState::Failed => Self::Failed,
        }
    }
}

impl TryFrom<v1::JobState> for JobState {
    type Error = Invalid;

    fn try_from(state: v1::JobState) -> Result<Self, Invalid> {
        match state {
            v1::JobState::Running => Ok(Self::Running),
            v1::JobState::Stopped => Ok(Self::Stopped),
            v1::JobState::Finished => Ok(Self::Finished),
            v1::JobState::Failed => Ok(Self::Failed),
            v1::JobState::Unspecified => Err(invalid("state", "is unspecified")),
            v1::JobState::Queued => Err(invalid(
                "state",
                "QUEUED is a fleet's state, which no job of one host's supervisor has",
            )),
        }
    }
}

impl From<Limits> for v1::Limits {
    fn from(limits: Limits) -> Self {
        Self {
            cpu_millicores: limits.cpu_millicores(),
            memory_bytes: limits.memory_bytes(),
            io_read_bytes_per_sec: limits.io_read_bps(),
            io_write_bytes_per_sec: limits.io_write_bps(),
            pids: limits.pids(),
        }
    }
}

impl TryFrom<v1::Limits> for Limits {
    type Error = Invalid;

    fn try_from(limits: v1::Limits) -> Result<Self, Invalid> {
        Limits::new(
            limits.cpu_millicores,
            limits.memory_bytes,
            limits.io_read_bytes_per_sec,
            limits.io_write_bytes_per_sec,
            limits.pids,
        )
    }
}

impl From<JobInfo> for v1::Job {
    fn from(info: JobInfo) -> Self {
        let (exit_code, signal) = match info.termination {
            Some(Termination::Exited(code)) => (Some(code), None),
            Some(Termination::Signaled(signal)) => (None, Some(signal)),
            None => (None, None),
        };
        Self {
            id: info.id.to_string(),
            owner: info.owner.to_string(),
            command: info.command.to_string(),
            args: info.args.as_slice().to_vec(),
            state: v1::JobState::from(info.state).into(),
            pid: info.pid,
            uid: info.uid,
            gid: info.gid,
            exit_code,
            signal,
            oom_killed: info.oom_killed,
            created_at: Some(timestamp(info.created_at)),
            started_at: info.started_at.map(timestamp),
            ended_at: info.ended_at.map(timestamp),
            limits: Some(info.limits.into()),
            enforced: Some(v1::EnforcedLimits {
                cpu: info.enforced.cpu,
                memory: info.enforced.memory,
                io: info.enforced.io,
                pids: info.enforced.pids,
            }),
            usage: Some(v1::Usage {
                cpu_time: Some(duration(std::time::Duration::from_micros(
                    info.usage.cpu_usec,
                ))),
                memory_peak_bytes: info.usage.memory_peak_bytes,
                io_read_bytes: info.usage.io_read_bytes,
                io_write_bytes: info.usage.io_write_bytes,
            }),
            output_bytes: info.output_bytes,
            output_truncated_bytes: info.output_truncated_bytes,
            output_disk_full_bytes: info.output_disk_full_bytes,
            failure: info.failure.unwrap_or_default(),
            stop_reason: match info.stop_reason {
                None => v1::StopReason::Unspecified,
                Some(StopReason::Requested) => v1::StopReason::Requested,
                Some(StopReason::TimedOut) => v1::StopReason::TimedOut,
            }
            .into(),
            timeout: info.timeout.map(|t| duration(t.duration())),
            labels: info.labels.as_map().clone().into_iter().collect(),
            host: String::new(),
            host_unreachable: false,
        }
    }
}

impl TryFrom<v1::Job> for JobInfo {
    type Error = Invalid;

    fn try_from(job: v1::Job) -> Result<Self, Invalid> {
        let state = v1::JobState::try_from(job.state).map_err(|_| {
            invalid(
                "state",
                format!("{} is no state this version knows", job.state),
            )
        })?;
        let termination = match (job.exit_code, job.signal) {
            (Some(code), None) => Some(Termination::Exited(code)),
            (None, Some(signal)) => Some(Termination::Signaled(signal)),
            (None, None) => None,
            (Some(_), Some(_)) => return Err(invalid("signal", "is set with exit_code")),
        };
        let enforced = job.enforced.unwrap_or_default();
        let usage = job.usage.unwrap_or_default();
        Ok(Self {
            id: job.id.parse()?,
            owner: job.owner.parse()?,
            command: Command::new(job.command)?,
            args: Args::new(job.args)?,
            state: JobState::try_from(state)?,
            pid: job.pid,
            uid: job.uid,
            gid: job.gid,
            termination,
            oom_killed: job.oom_killed,
            created_at: unix_micros("created_at", job.created_at)?
                .ok_or_else(|| invalid("created_at", "is missing"))?,
            started_at: unix_micros("started_at", job.started_at)?,
            ended_at: unix_micros("ended_at", job.ended_at)?,
            limits: job.limits.unwrap_or_default().try_into()?,
            enforced: EnforcedLimits {
                cpu: enforced.cpu,
                memory: enforced.memory,
                io: enforced.io,
                pids: enforced.pids,
            },
            usage: Usage {
                cpu_usec: usage
                    .cpu_time
                    .map_or(Ok(0), |d| micros("usage.cpu_time", &d))?,
                memory_peak_bytes: usage.memory_peak_bytes,
                io_read_bytes: usage.io_read_bytes,
                io_write_bytes: usage.io_write_bytes,
            },
            output_bytes: job.output_bytes,
            output_truncated_bytes: job.output_truncated_bytes,
            output_disk_full_bytes: job.output_disk_full_bytes,
            failure: Some(job.failure).filter(|f| !f.is_empty()),
            stop_reason: match v1::StopReason::try_from(job.stop_reason) {
                Ok(v1::StopReason::Requested) => Some(StopReason::Requested),
                Ok(v1::StopReason::TimedOut) => Some(StopReason::TimedOut),
                Ok(v1::StopReason::Unspecified) | Err(_) => None,
            },
            timeout: job.timeout.as_ref().map(timeout).transpose()?,
            labels: Labels::new("labels", job.labels.into_iter().collect())?,
        })
    }
}

/// A `google.protobuf.Duration` of a duration.
pub fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Below 10^9: fits.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A job's time limit of a `google.protobuf.Duration` (whole milliseconds;
/// a finer part rounds up, so that a limit is never shorter than asked).
pub fn timeout(d: &prost_types::Duration) -> Result<TimeoutMs, Invalid> {
    let us = micros("timeout", d)?;
    // The nanoseconds below a microsecond count too (micros drops them).
    let below_us = u64::from(d.nanos % 1000 != 0);
    TimeoutMs::new(us.saturating_add(below_us).div_ceil(1000))
}

/// A `google.protobuf.Timestamp` of Unix microseconds.
pub fn timestamp(at: UnixMicros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(at.0 / 1_000_000).unwrap_or(i64::MAX),
        // Below 10^9: fits.
        nanos: i32::try_from(at.0 % 1_000_000 * 1000).unwrap_or(0),
    }
}

/// Unix microseconds of a timestamp (sub-microsecond parts dropped); `None`
/// for an unset one.
fn unix_micros(
    field: &str,
    at: Option<prost_types::Timestamp>,
) -> Result<Option<UnixMicros>, Invalid> {
    let Some(at) = at else {
        return Ok(None);
    };
    let seconds = u64::try_from(at.seconds).map_err(|_| invalid(field, "is before 1970"))?;
    let nanos = u64::try_from(at.nanos).map_err(|_| invalid(field, "has negative nanos"))?;
    seconds
        .checked_mul(1_000_000)
        .and_then(|us| us.checked_add(nanos / 1000))
        .map(|us| Some(UnixMicros(us)))
        .ok_or_else(|| invalid(field, "is out of range"))
}

/// Whole microseconds of a duration.
fn micros(field: &str, d: &prost_types::Duration) -> Result<u64, Invalid> {
    let seconds = u64::try_from(d.seconds).map_err(|_| invalid(field, "is negative"))?;
    let nanos = u64::try_from(d.nanos).map_err(|_| invalid(field, "is negative"))?;
    if nanos >= 1_000_000_000 {
        return Err(invalid(field, "nanos must be less than one second"));
    }
    seconds
        .checked_mul(1_000_000)
        .and_then(|us| us.checked_add(nanos / 1000))
        .ok_or_else(|| invalid(field, "is out of range"))
}

fn invalid(field: &str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use jobworker_ipc::{JobId, Owner, UserName};

    use super::*;

    fn info() -> JobInfo {
        JobInfo {
            id: JobId::random(),
            owner: Owner::Local(UserName::new("root").unwrap()),
            command: Command::new("/bin/echo").unwrap(),
            args: Args::new(vec!["hello".into()]).unwrap(),
            state: JobState::Stopped,
            pid: Some(42),
            uid: Some(61184),
            gid: Some(61184),
            termination: Some(Termination::Signaled(15)),
            oom_killed: true,
            created_at: UnixMicros(1_700_000_000_123_456),
            started_at: Some(UnixMicros(1_700_000_000_456_789)),
            ended_at: Some(UnixMicros(1_700_000_001_789_012)),
            limits: Limits::new(Some(500), Some(64 << 20), None, Some(1 << 20), Some(64)).unwrap(),
            enforced: EnforcedLimits {
                cpu: true,
                memory: false,
                io: true,
                pids: false,
            },
            usage: Usage {
                cpu_usec: 1_234_567,
                memory_peak_bytes: Some(4096),
                io_read_bytes: 1,
                io_write_bytes: 2,
            },
            output_bytes: 6,
            output_truncated_bytes: 1,
            output_disk_full_bytes: 2,
            failure: Some("why".into()),
            stop_reason: Some(StopReason::TimedOut),
            timeout: Some(TimeoutMs::new(90_000).unwrap()),
            labels: Labels::parse("labels", ["team=build", "env=ci"]).unwrap(),
        }
    }

    #[test]
    fn a_job_round_trips_through_the_contract() {
        let info = info();
        assert_eq!(JobInfo::try_from(v1::Job::from(info.clone())), Ok(info));
        let running = JobInfo {
            state: JobState::Running,
            termination: None,
            started_at: None,
            ended_at: None,
            failure: None,
            stop_reason: None,
            timeout: None,
            labels: Labels::default(),
            owner: Owner::Remote(UserName::new("alice").unwrap()),
            ..self::info()
        };
        assert_eq!(
            JobInfo::try_from(v1::Job::from(running.clone())),
            Ok(running)
        );
    }

    #[test]
    fn what_the_ipc_cannot_hold_names_its_field() {
        let field = |job: v1::Job| JobInfo::try_from(job).unwrap_err().field;
        let job = v1::Job::from(info());
        assert_eq!(
            field(v1::Job {
                state: 0,
                ..job.clone()
            }),
            "state"
        );
        assert_eq!(
            field(v1::Job {
                state: 99,
                ..job.clone()
            }),
            "state"
        );
        assert_eq!(
            field(v1::Job {
                owner: "a b".into(),
                ..job.clone()
            }),
            "owner"
        );
        assert_eq!(
            field(v1::Job {
                created_at: None,
                ..job.clone()
            }),
            "created_at"
        );
        assert_eq!(
            field(v1::Job {
                exit_code: Some(0),
                ..job
            }),
            "signal"
        );
        for state in JobState::ALL {
            assert_eq!(JobState::try_from(v1::JobState::from(state)), Ok(state));
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
    }

    #[test]
    fn the_contracts_job_has_its_times_and_termination() {
        let info = JobInfo {
            gid: Some(61185),
            termination: Some(Termination::Signaled(9)),
            ended_at: None,
            limits: Limits::new(Some(500), None, None, None, Some(7)).unwrap(),
            usage: Usage {
                cpu_usec: 2_500_001,
                ..info().usage
            },
            failure: None,
            ..info()
        };
        let job = v1::Job::from(info.clone());
        assert_eq!(job.id, info.id.to_string());
        assert_eq!(job.owner, "local:root");
        assert_eq!(job.state(), v1::JobState::Stopped);
        assert_eq!((job.exit_code, job.signal), (None, Some(9)));
        assert_eq!((job.uid, job.gid), (Some(61184), Some(61185)));
        assert_eq!(
            job.created_at,
            Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_000
            })
        );
        assert_eq!(job.started_at.unwrap().nanos, 456_789_000);
        assert_eq!(job.ended_at, None);
        let limits = job.limits.unwrap();
        assert_eq!((limits.cpu_millicores, limits.pids), (Some(500), Some(7)));
        assert!(job.enforced.unwrap().cpu);
        let cpu = job.usage.unwrap().cpu_time.unwrap();
        assert_eq!((cpu.seconds, cpu.nanos), (2, 500_001_000));
        assert_eq!(job.failure, "");
    }
}
