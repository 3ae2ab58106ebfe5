//! The upstream side of a supervised stream: a lean HTTP/1.1 client connection.
//!
//! Streams bypass Pingora's built-in relay (it has no timer branch, see
//! `shared/design/pingora-0.9-notes.md`), and they bypass its upstream client too: that client
//! keeps a 64 KiB body buffer per connection, which dominated the memory of an idle stream.
//! [`UpstreamConn`] holds a socket and one small read buffer that is released whenever it is
//! empty, so an idle stream costs almost nothing on this side.
//!
//! There is no read timeout: a stream may stay quiet for hours, and the relay loops, not socket
//! timeouts, decide when quiet becomes stale. A connection carries one exchange and is closed
//! when the stream ends; it is never pooled.

mod chunked;
mod head;

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::http_req_header_to_wire;
use pingora::ErrorType;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::UpstreamConfig;
use chunked::{ChunkedDecoder, Decoded};
use head::{BodyFraming, RequestFacts};

/// Initial size of the response-head buffer; it grows up to [`MAX_HEAD`].
const HEAD_BUF: usize = 1024;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Room reserved for one body read: a busy stream reads at most this much per call.
const READ_BUF: usize = 8 * 1024;
/// Leftover bytes (a partial chunk-size line, say) sitting in a buffer with more than this much
/// spare room are moved to an exact-size buffer before waiting, so an idle stream pins no
/// read-sized allocation.
const MAX_IDLE_SLACK: usize = 512;

/// Why the upstream side of a stream could not be set up or failed later.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("writing the request upstream failed: {0}")]
    Write(String),
    #[error("reading the response head from the upstream failed: {0}")]
    Read(String),
    #[error("reading the response body from the upstream failed: {0}")]
    Body(String),
}

impl UpstreamError {
    /// Connection refused and timeouts are "the upstream is down" (502), anything later is a
    /// failure mid-exchange; both get the same fixed body, only logs differ.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

/// Dials the configured upstream for stream requests.
pub struct StreamConnector {
    address: std::net::SocketAddr,
    connect_timeout: Duration,
    write_timeout: Duration,
}

impl StreamConnector {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        StreamConnector {
            address: cfg.address,
            connect_timeout: cfg.connect_timeout,
            write_timeout: cfg.write_timeout,
        }
    }

    /// Connects and writes the request head; the body (if any) follows with
    /// [`UpstreamConn::write_body`] and [`UpstreamConn::finish_body`].
    pub async fn open(&self, req: &RequestHeader) -> Result<UpstreamConn, UpstreamError> {
        let wire = http_req_header_to_wire(req).ok_or_else(|| {
            UpstreamError::Write(
                "request line has forbidden bytes or an unsupported version".into(),
            )
        })?;
        let socket = if self.address.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| UpstreamError::Connect(io_kind(&e)))?;
        // Stream messages are small and latency matters more than packet count.
        let _ = socket.set_nodelay(true);
        // The handshake's last ACK then waits for the request and rides on it, as HAProxy's
        // tcp-smart-connect does: one packet less per stream setup, whose delivery (on the
        // same host, the upstream's receive path runs on this core) the proxy would pay for.
        let _ = SockRef::from(&socket).set_tcp_quickack(false);
        let stream =
            match tokio::time::timeout(self.connect_timeout, socket.connect(self.address)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(UpstreamError::Connect(io_kind(&e))),
                Err(_) => return Err(UpstreamError::Connect("connect timed out".into())),
            };
        let mut conn = UpstreamConn {
            stream,
            buf: BytesMut::new(),
            req_body: RequestBody::of(req),
            facts: RequestFacts {
                is_head: req.method == http::Method::HEAD,
                wants_upgrade: req.version == http::Version::HTTP_11
                    && req.headers.contains_key(header::UPGRADE),
            },
            resp: None,
            body: Body::NotRead,
            eof: false,
            write_timeout: self.write_timeout,
        };
        conn.write_all(&wire).await?;
        // Back to ACKing at once: delayed ACKs would hold back an upstream that writes its
        // events with Nagle's algorithm on.
        let _ = SockRef::from(&conn.stream).set_tcp_quickack(true);
        Ok(conn)
    }
}

/// How the request body is framed, from the request's own headers; what is left to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestBody {
    /// No body (no framing headers, or after `finish_body`).
    None,
    /// Content-Length: bytes still to send.
    Length(u64),
    Chunked,
}

