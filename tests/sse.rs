//! SSE stream supervision end to end: the real `streamguard` binary between a raw SSE client
//! and the demo upstream's scriptable `/sse` endpoint. Heartbeats, staleness, token expiry,
//! retry hints, oversize events, slow and vanished clients, POST streams, Last-Event-ID,
//! SIGTERM draining, non-stream answers, and a real EventSource client library.
//!
//! Timings use short intervals (`heartbeat = "1s"`, `stale_after = "2s"`) so the whole binary
//! stays quick; bounds are generous where scheduling on shared cores can add latency, and
//! tight where the behaviour itself is the point (heartbeat cadence ±20 %).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    event_data, event_field, get, metric, mint_token, request_head, rss_kib, split_event,
    wait_metrics, wait_until, Proxy, ProxyConfig, SseClient, Upstream, IO_TIMEOUT, TEST_SECRET,
};
use futures_util::StreamExt;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A proxy config with auth off (these tests are about the relay) and `sse` as the `[sse]` table.
fn config(up: &Upstream, sse: &str) -> ProxyConfig {
    ProxyConfig::new(up.addr)
        .section("auth", "mode = \"off\"")
        .section("sse", sse)
}

async fn start(up: &Upstream, sse: &str) -> Proxy {
    launch(config(up, sse)).await
}

