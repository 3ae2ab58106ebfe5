//! Leases of ended streams on their way out of Redis.
//!
//! A release is worth neither a round trip of its own nor a wake-up of the background task per
//! stream: at a few thousand stream setups a second, those hand-offs cost the proxy more than
//! the admissions. So the members of ended streams wait here, per user, and leave two ways:
//! - the user's next admission on this replica carries them (same key, so the same Redis
//!   Cluster slot and the same atomic script): a user who closes a stream and opens another at
//!   their cap is never refused for the one they just closed;
//! - the background task removes the rest in pipelined round trips, a short while
//!   ([`GATHER`]) after the first of them arrives, so a burst of ends costs one wake-up.
//!
//! While Redis is down they stay here, up to [`KEPT`] members; past that, new ones are dropped
//! and their leases lapse in Redis within `lease`, as a dead replica's would.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::lock;

/// How long the background task waits after the first pending release before it sends them.
pub(super) const GATHER: Duration = Duration::from_millis(20);
/// Members kept while Redis cannot take them.
pub(super) const KEPT: usize = 65_536;

/// Pending releases: leases key -> members.
#[derive(Default)]
pub(super) struct Releases {
    pending: Mutex<Pending>,
    arrived: Notify,
}

#[derive(Default)]
struct Pending {
    by_user: HashMap<String, Vec<String>>,
    members: usize,
}

impl Pending {
    fn add(&mut self, leases_key: String, members: impl IntoIterator<Item = String>) {
        let room = KEPT.saturating_sub(self.members);
        let mut members = members.into_iter().take(room).peekable();
        // Full (or nothing to add): nothing to touch, not even an empty entry.
        if members.peek().is_none() {
            return;
        }
        let user = self.by_user.entry(leases_key).or_default();
        let before = user.len();
        user.extend(members);
        self.members += user.len() - before;
    }
}

impl Releases {
    /// Queues one ended stream's member; the first of a batch wakes the background task.
    pub(super) fn push(&self, leases_key: String, member: String) {
        let mut pending = lock(&self.pending);
        let was_empty = pending.members == 0;
        pending.add(leases_key, [member]);
        drop(pending);
        if was_empty {
            self.arrived.notify_one();
        }
    }

    /// Takes up to `max` of one user's pending members, for their admission to carry.
    pub(super) fn take_user(&self, leases_key: &str, max: usize) -> Vec<String> {
        let mut pending = lock(&self.pending);
        let Some(members) = pending.by_user.get_mut(leases_key) else {
            return Vec::new();
        };
        let taken: Vec<String> = if members.len() <= max {
            std::mem::take(members)
        } else {
            members.split_off(members.len() - max)
        };
        if members.is_empty() {
            pending.by_user.remove(leases_key);
        }
        pending.members -= taken.len();
        taken
    }

    /// Takes every pending member, per user.
    pub(super) fn take_all(&self) -> Vec<(String, Vec<String>)> {
        let mut pending = lock(&self.pending);
        pending.members = 0;
        pending.by_user.drain().collect()
    }

    /// Puts back members whose removal did not reach Redis (within [`KEPT`]).
    pub(super) fn put_back(&self, leases_key: String, members: Vec<String>) {
        if !members.is_empty() {
            lock(&self.pending).add(leases_key, members);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        lock(&self.pending).members == 0
    }

    /// Resolves once a release arrives in an empty queue (or arrived since the last call).
    pub(super) async fn arrived(&self) {
        self.arrived.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admission_takes_only_its_users_members_and_at_most_max() {
        let releases = Releases::default();
        for i in 0..5 {
            releases.push("a".into(), format!("m{i}"));
        }
        releases.push("b".into(), "n".into());
        assert_eq!(releases.take_user("a", 3).len(), 3);
        assert_eq!(releases.take_user("a", 3).len(), 2);
        assert!(releases.take_user("a", 3).is_empty());
        let rest = releases.take_all();
        assert_eq!(rest, vec![("b".to_string(), vec!["n".to_string()])]);
        assert!(releases.is_empty());
    }

    #[test]
    fn at_most_kept_members_wait_and_a_put_back_keeps_the_bound() {
        let releases = Releases::default();
        for i in 0..KEPT + 10 {
            releases.push(format!("u{}", i % 7), i.to_string());
        }
        let all = releases.take_all();
        assert_eq!(all.iter().map(|(_, m)| m.len()).sum::<usize>(), KEPT);
        for (key, members) in all {
            releases.put_back(key, members);
        }
        releases.put_back("extra".into(), vec!["x".into()]);
        let again = releases.take_all();
        assert_eq!(again.iter().map(|(_, m)| m.len()).sum::<usize>(), KEPT);
        assert!(again.iter().all(|(key, _)| key != "extra"));
    }
}
