//! The async adapter over real socket pairs: handshake, framed exchange,
//! and errors that close the connection.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

use futures::{SinkExt, StreamExt};
use jobworker_ipc::codec::{self, FrameCodec};
use jobworker_ipc::frame;
use jobworker_ipc::handshake::PROTOCOL_VERSION;
use jobworker_ipc::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

#[tokio::test]
async fn handshake_then_request_and_response() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = tokio::spawn(async move {
        let mut framed = codec::server(b).await.unwrap();
        let call = framed.next().await.unwrap().unwrap();
        assert_eq!(call.request, Request::Ping);
        framed
            .send(Response::Output {
                offset: 0,
                data: OutputData::new(b"hi".to_vec()).unwrap(),
            })
            .await
            .unwrap();
    });
    let mut client = codec::client(a).await.unwrap();
    client
        .send(Call {
            on_behalf_of: None,
            request: Request::Ping,
        })
        .await
        .unwrap();
    let response = client.next().await.unwrap().unwrap();
    assert!(
        matches!(response, Response::Output { offset: 0, ref data } if data.as_slice() == b"hi")
    );
    server.await.unwrap();
    assert!(
        client.next().await.is_none(),
        "clean end after the server closed"
    );
}

#[tokio::test]
async fn wrong_version_fails_the_handshake_on_our_side() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let peer = tokio::spawn(async move {
        let mut hello = [0u8; 8];
        b.read_exact(&mut hello).await.unwrap();
        let mut theirs = *b"JOBWKR\0\0";
        theirs[6..].copy_from_slice(&(PROTOCOL_VERSION + 7).to_be_bytes());
        b.write_all(&theirs).await.unwrap();
    });
    let err = codec::client(a).await.err().unwrap();
    assert!(
        err.to_string().contains("protocol version mismatch"),
        "{err}"
    );
    peer.await.unwrap();
}

#[tokio::test]
async fn a_peer_that_speaks_something_else_is_refused() {
    let (a, mut b) = UnixStream::pair().unwrap();
    tokio::spawn(async move { b.write_all(b"GET / HTTP/1.1\r\n").await });
    let err = codec::server(a).await.err().unwrap();
    assert!(matches!(err, FrameError::BadMagic(_)), "{err}");
}

#[tokio::test]
async fn oversized_and_truncated_frames_end_the_stream_with_an_error() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let mut framed = Framed::new(a, FrameCodec::<Call, Response>::new());
    b.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let err = framed.next().await.unwrap().unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");

    let (a, mut b) = UnixStream::pair().unwrap();
    let mut framed = Framed::new(a, FrameCodec::<Call, Response>::new());
    b.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
    drop(b);
    let err = framed.next().await.unwrap().unwrap_err();
    assert!(matches!(err, FrameError::Truncated { missing: 8 }), "{err}");
}

#[tokio::test]
async fn frames_split_across_writes_are_reassembled() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let mut framed = Framed::new(a, FrameCodec::<Call, Response>::new());
    let call = Call {
        on_behalf_of: None,
        request: Request::GetJob {
            job: JobId::random(),
        },
    };
    let mut bytes = Vec::new();
    frame::encode(&call, &mut bytes).unwrap();
    let writer = tokio::spawn(async move {
        for byte in bytes {
            b.write_all(&[byte]).await.unwrap();
            b.flush().await.unwrap();
        }
        b
    });
    assert_eq!(framed.next().await.unwrap().unwrap(), call);
    drop(writer.await.unwrap());
    assert!(framed.next().await.is_none());
}