impl RequestBody {
    fn of(req: &RequestHeader) -> Self {
        let te = req
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back();
        if let Some(te) = te {
            let last = te
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default();
            if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return RequestBody::Chunked;
            }
        }
        // The downstream session validated Content-Length already; an unusable one means none.
        req.headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&n| n > 0)
            .map_or(RequestBody::None, RequestBody::Length)
    }
}

/// Where the response is.
#[derive(Debug)]
enum Body {
    /// The head has not been read.
    NotRead,
    Upgraded,
    Chunked(ChunkedDecoder),
    /// Content-Length: bytes still to come.
    Length(u64),
    UntilClose,
    /// The body is complete (or there is none).
    Done,
}

/// One upstream HTTP/1.1 connection carrying one stream.
pub struct UpstreamConn {
    stream: TcpStream,
    /// Read bytes not yet returned: the head while it is read, then undecoded body bytes.
    /// Empty (and unallocated) while the stream idles.
    buf: BytesMut,
    req_body: RequestBody,
    facts: RequestFacts,
    resp: Option<Box<ResponseHeader>>,
    body: Body,
    /// The upstream closed its side.
    eof: bool,
    /// An app that takes none of what the proxy forwards (WebSocket messages, a POST body) for
    /// this long is treated as gone: otherwise one hung app socket would stall its relay loop
    /// forever (`upstream.write_timeout`).
    write_timeout: Duration,
}

impl UpstreamConn {
    /// Forwards one request-body chunk, framed as the request head said.
    pub async fn write_body(&mut self, chunk: &[u8]) -> Result<(), UpstreamError> {
        if chunk.is_empty() {
            // An empty chunk would read as the chunked terminator.
            return Ok(());
        }
        match self.req_body {
            RequestBody::None => Err(UpstreamError::Write(
                "request body without Content-Length or chunked encoding".into(),
            )),
            RequestBody::Length(left) => {
                if chunk.len() as u64 > left {
                    return Err(UpstreamError::Write(
                        "request body longer than its Content-Length".into(),
                    ));
                }
                self.req_body = RequestBody::Length(left - chunk.len() as u64);
                self.write_all(chunk).await
            }
            RequestBody::Chunked => {
                // One write per chunk: with nodelay on, three writes could be three packets.
                let mut framed = Vec::with_capacity(chunk.len() + 20);
                framed.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                framed.extend_from_slice(chunk);
                framed.extend_from_slice(b"\r\n");
                self.write_all(&framed).await
            }
        }
    }

    /// Ends the request body: the chunked terminator, or a check that all of a
    /// Content-Length was sent. Calling it again does nothing.
    pub async fn finish_body(&mut self) -> Result<(), UpstreamError> {
        match std::mem::replace(&mut self.req_body, RequestBody::None) {
            RequestBody::None | RequestBody::Length(0) => Ok(()),
            RequestBody::Length(_) => Err(UpstreamError::Write(
                "request body shorter than its Content-Length".into(),
            )),
            RequestBody::Chunked => self.write_all(b"0\r\n\r\n").await,
        }
    }

    /// Reads the response head, skipping 1xx informational responses other than 101. Bytes
    /// after the head stay buffered as the start of the body.
    pub async fn read_response_head(&mut self) -> Result<(), UpstreamError> {
        if !matches!(self.body, Body::NotRead) {
            return Ok(());
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(HEAD_BUF);
        }
        loop {
            match head::parse(&self.buf, self.facts).map_err(UpstreamError::Read)? {
                Some(parsed) => {
                    let _ = self.buf.split_to(parsed.len);
                    let code = parsed.header.status.as_u16();
                    if (100..200).contains(&code) && code != 101 {
                        continue;
                    }
                    self.body = match parsed.framing {
                        BodyFraming::Upgraded => Body::Upgraded,
                        BodyFraming::Empty | BodyFraming::Length(0) => Body::Done,
                        BodyFraming::Chunked => Body::Chunked(ChunkedDecoder::new()),
                        BodyFraming::Length(n) => Body::Length(n),
                        BodyFraming::UntilClose => Body::UntilClose,
                    };
                    self.resp = Some(Box::new(parsed.header));
                    self.release_idle_buf();
                    return Ok(());
                }
                None if self.buf.len() >= MAX_HEAD => {
                    return Err(UpstreamError::Read(format!(
                        "response head larger than {MAX_HEAD} bytes"
                    )));
                }
                None if self.eof => {
                    return Err(UpstreamError::Read(format!(
                        "connection closed after {} bytes of the head",
                        self.buf.len()
                    )));
                }
                None => {
                    // Grow by doubling, never past the limit (plus one byte to detect it).
                    if self.buf.len() == self.buf.capacity() {
                        let target = (self.buf.capacity() * 2).clamp(HEAD_BUF, MAX_HEAD);
                        self.buf.reserve(target - self.buf.len());
                    }
                    let room = (MAX_HEAD - self.buf.len()).max(1);
                    let n = (&mut self.stream)
                        .take(room as u64)
                        .read_buf(&mut self.buf)
                        .await
                        .map_err(|e| UpstreamError::Read(io_kind(&e)))?;
                    if n == 0 {
                        self.eof = true;
                    }
                }
            }
        }
    }

