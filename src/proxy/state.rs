//! What the proxy shares between requests, in two parts with two lifetimes.
//!
//! [`State`] lives as long as the process: the limiter and its counts, the metrics, the drain,
//! the slow-client budget. A reload must never reset them: a user's streams stay counted, rate
//! state stays, the drain goes on.
//!
//! [`Policy`] is everything one configuration decides (the config itself, CORS, the JWT keys,
//! the routes, the upstream connector, the TLS certificate), built from one `Config` and swapped whole by a reload.
//! Each request takes the policy in force when it starts and keeps it to the end, and a stream
//! keeps the policy it was opened under for its life: no request ever sees half of one
//! configuration and half of another, and a route index always refers to the routes it came
//! from.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;

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
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
}

/// Everything one configuration decides.
pub struct Policy {
    pub config: Config,
    pub cors: CorsPolicy,
    /// `None` when no route can require a token (`auth.mode = "off"` everywhere).
    pub verifier: Option<Verifier>,
    pub routes: RouteTable,
    pub streams: StreamConnector,
    /// The certificate the listener presents, with TLS on.
    pub tls: Option<Arc<CertifiedKey>>,
}

impl Policy {
    pub fn new(config: Config) -> Result<Policy, SetupError> {
        let verifier = match &config.auth.key {
            Some(_) => {
                Some(Verifier::new(&config.auth).map_err(|e| SetupError::Auth(e.to_string()))?)
            }
            None => None,
        };
        Ok(Policy {
            cors: CorsPolicy::new(&config.cors).map_err(|e| SetupError::Cors(e.to_string()))?,
            routes: RouteTable::new(&config.routes, config.auth.mode),
            streams: StreamConnector::new(&config.upstream),
            tls: config
                .listen
                .tls
                .as_ref()
                .map(super::tls::load)
                .transpose()?,
            verifier,
            config,
        })
    }

    /// Sets the gauges that report settings in force (alerts compare counts with them).
    fn publish(&self, metrics: &Metrics) {
        let listen = &self.config.listen;
        metrics
            .connections_max
            .set(i64::from(listen.max_connections));
        let max_streams = self.config.limits.max_streams;
        metrics.streams_max.set(max_streams.map_or(0, i64::from));
    }

    /// The keys this policy's verifier trusts.
    pub fn trusted_keys(&self) -> TrustedKeys {
        TrustedKeys::new(self.verifier.iter().flat_map(Verifier::key_ids))
    }
}

/// The process-lifetime state of one proxy process.
pub struct State {
    policy: ArcSwap<Policy>,
    pub limiter: Limiter,
    /// The shared limit store, whose background tasks the server starts; `None` with the
    /// in-memory store.
    pub fleet: Option<Arc<RedisStore>>,
    pub metrics: Arc<Metrics>,
    /// The memory all SSE streams together may hold for clients that are behind
    /// (`sse.slow_buffer_total`): one budget for the process, so it lives here.
    pub slow_budget: SlowBudget,
    /// The drain, and which keys streams may keep running on.
    pub lifecycle: LifecycleControl,
}

impl State {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<State, SetupError> {
        let fleet = match &config.store {
            StoreConfig::Memory => None,
            StoreConfig::Redis(cfg) => Some(Arc::new(RedisStore::new(cfg, Arc::clone(&metrics))?)),
        };
        let store: Arc<dyn LimitStore> = match &fleet {
            Some(fleet) => fleet.clone(),
            None => Arc::new(MemoryStore::new()),
        };
        let slow_budget = SlowBudget::new(config.sse.slow_buffer_total, &metrics);
        let revoke_window = config.server.drain_window;
        let policy = Policy::new(config)?;
        policy.publish(&metrics);
        Ok(State {
            lifecycle: LifecycleControl::new(policy.trusted_keys(), revoke_window),
            limiter: Limiter::new(store, rand::random()),
            fleet,
            slow_budget,
            metrics,
            policy: ArcSwap::from_pointee(policy),
        })
    }

    /// The policy in force now. A request takes it once and keeps it.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Puts `policy` in force for every request from now on; requests and streams that took
    /// the old one keep it.
    pub fn install(&self, policy: Policy) {
        policy.publish(&self.metrics);
        self.policy.store(Arc::new(policy));
    }
}
