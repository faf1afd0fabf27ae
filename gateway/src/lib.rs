//! The gateway: terminates mTLS gRPC, derives the caller's identity from the
//! client certificate, authorizes the call and forwards it to the supervisor.
//! It never runs as root. Built in the gateway issue.
#![forbid(unsafe_code)]
