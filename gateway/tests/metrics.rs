//! The metrics endpoint end to end: the real gateway (started as root,
//! running as nobody, its metrics endpoint on a free loopback port) in front
//! of the real supervisor, jobs run through it over mutual TLS, and a real
//! Prometheus (Debian's `prometheus` package) scraping the endpoint every
//! second; `promtool check metrics` lints a scrape. Run as root, after
//! `cargo build --workspace --bins`, with Prometheus installed (`apt-get
//! install -y --no-install-recommends prometheus`): without it these tests
//! fail, they never skip.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

#[allow(
    dead_code,
    unused_imports,
    reason = "the helpers are shared by several test files"
)]
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, Pki, Supervisor, start, start_job, wait_ended};
use jobworker_proto::v1;
use jobworker_tests::fixture::GatewayOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long Prometheus may take to show what happened: its first scrape of
/// a new target waits for its 5 s reload tick, then one per second.
const PROMETHEUS_WITHIN: Duration = Duration::from_secs(60);

const INSTALL: &str = "install Debian's Prometheus: apt-get install -y \
                       --no-install-recommends prometheus";

/// Fails, saying how to install them, unless `prometheus` and `promtool`
/// run.
fn require_prometheus() {
    for tool in ["prometheus", "promtool"] {
        let ran = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            ran.is_ok_and(|status| status.success()),
            "`{tool} --version` does not run: {INSTALL}"
        );
    }
}

/// A gateway serving metrics, in front of a supervisor, with certificates.
fn stack() -> (Pki, Supervisor, Gateway, SocketAddr) {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let options = GatewayOptions {
        metrics: true,
        ..GatewayOptions::default()
    };
    let gateway = Gateway::start_with(&pki, &supervisor.socket, &options);
    let metrics = gateway.metrics_addr.unwrap();
    (pki, supervisor, gateway, metrics)
}

/// An HTTP answer.
struct Answer {
    status: u16,
    /// The status line and headers.
    head: String,
    body: String,
}

