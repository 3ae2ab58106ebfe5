//! Per-user and per-client limits: how many streams one user and the whole proxy may hold, how
//! fast a user may open them and how fast one address may send requests. Long-lived streams
//! make these the proxy's main defence against one client starving the others, so counts are
//! exact and every slot comes back through an RAII permit.
//!
//! This file is the policy: which configured limits apply to a request or stream, and what a
//! rejection tells the client. The state, and the atomic checks on it, live behind
//! [`LimitStore`]. Time is always passed in, so every rule is testable without sleeping.

mod gcra;
mod identity;
mod permit;
mod store;
mod ticket;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::types::{LimitsConfig, RateSpec};

pub use gcra::Quota;
pub use identity::{client_ip, forwarded_for, LimitKey};
pub use permit::StreamPermit;
pub use store::{Acquire, LimitStore, MemoryStore, Pending, RateCheck, StreamLimits};
pub use ticket::StreamTicket;

/// Which limit turned a request or stream away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitRejection {
    #[error("max_streams_per_user reached")]
    UserStreams,
    #[error("max_streams reached")]
    GlobalStreams,
    #[error("connects_per_user exceeded")]
    ConnectRate,
    #[error("requests_per_ip exceeded")]
    RequestRate,
    #[error("the shared limit store is unavailable (limits.store.on_error = \"closed\")")]
    StoreUnavailable,
}

impl LimitRejection {
    /// Stable lower-case name for metric labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            LimitRejection::UserStreams => "user_streams",
            LimitRejection::GlobalStreams => "global_streams",
            LimitRejection::ConnectRate => "connect_rate",
            LimitRejection::RequestRate => "request_rate",
            LimitRejection::StoreUnavailable => "store_unavailable",
        }
    }
}

/// The answer to a new stream.
#[derive(Debug)]
pub enum Admission {
    Admitted(StreamPermit),
    Rejected {
        reason: LimitRejection,
        retry_after: Duration,
    },
}

/// Whether one more WebSocket message may pass `messages_per_user`.
pub enum MessageCheck {
    Decided(bool),
    /// The shared store is being asked; resolves to the decision.
    Pending(Pending<bool>),
}

/// When a stream cap is full there is no telling when a slot frees up, so clients are sent
/// back after a random 1..=5 s; a fixed value would bring them all back in the same instant.
const CAP_RETRY_MIN_MS: u64 = 1_000;
const CAP_RETRY_SPREAD_MS: u64 = 4_000;

/// The limits policy, shared by every worker thread.
pub struct Limiter {
    store: Arc<dyn LimitStore>,
    /// Position in the jitter sequence; an atomic so concurrent rejections draw different values.
    jitter: AtomicU64,
}

impl Limiter {
    /// `jitter_seed` starts the retry-after jitter sequence; give each process a random one.
    pub fn new(store: Arc<dyn LimitStore>, jitter_seed: u64) -> Limiter {
        Limiter {
            store,
            jitter: AtomicU64::new(jitter_seed),
        }
    }

    /// The per-IP request rate (`requests_per_ip` with `burst`), for every request.
    pub fn check_request(
        &self,
        ip: IpAddr,
        limits: &LimitsConfig,
        now: Instant,
    ) -> Result<(), (LimitRejection, Duration)> {
        let Some(spec) = limits.requests_per_ip else {
            return Ok(());
        };
        let quota = Quota::with_burst(spec, limits.burst);
        self.store
            .check_rate(&LimitKey::Ip(ip), &quota, now)
            .map_err(|retry_after| (LimitRejection::RequestRate, retry_after))
    }

