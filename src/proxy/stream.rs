//! Serving one SSE or WebSocket request: admission by the limiter, the upstream exchange, and
//! handing the connection to the right relay loop. Non-stream answers from the upstream (a 401
//! JSON, a 404, a redirect) are passed through as ordinary responses.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use tokio::time::Instant;

use super::pipeline::{fail, refuse};
use super::respond;
use super::{RequestCtx, State};
use crate::policy::limits::{Admission, LimitKey};
use crate::policy::Rejection;
use crate::relay::upstream::{self, UpstreamConn, UpstreamError};
use crate::relay::websocket::WsOptions;
use crate::relay::{sse, websocket, Supervision};
use crate::telemetry::{ActiveStream, CloseReason, Outcome, StreamKind};

pub async fn serve(
    state: &State,
    session: &mut Session,
    ctx: &mut RequestCtx,
    kind: StreamKind,
    client: IpAddr,
) -> Result<bool> {
    let route = ctx.route.map(|i| &state.config.routes[i]);
    let limits = route.map(|r| &r.limits).unwrap_or(&state.config.limits);
    let key = match &ctx.identity {
        Some(identity) => LimitKey::User(identity.user.clone()),
        None => LimitKey::Ip(client),
    };
    let permit = match state
        .limiter
        .admit_stream(&key, limits, std::time::Instant::now())
    {
        Admission::Admitted(permit) => permit,
        Admission::Rejected {
            reason,
            retry_after,
        } => {
            let rejection = Rejection::from(reason);
            return refuse(
                state,
                session,
                ctx,
                rejection,
                Some(retry_after),
                "stream limit",
            )
            .await;
        }
    };

    let mut req = session.req_header().clone();
    if kind == StreamKind::Sse {
        // The relay parses events: the upstream must not compress them.
        req.remove_header(&header::ACCEPT_ENCODING);
        resume_from_query(&mut req)?;
    }
    let mut up = match open_upstream(state, session, &req).await {
        Ok(up) => up,
        Err(e) => {
            tracing::warn!(error = %e, "stream upstream failed");
            let rejection = if e.is_connect() {
                Rejection::UpstreamDown
            } else {
                Rejection::UpstreamError
            };
            fail(state, session, ctx, rejection).await?;
            return Ok(true);
        }
    };
    let Some(mut head) = up.take_resp_header() else {
        return refuse(
            state,
            session,
            ctx,
            Rejection::UpstreamError,
            None,
            "no head",
        )
        .await;
    };
    respond::finalize_headers(&mut head, &state.cors, ctx.cors_origin.as_ref())?;
    ctx.status = head.status.as_u16();
    ctx.outcome = Outcome::Streamed;
    // Streams are quiet for as long as they like: the relays supervise them, not read timeouts.
    session.set_read_timeout(None);
    session.set_keepalive(None);

    let is_stream = match kind {
        StreamKind::Sse => is_event_stream(&head),
        StreamKind::WebSocket => head.status.as_u16() == 101,
    };
    if !is_stream {
        passthrough(state, session, &mut up, head).await;
        ctx.outcome = Outcome::Proxied;
        return Ok(true);
    }

    let metrics = &state.metrics;
    let _active = ActiveStream::new(metrics.kind(kind));
    let started = Instant::now();
    let expires_at = match &ctx.identity {
        Some(identity) if state.config.auth.close_on_expiry => {
            // Measured against the sub-second clock: whole-second `now` would close up to 1 s late.
            let exp = std::time::UNIX_EPOCH + Duration::from_secs(identity.expires_at);
            let left = exp
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            Some(Instant::now() + left)
        }
        _ => None,
    };
    let sup = Supervision {
        metrics,
        shutdown: state.shutdown.clone(),
        expires_at,
        evicted: Box::pin(permit.evicted()),
    };

    let reason = match kind {
        StreamKind::Sse => {
            let cfg = route.map(|r| &r.sse).unwrap_or(&state.config.sse);
            if let Err(e) = respond::event_stream_headers(&mut head) {
                tracing::warn!(error = %e, "event stream headers");
            }
            if !cfg.write_timeout.is_zero() {
                session.set_write_timeout(Some(cfg.write_timeout));
            }
            if session.write_response_header(head, false).await.is_err() {
                CloseReason::ClientGone
            } else {
                sse::relay(session, &mut up, cfg, sup).await
            }
        }
        StreamKind::WebSocket => {
            let cfg = route
                .map(|r| &r.websocket)
                .unwrap_or(&state.config.websocket);
            let allow_rsv1 = head
                .headers
                .get(header::SEC_WEBSOCKET_EXTENSIONS)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("permessage-deflate"));
            if session.write_response_header(head, false).await.is_err() {
                CloseReason::ClientGone
            } else {
                let messages_key = LimitKey::Messages(Box::new(key.clone()));
                let limiter = &state.limiter;
                let rate = cfg.messages_per_user;
                let check = move || {
                    rate.is_none_or(|spec| {
                        limiter.allow_message(&messages_key, spec, std::time::Instant::now())
                    })
                };
                let opts = WsOptions {
                    cfg,
                    allow_rsv1,
                    allow_message: &check,
                };
                websocket::relay(session, &mut up, opts, sup).await
            }
        }
    };
    up.shutdown().await;
    metrics
        .kind(kind)
        .closed(reason, started.elapsed().as_secs_f64());
    if reason == CloseReason::Evicted {
        metrics.evictions.inc();
    }
    ctx.stream = Some((kind, reason));
    tracing::debug!(
        kind = kind.label(),
        reason = reason.label(),
        "stream closed"
    );
    Ok(true)
}

