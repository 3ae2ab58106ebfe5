//! The WebSocket relay loop: forwards frames unchanged in both directions and supervises the
//! connection (pings, dead peers, idle, message size and rate, token expiry, shutdown).
//!
//! Frames are forwarded as wire bytes, still masked as the client masked them, so relaying costs
//! no copy and no re-masking. The two `FrameDecoder`s only track where frames start and end:
//! the proxy injects its own frames (pings to the client, close frames) only at a frame
//! boundary of the direction it writes into, never inside a frame being relayed.

pub mod frame;

use bytes::{Bytes, BytesMut};
use pingora::protocols::http::v1::client::HttpSession as H1Client;
use pingora::proxy::Session;
use std::time::Duration;
use tokio::time::Instant;

use self::frame::{encode_frame, close_payload, Direction, FrameDecoder, FrameError, Item, OpCode};
use super::{shutdown_started, sleep_until_opt, Supervision};
use crate::config::{OnRateLimit, WebSocketConfig};
use crate::telemetry::CloseReason;

/// RFC 6455 close codes the proxy sends.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// How long a proxy-initiated close waits for a half-relayed frame to finish before it gives up
/// on a clean close frame and just closes the socket.
const BOUNDARY_GRACE: Duration = Duration::from_secs(1);

/// Per-connection settings the relay needs besides `[websocket]`.
pub struct WsOptions<'a> {
    pub cfg: &'a WebSocketConfig,
    /// `permessage-deflate` was negotiated: RSV1 is legal on first frames.
    pub allow_rsv1: bool,
    /// Asks the per-user message limiter whether one more client message may pass.
    pub allow_message: &'a (dyn Fn() -> bool + Send + Sync),
}

/// A close the proxy decided on: what each side is told and the metric reason.
#[derive(Clone, Copy)]
struct ProxyClose {
    client_code: u16,
    client_reason: &'static str,
    reason: CloseReason,
}

impl ProxyClose {
    fn new(client_code: u16, client_reason: &'static str, reason: CloseReason) -> Self {
        ProxyClose {
            client_code,
            client_reason,
            reason,
        }
    }
}

