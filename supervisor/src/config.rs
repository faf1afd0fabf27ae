//! The supervisor's configuration: a TOML file (default
//! `/etc/jobworker/supervisor.toml`) in which every key is optional and has a
//! safe default. Unknown keys and invalid values are errors that name the key.
//! [`FileConfig`] is the file as written; [`Config`] is what it resolves to
//! (user and group names looked up, limits validated, durations typed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeSet;

pub use jobworker_config::ConfigError;
use jobworker_config::positive_millis;
use jobworker_ipc::{Limits, TimeoutMs};
use nix::unistd::{Gid, Group};
use serde::{Deserialize, Serialize};

use crate::engine::uids::JobIds;
use crate::handoff::{BindPath, PRIVATE_TMP, REPLACED, WORK_MOUNT, sandbox_can_make};
use crate::service::listen::MAX_PATH_BYTES as MAX_SOCKET_PATH_BYTES;

/// Where the configuration is read from by default.
pub const DEFAULT_PATH: &str = "/etc/jobworker/supervisor.toml";

/// Limits as written in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// CPU in millicores (1000 = one CPU).
    pub cpu_millicores: Option<u32>,
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
    /// Block device read bandwidth in bytes per second.
    pub io_read_bytes_per_sec: Option<u64>,
    /// Block device write bandwidth in bytes per second.
    pub io_write_bytes_per_sec: Option<u64>,
    /// Tasks (processes and threads).
    pub pids: Option<u32>,
}

/// How long ended jobs are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Ended jobs older than this many seconds are removed (0: never).
    pub max_age_secs: u64,
    /// While ended jobs take more than this many bytes on disk, the oldest
    /// are removed (0: no limit).
    pub max_total_bytes: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age_secs: 7 * 24 * 3600,
            max_total_bytes: 10 << 30,
        }
    }
}

/// The configuration file as written, with defaults for missing keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// The Unix socket the supervisor binds when it is not socket-activated.
    pub socket_path: PathBuf,
    /// The group that owns the socket (mode 0660); root's group when unset.
    pub socket_group: Option<String>,
    /// The account (name or uid) of the gateway: it may act for the remote
    /// identities it asserts. No gateway when unset.
    pub gateway_user: Option<String>,
    /// Members of this group act as the local admin `local:<name>`, like root.
    pub operator_group: Option<String>,
    /// Where job directories and records live.
    pub state_dir: PathBuf,
    /// The cgroup under which job cgroups are made: absolute on the cgroup2
    /// mount, or relative to it (`system.slice/jobworker-jobs.service`); the
    /// supervisor's own cgroup when unset.
    pub cgroup_root: Option<PathBuf>,
    /// The range each job's own uid (and the same gid) comes from, when
    /// `job_user` is unset.
    pub job_uids: UidRangeConfig,
    /// Run every job as this one account (name or uid) instead of a uid of
    /// its own: weaker, since jobs then share the per-user kernel limits
    /// (processes, inotify instances) and whatever is bound in writable.
    pub job_user: Option<String>,
    /// The group jobs run as with `job_user` (name or gid); the job user's
    /// group when unset.
    pub job_group: Option<String>,
    /// Allow `job_user` to be root. Jobs as root keep no capabilities but
    /// still own every root-owned file: say so explicitly.
    pub allow_root_jobs: bool,
    /// Refuse to start a job whose limits the host cannot enforce (instead
    /// of starting it and reporting them as not enforced).
    pub strict_limits: bool,
    /// The block device (`MAJ:MIN`) io limits apply to; the one holding
    /// `state_dir` when unset.
    pub io_device: Option<String>,
    /// The working directory of a job that asks for none.
    pub working_dir: String,
    /// The size of each of a job's private tmpfs mounts (`/tmp`, `/var/tmp`,
    /// `/dev/shm`, `/run/lock`); a quarter of the job's memory limit, or 64
    /// MiB without one, when unset.
    pub tmp_size_bytes: Option<u64>,
    /// Host paths hidden from jobs (an empty read-only directory, or an
    /// empty file).
    pub masked_paths: Vec<PathBuf>,
    /// Let jobs use io_uring (refused by the seccomp filter by default).
    pub allow_io_uring: bool,
    /// The most processes and threads a job without a pids limit may have
    /// at once (`RLIMIT_NPROC` of its uid).
    pub max_processes: u64,
    /// Output bytes kept per job; more is drained, counted and dropped.
    pub output_cap_bytes: u64,
    /// Starts are refused (RESOURCE_EXHAUSTED) while the state directory's
    /// file system has less free than this, in bytes, or than a twentieth
    /// of its size when that is less (a small file system). 0: only when it
    /// is full.
    pub min_free_bytes: u64,
    /// Grace period between SIGTERM and SIGKILL when stopping a job, in
    /// milliseconds; also the longest a stop request may ask for.
    pub grace_period_ms: u64,
    /// The time limit of a job that asks for none, in milliseconds; none
    /// when unset (such a job may run for ever).
    pub default_timeout_ms: Option<u64>,
    /// The longest time limit a job may ask for, in milliseconds: a longer
    /// one is refused, and a job asking for none gets `default_timeout_ms`,
    /// or this when that is unset. Unlimited when unset.
    pub max_timeout_ms: Option<u64>,
    /// How long a client has to complete the ipc handshake, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// How long a connection may sit idle between requests, in milliseconds.
    pub idle_timeout_ms: u64,
    /// The most connections served at once; more are refused and logged.
    pub max_connections: usize,
    /// The most jobs one remote user (whatever their role) may have running
    /// at once; a start beyond it is refused (RESOURCE_EXHAUSTED, with the
    /// figure). Local operators are not capped. 0 means no cap.
    pub max_running_jobs_per_user: usize,
    /// Limits of jobs that ask for none.
    pub default_limits: LimitsConfig,
    /// The most a job may ask for; a job that asks for no value of a limit
    /// that has a maximum gets the maximum.
    pub max_limits: LimitsConfig,
    /// How long ended jobs are kept.
    pub retention: RetentionConfig,
    /// Host paths shown to every job besides the read-only host tree.
    pub bind_paths: Vec<BindPath>,
}

