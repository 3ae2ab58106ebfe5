//! The client side of a relayed stream, once it has left Pingora's HTTP session.
//!
//! A stream outlives the request that opened it by hours. Kept inside Pingora's per-request
//! future it would pin that future (the whole proxy phase machine), the connection task and the
//! request's header buffers for its whole life: about 33 KB per idle stream. So once the relay
//! decision is made the proxy takes the socket out of the session (`proxy::stream`) and a task of
//! its own relays it through this type, which holds nothing but the socket while the stream idles:
//! reads use a buffer that lives only for the duration of one poll, and output is queued only
//! for the wake-up that writes it (Pingora's small L4 write buffer, see `server`, is flushed with
//! every write).
//!
//! Two ways to write: [`ClientConn::flush`] waits until everything is out (bounded by the write
//! timeout), for relays that pass back-pressure on (WebSocket); [`ClientConn::send`] and
//! [`ClientConn::next_event`] never wait, and leave what the socket did not take queued, for the
//! SSE relay, which keeps reading the app while a slow client catches up.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::gate::WakeGate;

/// The most one read takes from the client socket. The buffer is on the stack of the poll that
/// reads, so it costs nothing while a stream waits.
const READ_CHUNK: usize = 16 * 1024;

/// Why a write to the client failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The client closed or reset the connection.
    #[error("the client went away")]
    Gone,
    /// The client stopped reading for longer than the write timeout allows.
    #[error("the client stopped reading")]
    TimedOut,
}

/// How far a write that does not wait got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Everything queued is on the socket.
    All,
    /// Some of it went; the rest is still queued.
    Some,
    /// The socket took nothing: the client is not reading.
    Nothing,
}

