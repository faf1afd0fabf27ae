//! `jobworker-debug`: the operators' tool on the host. It speaks the ipc
//! protocol straight to the supervisor's socket, as the local operator
//! identity the supervisor grants by peer credentials (root, or a member of
//! the operator group); it never needs the gateway or certificates.
//!
//! Commands: `ping` (protocol version, uptime, caller, cgroup root,
//! controllers), `jobs [--state S]`, `job ID`, `logs [-f] [--offset N] ID`,
//! `stop [--grace D] ID`. Job ids may be abbreviated to a unique prefix.
//! In fleet mode, `hosts`, `drain HOST` and `undrain HOST` talk to the
//! fleet's database instead ([`fleet`]).
//!
//! `--frames` (a global flag) prints every frame exchanged to stderr: its
//! direction (`->` sent, `<-` received), its size on the wire, and its
//! message's `Debug` form, with output data shown as a length and a short
//! escaped preview and any message cut at [`TRACE_MAX_CHARS`] characters.
//!
//! A supervisor that closes the connection before its handshake refuses
//! this peer; that is reported as one line that says who may connect.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jobworker_ipc::client::{self, ClientError, StreamFrame, Traced};
use jobworker_ipc::handshake::{HELLO_LEN, MAGIC};
use jobworker_ipc::types::MAX_PAGE_SIZE;
use jobworker_ipc::{
    GraceMs, JobId, JobInfo, JobState, ListCursor, PageSize, Request, Response, ServerInfo, frame,
};
use serde::Serialize;

use crate::exit::{self, CliError};
use crate::ids::{self, IdArg};
use crate::render::{self, JobView, write_stdout};
use crate::settings;

mod fleet;

/// The supervisor's socket when neither `--socket` nor `JOBWORKER_SOCKET`
/// names one.
pub const DEFAULT_SOCKET: &str = "/run/jobworker/supervisor.sock";

/// The gateway's configuration when `--gateway-config` names none.
pub const DEFAULT_GATEWAY_CONFIG: &str = "/etc/jobworker/gateway.toml";

/// The longest a traced message is shown, in characters.
pub const TRACE_MAX_CHARS: usize = 2000;

/// How many bytes of output data a traced frame previews.
const TRACE_PREVIEW_BYTES: usize = 64;

/// How long connecting and the supervisor's answer to the handshake may
/// take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most pages a listing reads.
const MAX_PAGES: usize = 100_000;

fn after_help() -> String {
    format!(
        "{}\n\nThe supervisor accepts root and members of its operator group; anyone else is refused.",
        exit::EXIT_CODES_HELP
    )
}

/// Talks to the jobworker supervisor over its Unix socket, as a local operator.
///
/// Job ids may be abbreviated to any unique prefix.
#[derive(Debug, Parser)]
#[command(name = "jobworker-debug", version, after_help = after_help())]
pub struct Cli {
    /// The supervisor's socket
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "JOBWORKER_SOCKET",
        default_value = DEFAULT_SOCKET
    )]
    pub socket: PathBuf,
    /// Print every frame sent and received to stderr (direction, size, message)
    #[arg(long, global = true)]
    pub frames: bool,
    /// The gateway's configuration, whose [fleet] table names the fleet's
    /// database (for hosts, drain, undrain)
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_GATEWAY_CONFIG)]
    pub gateway_config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The debug tool's commands: the supervisor's, and the fleet's.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Calls to the supervisor.
    #[command(flatten)]
    Supervisor(SupervisorCommand),
    /// The fleet's hosts, in its database.
    #[command(flatten)]
    Fleet(FleetCommand),
}

/// Calls to the supervisor.
#[derive(Debug, Subcommand)]
pub enum SupervisorCommand {
    /// The supervisor's protocol version, uptime, cgroup root and controllers.
    Ping {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// The supervisor's figures (what the gateway's metrics endpoint
    /// exposes), as one JSON object.
    Metrics,
    /// Every job, newest first.
    Jobs {
        /// Only jobs in this state
        #[arg(long, value_parser = render::state_arg())]
        state: Option<JobState>,
        /// Print one JSON array
        #[arg(long)]
        json: bool,
    },
    /// One job's status.
    Job {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
        /// The job's id, or a unique prefix of it
        id: String,
    },
    /// A job's output, raw, to stdout.
    Logs {
        /// Keep following the output until the job ends
        #[arg(short, long)]
        follow: bool,
        /// Start at this byte of the output
        #[arg(long, value_name = "N", default_value_t = 0)]
        offset: u64,
        /// The job's id, or a unique prefix of it
        id: String,
    },
    /// Stop a job: SIGTERM, a grace period, then kill.
    Stop {
        /// The grace period after SIGTERM (e.g. 5s); the supervisor's default when unset
        #[arg(long, value_name = "DURATION", value_parser = settings::parse_duration)]
        grace: Option<Duration>,
        /// Print the job as one JSON object
        #[arg(long)]
        json: bool,
        /// The job's id, or a unique prefix of it
        id: String,
    },
}

/// The fleet's hosts, in the database of the gateway's `[fleet]` table.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// The hosts of the fleet (fleet mode): lease, generation, drain,
    /// slots, labels, version; from the database in the gateway's [fleet].
    Hosts {
        /// Print one JSON array
        #[arg(long)]
        json: bool,
    },
    /// Drain a host of the fleet: it claims no new job; its running jobs go
    /// on. It stays drained across its restarts until undrained.
    Drain {
        /// The host's id (its host_id)
        host: String,
    },
    /// Let a drained host claim jobs again.
    Undrain {
        /// The host's id (its host_id)
        host: String,
    },
}

