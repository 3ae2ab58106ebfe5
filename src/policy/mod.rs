//! Pure request decisions (CORS, authentication, routing, limits).
//!
//! Everything under `policy` is a function of its inputs: no Pingora types, no I/O, no clock
//! reads and no globals. That keeps the security rules unit-testable with plain values and
//! leaves the proxy glue to translate a decision into a response.

pub mod auth;
pub mod connections;
pub mod cors;
pub mod headers;
pub mod limits;
pub mod routes;
pub mod target;

/// Why a request is refused. The proxy turns this into a small, fixed response so that no
/// detail about the failure (token contents, matched rule, upstream error) reaches the client;
/// the detail goes to the security log instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// A cross-origin request from an origin outside `cors.allowed_origins`.
    CorsForbidden,
    /// A CORS preflight asking for an origin, method or header we do not allow.
    PreflightForbidden,
    /// No valid token where the route requires one.
    Unauthorized,
    /// A valid token that lacks the route's roles or claim bindings.
    Forbidden,
    /// A malformed request, such as a path that tries to escape route matching.
    BadRequest,
    /// The user already holds `max_streams_per_user` streams.
    UserStreams,
    /// The proxy already holds `max_streams` streams.
    GlobalStreams,
    /// The user exceeded `connects_per_user`.
    ConnectRate,
    /// The client address exceeded `requests_per_ip`.
    RequestRate,
    /// The upstream could not be reached.
    UpstreamDown,
    /// The upstream failed mid-request or answered with something unusable.
    UpstreamError,
    /// The upstream sent no response head within `upstream.response_timeout`.
    UpstreamTimeout,
    /// A method the endpoint does not serve.
    MethodNotAllowed,
    /// An `Upgrade` request for anything but WebSocket.
    UpgradeNotWebSocket,
    /// A WebSocket upgrade with a body (`Content-Length` above 0, or `Transfer-Encoding`): an
    /// app reads what follows the head as frames, which would pass none of the frame checks.
    UpgradeWithBody,
    /// The upstream answered an event stream to a request that did not ask for one
    /// (`Accept: text/event-stream`), so no stream protection would apply (`sse.require_accept`).
    UnannouncedStream,
    /// The shared limit store cannot answer and `limits.store.on_error = "closed"`.
    StoreUnavailable,
    /// A request head larger than `listen.max_request_head`.
    HeadTooLarge,
    /// A request head not complete within `listen.request_head_timeout`.
    HeadTimeout,
    /// `CONNECT`, `TRACE` or `TRACK`: a tunnel the proxy would not inspect, or an echo of the
    /// request (credentials included) that no app behind it needs.
    MethodNotProxied,
    /// The proxy already holds `listen.max_connections` client connections.
    ProxyConnections,
    /// The client's address already holds `listen.max_connections_per_ip` connections.
    AddressConnections,
}

impl Rejection {
    pub fn status(self) -> u16 {
        match self {
            Rejection::BadRequest
            | Rejection::UpgradeNotWebSocket
            | Rejection::UpgradeWithBody
            | Rejection::UnannouncedStream => 400,
            Rejection::Unauthorized => 401,
            Rejection::CorsForbidden | Rejection::PreflightForbidden | Rejection::Forbidden => 403,
            Rejection::MethodNotAllowed | Rejection::MethodNotProxied => 405,
            Rejection::HeadTimeout => 408,
            Rejection::UserStreams
            | Rejection::ConnectRate
            | Rejection::RequestRate
            | Rejection::AddressConnections => 429,
            Rejection::HeadTooLarge => 431,
            Rejection::UpstreamDown | Rejection::UpstreamError => 502,
            Rejection::UpstreamTimeout => 504,
            // The whole proxy is full, or cannot count: about the server, not the client.
            Rejection::GlobalStreams
            | Rejection::ProxyConnections
            | Rejection::StoreUnavailable => 503,
        }
    }

    /// The JSON response body (served as `application/json`).
    pub fn body(self) -> &'static str {
        match self {
            Rejection::CorsForbidden | Rejection::PreflightForbidden => {
                r#"{"error":"origin not allowed"}"#
            }
            Rejection::Unauthorized => r#"{"error":"unauthorized"}"#,
            Rejection::Forbidden => r#"{"error":"forbidden"}"#,
            Rejection::BadRequest => r#"{"error":"bad request"}"#,
            Rejection::UserStreams | Rejection::GlobalStreams => r#"{"error":"too many streams"}"#,
            Rejection::ConnectRate
            | Rejection::ProxyConnections
            | Rejection::AddressConnections => r#"{"error":"too many connections"}"#,
            Rejection::RequestRate => r#"{"error":"too many requests"}"#,
            Rejection::UpstreamDown | Rejection::UpstreamError => r#"{"error":"bad gateway"}"#,
            Rejection::UpstreamTimeout => r#"{"error":"gateway timeout"}"#,
            Rejection::MethodNotAllowed | Rejection::MethodNotProxied => {
                r#"{"error":"method not allowed"}"#
            }
            Rejection::HeadTooLarge => r#"{"error":"request head too large"}"#,
            Rejection::HeadTimeout => r#"{"error":"request head timeout"}"#,
            Rejection::UpgradeNotWebSocket => r#"{"error":"unsupported upgrade"}"#,
            Rejection::UpgradeWithBody => r#"{"error":"websocket upgrades carry no body"}"#,
            Rejection::UnannouncedStream => {
                r#"{"error":"event streams need Accept: text/event-stream"}"#
            }
            Rejection::StoreUnavailable => r#"{"error":"temporarily unavailable"}"#,
        }
    }

    /// The `reason` label of the rejection counter.
    pub fn metric_label(self) -> &'static str {
        match self {
            Rejection::CorsForbidden | Rejection::PreflightForbidden => "cors",
            Rejection::Unauthorized => "unauthenticated",
            Rejection::Forbidden => "forbidden",
            Rejection::BadRequest => "bad_request",
            Rejection::UserStreams => "user_streams",
            Rejection::GlobalStreams => "global_streams",
            Rejection::ConnectRate => "connect_rate",
            Rejection::RequestRate => "request_rate",
            Rejection::UpstreamDown => "upstream_down",
            Rejection::UpstreamError => "upstream_error",
            Rejection::UpstreamTimeout => "upstream_timeout",
            Rejection::MethodNotAllowed | Rejection::MethodNotProxied => "method_not_allowed",
            Rejection::HeadTooLarge => "head_too_large",
            Rejection::HeadTimeout => "head_timeout",
            Rejection::ProxyConnections => "global_connections",
            Rejection::AddressConnections => "ip_connections",
            Rejection::UpgradeNotWebSocket => "bad_upgrade",
            Rejection::UpgradeWithBody => "upgrade_body",
            Rejection::UnannouncedStream => "unannounced_stream",
            Rejection::StoreUnavailable => "store_unavailable",
        }
    }

    /// Headers every response for this rejection carries. Values that depend on state, such
    /// as `Retry-After`, are the caller's to add.
    pub fn extra_headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // RFC 6750 §3: a 401 for a bearer-protected resource names the scheme.
            Rejection::Unauthorized => &[("www-authenticate", "Bearer")],
            // RFC 9110 §15.5.6: a 405 lists what the resource does allow; the proxy forwards
            // every method but these.
            Rejection::MethodNotProxied => {
                &[("allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")]
            }
            _ => &[],
        }
    }
}

