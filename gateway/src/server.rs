//! Serving: the job service, health (`grpc.health.v1`) and reflection on one
//! port behind the same mTLS, over the connections of [`crate::listener`].
//! SIGHUP reloads the TLS files ([`crate::tls::Reloadable`]); SIGTERM and
//! SIGINT stop accepting, end every output stream at once with UNAVAILABLE
//! saying where to resume (a client like `jobctl` resumes from there, on
//! this gateway's successor), let unary calls in progress finish for up to
//! [`SHUTDOWN_GRACE`], then end. Health follows the supervisor's
//! reachability: NOT_SERVING while the last attempt to reach it failed.
//! Every call is counted and timed ([`crate::metrics::grpc`]); with
//! `metrics_listen`, the metrics endpoint ([`crate::metrics::endpoint`])
//! serves beside, until the end.

use std::sync::Arc;
use std::time::Duration;

use jobworker_proto::services::{self, JOB_SERVICE_NAME};
use jobworker_proto::v1::job_service_server::JobServiceServer;
use tokio::signal::unix::{SignalKind, signal};
use tonic::codegen::http;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::Config;
use crate::fanout::Fanout;
use crate::fleet::Fleet;
use crate::fleet::peers::PeerTls;
use crate::listener::{self, AcceptLimits};
use crate::metrics::grpc::GrpcMetricsLayer;
use crate::metrics::{Metrics, endpoint};
use crate::service::{JobService, Port};
use crate::shares::ShareLimits;
use crate::supervisor::{PoolLimits, Supervisor};
use crate::tls::Reloadable;

/// How long calls in progress (streams that follow a job, say) may go on
/// after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// HTTP/2 keepalive pings, so that a vanished client's streams end.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Installing a signal handler failed.
    #[error("installing the {0} handler: {1}")]
    Signal(&'static str, std::io::Error),
    /// The listening socket could not be used.
    #[error("using the listening socket: {0}")]
    Listener(std::io::Error),
    /// The reflection service could not be built.
    #[error("building the reflection service: {0}")]
    Reflection(String),
    /// The gRPC server failed.
    #[error("serving gRPC: {0}")]
    Transport(String),
    /// The fleet's database pool could not be made.
    #[error("making the fleet's database pool: {0}")]
    FleetPool(#[from] deadpool_postgres::BuildError),
}

/// The sockets the gateway serves, bound before it dropped root.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC port (`listen`).
    pub grpc: std::net::TcpListener,
    /// The metrics endpoint (`metrics_listen`), if configured.
    pub metrics: Option<std::net::TcpListener>,
    /// A fleet's peer port (`fleet.peer_listen`), if configured.
    pub peer: Option<std::net::TcpListener>,
}

