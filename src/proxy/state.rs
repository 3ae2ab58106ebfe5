//! Everything the proxy builds once at start-up and shares between requests.

use std::sync::Arc;

use crate::config::{Config, StoreConfig};
use crate::fleet::{RedisStore, StoreError};
use crate::policy::auth::Verifier;
use crate::policy::cors::CorsPolicy;
use crate::policy::limits::{LimitStore, Limiter, MemoryStore};
use crate::policy::routes::RouteTable;
use crate::relay::lifecycle::TrustedKeys;
use crate::relay::sse::slow::SlowBudget;
use crate::relay::upstream::StreamConnector;
use crate::telemetry::Metrics;

use super::lifecycle::LifecycleControl;

/// Why the proxy could not be set up from a valid-looking config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("auth: {0}")]
    Auth(String),
    #[error("cors: {0}")]
    Cors(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The shared, immutable-after-start state of one proxy process.
pub struct State {
    pub config: Config,
    pub cors: CorsPolicy,
    /// `None` when no route can require a token (`auth.mode = "off"` everywhere).
    pub verifier: Option<Verifier>,
    pub routes: RouteTable,
    pub limiter: Limiter,
    /// The shared limit store, whose background tasks the server starts; `None` with the
    /// in-memory store.
    pub fleet: Option<Arc<RedisStore>>,
    pub metrics: Arc<Metrics>,
    pub streams: StreamConnector,
    /// The memory all SSE streams together may hold for clients that are behind
    /// (`sse.slow_buffer_total`): one budget for the process, so it lives here.
    pub slow_budget: SlowBudget,
    /// The drain, and which keys streams may keep running on.
    pub lifecycle: LifecycleControl,
}

impl State {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<State, SetupError> {
        let verifier = match &config.auth.key {
            Some(_) => {
                Some(Verifier::new(&config.auth).map_err(|e| SetupError::Auth(e.to_string()))?)
            }
            None => None,
        };
        let fleet = match &config.store {
            StoreConfig::Memory => None,
            StoreConfig::Redis(cfg) => Some(Arc::new(RedisStore::new(cfg, Arc::clone(&metrics))?)),
        };
        let store: Arc<dyn LimitStore> = match &fleet {
            Some(fleet) => fleet.clone(),
            None => Arc::new(MemoryStore::new()),
        };
        let trusted = TrustedKeys::new(verifier.iter().flat_map(Verifier::key_ids));
        Ok(State {
            lifecycle: LifecycleControl::new(trusted, config.server.drain_window),
            limiter: Limiter::new(store, rand::random()),
            fleet,
            cors: CorsPolicy::new(&config.cors).map_err(|e| SetupError::Cors(e.to_string()))?,
            routes: RouteTable::new(&config.routes, config.auth.mode),
            streams: StreamConnector::new(&config.upstream),
            slow_budget: SlowBudget::new(config.sse.slow_buffer_total, &metrics),
            verifier,
            metrics,
            config,
        })
    }
}
