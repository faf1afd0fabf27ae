//! `jobctl`: the command line (clap derive) and the commands, each a few
//! gRPC calls to the gateway over mutual TLS.
//!
//! - `start [limits] -- CMD [ARGS...]` prints the new job's id.
//! - `run [limits] -- CMD [ARGS...]` starts a job, streams its output live
//!   and exits with its exit code (128 + the signal's number if a signal
//!   killed it). Ctrl-C (or SIGTERM) stops the job (SIGTERM, the server's
//!   grace period, then kill), prints the rest of its output and exits 130
//!   (143); a second one exits at once. A lost connection stops nothing:
//!   the output stream resumes ([`crate::stream`]).
//! - `stop [--grace 5s] ID`, `status ID`, `list [--state S] [-l KEY=VALUE,...]`.
//! - `logs [-f] [--offset N] ID` writes the output's raw bytes to stdout.
//! - `completions bash|zsh|fish|...` prints a shell completion script.
//!
//! Job ids may be abbreviated to a unique prefix ([`crate::ids`]); `start`,
//! `stop`, `status` and `list` take `--json`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use jobworker_ipc::{JobInfo, Labels, StopReason, Termination};
use jobworker_proto::v1;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::client::{self, Client, rpc_error};
use crate::exit::{self, CliError};
use crate::ids::{self, IdArg};
use crate::render::{self, JobView, write_stdout};
use crate::settings::{self, Layer, Settings, Sources};
use crate::stream::{Event, OutputStream};
use crate::units;

/// The most jobs asked for per list page.
const PAGE_SIZE: u32 = 1000;

/// The most pages a listing reads, against a server that never ends one.
const MAX_PAGES: usize = 100_000;

fn after_help() -> String {
    format!(
        "{}\n\n{}\n\n`jobctl run` exits with the job's exit code instead (128 + N if signal N killed it; 130 after Ctrl-C).",
        exit::EXIT_CODES_HELP,
        settings::SETTINGS_HELP
    )
}

/// Runs commands as jobs on a jobworker server, over mutual TLS.
///
/// Job ids may be abbreviated to any unique prefix.
#[derive(Debug, Parser)]
#[command(name = "jobctl", version, after_help = after_help())]
pub struct Cli {
    /// How to reach the gateway.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The connection flags; each overrides its `JOBCTL_*` variable and the
/// config file.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// The gateway: https://HOST:PORT or HOST:PORT [env: JOBCTL_SERVER]
    #[arg(long, global = true, value_name = "ADDRESS")]
    pub server: Option<String>,
    /// The CA certificate that signed the gateway's certificate (PEM) [env: JOBCTL_CA]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Your client certificate (PEM) [env: JOBCTL_CERT]
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Your client certificate's private key (PEM) [env: JOBCTL_KEY]
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The name to verify in the gateway's certificate, if not the server's host [env: JOBCTL_SERVER_NAME]
    #[arg(long, global = true, value_name = "NAME")]
    pub server_name: Option<String>,
    /// How long connecting may take, e.g. 10s [env: JOBCTL_CONNECT_TIMEOUT]
    #[arg(long, global = true, value_name = "DURATION", value_parser = settings::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// The config file [env: JOBCTL_CONFIG] [default: ~/.config/jobctl/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConnectionArgs {
    /// The flags as a settings layer.
    pub fn flags(&self) -> Layer {
        Layer {
            server: self.server.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            server_name: self.server_name.clone(),
            connect_timeout: self.connect_timeout,
        }
    }

