//! Validated newtypes carried in ipc messages.
//!
//! Every type here checks its invariants (lengths, counts, NUL bytes, ranges,
//! character sets) when it is constructed *and* when it is decoded (serde
//! `try_from`), so a value of one of these types that came off the wire is as
//! trustworthy as one built locally. The limits are explicit constants: a value
//! over a limit is refused with an error that names the field, never cut short.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest command name or path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// The most arguments a job may have.
pub const MAX_ARGS: usize = 4096;
/// The longest single argument, in bytes (Linux `MAX_ARG_STRLEN`).
pub const MAX_ARG_LEN: usize = 128 * 1024;
/// The most bytes all arguments of a job may hold together.
pub const MAX_ARGS_TOTAL: usize = 256 * 1024;
/// The most environment variables a request may add.
pub const MAX_ENV_VARS: usize = 256;
/// The most bytes all added environment variables may hold together.
pub const MAX_ENV_TOTAL: usize = 128 * 1024;
/// The longest user name, in bytes.
pub const MAX_USER_NAME_LEN: usize = 64;
/// The longest idempotency token, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// The longest grace period a stop request may ask for, in milliseconds.
pub const MAX_GRACE_MS: u32 = 3_600_000;
/// The most jobs one list page may hold.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// The longest time limit a job may carry, in milliseconds (a year).
pub const MAX_TIMEOUT_MS: u64 = 366 * 24 * 3_600_000;

/// `TryFrom<$input>` for a validated type, through its `new`: what serde
/// decodes (`#[serde(try_from = ...)]`) is validated exactly as what a
/// caller builds.
macro_rules! validated_by_new {
    ($type:ty, $input:ty) => {
        impl TryFrom<$input> for $type {
            type Error = Invalid;

            fn try_from(value: $input) -> Result<Self, Invalid> {
                Self::new(value)
            }
        }
    };
}

/// A value that failed validation: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct Invalid {
    /// The field, as the user would name it (e.g. `args[3]`, `limits.memory`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Invalid {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks a string that ends up in a C string: no NUL bytes, at most `max` bytes.
fn check_c_string(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max {
        return Err(Invalid::new(
            field,
            format!("{} bytes long, the limit is {max}", value.len()),
        ));
    }
    if value.as_bytes().contains(&0) {
        return Err(Invalid::new(field, "contains a NUL byte"));
    }
    Ok(())
}

/// Whether `id` can name a host of a fleet (its `host_id`, and the CN of
/// its peer certificate): 1 to 63 of `[a-z0-9-]`, not starting with `-`.
pub fn is_host_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A job's identifier: a random (version 4) UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(uuid::Uuid);

impl JobId {
    /// A new random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// The id of a UUID (one a database holds, say).
    pub fn from_uuid(id: uuid::Uuid) -> Self {
        Self(id)
    }

    /// The UUID.
    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }

    /// The first 12 hex digits: short enough for a hostname, long enough to
    /// tell jobs apart at a glance.
    pub fn short(&self) -> String {
        let mut s = self.0.simple().to_string();
        s.truncate(12);
        s
    }
}

impl FromStr for JobId {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        uuid::Uuid::try_parse(s)
            .map(Self)
            .map_err(|_| Invalid::new("job_id", "not a job id (expected a UUID)"))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A remote user's name, as the gateway asserts it (a certificate's CN): 1 to
/// 64 bytes of `[A-Za-z0-9._@-]`. It can never contain `:`, so no remote
/// user can pass for a local identity (see [`Owner`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct UserName(String);

impl UserName {
    /// Validates a user name.
    pub fn new(name: impl Into<String>) -> Result<Self, Invalid> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_USER_NAME_LEN {
            return Err(Invalid::new(
                "user",
                format!("must be 1 to {MAX_USER_NAME_LEN} bytes long"),
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')))
        {
            return Err(Invalid::new(
                "user",
                format!("character {c:?} is not allowed (only A-Z a-z 0-9 . _ @ -)"),
            ));
        }
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

validated_by_new!(UserName, String);

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Every operation on every job.
    Admin,
    /// Start jobs; stop, get, stream and list their own.
    User,
    /// Get, stream and list every job; never start or stop.
    Reader,
}

impl Role {
    /// Every role, in decreasing order of privilege.
    pub const ALL: [Role; 3] = [Role::Admin, Role::User, Role::Reader];

    /// The role's name as written in certificates.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
            Self::Reader => "reader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected admin, user or reader)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// A remote caller as the gateway asserts it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// The user name (the certificate's CN).
    pub user: UserName,
    /// The role (the certificate's role extension).
    pub role: Role,
}

/// Who owns a job: a remote user (through the gateway) or a local account on
/// the host (an operator on the supervisor's socket, shown as `local:<name>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Owner {
    /// A user the gateway authenticated.
    Remote(UserName),
    /// A local account that called the supervisor's socket directly.
    Local(UserName),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Remote(user) => write!(f, "{user}"),
            Self::Local(user) => write!(f, "local:{user}"),
        }
    }
}

