//! Property tests: no input, however hostile, panics the decoder, and a
//! message that decoded survives a re-encode unchanged.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

use bytes::BytesMut;
use jobworker_ipc::codec::FrameCodec;
use jobworker_ipc::frame;
use jobworker_ipc::{Call, Response};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        buf.extend_from_slice(&body);
        if let Ok(call) = frame::decode_exact::<Call>(&buf) {
            let mut again = Vec::new();
            frame::encode(&call, &mut again).unwrap();
            prop_assert_eq!(frame::decode_exact::<Call>(&again).unwrap(), call);
        }
        let _ = frame::decode_exact::<Response>(&buf);
    }

    #[test]
    fn random_streams_never_panic_the_codec(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        split in 0usize..1024,
    ) {
        let mut codec = FrameCodec::<Call, Response>::new();
        let split = split.min(bytes.len());
        let mut buf = BytesMut::from(&bytes[..split]);
        let mut steps = 0;
        loop {
            steps += 1;
            prop_assert!(steps < 2048);
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        buf.extend_from_slice(&bytes[split..]);
        let _ = codec.decode_eof(&mut buf);
    }

    /// Bodies that begin like a real call (an identity, a valid role) reach
    /// deeper into the decoder than uniform noise does.
    #[test]
    fn mutated_calls_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..256),
        flip in any::<usize>(),
    ) {
        let mut body = vec![1, 5];
        body.extend_from_slice(b"alice");
        body.push(1);
        body.extend_from_slice(&tail);
        if !body.is_empty() {
            let i = flip % body.len();
            body[i] ^= 0x80;
        }
        let mut buf = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        buf.extend_from_slice(&body);
        let _ = frame::decode_exact::<Call>(&buf);
    }
}
