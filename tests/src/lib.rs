//! Helpers for the end-to-end tests of the real binaries.
//!
//! [`vm`] is the library side of the VM test bed (`tests/vm/run`): an ipc
//! client of the real supervisor, readers of the kernel's cgroup files, and
//! the scenarios that the in-guest driver `vm-scenarios` runs. [`bench`] is
//! the benchmark harness behind the `bench` binary (BENCHMARKS.md).
//! For every crate's tests and the bench, [`fixture`] starts the real
//! supervisor and gateway with certificates, [`cleanup`] removes test
//! cgroup subtrees, and [`procs`] reads who a job's processes run as.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cleanup;
pub mod fixture;
pub mod procs;
pub mod vm;
