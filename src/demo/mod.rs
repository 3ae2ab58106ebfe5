//! The demo app that `streamguard demo` puts behind the proxy. The integration tests and
//! benchmarks reuse it as their upstream, so what they exercise is a real socket server with
//! the same SSE and WebSocket behaviour a user sees in the demo, not a mock.
//!
//! This file is the `demo` command's glue: start the app on `[upstream] address` beside the
//! proxy, and tell the operator where to point a browser and which token to paste.

pub mod upstream;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::token::{mint, TokenError, TokenSpec};
use upstream::{serve, UpstreamStats};

/// The variable the example `proxy.toml` reads the HMAC secret from; `streamguard demo` makes
/// one up when it is unset.
pub const SECRET_VAR: &str = "STREAMGUARD_JWT_SECRET";

const DEMO_USER: &str = "demo-user";
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Long enough to open the page, short enough to watch `close_on_expiry` end the streams.
const SHORT_TOKEN_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo app cannot listen on the [upstream] address {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("the demo app's thread or runtime could not start: {0}")]
    Runtime(io::Error),
    #[error("the demo token could not be minted: {0}")]
    Token(#[from] TokenError),
}

/// Starts the demo app on `[upstream] address` in the background and prints how to try the
/// proxy; the caller then runs the proxy itself.
pub fn start(cfg: &Config, secret: &str) -> Result<(), DemoError> {
    let now = crate::proxy::now_unix();
    let token = |ttl| {
        mint(&TokenSpec {
            secret: secret.as_bytes(),
            sub: DEMO_USER,
            roles: &[],
            ttl,
            claims: &[],
            // Carry what the proxy checks, so the printed tokens pass with any demo config.
            iss: cfg.auth.issuer.as_deref(),
            aud: cfg.auth.audience.as_deref(),
            now,
        })
    };
    let (long, short) = (token(TOKEN_TTL)?, token(SHORT_TOKEN_TTL)?);
    let app = spawn_app(cfg.upstream.address)?;
    print!("{}", intro(&Endpoints::of(cfg, app), &long, &short));
    Ok(())
}

/// Binds now, so a taken port is reported before the proxy starts, then serves on a thread
/// with its own runtime, leaving the main thread to Pingora. Returns the bound address.
fn spawn_app(addr: SocketAddr) -> Result<SocketAddr, DemoError> {
    let bind_error = |source| DemoError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(DemoError::Runtime)?;
    std::thread::Builder::new()
        .name("demo-app".into())
        .spawn(move || {
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serve(listener, Arc::new(UpstreamStats::new())).await
            });
            if let Err(e) = served {
                tracing::error!(error = %e, "demo app stopped accepting connections; the proxy will answer 502");
            }
        })
        .map_err(DemoError::Runtime)?;
    Ok(bound)
}

/// The addresses and names the intro mentions, taken out of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoints {
    proxy: String,
    admin: String,
    app: SocketAddr,
    session_path: String,
    query_param: Option<String>,
}

impl Endpoints {
    fn of(cfg: &Config, app: SocketAddr) -> Self {
        Self {
            proxy: base_url(cfg.listen.address, cfg.listen.tls.is_some()),
            admin: base_url(cfg.admin.address, false),
            app,
            session_path: cfg.auth.session.path.clone(),
            query_param: cfg.auth.query_params.first().cloned(),
        }
    }
}

