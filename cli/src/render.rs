//! Jobs shown to people and to scripts.
//!
//! Both tools show a [`JobView`]: the shared model, the ipc [`JobInfo`],
//! and what only a fleet's gateway tells of a job (that it is QUEUED, the
//! host that runs it). The debug tool reads the [`JobInfo`] from the
//! supervisor (never queued, no host); `jobctl` reads each gRPC `Job` it
//! receives into a view (its `read_job`); so a job looks the same
//! whichever tool shows it.
//!
//! The JSON form is built field by field, with stable names (the proto's
//! field names; states in lower case, `queued` included; times in RFC 3339
//! UTC; absent values `null`; `"host"` and `"host_unreachable"` only for a
//! job a host of a fleet runs or ran), so scripts do not depend on how the messages are
//! generated:
//!
//! ```json
//! {"id": "…", "owner": "alice", "command": "sh", "args": ["-c", "…"],
//!  "state": "finished", "pid": 4242, "uid": 61184, "gid": 61184,
//!  "exit_code": 7, "signal": null,
//!  "oom_killed": false, "created_at": "2026-01-01T00:00:00.000Z",
//!  "started_at": "…", "ended_at": "…",
//!  "limits": {"cpu_millicores": 500, "memory_bytes": null,
//!             "io_read_bytes_per_sec": null, "io_write_bytes_per_sec": null,
//!             "pids": 64},
//!  "enforced": {"cpu": false, "memory": false, "io": false, "pids": false},
//!  "usage": {"cpu_time_usec": 1234, "memory_peak_bytes": null,
//!            "io_read_bytes": 0, "io_write_bytes": 0},
//!  "output_bytes": 8, "output_truncated_bytes": 0,
//!  "output_disk_full_bytes": 0, "failure": null, "stop_reason": null,
//!  "timeout_ms": null, "labels": {"team": "build"}, "host": "node-1",
//!  "host_unreachable": false}
//! ```

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobworker_fleet::hosts::Host;
use jobworker_ipc::{JobInfo, JobState, StopReason, Termination, TimeoutMs, UnixMicros};
use jobworker_proto::v1;
use serde_json::{Value, json};

use tokio::io::AsyncWriteExt;

use crate::exit::CliError;
use crate::units::{format_bytes, format_cpu};

/// The name of a fleet's queued state, which the shared model has not.
pub const QUEUED: &str = "queued";

/// A job as the tools show it: the shared model, and what a fleet's
/// gateway adds to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    /// The job. A queued job's `state` is RUNNING, which is never shown.
    pub info: JobInfo,
    /// In a fleet: the job waits in the fleet's queue for a host with a
    /// free slot; shown as QUEUED whatever `info.state` says.
    pub queued: bool,
    /// In a fleet: the host that runs (or ran) the job.
    pub host: Option<String>,
    /// In a fleet: that host's lease ran out; the job may still run there.
    pub host_unreachable: bool,
}

impl From<JobInfo> for JobView {
    /// A job of one host's supervisor: never queued, no host named.
    fn from(info: JobInfo) -> Self {
        Self {
            info,
            queued: false,
            host: None,
            host_unreachable: false,
        }
    }
}

impl JobView {
    /// The state's name: `queued`, or the job's state's (`running`, ...).
    pub fn state_name(&self) -> &'static str {
        if self.queued {
            QUEUED
        } else {
            self.info.state.as_str()
        }
    }

    /// Whether the job has ended: a queued one has not even started.
    pub fn is_ended(&self) -> bool {
        !self.queued && self.info.state.is_ended()
    }
}

/// The debug tool's `--state` argument: one of [`JobState::ALL`]'s names.
pub fn state_arg() -> impl clap::builder::TypedValueParser<Value = JobState> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(JobState::ALL.map(JobState::as_str))
        .try_map(|name| name.parse::<JobState>())
}

/// `jobctl list`'s `--state` argument: one of [`JobState::ALL`]'s names
/// or [`QUEUED`], as the gRPC state it asks for.
pub fn remote_state_arg() -> impl clap::builder::TypedValueParser<Value = v1::JobState> {
    use clap::builder::TypedValueParser as _;
    let names = JobState::ALL
        .map(JobState::as_str)
        .into_iter()
        .chain([QUEUED]);
    clap::builder::PossibleValuesParser::new(names).try_map(|name| {
        if name == QUEUED {
            Ok(v1::JobState::Queued)
        } else {
            name.parse::<JobState>().map(v1::JobState::from)
        }
    })
}

