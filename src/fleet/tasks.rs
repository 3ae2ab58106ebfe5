//! The store's background work, in one task plus the eviction subscriber: lease renewal,
//! releases, and the health probe that closes the breaker.
//!
//! A renewal adds back a member it finds missing (Redis may have restarted empty), so one that
//! meets a stream's release on the way would bring the lease back: the release can reach Redis
//! first, carried by an admission on another connection. Each renewal therefore ends by
//! releasing again the members of its snapshot whose streams ended meanwhile.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::{ErrorKind, ServerErrorKind};

use super::conns::{send, Failure, RECONNECT_WITHIN};
use super::keys::{self, Keys};
use super::releases::GATHER;
use super::{lock, Shared};
use crate::telemetry::StoreOp;

/// Users per renewal script call, and calls per pipelined round trip.
const USERS_PER_CALL: usize = 100;
const CALLS_PER_ROUND_TRIP: usize = 8;
/// Users whose releases go in one pipelined round trip.
const RELEASES_PER_ROUND_TRIP: usize = 512;
/// How often a down store is probed, and how soon a lost eviction channel is dialled again.
const PROBE_EVERY: Duration = RECONNECT_WITHIN;
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

pub(super) async fn run(shared: Arc<Shared>) {
    shared.conns.open_home().await;
    tokio::spawn(subscribe(Arc::clone(&shared)));

    let mut renew = tokio::time::interval(shared.lease / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = renew.tick() => renew_leases(&shared).await,
            () = shared.renew_now.notified() => renew_leases(&shared).await,
            () = shared.releases.arrived() => {
                tokio::time::sleep(GATHER).await;
                flush_releases(&shared).await;
            }
            _ = probe.tick() => {
                if !lock(&shared.breaker).is_closed() {
                    health_probe(&shared).await;
                }
                // Releases kept while Redis was down go out once it is back.
                if !shared.releases.is_empty() && shared.available() {
                    flush_releases(&shared).await;
                }
            }
        }
    }
}

/// A `PING`: an answer closes the breaker, a failure counts towards opening it.
async fn health_probe(shared: &Shared) {
    let Some(conn) = shared.conns.home() else {
        return shared.failed(StoreOp::Ping, &Failure::NotConnected);
    };
    let ping = |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await };
    match send(&conn, shared.timeout, ping).await {
        Ok(_) => shared.succeeded(),
        Err(failure) => shared.failed(StoreOp::Ping, &failure),
    }
}

/// One pipelined round trip, bounded by the store's timeout (with room for a big batch).
async fn round_trip<T: redis::FromRedisValue>(
    shared: &Shared,
    op: StoreOp,
    pipe: &redis::Pipeline,
) -> Result<T, Failure> {
    let conn = shared.conns.home().ok_or(Failure::NotConnected)?;
    let budget = shared.timeout.max(Duration::from_millis(250));
    let query = |mut conn| async move { pipe.query_async::<T>(&mut conn).await };
    shared.observed(op, send(&conn, budget, query)).await
}

/// Removes ended streams' leases, one `ZREM` per user; on failure they wait for Redis (or
/// lapse).
async fn flush_releases(shared: &Shared) {
    if !shared.available() {
        return;
    }
    let mut users = shared.releases.take_all();
    while !users.is_empty() {
        let batch: Vec<_> = users
            .drain(..users.len().min(RELEASES_PER_ROUND_TRIP))
            .collect();
        let mut pipe = redis::pipe();
        for (leases_key, members) in &batch {
            pipe.zrem(leases_key, members).ignore();
        }
        if let Err(failure) = round_trip::<()>(shared, StoreOp::Release, &pipe).await {
            shared.failed(StoreOp::Release, &failure);
            for (leases_key, members) in batch.into_iter().chain(users) {
                shared.releases.put_back(leases_key, members);
            }
            return;
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
            Err(Failure::Redis(e)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // Redis restarted or its script cache was flushed: load and go again once. The
                // other scripts are loaded too, so the next admission is one round trip again
                // rather than three (EVALSHA, SCRIPT LOAD, EVALSHA) against its timeout.
                let loaded = match shared.conns.home() {
                    Some(mut conn) => {
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
                    Err(Failure::Redis(e))
                }
            }
            other => other,
        };
        // See the module's doc: members of streams that ended meanwhile go again, whatever the
        // reply (a renewal that timed out may still have run).
        for (leases_key, member) in shared.ended_of(round) {
            shared.releases.push(leases_key, member);
        }
        let evicted = match reply {
            Ok(evicted) => evicted,
            Err(failure) => return shared.failed(StoreOp::Renew, &failure),
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
        match tokio::time::timeout(bound, shared.conns.client().get_async_pubsub()).await {
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
