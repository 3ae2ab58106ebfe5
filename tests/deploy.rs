//! `deploy/` checked by the tools that will consume it and against the code it deploys, offline
//! (CI reaches package registries only): the Kubernetes manifests rendered and validated against
//! the Kubernetes schemas (`tests/deploy/kube.py`), the systemd unit through
//! `systemd-analyze`, the Dockerfile's rules and its build stage's inputs (no Docker engine
//! here, so the image itself is never built), and the Grafana dashboard and the alert rules
//! through `promtool`, with every metric they name scraped from a real running proxy.
//! `make test-deps` installs the tools (Debian's `prometheus` and `systemd`, PyPI's
//! `kubernetes-validate`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The longest any tool run here may take (`kubectl kustomize` and schema loading are the slow
/// ones, a few seconds each).
const TOOL_DEADLINE: Duration = Duration::from_secs(120);
/// Seconds a stop may take beyond `drain_timeout` before the service manager kills.
const STOP_MARGIN: u64 = 5;
/// `systemd-analyze security` exposure, in tenths: 20 is its "OK" band's top (2.0).
const MAX_EXPOSURE: &str = "20";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// What a finished tool run printed.
struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its end, at most [`TOOL_DEADLINE`] (then kills it and panics). Output goes to
/// files, so a chatty tool can never block on a full pipe.
fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let file = |path: &Path| File::create(path).unwrap_or_else(|e| panic!("log file: {e}"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file(&out))
        .stderr(file(&err))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): `make test-deps` installs it"));
    let deadline = Instant::now() + TOOL_DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} took longer than {TOOL_DEADLINE:?}");
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        success: status.success(),
        stdout: read(&out),
        stderr: read(&err),
    }
}

/// Runs `cmd` and panics with everything it printed unless it succeeds; its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.success,
        "{what} failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    out.stdout
}

fn kube_py(command: &str, dir: &Path) -> Command {
    let found = Command::new("python3")
        .args(["-c", "import kubernetes_validate, yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "python3 cannot import kubernetes_validate: run `make test-deps` \
         (installs tests/deploy/requirements.txt)"
    );
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("tests/deploy/kube.py"))
        .arg(command)
        .arg(dir);
    cmd
}

fn kubernetes_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// The effective configuration `streamguard check` prints for `config` (`env` set for it).
fn effective_config(config: &Path, env: &[(&str, &str)]) -> toml::Table {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamguard"));
    cmd.arg("check").arg("-c").arg(config);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let text = run_ok(&mut cmd);
    text.parse()
        .unwrap_or_else(|e| panic!("`check` printed no TOML ({e}):\n{text}"))
}

fn duration_at(config: &toml::Table, table: &str, key: &str) -> Duration {
    let text = config
        .get(table)
        .and_then(|t| t.get(key))
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("no [{table}] {key} in the effective config"));
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("[{table}] {key} = {text:?}: {e}"))
}

// --- Kubernetes ------------------------------------------------------------------------------

#[test]
fn kubernetes_manifests_render_and_pass_the_schemas() {
    let report = run_ok(&mut kube_py("schemas", &kubernetes_dir()));
    for overlay in ["base", "overlays/classic", "overlays/native-sidecar"] {
        assert!(
            report.contains(&format!("{overlay}: ")),
            "{overlay} was not checked:\n{report}"
        );
    }
}

#[test]
fn kubernetes_overlays_agree_with_the_drain_ports_and_secrets() {
    let report = run_ok(&mut kube_py("consistency", &kubernetes_dir()));
    for overlay in ["overlays/classic", "overlays/native-sidecar"] {
        assert!(
            report.contains(&format!("{overlay}: consistent")),
            "{report}"
        );
    }
}

