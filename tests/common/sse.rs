//! A raw SSE client that timestamps every read, so tests can measure heartbeat cadence,
//! delivery latency and how fast the proxy closes a stream, on the bytes actually sent.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::{
    connect, header, read_response_head, read_some, request_head, BodyDecoder, Framing,
};

/// Decoded body bytes from one socket read, and when they arrived.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub data: Vec<u8>,
    pub at: Instant,
}

impl Chunk {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// What one read produced.
enum Pull {
    Data,
    End,
    Timeout,
}

pub struct SseClient {
    pub status: u16,
    /// Lower-cased names, order and repeats kept.
    pub headers: Vec<(String, String)>,
    /// When the response head was complete.
    pub opened_at: Instant,
    stream: TcpStream,
    raw: Vec<u8>,
    decoder: BodyDecoder,
    /// Decoded body bytes not handed out yet, and when the latest of them arrived.
    pending: Vec<u8>,
    pending_at: Instant,
    ended: bool,
}

impl SseClient {
    /// `GET path` with `Accept: text/event-stream` plus `headers`; panics if no response head
    /// arrives. Any status is returned: check `status` before reading events.
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Self {
        Self::open(addr, &Self::request(addr, path, headers)).await
    }

    /// Like [`Self::connect`], but a failed connection is an error, not a panic.
    pub async fn try_connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Self> {
        Self::try_open(addr, &Self::request(addr, path, headers)).await
    }

    fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
        request_head(
            "GET",
            addr,
            path,
            &[("Accept", "text/event-stream")],
            headers,
        )
    }

    /// Sends `raw` as the request (any method, any body) and reads the response head.
    pub async fn open(addr: SocketAddr, raw: &str) -> Self {
        Self::try_open(addr, raw)
            .await
            .unwrap_or_else(|e| panic!("SSE request to {addr} failed: {e}\nrequest:\n{raw}"))
    }

    pub async fn try_open(addr: SocketAddr, raw: &str) -> io::Result<Self> {
        Self::try_open_on(connect(addr).await?, raw).await
    }

    /// Like [`Self::connect`], over a link like a phone's: a small receive buffer and an
    /// Internet-sized MSS (536 bytes). A client that then stops reading fills the kernel's
    /// buffers in front of the proxy with about 100 KiB, as it would on a real network: over
    /// loopback (64 KiB segments) the kernel gives the proxy's socket a send buffer of
    /// megabytes, which would take a test seconds to fill.
    pub async fn connect_slow_link(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_recv_buffer_size(4096)?;
        socket.set_tcp_mss(536)?;
        socket.set_nonblocking(true)?;
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        let stream = tokio::time::timeout(super::IO_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Self::try_open_on(stream, &Self::request(addr, path, headers)).await
    }

    async fn try_open_on(mut stream: TcpStream, raw: &str) -> io::Result<Self> {
        stream.write_all(raw.as_bytes()).await?;
        let mut buf = Vec::new();
        let (status, headers) = read_response_head(&mut stream, &mut buf).await?;
        let framing = Framing::of(status, &headers, raw.starts_with("HEAD "))?;
        let opened_at = Instant::now();
        let mut client = Self {
            status,
            headers,
            opened_at,
            stream,
            raw: buf,
            decoder: BodyDecoder::new(framing),
            pending: Vec::new(),
            pending_at: opened_at,
            ended: false,
        };
        client.decode()?;
        Ok(client)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// True once the body ended: the connection closed, or its chunked/length framing completed.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    fn decode(&mut self) -> io::Result<()> {
        let used = self.decoder.feed(&self.raw, &mut self.pending)?;
        self.raw.drain(..used);
        if self.decoder.is_done() {
            self.ended = true;
        }
        Ok(())
    }

    async fn pull(&mut self, deadline: Instant) -> Pull {
        if self.ended {
            return Pull::End;
        }
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Pull::Timeout;
        };
        match read_some(&mut self.stream, &mut self.raw, left).await {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Pull::Timeout,
            // A reset is how many servers end a stream; for the test it is the end either way.
            Ok(0) | Err(_) => {
                self.ended = true;
                Pull::End
            }
            Ok(_) => {
                self.pending_at = Instant::now();
                match self.decode() {
                    Ok(()) => Pull::Data,
                    Err(e) => panic!("stream framing broken: {e}"),
                }
            }
        }
    }

