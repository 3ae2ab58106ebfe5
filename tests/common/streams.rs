//! Opening, holding and refusing streams the way the limits tests look at them: what the
//! client saw (status, `Retry-After`, body, the eviction event or close frame) and what the
//! metrics say. Shared by the single-proxy limits tests and the fleet tests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message};

use super::{
    event_data, event_field, metric, metrics::assert_metric, mint_token, ws_connect, Proxy,
    SseClient, WsClient, IO_TIMEOUT,
};

/// An SSE stream that sends one event and then stays open (the upstream watches its socket).
pub const HOLD_SSE: &str = "/sse?events=1&then=quiet";
pub const WS_PATH: &str = "/ws";
pub const TOO_MANY_STREAMS: &str = r#"{"error":"too many streams"}"#;
/// How long a test waits for something the proxy should do at once (a metric bump, a close).
pub const SOON: Duration = Duration::from_secs(5);

pub fn bearer(user: &str) -> String {
    bearer_ttl(user, 600)
}

pub fn bearer_ttl(user: &str, ttl_secs: i64) -> String {
    format!(
        "Bearer {}",
        mint_token(user, &[], ttl_secs, serde_json::Value::Null)
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sse,
    Ws,
}

impl Kind {
    pub fn default_path(self) -> &'static str {
        match self {
            Kind::Sse => HOLD_SSE,
            Kind::Ws => WS_PATH,
        }
    }
}

/// An admitted stream the test holds open.
pub enum Held {
    Sse(SseClient),
    Ws(WsClient),
}

/// A stream attempt the proxy turned away, as the client saw it.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
}

impl Refused {
    pub fn retry_secs(&self) -> u64 {
        let value = self
            .retry_after
            .as_deref()
            .unwrap_or_else(|| panic!("refusal without Retry-After: {self:?}"));
        value.parse().unwrap_or_else(|e| {
            panic!("Retry-After {value:?} is not whole seconds ({e}): {self:?}")
        })
    }

    pub fn assert(&self, status: u16, body: &str, retry: std::ops::RangeInclusive<u64>) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body, body, "{self:?}");
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "{self:?}"
        );
        let secs = self.retry_secs();
        assert!(
            retry.contains(&secs),
            "Retry-After {secs} not in {retry:?}: {self:?}"
        );
    }

    /// A full stream cap: the client cannot know when a slot frees, so 1..=5 s.
    pub fn assert_cap(&self, status: u16) {
        self.assert(status, TOO_MANY_STREAMS, 1..=5);
    }
}

