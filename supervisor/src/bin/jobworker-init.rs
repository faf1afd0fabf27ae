//! `jobworker-init`: the job's init (see `jobworker_supervisor::init`),
//! exec'd by the supervisor inside each job's namespaces; not meant to be
//! run by hand.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    jobworker_supervisor::init::main()
}
