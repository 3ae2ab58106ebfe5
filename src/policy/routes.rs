//! Route matching and per-route authorisation.
//!
//! A route rule is only as strong as the agreement between our path matcher and the
//! upstream's router. If `/api/./admin` or `/api%2Fadmin` matched no rule here but reached
//! the admin handler upstream, the rule would be bypassed. So paths are decoded once and
//! compared segment by segment, and any path whose meaning could differ between two routers
//! (dot segments, encoded separators, empty segments, `;` parameters) is refused outright.

use percent_encoding::percent_decode_str;

use super::auth::Identity;
use super::Rejection;
use crate::config::types::{AuthMode, RouteConfig, RouteSegment};

/// The `[[route]]` tables plus the global auth mode for paths no route claims.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<RouteConfig>,
    default_auth: AuthMode,
}

/// The outcome of matching one request path.
#[derive(Debug, Clone)]
pub struct RouteMatch<'a> {
    /// The first route, in file order, whose segments prefix the path; `None` means the
    /// global settings apply.
    pub route: Option<&'a RouteConfig>,
    /// `{name}` segments with their percent-decoded values.
    pub params: Vec<(&'a str, String)>,
    /// The route's auth mode, or the global one.
    pub auth: AuthMode,
    /// The route's position in file order, so callers can keep it without a borrow.
    pub index: Option<usize>,
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig], default_auth: AuthMode) -> RouteTable {
        RouteTable {
            routes: routes.to_vec(),
            default_auth,
        }
    }

    /// Matches `path` (without the query). A route matches when its segments equal the first
    /// segments of the path, so `/a/b` covers `/a/b` and `/a/b/c` but not `/a/bc`. Matching is
    /// case-sensitive, like most upstream routers.
    ///
    /// Refuses with [`Rejection::BadRequest`] any path that is not a plain sequence of
    /// non-empty segments: a double slash (`//a`) is refused rather than collapsed, because
    /// upstreams disagree on whether it means `/a`.
    pub fn match_path(&self, path: &str) -> Result<RouteMatch<'_>, Rejection> {
        let segments = path_segments(path)?;
        let matched = self
            .routes
            .iter()
            .enumerate()
            .find_map(|(i, route)| Some((i, route, route_params(route, &segments)?)));
        Ok(match matched {
            Some((index, route, params)) => RouteMatch {
                route: Some(route),
                params,
                auth: route.auth,
                index: Some(index),
            },
            None => RouteMatch {
                route: None,
                params: Vec::new(),
                auth: self.default_auth,
                index: None,
            },
        })
    }
}

impl RouteMatch<'_> {
    /// Whether `identity` (the verified token, if any) may use the matched route: a required
    /// route needs an identity, a route with roles needs one of them, and each claim binding
    /// needs the path parameter to equal the claim.
    pub fn authorize(&self, identity: Option<&Identity>) -> Result<(), Rejection> {
        if self.auth == AuthMode::Off {
            return Ok(());
        }
        let (roles, claims) = self
            .route
            .map_or((&[][..], &[][..]), |r| (&r.roles[..], &r.claims[..]));
        let Some(identity) = identity else {
            // Role and claim rules cannot hold for an anonymous caller, even on an optional route.
            let needs_identity =
                self.auth == AuthMode::Required || !roles.is_empty() || !claims.is_empty();
            return if needs_identity {
                Err(Rejection::Unauthorized)
            } else {
                Ok(())
            };
        };
        if !roles.is_empty() && !roles.iter().any(|role| identity.roles.contains(role)) {
            return Err(Rejection::Forbidden);
        }
        for (param, claim) in claims {
            let value = self
                .params
                .iter()
                .find(|(name, _)| name == param)
                .map(|(_, value)| value);
            // A binding to a parameter the path lacks fails closed.
            if value.is_none() || identity.claim_str(claim).as_ref() != value {
                return Err(Rejection::Forbidden);
            }
        }
        Ok(())
    }
}

/// Splits an absolute path into decoded segments, tolerating one trailing slash.
fn path_segments(path: &str) -> Result<Vec<String>, Rejection> {
    let rest = path.strip_prefix('/').ok_or(Rejection::BadRequest)?;
    let mut raw: Vec<&str> = rest.split('/').collect();
    if raw.last() == Some(&"") {
        raw.pop();
    }
    raw.into_iter().map(decode_segment).collect()
}

