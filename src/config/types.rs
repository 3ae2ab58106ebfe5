//! The validated configuration: every value parsed, defaulted and checked, so the rest of the
//! proxy never looks at raw TOML again (ripgrep's lowargs → hiargs split).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole validated `proxy.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub server: ServerConfig,
    pub cors: CorsConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub sse: SseConfig,
    pub websocket: WebSocketConfig,
    pub limits: LimitsConfig,
    pub http2: Http2Config,
    /// `[limits.store]`: one per process, whatever the route.
    pub store: StoreConfig,
    /// `[[route]]` tables in file order; the first match wins.
    pub routes: Vec<RouteConfig>,
    /// The files the configuration names (keys, certificates, a password), which a reload and
    /// `server.watch_config` read again.
    pub files: Vec<std::path::PathBuf>,
    /// The SHA-256 of the config text and those files (16 hex digits): which configuration is
    /// in force.
    pub fingerprint: String,
}

/// The settings in force for a request, from the index route matching gave it: the matched
/// route's (the global section with the route's overrides applied), else the global section.
impl Config {
    pub fn limits_for(&self, route: Option<usize>) -> &LimitsConfig {
        route.map_or(&self.limits, |i| &self.routes[i].limits)
    }

    pub fn sse_for(&self, route: Option<usize>) -> &SseConfig {
        route.map_or(&self.sse, |i| &self.routes[i].sse)
    }

    pub fn websocket_for(&self, route: Option<usize>) -> &WebSocketConfig {
        route.map_or(&self.websocket, |i| &self.routes[i].websocket)
    }
}

#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub address: SocketAddr,
    /// Both set or both unset (validated).
    pub tls: Option<TlsFiles>,
    /// What happens to a client header whose name has `_` (`underscores_in_headers`).
    pub underscores_in_headers: UnderscoreHeaders,
    /// The largest request head (request line and header fields) a client may send; larger
    /// heads get 431 (default `32KiB`). It is also all the memory an unfinished head can hold.
    pub max_request_head: usize,
    /// How long a client has to deliver a whole request head, counted from the connection
    /// (first request) or from the head's first byte (later requests); then 408 (default `10s`).
    pub request_head_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request before it is closed
    /// (default `60s`).
    pub keepalive_timeout: Duration,
    /// Client connections open at once, streams included; over it 503 (default: derived from
    /// the open-file limit by [`connections_for_open_files`]).
    pub max_connections: u32,
    /// Client connections open at once from one address (IPv6: one /64); over it 429 (default
    /// unset: behind a load balancer every client shares its address).
    pub max_connections_per_ip: Option<u32>,
    /// Bind the listener with `SO_REUSEPORT`, so several streamguard processes share the port
    /// and the kernel spreads connections across them (default off).
    pub reuse_port: bool,
    /// HTTP/2 with prior knowledge on a plain-text listener (`h2c`), for a load balancer that
    /// speaks it; browsers never do (default off).
    pub h2c: bool,
}

/// `[http2]`: HTTP/2 towards clients (ALPN `h2` on TLS listeners, and `listen.h2c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Config {
    /// Offer `h2` by ALPN on a TLS listener (default on; `http/1.1` is always offered too, for
    /// WebSocket and older clients).
    pub enabled: bool,
    /// Streams one connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`); a
    /// stream handed to a relay still counts (default 100).
    pub max_concurrent_streams: u32,
    /// How long a connection with no stream at all (SSE streams count) is kept (default 3m).
    pub idle_timeout: Duration,
    /// The most response bytes one stream may have waiting in the connection for a client that
    /// does not read (default 64 KiB; the `h2` crate's own default is 400 KiB).
    pub max_send_buffer: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            enabled: true,
            max_concurrent_streams: 100,
            idle_timeout: Duration::from_secs(180),
            max_send_buffer: 64 * 1024,
        }
    }
}

/// `listen.underscores_in_headers`: CGI and WSGI servers fold `_` and `-` into the same variable
/// (`X_User` and `X-User` both become `HTTP_X_USER`), so a name with `_` can impersonate a
/// header the proxy checked or set under its `-` spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreHeaders {
    /// Drop such headers before the app sees them (nginx's default).
    Drop,
    /// Refuse the request with 400.
    Refuse,
    /// Pass them on (names that fold onto a proxy-owned header are still dropped).
    Pass,
}

