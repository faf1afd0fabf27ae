//! The real thing for the gateway's tests, on the shared fixture
//! (`jobworker_tests::fixture`): certificates made with jobworker-certs, a
//! real `jobworker-supervisor`, a real `jobworker-gateway` (started as root,
//! running as nobody/nogroup, on a free loopback port), and clients speaking
//! gRPC over mutual TLS. The types here wrap the fixture's for these tests:
//! the gateway's set of clients, and a failure is a panic.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobworker_certs::Validity;
use jobworker_proto::v1;
use jobworker_proto::v1::job_service_client::JobServiceClient;
use jobworker_tests::fixture::{self, GatewayOptions, SupervisorOptions, USERS};
use nix::sys::signal::Signal;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

pub use jobworker_tests::fixture::NOBODY;
pub use jobworker_tests::fixture::gateway::{config as gateway_config, start_request as start};

/// Waits until `done` holds, checking every 20 ms for at most `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Certificates.

/// The certificates of one test: the two CAs, the gateway's certificate for
/// localhost and 127.0.0.1, and clients: `admin`, `alice` and `bob` (users),
/// `rita` (reader); `norole`, `unknown` (role "superuser"), `twice` (two
/// role extensions); `expired`; `mallory` (from another client CA).
pub struct Pki(fixture::Pki);

