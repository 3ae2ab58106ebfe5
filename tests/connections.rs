//! The connection, before any policy runs: request heads bounded in size and time, idle
//! keep-alive connections closed, connections capped globally and per client address, and
//! request lines the proxy must not pass (targets without a leading slash, `TRACE`, `CONNECT`,
//! ambiguous body framing) refused with streamguard's fixed bodies. Real binary, real demo
//! upstream, raw sockets; every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::http::{connect, read_response_head, read_some, BodyDecoder, Framing};
use common::{
    assert_metric, rss_kib, Certificate, HttpConn, Proxy, Response, SseClient, Upstream, IO_TIMEOUT,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const AUTH_OFF: &str = "[auth]\nmode = \"off\"\n";
const BAD_REQUEST: &str = r#"{"error":"bad request"}"#;
const TOO_MANY_CONNECTIONS: &str = r#"{"error":"too many connections"}"#;

/// The security-log lines about refused request heads.
fn head_refusals(proxy: &Proxy) -> Vec<Value> {
    proxy
        .json_logs()
        .into_iter()
        .filter(|l| l["target"] == "streamguard::security" && l["event"] == "request_head_refused")
        .collect()
}

/// Sends `raw` on a fresh connection and reads one response.
async fn send_raw(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut conn = HttpConn::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    conn.send(raw).await.unwrap_or_else(|e| {
        panic!(
            "no response to {:?}: {e}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)])
        )
    })
}

/// A refusal as streamguard writes it: the status, its fixed JSON body, and nothing of
/// Pingora's own error page.
fn assert_refusal(resp: &Response, status: u16, body: &str, what: &str) {
    assert_eq!(resp.status, status, "{what}: {resp:?}");
    assert_eq!(resp.text(), body, "{what}");
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    assert_eq!(resp.header("server"), None, "{what}: Pingora's error page");
}

/// Reads one response (head and body) from `stream`; `buf` keeps what arrived past it.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Response> {
    let (status, headers) = read_response_head(stream, buf).await?;
    let mut decoder = BodyDecoder::new(Framing::of(status, &headers, false)?);
    let mut body = Vec::new();
    loop {
        let used = decoder.feed(buf, &mut body)?;
        buf.drain(..used);
        if decoder.is_done() || read_some(stream, buf, IO_TIMEOUT).await? == 0 {
            break;
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Whether the proxy closes `stream` within `within` (EOF or a reset), reading and discarding
/// anything else.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut scratch = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut scratch)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// What a client that sends a huge head it never finishes gets back.
#[derive(Debug, PartialEq, Eq)]
enum FloodOutcome {
    /// A response with this status and body.
    Answered(u16, String),
    /// The proxy closed or reset the connection without an answer the client could read.
    Closed,
    /// Nothing at all within the wait: the proxy is still holding the head.
    Silent,
}

/// Sends `total` bytes of a request head without its end, while reading whatever comes back.
async fn flood_head(addr: SocketAddr, total: usize) -> FloodOutcome {
    let Ok(stream) = connect(addr).await else {
        return FloodOutcome::Closed;
    };
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = wr
            .write_all(b"GET /flood HTTP/1.1\r\nHost: x\r\nX-Fill: ")
            .await
            .is_ok();
        let piece = vec![b'f'; 64 * 1024];
        let mut written = 0;
        while sent && written < total {
            sent = wr.write_all(&piece).await.is_ok();
            written += piece.len();
        }
        // Keep the write side open: the head is unfinished, not abandoned.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(wr);
    });
    let mut buf = Vec::new();
    let outcome = loop {
        let mut piece = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(8), rd.read(&mut piece)).await {
            Err(_) => break FloodOutcome::Silent,
            Ok(Ok(0)) | Ok(Err(_)) => break FloodOutcome::Closed,
            Ok(Ok(n)) => buf.extend_from_slice(&piece[..n]),
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                break FloodOutcome::Answered(status, body[..length].to_owned());
            }
        }
    };
    writer.abort();
    outcome
}

