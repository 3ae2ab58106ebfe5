//! `[[route]]`: path patterns, per-route auth, claims bound to path parameters, and the
//! overrides of `[sse]`, `[websocket]` and `[limits]`.

use std::collections::BTreeMap;

use toml::Spanned;

use super::cx::Cx;
use super::limits::limits;
use super::streams::{sse, websocket};
use super::values::{choice, non_empty};
use super::AUTH_MODES;
use crate::config::raw::{RawRoute, Text};
use crate::config::types::*;

pub(super) fn route_path(s: &str) -> Result<Vec<RouteSegment>, String> {
    let example = "e.g. \"/events/{user}\"";
    let rest = s
        .strip_prefix('/')
        .ok_or_else(|| format!("{s:?} must start with \"/\", {example}"))?;
    if s.contains(['?', '#']) {
        return Err(format!(
            "{s:?} contains a query or fragment; routes match the path only, {example}"
        ));
    }
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut segments: Vec<RouteSegment> = Vec::new();
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err(format!(
                "{s:?} has an empty segment (a doubled or trailing \"/\"); remove it"
            ));
        }
        let param = segment.strip_prefix('{').and_then(|p| p.strip_suffix('}'));
        let next = match param {
            Some(name)
                if !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                RouteSegment::Param(name.to_owned())
            }
            _ if segment.contains(['{', '}']) => {
                return Err(format!(
                    "segment {segment:?} of {s:?} is not a parameter: write a whole segment \
                     \"{{name}}\" with a name of letters, digits and '_'"
                ));
            }
            _ => RouteSegment::Literal(segment.to_owned()),
        };
        if matches!(&next, RouteSegment::Param(_)) && segments.contains(&next) {
            return Err(format!(
                "{s:?} uses the parameter {segment} twice; give each parameter its own name"
            ));
        }
        segments.push(next);
    }
    Ok(segments)
}

/// Effective global sections that route overrides are merged over.
pub(super) struct Globals<'a> {
    pub(super) auth: AuthMode,
    pub(super) sse: &'a SseConfig,
    pub(super) websocket: &'a WebSocketConfig,
    pub(super) limits: &'a LimitsConfig,
}

pub(super) fn route(
    cx: &mut Cx<'_>,
    index: usize,
    raw: &Spanned<RawRoute>,
    globals: &Globals<'_>,
) -> RouteConfig {
    let prefix = format!("route[{index}]");
    let k = |name: &str| format!("{prefix}.{name}");
    let r = raw.get_ref();
    if r.path.is_none() {
        let line = cx.line(raw);
        cx.error(
            k("path"),
            Some(line),
            "missing: every [[route]] needs a path, e.g. path = \"/events/{user}\"",
        );
    }
    let parsed = cx.text(&k("path"), r.path.as_ref(), |p| {
        route_path(p).map(|segments| (p.to_owned(), segments))
    });
    let claims = claims(cx, &k("claims"), r.claims.as_ref(), parsed.as_ref());
    if let Some(total) = &r.sse.slow_buffer_total {
        let line = cx.line(total);
        cx.error(
            k("sse.slow_buffer_total"),
            Some(line),
            "one budget is shared by every stream of the process, so a route cannot have its \
             own; set it in [sse] and remove it here",
        );
    }
    let (path, segments) = parsed.unwrap_or_default();
    RouteConfig {
        path,
        segments,
        auth: cx
            .text(&k("auth"), r.auth.as_ref(), choice(AUTH_MODES))
            .unwrap_or(globals.auth),
        roles: cx
            .text_list(&k("roles"), r.roles.as_ref(), non_empty)
            .unwrap_or_default(),
        claims,
        sse: sse(cx, &k("sse"), &r.sse, globals.sse),
        websocket: websocket(cx, &k("websocket"), &r.websocket, globals.websocket),
        limits: {
            if let Some(store) = &r.limits.store {
                let line = cx.line(store);
                cx.error(
                    k("limits.store"),
                    Some(line),
                    "the limit store is one per process, shared by every route; move it to \
                     [limits.store]",
                );
            }
            limits(cx, &k("limits"), &r.limits, globals.limits)
        },
    }
}

/// `claims = { param = "claim" }`: every key must be a `{param}` of the route's path.
pub(super) fn claims(
    cx: &mut Cx<'_>,
    prefix: &str,
    raw: Option<&BTreeMap<Text, Text>>,
    path: Option<&(String, Vec<RouteSegment>)>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (param, claim) in raw.into_iter().flatten() {
        let name = param.get_ref();
        let key = format!("{prefix}.{name}");
        // With an invalid path the parameters are unknown; the path error says enough.
        if let Some((path, segments)) = path {
            let params: Vec<String> = segments
                .iter()
                .filter_map(|s| match s {
                    RouteSegment::Param(p) => Some(format!("{{{p}}}")),
                    RouteSegment::Literal(_) => None,
                })
                .collect();
            if !params.contains(&format!("{{{name}}}")) {
                let has = if params.is_empty() {
                    "it has no parameters".to_owned()
                } else {
                    format!("its parameters are {}", params.join(", "))
                };
                let line = cx.line(param);
                cx.error(
                    key,
                    Some(line),
                    format!(
                        "{name:?} is not a parameter of the route path {path:?} ({has}); add \
                         \"{{{name}}}\" to the path or remove this claim"
                    ),
                );
                continue;
            }
        }
        if let Some(claim) = cx.text(&key, Some(claim), non_empty) {
            out.push((name.clone(), claim));
        }
    }
    out
}