/// What woke the client side of a relay loop (see [`ClientConn::next_event`]).
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The client sent bytes, closed its side (`Ok(None)`), or failed.
    Read(Result<Option<Bytes>, ClientError>),
    /// The socket took more of the queued output ([`Sent::All`] or [`Sent::Some`]), or failed.
    Sent(Result<Sent, ClientError>),
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked`: the end of the stream is a clean terminating chunk, so a
    /// client can tell a finished stream from a cut connection.
    Chunked,
    /// The body runs until the connection closes: HTTP/1.0 clients, and upgraded connections.
    Raw,
}

/// A client connection carrying one stream's response.
///
/// Writes can be queued and sent together: the relays queue what one wake-up brought (the
/// response head, the retry hint, every event already read from the upstream) and write it as
/// one segment. Over loopback or a LAN each segment costs the sender the receiver's TCP work as
/// well, so for short streams this is most of the proxy's cost.
pub struct ClientConn {
    io: Stream,
    framing: Framing,
    write_timeout: Option<Duration>,
    /// Bytes the client sent that were read along with the request head.
    early: Option<Bytes>,
    /// Queued output, framed; empty and unallocated between writes.
    out: BytesMut,
    /// Reads are polled on every turn of a relay loop, and a client seldom sends anything:
    /// behind the gate they reach the socket only after it signalled.
    read_gate: WakeGate,
}

impl ClientConn {
    /// `early` holds bytes already read past the request head (the start of what follows it).
    pub fn new(io: Stream, framing: Framing, early: Option<Bytes>) -> Self {
        ClientConn {
            io,
            framing,
            write_timeout: None,
            early: early.filter(|b| !b.is_empty()),
            out: BytesMut::new(),
            read_gate: WakeGate::default(),
        }
    }

    /// Bounds every later write: a client that stops reading fails with [`ClientError::TimedOut`].
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout.filter(|t| !t.is_zero());
    }

    /// Queues the response head, and `first` body bytes after it.
    pub fn queue_head(&mut self, head: &ResponseHeader, first: Option<&[u8]>) {
        let reason = head
            .get_reason_phrase()
            .or(head.status.canonical_reason())
            .unwrap_or("");
        self.out.reserve(512 + first.map_or(0, |b| b.len() + 16));
        self.out.put_slice(b"HTTP/1.1 ");
        self.out.put_slice(head.status.as_str().as_bytes());
        self.out.put_u8(b' ');
        self.out.put_slice(reason.as_bytes());
        self.out.put_slice(b"\r\n");
        head.header_to_h1_wire(&mut self.out);
        self.out.put_slice(b"\r\n");
        if let Some(body) = first {
            self.queue(body);
        }
    }

    /// Queues body bytes, framed as the head said.
    pub fn queue(&mut self, data: &[u8]) {
        if data.is_empty() {
            // An empty chunk would read as the end of the body.
            return;
        }
        match self.framing {
            Framing::Raw => self.out.put_slice(data),
            Framing::Chunked => {
                let mut size = [0u8; 16];
                let hex = hex_len(data.len(), &mut size);
                self.out.reserve(hex.len() + data.len() + 4);
                self.out.put_slice(hex);
                self.out.put_slice(b"\r\n");
                self.out.put_slice(data);
                self.out.put_slice(b"\r\n");
            }
        }
    }

    /// How many bytes are queued.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Writes everything queued, in one write when the socket takes it.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        self.write_all(&out).await
    }

    /// Queues body bytes and writes everything queued.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.queue(data);
        self.flush().await
    }

    /// Queues the end of the response: the terminating chunk when chunked (a close-delimited
    /// body ends when the connection closes, as the `ClientConn` is dropped).
    pub fn queue_end(&mut self) {
        if self.framing == Framing::Chunked {
            self.out.put_slice(b"0\r\n\r\n");
        }
    }

    /// Ends the response: writes what is queued and the end with it. Errors do not matter any
    /// more at this point: the stream is over either way.
    pub async fn finish(&mut self) {
        self.queue_end();
        let _ = self.flush().await;
    }

    /// Writes as much of what is queued as the socket takes now, without waiting; the rest
    /// stays queued for the next `send` or [`Self::next_event`].
    pub async fn send(&mut self) -> Result<Sent, ClientError> {
        std::future::poll_fn(|cx| match self.poll_send(cx) {
            Poll::Ready(sent) => Poll::Ready(sent),
            Poll::Pending => Poll::Ready(Ok(Sent::Nothing)),
        })
        .await
    }

    /// Waits until the client sent something or, when `sending`, until its socket took more of
    /// what is queued. Cancel-safe: bytes the socket took have left the queue by the time any
    /// poll returns, and a read consumes nothing until it completes.
    pub async fn next_event(&mut self, sending: bool) -> ClientEvent {
        if let Some(early) = self.early.take() {
            return ClientEvent::Read(Ok(Some(early)));
        }
        std::future::poll_fn(|cx| {
            if sending {
                if let Poll::Ready(sent) = self.poll_send(cx) {
                    return Poll::Ready(ClientEvent::Sent(sent));
                }
            }
            self.poll_read(cx).map(ClientEvent::Read)
        })
        .await
    }

    /// Reads what the client sent next: `Ok(None)` once it closed its side. Cancel-safe: a read
    /// that is dropped before it completes has consumed nothing.
    pub async fn read(&mut self) -> Result<Option<Bytes>, ClientError> {
        if let Some(early) = self.early.take() {
            return Ok(Some(early));
        }
        std::future::poll_fn(|cx| self.poll_read(cx)).await
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, ClientError>> {
        let io = &mut self.io;
        self.read_gate.poll(cx, |cx| {
            let mut storage = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut storage);
            match ready!(Pin::new(&mut *io).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => Poll::Ready(Ok(None)),
                Ok(()) => Poll::Ready(Ok(Some(Bytes::copy_from_slice(buf.filled())))),
                Err(_) => Poll::Ready(Err(ClientError::Gone)),
            }
        })
    }

    /// Writes queued bytes until the socket takes no more. `Pending` (with the task's waker
    /// registered) when it took nothing at all.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<Sent, ClientError>> {
        let before = self.out.len();
        let mut io = Pin::new(&mut self.io);
        while !self.out.is_empty() {
            match io.as_mut().poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    return Poll::Ready(Err(ClientError::Gone))
                }
                Poll::Ready(Ok(n)) => self.out.advance(n),
                Poll::Pending => break,
            }
        }
        if self.out.is_empty() {
            // The L4 write buffer (see `server`) holds small writes until flushed.
            match io.poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    // Nothing is kept between wake-ups: the allocation goes with the bytes.
                    self.out = BytesMut::new();
                    return Poll::Ready(Ok(Sent::All));
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Err(ClientError::Gone)),
                Poll::Pending => {}
            }
        }
        if self.out.len() < before {
            Poll::Ready(Ok(Sent::Some))
        } else {
            Poll::Pending
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let write = async {
            self.io.write_all(bytes).await?;
            // The L4 write buffer (see `server`) holds small writes until flushed.
            self.io.flush().await
        };
        tokio::pin!(write);
        // Most writes complete at once: only one that has to wait gets a timer, and that timer
        // is boxed, so an idle stream's task does not carry room for it.
        let result = match futures_util::poll!(write.as_mut()) {
            Poll::Ready(result) => result,
            Poll::Pending => match self.write_timeout {
                Some(limit) => match Box::pin(tokio::time::timeout(limit, write)).await {
                    Ok(result) => result,
                    Err(_) => return Err(ClientError::TimedOut),
                },
                None => write.await,
            },
        };
        result.map_err(|_: io::Error| ClientError::Gone)
    }
}

/// `len` in lowercase hex (a chunk-size line), written into `out`.
fn hex_len(mut len: usize, out: &mut [u8; 16]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut at = out.len();
    loop {
        at -= 1;
        out[at] = DIGITS[len & 0xf];
        len >>= 4;
        if len == 0 {
            return &out[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        let mut out = [0u8; 16];
        for (len, hex) in [
            (0usize, "0"),
            (9, "9"),
            (10, "a"),
            (255, "ff"),
            (4096, "1000"),
            (usize::MAX, "ffffffffffffffff"),
        ] {
            assert_eq!(hex_len(len, &mut out), hex.as_bytes(), "{len}");
        }
    }

    /// A connected pair: the proxy's side as a `ClientConn`, the client's as a plain socket.
    async fn pair(framing: Framing, early: Option<&'static [u8]>) -> (ClientConn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.expect("accept");
        let io: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(server));
        (
            ClientConn::new(io, framing, early.map(Bytes::from_static)),
            client.expect("connect"),
        )
    }

    async fn read_to_end(mut peer: TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.expect("read");
        got
    }

    #[tokio::test]
    async fn chunked_head_body_and_end_are_framed_on_the_wire() {
        let (mut conn, peer) = pair(Framing::Chunked, None).await;
        let mut head = ResponseHeader::build(200, None).expect("head");
        head.insert_header("Content-Type", "text/event-stream")
            .expect("header");
        head.insert_header("transfer-encoding", "chunked")
            .expect("header");
        conn.queue_head(&head, Some(b"retry: 5\n\n"));
        conn.flush().await.expect("head");
        conn.write(b"data: 1\n\n").await.expect("write");
        conn.write(b"").await.expect("an empty write is no chunk");
        conn.queue(b"data: 2\n\n");
        conn.finish().await;
        drop(conn);
        assert_eq!(
            read_to_end(peer).await,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
             a\r\nretry: 5\n\n\r\n9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn raw_bodies_pass_unframed() {
        let (mut conn, peer) = pair(Framing::Raw, None).await;
        let head = ResponseHeader::build(101, None).expect("head");
        conn.queue_head(&head, None);
        conn.write(b"\x81\x02hi").await.expect("head and frame");
        conn.finish().await;
        drop(conn);
        assert_eq!(
            read_to_end(peer).await,
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x02hi"
        );
    }

    #[tokio::test]
    async fn early_bytes_come_first_then_the_socket_then_eof() {
        let (mut conn, mut peer) = pair(Framing::Raw, Some(b"early")).await;
        assert_eq!(conn.read().await, Ok(Some(Bytes::from_static(b"early"))));
        peer.write_all(b"later").await.expect("write");
        assert_eq!(conn.read().await, Ok(Some(Bytes::from_static(b"later"))));
        peer.shutdown().await.expect("shutdown");
        assert_eq!(conn.read().await, Ok(None));
    }

    #[tokio::test]
    async fn a_dropped_read_consumes_nothing() {
        let (mut conn, mut peer) = pair(Framing::Raw, None).await;
        let pending = tokio::time::timeout(Duration::from_millis(20), conn.read()).await;
        assert!(pending.is_err(), "nothing was sent yet");
        peer.write_all(b"x").await.expect("write");
        assert_eq!(conn.read().await, Ok(Some(Bytes::from_static(b"x"))));
    }

    #[tokio::test]
    async fn send_never_waits_and_keeps_what_the_socket_did_not_take() {
        let (mut conn, mut peer) = pair(Framing::Raw, None).await;
        let body: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        conn.queue(&body);
        let first = tokio::time::timeout(Duration::from_secs(5), conn.send())
            .await
            .expect("send does not wait");
        assert_eq!(first, Ok(Sent::Some), "the socket buffers take a part");
        let left = conn.queued();
        assert!(left > 0 && left < body.len(), "{left}");
        assert_eq!(
            conn.send().await,
            Ok(Sent::Nothing),
            "the peer reads nothing"
        );
        assert_eq!(conn.queued(), left);
        // Nothing to read and nothing taken: the event waits.
        let idle = tokio::time::timeout(Duration::from_millis(50), conn.next_event(true)).await;
        assert!(idle.is_err(), "{idle:?}");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.expect("read");
            got
        });
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), conn.next_event(true))
                .await
                .expect("the reader makes room");
            match event {
                ClientEvent::Sent(Ok(Sent::All)) => break,
                ClientEvent::Sent(Ok(Sent::Some)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(conn.queued(), 0);
        drop(conn);
        assert!(
            reader.await.expect("reader") == body,
            "every byte, in order"
        );
    }

    #[tokio::test]
    async fn next_event_reads_and_sees_a_reset_while_sending() {
        let (mut conn, mut peer) = pair(Framing::Raw, Some(b"early")).await;
        assert_eq!(
            conn.next_event(true).await,
            ClientEvent::Read(Ok(Some(Bytes::from_static(b"early"))))
        );
        peer.write_all(b"x").await.expect("write");
        assert_eq!(
            conn.next_event(false).await,
            ClientEvent::Read(Ok(Some(Bytes::from_static(b"x"))))
        );
        conn.queue(&vec![0u8; 8 << 20]);
        assert_eq!(conn.send().await, Ok(Sent::Some));
        // A client that closes without reading: the kernel resets the connection.
        drop(peer);
        let gone = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match conn.next_event(true).await {
                    ClientEvent::Sent(Ok(_)) => {}
                    other => return other,
                }
            }
        })
        .await
        .expect("the end of the client is seen");
        assert!(
            matches!(
                gone,
                ClientEvent::Sent(Err(ClientError::Gone)) | ClientEvent::Read(Ok(None) | Err(_))
            ),
            "{gone:?}"
        );
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_times_the_write_out() {
        let (mut conn, _peer) = pair(Framing::Raw, None).await;
        conn.set_write_timeout(Some(Duration::from_millis(200)));
        let big = vec![b'x'; 1 << 20];
        let mut result = Ok(());
        // The socket buffers absorb the first megabytes; the peer never reads.
        for _ in 0..64 {
            result = conn.write(&big).await;
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ClientError::TimedOut));
    }
}
