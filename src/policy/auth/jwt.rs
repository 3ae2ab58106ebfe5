//! Verifying a token: keys loaded once at start-up (secret, PEM, JWKS), each restricted to the
//! algorithms of its own family, and claims checked against a clock the caller passes in.
//!
//! The JWS is taken apart here rather than by `jsonwebtoken::decode`: that function ignores a
//! `crit` header (RFC 7515 §4.1.11 says a recipient that does not understand a listed extension
//! must refuse the token), decodes the header again after a key was picked by `kid`, and parses
//! the claims twice. Here each part is decoded once, and only jsonwebtoken's signature check is
//! used.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use std::num::NonZeroU64;

use crate::config::types::{AuthConfig, KeySource};

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
    /// The key the token was verified with.
    pub key: KeyId,
}

/// Which verification key checked a token: a hash of the key material, so a key keeps its id
/// across reloads and a rotated or removed one is told apart (streams verified with a key the
/// configuration no longer trusts end; see `relay::lifecycle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(NonZeroU64);

impl KeyId {
    /// The id of the key made of `material` (a secret, a PEM file, a JWK's JSON).
    pub(crate) fn of(material: &[u8]) -> KeyId {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        material.hash(&mut hasher);
        KeyId(NonZeroU64::new(hasher.finish()).unwrap_or(NonZeroU64::MIN))
    }
}

/// How far ahead an expiry is acted on. No stream lives a century, and far enough out every
/// clock and timer stops representing the deadline (`SystemTime` and `Instant` arithmetic and
/// tokio's timer panic on overflow): a token expiring later never expires for a stream.
const EXPIRY_HORIZON: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

impl Identity {
    /// How long the token has left at `now`: zero once it has expired, `None` when `exp` lies
    /// beyond [`EXPIRY_HORIZON`] and there is nothing to schedule.
    pub fn expires_in(&self, now: SystemTime) -> Option<Duration> {
        let exp = UNIX_EPOCH.checked_add(Duration::from_secs(self.expires_at))?;
        let left = exp.duration_since(now).unwrap_or(Duration::ZERO);
        (left <= EXPIRY_HORIZON).then_some(left)
    }

    /// A claim as a string, if it is a string or a number (for claim bindings in routes).
    pub fn claim_str(&self, name: &str) -> Option<String> {
        self.claims.get(name).and_then(claim_string)
    }

