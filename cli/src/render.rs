//! Jobs shown to people and to scripts.
//!
//! Both tools read jobs in their own form (`jobctl` the gRPC `Job`, the
//! debug tool the ipc `JobInfo`); each converts to a [`JobView`], so a job
//! looks the same whichever tool shows it.
//!
//! The JSON form is built field by field, with stable names (the proto's
//! field names; states in lower case; times in RFC 3339 UTC; absent values
//! `null`), so scripts do not depend on how the messages are generated:
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
//!  "output_bytes": 8, "output_truncated_bytes": 0, "failure": null}
//! ```

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobworker_ipc::{JobInfo, JobState, Termination};
use jobworker_proto::v1;
use serde_json::{Value, json};

use tokio::io::AsyncWriteExt;

use crate::exit::CliError;
use crate::units::{format_bytes, format_cpu};

/// The `--state` argument of both tools: one of [`JobState::ALL`]'s names.
pub fn state_arg() -> impl clap::builder::TypedValueParser<Value = JobState> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(JobState::ALL.map(JobState::as_str))
        .try_map(|name| name.parse::<JobState>())
}

/// A state's name for people: `RUNNING`, ...; `UNKNOWN` for a state this
/// tool does not know.
fn shout(state: Option<JobState>) -> String {
    state.map_or_else(|| "UNKNOWN".into(), |s| s.as_str().to_uppercase())
}

/// A job's limits; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitsView {
    /// CPU in millicores.
    pub cpu_millicores: Option<u32>,
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
    /// Read bandwidth in bytes per second.
    pub io_read_bytes_per_sec: Option<u64>,
    /// Write bandwidth in bytes per second.
    pub io_write_bytes_per_sec: Option<u64>,
    /// Tasks.
    pub pids: Option<u32>,
}

/// Which limits the kernel enforces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnforcedView {
    /// `cpu.max`.
    pub cpu: bool,
    /// `memory.max`.
    pub memory: bool,
    /// `io.max`.
    pub io: bool,
    /// `pids.max`.
    pub pids: bool,
}

/// What a job used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageView {
    /// CPU time, user + system, when known.
    pub cpu_time: Option<Duration>,
    /// Peak memory, when the kernel reports it.
    pub memory_peak_bytes: Option<u64>,
    /// Bytes read from block devices.
    pub io_read_bytes: u64,
    /// Bytes written to block devices.
    pub io_write_bytes: u64,
}

/// A job, as both tools show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobView {
    /// Its id.
    pub id: String,
    /// Who started it.
    pub owner: String,
    /// The command.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its state; `None` if the server sent none this tool knows.
    pub state: Option<JobState>,
    /// Its init's pid on the host.
    pub pid: Option<u32>,
    /// The uid its processes run as.
    pub uid: Option<u32>,
    /// The gid its processes run as.
    pub gid: Option<u32>,
    /// The command's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed the command, when one did.
    pub signal: Option<i32>,
    /// The OOM killer killed a process of the job.
    pub oom_killed: bool,
    /// When it was asked for.
    pub created_at: Option<SystemTime>,
    /// When its command was exec'd.
    pub started_at: Option<SystemTime>,
    /// When it ended.
    pub ended_at: Option<SystemTime>,
    /// Its limits.
    pub limits: LimitsView,
    /// Which of them are enforced.
    pub enforced: EnforcedView,
    /// What it used.
    pub usage: UsageView,
    /// Bytes of output it wrote.
    pub output_bytes: u64,
    /// Bytes of output dropped over the server's cap.
    pub output_truncated_bytes: u64,
    /// Why it failed, when it did.
    pub failure: Option<String>,
}

fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    let seconds = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    if seconds == 0 && nanos == 0 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