    /// Admits a new SSE or WebSocket stream for `key` on a route whose effective limits are
    /// `limits`. The store checks, in one step: the global cap (so a full proxy does not spend
    /// users' connect budget), the connect rate (before the user cap, so evicting cannot be used
    /// to churn streams faster than the rate allows), then the user cap.
    pub async fn admit_stream(
        &self,
        key: &LimitKey,
        limits: &LimitsConfig,
        now: Instant,
    ) -> Admission {
        let stream_limits = StreamLimits {
            global: limits.max_streams,
            per_user: limits.max_streams_per_user,
            on_user_limit: limits.on_user_limit,
            connect_rate: limits.connects_per_user.map(Quota::from_spec),
        };
        match self.store.acquire_stream(key, &stream_limits, now).await {
            Acquire::Acquired(ticket) => Admission::Admitted(StreamPermit::new(
                Arc::clone(&self.store),
                key.clone(),
                ticket,
            )),
            Acquire::GlobalFull => self.cap_rejection(LimitRejection::GlobalStreams),
            Acquire::ConnectRate(retry_after) => Admission::Rejected {
                reason: LimitRejection::ConnectRate,
                retry_after,
            },
            Acquire::UserFull => self.cap_rejection(LimitRejection::UserStreams),
            // Like a full proxy: the client cannot know when the store is back.
            Acquire::Unavailable => self.cap_rejection(LimitRejection::StoreUnavailable),
        }
    }

    /// Whether one more WebSocket message fits `messages_per_user`, counted across all of the
    /// user's sockets (on every replica, with a shared store). `messages_key` is
    /// `LimitKey::Messages(user key)`, built once per socket.
    pub fn allow_message(
        &self,
        messages_key: &LimitKey,
        spec: RateSpec,
        now: Instant,
    ) -> MessageCheck {
        match self
            .store
            .check_shared_rate(messages_key, &Quota::from_spec(spec), now)
        {
            RateCheck::Done(decision) => MessageCheck::Decided(decision.is_ok()),
            RateCheck::Pending(asking) => {
                MessageCheck::Pending(Box::pin(async move { asking.await.is_ok() }))
            }
        }
    }

    /// Streams held right now, for the active-streams gauge.
    pub fn active_streams(&self) -> usize {
        self.store.active_streams()
    }

    pub fn user_streams(&self, key: &LimitKey) -> usize {
        self.store.user_streams(key)
    }

    /// For the `streamguard_limiter_keys` gauge.
    pub fn tracked_keys(&self) -> usize {
        self.store.tracked_keys()
    }

    /// The `n` keys holding the most streams (see [`LimitStore::top_holders`]).
    pub fn top_holders(&self, n: usize) -> Vec<(LimitKey, usize)> {
        self.store.top_holders(n)
    }

    /// Reclaims state that has fully recovered; call every few seconds.
    pub fn sweep(&self, now: Instant) {
        self.store.sweep(now);
    }

    fn cap_rejection(&self, reason: LimitRejection) -> Admission {
        Admission::Rejected {
            reason,
            retry_after: self.cap_retry_after(),
        }
    }

    /// When to come back to a full cap (streams or connections): a random 1..=5 s.
    pub fn cap_retry_after(&self) -> Duration {
        Duration::from_millis(CAP_RETRY_MIN_MS + self.next_jitter() % (CAP_RETRY_SPREAD_MS + 1))
    }

    /// SplitMix64: one atomic add and a few multiplies, well mixed enough for spreading retries.
    fn next_jitter(&self) -> u64 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self
            .jitter
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::{OnUserLimit, RateSpec};
    use proptest::prelude::*;
    use std::collections::{HashSet, VecDeque};

    fn limiter() -> Limiter {
        Limiter::new(Arc::new(MemoryStore::new()), 42)
    }

    /// The in-memory store decides on the spot: its admissions complete on the first poll.
    fn admit(limiter: &Limiter, key: &LimitKey, limits: &LimitsConfig, now: Instant) -> Admission {
        use futures_util::FutureExt;
        limiter
            .admit_stream(key, limits, now)
            .now_or_never()
            .expect("the memory store never waits")
    }

    fn per_minute(count: u32) -> Option<RateSpec> {
        Some(RateSpec {
            count,
            per: Duration::from_secs(60),
        })
    }

    fn user(name: &str) -> LimitKey {
        LimitKey::User(name.to_owned())
    }

    fn admitted(admission: Admission) -> StreamPermit {
        match admission {
            Admission::Admitted(permit) => permit,
            Admission::Rejected { reason, .. } => panic!("rejected: {reason}"),
        }
    }

    fn rejected(admission: Admission) -> (LimitRejection, Duration) {
        match admission {
            Admission::Admitted(permit) => panic!("admitted {permit:?}"),
            Admission::Rejected {
                reason,
                retry_after,
            } => (reason, retry_after),
        }
    }

    fn is_cap_retry(retry_after: Duration) -> bool {
        (Duration::from_secs(1)..=Duration::from_secs(5)).contains(&retry_after)
    }

