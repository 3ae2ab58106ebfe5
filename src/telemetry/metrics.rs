//! [`Metrics`]: every series streamguard exports, registered once with help text.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use super::http2::Http2Metrics;
use super::ops::OpsMetrics;
use super::registry::registered;
use super::store::StoreMetrics;
use super::{CloseReason, Direction, StreamKind};

/// Per-kind handles resolved once, so the relay loops touch plain atomics only.
pub struct KindMetrics {
    pub active: IntGauge,
    pub bytes_to_client: IntCounter,
    pub bytes_to_upstream: IntCounter,
    closes: Vec<IntCounter>,
    duration: prometheus::Histogram,
}

impl KindMetrics {
    pub fn closed(&self, reason: CloseReason, seconds: f64) {
        let idx = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(CloseReason::ALL.len() - 1);
        self.closes[idx].inc();
        self.duration.observe(seconds);
    }
}

/// All of streamguard's metrics.
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub rejections: IntCounterVec,
    pub sse: KindMetrics,
    pub websocket: KindMetrics,
    pub sse_events: IntCounter,
    pub heartbeats: IntCounter,
    pub dropped_events: IntCounterVec,
    /// `dropped_events{reason="slow_client"}`, resolved once: under a flood it counts every
    /// event a slow client misses.
    pub dropped_slow_client: IntCounter,
    pub ws_messages_to_upstream: IntCounter,
    pub ws_messages_to_client: IntCounter,
    pub ws_pings: IntCounter,
    pub evictions: IntCounter,
    pub limiter_keys: IntGauge,
    /// Streams open now by route pattern (`[[route]] path`, `-` for none) and kind.
    route_streams: IntGaugeVec,
    /// Live status pages watching the admin listener's status stream.
    pub status_watchers: IntGauge,
    pub store: StoreMetrics,
    /// Client connections holding a slot of the connection gate, streams included.
    pub connections_active: IntGauge,
    /// `listen.max_connections` of the gate in force, so a dashboard or an alert can compare
    /// `connections_active` with it (the default comes from the open-file limit, which an
    /// operator cannot see from outside).
    pub connections_max: IntGauge,
    pub streams_max: IntGauge,
    /// Connections the gate turned away, by `ConnectionRefusal::label`.
    pub connection_refusals: IntCounterVec,
    /// SSE streams whose client is behind: output is waiting in a per-stream buffer.
    pub slow_clients: IntGauge,
    /// Bytes waiting in those buffers, all streams together (`sse.slow_buffer_total` caps it).
    pub slow_buffer_bytes: IntGauge,
    /// Config reloads, the drain, the upstream's readiness.
    pub ops: OpsMetrics,
    pub http2: Http2Metrics,
}

impl Metrics {
    pub fn new() -> Self {
        // Registration only fails on duplicate or malformed names, which are constants here.
        Self::try_new().expect("metric definitions are valid")
    }

