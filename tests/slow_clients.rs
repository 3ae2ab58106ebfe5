//! Slow SSE clients never slow the app: the real `streamguard` binary between raw SSE clients
//! and the demo upstream's `/broadcast`, one loop that writes every event to every connection
//! and waits for each write (as legacy apps do), timing each write. A client that stops reading
//! must not hold that loop back, the other clients' events must keep flowing, and the proxy's
//! buffering must stay within `sse.client_buffer` per stream and `sse.slow_buffer_total` in all.
//!
//! A stalled client is a socket on a phone-like link (small receive buffer, 536-byte MSS, so the
//! kernel's buffers in front of the proxy's hold about 100 KiB) that reads nothing after its
//! response head.

mod common;

use std::time::{Duration, Instant};

use common::{
    event_data, event_field, metric, rss_kib, wait_metrics, wait_metrics_within, wait_until, Proxy,
    ProxyConfig, SseClient, Upstream, IO_TIMEOUT,
};

/// The broadcast's pace and event size: megabytes a second to every connection. Between the
/// app and the proxy are loopback sockets, whose kernel buffers hold about 4 MB: a relay that
/// passed back-pressure on would hold the app back after a second or so at this rate (after
/// many seconds at a slower one).
const BROADCAST: &str = "interval_ms=1&size=8192";
const EVENT_SIZE: usize = 8192;
/// Longest the app may wait on one write before the test calls it held back. Writes to a
/// socket with room take microseconds; the bound leaves room for a busy shared machine, and
/// without the fix the wait lasts until `write_timeout` drops the client (20 s here).
const APP_STALL_LIMIT: Duration = Duration::from_millis(500);

fn config(up: &Upstream, sse: &str) -> ProxyConfig {
    ProxyConfig::new(up.addr)
        .section("auth", "mode = \"off\"")
        .section("sse", "heartbeat = \"0s\"\nstale_after = \"0s\"")
        .section("sse", sse)
}

/// Starts the proxy and waits until its public port accepts connections too (Pingora binds it
/// a moment after the admin port the harness waits for).
async fn launch(config: ProxyConfig) -> Proxy {
    let proxy = Proxy::start_with(config).await;
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
            proxy.addr
        )
        .is_ok())
        .await,
        "the proxy port {} never accepted connections",
        proxy.addr
    );
    proxy
}

fn broadcast(name: &str) -> String {
    format!("/broadcast?{BROADCAST}&name={name}")
}

async fn stalled_client(proxy: &Proxy, name: &str) -> SseClient {
    let sse = SseClient::connect_slow_link(proxy.addr, &broadcast(name), &[])
        .await
        .unwrap_or_else(|e| panic!("stalled client {name}: {e}"));
    assert_eq!(sse.status, 200);
    sse
}

fn gauge(text: &str, name: &str) -> f64 {
    metric(text, name, &[]).unwrap_or(0.0)
}

fn skipped_metric(text: &str) -> f64 {
    metric(
        text,
        "streamguard_dropped_events_total",
        &[("reason", "slow_client")],
    )
    .unwrap_or(0.0)
}

fn slow_closes(text: &str) -> f64 {
    metric(
        text,
        "streamguard_stream_closes_total",
        &[("kind", "sse"), ("reason", "slow_client")],
    )
    .unwrap_or(0.0)
}

/// One broadcast event as the client got it: its `id`, checked whole (the data carries the same
/// number and the full padding to `size`).
fn broadcast_id(block: &str, size: usize) -> u64 {
    let id: u64 = event_field(block, "id")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("not a broadcast event: {block:?}"));
    let data = event_data(block).unwrap_or_default();
    assert!(
        data.starts_with(&format!("{id} ")) && data.len() >= size,
        "event {id} is not whole: {} bytes of data",
        data.len()
    );
    id
}

/// The broadcast never waited long on a write (the one in progress included).
fn assert_app_never_held_back(up: &Upstream) {
    let longest = up.stats.broadcast_longest_write();
    assert!(
        longest < APP_STALL_LIMIT,
        "the app was held back: a write waited {longest:?}; to stalled: {:?}, to fast: {:?}",
        up.stats.broadcast_writes("stalled"),
        up.stats.broadcast_writes("fast"),
    );
}