fn millis(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

impl From<&v1::Job> for JobView {
    fn from(job: &v1::Job) -> Self {
        let limits = job.limits.unwrap_or_default();
        let enforced = job.enforced.unwrap_or_default();
        let usage = job.usage.unwrap_or_default();
        Self {
            id: job.id.clone(),
            owner: job.owner.clone(),
            command: job.command.clone(),
            args: job.args.clone(),
            state: v1::JobState::try_from(job.state)
                .ok()
                .and_then(|state| JobState::try_from(state).ok()),
            pid: job.pid,
            uid: job.uid,
            gid: job.gid,
            exit_code: job.exit_code,
            signal: job.signal,
            oom_killed: job.oom_killed,
            created_at: timestamp(job.created_at.as_ref()),
            started_at: timestamp(job.started_at.as_ref()),
            ended_at: timestamp(job.ended_at.as_ref()),
            limits: LimitsView {
                cpu_millicores: limits.cpu_millicores,
                memory_bytes: limits.memory_bytes,
                io_read_bytes_per_sec: limits.io_read_bytes_per_sec,
                io_write_bytes_per_sec: limits.io_write_bytes_per_sec,
                pids: limits.pids,
            },
            enforced: EnforcedView {
                cpu: enforced.cpu,
                memory: enforced.memory,
                io: enforced.io,
                pids: enforced.pids,
            },
            usage: UsageView {
                cpu_time: usage.cpu_time.and_then(|d| {
                    Some(Duration::new(
                        u64::try_from(d.seconds).ok()?,
                        u32::try_from(d.nanos).ok()?,
                    ))
                }),
                memory_peak_bytes: usage.memory_peak_bytes,
                io_read_bytes: usage.io_read_bytes,
                io_write_bytes: usage.io_write_bytes,
            },
            output_bytes: job.output_bytes,
            output_truncated_bytes: job.output_truncated_bytes,
            failure: Some(job.failure.clone()).filter(|f| !f.is_empty()),
        }
    }
}

impl From<&JobInfo> for JobView {
    fn from(job: &JobInfo) -> Self {
        let (exit_code, signal) = match job.termination {
            Some(Termination::Exited(code)) => (Some(code), None),
            Some(Termination::Signaled(signal)) => (None, Some(signal)),
            None => (None, None),
        };
        Self {
            id: job.id.to_string(),
            owner: job.owner.to_string(),
            command: job.command.to_string(),
            args: job.args.as_slice().to_vec(),
            state: Some(job.state),
            pid: job.pid,
            uid: job.uid,
            gid: job.gid,
            exit_code,
            signal,
            oom_killed: job.oom_killed,
            created_at: millis(job.created_at.0),
            started_at: job.started_at.and_then(|t| millis(t.0)),
            ended_at: job.ended_at.and_then(|t| millis(t.0)),
            limits: LimitsView {
                cpu_millicores: job.limits.cpu_millicores(),
                memory_bytes: job.limits.memory_bytes(),
                io_read_bytes_per_sec: job.limits.io_read_bps(),
                io_write_bytes_per_sec: job.limits.io_write_bps(),
                pids: job.limits.pids(),
            },
            enforced: EnforcedView {
                cpu: job.enforced.cpu,
                memory: job.enforced.memory,
                io: job.enforced.io,
                pids: job.enforced.pids,
            },
            usage: UsageView {
                cpu_time: Some(Duration::from_micros(job.usage.cpu_usec)),
                memory_peak_bytes: job.usage.memory_peak_bytes,
                io_read_bytes: job.usage.io_read_bytes,
                io_write_bytes: job.usage.io_write_bytes,
            },
            output_bytes: job.output_bytes,
            output_truncated_bytes: job.output_truncated_bytes,
            failure: job.failure.clone(),
        }
    }
}

fn rfc3339(time: Option<SystemTime>) -> Value {
    time.map_or(Value::Null, |t| {
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

impl JobView {
    /// The job as one JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "owner": self.owner,
            "command": self.command,
            "args": self.args,
            "state": self.state.map_or("unspecified", JobState::as_str),
            "pid": self.pid,
            "uid": self.uid,
            "gid": self.gid,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "oom_killed": self.oom_killed,
            "created_at": rfc3339(self.created_at),
            "started_at": rfc3339(self.started_at),
            "ended_at": rfc3339(self.ended_at),
            "limits": {
                "cpu_millicores": self.limits.cpu_millicores,
                "memory_bytes": self.limits.memory_bytes,
                "io_read_bytes_per_sec": self.limits.io_read_bytes_per_sec,
                "io_write_bytes_per_sec": self.limits.io_write_bytes_per_sec,
                "pids": self.limits.pids,
            },
            "enforced": {
                "cpu": self.enforced.cpu,
                "memory": self.enforced.memory,
                "io": self.enforced.io,
                "pids": self.enforced.pids,
            },
            "usage": {
                "cpu_time_usec": self.usage.cpu_time
                    .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                "memory_peak_bytes": self.usage.memory_peak_bytes,
                "io_read_bytes": self.usage.io_read_bytes,
                "io_write_bytes": self.usage.io_write_bytes,
            },
            "output_bytes": self.output_bytes,
            "output_truncated_bytes": self.output_truncated_bytes,
            "failure": self.failure,
        })
    }

    /// The state and how the job ended, on one line: `FINISHED (exit code
    /// 7)`, `STOPPED (killed by signal 15, SIGTERM)`, `RUNNING (pid 42)`.
    pub fn outcome(&self) -> String {
        let mut text = shout(self.state);
        let mut details = Vec::new();
        if let Some(code) = self.exit_code {
            details.push(format!("exit code {code}"));
        }
        if let Some(signal) = self.signal {
            details.push(format!("killed by {}", describe_signal(signal)));
        }
        if self.state == Some(JobState::Running)
            && let Some(pid) = self.pid
        {
            details.push(format!("pid {pid}"));
        }
        if self.oom_killed {
            details.push("OOM killed".into());
        }
        if !details.is_empty() {
            let _ = write!(text, " ({})", details.join(", "));
        }
        if let Some(failure) = &self.failure {
            let _ = write!(text, ": {}", printable(failure));
        }
        text
    }

    /// The command line, quoted for a POSIX shell.
    pub fn command_line(&self) -> String {
        shell_quote(std::iter::once(&self.command).chain(&self.args))
    }

    /// A human-readable summary of everything known about the job.
    pub fn status_text(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: &str| {
            let _ = writeln!(out, "{label:<13}{value}");
        };
        line("Job:", &self.id);
        line("Owner:", &self.owner);
        line("Command:", &self.command_line());
        line("State:", &self.outcome());
        if let Some(pid) = self.pid {
            line("PID:", &pid.to_string());
        }
        if let (Some(uid), Some(gid)) = (self.uid, self.gid) {
            line("Runs as:", &format!("uid {uid}, gid {gid}"));
        }
        line(
            "OOM killed:",
            if self.oom_killed {
                "yes: the kernel's OOM killer killed a process of this job"
            } else {
                "no"
            },
        );
        line("Created:", &human_time(self.created_at));
        line("Started:", &human_time(self.started_at));
        let ended = match (self.started_at, self.ended_at) {
            (Some(start), Some(end)) => format!(
                "{} (ran for {})",
                human_time(Some(end)),
                human_duration(end.duration_since(start).unwrap_or_default())
            ),
            (_, end) => human_time(end),
        };
        line("Ended:", &ended);
        out.push_str("Limits:\n");
        let limit = |out: &mut String, label: &str, value: Option<String>, enforced: bool| {
            let text = match value {
                None => "no limit".to_owned(),
                Some(v) if enforced => format!("{v}, enforced"),
                Some(v) => format!("{v}, not enforced on this host"),
            };
            let _ = writeln!(out, "  {label:<13}{text}");
        };
        let l = &self.limits;
        let e = &self.enforced;
        let rate = |bps: u64| format!("{}/s", format_bytes(bps));
        limit(&mut out, "CPU:", l.cpu_millicores.map(format_cpu), e.cpu);
        limit(
            &mut out,
            "Memory:",
            l.memory_bytes.map(format_bytes),
            e.memory,
        );
        limit(
            &mut out,
            "I/O read:",
            l.io_read_bytes_per_sec.map(rate),
            e.io,
        );
        limit(
            &mut out,
            "I/O write:",
            l.io_write_bytes_per_sec.map(rate),
            e.io,
        );
        limit(&mut out, "Tasks:", l.pids.map(|p| p.to_string()), e.pids);
        out.push_str("Usage:\n");
        let u = &self.usage;
        let mut usage = |label: &str, value: String| {
            let _ = writeln!(out, "  {label:<13}{value}");
        };
        usage(
            "CPU time:",
            u.cpu_time
                .map_or_else(|| "not reported".into(), human_duration),
        );
        usage(
            "Memory peak:",
            u.memory_peak_bytes
                .map_or_else(|| "not reported by this host's kernel".into(), format_bytes),
        );
        usage("I/O read:", format_bytes(u.io_read_bytes));
        usage("I/O write:", format_bytes(u.io_write_bytes));
        let output = if self.output_truncated_bytes > 0 {
            format!(
                "{} bytes, of which {} were dropped over the server's output cap (the stored output is the first {} bytes)",
                self.output_bytes,
                self.output_truncated_bytes,
                self.output_bytes
                    .saturating_sub(self.output_truncated_bytes)
            )
        } else {
            format!("{} bytes, none dropped", self.output_bytes)
        };
        let _ = writeln!(out, "{:<13}{output}", "Output:");
        out
    }
}

/// The exit column of a list: `7`, `sig 15`, or `-`.
fn exit_column(job: &JobView) -> String {
    match (job.exit_code, job.signal) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => format!("sig {signal}"),
        (None, None) => "-".into(),
    }
}