    /// The settings: these flags, then the environment (read through
    /// `lookup`), then the config file.
    pub fn resolve(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, CliError> {
        let env = settings::env_layer(&lookup)?;
        let (file, sources) = match settings::config_path(self.config.as_deref(), &lookup) {
            Some((path, explicit)) => (
                settings::file_layer(&path, explicit)?,
                Sources {
                    config_file: Some(path),
                },
            ),
            None => (Layer::default(), Sources::default()),
        };
        settings::resolve(self.flags(), env, file, &sources)
    }
}

/// `jobctl`'s commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a job and print its id.
    Start(StartArgs),
    /// Start a job, stream its output live, and exit with its exit code.
    #[command(
        after_help = "Exits with the job's exit code, or 128 + N if signal N killed it. \
        Ctrl-C stops the job (SIGTERM, the server's grace period, then kill), prints the rest of \
        its output and exits 130; a second Ctrl-C exits 130 without waiting."
    )]
    Run(RunArgs),
    /// Stop a job: SIGTERM, a grace period, then kill. Prints its final state.
    Stop(StopArgs),
    /// Show a job's state, exit status, limits, usage and output size.
    Status(StatusArgs),
    /// List the jobs you may see, newest first.
    List(ListArgs),
    /// Write a job's output (stdout and stderr combined) to stdout, byte for byte.
    Logs(LogsArgs),
    /// The hosts of the fleet (admins; a gateway in fleet mode): lease, generation, drain, slots, labels, version.
    Hosts {
        /// Print the hosts as one JSON array
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script, e.g. `jobctl completions bash > /etc/bash_completion.d/jobctl`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What to run, and its limits.
#[derive(Debug, Args)]
pub struct JobSpecArgs {
    /// CPU limit: millicores (500m) or CPUs (0.5, 1.5, 2)
    #[arg(long, value_name = "CPU", value_parser = units::parse_cpu)]
    pub cpu: Option<u32>,
    /// Memory limit in bytes, with an optional K, M, G, T suffix (powers of 1024): 256M
    #[arg(long, value_name = "BYTES", value_parser = units::parse_bytes)]
    pub memory: Option<u64>,
    /// Block device read limit in bytes per second: 10M
    #[arg(long, value_name = "BYTES/S", value_parser = units::parse_rate)]
    pub io_read: Option<u64>,
    /// Block device write limit in bytes per second: 10M
    #[arg(long, value_name = "BYTES/S", value_parser = units::parse_rate)]
    pub io_write: Option<u64>,
    /// The most tasks (processes and threads) the job may have
    #[arg(long, value_name = "N")]
    pub pids: Option<u32>,
    /// A variable added to the job's environment (which otherwise holds only PATH); repeatable
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// The job's working directory (an absolute path on the server)
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// A token that makes retries safe: the same token starts at most one job
    #[arg(long, value_name = "TOKEN")]
    pub request_id: Option<String>,
    /// The longest the job may run (30s, 5m, 2h); then it is stopped as `stop` would.
    /// The server's default (and maximum) applies when unset
    #[arg(long, value_name = "DURATION", value_parser = settings::parse_duration)]
    pub timeout: Option<Duration>,
    /// A label to find the job by (`list -l`); repeatable, or comma-separated
    #[arg(
        long = "label",
        short = 'l',
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub labels: Vec<String>,
    /// In a fleet: run only on a host carrying these labels: --placement zone=a,gpu=yes
    #[arg(long, value_name = "KEY=VALUE", value_delimiter = ',')]
    pub placement: Vec<String>,
    /// The command and its arguments (after `--`)
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Labels given as `KEY=VALUE` arguments to `flag`, checked as the server
/// checks its request's `field`.
fn labels_arg(
    flag: &str,
    field: &str,
    pairs: &[String],
) -> Result<std::collections::HashMap<String, String>, CliError> {
    let labels = Labels::parse(field, pairs.iter().map(String::as_str))
        .map_err(|e| CliError::Usage(format!("{flag}: {e}")))?;
    Ok(labels.as_map().clone().into_iter().collect())
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

impl JobSpecArgs {
    fn request(&self) -> Result<v1::StartJobRequest, CliError> {
        let (command, args) = self
            .command
            .split_first()
            .ok_or_else(|| CliError::Usage("no command given: put it after --".into()))?;
        let limits = v1::Limits {
            cpu_millicores: self.cpu,
            memory_bytes: self.memory,
            io_read_bytes_per_sec: self.io_read,
            io_write_bytes_per_sec: self.io_write,
            pids: self.pids,
        };
        Ok(v1::StartJobRequest {
            command: command.clone(),
            args: args.to_vec(),
            env: self
                .env
                .iter()
                .map(|(name, value)| v1::EnvVar {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            working_dir: self.workdir.clone(),
            limits: Some(limits).filter(|l| *l != v1::Limits::default()),
            request_id: self.request_id.clone(),
            timeout: self.timeout.map(jobworker_proto::convert::duration),
            labels: labels_arg("--label", "labels", &self.labels)?,
            placement: labels_arg("--placement", "placement", &self.placement)?,
        })
    }
}

/// `jobctl start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Print {"job_id": "..."} instead of the bare id
    #[arg(long)]
    pub json: bool,
    /// What to run.
    #[command(flatten)]
    pub spec: JobSpecArgs,
}

/// `jobctl run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to run.
    #[command(flatten)]
    pub spec: JobSpecArgs,
}

/// `jobctl stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// How long the job may take to exit after SIGTERM before it is killed (e.g. 5s);
    /// the server's default and maximum apply
    #[arg(long, value_name = "DURATION", value_parser = settings::parse_duration)]
    pub grace: Option<Duration>,
    /// Print the job as JSON
    #[arg(long)]
    pub json: bool,
    /// The job's id, or a unique prefix of it
    pub id: String,
}

/// `jobctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the job as one JSON object
    #[arg(long)]
    pub json: bool,
    /// The job's id, or a unique prefix of it
    pub id: String,
}

/// `jobctl list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state (queued: in a fleet, waiting for a host)
    #[arg(long, value_parser = render::remote_state_arg())]
    pub state: Option<v1::JobState>,
    /// Only jobs carrying these labels: -l team=build,env=ci (all must match)
    #[arg(
        long = "label",
        short = 'l',
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub labels: Vec<String>,
    /// Print the jobs as one JSON array
    #[arg(long)]
    pub json: bool,
}

