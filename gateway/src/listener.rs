//! Accepting connections: TCP accept (at most `max_connections` at once;
//! more are closed at once and logged), then the TLS handshake in a task of
//! its own with a timeout, so a slow or silent client holds up no one. A
//! connection whose handshake completes is handed to the gRPC server with
//! its [`ConnInfo`]: the peer's address and the identity its client
//! certificate names (read once per connection). Refused connections and
//! failed handshakes are counted by why ([`Rejection`], [`AuthFailure`]).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use jobworker_ipc::Identity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::metrics::{AuthFailure, GatewayMetrics, Rejection};
use crate::tls::Reloadable;
use jobworker_identity::{IdentityError, identity_of_chain};

/// How many handshaken connections may wait for the server to take them.
const QUEUE: usize = 64;

/// What the server knows of a connection; every request on it carries a
/// copy in its extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Who the client certificate says the caller is, or why it names no one.
    pub identity: Arc<Result<Identity, IdentityError>>,
}

/// A connection after its TLS handshake. It holds its slot of
/// `max_connections` until it is dropped.
pub struct Conn {
    tls: TlsStream<TcpStream>,
    info: ConnInfo,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}

/// Limits of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct AcceptLimits {
    /// How long a handshake may take.
    pub handshake_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// The handshaken connections of `listener`, for `serve_with_incoming`;
/// refusals and failures are counted in `metrics`. Accepting stops when the
/// stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Reloadable>,
    limits: AcceptLimits,
    metrics: Arc<GatewayMetrics>,
) -> ReceiverStream<Result<Conn, Infallible>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(accept_loop(listener, tls, limits, metrics, tx));
    ReceiverStream::new(rx)
}

/// Why a TLS handshake failed, from rustls' error inside tokio-rustls' I/O
/// error.
fn handshake_failure(e: &io::Error) -> AuthFailure {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => AuthFailure::NoClientCertificate,
        Some(rustls::Error::InvalidCertificate(_)) => AuthFailure::BadClientCertificate,
        _ => AuthFailure::TlsHandshake,
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<Reloadable>,
    limits: AcceptLimits,
    metrics: Arc<GatewayMetrics>,
    tx: mpsc::Sender<Result<Conn, Infallible>>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (tcp, peer) = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. out of file descriptors: wait for some to close.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.rejected(Rejection::MaxConnections);
            tracing::warn!(
                %peer,
                max_connections = limits.max_connections,
                "connection refused: too many connections (raise max_connections)"
            );
            continue;
        };
        let acceptor = tls.acceptor();
        let tx = tx.clone();
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "setting TCP_NODELAY");
            }
            let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics.auth_failure(handshake_failure(&e));
                    tracing::warn!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.auth_failure(AuthFailure::HandshakeTimeout);
                    tracing::warn!(%peer, timeout = ?limits.handshake_timeout, "TLS handshake timed out");
                    return;
                }
            };
            let identity = identity_of_chain(tls.get_ref().1.peer_certificates());
            match &identity {
                Ok(identity) => {
                    tracing::debug!(%peer, user = %identity.user, role = %identity.role, "connected");
                }
                Err(e) => {
                    metrics.auth_failure(AuthFailure::BadIdentity);
                    tracing::warn!(%peer, error = %e, "connected with a certificate that names no usable identity; its calls will be refused");
                }
            }
            let conn = Conn {
                tls,
                info: ConnInfo {
                    peer,
                    identity: Arc::new(identity),
                },
                _slot: slot,
            };
            // The server has stopped when this fails; the connection closes.
            let _ = tx.send(Ok(conn)).await;
        });
    }
}
