//! The admin listener: the live status page (`/`, fed by `/status/events`), `/status.json`,
//! `/metrics` (Prometheus text), `/livez` and `/readyz`; and `POST /drain`, which only loopback
//! clients may send (the port may be open to the cluster for probes and scrapes).
//!
//! It listens on its own address (loopback by default) so the page, metrics and probes are never
//! exposed on the public port, and it answers even while the proxy port is saturated. The page
//! is one self-contained HTML file (no scripts, fonts or styles from elsewhere, so it works
//! offline and under a strict Content-Security-Policy); it follows an event stream of JSON
//! snapshots, one a second, built only while a page is connected.

mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tokio::net::TcpStream;

use crate::proxy::lifecycle::DrainTrigger;
use crate::proxy::State;
pub use status::Snapshot;

/// How long `/readyz` waits for the upstream to accept a connection.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the status stream sends a snapshot.
const STATUS_EVERY: Duration = Duration::from_secs(1);

const PAGE: &str = include_str!("page.html");
/// The page loads nothing from anywhere: inline script and style, and its own event stream.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

pub struct Admin {
    pub state: Arc<State>,
    pub upstream: SocketAddr,
}

/// A complete answer: status, content type, body.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Bytes,
}

impl Answer {
    fn text(status: u16, body: &'static str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from_static(body.as_bytes()),
        }
    }
}

impl Admin {
    /// Ready when the upstream accepts connections and the process is not draining, so a load
    /// balancer stops sending new streams here as soon as SIGTERM arrives.
    async fn ready(&self) -> bool {
        if self.state.lifecycle.is_draining() {
            return false;
        }
        matches!(
            tokio::time::timeout(READY_PROBE_TIMEOUT, TcpStream::connect(self.upstream)).await,
            Ok(Ok(_))
        )
    }

    async fn answer(&self, method: &Method, path: &str) -> Answer {
        if method != Method::GET && method != Method::HEAD {
            return Answer::text(405, "method not allowed\n");
        }
        match path {
            "/" => Answer {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: Bytes::from_static(PAGE.as_bytes()),
            },
            "/status.json" => Answer {
                status: 200,
                content_type: "application/json",
                body: snapshot_json(&self.state),
            },
            "/metrics" => Answer {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: Bytes::from(self.state.metrics.render()),
            },
            "/livez" => Answer::text(200, "ok\n"),
            "/readyz" if self.ready().await => Answer::text(200, "ready\n"),
            "/readyz" => Answer::text(503, "not ready\n"),
            _ => Answer::text(404, "not found\n"),
        }
    }

    /// `POST` commands. They change what the process does, so only a client on this host may
    /// send them: a probe or scrape from elsewhere in the cluster must not be able to drain a pod.
    async fn command(&self, path: &str, local: bool, wait: bool) -> Answer {
        if !local {
            return Answer::text(403, "commands are accepted from loopback clients only\n");
        }
        match path {
            "/drain" => {
                let lifecycle = &self.state.lifecycle;
                if lifecycle.request_drain(DrainTrigger::Admin) {
                    tracing::info!("POST /drain: drain asked for");
                }
                if wait {
                    lifecycle.drained().await;
                    Answer::text(200, "drained\n")
                } else {
                    Answer::text(202, "draining\n")
                }
            }
            _ => Answer::text(404, "not found\n"),
        }
    }

    /// `GET /status/events`: a snapshot a second until the page goes away.
    async fn status_stream(&self, http: &mut ServerSession) {
        let mut head = match head(200, "text/event-stream") {
            Ok(head) => head,
            Err(_) => return,
        };
        if head
            .insert_header(header::TRANSFER_ENCODING, "chunked")
            .is_err()
            || http.write_response_header(Box::new(head)).await.is_err()
        {
            return;
        }
        let watchers = &self.state.metrics.status_watchers;
        watchers.inc();
        let mut tick = tokio::time::interval(STATUS_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // The page sends nothing after its request: this ends when it closes.
                _ = http.read_body_or_idle(true) => break,
            }
            let mut event = b"data: ".to_vec();
            event.extend_from_slice(&snapshot_json(&self.state));
            event.extend_from_slice(b"\n\n");
            if http.write_response_body(event.into(), false).await.is_err() {
                break;
            }
        }
        watchers.dec();
    }
}

fn snapshot_json(state: &State) -> Bytes {
    // Serializing plain numbers and strings cannot fail.
    Bytes::from(serde_json::to_vec(&Snapshot::take(state)).unwrap_or_default())
}

fn head(status: u16, content_type: &str) -> pingora::Result<ResponseHeader> {
    let mut head = ResponseHeader::build(status, Some(6))?;
    head.insert_header(header::CONTENT_TYPE, content_type)?;
    head.insert_header(header::CACHE_CONTROL, "no-store")?;
    head.insert_header("x-content-type-options", "nosniff")?;
    if content_type.starts_with("text/html") {
        head.insert_header("content-security-policy", PAGE_CSP)?;
    }
    Ok(head)
}

#[async_trait]
impl HttpServerApp for Admin {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // A client that sends garbage or nothing is not the operator's concern: no error log.
        if !matches!(http.read_request().await, Ok(true)) {
            return None;
        }
        http.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let method = http.req_header().method.clone();
        let path = http.req_header().uri.path().to_owned();
        if method == Method::GET && path == "/status/events" {
            self.status_stream(&mut http).await;
            return None;
        }
        let answer = if method == Method::POST {
            let local = http
                .client_addr()
                .and_then(|addr| addr.as_inet())
                .is_some_and(|addr| addr.ip().is_loopback());
            let wait = http
                .req_header()
                .uri
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "wait=1"));
            self.command(&path, local, wait).await
        } else {
            self.answer(&method, &path).await
        };
        let mut resp = head(answer.status, answer.content_type).ok()?;
        resp.insert_header(header::CONTENT_LENGTH, answer.body.len())
            .ok()?;
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            answer.body
        };
        http.write_response_header(Box::new(resp)).await.ok()?;
        if !body.is_empty() {
            http.write_response_body(body, true).await.ok()?;
        }
        let settings = HttpPersistentSettings::for_session(&http);
        http.finish()
            .await
            .ok()
            .flatten()
            .map(|stream| ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}
