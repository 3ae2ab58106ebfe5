//! Feeds arbitrary bytes, cut into arbitrary chunks, through the WebSocket frame decoder. The
//! decoder sits in front of untrusted peers, so beyond not panicking it must hand back exactly
//! the bytes it consumed, in order, and consume nothing when it asks for more input or fails.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use streamguard::relay::websocket::frame::{Direction, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the decoder settings and the chunk size, the rest is the stream.
    let Some((&settings, input)) = data.split_first() else {
        return;
    };
    let direction = if settings & 1 == 0 {
        Direction::FromClient
    } else {
        Direction::FromUpstream
    };
    let allow_rsv1 = settings & 2 != 0;
    let max_message_size = if settings & 4 == 0 { 1 << 16 } else { 64 };
    let chunk_size = usize::from(settings >> 3) + 1;

    let mut decoder = FrameDecoder::new(direction, max_message_size, allow_rsv1);
    let mut buf = BytesMut::new();
    let mut forwarded = Vec::with_capacity(input.len());
    'feed: for chunk in input.chunks(chunk_size) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => {
                    let wire = item.wire();
                    assert!(!wire.is_empty());
                    assert_eq!(wire.len(), before - buf.len());
                    forwarded.extend_from_slice(wire);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before);
                    break;
                }
                Err(error) => {
                    assert_eq!(buf.len(), before);
                    assert!([1002, 1007, 1009].contains(&error.close_code()));
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(forwarded, input[..forwarded.len()]);
});
