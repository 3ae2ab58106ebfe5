//! Responses the proxy writes itself, and the header rules every response passes through.
//!
//! Proxy-made answers are small fixed JSON bodies: a client learns the status and nothing
//! about internals, and no token or upstream detail can leak through an error page.

use bytes::Bytes;
use http::{header, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::time::Duration;

use crate::policy::cors::{upstream_cors_header_names, CorsPolicy};
use crate::policy::Rejection;

/// The body that replaces upstream 5xx bodies when `upstream.hide_error_bodies` is on.
pub const UPSTREAM_ERROR_BODY: &str = "{\"error\":\"upstream error\"}";

/// Writes a complete response with a fixed body. `extra` headers are added as given.
pub async fn send(
    session: &mut Session,
    status: u16,
    body: &'static str,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    if !body.is_empty() {
        resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    }
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    for (name, value) in extra {
        resp.append_header(name.clone(), value.clone())?;
    }
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
        // Round up: a client retrying after the floor would be refused again.
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        extra.push((header::RETRY_AFTER, HeaderValue::from(secs.max(1))));
    }
    if let Some((policy, origin)) = cors {
        extra.extend(policy.response_headers(origin));
    }
    extra.extend(no_referrer(token_in_url));
    session.set_keepalive(None);
    send(session, rejection.status(), rejection.body(), &extra).await
}

/// Applies streamguard's header rules to a response on its way to the client: CORS headers
/// the upstream set are removed (a legacy wildcard never leaks out), the proxy's own are
/// added for an allowed origin, and so is [`no_referrer`] when the URL carried a token.
pub fn finalize_headers(
    resp: &mut ResponseHeader,
    cors: &CorsPolicy,
    origin: Option<&HeaderValue>,
    token_in_url: bool,
) -> pingora::Result<()> {
    for name in upstream_cors_header_names(&resp.headers) {
        resp.remove_header(&name);
    }
    if let Some(origin) = origin {
        for (name, value) in cors.response_headers(origin) {
            // Keep the upstream's own Vary entries: caches need them as much as ours.
            if name == header::VARY && resp.headers.contains_key(header::VARY) {
                resp.append_header(name, value)?;
            } else {
                resp.insert_header(name, value)?;
            }
        }
    }
    if let Some((name, value)) = no_referrer(token_in_url) {
        // The app's own policy may be laxer: ours replaces it.
        resp.insert_header(name, value)?;
    }
    Ok(())
}

/// Makes an event-stream response safe to stream: no length, no caching, no proxy buffering.
pub fn event_stream_headers(resp: &mut ResponseHeader) -> pingora::Result<()> {
    resp.remove_header(&header::CONTENT_LENGTH);
    resp.remove_header(&header::CONTENT_ENCODING);
    resp.insert_header(header::CACHE_CONTROL, "no-cache")?;
    resp.insert_header("x-accel-buffering", "no")?;
    Ok(())
}

/// Swaps a 5xx response's head for the generic error body's (the body itself is replaced in
/// `response_body_filter` or by the stream relay).
pub fn hide_error_head(resp: &mut ResponseHeader) -> pingora::Result<()> {
    resp.remove_header(&header::TRANSFER_ENCODING);
    resp.remove_header(&header::CONTENT_ENCODING);
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(
        header::CONTENT_LENGTH,
        UPSTREAM_ERROR_BODY.len().to_string(),
    )?;
    Ok(())
}
