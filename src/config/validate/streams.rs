//! `[sse]` and `[websocket]`, global or a route's override: each key falls back to the section
//! it overrides.

use super::cx::Cx;
use super::values::{at_least, choice, flag, nonzero};
use super::{COMPRESSION, ON_INVALID, ON_OVERSIZE, ON_RATE_LIMIT, ON_SLOW_CLIENT};
use crate::config::raw::{RawSse, RawWebSocket};
use crate::config::types::*;
use crate::config::units::{parse_duration, parse_rate, parse_size};

fn heartbeat_comment(s: &str) -> Result<String, String> {
    if s.contains(['\r', '\n']) {
        return Err(
            "the comment contains a line break, which would end the SSE comment early; \
                    use a single line such as \"ping\""
                .into(),
        );
    }
    if s.starts_with(':') {
        return Err(format!(
            "{s:?} starts with ':'; write the text only (e.g. \"ping\"), the ':' is added"
        ));
    }
    Ok(s.to_owned())
}

fn jitter(j: &f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(j) {
        Ok(*j)
    } else {
        Err(format!(
            "{j} is outside 0.0..=1.0; it is the fraction of `retry` to randomize, e.g. 0.2"
        ))
    }
}

/// `[sse]` or a route's `sse = {..}`, each key falling back to `base`.
pub(super) fn sse(cx: &mut Cx<'_>, prefix: &str, raw: &RawSse, base: &SseConfig) -> SseConfig {
    let k = |name: &str| format!("{prefix}.{name}");
    SseConfig {
        heartbeat: cx
            .text(&k("heartbeat"), raw.heartbeat.as_ref(), parse_duration)
            .unwrap_or(base.heartbeat),
        heartbeat_comment: cx
            .text(
                &k("heartbeat_comment"),
                raw.heartbeat_comment.as_ref(),
                heartbeat_comment,
            )
            .unwrap_or_else(|| base.heartbeat_comment.clone()),
        stale_after: cx
            .text(&k("stale_after"), raw.stale_after.as_ref(), parse_duration)
            .unwrap_or(base.stale_after),
        retry: cx
            .text(&k("retry"), raw.retry.as_ref(), parse_duration)
            .or(base.retry),
        retry_jitter: cx
            .value(&k("retry_jitter"), raw.retry_jitter.as_ref(), jitter)
            .unwrap_or(base.retry_jitter),
        max_event_size: cx
            .text(
                &k("max_event_size"),
                raw.max_event_size.as_ref(),
                nonzero(parse_size),
            )
            .unwrap_or(base.max_event_size),
        on_oversize: cx
            .text(
                &k("on_oversize"),
                raw.on_oversize.as_ref(),
                choice(ON_OVERSIZE),
            )
            .unwrap_or(base.on_oversize),
        on_invalid: cx
            .text(
                &k("on_invalid"),
                raw.on_invalid.as_ref(),
                choice(ON_INVALID),
            )
            .unwrap_or(base.on_invalid),
        write_timeout: cx
            .text(
                &k("write_timeout"),
                raw.write_timeout.as_ref(),
                parse_duration,
            )
            .unwrap_or(base.write_timeout),
        require_accept: flag(raw.require_accept.as_ref(), base.require_accept),
        client_buffer: cx
            .text(
                &k("client_buffer"),
                raw.client_buffer.as_ref(),
                nonzero(parse_size),
            )
            .unwrap_or(base.client_buffer),
        slow_buffer_total: cx
            .text(
                &k("slow_buffer_total"),
                raw.slow_buffer_total.as_ref(),
                nonzero(parse_size),
            )
            .unwrap_or(base.slow_buffer_total),
        on_slow_client: cx
            .text(
                &k("on_slow_client"),
                raw.on_slow_client.as_ref(),
                choice(ON_SLOW_CLIENT),
            )
            .unwrap_or(base.on_slow_client),
    }
}

/// `[websocket]` or a route's `websocket = {..}`, each key falling back to `base`.
pub(super) fn websocket(
    cx: &mut Cx<'_>,
    prefix: &str,
    raw: &RawWebSocket,
    base: &WebSocketConfig,
) -> WebSocketConfig {
    let k = |name: &str| format!("{prefix}.{name}");
    WebSocketConfig {
        ping_interval: cx
            .text(
                &k("ping_interval"),
                raw.ping_interval.as_ref(),
                parse_duration,
            )
            .unwrap_or(base.ping_interval),
        pong_timeout: cx
            .text(
                &k("pong_timeout"),
                raw.pong_timeout.as_ref(),
                parse_duration,
            )
            .unwrap_or(base.pong_timeout),
        idle_timeout: cx
            .text(
                &k("idle_timeout"),
                raw.idle_timeout.as_ref(),
                parse_duration,
            )
            .unwrap_or(base.idle_timeout),
        max_message_size: cx
            .text(
                &k("max_message_size"),
                raw.max_message_size.as_ref(),
                nonzero(parse_size),
            )
            .unwrap_or(base.max_message_size),
        messages_per_user: cx
            .text(
                &k("messages_per_user"),
                raw.messages_per_user.as_ref(),
                parse_rate,
            )
            .or(base.messages_per_user),
        on_rate_limit: cx
            .text(
                &k("on_rate_limit"),
                raw.on_rate_limit.as_ref(),
                choice(ON_RATE_LIMIT),
            )
            .unwrap_or(base.on_rate_limit),
        compression: cx
            .text(
                &k("compression"),
                raw.compression.as_ref(),
                choice(COMPRESSION),
            )
            .unwrap_or(base.compression),
        max_control_frames: cx
            .text(
                &k("max_control_frames"),
                raw.max_control_frames.as_ref(),
                parse_rate,
            )
            .unwrap_or(base.max_control_frames),
        max_message_fragments: cx
            .value(
                &k("max_message_fragments"),
                raw.max_message_fragments.as_ref(),
                at_least(1, "; a message is at least one frame"),
            )
            .unwrap_or(base.max_message_fragments),
    }
}
