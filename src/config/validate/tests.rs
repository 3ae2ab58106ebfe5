use super::super::{parse_str, ConfigError};
use super::cors::{origin, WILDCARD_ORIGIN};
use super::listen::{open_files_limit, soft_open_files};
use super::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use std::sync::OnceLock;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const UPSTREAM: &str = "[upstream]\naddress = \"127.0.0.1:3000\"\n";
const ED25519_PEM: &str = "-----BEGIN PUBLIC KEY-----\n\
    MCowBQYDK2VwAyEApH6KkfgheF8/Be7GmDbVo3MiJDz8fyWLA0uarqiCA48=\n\
    -----END PUBLIC KEY-----\n";
const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA",
    "x":"pH6KkfgheF8_Be7GmDbVo3MiJDz8fyWLA0uarqiCA48"}]}"#;

/// A CA certificate (P-256, self-signed, valid until 2126) for `limits.store.ca_file`.
const CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBgTCCASegAwIBAgIUMOz40zLO6uLFkeAwCoIjfeg+6nMwCgYIKoZIzj0EAwIw\n\
FTETMBEGA1UEAwwKc2ctdGVzdC1jYTAgFw0yNjEyMDIxNDU1NDNaGA8yMTI2MTEw\n\
ODE0NTU0M1owFTETMBEGA1UEAwwKc2ctdGVzdC1jYTBZMBMGByqGSM49AgEGCCqG\n\
SM49AwEHA0IABJV3JjrvGmCI46wSeSkP3T7khJWqEYl9w8kRKT8jGbiqxhm6oZMO\n\
WdS2wuo9oiQWiws9TfvubZ/NGRFWMtfJzIWjUzBRMB0GA1UdDgQWBBREufj9OOWu\n\
zMa5h+uQ2Gt/2VqJITAfBgNVHSMEGDAWgBREufj9OOWuzMa5h+uQ2Gt/2VqJITAP\n\
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQDBp0mNpxXu9gzHHfEA\n\
EpY9kehPHUMSM4OqxsU/oqR2RAIgaFdnqAQstS0zCRJWEGUieulSq2BEUyDAyTre\n\
grIQoKM=\n\
-----END CERTIFICATE-----\n\
";

/// Key files shared by all tests (created once; tests run in parallel).
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sg-config-validate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fixture dir");
        for (name, contents) in [
            ("secret.txt", format!("{SECRET}\r\n")),
            ("short.txt", "tiny\n".to_owned()),
            ("ed.pem", ED25519_PEM.to_owned()),
            ("jwks.json", JWKS.to_owned()),
            ("cert.pem", "cert".to_owned()),
            ("ca.pem", CA_PEM.to_owned()),
        ] {
            std::fs::write(dir.join(name), contents).expect("fixture file");
        }
        dir
    })
}

fn env() -> HashMap<String, String> {
    HashMap::from([
        ("JWT_SECRET".to_owned(), SECRET.to_owned()),
        ("APP_HOST".to_owned(), "127.0.0.1".to_owned()),
    ])
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_str(text, fixtures(), &env())
}

fn valid(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("expected a valid config, got:\n{e}\n---\n{text}"))
}

fn invalid(text: &str) -> Vec<KeyError> {
    match parse(text) {
        Err(ConfigError::Invalid(errors)) => errors,
        other => panic!("expected validation errors, got {other:?}\n---\n{text}"),
    }
}

/// The upstream section plus an inline secret, appended after the case text so the
/// case's own line numbers start at 1.
fn with_base(case: &str) -> String {
    let auth = if case.contains("[auth]") {
        String::new()
    } else {
        "[auth]\nsecret = \"${JWT_SECRET}\"\n".to_owned()
    };
    format!("{case}\n{UPSTREAM}{auth}")
}

