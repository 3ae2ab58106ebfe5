//! sg-loadgen: holds thousands of SSE or WebSocket streams through a proxy and measures what
//! they cost it, or runs connection-setup bursts; `report` turns the runs into tables.
//!
//! Modes:
//! - `sse` / `ws`: opens streams at a fixed rate in steps (`--steps 1000,5000,9500`), samples
//!   the proxy's RSS and open files after each step (and after closing and reopening
//!   `--churn` of them), measures an idle window (heartbeats), then windows at set event rates
//!   (`--rates 1:5,20:3`, rate:seconds) and a ladder of rates (`--ladder 10,20,50`) that stops
//!   at the first step with loss or p99 over `--p99-limit-ms`. The streams live in child
//!   processes of `--per-process` streams each (one process may not hold 20,000 files), each
//!   connecting from 127.0.0.2.. (`--src-ips`) so no source address runs out of ports.
//!   `--stalled F` makes that share of the SSE streams (spread evenly) clients that stop
//!   reading after their response head, over a phone-like link (see `net::connect_slow_link`);
//!   they are held open but not measured. `--event-size N` pads the upstream's events to N
//!   bytes; `--upstream-stall` adds each rate window's longest upstream write
//!   (`<name>.upstream_stall_us@NxR`, from the bench upstream's `/stall`).
//! - `setup`: `--concurrency` loops each opening a new connection to a one-event stream
//!   (`/short`), for `--window` seconds after `--warm`: setups per second and proxy CPU each.
//! - `report --dir D --md F --json F [--meta M]`: medians and spread over rounds, ratios against
//!   nginx and HAProxy from the same round, the targets checked.
//!
//! Every event carries the upstream's CLOCK_MONOTONIC stamp; latency = arrival - stamp, in a
//! microsecond hdrhistogram. CPU, RSS and open files come from /proc of `--watch-pid` (one pid
//! or a comma-separated list, summed) and its descendants. Every run stops by `--deadline` seconds, writing what it has (`incomplete`).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use sg_bench::args::Args;
use sg_bench::clock::mono_ns;
use sg_bench::http::{classify, control_get, parse_head, BodyDecoder, Head, LineScanner, SseLine};
use sg_bench::net::{connect_from, connect_slow_link, io_cause, source_addr};
use sg_bench::procstat;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use sg_bench::report;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Below this many events in a window, CPU per event is not reported.
const MIN_EVENTS_FOR_CPU: u64 = 1000;

fn main() {
    let mut words: Vec<String> = std::env::args().skip(1).collect();
    if words.is_empty() {
        eprintln!("usage: sg-loadgen sse|ws|setup|report [--flags]; see the module doc");
        std::process::exit(2);
    }
    let mode = words.remove(0);
    let args = Args::parse(words);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, async move {
        match mode.as_str() {
            "sse" | "ws" => parent(&mode, &args).await,
            "setup" => setup(&args).await,
            "child" => child(&args).await,
            "report" => report::run(&args),
            other => {
                eprintln!("unknown mode {other:?}");
                2
            }
        }
    });
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------------
// Target, requests and tokens

/// Where to connect and what to send.
struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
    origin: Option<String>,
    tokens: Vec<String>,
    src_ips: usize,
    /// Which user each stream is: child i of c numbers its streams from `--base` (i * per * 4,
    /// room for churn's reopenings) and gives its k-th stream user i + k * c, so N streams over
    /// the children are N distinct users when `--users` is N (one process: user = stream).
    stream_base: usize,
    child_index: usize,
    children: usize,
    /// Share of the streams that stop reading after their head (`--stalled`).
    stalled: f64,
}

impl Target {
    fn from_args(args: &Args) -> Target {
        let url = args.str_or("url", "http://127.0.0.1:18080/sse");
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .unwrap_or(url);
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = host.parse().unwrap_or_else(|_| {
            eprintln!("--url needs a literal ip:port, got {host:?}");
            std::process::exit(2)
        });
        Target {
            addr,
            host: host.to_owned(),
            path: path.to_owned(),
            origin: args.str("origin").map(str::to_owned),
            tokens: mint_tokens(args),
            src_ips: args.get("src-ips", 16),
            stream_base: args.get("base", 0),
            child_index: args.get("child-index", 0),
            children: args.get("children", 1),
            stalled: args.get("stalled", 0.0),
        }
    }

    /// Whether stream `n` is one of the `--stalled` share: every stream where the running
    /// count of stalled streams steps up, so they are spread evenly.
    fn is_stalled(&self, n: usize) -> bool {
        self.stalled > 0.0
            && ((n + 1) as f64 * self.stalled).floor() > (n as f64 * self.stalled).floor()
    }

    fn token(&self, n: usize) -> Option<&str> {
        let user = self.child_index + n.saturating_sub(self.stream_base) * self.children;
        (!self.tokens.is_empty()).then(|| self.tokens[user % self.tokens.len()].as_str())
    }

    fn http_request(&self, n: usize, close: bool) -> Vec<u8> {
        let mut r = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nUser-Agent: sg-loadgen\r\n",
            self.path, self.host
        );
        if let Some(o) = &self.origin {
            r.push_str(&format!("Origin: {o}\r\n"));
        }
        if let Some(t) = self.token(n) {
            r.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if close {
            r.push_str("Connection: close\r\n");
        }
        r.push_str("\r\n");
        r.into_bytes()
    }
}

