//! A real headless Chromium driven over the DevTools protocol: just enough of it to open pages,
//! evaluate JavaScript in them and close them. Debian's `chromium` package, installed by
//! `make test-deps`; the flags are the ones this closed-network machine needs (no background
//! networking, no component updates), and each browser gets a fresh profile directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const START_DEADLINE: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Where Debian puts the browser.
pub fn chromium_path() -> PathBuf {
    PathBuf::from(std::env::var_os("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()))
}

/// A headless Chromium; killed on drop.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// One open tab.
pub struct Page {
    pub target_id: String,
    session_id: String,
}

impl Browser {
    /// Starts Chromium with `extra_args` (e.g. `--ignore-certificate-errors-spki-list=...`).
    pub async fn start(extra_args: &[&str]) -> Browser {
        let path = chromium_path();
        assert!(
            path.exists(),
            "{} not found: run `make test-deps` (installs Debian's chromium)",
            path.display()
        );
        let profile = tempfile::tempdir().unwrap_or_else(|e| panic!("profile dir: {e}"));
        let child = Command::new(&path)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra_args)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        // Chromium writes the port it picked, and the browser's endpoint, into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + START_DEADLINE;
        let endpoint = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break format!("ws://127.0.0.1:{port}{path}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not start its DevTools endpoint"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(&endpoint)
            .await
            .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"));
        Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
        }
    }

    /// Sends one DevTools command (on `session` when given) and returns its result.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let reply = tokio::time::timeout(CALL_TIMEOUT, async {
            while let Some(frame) = self.ws.next().await {
                let Ok(Message::Text(text)) = frame else {
                    continue;
                };
                let reply: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if reply["id"] == json!(id) {
                    return reply;
                }
            }
            panic!("DevTools connection closed during {method}");
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no reply within {CALL_TIMEOUT:?}"));
        assert!(reply.get("error").is_none(), "{method} failed: {reply}");
        reply["result"].clone()
    }

    /// Opens `url` in a new tab.
    pub async fn open(&mut self, url: &str) -> Page {
        let created = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let target_id = created["targetId"].as_str().unwrap_or_default().to_owned();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        let session_id = attached["sessionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Page {
            target_id,
            session_id,
        }
    }

    /// Evaluates `expression` in `page` and returns its value (promises are awaited).
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let result = self
            .call(
                Some(&page.session_id),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Polls `expression` in `page` every 100 ms until it is `true`; the last value otherwise.
    pub async fn wait_for(
        &mut self,
        page: &Page,
        expression: &str,
        timeout: Duration,
    ) -> Result<(), Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(page, expression).await;
            if value == json!(true) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(value);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn close(&mut self, page: Page) {
        self.call(
            None,
            "Target.closeTarget",
            json!({ "targetId": page.target_id }),
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
