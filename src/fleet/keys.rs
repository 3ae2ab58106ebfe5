//! Key and member names in Redis. Every key a script touches names its user (or client
//! address) inside `{...}`, a Redis Cluster hash tag: one user's keys share a slot, so each
//! script call stays on one node, and users spread over the cluster.
//!
//! User names come from tokens, so they are escaped: a `}` in a name would otherwise end the
//! tag early and pile such users onto one slot, and a newline would split the eviction
//! message, which is `<leases key>\n<member>`.

use std::fmt::Write;

use crate::policy::limits::LimitKey;

/// The key names of one deployment (`limits.store.key_prefix`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// One user's (or client's) keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeys {
    /// ZSET of stream members, scored by lease deadline.
    pub leases: String,
    /// The connect-rate TAT.
    pub connects: String,
    /// SET of members evicted by another replica's admission, for their owners' renewals.
    pub evicted: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn tagged(&self, key: &LimitKey, suffix: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 32);
        out.push_str(&self.prefix);
        out.push('{');
        tag(&mut out, key);
        out.push_str("}:");
        out.push_str(suffix);
        out
    }

    /// The stream-cap and connect-rate keys of `key`.
    pub fn user(&self, key: &LimitKey) -> UserKeys {
        UserKeys {
            leases: self.tagged(key, "l"),
            connects: self.tagged(key, "c"),
            evicted: self.tagged(key, "e"),
        }
    }

    /// Just the leases key of `key` (a release needs no other).
    pub fn leases(&self, key: &LimitKey) -> String {
        self.tagged(key, "l")
    }

    /// The evicted SET that goes with a leases key (same tag, other suffix).
    pub fn evicted_of(leases: &str) -> String {
        let stem = leases.strip_suffix('l').unwrap_or(leases);
        format!("{stem}e")
    }

    /// The TAT of a `messages_per_user` budget (`key` is `LimitKey::Messages(user)`).
    pub fn messages(&self, key: &LimitKey) -> String {
        self.tagged(key, "m")
    }

    /// The pub/sub channel prefix; a replica listens on this plus its id.
    pub fn channel_prefix(&self) -> String {
        format!("{}evict:", self.prefix)
    }
}

/// Appends the escaped identity: `u:<user>` or `ip:<address>`; a message budget shares its
/// user's tag (and so its slot).
fn tag(out: &mut String, key: &LimitKey) {
    match key {
        LimitKey::User(user) => {
            out.push_str("u:");
            for c in user.chars() {
                if matches!(c, '{' | '}' | '%') || c.is_control() {
                    let mut bytes = [0; 4];
                    for b in c.encode_utf8(&mut bytes).bytes() {
                        // Writing into a String cannot fail.
                        let _ = write!(out, "%{b:02X}");
                    }
                } else {
                    out.push(c);
                }
            }
        }
        LimitKey::Ip(ip) => {
            let _ = write!(out, "ip:{ip}");
        }
        LimitKey::Messages(inner) => tag(out, inner),
    }
}

/// A stream's member in its user's leases: admission time (zero-padded microseconds, so
/// members sort oldest first), owning replica, and the replica's sequence number.
pub fn member(admitted_us: u64, replica: &str, seq: u64) -> String {
    format!("{admitted_us:016}:{replica}:{seq}")
}

/// The `(admitted_us, seq)` of a member this replica made; `None` for another replica's.
pub fn parse_member(member: &str, replica: &str) -> Option<(u64, u64)> {
    let mut parts = member.splitn(3, ':');
    let admitted = parts.next()?.parse().ok()?;
    if parts.next()? != replica {
        return None;
    }
    Some((admitted, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash_tag(key: &str) -> &str {
        // Redis Cluster: the slot is computed from what lies between the first `{` and the
        // next `}`, when that is not empty.
        let Some(open) = key.find('{') else {
            return key;
        };
        match key[open + 1..].find('}') {
            Some(0) | None => key,
            Some(len) => &key[open + 1..open + 1 + len],
        }
    }

    #[test]
    fn a_users_keys_share_one_tag_and_differ_by_suffix() {
        let keys = Keys::new("sg:");
        let alice = LimitKey::User("alice".into());
        let user = keys.user(&alice);
        assert_eq!(user.leases, "sg:{u:alice}:l");
        assert_eq!(user.connects, "sg:{u:alice}:c");
        assert_eq!(user.evicted, "sg:{u:alice}:e");
        assert_eq!(Keys::evicted_of(&user.leases), user.evicted);
        let messages = keys.messages(&LimitKey::Messages(Box::new(alice)));
        assert_eq!(messages, "sg:{u:alice}:m");
        let ip = keys.user(&LimitKey::Ip("2001:db8::1".parse().expect("ip")));
        assert_eq!(hash_tag(&ip.leases), "ip:2001:db8::1");
    }

    #[test]
    fn members_sort_by_admission_and_name_their_replica() {
        let older = member(1_700_000_000_000_000, "r1", 9);
        let newer = member(1_700_000_000_000_001, "r0", 1);
        assert!(older < newer);
        assert_eq!(parse_member(&older, "r1"), Some((1_700_000_000_000_000, 9)));
        assert_eq!(parse_member(&older, "r0"), None);
        assert_eq!(parse_member("junk", "r0"), None);
    }

    proptest! {
        /// Whatever a token's user claim holds, the tag is the whole user (never cut short by
        /// a brace), different users get different keys, and no key has a newline.
        #[test]
        fn any_user_name_gets_its_own_intact_tag(a in ".{0,24}", b in ".{0,24}") {
            let keys = Keys::new("p:");
            let ka = keys.user(&LimitKey::User(a.clone()));
            let kb = keys.user(&LimitKey::User(b.clone()));
            prop_assert_eq!(ka.leases == kb.leases, a == b);
            prop_assert!(!ka.leases.contains('\n'));
            prop_assert_eq!(hash_tag(&ka.leases), hash_tag(&ka.connects));
            let tag = hash_tag(&ka.leases);
            prop_assert!(tag.starts_with("u:"));
            prop_assert_eq!(ka.leases.clone(), format!("p:{{{tag}}}:l"));
        }
    }
}