/// Relays an upgraded connection whose 101 was already written downstream.
pub async fn relay(
    session: &mut Session,
    upstream: &mut H1Client,
    opts: WsOptions<'_>,
    mut sup: Supervision<'_>,
) -> CloseReason {
    let cfg = opts.cfg;
    let metrics = sup.metrics;
    let mut from_client = FrameDecoder::new(
        Direction::FromClient,
        cfg.max_message_size as u64,
        opts.allow_rsv1,
    );
    let mut from_upstream = FrameDecoder::new(Direction::FromUpstream, u64::MAX, opts.allow_rsv1);
    let mut client_buf = BytesMut::new();
    let mut upstream_buf = BytesMut::new();

    let now = Instant::now();
    let mut last_client = now;
    let mut last_data = now;
    let ping_interval = (!cfg.ping_interval.is_zero()).then_some(cfg.ping_interval);
    let idle_timeout = (!cfg.idle_timeout.is_zero()).then_some(cfg.idle_timeout);
    // The payload of our outstanding ping and when its pong is due.
    let mut awaiting_pong: Option<(Bytes, Instant)> = None;
    let mut ping_seq: u64 = 0;
    let mut dropping_message = false;
    // A close the proxy wants to send, waiting for a frame boundary (or its deadline).
    let mut pending_close: Option<(ProxyClose, Instant)> = None;
    // Set once either peer sent a close frame: the other side's answer then ends the exchange.
    let mut client_sent_close = false;
    let mut upstream_sent_close = false;
    let mut expiry = sup.expires_at;

    loop {
        if let Some((close, deadline)) = pending_close {
            let clean = from_client.at_frame_boundary() && from_upstream.at_frame_boundary();
            if clean || Instant::now() >= deadline {
                close_both(session, upstream, close, clean).await;
                return close.reason;
            }
        }
        let ping_due = match (&awaiting_pong, ping_interval) {
            (None, Some(every)) if pending_close.is_none() => Some(last_client + every),
            _ => None,
        };
        let pong_due = awaiting_pong.as_ref().map(|(_, due)| *due);
        let idle_due = idle_timeout.map(|d| last_data + d);
        let close_due = pending_close.map(|(_, at)| at);

        tokio::select! {
            biased;
            read = upstream.read_body_bytes() => match read {
                Ok(Some(chunk)) => {
                    metrics.websocket.bytes_to_client.inc_by(chunk.len() as u64);
                    upstream_buf.extend_from_slice(&chunk);
                    loop {
                        match from_upstream.decode(&mut upstream_buf) {
                            Ok(Some(Item::Data { bytes, message_start, .. })) => {
                                if message_start {
                                    metrics.ws_messages_to_client.inc();
                                }
                                last_data = Instant::now();
                                if write_client(session, bytes).await.is_err() {
                                    return client_vanished(upstream).await;
                                }
                            }
                            Ok(Some(Item::Control { opcode, wire, .. })) => {
                                if opcode == OpCode::Close {
                                    upstream_sent_close = true;
                                }
                                if write_client(session, wire).await.is_err() {
                                    return client_vanished(upstream).await;
                                }
                                if opcode == OpCode::Close && client_sent_close {
                                    return CloseReason::ClientGone;
                                }
                            }
                            Ok(None) => break,
                            Err(err) => {
                                tracing::warn!(error = %err, "upstream broke the WebSocket protocol");
                                let close = ProxyClose::new(close_code::INTERNAL_ERROR, "upstream error", CloseReason::ProtocolError);
                                // The upstream stream is corrupt from here: no clean frame to it.
                                close_client_only(session, close).await;
                                return close.reason;
                            }
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    if upstream_sent_close {
                        return if client_sent_close { CloseReason::ClientGone } else { CloseReason::UpstreamGone };
                    }
                    let shutting_down = *sup.shutdown.borrow();
                    let (code, reason) = if shutting_down {
                        (close_code::GOING_AWAY, CloseReason::Shutdown)
                    } else {
                        (close_code::INTERNAL_ERROR, CloseReason::UpstreamGone)
                    };
                    if from_upstream.at_frame_boundary() {
                        close_client_only(session, ProxyClose::new(code, "upstream went away", reason)).await;
                    }
                    return reason;
                }
            },
            read = session.read_request_body() => match read {
                Ok(Some(chunk)) => {
                    last_client = Instant::now();
                    metrics.websocket.bytes_to_upstream.inc_by(chunk.len() as u64);
                    client_buf.extend_from_slice(&chunk);
                    loop {
                        match from_client.decode(&mut client_buf) {
                            Ok(Some(Item::Data { bytes, message_start, message_end, .. })) => {
                                last_data = Instant::now();
                                if message_start {
                                    dropping_message = false;
                                    if !(opts.allow_message)() {
                                        match cfg.on_rate_limit {
                                            OnRateLimit::Drop => {
                                                dropping_message = true;
                                                metrics.dropped_events.with_label_values(&["rate_limited"]).inc();
                                            }
                                            OnRateLimit::Close => {
                                                pending_close = Some((ProxyClose::new(close_code::POLICY_VIOLATION, "rate limited", CloseReason::RateLimited), Instant::now()));
                                                // The message never reaches the upstream.
                                                dropping_message = true;
                                            }
                                        }
                                    } else {
                                        metrics.ws_messages_to_upstream.inc();
                                    }
                                }
                                if !dropping_message && write_upstream(upstream, &bytes).await.is_err() {
                                    return upstream_vanished(session, &sup.shutdown).await;
                                }
                                if message_end {
                                    dropping_message = false;
                                }
                            }
                            Ok(Some(Item::Control { opcode, payload, wire })) => {
                                if opcode == OpCode::Pong {
                                    if let Some((ours, _)) = &awaiting_pong {
                                        if *ours == payload {
                                            // The answer to our own ping: the app never sees it.
                                            awaiting_pong = None;
                                            continue;
                                        }
                                    }
                                }
                                if opcode == OpCode::Close {
                                    client_sent_close = true;
                                }
                                if write_upstream(upstream, &wire).await.is_err() {
                                    return upstream_vanished(session, &sup.shutdown).await;
                                }
                                if opcode == OpCode::Close && upstream_sent_close {
                                    return CloseReason::UpstreamGone;
                                }
                            }
                            Ok(None) => break,
                            Err(err) => {
                                let close = protocol_close(&err);
                                tracing::info!(error = %err, "closing a WebSocket: client broke a rule");
                                // Bytes after the bad frame are unusable; the upstream gets a
                                // clean close only if no client frame was half-forwarded.
                                pending_close = Some((close, Instant::now()));
                                client_buf.clear();
                                break;
                            }
                        }
                    }
                }
                Ok(None) | Err(_) => return client_vanished(upstream).await,
            },
            _ = sleep_until_opt(ping_due) => {
                if ping_due.is_some_and(|due| Instant::now() >= due) && from_upstream.at_frame_boundary() {
                    ping_seq += 1;
                    let payload = Bytes::from(format!("streamguard-{ping_seq}"));
                    if write_client(session, encode_frame(OpCode::Ping, &payload, None)).await.is_err() {
                        return client_vanished(upstream).await;
                    }
                    metrics.ws_pings.inc();
                    awaiting_pong = Some((payload, Instant::now() + cfg.pong_timeout));
                } else if ping_due.is_some_and(|due| Instant::now() >= due) {
                    // Mid upstream frame: try again shortly rather than split the frame.
                    last_client += Duration::from_millis(10);
                }
            }
            _ = sleep_until_opt(pong_due) => {
                if pong_due.is_some_and(|due| Instant::now() >= due) {
                    tracing::info!("closing a WebSocket: client did not answer a ping");
                    let close = ProxyClose::new(close_code::GOING_AWAY, "no pong", CloseReason::DeadPeer);
                    pending_close = Some((close, Instant::now()));
                    awaiting_pong = None;
                }
            }
            _ = sleep_until_opt(idle_due) => {
                if idle_due.is_some_and(|due| Instant::now() >= due) && pending_close.is_none() {
                    pending_close = Some((ProxyClose::new(close_code::GOING_AWAY, "idle", CloseReason::Idle), Instant::now() + BOUNDARY_GRACE));
                }
            }
            _ = sleep_until_opt(expiry), if pending_close.is_none() => {
                expiry = None;
                pending_close = Some((ProxyClose::new(close_code::POLICY_VIOLATION, "token expired", CloseReason::Expired), Instant::now() + BOUNDARY_GRACE));
            }
            _ = &mut sup.evicted, if pending_close.is_none() => {
                pending_close = Some((ProxyClose::new(close_code::POLICY_VIOLATION, "evicted", CloseReason::Evicted), Instant::now() + BOUNDARY_GRACE));
            }
            _ = shutdown_started(&mut sup.shutdown), if pending_close.is_none() => {
                pending_close = Some((ProxyClose::new(close_code::GOING_AWAY, "server shutting down", CloseReason::Shutdown), Instant::now() + BOUNDARY_GRACE));
            }
            _ = sleep_until_opt(close_due) => {}
        }
    }
}

/// Maps a client's protocol violation to the close code RFC 6455 prescribes.
fn protocol_close(err: &FrameError) -> ProxyClose {
    let code = err.close_code();
    let reason = if code == close_code::TOO_BIG {
        CloseReason::TooBig
    } else {
        CloseReason::ProtocolError
    };
    let text = match code {
        close_code::TOO_BIG => "message too big",
        _ => "protocol error",
    };
    ProxyClose::new(code, text, reason)
}

async fn write_client(session: &mut Session, bytes: Bytes) -> pingora::Result<()> {
    session.write_response_body(Some(bytes), false).await
}

async fn write_upstream(upstream: &mut H1Client, bytes: &[u8]) -> pingora::Result<()> {
    upstream.write_body(bytes).await.map(|_| ())
}

fn masked_close(code: u16, reason: &str) -> Bytes {
    encode_frame(OpCode::Close, &close_payload(code, reason), Some(rand::random()))
}

/// Proxy-initiated close: the client gets `close.client_code`, the upstream (as its client)
/// "going away"; without a frame boundary the sockets are just closed.
async fn close_both(session: &mut Session, upstream: &mut H1Client, close: ProxyClose, clean: bool) {
    if clean {
        let _ = write_upstream(upstream, &masked_close(close_code::GOING_AWAY, "")).await;
        close_client_only(session, close).await;
    }
    upstream.shutdown().await;
}

async fn close_client_only(session: &mut Session, close: ProxyClose) {
    let frame = encode_frame(
        OpCode::Close,
        &close_payload(close.client_code, close.client_reason),
        None,
    );
    let _ = write_client(session, frame).await;
    let _ = session.write_response_body(None, true).await;
}

/// The client vanished without a close frame: the upstream hears "going away".
async fn client_vanished(upstream: &mut H1Client) -> CloseReason {
    let _ = write_upstream(upstream, &masked_close(close_code::GOING_AWAY, "client gone")).await;
    upstream.shutdown().await;
    CloseReason::ClientGone
}

/// Writing upstream failed: the client hears 1011, or 1001 while the proxy shuts down.
async fn upstream_vanished(
    session: &mut Session,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> CloseReason {
    let (code, reason) = if *shutdown.borrow() {
        (close_code::GOING_AWAY, CloseReason::Shutdown)
    } else {
        (close_code::INTERNAL_ERROR, CloseReason::UpstreamGone)
    };
    close_client_only(session, ProxyClose::new(code, "upstream went away", reason)).await;
    reason
}

