//! Assembles the Pingora server: the proxy service (Pingora's HTTP proxy behind streamguard's
//! own connection loop, `accept`), the admin service and the supervisor that sweeps limiter
//! state and runs the graceful drain.

mod accept;
pub mod head;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::Config;
use crate::proxy::{State, StreamGuard};
use crate::telemetry::{self, Metrics};

/// Pingora puts a 64 KiB read buffer and a 1,460-byte write buffer in front of every client
/// socket by default. Both live as long as the socket, and a stream's socket lives for hours.
/// The relays read into buffers that exist only while there is something to read, so there is
/// no read buffer. The write buffer stays, small: it is what lets Pingora send a fixed answer
/// (a 429, a preflight) as one segment, head and body together; some WebSocket clients read
/// only what arrives with the head of a refused handshake.
const CLIENT_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: Some(512),
};

/// How often idle limiter keys are reclaimed and the key gauge refreshed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Logging(String),
    #[error(transparent)]
    Setup(#[from] crate::proxy::state::SetupError),
    #[error("listen.tls: cannot load the certificate or key: {0}")]
    Tls(String),
}

/// Runs the proxy until SIGTERM (graceful drain) or SIGINT (fast stop). Never returns on success.
pub fn run(config: Config) -> Result<(), RunError> {
    telemetry::init_logging(&config.log).map_err(RunError::Logging)?;
    let server = build(config)?;
    server.run_forever()
}

/// Builds the server without starting it (also used by `demo`).
pub fn build(config: Config) -> Result<Server, RunError> {
    let mut conf = ServerConf {
        threads: config.server.threads,
        // Pingora sleeps the whole grace period after SIGTERM; the supervisor exits the process
        // earlier, as soon as every stream has drained.
        grace_period_seconds: Some(config.server.drain_timeout.as_secs() + 2),
        graceful_shutdown_timeout_seconds: Some(1),
        // One single-threaded runtime per worker thread: a stream's socket, timers and relay
        // stay on one thread, with none of the cross-thread wake-ups work stealing costs.
        work_stealing: false,
        // Pingora's own short timeouts (reading a request head, keep-alive) otherwise run on a
        // "Timer thread" that wakes every 10 ms for the life of the process: a steady cost on an
        // idle proxy holding thousands of streams. Tokio's timer wheel serves them instead.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    conf.upgrade_sock = format!("/tmp/streamguard-upgrade-{}.sock", std::process::id());
    conf.pid_file = format!("/tmp/streamguard-{}.pid", std::process::id());
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let (drain_tx, drain_rx) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let listen = config.listen.clone();
    let admin_addr = config.admin.address;
    let upstream = config.upstream.address;
    let drain_timeout = config.server.drain_timeout;
    metrics.ops.config_loaded(&config.fingerprint, unix_now());
    tracing::info!(config = %config.fingerprint, "configuration loaded");
    let state = Arc::new(State::new(config, metrics.clone(), drain_rx.clone())?);

    let http = pingora::proxy::http_proxy(&server.configuration, StreamGuard::new(state.clone()));
    let mut proxy = Service::new(
        "streamguard proxy".to_string(),
        accept::Front::new(Arc::new(http), state.clone()),
    );
    let mut endpoint = ListenerConfig::tcp(listen.address.to_string()).l4_buffer(CLIENT_BUFFERS);
    if let Some(tls) = &listen.tls {
        let settings = TlsSettings::intermediate(
            &tls.cert_file.to_string_lossy(),
            &tls.key_file.to_string_lossy(),
        )
        .map_err(|e| RunError::Tls(e.to_string()))?;
        endpoint = endpoint.tls(settings);
    }
    proxy.add_listener(endpoint);

    let mut admin = Service::new(
        "streamguard admin".to_string(),
        Admin {
            state: state.clone(),
            upstream,
        },
    );
    admin.add_tcp(&admin_addr.to_string());

    let supervisor = background_service(
        "streamguard supervisor",
        Supervisor {
            state,
            drain_tx,
            drain_timeout,
        },
    );
    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(supervisor);
    Ok(server)
}

/// How long the supervisor's readiness check waits for the upstream to accept a connection.
const UPSTREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the upstream accepts a connection now (for `streamguard_upstream_up`).
async fn upstream_accepts(address: std::net::SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            UPSTREAM_PROBE_TIMEOUT,
            tokio::net::TcpStream::connect(address)
        )
        .await,
        Ok(Ok(_))
    )
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Sweeps limiter state, and on SIGTERM runs the drain: streams are told to end at a safe
/// point, and the process exits as soon as none is left (or at `server.drain_timeout`).
struct Supervisor {
    state: Arc<State>,
    drain_tx: watch::Sender<bool>,
    drain_timeout: Duration,
}

impl Supervisor {
    fn active_streams(&self) -> i64 {
        let m = &self.state.metrics;
        m.sse.active.get() + m.websocket.active.get()
    }
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Some(store) = &self.state.fleet {
            let store = Arc::clone(store);
            tokio::spawn(async move { store.run().await });
        }
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let upstream = self.state.config.upstream.address;
        loop {
            tokio::select! {
                _ = sweep.tick() => {}
                _ = shutdown.wait_for(|down| *down) => break,
            }
            self.state.limiter.sweep(std::time::Instant::now());
            self.state
                .metrics
                .limiter_keys
                .set(self.state.limiter.tracked_keys() as i64);
            let up = upstream_accepts(upstream).await;
            self.state.metrics.ops.upstream_up.set(i64::from(up));
        }
        tracing::info!(streams = self.active_streams(), "SIGTERM: draining streams");
        let ops = &self.state.metrics.ops;
        ops.draining.set(1);
        let _ = self.drain_tx.send(true);
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while self.active_streams() > 0 && tokio::time::Instant::now() < deadline {
            ops.drain_remaining.set(self.active_streams());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ops.drain_remaining.set(self.active_streams());
        // Give the relays a moment to flush their last frames before the sockets go.
        tokio::time::sleep(Duration::from_millis(100)).await;
        tracing::info!(left = self.active_streams(), "drain finished, exiting");
        std::process::exit(0);
    }
}
