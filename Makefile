# The two quick-start commands (README): `make demo` and `make test`. Both install what a fresh
# Debian machine lacks (cmake: Pingora's zlib-ng build needs it) before building.

CARGO ?= cargo

.PHONY: demo test deps test-deps build bench fuzz

deps:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "installing cmake (needed to build Pingora's zlib-ng)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq cmake >/dev/null; }

# The TLS listener test makes a certificate with openssl and talks to it with curl; the fleet
# tests run a real redis-server (and redis-cli) from the Debian package; the Socket.IO interop
# test needs python-socketio with its client extras; the hardening tests run a WSGI app under
# Werkzeug. The probes import exactly what the tests import.
test-deps: deps
	@command -v openssl >/dev/null 2>&1 && command -v curl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq openssl curl >/dev/null; }
	@command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }
	@python3 -m pip --version >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3-pip >/dev/null; }
	@python3 -c "import socketio, aiohttp, requests, websocket" 2>/dev/null || \
	  python3 -m pip install --quiet --disable-pip-version-check -r tests/socketio/requirements.txt \
	  || python3 -m pip install --quiet --break-system-packages -r tests/socketio/requirements.txt
	@python3 -c "import werkzeug" 2>/dev/null || \
	  python3 -m pip install --quiet --disable-pip-version-check -r tests/apps/wsgi/requirements.txt \
	  || python3 -m pip install --quiet --break-system-packages -r tests/apps/wsgi/requirements.txt

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
