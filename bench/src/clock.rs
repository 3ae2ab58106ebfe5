//! The bench clock: CLOCK_MONOTONIC in nanoseconds.
//!
//! `std::time::Instant` uses the same clock on Linux but hides the raw value, and the raw value
//! is what crosses the process boundary inside each event (`data: <seq> <ns>`).

use rustix::time::{clock_gettime, ClockId};

/// Nanoseconds on CLOCK_MONOTONIC (shared by every process on the machine).
pub fn mono_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}
