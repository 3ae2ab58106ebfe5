//! Who a limit applies to. Limits are only as good as the key they count against: a verified
//! user is counted as that user wherever they connect from, and an anonymous client is counted
//! by its IP, which behind a load balancer must come from `X-Forwarded-For` without letting the
//! client forge it.

use std::fmt;
use std::net::IpAddr;

use crate::config::types::Cidr;

/// The identity that stream caps and rates are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The verified user claim of a valid JWT.
    User(String),
    /// An anonymous client, by the address [`client_ip`] chose.
    Ip(IpAddr),
    /// The WebSocket message budget of a user or address: its own rate state, apart from the
    /// request and connect rates counted under the plain key.
    Messages(Box<LimitKey>),
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitKey::User(user) => write!(f, "user:{user}"),
            LimitKey::Ip(ip) => write!(f, "ip:{ip}"),
            LimitKey::Messages(inner) => write!(f, "messages:{inner}"),
        }
    }
}

impl Cidr {
    /// Whether `ip` lies inside this network. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what
    /// a dual-stack listener reports for IPv4 peers) match IPv4 networks, so a proxy list written
    /// in IPv4 keeps working when the listener binds `[::]`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = prefix_mask_u32(self.prefix_len);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = prefix_mask_u128(self.prefix_len);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

// A prefix longer than the address (rejected by validation) degrades to an exact match
// instead of a shift overflow.
fn prefix_mask_u32(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(prefix_len)))
        .unwrap_or(0)
}

fn prefix_mask_u128(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128u32.saturating_sub(u32::from(prefix_len)))
        .unwrap_or(0)
}

fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// Every `X-Forwarded-For` line of a request joined with `,`, the one list [`client_ip`] walks.
///
/// HTTP makes repeated field lines one comma-separated list, in order (RFC 9110 §5.3), and a
/// proxy may append its hop as a line of its own. Reading only the first line would read what
/// the client wrote and miss what our trusted proxy added after it, letting any client pick its
/// own bucket. A line that is not text keeps its place as an entry that is not an address, so
/// the walk stops there only if it reaches it.
pub fn forwarded_for(headers: &http::HeaderMap) -> Option<String> {
    let mut lines = headers.get_all("x-forwarded-for").iter().peekable();
    lines.peek()?;
    let joined: Vec<String> = lines
        .map(|line| match line.to_str() {
            Ok(text) => text.to_owned(),
            Err(_) => "invalid".to_owned(),
        })
        .collect();
    Some(joined.join(","))
}

