//! The real `streamguard` binary as a child process: a config written from a builder, logs
//! captured to files, readiness taken from `/livez`, and the process killed on drop so a failing
//! test never leaves a proxy behind.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::http::{get, request_head, try_http_request};
use super::{free_port, TEST_SECRET};

const READY_DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);
/// A port picked by `free_port` can be taken by someone else before the proxy binds it.
const START_ATTEMPTS: usize = 3;

/// A `proxy.toml` under construction. TOML forbids defining a table twice, so fragments are
/// parsed and merged into one document rather than concatenated.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    doc: toml::Table,
}

impl ProxyConfig {
    /// Fresh listen and admin ports on 127.0.0.1, JSON logs, and an HMAC secret that
    /// [`super::mint_token`] signs with. Auth mode and everything else keep the proxy's defaults.
    pub fn new(upstream: SocketAddr) -> Self {
        let base = format!(
            "[listen]\naddress = \"127.0.0.1:{}\"\n\
             [admin]\naddress = \"127.0.0.1:{}\"\n\
             [upstream]\naddress = \"{upstream}\"\n\
             [log]\nformat = \"json\"\n\
             [auth]\nsecret = \"{TEST_SECRET}\"\n",
            free_port(),
            free_port(),
        );
        Self { doc: parse(&base) }
    }

    /// Merges `body` (the lines that would follow `[name]`) into table `name`; later keys win.
    pub fn section(mut self, name: &str, body: &str) -> Self {
        let mut fragment = toml::Table::new();
        fragment.insert(name.to_owned(), toml::Value::Table(parse(body)));
        merge(&mut self.doc, fragment);
        self
    }

    /// Appends a `[[route]]` whose body is `body` (e.g. `path = "/sse"` and inline tables).
    pub fn route(self, body: &str) -> Self {
        self.merge(&format!("[[route]]\n{body}"))
    }

    /// Merges a whole TOML document: tables merge key by key, `[[route]]`s are appended.
    pub fn merge(mut self, fragment: &str) -> Self {
        merge(&mut self.doc, parse(fragment));
        self
    }

    pub fn render(&self) -> String {
        toml::to_string(&self.doc).unwrap_or_else(|e| panic!("config does not serialize: {e}"))
    }

    pub fn listen(&self) -> SocketAddr {
        self.address_of("listen")
    }

    pub fn admin(&self) -> SocketAddr {
        self.address_of("admin")
    }

    fn address_of(&self, table: &str) -> SocketAddr {
        self.doc
            .get(table)
            .and_then(|t| t.get("address"))
            .and_then(toml::Value::as_str)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("config has no valid [{table}] address:\n{}", self.render()))
    }

    /// The listen and admin addresses of a running `proxy`: a config to reload it with.
    pub fn with_ports_of(self, proxy: &Proxy) -> Self {
        self.section("listen", &format!("address = \"{}\"", proxy.addr))
            .section("admin", &format!("address = \"{}\"", proxy.admin))
    }

    fn with_fresh_ports(self) -> Self {
        self.section(
            "listen",
            &format!("address = \"127.0.0.1:{}\"", free_port()),
        )
        .section("admin", &format!("address = \"127.0.0.1:{}\"", free_port()))
    }
}

