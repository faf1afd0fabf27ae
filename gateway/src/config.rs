//! The gateway's configuration: a TOML file (default
//! `/etc/jobworker/gateway.toml`) in which every key is optional and has a
//! default. Unknown keys and invalid values are errors that name the key.
//! [`FileConfig`] is the file as written; [`Config`] is what it resolves to
//! (the listen address parsed, the run-as account looked up, durations typed).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use jobworker_config::ConfigError;
use jobworker_config::{invalid as invalid_config, positive_millis};
use serde::{Deserialize, Serialize};

use jobworker_fleet::FleetConfig;

/// Where the configuration is read from by default.
pub const DEFAULT_PATH: &str = "/etc/jobworker/gateway.toml";

/// The configuration file as written, with defaults for missing keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// The TCP address to listen on (`IP:PORT`; port 0 picks a free one).
    pub listen: String,
    /// The server certificate chain (PEM, leaf first). The three TLS files
    /// are read again on SIGHUP by the gateway's own (unprivileged) account,
    /// so they must be readable by it: the key owned by `run_as_user`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, SEC1 or PKCS#1); refused if
    /// group or others have any access to it (mode 0600 or 0400).
    pub server_key: PathBuf,
    /// The CA certificates (PEM) that client certificates must chain to; a
    /// separate CA from the one that signed `server_cert`.
    pub client_ca: PathBuf,
    /// The supervisor's Unix socket.
    pub supervisor_socket: PathBuf,
    /// The account (name or uid) the gateway switches to when started as
    /// root. Required when started as root.
    pub run_as_user: Option<String>,
    /// The group (name or gid) the gateway switches to; the run-as user's
    /// primary group when unset.
    pub run_as_group: Option<String>,
    /// How long a client has to complete the TLS handshake, and then to
    /// send the HTTP/2 preface, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// The most authenticated (handshaken) connections served at once; more
    /// are closed.
    pub max_connections: usize,
    /// The most TLS handshakes under way at once, counted apart from
    /// `max_connections` (no certificate is needed to open one); a new
    /// connection beyond it drops the oldest handshake under way.
    pub max_handshakes: usize,
    /// The same, per client IP address.
    pub max_handshakes_per_ip: usize,
    /// The most concurrent gRPC calls (HTTP/2 streams) on one connection.
    pub max_concurrent_streams: u32,
    /// The most `StreamOutput` calls open at once (each holds a supervisor
    /// connection); more are refused with RESOURCE_EXHAUSTED.
    pub max_output_streams: usize,
    /// The most unary calls in flight to the supervisor at once (each holds
    /// a supervisor connection); more wait for a free slot. Stops are
    /// counted apart (`max_stop_calls`).
    pub max_unary_calls: usize,
    /// The most `StopJob` calls in flight to the supervisor at once (each
    /// holds a supervisor connection while it waits out the job's grace
    /// period); more wait for a free slot, holding no other.
    pub max_stop_calls: usize,
    /// The most `StreamOutput` calls one user may hold open at once; more
    /// are refused with RESOURCE_EXHAUSTED.
    pub max_output_streams_per_user: usize,
    /// The most calls one user may have in flight to the supervisor at once
    /// (stops included); more wait for one of theirs to finish.
    pub max_unary_calls_per_user: usize,
    /// The most idle supervisor connections kept for unary calls.
    pub max_idle_supervisor_connections: usize,
    /// The largest request message accepted, in bytes (any service).
    pub max_request_bytes: usize,
    /// How long connecting to the supervisor (and its handshake) may take,
    /// in milliseconds.
    pub supervisor_connect_timeout_ms: u64,
    /// The TCP address (`IP:PORT`) of the Prometheus metrics endpoint, plain
    /// HTTP: `GET /metrics`. No endpoint when unset.
    pub metrics_listen: Option<String>,
    /// Fleet mode: this host's place in a fleet coordinated through
    /// PostgreSQL. One host, no database, when unset.
    pub fleet: Option<jobworker_fleet::FleetFileConfig>,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".into(),
            server_cert: PathBuf::from("/etc/jobworker/tls/server.pem"),
            server_key: PathBuf::from("/etc/jobworker/tls/server.key"),
            client_ca: PathBuf::from("/etc/jobworker/tls/client-ca.pem"),
            supervisor_socket: PathBuf::from("/run/jobworker/supervisor.sock"),
            run_as_user: None,
            run_as_group: None,
            handshake_timeout_ms: 3_000,
            max_connections: 1024,
            max_handshakes: 256,
            max_handshakes_per_ip: 64,
            max_concurrent_streams: 256,
            max_output_streams: 512,
            max_unary_calls: 256,
            max_stop_calls: 64,
            max_output_streams_per_user: 128,
            max_unary_calls_per_user: 32,
            max_idle_supervisor_connections: 16,
            max_request_bytes: MAX_REQUEST_BYTES,
            supervisor_connect_timeout_ms: 5_000,
            metrics_listen: None,
            fleet: None,
        }
    }
}

