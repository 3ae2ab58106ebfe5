//! Rate decisions by the generic cell rate algorithm (GCRA). A fixed window lets a client spend
//! two windows' worth at a boundary, and a token bucket needs two numbers per key and a refill
//! step; GCRA keeps one instant per key (the "theoretical arrival time", TAT), has no
//! boundaries, and says exactly how long until the next request would pass, which is what
//! `Retry-After` needs. The maths is pure so the store only has to keep the TAT.

use std::time::{Duration, Instant};

use crate::config::types::RateSpec;

/// One rate limit, in the form GCRA uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Steady spacing between requests: `per / count`.
    pub interval: Duration,
    /// How far the TAT may run ahead of now and still admit: `(requests at once - 1) * interval`.
    pub tolerance: Duration,
}

impl Quota {
    /// `count` per `per`, all of which a fresh key may use at once (`connects_per_user`).
    pub fn from_spec(spec: RateSpec) -> Quota {
        Quota::with_capacity(spec, spec.count)
    }

    /// The steady `spec` rate plus `burst` extra requests at once (`requests_per_ip` with
    /// `burst`): a fresh key may send `burst + 1` at once, then one per interval.
    pub fn with_burst(spec: RateSpec, burst: u32) -> Quota {
        Quota::with_capacity(spec, burst.saturating_add(1))
    }

    fn with_capacity(spec: RateSpec, at_once: u32) -> Quota {
        // Validation rejects a zero count; max(1) keeps the division total regardless.
        let interval = spec.per / spec.count.max(1);
        Quota {
            interval,
            tolerance: interval.saturating_mul(at_once.saturating_sub(1)),
        }
    }

    /// Decides one request at `now` against the key's stored TAT (`None` for a key with no
    /// state, which behaves exactly like a TAT in the past). On success returns the TAT to store;
    /// on rejection returns how long until the same request would pass.
    pub fn check(&self, tat: Option<Instant>, now: Instant) -> Result<Instant, Duration> {
        let tat = tat.map_or(now, |tat| tat.max(now));
        let ahead = tat.duration_since(now);
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        // Only reachable with centuries-long intervals; refusing is the safe way to fail.
        tat.checked_add(self.interval).ok_or(self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(count: u32, per_secs: u64) -> RateSpec {
        RateSpec {
            count,
            per: Duration::from_secs(per_secs),
        }
    }

    /// Runs `n` requests at `now`, threading the TAT, and returns how many passed.
    fn run(quota: &Quota, tat: &mut Option<Instant>, now: Instant, n: u32) -> u32 {
        let mut passed = 0;
        for _ in 0..n {
            if let Ok(next) = quota.check(*tat, now) {
                *tat = Some(next);
                passed += 1;
            }
        }
        passed
    }

    #[test]
    fn three_per_minute_then_exact_retry_after() {
        let quota = Quota::from_spec(spec(3, 60));
        let t0 = Instant::now();
        let mut tat = None;
        assert_eq!(run(&quota, &mut tat, t0, 3), 3);
        assert_eq!(quota.check(tat, t0), Err(Duration::from_secs(20)));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(quota.check(tat, later), Err(Duration::from_secs(15)));
        let just_before = t0 + Duration::from_secs(20) - Duration::from_nanos(1);
        assert_eq!(quota.check(tat, just_before), Err(Duration::from_nanos(1)));
        let at = t0 + Duration::from_secs(20);
        assert_eq!(run(&quota, &mut tat, at, 2), 1);
    }

    #[test]
    fn steady_rate_after_burst_is_one_per_interval() {
        let quota = Quota::from_spec(spec(3, 60));
        let t0 = Instant::now();
        let mut tat = None;
        assert_eq!(run(&quota, &mut tat, t0, 10), 3);
        for step in 1..=5u64 {
            let now = t0 + Duration::from_secs(20 * step);
            assert_eq!(run(&quota, &mut tat, now, 5), 1, "step {step}");
        }
    }

    #[test]
    fn no_window_boundary_double_spend() {
        // A fixed window would allow 3 at 0:59 and 3 more at 1:00.
        let quota = Quota::from_spec(spec(3, 60));
        let t0 = Instant::now();
        let mut tat = None;
        assert_eq!(run(&quota, &mut tat, t0 + Duration::from_secs(59), 3), 3);
        assert_eq!(run(&quota, &mut tat, t0 + Duration::from_secs(60), 3), 0);
    }

    #[test]
    fn idle_key_recovers_full_capacity_but_no_more() {
        let quota = Quota::from_spec(spec(3, 60));
        let t0 = Instant::now();
        let mut tat = None;
        assert_eq!(run(&quota, &mut tat, t0, 3), 3);
        let mut tat_after_idle = tat;
        let idle = t0 + Duration::from_secs(3600);
        assert_eq!(run(&quota, &mut tat_after_idle, idle, 10), 3);
    }

    #[test]
    fn burst_is_extra_requests_above_the_steady_rate() {
        let quota = Quota::with_burst(spec(10, 1), 4);
        assert_eq!(quota.interval, Duration::from_millis(100));
        let t0 = Instant::now();
        let mut tat = None;
        assert_eq!(run(&quota, &mut tat, t0, 20), 5);
        let err = quota
            .check(tat, t0)
            .expect_err("sixth request at once must wait");
        assert_eq!(err, Duration::from_millis(100));
        assert_eq!(run(&quota, &mut tat, t0 + Duration::from_millis(100), 3), 1);
    }

    #[test]
    fn zero_burst_means_strict_spacing() {
        let quota = Quota::with_burst(spec(2, 1), 0);
        let t0 = Instant::now();
        let mut tat = None;
        assert_eq!(run(&quota, &mut tat, t0, 3), 1);
        assert_eq!(quota.check(tat, t0), Err(Duration::from_millis(500)));
    }

    #[test]
    fn zero_count_does_not_panic() {
        let quota = Quota::from_spec(spec(0, 60));
        let t0 = Instant::now();
        let mut tat = None;
        assert_eq!(run(&quota, &mut tat, t0, 3), 1);
        assert_eq!(quota.check(tat, t0), Err(Duration::from_secs(60)));
    }
}
