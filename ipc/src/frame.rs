//! The frame format, with no I/O: a 4-byte big-endian body length, then the
//! body, one message encoded with bincode 2 (serde, `standard()` config).
//!
//! Decoding is bounded before anything is allocated: the length prefix is
//! checked against [`MAX_FRAME_LEN`] first, and bincode decodes with the same
//! limit, so a body claiming a huge string or vector fails instead of
//! allocating. A body must be consumed exactly: trailing bytes are an error.

use bytes::BufMut;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::FrameError;

/// The largest frame body, in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// The size of the length prefix.
pub const LEN_PREFIX: usize = 4;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_LEN>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// A buffer frames are appended to: a `Vec<u8>`, or the `BytesMut` a framed
/// connection writes from.
pub trait FrameBuf: BufMut + std::ops::DerefMut<Target = [u8]> {
    /// Cuts the buffer back to its first `len` bytes.
    fn cut(&mut self, len: usize);
}

impl FrameBuf for Vec<u8> {
    fn cut(&mut self, len: usize) {
        self.truncate(len);
    }
}

impl FrameBuf for bytes::BytesMut {
    fn cut(&mut self, len: usize) {
        self.truncate(len);
    }
}

/// Appends one frame holding `msg` to `dst`, encoding it in place.
pub fn encode<T: Serialize>(msg: &T, dst: &mut impl FrameBuf) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_slice(&[0; LEN_PREFIX]);
    if let Err(e) = bincode::serde::encode_into_std_write(msg, &mut (&mut *dst).writer(), config())
    {
        dst.cut(start);
        return Err(FrameError::Encode(e.to_string()));
    }
    let len = dst.len() - start - LEN_PREFIX;
    if len > MAX_FRAME_LEN {
        dst.cut(start);
        return Err(FrameError::EncodeTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let prefix = u32::try_from(len)
        .map_err(|_| FrameError::EncodeTooLarge {
            len,
            max: MAX_FRAME_LEN,
        })?
        .to_be_bytes();
    dst[start..start + LEN_PREFIX].copy_from_slice(&prefix);
    Ok(())
}

/// Reads the length prefix at the start of `src`: `Ok(None)` if fewer than
/// [`LEN_PREFIX`] bytes are there, an error if the length is over the limit.
pub fn body_len(src: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = src.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix);
    match usize::try_from(len) {
        Ok(len) if len <= MAX_FRAME_LEN => Ok(Some(len)),
        _ => Err(FrameError::TooLarge {
            len: u64::from(len),
            max: MAX_FRAME_LEN,
        }),
    }
}

/// Decodes one message from a frame body (without its length prefix). The
/// body must hold exactly one message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: body.len() as u64,
            max: MAX_FRAME_LEN,
        });
    }
    let (msg, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::TrailingBytes {
            extra: body.len() - used,
        });
    }
    Ok(msg)
}

/// Decodes the first frame of `src`: `Ok(None)` if it is not complete yet,
/// else the message and how many bytes of `src` it took.
pub fn decode<T: DeserializeOwned>(src: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(len) = body_len(src)? else {
        return Ok(None);
    };
    let Some(body) = src.get(LEN_PREFIX..LEN_PREFIX + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, LEN_PREFIX + len)))
}

/// Decodes a buffer that must hold exactly one whole frame: an incomplete
/// frame is [`FrameError::Truncated`], bytes after it [`FrameError::TrailingBytes`].
pub fn decode_exact<T: DeserializeOwned>(src: &[u8]) -> Result<T, FrameError> {
    let missing = |len: usize| FrameError::Truncated {
        missing: len.saturating_sub(src.len()),
    };
    let len = body_len(src)?.ok_or_else(|| missing(LEN_PREFIX))?;
    let (msg, used) = decode(src)?.ok_or_else(|| missing(LEN_PREFIX + len))?;
    if used != src.len() {
        return Err(FrameError::TrailingBytes {
            extra: src.len() - used,
        });
    }
    Ok(msg)
}
