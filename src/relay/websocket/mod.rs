//! The WebSocket relay loop: forwards frames unchanged in both directions and supervises the
//! connection (pings, dead peers, idle, message size and rate, token expiry, shutdown).
//!
//! Frames are forwarded as wire bytes, still masked as the client masked them, so relaying costs
//! no copy and no re-masking. The two `FrameDecoder`s only track where frames start and end:
//! the proxy injects its own frames (pings to the client, close frames) only at a frame
//! boundary of the direction it writes into, never inside a frame being relayed. A close the
//! proxy decides on waits (at most `BOUNDARY_GRACE`) for both directions to reach a boundary,
//! forwarding no new frame meanwhile; a side still mid-frame then just sees its socket close.
//! With pings on, a write to the client may take at most `ping_interval + pong_timeout`: a
//! client that stops reading is a dead peer too, even while an upstream frame blocks the pings.
//!
//! Client frames are held to per-socket limits besides the message size: the frames one
//! message may be split into, and a rate for control frames (a ping costs the app a pong, and
//! a flood of them counts as no message at all). With permessage-deflate, compressed client
//! messages are inflated on the way (see `deflate`) so the size limit holds for what the app
//! gets; that inflater exists only on connections that negotiated compression.

pub mod deflate;
pub mod frame;

use super::client::{ClientConn, ClientError};
use super::upstream::{UpstreamConn, UpstreamError};
use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::time::Instant;

use self::deflate::{DeflateParams, InflateError, Inflater};
use self::frame::{close_payload, encode_frame, Direction, FrameDecoder, FrameError, Item, OpCode};
use super::lifecycle::DrainProbe;
use super::{Alarm, Interrupt, Supervision};
use crate::config::{OnRateLimit, WebSocketConfig};
use crate::policy::limits::{MessageCheck, Quota};
use crate::telemetry::CloseReason;

/// RFC 6455 close codes the proxy sends.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// How long a proxy-initiated close waits for a half-relayed frame to finish before it gives up
/// on a clean close frame and just closes the socket.
const BOUNDARY_GRACE: Duration = Duration::from_secs(1);

/// How soon a ping that found an upstream frame half-relayed is tried again.
const PING_RETRY: Duration = Duration::from_millis(10);

