//! Fuzzes the token-parameter matcher with arbitrary queries. Whatever the bytes, stripping must
//! leave no piece whose name reads as a token parameter, keep every other piece byte for byte,
//! in order and after its own separator, and leave a query without a token untouched; the same
//! must hold for a `Referer` carrying the query.
//!
//! Input layout: the query string (request targets and most `Referer` values are text; other
//! bytes are not a query the proxy would parse).

#![no_main]

use libfuzzer_sys::fuzz_target;
use streamguard::policy::auth::{is_token_param, strip_referer, strip_token_params};

/// The pieces of `query` with the separator before each (empty for the first), split the way
/// the proxy documents: on `&` and on `;`.
fn pieces(query: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut separator = "";
    let mut rest = query;
    while let Some(at) = rest.find(['&', ';']) {
        out.push((separator, &rest[..at]));
        separator = &rest[at..=at];
        rest = &rest[at + 1..];
    }
    out.push((separator, rest));
    out
}

fn is_token(piece: &str, names: &[String]) -> bool {
    let name = piece.split_once('=').map_or(piece, |(name, _)| name);
    is_token_param(name, names)
}

/// The query left after stripping, built piece by piece: what the proxy must produce.
fn expected(query: &str, names: &[String]) -> String {
    let mut kept = String::new();
    let left = pieces(query).into_iter().filter(|(_, text)| !is_token(text, names));
    for (i, (separator, text)) in left.enumerate() {
        if i > 0 {
            kept.push_str(separator);
        }
        kept.push_str(text);
    }
    kept
}

fn check(prefix: &str, query: &str, stripped: Option<String>, names: &[String]) {
    let has_token = pieces(query).iter().any(|(_, text)| is_token(text, names));
    let Some(stripped) = stripped else {
        assert!(!has_token, "{query:?} kept a token");
        return;
    };
    let kept = expected(query, names);
    if kept.bytes().all(|b| b == b'&' || b == b';') {
        assert_eq!(stripped, prefix, "{query:?}");
    } else {
        assert_eq!(stripped, format!("{prefix}?{kept}"), "{query:?}");
    }
    let (_, left) = stripped.split_once('?').unwrap_or((&stripped, ""));
    assert!(pieces(left).iter().all(|(_, text)| !is_token(text, names)));
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let names = ["token".to_owned(), "access_token".to_owned()];
    check(
        "/p",
        query,
        strip_token_params(&format!("/p?{query}"), &names),
        &names,
    );
    // A Referer leaves with no token parameter and no fragment, whatever it carried.
    let referer = format!("https://app.example/p?{query}");
    let sent = strip_referer(&referer, &names).unwrap_or(referer);
    assert!(!sent.contains('#'), "{sent:?}");
    let (_, left) = sent.split_once('?').unwrap_or((&sent, ""));
    assert!(pieces(left).iter().all(|(_, text)| !is_token(text, &names)));
});