impl Pki {
    pub fn new() -> Self {
        let odd: &[fixture::Client<'_>] = &[
            ("norole", &[]),
            ("unknown", &["superuser"]),
            ("twice", &["user", "admin"]),
        ];
        let pki = fixture::Pki::new(&[USERS, odd].concat()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let past = Validity::new(
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
        pki.issue_client("expired", &["user"], past).unwrap();
        Self(pki)
    }

    /// (Re)issues the gateway's certificate as `<prefix>.pem` and
    /// `<prefix>.key` (replacing them atomically).
    pub fn issue_server(&self, prefix: &str) {
        self.0.issue_server(prefix).unwrap();
    }

    /// The DER of the first certificate in `name`.
    pub fn der(&self, name: &str) -> Vec<u8> {
        CertificateDer::from_pem_file(self.path(name))
            .unwrap()
            .to_vec()
    }
}

impl Deref for Pki {
    type Target = fixture::Pki;

    fn deref(&self) -> &fixture::Pki {
        &self.0
    }
}

// ---------------------------------------------------------------------------
// The supervisor.

/// A real supervisor with its own socket, state and cgroup subtree, whose
/// gateway account is nobody.
pub struct Supervisor(fixture::Supervisor);

impl Supervisor {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts one with `extra` added to its configuration.
    pub fn start_with(extra: &str) -> Self {
        let options = SupervisorOptions {
            extra: extra.to_owned(),
            ..SupervisorOptions::default()
        };
        Self(fixture::Supervisor::start(&options).unwrap())
    }

    /// Starts the supervisor again (after `kill9`) and waits until it serves.
    pub fn spawn(&mut self) {
        self.0.restart().unwrap();
    }
}

impl Deref for Supervisor {
    type Target = fixture::Supervisor;

    fn deref(&self) -> &fixture::Supervisor {
        &self.0
    }
}

impl DerefMut for Supervisor {
    fn deref_mut(&mut self) -> &mut fixture::Supervisor {
        &mut self.0
    }
}

// ---------------------------------------------------------------------------
// The gateway.

/// A real gateway, started as root with run_as nobody/nogroup.
pub struct Gateway(fixture::Gateway);

/// Runs the gateway binary on `config` to its end: (success, stdout, stderr).
pub fn run_gateway(config: &str, args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobworker-gateway"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the gateway did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Gateway {
    /// Starts the gateway for `pki` and the supervisor at `socket`, `extra`
    /// lines added to its configuration, and waits until it listens.
    pub fn start(pki: &Pki, socket: &Path, extra: &str) -> Self {
        let options = GatewayOptions {
            extra: extra.to_owned(),
            ..GatewayOptions::default()
        };
        Self::start_with(pki, socket, &options)
    }

    /// Starts the gateway with `options` (its metrics endpoint, say).
    pub fn start_with(pki: &Pki, socket: &Path, options: &GatewayOptions) -> Self {
        Self(fixture::Gateway::start(pki, socket, options).unwrap())
    }

    /// Waits (at most `limit`) for the gateway to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.0.wait_exit(limit).unwrap()
    }

    /// Sends `signal` to the gateway.
    pub fn signal(&self, signal: Signal) {
        self.0.signal(signal).unwrap();
    }

    /// Waits until the log has `count` lines containing `needle`.
    pub fn wait_log(&self, needle: &str, count: usize) {
        wait_until(
            &format!("{count} log lines with {needle:?}"),
            Duration::from_secs(10),
            || self.log_text().matches(needle).count() >= count,
        );
    }

    /// A channel to the gateway with `client`'s certificate.
    pub async fn channel(&self, pki: &Pki, client: &str) -> Channel {
        self.0.channel(pki, client).await.unwrap()
    }

    /// A job service client with `client`'s certificate.
    pub async fn client(&self, pki: &Pki, client: &str) -> JobServiceClient<Channel> {
        self.0.client(pki, client).await.unwrap()
    }

    /// A raw TLS connection with `client`'s certificate (or none), its
    /// handshake done, nothing sent yet.
    pub async fn tls(
        &self,
        pki: &Pki,
        client: Option<&str>,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(pki.server_ca()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match client {
            Some(name) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(pki.path(&format!("{name}.pem")))
                        .unwrap()
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap(),
                    PrivateKeyDer::from_pem_file(pki.path(&format!("{name}.key"))).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let server_name = ServerName::try_from("localhost").unwrap();
        connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| e.to_string())
    }

    /// A raw TLS handshake with `client`'s certificate (or none), followed
    /// by the HTTP/2 preface: the server's certificate chain if the
    /// gateway takes the connection, or why not.
    pub async fn handshake(&self, pki: &Pki, client: Option<&str>) -> Result<Vec<Vec<u8>>, String> {
        let attempt = async {
            let mut tls = self.tls(pki, client).await?;
            let chain: Vec<Vec<u8>> = tls
                .get_ref()
                .1
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| c.to_vec())
                .collect();
            // The HTTP/2 preface and an empty SETTINGS frame: a server that
            // took the connection answers with its SETTINGS.
            tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = [0; 64];
            match tls.read(&mut buf).await {
                Ok(0) => Err("the server closed the connection".to_owned()),
                Ok(_) => Ok(chain),
                Err(e) => Err(e.to_string()),
            }
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .expect("the handshake ends within 10 s")
    }
}

impl Deref for Gateway {
    type Target = fixture::Gateway;

    fn deref(&self) -> &fixture::Gateway {
        &self.0
    }
}

impl DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut fixture::Gateway {
        &mut self.0
    }
}

// ---------------------------------------------------------------------------
// Calls.

/// Starts a job, returning its id.
pub async fn start_job(
    client: &mut JobServiceClient<Channel>,
    command: &str,
    args: &[&str],
) -> String {
    client
        .start_job(start(command, args))
        .await
        .unwrap_or_else(|s| panic!("starting {command}: {s:?}"))
        .into_inner()
        .job_id
}

/// Gets a job.
pub async fn get(
    client: &mut JobServiceClient<Channel>,
    job: &str,
) -> Result<v1::Job, tonic::Status> {
    client
        .get_job(v1::GetJobRequest { job_id: job.into() })
        .await
        .map(tonic::Response::into_inner)
}

/// Waits (bounded) until a job has ended.
pub async fn wait_ended(client: &mut JobServiceClient<Channel>, job: &str) -> v1::Job {
    let start = Instant::now();
    loop {
        let info = get(client, job).await.unwrap();
        if !matches!(info.state(), v1::JobState::Running | v1::JobState::Queued) {
            return info;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "job {job} never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Follows a job's output from 0 to its end: the bytes and the final status.
pub async fn output(
    client: &mut JobServiceClient<Channel>,
    job: &str,
) -> Result<(Vec<u8>, v1::Job), tonic::Status> {
    let mut stream = client
        .stream_output(v1::StreamOutputRequest {
            job_id: job.into(),
            offset: 0,
            follow: Some(true),
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        match chunk.kind.expect("a chunk has a kind") {
            v1::output_chunk::Kind::Output(out) => {
                assert_eq!(out.offset, bytes.len() as u64, "chunks are contiguous");
                bytes.extend_from_slice(&out.data);
            }
            v1::output_chunk::Kind::End(job) => {
                assert!(stream.message().await?.is_none(), "End is last");
                return Ok((bytes, job));
            }
        }
    }
    panic!("the stream ended without End");
}

/// Asserts that `result` failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    match result {
        Err(status) => assert!(
            status.code() == code && status.message().contains(needle),
            "expected {code:?} with {needle:?}, got {:?}: {}",
            status.code(),
            status.message()
        ),
        Ok(value) => panic!("expected {code:?} with {needle:?}, got {value:?}"),
    }
}

/// The number of sockets a process has open.
pub fn socket_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count()
}
