//! The request-target and `Host`: one parsed value that the route check, token lifting, the
//! access log and the request sent upstream all derive from.
//!
//! A target that is not a plain path is where a proxy and an app most easily disagree. Pingora
//! keeps a target it cannot turn into a URI verbatim for the wire while its URI falls back to `/`,
//! so `GET api/v1/events/admin HTTP/1.1` was routed (and logged, and stripped of tokens) as `/`
//! while the app, Werkzeug for one, served `api/v1/events/admin`. So only the forms RFC 9112 §3.2
//! defines for a request to an origin server are accepted: origin-form (`/path?query`),
//! absolute-form (`http://host/path`, turned into origin-form with its authority as `Host`), and
//! `*` with `OPTIONS`. Everything else, authority-form included, is refused, and an accepted
//! target must come back out of the URI byte for byte, so nothing but the parsed value can reach
//! the app. The same rules judge the head before Pingora parses it (`server::head`) and turn it
//! into the URI the proxy routes on (`proxy::pipeline`).

use http::uri::{Authority, PathAndQuery};
use http::{Method, Version};
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};

/// A request-target the proxy accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Origin-form, or absolute-form reduced to it.
    Path {
        /// What is routed, logged and forwarded (before token lifting edits its query).
        path_and_query: PathAndQuery,
        /// The absolute-form target's authority, which replaces any `Host` the client sent
        /// (RFC 9112 §3.2.2).
        authority: Option<Authority>,
    },
    /// `OPTIONS *`: a question about the server, answered by the proxy itself.
    Asterisk,
}

/// Why a request-target or `Host` was refused (400). Each has a fixed label for the security
/// log ([`TargetError::reason`]); nothing of the request is ever quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the target is neither /path, http(s)://authority/path nor * with OPTIONS")]
    NotOriginForm,
    #[error("`*` is a target for OPTIONS only")]
    Asterisk,
    #[error("an absolute-form target must be http or https")]
    Scheme,
    #[error("the target has bytes outside ASCII; conforming clients percent-encode them")]
    NonAscii,
    #[error("the target has a fragment, which clients never send and apps read differently")]
    Fragment,
    #[error("the target has bytes a URI cannot hold as sent")]
    Invalid,
    #[error("the absolute-form authority carries user information")]
    Userinfo,
    #[error("the absolute-form authority is empty or malformed")]
    Authority,
    #[error("Host differs from the absolute-form target's authority")]
    HostMismatch,
    #[error("an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)")]
    HostMissing,
    #[error("a request may carry one Host header only (RFC 9112 §3.2)")]
    HostDuplicate,
    #[error("the Host header carries user information")]
    HostUserinfo,
    #[error("the Host header is not a valid authority")]
    HostInvalid,
}

impl TargetError {
    /// A stable label for the security log.
    pub fn reason(self) -> &'static str {
        match self {
            TargetError::NotOriginForm => "not_origin_form",
            TargetError::Asterisk => "asterisk",
            TargetError::Scheme => "scheme",
            TargetError::NonAscii => "non_ascii",
            TargetError::Fragment => "fragment",
            TargetError::Invalid => "invalid",
            TargetError::Userinfo => "userinfo",
            TargetError::Authority => "authority",
            TargetError::HostMismatch => "host_mismatch",
            TargetError::HostMissing => "missing_host",
            TargetError::HostDuplicate => "duplicate_host",
            TargetError::HostUserinfo => "host_userinfo",
            TargetError::HostInvalid => "host_invalid",
        }
    }
}

/// Classifies the request-target exactly as it arrived on the wire.
pub fn parse(method: &Method, raw: &[u8]) -> Result<Target, TargetError> {
    if !raw.is_ascii() {
        return Err(TargetError::NonAscii);
    }
    if raw.contains(&b'#') {
        return Err(TargetError::Fragment);
    }
    match raw {
        [b'/', ..] => Ok(Target::Path {
            path_and_query: origin_form(raw)?,
            authority: None,
        }),
        b"*" if method == Method::OPTIONS => Ok(Target::Asterisk),
        b"*" => Err(TargetError::Asterisk),
        _ => absolute_form(raw),
    }
}

