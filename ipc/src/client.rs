//! The client's side of the protocol, for every program that calls the
//! supervisor's socket (the gateway, the debug tool, the test bed, the
//! bench): a [`Connection`] connects within a timeout and does the
//! handshake, then carries one call at a time. [`Connection::call`] sends a
//! call and reads its one answer; [`Connection::stream`] gives the
//! connection over to an [`OutputStream`], which yields the output frames
//! and then the end. Each call is made as the local operator or, with the
//! `_as` variants, on behalf of an [`Identity`].
//!
//! A refusal of the supervisor ([`Response::Error`], [`StreamFrame::Error`])
//! is an answer, not an error; a [`ClientError`] is a failure to talk at
//! all, and names the socket and what was being done.
//!
//! This is a connection and nothing more: no pool, no retries, no
//! reachability, no advice for a particular reader. The gateway pools these
//! connections ([`Connection::is_reusable`]); the debug tool prints every
//! frame with a [`Tracer`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::codec::{ClientFramed, FrameCodec};
use crate::error::{FrameError, IpcError};
use crate::handshake::{self, HELLO_LEN};
use crate::message::{Call, JobInfo, OutputData, Request, Response};
use crate::types::Identity;

/// What a traced connection exchanges, shown as it happens.
#[derive(Clone, Copy, Debug)]
pub enum Traced<'a> {
    /// Our hello, about to be sent.
    HelloSent(&'a [u8; HELLO_LEN]),
    /// The peer's hello, as received (before it is checked).
    HelloReceived(&'a [u8; HELLO_LEN]),
    /// A call, about to be sent.
    Sent(&'a Call),
    /// A response, as received.
    Received(&'a Response),
}

/// Called with every hello and frame of a connection
/// ([`Connection::connect_traced`]).
pub type Tracer = Box<dyn FnMut(Traced<'_>) + Send>;

/// Why talking to the socket failed. Each variant names the socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected to.
    #[error("connecting to the ipc socket {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Connecting and the handshake took longer than the timeout.
    #[error("connecting to the ipc socket {}: no handshake within {timeout:?}", path.display())]
    TimedOut {
        /// The socket.
        path: PathBuf,
        /// The timeout.
        timeout: Duration,
    },
    /// The peer closed the connection before its hello arrived (end of
    /// file, broken pipe or reset). The supervisor does this to a peer it
    /// refuses, and when it is at capacity or shutting down.
    #[error("the peer on {} closed the connection during the handshake ({source})", path.display())]
    ClosedInHandshake {
        /// The socket.
        path: PathBuf,
        /// The error that showed it.
        #[source]
        source: io::Error,
    },
    /// The handshake failed otherwise: an I/O error, or a peer that does not
    /// speak this protocol or this version of it.
    #[error("the handshake on the ipc socket {}: {source}", path.display())]
    Handshake {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: FrameError,
    },
    /// A call could not be sent.
    #[error("sending a call on the ipc socket {}: {source}", path.display())]
    Send {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: FrameError,
    },
    /// An answer could not be read.
    #[error("receiving an answer on the ipc socket {}: {source}", path.display())]
    Receive {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: FrameError,
    },
    /// The peer closed the connection where an answer (or the rest of a
    /// stream) was due.
    #[error("the peer on {} closed the connection without answering", path.display())]
    Closed {
        /// The socket.
        path: PathBuf,
    },
    /// The peer sent a frame the protocol does not allow here.
    #[error("the peer on {} sent {} where {expected} was due", path.display(), response.name())]
    Unexpected {
        /// The socket.
        path: PathBuf,
        /// What it sent.
        response: Box<Response>,
        /// What was due.
        expected: &'static str,
    },
}

impl ClientError {
    /// Whether the call provably never reached the peer, so that sending it
    /// again cannot carry it out twice: it could not be sent (the peer had
    /// closed the connection), or the peer closed the connection with it
    /// unread (a Unix socket closed with data unread reports a reset to its
    /// peer; one closed after the call was read reports an end of file,
    /// [`ClientError::Closed`]).
    pub fn unseen(&self) -> bool {
        match self {
            Self::Send {
                source: FrameError::Io { source, .. },
                ..
            } => matches!(
                source.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            Self::Receive {
                source: FrameError::Io { source, .. },
                ..
            } => source.kind() == io::ErrorKind::ConnectionReset,
            _ => false,
        }
    }
}

/// One connection to the socket, handshake done, carrying one call at a
/// time. Dropping it closes the connection.
pub struct Connection {
    framed: ClientFramed<UnixStream>,
    socket: PathBuf,
    tracer: Option<Tracer>,
}

impl Connection {
    /// Connects to `socket` and does the handshake, both within `timeout`.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, ClientError> {
        Self::open(socket, timeout, None).await
    }

    /// [`Connection::connect`], with `tracer` shown both hellos and every
    /// frame of the connection.
    pub async fn connect_traced(
        socket: &Path,
        timeout: Duration,
        tracer: Tracer,
    ) -> Result<Self, ClientError> {
        Self::open(socket, timeout, Some(tracer)).await
    }

    async fn open(
        socket: &Path,
        timeout: Duration,
        mut tracer: Option<Tracer>,
    ) -> Result<Self, ClientError> {
        let attempt = async {
            let mut stream =
                UnixStream::connect(socket)
                    .await
                    .map_err(|source| ClientError::Connect {
                        path: socket.to_path_buf(),
                        source,
                    })?;
            exchange_hellos(&mut stream, socket, &mut tracer).await?;
            Ok(stream)
        };
        let stream =
            tokio::time::timeout(timeout, attempt)
                .await
                .map_err(|_| ClientError::TimedOut {
                    path: socket.to_path_buf(),
                    timeout,
                })??;
        Ok(Self {
            framed: Framed::new(stream, FrameCodec::new()),
            socket: socket.to_path_buf(),
            tracer,
        })
    }

    /// One call as the local operator (no asserted identity) and its one
    /// answer. For every request but `StreamOutput`.
    pub async fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        self.exchange(Call {
            on_behalf_of: None,
            request,
        })
        .await
    }

    /// [`Connection::call`] on behalf of `identity`.
    pub async fn call_as(
        &mut self,
        identity: &Identity,
        request: Request,
    ) -> Result<Response, ClientError> {
        self.exchange(Call {
            on_behalf_of: Some(identity.clone()),
            request,
        })
        .await
    }

    /// Sends a `StreamOutput` request as the local operator; its frames come
    /// from the returned stream, which owns the connection from now on.
    pub async fn stream(self, request: Request) -> Result<OutputStream, ClientError> {
        self.open_stream(Call {
            on_behalf_of: None,
            request,
        })
        .await
    }

    /// [`Connection::stream`] on behalf of `identity`.
    pub async fn stream_as(
        self,
        identity: &Identity,
        request: Request,
    ) -> Result<OutputStream, ClientError> {
        self.open_stream(Call {
            on_behalf_of: Some(identity.clone()),
            request,
        })
        .await
    }

    /// Whether the connection can carry another call: nothing unread is
    /// buffered, and the peer has neither hung up nor sent anything since
    /// (a read would block). It never blocks. A connection found not
    /// reusable is to be dropped: the check may have read a byte the peer
    /// sent unasked.
    pub fn is_reusable(&self) -> bool {
        let mut byte = [0; 1];
        self.framed.read_buffer().is_empty()
            && matches!(
                self.framed.get_ref().try_read(&mut byte),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            )
    }

    async fn exchange(&mut self, call: Call) -> Result<Response, ClientError> {
        self.send(call).await?;
        match self.receive().await? {
            response @ (Response::Output { .. } | Response::End(_)) => {
                Err(self.unexpected(response, "the answer to a call"))
            }
            response => Ok(response),
        }
    }

    async fn open_stream(mut self, call: Call) -> Result<OutputStream, ClientError> {
        self.send(call).await?;
        Ok(OutputStream {
            conn: self,
            ended: false,
        })
    }

    async fn send(&mut self, call: Call) -> Result<(), ClientError> {
        if let Some(tracer) = self.tracer.as_mut() {
            tracer(Traced::Sent(&call));
        }
        self.framed
            .send(call)
            .await
            .map_err(|source| ClientError::Send {
                path: self.socket.clone(),
                source,
            })
    }

    async fn receive(&mut self) -> Result<Response, ClientError> {
        match self.framed.next().await {
            Some(Ok(response)) => {
                if let Some(tracer) = self.tracer.as_mut() {
                    tracer(Traced::Received(&response));
                }
                Ok(response)
            }
            Some(Err(source)) => Err(ClientError::Receive {
                path: self.socket.clone(),
                source,
            }),
            None => Err(ClientError::Closed {
                path: self.socket.clone(),
            }),
        }
    }

    fn unexpected(&self, response: Response, expected: &'static str) -> ClientError {
        ClientError::Unexpected {
            path: self.socket.clone(),
            response: Box::new(response),
            expected,
        }
    }
}

/// Sends our hello and checks the peer's, telling a peer that hung up from
/// one that failed otherwise.
async fn exchange_hellos(
    stream: &mut UnixStream,
    socket: &Path,
    tracer: &mut Option<Tracer>,
) -> Result<(), ClientError> {
    let ours = handshake::hello();
    if let Some(tracer) = tracer.as_mut() {
        tracer(Traced::HelloSent(&ours));
    }
    let mut theirs = [0; HELLO_LEN];
    let io = async {
        stream.write_all(&ours).await?;
        stream.flush().await?;
        stream.read_exact(&mut theirs).await.map(drop)
    };
    io.await.map_err(|source| {
        let path = socket.to_path_buf();
        match source.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset => ClientError::ClosedInHandshake { path, source },
            _ => ClientError::Handshake {
                path,
                source: FrameError::Io {
                    op: "handshake",
                    source,
                },
            },
        }
    })?;
    if let Some(tracer) = tracer.as_mut() {
        tracer(Traced::HelloReceived(&theirs));
    }
    handshake::check_hello(&theirs).map_err(|source| ClientError::Handshake {
        path: socket.to_path_buf(),
        source,
    })
}

/// One frame of an output stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamFrame {
    /// Output bytes.
    Output {
        /// The offset of the first byte of `data` in the job's output.
        offset: u64,
        /// The bytes.
        data: OutputData,
    },
    /// The last frame: the job's status when it ended.
    End(Box<JobInfo>),
    /// The last frame: the supervisor refused or failed the stream.
    Error(IpcError),
}