/// `jobctl logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep following the output until the job ends
    #[arg(short, long)]
    pub follow: bool,
    /// Start at this byte of the output
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub offset: u64,
    /// The job's id, or a unique prefix of it
    pub id: String,
}

/// Runs a parsed command line; `lookup` reads the environment. Returns the
/// exit code.
pub async fn run(cli: Cli, lookup: impl Fn(&str) -> Option<String>) -> Result<u8, CliError> {
    let settings = || cli.connection.resolve(&lookup);
    match cli.command {
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "jobctl", &mut out);
            write_stdout(&out).await?;
        }
        Command::Run(args) => return run_job(&settings()?, &args.spec).await,
        Command::Start(args) => start_command(&mut connect(settings()?).await?, args).await?,
        Command::Stop(args) => stop_command(&mut connect(settings()?).await?, args).await?,
        Command::Status(args) => status_command(&mut connect(settings()?).await?, args).await?,
        Command::List(args) => list_command(&mut connect(settings()?).await?, args).await?,
        Command::Logs(args) => logs_command(&mut connect(settings()?).await?, args).await?,
        Command::Hosts { json } => hosts_command(&mut connect(settings()?).await?, json).await?,
    }
    Ok(0)
}

async fn connect(settings: Settings) -> Result<Client, CliError> {
    client::connect(&settings).await
}

async fn start_command(client: &mut Client, args: StartArgs) -> Result<(), CliError> {
    let id = start(client, &args.spec).await?;
    let text = if args.json {
        serde_json::json!({ "job_id": id }).to_string()
    } else {
        id
    };
    print_line(&text).await
}