    fn try_new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "streamguard_requests_total",
                    "Requests handled, by outcome.",
                ),
                &["outcome"],
            )?,
        )?;
        let rejections = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "streamguard_rejections_total",
                    "Requests refused by a policy, by reason.",
                ),
                &["reason"],
            )?,
        )?;
        let active = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new("streamguard_streams_active", "Streams open now, by kind."),
                &["kind"],
            )?,
        )?;
        let closes = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "streamguard_stream_closes_total",
                    "Streams ended, by kind and reason.",
                ),
                &["kind", "reason"],
            )?,
        )?;
        let duration = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "streamguard_stream_duration_seconds",
                    "How long streams lasted, by kind.",
                )
                .buckets(vec![
                    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
                ]),
                &["kind"],
            )?,
        )?;
        let bytes = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "streamguard_relayed_bytes_total",
                    "Bytes relayed on streams, by kind and direction.",
                ),
                &["kind", "direction"],
            )?,
        )?;
        let kind = |k: StreamKind| KindMetrics {
            active: active.with_label_values(&[k.label()]),
            bytes_to_client: bytes.with_label_values(&[k.label(), Direction::Downstream.label()]),
            bytes_to_upstream: bytes.with_label_values(&[k.label(), Direction::Upstream.label()]),
            closes: CloseReason::ALL
                .iter()
                .map(|r| closes.with_label_values(&[k.label(), r.label()]))
                .collect(),
            duration: duration.with_label_values(&[k.label()]),
        };
        let sse = kind(StreamKind::Sse);
        let websocket = kind(StreamKind::WebSocket);

        let counter = |name: &str, help: &str| registered(&registry, IntCounter::new(name, help)?);
        let sse_events = counter(
            "streamguard_sse_events_total",
            "SSE events relayed to clients.",
        )?;
        let heartbeats = counter(
            "streamguard_heartbeats_total",
            "Heartbeat comments injected into quiet SSE streams.",
        )?;
        let dropped_events = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "streamguard_dropped_events_total",
                    "SSE events or WebSocket messages dropped, by reason.",
                ),
                &["reason"],
            )?,
        )?;
        let ws_messages = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "streamguard_ws_messages_total",
                    "WebSocket data messages relayed, by direction.",
                ),
                &["direction"],
            )?,
        )?;
        let ws_pings = counter(
            "streamguard_ws_pings_total",
            "Pings the proxy sent to WebSocket clients.",
        )?;
        let evictions = counter(
            "streamguard_evictions_total",
            "Streams closed to admit a newer stream of the same user.",
        )?;
        let limiter_keys = registered(
            &registry,
            IntGauge::new(
                "streamguard_limiter_keys",
                "Users and addresses the limiter currently tracks.",
            )?,
        )?;
        let route_streams = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "streamguard_route_streams_active",
                    "Streams open now, by configured route pattern and kind.",
                ),
                &["route", "kind"],
            )?,
        )?;
        let status_watchers = registered(
            &registry,
            IntGauge::new(
                "streamguard_status_watchers",
                "Status pages currently following the admin status stream.",
            )?,
        )?;
        let store = StoreMetrics::register(&registry)?;
        let ops = OpsMetrics::register(&registry)?;
        let http2 = Http2Metrics::register(&registry)?;
        let connections_active = registered(
            &registry,
            IntGauge::new(
                "streamguard_connections_active",
                "Client connections open now, streams included.",
            )?,
        )?;
        let connections_max = registered(
            &registry,
            IntGauge::new(
                "streamguard_connections_max",
                "Client connections the proxy accepts at once (listen.max_connections).",
            )?,
        )?;
        let streams_max = registered(
            &registry,
            IntGauge::new(
                "streamguard_streams_max",
                "Streams the proxy holds at once (limits.max_streams); 0: no cap.",
            )?,
        )?;
        let connection_refusals = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "streamguard_connection_refusals_total",
                    "Client connections refused by listen.max_connections (global) or \
                     listen.max_connections_per_ip (per_ip).",
                ),
                &["reason"],
            )?,
        )?;
        let slow_clients = registered(
            &registry,
            IntGauge::new(
                "streamguard_slow_clients",
                "SSE streams whose client is behind, with output waiting in a buffer.",
            )?,
        )?;
        let slow_buffer_bytes = registered(
            &registry,
            IntGauge::new(
                "streamguard_slow_buffer_bytes",
                "Bytes buffered for SSE clients that are behind (capped by sse.slow_buffer_total).",
            )?,
        )?;
        let build_info = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new("streamguard_build_info", "Build information; always 1."),
                &["version"],
            )?,
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        Ok(Metrics {
            ws_messages_to_upstream: ws_messages.with_label_values(&[Direction::Upstream.label()]),
            ws_messages_to_client: ws_messages.with_label_values(&[Direction::Downstream.label()]),
            dropped_slow_client: dropped_events.with_label_values(&["slow_client"]),
            registry,
            requests,
            rejections,
            sse,
            websocket,
            sse_events,
            heartbeats,
            dropped_events,
            ws_pings,
            evictions,
            limiter_keys,
            route_streams,
            status_watchers,
            store,
            connections_active,
            connections_max,
            streams_max,
            connection_refusals,
            slow_clients,
            slow_buffer_bytes,
            ops,
            http2,
        })
    }

    /// The open-streams gauge of one route (`None`: requests no route claimed) and kind. Route
    /// patterns come from the config file, never from requests, so the label set stays closed.
    pub fn route_streams(&self, route: Option<&str>, kind: StreamKind) -> IntGauge {
        self.route_streams
            .with_label_values(&[route.unwrap_or("-"), kind.label()])
    }

    /// Every metric's current value, for the status page's snapshots.
    pub fn families(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    pub fn kind(&self, kind: StreamKind) -> &KindMetrics {
        match kind {
            StreamKind::Sse => &self.sse,
            StreamKind::WebSocket => &self.websocket,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps `streamguard_streams_active{kind}` and the stream's route gauge right on every exit
/// path, panics included.
pub struct ActiveStream<'a> {
    gauge: &'a IntGauge,
    route: IntGauge,
}

impl<'a> ActiveStream<'a> {
    pub fn new(metrics: &'a KindMetrics, route: IntGauge) -> Self {
        metrics.active.inc();
        route.inc();
        ActiveStream {
            gauge: &metrics.active,
            route,
        }
    }
}

impl Drop for ActiveStream<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
        self.route.dec();
    }
}