/// `listen.max_request_head` when the key is absent.
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 32 * 1024;
/// `listen.request_head_timeout` when the key is absent.
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// `listen.keepalive_timeout` when the key is absent.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Files the process keeps open besides client connections and their upstreams: listeners,
/// the admin port, the runtime's event fds, log files, Pingora's pool of idle upstream
/// connections (128 by default) and refused connections being closed.
const RESERVED_FILES: u64 = 256;

/// The default `listen.max_connections` for a process allowed `open_files` descriptors. A
/// proxied stream holds two (the client's socket and its upstream's), so the cap is half of
/// what is left after a reserve: the proxy refuses with a 503 before `accept` would fail with
/// EMFILE, which stalls Pingora's accept loop for a second per failure and refuses no one
/// cleanly. The reserve shrinks with a tiny limit so the cap never drops to zero.
pub fn connections_for_open_files(open_files: u64) -> u32 {
    let reserve = RESERVED_FILES.min(open_files / 2);
    let cap = (open_files.saturating_sub(reserve) / 2).max(1);
    u32::try_from(cap).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// The status page lists the users holding the most streams (user ids on an operator page).
    pub show_users: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `host:port`; resolved at start-up.
    pub address: SocketAddr,
    pub connect_timeout: Duration,
    /// How long a stream waits for the app to take what the proxy forwards (WebSocket
    /// messages, a request body) before treating the app as gone.
    pub write_timeout: Duration,
    /// How long the app may take to send a response head (and, on the plain path, between two
    /// reads of the response) before the client gets 504.
    pub response_timeout: Duration,
    pub hide_error_bodies: bool,
    /// Lower-case names of response headers that never reach the client (`Server`,
    /// `X-Powered-By`: they tell an attacker which app and version to target).
    pub hide_headers: Vec<http::HeaderName>,
}

/// Process-level settings (`[server]`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Worker threads for the proxy service (default 1 per core is Pingora's; ours: 2).
    pub threads: usize,
    /// After SIGTERM (or `POST /drain`), how long the process stays unready but serving, while
    /// load balancers stop sending it new clients (default `5s`).
    pub drain_delay: Duration,
    /// Over how long open streams then end, spread evenly (default `20s`): their clients come
    /// back spread over it too, not in one burst. Also the window over which streams of a key a
    /// reload stopped trusting end.
    pub drain_window: Duration,
    /// The most a drain may take from SIGTERM to exit, whatever is still open (default `30s`;
    /// at least `drain_delay + drain_window`).
    pub drain_timeout: Duration,
    /// Poll the config file and every file it names, and reload when one changes (default off).
    pub watch_config: bool,
    /// How often `watch_config` looks (default `5s`).
    pub watch_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    pub allowed_origins: Vec<OriginPattern>,
    pub allow_credentials: bool,
    /// Upper-case method names.
    pub allowed_methods: Vec<String>,
    /// Lower-case header names.
    pub allowed_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Duration,
    pub require_origin: bool,
}

