//! The daemons' log, set up the same way in both: lines on stderr without
//! colours (journald adds the time, the unit and the priority), filtered by
//! `RUST_LOG`, `info` when it is unset or invalid.

/// Installs the log for the rest of the process. Call it once, early.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr on a full disk) is
        // lost, not reported with eprintln!, which panics when stderr fails
        // and so would end the task that logged (a connection, a call).
        .log_internal_errors(false)
        .init();
}
