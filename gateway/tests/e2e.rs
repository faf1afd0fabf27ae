//! The gateway end to end: the real gateway binary (started as root,
//! running as nobody) in front of the real supervisor, reached over real
//! mutual TLS on loopback with certificates made by jobworker-certs.
//! Run as root, after `cargo build --workspace --bins`.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Gateway, NOBODY, Pki, Supervisor, assert_status, gateway_config, get, output, run_gateway,
    socket_count, start, start_job, wait_ended, wait_until,
};
use jobworker_proto::v1;
use nix::sys::signal::Signal;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The outcome of a call, for tables.
fn outcome<T>(result: Result<T, tonic::Status>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(status) => match status.code() {
            Code::NotFound => "NOT_FOUND",
            Code::PermissionDenied => "PERMISSION_DENIED",
            other => panic!("unexpected {other:?}: {}", status.message()),
        },
    }
}

fn stop_request(job: &str) -> v1::StopJobRequest {
    v1::StopJobRequest {
        job_id: job.into(),
        grace_period: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
    }
}

/// What a spawned follower got, its bytes and the job at the stream's end,
/// within `secs` seconds (else the test fails, saying `what` was expected).
async fn followed(
    follower: tokio::task::JoinHandle<Result<(Vec<u8>, v1::Job), tonic::Status>>,
    secs: u64,
    what: &str,
) -> (Vec<u8>, v1::Job) {
    tokio::time::timeout(Duration::from_secs(secs), follower)
        .await
        .expect(what)
        .expect("the follower's task")
        .expect("no error reaches the client")
}

/// Follows `job`'s output from its first byte.
fn follow_request(job: &str) -> v1::StreamOutputRequest {
    v1::StreamOutputRequest {
        job_id: job.into(),
        offset: 0,
        follow: Some(true),
    }
}

