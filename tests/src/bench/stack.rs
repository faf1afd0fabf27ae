//! The system under test, started for real: certificates made with
//! jobworker-certs, a `jobworker-supervisor` (root, its own socket, state
//! directory and cgroup subtree `<cgroup2>/jobworker-bench-<pid>-<n>`), a
//! `jobworker-gateway` (started as root, running as nobody/nogroup, on a free
//! loopback port) and clients: tonic over mutual TLS, as `jobctl` does, and
//! the ipc protocol straight to the socket, as `jobworker-debug` does.
//!
//! [`Stack`] kills both processes and removes the cgroup subtree when
//! dropped, whatever happened.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use jobworker_certs::{ClientRequest, Overwrite, ServerRequest, Validity};
use jobworker_ipc::codec::{self, ClientFramed};
use jobworker_ipc::{Call, Request, Response};
use jobworker_proto::v1;
use jobworker_proto::v1::job_service_client::JobServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The remote user the bench acts as (role `user`).
pub const USER: &str = "bench";

/// A workspace binary next to the bench's own (`target/release/`).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("the bench binary's path")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", exe.display()))?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --release --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            (fields.get(separator + 1) == Some(&"cgroup2"))
                .then(|| fields.get(4).map(PathBuf::from))
                .flatten()
        })
        .ok_or_else(|| anyhow!("no cgroup2 mount in /proc/self/mountinfo"))
}

/// A fresh cgroup path under the cgroup2 mount, unique to this process.
pub fn fresh_cgroup(kind: &str) -> Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    Ok(cgroup2_mount()?.join(format!(
        "jobworker-bench-{}-{kind}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )))
}

pub use crate::cleanup::remove_cgroup_tree;

/// A cgroup directory removed (with its subtree) on drop.
#[derive(Debug)]
pub struct CgroupGuard(pub PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.0);
    }
}

