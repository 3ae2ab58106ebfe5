//! The store's background work, in one task plus the eviction subscriber: lease renewal,
//! releases, and the health probe that closes the breaker.
//!
//! Renewals and releases share one loop on purpose: a release queued while a renewal is in
//! flight reaches Redis after it, so a renewal can never add back a lease that was just
//! removed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};

use super::keys::{self, Keys};
use super::{lock, Release, Shared};
use crate::telemetry::StoreOp;

/// Users per renewal script call, and calls per pipelined round trip.
const USERS_PER_CALL: usize = 100;
const CALLS_PER_ROUND_TRIP: usize = 8;
/// Releases removed per pipelined round trip.
const RELEASES_PER_ROUND_TRIP: usize = 512;
/// Releases kept while Redis is down; beyond that the oldest are left to lapse.
const PENDING_RELEASES: usize = 65_536;
/// How often a down store is probed, and how soon a lost eviction channel is dialled again.
const PROBE_EVERY: Duration = Duration::from_millis(250);
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

pub(super) async fn run(shared: Arc<Shared>) {
    let Some(mut releases) = lock(&shared.releases_rx).take() else {
        return;
    };
    // Our own timeout bounds every call; the manager's reconnect backoff stays short so a
    // Redis that comes back is found within the probe period.
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(shared.timeout.max(Duration::from_millis(500))))
        .set_response_timeout(None)
        .set_number_of_retries(1)
        .set_max_delay(PROBE_EVERY);
    match ConnectionManager::new_lazy_with_config(shared.client.clone(), config) {
        Ok(conn) => {
            let _ = shared.conn.set(conn);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the limit store's connection; new streams follow limits.store.on_error");
            return;
        }
    }
    tokio::spawn(subscribe(Arc::clone(&shared)));

    let mut renew = tokio::time::interval(shared.lease / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Vec<Release> = Vec::new();
    loop {
        tokio::select! {
            _ = renew.tick() => renew_leases(&shared).await,
            () = shared.renew_now.notified() => renew_leases(&shared).await,
            Some(release) = releases.recv() => {
                pending.push(release);
                while pending.len() < PENDING_RELEASES {
                    match releases.try_recv() {
                        Ok(release) => pending.push(release),
                        Err(_) => break,
                    }
                }
                flush_releases(&shared, &mut pending).await;
            }
            _ = probe.tick() => {
                if !lock(&shared.breaker).is_closed() {
                    health_probe(&shared).await;
                }
                // Releases kept while Redis was down go out once it is back.
                if !pending.is_empty() && shared.available() {
                    flush_releases(&shared, &mut pending).await;
                }
            }
        }
    }
}

/// A `PING`: an answer closes the breaker, a failure counts towards opening it.
async fn health_probe(shared: &Shared) {
    let Some(conn) = shared.conn.get() else {
        return;
    };
    let mut conn = conn.clone();
    let ping = redis::cmd("PING");
    match tokio::time::timeout(shared.timeout, ping.query_async::<String>(&mut conn)).await {
        Ok(Ok(_)) => shared.succeeded(),
        _ => shared.failed(StoreOp::Ping),
    }
}

