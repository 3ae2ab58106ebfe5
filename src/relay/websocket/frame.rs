//! Incremental RFC 6455 (section 5) frame decoder, and a small encoder, for the WebSocket relay.
//!
//! The proxy does not re-frame WebSocket traffic: it forwards each frame's wire bytes as they
//! came (client frames keep the client's mask). It still has to know where frames and messages
//! begin and end, so it can drop whole data messages when a user is over their rate limit and
//! slip its own pings and closes in between frames. It has to read control frames in clear to
//! follow pings and the close handshake. And it must refuse a frame that a conforming peer never
//! sends as soon as the header shows it, before the payload arrives, so a hostile peer cannot
//! make the proxy forward, or wait for, something it will reject anyway.
//!
//! One [`FrameDecoder`] runs per direction. A frame header is only consumed once it is complete.
//! Data payloads go through in pieces as they arrive and are never buffered whole; each piece
//! carries the masking key lined up with it ([`Part::Payload`]), so a reader that needs the clear
//! bytes (the permessage-deflate size check) can unmask a copy without the decoder keeping one.
//! Control frames (at most 125 bytes) are returned whole. Text payloads are not checked for
//! UTF-8: the endpoints do that, and with permessage-deflate the wire bytes are compressed anyway.
//!
//! Besides RFC 6455's rules the decoder enforces two limits per message, both from the header
//! alone: its total payload (`max_message_size`) and how many frames it may be split into
//! ([`FrameDecoder::with_max_fragments`]): a message in thousands of tiny fragments costs the
//! app a frame's work for each while it counts as one message against every rate limit.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Largest control frame payload (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// 2 fixed bytes, an 8-byte extended length and a 4-byte masking key.
const MAX_HEADER_LEN: usize = 14;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV_BITS: u8 = 0x70;
const OPCODE_BITS: u8 = 0x0F;
const MASK_BIT: u8 = 0x80;
const LEN_BITS: u8 = 0x7F;
/// 7-bit length values that announce a 16-bit or a 64-bit extended length.
const LEN_16: u8 = 126;
const LEN_64: u8 = 127;

const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_INVALID_PAYLOAD: u16 = 1007;
const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

/// The frame opcodes RFC 6455 defines; reserved ones are rejected while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, ping and pong: never fragmented, at most 125 bytes, allowed between the fragments
    /// of a data message.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Which peer sent the bytes a decoder sees; RFC 6455 5.1 makes masking depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the browser: every frame must be masked.
    FromClient,
    /// From the app: no frame may be masked.
    FromUpstream,
}

/// A frame the proxy refuses; the connection is then closed with [`FrameError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("client frame is not masked (rfc 6455 5.1: clients must mask every frame)")]
    UnmaskedClientFrame,
    #[error("upstream frame is masked (rfc 6455 5.1: servers must not mask frames)")]
    MaskedUpstreamFrame,
    #[error("reserved opcode {0:#x} (rfc 6455 5.2)")]
    ReservedOpcode(u8),
    #[error(
        "reserved header bits {bits:#05b} set (rfc 6455 5.2: only rsv1, only with \
         permessage-deflate, only on the first frame of a data message)"
    )]
    ReservedBits { bits: u8 },
    #[error("fragmented control frame (rfc 6455 5.5: control frames must have fin set)")]
    FragmentedControlFrame,
    #[error("control frame payload of {len} bytes exceeds 125 bytes (rfc 6455 5.5)")]
    ControlFrameTooLarge { len: u64 },
    #[error("continuation frame without a fragmented message in progress (rfc 6455 5.4)")]
    UnexpectedContinuation,
    #[error("new data message started inside a fragmented message (rfc 6455 5.4)")]
    InterleavedMessage,
    #[error("64-bit payload length has its most significant bit set (rfc 6455 5.2)")]
    LengthOverflow,
    #[error("data message of {size} bytes exceeds max_message_size of {max} bytes")]
    MessageTooBig { size: u64, max: u64 },
    #[error("data message split into more than max_message_fragments ({max}) frames")]
    TooManyFragments { max: u32 },
    #[error("close frame payload of 1 byte (rfc 6455 5.5.1: the body starts with a 2-byte code)")]
    TruncatedCloseCode,
    #[error("close code {0} may not appear in a close frame (rfc 6455 7.4)")]
    InvalidCloseCode(u16),
    #[error("close reason is not valid utf-8 (rfc 6455 5.5.1)")]
    InvalidCloseReason,
}

impl FrameError {
    /// The status code (RFC 6455 7.4.1) to close the offending peer's connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            // A message in more pieces than the proxy processes is "too big for it to process"
            // (rfc 6455 7.4.1) in the same way as one with too many bytes.
            Self::MessageTooBig { .. } | Self::TooManyFragments { .. } => CLOSE_MESSAGE_TOO_BIG,
            Self::InvalidCloseReason => CLOSE_INVALID_PAYLOAD,
            Self::UnmaskedClientFrame
            | Self::MaskedUpstreamFrame
            | Self::ReservedOpcode(_)
            | Self::ReservedBits { .. }
            | Self::FragmentedControlFrame
            | Self::ControlFrameTooLarge { .. }
            | Self::UnexpectedContinuation
            | Self::InterleavedMessage
            | Self::LengthOverflow
            | Self::TruncatedCloseCode
            | Self::InvalidCloseCode(_) => CLOSE_PROTOCOL_ERROR,
        }
    }
}

/// One piece of the decoded stream. Forwarding every item's [`Item::wire`] in order reproduces
/// the input exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Wire bytes of a data frame (text, binary or continuation): its header, or a piece of its
    /// payload (still masked if the client masked it).
    Data {
        bytes: Bytes,
        /// Whether `bytes` are the frame's header or a piece of its payload.
        part: Part,
        /// Set on the first item of a message (its first frame's header), so the relay can decide
        /// once whether to forward or drop the whole message.
        message_start: bool,
        /// Set on the item that completes a frame.
        frame_end: bool,
        /// Set on the item that completes the message's final (FIN) frame.
        message_end: bool,
        /// The message's opcode, `Text` or `Binary`, also for its continuation frames.
        opcode: OpCode,
        /// The message's first frame had RSV1 set: with permessage-deflate, its payload is
        /// compressed (rfc 7692 6). Set on every item of the message.
        compressed: bool,
    },
    /// A whole control frame.
    Control {
        /// `Close`, `Ping` or `Pong`.
        opcode: OpCode,
        /// Unmasked payload, at most 125 bytes; a close payload has been validated.
        payload: Bytes,
        /// The frame as received.
        wire: Bytes,
    },
}

