//! Raw file -> [`Config`]: defaults, `${VAR}` substitution, unit parsing and cross-key rules.
//!
//! Every check records a [`KeyError`] and carries on with a fallback value instead of
//! returning early, so the operator sees all problems from one run. Leaves go through a few
//! generic helpers on [`Cx`] (`value`, `text`, `text_list`) that attach the dotted key and the
//! line; the per-section functions only say which parser and default each key uses.
//!
//! `[sse]`, `[websocket]` and `[limits]` are validated by the same function whether they are
//! the global section (merged over the built-in defaults) or a route override (merged over the
//! effective global section).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use toml::Spanned;

use super::env::{substitute, EnvSource};
use super::raw::{
    RawAuth, RawConfig, RawCors, RawLimits, RawListen, RawLog, RawRoute, RawServer, RawSse,
    RawStore, RawWebSocket, Text, TextList,
};
use super::types::*;
use super::units::{format_duration, parse_duration, parse_rate, parse_size};
use super::KeyError;

// Names accepted for each enum-valued key; `show` uses the same tables to print them back.
pub(super) const AUTH_MODES: &[(&str, AuthMode)] = &[
    ("required", AuthMode::Required),
    ("optional", AuthMode::Optional),
    ("off", AuthMode::Off),
];
pub(super) const FORWARD_AS: &[(&str, ForwardAs)] = &[
    ("header", ForwardAs::Header),
    ("cookie", ForwardAs::Cookie),
    ("query", ForwardAs::Query),
];
pub(super) const SAME_SITE: &[(&str, SameSite)] = &[
    ("Strict", SameSite::Strict),
    ("Lax", SameSite::Lax),
    ("None", SameSite::None),
];
pub(super) const LOG_FORMATS: &[(&str, LogFormat)] =
    &[("json", LogFormat::Json), ("text", LogFormat::Text)];
pub(super) const ON_OVERSIZE: &[(&str, OnOversize)] =
    &[("drop", OnOversize::Drop), ("close", OnOversize::Close)];
pub(super) const ON_INVALID: &[(&str, OnInvalid)] = &[
    ("pass", OnInvalid::Pass),
    ("drop", OnInvalid::Drop),
    ("close", OnInvalid::Close),
];
pub(super) const ON_SLOW_CLIENT: &[(&str, OnSlowClient)] =
    &[("close", OnSlowClient::Close), ("skip", OnSlowClient::Skip)];
pub(super) const ON_RATE_LIMIT: &[(&str, OnRateLimit)] =
    &[("close", OnRateLimit::Close), ("drop", OnRateLimit::Drop)];
pub(super) const UNDERSCORES_IN_HEADERS: &[(&str, UnderscoreHeaders)] = &[
    ("drop", UnderscoreHeaders::Drop),
    ("refuse", UnderscoreHeaders::Refuse),
    ("pass", UnderscoreHeaders::Pass),
];
pub(super) const COMPRESSION: &[(&str, Compression)] = &[
    ("strip", Compression::Strip),
    ("inflate", Compression::Inflate),
];
pub(super) const ON_USER_LIMIT: &[(&str, OnUserLimit)] = &[
    ("reject", OnUserLimit::Reject),
    ("evict_oldest", OnUserLimit::EvictOldest),
];
pub(super) const ON_STORE_ERROR: &[(&str, OnStoreError)] = &[
    ("local", OnStoreError::Local),
    ("open", OnStoreError::Open),
    ("closed", OnStoreError::Closed),
];
/// `[limits.store] kind`; `true` is the shared (Redis) store.
const STORE_KINDS: &[(&str, bool)] = &[("memory", false), ("redis", true)];

/// Shortest HMAC secret accepted; below this a JWT can be brute-forced offline.
const MIN_SECRET_BYTES: usize = 16;

const WILDCARD_ORIGIN: &str = "\"*\" is not allowed: a wildcard origin lets any site read user \
    streams; list the origins (e.g. \"https://app.example.com\") or use \
    \"https://*.example.com\" for subdomains";

/// Validation state: where to find lines and files, and the errors found so far.
struct Cx<'a> {
    text: &'a str,
    base_dir: &'a Path,
    env: &'a dyn EnvSource,
    errors: Vec<KeyError>,
}

impl Cx<'_> {
    fn line<T>(&self, value: &Spanned<T>) -> usize {
        super::position(self.text, value.span().start).0
    }

    fn error(&mut self, key: impl Into<String>, line: Option<usize>, message: impl Into<String>) {
        self.errors.push(KeyError {
            key: key.into(),
            line,
            message: message.into(),
        });
    }

    /// Checks one optional leaf; on failure records the error at the leaf's line.
    /// `None` means absent or invalid: callers fall back to the default either way, because
    /// an invalid value already guarantees the whole load fails.
    fn value<T, U, E: Display>(
        &mut self,
        key: &str,
        raw: Option<&Spanned<T>>,
        check: impl FnOnce(&T) -> Result<U, E>,
    ) -> Option<U> {
        let raw = raw?;
        match check(raw.get_ref()) {
            Ok(value) => Some(value),
            Err(e) => {
                let line = self.line(raw);
                self.error(key, Some(line), e.to_string());
                None
            }
        }
    }

    /// A string leaf: `${VAR}` substitution first, then `parse`.
    fn text<U, E: Display>(
        &mut self,
        key: &str,
        raw: Option<&Text>,
        parse: impl FnOnce(&str) -> Result<U, E>,
    ) -> Option<U> {
        let env = self.env;
        self.value(key, raw, |s: &String| {
            let s = substitute(s, env).map_err(|e| e.to_string())?;
            parse(&s).map_err(|e| e.to_string())
        })
    }

    /// A list of string leaves, each checked (and keyed `key[i]`) on its own; invalid items
    /// are dropped after being reported.
    fn text_list<U, E: Display>(
        &mut self,
        key: &str,
        raw: Option<&TextList>,
        mut parse: impl FnMut(&str) -> Result<U, E>,
    ) -> Option<Vec<U>> {
        let items = raw?.get_ref();
        Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.text(&format!("{key}[{i}]"), Some(item), &mut parse))
                .collect(),
        )
    }
}

fn flag(raw: Option<&Spanned<bool>>, default: bool) -> bool {
    raw.map_or(default, |b| *b.get_ref())
}

/// A parser for an enum-valued key from its table of names (case-insensitive).
fn choice<T: Copy>(options: &'static [(&'static str, T)]) -> impl Fn(&str) -> Result<T, String> {
    move |s| {
        options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
                format!(
                    "{s:?} is not a known value; use one of {}",
                    names.join(", ")
                )
            })
    }
}

/// A parser for an integer key with a lower bound; `hint` says what to write instead.
fn at_least<T: TryFrom<i64>>(min: i64, hint: &'static str) -> impl Fn(&i64) -> Result<T, String> {
    move |n| {
        if *n < min {
            return Err(format!("{n} is below the minimum of {min}{hint}"));
        }
        T::try_from(*n).map_err(|_| format!("{n} is too large"))
    }
}

/// Wraps a unit parser so that zero is rejected, for keys where zero cannot mean "off".
fn nonzero<T: Default + PartialEq, E: Display>(
    parse: impl Fn(&str) -> Result<T, E>,
) -> impl Fn(&str) -> Result<T, String> {
    move |s| match parse(s) {
        Ok(value) if value == T::default() => Err(format!(
            "{s:?} must be greater than zero; this key has no \"off\" setting"
        )),
        Ok(value) => Ok(value),
        Err(e) => Err(e.to_string()),
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("the value is empty; give a name or remove the key".into())
    } else {
        Ok(s.to_owned())
    }
}

/// An HTTP token (RFC 9110 `tchar`s): header names, methods, cookie and parameter names.
fn http_token(s: &str) -> Result<String, String> {
    if s == "*" {
        return Err(
            "\"*\" is not allowed: with credentials, browsers treat \"*\" as a literal \
                    name rather than \"everything\"; list the names"
                .into(),
        );
    }
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if s.is_empty() || !s.chars().all(tchar) {
        return Err(format!(
            "{s:?} is not a valid HTTP token; use letters, digits and !#$%&'*+-.^_`|~ only \
             (no spaces, quotes, ':' or ';')"
        ));
    }
    Ok(s.to_owned())
}

/// A response header the proxy may remove: any header name but the ones that frame the
/// message or carry the proxy's own answer.
fn hidden_header(s: &str) -> Result<http::HeaderName, String> {
    let name = http_token(s)?.to_ascii_lowercase();
    const NEEDED: &[&str] = &[
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "content-type",
        "sec-websocket-accept",
    ];
    if NEEDED.contains(&name.as_str()) || name.starts_with("access-control-") {
        return Err(format!(
            "{s:?} cannot be hidden: the proxy needs it to frame or describe the answer; \
             list headers such as \"server\" or \"x-powered-by\""
        ));
    }
    http::HeaderName::try_from(name).map_err(|e| format!("{s:?} is not a header name ({e})"))
}

/// An `Authorization` scheme the app may receive unverified: anything but Bearer, which is what
/// the proxy verifies.
fn passable_scheme(s: &str) -> Result<String, String> {
    let scheme = http_token(s)?;
    if scheme
        .get(..6)
        .is_some_and(|start| start.eq_ignore_ascii_case("bearer"))
    {
        return Err(format!(
            "{s:?} cannot pass unverified: bearer tokens are what streamguard verifies (a \
             verified one reaches the app per auth.forward_as), and an app that looks for \
             \"Bearer\" would take an unverified one for verified; list only the app's own \
             schemes, e.g. [\"Basic\"]"
        ));
    }
    Ok(scheme)
}

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not an IP:port address; write e.g. \"0.0.0.0:8080\" or \"[::]:8080\"")
    })
}

/// Resolves `host:port` once at start-up; the first address wins.
fn resolve(s: &str) -> Result<SocketAddr, String> {
    let fix = "write host:port, e.g. \"127.0.0.1:3000\" or \"app:3000\"";
    let mut addrs = s
        .trim()
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} cannot be resolved ({e}); {fix}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{s:?} resolved to no addresses; {fix}"))
}

fn resolve_path(base_dir: &Path, path: &str) -> PathBuf {
    base_dir.join(path)
}

/// Reads a file named in the config. The message names the path but never the contents.
fn read_file(base_dir: &Path, path: &str) -> Result<Vec<u8>, String> {
    let full = resolve_path(base_dir, path);
    std::fs::read(&full).map_err(|e| {
        format!(
            "cannot read {}: {e}; check the path (relative paths start at the config file's \
             directory) and its permissions",
            full.display()
        )
    })
}

/// Reads a file that other components open later, so a typo is caught by `check`.
fn readable_file(base_dir: &Path, path: &str) -> Result<PathBuf, String> {
    read_file(base_dir, path).map(|_| resolve_path(base_dir, path))
}

fn origin(s: &str) -> Result<OriginPattern, String> {
    let lower = s.trim().to_ascii_lowercase();
    let example = "write scheme://host[:port], e.g. \"https://app.example.com\"";
    if lower == "*" {
        return Err(WILDCARD_ORIGIN.into());
    }
    if lower == "null" {
        return Err(
            "\"null\" is not allowed: sandboxed iframes and file:// pages send \
                    \"Origin: null\", so allowing it lets any such page read user streams; \
                    list real origins instead"
                .into(),
        );
    }
    let (scheme, authority) = lower
        .split_once("://")
        .ok_or_else(|| format!("{s:?} has no scheme; {example}"))?;
    let misplaced_wildcard = || {
        format!(
            "{s:?} has \"*\" in the wrong place: it may only be the whole first label of the \
             host, as in \"https://*.example.com\""
        )
    };
    if scheme.contains('*') {
        return Err(misplaced_wildcard());
    }
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "{s:?} has scheme {scheme:?}; only http and https are origins"
        ));
    }
    if authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{s:?} has a path, query, user or trailing slash, which an Origin header never \
             carries; {example}"
        ));
    }
    let (host, port) =
        split_port(authority).ok_or_else(|| format!("{s:?} has an invalid port; {example}"))?;
    // Browsers omit the default port from Origin, so keeping it would never match.
    let port = port.filter(|p| !matches!((scheme, *p), ("https", 443) | ("http", 80)));
    let (wildcard, host) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if host.contains('*') {
        return Err(misplaced_wildcard());
    }
    if !valid_host(host) {
        return Err(format!("{s:?} does not have a valid host name; {example}"));
    }
    let port = port.map_or_else(String::new, |p| format!(":{p}"));
    if !wildcard {
        return Ok(OriginPattern::Exact(format!("{scheme}://{host}{port}")));
    }
    if !port.is_empty() {
        return Err(format!(
            "{s:?} combines a wildcard with a port; list those origins one by one"
        ));
    }
    if !host.contains('.') {
        return Err(format!(
            "{s:?} would admit every site under the top-level domain {host:?}; use a domain \
             you own, e.g. \"https://*.example.com\""
        ));
    }
    Ok(OriginPattern::Wildcard {
        scheme: scheme.to_owned(),
        suffix: format!(".{host}"),
    })
}

