//! Strict CORS: the proxy, not the upstream, decides which browser origins may read streams.
//!
//! Legacy apps often answer `Access-Control-Allow-Origin: *` or reflect any origin. This module
//! replaces that with an allowlist: origins are parsed and compared in a normalised form, the
//! allowed origin is echoed back exactly (never `*`, which browsers refuse with credentials),
//! and every CORS header the upstream sets is dropped so a wildcard can never leak through.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

use super::Rejection;
use crate::config::types::{CorsConfig, OriginPattern};

/// What to do with a request, as far as CORS is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsDecision {
    /// Not a cross-origin browser request (no `Origin`); CORS does not apply.
    NoOrigin,
    /// An allowed preflight: answer `204` with exactly these headers, without asking upstream.
    Preflight {
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// An allowed cross-origin request: proxy it, then add
    /// [`CorsPolicy::response_headers`] for this origin.
    Allowed { origin: HeaderValue },
    /// Refuse with `rejection`; `reason` is for the security log.
    Rejected {
        rejection: Rejection,
        reason: &'static str,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CorsSetupError {
    #[error("cors.{field} cannot be sent as an http header value")]
    InvalidHeaderValue { field: &'static str },
}

/// The compiled `[cors]` section.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    patterns: Vec<OriginPattern>,
    allow_credentials: bool,
    allowed_methods: Vec<String>,
    allowed_headers: Vec<String>,
    allow_methods_value: Option<HeaderValue>,
    allow_headers_value: Option<HeaderValue>,
    expose_headers_value: Option<HeaderValue>,
    max_age_value: HeaderValue,
    require_origin: bool,
}

impl CorsPolicy {
    pub fn new(cfg: &CorsConfig) -> Result<CorsPolicy, CorsSetupError> {
        Ok(CorsPolicy {
            patterns: cfg.allowed_origins.iter().map(normalize_pattern).collect(),
            allow_credentials: cfg.allow_credentials,
            allowed_methods: cfg.allowed_methods.clone(),
            allowed_headers: cfg
                .allowed_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allow_methods_value: list_value("allowed_methods", &cfg.allowed_methods)?,
            allow_headers_value: list_value("allowed_headers", &cfg.allowed_headers)?,
            expose_headers_value: list_value("expose_headers", &cfg.expose_headers)?,
            max_age_value: HeaderValue::from(cfg.max_age.as_secs()),
            require_origin: cfg.require_origin,
        })
    }

    pub fn check(&self, method: &Method, headers: &HeaderMap) -> CorsDecision {
        let mut origins = headers.get_all(header::ORIGIN).iter();
        let origin = match (origins.next(), origins.next()) {
            (None, _) if self.require_origin => {
                return rejected(Rejection::CorsForbidden, "origin_missing")
            }
            (None, _) => return CorsDecision::NoOrigin,
            (Some(_), Some(_)) => return rejected(Rejection::CorsForbidden, "origin_multiple"),
            (Some(origin), None) => origin,
        };
        let is_preflight = method == Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let rejection = if is_preflight {
            Rejection::PreflightForbidden
        } else {
            Rejection::CorsForbidden
        };
        if let Err(reason) = self.admit_origin(origin) {
            return rejected(rejection, reason);
        }
        if !is_preflight {
            return CorsDecision::Allowed {
                origin: origin.clone(),
            };
        }
        match self.admit_preflight(headers) {
            Ok(()) => CorsDecision::Preflight {
                headers: self.preflight_headers(origin),
            },
            Err(reason) => rejected(rejection, reason),
        }
    }

    /// Headers to add to the upstream's response for an [`CorsDecision::Allowed`] origin.
    /// `Vary: Origin` is not among them: every answer carries it, whatever the origin (see
    /// `proxy::respond`).
    pub fn response_headers(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = self.origin_headers(origin);
        if let Some(expose) = &self.expose_headers_value {
            headers.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
        }
        headers
    }

    fn admit_origin(&self, origin: &HeaderValue) -> Result<(), &'static str> {
        let raw = origin.to_str().map_err(|_| "origin_not_ascii")?;
        let origin = Origin::parse(raw)?;
        if self.patterns.iter().any(|pattern| origin.matches(pattern)) {
            Ok(())
        } else {
            Err("origin_not_allowed")
        }
    }

    fn admit_preflight(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let mut methods = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_METHOD)
            .iter();
        let method = match (methods.next(), methods.next()) {
            (Some(method), None) => method.to_str().map_err(|_| "preflight_malformed")?,
            _ => return Err("preflight_malformed"),
        };
        // Method names are case-sensitive (RFC 9110 §9.1); browsers upper-case the standard ones.
        if !self.allowed_methods.iter().any(|allowed| allowed == method) {
            return Err("preflight_method_not_allowed");
        }
        for value in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            let value = value.to_str().map_err(|_| "preflight_malformed")?;
            let requested = value
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty());
            for name in requested {
                if !self
                    .allowed_headers
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(name))
                {
                    return Err("preflight_header_not_allowed");
                }
            }
        }
        Ok(())
    }

    fn preflight_headers(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = self.origin_headers(origin);
        let lists = [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                &self.allow_methods_value,
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                &self.allow_headers_value,
            ),
        ];
        for (name, value) in lists {
            if let Some(value) = value {
                headers.push((name, value.clone()));
            }
        }
        headers.push((header::ACCESS_CONTROL_MAX_AGE, self.max_age_value.clone()));
        headers
    }

    /// The headers shared by preflight and actual responses.
    fn origin_headers(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = vec![(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())];
        if self.allow_credentials {
            headers.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        headers
    }
}

