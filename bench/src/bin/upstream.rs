//! sg-bench-upstream: the app behind every proxy in the benchmark.
//!
//! - `GET /sse` (any path containing `sse`): an endless `text/event-stream` (chunked, as most
//!   frameworks send it). Every stream writes `data: <seq> <CLOCK_MONOTONIC ns>\n\n` at the
//!   configured rate, stamped right before its own write. Streams are spread evenly over the
//!   period (each has its own phase), so N streams at R events/s are a steady N x R events/s,
//!   not one burst of N every 1/R s (`/rate?r=R&burst=1` lines all phases up instead). A stream
//!   whose writes are held back (backpressure through the proxy, or this process falling
//!   behind) skips its late events and adds them to `seq`, so the client sees a gap. Events are
//!   padded to `size` bytes of data when `/rate` sets one.
//! - `GET /short` (any path containing `short`): one such event, `Content-Length` framed, then
//!   the connection closes (connection-setup runs).
//! - `GET /ws` with `Upgrade: websocket`: echoes every text and binary message.
//! - `GET /rate?r=<events per second per stream>[&burst=1][&size=<bytes>]`: sets the rate
//!   (0 = idle streams) and the event size.
//! - `GET /stall[?reset=1]`: the longest a write to any stream has waited for its socket since
//!   the last reset (writes still waiting count with the time waited so far), as JSON: how long
//!   a proxy held the app back. A proxy that passes back-pressure on from a client that stopped
//!   reading blocks the app's writes to that stream; one that absorbs it does not. A write the
//!   socket takes at once counts as no wait, however long this shared core took to run it.
//! - `GET /stats`: counters as JSON. `GET /healthz`: 200.
//!
//! One thread (current-thread runtime): the benchmark pins it to one core with the generator.
//!
//! `--sndbuf BYTES` sets SO_SNDBUF on every accepted connection: over loopback the kernel gives
//! each socket megabytes of buffer, so a stalled client would hold the app back only after
//! minutes of events; with a modest buffer (an app's on a real host) the steady state comes in
//! seconds.
//!
//! Usage: `sg-bench-upstream --listen 127.0.0.1:18081 [--rate 0] [--sndbuf 0] [--deadline 3600]`

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sg_bench::args::Args;
use sg_bench::clock::mono_ns;
use sg_bench::http::find;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Default)]
struct Stats {
    streams_open: Cell<u64>,
    ws_open: Cell<u64>,
    events: Cell<u64>,
    skipped_events: Cell<u64>,
    short_served: Cell<u64>,
    ws_messages: Cell<u64>,
}

fn bump(c: &Cell<u64>, by: i64) {
    c.set((c.get() as i64 + by).max(0) as u64);
}

/// Events per second per stream, whether all streams share one phase, and the event size.
#[derive(Clone, Copy, Debug)]
struct Rate {
    per_second: f64,
    burst: bool,
    /// Bytes of `data:` each event is padded to (0: just `<seq> <ns>`).
    size: usize,
}

/// How long writes to the streams waited, for `/stall`.
#[derive(Default)]
struct Stalls {
    /// The window `/stall?reset=1` last started (ns, CLOCK_MONOTONIC).
    since: Cell<u64>,
    /// The longest write that finished in the window, ns.
    longest: Cell<u64>,
    /// Every stream's write in progress: its start (ns), 0 when not writing. Scanned only
    /// when `/stall` is asked.
    writing: RefCell<Vec<Weak<Cell<u64>>>>,
}

impl Stalls {
    fn track(&self) -> Rc<Cell<u64>> {
        let cell = Rc::new(Cell::new(0));
        self.writing.borrow_mut().push(Rc::downgrade(&cell));
        cell
    }

    fn finished(&self, started: u64, now: u64) {
        let took = now.saturating_sub(started.max(self.since.get()));
        self.longest.set(self.longest.get().max(took));
    }

    /// The longest wait in the window so far, writes in progress included, and how many are
    /// waiting now.
    fn report(&self, now: u64) -> (u64, usize) {
        let since = self.since.get();
        let mut waiting = 0;
        let mut longest = self.longest.get();
        self.writing.borrow_mut().retain(|w| {
            let Some(cell) = w.upgrade() else {
                return false;
            };
            let started = cell.get();
            if started != 0 {
                waiting += 1;
                longest = longest.max(now.saturating_sub(started.max(since)));
            }
            true
        });
        (longest, waiting)
    }

    fn reset(&self, now: u64) {
        self.since.set(now);
        self.longest.set(0);
    }
}

