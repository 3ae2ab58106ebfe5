//! The SSE relay loop: forwards upstream events whole, and supervises the stream.
//!
//! Units (events, comment lines) are forwarded only once complete, so the client never holds a
//! half event: that is what makes it safe to inject heartbeats, the expiry event or the eviction
//! event at any moment, and to discard a half-received event when the upstream stalls. Memory per
//! stream is bounded by `max_event_size` (the parser's pending buffer) plus one read chunk.
//!
//! Timers are lazy: the loop records when it last wrote to the client and last heard from the
//! upstream, and a timer that fires early is simply re-armed for the real due time. That keeps
//! per-event work to two `Instant` stores instead of re-registering timers on every event.

pub mod parser;

use bytes::{Bytes, BytesMut};
use pingora::protocols::http::v1::client::HttpSession as H1Client;
use pingora::proxy::Session;
use pingora::ErrorType;
use rand::Rng;
use std::time::Duration;
use tokio::time::Instant;

use self::parser::{Segment, SseParser};
use super::{shutdown_started, sleep_until_opt, Supervision};
use crate::config::{OnInvalid, OnOversize, SseConfig};
use crate::telemetry::CloseReason;

/// The event sent just before a stream closes because the client's token expired.
pub const EXPIRED_EVENT: &[u8] = b"event: streamguard.expired\ndata: {\"reason\":\"token_expired\"}\n\n";
/// The event sent to a stream closed to admit a newer stream of the same user.
pub const EVICTED_EVENT: &[u8] = b"event: streamguard.evicted\ndata: {\"reason\":\"evicted\"}\n\n";

/// How long a stream that must end waits for the upstream to finish a half-received event.
const FINISH_EVENT_GRACE: Duration = Duration::from_secs(1);

/// The `retry:` field that starts every stream when `sse.retry` is set: randomized per
/// connection within ±`retry_jitter` so a mass reconnect (deploy, failover) is spread out.
pub fn retry_hint(cfg: &SseConfig) -> Option<Bytes> {
    let base = cfg.retry?.as_millis() as f64;
    let jitter = cfg.retry_jitter.clamp(0.0, 1.0);
    let factor = if jitter > 0.0 {
        rand::rng().random_range((1.0 - jitter)..=(1.0 + jitter))
    } else {
        1.0
    };
    let ms = (base * factor).round().max(0.0) as u64;
    // A blank line after `retry:` dispatches nothing (no data), so this is not an event.
    Some(Bytes::from(format!("retry: {ms}\n\n")))
}

/// Why the loop is winding the stream down, and what the client is told.
#[derive(Clone, Copy)]
enum Ending {
    Expired,
    Evicted,
    Shutdown,
}

impl Ending {
    fn reason(self) -> CloseReason {
        match self {
            Ending::Expired => CloseReason::Expired,
            Ending::Evicted => CloseReason::Evicted,
            Ending::Shutdown => CloseReason::Shutdown,
        }
    }
}

/// Relays an SSE body whose response head was already written downstream. Returns why it ended;
/// the caller closes both connections.
pub async fn relay(
    session: &mut Session,
    upstream: &mut H1Client,
    cfg: &SseConfig,
    mut sup: Supervision<'_>,
) -> CloseReason {
    let metrics = sup.metrics;
    let mut out = Writer {
        session,
        metrics,
        last_write: Instant::now(),
    };
    if let Some(hint) = retry_hint(cfg) {
        if let Err(reason) = out.write(hint).await {
            return reason;
        }
    }

    let mut parser = SseParser::new(cfg.max_event_size);
    let mut segments: Vec<Segment> = Vec::with_capacity(8);
    let mut last_upstream = Instant::now();
    let heartbeat = (!cfg.heartbeat.is_zero()).then_some(cfg.heartbeat);
    let stale_after = (!cfg.stale_after.is_zero()).then_some(cfg.stale_after);
    let heartbeat_bytes = Bytes::from(format!(": {}\n\n", cfg.heartbeat_comment));
    let mut ending: Option<(Ending, Instant)> = None;
    let mut expiry = sup.expires_at;

    loop {
        let heartbeat_due = heartbeat.map(|d| out.last_write + d);
        let stale_due = stale_after.map(|d| last_upstream + d);
        tokio::select! {
            biased;
            read = upstream.read_body_bytes() => match read {
                Ok(Some(chunk)) => {
                    last_upstream = Instant::now();
                    parser.feed(chunk, &mut segments);
                    if let Err(reason) = forward(&mut out, cfg, &mut segments).await {
                        return reason;
                    }
                }
                Ok(None) => {
                    // The upstream ended its response: a half event at the end is not forwarded.
                    out.finish().await;
                    return CloseReason::UpstreamEnd;
                }
                Err(_) => {
                    out.finish().await;
                    return CloseReason::UpstreamGone;
                }
            },
            idle = out.session.read_body_or_idle(true) => {
                if idle.is_err() {
                    return CloseReason::ClientGone;
                }
            }
            _ = sleep_until_opt(heartbeat_due) => {
                // Units are forwarded whole, so the client is always at an event boundary here.
                if heartbeat_due.is_some_and(|due| Instant::now() >= due) {
                    if let Err(reason) = out.write(heartbeat_bytes.clone()).await {
                        return reason;
                    }
                    metrics.heartbeats.inc();
                }
            }
            _ = sleep_until_opt(stale_due) => {
                if stale_due.is_some_and(|due| Instant::now() >= due) {
                    parser.discard_pending();
                    out.finish().await;
                    return CloseReason::Stale;
                }
            }
            _ = sleep_until_opt(expiry), if ending.is_none() => {
                expiry = None;
                ending = Some((Ending::Expired, Instant::now() + FINISH_EVENT_GRACE));
            }
            _ = &mut sup.evicted, if ending.is_none() => {
                ending = Some((Ending::Evicted, Instant::now() + FINISH_EVENT_GRACE));
            }
            _ = shutdown_started(&mut sup.shutdown), if ending.is_none() => {
                ending = Some((Ending::Shutdown, Instant::now() + FINISH_EVENT_GRACE));
            }
            _ = sleep_until_opt(ending.map(|(_, at)| at)) => {
                // The upstream stayed mid-event past the grace period: end without that event.
                parser.discard_pending();
            }
        }
        if let Some((why, _)) = ending {
            if parser.at_boundary() {
                let last = match why {
                    Ending::Expired => Some(Bytes::from_static(EXPIRED_EVENT)),
                    Ending::Evicted => Some(Bytes::from_static(EVICTED_EVENT)),
                    Ending::Shutdown => retry_hint(cfg),
                };
                if let Some(last) = last {
                    // The stream ends either way; a failed last write changes nothing.
                    let _ = out.write(last).await;
                }
                out.finish().await;
                return why.reason();
            }
        }
    }
}

