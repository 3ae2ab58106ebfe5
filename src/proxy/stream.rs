//! Serving one SSE or WebSocket request: admission by the limiter, the upstream exchange, and
//! handing the connection to the right relay loop. Non-stream answers from the upstream (a 401
//! JSON, a 404, a redirect) are passed through as ordinary responses.
//!
//! A stream leaves the request that opened it: once the upstream has answered with a stream,
//! the client socket is taken out of Pingora's session and relayed by a task of its own, so
//! the request's state is freed while the stream lives on (see `relay::client`).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as HttpSession;
use pingora::proxy::Session;
use pingora::Result;
use tokio::time::Instant;

use super::connection::OpenConnection;
use super::respond;
use super::respond::{fail, refuse};
use super::{AccessRecord, Policy, RequestCtx, State};
use crate::config::{Compression, WebSocketConfig};
use crate::policy::limits::{Admission, LimitKey, MessageCheck, StreamPermit};
use crate::policy::Rejection;
use crate::relay::client::{ClientConn, Framing};
use crate::relay::h2_client::H2Client;
use crate::relay::lifecycle::LifecycleWatch;
use crate::relay::side::ClientSide;
use crate::relay::upstream::{self, UpstreamConn, UpstreamError};
use crate::relay::websocket::deflate::{DeflateParams, ExtensionError};
use crate::relay::websocket::WsOptions;
use crate::relay::{sse, websocket, Supervision};
use crate::telemetry::{ActiveStream, CloseReason, Outcome, StreamKind};

