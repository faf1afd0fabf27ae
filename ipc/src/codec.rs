//! The async adapter: a `tokio_util::codec` codec over the frame format, the
//! async handshake, and ready-made framed types for each side of a connection.

use std::marker::PhantomData;

use bytes::{Buf, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::error::FrameError;
use crate::frame::{self, LEN_PREFIX};
use crate::handshake::{self, HELLO_LEN};
use crate::message::{Call, Response};

/// Frames that decode as `In` and encode `Out`.
pub struct FrameCodec<In, Out> {
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    /// A codec.
    pub fn new() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        let Some(len) = frame::body_len(src)? else {
            return Ok(None);
        };
        let total = LEN_PREFIX + len;
        if src.len() < total {
            // The length is within the limit, so this reservation is bounded.
            src.reserve(total - src.len());
            return Ok(None);
        }
        let msg = frame::decode_body(&src[LEN_PREFIX..total])?;
        src.advance(total);
        Ok(Some(msg))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.is_empty() => Ok(None),
            None => {
                let wanted = frame::body_len(src)?.map_or(LEN_PREFIX, |len| LEN_PREFIX + len);
                Err(FrameError::Truncated {
                    missing: wanted - src.len(),
                })
            }
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, msg: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        frame::encode(&msg, dst)
    }
}

/// A client's side of a connection: sends [`Call`]s, receives [`Response`]s.
pub type ClientFramed<S> = Framed<S, FrameCodec<Response, Call>>;

/// The supervisor's side of a connection: receives [`Call`]s, sends
/// [`Response`]s.
pub type ServerFramed<S> = Framed<S, FrameCodec<Call, Response>>;

/// Sends our hello and checks the peer's. Callers bound it with a timeout.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) -> Result<(), FrameError> {
    let io_err = |source| FrameError::Io {
        op: "handshake",
        source,
    };
    io.write_all(&handshake::hello()).await.map_err(io_err)?;
    io.flush().await.map_err(io_err)?;
    let mut theirs = [0; HELLO_LEN];
    io.read_exact(&mut theirs).await.map_err(io_err)?;
    handshake::check_hello(&theirs)
}

/// Performs the handshake and frames the stream for a client.
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
) -> Result<ClientFramed<S>, FrameError> {
    handshake(&mut io).await?;
    Ok(Framed::new(io, FrameCodec::new()))
}

/// Performs the handshake and frames the stream for the supervisor.
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
) -> Result<ServerFramed<S>, FrameError> {
    handshake(&mut io).await?;
    Ok(Framed::new(io, FrameCodec::new()))
}
