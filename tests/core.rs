//! Integration tests for the core protections: strict CORS, JWT verification, token relocation,
//! routes, error hygiene, log hygiene, metrics and `streamguard check`. Every test runs the real
//! binary in front of the real demo upstream on real sockets, with a proxy of its own so that
//! logs and counters belong to that test alone.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

/// The allowlist every test proxy gets: one exact origin and one subdomain wildcard.
const CORS: &str = r#"[cors]
allowed_origins = ["https://app.example", "https://*.example.com"]
max_age = "7m"
"#;
const APP_ORIGIN: &str = "https://app.example";
const SUB_ORIGIN: &str = "https://live.example.com";
const UNAUTHORIZED_BODY: &str = r#"{"error":"unauthorized"}"#;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A token valid for ten minutes (long enough for any test, short of the session ttl).
fn token_for(sub: &str, roles: &[&str]) -> String {
    mint_token(sub, roles, 600, Value::Null)
}

fn sign(alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, key)
        .unwrap_or_else(|e| panic!("signing a test token: {e}"))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_else(|e| panic!("clock before 1970: {e}"))
}

/// Unpadded base64url (RFC 7515 §2), enough to hand-build a JWT header.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An HS256 token signed with [`TEST_SECRET`] under a hand-written JOSE header (jsonwebtoken's
/// `Header` cannot carry `crit`).
fn hs256_with_header(header: &str, claims: &Value) -> String {
    let signed = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(signed.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .unwrap_or_else(|e| panic!("signing a test token: {e}"));
    format!("{signed}.{signature}")
}

/// The signature segment of a JWT: the part that must never be logged even on its own.
fn signature_of(token: &str) -> &str {
    token.rsplit('.').next().unwrap_or(token)
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The JSON log records of the security log with `event` (e.g. `auth_failed`).
fn security_events(proxy: &Proxy, event: &str) -> Vec<Value> {
    proxy
        .json_logs()
        .into_iter()
        .filter(|l| l["target"] == "streamguard::security" && l["event"] == event)
        .collect()
}

fn access_lines(proxy: &Proxy) -> Vec<Value> {
    proxy
        .json_logs()
        .into_iter()
        .filter(|l| l["target"] == "streamguard::access")
        .collect()
}

/// Waits until `n` access lines are written: the access line and the counters are updated
/// after the response went out, so a client can be faster than them.
async fn wait_access_lines(proxy: &Proxy, n: usize) {
    let done = wait_until(Duration::from_secs(5), || access_lines(proxy).len() >= n).await;
    assert!(
        done,
        "expected {n} access lines, got {}:\n{}",
        access_lines(proxy).len(),
        proxy.logs()
    );
}

async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Response {
    http_request(
        addr,
        &request_head(
            method,
            addr,
            target,
            &[("Connection", "close"), ("Content-Length", "0")],
            headers,
        ),
    )
    .await
}

/// The status of a WebSocket handshake through the proxy (101 when it was accepted).
async fn ws_status(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    match ws_connect(addr, path, headers).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("websocket handshake to {path} failed without a response: {e}"),
    }
}

/// What the upstream's `/echo` saw, as JSON.
fn echoed(resp: &Response) -> Value {
    assert_eq!(resp.status, 200, "echo through the proxy: {}", resp.text());
    resp.json()
}

// ---------------------------------------------------------------------------------------------
// CORS

#[tokio::test(flavor = "multi_thread")]
async fn preflights_are_answered_by_the_proxy_and_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, CORS).await;

    for origin in [APP_ORIGIN, SUB_ORIGIN] {
        let resp = send(
            proxy.addr,
            "OPTIONS",
            "/sse",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                (
                    "Access-Control-Request-Headers",
                    "Authorization, Last-Event-ID",
                ),
            ],
        )
        .await;
        assert_eq!(
            resp.status, 204,
            "allowed preflight from {origin}: {resp:?}"
        );
        // The exact origin, never `*`: browsers refuse `*` together with credentials.
        assert_eq!(resp.header_all("access-control-allow-origin"), vec![origin]);
        assert_eq!(
            resp.header("access-control-allow-credentials"),
            Some("true")
        );
        let methods = resp
            .header("access-control-allow-methods")
            .unwrap_or_default();
        assert!(
            methods.contains("GET") && methods.contains("POST"),
            "{methods:?}"
        );
        let allowed = resp
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            allowed.contains("authorization") && allowed.contains("last-event-id"),
            "{allowed:?}"
        );
        assert_eq!(
            resp.header("access-control-max-age"),
            Some("420"),
            "max_age = 7m"
        );
        assert!(
            resp.header_all("vary").iter().any(|v| v.contains("Origin")),
            "Vary: Origin keeps caches from mixing origins: {resp:?}"
        );
    }

    let denied: [(&str, &str, Option<&str>); 4] = [
        ("https://evil.example", "GET", None),
        ("null", "GET", None),
        (APP_ORIGIN, "DELETE", None),
        (APP_ORIGIN, "GET", Some("x-evil-header")),
    ];
    for (origin, method, extra_header) in denied {
        let mut headers = vec![
            ("Origin", origin),
            ("Access-Control-Request-Method", method),
        ];
        if let Some(h) = extra_header {
            headers.push(("Access-Control-Request-Headers", h));
        }
        let resp = send(proxy.addr, "OPTIONS", "/sse", &headers).await;
        assert_eq!(resp.status, 403, "preflight {headers:?}: {resp:?}");
        assert_eq!(
            resp.header("access-control-allow-origin"),
            None,
            "{headers:?}"
        );
    }

    assert_eq!(up.stats.total(), 0, "no preflight may reach the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn disallowed_origins_are_refused_on_get_sse_and_websocket_before_the_upstream() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, CORS).await;
    let auth = bearer(&token_for("alice", &[]));

    let bad_origins = [
        "null",
        "not an origin",
        "https://x.example.com.evil.com", // look-alike of the *.example.com wildcard
        "https://example.com.evil.com",
        "http://live.example.com", // right host, wrong scheme
        "https://app.example.evil",
        "https://evil.example",
    ];
    for origin in bad_origins {
        let headers = [("Origin", origin), ("Authorization", auth.as_str())];
        let resp = get(proxy.addr, "/echo", &headers).await;
        assert_eq!(resp.status, 403, "GET with Origin {origin:?}: {resp:?}");
        assert_eq!(resp.text(), r#"{"error":"origin not allowed"}"#);
        assert_eq!(resp.header("access-control-allow-origin"), None);

        let sse = SseClient::connect(proxy.addr, "/sse?events=1", &headers).await;
        assert_eq!(sse.status, 403, "SSE with Origin {origin:?}");

        // Cross-site WebSocket hijacking: the browser sends cookies with any origin's upgrade.
        assert_eq!(
            ws_status(proxy.addr, "/ws", &headers).await,
            403,
            "WebSocket upgrade with Origin {origin:?}"
        );
    }
    assert_eq!(
        up.stats.total(),
        0,
        "a refused origin must never reach the upstream"
    );
    let rejected = security_events(&proxy, "cors_rejected");
    assert_eq!(rejected.len(), bad_origins.len() * 3, "{rejected:?}");

    // The same requests from an allowed origin go through, so the 403s above were about origin.
    let headers = [("Origin", SUB_ORIGIN), ("Authorization", auth.as_str())];
    let mut sse = SseClient::connect(proxy.addr, "/sse?events=1&then=close", &headers).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("access-control-allow-origin"), Some(SUB_ORIGIN));
    assert!(
        sse.read_event(IO_TIMEOUT).await.is_some(),
        "event from an allowed origin"
    );
    assert_eq!(ws_status(proxy.addr, "/ws", &headers).await, 101);
    assert_eq!(up.stats.hits("/sse"), 1);
    assert_eq!(up.stats.hits("/ws"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_origin_gets_the_proxys_cors_headers_and_upstream_cors_is_stripped() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, CORS).await;
    let auth = bearer(&token_for("alice", &[]));

    let resp = get(
        proxy.addr,
        "/legacy-cors",
        &[("Origin", SUB_ORIGIN), ("Authorization", &auth)],
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json(), json!({ "legacy": true }));
    // The upstream's `Access-Control-Allow-Origin: *` is gone; only the proxy's exact one is left.
    assert_eq!(
        resp.header_all("access-control-allow-origin"),
        vec![SUB_ORIGIN]
    );
    assert_eq!(
        resp.header_all("access-control-allow-credentials"),
        vec!["true"]
    );
    assert!(
        resp.header_all("vary").iter().any(|v| v.contains("Origin")),
        "{resp:?}"
    );
    let wildcard = resp
        .headers
        .iter()
        .find(|(n, v)| n.starts_with("access-control-") && v.trim() == "*");
    assert_eq!(wildcard, None, "{resp:?}");
    assert_eq!(up.stats.hits("/legacy-cors"), 1);

    // No Origin at all (curl, server-to-server) is not a CORS request: allowed by default, and
    // the upstream's wildcard is still stripped.
    let resp = get(proxy.addr, "/legacy-cors", &[("Authorization", &auth)]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("access-control-allow-origin"), None, "{resp:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn require_origin_refuses_requests_without_an_origin() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, &format!("{CORS}require_origin = true\n")).await;
    let auth = bearer(&token_for("alice", &[]));

    let resp = get(proxy.addr, "/echo", &[("Authorization", &auth)]).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(up.stats.total(), 0);
    let resp = get(
        proxy.addr,
        "/echo",
        &[("Authorization", &auth), ("Origin", APP_ORIGIN)],
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

// ---------------------------------------------------------------------------------------------
// Token relocation

#[tokio::test(flavor = "multi_thread")]
async fn query_token_is_lifted_and_forwarded_as_a_bearer_header() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, CORS).await;
    let token = token_for("alice", &["reader", "writer"]);

    let resp = get(
        proxy.addr,
        &format!("/echo?a=1&token={token}&b=%20x"),
        &[
            // A client must not be able to claim an identity for the upstream.
            ("X-Streamguard-User", "mallory"),
            ("X-Streamguard-Roles", "admin"),
        ],
    )
    .await;
    let seen = echoed(&resp);
    assert_eq!(
        seen["target"], "/echo?a=1&b=%20x",
        "other params intact, same order and bytes"
    );
    assert_eq!(seen["headers"]["authorization"], bearer(&token).as_str());
    assert_eq!(seen["headers"]["x-streamguard-user"], "alice");
    assert_eq!(seen["headers"]["x-streamguard-roles"], "reader,writer");

    // The other lifted names, first and last in the query, and the `?` going when empty.
    for (target, expected) in [
        (
            format!("/echo/x?access_token={token}&z=%2F"),
            "/echo/x?z=%2F",
        ),
        (format!("/echo/y?sse_token={token}"), "/echo/y"),
    ] {
        let seen = echoed(&get(proxy.addr, &target, &[]).await);
        assert_eq!(seen["target"], expected);
        assert_eq!(seen["headers"]["authorization"], bearer(&token).as_str());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_as_cookie_gives_the_app_its_cookie_and_keeps_the_others() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!("{CORS}[auth]\nforward_as = \"cookie\"\nforward_name = \"access_token\"\n"),
    )
    .await;
    let token = token_for("alice", &[]);

    // Token in the query; the client's own `access_token` cookie is a forgery and must go.
    let seen = echoed(
        &get(
            proxy.addr,
            &format!("/echo?token={token}&a=1"),
            &[("Cookie", "theme=dark; access_token=forged")],
        )
        .await,
    );
    assert_eq!(seen["target"], "/echo?a=1");
    assert_eq!(
        seen["headers"]["cookie"],
        format!("theme=dark; access_token={token}").as_str()
    );
    assert_eq!(seen["headers"].get("authorization"), None, "{seen}");
    assert_eq!(seen["headers"]["x-streamguard-user"], "alice");

    // Token in streamguard's own cookie: that cookie is removed, the others are kept.
    let seen = echoed(
        &get(
            proxy.addr,
            "/echo",
            &[(
                "Cookie",
                &format!("theme=dark; streamguard_token={token}; lang=en"),
            )],
        )
        .await,
    );
    assert_eq!(
        seen["headers"]["cookie"],
        format!("theme=dark; lang=en; access_token={token}").as_str()
    );
    assert_eq!(seen["headers"].get("authorization"), None, "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_as_query_puts_the_token_only_on_the_upstream_hop() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!("{CORS}[auth]\nforward_as = \"query\"\nforward_name = \"sse_token\"\n"),
    )
    .await;
    let token = token_for("alice", &[]);

    let seen = echoed(&get(proxy.addr, &format!("/echo?a=1&token={token}&b=2"), &[]).await);
    assert_eq!(
        seen["target"],
        format!("/echo?a=1&b=2&sse_token={token}").as_str()
    );
    assert_eq!(seen["headers"].get("authorization"), None, "{seen}");

    // A header token too is moved into the query for the legacy app, and a client-made
    // `sse_token` never passes as verified.
    let seen = echoed(
        &get(
            proxy.addr,
            "/echo?sse_token=forged&c=3",
            &[("Authorization", &bearer(&token))],
        )
        .await,
    );
    assert_eq!(
        seen["target"],
        format!("/echo?c=3&sse_token={token}").as_str()
    );
    assert_eq!(seen["headers"].get("authorization"), None, "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_as_query_token_never_reaches_the_access_log() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!("{CORS}[auth]\nforward_as = \"query\"\nforward_name = \"sse_token\"\n"),
    )
    .await;
    let token = token_for("alice", &[]);

    let seen = echoed(
        &get(
            proxy.addr,
            "/echo?a=1",
            &[("Authorization", &bearer(&token))],
        )
        .await,
    );
    assert_eq!(
        seen["target"],
        format!("/echo?a=1&sse_token={token}").as_str()
    );
    let mut sse = SseClient::connect(
        proxy.addr,
        &format!("/sse?events=1&then=close&token={token}"),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert!(sse.wait_closed(IO_TIMEOUT).await);
    wait_access_lines(&proxy, 2).await;

    let logs = proxy.logs();
    if let Some(line) = logs.lines().find(|l| l.contains(signature_of(&token))) {
        panic!("the token forwarded on the loopback hop leaked into a log line: {line}");
    }
    // Pingora writes the access line after the response has gone out, so the two requests'
    // lines may land in either order; what matters is which URIs were logged.
    let mut uris: Vec<String> = access_lines(&proxy)
        .iter()
        .map(|l| l["uri"].as_str().unwrap_or_default().to_owned())
        .collect();
    uris.sort();
    assert_eq!(uris, ["/echo?a=1", "/sse?events=1&then=close"]);
}

// ---------------------------------------------------------------------------------------------
// Credentials the proxy did not verify

/// An optional route, a public one and a public stream, all behind `/echo` (or `/sse`), which
/// echo what the app was sent.
const OPEN_ROUTES: &str = r#"
[[route]]
path = "/echo/optional"
auth = "optional"

[[route]]
path = "/echo/off"
auth = "off"

[[route]]
path = "/sse"
auth = "off"
"#;

/// A token signed with another key: it verifies nowhere.
fn forged_token() -> String {
    sign(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-proxy-secret-but-just-as-long-0123"),
        &json!({ "sub": "mallory", "exp": unix_now() + 600 }),
    )
}

/// The `Authorization` values the app was sent, as echoed (absent: none).
fn echoed_authorization(seen: &Value) -> Vec<String> {
    match &seen["headers"]["authorization"] {
        Value::Null => Vec::new(),
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many.iter().map(|v| v.to_string()).collect(),
        other => panic!("odd authorization echo: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unverified_credentials_never_reach_the_app() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, &format!("{CORS}{OPEN_ROUTES}")).await;
    let valid = token_for("alice", &["reader"]);
    let forged = forged_token();

    // What a lenient app would take for a bearer token is verified, and forwarded normalised.
    for spelling in [
        format!("Bearer\t{valid}"),
        format!("bearer   {valid}"),
        format!(", Bearer {valid}"),
    ] {
        let seen = echoed(
            &get(
                proxy.addr,
                "/echo/optional/a",
                &[("Authorization", &spelling)],
            )
            .await,
        );
        assert_eq!(
            echoed_authorization(&seen),
            [bearer(&valid)],
            "{spelling:?}"
        );
        assert_eq!(
            seen["headers"]["x-streamguard-user"], "alice",
            "{spelling:?}"
        );
    }

    // A credential present on an optional route is verified: forged or malformed, it is a 401.
    let refused = [
        (
            "tab-forged",
            vec![format!("Bearer\t{forged}")],
            "bad_signature",
        ),
        (
            "comma-forged",
            vec![format!(", Bearer {forged}")],
            "bad_signature",
        ),
        (
            "no-space",
            vec![format!("Bearer{valid}")],
            "malformed_authorization",
        ),
        ("bare", vec!["Bearer".to_owned()], "malformed_authorization"),
        (
            "two-lines",
            vec![bearer(&valid), bearer(&forged)],
            "malformed_authorization",
        ),
    ];
    for (case, values, _) in &refused {
        let headers: Vec<(&str, &str)> = values
            .iter()
            .map(|v| ("Authorization", v.as_str()))
            .collect();
        let resp = get(proxy.addr, &format!("/echo/optional/{case}"), &headers).await;
        assert_eq!(
            (resp.status, resp.text().as_str()),
            (401, UNAUTHORIZED_BODY),
            "{case}"
        );
    }
    let failures = security_events(&proxy, "auth_failed");
    for (case, _, reason) in &refused {
        let path = format!("/echo/optional/{case}");
        let line = failures
            .iter()
            .find(|l| l["path"] == path.as_str())
            .unwrap_or_else(|| panic!("no auth_failed line for {case}: {failures:?}"));
        assert_eq!(line["reason"], *reason, "{case}");
    }

    // Another scheme is the app's own, but not listed: it never reaches the app either. On a
    // public route nothing is verified, and nothing unverified is forwarded.
    let basic = "Basic YWxpY2U6cHc=".to_owned();
    let public = [
        ("/echo/optional/basic", vec![basic.clone()]),
        ("/echo/off/basic", vec![basic.clone()]),
        ("/echo/off/forged", vec![bearer(&forged)]),
        ("/echo/off/tab", vec![format!("Bearer\t{forged}")]),
        ("/echo/off/no-space", vec![format!("Bearer{forged}")]),
        ("/echo/off/two-lines", vec![bearer(&valid), bearer(&forged)]),
    ];
    for (path, values) in &public {
        let headers: Vec<(&str, &str)> = values
            .iter()
            .map(|v| ("Authorization", v.as_str()))
            .collect();
        let seen = echoed(&get(proxy.addr, path, &headers).await);
        assert_eq!(echoed_authorization(&seen), Vec::<String>::new(), "{path}");
        assert_eq!(seen["headers"].get("x-streamguard-user"), None, "{path}");
    }

    // The stream path too: nothing unverified reaches a public stream.
    let mut sse = SseClient::connect(
        proxy.addr,
        "/sse?events=1&then=close",
        &[
            ("Authorization", &format!("Bearer\t{forged}")),
            ("Cookie", &format!("theme=dark; streamguard_token={forged}")),
        ],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert!(sse.wait_closed(IO_TIMEOUT).await);
    let seen = up
        .stats
        .last_request("/sse")
        .expect("the stream reached the app");
    assert_eq!(seen.header("authorization"), None, "{seen:?}");
    assert_eq!(seen.header("cookie"), Some("theme=dark"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn listed_authorization_schemes_pass_to_the_app_unverified() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!("{CORS}{OPEN_ROUTES}[auth]\npass_authorization_schemes = [\"Basic\"]\n"),
    )
    .await;
    let basic = "basic YWxpY2U6cHc=";
    for path in ["/echo/optional", "/echo/off"] {
        let seen = echoed(&get(proxy.addr, path, &[("Authorization", basic)]).await);
        assert_eq!(echoed_authorization(&seen), [basic], "{path}");
        // Only a listed scheme passes, and only alone.
        let seen = echoed(&get(proxy.addr, path, &[("Authorization", "Digest a=b")]).await);
        assert_eq!(echoed_authorization(&seen), Vec::<String>::new(), "{path}");
        let seen = echoed(
            &get(
                proxy.addr,
                path,
                &[
                    ("Authorization", basic),
                    ("Authorization", "Basic Ym9iOnB3"),
                ],
            )
            .await,
        );
        assert_eq!(echoed_authorization(&seen), Vec::<String>::new(), "{path}");
    }
    // A bearer token hidden behind a listed scheme is still a bearer token.
    let resp = get(
        proxy.addr,
        "/echo/optional",
        &[(
            "Authorization",
            &format!("Basic x, Bearer {}", forged_token()),
        )],
    )
    .await;
    assert_eq!(resp.status, 401, "{resp:?}");
}

/// Every way of writing `?token=` that some framework reads as the token parameter: queries
/// with `token` between `a=1` and `b=2`, and what is left of each without it.
fn url_token_spellings(token: &str) -> Vec<(String, &'static str)> {
    [
        "TOKEN",
        "token[]",
        "token[0]",
        "token%5B%5D",
        "Access_Token",
        "access.token",
    ]
    .iter()
    .map(|name| (format!("a=1&{name}={token}&b=2"), "a=1&b=2"))
    .chain([(format!("a=1;token={token};b=2"), "a=1;b=2")])
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_spelling_of_a_url_token_is_lifted_and_seen_by_no_app_and_no_log() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!("{CORS}{OPEN_ROUTES}[log]\nlevel = \"info,streamguard=debug\"\n"),
    )
    .await;
    let valid = token_for("alice", &[]);
    let forged = forged_token();
    let no_referrer = |resp: &Response| resp.header("referrer-policy") == Some("no-referrer");

    for (n, (query, rest)) in url_token_spellings(&valid).iter().enumerate() {
        // Lifted and verified on a required route; the app sees it only as the header.
        let resp = get(proxy.addr, &format!("/echo/{n}?{query}"), &[]).await;
        assert!(no_referrer(&resp), "{query}: {resp:?}");
        let seen = echoed(&resp);
        assert_eq!(
            seen["target"],
            format!("/echo/{n}?{rest}").as_str(),
            "{query}"
        );
        assert_eq!(echoed_authorization(&seen), [bearer(&valid)], "{query}");
        assert_eq!(seen["headers"]["x-streamguard-user"], "alice", "{query}");

        // Lifted on a public route too, and not forwarded at all.
        let resp = get(proxy.addr, &format!("/echo/off/{n}?{query}"), &[]).await;
        assert!(no_referrer(&resp), "{query}: {resp:?}");
        let seen = echoed(&resp);
        assert_eq!(
            seen["target"],
            format!("/echo/off/{n}?{rest}").as_str(),
            "{query}"
        );
        assert_eq!(echoed_authorization(&seen), Vec::<String>::new(), "{query}");
    }
    for (n, (query, _)) in url_token_spellings(&forged).iter().enumerate() {
        // Present on an optional route: verified, and refused.
        let resp = get(proxy.addr, &format!("/echo/optional/{n}?{query}"), &[]).await;
        assert_eq!(resp.status, 401, "{query}: {resp:?}");
        assert!(no_referrer(&resp), "the proxy's own refusals too: {resp:?}");
    }

    // A path parameter is no token source, but it goes too (instead of a 400 for the `;`), and
    // the path is logged without it.
    let resp = get(proxy.addr, &format!("/echo/off/p;token={valid}?a=1"), &[]).await;
    assert!(no_referrer(&resp), "{resp:?}");
    assert_eq!(echoed(&resp)["target"], "/echo/off/p?a=1");
    let resp = get(proxy.addr, &format!("/echo/p;TOKEN[]={valid}"), &[]).await;
    assert_eq!(resp.status, 401, "not a credential: {resp:?}");
    assert!(no_referrer(&resp), "{resp:?}");

    // A stream's answer carries the policy too.
    let (query, _) = url_token_spellings(&valid).pop().expect("spellings");
    let mut sse = SseClient::connect(
        proxy.addr,
        &format!("/sse?events=1&then=close&{query}"),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("referrer-policy"), Some("no-referrer"));
    assert!(sse.wait_closed(IO_TIMEOUT).await);
    let seen = up
        .stats
        .last_request("/sse")
        .expect("the stream reached the app");
    assert_eq!(seen.target, "/sse?events=1&then=close&a=1;b=2");

    // Exactly when the URL carried a token: not otherwise, refusals included.
    for (path, auth) in [
        ("/echo?a=1&tokens=1", Some(bearer(&valid))),
        ("/echo/off?x=token", None),
        ("/echo?a=1", None),
        ("/echo/optional", Some(bearer(&forged))),
    ] {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let resp = get(proxy.addr, path, &headers).await;
        assert_eq!(resp.header("referrer-policy"), None, "{path}: {resp:?}");
    }

    let expected = 2 * url_token_spellings(&valid).len() + url_token_spellings(&forged).len() + 7;
    wait_access_lines(&proxy, expected).await;
    let logs = proxy.logs();
    for token in [&valid, &forged] {
        if let Some(line) = logs.lines().find(|l| l.contains(signature_of(token))) {
            panic!("a URL token leaked into the logs: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn referers_reach_the_app_without_token_params() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, &format!("{CORS}{OPEN_ROUTES}")).await;
    let valid = token_for("alice", &[]);
    let referer = format!("https://app.example/page?x=1&token={valid};TOKEN[]={valid}#frag");

    let seen = echoed(
        &get(
            proxy.addr,
            "/echo",
            &[("Authorization", &bearer(&valid)), ("Referer", &referer)],
        )
        .await,
    );
    assert_eq!(seen["headers"]["referer"], "https://app.example/page?x=1");
    let seen = echoed(
        &get(
            proxy.addr,
            "/echo/off",
            &[("Referer", "https://app.example/?a=1")],
        )
        .await,
    );
    assert_eq!(
        seen["headers"]["referer"], "https://app.example/?a=1",
        "no token: untouched"
    );

    let mut sse = SseClient::connect(
        proxy.addr,
        "/sse?events=1&then=close",
        &[("Referer", &referer)],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert!(sse.wait_closed(IO_TIMEOUT).await);
    let seen = up
        .stats
        .last_request("/sse")
        .expect("the stream reached the app");
    assert_eq!(seen.header("referer"), Some("https://app.example/page?x=1"));
}

// ---------------------------------------------------------------------------------------------
// Session cookie exchange

/// `name=value` and the attributes of one `Set-Cookie` value.
fn parse_set_cookie(value: &str) -> (String, Vec<String>) {
    let mut parts = value.split(';').map(|p| p.trim().to_owned());
    let pair = parts.next().unwrap_or_default();
    (pair, parts.collect())
}

fn max_age(attrs: &[String]) -> u64 {
    attrs
        .iter()
        .find_map(|a| a.strip_prefix("Max-Age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Set-Cookie without a numeric Max-Age: {attrs:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn session_cookie_exchange_sets_a_hardened_cookie_that_authenticates_streams() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, CORS).await;
    // Lives 300 s, shorter than the default 15 m ttl: the cookie must not outlive it.
    let token = mint_token("alice", &["reader"], 300, Value::Null);

    let resp = send(
        proxy.addr,
        "POST",
        "/_streamguard/session",
        &[("Authorization", &bearer(&token)), ("Origin", APP_ORIGIN)],
    )
    .await;
    assert_eq!(resp.status, 204, "{resp:?}");
    let cookies = resp.header_all("set-cookie");
    assert_eq!(cookies.len(), 1, "{resp:?}");
    let (pair, attrs) = parse_set_cookie(cookies[0]);
    assert_eq!(pair, format!("streamguard_token={token}"));
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(attrs.iter().any(|a| a == attr), "missing {attr}: {attrs:?}");
    }
    let age = max_age(&attrs);
    assert!(
        (290..=300).contains(&age),
        "Max-Age {age} must be min(ttl, token lifetime left)"
    );
    assert_eq!(resp.header("access-control-allow-origin"), Some(APP_ORIGIN));

    // The cookie alone authenticates an EventSource(withCredentials) request.
    let mut sse = SseClient::connect(
        proxy.addr,
        "/sse?events=2&interval_ms=10&then=close",
        &[
            ("Cookie", &format!("theme=dark; streamguard_token={token}")),
            ("Origin", APP_ORIGIN),
        ],
    )
    .await;
    assert_eq!(sse.status, 200);
    for n in ["1", "2"] {
        let event = sse
            .read_event(IO_TIMEOUT)
            .await
            .expect("event through the cookie-authenticated stream");
        assert_eq!(event_field(&event, "id"), Some(n), "{event:?}");
    }
    let seen = up
        .stats
        .last_request("/sse")
        .expect("the stream reached the upstream");
    assert_eq!(seen.header("authorization"), Some(bearer(&token).as_str()));
    assert_eq!(
        seen.header("cookie"),
        Some("theme=dark"),
        "streamguard's cookie is removed"
    );
    assert_eq!(seen.header("x-streamguard-user"), Some("alice"));

    let resp = send(proxy.addr, "DELETE", "/_streamguard/session", &[]).await;
    assert_eq!(resp.status, 204, "{resp:?}");
    let (pair, attrs) = parse_set_cookie(resp.header("set-cookie").unwrap_or_default());
    assert_eq!(pair, "streamguard_token=");
    assert_eq!(max_age(&attrs), 0);

    let resp = send(proxy.addr, "POST", "/_streamguard/session", &[]).await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (401, UNAUTHORIZED_BODY)
    );
    assert_eq!(resp.header("set-cookie"), None);
    let forged = sign(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-of-sufficient-length"),
        &json!({ "sub": "mallory", "exp": unix_now() + 600 }),
    );
    let resp = send(
        proxy.addr,
        "POST",
        "/_streamguard/session",
        &[("Authorization", &bearer(&forged))],
    )
    .await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (401, UNAUTHORIZED_BODY)
    );
    assert_eq!(resp.header("set-cookie"), None);
    assert_eq!(up.stats.total(), 1, "only the stream reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn session_cookie_is_not_secure_when_configured_and_capped_by_the_ttl() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!("{CORS}[auth.session]\nsecure = false\nttl = \"60s\"\n"),
    )
    .await;
    let token = token_for("alice", &[]);
    let resp = send(
        proxy.addr,
        "POST",
        "/_streamguard/session",
        &[("Authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(resp.status, 204, "{resp:?}");
    let (_, attrs) = parse_set_cookie(resp.header("set-cookie").unwrap_or_default());
    assert!(
        !attrs.iter().any(|a| a.eq_ignore_ascii_case("Secure")),
        "{attrs:?}"
    );
    assert!(attrs.iter().any(|a| a == "HttpOnly"), "{attrs:?}");
    let age = max_age(&attrs);
    assert!(
        (55..=60).contains(&age),
        "Max-Age {age} must be capped by ttl = 60s"
    );
}

// ---------------------------------------------------------------------------------------------
// JWT verification

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_all_get_the_same_401_and_a_reasoned_security_log_line() {
    const ISS: &str = "https://issuer.test";
    const AUD: &str = "streamguard-tests";
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!("{CORS}[auth]\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\n"),
    )
    .await;
    let good_claims = json!({ "iss": ISS, "aud": AUD });
    let valid = mint_token("alice", &[], 600, good_claims.clone());
    let resp = get(
        proxy.addr,
        "/echo/valid",
        &[("Authorization", &bearer(&valid))],
    )
    .await;
    assert_eq!(
        resp.status, 200,
        "control: a correct token passes: {resp:?}"
    );

    let other_key =
        jsonwebtoken::EncodingKey::from_secret(b"not-the-proxy-secret-but-just-as-long-0123");
    let payload = valid.split('.').nth(1).expect("payload segment");
    let cases: Vec<(&str, String, &[&str])> = vec![
        // Past the 30 s default leeway.
        (
            "expired",
            mint_token("alice", &[], -120, good_claims.clone()),
            &["expired"],
        ),
        (
            "bad-signature",
            sign(
                jsonwebtoken::Algorithm::HS256,
                &other_key,
                &json!({ "sub": "alice", "exp": unix_now() + 600, "iss": ISS, "aud": AUD }),
            ),
            &["bad_signature"],
        ),
        (
            "wrong-aud",
            mint_token(
                "alice",
                &[],
                600,
                json!({ "iss": ISS, "aud": "someone-else" }),
            ),
            &["bad_audience"],
        ),
        (
            "wrong-iss",
            mint_token(
                "alice",
                &[],
                600,
                json!({ "iss": "https://evil.test", "aud": AUD }),
            ),
            &["bad_issuer"],
        ),
        (
            "alg-none",
            format!("{}.{payload}.", b64url(br#"{"alg":"none","typ":"JWT"}"#)),
            &["malformed", "bad_algorithm"],
        ),
        (
            "alg-none-signed",
            format!(
                "{}.{payload}.{}",
                b64url(br#"{"alg":"none","typ":"JWT"}"#),
                signature_of(&valid)
            ),
            &["malformed", "bad_algorithm"],
        ),
        // Validly signed, but asks for an extension streamguard does not implement.
        (
            "crit",
            hs256_with_header(
                r#"{"alg":"HS256","typ":"JWT","crit":["exp"],"exp":1}"#,
                &json!({ "sub": "alice", "exp": unix_now() + 600, "iss": ISS, "aud": AUD }),
            ),
            &["unsupported_crit"],
        ),
        // Validly signed, about 12 KB: over the default auth.max_token_size of 8 KiB.
        (
            "oversize",
            mint_token(
                "alice",
                &[],
                600,
                json!({ "iss": ISS, "aud": AUD, "pad": "x".repeat(9_000) }),
            ),
            &["too_large"],
        ),
    ];
    let mut bodies = Vec::new();
    for (case, token, _) in &cases {
        let resp = get(
            proxy.addr,
            &format!("/echo/{case}"),
            &[("Authorization", &bearer(token))],
        )
        .await;
        assert_eq!(resp.status, 401, "{case}: {resp:?}");
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"), "{case}");
        bodies.push(resp.text());
    }
    assert!(
        bodies.iter().all(|b| b == UNAUTHORIZED_BODY),
        "identical bodies: {bodies:?}"
    );
    assert_eq!(
        up.stats.hits("/echo"),
        1,
        "only the control request reached the upstream"
    );

    let failures = security_events(&proxy, "auth_failed");
    for (case, _, reasons) in &cases {
        let path = format!("/echo/{case}");
        let line = failures
            .iter()
            .find(|l| l["path"] == path.as_str())
            .unwrap_or_else(|| panic!("no auth_failed line for {case}: {failures:?}"));
        let reason = line["reason"].as_str().unwrap_or_default();
        assert!(
            reasons.contains(&reason),
            "{case}: reason {reason:?}, expected one of {reasons:?}"
        );
    }
    let logs = proxy.logs();
    for (case, token, _) in &cases {
        assert!(!logs.contains(token.as_str()), "{case} token in the logs");
        let sig = signature_of(token);
        assert!(
            sig.is_empty() || !logs.contains(sig),
            "{case} signature in the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hs256_signed_with_the_rsa_public_key_is_rejected_by_an_rs256_proxy() {
    let up = Upstream::start().await;
    let config = ProxyConfig::new(up.addr)
        .without("auth", "secret")
        .merge(CORS)
        .section(
            "auth",
            &format!(
                "algorithms = [\"RS256\"]\npublic_key_file = \"{}\"",
                fixture("rsa_public.pem")
            ),
        );
    let proxy = Proxy::start_with(config).await;
    let claims = json!({ "sub": "alice", "roles": [], "exp": unix_now() + 600 });

    let private = std::fs::read(fixture("rsa_private.pem")).expect("rsa private key fixture");
    let rs = sign(
        jsonwebtoken::Algorithm::RS256,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&private).expect("rsa key"),
        &claims,
    );
    let resp = get(
        proxy.addr,
        "/echo/rs256",
        &[("Authorization", &bearer(&rs))],
    )
    .await;
    assert_eq!(
        resp.status, 200,
        "control: a real RS256 token passes: {resp:?}"
    );

    // The classic confusion attack: the public key (which anyone has) used as an HMAC secret.
    let public = std::fs::read(fixture("rsa_public.pem")).expect("rsa public key fixture");
    let confused = sign(
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(&public),
        &claims,
    );
    let resp = get(
        proxy.addr,
        "/echo/confused",
        &[("Authorization", &bearer(&confused))],
    )
    .await;
    assert_eq!(resp.status, 401, "{resp:?}");
    assert_eq!(resp.text(), UNAUTHORIZED_BODY);
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    assert_eq!(up.stats.hits("/echo"), 1);

    let failures = security_events(&proxy, "auth_failed");
    let line = failures
        .iter()
        .find(|l| l["path"] == "/echo/confused")
        .unwrap_or_else(|| panic!("no auth_failed line: {failures:?}"));
    let reason = line["reason"].as_str().unwrap_or_default();
    assert!(
        ["bad_algorithm", "bad_signature"].contains(&reason),
        "reason {reason:?}"
    );
    assert!(!proxy.logs().contains(signature_of(&confused)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_whose_token_expires_beyond_any_clock_runs_without_a_deadline() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, CORS).await;
    // 1e19 s after the epoch: more than `SystemTime` and `Instant` can hold, still a valid
    // NumericDate. The stream must open and run with no close at expiry.
    let token = mint_token("alice", &[], 600, json!({ "exp": 1e19 }));

    let mut sse = SseClient::connect(
        proxy.addr,
        "/sse?events=3&interval_ms=50&then=close",
        &[("Authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(sse.status, 200);
    for n in ["1", "2", "3"] {
        let event = sse.read_event(IO_TIMEOUT).await.expect("event");
        assert_eq!(event_field(&event, "id"), Some(n), "{event:?}");
    }
    assert!(sse.wait_closed(IO_TIMEOUT).await, "then=close ends it");
    wait_access_lines(&proxy, 1).await;
    let line = &access_lines(&proxy)[0];
    assert_eq!(
        (line["user"].as_str(), line["close"].as_str()),
        (Some("alice"), Some("upstream_end")),
        "{line}"
    );
    let logs = proxy.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

// ---------------------------------------------------------------------------------------------
// Routes

const ROUTES: &str = r#"
[[route]]
path = "/echo/public"
auth = "off"

[[route]]
path = "/echo/admin"
roles = ["admin"]

[[route]]
path = "/echo/tenants/{tenant}/events"
claims = { tenant = "tenant_id" }

[[route]]
path = "/api/v1/events/admin"
roles = ["admin"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn routes_enforce_roles_tenants_and_public_paths() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, &format!("{CORS}{ROUTES}")).await;
    let reader = bearer(&token_for("rita", &["reader"]));
    let admin = bearer(&token_for("ada", &["reader", "admin"]));
    let tenant = |id: &str| bearer(&mint_token("tom", &[], 600, json!({ "tenant_id": id })));

    let resp = get(
        proxy.addr,
        "/echo/admin/stats",
        &[("Authorization", &reader)],
    )
    .await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (403, r#"{"error":"forbidden"}"#)
    );
    let resp = get(proxy.addr, "/echo/admin", &[]).await;
    assert_eq!(resp.status, 401, "a role-gated route without a token");
    let seen = echoed(
        &get(
            proxy.addr,
            "/echo/admin/stats",
            &[("Authorization", &admin)],
        )
        .await,
    );
    assert_eq!(seen["headers"]["x-streamguard-roles"], "reader,admin");

    let seen = echoed(
        &get(
            proxy.addr,
            "/echo/tenants/t1/events",
            &[("Authorization", &tenant("t1"))],
        )
        .await,
    );
    assert_eq!(seen["headers"]["x-streamguard-user"], "tom");
    let resp = get(
        proxy.addr,
        "/echo/tenants/t1/events",
        &[("Authorization", &tenant("t2"))],
    )
    .await;
    assert_eq!(resp.status, 403, "another tenant's events: {resp:?}");
    let resp = get(
        proxy.addr,
        "/echo/tenants/t1/events",
        &[("Authorization", &reader)],
    )
    .await;
    assert_eq!(
        resp.status, 403,
        "a token without the tenant claim: {resp:?}"
    );

    let seen = echoed(&get(proxy.addr, "/echo/public/page", &[]).await);
    assert_eq!(seen["headers"].get("x-streamguard-user"), None, "{seen}");
    let resp = get(proxy.addr, "/echo/private", &[]).await;
    assert_eq!(
        resp.status, 401,
        "paths outside auth=off routes still need a token"
    );

    assert_eq!(security_events(&proxy, "forbidden").len(), 3);
    assert_eq!(up.stats.hits("/echo"), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn path_traversal_is_a_400_never_a_route_bypass() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, &format!("{CORS}{ROUTES}")).await;
    let reader = bearer(&token_for("rita", &["reader"]));

    let attempts = [
        "/x/../api/v1/events/admin",
        "/x/%2e%2e/api/v1/events/admin",
        "/x/%2E%2E/api/v1/events/admin",
        "/api/v1/events/./admin",
        // A public prefix walked back into a protected one.
        "/echo/public/../admin",
        "/echo/public/%2e%2e/admin",
        "/echo/public%2F..%2Fadmin",
        "/echo/public/..%2Fadmin",
        "/echo//admin",
        "/echo/public/%252e%252e/admin",
    ];
    for path in attempts {
        let resp = get(proxy.addr, path, &[("Authorization", &reader)]).await;
        assert_eq!(resp.status, 400, "{path}: {resp:?}");
        assert_eq!(resp.text(), r#"{"error":"bad request"}"#, "{path}");
        // Without a token too: the public route must not be reachable through a traversal.
        let resp = get(proxy.addr, path, &[]).await;
        assert_eq!(resp.status, 400, "{path} without a token: {resp:?}");
    }
    assert_eq!(
        up.stats.total(),
        0,
        "no traversal attempt reached the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// Log hygiene

#[tokio::test(flavor = "multi_thread")]
async fn tokens_never_appear_in_any_log_line() {
    let up = Upstream::start().await;
    // streamguard's own debug records on too: even its most verbose lines must not carry a
    // token. (Pingora's debug records dump whole request heads, so they stay at info here.)
    let proxy = Proxy::start(
        up.addr,
        &format!("{CORS}{ROUTES}[log]\nlevel = \"info,streamguard=debug\"\n"),
    )
    .await;
    let other_key =
        jsonwebtoken::EncodingKey::from_secret(b"not-the-proxy-secret-but-just-as-long-0123");
    let tokens = [
        token_for("q1", &[]),
        token_for("q2", &[]),
        token_for("q3", &[]),
        token_for("h1", &[]),
        token_for("c1", &[]),
        mint_token("expired", &[], -300, Value::Null),
        sign(
            jsonwebtoken::Algorithm::HS256,
            &other_key,
            &json!({ "sub": "forger", "exp": unix_now() + 600 }),
        ),
        token_for("reader", &["reader"]),
        token_for("ws", &[]),
        token_for("cors", &[]),
        token_for("traversal", &[]),
        token_for("session", &[]),
        "opaque-not-a-jwt-but-still-secret-4711".to_owned(),
    ];
    let [q1, q2, q3, h1, c1, expired, forged, reader, ws, cors, traversal, session, opaque] =
        &tokens;

    let mut requests = 0;
    let mut expect = |resp: Response, status: u16, what: &str| {
        assert_eq!(resp.status, status, "{what}: {resp:?}");
        requests += 1;
    };
    expect(
        get(proxy.addr, &format!("/echo?token={q1}&x=1"), &[]).await,
        200,
        "query token",
    );
    expect(
        get(proxy.addr, &format!("/nope?access_token={q2}"), &[]).await,
        404,
        "query token, 404",
    );
    expect(
        get(proxy.addr, &format!("/echo?token={expired}"), &[]).await,
        401,
        "expired query token",
    );
    expect(
        get(proxy.addr, &format!("/echo?sse_token={forged}"), &[]).await,
        401,
        "forged query token",
    );
    expect(
        get(proxy.addr, &format!("/echo?token={opaque}"), &[]).await,
        401,
        "opaque query token",
    );
    expect(
        get(proxy.addr, "/echo", &[("Authorization", &bearer(h1))]).await,
        200,
        "header token",
    );
    expect(
        get(proxy.addr, "/echo", &[("Authorization", &bearer(expired))]).await,
        401,
        "expired header token",
    );
    expect(
        get(
            proxy.addr,
            "/echo",
            &[("Cookie", &format!("streamguard_token={c1}"))],
        )
        .await,
        200,
        "cookie token",
    );
    expect(
        get(
            proxy.addr,
            "/echo",
            &[("Cookie", &format!("streamguard_token={forged}"))],
        )
        .await,
        401,
        "forged cookie token",
    );
    expect(
        get(proxy.addr, &format!("/echo/admin?token={reader}"), &[]).await,
        403,
        "forbidden",
    );
    expect(
        get(
            proxy.addr,
            &format!("/echo?token={cors}"),
            &[("Origin", "https://evil.example")],
        )
        .await,
        403,
        "cors refusal",
    );
    expect(
        get(
            proxy.addr,
            &format!("/echo/public/../admin?token={traversal}"),
            &[],
        )
        .await,
        400,
        "traversal",
    );
    expect(
        send(
            proxy.addr,
            "POST",
            "/_streamguard/session",
            &[("Authorization", &bearer(session))],
        )
        .await,
        204,
        "session exchange",
    );
    expect(
        send(
            proxy.addr,
            "POST",
            "/_streamguard/session",
            &[("Authorization", &bearer(forged))],
        )
        .await,
        401,
        "forged session exchange",
    );

    let mut sse = SseClient::connect(
        proxy.addr,
        &format!("/sse?events=1&then=close&token={q3}"),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert!(sse.wait_closed(IO_TIMEOUT).await);
    let mut bad_sse = SseClient::connect(proxy.addr, &format!("/sse?token={expired}"), &[]).await;
    assert_eq!(bad_sse.status, 401);
    bad_sse.read_to_end(IO_TIMEOUT).await;
    let (mut socket, _) = ws_connect(proxy.addr, &format!("/ws?token={ws}"), &[])
        .await
        .expect("websocket with a query token");
    socket.send(Message::text("hi")).await.expect("send");
    assert_eq!(
        socket.next().await.expect("echo").expect("ok"),
        Message::text("hi")
    );
    socket.close(None).await.expect("close");
    drop(socket);
    requests += 3;

    wait_access_lines(&proxy, requests).await;
    let logs = proxy.logs();
    for token in &tokens {
        for needle in [token.as_str(), signature_of(token)] {
            if let Some(line) = logs.lines().find(|l| l.contains(needle)) {
                panic!("a token leaked into the logs: {line}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// The nanosecond stamp the upstream writes into `data: <n> <ns>`.
fn stamp(event: &str) -> u64 {
    event_data(event)
        .and_then(|d| d.split(' ').nth(1).and_then(|ns| ns.parse().ok()))
        .unwrap_or_else(|| panic!("event without a stamp: {event:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_events_are_relayed_without_buffering() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, CORS).await;
    let auth = bearer(&token_for("alice", &[]));

    let mut sse = SseClient::connect(
        proxy.addr,
        "/sse?events=20&interval_ms=50&then=close",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(sse.status, 200);
    let mut latencies = Vec::new();
    while latencies.len() < 20 {
        let (event, at) = sse
            .read_event_at(IO_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("stream ended after {} events", latencies.len()));
        if event_field(&event, "id").is_none() {
            continue; // a comment or retry hint
        }
        let sent = up.stats.instant_of(stamp(&event));
        latencies.push(at.saturating_duration_since(sent));
    }
    // A proxy that buffers holds an event until more arrive: at least one 50 ms interval.
    // Two slow events of twenty are left to a busy machine's scheduler.
    latencies.sort();
    let (p50, p90) = (latencies[10], latencies[17]);
    assert!(
        p50 < Duration::from_millis(15) && p90 < Duration::from_millis(50),
        "each event must leave the proxy as it arrives: p50 {p50:?}, p90 {p90:?}, all {latencies:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn quiet_streams_and_idle_websockets_survive_90_seconds() {
    const QUIET: Duration = Duration::from_secs(90);
    let up = Upstream::start().await;
    let proxy = Proxy::start(
        up.addr,
        &format!(
            "{CORS}[sse]\nheartbeat = \"0s\"\nstale_after = \"0s\"\n\
             [websocket]\nping_interval = \"0s\"\nidle_timeout = \"0s\"\n"
        ),
    )
    .await;
    let auth = bearer(&token_for("alice", &[]));
    let headers = [("Authorization", auth.as_str())];

    // A: one event, 90 s of silence, then a second event that must still arrive.
    let late_event = async {
        let mut sse =
            SseClient::connect(proxy.addr, "/sse?events=2&interval_ms=90000", &headers).await;
        assert_eq!(sse.status, 200);
        let (first, first_at) = sse.read_event_at(IO_TIMEOUT).await.expect("event 1");
        assert_eq!(event_field(&first, "id"), Some("1"));
        let (second, second_at) = sse
            .read_event_at(QUIET + Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("event 2 never came; stream ended: {}", sse.is_ended()));
        assert_eq!(event_field(&second, "id"), Some("2"));
        assert!(second_at - first_at >= QUIET - Duration::from_secs(1));
        sse
    };
    // B: one event, then silence: nothing may close it.
    let quiet_stream = async {
        let mut sse = SseClient::connect(proxy.addr, "/sse?events=1&then=quiet", &headers).await;
        assert_eq!(sse.status, 200);
        sse.read_event(IO_TIMEOUT).await.expect("event 1");
        let extra = sse.next_chunk(QUIET + Duration::from_secs(1)).await;
        assert!(
            extra.is_none(),
            "heartbeats are off, nothing should arrive: {extra:?}"
        );
        assert!(!sse.is_ended(), "a quiet stream was cut");
        sse
    };
    // C: a WebSocket with no traffic at all (pings off), then an echo.
    let idle_socket = async {
        let (mut socket, _) = ws_connect(proxy.addr, "/ws", &headers)
            .await
            .expect("handshake");
        socket.send(Message::text("before")).await.expect("send");
        assert_eq!(
            socket.next().await.expect("echo").expect("ok"),
            Message::text("before")
        );
        // The idle period is the behaviour under test, so this is a plain sleep.
        tokio::time::sleep(QUIET).await;
        socket
            .send(Message::text("after"))
            .await
            .expect("send after idling");
        let echo = tokio::time::timeout(IO_TIMEOUT, socket.next())
            .await
            .expect("echo in time");
        assert_eq!(
            echo.expect("socket open").expect("ok"),
            Message::text("after")
        );
        socket
    };
    let (_a, _b, _c) = tokio::join!(late_event, quiet_stream, idle_socket);

    let text = proxy.metrics().await;
    assert_eq!(
        metric(&text, "streamguard_streams_active", &[("kind", "sse")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(up.stats.open_streams(), 2);
    assert_eq!(up.stats.open_websockets(), 1);
}

// ---------------------------------------------------------------------------------------------
// Error hygiene

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_a_quick_502_with_a_fixed_body() {
    let dead = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let proxy = Proxy::start(dead, CORS).await;
    let auth = bearer(&token_for("alice", &[]));

    let started = Instant::now();
    let resp = get(proxy.addr, "/echo", &[("Authorization", &auth)]).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(resp.text(), r#"{"error":"bad gateway"}"#);

    let started = Instant::now();
    let mut sse = SseClient::connect(proxy.addr, "/sse", &[("Authorization", &auth)]).await;
    assert_eq!(sse.status, 502);
    assert_eq!(
        sse.read_to_end(IO_TIMEOUT).await,
        br#"{"error":"bad gateway"}"#
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_error_bodies_are_hidden_when_configured_and_passed_otherwise() {
    let up = Upstream::start().await;
    let auth = bearer(&token_for("alice", &[]));
    let headers = [("Authorization", auth.as_str())];

    let hiding = Proxy::start(up.addr, CORS).await;
    for target in ["/status/500", "/status/503"] {
        let resp = get(hiding.addr, target, &headers).await;
        assert_eq!(
            resp.status.to_string(),
            target["/status/".len()..],
            "{resp:?}"
        );
        assert_eq!(resp.text(), r#"{"error":"upstream error"}"#, "{target}");
    }
    // The same through the stream relay, which answers a non-stream reply itself.
    let mut sse = SseClient::connect(hiding.addr, "/sse?status=500", &headers).await;
    assert_eq!(sse.status, 500);
    assert_eq!(
        sse.read_to_end(IO_TIMEOUT).await,
        br#"{"error":"upstream error"}"#
    );
    // 4xx answers are the app's own business: a 404 passes through untouched.
    let resp = get(hiding.addr, "/nope", &headers).await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json(), json!({ "error": "no such endpoint" }));

    let passing = Proxy::start(
        up.addr,
        &format!("{CORS}[upstream]\nhide_error_bodies = false\n"),
    )
    .await;
    let resp = get(passing.addr, "/status/500", &headers).await;
    assert_eq!(resp.status, 500);
    assert!(
        resp.text().contains("secret detail"),
        "passed through when off: {}",
        resp.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn non_websocket_upgrade_is_refused() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, CORS).await;
    let auth = bearer(&token_for("alice", &[]));
    let resp = get(
        proxy.addr,
        "/echo",
        &[
            ("Authorization", &auth),
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
    )
    .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(resp.text(), r#"{"error":"unsupported upgrade"}"#);
    assert_eq!(up.stats.total(), 0);
}

// ---------------------------------------------------------------------------------------------
// streamguard check

fn check(config: &str, env: &[(&str, &str)], unset: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamguard"));
    cmd.arg("check").arg("-c").arg(Path::new(&path));
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let out = cmd.output().expect("running streamguard check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CHECK_BASE: &str =
    "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth]\nsecret = \"${SG_CORE_TEST_SECRET}\"\n";

#[test]
fn check_prints_the_effective_config_with_the_secret_redacted() {
    let config = format!("{CHECK_BASE}[cors]\nallowed_origins = [\"https://app.example\"]\n");
    let (code, stdout, stderr) = check(&config, &[("SG_CORE_TEST_SECRET", TEST_SECRET)], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("secret = \"<redacted>\""), "{stdout}");
    assert!(
        !stdout.contains(TEST_SECRET),
        "the secret itself is printed:\n{stdout}"
    );
    // Effective: the file's values and the defaults it left out.
    assert!(
        stdout.contains("allowed_origins = [\"https://app.example\"]"),
        "{stdout}"
    );
    assert!(stdout.contains("heartbeat = \"15s\""), "{stdout}");
}

#[test]
fn check_rejects_bad_configs_naming_the_key() {
    let env = [("SG_CORE_TEST_SECRET", TEST_SECRET)];
    let cases: [(&str, String, &[&str]); 4] = [
        (
            "unknown key",
            format!("{CHECK_BASE}[sse]\nheartbeet = \"5s\"\n"),
            &["heartbeet", "line 6"],
        ),
        (
            "bad duration",
            format!("{CHECK_BASE}[sse]\nheartbeat = \"5 fortnights\"\n"),
            &["sse.heartbeat", "5 fortnights"],
        ),
        (
            "wildcard origin",
            format!("{CHECK_BASE}[cors]\nallowed_origins = [\"*\"]\n"),
            &["cors.allowed_origins"],
        ),
        (
            "missing env var",
            CHECK_BASE.replace("SG_CORE_TEST_SECRET", "SG_CORE_TEST_UNSET_VAR"),
            &["auth.secret", "SG_CORE_TEST_UNSET_VAR"],
        ),
    ];
    for (what, config, needles) in cases {
        let (code, stdout, stderr) = check(&config, &env, &["SG_CORE_TEST_UNSET_VAR"]);
        assert_eq!(code, 2, "{what}: stdout {stdout}\nstderr {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{what}: {needle:?} not in:\n{stderr}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics and probes

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_outcomes_rejections_and_open_streams() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, &format!("{CORS}{ROUTES}")).await;
    let reader = bearer(&token_for("rita", &["reader"]));

    assert_eq!(
        get(proxy.addr, "/echo", &[("Authorization", &reader)])
            .await
            .status,
        200
    );
    assert_eq!(
        get(
            proxy.addr,
            "/echo",
            &[
                ("Authorization", &reader),
                ("Origin", "https://evil.example")
            ]
        )
        .await
        .status,
        403
    );
    assert_eq!(get(proxy.addr, "/echo", &[]).await.status, 401);
    assert_eq!(
        get(
            proxy.addr,
            "/echo",
            &[("Authorization", "Bearer not.a.token")]
        )
        .await
        .status,
        401
    );
    assert_eq!(
        get(proxy.addr, "/echo/admin", &[("Authorization", &reader)])
            .await
            .status,
        403
    );
    let preflight = send(
        proxy.addr,
        "OPTIONS",
        "/echo",
        &[
            ("Origin", APP_ORIGIN),
            ("Access-Control-Request-Method", "GET"),
        ],
    )
    .await;
    assert_eq!(preflight.status, 204);

    let text = wait_metrics(&proxy, "six requests", |t| {
        metric(t, "streamguard_requests_total", &[]) == Some(6.0)
    })
    .await;
    let requests = |outcome| metric(&text, "streamguard_requests_total", &[("outcome", outcome)]);
    assert_eq!(requests("proxied"), Some(1.0), "{text}");
    assert_eq!(requests("rejected"), Some(4.0), "{text}");
    assert_eq!(requests("local"), Some(1.0), "{text}");
    let rejections = |reason| metric(&text, "streamguard_rejections_total", &[("reason", reason)]);
    assert_eq!(rejections("cors"), Some(1.0), "{text}");
    assert_eq!(rejections("unauthenticated"), Some(2.0), "{text}");
    assert_eq!(rejections("forbidden"), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, "streamguard_rejections_total", &[]),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "streamguard_build_info", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "streamguard_streams_active", &[("kind", "sse")]),
        Some(0.0),
        "{text}"
    );

    let mut sse =
        SseClient::connect(proxy.addr, "/sse?events=1", &[("Authorization", &reader)]).await;
    assert_eq!(sse.status, 200);
    sse.read_event(IO_TIMEOUT).await.expect("event 1");
    wait_metrics(&proxy, "one open sse stream", |t| {
        metric(t, "streamguard_streams_active", &[("kind", "sse")]) == Some(1.0)
    })
    .await;
    drop(sse);
    let text = wait_metrics(&proxy, "the sse stream closed", |t| {
        metric(t, "streamguard_streams_active", &[("kind", "sse")]) == Some(0.0)
            && metric(t, "streamguard_requests_total", &[("outcome", "streamed")]) == Some(1.0)
    })
    .await;
    assert_eq!(
        metric(&text, "streamguard_requests_total", &[]),
        Some(7.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_follow_the_upstream() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(up.addr, CORS).await;
    assert_eq!(get(proxy.admin, "/livez", &[]).await.status, 200);
    assert_eq!(get(proxy.admin, "/readyz", &[]).await.status, 200);

    drop(up);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = get(proxy.admin, "/readyz", &[]).await.status;
        if status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} with the upstream gone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        get(proxy.admin, "/livez", &[]).await.status,
        200,
        "alive, just not ready"
    );
}

/// With `tls_cert_file`/`tls_key_file` the public listener speaks HTTPS (rustls), and the whole
/// pipeline runs behind it: a real TLS client (curl) gets through with a token and is refused
/// without one.
#[tokio::test(flavor = "multi_thread")]
async fn tls_listener_serves_the_pipeline_over_https() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certificate = Certificate::issue(dir.path(), "localhost");
    let up = Upstream::start().await;
    let config = ProxyConfig::new(up.addr).section("listen", &certificate.listen_keys());
    let proxy = Proxy::start_with(config).await;
    let token = mint_token("alice", &[], 600, json!({}));
    let url = format!("https://{}/echo?a=1", proxy.addr);
    let ca = certificate.cert.clone();
    let curl = move |auth: Option<String>| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--cacert"])
            .arg(&ca)
            .args(["-w", "\n%{http_code}"]);
        if let Some(auth) = auth {
            cmd.args(["-H", &auth]);
        }
        let out = cmd
            .arg(&url)
            .output()
            .expect("curl is needed for the TLS test (make test installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let authed = tokio::task::spawn_blocking({
        let curl = curl.clone();
        let bearer = format!("Authorization: Bearer {token}");
        move || curl(Some(bearer))
    })
    .await
    .expect("curl task");
    let (body, status) = authed.rsplit_once('\n').expect("status line");
    assert_eq!(status, "200", "{authed}");
    let echoed: Value = serde_json::from_str(body).expect("echo body");
    assert_eq!(echoed["target"], "/echo?a=1");
    assert_eq!(echoed["headers"]["x-streamguard-user"], "alice");

    let anonymous = tokio::task::spawn_blocking(move || curl(None))
        .await
        .expect("curl task");
    assert!(anonymous.ends_with("\n401"), "{anonymous}");
    assert!(
        anonymous.starts_with(r#"{"error":"unauthorized"}"#),
        "{anonymous}"
    );
}