#[test]
fn full_valid_config() {
    let text = r#"
[listen]
address = "[::]:8443"
tls_cert_file = "cert.pem"
tls_key_file = "cert.pem"
max_request_head = "16KiB"
request_head_timeout = "5s"
keepalive_timeout = "2m"
max_connections = 5000
max_connections_per_ip = 50
[admin]
address = "127.0.0.1:9000"
[upstream]
address = "${APP_HOST}:3000"
connect_timeout = "500ms"
write_timeout = "45s"
hide_error_bodies = false
[server]
threads = 8
drain_timeout = "1m"
[cors]
allowed_origins = ["HTTPS://App.Example.com:443", "https://*.example.org", "http://localhost:3000"]
allow_credentials = false
allowed_methods = ["get", "Post"]
allowed_headers = ["Authorization", "X-Request-Id"]
expose_headers = ["X-Trace"]
max_age = "1h"
require_origin = true
[auth]
mode = "optional"
algorithms = ["EdDSA"]
public_key_file = "ed.pem"
issuer = "https://id.example.com"
audience = "streams"
leeway = "5s"
max_token_size = "16KiB"
user_claim = "uid"
roles_claim = "groups"
query_params = ["t"]
pass_authorization_schemes = ["Basic", "Digest"]
cookie = "sg"
forward_as = "cookie"
forward_name = "session"
close_on_expiry = false
websocket_protocol_prefix = "bearer."
[auth.session]
path = "/auth/session"
ttl = "1h"
secure = true
same_site = "None"
[log]
format = "text"
level = "streamguard=debug,warn"
[sse]
heartbeat = "0s"
heartbeat_comment = "keepalive"
stale_after = "2m"
retry = "3s"
retry_jitter = 0.5
max_event_size = "64KiB"
on_oversize = "close"
on_invalid = "drop"
write_timeout = "5s"
require_accept = false
client_buffer = "32KiB"
slow_buffer_total = "8MiB"
on_slow_client = "skip"
[websocket]
ping_interval = "30s"
pong_timeout = "5s"
idle_timeout = "10m"
max_message_size = "1MB"
messages_per_user = "50/hour"
on_rate_limit = "drop"
compression = "inflate"
max_control_frames = "5/second"
max_message_fragments = 16
[limits]
max_streams = 10000
max_streams_per_user = 5
on_user_limit = "evict_oldest"
connects_per_user = "3/minute"
requests_per_ip = "20/second"
burst = 10
trusted_proxies = ["10.0.0.0/8", "::1/128", "192.0.2.7"]
[[route]]
path = "/tenants/{tenant}/events"
auth = "required"
roles = ["admin", "reader"]
claims = { tenant = "tid" }
"#;
    let c = valid(text);
    assert_eq!(c.listen.address, "[::]:8443".parse().expect("addr"));
    assert_eq!(c.listen.max_request_head, 16 * 1024);
    assert_eq!(c.listen.request_head_timeout, Duration::from_secs(5));
    assert_eq!(c.listen.keepalive_timeout, Duration::from_secs(120));
    assert_eq!(
        (c.listen.max_connections, c.listen.max_connections_per_ip),
        (5000, Some(50))
    );
    let tls = c.listen.tls.expect("tls");
    assert_eq!(tls.cert_file, fixtures().join("cert.pem"));
    assert_eq!(c.admin.address.port(), 9000);
    assert_eq!(c.upstream.address, "127.0.0.1:3000".parse().expect("addr"));
    assert_eq!(c.upstream.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.upstream.write_timeout, Duration::from_secs(45));
    assert!(!c.upstream.hide_error_bodies);
    assert_eq!(
        (c.server.threads, c.server.drain_timeout.as_secs()),
        (8, 60)
    );
    assert_eq!(
        c.cors.allowed_origins,
        vec![
            OriginPattern::Exact("https://app.example.com".into()),
            OriginPattern::Wildcard {
                scheme: "https".into(),
                suffix: ".example.org".into()
            },
            OriginPattern::Exact("http://localhost:3000".into()),
        ]
    );
    assert!(!c.cors.allow_credentials && c.cors.require_origin);
    assert_eq!(c.cors.allowed_methods, ["GET", "POST"]);
    assert_eq!(c.cors.allowed_headers, ["authorization", "x-request-id"]);
    assert_eq!(c.cors.expose_headers, ["x-trace"]);
    assert_eq!(c.cors.max_age.as_secs(), 3_600);
    let a = &c.auth;
    assert_eq!(a.mode, AuthMode::Optional);
    assert_eq!(a.algorithms, [Algorithm::EdDSA]);
    assert!(matches!(&a.key, Some(KeySource::PublicKeyPem(pem)) if pem == ED25519_PEM.as_bytes()));
    assert_eq!(a.issuer.as_deref(), Some("https://id.example.com"));
    assert_eq!(a.audience.as_deref(), Some("streams"));
    assert_eq!(a.leeway.as_secs(), 5);
    assert_eq!(a.max_token_size, 16_384);
    assert_eq!(
        (a.user_claim.as_str(), a.roles_claim.as_str()),
        ("uid", "groups")
    );
    assert_eq!(a.query_params, ["t"]);
    assert_eq!(a.pass_authorization_schemes, ["Basic", "Digest"]);
    assert_eq!((a.cookie.as_str(), a.forward_as), ("sg", ForwardAs::Cookie));
    assert_eq!(a.forward_name, "session");
    assert!(!a.close_on_expiry);
    assert_eq!(a.websocket_protocol_prefix.as_deref(), Some("bearer."));
    assert_eq!(a.session.path, "/auth/session");
    assert_eq!(a.session.ttl.as_secs(), 3_600);
    assert_eq!(a.session.same_site, SameSite::None);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "streamguard=debug,warn");
    let sse = SseConfig {
        heartbeat: Duration::ZERO,
        heartbeat_comment: "keepalive".into(),
        stale_after: Duration::from_secs(120),
        retry: Some(Duration::from_secs(3)),
        retry_jitter: 0.5,
        max_event_size: 65_536,
        on_oversize: OnOversize::Close,
        on_invalid: OnInvalid::Drop,
        write_timeout: Duration::from_secs(5),
        require_accept: false,
        client_buffer: 32 << 10,
        slow_buffer_total: 8 << 20,
        on_slow_client: OnSlowClient::Skip,
    };
    assert_eq!(c.sse, sse);
    let websocket = WebSocketConfig {
        ping_interval: Duration::from_secs(30),
        pong_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(600),
        max_message_size: 1_000_000,
        messages_per_user: Some(RateSpec {
            count: 50,
            per: Duration::from_secs(3_600),
        }),
        on_rate_limit: OnRateLimit::Drop,
        compression: Compression::Inflate,
        max_control_frames: RateSpec {
            count: 5,
            per: Duration::from_secs(1),
        },
        max_message_fragments: 16,
    };
    assert_eq!(c.websocket, websocket);
    assert_eq!(c.limits.max_streams, Some(10_000));
    assert_eq!(c.limits.max_streams_per_user, Some(5));
    assert_eq!(c.limits.on_user_limit, OnUserLimit::EvictOldest);
    assert_eq!(c.limits.connects_per_user.map(|r| r.count), Some(3));
    assert_eq!(
        c.limits.requests_per_ip.map(|r| r.per),
        Some(Duration::from_secs(1))
    );
    assert_eq!(c.limits.burst, 10);
    let proxies: Vec<String> = c
        .limits
        .trusted_proxies
        .iter()
        .map(|p| format!("{}/{}", p.addr, p.prefix_len))
        .collect();
    assert_eq!(proxies, ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]);
    let route = &c.routes[0];
    assert_eq!(route.path, "/tenants/{tenant}/events");
    assert_eq!(
        route.segments,
        [
            RouteSegment::Literal("tenants".into()),
            RouteSegment::Param("tenant".into()),
            RouteSegment::Literal("events".into()),
        ]
    );
    assert_eq!(route.auth, AuthMode::Required);
    assert_eq!(route.roles, ["admin", "reader"]);
    assert_eq!(route.claims, [("tenant".to_owned(), "tid".to_owned())]);
    assert_eq!(
        (&route.sse, &route.websocket, &route.limits),
        (&sse, &websocket, &c.limits)
    );
}

