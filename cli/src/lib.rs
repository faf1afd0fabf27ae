//! `jobctl`, the remote user's tool over mutual TLS, and `jobworker-debug`,
//! the operator's tool that speaks ipc to the supervisor's socket directly.
//!
//! The binaries (`src/bin/`) are thin: they parse the command line, run one
//! of [`jobctl::run`] or [`debug::run`], print an error as one line and exit
//! with the code [`exit`] assigns to it.
//!
//! - [`units`]: CPU, byte and rate quantities as written on command lines.
//! - [`settings`]: the connection settings from flags, `JOBCTL_*` variables
//!   and the config file, in that order of precedence.
//! - [`ids`]: job ids abbreviated to a unique prefix.
//! - [`render`]: jobs shown to people and to scripts (JSON).
//! - [`exit`]: the errors and the exit code of each kind.
//! - [`client`]: the mutual-TLS gRPC connection to the gateway.
//! - [`stream`]: a job's output stream, resumed across lost connections.
//! - [`jobctl`]: `jobctl`'s commands.
//! - [`debug`]: `jobworker-debug`'s commands and its frame tracer.
#![forbid(unsafe_code)]

pub mod client;
pub mod debug;
pub mod exit;
pub mod ids;
pub mod jobctl;
pub mod render;
pub mod settings;
pub mod stream;
pub mod units;