/// The proxy.toml each overlay deploys is one the binary accepts, with the drain and reload
/// settings the manifests' arithmetic assumes. The key files it names are stood in for by
/// temporary files at the same relative places.
#[test]
fn kubernetes_config_passes_streamguard_check() {
    const SECRETS: &str = "/var/run/secrets/streamguard/";
    for overlay in ["classic", "native-sidecar"] {
        let text = run_ok(&mut kube_py(
            "config",
            &kubernetes_dir().join("overlays").join(overlay),
        ));
        assert!(
            text.contains(SECRETS),
            "the key files are expected under {SECRETS}"
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        for (file, content) in [
            ("jwt/secret", "an-hs256-secret-of-at-least-32-bytes"),
            ("redis/password", "0123456789abcdef"),
        ] {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap_or(dir.path()))
                .unwrap_or_else(|e| panic!("mkdir: {e}"));
            std::fs::write(&path, content).unwrap_or_else(|e| panic!("write: {e}"));
        }
        let config = dir.path().join("proxy.toml");
        let local = text.replace(SECRETS, &format!("{}/", dir.path().display()));
        std::fs::write(&config, local).unwrap_or_else(|e| panic!("write: {e}"));
        let effective = effective_config(&config, &[]);
        let server = &effective["server"];
        assert_eq!(
            server.get("watch_config"),
            Some(&toml::Value::Boolean(true))
        );
        let timeout = duration_at(&effective, "server", "drain_timeout");
        let spread = duration_at(&effective, "server", "drain_delay")
            + duration_at(&effective, "server", "drain_window");
        assert!(
            timeout >= spread,
            "{overlay}: drain_timeout {timeout:?} < {spread:?}"
        );
    }
}

/// The hook the native-sidecar overlay gives the app, run as the kubelet would (from inside the
/// pod, so from loopback) against a real proxy: it returns only once the proxy has drained
/// (every stream ended, spread over the window), well within the grace period, and leaves the
/// proxy running for the kubelet's SIGTERM that comes after the app's.
#[tokio::test(flavor = "multi_thread")]
async fn native_sidecar_prestop_hook_returns_when_the_proxy_has_drained() {
    const DEPLOYED_ADMIN: &str = "127.0.0.1:9901";
    let overlay = kubernetes_dir().join("overlays/native-sidecar");
    let hook: Vec<String> = serde_json::from_str(&run_ok(&mut kube_py("prestop", &overlay)))
        .unwrap_or_else(|e| panic!("the preStop command is not a list of strings: {e}"));
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(
        ProxyConfig::new(upstream.addr)
            .section("auth", "mode = \"off\"")
            .section(
                "server",
                "drain_delay = \"1s\"\ndrain_window = \"1s\"\ndrain_timeout = \"5s\"",
            ),
    )
    .await;
    let mut stream = SseClient::connect(proxy.addr, "/sse?events=1000&interval_ms=50", &[]).await;
    assert_eq!(stream.status, 200);
    stream.read_event(IO_TIMEOUT).await.expect("a first event");

    let pointed: Vec<String> = hook
        .iter()
        .map(|part| part.replace(DEPLOYED_ADMIN, &proxy.admin.to_string()))
        .collect();
    assert_ne!(
        pointed, hook,
        "the hook does not call the admin port {DEPLOYED_ADMIN}"
    );
    let started = Instant::now();
    let ran =
        tokio::task::spawn_blocking(move || run(Command::new(&pointed[0]).args(&pointed[1..])))
            .await
            .unwrap_or_else(|e| panic!("running the hook: {e}"));
    let took = started.elapsed();
    assert!(
        ran.success,
        "the hook failed:\n{}{}",
        ran.stdout, ran.stderr
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "the hook returned after {took:?}: not when a 1 s delay and 1 s window had passed"
    );
    assert!(
        stream.wait_closed(Duration::from_millis(500)).await,
        "the stream is still open after the hook returned"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(metric(&metrics, "streamguard_draining", &[]), Some(1.0));
    assert_eq!(
        metric(&metrics, "streamguard_drain_streams_remaining", &[]),
        Some(0.0)
    );
    let mut proxy = proxy;
    assert!(
        proxy.wait_exit(Duration::from_millis(200)).await.is_none(),
        "POST /drain must leave the process to the kubelet's SIGTERM"
    );
}

// --- systemd ---------------------------------------------------------------------------------

const UNIT: &str = "deploy/systemd/streamguard.service";
const INSTALLED_BINARY: &str = "/usr/local/bin/streamguard";

/// The unit's `[Service]` settings: key -> every value given, in order.
fn unit_settings() -> BTreeMap<String, Vec<String>> {
    let mut settings = BTreeMap::<String, Vec<String>>::new();
    let mut in_service = false;
    for line in read(&repo().join(UNIT)).lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if let (true, Some((key, value))) = (in_service, line.split_once('=')) {
            if !line.starts_with('#') {
                settings
                    .entry(key.trim().to_owned())
                    .or_default()
                    .push(value.trim().to_owned());
            }
        }
    }
    settings
}

