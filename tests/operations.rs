//! Operating streamguard without dropping streams: the drain spread over a window, and reloads
//! of the configuration while streams run. Real processes, real signals, real sockets.

mod common;

use std::time::{Duration, Instant};

use common::streams::ws_until_close;
use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const SSE_STREAMS: usize = 900;
const WEBSOCKETS: usize = 100;
const DELAY: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(4);

/// Opens `n` of something `open` makes, 50 at a time.
async fn open_many<T, F, Fut>(n: usize, open: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut opened = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(50) {
        opened.extend(futures_util::future::join_all(batch.iter().map(|&i| open(i))).await);
    }
    opened
}

/// Reads an SSE stream to its end; `(when it ended, whether it ended cleanly with every unit
/// whole and a retry hint last)`.
async fn sse_end(mut sse: SseClient, deadline: Duration) -> (Instant, bool) {
    let body = sse.read_to_end(deadline).await;
    let ended = Instant::now();
    let text = String::from_utf8_lossy(&body);
    let whole = text.ends_with("\n\n");
    let last = text
        .trim_end_matches('\n')
        .rsplit("\n\n")
        .next()
        .unwrap_or("");
    (
        ended,
        sse.body_complete() && whole && last.starts_with("retry: "),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_spreads_a_thousand_closes_over_the_window_and_exits() {
    let up = Upstream::start().await;
    let mut proxy = Proxy::start_with(
        ProxyConfig::new(up.addr)
            .section("auth", "mode = \"off\"")
            .section("sse", "heartbeat = \"0s\"\nstale_after = \"0s\"")
            .section("websocket", "ping_interval = \"0s\"")
            .section(
                "server",
                &format!(
                    "drain_delay = \"{}s\"\ndrain_window = \"{}s\"\ndrain_timeout = \"20s\"",
                    DELAY.as_secs(),
                    WINDOW.as_secs()
                ),
            ),
    )
    .await;
    let addr = proxy.addr;
    let sse = open_many(SSE_STREAMS, |_| async move {
        let mut sse = SseClient::connect(addr, "/sse?events=1&then=quiet", &[]).await;
        assert_eq!(sse.status, 200);
        assert!(sse.read_event(IO_TIMEOUT).await.is_some(), "first event");
        sse
    })
    .await;
    let sockets = open_many(WEBSOCKETS, |_| async move {
        ws_connect(addr, "/ws", &[]).await.expect("websocket").0
    })
    .await;
    let open = metric(&proxy.metrics().await, "streamguard_streams_active", &[]);
    assert_eq!(open, Some((SSE_STREAMS + WEBSOCKETS) as f64));

    let term = Instant::now();
    proxy.signal_term();
    let deadline = DELAY + WINDOW + Duration::from_secs(8);
    let sse_ends: Vec<_> = sse
        .into_iter()
        .map(|s| tokio::spawn(sse_end(s, deadline)))
        .collect();
    let ws_ends: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                while let Ok(Some(Ok(message))) = tokio::time::timeout(deadline, ws.next()).await {
                    if let Message::Close(frame) = message {
                        return (Instant::now(), frame.map(|f| f.code));
                    }
                }
                (Instant::now(), None)
            })
        })
        .collect();

    // During the delay: not ready any more, but still serving newcomers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(proxy.admin, "/readyz", &[]).await.status, 503);
    let mut late = SseClient::connect(addr, "/sse?events=1&then=quiet", &[]).await;
    assert_eq!(
        late.status, 200,
        "a client arriving during drain_delay is served"
    );
    assert!(late.read_event(IO_TIMEOUT).await.is_some());

    let mut offsets = Vec::new();
    for end in sse_ends {
        let (at, clean) = end.await.expect("task");
        assert!(
            clean,
            "an SSE stream ended mid-unit or without the retry hint"
        );
        offsets.push(at - term);
    }
    for end in ws_ends {
        let (at, code) = end.await.expect("task");
        assert_eq!(
            code,
            Some(CloseCode::Away),
            "every WebSocket gets close 1001"
        );
        offsets.push(at - term);
    }
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the process exits once drained: {status:?}"
    );

    // The closes come after the delay, within the window, and spread over it: each quarter of
    // the window holds about a quarter of them.
    let slack = Duration::from_millis(750);
    let first = offsets.iter().min().copied().unwrap_or_default();
    let last = offsets.iter().max().copied().unwrap_or_default();
    assert!(
        first >= DELAY - Duration::from_millis(100),
        "first close at {first:?}"
    );
    assert!(last <= DELAY + WINDOW + slack, "last close at {last:?}");
    let mut quarters = [0usize; 4];
    for offset in &offsets {
        let into = offset.saturating_sub(DELAY).as_secs_f64() / WINDOW.as_secs_f64();
        quarters[((into * 4.0) as usize).min(3)] += 1;
    }
    let total = offsets.len();
    for (i, n) in quarters.iter().enumerate() {
        let share = *n as f64 / total as f64;
        assert!(
            (0.15..=0.35).contains(&share),
            "quarter {i} of the window holds {share:.2} of the closes: {quarters:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn post_drain_from_loopback_drains_and_keeps_the_process_until_sigterm() {
    let up = Upstream::start().await;
    let mut proxy = Proxy::start_with(
        ProxyConfig::new(up.addr)
            .section("auth", "mode = \"off\"")
            .section("sse", "heartbeat = \"0s\"\nstale_after = \"0s\"")
            .section(
                "server",
                "drain_delay = \"0s\"\ndrain_window = \"1s\"\ndrain_timeout = \"5s\"",
            ),
    )
    .await;
    let mut sse = SseClient::connect(proxy.addr, "/sse?events=1&then=quiet", &[]).await;
    assert!(sse.read_event(IO_TIMEOUT).await.is_some());
    let drain = request_head(
        "POST",
        proxy.admin,
        "/drain?wait=1",
        &[("Content-Length", "0")],
        &[],
    );
    let started = Instant::now();
    let resp = http_request(proxy.admin, &drain).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(sse.wait_closed(IO_TIMEOUT).await, "the stream was drained");
    assert_eq!(get(proxy.admin, "/readyz", &[]).await.status, 503);
    assert!(
        proxy.wait_exit(Duration::from_millis(500)).await.is_none(),
        "an admin drain does not end the process"
    );
    proxy.signal_term();
    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// The two valid configurations the reload tests alternate between: `https://a.example` is
/// allowed by both, `https://b.example` only by the second.
fn origins(up: std::net::SocketAddr, b_too: bool) -> ProxyConfig {
    let allowed = if b_too {
        r#"["https://a.example", "https://b.example"]"#
    } else {
        r#"["https://a.example"]"#
    };
    ProxyConfig::new(up)
        .section("auth", "mode = \"off\"")
        .section("cors", &format!("allowed_origins = {allowed}"))
        .section("sse", "heartbeat = \"1s\"\nstale_after = \"0s\"")
        .section("websocket", "ping_interval = \"0s\"")
}

/// The status a plain request from `origin` gets now.
async fn status_from(addr: std::net::SocketAddr, origin: &str) -> u16 {
    get(addr, "/echo", &[("Origin", origin)]).await.status
}

/// `streamguard_config_reloads_total{result}` now.
async fn reloads(proxy: &Proxy, result: &str) -> f64 {
    metric(
        &proxy.metrics().await,
        "streamguard_config_reloads_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

/// Waits (at most `within`) until `check` holds; how long it took, or `None`.
async fn settles<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Reloads under load: 1,000 SSE streams and 100 WebSockets stay open through ten SIGHUPs that
/// alternate valid and invalid configurations; requests both configurations allow are never
/// refused meanwhile; each valid configuration shows on new requests within a second of its
/// signal; each invalid one changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_drop_nothing_and_apply_within_a_second() {
    const SSE: usize = 1000;
    const WS: usize = 100;
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(origins(up.addr, false)).await;
    let addr = proxy.addr;
    let from_a = [("Origin", "https://a.example")];
    let sse = open_many(SSE, |_| async move {
        let mut sse = SseClient::connect(addr, "/sse?events=1&then=quiet", &from_a).await;
        assert_eq!(sse.status, 200);
        assert!(sse.read_event(IO_TIMEOUT).await.is_some(), "first event");
        sse
    })
    .await;
    let sockets = open_many(WS, |_| async move {
        ws_connect(addr, "/ws", &from_a).await.expect("websocket").0
    })
    .await;

    // Requests that both configurations allow, all through the reloads.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut sent, mut refused) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = status_from(addr, "https://a.example").await;
                let mut fresh = SseClient::connect(addr, "/sse?events=1&then=close", &from_a).await;
                for status in [status, fresh.status] {
                    sent += 1;
                    if status != 200 {
                        refused.push(status);
                    }
                }
                fresh.read_to_end(IO_TIMEOUT).await;
            }
            (sent, refused)
        })
    };

    let broken =
        "[upstream]\naddress = \"127.0.0.1:1\"\n[cors]\nallowed_origins = \"not a list\"\n";
    let mut b_allowed = false;
    for round in 0..10 {
        let valid = round % 2 == 0;
        let (ok_before, error_before) =
            (reloads(&proxy, "ok").await, reloads(&proxy, "error").await);
        if valid {
            b_allowed = !b_allowed;
            proxy.rewrite_config(&origins(up.addr, b_allowed).with_ports_of(&proxy));
        } else {
            proxy.rewrite_config_text(broken);
        }
        proxy.signal("HUP");
        if valid {
            let want = if b_allowed { 200 } else { 403 };
            let took = settles(Duration::from_secs(1), || async {
                status_from(addr, "https://b.example").await == want
            })
            .await;
            assert!(
                took.is_some(),
                "round {round}: the new origins not in force within 1 s"
            );
            assert!(settles(IO_TIMEOUT, || async {
                reloads(&proxy, "ok").await > ok_before
            })
            .await
            .is_some());
        } else {
            assert!(
                settles(IO_TIMEOUT, || async {
                    reloads(&proxy, "error").await > error_before
                })
                .await
                .is_some(),
                "round {round}: the broken file was not refused"
            );
            let want = if b_allowed { 200 } else { 403 };
            assert_eq!(
                status_from(addr, "https://b.example").await,
                want,
                "round {round}: a refused reload changed something"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, refused) = prober.await.expect("prober");
    assert!(
        sent > 20,
        "the prober ran through the reloads ({sent} requests)"
    );
    assert!(
        refused.is_empty(),
        "requests both configurations allow were refused: {refused:?}"
    );

    // The prober's last stream has just ended at the client; the gauge follows a moment later.
    assert_metric(&proxy, "streamguard_streams_active", &[], (SSE + WS) as f64).await;
    // Every stream is still open and still served: a heartbeat on each SSE stream, an echo on
    // each WebSocket.
    let alive: Vec<_> = sse
        .into_iter()
        .map(|mut sse| {
            tokio::spawn(async move {
                let chunk = sse.next_chunk(Duration::from_secs(5)).await;
                chunk.is_some() && !sse.is_ended()
            })
        })
        .collect();
    for (i, alive) in alive.into_iter().enumerate() {
        assert!(alive.await.expect("task"), "SSE stream {i} was dropped");
    }
    for (i, mut ws) in sockets.into_iter().enumerate() {
        use futures_util::SinkExt;
        let text = format!("still here {i}");
        ws.send(Message::text(text.clone())).await.expect("send");
        let echo = tokio::time::timeout(IO_TIMEOUT, ws.next()).await;
        assert!(
            matches!(echo, Ok(Some(Ok(Message::Text(ref t)))) if t.as_str() == text),
            "WebSocket {i} was dropped: {echo:?}"
        );
    }
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "streamguard_config_reloads_total",
            &[("result", "ok")]
        ),
        Some(5.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "streamguard_config_reloads_total",
            &[("result", "error")]
        ),
        Some(5.0)
    );
    let reloaded: Vec<_> = proxy
        .json_logs()
        .into_iter()
        .filter(|l| l["message"] == "configuration reloaded")
        .collect();
    assert_eq!(reloaded.len(), 5);
    assert!(
        reloaded.iter().all(
            |l| l["config"].as_str().is_some_and(|h| h.len() == 16) && l["trigger"] == "SIGHUP"
        ),
        "{reloaded:?}"
    );
}