/// One HTTP/1.0 request (so the answer is neither chunked nor kept alive).
async fn http(addr: SocketAddr, method: &str, target: &str) -> Answer {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(format!("{method} {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        std::io::Result::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} http://{addr}{target} took over 20 s"))
        .unwrap_or_else(|e| panic!("{method} http://{addr}{target}: {e}"));
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    Answer {
        status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// The gateway's exposition, checked to be a complete OpenMetrics answer.
async fn scrape(metrics: SocketAddr) -> String {
    let answer = http(metrics, "GET", "/metrics").await;
    assert_eq!(answer.status, 200, "{}\n\n{}", answer.head, answer.body);
    assert!(
        answer.head.to_ascii_lowercase().contains(
            "\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
        ),
        "{}",
        answer.head
    );
    assert!(answer.body.ends_with("# EOF\n"), "{}", answer.body);
    answer.body
}

/// A private Prometheus: its own configuration, storage and port; killed on
/// drop (its log printed if the test failed).
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second, and
    /// waits until it is ready.
    async fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: jobworker\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // A free port (Prometheus does not say which it took for port 0).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting prometheus: {e}; {INSTALL}"));
        let mut prometheus = Self { child, dir, addr };
        let started = Instant::now();
        loop {
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!(
                    "prometheus exited with {status}:\n{}",
                    prometheus.log_text()
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && http(addr, "GET", "/-/ready").await.status == 200
            {
                return prometheus;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "prometheus was not ready within 30 s:\n{}",
                prometheus.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The series of an instant query: each one's labels and value.
    async fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let answer = http(
            self.addr,
            "GET",
            &format!("/api/v1/query?query={}", percent_encoded(promql)),
        )
        .await;
        assert_eq!(answer.status, 200, "{promql}: {}", answer.body);
        let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(json["status"], "success", "{promql}: {json}");
        json["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log_text());
        }
    }
}

/// `text` as a URL query value.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `promtool check metrics` on `scrape`: fails on a parse error or any
/// finding but promtool 2.42's false "no help text" on the `_total` sample
/// of a counter whose help is on its family (OpenMetrics names a counter's
/// family without `_total`; promtool reads the older text format).
fn promtool_check(scrape: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting promtool: {e}; {INSTALL}"));
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let code = output.status.code();
    assert!(
        matches!(code, Some(0 | 3)),
        "promtool could not read the scrape (exit {code:?}):\n{findings}\n{scrape}"
    );
    let counters: Vec<&str> = scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    for finding in findings.lines().filter(|line| !line.trim().is_empty()) {
        let known_noise = finding
            .strip_suffix(" no help text")
            .and_then(|sample| sample.strip_suffix("_total"))
            .is_some_and(|family| counters.contains(&family));
        assert!(
            known_noise,
            "promtool found {finding:?} in the scrape:\n{findings}\n{scrape}"
        );
    }
}

/// What a query of `jobworker_jobs_ended_total` shows: (state, reason) ->
/// count, for the series with a count.
fn ended(series: &[(BTreeMap<String, String>, f64)]) -> BTreeMap<(String, String), f64> {
    series
        .iter()
        .filter(|(_, value)| *value > 0.0)
        .map(|(labels, value)| ((labels["state"].clone(), labels["reason"].clone()), *value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_how_jobs_ended_and_the_grpc_calls() {
    require_prometheus();
    let (pki, _supervisor, gateway, metrics) = stack();
    let prometheus = Prometheus::start(metrics).await;
    let mut admin = gateway.client(&pki, "admin").await;

    let finished = start_job(&mut admin, "/bin/true", &[]).await;
    let failed = start_job(&mut admin, "/bin/sh", &["-c", "exit 3"]).await;
    let timed_out = admin
        .start_job(v1::StartJobRequest {
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..start("/bin/sleep", &["60"])
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let stopped = start_job(&mut admin, "/bin/sleep", &["60"]).await;
    admin
        .stop_job(v1::StopJobRequest {
            job_id: stopped.clone(),
            grace_period: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
        })
        .await
        .unwrap();

    let ends = [
        (
            &finished,
            v1::JobState::Finished,
            v1::StopReason::Unspecified,
            Some(0),
        ),
        (
            &failed,
            v1::JobState::Finished,
            v1::StopReason::Unspecified,
            Some(3),
        ),
        (
            &timed_out,
            v1::JobState::Stopped,
            v1::StopReason::TimedOut,
            None,
        ),
        (
            &stopped,
            v1::JobState::Stopped,
            v1::StopReason::Requested,
            None,
        ),
    ];
    for (job, state, stop_reason, exit_code) in ends {
        let info = wait_ended(&mut admin, job).await;
        assert_eq!(
            (info.state(), info.stop_reason(), info.exit_code),
            (state, stop_reason, exit_code),
            "job {job}: {info:?}"
        );
    }

    let expected: BTreeMap<(String, String), f64> = [
        ("finished", "exit_zero"),
        ("finished", "exit_nonzero"),
        ("stopped", "timeout"),
        ("stopped", "stop_request"),
    ]
    .into_iter()
    .map(|(state, reason)| ((state.to_owned(), reason.to_owned()), 1.0))
    .collect();
    let starts = "jobworker_gateway_grpc_requests_total{method=\"StartJob\",code=\"OK\"}";
    let waited = Instant::now();
    loop {
        let seen = ended(&prometheus.query("jobworker_jobs_ended_total").await);
        let start_calls: Vec<f64> = prometheus
            .query(starts)
            .await
            .into_iter()
            .map(|(_, value)| value)
            .collect();
        let up = prometheus.query("jobworker_supervisor_up").await;
        if seen == expected && start_calls == [4.0] {
            assert_eq!(up.len(), 1, "{up:?}");
            assert_eq!(up[0].1, 1.0, "the supervisor is up: {up:?}");
            break;
        }
        assert!(
            waited.elapsed() < PROMETHEUS_WITHIN,
            "Prometheus did not show the jobs' ends and the StartJob calls within \
             {PROMETHEUS_WITHIN:?}: jobworker_jobs_ended_total > 0 is {seen:?}, expected \
             {expected:?}; {starts} is {start_calls:?}, expected [4.0]; \
             jobworker_supervisor_up is {up:?}.\nThe gateway's exposition now:\n{}",
            scrape(metrics).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Prometheus took every family; promtool finds nothing but its known
    // false positive.
    let text = scrape(metrics).await;
    for family in [
        "jobworker_jobs_started_total",
        "jobworker_job_start_duration_seconds_count",
        "jobworker_job_duration_seconds_count",
        "jobworker_gateway_grpc_request_duration_seconds_count",
        "jobworker_supervisor_limit_enforced",
        "jobworker_gateway_build_info",
    ] {
        let series = prometheus.query(family).await;
        assert!(!series.is_empty(), "Prometheus has no {family}");
    }
    let started = prometheus.query("jobworker_jobs_started_total").await;
    assert_eq!(started[0].1, 4.0, "{started:?}");
    promtool_check(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_counts_refusals_and_outlives_the_supervisor() {
    let (pki, mut supervisor, gateway, metrics) = stack();

    // Only GET /metrics.
    let text = scrape(metrics).await;
    assert!(text.contains("\njobworker_supervisor_up 1\n"), "{text}");
    assert_eq!(http(metrics, "GET", "/").await.status, 404);
    assert_eq!(http(metrics, "GET", "/metrics/x").await.status, 404);
    let post = http(metrics, "POST", "/metrics").await;
    assert_eq!(post.status, 405, "{}", post.head);

    // Connections that never make a call, by why.
    for client in [None, Some("mallory"), Some("expired")] {
        gateway.handshake(&pki, client).await.unwrap_err();
    }
    gateway.handshake(&pki, Some("norole")).await.unwrap();
    let mut rita = gateway.client(&pki, "rita").await;
    let refused = rita.start_job(start("/bin/true", &[])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // (The gateway counts a failed handshake just after its client learns.)
    scrape_until(
        metrics,
        &[
            "jobworker_gateway_auth_failures_total{kind=\"no_client_certificate\"} 1",
            "jobworker_gateway_auth_failures_total{kind=\"bad_client_certificate\"} 2",
            "jobworker_gateway_auth_failures_total{kind=\"bad_identity\"} 1",
            "jobworker_gateway_auth_failures_total{kind=\"handshake_timeout\"} 0",
            "jobworker_gateway_auth_failures_total{kind=\"tls_handshake\"} 0",
            "jobworker_gateway_grpc_requests_total{method=\"StartJob\",code=\"PERMISSION_DENIED\"} 1",
        ],
    )
    .await;

    // The supervisor down: the scrape still answers, saying so.
    supervisor.kill9();
    let text = scrape(metrics).await;
    assert!(text.contains("\njobworker_supervisor_up 0\n"), "{text}");
    assert!(!text.contains("jobworker_jobs_started"), "{text}");
    // Back: one reconnection.
    supervisor.spawn();
    let text = scrape(metrics).await;
    assert!(text.contains("\njobworker_supervisor_up 1\n"), "{text}");
    assert!(
        text.contains("\njobworker_gateway_supervisor_reconnects_total 1\n"),
        "{text}"
    );
}

/// Scrapes until every one of `lines` is in the exposition (at most 10 s).
async fn scrape_until(metrics: SocketAddr, lines: &[&str]) {
    let started = Instant::now();
    loop {
        let text = scrape(metrics).await;
        let missing: Vec<&&str> = lines
            .iter()
            .filter(|line| !text.contains(&format!("\n{line}\n")))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{missing:?} missing from the exposition:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