/// The broadcast wrote to the stalled connection as to the fast one: the proxy read it.
fn assert_written_alike(up: &Upstream) {
    let to_stalled = up.stats.broadcast_writes("stalled").unwrap_or_default();
    let to_fast = up.stats.broadcast_writes("fast").unwrap_or_default();
    assert!(
        // The two counts are read one after the other while the loop goes on.
        to_stalled.events > 200 && to_stalled.events + 50 >= to_fast.events,
        "the app wrote less to the stalled connection: {to_stalled:?}, fast: {to_fast:?}"
    );
}

/// What a client that keeps reading saw over a window.
#[derive(Debug)]
struct Flow {
    events: u64,
    /// The longest time between two events: how long the client was held back.
    longest_quiet: Duration,
}

/// Reads `sse` for `window`, checking every event is whole (`size` bytes of data) and ids are
/// consecutive.
async fn read_flow(mut sse: SseClient, window: Duration, size: usize) -> (SseClient, Flow) {
    let deadline = Instant::now() + window;
    let mut last: Option<(u64, Instant)> = None;
    let mut flow = Flow {
        events: 0,
        longest_quiet: Duration::ZERO,
    };
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        let Some((block, at)) = sse.read_event_at(left).await else {
            assert!(!sse.is_ended(), "a fast client's stream ended");
            break;
        };
        if block.starts_with("retry: ") {
            // The hint that opens every stream when `sse.retry` is set.
            continue;
        }
        let id = broadcast_id(&block, size);
        if let Some((prev, prev_at)) = last {
            assert_eq!(id, prev + 1, "a fast client missed events");
            flow.longest_quiet = flow.longest_quiet.max(at - prev_at);
        }
        last = Some((id, at));
        flow.events += 1;
    }
    (sse, flow)
}

/// [`read_flow`], for a reader task that only reports.
async fn read_flow_of(sse: SseClient, window: Duration, size: usize) -> Flow {
    read_flow(sse, window, size).await.1
}

