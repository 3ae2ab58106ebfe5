//! Which request headers reach the app, and which the proxy adds.
//!
//! The app trusts the headers the proxy sets (`X-Streamguard-User`, `X-Forwarded-For`...), so a
//! client must be able neither to forge them nor to remove them:
//! - Forging: CGI and WSGI servers fold `_` into `-` (`X_Streamguard_User` and
//!   `X-Streamguard-User` both become `HTTP_X_STREAMGUARD_USER`), so proxy-owned names are
//!   compared after that folding, and names with `_` are dropped by default, as nginx does.
//! - Removing: `Connection` lists headers a hop must delete (RFC 9110 §7.6.1). Nominating
//!   `X-Streamguard-User` or `Authorization` would make a later hop-by-hop cleanup delete what the
//!   proxy checked or added, so such a request is refused, and the proxy's own headers are added
//!   only after every hop-by-hop header is gone.
//!
//! [`inspect`] decides what to drop from a client request; [`upstream_edits`] what the proxy
//! sets on the request it sends, the same on the plain and the stream path.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::types::{Cidr, UnderscoreHeaders};

/// The prefix of every header only the proxy may set.
pub const PROXY_HEADER_PREFIX: &str = "x-streamguard-";
/// The verified user (`auth.user_claim`).
pub const USER_HEADER: &str = "x-streamguard-user";
/// The verified roles, comma-separated.
pub const ROLES_HEADER: &str = "x-streamguard-roles";

/// Headers that describe where a request came from. Believed only from `limits.trusted_proxies`;
/// from anyone else they are removed and the proxy writes its own.
const FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
];

/// Headers that concern one connection only (RFC 9110 §7.6.1, RFC 9112 §9.6): never forwarded.
/// `Transfer-Encoding` is not listed: each path frames the body it forwards from it.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

/// Names `Connection` may not nominate: the proxy checks or sets them, or the message's framing
/// depends on them.
const PROTECTED: &[&str] = &[
    "authorization",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
];

/// More `Connection` options than this is not a browser: refused, so the work stays bounded.
const MAX_CONNECTION_OPTIONS: usize = 16;

/// Why a request's headers were refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("a header name contains '_' and listen.underscores_in_headers is \"refuse\"")]
    Underscore,
    #[error("Connection nominates a header the proxy checks or sets")]
    ProtectedNomination,
    #[error("Connection lists more than {MAX_CONNECTION_OPTIONS} options or a malformed one")]
    MalformedConnection,
}

impl HeaderError {
    /// A stable label for the security log.
    pub fn reason(self) -> &'static str {
        match self {
            HeaderError::Underscore => "underscore_header",
            HeaderError::ProtectedNomination => "connection_nominates_protected",
            HeaderError::MalformedConnection => "connection_malformed",
        }
    }
}

/// The lower-case name with `_` as `-`: what a CGI-style server makes of it.
fn folded(name: &str) -> Cow<'_, str> {
    if name.contains('_') || name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase().replace('_', "-"))
    } else {
        Cow::Borrowed(name)
    }
}

fn is_proxy_owned(folded: &str) -> bool {
    folded.starts_with(PROXY_HEADER_PREFIX)
}

fn is_forwarding(folded: &str) -> bool {
    FORWARDING.contains(&folded)
}

/// The headers to remove from a client request before anything else looks at it, or why the
/// request is refused: names that fold onto a proxy-owned or forwarding header but are spelled
/// with `_`, names with `_` (per `underscores`), client-sent `X-Streamguard-*`, every
/// hop-by-hop header and every header `Connection` nominates.
///
/// The forwarding headers under their standard names stay for now: [`upstream_edits`] keeps or
/// replaces them depending on whether the peer is a trusted proxy.
pub fn inspect(
    headers: &HeaderMap,
    underscores: UnderscoreHeaders,
) -> Result<Vec<HeaderName>, HeaderError> {
    let mut remove: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let raw = name.as_str();
        let fold = folded(raw);
        let spoofs = is_proxy_owned(&fold) || (raw.contains('_') && is_forwarding(&fold));
        let drop = spoofs
            || HOP_BY_HOP.contains(&raw)
            || match (raw.contains('_'), underscores) {
                (false, _) | (true, UnderscoreHeaders::Pass) => false,
                (true, UnderscoreHeaders::Drop) => true,
                (true, UnderscoreHeaders::Refuse) => return Err(HeaderError::Underscore),
            };
        if drop {
            remove.push(name.clone());
        }
    }
    for option in connection_options(headers)? {
        let fold = folded(&option);
        if PROTECTED.contains(&fold.as_ref()) || is_proxy_owned(&fold) || is_forwarding(&fold) {
            return Err(HeaderError::ProtectedNomination);
        }
        if let Ok(name) = HeaderName::from_bytes(option.as_bytes()) {
            if headers.contains_key(&name) && !remove.contains(&name) {
                remove.push(name);
            }
        }
    }
    Ok(remove)
}