/// One `allowed_origins` entry, already split so matching is a few string compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `https://app.example.com` (scheme + host + optional port, lower-case, no trailing slash).
    Exact(String),
    /// `https://*.example.com`: any subdomain of `suffix` (stored as `.example.com`) with `scheme`.
    Wildcard { scheme: String, suffix: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Optional,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardAs {
    Header,
    Cookie,
    Query,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// Where the verification key material comes from (file contents already read at load time).
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// HMAC secret bytes (`secret` or `secret_file`).
    Secret(Vec<u8>),
    /// PEM public key (`public_key_file`): RSA, EC or Ed25519.
    PublicKeyPem(Vec<u8>),
    /// JWKS JSON document (`jwks_file`); keys picked by `kid`.
    Jwks(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, not even in debug output.
        f.write_str(match self {
            KeySource::Secret(_) => "Secret(<redacted>)",
            KeySource::PublicKeyPem(_) => "PublicKeyPem(..)",
            KeySource::Jwks(_) => "Jwks(..)",
        })
    }
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// `None` only when `mode = "off"` and no route turns auth on.
    pub key: Option<KeySource>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    /// Longest token verified, in bytes (default 8 KiB); a longer one is refused unread.
    pub max_token_size: usize,
    pub user_claim: String,
    pub roles_claim: String,
    pub query_params: Vec<String>,
    /// `Authorization` schemes the app verifies itself (e.g. `Basic`), passed through
    /// unverified; any other credential the proxy did not verify is removed. Never `Bearer`.
    pub pass_authorization_schemes: Vec<String>,
    pub cookie: String,
    pub forward_as: ForwardAs,
    pub forward_name: String,
    pub close_on_expiry: bool,
    /// e.g. `bearer.`: a `Sec-WebSocket-Protocol` entry with this prefix carries the token.
    pub websocket_protocol_prefix: Option<String>,
    pub session: SessionConfig,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub path: String,
    pub ttl: Duration,
    pub secure: bool,
    pub same_site: SameSite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `streamguard=debug`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOversize {
    Drop,
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInvalid {
    Pass,
    Drop,
    Close,
}

/// What happens to an SSE client that is so far behind that its buffer (`client_buffer`) or the
/// process-wide budget (`slow_buffer_total`) is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSlowClient {
    /// End the stream with the retry hint: `EventSource` reconnects with `Last-Event-ID` and
    /// the app replays what it can.
    Close,
    /// Drop whole events until the client has caught up, then tell it with a
    /// `streamguard.skipped` event (how many, and the last skipped `id`).
    Skip,
}

/// `[sse]`, or a route's `sse = {..}` merged over it. A zero duration means "off".
#[derive(Debug, Clone, PartialEq)]
pub struct SseConfig {
    pub heartbeat: Duration,
    pub heartbeat_comment: String,
    pub stale_after: Duration,
    pub retry: Option<Duration>,
    /// 0.0..=1.0
    pub retry_jitter: f64,
    pub max_event_size: usize,
    pub on_oversize: OnOversize,
    pub on_invalid: OnInvalid,
    pub write_timeout: Duration,
    /// Refuse an event stream the upstream answers to a request that did not announce one
    /// (`Accept: text/event-stream`): it would run through the plain proxy path, past
    /// every stream protection.
    pub require_accept: bool,
    /// Most bytes one stream keeps for a client that is behind (default 256 KiB). Nothing is
    /// allocated while the client keeps up.
    pub client_buffer: usize,
    /// Most bytes all streams together keep for clients that are behind (default 64 MiB).
    /// Process-wide: the value in force is `[sse]`'s, which routes inherit and cannot change.
    pub slow_buffer_total: usize,
    /// What a full buffer or budget does to the stream (default `close`).
    pub on_slow_client: OnSlowClient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRateLimit {
    Close,
    Drop,
}

/// `N/second|minute|hour|day` (e.g. `600/minute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub count: u32,
    pub per: Duration,
}

/// What becomes of a client's permessage-deflate offer (RFC 7692), `[websocket] compression`.
/// `max_message_size` has to hold for what the app gets, and compressed, a few kilobytes on the
/// wire inflate to megabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// The offer is removed before the app sees it, so no extension is negotiated and every
    /// message's wire size is its real size; a 101 that names an extension anyway is refused.
    Strip,
    /// permessage-deflate may be negotiated; the proxy inflates each compressed client message
    /// as it passes (output discarded) and holds its inflated size to `max_message_size`.
    Inflate,
}

/// `[websocket]`, or a route's `websocket = {..}` merged over it. A zero duration means "off".
#[derive(Debug, Clone, PartialEq)]
pub struct WebSocketConfig {
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_message_size: usize,
    pub messages_per_user: Option<RateSpec>,
    pub on_rate_limit: OnRateLimit,
    /// Default `Strip`.
    pub compression: Compression,
    /// Pings, pongs and closes one socket's client may send (pongs answering the proxy's own
    /// pings not counted); past it the socket is closed 1008. Default `20/second`, all of which
    /// may come at once.
    pub max_control_frames: RateSpec,
    /// Frames one client data message may be split into; past it the socket is closed 1009.
    /// Default 128.
    pub max_message_fragments: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUserLimit {
    Reject,
    EvictOldest,
}

/// An IPv4 or IPv6 network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix_len: u8,
}

/// `[limits]`, or a route's `limits = {..}` merged over it. `None` means unlimited.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    pub max_streams: Option<u32>,
    pub max_streams_per_user: Option<u32>,
    pub on_user_limit: OnUserLimit,
    pub connects_per_user: Option<RateSpec>,
    pub requests_per_ip: Option<RateSpec>,
    /// Extra requests allowed at once above the steady `requests_per_ip` rate.
    pub burst: u32,
    pub trusted_proxies: Vec<Cidr>,
}