/// The range job uids come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UidRangeConfig {
    /// The first uid.
    pub first: u32,
    /// The last uid (included).
    pub last: u32,
}

impl Default for UidRangeConfig {
    /// systemd's range for dynamic users, which no distribution gives to
    /// accounts.
    fn default() -> Self {
        Self {
            first: 61184,
            last: 65519,
        }
    }
}

/// What hides the host from jobs unless the configuration says otherwise.
pub fn default_masked_paths() -> Vec<PathBuf> {
    ["/run", "/var/run", "/home", "/root", "/boot"]
        .into_iter()
        .map(PathBuf::from)
        .collect()
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            socket_path: PathBuf::from("/run/jobworker/supervisor.sock"),
            socket_group: None,
            gateway_user: None,
            operator_group: None,
            state_dir: PathBuf::from("/var/lib/jobworker"),
            cgroup_root: None,
            job_uids: UidRangeConfig::default(),
            job_user: None,
            job_group: None,
            allow_root_jobs: false,
            strict_limits: false,
            io_device: None,
            working_dir: WORK_MOUNT.into(),
            tmp_size_bytes: None,
            masked_paths: default_masked_paths(),
            allow_io_uring: false,
            max_processes: 4096,
            output_cap_bytes: 64 << 20,
            min_free_bytes: 64 << 20,
            grace_period_ms: 5000,
            default_timeout_ms: None,
            max_timeout_ms: None,
            handshake_timeout_ms: 5000,
            idle_timeout_ms: 300_000,
            max_connections: 1024,
            max_running_jobs_per_user: 256,
            default_limits: LimitsConfig::default(),
            max_limits: LimitsConfig::default(),
            retention: RetentionConfig::default(),
            bind_paths: Vec::new(),
        }
    }
}

/// The configuration resolved and validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file's values.
    pub file: FileConfig,
    /// `socket_group`, resolved.
    pub socket_gid: Option<u32>,
    /// `gateway_user`, resolved.
    pub gateway_uid: Option<u32>,
    /// `operator_group`, resolved.
    pub operator_gid: Option<u32>,
    /// `job_user` and `job_group` resolved, or `job_uids` checked against
    /// the host's accounts and groups.
    pub job_ids: JobIds,
    /// `io_device`, parsed.
    pub io_device: Option<(u32, u32)>,
    /// `default_limits`, validated.
    pub default_limits: Limits,
    /// `max_limits`, validated.
    pub max_limits: Limits,
    /// `grace_period_ms`.
    pub grace: Duration,
    /// `default_timeout_ms` and `max_timeout_ms`, validated.
    pub timeouts: Timeouts,
    /// `handshake_timeout_ms`.
    pub handshake_timeout: Duration,
    /// `idle_timeout_ms`.
    pub idle_timeout: Duration,
}