/// The frames of one `StreamOutput` call. Dropping it closes its
/// connection, which ends the stream on the supervisor's side too.
pub struct OutputStream {
    conn: Connection,
    ended: bool,
}

impl OutputStream {
    /// The next frame: any number of [`StreamFrame::Output`], then one
    /// [`StreamFrame::End`] or [`StreamFrame::Error`]; `None` after that. A
    /// connection that closes before the last frame is
    /// [`ClientError::Closed`].
    pub async fn next(&mut self) -> Result<Option<StreamFrame>, ClientError> {
        if self.ended {
            return Ok(None);
        }
        let frame = match self.conn.receive().await? {
            Response::Output { offset, data } => StreamFrame::Output { offset, data },
            Response::End(info) => StreamFrame::End(info),
            Response::Error(error) => StreamFrame::Error(error),
            other => {
                return Err(self
                    .conn
                    .unexpected(other, "an output frame or the end of a stream"));
            }
        };
        self.ended = !matches!(frame, StreamFrame::Output { .. });
        Ok(Some(frame))
    }

    /// The connection, once the stream's last frame came: it is between
    /// calls again, ready for the next. `None` (the connection closed)
    /// before that.
    pub fn into_idle(self) -> Option<Connection> {
        self.ended.then_some(self.conn)
    }
}