/// The job's state's name for people: `RUNNING`, `QUEUED`, ...
fn shout(job: &JobView) -> String {
    job.state_name().to_uppercase()
}

/// A time as the system's clock reads it; `None` past its range.
fn system_time(at: UnixMicros) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(at.since_epoch())
}

fn rfc3339(at: Option<UnixMicros>) -> Value {
    at.and_then(system_time).map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_millis(t).to_string())
    })
}

/// A signal's name, e.g. `SIGTERM`, when it has one.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    nix::sys::signal::Signal::try_from(signal)
        .ok()
        .map(|s| s.as_str())
}

fn describe_signal(signal: i32) -> String {
    match signal_name(signal) {
        Some(name) => format!("signal {signal}, {name}"),
        None => format!("signal {signal}"),
    }
}

/// The job as one JSON object.
pub fn to_json(view: &JobView) -> Value {
    let job = &view.info;
    let (exit_code, signal) = match job.termination {
        Some(Termination::Exited(code)) => (Some(code), None),
        Some(Termination::Signaled(signal)) => (None, Some(signal)),
        None => (None, None),
    };
    let limits = &job.limits;
    let enforced = &job.enforced;
    let usage = &job.usage;
    let mut value = json!({
        "id": job.id.to_string(),
        "owner": job.owner.to_string(),
        "command": job.command.as_str(),
        "args": job.args.as_slice(),
        "state": view.state_name(),
        "pid": job.pid,
        "uid": job.uid,
        "gid": job.gid,
        "exit_code": exit_code,
        "signal": signal,
        "oom_killed": job.oom_killed,
        "created_at": rfc3339(Some(job.created_at)),
        "started_at": rfc3339(job.started_at),
        "ended_at": rfc3339(job.ended_at),
        "limits": {
            "cpu_millicores": limits.cpu_millicores(),
            "memory_bytes": limits.memory_bytes(),
            "io_read_bytes_per_sec": limits.io_read_bps(),
            "io_write_bytes_per_sec": limits.io_write_bps(),
            "pids": limits.pids(),
        },
        "enforced": {
            "cpu": enforced.cpu,
            "memory": enforced.memory,
            "io": enforced.io,
            "pids": enforced.pids,
        },
        "usage": {
            "cpu_time_usec": usage.cpu_usec,
            "memory_peak_bytes": usage.memory_peak_bytes,
            "io_read_bytes": usage.io_read_bytes,
            "io_write_bytes": usage.io_write_bytes,
        },
        "output_bytes": job.output_bytes,
        "output_truncated_bytes": job.output_truncated_bytes,
        "output_disk_full_bytes": job.output_disk_full_bytes,
        "failure": job.failure,
        "stop_reason": job.stop_reason.map(|reason| match reason {
            StopReason::Requested => "requested",
            StopReason::TimedOut => "timed_out",
        }),
        "timeout_ms": job.timeout.map(TimeoutMs::millis),
        "labels": job.labels.as_map(),
    });
    if let Some(host) = &view.host {
        value["host"] = json!(host);
        value["host_unreachable"] = json!(view.host_unreachable);
    }
    value
}

/// The state and how the job ended, on one line: `FINISHED (exit code
/// 7)`, `STOPPED (killed by signal 15, SIGTERM)`, `RUNNING (pid 42)`,
/// `QUEUED`.
pub fn outcome(view: &JobView) -> String {
    let job = &view.info;
    let mut text = shout(view);
    let mut details = Vec::new();
    if let (Some(StopReason::TimedOut), Some(timeout)) = (job.stop_reason, job.timeout) {
        details.push(format!("timed out after {timeout}"));
    }
    match job.termination {
        Some(Termination::Exited(code)) => details.push(format!("exit code {code}")),
        Some(Termination::Signaled(signal)) => {
            details.push(format!("killed by {}", describe_signal(signal)));
        }
        None => {}
    }
    if !view.queued
        && job.state == JobState::Running
        && let Some(pid) = job.pid
    {
        details.push(format!("pid {pid}"));
    }
    if job.oom_killed {
        details.push("OOM killed".into());
    }
    if !details.is_empty() {
        let _ = write!(text, " ({})", details.join(", "));
    }
    if let Some(failure) = &job.failure {
        let _ = write!(text, ": {}", printable(failure));
    }
    text
}