    /// Reads at most `max` bytes off the socket (a client that trickles), within `timeout`;
    /// `None` on timeout or at the end of the stream.
    pub async fn read_at_most(&mut self, max: usize, timeout: Duration) -> Option<usize> {
        if self.ended {
            return None;
        }
        let mut piece = vec![0u8; max];
        match tokio::time::timeout(timeout, self.stream.read(&mut piece)).await {
            Err(_) => None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.ended = true;
                None
            }
            Ok(Ok(n)) => {
                self.raw.extend_from_slice(&piece[..n]);
                self.pending_at = Instant::now();
                if let Err(e) = self.decode() {
                    panic!("stream framing broken: {e}");
                }
                Some(n)
            }
        }
    }

    /// The next decoded body bytes; `None` on timeout or end of stream (see [`Self::is_ended`]).
    pub async fn next_chunk(&mut self, timeout: Duration) -> Option<Chunk> {
        let deadline = Instant::now() + timeout;
        while self.pending.is_empty() {
            match self.pull(deadline).await {
                Pull::Data => {}
                Pull::End | Pull::Timeout => return None,
            }
        }
        Some(Chunk {
            data: std::mem::take(&mut self.pending),
            at: self.pending_at,
        })
    }

    /// The next blank-line-terminated block (event or comment), without its terminator.
    pub async fn read_event(&mut self, timeout: Duration) -> Option<String> {
        self.read_event_at(timeout).await.map(|(event, _)| event)
    }

    /// Like [`Self::read_event`], plus when the read that completed the block arrived.
    pub async fn read_event_at(&mut self, timeout: Duration) -> Option<(String, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = split_event(&mut self.pending) {
                return Some((event, self.pending_at));
            }
            match self.pull(deadline).await {
                Pull::Data => {}
                Pull::End | Pull::Timeout => return None,
            }
        }
    }

    /// Everything up to the end of the body or `timeout`, for error responses and short streams.
    pub async fn read_to_end(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        while let Pull::Data = self.pull(deadline).await {}
        std::mem::take(&mut self.pending)
    }

    /// Drains the stream until it ends; `true` if it ended within `timeout`.
    pub async fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.pending.clear();
            match self.pull(deadline).await {
                Pull::Data => {}
                Pull::End => return true,
                Pull::Timeout => return false,
            }
        }
    }
}

/// Takes the first complete block off `buf`. Lines end in CRLF, LF or CR (SSE spec), so a
/// trailing CR is left alone until the next byte shows whether an LF follows. Empty blocks
/// (stray blank lines) are skipped.
pub fn split_event(buf: &mut Vec<u8>) -> Option<String> {
    loop {
        let (text_end, consumed) = block_end(buf)?;
        let block = String::from_utf8_lossy(&buf[..text_end]).into_owned();
        buf.drain(..consumed);
        if text_end > 0 {
            return Some(block);
        }
    }
}

/// `(end of the block's text, end of the blank line after it)`.
fn block_end(buf: &[u8]) -> Option<(usize, usize)> {
    let (mut i, mut line_start, mut text_end) = (0, 0, 0);
    while i < buf.len() {
        let terminator = match buf[i] {
            b'\n' => 1,
            b'\r' => match buf.get(i + 1) {
                None => return None,
                Some(b'\n') => 2,
                Some(_) => 1,
            },
            _ => {
                i += 1;
                continue;
            }
        };
        if i == line_start {
            return Some((text_end, i + terminator));
        }
        text_end = i;
        i += terminator;
        line_start = i;
    }
    None
}

/// `data:` field values of an event block, joined with `\n` as EventSource would.
pub fn event_data(event: &str) -> Option<String> {
    let lines: Vec<&str> = field_values(event, "data").collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The value of the first `field:` line in an event block.
pub fn event_field<'a>(event: &'a str, field: &str) -> Option<&'a str> {
    field_values(event, field).next()
}

fn field_values<'a, 'f>(
    event: &'a str,
    field: &'f str,
) -> impl Iterator<Item = &'a str> + use<'a, 'f> {
    event.lines().filter_map(move |line| {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        (name == field).then(|| value.strip_prefix(' ').unwrap_or(value))
    })
}

impl SseClient {
    /// True once the body's own framing completed (the chunked terminator, or the full
    /// Content-Length): a clean end, as opposed to the connection just closing or resetting.
    pub fn body_complete(&self) -> bool {
        self.decoder.is_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_any_blank_line_form_and_waits_on_a_trailing_cr() {
        let mut buf = b"id: 1\ndata: a\n\n: hb\r\n\r\ndata: b\r\rdata: c\r".to_vec();
        assert_eq!(split_event(&mut buf).as_deref(), Some("id: 1\ndata: a"));
        assert_eq!(split_event(&mut buf).as_deref(), Some(": hb"));
        assert_eq!(split_event(&mut buf).as_deref(), Some("data: b"));
        assert_eq!(
            split_event(&mut buf),
            None,
            "a trailing CR may still become CRLF"
        );
        buf.extend_from_slice(b"\n\r\n");
        assert_eq!(split_event(&mut buf).as_deref(), Some("data: c"));
        assert!(buf.is_empty());
    }

    #[test]
    fn skips_stray_blank_lines_and_keeps_partial_events() {
        let mut buf = b"\n\ndata: x\n\ndata: part".to_vec();
        assert_eq!(split_event(&mut buf).as_deref(), Some("data: x"));
        assert_eq!(split_event(&mut buf), None);
        assert_eq!(buf, b"data: part");
    }

    #[test]
    fn field_helpers_follow_the_eventsource_parsing_rules() {
        let event = "id: 4\ndata: one\ndata:two\nevent: resume\n: comment";
        assert_eq!(event_data(event).as_deref(), Some("one\ntwo"));
        assert_eq!(event_field(event, "id"), Some("4"));
        assert_eq!(event_field(event, "event"), Some("resume"));
        assert_eq!(event_field(event, "retry"), None);
        assert_eq!(event_data(": only a comment"), None);
    }
}