/// The options of every `Connection` line, lower-case. Each must be a token (RFC 9110 §7.6.1):
/// a quoted or otherwise decorated name could slip past the protected-name check while a lenient
/// hop strips what it means.
fn connection_options(headers: &HeaderMap) -> Result<Vec<String>, HeaderError> {
    let mut options = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for option in value.as_bytes().split(|b| *b == b',') {
            let option = option.trim_ascii();
            if option.is_empty() {
                continue;
            }
            if options.len() == MAX_CONNECTION_OPTIONS || !option.iter().all(|b| is_tchar(*b)) {
                return Err(HeaderError::MalformedConnection);
            }
            options.push(String::from_utf8_lossy(option).to_ascii_lowercase());
        }
    }
    Ok(options)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Where a request came from, as the proxy saw it.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The socket peer.
    pub peer: IpAddr,
    /// `limits.trusted_proxies`.
    pub trusted_proxies: &'a [Cidr],
    /// The listener speaks TLS.
    pub tls: bool,
}

/// One edit to the request sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    Remove(HeaderName),
    Set(HeaderName, HeaderValue),
}

/// The headers the proxy sets on the request it sends upstream (after [`inspect`] cleaned it):
/// the forwarding headers, and the identity of a verified caller.
///
/// From a trusted proxy, `X-Forwarded-For` is extended with the peer and the other forwarding
/// headers are kept; from anyone else they are all replaced by what the proxy saw, so an app
/// that logs or rate-limits by `X-Forwarded-For`, `X-Real-IP` or `Forwarded` cannot be lied to.
pub fn upstream_edits(
    headers: &HeaderMap,
    origin: Origin<'_>,
    identity: Option<(&str, &[String])>,
) -> Vec<Edit> {
    let mut edits = Vec::new();
    let peer = origin.peer.to_canonical();
    let trusted = origin.trusted_proxies.iter().any(|net| net.contains(peer));
    let xff_name = HeaderName::from_static("x-forwarded-for");
    let prior: Vec<&str> = headers
        .get_all(&xff_name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let chain = if trusted && !prior.is_empty() {
        format!("{}, {peer}", prior.join(", "))
    } else {
        peer.to_string()
    };
    if !trusted {
        for name in FORWARDING {
            edits.push(Edit::Remove(HeaderName::from_static(name)));
        }
    }
    if let Ok(value) = HeaderValue::try_from(chain) {
        edits.push(Edit::Set(xff_name, value));
    }
    let proto = HeaderName::from_static("x-forwarded-proto");
    if !trusted || !headers.contains_key(&proto) {
        let scheme = if origin.tls { "https" } else { "http" };
        edits.push(Edit::Set(proto, HeaderValue::from_static(scheme)));
    }
    if let Some((user, roles)) = identity {
        // A claim that cannot be a header value (a line break, say) is not forwarded at all:
        // the app then sees no identity rather than part of one.
        if let Ok(value) = HeaderValue::from_str(user) {
            edits.push(Edit::Set(HeaderName::from_static(USER_HEADER), value));
        }
        if !roles.is_empty() {
            if let Ok(value) = HeaderValue::from_str(&roles.join(",")) {
                edits.push(Edit::Set(HeaderName::from_static(ROLES_HEADER), value));
            }
        }
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn removed(
        pairs: &[(&str, &str)],
        underscores: UnderscoreHeaders,
    ) -> Result<Vec<String>, HeaderError> {
        inspect(&headers(pairs), underscores).map(|names| {
            let mut names: Vec<String> = names.iter().map(|n| n.as_str().to_owned()).collect();
            names.sort();
            names
        })
    }

    #[test]
    fn spoofed_proxy_headers_are_dropped_in_every_spelling() {
        for pass in [UnderscoreHeaders::Pass, UnderscoreHeaders::Drop] {
            let got = removed(
                &[
                    ("x-streamguard-user", "root"),
                    ("x_streamguard_user", "root"),
                    ("X_Streamguard-Roles", "admin"),
                    ("x_forwarded_for", "1.2.3.4"),
                    ("x-app", "kept"),
                ],
                pass,
            );
            let expected = [
                "x-streamguard-user",
                "x_forwarded_for",
                "x_streamguard-roles",
                "x_streamguard_user",
            ];
            assert_eq!(got, Ok(expected.map(String::from).to_vec()), "{pass:?}");
        }
    }

    #[test]
    fn underscore_policy() {
        let pairs = [("x_app_id", "7"), ("x-app", "1")];
        assert_eq!(
            removed(&pairs, UnderscoreHeaders::Drop),
            Ok(vec!["x_app_id".into()])
        );
        assert_eq!(removed(&pairs, UnderscoreHeaders::Pass), Ok(vec![]));
        assert_eq!(
            removed(&pairs, UnderscoreHeaders::Refuse),
            Err(HeaderError::Underscore)
        );
    }

    #[test]
    fn hop_by_hop_and_nominated_headers_go() {
        let got = removed(
            &[
                ("connection", "keep-alive, X-Trace"),
                ("keep-alive", "timeout=5"),
                ("x-trace", "1"),
                ("proxy-authorization", "Basic eA=="),
                ("te", "trailers"),
                ("upgrade", "h2c"),
                ("x-app", "kept"),
            ],
            UnderscoreHeaders::Drop,
        );
        assert_eq!(
            got,
            Ok(vec![
                "connection".into(),
                "keep-alive".into(),
                "proxy-authorization".into(),
                "te".into(),
                "upgrade".into(),
                "x-trace".into(),
            ])
        );
    }

    #[test]
    fn connection_cannot_nominate_what_the_proxy_checks_or_sets() {
        for nominated in [
            "Authorization",
            "cookie",
            "X-Streamguard-User",
            "x_streamguard_user",
            "X-Forwarded-For",
            "x-real-ip",
            "Forwarded",
            "Host",
            "content-length",
            "transfer-encoding",
            "close, authorization",
        ] {
            assert_eq!(
                removed(&[("connection", nominated)], UnderscoreHeaders::Drop),
                Err(HeaderError::ProtectedNomination),
                "{nominated}"
            );
        }
        for malformed in ["\"authorization\"", "a b", "x:y"] {
            assert_eq!(
                removed(&[("connection", malformed)], UnderscoreHeaders::Drop),
                Err(HeaderError::MalformedConnection),
                "{malformed}"
            );
        }
        let many = vec!["x"; MAX_CONNECTION_OPTIONS + 1].join(",");
        assert_eq!(
            removed(&[("connection", &many)], UnderscoreHeaders::Drop),
            Err(HeaderError::MalformedConnection)
        );
        assert_eq!(
            removed(
                &[("connection", "close"), ("connection", "Upgrade")],
                UnderscoreHeaders::Drop
            ),
            Ok(vec!["connection".into()])
        );
    }

    fn cidr(s: &str) -> Cidr {
        let (addr, len) = s.split_once('/').expect("slash");
        Cidr {
            addr: addr.parse().expect("addr"),
            prefix_len: len.parse().expect("len"),
        }
    }

    fn edits(pairs: &[(&str, &str)], peer: &str, trusted: &[Cidr], tls: bool) -> Vec<Edit> {
        upstream_edits(
            &headers(pairs),
            Origin {
                peer: peer.parse().expect("ip"),
                trusted_proxies: trusted,
                tls,
            },
            None,
        )
    }

    fn set(name: &'static str, value: &str) -> Edit {
        Edit::Set(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("value"),
        )
    }

    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
        let got = edits(
            &[("x-forwarded-for", "6.6.6.6"), ("x-real-ip", "6.6.6.6")],
            "203.0.113.9",
            &[cidr("10.0.0.0/8")],
            true,
        );
        for name in FORWARDING {
            assert!(
                got.contains(&Edit::Remove(HeaderName::from_static(name))),
                "{name}"
            );
        }
        assert!(got.contains(&set("x-forwarded-for", "203.0.113.9")));
        assert!(got.contains(&set("x-forwarded-proto", "https")));
    }

    #[test]
    fn a_trusted_proxy_extends_the_chain_and_keeps_its_headers() {
        let trusted = [cidr("10.0.0.0/8")];
        let got = edits(
            &[
                ("x-forwarded-for", "198.51.100.7"),
                ("x-forwarded-for", "10.0.0.3"),
                ("x-forwarded-proto", "https"),
            ],
            "10.0.0.2",
            &trusted,
            false,
        );
        assert_eq!(
            got,
            vec![set("x-forwarded-for", "198.51.100.7, 10.0.0.3, 10.0.0.2")]
        );
        let bare = edits(&[], "::ffff:10.0.0.2", &trusted, false);
        assert_eq!(
            bare,
            vec![
                set("x-forwarded-for", "10.0.0.2"),
                set("x-forwarded-proto", "http")
            ]
        );
    }

    #[test]
    fn identity_headers_are_set_only_when_they_are_valid_values() {
        let roles = vec!["admin".to_owned(), "ops".to_owned()];
        let origin = Origin {
            peer: "127.0.0.1".parse().expect("ip"),
            trusted_proxies: &[],
            tls: false,
        };
        let got = upstream_edits(&HeaderMap::new(), origin, Some(("alice", &roles)));
        assert!(got.contains(&set(USER_HEADER, "alice")));
        assert!(got.contains(&set(ROLES_HEADER, "admin,ops")));
        let broken = upstream_edits(&HeaderMap::new(), origin, Some(("a\nb", &[])));
        assert!(!broken
            .iter()
            .any(|e| matches!(e, Edit::Set(n, _) if n == USER_HEADER)));
    }
}
