//! HTTP/2 towards clients: SSE streams multiplexed on one connection keep every protection they
//! have on HTTP/1.1, per stream; the connection's own limits and defences hold; browsers get h2
//! by ALPN while WebSocket stays on HTTP/1.1 on the same TLS port.
//!
//! Protocol tests use the `h2` crate over `listen.h2c` (prior knowledge, no TLS); TLS is checked
//! with `curl` and a real headless Chromium.

mod common;

use std::time::{Duration, Instant};

use common::chromium::Browser;
use common::h2::{End, H2Conn, H2Stream};
use common::*;
use serde_json::Value;

const USER: &str = "h2-user-5d1";

/// A proxy with prior-knowledge h2c on its plain listener, heartbeats every 300 ms.
fn h2c_config(upstream: &Upstream) -> ProxyConfig {
    ProxyConfig::new(upstream.addr)
        .section("listen", "h2c = true")
        .section("sse", "heartbeat = \"300ms\"")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn sse_headers(auth: &str) -> Vec<(&str, &str)> {
    vec![("accept", "text/event-stream"), ("authorization", auth)]
}

/// Reads units until one satisfies `want`; panics with what came instead.
async fn expect_unit(stream: &mut H2Stream, what: &str, want: impl Fn(&str) -> bool) -> String {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match stream.next_unit(Duration::from_millis(500)).await {
            Ok(Some(unit)) if want(&unit) => return unit,
            Ok(Some(unit)) => seen.push(unit),
            Ok(None) => {}
            Err(end) => panic!("stream ended ({end:?}) before {what}; saw {seen:?}"),
        }
    }
    panic!("no {what} within 5 s; saw {seen:?}")
}

