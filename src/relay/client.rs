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

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

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

    /// Ends the response: writes what is queued and, when chunked, the terminating chunk with
    /// it. The connection closes when the `ClientConn` is dropped. Errors do not matter any
    /// more at this point: the stream is over either way.
    pub async fn finish(&mut self) {
        if self.framing == Framing::Chunked {
            self.out.put_slice(b"0\r\n\r\n");
        }
        let _ = self.flush().await;
    }

    /// Reads what the client sent next: `Ok(None)` once it closed its side. Cancel-safe: a read
    /// that is dropped before it completes has consumed nothing.
    pub async fn read(&mut self) -> Result<Option<Bytes>, ClientError> {
        if let Some(early) = self.early.take() {
            return Ok(Some(early));
        }
        let io = &mut self.io;
        let gate = &mut self.read_gate;
        std::future::poll_fn(|cx| {
            gate.poll(cx, |cx| {
                let mut storage = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut buf = ReadBuf::uninit(&mut storage);
                match ready!(Pin::new(&mut *io).poll_read(cx, &mut buf)) {
                    Ok(()) if buf.filled().is_empty() => Poll::Ready(Ok(None)),
                    Ok(()) => Poll::Ready(Ok(Some(Bytes::copy_from_slice(buf.filled())))),
                    Err(_) => Poll::Ready(Err(ClientError::Gone)),
                }
            })
        })
        .await
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
