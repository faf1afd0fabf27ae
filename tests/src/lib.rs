//! Helpers for the end-to-end tests of the real binaries.
//!
//! [`vm`] is the library side of the VM test bed (`tests/vm/run`): an ipc
//! client of the real supervisor, readers of the kernel's cgroup files, and
//! the scenarios that the in-guest driver `vm-scenarios` runs.
#![forbid(unsafe_code)]

pub mod vm;