    /// The final response head, once read.
    pub fn resp_header(&self) -> Option<&ResponseHeader> {
        self.resp.as_deref()
    }

    /// Hands the final response head over to the caller (the connection keeps only what it
    /// needs to frame the body).
    pub fn take_resp_header(&mut self) -> Option<Box<ResponseHeader>> {
        self.resp.take()
    }

    /// The next piece of the response body (after a 101, the next raw bytes), or `Ok(None)` at
    /// its end. Cancel-safe: the only await is for readability, and decoded data is returned
    /// the moment it leaves the buffer, so a dropped call loses nothing.
    pub async fn read_body_bytes(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        loop {
            if let Some(step) = self.decode_buffered()? {
                return Ok(step);
            }
            if self.eof {
                return match self.body {
                    Body::Upgraded | Body::UntilClose => {
                        self.body = Body::Done;
                        Ok(None)
                    }
                    _ => Err(UpstreamError::Body(
                        "connection closed before the body's end".into(),
                    )),
                };
            }
            self.fill().await?;
        }
    }

    /// Decodes what is buffered: `Some(Some(data))`, `Some(None)` at the body's end, or `None`
    /// when more input is needed.
    fn decode_buffered(&mut self) -> Result<Option<Option<Bytes>>, UpstreamError> {
        let step = match &mut self.body {
            Body::NotRead => {
                return Err(UpstreamError::Body("the response head was not read".into()))
            }
            Body::Done => Some(None),
            Body::Upgraded | Body::UntilClose => {
                (!self.buf.is_empty()).then(|| Some(self.buf.split().freeze()))
            }
            Body::Length(left) => {
                if self.buf.is_empty() {
                    None
                } else {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    let data = self.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        self.body = Body::Done;
                    }
                    Some(Some(data))
                }
            }
            Body::Chunked(dec) => match dec.decode(&mut self.buf) {
                Ok(Decoded::Data(data)) => Some(Some(data)),
                Ok(Decoded::End) => {
                    self.body = Body::Done;
                    Some(None)
                }
                Ok(Decoded::NeedMore) => None,
                Err(e) => return Err(UpstreamError::Body(e.to_string())),
            },
        };
        if matches!(self.body, Body::Done) {
            // Whatever follows the body is not ours to read.
            self.buf = BytesMut::new();
        }
        Ok(step)
    }

    /// Waits until the socket is readable, then reads at most [`READ_BUF`] bytes. The buffer is
    /// only allocated once there is something to read, so a waiting stream holds none.
    async fn fill(&mut self) -> Result<(), UpstreamError> {
        loop {
            self.release_idle_buf();
            self.stream
                .readable()
                .await
                .map_err(|e| UpstreamError::Body(io_kind(&e)))?;
            self.buf.reserve(READ_BUF);
            let mut got = None;
            // A read that returns less than it asked for drained the socket: it reports
            // WouldBlock to `try_io` so the readiness is cleared now, instead of the next read
            // making a system call only to learn that. New data raises a fresh edge either way.
            let read = self.stream.try_io(Interest::READABLE, || {
                let room = self.buf.capacity() - self.buf.len();
                let n = self.stream.try_read_buf(&mut self.buf)?;
                got = Some(n);
                if n > 0 && n < room {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match (got, read) {
                (Some(0), _) => {
                    self.eof = true;
                    return Ok(());
                }
                (Some(_), _) => return Ok(()),
                (None, Ok(())) => continue,
                (None, Err(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                (None, Err(e)) => return Err(UpstreamError::Body(io_kind(&e))),
            }
        }
    }

    /// Drops the read buffer's allocation when it holds nothing, or moves a few leftover bytes
    /// to an exact-size one.
    fn release_idle_buf(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        } else if self.buf.capacity() - self.buf.len() > MAX_IDLE_SLACK {
            self.buf = BytesMut::from(&self.buf[..]);
        }
    }

    /// Writes bytes as they are, after a 101: the upgraded (WebSocket) direction.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        if !matches!(self.body, Body::Upgraded) {
            // Unframed bytes on a plain HTTP connection could be read as another request.
            return Err(UpstreamError::Write(
                "the connection was not upgraded".into(),
            ));
        }
        self.write_all(bytes).await
    }

    /// Closes the sending side (the upstream sees EOF); errors are irrelevant at this point.
    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// The bound is on a stall, not on the whole write: an app that keeps reading, however
    /// slowly, is never cut off in the middle of a large message.
    async fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), UpstreamError> {
        while !bytes.is_empty() {
            match tokio::time::timeout(self.write_timeout, self.stream.write(bytes)).await {
                Ok(Ok(0)) => return Err(UpstreamError::Write("the app closed its side".into())),
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(UpstreamError::Write(io_kind(&e))),
                Err(_) => return Err(UpstreamError::Write("write timed out".into())),
            }
        }
        Ok(())
    }
}