    fn from_claims(
        claims: Map<String, Value>,
        cfg: &Claims,
        expires_at: u64,
        key: KeyId,
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
            key,
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
    #[error("token is {size} bytes, more than auth.max_token_size ({max} bytes)")]
    TooLarge { size: usize, max: usize },
    #[error("token header lists `crit` extensions, and streamguard implements none of them")]
    UnsupportedCrit,
    #[error("the Authorization header names the Bearer scheme but is not one `Bearer <token>`")]
    MalformedAuthorization,
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
            AuthError::TooLarge { .. } => "too_large",
            AuthError::UnsupportedCrit => "unsupported_crit",
            AuthError::MalformedAuthorization => "malformed_authorization",
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

/// Errors of jsonwebtoken's signature check: a signature that is not base64url is malformed;
/// anything else (a key the crypto library refuses) is the library's.
impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(err: jsonwebtoken::errors::Error) -> AuthError {
        match err.kind() {
            ErrorKind::Base64(_) => AuthError::Malformed,
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

/// A key and the algorithms it may verify: configured ones of its own family only.
struct VerifyingKey {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
    id: KeyId,
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
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    max_token_size: usize,
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
                let key = verifying_key(cfg, None, key, secret, KeyFamily::Hmac, None)
                    .ok_or_else(|| AuthSetupError::SecretWithoutHmac(algorithms.clone()))?;
                KeySet::Single(Box::new(key))
            }
            KeySource::PublicKeyPem(pem) => KeySet::Single(Box::new(pem_key(cfg, pem)?)),
            KeySource::Jwks(json) => KeySet::Jwks(jwks_keys(cfg, &serde_json::from_str(json)?)?),
        };
        Ok(Verifier {
            algorithms: algorithms.clone(),
            keys,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway.as_secs(),
            max_token_size: cfg.max_token_size,
            claims: Claims {
                user: cfg.user_claim.clone(),
                roles: cfg.roles_claim.clone(),
            },
        })
    }

    /// Checks size, header, signature, algorithm, issuer, audience, `exp` and `nbf` (against
    /// `now_unix`, with the configured leeway) and extracts the identity.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Identity, AuthError> {
        // Before any decoding: a validly signed token of any size would otherwise be decoded,
        // verified and forwarded, to an app that may have limits of its own.
        if token.len() > self.max_token_size {
            return Err(AuthError::TooLarge {
                size: token.len(),
                max: self.max_token_size,
            });
        }
        let jws = Jws::split(token)?;
        let header: JoseHeader = decode_part(jws.header)?;
        if header.crit {
            return Err(AuthError::UnsupportedCrit);
        }
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::BadAlgorithm);
        }
        let key = self.keys.select(header.kid.as_deref())?;
        // Also what keeps an RSA public key from being used as an HMAC secret: a key's list
        // holds algorithms of its own family only.
        if !key.algorithms.contains(&header.alg) {
            return Err(AuthError::BadAlgorithm);
        }
        if !jsonwebtoken::crypto::verify(
            jws.signature,
            jws.signed.as_bytes(),
            &key.key,
            header.alg,
        )? {
            return Err(AuthError::BadSignature);
        }
        let claims: Map<String, Value> = decode_part(jws.payload)?;
        self.check_issuer(&claims)?;
        self.check_audience(&claims)?;
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
        Identity::from_claims(claims, &self.claims, expires_at, key.id)
    }

    /// The ids of every key this verifier trusts.
    pub fn key_ids(&self) -> Vec<KeyId> {
        match &self.keys {
            KeySet::Single(key) => vec![key.id],
            KeySet::Jwks(keys) => keys.iter().map(|key| key.id).collect(),
        }
    }

    /// `iss` (RFC 7519 §4.1.1: one string) must be `auth.issuer`, when that is set.
    fn check_issuer(&self, claims: &Map<String, Value>) -> Result<(), AuthError> {
        let Some(issuer) = &self.issuer else {
            return Ok(());
        };
        match claims.get("iss") {
            None => Err(AuthError::MissingClaim("iss".into())),
            Some(Value::String(iss)) if iss == issuer => Ok(()),
            Some(_) => Err(AuthError::BadIssuer),
        }
    }

    /// `aud` (RFC 7519 §4.1.3: a string or an array of strings) must name `auth.audience`, when
    /// that is set.
    fn check_audience(&self, claims: &Map<String, Value>) -> Result<(), AuthError> {
        let Some(audience) = &self.audience else {
            return Ok(());
        };
        let ours = |value: &Value| value.as_str() == Some(audience.as_str());
        match claims.get("aud") {
            None => Err(AuthError::MissingClaim("aud".into())),
            Some(Value::Array(audiences)) if audiences.iter().any(ours) => Ok(()),
            Some(single) if ours(single) => Ok(()),
            Some(_) => Err(AuthError::BadAudience),
        }
    }
}

/// The three parts of a JWS in compact serialization (RFC 7515 §7.1), still base64url.
struct Jws<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
    /// `header.payload`: what the signature covers.
    signed: &'a str,
}