/// `--jwt-alg HS256 --jwt-key SECRET` or `--jwt-alg RS256 --jwt-key private.pem`: one token
/// per user (`--users`), valid for two hours.
fn mint_tokens(args: &Args) -> Vec<String> {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let Some(alg) = args.str("jwt-alg") else {
        return Vec::new();
    };
    let key_arg = args.str_or("jwt-key", "");
    let (alg, key) = match alg {
        "HS256" => (
            Algorithm::HS256,
            EncodingKey::from_secret(key_arg.as_bytes()),
        ),
        "RS256" => {
            let pem = std::fs::read(key_arg).unwrap_or_else(|e| {
                eprintln!("cannot read --jwt-key {key_arg}: {e}");
                std::process::exit(2)
            });
            let key = EncodingKey::from_rsa_pem(&pem).unwrap_or_else(|e| {
                eprintln!("--jwt-key is not an RSA private key PEM: {e}");
                std::process::exit(2)
            });
            (Algorithm::RS256, key)
        }
        other => {
            eprintln!("--jwt-alg must be HS256 or RS256, got {other}");
            std::process::exit(2)
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let users: usize = args.get("users", 1000);
    (0..users.max(1))
        .map(|u| {
            let claims = json!({"sub": format!("bench-user-{u}"), "iat": now, "exp": now + 7200});
            encode(&Header::new(alg), &claims, &key).expect("mint token")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Counters shared by the stream tasks of one process

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

struct Window {
    events: u64,
    gaps: u64,
    heartbeats: u64,
    sent: u64,
    hist: Histogram<u64>,
}

impl Window {
    fn new() -> Window {
        Window {
            events: 0,
            gaps: 0,
            heartbeats: 0,
            sent: 0,
            hist: new_hist(),
        }
    }
}

#[derive(Default)]
struct Causes(BTreeMap<String, u64>);

impl Causes {
    fn add(&mut self, cause: impl Into<String>) {
        *self.0.entry(cause.into()).or_default() += 1;
    }
    fn json(&self) -> Value {
        json!(self.0)
    }
}

struct Shared {
    open: Cell<u64>,
    /// Of `open`, the streams that read nothing (`--stalled`).
    stalled: Cell<u64>,
    pending: Cell<u64>,
    opened_total: Cell<u64>,
    failed: RefCell<Causes>,
    dropped: RefCell<Causes>,
    measuring: Cell<bool>,
    window: RefCell<Window>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            open: Cell::new(0),
            stalled: Cell::new(0),
            pending: Cell::new(0),
            opened_total: Cell::new(0),
            failed: RefCell::new(Causes::default()),
            dropped: RefCell::new(Causes::default()),
            measuring: Cell::new(false),
            window: RefCell::new(Window::new()),
        }
    }

    fn record_latency(&self, w: &mut Window, now: u64, stamp: u64) {
        let us = now.saturating_sub(stamp) / 1000;
        let _ = w.hist.record(us.max(1));
    }
}

fn add(c: &Cell<u64>, by: i64) {
    c.set((c.get() as i64 + by).max(0) as u64);
}

// ---------------------------------------------------------------------------------------------
// Child: holds streams, answers the parent's commands on stdin/stdout

struct ChildCtx {
    target: Target,
    kind: String,
    /// This child's offset in the global stream numbering (users and source addresses).
    base: usize,
    shared: Shared,
    echo_rate: watch::Sender<f64>,
}

async fn child(args: &Args) -> i32 {
    let deadline = args.get("deadline", 600.0);
    let ctx = Rc::new(ChildCtx {
        target: Target::from_args(args),
        kind: args.str_or("kind", "sse").to_owned(),
        base: args.get("base", 0),
        shared: Shared::new(),
        echo_rate: watch::channel(0.0).0,
    });
    tokio::select! {
        code = child_loop(ctx) => code,
        _ = sleep(Duration::from_secs_f64(deadline)) => { eprintln!("child: deadline"); 3 }
    }
}

async fn child_loop(ctx: Rc<ChildCtx>) -> i32 {
    let mut stdout = tokio::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut streams: Vec<oneshot::Sender<()>> = Vec::new();
    let mut next_index = 0usize;
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["OPEN", n, rate] => {
                let n: usize = n.parse().unwrap_or(0);
                let rate: f64 = rate.parse().unwrap_or(1000.0);
                open_streams(&ctx, &mut streams, &mut next_index, n, rate).await;
                status_line(&ctx)
            }
            ["CHURN", fraction, rate] => {
                let f: f64 = fraction.parse().unwrap_or(0.0);
                let rate: f64 = rate.parse().unwrap_or(1000.0);
                streams.retain(|s| !s.is_closed());
                let target = streams.len();
                let k = (target as f64 * f).round() as usize;
                // Close every (1/f)-th stream, spread over users and source addresses.
                let step = (target / k.max(1)).max(1);
                let mut closed = 0;
                let mut kept = Vec::with_capacity(target);
                for (i, s) in streams.drain(..).enumerate() {
                    if closed < k && i % step == 0 {
                        let _ = s.send(());
                        closed += 1;
                    } else {
                        kept.push(s);
                    }
                }
                streams = kept;
                // Wait until the closed tasks have ended (their counters settle).
                let want = ctx.shared.open.get().saturating_sub(closed as u64);
                let until = tokio::time::Instant::now() + Duration::from_secs(10);
                while ctx.shared.open.get() > want && tokio::time::Instant::now() < until {
                    sleep(Duration::from_millis(20)).await;
                }
                open_streams(&ctx, &mut streams, &mut next_index, target, rate).await;
                status_line(&ctx)
            }
            ["ECHO", rate] => {
                // send_replace: the value must stick even before any socket subscribed.
                ctx.echo_rate.send_replace(rate.parse().unwrap_or(0.0));
                "OK".to_owned()
            }
            ["RESET"] => {
                *ctx.shared.window.borrow_mut() = Window::new();
                ctx.shared.measuring.set(true);
                "OK".to_owned()
            }
            ["REPORT"] => {
                ctx.shared.measuring.set(false);
                let w = ctx.shared.window.borrow();
                let hist: Vec<[u64; 2]> = w
                    .hist
                    .iter_recorded()
                    .map(|v| [v.value_iterated_to(), v.count_at_value()])
                    .collect();
                let report = json!({
                    "events": w.events, "gaps": w.gaps, "heartbeats": w.heartbeats,
                    "sent": w.sent, "hist": hist,
                    "open": ctx.shared.open.get(), "stalled": ctx.shared.stalled.get(),
                });
                format!("REPORT {report}")
            }
            ["CLOSE"] => {
                for s in streams.drain(..) {
                    let _ = s.send(());
                }
                let until = tokio::time::Instant::now() + Duration::from_secs(5);
                while ctx.shared.open.get() > 0 && tokio::time::Instant::now() < until {
                    sleep(Duration::from_millis(20)).await;
                }
                let _ = stdout.write_all(b"OK\n").await;
                let _ = stdout.flush().await;
                return 0;
            }
            _ => format!("ERR unknown command {line:?}"),
        };
        if stdout
            .write_all(format!("{reply}\n").as_bytes())
            .await
            .is_err()
        {
            return 1;
        }
        let _ = stdout.flush().await;
    }
    0
}

fn status_line(ctx: &ChildCtx) -> String {
    let s = &ctx.shared;
    let status = json!({
        "open": s.open.get(),
        "opened_total": s.opened_total.get(),
        "failed": s.failed.borrow().json(),
        "dropped": s.dropped.borrow().json(),
    });
    format!("DONE {status}")
}

/// Starts streams at `rate` per second until `want` are held (open or connecting), then waits
/// until every attempt has either opened or failed.
async fn open_streams(
    ctx: &Rc<ChildCtx>,
    streams: &mut Vec<oneshot::Sender<()>>,
    next_index: &mut usize,
    want: usize,
    rate: f64,
) {
    streams.retain(|s| !s.is_closed());
    let missing = want.saturating_sub(streams.len());
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..missing {
        tick.tick().await;
        let (tx, rx) = oneshot::channel();
        streams.push(tx);
        let n = ctx.base + *next_index;
        *next_index += 1;
        add(&ctx.shared.pending, 1);
        let c = ctx.clone();
        if ctx.kind == "ws" {
            tokio::task::spawn_local(ws_task(c, n, rx));
        } else {
            tokio::task::spawn_local(sse_task(c, n, rx));
        }
    }
    let until = tokio::time::Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(2);
    while ctx.shared.pending.get() > 0 && tokio::time::Instant::now() < until {
        sleep(Duration::from_millis(20)).await;
    }
}

async fn sse_connect(t: &Target, n: usize) -> Result<(TcpStream, Head, Vec<u8>), String> {
    let src = source_addr(n, t.src_ips);
    let connected = if t.is_stalled(n) {
        connect_slow_link(src, t.addr).await
    } else {
        connect_from(src, t.addr).await
    };
    let mut s = connected.map_err(|e| format!("connect_{}", io_cause(&e)))?;
    s.write_all(&t.http_request(n, false))
        .await
        .map_err(|e| format!("write_{}", io_cause(&e)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let k = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("head_{}", io_cause(&e)))?;
        if k == 0 {
            return Err("head_eof".into());
        }
        buf.extend_from_slice(&chunk[..k]);
        if let Some(head) = parse_head(&buf)? {
            if head.status != 200 {
                return Err(format!("http_{}", head.status));
            }
            let rest = buf[head.len..].to_vec();
            return Ok((s, head, rest));
        }
    }
}

async fn sse_task(ctx: Rc<ChildCtx>, n: usize, mut stop: oneshot::Receiver<()>) {
    let sh = &ctx.shared;
    let connected = tokio::select! {
        r = timeout(CONNECT_TIMEOUT, sse_connect(&ctx.target, n)) => r.unwrap_or_else(|_| Err("timeout".into())),
        _ = &mut stop => { add(&sh.pending, -1); return; }
    };
    add(&sh.pending, -1);
    let (mut stream, head, rest) = match connected {
        Ok(c) => c,
        Err(cause) => {
            sh.failed.borrow_mut().add(cause);
            return;
        }
    };
    add(&sh.open, 1);
    add(&sh.opened_total, 1);
    if ctx.target.is_stalled(n) {
        // A client that stopped reading: it holds the connection and reads nothing more.
        add(&sh.stalled, 1);
        let _ = stop.await;
        add(&sh.stalled, -1);
        add(&sh.open, -1);
        drop(stream);
        return;
    }
    let mut decoder = BodyDecoder::new(&head);
    let mut lines = LineScanner::default();
    let mut body = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 4096];
    let mut last_seq: Option<u64> = None;
    let mut pending_input = rest;
    let ended: Option<String> = loop {
        let input: &[u8] = if !pending_input.is_empty() {
            &pending_input
        } else {
            tokio::select! {
                _ = &mut stop => break None,
                r = stream.read(&mut buf) => match r {
                    Ok(0) => break Some("closed_by_peer".into()),
                    Ok(k) => &buf[..k],
                    Err(e) => break Some(io_cause(&e)),
                },
            }
        };
        let now = mono_ns();
        body.clear();
        let done = match decoder.feed(input, &mut body) {
            Ok(done) => done,
            Err(e) => break Some(e),
        };
        if sh.measuring.get() {
            let mut w = sh.window.borrow_mut();
            lines.feed(&body, |line| match classify(line) {
                SseLine::Event { seq, ns } => {
                    sh.record_latency(&mut w, now, ns);
                    w.events += 1;
                    if let Some(last) = last_seq {
                        if seq > last + 1 {
                            w.gaps += seq - last - 1;
                        }
                    }
                    last_seq = Some(seq);
                }
                SseLine::Comment => w.heartbeats += 1,
                SseLine::Other => {}
            });
        } else {
            lines.feed(&body, |line| {
                if let SseLine::Event { seq, .. } = classify(line) {
                    last_seq = Some(seq);
                }
            });
        }
        pending_input.clear();
        if done {
            break Some("body_ended".into());
        }
    };
    add(&sh.open, -1);
    if let Some(cause) = ended {
        sh.dropped.borrow_mut().add(cause);
    }
}

