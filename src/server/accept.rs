//! The client connection, from accept to close: streamguard's own `ServerApp` in front of
//! Pingora's HTTP proxy.
//!
//! Pingora's HTTP/1 loop gives a connection as long as it likes: a request head may grow to
//! 1 MiB, a head dribbled a byte at a time is read for as long as each byte comes within the
//! read timeout, a kept-alive connection waits for its next request forever, and nothing caps
//! how many connections there are; its TLS listener gives a handshake 60 seconds before any of
//! that starts. None of that is configurable, so this loop takes over the part before the proxy:
//!
//! 1. the connection takes a slot in the connection gate (globally and per client address),
//!    or gets a fixed 503/429 and is closed;
//! 2. on a TLS listener the handshake happens here, after the gate and inside the first
//!    head's deadline, so a client that never finishes it holds its slot no longer than one
//!    that never finishes a head (the listener itself is plain TCP);
//! 3. each request head is read here ([`super::head`]), into a buffer capped at
//!    `listen.max_request_head`, under a total deadline that no byte restarts
//!    (`listen.request_head_timeout`), after waiting at most `listen.keepalive_timeout` for
//!    the first byte of a kept-alive connection's next request;
//! 4. the complete, checked head is handed to a fresh Pingora session as bytes already read,
//!    which Pingora parses without touching the socket, and the proxy runs as before; a
//!    connection Pingora hands back for reuse comes round again.
//!
//! The gate slot travels with the connection ([`OpenConnection`]): every request gets a clone
//! through the session's connection context, and a stream that outlives its request keeps it,
//! so the slot is freed when the socket closes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as TcpStream;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use super::head::{HeadReader, Progress};
use crate::policy::connections::{ConnectionCaps, ConnectionGate, ConnectionRefusal};
use crate::policy::Rejection;
use crate::proxy::connection::OpenConnection;
use crate::proxy::{raw_refusal, State, StreamGuard};
use crate::telemetry::{Outcome, SECURITY_TARGET};

/// A head buffer starts at Pingora's own initial size and doubles up to the cap.
const INITIAL_HEAD_BUFFER: usize = 4096;
/// How long a fixed answer may take to go out before the connection is dropped unanswered.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// After a fixed answer, what the client already sent is read and dropped for up to this long
/// (or this many bytes), so that closing does not reset the connection before the client has
/// read the answer (a close with unread bytes sends a RST, which can discard it).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// Refused connections lingering at once. Past it they close at once: a flood of refusals must
/// not hold the file descriptors the gate keeps in reserve.
const MAX_LINGERING: usize = 64;

/// The proxy's `ServerApp`: the gate and the head reader in front of Pingora's HTTP proxy.
pub struct Front {
    proxy: Arc<HttpProxy<StreamGuard>>,
    state: Arc<State>,
    /// The TLS side of a TLS listener (whose sockets arrive as plain TCP).
    tls: Option<TlsSide>,
    gate: ConnectionGate,
    lingering: AtomicUsize,
}

/// The two TLS acceptors of a TLS listener, alike but for ALPN.
pub struct TlsSide {
    /// For admitted connections: `h2` then `http/1.1` when HTTP/2 is on.
    pub serve: Acceptor,
    /// For connections refused at the gate: `http/1.1` only, because the refusal is an HTTP/1.1
    /// answer written before any protocol runs.
    pub refuse: Acceptor,
}

/// What reading the next request head came to.
enum NextHead {
    /// A complete, acceptable head (and whatever followed it) in the buffer.
    Ready(BytesMut),
    /// Nothing to answer: the client closed or went quiet before a byte, or the proxy is
    /// shutting down.
    Gone,
    /// Answer with this and close; the buffer is reused to drain the connection.
    Refused(Rejection, &'static str, BytesMut),
}

impl Front {
    pub fn new(
        proxy: Arc<HttpProxy<StreamGuard>>,
        state: Arc<State>,
        tls: Option<TlsSide>,
    ) -> Front {
        Front {
            proxy,
            state,
            tls,
            gate: ConnectionGate::default(),
            lingering: AtomicUsize::new(0),
        }
    }

