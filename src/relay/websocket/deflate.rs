//! permessage-deflate (RFC 7692), as far as the proxy takes part in it: which offers reach the
//! app, what the app's answer agreed to, and an inflater that measures each compressed client
//! message without keeping any of it.
//!
//! `max_message_size` counts payload bytes, and a compressed payload is not what the app gets:
//! 4 KB of deflate data inflate to 4 MiB. So either no extension is negotiated at all
//! ([`Compression::Strip`], the default: the offer never reaches the app, and a 101 that names an
//! extension anyway is refused), or the proxy inflates every compressed client message as it
//! passes ([`Compression::Inflate`]), counting the output into a small scratch buffer and
//! stopping the moment the count passes the limit. Inflating costs O(limit) however far a
//! message would inflate, and the inflater exists only on connections that negotiated
//! compression.
//!
//! The proxy forwards wire bytes unchanged, so its inflater has to read each message exactly as
//! the app's does: the same window (`client_max_window_bits`), a fresh context per message
//! exactly when `client_no_context_takeover` was agreed, the same trailer appended at the
//! message's end (RFC 7692 7.2.2). Offers reach the app rewritten from what the proxy parsed, so
//! the app cannot read the handshake differently from the proxy.

use flate2::{Decompress, FlushDecompress, Status};
use thiserror::Error;

use super::frame::{apply_mask, Part};
use crate::config::Compression;

/// The extension this module knows; any other cannot be followed by the frame decoder.
const PERMESSAGE_DEFLATE: &str = "permessage-deflate";
const SERVER_NO_CONTEXT_TAKEOVER: &str = "server_no_context_takeover";
const CLIENT_NO_CONTEXT_TAKEOVER: &str = "client_no_context_takeover";
const SERVER_MAX_WINDOW_BITS: &str = "server_max_window_bits";
const CLIENT_MAX_WINDOW_BITS: &str = "client_max_window_bits";
/// RFC 7692 7.1.2: window bits are 8..=15; 15 when a side's parameter is absent.
const WINDOW_BITS: std::ops::RangeInclusive<u8> = 8..=15;
const DEFAULT_WINDOW_BITS: u8 = 15;
/// The smallest window zlib inflates with: zlib-based compressors asked for 8 bits use 9, so
/// an inflater held to 8 would refuse what the app, and the client's own library, accept.
const MIN_INFLATE_WINDOW_BITS: u8 = 9;
/// RFC 7692 7.2.2: the receiver appends these four bytes to a message's payload.
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Inflated output goes here and is thrown away; only its length counts.
const SCRATCH: usize = 8 * 1024;
/// Masked input is unmasked into a copy this big at a time (a multiple of 4, so the key stays
/// lined up from one step to the next).
const INPUT_STEP: usize = 1024;

/// What the app agreed to in its 101, as far as reading the client's messages goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The client starts every message with an empty window (`client_no_context_takeover`).
    pub client_no_context_takeover: bool,
    /// The client's LZ77 window (`client_max_window_bits`; 15 when the answer leaves it out).
    pub client_max_window_bits: u8,
}

/// Why the app's handshake answer cannot be relayed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExtensionError {
    #[error(
        "the app's 101 names WebSocket extensions ({0:?}) although the proxy offered it none \
         (websocket.compression = \"strip\"); turn compression off in the app, or set \
         websocket.compression = \"inflate\" to let permessage-deflate through"
    )]
    NotOffered(String),
    #[error(
        "the app's Sec-WebSocket-Extensions answer {0:?} is not a single valid \
         permessage-deflate response (rfc 7692 7.1); the proxy offered nothing else, so the app \
         must accept that offer as it is or decline it"
    )]
    BadAnswer(String),
}

/// Reads a `Sec-WebSocket-Extensions` list (RFC 6455 9.1): extensions separated by commas, each
/// a token with `;`-separated parameters, a parameter's value a token or a quoted string whose
/// unescaped text is a token. Whitespace around the separators is allowed. `None` on any syntax
/// error: a list the proxy cannot read is not passed on to be read differently by the app.
fn parse_list(value: &str) -> Option<Vec<Extension>> {
    let mut cursor = Cursor {
        bytes: value.as_bytes(),
        at: 0,
    };
    let mut list = Vec::new();
    loop {
        cursor.skip_space();
        if cursor.eat(b',') {
            // Empty list elements are allowed (RFC 9110 5.6.1).
            continue;
        }
        if cursor.done() {
            return Some(list);
        }
        let name = cursor.token()?;
        let mut params = Vec::new();
        loop {
            cursor.skip_space();
            if cursor.done() || cursor.eat(b',') {
                break;
            }
            if !cursor.eat(b';') {
                return None;
            }
            cursor.skip_space();
            let param = cursor.token()?;
            cursor.skip_space();
            let value = if cursor.eat(b'=') {
                cursor.skip_space();
                Some(cursor.value()?)
            } else {
                None
            };
            params.push((param, value));
        }
        list.push(Extension { name, params });
    }
}

