//! Responses the proxy writes itself, and the header rules every response passes through.
//!
//! Proxy-made answers are small fixed JSON bodies: a client learns the status and nothing
//! about internals, and no token or upstream detail can leak through an error page. Answers from
//! the app lose what only helps an attacker (the app's `Server` and `X-Powered-By`, a custom
//! reason phrase), and every answer says `Vary: Origin`: whether a request is served at all
//! depends on its `Origin`, so a cache must never hand one origin's answer to another.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Duration;

use super::RequestCtx;

use crate::policy::cors::{upstream_cors_header_names, CorsPolicy};
use crate::policy::Rejection;
use crate::telemetry::Outcome;

/// The body that replaces upstream 5xx bodies when `upstream.hide_error_bodies` is on.
pub const UPSTREAM_ERROR_BODY: &str = "{\"error\":\"upstream error\"}";

/// Writes a complete response with a fixed body. `extra` headers are added as given.
pub async fn send(
    session: &mut Session,
    status: u16,
    body: &'static str,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(5 + extra.len()))?;
    if !body.is_empty() {
        resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    }
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(header::VARY, "Origin")?;
    for (name, value) in extra {
        resp.append_header(name.clone(), value.clone())?;
    }
    // A HEAD answer has the length of the body it would have had, but no body (RFC 9110 §9.3.2).
    let body = if session.req_header().method == Method::HEAD {
        ""
    } else {
        body
    };
    session
        .write_response_header(Box::new(resp), body.is_empty())
        .await?;
    if !body.is_empty() {
        session
            .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
            .await?;
    }
    Ok(())
}

/// `Referrer-Policy: no-referrer` for every answer to a request whose URL carried a token
/// (`token_in_url`): the page the browser shows for that URL must not send it on in `Referer`.
pub fn no_referrer(token_in_url: bool) -> Option<(http::HeaderName, HeaderValue)> {
    token_in_url.then(|| {
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        )
    })
}

/// Writes the fixed answer for a policy rejection, with CORS headers when the origin is allowed
/// (so a browser app can read the 401 and refresh its token).
pub async fn reject(
    session: &mut Session,
    rejection: Rejection,
    cors: Option<(&CorsPolicy, &HeaderValue)>,
    retry_after: Option<Duration>,
    token_in_url: bool,
) -> pingora::Result<()> {
    let mut extra: Vec<(http::HeaderName, HeaderValue)> = rejection
        .extra_headers()
        .iter()
        .map(|(n, v)| {
            (
                http::HeaderName::from_static(n),
                HeaderValue::from_static(v),
            )
        })
        .collect();
    if let Some(after) = retry_after {
        extra.push((
            header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs(after)),
        ));
    }
    if let Some((policy, origin)) = cors {
        extra.extend(policy.response_headers(origin));
    }
    extra.extend(no_referrer(token_in_url));
    session.set_keepalive(None);
    send(session, rejection.status(), rejection.body(), &extra).await
}

/// `Retry-After` in whole seconds, rounded up: a client retrying after the floor would be
/// refused again.
fn retry_after_secs(after: Duration) -> u64 {
    (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1)
}

/// A refusal as the bytes of a whole response, for a connection that never became an HTTP
/// session (a full connection gate, a request head too large, too slow or malformed): the same
/// fixed body as every other refusal, and `Connection: close`, since the connection ends here.
pub fn raw_refusal(rejection: Rejection, retry_after: Option<Duration>) -> Vec<u8> {
    use std::fmt::Write;
    let status = http::StatusCode::from_u16(rejection.status())
        .map_or("", |s| s.canonical_reason().unwrap_or(""));
    let body = rejection.body();
    let mut head = format!(
        "HTTP/1.1 {} {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nvary: Origin\r\nconnection: close\r\n",
        rejection.status(),
        body.len()
    );
    // Writing into a String cannot fail.
    for (name, value) in rejection.extra_headers() {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if let Some(after) = retry_after {
        let _ = write!(head, "retry-after: {}\r\n", retry_after_secs(after));
    }
    head.push_str("\r\n");
    head.push_str(body);
    head.into_bytes()
}

/// What decides the headers of an answer from the app.
pub struct HeaderRules<'a> {
    pub cors: &'a CorsPolicy,
    /// The request's Origin when the CORS policy allowed it.
    pub origin: Option<&'a HeaderValue>,
    /// `upstream.hide_headers`.
    pub hide: &'a [HeaderName],
    /// The request's URL carried a token: the answer gets [`no_referrer`].
    pub token_in_url: bool,
}

/// Applies streamguard's header rules to a response from the app on its way to the client: the
/// app's CORS headers are removed (a legacy wildcard never leaks out) and the proxy's own added
/// for an allowed origin; `upstream.hide_headers` are removed; the reason phrase is the standard
/// one (an app's can carry anything, a stack trace included); `Vary` gains `Origin`; and
/// [`no_referrer`] is set when the URL carried a token.
pub fn finalize_headers(resp: &mut ResponseHeader, rules: &HeaderRules<'_>) -> pingora::Result<()> {
    for name in upstream_cors_header_names(&resp.headers) {
        resp.remove_header(&name);
    }
    for name in rules.hide {
        resp.remove_header(name);
    }
    resp.set_reason_phrase(None)?;
    if let Some(origin) = rules.origin {
        for (name, value) in rules.cors.response_headers(origin) {
            resp.insert_header(name, value)?;
        }
    }
    if let Some((name, value)) = no_referrer(rules.token_in_url) {
        // The app's own policy may be laxer: ours replaces it.
        resp.insert_header(name, value)?;
    }
    vary_on_origin(resp)
}