    #[test]
    fn connect_rate_three_per_minute() {
        let limiter = limiter();
        let limits = LimitsConfig {
            connects_per_user: per_minute(3),
            ..LimitsConfig::default()
        };
        let t0 = Instant::now();
        let ann = user("ann");
        let held: Vec<_> = (0..3)
            .map(|_| admitted(admit(&limiter, &ann, &limits, t0)))
            .collect();
        let (reason, retry_after) = rejected(admit(&limiter, &ann, &limits, t0));
        assert_eq!(reason, LimitRejection::ConnectRate);
        assert_eq!(retry_after, Duration::from_secs(20));
        // The rate limits opening streams, not holding them.
        drop(held);
        rejected(admit(&limiter, &ann, &limits, t0 + Duration::from_secs(19)));
        admitted(admit(&limiter, &ann, &limits, t0 + Duration::from_secs(20)));
        admitted(admit(&limiter, &user("bob"), &limits, t0));
    }

    #[test]
    fn user_cap_rejects_with_jittered_retry() {
        let limiter = limiter();
        let limits = LimitsConfig {
            max_streams_per_user: Some(2),
            ..LimitsConfig::default()
        };
        let now = Instant::now();
        let ann = user("ann");
        let _a = admitted(admit(&limiter, &ann, &limits, now));
        let _b = admitted(admit(&limiter, &ann, &limits, now));
        let retries: HashSet<Duration> = (0..20)
            .map(|_| {
                let (reason, retry_after) = rejected(admit(&limiter, &ann, &limits, now));
                assert_eq!(reason, LimitRejection::UserStreams);
                assert!(is_cap_retry(retry_after), "{retry_after:?}");
                retry_after
            })
            .collect();
        assert!(retries.len() > 10, "retry-afters are spread: {retries:?}");
        assert_eq!(limiter.user_streams(&ann), 2);
        assert_eq!(limiter.active_streams(), 2);
    }

    #[test]
    fn global_cap_is_checked_before_the_connect_rate() {
        let limiter = limiter();
        let limits = LimitsConfig {
            max_streams: Some(1),
            connects_per_user: per_minute(1),
            ..LimitsConfig::default()
        };
        let now = Instant::now();
        let held = admitted(admit(&limiter, &user("ann"), &limits, now));
        let (reason, retry_after) = rejected(admit(&limiter, &user("bob"), &limits, now));
        assert_eq!(reason, LimitRejection::GlobalStreams);
        assert!(is_cap_retry(retry_after));
        drop(held);
        // Bob's refused attempt did not use up his one connect per minute.
        admitted(admit(&limiter, &user("bob"), &limits, now));
    }

    #[test]
    fn route_override_applies_to_the_users_streams_on_every_route() {
        let limiter = limiter();
        let wide = LimitsConfig {
            max_streams_per_user: Some(3),
            ..LimitsConfig::default()
        };
        let narrow = LimitsConfig {
            max_streams_per_user: Some(1),
            ..LimitsConfig::default()
        };
        let now = Instant::now();
        let ann = user("ann");
        let _sse = admitted(admit(&limiter, &ann, &wide, now));
        let (reason, _) = rejected(admit(&limiter, &ann, &narrow, now));
        assert_eq!(reason, LimitRejection::UserStreams);
        let _ws = admitted(admit(&limiter, &ann, &wide, now));
        assert_eq!(limiter.user_streams(&ann), 2);
    }

    #[test]
    fn evict_oldest_admits_and_signals_the_oldest() {
        let limiter = limiter();
        let limits = LimitsConfig {
            max_streams: Some(2),
            max_streams_per_user: Some(2),
            on_user_limit: OnUserLimit::EvictOldest,
            ..LimitsConfig::default()
        };
        let now = Instant::now();
        let ann = user("ann");
        let first = admitted(admit(&limiter, &ann, &limits, now));
        let second = admitted(admit(&limiter, &ann, &limits, now));
        // At the global cap, so the user cap's eviction never runs.
        let (reason, _) = rejected(admit(&limiter, &ann, &limits, now));
        assert_eq!(reason, LimitRejection::GlobalStreams);

        let limits = LimitsConfig {
            max_streams: Some(3),
            ..limits
        };
        let third = admitted(admit(&limiter, &ann, &limits, now));
        assert!(first.is_evicted() && !second.is_evicted() && !third.is_evicted());
        assert_eq!(
            (limiter.user_streams(&ann), limiter.active_streams()),
            (2, 2)
        );
        drop(first);
        assert_eq!(
            (limiter.user_streams(&ann), limiter.active_streams()),
            (2, 2)
        );
        drop((second, third));
        assert_eq!((limiter.active_streams(), limiter.tracked_keys()), (0, 0));
    }

