//! The frame format end to end: every message round-trips, and every kind of
//! bad input is refused with the right error and without a panic.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

use jobworker_ipc::frame::{self, LEN_PREFIX};
use jobworker_ipc::handshake::{self, HELLO_LEN, MAGIC, PROTOCOL_VERSION};
use jobworker_ipc::*;
use serde::Serialize;

fn job_info() -> JobInfo {
    JobInfo {
        id: JobId::random(),
        owner: Owner::Local(UserName::new("root").unwrap()),
        command: Command::new("/bin/echo").unwrap(),
        args: Args::new(vec!["hello".into(), "wörld\u{1}".into()]).unwrap(),
        state: JobState::Finished,
        pid: Some(4242),
        uid: Some(61184),
        gid: Some(61184),
        termination: Some(Termination::Signaled(9)),
        oom_killed: true,
        created_at: UnixMicros(1),
        started_at: Some(UnixMicros(2)),
        ended_at: Some(UnixMicros(3)),
        limits: Limits::new(Some(500), Some(64 << 20), Some(1 << 20), None, Some(32)).unwrap(),
        enforced: EnforcedLimits {
            cpu: true,
            memory: false,
            io: true,
            pids: false,
        },
        usage: Usage {
            cpu_usec: 12,
            memory_peak_bytes: Some(1 << 20),
            io_read_bytes: 3,
            io_write_bytes: 4,
        },
        output_bytes: 100,
        output_truncated_bytes: 10,
        output_disk_full_bytes: 0,
        failure: Some("lost".into()),
        stop_reason: Some(StopReason::TimedOut),
        timeout: Some(TimeoutMs::new(30_000).unwrap()),
        labels: Labels::parse("labels", ["team=build", "env=ci"]).unwrap(),
    }
}

fn alice() -> Identity {
    Identity {
        user: UserName::new("alice").unwrap(),
        role: Role::User,
    }
}

fn all_calls() -> Vec<Call> {
    calls_for(JobId::random())
}

fn calls_for(job: JobId) -> Vec<Call> {
    let spec = JobSpec {
        command: Command::new("sh").unwrap(),
        args: Args::new(vec!["-c".into(), "echo hi".into()]).unwrap(),
        env: Env::new(vec![EnvVar {
            name: "GREETING".into(),
            value: "hello=world".into(),
        }])
        .unwrap(),
        working_dir: Some(WorkingDir::new("/tmp").unwrap()),
        limits: Limits::new(Some(10), None, None, Some(4096), None).unwrap(),
        request_id: Some(RequestId::new("retry-1").unwrap()),
        timeout: Some(TimeoutMs::new(1500).unwrap()),
        labels: Labels::parse("labels", ["team=build"]).unwrap(),
    };
    let requests = vec![
        Request::Ping,
        Request::StartJob(spec),
        Request::StopJob {
            job,
            grace: Some(GraceMs::new(1500).unwrap()),
        },
        Request::StopJob { job, grace: None },
        Request::GetJob { job },
        Request::ListJobs {
            state: Some(JobState::Running),
            limit: PageSize::DEFAULT,
            after: Some(ListCursor {
                created_at: UnixMicros(7),
                job,
            }),
            labels: Labels::parse("label_selector", ["env=ci"]).unwrap(),
        },
        Request::ListJobs {
            state: None,
            limit: PageSize::new(1000).unwrap(),
            after: None,
            labels: Labels::default(),
        },
        Request::Metrics,
        Request::StreamOutput {
            job,
            offset: u64::MAX,
            follow: true,
        },
    ];
    requests
        .into_iter()
        .flat_map(|request| {
            [
                Call {
                    on_behalf_of: Some(alice()),
                    request: request.clone(),
                },
                Call {
                    on_behalf_of: None,
                    request,
                },
            ]
        })
        .collect()
}

