//! `[cors]`: allowed origins (normalised once here, so matching is a plain comparison) and the
//! preflight answer.

use std::time::Duration;

use super::cx::Cx;
use super::values::{flag, http_token};
use crate::config::raw::RawCors;
use crate::config::types::*;
use crate::config::units::parse_duration;

pub(super) const WILDCARD_ORIGIN: &str =
    "\"*\" is not allowed: a wildcard origin lets any site read user \
    streams; list the origins (e.g. \"https://app.example.com\") or use \
    \"https://*.example.com\" for subdomains";

pub(super) fn origin(s: &str) -> Result<OriginPattern, String> {
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

pub(super) fn cors(cx: &mut Cx<'_>, raw: &RawCors) -> CorsConfig {
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
