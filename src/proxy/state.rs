//! Everything the proxy builds once at start-up and shares between requests.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::policy::auth::Verifier;
use crate::policy::cors::CorsPolicy;
use crate::policy::limits::{Limiter, MemoryStore};
use crate::policy::routes::RouteTable;
use crate::relay::sse::slow::SlowBudget;
use crate::relay::upstream::StreamConnector;
use crate::telemetry::Metrics;

/// Why the proxy could not be set up from a valid-looking config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("auth: {0}")]
    Auth(String),
    #[error("cors: {0}")]
    Cors(String),
}

/// The shared, immutable-after-start state of one proxy process.
pub struct State {
    pub config: Config,
    pub cors: CorsPolicy,
    /// `None` when no route can require a token (`auth.mode = "off"` everywhere).
    pub verifier: Option<Verifier>,
    pub routes: RouteTable,
    pub limiter: Limiter,
    pub metrics: Arc<Metrics>,
    pub streams: StreamConnector,
    /// The memory all SSE streams together may hold for clients that are behind
    /// (`sse.slow_buffer_total`): one budget for the process, so it lives here.
    pub slow_budget: SlowBudget,
    /// Turns true when SIGTERM starts the drain.
    pub shutdown: watch::Receiver<bool>,
}

impl State {
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<State, SetupError> {
        let verifier = match &config.auth.key {
            Some(_) => {
                Some(Verifier::new(&config.auth).map_err(|e| SetupError::Auth(e.to_string()))?)
            }
            None => None,
        };
        Ok(State {
            cors: CorsPolicy::new(&config.cors).map_err(|e| SetupError::Cors(e.to_string()))?,
            routes: RouteTable::new(&config.routes, config.auth.mode),
            limiter: Limiter::new(Arc::new(MemoryStore::new()), rand::random()),
            streams: StreamConnector::new(&config.upstream),
            slow_budget: SlowBudget::new(config.sse.slow_buffer_total, &metrics),
            verifier,
            metrics,
            shutdown,
            config,
        })
    }
}
