//! The bundled upstream: the app `streamguard demo` puts behind the proxy, and the real socket
//! server the integration tests and benchmarks proxy to.
//!
//! Responses are written by hand on a raw `TcpStream` rather than through an HTTP framework so
//! that tests control exactly which bytes go out and when: SSE heartbeat and staleness checks
//! depend on the upstream's write timing, and some scripts deliberately send half an event.
//! Every endpoint counts itself in [`UpstreamStats`] so tests can see what reached the upstream
//! and when the proxy let go of an upstream connection.
//!
//! Endpoints (HTTP/1.1, keep-alive, Content-Length and chunked request bodies):
//! - `GET /`, `GET /demo/page`: the demo page.
//! - `GET /demo/events`: three SSE events a second apart (`{"n":1,"user":<X-Streamguard-User>}`),
//!   then an hour of silence so the proxy's heartbeats show.
//! - `GET /demo/ws`, `GET /ws…` with `Upgrade: websocket`: echo; the first offered subprotocol is
//!   selected; the handshake is recorded ([`UpstreamStats::last_ws_handshake`]).
//! - Raw WebSocket endpoints, frame by frame on the socket (no library in between), each logging
//!   what it received in [`UpstreamStats::raw_ws_log`] (`text:N`, `binary:N`, `continuation:N`
//!   with ` fin` / ` rsv1` suffixes, `ping`, `pong:<payload>`, `close:<code>` or `close`, then
//!   `eof`, `reset`, `dropped` or `protocol:<why>`; `/ws/deaf` logs only `deaf`):
//!   - `/ws/raw`: echoes every data frame as received (FIN, RSV and opcode kept, unmasked),
//!     answers pings, turns every pong it receives into a text frame `pong:<payload>` (so a pong
//!     that should not have reached the app becomes visible to the client), echoes a close frame
//!     and then waits for the peer's EOF.
//!   - `/ws/deflate`: `/ws/raw` whose 101 says `Sec-WebSocket-Extensions: permessage-deflate`
//!     (nothing is inflated: RSV1 frames are echoed as they are).
//!   - `/ws/drop?after=N` (0): `/ws/raw` that drops the TCP connection, without a close frame,
//!     once it has echoed N data messages (at once for 0).
//!   - `/ws/slow-frame?bytes=N&pieces=P&ms=T` (262144, 64, 3000): first sends one binary frame
//!     of N bytes (byte i is `i % 251`) in P writes spread over T ms, then behaves as `/ws/raw`.
//!   - `/ws/deaf?ms=T` (20000): reads nothing for T ms, as an app whose receive path hung, then
//!     drops the connection; logs `deaf` when the handshake is done.
//! - `ANY /echo…`: `{"method","target","headers":{name: value | [values]},"body"}` as received.
//! - `GET|POST /sse?…`: scripted SSE. `events=N` (3), `interval_ms` (0), `size` (min data
//!   bytes), `then=close|quiet|hang` (quiet: silent but watching the socket; hang: silent and
//!   not reading it), `half_after=K`, `comment_every_ms=M` (`: upstream` lines while silent),
//!   `crlf=1`, `retry_ms`, `status=N` (JSON error instead of a stream), `framing=close`
//!   (close-delimited instead of chunked). Blocks in order: `retry:`, `event: body` (POST
//!   body), `event: resume` (`Last-Event-ID`), then `id: n` / `data: n <ns since start> [pad]`.
//! - `GET /broadcast?interval_ms=M&size=S&name=X`: joins the upstream's one broadcast, which
//!   writes every event to every connection in turn and waits for each write, as the legacy apps
//!   in the seeds do: one connection that takes nothing holds back the events of all. Events are
//!   `id: n` / `data: n <ns since start> [pad to S bytes]`, every M ms (10; 0 is as fast as it
//!   can); the first connection's M and S set the broadcast for the life of the upstream. How
//!   long each write took is recorded per connection name ([`UpstreamStats::broadcast_writes`],
//!   default names `conn-<k>`).
//! - `GET /status/<code>`: that status with a body that must not leak through the proxy.
//! - `GET /legacy-cors`: a wildcard `Access-Control-Allow-*` the proxy must strip.
//! - `GET /slow?ms=N`, `GET /big?bytes=N`.
//! - `GET /hang`: never answers (no head), but counts the peer leaving in
//!   [`UpstreamStats::closed_by_client`].

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

const PAGE: &str = include_str!("page.html");

const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
const READ_CHUNK: usize = 8 * 1024;
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
const MAX_BIG_BYTES: u64 = 1 << 30;
const MAX_SLOW: Duration = Duration::from_secs(600);
/// "Forever" for a quiet stream: long enough for any test or demo session, short enough that a
/// forgotten stream does not pin a task for the life of the process.
const QUIET_LIMIT: Duration = Duration::from_secs(3600);
const DEMO_EVENTS: u64 = 3;
const DEMO_INTERVAL: Duration = Duration::from_secs(1);
/// Consecutive accept failures (EMFILE under a benchmark, say) tolerated before giving up.
const MAX_ACCEPT_FAILURES: u32 = 100;
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
const SECRET_ERROR_BODY: &str = r#"{"internal":"stack trace: secret detail"}"#;
const BROADCAST_INTERVAL: Duration = Duration::from_millis(10);