impl FromStr for Owner {
    type Err = Invalid;

    /// The inverse of `Display`: `local:<name>` or a remote user's name.
    fn from_str(s: &str) -> Result<Self, Invalid> {
        let owner = |e: Invalid| Invalid::new("owner", e.reason);
        match s.strip_prefix("local:") {
            Some(name) => UserName::new(name).map(Self::Local).map_err(owner),
            None => UserName::new(s).map(Self::Remote).map_err(owner),
        }
    }
}

/// The command to run: an absolute path, or a bare name looked up in the
/// job's `PATH`. Relative paths (`./x`, `bin/x`) are refused: they would
/// depend on the working directory in ways that are easy to get wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Command(String);

impl Command {
    /// Validates a command.
    pub fn new(command: impl Into<String>) -> Result<Self, Invalid> {
        let command = command.into();
        check_c_string("command", &command, MAX_PATH_LEN)?;
        if command.is_empty() {
            return Err(Invalid::new("command", "is empty"));
        }
        if command.contains('/') && !command.starts_with('/') {
            return Err(Invalid::new(
                "command",
                "must be an absolute path or a bare name looked up in PATH",
            ));
        }
        Ok(Self(command))
    }

    /// The command as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

validated_by_new!(Command, String);

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job's arguments (not counting the command itself): at most
/// [`MAX_ARGS`], each at most [`MAX_ARG_LEN`] bytes without NUL bytes, at most
/// [`MAX_ARGS_TOTAL`] bytes together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Args(Vec<String>);

impl Args {
    /// Validates arguments.
    pub fn new(args: Vec<String>) -> Result<Self, Invalid> {
        if args.len() > MAX_ARGS {
            return Err(Invalid::new(
                "args",
                format!("{} arguments, the limit is {MAX_ARGS}", args.len()),
            ));
        }
        let mut total = 0;
        for (i, arg) in args.iter().enumerate() {
            check_c_string(&format!("args[{i}]"), arg, MAX_ARG_LEN)?;
            total += arg.len();
        }
        if total > MAX_ARGS_TOTAL {
            return Err(Invalid::new(
                "args",
                format!("{total} bytes together, the limit is {MAX_ARGS_TOTAL}"),
            ));
        }
        Ok(Self(args))
    }

    /// The arguments.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

validated_by_new!(Args, Vec<String>);

/// One environment variable a request adds to the job's clean environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// `[A-Za-z_][A-Za-z0-9_]*`.
    pub name: String,
    /// Any string without NUL bytes.
    pub value: String,
}

/// The environment variables a request adds: at most [`MAX_ENV_VARS`], names
/// unique and of the portable form, values without NUL bytes, at most
/// [`MAX_ENV_TOTAL`] bytes together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<EnvVar>")]
pub struct Env(Vec<EnvVar>);

impl Env {
    /// Validates environment variables.
    pub fn new(vars: Vec<EnvVar>) -> Result<Self, Invalid> {
        if vars.len() > MAX_ENV_VARS {
            return Err(Invalid::new(
                "env",
                format!("{} variables, the limit is {MAX_ENV_VARS}", vars.len()),
            ));
        }
        let mut total = 0;
        for (i, var) in vars.iter().enumerate() {
            let valid_name = var.name.bytes().enumerate().all(|(j, b)| {
                b == b'_' || b.is_ascii_alphabetic() || (j > 0 && b.is_ascii_digit())
            });
            if var.name.is_empty() || !valid_name {
                return Err(Invalid::new(
                    format!("env[{i}].name"),
                    "must match [A-Za-z_][A-Za-z0-9_]*",
                ));
            }
            if vars[..i].iter().any(|other| other.name == var.name) {
                return Err(Invalid::new(
                    format!("env[{i}].name"),
                    format!("{} is given twice", var.name),
                ));
            }
            check_c_string(&format!("env[{i}].value"), &var.value, MAX_ENV_TOTAL)?;
            total += var.name.len() + var.value.len();
        }
        if total > MAX_ENV_TOTAL {
            return Err(Invalid::new(
                "env",
                format!("{total} bytes together, the limit is {MAX_ENV_TOTAL}"),
            ));
        }
        Ok(Self(vars))
    }