/// The names of every `access-control-*` header in an upstream response.
///
/// The caller removes them (through Pingora's `ResponseHeader::remove_header`, which keeps its
/// header-case map in step; editing the inner `HeaderMap` directly would desynchronise it)
/// before adding the proxy's own CORS headers.
pub fn upstream_cors_header_names(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect()
}

fn rejected(rejection: Rejection, reason: &'static str) -> CorsDecision {
    CorsDecision::Rejected { rejection, reason }
}

/// Joins a config list into one header value; `None` for an empty list.
fn list_value(
    field: &'static str,
    items: &[String],
) -> Result<Option<HeaderValue>, CorsSetupError> {
    if items.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&items.join(", "))
        .map(Some)
        .map_err(|_| CorsSetupError::InvalidHeaderValue { field })
}

/// Brings an `Exact` pattern to the form [`Origin::serialize`] produces, so that
/// `https://a.com:443` in the config still matches what browsers send.
fn normalize_pattern(pattern: &OriginPattern) -> OriginPattern {
    match pattern {
        OriginPattern::Exact(exact) => OriginPattern::Exact(
            Origin::parse(exact).map_or_else(|_| exact.to_ascii_lowercase(), |o| o.serialize()),
        ),
        // The leading dot is what keeps `evilexample.com` out of `*.example.com`.
        OriginPattern::Wildcard { scheme, suffix } => OriginPattern::Wildcard {
            scheme: scheme.to_ascii_lowercase(),
            suffix: format!(".{}", suffix.trim_start_matches('.').to_ascii_lowercase()),
        },
    }
}

/// A parsed `scheme://host[:port]`, lower-cased, with the scheme's default port removed.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// Accepts only the serialised-origin grammar browsers send (RFC 6454 §6.1). Anything
    /// else (paths, userinfo, lists, whitespace, `null`) is refused rather than repaired,
    /// because a lenient parser is where allowlist bypasses come from.
    fn parse(raw: &str) -> Result<Origin, &'static str> {
        if raw.eq_ignore_ascii_case("null") {
            return Err("origin_null");
        }
        let (scheme, authority) = raw.split_once("://").ok_or("origin_malformed")?;
        if !is_scheme(scheme) {
            return Err("origin_malformed");
        }
        let scheme = scheme.to_ascii_lowercase();
        let (host, port) = split_host_port(authority)?;
        let port = port.filter(|&port| Some(port) != default_port(&scheme));
        Ok(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn serialize(&self) -> String {
        match self.port {
            Some(port) => format!("{}://{}:{}", self.scheme, self.host, port),
            None => format!("{}://{}", self.scheme, self.host),
        }
    }

    fn matches(&self, pattern: &OriginPattern) -> bool {
        match pattern {
            OriginPattern::Exact(exact) => self.serialize() == *exact,
            // A wildcard pattern names no port, so only the default one qualifies; the
            // non-empty label before `suffix` keeps the apex domain out.
            OriginPattern::Wildcard { scheme, suffix } => {
                self.scheme == *scheme
                    && self.port.is_none()
                    && self
                        .host
                        .strip_suffix(suffix.as_str())
                        .is_some_and(|sub| !sub.is_empty())
            }
        }
    }
}