impl Item {
    /// The bytes to forward for this item, exactly as received.
    pub fn wire(&self) -> &Bytes {
        match self {
            Self::Data { bytes, .. } => bytes,
            Self::Control { wire, .. } => wire,
        }
    }
}

/// What the bytes of an [`Item::Data`] are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The frame's header.
    Header,
    /// A piece of the payload as it came. XOR with `key`, cycled from the piece's first byte,
    /// gives the clear bytes ([`apply_mask`]); the key is all zeros for an unmasked frame.
    Payload { key: [u8; 4] },
}

/// The data message a frame belongs to: its opcode, total payload and frames so far.
#[derive(Debug, Clone, Copy)]
struct Message {
    opcode: OpCode,
    size: u64,
    fragments: u32,
    compressed: bool,
}

/// A data frame whose header went out but whose payload has not all arrived.
#[derive(Debug, Clone, Copy)]
struct PayloadState {
    remaining: u64,
    fin: bool,
    opcode: OpCode,
    compressed: bool,
    /// The masking key lined up with the next payload byte (zeros when unmasked).
    key: [u8; 4],
}

#[derive(Debug, Clone, Copy)]
enum FrameKind {
    /// `payload_len` is at most 125.
    Control { payload_len: usize },
    /// The message including this frame's payload.
    Data(Message),
}

#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    header_len: usize,
    payload_len: u64,
    kind: FrameKind,
}

/// Splits one direction of a WebSocket connection into frames; see the module docs.
#[derive(Debug)]
pub struct FrameDecoder {
    direction: Direction,
    max_message_size: u64,
    max_fragments: u32,
    allow_rsv1: bool,
    /// A data message whose FIN frame has not started yet.
    message: Option<Message>,
    /// Set while a data frame's payload is being passed through.
    payload: Option<PayloadState>,
}

impl FrameDecoder {
    /// `max_message_size` bounds the payload of a whole data message, over all its fragments;
    /// `allow_rsv1` is set when permessage-deflate was negotiated.
    pub fn new(direction: Direction, max_message_size: u64, allow_rsv1: bool) -> Self {
        Self {
            direction,
            max_message_size,
            max_fragments: u32::MAX,
            allow_rsv1,
            message: None,
            payload: None,
        }
    }

    /// Bounds how many frames one data message may be split into (no bound by default).
    pub fn with_max_fragments(mut self, max_fragments: u32) -> Self {
        self.max_fragments = max_fragments;
        self
    }

    /// Takes the next item off the front of `buf`; `Ok(None)` when more input is needed.
    ///
    /// Nothing is consumed on `Ok(None)` or on an error, so after an error `buf` starts with the
    /// offending frame and calling again returns the same error.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, FrameError> {
        if let Some(frame) = self.payload.as_mut() {
            if buf.is_empty() {
                return Ok(None);
            }
            let take = usize::try_from(frame.remaining).map_or(buf.len(), |r| r.min(buf.len()));
            frame.remaining -= take as u64;
            let frame_end = frame.remaining == 0;
            let key = frame.key;
            // The next piece starts `take` bytes further into the key's cycle.
            frame.key.rotate_left(take % 4);
            let item = Item::Data {
                bytes: buf.split_to(take).freeze(),
                part: Part::Payload { key },
                message_start: false,
                frame_end,
                message_end: frame_end && frame.fin,
                opcode: frame.opcode,
                compressed: frame.compressed,
            };
            if frame_end {
                self.payload = None;
            }
            return Ok(Some(item));
        }
        let Some(header) = self.parse_header(buf)? else {
            return Ok(None);
        };
        match header.kind {
            FrameKind::Control { payload_len } => decode_control(&header, payload_len, buf),
            FrameKind::Data(message) => Ok(Some(self.start_data_frame(&header, message, buf))),
        }
    }

    /// True between frames: the proxy may forward a frame of its own here. Between the fragments
    /// of a data message only a control frame may go in.
    pub fn at_frame_boundary(&self) -> bool {
        self.payload.is_none()
    }

    /// Reads and checks a header at the front of `buf` without consuming it. Each rule is
    /// checked as soon as the bytes it needs are there, even if the header is not complete.
    fn parse_header(&self, buf: &[u8]) -> Result<Option<Header>, FrameError> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let opcode_bits = b0 & OPCODE_BITS;
        let opcode =
            OpCode::from_bits(opcode_bits).ok_or(FrameError::ReservedOpcode(opcode_bits))?;
        let fin = b0 & FIN != 0;
        let rsv = b0 & RSV_BITS;
        // A Text or Binary frame is always the first frame of its message (a second one inside a
        // fragmented message is rejected below), which is where permessage-deflate sets RSV1.
        let compressed_start =
            self.allow_rsv1 && rsv == RSV1 && matches!(opcode, OpCode::Text | OpCode::Binary);
        if rsv != 0 && !compressed_start {
            return Err(FrameError::ReservedBits { bits: rsv >> 4 });
        }
        let masked = b1 & MASK_BIT != 0;
        match (self.direction, masked) {
            (Direction::FromClient, false) => return Err(FrameError::UnmaskedClientFrame),
            (Direction::FromUpstream, true) => return Err(FrameError::MaskedUpstreamFrame),
            _ => {}
        }
        let message = if opcode.is_control() {
            if !fin {
                return Err(FrameError::FragmentedControlFrame);
            }
            None
        } else {
            match (opcode, self.message) {
                (OpCode::Continuation, None) => return Err(FrameError::UnexpectedContinuation),
                (OpCode::Continuation, Some(mut message)) => {
                    message.fragments = message.fragments.saturating_add(1);
                    if message.fragments > self.max_fragments {
                        return Err(FrameError::TooManyFragments {
                            max: self.max_fragments,
                        });
                    }
                    Some(message)
                }
                (_, Some(_)) => return Err(FrameError::InterleavedMessage),
                (_, None) => Some(Message {
                    opcode,
                    size: 0,
                    fragments: 1,
                    compressed: compressed_start,
                }),
            }
        };

        let (payload_len, len_end) = match b1 & LEN_BITS {
            LEN_16 => match read_array(buf, 2) {
                Some(len) => (u64::from(u16::from_be_bytes(len)), 4),
                None => return Ok(None),
            },
            LEN_64 => match read_array(buf, 2) {
                Some(len) => (u64::from_be_bytes(len), 10),
                None => return Ok(None),
            },
            len => (u64::from(len), 2),
        };
        if payload_len >> 63 != 0 {
            return Err(FrameError::LengthOverflow);
        }
        let kind = match message {
            None if payload_len > MAX_CONTROL_PAYLOAD as u64 => {
                return Err(FrameError::ControlFrameTooLarge { len: payload_len });
            }
            None => FrameKind::Control {
                payload_len: payload_len as usize,
            },
            Some(mut message) => {
                message.size = message.size.saturating_add(payload_len);
                if message.size > self.max_message_size {
                    return Err(FrameError::MessageTooBig {
                        size: message.size,
                        max: self.max_message_size,
                    });
                }
                FrameKind::Data(message)
            }
        };

        let mask = if masked {
            match read_array(buf, len_end) {
                Some(mask) => Some(mask),
                None => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            header_len: len_end + if masked { 4 } else { 0 },
            payload_len,
            kind,
        }))
    }

    fn start_data_frame(&mut self, header: &Header, message: Message, buf: &mut BytesMut) -> Item {
        self.message = (!header.fin).then_some(message);
        let frame_end = header.payload_len == 0;
        if !frame_end {
            self.payload = Some(PayloadState {
                remaining: header.payload_len,
                fin: header.fin,
                opcode: message.opcode,
                compressed: message.compressed,
                key: header.mask.unwrap_or_default(),
            });
        }
        Item::Data {
            bytes: buf.split_to(header.header_len).freeze(),
            part: Part::Header,
            message_start: header.opcode != OpCode::Continuation,
            frame_end,
            message_end: frame_end && header.fin,
            opcode: message.opcode,
            compressed: message.compressed,
        }
    }
}

