//! Incremental framing of an upstream `text/event-stream` into whole units.
//!
//! The relay never re-encodes upstream events: re-serialising would change bytes the client
//! may depend on (field order, spacing, line endings) and costs a copy per event. Instead it
//! forwards the upstream's own bytes, but only in whole *units* (a complete event block, or a
//! complete comment or blank line outside any event). Cutting the stream only between units is
//! what lets the relay insert its own heartbeats, `retry:` hints and events, drop oversize or
//! invalid events, and forget a half-received event when the upstream stalls, without ever
//! leaving the client in the middle of a line or of an event.
//!
//! Line and field rules follow the WHATWG HTML "event stream interpretation" section.

use std::ops::Range;

use bytes::Bytes;
use memchr::{memchr, memchr2};

/// The UTF-8 byte order mark that may open a stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// How many bytes [`SseParser::pending_len`] may exceed `max_event_size` by: the first bytes of
/// a possible byte order mark, held until the stream shows whether it is one.
pub const PENDING_OVERHEAD: usize = BOM.len() - 1;

/// One output item of [`SseParser::feed`], in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A complete unit: its exact wire bytes. A zero-copy slice of the chunk when the unit lay
    /// inside one chunk; one owned buffer when it spanned chunks.
    Unit { bytes: Bytes, info: UnitInfo },
    /// A unit that grew past `max_event_size`. None of its bytes is ever emitted; this is
    /// reported where the unit ends, so `size` is its whole size (through the CR or LF that
    /// ended it).
    Oversize { size: usize },
}

/// What the relay needs to know about a unit without parsing it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitInfo {
    /// `true` for an event block (at least one field line, ended by a blank line); `false` for a
    /// comment line, a blank line outside any event, or the LF tail of a unit that ended in CR.
    pub is_event: bool,
    /// The unit's bytes are valid UTF-8.
    pub valid_utf8: bool,
    /// The unit contains a NUL byte.
    pub has_nul: bool,
    /// Value of the block's last `id` field (a slice of `bytes`), for Last-Event-ID tracking.
    /// `id` fields whose value contains NUL are ignored, as clients ignore them; `Some` of an
    /// empty value means the upstream reset the last event ID.
    pub id: Option<Bytes>,
}

impl UnitInfo {
    fn describe(bytes: &Bytes, is_event: bool, id: Option<Range<usize>>) -> Self {
        UnitInfo {
            is_event,
            valid_utf8: std::str::from_utf8(bytes).is_ok(),
            has_nul: memchr(0, bytes).is_some(),
            id: id.map(|range| bytes.slice(range)),
        }
    }
}

/// What becomes of the unit being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Held, then emitted whole.
    Keep,
    /// Grew past the limit: skipped, reported as [`Segment::Oversize`] when it ends.
    Oversize,
    /// Forgotten by [`SseParser::discard_pending`]: skipped silently.
    Discard,
}

/// Where the next byte falls within its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinePos {
    /// First byte of a line: decides blank, comment or field.
    Start,
    /// Inside a line whose kind is known: only a CR or LF matters.
    Mid,
    /// Just after a CR that ended a line: an LF here completes that CRLF.
    AfterCr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bom {
    /// At the stream start, `matched` bytes of a BOM seen so far; `discarded` once
    /// [`SseParser::discard_pending`] forgot them, so that if they turn out to start a line,
    /// that unit is skipped like any other discarded one.
    Matching {
        matched: usize,
        discarded: bool,
    },
    Done,
}

/// The unit currently being received.
#[derive(Debug)]
struct OpenUnit {
    is_event: bool,
    fate: Fate,
    /// Bytes received so far, held or not.
    len: usize,
    /// Offset of the current line within the unit.
    line_start: usize,
    /// Offsets of the last valid `id` value within the unit.
    id: Option<Range<usize>>,
}

impl OpenUnit {
    fn new(fate: Fate) -> Self {
        OpenUnit {
            is_event: false,
            fate,
            len: 0,
            line_start: 0,
            id: None,
        }
    }
}