/// The command line, quoted for a POSIX shell.
pub fn command_line(job: &JobInfo) -> String {
    let command = job.command.to_string();
    shell_quote(std::iter::once(&command).chain(job.args.as_slice()))
}

/// A human-readable summary of everything known about the job. A queued
/// job's limits say nothing of their enforcement, and it has no usage: no
/// host runs it yet.
pub fn status_text(view: &JobView) -> String {
    let job = &view.info;
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{label:<13}{value}");
    };
    line("Job:", &job.id.to_string());
    line("Owner:", &job.owner.to_string());
    line("Command:", &command_line(job));
    line("State:", &outcome(view));
    if let Some(host) = &view.host {
        let host = printable(host);
        if view.host_unreachable {
            line(
                "Host:",
                &format!(
                    "{host}, unreachable: its lease ran out; the job may still run there, \
                     and this is its last report"
                ),
            );
        } else {
            line("Host:", &host);
        }
    }
    if let Some(pid) = job.pid {
        line("PID:", &pid.to_string());
    }
    if let (Some(uid), Some(gid)) = (job.uid, job.gid) {
        line("Runs as:", &format!("uid {uid}, gid {gid}"));
    }
    line(
        "OOM killed:",
        if job.oom_killed {
            "yes: the kernel's OOM killer killed a process of this job"
        } else {
            "no"
        },
    );
    line("Created:", &human_time(Some(job.created_at)));
    line("Started:", &human_time(job.started_at));
    let ended = match (job.started_at, job.ended_at) {
        (Some(start), Some(end)) => format!(
            "{} (ran for {})",
            human_time(Some(end)),
            human_duration(Duration::from_micros(end.0.saturating_sub(start.0)))
        ),
        (_, end) => human_time(end),
    };
    line("Ended:", &ended);
    line(
        "Time limit:",
        &job.timeout
            .map_or_else(|| "none".to_owned(), |t| t.to_string()),
    );
    if !job.labels.is_empty() {
        line("Labels:", &job.labels.to_string());
    }
    out.push_str("Limits:\n");
    let limit = |out: &mut String, label: &str, value: Option<String>, enforced: bool| {
        let text = match value {
            None => "no limit".to_owned(),
            Some(v) if view.queued => v,
            Some(v) if enforced => format!("{v}, enforced"),
            Some(v) => format!("{v}, not enforced on this host"),
        };
        let _ = writeln!(out, "  {label:<13}{text}");
    };
    let l = &job.limits;
    let e = &job.enforced;
    let rate = |bps: u64| format!("{}/s", format_bytes(bps));
    limit(&mut out, "CPU:", l.cpu_millicores().map(format_cpu), e.cpu);
    limit(
        &mut out,
        "Memory:",
        l.memory_bytes().map(format_bytes),
        e.memory,
    );
    limit(&mut out, "I/O read:", l.io_read_bps().map(rate), e.io);
    limit(&mut out, "I/O write:", l.io_write_bps().map(rate), e.io);
    limit(&mut out, "Tasks:", l.pids().map(|p| p.to_string()), e.pids);
    if !view.queued {
        out.push_str("Usage:\n");
        let u = &job.usage;
        let mut usage = |label: &str, value: String| {
            let _ = writeln!(out, "  {label:<13}{value}");
        };
        usage(
            "CPU time:",
            human_duration(Duration::from_micros(u.cpu_usec)),
        );
        usage(
            "Memory peak:",
            u.memory_peak_bytes
                .map_or_else(|| "not reported by this host's kernel".into(), format_bytes),
        );
        usage("I/O read:", format_bytes(u.io_read_bytes));
        usage("I/O write:", format_bytes(u.io_write_bytes));
    }
    let mut drops = Vec::new();
    if job.output_truncated_bytes > 0 {
        drops.push(format!(
            "{} were dropped over the server's output cap",
            job.output_truncated_bytes
        ));
    }
    if job.output_disk_full_bytes > 0 {
        drops.push(format!(
            "{} were dropped because the server's disk was full at the job's end",
            job.output_disk_full_bytes
        ));
    }
    let output = if drops.is_empty() {
        format!("{} bytes, none dropped", job.output_bytes)
    } else {
        let dropped = job.output_truncated_bytes + job.output_disk_full_bytes;
        format!(
            "{} bytes, of which {} (the stored output is the first {} bytes)",
            job.output_bytes,
            drops.join(" and "),
            job.output_bytes.saturating_sub(dropped)
        )
    };
    let _ = writeln!(out, "{:<13}{output}", "Output:");
    out
}