/// One parsed extension: its name and parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Extension {
    name: String,
    params: Vec<(String, Option<String>)>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        if matched {
            self.at += 1;
        }
        matched
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// One or more RFC 9110 `tchar`s.
    fn token(&mut self) -> Option<String> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        let token = self.bytes.get(start..self.at).filter(|t| !t.is_empty())?;
        String::from_utf8(token.to_vec()).ok()
    }

    /// A token, or a quoted string whose unescaped text is a token.
    fn value(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return self.token();
        }
        let mut text = Vec::new();
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    self.at += 1;
                    text.push(self.peek()?);
                }
                byte => text.push(byte),
            }
            self.at += 1;
        }
        self.at += 1;
        (!text.is_empty() && text.iter().copied().all(is_tchar))
            .then(|| String::from_utf8(text).ok())
            .flatten()
    }
}

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A window-bits value: a decimal 8..=15 without leading zeros.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') {
        return None;
    }
    value.parse().ok().filter(|bits| WINDOW_BITS.contains(bits))
}

/// Checks one permessage-deflate parameter list (RFC 7692 7.1): known names, each at most
/// once, with the values each allows. `answer`: a server's response, where
/// `client_max_window_bits` needs a value; in an offer it may come without one.
fn deflate_params(params: &[(String, Option<String>)], answer: bool) -> Option<DeflateParams> {
    let mut seen: Vec<&str> = Vec::with_capacity(params.len());
    let mut parsed = DeflateParams {
        client_no_context_takeover: false,
        client_max_window_bits: DEFAULT_WINDOW_BITS,
    };
    for (name, value) in params {
        if seen.contains(&name.as_str()) {
            return None;
        }
        seen.push(name);
        match (name.as_str(), value.as_deref()) {
            (SERVER_NO_CONTEXT_TAKEOVER, None) => {}
            (CLIENT_NO_CONTEXT_TAKEOVER, None) => parsed.client_no_context_takeover = true,
            (SERVER_MAX_WINDOW_BITS, Some(bits)) => {
                window_bits(bits)?;
            }
            (CLIENT_MAX_WINDOW_BITS, Some(bits)) => {
                parsed.client_max_window_bits = window_bits(bits)?
            }
            (CLIENT_MAX_WINDOW_BITS, None) if !answer => {}
            _ => return None,
        }
    }
    Some(parsed)
}

/// Writes an extension back in canonical form: no spaces around `=`, no quotes.
fn render(extension: &Extension) -> String {
    let mut out = extension.name.clone();
    for (name, value) in &extension.params {
        out.push_str("; ");
        out.push_str(name);
        if let Some(value) = value {
            out.push('=');
            out.push_str(value);
        }
    }
    out
}

/// The client's offers as the app gets them with [`Compression::Inflate`]: its valid
/// permessage-deflate offers, rewritten from what the proxy parsed. Other extensions are left
/// out (the frame decoder could not follow the frames they change), and so is every offer RFC
/// 7692 tells a server to decline. `None`: nothing to offer, the header is removed.
pub fn upstream_offer(offered: &str) -> Option<String> {
    let offers: Vec<String> = parse_list(offered)?
        .iter()
        .filter(|ext| {
            ext.name == PERMESSAGE_DEFLATE && deflate_params(&ext.params, false).is_some()
        })
        .map(render)
        .collect();
    (!offers.is_empty()).then(|| offers.join(", "))
}