    /// Serves HTTP/1.x requests until the connection closes, is refused or goes idle. The
    /// first head is due by `due`, whenever its first byte comes.
    async fn serve_http1(
        &self,
        mut io: Stream,
        connection: Arc<OpenConnection>,
        due: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let (mut first_byte_by, mut head_due) = (due, Some(due));
        loop {
            let buf = match self
                .next_head(&mut io, first_byte_by, head_due, shutdown)
                .await
            {
                NextHead::Ready(buf) => buf,
                NextHead::Gone => return,
                NextHead::Refused(rejection, reason, buf) => {
                    return self.refuse_head(io, rejection, reason, buf).await;
                }
            };
            let mut session = ServerSession::new_http1(io);
            session.set_pipelined_prefix(buf);
            session.set_connection_user_context(Some(Box::new(Arc::clone(&connection))));
            let Some(reused) = self.proxy.process_new_http(session, shutdown).await else {
                return;
            };
            // Pipelining stays off (Pingora's default): a connection comes back only when
            // nothing was read past its request, so the settings carry no bytes, and the
            // keep-alive timing is the loop's own.
            let (stream, _settings) = reused.consume();
            io = stream;
            let keepalive = self.state.policy().config.listen.keepalive_timeout;
            first_byte_by = Instant::now() + keepalive;
            head_due = None;
        }
    }

    /// Reads one request head: the first byte by `first_byte_by`, the whole head by `head_due`
    /// (`None`: `request_head_timeout` after the first byte).
    async fn next_head(
        &self,
        io: &mut Stream,
        first_byte_by: Instant,
        head_due: Option<Instant>,
        shutdown: &ShutdownWatch,
    ) -> NextHead {
        // Copied out: a reference would keep the policy snapshot alive while the client takes
        // its time, and a connection may outlive many reloads.
        let (max, head_timeout) = {
            let listen = &self.state.policy().config.listen;
            (listen.max_request_head, listen.request_head_timeout)
        };
        let mut buf = BytesMut::with_capacity(INITIAL_HEAD_BUFFER.min(max));
        let mut shutdown = shutdown.clone();
        let first = tokio::select! {
            read = timeout_at(first_byte_by, io.read_buf(&mut buf)) => read,
            // An idle connection is not worth keeping through a drain.
            _ = shutdown.wait_for(|down| *down) => return NextHead::Gone,
        };
        if !matches!(first, Ok(Ok(n)) if n > 0) {
            return NextHead::Gone;
        }
        let due = head_due.unwrap_or_else(|| Instant::now() + head_timeout);
        let mut reader = HeadReader::new(max);
        loop {
            match reader.advance(&buf) {
                Progress::Complete(_) => return NextHead::Ready(buf),
                Progress::Refused(why) => {
                    return NextHead::Refused(why.rejection(), why.reason(), buf);
                }
                Progress::NeedMore => {}
            }
            if !make_room(&mut buf, max) {
                return NextHead::Refused(Rejection::HeadTooLarge, "too_large", buf);
            }
            match timeout_at(due, io.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                // Closed or broken halfway through a head: nobody left to answer.
                Ok(_) => return NextHead::Gone,
                Err(_) => return NextHead::Refused(Rejection::HeadTimeout, "timeout", buf),
            }
        }
    }

    /// Answers a refused head: counted like every refusal, logged as a security event with
    /// fixed words only (no header value, no target: they may carry a token).
    async fn refuse_head(
        &self,
        io: Stream,
        rejection: Rejection,
        reason: &'static str,
        buf: BytesMut,
    ) {
        self.count_refusal(rejection, "request_head_refused", reason, peer(&io));
        self.answer_and_close(io, &raw_refusal(rejection, None), buf)
            .await;
    }