    /// The variables.
    pub fn as_slice(&self) -> &[EnvVar] {
        &self.0
    }
}

validated_by_new!(Env, Vec<EnvVar>);

/// A job's working directory: an absolute path without NUL bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct WorkingDir(String);

impl WorkingDir {
    /// Validates a working directory.
    pub fn new(dir: impl Into<String>) -> Result<Self, Invalid> {
        let dir = dir.into();
        check_c_string("working_dir", &dir, MAX_PATH_LEN)?;
        if !dir.starts_with('/') {
            return Err(Invalid::new("working_dir", "must be an absolute path"));
        }
        Ok(Self(dir))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

validated_by_new!(WorkingDir, String);

/// A client-chosen idempotency token: 1 to [`MAX_REQUEST_ID_LEN`] printable
/// ASCII characters without spaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct RequestId(String);

impl RequestId {
    /// Validates a request id.
    pub fn new(id: impl Into<String>) -> Result<Self, Invalid> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
            return Err(Invalid::new(
                "request_id",
                format!("must be 1 to {MAX_REQUEST_ID_LEN} bytes long"),
            ));
        }
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Invalid::new(
                "request_id",
                "only printable ASCII without spaces is allowed",
            ));
        }
        Ok(Self(id))
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

validated_by_new!(RequestId, String);

/// Resource limits of a job; `None` means "the server's default". Each value
/// is range-checked: below the minimum a job could not even start, above the
/// maximum the number is surely a mistake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LimitsWire")]
pub struct Limits {
    cpu_millicores: Option<u32>,
    memory_bytes: Option<u64>,
    io_read_bps: Option<u64>,
    io_write_bps: Option<u64>,
    pids: Option<u32>,
}

/// The unvalidated form of [`Limits`], as decoded.
#[derive(Deserialize)]
struct LimitsWire {
    cpu_millicores: Option<u32>,
    memory_bytes: Option<u64>,
    io_read_bps: Option<u64>,
    io_write_bps: Option<u64>,
    pids: Option<u32>,
}

impl TryFrom<LimitsWire> for Limits {
    type Error = Invalid;

    fn try_from(w: LimitsWire) -> Result<Self, Invalid> {
        Limits::new(
            w.cpu_millicores,
            w.memory_bytes,
            w.io_read_bps,
            w.io_write_bps,
            w.pids,
        )
    }
}

/// Limit ranges: (field, minimum, maximum).
const CPU_RANGE: (&str, u64, u64) = ("limits.cpu_millicores", 10, 1_000_000);
const MEMORY_RANGE: (&str, u64, u64) = ("limits.memory_bytes", 1 << 20, 1 << 50);
const IO_READ_RANGE: (&str, u64, u64) = ("limits.io_read_bytes_per_sec", 4096, 1 << 50);
const IO_WRITE_RANGE: (&str, u64, u64) = ("limits.io_write_bytes_per_sec", 4096, 1 << 50);
const PIDS_RANGE: (&str, u64, u64) = ("limits.pids", 1, 4_194_304);

fn check_range(range: (&str, u64, u64), value: Option<u64>) -> Result<(), Invalid> {
    let (field, min, max) = range;
    match value {
        Some(v) if v < min || v > max => Err(Invalid::new(
            field,
            format!("{v} is out of range {min}..={max}"),
        )),
        _ => Ok(()),
    }
}

impl Limits {
    /// Validates limits.
    pub fn new(
        cpu_millicores: Option<u32>,
        memory_bytes: Option<u64>,
        io_read_bps: Option<u64>,
        io_write_bps: Option<u64>,
        pids: Option<u32>,
    ) -> Result<Self, Invalid> {
        check_range(CPU_RANGE, cpu_millicores.map(u64::from))?;
        check_range(MEMORY_RANGE, memory_bytes)?;
        check_range(IO_READ_RANGE, io_read_bps)?;
        check_range(IO_WRITE_RANGE, io_write_bps)?;
        check_range(PIDS_RANGE, pids.map(u64::from))?;
        Ok(Self {
            cpu_millicores,
            memory_bytes,
            io_read_bps,
            io_write_bps,
            pids,
        })
    }

