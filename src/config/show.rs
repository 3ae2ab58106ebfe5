//! The effective configuration as TOML, for `streamguard check`.
//!
//! Operators need to see what the proxy will actually do once defaults and route overrides
//! are applied, and to paste that output back as a config file: so every key is printed, the
//! output parses with [`super::parse_str`], and `$` is escaped as `$$` so a value is never
//! re-read as a `${VAR}` reference. The HMAC secret is printed as `"<redacted>"`.

use std::fmt::Write;

use toml::Value;

use super::types::*;
use super::units::{format_duration, format_rate, format_size};
use super::validate::{
    AUTH_MODES, COMPRESSION, FORWARD_AS, LOG_FORMATS, ON_INVALID, ON_OVERSIZE, ON_RATE_LIMIT,
    ON_SLOW_CLIENT, ON_STORE_ERROR, ON_USER_LIMIT, SAME_SITE, UNDERSCORES_IN_HEADERS,
};

/// A table's entries in print order; `None` prints as a comment (the key is unset).
type Entries = Vec<(&'static str, Option<Value>)>;

/// Renders `config` as a complete, valid config file.
pub fn show(config: &Config) -> String {
    let mut out = String::from(
        "# effective streamguard configuration: defaults filled in, secrets redacted\n",
    );
    let sections: [(&str, Entries); 11] = [
        ("listen", listen(&config.listen)),
        (
            "admin",
            vec![
                ("address", Some(text(&config.admin.address.to_string()))),
                ("show_users", Some(Value::Boolean(config.admin.show_users))),
            ],
        ),
        ("upstream", upstream(&config.upstream)),
        ("server", server(&config.server)),
        ("cors", cors(&config.cors)),
        ("auth", auth(&config.auth)),
        ("auth.session", session(&config.auth.session)),
        ("log", log(&config.log)),
        ("sse", sse(&config.sse, Scope::Process)),
        ("websocket", websocket(&config.websocket)),
        ("http2", http2(&config.http2)),
    ];
    for (header, entries) in sections {
        table(&mut out, &format!("[{header}]"), entries);
    }
    table(&mut out, "[limits]", limits(&config.limits));
    table(&mut out, "[limits.store]", store(&config.store));
    for route in &config.routes {
        table(&mut out, "[[route]]", route_entries(route));
        table(&mut out, "[route.sse]", sse(&route.sse, Scope::Route));
        table(&mut out, "[route.websocket]", websocket(&route.websocket));
        table(&mut out, "[route.limits]", limits(&route.limits));
    }
    out
}

fn table(out: &mut String, header: &str, entries: Entries) {
    // Writing into a String cannot fail.
    let _ = writeln!(out, "\n{header}");
    for (key, value) in entries {
        let _ = match value {
            Some(value) => writeln!(out, "{key} = {value}"),
            None => writeln!(out, "# {key} is not set"),
        };
    }
}

fn text(s: &str) -> Value {
    Value::String(s.replace('$', "$$"))
}

fn texts<'a>(items: impl IntoIterator<Item = &'a String>) -> Value {
    Value::Array(items.into_iter().map(|s| text(s)).collect())
}

fn duration(d: std::time::Duration) -> Value {
    text(&format_duration(d))
}

