//! `[limits]` (global or a route's override) and `[limits.store]`, the shared store.

use std::net::IpAddr;
use std::time::Duration;

use toml::Spanned;

use super::cx::Cx;
use super::values::{at_least, bounded, choice, read_file, resolve_path, trim_trailing_newlines};
use super::{ON_STORE_ERROR, ON_USER_LIMIT};
use crate::config::raw::{RawLimits, RawStore};
use crate::config::types::*;
use crate::config::units::{format_duration, parse_rate};

/// `[limits.store] kind`; `true` is the shared (Redis) store.
const STORE_KINDS: &[(&str, bool)] = &[("memory", false), ("redis", true)];

fn cidr(s: &str) -> Result<Cidr, String> {
    let example =
        "write e.g. \"10.0.0.0/8\", \"::1/128\" or a single address such as \"192.0.2.7\"";
    let (addr, prefix) = match s.trim().split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (s.trim(), None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network; {example}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("{s:?} has prefix length {p:?}; it must be 0..={max}"))?,
    };
    if prefix_len == 0 {
        return Err(format!(
            "{s:?} trusts every address, so any client could forge X-Forwarded-For and dodge \
             per-IP limits; list your proxies' networks"
        ));
    }
    let network = mask(addr, prefix_len);
    if network != addr {
        return Err(format!(
            "{s:?} has host bits set; write the network address \"{network}/{prefix_len}\""
        ));
    }
    Ok(Cidr { addr, prefix_len })
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4(std::net::Ipv4Addr::from(u32::from(v4) & bits))
        }
        IpAddr::V6(v6) => {
            let bits = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & bits))
        }
    }
}

/// `[limits]` or a route's `limits = {..}`, each key falling back to `base`.
pub(super) fn limits(
    cx: &mut Cx<'_>,
    prefix: &str,
    raw: &RawLimits,
    base: &LimitsConfig,
) -> LimitsConfig {
    let k = |name: &str| format!("{prefix}.{name}");
    let no_limit = "; remove the key for no limit";
    LimitsConfig {
        max_streams: cx
            .value(
                &k("max_streams"),
                raw.max_streams.as_ref(),
                at_least(1, no_limit),
            )
            .or(base.max_streams),
        max_streams_per_user: cx
            .value(
                &k("max_streams_per_user"),
                raw.max_streams_per_user.as_ref(),
                at_least(1, no_limit),
            )
            .or(base.max_streams_per_user),
        on_user_limit: cx
            .text(
                &k("on_user_limit"),
                raw.on_user_limit.as_ref(),
                choice(ON_USER_LIMIT),
            )
            .unwrap_or(base.on_user_limit),
        connects_per_user: cx
            .text(
                &k("connects_per_user"),
                raw.connects_per_user.as_ref(),
                parse_rate,
            )
            .or(base.connects_per_user),
        requests_per_ip: cx
            .text(
                &k("requests_per_ip"),
                raw.requests_per_ip.as_ref(),
                parse_rate,
            )
            .or(base.requests_per_ip),
        burst: cx
            .value(&k("burst"), raw.burst.as_ref(), at_least(0, ""))
            .unwrap_or(base.burst),
        trusted_proxies: cx
            .text_list(&k("trusted_proxies"), raw.trusted_proxies.as_ref(), cidr)
            .unwrap_or_else(|| base.trusted_proxies.clone()),
    }
}

