//! Fuzzes the request-head reader with arbitrary client bytes: however they are split, it must
//! never panic, never take a head longer than its cap, and whenever it takes a head as complete,
//! that is exactly where httparse (Pingora's parser) ends it, and a single read of the same
//! bytes gets the same answer.
//!
//! Input layout: byte 0 picks the cap (64..=16,384 bytes), byte 1 seeds the piece sizes, the
//! rest is what the client sends.

#![no_main]

use libfuzzer_sys::fuzz_target;
use streamguard::server::head::{HeadReader, Progress, MAX_HEADERS};

/// Feeds `input` to a fresh reader the way the connection loop does: the buffer grows by
/// pieces of 1 to 97 bytes, never past `max`, and reading stops at the first answer.
fn feed(input: &[u8], max: usize, seed: u8) -> Progress {
    let mut reader = HeadReader::new(max);
    let limit = input.len().min(max);
    let mut end = 0;
    let mut round = usize::from(seed);
    loop {
        round += 13;
        end = (end + 1 + round % 97).min(limit);
        let progress = reader.advance(&input[..end]);
        if progress != Progress::NeedMore || end == limit {
            return progress;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [cap, seed, input @ ..] = data else {
        return;
    };
    let max = 64 + usize::from(*cap) * 64;
    let pieces = feed(input, max, *seed);
    if let Progress::Complete(len) = pieces {
        assert!(len <= max);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let parsed = httparse::Request::new(&mut headers).parse(&input[..input.len().min(max)]);
        assert_eq!(parsed.ok(), Some(httparse::Status::Complete(len)));
        let whole = HeadReader::new(max).advance(&input[..input.len().min(max)]);
        assert_eq!(whole, pieces);
    }
});
