//! Clients that fall behind: a bounded buffer per stream and one budget for the process.
//!
//! Back-pressure is the wrong answer for a broadcast: many SSE apps write every event to every
//! connection in one loop, so a relay that stops reading the app while one client (a phone in a
//! tunnel) does not read stalls the events of everybody. So the SSE relay never waits for a
//! client: what the client's socket does not take stays queued, and the relay keeps reading the
//! app. That queue is bounded twice, by `sse.client_buffer` per stream and by
//! `sse.slow_buffer_total` for all streams together, so ten thousand stalled phones cannot
//! exhaust memory; when either is full, `sse.on_slow_client` closes the stream or skips whole
//! events (see `Backlog`).
//!
//! Nothing here exists while a client keeps up: a stream gets its `Backlog` (boxed) the moment
//! a write leaves bytes behind, and drops it when the client has caught up. The budget is one
//! atomic counter, touched only by streams that are behind; the event path of a client that
//! keeps up never sees it.

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::{IntCounter, IntGauge};
use tokio::time::Instant;

use super::parser::UnitInfo;
use crate::telemetry::Metrics;

/// The process-wide allowance for bytes queued for clients that are behind
/// (`sse.slow_buffer_total`), shared by every SSE stream.
pub struct SlowBudget {
    limit: usize,
    used: AtomicUsize,
    /// `streamguard_slow_buffer_bytes`: `used`, for the scrape.
    bytes: IntGauge,
    /// `streamguard_slow_clients`: streams holding a [`Backlog`].
    clients: IntGauge,
    /// `streamguard_dropped_events_total{reason="slow_client"}`.
    skipped: IntCounter,
}

impl SlowBudget {
    pub fn new(limit: usize, metrics: &Metrics) -> Self {
        SlowBudget {
            limit,
            used: AtomicUsize::new(0),
            bytes: metrics.slow_buffer_bytes.clone(),
            clients: metrics.slow_clients.clone(),
            skipped: metrics.dropped_slow_client.clone(),
        }
    }

    /// Bytes held by all streams now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if the budget has room for them.
    fn take(&self, n: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok();
        if taken {
            self.bytes.add(gauge(n));
        }
        taken
    }

    /// Takes `n` bytes whether or not there is room: for bytes that are already in memory and
    /// cannot be dropped (the rest of a write the socket only partly took, a chunk's framing).
    fn force(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
        self.bytes.add(gauge(n));
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.bytes.sub(gauge(n));
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whether a unit joins what is queued for a client that is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Queue,
    /// Dropped (`skip` mode): counted, and reported once the client has caught up.
    Skip,
    /// The buffer or the budget is full and `on_slow_client = "close"`.
    Close,
}

/// The state of one stream while its client is behind; boxed, and dropped (giving its bytes
/// back to the budget) once the client has caught up or the stream ends.
pub(super) struct Backlog<'a> {
    budget: &'a SlowBudget,
    /// Bytes of the budget this stream holds: what it has queued, once [`Self::settle`]d.
    held: usize,
    /// When the client last took bytes (or fell behind): `sse.write_timeout` counts from here.
    pub progress_at: Instant,
    /// `skip` mode: units are dropped until the client has caught up, so that the client never
    /// gets an event from after a gap before it is told about the gap.
    skipping: bool,
    skipped: u64,
    /// The value of the last `id` field among the skipped events, as the app sent it: what the
    /// client's `lastEventId` would be had it received them.
    last_id: Option<Vec<u8>>,
}

impl<'a> Backlog<'a> {
    pub fn new(budget: &'a SlowBudget, now: Instant) -> Self {
        budget.clients.inc();
        Backlog {
            budget,
            held: 0,
            progress_at: now,
            skipping: false,
            skipped: 0,
            last_id: None,
        }
    }