fn all_responses() -> Vec<Response> {
    let job = job_info();
    let all_bytes: Vec<u8> = (0..=255).collect();
    vec![
        Response::Pong(ServerInfo {
            protocol_version: PROTOCOL_VERSION,
            uptime_ms: 5,
            caller: Owner::Remote(UserName::new("bob").unwrap()),
            cgroup_root: "/sys/fs/cgroup/jobworker".into(),
            controllers: vec!["cpu".into(), "memory".into()],
        }),
        Response::Job(Box::new(job.clone())),
        Response::Jobs {
            jobs: vec![job.clone(), job.clone()],
            next: Some(ListCursor {
                created_at: UnixMicros(1),
                job: job.id,
            }),
        },
        Response::Jobs {
            jobs: vec![],
            next: None,
        },
        Response::Output {
            offset: 0,
            data: OutputData::new(all_bytes).unwrap(),
        },
        Response::Output {
            offset: 9,
            data: OutputData::new(vec![0xAB; MAX_OUTPUT_CHUNK]).unwrap(),
        },
        Response::End(Box::new(job.clone())),
        Response::Metrics(Box::new(SupervisorMetrics {
            version: "0.1.0".into(),
            jobs_started: 3,
            start_failures: 1,
            jobs_ended: vec![metrics::EndedCount {
                state: JobState::Stopped,
                reason: EndReason::Timeout,
                count: 2,
            }],
            jobs_running: 1,
            start_seconds: metrics::Histogram::new(&metrics::START_SECONDS_BUCKETS),
            duration_seconds: metrics::Histogram::new(&metrics::DURATION_SECONDS_BUCKETS),
            output_bytes: 100,
            output_dropped_bytes: metrics::DroppedBytes {
                output_cap: 7,
                disk_full: 3,
            },
            followers: 2,
            limits_enforced: EnforcedLimits::default(),
            uptime_ms: 1234,
        })),
        Response::Error(IpcError::InvalidArgument {
            field: "args[0]".into(),
            reason: "contains a NUL byte".into(),
        }),
        Response::Error(IpcError::NotFound { job: job.id }),
        Response::Error(IpcError::PermissionDenied {
            reason: "readers cannot start jobs".into(),
        }),
        Response::Error(IpcError::ResourceExhausted {
            reason: "memory".into(),
        }),
        Response::Error(IpcError::FailedPrecondition {
            reason: "cannot execute /nonexistent".into(),
        }),
        Response::Error(IpcError::Unavailable {
            reason: "shutting down".into(),
        }),
        Response::Error(IpcError::Internal {
            reason: "disk full".into(),
        }),
    ]
}

fn encoded<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    frame::encode(msg, &mut buf).unwrap();
    buf
}

#[test]
fn every_call_round_trips() {
    for call in all_calls() {
        let buf = encoded(&call);
        assert_eq!(frame::decode_exact::<Call>(&buf).unwrap(), call);
    }
}

#[test]
fn every_response_round_trips() {
    for response in all_responses() {
        let buf = encoded(&response);
        assert_eq!(frame::decode_exact::<Response>(&buf).unwrap(), response);
    }
}

