//! The supervisor: the root-owned job engine and the Unix-socket service
//! around it.
//!
//! - [`config`]: the TOML configuration, resolved and validated.
//! - [`service`]: the socket, peer credentials, authorization, connections.
//! - [`cgroup`]: finding the cgroup2 mount, our subtree, job cgroups, limits,
//!   usage, kill.
//! - [`sys`]: the raw system calls (clone3 into cgroup and namespaces, fork,
//!   ioctl): the only `unsafe` code of the workspace.
//! - [`fdpass`]: messages that carry fds over a Unix socket.
//! - [`spawner`]: the process that clones every job's init, and its protocol.
//! - [`init`]: the job's init, pid 1 of its namespaces (a clone of the
//!   spawner).
//! - [`handoff`]: the contract between the supervisor and a job's init.
//! - [`engine`]: starting, stopping, watching and reading jobs.
//! - [`atomic`]: atomic file replacement for records.
//! - [`state_lock`]: one supervisor at a time on a state directory.

pub mod atomic;
pub mod cgroup;
pub mod config;
pub mod engine;
pub mod fdpass;
pub mod handoff;
pub mod init;
pub mod service;
pub mod spawner;
pub mod state_lock;
pub mod sys;
