//! The proof that a stream holds a slot. Stream slots must be given back exactly once on every
//! way a stream can end (normal close, error, panic unwinding, task cancellation, eviction), and
//! the only mechanism that covers all of them is `Drop`. The permit is also how an evicted stream
//! learns that it has to go.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::identity::LimitKey;
use super::store::LimitStore;
use super::ticket::StreamTicket;

/// An admitted stream's hold on its per-user and global slots, released when dropped.
pub struct StreamPermit {
    store: Arc<dyn LimitStore>,
    key: LimitKey,
    ticket: Arc<StreamTicket>,
}

impl StreamPermit {
    pub(super) fn new(
        store: Arc<dyn LimitStore>,
        key: LimitKey,
        ticket: Arc<StreamTicket>,
    ) -> StreamPermit {
        StreamPermit { store, key, ticket }
    }

    pub fn key(&self) -> &LimitKey {
        &self.key
    }

    /// Whether a newer stream of the same user has taken this one's slot. From that moment the
    /// slot is no longer counted as this stream's.
    pub fn is_evicted(&self) -> bool {
        self.ticket.is_evicted()
    }

    /// Resolves once this stream has been evicted (immediately if it already was); never
    /// otherwise. Cancel-safe, so the stream loop can create it afresh in every `select!`.
    pub fn evicted(&self) -> impl Future<Output = ()> + '_ {
        self.ticket.wait_evicted()
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.store.release_stream(&self.key, &self.ticket);
    }
}

impl fmt::Debug for StreamPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamPermit")
            .field("key", &self.key)
            .field("evicted", &self.is_evicted())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn eviction_wakes_a_waiter() {
        let ticket = Arc::new(StreamTicket::new());
        let waiter = tokio::spawn({
            let ticket = Arc::clone(&ticket);
            async move { ticket.wait_evicted().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        ticket.evict();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter woke")
            .expect("waiter task ran");
    }

    #[tokio::test]
    async fn eviction_before_waiting_is_not_lost() {
        let ticket = StreamTicket::new();
        ticket.evict();
        tokio::time::timeout(Duration::from_secs(5), ticket.wait_evicted())
            .await
            .expect("already-evicted ticket resolves at once");
    }

    #[tokio::test]
    async fn not_evicted_stays_pending() {
        let ticket = StreamTicket::new();
        let waited = tokio::time::timeout(Duration::from_millis(20), ticket.wait_evicted()).await;
        assert!(waited.is_err());
        assert!(!ticket.is_evicted());
    }
}