struct State {
    rate: watch::Sender<Rate>,
    /// Phases are fixed offsets from this instant.
    epoch: Instant,
    streams_started: Cell<u64>,
    stats: Stats,
    stalls: Stalls,
    /// SO_SNDBUF for accepted connections (0: the kernel's).
    sndbuf: usize,
}

fn main() {
    let args = Args::parse(std::env::args().skip(1));
    let listen: SocketAddr = args.get("listen", "127.0.0.1:18081".parse().expect("addr"));
    let deadline = Duration::from_secs_f64(args.get("deadline", 3600.0));
    let state = Rc::new(State {
        rate: watch::channel(Rate {
            per_second: args.get("rate", 0.0),
            burst: args.flag("burst"),
            size: 0,
        })
        .0,
        epoch: Instant::now(),
        streams_started: Cell::new(0),
        stats: Stats::default(),
        stalls: Stalls::default(),
        sndbuf: args.get("sndbuf", 0),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = match bind(listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sg-bench-upstream: cannot listen on {listen}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!("sg-bench-upstream: listening on {listen}");
        tokio::select! {
            _ = accept_loop(listener, state) => {}
            _ = sleep(deadline) => eprintln!("sg-bench-upstream: deadline reached, exiting"),
        }
    });
    std::process::exit(0);
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn accept_loop(listener: TcpListener, state: Rc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if state.sndbuf > 0 {
                    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(state.sndbuf);
                }
                tokio::task::spawn_local(connection(stream, state.clone()));
            }
            // Out of file descriptors or similar: back off instead of spinning.
            Err(_) => sleep(Duration::from_millis(10)).await,
        }
    }
}

struct Request {
    target: String,
    upgrade: bool,
    ws_key: Option<String>,
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 32 * 1024 {
            return None;
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?.to_owned();
    let mut upgrade = false;
    let mut ws_key = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("upgrade") && value.eq_ignore_ascii_case("websocket") {
                upgrade = true;
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                ws_key = Some(value.to_owned());
            }
        }
    }
    Some(Request {
        target,
        upgrade,
        ws_key,
    })
}

async fn connection(mut stream: TcpStream, state: Rc<State>) {
    let _ = stream.set_nodelay(true);
    let Some(req) = read_request(&mut stream).await else {
        return;
    };
    let path = req.target.as_str();
    if req.upgrade {
        ws_echo(stream, req, &state).await;
    } else if let Some(query) = path.strip_prefix("/rate") {
        let param = |name: &str| {
            query
                .trim_start_matches('?')
                .split('&')
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        };
        let rate = param("r").and_then(|v| v.parse::<f64>().ok());
        let burst = param("burst").is_some_and(|v| v == "1" || v == "true");
        let size = param("size").map_or(Some(0), |v| v.parse::<usize>().ok());
        match (rate, size) {
            (Some(r), Some(size)) if r >= 0.0 && r.is_finite() && size <= 1 << 20 => {
                state.rate.send_replace(Rate {
                    per_second: r,
                    burst,
                    size,
                });
                plain(
                    &mut stream,
                    200,
                    &format!("rate {r} burst {burst} size {size}\n"),
                )
                .await;
            }
            _ => {
                plain(
                    &mut stream,
                    400,
                    "use /rate?r=<events per second>[&size=<bytes>]\n",
                )
                .await
            }
        }
    } else if let Some(query) = path.strip_prefix("/stall") {
        let now = mono_ns();
        let (longest, waiting) = state.stalls.report(now);
        if query.contains("reset=1") {
            state.stalls.reset(now);
        }
        let body = serde_json::json!({ "longest_write_us": longest / 1000, "waiting": waiting });
        plain(&mut stream, 200, &body.to_string()).await;
    } else if path.starts_with("/stats") {
        let s = &state.stats;
        let rate = *state.rate.borrow();
        let body = serde_json::json!({
            "rate": rate.per_second,
            "burst": rate.burst,
            "streams_open": s.streams_open.get(),
            "ws_open": s.ws_open.get(),
            "events": s.events.get(),
            "skipped_events": s.skipped_events.get(),
            "short_served": s.short_served.get(),
            "ws_messages": s.ws_messages.get(),
        });
        plain(&mut stream, 200, &body.to_string()).await;
    } else if path.contains("short") {
        let body = format!("data: 0 {}\n\n", mono_ns());
        let msg = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(msg.as_bytes()).await.is_ok() {
            bump(&state.stats.short_served, 1);
        }
        let _ = stream.shutdown().await;
    } else if path.contains("sse") {
        sse_stream(stream, &state).await;
    } else if path.starts_with("/healthz") {
        plain(&mut stream, 200, "ok\n").await;
    } else {
        plain(&mut stream, 404, "not found\n").await;
    }
}