fn is_heartbeat(unit: &str) -> bool {
    unit.starts_with(':')
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_streams_share_one_connection_and_a_reset_ends_only_its_own() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(h2c_config(&upstream)).await;
    let auth = bearer(&mint_token(USER, &["reader"], 600, Value::Null));
    let mut conn = H2Conn::connect(proxy.addr).await;
    let mut streams = Vec::new();
    for i in 0..20 {
        let path = format!("/sse?events=2&interval_ms=20&then=quiet&n={i}");
        let stream = conn.get(proxy.addr, &path, &sse_headers(&auth)).await;
        assert_eq!(stream.status, 200, "stream {i}");
        assert_eq!(
            stream
                .headers
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("")),
            Some("text/event-stream"),
        );
        assert!(stream.headers.get("connection").is_none());
        assert!(stream.headers.get("transfer-encoding").is_none());
        streams.push(stream);
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        for id in ["1", "2"] {
            let event = expect_unit(stream, &format!("event {id} on stream {i}"), |u| {
                event_field(u, "id") == Some(id)
            })
            .await;
            assert!(event_data(&event).is_some(), "{event}");
        }
        expect_unit(stream, &format!("a heartbeat on stream {i}"), is_heartbeat).await;
    }
    assert_eq!(
        metric_now(&proxy, "streamguard_http2_connections_total", &[]).await,
        1.0
    );
    assert_eq!(
        metric_now(&proxy, "streamguard_streams_active", &[("kind", "sse")]).await,
        20.0
    );
    assert_eq!(upstream.stats.open_streams(), 20);

    // A page closes one EventSource: RST_STREAM on that stream only.
    let reset_at = Instant::now();
    streams[7].reset();
    let left = metric_until(
        &proxy,
        "streamguard_streams_active",
        &[("kind", "sse")],
        Duration::from_secs(2),
        |v| v == 19.0,
    )
    .await;
    assert_eq!(left, 19.0, "the reset stream's slot is freed");
    assert!(
        wait_until(Duration::from_secs(2), || upstream.stats.open_streams()
            == 19)
        .await,
        "the app sees the end of that stream"
    );
    assert!(
        reset_at.elapsed() < Duration::from_secs(1),
        "freed at once: {:?}",
        reset_at.elapsed()
    );
    assert_eq!(
        metric_now(&proxy, "streamguard_http2_client_resets_total", &[]).await,
        1.0
    );
    assert_eq!(
        metric_now(
            &proxy,
            "streamguard_stream_closes_total",
            &[("kind", "sse"), ("reason", "client_gone")]
        )
        .await,
        1.0
    );
    // The others go on, each with its own heartbeats.
    for (i, stream) in streams.iter_mut().enumerate().filter(|(i, _)| *i != 7) {
        expect_unit(
            stream,
            &format!("a heartbeat on stream {i} after the reset"),
            is_heartbeat,
        )
        .await;
    }
    // Each stream's access line, with its status, when it ends.
    drop(streams);
    let lines = proxy.wait_access_lines(20).await;
    assert!(
        lines.iter().filter(|l| l["status"] == 200).count() >= 20,
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_ends_only_its_stream_with_the_expired_event_and_end_stream() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(h2c_config(&upstream)).await;
    let short = bearer(&mint_token(USER, &[], 2, Value::Null));
    let long = bearer(&mint_token(USER, &[], 600, Value::Null));
    let mut conn = H2Conn::connect(proxy.addr).await;
    let path = "/sse?events=1&then=quiet";
    let mut expiring = conn.get(proxy.addr, path, &sse_headers(&short)).await;
    let mut sibling = conn.get(proxy.addr, path, &sse_headers(&long)).await;
    assert_eq!((expiring.status, sibling.status), (200, 200));
    let (units, end) = expiring.read_to_end(Duration::from_secs(6)).await;
    assert_eq!(end, Some(End::Clean), "END_STREAM, not a reset: {units:?}");
    let last = units.last().cloned().unwrap_or_default();
    assert_eq!(
        event_field(&last, "event"),
        Some("streamguard.expired"),
        "{units:?}"
    );
    expect_unit(
        &mut sibling,
        "a heartbeat after the sibling expired",
        is_heartbeat,
    )
    .await;
    // Counted as the stream's task ends, a moment after END_STREAM went out.
    assert_metric(
        &proxy,
        "streamguard_stream_closes_total",
        &[("kind", "sse"), ("reason", "expired")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn evict_oldest_counts_http1_and_http2_streams_of_a_user_together() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(h2c_config(&upstream).section(
        "limits",
        "max_streams_per_user = 1\non_user_limit = \"evict_oldest\"",
    ))
    .await;
    let auth = bearer(&mint_token(USER, &[], 600, Value::Null));
    let path = "/sse?events=1&then=quiet";
    let mut h1 = SseClient::connect(proxy.addr, path, &[("Authorization", auth.as_str())]).await;
    assert_eq!(h1.status, 200);
    assert!(h1.read_event(Duration::from_secs(5)).await.is_some());

    let mut conn = H2Conn::connect(proxy.addr).await;
    let mut first = conn.get(proxy.addr, path, &sse_headers(&auth)).await;
    assert_eq!(first.status, 200);
    let body = String::from_utf8_lossy(&h1.read_to_end(Duration::from_secs(5)).await).into_owned();
    assert!(
        body.contains("event: streamguard.evicted"),
        "the HTTP/1.1 stream makes room: {body:?}"
    );
    expect_unit(&mut first, "the first h2 stream's event", |u| {
        event_field(u, "id") == Some("1")
    })
    .await;

    let mut second = conn.get(proxy.addr, path, &sse_headers(&auth)).await;
    assert_eq!(second.status, 200);
    let (units, end) = first.read_to_end(Duration::from_secs(5)).await;
    assert_eq!(end, Some(End::Clean), "{units:?}");
    assert_eq!(
        units.last().and_then(|u| event_field(u, "event")),
        Some("streamguard.evicted"),
        "{units:?}"
    );
    expect_unit(&mut second, "the newest stream's event", |u| {
        event_field(u, "id") == Some("1")
    })
    .await;
    assert_metric(&proxy, "streamguard_evictions_total", &[], 2.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_sends_goaway_and_ends_streams_at_event_boundaries() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(
        h2c_config(&upstream).section("server", "drain_delay = \"0s\"\ndrain_window = \"500ms\""),
    )
    .await;
    let auth = bearer(&mint_token(USER, &[], 600, Value::Null));
    let mut conn = H2Conn::connect(proxy.addr).await;
    // Events in flight all the time: the end must still fall between two of them.
    let path = "/sse?events=100000&interval_ms=5&size=40";
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(conn.get(proxy.addr, path, &sse_headers(&auth)).await);
    }
    let resp = proxy.post_admin("/drain").await;
    assert!(resp.status < 300, "{}", resp.text());
    for stream in &mut streams {
        // The window is 500 ms; the rest is room for a machine busy with other tests.
        let (units, end) = stream.read_to_end(Duration::from_secs(15)).await;
        assert_eq!(
            end,
            Some(End::Clean),
            "ended with END_STREAM after {} units, the last {:?}",
            units.len(),
            units.last()
        );
        let last = units.last().cloned().unwrap_or_default();
        assert!(last.starts_with("retry: "), "a retry hint last: {last:?}");
        // Every unit before it is whole: an id and its data.
        for unit in &units[..units.len() - 1] {
            if event_field(unit, "id").is_some() {
                assert!(event_data(unit).is_some_and(|d| d.len() >= 40), "{unit:?}");
            }
        }
    }
    assert_eq!(
        metric_now(
            &proxy,
            "streamguard_http2_goaways_total",
            &[("reason", "drain")]
        )
        .await,
        1.0
    );
    // No new stream on a connection that got GOAWAY.
    let refused = conn.try_get(proxy.addr, "/echo", &[]).await;
    assert!(refused.is_err(), "a new stream after GOAWAY was served");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_gets_one_cookie_field_and_host_from_the_authority() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(h2c_config(&upstream).section("auth", "mode = \"off\"")).await;
    let mut conn = H2Conn::connect(proxy.addr).await;
    // Plain requests go through Pingora's own path.
    let mut plain = conn
        .get(
            proxy.addr,
            "/echo?x=1",
            &[("cookie", "a=1"), ("cookie", "b=2")],
        )
        .await;
    assert_eq!(plain.status, 200);
    let echoed: Value = serde_json::from_str(&plain.text().await).expect("echo json");
    assert_eq!(echoed["headers"]["cookie"], "a=1; b=2", "{echoed}");
    assert_eq!(
        echoed["headers"]["host"],
        proxy.addr.to_string(),
        "{echoed}"
    );
    assert_eq!(echoed["target"], "/echo?x=1");
    // A relayed stream's request is written by the proxy itself.
    let stream = conn
        .get(
            proxy.addr,
            "/sse?events=1&then=close",
            &[
                ("accept", "text/event-stream"),
                ("cookie", "c=3"),
                ("cookie", "d=4"),
            ],
        )
        .await;
    assert_eq!(stream.status, 200);
    let recorded = upstream.stats.last_request("/sse").expect("the app got it");
    let cookies: Vec<_> = recorded
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("cookie"))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(cookies, ["c=3; d=4"]);
    let hosts: Vec<_> = recorded
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.clone())
        .collect();
    assert_eq!(hosts, [proxy.addr.to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_one_stream_loses_it_and_its_siblings_carry_on() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(
        h2c_config(&upstream).section("sse", "write_timeout = \"1s\"\nclient_buffer = \"1MiB\""),
    )
    .await;
    let auth = bearer(&mint_token(USER, &[], 600, Value::Null));
    // A large connection window: only the stalled stream's own window (64 KiB) runs out.
    let mut builder = ::h2::client::Builder::new();
    builder.initial_connection_window_size(64 << 20);
    let mut conn = H2Conn::connect_with(proxy.addr, builder).await;
    let busy = "/sse?events=100000&interval_ms=2&size=1000";
    let mut stalled = conn.get(proxy.addr, busy, &sse_headers(&auth)).await;
    let mut sibling = conn
        .get(
            proxy.addr,
            "/sse?events=100000&interval_ms=100",
            &sse_headers(&auth),
        )
        .await;
    let started = Instant::now();
    // The stalled stream is never read; the sibling is, and keeps getting events meanwhile.
    let mut sibling_events = 0;
    while started.elapsed() < Duration::from_secs(4) {
        if let Ok(Some(unit)) = sibling.next_unit(Duration::from_millis(300)).await {
            sibling_events += usize::from(event_field(&unit, "id").is_some());
        }
        let closed = metric_now(
            &proxy,
            "streamguard_stream_closes_total",
            &[("kind", "sse"), ("reason", "slow_client")],
        )
        .await;
        if closed == 1.0 && sibling_events >= 10 {
            break;
        }
    }
    assert_eq!(
        metric_now(
            &proxy,
            "streamguard_stream_closes_total",
            &[("kind", "sse"), ("reason", "slow_client")]
        )
        .await,
        1.0,
        "the stalled stream closes as slow_client after write_timeout"
    );
    assert!(
        sibling_events >= 10,
        "the sibling got {sibling_events} events"
    );
    // The stalled stream was reset (its data was cut), not ended cleanly.
    let (_, end) = stalled.read_to_end(Duration::from_secs(5)).await;
    assert!(matches!(end, Some(End::Reset(_))), "{end:?}");
    expect_unit(&mut sibling, "the sibling's next event", |u| {
        event_field(u, "id").is_some()
    })
    .await;

    // A client that grants no flow-control credit at all (SETTINGS_INITIAL_WINDOW_SIZE 0): the
    // head goes out, no event can, and the stream closes as slow_client after write_timeout.
    // Every stream of that connection is in the same state: that window is the client's own
    // setting for all of them.
    let mut builder = ::h2::client::Builder::new();
    builder.initial_window_size(0);
    let mut frozen_conn = H2Conn::connect_with(proxy.addr, builder).await;
    let mut frozen = frozen_conn
        .get(proxy.addr, "/sse?events=1&then=quiet", &sse_headers(&auth))
        .await;
    assert_eq!(frozen.status, 200);
    let opened = Instant::now();
    let (units, end) = frozen.read_to_end(Duration::from_secs(5)).await;
    assert!(units.is_empty(), "{units:?}");
    assert!(matches!(end, Some(End::Reset(_))), "{end:?}");
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?} (write_timeout 1s)"
    );
    assert_eq!(
        metric_until(
            &proxy,
            "streamguard_stream_closes_total",
            &[("kind", "sse"), ("reason", "slow_client")],
            Duration::from_secs(2),
            |v| v == 2.0,
        )
        .await,
        2.0
    );
    expect_unit(&mut sibling, "the sibling's event after that", |u| {
        event_field(u, "id").is_some()
    })
    .await;
}