/// A short error description for logs: the error type and Pingora's context, never request data.
pub fn describe(e: &pingora::Error) -> String {
    match e.etype() {
        ErrorType::ConnectTimedout => "connect timed out".to_string(),
        other => other.as_str().to_string(),
    }
}

/// An I/O error for logs: its kind, never data.
fn io_kind(e: &io::Error) -> String {
    e.kind().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A scripted upstream on a real socket: it reads the request head (and `body_len` body
    /// bytes), then writes `script` piece by piece with a pause between pieces.
    async fn upstream(
        script: Vec<&'static [u8]>,
        pause: Duration,
    ) -> (StreamConnector, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = UpstreamConfig {
            address: listener.local_addr().unwrap(),
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(60),
            hide_error_bodies: false,
            hide_headers: Vec::new(),
        };
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "request head never completed");
                seen.extend_from_slice(&buf[..n]);
            }
            for piece in script {
                sock.write_all(piece).await.unwrap();
                tokio::time::sleep(pause).await;
            }
            // Whatever the client sends afterwards (a body, upgraded bytes) until it closes.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            seen
        });
        (StreamConnector::new(&cfg), task)
    }

    fn get(path: &str) -> RequestHeader {
        let mut req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        req.insert_header("Host", "app").unwrap();
        req
    }

    async fn body_of(conn: &mut UpstreamConn) -> Result<Vec<u8>, UpstreamError> {
        let mut body = Vec::new();
        while let Some(piece) = conn.read_body_bytes().await? {
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    #[tokio::test]
    async fn reads_are_cancel_safe_inside_select() {
        // Bytes trickle in while a timer keeps winning the select: every byte must still arrive.
        let script: Vec<&'static [u8]> = vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5\r\nhel",
            b"lo\r\n",
            b"6",
            b"\r\n world\r",
            b"\n0\r\n\r\n",
        ];
        let (connector, _up) = upstream(script, Duration::from_millis(15)).await;
        let mut conn = connector.open(&get("/sse")).await.unwrap();
        conn.finish_body().await.unwrap();
        conn.read_response_head().await.unwrap();
        let mut body = Vec::new();
        let mut cancelled = 0;
        loop {
            tokio::select! {
                read = conn.read_body_bytes() => match read.unwrap() {
                    Some(piece) => body.extend_from_slice(&piece),
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(2)) => cancelled += 1,
            }
        }
        assert_eq!(body, b"hello world");
        assert!(cancelled > 0, "the timer never interrupted a read");
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_read_buffer() {
        let script: Vec<&'static [u8]> = vec![
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n",
            b"data: 2\n\n",
        ];
        let (connector, _up) = upstream(script, Duration::from_millis(300)).await;
        let mut conn = connector.open(&get("/sse")).await.unwrap();
        conn.read_response_head().await.unwrap();
        assert_eq!(
            conn.read_body_bytes().await.unwrap().as_deref(),
            Some(&b"data: 1\n\n"[..])
        );
        // Waiting for the next event (cut short here) must not keep a read-sized allocation.
        let waited = tokio::time::timeout(Duration::from_millis(50), conn.read_body_bytes()).await;
        assert!(waited.is_err(), "the second event came too early");
        assert_eq!(conn.buf.capacity(), 0);
        assert_eq!(
            conn.read_body_bytes().await.unwrap().as_deref(),
            Some(&b"data: 2\n\n"[..])
        );
    }

    #[tokio::test]
    async fn informational_responses_are_skipped_and_early_body_bytes_kept() {
        // Head, 100 Continue, final head and first body bytes all in one write.
        let script: Vec<&'static [u8]> = vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-A: b\r\n\r\n01234",
            b"56789 and bytes past the Content-Length",
        ];
        let (connector, _up) = upstream(script, Duration::from_millis(10)).await;
        let mut conn = connector.open(&get("/x")).await.unwrap();
        conn.read_response_head().await.unwrap();
        let head = conn.resp_header().unwrap();
        assert_eq!(head.status.as_u16(), 200);
        assert_eq!(head.headers.get("x-a").unwrap(), "b");
        assert_eq!(body_of(&mut conn).await.unwrap(), b"0123456789");
        assert!(conn.take_resp_header().is_some());
        assert!(conn.resp_header().is_none());
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_but_a_close_delimited_one_ends() {
        let script: Vec<&'static [u8]> = vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"];
        let (connector, _up) = upstream(script, Duration::ZERO).await;
        let mut conn = connector.open(&get("/x")).await.unwrap();
        conn.read_response_head().await.unwrap();
        conn.shutdown().await;
        assert!(matches!(
            body_of(&mut conn).await,
            Err(UpstreamError::Body(_))
        ));

        let script: Vec<&'static [u8]> = vec![b"HTTP/1.1 200 OK\r\n\r\nabc", b"def"];
        let (connector, _up) = upstream(script, Duration::from_millis(10)).await;
        let mut conn = connector.open(&get("/x")).await.unwrap();
        conn.read_response_head().await.unwrap();
        conn.shutdown().await;
        assert_eq!(body_of(&mut conn).await.unwrap(), b"abcdef");
    }

    #[tokio::test]
    async fn oversized_and_truncated_heads_are_read_errors() {
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() <= MAX_HEAD {
            huge.extend_from_slice(format!("X-Filler: {}\r\n", "a".repeat(1000)).as_bytes());
        }
        let huge: &'static [u8] = Box::leak(huge.into_boxed_slice());
        let (connector, _up) = upstream(vec![huge], Duration::ZERO).await;
        let mut conn = connector.open(&get("/x")).await.unwrap();
        let err = conn.read_response_head().await.unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");

        let (connector, _up) = upstream(vec![b"HTTP/1.1 200 OK\r\nX-A"], Duration::ZERO).await;
        let mut conn = connector.open(&get("/x")).await.unwrap();
        conn.shutdown().await;
        assert!(matches!(
            conn.read_response_head().await,
            Err(UpstreamError::Read(_))
        ));
    }

    #[tokio::test]
    async fn request_bodies_are_framed_as_their_head_says() {
        let script: Vec<&'static [u8]> = vec![b"HTTP/1.1 204 No Content\r\n\r\n"];
        let (connector, up) = upstream(script, Duration::ZERO).await;
        let mut req = RequestHeader::build("POST", b"/chat", None).unwrap();
        req.insert_header("Transfer-Encoding", "chunked").unwrap();
        let mut conn = connector.open(&req).await.unwrap();
        conn.write_body(b"hello").await.unwrap();
        // An empty piece must not end the body early.
        conn.write_body(b"").await.unwrap();
        conn.write_body(&[b'x'; 26]).await.unwrap();
        conn.finish_body().await.unwrap();
        conn.read_response_head().await.unwrap();
        assert_eq!(conn.read_body_bytes().await.unwrap(), None);
        // Raw bytes are refused on a connection that was not upgraded.
        assert!(conn.write_raw(b"GET / HTTP/1.1\r\n\r\n").await.is_err());
        conn.shutdown().await;
        let seen = up.await.unwrap();
        let body_start = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let x26 = String::from_utf8(vec![b'x'; 26]).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&seen[body_start..]),
            format!("5\r\nhello\r\n1a\r\n{x26}\r\n0\r\n\r\n")
        );

        let script: Vec<&'static [u8]> = vec![b"HTTP/1.1 204 No Content\r\n\r\n"];
        let (connector, _up) = upstream(script, Duration::ZERO).await;
        let mut req = RequestHeader::build("POST", b"/chat", None).unwrap();
        req.insert_header("Content-Length", "4").unwrap();
        let mut conn = connector.open(&req).await.unwrap();
        conn.write_body(b"abc").await.unwrap();
        assert!(
            conn.write_body(b"de").await.is_err(),
            "longer than Content-Length"
        );
        assert!(
            conn.finish_body().await.is_err(),
            "shorter than Content-Length"
        );
    }

    #[tokio::test]
    async fn after_101_bytes_flow_raw_both_ways() {
        let script: Vec<&'static [u8]> = vec![
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi",
            b"\x81\x01!",
        ];
        let (connector, up) = upstream(script, Duration::from_millis(10)).await;
        let mut req = get("/ws");
        req.insert_header("Upgrade", "websocket").unwrap();
        req.insert_header("Connection", "Upgrade").unwrap();
        let mut conn = connector.open(&req).await.unwrap();
        conn.finish_body().await.unwrap();
        conn.read_response_head().await.unwrap();
        assert_eq!(conn.resp_header().unwrap().status.as_u16(), 101);
        conn.write_raw(b"\x81\x82abcd").await.unwrap();
        let mut got = Vec::new();
        while got.len() < 7 {
            got.extend_from_slice(&conn.read_body_bytes().await.unwrap().unwrap());
        }
        assert_eq!(got, b"\x81\x02hi\x81\x01!");
        conn.shutdown().await;
        let seen = up.await.unwrap();
        assert!(seen.ends_with(b"\r\n\r\n\x81\x82abcd"));
        assert_eq!(conn.read_body_bytes().await.unwrap(), None);
    }

    /// An app on a real socket that takes `pace.0` bytes of the request every `pace.1`, or
    /// nothing at all, and a connector to it whose writes give up after 300 ms of stall.
    async fn app_reading(pace: Option<(usize, Duration)>) -> StreamConnector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connector = StreamConnector::new(&UpstreamConfig {
            address: listener.local_addr().unwrap(),
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_millis(300),
            response_timeout: Duration::from_secs(60),
            hide_error_bodies: false,
            hide_headers: Vec::new(),
        });
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            // A fixed receive buffer: autotuning could otherwise swallow the whole body.
            SockRef::from(&sock)
                .set_recv_buffer_size(256 << 10)
                .unwrap();
            let Some((bytes, every)) = pace else {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            };
            let mut buf = vec![0; bytes];
            loop {
                let mut taken = 0;
                while taken < bytes {
                    match sock.read(&mut buf[taken..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => taken += n,
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
        connector
    }

    async fn post(connector: &StreamConnector, body: usize) -> UpstreamConn {
        let mut req = RequestHeader::build("POST", b"/upload", None).unwrap();
        req.insert_header("Content-Length", body.to_string())
            .unwrap();
        connector.open(&req).await.unwrap()
    }

    #[tokio::test]
    async fn an_app_that_stops_reading_is_given_up_after_the_write_timeout() {
        // More than the sockets between proxy and app can hold.
        const BODY: usize = 64 << 20;
        let mut conn = post(&app_reading(None).await, BODY).await;
        let started = std::time::Instant::now();
        let err = conn.write_body(&vec![b'x'; BODY]).await.unwrap_err();
        let waited = started.elapsed();
        assert_eq!(
            err.to_string(),
            "writing the request upstream failed: write timed out"
        );
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(10),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_slow_app_that_keeps_reading_is_never_cut_off() {
        // 1 MiB every 50 ms: the whole write takes far longer than the 300 ms bound, but no
        // single stall comes near it.
        const BODY: usize = 32 << 20;
        let connector = app_reading(Some((1 << 20, Duration::from_millis(50)))).await;
        let mut conn = post(&connector, BODY).await;
        let started = std::time::Instant::now();
        conn.write_body(&vec![b'x'; BODY]).await.unwrap();
        let took = started.elapsed();
        assert!(
            took > Duration::from_millis(600),
            "the write never stalled: {took:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let connector = StreamConnector::new(&UpstreamConfig {
            address,
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(60),
            hide_error_bodies: false,
            hide_headers: Vec::new(),
        });
        let err = connector.open(&get("/")).await.err().unwrap();
        assert!(err.is_connect(), "{err}");
    }
}
