//! JWT authentication: where a token is found, whether it is valid, and how it moves on.
//!
//! Browsers cannot set headers on `EventSource` or WebSocket handshakes, so legacy stream apps
//! take tokens from query strings, where they end up in access logs and referrers. This module
//! finds the token wherever the client put it, verifies it once at the edge with a clock the
//! caller supplies, and plans a rewrite of the request so that the upstream receives the token
//! in exactly one agreed place and nowhere else.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use http::header::{self, HeaderMap};
use http::Uri;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};

use crate::config::types::{AuthConfig, ForwardAs, KeySource, SameSite};

/// Everything but RFC 3986 unreserved characters is escaped when a token goes into a query.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

// ---------------------------------------------------------------------------------------------
// Finding the token

/// Where the client put its token; the caller uses it to strip the token from that place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// The `auth.cookie` cookie.
    Cookie,
    /// A `Sec-WebSocket-Protocol` entry starting with `auth.websocket_protocol_prefix`.
    WebSocketProtocol,
    /// One of `auth.query_params`.
    Query,
}

#[derive(Clone, PartialEq, Eq)]
pub struct FoundToken {
    pub token: String,
    pub source: TokenSource,
}

impl fmt::Debug for FoundToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A token in a debug log is as good as a leaked password.
        f.debug_struct("FoundToken")
            .field("token", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// Looks for a token in the order header, cookie, WebSocket protocol, query; the first
/// non-empty one wins.
pub fn find_token(headers: &HeaderMap, uri: &Uri, cfg: &AuthConfig) -> Option<FoundToken> {
    let found = |source| move |token: String| FoundToken { token, source };
    bearer_token(headers)
        .map(found(TokenSource::Header))
        .or_else(|| cookie_value(headers, &cfg.cookie).map(found(TokenSource::Cookie)))
        .or_else(|| {
            let prefix = cfg.websocket_protocol_prefix.as_deref()?;
            ws_protocol_token(headers, prefix).map(found(TokenSource::WebSocketProtocol))
        })
        .or_else(|| {
            let query = uri.query()?;
            query_token(query, &cfg.query_params).map(found(TokenSource::Query))
        })
}

/// The first `Authorization` value using the `Bearer` scheme (compared case-insensitively,
/// RFC 9110 §11.1).
fn bearer_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .find_map(|value| {
            let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
            let token = token.trim_start();
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
        })
}

/// Every `name=value` piece of every `Cookie` header, trimmed, in request order. HTTP/2 may
/// split cookies over several header lines; they are one list (RFC 9113 §8.2.3).
fn cookie_pieces(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .filter(|piece| !piece.is_empty())
}

fn cookie_name(piece: &str) -> &str {
    piece.split_once('=').map_or(piece, |(name, _)| name).trim()
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    cookie_pieces(headers).find_map(|piece| {
        let (_, value) = piece.split_once('=')?;
        let value = value.trim();
        // RFC 6265 allows the value to be wrapped in double quotes.
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (cookie_name(piece) == name && !value.is_empty()).then(|| value.to_owned())
    })
}

fn ws_protocol_entries(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
}

fn ws_protocol_token(headers: &HeaderMap, prefix: &str) -> Option<String> {
    ws_protocol_entries(headers)
        .find_map(|entry| entry.strip_prefix(prefix).filter(|token| !token.is_empty()))
        .map(str::to_owned)
}

/// The first configured parameter present with a non-empty value, percent-decoded. `+` is
/// left alone: JWTs never contain spaces, and base64 `+` must survive.
fn query_token(query: &str, names: &[String]) -> Option<String> {
    names.iter().find_map(|name| {
        query.split('&').find_map(|piece| {
            let (_, value) = piece.split_once('=')?;
            if !param_is_named(piece, std::slice::from_ref(name)) {
                return None;
            }
            let value = percent_decode_str(value).decode_utf8().ok()?;
            (!value.is_empty()).then(|| value.into_owned())
        })
    })
}

/// Whether a query piece's name, percent-decoded, is one of `names`, so that `%74oken`
/// cannot sneak a `token` past the filter.
fn param_is_named(piece: &str, names: &[String]) -> bool {
    let raw_name = piece.split_once('=').map_or(piece, |(name, _)| name);
    let decoded: Cow<'_, [u8]> = percent_decode_str(raw_name).into();
    names.iter().any(|name| name.as_bytes() == &*decoded)
}

// ---------------------------------------------------------------------------------------------
// Taking the token out of the request

/// Removes every parameter named in `names` from the query of `path_and_query`.
///
/// The other parameters keep their order and their exact bytes, empty pieces included, so
/// the upstream sees the same request minus the token. The `?` goes when nothing is left.
pub fn strip_query_params(path_and_query: &str, names: &[String]) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|piece| !param_is_named(piece, names))
        .collect();
    if kept.iter().all(|piece| piece.is_empty()) {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// Removes the token entries from a `Sec-WebSocket-Protocol` value; `None` when no
/// protocol is left.
pub fn strip_ws_protocol(value: &str, prefix: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty() && !entry.starts_with(prefix))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// What to do to one request header before proxying.
#[derive(Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Keep,
    Remove,
    Set(String),
}

impl fmt::Debug for HeaderEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderEdit::Keep => f.write_str("Keep"),
            HeaderEdit::Remove => f.write_str("Remove"),
            // The new value usually carries the token.
            HeaderEdit::Set(value) => write!(f, "Set(<{} bytes>)", value.len()),
        }
    }
}

/// How to rewrite a request so that the upstream sees the verified token only where
/// `auth.forward_as` says, and no copy the client sent elsewhere (including a client-made
/// value under `forward_name`, which could otherwise pass as verified).
#[derive(Clone, PartialEq, Eq)]
pub struct ForwardPlan {
    pub authorization: HeaderEdit,
    pub cookie: HeaderEdit,
    pub websocket_protocol: HeaderEdit,
    /// The new request target, or `None` to keep it.
    pub path_and_query: Option<String>,
}

