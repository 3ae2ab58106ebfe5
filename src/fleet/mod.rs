//! Limits shared by every replica through Redis (or Valkey): the [`RedisStore`] behind
//! `[limits.store] kind = "redis"`.
//!
//! Without it each replica counts alone, so three replicas give a user three times their
//! stream cap and connect rate. The store keeps per-user state in Redis and decides each
//! stream admission in one atomic script call (`lua/admit.lua`): lapsed leases dropped, the
//! connect rate checked with Redis's clock, the cap checked, the oldest streams evicted.
//!
//! - **Leases, not counters.** A stream's slot is a member of its user's sorted set, scored by
//!   a deadline that the owning replica pushes out in batches (`lua/renew.lua`, every third of
//!   a lease). A replica that dies stops renewing, and its slots lapse within `lease`; a Redis
//!   restarted empty is filled again by the next renewal, since a missing member of a live
//!   stream is added back.
//! - **Eviction across replicas.** The admitting script publishes the evicted member on its
//!   owner's channel (`<prefix>evict:<replica>`), and records it in the user's evicted set, so
//!   the owner's next renewal evicts it even if the message was lost.
//! - **Cheap on the request path.** An admission is one script call on a connection of the
//!   runtime it runs on (`conns`: no hand-off to another thread), and ended streams' releases
//!   ride on their user's next admission or a batched round trip (`releases`).
//! - **When Redis is down or slow** (a failed call, or none within `timeout`), `on_error`
//!   decides new streams: this replica's own limits, admit, or refuse. A [`breaker::Breaker`]
//!   stops stream setups from waiting on a dead Redis, and a probe closes it again. Streams
//!   already open are never closed because of the store.
//!
//! This process's own books (the global `max_streams`, which guards this process's memory and
//! files, and the per-replica fallback) stay in a [`MemoryStore`]; `requests_per_ip` is a
//! per-replica flood guard and never leaves it.

mod breaker;
mod conns;
mod keys;
mod releases;
mod tasks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::{FromRedisValue, Script, ScriptInvocation, Value};
use tokio::sync::Notify;

use crate::config::{OnStoreError, OnUserLimit, RedisStoreConfig};
use crate::policy::limits::{
    Acquire, LimitKey, LimitStore, MemoryStore, Quota, RateCheck, StreamLimits, StreamTicket,
};
use crate::telemetry::{Metrics, StoreOp, SECURITY_TARGET};

use self::breaker::{Breaker, Transition};
use self::conns::{Connections, Failure};
use self::keys::Keys;
use self::releases::Releases;

/// Why the store could not be set up from a config that validated.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("limits.store.url: {0}; check the URL (scheme redis://, rediss:// or unix://)")]
    Url(String),
}

/// The scripts, with the GCRA helpers prepended to those that rate-limit.
struct Scripts {
    admit: Script,
    message: Script,
    renew: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let gcra = include_str!("lua/gcra.lua");
        Scripts {
            admit: Script::new(&format!("{gcra}\n{}", include_str!("lua/admit.lua"))),
            message: Script::new(&format!("{gcra}\n{}", include_str!("lua/message.lua"))),
            renew: Script::new(&format!("{gcra}\n{}", include_str!("lua/renew.lua"))),
        }
    }
}

/// One of this replica's streams, as its user's leases know it.
struct Lease {
    admitted_us: u64,
    seq: u64,
    ticket: Arc<StreamTicket>,
}

/// This replica's leases of one user, under the user's leases key.
struct UserLeases {
    key: LimitKey,
    leases: Vec<Lease>,
}

/// The shared [`LimitStore`]. Cheap to share: everything lives behind one `Arc`, which the
/// background tasks ([`RedisStore::run`]) and pending decisions hold too.
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    conns: Arc<Connections>,
    keys: Keys,
    /// This process's name in members and its eviction channel: random, so a restarted
    /// replica never takes over the leases of the process it replaces.
    replica: String,
    channel: String,
    timeout: Duration,
    lease: Duration,
    on_error: OnStoreError,
    scripts: Scripts,
    seq: AtomicU64,
    local: MemoryStore,
    leases: Mutex<HashMap<String, UserLeases>>,
    /// `messages_per_user` budgets Redis refused, until when: a client flooding messages is
    /// refused here instead of costing a round trip per message. Exact, never early: the TAT
    /// only moves later, so nothing would pass before then anyway.
    refused: Mutex<HashMap<LimitKey, Instant>>,
    breaker: Mutex<Breaker>,
    releases: Releases,
    /// Asks for a renewal now: Redis came back, or the eviction channel reconnected.
    renew_now: Notify,
    metrics: Arc<Metrics>,
}

/// A panic elsewhere must not take the limiter down: every critical section here leaves its
/// map consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the admission script answered.
enum Admitted {
    Ok { member: String, mine: Vec<String> },
    Rate(Duration),
    Full,
}

