//! The real `jobworker-supervisor` of these tests: the shared fixture's
//! [`Supervisor`] (its own socket, state directory and cgroup subtree,
//! started, killed and restarted like an operator would), configured with
//! `daemon` as its gateway account, and the calls these tests make to it.
//! Clients are the test process itself (root: a local operator) or `socat`
//! run by `setpriv` under another uid.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use jobworker_ipc::client::{Connection, StreamFrame};
use jobworker_ipc::{
    Call, GraceMs, Identity, JobId, JobInfo, JobSpec, Request, Response, Role, UserName, frame,
    handshake,
};
use jobworker_tests::fixture::{Supervisor, SupervisorOptions};

/// The supervisor binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_jobworker-supervisor");

/// The account the tests configure as the gateway.
pub const GATEWAY_USER: &str = "daemon";

/// A running supervisor; it derefs to the fixture's [`Supervisor`].
pub struct Daemon(Supervisor);

impl Daemon {
    /// Starts the supervisor on a config of the basics and the test's
    /// `extra` lines.
    pub fn start(extra: &str) -> Self {
        Self(
            Supervisor::start(&SupervisorOptions {
                gateway_user: GATEWAY_USER.to_owned(),
                extra: extra.to_owned(),
                bin_dir: Path::new(BINARY).parent().map(Path::to_path_buf),
                ..SupervisorOptions::default()
            })
            .unwrap(),
        )
    }

    /// A connection as the test process (root: a local operator).
    pub async fn connect(&self) -> Connection {
        self.0.connect().await.unwrap()
    }

    /// One request as the local operator; its one response.
    pub async fn local(&self, request: Request) -> Response {
        self.connect().await.call(request).await.unwrap()
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
        let request = Request::StreamOutput {
            job: job.id,
            offset: 0,
            follow: true,
        };
        let mut stream = self.connect().await.stream(request).await.unwrap();
        let mut bytes = Vec::new();
        loop {
            match stream.next().await.unwrap().expect("a frame") {
                StreamFrame::Output { offset, data } => {
                    assert_eq!(offset, bytes.len() as u64);
                    bytes.extend_from_slice(data.as_slice());
                }
                StreamFrame::End(info) => return (bytes, *info),
                StreamFrame::Error(e) => panic!("the stream failed: {e}"),
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
            match client.call(request).await.unwrap() {
                Response::Job(info) => infos.push(*info),
                other => panic!("expected a job, got {other:?}"),
            }
        }
        infos
    }

    /// The job cgroups left below the supervisor's cgroup subtree.
    pub fn job_cgroups_left(&self) -> Vec<String> {
        match std::fs::read_dir(self.cgroup_root().join("jobs")) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("reading {}/jobs: {e}", self.cgroup_root().display()),
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

impl std::ops::Deref for Daemon {
    type Target = Supervisor;

    fn deref(&self) -> &Supervisor {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Supervisor {
        &mut self.0
    }
}
