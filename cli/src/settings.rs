//! `jobctl`'s connection settings: where the gateway is and which files make
//! the mutual-TLS identity. Each setting comes from the first of
//!
//! 1. its command-line flag (`--server`, `--ca`, `--cert`, `--key`,
//!    `--server-name`, `--connect-timeout`),
//! 2. its environment variable (`JOBCTL_SERVER`, `JOBCTL_CA`, `JOBCTL_CERT`,
//!    `JOBCTL_KEY`, `JOBCTL_SERVER_NAME`, `JOBCTL_CONNECT_TIMEOUT`; an empty
//!    value counts as unset),
//! 3. the config file: `--config`, else `JOBCTL_CONFIG`, else
//!    `$XDG_CONFIG_HOME/jobctl/config.toml`, else
//!    `~/.config/jobctl/config.toml` (a missing default file is no error).
//!
//! The config file is TOML with the keys `server`, `ca`, `cert`, `key`,
//! `server_name` and `connect_timeout` (all optional; unknown keys are
//! errors). Relative paths in it are relative to the file's directory:
//!
//! ```toml
//! server = "https://jobs.example.com:8443"   # or "host:port"
//! ca = "server-ca.pem"
//! cert = "alice.pem"
//! key = "alice.key"
//! # server_name = "jobs.example.com"       # TLS name, if not the host
//! # connect_timeout = "10s"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::exit::CliError;

/// How long connecting may take when no setting says.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "JOBCTL_CONFIG";

/// The environment variables and config file, as shown in `--help`.
pub const SETTINGS_HELP: &str = "\
Connection settings come from flags, else the environment, else the config file:
  flag               variable                file key          value
  --server           JOBCTL_SERVER           server            https://HOST:PORT or HOST:PORT
  --ca               JOBCTL_CA               ca                the server CA certificate (PEM)
  --cert             JOBCTL_CERT             cert              your client certificate (PEM)
  --key              JOBCTL_KEY              key               your client key (PEM)
  --server-name      JOBCTL_SERVER_NAME      server_name       the TLS name to verify, if not the host
  --connect-timeout  JOBCTL_CONNECT_TIMEOUT  connect_timeout   e.g. 10s (the default)
The config file is --config, else JOBCTL_CONFIG, else $XDG_CONFIG_HOME/jobctl/config.toml,
else ~/.config/jobctl/config.toml; it is TOML with the keys above, and relative paths in it
are relative to its directory.";

/// Settings from one source; unset ones come from the next source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layer {
    /// The gateway's address.
    pub server: Option<String>,
    /// The server CA certificate.
    pub ca: Option<PathBuf>,
    /// The client certificate.
    pub cert: Option<PathBuf>,
    /// The client key.
    pub key: Option<PathBuf>,
    /// The TLS server name to verify.
    pub server_name: Option<String>,
    /// How long connecting may take.
    pub connect_timeout: Option<Duration>,
}

impl Layer {
    /// This layer, with unset values taken from `lower`.
    pub fn or(self, lower: Layer) -> Layer {
        Layer {
            server: self.server.or(lower.server),
            ca: self.ca.or(lower.ca),
            cert: self.cert.or(lower.cert),
            key: self.key.or(lower.key),
            server_name: self.server_name.or(lower.server_name),
            connect_timeout: self.connect_timeout.or(lower.connect_timeout),
        }
    }
}

/// The resolved settings: everything needed to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The gateway's URI, always `https://...`.
    pub server: String,
    /// The server CA certificate.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// The client key.
    pub key: PathBuf,
    /// The TLS server name to verify; the server's host when unset.
    pub server_name: Option<String>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
}

/// Where the settings came from, for messages about missing ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// The config file consulted, if any.
    pub config_file: Option<PathBuf>,
}

/// Resolves the settings from flags, environment and file, in that order.
pub fn resolve(
    flags: Layer,
    env: Layer,
    file: Layer,
    sources: &Sources,
) -> Result<Settings, CliError> {
    let merged = flags.or(env).or(file);
    let missing = |what: &str, flag: &str, var: &str, key: &str| {
        let file = sources
            .config_file
            .as_ref()
            .map_or_else(|| "the config file".to_owned(), |p| p.display().to_string());
        CliError::Usage(format!(
            "no {what} is set: pass --{flag}, set {var}, or set `{key}` in {file}"
        ))
    };
    let server = merged
        .server
        .ok_or_else(|| missing("server address", "server", "JOBCTL_SERVER", "server"))?;
    Ok(Settings {
        server: normalize_server(&server)?,
        ca: merged
            .ca
            .ok_or_else(|| missing("server CA certificate", "ca", "JOBCTL_CA", "ca"))?,
        cert: merged
            .cert
            .ok_or_else(|| missing("client certificate", "cert", "JOBCTL_CERT", "cert"))?,
        key: merged
            .key
            .ok_or_else(|| missing("client key", "key", "JOBCTL_KEY", "key"))?,
        server_name: merged.server_name,
        connect_timeout: merged.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
    })
}