#[test]
fn systemd_unit_passes_verify_and_the_security_review() {
    // verify insists that the binary exists: a copy of the unit names the one just built.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let unit = dir.path().join("streamguard.service");
    let text = read(&repo().join(UNIT));
    assert!(
        text.contains(INSTALLED_BINARY),
        "{UNIT} runs {INSTALLED_BINARY}"
    );
    std::fs::write(
        &unit,
        text.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_streamguard")),
    )
    .unwrap_or_else(|e| panic!("write: {e}"));

    // An unknown or misspelt setting is only a warning (exit 0): any output fails the test.
    let verify = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(
        verify.success && verify.stderr.trim().is_empty() && verify.stdout.trim().is_empty(),
        "systemd-analyze verify:\n{}{}",
        verify.stdout,
        verify.stderr
    );
    run_ok(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold", MAX_EXPOSURE])
            .arg(&unit),
    );
}

#[test]
fn systemd_unit_reloads_with_sighup_and_outlasts_the_drain() {
    let settings = unit_settings();
    let one = |key: &str| -> &str {
        match settings.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("{UNIT}: expected one {key}=, found {other:?}"),
        }
    };
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("CapabilityBoundingSet"), "", "no capabilities");
    assert!(one("RestrictAddressFamilies").contains("AF_INET"));
    assert!(settings["SystemCallFilter"].contains(&"@system-service".to_owned()));
    let files: u64 = one("LimitNOFILE")
        .parse()
        .unwrap_or_else(|e| panic!("LimitNOFILE: {e}"));
    assert!(
        files >= 4096,
        "LimitNOFILE={files} caps a proxy at a few thousand streams"
    );

    // The config the install steps copy (the repository's proxy.toml), as the binary reads it.
    let config = effective_config(
        &repo().join("proxy.toml"),
        &[(
            "STREAMGUARD_JWT_SECRET",
            "a-secret-of-at-least-32-bytes-length",
        )],
    );
    let drain = duration_at(&config, "server", "drain_timeout");
    let stop = humantime::parse_duration(&format!("{}s", one("TimeoutStopSec")))
        .or_else(|_| humantime::parse_duration(one("TimeoutStopSec")))
        .unwrap_or_else(|e| panic!("TimeoutStopSec: {e}"));
    assert!(
        stop >= drain + Duration::from_secs(STOP_MARGIN),
        "TimeoutStopSec {stop:?} must exceed drain_timeout {drain:?} by {STOP_MARGIN} s, or \
         systemd kills streams the drain would have ended cleanly"
    );
}

// --- Dockerfile ------------------------------------------------------------------------------

/// One Dockerfile instruction: the keyword (upper case) and its arguments.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

/// `deploy/Dockerfile` as stages of instructions (comments dropped, continuations joined).
fn dockerfile_stages() -> Vec<Vec<Instruction>> {
    let text = read(&repo().join("deploy/Dockerfile"));
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        };
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .unwrap_or_else(|| panic!("deploy/Dockerfile: {line:?} before any FROM"))
            .push(instruction);
    }
    stages
}

/// `COPY [--flags] SRC... DEST` -> (flags, sources, destination).
fn copy_parts(args: &str) -> (Vec<&str>, Vec<&str>, &str) {
    let words: Vec<&str> = args.split_whitespace().collect();
    let (flags, rest): (Vec<&str>, Vec<&str>) = words.iter().partition(|w| w.starts_with("--"));
    let (dest, sources) = rest
        .split_last()
        .unwrap_or_else(|| panic!("COPY {args}: no destination"));
    (flags, sources.to_vec(), dest)
}

