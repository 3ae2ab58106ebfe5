//! Finding the token the client sent (header, cookie, WebSocket protocol entry, query
//! parameter), and taking it out of the URL and the protocol list before anything logs it.

use std::borrow::Cow;
use std::fmt;

use http::header::{self, HeaderMap};
use http::Uri;
use percent_encoding::percent_decode_str;

use super::jwt::AuthError;
use crate::config::types::AuthConfig;

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
/// non-empty one wins. `Err` when the `Authorization` header names the Bearer scheme but does
/// not hold exactly one well-formed bearer token: that is refused like a bad token, since an
/// app could read a token out of it that the proxy never verified.
pub fn find_token(
    headers: &HeaderMap,
    uri: &Uri,
    cfg: &AuthConfig,
) -> Result<Option<FoundToken>, AuthError> {
    let found = |source| move |token: String| FoundToken { token, source };
    Ok(bearer_token(headers)?
        .map(found(TokenSource::Header))
        .or_else(|| cookie_value(headers, &cfg.cookie).map(found(TokenSource::Cookie)))
        .or_else(|| {
            let prefix = cfg.websocket_protocol_prefix.as_deref()?;
            ws_protocol_token(headers, prefix).map(found(TokenSource::WebSocketProtocol))
        })
        .or_else(|| {
            let query = uri.query()?;
            query_token(query, &cfg.query_params).map(found(TokenSource::Query))
        }))
}

/// The bearer token of the `Authorization` header, if it carries one. Several bearer values
/// (over several lines, or a list on one) are malformed: `Authorization` is a singleton field
/// (RFC 9110 §11.6.2), and apps differ on which one they would read.
fn bearer_token(headers: &HeaderMap) -> Result<Option<String>, AuthError> {
    let mut found = None;
    for value in headers.get_all(header::AUTHORIZATION) {
        match credential(value.as_bytes()) {
            Credential::Bearer(token) if found.is_none() => found = Some(token.to_owned()),
            Credential::Bearer(_) | Credential::MalformedBearer => {
                return Err(AuthError::MalformedAuthorization)
            }
            Credential::Scheme(_) => {}
        }
    }
    Ok(found)
}

/// One `Authorization` value as the most lenient app would read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Credential<'a> {
    /// `Bearer <token68>` (RFC 6750 §2.1): the token the proxy verifies.
    Bearer(&'a str),
    /// Mentions Bearer but is not one `Bearer <token68>`: `Bearer`, `Bearer<token>`,
    /// `Bearer a b`, `Basic x, Bearer y`, ...
    MalformedBearer,
    /// Any other scheme, by its name (empty when the value starts with no token).
    Scheme(&'a [u8]),
}

/// Reads one `Authorization` value (RFC 9110 §11.4: `auth-scheme [ 1*SP ( token68 /
/// #auth-param ) ]`, the scheme case-insensitive). Recognition is lenient on purpose (HTAB for
/// SP, surrounding whitespace and commas, any word that starts with `bearer`), so that the proxy
/// verifies whatever a lenient app would take for a bearer token, or refuses it.
pub(super) fn credential(value: &[u8]) -> Credential<'_> {
    const BEARER: &[u8] = b"bearer";
    let is_gap = |b: &u8| matches!(b, b' ' | b'\t' | b',');
    let starts_bearer = |word: &[u8]| {
        word.get(..BEARER.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(BEARER))
    };
    let value = trim(value, is_gap);
    if !value.split(is_gap).any(starts_bearer) {
        let scheme_len = value.iter().take_while(|b| is_tchar(**b)).count();
        return Credential::Scheme(&value[..scheme_len]);
    }
    let Some(rest) = value.get(BEARER.len()..).filter(|_| starts_bearer(value)) else {
        return Credential::MalformedBearer;
    };
    let token = trim(rest, |b| matches!(b, b' ' | b'\t'));
    let separated = token.len() < rest.len();
    match std::str::from_utf8(token) {
        Ok(token) if separated && is_token68(token.as_bytes()) => Credential::Bearer(token),
        _ => Credential::MalformedBearer,
    }
}