/// The largest `max_request_bytes`: a request is forwarded as one ipc frame,
/// so nothing larger could be valid.
pub const MAX_REQUEST_BYTES: usize = jobworker_ipc::MAX_FRAME_LEN;

/// The smallest `max_request_bytes`.
pub const MIN_REQUEST_BYTES: usize = 1024;

/// The unprivileged account the gateway switches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// The account's name (for its supplementary groups).
    pub user: String,
    /// Its uid (never 0).
    pub uid: u32,
    /// The gid to run with (never 0).
    pub gid: u32,
}

/// The configuration resolved and validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file's values.
    pub file: FileConfig,
    /// `listen`, parsed.
    pub listen: SocketAddr,
    /// `metrics_listen`, parsed.
    pub metrics_listen: Option<SocketAddr>,
    /// `run_as_user` and `run_as_group`, resolved.
    pub run_as: Option<RunAs>,
    /// `handshake_timeout_ms`.
    pub handshake_timeout: Duration,
    /// `supervisor_connect_timeout_ms`.
    pub supervisor_connect_timeout: Duration,
    /// `[fleet]`, resolved.
    pub fleet: Option<FleetConfig>,
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

    fn resolve(path: &Path, file: FileConfig) -> Result<Self, ConfigError> {
        let invalid = |key: &str, reason: String| jobworker_config::invalid(path)((key, reason));
        let positive_ms = |key, value| positive_millis(key, value).map_err(invalid_config(path));
        let address = |key: &str, value: &str, example: u16| {
            value.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    key,
                    format!(
                        "{value:?} is not an IP:PORT address (e.g. \"127.0.0.1:{example}\" or \
                         \"[::]:{example}\")"
                    ),
                )
            })
        };
        let listen = address("listen", &file.listen, 8443)?;
        let metrics_listen = file
            .metrics_listen
            .as_deref()
            .map(|value| address("metrics_listen", value, 9464))
            .transpose()?;
        if metrics_listen == Some(listen) && listen.port() != 0 {
            return Err(invalid(
                "metrics_listen",
                "is the gRPC `listen` address; give the metrics endpoint a port of its own".into(),
            ));
        }
        for (key, value) in [
            ("server_cert", &file.server_cert),
            ("server_key", &file.server_key),
            ("client_ca", &file.client_ca),
            ("supervisor_socket", &file.supervisor_socket),
        ] {
            if !value.is_absolute() {
                return Err(invalid(key, "must be an absolute path".into()));
            }
        }
        for (key, value) in [
            ("max_connections", file.max_connections),
            ("max_handshakes", file.max_handshakes),
            ("max_handshakes_per_ip", file.max_handshakes_per_ip),
            (
                "max_concurrent_streams",
                file.max_concurrent_streams as usize,
            ),
            ("max_output_streams", file.max_output_streams),
            ("max_unary_calls", file.max_unary_calls),
            ("max_stop_calls", file.max_stop_calls),
            (
                "max_output_streams_per_user",
                file.max_output_streams_per_user,
            ),
            ("max_unary_calls_per_user", file.max_unary_calls_per_user),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        if !(MIN_REQUEST_BYTES..=MAX_REQUEST_BYTES).contains(&file.max_request_bytes) {
            return Err(invalid(
                "max_request_bytes",
                format!(
                    "{} is out of range {MIN_REQUEST_BYTES}..={MAX_REQUEST_BYTES}",
                    file.max_request_bytes
                ),
            ));
        }
        let run_as = match (&file.run_as_user, &file.run_as_group) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid(
                    "run_as_group",
                    "is set without run_as_user; set both, or neither".into(),
                ));
            }
            (Some(user), group) => {
                let account =
                    jobworker_config::user(user).map_err(|r| invalid("run_as_user", r))?;
                if account.uid.is_root() {
                    return Err(invalid(
                        "run_as_user",
                        "the gateway must not run as root; pick an unprivileged account".into(),
                    ));
                }
                let (gid, key) = match group {
                    Some(group) => (
                        jobworker_config::group(group).map_err(|r| invalid("run_as_group", r))?,
                        "run_as_group",
                    ),
                    None => (account.gid.as_raw(), "run_as_user"),
                };
                if gid == 0 {
                    return Err(invalid(
                        key,
                        "the gateway must not run with group 0 (root); pick another group".into(),
                    ));
                }
                Some(RunAs {
                    user: account.name,
                    uid: account.uid.as_raw(),
                    gid,
                })
            }
        };
        let fleet = file
            .fleet
            .as_ref()
            .map(|fleet| FleetConfig::resolve(fleet).map_err(|(key, reason)| invalid(key, reason)))
            .transpose()?;
        Ok(Self {
            fleet,
            listen,
            metrics_listen,
            run_as,
            handshake_timeout: positive_ms("handshake_timeout_ms", file.handshake_timeout_ms)?,
            supervisor_connect_timeout: positive_ms(
                "supervisor_connect_timeout_ms",
                file.supervisor_connect_timeout_ms,
            )?,
            file,
        })
    }

    /// The effective configuration as TOML, with what names resolved to
    /// (the database's connection string is not shown: it may hold a
    /// password).
    pub fn describe(&self) -> String {
        let mut shown = self.file.clone();
        if let Some(fleet) = &mut shown.fleet {
            fleet.database_url = "(set, not shown)".into();
        }
        let mut out = toml::to_string(&shown)
            .unwrap_or_else(|e| format!("# the configuration cannot be shown as TOML: {e}\n"));
        match &self.run_as {
            Some(run_as) => out.push_str(&format!(
                "\n# resolved: when started as root, runs as {} (uid {} gid {})\n",
                run_as.user, run_as.uid, run_as.gid
            )),
            None => out.push_str(
                "\n# resolved: no run-as account; the gateway refuses to start as root\n",
            ),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    /// deploy/gateway.toml with each commented-out `key = value` (and
    /// table) of it set: every key it shows is one the gateway takes. The
    /// one file the configuration reads, `database_ca`, is made for it, and
    /// the accounts it names (which only an install makes) are ones every
    /// Debian host has.
    #[test]
    fn the_deployed_example_shows_only_real_keys() {
        let dir = tempfile::tempdir().unwrap();
        let validity = jobworker_certs::Validity::with_overrides(1, None, None).unwrap();
        jobworker_certs::init(dir.path(), &validity, jobworker_certs::Overwrite::Refuse).unwrap();
        let example = include_str!("../../deploy/gateway.toml")
            .replace(
                "/etc/jobworker/postgresql-ca.pem",
                &dir.path().join("server-ca.pem").to_string_lossy(),
            )
            .replace(
                "run_as_user = \"jobworker-gateway\"",
                "run_as_user = \"nobody\"",
            )
            .replace(
                "run_as_group = \"jobworker-gateway\"",
                "run_as_group = \"nogroup\"",
            );
        let set: String = example
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with('[')
                        || rest.split_once(" = ").is_some_and(|(key, _)| {
                            key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        }) =>
                {
                    rest
                }
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let config = parse(&set).unwrap_or_else(|e| panic!("{e}\n{set}"));
        let fleet = config.fleet.unwrap();
        assert_eq!(fleet.host_id, "h1");
        assert!(fleet.peer_listen.is_some() && fleet.peer_client.is_some());
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.file, FileConfig::default());
        assert_eq!(config.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(config.run_as, None);
        assert_eq!(config.handshake_timeout, Duration::from_secs(3));
        assert_eq!(
            config.metrics_listen, None,
            "no metrics endpoint by default"
        );
    }

    #[test]
    fn the_metrics_endpoint_is_an_address() {
        let config = parse("metrics_listen = \"127.0.0.1:9464\"").unwrap();
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        let again = parse(&config.describe()).unwrap();
        assert_eq!(again.metrics_listen, config.metrics_listen);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("lisen = \"127.0.0.1:1\"").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            ("listen = \"localhost\"", "listen"),
            ("metrics_listen = \"9464\"", "metrics_listen"),
            ("metrics_listen = \"127.0.0.1:8443\"", "metrics_listen"),
            ("server_cert = \"server.pem\"", "server_cert"),
            ("server_key = \"k\"", "server_key"),
            ("client_ca = \"ca.pem\"", "client_ca"),
            ("supervisor_socket = \"s.sock\"", "supervisor_socket"),
            ("run_as_user = \"no-such-user-here\"", "run_as_user"),
            ("run_as_user = \"root\"", "run_as_user"),
            ("run_as_user = \"0\"", "run_as_user"),
            ("run_as_group = \"nogroup\"", "run_as_group"),
            (
                "run_as_user = \"nobody\"\nrun_as_group = \"no-such-group-here\"",
                "run_as_group",
            ),
            (
                "run_as_user = \"nobody\"\nrun_as_group = \"root\"",
                "run_as_group",
            ),
            ("handshake_timeout_ms = 0", "handshake_timeout_ms"),
            (
                "supervisor_connect_timeout_ms = 0",
                "supervisor_connect_timeout_ms",
            ),
            ("max_connections = 0", "max_connections"),
            ("max_concurrent_streams = 0", "max_concurrent_streams"),
            ("max_output_streams = 0", "max_output_streams"),
            ("max_unary_calls = 0", "max_unary_calls"),
            ("max_request_bytes = 10", "max_request_bytes"),
            ("max_request_bytes = 1073741824", "max_request_bytes"),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
        let err = parse("handshake_timeout_ms = \"5s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("handshake_timeout_ms"), "{err}");
    }

    #[test]
    fn the_run_as_account_resolves() {
        let config = parse("run_as_user = \"nobody\"\nrun_as_group = \"nogroup\"").unwrap();
        let run_as = config.run_as.unwrap();
        assert_eq!((run_as.user.as_str(), run_as.uid), ("nobody", 65534));
        assert_ne!(run_as.gid, 0);
        let by_number = parse("run_as_user = \"65534\"").unwrap().run_as.unwrap();
        assert_eq!(by_number.user, "nobody");
        assert_eq!(by_number.gid, 65534, "nobody's primary group");
    }

    #[test]
    fn the_description_parses_back() {
        let config = parse("listen = \"[::1]:9443\"\nrun_as_user = \"nobody\"").unwrap();
        let again = parse(&config.describe()).unwrap();
        assert_eq!(again.file, config.file);
    }

    #[test]
    fn the_fleet_table_is_checked_and_its_database_url_never_shown() {
        let table = |extra: &str| {
            format!(
                "[fleet]\ndatabase_url = \"host=/run/postgresql user=jw password=secret\"\n\
                 host_id = \"h1\"\n{extra}"
            )
        };
        let config = parse(&table("labels = { zone = \"a\" }\n")).unwrap();
        let fleet = config.fleet.as_ref().unwrap();
        assert_eq!(fleet.host_id, "h1");
        assert_eq!(fleet.slots, 8);
        assert_eq!(fleet.lease, Duration::from_secs(15));
        assert_eq!(fleet.labels.to_string(), "zone=a");
        let described = config.describe();
        assert!(!described.contains("secret"), "{described}");
        assert!(parse("").unwrap().fleet.is_none(), "one host by default");

        let cases = [
            ("host_id = \"h1\"\n", "database_url"),
            (
                "database_url = \"host=/x\"\nhost_id = \"H1\"\n",
                "fleet.host_id",
            ),
            (
                "database_url = \"host=/x\"\nhost_id = \"-h\"\n",
                "fleet.host_id",
            ),
            (
                "database_url = \"host=/x\"\nhost_id = \"\"\n",
                "fleet.host_id",
            ),
            (
                "database_url = \"no such=key\"\nhost_id = \"h1\"\n",
                "fleet.database_url",
            ),
            (
                "database_url = \"host=db.example sslmode=require\"\nhost_id = \"h1\"\n",
                "fleet.database_ca",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&format!("[fleet]\n{text}")).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        for (extra, key) in [
            ("slots = 0\n", "fleet.slots"),
            ("lease_ms = 10\n", "fleet.lease_ms"),
            ("labels = { \"Bad Key\" = \"x\" }\n", "fleet.labels"),
            ("peer = \"x\"\n", "peer"),
            ("start_wait_ms = 60001\n", "fleet.start_wait_ms"),
            ("database_ca = \"/no/such/ca.pem\"\n", "fleet.database_ca"),
            ("peer_address = \"h1:7\"\n", "fleet.peer_address"),
            ("peer_listen = \"0.0.0.0:7\"\n", "fleet.peer_address"),
            ("peer_cert = \"/p.pem\"\n", "fleet.peer_key"),
            (
                "peer_cert = \"/p.pem\"\npeer_key = \"/p.key\"\n",
                "fleet.peer_ca",
            ),
        ] {
            let err = parse(&table(extra)).unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
    }
}