/// Opens one stream of `kind` at `path`; `Ok` once the proxy admitted it (SSE: 200 and the first
/// event relayed; WebSocket: 101).
pub async fn try_open(
    addr: SocketAddr,
    kind: Kind,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Result<Held, Refused>, String> {
    match kind {
        Kind::Sse => {
            let mut sse = SseClient::try_connect(addr, path, headers)
                .await
                .map_err(|e| format!("SSE {path}: {e}"))?;
            if sse.status == 200 {
                let first = sse.read_event(IO_TIMEOUT).await;
                return match first {
                    Some(event) if event_field(&event, "id").is_some() => Ok(Ok(Held::Sse(sse))),
                    other => Err(format!("SSE {path}: first block {other:?}")),
                };
            }
            let body = sse.read_to_end(IO_TIMEOUT).await;
            Ok(Err(Refused {
                status: sse.status,
                retry_after: sse.header("retry-after").map(str::to_owned),
                content_type: sse.header("content-type").map(str::to_owned),
                body: String::from_utf8_lossy(&body).into_owned(),
            }))
        }
        Kind::Ws => match ws_connect(addr, path, headers).await {
            Ok((ws, resp)) if resp.status() == 101 => Ok(Ok(Held::Ws(ws))),
            Ok((_, resp)) => Err(format!("WebSocket {path}: status {}", resp.status())),
            Err(tungstenite::Error::Http(resp)) => {
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                Ok(Err(Refused {
                    status: resp.status().as_u16(),
                    retry_after: header("retry-after"),
                    content_type: header("content-type"),
                    body: String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                        .into_owned(),
                }))
            }
            Err(e) => Err(format!("WebSocket {path}: {e}")),
        },
    }
}

pub async fn admitted_at(
    addr: SocketAddr,
    kind: Kind,
    path: &str,
    headers: &[(&str, &str)],
) -> Held {
    match try_open(addr, kind, path, headers).await {
        Ok(Ok(held)) => held,
        Ok(Err(refused)) => panic!("{kind:?} {path} was refused: {refused:?}"),
        Err(e) => panic!("{e}"),
    }
}

pub async fn admitted(addr: SocketAddr, kind: Kind, headers: &[(&str, &str)]) -> Held {
    admitted_at(addr, kind, kind.default_path(), headers).await
}

pub async fn refused_at(
    addr: SocketAddr,
    kind: Kind,
    path: &str,
    headers: &[(&str, &str)],
) -> Refused {
    match try_open(addr, kind, path, headers).await {
        Ok(Ok(_)) => panic!("{kind:?} {path} was admitted, expected a refusal"),
        Ok(Err(refused)) => refused,
        Err(e) => panic!("{e}"),
    }
}

pub async fn refused(addr: SocketAddr, kind: Kind, headers: &[(&str, &str)]) -> Refused {
    refused_at(addr, kind, kind.default_path(), headers).await
}

impl Held {
    pub fn kind(&self) -> Kind {
        match self {
            Held::Sse(_) => Kind::Sse,
            Held::Ws(_) => Kind::Ws,
        }
    }

    /// Still relayed: an SSE stream gets its heartbeat (tests use 1 s or less), a WebSocket
    /// echoes a message.
    pub async fn assert_alive(&mut self) {
        match self {
            Held::Sse(sse) => {
                let chunk = sse.next_chunk(Duration::from_secs(3)).await;
                assert!(
                    chunk.is_some(),
                    "SSE stream ended (ended: {})",
                    sse.is_ended()
                );
            }
            Held::Ws(ws) => {
                ws.send(Message::text("alive?")).await.expect("send");
                let echo = tokio::time::timeout(SOON, ws.next()).await;
                match echo {
                    Ok(Some(Ok(Message::Text(text)))) => assert_eq!(text.as_str(), "alive?"),
                    other => panic!("WebSocket did not echo: {other:?}"),
                }
            }
        }
    }

    /// Waits for the proxy's eviction notice and the end of the stream.
    pub async fn evicted(self, timeout: Duration) -> Result<(), String> {
        match self {
            Held::Sse(mut sse) => {
                let event = sse_until_event(&mut sse, "streamguard.evicted", timeout).await?;
                if event_data(&event).as_deref() != Some(r#"{"reason":"evicted"}"#) {
                    return Err(format!("eviction event {event:?}"));
                }
                if !sse.wait_closed(timeout).await {
                    return Err("SSE stream not closed after its eviction event".into());
                }
                Ok(())
            }
            Held::Ws(mut ws) => match ws_until_close(&mut ws, timeout).await? {
                (1008, reason) if reason == "evicted" => Ok(()),
                other => Err(format!(
                    "WebSocket closed with {other:?}, expected 1008 evicted"
                )),
            },
        }
    }

    /// Ends the stream the polite way: SSE hangs up (that is all an EventSource can do), a
    /// WebSocket runs the close handshake.
    pub async fn close(self) {
        match self {
            Held::Sse(sse) => drop(sse),
            Held::Ws(mut ws) => {
                let _ = ws.close(None).await;
                let _ =
                    tokio::time::timeout(SOON, async { while ws.next().await.is_some() {} }).await;
            }
        }
    }
}

/// Reads blocks until `event: name`; heartbeats and other events are skipped.
pub async fn sse_until_event(
    sse: &mut SseClient,
    name: &str,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sse.read_event(left).await {
            Some(event) if event_field(&event, "event") == Some(name) => return Ok(event),
            Some(_) => {}
            None => {
                let why = if sse.is_ended() {
                    "stream ended"
                } else {
                    "timed out"
                };
                return Err(format!("no `event: {name}` ({why})"));
            }
        }
    }
}

/// Reads messages until a close frame, returning its code and reason.
pub async fn ws_until_close(ws: &mut WsClient, timeout: Duration) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return Err("no close frame in time".into()),
            Ok(None) => return Err("socket ended without a close frame".into()),
            Ok(Some(Err(e))) => return Err(format!("socket error before a close frame: {e}")),
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return Ok((u16::from(frame.code), frame.reason.to_string()))
            }
            Ok(Some(Ok(Message::Close(None)))) => return Err("close frame without a code".into()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

pub async fn assert_rejections(proxy: &Proxy, reason: &str, want: f64) {
    assert_metric(
        proxy,
        "streamguard_rejections_total",
        &[("reason", reason)],
        want,
    )
    .await;
}

pub async fn active_streams(proxy: &Proxy) -> f64 {
    let text = proxy.metrics().await;
    let kind = |k: &str| metric(&text, "streamguard_streams_active", &[("kind", k)]).unwrap_or(0.0);
    kind("sse") + kind("websocket")
}

/// Waits until the proxy relays exactly `want` streams: a slot is given back as the relay ends,
/// which is a moment after the client let go.
pub async fn wait_active(proxy: &Proxy, want: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = active_streams(proxy).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{got} streams active, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
