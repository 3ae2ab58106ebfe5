//! The shared limit store's series: `streamguard_store_*`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

use super::registry::registered;

/// The shared limit store's operations, for `streamguard_store_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// A stream admission (one script call).
    Admit,
    /// A `messages_per_user` decision.
    Message,
    /// A batch of lease renewals.
    Renew,
    /// Queued releases of ended streams.
    Release,
    /// The health probe while the breaker is open.
    Ping,
    /// The eviction channel's subscription.
    Subscribe,
}

impl StoreOp {
    pub const ALL: [StoreOp; 6] = [
        StoreOp::Admit,
        StoreOp::Message,
        StoreOp::Renew,
        StoreOp::Release,
        StoreOp::Ping,
        StoreOp::Subscribe,
    ];

    pub fn label(self) -> &'static str {
        match self {
            StoreOp::Admit => "admit",
            StoreOp::Message => "message",
            StoreOp::Renew => "renew",
            StoreOp::Release => "release",
            StoreOp::Ping => "ping",
            StoreOp::Subscribe => "subscribe",
        }
    }
}

/// `streamguard_store_up`, `_errors_total{op}` and `_seconds{op}`. Registered whatever the
/// store, so dashboards see the series; with the in-memory store `up` is 1 and nothing counts.
pub struct StoreMetrics {
    pub up: IntGauge,
    errors: IntCounterVec,
    seconds: HistogramVec,
}

impl StoreMetrics {
    /// Registered whatever the store: with the in-memory one `up` stays 1 and nothing counts.
    pub(super) fn register(registry: &Registry) -> prometheus::Result<StoreMetrics> {
        let store = StoreMetrics {
            up: registered(
                registry,
                IntGauge::new(
                    "streamguard_store_up",
                    "1 while the limit store answers (always, for the in-memory store).",
                )?,
            )?,
            errors: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "streamguard_store_errors_total",
                        "Limit store operations that failed or timed out, by operation.",
                    ),
                    &["op"],
                )?,
            )?,
            seconds: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "streamguard_store_seconds",
                        "Round trips to the limit store that got an answer, by operation.",
                    )
                    .buckets(vec![
                        0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    ]),
                    &["op"],
                )?,
            )?,
        };
        store.up.set(1);
        for op in StoreOp::ALL {
            store.errors.with_label_values(&[op.label()]);
        }
        Ok(store)
    }

    pub fn error(&self, op: StoreOp) {
        self.errors.with_label_values(&[op.label()]).inc();
    }

    pub fn observe(&self, op: StoreOp, seconds: f64) {
        self.seconds
            .with_label_values(&[op.label()])
            .observe(seconds);
    }
}
