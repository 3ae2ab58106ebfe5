//! Polling only what woke: for `select!` branches that are seldom ready but would otherwise be
//! polled on every event a stream relays.
//!
//! `tokio::select!` polls every enabled branch each time its task wakes, and a relay task wakes
//! for every event. Its eviction and drain signals are `Notify` waits, each poll of which takes
//! the `Notify`'s waiter lock; the client's socket, from which nothing is expected, is read
//! through Pingora's stream layers down to tokio's readiness lock. Behind a [`WakeGate`] they
//! are polled with a waker of the gate's own, and polled again only once that waker was used:
//! a waker comparison and the load of a flag per event instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Lets a poll function through only when it has woken its task since it last returned
/// `Pending` (and on the first poll).
pub struct WakeGate {
    flag: Arc<Flag>,
    /// The task waker last handed to `flag`: a task's waker stays the same from poll to poll,
    /// so this comparison is usually all a closed gate costs besides loading its flag.
    task: Option<Waker>,
}

/// The gate's waker: marks the gated side as woken, then wakes the task polling the gate.
struct Flag {
    woken: AtomicBool,
    /// Locked only when the polling task changes and when the gated side wakes: rarely.
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl Default for WakeGate {
    fn default() -> Self {
        WakeGate {
            flag: Arc::new(Flag {
                // The first poll must get through: that is how the gated side registers wakers.
                woken: AtomicBool::new(true),
                task: Mutex::new(None),
            }),
            task: None,
        }
    }
}

impl WakeGate {
    /// Calls `poll` with the gate's waker if it was woken since it last returned `Pending`;
    /// otherwise `Pending` at once. `poll` must register that waker whenever it returns `Pending`
    /// (as every future and `poll_*` method does).
    pub fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Handed over before the flag is read: a wake-up landing in between still wakes the task.
        if !self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let task = cx.waker().clone();
            *self
                .flag
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
            self.task = Some(task);
        }
        // A plain load first: the gate is nearly always closed, and a swap is a locked write.
        if !self.flag.woken.load(Ordering::Acquire)
            || !self.flag.woken.swap(false, Ordering::AcqRel)
        {
            return Poll::Pending;
        }
        let waker = Waker::from(self.flag.clone());
        let result = poll(&mut Context::from_waker(&waker));
        if result.is_ready() {
            // Being ready once says nothing about the next poll: let it through.
            self.flag.woken.store(true, Ordering::Release);
        }
        result
    }
}

pin_project_lite::pin_project! {
    /// A future behind a [`WakeGate`].
    pub struct Gated<F> {
        #[pin]
        inner: F,
        gate: WakeGate,
    }
}

impl<F: Future> Gated<F> {
    pub fn new(inner: F) -> Self {
        Gated {
            inner,
            gate: WakeGate::default(),
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let inner = this.inner;
        this.gate.poll(cx, |cx| inner.poll(cx))
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
        let gated = Gated::new(counted(&polls, &notify));
        tokio::pin!(gated);
        for _ in 0..100 {
            let turn = futures_util::poll!(gated.as_mut());
            assert!(turn.is_pending());
        }
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "polled only on the first turn"
        );
        notify.notify_one();
        let done = tokio::time::timeout(Duration::from_secs(5), gated).await;
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
                let gated = Gated::new(counted(&polls, &notify));
                // A select whose other branch never fires: only the gate can end it.
                tokio::select! {
                    () = gated => {}
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

    #[test]
    fn a_ready_poll_leaves_the_gate_open() {
        let mut gate = WakeGate::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut calls = 0;
        for _ in 0..3 {
            let got = gate.poll(&mut cx, |_| {
                calls += 1;
                Poll::Ready(())
            });
            assert!(got.is_ready());
        }
        assert_eq!(calls, 3);
        // Pending without a wake-up closes it.
        assert!(gate.poll(&mut cx, |_| Poll::<()>::Pending).is_pending());
        assert!(gate.poll(&mut cx, |_| Poll::Ready(())).is_pending());
        assert_eq!(calls, 3);
    }
}
