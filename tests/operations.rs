//! Operating streamguard without dropping streams: the drain spread over a window, and reloads
//! of the configuration while streams run. Real processes, real signals, real sockets.

mod common;

use std::time::{Duration, Instant};

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