/// A URL a browser on this machine can open: a wildcard listen address becomes loopback.
fn base_url(addr: SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

fn intro(e: &Endpoints, token: &str, short_token: &str) -> String {
    let proxy = &e.proxy;
    let events = format!("{proxy}/demo/events");
    // curl sends `Accept: */*`: a stream must be asked for, or the proxy refuses it.
    let sse = "-H \"Accept: text/event-stream\"";
    let mut text = format!(
        "streamguard demo\n\
         \x20 page:    {proxy}/demo/page  (paste the token, press \"Exchange token for cookie\")\n\
         \x20 app:     http://{app} (the proxy's upstream, reached directly only by the proxy)\n\
         \x20 metrics: {admin}/metrics\n\n\
         token for {DEMO_USER}, valid {long}:\n  {token}\n\
         short-lived token, valid {short} (watch the streams close when it expires):\n  {short_token}\n\n\
         try:\n\
         \x20 TOKEN={token}\n\
         \x20 curl -N {sse} -H \"Authorization: Bearer $TOKEN\" {events}\n",
        app = e.app,
        admin = e.admin,
        long = humantime::format_duration(TOKEN_TTL),
        short = humantime::format_duration(SHORT_TOKEN_TTL),
    );
    if let Some(param) = &e.query_param {
        text.push_str(&format!(
            "  curl -N {sse} \"{events}?{param}=$TOKEN\"   # the token is lifted out of the URL\n"
        ));
    }
    text.push_str(&format!(
        "  curl -i {events}   # 401 without a token\n\
         \x20 curl -i -H \"Authorization: Bearer $TOKEN\" {events}   # 400: a stream must be asked for\n\
         \x20 curl -i -X POST -H \"Authorization: Bearer $TOKEN\" {proxy}{path}   # the cookie exchange\n",
        path = e.session_path,
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn endpoints(query_param: Option<&str>) -> Endpoints {
        Endpoints {
            proxy: base_url("0.0.0.0:8080".parse().expect("addr"), false),
            admin: base_url("127.0.0.1:9901".parse().expect("addr"), false),
            app: "127.0.0.1:3000".parse().expect("addr"),
            session_path: "/_streamguard/session".into(),
            query_param: query_param.map(str::to_owned),
        }
    }

    #[test]
    fn base_url_maps_wildcards_to_loopback_and_keeps_the_scheme() {
        assert_eq!(
            base_url("0.0.0.0:8080".parse().expect("addr"), false),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            base_url("[::]:8443".parse().expect("addr"), true),
            "https://127.0.0.1:8443"
        );
        assert_eq!(
            base_url("[::1]:80".parse().expect("addr"), false),
            "http://[::1]:80"
        );
    }

    #[test]
    fn intro_names_the_urls_tokens_and_curl_commands() {
        let text = intro(
            &endpoints(Some("access_token")),
            "LONG.TOKEN",
            "SHORT.TOKEN",
        );
        assert!(text.contains("http://127.0.0.1:8080/demo/page"), "{text}");
        assert!(text.contains("http://127.0.0.1:9901/metrics"), "{text}");
        assert!(
            text.contains("TOKEN=LONG.TOKEN\n") && text.contains("  SHORT.TOKEN\n"),
            "{text}"
        );
        assert!(
            text.contains("valid 1h") && text.contains("valid 1m"),
            "{text}"
        );
        assert!(
            text.contains(
                "curl -N -H \"Accept: text/event-stream\" \"http://127.0.0.1:8080/demo/events?access_token=$TOKEN\""
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "curl -N -H \"Accept: text/event-stream\" -H \"Authorization: Bearer $TOKEN\""
            ),
            "{text}"
        );
        assert!(
            text.contains("http://127.0.0.1:8080/_streamguard/session"),
            "{text}"
        );
        let without = intro(&endpoints(None), "LONG.TOKEN", "SHORT.TOKEN");
        assert!(!without.contains("?access_token"), "{without}");
    }

    #[test]
    fn spawned_app_serves_the_page_and_a_taken_port_is_reported() {
        let addr = spawn_app("127.0.0.1:0".parse().expect("addr")).expect("starts");
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        conn.write_all(b"GET /demo/page HTTP/1.1\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut resp = String::new();
        conn.read_to_string(&mut resp).expect("read");
        assert!(
            resp.starts_with("HTTP/1.1 200 ") && resp.contains("EventSource"),
            "{resp}"
        );

        match spawn_app(addr) {
            Err(e @ DemoError::Bind { .. }) => {
                assert!(e.to_string().contains(&addr.to_string()), "{e}")
            }
            other => panic!("expected a bind error, got {other:?}"),
        }
    }
}
