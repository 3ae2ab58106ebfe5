# The two quick-start commands (README): `make demo` and `make test`. Both install what a fresh
# Debian machine lacks (tests/deps.sh) before building.

CARGO ?= cargo
# Where rustup puts cargo when `tests/deps.sh` had to install it.
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: demo test deps test-deps build bench fuzz

# What the build needs (cmake, Rust); `test-deps` adds every tool a test runs. Both probe first
# and install only what is missing (see tests/deps.sh).
deps:
	@bash tests/deps.sh build

test-deps:
	@bash tests/deps.sh test

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