/// Plans the rewrite for a request. `token` is the verified token, or `None` when the request
/// has no verified identity: then nothing is forwarded, but streamguard's own cookie and any
/// client-made `forward_name` value are still removed.
pub fn forward_plan(
    cfg: &AuthConfig,
    headers: &HeaderMap,
    path_and_query: &str,
    token: Option<&str>,
) -> ForwardPlan {
    ForwardPlan {
        authorization: forward_authorization(cfg, headers, token),
        cookie: forward_cookie(cfg, headers, token),
        websocket_protocol: forward_ws_protocol(cfg, headers),
        path_and_query: forward_query(cfg, path_and_query, token),
    }
}

fn forward_authorization(cfg: &AuthConfig, headers: &HeaderMap, token: Option<&str>) -> HeaderEdit {
    let Some(token) = token else {
        return HeaderEdit::Keep;
    };
    match cfg.forward_as {
        ForwardAs::Header => HeaderEdit::Set(format!("Bearer {token}")),
        _ if bearer_token(headers).is_some() => HeaderEdit::Remove,
        _ => HeaderEdit::Keep,
    }
}

fn forward_cookie(cfg: &AuthConfig, headers: &HeaderMap, token: Option<&str>) -> HeaderEdit {
    let forward_as_cookie = cfg.forward_as == ForwardAs::Cookie;
    let is_token_cookie =
        |name: &str| name == cfg.cookie || (forward_as_cookie && name == cfg.forward_name);
    let mut removed = false;
    let mut kept: Vec<Cow<'_, str>> = Vec::new();
    for piece in cookie_pieces(headers) {
        if is_token_cookie(cookie_name(piece)) {
            removed = true;
        } else {
            kept.push(Cow::Borrowed(piece));
        }
    }
    if let (true, Some(token)) = (forward_as_cookie, token) {
        kept.push(Cow::Owned(format!("{}={token}", cfg.forward_name)));
    } else if !removed {
        return HeaderEdit::Keep;
    }
    if kept.is_empty() {
        HeaderEdit::Remove
    } else {
        HeaderEdit::Set(kept.join("; "))
    }
}

fn forward_ws_protocol(cfg: &AuthConfig, headers: &HeaderMap) -> HeaderEdit {
    let Some(prefix) = cfg.websocket_protocol_prefix.as_deref() else {
        return HeaderEdit::Keep;
    };
    if !ws_protocol_entries(headers).any(|entry| entry.starts_with(prefix)) {
        return HeaderEdit::Keep;
    }
    let joined = ws_protocol_entries(headers).collect::<Vec<_>>().join(", ");
    strip_ws_protocol(&joined, prefix).map_or(HeaderEdit::Remove, HeaderEdit::Set)
}

fn forward_query(cfg: &AuthConfig, path_and_query: &str, token: Option<&str>) -> Option<String> {
    let mut names = cfg.query_params.clone();
    if cfg.forward_as == ForwardAs::Query {
        names.push(cfg.forward_name.clone());
    }
    let mut target = strip_query_params(path_and_query, &names);
    if let (ForwardAs::Query, Some(token)) = (cfg.forward_as, token) {
        target.push(if target.contains('?') { '&' } else { '?' });
        target.extend(utf8_percent_encode(&cfg.forward_name, QUERY_VALUE));
        target.push('=');
        target.extend(utf8_percent_encode(token, QUERY_VALUE));
    }
    (target != path_and_query).then_some(target)
}

// ---------------------------------------------------------------------------------------------
// Session cookies

/// A `Set-Cookie` value that stores `token` as the session cookie, expiring with the token at
/// the latest.
pub fn session_set_cookie(
    cfg: &AuthConfig,
    token: &str,
    token_exp_unix: u64,
    now_unix: u64,
) -> String {
    let max_age = cfg
        .session
        .ttl
        .as_secs()
        .min(token_exp_unix.saturating_sub(now_unix));
    session_cookie(cfg, token, max_age)
}

/// A `Set-Cookie` value that deletes the session cookie.
pub fn session_clear_cookie(cfg: &AuthConfig) -> String {
    session_cookie(cfg, "", 0)
}

fn session_cookie(cfg: &AuthConfig, value: &str, max_age: u64) -> String {
    let secure = if cfg.session.secure { "; Secure" } else { "" };
    let same_site = match cfg.session.same_site {
        SameSite::Strict => "Strict",
        SameSite::Lax => "Lax",
        SameSite::None => "None",
    };
    format!(
        "{}={value}; HttpOnly{secure}; SameSite={same_site}; Path=/; Max-Age={max_age}",
        cfg.cookie
    )
}

// ---------------------------------------------------------------------------------------------
// Verification

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The `auth.user_claim` value (a string, or a number in decimal).
    pub user: String,
    /// The `auth.roles_claim` value: an array of strings, or one string of roles separated by
    /// spaces or commas. Empty when the claim is absent.
    pub roles: Vec<String>,
    /// `exp`, in Unix seconds.
    pub expires_at: u64,
    pub claims: Map<String, Value>,
}

impl Identity {
    /// A claim as a string, if it is a string or a number (for claim bindings in routes).
    pub fn claim_str(&self, name: &str) -> Option<String> {
        self.claims.get(name).and_then(claim_string)
    }

