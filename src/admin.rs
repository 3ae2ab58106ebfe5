//! The admin listener: `/metrics` (Prometheus text), `/livez` and `/readyz`.
//!
//! It listens on its own address (loopback by default) so metrics and probes are never exposed
//! on the public port, and it answers even while the proxy port is saturated.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::telemetry::Metrics;

/// How long `/readyz` waits for the upstream to accept a connection.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub upstream: SocketAddr,
    pub shutdown: watch::Receiver<bool>,
}

impl Admin {
    /// Ready when the upstream accepts connections and the process is not draining, so a load
    /// balancer stops sending new streams here as soon as SIGTERM arrives.
    async fn ready(&self) -> bool {
        if *self.shutdown.borrow() {
            return false;
        }
        matches!(
            tokio::time::timeout(READY_PROBE_TIMEOUT, TcpStream::connect(self.upstream)).await,
            Ok(Ok(_))
        )
    }
}

fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => text(200, "text/plain; version=0.0.4", self.metrics.render()),
            "/livez" => text(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.ready().await {
                    text(200, "text/plain", b"ready\n".to_vec())
                } else {
                    text(503, "text/plain", b"not ready\n".to_vec())
                }
            }
            _ => text(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
