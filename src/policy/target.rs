//! The request-target: one parsed value that the route check, token lifting, the access log and
//! the request sent upstream all derive from.
//!
//! A target that is not a plain path is where a proxy and an app most easily disagree. Pingora
//! keeps a target it cannot turn into a URI verbatim for the wire while its URI falls back to `/`,
//! so `GET api/v1/events/admin HTTP/1.1` was routed (and logged, and stripped of tokens) as `/`
//! while the app, Werkzeug for one, served `api/v1/events/admin`. So only the forms RFC 9112 §3.2
//! defines for a request to an origin server are accepted: origin-form (`/path?query`),
//! absolute-form (`http://host/path`, turned into origin-form with its authority as `Host`), and
//! `*` with `OPTIONS`. Everything else, authority-form included, is refused, and an accepted
//! target must come back out of the URI byte for byte, so nothing but the parsed value can
//! reach the app.

use http::header::{self, HeaderMap};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Version};

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

/// Why a request-target or `Host` was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the request-target is neither a path, an absolute http(s) URL nor `*` with OPTIONS")]
    Form,
    #[error(
        "the request-target has bytes a URI cannot hold as sent (a fragment, a space, non-ASCII)"
    )]
    Bytes,
    #[error("the absolute-form authority is empty, malformed or carries user information")]
    Authority,
    #[error("an HTTP/1.1 request needs exactly one Host header (RFC 9112 §3.2)")]
    HostCount,
    #[error("the Host header is not a valid authority")]
    HostValue,
}

impl TargetError {
    /// A stable label for the security log.
    pub fn reason(self) -> &'static str {
        match self {
            TargetError::Form => "target_form",
            TargetError::Bytes => "target_bytes",
            TargetError::Authority => "target_authority",
            TargetError::HostCount => "host_count",
            TargetError::HostValue => "host_value",
        }
    }
}

/// Classifies the request-target exactly as it arrived on the wire.
pub fn parse(method: &Method, raw: &[u8]) -> Result<Target, TargetError> {
    if raw == b"*" {
        return if method == Method::OPTIONS {
            Ok(Target::Asterisk)
        } else {
            Err(TargetError::Form)
        };
    }
    if raw.first() == Some(&b'/') {
        return Ok(Target::Path {
            path_and_query: origin_form(raw)?,
            authority: None,
        });
    }
    let rest = strip_scheme(raw).ok_or(TargetError::Form)?;
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?'))
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = host_authority(authority).ok_or(TargetError::Authority)?;
    // `http://host` and `http://host?q` have no path; origin-form needs at least `/`.
    let path_and_query = if path.first() == Some(&b'/') {
        origin_form(path)?
    } else {
        let mut rooted = Vec::with_capacity(path.len() + 1);
        rooted.push(b'/');
        rooted.extend_from_slice(path);
        origin_form(&rooted)?
    };
    Ok(Target::Path {
        path_and_query,
        authority: Some(authority),
    })
}

/// Checks `Host` once the target's authority (if any) has replaced it: an HTTP/1.1 request has
/// exactly one, an HTTP/1.0 request at most one, and every one is a valid authority without
/// user information. HTTP/2 carries `:authority` instead and is not checked here.
pub fn check_host(version: Version, headers: &HeaderMap) -> Result<(), TargetError> {
    if version == Version::HTTP_2 {
        return Ok(());
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() || (first.is_none() && version == Version::HTTP_11) {
        return Err(TargetError::HostCount);
    }
    match first {
        Some(host) if host_authority(host.as_bytes()).is_none() => Err(TargetError::HostValue),
        _ => Ok(()),
    }
}

/// Whether the URI the proxy routes on is exactly what will be written upstream. Checked before
/// a request leaves: a target edited in any other way than through the parsed URI would fail it.
pub fn is_consistent(raw: &[u8], path_and_query: Option<&PathAndQuery>) -> bool {
    path_and_query.is_some_and(|pq| pq.as_str().as_bytes() == raw)
}

fn strip_scheme(raw: &[u8]) -> Option<&[u8]> {
    ["https://", "http://"].iter().find_map(|scheme| {
        let n = scheme.len();
        (raw.len() >= n && raw[..n].eq_ignore_ascii_case(scheme.as_bytes())).then(|| &raw[n..])
    })
}

/// An origin-form target that round-trips through [`PathAndQuery`] unchanged.
fn origin_form(raw: &[u8]) -> Result<PathAndQuery, TargetError> {
    // Visible ASCII only: `http` would accept some other bytes, and drops a fragment.
    if !raw.iter().all(|b| (0x21..0x7f).contains(b)) || raw.contains(&b'#') {
        return Err(TargetError::Bytes);
    }
    let parsed = PathAndQuery::try_from(raw).map_err(|_| TargetError::Bytes)?;
    if parsed.as_str().as_bytes() != raw {
        return Err(TargetError::Bytes);
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
        let cases = [
            ("api/v1/events/admin", TargetError::Form),
            ("api", TargetError::Form),
            ("", TargetError::Form),
            ("*", TargetError::Form),
            ("app.example:443", TargetError::Form),
            ("ftp://app.example/x", TargetError::Form),
            ("http://user:pw@app.example/x", TargetError::Authority),
            ("http:///x", TargetError::Authority),
            ("http://app.example/a#frag", TargetError::Bytes),
            ("/a#frag", TargetError::Bytes),
            ("/a b", TargetError::Bytes),
            ("/caf\u{e9}", TargetError::Bytes),
            ("/a\u{7f}", TargetError::Bytes),
        ];
        for (raw, expected) in cases {
            assert_eq!(path(raw).map(|_| ()), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn asterisk_only_with_options() {
        assert_eq!(parse(&Method::OPTIONS, b"*"), Ok(Target::Asterisk));
        assert_eq!(parse(&Method::POST, b"*"), Err(TargetError::Form));
    }

    fn hosts(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(header::HOST, http::HeaderValue::from_str(v).expect("value"));
        }
        map
    }

    #[test]
    fn host_rules() {
        let ok = Ok(());
        let cases = [
            (Version::HTTP_11, &["app.example"][..], ok),
            (Version::HTTP_11, &["app.example:8080"][..], ok),
            (Version::HTTP_11, &[][..], Err(TargetError::HostCount)),
            (Version::HTTP_10, &[][..], ok),
            (
                Version::HTTP_11,
                &["a", "b"][..],
                Err(TargetError::HostCount),
            ),
            (
                Version::HTTP_10,
                &["a", "a"][..],
                Err(TargetError::HostCount),
            ),
            (
                Version::HTTP_11,
                &["u@app"][..],
                Err(TargetError::HostValue),
            ),
            (Version::HTTP_11, &["a/b"][..], Err(TargetError::HostValue)),
            (Version::HTTP_11, &[""][..], Err(TargetError::HostValue)),
            (Version::HTTP_2, &[][..], ok),
        ];
        for (version, values, expected) in cases {
            assert_eq!(
                check_host(version, &hosts(values)),
                expected,
                "{version:?} {values:?}"
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
                other => prop_assert!(raw.contains('#') || other.is_err(), "{:?}", other),
            }
        }
    }
}