/// An HS256 token for `sub` signed with `secret`, valid for ten minutes.
fn token_signed_with(secret: &str, sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let claims = serde_json::json!({ "sub": sub, "iat": now, "exp": now + 600 });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing");
    format!("Bearer {token}")
}

/// A reload that rotates the HS256 secret: tokens signed with the old one are refused for new
/// requests at once, and the streams they opened end within `drain_window`, spread out and at
/// an event boundary, with an event saying why (a WebSocket with close 1008 "token revoked");
/// streams of the new key stay.
#[tokio::test(flavor = "multi_thread")]
async fn rotating_the_secret_refuses_old_tokens_and_ends_their_streams_within_the_window() {
    const NEW_SECRET: &str = "the-rotated-integration-secret-9876543210-abcdef";
    const WINDOW: Duration = Duration::from_secs(2);
    let up = Upstream::start().await;
    let config = |secret: &str| {
        ProxyConfig::new(up.addr)
            .section(
                "auth",
                &format!("mode = \"required\"\nsecret = \"{secret}\""),
            )
            .section("sse", "heartbeat = \"0s\"\nstale_after = \"0s\"")
            .section("server", "drain_window = \"2s\"")
    };
    let proxy = Proxy::start_with(config(TEST_SECRET)).await;
    let old = token_signed_with(TEST_SECRET, "alice");
    let new = token_signed_with(NEW_SECRET, "bob");
    let mut old_streams = Vec::new();
    for _ in 0..20 {
        let mut sse = SseClient::connect(
            proxy.addr,
            "/sse?events=1&then=quiet",
            &[("Authorization", &old)],
        )
        .await;
        assert_eq!(sse.status, 200);
        assert!(sse.read_event(IO_TIMEOUT).await.is_some());
        old_streams.push(sse);
    }
    let (mut old_ws, _) = ws_connect(proxy.addr, "/ws/echo", &[("Authorization", &old)])
        .await
        .expect("a WebSocket of the old key");
    assert_eq!(
        get(proxy.addr, "/echo", &[("Authorization", &new)])
            .await
            .status,
        401
    );

    proxy.rewrite_config(&config(NEW_SECRET).with_ports_of(&proxy));
    let signalled = Instant::now();
    proxy.signal("HUP");
    assert!(
        settles(Duration::from_secs(1), || async {
            get(proxy.addr, "/echo", &[("Authorization", &new)])
                .await
                .status
                == 200
        })
        .await
        .is_some(),
        "the new secret is not in force within 1 s"
    );
    assert_eq!(
        get(proxy.addr, "/echo", &[("Authorization", &old)])
            .await
            .status,
        401,
        "an old token"
    );
    let mut kept = SseClient::connect(
        proxy.addr,
        "/sse?events=1&then=quiet",
        &[("Authorization", &new)],
    )
    .await;
    assert_eq!(kept.status, 200);
    assert!(kept.read_event(IO_TIMEOUT).await.is_some());

    let ends: Vec<_> = old_streams
        .into_iter()
        .map(|mut sse| {
            tokio::spawn(async move {
                let body = sse.read_to_end(WINDOW + Duration::from_secs(5)).await;
                (
                    Instant::now(),
                    sse.is_ended(),
                    String::from_utf8_lossy(&body).into_owned(),
                )
            })
        })
        .collect();
    let ws_closed = tokio::spawn(async move {
        let close = ws_until_close(&mut old_ws, WINDOW + Duration::from_secs(5)).await;
        (close, Instant::now())
    });
    let mut offsets = Vec::new();
    for end in ends {
        let (at, ended, body) = end.await.expect("task");
        assert!(ended, "a stream of the rotated-out key is still open");
        assert!(
            body.ends_with("event: streamguard.expired\ndata: {\"reason\":\"key_revoked\"}\n\n"),
            "ended without the revocation event, or mid-event: {body:?}"
        );
        offsets.push(at - signalled);
    }
    let last = offsets.iter().max().copied().unwrap_or_default();
    let first = offsets.iter().min().copied().unwrap_or_default();
    assert!(
        last <= WINDOW + Duration::from_millis(750),
        "last end at {last:?}"
    );
    assert!(
        last - first >= WINDOW / 4,
        "the ends are not spread: {first:?}..{last:?}"
    );
    assert!(
        kept.read_event(Duration::from_millis(500)).await.is_none() && !kept.is_ended(),
        "a stream of the new key ended"
    );
    // Counted once each relay has let go of its sockets, a moment after the client saw the end.
    assert_metric(
        &proxy,
        "streamguard_stream_closes_total",
        &[("reason", "revoked")],
        21.0,
    )
    .await;
    let (close, at) = ws_closed.await.expect("task");
    assert_eq!(close, Ok((1008, "token revoked".to_owned())));
    assert!(at - signalled <= WINDOW + Duration::from_millis(750));
}

