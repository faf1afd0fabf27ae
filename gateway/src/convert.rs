//! Conversions between the gRPC contract (`jobworker.v1`) and the ipc
//! protocol on the gateway's side: requests are validated into the ipc
//! newtypes (a field that fails is named in the error), and ipc errors
//! become gRPC statuses, one code per error kind. A job's status converts
//! with `jobworker_proto::convert`, beside the generated types.
//!
//! The stop grace period is a `google.protobuf.Duration` in milliseconds on
//! the ipc side; a list page token is the opaque string
//! `<created_at_ms>.<job_id>` of the ipc's `ListCursor`.

use jobworker_ipc::types::MAX_GRACE_MS;
use jobworker_ipc::{
    Args, Command, Env, EnvVar, ErrorCode, GraceMs, Invalid, IpcError, JobId, JobSpec, JobState,
    Labels, ListCursor, PageSize, Request, RequestId, UnixMicros, WorkingDir,
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
        limits: request.limits.unwrap_or_default().try_into()?,
        request_id: request.request_id.map(RequestId::new).transpose()?,
        timeout: request
            .timeout
            .as_ref()
            .map(jobworker_proto::convert::timeout)
            .transpose()?,
        labels: Labels::new("labels", request.labels.into_iter().collect())?,
    })
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

/// A `ListJobs` request, checked.
#[derive(Clone, Debug)]
pub struct ListQuery {
    /// Only jobs in this state.
    pub state: Option<v1::JobState>,
    /// At most this many.
    pub limit: PageSize,
    /// After this job.
    pub after: Option<ListCursor>,
    /// Only jobs carrying every one of these labels.
    pub labels: Labels,
}

/// The ipc request of a `ListJobs` query; `None` for QUEUED jobs, which
/// one host's supervisor never has.
pub fn list_request(query: ListQuery) -> Option<Request> {
    let state = match query.state {
        Some(v1::JobState::Queued) => return None,
        Some(state) => JobState::try_from(state).ok(),
        None => None,
    };
    Some(Request::ListJobs {
        state,
        limit: query.limit,
        after: query.after,
        labels: query.labels,
    })
}

/// A `ListJobs` request's fields, checked.
pub fn list_query(request: v1::ListJobsRequest) -> Result<ListQuery, Invalid> {
    let state = match request.state.map(v1::JobState::try_from) {
        None | Some(Ok(v1::JobState::Unspecified)) => None,
        Some(Ok(state)) => Some(state),
        Some(Err(_)) => {
            return Err(invalid_field(
                "state",
                format!(
                    "{} is not a JobState value",
                    request.state.unwrap_or_default()
                ),
            ));
        }
    };
    let limit = match request.page_size {
        0 => PageSize::DEFAULT,
        n => PageSize::new(n)?,
    };
    Ok(ListQuery {
        state,
        limit,
        after: parse_page_token(&request.page_token)?,
        labels: Labels::new(
            "label_selector",
            request.label_selector.into_iter().collect(),
        )?,
    })
}

/// The page token of a list cursor: `u<microseconds>.<job id>`.
pub fn page_token(cursor: &ListCursor) -> String {
    format!("u{}.{}", cursor.created_at.0, cursor.job)
}

/// The list cursor of a page token; `None` for the first page (empty). A
/// token without the `u` is one from before times had microseconds
/// (`<milliseconds>.<job id>`), so that a listing goes on across an upgrade.
pub fn parse_page_token(token: &str) -> Result<Option<ListCursor>, Invalid> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .split_once('.')
        .and_then(|(at, job)| {
            let created_at = match at.strip_prefix('u') {
                Some(micros) => UnixMicros(micros.parse().ok()?),
                None => UnixMicros::from_millis(at.parse().ok()?),
            };
            Some(ListCursor {
                created_at,
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

/// A host of the fleet as the API shows it.
pub fn host(host: jobworker_fleet::hosts::Host) -> v1::Host {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a lease's milliseconds fit in i64"
    )]
    let lease_left_ms = (host.lease_left * 1000.0).round() as i64;
    v1::Host {
        id: host.id,
        generation: host.generation,
        lease_left_ms,
        draining: host.draining,
        slots: u32::try_from(host.slots).unwrap_or(0),
        labels: host.labels.into_iter().collect(),
        version: host.version,
        peer_address: host.peer_address.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
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
            (
                v1::StartJobRequest {
                    labels: [("team".into(), "a b".into())].into(),
                    ..start("ls")
                },
                "labels[\"team\"]",
            ),
            (
                v1::StartJobRequest {
                    timeout: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 0,
                    }),
                    ..start("ls")
                },
                "timeout",
            ),
            (
                v1::StartJobRequest {
                    timeout: Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    }),
                    ..start("ls")
                },
                "timeout",
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
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000,
            }),
            labels: [("team".into(), "build".into())].into(),
            placement: Default::default(),
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
            created_at: UnixMicros(1_700_000_000_123_456),
            job: JobId::random(),
        };
        let token = page_token(&cursor);
        assert_eq!(parse_page_token(&token), Ok(Some(cursor)));
        assert_eq!(parse_page_token(""), Ok(None));
        // A token from before microseconds: milliseconds, no `u`.
        assert_eq!(
            parse_page_token(&format!("1700000000123.{}", cursor.job)),
            Ok(Some(ListCursor {
                created_at: UnixMicros(1_700_000_000_123_000),
                job: cursor.job
            }))
        );
        for bad in [
            "x",
            "12",
            "12.",
            ".uuid",
            "-1.x",
            "u.x",
            &format!("x.{}", cursor.job),
            &format!("u-5.{}", cursor.job),
        ] {
            assert_eq!(parse_page_token(bad).unwrap_err().field, "page_token");
        }
    }

    #[test]
    fn list_requests() {
        let request = list_request(
            list_query(v1::ListJobsRequest {
                state: Some(v1::JobState::Running.into()),
                page_size: 0,
                page_token: String::new(),
                label_selector: [("env".into(), "ci".into())].into(),
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            request,
            Request::ListJobs {
                state: Some(JobState::Running),
                limit: PageSize::DEFAULT,
                after: None,
                labels: Labels::parse("label_selector", ["env=ci"]).unwrap(),
            }
        );
        let unspecified = list_request(
            list_query(v1::ListJobsRequest {
                state: Some(0),
                page_size: 5,
                page_token: String::new(),
                label_selector: Default::default(),
            })
            .unwrap(),
        )
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
            (
                v1::ListJobsRequest {
                    label_selector: [("-x".into(), "y".into())].into(),
                    ..Default::default()
                },
                "label_selector[\"-x\"]",
            ),
        ] {
            assert_eq!(list_query(request).unwrap_err().field, field);
        }
        let queued = list_query(v1::ListJobsRequest {
            state: Some(v1::JobState::Queued.into()),
            ..Default::default()
        })
        .unwrap();
        assert!(list_request(queued).is_none(), "one host never has one");
    }
}
