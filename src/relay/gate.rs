//! A future that is polled only after it woke its task: for `select!` branches that fire once in
//! a stream's life but would otherwise be polled on every event.
//!
//! `tokio::select!` polls every enabled branch each time its task wakes. A stream's relay task
//! wakes for every event it relays, and its eviction and drain signals are `Notify` waits: each
//! poll of one takes the `Notify`'s waiter lock and compares wakers, twice per event for a
//! signal that almost never comes. Behind a [`Gated`], they are polled with a waker of the
//! gate's own, and the gate polls them again only once that waker was used: an atomic swap per
//! event instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Wraps `inner` so that it is polled only when it has woken the task since its last poll
/// (and on the first poll).
pub struct Gated<F> {
    inner: Pin<Box<F>>,
    gate: Arc<Gate>,
    /// The waker `inner` is polled with, made once: it wakes through the gate.
    waker: Waker,
}

/// The gate's waker: marks the inner future as woken, then wakes the task polling the gate.
struct Gate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Gated<F> {
    pub fn new(inner: F) -> Self {
        let gate = Arc::new(Gate {
            // The first poll must reach the inner future: that is how its wakers get registered.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Gated {
            inner: Box::pin(inner),
            waker: Waker::from(gate.clone()),
            gate,
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the flag is read: a wake-up landing in between still wakes this task.
        self.gate.task.register(cx.waker());
        if !self.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        let mut inner_cx = Context::from_waker(&this.waker);
        this.inner.as_mut().poll(&mut inner_cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::sync::Notify;

    /// Counts its polls, and finishes once `notify` fires.
    async fn counted(polls: &AtomicUsize, notify: &Notify) {
        let notified = notify.notified();
        tokio::pin!(notified);
        std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            notified.as_mut().poll(cx)
        })
        .await
    }

    #[tokio::test]
    async fn the_inner_future_is_polled_once_until_it_wakes_then_completes() {
        let polls = AtomicUsize::new(0);
        let notify = Notify::new();
        let mut gated = Gated::new(counted(&polls, &notify));
        for _ in 0..100 {
            let turn = futures_util::poll!(&mut gated);
            assert!(turn.is_pending());
        }
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "polled only on the first turn"
        );
        notify.notify_one();
        let done = tokio::time::timeout(Duration::from_secs(5), &mut gated).await;
        assert!(done.is_ok(), "the wake-up reached the task");
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_wake_from_another_task_wakes_the_waiting_task() {
        let notify = Arc::new(Notify::new());
        let polls = AtomicUsize::new(0);
        let waiter = {
            let notify = notify.clone();
            async move {
                let mut gated = Gated::new(counted(&polls, &notify));
                // A select whose other branch never fires: only the gate can end it.
                tokio::select! {
                    () = &mut gated => {}
                    () = std::future::pending::<()>() => {}
                }
            }
        };
        let notifier = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            notify.notify_one();
        };
        let both = async { tokio::join!(waiter, notifier) };
        assert!(tokio::time::timeout(Duration::from_secs(5), both)
            .await
            .is_ok());
    }
}