impl Admitted {
    fn parse(reply: Vec<Value>) -> Option<Admitted> {
        let text = |v: &Value| String::from_redis_value(v.clone()).ok();
        let mut items = reply.iter();
        match text(items.next()?)?.as_str() {
            "ok" => Some(Admitted::Ok {
                member: text(items.next()?)?,
                mine: items.filter_map(text).collect(),
            }),
            "rate" => {
                let us = u64::from_redis_value(items.next()?.clone()).ok()?;
                Some(Admitted::Rate(Duration::from_micros(us)))
            }
            "full" => Some(Admitted::Full),
            _ => None,
        }
    }
}

/// At most this many of a user's ended streams ride on their next admission; the background
/// task removes any others.
const CARRIED_RELEASES: usize = 64;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, micros)
}

impl RedisStore {
    pub fn new(cfg: &RedisStoreConfig, metrics: Arc<Metrics>) -> Result<RedisStore, StoreError> {
        use redis::IntoConnectionInfo;
        let mut info = cfg
            .url
            .as_str()
            .into_connection_info()
            // The client's message may quote the URL, password included.
            .map_err(|_| StoreError::Url("not a Redis URL".into()))?;
        if let Some(password) = &cfg.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = match &cfg.ca {
            // A private CA: the server's certificate must chain to it, not to the system's roots.
            Some(ca) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|_| StoreError::Url("not usable".into()))?;
        let keys = Keys::new(&cfg.key_prefix);
        let replica = format!("{:016x}", rand::random::<u64>());
        Ok(RedisStore {
            shared: Arc::new(Shared {
                conns: Arc::new(Connections::new(client, cfg.timeout)),
                channel: format!("{}{replica}", keys.channel_prefix()),
                keys,
                replica,
                timeout: cfg.timeout,
                lease: cfg.lease,
                on_error: cfg.on_error,
                scripts: Scripts::new(),
                seq: AtomicU64::new(0),
                local: MemoryStore::new(),
                leases: Mutex::new(HashMap::new()),
                refused: Mutex::new(HashMap::new()),
                breaker: Mutex::new(Breaker::default()),
                releases: Releases::default(),
                renew_now: Notify::new(),
                metrics,
            }),
        })
    }

    /// The store's background work: lease renewal, batched releases, the eviction channel and
    /// the health probe. Spawn once, on a runtime that lives as long as the process (its
    /// connection's driver task lives there).
    pub async fn run(&self) {
        tasks::run(Arc::clone(&self.shared)).await;
    }
}

impl Shared {
    /// Whether a call may go to Redis now: the connections are set up and the breaker is shut.
    fn available(&self) -> bool {
        self.conns.started() && lock(&self.breaker).is_closed()
    }

    fn record(&self, transition: Transition, cause: Option<&Failure>) {
        let store = &self.metrics.store;
        match transition {
            Transition::None => {}
            Transition::Opened => {
                store.up.set(0);
                tracing::warn!(
                    target: SECURITY_TARGET,
                    security = true,
                    event = "store_down",
                    on_error = ?self.on_error,
                    cause = cause.map(ToString::to_string),
                    "the limit store does not answer; new streams follow limits.store.on_error"
                );
            }
            Transition::Closed => {
                store.up.set(1);
                tracing::warn!(
                    target: SECURITY_TARGET,
                    security = true,
                    event = "store_up",
                    "the limit store answers again; limits are shared again"
                );
                // Streams admitted meanwhile, or whose leases lapsed, count again.
                self.renew_now.notify_one();
            }
        }
    }

    fn succeeded(&self) {
        let transition = lock(&self.breaker).success();
        self.record(transition, None);
    }

    /// Counts a failed call; its cause (the client's error: a refused certificate, a wrong
    /// password, a timeout) goes into the `store_down` line if this one opens the breaker.
    fn failed(&self, op: StoreOp, cause: &Failure) {
        self.metrics.store.error(op);
        let transition = lock(&self.breaker).failure(Instant::now());
        self.record(transition, Some(cause));
    }

    /// One script call, bounded by `timeout`; `None` if it failed or took too long (the
    /// breaker counts it).
    async fn call<T: FromRedisValue>(
        self: &Arc<Self>,
        op: StoreOp,
        invocation: &ScriptInvocation<'_>,
    ) -> Option<T> {
        let Some(conn) = self.conns.for_this_runtime() else {
            self.failed(op, &Failure::NotConnected);
            return None;
        };
        let invoke = |mut conn| async move { invocation.invoke_async(&mut conn).await };
        match self
            .observed(op, conns::send(&conn, self.timeout, invoke))
            .await
        {
            Ok(reply) => Some(reply),
            Err(failure) => {
                tracing::debug!(op = op.label(), %failure, "limit store call failed");
                if matches!(failure, Failure::TimedOut) {
                    self.conns.forget_this_runtime();
                }
                self.failed(op, &failure);
                None
            }
        }
    }

