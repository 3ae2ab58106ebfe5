//! The client side of an SSE stream carried by one HTTP/2 stream.
//!
//! Once its response head is written, the stream keeps only the `h2` send half
//! (`SendStream`): the request half and Pingora's session go, as the socket leaves Pingora's
//! session for an HTTP/1 stream (see `client`). Three rules of the `h2` crate shape it:
//!
//! - `send_data` buffers whatever it is given, without bound, unless capacity was reserved
//!   first: every write here (events and heartbeats alike) goes out only as far as the
//!   capacity `h2` assigned, which flow control and `http2.max_send_buffer` bound; the rest
//!   stays queued here, where the relay's slow-client rules (`sse.client_buffer`,
//!   `write_timeout`) apply to it exactly as to an HTTP/1 socket that takes nothing.
//! - a client's `RST_STREAM` (and a connection error) is seen through `poll_reset`, which
//!   shares one waker per stream with `poll_capacity`: both are polled with the task's own
//!   waker, on every turn, never behind a `gate`, so a flush cannot hide a reset.
//! - the end of a stream is END_STREAM (an empty DATA frame), after what is queued; a stream
//!   dropped before that (a slow client, a stream the relay gives up on) is reset with CANCEL,
//!   which also discards what `h2` still holds for it. The connection and its other streams
//!   carry on either way.

use std::future::poll_fn;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use h2::{Reason, SendStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::HttpSession;
use prometheus::IntCounter;

use super::client::{ClientError, ClientEvent, Sent};
use super::side::ClientSide;

/// One HTTP/2 stream's response, from its head to its end.
pub struct H2Client {
    /// Until the head is written: the stream's Pingora session, whose send half is then kept.
    session: Option<Box<HttpSession>>,
    /// The response body's send half; `None` before the head, or when the head failed.
    body: Option<SendStream<Bytes>>,
    /// Body bytes not handed to `h2` yet; empty and unallocated between writes.
    out: BytesMut,
    /// The end is queued behind `out`.
    end: bool,
    /// END_STREAM was handed to `h2`: nothing to reset on drop.
    ended: bool,
    /// Counts client resets (`streamguard_http2_client_resets_total`).
    resets: IntCounter,
}

impl H2Client {
    pub fn new(session: Box<HttpSession>, resets: IntCounter) -> Self {
        H2Client {
            session: Some(session),
            body: None,
            out: BytesMut::new(),
            end: false,
            ended: false,
            resets,
        }
    }

    /// Whether the client reset the stream or the connection failed; registers the task's
    /// waker otherwise.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<ClientError> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(ClientError::Gone);
        };
        match body.poll_reset(cx) {
            Poll::Ready(Ok(_)) => {
                self.resets.inc();
                Poll::Ready(ClientError::Gone)
            }
            Poll::Ready(Err(_)) => Poll::Ready(ClientError::Gone),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Hands `h2` as much of what is queued as the stream has capacity for. `Pending` (with the
    /// task's waker registered for capacity and reset) when it took nothing.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<Sent, ClientError>> {
        if let Poll::Ready(gone) = self.poll_gone(cx) {
            return Poll::Ready(Err(gone));
        }
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(Err(ClientError::Gone));
        };
        let before = self.out.len();
        while !self.out.is_empty() {
            let capacity = body.capacity();
            if capacity == 0 {
                // Reserved beyond what `h2` buffers already: capacity comes as flow control
                // and the per-stream buffer bound allow.
                body.reserve_capacity(self.out.len());
                match body.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Err(ClientError::Gone)),
                    Poll::Pending => break,
                }
            }
            let chunk = self.out.split_to(capacity.min(self.out.len())).freeze();
            if body.send_data(chunk, false).is_err() {
                return Poll::Ready(Err(ClientError::Gone));
            }
        }
        if !self.out.is_empty() {
            // Capacity and reset share the stream's one waker: the reset watch is registered
            // again after the capacity wait, with the same waker, so neither hides the other.
            if let Poll::Ready(gone) = self.poll_gone(cx) {
                return Poll::Ready(Err(gone));
            }
            return if self.out.len() < before {
                Poll::Ready(Ok(Sent::Some))
            } else {
                Poll::Pending
            };
        }
        // Nothing is kept between wake-ups: the allocation goes with the bytes.
        self.out = BytesMut::new();
        if self.end && !self.ended {
            // An empty DATA frame needs no capacity.
            if body.send_data(Bytes::new(), true).is_err() {
                return Poll::Ready(Err(ClientError::Gone));
            }
            self.ended = true;
        }
        // Capacity reserved but not used goes back to the connection, for the other streams.
        body.reserve_capacity(0);
        Poll::Ready(Ok(Sent::All))
    }
}

impl ClientSide for H2Client {
    fn queue_head(&mut self, head: &ResponseHeader, first: Option<&[u8]>) {
        if let Some(mut session) = self.session.take() {
            // Pingora drops the HTTP/1-only fields (`Connection`, `Transfer-Encoding`) and
            // adds `Date`. A client that already reset the stream makes this fail: `body`
            // stays `None` and the relay sees the client gone.
            if session
                .write_response_header(Box::new(head.clone()), false)
                .is_ok()
            {
                self.body = session.take_response_body_writer();
            }
        }
        if let Some(first) = first {
            self.queue(first);
        }
    }

    fn queue(&mut self, data: &[u8]) {
        // h2 frames DATA itself: no chunked framing.
        self.out.extend_from_slice(data);
    }

    fn queued(&self) -> usize {
        self.out.len()
    }

    fn queue_end(&mut self) {
        self.end = true;
    }

    async fn send(&mut self) -> Result<Sent, ClientError> {
        poll_fn(|cx| match self.poll_send(cx) {
            Poll::Ready(sent) => Poll::Ready(sent),
            Poll::Pending => Poll::Ready(Ok(Sent::Nothing)),
        })
        .await
    }

    async fn next_event(&mut self, sending: bool) -> ClientEvent {
        poll_fn(|cx| {
            if sending {
                if let Poll::Ready(sent) = self.poll_send(cx) {
                    return Poll::Ready(ClientEvent::Sent(sent));
                }
            }
            // An HTTP/2 client sends nothing on an event stream after its request that the
            // relay needs (its request body, if any, went upstream before): only its going
            // away matters.
            self.poll_gone(cx).map(|gone| ClientEvent::Read(Err(gone)))
        })
        .await
    }
}

impl Drop for H2Client {
    fn drop(&mut self) {
        if let Some(body) = self.body.as_mut().filter(|_| !self.ended) {
            // An abort, not an end: the client must not take a cut stream for a whole one.
            body.send_reset(Reason::CANCEL);
        }
    }
}
