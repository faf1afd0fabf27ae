//! `jobworker-supervisor`: the root-owned job supervisor.
//!
//! It reads its configuration, takes its socket from systemd (or binds it),
//! prepares its cgroup subtree, accounts for the jobs on disk, tells systemd
//! it is ready, and serves the ipc protocol until SIGTERM or SIGINT. Jobs
//! outlive it: a restarted supervisor re-adopts them.
//!
//! Each job's init is `jobworker-init`, which must be installed beside it.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use jobworker_supervisor::cgroup::{CgroupTree, SKIP_LIMITS_ENV};
use jobworker_supervisor::config::{self, Config};
use jobworker_supervisor::engine::{Engine, EngineConfig, Retention, SandboxConfig};
use jobworker_supervisor::service::{self, conn::Context, listen};
use jobworker_supervisor::state_lock::StateLock;
use jobworker_supervisor::sys;

/// How often the retention policy runs besides at each job's end.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// The jobworker supervisor: runs jobs in their own namespaces and cgroups
/// for the gateway and local operators, over a Unix socket.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Validate the configuration, print the effective values, and exit.
    #[arg(long)]
    check_config: bool,
    /// Do not serve: stop every running job (SIGTERM, the grace period,
    /// SIGKILL), record how each ended, remove their cgroups, and exit. What
    /// jobworker-jobs.service runs when it stops: jobs outlive a restart of
    /// the supervisor, not the end of that unit. Refused while a supervisor
    /// runs on the same state directory.
    #[arg(long)]
    stop_jobs: bool,
}

/// The job init's program, beside this one.
const INIT_BINARY: &str = "jobworker-init";

/// The lowest fd the held job init may take: above the sockets systemd
/// passes (from 3) and the init's control socket (3 in the child).
const INIT_FD_FLOOR: i32 = 10;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobworker-supervisor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Before any thread exists: taking the activation socket edits the
    // environment, and binding sets the umask.
    let activated = sys::take_activation_socket().context("taking the socket from systemd")?;
    let config = Config::load(&cli.config)?;
    if cli.check_config {
        print!("{}", config.describe());
        return Ok(());
    }
    jobworker_config::logging::init();
    raise_fd_limit(config.file.max_connections);
    // Held until the end of this function: for the supervisor's life.
    let _lock = StateLock::acquire(&config.file.state_dir)?;
    if cli.stop_jobs {
        return runtime()?.block_on(stop_jobs(config));
    }
    let (listener, origin) =
        listen::listener(activated, &config.file.socket_path, config.socket_gid)
            .context("opening the supervisor's socket")?;
    listener
        .set_nonblocking(true)
        .context("making the socket non-blocking")?;
    runtime()?.block_on(serve(config, listener, origin))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Raises the soft limit on open files to the hard one (systemd's default
/// soft limit, 1024, is below `max_connections` alone) and logs what it
/// leaves room for: `max_connections` connections (one file each), a
/// margin, and about [`FILES_PER_JOB`] per running job. Jobs get their own
/// limits.
fn raise_fd_limit(max_connections: usize) {
    const MARGIN: u64 = 64;
    let limit = match jobworker_config::raise_open_files_limit() {
        Ok(files) => {
            if files.limit > files.before {
                tracing::info!(
                    from = files.before,
                    to = files.limit,
                    "raised the open files limit"
                );
            }
            files.limit
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the open files limit");
            return;
        }
    };
    let connections = max_connections as u64;
    let jobs = limit.saturating_sub(connections + MARGIN) / FILES_PER_JOB;
    if jobs < 100 {
        tracing::warn!(
            limit,
            max_connections,
            "the open files limit leaves room for {jobs} running jobs beside max_connections: \
             raise LimitNOFILE (or ulimit -n), or lower max_connections"
        );
    } else {
        tracing::info!(
            limit,
            max_connections,
            running_jobs = jobs,
            "open files limit: room for max_connections and about this many running jobs"
        );
    }
}

/// Files the supervisor holds per running job: two pidfds of its init, its
/// control socket, and its log while followed.
const FILES_PER_JOB: u64 = 4;

async fn serve(
    config: Config,
    listener: std::os::unix::net::UnixListener,
    origin: listen::Origin,
) -> anyhow::Result<()> {
    if std::env::var_os(SKIP_LIMITS_ENV).is_some() {
        tracing::warn!(
            "{SKIP_LIMITS_ENV} is set: the limits it names are reported but NOT enforced \
             (a testing switch; never use it in production)"
        );
    }
    if config.file.cgroup_root.is_none() && std::env::var_os("INVOCATION_ID").is_some() {
        tracing::warn!(
            "started by systemd without cgroup_root: jobs run in this service's own cgroup, \
             and a restart of the service (unless it is delegated and not killed as a whole) \
             ends them; set cgroup_root = \"system.slice/jobworker-jobs.service\" as \
             deploy/supervisor.toml does"
        );
    }
    let mut tree = CgroupTree::discover(config.file.cgroup_root.as_deref())
        .context("finding the cgroup subtree")?;
    let controllers = tree
        .root_processes()
        .and_then(|holders| tree.setup(&holders))
        .with_context(|| format!("preparing the cgroup subtree {}", tree.root().display()))?;
    let engine = Engine::new(engine_config(&config)?, tree, controllers)?;
    let recovered = engine.recover()?;
    tracing::info!(
        ended = recovered.ended,
        adopted = recovered.adopted,
        settled = recovered.settled,
        orphans = recovered.orphans,
        discarded = recovered.discarded,
        "jobs on disk accounted for"
    );
    let retention = Arc::clone(&engine);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_INTERVAL);
        loop {
            tick.tick().await;
            retention.enforce_retention_in_background();
        }
    });

    let listener =
        tokio::net::UnixListener::from_std(listener).context("registering the socket")?;
    tracing::info!(
        socket = ?origin,
        cgroup_root = %engine.cgroup_root().display(),
        controllers = ?controllers.names(),
        state_dir = %config.file.state_dir.display(),
        "serving"
    );
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "telling systemd we are ready");
    }
    let ctx = Arc::new(Context {
        config,
        engine: Arc::clone(&engine),
    });
    service::serve(listener, ctx, shutdown_signal()).await;
    // A host that goes down right after a clean stop loses no record change.
    let flushing = Arc::clone(&engine);
    if let Err(e) = tokio::task::spawn_blocking(move || flushing.flush_records()).await {
        tracing::error!(error = %e, "making the job records durable");
    }
    tracing::info!("shutting down; running jobs go on and are re-adopted at the next start");
    Ok(())
}

