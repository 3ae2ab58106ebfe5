//! The request pipeline: request rate, CORS, session cookie exchange, route, token, roles and
//! claims, then the rewrite for the upstream. Each step asks a pure policy and acts on its
//! answer; the first refusal ends the request with a fixed body and a security log line.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{header, HeaderValue, Method, Uri};
use pingora::proxy::Session;
use pingora::Result;

use super::respond;
use super::stream;
use super::Early;
use super::{RequestCtx, State};
use crate::config::AuthMode;
use crate::policy::auth;
use crate::policy::cors::CorsDecision;
use crate::policy::headers::{self, Edit};
use crate::policy::limits::{client_ip, forwarded_for};
use crate::policy::target::{self, Target};
use crate::policy::Rejection;
use crate::telemetry::{Outcome, StreamKind, SECURITY_TARGET};

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Turns the request-target into the one value everything after derives from (see
/// `policy::target`): absolute-form becomes origin-form with its authority as `Host`, and the URI
/// is set from the parsed path so the bytes written upstream are the bytes routed on. (`Host`
/// itself was judged with the head, `server::head`.) `Err` is the answer the request gets
/// instead (a refusal, or `OPTIONS *`).
pub fn normalize_target(session: &mut Session) -> std::result::Result<(), Early> {
    let req = session.req_header();
    let parsed = target::parse(&req.method, req.raw_path()).map_err(Early::BadTarget)?;
    let Target::Path {
        path_and_query,
        authority,
    } = parsed
    else {
        return Err(Early::Asterisk);
    };
    let req = session.req_header_mut();
    if let Some(authority) = authority {
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Early::BadTarget(target::TargetError::Authority))?;
        req.insert_header(header::HOST, host)
            .map_err(|_| Early::BadTarget(target::TargetError::Authority))?;
    }
    if !target::is_consistent(req.raw_path(), req.uri.path_and_query()) {
        req.set_uri(Uri::from(path_and_query));
    }
    Ok(())
}

/// Finds the request's token and removes every token parameter from the URL (and the token from
/// `Sec-WebSocket-Protocol`) before any later phase, log line or upstream can see it.
pub fn lift_token(session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    let policy = Arc::clone(&ctx.policy);
    let cfg = &policy.config.auth;
    let req = session.req_header();
    ctx.token = auth::find_token(&req.headers, &req.uri, cfg);

    let stripped = req
        .uri
        .path_and_query()
        .and_then(|pq| auth::strip_token_params(pq.as_str(), &auth::token_params(cfg)));
    ctx.token_in_url = stripped.is_some();
    if let Some(clean) = stripped {
        // The stripped string is a subset of a URI that already parsed.
        let uri = Uri::try_from(clean).map_err(|_| {
            pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "request target")
        })?;
        session.req_header_mut().set_uri(uri);
    }

    if let Some(prefix) = cfg.websocket_protocol_prefix.as_deref() {
        let offered = session
            .req_header()
            .headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(offered) = offered {
            let req = session.req_header_mut();
            match auth::strip_ws_protocol(&offered, prefix) {
                Some(rest) if rest != offered => {
                    req.insert_header(header::SEC_WEBSOCKET_PROTOCOL, rest)?;
                }
                Some(_) => {}
                None => {
                    req.remove_header(&header::SEC_WEBSOCKET_PROTOCOL);
                }
            }
        }
    }
    Ok(())
}

