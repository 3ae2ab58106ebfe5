//! The stream relay loops.
//!
//! Pingora's built-in relay has no timer branch, so SSE and WebSocket streams are relayed by
//! our own loops, each in a task of its own that `proxy` hands the connection to. Each loop is
//! one `tokio::select!` over the upstream read, the client side, one timer (an [`Alarm`])
//! armed for the stream's earliest deadline (heartbeat or ping, stale upstream, token expiry,
//! the grace for a last event), and the eviction and drain signals below (the rarely-ready
//! branches behind a `gate`); the parsers in `sse::parser` and `websocket::frame` tell the
//! loops where it is safe to inject bytes. A loop's state is most of what an idle stream costs,
//! so it is kept small: one timer rather than one per deadline, no buffers between reads, and
//! the rare paths (a write that has to wait) allocate their state when they happen.

pub mod client;
pub mod gate;
pub mod h2_client;
pub mod lifecycle;
pub mod side;
pub mod sse;
pub mod upstream;
pub mod websocket;

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::telemetry::Metrics;
use lifecycle::LifecycleWatch;

/// What a relay loop watches besides its two sockets.
pub struct Supervision<'a> {
    pub metrics: &'a Metrics,
    /// The drain (streams end at a safe point, spread over the drain window, so clients
    /// reconnect elsewhere and not all at once) and key revocation by a reload.
    pub lifecycle: LifecycleWatch,
    /// When the client's token expires (only with `auth.close_on_expiry` and a verified token).
    pub expires_at: Option<Instant>,
    /// Resolves when the limiter evicts this stream to admit a newer one of the same user.
    pub evicted: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
}

/// What ends a stream from outside, whatever it is relaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// The limiter evicted the stream to admit a newer one of the same user.
    Evicted,
    /// The process is draining.
    Shutdown,
    /// A reload stopped trusting the key that verified the stream's token.
    Revoked,
}

/// The eviction, drain and revocation signals as one future, polled only when one of them fired
/// (see [`gate`]), which relay loops poll on every turn. Eviction wins when several have fired.
pub fn interrupts<'b, 'a: 'b>(
    evicted: &'b mut Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    lifecycle: &'b mut LifecycleWatch,
) -> gate::Gated<impl Future<Output = Interrupt> + Send + use<'a, 'b>> {
    gate::Gated::new(async move {
        tokio::select! {
            biased;
            () = evicted => Interrupt::Evicted,
            why = lifecycle.ended() => why,
        }
    })
}

/// The one timer of a relay loop, armed for the loop's earliest deadline.
///
/// Traffic only moves a stream's deadlines later (a write pushes its heartbeat back, a frame its
/// idle timeout), so the timer is left alone on every event: it fires early now and then, the
/// loop finds nothing due and arms it again. One timer instead of one per deadline also keeps
/// an idle stream's task small.
pub struct Alarm<'a> {
    sleep: Pin<&'a mut Sleep>,
    /// `None`: disarmed, whatever `sleep` was last set to.
    at: Option<Instant>,
}

impl<'a> Alarm<'a> {
    pub fn new(sleep: Pin<&'a mut Sleep>, at: Option<Instant>) -> Alarm<'a> {
        let mut alarm = Alarm { sleep, at: None };
        alarm.set(at);
        alarm
    }

    /// Arms the alarm for `at`, or disarms it.
    pub fn set(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            if self.at != Some(at) {
                self.sleep.as_mut().reset(at);
            }
        }
        self.at = at;
    }

    /// Arms the alarm for `at` if that is sooner than what it is armed for.
    pub fn bring_forward(&mut self, at: Option<Instant>) {
        if at.is_some_and(|at| self.at.is_none_or(|armed| at < armed)) {
            self.set(at);
        }
    }

    pub fn is_armed(&self) -> bool {
        self.at.is_some()
    }

    /// Completes when the armed deadline has passed, and leaves the alarm disarmed. Only to be
    /// polled while armed (a `select!` precondition): a disarmed alarm's timer may be long past.
    pub async fn ring(&mut self) {
        self.sleep.as_mut().await;
        self.at = None;
    }
}

/// The first multiple of `grid` (counted from a process-wide origin) at or after `at`: timers
/// aligned this way fire together, in one wake-up of the runtime.
pub fn align_up(at: Instant, grid: Duration) -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let since = at.saturating_duration_since(origin).as_nanos();
    let grid_ns = grid.as_nanos().max(1);
    let steps = since.div_ceil(grid_ns);
    let aligned = u64::try_from(steps * grid_ns).unwrap_or(u64::MAX);
    origin + Duration::from_nanos(aligned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bring_forward_only_ever_moves_the_alarm_earlier() {
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let mut alarm = Alarm::new(sleep, None);
        assert!(!alarm.is_armed());
        let t = Instant::now() + Duration::from_secs(60);
        alarm.bring_forward(None);
        assert_eq!(alarm.at, None);
        alarm.bring_forward(Some(t));
        assert_eq!(alarm.at, Some(t));
        alarm.bring_forward(Some(t + Duration::from_secs(1)));
        assert_eq!(alarm.at, Some(t), "a later deadline waits for the ring");
        alarm.bring_forward(None);
        assert_eq!(alarm.at, Some(t));
        alarm.bring_forward(Some(t - Duration::from_secs(1)));
        assert_eq!(alarm.at, Some(t - Duration::from_secs(1)));
        alarm.set(Some(t + Duration::from_secs(5)));
        assert_eq!(
            alarm.at,
            Some(t + Duration::from_secs(5)),
            "set moves it either way"
        );
        alarm.set(None);
        assert!(!alarm.is_armed());
    }

    #[tokio::test]
    async fn a_ring_comes_at_the_deadline_disarms_and_can_be_armed_again() {
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let start = Instant::now();
        let first = start + Duration::from_millis(30);
        let mut alarm = Alarm::new(sleep, Some(first));
        tokio::time::timeout(Duration::from_secs(5), alarm.ring())
            .await
            .expect("the alarm rings");
        assert!(Instant::now() >= first, "not before its deadline");
        assert!(!alarm.is_armed());
        // Armed again for the very instant it rang at: a stale deadline rings at once.
        alarm.set(Some(first));
        tokio::time::timeout(Duration::from_secs(5), alarm.ring())
            .await
            .expect("re-armed for a past instant, it rings at once");
        let second = Instant::now() + Duration::from_millis(30);
        alarm.set(Some(second));
        tokio::time::timeout(Duration::from_secs(5), alarm.ring())
            .await
            .expect("re-armed, it rings again");
        assert!(Instant::now() >= second);
    }
}
