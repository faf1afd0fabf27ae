//! The gateway's Prometheus metrics: its own figures, counted where they
//! happen, and the supervisor's, fetched over ipc at each scrape (the
//! supervisor opens no network port); served as OpenMetrics text on `GET
//! /metrics` of a plain-HTTP listener of their own (`metrics_listen`, off by
//! default).
//!
//! - [`Metrics`]: the gateway's registry and the exposition of a scrape.
//! - [`supervisor`]: the supervisor's figures at one scrape, as a
//!   prometheus-client collector (`jobworker_jobs_*`, `jobworker_job_*`,
//!   `jobworker_output_*`, `jobworker_supervisor_*`).
//! - [`grpc`]: the tower layer that counts and times every gRPC call.
//! - [`endpoint`]: the HTTP listener.
//!
//! The gateway's own (`jobworker_gateway_*`): gRPC calls by method and code
//! and their durations ([`grpc`]), connections refused before any call by
//! why ([`AuthFailure`]) or by a limit ([`Rejection`]) (the listener), the
//! supervisor's reconnections ([`crate::supervisor`]) and the build. Every
//! label takes its values from a closed set: no job id, no user name, no
//! address. The handles are prometheus-client's atomics behind `Arc`s.

pub mod endpoint;
pub mod grpc;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use jobworker_ipc::SupervisorMetrics;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The Content-Type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The upper bounds, in seconds, of the gRPC duration histogram's buckets
/// (a stop waits out the job's grace period: 5 s by default).
pub const GRPC_SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why a connection was dropped before it could make a call: the `kind`
/// label of `jobworker_gateway_auth_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// The TLS handshake failed for another reason (not TLS 1.3, no common
    /// suite, not TLS at all, the client hung up).
    TlsHandshake,
    /// The client presented no certificate.
    NoClientCertificate,
    /// The client's certificate was refused (not from the client CA,
    /// expired, malformed).
    BadClientCertificate,
    /// The handshake did not complete within `handshake_timeout_ms`.
    HandshakeTimeout,
    /// The certificate names no usable identity (its CN is not a user name,
    /// its role extension is missing, unknown or repeated): its calls are
    /// refused.
    BadIdentity,
}

impl AuthFailure {
    /// Every kind.
    pub const ALL: [Self; 5] = [
        Self::TlsHandshake,
        Self::NoClientCertificate,
        Self::BadClientCertificate,
        Self::HandshakeTimeout,
        Self::BadIdentity,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TlsHandshake => "tls_handshake",
            Self::NoClientCertificate => "no_client_certificate",
            Self::BadClientCertificate => "bad_client_certificate",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::BadIdentity => "bad_identity",
        }
    }
}

/// The limit a connection was refused by at accept: the `limit` label of
/// `jobworker_gateway_connections_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// `max_connections` authenticated connections were open.
    MaxConnections,
    /// A handshake still under way was dropped for a newer connection:
    /// `max_handshakes` were under way.
    MaxHandshakes,
    /// The same, `max_handshakes_per_ip` from its address.
    MaxHandshakesPerIp,
    /// An authenticated connection sent no HTTP/2 preface in time.
    NoPreface,
}

impl Rejection {
    /// Every limit.
    pub const ALL: [Self; 4] = [
        Self::MaxConnections,
        Self::MaxHandshakes,
        Self::MaxHandshakesPerIp,
        Self::NoPreface,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxHandshakes => "max_handshakes",
            Self::MaxHandshakesPerIp => "max_handshakes_per_ip",
            Self::NoPreface => "http2_preface_timeout",
        }
    }
}

/// One label, with a value of a closed set.
type Label = [(&'static str, &'static str); 1];

/// The gateway's own figures, shared by the parts that count them.
#[derive(Debug)]
pub struct GatewayMetrics {
    grpc_requests: Family<[(&'static str, &'static str); 2], Counter>,
    grpc_duration: Family<Label, Histogram, fn() -> Histogram>,
    auth_failures: Family<Label, Counter>,
    connections_rejected: Family<Label, Counter>,
    supervisor_reconnects: Counter,
}

impl GatewayMetrics {
    /// Counts a connection dropped for `kind`.
    pub fn auth_failure(&self, kind: AuthFailure) {
        self.auth_failures
            .get_or_create(&[("kind", kind.as_str())])
            .inc();
    }

    /// Counts a connection refused by `limit`.
    pub fn rejected(&self, limit: Rejection) {
        self.connections_rejected
            .get_or_create(&[("limit", limit.as_str())])
            .inc();
    }

    /// The counter of the supervisor client's reconnections.
    pub fn supervisor_reconnects(&self) -> Counter {
        self.supervisor_reconnects.clone()
    }

    /// Counts a gRPC call of `method` that ended with `code` (both from
    /// closed sets: see [`grpc`]).
    fn grpc_call(&self, method: &'static str, code: &'static str) {
        self.grpc_requests
            .get_or_create(&[("method", method), ("code", code)])
            .inc();
    }

