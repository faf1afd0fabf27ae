//! `vm-scenarios`: the in-guest driver of the VM test bed (`tests/vm/run`).
//!
//! It runs as root inside the qemu guest, next to the real supervisor, waits
//! for the supervisor's socket, runs the scenarios of
//! [`jobworker_tests::vm::scenarios`] and prints one line per scenario for
//! the host to collect:
//!
//! ```text
//! VMRESULT PASS <scenario>: <figures>
//! VMRESULT FAIL <scenario>: <figures> | failed: <check>; <check>
//! VMRESULT DONE <n> passed, <m> failed
//! ```
//!
//! It exits 0 only if every scenario passed.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use jobworker_tests::vm::client::Client;
use jobworker_tests::vm::scenarios::{self, Bed, Outcome};

/// Every scenario, in the order they run. `memory` goes first so that the
/// `jobs` cgroup's lifetime `memory.peak` is its own; `cleanup` goes last.
const SCENARIOS: [&str; 7] = [
    "memory",
    "placement",
    "cpu",
    "io",
    "pids",
    "sandbox",
    "cleanup",
];

/// The longest one scenario may take.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs the VM scenarios against the supervisor.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The supervisor's socket.
    #[arg(long, default_value = "/run/jobworker/supervisor.sock")]
    socket: PathBuf,
    /// The cgroup2 mount point.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_mount: PathBuf,
    /// The supervisor's cgroup root (its `cgroup_root` setting).
    #[arg(long, default_value = "/sys/fs/cgroup/jobworker")]
    cgroup_root: PathBuf,
    /// The MAJ:MIN of the disk holding the supervisor's state directory (and
    /// so the jobs' work directories), which io limits apply to.
    #[arg(long)]
    io_device: String,
    /// Only these scenarios (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// How long to wait for the supervisor to answer, in seconds.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("VMRESULT FAIL driver: {e:#}");
            println!("VMRESULT DONE 0 passed, 1 failed");
            ExitCode::FAILURE
        }
    }
}

/// Runs the selected scenarios; true if all passed.
async fn run(cli: Cli) -> Result<bool> {
    for name in &cli.only {
        if !SCENARIOS.contains(&name.as_str()) {
            bail!("no scenario {name:?}; there are {}", SCENARIOS.join(", "));
        }
    }
    let client = Client::new(&cli.socket);
    let info = client
        .wait_ready(Duration::from_secs(cli.ready_timeout))
        .await?;
    println!(
        "VMINFO supervisor up: protocol {}, caller {}, cgroup root {}, controllers {}",
        info.protocol_version,
        info.caller,
        info.cgroup_root,
        info.controllers.join(" ")
    );
    let bed = Bed {
        client,
        cgroup_mount: cli.cgroup_mount,
        cgroup_root: cli.cgroup_root,
        io_device: cli.io_device,
    };

    let (mut passed, mut failed) = (0, 0);
    for name in SCENARIOS {
        if !cli.only.is_empty() && !cli.only.iter().any(|o| o == name) {
            continue;
        }
        println!("VMINFO running {name}");
        let t = Instant::now();
        let outcome = match tokio::time::timeout(SCENARIO_TIMEOUT, scenario(name, &bed)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome {
                figure: "could not be carried out".into(),
                failures: vec![format!("{e:#}")],
            },
            Err(_) => Outcome {
                figure: "did not finish".into(),
                failures: vec![format!("timed out after {SCENARIO_TIMEOUT:?}")],
            },
        };
        let took = t.elapsed().as_secs_f64();
        if outcome.passed() {
            passed += 1;
            println!("VMRESULT PASS {name}: {} [{took:.1}s]", outcome.figure);
        } else {
            failed += 1;
            println!(
                "VMRESULT FAIL {name}: {} [{took:.1}s] | failed: {}",
                outcome.figure,
                outcome.failures.join("; ")
            );
        }
        // A scenario that failed half-way may leave a job running; stop it
        // so that the next one starts clean (cleanup itself is not helped:
        // it runs last and looks before anything is stopped).
        if name != "cleanup" {
            match scenarios::stop_leftovers(&bed.client).await {
                Ok(ids) if ids.is_empty() => {}
                Ok(ids) => println!("VMINFO stopped jobs left by {name}: {ids:?}"),
                Err(e) => println!("VMINFO could not stop the jobs left by {name}: {e:#}"),
            }
        }
    }
    println!("VMRESULT DONE {passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// Runs one scenario by name.
async fn scenario(name: &str, bed: &Bed) -> Result<Outcome> {
    match name {
        "memory" => scenarios::memory(bed).await,
        "placement" => scenarios::placement(bed).await,
        "cpu" => scenarios::cpu(bed).await,
        "io" => scenarios::io(bed).await,
        "pids" => scenarios::pids(bed).await,
        "sandbox" => scenarios::sandbox(bed).await,
        "cleanup" => scenarios::cleanup(bed).await,
        other => bail!("no scenario {other:?}"),
    }
}
