//! Cost of the limits checks on the request path: `admit_stream` + dropping the permit, and
//! `check_request`, with 100,000 distinct users (each already holding a stream, so the maps are
//! full-sized) and 8 threads at once. Reported times are wall time per operation across all
//! threads, i.e. the inverse of throughput.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use streamguard::config::types::{LimitsConfig, OnUserLimit, RateSpec};
use streamguard::policy::limits::{Admission, LimitKey, Limiter, MemoryStore};

const USERS: usize = 100_000;
/// Virtual time per operation per thread; a thread comes back to a user every `USERS / threads`
/// ticks (over a second here), well inside the 100/second rates.
const TICK: Duration = Duration::from_micros(100);

fn limits() -> LimitsConfig {
    LimitsConfig {
        max_streams: Some(1_000_000),
        max_streams_per_user: Some(4),
        on_user_limit: OnUserLimit::EvictOldest,
        connects_per_user: Some(RateSpec {
            count: 100,
            per: Duration::from_secs(1),
        }),
        requests_per_ip: Some(RateSpec {
            count: 100,
            per: Duration::from_secs(1),
        }),
        burst: 100,
        trusted_proxies: Vec::new(),
    }
}

struct Fixture {
    limiter: Limiter,
    limits: LimitsConfig,
    users: Vec<LimitKey>,
    ips: Vec<IpAddr>,
    epoch: Instant,
    /// Virtual ticks handed out so far, so time only moves forward across samples.
    clock_ticks: AtomicU64,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            limiter: Limiter::new(Arc::new(MemoryStore::new()), 7),
            limits: limits(),
            users: (0..USERS)
                .map(|n| LimitKey::User(format!("user-{n:06}")))
                .collect(),
            ips: (0..USERS)
                .map(|n| IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]))
                .collect(),
            epoch: Instant::now(),
            clock_ticks: AtomicU64::new(0),
        }
    }

    /// Runs `iters` operations split over `threads` and returns the wall time. Each thread walks
    /// its own slice of the users: threads run at different real speeds, so one user's virtual
    /// clock must come from one thread or a fast thread would push its state into a slow one's
    /// future. The shards are still shared, which is where threads could contend.
    fn hammer(
        &self,
        threads: usize,
        iters: u64,
        op: impl Fn(&Fixture, usize, Instant) + Sync,
    ) -> Duration {
        let per_thread = iters.div_ceil(threads as u64);
        let start = self.clock_ticks.fetch_add(per_thread, Ordering::Relaxed);
        let started = Instant::now();
        thread::scope(|scope| {
            for thread in 0..threads {
                let op = &op;
                scope.spawn(move || {
                    let slice = USERS / threads;
                    for i in 0..per_thread {
                        let now = self.epoch + TICK * u32::try_from(start + i).unwrap_or(u32::MAX);
                        op(self, thread * slice + i as usize % slice, now);
                    }
                });
            }
        });
        started.elapsed()
    }
}

fn admit_and_drop(fixture: &Fixture, user: usize, now: Instant) {
    match fixture
        .limiter
        .admit_stream(&fixture.users[user], &fixture.limits, now)
        .now_or_never()
        .expect("the memory store never waits")
    {
        Admission::Admitted(permit) => drop(black_box(permit)),
        Admission::Rejected { reason, .. } => panic!("benchmark load was rejected: {reason}"),
    }
}

fn check_request(fixture: &Fixture, user: usize, now: Instant) {
    if let Err((reason, _)) = fixture
        .limiter
        .check_request(fixture.ips[user], &fixture.limits, now)
    {
        panic!("benchmark load was rejected: {reason}");
    }
}

fn admission(c: &mut Criterion) {
    let fixture = Fixture::new();
    // Every user already holds one stream, as on a busy proxy.
    let held: Vec<_> = (0..USERS)
        .map(|user| {
            match fixture
                .limiter
                .admit_stream(&fixture.users[user], &fixture.limits, fixture.epoch)
                .now_or_never()
                .expect("the memory store never waits")
            {
                Admission::Admitted(permit) => permit,
                Admission::Rejected { reason, .. } => panic!("setup was rejected: {reason}"),
            }
        })
        .collect();
    let mut group = c.benchmark_group("admission");
    for threads in [1, 8] {
        group.bench_function(format!("admit_stream+drop/{threads}t"), |b| {
            b.iter_custom(|iters| fixture.hammer(threads, iters, admit_and_drop))
        });
        group.bench_function(format!("check_request/{threads}t"), |b| {
            b.iter_custom(|iters| fixture.hammer(threads, iters, check_request))
        });
    }
    group.finish();
    assert_eq!(fixture.limiter.active_streams(), USERS);
    drop(held);
    assert_eq!(fixture.limiter.active_streams(), 0);
}

criterion_group!(benches, admission);
criterion_main!(benches);
