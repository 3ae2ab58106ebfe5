//! Per-user and global limits, end to end: the real binary in front of the real demo upstream,
//! SSE and WebSocket streams from real sockets. Each test checks what a client sees (status,
//! `Retry-After`, fixed body, the eviction event or close frame) and what the metrics say
//! (`streamguard_rejections_total{reason}`, `streamguard_evictions_total`,
//! `streamguard_streams_active`, `streamguard_limiter_keys`).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{connect, read_response_head, read_some, request_head};
use common::streams::*;
use common::{
    assert_metric, event_field, metric, wait_metric_within, HttpConn, Proxy, ProxyConfig, Upstream,
};
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// The churn test keeps both cores busy for most of a minute; the tests that measure time
/// (rates, `Retry-After`) take this lock shared and churn takes it exclusively, so they never
/// run beside it.
static LOAD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

const TOO_MANY_CONNECTIONS: &str = r#"{"error":"too many connections"}"#;
const TOO_MANY_REQUESTS: &str = r#"{"error":"too many requests"}"#;

fn config(up: &Upstream, limits: &str) -> ProxyConfig {
    ProxyConfig::new(up.addr)
        .section("limits", limits)
        .section("sse", "heartbeat = \"1s\"")
}

#[tokio::test(flavor = "multi_thread")]
async fn user_cap_counts_sse_and_websocket_together() {
    let _shared = LOAD.read().await;
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(config(&up, "max_streams_per_user = 2")).await;
    let alice = bearer("alice");
    let auth = [("Authorization", alice.as_str())];

    let mut sse = admitted(proxy.addr, Kind::Sse, &auth).await;
    let ws = admitted(proxy.addr, Kind::Ws, &auth).await;
    // A third stream of either kind is over the cap.
    for kind in [Kind::Sse, Kind::Ws] {
        refused(proxy.addr, kind, &auth).await.assert_cap(429);
    }
    assert_rejections(&proxy, "user_streams", 2.0).await;
    sse.assert_alive().await;

    // Closing one frees exactly one slot, whatever kind comes next.
    ws.close().await;
    wait_active(&proxy, 1.0, SOON).await;
    let _ws_again = admitted(proxy.addr, Kind::Ws, &auth).await;
    refused(proxy.addr, Kind::Sse, &auth).await.assert_cap(429);
    drop(sse);
    wait_active(&proxy, 1.0, SOON).await;
    let _sse_again = admitted(proxy.addr, Kind::Sse, &auth).await;
    refused(proxy.addr, Kind::Ws, &auth).await.assert_cap(429);
    assert_rejections(&proxy, "user_streams", 4.0).await;
    assert_rejections(&proxy, "global_streams", 0.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn evict_oldest_closes_the_oldest_stream_of_that_user_only() {
    let _shared = LOAD.read().await;
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(config(
        &up,
        "max_streams_per_user = 2\non_user_limit = \"evict_oldest\"",
    ))
    .await;
    let alice = bearer("alice");
    let alice = [("Authorization", alice.as_str())];
    let bob = bearer("bob");
    let bob = [("Authorization", bob.as_str())];

    let oldest_sse = admitted(proxy.addr, Kind::Sse, &alice).await;
    let older_ws = admitted(proxy.addr, Kind::Ws, &alice).await;
    let mut bobs = admitted(proxy.addr, Kind::Sse, &bob).await;
    let mut bobs_ws = admitted(proxy.addr, Kind::Ws, &bob).await;

    // The new tab wins: the oldest (SSE) is told why, then its stream ends.
    let mut newer_sse = admitted(proxy.addr, Kind::Sse, &alice).await;
    oldest_sse.evicted(SOON).await.expect("oldest SSE evicted");
    assert_metric(&proxy, "streamguard_evictions_total", &[], 1.0).await;

    // Now the WebSocket is alice's oldest: it gets close 1008 "evicted".
    let mut newer_ws = admitted(proxy.addr, Kind::Ws, &alice).await;
    older_ws
        .evicted(SOON)
        .await
        .expect("older WebSocket evicted");
    assert_metric(&proxy, "streamguard_evictions_total", &[], 2.0).await;
    let closes = |kind| [("kind", kind), ("reason", "evicted")];
    assert_metric(
        &proxy,
        "streamguard_stream_closes_total",
        &closes("sse"),
        1.0,
    )
    .await;
    assert_metric(
        &proxy,
        "streamguard_stream_closes_total",
        &closes("websocket"),
        1.0,
    )
    .await;

    // Bob's streams, and alice's two newest, were never touched.
    for held in [&mut newer_sse, &mut newer_ws, &mut bobs, &mut bobs_ws] {
        held.assert_alive().await;
    }
    wait_active(&proxy, 4.0, SOON).await;
    // Eviction admits instead of refusing.
    assert_rejections(&proxy, "user_streams", 0.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn users_have_separate_stream_caps() {
    let _shared = LOAD.read().await;
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(config(&up, "max_streams_per_user = 1")).await;
    let alice = bearer("alice");
    let alice = [("Authorization", alice.as_str())];
    let bob = bearer("bob");
    let bob = [("Authorization", bob.as_str())];

    let alices = admitted(proxy.addr, Kind::Sse, &alice).await;
    refused(proxy.addr, Kind::Ws, &alice).await.assert_cap(429);
    // Alice at her cap does not stop bob, and bob filling his does not touch alice.
    let mut bobs = admitted(proxy.addr, Kind::Ws, &bob).await;
    refused(proxy.addr, Kind::Sse, &bob).await.assert_cap(429);

    // A fresh token of the same user is the same user.
    let alice_again = bearer("alice");
    refused(
        proxy.addr,
        Kind::Sse,
        &[("Authorization", alice_again.as_str())],
    )
    .await
    .assert_cap(429);

    drop(alices);
    wait_active(&proxy, 1.0, SOON).await;
    let _alices = admitted(proxy.addr, Kind::Ws, &alice).await;
    // Alice's release gave her slot back, not one to bob.
    refused(proxy.addr, Kind::Sse, &bob).await.assert_cap(429);
    bobs.assert_alive().await;
    assert_rejections(&proxy, "user_streams", 4.0).await;
}

/// Streams on `/sse` and `/ws` need no token, so they are counted by client address.
fn anonymous(up: &Upstream, trusted_proxies: &str) -> ProxyConfig {
    config(
        up,
        &format!("max_streams_per_user = 1\ntrusted_proxies = {trusted_proxies}"),
    )
    .route("path = \"/sse\"\nauth = \"off\"")
    .route("path = \"/ws\"\nauth = \"off\"")
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_streams_are_keyed_by_forwarded_client_behind_a_trusted_proxy() {
    let _shared = LOAD.read().await;
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(anonymous(&up, "[\"127.0.0.1/32\"]")).await;
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];

    let _first = admitted(proxy.addr, Kind::Sse, &xff("203.0.113.1")).await;
    refused(proxy.addr, Kind::Sse, &xff("203.0.113.1"))
        .await
        .assert_cap(429);
    refused(proxy.addr, Kind::Ws, &xff("203.0.113.1"))
        .await
        .assert_cap(429);
    // Another forwarded client has its own cap.
    let _second = admitted(proxy.addr, Kind::Ws, &xff("203.0.113.2")).await;
    // The client is the rightmost untrusted hop: what the client wrote to its left is ignored,
    // so prepending an address does not buy a new bucket.
    refused(proxy.addr, Kind::Sse, &xff("198.51.100.9, 203.0.113.2"))
        .await
        .assert_cap(429);
    // Without the header the trusted peer itself is the client, with a cap of its own.
    let _direct = admitted(proxy.addr, Kind::Sse, &[]).await;
    refused(proxy.addr, Kind::Ws, &[]).await.assert_cap(429);
    assert_rejections(&proxy, "user_streams", 4.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_lines_are_read_as_one_list() {
    let _shared = LOAD.read().await;
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(anonymous(&up, "[\"127.0.0.1/32\"]")).await;

    let _held = admitted(proxy.addr, Kind::Ws, &[("X-Forwarded-For", "203.0.113.2")]).await;
    // Several X-Forwarded-For lines are one list (RFC 9110 5.3). A load balancer that adds its
    // own line after the client's names the client last: reading only the first line would
    // let any client pick its own bucket by sending the header itself.
    let forged_then_real = [
        ("X-Forwarded-For", "198.51.100.9"),
        ("X-Forwarded-For", "203.0.113.2"),
    ];
    refused(proxy.addr, Kind::Sse, &forged_then_real)
        .await
        .assert_cap(429);
    assert_rejections(&proxy, "user_streams", 1.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let _shared = LOAD.read().await;
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(anonymous(&up, "[]")).await;

    let _first = admitted(proxy.addr, Kind::Sse, &[("X-Forwarded-For", "203.0.113.1")]).await;
    // A client naming a different address is still 127.0.0.1, already at its cap.
    refused(proxy.addr, Kind::Sse, &[("X-Forwarded-For", "203.0.113.2")])
        .await
        .assert_cap(429);
    refused(proxy.addr, Kind::Ws, &[("X-Forwarded-For", "198.51.100.7")])
        .await
        .assert_cap(429);
    refused(proxy.addr, Kind::Ws, &[]).await.assert_cap(429);
    assert_rejections(&proxy, "user_streams", 3.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_rate_refuses_the_fourth_stream_with_an_exact_retry_after() {
    let _shared = LOAD.read().await;
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(config(&up, "connects_per_user = \"3/minute\"")).await;
    let alice = bearer("alice");
    let alice = [("Authorization", alice.as_str())];

    let started = Instant::now();
    let held = vec![
        admitted(proxy.addr, Kind::Sse, &alice).await,
        admitted(proxy.addr, Kind::Ws, &alice).await,
        admitted(proxy.addr, Kind::Sse, &alice).await,
    ];
    // GCRA at 3/minute: the 4th attempt passes 20 s after the first one.
    let fourth = refused(proxy.addr, Kind::Ws, &alice).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "setup too slow for the check: {elapsed:?}"
    );
    fourth.assert(429, TOO_MANY_CONNECTIONS, 19..=21);
    refused(proxy.addr, Kind::Sse, &alice)
        .await
        .assert(429, TOO_MANY_CONNECTIONS, 19..=21);

    // The rate counts opening streams, not holding them: closing them does not help.
    for stream in held {
        stream.close().await;
    }
    let mut bobs = admitted(proxy.addr, Kind::Sse, &[("Authorization", &bearer("bob"))]).await;
    wait_active(&proxy, 1.0, SOON).await;
    refused(proxy.addr, Kind::Sse, &alice)
        .await
        .assert(429, TOO_MANY_CONNECTIONS, 18..=21);
    bobs.assert_alive().await;
    assert_rejections(&proxy, "connect_rate", 3.0).await;
    assert_rejections(&proxy, "user_streams", 0.0).await;
}

/// Sends `count` plain requests at the same moment, each on its own already-open connection, so
/// they reach the limiter within a few milliseconds of each other.
async fn burst_of_requests(addr: SocketAddr, count: usize) -> Vec<common::Response> {
    let mut conns = Vec::new();
    for _ in 0..count {
        conns.push(HttpConn::connect(addr).await.expect("connect"));
    }
    let request = request_head("GET", addr, "/echo/rate", &[("Connection", "close")], &[]);
    join_all(conns.iter_mut().map(|conn| conn.send(request.as_bytes())))
        .await
        .into_iter()
        .map(|resp| resp.expect("response"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn request_rate_allows_burst_plus_one_then_refuses_until_retry_after() {
    let _shared = LOAD.read().await;
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(
        config(&up, "requests_per_ip = \"5/second\"\nburst = 2")
            .route("path = \"/echo\"\nauth = \"off\""),
    )
    .await;

    // Documented in policy/limits: a fresh address may send `burst + 1` at once, then one per
    // 200 ms. The 4th request, right after, would pass 200 ms later: Retry-After rounds up to 1.
    let check = |responses: &[common::Response]| -> u64 {
        let passed = responses.iter().filter(|r| r.status == 200).count();
        assert_eq!(
            passed,
            3,
            "statuses {:?}",
            responses.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        let mut wait = 0;
        for resp in responses.iter().filter(|r| r.status != 200) {
            let refusal = Refused {
                status: resp.status,
                retry_after: resp.header("retry-after").map(str::to_owned),
                content_type: resp.header("content-type").map(str::to_owned),
                body: resp.text(),
            };
            refusal.assert(429, TOO_MANY_REQUESTS, 1..=1);
            wait = refusal.retry_secs();
        }
        wait
    };
    let first = burst_of_requests(proxy.addr, 8).await;
    let wait = check(&first);
    assert_eq!(
        up.stats.hits("/echo"),
        3,
        "refused requests never reach the app"
    );
    assert_rejections(&proxy, "request_rate", 5.0).await;

    // Retry-After is honest: after it the full burst is back.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    check(&burst_of_requests(proxy.addr, 8).await);

    // The rate is per address and applies to every request, streams and verified users too.
    let alice = bearer("alice");
    refused(proxy.addr, Kind::Sse, &[("Authorization", alice.as_str())])
        .await
        .assert(429, TOO_MANY_REQUESTS, 1..=1);
    assert_rejections(&proxy, "request_rate", 11.0).await;
    assert_eq!(up.stats.hits("/sse"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn global_cap_answers_503_with_a_short_retry_after() {
    let _shared = LOAD.read().await;
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(config(&up, "max_streams = 3\nmax_streams_per_user = 5")).await;
    let (a, b, c, d) = (bearer("a"), bearer("b"), bearer("c"), bearer("d"));

    let _sa = admitted(proxy.addr, Kind::Sse, &[("Authorization", &a)]).await;
    let wb = admitted(proxy.addr, Kind::Ws, &[("Authorization", &b)]).await;
    let _sc = admitted(proxy.addr, Kind::Sse, &[("Authorization", &c)]).await;
    // The proxy is full: a user with no stream at all is turned away with a 503 (capacity,
    // not the client's fault).
    refused(proxy.addr, Kind::Sse, &[("Authorization", &d)])
        .await
        .assert_cap(503);
    refused(proxy.addr, Kind::Ws, &[("Authorization", &d)])
        .await
        .assert_cap(503);
    refused(proxy.addr, Kind::Ws, &[("Authorization", &a)])
        .await
        .assert_cap(503);
    assert_rejections(&proxy, "global_streams", 3.0).await;
    assert_rejections(&proxy, "user_streams", 0.0).await;

    wb.close().await;
    wait_active(&proxy, 2.0, SOON).await;
    let _sd = admitted(proxy.addr, Kind::Ws, &[("Authorization", &d)]).await;
    refused(proxy.addr, Kind::Sse, &[("Authorization", &b)])
        .await
        .assert_cap(503);
    assert_rejections(&proxy, "global_streams", 4.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn route_limits_override_the_global_cap_on_their_route() {
    let _shared = LOAD.read().await;
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(
        config(&up, "max_streams_per_user = 3")
            .route("path = \"/sse\"\nlimits = { max_streams_per_user = 1 }"),
    )
    .await;
    let alice = bearer("alice");
    let alice = [("Authorization", alice.as_str())];

    let _narrow = admitted(proxy.addr, Kind::Sse, &alice).await;
    refused(proxy.addr, Kind::Sse, &alice).await.assert_cap(429);
    // Elsewhere the global cap of 3 applies, counting the stream alice holds on /sse.
    let _events = admitted_at(proxy.addr, Kind::Sse, "/demo/events", &alice).await;
    let _ws = admitted(proxy.addr, Kind::Ws, &alice).await;
    refused(proxy.addr, Kind::Ws, &alice).await.assert_cap(429);
    refused_at(proxy.addr, Kind::Sse, "/demo/events", &alice)
        .await
        .assert_cap(429);
    // The route cap is per user too.
    let bob = bearer("bob");
    let _bobs = admitted(proxy.addr, Kind::Sse, &[("Authorization", bob.as_str())]).await;
    assert_rejections(&proxy, "user_streams", 3.0).await;
}

// ---------------------------------------------------------------------------------------------
// Churn

/// Streams opened by the churn test, each ended in one of the ways below.
const CHURN_STREAMS: usize = 5_000;
/// Users that only open streams on the normal routes, and how many streams each keeps in flight.
const CHURN_USERS: usize = 16;
const CHURN_PER_USER: usize = 11;
/// `max_streams_per_user` on the normal routes: a little above what each user keeps in flight,
/// since a slot comes back only once the proxy has noticed the end, a moment after the client.
const CHURN_CAP: usize = 12;
/// Users that open three streams at a time on the eviction routes (cap 2, evict_oldest), and
/// how many of the streams are theirs (evictions are quick, they would take the whole budget).
const EVICT_USERS: usize = 4;
const EVICT_STREAMS: usize = 900;
/// `max_streams`: above what the churn holds at once (lanes plus streams the proxy has not yet
/// seen end), and 20 above the refill at the end, which then checks the global count is exact.
const CHURN_GLOBAL: usize = 260;

#[derive(Debug, Clone, Copy)]
enum End {
    /// The client closes its socket mid-stream (FIN).
    SseDrop,
    /// The client resets its socket mid-stream (RST).
    SseReset,
    /// The upstream ends the stream (`then=close`).
    SseUpstreamClose,
    /// The token expires (1-2 s) and the proxy ends the stream.
    SseExpiry,
    /// The upstream goes quiet and the proxy ends the stream as stale.
    SseStale,
    WsDrop,
    WsReset,
    /// Close handshake started by the client.
    WsClose,
    WsExpiry,
}

const ENDS: [End; 9] = [
    End::SseDrop,
    End::SseReset,
    End::SseUpstreamClose,
    End::SseExpiry,
    End::SseStale,
    End::WsDrop,
    End::WsReset,
    End::WsClose,
    End::WsExpiry,
];

#[derive(Default)]
struct Tally {
    opened: AtomicUsize,
    admitted: AtomicUsize,
    /// 429s on the normal routes; each must show up in the rejection counter.
    refused: AtomicUsize,
    evict_opened: AtomicUsize,
    evictions_seen: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }
}

/// Checks a churn stream's refusal: only the user cap can refuse one, and only in the moment
/// between a client ending a stream and the proxy noticing.
fn churn_refusal(refused: &Refused) -> Result<(), String> {
    if refused.status == 429 && refused.body == TOO_MANY_STREAMS {
        Ok(())
    } else {
        Err(format!("unexpected refusal {refused:?}"))
    }
}

/// Opens one stream on a normal route and ends it the `end` way. `Ok(false)`: refused.
async fn churn_stream(addr: SocketAddr, user: &str, end: End, ttl: i64) -> Result<bool, String> {
    let expiring = matches!(end, End::SseExpiry | End::WsExpiry);
    let auth = if expiring {
        bearer_ttl(user, ttl)
    } else {
        bearer(user)
    };
    let headers = [("Authorization", auth.as_str())];
    // Upstream comments keep a stream from going stale while the test holds it.
    let path = match end {
        End::SseDrop | End::SseExpiry => "/sse?events=1&then=quiet&comment_every_ms=200",
        End::SseUpstreamClose => "/sse?events=3&interval_ms=5&then=close",
        End::SseStale => HOLD_SSE,
        End::SseReset => return sse_reset(addr, &auth).await,
        End::WsDrop | End::WsReset | End::WsClose | End::WsExpiry => WS_PATH,
    };
    let kind = if path == WS_PATH { Kind::Ws } else { Kind::Sse };
    let held = match try_open(addr, kind, path, &headers).await? {
        Ok(held) => held,
        Err(refused) => return churn_refusal(&refused).map(|()| false),
    };
    let long = Duration::from_secs(6);
    match (end, held) {
        (End::SseDrop, Held::Sse(sse)) => drop(sse),
        (End::SseUpstreamClose, Held::Sse(mut sse)) => {
            for id in 2..=3 {
                let event = sse.read_event(SOON).await.ok_or("upstream event missing")?;
                if event_field(&event, "id") != Some(id.to_string().as_str()) {
                    return Err(format!("expected event {id}, got {event:?}"));
                }
            }
            if !sse.wait_closed(SOON).await {
                return Err("stream not ended after the upstream ended".into());
            }
        }
        (End::SseExpiry, Held::Sse(mut sse)) => {
            sse_until_event(&mut sse, "streamguard.expired", long).await?;
            if !sse.wait_closed(SOON).await {
                return Err("stream not ended after its expiry event".into());
            }
        }
        (End::SseStale, Held::Sse(mut sse)) => {
            let deadline = Instant::now() + long;
            while let Some(block) = sse
                .read_event(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                if !block.starts_with(':') {
                    return Err(format!("stale stream got {block:?} instead of heartbeats"));
                }
            }
            if !sse.is_ended() {
                return Err("stale stream not ended".into());
            }
        }
        (End::WsDrop | End::WsReset | End::WsClose | End::WsExpiry, Held::Ws(mut ws)) => {
            if matches!(end, End::WsExpiry) {
                return match ws_until_close(&mut ws, long).await? {
                    (1008, reason) if reason == "token expired" => Ok(true),
                    other => Err(format!("expiry close {other:?}")),
                };
            }
            ws.send(Message::text("x"))
                .await
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(SOON, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "x" => {}
                other => return Err(format!("no echo: {other:?}")),
            }
            match end {
                End::WsReset => {
                    ws.get_ref().set_zero_linger().map_err(|e| e.to_string())?;
                    drop(ws);
                }
                End::WsClose => Held::Ws(ws).close().await,
                _ => drop(ws),
            }
        }
        (end, held) => return Err(format!("{end:?} opened a {:?}", held.kind())),
    }
    Ok(true)
}

/// An SSE client that resets its connection once the first event arrived.
async fn sse_reset(addr: SocketAddr, auth: &str) -> Result<bool, String> {
    let io = |e: std::io::Error| e.to_string();
    let mut stream = connect(addr).await.map_err(io)?;
    stream.set_zero_linger().map_err(io)?;
    let head = request_head(
        "GET",
        addr,
        "/sse?events=1&then=quiet&comment_every_ms=200",
        &[("Accept", "text/event-stream")],
        &[("Authorization", auth)],
    );
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::new();
    let (status, headers) = read_response_head(&mut stream, &mut buf)
        .await
        .map_err(io)?;
    if status != 200 {
        let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        // A refusal is small and Content-Length framed: what already arrived is usually all.
        let length: usize = header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            if read_some(&mut stream, &mut buf, SOON).await.map_err(io)? == 0 {
                break;
            }
        }
        return churn_refusal(&Refused {
            status,
            retry_after: header("retry-after"),
            content_type: header("content-type"),
            body: String::from_utf8_lossy(&buf).into_owned(),
        })
        .map(|()| false);
    }
    while !buf.windows(5).any(|w| w == b"id: 1") {
        if read_some(&mut stream, &mut buf, SOON).await.map_err(io)? == 0 {
            return Err("stream ended before its first event".into());
        }
    }
    drop(stream);
    Ok(true)
}

/// Three streams of one user on the eviction routes (cap 2): the third evicts the first, then
/// the other two end abruptly or cleanly.
async fn churn_eviction(
    addr: SocketAddr,
    user: &str,
    kinds: [Kind; 3],
    politely: [bool; 2],
) -> Result<(), String> {
    let auth = bearer(user);
    let headers = [("Authorization", auth.as_str())];
    let mut held = Vec::new();
    for kind in kinds {
        let path = match kind {
            Kind::Sse => "/demo/events",
            Kind::Ws => "/ws/evict",
        };
        match try_open(addr, kind, path, &headers).await? {
            Ok(stream) => held.push(stream),
            Err(refused) => return Err(format!("eviction route refused: {refused:?}")),
        }
    }
    let mut held = held.into_iter();
    let first = held.next().ok_or("no first stream")?;
    first
        .evicted(Duration::from_secs(6))
        .await
        .map_err(|e| format!("first of three: {e}"))?;
    for (stream, polite) in held.zip(politely) {
        if polite {
            stream.close().await;
        } else {
            drop(stream);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn churn_of_five_thousand_streams_leaves_no_slot_behind() {
    let _exclusive = LOAD.write().await;
    let up = Upstream::start().await;
    let evict = "limits = { max_streams_per_user = 2, on_user_limit = \"evict_oldest\" }";
    let proxy = Proxy::start_with(
        ProxyConfig::new(up.addr)
            .section(
                "limits",
                &format!("max_streams_per_user = {CHURN_CAP}\nmax_streams = {CHURN_GLOBAL}"),
            )
            .section("sse", "heartbeat = \"500ms\"\nstale_after = \"1s\"")
            .section("log", "level = \"warn\"")
            // The demo events are a second apart: not stale on this route.
            .route(&format!(
                "path = \"/demo/events\"\n{evict}\nsse = {{ stale_after = \"0s\" }}"
            ))
            .route(&format!("path = \"/ws/evict\"\n{evict}")),
    )
    .await;
    let addr = proxy.addr;
    let seed: u64 = rand::random();
    eprintln!("churn seed {seed}");
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let launch_deadline = started + Duration::from_secs(90);

    let mut workers = tokio::task::JoinSet::new();
    for lane in 0..CHURN_USERS * CHURN_PER_USER {
        let tally = Arc::clone(&tally);
        let user = format!("churn-{}", lane % CHURN_USERS);
        let mut rng = StdRng::seed_from_u64(seed ^ lane as u64);
        workers.spawn(async move {
            while Instant::now() < launch_deadline
                && tally.opened.fetch_add(1, Ordering::Relaxed) < CHURN_STREAMS - EVICT_STREAMS
            {
                let end = ENDS[rng.random_range(0..ENDS.len())];
                let ttl = rng.random_range(1..=2);
                let outcome = tokio::time::timeout(
                    Duration::from_secs(20),
                    churn_stream(addr, &user, end, ttl),
                )
                .await;
                match outcome {
                    Ok(Ok(true)) => {
                        tally.admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(false)) => {
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => tally.fail(format!("{user} {end:?}: {e}")),
                    Err(_) => tally.fail(format!("{user} {end:?}: stuck")),
                }
            }
        });
    }
    for n in 0..EVICT_USERS {
        let tally = Arc::clone(&tally);
        let user = format!("evict-{n}");
        let mut rng = StdRng::seed_from_u64(seed ^ (1 << 32) ^ n as u64);
        workers.spawn(async move {
            while Instant::now() < launch_deadline
                && tally.evict_opened.fetch_add(3, Ordering::Relaxed) < EVICT_STREAMS
            {
                let mut kind = || if rng.random() { Kind::Sse } else { Kind::Ws };
                let kinds = [kind(), kind(), kind()];
                let politely = [rng.random(), rng.random()];
                let round = tokio::time::timeout(
                    Duration::from_secs(20),
                    churn_eviction(addr, &user, kinds, politely),
                )
                .await;
                match round {
                    Ok(Ok(())) => {
                        tally.admitted.fetch_add(3, Ordering::Relaxed);
                        tally.evictions_seen.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => tally.fail(format!("{user} {kinds:?}: {e}")),
                    Err(_) => tally.fail(format!("{user} {kinds:?}: stuck")),
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("churn worker panicked");
    }
    let churn_time = started.elapsed();
    let (n_admitted, n_refused, evictions_seen) = (
        tally.admitted.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.evictions_seen.load(Ordering::Relaxed),
    );
    eprintln!(
        "churn: {n_admitted} admitted, {n_refused} refused, {evictions_seen} evictions seen in {churn_time:?}"
    );
    {
        let failures = tally.failures.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            failures.is_empty(),
            "{} churn streams misbehaved (seed {seed}), first ones: {:#?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
    }
    assert!(
        n_admitted + n_refused >= CHURN_STREAMS,
        "only {} streams in {churn_time:?}",
        n_admitted + n_refused
    );

    // Every stream is gone, and every refusal a client saw was counted, by the right rule.
    wait_active(&proxy, 0.0, Duration::from_secs(10)).await;
    assert_rejections(&proxy, "user_streams", n_refused as f64).await;
    for reason in ["global_streams", "connect_rate", "request_rate"] {
        assert_rejections(&proxy, reason, 0.0).await;
    }
    let text = proxy.metrics().await;
    let evictions = metric(&text, "streamguard_evictions_total", &[]).unwrap_or(0.0);
    let evicted_closes = metric(
        &text,
        "streamguard_stream_closes_total",
        &[("reason", "evicted")],
    )
    .unwrap_or(0.0);
    // Some evicted streams were already abandoned by their client, so at least what was seen.
    assert!(
        evictions >= evictions_seen as f64,
        "{evictions} < {evictions_seen}"
    );
    assert_eq!(evictions, evicted_closes);

    // Per-user counts are back to zero: every user, the evicting ones included, can open
    // exactly the cap again on a normal route.
    let users: Vec<String> = (0..CHURN_USERS)
        .map(|n| format!("churn-{n}"))
        .chain((0..EVICT_USERS).map(|n| format!("evict-{n}")))
        .collect();
    let refills = users.iter().map(|user| async move {
        let auth = bearer(user);
        let headers = [("Authorization", auth.as_str())];
        let mut held = Vec::new();
        for n in 0..CHURN_CAP {
            let kind = if n % 2 == 0 { Kind::Sse } else { Kind::Ws };
            held.push(admitted(addr, kind, &headers).await);
        }
        refused(addr, Kind::Sse, &headers).await.assert_cap(429);
        held
    });
    let held: Vec<Held> = join_all(refills).await.into_iter().flatten().collect();
    assert_eq!(held.len(), users.len() * CHURN_CAP);
    assert_rejections(&proxy, "user_streams", (n_refused + users.len()) as f64).await;
    // The global count is back to zero too: exactly what is left of the global cap fits.
    let spare = CHURN_GLOBAL - held.len();
    let mut extra = Vec::new();
    for n in 0..spare {
        let auth = bearer(&format!("extra-{n}"));
        extra.push(admitted(addr, Kind::Ws, &[("Authorization", auth.as_str())]).await);
    }
    let auth = bearer("extra-last");
    refused(addr, Kind::Sse, &[("Authorization", auth.as_str())])
        .await
        .assert_cap(503);
    assert_rejections(&proxy, "global_streams", 1.0).await;
    drop(extra);
    wait_active(&proxy, held.len() as f64, Duration::from_secs(10)).await;
    // The limiter's gauge (refreshed by its sweep, every 5 s) shows exactly the users holding
    // streams.
    let keys = users.len() as f64;
    wait_metric_within(
        &proxy,
        "streamguard_limiter_keys",
        &[],
        Duration::from_secs(12),
        |v| v == keys,
    )
    .await;
    drop(held);
    wait_active(&proxy, 0.0, Duration::from_secs(10)).await;

    // The limiter forgets users without streams at its next sweep.
    wait_metric_within(
        &proxy,
        "streamguard_limiter_keys",
        &[],
        Duration::from_secs(12),
        |v| v == 0.0,
    )
    .await;
}