impl Config {
    /// Reads and resolves the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::resolve(path, jobworker_config::read(path)?)
    }

    /// Parses and resolves `text`, read from `path` (for messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::resolve(path, jobworker_config::parse(path, text)?)
    }

    /// Validates `file` and resolves what it names: each check in turn, the
    /// first that fails naming its key.
    fn resolve(path: &Path, file: FileConfig) -> Result<Self, ConfigError> {
        let invalid = jobworker_config::invalid(path);
        server_keys(&file).map_err(invalid)?;
        let accounts = accounts(&file).map_err(invalid)?;
        let job_ids = job_ids(
            &file,
            accounts.gateway_uid,
            [accounts.operator_gid, accounts.socket_gid],
        )
        .map_err(invalid)?;
        sandbox_paths(&file).map_err(invalid)?;
        let io_device = file
            .io_device
            .as_deref()
            .map(parse_device)
            .transpose()
            .map_err(|r| invalid(("io_device", r)))?;
        let (default_limits, max_limits) =
            job_limits(&file).map_err(|(key, reason)| invalid((&key, reason)))?;
        let grace = positive_millis("grace_period_ms", file.grace_period_ms).map_err(invalid)?;
        let timeouts = timeouts(&file).map_err(invalid)?;
        let handshake_timeout =
            positive_millis("handshake_timeout_ms", file.handshake_timeout_ms).map_err(invalid)?;
        let idle_timeout =
            positive_millis("idle_timeout_ms", file.idle_timeout_ms).map_err(invalid)?;
        Ok(Self {
            socket_gid: accounts.socket_gid,
            gateway_uid: accounts.gateway_uid,
            operator_gid: accounts.operator_gid,
            job_ids,
            io_device,
            default_limits,
            max_limits,
            grace,
            timeouts,
            handshake_timeout,
            idle_timeout,
            file,
        })
    }

    /// The effective configuration as TOML, with what names resolved to.
    pub fn describe(&self) -> String {
        let mut out = toml::to_string(&self.file)
            .unwrap_or_else(|e| format!("# the configuration cannot be shown as TOML: {e}\n"));
        let jobs = match &self.job_ids {
            JobIds::Shared { uid, gid } => format!("every job runs as uid {uid} gid {gid}"),
            JobIds::PerJob { range, excluded } => format!(
                "each job runs as a uid of its own from {}-{} ({} of them taken by accounts or groups of this host)",
                range.start(),
                range.end(),
                excluded.len()
            ),
        };
        out.push_str(&format!(
            "\n# resolved: {jobs}; gateway uid {}; operator gid {}; socket gid {}\n",
            show(self.gateway_uid),
            show(self.operator_gid),
            show(self.socket_gid),
        ));
        out
    }
}

/// Jobs' time limits: the one a job gets when it asks for none, and the
/// longest it may ask for (`None`: no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// `default_timeout_ms`.
    pub default: Option<TimeoutMs>,
    /// `max_timeout_ms`.
    pub max: Option<TimeoutMs>,
}

/// `default_timeout_ms` and `max_timeout_ms`: each in range, the default
/// within the maximum.
fn timeouts(file: &FileConfig) -> Result<Timeouts, (&'static str, String)> {
    let parse = |key: &'static str, ms: Option<u64>| {
        ms.map(TimeoutMs::new)
            .transpose()
            .map_err(|e| (key, e.reason))
    };
    let default = parse("default_timeout_ms", file.default_timeout_ms)?;
    let max = parse("max_timeout_ms", file.max_timeout_ms)?;
    if let (Some(default), Some(max)) = (default, max)
        && default > max
    {
        return Err((
            "default_timeout_ms",
            format!("{default} is longer than max_timeout_ms ({max})"),
        ));
    }
    Ok(Timeouts { default, max })
}