impl<'a> Jws<'a> {
    fn split(token: &'a str) -> Result<Jws<'a>, AuthError> {
        let (signed, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
        let (header, payload) = signed.split_once('.').ok_or(AuthError::Malformed)?;
        if payload.contains('.') {
            return Err(AuthError::Malformed);
        }
        Ok(Jws {
            header,
            payload,
            signature,
            signed,
        })
    }
}

/// The JOSE header fields streamguard acts on; the others (`typ`, `cty`, ...) are ignored.
#[derive(Deserialize)]
struct JoseHeader {
    /// An unknown name, `none` included, fails to parse: jsonwebtoken has no such algorithm.
    alg: Algorithm,
    #[serde(default)]
    kid: Option<String>,
    /// Whether `crit` is present at all, whatever its value (`null` and `[]` too: RFC 7515
    /// forbids both, so they are no reason to accept the token).
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: Deserializer<'de>>(value: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(value).map(|_| true)
}

/// A base64url part of a JWS (no padding, RFC 7515 §2), parsed as JSON. A repeated header field
/// is refused by the parse, so no `alg` can hide behind another.
fn decode_part<T: DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let json = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| AuthError::Malformed)
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
    material: &[u8],
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
    Some(VerifyingKey {
        kid,
        key,
        algorithms,
        id: KeyId::of(material),
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
        .find_map(|(key_family, load)| {
            verifying_key(cfg, None, load(pem).ok()?, pem, key_family, None)
        })
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
        // The key's own JSON is its material: the same JWK keeps its id across reloads.
        let material = serde_json::to_vec(jwk).unwrap_or_default();
        keys.extend(verifying_key(
            cfg,
            kid,
            key,
            &material,
            jwk_family(jwk),
            named_alg,
        ));
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
    use crate::policy::auth::fixtures::{config, hs_config, NOW, SECRET};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::json;

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

    fn identity_expiring(expires_at: u64) -> Identity {
        Identity {
            user: "alice".into(),
            roles: Vec::new(),
            expires_at,
            claims: Map::new(),
            key: KeyId::of(b"test"),
        }
    }

    #[test]
    fn expires_in_never_overflows_a_clock() {
        let now = UNIX_EPOCH + Duration::from_secs(NOW);
        let left = |exp: u64| identity_expiring(exp).expires_in(now);
        assert_eq!(left(NOW + 90), Some(Duration::from_secs(90)));
        assert_eq!(left(NOW), Some(Duration::ZERO));
        assert_eq!(left(NOW - 5), Some(Duration::ZERO), "expired: close now");
        assert_eq!(left(0), Some(Duration::ZERO));
        let late = now + Duration::from_millis(250);
        assert_eq!(
            identity_expiring(NOW + 1).expires_in(late),
            Some(Duration::from_millis(750)),
            "measured against the sub-second clock"
        );
        assert_eq!(left(NOW + EXPIRY_HORIZON.as_secs()), Some(EXPIRY_HORIZON));
        for far in [
            NOW + EXPIRY_HORIZON.as_secs() + 1,
            i64::MAX as u64,
            10_000_000_000_000_000_000,
            u64::MAX,
        ] {
            assert_eq!(left(far), None, "exp {far}: no deadline");
        }
    }

    /// The text of a JSON value a hostile or careless issuer might put in a NumericDate claim.
    fn time_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            "-?[0-9]{1,40}(\\.[0-9]{1,12})?([eE][+-]?[0-9]{1,4})?",
            prop::sample::select(vec![
                "\"NaN\"",
                "\"Infinity\"",
                "\"-Infinity\"",
                "\"1e19\"",
                "\"\"",
                "null",
                "true",
                "[]",
                "{}",
                "1e19",
                "1.8446744073709552e19",
                "-0",
                "-0.0",
                "0.5",
                "1e-400",
            ])
            .prop_map(str::to_owned),
        ]
    }

