//! WebSocket relaying end to end: the real `streamguard` binary between real clients (the
//! tokio-tungstenite client, or a raw TCP client that writes and parses frames by hand) and the
//! bundled upstream (its library echo on `/ws`, and the frame-by-frame raw endpoints `/ws/raw`,
//! `/ws/deflate`, `/ws/drop`, `/ws/slow-frame` that log what reached the app). The attacks on the
//! app itself (a body behind the handshake, compression bombs, control-frame and fragment
//! floods) run against a real Node `ws` app (`common::node`), which parses and inflates frames
//! the way deployed apps do.
//!
//! Every frame the proxy sends a raw client goes through `FrameDecoder::new(FromUpstream, ..)`,
//! so an injected ping or close that split a frame, or any other framing error, fails the test.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::node::{NodeApp, NodeStats};
use common::{
    http, http_request, metric, metric_now, mint_token, request_head, wait_metric,
    wait_metric_within, wait_until, ws_connect, Proxy, ProxyConfig, Upstream, WsClient, IO_TIMEOUT,
};
use futures_util::{SinkExt, StreamExt};
use streamguard::relay::websocket::frame::{encode_frame, Direction, FrameDecoder, Item, OpCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Starts a proxy and makes sure its listen port is really its own.
///
/// Pingora retries a listen port that is in use in the background while the admin port already
/// answers `/livez`, so a port taken between `free_port` and the bind would leave the test
/// talking to whoever holds it. A refused probe (an `h2c` upgrade: 400 or 401, never forwarded)
/// must show up in this proxy's `streamguard_requests_total`; otherwise start over on new ports.
async fn start_proxy(config: ProxyConfig) -> Proxy {
    let mut config = config;
    for _ in 0..3 {
        let proxy = Proxy::start_with(config.clone()).await;
        let before = metric_now(&proxy, "streamguard_requests_total", &[]).await;
        let probe = request_head(
            "GET",
            proxy.addr,
            "/streamguard-listen-probe",
            &[("Connection", "close"), ("Upgrade", "h2c")],
            &[],
        );
        let answered = common::try_http_request(proxy.addr, &probe).await.is_ok();
        let deadline = Instant::now() + Duration::from_secs(2);
        while answered && Instant::now() < deadline {
            if metric_now(&proxy, "streamguard_requests_total", &[]).await > before {
                return proxy;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let port = common::free_port();
        config = config.section("listen", &format!("address = \"127.0.0.1:{port}\""));
    }
    panic!("no proxy got its own listen port in 3 attempts");
}

/// A proxy in front of `up` with auth off and `websocket` as the `[websocket]` table body.
async fn open_proxy(up: &Upstream, websocket: &str) -> Proxy {
    start_proxy(
        ProxyConfig::new(up.addr)
            .section("auth", "mode = \"off\"")
            .section("websocket", websocket),
    )
    .await
}

/// One frame from the proxy, payload unmasked, with the time it was fully read.
#[derive(Debug, Clone)]
struct Frame {
    first: u8,
    payload: Vec<u8>,
    at: Instant,
}

impl Frame {
    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    fn fin(&self) -> bool {
        self.first & FIN != 0
    }

    /// Code and reason of a close frame.
    fn close(&self) -> Option<(u16, String)> {
        if self.opcode() != CLOSE || self.payload.len() < 2 {
            return None;
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        Some((
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        ))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Why reading a frame stopped (the payloads are read through `Debug` in failure messages).
#[derive(Debug)]
#[allow(dead_code)]
enum End {
    Eof,
    Timeout,
    /// The proxy sent bytes that are not a valid server-to-client frame stream.
    Invalid(String),
    Io(std::io::Error),
}

/// A client frame with an explicit first byte (FIN, RSV and opcode), masked as RFC 6455 wants.
/// Built as a binary frame and patched, so oversized control frames can be made on purpose.
fn client_frame(first: u8, payload: &[u8]) -> Bytes {
    let mut wire = BytesMut::from(&encode_frame(OpCode::Binary, payload, Some(rand::random()))[..]);
    wire[0] = first;
    wire.freeze()
}

/// The same frame without a mask: forbidden from a client.
fn unmasked_frame(first: u8, payload: &[u8]) -> Bytes {
    let mut wire = BytesMut::from(&encode_frame(OpCode::Binary, payload, None)[..]);
    wire[0] = first;
    wire.freeze()
}

/// A WebSocket client that speaks the handshake and frames by hand.
struct RawWs {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    /// First byte and payload so far of a data frame being read.
    partial: Option<(u8, Vec<u8>)>,
    status: u16,
    headers: Vec<(String, String)>,
}

impl RawWs {
    /// Sends a handshake for `path` with `headers` added and reads the response head.
    async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawWs {
        Self::open_sending(addr, path, headers, &[]).await
    }

    /// Like [`Self::open`], with `early` bytes written right behind the handshake, in the same
    /// write (a client that does not wait for the 101).
    async fn open_sending(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        early: &[u8],
    ) -> RawWs {
        let head = request_head(
            "GET",
            addr,
            path,
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", KEY),
                ("Sec-WebSocket-Version", "13"),
            ],
            headers,
        );
        let mut stream = http::connect(addr).await.expect("connect to the proxy");
        let mut request = head.into_bytes();
        request.extend_from_slice(early);
        stream.write_all(&request).await.expect("write handshake");
        let mut buf = Vec::new();
        let (status, headers) = http::read_response_head(&mut stream, &mut buf)
            .await
            .expect("handshake response");
        let deflate = headers
            .iter()
            .any(|(n, v)| n == "sec-websocket-extensions" && v.contains("permessage-deflate"));
        RawWs {
            stream,
            buf: BytesMut::from(&buf[..]),
            decoder: FrameDecoder::new(Direction::FromUpstream, u64::MAX, deflate),
            partial: None,
            status,
            headers,
        }
    }

    /// Opens and insists on a 101.
    async fn upgrade(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawWs {
        let ws = Self::open(addr, path, headers).await;
        assert_eq!(ws.status, 101, "handshake for {path}: {:?}", ws.headers);
        ws
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    async fn send(&mut self, wire: &[u8]) {
        self.stream
            .write_all(wire)
            .await
            .expect("write to the proxy");
    }

    async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        self.send(&client_frame(first, payload)).await;
    }

    /// The next whole frame, validated as a server-to-client frame stream.
    async fn next_frame(&mut self, timeout: Duration) -> Result<Frame, End> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Item::Control { wire, payload, .. })) => {
                    return Ok(Frame {
                        first: wire[0],
                        payload: payload.to_vec(),
                        at: Instant::now(),
                    });
                }
                Ok(Some(Item::Data {
                    bytes, frame_end, ..
                })) => {
                    match &mut self.partial {
                        // The first item of a frame is its header.
                        None => self.partial = Some((bytes[0], Vec::new())),
                        Some((_, payload)) => payload.extend_from_slice(&bytes),
                    }
                    if frame_end {
                        let (first, payload) = self.partial.take().expect("frame in progress");
                        return Ok(Frame {
                            first,
                            payload,
                            at: Instant::now(),
                        });
                    }
                }
                Ok(None) => {
                    self.buf.reserve(64 * 1024);
                    match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                        .await
                    {
                        Err(_) => return Err(End::Timeout),
                        Ok(Ok(0)) if self.buf.is_empty() && self.partial.is_none() => {
                            return Err(End::Eof)
                        }
                        Ok(Ok(0)) => {
                            return Err(End::Invalid(format!(
                                "EOF inside a frame ({} bytes pending)",
                                self.buf.len()
                            )))
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(End::Io(e)),
                    }
                }
                Err(e) => return Err(End::Invalid(e.to_string())),
            }
        }
    }

    /// Reads frames, answering pings when `answer_pings`, until a close frame; returns the frames
    /// before it and the close. Panics on EOF, timeout or a framing error.
    async fn until_close(&mut self, timeout: Duration, answer_pings: bool) -> (Vec<Frame>, Frame) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = match self.next_frame(left).await {
                Ok(frame) => frame,
                Err(end) => panic!("expected a close frame, got {end:?} after {before:?}"),
            };
            if frame.opcode() == CLOSE {
                return (before, frame);
            }
            if answer_pings && frame.opcode() == PING {
                let payload = frame.payload.clone();
                self.send_frame(FIN | PONG, &payload).await;
            }
            before.push(frame);
        }
    }

    /// After a close: the proxy closes the TCP connection (EOF or a reset), sending nothing more.
    async fn expect_closed(&mut self) {
        match self.next_frame(IO_TIMEOUT).await {
            Err(End::Eof) | Err(End::Io(_)) => {}
            other => panic!("expected the connection to end, got {other:?}"),
        }
    }
}