/// Starts the proxy and waits until its public port accepts connections too: the harness
/// waits for the admin `/livez`, and Pingora binds the proxy listener a moment after the admin
/// one, so an early request could be refused.
async fn launch(config: ProxyConfig) -> Proxy {
    let proxy = Proxy::start_with(config).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(proxy.addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the proxy port {} never accepted connections",
            proxy.addr
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy
}

/// Splits a body into its blank-line-terminated blocks, and what is left after the last one.
fn blocks(body: &[u8]) -> (Vec<String>, String) {
    let mut buf = body.to_vec();
    let mut out = Vec::new();
    while let Some(block) = split_event(&mut buf) {
        out.push(block);
    }
    (out, String::from_utf8_lossy(&buf).into_owned())
}

/// Every body byte until the stream ends; panics if it is still open after `timeout`.
/// Returns the bytes and (about) when the end was seen.
async fn read_until_end(sse: &mut SseClient, timeout: Duration) -> (Vec<u8>, Instant) {
    let deadline = Instant::now() + timeout;
    let mut body = Vec::new();
    while let Some(chunk) = sse
        .next_chunk(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        body.extend(chunk.data);
    }
    let ended_at = Instant::now();
    assert!(
        sse.is_ended(),
        "stream still open after {timeout:?}; got so far: {:?}",
        String::from_utf8_lossy(&body)
    );
    (body, ended_at)
}

/// Every body byte that arrives within `window` (the stream must stay open meanwhile).
async fn read_for(sse: &mut SseClient, window: Duration) -> Vec<u8> {
    let deadline = Instant::now() + window;
    let mut body = Vec::new();
    while let Some(chunk) = sse
        .next_chunk(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        body.extend(chunk.data);
    }
    assert!(
        !sse.is_ended(),
        "stream ended early; got: {:?}",
        String::from_utf8_lossy(&body)
    );
    body
}

/// `streamguard_stream_closes_total{kind="sse",reason}` (0 when absent).
fn sse_closes(text: &str, reason: &str) -> f64 {
    metric(
        text,
        "streamguard_stream_closes_total",
        &[("kind", "sse"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

/// `retry: N` → N.
fn retry_ms(block: &str) -> Option<u64> {
    block.strip_prefix("retry: ")?.parse().ok()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_else(|e| panic!("clock before 1970: {e}"))
}

/// A raw POST stream request with `body`.
fn post_stream(addr: SocketAddr, target: &str, headers: &[(&str, &str)], body: &str) -> String {
    let length = body.len().to_string();
    let mut all = headers.to_vec();
    all.push(("Content-Length", length.as_str()));
    request_head(
        "POST",
        addr,
        target,
        &[("Accept", "text/event-stream")],
        &all,
    ) + body
}

// ---------------------------------------------------------------------------------------------
// 1. Heartbeats

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_keep_a_quiet_stream_alive_at_the_configured_cadence() {
    let up = Upstream::start().await;
    let proxy = start(&up, "heartbeat = \"1s\"\nstale_after = \"0s\"").await;
    let mut sse = SseClient::connect(proxy.addr, "/sse?events=1", &[]).await;
    assert_eq!(sse.status, 200);
    let (event, mut last) = sse.read_event_at(IO_TIMEOUT).await.expect("event 1");
    assert_eq!(event_field(&event, "id"), Some("1"), "{event:?}");

    // The upstream is silent from here on: every block now is a proxy heartbeat, one a second
    // after the previous write.
    let mut gaps = Vec::new();
    for _ in 0..5 {
        let (block, at) = sse
            .read_event_at(Duration::from_secs(3))
            .await
            .expect("a heartbeat within 3 s");
        assert_eq!(block, ": ping");
        gaps.push(at - last);
        last = at;
    }
    for gap in &gaps {
        assert!(
            (Duration::from_millis(800)..=Duration::from_millis(1200)).contains(gap),
            "heartbeat gaps {gaps:?} not within 1 s ± 20 %"
        );
    }
    // The counter moves just after each write, so the client can be a moment ahead of it.
    let text = wait_metrics(&proxy, "5 heartbeats", |t| {
        metric(t, "streamguard_heartbeats_total", &[]) >= Some(5.0)
    })
    .await;
    let beats = metric(&text, "streamguard_heartbeats_total", &[]).expect("heartbeat metric");
    // A sixth may just have been sent while the scrape was on its way.
    assert!((5.0..=6.0).contains(&beats), "heartbeats_total = {beats}");
    assert_eq!(
        metric(&text, "streamguard_sse_events_total", &[]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_heartbeat_while_events_flow_faster_than_the_interval() {
    let up = Upstream::start().await;
    let proxy = start(&up, "heartbeat = \"1s\"\nstale_after = \"0s\"").await;
    let mut sse = SseClient::connect(proxy.addr, "/sse?events=10&interval_ms=300", &[]).await;
    let mut last = Instant::now();
    for n in 1..=10 {
        let (block, at) = sse.read_event_at(IO_TIMEOUT).await.expect("event");
        assert_eq!(
            event_field(&block, "id"),
            Some(n.to_string().as_str()),
            "only upstream events while they come every 300 ms, got {block:?}"
        );
        last = at;
    }
    // Once the upstream goes quiet the heartbeat does come, a second after the last event:
    // the silence above was the events' doing, not heartbeats being off.
    let (block, at) = sse
        .read_event_at(Duration::from_secs(3))
        .await
        .expect("a heartbeat after the events");
    assert_eq!(block, ": ping");
    let gap = at - last;
    assert!(
        (Duration::from_millis(800)..=Duration::from_millis(1200)).contains(&gap),
        "first heartbeat {gap:?} after the last event"
    );
    let text = wait_metrics(&proxy, "the heartbeat counted", |t| {
        metric(t, "streamguard_heartbeats_total", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(
        metric(&text, "streamguard_sse_events_total", &[]),
        Some(10.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_comments_reset_the_heartbeat_timer() {
    let up = Upstream::start().await;
    let proxy = start(&up, "heartbeat = \"1s\"\nstale_after = \"0s\"").await;
    let mut sse = SseClient::connect(proxy.addr, "/sse?events=1&comment_every_ms=500", &[]).await;
    sse.read_event(IO_TIMEOUT).await.expect("event 1");
    let body =
        String::from_utf8(read_for(&mut sse, Duration::from_millis(3200)).await).expect("utf-8");
    // The upstream's own comments reach the client every 500 ms, so the client is never
    // silent for a whole second and the proxy has no reason to add a heartbeat.
    assert!(
        body.matches(": upstream\n").count() >= 5,
        "upstream comments should pass through: {body:?}"
    );
    assert!(
        !body.contains("ping"),
        "no proxy heartbeat expected: {body:?}"
    );
    let text = proxy.metrics().await;
    assert_eq!(
        metric(&text, "streamguard_heartbeats_total", &[]),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_zero_is_off_and_a_route_can_set_its_own_interval_and_comment() {
    let up = Upstream::start().await;
    let proxy = launch(
        config(&up, "heartbeat = \"0s\"\nstale_after = \"0s\"").route(
            "path = \"/demo/events\"\n\
             sse = { heartbeat = \"1500ms\", heartbeat_comment = \"keepalive streamguard\" }",
        ),
    )
    .await;

    let quiet = async {
        let mut sse = SseClient::connect(proxy.addr, "/sse?events=1", &[]).await;
        sse.read_event(IO_TIMEOUT).await.expect("event 1");
        let body = read_for(&mut sse, Duration::from_millis(2500)).await;
        assert!(
            body.is_empty(),
            "heartbeat = \"0s\" must send nothing, got {:?}",
            String::from_utf8_lossy(&body)
        );
    };
    let custom = async {
        // /demo/events: three events a second apart, then silence. The route's 1.5 s
        // interval is longer than the gaps, so the first heartbeat follows the third event.
        let mut sse = SseClient::connect(proxy.addr, "/demo/events", &[]).await;
        let mut last = Instant::now();
        for _ in 0..3 {
            let (event, at) = sse.read_event_at(IO_TIMEOUT).await.expect("demo event");
            assert!(
                event_data(&event).is_some(),
                "events only while they flow: {event:?}"
            );
            last = at;
        }
        let (block, at) = sse
            .read_event_at(Duration::from_secs(3))
            .await
            .expect("route heartbeat");
        assert_eq!(block, ": keepalive streamguard");
        let gap = at - last;
        assert!(
            (Duration::from_millis(1200)..=Duration::from_millis(1800)).contains(&gap),
            "route heartbeat {gap:?} after the last event, want 1.5 s ± 20 %"
        );
    };
    tokio::join!(quiet, custom);
}

// ---------------------------------------------------------------------------------------------
// 2. Half-sent events

#[tokio::test(flavor = "multi_thread")]
async fn a_half_sent_event_is_never_seen_partially_and_heartbeats_still_flow() {
    let up = Upstream::start().await;
    let proxy = start(&up, "heartbeat = \"1s\"\nstale_after = \"0s\"").await;
    // Events 1 and 2 whole, then the first half of event 3, then nothing.
    let mut sse = SseClient::connect(proxy.addr, "/sse?events=3&half_after=2", &[]).await;
    let body = read_for(&mut sse, Duration::from_millis(2500)).await;
    let (blocks, rest) = blocks(&body);
    assert_eq!(
        rest,
        "",
        "the client holds a partial unit: {:?}",
        String::from_utf8_lossy(&body)
    );
    let ids: Vec<Option<&str>> = blocks.iter().map(|b| event_field(b, "id")).collect();
    assert_eq!(&ids[..2], &[Some("1"), Some("2")], "{blocks:?}");
    let beats = &blocks[2..];
    // Two heartbeats in 2.5 s: the half event in the proxy did not stop them, and each was
    // sent at an event boundary on the client side.
    assert!(
        (2..=3).contains(&beats.len()) && beats.iter().all(|b| b == ": ping"),
        "after the whole events only heartbeats may arrive: {blocks:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_sent_event_is_discarded_when_the_upstream_goes_stale() {
    let up = Upstream::start().await;
    let proxy = start(&up, "heartbeat = \"1s\"\nstale_after = \"2s\"").await;
    let mut sse = SseClient::connect(proxy.addr, "/sse?events=3&half_after=2", &[]).await;
    let (body, _) = read_until_end(&mut sse, Duration::from_secs(6)).await;
    assert!(
        sse.body_complete(),
        "the stream must end with the chunked terminator"
    );
    let (blocks, rest) = blocks(&body);
    assert_eq!(
        rest,
        "",
        "partial unit forwarded: {:?}",
        String::from_utf8_lossy(&body)
    );
    let events: Vec<&String> = blocks.iter().filter(|b| !b.starts_with(':')).collect();
    assert_eq!(events.len(), 2, "only the two whole events: {blocks:?}");
    assert!(
        !String::from_utf8_lossy(&body).contains("id: 3"),
        "the half event leaked: {blocks:?}"
    );
    // The stream leaves the active gauge last, after its close is counted.
    let text = wait_metrics(&proxy, "a stale close", |t| {
        sse_closes(t, "stale") == 1.0
            && metric(t, "streamguard_streams_active", &[("kind", "sse")]) == Some(0.0)
    })
    .await;
    assert_eq!(
        metric(&text, "streamguard_sse_events_total", &[]),
        Some(2.0)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Stale upstream

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_upstream_ends_the_stream_cleanly_and_releases_the_upstream() {
    let up = Upstream::start().await;
    let proxy = start(&up, "heartbeat = \"1s\"\nstale_after = \"2s\"").await;
    let mut sse = SseClient::connect(proxy.addr, "/sse?events=1", &[]).await;
    let (event, event_at) = sse.read_event_at(IO_TIMEOUT).await.expect("event 1");
    assert_eq!(event_field(&event, "id"), Some("1"));
    let head_and_first = event.len() + 2;
    assert_eq!(up.stats.open_streams(), 1);

    // Proxy heartbeats keep the client side busy; they must not count as upstream activity.
    let (rest, ended_at) = read_until_end(&mut sse, Duration::from_secs(6)).await;
    assert!(
        sse.body_complete(),
        "a stale close ends the body with its chunked terminator"
    );
    let quiet_for = ended_at - event_at;
    assert!(
        (Duration::from_millis(1800)..=Duration::from_millis(2800)).contains(&quiet_for),
        "stream ended {quiet_for:?} after the upstream's last byte, want ~2 s"
    );
    let (tail, partial) = blocks(&rest);
    assert_eq!(partial, "");
    assert!(tail.iter().all(|b| b == ": ping"), "{tail:?}");
    assert!(
        wait_until(Duration::from_secs(1), || up.stats.open_streams() == 0).await,
        "the proxy must close the upstream connection of a stale stream"
    );

    // The stream leaves the active gauge last, after its close is counted.
    let text = wait_metrics(&proxy, "a stale close", |t| {
        sse_closes(t, "stale") == 1.0
            && metric(t, "streamguard_streams_active", &[("kind", "sse")]) == Some(0.0)
    })
    .await;
    assert_eq!(
        metric(&text, "streamguard_sse_events_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "streamguard_heartbeats_total", &[]),
        Some(tail.len() as f64),
        "one heartbeat counted per heartbeat sent"
    );
    // Every body byte the client got (event, heartbeats) is counted, and nothing else.
    let sent = head_and_first + rest.len();
    assert_eq!(
        metric(
            &text,
            "streamguard_relayed_bytes_total",
            &[("kind", "sse"), ("direction", "to_client")]
        ),
        Some(sent as f64)
    );
    assert_eq!(
        metric(
            &text,
            "streamguard_stream_duration_seconds_count",
            &[("kind", "sse")]
        ),
        Some(1.0)
    );
    let lasted = metric(
        &text,
        "streamguard_stream_duration_seconds_sum",
        &[("kind", "sse")],
    )
    .expect("duration sum");
    assert!(
        (1.8..3.5).contains(&lasted),
        "stream lasted {lasted} s by the histogram"
    );
    assert_eq!(
        metric(&text, "streamguard_streams_active", &[("kind", "sse")]),
        Some(0.0)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Token expiry

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_with_an_expired_event_when_the_token_expires() {
    let up = Upstream::start().await;
    // A generous leeway: it lets a just-expired token in, but must not delay the close.
    let proxy = launch(
        ProxyConfig::new(up.addr)
            .section(
                "auth",
                "mode = \"required\"\nclose_on_expiry = true\nleeway = \"30s\"",
            )
            .section("sse", "heartbeat = \"0s\"\nstale_after = \"0s\""),
    )
    .await;
    let token = mint_token("alice", &[], 2, serde_json::Value::Null);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(TEST_SECRET.as_bytes()),
        &validation,
    )
    .expect("our own token")
    .claims;
    let exp = claims["exp"].as_f64().expect("exp");

    let bearer = format!("Bearer {token}");
    let mut sse =
        SseClient::connect(proxy.addr, "/sse?events=1", &[("Authorization", &bearer)]).await;
    assert_eq!(sse.status, 200);
    sse.read_event(IO_TIMEOUT).await.expect("event 1");
    let (last, _) = sse
        .read_event_at(Duration::from_secs(5))
        .await
        .expect("the expiry event");
    let at = unix_now();
    assert_eq!(
        (event_field(&last, "event"), event_data(&last).as_deref()),
        (
            Some("streamguard.expired"),
            Some(r#"{"reason":"token_expired"}"#)
        ),
        "{last:?}"
    );
    // `exp` has whole-second precision: the close is due at `exp`, not at `exp + leeway`.
    assert!(
        at >= exp - 0.05 && at <= exp + 1.5,
        "expired event at unix {at:.3}, token exp {exp}"
    );
    let (after, _) = read_until_end(&mut sse, Duration::from_secs(2)).await;
    assert!(
        after.is_empty(),
        "nothing after the expiry event: {after:?}"
    );
    assert!(sse.body_complete());
    wait_metrics(&proxy, "an expired close", |t| {
        sse_closes(t, "expired") == 1.0
    })
    .await;
    assert!(wait_until(Duration::from_secs(1), || up.stats.open_streams() == 0).await);
}

// ---------------------------------------------------------------------------------------------
// 5. Retry hint

#[tokio::test(flavor = "multi_thread")]
async fn every_stream_starts_with_a_jittered_retry_hint() {
    let up = Upstream::start().await;
    let proxy = start(&up, "retry = \"3s\"\nretry_jitter = 0.5").await;
    let mut hints = Vec::new();
    for _ in 0..100 {
        let mut sse = SseClient::connect(proxy.addr, "/sse?events=1&then=close", &[]).await;
        let first = sse.next_chunk(IO_TIMEOUT).await.expect("first bytes");
        let text = first.text();
        let block = text.split("\n\n").next().unwrap_or_default();
        let ms = retry_ms(block)
            .unwrap_or_else(|| panic!("stream does not start with `retry: N`: {text:?}"));
        hints.push(ms);
    }
    assert!(
        hints.iter().all(|ms| (1500..=4500).contains(ms)),
        "hints outside 3 s ± 50 %: {hints:?}"
    );
    let mut distinct = hints.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let mean = hints.iter().sum::<u64>() as f64 / hints.len() as f64;
    let var = hints
        .iter()
        .map(|&h| (h as f64 - mean).powi(2))
        .sum::<f64>()
        / hints.len() as f64;
    // Uniform over 1500..=4500 has a standard deviation of ~866 ms.
    assert!(
        distinct.len() >= 20 && var.sqrt() > 300.0,
        "hints are not spread: {} distinct, stddev {:.0}: {hints:?}",
        distinct.len(),
        var.sqrt()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_retry_configured_no_retry_field_is_added() {
    let up = Upstream::start().await;
    let proxy = start(&up, "retry_jitter = 0.5").await;
    let mut sse = SseClient::connect(proxy.addr, "/sse?events=2&then=close", &[]).await;
    let (body, _) = read_until_end(&mut sse, IO_TIMEOUT).await;
    let (blocks, _) = blocks(&body);
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert_eq!(event_field(&blocks[0], "id"), Some("1"), "{blocks:?}");
    assert!(
        blocks.iter().all(|b| event_field(b, "retry").is_none()),
        "{blocks:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Oversize events

/// A POST stream whose echoed body makes one `size`-byte `event: body` between small blocks:
/// the upstream's `retry:` before it, `event: resume` and the numbered events after it. The
/// upstream writes those preamble blocks in one write.
fn oversize_request(addr: SocketAddr, size: usize, then: &str) -> String {
    post_stream(
        addr,
        &format!("/sse?events=3&retry_ms=100&then={then}"),
        &[("Content-Type", "text/plain"), ("Last-Event-ID", "7")],
        &"b".repeat(size),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_event_is_dropped_and_the_small_ones_around_it_arrive() {
    let up = Upstream::start().await;
    // The same script straight from the upstream: the big event is really there.
    let mut direct = SseClient::open(up.addr, &oversize_request(up.addr, 4096, "close")).await;
    let (direct_body, _) = read_until_end(&mut direct, IO_TIMEOUT).await;
    let (direct_blocks, _) = blocks(&direct_body);
    assert!(
        direct_blocks
            .iter()
            .any(|b| event_field(b, "event") == Some("body") && b.len() > 4096),
        "the upstream should send a 4 KiB event"
    );

    let proxy = start(&up, "max_event_size = \"1KiB\"\non_oversize = \"drop\"").await;
    let mut sse = SseClient::open(proxy.addr, &oversize_request(proxy.addr, 4096, "close")).await;
    assert_eq!(sse.status, 200);
    let (body, _) = read_until_end(&mut sse, IO_TIMEOUT).await;
    let (got, rest) = blocks(&body);
    assert_eq!(rest, "");
    let kept: Vec<&String> = direct_blocks
        .iter()
        .filter(|b| event_field(b, "event") != Some("body"))
        .collect();
    let describe = |b: &String| {
        (
            event_field(b, "retry").map(str::to_owned),
            event_field(b, "event").map(str::to_owned),
            event_field(b, "id").map(str::to_owned),
        )
    };
    assert_eq!(
        got.iter().map(describe).collect::<Vec<_>>(),
        kept.iter().map(|b| describe(b)).collect::<Vec<_>>(),
        "exactly the oversize event is missing"
    );
    let text = wait_metrics(&proxy, "the stream's close", |t| {
        sse_closes(t, "upstream_end") == 1.0
    })
    .await;
    assert_eq!(
        metric(
            &text,
            "streamguard_dropped_events_total",
            &[("reason", "oversize")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_event_closes_the_stream_when_configured_to() {
    let up = Upstream::start().await;
    let proxy = start(&up, "max_event_size = \"1KiB\"\non_oversize = \"close\"").await;
    // then=quiet: if the stream ends, the oversize event ended it. 2 KiB keeps the small
    // `retry:` block and the whole big event within one read of the proxy, which is where
    // a relay could lose the units that came before the offending one.
    let mut sse = SseClient::open(proxy.addr, &oversize_request(proxy.addr, 2048, "quiet")).await;
    assert_eq!(sse.status, 200);
    let (body, _) = read_until_end(&mut sse, Duration::from_secs(5)).await;
    assert!(sse.body_complete(), "the stream should end cleanly");
    let (got, rest) = blocks(&body);
    assert_eq!(rest, "");
    // The small block sent before the big one was complete, so it is delivered; nothing after.
    assert_eq!(got, vec!["retry: 100".to_owned()], "{got:?}");
    wait_metrics(&proxy, "an oversize close", |t| {
        sse_closes(t, "oversize") == 1.0
    })
    .await;
    assert!(wait_until(Duration::from_secs(1), || up.stats.open_streams() == 0).await);
}

// ---------------------------------------------------------------------------------------------
// 7. Slow client

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_dropped_without_the_proxy_buffering_for_it() {
    let up = Upstream::start().await;
    let proxy = start(&up, "write_timeout = \"2s\"\nheartbeat = \"1s\"").await;
    let baseline = rss_kib(proxy.pid());
    // 64 KiB events as fast as the upstream can write them; the client reads the head and
    // then nothing more.
    let sse = SseClient::connect(
        proxy.addr,
        "/sse?size=65536&interval_ms=1&events=100000",
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    let started = Instant::now();
    let mut peak = baseline;
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(15) {
        peak = peak.max(rss_kib(proxy.pid()));
        let text = proxy.metrics().await;
        if sse_closes(&text, "slow_client") == 1.0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    assert!(closed, "the stalled client was not dropped within 15 s");
    // The kernel buffers fill first, then the 2 s write timeout runs.
    assert!(took < Duration::from_secs(8), "dropped only after {took:?}");
    let grew_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    assert!(
        grew_mib < 30.0,
        "proxy RSS grew {grew_mib:.1} MiB (from {baseline} KiB to {peak} KiB)"
    );
    assert!(
        wait_until(Duration::from_secs(2), || up.stats.open_streams() == 0).await,
        "the upstream connection of the dropped stream must be closed"
    );
    drop(sse);
}

// ---------------------------------------------------------------------------------------------
// 8. Client disconnect

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_releases_the_upstream_at_once() {
    let up = Upstream::start().await;
    let proxy = start(&up, "heartbeat = \"1s\"").await;
    let mut sse = SseClient::connect(proxy.addr, "/sse?events=1", &[]).await;
    sse.read_event(IO_TIMEOUT).await.expect("event 1");
    assert_eq!(up.stats.open_streams(), 1);
    drop(sse);
    assert!(
        wait_until(Duration::from_secs(1), || up.stats.open_streams() == 0).await,
        "the upstream stream is still open 1 s after the client left"
    );
    assert_eq!(up.stats.closed_by_client(), 1);
    wait_metrics(&proxy, "a client_gone close", |t| {
        sse_closes(t, "client_gone") == 1.0
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 9. POST streams

#[tokio::test(flavor = "multi_thread")]
async fn a_post_stream_sends_its_body_upstream_before_streaming() {
    let up = Upstream::start().await;
    let proxy = start(&up, "heartbeat = \"1s\"").await;
    let body = r#"{"prompt":"tell me a story","max_tokens":64}"#;
    let raw = post_stream(
        proxy.addr,
        "/sse?events=2&then=close",
        &[("Content-Type", "application/json")],
        body,
    );
    let mut sse = SseClient::open(proxy.addr, &raw).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    let first = sse.read_event(IO_TIMEOUT).await.expect("first event");
    assert_eq!(event_field(&first, "event"), Some("body"), "{first:?}");
    assert_eq!(event_data(&first).as_deref(), Some(body));
    for n in ["1", "2"] {
        let event = sse.read_event(IO_TIMEOUT).await.expect("event");
        assert_eq!(event_field(&event, "id"), Some(n));
    }
    assert!(sse.wait_closed(IO_TIMEOUT).await);
    let seen = up
        .stats
        .last_request("/sse")
        .expect("upstream saw the request");
    assert_eq!(seen.method, "POST");
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_are_framed_for_the_client_s_http_version_and_connection_header() {
    let up = Upstream::start().await;
    let proxy = start(&up, "").await;
    let target = "/sse?events=3&then=close";
    let accept = [("Accept", "text/event-stream")];
    let close = [("Accept", "text/event-stream"), ("Connection", "close")];
    let http10 =
        request_head("GET", proxy.addr, target, &accept, &[]).replacen("HTTP/1.1", "HTTP/1.0", 1);
    for (name, raw, chunked) in [
        (
            "HTTP/1.1",
            request_head("GET", proxy.addr, target, &accept, &[]),
            true,
        ),
        (
            "Connection: close",
            request_head("GET", proxy.addr, target, &close, &[]),
            true,
        ),
        // HTTP/1.0 has no chunked encoding: the body ends when the connection does.
        ("HTTP/1.0", http10, false),
    ] {
        let mut sse = SseClient::open(proxy.addr, &raw).await;
        assert_eq!(sse.status, 200, "{name}");
        assert_eq!(
            sse.header("transfer-encoding"),
            chunked.then_some("chunked"),
            "{name}"
        );
        assert_eq!(sse.header("connection"), Some("close"), "{name}");
        let (body, _) = read_until_end(&mut sse, IO_TIMEOUT).await;
        let (events, rest) = blocks(&body);
        let ids: Vec<_> = events.iter().filter_map(|e| event_field(e, "id")).collect();
        assert_eq!(ids, ["1", "2", "3"], "{name}: {events:?}");
        assert_eq!(rest, "", "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Last-Event-ID

#[tokio::test(flavor = "multi_thread")]
async fn the_last_event_id_header_reaches_the_upstream() {
    let up = Upstream::start().await;
    let proxy = start(&up, "").await;
    let mut sse = SseClient::connect(
        proxy.addr,
        "/sse?events=1&then=close",
        &[("Last-Event-ID", "41")],
    )
    .await;
    let resume = sse.read_event(IO_TIMEOUT).await.expect("resume");
    assert_eq!(
        (
            event_field(&resume, "event"),
            event_data(&resume).as_deref()
        ),
        (Some("resume"), Some("41"))
    );
}

/// EventSource polyfills resume with `?lastEventId=` because they cannot set the header.
#[tokio::test(flavor = "multi_thread")]
async fn a_last_event_id_query_parameter_becomes_the_header() {
    let up = Upstream::start().await;
    let proxy = start(&up, "").await;
    let mut sse =
        SseClient::connect(proxy.addr, "/sse?events=1&lastEventId=42&then=close", &[]).await;
    let resume = sse.read_event(IO_TIMEOUT).await.expect("resume");
    assert_eq!(
        (
            event_field(&resume, "event"),
            event_data(&resume).as_deref()
        ),
        (Some("resume"), Some("42")),
        "{resume:?}"
    );
    let seen = up.stats.last_request("/sse").expect("upstream request");
    assert_eq!(
        seen.target, "/sse?events=1&then=close",
        "the parameter is removed"
    );
    assert_eq!(seen.header("last-event-id"), Some("42"));

    // A real header is the browser's own and wins; the parameter still goes.
    let mut sse = SseClient::connect(
        proxy.addr,
        "/sse?lastEventId=42&events=1&then=close",
        &[("Last-Event-ID", "41")],
    )
    .await;
    let resume = sse.read_event(IO_TIMEOUT).await.expect("resume");
    assert_eq!(event_data(&resume).as_deref(), Some("41"), "{resume:?}");
    let seen = up.stats.last_request("/sse").expect("upstream request");
    assert_eq!(seen.target, "/sse?events=1&then=close");
}

// ---------------------------------------------------------------------------------------------
// 11. SIGTERM

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_streams_at_event_boundaries_with_a_retry_hint_and_exits_early() {
    let up = Upstream::start().await;
    let mut proxy = launch(
        config(
            &up,
            "heartbeat = \"1s\"\nstale_after = \"0s\"\nretry = \"3s\"",
        )
        .section(
            "server",
            "drain_timeout = \"5s\"\ndrain_delay = \"0s\"\ndrain_window = \"0s\"",
        ),
    )
    .await;
    // Mid-event: event 1 whole, then half of event 2 and silence.
    let mut mid = SseClient::connect(proxy.addr, "/sse?events=2&half_after=1", &[]).await;
    // At a boundary: event 1, then silence.
    let mut calm = SseClient::connect(proxy.addr, "/sse?events=1", &[]).await;
    for sse in [&mut mid, &mut calm] {
        let hint = sse.read_event(IO_TIMEOUT).await.expect("retry hint");
        assert!(retry_ms(&hint).is_some(), "{hint:?}");
        let event = sse.read_event(IO_TIMEOUT).await.expect("event 1");
        assert_eq!(event_field(&event, "id"), Some("1"));
    }
    // The half event follows event 1 in the same instant; give it a moment to reach the proxy
    // (nothing observable tells when it has).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let term_at = Instant::now();
    proxy.signal_term();
    let ((mid_body, mid_end), (calm_body, calm_end)) = tokio::join!(
        read_until_end(&mut mid, Duration::from_secs(5)),
        read_until_end(&mut calm, Duration::from_secs(5)),
    );
    for (name, sse, body) in [
        ("mid-event", &mid, &mid_body),
        ("boundary", &calm, &calm_body),
    ] {
        assert!(sse.body_complete(), "{name}: stream not ended cleanly");
        let (blocks, rest) = blocks(body);
        assert_eq!(
            rest,
            "",
            "{name}: partial unit {:?}",
            String::from_utf8_lossy(body)
        );
        assert!(
            blocks.last().and_then(|b| retry_ms(b)).is_some(),
            "{name}: the retry hint must come last: {blocks:?}"
        );
        assert!(
            blocks[..blocks.len() - 1].iter().all(|b| b == ": ping"),
            "{name}: no event after SIGTERM: {blocks:?}"
        );
    }
    // The boundary stream ends at once; the mid-event one waits a short grace for the rest of
    // its event, then gives up on it.
    assert!(
        calm_end - term_at < Duration::from_millis(800),
        "{:?}",
        calm_end - term_at
    );
    // (That it waited at all shows the half event really was held in the proxy.)
    let mid_took = mid_end - term_at;
    assert!(
        (Duration::from_millis(500)..Duration::from_secs(3)).contains(&mid_took),
        "mid-event stream ended {mid_took:?} after SIGTERM"
    );
    let status = proxy
        .wait_exit(Duration::from_secs(4))
        .await
        .expect("the proxy should exit once its streams have drained");
    assert!(status.success(), "exit status {status}");
    assert!(
        term_at.elapsed() < Duration::from_secs(4),
        "exit took {:?}, the drain timeout is 5 s",
        term_at.elapsed()
    );
    assert!(wait_until(Duration::from_secs(1), || up.stats.open_streams() == 0).await);
}

// ---------------------------------------------------------------------------------------------
// 12. Non-stream answers

#[tokio::test(flavor = "multi_thread")]
async fn a_non_stream_answer_to_an_sse_request_passes_through() {
    let up = Upstream::start().await;
    let proxy = start(&up, "heartbeat = \"1s\"").await;
    for target in ["/sse?status=401", "/status/404"] {
        let direct = get(up.addr, target, &[("Accept", "text/event-stream")]).await;
        let mut sse = SseClient::connect(proxy.addr, target, &[]).await;
        assert_eq!(sse.status, direct.status, "{target}");
        let body = sse.read_to_end(IO_TIMEOUT).await;
        assert_eq!(
            String::from_utf8_lossy(&body),
            direct.text(),
            "{target}: body passed through"
        );
        assert!(sse.is_ended(), "{target}: an ordinary response ends");
        assert_ne!(sse.header("content-type"), Some("text/event-stream"));
    }
    let text = proxy.metrics().await;
    assert_eq!(
        metric(&text, "streamguard_stream_closes_total", &[("kind", "sse")]),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_stream_the_request_did_not_ask_for_is_refused_unless_the_route_allows_it() {
    let up = Upstream::start().await;
    let proxy =
        launch(config(&up, "").route("path = \"/sse\"\nsse = { require_accept = false }")).await;

    // Without `Accept: text/event-stream` the stream would skip the relay and its protections.
    let refused = get(proxy.addr, "/demo/events", &[]).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert_eq!(
        refused.text(),
        r#"{"error":"event streams need Accept: text/event-stream"}"#
    );
    wait_metrics(&proxy, "the unannounced stream refusal", |t| {
        metric(
            t,
            "streamguard_rejections_total",
            &[("reason", "unannounced_stream")],
        ) == Some(1.0)
    })
    .await;
    let events: Vec<_> = proxy
        .json_logs()
        .into_iter()
        .filter(|l| l["target"] == "streamguard::security" && l["event"] == "unannounced_stream")
        .collect();
    assert_eq!(events.len(), 1, "one security event: {events:?}");
    assert_eq!(events[0]["reason"], "no_accept_header");
    assert_eq!(events[0]["path"], "/demo/events");
    assert!(
        !proxy.logs().contains("Fail to proxy"),
        "a refusal is not a proxy error: {}",
        proxy.logs()
    );
    // Plain answers need no Accept header.
    assert_eq!(get(proxy.addr, "/status/404", &[]).await.status, 404);

    // A route that opts out gets the plain proxy path, unsupervised, as before.
    let legacy = get(proxy.addr, "/sse?events=2&then=close", &[]).await;
    assert_eq!(legacy.status, 200);
    assert_eq!(legacy.header("content-type"), Some("text/event-stream"));
    let (plain, _) = blocks(&legacy.body);
    assert_eq!(
        plain.iter().filter(|b| b.contains("data:")).count(),
        2,
        "{plain:?}"
    );
    // The same request announced is relayed as a stream.
    let mut sse = SseClient::connect(proxy.addr, "/sse?events=2&then=close", &[]).await;
    assert_eq!(sse.status, 200);
    let (relayed, _) = blocks(&sse.read_to_end(IO_TIMEOUT).await);
    assert_eq!(
        relayed.iter().filter(|b| b.contains("data:")).count(),
        2,
        "{relayed:?}"
    );
    wait_metrics(&proxy, "one relayed stream", |t| {
        sse_closes(t, "upstream_end") == 1.0
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 13. A real EventSource client

/// What a client library made of a stream: `(type, id, first word of data)` per event, and
/// `<eof>` where a connection ended cleanly and the library reconnected. Event data carries
/// the upstream's timestamps, hence only the first word.
async fn library_view(addr: SocketAddr, want: usize) -> Vec<String> {
    use eventsource_client::{Client, ClientBuilder, Error, ReconnectOptions, SSE};
    let url = format!("http://{addr}/sse?events=3&interval_ms=20&then=close");
    let client = ClientBuilder::for_url(&url)
        .unwrap_or_else(|e| panic!("url {url}: {e:?}"))
        .reconnect(
            ReconnectOptions::reconnect(true)
                .retry_initial(false)
                .delay(Duration::from_millis(50))
                .delay_max(Duration::from_millis(200))
                .build(),
        )
        .build_http();
    let mut stream = client.stream();
    let mut seen = Vec::new();
    while seen.len() < want {
        let item = match tokio::time::timeout(IO_TIMEOUT, stream.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => panic!("{url}: stream gave up; so far {seen:?}"),
            Err(_) => panic!("{url}: nothing for {IO_TIMEOUT:?}; so far {seen:?}"),
        };
        match item {
            Ok(SSE::Event(ev)) => {
                let word = ev.data.split(' ').next().unwrap_or_default().to_owned();
                seen.push(format!("{} {:?} {word}", ev.event_type, ev.id));
            }
            Ok(SSE::Comment(_) | SSE::Connected(_)) => {}
            Err(Error::Eof) => seen.push("<eof>".into()),
            Err(e) => panic!("{url}: {e:?} after {seen:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn an_eventsource_client_sees_the_same_events_through_the_proxy_across_a_reconnect() {
    let up = Upstream::start().await;
    let proxy = start(&up, "heartbeat = \"1s\"").await;
    // Two connections: 3 events, a clean end, a reconnect with Last-Event-ID: 3 (so a `resume`
    // first), 3 events, a clean end.
    let direct = library_view(up.addr, 9).await;
    let proxied = library_view(proxy.addr, 9).await;
    assert_eq!(direct[3], "<eof>", "{direct:?}");
    assert_eq!(direct[4], "resume None 3", "{direct:?}");
    assert_eq!(proxied, direct);
}

// ---------------------------------------------------------------------------------------------
// Supervision under load

/// Reads like a client slower than the upstream (a pause between reads, far below the write
/// timeout), so the proxy always has upstream bytes waiting. Returns the last 4 KiB of body.
async fn read_slowly_until_end(sse: &mut SseClient, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut tail = Vec::new();
    while let Some(chunk) = sse
        .next_chunk(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        tail.extend(chunk.data);
        let excess = tail.len().saturating_sub(4096);
        tail.drain(..excess);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        sse.is_ended(),
        "a busy stream was not ended within {timeout:?}"
    );
    tail
}

/// Upstream `size=65536` events with no pause: more than the client below reads.
const FLOOD: &str = "/sse?events=100000000&size=65536";

/// A client slower than the upstream fills its buffer at once: with the default
/// `on_slow_client = "close"` that ends the stream, so the tests of supervision under a backlog
/// skip events instead, and the stream lives on with its buffer full.
const KEEP_SLOW_CLIENTS: &str = "on_slow_client = \"skip\"";

#[tokio::test(flavor = "multi_thread")]
async fn token_expiry_ends_a_stream_whose_upstream_outpaces_the_client() {
    let up = Upstream::start().await;
    let proxy = launch(
        ProxyConfig::new(up.addr)
            .section("auth", "mode = \"required\"\nclose_on_expiry = true")
            .section("sse", "heartbeat = \"0s\"\nstale_after = \"0s\"")
            .section("sse", KEEP_SLOW_CLIENTS),
    )
    .await;
    let token = mint_token("alice", &[], 2, serde_json::Value::Null);
    let bearer = format!("Bearer {token}");
    let exp = unix_now().floor() + 2.0;
    let mut sse = SseClient::connect(proxy.addr, FLOOD, &[("Authorization", &bearer)]).await;
    assert_eq!(sse.status, 200);
    let tail = read_slowly_until_end(&mut sse, Duration::from_secs(8)).await;
    let at = unix_now();
    let tail = String::from_utf8_lossy(&tail);
    assert!(
        tail.ends_with("\n\nevent: streamguard.expired\ndata: {\"reason\":\"token_expired\"}\n\n"),
        "the expiry event must follow a whole event and end the stream: ...{:?}",
        &tail[tail.len().saturating_sub(200)..]
    );
    assert!(at <= exp + 2.5, "closed at unix {at:.3}, token exp ~{exp}");
    wait_metrics(&proxy, "an expired close", |t| {
        sse_closes(t, "expired") == 1.0
    })
    .await;
}

/// Eviction, like expiry and drain, lands after a whole event while the stream is buffered.
#[tokio::test(flavor = "multi_thread")]
async fn eviction_ends_a_stream_whose_upstream_outpaces_the_client_at_an_event_boundary() {
    let up = Upstream::start().await;
    let proxy = launch(
        ProxyConfig::new(up.addr)
            .section("auth", "mode = \"required\"")
            .section("sse", "heartbeat = \"0s\"\nstale_after = \"0s\"")
            .section("sse", KEEP_SLOW_CLIENTS)
            .section(
                "limits",
                "max_streams_per_user = 1\non_user_limit = \"evict_oldest\"",
            ),
    )
    .await;
    let bearer = format!(
        "Bearer {}",
        mint_token("alice", &[], 600, serde_json::Value::Null)
    );
    let mut flooded = SseClient::connect(proxy.addr, FLOOD, &[("Authorization", &bearer)]).await;
    assert_eq!(flooded.status, 200);
    // Stop reading for a moment so the proxy holds a backlog when the eviction comes.
    flooded.next_chunk(IO_TIMEOUT).await.expect("first bytes");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let newer = SseClient::connect(
        proxy.addr,
        "/sse?events=1&then=quiet",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(newer.status, 200, "the newer stream evicts the flooded one");
    let tail = read_slowly_until_end(&mut flooded, Duration::from_secs(8)).await;
    assert!(
        flooded.body_complete(),
        "the evicted stream should end cleanly"
    );
    let tail = String::from_utf8_lossy(&tail);
    assert!(
        tail.ends_with("\n\nevent: streamguard.evicted\ndata: {\"reason\":\"evicted\"}\n\n"),
        "the eviction event must follow a whole event and end the stream: ...{:?}",
        &tail[tail.len().saturating_sub(200)..]
    );
    wait_metrics(&proxy, "an evicted close", |t| {
        sse_closes(t, "evicted") == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_a_stream_whose_upstream_outpaces_the_client() {
    let up = Upstream::start().await;
    let mut proxy = launch(
        config(&up, "heartbeat = \"0s\"\nretry = \"3s\"")
            .section("sse", KEEP_SLOW_CLIENTS)
            .section(
                "server",
                "drain_timeout = \"5s\"\ndrain_delay = \"0s\"\ndrain_window = \"0s\"",
            ),
    )
    .await;
    let mut sse = SseClient::connect(proxy.addr, FLOOD, &[]).await;
    assert_eq!(sse.status, 200);
    let first = sse.next_chunk(IO_TIMEOUT).await.expect("first bytes");
    assert!(first.text().starts_with("retry: "), "{:?}", first.text());
    // A second of slow reading first, so the proxy has a backlog of upstream bytes when the
    // signal comes.
    let backlog_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < backlog_until {
        sse.next_chunk(IO_TIMEOUT).await.expect("the flood goes on");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let term_at = Instant::now();
    proxy.signal_term();
    let tail = read_slowly_until_end(&mut sse, Duration::from_secs(4)).await;
    assert!(sse.body_complete(), "the drained stream should end cleanly");
    let tail = String::from_utf8_lossy(&tail);
    let last = tail
        .trim_end_matches('\n')
        .rsplit("\n\n")
        .next()
        .unwrap_or_default();
    assert!(
        tail.ends_with("\n\n") && retry_ms(last).is_some(),
        "the retry hint must come last, after a whole event: ...{:?}",
        &tail[tail.len().saturating_sub(200)..]
    );
    proxy
        .wait_exit(Duration::from_secs(4))
        .await
        .expect("the proxy should exit once the busy stream has drained");
    assert!(
        term_at.elapsed() < Duration::from_secs(4),
        "drain took {:?}, the drain timeout is 5 s",
        term_at.elapsed()
    );
}
