//! A real `redis-server` (Debian package `redis-server`) as a child process: no TCP port, a
//! unix socket in a temp dir, no persistence. Killed on drop; can be killed, restarted empty on
//! the same socket, paused (SIGSTOP) and resumed, to play a dead or a stalled Redis.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_DEADLINE: Duration = Duration::from_secs(10);

pub struct RedisServer {
    child: Option<Child>,
    socket: PathBuf,
    paused: bool,
    /// Arguments beyond the plain unix-socket server's (TLS, a password).
    extra: Vec<String>,
    password: Option<String>,
    tls_port: Option<u16>,
    // Last, so the socket's directory outlives the child.
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(Vec::new(), None, None)
    }

    /// Also serving TLS on a loopback port with `cert`, and requiring `password` on every
    /// connection. The unix socket stays plain, for the test's own `redis-cli`.
    pub fn start_tls(cert: &super::tls::SignedCertificate, password: &str) -> Self {
        let port = super::free_port();
        let path = |p: &std::path::Path| p.display().to_string();
        let extra = vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&cert.cert),
            "--tls-key-file".into(),
            path(&cert.key),
            "--tls-ca-cert-file".into(),
            path(&cert.ca),
            "--tls-auth-clients".into(),
            "no".into(),
            "--requirepass".into(),
            password.into(),
        ];
        Self::start_with(extra, Some(password.into()), Some(port))
    }

    fn start_with(extra: Vec<String>, password: Option<String>, tls_port: Option<u16>) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let socket = dir.path().join("redis.sock");
        let mut server = RedisServer {
            child: None,
            socket,
            paused: false,
            extra,
            password,
            tls_port,
            dir,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&self.socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); `make test-deps` installs it")
            });
        self.child = Some(child);
        let deadline = Instant::now() + READY_DEADLINE;
        while self.try_cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `unix://` URL for `[limits.store] url`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `rediss://` URL of the TLS port (see [`RedisServer::start_tls`]).
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("started with start_tls");
        format!("rediss://127.0.0.1:{port}/0")
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let mut cli = Command::new("redis-cli");
        if let Some(password) = &self.password {
            cli.env("REDISCLI_AUTH", password);
        }
        let out = cli
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs one command through `redis-cli`; its raw output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// Every key with `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cli(&["--scan", "--pattern", &format!("{prefix}*")])
            .lines()
            .map(str::to_owned)
            .filter(|k| !k.is_empty())
            .collect();
        keys.sort();
        keys
    }

    /// Kills the server (SIGKILL): everything in it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
        self.paused = false;
    }

    /// A fresh, empty server on the same socket.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .map(Child::id)
            .expect("redis-server running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("running kill: {e}"));
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// SIGSTOP: connections stay open and nothing answers, like a Redis stuck on a slow command.
    pub fn pause(&mut self) {
        self.signal("-STOP");
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.signal("-CONT");
        self.paused = false;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        self.kill();
    }
}