fn parse(fragment: &str) -> toml::Table {
    fragment
        .parse()
        .unwrap_or_else(|e| panic!("test config fragment is not TOML ({e}):\n{fragment}"))
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(more)) => merge(existing, more),
            (Some(toml::Value::Array(existing)), toml::Value::Array(more)) if key == "route" => {
                existing.extend(more)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Why a start attempt failed, with what the proxy printed.
struct StartFailure {
    reason: String,
    logs: String,
}

/// A running proxy; killed on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    config_path: PathBuf,
    // Last, so the files outlive the child (fields drop in order after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl Proxy {
    /// The default [`ProxyConfig`] with `extra_toml` merged in.
    pub async fn start(upstream: SocketAddr, extra_toml: &str) -> Self {
        Self::start_with(ProxyConfig::new(upstream).merge(extra_toml)).await
    }

    /// Runs `streamguard run -c <config>` and waits until `/livez` answers 200; panics with
    /// the proxy's output if it does not within 20 s.
    pub async fn start_with(mut config: ProxyConfig) -> Self {
        let mut attempt = 1;
        loop {
            match Self::try_start(&config).await {
                Ok(proxy) => return proxy,
                Err(f) if attempt < START_ATTEMPTS && f.logs.contains("in use") => {
                    attempt += 1;
                    config = config.with_fresh_ports();
                }
                Err(f) => panic!(
                    "streamguard did not become ready: {}\n--- config ---\n{}\n--- output ---\n{}",
                    f.reason,
                    config.render(),
                    f.logs
                ),
            }
        }
    }

    async fn try_start(config: &ProxyConfig) -> Result<Self, StartFailure> {
        let fail = |reason: String| StartFailure {
            reason,
            logs: String::new(),
        };
        let dir = tempfile::tempdir().map_err(|e| fail(format!("temp dir: {e}")))?;
        let config_path = dir.path().join("proxy.toml");
        std::fs::write(&config_path, config.render())
            .map_err(|e| fail(format!("write config: {e}")))?;
        let stdout = File::create(dir.path().join("stdout.log"))
            .map_err(|e| fail(format!("log file: {e}")))?;
        let stderr = File::create(dir.path().join("stderr.log"))
            .map_err(|e| fail(format!("log file: {e}")))?;
        let child = Command::new(env!("CARGO_BIN_EXE_streamguard"))
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| fail(format!("spawn: {e}")))?;
        let mut proxy = Proxy {
            addr: config.listen(),
            admin: config.admin(),
            child,
            config_path,
            dir,
        };
        match proxy.wait_ready().await {
            Ok(()) => Ok(proxy),
            Err(reason) => Err(StartFailure {
                reason,
                logs: proxy.logs(),
            }),
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        let probe = request_head("GET", self.admin, "/livez", &[("Connection", "close")], &[]);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status} before /livez answered"));
            }
            // Pingora opens the admin and proxy listeners separately: both must accept, and a
            // port another process holds makes Pingora retry the bind in the background while
            // /livez already answers, so its "in use" log line means "not ours".
            if let Ok(resp) = try_http_request(self.admin, &probe).await {
                if resp.status == 200 && tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                    if self.logs().contains("in use") {
                        return Err("a listen port is in use by another process".to_string());
                    }
                    // That connection counts (and holds a per-address slot) until the proxy
                    // has seen it end: a test starts once it has.
                    let active = "streamguard_connections_active";
                    while metric(&self.metrics().await, active, &[]).unwrap_or(0.0) > 0.0 {
                        if Instant::now() >= deadline {
                            return Err("the readiness probe's connection never ended".into());
                        }
                        tokio::time::sleep(POLL).await;
                    }
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "/livez on {} not 200 within {READY_DEADLINE:?}",
                    self.admin
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Everything the proxy wrote so far: stdout, then stderr.
    pub fn logs(&self) -> String {
        ["stdout.log", "stderr.log"]
            .iter()
            .filter_map(|name| std::fs::read_to_string(self.dir.path().join(name)).ok())
            .collect::<Vec<_>>()
            .join("")
    }

    /// The log lines that are JSON objects (the `format = "json"` records).
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(serde_json::Value::is_object)
            .collect()
    }

    /// The access-log records (`streamguard::access`), in the order written.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        self.json_logs()
            .into_iter()
            .filter(|l| l["target"] == "streamguard::access")
            .collect()
    }

    /// The security-log records of `event` (`auth_failed`, `bad_request`, ...).
    pub fn security_events(&self, event: &str) -> Vec<serde_json::Value> {
        self.json_logs()
            .into_iter()
            .filter(|l| l["target"] == "streamguard::security" && l["event"] == event)
            .collect()
    }

    /// Waits (at most 5 s) until `n` access lines are written: Pingora writes a request's line
    /// after its response went out, so a client can be faster than the log.
    pub async fn wait_access_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.access_lines();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} access lines, got {}:\n{}",
                lines.len(),
                self.logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The admin `/metrics` text; panics unless it answers 200.
    pub async fn metrics(&self) -> String {
        let resp = get(self.admin, "/metrics", &[]).await;
        assert_eq!(resp.status, 200, "GET /metrics: {}", resp.text());
        resp.text()
    }

    /// Sends SIGTERM.
    pub fn signal_term(&self) {
        self.signal("TERM");
    }

    /// Sends signal `name` (`HUP`, `TERM`...) through `kill(1)` (keeps the harness free of
    /// unsafe FFI).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill: {e}"));
        assert!(
            status.success(),
            "kill -{name} {} failed: {status}",
            self.pid()
        );
    }

    /// Replaces the config file with `config` the way an editor or a ConfigMap update does:
    /// written beside it, then renamed over it, so the proxy never reads half a file.
    pub fn rewrite_config(&self, config: &ProxyConfig) {
        self.rewrite_config_text(&config.render());
    }

    /// [`Self::rewrite_config`] with the file's text as given (which may not be valid).
    pub fn rewrite_config_text(&self, text: &str) {
        let next = self.dir.path().join("proxy.toml.next");
        std::fs::write(&next, text).unwrap_or_else(|e| panic!("writing the config: {e}"));
        std::fs::rename(&next, &self.config_path)
            .unwrap_or_else(|e| panic!("replacing the config: {e}"));
    }

    /// `POST path` on the admin listener, from loopback.
    pub async fn post_admin(&self, path: &str) -> super::http::Response {
        let raw = request_head("POST", self.admin, path, &[("Content-Length", "0")], &[]);
        super::http::http_request(self.admin, &raw).await
    }

    /// The exit status if the process ends within `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(None) => return None,
                Err(e) => panic!("waiting for streamguard: {e}"),
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Already-exited children make these fail; that is fine.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- streamguard output ({}) ---\n{}",
                self.config_path.display(),
                self.logs()
            );
        }
    }
}