/// A reload that removes an origin refuses it from the next request on, while the per-user
/// stream counts carry over: a user at `max_streams_per_user` before the reload is still at it.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_removes_an_origin_and_keeps_the_user_counts() {
    let up = Upstream::start().await;
    let config = |b_too: bool| {
        origins(up.addr, b_too)
            .section("auth", "mode = \"required\"")
            .section("limits", "max_streams_per_user = 2")
    };
    let proxy = Proxy::start_with(config(true)).await;
    let alice = common::streams::bearer("alice");
    let headers = [
        ("Origin", "https://b.example"),
        ("Authorization", alice.as_str()),
    ];
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut sse = SseClient::connect(proxy.addr, "/sse?events=1&then=quiet", &headers).await;
        assert_eq!(sse.status, 200);
        assert!(sse.read_event(IO_TIMEOUT).await.is_some());
        held.push(sse);
    }

    proxy.rewrite_config(
        &config(false)
            .section("listen", "max_connections = 500")
            .with_ports_of(&proxy),
    );
    let resp = proxy.post_admin("/reload").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        resp.text().contains("changed: listen, cors"),
        "{}",
        resp.text()
    );
    assert_eq!(
        metric(&proxy.metrics().await, "streamguard_connections_max", &[]),
        Some(500.0),
        "the cap in force"
    );
    let headers_a = [
        ("Origin", "https://a.example"),
        ("Authorization", alice.as_str()),
    ];
    assert_eq!(
        get(proxy.addr, "/echo", &headers).await.status,
        403,
        "a removed origin"
    );
    let third = SseClient::connect(proxy.addr, "/sse?events=1&then=quiet", &headers_a).await;
    assert_eq!(third.status, 429, "the reload reset alice's stream count");
    for sse in &mut held {
        assert!(
            sse.read_event(Duration::from_millis(300)).await.is_none() && !sse.is_ended(),
            "a stream opened under the old origins ended"
        );
    }
}