/// A directory other accounts (the gateway's, the jobs') can enter.
fn shared_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("jobworker-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Extra settings of one stack.
#[derive(Clone, Debug, Default)]
pub struct StackOptions {
    /// Lines added to the supervisor's configuration.
    pub supervisor_extra: String,
    /// Lines added to the gateway's configuration.
    pub gateway_extra: String,
}

/// A running supervisor and gateway, with certificates for [`USER`].
///
/// Fields drop in order: the gateway, the supervisor, then the cgroup
/// subtree, then the files.
#[derive(Debug)]
pub struct Stack {
    gateway: Process,
    supervisor: Process,
    _cgroup: CgroupGuard,
    /// The gateway's address (`127.0.0.1:<port>`).
    pub addr: String,
    /// The supervisor's socket.
    pub socket: PathBuf,
    /// The supervisor's state directory (job records live in `jobs/`).
    pub state_dir: PathBuf,
    certs: PathBuf,
    dir: tempfile::TempDir,
}

impl Stack {
    /// Starts the supervisor and the gateway and waits until both serve.
    pub fn start(options: &StackOptions) -> Result<Self> {
        let supervisor_bin = workspace_binary("jobworker-supervisor")?;
        let gateway_bin = workspace_binary("jobworker-gateway")?;
        let dir = shared_dir()?;
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs)?;
        std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755))?;
        make_certs(&certs)?;

        let cgroup = CgroupGuard(fresh_cgroup("stack")?);
        let socket = dir.path().join("supervisor.sock");
        let state_dir = dir.path().join("state");
        let config = dir.path().join("supervisor.toml");
        std::fs::write(
            &config,
            format!(
                "socket_path = {socket:?}\nsocket_group = \"nogroup\"\nstate_dir = {state_dir:?}\n\
                 cgroup_root = {:?}\ngateway_user = \"nobody\"\n\
                 grace_period_ms = 2000\n{}\n",
                cgroup.0, options.supervisor_extra
            ),
        )?;
        let supervisor_log = dir.path().join("supervisor.log");
        let mut supervisor = Process(spawn_logged(&supervisor_bin, &config, &supervisor_log)?);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Some(status) = supervisor.0.try_wait()? {
                bail!(
                    "the supervisor exited with {status}:\n{}",
                    log_text(&supervisor_log)
                );
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!(
                    "the supervisor never served its socket:\n{}",
                    log_text(&supervisor_log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        let gateway_config = dir.path().join("gateway.toml");
        std::fs::write(
            &gateway_config,
            format!(
                "listen = \"127.0.0.1:0\"\nserver_cert = {:?}\nserver_key = {:?}\n\
                 client_ca = {:?}\nsupervisor_socket = {socket:?}\nrun_as_user = \"nobody\"\n\
                 run_as_group = \"nogroup\"\n{}\n",
                certs.join("server.pem"),
                certs.join("server.key"),
                certs.join("client-ca.pem"),
                options.gateway_extra,
            ),
        )?;
        let gateway_log = dir.path().join("gateway.log");
        let mut gateway = Process(spawn_logged(&gateway_bin, &gateway_config, &gateway_log)?);
        let start = Instant::now();
        let addr = loop {
            let text = log_text(&gateway_log);
            if let Some(addr) = text
                .split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
            {
                break addr.to_owned();
            }
            if let Some(status) = gateway.0.try_wait()? {
                bail!("the gateway exited with {status}:\n{text}");
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("the gateway never listened:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Self {
            gateway,
            supervisor,
            _cgroup: cgroup,
            addr,
            socket,
            state_dir,
            certs,
            dir,
        })
    }

    /// The supervisor's pid.
    pub fn supervisor_pid(&self) -> u32 {
        self.supervisor.0.id()
    }

    /// The gateway's pid.
    pub fn gateway_pid(&self) -> u32 {
        self.gateway.0.id()
    }

    /// The supervisor's log so far.
    pub fn supervisor_log(&self) -> String {
        log_text(&self.dir.path().join("supervisor.log"))
    }

    /// A new mTLS channel (one TCP + TLS connection) to the gateway as
    /// [`USER`], connected eagerly like `jobctl`.
    pub async fn channel(&self) -> Result<Channel> {
        let read = |name: &str| {
            std::fs::read(self.certs.join(name)).with_context(|| format!("reading {name}"))
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("server-ca.pem")?))
            .identity(Identity::from_pem(
                read(&format!("{USER}.pem"))?,
                read(&format!("{USER}.key"))?,
            ))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{}", self.addr))?
            .tls_config(tls)?
            .connect()
            .await
            .context("connecting to the gateway")
    }

    /// A job service client on a new channel.
    pub async fn client(&self) -> Result<JobServiceClient<Channel>> {
        Ok(JobServiceClient::new(self.channel().await?))
    }

    /// A new ipc connection to the supervisor (as root: the local admin).
    pub async fn ipc(&self) -> Result<ClientFramed<UnixStream>> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        codec::client(stream).await.context("the ipc handshake")
    }
}

fn spawn_logged(binary: &Path, config: &Path, log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log)?;
    Command::new(binary)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// The two CAs, the gateway's certificate (key owned by nobody, 0600) and
/// a client certificate for [`USER`] with the role `user`.
fn make_certs(dir: &Path) -> Result<()> {
    let validity = Validity::days_from_now(2)?;
    jobworker_certs::init(dir, &validity, Overwrite::Refuse)?;
    jobworker_certs::issue_server(
        dir,
        &ServerRequest {
            host: "localhost".into(),
            extra_names: vec!["127.0.0.1".into()],
            validity,
            prefix: "server".into(),
            overwrite: Overwrite::Refuse,
        },
    )?;
    jobworker_certs::issue_client(
        dir,
        &ClientRequest {
            user: USER.into(),
            role_values: vec!["user".into()],
            validity,
            prefix: USER.into(),
            overwrite: Overwrite::Refuse,
        },
    )?;
    let key = dir.join("server.key");
    std::os::unix::fs::chown(&key, Some(65534), Some(65534))?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// A StartJob request for `command args...`.
pub fn start_request(command: &str, args: &[&str]) -> v1::StartJobRequest {
    v1::StartJobRequest {
        command: command.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    }
}

/// Follows a job's output from offset 0 to its end: (bytes received, the
/// time the first data byte arrived, the final status).
pub async fn follow(
    client: &mut JobServiceClient<Channel>,
    job_id: &str,
) -> Result<(u64, Option<Instant>, v1::Job)> {
    let mut stream = client
        .stream_output(v1::StreamOutputRequest {
            job_id: job_id.to_owned(),
            offset: 0,
            follow: Some(true),
        })
        .await
        .context("StreamOutput")?
        .into_inner();
    let mut bytes = 0u64;
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        match chunk.context("reading the stream")?.kind {
            Some(v1::output_chunk::Kind::Output(output)) => {
                if first.is_none() && !output.data.is_empty() {
                    first = Some(Instant::now());
                }
                bytes += output.data.len() as u64;
            }
            Some(v1::output_chunk::Kind::End(job)) => return Ok((bytes, first, job)),
            None => {}
        }
    }
    bail!("the stream of job {job_id} ended without its last message")
}