fn is_scheme(scheme: &str) -> bool {
    let mut bytes = scheme.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or("origin_malformed")? + 1;
        let (host, rest) = authority.split_at(end);
        if !is_ipv6_literal(host) {
            return Err("origin_malformed");
        }
        match rest {
            "" => (host, None),
            _ => (
                host,
                Some(rest.strip_prefix(':').ok_or("origin_malformed")?),
            ),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if !is_dns_host(host) {
            return Err("origin_malformed");
        }
        (host, port)
    };
    Ok((host, port.map(parse_port).transpose()?))
}

fn is_dns_host(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

fn is_ipv6_literal(host: &str) -> bool {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|inner| {
            !inner.is_empty()
                && inner
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        })
}

fn parse_port(port: &str) -> Result<u16, &'static str> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("origin_malformed");
    }
    port.parse().map_err(|_| "origin_malformed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> CorsConfig {
        CorsConfig {
            allowed_origins: vec![
                OriginPattern::Exact("https://app.example.com".into()),
                OriginPattern::Exact("http://localhost:3000".into()),
                OriginPattern::Exact("https://legacy.example.net:443".into()),
                OriginPattern::Exact("https://[::1]:8443".into()),
                OriginPattern::Wildcard {
                    scheme: "https".into(),
                    suffix: ".example.org".into(),
                },
            ],
            allow_credentials: true,
            allowed_methods: vec!["GET".into(), "POST".into()],
            allowed_headers: vec!["authorization".into(), "last-event-id".into()],
            expose_headers: vec!["x-request-id".into()],
            max_age: Duration::from_secs(600),
            require_origin: false,
        }
    }

    fn policy() -> CorsPolicy {
        CorsPolicy::new(&config()).expect("test config is valid")
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("test header name");
            headers.append(
                name,
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        headers
    }

    fn get_with_origin(origin: &str) -> CorsDecision {
        policy().check(&Method::GET, &request(&[("origin", origin)]))
    }

    #[test]
    fn origin_table() {
        let cases: &[(&str, Result<(), &str>)] = &[
            ("https://app.example.com", Ok(())),
            ("HTTPS://APP.Example.COM", Ok(())),
            ("https://app.example.com:443", Ok(())),
            ("http://localhost:3000", Ok(())),
            ("https://legacy.example.net", Ok(())),
            ("https://[::1]:8443", Ok(())),
            ("https://x.example.org", Ok(())),
            ("https://a.b.example.org", Ok(())),
            ("https://X.EXAMPLE.ORG:443", Ok(())),
            ("https://app.example.com:8443", Err("origin_not_allowed")),
            ("http://app.example.com", Err("origin_not_allowed")),
            ("http://localhost", Err("origin_not_allowed")),
            ("https://localhost:3000", Err("origin_not_allowed")),
            ("https://example.org", Err("origin_not_allowed")),
            ("http://x.example.org", Err("origin_not_allowed")),
            ("https://x.example.org:8443", Err("origin_not_allowed")),
            ("https://x.example.org.evil.com", Err("origin_not_allowed")),
            ("https://xexample.org", Err("origin_not_allowed")),
            (
                "https://app.example.com.evil.com",
                Err("origin_not_allowed"),
            ),
            ("wss://app.example.com", Err("origin_not_allowed")),
            ("null", Err("origin_null")),
            ("NULL", Err("origin_null")),
            ("app.example.com", Err("origin_malformed")),
            ("//app.example.com", Err("origin_malformed")),
            ("https://", Err("origin_malformed")),
            ("https://app.example.com/", Err("origin_malformed")),
            ("https://app.example.com/path", Err("origin_malformed")),
            ("https://app.example.com?x=1", Err("origin_malformed")),
            ("https://app.example.com#x", Err("origin_malformed")),
            ("https://user@app.example.com", Err("origin_malformed")),
            ("https://app.example.com@evil.com", Err("origin_malformed")),
            (
                "https://app.example.com, https://evil.com",
                Err("origin_malformed"),
            ),
            (
                "https://app.example.com https://evil.com",
                Err("origin_malformed"),
            ),
            ("https://app.example.com\t", Err("origin_malformed")),
            (" https://app.example.com", Err("origin_malformed")),
            ("https://app.example.com:", Err("origin_malformed")),
            ("https://app.example.com:99999", Err("origin_malformed")),
            ("https://app.example.com:44a", Err("origin_malformed")),
            ("https://app.example.com:443:443", Err("origin_malformed")),
            ("https://.example.org", Err("origin_malformed")),
            ("https://a..example.org", Err("origin_malformed")),
            ("https://app%2eexample.com", Err("origin_malformed")),
            ("https://[::1", Err("origin_malformed")),
            ("https://[::1]x", Err("origin_malformed")),
            ("1https://app.example.com", Err("origin_malformed")),
            ("", Err("origin_malformed")),
        ];
        for (origin, expected) in cases {
            let decision = get_with_origin(origin);
            let got = match &decision {
                CorsDecision::Allowed { origin: echoed } => {
                    assert_eq!(echoed, origin, "allowed origin must be echoed as sent");
                    Ok(())
                }
                CorsDecision::Rejected { rejection, reason } => {
                    assert_eq!(*rejection, Rejection::CorsForbidden, "{origin}");
                    Err(*reason)
                }
                other => panic!("{origin}: unexpected {other:?}"),
            };
            assert_eq!(got, *expected, "origin {origin:?}");
        }
    }

    #[test]
    fn wildcard_needs_a_subdomain_label() {
        let pattern = normalize_pattern(&OriginPattern::Wildcard {
            scheme: "HTTPS".into(),
            suffix: "Example.org".into(),
        });
        let origin = |host: &str| Origin {
            scheme: "https".into(),
            host: host.into(),
            port: None,
        };
        assert!(origin("a.example.org").matches(&pattern));
        assert!(!origin("evilexample.org").matches(&pattern));
        assert!(!origin(".example.org").matches(&pattern));
        assert!(!origin("example.org").matches(&pattern));
    }

    #[test]
    fn non_ascii_origin_is_rejected() {
        let mut headers = HeaderMap::new();
        let origin = HeaderValue::from_bytes("https://äpp.example.com".as_bytes()).expect("opaque");
        headers.insert(header::ORIGIN, origin);
        let decision = policy().check(&Method::GET, &headers);
        assert_eq!(
            decision,
            rejected(Rejection::CorsForbidden, "origin_not_ascii")
        );
    }

    #[test]
    fn two_origin_headers_are_rejected() {
        let headers = request(&[
            ("origin", "https://app.example.com"),
            ("origin", "https://app.example.com"),
        ]);
        let decision = policy().check(&Method::GET, &headers);
        assert_eq!(
            decision,
            rejected(Rejection::CorsForbidden, "origin_multiple")
        );
    }

    #[test]
    fn missing_origin_depends_on_require_origin() {
        assert_eq!(
            policy().check(&Method::GET, &HeaderMap::new()),
            CorsDecision::NoOrigin
        );
        let strict = CorsPolicy::new(&CorsConfig {
            require_origin: true,
            ..config()
        })
        .expect("test config is valid");
        assert_eq!(
            strict.check(&Method::GET, &HeaderMap::new()),
            rejected(Rejection::CorsForbidden, "origin_missing")
        );
    }

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn preflight(extra: Pairs<'_>) -> CorsDecision {
        let mut pairs = vec![("origin", "https://x.example.org")];
        pairs.extend_from_slice(extra);
        policy().check(&Method::OPTIONS, &request(&pairs))
    }

    fn header_value<'a>(headers: &'a [(HeaderName, HeaderValue)], name: &str) -> Option<&'a str> {
        let mut values = headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().ok());
        let first = values.next().flatten();
        assert!(values.next().is_none(), "{name} appears twice");
        first
    }

    #[test]
    fn allowed_preflight_lists_the_policy() {
        let decision = preflight(&[
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "Authorization, last-event-id",
            ),
        ]);
        let CorsDecision::Preflight { headers } = decision else {
            panic!("expected a preflight answer, got {decision:?}");
        };
        assert_eq!(
            header_value(&headers, "access-control-allow-origin"),
            Some("https://x.example.org")
        );
        assert_eq!(
            header_value(&headers, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            header_value(&headers, "access-control-allow-methods"),
            Some("GET, POST")
        );
        assert_eq!(
            header_value(&headers, "access-control-allow-headers"),
            Some("authorization, last-event-id")
        );
        assert_eq!(
            header_value(&headers, "access-control-max-age"),
            Some("600")
        );
        assert_eq!(headers.len(), 5);
    }

    #[test]
    fn preflight_table() {
        let cases: &[(Pairs<'_>, Option<&str>)] = &[
            (&[("access-control-request-method", "GET")], None),
            (
                &[
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", ""),
                ],
                None,
            ),
            (
                &[
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "LAST-EVENT-ID,"),
                ],
                None,
            ),
            (
                &[("access-control-request-method", "DELETE")],
                Some("preflight_method_not_allowed"),
            ),
            (
                &[("access-control-request-method", "get")],
                Some("preflight_method_not_allowed"),
            ),
            (
                &[("access-control-request-method", "GET, POST")],
                Some("preflight_method_not_allowed"),
            ),
            (
                &[
                    ("access-control-request-method", "GET"),
                    ("access-control-request-method", "GET"),
                ],
                Some("preflight_malformed"),
            ),
            (
                &[
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "authorization, x-evil"),
                ],
                Some("preflight_header_not_allowed"),
            ),
            (
                &[
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "authorization"),
                    ("access-control-request-headers", "cookie"),
                ],
                Some("preflight_header_not_allowed"),
            ),
        ];
        for (extra, expected) in cases {
            match (preflight(extra), expected) {
                (CorsDecision::Preflight { .. }, None) => {}
                (CorsDecision::Rejected { rejection, reason }, Some(expected)) => {
                    assert_eq!(rejection, Rejection::PreflightForbidden);
                    assert_eq!(reason, *expected, "{extra:?}");
                }
                (other, _) => panic!("{extra:?}: unexpected {other:?}, wanted {expected:?}"),
            }
        }
    }

    #[test]
    fn preflight_from_unknown_origin_is_rejected() {
        let headers = request(&[
            ("origin", "https://evil.com"),
            ("access-control-request-method", "GET"),
        ]);
        assert_eq!(
            policy().check(&Method::OPTIONS, &headers),
            rejected(Rejection::PreflightForbidden, "origin_not_allowed")
        );
    }

    #[test]
    fn options_without_request_method_is_a_plain_request() {
        let headers = request(&[("origin", "https://app.example.com")]);
        assert!(matches!(
            policy().check(&Method::OPTIONS, &headers),
            CorsDecision::Allowed { .. }
        ));
    }

    #[test]
    fn response_headers_follow_the_config() {
        let origin = HeaderValue::from_static("https://app.example.com");
        let headers = policy().response_headers(&origin);
        assert_eq!(
            header_value(&headers, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            header_value(&headers, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            header_value(&headers, "access-control-expose-headers"),
            Some("x-request-id")
        );
        assert_eq!(headers.len(), 3);

        let plain = CorsPolicy::new(&CorsConfig {
            allow_credentials: false,
            expose_headers: vec![],
            ..config()
        })
        .expect("test config is valid");
        let headers = plain.response_headers(&origin);
        assert_eq!(
            header_value(&headers, "access-control-allow-credentials"),
            None
        );
        assert_eq!(
            header_value(&headers, "access-control-expose-headers"),
            None
        );
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn upstream_cors_headers_are_all_found() {
        let upstream = request(&[
            ("access-control-allow-origin", "*"),
            ("Access-Control-Allow-Credentials", "true"),
            ("access-control-expose-headers", "a"),
            ("access-control-expose-headers", "b"),
            ("content-type", "text/event-stream"),
            ("x-access-control", "kept"),
        ]);
        let mut names: Vec<_> = upstream_cors_header_names(&upstream)
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "access-control-allow-credentials",
                "access-control-allow-origin",
                "access-control-expose-headers"
            ]
        );
    }
}