    /// CPU bandwidth in millicores (1000 = one CPU).
    pub fn cpu_millicores(&self) -> Option<u32> {
        self.cpu_millicores
    }

    /// Memory limit in bytes.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory_bytes
    }

    /// Read bandwidth in bytes per second.
    pub fn io_read_bps(&self) -> Option<u64> {
        self.io_read_bps
    }

    /// Write bandwidth in bytes per second.
    pub fn io_write_bps(&self) -> Option<u64> {
        self.io_write_bps
    }

    /// The most tasks the job may have.
    pub fn pids(&self) -> Option<u32> {
        self.pids
    }

    /// These limits with each unset value taken from `defaults`.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            cpu_millicores: self.cpu_millicores.or(defaults.cpu_millicores),
            memory_bytes: self.memory_bytes.or(defaults.memory_bytes),
            io_read_bps: self.io_read_bps.or(defaults.io_read_bps),
            io_write_bps: self.io_write_bps.or(defaults.io_write_bps),
            pids: self.pids.or(defaults.pids),
        }
    }
}

/// A stop request's grace period in milliseconds, at most [`MAX_GRACE_MS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32")]
pub struct GraceMs(u32);

impl GraceMs {
    /// Validates a grace period.
    pub fn new(ms: u32) -> Result<Self, Invalid> {
        if ms > MAX_GRACE_MS {
            return Err(Invalid::new(
                "grace_period",
                format!("{ms} ms is longer than the limit of {MAX_GRACE_MS} ms"),
            ));
        }
        Ok(Self(ms))
    }

    /// The period in milliseconds.
    pub fn millis(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for GraceMs {
    type Error = Invalid;

    fn try_from(ms: u32) -> Result<Self, Invalid> {
        Self::new(ms)
    }
}

/// A job's time limit in milliseconds: 1 to [`MAX_TIMEOUT_MS`], counted
/// from the job's creation (a few ms before its command's exec): then it is
/// stopped as a stop request would stop it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64")]
pub struct TimeoutMs(u64);

impl TimeoutMs {
    /// Validates a time limit.
    pub fn new(ms: u64) -> Result<Self, Invalid> {
        if ms == 0 || ms > MAX_TIMEOUT_MS {
            return Err(Invalid::new(
                "timeout",
                format!("{ms} ms is out of range 1..={MAX_TIMEOUT_MS} ms (a year)"),
            ));
        }
        Ok(Self(ms))
    }

    /// The limit in milliseconds.
    pub fn millis(self) -> u64 {
        self.0
    }

    /// The limit as a duration.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

impl fmt::Display for TimeoutMs {
    /// The shortest exact form: `90s`, `1500ms`, `2m`, `3h`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        match ms {
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

validated_by_new!(TimeoutMs, u64);

/// How many jobs one list page may hold: 1 to [`MAX_PAGE_SIZE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32")]
pub struct PageSize(u32);

impl PageSize {
    /// The size used when a client asks for none in particular.
    pub const DEFAULT: PageSize = PageSize(100);

    /// Validates a page size.
    pub fn new(n: u32) -> Result<Self, Invalid> {
        if n == 0 || n > MAX_PAGE_SIZE {
            return Err(Invalid::new(
                "page_size",
                format!("{n} is out of range 1..={MAX_PAGE_SIZE}"),
            ));
        }
        Ok(Self(n))
    }

    /// The size.
    pub fn get(self) -> u32 {
        self.0
    }
}

validated_by_new!(PageSize, u32);

/// A point in time: microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixMicros(pub u64);

impl UnixMicros {
    /// The current time (0 if the clock is before 1970).
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
    }

    /// The time `millis` milliseconds after the epoch (saturating), for
    /// times written when the unit was the millisecond.
    pub fn from_millis(millis: u64) -> Self {
        Self(millis.saturating_mul(1000))
    }

    /// The time since the epoch.
    pub fn since_epoch(self) -> std::time::Duration {
        std::time::Duration::from_micros(self.0)
    }
}