    /// Decides the fate of a unit of `len` bytes when `queued` bytes are already waiting (those
    /// queued for the client plus those of this wake-up not queued yet).
    pub fn admit(
        &mut self,
        queued: usize,
        len: usize,
        info: &UnitInfo,
        cfg: &crate::config::SseConfig,
    ) -> Admit {
        if !self.skipping {
            let fits = queued.saturating_add(len) <= cfg.client_buffer;
            if fits && self.budget.take(len) {
                self.held += len;
                return Admit::Queue;
            }
            if cfg.on_slow_client == crate::config::OnSlowClient::Close {
                return Admit::Close;
            }
            self.skipping = true;
        }
        if info.is_event {
            self.skipped += 1;
            self.budget.skipped.inc();
        }
        if let Some(id) = &info.id {
            // Under a flood this runs for every event: the buffer is reused.
            let last = self.last_id.get_or_insert_with(Vec::new);
            last.clear();
            last.extend_from_slice(id);
        }
        Admit::Skip
    }

    /// Makes the bytes held from the budget what is actually queued: bytes that left go back,
    /// bytes queued beyond what was taken (a chunk's framing, the rest of a partial write) are
    /// taken whether or not there is room, as they are in memory already.
    pub fn settle(&mut self, queued: usize) {
        if queued > self.held {
            self.budget.force(queued - self.held);
        } else {
            self.budget.give_back(self.held - queued);
        }
        self.held = queued;
    }

    /// The `streamguard.skipped` event that tells the client what it missed, if it missed any
    /// event; taking it resets the count.
    pub fn take_notice(&mut self) -> Option<Vec<u8>> {
        if self.skipped == 0 {
            return None;
        }
        let last_id = self
            .last_id
            .take()
            .map(|id| String::from_utf8_lossy(&id).into_owned());
        let data = serde_json::json!({ "count": self.skipped, "last_id": last_id });
        self.skipped = 0;
        // JSON escapes every CR and LF, so the data stays one line.
        Some(format!("event: {SKIPPED_EVENT}\ndata: {data}\n\n").into_bytes())
    }
}

impl Drop for Backlog<'_> {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
        self.budget.clients.dec();
    }
}