/// Splits one upstream event stream into whole units; one parser per stream.
///
/// State machine: a unit opens with the first byte of a line outside any unit. A line starting
/// with a CR or LF is blank: outside an event it is a unit of its own, inside one it ends the
/// event. A line starting with `:` outside an event is a comment unit that ends with the line,
/// so upstream heartbeats pass through at once. Any other line is a field line and opens (or
/// continues) an event block, which then takes in every line, comments included, up to its
/// blank line. Within a line only the next CR or LF matters, found with `memchr2`, so the cost
/// per line is one vectorised search rather than a step per byte.
///
/// A unit ends at the CR or LF that ends its last line, so it can go out as soon as that byte
/// arrives. When that byte is a CR, an LF right after it completes the CRLF: it is not a blank
/// line, and it becomes a one-byte non-event unit that shares the fate of the unit it completes
/// (emitted if that was emitted, dropped if that was dropped). Doing this whether or not the LF
/// arrives in the same chunk keeps the output independent of how the stream was chunked, and
/// keeps the concatenated units equal to the input, less a leading BOM (stripped so that bytes
/// the relay writes first cannot push it into a field name) and less the dropped units.
///
/// Bytes of an unfinished unit are copied into `held` only when a chunk ends inside it; a chunk
/// of complete units is emitted as slices of the chunk without allocating.
#[derive(Debug)]
pub struct SseParser {
    max_event_size: usize,
    /// Bytes of the unfinished unit (or BOM prefix) from earlier chunks, only while kept.
    held: Vec<u8>,
    bom: Bom,
    line: LinePos,
    unit: Option<OpenUnit>,
    /// Whether the last unit to end was emitted, which decides the fate of its LF tail.
    tail_kept: bool,
}

impl SseParser {
    /// A parser for a new stream whose units may hold at most `max_event_size` bytes.
    pub fn new(max_event_size: usize) -> Self {
        SseParser {
            max_event_size,
            held: Vec::new(),
            bom: Bom::Matching {
                matched: 0,
                discarded: false,
            },
            line: LinePos::Start,
            unit: None,
            tail_kept: false,
        }
    }

    /// Feeds the next upstream chunk, appending a segment for every unit it completes to `out`,
    /// in stream order (`out` is not cleared, so the caller can reuse it).
    pub fn feed(&mut self, chunk: Bytes, out: &mut Vec<Segment>) {
        let Some(mut pos) = self.skip_bom(&chunk) else {
            return;
        };
        // The open unit's bytes are `held ++ chunk[seg_start..]`; `held` is only non-empty
        // for a unit carried over from an earlier chunk, whose bytes here start at 0.
        let mut seg_start = 0;
        while pos < chunk.len() {
            match self.line {
                LinePos::AfterCr => {
                    self.line = LinePos::Start;
                    if chunk[pos] == b'\n' {
                        pos += 1;
                        if self.unit.is_some() {
                            // A CRLF inside an event block.
                            self.grow(1);
                        } else if self.tail_kept {
                            out.push(Segment::Unit {
                                bytes: Bytes::from_static(b"\n"),
                                info: UnitInfo {
                                    is_event: false,
                                    valid_utf8: true,
                                    has_nul: false,
                                    id: None,
                                },
                            });
                        }
                    }
                }
                LinePos::Start => {
                    let first = chunk[pos];
                    let unit = self.unit.get_or_insert_with(|| {
                        seg_start = pos;
                        OpenUnit::new(Fate::Keep)
                    });
                    unit.line_start = unit.len;
                    match first {
                        b'\r' | b'\n' => {
                            pos += 1;
                            self.line = if first == b'\r' {
                                LinePos::AfterCr
                            } else {
                                LinePos::Start
                            };
                            self.grow(1);
                            self.finish(&chunk, seg_start, pos, out);
                        }
                        b':' => self.line = LinePos::Mid,
                        _ => {
                            unit.is_event = true;
                            self.line = LinePos::Mid;
                        }
                    }
                }
                LinePos::Mid => match memchr2(b'\r', b'\n', &chunk[pos..]) {
                    None => {
                        self.grow(chunk.len() - pos);
                        pos = chunk.len();
                    }
                    Some(offset) => {
                        let ending = pos + offset;
                        self.grow(offset + 1);
                        pos = ending + 1;
                        self.line = if chunk[ending] == b'\r' {
                            LinePos::AfterCr
                        } else {
                            LinePos::Start
                        };
                        self.end_line(&chunk, seg_start, pos, out);
                    }
                },
            }
        }
        if matches!(&self.unit, Some(unit) if unit.fate == Fate::Keep) {
            self.held.extend_from_slice(&chunk[seg_start..]);
        }
    }

    /// True when no bytes of an unfinished unit are held, so the relay may write its own bytes.
    pub fn at_boundary(&self) -> bool {
        self.held.is_empty()
    }

    /// Bytes held for the unfinished unit; at most `max_event_size + PENDING_OVERHEAD`.
    pub fn pending_len(&self) -> usize {
        self.held.len()
    }