async fn ws_task(ctx: Rc<ChildCtx>, n: usize, mut stop: oneshot::Receiver<()>) {
    let sh = &ctx.shared;
    let t = &ctx.target;
    let connect = async {
        let s = connect_from(source_addr(n, t.src_ips), t.addr)
            .await
            .map_err(|e| format!("connect_{}", io_cause(&e)))?;
        let mut req = format!("ws://{}{}", t.host, t.path)
            .into_client_request()
            .map_err(|e| format!("request_{e}"))?;
        let h = req.headers_mut();
        if let Some(o) = &t.origin {
            h.insert("origin", o.parse().map_err(|_| "bad_origin".to_string())?);
        }
        if let Some(tok) = t.token(n) {
            h.insert(
                "authorization",
                format!("Bearer {tok}")
                    .parse()
                    .map_err(|_| "bad_token".to_string())?,
            );
        }
        match tokio_tungstenite::client_async(req, s).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                Err(format!("http_{}", resp.status().as_u16()))
            }
            Err(e) => Err(format!("handshake_{}", short_err(&e.to_string()))),
        }
    };
    let connected = tokio::select! {
        r = timeout(CONNECT_TIMEOUT, connect) => r.unwrap_or_else(|_| Err("timeout".into())),
        _ = &mut stop => { add(&sh.pending, -1); return; }
    };
    add(&sh.pending, -1);
    let ws = match connected {
        Ok(ws) => ws,
        Err(cause) => {
            sh.failed.borrow_mut().add(cause);
            return;
        }
    };
    add(&sh.open, 1);
    add(&sh.opened_total, 1);
    let (mut tx, mut rx) = ws.split();
    let mut rate_rx = ctx.echo_rate.subscribe();
    let mut period: Option<Duration> = None;
    // Spread the sockets' send times over the period (golden-ratio phase per socket).
    let phase = (n as f64 * 0.618_033_988_75).fract();
    let mut next = tokio::time::Instant::now();
    let mut seq = 0u64;
    let ended: Option<String> = loop {
        let rate = *rate_rx.borrow_and_update();
        if rate > 0.0 && period.is_none() {
            let p = Duration::from_secs_f64(1.0 / rate);
            period = Some(p);
            next = tokio::time::Instant::now() + p.mul_f64(phase);
        } else if rate <= 0.0 {
            period = None;
        }
        tokio::select! {
            _ = &mut stop => {
                let _ = tx.send(Message::Close(None)).await;
                break None;
            }
            changed = rate_rx.changed() => {
                if changed.is_err() { break None; }
                period = None;
            }
            _ = tokio::time::sleep_until(next), if period.is_some() => {
                seq += 1;
                let text = format!("{seq} {}", mono_ns());
                if let Err(e) = tx.send(Message::text(text)).await {
                    break Some(format!("send_{}", short_err(&e.to_string())));
                }
                if sh.measuring.get() {
                    sh.window.borrow_mut().sent += 1;
                }
                next += period.unwrap_or(Duration::from_secs(1));
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let now = mono_ns();
                    if sh.measuring.get() {
                        let stamp = text.split(' ').nth(1).and_then(|v| v.parse::<u64>().ok());
                        let mut w = sh.window.borrow_mut();
                        if let Some(stamp) = stamp {
                            sh.record_latency(&mut w, now, stamp);
                            w.events += 1;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None => break Some("closed_by_peer".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("recv_{}", short_err(&e.to_string()))),
            },
        }
    };
    add(&sh.open, -1);
    if let Some(cause) = ended {
        sh.dropped.borrow_mut().add(cause);
    }
}

fn short_err(s: &str) -> String {
    s.chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Parent: runs the children and the measurement plan

struct Kid {
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    proc: tokio::process::Child,
}

struct Kids(Vec<Kid>);

impl Kids {
    async fn spawn(args: &Args, kind: &str, count: usize, per: usize, deadline: f64) -> Kids {
        let exe = std::env::current_exe().expect("current exe");
        let mut kids = Vec::new();
        for i in 0..count {
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.arg("child").arg("--kind").arg(kind);
            cmd.arg("--base").arg((i * per * 4).to_string());
            cmd.arg("--child-index").arg(i.to_string());
            cmd.arg("--children").arg(count.to_string());
            cmd.arg("--deadline").arg((deadline + 10.0).to_string());
            for key in [
                "url", "origin", "jwt-alg", "jwt-key", "users", "src-ips", "stalled",
            ] {
                if let Some(v) = args.str(key) {
                    cmd.arg(format!("--{key}={v}"));
                }
            }
            cmd.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true);
            let mut proc = cmd.spawn().expect("spawn child");
            let stdin = proc.stdin.take().expect("child stdin");
            let lines = BufReader::new(proc.stdout.take().expect("child stdout")).lines();
            kids.push(Kid { stdin, lines, proc });
        }
        Kids(kids)
    }

    /// Sends one command line to every child, then collects one reply line from each.
    async fn all(&mut self, cmds: &[String]) -> Vec<String> {
        for (kid, cmd) in self.0.iter_mut().zip(cmds) {
            let _ = kid.stdin.write_all(format!("{cmd}\n").as_bytes()).await;
            let _ = kid.stdin.flush().await;
        }
        let mut replies = Vec::new();
        for kid in self.0.iter_mut() {
            replies.push(
                kid.lines
                    .next_line()
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            );
        }
        replies
    }

    async fn same(&mut self, cmd: &str) -> Vec<String> {
        let cmds = vec![cmd.to_owned(); self.0.len()];
        self.all(&cmds).await
    }

    async fn close(mut self) {
        let _ = timeout(Duration::from_secs(10), self.same("CLOSE")).await;
        for kid in self.0.iter_mut() {
            if timeout(Duration::from_secs(2), kid.proc.wait())
                .await
                .is_err()
            {
                let _ = kid.proc.start_kill();
            }
        }
    }
}

/// Totals of the children's `DONE {...}` replies.
fn merge_status(replies: &[String]) -> Value {
    let mut open = 0u64;
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    for r in replies {
        let Some(v) = r
            .strip_prefix("DONE ")
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
        else {
            *failed.entry("child_no_reply".into()).or_default() += 1;
            continue;
        };
        open += v["open"].as_u64().unwrap_or(0);
        for (key, map) in [("failed", &mut failed), ("dropped", &mut dropped)] {
            if let Some(m) = v[key].as_object() {
                for (k, n) in m {
                    *map.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
                }
            }
        }
    }
    json!({"open": open, "failed": failed, "dropped": dropped})
}

fn sum_causes(v: &Value) -> u64 {
    v.as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// Totals of the children's `REPORT {...}` replies, with the merged histogram.
struct WindowTotals {
    events: u64,
    gaps: u64,
    heartbeats: u64,
    sent: u64,
    open: u64,
    stalled: u64,
    hist: Histogram<u64>,
}

fn merge_reports(replies: &[String]) -> WindowTotals {
    let mut t = WindowTotals {
        events: 0,
        gaps: 0,
        heartbeats: 0,
        sent: 0,
        open: 0,
        stalled: 0,
        hist: new_hist(),
    };
    for r in replies {
        let Some(v) = r
            .strip_prefix("REPORT ")
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
        else {
            continue;
        };
        t.events += v["events"].as_u64().unwrap_or(0);
        t.gaps += v["gaps"].as_u64().unwrap_or(0);
        t.heartbeats += v["heartbeats"].as_u64().unwrap_or(0);
        t.sent += v["sent"].as_u64().unwrap_or(0);
        t.open += v["open"].as_u64().unwrap_or(0);
        t.stalled += v["stalled"].as_u64().unwrap_or(0);
        if let Some(pairs) = v["hist"].as_array() {
            for p in pairs {
                if let (Some(val), Some(n)) = (p[0].as_u64(), p[1].as_u64()) {
                    let _ = t.hist.record_n(val.max(1), n);
                }
            }
        }
    }
    t
}

fn lat_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(), "min_us": h.min(), "p50_us": h.value_at_quantile(0.5),
        "p90_us": h.value_at_quantile(0.9), "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999), "max_us": h.max(), "mean_us": h.mean(),
    })
}

