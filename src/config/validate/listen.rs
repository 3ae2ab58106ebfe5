//! `[listen]`: the client-facing address, TLS files and the bounds on what a connection may
//! hold before it is authenticated (head size and deadline, keep-alive, connection caps).

use std::net::SocketAddr;

use super::cx::Cx;
use super::values::{at_least, choice, flag, nonzero, readable_file, socket_addr};
use super::UNDERSCORES_IN_HEADERS;
use crate::config::raw::RawListen;
use crate::config::types::*;
use crate::config::units::{parse_duration, parse_size};

pub(super) fn listen(cx: &mut Cx<'_>, raw: &RawListen) -> ListenConfig {
    let base_dir = cx.base_dir;
    let address = cx
        .text("listen.address", raw.address.as_ref(), socket_addr)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080)));
    let cert = cx.text("listen.tls_cert_file", raw.tls_cert_file.as_ref(), |p| {
        readable_file(base_dir, p)
    });
    let key = cx.text("listen.tls_key_file", raw.tls_key_file.as_ref(), |p| {
        readable_file(base_dir, p)
    });
    // Judge "both or neither" on what was written, so an unreadable file is not also
    // reported as missing.
    let half = match (&raw.tls_cert_file, &raw.tls_key_file) {
        (Some(set), None) => Some((set, "tls_cert_file", "tls_key_file")),
        (None, Some(set)) => Some((set, "tls_key_file", "tls_cert_file")),
        _ => None,
    };
    if let Some((set, present, absent)) = half {
        let line = cx.line(set);
        cx.error(
            format!("listen.{absent}"),
            Some(line),
            format!(
                "missing: listen.{present} is set, so set listen.{absent} too (or remove both \
                 to serve plain HTTP)"
            ),
        );
    }
    let tls = cert.zip(key).map(|(cert_file, key_file)| TlsFiles {
        cert_file,
        key_file,
    });
    let underscores_in_headers = cx
        .text(
            "listen.underscores_in_headers",
            raw.underscores_in_headers.as_ref(),
            choice(UNDERSCORES_IN_HEADERS),
        )
        .unwrap_or(UnderscoreHeaders::Drop);
    let no_limit = "; remove the key for no per-address limit";
    ListenConfig {
        address,
        tls,
        underscores_in_headers,
        max_request_head: cx
            .text(
                "listen.max_request_head",
                raw.max_request_head.as_ref(),
                request_head_size,
            )
            .unwrap_or(DEFAULT_MAX_REQUEST_HEAD),
        request_head_timeout: cx
            .text(
                "listen.request_head_timeout",
                raw.request_head_timeout.as_ref(),
                nonzero(parse_duration),
            )
            .unwrap_or(DEFAULT_REQUEST_HEAD_TIMEOUT),
        keepalive_timeout: cx
            .text(
                "listen.keepalive_timeout",
                raw.keepalive_timeout.as_ref(),
                nonzero(parse_duration),
            )
            .unwrap_or(DEFAULT_KEEPALIVE_TIMEOUT),
        max_connections: cx
            .value(
                "listen.max_connections",
                raw.max_connections.as_ref(),
                at_least(1, ""),
            )
            .unwrap_or_else(|| connections_for_open_files(open_files_limit())),
        max_connections_per_ip: cx.value(
            "listen.max_connections_per_ip",
            raw.max_connections_per_ip.as_ref(),
            at_least(1, no_limit),
        ),
        reuse_port: flag(raw.reuse_port.as_ref(), false),
        h2c: flag(raw.h2c.as_ref(), false),
    }
}

/// Bounds of `listen.max_request_head`: below 1 KiB a bearer token and a few cookies no longer
/// fit; above 256 KiB the cap stops bounding what a crowd of unfinished heads can hold.
const MIN_REQUEST_HEAD: usize = 1024;

const MAX_REQUEST_HEAD: usize = 256 * 1024;

fn request_head_size(s: &str) -> Result<usize, String> {
    let size = parse_size(s).map_err(|e| e.to_string())?;
    if size < MIN_REQUEST_HEAD {
        Err(format!(
            "{s:?} is below the minimum of \"1KiB\": a request with a bearer token and a few \
             cookies would not fit; the default is \"32KiB\""
        ))
    } else if size > MAX_REQUEST_HEAD {
        Err(format!(
            "{s:?} is above the maximum of \"256KiB\": every unfinished head may hold this \
             much memory; the default is \"32KiB\""
        ))
    } else {
        Ok(size)
    }
}

/// Open-file soft limit assumed where `/proc/self/limits` cannot be read: the usual default,
/// so the derived connection cap errs low rather than high.
const FALLBACK_OPEN_FILES: u64 = 1024;

/// This process's soft limit on open files: the one `accept` runs into.
pub(super) fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| soft_open_files(&text))
        .unwrap_or(FALLBACK_OPEN_FILES)
}

/// The soft "Max open files" value of a `/proc/<pid>/limits` text.
pub(super) fn soft_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        soft => soft.parse().ok(),
    }
}
