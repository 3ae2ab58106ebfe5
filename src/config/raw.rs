//! The config file exactly as written: every key optional and every leaf wrapped in
//! [`Spanned`] so validation can point at the line of a bad value.
//!
//! Defaults are deliberately not filled in here (no `#[serde(default = ..)]` on leaves):
//! validation does it, so "missing" and "set to the default" stay distinguishable and a route
//! override only replaces the keys it actually names. Unknown keys are rejected by serde so a
//! typo such as `heartbeet` fails loudly instead of silently keeping the default.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A string leaf; `${VAR}` substitution happens during validation.
pub(super) type Text = Spanned<String>;
/// A list of string leaves; the outer span locates list-level errors.
pub(super) type TextList = Spanned<Vec<Text>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub cors: RawCors,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub sse: RawSse,
    #[serde(default)]
    pub websocket: RawWebSocket,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub http2: RawHttp2,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub address: Option<Text>,
    pub tls_cert_file: Option<Text>,
    pub tls_key_file: Option<Text>,
    pub underscores_in_headers: Option<Text>,
    pub max_request_head: Option<Text>,
    pub request_head_timeout: Option<Text>,
    pub keepalive_timeout: Option<Text>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_ip: Option<Spanned<i64>>,
    pub reuse_port: Option<Spanned<bool>>,
    pub h2c: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp2 {
    pub enabled: Option<Spanned<bool>>,
    pub max_concurrent_streams: Option<Spanned<i64>>,
    pub idle_timeout: Option<Text>,
    pub max_send_buffer: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub address: Option<Text>,
    pub show_users: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub address: Option<Text>,
    pub connect_timeout: Option<Text>,
    pub write_timeout: Option<Text>,
    pub response_timeout: Option<Text>,
    pub hide_error_bodies: Option<Spanned<bool>>,
    pub hide_headers: Option<TextList>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub threads: Option<Spanned<i64>>,
    pub drain_delay: Option<Text>,
    pub drain_window: Option<Text>,
    pub drain_timeout: Option<Text>,
    pub watch_config: Option<Spanned<bool>>,
    pub watch_interval: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    pub allowed_origins: Option<TextList>,
    pub allow_credentials: Option<Spanned<bool>>,
    pub allowed_methods: Option<TextList>,
    pub allowed_headers: Option<TextList>,
    pub expose_headers: Option<TextList>,
    pub max_age: Option<Text>,
    pub require_origin: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub mode: Option<Text>,
    pub algorithms: Option<TextList>,
    pub secret: Option<Text>,
    pub secret_file: Option<Text>,
    pub public_key_file: Option<Text>,
    pub jwks_file: Option<Text>,
    pub issuer: Option<Text>,
    pub audience: Option<Text>,
    pub leeway: Option<Text>,
    pub max_token_size: Option<Text>,
    pub user_claim: Option<Text>,
    pub roles_claim: Option<Text>,
    pub query_params: Option<TextList>,
    pub pass_authorization_schemes: Option<TextList>,
    pub cookie: Option<Text>,
    pub forward_as: Option<Text>,
    pub forward_name: Option<Text>,
    pub close_on_expiry: Option<Spanned<bool>>,
    pub websocket_protocol_prefix: Option<Text>,
    #[serde(default)]
    pub session: RawSession,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSession {
    pub path: Option<Text>,
    pub ttl: Option<Text>,
    pub secure: Option<Spanned<bool>>,
    pub same_site: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub format: Option<Text>,
    pub level: Option<Text>,
}

/// `[sse]`, and also a route's `sse = {..}` override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSse {
    pub heartbeat: Option<Text>,
    pub heartbeat_comment: Option<Text>,
    pub stale_after: Option<Text>,
    pub retry: Option<Text>,
    pub retry_jitter: Option<Spanned<f64>>,
    pub max_event_size: Option<Text>,
    pub on_oversize: Option<Text>,
    pub on_invalid: Option<Text>,
    pub write_timeout: Option<Text>,
    pub require_accept: Option<Spanned<bool>>,
    pub client_buffer: Option<Text>,
    /// Process-wide: only `[sse]` may set it (a route override is an error).
    pub slow_buffer_total: Option<Text>,
    pub on_slow_client: Option<Text>,
}

/// `[websocket]`, and also a route's `websocket = {..}` override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebSocket {
    pub ping_interval: Option<Text>,
    pub pong_timeout: Option<Text>,
    pub idle_timeout: Option<Text>,
    pub max_message_size: Option<Text>,
    pub messages_per_user: Option<Text>,
    pub on_rate_limit: Option<Text>,
    pub compression: Option<Text>,
    pub max_control_frames: Option<Text>,
    pub max_message_fragments: Option<Spanned<i64>>,
}

/// `[limits]`, and also a route's `limits = {..}` override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub max_streams: Option<Spanned<i64>>,
    pub max_streams_per_user: Option<Spanned<i64>>,
    pub on_user_limit: Option<Text>,
    pub connects_per_user: Option<Text>,
    pub requests_per_ip: Option<Text>,
    pub burst: Option<Spanned<i64>>,
    pub trusted_proxies: Option<TextList>,
    /// `[limits.store]`: process-wide, so validation refuses it inside a route.
    pub store: Option<Spanned<RawStore>>,
}

/// `[limits.store]`: where per-user limit state lives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub kind: Option<Text>,
    pub url: Option<Text>,
    pub password_file: Option<Text>,
    pub ca_file: Option<Text>,
    pub key_prefix: Option<Text>,
    pub timeout: Option<Text>,
    pub lease: Option<Text>,
    pub on_error: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub path: Option<Text>,
    pub auth: Option<Text>,
    pub roles: Option<TextList>,
    /// Path parameter -> claim name; keys are spanned so a bad parameter name has a line.
    pub claims: Option<BTreeMap<Text, Text>>,
    #[serde(default)]
    pub sse: RawSse,
    #[serde(default)]
    pub websocket: RawWebSocket,
    #[serde(default)]
    pub limits: RawLimits,
}
