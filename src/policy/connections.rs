//! The connection gate: how many client connections the whole proxy, and one client address,
//! may hold open at once.
//!
//! Every open connection costs file descriptors (a stream holds two: the client's socket and
//! its upstream's) and memory, before anyone is authenticated. Without a cap, a crowd of idle
//! sockets runs the process into EMFILE, where `accept` fails for everyone and nobody gets a
//! clean answer. So a connection takes a slot before anything else happens, and gives it back
//! when the socket closes: the slot is an RAII [`ConnectionSlot`], so every exit path, a
//! panicking one included, returns it.
//!
//! The per-address count keys IPv4 peers by address and IPv6 peers by their /64: a single IPv6
//! host is usually handed a whole /64, and counting it per address would let it open as many
//! connections as it likes. IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4
//! peers) count as the IPv4 address they carry.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Which cap turned a connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionRefusal {
    #[error(
        "listen.max_connections reached; raise it (and the open-file limit) if the host has room"
    )]
    Full,
    #[error("listen.max_connections_per_ip reached; behind a load balancer, remove the key")]
    AddressFull,
}

impl ConnectionRefusal {
    /// The `reason` label of `streamguard_connection_refusals_total`.
    pub fn label(self) -> &'static str {
        match self {
            ConnectionRefusal::Full => "global",
            ConnectionRefusal::AddressFull => "per_ip",
        }
    }
}

/// The caps in force (`listen.max_connections`, `listen.max_connections_per_ip`). They come
/// with each connection from the policy in force, so a reload changes them for the next one.
/// A per-address cap a reload adds counts only connections opened after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub max: u32,
    pub per_address: Option<u32>,
}

/// The counts the caps are checked against, shared by every worker thread.
#[derive(Default)]
pub struct ConnectionGate {
    state: Arc<GateState>,
}

#[derive(Default)]
struct GateState {
    open: AtomicU32,
    /// Open connections per address key; only used with a per-address cap. An address leaves
    /// the map with its last connection, so the map holds no more keys than open connections.
    by_address: Mutex<HashMap<IpAddr, u32>>,
}

/// One admitted connection's place in the counts, given back on drop.
pub struct ConnectionSlot {
    state: Arc<GateState>,
    /// The key counted against the per-address cap, when there is one.
    address: Option<IpAddr>,
}

impl ConnectionGate {
    /// Takes a slot for a connection from `peer` (`None`: an address the per-address cap cannot
    /// key, such as a Unix socket's), or says which of `caps` is full. The global cap is checked
    /// first: a full proxy turns everyone away alike.
    pub fn admit(
        &self,
        caps: ConnectionCaps,
        peer: Option<IpAddr>,
    ) -> Result<ConnectionSlot, ConnectionRefusal> {
        let state = &self.state;
        state
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < caps.max).then_some(open + 1)
            })
            .map_err(|_| ConnectionRefusal::Full)?;
        // From here on the slot owns the global count: refusing drops it, which gives it back.
        let mut slot = ConnectionSlot {
            state: Arc::clone(state),
            address: None,
        };
        if let (Some(cap), Some(peer)) = (caps.per_address, peer) {
            let key = address_key(peer);
            let mut by_address = state.lock();
            let open = by_address.entry(key).or_insert(0);
            if *open >= cap {
                return Err(ConnectionRefusal::AddressFull);
            }
            *open += 1;
            slot.address = Some(key);
        }
        Ok(slot)
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> u32 {
        self.state.open.load(Ordering::Acquire)
    }

    /// Connections holding a slot now under `peer`'s address key.
    pub fn open_from(&self, peer: IpAddr) -> u32 {
        self.state
            .lock()
            .get(&address_key(peer))
            .copied()
            .unwrap_or(0)
    }

    /// Address keys tracked now (only with a per-address cap).
    pub fn tracked_addresses(&self) -> usize {
        self.state.lock().len()
    }
}

impl GateState {
    /// The counts stay consistent through a panic elsewhere (each update is one statement),
    /// so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.by_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(key) = self.address {
            let mut by_address = self.state.lock();
            if let Some(open) = by_address.get_mut(&key) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    by_address.remove(&key);
                }
            }
        }
        self.state.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the per-address cap counts `peer` under: the IPv4 address (mapped ones unwrapped), or
