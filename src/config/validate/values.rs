//! Parsers for the kinds of value many sections share: flags, names from a table, bounded
//! numbers and durations, HTTP tokens, addresses and files named by the config.

use std::fmt::Display;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::config::units::{format_duration, parse_duration};

pub(super) fn flag(raw: Option<&Spanned<bool>>, default: bool) -> bool {
    raw.map_or(default, |b| *b.get_ref())
}

/// A parser for an enum-valued key from its table of names (case-insensitive).
pub(super) fn choice<T: Copy>(
    options: &'static [(&'static str, T)],
) -> impl Fn(&str) -> Result<T, String> {
    move |s| {
        options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
                format!(
                    "{s:?} is not a known value; use one of {}",
                    names.join(", ")
                )
            })
    }
}

/// A parser for an integer key with a lower bound; `hint` says what to write instead.
pub(super) fn at_least<T: TryFrom<i64>>(
    min: i64,
    hint: &'static str,
) -> impl Fn(&i64) -> Result<T, String> {
    move |n| {
        if *n < min {
            return Err(format!("{n} is below the minimum of {min}{hint}"));
        }
        T::try_from(*n).map_err(|_| format!("{n} is too large"))
    }
}

/// Wraps a unit parser so that zero is rejected, for keys where zero cannot mean "off".
pub(super) fn nonzero<T: Default + PartialEq, E: Display>(
    parse: impl Fn(&str) -> Result<T, E>,
) -> impl Fn(&str) -> Result<T, String> {
    move |s| match parse(s) {
        Ok(value) if value == T::default() => Err(format!(
            "{s:?} must be greater than zero; this key has no \"off\" setting"
        )),
        Ok(value) => Ok(value),
        Err(e) => Err(e.to_string()),
    }
}

pub(super) fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("the value is empty; give a name or remove the key".into())
    } else {
        Ok(s.to_owned())
    }
}

/// An HTTP token (RFC 9110 `tchar`s): header names, methods, cookie and parameter names.
pub(super) fn http_token(s: &str) -> Result<String, String> {
    if s == "*" {
        return Err(
            "\"*\" is not allowed: with credentials, browsers treat \"*\" as a literal \
                    name rather than \"everything\"; list the names"
                .into(),
        );
    }
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if s.is_empty() || !s.chars().all(tchar) {
        return Err(format!(
            "{s:?} is not a valid HTTP token; use letters, digits and !#$%&'*+-.^_`|~ only \
             (no spaces, quotes, ':' or ';')"
        ));
    }
    Ok(s.to_owned())
}

pub(super) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not an IP:port address; write e.g. \"0.0.0.0:8080\" or \"[::]:8080\"")
    })
}

/// Resolves `host:port` once at start-up; the first address wins.
pub(super) fn resolve(s: &str) -> Result<SocketAddr, String> {
    let fix = "write host:port, e.g. \"127.0.0.1:3000\" or \"app:3000\"";
    let mut addrs = s
        .trim()
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} cannot be resolved ({e}); {fix}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{s:?} resolved to no addresses; {fix}"))
}

pub(super) fn resolve_path(base_dir: &Path, path: &str) -> PathBuf {
    base_dir.join(path)
}

/// Reads a file named in the config. The message names the path but never the contents.
pub(super) fn read_file(base_dir: &Path, path: &str) -> Result<Vec<u8>, String> {
    let full = resolve_path(base_dir, path);
    std::fs::read(&full).map_err(|e| {
        format!(
            "cannot read {}: {e}; check the path (relative paths start at the config file's \
             directory) and its permissions",
            full.display()
        )
    })
}

/// Reads a file that other components open later, so a typo is caught by `check`.
pub(super) fn readable_file(base_dir: &Path, path: &str) -> Result<PathBuf, String> {
    read_file(base_dir, path).map(|_| resolve_path(base_dir, path))
}

/// A duration within `[min, max]`.
pub(super) fn bounded(min: Duration, max: Duration) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| {
        let d = parse_duration(s).map_err(|e| e.to_string())?;
        if d < min || d > max {
            return Err(format!(
                "{s:?} is outside {}..={}",
                format_duration(min),
                format_duration(max)
            ));
        }
        Ok(d)
    }
}

/// Removes the newline an editor or `echo` leaves at the end of a secret file.
pub(super) fn trim_trailing_newlines(mut bytes: Vec<u8>) -> Vec<u8> {
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    bytes
}
