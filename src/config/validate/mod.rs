//! Raw file -> [`Config`]: defaults, `${VAR}` substitution, unit parsing and cross-key rules.
//!
//! Every check records a [`KeyError`] and carries on with a fallback value instead of
//! returning early, so the operator sees all problems from one run. Leaves go through a few
//! generic helpers on [`Cx`] (`value`, `text`, `text_list`) that attach the dotted key and the
//! line; the per-section functions only say which parser and default each key uses.
//!
//! `[sse]`, `[websocket]` and `[limits]` are validated by the same function whether they are
//! the global section (merged over the built-in defaults) or a route override (merged over the
//! effective global section). Each section has its own module; the leaves go through the parsers in [`values`].

mod auth;
mod cors;
mod cx;
mod http2;
mod limits;
mod listen;
mod routes;
mod server;
mod streams;
mod upstream;
mod values;

use std::path::Path;

use super::env::EnvSource;
use super::raw::RawConfig;
use super::types::*;
use super::KeyError;
use cx::Cx;

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
    let listen = listen::listen(cx, &raw.listen);
    let admin = server::admin(cx, &raw.admin);
    let upstream = upstream::upstream(cx, raw);
    let server = server::server(cx, &raw.server);
    let cors = cors::cors(cx, &raw.cors);
    let mode = auth::mode(cx, &raw.auth);
    let log = server::log(cx, &raw.log);
    let sse = streams::sse(cx, "sse", &raw.sse, &SseConfig::default());
    let websocket =
        streams::websocket(cx, "websocket", &raw.websocket, &WebSocketConfig::default());
    let limits = limits::limits(cx, "limits", &raw.limits, &LimitsConfig::default());
    let store = limits::store(cx, raw.limits.store.as_ref());
    let http2 = http2::http2(cx, raw, &listen);
    let globals = routes::Globals {
        auth: mode,
        sse: &sse,
        websocket: &websocket,
        limits: &limits,
    };
    let routes: Vec<RouteConfig> = raw
        .route
        .iter()
        .enumerate()
        .map(|(i, r)| routes::route(cx, i, r, &globals))
        .collect();
    let auth = auth::auth(cx, &raw.auth, mode, &routes);

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

#[cfg(test)]
mod tests;