#[test]
fn a_drain_timeout_shorter_than_delay_and_window_is_refused() {
    let errors = invalid(&with_base(
        "[server]\ndrain_delay = \"10s\"\ndrain_window = \"30s\"\ndrain_timeout = \"20s\"",
    ));
    let error = errors
        .iter()
        .find(|e| e.key == "server.drain_timeout")
        .unwrap_or_else(|| panic!("no drain_timeout error in {errors:?}"));
    assert_eq!(error.line, Some(4));
    assert!(error.message.contains("40s"), "{error}");
    valid(&with_base(
        "[server]\ndrain_delay = \"0s\"\ndrain_window = \"0s\"\ndrain_timeout = \"1s\"",
    ));
}

#[test]
fn every_default() {
    let c = valid(&with_base(""));
    assert_eq!(c.listen.address, "0.0.0.0:8080".parse().expect("addr"));
    assert!(c.listen.tls.is_none());
    assert_eq!(c.listen.max_request_head, 32 * 1024);
    assert_eq!(c.listen.request_head_timeout.as_secs(), 10);
    assert_eq!(c.listen.keepalive_timeout.as_secs(), 60);
    assert_eq!(
        c.listen.max_connections,
        connections_for_open_files(open_files_limit())
    );
    assert_eq!(c.listen.max_connections_per_ip, None);
    assert_eq!(c.admin.address, "127.0.0.1:9901".parse().expect("addr"));
    assert_eq!(c.upstream.connect_timeout.as_secs(), 2);
    assert_eq!(c.upstream.write_timeout.as_secs(), 30);
    assert!(c.upstream.hide_error_bodies);
    let server = &c.server;
    assert_eq!(server.threads, 2);
    assert_eq!(
        (
            server.drain_delay.as_secs(),
            server.drain_window.as_secs(),
            server.drain_timeout.as_secs()
        ),
        (5, 20, 30)
    );
    assert!(!server.watch_config);
    assert_eq!(server.watch_interval.as_secs(), 5);
    assert!(c.cors.allowed_origins.is_empty());
    assert!(c.cors.allow_credentials && !c.cors.require_origin);
    assert_eq!(c.cors.allowed_methods, ["GET", "POST"]);
    assert_eq!(
        c.cors.allowed_headers,
        ["authorization", "content-type", "last-event-id"]
    );
    assert!(c.cors.expose_headers.is_empty());
    assert_eq!(c.cors.max_age.as_secs(), 600);
    let a = &c.auth;
    assert_eq!(a.mode, AuthMode::Required);
    assert_eq!(a.algorithms, [Algorithm::HS256]);
    assert!(matches!(&a.key, Some(KeySource::Secret(s)) if s == SECRET.as_bytes()));
    assert_eq!((a.issuer.as_deref(), a.audience.as_deref()), (None, None));
    assert_eq!(a.leeway.as_secs(), 30);
    assert_eq!(a.max_token_size, 8_192);
    assert_eq!(
        (a.user_claim.as_str(), a.roles_claim.as_str()),
        ("sub", "roles")
    );
    assert_eq!(a.query_params, ["token", "access_token", "sse_token"]);
    assert!(a.pass_authorization_schemes.is_empty());
    assert_eq!(a.cookie, "streamguard_token");
    assert_eq!(
        (a.forward_as, a.forward_name.as_str()),
        (ForwardAs::Header, "access_token")
    );
    assert!(a.close_on_expiry);
    assert_eq!(a.websocket_protocol_prefix, None);
    assert_eq!(a.session.path, "/_streamguard/session");
    assert_eq!(a.session.ttl.as_secs(), 900);
    assert!(a.session.secure);
    assert_eq!(a.session.same_site, SameSite::Strict);
    assert_eq!(
        (c.log.format, c.log.level.as_str()),
        (LogFormat::Json, "info")
    );
    assert_eq!(c.sse, SseConfig::default());
    assert_eq!(c.sse.heartbeat.as_secs(), 15);
    assert_eq!(c.sse.heartbeat_comment, "ping");
    assert_eq!(c.sse.stale_after.as_secs(), 45);
    assert_eq!((c.sse.retry, c.sse.retry_jitter), (None, 0.0));
    assert_eq!(c.sse.max_event_size, 1_048_576);
    assert_eq!(
        (c.sse.on_oversize, c.sse.on_invalid),
        (OnOversize::Drop, OnInvalid::Pass)
    );
    assert_eq!(c.sse.write_timeout.as_secs(), 30);
    assert_eq!(
        (c.sse.client_buffer, c.sse.slow_buffer_total),
        (262_144, 67_108_864)
    );
    assert_eq!(c.sse.on_slow_client, OnSlowClient::Close);
    assert_eq!(c.websocket, WebSocketConfig::default());
    assert_eq!(c.websocket.ping_interval.as_secs(), 20);
    assert_eq!(c.websocket.pong_timeout.as_secs(), 10);
    assert_eq!(c.websocket.idle_timeout, Duration::ZERO);
    assert_eq!(c.websocket.max_message_size, 1_048_576);
    assert_eq!(c.websocket.messages_per_user, None);
    assert_eq!(c.websocket.on_rate_limit, OnRateLimit::Close);
    assert_eq!(c.websocket.compression, Compression::Strip);
    assert_eq!(
        c.websocket.max_control_frames,
        RateSpec {
            count: 20,
            per: Duration::from_secs(1)
        }
    );
    assert_eq!(c.websocket.max_message_fragments, 128);
    assert_eq!(c.limits, LimitsConfig::default());
    assert_eq!(
        (c.limits.max_streams, c.limits.max_streams_per_user),
        (None, None)
    );
    assert_eq!(c.limits.on_user_limit, OnUserLimit::Reject);
    assert_eq!(
        (c.limits.connects_per_user, c.limits.requests_per_ip),
        (None, None)
    );
    assert_eq!(c.limits.burst, 0);
    assert!(c.limits.trusted_proxies.is_empty());
    assert!(c.routes.is_empty());
}