/// The sum of all samples of `name` whose labels include every `(label, value)` given;
/// `None` if no sample matches. Summing lets `&[]` total a labelled counter.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(parse_sample)
        .filter(|(n, sample_labels, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| sample_labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|(_, _, value)| value)
        .reduce(|a, b| a + b)
}

type Sample = (String, Vec<(String, String)>, f64);

/// `name{a="x",b="y\"z"} 1.5 [timestamp]` → parts.
fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, rest) = line.split_at(name_end);
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(inner) => parse_labels(inner)?,
        None => (Vec::new(), rest),
    };
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name.to_owned(), labels, value))
}

/// Labels after the `{`, and what follows the closing `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, quoted) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i + 1,
                '\\' => value.push(match chars.next()?.1 {
                    'n' => '\n',
                    other => other,
                }),
                other => value.push(other),
            }
        };
        labels.push((key.trim().to_owned(), value));
        s = &quoted[end..];
    }
}

impl ProxyConfig {
    /// Removes `key` from table `table`, e.g. the default `[auth] secret` for a proxy that
    /// verifies tokens with a public key instead (the config allows exactly one key source).
    pub fn without(mut self, table: &str, key: &str) -> Self {
        if let Some(toml::Value::Table(t)) = self.doc.get_mut(table) {
            t.remove(key);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP streams open\n# TYPE streamguard_streams gauge\n\
        streamguard_streams{kind=\"sse\",route=\"/a,b\"} 2\n\
        streamguard_streams{kind=\"ws\",route=\"/q\\\"x\"} 3\n\
        streamguard_up 1\n\
        streamguard_latency_bucket{le=\"+Inf\"} 7 1700000000\n";

    #[test]
    fn metric_matches_label_subsets_and_sums() {
        assert_eq!(
            metric(METRICS, "streamguard_streams", &[("kind", "sse")]),
            Some(2.0)
        );
        assert_eq!(
            metric(METRICS, "streamguard_streams", &[("route", "/q\"x")]),
            Some(3.0)
        );
        assert_eq!(metric(METRICS, "streamguard_streams", &[]), Some(5.0));
        assert_eq!(metric(METRICS, "streamguard_up", &[]), Some(1.0));
        assert_eq!(
            metric(METRICS, "streamguard_latency_bucket", &[("le", "+Inf")]),
            Some(7.0)
        );
        assert_eq!(
            metric(METRICS, "streamguard_streams", &[("kind", "h2")]),
            None
        );
        assert_eq!(metric(METRICS, "streamguard_stream", &[]), None);
    }

    #[test]
    fn config_builder_renders_each_table_once() {
        let upstream: SocketAddr = "127.0.0.1:9000".parse().expect("addr");
        let config = ProxyConfig::new(upstream)
            .section("auth", "mode = \"required\"")
            .section("cors", "allowed_origins = [\"https://a.example\"]")
            .route("path = \"/sse\"\nsse = { heartbeat = \"1s\" }")
            .merge("[auth]\nleeway = \"0s\"\n[[route]]\npath = \"/ws\"\n[cors]\nallowed_origins = [\"https://b.example\"]");
        let text = config.render();
        let doc: toml::Table = text.parse().expect("rendered config is valid TOML");
        assert_eq!(text.matches("[auth]").count(), 1, "{text}");
        assert_eq!(doc["auth"]["secret"].as_str(), Some(TEST_SECRET));
        assert_eq!(doc["auth"]["mode"].as_str(), Some("required"));
        assert_eq!(doc["auth"]["leeway"].as_str(), Some("0s"));
        assert_eq!(
            doc["cors"]["allowed_origins"][0].as_str(),
            Some("https://b.example")
        );
        let routes = doc["route"].as_array().expect("routes");
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0]["sse"]["heartbeat"].as_str(), Some("1s"));
        assert_eq!(doc["upstream"]["address"].as_str(), Some("127.0.0.1:9000"));
        assert_ne!(config.listen(), config.admin());
    }
}