/// The exit column of a list: `7`, `sig 15`, or `-`.
fn exit_column(job: &JobInfo) -> String {
    match job.termination {
        Some(Termination::Exited(code)) => code.to_string(),
        Some(Termination::Signaled(signal)) => format!("sig {signal}"),
        None => "-".into(),
    }
}

/// The state, and why a stopped job was stopped if its time limit did it.
fn state_column(view: &JobView) -> String {
    match view.info.stop_reason {
        Some(StopReason::TimedOut) => format!("{} (timed out)", shout(view)),
        _ if view.host_unreachable => format!("{} (host unreachable)", shout(view)),
        _ => shout(view),
    }
}

/// The jobs as a table, one per line under a header; `no jobs` when empty.
/// A HOST column follows STATE when some job names its host (in a fleet).
pub fn list_table(jobs: &[JobView]) -> String {
    const COMMAND_WIDTH: usize = 60;
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let hosts = jobs.iter().any(|view| view.host.is_some());
    let mut header = vec![
        "ID", "STATE", "EXIT", "OWNER", "CREATED", "LABELS", "COMMAND",
    ];
    if hosts {
        header.insert(2, "HOST");
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|view| {
            let job = &view.info;
            let mut row = vec![
                job.id.to_string(),
                state_column(view),
                exit_column(job),
                job.owner.to_string(),
                system_time(job.created_at).map_or_else(
                    || "-".into(),
                    |t| humantime::format_rfc3339_seconds(t).to_string(),
                ),
                if job.labels.is_empty() {
                    "-".into()
                } else {
                    job.labels.to_string()
                },
                abbreviate(command_line(job), COMMAND_WIDTH),
            ];
            if hosts {
                row.insert(
                    2,
                    view.host.as_deref().map_or_else(|| "-".into(), printable),
                );
            }
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|name| name.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: &[&str]| {
        let last = cells.len() - 1;
        for (i, (cell, &width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ");
            }
        }
        out.push('\n');
    };
    push_row(&header);
    for row in &rows {
        push_row(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// The jobs as one JSON array.
pub fn jobs_json(jobs: &[JobView]) -> Value {
    Value::Array(jobs.iter().map(to_json).collect())
}

/// A time for people: RFC 3339 in UTC, to the millisecond; `-` when unset.
fn human_time(at: Option<UnixMicros>) -> String {
    at.and_then(system_time).map_or_else(
        || "-".into(),
        |t| humantime::format_rfc3339_millis(t).to_string(),
    )
}

/// A duration for people, to the millisecond: `1s 250ms`.
fn human_duration(duration: Duration) -> String {
    let ms = Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    if ms.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(ms).to_string()
}

/// The fleet's hosts, one line each under a header.
pub fn hosts_table(hosts: &[Host]) -> String {
    let mut out = format!(
        "{:<20} {:<24} {:>10} {:<8} {:>5} {:<10} LABELS\n",
        "HOST", "LEASE", "GENERATION", "DRAINING", "SLOTS", "VERSION"
    );
    for host in hosts {
        let labels: Vec<String> = host
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!(
            "{:<20} {:<24} {:>10} {:<8} {:>5} {:<10} {}\n",
            printable(&host.id),
            host.lease_text(),
            host.generation,
            if host.draining { "yes" } else { "no" },
            host.slots,
            printable(&host.version),
            printable(&labels.join(",")),
        ));
    }
    out
}

/// The fleet's hosts as one JSON array.
pub fn hosts_json(hosts: &[Host]) -> Value {
    Value::Array(
        hosts
            .iter()
            .map(|host| {
                json!({
                    "id": host.id,
                    "generation": host.generation,
                    "lease_held": host.lease_held(),
                    "lease_left_secs": host.lease_left,
                    "draining": host.draining,
                    "slots": host.slots,
                    "labels": host.labels,
                    "version": host.version,
                })
            })
            .collect(),
    )
}

/// A host as the gateway sent it, as the fleet's database holds it.
pub fn host_of(host: v1::Host) -> Host {
    #[allow(clippy::cast_precision_loss, reason = "milliseconds of a lease")]
    let lease_left = host.lease_left_ms as f64 / 1000.0;
    Host {
        id: host.id,
        generation: host.generation,
        lease_left,
        draining: host.draining,
        slots: i32::try_from(host.slots).unwrap_or(i32::MAX),
        labels: host.labels.into_iter().collect(),
        version: host.version,
        peer_address: Some(host.peer_address).filter(|address| !address.is_empty()),
    }
}

/// Writes bytes to standard output and flushes them, so that output is seen
/// as it comes.
pub async fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = tokio::io::stdout();
    stdout.write_all(bytes).await.map_err(CliError::Output)?;
    stdout.flush().await.map_err(CliError::Output)
}

/// Words quoted for a POSIX shell where needed, joined by spaces.
pub fn shell_quote<'a>(words: impl IntoIterator<Item = &'a String>) -> String {
    words
        .into_iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                word.clone()
            } else if word.chars().any(unprintable) {
                ansi_c_quote(word)
            } else {
                format!("'{}'", word.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` cut to at most `width` characters, with `…` where it was cut.
pub fn abbreviate(mut text: String, width: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(width) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// A character that must not reach a terminal as it is: control characters
/// (escape sequences, newlines, carriage returns) and the invisible
/// formatting characters that reorder or hide text.
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// `word` in bash's `$'...'` quoting, every unprintable character escaped:
/// what another user's job names reaches a terminal as text, never as
/// control sequences.
fn ansi_c_quote(word: &str) -> String {
    let mut out = String::from("$'");
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if unprintable(c) && u32::from(c) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if unprintable(c) => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Text from the server (a failure reason, which may quote a command) with
/// its unprintable characters escaped, for a terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if unprintable(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jobworker_ipc::{Args, Command, EnforcedLimits, JobId, Limits, Owner, Usage, UserName};
    use jobworker_proto::v1;

    /// A job with the least set: no pid, no termination, no limits.
    pub(crate) fn job() -> JobInfo {
        JobInfo {
            id: JobId::random(),
            owner: Owner::Remote(UserName::new("alice").unwrap()),
            command: Command::new("true").unwrap(),
            args: Args::default(),
            state: JobState::Finished,
            pid: None,
            uid: None,
            gid: None,
            termination: None,
            oom_killed: false,
            created_at: UnixMicros(1_700_000_000_005_000),
            started_at: None,
            ended_at: None,
            limits: Limits::default(),
            enforced: EnforcedLimits::default(),
            usage: Usage::default(),
            output_bytes: 0,
            output_truncated_bytes: 0,
            output_disk_full_bytes: 0,
            failure: None,
            stop_reason: None,
            timeout: None,
            labels: Default::default(),
        }
    }

    fn proto_job() -> v1::Job {
        v1::Job {
            id: "3f2a9c1e-0b4d-4e5f-8a6b-7c8d9e0f1a2b".into(),
            owner: "alice".into(),
            command: "sh".into(),
            args: vec!["-c".into(), "echo 'hi'; exit 7".into()],
            state: v1::JobState::Finished.into(),
            pid: Some(4242),
            uid: Some(61184),
            gid: Some(61184),
            exit_code: Some(7),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            started_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_001,
                nanos: 0,
            }),
            ended_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_002,
                nanos: 500_000_000,
            }),
            limits: Some(v1::Limits {
                cpu_millicores: Some(500),
                memory_bytes: Some(256 << 20),
                pids: Some(64),
                ..Default::default()
            }),
            enforced: Some(v1::EnforcedLimits {
                pids: true,
                ..Default::default()
            }),
            usage: Some(v1::Usage {
                cpu_time: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 12_000_000,
                }),
                ..Default::default()
            }),
            output_bytes: 100,
            output_truncated_bytes: 40,
            output_disk_full_bytes: 0,
            ..Default::default()
        }
    }

    /// The job jobctl reads from [`proto_job`].
    fn read_proto_job() -> JobView {
        crate::jobctl::read_job(proto_job()).unwrap()
    }

    /// [`proto_job`] as a fleet's gateway sends it while it waits in the
    /// queue: no host, pid, uid, start, exit, usage or output yet.
    fn queued_proto_job() -> v1::Job {
        v1::Job {
            state: v1::JobState::Queued.into(),
            pid: None,
            uid: None,
            gid: None,
            exit_code: None,
            started_at: None,
            ended_at: None,
            enforced: None,
            usage: None,
            output_bytes: 0,
            output_truncated_bytes: 0,
            ..proto_job()
        }
    }

    #[test]
    fn json_has_stable_fields() {
        let value = to_json(&read_proto_job());
        assert_eq!(value["state"], "finished");
        assert_eq!(value["exit_code"], 7);
        assert_eq!(value["signal"], Value::Null);
        assert_eq!(value["args"][1], "echo 'hi'; exit 7");
        assert_eq!(value["created_at"], "2023-11-14T22:13:20.005Z");
        assert_eq!(value["limits"]["cpu_millicores"], 500);
        assert_eq!(value["limits"]["io_read_bytes_per_sec"], Value::Null);
        assert_eq!(value["enforced"]["pids"], true);
        assert_eq!(
            (&value["uid"], &value["gid"]),
            (&json!(61184), &json!(61184))
        );
        assert_eq!(value["usage"]["cpu_time_usec"], 12_000);
        assert_eq!(value["output_truncated_bytes"], 40);
        assert_eq!(value["failure"], Value::Null);
        assert_eq!(value["stop_reason"], Value::Null);
        assert_eq!(value["timeout_ms"], Value::Null);
        assert_eq!(value["labels"], json!({}));
        let keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 24, "{keys:?}");
    }

    #[test]
    fn a_timed_out_job_says_so_and_labels_show() {
        let job = JobInfo {
            state: JobState::Stopped,
            termination: Some(Termination::Signaled(15)),
            stop_reason: Some(StopReason::TimedOut),
            timeout: Some(TimeoutMs::new(30_000).unwrap()),
            labels: jobworker_ipc::Labels::parse("labels", ["team=build", "env=ci"]).unwrap(),
            ..job()
        };
        assert_eq!(
            outcome(&JobView::from(job.clone())),
            "STOPPED (timed out after 30s, killed by signal 15, SIGTERM)"
        );
        let job = JobView::from(job);
        let text = status_text(&job);
        assert!(text.contains("Time limit:  30s\n"), "{text}");
        assert!(text.contains("Labels:      env=ci,team=build\n"), "{text}");
        let table = list_table(std::slice::from_ref(&job));
        assert!(table.contains("STOPPED (timed out)"), "{table}");
        assert!(table.contains("env=ci,team=build"), "{table}");
        let value = to_json(&job);
        assert_eq!(value["stop_reason"], "timed_out");
        assert_eq!(value["timeout_ms"], 30_000);
        assert_eq!(value["labels"]["team"], "build");
        // A job stopped by a request names no time-out.
        let requested = JobView::from(JobInfo {
            stop_reason: Some(StopReason::Requested),
            ..job.info
        });
        assert_eq!(
            outcome(&requested),
            "STOPPED (killed by signal 15, SIGTERM)"
        );
    }

    #[test]
    fn status_says_what_is_not_enforced() {
        let text = status_text(&read_proto_job());
        for expected in [
            "State:       FINISHED (exit code 7)",
            "Command:     sh -c 'echo '\\''hi'\\''; exit 7'",
            "  CPU:         500m (0.5 CPU), not enforced on this host",
            "  Memory:      256 MiB, not enforced on this host",
            "  I/O read:    no limit",
            "  Tasks:       64, enforced",
            "  CPU time:    12ms",
            "  Memory peak: not reported by this host's kernel",
            "(ran for 1s 500ms)",
            "100 bytes, of which 40 were dropped",
            "the first 60 bytes",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
    }

    #[test]
    fn outcomes() {
        let mut job = read_proto_job().info;
        let outcome = |job: &JobInfo| outcome(&JobView::from(job.clone()));
        assert_eq!(outcome(&job), "FINISHED (exit code 7)");
        job.termination = Some(Termination::Signaled(15));
        job.state = JobState::Stopped;
        assert_eq!(outcome(&job), "STOPPED (killed by signal 15, SIGTERM)");
        job.termination = Some(Termination::Signaled(9));
        job.oom_killed = true;
        job.state = JobState::Finished;
        assert_eq!(
            outcome(&job),
            "FINISHED (killed by signal 9, SIGKILL, OOM killed)"
        );
        let running = JobInfo {
            state: JobState::Running,
            pid: Some(3),
            ..self::job()
        };
        assert_eq!(outcome(&running), "RUNNING (pid 3)");
        let failed = JobInfo {
            state: JobState::Failed,
            failure: Some("its state was lost".into()),
            ..self::job()
        };
        assert_eq!(outcome(&failed), "FAILED: its state was lost");
    }

    #[test]
    fn ipc_jobs_look_the_same() {
        let info = JobInfo {
            id: JobId::random(),
            owner: Owner::Local(UserName::new("root").unwrap()),
            command: Command::new("sleep").unwrap(),
            args: Args::new(vec!["5".into()]).unwrap(),
            state: JobState::Stopped,
            pid: None,
            uid: Some(61200),
            gid: Some(61200),
            termination: Some(Termination::Signaled(15)),
            oom_killed: false,
            created_at: UnixMicros(1_700_000_000_005_000),
            started_at: Some(UnixMicros(1_700_000_001_000_000)),
            ended_at: None,
            limits: Limits::new(None, None, Some(10 << 20), None, None).unwrap(),
            enforced: EnforcedLimits::default(),
            usage: Usage {
                cpu_usec: 1500,
                ..Usage::default()
            },
            output_bytes: 0,
            output_truncated_bytes: 0,
            output_disk_full_bytes: 0,
            failure: None,
            stop_reason: None,
            timeout: None,
            labels: Default::default(),
        };
        let info = JobView::from(info);
        let json = to_json(&info);
        assert_eq!(json["owner"], "local:root");
        assert_eq!(outcome(&info), "STOPPED (killed by signal 15, SIGTERM)");
        assert_eq!(json["created_at"], "2023-11-14T22:13:20.005Z");
        assert_eq!(json["limits"]["io_read_bytes_per_sec"], 10 << 20);
        assert_eq!(json["usage"]["cpu_time_usec"], 1500);
        assert!(status_text(&info).contains("I/O read:    10 MiB/s, not enforced on this host"));
    }

    #[test]
    fn tables() {
        assert_eq!(list_table(&[]), "no jobs\n");
        let job = read_proto_job();
        let table = list_table(&[
            job.clone(),
            JobView::from(JobInfo {
                state: JobState::Running,
                ..job.info
            }),
        ]);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID ") && lines[0].ends_with("COMMAND"));
        assert!(lines[1].contains("FINISHED") && lines[1].contains(" 7 "));
        assert!(lines[2].contains("RUNNING"));
        assert!(lines[1].contains("2023-11-14T22:13:20Z"));
        assert!(!table.contains("HOST"), "no host, no column:\n{table}");
    }

    #[test]
    fn a_queued_job_shows_as_queued() {
        let job = crate::jobctl::read_job(queued_proto_job()).unwrap();
        assert!(job.queued && !job.is_ended() && job.host.is_none());
        assert_eq!(outcome(&job), "QUEUED");
        let text = status_text(&job);
        for expected in [
            "State:       QUEUED\n",
            "Started:     -\n",
            "  CPU:         500m (0.5 CPU)\n",
            "  Memory:      256 MiB\n",
            "  I/O read:    no limit\n",
            "Output:      0 bytes, none dropped\n",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
        for unexpected in ["RUNNING", "Host:", "PID:", "enforced", "Usage:"] {
            assert!(!text.contains(unexpected), "{unexpected:?} in:\n{text}");
        }
        let table = list_table(std::slice::from_ref(&job));
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[0].starts_with("ID  ") && !lines[0].contains("HOST"));
        let row: Vec<_> = lines[1].split_whitespace().collect();
        assert_eq!(row[..3], [job.info.id.to_string().as_str(), "QUEUED", "-"]);
        assert!(!table.contains("RUNNING"), "{table}");
        let value = to_json(&job);
        assert_eq!(value["state"], "queued");
        assert_eq!(value["pid"], Value::Null);
        assert_eq!(value["started_at"], Value::Null);
        assert!(value.get("host").is_none(), "{value}");
        assert_eq!(jobs_json(std::slice::from_ref(&job))[0]["state"], "queued");
    }

    #[test]
    fn a_fleets_host_shows_when_set() {
        let placed = crate::jobctl::read_job(v1::Job {
            host: "node-1".into(),
            ..proto_job()
        })
        .unwrap();
        assert_eq!(placed.host.as_deref(), Some("node-1"));
        let text = status_text(&placed);
        assert!(
            text.contains("State:       FINISHED (exit code 7)\nHost:        node-1\n"),
            "{text}"
        );
        let value = to_json(&placed);
        assert_eq!(value["host"], "node-1");
        assert_eq!(value.as_object().unwrap().len(), 26);
        // One job with a host brings the column; the others show `-`.
        let queued = crate::jobctl::read_job(queued_proto_job()).unwrap();
        let table = list_table(&[placed.clone(), queued.clone()]);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let header: Vec<_> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "ID", "STATE", "HOST", "EXIT", "OWNER", "CREATED", "LABELS", "COMMAND"
            ]
        );
        let row = |line: &str| {
            line.split_whitespace()
                .take(4)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let id = placed.info.id.to_string();
        assert_eq!(row(lines[1]), format!("{id} FINISHED node-1 7"));
        assert_eq!(row(lines[2]), format!("{id} QUEUED - -"));
        // The columns line up under the header.
        let at = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(at(lines[0], "HOST"), at(lines[1], "node-1"));
        assert_eq!(at(lines[0], "EXIT"), at(lines[1], " 7 ") + 1);
        // A job whose host's lease ran out says so.
        let cut_off = JobView {
            host_unreachable: true,
            ..placed.clone()
        };
        assert!(list_table(std::slice::from_ref(&cut_off)).contains("FINISHED (host unreachable)"));
        assert!(status_text(&cut_off).contains("node-1, unreachable: its lease ran out"));
        assert_eq!(to_json(&cut_off)["host_unreachable"], true);
        // A host's name reaches a terminal as text.
        let hostile = JobView {
            host: Some("evil\u{1b}[2J".into()),
            ..queued
        };
        assert!(!list_table(std::slice::from_ref(&hostile)).contains('\u{1b}'));
        assert!(!status_text(&hostile).contains('\u{1b}'));
    }

    #[test]
    fn the_debug_tools_jobs_name_no_host_and_no_queue() {
        let job = JobView::from(job());
        assert!(!job.queued && job.host.is_none());
        assert_eq!(job.state_name(), "finished");
        assert!(to_json(&job).get("host").is_none());
    }

    #[test]
    fn quoting() {
        let words = ["echo", "a b", "", "it's", "x=1"].map(String::from);
        assert_eq!(shell_quote(&words), "echo 'a b' '' 'it'\\''s' x=1");
        let hostile: Vec<String> = [
            "printf",
            "\u{1b}[2J\u{1b}]0;owned\u{7}",
            "a\nb\r",
            "x\u{202e}y'z\\",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            shell_quote(&hostile),
            "printf $'\\x1b[2J\\x1b]0;owned\\x07' $'a\\nb\\r' $'x\\u202ey\\'z\\\\'"
        );
        let listed = list_table(&[JobView::from(JobInfo {
            command: Command::new("sh").unwrap(),
            args: Args::new(hostile.clone()).unwrap(),
            ..job()
        })]);
        assert!(
            !listed.contains('\u{1b}') && listed.lines().count() == 2,
            "{listed:?}"
        );
    }

    #[test]
    fn long_text_is_cut_where_it_says_so() {
        assert_eq!(abbreviate("abcdef".into(), 6), "abcdef");
        assert_eq!(abbreviate("abcdefg".into(), 6), "abcdef…");
        assert_eq!(abbreviate("ééééééé".into(), 2), "éé…");
    }

    #[test]
    fn failures_reach_a_terminal_as_text() {
        let failed = JobView::from(JobInfo {
            state: JobState::Failed,
            failure: Some("cannot execute \u{1b}[31mx\ny: No such file".into()),
            ..job()
        });
        assert_eq!(
            outcome(&failed),
            "FAILED: cannot execute \\u{1b}[31mx\\u{a}y: No such file"
        );
    }
}
