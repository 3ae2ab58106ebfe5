//! App servers other than the demo upstream, run as child processes: the legacy stacks
//! streamguard sits in front of, whose parsers differ from Pingora's. An attack that only bites
//! with a certain app server is tested against that server. `make test-deps` installs them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::free_port;

const READY_DEADLINE: Duration = Duration::from_secs(20);

/// A server process listening on 127.0.0.1; killed on drop.
pub struct ChildServer {
    pub addr: SocketAddr,
    name: String,
    child: Child,
}

impl ChildServer {
    /// Spawns `cmd` (which must listen on `port`) and waits until the port accepts connections.
    pub async fn start(name: &str, mut cmd: Command, port: u16) -> ChildServer {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut server = ChildServer {
            addr: ([127, 0, 0, 1], port).into(),
            name: name.to_owned(),
            child,
        };
        let deadline = Instant::now() + READY_DEADLINE;
        while TcpStream::connect(server.addr).await.is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "{name} exited with {status} before listening on {}",
                    server.addr
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} not listening on {} within {READY_DEADLINE:?}",
                server.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} was on {} ---", self.name, self.addr);
        }
    }
}

fn apps_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// Panics with the fix when a Python module the app needs is missing.
fn require_python(module: &str) {
    let found = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "python3 cannot import {module}: run `make test-deps` (installs tests/apps/wsgi/requirements.txt)"
    );
}

/// Which WSGI server runs `tests/apps/wsgi/app.py`.
#[derive(Debug, Clone, Copy)]
pub enum Wsgi {
    /// Werkzeug's development server: serves a request-target without a leading slash.
    Werkzeug,
    /// The standard library's wsgiref: folds `_` and `-` in header names, as CGI does.
    Wsgiref,
}

/// The test WSGI app (JSON echo of what it saw; see its docstring) on a fresh port.
pub async fn wsgi(server: Wsgi) -> ChildServer {
    let name = match server {
        Wsgi::Werkzeug => "werkzeug",
        Wsgi::Wsgiref => "wsgiref",
    };
    if matches!(server, Wsgi::Werkzeug) {
        require_python("werkzeug");
    }
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(apps_dir().join("wsgi/app.py"))
        .args(["--server", name, "--port", &port.to_string()]);
    ChildServer::start(name, cmd, port).await
}
