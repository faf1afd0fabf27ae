//! The client library against a real Unix socket, served by a small task
//! that speaks the real codec: handshakes good and bad, unary calls with and
//! without an identity, output streams, traces, and every way the peer can
//! fail the client.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use jobworker_ipc::client::{ClientError, Connection, StreamFrame, Traced};
use jobworker_ipc::codec::{self, ServerFramed};
use jobworker_ipc::handshake::{HELLO_LEN, PROTOCOL_VERSION};
use jobworker_ipc::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A socket in a directory of its own, removed with it.
struct Socket {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Socket {
    fn new() -> (Self, UnixListener) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervisor.sock");
        let listener = UnixListener::bind(&path).unwrap();
        (Self { _dir: dir, path }, listener)
    }

    async fn connect(&self) -> Result<Connection, ClientError> {
        Connection::connect(&self.path, TIMEOUT).await
    }
}

/// Serves one connection with the real handshake and codec: `serve` gets
/// the framed connection once the handshake is done.
fn serve_one<F, Fut>(listener: UnixListener, serve: F) -> JoinHandle<()>
where
    F: FnOnce(ServerFramed<UnixStream>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve(codec::server(stream).await.unwrap()).await;
    })
}

/// Accepts one connection and hands over the raw stream, no handshake.
fn accept_raw<F, Fut>(listener: UnixListener, serve: F) -> JoinHandle<()>
where
    F: FnOnce(UnixStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve(stream).await;
    })
}

fn pong() -> Response {
    Response::Pong(ServerInfo {
        protocol_version: PROTOCOL_VERSION,
        uptime_ms: 42,
        caller: Owner::Local(UserName::new("root").unwrap()),
        cgroup_root: "/sys/fs/cgroup/jobs".into(),
        controllers: vec!["cpu".into()],
    })
}

fn job_info() -> JobInfo {
    JobInfo {
        id: JobId::random(),
        owner: Owner::Remote(UserName::new("alice").unwrap()),
        command: Command::new("/bin/true").unwrap(),
        args: Args::default(),
        state: JobState::Finished,
        pid: None,
        uid: None,
        gid: None,
        termination: Some(Termination::Exited(0)),
        oom_killed: false,
        created_at: UnixMicros(1),
        started_at: None,
        ended_at: None,
        limits: Limits::default(),
        enforced: EnforcedLimits::default(),
        usage: Usage::default(),
        output_bytes: 5,
        output_truncated_bytes: 0,
        output_disk_full_bytes: 0,
        failure: None,
        stop_reason: None,
        timeout: None,
        labels: Default::default(),
    }
}

fn output(offset: u64, bytes: &[u8]) -> Response {
    Response::Output {
        offset,
        data: OutputData::new(bytes.to_vec()).unwrap(),
    }
}

fn stream_request() -> Request {
    Request::StreamOutput {
        job: JobId::random(),
        offset: 0,
        follow: true,
    }
}

fn alice() -> Identity {
    Identity {
        user: UserName::new("alice").unwrap(),
        role: Role::User,
    }
}

/// The error's text names the socket.
fn names(error: &ClientError, path: &Path) -> String {
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    text
}

