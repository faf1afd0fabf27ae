//! `jobworker-init`: the spawner of jobs' inits (see
//! `jobworker_supervisor::spawner`), exec'd by the supervisor; each job's
//! init is a clone of it. Not meant to be run by hand.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    jobworker_supervisor::spawner::main()
}
