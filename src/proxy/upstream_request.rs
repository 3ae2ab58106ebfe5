//! The request sent upstream, built the same way for plain requests (Pingora's copy, from
//! `upstream_request_filter`) and for streams (the relays' own connection): the token goes where
//! `auth.forward_as` says, then the forwarding and identity headers are set.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::{header, Uri};
use pingora::Result;

use super::RequestCtx;
use crate::policy::auth;
use crate::policy::headers::{self, Edit};
use crate::policy::target;

/// Turns the checked client request into the request sent upstream: the token goes where
/// `auth.forward_as` says, then the forwarding and identity headers are set. These come last, on
/// a request whose hop-by-hop headers are already gone (`headers::inspect`), so no `Connection`
/// option can remove them again. `websocket` puts back the two headers an upgrade needs.
pub fn prepare_upstream(
    req: &mut pingora::http::RequestHeader,
    ctx: &RequestCtx,
    websocket: bool,
) -> Result<()> {
    // HTTP/2 clients may split `cookie`; the app gets one field (and the token lifting below
    // edits one).
    super::h2_request::join_cookies(req)?;
    let policy = Arc::clone(&ctx.policy);
    let verified = match (&ctx.identity, &ctx.token) {
        (Some(identity), Ok(Some(found))) => Some((identity, found.token.as_str())),
        _ => None,
    };
    let target = req
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let plan = auth::forward_plan(
        &policy.config.auth,
        &req.headers,
        target,
        verified.map(|v| v.1),
    );
    apply_edit(req, header::AUTHORIZATION, plan.authorization)?;
    apply_edit(req, header::COOKIE, plan.cookie)?;
    apply_edit(req, header::SEC_WEBSOCKET_PROTOCOL, plan.websocket_protocol)?;
    apply_edit(req, header::REFERER, plan.referer)?;
    if let Some(target) = plan.path_and_query {
        let uri = Uri::try_from(target).map_err(|_| {
            pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "rewritten target")
        })?;
        req.set_uri(uri);
    }
    let origin = headers::Origin {
        peer: ctx.peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        trusted_proxies: &policy.config.limits.trusted_proxies,
        tls: policy.config.listen.tls.is_some(),
    };
    let identity = verified.map(|(identity, _)| (identity.user.as_str(), &identity.roles[..]));
    for edit in headers::upstream_edits(&req.headers, origin, identity) {
        match edit {
            Edit::Remove(name) => {
                req.remove_header(&name);
            }
            Edit::Set(name, value) => {
                req.insert_header(name, value)?;
            }
        }
    }
    if websocket {
        req.insert_header(header::CONNECTION, "Upgrade")?;
        req.insert_header(header::UPGRADE, "websocket")?;
    }
    if !target::is_consistent(req.raw_path(), req.uri.path_and_query()) {
        // Every edit above goes through the parsed URI; a target that no longer matches it
        // would mean the app is sent something the policy did not check.
        return pingora::Error::e_explain(
            pingora::ErrorType::InternalError,
            "request-target differs from the checked URI",
        );
    }
    Ok(())
}

fn apply_edit(
    req: &mut pingora::http::RequestHeader,
    name: http::HeaderName,
    edit: auth::HeaderEdit,
) -> Result<()> {
    match edit {
        auth::HeaderEdit::Keep => {}
        auth::HeaderEdit::Remove => {
            req.remove_header(&name);
        }
        auth::HeaderEdit::Set(value) => {
            req.insert_header(name, value)?;
        }
    }
    Ok(())
}
