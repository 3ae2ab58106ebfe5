//! Logs and metrics: the one place that knows metric names, label sets and log targets.
//!
//! Every metric is registered once, with help text, in a registry of our own (not the global
//! default, so tests and embedders get a clean slate). Labels only ever come from closed enums
//! (`StreamKind`, `CloseReason`, ...), never from users, paths or tokens, so cardinality is fixed
//! and no personal data reaches a scrape. Hot-path children are resolved once at start-up.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::{LogConfig, LogFormat};

/// Log target of the one-line-per-request access log.
pub const ACCESS_TARGET: &str = "streamguard::access";
/// Log target of security events (`auth_failed`, `cors_rejected`, `forbidden`, ...).
pub const SECURITY_TARGET: &str = "streamguard::security";

/// Filter directives appended to `log.level`.
const PINGORA_LOG_CAP: &str = "pingora_proxy=info,pingora_core=info,pingora_http=info";

/// Installs the global `tracing` subscriber (JSON or text on stdout). Pingora's own `log`
/// records are bridged in so operators get one stream in one format.
pub fn init_logging(cfg: &LogConfig) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    // Pingora's debug output prints whole request heads, credentials included: whatever level
    // the operator picks, Pingora's own crates stay at info so no token reaches a log line.
    let directives = format!("{},{PINGORA_LOG_CAP}", cfg.level);
    let filter = EnvFilter::try_new(directives).map_err(|e| format!("log.level: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    // A second init (tests, `demo` after `check`) keeps the first subscriber: not an error.
    let _ = result;
    Ok(())
}

/// The two kinds of long-lived stream the proxy supervises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Sse,
    WebSocket,
}

impl StreamKind {
    pub fn label(self) -> &'static str {
        match self {
            StreamKind::Sse => "sse",
            StreamKind::WebSocket => "websocket",
        }
    }
}

/// Why a stream ended: the `reason` label of `streamguard_stream_closes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientGone,
    UpstreamEnd,
    UpstreamGone,
    Stale,
    Expired,
    SlowClient,
    Oversize,
    Invalid,
    Shutdown,
    Evicted,
    DeadPeer,
    Idle,
    TooBig,
    RateLimited,
    ProtocolError,
    Error,
}

impl CloseReason {
    pub const ALL: [CloseReason; 16] = [
        CloseReason::ClientGone,
        CloseReason::UpstreamEnd,
        CloseReason::UpstreamGone,
        CloseReason::Stale,
        CloseReason::Expired,
        CloseReason::SlowClient,
        CloseReason::Oversize,
        CloseReason::Invalid,
        CloseReason::Shutdown,
        CloseReason::Evicted,
        CloseReason::DeadPeer,
        CloseReason::Idle,
        CloseReason::TooBig,
        CloseReason::RateLimited,
        CloseReason::ProtocolError,
        CloseReason::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientGone => "client_gone",
            CloseReason::UpstreamEnd => "upstream_end",
            CloseReason::UpstreamGone => "upstream_gone",
            CloseReason::Stale => "stale",
            CloseReason::Expired => "expired",
            CloseReason::SlowClient => "slow_client",
            CloseReason::Oversize => "oversize",
            CloseReason::Invalid => "invalid",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Evicted => "evicted",
            CloseReason::DeadPeer => "dead_peer",
            CloseReason::Idle => "idle",
            CloseReason::TooBig => "too_big",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::Error => "error",
        }
    }
}

/// How a request ended, for `streamguard_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by the upstream through the plain proxy path.
    Proxied,
    /// Relayed as an SSE or WebSocket stream.
    Streamed,
    /// Refused by a policy (CORS, auth, limits, bad request).
    Rejected,
    /// Answered by the proxy itself (preflight, session cookie exchange).
    Local,
    /// The upstream could not be reached or failed mid-response.
    Failed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Proxied => "proxied",
            Outcome::Streamed => "streamed",
            Outcome::Rejected => "rejected",
            Outcome::Local => "local",
            Outcome::Failed => "failed",
        }
    }
}

/// Which way bytes or messages moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream.
    Upstream,
    /// Upstream to client.
    Downstream,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Upstream => "to_upstream",
            Direction::Downstream => "to_client",
        }
    }
}

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
    /// SSE streams whose client is behind: output is waiting in a per-stream buffer.
    pub slow_clients: IntGauge,
    /// Bytes waiting in those buffers, all streams together (`sse.slow_buffer_total` caps it).
    pub slow_buffer_bytes: IntGauge,
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
            slow_clients,
            slow_buffer_bytes,
        })
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

/// Registers `metric` and hands it back, so each metric is defined in one expression.
fn registered<C>(registry: &Registry, metric: C) -> prometheus::Result<C>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps `streamguard_streams_active{kind}` right on every exit path, panics included.
pub struct ActiveStream<'a> {
    gauge: &'a IntGauge,
}

impl<'a> ActiveStream<'a> {
    pub fn new(metrics: &'a KindMetrics) -> Self {
        metrics.active.inc();
        ActiveStream {
            gauge: &metrics.active,
        }
    }
}

impl Drop for ActiveStream<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