pub async fn serve(
    state: &Arc<State>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    kind: StreamKind,
    client: IpAddr,
) -> Result<bool> {
    let policy = Arc::clone(&ctx.policy);
    let limits = policy.config.limits_for(ctx.route);
    let key = match &ctx.identity {
        Some(identity) => LimitKey::User(identity.user.clone()),
        None => LimitKey::Ip(client),
    };
    let permit = match state
        .limiter
        .admit_stream(&key, limits, std::time::Instant::now())
        .await
    {
        Admission::Admitted(permit) => permit,
        Admission::Rejected {
            reason,
            retry_after,
        } => {
            let rejection = Rejection::from(reason);
            return refuse(session, ctx, rejection, Some(retry_after), "stream limit").await;
        }
    };

    // Edited in place (the access log kept its own copy of the target): the upstream request
    // is written from the session's head, without a copy of its header map.
    let req = session.req_header_mut();
    match kind {
        StreamKind::Sse => {
            // The relay parses events: the upstream must not compress them.
            req.remove_header(&header::ACCEPT_ENCODING);
            resume_from_query(req)?;
        }
        StreamKind::WebSocket => websocket_request(req, policy.config.websocket_for(ctx.route))?,
    }
    super::upstream_request::prepare_upstream(
        session.req_header_mut(),
        ctx,
        kind == StreamKind::WebSocket,
    )?;
    if session.is_http2() {
        if reset_by_client(session) {
            ctx.outcome = Outcome::Failed;
            ctx.status = CLIENT_CLOSED_REQUEST;
            return Ok(true);
        }
        super::h2_request::for_upstream(session.req_header_mut());
    }
    let mut up = match send_request(&policy, session, kind).await {
        Ok(up) => up,
        Err(e) => {
            tracing::warn!(error = %e, "stream upstream failed");
            let rejection = if e.is_connect() {
                Rejection::UpstreamDown
            } else {
                Rejection::UpstreamError
            };
            fail(session, ctx, rejection).await?;
            return Ok(true);
        }
    };
    // The app has the request: it gets `response_timeout` to answer, and the client is watched
    // meanwhile. Whichever side gives up first, the other socket and the stream slot (`permit`)
    // go the moment this returns.
    let response_timeout = policy.config.upstream.response_timeout;
    let answered = tokio::select! {
        head = tokio::time::timeout(response_timeout, up.read_response_head()) => head,
        () = client_gone(session) => {
            tracing::debug!("client left before the app answered a stream request");
            ctx.outcome = Outcome::Failed;
            ctx.status = CLIENT_CLOSED_REQUEST;
            return Ok(true);
        }
    };
    match answered {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "stream upstream failed");
            fail(session, ctx, Rejection::UpstreamError).await?;
            return Ok(true);
        }
        Err(_) => {
            tracing::warn!(timeout = ?response_timeout, "the app sent no response head in time");
            fail(session, ctx, Rejection::UpstreamTimeout).await?;
            return Ok(true);
        }
    }
    let Some(mut head) = up.take_resp_header() else {
        return refuse(session, ctx, Rejection::UpstreamError, None, "no head").await;
    };
    ctx.status = head.status.as_u16();
    ctx.outcome = Outcome::Streamed;
    if policy.config.upstream.hide_error_bodies && head.status.is_server_error() {
        ctx.outcome = Outcome::Proxied;
        let retry_after = head.headers.get(header::RETRY_AFTER).cloned();
        let cors = ctx.cors_origin.as_ref().map(|o| (&policy.cors, o));
        // The client may be gone; the status is recorded either way.
        let _ =
            respond::hidden_error(session, ctx.status, retry_after, cors, ctx.token_in_url).await;
        return Ok(true);
    }
    respond::finalize_headers(&mut head, &ctx.header_rules())?;

    let is_stream = match kind {
        StreamKind::Sse => is_event_stream(&head),
        StreamKind::WebSocket => head.status.as_u16() == 101,
    };
    if !is_stream {
        // The upstream connection is not reused, and this one ends with the answer too.
        session.set_keepalive(None);
        passthrough(session, &mut up, head).await;
        ctx.outcome = Outcome::Proxied;
        return Ok(true);
    }
    if kind == StreamKind::WebSocket {
        if let Err(e) = agreed_deflate(&head, policy.config.websocket_for(ctx.route)) {
            // Frames under an extension the client may not have agreed to, or one the proxy
            // cannot follow, are not relayed: the handshake fails here instead.
            tracing::warn!(error = %e, "refusing the app's WebSocket handshake");
            fail(session, ctx, Rejection::UpstreamError).await?;
            return Ok(true);
        }
    }

    if kind == StreamKind::Sse {
        respond::event_stream_headers(&mut head)?;
    }
    let expires_at = match &ctx.identity {
        Some(identity) if policy.config.auth.close_on_expiry => {
            // Measured against the sub-second clock: whole-second `now` would close up to 1 s late.
            // A far-future `exp` is no deadline at all: it must not overflow a clock.
            identity
                .expires_in(std::time::SystemTime::now())
                .and_then(|left| Instant::now().checked_add(left))
        }
        _ => None,
    };
    let client = match take_h2(session) {
        Some(h2) => Client::H2(H2Client::new(h2, state.metrics.http2.client_resets.clone())),
        None => {
            let framing = h1_framing(kind, session.req_header().version, &mut head)?;
            let Some((io, early)) = detach(session).await else {
                tracing::warn!("a stream could not be taken out of its HTTP session");
                ctx.outcome = Outcome::Failed;
                return Ok(true);
            };
            Client::H1(ClientConn::new(io, framing, early))
        }
    };
    let lifecycle = state
        .lifecycle
        .watch(ctx.identity.as_ref().map(|identity| identity.key));
    let access = ctx.hand_off();
    let stream = Stream {
        policy: Arc::clone(&policy),
        lifecycle,
        connection: ctx.connection.take(),
        state: state.clone(),
        client,
        up,
        head,
        permit,
        kind,
        route: ctx.route,
        expires_at,
        access,
    };
    // A short stream (one answer, then the end) is over after its first poll: it ends here.
    // Only a stream that goes on gets a task of its own, so short ones skip a task's setup.
    let mut run = Box::pin(stream.run());
    if futures_util::poll!(run.as_mut()).is_pending() {
        tokio::spawn(run);
    }
    Ok(true)
}

/// How an HTTP/1 client's stream body is delimited, with the head fields that say so.
fn h1_framing(
    kind: StreamKind,
    version: http::Version,
    head: &mut ResponseHeader,
) -> Result<Framing> {
    if kind == StreamKind::WebSocket {
        return Ok(Framing::Raw);
    }
    // The connection ends with the stream: say so, and frame the body ourselves.
    head.insert_header(header::CONNECTION, "close")?;
    if version == http::Version::HTTP_10 {
        return Ok(Framing::Raw);
    }
    head.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    Ok(Framing::Chunked)
}