/// One ipc call on an open connection: its single response.
pub async fn ipc_call(framed: &mut ClientFramed<UnixStream>, request: Request) -> Result<Response> {
    framed
        .send(Call {
            on_behalf_of: None,
            request,
        })
        .await
        .context("sending an ipc call")?;
    framed
        .next()
        .await
        .ok_or_else(|| anyhow!("the supervisor closed the connection"))?
        .context("reading an ipc response")
}

/// The resident memory of a process in bytes (VmRSS of /proc/<pid>/status).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?
        .parse::<u64>()?;
    Ok(kib * 1024)
}

/// The seconds between two protobuf timestamps.
pub fn seconds_between(
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
) -> Option<f64> {
    let (from, to) = (from?, to?);
    Some((to.seconds - from.seconds) as f64 + f64::from(to.nanos - from.nanos) / 1e9)
}

/// CPU time of a process from /proc/<pid>/stat, in seconds: (its own
/// threads, user + system; its reaped children, user + system). Assumes
/// the kernel's USER_HZ of 100, which Linux fixes on x86 and arm.
pub fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("garbled /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<f64> {
        let value: u64 = fields
            .get(n - 3)
            .ok_or_else(|| anyhow!("/proc/{pid}/stat has no field {n}"))?
            .parse()?;
        Ok(value as f64 / 100.0)
    };
    Ok((field(14)? + field(15)?, field(16)? + field(17)?))
}

/// CPU used by the supervisor (own threads, and its reaped children: the
/// jobs' inits and, through them, their commands) and the gateway between
/// two readings.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuReading {
    /// The supervisor's own threads.
    pub supervisor: f64,
    /// The supervisor's reaped children.
    pub children: f64,
    /// The gateway.
    pub gateway: f64,
    /// This bench process (the clients).
    pub bench: f64,
}

impl Stack {
    /// The CPU time used so far by the stack's processes and the bench.
    pub fn cpu(&self) -> Result<CpuReading> {
        let (supervisor, children) = cpu_seconds(self.supervisor_pid())?;
        let (gateway, _) = cpu_seconds(self.gateway_pid())?;
        let (bench, _) = cpu_seconds(std::process::id())?;
        Ok(CpuReading {
            supervisor,
            children,
            gateway,
            bench,
        })
    }
}

impl CpuReading {
    /// The CPU used between `earlier` and this reading.
    pub fn since(&self, earlier: &CpuReading) -> CpuReading {
        CpuReading {
            supervisor: self.supervisor - earlier.supervisor,
            children: self.children - earlier.children,
            gateway: self.gateway - earlier.gateway,
            bench: self.bench - earlier.bench,
        }
    }

    /// For a note: each part divided by `per` (e.g. jobs), in ms.
    pub fn describe_per(&self, per: f64, what: &str) -> String {
        format!(
            "CPU per {what}: supervisor {:.2} ms, its reaped children (inits + commands) {:.2} ms, gateway {:.2} ms, bench clients {:.2} ms",
            self.supervisor * 1e3 / per,
            self.children * 1e3 / per,
            self.gateway * 1e3 / per,
            self.bench * 1e3 / per,
        )
    }
}
