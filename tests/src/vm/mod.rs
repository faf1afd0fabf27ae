//! The VM test bed's in-guest side: it runs inside a qemu guest whose
//! kernel has cgroup2 as its only hierarchy, next to the real supervisor,
//! and proves the limits on what the kernel reports.
//!
//! [`client`] speaks the real ipc protocol to the supervisor's socket,
//! [`kernel`] reads cgroup files, `/proc` and the kernel log directly, and
//! [`scenarios`] holds the two against each other. `tests/vm/run` builds the
//! guest and starts the `vm-scenarios` binary in it.

pub mod client;
pub mod kernel;
pub mod scenarios;