/// One HTTP/2 frame on the wire.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_and_continuation_floods_leave_the_proxy_serving_others_in_bounded_memory() {
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(h2c_config(&upstream)).await;
    let auth = bearer(&mint_token(USER, &[], 600, Value::Null));
    let mut bystander_conn = H2Conn::connect(proxy.addr).await;
    let mut bystander = bystander_conn
        .get(proxy.addr, "/sse?events=1&then=quiet", &sse_headers(&auth))
        .await;
    let rss_before = rss_kib(proxy.pid());

    // Rapid reset: open a stream and reset it at once, as fast as the connection allows.
    let flood = 5_000;
    let mut attacker = H2Conn::connect(proxy.addr).await;
    let started = Instant::now();
    let mut sent = 0;
    while sent < flood && started.elapsed() < Duration::from_secs(10) {
        match attacker
            .open(proxy.addr, "/sse?events=1&then=quiet", &sse_headers(&auth))
            .await
        {
            Ok((_, mut send)) => send.send_reset(::h2::Reason::CANCEL),
            // The proxy (the `h2` codec) ended the connection: the defence held.
            Err(_) => break,
        }
        sent += 1;
    }
    let upstream_hits = upstream.stats.hits("/sse");
    assert!(
        upstream_hits < 1 + sent / 2,
        "{upstream_hits} of {sent} reset streams reached the app"
    );

    // CONTINUATION flood: a header block that never ends, 16 KiB at a time.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    // HEADERS without END_HEADERS: `:method GET` (indexed), then a literal header.
    let mut literal = vec![0x82, 0x00, 0x01, b'x', 0x7f];
    let value_len = 16_000usize - 127;
    let mut n = value_len;
    while n >= 128 {
        literal.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    literal.push(n as u8);
    literal.extend(std::iter::repeat_n(b'a', value_len));
    hello.extend(frame(0x1, 0, 1, &literal));
    let _ = raw.write_all(&hello).await;
    let continuation = frame(0x9, 0, 1, &literal[1..]);
    let mut pushed = 0usize;
    let flood_started = Instant::now();
    while pushed < 64 << 20 && flood_started.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(Duration::from_secs(1), raw.write_all(&continuation)).await {
            Ok(Ok(())) => pushed += continuation.len(),
            _ => break,
        }
    }
    assert!(
        pushed < 64 << 20,
        "the proxy read 64 MiB of one header block without closing the connection"
    );

    // Others are still served, on their open stream and on a new connection.
    expect_unit(&mut bystander, "a heartbeat after the floods", is_heartbeat).await;
    let mut newcomer = H2Conn::connect(proxy.addr).await;
    let mut fresh = newcomer
        .get(proxy.addr, "/sse?events=1&then=quiet", &sse_headers(&auth))
        .await;
    assert_eq!(fresh.status, 200);
    expect_unit(&mut fresh, "a new stream's event", |u| {
        event_field(u, "id").is_some()
    })
    .await;
    let rss_after = rss_kib(proxy.pid());
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB after {sent} resets and {pushed} \
         bytes of CONTINUATION"
    );
    println!(
        "rapid reset: {sent} streams sent, {upstream_hits} reached the app; CONTINUATION: \
         {pushed} bytes taken before the connection closed; RSS {rss_before} -> {rss_after} KiB"
    );
}