/// `http(s)://authority[/path][?query]`, split where Pingora's own classifier splits it, so the
/// authority checked here is the one Pingora would reconcile with `Host`.
fn absolute_form(raw: &[u8]) -> Result<Target, TargetError> {
    let RawTargetAuthority::Absolute {
        scheme,
        authority,
        path_and_query: rest,
    } = raw_target_authority(raw)
    else {
        return Err(TargetError::NotOriginForm);
    };
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return Err(TargetError::Scheme);
    }
    if authority.contains(&b'@') {
        return Err(TargetError::Userinfo);
    }
    let authority = host_authority(authority).ok_or(TargetError::Authority)?;
    // `http://host` and `http://host?q` have no path; origin-form needs at least `/`.
    let path_and_query = match rest {
        [b'/', ..] => origin_form(rest)?,
        _ => origin_form(&[b"/", rest].concat())?,
    };
    Ok(Target::Path {
        path_and_query,
        authority: Some(authority),
    })
}

/// Checks the `Host` values of a request whose target parsed as `target`: an HTTP/1.1 request has
/// exactly one, an HTTP/1.0 request at most one, each a valid authority without user
/// information, and an absolute-form target's authority must match it (two names for one request
/// could each be read by a different hop). HTTP/2 carries `:authority` instead.
pub fn check_host(version: Version, hosts: &[&[u8]], target: &Target) -> Result<(), TargetError> {
    if version == Version::HTTP_2 {
        return Ok(());
    }
    let host = match hosts {
        [] if version == Version::HTTP_11 => return Err(TargetError::HostMissing),
        [] => return Ok(()),
        [one] => *one,
        _ => return Err(TargetError::HostDuplicate),
    };
    if host.contains(&b'@') {
        return Err(TargetError::HostUserinfo);
    }
    if host_authority(host).is_none() {
        return Err(TargetError::HostInvalid);
    }
    match target {
        Target::Path {
            authority: Some(authority),
            ..
        } if authority.as_str().as_bytes() != host => Err(TargetError::HostMismatch),
        _ => Ok(()),
    }
}

/// Whether the URI the proxy routes on is exactly what will be written upstream. Checked before
/// a request leaves: a target edited in any other way than through the parsed URI would fail it.
pub fn is_consistent(raw: &[u8], path_and_query: Option<&PathAndQuery>) -> bool {
    path_and_query.is_some_and(|pq| pq.as_str().as_bytes() == raw)
}

/// An origin-form target that round-trips through [`PathAndQuery`] unchanged.
fn origin_form(raw: &[u8]) -> Result<PathAndQuery, TargetError> {
    // Visible ASCII only: `http` would accept a few other bytes.
    if !raw.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Err(TargetError::Invalid);
    }
    let parsed = PathAndQuery::try_from(raw).map_err(|_| TargetError::Invalid)?;
    if parsed.as_str().as_bytes() != raw {
        return Err(TargetError::Invalid);
    }
    Ok(parsed)
}

