# The two quick-start commands (README): `make demo` and `make test`. Both install what a fresh
# Debian machine lacks (cmake: Pingora's zlib-ng build needs it) before building.

CARGO ?= cargo

.PHONY: demo test deps build bench fuzz

deps:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "installing cmake (needed to build Pingora's zlib-ng)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq cmake >/dev/null; }

build: deps
	$(CARGO) build --release --bin streamguard

demo: build
	./target/release/streamguard demo -c proxy.toml

test: deps
	$(CARGO) test --all-targets -- --test-threads=4

bench: deps
	bash bench/run.sh

fuzz:
	cd fuzz && $(CARGO) +nightly fuzz run sse_parser -- -max_total_time=60
