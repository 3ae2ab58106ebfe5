//! HTTP/2 client connections: streamguard's own loop over the `h2` connection, in place of
//! Pingora's (`HttpServerApp::process_new`), for what Pingora's does not give a proxy whose
//! streams leave their requests:
//!
//! - **an idle timeout that counts relayed streams.** Pingora's `h2_idle_timeout` counts only
//!   its own per-request tasks, and an SSE stream leaves its request for a task of its own
//!   (`proxy::stream`): it would close a connection whose every stream is alive. Here every
//!   request, and every stream that outlives it, holds a clone of the connection's
//!   [`OpenConnection`] (carried in the request's extensions), so "no stream at all" is "no
//!   clone but the loop's";
//! - **a bound on refused streams.** `HttpSession::from_h2_conn` starts a fresh budget of
//!   malformed streams on every call, so a client could send malformed heads for ever; the loop
//!   counts them itself and ends the connection after [`MAX_REJECTED_STREAMS`];
//! - **GOAWAY on a drain**, from the moment one is asked for (not only at Pingora's shutdown),
//!   so clients open their next streams elsewhere while the relays end theirs at event
//!   boundaries;
//! - the handshake under `listen.request_head_timeout`, as an HTTP/1 head is.
//!
//! The `h2` settings start from Pingora's `default_h2_options()` (a 64 KiB header list, which
//! is also what bounds a CONTINUATION flood) with `http2.max_concurrent_streams` and
//! `http2.max_send_buffer`, and the reset-flood bounds below. A stream reset after it was
//! accepted costs no policy work and no upstream request (`proxy::stream::reset_by_client`).
//! Extended CONNECT is never enabled: WebSocket stays on HTTP/1.1.

use std::sync::Arc;
use std::time::Duration;