/// (case, key, line, fragments the message must contain)
const BAD: &[(&str, &str, Option<usize>, &[&str])] = &[
    (
        "[sse]\nheartbeat = \"15 parsecs\"",
        "sse.heartbeat",
        Some(2),
        &["invalid duration \"15 parsecs\"", "\"1h30m\""],
    ),
    (
        "[websocket]\nmax_message_size = \"1 megabyte\"",
        "websocket.max_message_size",
        Some(2),
        &["invalid size \"1 megabyte\"", "\"64KiB\""],
    ),
    ("[sse]\nmax_event_size = \"0\"", "sse.max_event_size", Some(2), &["greater than zero"]),
    ("[websocket]\ncompression = \"gzip\"", "websocket.compression", Some(2), &["\"strip\", \"inflate\""]),
    ("[websocket]\nmax_control_frames = \"many\"", "websocket.max_control_frames", Some(2), &["invalid rate \"many\""]),
    ("[websocket]\nmax_message_fragments = 0", "websocket.max_message_fragments", Some(2), &["below the minimum of 1", "at least one frame"]),
    ("[[route]]\npath = \"/ws\"\nwebsocket = { compression = \"deflate\" }", "route[0].websocket.compression", Some(3), &["\"strip\", \"inflate\""]),
    (
        "[limits]\nrequests_per_ip = \"20 per second\"",
        "limits.requests_per_ip",
        Some(2),
        &["invalid rate \"20 per second\"", "\"600/minute\""],
    ),
    (
        "[cors]\nallowed_origins = [\"https://ok.example.com\", \"*\"]",
        "cors.allowed_origins[1]",
        Some(2),
        &[WILDCARD_ORIGIN],
    ),
    (
        "[cors]\nallowed_origins = [\n  \"https://a.example.com\",\n  \"https://app.*.example.com\",\n]",
        "cors.allowed_origins[1]",
        Some(4),
        &["\"https://app.*.example.com\"", "wrong place", "\"https://*.example.com\""],
    ),
    ("[cors]\nallowed_origins = [\"*://example.com\"]", "cors.allowed_origins[0]", Some(2), &["wrong place"]),
    ("[cors]\nallowed_origins = [\"https://a*.example.com\"]", "cors.allowed_origins[0]", Some(2), &["wrong place"]),
    ("[cors]\nallowed_origins = [\"null\"]", "cors.allowed_origins[0]", Some(2), &["sandboxed"]),
    ("[cors]\nallowed_origins = [\"https://a.example.com/\"]", "cors.allowed_origins[0]", Some(2), &["trailing slash"]),
    ("[cors]\nallowed_origins = [\"app.example.com\"]", "cors.allowed_origins[0]", Some(2), &["no scheme"]),
    ("[cors]\nallowed_origins = [\"https://*.com\"]", "cors.allowed_origins[0]", Some(2), &["top-level domain"]),
    ("[cors]\nallowed_methods = [\"GET\", \"*\"]", "cors.allowed_methods[1]", Some(2), &["list the names"]),
    ("[log]\nlevel = \"${LOG_LEVEL}\"", "log.level", Some(2), &["LOG_LEVEL is not set", "${LOG_LEVEL:-default}"]),
    ("[log]\nlevel = \"verbose\"", "log.level", Some(2), &["\"verbose\" is not a level"]),
    ("[log]\nlevel = \"streamguard=loud\"", "log.level", Some(2), &["not a valid log filter"]),
    ("[log]\nformat = \"xml\"", "log.format", Some(2), &["\"xml\"", "\"json\", \"text\""]),
    (
        "[auth]\nsecret = \"${JWT_SECRET}\"\nsecret_file = \"secret.txt\"",
        "auth.secret_file",
        Some(3),
        &["auth.secret is also set", "exactly one"],
    ),
    ("[auth]\nsecret = \"short-secret\"", "auth.secret", Some(2), &["12 bytes", "at least 16"]),
    (
        "[auth]\nsecret = \"${JWT_SECRET}\"\npass_authorization_schemes = [\"Basic\", \"bearer\"]",
        "auth.pass_authorization_schemes[1]",
        Some(3),
        &["\"bearer\" cannot pass unverified", "e.g. [\"Basic\"]"],
    ),
    (
        "[auth]\nsecret = \"${JWT_SECRET}\"\npass_authorization_schemes = [\"BearerToken\"]",
        "auth.pass_authorization_schemes[0]",
        Some(3),
        &["cannot pass unverified"],
    ),
    (
        "[auth]\nsecret = \"${JWT_SECRET}\"\npass_authorization_schemes = [\"Basic x\"]",
        "auth.pass_authorization_schemes[0]",
        Some(3),
        &["not a valid HTTP token"],
    ),
    ("[auth]\nsecret = \"${JWT_SECRET}\"\nmax_token_size = \"0\"", "auth.max_token_size", Some(3), &["greater than zero"]),
    ("[auth]\nsecret = \"${JWT_SECRET}\"\nmax_token_size = \"8 kilo\"", "auth.max_token_size", Some(3), &["invalid size", "\"64KiB\""]),
    ("[auth]\nsecret_file = \"short.txt\"", "auth.secret_file", Some(2), &["4 bytes"]),
    ("[auth]\nsecret_file = \"absent.txt\"", "auth.secret_file", Some(2), &["cannot read", "absent.txt"]),
    (
        "[auth]\nalgorithms = [\"HS256\", \"RS256\"]\nsecret = \"${JWT_SECRET}\"",
        "auth.algorithms",
        Some(2),
        &["mixes HS256 with RS256", "algorithm confusion"],
    ),
    ("[auth]\nalgorithms = []\nsecret = \"${JWT_SECRET}\"", "auth.algorithms", Some(2), &["at least one"]),
    ("[auth]\nalgorithms = [\"none\"]\nsecret = \"${JWT_SECRET}\"", "auth.algorithms[0]", Some(2), &["\"none\" is not a supported"]),
    ("[auth]\nalgorithms = [\"RS256\"]\nsecret = \"${JWT_SECRET}\"", "auth.secret", Some(3), &["public key"]),
    ("[auth]\nalgorithms = [\"HS256\"]\njwks_file = \"jwks.json\"", "auth.jwks_file", Some(3), &["shared secret"]),
    ("[auth]\nalgorithms = [\"RS256\"]\npublic_key_file = \"ed.pem\"", "auth.public_key_file", Some(3), &["not a PEM RSA public key"]),
    ("[auth]\nalgorithms = [\"EdDSA\"]\njwks_file = \"ed.pem\"", "auth.jwks_file", Some(3), &["not a JWKS document"]),
    ("[auth]\nmode = \"sometimes\"", "auth.mode", Some(2), &["\"required\", \"optional\", \"off\""]),
    ("[auth]\nmode = \"optional\"", "auth", None, &["no verification key", "auth.mode = \"optional\""]),
    ("[auth]\nmode = \"off\"\n[[route]]\npath = \"/a\"\nauth = \"required\"", "auth", None, &["route[0] turns auth on"]),
    (
        "[auth]\nsecret = \"${JWT_SECRET}\"\n[auth.session]\nsecure = false\nsame_site = \"None\"",
        "auth.session.same_site",
        Some(5),
        &["requires auth.session.secure = true"],
    ),
    ("[auth]\nsecret = \"${JWT_SECRET}\"\n[auth.session]\npath = \"session\"", "auth.session.path", Some(4), &["must start with \"/\""]),
    ("[auth]\nsecret = \"${JWT_SECRET}\"\ncookie = \"a;b\"", "auth.cookie", Some(3), &["not a valid HTTP token"]),
    ("[server]\nthreads = 0", "server.threads", Some(2), &["0 is below the minimum of 1"]),
    ("[listen]\naddress = \"localhost:80\"", "listen.address", Some(2), &["not an IP:port", "\"0.0.0.0:8080\""]),
    ("[listen]\ntls_cert_file = \"cert.pem\"", "listen.tls_key_file", Some(2), &["set listen.tls_key_file too"]),
    ("[listen]\ntls_cert_file = \"nope.pem\"\ntls_key_file = \"cert.pem\"", "listen.tls_cert_file", Some(2), &["cannot read"]),
    ("[listen]\nmax_request_head = \"512\"", "listen.max_request_head", Some(2), &["below the minimum of \"1KiB\""]),
    ("[listen]\nmax_request_head = \"1MiB\"", "listen.max_request_head", Some(2), &["above the maximum of \"256KiB\""]),
    ("[listen]\nrequest_head_timeout = \"0s\"", "listen.request_head_timeout", Some(2), &["no \"off\" setting"]),
    ("[listen]\nkeepalive_timeout = \"forever\"", "listen.keepalive_timeout", Some(2), &["invalid duration"]),
    ("[listen]\nmax_connections = 0", "listen.max_connections", Some(2), &["below the minimum of 1"]),
    ("[listen]\nmax_connections_per_ip = 0", "listen.max_connections_per_ip", Some(2), &["remove the key for no per-address limit"]),
    ("[limits]\ntrusted_proxies = [\"10.0.0.1/8\"]", "limits.trusted_proxies[0]", Some(2), &["\"10.0.0.0/8\""]),
    ("[limits]\ntrusted_proxies = [\"0.0.0.0/0\"]", "limits.trusted_proxies[0]", Some(2), &["forge X-Forwarded-For"]),
    ("[limits]\ntrusted_proxies = [\"10.0.0.0/33\"]", "limits.trusted_proxies[0]", Some(2), &["0..=32"]),
    ("[limits]\ntrusted_proxies = [\"proxy.local\"]", "limits.trusted_proxies[0]", Some(2), &["not an IP address"]),
    ("[limits]\nmax_streams = 0", "limits.max_streams", Some(2), &["remove the key for no limit"]),
    ("[sse]\nheartbeat_comment = \":ping\"", "sse.heartbeat_comment", Some(2), &["the ':' is added"]),
    ("[sse]\nheartbeat_comment = \"a\\nb\"", "sse.heartbeat_comment", Some(2), &["line break"]),
    ("[sse]\nretry_jitter = 1.5", "sse.retry_jitter", Some(2), &["outside 0.0..=1.0"]),
    ("[sse]\non_slow_client = \"drop\"", "sse.on_slow_client", Some(2), &["\"close\", \"skip\""]),
    ("[sse]\nclient_buffer = \"0\"", "sse.client_buffer", Some(2), &["greater than zero"]),
    ("[sse]\nslow_buffer_total = \"lots\"", "sse.slow_buffer_total", Some(2), &["whole number"]),
    (
        "[[route]]\npath = \"/a\"\nsse = { slow_buffer_total = \"1MiB\" }",
        "route[0].sse.slow_buffer_total",
        Some(3),
        &["shared by every stream", "set it in [sse]"],
    ),
    ("[[route]]\nroles = []", "route[0].path", Some(1), &["missing"]),
    ("[[route]]\npath = \"events\"", "route[0].path", Some(2), &["must start with \"/\""]),
    ("[[route]]\npath = \"/a//b\"", "route[0].path", Some(2), &["empty segment"]),
    ("[[route]]\npath = \"/a/{id}/{id}\"", "route[0].path", Some(2), &["{id} twice"]),
    ("[[route]]\npath = \"/a/x{id}\"", "route[0].path", Some(2), &["whole segment"]),
    (
        "[[route]]\npath = \"/events/{user}\"\nclaims = { tenant = \"tid\" }",
        "route[0].claims.tenant",
        Some(3),
        &["\"tenant\" is not a parameter", "{user}", "add \"{tenant}\""],
    ),
    (
        "[[route]]\npath = \"/a\"\n\n[[route]]\npath = \"/b\"\nlimits = { max_streams_per_user = 0 }",
        "route[1].limits.max_streams_per_user",
        Some(6),
        &["below the minimum of 1"],
    ),
    ("[[route]]\npath = \"/a\"\nsse = { stale_after = \"soon\" }", "route[0].sse.stale_after", Some(3), &["invalid duration"]),
    ("[[route]]\npath = \"/a\"\nauth = \"maybe\"", "route[0].auth", Some(3), &["\"maybe\""]),
];

