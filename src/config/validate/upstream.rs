//! `[upstream]`: the app's address and how its answers are treated.

use std::time::Duration;

use super::cx::Cx;
use super::values::{flag, http_token, nonzero, resolve};
use crate::config::raw::RawConfig;
use crate::config::types::*;
use crate::config::units::parse_duration;

pub(super) fn upstream(cx: &mut Cx<'_>, raw: &RawConfig) -> Option<UpstreamConfig> {
    let section = &raw.upstream;
    if section.address.is_none() {
        cx.error(
            "upstream.address",
            None,
            "missing: set the app's host:port under [upstream], e.g. address = \"127.0.0.1:3000\"",
        );
    }
    let address = cx.text("upstream.address", section.address.as_ref(), resolve);
    let connect_timeout = cx
        .text(
            "upstream.connect_timeout",
            section.connect_timeout.as_ref(),
            nonzero(parse_duration),
        )
        .unwrap_or(Duration::from_secs(2));
    let write_timeout = cx
        .text(
            "upstream.write_timeout",
            section.write_timeout.as_ref(),
            nonzero(parse_duration),
        )
        .unwrap_or(Duration::from_secs(30));
    let response_timeout = cx
        .text(
            "upstream.response_timeout",
            section.response_timeout.as_ref(),
            nonzero(parse_duration),
        )
        .unwrap_or(Duration::from_secs(60));
    let hide_headers = cx
        .text_list(
            "upstream.hide_headers",
            section.hide_headers.as_ref(),
            hidden_header,
        )
        .unwrap_or_else(|| {
            [
                http::header::SERVER,
                http::HeaderName::from_static("x-powered-by"),
            ]
            .to_vec()
        });
    address.map(|address| UpstreamConfig {
        address,
        connect_timeout,
        write_timeout,
        response_timeout,
        hide_error_bodies: flag(section.hide_error_bodies.as_ref(), true),
        hide_headers,
    })
}

/// A response header the proxy may remove: any header name but the ones that frame the
/// message or carry the proxy's own answer.
fn hidden_header(s: &str) -> Result<http::HeaderName, String> {
    let name = http_token(s)?.to_ascii_lowercase();
    const NEEDED: &[&str] = &[
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "content-type",
        "sec-websocket-accept",
    ];
    if NEEDED.contains(&name.as_str()) || name.starts_with("access-control-") {
        return Err(format!(
            "{s:?} cannot be hidden: the proxy needs it to frame or describe the answer; \
             list headers such as \"server\" or \"x-powered-by\""
        ));
    }
    http::HeaderName::try_from(name).map_err(|e| format!("{s:?} is not a header name ({e})"))
}
