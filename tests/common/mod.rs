//! Shared harness for the integration tests: the real `streamguard` binary as a child process
//! (`proxy`), the bundled demo upstream served in-process on a real socket (`Upstream`), and
//! raw clients (`http`, `sse`, [`ws_connect`]) that show exactly what crossed the wire and when.
//!
//! Use from a test file with `mod common;` and `#[tokio::test(flavor = "multi_thread")]`.

// Each test binary compiles this module and uses its own subset of the helpers.
#![allow(dead_code, unused_imports)]

pub mod apps;
pub mod chromium;
pub mod h2;
pub mod http;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod redis;
pub mod sse;
pub mod streams;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use streamguard::demo::upstream::{serve, UpstreamStats};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::WebSocketStream;

pub use http::{get, http_request, request_head, try_http_request, HttpConn, Response, IO_TIMEOUT};
pub use metrics::{
    assert_metric, metric_now, metric_until, rss_kib, wait_metric, wait_metric_within,
    wait_metrics, wait_metrics_within,
};
pub use proxy::{metric, Proxy, ProxyConfig};
pub use sse::{event_data, event_field, split_event, Chunk, SseClient};
pub use tls::Certificate;

/// The HS256 secret every test proxy is configured with (`[auth] secret`).
pub const TEST_SECRET: &str = "streamguard-integration-test-secret-0123456789";

/// The demo upstream on 127.0.0.1, served on the test's runtime (so it stops with the test).
pub struct Upstream {
    pub addr: SocketAddr,
    pub stats: Arc<UpstreamStats>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("binding the upstream: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("upstream address: {e}"));
        let stats = Arc::new(UpstreamStats::new());
        let task = tokio::spawn(serve(listener, Arc::clone(&stats)));
        Upstream { addr, stats, task }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Stops accepting; connections already open finish with the runtime.
        self.task.abort();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

/// An HS256 token signed with [`TEST_SECRET`]: `sub`, `roles`, `iat`, `exp = now + ttl_secs`
/// (negative for an expired token), then every key of `extra_claims` (an object, or `null`)
/// added or overriding.
pub fn mint_token(
    sub: &str,
    roles: &[&str],
    ttl_secs: i64,
    extra_claims: serde_json::Value,
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_else(|e| panic!("clock before 1970: {e}"));
    let mut claims =
        serde_json::json!({ "sub": sub, "roles": roles, "iat": now, "exp": now + ttl_secs });
    match extra_claims {
        serde_json::Value::Null => {}
        serde_json::Value::Object(extra) => {
            if let Some(map) = claims.as_object_mut() {
                map.extend(extra);
            }
        }
        other => panic!("extra_claims must be a JSON object or null, got {other}"),
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("signing a test token: {e}"))
}

/// Polls `cond` every 10 ms; `true` as soon as it holds, `false` if `timeout` passes first.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub type WsClient = WebSocketStream<TcpStream>;

/// Opens `ws://addr{path}` with extra handshake headers (Origin, Authorization,
/// Sec-WebSocket-Protocol…). A refused handshake comes back as
/// `Err(tungstenite::Error::Http(response))` so tests can check its status.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(WsClient, tungstenite::handshake::client::Response), tungstenite::Error> {
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|e| panic!("bad header name {name:?}: {e}"));
        let value = HeaderValue::from_str(value)
            .unwrap_or_else(|e| panic!("bad header value {value:?}: {e}"));
        request.headers_mut().append(name, value);
    }
    let stream = http::connect(addr).await.map_err(tungstenite::Error::Io)?;
    tokio_tungstenite::client_async(request, stream).await
}

#[cfg(test)]
mod tests {
    //! The harness checked against the real upstream; cheap enough to run in every test binary.

    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tungstenite::Message;

