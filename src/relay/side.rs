//! What the SSE relay needs of the client side of a stream, so that one relay loop serves both
//! an HTTP/1 connection ([`super::client::ClientConn`]) and an HTTP/2 stream
//! ([`super::h2_client::H2Client`]): queue bytes, send what the client takes now without
//! waiting, and hear when it took more or went away.

use std::future::Future;

use pingora::http::ResponseHeader;

use super::client::{ClientConn, ClientError, ClientEvent, Sent};

/// The client end of a relayed event stream.
pub trait ClientSide {
    /// Queues the response head, and `first` body bytes after it.
    fn queue_head(&mut self, head: &ResponseHeader, first: Option<&[u8]>);
    /// Queues body bytes.
    fn queue(&mut self, data: &[u8]);
    /// How many body bytes are queued and not taken by the client yet.
    fn queued(&self) -> usize;
    /// Queues the clean end of the response, after what is queued.
    fn queue_end(&mut self);
    /// Hands the client as much of what is queued as it takes now, without waiting.
    fn send(&mut self) -> impl Future<Output = Result<Sent, ClientError>> + Send;
    /// Waits until the client went away, sent something, or (when `sending`) took more of what
    /// is queued. Cancel-safe.
    fn next_event(&mut self, sending: bool) -> impl Future<Output = ClientEvent> + Send;
}

impl ClientSide for ClientConn {
    fn queue_head(&mut self, head: &ResponseHeader, first: Option<&[u8]>) {
        ClientConn::queue_head(self, head, first)
    }

    fn queue(&mut self, data: &[u8]) {
        ClientConn::queue(self, data)
    }

    fn queued(&self) -> usize {
        ClientConn::queued(self)
    }

    fn queue_end(&mut self) {
        ClientConn::queue_end(self)
    }

    fn send(&mut self) -> impl Future<Output = Result<Sent, ClientError>> + Send {
        ClientConn::send(self)
    }

    fn next_event(&mut self, sending: bool) -> impl Future<Output = ClientEvent> + Send {
        ClientConn::next_event(self, sending)
    }
}
