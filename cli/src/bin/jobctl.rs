//! `jobctl`: runs commands as jobs on a jobworker server over mutual TLS.
//! Everything is in the library ([`jobworker_cli::jobctl`]); this is the
//! edge that prints an error as one line and exits with its code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use jobworker_cli::exit;
use jobworker_cli::jobctl::{self, Cli};

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2 (0 for --help).
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if exit::class_of(&e) != Some(exit::Class::StdoutClosed) {
                eprintln!("jobctl: {e:#}");
            }
            ExitCode::from(exit::code_of(&e))
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let code = runtime.block_on(jobctl::run(cli, |name| std::env::var(name).ok()))?;
    Ok(code)
}