    /// Awaits a request; a reply is timed into `op`'s histogram and counts for the breaker.
    async fn observed<T>(
        &self,
        op: StoreOp,
        request: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let started = Instant::now();
        let reply = request.await?;
        self.metrics
            .store
            .observe(op, started.elapsed().as_secs_f64());
        self.succeeded();
        Ok(reply)
    }

    fn register(&self, key: &LimitKey, leases_key: String, lease: Lease) {
        lock(&self.leases)
            .entry(leases_key)
            .or_insert_with(|| UserLeases {
                key: key.clone(),
                leases: Vec::new(),
            })
            .leases
            .push(lease);
    }

    /// The members of `users` (leases key, members) whose streams are no longer open here.
    /// One lock, and a set per user: a key can hold many streams (a shared service token).
    fn ended_of(&self, users: &[(String, Vec<String>)]) -> Vec<(String, String)> {
        let all = lock(&self.leases);
        let mut ended = Vec::new();
        for (leases_key, members) in users {
            let open: std::collections::HashSet<u64> = all
                .get(leases_key)
                .map(|user| user.leases.iter().map(|l| l.seq).collect())
                .unwrap_or_default();
            for member in members {
                let seq = keys::parse_member(member, &self.replica).map(|(_, seq)| seq);
                if !seq.is_some_and(|seq| open.contains(&seq)) {
                    ended.push((leases_key.clone(), member.clone()));
                }
            }
        }
        ended
    }

    /// Evicts one of this replica's streams that another admission took the slot of.
    fn evict_local(&self, leases_key: &str, member: &str) {
        let Some((_, seq)) = keys::parse_member(member, &self.replica) else {
            return;
        };
        let mut all = lock(&self.leases);
        let Some(user) = all.get_mut(leases_key) else {
            return;
        };
        let Some(position) = user.leases.iter().position(|l| l.seq == seq) else {
            return;
        };
        let lease = user.leases.remove(position);
        let key = user.key.clone();
        if user.leases.is_empty() {
            all.remove(leases_key);
        }
        drop(all);
        // Out of the books first: the stream's later release must be a no-op.
        self.local.release_stream(&key, &lease.ticket);
        lease.ticket.evict();
    }

    /// An admission while Redis cannot decide, by `on_error`.
    fn degraded(&self, key: &LimitKey, limits: &StreamLimits, now: Instant) -> Acquire {
        let outcome = match self.on_error {
            OnStoreError::Local => self.local.acquire(key, limits, now),
            OnStoreError::Open => self.local.acquire(key, &global_only(limits), now),
            OnStoreError::Closed => return Acquire::Unavailable,
        };
        if let Acquire::Acquired(ticket) = &outcome {
            // Unknown to Redis for now: the first renewal that gets through adds it.
            let lease = Lease {
                admitted_us: wall_clock_us(),
                seq: self.seq.fetch_add(1, Ordering::Relaxed),
                ticket: Arc::clone(ticket),
            };
            self.register(key, self.keys.leases(key), lease);
        }
        outcome
    }

