//! Assembles the Pingora server: the proxy service (Pingora's HTTP proxy behind streamguard's
//! own connection loop, `accept`), the admin service and the supervisor that sweeps limiter
//! state and runs the graceful drain.

mod accept;
mod drain;
mod h2;
pub mod head;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora::protocols::ALPN;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config::{Config, ConfigSource};
use crate::proxy::lifecycle::DrainTrigger;
use crate::proxy::reload::Reloader;
use crate::proxy::tls::PolicyCertificate;
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
    #[error("listen.tls: cannot set up the TLS listener: {0}")]
    Tls(String),
}

/// How long Pingora would wait after closing its listeners before it stops the runtimes. The
/// drain (`drain::run`) exits the process itself, when the last stream ended or at
/// `server.drain_timeout`, whichever a reload last set; Pingora's own wait only has to be
/// longer than any of those.
const PINGORA_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// Runs the proxy until SIGTERM (graceful drain) or SIGINT (fast stop); SIGHUP reloads
/// `source`. Never returns on success.
pub fn run(config: Config, source: ConfigSource) -> Result<(), RunError> {
    telemetry::init_logging(&config.log).map_err(RunError::Logging)?;
    let (server, reloader) = build(config, source)?;
    server.run(RunArgs {
        shutdown_signal: Box::new(drain::Signals::new(reloader)),
    });
    std::process::exit(0)
}

/// Builds the server without starting it, and the reloader its signal handling needs.
pub fn build(config: Config, source: ConfigSource) -> Result<(Server, Arc<Reloader>), RunError> {
    let mut conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(PINGORA_GRACE.as_secs()),
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

    let metrics = Arc::new(Metrics::new());
    let listen = config.listen.clone();
    let http2_on_tls = config.http2.enabled;
    let admin_addr = config.admin.address;
    metrics.ops.config_loaded(&config.fingerprint);
    tracing::info!(config = %config.fingerprint, "configuration loaded");
    let state = Arc::new(State::new(config, metrics.clone())?);
    let reloader = Arc::new(Reloader::new(state.clone(), source));

    let http = pingora::proxy::http_proxy(&server.configuration, StreamGuard::new(state.clone()));
    // The listener is plain TCP even with TLS on: the front does the handshake itself, after
    // the connection gate and within the first head's deadline (`accept`). There are no files
    // to load here: each handshake takes the certificate of the policy in force, so a reload
    // renews it (`proxy::tls`).
    let tls = match listen.tls {
        Some(_) => {
            let acceptor = |alpn: ALPN| -> Result<Acceptor, RunError> {
                let mut settings =
                    TlsSettings::intermediate("", "").map_err(|e| RunError::Tls(e.to_string()))?;
                settings.set_cert_resolver(Arc::new(PolicyCertificate::new(state.clone())));
                settings.set_alpn(alpn);
                Ok(settings.build())
            };
            // ALPN `h2` then `http/1.1`, never `h2` alone: WebSocket needs HTTP/1.1.
            let serve = if http2_on_tls { ALPN::H2H1 } else { ALPN::H1 };
            Some(accept::TlsSide {
                serve: acceptor(serve)?,
                refuse: acceptor(ALPN::H1)?,
            })
        }
        None => None,
    };
    let mut proxy = Service::new(
        "streamguard proxy".to_string(),
        accept::Front::new(Arc::new(http), state.clone(), tls),
    );
    let mut socket = TcpSocketOptions::default();
    socket.so_reuseport = Some(listen.reuse_port);
    let endpoint = ListenerConfig::tcp(listen.address.to_string())
        .l4_buffer(CLIENT_BUFFERS)
        .tcp_socket_options(socket);
    proxy.add_listener(endpoint);

    let mut admin = Service::new(
        "streamguard admin".to_string(),
        Admin {
            state: state.clone(),
            reloader: reloader.clone(),
        },
    );
    admin.add_tcp(&admin_addr.to_string());

    let supervisor = background_service(
        "streamguard supervisor",
        Supervisor {
            reloader: reloader.clone(),
        },
    );
    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(supervisor);
    Ok((server, reloader))
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

/// Sweeps limiter state and checks the upstream every few seconds, watches the configuration
/// files when `server.watch_config` is on, and runs the drain once one is asked for (see
/// `drain`).
struct Supervisor {
    reloader: Arc<Reloader>,
}

impl Supervisor {
    /// Reloads whenever the watched files change, checking every `server.watch_interval` of the
    /// policy in force (a reload can turn the watch on, off, or change its pace).
    async fn watch_config(reloader: Arc<Reloader>) {
        loop {
            let server = &reloader.state().policy().config.server;
            let (on, every) = (server.watch_config, server.watch_interval);
            tokio::time::sleep(every).await;
            if on {
                // The reloader logs and counts the outcome.
                let _ = reloader.reload_if_changed().await;
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let state = self.reloader.state();
        if let Some(store) = &state.fleet {
            let store = Arc::clone(store);
            tokio::spawn(async move { store.run().await });
        }
        let watch = tokio::spawn(Self::watch_config(self.reloader.clone()));
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = sweep.tick() => {}
                _ = state.lifecycle.drain_requested() => break,
                // Pingora's own shutdown without a drain asked for (SIGQUIT): drain now.
                _ = shutdown.wait_for(|down| *down) => {
                    state.lifecycle.request_drain(DrainTrigger::Signal);
                    break;
                }
            }
            state.limiter.sweep(std::time::Instant::now());
            state
                .metrics
                .limiter_keys
                .set(state.limiter.tracked_keys() as i64);
            let up = upstream_accepts(state.policy().config.upstream.address).await;
            state.metrics.ops.upstream_up.set(i64::from(up));
        }
        // A draining process keeps the configuration it has.
        watch.abort();
        drain::run(state, shutdown).await
    }
}
