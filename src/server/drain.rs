//! Signals and the drain's timeline.
//!
//! Pingora stops its listeners the moment its shutdown signal watch returns, and ends every
//! connection at once. streamguard's drain is gentler, in three steps:
//! 1. SIGTERM (or `POST /drain` on the admin listener) makes the process unready at once:
//!    `/readyz` answers 503, so load balancers and Kubernetes endpoints stop sending it clients.
//!    For `server.drain_delay` it still accepts and serves whoever arrives meanwhile; then
//!    [`Signals`] lets Pingora close the listeners.
//! 2. Open streams end over `server.drain_window`, each at its own slot (`relay::lifecycle`):
//!    SSE at an event boundary after a jittered `retry:` hint, WebSocket with close 1001.
//! 3. The process exits when the last stream has ended, or at `server.drain_timeout`.
//!
//! SIGHUP does not end the process (its default action would): it asks for a reload.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

use crate::proxy::lifecycle::DrainTrigger;
use crate::proxy::State;
use crate::relay::lifecycle::DrainPlan;

/// How often the drain looks at how many streams are left.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// Time for the last relays to flush their final frames before the process exits.
const LAST_FLUSH: Duration = Duration::from_millis(100);

/// streamguard's answer to the process signals, in place of Pingora's: SIGTERM drains (see the
/// module docs), SIGINT stops at once, SIGQUIT is Pingora's graceful upgrade, SIGHUP reloads.
pub struct Signals {
    state: Arc<State>,
}

impl Signals {
    pub fn new(state: Arc<State>) -> Signals {
        Signals { state }
    }
}

/// A registration for `kind`, or `None` if the process cannot watch it (it then never fires).
fn watch(kind: SignalKind) -> Option<Signal> {
    signal(kind)
        .map_err(|e| tracing::error!(error = %e, "cannot watch a process signal"))
        .ok()
}

async fn next(signal: &mut Option<Signal>) {
    let received = match signal {
        Some(signal) => signal.recv().await.is_some(),
        None => false,
    };
    if !received {
        std::future::pending::<()>().await;
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut term = watch(SignalKind::terminate());
        let mut int = watch(SignalKind::interrupt());
        let mut quit = watch(SignalKind::quit());
        let mut hup = watch(SignalKind::hangup());
        loop {
            tokio::select! {
                () = next(&mut term) => {
                    let first = self.state.lifecycle.request_drain(DrainTrigger::Signal);
                    if first {
                        // Still accepting: load balancers need this long to stop sending.
                        let delay = self.state.config.server.drain_delay;
                        tokio::time::sleep(delay).await;
                    }
                    return ShutdownSignal::GracefulTerminate;
                }
                () = next(&mut int) => return ShutdownSignal::FastShutdown,
                () = next(&mut quit) => return ShutdownSignal::GracefulUpgrade,
                () = next(&mut hup) => {
                    tracing::info!("SIGHUP: reload asked for");
                }
            }
        }
    }
}

/// Streams open now, of both kinds.
fn active_streams(state: &State) -> i64 {
    let m = &state.metrics;
    m.sse.active.get() + m.websocket.active.get()
}

/// Runs a drain that was just asked for, to its end; exits the process if a signal asked for it
/// (now or while it ran), else waits for Pingora's shutdown and exits then.
pub async fn run(state: &State, mut shutdown: ShutdownWatch) -> ! {
    let cfg = &state.config.server;
    let ops = &state.metrics.ops;
    let t0 = Instant::now();
    ops.draining.set(1);
    tracing::info!(
        streams = active_streams(state),
        delay = ?cfg.drain_delay,
        window = ?cfg.drain_window,
        "drain started"
    );
    // Pingora already closed the listeners if its own shutdown came first (SIGQUIT): no one
    // new can arrive, so there is nothing to wait for.
    if !*shutdown.borrow() {
        tokio::time::sleep_until(t0 + cfg.drain_delay).await;
    }
    let expected = usize::try_from(active_streams(state)).unwrap_or(0);
    state
        .lifecycle
        .end_streams(DrainPlan::new(Instant::now(), cfg.drain_window, expected));
    let deadline = t0 + cfg.drain_timeout;
    while active_streams(state) > 0 && Instant::now() < deadline {
        ops.drain_remaining.set(active_streams(state));
        tokio::time::sleep(DRAIN_POLL).await;
    }
    ops.drain_remaining.set(active_streams(state));
    state.lifecycle.finish();
    tracing::info!(
        left = active_streams(state),
        took = ?t0.elapsed(),
        "drain finished"
    );
    if state.lifecycle.trigger() != Some(DrainTrigger::Signal) {
        // `POST /drain`: drained and unready until the process's own SIGTERM.
        let _ = shutdown.wait_for(|down| *down).await;
    }
    tokio::time::sleep(LAST_FLUSH).await;
    std::process::exit(0)
}