async fn plain(stream: &mut TcpStream, status: u16, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(msg.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The first due time of a stream with phase `phase` (0..1 of a period) after `now`.
fn first_due(epoch: Instant, rate: Rate, phase: f64, now: Instant) -> Option<(Instant, Duration)> {
    if rate.per_second <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate.per_second);
    let offset = if rate.burst { 0.0 } else { phase };
    let since = now.saturating_duration_since(epoch).as_secs_f64() / period.as_secs_f64();
    let k = (since - offset).floor() + 1.0;
    Some((epoch + period.mul_f64(k + offset), period))
}

async fn sse_stream(stream: TcpStream, state: &State) {
    let (mut rd, mut wr) = stream.into_split();
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                 Transfer-Encoding: chunked\r\n\r\n";
    if wr.write_all(head).await.is_err() {
        return;
    }
    let stats = &state.stats;
    bump(&stats.streams_open, 1);
    let n = state.streams_started.get();
    state.streams_started.set(n + 1);
    // Golden-ratio phases spread any number of streams evenly over the period.
    let phase = (n as f64 * 0.618_033_988_749_895).fract();
    let mut rate_rx = state.rate.subscribe();
    let mut rate = *rate_rx.borrow_and_update();
    let mut due = first_due(state.epoch, rate, phase, Instant::now());
    let mut seq = 0u64;
    let mut scratch = [0u8; 256];
    let mut out: Vec<u8> = Vec::with_capacity(96);
    let writing = state.stalls.track();
    loop {
        let at = due.map(|(at, _)| at);
        tokio::select! {
            _ = sleep_until(at.unwrap_or_else(Instant::now)), if at.is_some() => {
                let Some((at, period)) = due else { continue };
                let now = Instant::now();
                let mut next = at + period;
                if now > next {
                    // More than a period late: those events are skipped, and seq shows it.
                    let late = ((now - at).as_secs_f64() / period.as_secs_f64()) as u64;
                    seq += late;
                    bump(&stats.skipped_events, late as i64);
                    next = at + period.mul_f64((late + 1) as f64);
                }
                due = Some((next, period));
                seq += 1;
                let ns = mono_ns();
                let mut payload = format!("data: {seq} {ns}");
                // `data: ` is 6 bytes; the value is padded to `size`.
                if payload.len() < rate.size + 6 {
                    payload.push(' ');
                    let pad = (rate.size + 6).saturating_sub(payload.len());
                    payload.extend(std::iter::repeat_n('x', pad));
                }
                payload.push_str("\n\n");
                out.clear();
                out.extend_from_slice(format!("{:x}\r\n", payload.len()).as_bytes());
                out.extend_from_slice(payload.as_bytes());
                out.extend_from_slice(b"\r\n");
                let mut write = std::pin::pin!(wr.write_all(&out));
                let written = match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                    Poll::Ready(written) => written,
                    Poll::Pending => {
                        // The socket is full: the proxy is not reading this stream.
                        let waits = mono_ns();
                        writing.set(waits);
                        let written = write.await;
                        writing.set(0);
                        state.stalls.finished(waits, mono_ns());
                        written
                    }
                };
                if written.is_err() {
                    break;
                }
                bump(&stats.events, 1);
            }
            changed = rate_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                rate = *rate_rx.borrow_and_update();
                due = first_due(state.epoch, rate, phase, Instant::now());
            }
            // The client (or the proxy) went away: read returns 0 or an error.
            n = rd.read(&mut scratch) => {
                if !matches!(n, Ok(n) if n > 0) {
                    break;
                }
            }
        }
    }
    bump(&stats.streams_open, -1);
}

async fn ws_echo(mut stream: TcpStream, req: Request, state: &State) {
    let Some(key) = req.ws_key else {
        plain(&mut stream, 400, "missing Sec-WebSocket-Key\n").await;
        return;
    };
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
    let (mut tx, mut rx) = ws.split();
    let stats = &state.stats;
    bump(&stats.ws_open, 1);
    while let Some(msg) = rx.next().await {
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                bump(&stats.ws_messages, 1);
                if tx.send(m).await.is_err() {
                    break;
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    bump(&stats.ws_open, -1);
}
