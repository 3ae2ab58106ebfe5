//! `sg-h2load`: scenario S7, SSE streams over HTTP/2 against the same streams over HTTP/1.1.
//!
//! Opens `--n` SSE streams to `--addr`, over HTTP/1.1 (one connection each) or over HTTP/2 with
//! prior knowledge (h2c, `--per` streams on each connection), at `--connect-rate` streams a
//! second, then measures what the proxy (`--watch-pid`, read from /proc) costs:
//!
//! - idle memory: its RSS growth over the streams, per stream (`s7.rss_kb_per_stream@...`);
//! - with `--rate R`: the bench upstream (`--control`) sends R events/s on every stream; after
//!   `--warm` s, a `--window` s window counts the events the streams received and the proxy's
//!   CPU: `s7.cpu_us_per_event@...`, and `s7.eps@...` (events delivered per second).
//!
//! Metric keys end in `@<proto>-<n>x<per>` (`@h2-9500x100`, `@h1-1000x1`). h2c isolates
//! HTTP/2 from TLS, whose cost both protocols would pay. One process, one thread: at most 9,500
//! connections (the machine allows 20,000 open files per process).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Map};
use sg_bench::args::Args;
use sg_bench::http::control_get;
use sg_bench::net::{connect_from, source_addr};
use sg_bench::procstat;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::LocalSet;
use tokio::time::{sleep, Instant};

/// Source addresses the connections are spread over (127.0.0.2..), past the ports of one.
const SOURCES: usize = 32;

/// What every stream task reports.
#[derive(Default)]
struct Counts {
    open: Cell<u64>,
    failed: Cell<u64>,
    events: Cell<u64>,
}

fn main() {
    let args = Args::parse(std::env::args().skip(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = LocalSet::new().block_on(&runtime, run(args));
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    let addr: SocketAddr = match args.str_or("addr", "127.0.0.1:18080").parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("sg-h2load: bad --addr");
            return 2;
        }
    };
    let proto = args.str_or("proto", "h2").to_owned();
    let n: usize = args.get("n", 1000);
    let per: usize = if proto == "h1" {
        1
    } else {
        args.get("per", 100).max(1)
    };
    let pid: u32 = args.get("watch-pid", 0);
    let rate: f64 = args.get("rate", 0.0);
    let control = args.str("control").map(str::to_owned);
    let connect_rate: f64 = args.get("connect-rate", 2000.0);
    let settle: f64 = args.get("settle", 2.0);
    let key = format!("{proto}-{n}x{per}");
    let counts = Rc::new(Counts::default());
    let mut metrics = Map::new();
    let mut notes = Vec::new();

    if let Some(c) = &control {
        if let Err(e) = control_get(c, "/rate?r=0").await {
            notes.push(format!("upstream /rate: {e}"));
        }
    }
    sleep(Duration::from_millis(300)).await;
    let base = procstat::sample(&[pid]);

    // Open: connections at connect_rate / per a second, `per` streams on each.
    let connections = n.div_ceil(per);
    let gap = Duration::from_secs_f64(per as f64 / connect_rate.max(1.0));
    let start = Instant::now();
    for c in 0..connections {
        let streams = per.min(n - c * per);
        let counts = counts.clone();
        let src = source_addr(c, SOURCES);
        if proto == "h1" {
            tokio::task::spawn_local(h1_stream(addr, src, counts));
        } else {
            tokio::task::spawn_local(h2_connection(addr, src, streams, counts));
        }
        tokio::time::sleep_until(start + gap * (c as u32 + 1)).await;
    }
    let opened_by = Instant::now() + Duration::from_secs(30);
    while counts.open.get() + counts.failed.get() < n as u64 && Instant::now() < opened_by {
        sleep(Duration::from_millis(50)).await;
    }
    sleep(Duration::from_secs_f64(settle)).await;
    let open = counts.open.get();
    metrics.insert(format!("s7.open@{key}"), json!(open));
    metrics.insert(format!("s7.failed@{key}"), json!(counts.failed.get()));
    if let (Some(b), Some(s)) = (base, procstat::sample(&[pid])) {
        if open > 0 {
            let per_stream = s.rss_kb.saturating_sub(b.rss_kb) as f64 / open as f64;
            metrics.insert(format!("s7.rss_kb_per_stream@{key}"), json!(per_stream));
        }
        metrics.insert(format!("s7.rss_kb@{key}"), json!(s.rss_kb));
        metrics.insert(format!("s7.base_rss_kb@{key}"), json!(b.rss_kb));
    }

    if rate > 0.0 {
        let Some(c) = &control else {
            eprintln!("sg-h2load: --rate needs --control");
            return 2;
        };
        if let Err(e) = control_get(c, &format!("/rate?r={rate}")).await {
            eprintln!("sg-h2load: upstream refused the rate: {e}");
            return 1;
        }
        sleep(Duration::from_secs_f64(args.get("warm", 2.0))).await;
        let window: f64 = args.get("window", 10.0);
        let e0 = counts.events.get();
        let s0 = procstat::sample(&[pid]);
        let t0 = Instant::now();
        sleep(Duration::from_secs_f64(window)).await;
        let s1 = procstat::sample(&[pid]);
        let wall = t0.elapsed().as_secs_f64();
        let events = counts.events.get() - e0;
        metrics.insert(format!("s7.eps@{key}x{rate}"), json!(events as f64 / wall));
        if let (Some(a), Some(b)) = (s0, s1) {
            let cpu = b.cpu_secs_since(&a);
            metrics.insert(
                format!("s7.cpu_pct_core@{key}x{rate}"),
                json!(cpu / wall * 100.0),
            );
            if events > 0 {
                metrics.insert(
                    format!("s7.cpu_us_per_event@{key}x{rate}"),
                    json!(cpu * 1e6 / events as f64),
                );
            }
        }
        let _ = control_get(c, "/rate?r=0").await;
    }
    let out = json!({
        "label": args.str_or("label", "?"),
        "round": args.get("round", 0),
        "metrics": metrics,
        "notes": notes,
    });
    println!("{out}");
    if let Some(path) = args.str("out") {
        if let Err(e) = std::fs::write(path, format!("{out}\n")) {
            eprintln!("sg-h2load: writing {path}: {e}");
            return 1;
        }
    }
    0
}

