//! `jobctl`, the remote user's tool over mTLS, and `jobworker-debug`, the
//! operator's tool that speaks ipc to the supervisor socket directly. Built in
//! the CLI issue.
#![forbid(unsafe_code)]