/// the IPv6 /64.
pub fn address_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn address_keys() {
        let cases = [
            ("192.0.2.7", "192.0.2.7"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::"),
            ("::1", "::"),
        ];
        for (peer, key) in cases {
            assert_eq!(address_key(ip(peer)), ip(key), "{peer}");
        }
    }

    #[test]
    fn the_global_cap_refuses_the_connection_over_it_and_frees_on_drop() {
        let gate = ConnectionGate::default();
        let caps = ConnectionCaps {
            max: 2,
            per_address: None,
        };
        let a = gate.admit(caps, Some(ip("192.0.2.1"))).expect("first");
        let b = gate.admit(caps, None).expect("second");
        assert_eq!(gate.admit(caps, None).err(), Some(ConnectionRefusal::Full));
        assert_eq!(gate.open(), 2);
        drop(a);
        assert_eq!(gate.open(), 1);
        let c = gate
            .admit(caps, Some(ip("192.0.2.1")))
            .expect("a freed slot is reused");
        drop((b, c));
        assert_eq!(gate.open(), 0);
        assert_eq!(gate.tracked_addresses(), 0, "no per-address cap, no map");
    }

    #[test]
    fn the_per_address_cap_counts_one_ipv6_64_as_one_client() {
        let gate = ConnectionGate::default();
        let caps = ConnectionCaps {
            max: 10,
            per_address: Some(2),
        };
        let first = gate.admit(caps, Some(ip("2001:db8::1"))).expect("first");
        let second = gate
            .admit(caps, Some(ip("2001:db8::2")))
            .expect("second, same /64");
        assert_eq!(
            gate.admit(caps, Some(ip("2001:db8::ffff"))).err(),
            Some(ConnectionRefusal::AddressFull)
        );
        assert_eq!(
            gate.open(),
            2,
            "a refused connection gives its global slot back"
        );
        let other = gate
            .admit(caps, Some(ip("2001:db8:0:1::1")))
            .expect("another /64");
        let v4 = gate
            .admit(caps, Some(ip("::ffff:192.0.2.1")))
            .expect("mapped v4");
        let same_v4 = gate
            .admit(caps, Some(ip("192.0.2.1")))
            .expect("the same v4");
        assert_eq!(
            gate.admit(caps, Some(ip("192.0.2.1"))).err(),
            Some(ConnectionRefusal::AddressFull)
        );
        assert_eq!(gate.open_from(ip("2001:db8::9")), 2);
        assert_eq!(gate.open_from(ip("192.0.2.1")), 2);
        let unkeyed = gate
            .admit(caps, None)
            .expect("no address, no per-address count");
        drop((first, second, other, v4, same_v4, unkeyed));
        assert_eq!((gate.open(), gate.tracked_addresses()), (0, 0));
    }

    #[test]
    fn a_full_proxy_refuses_before_counting_the_address() {
        let gate = ConnectionGate::default();
        let caps = ConnectionCaps {
            max: 1,
            per_address: Some(1),
        };
        let _held = gate.admit(caps, Some(ip("192.0.2.1"))).expect("first");
        assert_eq!(
            gate.admit(caps, Some(ip("192.0.2.2"))).err(),
            Some(ConnectionRefusal::Full)
        );
        assert_eq!(gate.open_from(ip("192.0.2.2")), 0);
    }

    /// A reload changes the caps for the next connection; those already open keep their slots
    /// and give them back as usual.
    #[test]
    fn new_caps_apply_to_the_next_connection() {
        let gate = ConnectionGate::default();
        let loose = ConnectionCaps {
            max: 3,
            per_address: None,
        };
        let tight = ConnectionCaps {
            max: 1,
            per_address: Some(1),
        };
        let a = gate.admit(loose, Some(ip("192.0.2.1"))).expect("first");
        let b = gate.admit(loose, Some(ip("192.0.2.1"))).expect("second");
        assert_eq!(
            gate.admit(tight, Some(ip("192.0.2.9"))).err(),
            Some(ConnectionRefusal::Full)
        );
        drop((a, b));
        let c = gate
            .admit(tight, Some(ip("192.0.2.1")))
            .expect("room again");
        assert_eq!(
            gate.admit(loose, Some(ip("192.0.2.1"))).map(drop),
            Ok(()),
            "cap lifted again: no per-address count"
        );
        drop(c);
        assert_eq!((gate.open(), gate.tracked_addresses()), (0, 0));
    }

    #[test]
    fn slots_come_back_from_other_threads() {
        let gate = Arc::new(ConnectionGate::default());
        let caps = ConnectionCaps {
            max: 64,
            per_address: Some(8),
        };
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let gate = Arc::clone(&gate);
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let peer = IpAddr::from([192, 0, 2, t]);
                        let slots: Vec<_> = (0..8).map(|_| gate.admit(caps, Some(peer))).collect();
                        assert!(slots.iter().all(Result::is_ok));
                        assert!(gate.admit(caps, Some(peer)).is_err());
                    }
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().is_ok());
        }
        assert_eq!((gate.open(), gate.tracked_addresses()), (0, 0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Open a connection from address number `n` (`None`: no address).
        Open(Option<u8>),
        /// Close the `n`-th held connection (modulo how many are held).
        Close(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::option::weighted(0.9, 0u8..4).prop_map(Op::Open),
            2 => any::<usize>().prop_map(Op::Close),
        ]
    }

    proptest! {
        /// The gate agrees with a plain model at every step: admitted exactly when both caps
        /// have room, refused with the right reason otherwise, and empty once all is closed.
        #[test]
        fn gate_matches_model(
            ops in prop::collection::vec(op(), 1..200),
            max in 1..10u32,
            per_address in proptest::option::of(1..5u32),
        ) {
            let gate = ConnectionGate::default();
            let caps = ConnectionCaps { max, per_address };
            let mut held: Vec<(ConnectionSlot, Option<u8>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Open(n) => {
                        let peer = n.map(|n| IpAddr::from([198, 51, 100, n]));
                        let from_peer = held.iter().filter(|(_, h)| h.is_some() && *h == n).count();
                        let expected = if held.len() as u32 >= max {
                            Err(ConnectionRefusal::Full)
                        } else if per_address.is_some_and(|cap| n.is_some() && from_peer as u32 >= cap) {
                            Err(ConnectionRefusal::AddressFull)
                        } else {
                            Ok(())
                        };
                        match gate.admit(caps, peer) {
                            Ok(slot) => {
                                prop_assert_eq!(expected, Ok(()));
                                held.push((slot, n));
                            }
                            Err(refusal) => prop_assert_eq!(expected, Err(refusal)),
                        }
                    }
                    Op::Close(i) if !held.is_empty() => {
                        let i = i % held.len();
                        held.swap_remove(i);
                    }
                    Op::Close(_) => {}
                }
                prop_assert_eq!(gate.open() as usize, held.len());
            }
            held.clear();
            prop_assert_eq!((gate.open(), gate.tracked_addresses()), (0, 0));
        }
    }
}
