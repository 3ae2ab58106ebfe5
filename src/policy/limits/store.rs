//! Where limit state lives. The policy ([`super::Limiter`]) turns configuration into limits; a
//! [`LimitStore`] keeps the counts and rate state and applies each check atomically. Splitting
//! the two lets a shared store (Redis) replace [`MemoryStore`] for a fleet of proxies without
//! touching the policy.
//!
//! [`MemoryStore`] is built for millions of distinct keys hit from every worker thread: state is
//! split over many independently locked shards (no lock shared by all requests), the global
//! stream count is one atomic, a user's entry disappears with their last stream unless rate
//! state still needs it, and state that has fully recovered is swept or pruned, so memory
//! follows the active keys, not the history.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::config::types::OnUserLimit;

use super::gcra::Quota;
use super::identity::LimitKey;
use super::ticket::StreamTicket;

/// Everything that applies to one stream admission (the route's effective `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub global: Option<u32>,
    pub per_user: Option<u32>,
    pub on_user_limit: OnUserLimit,
    /// `connects_per_user`.
    pub connect_rate: Option<Quota>,
}

/// The outcome of [`LimitStore::acquire_stream`].
#[derive(Debug)]
pub enum Acquire {
    /// Both slots are taken and owned by the ticket until it is released or evicted.
    Acquired(Arc<StreamTicket>),
    GlobalFull,
    /// Too many attempts; the next one would pass after this long.
    ConnectRate(Duration),
    UserFull,
    /// A shared store could not decide and is configured to refuse meanwhile
    /// (`limits.store.on_error = "closed"`).
    Unavailable,
}

/// A future a store hands back when a decision needs a round trip. Owned (`'static`), so the
/// caller can keep it across its own awaits.
pub type Pending<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A rate decision: made on the spot, or waiting on a shared store.
pub enum RateCheck {
    Done(Result<(), Duration>),
    Pending(Pending<Result<(), Duration>>),
}

/// The state operations the limits policy needs, each atomic on its own.
///
/// Admission is one operation (global cap, then connect rate, then user cap with eviction)
/// rather than one call per rule: as separate calls, "find the oldest, evict it, take its slot"
/// would let another admission take the freed slot in between, a connect attempt could be
/// charged and then refused by a global cap that filled meanwhile, and a shared store would pay
/// a round trip per rule.
///
/// Admission is `async` because a shared store (`crate::fleet`) decides it in one round trip;
/// the in-memory store never waits. Releases are synchronous because `Drop` cannot await: a
/// shared store queues them. The per-client request rate (`check_rate`) is always this
/// process's own flood guard; the per-user message rate (`check_shared_rate`) follows the
/// store, and only waits when it has to ask.
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Admits one stream for `key`: takes a global slot (if fewer than `limits.global` are
    /// held), charges the connect attempt, and takes one of `key`'s slots. When `key` is at
    /// `limits.per_user` and the policy is `EvictOldest`, its oldest streams are evicted and
    /// their slots handed to the new one in the same step. A refusal holds no slot once the
    /// answer is given; a refusal by the user cap still counts as a connect attempt.
    async fn acquire_stream(&self, key: &LimitKey, limits: &StreamLimits, now: Instant) -> Acquire;

    /// Gives back the slots held by `ticket`; a no-op if it was evicted (its slots already
    /// belong to the stream that evicted it) or already released.
    fn release_stream(&self, key: &LimitKey, ticket: &StreamTicket);

    /// One GCRA decision on `key`'s request rate in this process, recorded when it passes.
    fn check_rate(&self, key: &LimitKey, quota: &Quota, now: Instant) -> Result<(), Duration>;

    /// One GCRA decision on a rate counted wherever the store counts (every replica, for a
    /// shared store), recorded when it passes.
    fn check_shared_rate(&self, key: &LimitKey, quota: &Quota, now: Instant) -> RateCheck;

    fn active_streams(&self) -> usize;

    fn user_streams(&self, key: &LimitKey) -> usize;

    /// Keys with state held: users with streams or connect state, clients with request state.
    fn tracked_keys(&self) -> usize;

    /// Drops state that has fully recovered by `now` (indistinguishable from no state).
    fn sweep(&self, now: Instant);

    /// The `n` keys holding the most streams on this proxy, most first (the status page's abuse
    /// view). A walk over all state: for an operator's occasional look, never the request path.
    fn top_holders(&self, n: usize) -> Vec<(LimitKey, usize)>;
}

