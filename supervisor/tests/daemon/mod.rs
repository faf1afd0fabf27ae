//! A real `jobworker-supervisor` process for tests: its own socket, state
//! directory and cgroup subtree (on this host's cgroup2 mount), started,
//! killed and restarted like an operator would; everything is removed on
//! drop. Clients are the test process itself (root: a local operator) or
//! `socat` run by `setpriv` under another uid.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use jobworker_ipc::codec::{self, ClientFramed};
use jobworker_ipc::{
    Call, GraceMs, Identity, JobId, JobInfo, JobSpec, Request, Response, Role, UserName, frame,
    handshake,
};
use tokio::net::UnixStream;

/// The supervisor binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_jobworker-supervisor");

/// The account the tests configure as the gateway.
pub const GATEWAY_USER: &str = "daemon";

pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub cgroup_root: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Writes a config (the test's `extra` lines appended to the basics) and
    /// starts the supervisor on it.
    pub fn start(extra: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        assert!(
            rustix::process::geteuid().is_root(),
            "these tests run the supervisor, which must run as root"
        );
        let mount = jobworker_supervisor::cgroup::cgroup2_mount()
            .expect("these tests need a cgroup2 mount (see /proc/self/mountinfo)");
        let dir = tempfile::tempdir().unwrap();
        // Other uids (nobody, the gateway's) must reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cgroup_root = mount.join(format!(
            "jobworker-test-svc-{}-{}",
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
                 cgroup_root = {cgroup_root:?}\ngateway_user = \"{GATEWAY_USER}\"\n\
                 {extra}\n"
            ),
        )
        .unwrap();
        let mut daemon = Self {
            child: None,
            dir,
            socket,
            state,
            cgroup_root,
            config,
            log,
        };
        daemon.spawn();
        daemon
    }

    /// Starts the supervisor process and waits until it answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BINARY)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
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
            "the supervisor never served {}:\n{}",
            self.socket.display(),
            self.log_text()
        );
    }

    /// SIGKILLs the supervisor (its jobs go on).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The supervisor's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connection as the test process (root: a local operator).
    pub async fn connect(&self) -> ClientFramed<UnixStream> {
        let stream = UnixStream::connect(&self.socket).await.unwrap();
        codec::client(stream).await.unwrap()
    }

    /// One request as the local operator; its one response.
    pub async fn local(&self, request: Request) -> Response {
        call_locally(&mut self.connect().await, request).await
    }

    /// A job's info from a response that must carry one.
    pub async fn local_job(&self, request: Request) -> JobInfo {
        match self.local(request).await {
            Response::Job(info) => *info,
            other => panic!("expected a job, got {other:?}"),
        }
    }

    /// Follows a job's output to its end.
    pub async fn output(&self, job: &JobInfo) -> (Vec<u8>, JobInfo) {
        let mut client = self.connect().await;
        client
            .send(Call {
                on_behalf_of: None,
                request: Request::StreamOutput {
                    job: job.id,
                    offset: 0,
                    follow: true,
                },
            })
            .await
            .unwrap();
        let mut bytes = Vec::new();
        loop {
            match client.next().await.expect("a frame").unwrap() {
                Response::Output { offset, data } => {
                    assert_eq!(offset, bytes.len() as u64);
                    bytes.extend_from_slice(data.as_slice());
                }
                Response::End(info) => return (bytes, *info),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Sends raw `bytes` over a new connection as `user` (with the socket's
    /// group, so the connect itself succeeds) and returns all it got back.
    pub fn raw_as(&self, user: &str, bytes: &[u8]) -> Vec<u8> {
        let mut child = Command::new("setpriv")
            .args([
                "--reuid",
                user,
                "--regid",
                "nogroup",
                "--clear-groups",
                "socat",
                "-t",
                "5",
                "-",
            ])
            .arg(format!("UNIX-CONNECT:{}", self.socket.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv and socat are needed (apt-get install util-linux socat)");
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let output = child.wait_with_output().unwrap();
        output.stdout
    }

    /// Starts `count` jobs of `spec` as the local operator over `connections`
    /// connections at once (each carrying its share of the calls one after
    /// the other); every job's info, in no particular order.
    pub async fn start_many(
        &self,
        spec: &JobSpec,
        count: usize,
        connections: usize,
    ) -> Vec<JobInfo> {
        let shares = (0..connections).map(|c| {
            let share = count / connections + usize::from(c < count % connections);
            self.calls((0..share).map(|_| Request::StartJob(spec.clone())))
        });
        futures::future::join_all(shares)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Stops `jobs` (with a grace period of 1 s) over `connections`
    /// connections at once; the stopped jobs' infos.
    pub async fn stop_many(&self, jobs: &[JobId], connections: usize) -> Vec<JobInfo> {
        let shares = jobs
            .chunks(jobs.len().div_ceil(connections).max(1))
            .map(|share| {
                self.calls(share.iter().map(|&job| Request::StopJob {
                    job,
                    grace: Some(GraceMs::new(1000).unwrap()),
                }))
            });
        futures::future::join_all(shares)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Sends `requests` one after the other on one connection as the local
    /// operator; the job each answer carries.
    async fn calls(&self, requests: impl Iterator<Item = Request>) -> Vec<JobInfo> {
        let mut client = self.connect().await;
        let mut infos = Vec::new();
        for request in requests {
            match call_locally(&mut client, request).await {
                Response::Job(info) => infos.push(*info),
                other => panic!("expected a job, got {other:?}"),
            }
        }
        infos
    }

    /// The job cgroups left below the supervisor's cgroup subtree.
    pub fn job_cgroups_left(&self) -> Vec<String> {
        match std::fs::read_dir(self.cgroup_root.join("jobs")) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("reading {}/jobs: {e}", self.cgroup_root.display()),
        }
    }

    /// One call as the gateway acting for `user` with `role`; the responses.
    pub fn as_gateway(&self, user: &str, role: Role, request: Request) -> Vec<Response> {
        let call = Call {
            on_behalf_of: Some(Identity {
                user: UserName::new(user).unwrap(),
                role,
            }),
            request,
        };
        decode_responses(&self.raw_as(GATEWAY_USER, &encode_call(&call)))
    }
}

/// One request on `client` as the local operator; its one response.
async fn call_locally(client: &mut ClientFramed<UnixStream>, request: Request) -> Response {
    client
        .send(Call {
            on_behalf_of: None,
            request,
        })
        .await
        .unwrap();
    client.next().await.expect("a response").unwrap()
}

/// The bytes a client sends: hello, then the call's frame.
pub fn encode_call(call: &Call) -> Vec<u8> {
    let mut bytes = handshake::hello().to_vec();
    frame::encode(call, &mut bytes).unwrap();
    bytes
}

/// The responses in what a server sent (after its hello).
pub fn decode_responses(bytes: &[u8]) -> Vec<Response> {
    assert!(
        bytes.len() >= 8,
        "no hello from the server ({} bytes)",
        bytes.len()
    );
    handshake::check_hello(bytes[..8].try_into().unwrap()).unwrap();
    let mut rest = &bytes[8..];
    let mut out = Vec::new();
    while let Some((response, used)) = frame::decode::<Response>(rest).unwrap() {
        out.push(response);
        rest = &rest[used..];
    }
    assert!(rest.is_empty(), "a partial frame at the end");
    out
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- supervisor log ---\n{}", self.log_text());
        }
        jobworker_tests::cleanup::remove_cgroup_tree(&self.cgroup_root);
    }
}
