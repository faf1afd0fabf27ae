//! Reading a jobworker configuration file, the supervisor's and the
//! gateway's alike: TOML, every key known (the caller's types deny unknown
//! fields), and one error type whose message names the file, and the key
//! when a value cannot be used ([`ConfigError`]), and the accounts and
//! groups a file names by name or number ([`user`], [`group`]). What each
//! daemon's keys mean and how they are checked stays with that daemon.
//! Beside it, the other things both daemons do at start the same way:
//! raising their limit on open files ([`open_files`]) and setting up their
//! log ([`logging`]).

#![forbid(unsafe_code)]

pub mod logging;
pub mod open_files;

pub use open_files::{OpenFiles, raise_open_files_limit};

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{Group, Uid, User};
use serde::de::DeserializeOwned;

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading the configuration {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the
    /// wrong type (toml's message names the key and the line).
    #[error("in {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A key has a value that cannot be used.
    #[error("in {}: `{key}`: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, dotted (e.g. `max_limits.memory_bytes`).
        key: String,
        /// Why.
        reason: String,
    },
}

/// Reads and parses the file at `path`.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses `text`, read from `path` (for messages). An error says where
/// (line and column) and what, never the text of the line: it may hold a
/// secret (a database password).
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let place = e.span().map_or_else(String::new, |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            // The key the line sets, if any: never its value.
            let key = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(key, _)| format!(" (key {})", key.trim()))
                .unwrap_or_default();
            format!("line {line}, column {column}{key}: ")
        });
        ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!("{place}{}", e.message().trim_end()),
        }
    })
}

/// The error of a key of `path` whose value cannot be used: `(key, why)`.
pub fn invalid(path: &Path) -> impl Fn((&str, String)) -> ConfigError + Copy + '_ {
    move |(key, reason)| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.to_owned(),
        reason,
    }
}

/// `value` milliseconds of key `key`, which must be more than none.
pub fn positive_millis(key: &str, value: u64) -> Result<Duration, (&str, String)> {
    if value == 0 {
        Err((key, "must be greater than 0".into()))
    } else {
        Ok(Duration::from_millis(value))
    }
}

/// The account a key names, by name or number.
pub fn user(name: &str) -> Result<User, String> {
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    };
    found
        .map_err(|e| format!("looking up user {name:?}: {e}"))?
        .ok_or_else(|| format!("no such user {name:?}"))
}

/// The gid of the group a key names, by name or number.
pub fn group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    Group::from_name(name)
        .map_err(|e| format!("looking up group {name:?}: {e}"))?
        .map(|group| group.gid.as_raw())
        .ok_or_else(|| format!("no such group {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[expect(dead_code, reason = "only parsed")]
        timeout_ms: u64,
    }

    #[test]
    fn every_error_names_the_file_and_the_key() {
        let path = Path::new("/etc/jobworker/x.toml");
        let read = read::<File>(Path::new("/no/such/file.toml")).unwrap_err();
        assert!(
            read.to_string()
                .starts_with("reading the configuration /no/such/file.toml: ")
        );
        let parse = parse::<File>(path, "timeout_ms = 1\nother = 2").unwrap_err();
        assert!(
            parse.to_string().starts_with("in /etc/jobworker/x.toml: "),
            "{parse}"
        );
        assert!(parse.to_string().contains("other"), "{parse}");
        // Where and what, never the line itself (it may hold a password).
        let syntax =
            super::parse::<File>(path, "timeout_ms = 1\nurl = \"password=s3cret").unwrap_err();
        let text = syntax.to_string();
        assert!(text.contains("line 2, column "), "{text}");
        assert!(text.contains("(key url)"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let zero = positive_millis("timeout_ms", 0)
            .map_err(invalid(path))
            .unwrap_err();
        assert_eq!(
            zero.to_string(),
            "in /etc/jobworker/x.toml: `timeout_ms`: must be greater than 0"
        );
        assert_eq!(
            positive_millis("timeout_ms", 5),
            Ok(Duration::from_millis(5))
        );
    }

    #[test]
    fn accounts_by_name_or_number() {
        assert_eq!(user("root").unwrap().uid.as_raw(), 0);
        assert_eq!(user("0").unwrap().name, "root");
        assert_eq!(
            user("no-such-user-here").unwrap_err(),
            "no such user \"no-such-user-here\""
        );
        assert_eq!(group("root"), Ok(0));
        assert_eq!(group("4242"), Ok(4242));
        assert_eq!(
            group("no-such-group-here").unwrap_err(),
            "no such group \"no-such-group-here\""
        );
    }
}