#[test]
fn the_limit_store_defaults_to_memory_and_takes_redis_keys() {
    assert!(matches!(valid(&with_base("")).store, StoreConfig::Memory));
    let c = valid(&with_base(
        "[limits.store]\nkind = \"redis\"\nurl = \"unix:///run/redis.sock\"\n\
         password_file = \"secret.txt\"\non_error = \"closed\"",
    ));
    let StoreConfig::Redis(redis) = c.store else {
        panic!("expected the Redis store")
    };
    assert_eq!(redis.url, "unix:///run/redis.sock");
    assert_eq!(
        redis.password.as_deref(),
        Some(SECRET),
        "trailing newline trimmed"
    );
    assert_eq!(redis.key_prefix, "streamguard:");
    assert_eq!(redis.timeout, Duration::from_millis(50));
    assert_eq!(redis.lease, Duration::from_secs(30));
    assert_eq!(redis.on_error, OnStoreError::Closed);
    assert!(
        !format!("{redis:?}").contains(SECRET),
        "debug output hides the password"
    );
    assert_eq!(redis.ca, None);

    let c = valid(&with_base(
        "[limits.store]\nkind = \"redis\"\nurl = \"Rediss://redis.internal:6380/0\"\n\
         ca_file = \"ca.pem\"",
    ));
    let StoreConfig::Redis(redis) = c.store else {
        panic!("expected the Redis store")
    };
    assert_eq!(redis.ca.as_deref(), Some(CA_PEM.as_bytes()));
    assert_eq!(redis.ca_file, Some(fixtures().join("ca.pem")));
    // The client takes valkeys:// for TLS too.
    valid(&with_base(
        "[limits.store]\nkind = \"redis\"\nurl = \"valkeys://redis.internal:6380/0\"\n\
         ca_file = \"ca.pem\"",
    ));
}