    fn from_claims(
        claims: Map<String, Value>,
        cfg: &Claims,
        expires_at: u64,
    ) -> Result<Identity, AuthError> {
        let user = claims
            .get(&cfg.user)
            .ok_or_else(|| AuthError::MissingClaim(cfg.user.clone()))?;
        let user = claim_string(user)
            .filter(|user| !user.is_empty())
            .ok_or_else(|| AuthError::InvalidClaim(cfg.user.clone()))?;
        let roles = match claims.get(&cfg.roles) {
            Some(Value::String(roles)) => roles
                .split([' ', ','])
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(Value::Array(roles)) => roles
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        Ok(Identity {
            user,
            roles,
            expires_at,
            claims,
        })
    }
}

fn claim_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Why a token was refused. Messages name the rule, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token is not a well-formed jwt")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token algorithm is not allowed by auth.algorithms for this key")]
    BadAlgorithm,
    #[error("token key id matches no configured key")]
    UnknownKid,
    #[error("token issuer is not auth.issuer")]
    BadIssuer,
    #[error("token audience does not include auth.audience")]
    BadAudience,
    #[error("token has no `{0}` claim")]
    MissingClaim(String),
    #[error("token claim `{0}` has an unusable value")]
    InvalidClaim(String),
    #[error("token expired at {expires_at} (now {now}, leeway {leeway}s)")]
    Expired {
        expires_at: u64,
        now: u64,
        leeway: u64,
    },
    #[error("token is not valid before {not_before} (now {now}, leeway {leeway}s)")]
    NotYetValid {
        not_before: u64,
        now: u64,
        leeway: u64,
    },
    #[error("token was refused by the jwt library")]
    Other,
}

impl AuthError {
    /// A stable label for the security log.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::BadAlgorithm => "bad_algorithm",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::BadIssuer => "bad_issuer",
            AuthError::BadAudience => "bad_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::InvalidClaim(_) => "invalid_claim",
            AuthError::Expired { .. } => "expired",
            AuthError::NotYetValid { .. } => "not_yet_valid",
            AuthError::Other => "invalid_token",
        }
    }
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(err: jsonwebtoken::errors::Error) -> AuthError {
        match err.into_kind() {
            // A header with `"alg": "none"` (or any unknown name) fails to parse here, since
            // jsonwebtoken has no such algorithm.
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => AuthError::Malformed,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthError::BadAlgorithm,
            ErrorKind::InvalidIssuer => AuthError::BadIssuer,
            ErrorKind::InvalidAudience => AuthError::BadAudience,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim),
            _ => AuthError::Other,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("auth needs a key (secret, public_key_file or jwks_file) but none is configured")]
    MissingKey,
    #[error("auth.secret is an hmac key but auth.algorithms {0:?} has no HS* algorithm")]
    SecretWithoutHmac(Vec<Algorithm>),
    #[error("auth.public_key_file is not an rsa, ec or ed25519 public key usable with auth.algorithms {0:?}")]
    UnusablePem(Vec<Algorithm>),
    #[error("auth.jwks_file is not a jwk set: {0}")]
    InvalidJwks(#[from] serde_json::Error),
    #[error("auth.jwks_file key {kid:?} cannot be loaded: {source}")]
    UnusableJwk {
        kid: Option<String>,
        source: jsonwebtoken::errors::Error,
    },
    #[error("auth.jwks_file has no signing key usable with auth.algorithms {0:?}")]
    NoUsableJwk(Vec<Algorithm>),
}

/// The key families of JWS algorithms; a key only ever verifies its own family, which is what
/// defeats HS/RS confusion (an RSA public key used as an HMAC secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> KeyFamily {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyFamily::Hmac,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => KeyFamily::Rsa,
        Algorithm::ES256 | Algorithm::ES384 => KeyFamily::Ec,
        Algorithm::EdDSA => KeyFamily::Ed,
    }
}

/// A key with the validation rules for the algorithms it may verify.
struct VerifyingKey {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

enum KeySet {
    /// A secret or PEM key: used whatever `kid` the token names.
    Single(Box<VerifyingKey>),
    /// A JWKS: picked by `kid`, or the only key when the token names none.
    Jwks(Vec<VerifyingKey>),
}

impl KeySet {
    fn select(&self, kid: Option<&str>) -> Result<&VerifyingKey, AuthError> {
        match (self, kid) {
            (KeySet::Single(key), _) => Ok(key),
            (KeySet::Jwks(keys), Some(kid)) => keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid))
                .ok_or(AuthError::UnknownKid),
            (KeySet::Jwks(keys), None) => match keys.as_slice() {
                [only] => Ok(only),
                _ => Err(AuthError::UnknownKid),
            },
        }
    }
}

/// The claims that make an [`Identity`].
struct Claims {
    user: String,
    roles: String,
}

/// Verifies tokens against the configured keys; built once at start-up.
pub struct Verifier {
    algorithms: Vec<Algorithm>,
    keys: KeySet,
    leeway: u64,
    claims: Claims,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.algorithms)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, AuthSetupError> {
        let algorithms = &cfg.algorithms;
        let keys = match cfg.key.as_ref().ok_or(AuthSetupError::MissingKey)? {
            KeySource::Secret(secret) => {
                let key = DecodingKey::from_secret(secret);
                let key = verifying_key(cfg, None, key, KeyFamily::Hmac, None)
                    .ok_or_else(|| AuthSetupError::SecretWithoutHmac(algorithms.clone()))?;
                KeySet::Single(Box::new(key))
            }
            KeySource::PublicKeyPem(pem) => KeySet::Single(Box::new(pem_key(cfg, pem)?)),
            KeySource::Jwks(json) => KeySet::Jwks(jwks_keys(cfg, &serde_json::from_str(json)?)?),
        };
        Ok(Verifier {
            algorithms: algorithms.clone(),
            keys,
            leeway: cfg.leeway.as_secs(),
            claims: Claims {
                user: cfg.user_claim.clone(),
                roles: cfg.roles_claim.clone(),
            },
        })
    }

    /// Checks signature, algorithm, issuer, audience, `exp` and `nbf` (against `now_unix`,
    /// with the configured leeway) and extracts the identity.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Identity, AuthError> {
        let key = match &self.keys {
            // `decode` checks the algorithm against the key's own list, a subset of
            // `self.algorithms`, so the header need not be decoded twice.
            KeySet::Single(key) => key,
            KeySet::Jwks(_) => {
                let header = jsonwebtoken::decode_header(token)?;
                if !self.algorithms.contains(&header.alg) {
                    return Err(AuthError::BadAlgorithm);
                }
                self.keys.select(header.kid.as_deref())?
            }
        };
        let claims =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)?.claims;
        let expires_at =
            time_claim(&claims, "exp")?.ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
        if now_unix >= expires_at.saturating_add(self.leeway) {
            return Err(AuthError::Expired {
                expires_at,
                now: now_unix,
                leeway: self.leeway,
            });
        }
        if let Some(not_before) = time_claim(&claims, "nbf")? {
            if now_unix.saturating_add(self.leeway) < not_before {
                return Err(AuthError::NotYetValid {
                    not_before,
                    now: now_unix,
                    leeway: self.leeway,
                });
            }
        }
        Identity::from_claims(claims, &self.claims, expires_at)
    }
}