/// `--stop-jobs`: accounts for the jobs on disk as a starting supervisor
/// does, stops every running one, and removes `<root>/jobs`.
async fn stop_jobs(config: Config) -> anyhow::Result<()> {
    // Not our own cgroup: the process that stops the jobs runs apart from
    // them (under systemd, in the jobs' unit's ".control" subgroup).
    let root = config.file.cgroup_root.clone().context(
        "--stop-jobs needs cgroup_root in the configuration: the cgroup the jobs run in \
         (system.slice/jobworker-jobs.service under systemd)",
    )?;
    let Some(mut tree) = CgroupTree::existing(&root)
        .with_context(|| format!("inspecting the cgroup subtree {}", root.display()))?
    else {
        tracing::info!(cgroup_root = %root.display(), "no job cgroups: no job to stop");
        return Ok(());
    };
    let controllers = tree
        .setup(&[])
        .with_context(|| format!("preparing the cgroup subtree {}", root.display()))?;
    let engine = Engine::new(engine_config(&config)?, tree.clone(), controllers)?;
    let recovered = engine.recover()?;
    let (stopped, failed) = engine.stop_all().await;
    let flushing = Arc::clone(&engine);
    if let Err(e) = tokio::task::spawn_blocking(move || flushing.flush_records()).await {
        tracing::error!(error = %e, "making the job records durable");
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} running jobs could not be stopped",
            stopped + failed
        );
    }
    tree.remove_jobs_dir()
        .with_context(|| format!("removing the job cgroups of {}", root.display()))?;
    tracing::info!(
        stopped,
        ended_before = recovered.ended + recovered.settled,
        cgroup_root = %root.display(),
        "every job stopped"
    );
    Ok(())
}

/// The job init beside this binary, held open for the supervisor's life and
/// exec'd through `/proc/self/fd`: every job of this supervisor runs the
/// init it was installed with, even once an upgrade has replaced the file.
fn init_program() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the supervisor's own binary")?;
    let path = exe.with_file_name(INIT_BINARY);
    let file = std::fs::File::open(&path).with_context(|| {
        format!(
            "opening the job init {} (install it beside jobworker-supervisor, as deploy/install.sh does)",
            path.display()
        )
    })?;
    let held = rustix::io::fcntl_dupfd_cloexec(&file, INIT_FD_FLOOR)
        .with_context(|| format!("holding the job init {} open", path.display()))?;
    tracing::info!(path = %path.display(), "jobs' init");
    Ok(PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::IntoRawFd::into_raw_fd(held)
    )))
}

fn engine_config(config: &Config) -> anyhow::Result<EngineConfig> {
    Ok(EngineConfig {
        state_dir: config.file.state_dir.clone(),
        init_program: init_program()?,
        job_ids: config.job_ids.clone(),
        sandbox: SandboxConfig {
            tmp_size: config.file.tmp_size_bytes,
            masked_paths: config.file.masked_paths.clone(),
            bind_paths: config.file.bind_paths.clone(),
            allow_io_uring: config.file.allow_io_uring,
            max_processes: config.file.max_processes,
        },
        default_limits: config.default_limits,
        max_limits: config.max_limits,
        retention: Retention {
            max_age_ms: config.file.retention.max_age_secs.saturating_mul(1000),
            max_total_bytes: config.file.retention.max_total_bytes,
        },
        strict_limits: config.file.strict_limits,
        output_cap: config.file.output_cap_bytes,
        min_free_bytes: config.file.min_free_bytes,
        grace: config.grace,
        timeouts: config.timeouts,
        max_running_per_owner: config.file.max_running_jobs_per_user,
        io_device: config.io_device,
        working_dir: config.file.working_dir.clone(),
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot listen for SIGTERM/SIGINT; stop me with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