/// `cargo metadata` of this package (with the locked dependency graph when `deps`).
fn cargo_metadata(deps: bool) -> Value {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .current_dir(repo());
    if !deps {
        cmd.arg("--no-deps");
    }
    serde_json::from_str(&run_ok(&mut cmd)).unwrap_or_else(|e| panic!("cargo metadata: {e}"))
}

/// The top-level entries of the repository that the targets of `kinds` live in.
fn target_roots(metadata: &Value, kinds: &[&str]) -> BTreeSet<String> {
    let root = repo();
    metadata["packages"][0]["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| kinds.contains(&k.as_str().unwrap_or("")))
        })
        .filter_map(|t| t["src_path"].as_str())
        .filter_map(|p| Path::new(p).strip_prefix(&root).ok().map(Path::to_path_buf))
        .filter_map(|p| {
            p.components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
        })
        .collect()
}

fn version_of(text: &str) -> (u64, u64) {
    let mut parts = text.split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => panic!("not a Rust version: {text:?}"),
    }
}

/// The highest `rust-version` among this package and what its binary links (normal and build
/// dependencies, as locked).
fn rust_version_needed(metadata: &Value) -> ((u64, u64), String) {
    let packages: BTreeMap<&str, &Value> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let root = metadata["resolve"]["root"]
        .as_str()
        .unwrap_or_else(|| panic!("cargo metadata has no root package"));
    let (mut seen, mut todo) = (BTreeSet::new(), vec![root]);
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().into_iter().flatten() {
            let linked = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if let (true, Some(pkg)) = (linked, dep["pkg"].as_str()) {
                todo.push(pkg);
            }
        }
    }
    seen.iter()
        .filter_map(|id| {
            let p = packages[id];
            Some((
                version_of(p["rust_version"].as_str()?),
                p["name"].as_str()?.to_owned(),
            ))
        })
        .max()
        .unwrap_or_else(|| panic!("no rust-version anywhere"))
}

#[test]
fn dockerfile_builds_the_binary_alone_and_runs_it_as_non_root() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let (build, runtime) = (&stages[0], &stages[stages.len() - 1]);
    let all: Vec<&Instruction> = stages.iter().flatten().collect();

    // The builder: the official Rust image, pinned, new enough for the locked dependencies.
    let from = &build[0].args;
    let tag = from
        .strip_prefix("rust:")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|t| t.strip_suffix("-bookworm"))
        .unwrap_or_else(|| panic!("build stage FROM {from}: expected rust:X.Y-bookworm"));
    let builder = version_of(tag);
    let (needed, by) = rust_version_needed(&cargo_metadata(true));
    assert!(
        builder >= needed,
        "rust:{tag} cannot build the locked dependencies: {by} needs Rust {}.{}",
        needed.0,
        needed.1
    );
    let own = cargo_metadata(false)["packages"][0]["rust_version"]
        .as_str()
        .map(version_of)
        .unwrap_or_else(|| panic!("Cargo.toml has no rust-version"));
    assert!(
        builder >= own,
        "rust:{tag} is older than Cargo.toml's rust-version"
    );
    // The runtime stage runs on the builder's Debian release (the binary links its glibc).
    assert!(
        runtime[0].args.contains("debian12") || runtime[0].args.contains("bookworm"),
        "runtime FROM {} is not Debian 12 (bookworm)",
        runtime[0].args
    );

    // Build inputs: the manifest, the lock file, and where the library and binary live.
    let metadata = cargo_metadata(false);
    let mut needed_inputs = target_roots(&metadata, &["lib", "bin"]);
    needed_inputs.extend(["Cargo.toml".to_owned(), "Cargo.lock".to_owned()]);
    let never = target_roots(&metadata, &["bench", "test", "example"]);
    let copied: BTreeSet<String> = build
        .iter()
        .filter(|i| i.keyword == "COPY" || i.keyword == "ADD")
        .flat_map(|i| copy_parts(&i.args).1)
        .map(|s| s.trim_end_matches('/').to_owned())
        .collect();
    assert_eq!(
        copied, needed_inputs,
        "the build stage must copy exactly the binary's inputs"
    );
    assert!(copied.is_disjoint(&never), "{copied:?} includes {never:?}");

    // The runtime: only the binary from the build stage, a non-root user, SIGTERM, no
    // HEALTHCHECK (there is nothing in the image to run one).
    for copy in runtime.iter().filter(|i| i.keyword == "COPY") {
        assert!(
            copy_parts(&copy.args)
                .0
                .iter()
                .any(|f| f.starts_with("--from=")),
            "the runtime stage copies from the context: COPY {}",
            copy.args
        );
    }
    let user = runtime
        .iter()
        .rfind(|i| i.keyword == "USER")
        .map(|i| i.args.as_str())
        .unwrap_or_else(|| panic!("the runtime stage sets no USER (it would run as root)"));
    let uid = user.split(':').next().unwrap_or(user);
    assert!(
        uid.parse::<u32>().is_ok_and(|n| n != 0),
        "USER {user}: a numeric non-root uid (runAsNonRoot can only check numbers)"
    );
    let stop = runtime.iter().rfind(|i| i.keyword == "STOPSIGNAL");
    assert_eq!(stop.map(|i| i.args.as_str()), Some("SIGTERM"));
    assert!(all
        .iter()
        .all(|i| i.keyword != "HEALTHCHECK" && i.keyword != "ADD"));
    let entrypoint = runtime.iter().rfind(|i| i.keyword == "ENTRYPOINT");
    assert!(
        entrypoint.is_some_and(|i| i.args.starts_with('[')),
        "an exec-form ENTRYPOINT, so SIGTERM reaches streamguard itself"
    );
}

