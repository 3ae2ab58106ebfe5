//! Logs and metrics: the one place that knows metric names, label sets and log targets.
//!
//! Every metric is registered once, with help text, in a registry of our own (not the global
//! default, so tests and embedders get a clean slate). Labels only ever come from closed enums
//! (`StreamKind`, `CloseReason`, ...), never from users, paths or tokens, so cardinality is fixed
//! and no personal data reaches a scrape. Hot-path children are resolved once at start-up.
//!
//! - [`logging`]: the `tracing` subscriber.
//! - [`metrics`]: [`Metrics`], the registry and the per-kind stream handles.
//! - [`store`]: the shared limit store's series.
//! - [`http2`]: HTTP/2 connections and streams towards clients.
//! - [`ops`]: what an operator watches around the process itself: config reloads, the drain,
//!   the upstream's readiness.

mod http2;
mod logging;
mod metrics;
mod ops;
mod registry;
mod store;

pub use http2::{GoAway, Http2Metrics};
pub use logging::{init_logging, set_level};
pub use metrics::{ActiveStream, KindMetrics, Metrics};
pub use ops::{OpsMetrics, ReloadResult};
pub use store::{StoreMetrics, StoreOp};

/// Log target of the one-line-per-request access log.
pub const ACCESS_TARGET: &str = "streamguard::access";
/// Log target of security events (`auth_failed`, `cors_rejected`, `forbidden`, ...).
pub const SECURITY_TARGET: &str = "streamguard::security";

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
    /// A reload stopped trusting the key the stream's token was verified with.
    Revoked,
    DeadPeer,
    Idle,
    TooBig,
    /// A WebSocket message split into more than `max_message_fragments` frames.
    TooFragmented,
    RateLimited,
    /// A WebSocket client past `max_control_frames`.
    ControlRate,
    ProtocolError,
    Error,
}

impl CloseReason {
    pub const ALL: [CloseReason; 19] = [
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
        CloseReason::Revoked,
        CloseReason::DeadPeer,
        CloseReason::Idle,
        CloseReason::TooBig,
        CloseReason::TooFragmented,
        CloseReason::RateLimited,
        CloseReason::ControlRate,
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
            CloseReason::Revoked => "revoked",
            CloseReason::DeadPeer => "dead_peer",
            CloseReason::Idle => "idle",
            CloseReason::TooBig => "too_big",
            CloseReason::TooFragmented => "too_fragmented",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::ControlRate => "control_rate",
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