/// One request as the upstream received it; header names are lower-cased, order kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// The request-target exactly as received (path and query).
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    fn query(&self, key: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Whether the comma-separated header `name` lists `token` (case-insensitive).
    fn lists(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// What the upstream has seen, shared with the tests that drive it.
#[derive(Debug)]
pub struct UpstreamStats {
    started: Instant,
    total: AtomicU64,
    hits: Mutex<HashMap<String, u64>>,
    last: Mutex<HashMap<String, RecordedRequest>>,
    last_ws: Mutex<Option<RecordedRequest>>,
    open_sse: AtomicUsize,
    open_ws: AtomicUsize,
    closed_by_client: AtomicU64,
    raw_ws_log: Mutex<Vec<String>>,
    /// Where new `/broadcast` connections join the running broadcast loop.
    broadcast: Mutex<Option<mpsc::UnboundedSender<Subscriber>>>,
    broadcast_writes: Mutex<HashMap<String, BroadcastWrites>>,
    /// The broadcast's write in progress: to which connection, since when.
    broadcast_writing: Mutex<Option<(String, Instant)>>,
}

/// How the broadcast loop's writes to one connection went (`/broadcast`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BroadcastWrites {
    /// Events written to the connection.
    pub events: u64,
    /// The longest of those writes: the longest the app was held back by this connection
    /// (and, the loop being one, every other connection with it).
    pub longest: Duration,
}

impl Default for UpstreamStats {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamStats {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            total: AtomicU64::new(0),
            hits: Mutex::new(HashMap::new()),
            last: Mutex::new(HashMap::new()),
            last_ws: Mutex::new(None),
            open_sse: AtomicUsize::new(0),
            open_ws: AtomicUsize::new(0),
            closed_by_client: AtomicU64::new(0),
            raw_ws_log: Mutex::new(Vec::new()),
            broadcast: Mutex::new(None),
            broadcast_writes: Mutex::new(HashMap::new()),
            broadcast_writing: Mutex::new(None),
        }
    }

    /// The broadcast loop's writes to the connection named `name` (`/broadcast?name=`); a write
    /// still waiting counts with the time it has waited so far.
    pub fn broadcast_writes(&self, name: &str) -> Option<BroadcastWrites> {
        let mut writes = lock(&self.broadcast_writes).get(name).copied();
        if let Some((writing, since)) = &*lock(&self.broadcast_writing) {
            if writing == name {
                let w = writes.get_or_insert_with(BroadcastWrites::default);
                w.longest = w.longest.max(since.elapsed());
            }
        }
        writes
    }

    /// The longest write of the broadcast loop to any connection so far, the one in progress
    /// included.
    pub fn broadcast_longest_write(&self) -> Duration {
        let done = lock(&self.broadcast_writes)
            .values()
            .map(|w| w.longest)
            .max()
            .unwrap_or_default();
        let waiting = lock(&self.broadcast_writing)
            .as_ref()
            .map(|(_, since)| since.elapsed())
            .unwrap_or_default();
        done.max(waiting)
    }

    fn broadcast_write_starts(&self, name: &str) -> Instant {
        let now = Instant::now();
        *lock(&self.broadcast_writing) = Some((name.to_owned(), now));
        now
    }

    fn broadcast_write_ends(&self, name: &str, started: Instant) {
        let took = started.elapsed();
        *lock(&self.broadcast_writing) = None;
        let mut writes = lock(&self.broadcast_writes);
        let entry = writes.entry(name.to_owned()).or_default();
        entry.events += 1;
        entry.longest = entry.longest.max(took);
    }

    /// Requests whose first path segment matches `path`'s (`hits("/echo")` counts `/echo/a?b`).
    pub fn hits(&self, path: &str) -> u64 {
        lock(&self.hits)
            .get(first_segment(path))
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// SSE responses currently being written (both `/sse` and `/demo/events`).
    pub fn open_streams(&self) -> usize {
        self.open_sse.load(Ordering::SeqCst)
    }

    pub fn open_websockets(&self) -> usize {
        self.open_ws.load(Ordering::SeqCst)
    }

    /// Streams (SSE or WebSocket) that ended because the peer went away, not by script.
    pub fn closed_by_client(&self) -> u64 {
        self.closed_by_client.load(Ordering::SeqCst)
    }

    /// The latest request whose first path segment matches `path`'s.
    pub fn last_request(&self, path: &str) -> Option<RecordedRequest> {
        lock(&self.last).get(first_segment(path)).cloned()
    }

    /// The latest WebSocket handshake request, target included.
    pub fn last_ws_handshake(&self) -> Option<RecordedRequest> {
        lock(&self.last_ws).clone()
    }

    /// Headers of the latest WebSocket handshake (empty before the first one).
    pub fn last_ws_headers(&self) -> Vec<(String, String)> {
        self.last_ws_handshake()
            .map(|r| r.headers)
            .unwrap_or_default()
    }

    /// What the raw WebSocket endpoints (`/ws/raw`, `/ws/deflate`, `/ws/drop`, `/ws/slow-frame`,
    /// `/ws/deaf`) received, in order, over all their connections; see the module docs for the entries.
    pub fn raw_ws_log(&self) -> Vec<String> {
        lock(&self.raw_ws_log).clone()
    }

    fn log_raw_ws(&self, entry: String) {
        lock(&self.raw_ws_log).push(entry);
    }

    /// The origin of the nanosecond timestamps written into scripted SSE events.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When the event stamped `ns` was written, on the caller's clock.
    pub fn instant_of(&self, ns: u64) -> Instant {
        self.started + Duration::from_nanos(ns)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn record(&self, req: &RecordedRequest) {
        self.total.fetch_add(1, Ordering::SeqCst);
        let key = first_segment(req.path()).to_owned();
        *lock(&self.hits).entry(key.clone()).or_insert(0) += 1;
        lock(&self.last).insert(key, req.clone());
    }

    fn client_left(&self) {
        self.closed_by_client.fetch_add(1, Ordering::SeqCst);
    }
}

/// Stats are diagnostics: a panic elsewhere must not hide them, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `/echo/a?b` → `/echo`, `/` → `/`.
fn first_segment(path: &str) -> &str {
    let path = path.split('?').next().unwrap_or_default();
    match path.get(1..).and_then(|rest| rest.find('/')) {
        Some(end) => &path[..end + 1],
        None => path,
    }
}

/// Holds one of the open-stream gauges up for as long as the stream lives, whatever way it ends.
struct OpenGuard<'a>(&'a AtomicUsize);

impl<'a> OpenGuard<'a> {
    fn new(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::SeqCst);
        Self(gauge)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("malformed request head: {0}")]
    Malformed(httparse::Error),
    #[error("request head exceeds the {limit}-byte or {MAX_HEADERS}-header limit")]
    HeadTooLarge { limit: usize },
    #[error("request body exceeds the {limit}-byte limit")]
    BodyTooLarge { limit: usize },
    #[error("malformed chunked request body: {0}")]
    BadChunk(&'static str),
    #[error("content-length is not a number")]
    BadLength,
    #[error("query parameter `{0}` has an invalid value")]
    BadParam(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl RequestError {
    /// The status to answer with, or `None` when the connection is already unusable.
    fn status(&self) -> Option<u16> {
        match self {
            RequestError::HeadTooLarge { .. } => Some(431),
            RequestError::BodyTooLarge { .. } => Some(413),
            RequestError::Malformed(_)
            | RequestError::BadChunk(_)
            | RequestError::BadLength
            | RequestError::BadParam(_) => Some(400),
            RequestError::Io(_) => None,
        }
    }
}

impl From<httparse::Error> for RequestError {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => RequestError::HeadTooLarge {
                limit: MAX_HEAD_BYTES,
            },
            other => RequestError::Malformed(other),
        }
    }
}

/// Accepts connections until the listener fails persistently.
///
/// Transient accept errors (a peer that reset before accept, fd exhaustion during a benchmark)
/// only pause the loop; `Err` comes back after `MAX_ACCEPT_FAILURES` failures in a row.
pub async fn serve(listener: TcpListener, stats: Arc<UpstreamStats>) -> io::Result<()> {
    let mut failures = 0;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                failures = 0;
                let stats = Arc::clone(&stats);
                tokio::spawn(async move {
                    // A peer that vanishes mid-request is routine for a test upstream, and the
                    // stats already record what matters; there is nobody to report it to.
                    let _ = Conn::new(stream, stats).run().await;
                });
            }
            Err(e) => {
                failures += 1;
                if failures >= MAX_ACCEPT_FAILURES {
                    return Err(e);
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// A request head plus its body, read in full (bodies here are small test payloads).
struct Request {
    head: RecordedRequest,
    /// HTTP/1.0 peers get close-delimited bodies and no keep-alive.
    http10: bool,
    body: Vec<u8>,
}

impl Request {
    fn keep_alive(&self) -> bool {
        if self.http10 {
            self.head.lists("connection", "keep-alive")
        } else {
            !self.head.lists("connection", "close")
        }
    }

    fn query_num<T: std::str::FromStr>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, RequestError> {
        self.head
            .query(key)
            .map(|v| v.parse().map_err(|_| RequestError::BadParam(key)))
            .transpose()
    }
}

/// What the connection loop does after a response.
enum Next {
    KeepAlive,
    Close,
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// False for HEAD: headers (Content-Length included) describe a body that is not sent.
    send_body: bool,
}

impl Response {
    fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body: body.into(),
            send_body: true,
        }
    }

    fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(status, "application/json", value.to_string())
    }

    fn headers_only(self) -> Self {
        Self {
            send_body: false,
            ..self
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Statuses whose responses never carry a body (RFC 9110 §6.4.1).
fn bodiless(status: u16) -> bool {
    status < 200 || status == 204 || status == 304
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    stats: Arc<UpstreamStats>,
}

impl Conn {
    fn new(stream: TcpStream, stats: Arc<UpstreamStats>) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            stats,
        }
    }

    async fn run(mut self) -> io::Result<()> {
        // SSE timing tests measure single small writes; Nagle would hold them back.
        self.stream.set_nodelay(true)?;
        loop {
            let (head, http10) = match self.read_head().await {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(()),
                Err(e) => return self.reject(e).await,
            };
            self.stats.record(&head);
            if head.method == "GET" && head.lists("upgrade", "websocket") {
                return self.upgrade(head).await;
            }
            if head.method == "GET" && head.path() == "/broadcast" {
                return self.broadcast(head).await;
            }
            let body = match self.read_body(&head).await {
                Ok(body) => body,
                Err(e) => return self.reject(e).await,
            };
            let req = Request { head, http10, body };
            let next = match self.route(&req).await {
                Ok(next) => next,
                Err(e) => return self.reject(e).await,
            };
            match next {
                Next::KeepAlive if req.keep_alive() => {}
                _ => return Ok(()),
            }
        }
    }

    /// Answers a request that could not be read or understood, then gives up the connection.
    async fn reject(&mut self, e: RequestError) -> io::Result<()> {
        match e.status() {
            Some(status) => {
                let body = serde_json::json!({ "error": e.to_string() });
                self.respond(Response::json(status, &body), false).await
            }
            None => Ok(()),
        }
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        // A full BytesMut only grows by 64 bytes per read; re-parsing a large head after each
        // of those would be quadratic.
        self.buf.reserve(READ_CHUNK);
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads more bytes into the buffer; a clean EOF is an error here because a caller that
    /// needs more bytes cannot finish without them.
    async fn fill(&mut self) -> Result<(), RequestError> {
        if self.read_more().await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        Ok(())
    }

    /// `Ok(None)` on a clean close between requests.
    async fn read_head(&mut self) -> Result<Option<(RecordedRequest, bool)>, RequestError> {
        loop {
            if let Some((head, http10, len)) = parse_head(&self.buf)? {
                self.buf.advance(len);
                return Ok(Some((head, http10)));
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(RequestError::HeadTooLarge {
                    limit: MAX_HEAD_BYTES,
                });
            }
            if self.read_more().await? == 0 {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
    }

    async fn read_body(&mut self, head: &RecordedRequest) -> Result<Vec<u8>, RequestError> {
        let chunked = head.lists("transfer-encoding", "chunked");
        let length = match head.header("content-length") {
            Some(v) if !chunked => v
                .trim()
                .parse::<usize>()
                .map_err(|_| RequestError::BadLength)?,
            _ => 0,
        };
        if length > MAX_BODY_BYTES {
            return Err(RequestError::BodyTooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        if (chunked || length > 0) && head.lists("expect", "100-continue") {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        if chunked {
            self.read_chunked().await
        } else {
            self.take(length).await
        }
    }

    async fn take(&mut self, n: usize) -> Result<Vec<u8>, RequestError> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.split_to(n).to_vec())
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn take_line(&mut self) -> Result<Vec<u8>, RequestError> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(end).to_vec();
                self.buf.advance(2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(RequestError::BadChunk(
                    "chunk line longer than the head limit",
                ));
            }
            self.fill().await?;
        }
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>, RequestError> {
        let mut body = Vec::new();
        loop {
            let line = self.take_line().await?;
            let size = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.split(';').next())
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or(RequestError::BadChunk("chunk size is not hexadecimal"))?;
            if size == 0 {
                // Trailers are read and dropped: nothing here looks at them.
                while !self.take_line().await?.is_empty() {}
                return Ok(body);
            }
            if body.len().saturating_add(size) > MAX_BODY_BYTES {
                return Err(RequestError::BodyTooLarge {
                    limit: MAX_BODY_BYTES,
                });
            }
            body.extend(self.take(size).await?);
            if !self.take_line().await?.is_empty() {
                return Err(RequestError::BadChunk("chunk data not followed by CRLF"));
            }
        }
    }

    async fn respond(&mut self, resp: Response, keep_alive: bool) -> io::Result<()> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
        for (name, value) in &resp.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        let has_body = !bodiless(resp.status);
        if has_body {
            out.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
        }
        if !keep_alive {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if has_body && resp.send_body {
            bytes.extend_from_slice(&resp.body);
        }
        self.stream.write_all(&bytes).await
    }

    async fn route(&mut self, req: &Request) -> Result<Next, RequestError> {
        let path = req.head.path();
        let keep = req.keep_alive();
        let resp = match (req.head.method.as_str(), path) {
            (_, p) if p.starts_with("/echo") => Response::json(200, &echo_json(req)),
            // `/demo/page` is the path the example proxy.toml leaves public.
            ("GET", "/" | "/demo/page") => Response::new(200, "text/html; charset=utf-8", PAGE),
            ("GET", "/demo/events") => {
                let user = req.head.header("x-streamguard-user").map(str::to_owned);
                let plan = SsePlan::demo(user);
                self.stream_sse(req, &plan).await?;
                return Ok(Next::Close);
            }
            ("GET" | "POST", "/sse") => match req.query_num::<u16>("status")? {
                Some(status) if status != 200 => {
                    let body = serde_json::json!({ "error": "scripted status", "status": status });
                    Response::json(status, &body)
                }
                _ => {
                    let plan = SsePlan::from_query(req)?;
                    self.stream_sse(req, &plan).await?;
                    return Ok(Next::Close);
                }
            },
            ("GET", p) if p.starts_with("/status/") => {
                let status = p["/status/".len()..]
                    .parse::<u16>()
                    .ok()
                    .filter(|s| (200..=599).contains(s))
                    .ok_or(RequestError::BadParam("status"))?;
                Response::new(status, "application/json", SECRET_ERROR_BODY)
            }
            ("GET", "/legacy-cors") => Response::json(200, &serde_json::json!({ "legacy": true }))
                .header("Access-Control-Allow-Origin", "*")
                .header("Access-Control-Allow-Credentials", "true"),
            ("GET", "/hang") => {
                // An app that never answers: it sends nothing, but notices the peer leaving
                // (counted as closed by the client), so tests can see when the proxy lets go.
                let stats = Arc::clone(&self.stats);
                let (mut rd, _wr) = self.stream.split();
                tokio::select! {
                    () = peer_gone(&mut rd) => stats.client_left(),
                    () = tokio::time::sleep(QUIET_LIMIT) => {}
                }
                return Ok(Next::Close);
            }
            ("GET", "/slow") => {
                let ms = req.query_num::<u64>("ms")?.unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLOW)).await;
                Response::json(200, &serde_json::json!({ "slept_ms": ms }))
            }
            ("GET", "/big") => {
                let bytes = req.query_num::<u64>("bytes")?.unwrap_or(0);
                if bytes > MAX_BIG_BYTES {
                    return Err(RequestError::BadParam("bytes"));
                }
                self.send_big(bytes, keep).await?;
                return Ok(Next::KeepAlive);
            }
            _ => Response::json(404, &serde_json::json!({ "error": "no such endpoint" })),
        };
        let resp = if req.head.method == "HEAD" {
            resp.headers_only()
        } else {
            resp
        };
        self.respond(resp, keep).await?;
        Ok(Next::KeepAlive)
    }

    /// Streams `n` filler bytes without holding them all in memory.
    async fn send_big(&mut self, n: u64, keep_alive: bool) -> io::Result<()> {
        static PIECE: [u8; 64 * 1024] = [b'x'; 64 * 1024];
        let close = if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n{close}\r\n"
        );
        self.stream.write_all(head.as_bytes()).await?;
        let mut left = n;
        while left > 0 {
            let len = usize::try_from(left).map_or(PIECE.len(), |l| l.min(PIECE.len()));
            self.stream.write_all(&PIECE[..len]).await?;
            left -= len as u64;
        }
        Ok(())
    }

    /// Plays `plan` as an SSE response, holding the open-stream gauge until the stream ends.
    ///
    /// The socket's read side is watched alongside the writes so that a proxy closing the
    /// upstream connection is noticed at once, even while the script is quiet.
    async fn stream_sse(&mut self, req: &Request, plan: &SsePlan) -> io::Result<()> {
        let stats = Arc::clone(&self.stats);
        let _open = OpenGuard::new(&stats.open_sse);
        let chunked = !req.http10 && !plan.close_delimited;
        let framing = if chunked {
            "Transfer-Encoding: chunked\r\n"
        } else {
            ""
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n{framing}Connection: close\r\n\r\n"
        );
        self.stream.write_all(head.as_bytes()).await?;

        let (mut rd, wr) = self.stream.split();
        let mut body = BodyWriter { wr, chunked };
        let played = if plan.then == Then::Hang {
            plan.play(&mut body, req, &stats).await
        } else {
            tokio::select! {
                played = plan.play(&mut body, req, &stats) => played,
                () = peer_gone(&mut rd) => Err(io::ErrorKind::ConnectionReset.into()),
            }
        };
        match played {
            Ok(()) => {
                body.finish().await?;
                self.stream.shutdown().await
            }
            Err(_) => {
                stats.client_left();
                Ok(())
            }
        }
    }

    /// Hands the connection to the broadcast loop (starting it for the first one), then
    /// watches for the peer to leave.
    async fn broadcast(mut self, head: RecordedRequest) -> io::Result<()> {
        let plan = match SsePlan::broadcast(&head) {
            Ok(plan) => plan,
            Err(e) => return self.reject(e).await,
        };
        let name = head
            .query("name")
            .map_or_else(|| format!("conn-{}", self.stats.total()), str::to_owned);
        let Conn {
            mut stream, stats, ..
        } = self;
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                  Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            )
            .await?;
        let _open = OpenGuard::new(&stats.open_sse);
        let (mut rd, wr) = stream.into_split();
        let body = BodyWriter { wr, chunked: true };
        join_broadcast(&stats, Subscriber { name, body }, plan);
        tokio::select! {
            () = peer_gone(&mut rd) => stats.client_left(),
            () = tokio::time::sleep(QUIET_LIMIT) => {}
        }
        Ok(())
    }

    async fn upgrade(mut self, head: RecordedRequest) -> io::Result<()> {
        let path = head.path();
        if path != "/demo/ws" && !path.starts_with("/ws") {
            let body = serde_json::json!({ "error": "no websocket endpoint here" });
            return self.respond(Response::json(404, &body), false).await;
        }
        *lock(&self.stats.last_ws) = Some(head.clone());
        let Some(key) = head.header("sec-websocket-key") else {
            let body =
                serde_json::json!({ "error": "websocket handshake without sec-websocket-key" });
            return self.respond(Response::json(400, &body), false).await;
        };
        if head.header("sec-websocket-version").map(str::trim) != Some("13") {
            let body = serde_json::json!({ "error": "websocket version must be 13" });
            let resp = Response::json(426, &body).header("Sec-WebSocket-Version", "13");
            return self.respond(resp, false).await;
        }
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            derive_accept_key(key.trim().as_bytes())
        );
        // Like most apps, pick the client's first offer; a client that offered protocols
        // rejects a handshake that selects none.
        let offered = head
            .header("sec-websocket-protocol")
            .and_then(|v| v.split(',').next());
        if let Some(protocol) = offered.map(str::trim).filter(|p| !p.is_empty()) {
            out.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
        }
        let raw = RawWsPlan::from_head(&head);
        if raw.as_ref().is_some_and(|plan| plan.deflate) {
            out.push_str("Sec-WebSocket-Extensions: permessage-deflate\r\n");
        }
        out.push_str("\r\n");
        self.stream.write_all(out.as_bytes()).await?;

        let stats = Arc::clone(&self.stats);
        let _open = OpenGuard::new(&stats.open_ws);
        if let Some(plan) = raw {
            let buf = std::mem::take(&mut self.buf);
            raw_websocket(self.stream, buf, &plan, &stats).await;
            stats.client_left();
            return Ok(());
        }
        // Frames the client pipelined behind its handshake are already in our buffer.
        let early = self.buf.to_vec();
        let ws = WebSocketStream::from_partially_read(self.stream, early, Role::Server, None).await;
        echo_websocket(ws).await;
        // The upstream never closes a WebSocket itself, so every end is the peer's doing.
        stats.client_left();
        Ok(())
    }
}