    async fn acquire(
        self: &Arc<Self>,
        key: &LimitKey,
        limits: &StreamLimits,
        now: Instant,
    ) -> Acquire {
        if !self.available() {
            return self.degraded(key, limits, now);
        }
        // This process's global slot first, held across the round trip: a stream Redis admits
        // must not then find the process full, after Redis evicted someone for it.
        let ticket = match self.local.acquire(key, &global_only(limits), now) {
            Acquire::Acquired(ticket) => ticket,
            refused => return refused,
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let user = self.keys.user(key);
        let (interval, tolerance) = limits
            .connect_rate
            .map_or((0, 0), |q| (micros(q.interval).max(1), micros(q.tolerance)));
        let released = self.releases.take_user(&user.leases, CARRIED_RELEASES);
        let mut invocation = self.scripts.admit.prepare_invoke();
        invocation
            .key(&user.leases)
            .key(&user.connects)
            .key(&user.evicted)
            .arg(&self.replica)
            .arg(seq)
            .arg(micros(self.lease))
            .arg(limits.per_user.map_or(-1, i64::from))
            .arg(u8::from(limits.on_user_limit == OnUserLimit::EvictOldest))
            .arg(interval)
            .arg(tolerance)
            .arg(self.keys.channel_prefix())
            .arg(&released);
        let reply: Option<Vec<Value>> = self.call(StoreOp::Admit, &invocation).await;
        if reply.is_none() {
            self.releases.put_back(user.leases.clone(), released);
        }
        match reply.map(Admitted::parse) {
            Some(Some(Admitted::Ok { member, mine })) => {
                let admitted_us = keys::parse_member(&member, &self.replica).map_or(0, |m| m.0);
                let lease = Lease {
                    admitted_us,
                    seq,
                    ticket: Arc::clone(&ticket),
                };
                self.register(key, user.leases.clone(), lease);
                for evicted in mine {
                    self.evict_local(&user.leases, &evicted);
                }
                Acquire::Acquired(ticket)
            }
            Some(Some(Admitted::Rate(retry_after))) => {
                self.local.release_stream(key, &ticket);
                Acquire::ConnectRate(retry_after)
            }
            Some(Some(Admitted::Full)) => {
                self.local.release_stream(key, &ticket);
                Acquire::UserFull
            }
            Some(None) | None => {
                self.local.release_stream(key, &ticket);
                self.degraded(key, limits, now)
            }
        }
    }

    fn check_message(self: &Arc<Self>, key: &LimitKey, quota: &Quota, now: Instant) -> RateCheck {
        if let Some(until) = lock(&self.refused).get(key) {
            if now < *until {
                return RateCheck::Done(Err(*until - now));
            }
        }
        if !self.available() {
            return RateCheck::Done(self.degraded_rate(key, quota, now));
        }
        let shared = Arc::clone(self);
        let key = key.clone();
        let quota = *quota;
        RateCheck::Pending(Box::pin(async move {
            let mut invocation = shared.scripts.message.prepare_invoke();
            invocation
                .key(shared.keys.messages(&key))
                .arg(micros(quota.interval).max(1))
                .arg(micros(quota.tolerance));
            match shared.call::<u64>(StoreOp::Message, &invocation).await {
                Some(0) => Ok(()),
                Some(us) => {
                    let retry_after = Duration::from_micros(us);
                    let mut refused = lock(&shared.refused);
                    if refused.len() >= refused.capacity() {
                        refused.retain(|_, until| *until > now);
                    }
                    refused.insert(key, now + retry_after);
                    Err(retry_after)
                }
                None => shared.degraded_rate(&key, &quota, now),
            }
        }))
    }

    fn degraded_rate(&self, key: &LimitKey, quota: &Quota, now: Instant) -> Result<(), Duration> {
        match self.on_error {
            OnStoreError::Local => self.local.check_rate(key, quota, now),
            OnStoreError::Open => Ok(()),
            OnStoreError::Closed => Err(quota.interval),
        }
    }
}

/// The limits without the per-user rules: the part this process checks on its own.
fn global_only(limits: &StreamLimits) -> StreamLimits {
    StreamLimits {
        global: limits.global,
        per_user: None,
        on_user_limit: OnUserLimit::Reject,
        connect_rate: None,
    }
}

#[async_trait]
impl LimitStore for RedisStore {
    async fn acquire_stream(&self, key: &LimitKey, limits: &StreamLimits, now: Instant) -> Acquire {
        self.shared.acquire(key, limits, now).await
    }

    fn release_stream(&self, key: &LimitKey, ticket: &StreamTicket) {
        let shared = &self.shared;
        shared.local.release_stream(key, ticket);
        let leases_key = shared.keys.leases(key);
        let mut all = lock(&shared.leases);
        let Some(user) = all.get_mut(&leases_key) else {
            return;
        };
        let Some(position) = user
            .leases
            .iter()
            .position(|l| std::ptr::eq(&*l.ticket, ticket))
        else {
            return;
        };
        let lease = user.leases.remove(position);
        if user.leases.is_empty() {
            all.remove(&leases_key);
        }
        drop(all);
        let member = keys::member(lease.admitted_us, &shared.replica, lease.seq);
        shared.releases.push(leases_key, member);
    }

    fn check_rate(&self, key: &LimitKey, quota: &Quota, now: Instant) -> Result<(), Duration> {
        self.shared.local.check_rate(key, quota, now)
    }

    fn check_shared_rate(&self, key: &LimitKey, quota: &Quota, now: Instant) -> RateCheck {
        self.shared.check_message(key, quota, now)
    }

    fn active_streams(&self) -> usize {
        self.shared.local.active_streams()
    }

    /// This replica's streams of `key` (the fleet's are in Redis).
    fn user_streams(&self, key: &LimitKey) -> usize {
        self.shared.local.user_streams(key)
    }

    fn tracked_keys(&self) -> usize {
        self.shared.local.tracked_keys() + lock(&self.shared.refused).len()
    }

    fn sweep(&self, now: Instant) {
        self.shared.local.sweep(now);
        lock(&self.shared.refused).retain(|_, until| *until > now);
    }

    /// This replica's heaviest holders: the page of one replica shows its own streams.
    fn top_holders(&self, n: usize) -> Vec<(LimitKey, usize)> {
        self.shared.local.top_holders(n)
    }
}