/// What the app's 101 agreed to, from its `Sec-WebSocket-Extensions` (`answer`, all lines joined
/// with commas): `None` when no extension is in use. With [`Compression::Strip`] the app was
/// offered nothing, so naming any extension is an error; with [`Compression::Inflate`] the answer
/// must be one valid permessage-deflate response.
pub fn negotiated(
    answer: Option<&str>,
    compression: Compression,
) -> Result<Option<DeflateParams>, ExtensionError> {
    let Some(answer) = answer.filter(|a| !a.trim_matches([' ', '\t', ',']).is_empty()) else {
        return Ok(None);
    };
    if compression == Compression::Strip {
        return Err(ExtensionError::NotOffered(answer.to_owned()));
    }
    let bad = || ExtensionError::BadAnswer(answer.to_owned());
    match parse_list(answer).ok_or_else(bad)?.as_slice() {
        [ext] if ext.name == PERMESSAGE_DEFLATE => {
            deflate_params(&ext.params, true).map(Some).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// A compressed client message the proxy will not pass on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InflateError {
    #[error("compressed message inflates past max_message_size ({limit} bytes)")]
    TooBig { limit: u64 },
    #[error("compressed message is not valid deflate data (rfc 7692 7.2.2): {0}")]
    Corrupt(String),
    #[error("compressed message goes on after its deflate stream's final block")]
    AfterFinalBlock,
}

impl InflateError {
    /// The close code (RFC 6455 7.4.1) for the client: 1009 for a message too big once
    /// inflated, 1007 for data that is not what its frame header says.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::TooBig { .. } => super::close_code::TOO_BIG,
            Self::Corrupt(_) | Self::AfterFinalBlock => super::close_code::INVALID_PAYLOAD,
        }
    }
}

/// Inflates one connection's compressed client messages to measure them, discarding the output.
pub struct Inflater {
    inflate: Decompress,
    limit: u64,
    reset_each_message: bool,
    /// Inflated bytes of the message being read.
    size: u64,
    /// The deflate stream ended (a final block) in this message: the next message starts a new
    /// one, and nothing but the trailer may follow in this one.
    ended: bool,
    /// The stream holds no context the next message may refer to.
    fresh: bool,
}

impl Inflater {
    /// For a connection whose 101 agreed to `params`, holding each message to `limit` bytes.
    pub fn new(params: DeflateParams, limit: u64) -> Self {
        let bits = params
            .client_max_window_bits
            .clamp(MIN_INFLATE_WINDOW_BITS, DEFAULT_WINDOW_BITS);
        Inflater {
            inflate: Decompress::new_with_window_bits(false, bits),
            limit,
            reset_each_message: params.client_no_context_takeover,
            size: 0,
            ended: false,
            fresh: true,
        }
    }

    /// Follows one item of a compressed message: `part` and `bytes` as the frame decoder gave
    /// them, `message_start` and `message_end` its flags.
    pub fn inspect(
        &mut self,
        part: Part,
        bytes: &[u8],
        message_start: bool,
        message_end: bool,
    ) -> Result<(), InflateError> {
        if message_start {
            self.start_message();
        }
        if let Part::Payload { key } = part {
            self.feed(bytes, key)?;
        }
        if message_end && !self.ended {
            self.inflate_clear(&TRAILER)?;
        }
        Ok(())
    }

    fn start_message(&mut self) {
        if (self.reset_each_message || self.ended) && !self.fresh {
            self.inflate.reset(false);
            self.fresh = true;
        }
        self.size = 0;
        self.ended = false;
    }

    /// Unmasks `wire` a step at a time into a stack copy and inflates it.
    fn feed(&mut self, wire: &[u8], mut key: [u8; 4]) -> Result<(), InflateError> {
        let mut clear = [0u8; INPUT_STEP];
        for step in wire.chunks(INPUT_STEP) {
            let clear = &mut clear[..step.len()];
            clear.copy_from_slice(step);
            apply_mask(clear, key);
            key.rotate_left(step.len() % 4);
            self.inflate_clear(clear)?;
        }
        Ok(())
    }