    #[tokio::test]
    async fn evicted_future_fires_for_the_evicted_stream_only() {
        let limiter = limiter();
        let limits = LimitsConfig {
            max_streams_per_user: Some(1),
            on_user_limit: OnUserLimit::EvictOldest,
            ..LimitsConfig::default()
        };
        let now = Instant::now();
        let ann = user("ann");
        let old = admitted(admit(&limiter, &ann, &limits, now));
        let stream = tokio::spawn(async move {
            old.evicted().await;
            "evicted"
        });
        tokio::task::yield_now().await;
        let new = admitted(admit(&limiter, &ann, &limits, now));
        let said = tokio::time::timeout(Duration::from_secs(5), stream)
            .await
            .expect("old stream was told")
            .expect("stream task ran");
        assert_eq!(said, "evicted");
        let quiet = tokio::time::timeout(Duration::from_millis(20), new.evicted()).await;
        assert!(quiet.is_err());
        assert_eq!(limiter.active_streams(), 1);
    }

    #[tokio::test]
    async fn cancelled_task_releases_its_slot() {
        let limiter = Arc::new(limiter());
        let limits = LimitsConfig {
            max_streams_per_user: Some(1),
            ..LimitsConfig::default()
        };
        let ann = user("ann");
        let permit = admitted(admit(&limiter, &ann, &limits, Instant::now()));
        let task = tokio::spawn(async move {
            permit.evicted().await;
        });
        tokio::task::yield_now().await;
        assert_eq!(limiter.user_streams(&ann), 1);
        task.abort();
        assert!(task.await.expect_err("aborted").is_cancelled());
        assert_eq!((limiter.active_streams(), limiter.tracked_keys()), (0, 0));
    }