#[test]
fn limit_store_errors_name_the_key_line_and_fix() {
    let cases: &[(&str, &str, Option<usize>, &[&str])] = &[
        ("[limits.store]\nkind = \"redis\"", "limits.store.url", Some(1), &["redis://127.0.0.1:6379/0"]),
        ("[limits.store]\nkind = \"redis\"\nurl = \"http://u:pw@h:1\"", "limits.store.url", Some(3), &["not a Redis URL", "<redacted>"]),
        ("[limits.store]\nkind = \"etcd\"", "limits.store.kind", Some(2), &["\"memory\", \"redis\""]),
        ("[limits.store]\nurl = \"redis://h\"", "limits.store.url", Some(2), &["kind = \"redis\""]),
        ("[limits.store]\nkind = \"redis\"\nurl = \"redis://h\"\nkey_prefix = \"{sg}\"", "limits.store.key_prefix", Some(4), &["hash tag"]),
        ("[limits.store]\nkind = \"redis\"\nurl = \"redis://h\"\nlease = \"1s\"\ntimeout = \"500ms\"", "limits.store.lease", Some(4), &["ten times"]),
        ("[limits.store]\nkind = \"redis\"\nurl = \"redis://h\"\ntimeout = \"0s\"", "limits.store.timeout", Some(4), &["outside"]),
        ("[limits.store]\nkind = \"redis\"\nurl = \"redis://h\"\npassword_file = \"absent.txt\"", "limits.store.password_file", Some(4), &["cannot read"]),
        ("[limits.store]\nkind = \"redis\"\nurl = \"redis://h\"\nca_file = \"ca.pem\"", "limits.store.ca_file", Some(4), &["rediss://"]),
        ("[limits.store]\nkind = \"redis\"\nurl = \"rediss://h\"\nca_file = \"secret.txt\"", "limits.store.ca_file", Some(4), &["no certificate"]),
        ("[limits.store]\nkind = \"redis\"\nurl = \"rediss://h\"\nca_file = \"absent.pem\"", "limits.store.ca_file", Some(4), &["cannot read"]),
        ("[limits.store]\nkind = \"redis\"\nurl = \"rediss://h/0#insecure\"\nca_file = \"ca.pem\"", "limits.store.ca_file", Some(4), &["#insecure"]),
        ("[limits.store]\nca_file = \"ca.pem\"", "limits.store.ca_file", Some(2), &["kind = \"redis\""]),
        ("[[route]]\npath = \"/a\"\nlimits = { store = { kind = \"redis\" } }", "route[0].limits.store", Some(3), &["[limits.store]"]),
    ];
    for (case, key, line, needles) in cases {
        let errors = invalid(&with_base(case));
        let error = errors
            .iter()
            .find(|e| e.key == *key)
            .unwrap_or_else(|| panic!("no error for {key} in {errors:?}\n{case}"));
        assert_eq!(error.line, *line, "{error}");
        for needle in *needles {
            assert!(error.message.contains(needle), "{needle:?} not in {error}");
        }
        assert!(!error.message.contains("pw@"), "password in {error}");
    }
}

