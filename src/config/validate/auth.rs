//! `[auth]`: the verification key (exactly one source, matched to the algorithms), claims,
//! token sources and how a verified token is forwarded.

use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::cx::Cx;
use super::routes::route_path;
use super::values::{
    choice, flag, http_token, non_empty, nonzero, read_file, resolve_path, trim_trailing_newlines,
};
use super::{AUTH_MODES, FORWARD_AS, SAME_SITE};
use crate::config::raw::{RawAuth, Text};
use crate::config::types::*;
use crate::config::units::{parse_duration, parse_size};

/// Shortest HMAC secret accepted; below this a JWT can be brute-forced offline.
const MIN_SECRET_BYTES: usize = 16;

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

pub(super) fn auth(
    cx: &mut Cx<'_>,
    raw: &RawAuth,
    mode: AuthMode,
    routes: &[RouteConfig],
) -> AuthConfig {
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

/// `auth.mode`, read before the routes because their `auth` falls back to it.
pub(super) fn mode(cx: &mut Cx<'_>, raw: &RawAuth) -> AuthMode {
    cx.text("auth.mode", raw.mode.as_ref(), choice(AUTH_MODES))
        .unwrap_or(AuthMode::Required)
}