fn curl(args: &[&str]) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "3"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_gets_h2_over_tls_and_websocket_keeps_http1_on_the_same_port() {
    let dir = tempfile::tempdir().expect("dir");
    let certificate = Certificate::issue(dir.path(), "127.0.0.1");
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(
        ProxyConfig::new(upstream.addr)
            .section("listen", &certificate.listen_keys())
            .section("sse", "heartbeat = \"300ms\""),
    )
    .await;
    let auth = format!(
        "Authorization: Bearer {}",
        mint_token(USER, &[], 600, Value::Null)
    );
    let base = format!("https://{}", proxy.addr);
    let sse = format!("{base}/sse?events=2&then=quiet");
    let out = tokio::task::spawn_blocking({
        let auth = auth.clone();
        move || {
            let accept = "Accept: text/event-stream";
            curl(&["--http2", "-i", "-N", "-H", &auth, "-H", accept, &sse])
        }
    })
    .await
    .expect("curl");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(
        out.contains("data: 1 ") && out.contains("data: 2 "),
        "{out}"
    );
    assert!(out.contains("\n: "), "a heartbeat: {out}");
    let ws = format!("{base}/ws");
    let out = tokio::task::spawn_blocking(move || {
        curl(&[
            "--http1.1",
            "-i",
            "-N",
            "-H",
            &auth,
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            &ws,
        ])
    })
    .await
    .expect("curl");
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
    assert_eq!(
        metric_now(&proxy, "streamguard_http2_connections_total", &[]).await,
        1.0
    );
}