/// One connection to the supervisor, as the local operator.
pub struct Connection {
    inner: client::Connection,
}

/// What a supervisor that closes before its handshake means for this peer.
fn closed_before_handshake() -> CliError {
    if nix::unistd::geteuid().is_root() {
        CliError::ClosedEarly
    } else {
        CliError::Refused
    }
}

fn describe_hello(hello: &[u8; HELLO_LEN]) -> String {
    let (magic, version) = hello.split_at(MAGIC.len());
    format!(
        "hello: magic {:?}, version {}",
        magic.escape_ascii().to_string(),
        u16::from_be_bytes([version[0], version[1]])
    )
}

/// What a failure to talk to the supervisor means for the operator;
/// `what` names the call, for messages.
fn talk_error(error: ClientError, what: &str) -> CliError {
    match error {
        ClientError::Connect { path, source } => CliError::Socket {
            path: path.display().to_string(),
            error: source,
        },
        ClientError::TimedOut { path, timeout } => CliError::Unexpected(format!(
            "{} did not answer the handshake within {}s: is it the supervisor's socket?",
            path.display(),
            timeout.as_secs()
        )),
        ClientError::ClosedInHandshake { .. } => closed_before_handshake(),
        ClientError::Handshake { source, .. } => CliError::Frame {
            what: "the handshake with the supervisor".into(),
            error: source,
        },
        ClientError::Send { source, .. } => CliError::Frame {
            what: "sending a call to the supervisor".into(),
            error: source,
        },
        ClientError::Receive { source, .. } => CliError::Frame {
            what: format!("reading the answer to {what}"),
            error: source,
        },
        ClientError::Closed { .. } => CliError::HungUp {
            what: what.to_owned(),
        },
        ClientError::Unexpected { response, .. } => unexpected(what, &response),
    }
}

/// Prints a hello or a frame to stderr, for `--frames`.
fn print_traced(traced: Traced<'_>) {
    match traced {
        Traced::HelloSent(hello) => eprintln!("-> {HELLO_LEN} bytes {}", describe_hello(hello)),
        Traced::HelloReceived(hello) => {
            eprintln!("<- {HELLO_LEN} bytes {}", describe_hello(hello));
        }
        Traced::Sent(call) => eprintln!("-> {} bytes {}", frame_size(call), debug_text(call)),
        Traced::Received(response) => eprintln!(
            "<- {} bytes {}",
            frame_size(response),
            describe_response(response)
        ),
    }
}

/// The size of a message's frame on the wire (length prefix included).
fn frame_size<T: Serialize>(msg: &T) -> String {
    let mut buf = Vec::new();
    match frame::encode(msg, &mut buf) {
        Ok(()) => buf.len().to_string(),
        Err(_) => "?".into(),
    }
}

/// A message's `Debug` form, cut at [`TRACE_MAX_CHARS`] characters.
fn debug_text(msg: &impl Debug) -> String {
    let mut text = format!("{msg:?}");
    if let Some((cut, _)) = text.char_indices().nth(TRACE_MAX_CHARS) {
        let rest = text[cut..].chars().count();
        text.truncate(cut);
        text.push_str(&format!("… ({rest} more characters)"));
    }
    text
}

/// How a traced response reads: output data as a length and a preview.
pub fn describe_response(response: &Response) -> String {
    match response {
        Response::Output { offset, data } => {
            let bytes = data.as_slice();
            let preview = &bytes[..bytes.len().min(TRACE_PREVIEW_BYTES)];
            let more = if bytes.len() > preview.len() {
                "…"
            } else {
                ""
            };
            format!(
                "Output {{ offset: {offset}, data: {} bytes \"{}\"{more} }}",
                bytes.len(),
                preview.escape_ascii()
            )
        }
        other => debug_text(other),
    }
}