#[test]
fn the_connection_cap_leaves_two_files_per_stream_and_a_reserve() {
    let cases = [
        (20_000, 9_872),
        (1_024, 384),
        (65_536, 32_640),
        (256, 64),
        (3, 1),
        (0, 1),
        (u64::MAX, u32::MAX),
    ];
    for (open_files, cap) in cases {
        assert_eq!(connections_for_open_files(open_files), cap, "{open_files}");
    }
}

#[test]
fn redis_urls_are_redacted_only_where_they_hold_a_password() {
    assert_eq!(
        redact_url("redis://u:pw@h:1/0"),
        "redis://u:<redacted>@h:1/0"
    );
    assert_eq!(redact_url("rediss://:pw@h"), "rediss://:<redacted>@h");
    assert_eq!(redact_url("redis://u@h/0"), "redis://u@h/0");
    assert_eq!(redact_url("unix:///run/r.sock"), "unix:///run/r.sock");
}

#[test]
fn the_soft_open_file_limit_is_read_from_proc_limits() {
    let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                  Max processes             95480                95480                processes \n\
                  Max open files            20000                524288               files     \n";
    assert_eq!(soft_open_files(limits), Some(20_000));
    let unlimited = limits.replace("20000  ", "unlimited");
    assert_eq!(soft_open_files(&unlimited), Some(u64::MAX));
    assert_eq!(soft_open_files("Max processes 5 5 processes\n"), None);
    assert_eq!(soft_open_files("Max open files  lots  lots  files\n"), None);
}

#[test]
fn an_upstream_write_timeout_has_no_off_setting() {
    // Not a BAD case: those are placed before the base's own [upstream] table.
    let text = "[upstream]\naddress = \"127.0.0.1:3000\"\nwrite_timeout = \"0s\"\n\
                [auth]\nsecret = \"${JWT_SECRET}\"\n";
    let errors = invalid(text);
    let found = errors
        .iter()
        .find(|e| e.key == "upstream.write_timeout")
        .unwrap_or_else(|| panic!("no error for upstream.write_timeout in {errors:#?}"));
    assert_eq!(found.line, Some(3), "{found}");
    assert!(found.message.contains("greater than zero"), "{found}");
}

#[test]
fn bad_values_are_reported_with_key_line_and_fix() {
    for (case, key, line, fragments) in BAD {
        let errors = invalid(&with_base(case));
        let found = errors
            .iter()
            .find(|e| e.key == *key)
            .unwrap_or_else(|| panic!("no error for {key} in {errors:#?}\n---\n{case}"));
        assert_eq!(found.line, *line, "{key}: {found}");
        for fragment in *fragments {
            assert!(
                found.message.contains(fragment),
                "{key}: {fragment:?} not in {found}"
            );
        }
    }
}

#[test]
fn missing_upstream() {
    let errors = invalid("[auth]\nmode = \"off\"\n");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "upstream.address");
    assert!(errors[0].message.contains("[upstream]"), "{}", errors[0]);
}

#[test]
fn secrets_never_appear_in_errors() {
    let secret = "hunter2-but-long";
    let text = format!(
        "[auth]\nsecret = \"{secret}\"\nalgorithms = [\"ES256\"]\n[[route]]\npath = \"x\"\n"
    );
    let shown = ConfigError::Invalid(invalid(&with_base(&text))).to_string();
    assert!(shown.contains("auth.secret"), "{shown}");
    assert!(!shown.contains(secret), "{shown}");
    let short = invalid(&with_base("[auth]\nsecret = \"abc123\""));
    assert!(!format!("{short:?}").contains("abc123"), "{short:?}");
}

#[test]
fn multiple_errors_are_reported_together_in_file_order() {
    let text = "[server]\nthreads = 0\n[sse]\nheartbeat = \"often\"\n\
                [cors]\nallowed_origins = [\"*\"]\n[auth]\nmode = \"off\"\n";
    let errors = invalid(text);
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.threads",
            "sse.heartbeat",
            "cors.allowed_origins[0]",
            "upstream.address"
        ]
    );
    let shown = ConfigError::Invalid(errors).to_string();
    assert_eq!(shown.lines().count(), 5, "{shown}");
}

#[test]
fn env_substitution() {
    let cases: &[(&str, &str)] = &[
        ("heartbeat_comment = \"${NOT_SET:-fallback}\"", "fallback"),
        ("heartbeat_comment = \"cost: $$5\"", "cost: $5"),
        ("heartbeat_comment = \"$${JWT_SECRET}\"", "${JWT_SECRET}"),
        ("heartbeat_comment = \"on ${APP_HOST}\"", "on 127.0.0.1"),
    ];
    for (line, want) in cases {
        let c = valid(&with_base(&format!("[sse]\n{line}")));
        assert_eq!(c.sse.heartbeat_comment, *want, "{line}");
    }
    let c = valid(&with_base("[sse]\nheartbeat = \"${HEARTBEAT:-7s}\""));
    assert_eq!(c.sse.heartbeat, Duration::from_secs(7));
}