    /// Records how long a call of `method` took to start its response.
    fn grpc_duration(&self, method: &'static str, took: Duration) {
        self.grpc_duration
            .get_or_create(&[("method", method)])
            .observe(took.as_secs_f64());
    }
}

fn grpc_histogram() -> Histogram {
    Histogram::new(GRPC_SECONDS_BUCKETS)
}

/// The gateway's registry, and its figures for the parts that count them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    gateway: Arc<GatewayMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The registry with every metric of the gateway, the series of closed
    /// label sets at 0.
    pub fn new() -> Self {
        let gateway = GatewayMetrics {
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(grpc_histogram),
            auth_failures: Family::default(),
            connections_rejected: Family::default(),
            supervisor_reconnects: Counter::default(),
        };
        // Creating a series shows it at 0.
        for kind in AuthFailure::ALL {
            drop(
                gateway
                    .auth_failures
                    .get_or_create(&[("kind", kind.as_str())]),
            );
        }
        for limit in Rejection::ALL {
            drop(
                gateway
                    .connections_rejected
                    .get_or_create(&[("limit", limit.as_str())]),
            );
        }
        let build_info = Family::<Label, Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);

        let mut registry = Registry::default();
        registry.register(
            "jobworker_gateway_grpc_requests",
            "gRPC calls served, by method and status code (CANCELLED: the client left first)",
            gateway.grpc_requests.clone(),
        );
        registry.register_with_unit(
            "jobworker_gateway_grpc_request_duration",
            "Time from a gRPC request to the start of its response: a unary call's whole \
             work, a stream's opening",
            Unit::Seconds,
            gateway.grpc_duration.clone(),
        );
        registry.register(
            "jobworker_gateway_auth_failures",
            "Connections dropped before a call could be made, by why",
            gateway.auth_failures.clone(),
        );
        registry.register(
            "jobworker_gateway_connections_rejected",
            "Connections closed at accept, by the limit that was reached",
            gateway.connections_rejected.clone(),
        );
        registry.register(
            "jobworker_gateway_supervisor_reconnects",
            "Connections to the supervisor opened after one was lost or connecting failed",
            gateway.supervisor_reconnects.clone(),
        );
        registry.register(
            "jobworker_gateway_build_info",
            "The gateway's version (always 1)",
            build_info,
        );
        Self {
            registry,
            gateway: Arc::new(gateway),
        }
    }

    /// The gateway's figures, to count with.
    pub fn gateway(&self) -> &Arc<GatewayMetrics> {
        &self.gateway
    }

    /// The exposition of one scrape: the supervisor's figures from
    /// `snapshot` (`None`: it did not answer, so `jobworker_supervisor_up
    /// 0` and nothing else of it), the gateway's, and `# EOF`.
    pub fn render(&self, snapshot: Option<SupervisorMetrics>) -> String {
        let mut supervisor = Registry::default();
        supervisor.register_collector(Box::new(supervisor::Snapshot(snapshot)));
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut text, &supervisor)
            .and_then(|()| encode_registry(&mut text, &self.registry))
            .and_then(|()| encode_eof(&mut text));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_label_sets_are_exposed_at_zero() {
        let metrics = Metrics::new();
        let text = metrics.render(None);
        for kind in AuthFailure::ALL {
            let line = format!(
                "jobworker_gateway_auth_failures_total{{kind=\"{}\"}} 0\n",
                kind.as_str()
            );
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        assert!(
            text.contains(
                "jobworker_gateway_connections_rejected_total{limit=\"max_connections\"} 0\n"
            ),
            "{text}"
        );
        assert!(text.contains("jobworker_gateway_supervisor_reconnects_total 0\n"));
        assert!(text.contains(&format!(
            "jobworker_gateway_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn counts_show_in_the_next_scrape() {
        let metrics = Metrics::new();
        let gateway = metrics.gateway();
        gateway.auth_failure(AuthFailure::BadIdentity);
        gateway.auth_failure(AuthFailure::BadIdentity);
        gateway.rejected(Rejection::MaxConnections);
        gateway.supervisor_reconnects().inc();
        gateway.grpc_call("StartJob", "OK");
        gateway.grpc_duration("StartJob", Duration::from_millis(3));
        let text = metrics.render(None);
        for line in [
            "jobworker_gateway_auth_failures_total{kind=\"bad_identity\"} 2\n",
            "jobworker_gateway_connections_rejected_total{limit=\"max_connections\"} 1\n",
            "jobworker_gateway_supervisor_reconnects_total 1\n",
            "jobworker_gateway_grpc_requests_total{method=\"StartJob\",code=\"OK\"} 1\n",
            "jobworker_gateway_grpc_request_duration_seconds_count{method=\"StartJob\"} 1\n",
            "jobworker_gateway_grpc_request_duration_seconds_bucket{le=\"0.005\",method=\"StartJob\"} 1\n",
            "jobworker_gateway_grpc_request_duration_seconds_bucket{le=\"0.0025\",method=\"StartJob\"} 0\n",
            "# UNIT jobworker_gateway_grpc_request_duration_seconds seconds\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