/// Turns `host:port` into `https://host:port`; keeps `https://` URIs and
/// refuses other schemes (jobctl speaks only TLS).
pub fn normalize_server(server: &str) -> Result<String, CliError> {
    let server = server.trim();
    if server.is_empty() {
        return Err(CliError::Usage("the server address is empty".into()));
    }
    match server.split_once("://") {
        Some(("https", rest)) if !rest.is_empty() => Ok(server.to_owned()),
        Some((scheme, _)) => Err(CliError::Usage(format!(
            "server address {server:?}: the scheme must be https (jobctl speaks only mutual TLS), not {scheme:?}"
        ))),
        None => Ok(format!("https://{server}")),
    }
}

/// Parses a duration setting such as `10s` or `1m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration (e.g. 10s, 1m30s): {e}"))
}

/// The settings in the environment, read through `lookup` (the process's
/// environment in the binary; a map in tests).
pub fn env_layer(lookup: impl Fn(&str) -> Option<String>) -> Result<Layer, CliError> {
    let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
    let connect_timeout = get("JOBCTL_CONNECT_TIMEOUT")
        .map(|text| {
            parse_duration(&text)
                .map_err(|e| CliError::Usage(format!("JOBCTL_CONNECT_TIMEOUT: {e}")))
        })
        .transpose()?;
    Ok(Layer {
        server: get("JOBCTL_SERVER"),
        ca: get("JOBCTL_CA").map(PathBuf::from),
        cert: get("JOBCTL_CERT").map(PathBuf::from),
        key: get("JOBCTL_KEY").map(PathBuf::from),
        server_name: get("JOBCTL_SERVER_NAME"),
        connect_timeout,
    })
}

/// Which config file to read: `(path, explicitly named)`. `None` when no
/// file is named and no home directory is known.
pub fn config_path(
    flag: Option<&Path>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Option<(PathBuf, bool)> {
    let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
    if let Some(path) = flag {
        return Some((path.to_path_buf(), true));
    }
    if let Some(path) = get(CONFIG_ENV) {
        return Some((PathBuf::from(path), true));
    }
    let base = get("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| get("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some((base.join("jobctl").join("config.toml"), false))
}

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    server: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
    connect_timeout: Option<String>,
}

/// Reads the config file at `path`. A missing file is an empty layer unless
/// it was named explicitly.
pub fn file_layer(path: &Path, explicit: bool) -> Result<Layer, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(Layer::default());
        }
        Err(e) => {
            return Err(CliError::Usage(format!(
                "reading the config file {}: {e}",
                path.display()
            )));
        }
    };
    parse_file(path, &text)
}

