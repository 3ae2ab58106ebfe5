//! Regression tests for the bypass classes a hostile client found (issue 15): request-targets the
//! route check and the app read differently, identity headers a client could forge or have
//! removed, forwarding headers passed on from anyone, an app that never answers, and error
//! answers that leaked the app's internals. Each attack runs against the app server it bites
//! (Werkzeug, wsgiref, the demo upstream), through the real binary on real sockets.

mod common;

use std::time::{Duration, Instant};

use common::apps::{wsgi, Wsgi};
use common::*;
use serde_json::Value;

const BAD_REQUEST: &str = r#"{"error":"bad request"}"#;
const UPSTREAM_ERROR: &str = r#"{"error":"upstream error"}"#;

fn bearer(sub: &str, roles: &[&str]) -> String {
    format!("Bearer {}", mint_token(sub, roles, 600, Value::Null))
}

/// A raw request: `head` lines as given (no Host added), then a blank line.
async fn raw(proxy: &Proxy, lines: &[&str]) -> Response {
    let mut text = lines.join("\r\n");
    text.push_str("\r\n\r\n");
    http_request(proxy.addr, &text).await
}

/// What the WSGI app saw (its JSON echo); panics unless the request reached it.
fn app_saw(resp: &Response) -> Value {
    assert_eq!(
        resp.status,
        200,
        "expected the app's answer: {}",
        resp.text()
    );
    resp.json()
}

// ---------------------------------------------------------------------------------------------
// One request-target, checked and forwarded

#[tokio::test(flavor = "multi_thread")]
async fn a_target_is_routed_logged_and_forwarded_as_one_value() {
    let app = wsgi(Wsgi::Werkzeug).await;
    let proxy = Proxy::start_with(
        ProxyConfig::new(app.addr)
            .route("path = \"/api/v1/events/admin\"\nroles = [\"admin\"]")
            .route("path = \"/\"\nauth = \"optional\""),
    )
    .await;
    let host = format!("Host: {}", proxy.addr);
    let reader = format!("Authorization: {}", bearer("rita", &["reader"]));
    let admin = format!("Authorization: {}", bearer("ada", &["admin"]));

    // Werkzeug serves a target without a leading slash as that path; the proxy used to route it
    // as `/` (optional auth) and send the raw bytes on.
    for target in [
        "api/v1/events/admin",
        "api/v1/events/admin?token=leaked-secret",
    ] {
        let resp = raw(
            &proxy,
            &[
                &format!("GET {target} HTTP/1.1"),
                &host,
                &reader,
                "Connection: close",
            ],
        )
        .await;
        assert_eq!(resp.status, 400, "{target}: {}", resp.text());
        assert_eq!(resp.text(), BAD_REQUEST, "{target}");
    }

    // Absolute-form is reduced to origin-form: the route check sees the real path...
    let absolute = "GET http://app.internal/api/v1/events/admin?x=1 HTTP/1.1";
    let app_host = "Host: app.internal";
    let resp = raw(&proxy, &[absolute, app_host, &reader, "Connection: close"]).await;
    assert_eq!(
        resp.status,
        403,
        "a reader is not an admin: {}",
        resp.text()
    );
    // ... and the app gets what was checked, with the target's authority as Host.
    let resp = raw(&proxy, &[absolute, app_host, &admin, "Connection: close"]).await;
    let seen = app_saw(&resp);
    assert_eq!(seen["path"], "/api/v1/events/admin");
    assert_eq!(seen["raw_uri"], "/api/v1/events/admin?x=1");
    assert_eq!(seen["headers"]["HTTP_HOST"], "app.internal");

    // A Host that disagrees with the target's authority is ambiguous: refused.
    let resp = raw(&proxy, &[absolute, &host, &admin, "Connection: close"]).await;
    assert_eq!(resp.status, 400, "{}", resp.text());

    // A Host that disagrees with the target's authority is ambiguous: refused.
    let resp = raw(&proxy, &[absolute, &host, &admin, "Connection: close"]).await;
    assert_eq!(resp.status, 400, "{}", resp.text());

    // A query token in an absolute-form target is lifted like any other.
    let token = mint_token("ada", &["admin"], 600, Value::Null);
    let with_token = format!("GET http://app.internal/api/v1/events/admin?token={token} HTTP/1.1");
    let seen = app_saw(&raw(&proxy, &[&with_token, app_host, "Connection: close"]).await);
    assert_eq!(seen["raw_uri"], "/api/v1/events/admin");

    // `OPTIONS *` is the proxy's to answer.
    let resp = raw(&proxy, &["OPTIONS * HTTP/1.1", &host, "Connection: close"]).await;
    assert_eq!(resp.status, 204);
    assert!(resp.body.is_empty());

    // Host: exactly one, and valid.
    let no_host = raw(&proxy, &["GET / HTTP/1.1", "Connection: close"]).await;
    assert_eq!(no_host.status, 400, "no Host: {}", no_host.text());
    let two = raw(
        &proxy,
        &["GET / HTTP/1.1", &host, "Host: other", "Connection: close"],
    )
    .await;
    assert_eq!(two.status, 400, "two Hosts: {}", two.text());
    let userinfo = raw(
        &proxy,
        &["GET / HTTP/1.1", "Host: a@b", "Connection: close"],
    )
    .await;
    assert_eq!(
        userinfo.status,
        400,
        "userinfo in Host: {}",
        userinfo.text()
    );

    // The access log shows what was routed, and never a token, also for refused targets.
    let lines = proxy.wait_access_lines(4).await;
    let uris: Vec<&str> = lines.iter().filter_map(|l| l["uri"].as_str()).collect();
    assert!(uris.contains(&"/api/v1/events/admin?x=1"), "{uris:?}");
    assert!(!proxy.logs().contains("leaked-secret"), "{}", proxy.logs());
    assert!(!proxy.logs().contains(&token));
}

