//! `bench`: the benchmark harness of jobworker (BENCHMARKS.md).
//!
//! Run as root, after `cargo build --release --workspace --bins`:
//!
//! ```text
//! cargo run --release -p jobworker-tests --bin bench -- [--only start,control,throughput,streaming,footprint,followers,fleet]
//! ```
//!
//! It starts the real supervisor and gateway (their binaries next to its
//! own, in `target/release/`), measures each figure against its baseline in
//! the same run, and prints the machine and a Markdown table: median, p99
//! and the ratio of each median to its baseline's median.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use jobworker_tests::bench::report::{self, Report};
use jobworker_tests::bench::{Options, figures};
use tokio::signal::unix::{SignalKind, signal};

/// Every figure, in the order they run.
const FIGURES: [&str; 7] = [
    "start",
    "control",
    "throughput",
    "streaming",
    "footprint",
    "followers",
    "fleet",
];

/// Benchmarks the real supervisor and gateway against floors and peers.
#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// The figures to run, comma-separated: start, control, throughput,
    /// streaming, footprint, followers, fleet. All when unset.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Samples per start-latency measurement.
    #[arg(long, default_value_t = 100)]
    start_samples: usize,
    /// Samples per control-plane measurement.
    #[arg(long, default_value_t = 2000)]
    control_samples: usize,
    /// Seconds per throughput level.
    #[arg(long, default_value_t = 5)]
    throughput_secs: u64,
    /// Concurrent clients of the throughput levels.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    throughput_clients: Vec<usize>,
    /// MiB the streaming job writes with 0 or 1 follower.
    #[arg(long, default_value_t = 1024)]
    stream_mib: u64,
    /// MiB the streaming job writes in the fan-out runs.
    #[arg(long, default_value_t = 256)]
    fanout_mib: u64,
    /// Follower counts of the fan-out runs.
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    fanout_followers: Vec<usize>,
    /// Finished jobs on record for the footprint figure.
    #[arg(long, default_value_t = 1000)]
    footprint_jobs: usize,
    /// Concurrent streams for the footprint figure.
    #[arg(long, default_value_t = 256)]
    footprint_streams: usize,
    /// Followers of the steady writer in the followers figure.
    #[arg(long, default_value_t = 100)]
    steady_followers: usize,
}

async fn run(cli: Cli) -> Result<()> {
    if !nix_is_root() {
        bail!("the bench starts the supervisor, which must run as root: run it as root");
    }
    for name in &cli.only {
        if !FIGURES.contains(&name.as_str()) {
            bail!(
                "unknown figure {name:?}: choose from {}",
                FIGURES.join(", ")
            );
        }
    }
    let files = tempfile::Builder::new()
        .prefix("jobworker-bench-")
        .tempdir()
        .context("creating the run's directory")?;
    let options = Options {
        start_samples: cli.start_samples,
        control_samples: cli.control_samples,
        throughput_secs: cli.throughput_secs,
        throughput_clients: cli.throughput_clients,
        stream_bytes: cli.stream_mib << 20,
        fanout_bytes: cli.fanout_mib << 20,
        fanout_followers: cli.fanout_followers,
        footprint_jobs: cli.footprint_jobs,
        footprint_streams: cli.footprint_streams,
        steady_followers: cli.steady_followers,
        files_in: files.path().to_path_buf(),
    };
    let selected = |name: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == name);
    let mut report = Report::default();
    let began = Instant::now();
    let load_before = report::load_average();
    for figure in FIGURES {
        if !selected(figure) {
            continue;
        }
        let start = Instant::now();
        eprintln!("bench: running {figure}...");
        match figure {
            "start" => figures::start::run(&options, &mut report).await?,
            "control" => figures::control::run(&options, &mut report).await?,
            "throughput" => figures::throughput::run(&options, &mut report).await?,
            "streaming" => figures::streaming::run(&options, &mut report).await?,
            "footprint" => figures::footprint::run(&options, &mut report).await?,
            "followers" => figures::followers::run(&options, &mut report).await?,
            _ => figures::fleet::run(&options, &mut report).await?,
        }
        eprintln!(
            "bench: {figure} took {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    println!("## Machine\n\n{}", report::machine());
    println!(
        "- load average (1, 5, 15 min) at the start: {load_before}; at the end: {}\n",
        report::load_average()
    );
    println!("## Results\n");
    println!(
        "ratio = this row's median / its baseline's median (latencies: lower is better; rates: higher is better). Whole run: {:.0} s.\n",
        began.elapsed().as_secs_f64()
    );
    print!("{}", report.markdown());
    Ok(())
}

/// Whether this process runs as root (read from /proc, no unsafe).
fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C or SIGTERM (a `timeout`, a CI job's end) the run is
    // dropped, and with it every stack: the supervisor and gateway are
    // killed and the cgroup subtrees removed.
    let outcome = runtime.block_on(async {
        let mut terminate = match signal(SignalKind::terminate()) {
            Ok(terminate) => terminate,
            Err(e) => return Err(anyhow::anyhow!("listening for SIGTERM: {e}")),
        };
        tokio::select! {
            outcome = run(cli) => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; cleaned up")),
            _ = terminate.recv() => Err(anyhow::anyhow!("terminated; cleaned up")),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
