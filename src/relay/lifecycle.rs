//! The process's lifecycle as a stream sees it: whether it should end because the process drains,
//! or because the key that verified its token is no longer trusted after a reload.
//!
//! Ending every stream of a draining process at the same moment sends every client back at the
//! same moment: the reconnect storm the seed audits warn about. So a drain has a [`DrainPlan`]:
//! each stream takes the next slot of the plan and ends at its own point of the drain window,
//! which spreads the closes evenly however many streams there are. A key that a reload stopped
//! trusting ends its streams the same way, each at a random point of the window.
//!
//! Every stream holds one [`LifecycleWatch`] (a `watch` receiver and its key's id): nothing is
//! allocated for the drain or a revocation until one happens.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Interrupt;
pub use crate::policy::auth::KeyId;

/// Where the process is in its life.
#[derive(Debug, Clone)]
pub enum Phase {
    Serving,
    /// Not ready any more (load balancers are told), streams carry on: the drain's delay.
    Draining,
    /// Streams end, each at its slot of the plan.
    Ending(Arc<DrainPlan>),
}

/// One drain's schedule: `expected` streams ending evenly over `window` from `begins`.
#[derive(Debug)]
pub struct DrainPlan {
    begins: Instant,
    window: Duration,
    expected: usize,
    next: AtomicUsize,
}

impl DrainPlan {
    pub fn new(begins: Instant, window: Duration, expected: usize) -> DrainPlan {
        DrainPlan {
            begins,
            window,
            expected: expected.max(1),
            next: AtomicUsize::new(0),
        }
    }

    /// When the next stream to ask ends: the k-th of `expected` streams at the middle of the
    /// k-th of `expected` equal parts of the window. Streams beyond the expected number (opened
    /// while the drain began) end at the window's end.
    pub fn slot(&self) -> Instant {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let share = ((k as f64 + 0.5) / self.expected as f64).min(1.0);
        self.begins + self.window.mul_f64(share)
    }
}

/// The verification keys of the configuration in force, by [`KeyId`].
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(HashSet<KeyId>);

impl TrustedKeys {
    pub fn new(keys: impl IntoIterator<Item = KeyId>) -> TrustedKeys {
        TrustedKeys(keys.into_iter().collect())
    }

    pub fn trusts(&self, key: KeyId) -> bool {
        self.0.contains(&key)
    }
}

/// What every stream watches.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub phase: Phase,
    pub trusted: Arc<TrustedKeys>,
    /// Over how long the streams of a key that is no longer trusted end.
    pub revoke_window: Duration,
}

impl Lifecycle {
    pub fn new(trusted: TrustedKeys, revoke_window: Duration) -> Lifecycle {
        Lifecycle {
            phase: Phase::Serving,
            trusted: Arc::new(trusted),
            revoke_window,
        }
    }
}

/// One stream's view of the lifecycle.
pub struct LifecycleWatch {
    rx: watch::Receiver<Lifecycle>,
    /// The key that verified the stream's token, if one did.
    key: Option<KeyId>,
}

impl LifecycleWatch {
    pub fn new(rx: watch::Receiver<Lifecycle>, key: Option<KeyId>) -> LifecycleWatch {
        LifecycleWatch { rx, key }
    }

    /// Whether the process is draining (from the moment it was asked to, before streams end).
    pub fn is_draining(&self) -> bool {
        self.probe().is_draining()
    }

    /// A second view of the drain state only, for a loop whose [`Self::ended`] is borrowed.
    pub fn probe(&self) -> DrainProbe {
        DrainProbe(self.rx.clone())
    }

    /// Resolves when the stream must end: at its slot of the drain, or at a random point of the
    /// revocation window once its key is no longer trusted. Never otherwise.
    pub async fn ended(&mut self) -> Interrupt {
        loop {
            let (end, why) = {
                let now = self.rx.borrow_and_update();
                match &now.phase {
                    Phase::Ending(plan) => (Some(plan.slot()), Interrupt::Shutdown),
                    _ if self.key.is_some_and(|key| !now.trusted.trusts(key)) => {
                        let delay = rand::rng().random_range(Duration::ZERO..=now.revoke_window);
                        (Some(Instant::now() + delay), Interrupt::Revoked)
                    }
                    _ => (None, Interrupt::Shutdown),
                }
            };
            if let Some(at) = end {
                // Boxed: only a stream that is ending carries a timer for it.
                Box::pin(tokio::time::sleep_until(at)).await;
                return why;
            }
            if self.rx.changed().await.is_err() {
                // The sender lives as long as the process.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Answers whether the process is draining.
pub struct DrainProbe(watch::Receiver<Lifecycle>);

impl DrainProbe {
    pub fn is_draining(&self) -> bool {
        !matches!(self.0.borrow().phase, Phase::Serving)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> KeyId {
        KeyId::of(&n.to_be_bytes())
    }

    #[test]
    fn a_plan_spreads_its_streams_evenly_and_late_ones_end_last() {
        let begins = Instant::now();
        let plan = DrainPlan::new(begins, Duration::from_secs(10), 4);
        let offsets: Vec<u128> = (0..6).map(|_| (plan.slot() - begins).as_millis()).collect();
        assert_eq!(offsets, [1250, 3750, 6250, 8750, 10_000, 10_000]);
        let empty = DrainPlan::new(begins, Duration::from_secs(2), 0);
        assert_eq!((empty.slot() - begins).as_millis(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_at_its_slot_of_the_drain() {
        let (tx, rx) = watch::channel(Lifecycle::new(TrustedKeys::default(), Duration::ZERO));
        let mut first = LifecycleWatch::new(rx.clone(), None);
        let mut second = LifecycleWatch::new(rx, None);
        assert!(!first.is_draining());
        tx.send_modify(|l| l.phase = Phase::Draining);
        assert!(first.is_draining());
        let start = Instant::now();
        let plan = Arc::new(DrainPlan::new(start, Duration::from_secs(4), 2));
        tx.send_modify(|l| l.phase = Phase::Ending(plan));
        assert_eq!(first.ended().await, Interrupt::Shutdown);
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        assert_eq!(second.ended().await, Interrupt::Shutdown);
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn only_streams_of_a_key_no_longer_trusted_are_revoked_within_the_window() {
        let window = Duration::from_secs(5);
        let (tx, rx) = watch::channel(Lifecycle::new(TrustedKeys::new([key(1), key(2)]), window));
        let mut old = LifecycleWatch::new(rx.clone(), Some(key(1)));
        let mut kept = LifecycleWatch::new(rx.clone(), Some(key(2)));
        let mut anonymous = LifecycleWatch::new(rx, None);
        tx.send_modify(|l| l.trusted = Arc::new(TrustedKeys::new([key(2), key(3)])));
        let start = Instant::now();
        assert_eq!(old.ended().await, Interrupt::Revoked);
        assert!(Instant::now() - start <= window);
        let untouched = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::select! {
                _ = kept.ended() => "kept",
                _ = anonymous.ended() => "anonymous",
            }
        })
        .await;
        assert!(untouched.is_err(), "{untouched:?} ended");
    }
}
