//! The real binaries for the CLI's tests, on the shared fixture
//! (`jobworker_tests::fixture`): a `jobworker-supervisor` on its own
//! socket, state directory and cgroup subtree, a `jobworker-gateway` on a
//! free loopback port with certificates made by `jobworker-certs`, and
//! helpers that run `jobctl` and `jobworker-debug` with a time limit.
//! Everything is killed and removed on drop.
//!
//! The other packages' binaries are found next to the test binary's
//! directory (`target/<profile>/`): build them first with
//! `cargo build --workspace --bins`.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use jobworker_ipc::{JobId, Request, Response};
use jobworker_tests::fixture::supervisor::job_spec;
use jobworker_tests::fixture::{
    GatewayOptions, Stack, StackOptions, Supervisor, SupervisorOptions, USERS,
};

/// `jobctl`, built for these tests.
pub const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");
/// `jobworker-debug`, built for these tests.
pub const DEBUG: &str = env!("CARGO_BIN_EXE_jobworker-debug");

/// How long one run of a CLI may take in these tests.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

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

/// The supervisor's options in these tests: `gateway_user` is the
/// gateway's account, and a stopped job has 2 s to exit.
fn supervisor_options(gateway_user: &str) -> SupervisorOptions {
    SupervisorOptions {
        gateway_user: gateway_user.to_owned(),
        extra: "grace_period_ms = 2000\n".to_owned(),
        ..SupervisorOptions::default()
    }
}

/// Starts a supervisor (without a gateway) whose gateway account is
/// `gateway_user`.
pub fn supervisor(gateway_user: &str) -> Supervisor {
    Supervisor::start(&supervisor_options(gateway_user)).unwrap()
}

/// What these tests do to a supervisor besides through the gateway.
pub trait LocalTools {
    /// Starts a job as the local operator (this process is root); its id.
    fn start_local_job(&self, command: &str, args: &[&str]) -> JobId;

    /// `jobworker-debug` on this supervisor's socket.
    fn debug(&self, args: &[&str]) -> Outcome;
}

impl LocalTools for Supervisor {
    fn start_local_job(&self, command: &str, args: &[&str]) -> JobId {
        let request = Request::StartJob(job_spec(command, args).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let response = runtime
            .block_on(async { anyhow::Ok(self.connect().await?.call(request).await?) })
            .unwrap();
        match response {
            Response::Job(info) => info.id,
            other => panic!("starting a job: {other:?}"),
        }
    }

    fn debug(&self, args: &[&str]) -> Outcome {
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

/// A whole deployment: supervisor, gateway, certificates for admin
/// (admin), alice and bob (user), rita (reader) and, from another
/// deployment, mallory.
pub struct Deployment {
    /// The gateway, the supervisor and the certificates.
    pub stack: Stack,
    /// An empty home, so no user's config file is read.
    pub home: tempfile::TempDir,
}

impl Deployment {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A deployment whose gateway's configuration has `gateway_extra` added.
    pub fn start_with(gateway_extra: &str) -> Self {
        let options = StackOptions {
            supervisor: supervisor_options("nobody"),
            gateway: GatewayOptions {
                extra: gateway_extra.to_owned(),
                ..GatewayOptions::default()
            },
        };
        Self {
            stack: Stack::start(USERS, &options).unwrap(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// The gateway's address, as `jobctl` takes it.
    pub fn address(&self) -> String {
        self.stack.gateway.addr.to_string()
    }

    /// A `jobctl` command for `user`, its settings in `JOBCTL_*` variables.
    pub fn jobctl(&self, user: &str) -> Command {
        let pki = &self.stack.pki;
        let mut cmd = Command::new(JOBCTL);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("JOBCTL_SERVER", self.address())
            .env("JOBCTL_CA", pki.server_ca())
            .env("JOBCTL_CERT", pki.path(&format!("{user}.pem")))
            .env("JOBCTL_KEY", pki.path(&format!("{user}.key")));
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
