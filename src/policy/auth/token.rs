//! Finding the token the client sent (header, cookie, WebSocket protocol entry, query
//! parameter), and taking it out of the URL and the protocol list before anything logs it.
//!
//! Both sides read as leniently as the apps behind the proxy might: an `Authorization` value
//! that any app could take for a bearer token is verified or refused, never passed on unread,
//! and one matcher ([`is_token_param`]) decides, for lifting and for stripping alike, which URL
//! parameters (query, path parameters, `Referer`) are token parameters in any spelling.

use std::borrow::Cow;
use std::fmt;

use http::header::{self, HeaderMap};
use http::Uri;
use percent_encoding::percent_decode_str;

use super::jwt::AuthError;
use crate::config::types::{AuthConfig, ForwardAs};

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
    let separated = rest.first().is_some_and(|b| matches!(b, b' ' | b'\t'));
    let token = trim(rest, |b| matches!(b, b' ' | b'\t'));
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

// ---------------------------------------------------------------------------------------------
// Token parameters in URLs

/// The query parameters that carry a token: `auth.query_params`, and with `forward_as = "query"`
/// also `forward_name`, which a client must not set for the app.
pub fn token_params(cfg: &AuthConfig) -> Cow<'_, [String]> {
    if cfg.forward_as == ForwardAs::Query {
        let mut names = cfg.query_params.clone();
        names.push(cfg.forward_name.clone());
        Cow::Owned(names)
    } else {
        Cow::Borrowed(&cfg.query_params)
    }
}

/// The first configured parameter present with a non-empty value, percent-decoded, in the
/// order of `names`. `+` is left alone: JWTs never contain spaces, and base64 `+` must survive.
fn query_token(query: &str, names: &[String]) -> Option<String> {
    names.iter().find_map(|name| {
        query_pieces(query).find_map(|piece| {
            let value = piece.value()?;
            if !is_token_param(piece.name(), std::slice::from_ref(name)) {
                return None;
            }
            let value = percent_decode_str(value).decode_utf8().ok()?;
            (!value.is_empty()).then(|| value.into_owned())
        })
    })
}

/// One `name=value` piece of a query, with the separator before it (`&` or `;`; empty for
/// the first piece).
struct QueryPiece<'a> {
    separator: &'a str,
    text: &'a str,
}

impl<'a> QueryPiece<'a> {
    fn name(&self) -> &'a str {
        self.text
            .split_once('=')
            .map_or(self.text, |(name, _)| name)
    }

    fn value(&self) -> Option<&'a str> {
        self.text.split_once('=').map(|(_, value)| value)
    }
}

/// The pieces of a query, split on `&` and also on `;`, which some frameworks split on too.
fn query_pieces(query: &str) -> impl Iterator<Item = QueryPiece<'_>> {
    let mut rest = Some(query);
    let mut separator = "";
    std::iter::from_fn(move || {
        let text = rest?;
        let piece = match text.find(['&', ';']) {
            Some(at) => {
                rest = Some(&text[at + 1..]);
                QueryPiece {
                    separator: std::mem::replace(&mut separator, &text[at..=at]),
                    text: &text[..at],
                }
            }
            None => {
                rest = None;
                QueryPiece { separator, text }
            }
        };
        Some(piece)
    })
}

/// Whether a query parameter's raw name is one of `names` as some framework would read it, so
/// that no spelling of a token parameter gets past the proxy to an app that reads it as one:
/// percent-decoded and `+` read as a space (`%74oken`, form encoding), an array suffix dropped
/// (`token[]`, `token[0]`, `token[key]`: PHP, Rack, qs) and so is anything after a NUL (where C
/// code stops reading: `token%00x`), surrounding whitespace trimmed and
/// `.` or a space taken for `_` (PHP's mangling: `access.token` arrives as `access_token`), and
/// letters compared case-insensitively (`TOKEN`).
pub fn is_token_param(raw_name: &str, names: &[String]) -> bool {
    let decoded = form_decode(raw_name);
    let name = decoded
        .split(|b| *b == b'[' || *b == 0)
        .next()
        .unwrap_or_default();
    let name = trim(name, u8::is_ascii_whitespace);
    names.iter().any(|token| {
        let token = token.as_bytes();
        name.len() == token.len()
            && name
                .iter()
                .zip(token)
                .all(|(n, t)| n.eq_ignore_ascii_case(t) || (*t == b'_' && matches!(n, b'.' | b' ')))
    })
}

/// `application/x-www-form-urlencoded` decoding of a name: `+` is a space, `%XX` a byte.
fn form_decode(raw: &str) -> Cow<'_, [u8]> {
    if !raw.contains('+') {
        return percent_decode_str(raw).into();
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, part) in raw.split('+').enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend(percent_decode_str(part));
    }
    Cow::Owned(out)
}

