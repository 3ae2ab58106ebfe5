//! Feeds arbitrary input to the two permessage-deflate parsers the proxy runs on untrusted
//! bytes: the `Sec-WebSocket-Extensions` reader (an offer from the client, an answer from the
//! app) and the inflater that measures compressed client messages. Beyond not panicking, an
//! offer passed on must read back as itself (the app gets exactly what the proxy read), and a
//! message over the limit must be refused, never counted past it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use streamguard::config::Compression;
use streamguard::relay::websocket::deflate::{
    negotiated, upstream_offer, DeflateParams, InflateError, Inflater,
};
use streamguard::relay::websocket::frame::Part;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the inflater settings and the piece size; up to the first NUL is a
    // header value, the rest one compressed message's payload.
    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    let (header, payload) = match rest.iter().position(|&b| b == 0) {
        Some(nul) => (&rest[..nul], &rest[nul + 1..]),
        None => (rest, &[][..]),
    };
    let header = String::from_utf8_lossy(header);
    let _ = negotiated(Some(&header), Compression::Inflate);
    if let Some(offer) = upstream_offer(&header) {
        assert_eq!(upstream_offer(&offer).as_deref(), Some(offer.as_str()));
    }

    let params = DeflateParams {
        client_no_context_takeover: settings & 1 != 0,
        client_max_window_bits: 8 + ((settings >> 1) & 7),
    };
    let limit = if settings & 0x10 == 0 { 1 << 16 } else { 64 };
    let piece = usize::from(settings >> 5) * 37 + 1;
    let mut inflater = Inflater::new(params, limit);
    let key = [settings, 0x5a, 0xa5, !settings];
    // The same message twice: the second one starts from the context the first left.
    for _ in 0..2 {
        let mut result = inflater.inspect(Part::Header, &[], true, payload.is_empty());
        let mut key = key;
        let pieces: Vec<&[u8]> = payload.chunks(piece).collect();
        for (i, bytes) in pieces.iter().enumerate() {
            if result.is_err() {
                break;
            }
            result = inflater.inspect(Part::Payload { key }, bytes, false, i + 1 == pieces.len());
            key.rotate_left(bytes.len() % 4);
        }
        match result {
            Ok(()) => {}
            Err(InflateError::TooBig { limit: got }) => {
                assert_eq!(got, limit);
                return;
            }
            Err(_) => return,
        }
    }
});