/// A page of the proxy's origin in a fresh headless Chromium that trusts the test certificate:
/// it swaps a bearer token for the session cookie, opens ten `EventSource`s with it, and counts
/// the events each one gets. The counts after `wait` and the SSE streams open then, the proxy,
/// and its upstream.
async fn ten_event_sources(http2: bool, wait: Duration) -> ((Vec<u64>, f64), Proxy, Upstream) {
    let dir = tempfile::tempdir().expect("dir");
    let certificate = Certificate::issue(dir.path(), "127.0.0.1");
    let upstream = Upstream::start().await;
    let config = ProxyConfig::new(upstream.addr).section("listen", &certificate.listen_keys());
    let origin = format!("https://{}", config.listen());
    let proxy = Proxy::start_with(
        config
            .section("cors", &format!("allowed_origins = [\"{origin}\"]"))
            .section("http2", &format!("enabled = {http2}"))
            .route("path = \"/demo/page\"\nauth = \"off\""),
    )
    .await;
    let token = mint_token(USER, &[], 600, Value::Null);
    let mut browser = Browser::start(&[&format!(
        "--ignore-certificate-errors-spki-list={}",
        certificate.spki()
    )])
    .await;
    let page = browser.open(&format!("{origin}/demo/page")).await;
    browser
        .wait_for(
            &page,
            &format!("location.origin === '{origin}' && document.readyState === 'complete'"),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|v| panic!("the page did not load: {v}"));
    let script = format!(
        "(async () => {{
            const r = await fetch('/_streamguard/session', {{
                method: 'POST', headers: {{ Authorization: 'Bearer {token}' }} }});
            window.got = Array(10).fill(0);
            for (let i = 0; i < 10; i++) {{
                const es = new EventSource('/sse?events=3&interval_ms=100&then=quiet&i=' + i,
                    {{ withCredentials: true }});
                es.onmessage = () => {{ window.got[i]++; }};
            }}
            return r.status;
        }})()"
    );
    assert_eq!(browser.eval(&page, &script).await, Value::from(204));
    let _ = browser
        .wait_for(&page, "window.got.every(n => n >= 3)", wait)
        .await;
    let got = browser.eval(&page, "window.got").await;
    let counts = got
        .as_array()
        .map(|a| a.iter().map(|n| n.as_u64().unwrap_or(0)).collect())
        .unwrap_or_default();
    let open = metric_now(&proxy, "streamguard_streams_active", &[("kind", "sse")]).await;
    browser.close(page).await;
    ((counts, open), proxy, upstream)
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_opens_ten_event_sources_on_one_origin_over_h2_with_the_session_cookie() {
    let ((counts, open), proxy, upstream) = ten_event_sources(true, Duration::from_secs(10)).await;
    assert!(
        counts.len() == 10 && counts.iter().all(|n| *n >= 3),
        "{counts:?}"
    );
    assert_eq!(open, 10.0);
    assert!(
        metric_now(&proxy, "streamguard_http2_streams_total", &[]).await >= 11.0,
        "the page, the session and ten streams went over h2"
    );
    assert_eq!(
        metric_now(&proxy, "streamguard_http2_connections_total", &[]).await,
        1.0,
        "one connection carries them all"
    );
    // No token in any URL the app saw: the cookie carried it, and it was forwarded as a header.
    let seen = upstream
        .stats
        .last_request("/sse")
        .expect("the app got them");
    assert!(!seen.target.contains("token"), "{}", seen.target);
    assert!(
        seen.header("authorization")
            .is_some_and(|v| v.starts_with("Bearer ")),
        "{:?}",
        seen.headers
    );
}