/// Runs the pipeline. `Ok(true)`: the response was written here (refusal, preflight, session
/// exchange, or a whole relayed stream); `Ok(false)`: Pingora proxies the request as usual.
pub async fn run(state: &Arc<State>, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let policy = Arc::clone(&ctx.policy);
    match ctx.early.take() {
        None => {}
        Some(Early::Asterisk) => {
            // `OPTIONS *` asks about the server, not a resource: the proxy answers it, so no
            // target that skipped the route check ever reaches the app.
            ctx.outcome = Outcome::Local;
            ctx.status = 204;
            respond::send(session, 204, "", &[]).await?;
            return Ok(true);
        }
        Some(Early::BadTarget(e)) => {
            security(session, "bad_request", e.reason(), None);
            return refuse(session, ctx, Rejection::BadRequest, None, e.reason()).await;
        }
    }
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    ctx.peer = Some(peer);
    let xff = forwarded_for(&session.req_header().headers);
    let client = client_ip(peer, xff.as_deref(), &policy.config.limits.trusted_proxies);

    if let Err((why, after)) =
        state
            .limiter
            .check_request(client, &policy.config.limits, Instant::now())
    {
        return refuse(
            session,
            ctx,
            Rejection::from(why),
            Some(after),
            "request rate",
        )
        .await;
    }

    // What kind of request this is depends on `Connection` and `Upgrade`, which the header
    // hygiene removes as hop-by-hop: decided first, acted on after the policy checks.
    let kind = stream_kind(session);
    let underscores = policy.config.listen.underscores_in_headers;
    match headers::inspect(&session.req_header().headers, underscores) {
        Ok(remove) => {
            let req = session.req_header_mut();
            for name in remove {
                req.remove_header(&name);
            }
        }
        Err(e) => {
            security(session, "bad_request", e.reason(), None);
            return refuse(session, ctx, Rejection::BadRequest, None, e.reason()).await;
        }
    }

    let req = session.req_header();
    match policy.cors.check(&req.method, &req.headers) {
        CorsDecision::NoOrigin => {}
        CorsDecision::Allowed { origin } => ctx.cors_origin = Some(origin),
        CorsDecision::Preflight { mut headers } => {
            ctx.outcome = Outcome::Local;
            ctx.status = 204;
            headers.extend(respond::no_referrer(ctx.token_in_url));
            respond::send(session, 204, "", &headers).await?;
            return Ok(true);
        }
        CorsDecision::Rejected { rejection, reason } => {
            let origin = header_str(session, "origin").unwrap_or("-").to_owned();
            security(session, "cors_rejected", reason, Some(&origin));
            return refuse(session, ctx, rejection, None, reason).await;
        }
    }

    if session.req_header().uri.path() == policy.config.auth.session.path {
        return session_exchange(session, ctx).await;
    }

    let path = session.req_header().uri.path().to_owned();
    let matched = match policy.routes.match_path(&path) {
        Ok(m) => m,
        Err(rejection) => return refuse(session, ctx, rejection, None, "bad path").await,
    };
    ctx.route = matched.index;

    if matched.auth != AuthMode::Off {
        // A credential that is present is verified, on optional routes too: only a request
        // without one goes on anonymously.
        let verified = match (&ctx.token, &policy.verifier) {
            (Err(e), _) => Err(e.clone()),
            (Ok(Some(found)), Some(verifier)) => {
                verifier.verify(&found.token, now_unix()).map(Some)
            }
            _ => Ok(None),
        };
        match verified {
            Ok(identity) => ctx.identity = identity,
            Err(e) => {
                security(session, "auth_failed", e.reason(), None);
                return refuse(session, ctx, Rejection::Unauthorized, None, e.reason()).await;
            }
        }
    }
    if let Err(rejection) = matched.authorize(ctx.identity.as_ref()) {
        let (event, reason) = if rejection == Rejection::Unauthorized {
            ("auth_failed", "missing_token")
        } else {
            ("forbidden", "role_or_claim")
        };
        security(session, event, reason, None);
        return refuse(session, ctx, rejection, None, reason).await;
    }

    let kind = match kind {
        Ok(kind) => kind,
        Err(rejection) => return refuse(session, ctx, rejection, None, "bad upgrade").await,
    };
    match kind {
        Some(kind) => stream::serve(state, session, ctx, kind, client).await,
        // Pingora proxies it; `prepare_upstream` edits the request it sends.
        None => Ok(false),
    }
}

/// Answers a request the upstream answered with an event stream although the request did not
/// ask for one: such a stream would bypass the relays, and with them the per-user stream caps,
/// heartbeats, stale checks and the close at token expiry. Logged as a security event, since
/// leaving out the `Accept` header is also how a client would try to get past those caps.
pub async fn refuse_unannounced_stream(session: &mut Session, ctx: &mut RequestCtx) {
    security(session, "unannounced_stream", "no_accept_header", None);
    // The client may be gone too; the refusal is recorded either way.
    let _ = refuse(
        session,
        ctx,
        Rejection::UnannouncedStream,
        None,
        UNANNOUNCED_STREAM,
    )
    .await;
}

/// Why an unannounced stream was refused, for the error and the debug line.
pub const UNANNOUNCED_STREAM: &str = "event stream without Accept: text/event-stream";

/// Writes a refusal and records it for the access log and metrics.
pub async fn refuse(
    session: &mut Session,
    ctx: &mut RequestCtx,
    rejection: Rejection,
    retry_after: Option<std::time::Duration>,
    detail: &str,
) -> Result<bool> {
    let policy = Arc::clone(&ctx.policy);
    tracing::debug!(reason = rejection.metric_label(), detail, "request refused");
    ctx.rejection = Some(rejection);
    ctx.outcome = Outcome::Rejected;
    ctx.status = rejection.status();
    let cors = ctx.cors_origin.as_ref().map(|o| (&policy.cors, o));
    respond::reject(session, rejection, cors, retry_after, ctx.token_in_url).await?;
    Ok(true)
}