/// Serves on `listeners` until SIGTERM or SIGINT; in fleet mode, reaches
/// the other hosts' gateways with `peer_tls`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    tls: Arc<Reloadable>,
    peer_tls: Option<PeerTls>,
) -> Result<(), ServeError> {
    // First, so that a signal is never met with the default action.
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| ServeError::Signal("SIGHUP", e))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| ServeError::Signal("SIGTERM", e))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| ServeError::Signal("SIGINT", e))?;

    let listener =
        tokio::net::TcpListener::from_std(listeners.grpc).map_err(ServeError::Listener)?;
    let address = listener.local_addr().map_err(ServeError::Listener)?;
    let metrics = Arc::new(Metrics::new());
    let supervisor = Arc::new(Supervisor::new(
        config.file.supervisor_socket.clone(),
        config.supervisor_connect_timeout,
        PoolLimits {
            max_unary_calls: config.file.max_unary_calls,
            max_stop_calls: config.file.max_stop_calls,
            max_output_streams: config.file.max_output_streams,
            max_idle: config.file.max_idle_supervisor_connections,
            per_user: ShareLimits {
                streams: config.file.max_output_streams_per_user,
                calls: config.file.max_unary_calls_per_user,
            },
        },
        metrics.gateway().supervisor_reconnects(),
    ));
    if let Some(metrics_listener) = listeners.metrics {
        let metrics_listener =
            tokio::net::TcpListener::from_std(metrics_listener).map_err(ServeError::Listener)?;
        let metrics_address = metrics_listener
            .local_addr()
            .map_err(ServeError::Listener)?;
        tokio::spawn(endpoint::serve(
            metrics_listener,
            Arc::clone(&metrics),
            Arc::clone(&supervisor),
        ));
        tracing::info!(
            "serving metrics on http://{metrics_address}{}",
            endpoint::PATH
        );
    }
    let max_request = config.file.max_request_bytes;
    let (reporter, health) = services::health(ServingStatus::Serving).await;
    let health = health.max_decoding_message_size(max_request);
    tokio::spawn(follow_health(reporter, supervisor.reachability()));
    let reflection = services::reflection()
        .map_err(|e| ServeError::Reflection(e.to_string()))?
        .max_decoding_message_size(max_request);
    let reflection_v1alpha = services::reflection_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?
        .max_decoding_message_size(max_request);

    let reloading = Arc::clone(&tls);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match reloading.reload() {
                Ok(()) => tracing::info!("SIGHUP: reloaded the certificate, key and client CA"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "SIGHUP: reloading the TLS files failed; keeping the ones in use"
                ),
            }
        }
    });

    let limits = AcceptLimits {
        handshake_timeout: config.handshake_timeout,
        max_connections: config.file.max_connections,
        max_handshakes: config.file.max_handshakes,
        max_handshakes_per_ip: config.file.max_handshakes_per_ip,
    };
    let incoming = listener::incoming(
        listener,
        Arc::clone(&tls),
        limits,
        Arc::clone(metrics.gateway()),
    );
    let (stopping, stopping_seen) = tokio::sync::watch::channel(false);
    let fanout = Arc::new(Fanout::default());
    let fleet = config
        .fleet
        .clone()
        .map(|fleet| Fleet::start(fleet, Arc::clone(&supervisor), peer_tls))
        .transpose()?;
    if let Some(peer_listener) = listeners.peer {
        let peer_listener =
            tokio::net::TcpListener::from_std(peer_listener).map_err(ServeError::Listener)?;
        let peer_address = peer_listener.local_addr().map_err(ServeError::Listener)?;
        let peer_incoming =
            listener::incoming(peer_listener, tls, limits, Arc::clone(metrics.gateway()));
        let peers = JobServiceServer::new(JobService::new(
            Port::Peer,
            Arc::clone(&supervisor),
            Arc::clone(&fanout),
            stopping_seen.clone(),
            fleet.clone(),
        ))
        .max_decoding_message_size(max_request);
        let mut stopped = stopping_seen.clone();
        tokio::spawn(
            Server::builder()
                .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
                .add_service(peers)
                .serve_with_incoming_shutdown(peer_incoming, async move {
                    let _ = stopped.wait_for(|stopping| *stopping).await;
                }),
        );
        tracing::info!("serving the fleet's peer port on {peer_address}");
    }
    let jobs = JobServiceServer::new(JobService::new(
        Port::Public,
        supervisor,
        fanout,
        stopping_seen,
        fleet,
    ))
    .max_decoding_message_size(max_request);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = Server::builder()
        // Outermost, so that it sees the status the client gets.
        .layer(GrpcMetricsLayer::new(Arc::clone(metrics.gateway())))
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted as fn(_) -> _,
        ))
        .max_concurrent_streams(Some(config.file.max_concurrent_streams))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(jobs)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha);
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        // A dropped sender stops the server too.
        let _ = stopped.await;
    }));
    tracing::info!("listening on {address}");

    let served = tokio::select! {
        served = &mut server => served,
        _ = terminate.recv() => shut_down(&stopping, stop, server, "SIGTERM").await,
        _ = interrupt.recv() => shut_down(&stopping, stop, server, "SIGINT").await,
    };
    match served {
        Ok(result) => result.map_err(|e| ServeError::Transport(e.to_string())),
        Err(e) => Err(ServeError::Transport(e.to_string())),
    }
}

type Served = Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>;

async fn shut_down(
    stopping: &tokio::sync::watch::Sender<bool>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    signal: &str,
) -> Served {
    tracing::info!("{signal}: shutting down");
    // Streams first: they would otherwise follow their jobs to the grace's
    // end and be cut without a status.
    stopping.send_replace(true);
    let _ = stop.send(());
    let abort = server.abort_handle();
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(served) => served,
        Err(_) => {
            tracing::info!(grace = ?SHUTDOWN_GRACE, "calls still open after the grace period are cut");
            abort.abort();
            Ok(Ok(()))
        }
    }
}

/// Keeps the health status in step with the supervisor's reachability.
async fn follow_health(
    reporter: HealthReporter,
    mut reachable: tokio::sync::watch::Receiver<bool>,
) {
    while reachable.changed().await.is_ok() {
        let status = if *reachable.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status(JOB_SERVICE_NAME, status).await;
        reporter.set_service_status("", status).await;
    }
}

/// tonic answers a request over `max_request_bytes` with OUT_OF_RANGE; gRPC's
/// status code table gives message size limits to RESOURCE_EXHAUSTED, which
/// is what clients and their retry policies expect. The refusal is a
/// trailers-only response, so its status is in the headers.
fn oversized_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    // tonic's message, percent-encoded as it is on the wire.
    const TOO_LARGE: &[u8] = b"Error,%20decoded%20message%20length%20too%20large";
    let headers = response.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .is_some_and(|message| message.as_bytes().starts_with(TOO_LARGE));
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
