//! The mutual-TLS gRPC connection to the gateway: a tonic [`Channel`] with a
//! `ClientTlsConfig` that trusts only the configured server CA and presents
//! the user's certificate and key. Connecting is eager, so an unreachable
//! server or a failed TLS handshake is reported before any call is made.
//!
//! Failures become [`CliError`]s whose one-line message names the cause
//! (taken from the whole error chain, where tonic and rustls put it) and what
//! to check.

use std::error::Error as StdError;
use std::path::Path;

use jobworker_proto::v1::job_service_client::JobServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::exit::CliError;
use crate::settings::Settings;

/// A connected client of the gateway's `JobService`.
pub type Client = JobServiceClient<Channel>;

fn read_pem(path: &Path, what: &str, marker: &str) -> Result<Vec<u8>, CliError> {
    let tls = |detail: String| CliError::Tls {
        what: format!("reading the {what} {}", path.display()),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| tls(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains("-----BEGIN ") || !text.contains(&format!("{marker}-----")) {
        return Err(tls(format!(
            "it holds no PEM {marker} (is it the right file?)"
        )));
    }
    Ok(bytes)
}

/// The host part of a server URI, for the TLS name when none is set.
fn host_of(uri: &str) -> Option<String> {
    let authority = uri.split_once("://")?.1.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    Some(host.to_owned()).filter(|h| !h.is_empty())
}

/// Every message in an error's chain, joined, without repeats.
pub fn chain_text(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ").replace('\n', " ")
}

fn looks_like_tls(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "alert",
        "handshake",
        "peer sent",
        "invalid peer",
    ]
    .iter()
    .any(|word| detail.contains(word))
}

/// Connects to the gateway.
pub async fn connect(settings: &Settings) -> Result<Client, CliError> {
    let ca = read_pem(&settings.ca, "server CA certificate", "CERTIFICATE")?;
    let cert = read_pem(&settings.cert, "client certificate", "CERTIFICATE")?;
    let key = read_pem(&settings.key, "client key", "PRIVATE KEY")?;
    let domain = match &settings.server_name {
        Some(name) => name.clone(),
        None => host_of(&settings.server).ok_or_else(|| {
            CliError::Usage(format!(
                "server address {:?} has no host name",
                settings.server
            ))
        })?,
    };
    let tls = ClientTlsConfig::new()
        .domain_name(domain)
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .timeout(settings.connect_timeout);
    let endpoint = Endpoint::from_shared(settings.server.clone())
        .map_err(|e| {
            CliError::Usage(format!(
                "server address {:?}: {}",
                settings.server,
                chain_text(&e)
            ))
        })?
        .connect_timeout(settings.connect_timeout)
        .tls_config(tls)
        .map_err(|e| CliError::Tls {
            what: "setting up TLS with the configured CA, certificate and key".into(),
            detail: chain_text(&e),
        })?;
    let channel = endpoint.connect().await.map_err(|e| {
        let detail = chain_text(&e);
        let hint = if looks_like_tls(&detail) {
            "check that --ca is the CA that signed the server's certificate and that --server or --server-name matches a name in it"
        } else {
            "check --server and that the gateway is running and reachable"
        };
        CliError::Connect {
            server: settings.server.clone(),
            detail,
            hint,
        }
    })?;
    Ok(JobServiceClient::new(channel))
}

/// Whether a failed call lost its connection to the gateway (refused,
/// reset, closed, or the gateway could not reach the supervisor), rather
/// than being refused: worth retrying once the gateway or the supervisor is
/// back. A TLS failure (a certificate refused) is not.
pub fn is_connection_loss(status: &tonic::Status) -> bool {
    use tonic::Code;
    let transport = status.source().is_some()
        && matches!(
            status.code(),
            Code::Unknown | Code::Unavailable | Code::Cancelled | Code::Internal
        );
    (transport || status.code() == Code::Unavailable) && !looks_like_tls(&status_text(status))
}

/// A status's message with the detail of its source (tonic's local
/// errors), on one line.
pub fn status_text(status: &tonic::Status) -> String {
    let mut message = status.message().replace('\n', " ");
    if let Some(source) = status.source() {
        let detail = chain_text(source);
        if message.is_empty() || detail.contains(&message) {
            message = detail;
        } else if !message.contains(&detail) {
            message = format!("{message}: {detail}");
        }
    }
    if message.is_empty() {
        message = format!("{:?}", status.code());
    }
    message
}

/// A failed call as a [`CliError`]: what was being done, the server's
/// message, and a hint where the code calls for one. A status that tonic
/// made from a local error of the connection (it carries a source; the
/// server's own statuses do not) is a connection failure, whatever its code.
pub fn rpc_error(what: impl Into<String>, status: &tonic::Status) -> CliError {
    use tonic::Code;
    let transport = status.source().is_some()
        && matches!(
            status.code(),
            Code::Unknown | Code::Unavailable | Code::Cancelled | Code::Internal
        );
    let mut message = status_text(status);
    let hint = match status.code() {
        Code::Unauthenticated => {
            Some("the gateway did not accept the client certificate: check --cert and --key")
        }
        _ if (transport || status.code() == Code::Unavailable) && looks_like_tls(&message) => Some(
            "the TLS session failed: check that --cert and --key are a client certificate and key issued by the CA the gateway trusts",
        ),
        _ if transport => Some(
            "the gateway closed the connection: at once, it does not accept the client certificate \
             (check --cert and --key); later, it stopped or restarted",
        ),
        Code::Unavailable => Some("is the gateway running and reachable?"),
        _ => None,
    };
    if let Some(hint) = hint {
        message = format!("{message} ({hint})");
    }
    CliError::Rpc {
        what: what.into(),
        code: status.code(),
        message,
        transport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            host_of("https://127.0.0.1:8443").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(host_of("https://gw.example").as_deref(), Some("gw.example"));
        assert_eq!(host_of("https://[::1]:8443/x").as_deref(), Some("::1"));
        assert_eq!(host_of("https://:1"), None);
    }

    #[test]
    fn rpc_errors_carry_a_hint() {
        let e = rpc_error(
            "starting the job",
            &tonic::Status::permission_denied("rita is a reader"),
        );
        assert_eq!(e.to_string(), "starting the job: rita is a reader");
        assert_eq!(e.exit_code(), crate::exit::PERMISSION);
        let e = rpc_error("listing jobs", &tonic::Status::unauthenticated(""));
        assert!(e.to_string().contains("--cert"), "{e}");
        assert_eq!(e.exit_code(), crate::exit::PERMISSION);
        let e = rpc_error(
            "x",
            &tonic::Status::unavailable("tls alert: bad certificate"),
        );
        assert_eq!(e.exit_code(), crate::exit::CONNECTION);
        assert!(e.to_string().contains("TLS session"), "{e}");
    }

    #[test]
    fn local_transport_failures_are_connection_errors() {
        let cause = std::io::Error::other("connection error: received fatal alert: UnknownCA");
        let status = tonic::Status::from_error(Box::new(cause));
        let e = rpc_error("listing jobs", &status);
        assert_eq!(e.exit_code(), crate::exit::CONNECTION);
        let text = e.to_string();
        assert!(
            text.contains("UnknownCA") && text.contains("--cert"),
            "{text}"
        );
        // The same code from the server is the server's business.
        let e = rpc_error("x", &tonic::Status::unknown("odd"));
        assert_eq!(e.exit_code(), crate::exit::OTHER);
        assert!(
            !is_connection_loss(&status),
            "a refused certificate is final"
        );
    }

    #[test]
    fn a_lost_connection_is_named_and_worth_resuming() {
        let cause = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "error reading a body from connection: connection reset by peer",
        );
        let status = tonic::Status::from_error(Box::new(cause));
        assert!(is_connection_loss(&status));
        let text = rpc_error("reading the output", &status).to_string();
        assert!(
            text.contains("connection reset") && text.contains("later, it stopped or restarted"),
            "{text}"
        );
        // The gateway's own word that the supervisor is away: retried too.
        assert!(is_connection_loss(&tonic::Status::unavailable(
            "the job supervisor is unreachable"
        )));
        assert!(!is_connection_loss(&tonic::Status::not_found("no job x")));
    }

    #[tokio::test]
    async fn unreadable_files_are_tls_errors() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let settings = Settings {
            server: "https://127.0.0.1:1".into(),
            ca: not_pem,
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("missing.key"),
            server_name: None,
            connect_timeout: std::time::Duration::from_secs(1),
        };
        let err = connect(&settings).await.unwrap_err();
        assert_eq!(err.exit_code(), crate::exit::CONNECTION);
        assert!(err.to_string().contains("PEM"), "{err}");
    }
}