/// A reload keeps what the limiter knows (a user's connect rate), and open streams keep the
/// settings they started with: a stream opened with heartbeats goes on getting them after a
/// reload that turns heartbeats off, while a stream opened after it gets none.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_rate_state_and_open_streams_keep_their_settings() {
    let up = Upstream::start().await;
    let config = |heartbeat: &str| {
        ProxyConfig::new(up.addr)
            .section("auth", "mode = \"required\"")
            .section(
                "sse",
                &format!("heartbeat = \"{heartbeat}\"\nstale_after = \"0s\""),
            )
            .section("limits", "connects_per_user = \"2/minute\"")
    };
    let proxy = Proxy::start_with(config("1s")).await;
    let open = |user: &str| {
        let auth = common::streams::bearer(user);
        let addr = proxy.addr;
        async move {
            SseClient::connect(
                addr,
                "/sse?events=1&then=quiet",
                &[("Authorization", &auth)],
            )
            .await
        }
    };
    let mut old = open("alice").await;
    assert_eq!(old.status, 200);
    assert!(old.read_event(IO_TIMEOUT).await.is_some());
    assert_eq!(open("alice").await.status, 200, "alice's second connect");

    proxy.rewrite_config(&config("0s").with_ports_of(&proxy));
    let resp = proxy.post_admin("/reload").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        open("alice").await.status,
        429,
        "the reload forgot alice's two connects this minute"
    );
    // Counted as the refusal is logged, a moment after the client has its answer.
    assert_metric(
        &proxy,
        "streamguard_rejections_total",
        &[("reason", "connect_rate")],
        1.0,
    )
    .await;

    let mut new = open("bob").await;
    assert_eq!(new.status, 200);
    assert!(new.read_event(IO_TIMEOUT).await.is_some());
    assert_eq!(
        old.read_event(Duration::from_secs(3)).await.as_deref(),
        Some(": ping"),
        "the stream opened before the reload lost its heartbeat"
    );
    assert_eq!(
        new.read_event(Duration::from_millis(2500)).await,
        None,
        "a stream opened after the reload got a heartbeat"
    );
}