/// Connects, forwards the request body (POST streams), and reads the response head.
async fn open_upstream(
    state: &State,
    session: &mut Session,
    req: &pingora::http::RequestHeader,
) -> std::result::Result<UpstreamConn, UpstreamError> {
    let mut up = state.streams.open(req).await?;
    // A body the client sends (LLM-style POST streams) reaches the upstream before the stream starts.
    if !session.is_body_empty() {
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|e| UpstreamError::Write(upstream::describe(&e)))?
        {
            up.write_body(&chunk).await?;
        }
    }
    up.finish_body().await?;
    up.read_response_head().await?;
    Ok(up)
}

/// EventSource polyfills that cannot set headers pass `?lastEventId=`: the app gets the standard
/// `Last-Event-ID` header instead (a real header, the browser's own, wins).
fn resume_from_query(req: &mut pingora::http::RequestHeader) -> Result<()> {
    let target = req.uri.path_and_query().map(|pq| pq.as_str().to_owned());
    let Some((value, stripped)) = target.as_deref().and_then(sse::last_event_id_from_query) else {
        return Ok(());
    };
    if !req.headers.contains_key("last-event-id") {
        req.insert_header("last-event-id", value)?;
    }
    if let Ok(uri) = http::Uri::try_from(stripped) {
        req.set_uri(uri);
    }
    Ok(())
}

fn is_event_stream(head: &ResponseHeader) -> bool {
    head.status.as_u16() == 200
        && head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
            })
}

/// Relays a non-stream answer as an ordinary response (5xx bodies hidden when configured).
async fn passthrough(
    state: &State,
    session: &mut Session,
    up: &mut UpstreamConn,
    mut head: Box<ResponseHeader>,
) {
    let hide = state.config.upstream.hide_error_bodies && head.status.is_server_error();
    if hide && respond::hide_error_head(&mut head).is_err() {
        return;
    }
    if session.write_response_header(head, false).await.is_err() {
        return;
    }
    if hide {
        let body = Bytes::from_static(respond::UPSTREAM_ERROR_BODY.as_bytes());
        let _ = session.write_response_body(Some(body), true).await;
        return;
    }
    loop {
        match up.read_body_bytes().await {
            Ok(Some(chunk)) => {
                if session
                    .write_response_body(Some(chunk), false)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let _ = session.write_response_body(None, true).await;
}