/// Waits for the whole control frame, then validates and consumes it in one go.
fn decode_control(
    header: &Header,
    payload_len: usize,
    buf: &mut BytesMut,
) -> Result<Option<Item>, FrameError> {
    let frame_len = header.header_len + payload_len;
    let Some(wire_payload) = buf.get(header.header_len..frame_len) else {
        return Ok(None);
    };
    let mut payload = wire_payload.to_vec();
    if let Some(mask) = header.mask {
        apply_mask(&mut payload, mask);
    }
    if header.opcode == OpCode::Close {
        parse_close_payload(&payload)?;
    }
    Ok(Some(Item::Control {
        opcode: header.opcode,
        payload: payload.into(),
        wire: buf.split_to(frame_len).freeze(),
    }))
}

fn read_array<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at + N)?.try_into().ok()
}

/// RFC 6455 5.3; masking and unmasking are the same operation. A payload piece is unmasked
/// with the key its [`Part::Payload`] carries.
pub fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    for (byte, key) in payload.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// Encodes one whole (FIN) frame of the proxy's own, with the shortest length encoding. Frames
/// to the client go unmasked (`None`); frames to upstream need a fresh random mask.
///
/// Control frame payloads must stay within 125 bytes; [`close_payload`] takes care of that for
/// close frames.
pub fn encode_frame(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    debug_assert!(!opcode.is_control() || payload.len() <= MAX_CONTROL_PAYLOAD);
    let mut out = BytesMut::with_capacity(MAX_HEADER_LEN + payload.len());
    out.put_u8(FIN | opcode.bits());
    let mask_bit = if mask.is_some() { MASK_BIT } else { 0 };
    let len = payload.len();
    if len < usize::from(LEN_16) {
        out.put_u8(mask_bit | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(mask_bit | LEN_16);
        out.put_u16(len);
    } else {
        out.put_u8(mask_bit | LEN_64);
        out.put_u64(len as u64);
    }
    let payload_start = out.len() + mask.map_or(0, |mask| mask.len());
    if let Some(mask) = mask {
        out.put_slice(&mask);
    }
    out.put_slice(payload);
    if let Some(mask) = mask {
        apply_mask(&mut out[payload_start..], mask);
    }
    out.freeze()
}

/// Builds a close frame body. The reason is cut, at a character boundary, to the 123 bytes left
/// after the code, so the frame stays within the control frame limit.
pub fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = BytesMut::with_capacity(2 + end);
    out.put_u16(code);
    out.put_slice(&reason.as_bytes()[..end]);
    out.freeze()
}

/// Reads an unmasked close frame body: `None` for an empty body, else the code and the reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(u16, &str)>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::TruncatedCloseCode),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !close_code_allowed(code) {
                return Err(FrameError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::InvalidCloseReason)?;
            Ok(Some((code, reason)))
        }
    }
}

