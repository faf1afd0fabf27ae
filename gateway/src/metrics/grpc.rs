//! Counting and timing gRPC calls: a tower layer around every service of the
//! gRPC server (the job service, health and reflection), outside the
//! others, so that it sees each call as the client does.
//!
//! - `jobworker_gateway_grpc_requests_total{method,code}` counts a call once
//!   its status is known: in the response's headers (a trailers-only answer:
//!   every refusal), else in its trailers, at the end of the response (for
//!   `StreamOutput`, when the stream ends). A call whose client leaves first
//!   is `CANCELLED`.
//! - `jobworker_gateway_grpc_request_duration_seconds{method}` times a call
//!   from its request to the start of its response (its headers): a unary
//!   call's whole work, and a stream's opening, not its life.
//!
//! `method` is the RPC's name from [`METHODS`], a closed set (a path of no
//! service served here is `unknown`, so no client can add a value); `code`
//! is the gRPC code's canonical name (`OK`, `NOT_FOUND`, ...).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::GatewayMetrics;

/// Every RPC served, by path: the `method` label's values.
pub const METHODS: &[(&str, &str)] = &[
    ("/jobworker.v1.JobService/StartJob", "StartJob"),
    ("/jobworker.v1.JobService/StopJob", "StopJob"),
    ("/jobworker.v1.JobService/GetJob", "GetJob"),
    ("/jobworker.v1.JobService/ListJobs", "ListJobs"),
    ("/jobworker.v1.JobService/StreamOutput", "StreamOutput"),
    ("/jobworker.v1.JobService/ListHosts", "ListHosts"),
    ("/grpc.health.v1.Health/Check", "Check"),
    ("/grpc.health.v1.Health/Watch", "Watch"),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "ServerReflectionInfo",
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "ServerReflectionInfo",
    ),
];

/// The `method` of a path no service here serves.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The `method` label of a request's path.
pub fn method_of(path: &str) -> &'static str {
    METHODS
        .iter()
        .find(|(known, _)| *known == path)
        .map_or(UNKNOWN_METHOD, |(_, method)| method)
}

/// The canonical name of a gRPC code, as the `code` label.
pub const fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The status in `headers` (or trailers), if they hold one.
fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|status| Code::from_bytes(status.as_bytes()))
}

/// The layer: wrap the server's services with it, outermost.
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    metrics: Arc<GatewayMetrics>,
}

impl GrpcMetricsLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: Arc<GatewayMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = Instrumented<S>;

    fn layer(&self, inner: S) -> Instrumented<S> {
        Instrumented {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// A service whose calls are counted and timed.
#[derive(Clone, Debug)]
pub struct Instrumented<S> {
    inner: S,
    metrics: Arc<GatewayMetrics>,
}

impl<S, B, R> Service<http::Request<B>> for Instrumented<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<Observed<R>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        // Counts CANCELLED if dropped before the status is known.
        let mut outcome = Outcome {
            metrics: Arc::clone(&self.metrics),
            method: method_of(request.uri().path()),
            counted: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            outcome
                .metrics
                .grpc_duration(outcome.method, started.elapsed());
            if let Some(code) = status_in(response.headers()) {
                outcome.count(code);
            }
            Ok(response.map(|body| Observed { body, outcome }))
        })
    }
}

/// A call's count, made once.
#[derive(Debug)]
struct Outcome {
    metrics: Arc<GatewayMetrics>,
    method: &'static str,
    counted: bool,
}

impl Outcome {
    fn count(&mut self, code: Code) {
        if !self.counted {
            self.counted = true;
            self.metrics.grpc_call(self.method, code_name(code));
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.count(Code::Cancelled);
    }
}

/// A response body that counts its call when its trailers pass.
#[derive(Debug)]
pub struct Observed<B> {
    body: B,
    outcome: Outcome,
}

impl<B: Body + Unpin> Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.outcome
                        .count(status_in(trailers).unwrap_or(Code::Unknown));
                }
            }
            // The body broke, or ended without a status.
            Poll::Ready(Some(Err(_)) | None) => this.outcome.count(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Every method of the services the server adds, from their own
    /// descriptors: a new RPC must get its label here.
    #[test]
    fn every_served_method_has_a_label() {
        let mut served = Vec::new();
        for set in [
            jobworker_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set).unwrap();
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        served.push(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        assert!(served.len() >= 7, "{served:?}");
        for path in &served {
            let method = method_of(path);
            assert_ne!(method, UNKNOWN_METHOD, "{path} has no method label");
            assert!(path.ends_with(&format!("/{method}")), "{path}: {method}");
        }
        assert_eq!(method_of("/jobworker.v1.JobService/Nope"), UNKNOWN_METHOD);
        assert_eq!(method_of("/x/StartJob"), UNKNOWN_METHOD);
    }

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(code_name(Code::from_bytes(b"0")), "OK");
        assert_eq!(code_name(Code::from_bytes(b"5")), "NOT_FOUND");
        assert_eq!(code_name(Code::from_bytes(b"8")), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::from_bytes(b"16")), "UNAUTHENTICATED");
        assert_eq!(code_name(Code::from_bytes(b"nonsense")), "UNKNOWN");
    }
}
