//! `jobworker-gateway`: the mTLS gRPC front door of jobworker.
//!
//! It reads its configuration and its TLS files and binds its port and its
//! metrics port if any (as root if it was started as root), drops to its unprivileged account before
//! accepting any connection, and serves until SIGTERM or SIGINT. SIGHUP
//! reloads the TLS files. `--check-config` validates the configuration and
//! the TLS files, prints the effective values, and exits.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use jobworker_gateway::config::{self, Config};
use jobworker_gateway::fleet::peers::PeerTls;
use jobworker_gateway::server::Listeners;
use jobworker_gateway::tls::{self, Reloadable, TlsFiles};
use jobworker_gateway::{privileges, server};

/// The jobworker gateway: serves the job service over gRPC with mutual TLS
/// 1.3 and forwards each authorized call to the supervisor.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Validate the configuration and the TLS files, print the effective
    /// values, and exit.
    #[arg(long)]
    check_config: bool,
}

/// The allocator: jemalloc, with background threads that give memory freed
/// after a burst (streams, jobs) back to the system within seconds
/// (BENCHMARKS.md, "Memory that comes back").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Raises the soft limit on open files to the hard one (systemd's default
/// soft limit, 1024, is below what the default maxima may hold open) and
/// logs it against what the configuration may hold open at once: one file
/// per client connection and per handshake under way, per output stream's,
/// unary call's and stop's supervisor connection, per idle pooled one, and
/// a margin for the listeners, the metrics endpoint, the TLS files and the
/// runtime.
fn raise_fd_limit(config: &Config) {
    const MARGIN: usize = 64;
    let file = &config.file;
    let needed = file.max_connections
        + file.max_handshakes
        + file.max_output_streams
        + file.max_unary_calls
        + file.max_stop_calls
        + file.max_idle_supervisor_connections
        + MARGIN;
    let limit = match jobworker_config::raise_open_files_limit() {
        Ok(files) => files.limit,
        Err(e) => {
            tracing::warn!(error = %e, "reading the open files limit");
            return;
        }
    };
    if usize::try_from(limit).is_ok_and(|limit| limit < needed) {
        tracing::warn!(
            limit,
            needed,
            "the open files limit is below what max_connections, max_handshakes, \
             max_output_streams, max_unary_calls, max_stop_calls and \
             max_idle_supervisor_connections may hold open: raise LimitNOFILE (or ulimit -n), \
             or lower them"
        );
    } else {
        tracing::info!(limit, needed, "open files limit");
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobworker-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    let files = TlsFiles {
        server_cert: config.file.server_cert.clone(),
        server_key: config.file.server_key.clone(),
        client_ca: config.file.client_ca.clone(),
    };
    if cli.check_config {
        tls::load(&files).context("checking the TLS files")?;
        print!("{}", config.describe());
        return Ok(());
    }
    jobworker_config::logging::init();

    // As started (root, usually): the key may be readable by root only, and
    // the ports may be privileged.
    let tls = Arc::new(Reloadable::load(files).context("loading the TLS files")?);
    let listeners = Listeners {
        grpc: bind(config.listen, "listen")?,
        metrics: config
            .metrics_listen
            .map(|address| bind(address, "metrics_listen"))
            .transpose()?,
        peer: config
            .fleet
            .as_ref()
            .and_then(|fleet| fleet.peer_listen)
            .map(|address| bind(address, "fleet.peer_listen"))
            .transpose()?,
    };
    let mut config = config;
    if let (Some(fleet), Some(peer)) = (config.fleet.as_mut(), &listeners.peer)
        && fleet.peer_address.is_none()
    {
        // Its own address (a port 0 is bound by now).
        let bound = peer
            .local_addr()
            .context("reading the peer port's address")?;
        fleet.peer_address = Some(bound.to_string());
    }
    let peer_tls = config
        .fleet
        .as_ref()
        .and_then(|fleet| fleet.peer_client.as_ref())
        .map(PeerTls::load)
        .transpose()?;

    // Still one thread: the switch applies to the whole process.
    let running =
        privileges::drop_privileges(config.run_as.as_ref()).context("dropping privileges")?;
    tracing::info!(
        uid = running.uid,
        gid = running.gid,
        switched_from_root = running.switched,
        "running unprivileged"
    );
    raise_fd_limit(&config);
    for (path, e) in tls.unreadable() {
        tracing::warn!(
            file = %path.display(),
            error = %e,
            "the gateway's account cannot read this file, so reloading on SIGHUP will fail \
             until it can (make the TLS files readable by the gateway's user)"
        );
    }

    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(server::run(config, listeners, tls, peer_tls))?;
    tracing::info!("stopped");
    Ok(())
}

/// A non-blocking listening socket on `address`, the value of `key`.
fn bind(address: SocketAddr, key: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("binding {address} (`{key}`)"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("making the listening socket of `{key}` non-blocking"))?;
    Ok(listener)
}