#[tokio::test]
async fn calls_are_answered_one_at_a_time_as_operator_or_on_behalf() {
    let (socket, listener) = Socket::new();
    let server = serve_one(listener, |mut framed| async move {
        let call = framed.next().await.unwrap().unwrap();
        assert_eq!(
            call,
            Call {
                on_behalf_of: None,
                request: Request::Ping
            }
        );
        framed.send(pong()).await.unwrap();
        let call = framed.next().await.unwrap().unwrap();
        assert_eq!(call.on_behalf_of, Some(alice()));
        framed
            .send(Response::Error(IpcError::NotFound {
                job: JobId::random(),
            }))
            .await
            .unwrap();
        assert!(framed.next().await.is_none(), "the client hung up");
    });
    let mut conn = socket.connect().await.unwrap();
    assert_eq!(conn.call(Request::Ping).await.unwrap(), pong());
    let refused = conn
        .call_as(
            &alice(),
            Request::GetJob {
                job: JobId::random(),
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(refused, Response::Error(IpcError::NotFound { .. })),
        "a refusal is an answer: {refused:?}"
    );
    drop(conn);
    server.await.unwrap();
}

#[tokio::test]
async fn a_stream_yields_its_output_then_its_end_then_nothing() {
    let (socket, listener) = Socket::new();
    let info = job_info();
    let end = Response::End(Box::new(info.clone()));
    let server = serve_one(listener, |mut framed| async move {
        let call = framed.next().await.unwrap().unwrap();
        assert_eq!(call.on_behalf_of, Some(alice()));
        assert!(matches!(call.request, Request::StreamOutput { .. }));
        for frame in [output(0, b"hel"), output(3, b"lo"), end] {
            framed.send(frame).await.unwrap();
        }
        assert!(framed.next().await.is_none(), "the client hung up");
    });
    let conn = socket.connect().await.unwrap();
    let mut stream = conn.stream_as(&alice(), stream_request()).await.unwrap();
    let mut bytes = Vec::new();
    loop {
        match stream.next().await.unwrap() {
            Some(StreamFrame::Output { offset, data }) => {
                assert_eq!(offset, bytes.len() as u64);
                bytes.extend_from_slice(data.as_slice());
            }
            Some(StreamFrame::End(ended)) => {
                assert_eq!(*ended, info);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(bytes, b"hello");
    assert_eq!(stream.next().await.unwrap(), None, "nothing after the end");
    drop(stream);
    server.await.unwrap();
}

#[tokio::test]
async fn a_refused_stream_ends_with_its_error() {
    let (socket, listener) = Socket::new();
    let server = serve_one(listener, |mut framed| async move {
        let call = framed.next().await.unwrap().unwrap();
        assert_eq!(call.on_behalf_of, None);
        let refusal = IpcError::PermissionDenied { reason: "r".into() };
        framed.send(Response::Error(refusal)).await.unwrap();
        assert!(framed.next().await.is_none());
    });
    let mut stream = socket
        .connect()
        .await
        .unwrap()
        .stream(stream_request())
        .await
        .unwrap();
    assert_eq!(
        stream.next().await.unwrap(),
        Some(StreamFrame::Error(IpcError::PermissionDenied {
            reason: "r".into()
        }))
    );
    assert_eq!(stream.next().await.unwrap(), None);
    drop(stream);
    server.await.unwrap();
}

#[tokio::test]
async fn dropping_a_stream_closes_its_connection() {
    let (socket, listener) = Socket::new();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let server = serve_one(listener, |mut framed| async move {
        framed.next().await.unwrap().unwrap();
        framed.send(output(0, b"x")).await.unwrap();
        let after = framed.next().await;
        closed_tx.send(!matches!(after, Some(Ok(_)))).unwrap();
    });
    let mut stream = socket
        .connect()
        .await
        .unwrap()
        .stream(stream_request())
        .await
        .unwrap();
    assert!(matches!(
        stream.next().await.unwrap(),
        Some(StreamFrame::Output { offset: 0, .. })
    ));
    drop(stream);
    let closed = tokio::time::timeout(TIMEOUT, closed_rx).await.unwrap();
    assert!(closed.unwrap(), "the server saw the end of the connection");
    server.await.unwrap();
}

#[tokio::test]
async fn a_stream_cut_short_is_closed() {
    let (socket, listener) = Socket::new();
    let server = serve_one(listener, |mut framed| async move {
        framed.next().await.unwrap().unwrap();
        framed.send(output(0, b"x")).await.unwrap();
    });
    let mut stream = socket
        .connect()
        .await
        .unwrap()
        .stream(stream_request())
        .await
        .unwrap();
    assert!(matches!(
        stream.next().await.unwrap(),
        Some(StreamFrame::Output { .. })
    ));
    let error = stream.next().await.unwrap_err();
    assert!(matches!(error, ClientError::Closed { .. }), "{error:?}");
    let text = names(&error, &socket.path);
    assert!(
        text.contains("closed the connection without answering"),
        "{text}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_call_without_an_answer_is_closed() {
    let (socket, listener) = Socket::new();
    let server = serve_one(listener, |mut framed| async move {
        framed.next().await.unwrap().unwrap();
    });
    let mut conn = socket.connect().await.unwrap();
    let error = conn.call(Request::Ping).await.unwrap_err();
    assert!(matches!(error, ClientError::Closed { .. }), "{error:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_call_the_peer_closed_on_unread_was_unseen_and_one_it_read_was_not() {
    // Closed with the call unread: a reset.
    let (socket, listener) = Socket::new();
    let server = serve_one(listener, |framed| async move {
        framed.get_ref().readable().await.unwrap();
        drop(framed);
    });
    let mut conn = socket.connect().await.unwrap();
    let error = conn.call(Request::Ping).await.unwrap_err();
    assert!(error.unseen(), "{error:?}");
    server.await.unwrap();

    // Closed before the call was sent: it cannot be sent.
    let (socket, listener) = Socket::new();
    let server = serve_one(listener, |framed| async move { drop(framed) });
    let mut conn = socket.connect().await.unwrap();
    server.await.unwrap();
    let error = conn.call(Request::Ping).await.unwrap_err();
    assert!(error.unseen(), "{error:?}");

    // Read, then closed without an answer: it may have been carried out.
    let (socket, listener) = Socket::new();
    let server = serve_one(listener, |mut framed| async move {
        framed.next().await.unwrap().unwrap();
    });
    let mut conn = socket.connect().await.unwrap();
    let error = conn.call(Request::Ping).await.unwrap_err();
    assert!(!error.unseen(), "{error:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn frames_out_of_protocol_are_unexpected() {
    let (socket, listener) = Socket::new();
    let server = serve_one(listener, |mut framed| async move {
        // An output frame answers a unary call.
        framed.next().await.unwrap().unwrap();
        framed.send(output(0, b"x")).await.unwrap();
        // A Pong in the middle of a stream.
        framed.next().await.unwrap().unwrap();
        framed.send(pong()).await.unwrap();
    });
    let mut conn = socket.connect().await.unwrap();
    let error = conn.call(Request::Ping).await.unwrap_err();
    match &error {
        ClientError::Unexpected { response, .. } => {
            assert!(matches!(**response, Response::Output { .. }));
        }
        other => panic!("{other:?}"),
    }
    let text = names(&error, &socket.path);
    assert!(
        text.contains("sent Output where the answer to a call"),
        "{text}"
    );

    let mut stream = conn.stream(stream_request()).await.unwrap();
    let error = stream.next().await.unwrap_err();
    assert!(
        matches!(&error, ClientError::Unexpected { response, .. } if response.name() == "Pong"),
        "{error:?}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_bad_frame_fails_the_receive() {
    let (socket, listener) = Socket::new();
    let server = accept_raw(listener, |mut stream| async move {
        let mut framed = codec::server(&mut stream).await.unwrap();
        framed.next().await.unwrap().unwrap();
        drop(framed);
        // A length prefix far over the limit.
        stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
    });
    let mut conn = socket.connect().await.unwrap();
    let error = conn.call(Request::Ping).await.unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Receive {
                source: FrameError::TooLarge { .. },
                ..
            }
        ),
        "{error:?}"
    );
    let text = names(&error, &socket.path);
    assert!(
        text.starts_with("receiving an answer on the ipc socket"),
        "{text}"
    );
    drop(conn);
    server.await.unwrap();
}

#[tokio::test]
async fn a_missing_socket_fails_the_connect() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.sock");
    let error = Connection::connect(&path, TIMEOUT).await.err().unwrap();
    match &error {
        ClientError::Connect { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    let text = names(&error, &path);
    assert!(text.starts_with("connecting to the ipc socket"), "{text}");
}

#[tokio::test]
async fn a_peer_that_hangs_up_before_its_hello_closed_the_handshake() {
    let (socket, listener) = Socket::new();
    let server = accept_raw(listener, |stream| async move { drop(stream) });
    let error = socket.connect().await.err().unwrap();
    assert!(
        matches!(error, ClientError::ClosedInHandshake { .. }),
        "{error:?}"
    );
    let text = names(&error, &socket.path);
    assert!(text.contains("during the handshake"), "{text}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_peer_of_another_protocol_or_version_fails_the_handshake() {
    for (theirs, expected) in [
        (*b"HTTP/1.1", "does not speak the jobworker ipc protocol"),
        (
            {
                let mut hello = *b"JOBWKR\0\0";
                hello[6..].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
                hello
            },
            "protocol version mismatch",
        ),
    ] {
        let (socket, listener) = Socket::new();
        let server = accept_raw(listener, move |mut stream| async move {
            let mut ours = [0; HELLO_LEN];
            stream.read_exact(&mut ours).await.unwrap();
            stream.write_all(&theirs).await.unwrap();
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
        });
        let error = socket.connect().await.err().unwrap();
        assert!(matches!(error, ClientError::Handshake { .. }), "{error:?}");
        let text = names(&error, &socket.path);
        assert!(text.contains(expected), "{text}");
        server.await.unwrap();
    }
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let (socket, listener) = Socket::new();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = accept_raw(listener, |stream| async move {
        // Holds the connection open, saying nothing, until the test is done.
        done_rx.await.unwrap();
        drop(stream);
    });
    let timeout = Duration::from_millis(200);
    let error = Connection::connect(&socket.path, timeout)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, ClientError::TimedOut { timeout: t, .. } if t == timeout),
        "{error:?}"
    );
    names(&error, &socket.path);
    done_tx.send(()).unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_tracer_sees_both_hellos_and_every_frame_in_order() {
    let (socket, listener) = Socket::new();
    let server = serve_one(listener, |mut framed| async move {
        framed.next().await.unwrap().unwrap();
        framed.send(pong()).await.unwrap();
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let tracer = Box::new(move |traced: Traced<'_>| {
        let line = match traced {
            Traced::HelloSent(hello) => format!("-> hello {hello:?}"),
            Traced::HelloReceived(hello) => format!("<- hello {hello:?}"),
            Traced::Sent(call) => format!("-> {:?}", call.request),
            Traced::Received(response) => format!("<- {}", response.name()),
        };
        log.lock().unwrap().push(line);
    });
    let mut conn = Connection::connect_traced(&socket.path, TIMEOUT, tracer)
        .await
        .unwrap();
    conn.call(Request::Ping).await.unwrap();
    let hello = format!("{:?}", handshake::hello());
    assert_eq!(
        *seen.lock().unwrap(),
        [
            format!("-> hello {hello}"),
            format!("<- hello {hello}"),
            "-> Ping".to_owned(),
            "<- Pong".to_owned(),
        ]
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_connection_is_reusable_until_the_peer_hangs_up_or_speaks_unasked() {
    let (socket, listener) = Socket::new();
    let (hang_up_tx, hang_up_rx) = tokio::sync::oneshot::channel::<()>();
    let server = serve_one(listener, |mut framed| async move {
        framed.next().await.unwrap().unwrap();
        framed.send(pong()).await.unwrap();
        hang_up_rx.await.unwrap();
    });
    let mut conn = socket.connect().await.unwrap();
    conn.call(Request::Ping).await.unwrap();
    assert!(conn.is_reusable());
    hang_up_tx.send(()).unwrap();
    server.await.unwrap();
    assert!(!conn.is_reusable(), "the peer hung up");

    let (socket, listener) = Socket::new();
    let (spoke_tx, spoke_rx) = tokio::sync::oneshot::channel::<()>();
    let server = serve_one(listener, |mut framed| async move {
        framed.send(pong()).await.unwrap();
        spoke_tx.send(()).unwrap();
        // The client closes with our frame unread: an end or a reset.
        assert!(!matches!(framed.next().await, Some(Ok(_))));
    });
    let conn = socket.connect().await.unwrap();
    spoke_rx.await.unwrap();
    assert!(!conn.is_reusable(), "the peer sent a frame unasked");
    drop(conn);
    server.await.unwrap();
}
