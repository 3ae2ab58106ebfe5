//! How the verified token moves on: a [`ForwardPlan`] rewrites the request so that the app sees
//! the token only where `auth.forward_as` says, and no copy the client put anywhere else.

use std::borrow::Cow;
use std::fmt;

use http::header::{self, HeaderMap};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::token::{
    cookie_name, cookie_pieces, credential, strip_query_params, strip_referer, strip_ws_protocol,
    token_params, ws_protocol_entries, Credential,
};
use crate::config::types::{AuthConfig, ForwardAs};

/// Everything but RFC 3986 unreserved characters is escaped when a token goes into a query.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

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
    /// `Referer` without token parameters: the page the client came from may have carried one.
    pub referer: HeaderEdit,
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
        referer: forward_referer(cfg, headers),
        path_and_query: forward_query(cfg, path_and_query, token),
    }
}

/// The app gets the verified token (normalised), or one value of a scheme the operator lets
/// through (`auth.pass_authorization_schemes`), or no `Authorization` at all: never a credential
/// the proxy did not check. Several lines pass nothing: the field is a singleton, and apps
/// differ on which line they read.
fn forward_authorization(cfg: &AuthConfig, headers: &HeaderMap, token: Option<&str>) -> HeaderEdit {
    if let (Some(token), ForwardAs::Header) = (token, cfg.forward_as) {
        return HeaderEdit::Set(format!("Bearer {token}"));
    }
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (None, _) => HeaderEdit::Keep,
        (Some(only), None) if passes(cfg, only.as_bytes()) => HeaderEdit::Keep,
        _ => HeaderEdit::Remove,
    }
}