/// Parses a complete head out of `buf`, or `None` if more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<(RecordedRequest, bool, usize)>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(buf)? else {
        return Ok(None);
    };
    if len > MAX_HEAD_BYTES {
        return Err(RequestError::HeadTooLarge {
            limit: MAX_HEAD_BYTES,
        });
    }
    let head = RecordedRequest {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    };
    Ok(Some((head, req.version == Some(0), len)))
}

/// What a raw WebSocket endpoint does besides echoing (see the module docs); the default is
/// `/ws/raw`'s plain echo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RawWsPlan {
    deflate: bool,
    /// Drop the TCP connection once this many data messages were echoed.
    drop_after: Option<u64>,
    /// One binary frame of `bytes` sent in `pieces` writes over `over` before anything else.
    slow_frame: Option<(usize, usize, Duration)>,
    /// Read nothing for this long, then drop the connection.
    deaf_for: Option<Duration>,
}

impl RawWsPlan {
    /// `None` for the library echo. Numbers that do not parse fall back to the defaults.
    fn from_head(head: &RecordedRequest) -> Option<Self> {
        let num = |key: &str, default: u64| -> u64 {
            head.query(key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let plan = match head.path() {
            "/ws/raw" => RawWsPlan::default(),
            "/ws/deflate" => RawWsPlan {
                deflate: true,
                ..RawWsPlan::default()
            },
            "/ws/drop" => RawWsPlan {
                drop_after: Some(num("after", 0)),
                ..RawWsPlan::default()
            },
            "/ws/slow-frame" => {
                let bytes = usize::try_from(num("bytes", 256 * 1024)).unwrap_or(usize::MAX);
                RawWsPlan {
                    slow_frame: Some((
                        bytes.min(MAX_BODY_BYTES),
                        usize::try_from(num("pieces", 64)).unwrap_or(64).max(1),
                        Duration::from_millis(num("ms", 3000)).min(MAX_SLOW),
                    )),
                    ..RawWsPlan::default()
                }
            }
            "/ws/deaf" => RawWsPlan {
                deaf_for: Some(Duration::from_millis(num("ms", 20_000)).min(MAX_SLOW)),
                ..RawWsPlan::default()
            },
            _ => return None,
        };
        Some(plan)
    }
}

/// One WebSocket frame as read off the wire, payload unmasked.
struct RawFrame {
    /// FIN, RSV1-3 and the opcode, as received.
    first: u8,
    payload: Vec<u8>,
}

impl RawFrame {
    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    /// `text:5 fin`, `binary:0 fin rsv1`, `continuation:3`.
    fn describe(&self) -> String {
        let kind = match self.opcode() {
            0x0 => "continuation",
            0x1 => "text",
            0x2 => "binary",
            _ => "other",
        };
        let mut out = format!("{kind}:{}", self.payload.len());
        if self.first & 0x80 != 0 {
            out.push_str(" fin");
        }
        if self.first & 0x40 != 0 {
            out.push_str(" rsv1");
        }
        out
    }
}

/// An unmasked frame (what a server sends) with the given first byte.
fn raw_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// Takes one whole frame off the front of `buf`, or `None` if more bytes are needed.
fn take_raw_frame(buf: &mut BytesMut) -> Result<Option<RawFrame>, &'static str> {
    let [b0, b1, ..] = buf[..] else {
        return Ok(None);
    };
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        len => (u64::from(len), 2),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_BODY_BYTES)
        .ok_or("frame larger than the upstream accepts")?;
    let mask = if masked {
        let Some(mask) = buf
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
        else {
            return Ok(None);
        };
        at += 4;
        Some(mask)
    } else {
        None
    };
    if buf.len() < at + len {
        return Ok(None);
    }
    buf.advance(at);
    let mut payload = buf.split_to(len).to_vec();
    if let Some(mask) = mask {
        for (byte, key) in payload.iter_mut().zip(mask.iter().cycle()) {
            *byte ^= key;
        }
    }
    Ok(Some(RawFrame { first: b0, payload }))
}

