//! HTTP/2 towards clients: connections, streams, and what the connection loop
//! (`server::h2`) refused or ended.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::registry::registered;

/// Why the proxy sent a connection its GOAWAY: the `reason` label of
/// `streamguard_http2_goaways_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoAway {
    /// The process is draining or shutting down.
    Drain,
    /// No stream for `http2.idle_timeout`.
    Idle,
    /// Too many malformed streams on the connection.
    Malformed,
}

impl GoAway {
    pub const ALL: [GoAway; 3] = [GoAway::Drain, GoAway::Idle, GoAway::Malformed];

    pub fn label(self) -> &'static str {
        match self {
            GoAway::Drain => "drain",
            GoAway::Idle => "idle",
            GoAway::Malformed => "malformed",
        }
    }
}

pub struct Http2Metrics {
    /// HTTP/2 client connections open now.
    pub connections_active: IntGauge,
    /// HTTP/2 client connections accepted.
    pub connections: IntCounter,
    /// Streams (requests) accepted on HTTP/2 connections.
    pub streams: IntCounter,
    /// Streams refused before they reached the proxy (malformed request heads).
    pub streams_rejected: IntCounter,
    /// Relayed event streams the client reset (`RST_STREAM`).
    pub client_resets: IntCounter,
    goaways: IntCounterVec,
}

impl Http2Metrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Http2Metrics> {
        let gauge = |name: &str, help: &str| registered(registry, IntGauge::new(name, help)?);
        let counter = |name: &str, help: &str| registered(registry, IntCounter::new(name, help)?);
        let goaways = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "streamguard_http2_goaways_total",
                    "GOAWAY frames the proxy sent to HTTP/2 clients, by reason.",
                ),
                &["reason"],
            )?,
        )?;
        for why in GoAway::ALL {
            goaways.with_label_values(&[why.label()]);
        }
        Ok(Http2Metrics {
            connections_active: gauge(
                "streamguard_http2_connections_active",
                "HTTP/2 client connections open now.",
            )?,
            connections: counter(
                "streamguard_http2_connections_total",
                "HTTP/2 client connections accepted (ALPN h2, or h2c).",
            )?,
            streams: counter(
                "streamguard_http2_streams_total",
                "Requests received on HTTP/2 connections.",
            )?,
            streams_rejected: counter(
                "streamguard_http2_streams_rejected_total",
                "HTTP/2 streams refused before the proxy saw them (malformed request heads).",
            )?,
            client_resets: counter(
                "streamguard_http2_client_resets_total",
                "Relayed HTTP/2 event streams the client reset (RST_STREAM).",
            )?,
            goaways,
        })
    }

    pub fn goaway(&self, why: GoAway) {
        self.goaways.with_label_values(&[why.label()]).inc();
    }
}