// ---------------------------------------------------------------------------------------------
// Identity headers cannot be forged or removed

#[tokio::test(flavor = "multi_thread")]
async fn identity_headers_cannot_be_forged_or_removed() {
    // wsgiref folds `_` and `-`: `X_Streamguard_User` arrives as HTTP_X_STREAMGUARD_USER.
    let app = wsgi(Wsgi::Wsgiref).await;
    let proxy =
        Proxy::start_with(ProxyConfig::new(app.addr).route("path = \"/\"\nauth = \"optional\""))
            .await;
    let alice = bearer("alice", &["reader"]);
    let ask = |headers: Vec<(&'static str, String)>| {
        let addr = proxy.addr;
        async move {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            get(addr, "/whoami", &pairs).await
        }
    };

    let anonymous = app_saw(&ask(vec![("X_Streamguard_User", "root".into())]).await);
    assert_eq!(
        anonymous["headers"].get("HTTP_X_STREAMGUARD_USER"),
        None,
        "{anonymous}"
    );
    let spoofs = vec![
        ("X_Streamguard_User", "root".to_owned()),
        ("x-streamguard-roles", "admin".to_owned()),
        ("Authorization", alice.clone()),
    ];
    let verified = app_saw(&ask(spoofs).await);
    assert_eq!(
        verified["headers"]["HTTP_X_STREAMGUARD_USER"], "alice",
        "{verified}"
    );
    assert_eq!(verified["headers"]["HTTP_X_STREAMGUARD_ROLES"], "reader");

    // A header with `_` is dropped by default: the app never sees a name the proxy did not.
    let underscored = app_saw(&ask(vec![("X_Tenant", "other".into())]).await);
    assert_eq!(underscored["headers"].get("HTTP_X_TENANT"), None);

    // `Connection` may not nominate what the proxy checked or adds.
    for nominated in [
        "X-Streamguard-User",
        "Authorization",
        "x_streamguard_user",
        "Cookie",
    ] {
        let resp = ask(vec![
            ("Connection", nominated.into()),
            ("Authorization", alice.clone()),
        ])
        .await;
        assert_eq!(resp.status, 400, "Connection: {nominated}: {}", resp.text());
        assert_eq!(resp.text(), BAD_REQUEST);
    }
    assert_eq!(proxy.security_events("bad_request").len(), 4);

    // The same on the stream path, against the demo upstream.
    let upstream = Upstream::start().await;
    let streams =
        Proxy::start_with(ProxyConfig::new(upstream.addr).section("auth", "mode = \"optional\""))
            .await;
    let mut sse = SseClient::connect(
        streams.addr,
        "/sse?events=1",
        &[
            ("Accept", "text/event-stream"),
            ("X_Streamguard_User", "root"),
            ("Authorization", &alice),
        ],
    )
    .await;
    assert!(sse.read_event(Duration::from_secs(5)).await.is_some());
    let seen = upstream
        .stats
        .last_request("/sse")
        .expect("the stream reached the app");
    let users: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(n, _)| n.replace('_', "-") == "x-streamguard-user")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(users, ["alice"], "{:?}", seen.headers);

    let refusing = Proxy::start_with(
        ProxyConfig::new(app.addr)
            .section("auth", "mode = \"off\"")
            .section("listen", "underscores_in_headers = \"refuse\""),
    )
    .await;
    let resp = get_via(&refusing, &[("X_Tenant", "other")]).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
}