/// `[limits.store]`. Only the URL's form is checked: a Redis that does not answer yet is the
/// store being down (`on_error`), not a config error.
pub(super) fn store(cx: &mut Cx<'_>, raw: Option<&Spanned<RawStore>>) -> StoreConfig {
    let Some(raw) = raw else {
        return StoreConfig::Memory;
    };
    let r = raw.get_ref();
    let shared = cx
        .text("limits.store.kind", r.kind.as_ref(), choice(STORE_KINDS))
        .unwrap_or(false);
    if !shared {
        let redis_only = [
            ("url", &r.url),
            ("password_file", &r.password_file),
            ("ca_file", &r.ca_file),
            ("key_prefix", &r.key_prefix),
            ("timeout", &r.timeout),
            ("lease", &r.lease),
            ("on_error", &r.on_error),
        ];
        for (name, value) in redis_only {
            if let Some(value) = value {
                let line = cx.line(value);
                cx.error(
                    format!("limits.store.{name}"),
                    Some(line),
                    "only used by the Redis store; set kind = \"redis\" or remove the key",
                );
            }
        }
        return StoreConfig::Memory;
    }
    if r.url.is_none() {
        let line = cx.line(raw);
        cx.error(
            "limits.store.url",
            Some(line),
            "missing: kind = \"redis\" needs the server's address, e.g. \
             url = \"redis://127.0.0.1:6379/0\" or \"unix:///run/redis/redis.sock\"",
        );
    }
    let url = cx.text("limits.store.url", r.url.as_ref(), redis_url);
    let base_dir = cx.base_dir;
    let password_file = cx.text(
        "limits.store.password_file",
        r.password_file.as_ref(),
        |p| {
            let bytes = trim_trailing_newlines(read_file(base_dir, p)?);
            let password = String::from_utf8(bytes).map_err(|_| {
                format!("{} is not UTF-8 text", resolve_path(base_dir, p).display())
            })?;
            if password.is_empty() {
                return Err(format!(
                    "{} is empty; write the Redis password into it or remove the key",
                    resolve_path(base_dir, p).display()
                ));
            }
            Ok((resolve_path(base_dir, p), password))
        },
    );
    let ca_file = cx.text("limits.store.ca_file", r.ca_file.as_ref(), |p| {
        let pem = read_file(base_dir, p)?;
        let path = resolve_path(base_dir, p);
        ca_certificates(&pem).map_err(|why| format!("{}: {why}", path.display()))?;
        Ok::<_, String>((path, pem))
    });
    if let (Some(_), Some(url)) = (&ca_file, url.as_deref()) {
        // Asked of the client's own parser (which also takes valkeys://), not of the text.
        use redis::{ConnectionAddr, IntoConnectionInfo};
        let info = url.into_connection_info();
        let why = match info.as_ref().map(|info| info.addr()) {
            Ok(ConnectionAddr::TcpTls { insecure: false, .. }) => None,
            // The client's `#insecure` turns certificate checks off, and the CA with them.
            Ok(ConnectionAddr::TcpTls { insecure: true, .. }) => Some(
                "the url's #insecure skips certificate checks, so the CA would be ignored; drop one of them",
            ),
            _ => Some("only used with TLS; write the url as rediss://... or remove the key"),
        };
        if let Some(why) = why {
            let line = r.ca_file.as_ref().map(|f| cx.line(f));
            cx.error("limits.store.ca_file", line, why);
        }
    }
    let timeout = cx
        .text(
            "limits.store.timeout",
            r.timeout.as_ref(),
            bounded(Duration::from_millis(1), Duration::from_secs(10)),
        )
        .unwrap_or(Duration::from_millis(50));
    let lease = cx
        .text(
            "limits.store.lease",
            r.lease.as_ref(),
            bounded(Duration::from_secs(1), Duration::from_secs(3600)),
        )
        .unwrap_or(Duration::from_secs(30));
    if lease < timeout * 10 {
        let line = r.lease.as_ref().map(|l| cx.line(l));
        cx.error(
            "limits.store.lease",
            line,
            format!(
                "{} is under ten times limits.store.timeout ({}): leases are renewed every \
                 third of a lease, and a renewal must fit in that many timeouts; raise lease or \
                 lower timeout",
                format_duration(lease),
                format_duration(timeout)
            ),
        );
    }
    let (password_file, password) = password_file.unzip();
    let (ca_file, ca) = ca_file.unzip();
    StoreConfig::Redis(RedisStoreConfig {
        url: url.unwrap_or_default(),
        password_file,
        password,
        ca_file,
        ca,
        key_prefix: cx
            .text("limits.store.key_prefix", r.key_prefix.as_ref(), key_prefix)
            .unwrap_or_else(|| "streamguard:".into()),
        timeout,
        lease,
        on_error: cx
            .text(
                "limits.store.on_error",
                r.on_error.as_ref(),
                choice(ON_STORE_ERROR),
            )
            .unwrap_or(OnStoreError::Local),
    })
}

/// A Redis URL the client accepts: `redis://`, `rediss://` (TLS), `unix://` or `redis+unix://`.
fn redis_url(s: &str) -> Result<String, String> {
    use redis::IntoConnectionInfo;
    let fix = "write e.g. \"redis://127.0.0.1:6379/0\", \"rediss://redis.internal:6380\" or \
               \"unix:///run/redis/redis.sock\"";
    s.into_connection_info()
        .map(|_| s.to_owned())
        // The client's message may quote the URL, password included: name the scheme only.
        .map_err(|_| {
            let shown = redact_url(s);
            format!("{shown:?} is not a Redis URL; {fix}")
        })
}

/// A CA file must hold at least one certificate, and only certificates that rustls takes as a
/// root: otherwise every connection would fail later, as a store that is down.
fn ca_certificates(pem: &[u8]) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = pingora::tls::RootCertStore::empty();
    for cert in pingora::tls::CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|_| "not a PEM certificate file".to_owned())?;
        roots
            .add(cert)
            .map_err(|e| format!("a certificate in it is not usable as a root ({e})"))?;
    }
    if roots.is_empty() {
        return Err("holds no certificate; write the CA's PEM certificate(s) into it".into());
    }
    Ok(())
}

/// Braces would end the `{user}` hash tag every key carries, putting users' keys in the wrong
/// Redis Cluster slot.
fn key_prefix(s: &str) -> Result<String, String> {
    if s.contains(['{', '}']) {
        return Err(format!(
            "{s:?} contains a brace; keys carry the user in {{...}} (a Redis Cluster hash tag), \
             so the prefix must not: use e.g. \"streamguard:\" or \"myapp:sg:\""
        ));
    }
    Ok(s.to_owned())
}