use h2::Reason;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{default_h2_options, handshake, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::time::{sleep_until, timeout, Instant};

use crate::proxy::connection::OpenConnection;
use crate::proxy::{State, StreamGuard};
use crate::telemetry::GoAway;

/// Malformed streams (refused before the proxy saw them) one connection may send: Pingora's
/// own accept loop allows as many.
const MAX_REJECTED_STREAMS: usize = 32;
/// Streams the client reset before the loop accepted them, held at once; past it the `h2`
/// codec ends the connection (ENHANCE_YOUR_CALM): the rapid-reset bound (CVE-2023-44487). The
/// `h2` crate's own default, set here so that a change of default cannot loosen it.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the codec itself may reset for a client's protocol errors before it ends the
/// connection (the `h2` crate's default).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// How long a connection sent GOAWAY for being idle or abusive has to close by itself before
/// it is dropped: a client that never answers the GOAWAY's PING must not keep it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The client's HTTP/2 connection, with its gate slot, as [`serve`] takes it.
pub(super) struct Connection {
    pub io: Stream,
    pub slot: Arc<OpenConnection>,
}

/// Serves one HTTP/2 connection until it closes: each stream goes to Pingora's proxy in a task
/// of its own, as Pingora's loop would.
pub(super) async fn serve(
    proxy: &Arc<HttpProxy<StreamGuard>>,
    state: &State,
    conn: Connection,
    shutdown: &ShutdownWatch,
) {
    let Connection { io, slot } = conn;
    // Copied out of the policy in force: holding the snapshot would keep it (keys, certificate,
    // routes) alive for as long as the connection, through any number of reloads.
    let (cfg, handshake_within) = {
        let policy = state.policy();
        (
            policy.config.http2.clone(),
            policy.config.listen.request_head_timeout,
        )
    };
    let metrics = &state.metrics.http2;
    let digest = Arc::new(Digest {
        ssl_digest: io.get_ssl_digest(),
        timing_digest: io.get_timing_digest(),
        proxy_digest: io.get_proxy_digest(),
        socket_digest: io.get_socket_digest(),
    });
    let mut options = default_h2_options();
    options
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_send_buffer_size(cfg.max_send_buffer)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
    let handshake = timeout(handshake_within, handshake(io, Some(options)));
    let Ok(Ok(mut h2)) = handshake.await else {
        tracing::debug!("HTTP/2 handshake failed or timed out");
        return;
    };
    metrics.connections.inc();
    metrics.connections_active.inc();
    let _active = scopeguard(&metrics.connections_active);

    let idle_timeout = cfg.idle_timeout;
    let check_every = idle_timeout / 2;
    let idle_check = tokio::time::sleep(check_every);
    tokio::pin!(idle_check);
    let mut busy_at = Instant::now();
    let drain = state.lifecycle.drain_requested();
    tokio::pin!(drain);
    let mut down = shutdown.clone();
    // One GOAWAY per connection. After an idle or malformed one the connection must be gone by
    // `close_by`; a drain's connections end with their last stream, or with the process.
    let mut goaway_sent = false;
    let mut close_by: Option<Instant> = None;
    let mut rejected = 0usize;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = down.changed(), if !goaway_sent => {
                goaway(&mut h2, metrics, GoAway::Drain);
                goaway_sent = true;
                continue;
            }
            _ = &mut drain, if !goaway_sent => {
                goaway(&mut h2, metrics, GoAway::Drain);
                goaway_sent = true;
                continue;
            }
            () = &mut idle_check, if !goaway_sent => {
                let now = Instant::now();
                // The loop's clone is the only one: no request and no stream on the connection.
                if Arc::strong_count(&slot) > 1 {
                    busy_at = now;
                } else if now >= busy_at + idle_timeout {
                    goaway(&mut h2, metrics, GoAway::Idle);
                    goaway_sent = true;
                    close_by = Some(now + CLOSE_GRACE);
                    continue;
                }
                idle_check.as_mut().reset(now + check_every);
                continue;
            }
            () = sleep_until(close_by.unwrap_or_else(Instant::now)), if close_by.is_some() => {
                return;
            }
            accepted = HttpSession::from_h2_conn(&mut h2, digest.clone()) => accepted,
        };
        match accepted {
            // The client closed, the connection broke, or a GOAWAY finished with every stream
            // ended: nothing is left to serve.
            Err(_) | Ok(None) => return,
            Ok(Some(H2Accept::Rejected)) => {
                metrics.streams_rejected.inc();
                rejected += 1;
                if rejected >= MAX_REJECTED_STREAMS && close_by.is_none() {
                    tracing::warn!(
                        rejected,
                        "ending an HTTP/2 connection that sent too many malformed requests"
                    );
                    metrics.goaway(GoAway::Malformed);
                    h2.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                    goaway_sent = true;
                    close_by = Some(Instant::now() + CLOSE_GRACE);
                }
            }
            Ok(Some(H2Accept::Session(mut session))) => {
                metrics.streams.inc();
                busy_at = Instant::now();
                session
                    .req_header_mut()
                    .extensions_mut()
                    .insert(Arc::clone(&slot));
                let proxy = Arc::clone(proxy);
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    proxy
                        .process_new_http(ServerSession::new_http2(session), &shutdown)
                        .await;
                });
            }
        }
    }
}

/// Sends a graceful GOAWAY (streams already open go on) and counts why.
fn goaway(
    h2: &mut h2::server::Connection<Stream, bytes::Bytes>,
    metrics: &crate::telemetry::Http2Metrics,
    why: GoAway,
) {
    tracing::debug!(reason = why.label(), "HTTP/2 GOAWAY");
    metrics.goaway(why);
    h2.graceful_shutdown();
}

/// Lowers `gauge` when dropped, on every way out of [`serve`].
fn scopeguard(gauge: &prometheus::IntGauge) -> impl Drop + '_ {
    struct Dec<'a>(&'a prometheus::IntGauge);
    impl Drop for Dec<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(gauge)
}