/// Splits `host[:port]` (IPv6 hosts in brackets); `None` for a malformed port.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let port_at = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => i,
        _ => return Some((authority, None)),
    };
    let port = authority[port_at + 1..]
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)?;
    Some((&authority[..port_at], Some(port)))
}

fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn cidr(s: &str) -> Result<Cidr, String> {
    let example =
        "write e.g. \"10.0.0.0/8\", \"::1/128\" or a single address such as \"192.0.2.7\"";
    let (addr, prefix) = match s.trim().split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (s.trim(), None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network; {example}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("{s:?} has prefix length {p:?}; it must be 0..={max}"))?,
    };
    if prefix_len == 0 {
        return Err(format!(
            "{s:?} trusts every address, so any client could forge X-Forwarded-For and dodge \
             per-IP limits; list your proxies' networks"
        ));
    }
    let network = mask(addr, prefix_len);
    if network != addr {
        return Err(format!(
            "{s:?} has host bits set; write the network address \"{network}/{prefix_len}\""
        ));
    }
    Ok(Cidr { addr, prefix_len })
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4(std::net::Ipv4Addr::from(u32::from(v4) & bits))
        }
        IpAddr::V6(v6) => {
            let bits = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & bits))
        }
    }
}

/// Checks a `tracing` filter. `EnvFilter` alone would accept a typo such as `verbose` as a
/// target name (meaning "trace everything in target verbose"), so bare words must be levels.
fn log_level(s: &str) -> Result<String, String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    let example = "e.g. \"info\" or \"streamguard=debug,pingora=warn\"";
    if s.trim().is_empty() {
        return Err(format!("the filter is empty; {example}"));
    }
    for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let is_level = LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive));
        if !is_level && !directive.contains(['=', '[']) {
            return Err(format!(
                "{directive:?} is not a level; use trace, debug, info, warn, error or off, or \
                 target=level ({example})"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map_err(|e| format!("{s:?} is not a valid log filter ({e}); {example}"))?;
    Ok(s.to_owned())
}

fn algorithm(s: &str) -> Result<Algorithm, String> {
    Algorithm::from_str(s).map_err(|_| {
        format!(
            "{s:?} is not a supported JWT algorithm; use one of HS256, HS384, HS512, RS256, \
             RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
        )
    })
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Proves at load time that a PEM key can verify every configured algorithm.
fn check_pem(pem: &[u8], algorithms: &[Algorithm]) -> Result<(), String> {
    use jsonwebtoken::DecodingKey;
    for &alg in algorithms {
        let (kind, decoded) = match alg {
            Algorithm::ES256 | Algorithm::ES384 => ("EC", DecodingKey::from_ec_pem(pem)),
            Algorithm::EdDSA => ("Ed25519", DecodingKey::from_ed_pem(pem)),
            _ => ("RSA", DecodingKey::from_rsa_pem(pem)),
        };
        decoded.map_err(|e| {
            format!(
                "the file is not a PEM {kind} public key, which {alg:?} needs ({e}); export \
                     the public key with e.g. `openssl pkey -pubout`"
            )
        })?;
    }
    Ok(())
}

fn check_jwks(json: &str) -> Result<(), String> {
    serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(json)
        .map(|_| ())
        .map_err(|e| {
            format!("the file is not a JWKS document ({e}); it must look like {{\"keys\": [..]}}")
        })
}

/// Removes the newline an editor or `echo` leaves at the end of a secret file.
fn trim_trailing_newlines(mut bytes: Vec<u8>) -> Vec<u8> {
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    bytes
}

fn route_path(s: &str) -> Result<Vec<RouteSegment>, String> {
    let example = "e.g. \"/events/{user}\"";
    let rest = s
        .strip_prefix('/')
        .ok_or_else(|| format!("{s:?} must start with \"/\", {example}"))?;
    if s.contains(['?', '#']) {
        return Err(format!(
            "{s:?} contains a query or fragment; routes match the path only, {example}"
        ));
    }
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut segments: Vec<RouteSegment> = Vec::new();
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err(format!(
                "{s:?} has an empty segment (a doubled or trailing \"/\"); remove it"
            ));
        }
        let param = segment.strip_prefix('{').and_then(|p| p.strip_suffix('}'));
        let next = match param {
            Some(name)
                if !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                RouteSegment::Param(name.to_owned())
            }
            _ if segment.contains(['{', '}']) => {
                return Err(format!(
                    "segment {segment:?} of {s:?} is not a parameter: write a whole segment \
                     \"{{name}}\" with a name of letters, digits and '_'"
                ));
            }
            _ => RouteSegment::Literal(segment.to_owned()),
        };
        if matches!(&next, RouteSegment::Param(_)) && segments.contains(&next) {
            return Err(format!(
                "{s:?} uses the parameter {segment} twice; give each parameter its own name"
            ));
        }
        segments.push(next);
    }
    Ok(segments)
}

fn heartbeat_comment(s: &str) -> Result<String, String> {
    if s.contains(['\r', '\n']) {
        return Err(
            "the comment contains a line break, which would end the SSE comment early; \
                    use a single line such as \"ping\""
                .into(),
        );
    }
    if s.starts_with(':') {
        return Err(format!(
            "{s:?} starts with ':'; write the text only (e.g. \"ping\"), the ':' is added"
        ));
    }
    Ok(s.to_owned())
}

fn jitter(j: &f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(j) {
        Ok(*j)
    } else {
        Err(format!(
            "{j} is outside 0.0..=1.0; it is the fraction of `retry` to randomize, e.g. 0.2"
        ))
    }
}

/// `[sse]` or a route's `sse = {..}`, each key falling back to `base`.
fn sse(cx: &mut Cx<'_>, prefix: &str, raw: &RawSse, base: &SseConfig) -> SseConfig {
    let k = |name: &str| format!("{prefix}.{name}");
    SseConfig {
        heartbeat: cx
            .text(&k("heartbeat"), raw.heartbeat.as_ref(), parse_duration)
            .unwrap_or(base.heartbeat),
        heartbeat_comment: cx
            .text(
                &k("heartbeat_comment"),
                raw.heartbeat_comment.as_ref(),
                heartbeat_comment,
            )
            .unwrap_or_else(|| base.heartbeat_comment.clone()),
        stale_after: cx
            .text(&k("stale_after"), raw.stale_after.as_ref(), parse_duration)
            .unwrap_or(base.stale_after),
        retry: cx
            .text(&k("retry"), raw.retry.as_ref(), parse_duration)
            .or(base.retry),
        retry_jitter: cx
            .value(&k("retry_jitter"), raw.retry_jitter.as_ref(), jitter)
            .unwrap_or(base.retry_jitter),
        max_event_size: cx
            .text(
                &k("max_event_size"),
                raw.max_event_size.as_ref(),
                nonzero(parse_size),
            )
            .unwrap_or(base.max_event_size),
        on_oversize: cx
            .text(
                &k("on_oversize"),
                raw.on_oversize.as_ref(),
                choice(ON_OVERSIZE),
            )
            .unwrap_or(base.on_oversize),
        on_invalid: cx
            .text(
                &k("on_invalid"),
                raw.on_invalid.as_ref(),
                choice(ON_INVALID),
            )
            .unwrap_or(base.on_invalid),
        write_timeout: cx
            .text(
                &k("write_timeout"),
                raw.write_timeout.as_ref(),
                parse_duration,
            )
            .unwrap_or(base.write_timeout),
        require_accept: flag(raw.require_accept.as_ref(), base.require_accept),
        client_buffer: cx
            .text(
                &k("client_buffer"),
                raw.client_buffer.as_ref(),
                nonzero(parse_size),
            )
            .unwrap_or(base.client_buffer),
        slow_buffer_total: cx
            .text(
                &k("slow_buffer_total"),
                raw.slow_buffer_total.as_ref(),
                nonzero(parse_size),
            )
            .unwrap_or(base.slow_buffer_total),
        on_slow_client: cx
            .text(
                &k("on_slow_client"),
                raw.on_slow_client.as_ref(),
                choice(ON_SLOW_CLIENT),
            )
            .unwrap_or(base.on_slow_client),
    }
}

/// `[websocket]` or a route's `websocket = {..}`, each key falling back to `base`.
fn websocket(
    cx: &mut Cx<'_>,
    prefix: &str,
    raw: &RawWebSocket,
    base: &WebSocketConfig,
) -> WebSocketConfig {
    let k = |name: &str| format!("{prefix}.{name}");
    WebSocketConfig {
        ping_interval: cx
            .text(
                &k("ping_interval"),
                raw.ping_interval.as_ref(),
                parse_duration,
            )
            .unwrap_or(base.ping_interval),
        pong_timeout: cx
            .text(
                &k("pong_timeout"),
                raw.pong_timeout.as_ref(),
                parse_duration,
            )
            .unwrap_or(base.pong_timeout),
        idle_timeout: cx
            .text(
                &k("idle_timeout"),
                raw.idle_timeout.as_ref(),
                parse_duration,
            )
            .unwrap_or(base.idle_timeout),
        max_message_size: cx
            .text(
                &k("max_message_size"),
                raw.max_message_size.as_ref(),
                nonzero(parse_size),
            )
            .unwrap_or(base.max_message_size),
        messages_per_user: cx
            .text(
                &k("messages_per_user"),
                raw.messages_per_user.as_ref(),
                parse_rate,
            )
            .or(base.messages_per_user),
        on_rate_limit: cx
            .text(
                &k("on_rate_limit"),
                raw.on_rate_limit.as_ref(),
                choice(ON_RATE_LIMIT),
            )
            .unwrap_or(base.on_rate_limit),
        compression: cx
            .text(
                &k("compression"),
                raw.compression.as_ref(),
                choice(COMPRESSION),
            )
            .unwrap_or(base.compression),
        max_control_frames: cx
            .text(
                &k("max_control_frames"),
                raw.max_control_frames.as_ref(),
                parse_rate,
            )
            .unwrap_or(base.max_control_frames),
        max_message_fragments: cx
            .value(
                &k("max_message_fragments"),
                raw.max_message_fragments.as_ref(),
                at_least(1, "; a message is at least one frame"),
            )
            .unwrap_or(base.max_message_fragments),
    }
}

/// `[limits]` or a route's `limits = {..}`, each key falling back to `base`.
fn limits(cx: &mut Cx<'_>, prefix: &str, raw: &RawLimits, base: &LimitsConfig) -> LimitsConfig {
    let k = |name: &str| format!("{prefix}.{name}");
    let no_limit = "; remove the key for no limit";
    LimitsConfig {
        max_streams: cx
            .value(
                &k("max_streams"),
                raw.max_streams.as_ref(),
                at_least(1, no_limit),
            )
            .or(base.max_streams),
        max_streams_per_user: cx
            .value(
                &k("max_streams_per_user"),
                raw.max_streams_per_user.as_ref(),
                at_least(1, no_limit),
            )
            .or(base.max_streams_per_user),
        on_user_limit: cx
            .text(
                &k("on_user_limit"),
                raw.on_user_limit.as_ref(),
                choice(ON_USER_LIMIT),
            )
            .unwrap_or(base.on_user_limit),
        connects_per_user: cx
            .text(
                &k("connects_per_user"),
                raw.connects_per_user.as_ref(),
                parse_rate,
            )
            .or(base.connects_per_user),
        requests_per_ip: cx
            .text(
                &k("requests_per_ip"),
                raw.requests_per_ip.as_ref(),
                parse_rate,
            )
            .or(base.requests_per_ip),
        burst: cx
            .value(&k("burst"), raw.burst.as_ref(), at_least(0, ""))
            .unwrap_or(base.burst),
        trusted_proxies: cx
            .text_list(&k("trusted_proxies"), raw.trusted_proxies.as_ref(), cidr)
            .unwrap_or_else(|| base.trusted_proxies.clone()),
    }
}

