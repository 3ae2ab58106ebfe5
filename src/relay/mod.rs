//! The stream relay loops.
//!
//! Pingora's built-in relay has no timer branch, so SSE and WebSocket streams are relayed by
//! our own loops, each in a task of its own that `proxy` hands the connection to. Each loop is
//! one `tokio::select!` over the upstream read, the client side, one timer armed for the
//! stream's earliest deadline (heartbeat or ping, stale upstream, token expiry, the grace for a
//! last event), and the eviction and drain signals below (the rarely-ready branches behind a
//! `gate`); the parsers in `sse::parser` and `websocket::frame` tell the loops where it is safe
//! to inject bytes. A loop's state is most of what an idle stream costs, so it is kept small:
//! one timer rather than one per deadline, no buffers between reads, and the rare paths (a
//! write that has to wait) allocate their state when they happen.

pub mod client;
pub mod gate;
pub mod sse;
pub mod upstream;
pub mod websocket;

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::telemetry::Metrics;

/// What a relay loop watches besides its two sockets.
pub struct Supervision<'a> {
    pub metrics: &'a Metrics,
    /// Turns true on SIGTERM: streams end at a safe point so clients reconnect elsewhere.
    pub shutdown: watch::Receiver<bool>,
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
}

/// The eviction and drain signals as one future, polled only when one of them fired (see
/// [`gate`]), which relay loops poll on every turn. Eviction wins when both have fired.
pub fn interrupts<'b, 'a: 'b>(
    evicted: &'b mut Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    mut shutdown: watch::Receiver<bool>,
) -> gate::Gated<impl Future<Output = Interrupt> + Send + use<'a, 'b>> {
    gate::Gated::new(async move {
        tokio::select! {
            biased;
            () = evicted => Interrupt::Evicted,
            () = shutdown_started(&mut shutdown) => Interrupt::Shutdown,
        }
    })
}

/// Resolves once the process starts shutting down (or at once if it already has).
pub async fn shutdown_started(rx: &mut watch::Receiver<bool>) {
    // An Err means the sender is gone, which only happens when the process is going away.
    let _ = rx.wait_for(|down| *down).await;
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