/// Output of one run, written to `--out` even when the deadline cut it short.
struct Output {
    metrics: Map<String, Value>,
    steps: Vec<Value>,
    notes: Vec<String>,
}

impl Output {
    fn metric(&mut self, name: String, value: f64) {
        if value.is_finite() {
            let rounded = (value * 1000.0).round() / 1000.0;
            self.metrics.insert(name, json!(rounded));
        }
    }
}

fn write_output(args: &Args, mode: &str, out: &Output, incomplete: bool) {
    let doc = json!({
        "target": args.str_or("label", "unlabeled"),
        "round": args.get("round", 0u64),
        "mode": mode,
        "url": args.str("url"),
        "incomplete": incomplete,
        "metrics": out.metrics,
        "steps": out.steps,
        "notes": out.notes,
    });
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    match args.str("out") {
        Some(path) => {
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("cannot write {path}: {e}");
            }
        }
        None => println!("{text}"),
    }
}

/// `--watch-pid PID[,PID...]`: the proxy processes whose CPU, RSS and open files are summed
/// (several processes sharing one port); 0 stands for none (no proxy in front).
fn watch_pids(args: &Args) -> Vec<u32> {
    args.list::<u32>("watch-pid")
        .into_iter()
        .filter(|&p| p != 0)
        .collect()
}