impl From<connections::ConnectionRefusal> for Rejection {
    fn from(refusal: connections::ConnectionRefusal) -> Self {
        match refusal {
            connections::ConnectionRefusal::Full => Rejection::ProxyConnections,
            connections::ConnectionRefusal::AddressFull => Rejection::AddressConnections,
        }
    }
}

impl From<limits::LimitRejection> for Rejection {
    fn from(reason: limits::LimitRejection) -> Self {
        match reason {
            limits::LimitRejection::UserStreams => Rejection::UserStreams,
            limits::LimitRejection::GlobalStreams => Rejection::GlobalStreams,
            limits::LimitRejection::ConnectRate => Rejection::ConnectRate,
            limits::LimitRejection::RequestRate => Rejection::RequestRate,
            limits::LimitRejection::StoreUnavailable => Rejection::StoreUnavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rejection;

    const ALL: [Rejection; 22] = [
        Rejection::CorsForbidden,
        Rejection::PreflightForbidden,
        Rejection::Unauthorized,
        Rejection::Forbidden,
        Rejection::BadRequest,
        Rejection::UserStreams,
        Rejection::GlobalStreams,
        Rejection::ConnectRate,
        Rejection::RequestRate,
        Rejection::UpstreamDown,
        Rejection::UpstreamError,
        Rejection::UpstreamTimeout,
        Rejection::MethodNotAllowed,
        Rejection::UpgradeNotWebSocket,
        Rejection::UpgradeWithBody,
        Rejection::UnannouncedStream,
        Rejection::StoreUnavailable,
        Rejection::HeadTooLarge,
        Rejection::HeadTimeout,
        Rejection::MethodNotProxied,
        Rejection::ProxyConnections,
        Rejection::AddressConnections,
    ];

    #[test]
    fn every_body_is_an_error_object() {
        for rejection in ALL {
            let body: serde_json::Value = serde_json::from_str(rejection.body())
                .unwrap_or_else(|e| panic!("{rejection:?} body is not JSON: {e}"));
            let message = body.get("error").and_then(|m| m.as_str());
            assert!(
                message.is_some_and(|m| !m.is_empty()),
                "{rejection:?}: {body}"
            );
            assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{rejection:?}");
        }
    }

    #[test]
    fn every_status_is_an_error_status() {
        for rejection in ALL {
            assert!((400..600).contains(&rejection.status()), "{rejection:?}");
        }
    }

    #[test]
    fn metric_labels_are_prometheus_safe() {
        for rejection in ALL {
            let label = rejection.metric_label();
            assert!(!label.is_empty());
            assert!(
                label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
        }
    }

    #[test]
    fn status_table() {
        let expected = [
            (Rejection::CorsForbidden, 403),
            (Rejection::Unauthorized, 401),
            (Rejection::Forbidden, 403),
            (Rejection::BadRequest, 400),
            (Rejection::UserStreams, 429),
            (Rejection::GlobalStreams, 503),
            (Rejection::StoreUnavailable, 503),
            (Rejection::RequestRate, 429),
            (Rejection::UpstreamDown, 502),
            (Rejection::UpstreamTimeout, 504),
            (Rejection::MethodNotAllowed, 405),
            (Rejection::MethodNotProxied, 405),
            (Rejection::HeadTimeout, 408),
            (Rejection::HeadTooLarge, 431),
            (Rejection::AddressConnections, 429),
            (Rejection::ProxyConnections, 503),
        ];
        for (rejection, status) in expected {
            assert_eq!(rejection.status(), status, "{rejection:?}");
        }
    }

    #[test]
    fn only_unauthorized_challenges() {
        for rejection in ALL {
            let challenges = rejection
                .extra_headers()
                .iter()
                .any(|(name, value)| *name == "www-authenticate" && *value == "Bearer");
            assert_eq!(
                challenges,
                rejection == Rejection::Unauthorized,
                "{rejection:?}"
            );
        }
    }
}