/// `streamguard_stream_closes_total{kind="websocket",reason}`.
async fn ws_closes(proxy: &Proxy, reason: &str) -> f64 {
    metric_now(
        proxy,
        "streamguard_stream_closes_total",
        &[("kind", "websocket"), ("reason", reason)],
    )
    .await
}

/// Waits until exactly `n` WebSocket closes with `reason` are counted.
async fn expect_ws_closes(proxy: &Proxy, reason: &str, n: f64) {
    wait_metric(
        proxy,
        "streamguard_stream_closes_total",
        &[("kind", "websocket"), ("reason", reason)],
        |v| v == n,
    )
    .await;
}

/// Both ends let go: the proxy's active gauge and the upstream's open sockets are back to 0.
async fn expect_all_closed(proxy: &Proxy, up: &Upstream) {
    wait_metric(
        proxy,
        "streamguard_streams_active",
        &[("kind", "websocket")],
        |v| v == 0.0,
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(5), || up.stats.open_websockets() == 0).await,
        "the upstream still has {} WebSockets open",
        up.stats.open_websockets()
    );
}

/// Waits until the upstream's raw log has an entry equal to `entry`; returns the log.
async fn wait_log(up: &Upstream, entry: &str) -> Vec<String> {
    let found = wait_until(Duration::from_secs(5), || {
        up.stats.raw_ws_log().iter().any(|e| e == entry)
    })
    .await;
    let log = up.stats.raw_ws_log();
    assert!(found, "upstream log never had {entry:?}: {log:?}");
    log
}

/// Reads tungstenite messages until a close frame (pings are answered by tungstenite as it
/// reads); returns the messages before it and the close frame.
async fn tungstenite_until_close(
    ws: &mut WsClient,
    timeout: Duration,
) -> (Vec<Message>, Option<tungstenite::protocol::CloseFrame>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut before = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close frame within {timeout:?}; got {before:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => return (before, frame),
            Ok(Some(Ok(msg))) => before.push(msg),
            Ok(other) => panic!("expected a close frame, got {other:?} after {before:?}"),
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Echo
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn messages_of_every_size_echo_intact() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "").await;
    let (mut ws, resp) = ws_connect(proxy.addr, "/ws/echo", &[])
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);

    // Frame-length encodings switch at 126 and 65536; 1 MiB - 1 is just under the default limit.
    let sizes = [0usize, 1, 125, 126, 65535, 65536, (1 << 20) - 1];
    for (i, &size) in sizes.iter().enumerate() {
        let text: String = (0..size)
            .map(|j| char::from(b'a' + ((i + j) % 26) as u8))
            .collect();
        ws.send(Message::text(text.clone()))
            .await
            .expect("send text");
        let echo = tokio::time::timeout(IO_TIMEOUT, ws.next())
            .await
            .expect("echo in time");
        assert_eq!(
            echo.expect("open").expect("ok"),
            Message::text(text),
            "text of {size} bytes"
        );

        let binary = pattern(size, i as u8);
        ws.send(Message::binary(binary.clone()))
            .await
            .expect("send binary");
        let echo = tokio::time::timeout(IO_TIMEOUT, ws.next())
            .await
            .expect("echo in time");
        assert_eq!(
            echo.expect("open").expect("ok"),
            Message::binary(binary),
            "binary of {size} bytes"
        );
    }
    let n = (2 * sizes.len()) as f64;
    wait_metric(
        &proxy,
        "streamguard_ws_messages_total",
        &[("direction", "to_upstream")],
        |v| v == n,
    )
    .await;
    wait_metric(
        &proxy,
        "streamguard_ws_messages_total",
        &[("direction", "to_client")],
        |v| v == n,
    )
    .await;
    assert_eq!(
        metric_now(
            &proxy,
            "streamguard_streams_active",
            &[("kind", "websocket")]
        )
        .await,
        1.0
    );

    let bye = tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    };
    ws.close(Some(bye)).await.expect("close");
    // The close handshake goes through: the app answers with the client's code.
    let (_, close) = tungstenite_until_close(&mut ws, IO_TIMEOUT).await;
    assert_eq!(
        close.map(|c| c.code),
        Some(CloseCode::Normal),
        "the app's close answer"
    );
    expect_all_closed(&proxy, &up).await;
    expect_ws_closes(&proxy, "client_gone", 1.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_sent_with_the_handshake_are_relayed_not_lost() {
    // The proxy reads the handshake with whatever followed it in the same segment; those bytes
    // must reach the app ahead of anything read from the socket later.
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "").await;
    let early = client_frame(FIN | TEXT, b"sent with the handshake");
    let mut ws = RawWs::open_sending(proxy.addr, "/ws", &[], &early).await;
    assert_eq!(ws.status, 101, "{:?}", ws.headers);
    ws.send_frame(FIN | TEXT, b"sent after the 101").await;
    for want in ["sent with the handshake", "sent after the 101"] {
        let frame = ws.next_frame(IO_TIMEOUT).await.expect("echo");
        assert_eq!(frame.opcode(), TEXT);
        assert_eq!(String::from_utf8_lossy(&frame.payload), want);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fragmented_messages_with_interleaved_pings_arrive_whole() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "").await;
    let mut ws = RawWs::upgrade(proxy.addr, "/ws/echo", &[]).await;

    // A text message in three fragments with a ping between each, all in one write so the
    // proxy's decoder sees frames split across and packed within reads at random.
    let parts: [&[u8]; 3] = [b"hello, ", "fragmented \u{e9}".as_bytes(), b" world"];
    let mut wire = Vec::new();
    wire.extend_from_slice(&client_frame(TEXT, parts[0]));
    wire.extend_from_slice(&client_frame(FIN | PING, b"p1"));
    wire.extend_from_slice(&client_frame(CONT, parts[1]));
    wire.extend_from_slice(&client_frame(FIN | PING, b"p2"));
    wire.extend_from_slice(&client_frame(FIN | CONT, parts[2]));
    // Then a binary message of 3 x 70000 bytes (16-bit and 64-bit lengths) with a ping inside.
    let big = pattern(210_000, 7);
    wire.extend_from_slice(&client_frame(BINARY, &big[..70_000]));
    wire.extend_from_slice(&client_frame(CONT, &big[70_000..140_000]));
    wire.extend_from_slice(&client_frame(FIN | PING, b"p3"));
    wire.extend_from_slice(&client_frame(FIN | CONT, &big[140_000..]));
    ws.send(&wire).await;

    // The library echo reassembles each message (so the app saw valid fragments) and answers
    // each ping with a pong.
    let mut pongs = Vec::new();
    let mut messages = Vec::new();
    while messages.len() < 2 {
        let frame = ws.next_frame(IO_TIMEOUT).await.expect("frame");
        match frame.opcode() {
            PONG => pongs.push(frame.text()),
            TEXT | BINARY => {
                assert!(frame.fin(), "the echo sends whole messages");
                messages.push(frame);
            }
            other => panic!("unexpected opcode {other:#x}: {frame:?}"),
        }
    }
    assert_eq!(messages[0].opcode(), TEXT);
    assert_eq!(messages[0].text(), "hello, fragmented \u{e9} world");
    assert_eq!(messages[1].opcode(), BINARY);
    assert!(messages[1].payload == big, "binary message corrupted");
    while pongs.len() < 3 {
        let frame = ws.next_frame(IO_TIMEOUT).await.expect("pong");
        assert_eq!(frame.opcode(), PONG, "{frame:?}");
        pongs.push(frame.text());
    }
    pongs.sort();
    assert_eq!(pongs, ["p1", "p2", "p3"]);
    // Two messages each way, however many frames they took.
    wait_metric(
        &proxy,
        "streamguard_ws_messages_total",
        &[("direction", "to_upstream")],
        |v| v == 2.0,
    )
    .await;
    assert_eq!(
        metric_now(
            &proxy,
            "streamguard_ws_messages_total",
            &[("direction", "to_client")]
        )
        .await,
        2.0
    );

    // The raw upstream sees the fragments one by one, pings in place.
    let mut raw = RawWs::upgrade(proxy.addr, "/ws/raw", &[]).await;
    let mut wire = Vec::new();
    wire.extend_from_slice(&client_frame(TEXT, b"ab"));
    wire.extend_from_slice(&client_frame(FIN | PING, b"x"));
    wire.extend_from_slice(&client_frame(FIN | CONT, b"cd"));
    raw.send(&wire).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let f = raw.next_frame(IO_TIMEOUT).await.expect("echoed frame");
        got.push((f.first, f.text()));
    }
    assert_eq!(
        got,
        [
            (TEXT, "ab".to_owned()),
            (FIN | PONG, "x".to_owned()),
            (FIN | CONT, "cd".to_owned())
        ]
    );
    assert_eq!(
        up.stats.raw_ws_log(),
        ["text:2", "ping", "continuation:2 fin"],
        "the app got every frame, in order"
    );
}