/// How a raw connection ended.
enum RawEnd {
    /// The peer closed its side cleanly between frames.
    Eof,
    /// The peer reset, closed mid-frame, or broke the framing.
    Reset,
    /// `/ws/drop` or `/ws/deaf` let go of the connection on purpose (`dropped` or `deaf` is
    /// already logged).
    Dropped,
}

/// Reads the next whole frame; `Err` once the connection ended (a half frame at EOF is a reset).
async fn read_raw_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    stats: &UpstreamStats,
) -> Result<RawFrame, RawEnd> {
    loop {
        match take_raw_frame(buf) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(why) => {
                stats.log_raw_ws(format!("protocol:{why}"));
                return Err(RawEnd::Reset);
            }
        }
        buf.reserve(READ_CHUNK);
        match stream.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Err(RawEnd::Eof),
            Ok(0) | Err(_) => return Err(RawEnd::Reset),
            Ok(_) => {}
        }
    }
}

/// Writes one frame of `/ws/slow-frame` in pieces, reading (and keeping) what the peer sends
/// meanwhile so that a proxy's close or a vanished peer is still noticed.
async fn send_slow_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    (bytes, pieces, over): (usize, usize, Duration),
) -> Result<(), RawEnd> {
    let payload: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let wire = raw_frame(0x82, &payload);
    let step = wire.len().div_ceil(pieces).max(1);
    let pause = over / u32::try_from(pieces).unwrap_or(u32::MAX);
    let (mut rd, mut wr) = stream.split();
    let send = async {
        for (i, piece) in wire.chunks(step).enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            wr.write_all(piece).await?;
        }
        io::Result::Ok(())
    };
    tokio::pin!(send);
    loop {
        buf.reserve(READ_CHUNK);
        tokio::select! {
            sent = &mut send => return sent.map_err(|_| RawEnd::Reset),
            read = rd.read_buf(buf) => match read {
                Ok(0) | Err(_) => return Err(RawEnd::Reset),
                Ok(_) => {}
            },
        }
    }
}