fn listen(cx: &mut Cx<'_>, raw: &RawListen) -> ListenConfig {
    let base_dir = cx.base_dir;
    let address = cx
        .text("listen.address", raw.address.as_ref(), socket_addr)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080)));
    let cert = cx.text("listen.tls_cert_file", raw.tls_cert_file.as_ref(), |p| {
        readable_file(base_dir, p)
    });
    let key = cx.text("listen.tls_key_file", raw.tls_key_file.as_ref(), |p| {
        readable_file(base_dir, p)
    });
    // Judge "both or neither" on what was written, so an unreadable file is not also
    // reported as missing.
    let half = match (&raw.tls_cert_file, &raw.tls_key_file) {
        (Some(set), None) => Some((set, "tls_cert_file", "tls_key_file")),
        (None, Some(set)) => Some((set, "tls_key_file", "tls_cert_file")),
        _ => None,
    };
    if let Some((set, present, absent)) = half {
        let line = cx.line(set);
        cx.error(
            format!("listen.{absent}"),
            Some(line),
            format!(
                "missing: listen.{present} is set, so set listen.{absent} too (or remove both \
                 to serve plain HTTP)"
            ),
        );
    }
    let tls = cert.zip(key).map(|(cert_file, key_file)| TlsFiles {
        cert_file,
        key_file,
    });
    let underscores_in_headers = cx
        .text(
            "listen.underscores_in_headers",
            raw.underscores_in_headers.as_ref(),
            choice(UNDERSCORES_IN_HEADERS),
        )
        .unwrap_or(UnderscoreHeaders::Drop);
    let no_limit = "; remove the key for no per-address limit";
    ListenConfig {
        address,
        tls,
        underscores_in_headers,
        max_request_head: cx
            .text(
                "listen.max_request_head",
                raw.max_request_head.as_ref(),
                request_head_size,
            )
            .unwrap_or(DEFAULT_MAX_REQUEST_HEAD),
        request_head_timeout: cx
            .text(
                "listen.request_head_timeout",
                raw.request_head_timeout.as_ref(),
                nonzero(parse_duration),
            )
            .unwrap_or(DEFAULT_REQUEST_HEAD_TIMEOUT),
        keepalive_timeout: cx
            .text(
                "listen.keepalive_timeout",
                raw.keepalive_timeout.as_ref(),
                nonzero(parse_duration),
            )
            .unwrap_or(DEFAULT_KEEPALIVE_TIMEOUT),
        max_connections: cx
            .value(
                "listen.max_connections",
                raw.max_connections.as_ref(),
                at_least(1, ""),
            )
            .unwrap_or_else(|| connections_for_open_files(open_files_limit())),
        max_connections_per_ip: cx.value(
            "listen.max_connections_per_ip",
            raw.max_connections_per_ip.as_ref(),
            at_least(1, no_limit),
        ),
        reuse_port: flag(raw.reuse_port.as_ref(), false),
        h2c: flag(raw.h2c.as_ref(), false),
    }
}

/// Bounds of `listen.max_request_head`: below 1 KiB a bearer token and a few cookies no longer
/// fit; above 256 KiB the cap stops bounding what a crowd of unfinished heads can hold.
const MIN_REQUEST_HEAD: usize = 1024;
const MAX_REQUEST_HEAD: usize = 256 * 1024;

fn request_head_size(s: &str) -> Result<usize, String> {
    let size = parse_size(s).map_err(|e| e.to_string())?;
    if size < MIN_REQUEST_HEAD {
        Err(format!(
            "{s:?} is below the minimum of \"1KiB\": a request with a bearer token and a few \
             cookies would not fit; the default is \"32KiB\""
        ))
    } else if size > MAX_REQUEST_HEAD {
        Err(format!(
            "{s:?} is above the maximum of \"256KiB\": every unfinished head may hold this \
             much memory; the default is \"32KiB\""
        ))
    } else {
        Ok(size)
    }
}

/// Open-file soft limit assumed where `/proc/self/limits` cannot be read: the usual default,
/// so the derived connection cap errs low rather than high.
const FALLBACK_OPEN_FILES: u64 = 1024;

/// This process's soft limit on open files: the one `accept` runs into.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| soft_open_files(&text))
        .unwrap_or(FALLBACK_OPEN_FILES)
}

/// The soft "Max open files" value of a `/proc/<pid>/limits` text.
fn soft_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        soft => soft.parse().ok(),
    }
}

fn upstream(cx: &mut Cx<'_>, raw: &RawConfig) -> Option<UpstreamConfig> {
    let section = &raw.upstream;
    if section.address.is_none() {
        cx.error(
            "upstream.address",
            None,
            "missing: set the app's host:port under [upstream], e.g. address = \"127.0.0.1:3000\"",
        );
    }
    let address = cx.text("upstream.address", section.address.as_ref(), resolve);
    let connect_timeout = cx
        .text(
            "upstream.connect_timeout",
            section.connect_timeout.as_ref(),
            nonzero(parse_duration),
        )
        .unwrap_or(Duration::from_secs(2));
    let write_timeout = cx
        .text(
            "upstream.write_timeout",
            section.write_timeout.as_ref(),
            nonzero(parse_duration),
        )
        .unwrap_or(Duration::from_secs(30));
    let response_timeout = cx
        .text(
            "upstream.response_timeout",
            section.response_timeout.as_ref(),
            nonzero(parse_duration),
        )
        .unwrap_or(Duration::from_secs(60));
    let hide_headers = cx
        .text_list(
            "upstream.hide_headers",
            section.hide_headers.as_ref(),
            hidden_header,
        )
        .unwrap_or_else(|| {
            [
                http::header::SERVER,
                http::HeaderName::from_static("x-powered-by"),
            ]
            .to_vec()
        });
    address.map(|address| UpstreamConfig {
        address,
        connect_timeout,
        write_timeout,
        response_timeout,
        hide_error_bodies: flag(section.hide_error_bodies.as_ref(), true),
        hide_headers,
    })
}

fn server(cx: &mut Cx<'_>, raw: &RawServer) -> ServerConfig {
    let duration = |cx: &mut Cx<'_>, key: &str, value: Option<&Text>, default: u64| {
        cx.text(key, value, parse_duration)
            .unwrap_or(Duration::from_secs(default))
    };
    let drain_delay = duration(cx, "server.drain_delay", raw.drain_delay.as_ref(), 5);
    let drain_window = duration(cx, "server.drain_window", raw.drain_window.as_ref(), 20);
    let drain_timeout = cx
        .text(
            "server.drain_timeout",
            raw.drain_timeout.as_ref(),
            nonzero(parse_duration),
        )
        .unwrap_or(Duration::from_secs(30));
    if drain_timeout < drain_delay + drain_window {
        let line = raw
            .drain_timeout
            .as_ref()
            .or(raw.drain_window.as_ref())
            .or(raw.drain_delay.as_ref())
            .map(|value| cx.line(value));
        cx.error(
            "server.drain_timeout",
            line,
            format!(
                "{} is shorter than server.drain_delay + server.drain_window ({}): the process \
                 would exit before the drain could end its streams; raise drain_timeout or \
                 shorten the others",
                format_duration(drain_timeout),
                format_duration(drain_delay + drain_window)
            ),
        );
    }
    ServerConfig {
        threads: cx
            .value("server.threads", raw.threads.as_ref(), at_least(1, ""))
            .unwrap_or(2),
        drain_delay,
        drain_window,
        drain_timeout,
        watch_config: flag(raw.watch_config.as_ref(), false),
        watch_interval: cx
            .text(
                "server.watch_interval",
                raw.watch_interval.as_ref(),
                nonzero(parse_duration),
            )
            .unwrap_or(Duration::from_secs(5)),
    }
}

fn cors(cx: &mut Cx<'_>, raw: &RawCors) -> CorsConfig {
    let strings = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    CorsConfig {
        allowed_origins: cx
            .text_list("cors.allowed_origins", raw.allowed_origins.as_ref(), origin)
            .unwrap_or_default(),
        allow_credentials: flag(raw.allow_credentials.as_ref(), true),
        allowed_methods: cx
            .text_list("cors.allowed_methods", raw.allowed_methods.as_ref(), |s| {
                http_token(s).map(|m| m.to_ascii_uppercase())
            })
            .unwrap_or_else(|| strings(&["GET", "POST"])),
        allowed_headers: cx
            .text_list("cors.allowed_headers", raw.allowed_headers.as_ref(), |s| {
                http_token(s).map(|h| h.to_ascii_lowercase())
            })
            .unwrap_or_else(|| strings(&["authorization", "content-type", "last-event-id"])),
        expose_headers: cx
            .text_list("cors.expose_headers", raw.expose_headers.as_ref(), |s| {
                http_token(s).map(|h| h.to_ascii_lowercase())
            })
            .unwrap_or_default(),
        max_age: cx
            .text("cors.max_age", raw.max_age.as_ref(), parse_duration)
            .unwrap_or(Duration::from_secs(600)),
        require_origin: flag(raw.require_origin.as_ref(), false),
    }
}

/// Why a verification key is needed, for the "no key" message.
fn key_needed_by(mode: AuthMode, routes: &[RouteConfig]) -> Option<String> {
    if mode != AuthMode::Off {
        let name = AUTH_MODES
            .iter()
            .find(|(_, m)| *m == mode)
            .map_or("on", |(n, _)| n);
        return Some(format!("auth.mode = {name:?}"));
    }
    routes
        .iter()
        .position(|r| r.auth != AuthMode::Off)
        .map(|i| format!("route[{i}] turns auth on"))
}

/// Reads the one configured key source, enforcing "exactly one" and matching it to the
/// algorithms (an HMAC secret for HS*, a public key for the rest).
fn auth_key(
    cx: &mut Cx<'_>,
    raw: &RawAuth,
    algorithms: &[Algorithm],
    needed_by: Option<String>,
) -> Option<KeySource> {
    let sources = [
        ("secret", &raw.secret),
        ("secret_file", &raw.secret_file),
        ("public_key_file", &raw.public_key_file),
        ("jwks_file", &raw.jwks_file),
    ];
    let given: Vec<(&str, &Text)> = sources
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (*name, v)))
        .collect();
    let (name, value) = match given.as_slice() {
        [] => {
            if let Some(reason) = needed_by {
                cx.error(
                    "auth",
                    None,
                    format!(
                        "no verification key, but {reason}; set one of auth.secret, \
                         auth.secret_file, auth.public_key_file or auth.jwks_file \
                         (or set auth.mode = \"off\")"
                    ),
                );
            }
            return None;
        }
        [one] => *one,
        [(first, _), rest @ ..] => {
            for (name, value) in rest {
                let line = cx.line(value);
                cx.error(
                    format!("auth.{name}"),
                    Some(line),
                    format!(
                        "auth.{first} is also set; keep exactly one of auth.secret, \
                         auth.secret_file, auth.public_key_file and auth.jwks_file"
                    ),
                );
            }
            return None;
        }
    };

    let key = format!("auth.{name}");
    let line = cx.line(value);
    let base_dir = cx.base_dir;
    let wants_secret = algorithms.iter().any(|a| is_hmac(*a));
    let is_secret = matches!(name, "secret" | "secret_file");
    if wants_secret != is_secret && !algorithms.is_empty() {
        let fix = if wants_secret {
            "HS* algorithms verify with a shared secret; set auth.secret or auth.secret_file, or \
             switch auth.algorithms to e.g. [\"RS256\"]"
        } else {
            "asymmetric algorithms verify with a public key; set auth.public_key_file or \
             auth.jwks_file, or switch auth.algorithms to e.g. [\"HS256\"]"
        };
        cx.error(
            &key,
            Some(line),
            format!("does not fit auth.algorithms: {fix}"),
        );
        return None;
    }

    let source = match name {
        "secret" => cx.text(&key, Some(value), |s| {
            Ok::<_, String>(s.as_bytes().to_vec())
        }),
        "secret_file" => cx.text(&key, Some(value), |p| {
            read_file(base_dir, p).map(trim_trailing_newlines)
        }),
        "public_key_file" => {
            return cx.text(&key, Some(value), |p| {
                let pem = read_file(base_dir, p)?;
                check_pem(&pem, algorithms)
                    .map_err(|e| format!("{}: {e}", resolve_path(base_dir, p).display()))?;
                Ok::<_, String>(KeySource::PublicKeyPem(pem))
            });
        }
        _ => {
            return cx.text(&key, Some(value), |p| {
                let bytes = read_file(base_dir, p)?;
                let shown = resolve_path(base_dir, p);
                let json = String::from_utf8(bytes)
                    .map_err(|_| format!("{} is not UTF-8 JSON", shown.display()))?;
                check_jwks(&json).map_err(|e| format!("{}: {e}", shown.display()))?;
                Ok::<_, String>(KeySource::Jwks(json))
            });
        }
    }?;
    if source.len() < MIN_SECRET_BYTES {
        // Report the length only: the secret itself must never reach a log.
        cx.error(
            &key,
            Some(line),
            format!(
                "the HMAC secret is {} bytes; it must be at least {MIN_SECRET_BYTES} bytes (32 \
                 or more recommended), e.g. the output of `openssl rand -base64 32`",
                source.len()
            ),
        );
        return None;
    }
    Some(KeySource::Secret(source))
}