/// Counts SSE units in a byte stream split anywhere: each `\n\n` (the bench upstream ends its
/// events so). Only that exact pair counts, so the `\r\n` after a chunk of an HTTP/1.1 body
/// does not make a second end out of the event's.
struct UnitCounter {
    last_newline: bool,
}

impl UnitCounter {
    fn feed(&mut self, data: &[u8], events: &Cell<u64>) {
        let mut n = 0;
        for &b in data {
            let newline = b == b'\n';
            if newline && self.last_newline {
                n += 1;
                self.last_newline = false;
            } else {
                self.last_newline = newline;
            }
        }
        events.set(events.get() + n);
    }
}

/// One HTTP/1.1 SSE stream on its own connection, read until it ends.
async fn h1_stream(addr: SocketAddr, src: Option<std::net::Ipv4Addr>, counts: Rc<Counts>) {
    let Ok(mut s) = connect_from(src, addr).await else {
        counts.failed.set(counts.failed.get() + 1);
        return;
    };
    let req = format!("GET /sse HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        counts.failed.set(counts.failed.get() + 1);
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    let mut units = UnitCounter {
        last_newline: false,
    };
    let mut opened = false;
    loop {
        let read = match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => &buf[..n],
        };
        if opened {
            units.feed(read, &counts.events);
            continue;
        }
        head.extend_from_slice(read);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 200") {
                counts.failed.set(counts.failed.get() + 1);
                return;
            }
            opened = true;
            counts.open.set(counts.open.get() + 1);
            units.feed(&head[end + 4..], &counts.events);
            head = Vec::new();
        }
    }
    if opened {
        counts.open.set(counts.open.get() - 1);
    }
}

/// One HTTP/2 connection with prior knowledge carrying `streams` SSE streams.
async fn h2_connection(
    addr: SocketAddr,
    src: Option<std::net::Ipv4Addr>,
    streams: usize,
    counts: Rc<Counts>,
) {
    let fail = |k: usize| counts.failed.set(counts.failed.get() + k as u64);
    let Ok(tcp) = connect_from(src, addr).await else {
        return fail(streams);
    };
    let Ok((send, conn)) = h2::client::Builder::new()
        .initial_connection_window_size(16 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
    else {
        return fail(streams);
    };
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    for _ in 0..streams {
        let Ok(mut ready) = send.clone().ready().await else {
            return fail(1);
        };
        let req = http::Request::get(format!("http://{addr}/sse"))
            .header("accept", "text/event-stream")
            .body(())
            .expect("request");
        let Ok((response, _)) = ready.send_request(req, true) else {
            fail(1);
            continue;
        };
        let counts = counts.clone();
        tokio::task::spawn_local(async move {
            let Ok(response) = response.await else {
                return counts.failed.set(counts.failed.get() + 1);
            };
            if response.status() != 200 {
                return counts.failed.set(counts.failed.get() + 1);
            }
            counts.open.set(counts.open.get() + 1);
            let mut body = response.into_body();
            let mut units = UnitCounter {
                last_newline: false,
            };
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
                units.feed(&data, &counts.events);
            }
            counts.open.set(counts.open.get() - 1);
        });
    }
}