    /// Forgets the unfinished unit (stale upstream, shutdown): none of it is ever emitted, and
    /// the rest of it, when it arrives, is skipped up to where it would have ended.
    pub fn discard_pending(&mut self) {
        self.held = Vec::new();
        if let Some(unit) = &mut self.unit {
            unit.fate = Fate::Discard;
            unit.id = None;
        }
        if let Bom::Matching { matched, discarded } = &mut self.bom {
            *discarded = *matched > 0;
        }
    }

    /// Matches a BOM at the stream start. Returns where scanning resumes in `chunk`, or `None`
    /// when the whole chunk still reads as the start of a BOM.
    fn skip_bom(&mut self, chunk: &[u8]) -> Option<usize> {
        let Bom::Matching { matched, discarded } = self.bom else {
            return Some(0);
        };
        let fresh = chunk
            .iter()
            .zip(&BOM[matched..])
            .take_while(|(byte, expected)| byte == expected)
            .count();
        let matched_now = matched + fresh;
        if matched_now == BOM.len() {
            self.bom = Bom::Done;
            self.held.clear();
            return Some(fresh);
        }
        if fresh == chunk.len() {
            if !discarded {
                self.held.extend_from_slice(chunk);
            }
            self.bom = Bom::Matching {
                matched: matched_now,
                discarded,
            };
            return None;
        }
        self.bom = Bom::Done;
        if matched_now > 0 {
            // Not a BOM after all: those bytes start the first line, and as 0xEF is neither
            // `:` nor a line ending, that line is a field line.
            let mut unit = OpenUnit::new(if discarded { Fate::Discard } else { Fate::Keep });
            unit.is_event = true;
            self.unit = Some(unit);
            self.line = LinePos::Mid;
            self.grow(matched_now);
        }
        Some(fresh)
    }

    /// Counts `n` more bytes of the open unit, turning it oversize past the limit.
    fn grow(&mut self, n: usize) {
        if let Some(unit) = &mut self.unit {
            unit.len += n;
            if unit.fate == Fate::Keep && unit.len > self.max_event_size {
                unit.fate = Fate::Oversize;
                unit.id = None;
                self.held = Vec::new();
            }
        }
    }

    /// Handles the end of a non-blank line; `end` is just past its CR or LF.
    fn end_line(&mut self, chunk: &Bytes, seg_start: usize, end: usize, out: &mut Vec<Segment>) {
        let Some(unit) = &self.unit else {
            return;
        };
        if !unit.is_event {
            // A comment or blank line outside an event is a whole unit by itself.
            self.finish(chunk, seg_start, end, out);
            return;
        }
        let id = (unit.fate == Fate::Keep)
            .then(|| self.id_value(chunk, seg_start, unit))
            .flatten();
        if let (Some(id), Some(unit)) = (id, &mut self.unit) {
            unit.id = Some(id);
        }
    }

    /// The value range of the just-ended line when it is a usable `id` field.
    fn id_value(&self, chunk: &[u8], seg_start: usize, unit: &OpenUnit) -> Option<Range<usize>> {
        let start = unit.line_start;
        let end = unit.len - 1;
        let (a, b) = self.unit_bytes(chunk, seg_start, start..end.min(start + 4));
        let mut head = [0u8; 4];
        head[..a.len()].copy_from_slice(a);
        head[a.len()..a.len() + b.len()].copy_from_slice(b);
        let value_start = match &head[..a.len() + b.len()] {
            [b'i', b'd'] => start + 2,
            [b'i', b'd', b':', b' '] => start + 4,
            [b'i', b'd', b':', ..] => start + 3,
            _ => return None,
        };
        let (a, b) = self.unit_bytes(chunk, seg_start, value_start..end);
        (memchr(0, a).is_none() && memchr(0, b).is_none()).then_some(value_start..end)
    }