fn integer<T: TryInto<i64>>(n: T) -> Value {
    Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

/// The config spelling of an enum value, from the table validation parses it with.
fn name<T: PartialEq>(options: &[(&'static str, T)], value: T) -> Value {
    text(
        options
            .iter()
            .find(|(_, v)| *v == value)
            .map_or("", |(n, _)| n),
    )
}

fn listen(listen: &ListenConfig) -> Entries {
    let path = |tls: &TlsFiles, cert: bool| {
        text(
            &if cert { &tls.cert_file } else { &tls.key_file }
                .display()
                .to_string(),
        )
    };
    vec![
        ("address", Some(text(&listen.address.to_string()))),
        ("tls_cert_file", listen.tls.as_ref().map(|t| path(t, true))),
        ("tls_key_file", listen.tls.as_ref().map(|t| path(t, false))),
        (
            "underscores_in_headers",
            Some(name(UNDERSCORES_IN_HEADERS, listen.underscores_in_headers)),
        ),
        (
            "max_request_head",
            Some(text(&format_size(listen.max_request_head))),
        ),
        (
            "request_head_timeout",
            Some(duration(listen.request_head_timeout)),
        ),
        (
            "keepalive_timeout",
            Some(duration(listen.keepalive_timeout)),
        ),
        ("max_connections", Some(integer(listen.max_connections))),
        (
            "max_connections_per_ip",
            listen.max_connections_per_ip.map(integer),
        ),
        ("reuse_port", Some(Value::Boolean(listen.reuse_port))),
        ("h2c", Some(Value::Boolean(listen.h2c))),
    ]
}

fn http2(h2: &Http2Config) -> Entries {
    vec![
        ("enabled", Some(Value::Boolean(h2.enabled))),
        (
            "max_concurrent_streams",
            Some(integer(h2.max_concurrent_streams)),
        ),
        ("idle_timeout", Some(duration(h2.idle_timeout))),
        (
            "max_send_buffer",
            Some(text(&format_size(h2.max_send_buffer))),
        ),
    ]
}

fn upstream(upstream: &UpstreamConfig) -> Entries {
    vec![
        ("address", Some(text(&upstream.address.to_string()))),
        ("connect_timeout", Some(duration(upstream.connect_timeout))),
        ("write_timeout", Some(duration(upstream.write_timeout))),
        (
            "response_timeout",
            Some(duration(upstream.response_timeout)),
        ),
        (
            "hide_error_bodies",
            Some(Value::Boolean(upstream.hide_error_bodies)),
        ),
        (
            "hide_headers",
            Some(Value::Array(
                upstream
                    .hide_headers
                    .iter()
                    .map(|h| text(h.as_str()))
                    .collect(),
            )),
        ),
    ]
}

fn server(server: &ServerConfig) -> Entries {
    vec![
        ("threads", Some(integer(server.threads))),
        ("drain_delay", Some(duration(server.drain_delay))),
        ("drain_window", Some(duration(server.drain_window))),
        ("drain_timeout", Some(duration(server.drain_timeout))),
        ("watch_config", Some(Value::Boolean(server.watch_config))),
        ("watch_interval", Some(duration(server.watch_interval))),
    ]
}

fn cors(cors: &CorsConfig) -> Entries {
    let origins: Vec<String> = cors
        .allowed_origins
        .iter()
        .map(|o| match o {
            OriginPattern::Exact(origin) => origin.clone(),
            OriginPattern::Wildcard { scheme, suffix } => format!("{scheme}://*{suffix}"),
        })
        .collect();
    vec![
        ("allowed_origins", Some(texts(&origins))),
        (
            "allow_credentials",
            Some(Value::Boolean(cors.allow_credentials)),
        ),
        ("allowed_methods", Some(texts(&cors.allowed_methods))),
        ("allowed_headers", Some(texts(&cors.allowed_headers))),
        ("expose_headers", Some(texts(&cors.expose_headers))),
        ("max_age", Some(duration(cors.max_age))),
        ("require_origin", Some(Value::Boolean(cors.require_origin))),
    ]
}

fn auth(auth: &AuthConfig) -> Entries {
    let algorithms: Vec<String> = auth.algorithms.iter().map(|a| format!("{a:?}")).collect();
    // `Config` keeps key material, not where it came from, so only the inline secret can be
    // named; file-based public keys are summarised in a comment.
    let key = match &auth.key {
        Some(KeySource::Secret(_)) => ("secret", Some(text("<redacted>"))),
        Some(KeySource::PublicKeyPem(_)) => ("public_key_file (a PEM key was loaded)", None),
        Some(KeySource::Jwks(_)) => ("jwks_file (a JWKS document was loaded)", None),
        None => ("secret", None),
    };
    vec![
        ("mode", Some(name(AUTH_MODES, auth.mode))),
        ("algorithms", Some(texts(&algorithms))),
        key,
        ("issuer", auth.issuer.as_deref().map(text)),
        ("audience", auth.audience.as_deref().map(text)),
        ("leeway", Some(duration(auth.leeway))),
        (
            "max_token_size",
            Some(text(&format_size(auth.max_token_size))),
        ),
        ("user_claim", Some(text(&auth.user_claim))),
        ("roles_claim", Some(text(&auth.roles_claim))),
        ("query_params", Some(texts(&auth.query_params))),
        (
            "pass_authorization_schemes",
            Some(texts(&auth.pass_authorization_schemes)),
        ),
        ("cookie", Some(text(&auth.cookie))),
        ("forward_as", Some(name(FORWARD_AS, auth.forward_as))),
        ("forward_name", Some(text(&auth.forward_name))),
        (
            "close_on_expiry",
            Some(Value::Boolean(auth.close_on_expiry)),
        ),
        (
            "websocket_protocol_prefix",
            auth.websocket_protocol_prefix.as_deref().map(text),
        ),
    ]
}

fn session(session: &SessionConfig) -> Entries {
    vec![
        ("path", Some(text(&session.path))),
        ("ttl", Some(duration(session.ttl))),
        ("secure", Some(Value::Boolean(session.secure))),
        ("same_site", Some(name(SAME_SITE, session.same_site))),
    ]
}

fn log(log: &LogConfig) -> Entries {
    vec![
        ("format", Some(name(LOG_FORMATS, log.format))),
        ("level", Some(text(&log.level))),
    ]
}

/// Where a table is printed: process-wide keys (`sse.slow_buffer_total`) only at the top.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Process,
    Route,
}

fn sse(sse: &SseConfig, scope: Scope) -> Entries {
    let mut entries = vec![
        ("heartbeat", Some(duration(sse.heartbeat))),
        ("heartbeat_comment", Some(text(&sse.heartbeat_comment))),
        ("stale_after", Some(duration(sse.stale_after))),
        ("retry", sse.retry.map(duration)),
        ("retry_jitter", Some(Value::Float(sse.retry_jitter))),
        (
            "max_event_size",
            Some(text(&format_size(sse.max_event_size))),
        ),
        ("on_oversize", Some(name(ON_OVERSIZE, sse.on_oversize))),
        ("on_invalid", Some(name(ON_INVALID, sse.on_invalid))),
        ("write_timeout", Some(duration(sse.write_timeout))),
        ("require_accept", Some(Value::Boolean(sse.require_accept))),
        ("client_buffer", Some(text(&format_size(sse.client_buffer)))),
    ];
    if scope == Scope::Process {
        entries.push((
            "slow_buffer_total",
            Some(text(&format_size(sse.slow_buffer_total))),
        ));
    }
    entries.push((
        "on_slow_client",
        Some(name(ON_SLOW_CLIENT, sse.on_slow_client)),
    ));
    entries
}

fn websocket(ws: &WebSocketConfig) -> Entries {
    vec![
        ("ping_interval", Some(duration(ws.ping_interval))),
        ("pong_timeout", Some(duration(ws.pong_timeout))),
        ("idle_timeout", Some(duration(ws.idle_timeout))),
        (
            "max_message_size",
            Some(text(&format_size(ws.max_message_size))),
        ),
        (
            "messages_per_user",
            ws.messages_per_user.map(|r| text(&format_rate(r))),
        ),
        ("on_rate_limit", Some(name(ON_RATE_LIMIT, ws.on_rate_limit))),
        ("compression", Some(name(COMPRESSION, ws.compression))),
        (
            "max_control_frames",
            Some(text(&format_rate(ws.max_control_frames))),
        ),
        (
            "max_message_fragments",
            Some(integer(ws.max_message_fragments)),
        ),
    ]
}

fn limits(limits: &LimitsConfig) -> Entries {
    let proxies: Vec<String> = limits
        .trusted_proxies
        .iter()
        .map(|c| format!("{}/{}", c.addr, c.prefix_len))
        .collect();
    vec![
        ("max_streams", limits.max_streams.map(integer)),
        (
            "max_streams_per_user",
            limits.max_streams_per_user.map(integer),
        ),
        (
            "on_user_limit",
            Some(name(ON_USER_LIMIT, limits.on_user_limit)),
        ),
        (
            "connects_per_user",
            limits.connects_per_user.map(|r| text(&format_rate(r))),
        ),
        (
            "requests_per_ip",
            limits.requests_per_ip.map(|r| text(&format_rate(r))),
        ),
        ("burst", Some(integer(limits.burst))),
        ("trusted_proxies", Some(texts(&proxies))),
    ]
}

/// The password is never printed: the URL's is redacted, and the file is named by its path.
fn store(store: &StoreConfig) -> Entries {
    let StoreConfig::Redis(redis) = store else {
        return vec![("kind", Some(text("memory")))];
    };
    vec![
        ("kind", Some(text("redis"))),
        ("url", Some(text(&redact_url(&redis.url)))),
        (
            "password_file",
            redis
                .password_file
                .as_ref()
                .map(|p| text(&p.display().to_string())),
        ),
        (
            "ca_file",
            redis
                .ca_file
                .as_ref()
                .map(|p| text(&p.display().to_string())),
        ),
        ("key_prefix", Some(text(&redis.key_prefix))),
        ("timeout", Some(duration(redis.timeout))),
        ("lease", Some(duration(redis.lease))),
        ("on_error", Some(name(ON_STORE_ERROR, redis.on_error))),
    ]
}

fn route_entries(route: &RouteConfig) -> Entries {
    let claims: toml::Table = route
        .claims
        .iter()
        .map(|(param, claim)| (param.clone(), text(claim)))
        .collect();
    vec![
        ("path", Some(text(&route.path))),
        ("auth", Some(name(AUTH_MODES, route.auth))),
        ("roles", Some(texts(&route.roles))),
        ("claims", Some(Value::Table(claims))),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::parse_str;
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    const SECRET: &str = "s3cr3t-$-value-that-is-long-enough";

    fn env() -> HashMap<String, String> {
        HashMap::from([("JWT_SECRET".to_owned(), SECRET.to_owned())])
    }

    const FULL: &str = r#"
[listen]
address = "127.0.0.1:8443"
max_request_head = "48KiB"
max_connections_per_ip = 20
[upstream]
address = "127.0.0.1:3000"
hide_error_bodies = false
[server]
threads = 4
[cors]
allowed_origins = ["https://app.example.com", "https://*.example.org"]
allowed_methods = ["get"]
[auth]
secret = "${JWT_SECRET}"
issuer = "https://issuer.example.com/$$tenant"
max_token_size = "12KiB"
pass_authorization_schemes = ["Basic"]
websocket_protocol_prefix = "bearer."
[auth.session]
same_site = "Lax"
[log]
level = "streamguard=debug,info"
[sse]
retry = "3s"
retry_jitter = 0.25
max_event_size = "64KiB"
[websocket]
messages_per_user = "600/minute"
[limits]
max_streams = 1000
requests_per_ip = "20/second"
trusted_proxies = ["10.0.0.0/8", "::1"]
[[route]]
path = "/events/{user}"
roles = ["reader"]
claims = { user = "sub" }
sse = { heartbeat = "5s", on_slow_client = "skip" }
limits = { max_streams_per_user = 3 }
[[route]]
path = "/public"
auth = "off"
"#;

    #[test]
    fn output_parses_back_to_the_same_config() {
        let config = parse_str(FULL, Path::new("."), &env()).expect("valid config");
        let shown = show(&config);
        assert!(!shown.contains(SECRET), "secret leaked:\n{shown}");
        assert!(shown.contains("secret = \"<redacted>\""), "{shown}");
        // The redacted secret is the one thing that cannot survive; supply it via env again.
        let restored = shown.replace("\"<redacted>\"", "\"${JWT_SECRET}\"");
        let reparsed = parse_str(&restored, Path::new("/elsewhere"), &env())
            .unwrap_or_else(|e| panic!("show output does not parse: {e}\n{shown}"));
        assert_eq!(show(&reparsed), shown);
        assert_eq!(
            reparsed.auth.issuer.as_deref(),
            Some("https://issuer.example.com/$tenant")
        );
    }

    /// Without a key there is nothing to redact, so the output must re-parse unedited.
    #[test]
    fn keyless_config_round_trips_unedited() {
        let text = "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth]\nmode = \"off\"\n\
                    [[route]]\npath = \"/a/{id}\"\nwebsocket = { idle_timeout = \"1h30m\" }\n";
        let config = parse_str(text, Path::new("."), &HashMap::new()).expect("valid config");
        let shown = show(&config);
        let reparsed = parse_str(&shown, Path::new("."), &HashMap::new())
            .unwrap_or_else(|e| panic!("show output does not parse: {e}\n{shown}"));
        assert_eq!(show(&reparsed), shown);
        assert_eq!(reparsed.routes[0].websocket.idle_timeout.as_secs(), 5_400);
    }

    #[test]
    fn prints_every_section_and_effective_route_values() {
        let config = parse_str(FULL, Path::new("."), &env()).expect("valid config");
        let shown = show(&config);
        for needle in [
            "[listen]",
            "[admin]",
            "[upstream]",
            "[server]",
            "[cors]",
            "[auth]",
            "[auth.session]",
            "[log]",
            "[sse]",
            "[websocket]",
            "[http2]",
            "max_send_buffer = \"64KiB\"",
            "h2c = false",
            "[limits]",
            "[[route]]",
            "[route.sse]",
            "heartbeat = \"5s\"",
            "heartbeat = \"15s\"",
            "max_event_size = \"64KiB\"",
            "messages_per_user = \"600/minute\"",
            "trusted_proxies = [\"10.0.0.0/8\", \"::1/128\"]",
            "allowed_origins = [\"https://app.example.com\", \"https://*.example.org\"]",
            "claims = { user = \"sub\" }",
            "same_site = \"Lax\"",
            "max_token_size = \"12KiB\"",
            "pass_authorization_schemes = [\"Basic\"]",
            "# max_streams_per_user is not set",
            "max_request_head = \"48KiB\"",
            "request_head_timeout = \"10s\"",
            "keepalive_timeout = \"1m\"",
            "max_connections_per_ip = 20",
            "max_streams_per_user = 3",
            "client_buffer = \"256KiB\"",
            "on_slow_client = \"skip\"",
        ] {
            assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
        }
        // Process-wide: printed once, under [sse], never as a route's own (that would not parse).
        assert_eq!(
            shown.matches("slow_buffer_total = \"64MiB\"").count(),
            1,
            "{shown}"
        );
    }
}