/// A `Host` value or absolute-form authority: `host[:port]`, no user information.
fn host_authority(raw: &[u8]) -> Option<Authority> {
    if raw.is_empty() || raw.contains(&b'@') || !raw.iter().all(|b| (0x21..0x7f).contains(b)) {
        return None;
    }
    let authority = Authority::try_from(raw).ok()?;
    (!authority.host().is_empty() && authority.as_str().as_bytes() == raw).then_some(authority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path(raw: &str) -> Result<(String, Option<String>), TargetError> {
        match parse(&Method::GET, raw.as_bytes())? {
            Target::Path {
                path_and_query,
                authority,
            } => Ok((
                path_and_query.as_str().to_owned(),
                authority.map(|a| a.as_str().to_owned()),
            )),
            Target::Asterisk => panic!("{raw}: asterisk for GET"),
        }
    }

    #[test]
    fn origin_form_is_kept_byte_for_byte() {
        for raw in [
            "/",
            "/api/v1/events",
            "/a?b=1&c=%2F",
            "/a/%2e%2e/b",
            "/a?x=/y?z",
            "/?",
            "/a{b}|c^d\"e",
        ] {
            assert_eq!(path(raw), Ok((raw.to_owned(), None)), "{raw}");
        }
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_its_authority() {
        let cases = [
            ("http://app.example/a?b=1", "/a?b=1", "app.example"),
            ("HTTPS://app.example:8443/x", "/x", "app.example:8443"),
            ("http://app.example", "/", "app.example"),
            ("http://app.example?q=1", "/?q=1", "app.example"),
            ("http://[::1]:80/p", "/p", "[::1]:80"),
        ];
        for (raw, pq, authority) in cases {
            assert_eq!(
                path(raw),
                Ok((pq.to_owned(), Some(authority.to_owned()))),
                "{raw}"
            );
        }
    }

    #[test]
    fn other_forms_are_refused() {
        use TargetError::*;
        let cases = [
            ("api/v1/events/admin", NotOriginForm),
            ("api", NotOriginForm),
            ("", NotOriginForm),
            ("*", Asterisk),
            ("app.example:443", NotOriginForm),
            ("http:/a/x", NotOriginForm),
            ("http://a\\b/x", NotOriginForm),
            ("ftp://app.example/x", Scheme),
            ("ws://a/x", Scheme),
            ("http://user:pw@app.example/x", Userinfo),
            ("http://app.example/a#frag", Fragment),
            ("/a#frag", Fragment),
            ("/a b", Invalid),
            ("/a<b", Invalid),
            ("/caf\u{e9}", NonAscii),
            ("/a\u{7f}", Invalid),
        ];
        for (raw, expected) in cases {
            assert_eq!(path(raw).map(|_| ()), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn asterisk_only_with_options() {
        assert_eq!(parse(&Method::OPTIONS, b"*"), Ok(Target::Asterisk));
        assert_eq!(parse(&Method::POST, b"*"), Err(TargetError::Asterisk));
    }

    #[test]
    fn host_rules() {
        use TargetError::*;
        let origin = parse(&Method::GET, b"/").expect("origin-form");
        let absolute = parse(&Method::GET, b"http://a.example/x").expect("absolute-form");
        type Case<'a> = (Version, &'a [&'a [u8]], &'a Target, Result<(), TargetError>);
        let cases: [Case<'_>; 12] = [
            (Version::HTTP_11, &[b"app.example"], &origin, Ok(())),
            (Version::HTTP_11, &[b"app.example:8080"], &origin, Ok(())),
            (Version::HTTP_11, &[], &origin, Err(HostMissing)),
            (Version::HTTP_10, &[], &origin, Ok(())),
            (Version::HTTP_11, &[b"a", b"b"], &origin, Err(HostDuplicate)),
            (Version::HTTP_10, &[b"a", b"a"], &origin, Err(HostDuplicate)),
            (Version::HTTP_11, &[b"u@a"], &origin, Err(HostUserinfo)),
            (Version::HTTP_11, &[b"a/b"], &origin, Err(HostInvalid)),
            (Version::HTTP_11, &[b""], &origin, Err(HostInvalid)),
            (Version::HTTP_11, &[b"a.example"], &absolute, Ok(())),
            (
                Version::HTTP_11,
                &[b"b.example"],
                &absolute,
                Err(HostMismatch),
            ),
            (Version::HTTP_2, &[], &origin, Ok(())),
        ];
        for (version, hosts, target, expected) in cases {
            assert_eq!(
                check_host(version, hosts, target),
                expected,
                "{version:?} {hosts:?} {target:?}"
            );
        }
    }

    proptest! {
        /// Whatever the bytes, an accepted target is a path that round-trips, so the URI that
        /// routes is the URI that is written.
        #[test]
        fn accepted_targets_round_trip(raw in prop::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(Target::Path { path_and_query, .. }) = parse(&Method::GET, &raw) {
                prop_assert!(path_and_query.as_str().starts_with('/'));
                let again = parse(&Method::GET, path_and_query.as_str().as_bytes());
                prop_assert_eq!(
                    again,
                    Ok(Target::Path { path_and_query: path_and_query.clone(), authority: None })
                );
            }
        }

        #[test]
        fn origin_form_round_trips(raw in "/[!-~]{0,30}") {
            match parse(&Method::GET, raw.as_bytes()) {
                Ok(Target::Path { path_and_query, authority: None }) => {
                    prop_assert_eq!(path_and_query.as_str(), raw.as_str());
                }
                other => prop_assert!(other.is_err(), "{:?}", other),
            }
        }
    }
}
