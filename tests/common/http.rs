//! Raw HTTP/1.1 over `TcpStream`, so tests see exactly what the proxy put on the wire (header
//! case and repeats, framing, timing) instead of what a client library chose to keep.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single helper call may wait before the test is declared stuck.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A complete response. Header names are lower-cased; order and repeats are kept.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Every value of `name`, e.g. each `Set-Cookie`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body text when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }
}

pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Builds a request head with `Host` and the given headers. Defaults in `defaults` are added
/// only when `headers` does not name them, so a test can override any of them.
pub fn request_head(
    method: &str,
    addr: SocketAddr,
    target: &str,
    defaults: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> String {
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    let host = addr.to_string();
    let given = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    for (name, value) in [("Host", host.as_str())].iter().chain(defaults) {
        if !given(name) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

impl Framing {
    pub fn of(status: u16, headers: &[(String, String)], head_request: bool) -> io::Result<Self> {
        if head_request || status < 200 || status == 204 || status == 304 {
            return Ok(Framing::Empty);
        }
        let chunked = headers.iter().any(|(n, v)| {
            n == "transfer-encoding"
                && v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("chunked"))
        });
        if chunked {
            return Ok(Framing::Chunked);
        }
        match header(headers, "content-length") {
            Some(v) => v
                .trim()
                .parse()
                .map(Framing::Length)
                .map_err(|_| invalid(format!("bad content-length {v:?}"))),
            None => Ok(Framing::UntilClose),
        }
    }
}

#[derive(Debug)]
enum ChunkState {
    /// Reading the `size[;ext]` line.
    Size(Vec<u8>),
    Data(usize),
    /// Reading the CRLF after chunk data.
    DataEnd,
    /// Reading trailer lines; the current line so far.
    Trailer(Vec<u8>),
    Done,
}

/// Incremental body decoder: feed it socket bytes, it hands out body bytes and says when the
/// body is complete (so bytes after it can belong to the next response).
#[derive(Debug)]
pub struct BodyDecoder {
    framing: Framing,
    left: usize,
    chunk: ChunkState,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Self {
            framing,
            left,
            chunk: ChunkState::Size(Vec::new()),
        }
    }

    pub fn is_done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => matches!(self.chunk, ChunkState::Done),
            Framing::UntilClose => false,
        }
    }

    /// Whether the peer closing the connection now would cut the body short.
    pub fn needs_more(&self) -> bool {
        !self.is_done() && self.framing != Framing::UntilClose
    }

    /// Decodes from `input` into `out`; returns how many input bytes were used.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        match self.framing {
            Framing::Empty => Ok(0),
            Framing::UntilClose => {
                out.extend_from_slice(input);
                Ok(input.len())
            }
            Framing::Length(_) => {
                let n = self.left.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.left -= n;
                Ok(n)
            }
            Framing::Chunked => self.feed_chunked(input, out),
        }
    }

    fn feed_chunked(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        let mut i = 0;
        while i < input.len() {
            match &mut self.chunk {
                ChunkState::Done => break,
                ChunkState::Data(left) => {
                    let n = (*left).min(input.len() - i);
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    *left -= n;
                    if *left == 0 {
                        self.chunk = ChunkState::DataEnd;
                    }
                }
                ChunkState::DataEnd => {
                    match input[i] {
                        b'\r' => {}
                        b'\n' => self.chunk = ChunkState::Size(Vec::new()),
                        other => {
                            return Err(invalid(format!(
                                "chunk data not followed by CRLF (got {other:#x})"
                            )))
                        }
                    }
                    i += 1;
                }
                ChunkState::Size(line) | ChunkState::Trailer(line) => {
                    let byte = input[i];
                    i += 1;
                    if byte != b'\n' {
                        line.push(byte);
                        continue;
                    }
                    let text = String::from_utf8_lossy(line)
                        .trim_end_matches('\r')
                        .to_owned();
                    self.chunk = if matches!(self.chunk, ChunkState::Trailer(_)) {
                        if text.is_empty() {
                            ChunkState::Done
                        } else {
                            ChunkState::Trailer(Vec::new())
                        }
                    } else {
                        let digits = text.split(';').next().unwrap_or_default().trim();
                        match usize::from_str_radix(digits, 16) {
                            Ok(0) => ChunkState::Trailer(Vec::new()),
                            Ok(n) => ChunkState::Data(n),
                            Err(_) => return Err(invalid(format!("bad chunk size line {text:?}"))),
                        }
                    };
                }
            }
        }
        Ok(i)
    }
}

/// Status, lower-cased headers, and the head's length in bytes.
pub type ResponseHead = (u16, Vec<(String, String)>, usize);

/// Parses a response head out of `buf`, or `None` if it is incomplete.
pub fn parse_response_head(buf: &[u8]) -> io::Result<Option<ResponseHead>> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    match resp
        .parse(buf)
        .map_err(|e| invalid(format!("bad response head: {e}")))?
    {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => {
            let headers = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            Ok(Some((resp.code.unwrap_or_default(), headers, len)))
        }
    }
}

