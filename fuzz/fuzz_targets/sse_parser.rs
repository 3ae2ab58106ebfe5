//! Fuzzes the SSE framing with arbitrary upstream bytes: however they are chunked, the parser
//! must give the same segments, hold no more than its bound, and neither lose nor invent bytes.
//!
//! Input layout: byte 0 picks `max_event_size` (255 = unlimited), byte 1 seeds the chunk
//! sizes, the rest is the upstream stream.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use streamguard::relay::sse::parser::{Segment, SseParser, PENDING_OVERHEAD};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Feeds `chunks` to a fresh parser, checking its bounds after every feed; returns the
/// segments and the bytes still held at the end.
fn run<'a>(max: usize, chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<Segment>, usize) {
    let mut parser = SseParser::new(max);
    let mut out = Vec::new();
    for chunk in chunks {
        parser.feed(Bytes::copy_from_slice(chunk), &mut out);
        assert!(parser.pending_len() <= max.saturating_add(PENDING_OVERHEAD));
        assert_eq!(parser.at_boundary(), parser.pending_len() == 0);
    }
    (out, parser.pending_len())
}

/// Splits `stream` into chunks of varying sizes (1 to 23 bytes) derived from `seed`.
fn chunked(stream: &[u8], seed: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = stream;
    let mut round = usize::from(seed);
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        round += 7;
        let (chunk, tail) = rest.split_at((1 + round % 23).min(rest.len()));
        rest = tail;
        Some(chunk)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&[limit, seed], stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max = match limit {
        u8::MAX => usize::MAX,
        limit => usize::from(limit),
    };

    let (whole, _) = run(max, std::iter::once(stream));
    let (split, _) = run(max, chunked(stream, seed));
    assert_eq!(whole, split);
    for segment in &whole {
        if let Segment::Unit { bytes, .. } = segment {
            assert!(bytes.len() <= max);
        }
    }

    // Unlimited, every byte but a leading BOM and the unfinished tail comes out, in order.
    let (all, pending) = run(usize::MAX, chunked(stream, seed));
    let mut joined = Vec::with_capacity(stream.len());
    for segment in &all {
        match segment {
            Segment::Unit { bytes, .. } => joined.extend_from_slice(bytes),
            Segment::Oversize { size } => panic!("unlimited parser reported an oversize of {size}"),
        }
    }
    let expected = stream.strip_prefix(BOM).unwrap_or(stream);
    joined.extend_from_slice(&expected[expected.len() - pending..]);
    assert_eq!(joined, expected);
});