    /// The open unit's bytes at `range` (offsets within the unit), split between `held` and
    /// this chunk.
    fn unit_bytes<'a>(
        &'a self,
        chunk: &'a [u8],
        seg_start: usize,
        range: Range<usize>,
    ) -> (&'a [u8], &'a [u8]) {
        let held = self.held.len();
        (
            &self.held[range.start.min(held)..range.end.min(held)],
            &chunk[seg_start + range.start.saturating_sub(held)
                ..seg_start + range.end.saturating_sub(held)],
        )
    }

    /// Ends the open unit at `end` (exclusive, in `chunk`) and reports it.
    fn finish(&mut self, chunk: &Bytes, seg_start: usize, end: usize, out: &mut Vec<Segment>) {
        let Some(unit) = self.unit.take() else {
            return;
        };
        self.tail_kept = unit.fate == Fate::Keep;
        match unit.fate {
            Fate::Keep => {
                let bytes = if self.held.is_empty() {
                    chunk.slice(seg_start..end)
                } else {
                    self.held.extend_from_slice(&chunk[seg_start..end]);
                    Bytes::from(std::mem::take(&mut self.held))
                };
                let info = UnitInfo::describe(&bytes, unit.is_event, unit.id);
                out.push(Segment::Unit { bytes, info });
            }
            Fate::Oversize => out.push(Segment::Oversize { size: unit.len }),
            Fate::Discard => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// The same rules as `SseParser`, spelled out one byte at a time with every unit held in
    /// full, to check the fast parser against.
    struct Reference {
        max: usize,
        /// `Some` while the stream start may still be a BOM.
        bom_prefix: Option<Vec<u8>>,
        bom_discarded: bool,
        line: LinePos,
        unit: Option<RefUnit>,
        tail_kept: bool,
    }

    struct RefUnit {
        bytes: Vec<u8>,
        line: Vec<u8>,
        is_event: bool,
        fate: Fate,
        id: Option<Vec<u8>>,
    }

    impl RefUnit {
        fn new(fate: Fate) -> Self {
            RefUnit {
                bytes: Vec::new(),
                line: Vec::new(),
                is_event: false,
                fate,
                id: None,
            }
        }

        fn push(&mut self, byte: u8, max: usize) {
            self.bytes.push(byte);
            if byte != b'\r' && byte != b'\n' {
                self.line.push(byte);
            }
            if self.fate == Fate::Keep && self.bytes.len() > max {
                self.fate = Fate::Oversize;
            }
        }

        /// Field parsing as the WHATWG spec words it.
        fn end_field_line(&mut self) {
            let line = std::mem::take(&mut self.line);
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (&line[..], &[][..]),
            };
            if name == b"id" && !value.contains(&0) {
                self.id = Some(value.to_vec());
            }
        }
    }

    impl Reference {
        fn new(max: usize) -> Self {
            Reference {
                max,
                bom_prefix: Some(Vec::new()),
                bom_discarded: false,
                line: LinePos::Start,
                unit: None,
                tail_kept: false,
            }
        }

        fn feed(&mut self, chunk: &[u8], out: &mut Vec<Segment>) {
            for &byte in chunk {
                self.step(byte, out);
            }
        }

        fn step(&mut self, byte: u8, out: &mut Vec<Segment>) {
            if let Some(mut prefix) = self.bom_prefix.take() {
                if byte == BOM[prefix.len()] {
                    prefix.push(byte);
                    if prefix.len() < BOM.len() {
                        self.bom_prefix = Some(prefix);
                    }
                    return;
                }
                if !prefix.is_empty() {
                    let fate = if self.bom_discarded {
                        Fate::Discard
                    } else {
                        Fate::Keep
                    };
                    let mut unit = RefUnit::new(fate);
                    unit.is_event = true;
                    for b in prefix {
                        unit.push(b, self.max);
                    }
                    self.unit = Some(unit);
                    self.line = LinePos::Mid;
                }
            }
            if self.line == LinePos::AfterCr {
                self.line = LinePos::Start;
                if byte == b'\n' {
                    match &mut self.unit {
                        Some(unit) => unit.push(byte, self.max),
                        None if self.tail_kept => out.push(unit_segment(b"\n", false, None)),
                        None => {}
                    }
                    return;
                }
            }
            let at_start = self.line == LinePos::Start;
            let unit = self.unit.get_or_insert_with(|| RefUnit::new(Fate::Keep));
            unit.push(byte, self.max);
            if byte == b'\r' || byte == b'\n' {
                self.line = if byte == b'\r' {
                    LinePos::AfterCr
                } else {
                    LinePos::Start
                };
                if at_start || !unit.is_event {
                    self.finish(out);
                } else {
                    unit.end_field_line();
                }
            } else {
                if at_start && byte != b':' {
                    unit.is_event = true;
                }
                self.line = LinePos::Mid;
            }
        }

        fn finish(&mut self, out: &mut Vec<Segment>) {
            if let Some(unit) = self.unit.take() {
                self.tail_kept = unit.fate == Fate::Keep;
                match unit.fate {
                    Fate::Keep => out.push(unit_segment(&unit.bytes, unit.is_event, unit.id)),
                    Fate::Oversize => out.push(Segment::Oversize {
                        size: unit.bytes.len(),
                    }),
                    Fate::Discard => {}
                }
            }
        }

        fn pending_len(&self) -> usize {
            let prefix = match &self.bom_prefix {
                Some(prefix) if !self.bom_discarded => prefix.len(),
                _ => 0,
            };
            let unit = match &self.unit {
                Some(unit) if unit.fate == Fate::Keep => unit.bytes.len(),
                _ => 0,
            };
            prefix + unit
        }

        fn discard_pending(&mut self) {
            if let Some(unit) = &mut self.unit {
                unit.fate = Fate::Discard;
            }
            if matches!(&self.bom_prefix, Some(prefix) if !prefix.is_empty()) {
                self.bom_discarded = true;
            }
        }
    }

    fn unit_segment(bytes: &[u8], is_event: bool, id: Option<Vec<u8>>) -> Segment {
        Segment::Unit {
            bytes: Bytes::copy_from_slice(bytes),
            info: UnitInfo {
                is_event,
                valid_utf8: std::str::from_utf8(bytes).is_ok(),
                has_nul: bytes.contains(&0),
                id: id.map(Bytes::from),
            },
        }
    }

    /// Feeds `chunks` to a fresh parser, checking the pending-bytes bound after every feed.
    fn run(max: usize, chunks: &[&[u8]]) -> Vec<Segment> {
        let mut parser = SseParser::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(Bytes::copy_from_slice(chunk), &mut out);
            assert!(parser.pending_len() <= max.saturating_add(PENDING_OVERHEAD));
        }
        out
    }

    fn units(segments: &[Segment]) -> Vec<(&[u8], bool)> {
        segments
            .iter()
            .filter_map(|segment| match segment {
                Segment::Unit { bytes, info } => Some((&bytes[..], info.is_event)),
                Segment::Oversize { .. } => None,
            })
            .collect()
    }

    fn info(segment: &Segment) -> &UnitInfo {
        match segment {
            Segment::Unit { info, .. } => info,
            Segment::Oversize { size } => panic!("expected a unit, got an oversize of {size}"),
        }
    }

    fn split_at_points<'a>(input: &'a [u8], points: &[Index]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = points.iter().map(|p| p.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for cut in cuts {
            chunks.push(&input[from..cut]);
            from = cut;
        }
        chunks.push(&input[from..]);
        chunks
    }

    fn eol() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("\n"), Just("\r"), Just("\r\n")]
    }

    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => "[ -~]{0,12}".prop_map(String::into_bytes),
            2 => "\\PC{0,6}".prop_map(String::into_bytes),
            1 => prop::collection::vec(prop_oneof![Just(0u8), Just(0xFF), Just(0xC3), Just(0xEF), any::<u8>()], 0..6),
            1 => (1usize..200).prop_map(|n| vec![b'x'; n]),
        ]
    }

    fn line() -> impl Strategy<Value = Vec<u8>> {
        let name = prop_oneof![
            Just("data"),
            Just("event"),
            Just("id"),
            Just("retry"),
            Just("i"),
            Just("idx"),
            Just("x")
        ];
        let separator = prop_oneof![Just(""), Just(":"), Just(": "), Just(":  ")];
        prop_oneof![
            6 => (name, separator, value()).prop_map(|(name, separator, value)| {
                [name.as_bytes(), separator.as_bytes(), &value].concat()
            }),
            2 => value().prop_map(|value| [&b":"[..], &value].concat()),
            3 => Just(Vec::new()),
        ]
    }

    /// Streams made of realistic SSE pieces, with every kind of line ending mixed in.
    fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
        let start = prop_oneof![
            Just(&b""[..]),
            Just(&BOM[..]),
            Just(&BOM[..2]),
            Just(&BOM[..1])
        ];
        let lines = prop::collection::vec((line(), eol()), 0..30);
        let tail = prop_oneof![Just(Vec::new()), line()];
        (start, lines, tail).prop_map(|(start, lines, tail)| {
            let mut stream = start.to_vec();
            for (line, eol) in lines {
                stream.extend_from_slice(&line);
                stream.extend_from_slice(eol.as_bytes());
            }
            stream.extend_from_slice(&tail);
            stream
        })
    }

    /// Arbitrary bytes, weighted towards the ones the framing reacts to.
    fn noisy_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => any::<u8>(),
            2 => Just(b'\n'),
            2 => Just(b'\r'),
            1 => Just(b':'),
            1 => Just(b'i'),
            1 => Just(b'd'),
            1 => Just(0xEF),
        ];
        prop::collection::vec(byte, 0..400)
    }

    fn any_stream() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![sse_stream(), noisy_bytes(), any::<Vec<u8>>()]
    }

    fn max_size() -> impl Strategy<Value = usize> {
        prop_oneof![Just(0), 1usize..8, Just(16), Just(64), Just(usize::MAX)]
    }

    /// The input as a client should receive it with no size limit: less a leading BOM.
    fn without_bom(input: &[u8]) -> &[u8] {
        input.strip_prefix(&BOM[..]).unwrap_or(input)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn chunking_changes_nothing_and_matches_reference(
            input in any_stream(),
            max in max_size(),
            points in prop::collection::vec(any::<Index>(), 0..8),
        ) {
            let chunks = split_at_points(&input, &points);
            let mut parser = SseParser::new(max);
            let mut reference = Reference::new(max);
            let (mut fast_out, mut reference_out) = (Vec::new(), Vec::new());
            for chunk in &chunks {
                parser.feed(Bytes::copy_from_slice(chunk), &mut fast_out);
                reference.feed(chunk, &mut reference_out);
                prop_assert_eq!(parser.pending_len(), reference.pending_len());
                prop_assert_eq!(parser.at_boundary(), reference.pending_len() == 0);
                prop_assert!(parser.pending_len() <= max.saturating_add(PENDING_OVERHEAD));
            }
            prop_assert_eq!(&fast_out, &reference_out);
            prop_assert_eq!(&fast_out, &run(max, &[&input]));
        }

        #[test]
        fn discarding_matches_reference(
            input in any_stream(),
            max in max_size(),
            points in prop::collection::vec(any::<Index>(), 0..8),
            discards in prop::collection::vec(any::<bool>(), 9),
        ) {
            let chunks = split_at_points(&input, &points);
            let mut parser = SseParser::new(max);
            let mut reference = Reference::new(max);
            let (mut fast_out, mut reference_out) = (Vec::new(), Vec::new());
            for (chunk, discard) in chunks.iter().zip(&discards) {
                parser.feed(Bytes::copy_from_slice(chunk), &mut fast_out);
                reference.feed(chunk, &mut reference_out);
                if *discard {
                    parser.discard_pending();
                    reference.discard_pending();
                    prop_assert!(parser.at_boundary());
                }
                prop_assert_eq!(parser.pending_len(), reference.pending_len());
            }
            prop_assert_eq!(fast_out, reference_out);
        }

        #[test]
        fn units_reassemble_the_input_less_dropped_units(
            input in any_stream(),
            max in max_size(),
            points in prop::collection::vec(any::<Index>(), 0..8),
        ) {
            let chunks = split_at_points(&input, &points);
            let mut parser = SseParser::new(usize::MAX);
            let mut all = Vec::new();
            for chunk in &chunks {
                parser.feed(Bytes::copy_from_slice(chunk), &mut all);
            }
            let all_units = units(&all);
            prop_assert_eq!(all_units.len(), all.len());
            // Everything but the unfinished unit still held at the end comes out.
            let mut joined: Vec<u8> = all_units.iter().flat_map(|(bytes, _)| bytes.iter().copied()).collect();
            let expected = without_bom(&input);
            prop_assert!(parser.pending_len() <= expected.len());
            joined.extend_from_slice(&expected[expected.len() - parser.pending_len()..]);
            prop_assert_eq!(joined, expected);

            // With a limit, each unit is either kept whole or reported by its size, and the LF
            // completing a dropped unit's CRLF goes with it.
            let mut expected = Vec::new();
            let mut previous: Option<(&[u8], bool)> = None;
            for segment in &all {
                let Segment::Unit { bytes, .. } = segment else { continue };
                let completes_crlf = &bytes[..] == b"\n"
                    && matches!(previous, Some((prev, _)) if prev.ends_with(b"\r"));
                let kept = if completes_crlf {
                    previous.is_some_and(|(_, kept)| kept)
                } else {
                    bytes.len() <= max
                };
                expected.push(if kept {
                    segment.clone()
                } else {
                    Segment::Oversize { size: bytes.len() }
                });
                previous = Some((bytes, kept));
                if completes_crlf && !kept {
                    expected.pop();
                }
            }
            prop_assert_eq!(run(max, &chunks), expected);
        }

        #[test]
        fn units_have_the_documented_shape(input in any_stream()) {
            let is_ending = |b: &u8| *b == b'\r' || *b == b'\n';
            for (bytes, is_event) in units(&run(usize::MAX, &[&input])) {
                let (last, body) = bytes.split_last().ok_or_else(|| TestCaseError::fail("empty unit"))?;
                prop_assert!(is_ending(last));
                if is_event {
                    // Field lines, then the blank line that ends the block.
                    prop_assert!(body.last().is_some_and(is_ending));
                    prop_assert!(!matches!(body.first(), Some(b':' | b'\r' | b'\n')));
                } else {
                    // One comment or blank line, or the LF completing a CRLF.
                    prop_assert!(!body.iter().any(is_ending));
                    prop_assert!(body.is_empty() || body[0] == b':');
                }
            }
        }
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let chunks: [&[u8]; 3] = [b"data: a\r", b"\ndata: b\r\n\r", b"\ndata: c\n\n"];
        let out = run(1024, &chunks);
        assert_eq!(
            units(&out),
            [
                (&b"data: a\r\ndata: b\r\n\r"[..], true),
                (b"\n", false),
                (b"data: c\n\n", true),
            ]
        );
        assert_eq!(out, run(1024, &[&chunks.concat()]));
    }

    #[test]
    fn lf_after_a_comment_ending_in_cr_is_not_a_blank_line() {
        let mut parser = SseParser::new(1024);
        let mut out = Vec::new();
        parser.feed(Bytes::from_static(b": ping\r"), &mut out);
        assert_eq!(units(&out), [(&b": ping\r"[..], false)]);
        assert!(parser.at_boundary());
        out.clear();
        parser.feed(Bytes::from_static(b"\n"), &mut out);
        parser.feed(Bytes::from_static(b"data: x\r\n\r\n"), &mut out);
        assert_eq!(
            units(&out),
            [
                (&b"\n"[..], false),
                (b"data: x\r\n\r", true),
                (b"\n", false)
            ]
        );
    }

    #[test]
    fn lone_cr_line_endings() {
        let out = run(1024, &[b"event: tick\rid: 7\rdata: a\r\r"]);
        assert_eq!(
            units(&out),
            [(&b"event: tick\rid: 7\rdata: a\r\r"[..], true)]
        );
        assert_eq!(info(&out[0]).id.as_deref(), Some(&b"7"[..]));
    }

    #[test]
    fn leading_bom_is_stripped_even_when_split() {
        let whole = run(1024, &[b"\xEF\xBB\xBFdata: x\n\n"]);
        assert_eq!(units(&whole), [(&b"data: x\n\n"[..], true)]);
        let mut parser = SseParser::new(1024);
        let mut out = Vec::new();
        for chunk in [&b"\xEF"[..], b"\xBB"] {
            parser.feed(Bytes::copy_from_slice(chunk), &mut out);
            assert!(!parser.at_boundary());
        }
        parser.feed(Bytes::from_static(b"\xBF"), &mut out);
        assert!(parser.at_boundary());
        parser.feed(Bytes::from_static(b"data: x\n\n"), &mut out);
        assert_eq!(out, whole);
    }

    #[test]
    fn bom_is_recognised_only_at_the_stream_start() {
        let out = run(1024, &[b"\xEF\xBB", b"data: x\n\n\xEF\xBB\xBFdata: y\n\n"]);
        assert_eq!(
            units(&out),
            [
                (&b"\xEF\xBBdata: x\n\n"[..], true),
                (b"\xEF\xBB\xBFdata: y\n\n", true),
            ]
        );
        assert!(!info(&out[0]).valid_utf8);
        assert!(info(&out[1]).valid_utf8);
    }

    #[test]
    fn comment_heartbeats_are_emitted_line_by_line_at_once() {
        let mut parser = SseParser::new(1024);
        let mut out = Vec::new();
        parser.feed(Bytes::from_static(b": ping\n"), &mut out);
        assert_eq!(units(&out), [(&b": ping\n"[..], false)]);
        parser.feed(Bytes::from_static(b"\n:\n"), &mut out);
        assert_eq!(
            units(&out),
            [(&b": ping\n"[..], false), (b"\n", false), (b":\n", false)]
        );
        assert!(parser.at_boundary());
    }

    #[test]
    fn comment_inside_an_event_belongs_to_it() {
        let input = b": before\ndata: a\n: note\n\ndata: b\n\n";
        assert_eq!(
            units(&run(1024, &[input])),
            [
                (&b": before\n"[..], false),
                (b"data: a\n: note\n\n", true),
                (b"data: b\n\n", true),
            ]
        );
    }

    #[test]
    fn normal_event_after_an_oversize_one_survives() {
        let input = b"data: 0123456789abcdef\r\n\r\ndata: ok\n\n";
        for split in 0..=input.len() {
            let out = run(16, &[&input[..split], &input[split..]]);
            assert_eq!(out.len(), 2, "split at {split}");
            assert_eq!(out[0], Segment::Oversize { size: 25 }, "split at {split}");
            assert_eq!(
                units(&out),
                [(&b"data: ok\n\n"[..], true)],
                "split at {split}"
            );
        }
    }

    #[test]
    fn oversize_comment_is_dropped_without_holding_it() {
        let mut parser = SseParser::new(8);
        let mut out = Vec::new();
        parser.feed(Bytes::from_static(b": 0123456789"), &mut out);
        assert!(parser.at_boundary());
        parser.feed(Bytes::from_static(b"\n: ok\n"), &mut out);
        assert_eq!(out[0], Segment::Oversize { size: 13 });
        assert_eq!(units(&out), [(&b": ok\n"[..], false)]);
    }

    #[test]
    fn every_split_of_a_fixture_gives_the_same_segments() {
        let fixture: &[u8] = b"\xEF\xBB\xBF: hi\r\nid: 1\r\nevent: a\r\ndata: \xC3\xA9\r\n\r\n\
            data: this one is far too long to keep\n: trailing comment\n\n\
            \rdata: b\r: c\rid\r\r:\ndata: nul \0\nid: x\0y\n\n";
        let whole = run(32, &[fixture]);
        assert_eq!(whole.len(), 9);
        assert_eq!(whole[4], Segment::Oversize { size: 59 });
        assert_eq!(units(&whole)[5], (&b"data: b\r: c\rid\r\r"[..], true));
        for first in 0..=fixture.len() {
            for second in first..=fixture.len() {
                let chunks = [
                    &fixture[..first],
                    &fixture[first..second],
                    &fixture[second..],
                ];
                assert_eq!(run(32, &chunks), whole, "split at {first} and {second}");
            }
        }
    }

    #[test]
    fn id_fields_follow_the_spec() {
        let cases: [(&[u8], Option<&[u8]>); 8] = [
            (b"id: 1\ndata: x\n\n", Some(b"1")),
            (b"id:1\n\n", Some(b"1")),
            (b"id:  1\n\n", Some(b" 1")),
            (b"id\n\n", Some(b"")),
            (b"id: 1\nid:\n\n", Some(b"")),
            (b"id: 1\nid: a\0b\n\n", Some(b"1")),
            (b"idx: 1\nid 2\n\n", None),
            (b"data: id: 1\n\n", None),
        ];
        for (input, expected) in cases {
            let out = run(1024, &[input]);
            assert_eq!(info(&out[0]).id.as_deref(), expected, "{input:?}");
        }
    }

    #[test]
    fn flags_report_invalid_utf8_and_nul() {
        let out = run(1024, &[b"data: \xFF\n\ndata: \0\n\ndata: \xE2\x98\x83\n\n"]);
        let flags: Vec<_> = out
            .iter()
            .map(|s| (info(s).valid_utf8, info(s).has_nul))
            .collect();
        assert_eq!(flags, [(false, false), (true, true), (true, false)]);
    }

    #[test]
    fn discarded_event_is_skipped_to_its_end() {
        let mut parser = SseParser::new(1024);
        let mut out = Vec::new();
        parser.feed(Bytes::from_static(b"data: partial"), &mut out);
        assert_eq!(parser.pending_len(), 13);
        parser.discard_pending();
        assert!(parser.at_boundary());
        parser.feed(
            Bytes::from_static(b"\ndata: more\n\ndata: next\n\n"),
            &mut out,
        );
        assert_eq!(units(&out), [(&b"data: next\n\n"[..], true)]);
    }

    #[test]
    fn discarded_comment_is_skipped_to_its_line_end() {
        let mut parser = SseParser::new(1024);
        let mut out = Vec::new();
        parser.feed(Bytes::from_static(b": par"), &mut out);
        parser.discard_pending();
        parser.feed(Bytes::from_static(b"tial\r\n: next\n"), &mut out);
        assert_eq!(units(&out), [(&b": next\n"[..], false)]);
    }

    #[test]
    fn units_inside_one_chunk_are_slices_of_it() {
        let chunk = Bytes::from_static(b": hi\ndata: a\n\nid: 3\ndata: b\n\n");
        let mut parser = SseParser::new(1024);
        let mut out = Vec::new();
        parser.feed(chunk.clone(), &mut out);
        assert_eq!(out.len(), 3);
        let within = chunk.as_ptr_range();
        for segment in &out {
            let Segment::Unit { bytes, info } = segment else {
                panic!("unexpected {segment:?}");
            };
            assert!(within.contains(&bytes.as_ptr()));
            if let Some(id) = &info.id {
                assert!(within.contains(&id.as_ptr()));
            }
        }
    }
}