    /// Counts a connection turned away before any request (like every refusal) and logs it as
    /// a security event, with fixed words only.
    fn count_refusal(
        &self,
        rejection: Rejection,
        event: &'static str,
        reason: &'static str,
        client: Option<SocketAddr>,
    ) {
        let metrics = &self.state.metrics;
        metrics
            .rejections
            .with_label_values(&[rejection.metric_label()])
            .inc();
        metrics
            .requests
            .with_label_values(&[Outcome::Rejected.label()])
            .inc();
        tracing::warn!(
            target: SECURITY_TARGET,
            security = true,
            event,
            reason,
            status = rejection.status(),
            client = %client.map(|p| p.to_string()).unwrap_or_default(),
            "security event"
        );
    }

    /// Completes the TLS handshake of a TLS listener's connection by `due`. `None`: the
    /// client failed it or ran out of time (counted and logged like a head that came too late).
    async fn handshake(&self, acceptor: &Acceptor, io: Stream, due: Instant) -> Option<Stream> {
        // The listener is plain TCP (see `server::build`), so this is always a TCP socket.
        let client = peer(&io);
        let tcp = io.into_any().downcast::<TcpStream>().ok()?;
        match timeout_at(due, acceptor.tls_handshake(*tcp)).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                let rejection = Rejection::HeadTimeout;
                self.count_refusal(rejection, "tls_handshake_timeout", "timeout", client);
                None
            }
        }
    }

    /// Turns a connection away at the gate; `None` when there is no way to answer it (a TLS
    /// client whose handshake could not be afforded or did not finish).
    async fn refuse_connection(&self, io: Option<Stream>, refusal: ConnectionRefusal) {
        self.state
            .metrics
            .connection_refusals
            .with_label_values(&[refusal.label()])
            .inc();
        // Not a warning: under a connection flood it would be one line per connection; the
        // refusal counter shows it.
        tracing::debug!(reason = refusal.label(), "connection refused");
        let retry_after = self.state.limiter.cap_retry_after();
        let answer = raw_refusal(Rejection::from(refusal), Some(retry_after));
        if let Some(io) = io {
            self.answer_and_close(io, &answer, BytesMut::new()).await;
        }
    }

    /// Writes a fixed answer and closes so that the client can read it: the write side is shut
    /// first, then what the client already sent is drained for a moment (bounded in time,
    /// bytes, and how many connections do it at once).
    async fn answer_and_close(&self, mut io: Stream, answer: &[u8], mut buf: BytesMut) {
        let sent = timeout(ANSWER_WITHIN, async {
            io.write_all(answer).await?;
            io.flush().await?;
            AsyncWriteExt::shutdown(&mut io).await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
        if self.lingering.fetch_add(1, Ordering::AcqRel) < MAX_LINGERING {
            if buf.capacity() < INITIAL_HEAD_BUFFER {
                buf = BytesMut::with_capacity(INITIAL_HEAD_BUFFER);
            }
            let until = Instant::now() + LINGER;
            let mut drained = 0;
            while drained < LINGER_BYTES {
                buf.clear();
                match timeout_at(until, io.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => drained += n,
                    _ => break,
                }
            }
        }
        self.lingering.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        // The peer address costs a system call (cached for the session), so it is asked for
        // only when a per-address cap needs it.
        // What this connection needs of the policy in force, copied out: a reference would
        // keep that snapshot (keys, certificate, routes) alive for as long as the connection,
        // through any number of reloads.
        let (caps, head_timeout, h2c) = {
            let listen = &self.state.policy().config.listen;
            let caps = ConnectionCaps {
                max: listen.max_connections,
                per_address: listen.max_connections_per_ip,
            };
            (caps, listen.request_head_timeout, listen.h2c)
        };
        // A client that connects has request_head_timeout to finish its handshake and say who
        // it is.
        let due = Instant::now() + head_timeout;
        let address = caps.per_address.and_then(|_| peer(&io)).map(|p| p.ip());
        let slot = match self.gate.admit(caps, address) {
            Ok(slot) => slot,
            Err(refusal) => {
                let io = match self.tls.as_ref().map(|tls| &tls.refuse) {
                    None => Some(io),
                    // The refusal can only be read through TLS. The handshake it needs is
                    // short and comes out of the same small budget as lingering, so a flood
                    // of refused connections cannot buy handshakes.
                    Some(acceptor) => {
                        let affordable =
                            self.lingering.fetch_add(1, Ordering::AcqRel) < MAX_LINGERING;
                        let io = match affordable {
                            true => {
                                let by = Instant::now() + ANSWER_WITHIN;
                                self.handshake(acceptor, io, by).await
                            }
                            false => None,
                        };
                        self.lingering.fetch_sub(1, Ordering::AcqRel);
                        io
                    }
                };
                self.refuse_connection(io, refusal).await;
                return None;
            }
        };
        let connection = OpenConnection::new(slot, &self.state.metrics.connections_active);
        let mut io = match &self.tls {
            None => io,
            Some(tls) => self.handshake(&tls.serve, io, due).await?,
        };
        let http2 = match io.selected_alpn_proto() {
            Some(ALPN::H2) => true,
            None if h2c && self.tls.is_none() => {
                let left = due.saturating_duration_since(Instant::now());
                match h2c_preface(&mut io, left).await {
                    Some(preface) => preface,
                    None => return None,
                }
            }
            _ => false,
        };
        if http2 {
            let conn = super::h2::Connection {
                io,
                slot: connection,
            };
            super::h2::serve(&self.proxy, &self.state, conn, shutdown).await;
            return None;
        }
        if matches!(io.selected_alpn_proto(), None | Some(ALPN::H1)) {
            self.serve_http1(io, connection, due, shutdown).await;
            return None;
        }
        // Anything else ALPN could negotiate (no listener offers more) goes to Pingora's own
        // handling; the slot is held meanwhile.
        let _connection = connection;
        ServerApp::process_new(&self.proxy, io, shutdown).await
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain-text connection starts with the HTTP/2 preface (`listen.h2c`), looked at
/// without consuming it. Pingora's peek waits for 24 bytes without a deadline; this one has the
/// request head's (`None`: nothing usable came in time, or the client left). Every HTTP/1.1
/// request head is longer than the preface; only a `Host`-less HTTP/1.0 one can be shorter,
/// and it waits for the deadline.
async fn h2c_preface(io: &mut Stream, within: Duration) -> Option<bool> {
    let mut first = [0u8; H2_PREFACE.len()];
    match timeout(within, io.try_peek(&mut first)).await {
        Ok(Ok(true)) => Some(&first == H2_PREFACE),
        // A stream that cannot peek is not TCP: HTTP/1 as before.
        Ok(Ok(false)) => Some(false),
        _ => None,
    }
}

/// The client's address, when the connection is TCP.
fn peer(io: &Stream) -> Option<SocketAddr> {
    let digest = io.get_socket_digest()?;
    let addr = digest.peer_addr()?.as_inet().copied();
    addr
}

/// Makes room for the next read without ever giving the buffer more than `max` bytes:
/// `BytesMut::reserve` may round a request up past the cap, so growth is a new allocation of
/// exactly the next size (doubling, up to `max`). `false` when the buffer is full at `max`.
fn make_room(buf: &mut BytesMut, max: usize) -> bool {
    if buf.len() < buf.capacity() {
        return true;
    }
    let grown = buf
        .capacity()
        .saturating_mul(2)
        .max(INITIAL_HEAD_BUFFER)
        .min(max);
    if grown <= buf.len() {
        return false;
    }
    let mut bigger = BytesMut::with_capacity(grown);
    bigger.extend_from_slice(buf);
    *buf = bigger;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_buffer_doubles_up_to_the_cap_and_no_further() {
        for max in [1024, 4096, 10_000, 32 * 1024] {
            let mut buf = BytesMut::with_capacity(INITIAL_HEAD_BUFFER.min(max));
            let mut capacities = Vec::new();
            while make_room(&mut buf, max) {
                assert!(buf.capacity() <= max, "{max}: {}", buf.capacity());
                capacities.push(buf.capacity());
                let spare = buf.capacity() - buf.len();
                buf.extend_from_slice(&vec![b'a'; spare]);
            }
            assert_eq!(buf.len(), max, "{max}: filled to the cap exactly");
            assert!(capacities.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}