/// Enough shards that 8 busy threads rarely meet on one lock, few enough that summing them for
/// a gauge is cheap.
const SHARDS: usize = 64;

/// One shard on its own cache line, so threads locking neighbouring shards do not slow each
/// other through false sharing.
#[repr(align(64))]
struct Shard<V>(Mutex<HashMap<LimitKey, V>>);

struct Sharded<V> {
    shards: Box<[Shard<V>]>,
    /// Chooses the shard. Keys are client-controlled, hence a keyed hash; the maps inside use
    /// their own keys so a shard's keys are not clustered in its table.
    hasher: RandomState,
}

impl<V> Sharded<V> {
    fn new() -> Sharded<V> {
        Sharded {
            shards: (0..SHARDS)
                .map(|_| Shard(Mutex::new(HashMap::new())))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn lock(&self, key: &LimitKey) -> MutexGuard<'_, HashMap<LimitKey, V>> {
        // The modulo keeps the index in range; truncating the hash on 32-bit targets is fine.
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        lock(&self.shards[index].0)
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(&shard.0).len()).sum()
    }

    /// Keeps the entries `keep` accepts, one shard locked at a time so requests only ever wait
    /// for a single shard's pass, and hands memory back from maps that once held far more.
    fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        for shard in self.shards.iter() {
            let mut map = lock(&shard.0);
            map.retain(|_, value| keep(value));
            if map.capacity() > 64 && map.capacity() / 4 > map.len() {
                let target = map.len() * 2;
                map.shrink_to(target);
            }
        }
    }
}

/// A panic elsewhere must not take the limiter down with it: every critical section here leaves
/// the map consistent, so a poisoned lock is still safe to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drops reclaimable entries from a map that is about to grow. If that frees little, the map is
/// grown right away so the next prune is at least a doubling away (amortised O(1) per insert).
fn prune_before_growth<V>(map: &mut HashMap<LimitKey, V>, mut keep: impl FnMut(&V) -> bool) {
    if map.len() < map.capacity() {
        return;
    }
    map.retain(|_, value| keep(value));
    if map.len() * 4 > map.capacity() * 3 {
        map.reserve(map.capacity());
    }
}

/// One user's state: kept together so an admission is one lookup under one lock.
#[derive(Debug, Default)]
struct UserState {
    /// Live streams, oldest first.
    streams: VecDeque<Arc<StreamTicket>>,
    connect_tat: Option<Instant>,
}

impl UserState {
    fn is_idle(&self, now: Instant) -> bool {
        self.streams.is_empty() && self.connect_tat.is_none_or(|tat| tat <= now)
    }
}

/// The single-process [`LimitStore`].
pub struct MemoryStore {
    active: Padded,
    users: Sharded<UserState>,
    requests: Sharded<Instant>,
}

