//! The process's side of the lifecycle that streams watch (`relay::lifecycle`): asking for a
//! drain, scheduling when streams end, and telling streams which keys a reload still trusts.
//!
//! A drain is asked for by SIGTERM or by `POST /drain` on the admin listener. From that moment
//! the process is not ready (`/readyz` answers 503, so load balancers stop sending), but keeps
//! serving for `server.drain_delay` while they catch up; then the supervisor publishes a
//! [`DrainPlan`] and every stream ends at its own point of `server.drain_window`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::relay::lifecycle::{DrainPlan, KeyId, Lifecycle, LifecycleWatch, Phase, TrustedKeys};

/// Who asked for the drain: after a signal the process exits once drained; after `POST /drain`
/// it keeps running (not ready, serving nothing new) until its own SIGTERM comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainTrigger {
    Signal,
    Admin,
}

pub struct LifecycleControl {
    streams: watch::Sender<Lifecycle>,
    requested: watch::Sender<Option<DrainTrigger>>,
    drained: watch::Sender<bool>,
}

impl LifecycleControl {
    pub fn new(trusted: TrustedKeys, revoke_window: Duration) -> LifecycleControl {
        LifecycleControl {
            streams: watch::Sender::new(Lifecycle::new(trusted, revoke_window)),
            requested: watch::Sender::new(None),
            drained: watch::Sender::new(false),
        }
    }

    /// The view a stream verified with `key` (if any) holds for its life.
    pub fn watch(&self, key: Option<KeyId>) -> LifecycleWatch {
        LifecycleWatch::new(self.streams.subscribe(), key)
    }

    /// Whether a drain was asked for: readiness is off from that moment.
    pub fn is_draining(&self) -> bool {
        self.requested.borrow().is_some()
    }

    /// Asks for a drain. `false` when one was asked for already (the first asker's trigger
    /// stands, except that a signal after `POST /drain` still ends the process).
    pub fn request_drain(&self, by: DrainTrigger) -> bool {
        let mut first = false;
        self.requested.send_modify(|requested| match requested {
            None => {
                first = true;
                *requested = Some(by);
            }
            Some(DrainTrigger::Admin) if by == DrainTrigger::Signal => *requested = Some(by),
            Some(_) => {}
        });
        if first {
            // Only from `Serving`: the supervisor watches `requested` and, with no
            // `drain_delay`, may have published the plan already; a plain assignment here
            // would take it back, and no stream would end until `drain_timeout`.
            self.streams.send_if_modified(|l| {
                let serving = matches!(l.phase, Phase::Serving);
                if serving {
                    l.phase = Phase::Draining;
                }
                serving
            });
        }
        first
    }

    /// Resolves with the trigger once a drain is asked for.
    pub async fn drain_requested(&self) -> DrainTrigger {
        let mut rx = self.requested.subscribe();
        loop {
            if let Some(by) = *rx.borrow_and_update() {
                return by;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The trigger that stands now, if a drain was asked for.
    pub fn trigger(&self) -> Option<DrainTrigger> {
        *self.requested.borrow()
    }

    /// Streams end from now on, each at its slot of `plan`.
    pub fn end_streams(&self, plan: DrainPlan) {
        let plan = Arc::new(plan);
        self.streams.send_modify(|l| l.phase = Phase::Ending(plan));
    }

    /// The drain is over: every stream ended, or the drain timed out.
    pub fn finish(&self) {
        self.drained.send_replace(true);
    }

    /// Resolves once the drain is over.
    pub async fn drained(&self) {
        let mut rx = self.drained.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|done| *done).await;
    }

    /// After a reload: the keys the new configuration trusts. Streams verified with any other
    /// key end within `revoke_window`.
    pub fn trust(&self, trusted: TrustedKeys, revoke_window: Duration) {
        self.streams.send_modify(|l| {
            l.trusted = Arc::new(trusted);
            l.revoke_window = revoke_window;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::Interrupt;
    use tokio::time::Instant;

    /// The supervisor can publish the plan between the two steps of `request_drain` (it wakes
    /// as soon as the drain is asked for): the late "draining" must not undo it.
    #[tokio::test]
    async fn a_plan_published_before_the_draining_phase_still_ends_streams() {
        let control = LifecycleControl::new(TrustedKeys::default(), Duration::ZERO);
        let mut stream = control.watch(None);
        control.end_streams(DrainPlan::new(Instant::now(), Duration::ZERO, 1));
        control.request_drain(DrainTrigger::Signal);
        let ended = tokio::time::timeout(Duration::from_secs(5), stream.ended()).await;
        assert_eq!(ended.ok(), Some(Interrupt::Shutdown));
    }

    #[tokio::test]
    async fn a_drain_is_asked_for_once_and_a_signal_outranks_the_admin() {
        let control = LifecycleControl::new(TrustedKeys::default(), Duration::ZERO);
        let stream = control.watch(None);
        assert!(!control.is_draining() && !stream.is_draining());
        assert!(control.request_drain(DrainTrigger::Admin));
        assert!(control.is_draining() && stream.is_draining());
        assert_eq!(control.drain_requested().await, DrainTrigger::Admin);
        assert!(!control.request_drain(DrainTrigger::Admin));
        assert!(!control.request_drain(DrainTrigger::Signal));
        assert_eq!(control.trigger(), Some(DrainTrigger::Signal));
        let waiting = tokio::spawn(async move {
            control.finish();
            control.drained().await;
        });
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("drained resolves once finished")
            .expect("task");
    }
}