/// Writes the fixed answer for an upstream that could not be reached or failed mid-exchange:
/// counted as a failed request, not as a policy refusal.
pub async fn fail(session: &mut Session, ctx: &mut RequestCtx, rejection: Rejection) -> Result<()> {
    let policy = Arc::clone(&ctx.policy);
    ctx.outcome = Outcome::Failed;
    ctx.status = rejection.status();
    let cors = ctx.cors_origin.as_ref().map(|o| (&policy.cors, o));
    respond::reject(session, rejection, cors, None, ctx.token_in_url).await
}

/// One security-log line. Carries the reason and the token-free path, never a token.
fn security(session: &Session, event: &'static str, reason: &str, origin: Option<&str>) {
    let req = session.req_header();
    tracing::warn!(
        target: SECURITY_TARGET,
        security = true,
        event,
        reason,
        origin = origin.unwrap_or("-"),
        method = %req.method,
        path = req.uri.path(),
        client = %session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
        "security event"
    );
}

fn header_str<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
}

/// Is this an SSE request, a WebSocket upgrade, or neither? `Err` for an `Upgrade` that is not
/// a valid RFC 6455 handshake (Pingora would tunnel any upgrade, we only relay WebSockets), and
/// for an upgrade with a body: an app reads whatever follows the head as its first frames, and
/// those would pass none of the relay's frame checks.
fn stream_kind(session: &Session) -> std::result::Result<Option<StreamKind>, Rejection> {
    let req = session.req_header();
    let headers = &req.headers;
    if let Some(upgrade) = headers.get(header::UPGRADE) {
        let valid = upgrade.as_bytes().eq_ignore_ascii_case(b"websocket")
            && req.method == Method::GET
            && req.version == http::Version::HTTP_11
            && header_has_token(headers.get(header::CONNECTION), "upgrade")
            && headers
                .get(header::SEC_WEBSOCKET_VERSION)
                .map(|v| v.as_bytes())
                == Some(b"13")
            && headers
                .get(header::SEC_WEBSOCKET_KEY)
                .is_some_and(|k| valid_ws_key(k.as_bytes()));
        if !valid {
            return Err(Rejection::UpgradeNotWebSocket);
        }
        let body = headers.contains_key(header::TRANSFER_ENCODING)
            || headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .any(|len| len.as_bytes().trim_ascii() != b"0");
        if body {
            return Err(Rejection::UpgradeWithBody);
        }
        return Ok(Some(StreamKind::WebSocket));
    }
    let wants_sse = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| header_has_token(Some(v), "text/event-stream"));
    Ok(wants_sse.then_some(StreamKind::Sse))
}

/// True when a comma-separated header value lists `token` (case-insensitive, `;params` ignored).
fn header_has_token(value: Option<&HeaderValue>, token: &str) -> bool {
    value.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',').any(|part| {
            part.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(token)
        })
    })
}

/// RFC 6455 4.1: the key is 16 random bytes, base64-encoded: 24 characters ending in `==`.
fn valid_ws_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Turns the checked client request into the request sent upstream, the same way for plain
/// requests (Pingora's copy, from `upstream_request_filter`) and streams: the token goes where
/// `auth.forward_as` says, then the forwarding and identity headers are set. These come last, on
/// a request whose hop-by-hop headers are already gone (`headers::inspect`), so no `Connection`
/// option can remove them again. `websocket` puts back the two headers an upgrade needs.
pub fn prepare_upstream(
    req: &mut pingora::http::RequestHeader,
    ctx: &RequestCtx,
    websocket: bool,
) -> Result<()> {
    // HTTP/2 clients may split `cookie`; the app gets one field (and the token lifting below
    // edits one).
    super::h2_request::join_cookies(req)?;
    let policy = Arc::clone(&ctx.policy);
    let verified = match (&ctx.identity, &ctx.token) {
        (Some(identity), Ok(Some(found))) => Some((identity, found.token.as_str())),
        _ => None,
    };
    let target = req
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let plan = auth::forward_plan(
        &policy.config.auth,
        &req.headers,
        target,
        verified.map(|v| v.1),
    );
    apply_edit(req, header::AUTHORIZATION, plan.authorization)?;
    apply_edit(req, header::COOKIE, plan.cookie)?;
    apply_edit(req, header::SEC_WEBSOCKET_PROTOCOL, plan.websocket_protocol)?;
    apply_edit(req, header::REFERER, plan.referer)?;
    if let Some(target) = plan.path_and_query {
        let uri = Uri::try_from(target).map_err(|_| {
            pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "rewritten target")
        })?;
        req.set_uri(uri);
    }
    let origin = headers::Origin {
        peer: ctx.peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        trusted_proxies: &policy.config.limits.trusted_proxies,
        tls: policy.config.listen.tls.is_some(),
    };
    let identity = verified.map(|(identity, _)| (identity.user.as_str(), &identity.roles[..]));
    for edit in headers::upstream_edits(&req.headers, origin, identity) {
        match edit {
            Edit::Remove(name) => {
                req.remove_header(&name);
            }
            Edit::Set(name, value) => {
                req.insert_header(name, value)?;
            }
        }
    }
    if websocket {
        req.insert_header(header::CONNECTION, "Upgrade")?;
        req.insert_header(header::UPGRADE, "websocket")?;
    }
    if !target::is_consistent(req.raw_path(), req.uri.path_and_query()) {
        // Every edit above goes through the parsed URI; a target that no longer matches it
        // would mean the app is sent something the policy did not check.
        return pingora::Error::e_explain(
            pingora::ErrorType::InternalError,
            "request-target differs from the checked URI",
        );
    }
    Ok(())
}