/// Checks the paths the supervisor itself uses (`socket_path`, `state_dir`,
/// `working_dir`: absolute; `socket_path` short enough to bind) and
/// `max_connections` (not 0).
fn server_keys(file: &FileConfig) -> Result<(), (&'static str, String)> {
    if !file.socket_path.is_absolute() {
        return Err(("socket_path", "must be an absolute path".into()));
    }
    let socket_bytes = file.socket_path.as_os_str().len();
    if socket_bytes > MAX_SOCKET_PATH_BYTES {
        return Err((
            "socket_path",
            format!(
                "is {socket_bytes} bytes long, and a Unix socket's path can be at most \
                 {MAX_SOCKET_PATH_BYTES} here (107, less the \".new\" it is bound as first): \
                 pick a shorter path"
            ),
        ));
    }
    if !file.state_dir.is_absolute() {
        return Err(("state_dir", "must be an absolute path".into()));
    }
    if !file.working_dir.starts_with('/') {
        return Err(("working_dir", "must be an absolute path".into()));
    }
    if file.max_connections == 0 {
        return Err(("max_connections", "must be greater than 0".into()));
    }
    Ok(())
}

/// `gateway_user`, `operator_group` and `socket_group` resolved to ids: the
/// account and groups with rights over the supervisor.
struct Accounts {
    /// `gateway_user`'s uid.
    gateway_uid: Option<u32>,
    /// `operator_group`'s gid.
    operator_gid: Option<u32>,
    /// `socket_group`'s gid.
    socket_gid: Option<u32>,
}

/// Looks up `gateway_user` (which must not be root), `operator_group` and
/// `socket_group`, in that order.
fn accounts(file: &FileConfig) -> Result<Accounts, (&'static str, String)> {
    let gateway_uid = file
        .gateway_user
        .as_deref()
        .map(jobworker_config::user)
        .transpose()
        .map_err(|r| ("gateway_user", r))?
        .map(|user| user.uid.as_raw());
    if gateway_uid == Some(0) {
        return Err(("gateway_user", "the gateway must not run as root".into()));
    }
    let operator_gid = file
        .operator_group
        .as_deref()
        .map(jobworker_config::group)
        .transpose()
        .map_err(|r| ("operator_group", r))?;
    let socket_gid = file
        .socket_group
        .as_deref()
        .map(jobworker_config::group)
        .transpose()
        .map_err(|r| ("socket_group", r))?;
    Ok(Accounts {
        gateway_uid,
        operator_gid,
        socket_gid,
    })
}

/// Where jobs get their uid and gid from `file`: `job_user`'s account, or
/// the `job_uids` range less the host's accounts and groups. Neither may
/// give a job the gateway's uid or one of the `privileged` gids (the
/// operators' group, the socket's group): a job could then act as them.
fn job_ids(
    file: &FileConfig,
    gateway_uid: Option<u32>,
    privileged: [Option<u32>; 2],
) -> Result<JobIds, (&'static str, String)> {
    if let Some(user) = &file.job_user {
        return shared_job_ids(file, user, gateway_uid);
    }
    if file.job_group.is_some() {
        return Err((
            "job_group",
            "goes with job_user; jobs with uids of their own get the same number as gid".into(),
        ));
    }
    per_job_ids(file.job_uids, gateway_uid, privileged)
}

/// Every job as the account `user` (with `job_group`, or the account's
/// group): not root unless `allow_root_jobs` says so, and not the gateway.
fn shared_job_ids(
    file: &FileConfig,
    user: &str,
    gateway_uid: Option<u32>,
) -> Result<JobIds, (&'static str, String)> {
    let account = jobworker_config::user(user).map_err(|r| ("job_user", r))?;
    let uid = account.uid.as_raw();
    let gid = match &file.job_group {
        Some(group) => jobworker_config::group(group).map_err(|r| ("job_group", r))?,
        None => account.gid.as_raw(),
    };
    if (uid == 0 || gid == 0) && !file.allow_root_jobs {
        return Err((
            "job_user",
            "jobs would run as root (uid or gid 0); pick an unprivileged account, or set \
             allow_root_jobs = true if you really mean it"
                .into(),
        ));
    }
    if gateway_uid == Some(uid) {
        return Err((
            "gateway_user",
            "is the job account too: any job could then act as the gateway and claim \
             to be any user; give the gateway and the jobs different accounts"
                .into(),
        ));
    }
    Ok(JobIds::Shared { uid, gid })
}