/// Attack: 150 clients each send a megabyte of a head they never finish. Pingora keeps reading
/// each into a buffer of up to 1 MiB; streamguard stops at `max_request_head` and answers 431.
#[tokio::test(flavor = "multi_thread")]
async fn unfinished_heads_of_a_mebibyte_get_431_and_hold_no_memory() {
    const CLIENTS: usize = 150;
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!("{AUTH_OFF}[listen]\nrequest_head_timeout = \"30s\"\n"),
    )
    .await;
    let pid = proxy.pid();
    let before = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = std::sync::Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(flood_head(proxy.addr, 1024 * 1024 - 64 * 1024)))
        .collect();
    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.push(client.await.expect("client task"));
    }
    sampler.abort();
    let peak = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(rss_kib(pid));
    let growth_mib = peak.saturating_sub(before) / 1024;

    let answered_431 = outcomes
        .iter()
        .filter(|o| {
            **o == FloodOutcome::Answered(431, r#"{"error":"request head too large"}"#.into())
        })
        .count();
    let wrong: Vec<_> = outcomes
        .iter()
        .filter(|o| {
            !matches!(o, FloodOutcome::Closed) && !matches!(o, FloodOutcome::Answered(431, _))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "clients got something else than 431 or a close: {wrong:?}"
    );
    assert!(answered_431 > 0, "no client read its 431: {outcomes:?}");
    assert!(
        growth_mib < 40,
        "the proxy's RSS grew by {growth_mib} MiB for {CLIENTS} unfinished heads (from {before} KiB)"
    );
    assert_metric(
        &proxy,
        "streamguard_rejections_total",
        &[("reason", "head_too_large")],
        CLIENTS as f64,
    )
    .await;
    assert_eq!(up.stats.total(), 0, "no flood request reached the upstream");
    let lines = head_refusals(&proxy);
    assert_eq!(lines.len(), CLIENTS, "one security line per refusal");
    for line in &lines {
        assert_eq!(line["reason"], "too_large", "{line}");
        assert_eq!(line["status"], 431, "{line}");
    }
    assert!(
        !proxy.logs().contains("ffffffff"),
        "a header value reached the logs"
    );
    assert!(
        !proxy.logs().contains("\"level\":\"ERROR\""),
        "client-triggered ERROR lines:\n{}",
        proxy.logs()
    );
}

/// Attack: a head dribbled a byte every 200 ms. Pingora's read timeout restarts on every byte,
/// so it would wait for the whole head; streamguard's deadline is for the head as a whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_dribbled_head_gets_408_at_the_deadline_and_is_never_served() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!("{AUTH_OFF}[listen]\nrequest_head_timeout = \"2s\"\n"),
    )
    .await;
    let head = format!(
        "GET /echo/dribble HTTP/1.1\r\nHost: {}\r\nX-Pad: {}\r\n\r\n",
        proxy.addr,
        "p".repeat(40)
    );
    let stream = connect(proxy.addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let started = Instant::now();
    let dribbler = tokio::spawn(async move {
        for byte in head.bytes() {
            if wr.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), rd.read_to_end(&mut raw)).await;
    let elapsed = started.elapsed();
    dribbler.abort();
    assert!(
        read.is_ok(),
        "no answer within 6 s (after {elapsed:?}): {:?}",
        String::from_utf8_lossy(&raw)
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(
        text.ends_with(r#"{"error":"request head timeout"}"#),
        "{text}"
    );
    assert!(
        (Duration::from_millis(1800)..Duration::from_millis(3500)).contains(&elapsed),
        "408 after {elapsed:?}, not at the 2 s deadline"
    );
    assert_metric(
        &proxy,
        "streamguard_rejections_total",
        &[("reason", "head_timeout")],
        1.0,
    )
    .await;
    assert_eq!(up.stats.total(), 0, "the dribbled request was never served");
    let lines = head_refusals(&proxy);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["reason"], "timeout");
    assert!(
        !proxy.logs().contains("ppppp"),
        "a header value reached the logs"
    );
}

/// A kept-alive connection is closed, silently, once it has waited `keepalive_timeout` for
/// its next request; within it, the next request is served on the same connection.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!("{AUTH_OFF}[listen]\nkeepalive_timeout = \"1s\"\n"),
    )
    .await;
    let request = format!("GET /echo/ka HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr);
    let mut stream = connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    for round in 0..2 {
        stream.write_all(request.as_bytes()).await.expect("write");
        let resp = read_response(&mut stream, &mut buf)
            .await
            .expect("response");
        assert_eq!(resp.status, 200, "round {round}: {resp:?}");
        // Idle for less than the timeout: the connection is still there for the next one.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let idle_from = Instant::now() - Duration::from_millis(500);
    assert!(
        closed_within(&mut stream, Duration::from_secs(3)).await,
        "an idle keep-alive connection stayed open"
    );
    let idle = idle_from.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&idle),
        "closed after {idle:?} idle, not at keepalive_timeout"
    );
    assert!(
        buf.is_empty(),
        "the close came with bytes: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert_eq!(up.stats.hits("/echo"), 2);
    assert_metric(&proxy, "streamguard_connections_active", &[], 0.0).await;
}

/// `max_connections`: one connection over it gets 503, `Retry-After` and the fixed body; an SSE
/// stream counts as a connection for as long as it lives (after its request is over), and the
/// gauge is back to 0 once everything has closed.
#[tokio::test(flavor = "multi_thread")]
async fn max_connections_refuses_the_one_over_and_counts_streams_until_they_end() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!("{AUTH_OFF}[listen]\nmax_connections = 3\nrequest_head_timeout = \"30s\"\n"),
    )
    .await;
    let active = "streamguard_connections_active";

    let mut sse = SseClient::connect(proxy.addr, "/sse?events=1&then=quiet", &[]).await;
    assert_eq!(sse.status, 200);
    sse.read_event(IO_TIMEOUT).await.expect("first event");
    assert_metric(&proxy, active, &[], 1.0).await;
    let idle: Vec<TcpStream> = vec![
        connect(proxy.addr).await.expect("idle 1"),
        connect(proxy.addr).await.expect("idle 2"),
    ];
    assert_metric(&proxy, active, &[], 3.0).await;

    let resp = send_raw(proxy.addr, b"GET /echo/over HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_refusal(&resp, 503, TOO_MANY_CONNECTIONS, "over max_connections");
    let retry: u64 = resp
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no whole-second Retry-After: {resp:?}"));
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    assert_metric(
        &proxy,
        "streamguard_connection_refusals_total",
        &[("reason", "global")],
        1.0,
    )
    .await;
    assert_eq!(
        up.stats.hits("/echo"),
        0,
        "the refused request went nowhere"
    );

    drop(idle);
    assert_metric(&proxy, active, &[], 1.0).await;
    let served = send_raw(
        proxy.addr,
        format!(
            "GET /echo/in HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            proxy.addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(served.status, 200, "{served:?}");
    assert_metric(&proxy, active, &[], 1.0).await;
    assert!(!sse.is_ended(), "the stream is still open");

    drop(sse);
    assert_metric(&proxy, active, &[], 0.0).await;
    assert_metric(
        &proxy,
        "streamguard_streams_active",
        &[("kind", "sse")],
        0.0,
    )
    .await;
}

/// Opens a connection to `addr` from the local address `from` (any of 127.0.0.0/8 on Linux).
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("address"))
        .expect("bind");
    let stream = tokio::time::timeout(IO_TIMEOUT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// `max_connections_per_ip`: the address over it gets 429 and the fixed body; another address
/// is not affected.
#[tokio::test(flavor = "multi_thread")]
async fn max_connections_per_ip_refuses_that_address_only() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!(
            "{AUTH_OFF}[listen]\nmax_connections_per_ip = 2\nrequest_head_timeout = \"30s\"\n"
        ),
    )
    .await;
    let held = [
        connect_from("127.0.0.1", proxy.addr).await,
        connect_from("127.0.0.1", proxy.addr).await,
    ];
    assert_metric(&proxy, "streamguard_connections_active", &[], 2.0).await;
    let request = format!(
        "GET /echo/ip HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        proxy.addr
    );

    let mut third = connect_from("127.0.0.1", proxy.addr).await;
    third.write_all(request.as_bytes()).await.expect("write");
    let resp = read_response(&mut third, &mut Vec::new())
        .await
        .expect("refusal");
    assert_refusal(
        &resp,
        429,
        TOO_MANY_CONNECTIONS,
        "over max_connections_per_ip",
    );
    assert!(resp.header("retry-after").is_some(), "{resp:?}");
    assert_metric(
        &proxy,
        "streamguard_connection_refusals_total",
        &[("reason", "per_ip")],
        1.0,
    )
    .await;

    let mut other = connect_from("127.0.0.2", proxy.addr).await;
    other.write_all(request.as_bytes()).await.expect("write");
    let resp = read_response(&mut other, &mut Vec::new())
        .await
        .expect("response");
    assert_eq!(resp.status, 200, "another address: {resp:?}");
    assert_eq!(up.stats.hits("/echo"), 1);

    drop(held);
    assert_metric(&proxy, "streamguard_connections_active", &[], 0.0).await;
    let mut again = connect_from("127.0.0.1", proxy.addr).await;
    again.write_all(request.as_bytes()).await.expect("write");
    let resp = read_response(&mut again, &mut Vec::new())
        .await
        .expect("response");
    assert_eq!(
        resp.status, 200,
        "slots come back when connections close: {resp:?}"
    );
}