/// Takes an HTTP/2 stream out of Pingora's session, as [`detach`] takes an HTTP/1 socket: the
/// session is left holding an empty placeholder, which Pingora finishes and drops with the
/// rest of the request's state. `None` for any other session.
fn take_h2(
    session: &mut Session,
) -> Option<Box<pingora::protocols::http::v2::server::HttpSession>> {
    if !session.is_http2() {
        return None;
    }
    let placeholder = HttpSession::new_http1(Box::new(std::io::Cursor::new(Vec::<u8>::new())));
    let HttpSession::H2(h2) = std::mem::replace(&mut *session.downstream_session, placeholder)
    else {
        return None;
    };
    // The session (and the request head it holds) goes once the stream's task has written the
    // response head (`H2Client::queue_head`).
    Some(Box::new(h2))
}

/// The client side a stream is relayed to.
enum Client {
    /// An HTTP/1 connection, the stream's own.
    H1(ClientConn),
    /// One stream of an HTTP/2 connection (SSE only: WebSocket stays on HTTP/1.1).
    H2(H2Client),
}

/// Takes the client connection out of Pingora's session, with any bytes already read past the
/// request head. The session is left holding an empty placeholder, which Pingora then finishes
/// and drops along with the rest of the request's state (see `relay::client` for why).
async fn detach(session: &mut Session) -> Option<(pingora::protocols::Stream, Option<Bytes>)> {
    let placeholder = HttpSession::new_http1(Box::new(std::io::Cursor::new(Vec::<u8>::new())));
    let HttpSession::H1(mut h1) = std::mem::replace(&mut *session.downstream_session, placeholder)
    else {
        // Only HTTP/1.1 listeners exist; an HTTP/2 stream would have no socket of its own.
        return None;
    };
    // `reuse` hands back the socket and the bytes after the request only when the connection
    // could carry another request, so mark it so (nothing will read a request from it). A
    // client's `Connection: close` would veto that; the request head is not needed any more.
    h1.req_header_mut().remove_header(&header::CONNECTION);
    h1.set_server_keepalive(Some(1));
    h1.set_keepalive_reuses_remaining(None);
    h1.set_pipelining_enabled(true);
    let reusable = h1.reuse().await.ok().flatten()?;
    let (io, early) = reusable.into_parts();
    Some((io, early.map(BytesMut::freeze)))
}

/// A stream handed off from the request that opened it to a task of its own.
struct Stream {
    /// Keeps the client connection counted (and its gate slot taken) while the stream lives.
    connection: Option<Arc<OpenConnection>>,
    state: Arc<State>,
    /// The configuration the stream was opened under, which it keeps across reloads (its route
    /// index refers to these routes).
    policy: Arc<Policy>,
    client: Client,
    up: UpstreamConn,
    head: Box<ResponseHeader>,
    permit: StreamPermit,
    kind: StreamKind,
    route: Option<usize>,
    expires_at: Option<Instant>,
    lifecycle: LifecycleWatch,
    access: AccessRecord,
}