/// Whether an `Authorization` value is of a scheme listed in `auth.pass_authorization_schemes`.
fn passes(cfg: &AuthConfig, value: &[u8]) -> bool {
    match credential(value) {
        Credential::Scheme(scheme) => cfg
            .pass_authorization_schemes
            .iter()
            .any(|pass| pass.as_bytes().eq_ignore_ascii_case(scheme)),
        Credential::Bearer(_) | Credential::MalformedBearer => false,
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

/// `Referer` is a singleton (RFC 9110 §10.1.3): several lines, or a value that is not text and
/// so cannot be searched for a token, pass nothing.
fn forward_referer(cfg: &AuthConfig, headers: &HeaderMap) -> HeaderEdit {
    let mut values = headers.get_all(header::REFERER).iter();
    match (values.next(), values.next()) {
        (None, _) => HeaderEdit::Keep,
        (Some(only), None) => match only.to_str() {
            Ok(referer) => {
                strip_referer(referer, &token_params(cfg)).map_or(HeaderEdit::Keep, HeaderEdit::Set)
            }
            Err(_) => HeaderEdit::Remove,
        },
        _ => HeaderEdit::Remove,
    }
}

fn forward_query(cfg: &AuthConfig, path_and_query: &str, token: Option<&str>) -> Option<String> {
    let mut target = strip_query_params(path_and_query, &token_params(cfg));
    if let (ForwardAs::Query, Some(token)) = (cfg.forward_as, token) {
        target.push(if target.contains('?') { '&' } else { '?' });
        target.extend(utf8_percent_encode(&cfg.forward_name, QUERY_VALUE));
        target.push('=');
        target.extend(utf8_percent_encode(token, QUERY_VALUE));
    }
    (target != path_and_query).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::auth::fixtures::{headers, hs_config};

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

        let basic = [("authorization", "Basic dXNlcg==")];
        let bare = plan(&cfg, &basic, "/s");
        assert_eq!(
            bare.authorization,
            HeaderEdit::Remove,
            "Basic is not listed"
        );
        assert_eq!(bare.cookie, HeaderEdit::Set("app_jwt=T.K.N".into()));
        assert_eq!(bare.path_and_query, None);
        let passing = AuthConfig {
            pass_authorization_schemes: vec!["basic".into()],
            ..cfg
        };
        assert_eq!(plan(&passing, &basic, "/s").authorization, HeaderEdit::Keep);
    }

    #[test]
    fn unverified_credentials_never_pass() {
        let cfg = AuthConfig {
            pass_authorization_schemes: vec!["Basic".into(), "Token".into()],
            ..hs_config()
        };
        let unverified =
            |pairs: &[(&str, &str)]| forward_plan(&cfg, &headers(pairs), "/s", None).authorization;
        let cases: &[(&[(&str, &str)], HeaderEdit)] = &[
            (&[], HeaderEdit::Keep),
            (&[("authorization", "Bearer abc")], HeaderEdit::Remove),
            (&[("authorization", "Bearer\tabc")], HeaderEdit::Remove),
            (&[("authorization", "Bearerabc")], HeaderEdit::Remove),
            (&[("authorization", ", Bearer abc")], HeaderEdit::Remove),
            (
                &[("authorization", "Basic x, Bearer abc")],
                HeaderEdit::Remove,
            ),
            (&[("authorization", "Digest a=b")], HeaderEdit::Remove),
            (&[("authorization", "=x")], HeaderEdit::Remove),
            (&[("authorization", "Basic dXNlcg==")], HeaderEdit::Keep),
            (&[("authorization", "BASIC dXNlcg==")], HeaderEdit::Keep),
            (&[("authorization", "token abc")], HeaderEdit::Keep),
            (
                &[("authorization", "Basic x"), ("authorization", "Basic y")],
                HeaderEdit::Remove,
            ),
            (
                &[
                    ("authorization", "Basic x"),
                    ("authorization", "Bearer abc"),
                ],
                HeaderEdit::Remove,
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(unverified(pairs), *expected, "{pairs:?}");
        }
        // Verified, the token goes on normalised, in place of whatever the client sent.
        let verified = forward_plan(
            &cfg,
            &headers(&[
                ("authorization", "Basic x"),
                ("authorization", ", bearer\tT.K.N "),
            ]),
            "/s",
            Some("T.K.N"),
        );
        assert_eq!(
            verified.authorization,
            HeaderEdit::Set("Bearer T.K.N".into())
        );
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
    fn referers_lose_token_params() {
        let referer = |cfg: &AuthConfig, values: &[&[u8]]| {
            let mut map = HeaderMap::new();
            for value in values {
                let value = http::HeaderValue::from_bytes(value).expect("test referer");
                map.append(header::REFERER, value);
            }
            forward_plan(cfg, &map, "/s", None).referer
        };
        let cfg = hs_config();
        assert_eq!(referer(&cfg, &[]), HeaderEdit::Keep);
        assert_eq!(
            referer(&cfg, &[b"https://a.example/p?x=1"]),
            HeaderEdit::Keep
        );
        assert_eq!(
            referer(&cfg, &[b"https://a.example/p?x=1&Token[]=t"]),
            HeaderEdit::Set("https://a.example/p?x=1".into())
        );
        assert_eq!(
            referer(&cfg, &[b"https://a.example/p", b"https://a.example/q"]),
            HeaderEdit::Remove,
            "a singleton given twice"
        );
        assert_eq!(
            referer(&cfg, &[b"https://a.example/p?\xfftoken=t"]),
            HeaderEdit::Remove,
            "not text: cannot be searched"
        );
        let query = AuthConfig {
            forward_as: ForwardAs::Query,
            forward_name: "jwt".into(),
            ..hs_config()
        };
        assert_eq!(
            referer(&query, &[b"/p?jwt=t;a=1"]),
            HeaderEdit::Set("/p?a=1".into())
        );
    }

    #[test]
    fn header_edit_debug_hides_values() {
        let edit = HeaderEdit::Set("Bearer secret".into());
        assert!(!format!("{edit:?}").contains("secret"));
    }
}
