//! The real thing for tests: certificates made with jobworker-certs, a real
//! `jobworker-supervisor` (root, its own socket, state directory and cgroup
//! subtree), a real `jobworker-gateway` (started as root, running as
//! nobody/nogroup, on a free loopback port), and clients speaking gRPC over
//! mutual TLS. Processes are killed and the cgroup subtree removed on drop.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use jobworker_certs::{
    CaKind, ClientRequest, Overwrite, ServerRequest, Validity, issue_client, issue_server,
};
use jobworker_proto::v1;
use jobworker_proto::v1::job_service_client::JobServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, chown};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The account the gateway and the jobs run as.
pub const NOBODY: u32 = 65534;

/// Fails the test unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests start the supervisor and the gateway as root: run them as root"
    );
}

/// A workspace binary next to this test's binary (`target/<profile>/`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run cargo build --workspace --bins first",
        path.display()
    );
    path
}

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
pub struct Pki {
    dir: tempfile::TempDir,
    other: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The gateway (nobody) reads its files here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let validity = Validity::days_from_now(1).unwrap();
        jobworker_certs::init(dir.path(), &validity, Overwrite::Refuse).unwrap();
        let pki = Self {
            dir,
            other: tempfile::tempdir().unwrap(),
        };
        pki.issue_server("server");
        for (user, roles) in [
            ("admin", &["admin"][..]),
            ("alice", &["user"]),
            ("bob", &["user"]),
            ("rita", &["reader"]),
            ("norole", &[]),
            ("unknown", &["superuser"]),
            ("twice", &["user", "admin"]),
        ] {
            pki.issue_client(pki.dir.path(), user, roles, validity);
        }
        let now = time::OffsetDateTime::now_utc();
        let past = Validity::new(
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
        pki.issue_client(pki.dir.path(), "expired", &["user"], past);
        // Another client CA, trusted by no one here.
        let other = pki.other.path();
        jobworker_certs::init(other, &validity, Overwrite::Refuse).unwrap();
        pki.issue_client(other, "mallory", &["admin"], validity);
        for ext in ["pem", "key"] {
            std::fs::copy(
                other.join(format!("mallory.{ext}")),
                pki.path(&format!("mallory.{ext}")),
            )
            .unwrap();
        }
        pki
    }

    fn issue_client(&self, dir: &Path, user: &str, roles: &[&str], validity: Validity) {
        issue_client(
            dir,
            &ClientRequest {
                user: user.into(),
                role_values: roles.iter().map(|r| (*r).to_owned()).collect(),
                validity,
                prefix: user.into(),
                overwrite: Overwrite::Refuse,
            },
        )
        .unwrap();
    }

    /// (Re)issues the gateway's certificate as `server.pem`/`server.key`
    /// (replacing them atomically), the key owned by the gateway's account.
    pub fn issue_server(&self, prefix: &str) {
        issue_server(
            self.dir.path(),
            &ServerRequest {
                host: "localhost".into(),
                extra_names: vec!["127.0.0.1".into()],
                validity: Validity::days_from_now(1).unwrap(),
                prefix: prefix.into(),
                overwrite: Overwrite::Replace,
            },
        )
        .unwrap();
        let key = self.path(&format!("{prefix}.key"));
        chown(
            &key,
            Some(nix::unistd::Uid::from_raw(NOBODY)),
            Some(nix::unistd::Gid::from_raw(NOBODY)),
        )
        .unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    /// The DER of the first certificate in `name`.
    pub fn der(&self, name: &str) -> Vec<u8> {
        CertificateDer::from_pem_file(self.path(name))
            .unwrap()
            .to_vec()
    }

    /// The server CA certificate file.
    pub fn server_ca(&self) -> PathBuf {
        CaKind::Server.cert_path(self.dir.path())
    }
}

// ---------------------------------------------------------------------------
// The supervisor.

fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            (fields.get(separator + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
        })
        .expect("these tests need a cgroup2 mount (see /proc/self/mountinfo)")
}

/// A real supervisor with its own socket, state and cgroup subtree.
pub struct Supervisor {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    cgroup_root: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Supervisor {
    pub fn start() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        require_root();
        let dir = tempfile::tempdir().unwrap();
        // The gateway (nobody) reaches the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cgroup_root = cgroup2_mount().join(format!(
            "jobworker-test-gw-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let socket = dir.path().join("supervisor.sock");
        let state = dir.path().join("state");
        let config = dir.path().join("supervisor.toml");
        std::fs::write(
            &config,
            format!(
                "socket_path = {socket:?}\nsocket_group = \"nogroup\"\nstate_dir = {state:?}\n\
                 cgroup_root = {cgroup_root:?}\ngateway_user = \"nobody\"\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("supervisor.log");
        let mut supervisor = Self {
            child: None,
            dir,
            socket,
            cgroup_root,
            config,
            log,
        };
        supervisor.spawn();
        supervisor
    }

    /// Starts the process and waits until it serves its socket.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(workspace_binary("jobworker-supervisor"))
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("the supervisor exited with {status}:\n{}", self.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the supervisor never served its socket:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the supervisor (its jobs go on).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- supervisor log ({}) ---\n{}",
                self.dir.path().display(),
                self.log_text()
            );
        }
        jobworker_tests::cleanup::remove_cgroup_tree(&self.cgroup_root);
    }
}

// ---------------------------------------------------------------------------
// The gateway.

/// A real gateway, started as root with run_as nobody/nogroup.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The gateway's configuration for `pki` and `socket`, with `extra` lines.
pub fn gateway_config(pki: &Pki, socket: &Path, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nserver_cert = {:?}\nserver_key = {:?}\nclient_ca = {:?}\n\
         supervisor_socket = {socket:?}\nrun_as_user = \"nobody\"\nrun_as_group = \"nogroup\"\n\
         handshake_timeout_ms = 5000\n{extra}\n",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("client-ca.pem"),
    )
}

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
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, gateway_config(pki, socket, extra)).unwrap();
        let log = dir.path().join("gateway.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_jobworker-gateway"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let start = Instant::now();
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text
                .split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
            {
                break addr.parse().unwrap();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the gateway exited with {status}:\n{text}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the gateway never listened:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most `limit`) for the gateway to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "the gateway did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(i32::try_from(self.pid()).unwrap()), signal).unwrap();
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
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pki.read("server-ca.pem")))
            .identity(Identity::from_pem(
                pki.read(&format!("{client}.pem")),
                pki.read(&format!("{client}.key")),
            ))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting as {client}: {e}"))
    }

    /// A job service client with `client`'s certificate.
    pub async fn client(&self, pki: &Pki, client: &str) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel(pki, client).await)
    }

    /// A raw TLS handshake with `client`'s certificate (or none), followed
    /// by the HTTP/2 preface: the server's certificate chain if the
    /// gateway takes the connection, or why not.
    pub async fn handshake(&self, pki: &Pki, client: Option<&str>) -> Result<Vec<Vec<u8>>, String> {
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
        let attempt = async {
            let mut tls = connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| e.to_string())?;
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

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log_text());
        }
    }
}

// ---------------------------------------------------------------------------
// Calls.

/// A StartJob request for `command args...`.
pub fn start(command: &str, args: &[&str]) -> v1::StartJobRequest {
    v1::StartJobRequest {
        command: command.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    }
}

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
        if info.state() != v1::JobState::Running {
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
