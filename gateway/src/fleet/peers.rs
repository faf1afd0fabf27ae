//! Calls forwarded to the gateway of the host a job runs on: `StreamOutput`,
//! `StopJob` and `GetJob` (while it runs) of a job of another host. The forwarding gateway dials
//! that host's peer port (its `peer_address` in the database) with mutual
//! TLS: it presents its peer certificate (role `peer`, which no user has)
//! and checks the other's certificate against `peer_ca`. One HTTP/2
//! connection per peer carries every forwarded call. The caller's identity
//! travels in [`ON_BEHALF_OF_USER`] and [`ON_BEHALF_OF_ROLE`]; the owning
//! host's gateway authorizes the call again with it, and never forwards
//! it further.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use jobworker_fleet::PeerFiles;
use jobworker_ipc::Identity;
use jobworker_proto::v1;
use jobworker_proto::v1::job_service_client::JobServiceClient;
use tonic::Status;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::Fleet;

/// The metadata that names the user a forwarded call is made for.
pub const ON_BEHALF_OF_USER: &str = "jobworker-on-behalf-of-user";
/// The metadata that names that user's role.
pub const ON_BEHALF_OF_ROLE: &str = "jobworker-on-behalf-of-role";

/// How long dialing a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on a peer's connection, even while idle, and how long one
/// may go unanswered: a peer that stops answering (cut off, or stopped)
/// fails its calls and streams within their sum, instead of holding them.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(5));
/// How long a forwarded `GetJob` may take before the database's record is
/// shown instead.
const GET_TIMEOUT: Duration = Duration::from_secs(2);

/// A file of the peer identity that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the {what} {path}: {source}")]
pub struct PeerFileError {
    /// Which file (`fleet.peer_cert`, say).
    what: &'static str,
    /// Its path.
    path: String,
    /// Why.
    #[source]
    source: std::io::Error,
}

/// A gateway's peer identity and the CA of the other gateways, read
/// (while it still runs as root) from [`PeerFiles`].
#[derive(Clone, Debug)]
pub struct PeerTls(ClientTlsConfig);

impl PeerTls {
    /// Reads the files.
    pub fn load(files: &PeerFiles) -> Result<Self, PeerFileError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| PeerFileError {
                what,
                path: path.display().to_string(),
                source,
            })
        };
        let identity = tonic::transport::Identity::from_pem(
            read("fleet.peer_cert", &files.cert)?,
            read("fleet.peer_key", &files.key)?,
        );
        let ca = Certificate::from_pem(read("fleet.peer_ca", &files.ca)?);
        Ok(Self(
            ClientTlsConfig::new()
                .identity(identity)
                .ca_certificate(ca)
                .timeout(CONNECT_TIMEOUT),
        ))
    }
}

/// The connections to the other hosts' gateways.
pub struct Peers {
    /// This gateway's peer identity; none: it forwards nothing.
    tls: Option<PeerTls>,
    /// A channel per host, with the address it dials.
    channels: Mutex<HashMap<String, (String, Channel)>>,
}

impl Peers {
    /// The connections, made with `tls`, as they are needed.
    pub fn new(tls: Option<PeerTls>) -> Self {
        Self {
            tls,
            channels: Mutex::new(HashMap::new()),
        }
    }
}

/// A forwarded request for `identity`.
fn asserting<T>(identity: &Identity, message: T) -> Result<tonic::Request<T>, Status> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    // A user name and a role are ASCII.
    let value = |text: &str| {
        text.parse()
            .map_err(|_| Status::internal("a caller's identity is not ASCII"))
    };
    metadata.insert(ON_BEHALF_OF_USER, value(identity.user.as_str())?);
    metadata.insert(ON_BEHALF_OF_ROLE, value(identity.role.as_str())?);
    Ok(request)
}

/// The status of a forwarded call's failure: the peer's own answer as it
/// is, a failure to reach it saying so.
fn from_peer(host: &str, status: Status) -> Status {
    if status.code() == tonic::Code::Unavailable {
        return Status::unavailable(format!(
            "the gateway of host {host}, where the job runs: {}",
            status.message()
        ));
    }
    status
}

impl Fleet {
    /// A client of host `host`'s peer port.
    async fn peer(&self, host: &str) -> Result<JobServiceClient<Channel>, Status> {
        let Some(tls) = &self.peers.tls else {
            return Err(Status::failed_precondition(format!(
                "the job runs on host {host}, and this gateway has no peer certificate to reach \
                 it ([fleet] peer_cert, peer_key, peer_ca): ask that host's gateway"
            )));
        };
        let row = {
            let db = self
                .db()
                .await
                .map_err(|e| super::calls::no_connection(&e))?;
            jobworker_fleet::hosts::get(&db, host)
                .await
                .map_err(|e| super::calls::db_status(&e))?
        };
        let Some(address) = row.and_then(|row| row.peer_address) else {
            return Err(Status::failed_precondition(format!(
                "the job runs on host {host}, whose gateway has no peer port ([fleet] \
                 peer_listen): ask that host's gateway"
            )));
        };
        let mut channels = self
            .peers
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((dialed, channel)) = channels.get(host)
            && *dialed == address
        {
            return Ok(JobServiceClient::new(channel.clone()));
        }
        let name = address
            .rsplit_once(':')
            .map_or(address.as_str(), |(name, _)| name)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let channel = Endpoint::from_shared(format!("https://{address}"))
            .and_then(|endpoint| endpoint.tls_config(tls.0.clone().domain_name(name)))
            .map_err(|e| {
                Status::failed_precondition(format!(
                    "host {host}'s peer_address {address:?} cannot be dialed: {e}"
                ))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE.0)
            .keep_alive_timeout(KEEPALIVE.1)
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(host.to_owned(), (address, channel.clone()));
        Ok(JobServiceClient::new(channel))
    }

    /// `StopJob` on host `host`'s gateway, for `identity`.
    pub async fn forward_stop(
        &self,
        identity: &Identity,
        host: &str,
        request: v1::StopJobRequest,
    ) -> Result<v1::StopJobResponse, Status> {
        let mut peer = self.peer(host).await?;
        peer.stop_job(asserting(identity, request)?)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| from_peer(host, status))
    }

    /// `GetJob` on host `host`'s gateway, for `identity`.
    pub async fn forward_get(
        &self,
        identity: &Identity,
        host: &str,
        request: v1::GetJobRequest,
    ) -> Result<v1::Job, Status> {
        let mut peer = self.peer(host).await?;
        let mut request = asserting(identity, request)?;
        request.set_timeout(GET_TIMEOUT);
        tokio::time::timeout(GET_TIMEOUT, peer.get_job(request))
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "the gateway of host {host} did not answer within {GET_TIMEOUT:?}"
                ))
            })?
            .map(tonic::Response::into_inner)
            .map_err(|status| from_peer(host, status))
    }

    /// `StreamOutput` on host `host`'s gateway, for `identity`.
    pub async fn forward_stream(
        &self,
        identity: &Identity,
        host: &str,
        request: v1::StreamOutputRequest,
    ) -> Result<tonic::Streaming<v1::OutputChunk>, Status> {
        let mut peer = self.peer(host).await?;
        peer.stream_output(asserting(identity, request)?)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| from_peer(host, status))
    }
}
