//! The SSE relay loop: forwards upstream events whole, and supervises the stream.
//!
//! Units (events, comment lines) are forwarded only once complete, so the client never holds a
//! half event: that is what makes it safe to inject heartbeats, the expiry event or the eviction
//! event at any moment, and to discard a half-received event when the upstream stalls. Memory per
//! stream is bounded by `max_event_size` (the parser's pending buffer) plus one read chunk, and,
//! while the client is behind, by `client_buffer` (see [`slow`]).
//!
//! The loop never waits for the client: a write leaves what the socket did not take queued, and
//! the socket's writability is one more branch of the loop, beside the upstream read and the
//! timer. So the app is read at its own pace whatever one client does, and every deadline
//! (including `write_timeout`, for a client that reads nothing at all) keeps running.
//!
//! Timers are lazy: the loop records when it last wrote to the client and last heard from the
//! upstream, and a timer that fires early is simply re-armed for the real due time. That keeps
//! per-event work to two `Instant` stores instead of re-registering timers on every event.

pub mod parser;
pub mod slow;

use super::client::{ClientError, ClientEvent, Sent};
use super::side::ClientSide;
use super::upstream::{UpstreamConn, UpstreamError};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use rand::Rng;
use std::time::Duration;
use tokio::time::Instant;

use self::parser::{Segment, SseParser};
use self::slow::{Admit, Backlog, SlowBudget};
use super::{Alarm, Interrupt, Supervision};
use crate::config::{OnInvalid, OnOversize, SseConfig};
use crate::telemetry::CloseReason;

/// The event sent just before a stream closes because the client's token expired.
pub const EXPIRED_EVENT: &[u8] =
    b"event: streamguard.expired\ndata: {\"reason\":\"token_expired\"}\n\n";
/// The event sent just before a stream closes because a reload stopped trusting the key its token
/// was verified with: the same event as an expiry (the client needs a fresh token either way).
pub const REVOKED_EVENT: &[u8] =
    b"event: streamguard.expired\ndata: {\"reason\":\"key_revoked\"}\n\n";
/// The event sent to a stream closed to admit a newer stream of the same user.
pub const EVICTED_EVENT: &[u8] = b"event: streamguard.evicted\ndata: {\"reason\":\"evicted\"}\n\n";

/// How long a stream that must end waits for the upstream to finish a half-received event.
const FINISH_EVENT_GRACE: Duration = Duration::from_secs(1);

/// The reconnection delay a draining stream suggests when `sse.retry` is not set, randomized by
/// `DRAIN_RETRY_JITTER`: clients of a draining process come back spread out, not in a herd.
const DRAIN_RETRY: Duration = Duration::from_secs(3);
const DRAIN_RETRY_JITTER: f64 = 0.5;

/// The `retry:` field that starts every stream when `sse.retry` is set: randomized per
/// connection within ±`retry_jitter` so a mass reconnect (deploy, failover) is spread out.
pub fn retry_hint(cfg: &SseConfig) -> Option<Bytes> {
    Some(jittered_retry(cfg.retry?, cfg.retry_jitter))
}

/// The `retry:` field a draining stream ends with: `sse.retry` as configured, or a jittered
/// default, so every client of a drain is told when to come back.
pub fn drain_retry_hint(cfg: &SseConfig) -> Bytes {
    match cfg.retry {
        Some(retry) => jittered_retry(retry, cfg.retry_jitter),
        None => jittered_retry(DRAIN_RETRY, DRAIN_RETRY_JITTER),
    }
}