async fn stop_command(client: &mut Client, args: StopArgs) -> Result<(), CliError> {
    let id = resolve_id(client, &args.id).await?;
    let grace = args.grace.map(jobworker_proto::convert::duration);
    let response = client
        .stop_job(v1::StopJobRequest {
            job_id: id.clone(),
            grace_period: grace,
        })
        .await
        .map_err(|s| rpc_error(format!("stopping job {id}"), &s))?
        .into_inner();
    let job = response.job.ok_or_else(|| {
        CliError::Unexpected(format!(
            "the server stopped job {id} but did not say how it ended"
        ))
    })?;
    let job = read_job(job)?;
    if args.json {
        print_line(&render::to_json(&job).to_string()).await
    } else {
        print_line(&format!("{}: {}", job.info.id, render::outcome(&job))).await
    }
}

async fn status_command(client: &mut Client, args: StatusArgs) -> Result<(), CliError> {
    let id = resolve_id(client, &args.id).await?;
    let job = client
        .get_job(v1::GetJobRequest { job_id: id.clone() })
        .await
        .map_err(|s| rpc_error(format!("getting job {id}"), &s))?
        .into_inner();
    let job = read_job(job)?;
    if args.json {
        print_line(&render::to_json(&job).to_string()).await
    } else {
        write_stdout(render::status_text(&job).as_bytes()).await
    }
}

async fn list_command(client: &mut Client, args: ListArgs) -> Result<(), CliError> {
    let selector = labels_arg("--label", "labels", &args.labels)?;
    let jobs = list_all(client, args.state, &selector)
        .await?
        .into_iter()
        .map(read_job)
        .collect::<Result<Vec<_>, _>>()?;
    if args.json {
        print_line(&render::jobs_json(&jobs).to_string()).await
    } else {
        write_stdout(render::list_table(&jobs).as_bytes()).await
    }
}

async fn hosts_command(client: &mut Client, json: bool) -> Result<(), CliError> {
    let hosts: Vec<_> = client
        .list_hosts(v1::ListHostsRequest {})
        .await
        .map_err(|s| rpc_error("listing the fleet's hosts", &s))?
        .into_inner()
        .hosts
        .into_iter()
        .map(render::host_of)
        .collect();
    if json {
        print_line(&render::hosts_json(&hosts).to_string()).await
    } else {
        write_stdout(render::hosts_table(&hosts).as_bytes()).await
    }
}

async fn logs_command(client: &mut Client, args: LogsArgs) -> Result<(), CliError> {
    let id = resolve_id(client, &args.id).await?;
    let mut stream = OutputStream::open(client, &id, args.offset, args.follow).await?;
    while let Some(event) = stream.next().await? {
        match event {
            Event::Data(data) => write_stdout(&data).await?,
            Event::End(job) => {
                note_truncation(&job);
                break;
            }
        }
    }
    Ok(())
}

/// A job the server sent, as jobctl shows it; one this jobctl cannot read
/// (a state it does not know, say) is an error. The shared model has no
/// QUEUED state: a queued job (in a fleet) is read as a RUNNING one and
/// marked [`JobView::queued`], which shows it as QUEUED.
pub(crate) fn read_job(mut job: v1::Job) -> Result<JobView, CliError> {
    let queued = job.state == i32::from(v1::JobState::Queued);
    if queued {
        job.state = v1::JobState::Running.into();
    }
    let host = Some(std::mem::take(&mut job.host)).filter(|host| !host.is_empty());
    let host_unreachable = job.host_unreachable;
    let info = JobInfo::try_from(job).map_err(|e| {
        CliError::Unexpected(format!(
            "the server sent a job this jobctl cannot read ({}: {}); is jobctl older than the server?",
            e.field,
            render::printable(&e.reason)
        ))
    })?;
    Ok(JobView {
        info,
        queued,
        host,
        host_unreachable,
    })
}

/// Starts a job; its id.
async fn start(client: &mut Client, spec: &JobSpecArgs) -> Result<String, CliError> {
    let request = spec.request()?;
    let what = format!(
        "starting {}",
        render::abbreviate(render::shell_quote(&spec.command), 80)
    );
    let response = client
        .start_job(request)
        .await
        .map_err(|s| rpc_error(what, &s))?
        .into_inner();
    Ok(response.job_id)
}