    /// Inflates `input` into the scratch buffer until all of it is consumed and no output is
    /// pending, counting the output. Every turn either produces output, which the limit bounds,
    /// or consumes input, so the work is O(input + limit).
    fn inflate_clear(&mut self, mut input: &[u8]) -> Result<(), InflateError> {
        let mut scratch = [0u8; SCRATCH];
        loop {
            if self.ended {
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err(InflateError::AfterFinalBlock)
                };
            }
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress(input, &mut scratch, FlushDecompress::None)
                .map_err(|e| InflateError::Corrupt(e.to_string()))?;
            // Both deltas are bounded by the slices just passed in.
            let consumed = (self.inflate.total_in() - in_before) as usize;
            let produced = self.inflate.total_out() - out_before;
            input = input.get(consumed..).unwrap_or_default();
            self.fresh = false;
            self.size = self.size.saturating_add(produced);
            if self.size > self.limit {
                return Err(InflateError::TooBig { limit: self.limit });
            }
            match status {
                Status::StreamEnd => self.ended = true,
                // A full scratch buffer may leave output pending: go round for it.
                _ if produced == SCRATCH as u64 => {}
                _ if input.is_empty() => return Ok(()),
                // Input left, room for output, and nothing moved: zlib cannot go on.
                _ if consumed == 0 && produced == 0 => {
                    return Err(InflateError::Corrupt("inflate made no progress".into()))
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression as Level, FlushCompress};
    use proptest::prelude::*;

    const PMD: &str = PERMESSAGE_DEFLATE;

    #[test]
    fn strip_refuses_any_answer_and_inflate_reads_a_valid_one() {
        assert_eq!(negotiated(None, Compression::Strip), Ok(None));
        assert_eq!(negotiated(Some(" , "), Compression::Strip), Ok(None));
        assert!(matches!(
            negotiated(Some(PMD), Compression::Strip),
            Err(ExtensionError::NotOffered(_))
        ));
        let cases: &[(&str, Option<(bool, u8)>)] = &[
            ("permessage-deflate", Some((false, 15))),
            (
                "permessage-deflate; client_no_context_takeover",
                Some((true, 15)),
            ),
            (
                "permessage-deflate ;client_max_window_bits=10; server_no_context_takeover",
                Some((false, 10)),
            ),
            (
                "permessage-deflate; client_max_window_bits=\"9\"; server_max_window_bits=8",
                Some((false, 9)),
            ),
            // A response must give client_max_window_bits a value.
            ("permessage-deflate; client_max_window_bits", None),
            ("permessage-deflate; client_max_window_bits=16", None),
            ("permessage-deflate; client_max_window_bits=7", None),
            ("permessage-deflate; client_max_window_bits=010", None),
            ("permessage-deflate; server_max_window_bits", None),
            ("permessage-deflate; client_no_context_takeover=1", None),
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                None,
            ),
            ("permessage-deflate; x_extra", None),
            ("permessage-deflate, permessage-deflate", None),
            ("x-webkit-deflate-frame", None),
            ("Permessage-Deflate", None),
            ("permessage-deflate; client_max_window_bits=\"1 0\"", None),
            ("permessage-deflate;", None),
            ("permessage-deflate; =1", None),
        ];
        for (answer, expected) in cases {
            let got = negotiated(Some(answer), Compression::Inflate);
            match expected {
                Some((takeover, bits)) => assert_eq!(
                    got,
                    Ok(Some(DeflateParams {
                        client_no_context_takeover: *takeover,
                        client_max_window_bits: *bits,
                    })),
                    "{answer}"
                ),
                None => assert!(
                    matches!(got, Err(ExtensionError::BadAnswer(_))),
                    "{answer}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn offers_reach_the_app_rewritten_and_only_valid_deflate_ones() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "permessage-deflate; client_max_window_bits",
                Some("permessage-deflate; client_max_window_bits"),
            ),
            (
                "permessage-deflate;client_max_window_bits=\"10\" , x-foo; a=b, permessage-deflate",
                Some("permessage-deflate; client_max_window_bits=10, permessage-deflate"),
            ),
            ("x-webkit-deflate-frame", None),
            ("permessage-deflate; server_max_window_bits=20", None),
            ("permessage-deflate; mystery", None),
            ("permessage-deflate; a=\"unterminated", None),
            ("permessage-deflate, \"quoted\"", None),
            ("", None),
        ];
        for (offer, expected) in cases {
            assert_eq!(upstream_offer(offer).as_deref(), *expected, "{offer}");
        }
    }

    /// Raw deflate data for each message, as a client compresses it: sync-flushed, the
    /// trailing `00 00 ff ff` removed (RFC 7692 7.2.1).
    fn compress(messages: &[&[u8]], no_context_takeover: bool) -> Vec<Vec<u8>> {
        let mut deflate = Compress::new(Level::default(), false);
        messages
            .iter()
            .map(|message| {
                if no_context_takeover {
                    deflate.reset();
                }
                let mut out = Vec::with_capacity(message.len() + 64);
                let mut input: &[u8] = message;
                loop {
                    out.reserve(4096);
                    let before = deflate.total_in();
                    deflate
                        .compress_vec(input, &mut out, FlushCompress::Sync)
                        .expect("compress");
                    input = &input[(deflate.total_in() - before) as usize..];
                    if input.is_empty() && out.ends_with(&TRAILER) {
                        break;
                    }
                }
                out.truncate(out.len() - TRAILER.len());
                out
            })
            .collect()
    }

    /// Runs one message's payload through `inflater` as the relay would: masked with `key`, in
    /// pieces of `piece` bytes (at least one piece, even for an empty payload).
    fn inspect_message(
        inflater: &mut Inflater,
        payload: &[u8],
        key: [u8; 4],
        piece: usize,
    ) -> Result<u64, InflateError> {
        let mut wire = payload.to_vec();
        apply_mask(&mut wire, key);
        inflater.inspect(Part::Header, &[], true, false)?;
        let pieces: Vec<&[u8]> = wire.chunks(piece.max(1)).collect();
        let mut key = key;
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            inflater.inspect(Part::Payload { key }, piece, false, last)?;
            key.rotate_left(piece.len() % 4);
        }
        if pieces.is_empty() {
            inflater.inspect(Part::Header, &[], false, true)?;
        }
        Ok(inflater.size)
    }

    fn params(no_context_takeover: bool) -> DeflateParams {
        DeflateParams {
            client_no_context_takeover: no_context_takeover,
            client_max_window_bits: 15,
        }
    }

    #[test]
    fn a_bomb_stops_just_past_the_limit() {
        let bomb = vec![0u8; 4 << 20];
        let wire = compress(&[&bomb], false).remove(0);
        assert!(wire.len() < 8 * 1024, "{} bytes", wire.len());
        let limit = 64 * 1024;
        let mut inflater = Inflater::new(params(false), limit);
        let error = inspect_message(&mut inflater, &wire, [1, 2, 3, 4], 1000);
        assert_eq!(error, Err(InflateError::TooBig { limit }));
        assert_eq!(InflateError::TooBig { limit }.close_code(), 1009);
        // It stopped within one scratch buffer of the limit, not at 4 MiB.
        assert!(inflater.inflate.total_out() <= limit + SCRATCH as u64);
    }

    #[test]
    fn messages_right_at_the_limit_pass_and_one_byte_more_does_not() {
        let limit = 10_000u64;
        let exact = vec![b'x'; limit as usize];
        let over = vec![b'x'; limit as usize + 1];
        for takeover in [false, true] {
            let wires = compress(&[&exact, &exact, &over], takeover);
            let mut inflater = Inflater::new(params(takeover), limit);
            for wire in &wires[..2] {
                assert_eq!(inspect_message(&mut inflater, wire, [9; 4], 7), Ok(limit));
            }
            assert_eq!(
                inspect_message(&mut inflater, &wires[2], [9; 4], 7),
                Err(InflateError::TooBig { limit })
            );
        }
    }

    #[test]
    fn context_is_kept_or_reset_as_negotiated() {
        // Noise that does not compress by itself, sent twice: the second copy is all back
        // references into the first.
        let mut seed = 7u32;
        let text: Vec<u8> = (0..2000)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect();
        let taken_over = compress(&[&text, &text], false);
        assert!(
            taken_over[1].len() < taken_over[0].len() / 4,
            "the second message refers back to the first"
        );
        // Read with a fresh context, the second message refers to nothing: the app would fail
        // it, and so does the proxy, rather than count something else.
        let mut fresh_each = Inflater::new(params(true), 1 << 20);
        assert!(inspect_message(&mut fresh_each, &taken_over[0], [0; 4], 50).is_ok());
        assert!(matches!(
            inspect_message(&mut fresh_each, &taken_over[1], [0; 4], 50),
            Err(InflateError::Corrupt(_))
        ));
        let mut kept = Inflater::new(params(false), 1 << 20);
        for wire in &taken_over {
            assert_eq!(
                inspect_message(&mut kept, wire, [0; 4], 50),
                Ok(text.len() as u64)
            );
        }
    }

    #[test]
    fn a_final_block_ends_the_message_and_the_next_starts_afresh() {
        // Compressed with Finish: the message ends with a final block (allowed by RFC 7692
        // 7.2.3.3), after which the next message is a new stream.
        let finished = |data: &[u8]| {
            let mut deflate = Compress::new(Level::default(), false);
            let mut out = Vec::with_capacity(data.len() + 64);
            deflate
                .compress_vec(data, &mut out, FlushCompress::Finish)
                .expect("compress");
            out
        };
        let mut inflater = Inflater::new(params(false), 1 << 20);
        for data in [&b"first message"[..], b"second message"] {
            let wire = finished(data);
            assert_eq!(
                inspect_message(&mut inflater, &wire, [5, 6, 7, 8], 3),
                Ok(data.len() as u64)
            );
        }
        let mut wire = finished(b"done");
        wire.extend_from_slice(b"more");
        assert_eq!(
            inspect_message(&mut inflater, &wire, [0; 4], 100),
            Err(InflateError::AfterFinalBlock)
        );
        assert_eq!(InflateError::AfterFinalBlock.close_code(), 1007);
    }

    #[test]
    fn garbage_is_corrupt_and_an_empty_message_is_empty() {
        // An empty message as RFC 7692 7.2.3.6 sends it, and as a bare payload (which leaves a
        // stored block open, exactly as in the app's zlib).
        for empty in [&[0x00][..], &[]] {
            let mut inflater = Inflater::new(params(false), 1 << 20);
            assert_eq!(inspect_message(&mut inflater, empty, [0; 4], 1), Ok(0));
        }
        let mut broken = Inflater::new(params(false), 1 << 20);
        let error = inspect_message(&mut broken, &[0xff; 16], [0; 4], 4);
        assert!(matches!(error, Err(InflateError::Corrupt(_))), "{error:?}");
    }

    #[test]
    fn small_windows_read_what_zlib_writes_for_them() {
        let text: Vec<u8> = (0..5000u32).map(|i| (i % 97) as u8).collect();
        for bits in [8u8, 9, 12, 15] {
            let mut deflate = Compress::new_with_window_bits(
                Level::default(),
                false,
                bits.max(MIN_INFLATE_WINDOW_BITS),
            );
            let mut out = Vec::with_capacity(text.len() + 64);
            deflate
                .compress_vec(&text, &mut out, FlushCompress::Sync)
                .expect("compress");
            out.truncate(out.len() - TRAILER.len());
            let params = DeflateParams {
                client_no_context_takeover: false,
                client_max_window_bits: bits,
            };
            let mut inflater = Inflater::new(params, 1 << 20);
            assert_eq!(
                inspect_message(&mut inflater, &out, [3; 4], 333),
                Ok(text.len() as u64),
                "{bits} bits"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// However the payload is cut into pieces and masked, the count is the message's length
        /// (or the same error).
        #[test]
        fn pieces_and_masks_do_not_change_the_count(
            messages in prop::collection::vec(prop::collection::vec(0u8..4, 0..3000), 1..4),
            limit in 1u64..4000,
            key in any::<[u8; 4]>(),
            piece in 1usize..2000,
            takeover in any::<bool>(),
        ) {
            let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            let wires = compress(&refs, takeover);
            let mut whole = Inflater::new(params(takeover), limit);
            let mut cut = Inflater::new(params(takeover), limit);
            for (message, wire) in messages.iter().zip(&wires) {
                let expected = if message.len() as u64 > limit {
                    Err(InflateError::TooBig { limit })
                } else {
                    Ok(message.len() as u64)
                };
                prop_assert_eq!(&inspect_message(&mut whole, wire, [0; 4], usize::MAX), &expected);
                prop_assert_eq!(&inspect_message(&mut cut, wire, key, piece), &expected);
                if expected.is_err() {
                    break;
                }
            }
        }

        /// Arbitrary bytes never panic, and inflation never runs far past the limit.
        #[test]
        fn arbitrary_payloads_are_bounded(
            payload in prop::collection::vec(any::<u8>(), 0..2000),
            piece in 1usize..300,
            limit in 1u64..100_000,
        ) {
            let mut inflater = Inflater::new(params(false), limit);
            let _ = inspect_message(&mut inflater, &payload, [7, 7, 7, 7], piece);
            prop_assert!(inflater.inflate.total_out() <= limit + SCRATCH as u64);
        }

        /// Arbitrary header values never panic, and whatever passes as an offer reads back the
        /// same (the app gets what the proxy read).
        #[test]
        fn extension_lists_parse_without_panics(value in "[ -~\t]{0,80}") {
            let _ = negotiated(Some(&value), Compression::Inflate);
            if let Some(offer) = upstream_offer(&value) {
                let again = upstream_offer(&offer);
                prop_assert_eq!(again.as_deref(), Some(offer.as_str()));
            }
        }
    }
}