    #[tokio::test(flavor = "multi_thread")]
    async fn http_helpers_against_the_upstream() {
        let up = Upstream::start().await;
        let resp = get(
            up.addr,
            "/echo/a?access_token=x",
            &[
                ("Authorization", "Bearer t"),
                ("Cookie", "a=1"),
                ("Cookie", "b=2"),
            ],
        )
        .await;
        assert_eq!(resp.status, 200);
        let json = resp.json();
        assert_eq!(json["target"], "/echo/a?access_token=x");
        assert_eq!(json["headers"]["authorization"], "Bearer t");
        assert_eq!(json["headers"]["cookie"], serde_json::json!(["a=1", "b=2"]));
        assert_eq!(up.stats.hits("/echo"), 1);

        let cors = get(up.addr, "/legacy-cors", &[]).await;
        assert_eq!(cors.header("access-control-allow-origin"), Some("*"));
        let err = get(up.addr, "/status/500", &[]).await;
        assert_eq!(
            (err.status, err.text().contains("secret detail")),
            (500, true)
        );

        let mut conn = HttpConn::connect(up.addr).await.expect("connect");
        let first = conn
            .send(b"GET /big?bytes=70000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("first");
        assert_eq!(first.body.len(), 70_000);
        let second = conn
            .send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
            .await
            .expect("second on the same connection");
        assert_eq!(second.json()["body"], "hi");
        let head = conn
            .send(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("head");
        assert!(head.body.is_empty() && head.header("content-length").is_some());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sse_client_reads_events_with_timestamps() {
        let up = Upstream::start().await;
        let mut sse = SseClient::connect(
            up.addr,
            "/sse?events=3&interval_ms=100&crlf=1&then=close",
            &[("Last-Event-ID", "41")],
        )
        .await;
        assert_eq!(sse.status, 200);
        assert_eq!(sse.header("content-type"), Some("text/event-stream"));
        let resume = sse.read_event(IO_TIMEOUT).await.expect("resume block");
        assert_eq!(
            (
                event_field(&resume, "event"),
                event_data(&resume).as_deref()
            ),
            (Some("resume"), Some("41"))
        );
        let mut arrivals = Vec::new();
        for n in 1..=3u64 {
            let (event, at) = sse.read_event_at(IO_TIMEOUT).await.expect("event");
            assert_eq!(
                event_field(&event, "id"),
                Some(n.to_string().as_str()),
                "{event:?}"
            );
            let data = event_data(&event).expect("data");
            let ns: u64 = data
                .split(' ')
                .nth(1)
                .expect("stamp")
                .parse()
                .expect("number");
            let sent = up.stats.instant_of(ns);
            assert!(
                at >= sent && at - sent < Duration::from_secs(1),
                "latency {:?}",
                at - sent
            );
            arrivals.push(at);
        }
        // 100 ms apart at the upstream; a late first arrival shortens the gap it starts, so
        // the lower bound only shows that the events were not read as one batch.
        let gap = arrivals[2] - arrivals[1];
        assert!(
            gap >= Duration::from_millis(50) && gap < Duration::from_millis(600),
            "gap {gap:?}"
        );
        assert!(
            sse.wait_closed(IO_TIMEOUT).await,
            "then=close ends the stream"
        );
        assert!(sse.is_ended());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sse_client_sees_comments_and_closing_drops_the_upstream_stream() {
        let up = Upstream::start().await;
        let mut sse = SseClient::connect(up.addr, "/sse?events=1&comment_every_ms=30", &[]).await;
        sse.read_event(IO_TIMEOUT).await.expect("event 1");
        let comment = sse.next_chunk(IO_TIMEOUT).await.expect("comment");
        assert_eq!(comment.text(), ": upstream\n");
        let next = sse.next_chunk(IO_TIMEOUT).await.expect("another comment");
        assert!(
            next.at - comment.at >= Duration::from_millis(20),
            "cadence {:?}",
            next.at - comment.at
        );
        assert!(!sse.is_ended());
        assert_eq!(up.stats.open_streams(), 1);
        drop(sse);
        assert!(wait_until(Duration::from_secs(1), || up.stats.open_streams() == 0).await);
        assert_eq!(up.stats.closed_by_client(), 1);

        let mut refused = SseClient::connect(up.addr, "/sse?status=401", &[]).await;
        assert_eq!(refused.status, 401);
        let body = refused.read_to_end(IO_TIMEOUT).await;
        assert!(String::from_utf8_lossy(&body).contains("scripted status"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn ws_helper_sends_headers_and_echoes() {
        let up = Upstream::start().await;
        let (mut ws, resp) = ws_connect(
            up.addr,
            "/demo/ws",
            &[
                ("Origin", "https://app.example"),
                ("Authorization", "Bearer t"),
            ],
        )
        .await
        .expect("handshake");
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("ping?")).await.expect("send");
        assert_eq!(
            ws.next().await.expect("echo").expect("ok"),
            Message::text("ping?")
        );
        let headers = up.stats.last_ws_headers();
        assert!(
            headers.contains(&("authorization".into(), "Bearer t".into())),
            "{headers:?}"
        );
        assert!(
            headers.contains(&("origin".into(), "https://app.example".into())),
            "{headers:?}"
        );
        match ws_connect(up.addr, "/nope", &[]).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
            other => panic!(
                "expected a refused handshake, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    }

    #[test]
    fn minted_tokens_verify_with_the_test_secret() {
        let token = mint_token(
            "alice",
            &["admin"],
            60,
            serde_json::json!({ "tenant": "t1", "sub": "bob" }),
        );
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(TEST_SECRET.as_bytes()),
            &validation,
        )
        .expect("valid token");
        assert_eq!(data.claims["sub"], "bob", "extra claims override");
        assert_eq!(data.claims["roles"], serde_json::json!(["admin"]));
        assert_eq!(data.claims["tenant"], "t1");
        let exp = data.claims["exp"].as_i64().expect("exp");
        let iat = data.claims["iat"].as_i64().expect("iat");
        assert_eq!(exp - iat, 60);
        let expired = mint_token("alice", &[], -120, serde_json::Value::Null);
        assert!(jsonwebtoken::decode::<serde_json::Value>(
            &expired,
            &jsonwebtoken::DecodingKey::from_secret(TEST_SECRET.as_bytes()),
            &validation,
        )
        .is_err());
    }
}