/// A NumericDate claim (RFC 7519 §2) in whole seconds, if present.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let seconds = value.as_u64().or_else(|| {
        let float = value.as_f64()?;
        (float.is_finite() && float >= 0.0 && float < u64::MAX as f64).then_some(float as u64)
    });
    seconds
        .map(Some)
        .ok_or_else(|| AuthError::InvalidClaim(name.to_owned()))
}

/// Builds a key restricted to the configured algorithms of its family (and to the JWK's own
/// `alg`, if it names one); `None` when no algorithm is left.
fn verifying_key(
    cfg: &AuthConfig,
    kid: Option<String>,
    key: DecodingKey,
    key_family: KeyFamily,
    only: Option<Algorithm>,
) -> Option<VerifyingKey> {
    let algorithms: Vec<Algorithm> = cfg
        .algorithms
        .iter()
        .copied()
        .filter(|&alg| family(alg) == key_family && only.is_none_or(|only| only == alg))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let mut validation = Validation::default();
    validation.algorithms = algorithms;
    // Time claims are checked in `verify` against the caller's clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation.required_spec_claims = HashSet::new();
    if let Some(issuer) = &cfg.issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".into());
    }
    validation.validate_aud = cfg.audience.is_some();
    if let Some(audience) = &cfg.audience {
        validation.set_audience(&[audience]);
        validation.required_spec_claims.insert("aud".into());
    }
    Some(VerifyingKey {
        kid,
        key,
        validation,
    })
}

/// Loads a PEM public key as the first family that both parses it and has a configured
/// algorithm.
fn pem_key(cfg: &AuthConfig, pem: &[u8]) -> Result<VerifyingKey, AuthSetupError> {
    type Loader = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let loaders: [(KeyFamily, Loader); 3] = [
        (KeyFamily::Rsa, DecodingKey::from_rsa_pem),
        (KeyFamily::Ec, DecodingKey::from_ec_pem),
        (KeyFamily::Ed, DecodingKey::from_ed_pem),
    ];
    loaders
        .into_iter()
        .find_map(|(key_family, load)| verifying_key(cfg, None, load(pem).ok()?, key_family, None))
        .ok_or_else(|| AuthSetupError::UnusablePem(cfg.algorithms.clone()))
}

/// Loads every signing key of a JWKS that fits a configured algorithm. Keys for other
/// algorithms or for encryption are skipped: they may legitimately share the document.
fn jwks_keys(cfg: &AuthConfig, set: &JwkSet) -> Result<Vec<VerifyingKey>, AuthSetupError> {
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let named_alg = match jwk.common.key_algorithm {
            // Names such as `RSA-OAEP` are encryption algorithms: not a signing key.
            Some(alg) => match alg.to_string().parse::<Algorithm>() {
                Ok(alg) => Some(alg),
                Err(_) => continue,
            },
            None => None,
        };
        let kid = jwk.common.key_id.clone();
        let key = DecodingKey::from_jwk(jwk).map_err(|source| AuthSetupError::UnusableJwk {
            kid: kid.clone(),
            source,
        })?;
        keys.extend(verifying_key(cfg, kid, key, jwk_family(jwk), named_alg));
    }
    if keys.is_empty() {
        return Err(AuthSetupError::NoUsableJwk(cfg.algorithms.clone()));
    }
    Ok(keys)
}