/// What a reload refuses, and how it says so: a broken file (key and line, in the answer and
/// the log), a key only a restart can change, a command from a browser. Each leaves the
/// running configuration in place and is counted by result.
#[tokio::test(flavor = "multi_thread")]
async fn refused_reloads_name_the_problem_and_change_nothing() {
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(origins(up.addr, false)).await;
    let running = || origins(up.addr, false).with_ports_of(&proxy);

    let mut broken = running().render();
    broken.push_str("\n[limits]\nmax_streams_per_user = -3\n");
    proxy.rewrite_config_text(&broken);
    let resp = proxy.post_admin("/reload").await;
    let text = resp.text();
    assert_eq!(resp.status, 400, "{text}");
    assert!(
        text.contains("limits.max_streams_per_user") && text.contains("line "),
        "{text}"
    );

    let moved = running()
        .section("admin", "address = \"127.0.0.1:1\"")
        .section("server", "threads = 3");
    proxy.rewrite_config(&moved);
    let resp = proxy.post_admin("/reload").await;
    let text = resp.text();
    assert_eq!(resp.status, 400, "{text}");
    assert!(
        text.contains("admin.address, server.threads") && text.contains("restart"),
        "{text}"
    );

    proxy.rewrite_config(&running().section("cors", "allowed_origins = [\"https://b.example\"]"));
    let raw = request_head(
        "POST",
        proxy.admin,
        "/reload",
        &[("Content-Length", "0"), ("Origin", "https://evil.example")],
        &[],
    );
    assert_eq!(
        http_request(proxy.admin, &raw).await.status,
        403,
        "a command from a browser"
    );

    assert_eq!(
        status_from(proxy.addr, "https://a.example").await,
        200,
        "the first configuration still serves"
    );
    assert_eq!(reloads(&proxy, "error").await, 1.0);
    assert_eq!(reloads(&proxy, "restart_required").await, 1.0);
    assert_eq!(reloads(&proxy, "ok").await, 0.0);
    let refused: Vec<_> = proxy
        .json_logs()
        .into_iter()
        .filter(|l| l["message"] == "reload refused; the running configuration stays")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("limits.max_streams_per_user")));
}