/// Parses config file text read from `path` (for messages and relative paths).
pub fn parse_file(path: &Path, text: &str) -> Result<Layer, CliError> {
    let bad = |message: String| {
        CliError::Usage(format!(
            "in the config file {}: {}",
            path.display(),
            message.trim().replace('\n', " ")
        ))
    };
    let file: FileSettings = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|span| {
            text.bytes()
                .take(span.start)
                .filter(|b| *b == b'\n')
                .count()
                + 1
        });
        match line {
            Some(line) => bad(format!("line {line}: {}", e.message())),
            None => bad(e.message().to_owned()),
        }
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let relative = |p: PathBuf| if p.is_relative() { dir.join(p) } else { p };
    let connect_timeout = file
        .connect_timeout
        .map(|text| parse_duration(&text).map_err(|e| bad(format!("connect_timeout: {e}"))))
        .transpose()?;
    Ok(Layer {
        server: file.server,
        ca: file.ca.map(relative),
        cert: file.cert.map(relative),
        key: file.key.map(relative),
        server_name: file.server_name,
        connect_timeout,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn layer(server: &str, ca: &str) -> Layer {
        Layer {
            server: Some(server.into()),
            ca: Some(ca.into()),
            ..Layer::default()
        }
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file = parse_file(
            Path::new("/etc/jobctl/config.toml"),
            "server = \"file:1\"\nca = \"ca.pem\"\ncert = \"/abs/c.pem\"\nkey = \"k.key\"\n\
             server_name = \"file-name\"\nconnect_timeout = \"3s\"\n",
        )
        .unwrap();
        let environment = env_layer(env(&[
            ("JOBCTL_SERVER", "env:2"),
            ("JOBCTL_CERT", "/env/c.pem"),
            ("JOBCTL_SERVER_NAME", ""),
            ("JOBCTL_CONNECT_TIMEOUT", "1m"),
        ]))
        .unwrap();
        let flags = Layer {
            server: Some("flag:3".into()),
            ..Layer::default()
        };
        let sources = Sources::default();
        let all = resolve(flags.clone(), environment.clone(), file.clone(), &sources).unwrap();
        assert_eq!(all.server, "https://flag:3");
        assert_eq!(all.cert, PathBuf::from("/env/c.pem"));
        assert_eq!(all.ca, PathBuf::from("/etc/jobctl/ca.pem"));
        assert_eq!(all.key, PathBuf::from("/etc/jobctl/k.key"));
        // An empty variable is unset: the file's value shows through.
        assert_eq!(all.server_name.as_deref(), Some("file-name"));
        assert_eq!(all.connect_timeout, Duration::from_secs(60));

        let no_flags = resolve(Layer::default(), environment, file.clone(), &sources).unwrap();
        assert_eq!(no_flags.server, "https://env:2");
        let file_only = resolve(Layer::default(), Layer::default(), file, &sources).unwrap();
        assert_eq!(file_only.server, "https://file:1");
        assert_eq!(file_only.cert, PathBuf::from("/abs/c.pem"));
        assert_eq!(file_only.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn a_missing_setting_says_where_to_set_it() {
        let sources = Sources {
            config_file: Some("/home/a/.config/jobctl/config.toml".into()),
        };
        let err = resolve(
            layer("h:1", "ca"),
            Layer::default(),
            Layer::default(),
            &sources,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--cert")
                && text.contains("JOBCTL_CERT")
                && text.contains("/home/a/.config/jobctl/config.toml"),
            "{text}"
        );
        assert_eq!(err.exit_code(), crate::exit::USAGE);
        let defaults = resolve(
            Layer {
                cert: Some("c".into()),
                key: Some("k".into()),
                ..layer("h:1", "ca")
            },
            Layer::default(),
            Layer::default(),
            &sources,
        )
        .unwrap();
        assert_eq!(defaults.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(defaults.server_name, None);
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            normalize_server("127.0.0.1:8443").unwrap(),
            "https://127.0.0.1:8443"
        );
        assert_eq!(
            normalize_server("https://gw.example:8443").unwrap(),
            "https://gw.example:8443"
        );
        normalize_server("http://gw:80").unwrap_err();
        normalize_server("").unwrap_err();
        normalize_server("https://").unwrap_err();
    }

    #[test]
    fn the_config_file_is_strict() {
        let path = Path::new("/c.toml");
        let err = parse_file(path, "sever = \"x\"").unwrap_err().to_string();
        assert!(err.contains("/c.toml") && err.contains("sever"), "{err}");
        parse_file(path, "server = 5").unwrap_err();
        parse_file(path, "connect_timeout = \"soon\"").unwrap_err();
        assert_eq!(parse_file(path, "").unwrap(), Layer::default());
    }

    #[test]
    fn which_config_file() {
        let explicit = config_path(Some(Path::new("/x.toml")), env(&[(CONFIG_ENV, "/y.toml")]));
        assert_eq!(explicit, Some(("/x.toml".into(), true)));
        let from_env = config_path(None, env(&[(CONFIG_ENV, "/y.toml"), ("HOME", "/h")]));
        assert_eq!(from_env, Some(("/y.toml".into(), true)));
        let xdg = config_path(None, env(&[("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/h")]));
        assert_eq!(xdg, Some(("/xdg/jobctl/config.toml".into(), false)));
        let home = config_path(None, env(&[("HOME", "/h")]));
        assert_eq!(home, Some(("/h/.config/jobctl/config.toml".into(), false)));
        assert_eq!(config_path(None, env(&[])), None);
    }

    #[test]
    fn missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("none.toml");
        assert_eq!(file_layer(&absent, false).unwrap(), Layer::default());
        file_layer(&absent, true).unwrap_err();
        let present = dir.path().join("c.toml");
        std::fs::write(&present, "server = \"h:1\"\n").unwrap();
        assert_eq!(
            file_layer(&present, false).unwrap().server.as_deref(),
            Some("h:1")
        );
    }
}