fn decode_segment(raw: &str) -> Result<String, Rejection> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Rejection::BadRequest)?;
    let ambiguous = decoded.is_empty()
        || decoded == "."
        || decoded == ".."
        // `%2F` and `\` act as separators in some routers; `;` starts path parameters that
        // servlet containers strip; a `%` left after decoding means a second decoding
        // upstream would see something else.
        || decoded.contains(['/', '\\', ';', '%'])
        || decoded.chars().any(char::is_control);
    if ambiguous {
        Err(Rejection::BadRequest)
    } else {
        Ok(decoded.into_owned())
    }
}

/// The route's parameters if its segments prefix `segments`.
fn route_params<'a>(route: &'a RouteConfig, segments: &[String]) -> Option<Vec<(&'a str, String)>> {
    if segments.len() < route.segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (pattern, value) in route.segments.iter().zip(segments) {
        match pattern {
            RouteSegment::Literal(literal) if literal == value => {}
            RouteSegment::Literal(_) => return None,
            RouteSegment::Param(name) => params.push((name.as_str(), value.clone())),
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::{LimitsConfig, SseConfig, WebSocketConfig};
    use serde_json::{json, Map, Value};

    fn route(path: &str, auth: AuthMode, roles: &[&str], claims: &[(&str, &str)]) -> RouteConfig {
        let segments = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => RouteSegment::Param(name.into()),
                    None => RouteSegment::Literal(s.into()),
                },
            )
            .collect();
        RouteConfig {
            path: path.into(),
            segments,
            auth,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            claims: claims
                .iter()
                .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
                .collect(),
            // Routing never reads these: the documented defaults will do.
            sse: SseConfig::default(),
            websocket: WebSocketConfig::default(),
            limits: LimitsConfig::default(),
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(
            &[
                route("/api/v1/events/admin", AuthMode::Required, &["admin"], &[]),
                route(
                    "/tenants/{tenant_id}/events",
                    AuthMode::Required,
                    &[],
                    &[("tenant_id", "tenant_id")],
                ),
                route("/api/v1/events", AuthMode::Optional, &[], &[]),
                route("/api/v1/events", AuthMode::Off, &[], &[]),
                route("/reports", AuthMode::Optional, &["auditor"], &[]),
                route("/public", AuthMode::Off, &[], &[]),
            ],
            AuthMode::Required,
        )
    }

    /// The matched route's path, `None` for no route, `Err` for a refused path.
    fn matched(path: &str) -> Result<Option<String>, Rejection> {
        let table = table();
        let found = table.match_path(path)?;
        Ok(found.route.map(|r| r.path.clone()))
    }

    #[test]
    fn match_table() {
        let admin = Ok(Some("/api/v1/events/admin".to_owned()));
        let events = Ok(Some("/api/v1/events".to_owned()));
        let tenant = Ok(Some("/tenants/{tenant_id}/events".to_owned()));
        let bad = Err(Rejection::BadRequest);
        let cases = [
            ("/api/v1/events/admin", &admin),
            ("/api/v1/events/admin/", &admin),
            ("/api/v1/events/admin/x", &admin),
            ("/api/v1/events/%61dmin", &admin),
            ("/api/v1/events/administrator", &events),
            ("/api/v1/events/Admin", &events),
            ("/api/v1/events", &events),
            ("/api/v1/events/", &events),
            ("/tenants/acme/events", &tenant),
            ("/tenants/acme/events/live", &tenant),
            ("/tenants/acme", &Ok(None)),
            ("/tenants/acme/eventsx", &Ok(None)),
            ("/public/feed", &Ok(Some("/public".to_owned()))),
            ("/", &Ok(None)),
            ("/api/v1", &Ok(None)),
            // Bypass attempts: each would reach the admin handler on some upstream.
            ("//api/v1/events/admin", &bad),
            ("/api/v1//events/admin", &bad),
            ("/api/v1/events/admin//", &bad),
            ("//", &bad),
            ("/api/v1/events/./admin", &bad),
            ("/api/v1/events/x/../admin", &bad),
            ("/api/v1/events/%2e%2E/admin", &bad),
            ("/api/v1/events/.%2e/admin", &bad),
            ("/api/v1/events%2Fadmin", &bad),
            ("/api/v1/events%2fadmin", &bad),
            ("/api/v1/events\\admin", &bad),
            ("/api/v1/events%5cadmin", &bad),
            ("/api/v1/events/admin;jsessionid=1", &bad),
            ("/api/v1/events/admin%3b", &bad),
            ("/api/v1/events/admin%00", &bad),
            ("/api/v1/events/%252e%252e/admin", &bad),
            ("/api/v1/events/%ff", &bad),
            ("api/v1/events/admin", &bad),
            ("*", &bad),
            ("", &bad),
        ];
        for (path, expected) in cases {
            assert_eq!(&matched(path), expected, "path {path:?}");
        }
    }

    #[test]
    fn params_are_decoded_and_default_mode_applies() {
        let table = table();
        let tenant = table
            .match_path("/tenants/ac%20me/events")
            .expect("valid path");
        assert_eq!(tenant.params, [("tenant_id", "ac me".to_owned())]);
        assert_eq!(tenant.auth, AuthMode::Required);
        let events = table.match_path("/api/v1/events").expect("valid path");
        assert_eq!(
            events.auth,
            AuthMode::Optional,
            "first route in file order wins"
        );
        let unrouted = table.match_path("/other").expect("valid path");
        assert!(unrouted.route.is_none());
        assert_eq!(unrouted.auth, AuthMode::Required);
        let open = RouteTable::new(&[], AuthMode::Off)
            .match_path("/other")
            .map(|m| m.auth);
        assert_eq!(open, Ok(AuthMode::Off));
    }

    fn identity(roles: &[&str], claims: Value) -> Identity {
        let claims: Map<String, Value> = serde_json::from_value(claims).expect("claims object");
        Identity {
            key: crate::policy::auth::KeyId::of(b"test"),
            user: "alice".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            expires_at: 0,
            claims,
        }
    }

    #[test]
    fn authorize_table() {
        let table = table();
        let admin = identity(&["admin"], json!({"tenant_id": "acme"}));
        let reader = identity(&["reader"], json!({"tenant_id": "other"}));
        let numeric = identity(&[], json!({"tenant_id": 42}));
        let no_tenant = identity(&["admin"], json!({}));
        let unauthorized = Err(Rejection::Unauthorized);
        let forbidden = Err(Rejection::Forbidden);
        let cases = [
            ("/api/v1/events/admin", Some(&admin), Ok(())),
            ("/api/v1/events/admin/x", Some(&reader), forbidden),
            ("/api/v1/events/admin", None, unauthorized),
            ("/tenants/acme/events", Some(&admin), Ok(())),
            ("/tenants/acme/events", Some(&reader), forbidden),
            ("/tenants/acme/events", Some(&no_tenant), forbidden),
            ("/tenants/acme/events", None, unauthorized),
            ("/tenants/42/events", Some(&numeric), Ok(())),
            ("/api/v1/events/administrator", None, Ok(())),
            ("/api/v1/events", Some(&reader), Ok(())),
            ("/reports", None, unauthorized),
            ("/reports", Some(&reader), forbidden),
            ("/public", None, Ok(())),
            ("/elsewhere", None, unauthorized),
            ("/elsewhere", Some(&reader), Ok(())),
        ];
        for (path, who, expected) in cases {
            let matched = table.match_path(path).expect("valid path");
            assert_eq!(
                matched.authorize(who),
                expected,
                "{path} as {:?}",
                who.map(|i| &i.roles)
            );
        }
    }

    #[test]
    fn binding_to_a_missing_param_fails_closed() {
        let table = RouteTable::new(
            &[route(
                "/feed",
                AuthMode::Required,
                &[],
                &[("tenant_id", "tenant_id")],
            )],
            AuthMode::Off,
        );
        let matched = table.match_path("/feed").expect("valid path");
        let who = identity(&[], json!({"tenant_id": "acme"}));
        assert_eq!(matched.authorize(Some(&who)), Err(Rejection::Forbidden));
    }
}