/// Sets the bench upstream's broadcast rate (and event size) through its control endpoint.
async fn set_rate(control: &str, rate: f64, size: usize) -> Result<(), String> {
    control_get(control, &format!("/rate?r={rate}&size={size}"))
        .await
        .map(drop)
        .map_err(|e| format!("upstream refused rate {rate} size {size}: {e}"))
}

/// The longest the bench upstream's writes waited since the last reset, in microseconds
/// (`/stall`); `reset` starts a new window.
async fn upstream_stall(control: &str, reset: bool) -> Option<u64> {
    let body = control_get(control, if reset { "/stall?reset=1" } else { "/stall" })
        .await
        .ok()?;
    serde_json::from_str::<Value>(&body).ok()?["longest_write_us"].as_u64()
}

async fn parent(mode: &str, args: &Args) -> i32 {
    let deadline = args.get("deadline", 300.0);
    let out = Rc::new(RefCell::new(Output {
        metrics: Map::new(),
        steps: Vec::new(),
        notes: Vec::new(),
    }));
    let finished = tokio::select! {
        code = plan(mode, args, out.clone()) => Some(code),
        _ = sleep(Duration::from_secs_f64(deadline)) => None,
    };
    let incomplete = finished.is_none();
    if incomplete {
        out.borrow_mut().notes.push(format!(
            "deadline of {deadline}s reached; results are partial"
        ));
        eprintln!("sg-loadgen: deadline reached");
    }
    write_output(args, mode, &out.borrow(), incomplete);
    finished.unwrap_or(3)
}

/// One measured window: RESET, CPU sample, wait, CPU sample, REPORT.
async fn window(kids: &mut Kids, pid: &[u32], secs: f64) -> (WindowTotals, Option<f64>, f64) {
    kids.same("RESET").await;
    let s0 = procstat::sample(pid);
    let t0 = std::time::Instant::now();
    sleep(Duration::from_secs_f64(secs)).await;
    let s1 = procstat::sample(pid);
    let wall = t0.elapsed().as_secs_f64();
    let totals = merge_reports(&kids.same("REPORT").await);
    let cpu = s0.zip(s1).map(|(a, b)| b.cpu_secs_since(&a));
    (totals, cpu, wall)
}