/// `server.watch_config` reloads a changed file by itself (renamed over, as Kubernetes does),
/// refuses a broken one once rather than at every poll, and changes the log level.
#[tokio::test(flavor = "multi_thread")]
async fn watch_config_reloads_changed_files_and_refuses_a_broken_one_once() {
    let up = Upstream::start().await;
    let config = |b_too: bool, level: &str| {
        origins(up.addr, b_too)
            .section("server", "watch_config = true\nwatch_interval = \"100ms\"")
            .section("log", &format!("level = \"{level}\""))
    };
    let proxy = Proxy::start_with(config(false, "warn")).await;
    proxy.rewrite_config(&config(true, "info").with_ports_of(&proxy));
    assert!(
        settles(Duration::from_secs(3), || async {
            status_from(proxy.addr, "https://b.example").await == 200
        })
        .await
        .is_some(),
        "the watched change was not applied"
    );
    // The reload line is written at info, which the new level allows.
    assert!(
        settles(Duration::from_secs(2), || async {
            proxy.json_logs().iter().any(|l| {
                l["message"] == "configuration reloaded" && l["trigger"] == "server.watch_config"
            })
        })
        .await
        .is_some(),
        "{}",
        proxy.logs()
    );

    proxy.rewrite_config_text("[upstream\n");
    assert!(
        settles(Duration::from_secs(5), || async {
            reloads(&proxy, "error").await >= 1.0
        })
        .await
        .is_some(),
        "the broken file was never refused"
    );
    // Ten more polls of the unchanged file.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        reloads(&proxy, "error").await,
        1.0,
        "a broken file is refused once, not at every poll"
    );
    assert_eq!(status_from(proxy.addr, "https://b.example").await, 200);
}

/// A reload renews the TLS certificate: the next handshake presents the new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_renews_the_tls_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let issue = |name: &str| Certificate::issue(dir.path(), name);
    let presented = |addr: std::net::SocketAddr| {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string()])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("subject="))
            .unwrap_or_default()
            .to_owned()
    };
    let certificate = issue("first.example");
    let up = Upstream::start().await;
    let config = ProxyConfig::new(up.addr).section("listen", &certificate.listen_keys());
    let proxy = Proxy::start_with(config).await;
    assert!(presented(proxy.addr).contains("first.example"));
    issue("second.example");
    let resp = proxy.post_admin("/reload").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(presented(proxy.addr).contains("second.example"));
}