/// Writes the complete units of one upstream chunk, applying the size and validity rules.
async fn forward(
    out: &mut Writer<'_>,
    cfg: &SseConfig,
    segments: &mut Vec<Segment>,
) -> Result<(), CloseReason> {
    let metrics = out.metrics;
    let mut pass: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    for segment in segments.drain(..) {
        match segment {
            Segment::Unit { bytes, info } => {
                if !info.valid_utf8 || info.has_nul {
                    match cfg.on_invalid {
                        OnInvalid::Pass => {}
                        OnInvalid::Drop => {
                            metrics.dropped_events.with_label_values(&["invalid"]).inc();
                            tracing::warn!(bytes = bytes.len(), "dropped an SSE event with invalid UTF-8 or NUL bytes");
                            continue;
                        }
                        OnInvalid::Close => {
                            tracing::warn!("closing an SSE stream: invalid UTF-8 or NUL bytes in an event");
                            return Err(CloseReason::Invalid);
                        }
                    }
                }
                if info.is_event {
                    metrics.sse_events.inc();
                }
                // One write per upstream chunk: join only when a chunk held several units.
                match (&mut pass, &mut joined) {
                    (None, None) => pass = Some(bytes),
                    (Some(first), None) => {
                        let mut buf = BytesMut::with_capacity(first.len() + bytes.len());
                        buf.extend_from_slice(first);
                        buf.extend_from_slice(&bytes);
                        pass = None;
                        joined = Some(buf);
                    }
                    (_, Some(buf)) => buf.extend_from_slice(&bytes),
                }
            }
            Segment::Oversize { size } => match cfg.on_oversize {
                OnOversize::Drop => {
                    metrics.dropped_events.with_label_values(&["oversize"]).inc();
                    tracing::warn!(size, limit = cfg.max_event_size, "dropped an oversize SSE event");
                }
                OnOversize::Close => {
                    tracing::warn!(size, limit = cfg.max_event_size, "closing an SSE stream: oversize event");
                    return Err(CloseReason::Oversize);
                }
            },
        }
    }
    let data = match (pass, joined) {
        (Some(bytes), _) => bytes,
        (None, Some(buf)) => buf.freeze(),
        (None, None) => return Ok(()),
    };
    out.write(data).await
}

/// The client side: writes, and remembers when it last wrote (for heartbeats).
struct Writer<'a> {
    session: &'a mut Session,
    metrics: &'a crate::telemetry::Metrics,
    last_write: Instant,
}

impl Writer<'_> {
    async fn write(&mut self, data: Bytes) -> Result<(), CloseReason> {
        let len = data.len() as u64;
        match self.session.write_response_body(Some(data), false).await {
            Ok(()) => {
                self.last_write = Instant::now();
                self.metrics.sse.bytes_to_client.inc_by(len);
                Ok(())
            }
            // The session's write timeout is `sse.write_timeout`: a client that stops reading.
            Err(e) if *e.etype() == ErrorType::WriteTimedout => Err(CloseReason::SlowClient),
            Err(_) => Err(CloseReason::ClientGone),
        }
    }

    /// Ends the chunked body cleanly so the browser sees a normal end and reconnects.
    async fn finish(&mut self) {
        let _ = self.session.write_response_body(None, true).await;
    }
}
