# The two quick-start commands (README): `make demo` and `make test`. Both install what a fresh
# Debian machine lacks (cmake: Pingora's zlib-ng build needs it) before building.

CARGO ?= cargo

.PHONY: demo test deps test-deps build bench fuzz

deps:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "installing cmake (needed to build Pingora's zlib-ng)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq cmake >/dev/null; }

NODE_APP := tests/apps/node

# The TLS listener test makes a certificate with openssl and talks to it with curl; the
# Socket.IO interop test needs python-socketio with its client extras; the hardening tests run a
# WSGI app under Werkzeug and the WebSocket tests a Node `ws` app (node and npm, then its locked
# packages); the status page test drives Debian's chromium; the fleet tests run a real
# redis-server (and redis-cli) from the Debian package; the deploy tests check the Kubernetes
# manifests with PyPI's kubernetes-validate, the alert rules with promtool (Debian's prometheus
# package, installed without its recommends; on a host running systemd it also starts a
# Prometheus server) and the systemd unit with systemd-analyze. The probes import exactly what
# the tests import.
test-deps: deps $(NODE_APP)/node_modules/.package-lock.json
	@command -v openssl >/dev/null 2>&1 && command -v curl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq openssl curl >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (the status page test drives a real headless browser)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@python3 -m pip --version >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3-pip >/dev/null; }
	@python3 -c "import socketio, aiohttp, requests, websocket" 2>/dev/null || \
	  python3 -m pip install --quiet --disable-pip-version-check -r tests/socketio/requirements.txt \
	  || python3 -m pip install --quiet --break-system-packages -r tests/socketio/requirements.txt
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq systemd >/dev/null; }
	@python3 -c "import kubernetes_validate, yaml" 2>/dev/null || \
	  python3 -m pip install --quiet --disable-pip-version-check -r tests/deploy/requirements.txt \
	  || python3 -m pip install --quiet --break-system-packages -r tests/deploy/requirements.txt
	@python3 -c "import werkzeug" 2>/dev/null || \
	  python3 -m pip install --quiet --disable-pip-version-check -r tests/apps/wsgi/requirements.txt \
	  || python3 -m pip install --quiet --break-system-packages -r tests/apps/wsgi/requirements.txt

# npm ci writes node_modules/.package-lock.json: the packages are stale when the lock file or
# package.json is newer than it, and absent without it.
$(NODE_APP)/node_modules/.package-lock.json: $(NODE_APP)/package-lock.json $(NODE_APP)/package.json
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  echo "installing nodejs and npm (the WebSocket tests run a Node ws app)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }
	cd $(NODE_APP) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

build: deps
	$(CARGO) build --release --bin streamguard

demo: build
	./target/release/streamguard demo -c proxy.toml

test: test-deps
	RUST_TEST_THREADS=4 $(CARGO) test --all-targets

bench: deps
	bash bench/run.sh

fuzz:
	cd fuzz && $(CARGO) +nightly fuzz run sse_parser -- -max_total_time=60
