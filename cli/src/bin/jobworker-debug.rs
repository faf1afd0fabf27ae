//! `jobworker-debug`: the operators' tool that speaks ipc to the supervisor's
//! socket directly. Everything is in the library ([`jobworker_cli::debug`]);
//! this is the edge that prints an error as one line and exits with its code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use jobworker_cli::debug::{self, Cli};
use jobworker_cli::exit;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2 (0 for --help).
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if exit::class_of(&e) != Some(exit::Class::StdoutClosed) {
                eprintln!("jobworker-debug: {e:#}");
            }
            ExitCode::from(exit::code_of(&e))
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let code = runtime.block_on(debug::run(cli))?;
    Ok(code)
}