fn auth(cx: &mut Cx<'_>, raw: &RawAuth, mode: AuthMode, routes: &[RouteConfig]) -> AuthConfig {
    let algorithms = match cx.text_list("auth.algorithms", raw.algorithms.as_ref(), algorithm) {
        None => vec![Algorithm::HS256],
        Some(algorithms) => {
            let hmac: Vec<&Algorithm> = algorithms.iter().filter(|a| is_hmac(**a)).collect();
            let other = algorithms.iter().find(|a| !is_hmac(**a));
            if let (Some(list), Some(h), Some(o)) = (&raw.algorithms, hmac.first(), other) {
                let line = cx.line(list);
                cx.error(
                    "auth.algorithms",
                    Some(line),
                    format!(
                        "mixes {h:?} with {o:?}: accepting HMAC and public-key algorithms \
                         together allows algorithm confusion (a token signed with the public \
                         key as an HMAC secret would verify); use only HS* with a secret or \
                         only asymmetric algorithms with a public key"
                    ),
                );
            }
            if let (Some(list), true) = (&raw.algorithms, algorithms.is_empty()) {
                let line = cx.line(list);
                cx.error(
                    "auth.algorithms",
                    Some(line),
                    "no algorithm is listed, so no token could verify; list at least one, \
                     e.g. [\"HS256\"]",
                );
            }
            algorithms
        }
    };
    let key = auth_key(cx, raw, &algorithms, key_needed_by(mode, routes));
    let name = |cx: &mut Cx<'_>, key: &str, raw: Option<&Text>, default: &str| {
        cx.text(key, raw, non_empty)
            .unwrap_or_else(|| default.to_owned())
    };
    let session = &raw.session;
    let secure = flag(session.secure.as_ref(), true);
    let same_site = cx
        .text(
            "auth.session.same_site",
            session.same_site.as_ref(),
            choice(SAME_SITE),
        )
        .unwrap_or(SameSite::Strict);
    if let (SameSite::None, false, Some(raw_same_site)) =
        (same_site, secure, session.same_site.as_ref())
    {
        let line = cx.line(raw_same_site);
        cx.error(
            "auth.session.same_site",
            Some(line),
            "\"None\" requires auth.session.secure = true: browsers drop SameSite=None cookies \
             that are not Secure; set secure = true or use \"Lax\"",
        );
    }
    AuthConfig {
        mode,
        algorithms,
        key,
        issuer: cx.text("auth.issuer", raw.issuer.as_ref(), non_empty),
        audience: cx.text("auth.audience", raw.audience.as_ref(), non_empty),
        leeway: cx
            .text("auth.leeway", raw.leeway.as_ref(), parse_duration)
            .unwrap_or(Duration::from_secs(30)),
        max_token_size: cx
            .text(
                "auth.max_token_size",
                raw.max_token_size.as_ref(),
                nonzero(parse_size),
            )
            .unwrap_or(8 << 10),
        user_claim: name(cx, "auth.user_claim", raw.user_claim.as_ref(), "sub"),
        roles_claim: name(cx, "auth.roles_claim", raw.roles_claim.as_ref(), "roles"),
        query_params: cx
            .text_list("auth.query_params", raw.query_params.as_ref(), non_empty)
            .unwrap_or_else(|| {
                ["token", "access_token", "sse_token"]
                    .map(String::from)
                    .to_vec()
            }),
        pass_authorization_schemes: cx
            .text_list(
                "auth.pass_authorization_schemes",
                raw.pass_authorization_schemes.as_ref(),
                passable_scheme,
            )
            .unwrap_or_default(),
        cookie: cx
            .text("auth.cookie", raw.cookie.as_ref(), http_token)
            .unwrap_or_else(|| "streamguard_token".into()),
        forward_as: cx
            .text(
                "auth.forward_as",
                raw.forward_as.as_ref(),
                choice(FORWARD_AS),
            )
            .unwrap_or(ForwardAs::Header),
        forward_name: cx
            .text("auth.forward_name", raw.forward_name.as_ref(), http_token)
            .unwrap_or_else(|| "access_token".into()),
        close_on_expiry: flag(raw.close_on_expiry.as_ref(), true),
        websocket_protocol_prefix: cx.text(
            "auth.websocket_protocol_prefix",
            raw.websocket_protocol_prefix.as_ref(),
            http_token,
        ),
        session: SessionConfig {
            path: cx
                .text("auth.session.path", session.path.as_ref(), |p| {
                    route_path(p).map(|_| p.to_owned())
                })
                .unwrap_or_else(|| "/_streamguard/session".into()),
            ttl: cx
                .text(
                    "auth.session.ttl",
                    session.ttl.as_ref(),
                    nonzero(parse_duration),
                )
                .unwrap_or(Duration::from_secs(15 * 60)),
            secure,
            same_site,
        },
    }
}

fn log(cx: &mut Cx<'_>, raw: &RawLog) -> LogConfig {
    LogConfig {
        format: cx
            .text("log.format", raw.format.as_ref(), choice(LOG_FORMATS))
            .unwrap_or(LogFormat::Json),
        level: cx
            .text("log.level", raw.level.as_ref(), log_level)
            .unwrap_or_else(|| "info".into()),
    }
}

/// Effective global sections that route overrides are merged over.
struct Globals<'a> {
    auth: AuthMode,
    sse: &'a SseConfig,
    websocket: &'a WebSocketConfig,
    limits: &'a LimitsConfig,
}

fn route(
    cx: &mut Cx<'_>,
    index: usize,
    raw: &Spanned<RawRoute>,
    globals: &Globals<'_>,
) -> RouteConfig {
    let prefix = format!("route[{index}]");
    let k = |name: &str| format!("{prefix}.{name}");
    let r = raw.get_ref();
    if r.path.is_none() {
        let line = cx.line(raw);
        cx.error(
            k("path"),
            Some(line),
            "missing: every [[route]] needs a path, e.g. path = \"/events/{user}\"",
        );
    }
    let parsed = cx.text(&k("path"), r.path.as_ref(), |p| {
        route_path(p).map(|segments| (p.to_owned(), segments))
    });
    let claims = claims(cx, &k("claims"), r.claims.as_ref(), parsed.as_ref());
    if let Some(total) = &r.sse.slow_buffer_total {
        let line = cx.line(total);
        cx.error(
            k("sse.slow_buffer_total"),
            Some(line),
            "one budget is shared by every stream of the process, so a route cannot have its \
             own; set it in [sse] and remove it here",
        );
    }
    let (path, segments) = parsed.unwrap_or_default();
    RouteConfig {
        path,
        segments,
        auth: cx
            .text(&k("auth"), r.auth.as_ref(), choice(AUTH_MODES))
            .unwrap_or(globals.auth),
        roles: cx
            .text_list(&k("roles"), r.roles.as_ref(), non_empty)
            .unwrap_or_default(),
        claims,
        sse: sse(cx, &k("sse"), &r.sse, globals.sse),
        websocket: websocket(cx, &k("websocket"), &r.websocket, globals.websocket),
        limits: {
            if let Some(store) = &r.limits.store {
                let line = cx.line(store);
                cx.error(
                    k("limits.store"),
                    Some(line),
                    "the limit store is one per process, shared by every route; move it to \
                     [limits.store]",
                );
            }
            limits(cx, &k("limits"), &r.limits, globals.limits)
        },
    }
}

/// `[limits.store]`. Only the URL's form is checked: a Redis that does not answer yet is the
/// store being down (`on_error`), not a config error.
fn store(cx: &mut Cx<'_>, raw: Option<&Spanned<RawStore>>) -> StoreConfig {
    let Some(raw) = raw else {
        return StoreConfig::Memory;
    };
    let r = raw.get_ref();
    let shared = cx
        .text("limits.store.kind", r.kind.as_ref(), choice(STORE_KINDS))
        .unwrap_or(false);
    if !shared {
        let redis_only = [
            ("url", &r.url),
            ("password_file", &r.password_file),
            ("key_prefix", &r.key_prefix),
            ("timeout", &r.timeout),
            ("lease", &r.lease),
            ("on_error", &r.on_error),
        ];
        for (name, value) in redis_only {
            if let Some(value) = value {
                let line = cx.line(value);
                cx.error(
                    format!("limits.store.{name}"),
                    Some(line),
                    "only used by the Redis store; set kind = \"redis\" or remove the key",
                );
            }
        }
        return StoreConfig::Memory;
    }
    if r.url.is_none() {
        let line = cx.line(raw);
        cx.error(
            "limits.store.url",
            Some(line),
            "missing: kind = \"redis\" needs the server's address, e.g. \
             url = \"redis://127.0.0.1:6379/0\" or \"unix:///run/redis/redis.sock\"",
        );
    }
    let url = cx.text("limits.store.url", r.url.as_ref(), redis_url);
    let base_dir = cx.base_dir;
    let password_file = cx.text(
        "limits.store.password_file",
        r.password_file.as_ref(),
        |p| {
            let bytes = trim_trailing_newlines(read_file(base_dir, p)?);
            let password = String::from_utf8(bytes).map_err(|_| {
                format!("{} is not UTF-8 text", resolve_path(base_dir, p).display())
            })?;
            if password.is_empty() {
                return Err(format!(
                    "{} is empty; write the Redis password into it or remove the key",
                    resolve_path(base_dir, p).display()
                ));
            }
            Ok((resolve_path(base_dir, p), password))
        },
    );
    let timeout = cx
        .text(
            "limits.store.timeout",
            r.timeout.as_ref(),
            bounded(Duration::from_millis(1), Duration::from_secs(10)),
        )
        .unwrap_or(Duration::from_millis(50));
    let lease = cx
        .text(
            "limits.store.lease",
            r.lease.as_ref(),
            bounded(Duration::from_secs(1), Duration::from_secs(3600)),
        )
        .unwrap_or(Duration::from_secs(30));
    if lease < timeout * 10 {
        let line = r.lease.as_ref().map(|l| cx.line(l));
        cx.error(
            "limits.store.lease",
            line,
            format!(
                "{} is under ten times limits.store.timeout ({}): leases are renewed every \
                 third of a lease, and a renewal must fit in that many timeouts; raise lease or \
                 lower timeout",
                super::format_duration(lease),
                super::format_duration(timeout)
            ),
        );
    }
    let (password_file, password) = password_file.unzip();
    StoreConfig::Redis(RedisStoreConfig {
        url: url.unwrap_or_default(),
        password_file,
        password,
        key_prefix: cx
            .text("limits.store.key_prefix", r.key_prefix.as_ref(), key_prefix)
            .unwrap_or_else(|| "streamguard:".into()),
        timeout,
        lease,
        on_error: cx
            .text(
                "limits.store.on_error",
                r.on_error.as_ref(),
                choice(ON_STORE_ERROR),
            )
            .unwrap_or(OnStoreError::Local),
    })
}