    proptest! {
        /// No NumericDate value, however odd, panics verification or what is computed from the
        /// verified expiry (the close-at-expiry deadline, the session cookie's Max-Age).
        #[test]
        fn time_claims_never_panic(
            exp in time_value(),
            nbf in prop::option::of(time_value()),
            iat in prop::option::of(time_value()),
            now in prop_oneof![Just(NOW), 0..=2 * NOW, any::<u64>()],
            clock in (any::<u64>(), 0u32..1_000_000_000),
        ) {
            let optional = |name: &str, value: &Option<String>| {
                value.as_ref().map(|v| format!(r#","{name}":{v}"#)).unwrap_or_default()
            };
            let payload = format!(
                r#"{{"sub":"alice","iss":"https://issuer.test","aud":"streams","exp":{exp}{}{}}}"#,
                optional("nbf", &nbf),
                optional("iat", &iat),
            );
            let token = hs256_raw(r#"{"alg":"HS256"}"#, &payload);
            let cfg = hs_config();
            if let Ok(identity) = verifier(&cfg).verify(&token, now) {
                prop_assert!(now < identity.expires_at.saturating_add(30), "accepted expired");
                let clock = UNIX_EPOCH
                    .checked_add(Duration::new(clock.0, clock.1))
                    .unwrap_or(UNIX_EPOCH);
                if let Some(left) = identity.expires_in(clock) {
                    prop_assert!(left <= EXPIRY_HORIZON);
                    prop_assert!(std::time::Instant::now().checked_add(left).is_some());
                }
                let cookie = crate::policy::auth::session_set_cookie(
                    &cfg,
                    &token,
                    identity.expires_at,
                    now,
                );
                let max_age = identity.expires_at.saturating_sub(now).min(3600);
                prop_assert!(cookie.ends_with(&format!("Max-Age={max_age}")), "{}", cookie);
            }
        }
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
        // RFC 7519 §4.1.1: one issuer, a string.
        assert_eq!(
            reason(with(claims(), "iss", json!(["https://issuer.test"]))),
            "bad_issuer"
        );
        assert_eq!(reason(with(claims(), "iss", json!(7))), "bad_issuer");
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

    /// An HS256 token with a hand-written JOSE header (jsonwebtoken's `Header` cannot carry
    /// `crit`, nor repeat a field).
    fn hs256_with_header(header: &str, claims: &Value) -> String {
        hs256_raw(header, &claims.to_string())
    }

    /// An HS256 token of the exact header and payload text given.
    fn hs256_raw(header: &str, payload: &str) -> String {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let signed = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let key = EncodingKey::from_secret(SECRET);
        let signature = jsonwebtoken::crypto::sign(signed.as_bytes(), &key, Algorithm::HS256)
            .expect("test token signs");
        format!("{signed}.{signature}")
    }

    #[test]
    fn crit_in_the_header_is_refused() {
        let v = verifier(&hs_config());
        let control = hs256_with_header(
            r#"{"alg":"HS256","typ":"JWT","x5u":"-","ext":1}"#,
            &claims(),
        );
        assert!(
            v.verify(&control, NOW).is_ok(),
            "other header fields are ignored"
        );
        for header in [
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#,
            r#"{"crit":["http://example.invalid/ext"],"alg":"HS256"}"#,
            r#"{"alg":"HS256","crit":[]}"#,
            r#"{"alg":"HS256","crit":null}"#,
            r#"{"alg":"HS256","crit":"exp"}"#,
        ] {
            let token = hs256_with_header(header, &claims());
            assert_eq!(refuse(&v, &token), AuthError::UnsupportedCrit, "{header}");
        }
        assert_eq!(AuthError::UnsupportedCrit.reason(), "unsupported_crit");
    }

    #[test]
    fn tokens_over_max_token_size_are_refused_before_decoding() {
        let big = hs256(&with(claims(), "pad", json!("x".repeat(12_000))));
        let at = |max_token_size: usize| {
            verifier(&AuthConfig {
                max_token_size,
                ..hs_config()
            })
        };
        assert!(at(big.len()).verify(&big, NOW).is_ok(), "at the cap");
        assert_eq!(
            refuse(&at(big.len() - 1), &big),
            AuthError::TooLarge {
                size: big.len(),
                max: big.len() - 1
            }
        );
        assert_eq!(refuse(&verifier(&hs_config()), &big).reason(), "too_large");
        // Not even split: garbage over the cap is too large, not malformed.
        assert_eq!(
            refuse(&verifier(&hs_config()), &"#".repeat(8193)).reason(),
            "too_large"
        );
    }

    #[test]
    fn a_header_field_given_twice_is_malformed() {
        let v = verifier(&hs_config());
        for header in [
            r#"{"alg":"HS256","alg":"none"}"#,
            r#"{"alg":"HS256","kid":"a","kid":"b"}"#,
            r#"{"alg":"HS256","crit":["x"],"crit":null}"#,
        ] {
            let token = hs256_with_header(header, &claims());
            assert_eq!(refuse(&v, &token), AuthError::Malformed, "{header}");
        }
    }

    #[test]
    fn parts_must_be_unpadded_base64url() {
        let v = verifier(&hs_config());
        let token = hs256_with_header(r#"{"alg":"HS256","kid":"??>?>?"}"#, &claims());
        let (header, rest) = token.split_once('.').expect("header part");
        assert!(header.contains('_') && header.contains('-'), "{header}");
        for header in [
            format!("{header}="),
            header.replace('_', "/").replace('-', "+"),
        ] {
            assert_eq!(
                refuse(&v, &format!("{header}.{rest}")),
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
        assert_eq!(
            identity(with(claims(), "sub", json!({"id": 1}))),
            Err(AuthError::InvalidClaim("sub".into()))
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
}
