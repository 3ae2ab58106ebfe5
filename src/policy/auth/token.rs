//! Finding the token the client sent (header, cookie, WebSocket protocol entry, query
//! parameter), and taking it out of the URL and the protocol list before anything logs it.

use std::borrow::Cow;
use std::fmt;

use http::header::{self, HeaderMap};
use http::Uri;
use percent_encoding::percent_decode_str;

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
pub(super) fn bearer_token(headers: &HeaderMap) -> Option<String> {
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
}