// ---------------------------------------------------------------------------------------------
// 2, 3. Pings
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn client_that_never_answers_pings_is_closed_as_dead() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "ping_interval = \"1s\"\npong_timeout = \"1s\"").await;
    let mut ws = RawWs::upgrade(proxy.addr, "/ws/raw", &[]).await;
    let opened = Instant::now();

    let (before, close) = ws.until_close(Duration::from_secs(6), false).await;
    let pings: Vec<&Frame> = before.iter().filter(|f| f.opcode() == PING).collect();
    assert_eq!(
        pings.len(),
        1,
        "one ping, then the pong deadline: {before:?}"
    );
    assert!(
        pings[0].text().starts_with("streamguard-"),
        "{:?}",
        pings[0]
    );
    let ping_after = pings[0].at - opened;
    assert!(
        ping_after >= Duration::from_millis(800) && ping_after < Duration::from_millis(2500),
        "ping after {ping_after:?}"
    );
    assert_eq!(close.close().map(|c| c.0), Some(1001), "{close:?}");
    let closed_after = close.at - opened;
    assert!(
        closed_after >= Duration::from_millis(1800) && closed_after < Duration::from_millis(3500),
        "closed after {closed_after:?}"
    );
    ws.expect_closed().await;

    // The app is told the client went away, then the connection ends.
    let log = wait_log(&up, "eof").await;
    assert_eq!(
        log,
        ["close:1001", "eof"],
        "the app saw neither ping nor pong"
    );
    expect_all_closed(&proxy, &up).await;
    expect_ws_closes(&proxy, "dead_peer", 1.0).await;
    assert!(metric_now(&proxy, "streamguard_ws_pings_total", &[]).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_answering_pings_stays_connected_and_the_app_never_sees_the_pongs() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "ping_interval = \"500ms\"\npong_timeout = \"1s\"").await;
    // `/ws/raw` turns every pong it receives into a text message, so a leaked pong shows up.
    let (mut ws, _) = ws_connect(proxy.addr, "/ws/raw", &[])
        .await
        .expect("handshake");

    let watch = Duration::from_secs(8);
    let until = tokio::time::Instant::now() + watch;
    let mut pings = 0;
    loop {
        // Reading is what makes tungstenite answer the pings.
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(payload)))) => {
                assert!(payload.starts_with(b"streamguard-"), "{payload:?}");
                pings += 1;
            }
            Ok(other) => panic!("unexpected while silent: {other:?}"),
        }
    }
    // One ping per 500 ms of client silence; allow for a slow, shared machine.
    assert!(pings >= 8, "only {pings} pings in {watch:?}");
    // Every ping counted (each just after it is written).
    wait_metric(&proxy, "streamguard_ws_pings_total", &[], |v| {
        v >= f64::from(pings)
    })
    .await;

    // Still open both ways.
    ws.send(Message::text("still here")).await.expect("send");
    let echo = loop {
        match tokio::time::timeout(IO_TIMEOUT, ws.next())
            .await
            .expect("echo in time")
        {
            Some(Ok(Message::Ping(_))) => continue,
            other => break other,
        }
    };
    assert_eq!(
        echo.expect("open").expect("ok"),
        Message::text("still here")
    );
    assert_eq!(
        up.stats.raw_ws_log(),
        ["text:10 fin"],
        "no pong reached the app"
    );
    assert_eq!(ws_closes(&proxy, "dead_peer").await, 0.0);
    assert_eq!(
        metric_now(
            &proxy,
            "streamguard_streams_active",
            &[("kind", "websocket")]
        )
        .await,
        1.0
    );
    drop(ws);
    expect_all_closed(&proxy, &up).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_that_stops_reading_is_dropped_as_dead() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "ping_interval = \"1s\"\npong_timeout = \"1s\"").await;
    // 16 MiB in one frame, far more than the socket buffers on the way hold. The client never
    // reads, so the proxy's writes stall; no ping can go out mid-frame either, so only a bound
    // on how long a write may take notices this client.
    let ws = RawWs::upgrade(
        proxy.addr,
        "/ws/slow-frame?bytes=16777216&pieces=16&ms=100",
        &[],
    )
    .await;
    let opened = Instant::now();
    wait_metric_within(
        &proxy,
        "streamguard_stream_closes_total",
        &[("kind", "websocket"), ("reason", "dead_peer")],
        Duration::from_secs(15),
        |v| v == 1.0,
    )
    .await;
    // A write may take ping_interval + pong_timeout (2 s) before the client counts as dead.
    assert!(
        opened.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        opened.elapsed()
    );
    expect_all_closed(&proxy, &up).await;
    drop(ws);
}

// ---------------------------------------------------------------------------------------------
// 4. Message size and rate
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn oversized_message_is_closed_with_1009_and_never_reaches_the_app() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "max_message_size = \"64KiB\"").await;
    let (mut ws, _) = ws_connect(proxy.addr, "/ws/raw", &[])
        .await
        .expect("handshake");

    // Just under the limit passes.
    let fits = pattern(64 * 1024, 1);
    ws.send(Message::binary(fits.clone())).await.expect("send");
    let echo = tokio::time::timeout(IO_TIMEOUT, ws.next())
        .await
        .expect("echo in time");
    assert_eq!(echo.expect("open").expect("ok"), Message::binary(fits));

    ws.send(Message::binary(pattern(100 * 1024, 2)))
        .await
        .expect("send");
    let (before, close) = tungstenite_until_close(&mut ws, IO_TIMEOUT).await;
    assert!(before.is_empty(), "{before:?}");
    let close = close.expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Size, "{close:?}");

    let log = wait_log(&up, "eof").await;
    assert_eq!(
        log,
        ["binary:65536 fin", "close:1001", "eof"],
        "the big message never arrived"
    );
    expect_all_closed(&proxy, &up).await;
    expect_ws_closes(&proxy, "too_big", 1.0).await;
}

/// A proxy that authenticates users and limits their messages to 5 a minute.
async fn rate_limited_proxy(up: &Upstream, on_rate_limit: &str) -> Proxy {
    start_proxy(
        ProxyConfig::new(up.addr)
            .section("auth", "mode = \"required\"")
            .section(
                "websocket",
                &format!("messages_per_user = \"5/minute\"\non_rate_limit = \"{on_rate_limit}\""),
            ),
    )
    .await
}

