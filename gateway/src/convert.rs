//! Conversions between the gRPC contract (`jobworker.v1`) and the ipc
//! protocol: requests are validated into the ipc newtypes (a field that fails
//! is named in the error), answers become proto messages, and ipc errors
//! become gRPC statuses, one code per error kind.
//!
//! Times are `google.protobuf.Timestamp`s from the ipc's Unix milliseconds;
//! the stop grace period is a `google.protobuf.Duration` in milliseconds on
//! the ipc side; a list page token is the opaque string
//! `<created_at_ms>.<job_id>` of the ipc's `ListCursor`.

use jobworker_ipc::types::MAX_GRACE_MS;
use jobworker_ipc::{
    Args, Command, Env, EnvVar, ErrorCode, GraceMs, Invalid, IpcError, JobId, JobInfo, JobSpec,
    JobState, Limits, ListCursor, PageSize, Request, RequestId, Termination, UnixMillis,
    WorkingDir,
};
use jobworker_proto::v1;
use tonic::{Code, Status};

/// The gRPC status of an ipc error: one code per kind, the error's message.
pub fn status_of(e: &IpcError) -> Status {
    let code = match e.code() {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Internal => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// INVALID_ARGUMENT naming the field.
pub fn invalid(e: Invalid) -> Status {
    status_of(&IpcError::from(e))
}

fn invalid_field(field: &str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// A job id from a request's `job_id`.
pub fn job_id(text: &str) -> Result<JobId, Invalid> {
    text.parse()
}

/// The ipc job spec of a `StartJob` request.
pub fn job_spec(request: v1::StartJobRequest) -> Result<JobSpec, Invalid> {
    Ok(JobSpec {
        command: Command::new(request.command)?,
        args: Args::new(request.args)?,
        env: Env::new(
            request
                .env
                .into_iter()
                .map(|var| EnvVar {
                    name: var.name,
                    value: var.value,
                })
                .collect(),
        )?,
        working_dir: request.working_dir.map(WorkingDir::new).transpose()?,
        limits: limits(request.limits.unwrap_or_default())?,
        request_id: request.request_id.map(RequestId::new).transpose()?,
    })
}

fn limits(limits: v1::Limits) -> Result<Limits, Invalid> {
    Limits::new(
        limits.cpu_millicores,
        limits.memory_bytes,
        limits.io_read_bytes_per_sec,
        limits.io_write_bytes_per_sec,
        limits.pids,
    )
}

/// A stop request's grace period, whole milliseconds (a fraction of a
/// millisecond is dropped).
pub fn grace(period: Option<prost_types::Duration>) -> Result<Option<GraceMs>, Invalid> {
    let Some(period) = period else {
        return Ok(None);
    };
    if period.seconds < 0 || period.nanos < 0 {
        return Err(invalid_field("grace_period", "must not be negative"));
    }
    if period.nanos >= 1_000_000_000 {
        return Err(invalid_field(
            "grace_period",
            "nanos must be less than one second",
        ));
    }
    let too_long = || {
        invalid_field(
            "grace_period",
            format!(
                "{}s is longer than the limit of {MAX_GRACE_MS} ms",
                period.seconds
            ),
        )
    };
    let millis = u64::try_from(period.seconds)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .and_then(|ms| ms.checked_add(u64::try_from(period.nanos / 1_000_000).ok()?))
        .ok_or_else(too_long)?;
    let millis = u32::try_from(millis).map_err(|_| too_long())?;
    GraceMs::new(millis).map(Some)
}

/// The ipc request of a `ListJobs` request.
pub fn list_request(request: v1::ListJobsRequest) -> Result<Request, Invalid> {
    let state = match request.state {
        None => None,
        Some(raw) => match v1::JobState::try_from(raw) {
            Ok(v1::JobState::Unspecified) => None,
            Ok(v1::JobState::Running) => Some(JobState::Running),
            Ok(v1::JobState::Stopped) => Some(JobState::Stopped),
            Ok(v1::JobState::Finished) => Some(JobState::Finished),
            Ok(v1::JobState::Failed) => Some(JobState::Failed),
            Err(_) => {
                return Err(invalid_field(
                    "state",
                    format!("{raw} is not a JobState value"),
                ));
            }
        },
    };
    let limit = match request.page_size {
        0 => PageSize::DEFAULT,
        n => PageSize::new(n)?,
    };
    Ok(Request::ListJobs {
        state,
        limit,
        after: parse_page_token(&request.page_token)?,
    })
}

/// The page token of a list cursor.
pub fn page_token(cursor: &ListCursor) -> String {
    format!("{}.{}", cursor.created_at.0, cursor.job)
}

/// The list cursor of a page token; `None` for the first page (empty).
pub fn parse_page_token(token: &str) -> Result<Option<ListCursor>, Invalid> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .split_once('.')
        .and_then(|(millis, job)| {
            Some(ListCursor {
                created_at: UnixMillis(millis.parse().ok()?),
                job: job.parse().ok()?,
            })
        })
        .map(Some)
        .ok_or_else(|| {
            invalid_field(
                "page_token",
                "is not a next_page_token of a previous ListJobs response",
            )
        })
}

/// The proto form of a job's status.
pub fn job(info: JobInfo) -> v1::Job {
    let (exit_code, signal) = match info.termination {
        Some(Termination::Exited(code)) => (Some(code), None),
        Some(Termination::Signaled(signal)) => (None, Some(signal)),
        None => (None, None),
    };
    v1::Job {
        id: info.id.to_string(),
        owner: info.owner.to_string(),
        command: info.command.to_string(),
        args: info.args.as_slice().to_vec(),
        state: job_state(info.state).into(),
        pid: info.pid,
        uid: info.uid,
        gid: info.gid,
        exit_code,
        signal,
        oom_killed: info.oom_killed,
        created_at: Some(timestamp(info.created_at)),
        started_at: info.started_at.map(timestamp),
        ended_at: info.ended_at.map(timestamp),
        limits: Some(v1::Limits {
            cpu_millicores: info.limits.cpu_millicores(),
            memory_bytes: info.limits.memory_bytes(),
            io_read_bytes_per_sec: info.limits.io_read_bps(),
            io_write_bytes_per_sec: info.limits.io_write_bps(),
            pids: info.limits.pids(),
        }),
        enforced: Some(v1::EnforcedLimits {
            cpu: info.enforced.cpu,
            memory: info.enforced.memory,
            io: info.enforced.io,
            pids: info.enforced.pids,
        }),
        usage: Some(v1::Usage {
            cpu_time: Some(prost_types::Duration {
                seconds: i64::try_from(info.usage.cpu_usec / 1_000_000).unwrap_or(i64::MAX),
                // Below 10^9: fits.
                nanos: i32::try_from(info.usage.cpu_usec % 1_000_000 * 1000).unwrap_or(0),
            }),
            memory_peak_bytes: info.usage.memory_peak_bytes,
            io_read_bytes: info.usage.io_read_bytes,
            io_write_bytes: info.usage.io_write_bytes,
        }),
        output_bytes: info.output_bytes,
        output_truncated_bytes: info.output_truncated_bytes,
        failure: info.failure.unwrap_or_default(),
    }
}

fn job_state(state: JobState) -> v1::JobState {
    match state {
        JobState::Running => v1::JobState::Running,
        JobState::Stopped => v1::JobState::Stopped,
        JobState::Finished => v1::JobState::Finished,
        JobState::Failed => v1::JobState::Failed,
    }
}

/// A `google.protobuf.Timestamp` of Unix milliseconds.
pub fn timestamp(at: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(at.0 / 1000).unwrap_or(i64::MAX),
        // Below 10^9: fits.
        nanos: i32::try_from(at.0 % 1000 * 1_000_000).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use jobworker_ipc::{EnforcedLimits, Owner, Usage, UserName};

    use super::*;

    #[test]
    fn every_ipc_error_has_its_own_code() {
        let job = JobId::random();
        let reason = || "why".to_owned();
        let cases = [
            (
                IpcError::InvalidArgument {
                    field: "command".into(),
                    reason: reason(),
                },
                Code::InvalidArgument,
            ),
            (IpcError::NotFound { job }, Code::NotFound),
            (
                IpcError::PermissionDenied { reason: reason() },
                Code::PermissionDenied,
            ),
            (
                IpcError::ResourceExhausted { reason: reason() },
                Code::ResourceExhausted,
            ),
            (
                IpcError::FailedPrecondition { reason: reason() },
                Code::FailedPrecondition,
            ),
            (
                IpcError::Unavailable { reason: reason() },
                Code::Unavailable,
            ),
            (IpcError::Internal { reason: reason() }, Code::Internal),
        ];
        for (error, code) in cases {
            let status = status_of(&error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), error.to_string());
        }
        assert_eq!(
            status_of(&IpcError::NotFound { job }).message(),
            format!("no job {job}")
        );
    }

    fn start(command: &str) -> v1::StartJobRequest {
        v1::StartJobRequest {
            command: command.into(),
            ..Default::default()
        }
    }

    #[test]
    fn invalid_fields_are_named() {
        let cases = [
            (start(""), "command"),
            (start("bin/ls"), "command"),
            (
                v1::StartJobRequest {
                    args: vec!["ok".into(), "a\0b".into()],
                    ..start("ls")
                },
                "args[1]",
            ),
            (
                v1::StartJobRequest {
                    env: vec![v1::EnvVar {
                        name: "1X".into(),
                        value: "v".into(),
                    }],
                    ..start("ls")
                },
                "env[0].name",
            ),
            (
                v1::StartJobRequest {
                    working_dir: Some("tmp".into()),
                    ..start("ls")
                },
                "working_dir",
            ),
            (
                v1::StartJobRequest {
                    limits: Some(v1::Limits {
                        memory_bytes: Some(10),
                        ..Default::default()
                    }),
                    ..start("ls")
                },
                "limits.memory_bytes",
            ),
            (
                v1::StartJobRequest {
                    request_id: Some("has space".into()),
                    ..start("ls")
                },
                "request_id",
            ),
        ];
        for (request, field) in cases {
            let status = invalid(job_spec(request).unwrap_err());
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status.message().starts_with(&format!("invalid {field}:")),
                "{field}: {}",
                status.message()
            );
        }
        assert_eq!(job_id("nope").unwrap_err().field, "job_id");
    }

    #[test]
    fn a_valid_start_request_converts() {
        let spec = job_spec(v1::StartJobRequest {
            command: "/bin/echo".into(),
            args: vec!["hi".into()],
            env: vec![v1::EnvVar {
                name: "A".into(),
                value: "b".into(),
            }],
            working_dir: Some("/tmp".into()),
            limits: Some(v1::Limits {
                pids: Some(10),
                ..Default::default()
            }),
            request_id: Some("r-1".into()),
        })
        .unwrap();
        assert_eq!(spec.command.as_str(), "/bin/echo");
        assert_eq!(spec.args.as_slice(), ["hi"]);
        assert_eq!(spec.env.as_slice()[0].name, "A");
        assert_eq!(spec.limits.pids(), Some(10));
        assert_eq!(spec.request_id.unwrap().as_str(), "r-1");
    }

    #[test]
    fn grace_periods() {
        let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(grace(None), Ok(None));
        assert_eq!(grace(d(1, 500_000_000)).unwrap().unwrap().millis(), 1500);
        assert_eq!(grace(d(0, 999_999)).unwrap().unwrap().millis(), 0);
        assert_eq!(grace(d(3600, 0)).unwrap().unwrap().millis(), 3_600_000);
        for bad in [
            d(-1, 0),
            d(0, -5),
            d(3601, 0),
            d(i64::MAX, 0),
            d(0, 1_000_000_000),
        ] {
            assert_eq!(grace(bad).unwrap_err().field, "grace_period");
        }
    }

    #[test]
    fn page_tokens_round_trip_and_are_checked() {
        let cursor = ListCursor {
            created_at: UnixMillis(1_700_000_000_123),
            job: JobId::random(),
        };
        let token = page_token(&cursor);
        assert_eq!(parse_page_token(&token), Ok(Some(cursor)));
        assert_eq!(parse_page_token(""), Ok(None));
        for bad in [
            "x",
            "12",
            "12.",
            ".uuid",
            "-1.x",
            &format!("x.{}", cursor.job),
        ] {
            assert_eq!(parse_page_token(bad).unwrap_err().field, "page_token");
        }
    }

    #[test]
    fn list_requests() {
        let request = list_request(v1::ListJobsRequest {
            state: Some(v1::JobState::Running.into()),
            page_size: 0,
            page_token: String::new(),
        })
        .unwrap();
        assert_eq!(
            request,
            Request::ListJobs {
                state: Some(JobState::Running),
                limit: PageSize::DEFAULT,
                after: None
            }
        );
        let unspecified = list_request(v1::ListJobsRequest {
            state: Some(0),
            page_size: 5,
            page_token: String::new(),
        })
        .unwrap();
        assert!(
            matches!(unspecified, Request::ListJobs { state: None, limit, .. } if limit.get() == 5)
        );
        for (request, field) in [
            (
                v1::ListJobsRequest {
                    state: Some(42),
                    ..Default::default()
                },
                "state",
            ),
            (
                v1::ListJobsRequest {
                    page_size: 100_000,
                    ..Default::default()
                },
                "page_size",
            ),
        ] {
            assert_eq!(list_request(request).unwrap_err().field, field);
        }
    }

    #[test]
    fn jobs_convert_with_times_and_termination() {
        let info = JobInfo {
            id: JobId::random(),
            owner: Owner::Local(UserName::new("root").unwrap()),
            command: Command::new("/bin/sleep").unwrap(),
            args: Args::new(vec!["1".into()]).unwrap(),
            state: JobState::Finished,
            pid: Some(42),
            uid: Some(61184),
            gid: Some(61185),
            termination: Some(Termination::Signaled(9)),
            oom_killed: true,
            created_at: UnixMillis(1_700_000_000_123),
            started_at: Some(UnixMillis(1_700_000_000_456)),
            ended_at: None,
            limits: Limits::new(Some(500), None, None, None, Some(7)).unwrap(),
            enforced: EnforcedLimits {
                cpu: true,
                ..Default::default()
            },
            usage: Usage {
                cpu_usec: 2_500_001,
                memory_peak_bytes: Some(4096),
                io_read_bytes: 1,
                io_write_bytes: 2,
            },
            output_bytes: 10,
            output_truncated_bytes: 3,
            failure: None,
        };
        let job = job(info.clone());
        assert_eq!(job.id, info.id.to_string());
        assert_eq!(job.owner, "local:root");
        assert_eq!(job.state(), v1::JobState::Finished);
        assert_eq!((job.exit_code, job.signal), (None, Some(9)));
        assert_eq!((job.uid, job.gid), (Some(61184), Some(61185)));
        assert_eq!(
            job.created_at,
            Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000
            })
        );
        assert_eq!(job.started_at.unwrap().nanos, 456_000_000);
        assert_eq!(job.ended_at, None);
        let limits = job.limits.unwrap();
        assert_eq!((limits.cpu_millicores, limits.pids), (Some(500), Some(7)));
        assert!(job.enforced.unwrap().cpu);
        let cpu = job.usage.unwrap().cpu_time.unwrap();
        assert_eq!((cpu.seconds, cpu.nanos), (2, 500_001_000));
        assert_eq!(job.failure, "");
    }
}