async fn list_ids(
    client: &mut v1::job_service_client::JobServiceClient<tonic::transport::Channel>,
) -> BTreeSet<String> {
    let page = client
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(page.next_page_token.is_empty());
    page.jobs.into_iter().map(|job| job.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_allow_and_deny_every_rpc() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut admin = gateway.client(&pki, "admin").await;
    let mut alice = gateway.client(&pki, "alice").await;
    let mut bob = gateway.client(&pki, "bob").await;
    let mut rita = gateway.client(&pki, "rita").await;

    // StartJob: admins and users, never readers.
    let alices = start_job(&mut alice, "/bin/echo", &["hello"]).await;
    let bobs = start_job(&mut bob, "/bin/echo", &["from bob"]).await;
    let admins = start_job(&mut admin, "/bin/true", &[]).await;
    assert_status(
        rita.start_job(start("/bin/true", &[])).await,
        Code::PermissionDenied,
        "rita has the reader role: readers cannot start jobs",
    );
    assert_eq!(wait_ended(&mut admin, &alices).await.owner, "alice");
    assert_eq!(wait_ended(&mut admin, &bobs).await.owner, "bob");
    wait_ended(&mut admin, &admins).await;

    // GetJob and StreamOutput: own jobs for users, all jobs for the others;
    // another user's job does not exist for a user.
    let table = [
        ("admin", ["ok", "ok"]),
        ("alice", ["ok", "NOT_FOUND"]),
        ("bob", ["NOT_FOUND", "ok"]),
        ("rita", ["ok", "ok"]),
    ];
    for (name, wants) in table {
        let client = match name {
            "admin" => &mut admin,
            "alice" => &mut alice,
            "bob" => &mut bob,
            _ => &mut rita,
        };
        for (job, want) in [&alices, &bobs].into_iter().zip(wants) {
            assert_eq!(outcome(get(client, job).await), want, "{name} GetJob {job}");
            let streamed = output(client, job).await;
            if let Ok((bytes, end)) = &streamed {
                let expected: &[u8] = if job == &alices {
                    b"hello\n"
                } else {
                    b"from bob\n"
                };
                assert_eq!(bytes, expected);
                assert_eq!(end.state(), v1::JobState::Finished);
                assert_eq!(end.exit_code, Some(0));
            }
            assert_eq!(outcome(streamed), want, "{name} StreamOutput {job}");
        }
    }
    // NOT_FOUND for another's job reads exactly as for a job that never was.
    let never = "00000000-0000-4000-8000-000000000000";
    assert_status(
        get(&mut bob, &alices).await,
        Code::NotFound,
        &format!("no job {alices}"),
    );
    assert_status(
        get(&mut bob, never).await,
        Code::NotFound,
        &format!("no job {never}"),
    );

    // ListJobs: users see their own jobs, the others every job.
    let all: BTreeSet<String> = [&alices, &bobs, &admins].into_iter().cloned().collect();
    assert_eq!(list_ids(&mut admin).await, all);
    assert_eq!(list_ids(&mut rita).await, all);
    assert_eq!(list_ids(&mut alice).await, BTreeSet::from([alices.clone()]));
    assert_eq!(list_ids(&mut bob).await, BTreeSet::from([bobs.clone()]));

    // StopJob: users their own, admins any, readers none.
    let alices_long = start_job(&mut alice, "/bin/sleep", &["30"]).await;
    let bobs_long = start_job(&mut bob, "/bin/sleep", &["30"]).await;
    assert_eq!(
        outcome(bob.stop_job(stop_request(&alices_long)).await),
        "NOT_FOUND"
    );
    assert_eq!(
        outcome(alice.stop_job(stop_request(&bobs_long)).await),
        "NOT_FOUND"
    );
    assert_status(
        rita.stop_job(stop_request(&alices_long)).await,
        Code::PermissionDenied,
        "readers cannot stop jobs",
    );
    assert_eq!(
        get(&mut alice, &alices_long).await.unwrap().state(),
        v1::JobState::Running,
        "refused stops stop nothing"
    );
    let stopped = alice
        .stop_job(stop_request(&alices_long))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(stopped.state(), v1::JobState::Stopped);
    let stopped = admin
        .stop_job(stop_request(&bobs_long))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(stopped.state(), v1::JobState::Stopped);
    // Stopping an ended job is not an error.
    assert_eq!(outcome(alice.stop_job(stop_request(&alices)).await), "ok");
    assert_eq!(
        outcome(rita.stop_job(stop_request(&bobs)).await),
        "PERMISSION_DENIED"
    );

    // The gateway logged every call with who made it, never a payload.
    let log = gateway.log_text();
    assert!(log.contains("user=rita role=reader rpc=StartJob"), "{log}");
    assert!(!log.contains("from bob"), "no payload in the log");
}

/// Each call on a job is one round trip to the supervisor: the gateway
/// gates by role and forwards, and the supervisor (which has the owner at
/// hand) decides ownership. Counted in the supervisor's audit log, where
/// every request it serves is one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_on_a_job_is_one_supervisor_round_trip() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut alice = gateway.client(&pki, "alice").await;
    let mut bob = gateway.client(&pki, "bob").await;
    let mut rita = gateway.client(&pki, "rita").await;
    let job = start_job(&mut alice, "/bin/sleep", &["30"]).await;
    assert_eq!(outcome(bob.stop_job(stop_request(&job)).await), "NOT_FOUND");
    assert_eq!(
        outcome(rita.stop_job(stop_request(&job)).await),
        "PERMISSION_DENIED"
    );
    assert_eq!(outcome(alice.stop_job(stop_request(&job)).await), "ok");
    assert_eq!(outcome(get(&mut alice, &job).await), "ok");
    assert_eq!(outcome(output(&mut alice, &job).await), "ok");
    let calls = || -> Vec<String> {
        supervisor
            .log_text()
            .lines()
            .filter(|line| line.contains("audit") && line.contains(job.as_str()))
            .filter_map(|line| {
                line.split("op=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_owned)
            })
            .collect()
    };
    // The reader's stop never reached the supervisor; bob's did, once, and
    // was refused there.
    wait_until("the stream's audit line", Duration::from_secs(5), || {
        calls().len() >= 5
    });
    assert_eq!(calls(), ["start", "stop", "stop", "get", "stream"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_name_the_field_and_pages_follow() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut alice = gateway.client(&pki, "alice").await;
    let mut admin = gateway.client(&pki, "admin").await;

    let bad_starts = [
        (start("", &[]), "invalid command"),
        (start("bin/true", &[]), "invalid command"),
        (start("/bin/echo", &["a\0b"]), "invalid args[0]"),
        (
            v1::StartJobRequest {
                env: vec![v1::EnvVar {
                    name: "1BAD".into(),
                    value: "x".into(),
                }],
                ..start("/bin/true", &[])
            },
            "invalid env[0].name",
        ),
        (
            v1::StartJobRequest {
                limits: Some(v1::Limits {
                    memory_bytes: Some(10),
                    ..Default::default()
                }),
                ..start("/bin/true", &[])
            },
            "invalid limits.memory_bytes",
        ),
        (
            v1::StartJobRequest {
                working_dir: Some("relative".into()),
                ..start("/bin/true", &[])
            },
            "invalid working_dir",
        ),
    ];
    for (request, message) in bad_starts {
        assert_status(
            alice.start_job(request).await,
            Code::InvalidArgument,
            message,
        );
    }
    assert_status(
        get(&mut alice, "nope").await,
        Code::InvalidArgument,
        "invalid job_id",
    );
    assert_status(
        alice
            .list_jobs(v1::ListJobsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "invalid page_token",
    );
    assert_status(
        alice
            .list_jobs(v1::ListJobsRequest {
                page_size: 5000,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "invalid page_size",
    );
    let job = start_job(&mut alice, "/bin/sleep", &["30"]).await;
    assert_status(
        alice
            .stop_job(v1::StopJobRequest {
                job_id: job.clone(),
                grace_period: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
            })
            .await,
        Code::InvalidArgument,
        "invalid grace_period",
    );
    alice.stop_job(stop_request(&job)).await.unwrap();
    // The supervisor's own refusals keep their meaning.
    assert_status(
        alice.start_job(start("/no/such/command", &[])).await,
        Code::FailedPrecondition,
        "/no/such/command",
    );
    assert_status(
        alice
            .list_jobs(v1::ListJobsRequest {
                state: Some(99),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "invalid state",
    );

    // Pages of two follow each other through every job, newest first.
    for _ in 0..5 {
        let job = start_job(&mut admin, "/bin/true", &[]).await;
        wait_ended(&mut admin, &job).await;
    }
    let everything: Vec<String> = admin
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .map(|job| job.id)
        .collect();
    assert!(everything.len() >= 6, "{everything:?}");
    let mut paged = Vec::new();
    let mut token = String::new();
    for _ in 0..everything.len() {
        let page = admin
            .list_jobs(v1::ListJobsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= 2);
        paged.extend(page.jobs.into_iter().map(|job| job.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(paged, everything);
    let running = admin
        .list_jobs(v1::ListJobsRequest {
            state: Some(v1::JobState::Running.into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(running.jobs.is_empty(), "every job has ended: {running:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_at_the_handshake() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&pki, &dir.path().join("no-supervisor.sock"), "");

    let chain = gateway.handshake(&pki, Some("alice")).await.unwrap();
    assert_eq!(chain[0], pki.der("server.pem"));
    for (client, why) in [
        (Some("mallory"), "signed by another CA"),
        (Some("expired"), "expired"),
        (
            Some("server"),
            "the server's certificate presented as a client's",
        ),
        (None, "no client certificate"),
    ] {
        let refused = gateway.handshake(&pki, client).await;
        assert!(refused.is_err(), "{why}: the handshake succeeded");
    }
    gateway.wait_log("TLS handshake failed", 4);
    let log = gateway.log_text();
    // The other CA has the same name as ours, so its signature is what fails.
    for reason in [
        "BadSignature",
        "certificate expired",
        "does not allow extended key usage for client authentication",
        "peer sent no certificates",
    ] {
        assert!(log.contains(reason), "{reason} in\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_without_a_usable_role_are_refused_per_call() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&pki, &dir.path().join("no-supervisor.sock"), "");
    let job = "00000000-0000-4000-8000-000000000000";
    for (client, why) in [
        ("norole", "has no role extension (1.2.840.10070.8.1)"),
        ("unknown", "names an unknown role \"superuser\""),
        ("twice", "has 2 role extensions"),
    ] {
        gateway.handshake(&pki, Some(client)).await.unwrap();
        let mut c = gateway.client(&pki, client).await;
        assert_status(
            c.start_job(start("/bin/true", &[])).await,
            Code::PermissionDenied,
            why,
        );
        assert_status(
            c.stop_job(stop_request(job)).await,
            Code::PermissionDenied,
            why,
        );
        assert_status(get(&mut c, job).await, Code::PermissionDenied, why);
        assert_status(
            c.list_jobs(v1::ListJobsRequest::default()).await,
            Code::PermissionDenied,
            why,
        );
        assert_status(output(&mut c, job).await, Code::PermissionDenied, why);
    }
}

/// Runs `openssl s_client` against the gateway with alice's certificate.
fn s_client(gateway: &Gateway, pki: &Pki, args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(gateway.addr.to_string())
        .args(["-servername", "localhost", "-alpn", "h2"])
        .arg("-CAfile")
        .arg(pki.server_ca())
        .arg("-cert")
        .arg(pki.path("alice.pem"))
        .arg("-key")
        .arg(pki.path("alice.key"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("these tests need openssl (apt-get install openssl)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The suite of an s_client transcript ("New, TLSv1.3, Cipher is X").
fn negotiated_suite(text: &str) -> Option<&str> {
    let suite = text.split("Cipher is ").nth(1)?.split_whitespace().next()?;
    (suite != "(NONE)").then_some(suite)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls13_with_its_three_suites_and_h2() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&pki, &dir.path().join("no-supervisor.sock"), "");
    let suites = [
        "TLS_AES_256_GCM_SHA384",
        "TLS_AES_128_GCM_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
    ];

    let (ok, text) = s_client(&gateway, &pki, &["-tls1_2"]);
    assert!(
        !ok && negotiated_suite(&text).is_none(),
        "TLS 1.2 was accepted:\n{text}"
    );
    assert!(text.contains("alert protocol version"), "{text}");

    let (ok, text) = s_client(&gateway, &pki, &["-tls1_3"]);
    assert!(ok, "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let suite = negotiated_suite(&text).expect("a suite");
    assert!(suites.contains(&suite), "{suite}");

    for suite in suites {
        let (ok, text) = s_client(&gateway, &pki, &["-tls1_3", "-ciphersuites", suite]);
        assert!(ok, "{text}");
        assert_eq!(negotiated_suite(&text), Some(suite), "{text}");
    }
    let (ok, text) = s_client(
        &gateway,
        &pki,
        &["-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256"],
    );
    assert!(
        !ok && negotiated_suite(&text).is_none(),
        "CCM was accepted:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_share_the_port_and_the_mtls() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let channel = gateway.channel(&pki, "rita").await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "jobworker.v1.JobService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    // Both versions of reflection: v1, and v1alpha for older clients.
    macro_rules! listed_services {
        ($version:ident) => {{
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let answer = ServerReflectionClient::new(channel.clone())
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .unwrap()
                .into_inner()
                .message()
                .await
                .unwrap()
                .unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
                panic!("not a service list: {answer:?}");
            };
            list.service
                .into_iter()
                .map(|s| s.name)
                .collect::<Vec<String>>()
        }};
    }
    for names in [listed_services!(v1), listed_services!(v1alpha)] {
        for name in ["jobworker.v1.JobService", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
    }
    // Behind the same mTLS: no certificate, no health.
    gateway.handshake(&pki, None).await.unwrap_err();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_drops_root_and_refuses_unsafe_starts() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-supervisor.sock");
    let gateway = Gateway::start(&pki, &socket, "");

    let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.pid())).unwrap();
    let field = |name: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(field("Uid:"), vec![NOBODY.to_string(); 4], "{status}");
    assert!(field("Gid:").iter().all(|gid| gid != "0"), "{status}");
    assert!(field("Groups:").iter().all(|gid| gid != "0"), "{status}");
    for caps in ["CapEff:", "CapPrm:", "CapAmb:", "CapInh:"] {
        assert_eq!(field(caps), vec!["0000000000000000"], "{caps} {status}");
    }
    assert_eq!(field("NoNewPrivs:"), vec!["1"]);
    assert!(gateway.log_text().contains("switched_from_root=true"));

    // It still serves (as nobody) after the switch.
    gateway.handshake(&pki, Some("alice")).await.unwrap();

    let config = gateway_config(&pki, &socket, "");
    // --check-config: valid, the effective values printed.
    let (ok, stdout, stderr) = run_gateway(&config, &["--check-config"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("listen = \"127.0.0.1:0\"") && stdout.contains("runs as nobody"));
    // Unknown keys and bad values are named.
    let (ok, _, stderr) = run_gateway(&format!("{config}lisen = 1\n"), &["--check-config"]);
    assert!(!ok && stderr.contains("lisen"), "{stderr}");
    let (ok, _, stderr) = run_gateway(&format!("{config}max_output_streams = 0\n"), &[]);
    assert!(!ok && stderr.contains("`max_output_streams`"), "{stderr}");
    // Root without an account to switch to.
    let rootly = config.replace("run_as_user = \"nobody\"\nrun_as_group = \"nogroup\"\n", "");
    let (ok, _, stderr) = run_gateway(&rootly, &[]);
    assert!(!ok && stderr.contains("run_as_user is not set"), "{stderr}");
    // A private key that group or others can read.
    std::fs::set_permissions(
        pki.path("server.key"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let (ok, _, stderr) = run_gateway(&config, &[]);
    assert!(!ok, "started with a group-readable key");
    assert!(
        stderr.contains("mode 0640") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_streams_and_calls_complete() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    // One user makes them all: their share is the whole gateway's here.
    let gateway = Gateway::start(
        &pki,
        &supervisor.socket,
        "max_output_streams_per_user = 512\nmax_unary_calls_per_user = 256\n",
    );
    let mut alice = gateway.client(&pki, "alice").await;
    let expected: Vec<u8> = (1..=20_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let seq = start_job(&mut alice, "seq", &["1", "20000"]).await;
    wait_ended(&mut alice, &seq).await;
    // Streams that stay open (following a running job) while the rest runs:
    // nothing waits behind them.
    let sleeper = start_job(&mut alice, "/bin/sleep", &["30"]).await;
    let mut followers = Vec::new();
    for _ in 0..20 {
        let mut client = alice.clone();
        let job = sleeper.clone();
        followers.push(tokio::spawn(async move { output(&mut client, &job).await }));
    }

    let streams = (0..200).map(|_| {
        let mut client = alice.clone();
        let job = seq.clone();
        tokio::spawn(async move { output(&mut client, &job).await })
    });
    let calls = (0..200).map(|_| {
        let mut client = alice.clone();
        let job = seq.clone();
        tokio::spawn(async move { get(&mut client, &job).await })
    });
    let (streams, calls) = tokio::time::timeout(
        Duration::from_secs(40),
        futures::future::join(
            futures::future::join_all(streams),
            futures::future::join_all(calls),
        ),
    )
    .await
    .expect("400 calls complete within 40 s");
    for result in streams {
        let (bytes, end) = result.unwrap().unwrap();
        assert!(bytes == expected, "{} bytes of output", bytes.len());
        assert_eq!(end.state(), v1::JobState::Finished);
        assert_eq!(end.output_bytes, expected.len() as u64);
    }
    for result in calls {
        let job = result.unwrap().unwrap();
        assert_eq!(
            (job.id.as_str(), job.owner.as_str()),
            (seq.as_str(), "alice")
        );
        assert_eq!(job.exit_code, Some(0));
    }

    alice.stop_job(stop_request(&sleeper)).await.unwrap();
    for follower in followers {
        let (bytes, end) = followed(follower, 10, "followers end when their job does").await;
        assert!(bytes.is_empty());
        assert_eq!(end.state(), v1::JobState::Stopped);
    }
}

/// The followers of a job share one supervisor stream: with eight of them
/// on a steady writer, the supervisor serves one stream, not eight, and
/// each of them gets every byte and the job's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_followers_of_a_job_share_one_supervisor_stream() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut alice = gateway.client(&pki, "alice").await;
    let script = "i=0; while :; do echo $i; i=$((i+1)); sleep 0.02; done";
    let job = start_job(&mut alice, "sh", &["-c", script]).await;
    let before = socket_count(supervisor.pid());
    let mut followers = Vec::new();
    for _ in 0..8 {
        let mut client = gateway.client(&pki, "alice").await;
        let job = job.clone();
        followers.push(tokio::spawn(async move { output(&mut client, &job).await }));
    }
    wait_until(
        "the eight followers sharing one supervisor stream",
        Duration::from_secs(20),
        || socket_count(supervisor.pid()) <= before + 1,
    );
    alice.stop_job(stop_request(&job)).await.unwrap();
    let mut outputs = Vec::new();
    for follower in followers {
        let (bytes, end) = followed(follower, 20, "followers end when their job does").await;
        assert_eq!(end.state(), v1::JobState::Stopped);
        assert_eq!(end.output_bytes, bytes.len() as u64, "every byte, once");
        outputs.push(String::from_utf8(bytes).unwrap());
    }
    let expected: String = (0..outputs[0].lines().count())
        .map(|i| format!("{i}\n"))
        .collect();
    assert!(outputs.iter().all(|output| *output == expected));
}

/// A follower that stops reading holds up the others sharing its job's
/// stream for at most a second; it then reads the rest on a stream of its
/// own, and misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_stops_reading_holds_up_no_other() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut alice = gateway.client(&pki, "alice").await;
    // Ten lines slowly, so that all five followers come to share the
    // stream, then 20 MB at once: more than the shared stream holds for its
    // slowest member and the HTTP/2 windows together.
    let lines = 3_000_000;
    let script =
        format!("for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.2; done; seq 1 {lines}");
    let expected: Vec<u8> = (1..=10)
        .chain(1..=lines)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let job = start_job(&mut alice, "sh", &["-c", &script]).await;
    let mut stalled = gateway
        .client(&pki, "alice")
        .await
        .stream_output(follow_request(&job))
        .await
        .unwrap()
        .into_inner();
    let first = stalled.message().await.unwrap().unwrap();
    let mut followers = Vec::new();
    for _ in 0..4 {
        let mut client = gateway.client(&pki, "alice").await;
        let job = job.clone();
        followers.push(tokio::spawn(async move { output(&mut client, &job).await }));
    }
    // The others end while the stalled one reads nothing.
    for follower in followers {
        let (bytes, end) = followed(
            follower,
            60,
            "the others are not held up by the stalled follower",
        )
        .await;
        assert!(bytes == expected, "{} bytes of output", bytes.len());
        assert_eq!(end.state(), v1::JobState::Finished);
    }
    let mut bytes = match first.kind {
        Some(v1::output_chunk::Kind::Output(out)) => out.data.to_vec(),
        other => panic!("expected output first, got {other:?}"),
    };
    let end = loop {
        match stalled.message().await.unwrap().unwrap().kind.unwrap() {
            v1::output_chunk::Kind::Output(out) => {
                assert_eq!(out.offset, bytes.len() as u64, "chunks are contiguous");
                bytes.extend_from_slice(&out.data);
            }
            v1::output_chunk::Kind::End(end) => break end,
        }
    };
    assert!(bytes == expected, "{} bytes of output", bytes.len());
    assert_eq!(end.state(), v1::JobState::Finished);
    assert!(
        gateway
            .log_text()
            .contains("fell behind the job's shared stream"),
        "the stalled follower was left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_and_a_client_that_goes_away_ends_its_streams() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(
        &pki,
        &supervisor.socket,
        "max_output_streams = 3\nmax_request_bytes = 4096",
    );
    let mut alice = gateway.client(&pki, "alice").await;
    let big = "x".repeat(8192);
    assert_status(
        alice.start_job(start("/bin/echo", &[&big])).await,
        Code::ResourceExhausted,
        "the limit is: 4096 bytes",
    );
    let job = start_job(&mut alice, "/bin/sleep", &["30"]).await;

    let mut leaving = gateway.client(&pki, "alice").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let stream = leaving.stream_output(follow_request(&job)).await.unwrap();
        open.push(stream);
    }
    assert_status(
        output(&mut alice, &job).await,
        Code::ResourceExhausted,
        "max_output_streams = 3",
    );
    let peak = socket_count(supervisor.pid());
    drop(open);
    drop(leaving);
    wait_until(
        "the supervisor closing the three streams' connections",
        Duration::from_secs(10),
        || socket_count(supervisor.pid()) + 3 <= peak,
    );
    // Their slots are free again.
    let mut follow = alice
        .stream_output(follow_request(&job))
        .await
        .unwrap()
        .into_inner();
    alice.stop_job(stop_request(&job)).await.unwrap();
    let last = tokio::time::timeout(Duration::from_secs(10), follow.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(last.kind, Some(v1::output_chunk::Kind::End(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_outlives_a_supervisor_restart() {
    let pki = Pki::new();
    let mut supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let channel = gateway.channel(&pki, "alice").await;
    let mut alice = v1::job_service_client::JobServiceClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let health_of = |status: Result<tonic::Response<_>, tonic::Status>| {
        tonic_health::pb::HealthCheckResponse::status(&status.unwrap().into_inner())
    };
    let check = || HealthCheckRequest {
        service: "jobworker.v1.JobService".into(),
    };
    let job = start_job(&mut alice, "/bin/sleep", &["30"]).await;
    get(&mut alice, &job).await.unwrap();

    supervisor.kill9();
    assert_status(
        get(&mut alice, &job).await,
        Code::Unavailable,
        "supervisor is unreachable",
    );
    assert_status(
        alice.start_job(start("/bin/true", &[])).await,
        Code::Unavailable,
        "supervisor is unreachable",
    );
    assert_status(
        output(&mut alice, &job).await,
        Code::Unavailable,
        "unreachable",
    );
    assert_eq!(
        health_of(health.check(check()).await),
        ServingStatus::NotServing
    );

    supervisor.spawn();
    let info = get(&mut alice, &job).await.unwrap();
    assert_eq!(
        info.state(),
        v1::JobState::Running,
        "the job outlived the supervisor"
    );
    assert_eq!(
        health_of(health.check(check()).await),
        ServingStatus::Serving
    );
    let stopped = alice
        .stop_job(stop_request(&job))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.job.unwrap().state(), v1::JobState::Stopped);
    let log = gateway.log_text();
    assert!(log.contains("the supervisor is unreachable"), "{log}");
    assert!(log.contains("the supervisor is reachable again"), "{log}");
}

/// A stream open across a kill -9 and restart of the supervisor goes on:
/// the gateway resumes it from the next byte, and the gRPC client sees
/// neither an error nor a gap nor a repeat. So do three followers sharing
/// one stream: each resumes on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_outlives_a_supervisor_restart_unseen() {
    let pki = Pki::new();
    let mut supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut alice = gateway.client(&pki, "alice").await;
    let script = "i=0; while [ $i -lt 30 ]; do echo $i; i=$((i+1)); sleep 0.1; done; exit 4";
    let expected: String = (0..30).map(|i| format!("{i}\n")).collect();
    for n in [1, 3] {
        let job = start_job(&mut alice, "sh", &["-c", script]).await;
        let mut followers = Vec::new();
        for _ in 0..n {
            let mut client = gateway.client(&pki, "alice").await;
            let job = job.clone();
            followers.push(tokio::spawn(async move { output(&mut client, &job).await }));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        supervisor.kill9();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        supervisor.spawn();
        for follower in followers {
            let (bytes, end) = followed(follower, 30, "the stream ends").await;
            assert_eq!(String::from_utf8(bytes).unwrap(), expected, "{n} followers");
            assert_eq!(end.exit_code, Some(4));
        }
    }
    assert!(gateway.log_text().contains("resumed an output stream"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_without_dropping_streams() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut alice = gateway.client(&pki, "alice").await;
    let job = start_job(
        &mut alice,
        "/bin/sh",
        &[
            "-c",
            "i=0; while [ $i -lt 400 ]; do echo line $i; i=$((i+1)); sleep 0.05; done",
        ],
    )
    .await;
    let mut stream = alice
        .stream_output(follow_request(&job))
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    let mut read_more = async |stream: &mut tonic::Streaming<v1::OutputChunk>| {
        let target = received + 1;
        while received < target {
            let chunk = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .expect("output keeps coming")
                .unwrap()
                .unwrap();
            match chunk.kind.unwrap() {
                v1::output_chunk::Kind::Output(out) => {
                    assert_eq!(out.offset, received as u64);
                    received += out.data.len();
                }
                v1::output_chunk::Kind::End(end) => panic!("the stream ended: {end:?}"),
            }
        }
    };
    read_more(&mut stream).await;

    let old = pki.der("server.pem");
    assert_eq!(
        gateway.handshake(&pki, Some("alice")).await.unwrap()[0],
        old
    );
    pki.issue_server("server");
    let new = pki.der("server.pem");
    assert_ne!(new, old);
    gateway.signal(Signal::SIGHUP);
    gateway.wait_log("SIGHUP: reloaded", 1);
    assert_eq!(
        gateway.handshake(&pki, Some("alice")).await.unwrap()[0],
        new
    );
    read_more(&mut stream).await;
    read_more(&mut stream).await;
    // A new client trusts the new certificate as it did the old one.
    let mut fresh = gateway.client(&pki, "alice").await;
    get(&mut fresh, &job).await.unwrap();

    // A broken file: the reload fails, says why, and changes nothing.
    std::fs::write(pki.path("server.pem"), "not a certificate\n").unwrap();
    gateway.signal(Signal::SIGHUP);
    gateway.wait_log("reloading the TLS files failed", 1);
    assert!(
        gateway.log_text().contains("server_cert"),
        "{}",
        gateway.log_text()
    );
    assert_eq!(
        gateway.handshake(&pki, Some("alice")).await.unwrap()[0],
        new
    );
    read_more(&mut stream).await;

    alice.stop_job(stop_request(&job)).await.unwrap();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .expect("an End before the stream ends");
        if let Some(v1::output_chunk::Kind::End(end)) = chunk.kind {
            assert_eq!(end.state(), v1::JobState::Stopped);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_gateway_within_its_grace() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let mut gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut alice = gateway.client(&pki, "alice").await;
    let job = start_job(&mut alice, "/bin/sleep", &["30"]).await;
    // A stream that would follow the job for 30 s.
    let mut stream = alice
        .stream_output(follow_request(&job))
        .await
        .unwrap()
        .into_inner();
    let started = std::time::Instant::now();
    gateway.signal(Signal::SIGTERM);
    let status = gateway.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", gateway.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(gateway.log_text().contains("SIGTERM: shutting down"));
    // The cut stream ends for its client, without an End.
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends");
    assert!(
        !matches!(
            end,
            Ok(Some(v1::OutputChunk {
                kind: Some(v1::output_chunk::Kind::End(_))
            }))
        ),
        "{end:?}"
    );
}

/// A start request with a time limit of `ms` milliseconds.
fn timed(command: &str, args: &[&str], ms: i32) -> v1::StartJobRequest {
    v1::StartJobRequest {
        timeout: Some(prost_types::Duration {
            seconds: i64::from(ms / 1000),
            nanos: ms % 1000 * 1_000_000,
        }),
        ..start(command, args)
    }
}

/// How long after its creation a job ended.
fn ran_for(job: &v1::Job) -> Duration {
    let micros = |t: &prost_types::Timestamp| {
        u64::try_from(t.seconds).unwrap() * 1_000_000 + u64::try_from(t.nanos).unwrap() / 1000
    };
    Duration::from_micros(
        micros(job.ended_at.as_ref().unwrap()) - micros(job.created_at.as_ref().unwrap()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limits_stop_jobs_even_across_a_supervisor_restart() {
    let pki = Pki::new();
    let mut supervisor =
        jobworker_tests::fixture::Supervisor::start(&jobworker_tests::fixture::SupervisorOptions {
            extra: "max_timeout_ms = 600000\ngrace_period_ms = 1000\n".into(),
            ..Default::default()
        })
        .unwrap();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut alice = gateway.client(&pki, "alice").await;
    let started = |response: tonic::Response<v1::StartJobResponse>| response.into_inner().job_id;

    // Past the server's maximum: refused, naming the field and the maximum.
    let err = alice
        .start_job(timed("/bin/sleep", &["60"], 600_001))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("invalid timeout:") && err.message().contains("10m"),
        "{}",
        err.message()
    );
    let err = alice
        .start_job(timed("/bin/sleep", &["60"], 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A job with no time limit asked gets the maximum, as its status says.
    let unlimited = started(alice.start_job(start("/bin/true", &[])).await.unwrap());
    let info = wait_ended(&mut alice, &unlimited).await;
    assert_eq!(info.timeout.unwrap().seconds, 600);
    assert_eq!(info.stop_reason(), v1::StopReason::Unspecified);

    // `sleep 60` with a second: stopped at its deadline, saying why.
    let one = started(
        alice
            .start_job(timed("/bin/sleep", &["60"], 1000))
            .await
            .unwrap(),
    );
    let info = wait_ended(&mut alice, &one).await;
    assert_eq!(info.state(), v1::JobState::Stopped, "{info:?}");
    assert_eq!(info.stop_reason(), v1::StopReason::TimedOut, "{info:?}");
    assert_eq!(info.signal, Some(15), "SIGTERM ended it: {info:?}");
    assert_eq!(info.timeout.unwrap().seconds, 1);
    assert!(ran_for(&info) >= Duration::from_secs(1), "{info:?}");
    eprintln!(
        "a 1 s time limit ended the job {:?} after its creation",
        ran_for(&info)
    );

    // Across a kill -9 of the supervisor: one deadline passes while it is
    // down, the other after it is back. Both are enforced from the records.
    let passed = started(
        alice
            .start_job(timed("/bin/sleep", &["60"], 1500))
            .await
            .unwrap(),
    );
    let later = started(
        alice
            .start_job(timed("/bin/sleep", &["60"], 4000))
            .await
            .unwrap(),
    );
    supervisor.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    supervisor.restart().unwrap();
    for (job, limit) in [(&passed, 1500), (&later, 4000)] {
        let info = wait_ended(&mut alice, job).await;
        assert_eq!(info.state(), v1::JobState::Stopped, "{info:?}");
        assert_eq!(info.stop_reason(), v1::StopReason::TimedOut, "{info:?}");
        assert!(ran_for(&info) >= Duration::from_millis(limit), "{info:?}");
        eprintln!(
            "a {limit} ms time limit across a restart ended the job {:?} after its creation",
            ran_for(&info)
        );
    }

    // A job stopped by a request before its deadline says so.
    let stopped = started(
        alice
            .start_job(timed("/bin/sleep", &["60"], 60_000))
            .await
            .unwrap(),
    );
    let info = alice
        .stop_job(stop_request(&stopped))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(info.stop_reason(), v1::StopReason::Requested, "{info:?}");
    drop(supervisor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_find_the_callers_jobs_and_bad_ones_are_named() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut alice = gateway.client(&pki, "alice").await;
    let mut bob = gateway.client(&pki, "bob").await;
    let mut admin = gateway.client(&pki, "admin").await;
    let labelled = |pairs: &[(&str, &str)]| v1::StartJobRequest {
        labels: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..start("/bin/true", &[])
    };
    let start_as = async |client: &mut v1::job_service_client::JobServiceClient<_>,
                          pairs: &[(&str, &str)]| {
        client
            .start_job(labelled(pairs))
            .await
            .unwrap()
            .into_inner()
            .job_id
    };
    let ci = start_as(&mut alice, &[("team", "build"), ("env", "ci")]).await;
    let prod = start_as(&mut alice, &[("team", "build"), ("env", "prod")]).await;
    let plain = start_as(&mut alice, &[]).await;
    let bobs = start_as(&mut bob, &[("team", "build"), ("env", "ci")]).await;

    async fn listed(
        client: &mut v1::job_service_client::JobServiceClient<tonic::transport::Channel>,
        selector: &[(&str, &str)],
    ) -> BTreeSet<String> {
        let page = client
            .list_jobs(v1::ListJobsRequest {
                label_selector: selector
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        page.jobs.into_iter().map(|job| job.id).collect()
    }
    let set = |ids: &[&String]| ids.iter().map(|id| (*id).clone()).collect::<BTreeSet<_>>();
    assert_eq!(
        listed(&mut alice, &[("team", "build")]).await,
        set(&[&ci, &prod])
    );
    assert_eq!(
        listed(&mut alice, &[("team", "build"), ("env", "ci")]).await,
        set(&[&ci]),
        "bob's job with the same labels stays invisible to alice"
    );
    assert_eq!(listed(&mut alice, &[]).await, set(&[&ci, &prod, &plain]));
    assert_eq!(listed(&mut alice, &[("team", "other")]).await, set(&[]));
    assert_eq!(listed(&mut bob, &[("env", "ci")]).await, set(&[&bobs]));
    assert_eq!(
        listed(&mut admin, &[("team", "build"), ("env", "ci")]).await,
        set(&[&ci, &bobs])
    );
    let info = get(&mut alice, &ci).await.unwrap();
    assert_eq!(info.labels.get("team").map(String::as_str), Some("build"));
    assert_eq!(info.labels.len(), 2);

    // Bad labels: INVALID_ARGUMENT naming the label, and nothing started.
    for (pairs, named) in [
        (vec![("bad key", "x")], "labels[\"bad key\"]"),
        (vec![("team", "a\u{1b}[31m")], "labels[\"team\"]"),
        (
            vec![("team", "v".repeat(64).leak() as &str)],
            "labels[\"team\"]",
        ),
    ] {
        let err = alice.start_job(labelled(&pairs)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with(&format!("invalid {named}:")),
            "{}",
            err.message()
        );
    }
    let too_many: Vec<(String, String)> = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
    let err = alice
        .start_job(v1::StartJobRequest {
            labels: too_many.into_iter().collect(),
            ..start("/bin/true", &[])
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = alice
        .list_jobs(v1::ListJobsRequest {
            label_selector: [("-x".to_owned(), "y".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("invalid label_selector[\"-x\"]:"),
        "{}",
        err.message()
    );
    assert_eq!(
        listed(&mut alice, &[]).await.len(),
        3,
        "a refused start started nothing"
    );
}