#[test]
fn key_sources() {
    let c = valid(&with_base("[auth]\nsecret_file = \"secret.txt\""));
    assert!(matches!(c.auth.key, Some(KeySource::Secret(s)) if s == SECRET.as_bytes()));
    let c = valid(&with_base(
        "[auth]\nalgorithms = [\"EdDSA\"]\njwks_file = \"jwks.json\"",
    ));
    assert!(matches!(c.auth.key, Some(KeySource::Jwks(j)) if j == JWKS));
    let c = valid(&with_base("[auth]\nmode = \"off\""));
    assert!(c.auth.key.is_none());
}

#[test]
fn route_overrides_merge_over_global_sections() {
    let text = r#"
[sse]
heartbeat = "10s"
stale_after = "1m"
slow_buffer_total = "16MiB"
[websocket]
messages_per_user = "100/minute"
[limits]
max_streams = 500
trusted_proxies = ["10.0.0.0/8"]
[auth]
mode = "optional"
secret = "${JWT_SECRET}"
[[route]]
path = "/live"
sse = { heartbeat = "5s", on_invalid = "close", client_buffer = "1MiB", on_slow_client = "skip" }
websocket = { idle_timeout = "5m" }
limits = { max_streams_per_user = 2, trusted_proxies = [] }
[[route]]
path = "/plain"
"#;
    let c = valid(&with_base(text));
    let live = &c.routes[0];
    assert_eq!(live.auth, AuthMode::Optional);
    assert_eq!(live.sse.heartbeat, Duration::from_secs(5));
    assert_eq!(live.sse.on_invalid, OnInvalid::Close);
    assert_eq!(
        live.sse.stale_after,
        Duration::from_secs(60),
        "inherits the global value"
    );
    assert_eq!(
        live.sse.write_timeout,
        Duration::from_secs(30),
        "inherits the default"
    );
    assert_eq!(
        (live.sse.client_buffer, live.sse.on_slow_client),
        (1 << 20, OnSlowClient::Skip)
    );
    assert_eq!(
        live.sse.slow_buffer_total,
        16 << 20,
        "the process-wide budget is the global one"
    );
    assert_eq!(live.websocket.idle_timeout, Duration::from_secs(300));
    assert_eq!(live.websocket.messages_per_user.map(|r| r.count), Some(100));
    assert_eq!(live.limits.max_streams, Some(500));
    assert_eq!(live.limits.max_streams_per_user, Some(2));
    assert!(live.limits.trusted_proxies.is_empty());
    let plain = &c.routes[1];
    assert_eq!(
        (&plain.sse, &plain.websocket, &plain.limits),
        (&c.sse, &c.websocket, &c.limits)
    );
    assert!(plain.segments == [RouteSegment::Literal("plain".into())]);
}

#[test]
fn origins_are_normalised() {
    let cases: &[(&str, OriginPattern)] = &[
        (
            "HTTPS://App.Example.COM",
            OriginPattern::Exact("https://app.example.com".into()),
        ),
        (
            "https://app.example.com:443",
            OriginPattern::Exact("https://app.example.com".into()),
        ),
        (
            "http://app.example.com:80",
            OriginPattern::Exact("http://app.example.com".into()),
        ),
        (
            "https://app.example.com:8443",
            OriginPattern::Exact("https://app.example.com:8443".into()),
        ),
        (
            "http://[::1]:8080",
            OriginPattern::Exact("http://[::1]:8080".into()),
        ),
        (
            "https://*.Example.com",
            OriginPattern::Wildcard {
                scheme: "https".into(),
                suffix: ".example.com".into(),
            },
        ),
    ];
    for (input, want) in cases {
        assert_eq!(origin(input).as_ref(), Ok(want), "{input}");
    }
    for bad in [
        "https://app.example.com:0",
        "https://app..com",
        "ftp://x.com",
        "https://*.x.com:8443",
        "https://[zz]",
    ] {
        assert!(origin(bad).is_err(), "{bad}");
    }
}

#[test]
fn http2_defaults_values_and_errors_name_their_keys() {
    let config = valid(&with_base(""));
    assert_eq!(config.http2, Http2Config::default());
    assert!(!config.listen.h2c);
    let config = valid(&with_base(
        "[listen]\nh2c = true\n[http2]\nmax_concurrent_streams = 250\n\
         idle_timeout = \"30s\"\nmax_send_buffer = \"32KiB\"",
    ));
    assert!(config.listen.h2c);
    assert_eq!(config.http2.max_concurrent_streams, 250);
    assert_eq!(config.http2.idle_timeout, Duration::from_secs(30));
    assert_eq!(config.http2.max_send_buffer, 32 * 1024);
    for (case, key) in [
        (
            "[http2]\nmax_concurrent_streams = 0",
            "http2.max_concurrent_streams",
        ),
        (
            "[http2]\nmax_concurrent_streams = 20000",
            "http2.max_concurrent_streams",
        ),
        ("[http2]\nidle_timeout = \"0s\"", "http2.idle_timeout"),
        (
            "[http2]\nmax_send_buffer = \"1KiB\"",
            "http2.max_send_buffer",
        ),
        (
            "[http2]\nmax_send_buffer = \"1GiB\"",
            "http2.max_send_buffer",
        ),
        (
            "[listen]\nh2c = true\n[http2]\nenabled = false",
            "listen.h2c",
        ),
        (
            "[listen]\nh2c = true\ntls_cert_file = \"cert.pem\"\ntls_key_file = \"cert.pem\"",
            "listen.h2c",
        ),
    ] {
        let errors = invalid(&with_base(case));
        assert!(errors.iter().any(|e| e.key == key), "{case}: {errors:?}");
    }
}
