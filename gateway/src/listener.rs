//! Accepting connections, in two stages with limits of their own, so that
//! connections that never authenticate cannot keep out those that do:
//!
//! 1. TCP accept, then the TLS handshake in a task of its own with a
//!    timeout (`handshake_timeout_ms`). At most `max_handshakes` are under
//!    way at once, `max_handshakes_per_ip` from one address; a new
//!    connection beyond either drops the oldest handshake under way (of its
//!    address, for the second), so a flood of silent connections is cycled
//!    out by the next client instead of locking it out.
//! 2. Authenticated (handshaken) connections: at most `max_connections`
//!    (more are closed), and each must send the HTTP/2 preface within the
//!    handshake timeout, or it is closed.
//!
//! A connection that passes is handed to the gRPC server with its
//! [`ConnInfo`]: the peer's address and the identity its client certificate
//! names (read once per connection). Refused connections and failed
//! handshakes are counted by why ([`Rejection`], [`AuthFailure`]).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use jobworker_ipc::Identity;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::metrics::{AuthFailure, GatewayMetrics, Rejection};
use crate::tls::Reloadable;
use jobworker_identity::{IdentityError, identity_of_chain, peer_of_chain};

/// How many handshaken connections may wait for the server to take them.
const QUEUE: usize = 64;

/// The first bytes of every HTTP/2 connection (RFC 9113, 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the server knows of a connection; every request on it carries a
/// copy in its extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Who the client certificate says the caller is, or why it names no one.
    pub identity: Arc<Result<Identity, IdentityError>>,
    /// The fleet host whose gateway the client is, when its certificate is
    /// a peer certificate (served on the peer port only).
    pub peer_host: Option<Arc<str>>,
}

/// A connection after its TLS handshake and its HTTP/2 preface (read here,
/// and given again to the server first). It holds its slot of
/// `max_connections` until it is dropped.
pub struct Conn {
    tls: TlsStream<TcpStream>,
    /// How much of the preface the server has not read yet.
    preface_left: usize,
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
        let this = self.get_mut();
        if this.preface_left > 0 {
            let start = PREFACE.len() - this.preface_left;
            let n = this.preface_left.min(buf.remaining());
            buf.put_slice(&PREFACE[start..start + n]);
            this.preface_left -= n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tls).poll_read(cx, buf)
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
    /// How long a handshake may take, and then the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// Authenticated connections served at once.
    pub max_connections: usize,
    /// Handshakes under way at once.
    pub max_handshakes: usize,
    /// Handshakes under way at once from one address.
    pub max_handshakes_per_ip: usize,
}

/// The handshakes under way, oldest first.
#[derive(Default)]
struct Pending {
    next: u64,
    by_age: BTreeMap<u64, (IpAddr, tokio::task::AbortHandle)>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Pending {
    /// Makes room for a handshake from `ip` within `limits`: drops the
    /// oldest under way (of `ip`, if it is at its own limit); says why, if
    /// one was dropped.
    fn make_room(&mut self, ip: IpAddr, limits: &AcceptLimits) -> Option<Rejection> {
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        let (key, why) = if from_ip >= limits.max_handshakes_per_ip {
            let key = self.by_age.iter().find(|(_, (from, _))| *from == ip)?.0;
            (*key, Rejection::MaxHandshakesPerIp)
        } else if self.by_age.len() >= limits.max_handshakes {
            (*self.by_age.keys().next()?, Rejection::MaxHandshakes)
        } else {
            return None;
        };
        if let Some(handle) = self.remove(key) {
            handle.abort();
        }
        Some(why)
    }

    /// A key for the next handshake.
    fn key(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn insert(&mut self, key: u64, ip: IpAddr, handle: tokio::task::AbortHandle) {
        self.by_age.insert(key, (ip, handle));
        *self.per_ip.entry(ip).or_default() += 1;
    }

    fn remove(&mut self, key: u64) -> Option<tokio::task::AbortHandle> {
        let (ip, handle) = self.by_age.remove(&key)?;
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        Some(handle)
    }
}

/// The source a connection from `ip` counts against for
/// `max_handshakes_per_ip`: the address itself, or an IPv6 address's /64
/// (what one host or site usually holds).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            IpAddr::V6(std::net::Ipv6Addr::from_bits(v6.to_bits() & !0_u128 << 64))
        }
        IpAddr::V6(v6) => IpAddr::V4(
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        ),
        v4 => v4,
    }
}

/// Removes its handshake from [`Pending`] when dropped: when the handshake
/// ends, whichever way, or when its task is aborted.
struct Registered {
    pending: Arc<Mutex<Pending>>,
    key: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.pending).remove(self.key);
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
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
    let pending = Arc::new(Mutex::new(Pending::default()));
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
        // Held across the spawn, so that the task's own removal (however
        // soon it ends) comes after its insertion.
        let source = source_of(peer.ip());
        let mut under_way = lock(&pending);
        if let Some(why) = under_way.make_room(source, &limits) {
            metrics.rejected(why);
            tracing::debug!(%peer, limit = why.as_str(),
                "dropped the oldest TLS handshake under way for a new connection");
        }
        let key = under_way.key();
        let way_in = WayIn {
            peer,
            registered: Registered {
                pending: Arc::clone(&pending),
                key,
            },
            slots: Arc::clone(&slots),
            limits,
            metrics: Arc::clone(&metrics),
            tx: tx.clone(),
        };
        let task = tokio::spawn(way_in.serve(tcp, tls.acceptor()));
        under_way.insert(key, source, task.abort_handle());
    }
}