async fn get_via(proxy: &Proxy, headers: &[(&str, &str)]) -> Response {
    get(proxy.addr, "/whoami", headers).await
}

// ---------------------------------------------------------------------------------------------
// Forwarding and hop-by-hop headers, the same on both paths

/// The headers the demo upstream recorded for the latest request to `path`.
fn upstream_headers(upstream: &Upstream, path: &str) -> Vec<(String, String)> {
    upstream
        .stats
        .last_request(path)
        .unwrap_or_else(|| panic!("{path} never reached the app"))
        .headers
}

fn value<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_follow_the_trusted_proxy_rules_on_both_paths() {
    let upstream = Upstream::start().await;
    let hostile: &[(&str, &str)] = &[
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "https"),
        ("Proxy-Authorization", "Basic c2VjcmV0"),
        ("Keep-Alive", "timeout=999"),
        ("TE", "trailers"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
    ];
    for (trusted, chain) in [(false, "127.0.0.1"), (true, "6.6.6.6, 127.0.0.1")] {
        let mut config = ProxyConfig::new(upstream.addr).section("auth", "mode = \"off\"");
        if trusted {
            config = config.section("limits", "trusted_proxies = [\"127.0.0.1/32\"]");
        }
        let proxy = Proxy::start_with(config).await;
        let plain = get(proxy.addr, "/echo", hostile).await;
        assert_eq!(plain.status, 200);
        let mut sse = SseClient::connect(
            proxy.addr,
            "/sse?events=1",
            &[hostile, &[("Accept", "text/event-stream")]].concat(),
        )
        .await;
        assert!(sse.read_event(Duration::from_secs(5)).await.is_some());
        for path in ["/echo", "/sse"] {
            let seen = upstream_headers(&upstream, path);
            let what = format!("{path}, trusted={trusted}: {seen:?}");
            assert_eq!(value(&seen, "x-forwarded-for"), [chain], "{what}");
            for hop in ["proxy-authorization", "keep-alive", "te", "x-hop"] {
                assert!(value(&seen, hop).is_empty(), "{hop} forwarded: {what}");
            }
            let from_client = ["x-real-ip", "forwarded", "x-forwarded-host"];
            for name in from_client {
                assert_eq!(value(&seen, name).is_empty(), !trusted, "{name}: {what}");
            }
            let proto = if trusted { "https" } else { "http" };
            assert_eq!(value(&seen, "x-forwarded-proto"), [proto], "{what}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// An app that never answers holds nothing forever

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_never_answers_gets_504_and_holds_no_slot() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(
        ProxyConfig::new(upstream.addr)
            .section("auth", "mode = \"off\"")
            .section("upstream", "response_timeout = \"1s\"")
            .section("limits", "max_streams_per_user = 1"),
    )
    .await;
    let sse = [("Accept", "text/event-stream")];
    for attempt in 0..3 {
        let started = Instant::now();
        let resp = get(proxy.addr, "/hang", &sse).await;
        assert_eq!(resp.status, 504, "attempt {attempt}: {}", resp.text());
        assert_eq!(resp.text(), r#"{"error":"gateway timeout"}"#);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    let plain = get(proxy.addr, "/hang", &[]).await;
    assert_eq!(plain.status, 504, "{}", plain.text());
    // Each abandoned attempt released its slot and its upstream connection.
    let released = wait_until(Duration::from_secs(5), || {
        upstream.stats.closed_by_client() >= 4
    })
    .await;
    assert!(
        released,
        "upstream closes seen: {}",
        upstream.stats.closed_by_client()
    );
    let mut ok = SseClient::connect(proxy.addr, "/sse?events=1", &sse).await;
    assert!(ok.read_event(Duration::from_secs(5)).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_while_the_app_is_silent_frees_everything_at_once() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(
        ProxyConfig::new(upstream.addr)
            .section("auth", "mode = \"off\"")
            .section("upstream", "response_timeout = \"60s\"")
            .section("limits", "max_streams_per_user = 1"),
    )
    .await;
    let sse = [("Accept", "text/event-stream")];
    for attempt in 0..2u64 {
        let mut conn = HttpConn::connect(proxy.addr).await.expect("connect");
        let head = request_head("GET", proxy.addr, "/hang", &[], &sse);
        let pending = tokio::time::timeout(Duration::from_millis(300), conn.send(head.as_bytes()));
        assert!(pending.await.is_err(), "the app never answers");
        let hits = upstream.stats.hits("/hang");
        assert_eq!(hits, attempt + 1);
        drop(conn);
        let released = wait_until(Duration::from_secs(2), || {
            upstream.stats.closed_by_client() > attempt
        })
        .await;
        assert!(
            released,
            "attempt {attempt}: the upstream connection was kept"
        );
    }
    // The user's one stream slot is free again (it was 429 after two abandoned attempts).
    let mut ok = SseClient::connect(proxy.addr, "/sse?events=1", &sse).await;
    assert!(ok.read_event(Duration::from_secs(5)).await.is_some());
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "streamguard_rejections_total",
            &[("reason", "user_streams")]
        ),
        None
    );
}

// ---------------------------------------------------------------------------------------------
// Error hygiene

fn assert_no_app_internals(resp: &Response, what: &str) {
    for name in ["server", "x-powered-by", "x-debug"] {
        assert_eq!(
            resp.header(name),
            None,
            "{what}: {name} leaked: {:?}",
            resp.headers
        );
    }
    assert!(
        resp.header_all("vary").iter().any(|v| v.contains("Origin")),
        "{what}: no Vary: Origin: {:?}",
        resp.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn error_answers_carry_nothing_of_the_app() {
    let app = wsgi(Wsgi::Werkzeug).await;
    let proxy =
        Proxy::start_with(ProxyConfig::new(app.addr).section("auth", "mode = \"off\"")).await;
    let ok = get(proxy.addr, "/anything", &[]).await;
    assert_eq!(ok.status, 200);
    assert_no_app_internals(&ok, "200");

    for target in ["/status/500", "/status/503", "/status/500?empty=1"] {
        let resp = get(proxy.addr, target, &[]).await;
        let status: u16 = target[8..11].parse().expect("status");
        assert_eq!(resp.status, status, "{target}");
        assert_eq!(resp.text(), UPSTREAM_ERROR, "{target}");
        assert_eq!(
            resp.header("content-length"),
            Some(UPSTREAM_ERROR.len().to_string().as_str()),
            "{target}: framed"
        );
        assert_eq!(resp.header("retry-after"), Some("7"), "{target}");
        assert_no_app_internals(&resp, target);
    }
    // The reason phrase is the standard one, not the app's.
    let mut conn = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let head = request_head(
        "GET",
        proxy.addr,
        "/status/500",
        &[("Connection", "close")],
        &[],
    );
    tokio::io::AsyncWriteExt::write_all(&mut conn, head.as_bytes())
        .await
        .expect("write");
    let mut wire = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut wire);
    tokio::time::timeout(IO_TIMEOUT, read)
        .await
        .expect("answer")
        .expect("read");
    let wire = String::from_utf8_lossy(&wire);
    assert!(
        wire.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
        "{wire}"
    );
    assert!(!wire.contains("secret"), "{wire}");

    let head_req = http_request(
        proxy.addr,
        &request_head(
            "HEAD",
            proxy.addr,
            "/status/500",
            &[("Connection", "close")],
            &[],
        ),
    )
    .await;
    assert_eq!(head_req.status, 500);
    assert!(head_req.body.is_empty());

    // The proxy's own refusals say nothing about Pingora.
    let refused = raw(
        &proxy,
        &["GET nope HTTP/1.1", &format!("Host: {}", proxy.addr)],
    )
    .await;
    assert_eq!(refused.status, 400);
    assert_no_app_internals(&refused, "own 400");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_request_answered_with_an_error_hides_it_too() {
    let upstream = Upstream::start().await;
    let proxy =
        Proxy::start_with(ProxyConfig::new(upstream.addr).section("auth", "mode = \"off\"")).await;
    let resp = get(
        proxy.addr,
        "/sse?status=503",
        &[("Accept", "text/event-stream")],
    )
    .await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.text(), UPSTREAM_ERROR);
    assert_no_app_internals(&resp, "stream 503");
}
