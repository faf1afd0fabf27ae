//! The real binaries for the CLI's tests: a `jobworker-supervisor` on its own
//! socket, state directory and cgroup subtree, a `jobworker-gateway` on a
//! free loopback port with certificates made by `jobworker-certs`, and
//! helpers that run `jobctl` and `jobworker-debug` with a time limit.
//! Everything is killed and removed on drop.
//!
//! The other packages' binaries are found next to the test binary's
//! directory (`target/<profile>/`): build them first with
//! `cargo build --workspace --bins`.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use jobworker_certs::{ClientRequest, Overwrite, ServerRequest, Validity};
use jobworker_ipc::{
    Args, Call, Command as JobCommand, Env, JobId, JobSpec, Limits, Request, Response, codec,
};

/// `jobctl`, built for these tests.
pub const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");
/// `jobworker-debug`, built for these tests.
pub const DEBUG: &str = env!("CARGO_BIN_EXE_jobworker-debug");

/// How long one run of a CLI may take in these tests.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A binary of another package of the workspace, in `target/<profile>/`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("the test binary is in target/<profile>/deps");
    assert!(
        path.is_file(),
        "{} is missing: run cargo build --workspace --bins first",
        path.display()
    );
    path
}

/// The cgroup2 mount point, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (fields, after) = line.split_once(" - ")?;
            (after.split(' ').next()? == "cgroup2")
                .then(|| fields.split(' ').nth(4).map(PathBuf::from))
                .flatten()
        })
        .expect("these tests need a cgroup2 mount (none in /proc/self/mountinfo)")
}

pub use jobworker_tests::cleanup::remove_cgroup_tree;

fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests start the supervisor, which must run as root"
    );
}

fn world_readable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Other uids (the gateway's, nobody's) must reach the files inside.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// What a finished process left.
#[derive(Debug)]
pub struct Outcome {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error, as text.
    pub stderr: String,
}

impl Outcome {
    /// The exit code (panics if a signal killed it).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }

    /// Standard output as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Asserts success and returns standard output as text.
    pub fn ok(&self) -> String {
        assert_eq!(self.code(), 0, "failed: {}", self.stderr);
        self.stdout_text()
    }

    /// Asserts that stderr is exactly one line and returns it.
    pub fn one_line_error(&self) -> String {
        let lines: Vec<_> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr is not one line: {:?}", self.stderr);
        lines[0].to_owned()
    }
}

/// Spawns `cmd` with captured output and waits for it, killing it (and
/// failing) after `limit`.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Outcome {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    wait_with_timeout(child, limit)
}

/// Waits for a child spawned with piped stdout and stderr.
pub fn wait_with_timeout(mut child: Child, limit: Duration) -> Outcome {
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).map(|_| buf)
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap().unwrap_or_default();
            panic!(
                "still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        status,
        stdout: out.join().unwrap().unwrap(),
        stderr: String::from_utf8_lossy(&err.join().unwrap().unwrap()).into_owned(),
    }
}

/// A running `jobworker-supervisor`.
pub struct Supervisor {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub cgroup_root: PathBuf,
    log: PathBuf,
}

impl Supervisor {
    /// Starts a supervisor whose gateway account is `gateway_user`.
    pub fn start(gateway_user: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        assert_root();
        let binary = workspace_bin("jobworker-supervisor");
        let dir = world_readable_dir();
        let cgroup_root = cgroup2_mount().join(format!(
            "jobworker-test-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let socket = dir.path().join("supervisor.sock");
        let state = dir.path().join("state");
        let config = dir.path().join("supervisor.toml");
        let log = dir.path().join("supervisor.log");
        std::fs::write(
            &config,
            format!(
                "socket_path = {socket:?}\nsocket_group = \"nogroup\"\nstate_dir = {state:?}\n\
                 cgroup_root = {cgroup_root:?}\ngateway_user = \"{gateway_user}\"\n\
                 grace_period_ms = 2000\n"
            ),
        )
        .unwrap();
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut supervisor = Self {
            child: Some(child),
            _dir: dir,
            socket,
            cgroup_root,
            log,
        };
        supervisor.wait_ready();
        supervisor
    }

    fn wait_ready(&mut self) {
        for _ in 0..500 {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("the supervisor exited with {status}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the supervisor never served its socket:\n{}",
            self.log_text()
        );
    }

    /// The supervisor's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts a job as the local operator (this process is root); its id.
    pub fn start_local_job(&self, command: &str, args: &[&str]) -> JobId {
        let spec = JobSpec {
            command: JobCommand::new(command).unwrap(),
            args: Args::new(args.iter().map(|a| (*a).to_owned()).collect()).unwrap(),
            env: Env::default(),
            working_dir: None,
            limits: Limits::default(),
            request_id: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let stream = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
            let mut client = codec::client(stream).await.unwrap();
            client
                .send(Call {
                    on_behalf_of: None,
                    request: Request::StartJob(spec),
                })
                .await
                .unwrap();
            match client.next().await.expect("an answer").unwrap() {
                Response::Job(info) => info.id,
                other => panic!("starting a job: {other:?}"),
            }
        })
    }

    /// `jobworker-debug` on this supervisor's socket.
    pub fn debug(&self, args: &[&str]) -> Outcome {
        run_with_timeout(
            Command::new(DEBUG)
                .arg("--socket")
                .arg(&self.socket)
                .args(args)
                .env_remove("JOBWORKER_SOCKET"),
            CLI_TIMEOUT,
        )
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- supervisor log ---\n{}", self.log_text());
        }
        remove_cgroup_tree(&self.cgroup_root);
    }
}

/// Certificates for a test: the two CAs, the gateway's certificate, client
/// certificates for admin (admin), alice and bob (user) and rita (reader), and a
/// server CA of another deployment.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub other: tempfile::TempDir,
}

