//! The gateway: the only network-facing process of jobworker. It terminates
//! mutual TLS 1.3 gRPC, takes the caller's identity from the client
//! certificate, gates the call by role and forwards it to the supervisor over
//! its Unix socket, asserting the identity. It never runs as root.
//!
//! - [`config`]: the TOML configuration, resolved and validated.
//! - [`tls`]: the rustls server configuration (TLS 1.3 only, client
//!   certificates required), its files, and reloading them.
//! - [`listener`]: accepting connections, TLS handshakes with a timeout, the
//!   connection limit; the caller's identity from their certificate
//!   (`jobworker_identity`).
//! - [`supervisor`]: the supervisor's client: a connection per output
//!   stream, a small pool for unary calls.
//! - [`fanout`]: one supervisor stream per followed job, shared by its
//!   followers.
//! - [`convert`]: proto <-> ipc messages, ipc errors -> gRPC statuses.
//! - [`service`]: the job service (`jobworker.v1.JobService`), on the
//!   public port and, in fleet mode, the peer port.
//! - [`shares`]: each user's fair share of the supervisor's connections.
//! - [`server`]: the gRPC server with health and reflection, signals.
//! - [`metrics`]: the Prometheus metrics (the gateway's and the
//!   supervisor's) and their plain-HTTP endpoint.
//! - [`privileges`]: dropping root after binding, and checking nothing is
//!   left.
//! - [`fleet`]: fleet mode (opt-in): this host's row and lease in
//!   PostgreSQL, the agent that claims and runs the fleet's jobs here, the
//!   job service's calls over the fleet, and the calls forwarded to the
//!   other hosts' gateways (`jobworker_fleet`).
#![forbid(unsafe_code)]

pub mod config;
pub mod convert;
pub mod fanout;
pub mod fleet;
pub mod listener;
pub mod metrics;
pub mod privileges;
pub mod server;
pub mod service;
pub mod shares;
pub mod supervisor;
pub mod tls;