/// Every job the caller may see (in `state`, if given, carrying every label
/// of `selector`), all pages.
async fn list_all(
    client: &mut Client,
    state: Option<v1::JobState>,
    selector: &std::collections::HashMap<String, String>,
) -> Result<Vec<v1::Job>, CliError> {
    let mut jobs = Vec::new();
    let mut token = String::new();
    for _ in 0..MAX_PAGES {
        let page = client
            .list_jobs(v1::ListJobsRequest {
                state: state.map(i32::from),
                page_size: PAGE_SIZE,
                page_token: token.clone(),
                label_selector: selector.clone(),
            })
            .await
            .map_err(|s| rpc_error("listing jobs", &s))?
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() || page.next_page_token == token {
            return Ok(jobs);
        }
        token = page.next_page_token;
    }
    Err(CliError::Unexpected(format!(
        "listing jobs: the server sent more than {MAX_PAGES} pages"
    )))
}

/// The full id an argument names: itself, or the one job it is a prefix of.
async fn resolve_id(client: &mut Client, arg: &str) -> Result<String, CliError> {
    match ids::parse(arg)? {
        IdArg::Full(id) => Ok(id),
        IdArg::Prefix(prefix) => {
            let jobs = list_all(client, None, &Default::default()).await?;
            ids::resolve(arg, &prefix, jobs.iter().map(|job| job.id.as_str()))
        }
    }
}

/// `jobctl run`: start, stream, exit with the job's code.
async fn run_job(settings: &Settings, spec: &JobSpecArgs) -> Result<u8, CliError> {
    // Listen for Ctrl-C and SIGTERM before anything starts, so that none
    // is lost.
    let mut interrupt = Interrupts::listen()?;
    let mut client = tokio::select! {
        client = client::connect(settings) => client?,
        code = interrupt.next() => return Ok(code),
    };
    // Once asked for, a start is seen through, so that a job started by a
    // request in flight is stopped rather than left behind.
    let id = start(&mut client, spec).await?;
    match follow(&mut client, &id, &mut interrupt).await {
        Ok(code) => Ok(code),
        // Whoever reads `run`'s output went away: the job it started must
        // not go on unattended.
        Err(e) if e.class() == exit::Class::StdoutClosed => {
            stop_before_leaving(&client, &id).await;
            Err(e)
        }
        // Anything else (a connection lost for longer than the stream
        // retried it, a refusal from the server) stops nothing: the job
        // runs on at the server.
        Err(e) => {
            eprintln!(
                "jobctl: job {id} goes on at the server: `jobctl logs -f {id}` follows it, \
                 `jobctl stop {id}` stops it"
            );
            Err(e)
        }
    }
}

/// Ctrl-C (SIGINT) and SIGTERM, which `run` answers by stopping its job.
struct Interrupts {
    int: Signal,
    term: Signal,
}

impl Interrupts {
    fn listen() -> Result<Self, CliError> {
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| CliError::Unexpected(format!("listening for {name}: {e}")))
        };
        Ok(Self {
            int: listen(SignalKind::interrupt(), "Ctrl-C")?,
            term: listen(SignalKind::terminate(), "SIGTERM")?,
        })
    }

    /// Waits for the next one; the exit code it calls for (128 + its
    /// number).
    async fn next(&mut self) -> u8 {
        tokio::select! {
            () = interrupted(&mut self.int) => exit::INTERRUPTED,
            () = interrupted(&mut self.term) => exit::TERMINATED,
        }
    }
}

/// How long `run` waits for a stop it sends before it leaves anyway.
const LEAVING_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a second Ctrl-C waits for the stop to reach the server.
const SECOND_INTERRUPT_WAIT: Duration = Duration::from_secs(2);