/// A Redis URL the client accepts: `redis://`, `rediss://` (TLS), `unix://` or `redis+unix://`.
fn redis_url(s: &str) -> Result<String, String> {
    use redis::IntoConnectionInfo;
    let fix = "write e.g. \"redis://127.0.0.1:6379/0\", \"rediss://redis.internal:6380\" or \
               \"unix:///run/redis/redis.sock\"";
    s.into_connection_info()
        .map(|_| s.to_owned())
        // The client's message may quote the URL, password included: name the scheme only.
        .map_err(|_| {
            let shown = redact_url(s);
            format!("{shown:?} is not a Redis URL; {fix}")
        })
}

/// Braces would end the `{user}` hash tag every key carries, putting users' keys in the wrong
/// Redis Cluster slot.
fn key_prefix(s: &str) -> Result<String, String> {
    if s.contains(['{', '}']) {
        return Err(format!(
            "{s:?} contains a brace; keys carry the user in {{...}} (a Redis Cluster hash tag), \
             so the prefix must not: use e.g. \"streamguard:\" or \"myapp:sg:\""
        ));
    }
    Ok(s.to_owned())
}

/// A duration within `[min, max]`.
fn bounded(min: Duration, max: Duration) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| {
        let d = parse_duration(s).map_err(|e| e.to_string())?;
        if d < min || d > max {
            return Err(format!(
                "{s:?} is outside {}..={}",
                super::format_duration(min),
                super::format_duration(max)
            ));
        }
        Ok(d)
    }
}

/// `claims = { param = "claim" }`: every key must be a `{param}` of the route's path.
fn claims(
    cx: &mut Cx<'_>,
    prefix: &str,
    raw: Option<&BTreeMap<Text, Text>>,
    path: Option<&(String, Vec<RouteSegment>)>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (param, claim) in raw.into_iter().flatten() {
        let name = param.get_ref();
        let key = format!("{prefix}.{name}");
        // With an invalid path the parameters are unknown; the path error says enough.
        if let Some((path, segments)) = path {
            let params: Vec<String> = segments
                .iter()
                .filter_map(|s| match s {
                    RouteSegment::Param(p) => Some(format!("{{{p}}}")),
                    RouteSegment::Literal(_) => None,
                })
                .collect();
            if !params.contains(&format!("{{{name}}}")) {
                let has = if params.is_empty() {
                    "it has no parameters".to_owned()
                } else {
                    format!("its parameters are {}", params.join(", "))
                };
                let line = cx.line(param);
                cx.error(
                    key,
                    Some(line),
                    format!(
                        "{name:?} is not a parameter of the route path {path:?} ({has}); add \
                         \"{{{name}}}\" to the path or remove this claim"
                    ),
                );
                continue;
            }
        }
        if let Some(claim) = cx.text(&key, Some(claim), non_empty) {
            out.push((name.clone(), claim));
        }
    }
    out
}

pub(super) fn validate(
    raw: &RawConfig,
    text: &str,
    base_dir: &Path,
    env: &dyn EnvSource,
) -> Result<Config, Vec<KeyError>> {
    let mut cx = Cx {
        text,
        base_dir,
        env,
        errors: Vec::new(),
    };
    let cx = &mut cx;
    let listen = listen(cx, &raw.listen);
    let admin = AdminConfig {
        address: cx
            .text("admin.address", raw.admin.address.as_ref(), socket_addr)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901))),
        show_users: flag(raw.admin.show_users.as_ref(), false),
    };
    let upstream = upstream(cx, raw);
    let server = server(cx, &raw.server);
    let cors = cors(cx, &raw.cors);
    let mode = cx
        .text("auth.mode", raw.auth.mode.as_ref(), choice(AUTH_MODES))
        .unwrap_or(AuthMode::Required);
    let log = log(cx, &raw.log);
    let sse = sse(cx, "sse", &raw.sse, &SseConfig::default());
    let websocket = websocket(cx, "websocket", &raw.websocket, &WebSocketConfig::default());
    let limits = limits(cx, "limits", &raw.limits, &LimitsConfig::default());
    let store = store(cx, raw.limits.store.as_ref());
    let http2 = http2(cx, raw, &listen);
    let globals = Globals {
        auth: mode,
        sse: &sse,
        websocket: &websocket,
        limits: &limits,
    };
    let routes: Vec<RouteConfig> = raw
        .route
        .iter()
        .enumerate()
        .map(|(i, r)| route(cx, i, r, &globals))
        .collect();
    let auth = auth(cx, &raw.auth, mode, &routes);

    let files = super::source::named_files(raw, base_dir, env);
    let mut errors = std::mem::take(&mut cx.errors);
    match upstream {
        Some(upstream) if errors.is_empty() => Ok(Config {
            listen,
            admin,
            upstream,
            server,
            cors,
            auth,
            log,
            sse,
            websocket,
            limits,
            http2,
            store,
            routes,
            fingerprint: super::source::fingerprint(text, &files),
            files,
        }),
        _ => {
            // File order reads best; keys without a line (missing keys) go last.
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            Err(errors)
        }
    }
}

/// Bounds of `http2.max_send_buffer`: below one full DATA frame (16 KiB) every event write
/// waits on the connection; above 16 MiB one stalled stream pins too much memory.
const MIN_H2_SEND_BUFFER: usize = 16 * 1024;
const MAX_H2_SEND_BUFFER: usize = 16 * 1024 * 1024;