impl Stream {
    // Taken apart before the async block, so the task holds each field once: an `async fn`
    // would keep `self` and the moved-out fields side by side in its state.
    fn run(self) -> impl std::future::Future<Output = ()> {
        let Stream {
            connection,
            state,
            policy,
            mut client,
            mut up,
            head,
            permit,
            kind,
            route,
            expires_at,
            lifecycle,
            access,
        } = self;
        async move {
            let metrics = &state.metrics;
            let pattern = route.map(|i| policy.config.routes[i].path.as_str());
            let _active =
                ActiveStream::new(metrics.kind(kind), metrics.route_streams(pattern, kind));
            let started = Instant::now();
            let sup = Supervision {
                metrics,
                lifecycle,
                expires_at,
                evicted: Box::pin(permit.evicted()),
            };

            let sse_cfg = policy.config.sse_for(route);
            let status = head.status.as_u16();
            // Checked in `serve`, and read again here rather than carried over: a field for it
            // would cost every stream's task room, SSE streams' too.
            let deflate = match kind {
                StreamKind::WebSocket => {
                    agreed_deflate(&head, policy.config.websocket_for(route)).unwrap_or(None)
                }
                StreamKind::Sse => None,
            };
            // The relay writes the head with whatever events the upstream already sent.
            let retry_hint = (kind == StreamKind::Sse)
                .then(|| sse::retry_hint(sse_cfg))
                .flatten();
            match &mut client {
                Client::H1(c) => c.queue_head(&head, retry_hint.as_deref()),
                Client::H2(c) => c.queue_head(&head, retry_hint.as_deref()),
            }
            // Queued as bytes, the head is not needed again, and an idle stream should not keep
            // it: its two header maps, and Pingora's 4 KB request read buffer, which a CORS origin
            // echoed into it still shares (request header values are slices of that buffer).
            drop(head);

            // The WebSocket relay's state is boxed: inline, every stream would carry room for
            // it (it is the larger of the two), and SSE streams, the most numerous, would pay
            // about 0.5 KB each for it while idle.
            let budget = &state.slow_budget;
            let reason = match (kind, &mut client) {
                (StreamKind::Sse, Client::H1(c)) => {
                    sse::relay(c, &mut up, sse_cfg, budget, sup).await
                }
                (StreamKind::Sse, Client::H2(c)) => {
                    sse::relay(c, &mut up, sse_cfg, budget, sup).await
                }
                // `pipeline` never sees a WebSocket upgrade on HTTP/2 (no extended CONNECT).
                (StreamKind::WebSocket, Client::H2(_)) => CloseReason::Error,
                (StreamKind::WebSocket, Client::H1(client)) => {
                    let cfg = policy.config.websocket_for(route);
                    let messages_key = LimitKey::Messages(Box::new(permit.key().clone()));
                    let limiter = &state.limiter;
                    let rate = cfg.messages_per_user;
                    let check = move || match rate {
                        None => MessageCheck::Decided(true),
                        Some(spec) => {
                            limiter.allow_message(&messages_key, spec, std::time::Instant::now())
                        }
                    };
                    let opts = WsOptions {
                        cfg,
                        deflate,
                        allow_message: &check,
                    };
                    if client.flush().await.is_err() {
                        CloseReason::ClientGone
                    } else {
                        Box::pin(websocket::relay(client, &mut up, opts, sup)).await
                    }
                }
            };
            // Closing tells the upstream the stream is over (EOF, or a reset if it still had
            // bytes in flight); a shutdown first would only add a system call.
            drop(up);
            metrics
                .kind(kind)
                .closed(reason, started.elapsed().as_secs_f64());
            if reason == CloseReason::Evicted {
                metrics.evictions.inc();
            }
            tracing::debug!(
                kind = kind.label(),
                reason = reason.label(),
                "stream closed"
            );
            access.log(metrics, status, Some((kind, reason)));
            // Used here, so the task holds the slot until the stream ends, not until `run`
            // returns: the connection counts as long as its socket is open.
            drop(connection);
        }
    }
}

/// nginx's status for a request whose client closed the connection before the answer.
pub(super) const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Whether an HTTP/2 client already reset this request's stream (or its connection failed):
/// checked without waiting, before work a reset would waste (the policy, an upstream request).
pub(super) fn reset_by_client(session: &mut Session) -> bool {
    match &mut *session.downstream_session {
        HttpSession::H2(h2) => h2.idle().now_or_never().is_some(),
        _ => false,
    }
}

/// Resolves when the client closes or resets its connection. Bytes it sends meanwhile are kept
/// for the relay (the session hands them over with the socket, see [`detach`]), never dropped:
/// a WebSocket client may already be sending frames, and those must reach the frame checks.
async fn client_gone(session: &mut Session) {
    if let HttpSession::H1(h1) = &mut *session.downstream_session {
        h1.set_pipelining_enabled(true);
    }
    // `read_body_or_idle` errs when the client goes away; with pipelining on, bytes it reads
    // are stashed and it then waits for good.
    while session.read_body_or_idle(true).await.is_ok() {}
}