/// One `.dockerignore` rule: a path pattern, and whether it re-includes (`!`).
struct IgnoreRule {
    pattern: Vec<String>,
    include: bool,
}

fn dockerignore() -> Vec<IgnoreRule> {
    read(&repo().join(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (include, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            IgnoreRule {
                pattern: pattern
                    .trim_matches('/')
                    .split('/')
                    .map(str::to_owned)
                    .collect(),
                include,
            }
        })
        .collect()
}

/// One path segment against one pattern segment (`*` and `?`, as Go's filepath.Match).
fn segment_matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            segment_matches(rest, name)
                || (!name.is_empty() && segment_matches(pattern, &name[1..]))
        }
        (Some((b'?', rest)), Some((_, name_rest))) => segment_matches(rest, name_rest),
        (Some((p, rest)), Some((n, name_rest))) => p == n && segment_matches(rest, name_rest),
        _ => false,
    }
}

/// Whether Docker leaves `path` (relative to the context) out: the last rule matching the
/// path or one of its parents decides.
fn docker_ignores(rules: &[IgnoreRule], path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let mut ignored = false;
    for rule in rules {
        let matched = (1..=parts.len()).any(|n| {
            n == rule.pattern.len()
                && rule
                    .pattern
                    .iter()
                    .zip(&parts[..n])
                    .all(|(p, s)| segment_matches(p.as_bytes(), s.as_bytes()))
        });
        if matched {
            ignored = !rule.include;
        }
    }
    ignored
}