/// One connection's way in: its TLS handshake (registered as under way
/// until it ends), a slot among the authenticated connections, its HTTP/2
/// preface; then it goes to the server.
struct WayIn {
    peer: SocketAddr,
    registered: Registered,
    slots: Arc<Semaphore>,
    limits: AcceptLimits,
    metrics: Arc<GatewayMetrics>,
    tx: mpsc::Sender<Result<Conn, Infallible>>,
}

impl WayIn {
    async fn serve(self, tcp: TcpStream, acceptor: tokio_rustls::TlsAcceptor) {
        let Self {
            peer,
            registered,
            slots,
            limits,
            metrics,
            tx,
        } = self;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "setting TCP_NODELAY");
        }
        let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
        let mut tls = match handshake.await {
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
        drop(registered);
        let Ok(slot) = slots.try_acquire_owned() else {
            metrics.rejected(Rejection::MaxConnections);
            tracing::warn!(
                %peer,
                max_connections = limits.max_connections,
                "connection refused: too many connections (raise max_connections)"
            );
            return;
        };
        let chain = tls.get_ref().1.peer_certificates();
        let identity = identity_of_chain(chain);
        let peer_host = peer_of_chain(chain);
        match (&identity, &peer_host) {
            (Ok(identity), _) => {
                tracing::debug!(%peer, user = %identity.user, role = %identity.role, "connected");
            }
            (Err(_), Some(host)) => {
                tracing::debug!(%peer, %host, "a peer gateway of the fleet connected");
            }
            (Err(e), None) => {
                metrics.auth_failure(AuthFailure::BadIdentity);
                tracing::warn!(%peer, error = %e, "connected with a certificate that names no usable identity; its calls will be refused");
            }
        }
        let mut preface = [0u8; PREFACE.len()];
        let read = tokio::time::timeout(limits.handshake_timeout, tls.read_exact(&mut preface));
        match read.await {
            Ok(Ok(_)) if &preface == PREFACE => {}
            Ok(Ok(_)) => {
                tracing::warn!(%peer, "closed a connection that does not speak HTTP/2");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "the connection closed before its HTTP/2 preface");
                return;
            }
            Err(_) => {
                metrics.rejected(Rejection::NoPreface);
                tracing::warn!(%peer, timeout = ?limits.handshake_timeout,
                    "closed an authenticated connection that sent no HTTP/2 preface in time");
                return;
            }
        }
        let conn = Conn {
            tls,
            preface_left: PREFACE.len(),
            info: ConnInfo {
                peer,
                identity: Arc::new(identity),
                peer_host: peer_host.map(Arc::from),
            },
            _slot: slot,
        };
        // The server has stopped when this fails; the connection closes.
        let _ = tx.send(Ok(conn)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> AcceptLimits {
        AcceptLimits {
            handshake_timeout: Duration::from_secs(1),
            max_connections: 1,
            max_handshakes: total,
            max_handshakes_per_ip: per_ip,
        }
    }

    /// Registers a handshake from `ip` (a task that never ends); its key.
    fn add(pending: &mut Pending, ip: [u8; 4], limits: &AcceptLimits) -> (u64, Option<Rejection>) {
        let why = pending.make_room(IpAddr::from(ip), limits);
        let key = pending.key();
        let task = tokio::spawn(std::future::pending::<()>());
        pending.insert(key, IpAddr::from(ip), task.abort_handle());
        (key, why)
    }

    #[test]
    fn ipv6_sources_are_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(source_of(v4), v4);
        assert_eq!(source_of("::ffff:10.0.0.1".parse().unwrap()), v4);
    }

    #[tokio::test]
    async fn a_new_connection_drops_the_oldest_handshake_under_way() {
        let limits = limits(3, 2);
        let mut pending = Pending::default();
        let (a1, _) = add(&mut pending, [10, 0, 0, 1], &limits);
        let (a2, _) = add(&mut pending, [10, 0, 0, 1], &limits);
        let (b1, _) = add(&mut pending, [10, 0, 0, 2], &limits);
        // A third from the same address drops its own oldest.
        let (_, why) = add(&mut pending, [10, 0, 0, 1], &limits);
        assert_eq!(why, Some(Rejection::MaxHandshakesPerIp));
        assert!(!pending.by_age.contains_key(&a1) && pending.by_age.contains_key(&a2));
        // Another address, with the total at its limit: the oldest of all.
        let (_, why) = add(&mut pending, [10, 0, 0, 3], &limits);
        assert_eq!(why, Some(Rejection::MaxHandshakes));
        assert!(!pending.by_age.contains_key(&a2) && pending.by_age.contains_key(&b1));
        assert_eq!(pending.by_age.len(), 3);
        assert_eq!(pending.per_ip[&IpAddr::from([10, 0, 0, 1])], 1);
        // Room: nothing dropped.
        pending.remove(b1);
        let (_, why) = add(&mut pending, [10, 0, 0, 3], &limits);
        assert_eq!(why, None);
    }
}