/// Removes every token parameter ([`is_token_param`]) from `path_and_query`: from its query,
/// and from the parameters of its path segments (`/p;token=x`, as servlet containers read a
/// path); `None` when there is none.
///
/// Every other piece keeps its exact bytes, its order and the separator before it (the first
/// one left loses its separator, since the list starts there), empty pieces included, so the
/// upstream sees the same request minus the token. The `?` goes when nothing is left of the
/// query, a segment's `;` when nothing is left of its parameters.
pub fn strip_token_params(path_and_query: &str, names: &[String]) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let clean_path = strip_path_params(path, names);
    let clean_query = query.and_then(|query| strip_pieces(query, names));
    if clean_path.is_none() && clean_query.is_none() {
        return None;
    }
    let mut target = clean_path.unwrap_or_else(|| path.to_owned());
    if let Some(query) = clean_query.as_deref().or(query) {
        if clean_query.is_none() || !only_separators(query) {
            target.push('?');
            target.push_str(query);
        }
    }
    Some(target)
}

/// The path with token parameters removed from every segment; `None` when it has none.
fn strip_path_params(path: &str, names: &[String]) -> Option<String> {
    if !path.contains(';') {
        return None;
    }
    let mut stripped = false;
    let segments: Vec<Cow<'_, str>> = path
        .split('/')
        .map(|segment| {
            let Some((name, params)) = segment.split_once(';') else {
                return Cow::Borrowed(segment);
            };
            match strip_pieces(params, names) {
                None => Cow::Borrowed(segment),
                Some(kept) => {
                    stripped = true;
                    if only_separators(&kept) {
                        Cow::Owned(name.to_owned())
                    } else {
                        Cow::Owned(format!("{name};{kept}"))
                    }
                }
            }
        })
        .collect();
    stripped.then(|| segments.join("/"))
}

/// A parameter list without its token parameters; `None` when it has none.
fn strip_pieces(list: &str, names: &[String]) -> Option<String> {
    let is_token = |piece: &QueryPiece<'_>| is_token_param(piece.name(), names);
    if !query_pieces(list).any(|piece| is_token(&piece)) {
        return None;
    }
    let mut kept = String::with_capacity(list.len());
    for (i, piece) in query_pieces(list)
        .filter(|piece| !is_token(piece))
        .enumerate()
    {
        if i > 0 {
            kept.push_str(piece.separator);
        }
        kept.push_str(piece.text);
    }
    Some(kept)
}

/// Whether nothing but separators (so no parameter) is left of a list.
fn only_separators(list: &str) -> bool {
    list.bytes().all(|b| b == b'&' || b == b';')
}

/// [`strip_token_params`], or the target unchanged.
pub fn strip_query_params(path_and_query: &str, names: &[String]) -> String {
    strip_token_params(path_and_query, names).unwrap_or_else(|| path_and_query.to_owned())
}