/// `[limits.store]`: where per-user limit state lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// In this process only (the default): exact for one replica, nothing to run beside it.
    #[default]
    Memory,
    /// Shared by every replica through Redis or Valkey.
    Redis(RedisStoreConfig),
}

/// `[limits.store] kind = "redis"`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// `redis://`, `rediss://` (TLS) or `unix://` URL, checked to parse (not to answer).
    pub url: String,
    /// Where `password` was read from, for `check` to print.
    pub password_file: Option<PathBuf>,
    /// The contents of `password_file` (trailing newlines removed), read at load.
    pub password: Option<String>,
    /// Where `ca` was read from, for `check` to print.
    pub ca_file: Option<PathBuf>,
    /// PEM certificates that a `rediss://` server's certificate must chain to, instead of the
    /// system's roots (a private CA); read at load.
    pub ca: Option<Vec<u8>>,
    /// Prepended to every key and channel, so several services can share one Redis.
    pub key_prefix: String,
    /// Per operation; past it the store counts as down for that operation. Default 50 ms.
    pub timeout: Duration,
    /// How long a stream slot outlives the replica holding it. Default 30 s.
    pub lease: Duration,
    pub on_error: OnStoreError,
}

impl std::fmt::Debug for RedisStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password too; neither reaches debug output.
        f.debug_struct("RedisStoreConfig")
            .field("url", &redact_url(&self.url))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .field("on_error", &self.on_error)
            .finish()
    }
}

/// `url` with the password of its userinfo (`redis://user:password@host`) replaced by
/// `<redacted>`, for `check` and debug output.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// `[limits.store] on_error`: what a new stream gets while the shared store cannot answer.
/// Streams already open are never closed because of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// This replica's own in-memory limits (per replica, so N replicas allow N times a cap).
    Local,
    /// Admit (the global `max_streams` still applies).
    Open,
    /// Refuse with 503 and a jittered `Retry-After`.
    Closed,
}

/// One `[[route]]`, compiled.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The `path` string as written, for logs and `check`.
    pub path: String,
    pub segments: Vec<RouteSegment>,
    pub auth: AuthMode,
    /// Any of these roles admits; empty means no role check.
    pub roles: Vec<String>,
    /// `(path parameter name, claim name)`: the segment must equal the claim's string value.
    pub claims: Vec<(String, String)>,
    /// Effective settings for this route (global section with the route's overrides applied).
    pub sse: SseConfig,
    pub websocket: WebSocketConfig,
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSegment {
    Literal(String),
    /// `{name}`: matches exactly one non-empty segment.
    Param(String),
}

/// The documented defaults of `[sse]`.
impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            heartbeat: Duration::from_secs(15),
            heartbeat_comment: "ping".into(),
            stale_after: Duration::from_secs(45),
            retry: None,
            retry_jitter: 0.0,
            max_event_size: 1 << 20,
            on_oversize: OnOversize::Drop,
            on_invalid: OnInvalid::Pass,
            write_timeout: Duration::from_secs(30),
            require_accept: true,
            client_buffer: 256 << 10,
            slow_buffer_total: 64 << 20,
            on_slow_client: OnSlowClient::Close,
        }
    }
}

/// The documented defaults of `[websocket]`.
impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Duration::ZERO,
            max_message_size: 1 << 20,
            messages_per_user: None,
            on_rate_limit: OnRateLimit::Close,
            compression: Compression::Strip,
            max_control_frames: RateSpec {
                count: 20,
                per: Duration::from_secs(1),
            },
            max_message_fragments: 128,
        }
    }
}

/// The documented defaults of `[limits]`: no limit at all.
impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_streams: None,
            max_streams_per_user: None,
            on_user_limit: OnUserLimit::Reject,
            connects_per_user: None,
            requests_per_ip: None,
            burst: 0,
            trusted_proxies: Vec::new(),
        }
    }
}