/// The raw endpoints: echo frame by frame, logging everything received.
async fn raw_websocket(
    mut stream: TcpStream,
    mut buf: BytesMut,
    plan: &RawWsPlan,
    stats: &UpstreamStats,
) {
    let end = raw_echo(&mut stream, &mut buf, plan, stats).await;
    match end {
        RawEnd::Eof => stats.log_raw_ws("eof".to_owned()),
        RawEnd::Reset => stats.log_raw_ws("reset".to_owned()),
        RawEnd::Dropped => {}
    }
}

async fn raw_echo(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    plan: &RawWsPlan,
    stats: &UpstreamStats,
) -> RawEnd {
    if let Some(deaf_for) = plan.deaf_for {
        stats.log_raw_ws("deaf".to_owned());
        tokio::time::sleep(deaf_for).await;
        return RawEnd::Dropped;
    }
    if let Some(slow) = plan.slow_frame {
        if let Err(end) = send_slow_frame(stream, buf, slow).await {
            return end;
        }
    }
    let mut echoed = 0u64;
    loop {
        if plan.drop_after.is_some_and(|n| echoed >= n) {
            stats.log_raw_ws("dropped".to_owned());
            // Dropping the socket sends FIN with no close frame before it: an app that died.
            return RawEnd::Dropped;
        }
        let frame = match read_raw_frame(stream, buf, stats).await {
            Ok(frame) => frame,
            Err(end) => return end,
        };
        let reply = match frame.opcode() {
            0x0..=0x2 => {
                stats.log_raw_ws(frame.describe());
                if frame.first & 0x80 != 0 {
                    echoed += 1;
                }
                raw_frame(frame.first, &frame.payload)
            }
            0x9 => {
                stats.log_raw_ws("ping".to_owned());
                raw_frame(0x8A, &frame.payload)
            }
            0xA => {
                let text = format!("pong:{}", String::from_utf8_lossy(&frame.payload));
                stats.log_raw_ws(text.clone());
                raw_frame(0x81, text.as_bytes())
            }
            0x8 => {
                stats.log_raw_ws(match frame.payload.get(..2) {
                    Some(code) => format!("close:{}", u16::from_be_bytes([code[0], code[1]])),
                    None => "close".to_owned(),
                });
                if stream
                    .write_all(&raw_frame(0x88, &frame.payload))
                    .await
                    .is_err()
                {
                    return RawEnd::Reset;
                }
                // The peer that sent the close now closes the TCP connection.
                return loop {
                    match read_raw_frame(stream, buf, stats).await {
                        Ok(frame) => stats.log_raw_ws(format!("after-close:{}", frame.describe())),
                        Err(end) => break end,
                    }
                };
            }
            other => {
                stats.log_raw_ws(format!("protocol:opcode {other:#x}"));
                return RawEnd::Reset;
            }
        };
        if stream.write_all(&reply).await.is_err() {
            return RawEnd::Reset;
        }
    }
}

async fn echo_websocket<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    // Pings are answered by tungstenite itself on the next poll; Close is answered the same
    // way and then ends the stream.
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

/// Resolves when the peer closes or resets its side; request bytes it sends meanwhile are
/// dropped (nothing pipelines behind an SSE request).
async fn peer_gone<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut scratch = [0u8; 1024];
    while let Ok(n) = rd.read(&mut scratch).await {
        if n == 0 {
            return;
        }
    }
}

/// One connection of the broadcast.
struct Subscriber {
    /// Its writes are recorded under this name.
    name: String,
    body: BodyWriter<OwnedWriteHalf>,
}

/// Sends `sub` to the running broadcast loop, or starts one with `plan` (and `sub`).
fn join_broadcast(stats: &Arc<UpstreamStats>, sub: Subscriber, plan: SsePlan) {
    let mut running = lock(&stats.broadcast);
    let sub = match running.as_ref() {
        Some(joins) => match joins.send(sub) {
            Ok(()) => return,
            // The loop is gone (its runtime ended): start another.
            Err(mpsc::error::SendError(sub)) => sub,
        },
        None => sub,
    };
    let (joins, waiting) = mpsc::unbounded_channel();
    // The receiver is alive until the loop drops it, so this send cannot fail.
    let _ = joins.send(sub);
    *running = Some(joins);
    tokio::spawn(broadcast_loop(waiting, plan, Arc::clone(stats)));
}