/// Each job its own uid (and the same gid) from `job_uids`: a range of
/// non-root ids without the gateway's uid or a `privileged` gid, and with
/// at least one id that names no account or group of the host.
fn per_job_ids(
    uids: UidRangeConfig,
    gateway_uid: Option<u32>,
    privileged: [Option<u32>; 2],
) -> Result<JobIds, (&'static str, String)> {
    let UidRangeConfig { first, last } = uids;
    if first == 0 || first > last {
        return Err((
            "job_uids",
            format!(
                "{first}-{last} is not a range of non-root ids (first must be 1 or more, and at most last)"
            ),
        ));
    }
    let range = first..=last;
    if let Some(uid) = gateway_uid.filter(|uid| range.contains(uid)) {
        return Err((
            "job_uids",
            format!("contains the gateway's uid {uid}: a job could act as the gateway"),
        ));
    }
    if let Some(gid) = privileged
        .into_iter()
        .flatten()
        .find(|gid| range.contains(gid))
    {
        return Err((
            "job_uids",
            format!(
                "contains gid {gid} of the operators' or the socket's group: a job could act as an operator"
            ),
        ));
    }
    let excluded = ids_in_use(&range).map_err(|r| ("job_uids", r))?;
    if excluded.len() >= range.clone().count() {
        return Err((
            "job_uids",
            format!("every id of {first}-{last} names an account or a group of this host"),
        ));
    }
    Ok(JobIds::PerJob { range, excluded })
}

/// The ids of `range` that name an account in `/etc/passwd` or a group in
/// `/etc/group`: no job ever gets them.
fn ids_in_use(range: &std::ops::RangeInclusive<u32>) -> Result<BTreeSet<u32>, String> {
    let mut ids = BTreeSet::new();
    for file in ["/etc/passwd", "/etc/group"] {
        let text = std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))?;
        ids.extend(
            text.lines()
                .filter_map(|line| line.split(':').nth(2)?.parse::<u32>().ok())
                .filter(|id| range.contains(id)),
        );
    }
    Ok(ids)
}

/// Checks the sandbox's paths: absolute, and a bind's source present.
fn sandbox_paths(file: &FileConfig) -> Result<(), (&'static str, String)> {
    if let Some(path) = file.masked_paths.iter().find(|p| !p.is_absolute()) {
        return Err((
            "masked_paths",
            format!("{} is not an absolute path", path.display()),
        ));
    }
    let replaced = |path: &Path| {
        REPLACED
            .iter()
            .chain(PRIVATE_TMP)
            .find(|own| path.starts_with(own))
    };
    if let Some((path, own)) = file
        .masked_paths
        .iter()
        .find_map(|p| replaced(p).map(|own| (p, own)))
    {
        return Err((
            "masked_paths",
            format!(
                "{} is inside {own}, which every job gets a fresh one of: nothing of the \
                 host's is there to mask",
                path.display()
            ),
        ));
    }
    for bind in &file.bind_paths {
        if !bind.source.is_absolute() || !bind.target().is_absolute() {
            return Err((
                "bind_paths",
                format!(
                    "{} -> {}: both paths must be absolute",
                    bind.source.display(),
                    bind.target().display()
                ),
            ));
        }
        if !bind.source.exists() {
            return Err((
                "bind_paths",
                format!("{} does not exist on this host", bind.source.display()),
            ));
        }
        let target = bind.target();
        if let Some(own) = REPLACED.iter().find(|own| target.starts_with(own)) {
            return Err((
                "bind_paths",
                format!(
                    "the target {} is inside {own}, which the sandbox replaces",
                    target.display()
                ),
            ));
        }
        if !target.exists() && !sandbox_can_make(target, &file.masked_paths) {
            return Err((
                "bind_paths",
                format!(
                    "the target {} does not exist on this host: make it (an empty {}) \
                     or choose one that exists, or one inside /tmp or a masked directory",
                    target.display(),
                    if bind.source.is_dir() {
                        "directory"
                    } else {
                        "file"
                    }
                ),
            ));
        }
    }
    if file.tmp_size_bytes.is_some_and(|size| size < 4096) {
        return Err(("tmp_size_bytes", "must be at least 4096".into()));
    }
    if file.max_processes == 0 {
        return Err(("max_processes", "must be greater than 0".into()));
    }
    Ok(())
}

fn show(id: Option<u32>) -> String {
    id.map_or_else(|| "none".into(), |id| id.to_string())
}