/// Attack: `GET api/v1/events/admin` reaches Pingora's routing as `/` while its raw bytes go to
/// the app, which may read them as the admin path. Such targets are refused before anything
/// routes on them; absolute-form stays allowed.
#[tokio::test(flavor = "multi_thread")]
async fn request_targets_without_a_leading_slash_are_refused_before_the_upstream() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, AUTH_OFF).await;
    for target in ["api/v1/events/admin", "echo/x", "x:y", "*", "//"] {
        let resp = send_raw(
            proxy.addr,
            format!("GET {target} HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr).as_bytes(),
        )
        .await;
        if target == "//" {
            // Origin-form: the head passes, and the routes refuse the empty segment.
            assert_eq!(resp.status, 400, "{target}: {resp:?}");
            continue;
        }
        assert_refusal(&resp, 400, BAD_REQUEST, target);
    }
    assert_eq!(up.stats.total(), 0, "no such target reached the upstream");
    assert_metric(
        &proxy,
        "streamguard_rejections_total",
        &[("reason", "bad_request")],
        5.0,
    )
    .await;

    let resp = send_raw(
        proxy.addr,
        format!(
            "GET http://{0}/echo/absolute HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
            proxy.addr
        )
        .as_bytes(),
    )
    .await;
    assert_ne!(resp.status, 400, "absolute-form is allowed: {resp:?}");
    assert_eq!(up.stats.total(), 1, "absolute-form reaches the upstream");
}