async fn plan(mode: &str, args: &Args, out: Rc<RefCell<Output>>) -> i32 {
    let pid = watch_pids(args);
    let steps: Vec<usize> = args.list("steps");
    let max_n = steps.iter().copied().max().unwrap_or(0);
    let per: usize = args.get("per-process", 5000);
    let count = max_n.div_ceil(per).max(1);
    let connect_rate: f64 = args.get("connect-rate", 2000.0);
    let settle: f64 = args.get("settle", 1.0);
    let name = args
        .str_or("name", if mode == "ws" { "s4" } else { "s1" })
        .to_owned();
    let control = args.str("control").map(str::to_owned);
    let deadline = args.get("deadline", 300.0);
    let event_size: usize = args.get("event-size", 0);
    let track_stall = args.flag("upstream-stall");
    let unit = if mode == "ws" { "socket" } else { "stream" };
    let memory_metrics = args.str("memory-metrics") != Some("false");

    let mut kids = Kids::spawn(args, mode, count, per, deadline).await;
    if let Some(c) = &control {
        if let Err(e) = set_rate(c, 0.0, event_size).await {
            eprintln!("sg-loadgen: {e}");
            out.borrow_mut().notes.push(e);
        }
    }
    sleep(Duration::from_millis(300)).await;
    let base = procstat::sample(&pid);
    let mut held = 0usize;

    // Steps: open up to N, settle, sample memory and files.
    let snapshot = |label: String, status: &Value, held: usize, out: &mut Output| {
        let open = status["open"].as_u64().unwrap_or(0);
        let now = procstat::sample(&pid);
        let mut step = json!({"step": label, "wanted": held, "status": status});
        if let (Some(b), Some(s), true) = (base, now, memory_metrics) {
            step["rss_kb"] = json!(s.rss_kb);
            step["base_rss_kb"] = json!(b.rss_kb);
            step["fds"] = json!(s.fds);
            step["base_fds"] = json!(b.fds);
            if open > 0 {
                let per_rss = s.rss_kb.saturating_sub(b.rss_kb) as f64 / open as f64;
                let per_fd = s.fds.saturating_sub(b.fds) as f64 / open as f64;
                out.metric(format!("{name}.rss_kb_per_{unit}@{label}"), per_rss);
                out.metric(format!("{name}.fds_per_{unit}@{label}"), per_fd);
            }
        }
        out.metric(format!("{name}.open@{label}"), open as f64);
        let failed = sum_causes(&status["failed"]) + sum_causes(&status["dropped"]);
        out.metric(format!("{name}.failed@{label}"), failed as f64);
        if failed > 0 {
            out.notes.push(format!(
                "{name}@{label}: failed to open {}, ended early {}",
                status["failed"], status["dropped"]
            ));
        }
        eprintln!("sg-loadgen: {label}: {step}");
        out.steps.push(step);
    };

    for &n in &steps {
        held = n;
        let cmds: Vec<String> = (0..count)
            .map(|i| {
                let share = n / count + usize::from(i < n % count);
                format!("OPEN {share} {}", connect_rate / count as f64)
            })
            .collect();
        let status = merge_status(&kids.all(&cmds).await);
        sleep(Duration::from_secs_f64(settle)).await;
        snapshot(n.to_string(), &status, held, &mut out.borrow_mut());
    }
    let churn: f64 = args.get("churn", 0.0);
    if churn > 0.0 && held > 0 {
        let status = merge_status(
            &kids
                .same(&format!("CHURN {churn} {}", connect_rate / count as f64))
                .await,
        );
        sleep(Duration::from_secs_f64(settle)).await;
        snapshot(
            format!("{held}+churn{}", (churn * 100.0).round()),
            &status,
            held,
            &mut out.borrow_mut(),
        );
    }

    // Idle window: the proxy's own work on quiet streams (heartbeats).
    let idle: f64 = args.get("idle-window", 0.0);
    if idle > 0.0 && held > 0 {
        let idle_name = args.str_or("idle-name", "s6").to_owned();
        let (w, cpu, wall) = window(&mut kids, &pid, idle).await;
        let mut o = out.borrow_mut();
        if let Some(cpu) = cpu {
            o.metric(
                format!("{idle_name}.cpu_pct_core@{held}"),
                cpu / wall * 100.0,
            );
            if w.heartbeats > 0 {
                o.metric(
                    format!("{idle_name}.cpu_us_per_heartbeat@{held}"),
                    cpu * 1e6 / w.heartbeats as f64,
                );
            }
        }
        let per_stream_15s = w.heartbeats as f64 / w.open.max(1) as f64 / (wall / 15.0);
        o.metric(
            format!("{idle_name}.heartbeats_per_stream_per_15s@{held}"),
            per_stream_15s,
        );
        o.steps.push(json!({"step": "idle", "seconds": wall, "cpu_s": cpu, "heartbeats": w.heartbeats, "open": w.open}));
    }

    // Rate windows and the ladder.
    let rates: Vec<String> = args.list("rates");
    let ladder: Vec<f64> = args.list("ladder");
    let warm: f64 = args.get("warm", 0.5);
    let ladder_window: f64 = args.get("ladder-window", 2.0);
    let p99_limit_us = args.get("p99-limit-ms", 50.0) * 1000.0;
    let rates_name = args.str_or("rates-name", "s3").to_owned();
    let ladder_name = args.str_or("ladder-name", "s2").to_owned();
    let mut plan_steps: Vec<(f64, f64, bool)> = Vec::new();
    for r in &rates {
        let (rate, secs) = r.split_once(':').unwrap_or((r.as_str(), "3"));
        plan_steps.push((
            rate.parse().unwrap_or(1.0),
            secs.parse().unwrap_or(3.0),
            false,
        ));
    }
    plan_steps.extend(ladder.iter().map(|&r| (r, ladder_window, true)));
    let mut max_eps: Option<f64> = None;
    let mut ladder_failed = false;
    for (rate, secs, is_ladder) in plan_steps {
        if held == 0 {
            break;
        }
        if mode == "ws" {
            kids.same(&format!("ECHO {rate}")).await;
        } else if let Some(c) = &control {
            if let Err(e) = set_rate(c, rate, event_size).await {
                out.borrow_mut().notes.push(e);
                break;
            }
        }
        sleep(Duration::from_secs_f64(warm)).await;
        let stall_control = control.as_deref().filter(|_| track_stall);
        if let Some(c) = stall_control {
            upstream_stall(c, true).await;
        }
        let (w, cpu, wall) = window(&mut kids, &pid, secs).await;
        let stall_us = match stall_control {
            Some(c) => upstream_stall(c, false).await,
            None => None,
        };
        let key = format!("{held}x{rate}");
        // Stalled streams read nothing: what is offered is what the reading ones should get.
        let reading = w.open.saturating_sub(w.stalled);
        let offered = if mode == "ws" {
            w.sent as f64
        } else {
            reading as f64 * rate * wall
        };
        let p99 = if w.hist.is_empty() {
            f64::INFINITY
        } else {
            w.hist.value_at_quantile(0.99) as f64
        };
        let delivered_eps = w.events as f64 / wall;
        // Ticks are discrete: a window may hold one tick fewer per stream than rate x seconds.
        let slack = if mode == "ws" { 0.0 } else { reading as f64 };
        let pass = w.gaps == 0
            && (w.events as f64) + slack >= 0.97 * offered
            && p99 < p99_limit_us
            && w.events > 0;
        // CPU per event over a handful of events is the proxy's idle cost, not a per-event cost.
        let raw_cpu = cpu;
        let cpu = cpu.filter(|_| w.events >= MIN_EVENTS_FOR_CPU);
        let mut o = out.borrow_mut();
        let metric_name = if is_ladder { &ladder_name } else { &rates_name };
        if let Some(us) = stall_us {
            o.metric(format!("{metric_name}.upstream_stall_us@{key}"), us as f64);
        }
        if mode == "ws" {
            if !w.hist.is_empty() {
                o.metric(
                    format!("{metric_name}.rtt_p50_us@{key}"),
                    w.hist.value_at_quantile(0.5) as f64,
                );
                o.metric(format!("{metric_name}.rtt_p99_us@{key}"), p99);
            }
            if let Some(cpu) = cpu {
                if w.events > 0 {
                    o.metric(
                        format!("{metric_name}.cpu_us_per_msg@{key}"),
                        cpu * 1e6 / w.events as f64,
                    );
                }
            }
        } else if !is_ladder {
            if !w.hist.is_empty() {
                o.metric(
                    format!("{metric_name}.p50_us@{key}"),
                    w.hist.value_at_quantile(0.5) as f64,
                );
                o.metric(format!("{metric_name}.p99_us@{key}"), p99);
                o.metric(
                    format!("{metric_name}.p999_us@{key}"),
                    w.hist.value_at_quantile(0.999) as f64,
                );
            }
            if let Some(cpu) = cpu {
                if w.events > 0 {
                    o.metric(
                        format!("{metric_name}.cpu_us_per_event@{key}"),
                        cpu * 1e6 / w.events as f64,
                    );
                }
            }
            o.metric(format!("{metric_name}.gaps@{key}"), w.gaps as f64);
        } else {
            if let Some(cpu) = cpu {
                if w.events > 0 {
                    o.metric(
                        format!("{metric_name}.cpu_us_per_event@{key}"),
                        cpu * 1e6 / w.events as f64,
                    );
                }
            }
            if p99.is_finite() {
                o.metric(format!("{metric_name}.p99_us@{key}"), p99);
            }
        }
        o.steps.push(json!({
            "step": if is_ladder { "ladder" } else { "rate" }, "rate": rate, "held": held,
            "seconds": wall, "open": w.open, "stalled": w.stalled, "events": w.events, "gaps": w.gaps, "sent": w.sent,
            "offered": offered, "delivered_eps": delivered_eps, "cpu_s": raw_cpu,
            "upstream_stall_us": stall_us,
            "proxy_core_pct": raw_cpu.map(|c| c / wall * 100.0), "pass": pass, "latency": lat_json(&w.hist),
        }));
        eprintln!("sg-loadgen: rate {rate} x {held}: events {} gaps {} p99 {p99}us cpu {raw_cpu:?} pass {pass}", w.events, w.gaps);
        if is_ladder {
            if pass {
                max_eps = Some(max_eps.unwrap_or(0.0).max(delivered_eps));
            } else {
                ladder_failed = true;
                break;
            }
        }
    }
    if !ladder.is_empty() && held > 0 {
        let mut o = out.borrow_mut();
        o.metric(
            format!("{ladder_name}.max_eps@{held}"),
            max_eps.unwrap_or(0.0),
        );
        if !ladder_failed {
            o.notes.push(format!(
                "{ladder_name}: every ladder step passed; max_eps@{held} is a lower bound"
            ));
        }
    }
    if mode == "ws" {
        kids.same("ECHO 0").await;
    } else if let Some(c) = &control {
        let _ = set_rate(c, 0.0, event_size).await;
    }
    kids.close().await;
    0
}

