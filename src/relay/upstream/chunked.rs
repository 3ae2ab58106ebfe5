//! Incremental decoder for `Transfer-Encoding: chunked` response bodies (RFC 9112 §7.1).
//!
//! It decodes from the connection's read buffer in place: chunk data leaves the buffer as
//! zero-copy `Bytes` slices, framing is dropped as soon as it is complete, and a partial line
//! simply waits for more input. Nothing decoded is ever held outside the buffer, which is what
//! makes the connection's `read_body_bytes` cancel-safe.
//!
//! Leniency: a bare LF is accepted as a line end (RFC 9112 §2.2 allows it). That is safe here
//! because a stream connection carries exactly one response and is never reused, so there is no
//! later response a disagreement about framing could smuggle bytes into. A CR anywhere but right
//! before the LF is an error, as is anything in the chunk-size that is not hex.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (size plus extensions) or trailer line accepted. Extensions are
/// ignored, so a line longer than this is an upstream trying to make the proxy buffer.
pub const MAX_LINE: usize = 4096;
/// All trailer lines together; trailers are skipped, this only bounds the work.
pub const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("invalid chunk size line")]
    BadSize,
    #[error("chunk size line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("chunked trailers too large")]
    TrailersTooLarge,
    #[error("invalid chunked trailer line")]
    BadTrailer,
}

/// What one decoding step produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A non-empty piece of the body.
    Data(Bytes),
    /// The buffer holds no complete next element: read more and call again.
    NeedMore,
    /// The last chunk and the trailers were read: the body is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes to go.
    Data(u64),
    /// Chunk data done, expecting its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty line; bytes seen so far.
    Trailers(usize),
    Done,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder { state: State::Size }
    }

    /// Consumes framing from `buf` and returns the next piece of body data, if `buf` holds one.
    /// Once an error is returned the body is corrupt: the caller must stop.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkedError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_size_line(&line)?;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::DataEnd => match buf.first() {
                    None => return Ok(Decoded::NeedMore),
                    Some(b'\n') => {
                        buf.advance(1);
                        self.state = State::Size;
                    }
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(Decoded::NeedMore),
                        Some(b'\n') => {
                            buf.advance(2);
                            self.state = State::Size;
                        }
                        Some(_) => return Err(ChunkedError::MissingCrlf),
                    },
                    Some(_) => return Err(ChunkedError::MissingCrlf),
                },
                State::Trailers(seen) => {
                    let before = buf.len();
                    let Some(line) = take_line(buf)? else {
                        if seen + buf.len() > MAX_TRAILERS {
                            return Err(ChunkedError::TrailersTooLarge);
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                        continue;
                    }
                    let seen = seen + (before - buf.len());
                    if seen > MAX_TRAILERS {
                        return Err(ChunkedError::TrailersTooLarge);
                    }
                    // A trailer is skipped, but must at least look like a field line.
                    if line.iter().any(|&b| is_forbidden_ctl(b)) || !line.contains(&b':') {
                        return Err(ChunkedError::BadTrailer);
                    }
                    self.state = State::Trailers(seen);
                }
            }
        }
    }
}

/// Removes one line (without its line end) from `buf`, or `None` if no line end arrived yet.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, ChunkedError> {
    let Some(lf) = memchr::memchr(b'\n', &buf[..buf.len().min(MAX_LINE + 2)]) else {
        if buf.len() > MAX_LINE + 1 {
            return Err(ChunkedError::LineTooLong);
        }
        return Ok(None);
    };
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf);
    if line.last() == Some(&b'\r') {
        line.truncate(lf - 1);
    }
    if line.len() > MAX_LINE {
        return Err(ChunkedError::LineTooLong);
    }
    Ok(Some(line))
}