/// `TRACE` (and `TRACK`) would echo the request, credentials included; `CONNECT` would open a
/// tunnel nothing inspects. Both get 405 with the fixed body and an `Allow` list.
#[tokio::test(flavor = "multi_thread")]
async fn trace_and_connect_get_405_and_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, AUTH_OFF).await;
    for head in [
        "TRACE /echo/t HTTP/1.1\r\nHost: x\r\n\r\n",
        "TRACK /echo/t HTTP/1.1\r\nHost: x\r\n\r\n",
        "trace /echo/t HTTP/1.1\r\nHost: x\r\n\r\n",
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
    ] {
        let resp = send_raw(proxy.addr, head.as_bytes()).await;
        assert_refusal(&resp, 405, r#"{"error":"method not allowed"}"#, head);
        let allow = resp
            .header("allow")
            .unwrap_or_else(|| panic!("no Allow: {resp:?}"));
        assert!(allow.contains("GET") && !allow.contains("TRACE"), "{allow}");
    }
    assert_eq!(up.stats.total(), 0);
    assert_metric(
        &proxy,
        "streamguard_rejections_total",
        &[("reason", "method_not_allowed")],
        4.0,
    )
    .await;
}

/// Framing a hop could read differently (request smuggling), and heads that are not HTTP, get
/// streamguard's fixed 400, not Pingora's empty error page; a head over `max_request_head`
/// gets 431, one under it is served.
#[tokio::test(flavor = "multi_thread")]
async fn bad_framing_and_oversized_heads_get_streamguards_answers() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!("{AUTH_OFF}[listen]\nmax_request_head = \"8KiB\"\n"),
    )
    .await;
    let cases: &[&[u8]] = &[
        b"POST /echo/f HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /echo/f HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /echo/f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b"POST /echo/f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /echo/f HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /echo/f HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /echo/f HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ];
    for raw in cases {
        let what = String::from_utf8_lossy(raw);
        let resp = send_raw(proxy.addr, raw).await;
        assert_refusal(&resp, 400, BAD_REQUEST, &what);
    }
    assert_eq!(
        up.stats.total(),
        0,
        "no ambiguous request reached the upstream"
    );

    let padded = |bytes: usize| {
        format!(
            "GET /echo/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
            "b".repeat(bytes)
        )
    };
    let resp = send_raw(proxy.addr, padded(9 * 1024).as_bytes()).await;
    assert_refusal(
        &resp,
        431,
        r#"{"error":"request head too large"}"#,
        "9 KiB head",
    );
    let resp = send_raw(proxy.addr, padded(7 * 1024).as_bytes()).await;
    assert_eq!(resp.status, 200, "a 7 KiB head fits 8KiB: {resp:?}");
    assert_metric(
        &proxy,
        "streamguard_rejections_total",
        &[("reason", "bad_request")],
        cases.len() as f64,
    )
    .await;
    assert_metric(
        &proxy,
        "streamguard_rejections_total",
        &[("reason", "head_too_large")],
        1.0,
    )
    .await;
    assert!(
        !proxy.logs().contains("\"level\":\"ERROR\""),
        "client-triggered ERROR lines:\n{}",
        proxy.logs()
    );
}