/// The broadcast: every `plan.interval`, the next event to every connection in turn, each
/// write awaited before the next starts. A connection whose write fails leaves. Runs for the
/// life of the runtime, waiting for connections when it has none.
async fn broadcast_loop(
    mut joins: mpsc::UnboundedReceiver<Subscriber>,
    plan: SsePlan,
    stats: Arc<UpstreamStats>,
) {
    let mut subs: Vec<Subscriber> = Vec::new();
    let mut n = 0u64;
    loop {
        if subs.is_empty() {
            match joins.recv().await {
                Some(sub) => subs.push(sub),
                None => return,
            }
        }
        while let Ok(sub) = joins.try_recv() {
            subs.push(sub);
        }
        if plan.interval.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(plan.interval).await;
        }
        n += 1;
        let event = plan.event(n, &stats);
        let mut gone = Vec::new();
        for (i, sub) in subs.iter_mut().enumerate() {
            let started = stats.broadcast_write_starts(&sub.name);
            let sent = sub.body.send(&event).await;
            stats.broadcast_write_ends(&sub.name, started);
            if sent.is_err() {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            subs.swap_remove(i);
        }
    }
}

/// Writes a response body either chunked or close-delimited.
struct BodyWriter<W> {
    wr: W,
    chunked: bool,
}

impl<W: AsyncWrite + Unpin> BodyWriter<W> {
    async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            // An empty chunk would end a chunked body.
            return Ok(());
        }
        if self.chunked {
            let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
            framed.extend_from_slice(data);
            framed.extend_from_slice(b"\r\n");
            self.wr.write_all(&framed).await
        } else {
            self.wr.write_all(data).await
        }
    }

    async fn finish(&mut self) -> io::Result<()> {
        if self.chunked {
            self.wr.write_all(b"0\r\n\r\n").await?;
        }
        self.wr.flush().await
    }
}

/// What a scripted stream does once its numbered events are out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// End the body and close the connection.
    Close,
    /// Send nothing more (except `comment_every_ms` comments) while watching for the peer
    /// to leave.
    Quiet,
    /// Like `Quiet`, but without reading the socket: a stuck app that only notices a gone
    /// peer when a write fails.
    Hang,
}

/// How the numbered events' `data:` is made.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Payload {
    /// `{"n":1,"user":"alice"}` for the demo page.
    Demo { user: Option<String> },
    /// `<n> <ns since server start> <padding>`, padded to at least `size` bytes.
    Stamped { size: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SsePlan {
    events: u64,
    interval: Duration,
    payload: Payload,
    then: Then,
    half_after: Option<u64>,
    comment_every: Option<Duration>,
    crlf: bool,
    retry_ms: Option<u64>,
    close_delimited: bool,
}

impl SsePlan {
    fn demo(user: Option<String>) -> Self {
        Self {
            events: DEMO_EVENTS,
            interval: DEMO_INTERVAL,
            payload: Payload::Demo { user },
            then: Then::Quiet,
            half_after: None,
            comment_every: None,
            crlf: false,
            retry_ms: None,
            close_delimited: false,
        }
    }

    /// `/broadcast`'s events: `interval_ms` apart, padded to `size`, for as long as it runs.
    fn broadcast(head: &RecordedRequest) -> Result<Self, RequestError> {
        let num = |key: &'static str| {
            head.query(key)
                .map(|v| v.parse::<u64>().map_err(|_| RequestError::BadParam(key)))
                .transpose()
        };
        Ok(Self {
            events: u64::MAX,
            interval: num("interval_ms")?.map_or(BROADCAST_INTERVAL, Duration::from_millis),
            payload: Payload::Stamped {
                size: usize::try_from(num("size")?.unwrap_or(0))
                    .map_err(|_| RequestError::BadParam("size"))?,
            },
            then: Then::Quiet,
            half_after: None,
            comment_every: None,
            crlf: false,
            retry_ms: None,
            close_delimited: false,
        })
    }

    fn from_query(req: &Request) -> Result<Self, RequestError> {
        let then = match req.head.query("then") {
            None | Some("quiet") => Then::Quiet,
            Some("close") => Then::Close,
            Some("hang") => Then::Hang,
            Some(_) => return Err(RequestError::BadParam("then")),
        };
        let close_delimited = match req.head.query("framing") {
            None | Some("chunked") => false,
            Some("close") => true,
            Some(_) => return Err(RequestError::BadParam("framing")),
        };
        Ok(Self {
            events: req.query_num("events")?.unwrap_or(3),
            interval: Duration::from_millis(req.query_num("interval_ms")?.unwrap_or(0)),
            payload: Payload::Stamped {
                size: req.query_num("size")?.unwrap_or(0),
            },
            then,
            half_after: req.query_num("half_after")?,
            comment_every: req
                .query_num("comment_every_ms")?
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis),
            crlf: req.head.query("crlf") == Some("1"),
            retry_ms: req.query_num("retry_ms")?,
            close_delimited,
        })
    }

    fn newline(&self) -> &'static str {
        if self.crlf {
            "\r\n"
        } else {
            "\n"
        }
    }

    /// A block of `field: value` lines plus the blank line that dispatches it; multi-line
    /// values become one field line per line, as SSE requires.
    fn block(&self, fields: &[(&str, &str)]) -> Vec<u8> {
        let nl = self.newline();
        let mut out = String::new();
        for (field, value) in fields {
            for line in value.split('\n') {
                out.push_str(&format!("{field}: {}{nl}", line.trim_end_matches('\r')));
            }
        }
        out.push_str(nl);
        out.into_bytes()
    }

    fn event(&self, n: u64, stats: &UpstreamStats) -> Vec<u8> {
        let data = match &self.payload {
            Payload::Demo { user } => serde_json::json!({ "n": n, "user": user }).to_string(),
            Payload::Stamped { size } => {
                let mut data = format!("{n} {}", stats.now_ns());
                if data.len() < *size {
                    data.push(' ');
                    data.extend(std::iter::repeat_n('x', size.saturating_sub(data.len())));
                }
                data
            }
        };
        self.block(&[("id", &n.to_string()), ("data", &data)])
    }

    /// The blocks before the numbered events: `retry`, the echoed POST body, the resume marker.
    fn preamble(&self, req: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(ms) = self.retry_ms {
            out.extend(self.block(&[("retry", &ms.to_string())]));
        }
        if req.head.method == "POST" {
            out.extend(self.block(&[
                ("event", "body"),
                ("data", &String::from_utf8_lossy(&req.body)),
            ]));
        }
        if let Some(last) = req.head.header("last-event-id") {
            out.extend(self.block(&[("event", "resume"), ("data", last)]));
        }
        out
    }

    /// Writes the script; `Ok` means "end the body now", `Err` means the peer is gone.
    async fn play<W: AsyncWrite + Unpin>(
        &self,
        body: &mut BodyWriter<W>,
        req: &Request,
        stats: &UpstreamStats,
    ) -> io::Result<()> {
        body.send(&self.preamble(req)).await?;
        for n in 1..=self.events {
            if n > 1 {
                tokio::time::sleep(self.interval).await;
            }
            let event = self.event(n, stats);
            if self.half_after == Some(n - 1) {
                body.send(&event[..event.len().div_ceil(2)]).await?;
                // Anything more, even a comment, would complete or corrupt the half event.
                tokio::time::sleep(QUIET_LIMIT).await;
                return Ok(());
            }
            body.send(&event).await?;
        }
        if self.then == Then::Close {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + QUIET_LIMIT;
        match self.comment_every {
            Some(every) => {
                let comment = format!(": upstream{}", self.newline());
                while tokio::time::Instant::now() + every < deadline {
                    tokio::time::sleep(every).await;
                    body.send(comment.as_bytes()).await?;
                }
            }
            None => tokio::time::sleep_until(deadline).await,
        }
        Ok(())
    }
}