/// Streams the job's output until it ends; Ctrl-C or SIGTERM stops it.
async fn follow(client: &mut Client, id: &str, interrupt: &mut Interrupts) -> Result<u8, CliError> {
    let mut stream = OutputStream::open(client, id, 0, true).await?;
    let mut stopping = None;
    let mut interrupted_with = exit::INTERRUPTED;
    let end = loop {
        tokio::select! {
            event = stream.next() => match event? {
                Some(Event::Data(data)) => write_stdout(&data).await?,
                Some(Event::End(job)) => break *job,
                None => {
                    return Err(CliError::Unexpected(format!(
                        "the output stream of job {id} ended without the job's final status; see `jobctl status {id}`"
                    )));
                }
            },
            code = interrupt.next() => {
                interrupted_with = code;
                if let Some(stop) = stopping.take() {
                    // Give the stop a moment to reach the server: leaving at
                    // once would cancel it and leave the job running.
                    let _ = tokio::time::timeout(SECOND_INTERRUPT_WAIT, stop).await;
                    return Ok(code);
                }
                eprintln!("jobctl: interrupted: stopping job {id} (Ctrl-C again to stop waiting)");
                let mut stopper = client.clone();
                let request = v1::StopJobRequest { job_id: id.to_owned(), grace_period: None };
                stopping = Some(tokio::spawn(async move { stopper.stop_job(request).await }));
            }
        }
    };
    if let Some(stop) = stopping {
        match stop.await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => return Err(rpc_error(format!("stopping job {id}"), &status)),
            Err(e) => return Err(CliError::Unexpected(format!("stopping job {id}: {e}"))),
        }
        return Ok(interrupted_with);
    }
    note_truncation(&end);
    if let (Some(StopReason::TimedOut), Some(timeout)) = (end.info.stop_reason, end.info.timeout) {
        eprintln!("jobctl: job {id} was stopped: it timed out after {timeout}");
    }
    if end.info.oom_killed {
        eprintln!("jobctl: job {id}: the kernel's OOM killer killed a process of the job");
    }
    exit_code_of(&end)
}

/// Stops a job `run` started before `run` gives up on it (best effort, with
/// a time limit; the error that ended `run` is what gets reported).
async fn stop_before_leaving(client: &Client, id: &str) {
    let mut stopper = client.clone();
    let request = v1::StopJobRequest {
        job_id: id.to_owned(),
        grace_period: None,
    };
    match tokio::time::timeout(LEAVING_STOP_TIMEOUT, stopper.stop_job(request)).await {
        Ok(Ok(_)) => eprintln!("jobctl: stopped job {id}"),
        Ok(Err(status)) => eprintln!("jobctl: could not stop job {id}: {}", status.message()),
        Err(_) => eprintln!("jobctl: job {id} did not stop in time; check `jobctl status {id}`"),
    }
}

async fn interrupted(signal: &mut Signal) {
    if signal.recv().await.is_none() {
        // The signal stream cannot end while the runtime lives; if it did,
        // no Ctrl-C could arrive any more.
        std::future::pending::<()>().await;
    }
}

/// The exit code `run` passes on: the job's exit code, 128 + the signal
/// that killed it, or an error for a job that has neither: one that has
/// not ended (RUNNING, or QUEUED in a fleet), or one that ended without an
/// exit status (FAILED).
pub fn exit_code_of(view: &JobView) -> Result<u8, CliError> {
    let job = &view.info;
    match job.termination {
        Some(Termination::Exited(code)) => {
            Ok(u8::try_from(code.rem_euclid(256)).unwrap_or(exit::OTHER))
        }
        Some(Termination::Signaled(signal)) => {
            Ok(u8::try_from(128 + signal.clamp(0, 127)).unwrap_or(exit::OTHER))
        }
        None if !view.is_ended() => Err(CliError::Unexpected(format!(
            "job {id} has not ended: it is {}; `jobctl logs -f {id}` follows it",
            render::outcome(view),
            id = job.id
        ))),
        None => Err(CliError::JobFailed {
            id: job.id.to_string(),
            failure: job.failure.clone().unwrap_or_else(|| {
                format!("it ended {} without an exit status", render::outcome(view))
            }),
        }),
    }
}