/// The `event:` name of the notice a client gets after events were skipped.
pub const SKIPPED_EVENT: &str = "streamguard.skipped";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OnSlowClient, SseConfig};
    use bytes::Bytes;

    fn event(id: Option<&'static str>) -> UnitInfo {
        UnitInfo {
            is_event: true,
            valid_utf8: true,
            has_nul: false,
            id: id.map(|id| Bytes::from_static(id.as_bytes())),
        }
    }

    fn cfg(mode: OnSlowClient, client_buffer: usize) -> SseConfig {
        SseConfig {
            on_slow_client: mode,
            client_buffer,
            ..SseConfig::default()
        }
    }

    #[test]
    fn the_budget_never_hands_out_more_than_its_limit() {
        let metrics = Metrics::new();
        let budget = SlowBudget::new(100, &metrics);
        assert!(budget.take(60));
        assert!(!budget.take(41), "60 + 41 is over 100");
        assert!(budget.take(40));
        assert!(!budget.take(1));
        budget.give_back(50);
        assert!(budget.take(50));
        assert_eq!(budget.used(), 100);
        assert_eq!(metrics.slow_buffer_bytes.get(), 100);
        assert!(!budget.take(usize::MAX), "no overflow");
    }

    #[test]
    fn a_backlog_gives_everything_back_when_dropped() {
        let metrics = Metrics::new();
        let budget = SlowBudget::new(1000, &metrics);
        let cfg = cfg(OnSlowClient::Skip, 1000);
        {
            let mut backlog = Backlog::new(&budget, Instant::now());
            assert_eq!(metrics.slow_clients.get(), 1);
            assert_eq!(backlog.admit(0, 300, &event(None), &cfg), Admit::Queue);
            // The rest of a partial write and the framing: already in memory, taken anyway.
            backlog.settle(320);
            assert_eq!(budget.used(), 320);
            backlog.settle(100);
            assert_eq!(budget.used(), 100, "what the client took goes back");
        }
        assert_eq!(
            (budget.used(), metrics.slow_buffer_bytes.get()),
            (0, 0),
            "dropped with the stream or when the client caught up"
        );
        assert_eq!(metrics.slow_clients.get(), 0);
    }

    #[test]
    fn skip_mode_drops_whole_units_until_caught_up_and_counts_events_only() {
        let metrics = Metrics::new();
        let budget = SlowBudget::new(1 << 20, &metrics);
        let cfg = cfg(OnSlowClient::Skip, 100);
        let mut backlog = Backlog::new(&budget, Instant::now());
        let comment = UnitInfo {
            is_event: false,
            ..event(None)
        };
        assert_eq!(backlog.admit(0, 60, &event(Some("1")), &cfg), Admit::Queue);
        assert_eq!(backlog.admit(60, 50, &event(Some("2")), &cfg), Admit::Skip);
        assert_eq!(
            backlog.admit(60, 10, &event(None), &cfg),
            Admit::Skip,
            "once skipping, even a unit that fits is skipped: no event after a gap before the \
             notice"
        );
        assert_eq!(backlog.admit(60, 5, &comment, &cfg), Admit::Skip);
        assert_eq!(
            metrics.dropped_slow_client.get(),
            2,
            "comments are not events"
        );
        let notice = backlog.take_notice().expect("events were skipped");
        assert_eq!(
            String::from_utf8(notice).expect("utf-8"),
            "event: streamguard.skipped\ndata: {\"count\":2,\"last_id\":\"2\"}\n\n",
            "the last id field among the skipped events, even when a later one had none"
        );
        assert_eq!(backlog.take_notice(), None, "taken once");
    }

    #[test]
    fn the_notice_is_one_line_of_json_whatever_the_id() {
        let metrics = Metrics::new();
        let budget = SlowBudget::new(1 << 20, &metrics);
        let cfg = cfg(OnSlowClient::Skip, 0);
        let mut backlog = Backlog::new(&budget, Instant::now());
        let hostile = UnitInfo {
            id: Some(Bytes::from_static(b"a\"b\\c\x01\xff\r\n\n\ndata: x")),
            ..event(None)
        };
        assert_eq!(backlog.admit(0, 1, &hostile, &cfg), Admit::Skip);
        let notice = String::from_utf8(backlog.take_notice().expect("notice")).expect("utf-8");
        let lines: Vec<&str> = notice.split('\n').collect();
        assert_eq!(lines.len(), 4, "{notice:?}");
        let data = lines[1].strip_prefix("data: ").expect("data line");
        let json: serde_json::Value = serde_json::from_str(data).expect("JSON");
        assert_eq!(json["count"], 1);
        assert_eq!(json["last_id"], "a\"b\\c\u{1}\u{fffd}\r\n\n\ndata: x");
        assert!(!notice.contains('\r'));

        let mut no_id = Backlog::new(&budget, Instant::now());
        assert_eq!(no_id.admit(0, 1, &event(None), &cfg), Admit::Skip);
        let notice = String::from_utf8(no_id.take_notice().expect("notice")).expect("utf-8");
        assert!(
            notice.contains("{\"count\":1,\"last_id\":null}"),
            "{notice}"
        );
    }

    #[test]
    fn close_mode_closes_when_the_stream_buffer_or_the_budget_is_full() {
        let metrics = Metrics::new();
        let budget = SlowBudget::new(100, &metrics);
        let roomy = cfg(OnSlowClient::Close, 1 << 20);
        let mut first = Backlog::new(&budget, Instant::now());
        assert_eq!(first.admit(0, 80, &event(None), &roomy), Admit::Queue);
        let mut second = Backlog::new(&budget, Instant::now());
        assert_eq!(
            second.admit(0, 30, &event(None), &roomy),
            Admit::Close,
            "the budget is full"
        );
        let tight = cfg(OnSlowClient::Close, 50);
        assert_eq!(second.admit(40, 11, &event(None), &tight), Admit::Close);
        assert_eq!(second.admit(40, 10, &event(None), &tight), Admit::Queue);
        assert_eq!(metrics.dropped_slow_client.get(), 0);
    }
}