impl Certs {
    pub fn make() -> Self {
        let dir = world_readable_dir();
        let validity = Validity::days_from_now(2).unwrap();
        jobworker_certs::init(dir.path(), &validity, Overwrite::Refuse).unwrap();
        jobworker_certs::issue_server(
            dir.path(),
            &ServerRequest {
                host: "localhost".into(),
                extra_names: vec!["127.0.0.1".into()],
                validity,
                prefix: "server".into(),
                overwrite: Overwrite::Refuse,
            },
        )
        .unwrap();
        for (user, role) in [
            ("admin", "admin"),
            ("alice", "user"),
            ("bob", "user"),
            ("rita", "reader"),
        ] {
            jobworker_certs::issue_client(
                dir.path(),
                &ClientRequest {
                    user: user.into(),
                    role_values: vec![role.into()],
                    validity,
                    prefix: user.into(),
                    overwrite: Overwrite::Refuse,
                },
            )
            .unwrap();
        }
        let other = tempfile::tempdir().unwrap();
        jobworker_certs::init(other.path(), &validity, Overwrite::Refuse).unwrap();
        jobworker_certs::issue_client(
            other.path(),
            &ClientRequest {
                user: "mallory".into(),
                role_values: vec!["admin".into()],
                validity,
                prefix: "mallory".into(),
                overwrite: Overwrite::Refuse,
            },
        )
        .unwrap();
        Self { dir, other }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server CA of another deployment, which did not sign our gateway.
    pub fn wrong_ca(&self) -> PathBuf {
        self.other.path().join("server-ca.pem")
    }

    /// A client certificate (and key) from another deployment's client CA.
    pub fn foreign_client(&self) -> (PathBuf, PathBuf) {
        (
            self.other.path().join("mallory.pem"),
            self.other.path().join("mallory.key"),
        )
    }
}

/// A running `jobworker-gateway` in front of a supervisor.
pub struct Gateway {
    child: Option<Child>,
    pub address: String,
    log: PathBuf,
}

impl Gateway {
    /// Starts the gateway as root; it switches to nobody.
    pub fn start(supervisor: &Supervisor, certs: &Certs) -> Self {
        let binary = workspace_bin("jobworker-gateway");
        let key = certs.path("server.key");
        std::os::unix::fs::chown(&key, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = certs.path("gateway.toml");
        let log = certs.path("gateway.log");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nserver_cert = {:?}\nserver_key = {key:?}\n\
                 client_ca = {:?}\nsupervisor_socket = {:?}\nrun_as_user = \"nobody\"\n",
                certs.path("server.pem"),
                certs.path("client-ca.pem"),
                supervisor.socket,
            ),
        )
        .unwrap();
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut gateway = Self {
            child: Some(child),
            address: String::new(),
            log,
        };
        gateway.address = gateway.wait_listening();
        gateway
    }

    fn wait_listening(&mut self) -> String {
        for _ in 0..500 {
            let log = self.log_text();
            if let Some(address) = log
                .lines()
                .find_map(|line| line.split_once("listening on ").map(|(_, a)| a.trim()))
            {
                return address.to_owned();
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("the gateway exited with {status}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the gateway never said where it listens:\n{}",
            self.log_text()
        );
    }

    /// The gateway's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log_text());
        }
    }
}

/// A whole deployment: supervisor, gateway, certificates. Fields drop in
/// order: the gateway before the supervisor.
pub struct Deployment {
    pub gateway: Gateway,
    pub supervisor: Supervisor,
    pub certs: Certs,
    /// An empty home, so no user's config file is read.
    pub home: tempfile::TempDir,
}

impl Deployment {
    pub fn start() -> Self {
        let supervisor = Supervisor::start("nobody");
        let certs = Certs::make();
        let gateway = Gateway::start(&supervisor, &certs);
        Self {
            gateway,
            supervisor,
            certs,
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// A `jobctl` command for `user`, its settings in `JOBCTL_*` variables.
    pub fn jobctl(&self, user: &str) -> Command {
        let mut cmd = Command::new(JOBCTL);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("JOBCTL_SERVER", &self.gateway.address)
            .env("JOBCTL_CA", self.certs.path("server-ca.pem"))
            .env("JOBCTL_CERT", self.certs.path(&format!("{user}.pem")))
            .env("JOBCTL_KEY", self.certs.path(&format!("{user}.key")));
        cmd
    }

    /// Runs `jobctl` as `user` to its end.
    pub fn run(&self, user: &str, args: &[&str]) -> Outcome {
        run_with_timeout(self.jobctl(user).args(args), CLI_TIMEOUT)
    }

    /// Starts a job as `user`; its id.
    pub fn start_job(&self, user: &str, command: &[&str]) -> String {
        let mut args = vec!["start", "--"];
        args.extend_from_slice(command);
        self.run(user, &args).ok().trim().to_owned()
    }

    /// Waits until the job is no longer running; its `status --json`.
    pub fn wait_ended(&self, user: &str, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + CLI_TIMEOUT;
        loop {
            let json: serde_json::Value =
                serde_json::from_str(&self.run(user, &["status", "--json", id]).ok()).unwrap();
            if json["state"] != "running" {
                return json;
            }
            assert!(Instant::now() < deadline, "job {id} still running");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