fn copy_tree(from: &Path, to: &Path, rules: &[IgnoreRule], rel: &str) {
    if docker_ignores(rules, rel) {
        return;
    }
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
        for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
            let entry = entry.unwrap_or_else(|e| panic!("{}: {e}", from.display()));
            let name = entry.file_name().to_string_lossy().into_owned();
            copy_tree(
                &entry.path(),
                &to.join(&name),
                rules,
                &format!("{rel}/{name}"),
            );
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

/// The build stage replayed without Docker: its context filtered by `.dockerignore`, its COPY
/// steps, its shell steps (the bench stand-ins), and in place of `cargo build` a
/// `cargo fetch --locked --offline`, which reads the manifest with every target and the lock
/// file as the build would, without compiling. Package installs (apt-get) are skipped.
#[test]
fn docker_build_stage_needs_nothing_but_its_copied_inputs() {
    let rules = dockerignore();
    for excluded in [
        "target/debug/streamguard",
        "tests/deploy.rs",
        "benches/verify.rs",
        ".git",
    ] {
        assert!(
            docker_ignores(&rules, excluded),
            ".dockerignore lets {excluded} into the build context"
        );
    }
    let stages = dockerfile_stages();
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let mut cwd = root.path().to_path_buf();
    let mut built = false;
    for step in &stages[0] {
        match step.keyword.as_str() {
            "WORKDIR" => {
                cwd = root.path().join(step.args.trim_start_matches('/'));
                std::fs::create_dir_all(&cwd).unwrap_or_else(|e| panic!("mkdir: {e}"));
            }
            "COPY" => {
                let (_, sources, dest) = copy_parts(&step.args);
                let many = sources.len() > 1;
                for source in sources {
                    let source = source.trim_end_matches('/');
                    assert!(
                        !docker_ignores(&rules, source),
                        "COPY {source}, but .dockerignore leaves it out of the context"
                    );
                    let target = if dest.ends_with('/') || many {
                        cwd.join(dest).join(source)
                    } else {
                        cwd.join(dest)
                    };
                    copy_tree(&repo().join(source), &target, &rules, source);
                }
            }
            "RUN" if step.args.contains("apt-get") => {}
            "RUN" if step.args.contains("cargo build") => {
                built = true;
                run_ok(
                    Command::new(env!("CARGO"))
                        .args(["fetch", "--locked", "--offline"])
                        .current_dir(&cwd),
                );
            }
            "RUN" => {
                let script: Vec<&str> = step
                    .args
                    .split_whitespace()
                    .skip_while(|w| w.starts_with("--mount="))
                    .collect();
                run_ok(
                    Command::new("sh")
                        .arg("-c")
                        .arg(script.join(" "))
                        .current_dir(&cwd),
                );
            }
            _ => {}
        }
    }
    assert!(built, "the build stage never runs cargo build");
}

// --- Grafana and Prometheus ------------------------------------------------------------------

const DASHBOARD: &str = "deploy/grafana/streamguard.json";
const RULES: &str = "deploy/prometheus/streamguard-rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/streamguard-rules.test.yaml";

fn dashboard() -> Value {
    serde_json::from_str(&read(&repo().join(DASHBOARD)))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, rows' nested ones included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Every `streamguard_*` name in `text`, as written.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let mut names = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("streamguard_") {
        let start = at + found;
        let mut end = start + "streamguard_".len();
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        if start == 0 || !(ident(bytes[start - 1]) || bytes[start - 1].is_ascii_uppercase()) {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

#[test]
fn grafana_dashboard_imports_as_is_and_its_queries_are_promql() {
    let dashboard = dashboard();
    assert!(
        dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "a fixed uid"
    );
    assert!(
        dashboard["id"].is_null(),
        "an import must not carry a database id"
    );
    let inputs = dashboard["__inputs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "a DS_PROMETHEUS datasource input: {inputs:?}"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: BTreeSet<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(names.contains("instance"), "templating by pod: {names:?}");

    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "panel id {id} twice");
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            grid[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        });
        assert!(
            x + w <= 24 && w > 0 && h > 0,
            "{title}: outside the 24 columns"
        );
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            assert!(
                cells.insert(cell),
                "{title} overlaps another panel at {cell:?}"
            );
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no query");
        let refs: BTreeSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
        assert_eq!(
            refs.len(),
            targets.len(),
            "{title}: refIds must be distinct"
        );
        for target in &targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "{title}: empty query");
            exprs.push((title.to_owned(), expr.to_owned()));
        }
    }
    for variable in &variables {
        assert_eq!(variable["datasource"]["uid"], "${DS_PROMETHEUS}");
    }

    // Each query, with Grafana's variables given values, must parse as PromQL: promtool
    // checks them as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, (title, expr)) in exprs.iter().enumerate() {
        let promql = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        assert!(!promql.contains('$'), "{title}: unknown variable in {expr}");
        rules.push_str(&format!(
            "      - record: dashboard_query_{n}\n        expr: {}\n",
            serde_json::to_string(&promql).unwrap_or_default()
        ));
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let file = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&file, rules).unwrap_or_else(|e| panic!("write: {e}"));
    run_ok(Command::new("promtool").args(["check", "rules"]).arg(&file));
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    run_ok(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(repo().join(RULES)),
    );
    let tested = run_ok(
        Command::new("promtool")
            .args(["test", "rules"])
            .arg(repo().join(RULE_TESTS)),
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Holds one connection more than `max_connections_per_ip` allows and waits (5 s at most) for
/// the gate to count the refusal.
async fn provoke_connection_refusal(proxy: &Proxy, per_ip: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..=per_ip {
        let mut conn = common::http::connect(proxy.addr)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        // Half a request head: the connection stays open, waiting for the rest.
        let _ = conn.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").await;
        held.push(conn);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(
        &proxy.metrics().await,
        "streamguard_connection_refusals_total",
        &[],
    )
    .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "{} connections from one address, none refused",
            per_ip + 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held
}

/// The dashboard and the alert rules name only metrics that a real proxy exports, and the
/// dashboard shows every metric it exports. Labelled series appear once something happened,
/// so the proxy first sees a stream on a route (admitted through a real Redis), a refused
/// request and a refused connection.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alerts_use_the_metrics_a_running_proxy_exports() {
    const PER_IP: usize = 4;
    let redis = redis::RedisServer::start();
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_with(
        ProxyConfig::new(upstream.addr)
            .section("listen", &format!("max_connections_per_ip = {PER_IP}"))
            // A per-user cap: admissions go through the store.
            .section("limits", "max_streams_per_user = 5")
            .route("path = \"/sse\"")
            .merge(&format!(
                "[limits.store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"deploytest:\"\n",
                redis.url()
            )),
    )
    .await;
    let token = mint_token("dashboard-user", &[], 600, Value::Null);
    let mut stream = SseClient::connect(
        proxy.addr,
        "/sse?events=1&interval_ms=10",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(stream.status, 200);
    stream.read_event(IO_TIMEOUT).await.expect("an event");
    let refused = get(proxy.addr, "/echo", &[]).await;
    assert_eq!(refused.status, 401, "no token");
    let held = provoke_connection_refusal(&proxy, PER_IP).await;
    drop(stream);
    drop(held);

    let scrape = proxy.metrics().await;
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let families: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    for name in [
        "streamguard_store_seconds_bucket",
        "streamguard_route_streams_active",
    ] {
        assert!(
            exported.contains(name),
            "the scenario did not produce {name}:\n{scrape}"
        );
    }

    for file in [DASHBOARD, RULES, RULE_TESTS] {
        let named = metric_names(&read(&repo().join(file)));
        assert!(!named.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = named
            .iter()
            .filter(|n| !exported.contains(*n) && !families.contains(*n))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the proxy does not export: {unknown:?}"
        );
    }
    let shown = metric_names(&read(&repo().join(DASHBOARD)));
    let missing: Vec<&String> = families
        .iter()
        .filter(|f| {
            !["", "_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| shown.contains(&format!("{f}{suffix}")))
        })
        .collect();
    assert!(missing.is_empty(), "{DASHBOARD} does not show {missing:?}");
}

/// `streamguard_connections_max` and `streamguard_streams_max` report the caps in force, so
/// alerts can compare with them; a reload changes them.
#[tokio::test(flavor = "multi_thread")]
async fn the_caps_in_force_are_reported() {
    let upstream = Upstream::start().await;
    let caps = |streams: &str| {
        ProxyConfig::new(upstream.addr)
            .section("listen", "max_connections = 321")
            .section("limits", streams)
    };
    let proxy = Proxy::start_with(caps("")).await;
    let reported = |text: &str| {
        (
            metric(text, "streamguard_connections_max", &[]),
            metric(text, "streamguard_streams_max", &[]),
        )
    };
    assert_eq!(reported(&proxy.metrics().await), (Some(321.0), Some(0.0)));
    proxy.rewrite_config(&caps("max_streams = 77").with_ports_of(&proxy));
    let resp = proxy.post_admin("/reload").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(reported(&proxy.metrics().await), (Some(321.0), Some(77.0)));
}