#[test]
fn frames_decode_one_after_another() {
    let calls = all_calls();
    let mut buf = Vec::new();
    for call in &calls {
        frame::encode(call, &mut buf).unwrap();
    }
    let mut rest = buf.as_slice();
    let mut decoded = Vec::new();
    while let Some((call, used)) = frame::decode::<Call>(rest).unwrap() {
        decoded.push(call);
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    assert_eq!(decoded, calls);
}

#[test]
fn incomplete_frames_ask_for_more() {
    let buf = encoded(&all_calls()[1]);
    for cut in 0..buf.len() {
        assert!(frame::decode::<Call>(&buf[..cut]).unwrap().is_none());
    }
}

#[test]
fn length_over_the_limit_is_refused_before_reading_the_body() {
    let len = u32::try_from(MAX_FRAME_LEN + 1).unwrap();
    let err = frame::decode::<Call>(&len.to_be_bytes()).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
}

#[test]
fn length_claiming_gigabytes_is_refused() {
    let err = frame::decode::<Call>(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0]).unwrap_err();
    assert!(
        matches!(
            err,
            FrameError::TooLarge {
                len: 0xFFFF_FFFF,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_body_is_refused() {
    let buf = encoded(&all_calls()[2]);
    let err = frame::decode_exact::<Call>(&buf[..buf.len() - 3]).unwrap_err();
    assert!(matches!(err, FrameError::Truncated { missing: 3 }), "{err}");
    let err = frame::decode_exact::<Call>(&buf[..2]).unwrap_err();
    assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
}

#[test]
fn trailing_bytes_inside_a_frame_are_refused() {
    let mut buf = encoded(&all_calls()[0]);
    buf.extend_from_slice(b"xyz");
    let body_len = u32::try_from(buf.len() - LEN_PREFIX).unwrap();
    buf[..LEN_PREFIX].copy_from_slice(&body_len.to_be_bytes());
    let err = frame::decode_exact::<Call>(&buf).unwrap_err();
    assert!(
        matches!(err, FrameError::TrailingBytes { extra: 3 }),
        "{err}"
    );
}

#[test]
fn trailing_bytes_after_a_frame_are_refused_by_decode_exact() {
    let mut buf = encoded(&all_calls()[0]);
    buf.push(0);
    let err = frame::decode_exact::<Call>(&buf).unwrap_err();
    assert!(
        matches!(err, FrameError::TrailingBytes { extra: 1 }),
        "{err}"
    );
}

/// A body that claims a string of 2^40 bytes must fail without allocating it
/// (without the decode limit, the process would abort).
#[test]
fn body_claiming_a_huge_string_is_refused() {
    // Call { on_behalf_of: Some(Identity { user: <len 2^40> ... }) }:
    // Option tag 1, then the string length as a bincode varint (0xFD + u64 LE).
    let mut body = vec![1, 0xFD];
    body.extend_from_slice(&(1u64 << 40).to_le_bytes());
    body.extend_from_slice(b"abc");
    let mut buf = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    buf.extend_from_slice(&body);
    let err = frame::decode_exact::<Call>(&buf).unwrap_err();
    assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    assert!(err.to_string().contains("LimitExceeded"), "{err}");
}

/// Output over the chunk limit is refused as it is decoded, within a frame
/// that is itself under the frame limit.
#[test]
fn output_over_the_chunk_limit_is_refused() {
    let mut buf = encoded(&Response::Output {
        offset: 0,
        data: OutputData::new(vec![0xAB; MAX_OUTPUT_CHUNK]).unwrap(),
    });
    // The data's length, a bincode varint: 0xFC, then a u32 LE.
    let limit = u32::try_from(MAX_OUTPUT_CHUNK).unwrap().to_le_bytes();
    let at = buf
        .windows(6)
        .position(|w| w[0] == 0xFC && w[1..5] == limit && w[5] == 0xAB)
        .unwrap();
    buf[at + 1..at + 5]
        .copy_from_slice(&(u32::try_from(MAX_OUTPUT_CHUNK).unwrap() + 1).to_le_bytes());
    buf.push(0xAB);
    let body_len = u32::try_from(buf.len() - LEN_PREFIX).unwrap();
    buf[..LEN_PREFIX].copy_from_slice(&body_len.to_be_bytes());
    let err = frame::decode_exact::<Response>(&buf).unwrap_err();
    assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    assert!(err.to_string().contains("65537"), "{err}");
}

/// Mirrors of the real messages with unvalidated strings, to put invalid
/// values on the wire the way a hostile peer would.
mod raw {
    use serde::Serialize;

    #[derive(Serialize)]
    pub struct Identity {
        pub user: String,
        pub role: u32,
    }

    #[derive(Serialize)]
    pub enum Request {
        Ping,
    }

    #[derive(Serialize)]
    pub struct Call {
        pub on_behalf_of: Option<Identity>,
        pub request: Request,
    }
}

fn call_as(user: &str, role: u32) -> Vec<u8> {
    encoded(&raw::Call {
        on_behalf_of: Some(raw::Identity {
            user: user.into(),
            role,
        }),
        request: raw::Request::Ping,
    })
}

#[test]
fn the_raw_mirror_matches_the_real_encoding() {
    let call = frame::decode_exact::<Call>(&call_as("alice", 1)).unwrap();
    assert_eq!(
        call,
        Call {
            on_behalf_of: Some(alice()),
            request: Request::Ping
        }
    );
}

#[test]
fn invalid_identities_are_refused() {
    let long = "a".repeat(65);
    for user in [
        "",
        "al\0ice",
        "local:root",
        "alice bob",
        "ali/ce",
        long.as_str(),
    ] {
        let err = frame::decode_exact::<Call>(&call_as(user, 0)).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{user:?}: {err}");
        assert!(err.to_string().contains("invalid user"), "{user:?}: {err}");
    }
    let err = frame::decode_exact::<Call>(&call_as("alice", 3)).unwrap_err();
    assert!(matches!(err, FrameError::Malformed(_)), "role 3: {err}");
}

#[test]
fn hello_round_trips_and_mismatches_are_named() {
    handshake::check_hello(&handshake::hello()).unwrap();

    let mut other = handshake::hello();
    other[6..].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    let err = handshake::check_hello(&other).unwrap_err();
    assert!(
        matches!(err, FrameError::VersionMismatch { ours, theirs } if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION + 1),
        "{err}"
    );

    let mut http: [u8; HELLO_LEN] = *b"GET / HT";
    assert!(matches!(
        handshake::check_hello(&http).unwrap_err(),
        FrameError::BadMagic(m) if &m == b"GET / "
    ));
    http[..6].copy_from_slice(&MAGIC);
    assert!(handshake::check_hello(&http).is_err());
}