/// The jobs as a table, one per line under a header; `no jobs` when empty.
pub fn list_table(jobs: &[JobView]) -> String {
    const COMMAND_WIDTH: usize = 60;
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let header = ["ID", "STATE", "EXIT", "OWNER", "CREATED", "COMMAND"];
    let rows: Vec<[String; 6]> = jobs
        .iter()
        .map(|job| {
            let command = abbreviate(job.command_line(), COMMAND_WIDTH);
            [
                job.id.clone(),
                shout(job.state),
                exit_column(job),
                job.owner.clone(),
                job.created_at.map_or_else(
                    || "-".into(),
                    |t| humantime::format_rfc3339_seconds(t).to_string(),
                ),
                command,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: &[&str]| {
        let last = cells.len() - 1;
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
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
        push_row(&row.each_ref().map(String::as_str));
    }
    out
}

/// The jobs as one JSON array.
pub fn jobs_json(jobs: &[JobView]) -> Value {
    Value::Array(jobs.iter().map(JobView::to_json).collect())
}

/// A time for people: RFC 3339 in UTC, to the millisecond; `-` when unset.
fn human_time(time: Option<SystemTime>) -> String {
    time.map_or_else(
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
mod tests {
    use super::*;
    use jobworker_ipc::{
        Args, Command, EnforcedLimits, JobId, Limits, Owner, UnixMillis, Usage, UserName,
    };

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
            ..Default::default()
        }
    }

    #[test]
    fn json_has_stable_fields() {
        let value = JobView::from(&proto_job()).to_json();
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
        let keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 20, "{keys:?}");
    }

    #[test]
    fn status_says_what_is_not_enforced() {
        let text = JobView::from(&proto_job()).status_text();
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
        let mut job = JobView::from(&proto_job());
        assert_eq!(job.outcome(), "FINISHED (exit code 7)");
        job.exit_code = None;
        job.signal = Some(15);
        job.state = Some(JobState::Stopped);
        assert_eq!(job.outcome(), "STOPPED (killed by signal 15, SIGTERM)");
        job.signal = Some(9);
        job.oom_killed = true;
        job.state = Some(JobState::Finished);
        assert_eq!(
            job.outcome(),
            "FINISHED (killed by signal 9, SIGKILL, OOM killed)"
        );
        let running = JobView {
            state: Some(JobState::Running),
            pid: Some(3),
            ..JobView::default()
        };
        assert_eq!(running.outcome(), "RUNNING (pid 3)");
        let failed = JobView {
            state: Some(JobState::Failed),
            failure: Some("its state was lost".into()),
            ..JobView::default()
        };
        assert_eq!(failed.outcome(), "FAILED: its state was lost");
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
            created_at: UnixMillis(1_700_000_000_005),
            started_at: Some(UnixMillis(1_700_000_001_000)),
            ended_at: None,
            limits: Limits::new(None, None, Some(10 << 20), None, None).unwrap(),
            enforced: EnforcedLimits::default(),
            usage: Usage {
                cpu_usec: 1500,
                ..Usage::default()
            },
            output_bytes: 0,
            output_truncated_bytes: 0,
            failure: None,
        };
        let view = JobView::from(&info);
        assert_eq!(view.owner, "local:root");
        assert_eq!(view.outcome(), "STOPPED (killed by signal 15, SIGTERM)");
        let json = view.to_json();
        assert_eq!(json["created_at"], "2023-11-14T22:13:20.005Z");
        assert_eq!(json["limits"]["io_read_bytes_per_sec"], 10 << 20);
        assert_eq!(json["usage"]["cpu_time_usec"], 1500);
        assert!(
            view.status_text()
                .contains("I/O read:    10 MiB/s, not enforced on this host")
        );
    }

    #[test]
    fn tables() {
        assert_eq!(list_table(&[]), "no jobs\n");
        let job = JobView::from(&proto_job());
        let table = list_table(&[
            job.clone(),
            JobView {
                state: Some(JobState::Running),
                ..job
            },
        ]);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID ") && lines[0].ends_with("COMMAND"));
        assert!(lines[1].contains("FINISHED") && lines[1].contains(" 7 "));
        assert!(lines[2].contains("RUNNING"));
        assert!(lines[1].contains("2023-11-14T22:13:20Z"));
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
        let listed = list_table(&[JobView {
            command: "sh".into(),
            args: hostile.clone(),
            ..JobView::default()
        }]);
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
        let failed = JobView {
            state: Some(JobState::Failed),
            failure: Some("cannot execute \u{1b}[31mx\ny: No such file".into()),
            ..JobView::default()
        };
        assert_eq!(
            failed.outcome(),
            "FAILED: cannot execute \\u{1b}[31mx\\u{a}y: No such file"
        );
    }
}
