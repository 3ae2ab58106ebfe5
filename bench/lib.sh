# Shared by the bench scripts (source it): building and copying the binaries, process
# bookkeeping (every process a script starts is pinned, bounded in time and killed on exit
# whatever happens), and waiting for ports. The sourcing script sets ROOT and BENCH first, and
# LOGS (where `start` writes each process's output) before `start`.

# build_release: streamguard and the bench tools, release builds.
build_release() {
  (cd "$ROOT" && cargo build --release --bin streamguard)
  cargo build --release --manifest-path "$BENCH/Cargo.toml"
}

# revision: the short commit of the tree, +dirty if it has changes ('?' outside git). Read it
# when the binaries are copied: the tree may change during a run, the copies do not.
revision() {
  echo "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+dirty')"
}

# run_copies DIR BINARY...: copies of the built binaries in DIR, so that another build in the
# same target dir cannot swap one mid-run.
run_copies() {
  local dir=$1 b
  shift
  mkdir -p "$dir"
  for b in "$@"; do
    [ -x "$b" ] || { echo "missing binary $b (drop --skip-build)" >&2; exit 1; }
    cp "$b" "$dir/"
  done
}

# Every process started through `start` (or added to PIDS by hand), killed by pid on exit.
PIDS=()
LAST_PID=
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# start NAME CPU SECONDS CMD...: CMD pinned to CPU under a hard timeout, in the background,
# its output in $LOGS/NAME.log; its pid (timeout's) in LAST_PID.
start() {
  local name=$1 cpu=$2 secs=$3
  shift 3
  taskset -c "$cpu" timeout -k 5 "$secs" "$@" >"$LOGS/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# stop PID [SIGNAL]: SIGNAL (default TERM; timeout forwards it to its child), up to 5 s for the
# process to go, then KILL.
stop() {
  local pid=$1 signal=${2:-TERM} i keep=() p
  kill "-$signal" "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# child_of PID: the process `timeout` runs (what /proc should be read for).
child_of() {
  local c i
  for i in $(seq 1 50); do
    c=$(ps -o pid= --ppid "$1" | head -n1 | tr -d ' ')
    [ -n "$c" ] && { echo "$c"; return 0; }
    sleep 0.1
  done
  echo "$1"
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT, at most 10 s.
wait_port() {
  local i
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