/// Adds `Origin` to `Vary`, keeping the app's own entries: caches need them as much as ours.
fn vary_on_origin(resp: &mut ResponseHeader) -> pingora::Result<()> {
    let listed = resp.headers.get_all(header::VARY).iter().any(|value| {
        value.as_bytes().split(|b| *b == b',').any(|entry| {
            let entry = entry.trim_ascii();
            entry == b"*" || entry.eq_ignore_ascii_case(b"origin")
        })
    });
    if !listed {
        resp.append_header(header::VARY, "Origin")?;
    }
    Ok(())
}

/// The answer that replaces an app's 5xx when `upstream.hide_error_bodies` is on: the app's
/// status with its standard reason, the generic body, and none of the app's headers (they can
/// carry as much as the body: `X-Debug: Traceback ...`) except `Retry-After`, which only tells
/// the client when to come back.
pub async fn hidden_error(
    session: &mut Session,
    status: u16,
    retry_after: Option<HeaderValue>,
    cors: Option<(&CorsPolicy, &HeaderValue)>,
    token_in_url: bool,
) -> pingora::Result<()> {
    let mut extra: Vec<(HeaderName, HeaderValue)> = Vec::new();
    if let Some(after) = retry_after {
        extra.push((header::RETRY_AFTER, after));
    }
    extra.extend(no_referrer(token_in_url));
    if let Some((policy, origin)) = cors {
        extra.extend(policy.response_headers(origin));
    }
    session.set_keepalive(None);
    send(session, status, UPSTREAM_ERROR_BODY, &extra).await
}

/// Makes an event-stream response safe to stream: no length, no caching, no proxy buffering.
pub fn event_stream_headers(resp: &mut ResponseHeader) -> pingora::Result<()> {
    resp.remove_header(&header::CONTENT_LENGTH);
    resp.remove_header(&header::CONTENT_ENCODING);
    resp.insert_header(header::CACHE_CONTROL, "no-cache")?;
    resp.insert_header("x-accel-buffering", "no")?;
    Ok(())
}

/// Writes a refusal and records it for the access log and metrics.
pub async fn refuse(
    session: &mut Session,
    ctx: &mut RequestCtx,
    rejection: Rejection,
    retry_after: Option<std::time::Duration>,
    detail: &str,
) -> pingora::Result<bool> {
    let policy = Arc::clone(&ctx.policy);
    tracing::debug!(reason = rejection.metric_label(), detail, "request refused");
    ctx.rejection = Some(rejection);
    ctx.outcome = Outcome::Rejected;
    ctx.status = rejection.status();
    let cors = ctx.cors_origin.as_ref().map(|o| (&policy.cors, o));
    reject(session, rejection, cors, retry_after, ctx.token_in_url).await?;
    Ok(true)
}

/// Writes the fixed answer for an upstream that could not be reached or failed mid-exchange:
/// counted as a failed request, not as a policy refusal.
pub async fn fail(
    session: &mut Session,
    ctx: &mut RequestCtx,
    rejection: Rejection,
) -> pingora::Result<()> {
    let policy = Arc::clone(&ctx.policy);
    ctx.outcome = Outcome::Failed;
    ctx.status = rejection.status();
    let cors = ctx.cors_origin.as_ref().map(|o| (&policy.cors, o));
    reject(session, rejection, cors, None, ctx.token_in_url).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw answer parses as one whole response: status, fixed body, framing, and only the
    /// headers the rejection calls for.
    #[test]
    fn a_raw_refusal_is_one_complete_response() {
        let cases = [
            (Rejection::HeadTooLarge, None, None),
            (
                Rejection::ProxyConnections,
                Some(Duration::from_millis(2_100)),
                Some("3"),
            ),
            (
                Rejection::AddressConnections,
                Some(Duration::from_millis(10)),
                Some("1"),
            ),
            (Rejection::MethodNotProxied, None, None),
        ];
        for (rejection, retry_after, expected_retry) in cases {
            let raw = raw_refusal(rejection, retry_after);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(len)) = resp.parse(&raw) else {
                panic!(
                    "{rejection:?}: not a response: {}",
                    String::from_utf8_lossy(&raw)
                );
            };
            assert_eq!(resp.code, Some(rejection.status()), "{rejection:?}");
            assert_eq!(&raw[len..], rejection.body().as_bytes(), "{rejection:?}");
            let header = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let length = rejection.body().len().to_string();
            assert_eq!(header("content-length").as_deref(), Some(length.as_str()));
            assert_eq!(header("content-type").as_deref(), Some("application/json"));
            assert_eq!(header("connection").as_deref(), Some("close"));
            assert_eq!(
                header("retry-after").as_deref(),
                expected_retry,
                "{rejection:?}"
            );
            assert_eq!(
                header("allow").is_some(),
                rejection == Rejection::MethodNotProxied
            );
        }
    }
}
