//! The one `ProxyHttp` implementation: it wires the policies to the relays.
//!
//! Each hook has one job (Pingora's phase model): `early_request_filter` lifts the token out of
//! the URL before anything can log it; `request_filter` runs the policy pipeline and either
//! answers, hands a stream's connection to a relay task of its own (`stream`), or lets Pingora
//! proxy a plain request; `response_filter` applies the header rules (and refuses an event
//! stream the request did not announce); `logging` writes the access line and the counters once
//! (a handed-off stream's task writes its own when it ends).

pub mod connection;
pub mod h2_request;
pub mod lifecycle;
mod pipeline;
pub mod reload;
pub use pipeline::now_unix;
mod respond;
pub use respond::raw_refusal;
pub mod state;
mod stream;
pub mod tls;
mod upstream_request;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::policy::auth::{AuthError, FoundToken, Identity};
use crate::policy::target::TargetError;
use crate::policy::Rejection;
use crate::telemetry::{CloseReason, Metrics, Outcome, StreamKind, ACCESS_TARGET};
use connection::OpenConnection;
pub use state::{Policy, State};

/// streamguard's proxy: a thin shell over `State`.
pub struct StreamGuard {
    state: Arc<State>,
}

impl StreamGuard {
    pub fn new(state: Arc<State>) -> Self {
        StreamGuard { state }
    }
}

/// An answer decided before the pipeline runs, from the request-target alone.
#[derive(Debug, Clone, Copy)]
pub enum Early {
    /// Refused with 400: not a request-target the proxy forwards.
    BadTarget(TargetError),
    /// `OPTIONS *`, answered by the proxy.
    Asterisk,
}

/// What the pipeline decided about one request, kept for the later phases and the access log.
pub struct RequestCtx {
    /// The configuration this request is served under, taken when it started.
    policy: Arc<Policy>,
    start: Instant,
    method: http::Method,
    /// Set when the request-target decided the answer already (`pipeline::normalize_target`).
    early: Option<Early>,
    /// The socket peer, for the forwarding headers.
    peer: Option<std::net::IpAddr>,
    /// The request target as logged: after query tokens were lifted, before `forward_as =
    /// "query"` puts the token back on the upstream hop.
    log_uri: String,
    /// The token the request carried; `Err` for a malformed bearer credential.
    token: Result<Option<FoundToken>, AuthError>,
    /// The URL carried a token parameter: every answer gets `Referrer-Policy: no-referrer`.
    token_in_url: bool,
    identity: Option<Identity>,
    route: Option<usize>,
    /// The request's Origin when the CORS policy allowed it.
    cors_origin: Option<http::HeaderValue>,
    outcome: Outcome,
    rejection: Option<Rejection>,
    /// The app answered this 5xx (status, `Retry-After`), which `fail_to_proxy` replaces with the
    /// generic answer (`upstream.hide_error_bodies`).
    hidden_error: Option<(u16, Option<http::HeaderValue>)>,
    /// The upstream answered an event stream the request did not ask for (`sse.require_accept`).
    unannounced_stream: bool,
    status: u16,
    /// The connection went to a stream task, which writes the access line when it ends.
    handed_off: bool,
    /// The client connection's gate slot, from the connection loop (`on_connection_reuse`); a
    /// stream task takes it along, so the slot lives as long as the socket.
    connection: Option<Arc<OpenConnection>>,
}

impl RequestCtx {
    /// The header rules for an answer from the app to this request.
    fn header_rules(&self) -> respond::HeaderRules<'_> {
        respond::HeaderRules {
            cors: &self.policy.cors,
            origin: self.cors_origin.as_ref(),
            hide: &self.policy.config.upstream.hide_headers,
            token_in_url: self.token_in_url,
        }
    }

    /// What the access line of a stream needs once the request is gone; from then on the stream
    /// task, not `logging`, writes it.
    fn hand_off(&mut self) -> AccessRecord {
        self.handed_off = true;
        self.take_access_record()
    }

    /// The request's access record, taken: the context is not logged from again.
    fn take_access_record(&mut self) -> AccessRecord {
        AccessRecord {
            start: self.start,
            method: self.method.clone(),
            uri: std::mem::take(&mut self.log_uri),
            user: self.identity.take().map(|i| i.user),
            outcome: self.outcome,
        }
    }
}

/// One request's access line and request counter, written once when it is over.
pub struct AccessRecord {
    start: Instant,
    method: http::Method,
    uri: String,
    user: Option<String>,
    outcome: Outcome,
}

impl AccessRecord {
    fn log(&self, metrics: &Metrics, status: u16, stream: Option<(StreamKind, CloseReason)>) {
        metrics
            .requests
            .with_label_values(&[self.outcome.label()])
            .inc();
        tracing::info!(
            target: ACCESS_TARGET,
            method = %self.method,
            uri = %self.uri,
            status,
            duration_ms = self.start.elapsed().as_millis() as u64,
            user = self.user.as_deref().unwrap_or("-"),
            outcome = self.outcome.label(),
            stream = stream.map(|(k, _)| k.label()).unwrap_or("-"),
            close = stream.map(|(_, r)| r.label()).unwrap_or("-"),
            "request"
        );
    }
}