/// RFC 6455 7.4: the defined codes that may be sent (1004 is reserved; 1005, 1006 and 1015 are
/// for local reporting only), the IANA-registered 1012-1014, and the ranges for libraries,
/// frameworks and applications.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const BIG: u64 = 1 << 20;

    fn mask_for(direction: Direction) -> Option<[u8; 4]> {
        match direction {
            Direction::FromClient => Some(MASK),
            Direction::FromUpstream => None,
        }
    }

    /// A FIN frame masked as `direction` requires, with `first_byte` applied to its first byte.
    fn frame(
        direction: Direction,
        opcode: OpCode,
        payload: &[u8],
        first_byte: impl Fn(u8) -> u8,
    ) -> Vec<u8> {
        let mut wire = encode_frame(opcode, payload, mask_for(direction)).to_vec();
        wire[0] = first_byte(wire[0]);
        wire
    }

    fn fin(direction: Direction, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        frame(direction, opcode, payload, |b| b)
    }

    fn not_fin(direction: Direction, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        frame(direction, opcode, payload, |b| b & !FIN)
    }

    /// Decodes everything in `buf`, checking that each item's bytes are exactly what it consumed
    /// and that `Ok(None)` and errors consume nothing.
    fn drain(
        decoder: &mut FrameDecoder,
        buf: &mut BytesMut,
        items: &mut Vec<Item>,
    ) -> Result<(), FrameError> {
        loop {
            let before = buf.len();
            let result = decoder.decode(buf);
            match &result {
                Ok(Some(item)) => {
                    assert!(!item.wire().is_empty(), "empty item {item:?}");
                    assert_eq!(
                        item.wire().len(),
                        before - buf.len(),
                        "item length != consumed"
                    );
                }
                Ok(None) | Err(_) => assert_eq!(buf.len(), before, "consumed without an item"),
            }
            match result? {
                Some(item) => items.push(item),
                None => return Ok(()),
            }
        }
    }

    fn decode_all(decoder: &mut FrameDecoder, input: &[u8]) -> (Vec<Item>, Result<(), FrameError>) {
        let mut buf = BytesMut::from(input);
        let mut items = Vec::new();
        let result = drain(decoder, &mut buf, &mut items);
        (items, result)
    }

    fn error_of(direction: Direction, allow_rsv1: bool, max: u64, input: &[u8]) -> FrameError {
        let mut decoder = FrameDecoder::new(direction, max, allow_rsv1);
        match decode_all(&mut decoder, input) {
            (_, Err(error)) => error,
            (items, Ok(())) => panic!("no error, items {items:?}"),
        }
    }

    fn assert_rejected(input: &[u8], direction: Direction, expected: FrameError, code: u16) {
        let error = error_of(direction, false, BIG, input);
        assert_eq!(error, expected);
        assert_eq!(error.close_code(), code);
        assert!(!error.to_string().is_empty());
    }

    fn assert_accepted(decoder: &mut FrameDecoder, input: &[u8]) -> Vec<Item> {
        let (items, result) = decode_all(decoder, input);
        assert_eq!(result, Ok(()));
        let wire: Vec<u8> = items.iter().flat_map(|item| item.wire().to_vec()).collect();
        assert_eq!(wire, input);
        items
    }

    fn both_directions() -> [Direction; 2] {
        [Direction::FromClient, Direction::FromUpstream]
    }

    #[test]
    fn masking_must_match_the_direction() {
        let unmasked = encode_frame(OpCode::Text, b"hi", None);
        assert_rejected(
            &unmasked,
            Direction::FromClient,
            FrameError::UnmaskedClientFrame,
            1002,
        );
        let masked = encode_frame(OpCode::Text, b"hi", Some(MASK));
        assert_rejected(
            &masked,
            Direction::FromUpstream,
            FrameError::MaskedUpstreamFrame,
            1002,
        );
    }

    #[test]
    fn control_payload_over_125_bytes_is_rejected_from_the_header_alone() {
        for direction in both_directions() {
            let wire = fin(direction, OpCode::Binary, &[0; 126]);
            // Turn the binary frame into a ping and keep only the header.
            let mut header = wire[..4].to_vec();
            header[0] = FIN | OpCode::Ping.bits();
            let expected = FrameError::ControlFrameTooLarge { len: 126 };
            assert_rejected(&header, direction, expected, 1002);
        }
    }

    #[test]
    fn fragmented_control_frame_is_rejected() {
        for opcode in [OpCode::Close, OpCode::Ping, OpCode::Pong] {
            let wire = not_fin(Direction::FromClient, opcode, b"");
            let expected = FrameError::FragmentedControlFrame;
            assert_rejected(&wire, Direction::FromClient, expected, 1002);
        }
    }

    #[test]
    fn reserved_opcodes_are_rejected() {
        for bits in (0x3..=0x7).chain(0xB..=0xF) {
            let wire = frame(Direction::FromUpstream, OpCode::Text, b"x", |b| {
                (b & !OPCODE_BITS) | bits
            });
            assert_rejected(
                &wire[..2],
                Direction::FromUpstream,
                FrameError::ReservedOpcode(bits),
                1002,
            );
        }
    }

    #[test]
    fn reserved_bits_are_rejected_without_deflate() {
        for (rsv, bits) in [(0x40, 0b100), (0x20, 0b010), (0x10, 0b001), (0x70, 0b111)] {
            let wire = frame(Direction::FromClient, OpCode::Text, b"x", |b| b | rsv);
            assert_rejected(
                &wire,
                Direction::FromClient,
                FrameError::ReservedBits { bits },
                1002,
            );
        }
    }

    #[test]
    fn deflate_allows_rsv1_only_on_the_first_data_frame() {
        let direction = Direction::FromUpstream;
        let rsv1 = |b: u8| b | RSV1;
        let first = frame(direction, OpCode::Binary, b"ab", |b| rsv1(b) & !FIN);
        let mut decoder = FrameDecoder::new(direction, BIG, true);
        let items = assert_accepted(&mut decoder, &first);
        assert!(matches!(
            items[0],
            Item::Data {
                message_start: true,
                ..
            }
        ));

        let ok_continuation = not_fin(direction, OpCode::Continuation, b"c");
        assert_accepted(&mut decoder, &ok_continuation);
        let rsv1_continuation = frame(direction, OpCode::Continuation, b"d", rsv1);
        assert_eq!(
            decode_all(&mut decoder, &rsv1_continuation).1,
            Err(FrameError::ReservedBits { bits: 0b100 })
        );

        for input in [
            frame(direction, OpCode::Ping, b"", rsv1),
            frame(direction, OpCode::Text, b"x", |b| b | 0x20),
            frame(direction, OpCode::Text, b"x", |b| b | RSV1 | 0x10),
        ] {
            let error = error_of(direction, true, BIG, &input);
            assert!(
                matches!(error, FrameError::ReservedBits { .. }),
                "{error:?}"
            );
            assert_eq!(error.close_code(), 1002);
        }
    }

    #[test]
    fn continuation_without_a_message_is_rejected() {
        for wire in [
            fin(Direction::FromClient, OpCode::Continuation, b"x"),
            // The FIN frame ended the message, so no continuation may follow it.
            [
                fin(Direction::FromClient, OpCode::Text, b"a"),
                fin(Direction::FromClient, OpCode::Continuation, b"b"),
            ]
            .concat(),
        ] {
            assert_rejected(
                &wire,
                Direction::FromClient,
                FrameError::UnexpectedContinuation,
                1002,
            );
        }
    }

    #[test]
    fn new_message_inside_a_fragmented_message_is_rejected() {
        let d = Direction::FromUpstream;
        let mut input = [not_fin(d, OpCode::Text, b"a"), fin(d, OpCode::Ping, b"p")].concat();
        let mut decoder = FrameDecoder::new(d, BIG, false);
        assert_accepted(&mut decoder, &input);
        for opcode in [OpCode::Text, OpCode::Binary] {
            input = fin(d, opcode, b"b");
            assert_eq!(
                decode_all(&mut decoder, &input).1,
                Err(FrameError::InterleavedMessage)
            );
        }
        assert_eq!(FrameError::InterleavedMessage.close_code(), 1002);
    }

    #[test]
    fn length_with_msb_set_is_rejected_before_the_mask() {
        let mut header = vec![FIN | OpCode::Binary.bits(), MASK_BIT | LEN_64];
        header.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_rejected(
            &header,
            Direction::FromClient,
            FrameError::LengthOverflow,
            1002,
        );
    }

    #[test]
    fn non_minimal_lengths_are_accepted() {
        let mut sixteen = vec![FIN | OpCode::Text.bits(), LEN_16];
        sixteen.extend_from_slice(&5u16.to_be_bytes());
        let mut sixty_four = vec![FIN | OpCode::Ping.bits(), LEN_64];
        sixty_four.extend_from_slice(&5u64.to_be_bytes());
        for mut input in [sixteen, sixty_four] {
            input.extend_from_slice(b"hello");
            let mut decoder = FrameDecoder::new(Direction::FromUpstream, BIG, false);
            let items = assert_accepted(&mut decoder, &input);
            let last = items.last().expect("an item");
            assert!(
                matches!(
                    last,
                    Item::Data {
                        frame_end: true,
                        message_end: true,
                        ..
                    }
                ) || matches!(last, Item::Control { payload, .. } if payload.as_ref() == b"hello"),
                "{items:?}"
            );
        }
    }

    #[test]
    fn too_big_message_is_rejected_from_its_header() {
        let d = Direction::FromClient;
        let wire = fin(d, OpCode::Binary, &[7; 200]);
        let header_len = 2 + 2 + 4;
        let error = error_of(d, false, 199, &wire[..header_len]);
        assert_eq!(
            error,
            FrameError::MessageTooBig {
                size: 200,
                max: 199
            }
        );
        assert_eq!(error.close_code(), 1009);
        assert_accepted(&mut FrameDecoder::new(d, 200, false), &wire);
    }

    #[test]
    fn too_big_fragmented_message_counts_all_fragments() {
        let d = Direction::FromUpstream;
        let first = not_fin(d, OpCode::Text, &[b'a'; 60]);
        let ping = fin(d, OpCode::Ping, &[0; 100]);
        let second = not_fin(d, OpCode::Continuation, &[b'b'; 40]);
        let third = fin(d, OpCode::Continuation, b"c");
        let mut decoder = FrameDecoder::new(d, 100, false);
        assert_accepted(&mut decoder, &[first, ping, second].concat());
        let (items, result) = decode_all(&mut decoder, &third[..2]);
        assert!(items.is_empty());
        assert_eq!(
            result,
            Err(FrameError::MessageTooBig {
                size: 101,
                max: 100
            })
        );
    }

    #[test]
    fn fragments_past_the_limit_are_refused_from_two_header_bytes() {
        let d = Direction::FromClient;
        let first = not_fin(d, OpCode::Binary, b"a");
        let middle = not_fin(d, OpCode::Continuation, b"b");
        let last = fin(d, OpCode::Continuation, b"c");
        let ping = fin(d, OpCode::Ping, b"p");
        let mut decoder = FrameDecoder::new(d, BIG, false).with_max_fragments(3);
        // Three frames make a message; control frames between them do not count.
        for _ in 0..2 {
            let message = [&first, &ping, &middle, &ping, &last].map(|f| f.as_slice());
            assert_accepted(&mut decoder, &message.concat());
        }
        assert_accepted(&mut decoder, &[&first[..], &middle, &middle].concat());
        let error = decode_all(&mut decoder, &last[..2]).1;
        assert_eq!(error, Err(FrameError::TooManyFragments { max: 3 }));
        assert_eq!(FrameError::TooManyFragments { max: 3 }.close_code(), 1009);
        // The default is no limit, and the upstream's decoder keeps it.
        let mut unbounded = FrameDecoder::new(d, BIG, false);
        let many = [vec![first.clone()], vec![middle; 500], vec![last]].concat();
        assert_accepted(&mut unbounded, &many.concat());
    }

    #[test]
    fn payload_pieces_carry_the_key_lined_up_with_them() {
        let d = Direction::FromClient;
        let payload: Vec<u8> = (0..=255).collect();
        let wire = fin(d, OpCode::Binary, &payload);
        for split in [1, 2, 3, 5, 7, 64] {
            let mut decoder = FrameDecoder::new(d, BIG, false);
            let (items, result) = feed_chunked(&mut decoder, &wire, &[split]);
            assert_eq!(result, Ok(()));
            let [Item::Data {
                part: Part::Header, ..
            }, pieces @ ..] = items.as_slice()
            else {
                panic!("{items:?}")
            };
            let mut clear = Vec::new();
            for piece in pieces {
                let Item::Data {
                    bytes,
                    part: Part::Payload { key },
                    ..
                } = piece
                else {
                    panic!("{piece:?}")
                };
                let mut bytes = bytes.to_vec();
                apply_mask(&mut bytes, *key);
                clear.extend_from_slice(&bytes);
            }
            assert_eq!(clear, payload, "split {split}");
        }
    }

    #[test]
    fn close_payload_of_one_byte_is_rejected() {
        let wire = fin(Direction::FromClient, OpCode::Close, &[0x03]);
        assert_rejected(
            &wire,
            Direction::FromClient,
            FrameError::TruncatedCloseCode,
            1002,
        );
    }

    #[test]
    fn close_codes_follow_rfc_7_4() {
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            let wire = fin(
                Direction::FromUpstream,
                OpCode::Close,
                &close_payload(code, "x"),
            );
            assert_rejected(
                &wire,
                Direction::FromUpstream,
                FrameError::InvalidCloseCode(code),
                1002,
            );
        }
        for code in [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            let wire = fin(
                Direction::FromClient,
                OpCode::Close,
                &close_payload(code, "bye"),
            );
            let items = assert_accepted(
                &mut FrameDecoder::new(Direction::FromClient, BIG, false),
                &wire,
            );
            let [Item::Control { payload, .. }] = items.as_slice() else {
                panic!("{items:?}")
            };
            assert_eq!(parse_close_payload(payload), Ok(Some((code, "bye"))));
        }
    }

    #[test]
    fn invalid_utf8_close_reason_is_1007() {
        let wire = fin(
            Direction::FromClient,
            OpCode::Close,
            &[0x03, 0xe8, 0xff, 0xfe],
        );
        assert_rejected(
            &wire,
            Direction::FromClient,
            FrameError::InvalidCloseReason,
            1007,
        );
    }

    #[test]
    fn text_payload_utf8_is_not_checked() {
        let wire = fin(Direction::FromUpstream, OpCode::Text, &[0xff, 0xfe, 0xc0]);
        assert_accepted(
            &mut FrameDecoder::new(Direction::FromUpstream, BIG, false),
            &wire,
        );
    }

    #[test]
    fn short_header_consumes_nothing() {
        let wire = fin(Direction::FromClient, OpCode::Binary, &[1; 70_000]);
        assert_eq!(wire.len(), MAX_HEADER_LEN + 70_000);
        let mut decoder = FrameDecoder::new(Direction::FromClient, BIG, false);
        let mut buf = BytesMut::new();
        for (i, byte) in wire[..MAX_HEADER_LEN].iter().enumerate() {
            buf.put_u8(*byte);
            let item = decoder.decode(&mut buf).expect("valid header");
            if i + 1 < MAX_HEADER_LEN {
                assert_eq!(item, None);
                assert_eq!(buf.len(), i + 1);
            } else {
                let expected = Item::Data {
                    bytes: Bytes::copy_from_slice(&wire[..MAX_HEADER_LEN]),
                    part: Part::Header,
                    message_start: true,
                    frame_end: false,
                    message_end: false,
                    opcode: OpCode::Binary,
                    compressed: false,
                };
                assert_eq!(item, Some(expected));
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn data_payload_passes_through_as_it_arrives() {
        let d = Direction::FromClient;
        let wire = not_fin(d, OpCode::Text, b"hello world");
        let mut decoder = FrameDecoder::new(d, BIG, false);
        let mut buf = BytesMut::from(&wire[..10]);
        let header = decoder.decode(&mut buf).expect("valid").expect("header");
        assert!(matches!(
            header,
            Item::Data {
                message_start: true,
                frame_end: false,
                ..
            }
        ));
        let piece = decoder.decode(&mut buf).expect("valid").expect("piece");
        assert_eq!(piece.wire().as_ref(), &wire[6..10]);
        assert!(!decoder.at_frame_boundary());
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&wire[10..]);
        let last = decoder.decode(&mut buf).expect("valid").expect("piece");
        // Four payload bytes went before: the key for this piece starts at its fifth byte, which
        // is the first again.
        let expected = Item::Data {
            bytes: Bytes::copy_from_slice(&wire[10..]),
            part: Part::Payload { key: MASK },
            message_start: false,
            frame_end: true,
            message_end: false,
            opcode: OpCode::Text,
            compressed: false,
        };
        assert_eq!(last, expected);
        assert!(decoder.at_frame_boundary());
        // The message is still open, so its continuation follows with the message's opcode.
        let items = assert_accepted(&mut decoder, &fin(d, OpCode::Continuation, b""));
        let expected = Item::Data {
            bytes: Bytes::copy_from_slice(&fin(d, OpCode::Continuation, b"")),
            part: Part::Header,
            message_start: false,
            frame_end: true,
            message_end: true,
            opcode: OpCode::Text,
            compressed: false,
        };
        assert_eq!(items, [expected]);
    }

    #[test]
    fn control_frame_waits_until_whole_and_comes_unmasked() {
        let wire = fin(Direction::FromClient, OpCode::Ping, b"are you there?");
        let mut decoder = FrameDecoder::new(Direction::FromClient, BIG, false);
        let mut buf = BytesMut::from(&wire[..wire.len() - 1]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(buf.len(), wire.len() - 1);
        buf.extend_from_slice(&wire[wire.len() - 1..]);
        let expected = Item::Control {
            opcode: OpCode::Ping,
            payload: Bytes::from_static(b"are you there?"),
            wire: Bytes::from(wire),
        };
        assert_eq!(decoder.decode(&mut buf), Ok(Some(expected)));
        assert!(buf.is_empty());
    }

    #[test]
    fn mask_matches_reference_at_every_length_and_alignment() {
        let masks = [MASK, [0; 4], [0xff; 4], [1, 2, 3, 4]];
        for mask in masks {
            for len in 0..=MAX_CONTROL_PAYLOAD + 8 {
                for offset in 0..8 {
                    let original: Vec<u8> = (0..offset + len).map(|i| (i * 7 + 3) as u8).collect();
                    let mut masked = original.clone();
                    apply_mask(&mut masked[offset..], mask);
                    assert_eq!(masked[..offset], original[..offset]);
                    for (i, byte) in masked[offset..].iter().enumerate() {
                        assert_eq!(
                            *byte,
                            original[offset + i] ^ mask[i % 4],
                            "len {len} offset {offset}"
                        );
                    }
                    apply_mask(&mut masked[offset..], mask);
                    assert_eq!(masked, original);
                }
            }
        }
    }

    #[test]
    fn encode_uses_the_shortest_length_encoding() {
        for (len, header_len) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let payload = vec![9; len];
            assert_eq!(
                encode_frame(OpCode::Binary, &payload, None).len(),
                header_len + len
            );
            assert_eq!(
                encode_frame(OpCode::Binary, &payload, Some(MASK)).len(),
                header_len + 4 + len
            );
        }
    }

    #[test]
    fn close_payload_truncates_at_a_char_boundary() {
        let reason = "é".repeat(100);
        let payload = close_payload(1000, &reason);
        assert_eq!(payload.len(), 2 + 122);
        assert_eq!(
            parse_close_payload(&payload),
            Ok(Some((1000, &reason[..122])))
        );
        assert_eq!(
            parse_close_payload(&close_payload(4000, "")),
            Ok(Some((4000, "")))
        );
        assert_eq!(parse_close_payload(b""), Ok(None));
    }

    /// What a frame should decode to, independent of how the input was chunked.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Frame {
            wire: Vec<u8>,
            /// The payload unmasked with the keys the pieces carried.
            payload: Vec<u8>,
            message_start: bool,
            message_end: bool,
            opcode: OpCode,
            compressed: bool,
        },
        Control {
            opcode: OpCode,
            payload: Vec<u8>,
            wire: Vec<u8>,
        },
    }

    /// A data frame being joined from its pieces: wire bytes, clear payload, and the flags of
    /// its first item.
    type Pending = (Vec<u8>, Vec<u8>, bool, OpCode, bool);

    /// Joins the pieces of each data frame, checking the flags are consistent across pieces.
    fn events(items: &[Item]) -> Vec<Event> {
        let mut out = Vec::new();
        let mut pending: Option<Pending> = None;
        for item in items {
            match item {
                Item::Control {
                    opcode,
                    payload,
                    wire,
                } => {
                    assert!(pending.is_none(), "control frame inside a data frame");
                    out.push(Event::Control {
                        opcode: *opcode,
                        payload: payload.to_vec(),
                        wire: wire.to_vec(),
                    });
                }
                Item::Data {
                    bytes,
                    part,
                    message_start,
                    frame_end,
                    message_end,
                    opcode,
                    compressed,
                } => {
                    match (&pending, part) {
                        (None, Part::Header) => {}
                        (Some(_), Part::Payload { .. }) => {
                            assert!(!message_start, "message_start on a later piece")
                        }
                        _ => panic!("{part:?} out of place"),
                    }
                    let (wire, payload, start, frame_opcode, frame_compressed) = pending
                        .get_or_insert_with(|| {
                            (Vec::new(), Vec::new(), *message_start, *opcode, *compressed)
                        });
                    assert_eq!((*frame_opcode, *frame_compressed), (*opcode, *compressed));
                    assert!(!message_end || *frame_end, "message_end without frame_end");
                    wire.extend_from_slice(bytes);
                    if let Part::Payload { key } = part {
                        let mut clear = bytes.to_vec();
                        apply_mask(&mut clear, *key);
                        payload.extend_from_slice(&clear);
                    }
                    if *frame_end {
                        out.push(Event::Frame {
                            wire: std::mem::take(wire),
                            payload: std::mem::take(payload),
                            message_start: *start,
                            message_end: *message_end,
                            opcode: *opcode,
                            compressed: *compressed,
                        });
                        pending = None;
                    }
                }
            }
        }
        assert!(pending.is_none(), "unfinished data frame");
        out
    }

    /// Feeds `input` in chunks of the given sizes (cycled), draining after each chunk.
    fn feed_chunked(
        decoder: &mut FrameDecoder,
        input: &[u8],
        chunk_sizes: &[usize],
    ) -> (Vec<Item>, Result<(), FrameError>) {
        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        let mut rest = input;
        for size in chunk_sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            buf.extend_from_slice(chunk);
            if let Err(error) = drain(decoder, &mut buf, &mut items) {
                return (items, Err(error));
            }
            // Only an incomplete header or control frame may wait in the buffer.
            assert!(buf.len() < MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD);
            assert!(decoder.at_frame_boundary() || buf.is_empty());
        }
        (items, Ok(()))
    }

    type ControlFrame = (OpCode, Vec<u8>);

    #[derive(Debug, Clone)]
    enum Step {
        Control(OpCode, Vec<u8>),
        /// Opcode, RSV1, and per fragment its payload length and the control frames after it.
        Message(OpCode, bool, Vec<(usize, Vec<ControlFrame>)>),
    }

    fn control_strategy() -> impl Strategy<Value = ControlFrame> {
        let close_codes =
            prop::sample::select(vec![1000u16, 1001, 1003, 1008, 1011, 1014, 3000, 4999]);
        prop_oneof![
            (
                prop_oneof![Just(OpCode::Ping), Just(OpCode::Pong)],
                prop::collection::vec(any::<u8>(), 0..=125)
            ),
            (close_codes, "\\PC{0,50}")
                .prop_map(|(code, reason)| (OpCode::Close, close_payload(code, &reason).to_vec())),
            Just((OpCode::Close, Vec::new())),
        ]
    }

    fn payload_len() -> impl Strategy<Value = usize> {
        prop_oneof![4 => 0usize..=3, 4 => 0usize..300, 2 => 124usize..=127, 1 => 65_534usize..=65_537, 1 => 0usize..70_000]
    }

    fn step_strategy() -> impl Strategy<Value = Step> {
        let fragment = (
            payload_len(),
            prop::collection::vec(control_strategy(), 0..3),
        );
        prop_oneof![
            control_strategy().prop_map(|(opcode, payload)| Step::Control(opcode, payload)),
            (
                prop_oneof![Just(OpCode::Text), Just(OpCode::Binary)],
                any::<bool>(),
                prop::collection::vec(fragment, 1..4),
            )
                .prop_map(|(opcode, rsv1, fragments)| Step::Message(opcode, rsv1, fragments)),
        ]
    }

    /// Encodes the steps and returns the wire bytes with the events they must decode to.
    fn encode_steps(
        direction: Direction,
        steps: &[Step],
        masks: &[[u8; 4]],
        seed: u8,
    ) -> (Vec<u8>, Vec<Event>) {
        let mut masks = masks.iter().cycle();
        let mut mask = move || match direction {
            Direction::FromClient => masks.next().copied(),
            Direction::FromUpstream => None,
        };
        let mut input = Vec::new();
        let mut expected = Vec::new();
        let push_control =
            |input: &mut Vec<u8>, expected: &mut Vec<Event>, opcode, payload: &[u8], mask| {
                let wire = encode_frame(opcode, payload, mask).to_vec();
                input.extend_from_slice(&wire);
                expected.push(Event::Control {
                    opcode,
                    payload: payload.to_vec(),
                    wire,
                });
            };
        for step in steps {
            match step {
                Step::Control(opcode, payload) => {
                    push_control(&mut input, &mut expected, *opcode, payload, mask())
                }
                Step::Message(opcode, rsv1, fragments) => {
                    for (i, (len, controls)) in fragments.iter().enumerate() {
                        let first = i == 0;
                        let last = i + 1 == fragments.len();
                        let frame_opcode = if first { *opcode } else { OpCode::Continuation };
                        let payload: Vec<u8> = (0..*len)
                            .map(|j| (j as u8).wrapping_mul(31) ^ seed)
                            .collect();
                        let mut wire = encode_frame(frame_opcode, &payload, mask()).to_vec();
                        if !last {
                            wire[0] &= !FIN;
                        }
                        if first && *rsv1 {
                            wire[0] |= RSV1;
                        }
                        input.extend_from_slice(&wire);
                        expected.push(Event::Frame {
                            wire,
                            payload,
                            message_start: first,
                            message_end: last,
                            opcode: *opcode,
                            compressed: *rsv1,
                        });
                        if !last {
                            for (control_opcode, control_payload) in controls {
                                push_control(
                                    &mut input,
                                    &mut expected,
                                    *control_opcode,
                                    control_payload,
                                    mask(),
                                );
                            }
                        }
                    }
                }
            }
        }
        (input, expected)
    }

    fn direction_strategy() -> impl Strategy<Value = Direction> {
        prop_oneof![Just(Direction::FromClient), Just(Direction::FromUpstream)]
    }

    fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(prop_oneof![1usize..=16, 1usize..=5000], 1..20)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn valid_frames_decode_the_same_in_any_chunking(
            direction in direction_strategy(),
            steps in prop::collection::vec(step_strategy(), 0..8),
            masks in prop::collection::vec(any::<[u8; 4]>(), 1..8),
            seed in any::<u8>(),
            chunks in chunk_sizes(),
        ) {
            let (input, expected) = encode_steps(direction, &steps, &masks, seed);

            let mut whole = FrameDecoder::new(direction, BIG, true);
            let (whole_items, result) = decode_all(&mut whole, &input);
            prop_assert_eq!(result, Ok(()));
            prop_assert!(whole.at_frame_boundary());

            let mut chunked = FrameDecoder::new(direction, BIG, true);
            let (chunked_items, result) = feed_chunked(&mut chunked, &input, &chunks);
            prop_assert_eq!(result, Ok(()));
            prop_assert!(chunked.at_frame_boundary());

            for items in [&whole_items, &chunked_items] {
                let wire: Vec<u8> = items.iter().flat_map(|item| item.wire().to_vec()).collect();
                prop_assert!(wire == input, "wire bytes differ from the input");
                prop_assert_eq!(&events(items), &expected);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_overconsume(
            direction in direction_strategy(),
            allow_rsv1 in any::<bool>(),
            max in prop_oneof![0u64..300, Just(u64::MAX)],
            input in prop::collection::vec(any::<u8>(), 0..600),
            chunks in chunk_sizes(),
        ) {
            let mut decoder = FrameDecoder::new(direction, max, allow_rsv1);
            let (items, result) = feed_chunked(&mut decoder, &input, &chunks);
            let wire: Vec<u8> = items.iter().flat_map(|item| item.wire().to_vec()).collect();
            prop_assert_eq!(&wire[..], &input[..wire.len()]);
            if let Err(error) = result {
                prop_assert!([1002, 1007, 1009].contains(&error.close_code()));
            }
        }

        #[test]
        fn corrupted_valid_frames_never_panic_or_overconsume(
            direction in direction_strategy(),
            steps in prop::collection::vec(step_strategy(), 1..5),
            masks in prop::collection::vec(any::<[u8; 4]>(), 1..4),
            corruption in (any::<prop::sample::Index>(), 1u8..=255),
            chunks in chunk_sizes(),
        ) {
            let (mut input, _) = encode_steps(direction, &steps, &masks, 0);
            prop_assume!(!input.is_empty());
            let (at, flip) = corruption;
            let at = at.index(input.len());
            input[at] ^= flip;
            let mut decoder = FrameDecoder::new(direction, BIG, false);
            let (items, _) = feed_chunked(&mut decoder, &input, &chunks);
            let wire: Vec<u8> = items.iter().flat_map(|item| item.wire().to_vec()).collect();
            prop_assert_eq!(&wire[..], &input[..wire.len()]);
        }
    }

    mod tungstenite_interop {
        use super::*;
        use std::io::{Cursor, Read, Write};
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
        use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
        use tokio_tungstenite::tungstenite::Message;

        /// Tungstenite reads from `input` and writes to `output`.
        struct Duplex {
            input: Cursor<Vec<u8>>,
            output: Vec<u8>,
        }

        impl Read for Duplex {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.input.read(buf)
            }
        }

        impl Write for Duplex {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.output.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        fn socket(role: Role, input: Vec<u8>) -> WebSocket<Duplex> {
            let stream = Duplex {
                input: Cursor::new(input),
                output: Vec::new(),
            };
            WebSocket::from_raw_socket(stream, role, None)
        }

        /// The payload of a decoded data frame, unmasked with the key at the end of its header.
        fn data_payload(items: &[Item], direction: Direction) -> Vec<u8> {
            let [Item::Data {
                bytes: header,
                message_start: true,
                ..
            }, pieces @ ..] = items
            else {
                panic!("not a data frame: {items:?}");
            };
            let mut payload: Vec<u8> = pieces
                .iter()
                .flat_map(|item| item.wire().to_vec())
                .collect();
            if direction == Direction::FromClient {
                let key = read_array(header, header.len() - 4).expect("a masking key");
                apply_mask(&mut payload, key);
            }
            payload
        }

        #[test]
        fn frames_written_by_tungstenite_decode_in_both_directions() {
            let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
            for (role, direction) in [
                (Role::Client, Direction::FromClient),
                (Role::Server, Direction::FromUpstream),
            ] {
                let mut ws = socket(role, Vec::new());
                let close = CloseFrame {
                    code: CloseCode::Away,
                    reason: Utf8Bytes::from_static("going"),
                };
                for message in [
                    Message::text("hello"),
                    Message::Ping(Bytes::from_static(b"ping!")),
                    Message::Binary(Bytes::from(big.clone())),
                    Message::Close(Some(close)),
                ] {
                    ws.send(message).expect("tungstenite writes to a Vec");
                }
                let wire = ws.get_ref().output.clone();
                let mut decoder = FrameDecoder::new(direction, BIG, false);
                let items = feed_chunked(&mut decoder, &wire, &[1, 7, 300, 4096]).0;
                let forwarded: Vec<u8> =
                    items.iter().flat_map(|item| item.wire().to_vec()).collect();
                assert_eq!(forwarded, wire);

                let text_end = items
                    .iter()
                    .position(|item| {
                        matches!(
                            item,
                            Item::Data {
                                frame_end: true,
                                ..
                            }
                        )
                    })
                    .expect("text frame");
                assert_eq!(data_payload(&items[..=text_end], direction), b"hello");
                assert!(
                    matches!(&items[text_end + 1], Item::Control { opcode: OpCode::Ping, payload, .. } if payload.as_ref() == b"ping!")
                );
                let (binary, close) = items[text_end + 2..].split_at(items.len() - text_end - 3);
                assert!(binary.iter().all(|item| matches!(
                    item,
                    Item::Data {
                        opcode: OpCode::Binary,
                        ..
                    }
                )));
                assert_eq!(data_payload(binary, direction), big);
                let [Item::Control {
                    opcode: OpCode::Close,
                    payload,
                    ..
                }] = close
                else {
                    panic!("{close:?}")
                };
                assert_eq!(parse_close_payload(payload), Ok(Some((1001, "going"))));
            }
        }

        #[test]
        fn tungstenite_reads_encoded_frames() {
            let big = vec![b'z'; 70_000];
            // A server reads masked frames (what the proxy sends upstream), a client unmasked ones.
            for (role, mask) in [(Role::Server, Some(MASK)), (Role::Client, None)] {
                let input = [
                    encode_frame(OpCode::Text, b"hi", mask),
                    encode_frame(OpCode::Binary, &big, mask),
                    encode_frame(OpCode::Pong, b"p", mask),
                    encode_frame(OpCode::Close, &close_payload(1008, "policy"), mask),
                ]
                .concat();
                let mut ws = socket(role, input);
                assert_eq!(ws.read().expect("text"), Message::text("hi"));
                assert_eq!(
                    ws.read().expect("binary"),
                    Message::Binary(Bytes::from(big.clone()))
                );
                assert_eq!(
                    ws.read().expect("pong"),
                    Message::Pong(Bytes::from_static(b"p"))
                );
                let close = CloseFrame {
                    code: CloseCode::Policy,
                    reason: Utf8Bytes::from_static("policy"),
                };
                assert_eq!(ws.read().expect("close"), Message::Close(Some(close)));
            }
        }
    }
}