// ---------------------------------------------------------------------------------------------
// setup: new connections per second to a one-event stream

async fn setup(args: &Args) -> i32 {
    let deadline = args.get("deadline", 120.0);
    let out = Rc::new(RefCell::new(Output {
        metrics: Map::new(),
        steps: Vec::new(),
        notes: Vec::new(),
    }));
    let finished = tokio::select! {
        code = setup_plan(args, out.clone()) => Some(code),
        _ = sleep(Duration::from_secs_f64(deadline)) => None,
    };
    write_output(args, "setup", &out.borrow(), finished.is_none());
    finished.unwrap_or(3)
}

struct SetupShared {
    measuring: Cell<bool>,
    stop: Cell<bool>,
    ok: Cell<u64>,
    failed: RefCell<Causes>,
    hist: RefCell<Histogram<u64>>,
}

async fn one_setup(t: &Target, n: usize) -> Result<(), String> {
    let mut s = connect_from(source_addr(n, t.src_ips), t.addr)
        .await
        .map_err(|e| format!("connect_{}", io_cause(&e)))?;
    s.write_all(&t.http_request(n, true))
        .await
        .map_err(|e| format!("write_{}", io_cause(&e)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut decoder: Option<BodyDecoder> = None;
    let mut body = Vec::new();
    let mut got_event = false;
    let mut lines = LineScanner::default();
    loop {
        let k = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read_{}", io_cause(&e)))?;
        let input: Vec<u8> = if decoder.is_none() {
            if k == 0 {
                return Err("head_eof".into());
            }
            buf.extend_from_slice(&chunk[..k]);
            let Some(head) = parse_head(&buf)? else {
                continue;
            };
            if head.status != 200 {
                return Err(format!("http_{}", head.status));
            }
            let rest = buf[head.len..].to_vec();
            decoder = Some(BodyDecoder::new(&head));
            rest
        } else {
            if k == 0 {
                break;
            }
            chunk[..k].to_vec()
        };
        let d = decoder.as_mut().expect("decoder set above");
        body.clear();
        let done = d.feed(&input, &mut body)?;
        lines.feed(&body, |l| {
            if matches!(classify(l), SseLine::Event { .. }) {
                got_event = true;
            }
        });
        if done {
            break;
        }
    }
    if got_event {
        Ok(())
    } else {
        Err("no_event".into())
    }
}

async fn setup_worker(t: Rc<Target>, sh: Rc<SetupShared>, worker: usize, workers: usize) {
    let mut n = worker;
    while !sh.stop.get() {
        let t0 = mono_ns();
        let r = timeout(Duration::from_secs(5), one_setup(&t, n))
            .await
            .unwrap_or_else(|_| Err("timeout".into()));
        if sh.measuring.get() {
            match r {
                Ok(()) => {
                    add(&sh.ok, 1);
                    let _ = sh
                        .hist
                        .borrow_mut()
                        .record(((mono_ns() - t0) / 1000).max(1));
                }
                Err(cause) => sh.failed.borrow_mut().add(cause),
            }
        } else if r.is_err() {
            // Failing fast while warming up (e.g. the proxy is not ready): do not spin.
            sleep(Duration::from_millis(5)).await;
        }
        n += workers;
    }
}

async fn setup_plan(args: &Args, out: Rc<RefCell<Output>>) -> i32 {
    let pid = watch_pids(args);
    let workers: usize = args.get("concurrency", 64);
    let warm: f64 = args.get("warm", 1.0);
    let secs: f64 = args.get("window", 5.0);
    let name = args.str_or("name", "s5").to_owned();
    let t = Rc::new(Target::from_args(args));
    let sh = Rc::new(SetupShared {
        measuring: Cell::new(false),
        stop: Cell::new(false),
        ok: Cell::new(0),
        failed: RefCell::new(Causes::default()),
        hist: RefCell::new(new_hist()),
    });
    let tasks: Vec<_> = (0..workers)
        .map(|w| tokio::task::spawn_local(setup_worker(t.clone(), sh.clone(), w, workers)))
        .collect();
    sleep(Duration::from_secs_f64(warm)).await;
    sh.measuring.set(true);
    let s0 = procstat::sample(&pid);
    let t0 = std::time::Instant::now();
    sleep(Duration::from_secs_f64(secs)).await;
    let s1 = procstat::sample(&pid);
    let wall = t0.elapsed().as_secs_f64();
    sh.measuring.set(false);
    sh.stop.set(true);
    for task in tasks {
        let _ = timeout(Duration::from_secs(6), task).await;
    }
    let ok = sh.ok.get();
    let cpu = s0.zip(s1).map(|(a, b)| b.cpu_secs_since(&a));
    let mut o = out.borrow_mut();
    o.metric(format!("{name}.setups_per_s"), ok as f64 / wall);
    let failed = sh.failed.borrow();
    o.metric(
        format!("{name}.failed"),
        failed.0.values().sum::<u64>() as f64,
    );
    if !failed.0.is_empty() {
        o.notes
            .push(format!("{name}: failed setups {}", failed.json()));
    }
    if let Some(cpu) = cpu {
        o.metric(format!("{name}.proxy_core_pct"), cpu / wall * 100.0);
        if ok > 0 && cpu > 0.0 {
            o.metric(format!("{name}.cpu_us_per_setup"), cpu * 1e6 / ok as f64);
            o.metric(format!("{name}.setups_per_core_s"), ok as f64 / cpu);
        }
    }
    let hist = sh.hist.borrow();
    if !hist.is_empty() {
        o.metric(
            format!("{name}.setup_p50_us"),
            hist.value_at_quantile(0.5) as f64,
        );
        o.metric(
            format!("{name}.setup_p99_us"),
            hist.value_at_quantile(0.99) as f64,
        );
    }
    o.steps.push(json!({
        "step": "setup", "seconds": wall, "ok": ok, "failed": failed.json(), "cpu_s": cpu,
        "concurrency": workers, "latency": lat_json(&hist),
    }));
    eprintln!(
        "sg-loadgen: setup {name}: {ok} ok in {wall:.1}s, failed {:?}, cpu {cpu:?}",
        failed.0
    );
    0
}