fn echo_json(req: &Request) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in &req.head.headers {
        let value = serde_json::Value::String(value.clone());
        match headers.get_mut(name) {
            Some(serde_json::Value::Array(values)) => values.push(value),
            Some(first) => *first = serde_json::Value::Array(vec![first.clone(), value]),
            None => {
                headers.insert(name.clone(), value);
            }
        }
    }
    serde_json::json!({
        "method": req.head.method,
        "target": req.head.target,
        "headers": headers,
        "body": String::from_utf8_lossy(&req.body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    async fn start() -> (SocketAddr, Arc<UpstreamStats>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = Arc::new(UpstreamStats::new());
        tokio::spawn(serve(listener, Arc::clone(&stats)));
        (addr, stats)
    }

    /// Sends raw bytes and reads until the server closes (tests ask for `Connection: close`).
    async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(raw).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("server closes in time")
            .expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    fn body_of(resp: &str) -> &str {
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Reads from `s` until `raw` contains `needle`, returning everything read so far.
    async fn read_until(s: &mut TcpStream, raw: &mut Vec<u8>, needle: &str) {
        let found = tokio::time::timeout(Duration::from_secs(5), async {
            while !String::from_utf8_lossy(raw).contains(needle) {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.expect("read");
                assert!(
                    n > 0,
                    "eof before {needle:?}; got {:?}",
                    String::from_utf8_lossy(raw)
                );
                raw.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "timed out waiting for {needle:?}; got {:?}",
            String::from_utf8_lossy(raw)
        );
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn first_segment_groups_by_leading_path_segment() {
        assert_eq!(first_segment("/echo/a/b?x=1"), "/echo");
        assert_eq!(first_segment("/echo?x=/y"), "/echo");
        assert_eq!(first_segment("/"), "/");
        assert_eq!(first_segment("/demo/events"), "/demo");
    }

    #[tokio::test]
    async fn echo_reports_target_headers_and_body_and_counts_hits() {
        let (addr, stats) = start().await;
        let resp = exchange(
            addr,
            b"POST /echo/x?access_token=t&a=%2F HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nCookie: b=2\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        let json: serde_json::Value = serde_json::from_str(body_of(&resp)).expect("json");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["target"], "/echo/x?access_token=t&a=%2F");
        assert_eq!(json["headers"]["host"], "h");
        assert_eq!(json["headers"]["cookie"], serde_json::json!(["a=1", "b=2"]));
        assert_eq!(json["body"], "hello");
        assert_eq!(stats.hits("/echo"), 1);
        assert_eq!(stats.hits("/sse"), 0);
        assert_eq!(stats.total(), 1);
        let last = stats.last_request("/echo").expect("recorded");
        assert_eq!(last.header("COOKIE"), Some("a=1"));
    }

    #[tokio::test]
    async fn keep_alive_serves_pipelined_requests_and_reads_chunked_bodies() {
        let (addr, stats) = start().await;
        let resp = exchange(
            addr,
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n\
              GET /echo/second HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(resp.matches("HTTP/1.1 200 OK").count(), 2, "{resp}");
        assert!(resp.contains(r#""body":"abcde""#), "{resp}");
        assert!(resp.contains(r#""target":"/echo/second""#), "{resp}");
        assert_eq!(stats.hits("/echo"), 2);
    }

    #[tokio::test]
    async fn broken_requests_get_client_errors() {
        let (addr, _) = start().await;
        let resp = exchange(
            addr,
            b"GET /echo HTTP/1.1\r\nHost: h\r\nContent-Length: nope\r\n\r\n",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
        let resp = exchange(addr, b"GET /echo HTTP/1.1\r\nHo st: h\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
        let mut huge = b"GET /echo HTTP/1.1\r\nX-Big: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 10));
        huge.extend_from_slice(b"\r\n\r\n");
        let resp = exchange(addr, &huge).await;
        assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
        let resp = exchange(
            addr,
            b"GET /sse?then=maybe HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            resp.starts_with("HTTP/1.1 400 ") && resp.contains("`then`"),
            "{resp}"
        );
    }

    #[tokio::test]
    async fn helper_endpoints() {
        let (addr, _) = start().await;
        let resp = exchange(
            addr,
            b"GET /status/503 HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 503 "), "{resp}");
        assert_eq!(body_of(&resp), SECRET_ERROR_BODY);
        let resp = exchange(
            addr,
            b"GET /status/204 HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            resp.starts_with("HTTP/1.1 204 ") && body_of(&resp).is_empty(),
            "{resp}"
        );
        let resp = exchange(
            addr,
            b"GET /legacy-cors HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            resp.contains("Access-Control-Allow-Origin: *\r\n"),
            "{resp}"
        );
        assert!(
            resp.contains("Access-Control-Allow-Credentials: true\r\n"),
            "{resp}"
        );
        let resp = exchange(
            addr,
            b"GET /big?bytes=100000 HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(resp.contains("Content-Length: 100000\r\n"), "{resp}");
        assert_eq!(body_of(&resp).len(), 100_000);
        let begun = Instant::now();
        let resp = exchange(
            addr,
            b"GET /slow?ms=150 HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(begun.elapsed() >= Duration::from_millis(150), "{resp}");
        for page in ["/", "/demo/page"] {
            let resp = exchange(
                addr,
                format!("GET {page} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await;
            assert!(
                resp.contains("text/html") && resp.contains("EventSource"),
                "{resp}"
            );
        }
        let resp = exchange(addr, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 404 "), "{resp}");
    }

    #[tokio::test]
    async fn scripted_sse_writes_preamble_events_and_closes() {
        let (addr, stats) = start().await;
        let begun = Instant::now();
        let resp = exchange(
            addr,
            b"POST /sse?events=2&size=40&then=close&retry_ms=1500 HTTP/1.1\r\nLast-Event-ID: 7\r\nContent-Length: 8\r\n\r\nline1\nl2",
        )
        .await;
        let (head, body) = resp.split_once("\r\n\r\n").expect("head");
        assert!(head.contains("Content-Type: text/event-stream"), "{head}");
        assert!(head.contains("Cache-Control: no-cache"), "{head}");
        assert!(
            head.contains("Transfer-Encoding: chunked") && !head.contains("Content-Length"),
            "{head}"
        );
        assert!(body.ends_with("0\r\n\r\n"), "{body:?}");
        let retry = body.find("retry: 1500\n\n").expect("retry block");
        let posted = body
            .find("event: body\ndata: line1\ndata: l2\n\n")
            .expect("body block");
        let resume = body
            .find("event: resume\ndata: 7\n\n")
            .expect("resume block");
        let first = body.find("id: 1\ndata: 1 ").expect("event 1");
        assert!(
            retry < posted && posted < resume && resume < first,
            "{body:?}"
        );
        let line = body[first..].lines().nth(1).expect("data line");
        let ns: u64 = line
            .split(' ')
            .nth(2)
            .expect("ns")
            .parse()
            .expect("ns number");
        assert!(stats.instant_of(ns) >= begun && stats.instant_of(ns) <= Instant::now());
        assert_eq!(line.len(), "data: ".len() + 40, "{line:?}");
        assert!(
            body.contains("id: 2\ndata: 2 ") && !body.contains("id: 3"),
            "{body:?}"
        );
        assert_eq!(stats.open_streams(), 0);
        assert_eq!(stats.closed_by_client(), 0);
    }

    #[tokio::test]
    async fn crlf_and_close_delimited_framing() {
        let (addr, _) = start().await;
        let resp = exchange(
            addr,
            b"GET /sse?events=1&crlf=1&then=close&framing=close HTTP/1.1\r\n\r\n",
        )
        .await;
        let (head, body) = resp.split_once("\r\n\r\n").expect("head");
        assert!(!head.contains("Transfer-Encoding"), "{head}");
        assert!(
            body.starts_with("id: 1\r\ndata: 1 ") && body.ends_with("\r\n\r\n"),
            "{body:?}"
        );
        assert!(!body.contains("\r\n0\r\n"), "{body:?}");
    }

    #[tokio::test]
    async fn scripted_status_answers_json_instead_of_a_stream() {
        let (addr, stats) = start().await;
        let resp = exchange(
            addr,
            b"GET /sse?status=401 HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            resp.starts_with("HTTP/1.1 401 ") && resp.contains("application/json"),
            "{resp}"
        );
        assert_eq!(stats.open_streams(), 0);
    }

    #[tokio::test]
    async fn quiet_stream_notices_the_peer_leaving_promptly() {
        let (addr, stats) = start().await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /sse?events=1 HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        read_until(&mut s, &mut raw, "id: 1\n").await;
        assert_eq!(stats.open_streams(), 1);
        drop(s);
        wait_for("open_streams drop", || stats.open_streams() == 0).await;
        assert_eq!(stats.closed_by_client(), 1);
    }

    #[tokio::test]
    async fn comments_keep_flowing_while_quiet() {
        let (addr, _) = start().await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /sse?events=1&comment_every_ms=20 HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        read_until(&mut s, &mut raw, ": upstream\n\r\n").await;
        read_until(&mut s, &mut raw, ": upstream\n\r\nb\r\n: upstream\n").await;
    }

    #[tokio::test]
    async fn half_sent_event_stops_mid_event() {
        let (addr, stats) = start().await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /sse?events=3&half_after=1&size=64 HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        read_until(&mut s, &mut raw, "id: 2\n").await;
        // Take whatever else of the half event is in flight, then expect silence.
        let mut more = [0u8; 4096];
        while let Ok(read) =
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut more)).await
        {
            let n = read.expect("read");
            assert!(n > 0, "stream stays open after the half event");
            raw.extend_from_slice(&more[..n]);
        }
        let text = String::from_utf8_lossy(&raw);
        let tail = &text[text.find("id: 2\n").expect("event 2")..];
        assert!(
            tail.trim_end_matches("\r\n").len() < "id: 2\ndata: ".len() + 64,
            "{tail:?}"
        );
        assert!(!tail.contains("\n\n"), "event 2 never completes: {tail:?}");
        assert_eq!(stats.open_streams(), 1);
    }

    /// A `/broadcast` connection named `name`, its response head read.
    async fn join_broadcast_as(
        addr: SocketAddr,
        query: &str,
        recv_buffer: Option<u32>,
    ) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        }
        let mut s = socket.connect(addr).await.expect("connect");
        let req = format!("GET /broadcast?{query} HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        read_until(&mut s, &mut raw, "\r\n\r\n").await;
        s
    }

    #[tokio::test]
    async fn broadcast_sends_every_event_to_every_connection_and_times_each_write() {
        let (addr, stats) = start().await;
        let mut a = join_broadcast_as(addr, "interval_ms=5&name=a", None).await;
        // The first connection set the pace: b's interval is ignored.
        let mut b = join_broadcast_as(addr, "interval_ms=500&name=b", None).await;
        let mut raw_a = Vec::new();
        let mut raw_b = Vec::new();
        read_until(&mut a, &mut raw_a, "id: 20\n").await;
        read_until(&mut b, &mut raw_b, "id: 20\n").await;
        let a = stats.broadcast_writes("a").expect("writes to a");
        let b = stats.broadcast_writes("b").expect("writes to b");
        assert!(a.events >= 19 && b.events >= 19, "{a:?} {b:?}");
        assert!(
            stats.broadcast_longest_write() < Duration::from_secs(1),
            "both read: no write waits"
        );
        assert_eq!(stats.open_streams(), 2);
    }

    #[tokio::test]
    async fn broadcast_is_one_loop_that_a_connection_reading_nothing_holds_back() {
        let (addr, stats) = start().await;
        let mut live = join_broadcast_as(addr, "interval_ms=1&size=16384&name=live", None).await;
        // Reads nothing, through a small receive window: the loop's write to it soon waits.
        let _stuck = join_broadcast_as(addr, "name=stuck", Some(4096)).await;
        let held_back = tokio::time::timeout(Duration::from_secs(10), async {
            let mut scratch = vec![0u8; 64 * 1024];
            loop {
                match tokio::time::timeout(Duration::from_millis(500), live.read(&mut scratch))
                    .await
                {
                    Err(_) => return,
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(other) => panic!("the live connection ended: {other:?}"),
                }
            }
        })
        .await;
        assert!(held_back.is_ok(), "the live connection never went quiet");
        let stuck = stats.broadcast_writes("stuck").expect("writes to stuck");
        assert!(stuck.longest >= Duration::from_millis(500), "{stuck:?}");
        assert!(stats.broadcast_longest_write() >= Duration::from_millis(500));
    }

    #[tokio::test]
    async fn demo_events_carry_the_forwarded_user() {
        let (addr, _) = start().await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /demo/events HTTP/1.1\r\nX-Streamguard-User: alice\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        read_until(&mut s, &mut raw, "\n\n").await;
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.contains(
                r#"id: 1
data: {"n":1,"user":"alice"}"#
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn websocket_echoes_and_records_the_handshake() {
        let (addr, stats) = start().await;
        let mut req = format!("ws://{addr}/ws/room?x=1")
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("origin", "https://app.example".parse().expect("value"));
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "chat, other".parse().expect("value"),
        );
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp)
            .await
            .expect("handshake");
        assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
        ws.send(Message::text("hi")).await.expect("send");
        assert_eq!(
            ws.next().await.expect("reply").expect("ok"),
            Message::text("hi")
        );
        ws.send(Message::binary(vec![1, 2, 3])).await.expect("send");
        assert_eq!(
            ws.next().await.expect("reply").expect("ok"),
            Message::binary(vec![1, 2, 3])
        );
        ws.send(Message::Ping(b"p".to_vec().into()))
            .await
            .expect("ping");
        assert_eq!(
            ws.next().await.expect("reply").expect("ok"),
            Message::Pong(b"p".to_vec().into())
        );
        assert_eq!(stats.open_websockets(), 1);
        let shake = stats.last_ws_handshake().expect("recorded");
        assert_eq!(shake.target, "/ws/room?x=1");
        assert_eq!(shake.header("origin"), Some("https://app.example"));
        assert!(stats
            .last_ws_headers()
            .iter()
            .any(|(n, v)| n == "sec-websocket-protocol" && v == "chat, other"));
        assert_eq!(stats.hits("/ws"), 1);
        ws.close(None).await.expect("close");
        wait_for("websocket close", || stats.open_websockets() == 0).await;
        assert_eq!(stats.closed_by_client(), 1);
    }

    #[tokio::test]
    async fn websocket_upgrade_elsewhere_or_malformed_is_refused() {
        let (addr, _) = start().await;
        let resp = exchange(
            addr,
            b"GET /echo HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 404 "), "{resp}");
        let resp = exchange(addr, b"GET /demo/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n").await;
        assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
        let resp = exchange(
            addr,
            b"GET /demo/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        )
        .await;
        assert!(
            resp.starts_with("HTTP/1.1 426 ") && resp.contains("Sec-WebSocket-Version: 13"),
            "{resp}"
        );
    }
}