/// The global count gets a cache line of its own: every admission and release writes it.
#[repr(align(64))]
struct Padded(AtomicUsize);

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            active: Padded(AtomicUsize::new(0)),
            users: Sharded::new(),
            requests: Sharded::new(),
        }
    }

    // The global count guards no other memory, so relaxed ordering is enough for exactness:
    // read-modify-writes on one atomic are totally ordered.
    fn reserve_global(&self, cap: Option<u32>) -> bool {
        match cap {
            None => {
                self.active.0.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(cap) => self
                .active
                .0
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                    (held < cap as usize).then_some(held + 1)
                })
                .is_ok(),
        }
    }

    /// Whether the global cap is reached right now. Only used to choose which refusal to
    /// report; a slot is only ever taken by [`Self::reserve_global`].
    fn global_full(&self, cap: Option<u32>) -> bool {
        cap.is_some_and(|cap| self.active.0.load(Ordering::Relaxed) >= cap as usize)
    }

    fn release_global(&self, slots: usize) {
        self.active.0.fetch_sub(slots, Ordering::Relaxed);
    }

    /// Every rule for one user, under their shard's lock. Refusals take no global slot, not
    /// even for a moment: a user retrying at their own cap must not make a proxy with room look
    /// full to everyone else. The global cap still comes first: a refusal is reported as
    /// `GlobalFull` when the proxy is full, and charges no connect attempt then.
    fn admit(&self, user: &mut UserState, limits: &StreamLimits, now: Instant) -> Acquire {
        let connect_tat = match limits.connect_rate.map(|q| q.check(user.connect_tat, now)) {
            None => None,
            Some(Ok(tat)) => Some(tat),
            Some(Err(retry_after)) if !self.global_full(limits.global) => {
                return Acquire::ConnectRate(retry_after)
            }
            Some(Err(_)) => return Acquire::GlobalFull,
        };
        let cap = limits.per_user.map_or(usize::MAX, |cap| cap as usize);
        let held = user.streams.len();
        let evict = limits.on_user_limit == OnUserLimit::EvictOldest && cap > 0;
        if held >= cap && !evict {
            if self.global_full(limits.global) {
                return Acquire::GlobalFull;
            }
            // A refusal by the user cap still counts as an attempt.
            user.connect_tat = connect_tat.or(user.connect_tat);
            return Acquire::UserFull;
        }
        // Taken before evicting: at the global cap, a user's new stream does not push out
        // their old one only to be refused.
        if !self.reserve_global(limits.global) {
            return Acquire::GlobalFull;
        }
        user.connect_tat = connect_tat.or(user.connect_tat);
        if held >= cap {
            // A route may cap lower than the streams a user holds elsewhere: evict down to one
            // below the cap so the newcomer fits.
            let excess = held + 1 - cap;
            for oldest in user.streams.drain(..excess) {
                oldest.evict();
            }
            self.release_global(excess);
        }
        let ticket = Arc::new(StreamTicket::new());
        user.streams.push_back(Arc::clone(&ticket));
        Acquire::Acquired(ticket)
    }
}

impl MemoryStore {
    /// [`LimitStore::acquire_stream`] without the wait it never needs; also how a shared store
    /// keeps this process's own books.
    pub fn acquire(&self, key: &LimitKey, limits: &StreamLimits, now: Instant) -> Acquire {
        // A full proxy answers without touching any lock.
        if self.global_full(limits.global) {
            return Acquire::GlobalFull;
        }
        let mut map = self.users.lock(key);
        match map.get_mut(key) {
            Some(user) => self.admit(user, limits, now),
            None => {
                let mut user = UserState::default();
                let outcome = self.admit(&mut user, limits, now);
                if !user.is_idle(now) {
                    prune_before_growth(&mut map, |user| !user.is_idle(now));
                    map.insert(key.clone(), user);
                }
                outcome
            }
        }
    }
}

#[async_trait]
impl LimitStore for MemoryStore {
    async fn acquire_stream(&self, key: &LimitKey, limits: &StreamLimits, now: Instant) -> Acquire {
        self.acquire(key, limits, now)
    }

    fn release_stream(&self, key: &LimitKey, ticket: &StreamTicket) {
        let mut map = self.users.lock(key);
        let Some(user) = map.get_mut(key) else { return };
        // Per-user lists are short (they are capped), so a scan beats an index.
        let Some(position) = user
            .streams
            .iter()
            .position(|held| std::ptr::eq(&**held, ticket))
        else {
            return;
        };
        user.streams.remove(position);
        // Connect state that may still matter is left for `sweep`, which knows the time.
        if user.streams.is_empty() && user.connect_tat.is_none() {
            map.remove(key);
        }
        drop(map);
        self.release_global(1);
    }

    fn check_rate(&self, key: &LimitKey, quota: &Quota, now: Instant) -> Result<(), Duration> {
        let mut map = self.requests.lock(key);
        if let Some(tat) = map.get_mut(key) {
            *tat = quota.check(Some(*tat), now)?;
            return Ok(());
        }
        let tat = quota.check(None, now)?;
        prune_before_growth(&mut map, |tat| *tat > now);
        map.insert(key.clone(), tat);
        Ok(())
    }

    fn check_shared_rate(&self, key: &LimitKey, quota: &Quota, now: Instant) -> RateCheck {
        RateCheck::Done(self.check_rate(key, quota, now))
    }

    fn active_streams(&self) -> usize {
        self.active.0.load(Ordering::Relaxed)
    }

    fn user_streams(&self, key: &LimitKey) -> usize {
        self.users
            .lock(key)
            .get(key)
            .map_or(0, |user| user.streams.len())
    }

    fn tracked_keys(&self) -> usize {
        self.users.len() + self.requests.len()
    }