/// Reads from `stream` into `buf` once, within `timeout`; `Ok(0)` is EOF.
pub async fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> io::Result<usize> {
    let mut piece = [0u8; 16 * 1024];
    let n = tokio::time::timeout(timeout, stream.read(&mut piece))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no data within {timeout:?}"),
            )
        })??;
    buf.extend_from_slice(&piece[..n]);
    Ok(n)
}

/// Reads a response head (skipping `100 Continue` and friends, but not `101`); the bytes after
/// the head stay in `buf`.
pub async fn read_response_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<(u16, Vec<(String, String)>)> {
    loop {
        if let Some((status, headers, len)) = parse_response_head(buf)? {
            buf.drain(..len);
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            return Ok((status, headers));
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(invalid("response head larger than 64 KiB"));
        }
        if read_some(stream, buf, IO_TIMEOUT).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before a response head; got {:?}",
                    String::from_utf8_lossy(buf)
                ),
            ));
        }
    }
}

/// A TCP connection with Nagle off, so timing measurements see writes as they happen.
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One client connection; several requests may go over it (keep-alive).
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            stream: connect(addr).await?,
            buf: Vec::new(),
        })
    }

    /// Writes `raw` (head and any body, exactly as given) and reads one response.
    pub async fn send(&mut self, raw: &[u8]) -> io::Result<Response> {
        self.stream.write_all(raw).await?;
        self.read_response(raw.starts_with(b"HEAD ")).await
    }

    pub async fn read_response(&mut self, head_request: bool) -> io::Result<Response> {
        let (status, headers) = read_response_head(&mut self.stream, &mut self.buf).await?;
        let mut decoder = BodyDecoder::new(Framing::of(status, &headers, head_request)?);
        let mut body = Vec::new();
        loop {
            let used = decoder.feed(&self.buf, &mut body)?;
            self.buf.drain(..used);
            if decoder.is_done() {
                break;
            }
            if read_some(&mut self.stream, &mut self.buf, IO_TIMEOUT).await? == 0 {
                if decoder.needs_more() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed mid-body",
                    ));
                }
                break;
            }
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Sends `raw` on a fresh connection and reads one response (see [`HttpConn::send`]).
pub async fn try_http_request(addr: SocketAddr, raw: &str) -> io::Result<Response> {
    HttpConn::connect(addr).await?.send(raw.as_bytes()).await
}

/// Like [`try_http_request`], failing the test on any I/O or framing error.
pub async fn http_request(addr: SocketAddr, raw: &str) -> Response {
    try_http_request(addr, raw)
        .await
        .unwrap_or_else(|e| panic!("request to {addr} failed: {e}\nrequest:\n{raw}"))
}

/// `GET target` with `Connection: close` plus `headers`.
pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Response {
    http_request(
        addr,
        &request_head("GET", addr, target, &[("Connection", "close")], headers),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: Framing, input: &[u8], piece: usize) -> (Vec<u8>, usize, bool) {
        let mut decoder = BodyDecoder::new(framing);
        let mut out = Vec::new();
        let mut used = 0;
        for part in input.chunks(piece) {
            let n = decoder.feed(part, &mut out).expect("valid framing");
            used += n;
            if n < part.len() {
                break;
            }
        }
        (out, used, decoder.is_done())
    }

    #[test]
    fn chunked_decoding_survives_any_split_and_stops_at_the_end() {
        let wire = b"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: t\r\n\r\nNEXT";
        for piece in 1..wire.len() {
            let (body, used, done) = decode_all(Framing::Chunked, wire, piece);
            assert_eq!(body, b"abc0123456789abcdef", "piece size {piece}");
            assert!(done);
            assert_eq!(&wire[used..], b"NEXT", "piece size {piece}");
        }
    }

    #[test]
    fn bad_chunk_size_is_an_error() {
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        assert!(decoder.feed(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn framing_follows_rfc_9112_precedence() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let both = h(&[
            ("content-length", "5"),
            ("transfer-encoding", "gzip, chunked"),
        ]);
        assert_eq!(
            Framing::of(200, &both, false).expect("ok"),
            Framing::Chunked
        );
        assert_eq!(
            Framing::of(200, &h(&[("content-length", "5")]), false).expect("ok"),
            Framing::Length(5)
        );
        assert_eq!(
            Framing::of(200, &h(&[]), false).expect("ok"),
            Framing::UntilClose
        );
        assert_eq!(
            Framing::of(204, &h(&[]), false).expect("ok"),
            Framing::Empty
        );
        assert_eq!(
            Framing::of(200, &h(&[("content-length", "5")]), true).expect("ok"),
            Framing::Empty
        );
        assert!(Framing::of(200, &h(&[("content-length", "x")]), false).is_err());
        let (body, used, done) = decode_all(Framing::Length(3), b"abcdef", 2);
        assert_eq!((body.as_slice(), used, done), (&b"abc"[..], 3, true));
    }

    #[test]
    fn request_head_lets_callers_override_defaults() {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let head = request_head(
            "GET",
            addr,
            "/x",
            &[("Connection", "close")],
            &[("connection", "keep-alive")],
        );
        assert_eq!(
            head,
            "GET /x HTTP/1.1\r\nHost: 127.0.0.1:9\r\nconnection: keep-alive\r\n\r\n"
        );
    }
}
