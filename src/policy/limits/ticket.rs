//! A stream's ticket: how the store tells one admitted stream apart from the user's others,
//! and how it tells that stream it was evicted.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// One admitted stream as the store sees it: its identity within the user's list of streams
/// (by address, so a store never hands out ids) and the channel through which it is evicted.
#[derive(Debug, Default)]
pub struct StreamTicket {
    evicted: AtomicBool,
    notify: Notify,
}

impl StreamTicket {
    pub fn new() -> StreamTicket {
        StreamTicket::default()
    }

    /// Tells the stream holding this ticket to close. The store calls this only after it has
    /// taken the ticket out of its books, which is what makes the later release a no-op.
    pub fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    pub(super) async fn wait_evicted(&self) {
        let mut notified = pin!(self.notify.notified());
        loop {
            // Registering before reading the flag closes the window in which an eviction's
            // notify_waiters could fire between the check and the await and be lost.
            notified.as_mut().enable();
            if self.is_evicted() {
                return;
            }
            notified.as_mut().await;
            notified.set(self.notify.notified());
        }
    }
}