#[async_trait]
impl ProxyHttp for StreamGuard {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            policy: self.state.policy(),
            start: Instant::now(),
            method: http::Method::GET,
            early: None,
            peer: None,
            log_uri: String::new(),
            token: Ok(None),
            token_in_url: false,
            identity: None,
            route: None,
            cors_origin: None,
            outcome: Outcome::Proxied,
            rejection: None,
            hidden_error: None,
            unannounced_stream: false,
            status: 0,
            handed_off: false,
            connection: None,
        }
    }

    /// The connection loop hands every request its connection's slot this way (Pingora
    /// delivers it before `early_request_filter`, on the first request too).
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        connection: Box<dyn std::any::Any + Send + Sync>,
    ) {
        ctx.connection = connection
            .downcast::<Arc<OpenConnection>>()
            .ok()
            .map(|c| *c);
    }

    /// No response compression: event streams must not be buffered by an encoder, and the
    /// upstream already decides encoding for everything else.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.method = session.req_header().method.clone();
        if session.is_http2() {
            // An HTTP/2 request's connection slot travels in its extensions (`server::h2`):
            // Pingora keeps a connection context for HTTP/1 only.
            if ctx.connection.is_none() {
                ctx.connection = session
                    .req_header_mut()
                    .extensions_mut()
                    .remove::<Arc<OpenConnection>>();
            }
            h2_request::to_h1_form(session.req_header_mut())?;
        }
        if let Err(early) = pipeline::normalize_target(session) {
            // A refused target is never logged: it might carry a token nothing lifted.
            ctx.log_uri = "-".to_owned();
            ctx.early = Some(early);
            return Ok(());
        }
        pipeline::lift_token(session, ctx)?;
        ctx.log_uri = session.req_header().uri.to_string();
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if stream::reset_by_client(session) {
            // Rapid reset: a stream opened and reset at once costs no policy work and no
            // upstream request.
            ctx.outcome = Outcome::Failed;
            ctx.status = stream::CLIENT_CLOSED_REQUEST;
            return Ok(true);
        }
        pipeline::run(&self.state, session, ctx).await
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_request::prepare_upstream(upstream_request, ctx, false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let up = &ctx.policy.config.upstream;
        let mut peer = HttpPeer::new(up.address, false, String::new());
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.total_connection_timeout = Some(up.connect_timeout);
        peer.options.write_timeout = Some(up.write_timeout);
        // Bounds the wait for the response head, and each later read of the body: an app that
        // never answers gets its client a 504 instead of holding both sockets forever.
        peer.options.read_timeout = Some(up.response_timeout);
        Ok(Box::new(peer))
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.method != http::Method::HEAD
            && stream::is_event_stream(resp)
            && ctx.policy.config.sse_for(ctx.route).require_accept
        {
            // Announced streams never get here (the relays serve them), so this one would
            // run unsupervised. `fail_to_proxy` writes the refusal.
            ctx.unannounced_stream = true;
            return Error::e_explain(
                ErrorType::HTTPStatus(Rejection::UnannouncedStream.status()),
                pipeline::UNANNOUNCED_STREAM,
            );
        }
        ctx.status = resp.status.as_u16();
        if ctx.policy.config.upstream.hide_error_bodies && resp.status.is_server_error() {
            // Nothing of the app's answer goes out: `fail_to_proxy` writes the generic one, whole
            // and framed, whatever the app's body was (or was not).
            let retry_after = resp.headers.get(http::header::RETRY_AFTER).cloned();
            ctx.hidden_error = Some((ctx.status, retry_after));
            return Error::e_explain(ErrorType::HTTPStatus(ctx.status), "app error answer hidden");
        }
        respond::finalize_headers(resp, &ctx.header_rules())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if ctx.unannounced_stream && session.response_written().is_none() {
            pipeline::refuse_unannounced_stream(session, ctx).await;
            return FailToProxy {
                error_code: Rejection::UnannouncedStream.status(),
                can_reuse_downstream: false,
            };
        }
        if let Some((status, retry_after)) = ctx.hidden_error.take() {
            if session.response_written().is_none() {
                let cors = ctx.cors_origin.as_ref().map(|o| (&ctx.policy.cors, o));
                // The client may be gone too; the status is recorded either way.
                let _ = respond::hidden_error(session, status, retry_after, cors, ctx.token_in_url)
                    .await;
            }
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        let rejection = match (e.esource(), e.etype()) {
            (pingora::ErrorSource::Upstream, ErrorType::ReadTimedout) => {
                Some(Rejection::UpstreamTimeout)
            }
            (pingora::ErrorSource::Upstream, _) => Some(Rejection::UpstreamDown),
            (pingora::ErrorSource::Downstream, _) => None,
            _ => Some(Rejection::UpstreamError),
        };
        ctx.outcome = Outcome::Failed;
        let code = match rejection {
            Some(rejection) if session.response_written().is_none() => {
                tracing::warn!(error = %e.etype().as_str(), "upstream request failed");
                // The client may be gone too; the status is recorded either way.
                let _ = respond::fail(session, ctx, rejection).await;
                rejection.status()
            }
            _ => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Client disconnects are routine for streams: keep them out of the error log. So is an
    /// unannounced stream, which any client can cause and which has its security event.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        ctx.unannounced_stream
            || ctx.hidden_error.is_some()
            || matches!(error.etype(), ErrorType::HTTPStatus(_))
            || matches!(error.esource(), pingora::ErrorSource::Downstream)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.handed_off {
            // The stream task logs the request when the stream ends; the session here is an
            // empty placeholder.
            return;
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(ctx.status);
        if let Some(rejection) = ctx.rejection {
            self.state
                .metrics
                .rejections
                .with_label_values(&[rejection.metric_label()])
                .inc();
        }
        ctx.take_access_record()
            .log(&self.state.metrics, status, None);
    }

    fn request_summary(&self, _session: &Session, ctx: &RequestCtx) -> String {
        // Only method and path: never a query (it may have carried a token) or a header. Read
        // from the context: a handed-off stream's session no longer holds the request.
        let path = ctx.log_uri.split('?').next().unwrap_or("");
        format!("{} {}", ctx.method, path)
    }
}