async fn connect_as(proxy: &Proxy, user: &str) -> WsClient {
    let token = mint_token(user, &[], 300, serde_json::Value::Null);
    let auth = format!("Bearer {token}");
    ws_connect(proxy.addr, "/ws/raw", &[("Authorization", auth.as_str())])
        .await
        .expect("handshake")
        .0
}

async fn echo_of(ws: &mut WsClient, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let echo = tokio::time::timeout(IO_TIMEOUT, ws.next())
        .await
        .expect("echo in time");
    assert_eq!(echo.expect("open").expect("ok"), Message::text(text));
}

#[tokio::test(flavor = "multi_thread")]
async fn message_over_the_user_rate_is_closed_with_1008() {
    let up = Upstream::start().await;
    let proxy = rate_limited_proxy(&up, "close").await;
    let mut ws = connect_as(&proxy, "rl-close").await;
    for i in 0..5 {
        echo_of(&mut ws, &format!("m{i}")).await;
    }
    // The 6th is large, so the proxy decides while the message is still arriving: the close
    // must still be a clean frame (nothing of the message was forwarded).
    ws.send(Message::binary(pattern(300 * 1024, 6)))
        .await
        .expect("send");
    let (before, close) = tungstenite_until_close(&mut ws, IO_TIMEOUT).await;
    assert!(
        before.is_empty(),
        "the 6th message is not echoed: {before:?}"
    );
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Policy));

    let log = wait_log(&up, "eof").await;
    let texts = log.iter().filter(|e| e.starts_with("text:")).count();
    assert_eq!(texts, 5, "{log:?}");
    assert!(
        !log.iter().any(|e| e.starts_with("binary")),
        "the 6th never reached the app: {log:?}"
    );
    assert_eq!(log[5..], ["close:1001", "eof"], "{log:?}");
    expect_all_closed(&proxy, &up).await;
    expect_ws_closes(&proxy, "rate_limited", 1.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_over_the_user_rate_are_dropped_across_the_users_sockets() {
    let up = Upstream::start().await;
    let proxy = rate_limited_proxy(&up, "drop").await;
    let mut first = connect_as(&proxy, "rl-drop").await;
    let mut second = connect_as(&proxy, "rl-drop").await;

    // Ten at once from one socket: five pass, five are dropped.
    for i in 0..10 {
        first
            .send(Message::text(format!("m{i}")))
            .await
            .expect("send");
    }
    wait_metric(
        &proxy,
        "streamguard_dropped_events_total",
        &[("reason", "rate_limited")],
        |v| v == 5.0,
    )
    .await;
    let mut echoes = Vec::new();
    while let Ok(next) = tokio::time::timeout(Duration::from_millis(500), first.next()).await {
        echoes.push(next.expect("open").expect("ok"));
    }
    let want: Vec<Message> = (0..5).map(|i| Message::text(format!("m{i}"))).collect();
    assert_eq!(echoes, want, "exactly the first five pass");

    // The user's other socket shares the budget: its message is dropped too.
    second
        .send(Message::text("other socket"))
        .await
        .expect("send");
    wait_metric(
        &proxy,
        "streamguard_dropped_events_total",
        &[("reason", "rate_limited")],
        |v| v == 6.0,
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), second.next())
            .await
            .is_err(),
        "a dropped message gets no echo"
    );
    // Another user is not affected.
    let mut other = connect_as(&proxy, "rl-other").await;
    echo_of(&mut other, "mine").await;

    let texts = up
        .stats
        .raw_ws_log()
        .iter()
        .filter(|e| e.starts_with("text:"))
        .count();
    assert_eq!(
        texts, 6,
        "5 of rl-drop's and 1 of rl-other's reached the app"
    );
    // Dropping is not closing.
    assert_eq!(
        metric_now(
            &proxy,
            "streamguard_streams_active",
            &[("kind", "websocket")]
        )
        .await,
        3.0
    );
    assert_eq!(ws_closes(&proxy, "rate_limited").await, 0.0);
    assert_eq!(
        metric_now(
            &proxy,
            "streamguard_ws_messages_total",
            &[("direction", "to_upstream")]
        )
        .await,
        6.0
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Token expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn socket_is_closed_with_1008_when_its_token_expires() {
    let up = Upstream::start().await;
    let proxy = start_proxy(
        ProxyConfig::new(up.addr).section("auth", "mode = \"required\"\nleeway = \"0s\""),
    )
    .await;
    let token = mint_token("short-lived", &[], 2, serde_json::Value::Null);
    let auth = format!("Bearer {token}");
    let opened = Instant::now();
    let mut ws = RawWs::upgrade(proxy.addr, "/ws/raw", &[("Authorization", &auth)]).await;
    ws.send_frame(FIN | TEXT, b"before expiry").await;

    let (before, close) = ws.until_close(Duration::from_secs(6), true).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].text(), "before expiry");
    assert_eq!(close.close(), Some((1008, "token expired".to_owned())));
    // exp has one-second resolution: the close comes 1-2 s after the handshake, plus slack.
    let after = close.at - opened;
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(3500),
        "closed after {after:?}"
    );
    ws.expect_closed().await;
    wait_log(&up, "close:1001").await;
    expect_all_closed(&proxy, &up).await;
    expect_ws_closes(&proxy, "expired", 1.0).await;
}

// ---------------------------------------------------------------------------------------------
// 6. Protocol errors
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn unmasked_client_frame_is_closed_with_1002() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "").await;
    let mut ws = RawWs::upgrade(proxy.addr, "/ws/raw", &[]).await;
    ws.send_frame(FIN | TEXT, b"masked").await;
    assert_eq!(
        ws.next_frame(IO_TIMEOUT).await.expect("echo").text(),
        "masked"
    );

    ws.send(&unmasked_frame(FIN | TEXT, b"unmasked")).await;
    let (before, close) = ws.until_close(IO_TIMEOUT, false).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(close.close().map(|c| c.0), Some(1002), "{close:?}");
    ws.expect_closed().await;

    let log = wait_log(&up, "eof").await;
    assert_eq!(
        log,
        ["text:6 fin", "close:1001", "eof"],
        "the bad frame never reached the app"
    );
    expect_all_closed(&proxy, &up).await;
    expect_ws_closes(&proxy, "protocol_error", 1.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn control_frame_over_125_bytes_is_closed_with_1002() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "").await;
    let mut ws = RawWs::upgrade(proxy.addr, "/ws/raw", &[]).await;
    // 125 bytes is the most a control frame may carry: answered.
    ws.send_frame(FIN | PING, &[b'p'; 125]).await;
    let pong = ws.next_frame(IO_TIMEOUT).await.expect("pong");
    assert_eq!((pong.opcode(), pong.payload.len()), (PONG, 125));

    ws.send_frame(FIN | PING, &[b'p'; 126]).await;
    let (before, close) = ws.until_close(IO_TIMEOUT, false).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(close.close().map(|c| c.0), Some(1002), "{close:?}");
    ws.expect_closed().await;
    let log = wait_log(&up, "eof").await;
    assert_eq!(log, ["ping", "close:1001", "eof"]);
    expect_ws_closes(&proxy, "protocol_error", 1.0).await;
}

