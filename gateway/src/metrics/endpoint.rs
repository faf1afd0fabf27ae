//! The metrics endpoint: plain HTTP/1.1 (hyper) on `metrics_listen`, bound
//! with the gRPC port before the gateway drops root. `GET /metrics` answers
//! the exposition (OpenMetrics text), after asking the supervisor for its
//! figures (at most [`SUPERVISOR_WITHIN`]); any other path is 404, another
//! method on `/metrics` 405. At most [`MAX_CONNECTIONS`] connections at once
//! (more are closed at accept), each with [`HEADER_TIMEOUT`] to send its
//! request's headers: the endpoint is for a Prometheus server or two, and
//! holds up nothing else of the gateway.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use jobworker_ipc::{Request as IpcRequest, Response as Ipc, SupervisorMetrics};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{CONTENT_TYPE, Metrics};
use crate::supervisor::Supervisor;

/// The path of the exposition.
pub const PATH: &str = "/metrics";

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a scrape waits for the supervisor's figures (Prometheus' own
/// scrape timeout is 10 s by default).
pub const SUPERVISOR_WITHIN: Duration = Duration::from_secs(5);

/// What a scrape reads.
struct Exposition {
    metrics: Arc<Metrics>,
    supervisor: Arc<Supervisor>,
}

/// Serves the endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, supervisor: Arc<Supervisor>) {
    let exposition = Arc::new(Exposition {
        metrics,
        supervisor,
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, "metrics connection refused: {MAX_CONNECTIONS} are open");
            continue;
        };
        let exposition = Arc::clone(&exposition);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let exposition = Arc::clone(&exposition);
                let route = Route::of(&request);
                async move { Ok::<_, Infallible>(route.answer(&exposition).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "metrics connection");
            }
            drop(slot);
        });
    }
}

/// What a request asks for.
enum Route {
    Metrics,
    NotFound,
    OnlyGet,
}

impl Route {
    fn of(request: &Request<Incoming>) -> Self {
        if request.uri().path() != PATH {
            Self::NotFound
        } else if request.method() != Method::GET {
            Self::OnlyGet
        } else {
            Self::Metrics
        }
    }

    async fn answer(self, exposition: &Exposition) -> Response<Full<Bytes>> {
        match self {
            Self::NotFound => plain(
                StatusCode::NOT_FOUND,
                "not found: the metrics are at /metrics\n",
            ),
            Self::OnlyGet => {
                let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
                response
                    .headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
                response
            }
            Self::Metrics => {
                let snapshot = supervisor_figures(&exposition.supervisor).await;
                let text = exposition.metrics.render(snapshot);
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(CONTENT_TYPE),
                );
                response
            }
        }
    }
}

/// The supervisor's figures, or `None` (logged) if it gives none in time.
async fn supervisor_figures(supervisor: &Supervisor) -> Option<SupervisorMetrics> {
    match tokio::time::timeout(SUPERVISOR_WITHIN, supervisor.call_own(IpcRequest::Metrics)).await {
        Ok(Ok(Ipc::Metrics(metrics))) => Some(*metrics),
        // The pool logs an unreachable supervisor, once.
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "scrape: the supervisor's figures are missing");
            None
        }
        Ok(Ok(Ipc::Error(e))) => {
            tracing::warn!(
                error = %e,
                "scrape: the supervisor refused the gateway's metrics request (is this \
                 gateway's account its gateway_user, and is it as new as the gateway?)"
            );
            None
        }
        Ok(Ok(other)) => {
            tracing::warn!(
                answer = other.name(),
                "scrape: the supervisor answered the metrics request out of protocol"
            );
            None
        }
        Err(_) => {
            tracing::warn!(
                within = ?SUPERVISOR_WITHIN,
                "scrape: the supervisor's figures did not come in time"
            );
            None
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