/// Checks a stalled client's stream once it reads again: whole events, every gap announced by
/// one `streamguard.skipped` notice right before the event after it, with the count of the
/// missing events and the id of the last one. Returns the events and the notices' total count.
fn check_resumed(blocks: &[String]) -> (u64, u64) {
    let mut prev: Option<u64> = None;
    let mut notice: Option<(u64, String)> = None;
    let (mut events, mut skipped) = (0, 0);
    for block in blocks {
        if event_field(block, "event") == Some("streamguard.skipped") {
            assert!(notice.is_none(), "two notices in a row: {blocks:?}");
            let data = event_data(block).unwrap_or_default();
            let json: serde_json::Value =
                serde_json::from_str(&data).unwrap_or_else(|e| panic!("{data:?}: {e}"));
            let count = json["count"].as_u64().expect("count");
            let last_id = json["last_id"].as_str().expect("last_id").to_owned();
            assert!(count > 0, "{data}");
            skipped += count;
            notice = Some((count, last_id));
            continue;
        }
        let id = broadcast_id(block, EVENT_SIZE);
        if let Some(prev) = prev {
            match notice.take() {
                None => assert_eq!(id, prev + 1, "events missing without a notice"),
                Some((count, last_id)) => {
                    assert_eq!(id, prev + count + 1, "the notice's count is the gap");
                    assert_eq!(last_id, (id - 1).to_string(), "the last skipped id");
                }
            }
        }
        prev = Some(id);
        events += 1;
    }
    (events, skipped)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_client_never_holds_back_the_app_and_skip_tells_it_what_it_missed() {
    let up = Upstream::start().await;
    let proxy = launch(config(
        &up,
        "on_slow_client = \"skip\"\nclient_buffer = \"64KiB\"\nwrite_timeout = \"20s\"",
    ))
    .await;
    let fast = SseClient::connect(proxy.addr, &broadcast("fast"), &[]).await;
    let mut stalled = stalled_client(&proxy, "stalled").await;
    let flowing = tokio::spawn(read_flow(fast, Duration::from_secs(4), EVENT_SIZE));

    // At 500 KB/s the kernel's buffers fill in a fraction of a second, then the proxy's 64 KiB,
    // then events are skipped: three seconds of that.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_app_never_held_back(&up);
    assert_written_alike(&up);
    let (_fast, flow) = flowing.await.expect("fast reader");
    assert!(
        flow.events > 100 && flow.longest_quiet < Duration::from_secs(1),
        "the other client's events did not keep flowing: {flow:?}"
    );
    // Polled: should the kernel's send buffer grow and take the whole queue, the client counts
    // as caught up until the socket is full again.
    wait_metrics(&proxy, "events skipped for a client that is behind", |t| {
        skipped_metric(t) > 0.0
            && gauge(t, "streamguard_slow_clients") == 1.0
            && gauge(t, "streamguard_slow_buffer_bytes") > 0.0
    })
    .await;
    // While it skips, its buffer stays within its bound (and drains only as the client takes
    // bytes: nothing new is queued before it has caught up).
    for _ in 0..5 {
        let text = proxy.metrics().await;
        let buffered = gauge(&text, "streamguard_slow_buffer_bytes");
        assert!(
            buffered <= 65_536.0,
            "buffered {buffered} bytes for a 64 KiB client_buffer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // It reads again: whole events, then the notice, then the events after the gap.
    let mut blocks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !blocks
        .iter()
        .rev()
        .take(20)
        .any(|b: &String| b.contains("streamguard.skipped"))
        || blocks
            .last()
            .is_some_and(|b| b.contains("streamguard.skipped"))
    {
        assert!(Instant::now() < deadline, "no notice after catching up");
        let block = stalled
            .read_event(IO_TIMEOUT)
            .await
            .expect("the stream goes on");
        blocks.push(block);
    }
    for _ in 0..20 {
        blocks.push(
            stalled
                .read_event(IO_TIMEOUT)
                .await
                .expect("events after the gap"),
        );
    }
    let (events, skipped) = check_resumed(&blocks);
    assert!(
        events > 20 && skipped > 0,
        "{events} events, {skipped} skipped"
    );
    let text = proxy.metrics().await;
    assert!(
        skipped_metric(&text) >= skipped as f64,
        "the metric counts what the notices announce"
    );
    assert_app_never_held_back(&up);
    // Caught up: nothing is held for it any more.
    wait_metrics_within(&proxy, Duration::from_secs(5), "no slow client", |t| {
        gauge(t, "streamguard_slow_clients") == 0.0
            && gauge(t, "streamguard_slow_buffer_bytes") == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_client_is_closed_with_the_retry_hint_and_the_app_is_never_held_back() {
    let up = Upstream::start().await;
    let proxy = launch(config(
        &up,
        "client_buffer = \"64KiB\"\nwrite_timeout = \"20s\"\nretry = \"1500ms\"",
    ))
    .await;
    let fast = SseClient::connect(proxy.addr, &broadcast("fast"), &[]).await;
    let mut stalled = stalled_client(&proxy, "stalled").await;
    let flowing = tokio::spawn(read_flow(fast, Duration::from_secs(3), EVENT_SIZE));
    // The kernel's buffers and the 64 KiB fill within a second; the stream is closed then,
    // and its upstream connection released: how many events the app wrote to it before that
    // depends on the kernel's buffer sizing, so only the app's write waits are checked.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_app_never_held_back(&up);
    let (_fast, flow) = flowing.await.expect("fast reader");
    assert!(
        flow.events > 100 && flow.longest_quiet < Duration::from_secs(1),
        "the other client's events did not keep flowing: {flow:?}"
    );
    // Closed, it waits for the client to take its last bytes: whole events within the bound,
    // then the retry hint and the end of the body. On a loaded machine the app's events (and so
    // the filling of the kernel's buffers) can take longer than the flow check above. Rarely,
    // the kernel's send buffer has grown enough to take those last bytes at once: the stream
    // has then ended already, and there is no wait to look at.
    let text = wait_metrics_within(
        &proxy,
        Duration::from_secs(10),
        "the stalled stream's last bytes, or its end",
        |t| {
            (gauge(t, "streamguard_slow_clients") == 1.0
                && gauge(t, "streamguard_slow_buffer_bytes") > 0.0)
                || slow_closes(t) == 1.0
        },
    )
    .await;
    if slow_closes(&text) == 0.0 {
        let buffered = gauge(&text, "streamguard_slow_buffer_bytes");
        assert!(
            buffered <= 65_536.0 + 64.0,
            "buffered {buffered} bytes for a 64 KiB client_buffer"
        );
        // Still counted as behind, and not as closed, until the client has its last bytes.
        assert_eq!(gauge(&text, "streamguard_slow_clients"), 1.0);
    }

    // It reads again: the whole events it had queued, the retry hint, the end.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut body = Vec::new();
    while let Some(chunk) = stalled
        .next_chunk(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        body.extend(chunk.data);
    }
    assert!(stalled.body_complete(), "the stream ends cleanly");
    let mut buf = body;
    let mut blocks = Vec::new();
    while let Some(block) = common::split_event(&mut buf) {
        blocks.push(block);
    }
    assert!(buf.is_empty(), "a half block at the end: {buf:?}");
    assert_eq!(blocks.first().map(String::as_str), Some("retry: 1500"));
    assert_eq!(blocks.last().map(String::as_str), Some("retry: 1500"));
    let events = &blocks[1..blocks.len() - 1];
    let (whole, skipped) = check_resumed(events);
    assert!(
        whole > 10 && skipped == 0,
        "{whole} events, {skipped} skipped"
    );
    let text = wait_metrics_within(&proxy, Duration::from_secs(5), "a slow_client close", |t| {
        slow_closes(t) == 1.0
    })
    .await;
    assert_eq!(skipped_metric(&text), 0.0, "close mode skips nothing");
    assert_eq!(gauge(&text, "streamguard_slow_buffer_bytes"), 0.0);
    assert!(
        wait_until(Duration::from_secs(2), || up.stats.open_streams() == 1).await,
        "the closed stream's upstream connection must be released"
    );
}

/// In close mode the process-wide budget closes streams too: two stalled clients, each far
/// below its own `client_buffer`, share a `slow_buffer_total` smaller than one buffer; both are
/// closed with the retry hint once it is full, and the proxy never holds much more than it.
///
/// The gauge is sampled while they fill it rather than read once later: streams whose last
/// bytes the kernel took at once have ended by then, and it is back at zero.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_budget_closes_stalled_streams_that_are_within_their_own_buffer() {
    const BUDGET: usize = 96 * 1024;
    const CLIENT_BUFFER: usize = 1024 * 1024;
    let up = Upstream::start().await;
    let proxy = launch(config(
        &up,
        "client_buffer = \"1MiB\"\nslow_buffer_total = \"96KiB\"\nwrite_timeout = \"20s\"\n\
         retry = \"1500ms\"",
    ))
    .await;
    let mut stalled = [
        stalled_client(&proxy, "stalled-1").await,
        stalled_client(&proxy, "stalled-2").await,
    ];
    // At 8 MB/s the kernel's buffers and the budget fill within tens of milliseconds; a stream
    // that is refused a unit then closes, and ends once the kernel takes its last bytes
    // (at once, or only when the client reads). Which, and when, is the kernel's choice, and
    // nothing outside shows a stream that is closing but not over: the gauge is watched for a
    // while, the close itself is checked by what each client gets.
    let watch_until = Instant::now() + Duration::from_secs(3);
    let mut peak = 0.0_f64;
    while Instant::now() < watch_until {
        let text = proxy.metrics().await;
        peak = peak.max(gauge(&text, "streamguard_slow_buffer_bytes"));
        if slow_closes(&text) == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Bytes already in memory are held whether or not there is room (the rest of a write the
    // socket only partly took: at most one write of 64 KiB and an event past it per stream).
    let slack = 2 * (64 * 1024 + 2 * EVENT_SIZE);
    assert!(
        peak <= (BUDGET + slack) as f64,
        "buffered {peak} bytes under a {BUDGET}-byte budget"
    );
    assert_app_never_held_back(&up);
    for (i, sse) in stalled.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut body = Vec::new();
        while let Some(chunk) = sse
            .next_chunk(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            body.extend(chunk.data);
        }
        assert!(sse.body_complete(), "stalled {i}: the stream ends cleanly");
        // What the proxy held plus what the kernel's buffers did: a stream closed by its own
        // buffer would have sent it a whole megabyte.
        assert!(
            body.len() < CLIENT_BUFFER / 2,
            "stalled {i}: {} bytes before the close",
            body.len()
        );
        let mut blocks = Vec::new();
        while let Some(block) = common::split_event(&mut body) {
            blocks.push(block);
        }
        assert!(body.is_empty(), "stalled {i}: a half block at the end");
        assert_eq!(blocks.last().map(String::as_str), Some("retry: 1500"));
    }
    // The budget is given back as each relay ends, the close counted a moment later.
    wait_metrics_within(
        &proxy,
        Duration::from_secs(5),
        "two slow_client closes and an empty budget",
        |t| slow_closes(t) == 2.0 && gauge(t, "streamguard_slow_buffer_bytes") == 0.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_reads_nothing_is_dropped_after_write_timeout_even_when_skipping() {
    let up = Upstream::start().await;
    let proxy = launch(config(
        &up,
        "on_slow_client = \"skip\"\nclient_buffer = \"64KiB\"\nwrite_timeout = \"2s\"",
    ))
    .await;
    let fast = SseClient::connect(proxy.addr, &broadcast("fast"), &[]).await;
    let _stalled = stalled_client(&proxy, "stalled").await;
    let flowing = tokio::spawn(read_flow(fast, Duration::from_secs(5), EVENT_SIZE));
    let started = Instant::now();
    let text = wait_metrics_within(
        &proxy,
        Duration::from_secs(10),
        "a slow_client close",
        |t| slow_closes(t) == 1.0,
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "dropped before its write timeout: {:?}",
        started.elapsed()
    );
    assert_app_never_held_back(&up);
    assert!(skipped_metric(&text) > 0.0, "it skipped events first");
    assert_eq!(gauge(&text, "streamguard_slow_clients"), 0.0);
    assert_eq!(gauge(&text, "streamguard_slow_buffer_bytes"), 0.0);
    assert!(
        wait_until(Duration::from_secs(2), || up.stats.open_streams() == 1).await,
        "the dropped stream's upstream connection must be released"
    );
    let (_fast, flow) = flowing.await.expect("fast reader");
    assert!(
        flow.longest_quiet < Duration::from_secs(1),
        "the other client's events did not keep flowing: {flow:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_stalled_clients_stay_within_the_budget_and_fast_clients_flow() {
    const STALLED: usize = 2000;
    const SHARDS: usize = 20;
    const BUDGET: usize = 4 << 20;
    const SIZE: usize = 4096;
    // 4 KiB every 100 ms to every connection: 80 MB/s through the proxy once all are open.
    let plan = format!("interval_ms=100&size={SIZE}");
    let up = Upstream::start().await;
    let proxy = launch(config(
        &up,
        "on_slow_client = \"skip\"\nslow_buffer_total = \"4MiB\"\nwrite_timeout = \"60s\"",
    ))
    .await;
    let mut fast = Vec::new();
    for i in 0..3 {
        let target = format!("/broadcast?{plan}&name=fast-{i}");
        fast.push(SseClient::connect(proxy.addr, &target, &[]).await);
    }
    let started = Instant::now();
    let baseline = rss_kib(proxy.pid());

    // 2,000 phones that read nothing, opened by 20 tasks side by side.
    let shards: Vec<_> = (0..SHARDS)
        .map(|shard| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                let mut held = Vec::new();
                for i in (shard..STALLED).step_by(SHARDS) {
                    let target = format!("/broadcast?name=stalled-{i}");
                    let sse = SseClient::connect_slow_link(addr, &target, &[])
                        .await
                        .unwrap_or_else(|e| panic!("stalled client {i}: {e}"));
                    assert_eq!(sse.status, 200);
                    held.push(sse);
                }
                held
            })
        })
        .collect();
    let mut stalled = Vec::new();
    for shard in shards {
        stalled.extend(
            tokio::time::timeout(Duration::from_secs(30), shard)
                .await
                .expect("2,000 streams open within 30 s")
                .expect("shard"),
        );
    }
    let opened = started.elapsed();
    let connected = rss_kib(proxy.pid());

    // Every stalled client falls behind; the budget runs out at once and they skip.
    let text = wait_metrics_within(&proxy, Duration::from_secs(20), "2,000 slow clients", |t| {
        gauge(t, "streamguard_slow_clients") >= (STALLED - 10) as f64
    })
    .await;
    let saturated = started.elapsed();
    let flowing: Vec<_> = fast
        .into_iter()
        .map(|sse| tokio::spawn(read_flow_of(sse, Duration::from_secs(4), SIZE)))
        .collect();
    // The most any moment holds: the budget, plus what is in memory already when a stream falls
    // behind (the rest of the write its socket only partly took, at most a wake-up's events).
    let bound = BUDGET + STALLED * (SIZE + 128);
    let mut peak_rss = connected;
    let mut peak_buffered = 0.0f64;
    for _ in 0..8 {
        let text = proxy.metrics().await;
        peak_buffered = peak_buffered.max(gauge(&text, "streamguard_slow_buffer_bytes"));
        peak_rss = peak_rss.max(rss_kib(proxy.pid()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let grew_mib = peak_rss.saturating_sub(connected) as f64 / 1024.0;
    let total_mib = peak_rss.saturating_sub(baseline) as f64 / 1024.0;
    eprintln!(
        "2,000 stalled: opened in {opened:?}, saturated at {saturated:?}; RSS {baseline} KiB \
         before, {connected} KiB once open, peak {peak_rss} KiB; peak buffered {peak_buffered}"
    );
    // Without the budget each stalled stream would buffer up to client_buffer (256 KiB): half
    // a gigabyte. With it, RSS grows by at most the bound (allocator slack on top).
    assert!(
        grew_mib < bound as f64 / (1 << 20) as f64 + 16.0,
        "RSS grew {grew_mib:.1} MiB after the streams opened (bound {:.1} MiB)",
        bound as f64 / (1 << 20) as f64
    );
    assert!(
        total_mib < 200.0,
        "RSS grew {total_mib:.1} MiB for 2,000 streams"
    );
    assert!(
        peak_buffered <= bound as f64,
        "{peak_buffered} bytes buffered, over the bound of {bound}"
    );
    assert!(
        skipped_metric(&text) > 0.0,
        "the budget ran out: the stalled clients skip"
    );
    for reader in flowing {
        let flow = reader.await.expect("fast reader");
        assert!(
            flow.events >= 20 && flow.longest_quiet < Duration::from_millis(1500),
            "a fast client was held back: {flow:?}"
        );
    }
    assert!(
        up.stats.broadcast_longest_write() < APP_STALL_LIMIT,
        "the app was held back: a write waited {:?}",
        up.stats.broadcast_longest_write()
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_trickles_cannot_keep_a_closed_stream_and_its_upstream_open() {
    let up = Upstream::start().await;
    let proxy = launch(config(
        &up,
        "client_buffer = \"4MiB\"\nwrite_timeout = \"3s\"",
    ))
    .await;
    let started = Instant::now();
    let mut trickler = stalled_client(&proxy, "stalled").await;
    // 32 KiB every 100 ms, slower than the app: its stream is closed (its 4 MiB buffer full)
    // within a couple of seconds. It never stalls for the 3 s write timeout, but would need
    // more than 10 s to take all the whole events queued for it.
    let trickling = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if trickler
                .read_at_most(32 << 10, Duration::from_millis(100))
                .await
                .is_none()
                && trickler.is_ended()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let closed = wait_metrics_within(
        &proxy,
        Duration::from_secs(12),
        "a slow_client close (the trickling client keeps its ended stream open)",
        |t| slow_closes(t) == 1.0,
    )
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "a stream closed for a slow client ends within write_timeout, not when a client that \
         trickles has taken it all: {took:?}"
    );
    assert_eq!(gauge(&closed, "streamguard_slow_buffer_bytes"), 0.0);
    assert!(
        wait_until(Duration::from_secs(1), || up.stats.open_streams() == 0).await,
        "the closed stream's upstream connection must be released"
    );
    trickling.abort();
}