/// `[http2]`, and `listen.h2c` against it.
fn http2(cx: &mut Cx<'_>, raw: &RawConfig, listen: &ListenConfig) -> Http2Config {
    let h2 = &raw.http2;
    let base = Http2Config::default();
    let config = Http2Config {
        enabled: flag(h2.enabled.as_ref(), base.enabled),
        max_concurrent_streams: cx
            .value(
                "http2.max_concurrent_streams",
                h2.max_concurrent_streams.as_ref(),
                |n: &i64| match u32::try_from(*n) {
                    Ok(n @ 1..=10_000) => Ok(n),
                    _ => Err(format!(
                        "must be between 1 and 10000 (streams per connection), not {n}"
                    )),
                },
            )
            .unwrap_or(base.max_concurrent_streams),
        idle_timeout: cx
            .text(
                "http2.idle_timeout",
                h2.idle_timeout.as_ref(),
                nonzero(parse_duration),
            )
            .unwrap_or(base.idle_timeout),
        max_send_buffer: cx
            .text(
                "http2.max_send_buffer",
                h2.max_send_buffer.as_ref(),
                |s: &str| match parse_size(s).map_err(|e| e.to_string())? {
                    n @ MIN_H2_SEND_BUFFER..=MAX_H2_SEND_BUFFER => Ok(n),
                    _ => Err(format!("must be between 16KiB and 16MiB, not {s}")),
                },
            )
            .unwrap_or(base.max_send_buffer),
    };
    if let Some(h2c) = raw.listen.h2c.as_ref().filter(|on| *on.get_ref()) {
        let line = cx.line(h2c);
        if listen.tls.is_some() {
            cx.error(
                "listen.h2c",
                Some(line),
                "h2c is HTTP/2 over plain TCP, and this listener has TLS (where browsers get h2                  by ALPN): remove listen.h2c",
            );
        } else if !config.enabled {
            cx.error(
                "listen.h2c",
                Some(line),
                "h2c needs HTTP/2: set http2.enabled = true or remove listen.h2c",
            );
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::super::{parse_str, ConfigError};
    use super::*;
    use std::collections::HashMap;
    use std::sync::OnceLock;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const UPSTREAM: &str = "[upstream]\naddress = \"127.0.0.1:3000\"\n";
    const ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEApH6KkfgheF8/Be7GmDbVo3MiJDz8fyWLA0uarqiCA48=\n\
        -----END PUBLIC KEY-----\n";
    const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA",
        "x":"pH6KkfgheF8_Be7GmDbVo3MiJDz8fyWLA0uarqiCA48"}]}"#;

    /// Key files shared by all tests (created once; tests run in parallel).
    fn fixtures() -> &'static Path {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("sg-config-validate-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("fixture dir");
            for (name, contents) in [
                ("secret.txt", format!("{SECRET}\r\n")),
                ("short.txt", "tiny\n".to_owned()),
                ("ed.pem", ED25519_PEM.to_owned()),
                ("jwks.json", JWKS.to_owned()),
                ("cert.pem", "cert".to_owned()),
            ] {
                std::fs::write(dir.join(name), contents).expect("fixture file");
            }
            dir
        })
    }

    fn env() -> HashMap<String, String> {
        HashMap::from([
            ("JWT_SECRET".to_owned(), SECRET.to_owned()),
            ("APP_HOST".to_owned(), "127.0.0.1".to_owned()),
        ])
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str(text, fixtures(), &env())
    }

    fn valid(text: &str) -> Config {
        parse(text).unwrap_or_else(|e| panic!("expected a valid config, got:\n{e}\n---\n{text}"))
    }

    fn invalid(text: &str) -> Vec<KeyError> {
        match parse(text) {
            Err(ConfigError::Invalid(errors)) => errors,
            other => panic!("expected validation errors, got {other:?}\n---\n{text}"),
        }
    }

    /// The upstream section plus an inline secret, appended after the case text so the
    /// case's own line numbers start at 1.
    fn with_base(case: &str) -> String {
        let auth = if case.contains("[auth]") {
            String::new()
        } else {
            "[auth]\nsecret = \"${JWT_SECRET}\"\n".to_owned()
        };
        format!("{case}\n{UPSTREAM}{auth}")
    }

    #[test]
    fn full_valid_config() {
        let text = r#"
[listen]
address = "[::]:8443"
tls_cert_file = "cert.pem"
tls_key_file = "cert.pem"
max_request_head = "16KiB"
request_head_timeout = "5s"
keepalive_timeout = "2m"
max_connections = 5000
max_connections_per_ip = 50
[admin]
address = "127.0.0.1:9000"
[upstream]
address = "${APP_HOST}:3000"
connect_timeout = "500ms"
write_timeout = "45s"
hide_error_bodies = false
[server]
threads = 8
drain_timeout = "1m"
[cors]
allowed_origins = ["HTTPS://App.Example.com:443", "https://*.example.org", "http://localhost:3000"]
allow_credentials = false
allowed_methods = ["get", "Post"]
allowed_headers = ["Authorization", "X-Request-Id"]
expose_headers = ["X-Trace"]
max_age = "1h"
require_origin = true
[auth]
mode = "optional"
algorithms = ["EdDSA"]
public_key_file = "ed.pem"
issuer = "https://id.example.com"
audience = "streams"
leeway = "5s"
max_token_size = "16KiB"
user_claim = "uid"
roles_claim = "groups"
query_params = ["t"]
pass_authorization_schemes = ["Basic", "Digest"]
cookie = "sg"
forward_as = "cookie"
forward_name = "session"
close_on_expiry = false
websocket_protocol_prefix = "bearer."
[auth.session]
path = "/auth/session"
ttl = "1h"
secure = true
same_site = "None"
[log]
format = "text"
level = "streamguard=debug,warn"
[sse]
heartbeat = "0s"
heartbeat_comment = "keepalive"
stale_after = "2m"
retry = "3s"
retry_jitter = 0.5
max_event_size = "64KiB"
on_oversize = "close"
on_invalid = "drop"
write_timeout = "5s"
require_accept = false
client_buffer = "32KiB"
slow_buffer_total = "8MiB"
on_slow_client = "skip"
[websocket]
ping_interval = "30s"
pong_timeout = "5s"
idle_timeout = "10m"
max_message_size = "1MB"
messages_per_user = "50/hour"
on_rate_limit = "drop"
compression = "inflate"
max_control_frames = "5/second"
max_message_fragments = 16
[limits]
max_streams = 10000
max_streams_per_user = 5
on_user_limit = "evict_oldest"
connects_per_user = "3/minute"
requests_per_ip = "20/second"
burst = 10
trusted_proxies = ["10.0.0.0/8", "::1/128", "192.0.2.7"]
[[route]]
path = "/tenants/{tenant}/events"
auth = "required"
roles = ["admin", "reader"]
claims = { tenant = "tid" }
"#;
        let c = valid(text);
        assert_eq!(c.listen.address, "[::]:8443".parse().expect("addr"));
        assert_eq!(c.listen.max_request_head, 16 * 1024);
        assert_eq!(c.listen.request_head_timeout, Duration::from_secs(5));
        assert_eq!(c.listen.keepalive_timeout, Duration::from_secs(120));
        assert_eq!(
            (c.listen.max_connections, c.listen.max_connections_per_ip),
            (5000, Some(50))
        );
        let tls = c.listen.tls.expect("tls");
        assert_eq!(tls.cert_file, fixtures().join("cert.pem"));
        assert_eq!(c.admin.address.port(), 9000);
        assert_eq!(c.upstream.address, "127.0.0.1:3000".parse().expect("addr"));
        assert_eq!(c.upstream.connect_timeout, Duration::from_millis(500));
        assert_eq!(c.upstream.write_timeout, Duration::from_secs(45));
        assert!(!c.upstream.hide_error_bodies);
        assert_eq!(
            (c.server.threads, c.server.drain_timeout.as_secs()),
            (8, 60)
        );
        assert_eq!(
            c.cors.allowed_origins,
            vec![
                OriginPattern::Exact("https://app.example.com".into()),
                OriginPattern::Wildcard {
                    scheme: "https".into(),
                    suffix: ".example.org".into()
                },
                OriginPattern::Exact("http://localhost:3000".into()),
            ]
        );
        assert!(!c.cors.allow_credentials && c.cors.require_origin);
        assert_eq!(c.cors.allowed_methods, ["GET", "POST"]);
        assert_eq!(c.cors.allowed_headers, ["authorization", "x-request-id"]);
        assert_eq!(c.cors.expose_headers, ["x-trace"]);
        assert_eq!(c.cors.max_age.as_secs(), 3_600);
        let a = &c.auth;
        assert_eq!(a.mode, AuthMode::Optional);
        assert_eq!(a.algorithms, [Algorithm::EdDSA]);
        assert!(
            matches!(&a.key, Some(KeySource::PublicKeyPem(pem)) if pem == ED25519_PEM.as_bytes())
        );
        assert_eq!(a.issuer.as_deref(), Some("https://id.example.com"));
        assert_eq!(a.audience.as_deref(), Some("streams"));
        assert_eq!(a.leeway.as_secs(), 5);
        assert_eq!(a.max_token_size, 16_384);
        assert_eq!(
            (a.user_claim.as_str(), a.roles_claim.as_str()),
            ("uid", "groups")
        );
        assert_eq!(a.query_params, ["t"]);
        assert_eq!(a.pass_authorization_schemes, ["Basic", "Digest"]);
        assert_eq!((a.cookie.as_str(), a.forward_as), ("sg", ForwardAs::Cookie));
        assert_eq!(a.forward_name, "session");
        assert!(!a.close_on_expiry);
        assert_eq!(a.websocket_protocol_prefix.as_deref(), Some("bearer."));
        assert_eq!(a.session.path, "/auth/session");
        assert_eq!(a.session.ttl.as_secs(), 3_600);
        assert_eq!(a.session.same_site, SameSite::None);
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "streamguard=debug,warn");
        let sse = SseConfig {
            heartbeat: Duration::ZERO,
            heartbeat_comment: "keepalive".into(),
            stale_after: Duration::from_secs(120),
            retry: Some(Duration::from_secs(3)),
            retry_jitter: 0.5,
            max_event_size: 65_536,
            on_oversize: OnOversize::Close,
            on_invalid: OnInvalid::Drop,
            write_timeout: Duration::from_secs(5),
            require_accept: false,
            client_buffer: 32 << 10,
            slow_buffer_total: 8 << 20,
            on_slow_client: OnSlowClient::Skip,
        };
        assert_eq!(c.sse, sse);
        let websocket = WebSocketConfig {
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_message_size: 1_000_000,
            messages_per_user: Some(RateSpec {
                count: 50,
                per: Duration::from_secs(3_600),
            }),
            on_rate_limit: OnRateLimit::Drop,
            compression: Compression::Inflate,
            max_control_frames: RateSpec {
                count: 5,
                per: Duration::from_secs(1),
            },
            max_message_fragments: 16,
        };
        assert_eq!(c.websocket, websocket);
        assert_eq!(c.limits.max_streams, Some(10_000));
        assert_eq!(c.limits.max_streams_per_user, Some(5));
        assert_eq!(c.limits.on_user_limit, OnUserLimit::EvictOldest);
        assert_eq!(c.limits.connects_per_user.map(|r| r.count), Some(3));
        assert_eq!(
            c.limits.requests_per_ip.map(|r| r.per),
            Some(Duration::from_secs(1))
        );
        assert_eq!(c.limits.burst, 10);
        let proxies: Vec<String> = c
            .limits
            .trusted_proxies
            .iter()
            .map(|p| format!("{}/{}", p.addr, p.prefix_len))
            .collect();
        assert_eq!(proxies, ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]);
        let route = &c.routes[0];
        assert_eq!(route.path, "/tenants/{tenant}/events");
        assert_eq!(
            route.segments,
            [
                RouteSegment::Literal("tenants".into()),
                RouteSegment::Param("tenant".into()),
                RouteSegment::Literal("events".into()),
            ]
        );
        assert_eq!(route.auth, AuthMode::Required);
        assert_eq!(route.roles, ["admin", "reader"]);
        assert_eq!(route.claims, [("tenant".to_owned(), "tid".to_owned())]);
        assert_eq!(
            (&route.sse, &route.websocket, &route.limits),
            (&sse, &websocket, &c.limits)
        );
    }

    #[test]
    fn a_drain_timeout_shorter_than_delay_and_window_is_refused() {
        let errors = invalid(&with_base(
            "[server]\ndrain_delay = \"10s\"\ndrain_window = \"30s\"\ndrain_timeout = \"20s\"",
        ));
        let error = errors
            .iter()
            .find(|e| e.key == "server.drain_timeout")
            .unwrap_or_else(|| panic!("no drain_timeout error in {errors:?}"));
        assert_eq!(error.line, Some(4));
        assert!(error.message.contains("40s"), "{error}");
        valid(&with_base(
            "[server]\ndrain_delay = \"0s\"\ndrain_window = \"0s\"\ndrain_timeout = \"1s\"",
        ));
    }

    #[test]
    fn every_default() {
        let c = valid(&with_base(""));
        assert_eq!(c.listen.address, "0.0.0.0:8080".parse().expect("addr"));
        assert!(c.listen.tls.is_none());
        assert_eq!(c.listen.max_request_head, 32 * 1024);
        assert_eq!(c.listen.request_head_timeout.as_secs(), 10);
        assert_eq!(c.listen.keepalive_timeout.as_secs(), 60);
        assert_eq!(
            c.listen.max_connections,
            connections_for_open_files(open_files_limit())
        );
        assert_eq!(c.listen.max_connections_per_ip, None);
        assert_eq!(c.admin.address, "127.0.0.1:9901".parse().expect("addr"));
        assert_eq!(c.upstream.connect_timeout.as_secs(), 2);
        assert_eq!(c.upstream.write_timeout.as_secs(), 30);
        assert!(c.upstream.hide_error_bodies);
        let server = &c.server;
        assert_eq!(server.threads, 2);
        assert_eq!(
            (
                server.drain_delay.as_secs(),
                server.drain_window.as_secs(),
                server.drain_timeout.as_secs()
            ),
            (5, 20, 30)
        );
        assert!(!server.watch_config);
        assert_eq!(server.watch_interval.as_secs(), 5);
        assert!(c.cors.allowed_origins.is_empty());
        assert!(c.cors.allow_credentials && !c.cors.require_origin);
        assert_eq!(c.cors.allowed_methods, ["GET", "POST"]);
        assert_eq!(
            c.cors.allowed_headers,
            ["authorization", "content-type", "last-event-id"]
        );
        assert!(c.cors.expose_headers.is_empty());
        assert_eq!(c.cors.max_age.as_secs(), 600);
        let a = &c.auth;
        assert_eq!(a.mode, AuthMode::Required);
        assert_eq!(a.algorithms, [Algorithm::HS256]);
        assert!(matches!(&a.key, Some(KeySource::Secret(s)) if s == SECRET.as_bytes()));
        assert_eq!((a.issuer.as_deref(), a.audience.as_deref()), (None, None));
        assert_eq!(a.leeway.as_secs(), 30);
        assert_eq!(a.max_token_size, 8_192);
        assert_eq!(
            (a.user_claim.as_str(), a.roles_claim.as_str()),
            ("sub", "roles")
        );
        assert_eq!(a.query_params, ["token", "access_token", "sse_token"]);
        assert!(a.pass_authorization_schemes.is_empty());
        assert_eq!(a.cookie, "streamguard_token");
        assert_eq!(
            (a.forward_as, a.forward_name.as_str()),
            (ForwardAs::Header, "access_token")
        );
        assert!(a.close_on_expiry);
        assert_eq!(a.websocket_protocol_prefix, None);
        assert_eq!(a.session.path, "/_streamguard/session");
        assert_eq!(a.session.ttl.as_secs(), 900);
        assert!(a.session.secure);
        assert_eq!(a.session.same_site, SameSite::Strict);
        assert_eq!(
            (c.log.format, c.log.level.as_str()),
            (LogFormat::Json, "info")
        );
        assert_eq!(c.sse, SseConfig::default());
        assert_eq!(c.sse.heartbeat.as_secs(), 15);
        assert_eq!(c.sse.heartbeat_comment, "ping");
        assert_eq!(c.sse.stale_after.as_secs(), 45);
        assert_eq!((c.sse.retry, c.sse.retry_jitter), (None, 0.0));
        assert_eq!(c.sse.max_event_size, 1_048_576);
        assert_eq!(
            (c.sse.on_oversize, c.sse.on_invalid),
            (OnOversize::Drop, OnInvalid::Pass)
        );
        assert_eq!(c.sse.write_timeout.as_secs(), 30);
        assert_eq!(
            (c.sse.client_buffer, c.sse.slow_buffer_total),
            (262_144, 67_108_864)
        );
        assert_eq!(c.sse.on_slow_client, OnSlowClient::Close);
        assert_eq!(c.websocket, WebSocketConfig::default());
        assert_eq!(c.websocket.ping_interval.as_secs(), 20);
        assert_eq!(c.websocket.pong_timeout.as_secs(), 10);
        assert_eq!(c.websocket.idle_timeout, Duration::ZERO);
        assert_eq!(c.websocket.max_message_size, 1_048_576);
        assert_eq!(c.websocket.messages_per_user, None);
        assert_eq!(c.websocket.on_rate_limit, OnRateLimit::Close);
        assert_eq!(c.websocket.compression, Compression::Strip);
        assert_eq!(
            c.websocket.max_control_frames,
            RateSpec {
                count: 20,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(c.websocket.max_message_fragments, 128);
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(
            (c.limits.max_streams, c.limits.max_streams_per_user),
            (None, None)
        );
        assert_eq!(c.limits.on_user_limit, OnUserLimit::Reject);
        assert_eq!(
            (c.limits.connects_per_user, c.limits.requests_per_ip),
            (None, None)
        );
        assert_eq!(c.limits.burst, 0);
        assert!(c.limits.trusted_proxies.is_empty());
        assert!(c.routes.is_empty());
    }

    /// (case, key, line, fragments the message must contain)
    const BAD: &[(&str, &str, Option<usize>, &[&str])] = &[
        (
            "[sse]\nheartbeat = \"15 parsecs\"",
            "sse.heartbeat",
            Some(2),
            &["invalid duration \"15 parsecs\"", "\"1h30m\""],
        ),
        (
            "[websocket]\nmax_message_size = \"1 megabyte\"",
            "websocket.max_message_size",
            Some(2),
            &["invalid size \"1 megabyte\"", "\"64KiB\""],
        ),
        ("[sse]\nmax_event_size = \"0\"", "sse.max_event_size", Some(2), &["greater than zero"]),
        ("[websocket]\ncompression = \"gzip\"", "websocket.compression", Some(2), &["\"strip\", \"inflate\""]),
        ("[websocket]\nmax_control_frames = \"many\"", "websocket.max_control_frames", Some(2), &["invalid rate \"many\""]),
        ("[websocket]\nmax_message_fragments = 0", "websocket.max_message_fragments", Some(2), &["below the minimum of 1", "at least one frame"]),
        ("[[route]]\npath = \"/ws\"\nwebsocket = { compression = \"deflate\" }", "route[0].websocket.compression", Some(3), &["\"strip\", \"inflate\""]),
        (
            "[limits]\nrequests_per_ip = \"20 per second\"",
            "limits.requests_per_ip",
            Some(2),
            &["invalid rate \"20 per second\"", "\"600/minute\""],
        ),
        (
            "[cors]\nallowed_origins = [\"https://ok.example.com\", \"*\"]",
            "cors.allowed_origins[1]",
            Some(2),
            &[WILDCARD_ORIGIN],
        ),
        (
            "[cors]\nallowed_origins = [\n  \"https://a.example.com\",\n  \"https://app.*.example.com\",\n]",
            "cors.allowed_origins[1]",
            Some(4),
            &["\"https://app.*.example.com\"", "wrong place", "\"https://*.example.com\""],
        ),
        ("[cors]\nallowed_origins = [\"*://example.com\"]", "cors.allowed_origins[0]", Some(2), &["wrong place"]),
        ("[cors]\nallowed_origins = [\"https://a*.example.com\"]", "cors.allowed_origins[0]", Some(2), &["wrong place"]),
        ("[cors]\nallowed_origins = [\"null\"]", "cors.allowed_origins[0]", Some(2), &["sandboxed"]),
        ("[cors]\nallowed_origins = [\"https://a.example.com/\"]", "cors.allowed_origins[0]", Some(2), &["trailing slash"]),
        ("[cors]\nallowed_origins = [\"app.example.com\"]", "cors.allowed_origins[0]", Some(2), &["no scheme"]),
        ("[cors]\nallowed_origins = [\"https://*.com\"]", "cors.allowed_origins[0]", Some(2), &["top-level domain"]),
        ("[cors]\nallowed_methods = [\"GET\", \"*\"]", "cors.allowed_methods[1]", Some(2), &["list the names"]),
        ("[log]\nlevel = \"${LOG_LEVEL}\"", "log.level", Some(2), &["LOG_LEVEL is not set", "${LOG_LEVEL:-default}"]),
        ("[log]\nlevel = \"verbose\"", "log.level", Some(2), &["\"verbose\" is not a level"]),
        ("[log]\nlevel = \"streamguard=loud\"", "log.level", Some(2), &["not a valid log filter"]),
        ("[log]\nformat = \"xml\"", "log.format", Some(2), &["\"xml\"", "\"json\", \"text\""]),
        (
            "[auth]\nsecret = \"${JWT_SECRET}\"\nsecret_file = \"secret.txt\"",
            "auth.secret_file",
            Some(3),
            &["auth.secret is also set", "exactly one"],
        ),
        ("[auth]\nsecret = \"short-secret\"", "auth.secret", Some(2), &["12 bytes", "at least 16"]),
        (
            "[auth]\nsecret = \"${JWT_SECRET}\"\npass_authorization_schemes = [\"Basic\", \"bearer\"]",
            "auth.pass_authorization_schemes[1]",
            Some(3),
            &["\"bearer\" cannot pass unverified", "e.g. [\"Basic\"]"],
        ),
        (
            "[auth]\nsecret = \"${JWT_SECRET}\"\npass_authorization_schemes = [\"BearerToken\"]",
            "auth.pass_authorization_schemes[0]",
            Some(3),
            &["cannot pass unverified"],
        ),
        (
            "[auth]\nsecret = \"${JWT_SECRET}\"\npass_authorization_schemes = [\"Basic x\"]",
            "auth.pass_authorization_schemes[0]",
            Some(3),
            &["not a valid HTTP token"],
        ),
        ("[auth]\nsecret = \"${JWT_SECRET}\"\nmax_token_size = \"0\"", "auth.max_token_size", Some(3), &["greater than zero"]),
        ("[auth]\nsecret = \"${JWT_SECRET}\"\nmax_token_size = \"8 kilo\"", "auth.max_token_size", Some(3), &["invalid size", "\"64KiB\""]),
        ("[auth]\nsecret_file = \"short.txt\"", "auth.secret_file", Some(2), &["4 bytes"]),
        ("[auth]\nsecret_file = \"absent.txt\"", "auth.secret_file", Some(2), &["cannot read", "absent.txt"]),
        (
            "[auth]\nalgorithms = [\"HS256\", \"RS256\"]\nsecret = \"${JWT_SECRET}\"",
            "auth.algorithms",
            Some(2),
            &["mixes HS256 with RS256", "algorithm confusion"],
        ),
        ("[auth]\nalgorithms = []\nsecret = \"${JWT_SECRET}\"", "auth.algorithms", Some(2), &["at least one"]),
        ("[auth]\nalgorithms = [\"none\"]\nsecret = \"${JWT_SECRET}\"", "auth.algorithms[0]", Some(2), &["\"none\" is not a supported"]),
        ("[auth]\nalgorithms = [\"RS256\"]\nsecret = \"${JWT_SECRET}\"", "auth.secret", Some(3), &["public key"]),
        ("[auth]\nalgorithms = [\"HS256\"]\njwks_file = \"jwks.json\"", "auth.jwks_file", Some(3), &["shared secret"]),
        ("[auth]\nalgorithms = [\"RS256\"]\npublic_key_file = \"ed.pem\"", "auth.public_key_file", Some(3), &["not a PEM RSA public key"]),
        ("[auth]\nalgorithms = [\"EdDSA\"]\njwks_file = \"ed.pem\"", "auth.jwks_file", Some(3), &["not a JWKS document"]),
        ("[auth]\nmode = \"sometimes\"", "auth.mode", Some(2), &["\"required\", \"optional\", \"off\""]),
        ("[auth]\nmode = \"optional\"", "auth", None, &["no verification key", "auth.mode = \"optional\""]),
        ("[auth]\nmode = \"off\"\n[[route]]\npath = \"/a\"\nauth = \"required\"", "auth", None, &["route[0] turns auth on"]),
        (
            "[auth]\nsecret = \"${JWT_SECRET}\"\n[auth.session]\nsecure = false\nsame_site = \"None\"",
            "auth.session.same_site",
            Some(5),
            &["requires auth.session.secure = true"],
        ),
        ("[auth]\nsecret = \"${JWT_SECRET}\"\n[auth.session]\npath = \"session\"", "auth.session.path", Some(4), &["must start with \"/\""]),
        ("[auth]\nsecret = \"${JWT_SECRET}\"\ncookie = \"a;b\"", "auth.cookie", Some(3), &["not a valid HTTP token"]),
        ("[server]\nthreads = 0", "server.threads", Some(2), &["0 is below the minimum of 1"]),
        ("[listen]\naddress = \"localhost:80\"", "listen.address", Some(2), &["not an IP:port", "\"0.0.0.0:8080\""]),
        ("[listen]\ntls_cert_file = \"cert.pem\"", "listen.tls_key_file", Some(2), &["set listen.tls_key_file too"]),
        ("[listen]\ntls_cert_file = \"nope.pem\"\ntls_key_file = \"cert.pem\"", "listen.tls_cert_file", Some(2), &["cannot read"]),
        ("[listen]\nmax_request_head = \"512\"", "listen.max_request_head", Some(2), &["below the minimum of \"1KiB\""]),
        ("[listen]\nmax_request_head = \"1MiB\"", "listen.max_request_head", Some(2), &["above the maximum of \"256KiB\""]),
        ("[listen]\nrequest_head_timeout = \"0s\"", "listen.request_head_timeout", Some(2), &["no \"off\" setting"]),
        ("[listen]\nkeepalive_timeout = \"forever\"", "listen.keepalive_timeout", Some(2), &["invalid duration"]),
        ("[listen]\nmax_connections = 0", "listen.max_connections", Some(2), &["below the minimum of 1"]),
        ("[listen]\nmax_connections_per_ip = 0", "listen.max_connections_per_ip", Some(2), &["remove the key for no per-address limit"]),
        ("[limits]\ntrusted_proxies = [\"10.0.0.1/8\"]", "limits.trusted_proxies[0]", Some(2), &["\"10.0.0.0/8\""]),
        ("[limits]\ntrusted_proxies = [\"0.0.0.0/0\"]", "limits.trusted_proxies[0]", Some(2), &["forge X-Forwarded-For"]),
        ("[limits]\ntrusted_proxies = [\"10.0.0.0/33\"]", "limits.trusted_proxies[0]", Some(2), &["0..=32"]),
        ("[limits]\ntrusted_proxies = [\"proxy.local\"]", "limits.trusted_proxies[0]", Some(2), &["not an IP address"]),
        ("[limits]\nmax_streams = 0", "limits.max_streams", Some(2), &["remove the key for no limit"]),
        ("[sse]\nheartbeat_comment = \":ping\"", "sse.heartbeat_comment", Some(2), &["the ':' is added"]),
        ("[sse]\nheartbeat_comment = \"a\\nb\"", "sse.heartbeat_comment", Some(2), &["line break"]),
        ("[sse]\nretry_jitter = 1.5", "sse.retry_jitter", Some(2), &["outside 0.0..=1.0"]),
        ("[sse]\non_slow_client = \"drop\"", "sse.on_slow_client", Some(2), &["\"close\", \"skip\""]),
        ("[sse]\nclient_buffer = \"0\"", "sse.client_buffer", Some(2), &["greater than zero"]),
        ("[sse]\nslow_buffer_total = \"lots\"", "sse.slow_buffer_total", Some(2), &["whole number"]),
        (
            "[[route]]\npath = \"/a\"\nsse = { slow_buffer_total = \"1MiB\" }",
            "route[0].sse.slow_buffer_total",
            Some(3),
            &["shared by every stream", "set it in [sse]"],
        ),
        ("[[route]]\nroles = []", "route[0].path", Some(1), &["missing"]),
        ("[[route]]\npath = \"events\"", "route[0].path", Some(2), &["must start with \"/\""]),
        ("[[route]]\npath = \"/a//b\"", "route[0].path", Some(2), &["empty segment"]),
        ("[[route]]\npath = \"/a/{id}/{id}\"", "route[0].path", Some(2), &["{id} twice"]),
        ("[[route]]\npath = \"/a/x{id}\"", "route[0].path", Some(2), &["whole segment"]),
        (
            "[[route]]\npath = \"/events/{user}\"\nclaims = { tenant = \"tid\" }",
            "route[0].claims.tenant",
            Some(3),
            &["\"tenant\" is not a parameter", "{user}", "add \"{tenant}\""],
        ),
        (
            "[[route]]\npath = \"/a\"\n\n[[route]]\npath = \"/b\"\nlimits = { max_streams_per_user = 0 }",
            "route[1].limits.max_streams_per_user",
            Some(6),
            &["below the minimum of 1"],
        ),
        ("[[route]]\npath = \"/a\"\nsse = { stale_after = \"soon\" }", "route[0].sse.stale_after", Some(3), &["invalid duration"]),
        ("[[route]]\npath = \"/a\"\nauth = \"maybe\"", "route[0].auth", Some(3), &["\"maybe\""]),
    ];

    #[test]
    fn the_limit_store_defaults_to_memory_and_takes_redis_keys() {
        assert!(matches!(valid(&with_base("")).store, StoreConfig::Memory));
        let c = valid(&with_base(
            "[limits.store]\nkind = \"redis\"\nurl = \"unix:///run/redis.sock\"\n\
             password_file = \"secret.txt\"\non_error = \"closed\"",
        ));
        let StoreConfig::Redis(redis) = c.store else {
            panic!("expected the Redis store")
        };
        assert_eq!(redis.url, "unix:///run/redis.sock");
        assert_eq!(
            redis.password.as_deref(),
            Some(SECRET),
            "trailing newline trimmed"
        );
        assert_eq!(redis.key_prefix, "streamguard:");
        assert_eq!(redis.timeout, Duration::from_millis(50));
        assert_eq!(redis.lease, Duration::from_secs(30));
        assert_eq!(redis.on_error, OnStoreError::Closed);
        assert!(
            !format!("{redis:?}").contains(SECRET),
            "debug output hides the password"
        );
    }

    #[test]
    fn limit_store_errors_name_the_key_line_and_fix() {
        let cases: &[(&str, &str, Option<usize>, &[&str])] = &[
            ("[limits.store]\nkind = \"redis\"", "limits.store.url", Some(1), &["redis://127.0.0.1:6379/0"]),
            ("[limits.store]\nkind = \"redis\"\nurl = \"http://u:pw@h:1\"", "limits.store.url", Some(3), &["not a Redis URL", "<redacted>"]),
            ("[limits.store]\nkind = \"etcd\"", "limits.store.kind", Some(2), &["\"memory\", \"redis\""]),
            ("[limits.store]\nurl = \"redis://h\"", "limits.store.url", Some(2), &["kind = \"redis\""]),
            ("[limits.store]\nkind = \"redis\"\nurl = \"redis://h\"\nkey_prefix = \"{sg}\"", "limits.store.key_prefix", Some(4), &["hash tag"]),
            ("[limits.store]\nkind = \"redis\"\nurl = \"redis://h\"\nlease = \"1s\"\ntimeout = \"500ms\"", "limits.store.lease", Some(4), &["ten times"]),
            ("[limits.store]\nkind = \"redis\"\nurl = \"redis://h\"\ntimeout = \"0s\"", "limits.store.timeout", Some(4), &["outside"]),
            ("[limits.store]\nkind = \"redis\"\nurl = \"redis://h\"\npassword_file = \"absent.txt\"", "limits.store.password_file", Some(4), &["cannot read"]),
            ("[[route]]\npath = \"/a\"\nlimits = { store = { kind = \"redis\" } }", "route[0].limits.store", Some(3), &["[limits.store]"]),
        ];
        for (case, key, line, needles) in cases {
            let errors = invalid(&with_base(case));
            let error = errors
                .iter()
                .find(|e| e.key == *key)
                .unwrap_or_else(|| panic!("no error for {key} in {errors:?}\n{case}"));
            assert_eq!(error.line, *line, "{error}");
            for needle in *needles {
                assert!(error.message.contains(needle), "{needle:?} not in {error}");
            }
            assert!(!error.message.contains("pw@"), "password in {error}");
        }
    }

    #[test]
    fn the_connection_cap_leaves_two_files_per_stream_and_a_reserve() {
        let cases = [
            (20_000, 9_872),
            (1_024, 384),
            (65_536, 32_640),
            (256, 64),
            (3, 1),
            (0, 1),
            (u64::MAX, u32::MAX),
        ];
        for (open_files, cap) in cases {
            assert_eq!(connections_for_open_files(open_files), cap, "{open_files}");
        }
    }

    #[test]
    fn redis_urls_are_redacted_only_where_they_hold_a_password() {
        assert_eq!(
            redact_url("redis://u:pw@h:1/0"),
            "redis://u:<redacted>@h:1/0"
        );
        assert_eq!(redact_url("rediss://:pw@h"), "rediss://:<redacted>@h");
        assert_eq!(redact_url("redis://u@h/0"), "redis://u@h/0");
        assert_eq!(redact_url("unix:///run/r.sock"), "unix:///run/r.sock");
    }

    #[test]
    fn the_soft_open_file_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95480                95480                processes \n\
                      Max open files            20000                524288               files     \n";
        assert_eq!(soft_open_files(limits), Some(20_000));
        let unlimited = limits.replace("20000  ", "unlimited");
        assert_eq!(soft_open_files(&unlimited), Some(u64::MAX));
        assert_eq!(soft_open_files("Max processes 5 5 processes\n"), None);
        assert_eq!(soft_open_files("Max open files  lots  lots  files\n"), None);
    }

    #[test]
    fn an_upstream_write_timeout_has_no_off_setting() {
        // Not a BAD case: those are placed before the base's own [upstream] table.
        let text = "[upstream]\naddress = \"127.0.0.1:3000\"\nwrite_timeout = \"0s\"\n\
                    [auth]\nsecret = \"${JWT_SECRET}\"\n";
        let errors = invalid(text);
        let found = errors
            .iter()
            .find(|e| e.key == "upstream.write_timeout")
            .unwrap_or_else(|| panic!("no error for upstream.write_timeout in {errors:#?}"));
        assert_eq!(found.line, Some(3), "{found}");
        assert!(found.message.contains("greater than zero"), "{found}");
    }

    #[test]
    fn bad_values_are_reported_with_key_line_and_fix() {
        for (case, key, line, fragments) in BAD {
            let errors = invalid(&with_base(case));
            let found = errors
                .iter()
                .find(|e| e.key == *key)
                .unwrap_or_else(|| panic!("no error for {key} in {errors:#?}\n---\n{case}"));
            assert_eq!(found.line, *line, "{key}: {found}");
            for fragment in *fragments {
                assert!(
                    found.message.contains(fragment),
                    "{key}: {fragment:?} not in {found}"
                );
            }
        }
    }

    #[test]
    fn missing_upstream() {
        let errors = invalid("[auth]\nmode = \"off\"\n");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].key, "upstream.address");
        assert!(errors[0].message.contains("[upstream]"), "{}", errors[0]);
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        let secret = "hunter2-but-long";
        let text = format!(
            "[auth]\nsecret = \"{secret}\"\nalgorithms = [\"ES256\"]\n[[route]]\npath = \"x\"\n"
        );
        let shown = ConfigError::Invalid(invalid(&with_base(&text))).to_string();
        assert!(shown.contains("auth.secret"), "{shown}");
        assert!(!shown.contains(secret), "{shown}");
        let short = invalid(&with_base("[auth]\nsecret = \"abc123\""));
        assert!(!format!("{short:?}").contains("abc123"), "{short:?}");
    }

    #[test]
    fn multiple_errors_are_reported_together_in_file_order() {
        let text = "[server]\nthreads = 0\n[sse]\nheartbeat = \"often\"\n\
                    [cors]\nallowed_origins = [\"*\"]\n[auth]\nmode = \"off\"\n";
        let errors = invalid(text);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.threads",
                "sse.heartbeat",
                "cors.allowed_origins[0]",
                "upstream.address"
            ]
        );
        let shown = ConfigError::Invalid(errors).to_string();
        assert_eq!(shown.lines().count(), 5, "{shown}");
    }

    #[test]
    fn env_substitution() {
        let cases: &[(&str, &str)] = &[
            ("heartbeat_comment = \"${NOT_SET:-fallback}\"", "fallback"),
            ("heartbeat_comment = \"cost: $$5\"", "cost: $5"),
            ("heartbeat_comment = \"$${JWT_SECRET}\"", "${JWT_SECRET}"),
            ("heartbeat_comment = \"on ${APP_HOST}\"", "on 127.0.0.1"),
        ];
        for (line, want) in cases {
            let c = valid(&with_base(&format!("[sse]\n{line}")));
            assert_eq!(c.sse.heartbeat_comment, *want, "{line}");
        }
        let c = valid(&with_base("[sse]\nheartbeat = \"${HEARTBEAT:-7s}\""));
        assert_eq!(c.sse.heartbeat, Duration::from_secs(7));
    }

    #[test]
    fn key_sources() {
        let c = valid(&with_base("[auth]\nsecret_file = \"secret.txt\""));
        assert!(matches!(c.auth.key, Some(KeySource::Secret(s)) if s == SECRET.as_bytes()));
        let c = valid(&with_base(
            "[auth]\nalgorithms = [\"EdDSA\"]\njwks_file = \"jwks.json\"",
        ));
        assert!(matches!(c.auth.key, Some(KeySource::Jwks(j)) if j == JWKS));
        let c = valid(&with_base("[auth]\nmode = \"off\""));
        assert!(c.auth.key.is_none());
    }

    #[test]
    fn route_overrides_merge_over_global_sections() {
        let text = r#"
[sse]
heartbeat = "10s"
stale_after = "1m"
slow_buffer_total = "16MiB"
[websocket]
messages_per_user = "100/minute"
[limits]
max_streams = 500
trusted_proxies = ["10.0.0.0/8"]
[auth]
mode = "optional"
secret = "${JWT_SECRET}"
[[route]]
path = "/live"
sse = { heartbeat = "5s", on_invalid = "close", client_buffer = "1MiB", on_slow_client = "skip" }
websocket = { idle_timeout = "5m" }
limits = { max_streams_per_user = 2, trusted_proxies = [] }
[[route]]
path = "/plain"
"#;
        let c = valid(&with_base(text));
        let live = &c.routes[0];
        assert_eq!(live.auth, AuthMode::Optional);
        assert_eq!(live.sse.heartbeat, Duration::from_secs(5));
        assert_eq!(live.sse.on_invalid, OnInvalid::Close);
        assert_eq!(
            live.sse.stale_after,
            Duration::from_secs(60),
            "inherits the global value"
        );
        assert_eq!(
            live.sse.write_timeout,
            Duration::from_secs(30),
            "inherits the default"
        );
        assert_eq!(
            (live.sse.client_buffer, live.sse.on_slow_client),
            (1 << 20, OnSlowClient::Skip)
        );
        assert_eq!(
            live.sse.slow_buffer_total,
            16 << 20,
            "the process-wide budget is the global one"
        );
        assert_eq!(live.websocket.idle_timeout, Duration::from_secs(300));
        assert_eq!(live.websocket.messages_per_user.map(|r| r.count), Some(100));
        assert_eq!(live.limits.max_streams, Some(500));
        assert_eq!(live.limits.max_streams_per_user, Some(2));
        assert!(live.limits.trusted_proxies.is_empty());
        let plain = &c.routes[1];
        assert_eq!(
            (&plain.sse, &plain.websocket, &plain.limits),
            (&c.sse, &c.websocket, &c.limits)
        );
        assert!(plain.segments == [RouteSegment::Literal("plain".into())]);
    }

    #[test]
    fn origins_are_normalised() {
        let cases: &[(&str, OriginPattern)] = &[
            (
                "HTTPS://App.Example.COM",
                OriginPattern::Exact("https://app.example.com".into()),
            ),
            (
                "https://app.example.com:443",
                OriginPattern::Exact("https://app.example.com".into()),
            ),
            (
                "http://app.example.com:80",
                OriginPattern::Exact("http://app.example.com".into()),
            ),
            (
                "https://app.example.com:8443",
                OriginPattern::Exact("https://app.example.com:8443".into()),
            ),
            (
                "http://[::1]:8080",
                OriginPattern::Exact("http://[::1]:8080".into()),
            ),
            (
                "https://*.Example.com",
                OriginPattern::Wildcard {
                    scheme: "https".into(),
                    suffix: ".example.com".into(),
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(origin(input).as_ref(), Ok(want), "{input}");
        }
        for bad in [
            "https://app.example.com:0",
            "https://app..com",
            "ftp://x.com",
            "https://*.x.com:8443",
            "https://[zz]",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn http2_defaults_values_and_errors_name_their_keys() {
        let config = valid(&with_base(""));
        assert_eq!(config.http2, Http2Config::default());
        assert!(!config.listen.h2c);
        let config = valid(&with_base(
            "[listen]\nh2c = true\n[http2]\nmax_concurrent_streams = 250\n\
             idle_timeout = \"30s\"\nmax_send_buffer = \"32KiB\"",
        ));
        assert!(config.listen.h2c);
        assert_eq!(config.http2.max_concurrent_streams, 250);
        assert_eq!(config.http2.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.http2.max_send_buffer, 32 * 1024);
        for (case, key) in [
            (
                "[http2]\nmax_concurrent_streams = 0",
                "http2.max_concurrent_streams",
            ),
            (
                "[http2]\nmax_concurrent_streams = 20000",
                "http2.max_concurrent_streams",
            ),
            ("[http2]\nidle_timeout = \"0s\"", "http2.idle_timeout"),
            (
                "[http2]\nmax_send_buffer = \"1KiB\"",
                "http2.max_send_buffer",
            ),
            (
                "[http2]\nmax_send_buffer = \"1GiB\"",
                "http2.max_send_buffer",
            ),
            (
                "[listen]\nh2c = true\n[http2]\nenabled = false",
                "listen.h2c",
            ),
            (
                "[listen]\nh2c = true\ntls_cert_file = \"cert.pem\"\ntls_key_file = \"cert.pem\"",
                "listen.h2c",
            ),
        ] {
            let errors = invalid(&with_base(case));
            assert!(errors.iter().any(|e| e.key == key), "{case}: {errors:?}");
        }
    }
}