fn jittered_retry(retry: Duration, jitter: f64) -> Bytes {
    let base = retry.as_millis() as f64;
    let jitter = jitter.clamp(0.0, 1.0);
    let factor = if jitter > 0.0 {
        rand::rng().random_range((1.0 - jitter)..=(1.0 + jitter))
    } else {
        1.0
    };
    let ms = (base * factor).round().max(0.0) as u64;
    // A blank line after `retry:` dispatches nothing (no data), so this is not an event.
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// The query parameter EventSource polyfills use to resume where the native `Last-Event-ID`
/// header cannot be set (they reconnect with `?lastEventId=<id>` appended to the URL).
pub const LAST_EVENT_ID_PARAM: &str = "lastEventId";

/// The `lastEventId` query parameter of a request target: its decoded value and the target
/// without it, so the proxy can forward it as a `Last-Event-ID` header the app understands.
///
/// `None` when there is no such parameter, or when its value is empty or could not be a header
/// value (not UTF-8 once percent-decoded, or holding CR, LF or NUL, which an SSE `id` never
/// holds): the caller then forwards the target unchanged. Otherwise every `lastEventId`
/// parameter is removed (names are matched percent-decoded, the other parameters keep their
/// exact bytes and order, the `?` goes when nothing is left) and the first one's value is
/// returned. The value is decoded as a browser's `URLSearchParams` would: `%XX` escapes and `+`
/// for a space.
///
/// The caller should use the stripped target either way, and set `Last-Event-ID` from the value
/// only when the request has no such header already (a real header is the browser's own).
pub fn last_event_id_from_query(path_and_query: &str) -> Option<(String, String)> {
    let (_, query) = path_and_query.split_once('?')?;
    let names = [LAST_EVENT_ID_PARAM.to_owned()];
    let raw = query.split('&').find_map(|piece| {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(name).collect();
        (decoded == LAST_EVENT_ID_PARAM.as_bytes()).then_some(value)
    })?;
    let spaced = raw.replace('+', " ");
    let value = percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()?;
    if value.is_empty() || value.contains(['\r', '\n', '\0']) {
        return None;
    }
    let target = crate::policy::auth::strip_query_params(path_and_query, &names);
    Some((value.into_owned(), target))
}

/// When a stream whose last write was at `last_write` gets its next heartbeat: `every` later,
/// rounded up to a grid of `every / 16` shared by all streams. Streams then come due together:
/// the process wakes once per grid step for all of them, instead of once per stream (9,500
/// idle streams at 15 s are 630 wake-ups a second otherwise), at the price of a heartbeat up to
/// 1/16 of the period late.
fn heartbeat_due(last_write: Instant, every: Duration) -> Instant {
    let grid = (every / 16).max(Duration::from_millis(1));
    super::align_up(last_write + every, grid)
}

/// The deadlines a stream is supervised by; `None` is off.
struct Deadlines {
    heartbeat: Option<Duration>,
    stale_after: Option<Duration>,
    expires_at: Option<Instant>,
}

impl Deadlines {
    /// When the loop's one timer must next fire: the earliest of the heartbeat (not while the
    /// client is behind: bytes are waiting for it already), the stale check, the token's expiry
    /// (until the stream is ending), the end of the grace for a last event, and the write
    /// timeout of a client that is behind.
    fn earliest<C: ClientSide>(
        &self,
        pump: &Pump<'_, '_, C>,
        ending: Option<(Ending, Instant)>,
    ) -> Option<Instant> {
        [
            self.heartbeat
                .filter(|_| !pump.out.is_behind())
                .map(|every| heartbeat_due(pump.out.last_write, every)),
            self.stale_after.map(|after| pump.last_upstream + after),
            self.expires_at.filter(|_| ending.is_none()),
            ending.map(|(_, grace_end)| grace_end),
            pump.out.stall_deadline(pump.cfg.write_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Why the loop is winding the stream down, and what the client is told.
#[derive(Clone, Copy)]
enum Ending {
    Expired,
    Evicted,
    Shutdown,
    Revoked,
}

impl From<Interrupt> for Ending {
    fn from(why: Interrupt) -> Self {
        match why {
            Interrupt::Evicted => Ending::Evicted,
            Interrupt::Shutdown => Ending::Shutdown,
            Interrupt::Revoked => Ending::Revoked,
        }
    }
}

impl Ending {
    fn reason(self) -> CloseReason {
        match self {
            Ending::Expired => CloseReason::Expired,
            Ending::Evicted => CloseReason::Evicted,
            Ending::Shutdown => CloseReason::Shutdown,
            Ending::Revoked => CloseReason::Revoked,
        }
    }
}

/// Relays an SSE body whose response head (and [`retry_hint`]) is queued on `client`, not yet
/// written: it goes out with the first events if the upstream already sent some. A client that
/// falls behind gets a buffer from `budget` (the process-wide `slow_buffer_total`). Returns why
/// the stream ended; the caller closes the upstream.
pub async fn relay<C: ClientSide>(
    client: &mut C,
    upstream: &mut UpstreamConn,
    cfg: &SseConfig,
    budget: &SlowBudget,
    mut sup: Supervision<'_>,
) -> CloseReason {
    let metrics = sup.metrics;
    let mut pump = Pump {
        out: Writer {
            client,
            metrics,
            budget,
            last_write: Instant::now(),
            backlog: None,
        },
        upstream,
        parser: SseParser::new(cfg.max_event_size),
        segments: Vec::new(),
        cfg,
        last_upstream: Instant::now(),
    };
    let deadlines = Deadlines {
        heartbeat: (!cfg.heartbeat.is_zero()).then_some(cfg.heartbeat),
        stale_after: (!cfg.stale_after.is_zero()).then_some(cfg.stale_after),
        expires_at: sup.expires_at,
    };
    let mut ending: Option<(Ending, Instant)> = None;
    // A short stream (one answer, then the end) is often complete already: it then ends here
    // in one write, before any timer is armed.
    if let Err(reason) = pump.relay_ready(None).await {
        return reason;
    }
    // One alarm serves every deadline of the stream (heartbeat, stale upstream, token expiry,
    // the grace for a last event): armed for the earliest, and re-armed when it rings or when
    // the stream starts to end. A write or an upstream read just stores an `Instant`.
    let sleep = tokio::time::sleep_until(Instant::now());
    tokio::pin!(sleep);
    let mut alarm = Alarm::new(sleep, deadlines.earliest(&pump, ending));
    let interrupts = super::interrupts(&mut sup.evicted, &mut sup.lifecycle);
    tokio::pin!(interrupts);

    loop {
        // Falling behind starts the write timeout; catching up brings the heartbeat back.
        let was_behind = pump.out.is_behind();
        let mut rearm = false;
        tokio::select! {
            // Supervision first: an upstream that always has bytes ready (it outpaces the
            // client) would otherwise win every turn and the stream would outlive its token, an
            // eviction or the drain. Each check is a poll of an already-registered future (the
            // eviction and drain signals behind a gate, so that costs a load of its flag).
            biased;
            () = alarm.ring(), if alarm.is_armed() => {
                rearm = true;
                let now = Instant::now();
                if pump.out.stall_deadline(cfg.write_timeout).is_some_and(|at| now >= at) {
                    // It took nothing for `write_timeout`: no last words can reach it.
                    tracing::debug!("dropping an SSE client that stopped reading");
                    return CloseReason::SlowClient;
                }
                if ending.is_none() && deadlines.expires_at.is_some_and(|at| now >= at) {
                    ending = Some((Ending::Expired, now + FINISH_EVENT_GRACE));
                }
                if ending.is_some_and(|(_, grace_end)| now >= grace_end) {
                    // The upstream stayed mid-event past the grace period: end without that event.
                    pump.parser.discard_pending();
                }
                let quiet = |pump: &Pump<'_, '_, C>| {
                    deadlines.stale_after.is_some_and(|after| now >= pump.last_upstream + after)
                };
                if quiet(&pump) {
                    // The alarm is polled before the upstream: bytes that arrived in time but
                    // are not read yet (both were ready this turn) still count.
                    if let Err(reason) = pump.relay_ready(None).await {
                        return reason;
                    }
                    if quiet(&pump) {
                        pump.parser.discard_pending();
                        pump.finish().await;
                        return CloseReason::Stale;
                    }
                }
                if let Some(every) = deadlines.heartbeat.filter(|_| !pump.out.is_behind()) {
                    // Units are forwarded whole, so the client is always at an event boundary here.
                    if now >= pump.out.last_write + every {
                        // Built when due (every 15 s or so) rather than kept by every stream.
                        let beat = format!(": {}\n\n", cfg.heartbeat_comment);
                        pump.out.queue(beat.as_bytes());
                        if let Err(reason) = pump.out.send().await {
                            return reason;
                        }
                        metrics.heartbeats.inc();
                    }
                }
            }
            why = &mut interrupts, if ending.is_none() => {
                rearm = true;
                ending = Some((why.into(), Instant::now() + FINISH_EVENT_GRACE));
            }
            read = pump.upstream.read_body_bytes() => {
                if let Err(reason) = pump.relay_ready(Some(read)).await {
                    return reason;
                }
            }
            event = pump.out.client.next_event(pump.out.is_behind()) => match event {
                // A client sends nothing after its request: anything it does send is ignored,
                // and its EOF or a reset ends the stream.
                ClientEvent::Read(Ok(Some(_))) => {}
                ClientEvent::Read(_) => return CloseReason::ClientGone,
                // A client that is behind took more.
                ClientEvent::Sent(sent) => {
                    if let Err(reason) = pump.out.account(sent).await {
                        return reason;
                    }
                }
            }
        }
        if rearm || was_behind != pump.out.is_behind() {
            alarm.set(deadlines.earliest(&pump, ending));
        }
        if let Some((why, _)) = ending {
            if pump.parser.at_boundary() {
                let last = match why {
                    Ending::Expired => Some(Bytes::from_static(EXPIRED_EVENT)),
                    Ending::Evicted => Some(Bytes::from_static(EVICTED_EVENT)),
                    Ending::Shutdown => Some(drain_retry_hint(cfg)),
                    Ending::Revoked => Some(Bytes::from_static(REVOKED_EVENT)),
                };
                // Whatever a client that is behind has queued is whole units: the last words
                // land at a boundary, after the notice of what it missed.
                pump.out.queue_notice();
                if let Some(last) = last {
                    pump.out.queue(&last);
                }
                pump.finish().await;
                return why.reason();
            }
        }
    }
}

/// Queues the complete units of one upstream chunk, applying the size and validity rules.
///
/// When a rule closes the stream, the whole units that came before the offending one are still
/// written, and nothing after it: what the client receives must not depend on how the upstream's
/// bytes happened to be split into reads.
fn forward<C: ClientSide>(
    out: &mut Writer<'_, C>,
    cfg: &SseConfig,
    segments: &mut Vec<Segment>,
) -> Result<(), CloseReason> {
    let metrics = out.metrics;
    let mut pass: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    // Bytes of this chunk's units waiting to be queued, for the bound of a client that is behind.
    let mut batched = 0;
    let mut close: Option<CloseReason> = None;
    for segment in segments.drain(..) {
        match segment {
            Segment::Unit { bytes, info } => {
                if !info.valid_utf8 || info.has_nul {
                    match cfg.on_invalid {
                        OnInvalid::Pass => {}
                        OnInvalid::Drop => {
                            metrics.dropped_events.with_label_values(&["invalid"]).inc();
                            tracing::warn!(
                                bytes = bytes.len(),
                                "dropped an SSE event with invalid UTF-8 or NUL bytes"
                            );
                            continue;
                        }
                        OnInvalid::Close => {
                            tracing::warn!(
                                "closing an SSE stream: invalid UTF-8 or NUL bytes in an event"
                            );
                            close = Some(CloseReason::Invalid);
                            break;
                        }
                    }
                }
                if let Some(backlog) = &mut out.backlog {
                    match backlog.admit(out.client.queued() + batched, bytes.len(), &info, cfg) {
                        Admit::Queue => {}
                        Admit::Skip => continue,
                        Admit::Close => {
                            tracing::debug!(
                                queued = out.client.queued() + batched,
                                "closing an SSE stream: its client is too far behind"
                            );
                            close = Some(CloseReason::SlowClient);
                            break;
                        }
                    }
                }
                if info.is_event {
                    metrics.sse_events.inc();
                }
                batched += bytes.len();
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
                    metrics
                        .dropped_events
                        .with_label_values(&["oversize"])
                        .inc();
                    tracing::warn!(
                        size,
                        limit = cfg.max_event_size,
                        "dropped an oversize SSE event"
                    );
                }
                OnOversize::Close => {
                    tracing::warn!(
                        size,
                        limit = cfg.max_event_size,
                        "closing an SSE stream: oversize event"
                    );
                    close = Some(CloseReason::Oversize);
                    break;
                }
            },
        }
    }
    // Segments after a closing one are dropped with the drain.
    let data = match (pass, joined) {
        (Some(bytes), _) => Some(bytes),
        (None, Some(buf)) => Some(buf.freeze()),
        (None, None) => None,
    };
    if let Some(data) = data {
        out.queue(&data);
    }
    close.map_or(Ok(()), Err)
}

/// How many upstream reads one wake-up relays at most before the loop looks at its
/// supervision again (an upstream that always has bytes ready must not starve it).
const MAX_READS_PER_WRITE: usize = 16;
/// How much output one wake-up queues at most before writing it.
const MAX_BYTES_PER_WRITE: usize = 64 * 1024;

/// The data path of one stream: what moves events from the upstream to the client, in as few
/// writes as it can.
struct Pump<'a, 'w, C> {
    out: Writer<'w, C>,
    upstream: &'a mut UpstreamConn,
    parser: SseParser,
    segments: Vec<Segment>,
    cfg: &'a SseConfig,
    /// When the upstream last sent anything (for `stale_after`).
    last_upstream: Instant,
}

impl<C: ClientSide> Pump<'_, '_, C> {
    /// Queues the result of `first` (a read the loop already made) and of every read that
    /// completes without waiting, then writes it all at once, as far as the client takes it.
    /// `Err` carries why the stream ended (the client was given a clean end where it could be).
    async fn relay_ready(
        &mut self,
        first: Option<Result<Option<Bytes>, UpstreamError>>,
    ) -> Result<(), CloseReason> {
        let mut next = first;
        // A client that is behind has bytes queued already: the limit is on this wake-up's.
        let start = self.out.client.queued();
        for _ in 0..MAX_READS_PER_WRITE {
            let read = match next.take() {
                Some(read) => read,
                None if self.out.client.queued().saturating_sub(start) >= MAX_BYTES_PER_WRITE => {
                    break
                }
                // Dropping a read that is not ready loses nothing (`UpstreamConn` reads are
                // cancel-safe).
                None => match self.upstream.read_body_bytes().now_or_never() {
                    Some(read) => read,
                    None => break,
                },
            };
            let ended = match read {
                Ok(Some(chunk)) => {
                    self.last_upstream = Instant::now();
                    self.parser.feed(chunk, &mut self.segments);
                    forward(&mut self.out, self.cfg, &mut self.segments).err()
                }
                // The upstream ended its response: a half event at the end is not forwarded.
                Ok(None) => Some(CloseReason::UpstreamEnd),
                Err(_) => Some(CloseReason::UpstreamGone),
            };
            if let Some(reason) = ended {
                if reason == CloseReason::SlowClient {
                    // `on_slow_client = "close"`: the client reconnects with `Last-Event-ID`,
                    // after the whole events it has queued.
                    if let Some(hint) = retry_hint(self.cfg) {
                        self.out.queue(&hint);
                    }
                }
                self.finish().await;
                return Err(reason);
            }
        }
        self.out.send().await
    }

    /// Ends the body cleanly after what is queued, so the browser sees a normal end and
    /// reconnects. A client that is behind gets `write_timeout` to take it, and less if it
    /// stalls for that long from its last progress; meanwhile the upstream is still read, and
    /// what it sends dropped, so a stream that is ending never holds the app back either.
    async fn finish(&mut self) {
        // Nothing may follow the end: a client that missed events hears about it first.
        self.out.queue_notice();
        self.out.client.queue_end();
        // The stream ends either way: a client that is gone changes nothing.
        if self.out.send().await.is_ok() && self.out.is_behind() {
            // Rare, so its timer is boxed rather than carried by every stream.
            Box::pin(self.finish_behind()).await;
        }
    }

    async fn finish_behind(&mut self) {
        let Some(timeout) = Some(self.cfg.write_timeout).filter(|t| !t.is_zero()) else {
            // Without a write timeout nothing would bound the wait: the stream ends now, and
            // the client sees its connection close (and reconnects).
            return;
        };
        // A client that keeps taking a little must not keep an ended stream, and its upstream
        // connection, open for as long as it takes it to read a whole buffer: the whole wait
        // is bounded too.
        let cap = Instant::now() + timeout;
        let deadline =
            |out: &Writer<'_, C>| out.stall_deadline(timeout).map_or(cap, |at| at.min(cap));
        let stall = tokio::time::sleep_until(deadline(&self.out));
        tokio::pin!(stall);
        let mut reading = true;
        loop {
            tokio::select! {
                biased;
                () = &mut stall => return,
                event = self.out.client.next_event(true) => match event {
                    ClientEvent::Sent(sent) => {
                        if self.out.account(sent).await.is_err() || !self.out.is_behind() {
                            return;
                        }
                        stall.as_mut().reset(deadline(&self.out));
                    }
                    ClientEvent::Read(Ok(Some(_))) => {}
                    ClientEvent::Read(_) => return,
                },
                read = self.upstream.read_body_bytes(), if reading => {
                    reading = matches!(read, Ok(Some(_)));
                }
            }
        }
    }
}

/// The client side: writes without waiting, keeps what the client has not taken yet (within
/// bounds, see [`slow`]), and remembers when it last wrote (for heartbeats).
struct Writer<'a, C> {
    client: &'a mut C,
    metrics: &'a crate::telemetry::Metrics,
    budget: &'a SlowBudget,
    last_write: Instant,
    /// `Some` only while the client is behind.
    backlog: Option<Box<Backlog<'a>>>,
}

impl<'a, C: ClientSide> Writer<'a, C> {
    /// Queues bytes to go out with the next send.
    fn queue(&mut self, data: &[u8]) {
        self.metrics.sse.bytes_to_client.inc_by(data.len() as u64);
        self.client.queue(data);
    }

    /// Whether the client has bytes waiting that its socket did not take yet.
    fn is_behind(&self) -> bool {
        self.backlog.is_some()
    }

    /// When a client that is behind is dropped unless it takes something (`write_timeout`,
    /// zero is off).
    fn stall_deadline(&self, timeout: Duration) -> Option<Instant> {
        let backlog = self.backlog.as_ref()?;
        (!timeout.is_zero()).then(|| backlog.progress_at + timeout)
    }

    /// Queues the notice of skipped events for a client that missed some.
    fn queue_notice(&mut self) {
        if let Some(notice) = self.backlog.as_mut().and_then(|b| b.take_notice()) {
            self.queue(&notice);
        }
    }

    /// Writes what is queued, as far as the socket takes it now.
    async fn send(&mut self) -> Result<(), CloseReason> {
        if self.client.queued() == 0 && self.backlog.is_none() {
            return Ok(());
        }
        let sent = self.client.send().await;
        self.account(sent).await
    }

    /// Takes note of how far a send got: a client that took everything has caught up (and
    /// hears about what it missed), one that did not is behind, and its queue is bounded.
    async fn account(&mut self, sent: Result<Sent, ClientError>) -> Result<(), CloseReason> {
        let now = Instant::now();
        match sent.map_err(|_| CloseReason::ClientGone)? {
            Sent::All => {
                self.last_write = now;
                if let Some(mut backlog) = self.backlog.take() {
                    if let Some(notice) = backlog.take_notice() {
                        // Caught up: the notice goes before anything else.
                        drop(backlog);
                        self.queue(&notice);
                        let sent = self.client.send().await;
                        return Box::pin(self.account(sent)).await;
                    }
                }
            }
            Sent::Some => {
                self.last_write = now;
                self.behind(now).progress_at = now;
            }
            Sent::Nothing => {
                self.behind(now);
            }
        }
        if let Some(backlog) = &mut self.backlog {
            backlog.settle(self.client.queued());
        }
        Ok(())
    }

    /// The backlog of a client that is behind, made when it falls behind.
    fn behind(&mut self, now: Instant) -> &mut Backlog<'a> {
        let budget = self.budget;
        self.backlog
            .get_or_insert_with(|| Box::new(Backlog::new(budget, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lift(target: &str) -> Option<(String, String)> {
        last_event_id_from_query(target)
    }

    fn some(value: &str, target: &str) -> Option<(String, String)> {
        Some((value.to_owned(), target.to_owned()))
    }

    #[test]
    fn lifts_the_parameter_and_keeps_the_rest_of_the_query_byte_for_byte() {
        assert_eq!(lift("/sse?lastEventId=42"), some("42", "/sse"));
        assert_eq!(
            lift("/sse?a=1&lastEventId=42&b=%2F"),
            some("42", "/sse?a=1&b=%2F")
        );
        assert_eq!(
            lift("/sse?lastEventId=42&events=3"),
            some("42", "/sse?events=3")
        );
        assert_eq!(lift("/a/b?x&lastEventId=7&&y="), some("7", "/a/b?x&&y="));
    }

    #[test]
    fn decodes_the_value_as_urlsearchparams_does() {
        assert_eq!(lift("/sse?lastEventId=a%20b%2Bc"), some("a b+c", "/sse"));
        assert_eq!(lift("/sse?lastEventId=a+b"), some("a b", "/sse"));
        assert_eq!(lift("/sse?lastEventId=%C3%A9t%C3%A9"), some("été", "/sse"));
        // A percent-encoded name is the same parameter, so it cannot reach the app twice.
        assert_eq!(lift("/sse?%6CastEventId=9"), some("9", "/sse"));
    }

    #[test]
    fn the_first_value_wins_and_every_copy_is_removed() {
        assert_eq!(
            lift("/sse?lastEventId=1&x=2&lastEventId=3"),
            some("1", "/sse?x=2")
        );
    }

    #[test]
    fn leaves_other_targets_alone() {
        for target in [
            "/sse",
            "/sse?",
            "/sse?events=3",
            "/sse?lasteventid=4",
            "/sse?LastEventId=4",
            "/sse?lastEventIdx=4",
            "/sse?xlastEventId=4",
            // No usable value: forwarded untouched rather than guessed at.
            "/sse?lastEventId=",
            "/sse?lastEventId",
            "/sse?lastEventId=a%0Ab",
            "/sse?lastEventId=a%0Db",
            "/sse?lastEventId=a%00b",
            "/sse?lastEventId=%FF",
        ] {
            assert_eq!(lift(target), None, "{target}");
        }
    }

    #[test]
    fn heartbeats_come_due_on_a_shared_grid_at_most_a_sixteenth_late() {
        let every = Duration::from_secs(16);
        let start = Instant::now();
        let mut dues = Vec::new();
        for ms in (0..3000).step_by(7) {
            let last = start + Duration::from_millis(ms);
            let due = heartbeat_due(last, every);
            assert!(due >= last + every, "{ms}: early");
            assert!(
                due <= last + every + Duration::from_secs(1),
                "{ms}: too late"
            );
            dues.push(due);
        }
        dues.dedup();
        // Three seconds of last writes share four grid steps.
        assert!(dues.len() <= 4, "{} distinct due times", dues.len());
        let tiny = heartbeat_due(start, Duration::from_millis(8));
        assert!(tiny >= start + Duration::from_millis(8));
        assert!(tiny <= start + Duration::from_millis(9));
    }

    #[test]
    fn retry_hint_is_within_the_jitter_band() {
        let mut cfg = SseConfig {
            retry: Some(Duration::from_secs(3)),
            retry_jitter: 0.5,
            ..SseConfig::default()
        };
        for _ in 0..200 {
            let hint = retry_hint(&cfg).expect("retry is set");
            let text = std::str::from_utf8(&hint).expect("ascii");
            let ms: u64 = text
                .strip_prefix("retry: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{text:?}"));
            assert!((1500..=4500).contains(&ms), "{ms}");
        }
        cfg.retry = None;
        assert!(retry_hint(&cfg).is_none());
    }
}