    #[test]
    fn panicking_stream_releases_its_slot() {
        let limiter = limiter();
        let limits = LimitsConfig::default();
        let unwound = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _permit = admitted(admit(&limiter, &user("ann"), &limits, Instant::now()));
                    assert_eq!(limiter.active_streams(), 1);
                    panic!("stream handler bug");
                })
                .join()
        });
        assert!(unwound.is_err());
        assert_eq!((limiter.active_streams(), limiter.tracked_keys()), (0, 0));
    }

    #[test]
    fn request_rate_with_burst() {
        let limiter = limiter();
        let limits = LimitsConfig {
            requests_per_ip: Some(RateSpec {
                count: 10,
                per: Duration::from_secs(1),
            }),
            burst: 5,
            ..LimitsConfig::default()
        };
        let t0 = Instant::now();
        let ip: IpAddr = "203.0.113.5".parse().expect("test ip");
        let passed = (0..20)
            .filter(|_| limiter.check_request(ip, &limits, t0).is_ok())
            .count();
        assert_eq!(passed, 6);
        assert_eq!(
            limiter.check_request(ip, &limits, t0),
            Err((LimitRejection::RequestRate, Duration::from_millis(100)))
        );
        let other: IpAddr = "203.0.113.6".parse().expect("test ip");
        assert!(limiter.check_request(other, &limits, t0).is_ok());
        assert!(limiter
            .check_request(ip, &limits, t0 + Duration::from_millis(100))
            .is_ok());
        assert!(limiter
            .check_request(ip, &LimitsConfig::default(), t0)
            .is_ok());
    }

    #[test]
    fn many_users_are_reclaimed() {
        const USERS: usize = 100_000;
        let limiter = limiter();
        let limits = LimitsConfig {
            max_streams_per_user: Some(1),
            connects_per_user: per_minute(6),
            requests_per_ip: per_minute(60),
            ..LimitsConfig::default()
        };
        let t0 = Instant::now();
        let permits: Vec<_> = (0..USERS)
            .map(|n| {
                let ip = IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
                assert!(limiter.check_request(ip, &limits, t0).is_ok());
                admitted(admit(
                    &limiter,
                    &LimitKey::User(format!("u{n}")),
                    &limits,
                    t0,
                ))
            })
            .collect();
        assert_eq!(limiter.active_streams(), USERS);
        assert_eq!(limiter.tracked_keys(), 2 * USERS);
        drop(permits);
        // Users and clients stay tracked while their rate state still matters.
        assert_eq!(limiter.tracked_keys(), 2 * USERS);
        // Rate state is kept until it has fully recovered (1 s for one request at 60/minute,
        // 10 s for one connect at 6/minute).
        limiter.sweep(t0 + Duration::from_secs(5));
        assert_eq!(limiter.tracked_keys(), USERS);
        limiter.sweep(t0 + Duration::from_secs(10));
        assert_eq!((limiter.tracked_keys(), limiter.active_streams()), (0, 0));
    }

    #[test]
    fn labels_and_messages_name_the_rule() {
        assert_eq!(LimitRejection::ConnectRate.label(), "connect_rate");
        assert_eq!(
            LimitRejection::UserStreams.to_string(),
            "max_streams_per_user reached"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit { user: usize, cap: u32, evict: bool },
        Drop { pick: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..3usize, 0..4u32, any::<bool>())
                .prop_map(|(user, cap, evict)| Op::Admit { user, cap, evict }),
            2 => any::<usize>().prop_map(|pick| Op::Drop { pick }),
        ]
    }

    /// What the limiter should do, written as plainly as possible: every live stream in one
    /// list in admission order.
    #[derive(Default)]
    struct Model {
        live: Vec<(usize, u64)>,
        evicted: HashSet<u64>,
    }

    impl Model {
        fn held_by(&self, user: usize) -> usize {
            self.live.iter().filter(|(u, _)| *u == user).count()
        }
    }

    proptest! {
        #[test]
        fn limiter_matches_model(ops in prop::collection::vec(op(), 1..200), global in 1..8u32) {
            let limiter = limiter();
            let mut model = Model::default();
            let mut permits: VecDeque<(u64, StreamPermit)> = VecDeque::new();
            let now = Instant::now();
            for (id, op) in (0u64..).zip(ops) {
                match op {
                    Op::Admit { user, cap, evict } => {
                        let limits = LimitsConfig {
                            max_streams: Some(global),
                            max_streams_per_user: Some(cap),
                            on_user_limit: if evict { OnUserLimit::EvictOldest } else { OnUserLimit::Reject },
                            ..LimitsConfig::default()
                        };
                        let expected = if model.live.len() >= global as usize {
                            Err(LimitRejection::GlobalStreams)
                        } else if model.held_by(user) >= cap as usize && (!evict || cap == 0) {
                            Err(LimitRejection::UserStreams)
                        } else {
                            while model.held_by(user) >= cap as usize {
                                let oldest = model.live.iter().position(|(u, _)| *u == user);
                                let (_, gone) = model.live.remove(oldest.expect("user holds a stream"));
                                model.evicted.insert(gone);
                            }
                            model.live.push((user, id));
                            Ok(())
                        };
                        let key = LimitKey::User(user.to_string());
                        match (admit(&limiter, &key, &limits, now), expected) {
                            (Admission::Admitted(permit), Ok(())) => permits.push_back((id, permit)),
                            (Admission::Rejected { reason, .. }, Err(want)) => prop_assert_eq!(reason, want),
                            (got, want) => prop_assert!(false, "got {:?}, model {:?}", got, want),
                        }
                    }
                    Op::Drop { pick } => {
                        if !permits.is_empty() {
                            let (id, permit) = permits.remove(pick % permits.len()).expect("in range");
                            drop(permit);
                            model.live.retain(|(_, live)| *live != id);
                        }
                    }
                }
                prop_assert_eq!(limiter.active_streams(), model.live.len());
                for user in 0..3 {
                    prop_assert_eq!(limiter.user_streams(&LimitKey::User(user.to_string())), model.held_by(user));
                }
                for (id, permit) in &permits {
                    prop_assert_eq!(permit.is_evicted(), model.evicted.contains(id));
                }
            }
            drop(permits);
            prop_assert_eq!((limiter.active_streams(), limiter.tracked_keys()), (0, 0));
        }
    }
}
