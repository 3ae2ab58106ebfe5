//! `[server]` (threads, drain, config watching), `[admin]` and `[log]`.

use std::net::SocketAddr;
use std::time::Duration;

use super::cx::Cx;
use super::values::{at_least, choice, flag, nonzero, socket_addr};
use super::LOG_FORMATS;
use crate::config::raw::{RawAdmin, RawLog, RawServer, Text};
use crate::config::types::*;
use crate::config::units::{format_duration, parse_duration};

pub(super) fn server(cx: &mut Cx<'_>, raw: &RawServer) -> ServerConfig {
    let duration = |cx: &mut Cx<'_>, key: &str, value: Option<&Text>, default: u64| {
        cx.text(key, value, parse_duration)
            .unwrap_or(Duration::from_secs(default))
    };
    let drain_delay = duration(cx, "server.drain_delay", raw.drain_delay.as_ref(), 5);
    let drain_window = duration(cx, "server.drain_window", raw.drain_window.as_ref(), 20);
    let drain_timeout = cx
        .text(
            "server.drain_timeout",
            raw.drain_timeout.as_ref(),
            nonzero(parse_duration),
        )
        .unwrap_or(Duration::from_secs(30));
    if drain_timeout < drain_delay + drain_window {
        let line = raw
            .drain_timeout
            .as_ref()
            .or(raw.drain_window.as_ref())
            .or(raw.drain_delay.as_ref())
            .map(|value| cx.line(value));
        cx.error(
            "server.drain_timeout",
            line,
            format!(
                "{} is shorter than server.drain_delay + server.drain_window ({}): the process \
                 would exit before the drain could end its streams; raise drain_timeout or \
                 shorten the others",
                format_duration(drain_timeout),
                format_duration(drain_delay + drain_window)
            ),
        );
    }
    ServerConfig {
        threads: cx
            .value("server.threads", raw.threads.as_ref(), at_least(1, ""))
            .unwrap_or(2),
        drain_delay,
        drain_window,
        drain_timeout,
        watch_config: flag(raw.watch_config.as_ref(), false),
        watch_interval: cx
            .text(
                "server.watch_interval",
                raw.watch_interval.as_ref(),
                nonzero(parse_duration),
            )
            .unwrap_or(Duration::from_secs(5)),
    }
}

pub(super) fn log(cx: &mut Cx<'_>, raw: &RawLog) -> LogConfig {
    LogConfig {
        format: cx
            .text("log.format", raw.format.as_ref(), choice(LOG_FORMATS))
            .unwrap_or(LogFormat::Json),
        level: cx
            .text("log.level", raw.level.as_ref(), log_level)
            .unwrap_or_else(|| "info".into()),
    }
}

/// Checks a `tracing` filter. `EnvFilter` alone would accept a typo such as `verbose` as a
/// target name (meaning "trace everything in target verbose"), so bare words must be levels.
fn log_level(s: &str) -> Result<String, String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    let example = "e.g. \"info\" or \"streamguard=debug,pingora=warn\"";
    if s.trim().is_empty() {
        return Err(format!("the filter is empty; {example}"));
    }
    for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let is_level = LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive));
        if !is_level && !directive.contains(['=', '[']) {
            return Err(format!(
                "{directive:?} is not a level; use trace, debug, info, warn, error or off, or \
                 target=level ({example})"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map_err(|e| format!("{s:?} is not a valid log filter ({e}); {example}"))?;
    Ok(s.to_owned())
}

pub(super) fn admin(cx: &mut Cx<'_>, raw: &RawAdmin) -> AdminConfig {
    AdminConfig {
        address: cx
            .text("admin.address", raw.address.as_ref(), socket_addr)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901))),
        show_users: flag(raw.show_users.as_ref(), false),
    }
}