/// A `Referer` value without token parameters, and without a fragment (RFC 9110 §10.1.3 allows
/// none, and one could hold a token too); `None` when it needs no change.
pub fn strip_referer(referer: &str, names: &[String]) -> Option<String> {
    let (url, fragment) = match referer.split_once('#') {
        Some((url, _)) => (url, true),
        None => (referer, false),
    };
    strip_token_params(url, names).or_else(|| fragment.then(|| url.to_owned()))
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

    const TOKEN_NAMES: [&str; 2] = ["token", "access_token"];

    #[test]
    fn strip_query_params_table() {
        let token = names(&TOKEN_NAMES);
        let cases = [
            ("/s", "/s"),
            ("/s?", "/s?"),
            ("/s?token=x", "/s"),
            ("/s?token=x&access_token=y", "/s"),
            ("/s?a=1&token=x", "/s?a=1"),
            ("/s?token=x&a=1", "/s?a=1"),
            ("/s?a=1&&token=x&b", "/s?a=1&&b"),
            ("/s?&token=x&a", "/s?&a"),
            ("/s?token&a=%20+b", "/s?a=%20+b"),
            ("/s?%74oken=x&a=1", "/s?a=1"),
            ("/s?to%6Ben=x", "/s"),
            (
                "/s?tokens=1&xtoken=2&token2&token_=3",
                "/s?tokens=1&xtoken=2&token2&token_=3",
            ),
            ("/s?a=token&b=x=token=y", "/s?a=token&b=x=token=y"),
            ("/s?token=a?b&c=d", "/s?c=d"),
            ("/p/token=x?q=1", "/p/token=x?q=1"),
            // Every spelling some framework reads as `token`.
            ("/s?TOKEN=1&Access_Token=2&a", "/s?a"),
            ("/s?token[]=1&a=2", "/s?a=2"),
            ("/s?token[0]=1&token[1]=2&a", "/s?a"),
            ("/s?token[key]=1&token[a][b]=2", "/s"),
            ("/s?token%5B%5D=1&a", "/s?a"),
            ("/s?token%5b0%5d=1&a", "/s?a"),
            ("/s?token[=1&a", "/s?a"),
            ("/s?access.token=1&access+token=2&access%20token=3", "/s"),
            ("/s?+token=1&%20token%20=2&a", "/s?a"),
            ("/s?token%00=1&token%00x=2&a", "/s?a"),
            ("/s?to+ken=1&tok.en=2", "/s?to+ken=1&tok.en=2"),
            // `;` separates too, and every piece keeps its own separator.
            ("/s?a=1;token=x&b=2", "/s?a=1&b=2"),
            ("/s?a=1&token=x;b=2", "/s?a=1;b=2"),
            ("/s?token=x;a=1", "/s?a=1"),
            ("/s?a=1;b=2&TOKEN=x", "/s?a=1;b=2"),
            ("/s?;token=x", "/s"),
            // Path parameters, as a servlet container reads them.
            ("/s;token=x", "/s"),
            ("/s;token=x?a=1", "/s?a=1"),
            ("/s;TOKEN[]=x;v=2/e;token=y?token=z&a", "/s;v=2/e?a"),
            ("/s;v=2;token=x/e", "/s;v=2/e"),
            ("/;token=x", "/"),
            ("/s;token=x?", "/s?"),
            ("/s;v=1?token=x", "/s;v=1"),
        ];
        for (input, expected) in cases {
            assert_eq!(strip_query_params(input, &token), expected, "{input}");
        }
        for untouched in [
            "/s?a&&b",
            "/s?a=1;b=2",
            "/s",
            "/s?tokens=1",
            "/s;v=1/t;x?a;b",
        ] {
            assert_eq!(strip_token_params(untouched, &token), None, "{untouched}");
        }
    }

    #[test]
    fn lifting_reads_every_spelling_it_strips() {
        let cfg = hs_config();
        for (uri, token) in [
            ("/s?TOKEN=a", "a"),
            ("/s?token[]=b&x", "b"),
            ("/s?token[0]=c", "c"),
            ("/s?x=1;token=d", "d"),
            ("/s?token%5B%5D=e", "e"),
            ("/s?Access.Token=f", "f"),
        ] {
            assert_eq!(
                find(&[], uri, &cfg),
                Ok(Some((token.to_owned(), TokenSource::Query))),
                "{uri}"
            );
            let stripped = strip_query_params(uri, &cfg.query_params);
            assert_eq!(find(&[], &stripped, &cfg), Ok(None), "{uri} -> {stripped}");
        }
    }

    #[test]
    fn referers_lose_token_params_and_fragments() {
        let token = names(&TOKEN_NAMES);
        let cases = [
            ("https://app.example/page", None),
            ("https://app.example/page?a=1", None),
            (
                "https://app.example/page?token=x&a=1",
                Some("https://app.example/page?a=1"),
            ),
            (
                "https://app.example/page?a=1;TOKEN[]=x",
                Some("https://app.example/page?a=1"),
            ),
            (
                "https://app.example/p?access_token=x",
                Some("https://app.example/p"),
            ),
            (
                "https://app.example/p#access_token=x",
                Some("https://app.example/p"),
            ),
            ("/relative?token=x#f", Some("/relative")),
        ];
        for (input, expected) in cases {
            assert_eq!(strip_referer(input, &token).as_deref(), expected, "{input}");
        }
    }

    #[test]
    fn forward_name_is_a_token_param_when_forwarded_in_the_query() {
        let cfg = hs_config();
        assert_eq!(*token_params(&cfg), cfg.query_params);
        let query = AuthConfig {
            forward_as: crate::config::types::ForwardAs::Query,
            forward_name: "jwt".into(),
            ..hs_config()
        };
        assert_eq!(*token_params(&query), ["access_token", "token", "jwt"]);
    }

    /// A query parameter name for the property test, and whether it names a token: spellings
    /// with a known answer, and arbitrary names judged by the matcher itself.
    fn param_name() -> impl Strategy<Value = (String, bool)> {
        let known = prop::sample::select(vec![
            ("token", true),
            ("%74oken", true),
            ("to%6Ben", true),
            ("TOKEN", true),
            ("Token", true),
            ("token[]", true),
            ("token[0]", true),
            ("token[key]", true),
            ("token%5B%5D", true),
            ("access_token", true),
            ("access.token", true),
            ("ACCESS+TOKEN", true),
            ("tok", false),
            ("tokens", false),
            ("xtoken", false),
            ("to+ken", false),
            ("a", false),
            ("b%20c", false),
            ("", false),
        ])
        .prop_map(|(name, token)| (name.to_owned(), token));
        let arbitrary = "[a-zA-Z0-9%+._ \\[\\]-]{0,10}".prop_map(|name| {
            let token = is_token_param(&name, &names(&TOKEN_NAMES));
            (name, token)
        });
        prop_oneof![known, arbitrary]
    }

    /// One query piece: the separator before it, its text, and whether it must go.
    fn piece() -> impl Strategy<Value = (&'static str, String, bool)> {
        let separator = prop::sample::select(vec!["&", ";"]);
        let value = prop::option::of("[a-zA-Z0-9%+=?/.~\\[\\]-]{0,6}");
        (separator, param_name(), value).prop_map(|(separator, (name, token), value)| {
            let text = match value {
                Some(value) => format!("{name}={value}"),
                None => name,
            };
            (separator, text, token)
        })
    }

    proptest! {
        #[test]
        fn stripping_removes_exactly_the_token_params(
            path in "/[a-z0-9/]{0,8}",
            pieces in prop::collection::vec(piece(), 0..10),
        ) {
            let names = names(&TOKEN_NAMES);
            let mut query = String::new();
            for (i, (separator, text, _)) in pieces.iter().enumerate() {
                if i > 0 {
                    query.push_str(separator);
                }
                query.push_str(text);
            }
            let input = format!("{path}?{query}");
            let output = strip_query_params(&input, &names);

            // What must survive: every other piece, byte for byte and in order, each after its
            // own separator (the first one left starts the query).
            let mut expected = String::new();
            let kept = pieces.iter().enumerate().filter(|(_, (_, _, token))| !token);
            for (n, (i, (separator, text, _))) in kept.enumerate() {
                if n > 0 && i > 0 {
                    expected.push_str(separator);
                }
                expected.push_str(text);
            }
            let (out_path, out_query) = output.split_once('?').unwrap_or((&output, ""));
            prop_assert_eq!(out_path, path.as_str());
            if pieces.iter().any(|(_, _, token)| *token) {
                if expected.bytes().all(|b| b == b'&' || b == b';') {
                    prop_assert!(!output.contains('?'), "{}", output);
                } else {
                    prop_assert_eq!(out_query, expected);
                }
            } else {
                prop_assert_eq!(&output, &input, "untouched without a token");
            }
            for piece in out_query.split(['&', ';']) {
                let name = piece.split_once('=').map_or(piece, |(name, _)| name);
                prop_assert!(!is_token_param(name, &names), "{} kept", piece);
            }
            // One matcher: nothing the lifting would read is left behind.
            let uri = output.parse::<Uri>();
            if let Ok(uri) = uri {
                let found = find(&[], &uri.to_string(), &hs_config());
                prop_assert!(!matches!(found, Ok(Some(_))), "{} still has a token", output);
            }
        }
    }

    /// A path segment for the property test: its text (`name;param;...`) and what must be
    /// left of it.
    fn segment() -> impl Strategy<Value = (String, String)> {
        let param = (param_name(), prop::option::of("[a-zA-Z0-9%+=.~-]{0,6}")).prop_map(
            |((name, token), value)| match value {
                Some(value) => (format!("{name}={value}"), token),
                None => (name, token),
            },
        );
        ("[a-z0-9.]{0,4}", prop::collection::vec(param, 0..4)).prop_map(|(name, params)| {
            let mut text = name.clone();
            let mut kept = name;
            for (param, _) in &params {
                text.push(';');
                text.push_str(param);
            }
            let left: Vec<&str> = params
                .iter()
                .filter(|(_, token)| !token)
                .map(|(param, _)| param.as_str())
                .collect();
            if params.iter().any(|(_, token)| *token) {
                if !left.iter().all(|param| param.is_empty()) {
                    kept.push(';');
                    kept.push_str(&left.join(";"));
                }
            } else {
                kept = text.clone();
            }
            (text, kept)
        })
    }

    proptest! {
        #[test]
        fn path_parameters_lose_exactly_the_token_params(
            segments in prop::collection::vec(segment(), 1..5),
        ) {
            let path: String = segments.iter().map(|(text, _)| format!("/{text}")).collect();
            let expected: String = segments.iter().map(|(_, kept)| format!("/{kept}")).collect();
            prop_assert_eq!(strip_query_params(&path, &names(&TOKEN_NAMES)), expected);
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