/// The same page with h2 off: HTTP/1.1 gives an origin six connections, and each
/// `EventSource` holds one.
#[tokio::test(flavor = "multi_thread")]
async fn over_http1_the_same_page_gets_only_six_event_sources() {
    let ((counts, open), proxy, _upstream) = ten_event_sources(false, Duration::from_secs(3)).await;
    let served = counts.iter().filter(|n| **n > 0).count();
    assert_eq!(served, 6, "{counts:?}");
    assert_eq!(open, 6.0);
    assert_eq!(
        metric_now(&proxy, "streamguard_http2_connections_total", &[]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_per_connection_are_capped_and_only_a_connection_without_any_goes_idle() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(
        h2c_config(&upstream).section("http2", "max_concurrent_streams = 3\nidle_timeout = \"1s\""),
    )
    .await;
    let auth = bearer(&mint_token(USER, &[], 600, Value::Null));
    let path = "/sse?events=1&then=quiet";
    let mut busy = H2Conn::connect(proxy.addr).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(busy.get(proxy.addr, path, &sse_headers(&auth)).await);
    }
    assert_eq!(busy.send.current_max_send_streams(), 3);
    assert!(
        !busy.send.is_extended_connect_protocol_enabled(),
        "no WebSocket over HTTP/2 (RFC 8441) is advertised"
    );
    // A fourth waits for a slot: the three relayed streams hold theirs.
    let (fourth, _send) = busy
        .open(proxy.addr, path, &sse_headers(&auth))
        .await
        .expect("queued");
    tokio::pin!(fourth);
    let early = tokio::time::timeout(Duration::from_millis(700), &mut fourth).await;
    assert!(early.is_err(), "a fourth stream was served at once");
    streams[0].reset();
    let late = tokio::time::timeout(Duration::from_secs(5), &mut fourth).await;
    let last_opened = Instant::now();
    assert!(
        matches!(late, Ok(Ok(ref r)) if r.status() == 200),
        "the reset freed a slot: {late:?}"
    );

    // A connection with no stream gets GOAWAY after idle_timeout (checked every half of it);
    // the one carrying only relayed SSE streams stays.
    let idle = H2Conn::connect(proxy.addr).await;
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(4), || idle.driver.is_finished()).await,
        "the idle connection was not closed"
    );
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed too early: {closed_after:?}"
    );
    // Well past idle_timeout, its check period and the grace after a GOAWAY: the connection
    // whose only streams are relayed ones is still there.
    tokio::time::sleep_until((last_opened + Duration::from_millis(3600)).into()).await;
    assert!(!busy.driver.is_finished(), "the busy connection was closed");
    expect_unit(
        &mut streams[1],
        "a heartbeat on the busy connection",
        is_heartbeat,
    )
    .await;
    assert_eq!(
        metric_now(
            &proxy,
            "streamguard_http2_goaways_total",
            &[("reason", "idle")]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_keeps_sending_malformed_requests_is_ended() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(h2c_config(&upstream).section("auth", "mode = \"off\"")).await;
    let mut conn = H2Conn::connect(proxy.addr).await;
    // `Host` naming another authority than `:authority`: refused (400) before the proxy sees it.
    let conflicting = [("host", "elsewhere.example")];
    let mut answered = 0;
    for _ in 0..40 {
        match conn.try_get(proxy.addr, "/echo", &conflicting).await {
            Ok(stream) => {
                assert_eq!(stream.status, 400);
                answered += 1;
            }
            Err(_) => break,
        }
    }
    assert!(
        (31..40).contains(&answered),
        "{answered} malformed requests answered on one connection"
    );
    assert!(
        wait_until(Duration::from_secs(4), || conn.driver.is_finished()).await,
        "the connection was not ended"
    );
    assert_eq!(
        metric_now(
            &proxy,
            "streamguard_http2_goaways_total",
            &[("reason", "malformed")]
        )
        .await,
        1.0
    );
    assert_eq!(upstream.stats.hits("/echo"), 0);
    // Others are served.
    let mut other = H2Conn::connect(proxy.addr).await;
    assert_eq!(other.get(proxy.addr, "/echo", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_and_token_lifting_hold_for_streams_over_h2() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(
        h2c_config(&upstream).section("cors", "allowed_origins = [\"https://app.example\"]"),
    )
    .await;
    let token = mint_token(USER, &[], 600, Value::Null);
    let mut conn = H2Conn::connect(proxy.addr).await;
    let accept = ("accept", "text/event-stream");
    let refused = conn
        .get(
            proxy.addr,
            &format!("/sse?events=1&then=quiet&token={token}"),
            &[accept, ("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(refused.status, 403);
    let unauthenticated = conn.get(proxy.addr, "/sse?events=1", &[accept]).await;
    assert_eq!(unauthenticated.status, 401);
    assert_eq!(upstream.stats.hits("/sse"), 0);

    let mut stream = conn
        .get(
            proxy.addr,
            &format!("/sse?events=1&then=quiet&token={token}"),
            &[accept, ("origin", "https://app.example")],
        )
        .await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream
            .headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
    assert_eq!(
        stream
            .headers
            .get("referrer-policy")
            .and_then(|v| v.to_str().ok()),
        Some("no-referrer")
    );
    expect_unit(&mut stream, "the event", |u| event_field(u, "id").is_some()).await;
    let seen = upstream.stats.last_request("/sse").expect("the app got it");
    assert!(!seen.target.contains("token"), "{}", seen.target);
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    let lines = proxy.access_lines();
    assert!(
        lines.iter().all(|l| !l.to_string().contains(&token)),
        "the token reached an access line"
    );
}