impl Connection {
    /// Connects to the socket and performs the handshake; with `trace`,
    /// every hello and frame is printed to stderr.
    pub async fn open(path: &Path, trace: bool) -> Result<Self, CliError> {
        let inner = if trace {
            client::Connection::connect_traced(path, HANDSHAKE_TIMEOUT, Box::new(print_traced))
                .await
        } else {
            client::Connection::connect(path, HANDSHAKE_TIMEOUT).await
        };
        let inner = inner.map_err(|e| talk_error(e, "the handshake"))?;
        Ok(Self { inner })
    }

    /// One request and its one response; `what` names the call, for
    /// messages. The supervisor's refusal is an error.
    pub async fn call(&mut self, request: Request, what: &str) -> Result<Response, CliError> {
        match self.inner.call(request).await {
            Ok(Response::Error(error)) => Err(CliError::Ipc {
                what: what.to_owned(),
                error,
            }),
            Ok(response) => Ok(response),
            Err(e) => Err(talk_error(e, what)),
        }
    }

    /// Writes a job's output from `offset` to stdout, to its end when
    /// `follow`, else to the bytes written so far.
    pub async fn output(self, job: JobId, offset: u64, follow: bool) -> Result<(), CliError> {
        let what = format!("reading the output of job {job}");
        let request = Request::StreamOutput {
            job,
            offset,
            follow,
        };
        let mut stream = self
            .inner
            .stream(request)
            .await
            .map_err(|e| talk_error(e, &what))?;
        while let Some(frame) = stream.next().await.map_err(|e| talk_error(e, &what))? {
            match frame {
                StreamFrame::Output { data, .. } => write_stdout(data.as_slice()).await?,
                StreamFrame::End(_) => {}
                StreamFrame::Error(error) => return Err(CliError::Ipc { what, error }),
            }
        }
        Ok(())
    }

    /// One request answered with a job.
    async fn job(&mut self, request: Request, what: &str) -> Result<JobInfo, CliError> {
        match self.call(request, what).await? {
            Response::Job(info) => Ok(*info),
            other => Err(unexpected(what, &other)),
        }
    }

    /// Every job (in `state`, if given), all pages.
    pub async fn list_all(&mut self, state: Option<JobState>) -> Result<Vec<JobInfo>, CliError> {
        let mut jobs = Vec::new();
        let mut after: Option<ListCursor> = None;
        let limit = PageSize::new(MAX_PAGE_SIZE).unwrap_or(PageSize::DEFAULT);
        for _ in 0..MAX_PAGES {
            let request = Request::ListJobs {
                state,
                limit,
                after,
                labels: Default::default(),
            };
            match self.call(request, "listing jobs").await? {
                Response::Jobs { jobs: page, next } => {
                    jobs.extend(page);
                    match next {
                        Some(cursor) if Some(cursor) != after => after = Some(cursor),
                        _ => return Ok(jobs),
                    }
                }
                other => return Err(unexpected("listing jobs", &other)),
            }
        }
        Err(CliError::Unexpected(format!(
            "listing jobs: the supervisor sent more than {MAX_PAGES} pages"
        )))
    }

    /// The id an argument names: itself, or the one job it is a prefix of.
    pub async fn resolve_id(&mut self, arg: &str) -> Result<JobId, CliError> {
        let id = match ids::parse(arg)? {
            IdArg::Full(id) => id,
            IdArg::Prefix(prefix) => {
                let jobs = self.list_all(None).await?;
                let ids: Vec<String> = jobs.iter().map(|job| job.id.to_string()).collect();
                ids::resolve(arg, &prefix, ids.iter().map(String::as_str))?
            }
        };
        JobId::from_str(&id).map_err(|e| CliError::Usage(e.to_string()))
    }
}

fn unexpected(what: &str, response: &Response) -> CliError {
    CliError::Unexpected(format!(
        "unexpected answer to {what} from the supervisor: {}",
        describe_response(response)
    ))
}

fn ping_text(info: &ServerInfo) -> String {
    let uptime = Duration::from_secs(info.uptime_ms / 1000);
    let controllers = if info.controllers.is_empty() {
        "none (job limits are not enforced on this host)".to_owned()
    } else {
        info.controllers.join(" ")
    };
    format!(
        "protocol version: {}\nuptime:           {}\ncaller:           {}\ncgroup root:      {}\ncontrollers:      {controllers}\n",
        info.protocol_version,
        humantime::format_duration(uptime),
        info.caller,
        info.cgroup_root,
    )
}

fn ping_json(info: &ServerInfo) -> serde_json::Value {
    serde_json::json!({
        "protocol_version": info.protocol_version,
        "uptime_ms": info.uptime_ms,
        "caller": info.caller.to_string(),
        "cgroup_root": info.cgroup_root,
        "controllers": info.controllers,
    })
}

async fn print_job(info: JobInfo, json: bool) -> Result<(), CliError> {
    let view = JobView::from(info);
    if json {
        write_stdout(format!("{}\n", render::to_json(&view)).as_bytes()).await
    } else {
        write_stdout(render::status_text(&view).as_bytes()).await
    }
}