/// The address to count an anonymous request against.
///
/// `X-Forwarded-For` is only believed when the socket peer is one of our `trusted` proxies;
/// otherwise any client could pick its own rate-limit bucket. Each proxy appends the address it
/// saw, so the list is walked from the right, skipping our own proxies, and the first address not
/// in `trusted` is the client. Entries left of it were written by the client and are never
/// parsed, so junk there cannot push everyone behind a proxy into the proxy's bucket. A
/// malformed entry reached during the walk means the chain cannot be trusted, and the peer is
/// used. When every entry is trusted, the leftmost is the furthest hop we know of.
///
/// `xff` is every `X-Forwarded-For` header value joined with `,` (one logical list in HTTP).
/// The result is canonical (`::ffff:a.b.c.d` becomes `a.b.c.d`) so one client has one bucket
/// whether it arrived over IPv4, a dual-stack socket or a proxy.
pub fn client_ip(peer: IpAddr, xff: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    let Some(xff) = xff else { return peer };
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut furthest = peer;
    for entry in xff.rsplit(',') {
        let Ok(hop) = entry.trim().parse::<IpAddr>() else {
            return peer;
        };
        let hop = hop.to_canonical();
        if !is_trusted(hop, trusted) {
            return hop;
        }
        furthest = hop;
    }
    furthest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        let (addr, len) = s.split_once('/').expect("test cidr has a slash");
        Cidr {
            addr: addr.parse().expect("test cidr address"),
            prefix_len: len.parse().expect("test cidr prefix"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    #[test]
    fn cidr_contains_ipv4() {
        let net = cidr("10.1.0.0/16");
        assert!(net.contains(ip("10.1.0.0")));
        assert!(net.contains(ip("10.1.255.7")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(!net.contains(ip("::1")));
    }

    #[test]
    fn cidr_edge_prefixes() {
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(cidr("192.0.2.1/32").contains(ip("192.0.2.1")));
        assert!(!cidr("192.0.2.1/32").contains(ip("192.0.2.2")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(!cidr("::1/128").contains(ip("::2")));
        // An out-of-range prefix must not panic; it behaves as an exact match.
        assert!(cidr("192.0.2.1/40").contains(ip("192.0.2.1")));
        assert!(!cidr("192.0.2.1/40").contains(ip("192.0.2.3")));
    }

    #[test]
    fn cidr_contains_ipv6() {
        let net = cidr("2001:db8:aa::/48");
        assert!(net.contains(ip("2001:db8:aa:1::5")));
        assert!(!net.contains(ip("2001:db8:ab::5")));
        assert!(!net.contains(ip("10.0.0.1")));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_network() {
        assert!(cidr("10.0.0.0/8").contains(ip("::ffff:10.9.8.7")));
        assert!(!cidr("10.0.0.0/8").contains(ip("::ffff:11.9.8.7")));
    }

    #[test]
    fn untrusted_peer_ignores_xff() {
        let trusted = [cidr("10.0.0.0/8")];
        let peer = ip("198.51.100.4");
        assert_eq!(client_ip(peer, Some("1.2.3.4"), &trusted), peer);
        assert_eq!(client_ip(peer, Some("1.2.3.4"), &[]), peer);
    }

    #[test]
    fn missing_xff_uses_peer() {
        let trusted = [cidr("10.0.0.0/8")];
        assert_eq!(client_ip(ip("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
    }

    #[test]
    fn trusted_peer_takes_rightmost_untrusted_hop() {
        let trusted = [cidr("10.0.0.0/8"), cidr("fd00::/8")];
        let got = client_ip(
            ip("10.0.0.2"),
            Some("6.6.6.6, 203.0.113.7 ,10.3.3.3, fd00::1"),
            &trusted,
        );
        assert_eq!(got, ip("203.0.113.7"));
    }

    #[test]
    fn client_junk_left_of_the_client_is_ignored() {
        let trusted = [cidr("10.0.0.0/8")];
        let got = client_ip(ip("10.0.0.2"), Some("not-an-ip, 203.0.113.7"), &trusted);
        assert_eq!(got, ip("203.0.113.7"));
    }

    #[test]
    fn malformed_hop_in_walk_uses_peer() {
        let trusted = [cidr("10.0.0.0/8")];
        let peer = ip("10.0.0.2");
        assert_eq!(client_ip(peer, Some("203.0.113.7, bogus"), &trusted), peer);
        assert_eq!(client_ip(peer, Some(""), &trusted), peer);
        assert_eq!(client_ip(peer, Some("1.2.3.4:80"), &trusted), peer);
        assert_eq!(client_ip(peer, Some("203.0.113.7,,"), &trusted), peer);
    }

    #[test]
    fn all_trusted_chain_yields_leftmost() {
        let trusted = [cidr("10.0.0.0/8")];
        let got = client_ip(ip("10.0.0.2"), Some("10.5.5.5, 10.4.4.4"), &trusted);
        assert_eq!(got, ip("10.5.5.5"));
    }

    #[test]
    fn mapped_addresses_are_canonicalised() {
        let trusted = [cidr("10.0.0.0/8")];
        let got = client_ip(ip("::ffff:10.0.0.2"), Some("::ffff:203.0.113.7"), &trusted);
        assert_eq!(got, ip("203.0.113.7"));
        assert_eq!(
            client_ip(ip("::ffff:1.2.3.4"), None, &trusted),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn forwarded_for_lines_form_one_list() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(forwarded_for(&headers), None);
        headers.append("x-forwarded-for", "198.51.100.9".parse().expect("value"));
        headers.append(
            "X-Forwarded-For",
            "203.0.113.7, 10.0.0.3".parse().expect("value"),
        );
        let joined = forwarded_for(&headers).expect("header present");
        assert_eq!(joined, "198.51.100.9,203.0.113.7, 10.0.0.3");
        // The line our proxy appended names the client, whatever the client sent first.
        let trusted = [cidr("10.0.0.0/8")];
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some(&joined), &trusted),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn non_text_forwarded_for_line_stops_the_walk_only_when_reached() {
        let trusted = [cidr("10.0.0.0/8")];
        let peer = ip("10.0.0.2");
        let line = |bytes: &[u8]| http::HeaderValue::from_bytes(bytes).expect("opaque value");
        let mut headers = http::HeaderMap::new();
        headers.append("x-forwarded-for", line(b"\xff\xfe"));
        headers.append("x-forwarded-for", line(b"203.0.113.7"));
        let joined = forwarded_for(&headers).expect("header present");
        assert_eq!(client_ip(peer, Some(&joined), &trusted), ip("203.0.113.7"));

        let mut headers = http::HeaderMap::new();
        headers.append("x-forwarded-for", line(b"203.0.113.7"));
        headers.append("x-forwarded-for", line(b"\xff"));
        let joined = forwarded_for(&headers).expect("header present");
        assert_eq!(client_ip(peer, Some(&joined), &trusted), peer);
    }

    #[test]
    fn keys_display_their_kind() {
        assert_eq!(LimitKey::User("ann".into()).to_string(), "user:ann");
        assert_eq!(LimitKey::Ip(ip("::1")).to_string(), "ip:::1");
    }
}