// ---------------------------------------------------------------------------------------------
// 7. A side that vanishes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn app_dying_mid_stream_gives_the_client_1011() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "").await;
    let mut ws = RawWs::upgrade(proxy.addr, "/ws/drop?after=1", &[]).await;
    ws.send_frame(FIN | TEXT, b"last words").await;

    let (before, close) = ws.until_close(IO_TIMEOUT, false).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].text(), "last words");
    assert_eq!(close.close().map(|c| c.0), Some(1011), "{close:?}");
    ws.expect_closed().await;
    assert_eq!(up.stats.raw_ws_log(), ["text:10 fin", "dropped"]);
    expect_all_closed(&proxy, &up).await;
    expect_ws_closes(&proxy, "upstream_gone", 1.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_stops_reading_gets_the_client_1011_after_the_write_timeout() {
    let up = Upstream::start().await;
    let proxy = start_proxy(
        ProxyConfig::new(up.addr)
            .section("auth", "mode = \"off\"")
            .section("upstream", "write_timeout = \"1s\""),
    )
    .await;
    let mut ws = RawWs::upgrade(proxy.addr, "/ws/deaf?ms=30000", &[]).await;
    wait_log(&up, "deaf").await;
    // Push messages until the proxy gives up on the app and drops the client connection (the
    // write fails), at most 256 MiB, far more than the sockets between client, proxy and app can
    // buffer. Single `write`s, so a send cut short by the timeout never leaves half a frame.
    let frame = client_frame(FIN | BINARY, &vec![7u8; 512 * 1024]);
    let started = Instant::now();
    let mut sent = 0usize;
    while sent < 256 << 20 && started.elapsed() < IO_TIMEOUT {
        let rest = &frame[sent % frame.len()..];
        match tokio::time::timeout(Duration::from_millis(100), ws.stream.write(rest)).await {
            Ok(Ok(n)) if n > 0 => sent += n,
            Ok(_) => break,
            Err(_) => {}
        }
    }
    let (before, close) = ws.until_close(IO_TIMEOUT, false).await;
    let waited = started.elapsed();
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(close.close().map(|c| c.0), Some(1011), "{close:?}");
    // The app itself would only let go after 30 s.
    assert!(waited < Duration::from_secs(10), "closed after {waited:?}");
    expect_ws_closes(&proxy, "upstream_gone", 1.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_vanishing_tells_the_app_1001_then_eof() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "").await;
    let mut ws = RawWs::upgrade(proxy.addr, "/ws/raw", &[]).await;
    ws.send_frame(FIN | TEXT, b"bye").await;
    assert_eq!(ws.next_frame(IO_TIMEOUT).await.expect("echo").text(), "bye");
    drop(ws);

    let log = wait_log(&up, "eof").await;
    assert_eq!(log, ["text:3 fin", "close:1001", "eof"]);
    expect_all_closed(&proxy, &up).await;
    expect_ws_closes(&proxy, "client_gone", 1.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_vanishing_mid_frame_gets_no_close_frame_spliced_into_it() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "").await;
    let mut ws = RawWs::upgrade(proxy.addr, "/ws/raw", &[]).await;
    // A frame announcing 11 bytes of which only 5 are sent. A close frame written now (6 bytes
    // at the very least) would complete it: the app would get a corrupted message.
    let frame = client_frame(FIN | TEXT, &[b'x'; 11]);
    ws.send(&frame[..2 + 4 + 5]).await;
    // Let the proxy forward the piece before the client goes (the app logs nothing for half a
    // frame, so watch the proxy's byte counter).
    wait_metric(
        &proxy,
        "streamguard_relayed_bytes_total",
        &[("kind", "websocket"), ("direction", "to_upstream")],
        |v| v >= 11.0,
    )
    .await;
    drop(ws);

    let ended = wait_until(Duration::from_secs(5), || {
        up.stats
            .raw_ws_log()
            .iter()
            .any(|e| e == "eof" || e == "reset")
    })
    .await;
    let log = up.stats.raw_ws_log();
    assert!(ended, "{log:?}");
    assert_eq!(
        log,
        ["reset"],
        "the app saw the connection end mid-frame, nothing more"
    );
    expect_all_closed(&proxy, &up).await;
    expect_ws_closes(&proxy, "client_gone", 1.0).await;
}

// ---------------------------------------------------------------------------------------------
// 8. Idle
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn idle_socket_is_closed_with_1001_even_while_pings_are_answered() {
    let up = Upstream::start().await;
    let proxy = open_proxy(
        &up,
        "idle_timeout = \"2s\"\nping_interval = \"500ms\"\npong_timeout = \"1s\"",
    )
    .await;
    let mut ws = RawWs::upgrade(proxy.addr, "/ws/raw", &[]).await;
    let opened = Instant::now();
    // A data message at ~1 s restarts the idle clock.
    loop {
        let frame = ws.next_frame(IO_TIMEOUT).await.expect("ping");
        assert_eq!(frame.opcode(), PING, "{frame:?}");
        ws.send_frame(FIN | PONG, &frame.payload.clone()).await;
        if opened.elapsed() >= Duration::from_millis(900) {
            break;
        }
    }
    ws.send_frame(FIN | TEXT, b"activity").await;
    let (before, close) = ws.until_close(Duration::from_secs(6), true).await;
    let echo = before.iter().find(|f| f.opcode() == TEXT).expect("echo");
    assert_eq!(echo.text(), "activity");
    assert!(
        before.iter().filter(|f| f.opcode() == PING).count() >= 2,
        "{before:?}"
    );
    assert_eq!(close.close().map(|c| c.0), Some(1001), "{close:?}");
    let idle_for = close.at - echo.at;
    assert!(
        idle_for >= Duration::from_millis(1800) && idle_for < Duration::from_millis(3500),
        "closed {idle_for:?} after the last data frame"
    );
    ws.expect_closed().await;
    wait_log(&up, "close:1001").await;
    expect_all_closed(&proxy, &up).await;
    expect_ws_closes(&proxy, "idle", 1.0).await;
}

// ---------------------------------------------------------------------------------------------
// 9. Pings never split a frame
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn pings_never_split_a_slowly_sent_upstream_frame() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "ping_interval = \"200ms\"\npong_timeout = \"1s\"").await;
    let mut ws = RawWs::upgrade(
        proxy.addr,
        "/ws/slow-frame?bytes=262144&pieces=64&ms=3000",
        &[],
    )
    .await;
    let opened = Instant::now();

    // The client says nothing until the frame is in, so pings are due the whole time.
    let mut pings_before = 0;
    let big = loop {
        let frame = ws.next_frame(IO_TIMEOUT).await.expect("a valid frame");
        match frame.opcode() {
            PING => pings_before += 1,
            BINARY => break frame,
            other => panic!("unexpected opcode {other:#x}"),
        }
    };
    assert!(
        opened.elapsed() >= Duration::from_millis(2500),
        "the frame came slowly"
    );
    assert!(big.fin());
    assert_eq!(big.payload.len(), 262_144);
    let expected: Vec<u8> = (0..262_144).map(|i| (i % 251) as u8).collect();
    assert!(big.payload == expected, "the binary frame arrived altered");
    // Pings owed while the frame was in flight come right after it.
    let ping = ws
        .next_frame(Duration::from_secs(2))
        .await
        .expect("a ping after the frame");
    assert_eq!(ping.opcode(), PING, "{ping:?}");
    assert!(
        pings_before <= 1,
        "{pings_before} pings arrived before the frame started"
    );
    ws.send_frame(FIN | PONG, &ping.payload.clone()).await;

    // Not closed as dead: the deferred ping's pong clock started when it was sent.
    ws.send_frame(FIN | TEXT, b"ok").await;
    loop {
        let frame = ws.next_frame(IO_TIMEOUT).await.expect("echo");
        match frame.opcode() {
            PING => ws.send_frame(FIN | PONG, &frame.payload.clone()).await,
            TEXT => {
                assert_eq!(frame.text(), "ok");
                break;
            }
            other => panic!("unexpected opcode {other:#x}: {frame:?}"),
        }
    }
    assert_eq!(ws_closes(&proxy, "dead_peer").await, 0.0);
}

