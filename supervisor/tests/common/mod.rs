//! A real engine for tests: root required, a private cgroup subtree on this
//! host's cgroup2 mount, a temporary state directory, the real supervisor
//! binary as the jobs' init. Everything is removed again on drop.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobworker_ipc::{Args, Command, Env, JobInfo, JobSpec, Limits, Owner, UserName};
use jobworker_supervisor::cgroup::{self, CgroupTree};
use jobworker_supervisor::engine::uids::JobIds;
use jobworker_supervisor::engine::{Chunk, Engine, EngineConfig, OutputStream, SandboxConfig};

/// The uids jobs get in tests: the default range.
pub const JOB_UIDS: std::ops::RangeInclusive<u32> = 61184..=65519;

/// Fails the test, loudly, unless it runs as root on a host with cgroup2.
pub fn require_root_and_cgroup2() -> PathBuf {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests start real jobs in namespaces and cgroups and must run as root"
    );
    cgroup::cgroup2_mount().expect("these tests need a cgroup2 mount (see /proc/self/mountinfo)")
}

/// A running engine and what to clean up after it.
pub struct TestEngine {
    pub engine: Arc<Engine>,
    pub cgroup_root: PathBuf,
    pub state: tempfile::TempDir,
}

impl TestEngine {
    /// An engine with default settings.
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    /// An engine whose config `adjust` may change.
    pub fn with(adjust: impl FnOnce(&mut EngineConfig)) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "jobworker-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Self::at(&name, adjust)
    }

    /// An engine under the cgroup `name` of the cgroup2 mount, whose config
    /// `adjust` may change.
    pub fn at(name: &str, adjust: impl FnOnce(&mut EngineConfig)) -> Self {
        let cgroup_root = require_root_and_cgroup2().join(name);
        let mut tree = CgroupTree::discover(Some(&cgroup_root)).expect("test cgroup root");
        let controllers = tree.setup(&[]).expect("setting up the test cgroup root");
        let state = tempfile::tempdir().expect("state dir");
        let mut config = EngineConfig {
            state_dir: state.path().to_path_buf(),
            init_program: PathBuf::from(env!("CARGO_BIN_EXE_jobworker-init")),
            job_ids: JobIds::PerJob {
                range: JOB_UIDS,
                excluded: Default::default(),
            },
            sandbox: SandboxConfig {
                masked_paths: jobworker_supervisor::config::default_masked_paths(),
                max_processes: 4096,
                ..SandboxConfig::default()
            },
            default_limits: Limits::default(),
            max_limits: Limits::default(),
            retention: jobworker_supervisor::engine::Retention::default(),
            strict_limits: false,
            output_cap: 64 << 20,
            min_free_bytes: 0,
            grace: Duration::from_secs(5),
            timeouts: Default::default(),
            max_running_per_owner: 0,
            io_device: None,
            working_dir: jobworker_supervisor::handoff::WORK_MOUNT.into(),
        };
        adjust(&mut config);
        let engine = Engine::new(config, tree, controllers).expect("engine");
        Self {
            engine,
            cgroup_root,
            state,
        }
    }

    /// The directories under `<cgroup root>/jobs`.
    pub fn job_cgroups(&self) -> Vec<String> {
        std::fs::read_dir(self.cgroup_root.join("jobs"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The directories under `<state>/jobs`.
    pub fn job_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.state.path().join("jobs"))
            .expect("state/jobs")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Starts `command args...` as the local operator `root`.
    pub async fn start(
        &self,
        command: &str,
        args: &[&str],
    ) -> Result<JobInfo, jobworker_ipc::IpcError> {
        self.start_spec(spec(command, args)).await
    }

    /// Starts a job from a full spec.
    pub async fn start_spec(&self, spec: JobSpec) -> Result<JobInfo, jobworker_ipc::IpcError> {
        self.engine
            .start(Owner::Local(UserName::new("root").expect("name")), spec)
            .await
    }

    /// The job's directory in the state directory.
    pub fn job_dir(&self, job: &JobInfo) -> PathBuf {
        self.state.path().join("jobs").join(job.id.to_string())
    }

    /// The job's output log as it is on disk.
    pub fn output_log(&self, job: &JobInfo) -> Vec<u8> {
        let path = self.job_dir(job).join("output.log");
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// Reads a job's whole output (following it to its end) and its final
    /// status.
    pub async fn output(&self, job: &JobInfo) -> (Vec<u8>, JobInfo) {
        read_all(&self.engine, job, 0).await
    }
}

/// A spec for `command args...` with no limits, env or working directory.
pub fn spec(command: &str, args: &[&str]) -> JobSpec {
    JobSpec {
        command: Command::new(command).expect("command"),
        args: Args::new(args.iter().map(|a| (*a).to_owned()).collect()).expect("args"),
        env: Env::default(),
        working_dir: None,
        limits: Limits::default(),
        request_id: None,
        timeout: None,
        labels: Default::default(),
    }
}

/// Follows a job's output from `offset` to its end.
pub async fn read_all(engine: &Engine, job: &JobInfo, offset: u64) -> (Vec<u8>, JobInfo) {
    drain(
        engine.output(job.id, offset, true).expect("output stream"),
        offset,
    )
    .await
}

/// Reads `stream`, which starts at `offset`, to its end: the bytes, checked
/// to be contiguous, and the final status.
pub async fn drain(mut stream: OutputStream, offset: u64) -> (Vec<u8>, JobInfo) {
    let mut bytes = Vec::new();
    let mut expected = offset;
    loop {
        match stream.next().await.expect("reading output") {
            Some(Chunk::Data {
                offset,
                bytes: data,
            }) => {
                assert_eq!(offset, expected, "chunks are contiguous");
                expected += data.len() as u64;
                bytes.extend_from_slice(&data);
            }
            Some(Chunk::End(info)) => return (bytes, *info),
            None => panic!("stream ended without an end frame"),
        }
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        jobworker_tests::cleanup::remove_cgroup_tree(&self.cgroup_root);
    }
}
