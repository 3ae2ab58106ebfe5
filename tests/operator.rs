//! The operator's view: the live status page on the admin listener, driven in a real headless
//! Chromium against a real proxy and upstream.

mod common;

use std::time::{Duration, Instant};

use common::chromium::Browser;
use common::*;
use serde_json::Value;

const ORIGIN: &str = "https://app.example";
const USER: &str = "alice-status-7f3";

/// JavaScript: the text of element `id`.
fn text_of(id: &str) -> String {
    format!("document.getElementById('{id}').textContent")
}

async fn status_watchers(proxy: &Proxy) -> Option<f64> {
    metric(&proxy.metrics().await, "streamguard_status_watchers", &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_follows_streams_and_rejections_live_and_lets_go_when_closed() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(
        ProxyConfig::new(upstream.addr)
            .section("cors", &format!("allowed_origins = [\"{ORIGIN}\"]")),
    )
    .await;
    let mut browser = Browser::start(&[]).await;
    let page = browser.open(&format!("http://{}/", proxy.admin)).await;
    let serving = format!("{} === 'serving'", text_of("state"));
    browser
        .wait_for(&page, &serving, Duration::from_secs(10))
        .await
        .unwrap_or_else(|v| panic!("the page never connected: state {v}"));

    let token = mint_token(USER, &["reader"], 600, Value::Null);
    let auth = format!("Bearer {token}");
    let sse_headers = [
        ("Accept", "text/event-stream"),
        ("Authorization", auth.as_str()),
    ];
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut sse =
            SseClient::connect(proxy.addr, "/sse?events=1&then=quiet", &sse_headers).await;
        assert!(sse.read_event(Duration::from_secs(5)).await.is_some());
        streams.push(sse);
    }
    let (ws, _) = ws_connect(proxy.addr, "/ws", &[("Authorization", auth.as_str())])
        .await
        .unwrap_or_else(|e| panic!("websocket: {e}"));
    assert_eq!(
        get(proxy.addr, "/echo", &[("Origin", "https://evil.example")])
            .await
            .status,
        403
    );
    assert_eq!(get(proxy.addr, "/echo", &[]).await.status, 401);
    let created = Instant::now();

    let shown = format!(
        "{} === '2' && {} === '1' && ['cors', 'unauthenticated'].every(r => {}.includes(r))",
        text_of("t-sse"),
        text_of("t-ws"),
        text_of("rejections")
    );
    if let Err(last) = browser
        .wait_for(&page, &shown, Duration::from_secs(2))
        .await
    {
        let html = browser.eval(&page, "document.body.innerText").await;
        panic!("not shown within 2 s ({last}):\n{html}");
    }
    assert!(
        created.elapsed() <= Duration::from_millis(2500),
        "{:?}",
        created.elapsed()
    );
    let route = format!("{}.includes('sse')", text_of("routes"));
    assert_eq!(browser.eval(&page, &route).await, Value::Bool(true));

    // A refused reload shows beside the configuration's hash.
    let mut broken = std::fs::read_to_string(proxy.config_path()).expect("config");
    broken.push_str("\n[sse]\nheartbeat = \"often\"\n");
    proxy.rewrite_config_text(&broken);
    assert_eq!(proxy.post_admin("/reload").await.status, 400);
    let refused = format!("{}.includes('1 refused reloads')", text_of("config"));
    if let Err(last) = browser
        .wait_for(&page, &refused, Duration::from_secs(3))
        .await
    {
        let shown = browser.eval(&page, &text_of("config")).await;
        panic!("the refused reload is not shown ({last}): {shown}");
    }

    // With show_users off, nothing on the page names a user or carries a token.
    let html = browser
        .eval(&page, "document.documentElement.outerHTML")
        .await;
    let html = html.as_str().unwrap_or_default();
    assert!(!html.contains(USER) && !html.contains(&token), "{html}");
    let snapshot = get(proxy.admin, "/status.json", &[]).await;
    assert!(!snapshot.text().contains(USER), "{}", snapshot.text());
    assert!(snapshot.json().get("top_users").is_none());

    // Closing the page ends its event stream on the proxy.
    assert_eq!(status_watchers(&proxy).await, Some(1.0));
    browser.close(page).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_watchers(&proxy).await != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "the status stream outlived its page"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((streams, ws));
}

#[tokio::test(flavor = "multi_thread")]
async fn show_users_lists_the_heaviest_stream_holders() {
    let upstream = Upstream::start().await;
    let proxy =
        Proxy::start_with(ProxyConfig::new(upstream.addr).section("admin", "show_users = true"))
            .await;
    let auth = format!("Bearer {}", mint_token(USER, &[], 600, Value::Null));
    let headers = [
        ("Accept", "text/event-stream"),
        ("Authorization", auth.as_str()),
    ];
    let mut sse = SseClient::connect(proxy.addr, "/sse?events=1&then=quiet", &headers).await;
    assert!(sse.read_event(Duration::from_secs(5)).await.is_some());
    let snapshot = get(proxy.admin, "/status.json", &[]).await.json();
    assert_eq!(snapshot["top_users"][0]["key"], format!("user:{USER}"));
    assert_eq!(snapshot["top_users"][0]["streams"], 1);

    let mut browser = Browser::start(&[]).await;
    let page = browser.open(&format!("http://{}/", proxy.admin)).await;
    let listed = format!("{}.includes('{USER}')", text_of("users"));
    browser
        .wait_for(&page, &listed, Duration::from_secs(10))
        .await
        .unwrap_or_else(|v| panic!("user not listed: {v}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_and_stream_exist_only_on_the_admin_listener() {
    let upstream = Upstream::start().await;
    let proxy =
        Proxy::start_with(ProxyConfig::new(upstream.addr).section("auth", "mode = \"off\"")).await;
    // On the public port these paths are the app's (its answers, whatever they are), never the
    // proxy's status.
    for path in ["/status/events", "/status.json"] {
        let resp = get(proxy.addr, path, &[]).await;
        assert!(
            !resp.text().contains("streamguard_"),
            "{path}: {}",
            resp.text()
        );
        assert_ne!(
            resp.header("content-type"),
            Some("text/event-stream"),
            "{path}"
        );
        assert_eq!(upstream.stats.hits(path), 1, "{path} reached the app");
    }
    let public_root = get(proxy.addr, "/", &[]).await;
    assert!(!public_root.text().contains("streamguard status"));
    let admin_root = get(proxy.admin, "/", &[]).await;
    assert_eq!(admin_root.status, 200);
    assert!(admin_root
        .text()
        .contains("<title>streamguard status</title>"));
    let csp = admin_root
        .header("content-security-policy")
        .unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    // Nothing on the page comes from another origin: it works offline.
    for external in ["src=", "href=", "@import", "url("] {
        assert!(
            !admin_root.text().contains(external),
            "{external} in the page"
        );
    }
}