// ---------------------------------------------------------------------------------------------
// 10. Shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_every_socket_with_1001_before_exiting() {
    let up = Upstream::start().await;
    let mut proxy = start_proxy(
        ProxyConfig::new(up.addr)
            .section("auth", "mode = \"off\"")
            .section(
                "server",
                "drain_timeout = \"5s\"\ndrain_delay = \"0s\"\ndrain_window = \"0s\"",
            ),
    )
    .await;
    let mut raws = Vec::new();
    for _ in 0..3 {
        let mut ws = RawWs::upgrade(proxy.addr, "/ws/raw", &[]).await;
        ws.send_frame(FIN | TEXT, b"hi").await;
        assert_eq!(ws.next_frame(IO_TIMEOUT).await.expect("echo").text(), "hi");
        raws.push(ws);
    }
    let (mut lib, _) = ws_connect(proxy.addr, "/ws", &[]).await.expect("handshake");
    echo_of(&mut lib, "hello").await;
    wait_metric(
        &proxy,
        "streamguard_streams_active",
        &[("kind", "websocket")],
        |v| v == 4.0,
    )
    .await;

    proxy.signal_term();
    for ws in &mut raws {
        let (before, close) = ws.until_close(Duration::from_secs(5), false).await;
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(close.close().map(|c| c.0), Some(1001), "{close:?}");
    }
    let (_, close) = tungstenite_until_close(&mut lib, Duration::from_secs(5)).await;
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Away));
    for ws in &mut raws {
        ws.expect_closed().await;
    }
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the proxy exits");
    assert!(status.success(), "{status}");
    let log = up.stats.raw_ws_log();
    assert_eq!(
        log.iter().filter(|e| *e == "close:1001").count(),
        3,
        "the app heard 1001 on every socket: {log:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Handshakes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn bad_upgrades_are_refused_before_the_app() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "").await;
    let addr = proxy.addr;
    let h2c = request_head(
        "GET",
        addr,
        "/ws",
        &[],
        &[
            ("Upgrade", "h2c"),
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
        ],
    );
    assert_eq!(http_request(addr, &h2c).await.status, 400);
    let keyless = request_head(
        "GET",
        addr,
        "/ws",
        &[],
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
        ],
    );
    assert_eq!(http_request(addr, &keyless).await.status, 400);
    let bad_key = RawWs::open(addr, "/ws", &[("Sec-WebSocket-Key", "short")]).await;
    assert_eq!(bad_key.status, 400);
    assert_eq!(up.stats.total(), 0, "none of them reached the app");

    // A good one still works on the same proxy.
    RawWs::upgrade(addr, "/ws", &[]).await;
    assert_eq!(up.stats.hits("/ws"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn disallowed_origin_is_refused_with_403() {
    let up = Upstream::start().await;
    let proxy = start_proxy(
        ProxyConfig::new(up.addr)
            .section("auth", "mode = \"off\"")
            .section("cors", "allowed_origins = [\"https://app.example\"]"),
    )
    .await;
    match ws_connect(proxy.addr, "/ws", &[("Origin", "https://evil.example")]).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(up.stats.total(), 0, "the app never saw the handshake");
    let (_, resp) = ws_connect(proxy.addr, "/ws", &[("Origin", "https://app.example")])
        .await
        .expect("an allowed origin upgrades");
    assert_eq!(resp.status(), 101);
    assert_eq!(up.stats.hits("/ws"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_in_websocket_protocol_authenticates_and_is_never_echoed() {
    let up = Upstream::start().await;
    let proxy = start_proxy(ProxyConfig::new(up.addr).section(
        "auth",
        "mode = \"required\"\nwebsocket_protocol_prefix = \"bearer.\"",
    ))
    .await;
    // Without a token: 401 and nothing upstream.
    match ws_connect(proxy.addr, "/ws", &[("Sec-WebSocket-Protocol", "app")]).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(up.stats.total(), 0);

    let token = mint_token("proto-user", &[], 300, serde_json::Value::Null);
    let offered = format!("app, bearer.{token}");
    let (mut ws, resp) = ws_connect(proxy.addr, "/ws", &[("Sec-WebSocket-Protocol", &offered)])
        .await
        .expect("the protocol token authenticates");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("app")
    );
    for (name, value) in resp.headers() {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(
            !value.contains("bearer.") && !value.contains(&token),
            "response header {name} leaks the token: {value}"
        );
    }
    let shake = up
        .stats
        .last_ws_handshake()
        .expect("handshake reached the app");
    assert_eq!(shake.header("sec-websocket-protocol"), Some("app"));
    for (name, value) in &shake.headers {
        assert!(
            !value.contains("bearer."),
            "upstream header {name} still carries the protocol entry: {value}"
        );
    }
    echo_of(&mut ws, "authenticated").await;
}

// ---------------------------------------------------------------------------------------------
// 12. permessage-deflate
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn permessage_deflate_passes_through_with_inflate_and_allows_rsv1() {
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "compression = \"inflate\"").await;
    let offer = "permessage-deflate; client_max_window_bits";
    let mut ws = RawWs::upgrade(
        proxy.addr,
        "/ws/deflate",
        &[("Sec-WebSocket-Extensions", offer)],
    )
    .await;
    let shake = up.stats.last_ws_handshake().expect("handshake");
    assert_eq!(
        shake.header("sec-websocket-extensions"),
        Some(offer),
        "offer reaches the app"
    );
    assert_eq!(
        ws.header("sec-websocket-extensions"),
        Some("permessage-deflate")
    );

    // "Hello" compressed, as in RFC 7692 7.2.3.1; nobody inflates it on the way.
    let deflated = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    ws.send_frame(FIN | RSV1 | TEXT, &deflated).await;
    let echo = ws.next_frame(IO_TIMEOUT).await.expect("echo");
    assert_eq!(echo.first, FIN | RSV1 | TEXT);
    assert_eq!(echo.payload, deflated);
    assert_eq!(up.stats.raw_ws_log(), ["text:7 fin rsv1"]);

    // Where the app did not accept the extension, RSV1 is a protocol error.
    let mut plain = RawWs::upgrade(
        proxy.addr,
        "/ws/raw",
        &[("Sec-WebSocket-Extensions", offer)],
    )
    .await;
    assert_eq!(plain.header("sec-websocket-extensions"), None);
    plain.send_frame(FIN | RSV1 | TEXT, &deflated).await;
    let (_, close) = plain.until_close(IO_TIMEOUT, false).await;
    assert_eq!(close.close().map(|c| c.0), Some(1002), "{close:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extension_the_proxy_did_not_offer_fails_the_handshake_with_502() {
    // `/ws/deflate` names permessage-deflate in its 101 whatever it was offered; by default the
    // app is offered nothing, so frames under that extension would be frames nobody agreed on.
    let up = Upstream::start().await;
    let proxy = open_proxy(&up, "").await;
    let handshake = request_head(
        "GET",
        proxy.addr,
        "/ws/deflate",
        &[],
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
            (
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits",
            ),
        ],
    );
    let refused = http_request(proxy.addr, &handshake).await;
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert_eq!(refused.text(), r#"{"error":"bad gateway"}"#);
    let shake = up
        .stats
        .last_ws_handshake()
        .expect("the app saw the handshake");
    assert_eq!(shake.header("sec-websocket-extensions"), None);
    // Counted as the request is logged, after the answer went out.
    wait_metric(
        &proxy,
        "streamguard_requests_total",
        &[("outcome", "failed")],
        |v| v == 1.0,
    )
    .await;
    assert_eq!(
        ws_closes(&proxy, "client_gone").await,
        0.0,
        "no stream started"
    );
}

// ---------------------------------------------------------------------------------------------
// 13. Attacks on a Node `ws` app
// ---------------------------------------------------------------------------------------------

/// A proxy in front of the Node app with auth off and `websocket` as the `[websocket]` body.
async fn node_proxy(app: &NodeApp, websocket: &str) -> Proxy {
    start_proxy(
        ProxyConfig::new(app.addr)
            .section("auth", "mode = \"off\"")
            .section("websocket", websocket),
    )
    .await
}

/// The app's stats once all its sockets are closed (waits up to 5 s).
async fn settled(app: &NodeApp) -> NodeStats {
    let stats = app
        .stats_when(Duration::from_secs(5), |s| {
            s.open == 0 && !s.handshakes.is_empty()
        })
        .await;
    assert_eq!(stats.open, 0, "the app still has sockets open: {stats:?}");
    stats
}

/// A handshake whose head is followed, in the same write, by `body` as announced by `framing`
/// (e.g. `("Content-Length", "12")`).
fn upgrade_with_body(addr: SocketAddr, framing: (&str, &str), body: &[u8]) -> Vec<u8> {
    let head = request_head(
        "GET",
        addr,
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ],
        &[framing],
    );
    [head.as_bytes(), body].concat()
}

/// `data` compressed as a permessage-deflate client sends it (RFC 7692 7.2.1): raw deflate
/// continuing `deflate`'s context, sync-flushed, the trailing `00 00 ff ff` removed.
fn deflate_message(deflate: &mut flate2::Compress, data: &[u8]) -> Vec<u8> {
    const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
    let mut out = Vec::with_capacity(data.len() / 4 + 1024);
    let mut input = data;
    loop {
        out.reserve(64 * 1024);
        let before = deflate.total_in();
        deflate
            .compress_vec(input, &mut out, flate2::FlushCompress::Sync)
            .expect("deflate");
        input = &input[(deflate.total_in() - before) as usize..];
        if input.is_empty() && out.ends_with(&TAIL) {
            break;
        }
    }
    out.truncate(out.len() - TAIL.len());
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_with_a_body_is_refused_and_the_app_never_reads_it_as_frames() {
    // The body is a frame over max_message_size: forwarded raw behind the handshake, `ws`
    // would read it as the connection's first message, past every frame check.
    let app = NodeApp::start().await;
    let proxy = node_proxy(&app, "max_message_size = \"1KiB\"").await;
    let smuggled = client_frame(FIN | BINARY, &[b's'; 1500]);
    let request = upgrade_with_body(
        proxy.addr,
        ("Content-Length", &smuggled.len().to_string()),
        &smuggled,
    );
    let mut conn = common::HttpConn::connect(proxy.addr)
        .await
        .expect("connect");
    let resp = conn.send(&request).await.expect("an answer");
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(
        resp.text(),
        r#"{"error":"websocket upgrades carry no body"}"#
    );
    wait_metric(
        &proxy,
        "streamguard_rejections_total",
        &[("reason", "upgrade_body")],
        |v| v == 1.0,
    )
    .await;
    let stats = app.stats().await;
    assert!(stats.handshakes.is_empty(), "the app saw it: {stats:?}");
    assert_eq!((stats.messages, stats.largest_message), (0, 0), "{stats:?}");

    // `Content-Length: 0` is no body: that upgrade goes through.
    let mut ws = RawWs::upgrade(proxy.addr, "/ws", &[("Content-Length", "0")]).await;
    ws.send_frame(FIN | TEXT, b"fine").await;
    assert_eq!(
        ws.next_frame(IO_TIMEOUT).await.expect("echo").text(),
        "fine"
    );
    let stats = app.stats().await;
    assert_eq!(stats.handshakes.len(), 1, "{stats:?}");
    assert_eq!(stats.handshakes[0].early, 0, "nothing rode on the head");
}

#[tokio::test(flavor = "multi_thread")]
async fn transfer_encoding_or_http_1_0_on_an_upgrade_is_refused() {
    let app = NodeApp::start().await;
    let proxy = node_proxy(&app, "").await;
    // `start_proxy`'s probe is a refused upgrade too.
    let bad_before = metric_now(
        &proxy,
        "streamguard_rejections_total",
        &[("reason", "bad_upgrade")],
    )
    .await;
    let frame = client_frame(FIN | TEXT, b"in a chunk");
    let chunked = [
        format!("{:x}\r\n", frame.len()).as_bytes(),
        &frame,
        b"\r\n0\r\n\r\n",
    ]
    .concat();
    for (framing, body, answer) in [
        (
            ("Transfer-Encoding", "chunked"),
            &chunked[..],
            r#"{"error":"websocket upgrades carry no body"}"#,
        ),
        // Any coding, even around an empty body: how the app reads it is the app's choice.
        // (A final coding other than a lone chunked is refused with the request head.)
        (
            ("Transfer-Encoding", "gzip, chunked"),
            &b"0\r\n\r\n"[..],
            r#"{"error":"bad request"}"#,
        ),
    ] {
        let request = upgrade_with_body(proxy.addr, framing, body);
        let mut conn = common::HttpConn::connect(proxy.addr)
            .await
            .expect("connect");
        let resp = conn.send(&request).await.expect("an answer");
        assert_eq!(resp.status, 400, "{framing:?}: {}", resp.text());
        assert_eq!(resp.text(), answer, "{framing:?}");
    }
    let old = request_head(
        "GET",
        proxy.addr,
        "/ws",
        &[],
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    .replacen("HTTP/1.1", "HTTP/1.0", 1);
    let resp = http_request(proxy.addr, &old).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.text(), r#"{"error":"unsupported upgrade"}"#);
    // The chunked upgrade is the relay's refusal; the other framing never got past the head.
    for (reason, n) in [("upgrade_body", 1.0), ("bad_upgrade", bad_before + 1.0)] {
        wait_metric(
            &proxy,
            "streamguard_rejections_total",
            &[("reason", reason)],
            |v| v == n,
        )
        .await;
    }
    let stats = app.stats().await;
    assert!(stats.handshakes.is_empty(), "the app saw one: {stats:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_pipelined_behind_the_handshake_still_pass_the_frame_checks() {
    let app = NodeApp::start().await;
    let proxy = node_proxy(&app, "max_message_size = \"1KiB\"").await;
    let early = [
        client_frame(FIN | TEXT, b"first"),
        client_frame(FIN | BINARY, &[b'x'; 2048]),
    ]
    .concat();
    let mut ws = RawWs::open_sending(proxy.addr, "/ws", &[], &early).await;
    assert_eq!(ws.status, 101, "{:?}", ws.headers);
    // The close comes as soon as the second frame's header is read, so the echo of the first
    // may or may not get ahead of it.
    let (_, close) = ws.until_close(IO_TIMEOUT, true).await;
    assert_eq!(close.close().map(|c| c.0), Some(1009), "{close:?}");
    ws.expect_closed().await;
    let stats = settled(&app).await;
    assert_eq!((stats.messages, stats.largest_message), (1, 5), "{stats:?}");
    assert_eq!(
        stats.handshakes[0].early, 0,
        "frames came after the 101: {stats:?}"
    );
    expect_ws_closes(&proxy, "too_big", 1.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_the_compression_offer_never_reaches_the_app() {
    let app = NodeApp::start().await;
    let proxy = node_proxy(&app, "max_message_size = \"64KiB\"").await;
    let mut ws = RawWs::upgrade(
        proxy.addr,
        "/ws",
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame",
        )],
    )
    .await;
    assert_eq!(ws.header("sec-websocket-extensions"), None);
    let stats = app.stats().await;
    assert_eq!(stats.handshakes[0].extensions, None, "{stats:?}");

    // 4 KB on the wire, 4 MiB inflated: with nothing negotiated, RSV1 is a protocol error.
    let bomb = deflate_message(
        &mut flate2::Compress::new(flate2::Compression::best(), false),
        &vec![0; 4 << 20],
    );
    assert!(bomb.len() < 8 * 1024, "{} bytes", bomb.len());
    ws.send_frame(FIN | RSV1 | BINARY, &bomb).await;
    let (_, close) = ws.until_close(IO_TIMEOUT, true).await;
    assert_eq!(close.close().map(|c| c.0), Some(1002), "{close:?}");
    let stats = settled(&app).await;
    assert_eq!((stats.messages, stats.largest_message), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_inflate_a_compression_bomb_is_closed_with_1009_before_the_app_gets_it() {
    const LIMIT: u64 = 64 * 1024;
    let app = NodeApp::start().await;
    let proxy = node_proxy(
        &app,
        "max_message_size = \"64KiB\"\ncompression = \"inflate\"",
    )
    .await;
    let mut ws = RawWs::upgrade(
        proxy.addr,
        "/ws",
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits=\"15\", x-webkit-deflate-frame",
        )],
    )
    .await;
    let answer = ws.header("sec-websocket-extensions").unwrap_or_default();
    assert!(answer.starts_with("permessage-deflate"), "{:?}", ws.headers);
    let stats = app.stats().await;
    assert_eq!(
        stats.handshakes[0].extensions.as_deref(),
        Some("permessage-deflate; client_max_window_bits=15"),
        "the app got the deflate offer only, rewritten"
    );

    // Context carries over between messages, as neither side asked otherwise.
    let mut deflate = flate2::Compress::new(flate2::Compression::best(), false);
    // Just under the limit once inflated, in a few hundred bytes: it passes.
    let under = pattern(LIMIT as usize - 10, 3);
    let wire = deflate_message(&mut deflate, &under);
    assert!(wire.len() < 4096);
    ws.send_frame(FIN | RSV1 | BINARY, &wire).await;
    let echo = ws.next_frame(IO_TIMEOUT).await.expect("echo");
    assert_eq!(echo.opcode(), BINARY, "{echo:?}");
    let stats = app.stats_when(IO_TIMEOUT, |s| s.messages == 1).await;
    assert_eq!(stats.largest_message, LIMIT - 10, "{stats:?}");

    let bomb = deflate_message(&mut deflate, &vec![0; 4 << 20]);
    assert!(bomb.len() < 8 * 1024, "{} bytes", bomb.len());
    // In three fragments, so the count spans frames; in one write, as the proxy closes the
    // socket once it has seen enough, and a later write could find it gone.
    let third = bomb.len() / 3;
    let fragments = [
        client_frame(RSV1 | BINARY, &bomb[..third]),
        client_frame(CONT, &bomb[third..2 * third]),
        client_frame(FIN | CONT, &bomb[2 * third..]),
    ]
    .concat();
    ws.send(&fragments).await;
    let (_, close) = ws.until_close(IO_TIMEOUT, true).await;
    assert_eq!(close.close(), Some((1009, "message too big".into())));
    ws.expect_closed().await;
    let stats = settled(&app).await;
    assert_eq!(stats.messages, 1, "{stats:?}");
    assert!(stats.largest_message <= LIMIT, "{stats:?}");
    expect_ws_closes(&proxy, "too_big", 1.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ping_flood_is_closed_with_1008_after_the_allowed_rate() {
    const RATE: u64 = 20;
    let app = NodeApp::start().await;
    let proxy = node_proxy(&app, &format!("max_control_frames = \"{RATE}/second\"")).await;
    let mut ws = RawWs::upgrade(proxy.addr, "/ws", &[]).await;
    let started = Instant::now();
    let flood: Vec<u8> = (0..3000)
        .flat_map(|i: u32| client_frame(FIN | PING, &i.to_be_bytes()).to_vec())
        .collect();
    ws.send(&flood).await;
    let (before, close) = ws.until_close(IO_TIMEOUT, false).await;
    let elapsed = started.elapsed();
    assert_eq!(
        close.close(),
        Some((1008, "too many control frames".into())),
        "{close:?}"
    );
    assert!(before.iter().all(|f| f.opcode() == PONG), "{before:?}");
    let stats = settled(&app).await;
    // All at once, then one per 1/RATE s for as long as the flood lasted.
    let allowed = RATE + (elapsed.as_millis() as u64 * RATE).div_ceil(1000);
    assert!(
        (1..=allowed).contains(&stats.pings),
        "the app saw {} pings, {allowed} allowed: {stats:?}",
        stats.pings
    );
    expect_ws_closes(&proxy, "control_rate", 1.0).await;

    // Answering the proxy's own pings never counts, however many there are.
    let quick = node_proxy(
        &app,
        "max_control_frames = \"1/hour\"\nping_interval = \"50ms\"\npong_timeout = \"2s\"",
    )
    .await;
    let mut ws = RawWs::upgrade(quick.addr, "/ws", &[]).await;
    let mut answered = 0;
    while answered < 10 {
        let frame = ws.next_frame(IO_TIMEOUT).await.expect("a ping");
        assert_eq!(frame.opcode(), PING, "{frame:?}");
        ws.send_frame(FIN | PONG, &frame.payload).await;
        answered += 1;
    }
    ws.send_frame(FIN | TEXT, b"still here").await;
    let mut frame = ws.next_frame(IO_TIMEOUT).await.expect("a frame");
    while frame.opcode() == PING {
        ws.send_frame(FIN | PONG, &frame.payload).await;
        frame = ws.next_frame(IO_TIMEOUT).await.expect("a frame");
    }
    assert_eq!(frame.text(), "still here");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_in_3000_fragments_is_closed_and_never_reaches_the_app_whole() {
    let app = NodeApp::start().await;
    let proxy = node_proxy(&app, "").await;
    let mut ws = RawWs::upgrade(proxy.addr, "/ws", &[]).await;
    let fragmented = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let opcode = if i == 0 { BINARY } else { CONT };
                let fin = if i + 1 == n { FIN } else { 0 };
                client_frame(fin | opcode, b"f").to_vec()
            })
            .collect()
    };
    // The default allows 128 fragments: such a message arrives whole.
    ws.send(&fragmented(128)).await;
    let echo = ws.next_frame(IO_TIMEOUT).await.expect("echo");
    assert_eq!(echo.payload, vec![b'f'; 128]);

    ws.send(&fragmented(3000)).await;
    let (_, close) = ws.until_close(IO_TIMEOUT, true).await;
    assert_eq!(close.close(), Some((1009, "too many fragments".into())));
    ws.expect_closed().await;
    let stats = settled(&app).await;
    assert_eq!(
        (stats.messages, stats.largest_message),
        (1, 128),
        "{stats:?}"
    );
    expect_ws_closes(&proxy, "too_fragmented", 1.0).await;
}

// ---------------------------------------------------------------------------------------------
// 14. Socket.IO
// ---------------------------------------------------------------------------------------------

const SOCKETIO_PIP: &str = "python3 -m pip install \"python-socketio[client]\" aiohttp";

fn socketio_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/socketio")
}

/// Kills the Python server when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn socketio_polling_and_websocket_work_through_the_proxy() {
    let probe = Command::new("python3")
        .args(["-c", "import socketio, aiohttp, requests, websocket"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        let msg = format!("python-socketio is not installed; install it with: {SOCKETIO_PIP}");
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED socketio_polling_and_websocket_work_through_the_proxy: {msg}");
        return;
    }

    // The page's origin: the client sends it on every request, as a browser would.
    const ORIGIN: &str = "http://app.example";
    let port = common::free_port();
    let server = Command::new("python3")
        .arg(socketio_dir().join("server.py"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the Socket.IO server");
    let mut server = KillOnDrop(server);
    let app: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(app).await.is_err() {
        assert!(
            server.0.try_wait().expect("server status").is_none(),
            "server exited"
        );
        assert!(
            Instant::now() < deadline,
            "Socket.IO server not listening on {app}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let proxy = start_proxy(
        ProxyConfig::new(app)
            .section("auth", "mode = \"off\"")
            .section("cors", &format!("allowed_origins = [\"{ORIGIN}\"]"))
            .section("websocket", "ping_interval = \"1s\"\npong_timeout = \"2s\""),
    )
    .await;
    let client = Command::new("python3")
        .arg(socketio_dir().join("client.py"))
        .arg(format!("http://{}", proxy.addr))
        .arg(ORIGIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Socket.IO client");
    let output = tokio::task::spawn_blocking(move || client.wait_with_output())
        .await
        .expect("join")
        .expect("client output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // One JSON line per transport plan, each naming the transport it ended on.
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let transports: Vec<&str> = results
        .iter()
        .filter_map(|r| r["transport"].as_str())
        .collect();
    assert_eq!(
        transports,
        ["websocket", "websocket", "polling"],
        "{stdout}"
    );

    // Two of the three sessions ran over the proxy's WebSocket relay and closed cleanly.
    wait_metric(
        &proxy,
        "streamguard_streams_active",
        &[("kind", "websocket")],
        |v| v == 0.0,
    )
    .await;
    let metrics = proxy.metrics().await;
    let closes = metric(
        &metrics,
        "streamguard_stream_closes_total",
        &[("kind", "websocket")],
    );
    assert_eq!(closes, Some(2.0), "{metrics}");
    for direction in ["to_upstream", "to_client"] {
        let n = metric(
            &metrics,
            "streamguard_ws_messages_total",
            &[("direction", direction)],
        );
        assert!(n.unwrap_or(0.0) >= 3.0, "{direction}: {n:?}");
    }
    drop(server);
}
