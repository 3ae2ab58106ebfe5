#!/usr/bin/env bash
# Installs what building (`build`) or testing (`test`) streamguard needs on Debian, and only
# what is missing: each tool is probed first, the missing Debian packages go in one apt-get run,
# then the Python, Node and Rust parts. `make demo` and `make test` call it.
#
# What the tests need, and why:
# - cmake: Pingora's zlib-ng build; curl and openssl: the TLS tests make certificates and talk
#   to the listener;
# - python3-socketio and friends: the Socket.IO interop test; werkzeug: the WSGI app of the
#   hardening tests; kubernetes-validate: the manifest schemas (all from PyPI, pinned in the
#   requirements files);
# - nodejs, npm and the locked `ws` packages: the Node WebSocket app;
# - chromium: the status page test drives a real headless browser;
# - redis-server, redis-cli: the fleet tests;
# - promtool (Debian's prometheus, without its recommends; on a host running systemd it also
#   starts a Prometheus server): the alert rules; systemd-analyze: the unit file.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-test}
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo

# Rust stable at least as new as Cargo.toml's rust-version; Debian's own is older.
need_rust=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
rust_ok() {
  local have
  have=$(cargo --version 2>/dev/null | awk '{print $2}') || return 1
  [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$need_rust" "$have" | sort -V | head -1)" = "$need_rust" ]
}

packages=()
lean=() # installed without their recommends
want() { # want <probe command> <debian package>...
  command -v "$1" >/dev/null 2>&1 || packages+=("${@:2}")
}
want cmake cmake
want curl curl ca-certificates
if [ "$what" = test ]; then
  want openssl openssl
  want chromium chromium
  want redis-server redis-server
  want redis-cli redis-tools
  want node nodejs
  want npm npm
  command -v promtool >/dev/null 2>&1 || lean+=(prometheus)
  want systemd-analyze systemd
  python3 -m pip --version >/dev/null 2>&1 || packages+=(python3-pip)
fi
if [ $((${#packages[@]} + ${#lean[@]})) -gt 0 ]; then
  echo "installing ${packages[*]} ${lean[*]}"
  $SUDO apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  [ ${#packages[@]} -eq 0 ] || $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null
  [ ${#lean[@]} -eq 0 ] || $SUDO apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
fi

if ! rust_ok; then
  echo "installing Rust stable with rustup (streamguard needs $need_rust or newer)"
  if command -v rustup >/dev/null 2>&1; then
    rustup toolchain install stable --profile minimal && rustup default stable
  else
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  fi
fi

[ "$what" = test ] || exit 0

pip_install() { # pip_install <import probe> <requirements file>
  python3 -c "$1" 2>/dev/null && return 0
  python3 -m pip install --quiet --disable-pip-version-check -r "$2" ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages -r "$2"
}
# The probes import exactly what the tests import.
pip_install "import socketio, aiohttp, requests, websocket" tests/socketio/requirements.txt
pip_install "import kubernetes_validate, yaml" tests/deploy/requirements.txt
pip_install "import werkzeug" tests/apps/wsgi/requirements.txt

# npm ci writes node_modules/.package-lock.json: the packages are stale when the lock file or
# package.json is newer than it, and absent without it.
node_app=tests/apps/node
stamp=$node_app/node_modules/.package-lock.json
if [ ! -e "$stamp" ] || [ "$node_app/package-lock.json" -nt "$stamp" ] ||
  [ "$node_app/package.json" -nt "$stamp" ]; then
  (cd "$node_app" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$stamp"
fi

# Every package of the lock file, for every platform: the deploy tests replay the Docker build
# stage with `cargo fetch --offline` and read `cargo metadata --offline`, which need the ones a
# Linux build never downloads too. A no-op when the cache has them all.
cargo fetch --locked --quiet
