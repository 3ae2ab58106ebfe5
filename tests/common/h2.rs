//! An HTTP/2 client for the tests, on the `h2` crate (the codec Pingora serves with), over a
//! plain TCP connection with prior knowledge (`listen.h2c`): streams read as units (events,
//! comments) with how each stream ended, END_STREAM or a reset, told apart.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{self, SendRequest};
use h2::{Reason, RecvStream};
use tokio::net::TcpStream;

use super::sse::split_event;

/// One HTTP/2 connection; its driver task stops with the test's runtime.
pub struct H2Conn {
    pub send: SendRequest<Bytes>,
    pub driver: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

impl H2Conn {
    /// Connects with prior knowledge and the `h2` client defaults.
    pub async fn connect(addr: SocketAddr) -> H2Conn {
        Self::connect_with(addr, client::Builder::new()).await
    }

    pub async fn connect_with(addr: SocketAddr, builder: client::Builder) -> H2Conn {
        let tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let (send, conn) = builder
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap_or_else(|e| panic!("h2 handshake with {addr}: {e}"));
        let driver = tokio::spawn(conn);
        H2Conn { send, driver }
    }

    /// Sends `GET path` with `headers` (repeats kept) and waits for the response head.
    pub async fn get(
        &mut self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> H2Stream {
        self.try_get(addr, path, headers)
            .await
            .unwrap_or_else(|e| panic!("GET {path} over h2: {e}"))
    }

    pub async fn try_get(
        &mut self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<H2Stream, h2::Error> {
        let (response, send) = self.open(addr, path, headers).await?;
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .unwrap_or_else(|_| panic!("no response head for {path} within 10 s"))?;
        let (parts, body) = response.into_parts();
        Ok(H2Stream {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            _send: send,
            buf: Vec::new(),
        })
    }

    /// Sends the request only: its response future, and the stream's send half (to reset it).
    pub async fn open(
        &mut self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(client::ResponseFuture, h2::SendStream<Bytes>), h2::Error> {
        let mut req = http::Request::get(format!("http://{addr}{path}"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(()).expect("request");
        let ready = tokio::time::timeout(Duration::from_secs(10), self.send.clone().ready())
            .await
            .unwrap_or_else(|_| panic!("the connection took no new stream within 10 s"))?;
        self.send = ready;
        self.send.send_request(req, true)
    }
}

/// How a stream ended, as its client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// END_STREAM: a clean end.
    Clean,
    /// RST_STREAM (or a connection error) with this reason.
    Reset(Option<Reason>),
}

/// One response on an HTTP/2 connection.
pub struct H2Stream {
    pub status: u16,
    pub headers: http::HeaderMap,
    body: RecvStream,
    _send: h2::SendStream<Bytes>,
    buf: Vec<u8>,
}

impl H2Stream {
    /// The next unit (an event or a comment, its blank line stripped), releasing flow-control
    /// credit as data is read. `Err` with how the stream ended if it ends first; `Ok(None)` on
    /// timeout.
    pub async fn next_unit(&mut self, timeout: Duration) -> Result<Option<String>, End> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(unit) = split_event(&mut self.buf) {
                return Ok(Some(unit));
            }
            match tokio::time::timeout_at(deadline, self.body.data()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(End::Clean),
                Ok(Some(Err(e))) => return Err(End::Reset(e.reason())),
                Ok(Some(Ok(data))) => {
                    let _ = self.body.flow_control().release_capacity(data.len());
                    self.buf.extend_from_slice(&data);
                }
            }
        }
    }

    /// Reads units until the stream ends (or `timeout`): the units, and the end (`None`: still
    /// open at the deadline).
    pub async fn read_to_end(&mut self, timeout: Duration) -> (Vec<String>, Option<End>) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut units = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_unit(left).await {
                Ok(Some(unit)) => units.push(unit),
                Ok(None) => return (units, None),
                Err(end) => return (units, Some(end)),
            }
        }
    }

    /// The whole body as text (for a plain response).
    pub async fn text(&mut self) -> String {
        let (units, _) = self.read_to_end(Duration::from_secs(5)).await;
        let mut text = units.join("\n\n");
        text.push_str(&String::from_utf8_lossy(&self.buf));
        text
    }

    /// Resets the stream, as a browser does when a page closes its `EventSource`.
    pub fn reset(&mut self) {
        self._send.send_reset(Reason::CANCEL);
    }
}
