//! `[http2]`: what a browser's HTTP/2 connection may hold, and `listen.h2c` checked against it.

use super::cx::Cx;
use super::values::{flag, nonzero};
use crate::config::raw::RawConfig;
use crate::config::types::*;
use crate::config::units::{parse_duration, parse_size};

/// Bounds of `http2.max_send_buffer`: below one full DATA frame (16 KiB) every event write
/// waits on the connection; above 16 MiB one stalled stream pins too much memory.
const MIN_H2_SEND_BUFFER: usize = 16 * 1024;
const MAX_H2_SEND_BUFFER: usize = 16 * 1024 * 1024;

/// `[http2]`, and `listen.h2c` against it.
pub(super) fn http2(cx: &mut Cx<'_>, raw: &RawConfig, listen: &ListenConfig) -> Http2Config {
    let h2 = &raw.http2;
    let base = Http2Config::default();
    let config = Http2Config {
        enabled: flag(h2.enabled.as_ref(), base.enabled),
        max_concurrent_streams: cx
            .value(
                "http2.max_concurrent_streams",
                h2.max_concurrent_streams.as_ref(),
                |n: &i64| match u32::try_from(*n) {
                    Ok(n @ 1..=10_000) => Ok(n),
                    _ => Err(format!(
                        "must be between 1 and 10000 (streams per connection), not {n}"
                    )),
                },
            )
            .unwrap_or(base.max_concurrent_streams),
        idle_timeout: cx
            .text(
                "http2.idle_timeout",
                h2.idle_timeout.as_ref(),
                nonzero(parse_duration),
            )
            .unwrap_or(base.idle_timeout),
        max_send_buffer: cx
            .text(
                "http2.max_send_buffer",
                h2.max_send_buffer.as_ref(),
                |s: &str| match parse_size(s).map_err(|e| e.to_string())? {
                    n @ MIN_H2_SEND_BUFFER..=MAX_H2_SEND_BUFFER => Ok(n),
                    _ => Err(format!("must be between 16KiB and 16MiB, not {s}")),
                },
            )
            .unwrap_or(base.max_send_buffer),
    };
    if let Some(h2c) = raw.listen.h2c.as_ref().filter(|on| *on.get_ref()) {
        let line = cx.line(h2c);
        if listen.tls.is_some() {
            cx.error(
                "listen.h2c",
                Some(line),
                "h2c is HTTP/2 over plain TCP, and this listener has TLS (where browsers get h2 \
                 by ALPN): remove listen.h2c",
            );
        } else if !config.enabled {
            cx.error(
                "listen.h2c",
                Some(line),
                "h2c needs HTTP/2: set http2.enabled = true or remove listen.h2c",
            );
        }
    }
    config
}
