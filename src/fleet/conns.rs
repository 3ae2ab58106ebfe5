//! The store's connections to Redis: a *home* connection on the runtime of the background task,
//! and one per runtime that serves requests.
//!
//! A connection's driver task runs on the runtime that made it. If requests used the home
//! connection, every admission would hand its command to the background runtime's thread and
//! wait for the reply to be handed back: wake-ups and context switches that cost the proxy more
//! than the admission itself (measured at 100 us and more per stream setup). So each request
//! runtime gets its own connection, whose driver runs beside the requests that use it, and the
//! admissions of one event-loop turn leave in one write.
//!
//! A runtime's own connection is opened in the background the first time the runtime asks,
//! and until it is up the runtime uses the home connection, so a runtime's first stream setups
//! do not wait for its connect (a TLS handshake, `AUTH`) inside the store's `timeout`. (The home
//! connection itself connects lazily at start, and a stream setup in those first moments may.)
//! A failed open is tried again on a later request, at most every [`RECONNECT_WITHIN`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult};
use tokio::runtime::{Handle, Id};

use super::lock;

/// How often a connection's manager tries again, at most: a Redis that comes back is found
/// within this (and the breaker's probe runs at the same pace).
pub(super) const RECONNECT_WITHIN: Duration = Duration::from_millis(250);

/// How long the background task waits for the home connection's first `PING`.
const FIRST_PING_WITHIN: Duration = Duration::from_secs(1);

pub(super) struct Connections {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Made by [`Connections::open_home`], on the background runtime.
    home: OnceLock<ConnectionManager>,
    /// A handful of entries: Pingora's runtimes live as long as the process.
    per_runtime: Mutex<HashMap<Id, Local>>,
}

enum Local {
    Connecting,
    Ready(ConnectionManager),
    /// The last try failed at this moment: home serves this runtime until the next try is due,
    /// so a Redis that refuses connections (say, at `maxclients`) is not dialled per request.
    Failed(Instant),
}

impl Connections {
    pub(super) fn new(client: redis::Client, timeout: Duration) -> Connections {
        // Our own timeout bounds every call (`Shared::call`); connecting may take longer than
        // one call is allowed, since no call waits for it.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(RECONNECT_WITHIN);
        Connections {
            client,
            config,
            home: OnceLock::new(),
            per_runtime: Mutex::new(HashMap::new()),
        }
    }

    /// The client, for what is not a request (the eviction channel's subscription).
    pub(super) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Makes the home connection and sends it a first `PING` from the calling (background)
    /// runtime, so that its driver usually starts there. Redis being down is fine: the manager
    /// keeps trying.
    pub(super) async fn open_home(&self) {
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(conn) => {
                let mut conn = self.home.get_or_init(|| conn).clone();
                let ping = redis::cmd("PING");
                let _ = tokio::time::timeout(FIRST_PING_WITHIN, ping.query_async::<()>(&mut conn))
                    .await;
            }
            Err(e) => tracing::error!(
                error = %e,
                "cannot set up the limit store's connection; new streams follow limits.store.on_error"
            ),
        }
    }

    /// Whether [`Connections::open_home`] has made the home connection: until then (the first
    /// moments after start) there is nothing to call.
    pub(super) fn started(&self) -> bool {
        self.home.get().is_some()
    }

    /// Drops the calling runtime's own connection after a call on it timed out: a connection
    /// that a middlebox dropped without a reset never errors, it only goes silent, and the
    /// manager would keep it. Home serves the runtime until a fresh one is open. A runtime
    /// whose own is still being opened (the call went on home) keeps that open going rather
    /// than start a second one.
    pub(super) fn forget_this_runtime(&self) {
        if let Ok(runtime) = Handle::try_current() {
            let mut per_runtime = lock(&self.per_runtime);
            if matches!(per_runtime.get(&runtime.id()), Some(Local::Ready(_))) {
                per_runtime.remove(&runtime.id());
            }
        }
    }

    /// The home connection (the background task's work).
    pub(super) fn home(&self) -> Option<ConnectionManager> {
        self.home.get().cloned()
    }

    /// The calling runtime's own connection, or the home connection while that one is being
    /// opened; `None` before the home connection exists.
    pub(super) fn for_this_runtime(self: &Arc<Self>) -> Option<ConnectionManager> {
        let home = self.home.get()?;
        let Ok(runtime) = Handle::try_current() else {
            return Some(home.clone());
        };
        let id = runtime.id();
        let mut per_runtime = lock(&self.per_runtime);
        match per_runtime.get(&id) {
            Some(Local::Ready(conn)) => return Some(conn.clone()),
            Some(Local::Connecting) => return Some(home.clone()),
            Some(Local::Failed(at)) if at.elapsed() < RECONNECT_WITHIN => {
                return Some(home.clone())
            }
            Some(Local::Failed(_)) | None => {}
        }
        per_runtime.insert(id, Local::Connecting);
        drop(per_runtime);
        let this = Arc::clone(self);
        runtime.spawn(async move {
            let opened =
                ConnectionManager::new_with_config(this.client.clone(), this.config.clone()).await;
            let mut per_runtime = lock(&this.per_runtime);
            match opened {
                Ok(conn) => {
                    per_runtime.insert(id, Local::Ready(conn));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "opening a limit store connection failed");
                    per_runtime.insert(id, Local::Failed(Instant::now()));
                }
            }
        });
        Some(home.clone())
    }
}

/// Why a request got no reply: what the `store_down` line names as the cause.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error("{0}")]
    Redis(#[from] RedisError),
    #[error("timed out")]
    TimedOut,
    /// Before the background task has made the connections, in the first moments after start.
    #[error("no connection yet")]
    NotConnected,
}

/// Sends `request` on `conn` within `budget`, and once more if the connection turned out dead,
/// which the manager then replaces: an idle connection that Redis closed (its `timeout`, or a
/// restart) must not make a healthy store count as down, nor send that one stream to
/// `on_error`. The budget bounds both tries. Only a dropped or refused connection is tried
/// again, never a reply that came back wrong (the script ran). A request whose connection died
/// after Redis ran it but before the reply (Redis killed at that instant, a reset by a
/// middlebox) runs twice: the first admission's lease belongs to no stream and lapses within
/// `lease`.
pub(super) async fn send<T, F, Fut>(
    conn: &ConnectionManager,
    budget: Duration,
    request: F,
) -> Result<T, Failure>
where
    F: Fn(ConnectionManager) -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let tries = async {
        match request(conn.clone()).await {
            Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                request(conn.clone()).await
            }
            other => other,
        }
    };
    match tokio::time::timeout(budget, tries).await {
        Ok(reply) => Ok(reply?),
        Err(_) => Err(Failure::TimedOut),
    }
}