/// `chunk-size [ BWS ";" chunk-ext ]`: the size in hex, extensions ignored.
fn parse_size_line(line: &[u8]) -> Result<u64, ChunkedError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    // 16 hex digits fill a u64; more leading digits could only be zeros, which no sane
    // upstream sends, so refuse them rather than special-case.
    if digits == 0 || digits > 16 {
        return Err(ChunkedError::BadSize);
    }
    let size = line[..digits].iter().fold(0u64, |acc, &b| {
        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
        (acc << 4) | d
    });
    let rest = &line[digits..];
    let after_ws = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .map_or(&rest[rest.len()..], |i| &rest[i..]);
    match after_ws.first() {
        None if rest.is_empty() => {}
        // Whitespace after the size is only allowed before an extension.
        None => return Err(ChunkedError::BadSize),
        Some(b';') => {
            if after_ws.iter().any(|&b| is_forbidden_ctl(b)) {
                return Err(ChunkedError::BadSize);
            }
        }
        Some(_) => return Err(ChunkedError::BadSize),
    }
    Ok(size)
}

/// Control characters (other than HTAB) never valid inside a field or extension; this includes
/// a stray CR that is not part of the line end.
fn is_forbidden_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` in the given pieces and collects the body; errors are returned as is.
    fn decode_pieces(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool), ChunkedError> {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match dec.decode(&mut buf)? {
                    Decoded::Data(d) => {
                        assert!(!d.is_empty(), "empty data pieces are never returned");
                        body.extend_from_slice(&d);
                    }
                    Decoded::NeedMore => break,
                    Decoded::End => return Ok((body, true)),
                }
            }
        }
        Ok((body, false))
    }

    /// Decodes `input` split at every single point and at every pair of points (short inputs),
    /// checking each split gives the same result as the whole.
    fn decode_every_split(input: &[u8]) -> Result<(Vec<u8>, bool), ChunkedError> {
        let whole = decode_pieces(&[input]);
        for i in 0..=input.len() {
            assert_eq!(
                decode_pieces(&[&input[..i], &input[i..]]),
                whole,
                "split at {i} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        if input.len() <= 64 {
            for i in 0..=input.len() {
                for j in i..=input.len() {
                    assert_eq!(
                        decode_pieces(&[&input[..i], &input[i..j], &input[j..]]),
                        whole
                    );
                }
            }
        }
        // Byte by byte: the hardest split for line-based framing.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(decode_pieces(&bytes), whole);
        whole
    }

    #[test]
    fn fixtures_decode_the_same_at_every_split_point() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"a\r\n0123456789\r\n00\r\n\r\n", b"0123456789"),
            // Extensions, with and without values and whitespace, are ignored.
            (b"3;name=val\r\nabc\r\n0;x\r\n\r\n", b"abc"),
            (b"3 ;q=\"a;b\"\r\nabc\r\n0\r\n\r\n", b"abc"),
            (b"3\t; ext\r\nabc\r\n0\r\n\r\n", b"abc"),
            // Trailers are skipped.
            (
                b"2\r\nhi\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n",
                b"hi",
            ),
            // Bare LF line ends.
            (b"2\nhi\n0\n\n", b"hi"),
            (b"2\r\nhi\n0\r\nTrailer: x\n\r\n", b"hi"),
            // SSE-shaped chunks: data with CRLF inside.
            (
                b"d\r\ndata: a\r\n\r\n\r\n\r\n0\r\n\r\n",
                b"data: a\r\n\r\n\r\n",
            ),
            // Empty body.
            (b"0\r\n\r\n", b""),
        ];
        for (wire, body) in cases {
            let (got, ended) = decode_every_split(wire).expect("fixture decodes");
            assert_eq!(got, *body, "{:?}", String::from_utf8_lossy(wire));
            assert!(ended);
        }
    }

    #[test]
    fn bytes_after_the_last_chunk_are_not_body() {
        let (body, ended) = decode_pieces(&[b"1\r\na\r\n0\r\n\r\nGARBAGE"]).unwrap();
        assert_eq!((body.as_slice(), ended), (&b"a"[..], true));
    }

    #[test]
    fn a_body_cut_short_never_reports_the_end() {
        let wire = b"5\r\nhello\r\n0\r\n\r\n";
        for cut in 0..wire.len() {
            let (body, ended) = decode_pieces(&[&wire[..cut]]).unwrap();
            assert!(!ended, "ended after {cut} bytes");
            assert!(b"hello".starts_with(&body));
        }
    }

    #[test]
    fn malformed_size_lines_are_errors() {
        let bad: &[&[u8]] = &[
            b"\r\n",
            b"g\r\n",
            b"-1\r\n",
            b"+1\r\n",
            b"0x5\r\n",
            b" 5\r\n",
            b"5 \r\n",
            b"5 x\r\n",
            b"5\rx\n",
            b"5;a\rb\r\n",
            b"5;a\0\r\n",
            // 17 hex digits: more than a u64 holds.
            b"10000000000000000\r\n",
        ];
        for wire in bad {
            assert_eq!(
                decode_every_split(wire),
                Err(ChunkedError::BadSize),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn the_largest_chunk_size_is_accepted() {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nabc"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(dec.state, State::Data(u64::MAX - 3));
    }

    #[test]
    fn chunk_data_must_be_followed_by_a_line_end() {
        assert_eq!(
            decode_every_split(b"3\r\nabcX\r\n0\r\n\r\n"),
            Err(ChunkedError::MissingCrlf)
        );
        assert_eq!(
            decode_every_split(b"3\r\nabc\rX0\r\n\r\n"),
            Err(ChunkedError::MissingCrlf)
        );
    }

    #[test]
    fn overlong_lines_are_refused_without_waiting_for_their_end() {
        let mut long = b"1;".to_vec();
        long.resize(MAX_LINE + 10, b'a');
        assert_eq!(decode_pieces(&[&long]), Err(ChunkedError::LineTooLong));
        // Exactly at the limit is fine.
        let mut ok = b"1;".to_vec();
        ok.resize(MAX_LINE, b'a');
        ok.extend_from_slice(b"\r\nz\r\n0\r\n\r\n");
        assert_eq!(decode_pieces(&[&ok]), Ok((b"z".to_vec(), true)));
        let mut trailer = b"0\r\nX: ".to_vec();
        trailer.resize(MAX_LINE + 10, b'a');
        assert_eq!(decode_pieces(&[&trailer]), Err(ChunkedError::LineTooLong));
    }

    #[test]
    fn endless_trailers_are_refused() {
        let mut wire = b"0\r\n".to_vec();
        for _ in 0..(MAX_TRAILERS / 10 + 1) {
            wire.extend_from_slice(b"X-Ab: cd\r\n");
        }
        assert_eq!(decode_pieces(&[&wire]), Err(ChunkedError::TrailersTooLarge));
        assert_eq!(
            decode_pieces(&[b"0\r\nnot a field\r\n\r\n"]),
            Err(ChunkedError::BadTrailer)
        );
    }

    /// Chunks `body` at the given sizes (cycled), with the given line ends and extensions.
    fn encode(body: &[u8], sizes: &[usize], bare_lf: bool, ext: bool, upper: bool) -> Vec<u8> {
        let eol: &[u8] = if bare_lf { b"\n" } else { b"\r\n" };
        let mut out = Vec::new();
        let mut rest = body;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].clamp(1, rest.len());
            i += 1;
            let size = if upper {
                format!("{n:X}")
            } else {
                format!("{n:x}")
            };
            out.extend_from_slice(size.as_bytes());
            if ext {
                out.extend_from_slice(b";k=v");
            }
            out.extend_from_slice(eol);
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(eol);
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0");
        out.extend_from_slice(eol);
        out.extend_from_slice(eol);
        out
    }

    proptest! {
        #[test]
        fn random_bodies_chunked_and_split_randomly_decode_to_the_same_bytes(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            sizes in proptest::collection::vec(1usize..300, 1..8),
            cuts in proptest::collection::vec(0usize..4000, 0..12),
            bare_lf in any::<bool>(),
            ext in any::<bool>(),
            upper in any::<bool>(),
        ) {
            let wire = encode(&body, &sizes, bare_lf, ext, upper);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&wire[at..c]);
                at = c;
            }
            pieces.push(&wire[at..]);
            prop_assert_eq!(decode_pieces(&pieces), Ok((body, true)));
        }

        #[test]
        fn a_corrupted_size_digit_is_an_error_or_a_different_framing_never_a_panic(
            body in proptest::collection::vec(any::<u8>(), 1..200),
            junk in any::<u8>(),
        ) {
            let mut wire = encode(&body, &[64], false, false, false);
            wire[0] = junk;
            // Whatever the result, decoding must terminate without panicking, and a non-hex
            // first byte must be refused.
            let got = decode_pieces(&[&wire]);
            if !junk.is_ascii_hexdigit() {
                prop_assert!(got.is_err());
            }
        }
    }
}