/// Says on stderr what of the job's output was dropped, if any.
fn note_truncation(view: &JobView) {
    let job = &view.info;
    if job.output_truncated_bytes > 0 {
        eprintln!(
            "jobctl: note: {} bytes of job {}'s output were dropped over the server's output cap",
            job.output_truncated_bytes, job.id
        );
    }
    if job.output_disk_full_bytes > 0 {
        eprintln!(
            "jobctl: note: {} bytes of job {}'s output were dropped: the server's disk was full \
             when the job ended",
            job.output_disk_full_bytes, job.id
        );
    }
}

async fn print_line(text: &str) -> Result<(), CliError> {
    write_stdout(format!("{text}\n").as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobworker_ipc::JobState;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("jobctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn start_takes_limits_and_a_command() {
        let cli = parse(&[
            "start",
            "--cpu",
            "500m",
            "--memory",
            "256M",
            "--io-read",
            "10M",
            "--io-write",
            "1M/s",
            "--pids",
            "64",
            "--env",
            "A=1",
            "-e",
            "B=x=y",
            "--workdir",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo hi",
        ])
        .unwrap();
        let Command::Start(args) = cli.command else {
            panic!("not start")
        };
        let request = args.spec.request().unwrap();
        assert_eq!(request.command, "sh");
        assert_eq!(request.args, ["-c", "echo hi"]);
        assert_eq!(request.env[1].name, "B");
        assert_eq!(request.env[1].value, "x=y");
        assert_eq!(request.working_dir.as_deref(), Some("/tmp"));
        let limits = request.limits.unwrap();
        assert_eq!(limits.cpu_millicores, Some(500));
        assert_eq!(limits.memory_bytes, Some(256 << 20));
        assert_eq!(limits.io_read_bytes_per_sec, Some(10 << 20));
        assert_eq!(limits.io_write_bytes_per_sec, Some(1 << 20));
        assert_eq!(limits.pids, Some(64));
    }

    #[test]
    fn no_limits_send_none() {
        let cli = parse(&["run", "true"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let request = args.spec.request().unwrap();
        assert_eq!(request.limits, None);
        assert_eq!(request.command, "true");
    }

    #[test]
    fn arguments_after_the_command_belong_to_it() {
        let cli = parse(&["run", "--cpu", "1", "ls", "-l", "--cpu"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.spec.command, ["ls", "-l", "--cpu"]);
        assert_eq!(args.spec.cpu, Some(1000));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["start"][..],
            &["start", "--cpu", "lots", "--", "x"],
            &["start", "--memory", "12q", "--", "x"],
            &["start", "--env", "NOVALUE", "--", "x"],
            &["list", "--state", "sleeping"],
            &["stop", "--grace", "soon", "abc"],
            &["status"],
            &["completions", "tcsh"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(exit::USAGE), "{bad:?}");
        }
    }

    #[test]
    fn connection_flags_are_global() {
        let cli = parse(&["list", "--server", "h:1", "--ca", "/ca.pem"]).unwrap();
        assert_eq!(cli.connection.server.as_deref(), Some("h:1"));
        let flags = cli.connection.flags();
        assert_eq!(flags.ca, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn flags_override_the_environment() {
        let cli = parse(&["--server", "flag:1", "--cert", "/c", "--key", "/k", "list"]).unwrap();
        let settings = cli
            .connection
            .resolve(|name| match name {
                "JOBCTL_SERVER" => Some("env:2".into()),
                "JOBCTL_CA" => Some("/env-ca".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(settings.server, "https://flag:1");
        assert_eq!(settings.ca, PathBuf::from("/env-ca"));
    }

    #[test]
    fn exit_codes_of_jobs() {
        let job = |termination| {
            JobView::from(JobInfo {
                termination: Some(termination),
                ..render::tests::job()
            })
        };
        assert_eq!(exit_code_of(&job(Termination::Exited(7))).unwrap(), 7);
        assert_eq!(exit_code_of(&job(Termination::Exited(0))).unwrap(), 0);
        assert_eq!(exit_code_of(&job(Termination::Signaled(15))).unwrap(), 143);
        assert_eq!(exit_code_of(&job(Termination::Signaled(9))).unwrap(), 137);
        let failed = JobView::from(JobInfo {
            state: JobState::Failed,
            failure: Some("lost".into()),
            ..render::tests::job()
        });
        let err = exit_code_of(&failed).unwrap_err();
        assert_eq!(err.exit_code(), exit::OTHER);
        assert!(err.to_string().contains("lost"));
    }

    #[test]
    fn a_queued_job_has_not_ended_like_a_running_one() {
        let running = JobView::from(JobInfo {
            state: JobState::Running,
            pid: Some(3),
            ..render::tests::job()
        });
        let queued = JobView {
            queued: true,
            ..JobView::from(JobInfo {
                state: JobState::Running,
                ..render::tests::job()
            })
        };
        for (view, shown) in [(running, "RUNNING (pid 3)"), (queued, "QUEUED")] {
            assert!(!view.is_ended(), "{view:?}");
            let err = exit_code_of(&view).unwrap_err();
            assert!(!matches!(err, CliError::JobFailed { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!(
                    "job {id} has not ended: it is {shown}; `jobctl logs -f {id}` follows it",
                    id = view.info.id
                )
            );
        }
    }

    #[test]
    fn placement_fills_the_request() {
        let cli = parse(&[
            "run",
            "--placement",
            "zone=a,gpu=yes",
            "--placement",
            "rack=r-7",
            "-l",
            "team=ml",
            "--",
            "nvidia-smi",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let request = args.spec.request().unwrap();
        let placement: std::collections::BTreeMap<_, _> = request.placement.into_iter().collect();
        assert_eq!(
            placement,
            [("gpu", "yes"), ("rack", "r-7"), ("zone", "a")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into()
        );
        assert_eq!(request.labels.len(), 1);
        // None given: any host.
        let cli = parse(&["start", "true"]).unwrap();
        let Command::Start(args) = cli.command else {
            panic!("not start")
        };
        assert!(args.spec.request().unwrap().placement.is_empty());
        // Checked as the server checks it, and named in the error.
        for bad in ["zone", "zone=a,zone=b", "gpu_=yes"] {
            let cli = parse(&["start", "--placement", bad, "--", "true"]).unwrap();
            let Command::Start(args) = cli.command else {
                panic!("not start")
            };
            let err = args.spec.request().unwrap_err();
            assert_eq!(err.exit_code(), exit::USAGE, "{bad}");
            assert!(
                err.to_string()
                    .starts_with("--placement: invalid placement"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn list_filters_by_state_queued_too() {
        for (name, state) in [
            ("queued", v1::JobState::Queued),
            ("running", v1::JobState::Running),
            ("stopped", v1::JobState::Stopped),
            ("finished", v1::JobState::Finished),
            ("failed", v1::JobState::Failed),
        ] {
            let cli = parse(&["list", "--state", name]).unwrap();
            let Command::List(args) = cli.command else {
                panic!("not list")
            };
            assert_eq!(args.state, Some(state), "{name}");
        }
    }

    #[test]
    fn a_job_this_jobctl_cannot_read_is_an_error() {
        let job = v1::Job::from(render::tests::job());
        let view = read_job(job.clone()).unwrap();
        assert_eq!(view.info.owner.to_string(), "alice");
        assert!(!view.queued && view.host.is_none());
        let err = read_job(v1::Job { state: 99, ..job }).unwrap_err();
        assert_eq!(err.exit_code(), exit::OTHER);
        assert_eq!(
            err.to_string(),
            "the server sent a job this jobctl cannot read (state: 99 is no state this version knows); is jobctl older than the server?"
        );
    }

    #[test]
    fn help_documents_exit_codes_and_settings() {
        let help = Cli::command().render_long_help().to_string();
        for expected in [
            "Exit codes",
            "JOBCTL_SERVER",
            "config.toml",
            "5    job not found",
        ] {
            assert!(help.contains(expected), "{expected:?} not in help:\n{help}");
        }
    }
}