fn jwk_family(jwk: &Jwk) -> KeyFamily {
    match jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
        AlgorithmParameters::EllipticCurve(_) => KeyFamily::Ec,
        AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Ed,
        AlgorithmParameters::OctetKey(_) => KeyFamily::Hmac,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::SessionConfig;
    use http::HeaderValue;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::json;
    use std::time::Duration;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/",
                $name
            ))
        };
    }

    const RSA_PRIVATE: &str = fixture!("rsa_private.pem");
    const RSA_PUBLIC: &str = fixture!("rsa_public.pem");
    const EC_PRIVATE: &str = fixture!("ec_private.pem");
    const EC_PUBLIC: &str = fixture!("ec_public.pem");
    const JWKS: &str = fixture!("jwks.json");
    const SECRET: &[u8] = b"a-test-secret-that-is-32-bytes!!";
    const NOW: u64 = 1_700_000_000;

    fn config(key: KeySource, algorithms: &[Algorithm]) -> AuthConfig {
        AuthConfig {
            mode: crate::config::types::AuthMode::Required,
            algorithms: algorithms.to_vec(),
            key: Some(key),
            issuer: Some("https://issuer.test".into()),
            audience: Some("streams".into()),
            leeway: Duration::from_secs(30),
            user_claim: "sub".into(),
            roles_claim: "roles".into(),
            query_params: vec!["access_token".into(), "token".into()],
            cookie: "sg_session".into(),
            forward_as: ForwardAs::Header,
            forward_name: "authorization".into(),
            close_on_expiry: true,
            websocket_protocol_prefix: None,
            session: SessionConfig {
                path: "/_streamguard/session".into(),
                ttl: Duration::from_secs(3600),
                secure: true,
                same_site: SameSite::Strict,
            },
        }
    }

    fn hs_config() -> AuthConfig {
        config(KeySource::Secret(SECRET.to_vec()), &[Algorithm::HS256])
    }

    fn claims() -> Value {
        json!({
            "sub": "alice",
            "iss": "https://issuer.test",
            "aud": "streams",
            "exp": NOW + 600,
            "roles": ["reader", "admin"],
            "tenant_id": "acme",
        })
    }

    fn with(mut claims: Value, name: &str, value: Value) -> Value {
        claims[name] = value;
        claims
    }

    fn without(mut claims: Value, name: &str) -> Value {
        claims.as_object_mut().map(|c| c.remove(name));
        claims
    }

    fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
        let header = Header {
            kid: kid.map(str::to_owned),
            ..Header::new(alg)
        };
        encode(&header, claims, key).expect("test token encodes")
    }

    fn hs256(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            None,
            claims,
            &EncodingKey::from_secret(SECRET),
        )
    }

    fn rsa_signer() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa fixture")
    }

    fn verifier(cfg: &AuthConfig) -> Verifier {
        Verifier::new(cfg).expect("test verifier builds")
    }

    /// Verifies, expecting failure, and checks the error cannot leak the token.
    fn refuse(verifier: &Verifier, token: &str) -> AuthError {
        let err = verifier
            .verify(token, NOW)
            .expect_err("token must be refused");
        let signature = token.rsplit('.').next().unwrap_or(token);
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(
                signature.len() < 8 || !shown.contains(signature),
                "error shows the token: {shown}"
            );
        }
        err
    }

    #[test]
    fn valid_hs256_token_gives_identity() {
        let identity = verifier(&hs_config())
            .verify(&hs256(&claims()), NOW)
            .expect("valid");
        assert_eq!(identity.user, "alice");
        assert_eq!(identity.roles, ["reader", "admin"]);
        assert_eq!(identity.expires_at, NOW + 600);
        assert_eq!(identity.claim_str("tenant_id").as_deref(), Some("acme"));
        assert_eq!(identity.claim_str("roles"), None);
    }

    #[test]
    fn time_claims_use_the_given_clock_and_leeway() {
        let v = verifier(&hs_config());
        let at = |claims: Value| {
            v.verify(&hs256(&claims), NOW)
                .map(|_| ())
                .map_err(|e| e.reason())
        };
        assert_eq!(
            at(with(claims(), "exp", json!(NOW - 10))),
            Ok(()),
            "inside 30s leeway"
        );
        assert_eq!(at(with(claims(), "exp", json!(NOW - 30))), Err("expired"));
        assert_eq!(at(with(claims(), "exp", json!(NOW - 3600))), Err("expired"));
        assert_eq!(
            at(with(claims(), "nbf", json!(NOW + 20))),
            Ok(()),
            "inside 30s leeway"
        );
        assert_eq!(
            at(with(claims(), "nbf", json!(NOW + 100))),
            Err("not_yet_valid")
        );
        assert_eq!(
            at(with(claims(), "nbf", json!("soon"))),
            Err("invalid_claim")
        );
        assert_eq!(
            at(with(claims(), "exp", json!("later"))),
            Err("invalid_claim")
        );
        assert_eq!(at(without(claims(), "exp")), Err("missing_claim"));
        // The same token is valid or not depending only on `now`.
        let token = hs256(&claims());
        assert!(v.verify(&token, NOW + 629).is_ok());
        assert!(matches!(
            v.verify(&token, NOW + 630),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn issuer_and_audience_are_enforced() {
        let v = verifier(&hs_config());
        let reason = |claims: Value| refuse(&v, &hs256(&claims)).reason();
        assert_eq!(
            reason(with(claims(), "iss", json!("https://evil.test"))),
            "bad_issuer"
        );
        assert_eq!(reason(without(claims(), "iss")), "missing_claim");
        assert_eq!(
            reason(with(claims(), "aud", json!("other"))),
            "bad_audience"
        );
        assert_eq!(
            reason(with(claims(), "aud", json!(["a", "b"]))),
            "bad_audience"
        );
        assert_eq!(reason(without(claims(), "aud")), "missing_claim");
        assert!(v
            .verify(&hs256(&with(claims(), "aud", json!(["x", "streams"]))), NOW)
            .is_ok());

        let open = verifier(&AuthConfig {
            issuer: None,
            audience: None,
            ..hs_config()
        });
        assert!(open
            .verify(&hs256(&without(without(claims(), "iss"), "aud")), NOW)
            .is_ok());
    }

    #[test]
    fn signatures_are_checked() {
        let v = verifier(&hs_config());
        let other = sign(
            Algorithm::HS256,
            None,
            &claims(),
            &EncodingKey::from_secret(b"another secret"),
        );
        assert_eq!(refuse(&v, &other), AuthError::BadSignature);

        // Swap in a payload naming another user, keeping the original signature.
        let genuine = hs256(&claims());
        let forged = hs256(&with(claims(), "sub", json!("mallory")));
        let mut parts: Vec<&str> = genuine.split('.').collect();
        parts[1] = forged.split('.').nth(1).expect("payload part");
        assert_eq!(refuse(&v, &parts.join(".")), AuthError::BadSignature);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let v = verifier(&hs_config());
        for token in ["", "abc", "a.b", "a.b.c", "a.b.c.d", "....", "Bearer x.y.z"] {
            assert_eq!(refuse(&v, token), AuthError::Malformed, "{token:?}");
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let genuine = hs256(&claims());
        let payload = genuine.split('.').nth(1).expect("payload part");
        // base64url of {"alg":"none","typ":"JWT"} and of {"alg":"NONE"}.
        for header in ["eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", "eyJhbGciOiJOT05FIn0"] {
            let unsigned = format!("{header}.{payload}.");
            assert_eq!(
                refuse(&verifier(&hs_config()), &unsigned),
                AuthError::Malformed
            );
        }
    }

    #[test]
    fn algorithms_outside_the_list_are_refused() {
        let v = verifier(&hs_config());
        let hs384 = sign(
            Algorithm::HS384,
            None,
            &claims(),
            &EncodingKey::from_secret(SECRET),
        );
        assert_eq!(refuse(&v, &hs384), AuthError::BadAlgorithm);
        let rs256 = sign(Algorithm::RS256, None, &claims(), &rsa_signer());
        assert_eq!(refuse(&v, &rs256), AuthError::BadAlgorithm);
    }

    #[test]
    fn hmac_with_the_rsa_public_key_is_refused() {
        let forged = sign(
            Algorithm::HS256,
            None,
            &claims(),
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        );
        let pem = KeySource::PublicKeyPem(RSA_PUBLIC.as_bytes().to_vec());
        let rs_only = verifier(&config(pem.clone(), &[Algorithm::RS256]));
        assert_eq!(refuse(&rs_only, &forged), AuthError::BadAlgorithm);
        // Even a careless list naming both families cannot make the RSA key an HMAC secret.
        let mixed = verifier(&config(pem, &[Algorithm::RS256, Algorithm::HS256]));
        assert_eq!(refuse(&mixed, &forged), AuthError::BadAlgorithm);
        let genuine = sign(Algorithm::RS256, None, &claims(), &rsa_signer());
        assert_eq!(
            mixed.verify(&genuine, NOW).map(|i| i.user),
            Ok("alice".into())
        );
    }

    #[test]
    fn pem_keys_of_each_family_verify() {
        let rsa = verifier(&config(
            KeySource::PublicKeyPem(RSA_PUBLIC.as_bytes().to_vec()),
            &[Algorithm::RS256, Algorithm::ES256],
        ));
        let token = sign(Algorithm::RS256, Some("ignored"), &claims(), &rsa_signer());
        assert!(rsa.verify(&token, NOW).is_ok());

        let ec = verifier(&config(
            KeySource::PublicKeyPem(EC_PUBLIC.as_bytes().to_vec()),
            &[Algorithm::RS256, Algorithm::ES256],
        ));
        let ec_signer = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec fixture");
        assert!(ec
            .verify(&sign(Algorithm::ES256, None, &claims(), &ec_signer), NOW)
            .is_ok());
        assert_eq!(refuse(&ec, &token), AuthError::BadAlgorithm);
    }

    fn jwks_config(jwks: String) -> AuthConfig {
        config(KeySource::Jwks(jwks), &[Algorithm::RS256])
    }

    fn two_key_jwks() -> String {
        let mut set: Value = serde_json::from_str(JWKS).expect("jwks fixture");
        let mut second = set["keys"][0].clone();
        second["kid"] = json!("k2");
        set["keys"].as_array_mut().expect("keys array").push(second);
        set.to_string()
    }

    #[test]
    fn jwks_keys_are_picked_by_kid() {
        let single = verifier(&jwks_config(JWKS.into()));
        let signer = rsa_signer();
        assert!(single
            .verify(&sign(Algorithm::RS256, Some("k1"), &claims(), &signer), NOW)
            .is_ok());
        assert!(single
            .verify(&sign(Algorithm::RS256, None, &claims(), &signer), NOW)
            .is_ok());
        let unknown = sign(Algorithm::RS256, Some("k9"), &claims(), &signer);
        assert_eq!(refuse(&single, &unknown), AuthError::UnknownKid);

        let double = verifier(&jwks_config(two_key_jwks()));
        assert!(double
            .verify(&sign(Algorithm::RS256, Some("k2"), &claims(), &signer), NOW)
            .is_ok());
        let anonymous = sign(Algorithm::RS256, None, &claims(), &signer);
        assert_eq!(refuse(&double, &anonymous), AuthError::UnknownKid);
    }

    #[test]
    fn jwks_alg_restricts_its_key() {
        let cfg = config(
            KeySource::Jwks(JWKS.into()),
            &[Algorithm::RS256, Algorithm::RS384],
        );
        let v = verifier(&cfg);
        let rs384 = sign(Algorithm::RS384, Some("k1"), &claims(), &rsa_signer());
        assert_eq!(
            refuse(&v, &rs384),
            AuthError::BadAlgorithm,
            "k1 is declared RS256"
        );
    }

    #[test]
    fn setup_errors() {
        let setup = |cfg: AuthConfig| Verifier::new(&cfg).map(|_| ()).map_err(|e| e.to_string());
        let cases = [
            (
                AuthConfig {
                    key: None,
                    ..hs_config()
                },
                "none is configured",
            ),
            (
                config(KeySource::Secret(SECRET.to_vec()), &[Algorithm::RS256]),
                "no HS* algorithm",
            ),
            (
                config(
                    KeySource::PublicKeyPem(b"not a pem".to_vec()),
                    &[Algorithm::RS256],
                ),
                "public_key_file",
            ),
            (
                config(
                    KeySource::PublicKeyPem(RSA_PUBLIC.as_bytes().to_vec()),
                    &[Algorithm::ES256],
                ),
                "public_key_file",
            ),
            (jwks_config("{".into()), "not a jwk set"),
            (
                config(KeySource::Jwks(JWKS.into()), &[Algorithm::ES256]),
                "no signing key",
            ),
        ];
        for (cfg, expected) in cases {
            let err = setup(cfg).expect_err(expected);
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn identity_claim_shapes() {
        let v = verifier(&hs_config());
        let identity = |claims: Value| v.verify(&hs256(&claims), NOW);
        let numeric = identity(with(claims(), "sub", json!(42))).expect("numeric sub");
        assert_eq!(numeric.user, "42");
        let spaced = identity(with(claims(), "roles", json!("reader writer,admin,,")))
            .expect("roles string");
        assert_eq!(spaced.roles, ["reader", "writer", "admin"]);
        let none = identity(without(claims(), "roles")).expect("no roles");
        assert!(none.roles.is_empty());
        assert_eq!(
            identity(without(claims(), "sub")),
            Err(AuthError::MissingClaim("sub".into()))
        );
        assert_eq!(
            identity(with(claims(), "sub", json!(""))),
            Err(AuthError::InvalidClaim("sub".into()))
        );
        // jsonwebtoken itself refuses a registered claim of the wrong JSON type.
        assert_eq!(
            identity(with(claims(), "sub", json!({"id": 1}))),
            Err(AuthError::Malformed)
        );

        let by_uid = verifier(&AuthConfig {
            user_claim: "uid".into(),
            ..hs_config()
        });
        let uid_object = hs256(&with(claims(), "uid", json!({"id": 1})));
        assert_eq!(
            by_uid.verify(&uid_object, NOW),
            Err(AuthError::InvalidClaim("uid".into()))
        );
        let uid = by_uid
            .verify(&hs256(&with(claims(), "uid", json!("u-7"))), NOW)
            .map(|i| i.user);
        assert_eq!(uid, Ok("u-7".into()));
    }

    // --- finding tokens

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            let name = http::HeaderName::from_bytes(name.as_bytes()).expect("test header name");
            map.append(
                name,
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        map
    }

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn find(pairs: Pairs<'_>, uri: &str, cfg: &AuthConfig) -> Option<(String, TokenSource)> {
        let uri: Uri = uri.parse().expect("test uri");
        find_token(&headers(pairs), &uri, cfg).map(|found| (found.token, found.source))
    }

    #[test]
    fn token_sources_in_priority_order() {
        let cfg = AuthConfig {
            websocket_protocol_prefix: Some("bearer.".into()),
            ..hs_config()
        };
        let all = [
            ("authorization", "Bearer H"),
            ("cookie", "a=1; sg_session=C"),
            ("sec-websocket-protocol", "chat, bearer.W"),
        ];
        let uri = "/s?token=Q";
        let found = |n: usize| find(&all[n..], uri, &cfg);
        assert_eq!(found(0), Some(("H".into(), TokenSource::Header)));
        assert_eq!(found(1), Some(("C".into(), TokenSource::Cookie)));
        assert_eq!(found(2), Some(("W".into(), TokenSource::WebSocketProtocol)));
        assert_eq!(found(3), Some(("Q".into(), TokenSource::Query)));
        assert_eq!(find(&[], "/s?other=1", &cfg), None);
    }

    #[test]
    fn token_lookup_details() {
        let cfg = hs_config();
        let cases: &[(Pairs<'_>, &str, Option<&str>)] = &[
            (&[("authorization", "bEaReR   abc")], "/", Some("abc")),
            (&[("authorization", "Basic dXNlcg==")], "/", None),
            (&[("authorization", "Bearer ")], "/", None),
            (
                &[
                    ("authorization", "Basic x"),
                    ("authorization", "Bearer second"),
                ],
                "/",
                Some("second"),
            ),
            (
                &[("cookie", "x=1;sg_session=\"quoted\"")],
                "/",
                Some("quoted"),
            ),
            (&[("cookie", "sg_session=")], "/", None),
            (&[("cookie", "sg_session_old=x")], "/", None),
            (
                &[("cookie", "a=1"), ("cookie", "sg_session=second-line")],
                "/",
                Some("second-line"),
            ),
            (&[("sec-websocket-protocol", "bearer.W")], "/", None),
            (&[], "/s?a=1&%74oken=enc%2Eoded", Some("enc.oded")),
            (&[], "/s?token=a+b", Some("a+b")),
            (&[], "/s?token=&access_token=second", Some("second")),
            (
                &[],
                "/s?token=1&access_token=configured-first",
                Some("configured-first"),
            ),
            (&[], "/s?token", None),
            (&[], "/s?tokens=1", None),
        ];
        for (pairs, uri, expected) in cases {
            let got = find(pairs, uri, &cfg).map(|(token, _)| token);
            assert_eq!(got.as_deref(), *expected, "{pairs:?} {uri}");
        }
    }

    #[test]
    fn found_token_debug_is_redacted() {
        let found = FoundToken {
            token: "secret-token".into(),
            source: TokenSource::Query,
        };
        assert!(!format!("{found:?}").contains("secret-token"));
    }

    // --- stripping

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn strip_query_params_table() {
        let token = names(&["token", "access_token"]);
        let cases = [
            ("/s", "/s"),
            ("/s?", "/s"),
            ("/s?token=x", "/s"),
            ("/s?token=x&access_token=y", "/s"),
            ("/s?a=1&token=x", "/s?a=1"),
            ("/s?token=x&a=1", "/s?a=1"),
            ("/s?a=1&&token=x&b", "/s?a=1&&b"),
            ("/s?token&a=%20+b", "/s?a=%20+b"),
            ("/s?%74oken=x&a=1", "/s?a=1"),
            ("/s?to%6Ben=x", "/s"),
            ("/s?tokens=1&xtoken=2&token2", "/s?tokens=1&xtoken=2&token2"),
            ("/s?a=token&b=x=token=y", "/s?a=token&b=x=token=y"),
            ("/s?TOKEN=1", "/s?TOKEN=1"),
            ("/s?token=a?b&c=d", "/s?c=d"),
            ("/p/token=x?q=1", "/p/token=x?q=1"),
        ];
        for (input, expected) in cases {
            assert_eq!(strip_query_params(input, &token), expected, "{input}");
        }
        assert_eq!(
            strip_query_params("/s?a&&b", &token),
            "/s?a&&b",
            "untouched when nothing matches"
        );
    }

    /// A query parameter for the property test: its raw text and whether it must go.
    fn param() -> impl Strategy<Value = (String, bool)> {
        let names = prop::sample::select(vec![
            ("token", true),
            ("%74oken", true),
            ("to%6Ben", true),
            ("access_token", true),
            ("Token", false),
            ("tok", false),
            ("tokens", false),
            ("a", false),
            ("b%20c", false),
            ("", false),
        ]);
        let value = prop::option::of("[a-zA-Z0-9%+=?/.~-]{0,6}");
        (names, value).prop_map(|((name, removed), value)| match value {
            Some(value) => (format!("{name}={value}"), removed),
            None => (name.to_owned(), removed),
        })
    }

    proptest! {
        #[test]
        fn stripping_removes_exactly_the_named_params(
            path in "/[a-z0-9/]{0,8}",
            params in prop::collection::vec(param(), 0..8),
        ) {
            let query: Vec<&str> = params.iter().map(|(raw, _)| raw.as_str()).collect();
            let input = format!("{path}?{}", query.join("&"));
            let output = strip_query_params(&input, &names(&["token", "access_token"]));

            let expected: Vec<&str> =
                params.iter().filter(|(_, removed)| !removed).map(|(raw, _)| raw.as_str()).collect();
            let (out_path, out_query) = output.split_once('?').unwrap_or((&output, ""));
            prop_assert_eq!(out_path, path.as_str());
            if expected.iter().all(|p| p.is_empty()) {
                prop_assert!(!output.contains('?'));
            } else {
                prop_assert_eq!(out_query, expected.join("&"));
            }
            for piece in out_query.split('&') {
                prop_assert!(!param_is_named(piece, &names(&["token", "access_token"])), "{} kept", piece);
            }
        }
    }

    #[test]
    fn strip_ws_protocol_table() {
        let cases = [
            ("bearer.abc", None),
            ("chat, bearer.abc", Some("chat")),
            ("bearer.abc,chat,  v2 ", Some("chat, v2")),
            ("chat", Some("chat")),
            (" , ", None),
        ];
        for (input, expected) in cases {
            assert_eq!(
                strip_ws_protocol(input, "bearer.").as_deref(),
                expected,
                "{input}"
            );
        }
    }

    // --- forwarding

    fn plan(cfg: &AuthConfig, pairs: &[(&str, &str)], target: &str) -> ForwardPlan {
        forward_plan(cfg, &headers(pairs), target, Some("T.K.N"))
    }

    #[test]
    fn forward_as_header() {
        let cfg = AuthConfig {
            websocket_protocol_prefix: Some("bearer.".into()),
            ..hs_config()
        };
        let p = plan(
            &cfg,
            &[
                ("cookie", "a=1; sg_session=old; b=2"),
                ("sec-websocket-protocol", "chat, bearer.old"),
            ],
            "/s?x=1&token=old",
        );
        assert_eq!(p.authorization, HeaderEdit::Set("Bearer T.K.N".into()));
        assert_eq!(p.cookie, HeaderEdit::Set("a=1; b=2".into()));
        assert_eq!(p.websocket_protocol, HeaderEdit::Set("chat".into()));
        assert_eq!(p.path_and_query.as_deref(), Some("/s?x=1"));

        let untouched = plan(
            &cfg,
            &[("cookie", "a=1"), ("sec-websocket-protocol", "chat")],
            "/s?x=1",
        );
        assert_eq!(untouched.cookie, HeaderEdit::Keep);
        assert_eq!(untouched.websocket_protocol, HeaderEdit::Keep);
        assert_eq!(untouched.path_and_query, None);

        let only_token = plan(
            &cfg,
            &[
                ("cookie", "sg_session=old"),
                ("sec-websocket-protocol", "bearer.x"),
            ],
            "/s",
        );
        assert_eq!(only_token.cookie, HeaderEdit::Remove);
        assert_eq!(only_token.websocket_protocol, HeaderEdit::Remove);
    }

    #[test]
    fn forward_as_cookie() {
        let cfg = AuthConfig {
            forward_as: ForwardAs::Cookie,
            forward_name: "app_jwt".into(),
            ..hs_config()
        };
        let p = plan(
            &cfg,
            &[
                ("authorization", "Bearer old"),
                ("cookie", "a=1; app_jwt=forged"),
                ("cookie", "sg_session=s; b=2"),
            ],
            "/s?token=old",
        );
        assert_eq!(p.authorization, HeaderEdit::Remove);
        assert_eq!(p.cookie, HeaderEdit::Set("a=1; b=2; app_jwt=T.K.N".into()));
        assert_eq!(p.path_and_query.as_deref(), Some("/s"));

        let bare = plan(&cfg, &[("authorization", "Basic dXNlcg==")], "/s");
        assert_eq!(bare.authorization, HeaderEdit::Keep);
        assert_eq!(bare.cookie, HeaderEdit::Set("app_jwt=T.K.N".into()));
        assert_eq!(bare.path_and_query, None);
    }

    #[test]
    fn forward_as_query() {
        let cfg = AuthConfig {
            forward_as: ForwardAs::Query,
            forward_name: "jwt".into(),
            ..hs_config()
        };
        let p = plan(
            &cfg,
            &[("cookie", "a=1")],
            "/s?jwt=forged&x=1&access_token=old",
        );
        assert_eq!(p.cookie, HeaderEdit::Keep);
        assert_eq!(p.path_and_query.as_deref(), Some("/s?x=1&jwt=T.K.N"));
        let fresh = forward_plan(&cfg, &HeaderMap::new(), "/s", Some("a b&c=d"));
        assert_eq!(
            fresh.path_and_query.as_deref(),
            Some("/s?jwt=a%20b%26c%3Dd")
        );
    }

    #[test]
    fn header_edit_debug_hides_values() {
        let edit = HeaderEdit::Set("Bearer secret".into());
        assert!(!format!("{edit:?}").contains("secret"));
    }

    // --- session cookies

    #[test]
    fn session_cookie_lifetime_and_attributes() {
        let cfg = hs_config();
        assert_eq!(
            session_set_cookie(&cfg, "T", NOW + 7200, NOW),
            "sg_session=T; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=3600"
        );
        assert!(session_set_cookie(&cfg, "T", NOW + 90, NOW).ends_with("; Max-Age=90"));
        assert!(session_set_cookie(&cfg, "T", NOW - 5, NOW).ends_with("; Max-Age=0"));

        let lax = AuthConfig {
            session: SessionConfig {
                secure: false,
                same_site: SameSite::Lax,
                ..cfg.session.clone()
            },
            ..cfg
        };
        assert_eq!(
            session_clear_cookie(&lax),
            "sg_session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"
        );
    }
}