/// Connects, writes the request head and forwards the request body (POST event streams).
async fn send_request(
    policy: &Policy,
    session: &mut Session,
    kind: StreamKind,
) -> std::result::Result<UpstreamConn, UpstreamError> {
    let mut up = policy.streams.open(session.req_header()).await?;
    // A body the client sends (LLM-style POST streams) reaches the upstream before the stream
    // starts. Never on a WebSocket: an app reads bytes after the handshake as frames, and every
    // byte on that path must go through the frame decoder first (`pipeline` refuses an upgrade
    // with a body; this holds even if it did not).
    if kind == StreamKind::Sse && !session.is_body_empty() {
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|e| UpstreamError::Write(upstream::describe(&e)))?
        {
            up.write_body(&chunk).await?;
        }
    }
    up.finish_body().await?;
    Ok(up)
}

/// The upgrade request as the app gets it: without body framing headers (nothing follows the
/// head but frames, which the relay sends), and with the client's extension offers as
/// `websocket.compression` says: none for `strip`, its permessage-deflate offers rewritten for
/// `inflate`.
fn websocket_request(req: &mut pingora::http::RequestHeader, cfg: &WebSocketConfig) -> Result<()> {
    req.remove_header(&header::CONTENT_LENGTH);
    req.remove_header(&header::TRANSFER_ENCODING);
    let offer = match cfg.compression {
        Compression::Strip => None,
        Compression::Inflate => extensions(&req.headers)
            .and_then(|offered| websocket::deflate::upstream_offer(&offered)),
    };
    match offer {
        Some(offer) => {
            req.insert_header(header::SEC_WEBSOCKET_EXTENSIONS, offer)?;
        }
        None => {
            req.remove_header(&header::SEC_WEBSOCKET_EXTENSIONS);
        }
    }
    Ok(())
}

/// What a WebSocket's 101 agreed to for permessage-deflate, under the route's `compression`.
fn agreed_deflate(
    head: &ResponseHeader,
    cfg: &WebSocketConfig,
) -> std::result::Result<Option<DeflateParams>, ExtensionError> {
    websocket::deflate::negotiated(extensions(&head.headers).as_deref(), cfg.compression)
}

/// Every `Sec-WebSocket-Extensions` line as one list, `None` when there is none. Bytes that
/// are not text stay visible (as U+FFFD, which the extension grammar refuses), rather than the
/// line being skipped as if it were not there.
fn extensions(headers: &http::HeaderMap) -> Option<String> {
    let lines: Vec<_> = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
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

/// Also asked of every plain response (`sse.require_accept`), so it does not allocate.
pub(super) fn is_event_stream(head: &ResponseHeader) -> bool {
    const TYPE: &[u8] = b"text/event-stream";
    head.status.as_u16() == 200
        && head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start().as_bytes().get(..TYPE.len()))
            .is_some_and(|start| start.eq_ignore_ascii_case(TYPE))
}

/// Relays a non-stream answer (a 401 JSON, a 404, a redirect) as an ordinary response.
async fn passthrough(session: &mut Session, up: &mut UpstreamConn, head: Box<ResponseHeader>) {
    if session.write_response_header(head, false).await.is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, content_type: Option<&str>) -> ResponseHeader {
        let mut head = ResponseHeader::build(status, None).expect("head");
        if let Some(value) = content_type {
            head.insert_header(header::CONTENT_TYPE, value)
                .expect("header");
        }
        head
    }

    #[test]
    fn an_event_stream_is_a_200_whose_content_type_is_text_event_stream() {
        for value in [
            "text/event-stream",
            "Text/Event-Stream; charset=utf-8",
            "  text/event-stream",
        ] {
            assert!(is_event_stream(&head(200, Some(value))), "{value:?}");
        }
        for value in [
            "text/event-strea",
            "text/html",
            "application/json",
            "text/plain; x=text/event-stream",
        ] {
            assert!(!is_event_stream(&head(200, Some(value))), "{value:?}");
        }
        assert!(!is_event_stream(&head(200, None)));
        assert!(!is_event_stream(&head(201, Some("text/event-stream"))));
    }
}