/// Per-connection settings the relay needs besides `[websocket]`.
pub struct WsOptions<'a> {
    pub cfg: &'a WebSocketConfig,
    /// What the app's 101 agreed to when it accepted permessage-deflate: RSV1 is then legal on
    /// first frames, and compressed client messages are inflated to be measured.
    pub deflate: Option<DeflateParams>,
    /// Asks the per-user message limiter whether one more client message may pass. A shared
    /// store may have to be asked: the loop then waits for it (at most its timeout), taking no
    /// other frame meanwhile, so messages keep their order.
    pub allow_message: &'a (dyn Fn() -> MessageCheck + Send + Sync),
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
    client: &mut ClientConn,
    upstream: &mut UpstreamConn,
    opts: WsOptions<'_>,
    mut sup: Supervision<'_>,
) -> CloseReason {
    let cfg = opts.cfg;
    let metrics = sup.metrics;
    let allow_rsv1 = opts.deflate.is_some();
    let mut from_client = FrameDecoder::new(
        Direction::FromClient,
        cfg.max_message_size as u64,
        allow_rsv1,
    )
    .with_max_fragments(cfg.max_message_fragments);
    let mut from_upstream = FrameDecoder::new(Direction::FromUpstream, u64::MAX, allow_rsv1);
    // Boxed: most sockets do not compress, and should not carry room for it.
    let mut inflater = opts
        .deflate
        .map(|params| Box::new(Inflater::new(params, cfg.max_message_size as u64)));
    // The client's control frames so far, as the GCRA's theoretical arrival time.
    let mut control_tat: Option<std::time::Instant> = None;
    let mut client_buf = BytesMut::new();
    let mut upstream_buf = BytesMut::new();

    let now = Instant::now();
    let mut last_client = now;
    let mut last_data = now;
    let ping_interval = (!cfg.ping_interval.is_zero()).then_some(cfg.ping_interval);
    let idle_timeout = (!cfg.idle_timeout.is_zero()).then_some(cfg.idle_timeout);
    if let Some(every) = ping_interval {
        // A client that stops reading would block a write forever, and with it every timer of
        // this loop: give a write the same time a silent client gets before it counts as dead.
        client.set_write_timeout(Some(every + cfg.pong_timeout));
    }
    // The payload of our outstanding ping and when its pong is due.
    let mut awaiting_pong: Option<(Bytes, Instant)> = None;
    let mut ping_seq: u64 = 0;
    // The client message being decoded is dropped whole (rate limit): none of it reached the
    // upstream, so the upstream's stream is at a frame boundary even mid-frame here.
    let mut dropping_message = false;
    // A close the proxy wants to send, waiting for frame boundaries (or its deadline).
    let mut pending_close: Option<(ProxyClose, Instant)> = None;
    // Cleared when the client's bytes must not be forwarded any more (a protocol violation).
    let mut client_readable = true;
    // Set when the upstream was left inside a client frame for good (a compressed message
    // refused halfway): it can take no frame of the proxy's, only the end of its socket.
    let mut upstream_cut = false;
    // Set once either peer sent a close frame: the other side's answer then ends the exchange,
    // and the peer that got that close frame must get no other frame (RFC 6455 5.5.1).
    let mut client_sent_close = false;
    let mut upstream_sent_close = false;
    let mut expiry = sup.expires_at;
    // One alarm for every deadline of this loop: message traffic only moves `last_client` and
    // `last_data` later, so frames cost no timer work.
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    let mut alarm = Alarm::new(sleep, None);
    // A second view: the loop still reads the drain state to pick close codes.
    let draining = sup.lifecycle.probe();
    let interrupts = super::interrupts(&mut sup.evicted, &mut sup.lifecycle);
    tokio::pin!(interrupts);

    loop {
        // Where each direction could take a frame of the proxy's own without splitting one.
        let client_side_clean = from_upstream.at_frame_boundary();
        let upstream_side_clean =
            !upstream_cut && (from_client.at_frame_boundary() || dropping_message);
        if let Some((close, deadline)) = pending_close {
            // A cut upstream will never reach a boundary: waiting for it would only delay.
            let upstream_ready = upstream_side_clean || upstream_cut;
            if (client_side_clean && upstream_ready) || Instant::now() >= deadline {
                let sides = Sides {
                    client: client_side_clean && !upstream_sent_close,
                    upstream: upstream_side_clean && !client_sent_close,
                };
                close_both(client, upstream, close, sides).await;
                return close.reason;
            }
        }
        let closing = pending_close.is_some();
        // While a close waits for one direction's boundary, the other, already at one, takes
        // no new frame: otherwise a busy stream might never be at a boundary in both at once.
        let read_upstream = !(closing && client_side_clean);
        let read_client = client_readable && !(closing && upstream_side_clean);
        let ping_due = match (&awaiting_pong, ping_interval) {
            (None, Some(every)) if !closing && !upstream_sent_close => Some(last_client + every),
            _ => None,
        };
        let pong_due = awaiting_pong
            .as_ref()
            .map(|(_, due)| *due)
            .filter(|_| !closing);
        let idle_due = idle_timeout.map(|d| last_data + d).filter(|_| !closing);
        let close_due = pending_close.map(|(_, at)| at);
        let expiry_due = expiry.filter(|_| !closing);
        alarm.bring_forward(
            [ping_due, pong_due, idle_due, close_due, expiry_due]
                .into_iter()
                .flatten()
                .min(),
        );

        tokio::select! {
            // Supervision first: a peer that always has bytes ready would otherwise win every
            // turn and outlive its token, an eviction, the drain or its own pong deadline.
            biased;
            why = &mut interrupts, if !closing => {
                let close = match why {
                    Interrupt::Evicted => ProxyClose::new(close_code::POLICY_VIOLATION, "evicted", CloseReason::Evicted),
                    Interrupt::Shutdown => ProxyClose::new(close_code::GOING_AWAY, "server shutting down", CloseReason::Shutdown),
                    Interrupt::Revoked => ProxyClose::new(close_code::POLICY_VIOLATION, "token revoked", CloseReason::Revoked),
                };
                pending_close = Some((close, Instant::now() + BOUNDARY_GRACE));
            }
            () = alarm.ring(), if alarm.is_armed() => {
                // Rung, so disarmed: armed again at the next turn from the deadlines as they
                // stand then.
                let now = Instant::now();
                let due = |at: Option<Instant>| at.is_some_and(|at| now >= at);
                if due(expiry_due) {
                    expiry = None;
                    pending_close = Some((ProxyClose::new(close_code::POLICY_VIOLATION, "token expired", CloseReason::Expired), now + BOUNDARY_GRACE));
                } else if due(pong_due) {
                    tracing::info!("closing a WebSocket: client did not answer a ping");
                    pending_close = Some((ProxyClose::new(close_code::GOING_AWAY, "no pong", CloseReason::DeadPeer), now + BOUNDARY_GRACE));
                    awaiting_pong = None;
                } else if due(idle_due) {
                    pending_close = Some((ProxyClose::new(close_code::GOING_AWAY, "idle", CloseReason::Idle), now + BOUNDARY_GRACE));
                } else if due(ping_due) {
                    if from_upstream.at_frame_boundary() {
                        ping_seq += 1;
                        let payload = Bytes::from(format!("streamguard-{ping_seq}"));
                        if let Err(e) = write_client(client, encode_frame(OpCode::Ping, &payload, None)).await {
                            return client_lost(upstream, &e, upstream_side_clean && !client_sent_close).await;
                        }
                        metrics.ws_pings.inc();
                        awaiting_pong = Some((payload, Instant::now() + cfg.pong_timeout));
                    } else {
                        // Mid upstream frame: try again shortly rather than split the frame.
                        last_client += PING_RETRY;
                    }
                }
            }
            read = upstream.read_body_bytes(), if read_upstream => match read {
                Ok(Some(chunk)) => {
                    metrics.websocket.bytes_to_client.inc_by(chunk.len() as u64);
                    upstream_buf.extend_from_slice(&chunk);
                    loop {
                        if pending_close.is_some() && from_upstream.at_frame_boundary() {
                            // The close goes here; what follows is never forwarded.
                            break;
                        }
                        match from_upstream.decode(&mut upstream_buf) {
                            Ok(Some(Item::Data { bytes, message_start, .. })) => {
                                if message_start {
                                    metrics.ws_messages_to_client.inc();
                                }
                                last_data = Instant::now();
                                if let Err(e) = write_client(client, bytes).await {
                                    return client_lost(upstream, &e, upstream_side_clean && !client_sent_close).await;
                                }
                            }
                            Ok(Some(Item::Control { opcode, wire, .. })) => {
                                if opcode == OpCode::Close {
                                    upstream_sent_close = true;
                                }
                                if let Err(e) = write_client(client, wire).await {
                                    return client_lost(upstream, &e, upstream_side_clean && !client_sent_close).await;
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
                                if !upstream_sent_close {
                                    close_client_only(client, close).await;
                                }
                                return close.reason;
                            }
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    if upstream_sent_close {
                        return if client_sent_close { CloseReason::ClientGone } else { CloseReason::UpstreamGone };
                    }
                    if client_sent_close {
                        // The client is closing anyway; the upstream just did not answer.
                        return CloseReason::ClientGone;
                    }
                    let shutting_down = draining.is_draining();
                    let (code, reason) = if shutting_down {
                        (close_code::GOING_AWAY, CloseReason::Shutdown)
                    } else {
                        (close_code::INTERNAL_ERROR, CloseReason::UpstreamGone)
                    };
                    if from_upstream.at_frame_boundary() {
                        close_client_only(client, ProxyClose::new(code, "upstream went away", reason)).await;
                    }
                    return reason;
                }
            },
            read = client.read(), if read_client => match read {
                Ok(Some(chunk)) => {
                    last_client = Instant::now();
                    metrics.websocket.bytes_to_upstream.inc_by(chunk.len() as u64);
                    client_buf.extend_from_slice(&chunk);
                    loop {
                        if pending_close.is_some() && (from_client.at_frame_boundary() || dropping_message) {
                            // The close goes here; what follows is never forwarded.
                            break;
                        }
                        match from_client.decode(&mut client_buf) {
                            Ok(Some(Item::Data { bytes, part, message_start, message_end, compressed, .. })) => {
                                last_data = Instant::now();
                                if message_start {
                                    dropping_message = false;
                                    let allowed = match (opts.allow_message)() {
                                        MessageCheck::Decided(allowed) => allowed,
                                        MessageCheck::Pending(asking) => asking.await,
                                    };
                                    if !allowed {
                                        dropping_message = true;
                                        match cfg.on_rate_limit {
                                            OnRateLimit::Drop => {
                                                metrics.dropped_events.with_label_values(&["rate_limited"]).inc();
                                            }
                                            OnRateLimit::Close => {
                                                // The message never reaches the upstream.
                                                pending_close = Some((ProxyClose::new(close_code::POLICY_VIOLATION, "rate limited", CloseReason::RateLimited), Instant::now() + BOUNDARY_GRACE));
                                            }
                                        }
                                    } else {
                                        metrics.ws_messages_to_upstream.inc();
                                    }
                                }
                                // Measured before it goes out, so no byte of a message past
                                // the limit reaches the app after the proxy could know.
                                let refused = match inflater.as_mut().filter(|_| compressed && !dropping_message) {
                                    Some(inflater) => inflater.inspect(part, &bytes, message_start, message_end).err(),
                                    None => None,
                                };
                                if let Some(err) = refused {
                                    tracing::info!(error = %err, "closing a WebSocket: client sent a compressed message the proxy refuses");
                                    pending_close = Some((inflate_close(&err), Instant::now() + BOUNDARY_GRACE));
                                    // The decoder has moved past bytes the upstream never got:
                                    // a close frame now would land inside a frame.
                                    upstream_cut = true;
                                    client_readable = false;
                                    client_buf.clear();
                                    break;
                                }
                                if !dropping_message {
                                    if let Err(e) = write_upstream(upstream, &bytes).await {
                                        tracing::debug!(error = %e, "upstream write failed");
                                        return upstream_vanished(client, &draining, from_upstream.at_frame_boundary() && !upstream_sent_close).await;
                                    }
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
                                let quota = Quota::from_spec(cfg.max_control_frames);
                                match quota.check(control_tat, Instant::now().into_std()) {
                                    Ok(tat) => control_tat = Some(tat),
                                    Err(_) => {
                                        tracing::info!("closing a WebSocket: client sent control frames past max_control_frames");
                                        // Not forwarded; the close goes out at this boundary.
                                        pending_close = Some((ProxyClose::new(close_code::POLICY_VIOLATION, "too many control frames", CloseReason::ControlRate), Instant::now() + BOUNDARY_GRACE));
                                        continue;
                                    }
                                }
                                if opcode == OpCode::Close {
                                    client_sent_close = true;
                                }
                                if let Err(e) = write_upstream(upstream, &wire).await {
                                    tracing::debug!(error = %e, "upstream write failed");
                                    return upstream_vanished(client, &draining, from_upstream.at_frame_boundary() && !upstream_sent_close).await;
                                }
                                if opcode == OpCode::Close && upstream_sent_close {
                                    return CloseReason::UpstreamGone;
                                }
                            }
                            Ok(None) => break,
                            Err(err) => {
                                let close = protocol_close(&err);
                                tracing::info!(error = %err, "closing a WebSocket: client broke a rule");
                                // Bytes from the bad frame on are unusable: nothing more is read
                                // from the client. The upstream gets a clean close only if no
                                // client frame was half-forwarded.
                                pending_close = Some((close, Instant::now() + BOUNDARY_GRACE));
                                client_readable = false;
                                client_buf.clear();
                                break;
                            }
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    return client_vanished(upstream, upstream_side_clean && !client_sent_close).await;
                }
            },
        }
    }
}

/// Maps a client's protocol violation to the close code RFC 6455 prescribes.
fn protocol_close(err: &FrameError) -> ProxyClose {
    match err {
        FrameError::TooManyFragments { .. } => ProxyClose::new(
            err.close_code(),
            "too many fragments",
            CloseReason::TooFragmented,
        ),
        _ => close_for_code(err.close_code()),
    }
}

/// Maps a refused compressed message to its close: 1009 too big, 1007 bad data.
fn inflate_close(err: &InflateError) -> ProxyClose {
    close_for_code(err.close_code())
}

/// The client's close reason and the metric reason for a close code of a client's fault.
fn close_for_code(code: u16) -> ProxyClose {
    match code {
        close_code::TOO_BIG => ProxyClose::new(code, "message too big", CloseReason::TooBig),
        close_code::INVALID_PAYLOAD => {
            ProxyClose::new(code, "invalid payload", CloseReason::ProtocolError)
        }
        _ => ProxyClose::new(code, "protocol error", CloseReason::ProtocolError),
    }
}

async fn write_client(client: &mut ClientConn, bytes: Bytes) -> Result<(), ClientError> {
    client.write(&bytes).await
}

async fn write_upstream(upstream: &mut UpstreamConn, bytes: &[u8]) -> Result<(), UpstreamError> {
    upstream.write_raw(bytes).await
}

fn masked_close(code: u16, reason: &str) -> Bytes {
    encode_frame(
        OpCode::Close,
        &close_payload(code, reason),
        Some(rand::random()),
    )
}

/// Which peers may get a close frame of the proxy's own: only one whose stream is at a frame
/// boundary (a frame spliced into another corrupts it) and that has not had a close frame yet.
#[derive(Clone, Copy)]
struct Sides {
    client: bool,
    upstream: bool,
}

/// Proxy-initiated close: the client gets `close.client_code`, the upstream (as its client)
/// "going away"; a side that cannot take a frame cleanly just sees its socket close.
async fn close_both(
    client: &mut ClientConn,
    upstream: &mut UpstreamConn,
    close: ProxyClose,
    sides: Sides,
) {
    if sides.upstream {
        let _ = write_upstream(upstream, &masked_close(close_code::GOING_AWAY, "")).await;
    }
    if sides.client {
        close_client_only(client, close).await;
    }
    upstream.shutdown().await;
}

async fn close_client_only(client: &mut ClientConn, close: ProxyClose) {
    let frame = encode_frame(
        OpCode::Close,
        &close_payload(close.client_code, close.client_reason),
        None,
    );
    let _ = write_client(client, frame).await;
    client.finish().await;
}

/// Writing to the client failed: it is gone, or it stopped reading for as long as a silent
/// client is given (the write timed out), which makes it a dead peer.
async fn client_lost(
    upstream: &mut UpstreamConn,
    err: &ClientError,
    tell_upstream: bool,
) -> CloseReason {
    client_vanished(upstream, tell_upstream).await;
    if *err == ClientError::TimedOut {
        tracing::info!("closing a WebSocket: client stopped reading");
        CloseReason::DeadPeer
    } else {
        CloseReason::ClientGone
    }
}

/// The client vanished without a close frame: the upstream hears "going away" when that can
/// be said without splitting a half-forwarded client frame.
async fn client_vanished(upstream: &mut UpstreamConn, tell_upstream: bool) -> CloseReason {
    if tell_upstream {
        let _ = write_upstream(
            upstream,
            &masked_close(close_code::GOING_AWAY, "client gone"),
        )
        .await;
    }
    upstream.shutdown().await;
    CloseReason::ClientGone
}

/// Writing upstream failed: the client hears 1011, or 1001 while the proxy shuts down, when
/// that can be said without splitting a half-relayed upstream frame.
async fn upstream_vanished(
    client: &mut ClientConn,
    draining: &DrainProbe,
    tell_client: bool,
) -> CloseReason {
    let (code, reason) = if draining.is_draining() {
        (close_code::GOING_AWAY, CloseReason::Shutdown)
    } else {
        (close_code::INTERNAL_ERROR, CloseReason::UpstreamGone)
    };
    if tell_client {
        close_client_only(client, ProxyClose::new(code, "upstream went away", reason)).await;
    }
    reason
}
