//! `jobworker-supervisor`: the root-owned job supervisor.
//!
//! `jobworker-supervisor init` is the job's init, exec'd by the supervisor
//! inside each job's namespaces; it is not meant to be run by hand. Serving
//! the Unix socket arrives with the service issue.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("init") => jobworker_supervisor::init::main(),
        _ => {
            eprintln!(
                "usage: jobworker-supervisor init   (the job init, started by the supervisor itself)"
            );
            ExitCode::from(2)
        }
    }
}