    fn sweep(&self, now: Instant) {
        self.users.retain(|user| !user.is_idle(now));
        self.requests.retain(|tat| *tat > now);
    }

    fn top_holders(&self, n: usize) -> Vec<(LimitKey, usize)> {
        let mut holders: Vec<(LimitKey, usize)> = Vec::new();
        for shard in self.users.shards.iter() {
            let map = lock(&shard.0);
            holders.extend(
                map.iter()
                    .filter(|(_, user)| !user.streams.is_empty())
                    .map(|(key, user)| (key.clone(), user.streams.len())),
            );
            // Keep the list short while walking, so a million users cost no million-entry Vec.
            if holders.len() > 4 * n.max(1) {
                holders.sort_by_key(|h| std::cmp::Reverse(h.1));
                holders.truncate(n);
            }
        }
        holders.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.to_string().cmp(&b.0.to_string()))
        });
        holders.truncate(n);
        holders
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::RateSpec;

    #[tokio::test]
    async fn top_holders_are_the_users_with_the_most_streams() {
        let store = MemoryStore::new();
        let limits = StreamLimits {
            global: None,
            per_user: None,
            on_user_limit: OnUserLimit::Reject,
            connect_rate: None,
        };
        let now = Instant::now();
        let mut held = Vec::new();
        for (n, count) in [(1, 3), (2, 1), (3, 5), (4, 2)] {
            for _ in 0..count {
                match store.acquire_stream(&user(n), &limits, now).await {
                    Acquire::Acquired(ticket) => held.push((user(n), ticket)),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(store.top_holders(2), vec![(user(3), 5), (user(1), 3)]);
        assert_eq!(store.top_holders(10).len(), 4);
        for (key, ticket) in &held {
            store.release_stream(key, ticket);
        }
        assert!(store.top_holders(3).is_empty());
    }

    fn user(n: usize) -> LimitKey {
        LimitKey::User(format!("user-{n}"))
    }

    fn caps(global: Option<u32>, per_user: Option<u32>, on: OnUserLimit) -> StreamLimits {
        StreamLimits {
            global,
            per_user,
            on_user_limit: on,
            connect_rate: None,
        }
    }

    fn quota(count: u32, per_secs: u64) -> Quota {
        Quota::from_spec(RateSpec {
            count,
            per: Duration::from_secs(per_secs),
        })
    }

    fn acquire(store: &MemoryStore, key: &LimitKey, limits: StreamLimits) -> Acquire {
        store.acquire(key, &limits, Instant::now())
    }

    fn acquired(outcome: Acquire) -> Arc<StreamTicket> {
        match outcome {
            Acquire::Acquired(ticket) => ticket,
            other => panic!("expected a slot, got {other:?}"),
        }
    }

    #[test]
    fn reject_at_user_cap_gives_back_the_global_slot() {
        let store = MemoryStore::new();
        let key = user(1);
        let limit = caps(Some(10), Some(2), OnUserLimit::Reject);
        let first = acquired(acquire(&store, &key, limit));
        let _second = acquired(acquire(&store, &key, limit));
        assert!(matches!(acquire(&store, &key, limit), Acquire::UserFull));
        assert_eq!(store.active_streams(), 2);
        store.release_stream(&key, &first);
        assert_eq!(store.user_streams(&key), 1);
        assert_eq!(store.active_streams(), 1);
        acquired(acquire(&store, &key, limit));
    }

    #[test]
    fn global_cap_counts_all_users() {
        let store = MemoryStore::new();
        let limit = caps(Some(3), None, OnUserLimit::Reject);
        let held: Vec<_> = (0..3)
            .map(|n| acquired(acquire(&store, &user(n), limit)))
            .collect();
        assert!(matches!(
            acquire(&store, &user(9), limit),
            Acquire::GlobalFull
        ));
        assert_eq!(store.tracked_keys(), 3);
        store.release_stream(&user(0), &held[0]);
        acquired(acquire(&store, &user(9), limit));
    }

    #[test]
    fn eviction_takes_the_oldest_and_releases_once() {
        let store = MemoryStore::new();
        let key = user(1);
        let limit = caps(Some(100), Some(2), OnUserLimit::EvictOldest);
        let a = acquired(acquire(&store, &key, limit));
        let b = acquired(acquire(&store, &key, limit));
        let c = acquired(acquire(&store, &key, limit));
        assert!(a.is_evicted());
        assert!(!b.is_evicted() && !c.is_evicted());
        assert_eq!((store.user_streams(&key), store.active_streams()), (2, 2));

        let d = acquired(acquire(&store, &key, limit));
        assert!(b.is_evicted() && !c.is_evicted() && !d.is_evicted());

        // The evicted streams' late releases must not free the newcomers' slots.
        store.release_stream(&key, &a);
        store.release_stream(&key, &b);
        store.release_stream(&key, &a);
        assert_eq!((store.user_streams(&key), store.active_streams()), (2, 2));
        store.release_stream(&key, &c);
        store.release_stream(&key, &d);
        store.release_stream(&key, &d);
        assert_eq!((store.user_streams(&key), store.active_streams()), (0, 0));
        assert_eq!(store.tracked_keys(), 0);
    }

    #[test]
    fn lower_route_cap_evicts_down_to_fit() {
        let store = MemoryStore::new();
        let key = user(1);
        let wide = caps(None, Some(5), OnUserLimit::EvictOldest);
        let held: Vec<_> = (0..4)
            .map(|_| acquired(acquire(&store, &key, wide)))
            .collect();
        let narrow = caps(None, Some(2), OnUserLimit::EvictOldest);
        let newest = acquired(acquire(&store, &key, narrow));
        let evicted: Vec<bool> = held.iter().map(|t| t.is_evicted()).collect();
        assert_eq!(evicted, [true, true, true, false]);
        assert!(!newest.is_evicted());
        assert_eq!((store.user_streams(&key), store.active_streams()), (2, 2));
    }

    #[test]
    fn zero_user_cap_never_admits_even_when_evicting() {
        let store = MemoryStore::new();
        let limit = caps(None, Some(0), OnUserLimit::EvictOldest);
        assert!(matches!(
            acquire(&store, &user(1), limit),
            Acquire::UserFull
        ));
        assert_eq!((store.active_streams(), store.tracked_keys()), (0, 0));
    }

    #[test]
    fn connect_rate_refusal_holds_no_slot() {
        let store = MemoryStore::new();
        let key = user(1);
        let limit = StreamLimits {
            connect_rate: Some(quota(1, 10)),
            ..caps(Some(5), Some(5), OnUserLimit::Reject)
        };
        let t0 = Instant::now();
        let first = acquired(store.acquire(&key, &limit, t0));
        let refused = store.acquire(&key, &limit, t0 + Duration::from_secs(4));
        assert!(matches!(refused, Acquire::ConnectRate(d) if d == Duration::from_secs(6)));
        assert_eq!((store.user_streams(&key), store.active_streams()), (1, 1));
        // The user's connect state outlives their streams until it has recovered.
        store.release_stream(&key, &first);
        assert_eq!((store.active_streams(), store.tracked_keys()), (0, 1));
        store.sweep(t0 + Duration::from_secs(9));
        assert_eq!(store.tracked_keys(), 1);
        store.sweep(t0 + Duration::from_secs(10));
        assert_eq!(store.tracked_keys(), 0);
    }

    #[test]
    fn user_cap_refusal_still_counts_as_a_connect_attempt() {
        let store = MemoryStore::new();
        let key = user(1);
        let limit = StreamLimits {
            connect_rate: Some(quota(2, 10)),
            ..caps(None, Some(0), OnUserLimit::Reject)
        };
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(matches!(store.acquire(&key, &limit, t0), Acquire::UserFull));
        }
        assert!(matches!(
            store.acquire(&key, &limit, t0),
            Acquire::ConnectRate(_)
        ));
        assert_eq!((store.active_streams(), store.tracked_keys()), (0, 1));
    }

    #[test]
    fn caps_are_exact_under_contention() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 3_000;
        const CAP: u32 = 3;
        const GLOBAL: u32 = 20;
        let store = MemoryStore::new();
        let limit = caps(Some(GLOBAL), Some(CAP), OnUserLimit::Reject);
        let peak_user = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (store, peak_user) = (&store, &peak_user);
                scope.spawn(move || {
                    let mut held = Vec::new();
                    for round in 0..ROUNDS {
                        // Four keys shared by all threads, so threads fight over the same caps.
                        let key = user((thread + round) % 4);
                        if let Acquire::Acquired(ticket) = acquire(store, &key, limit) {
                            peak_user.fetch_max(store.user_streams(&key), Ordering::Relaxed);
                            held.push((key, ticket));
                        }
                        assert!(store.active_streams() <= GLOBAL as usize);
                        if round % 3 == 2 {
                            for (key, ticket) in held.drain(..) {
                                store.release_stream(&key, &ticket);
                            }
                        }
                    }
                    for (key, ticket) in held {
                        store.release_stream(&key, &ticket);
                    }
                });
            }
        });
        assert!(peak_user.load(Ordering::Relaxed) <= CAP as usize);
        assert!(peak_user.load(Ordering::Relaxed) > 0);
        assert_eq!((store.active_streams(), store.tracked_keys()), (0, 0));
    }

    #[test]
    fn refused_admissions_never_make_others_see_a_full_proxy() {
        // One slot of two is free. A user hammering at their own cap (a reconnect loop getting
        // 429s) must not make the free slot look taken, or everyone else gets 503s from a
        // proxy that has room.
        let store = MemoryStore::new();
        let limit = caps(Some(2), Some(1), OnUserLimit::Reject);
        let hog = user(1);
        let _held = acquired(acquire(&store, &hog, limit));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let spurious = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    // GlobalFull too: while the other user holds the second slot, it is.
                    let refused = acquire(&store, &hog, limit);
                    assert!(matches!(refused, Acquire::UserFull | Acquire::GlobalFull));
                }
            });
            let other = user(2);
            let refusals: Vec<Acquire> = (0..50_000)
                .filter_map(|_| match acquire(&store, &other, limit) {
                    Acquire::Acquired(ticket) => {
                        store.release_stream(&other, &ticket);
                        None
                    }
                    refused => Some(refused),
                })
                .collect();
            // Stopped before asserting, so a failure cannot leave the scope waiting forever.
            stop.store(true, Ordering::Relaxed);
            refusals
        });
        assert!(
            spurious.is_empty(),
            "{} admissions refused with a slot free, e.g. {:?}",
            spurious.len(),
            spurious.first()
        );
        assert_eq!(store.active_streams(), 1);
    }

    #[test]
    fn evicting_under_contention_stays_exact() {
        let store = MemoryStore::new();
        let limit = caps(None, Some(2), OnUserLimit::EvictOldest);
        let key = user(7);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..2_000 {
                        let ticket = acquired(acquire(&store, &key, limit));
                        assert!(store.user_streams(&key) <= 2);
                        store.release_stream(&key, &ticket);
                    }
                });
            }
        });
        assert_eq!((store.active_streams(), store.tracked_keys()), (0, 0));
    }

    #[test]
    fn request_rate_is_per_key_and_swept_once_recovered() {
        let store = MemoryStore::new();
        let quota = quota(2, 10);
        let t0 = Instant::now();
        let key = user(1);
        for _ in 0..2 {
            assert!(store.check_rate(&key, &quota, t0).is_ok());
        }
        assert!(store.check_rate(&user(2), &quota, t0).is_ok());
        assert_eq!(store.tracked_keys(), 2);
        store.sweep(t0 + Duration::from_secs(9));
        assert_eq!(store.tracked_keys(), 1);
        let refused = store.check_rate(&key, &quota, t0 + Duration::from_secs(4));
        assert_eq!(refused, Err(Duration::from_secs(1)));
        store.sweep(t0 + Duration::from_secs(10));
        assert_eq!(store.tracked_keys(), 0);
    }

    #[test]
    fn recovered_state_is_pruned_before_a_shard_grows() {
        let store = MemoryStore::new();
        let quota = quota(1, 1);
        let connects = StreamLimits {
            connect_rate: Some(quota),
            ..caps(None, None, OnUserLimit::Reject)
        };
        let t0 = Instant::now();
        // Each wave of keys is recovered by the time the next wave arrives; without pruning
        // the maps would hold every key ever seen.
        for wave in 0..20u32 {
            let now = t0 + Duration::from_secs(2 * u64::from(wave));
            for n in 0..5_000 {
                let key = LimitKey::User(format!("{wave}-{n}"));
                assert!(store.check_rate(&key, &quota, now).is_ok());
                let ticket = acquired(store.acquire(&key, &connects, now));
                store.release_stream(&key, &ticket);
            }
        }
        let tracked = store.tracked_keys();
        assert!(tracked < 60_000, "{tracked} keys kept of 200000 seen");
    }
}
