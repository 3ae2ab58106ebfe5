//! The Node `ws` app of `tests/apps/node/` as a child process: a real third-party WebSocket
//! server with permessage-deflate on, which reads what follows an upgrade head as frames and
//! inflates whatever it is sent. The WebSocket defences are tested against it because it is the
//! kind of app they protect; the in-process demo upstream parses frames the proxy's way.
//!
//! The app reports what reached it on `GET /stats` ([`NodeStats`]). Started per test on a free
//! port, readiness polled to a deadline, killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::apps::ChildServer;
use super::free_port;
use super::http::{request_head, try_http_request};

const POLL: Duration = Duration::from_millis(50);
const SETUP: &str = "run `make test-deps` (it installs nodejs and npm, then runs `npm ci` in \
                     tests/apps/node)";

/// One upgrade request as the app saw it.
#[derive(Debug, Clone, Deserialize)]
pub struct Handshake {
    pub path: String,
    /// Its `Sec-WebSocket-Extensions` offer, if any.
    pub extensions: Option<String>,
    /// Bytes that came with the request head, which `ws` parses as the first frames.
    pub early: u64,
}

/// What the app has received so far.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub handshakes: Vec<Handshake>,
    /// WebSockets open now.
    pub open: i64,
    /// Whole messages received (after reassembly and inflation).
    pub messages: u64,
    /// The largest message received, in bytes after inflation.
    pub largest_message: u64,
    pub pings: u64,
    /// Close codes the app got from its peer (1005/1006 when none came).
    pub close_codes: Vec<u16>,
    /// Errors `ws` reported (e.g. `WS_ERR_INVALID_CLOSE_CODE`).
    pub errors: Vec<String>,
}

/// The running app; killed on drop.
pub struct NodeApp {
    pub addr: SocketAddr,
    _server: ChildServer,
}

fn app_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps/node")
}

impl NodeApp {
    /// Starts `node server.js PORT` and waits until it listens. Panics, saying how to set up,
    /// when `node` or the app's `node_modules` is missing.
    pub async fn start() -> NodeApp {
        let dir = app_dir();
        let node = Command::new("node")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            node.is_ok_and(|s| s.success()),
            "`node` is not installed; {SETUP}"
        );
        assert!(
            dir.join("node_modules/ws/package.json").is_file(),
            "{} has no node_modules/ws; {SETUP}",
            dir.display()
        );
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("server.js"))
            .arg(port.to_string())
            .current_dir(&dir);
        let server = ChildServer::start("the Node ws app", cmd, port).await;
        NodeApp {
            addr: server.addr,
            _server: server,
        }
    }

    async fn try_stats(&self) -> Option<NodeStats> {
        let head = request_head("GET", self.addr, "/stats", &[("Connection", "close")], &[]);
        let resp = try_http_request(self.addr, &head).await.ok()?;
        (resp.status == 200).then(|| {
            serde_json::from_value(resp.json())
                .unwrap_or_else(|e| panic!("the Node app's /stats is not NodeStats: {e}"))
        })
    }

    /// What the app has received so far.
    pub async fn stats(&self) -> NodeStats {
        self.try_stats()
            .await
            .unwrap_or_else(|| panic!("the Node app on {} did not answer /stats", self.addr))
    }

    /// Polls `/stats` until `cond` holds or `timeout` passes; returns the last stats either way.
    pub async fn stats_when(
        &self,
        timeout: Duration,
        cond: impl Fn(&NodeStats) -> bool,
    ) -> NodeStats {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats().await;
            if cond(&stats) || Instant::now() >= deadline {
                return stats;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