/// One pipelined round trip, bounded by the store's timeout (with room for a big batch).
async fn round_trip<T: redis::FromRedisValue>(
    shared: &Shared,
    op: StoreOp,
    pipe: &redis::Pipeline,
) -> Result<T, Option<RedisError>> {
    let conn = shared.conn.get().ok_or(None)?;
    let mut conn: ConnectionManager = conn.clone();
    let started = Instant::now();
    let budget = shared.timeout.max(Duration::from_millis(250));
    match tokio::time::timeout(budget, pipe.query_async::<T>(&mut conn)).await {
        Ok(Ok(reply)) => {
            shared
                .metrics
                .store
                .observe(op, started.elapsed().as_secs_f64());
            shared.succeeded();
            Ok(reply)
        }
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

/// Removes ended streams' leases; on failure they wait for Redis (or lapse).
async fn flush_releases(shared: &Shared, pending: &mut Vec<Release>) {
    if !shared.available() {
        if pending.len() > PENDING_RELEASES {
            pending.drain(..pending.len() - PENDING_RELEASES);
        }
        return;
    }
    while !pending.is_empty() {
        let take = pending.len().min(RELEASES_PER_ROUND_TRIP);
        let mut pipe = redis::pipe();
        for release in &pending[..take] {
            pipe.zrem(&release.leases_key, &release.member).ignore();
        }
        match round_trip::<()>(shared, StoreOp::Release, &pipe).await {
            Ok(()) => {
                pending.drain(..take);
            }
            Err(e) => {
                if let Some(e) = e {
                    tracing::debug!(error = %e, "releasing leases failed");
                }
                shared.failed(StoreOp::Release);
                return;
            }
        }
    }
}

/// A snapshot of this replica's leases: per user, the leases key and the members.
fn snapshot(shared: &Shared) -> Vec<(String, Vec<String>)> {
    lock(&shared.leases)
        .iter()
        .map(|(leases_key, user)| {
            let members = user
                .leases
                .iter()
                .map(|l| keys::member(l.admitted_us, &shared.replica, l.seq))
                .collect();
            (leases_key.clone(), members)
        })
        .collect()
}

/// Pushes out every lease of this replica, `USERS_PER_CALL` users per script call and
/// `CALLS_PER_ROUND_TRIP` calls per round trip, and evicts the streams it learns were evicted.
async fn renew_leases(shared: &Shared) {
    if !shared.available() {
        return;
    }
    let users = snapshot(shared);
    if users.is_empty() {
        // Nothing to renew: a ping instead, so an idle replica still notices (and reports) a
        // store that went away.
        return health_probe(shared).await;
    }
    let lease_us = super::micros(shared.lease);
    for round in users.chunks(USERS_PER_CALL * CALLS_PER_ROUND_TRIP) {
        let mut pipe = redis::pipe();
        for call in round.chunks(USERS_PER_CALL) {
            let mut invocation = shared.scripts.renew.prepare_invoke();
            invocation.arg(lease_us);
            for (leases_key, members) in call {
                invocation
                    .key(leases_key)
                    .key(Keys::evicted_of(leases_key))
                    .arg(members.len())
                    .arg(members);
            }
            pipe.invoke_script(&invocation);
        }
        let reply = match round_trip::<Vec<Vec<String>>>(shared, StoreOp::Renew, &pipe).await {
            Err(Some(e)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // Redis restarted or its script cache was flushed: load and go again once. The
                // other scripts are loaded too, so the next admission is one round trip again
                // rather than three (EVALSHA, SCRIPT LOAD, EVALSHA) against its timeout.
                let loaded = match shared.conn.get() {
                    Some(conn) => {
                        let mut conn = conn.clone();
                        let scripts = &shared.scripts;
                        let mut ok = true;
                        for script in [&scripts.renew, &scripts.admit, &scripts.message] {
                            ok &= script.load_async(&mut conn).await.is_ok();
                        }
                        ok
                    }
                    None => false,
                };
                if loaded {
                    round_trip::<Vec<Vec<String>>>(shared, StoreOp::Renew, &pipe).await
                } else {
                    Err(None)
                }
            }
            other => other,
        };
        let Ok(evicted) = reply else {
            shared.failed(StoreOp::Renew);
            return;
        };
        for (call, evicted) in round.chunks(USERS_PER_CALL).zip(evicted) {
            for member in evicted {
                // Members are unique to this replica, so the user is the one whose batch held it.
                if let Some((leases_key, _)) = call.iter().find(|(_, m)| m.contains(&member)) {
                    shared.evict_local(leases_key, &member);
                }
            }
        }
    }
}

/// Listens on this replica's eviction channel, dialling again whenever the connection ends.
/// Each (re)subscription asks for a renewal, which finds evictions sent while it was away.
async fn subscribe(shared: Arc<Shared>) {
    // A stopped Redis accepts the connection and never answers: bound the set-up.
    let bound = shared.timeout.max(Duration::from_millis(500));
    loop {
        match tokio::time::timeout(bound, shared.client.get_async_pubsub()).await {
            Ok(Ok(mut pubsub)) => {
                match tokio::time::timeout(bound, pubsub.subscribe(&shared.channel)).await {
                    Ok(Ok(())) => {
                        shared.renew_now.notify_one();
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            let Ok(payload) = message.get_payload::<String>() else {
                                continue;
                            };
                            if let Some((leases_key, member)) = payload.split_once('\n') {
                                shared.evict_local(leases_key, member);
                            }
                        }
                    }
                    _ => shared.metrics.store.error(StoreOp::Subscribe),
                }
            }
            _ => shared.metrics.store.error(StoreOp::Subscribe),
        }
        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
    }
}
