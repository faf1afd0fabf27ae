//! End-to-end tests of `jobctl` and `jobworker-debug`: the real binaries
//! against a real supervisor (and, for `jobctl`, the real gateway), as root.
//! Build the workspace's binaries first: `cargo build --workspace --bins`.

#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

mod common;
mod debug_tool;
mod jobctl;
mod sandbox;
