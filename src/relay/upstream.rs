//! Opening the upstream side of a supervised stream.
//!
//! Streams bypass Pingora's built-in relay (it has no timer branch, see
//! `shared/design/pingora-0.9-notes.md`), so they also bypass its connector. This keeps our own
//! `Connector` and a peer template with no read timeout: a stream may stay quiet for hours, and
//! the relay loops, not socket timeouts, decide when quiet becomes stale.

use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as H1Client;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;

use crate::config::UpstreamConfig;

/// An app that stops reading what the proxy forwards (WebSocket messages, a POST body) for this
/// long is treated as gone: otherwise one hung app socket would stall its relay loop forever.
pub const UPSTREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the upstream side of a stream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("upstream spoke HTTP/2 on a stream route; streams need HTTP/1.1")]
    NotHttp1,
    #[error("writing the request upstream failed: {0}")]
    Write(String),
    #[error("reading the response head from the upstream failed: {0}")]
    Read(String),
}

impl UpstreamError {
    /// Connection refused and timeouts are "the upstream is down" (502), anything later is a
    /// failure mid-exchange; both get the same fixed body, only logs differ.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

/// Dials the configured upstream for stream requests.
pub struct StreamConnector {
    connector: Connector,
    peer: HttpPeer,
}

impl StreamConnector {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        let mut peer = HttpPeer::new(cfg.address, false, String::new());
        peer.options.connection_timeout = Some(cfg.connect_timeout);
        peer.options.total_connection_timeout = Some(cfg.connect_timeout);
        peer.options.read_timeout = None;
        peer.options.write_timeout = Some(UPSTREAM_WRITE_TIMEOUT);
        StreamConnector {
            connector: Connector::new(None),
            peer,
        }
    }

    /// Connects and writes the request head. Never reuses a pooled connection: a stream
    /// connection is closed when the stream ends.
    pub async fn open(&self, req: &RequestHeader) -> Result<Box<H1Client>, UpstreamError> {
        let (session, _reused) = self
            .connector
            .get_http_session(&self.peer)
            .await
            .map_err(|e| UpstreamError::Connect(e.etype().as_str().to_string()))?;
        let mut h1 = match session {
            HttpSession::H1(h1) => Box::new(h1),
            _ => return Err(UpstreamError::NotHttp1),
        };
        h1.write_request_header(Box::new(req.clone()))
            .await
            .map_err(|e| UpstreamError::Write(describe(&e)))?;
        Ok(h1)
    }
}

/// Forwards one request-body chunk (POST streams send their body before the stream starts).
pub async fn write_body(h1: &mut H1Client, chunk: &Bytes) -> Result<(), UpstreamError> {
    h1.write_body(chunk)
        .await
        .map(|_| ())
        .map_err(|e| UpstreamError::Write(describe(&e)))
}

pub async fn finish_body(h1: &mut H1Client) -> Result<(), UpstreamError> {
    h1.finish_body()
        .await
        .map(|_| ())
        .map_err(|e| UpstreamError::Write(describe(&e)))
}

pub async fn read_response_head(h1: &mut H1Client) -> Result<(), UpstreamError> {
    h1.read_response()
        .await
        .map(|_| ())
        .map_err(|e| UpstreamError::Read(describe(&e)))
}

/// A short error description for logs: the error type and Pingora's context, never request data.
pub fn describe(e: &pingora::Error) -> String {
    match e.etype() {
        ErrorType::ConnectTimedout => "connect timed out".to_string(),
        other => other.as_str().to_string(),
    }
}