fn parse_device(text: &str) -> Result<(u32, u32), String> {
    text.split_once(':')
        .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)))
        .ok_or_else(|| format!("{text:?} is not MAJOR:MINOR (e.g. \"254:0\")"))
}

/// Validates `default_limits` and `max_limits`, and that no default is
/// above its maximum; an error's key is dotted (`max_limits.pids`).
fn job_limits(file: &FileConfig) -> Result<(Limits, Limits), (String, String)> {
    let default_limits =
        limits(&file.default_limits).map_err(|(k, r)| (format!("default_limits.{k}"), r))?;
    let max_limits = limits(&file.max_limits).map_err(|(k, r)| (format!("max_limits.{k}"), r))?;
    if let Some(key) = over_max(&default_limits, &max_limits) {
        return Err((
            format!("default_limits.{key}"),
            format!("is above max_limits.{key}"),
        ));
    }
    Ok((default_limits, max_limits))
}

fn limits(c: &LimitsConfig) -> Result<Limits, (String, String)> {
    Limits::new(
        c.cpu_millicores,
        c.memory_bytes,
        c.io_read_bytes_per_sec,
        c.io_write_bytes_per_sec,
        c.pids,
    )
    .map_err(|e| {
        let key = e.field.trim_start_matches("limits.").to_owned();
        (key, e.reason)
    })
}

/// The first limit of `limits` above its maximum in `max`.
pub fn over_max(limits: &Limits, max: &Limits) -> Option<&'static str> {
    let over =
        |value: Option<u64>, max: Option<u64>| matches!((value, max), (Some(v), Some(m)) if v > m);
    [
        (
            over(
                limits.cpu_millicores().map(u64::from),
                max.cpu_millicores().map(u64::from),
            ),
            "cpu_millicores",
        ),
        (
            over(limits.memory_bytes(), max.memory_bytes()),
            "memory_bytes",
        ),
        (
            over(limits.io_read_bps(), max.io_read_bps()),
            "io_read_bytes_per_sec",
        ),
        (
            over(limits.io_write_bps(), max.io_write_bps()),
            "io_write_bytes_per_sec",
        ),
        (
            over(limits.pids().map(u64::from), max.pids().map(u64::from)),
            "pids",
        ),
    ]
    .into_iter()
    .find_map(|(over, key)| over.then_some(key))
}

