//! The circuit breaker in front of the shared store. A dead or stalled Redis would otherwise
//! cost every new stream the full `timeout` before the `on_error` policy applies; after a few
//! failures in a row the breaker opens, and stream setups skip Redis until the health probe
//! gets an answer again. Pure: the caller passes the time.

use std::time::Instant;

/// Failures in a row that open the breaker: one slow answer is not an outage.
const FAILURES_TO_OPEN: u32 = 3;

/// How the breaker's state changed with an outcome, for the log line and the `up` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
}

#[derive(Debug, Default)]
pub struct Breaker {
    failures: u32,
    /// When it opened: kept for the transition, and for a debugger's eyes.
    open_since: Option<Instant>,
}

impl Breaker {
    /// Whether calls may go to the store now.
    pub fn is_closed(&self) -> bool {
        self.open_since.is_none()
    }

    pub fn success(&mut self) -> Transition {
        self.failures = 0;
        match self.open_since.take() {
            Some(_) => Transition::Closed,
            None => Transition::None,
        }
    }

    pub fn failure(&mut self, now: Instant) -> Transition {
        self.failures = self.failures.saturating_add(1);
        if self.open_since.is_none() && self.failures >= FAILURES_TO_OPEN {
            self.open_since = Some(now);
            return Transition::Opened;
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_closes_on_the_first_success() {
        let t0 = Instant::now();
        let mut breaker = Breaker::default();
        assert_eq!(breaker.failure(t0), Transition::None);
        assert_eq!(breaker.failure(t0), Transition::None);
        // A success in between starts the count again.
        assert_eq!(breaker.success(), Transition::None);
        for _ in 1..FAILURES_TO_OPEN {
            assert_eq!(breaker.failure(t0), Transition::None);
            assert!(breaker.is_closed());
        }
        assert_eq!(breaker.failure(t0), Transition::Opened);
        assert!(!breaker.is_closed());
        assert_eq!(breaker.failure(t0), Transition::None, "opens once");
        assert_eq!(breaker.success(), Transition::Closed);
        assert!(breaker.is_closed());
    }
}