/// On a TLS listener the handshake is part of what a connection must finish within
/// `request_head_timeout`, and it happens after the connection gate: sockets that connect and
/// never say a word are closed at the deadline (not Pingora's 60 s) and hold a slot meanwhile,
/// so one over `max_connections` gets the 503, through TLS.
#[tokio::test(flavor = "multi_thread")]
async fn tls_handshakes_count_against_the_cap_and_end_at_the_head_deadline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certificate = Certificate::issue(dir.path(), "localhost");
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!(
            "{AUTH_OFF}[listen]\n{}max_connections = 3\nrequest_head_timeout = \"2s\"\n",
            certificate.listen_keys()
        ),
    )
    .await;
    let curl = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "--cacert"])
            .arg(&certificate.cert)
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://{}{path}", proxy.addr))
            .output()
            .expect("curl is needed for the TLS test (make test installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let opened = Instant::now();
    let mut silent = Vec::new();
    for i in 0..3 {
        silent.push(
            connect(proxy.addr)
                .await
                .unwrap_or_else(|e| panic!("silent {i}: {e}")),
        );
    }
    assert_metric(&proxy, "streamguard_connections_active", &[], 3.0).await;
    let over = tokio::task::block_in_place(|| curl("/echo/over"));
    assert!(over.ends_with("\n503"), "{over}");
    assert!(over.starts_with(TOO_MANY_CONNECTIONS), "{over}");

    for (i, socket) in silent.iter_mut().enumerate() {
        let left = Duration::from_secs(4).saturating_sub(opened.elapsed());
        assert!(closed_within(socket, left).await, "silent {i} still open");
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "closed early: {waited:?}"
    );
    assert_metric(
        &proxy,
        "streamguard_rejections_total",
        &[("reason", "head_timeout")],
        3.0,
    )
    .await;
    assert_metric(&proxy, "streamguard_connections_active", &[], 0.0).await;
    let served = tokio::task::block_in_place(|| curl("/echo/in"));
    assert!(served.ends_with("\n200"), "{served}");
    assert_eq!(
        up.stats.hits("/echo"),
        1,
        "only the one served request reached the app"
    );
}