fn trim(bytes: &[u8], strip: impl Fn(&u8) -> bool) -> &[u8] {
    let start = bytes.iter().position(|b| !strip(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !strip(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 §11.2 `token68`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(token: &[u8]) -> bool {
    let body_len = token.iter().rposition(|b| *b != b'=').map_or(0, |i| i + 1);
    body_len > 0
        && token[..body_len]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b))
}

/// Every `name=value` piece of every `Cookie` header, trimmed, in request order. HTTP/2 may
/// split cookies over several header lines; they are one list (RFC 9113 §8.2.3).
pub(super) fn cookie_pieces(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .filter(|piece| !piece.is_empty())
}

pub(super) fn cookie_name(piece: &str) -> &str {
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

pub(super) fn ws_protocol_entries(headers: &HeaderMap) -> impl Iterator<Item = &str> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::AuthConfig;
    use crate::policy::auth::fixtures::{headers, hs_config};
    use proptest::prelude::*;

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    type Found = Result<Option<(String, TokenSource)>, AuthError>;

    fn find(pairs: Pairs<'_>, uri: &str, cfg: &AuthConfig) -> Found {
        let uri: Uri = uri.parse().expect("test uri");
        find_token(&headers(pairs), &uri, cfg)
            .map(|found| found.map(|found| (found.token, found.source)))
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
        assert_eq!(found(0), Ok(Some(("H".into(), TokenSource::Header))));
        assert_eq!(found(1), Ok(Some(("C".into(), TokenSource::Cookie))));
        assert_eq!(
            found(2),
            Ok(Some(("W".into(), TokenSource::WebSocketProtocol)))
        );
        assert_eq!(found(3), Ok(Some(("Q".into(), TokenSource::Query))));
        assert_eq!(find(&[], "/s?other=1", &cfg), Ok(None));
        let malformed = [("authorization", "Bearer"), all[1], all[2]];
        assert_eq!(
            find(&malformed, uri, &cfg),
            Err(AuthError::MalformedAuthorization),
            "a malformed bearer is no reason to look further"
        );
    }

    #[test]
    fn token_lookup_details() {
        let cfg = hs_config();
        let cases: &[(Pairs<'_>, &str, Option<&str>)] = &[
            (&[("authorization", "bEaReR   abc")], "/", Some("abc")),
            (&[("authorization", "Basic dXNlcg==")], "/", None),
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
            let got = find(pairs, uri, &cfg).map(|found| found.map(|(token, _)| token));
            assert_eq!(got, Ok(expected.map(str::to_owned)), "{pairs:?} {uri}");
        }
    }

    #[test]
    fn credentials_are_read_as_a_lenient_app_would() {
        use Credential::*;
        let cases: &[(&[u8], Credential<'_>)] = &[
            (b"Bearer abc.def.ghi", Bearer("abc.def.ghi")),
            (b"bearer abc", Bearer("abc")),
            (b"BEARER  abc", Bearer("abc")),
            (b"Bearer\tabc", Bearer("abc")),
            (b" \tBearer \t abc \t", Bearer("abc")),
            (b", Bearer abc", Bearer("abc")),
            (b"Bearer abc,", Bearer("abc")),
            (b"Bearer a+b/c==", Bearer("a+b/c==")),
            (b"Bearer", MalformedBearer),
            (b"Bearer ", MalformedBearer),
            (b"Bearer\t", MalformedBearer),
            (b"Bearerabc.def.ghi", MalformedBearer),
            (b"Bearer,abc", MalformedBearer),
            (b"Bearer a b", MalformedBearer),
            (b"Bearer abc, Bearer def", MalformedBearer),
            (b"Bearer =abc", MalformedBearer),
            (b"Bearer ab=c", MalformedBearer),
            (b"Bearer \"abc\"", MalformedBearer),
            (b"Bearer abc\xff", MalformedBearer),
            (b"Basic x, Bearer abc", MalformedBearer),
            (b"Token abc bearer=1", MalformedBearer),
            (b"BearerToken abc", MalformedBearer),
            (b"Basic dXNlcg==", Scheme(b"Basic")),
            (b", Basic dXNlcg==", Scheme(b"Basic")),
            (b"Digest username=\"a\", realm=\"b\"", Scheme(b"Digest")),
            (b"Token abc", Scheme(b"Token")),
            (b"", Scheme(b"")),
            (b" , ", Scheme(b"")),
            (b"=abc", Scheme(b"")),
        ];
        for (value, expected) in cases {
            assert_eq!(
                credential(value),
                *expected,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn several_bearer_credentials_are_malformed() {
        let cfg = hs_config();
        for pairs in [
            &[("authorization", "Bearer a"), ("authorization", "Bearer a")][..],
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
            &[("authorization", "Basic x"), ("authorization", "Bearer")],
            &[("authorization", "Bearer a"), ("authorization", "bearer")],
        ] {
            assert_eq!(
                find(pairs, "/", &cfg),
                Err(AuthError::MalformedAuthorization),
                "{pairs:?}"
            );
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
}