fn apply_edit(
    req: &mut pingora::http::RequestHeader,
    name: http::HeaderName,
    edit: auth::HeaderEdit,
) -> Result<()> {
    match edit {
        auth::HeaderEdit::Keep => {}
        auth::HeaderEdit::Remove => {
            req.remove_header(&name);
        }
        auth::HeaderEdit::Set(value) => {
            req.insert_header(name, value)?;
        }
    }
    Ok(())
}

/// `POST auth.session.path` with a valid bearer token sets the httpOnly cookie; `DELETE`
/// clears it. Browsers then open streams with no token in any URL.
async fn session_exchange(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let policy = Arc::clone(&ctx.policy);
    let cfg = &policy.config.auth;
    let method = session.req_header().method.clone();
    let cookie = if method == Method::DELETE {
        auth::session_clear_cookie(cfg)
    } else if method == Method::POST {
        let verified = match (&ctx.token, &policy.verifier) {
            (Err(e), _) => Err(Some(e.clone())),
            (Ok(Some(found)), Some(verifier)) if found.source == auth::TokenSource::Header => {
                verifier
                    .verify(&found.token, now_unix())
                    .map(|id| (found.token.clone(), id))
                    .map_err(Some)
            }
            _ => Err(None),
        };
        match verified {
            Ok((token, identity)) => {
                let cookie = auth::session_set_cookie(cfg, &token, identity.expires_at, now_unix());
                ctx.identity = Some(identity);
                cookie
            }
            Err(e) => {
                let reason = e.as_ref().map_or("missing_token", |e| e.reason());
                security(session, "auth_failed", reason, None);
                return refuse(session, ctx, Rejection::Unauthorized, None, reason).await;
            }
        }
    } else {
        return refuse(
            session,
            ctx,
            Rejection::MethodNotAllowed,
            None,
            "session method",
        )
        .await;
    };
    ctx.outcome = Outcome::Local;
    ctx.status = 204;
    let mut extra = vec![(
        header::SET_COOKIE,
        HeaderValue::try_from(cookie).map_err(|_| {
            pingora::Error::explain(pingora::ErrorType::InternalError, "session cookie")
        })?,
    )];
    if let Some(origin) = &ctx.cors_origin {
        extra.extend(policy.cors.response_headers(origin));
    }
    extra.extend(respond::no_referrer(ctx.token_in_url));
    respond::send(session, 204, "", &extra).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_keys_follow_rfc_6455() {
        assert!(valid_ws_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_ws_key(b"dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!valid_ws_key(b"dGhlIHNhbXBsZSBub25jZQ=!"));
        assert!(!valid_ws_key(b""));
    }

    #[test]
    fn header_tokens_are_matched_case_insensitively() {
        let v = HeaderValue::from_static("keep-alive, Upgrade");
        assert!(header_has_token(Some(&v), "upgrade"));
        let v = HeaderValue::from_static("text/event-stream;q=1, text/html");
        assert!(header_has_token(Some(&v), "text/event-stream"));
        let v = HeaderValue::from_static("text/event-streamx");
        assert!(!header_has_token(Some(&v), "text/event-stream"));
        assert!(!header_has_token(None, "upgrade"));
    }
}