/// The operator group's members, as the group database lists them.
pub fn group_members(gid: u32) -> Vec<String> {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|group| group.mem)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn an_empty_file_gives_safe_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.file, FileConfig::default());
        let JobIds::PerJob { range, excluded } = &config.job_ids else {
            panic!("each job gets a uid of its own: {:?}", config.job_ids);
        };
        assert_eq!(range, &(61184..=65519));
        assert!(excluded.iter().all(|id| range.contains(id)));
        assert_eq!(config.file.working_dir, "/work");
        assert_eq!(config.file.masked_paths, default_masked_paths());
        assert_eq!(config.gateway_uid, None);
        assert_eq!(config.grace, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("sokcet_path = \"/x\"").unwrap_err().to_string();
        assert!(err.contains("sokcet_path"), "{err}");
        let err = parse("[retention]\nmax_days = 3").unwrap_err().to_string();
        assert!(err.contains("max_days"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let too_long_socket = format!("socket_path = \"/{}\"", "s".repeat(MAX_SOCKET_PATH_BYTES));
        let cases = [
            ("socket_path = \"relative\"", "socket_path"),
            (&too_long_socket, "socket_path"),
            ("job_user = \"no-such-user-here\"", "job_user"),
            ("job_user = \"root\"", "job_user"),
            ("gateway_user = \"root\"", "gateway_user"),
            (
                "gateway_user = \"nobody\"\njob_user = \"nobody\"",
                "gateway_user",
            ),
            ("operator_group = \"no-such-group-here\"", "operator_group"),
            ("[job_uids]\nfirst = 0\nlast = 10", "job_uids"),
            ("[job_uids]\nfirst = 20\nlast = 10", "job_uids"),
            (
                "gateway_user = \"nobody\"\n[job_uids]\nfirst = 65000\nlast = 65534",
                "job_uids",
            ),
            (
                "operator_group = \"nogroup\"\n[job_uids]\nfirst = 65000\nlast = 65534",
                "job_uids",
            ),
            ("job_group = \"nogroup\"", "job_group"),
            ("masked_paths = [\"relative\"]", "masked_paths"),
            (
                "[[bind_paths]]\nsource = \"/no/such/path/here\"",
                "bind_paths",
            ),
            (
                "[[bind_paths]]\nsource = \"/usr/share\"\ntarget = \"/no/such/target\"",
                "bind_paths",
            ),
            ("max_processes = 0", "max_processes"),
            ("io_device = \"sda\"", "io_device"),
            ("grace_period_ms = 0", "grace_period_ms"),
            ("default_timeout_ms = 0", "default_timeout_ms"),
            (
                "default_timeout_ms = 60000\nmax_timeout_ms = 1000",
                "default_timeout_ms",
            ),
            (
                "[default_limits]\nmemory_bytes = 10",
                "default_limits.memory_bytes",
            ),
            ("[max_limits]\npids = 0", "max_limits.pids"),
            (
                "[default_limits]\npids = 100\n[max_limits]\npids = 10",
                "default_limits.pids",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
        let err = parse("grace_period_ms = \"5s\"").unwrap_err().to_string();
        assert!(err.contains("grace_period_ms"), "{err}");
    }

    /// A bind's target the host lacks is fine where the sandbox can make
    /// it: in a tmpfs of its own or a masked directory.
    #[test]
    fn bind_targets_the_sandbox_makes() {
        for target in ["/tmp/data", "/run/no-such-socket-dir"] {
            let text = format!("[[bind_paths]]\nsource = \"/usr/share\"\ntarget = \"{target}\"");
            assert!(parse(&text).is_ok(), "{target}");
        }
        let unmasked = "masked_paths = []\n[[bind_paths]]\nsource = \"/usr/share\"\n\
                        target = \"/run/no-such-socket-dir\"";
        let err = parse(unmasked).unwrap_err().to_string();
        assert!(err.contains("make it (an empty directory)"), "{err}");
        // A mount point in /work would stay in the job's work directory.
        let in_work = "[[bind_paths]]\nsource = \"/usr/share\"\ntarget = \"/work/data\"";
        assert!(
            parse(in_work)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        let in_dev = "[[bind_paths]]\nsource = \"/usr/share\"\ntarget = \"/dev/data\"";
        assert!(
            parse(in_dev)
                .unwrap_err()
                .to_string()
                .contains("which the sandbox replaces")
        );
        for masked in [
            "/proc/sysrq-trigger",
            "/sys/firmware",
            "/tmp/x",
            "/dev/kmsg",
        ] {
            let text = format!("masked_paths = [\"{masked}\"]");
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("nothing of the host's is there to mask"),
                "{err}"
            );
        }
    }

    #[test]
    fn root_jobs_need_saying_so() {
        let config = parse("job_user = \"root\"\nallow_root_jobs = true").unwrap();
        assert_eq!(config.job_ids, JobIds::Shared { uid: 0, gid: 0 });
    }

    #[test]
    fn names_and_numbers_resolve() {
        let config =
            parse("job_user = \"65534\"\njob_group = \"65534\"\ngateway_user = \"daemon\"\nio_device = \"8:0\"")
                .unwrap();
        assert_eq!(
            config.job_ids,
            JobIds::Shared {
                uid: 65534,
                gid: 65534
            }
        );
        assert_eq!(config.gateway_uid, Some(1));
        assert_eq!(config.io_device, Some((8, 0)));
    }

    #[test]
    fn accounts_of_the_host_are_never_job_uids() {
        // nobody (65534) is in /etc/passwd on every Debian host.
        let config = parse("[job_uids]\nfirst = 65530\nlast = 65535").unwrap();
        let JobIds::PerJob { excluded, .. } = config.job_ids else {
            panic!("per-job uids");
        };
        assert!(excluded.contains(&65534), "{excluded:?}");
        let err = parse("[job_uids]\nfirst = 65534\nlast = 65534")
            .unwrap_err()
            .to_string();
        assert!(err.contains("names an account or a group"), "{err}");
    }

    #[test]
    fn the_description_parses_back() {
        let config = parse(
            "[max_limits]\nmemory_bytes = 1073741824\n[[bind_paths]]\nsource = \"/usr/share\"\ntarget = \"/srv\"\nwritable = true",
        )
        .unwrap();
        let again = parse(&config.describe()).unwrap();
        assert_eq!(again.file, config.file);
    }
}