/// Runs a parsed command line; the exit code.
pub async fn run(cli: Cli) -> Result<u8, CliError> {
    let command = match cli.command {
        Command::Fleet(command) => return fleet::run(&cli.gateway_config, command).await,
        Command::Supervisor(command) => command,
    };
    let mut conn = Connection::open(&cli.socket, cli.frames).await?;
    match command {
        SupervisorCommand::Ping { json } => match conn.call(Request::Ping, "ping").await? {
            Response::Pong(info) => {
                let text = if json {
                    format!("{}\n", ping_json(&info))
                } else {
                    ping_text(&info)
                };
                write_stdout(text.as_bytes()).await?;
            }
            other => return Err(unexpected("ping", &other)),
        },
        SupervisorCommand::Metrics => {
            match conn.call(Request::Metrics, "reading the metrics").await? {
                Response::Metrics(figures) => {
                    let text = serde_json::to_string(&figures).map_err(|e| {
                        CliError::Unexpected(format!("showing the metrics as JSON: {e}"))
                    })?;
                    write_stdout(format!("{text}\n").as_bytes()).await?;
                }
                other => return Err(unexpected("reading the metrics", &other)),
            }
        }
        SupervisorCommand::Jobs { state, json } => {
            let jobs: Vec<JobView> = conn
                .list_all(state)
                .await?
                .into_iter()
                .map(JobView::from)
                .collect();
            let text = if json {
                format!("{}\n", render::jobs_json(&jobs))
            } else {
                render::list_table(&jobs)
            };
            write_stdout(text.as_bytes()).await?;
        }
        SupervisorCommand::Job { json, id } => {
            let job = conn.resolve_id(&id).await?;
            let info = conn
                .job(Request::GetJob { job }, &format!("getting job {job}"))
                .await?;
            print_job(info, json).await?;
        }
        SupervisorCommand::Logs { follow, offset, id } => {
            let job = conn.resolve_id(&id).await?;
            conn.output(job, offset, follow).await?;
        }
        SupervisorCommand::Stop { grace, json, id } => {
            let job = conn.resolve_id(&id).await?;
            let grace = grace
                .map(|d| {
                    let ms = u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
                    GraceMs::new(ms).map_err(|e| CliError::Usage(format!("--grace: {e}")))
                })
                .transpose()?;
            let info = conn
                .job(
                    Request::StopJob { job, grace },
                    &format!("stopping job {job}"),
                )
                .await?;
            if json {
                print_job(info, true).await?;
            } else {
                let view = JobView::from(info);
                let text = format!("{}: {}\n", view.info.id, render::outcome(&view));
                write_stdout(text.as_bytes()).await?;
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use jobworker_ipc::{OutputData, Owner, UserName};

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["jobworker-debug", "jobs", "--frames", "--socket", "/s"]).unwrap();
        assert!(cli.frames);
        assert_eq!(cli.socket, PathBuf::from("/s"));
    }

    #[test]
    fn traced_output_is_cut_short() {
        let data =
            OutputData::new(vec![b'x'; 70_000.min(jobworker_ipc::MAX_OUTPUT_CHUNK)]).unwrap();
        let text = describe_response(&Response::Output { offset: 5, data });
        assert!(
            text.starts_with("Output { offset: 5, data: 65536 bytes \"xxxx"),
            "{text}"
        );
        assert!(text.len() < 200, "{text}");
        let long = Response::Pong(ServerInfo {
            protocol_version: 1,
            uptime_ms: 0,
            caller: Owner::Local(UserName::new("root").unwrap()),
            cgroup_root: "c".repeat(5000),
            controllers: vec![],
        });
        let text = describe_response(&long);
        assert!(text.ends_with("more characters)"), "{text}");
        assert!(text.chars().count() < TRACE_MAX_CHARS + 40);
    }

    #[test]
    fn hellos_read_well() {
        assert_eq!(
            describe_hello(&jobworker_ipc::handshake::hello()),
            format!(
                "hello: magic \"JOBWKR\", version {}",
                jobworker_ipc::handshake::PROTOCOL_VERSION
            )
        );
    }

    #[test]
    fn ping_says_when_nothing_is_enforced() {
        let info = ServerInfo {
            protocol_version: 1,
            uptime_ms: 61_000,
            caller: Owner::Local(UserName::new("root").unwrap()),
            cgroup_root: "/sys/fs/cgroup/jobs".into(),
            controllers: vec![],
        };
        let text = ping_text(&info);
        assert!(text.contains("uptime:           1m 1s"), "{text}");
        assert!(text.contains("caller:           local:root"), "{text}");
        assert!(text.contains("not enforced"), "{text}");
        assert_eq!(ping_json(&info)["caller"], "local:root");
    }
}
