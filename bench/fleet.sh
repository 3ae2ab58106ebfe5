#!/usr/bin/env bash
# The shared (Redis) limit store's costs, against the in-memory store, on this machine:
#   S5 with Redis: HS256-checked stream setups per proxy-core second (64 loops) and setup
#     p50/p99 (2 loops, no queueing), with [limits.store] kind = "redis" on a local unix socket,
#     against kind = "memory", and with two processes sharing the port (listen.reuse_port) and
#     the Redis store;
#   lease renewal: proxy CPU and Redis commands per second while 9,500 idle SSE streams (one
#     user each, the most renewal work per stream) are held, against the in-memory store;
#   reuse_port: two processes on one port and one Redis: that a per-user cap of 3 holds across
#     both (200 users x 4 streams: 600 open, 200 refused), then 15,000 idle streams (more than
#     one process's open files allow) with their RSS per stream and the Redis load.
# Proxies run one worker each, pinned to core 1 (the two reuse_port processes share it, so
# per-core-second numbers compare); generator, upstreams and redis-server share core 0, Redis
# at a higher priority (nice -5) so that it answers like a Redis of its own rather than from
# behind the generator's queue. Every proxy process has its own bench upstream. About 7 minutes
# with the default 5 rounds.
#   usage: bash bench/fleet.sh [--rounds N] [--skip-build]
# Writes bench/results/<date>-fleet.md and .json; raw files stay in bench/results/tmp/fleet-<stamp>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
ROUNDS=5
BUILD=1
COMMAND="bash bench/fleet.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --skip-build) BUILD=0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

# Every process started here is in PIDS, killed on exit whatever happens; build_release and
# wait_port.
source "$BENCH/lib.sh"

command -v redis-server >/dev/null || bash "$ROOT/tests/deps.sh" test
if [ "$BUILD" = 1 ]; then
  build_release
fi
SG=$ROOT/target/release/streamguard
LOADGEN=$BENCH/target/release/sg-loadgen
UPSTREAM=$BENCH/target/release/sg-bench-upstream

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
DATE=$(date -u +%Y-%m-%d)
WORK=$BENCH/results/tmp/fleet-$STAMP
RESULT=$BENCH/results/$DATE-fleet
mkdir -p "$WORK"
PROXY_PORT=18080
ORIGIN=http://bench.example
HS_SECRET=fleet-bench-hs256-secret-0123456789abcdef
printf '%s' "$HS_SECRET" >"$WORK/jwt-hs.secret"
log() { printf '[fleet %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
T0=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- redis --------------------------------------------------------------------------------
SOCK=$WORK/redis.sock
taskset -c 0 nice -n -5 timeout 1800 redis-server --port 0 --unixsocket "$SOCK" --unixsocketperm 700 \
  --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ "$(redis-cli -s "$SOCK" ping 2>/dev/null)" = PONG ] && break; sleep 0.05; done
rcli() { timeout 10 redis-cli -s "$SOCK" "$@"; }
# "<EVALSHA calls> <all commands, those inside scripts included> <Redis CPU seconds>"; the
# INFO calls themselves are in the second number (two per sample, negligible).
redis_counts() {
  { rcli info commandstats; rcli info cpu; } | tr -d '\r' | awk -F'[:=,]' '
    /^cmdstat_evalsha:/ { e = $3 }
    /^cmdstat_/ { n += $3 }
    /^used_cpu_(sys|user):/ { c += $2 }
    END { printf "%.0f %.0f %.3f\n", e, n, c }'
}
# Lease sets in Redis and the largest one ("<users> <max streams of one user>").
lease_sets() {
  rcli --scan --pattern 'streamguard:*:l' | sed 's/^/ZCARD /' | rcli |
    awk '{ n++; if ($1 > m) m = $1 } END { printf "%d %d\n", n, m }'
}

# ---- configs: streamguard-on of run.sh, with the memory or the Redis store ---------------------
config() { # store upstream-port admin-port reuse-port(true|false) max-streams-per-user
  cat <<EOF
[listen]
address = "127.0.0.1:$PROXY_PORT"
reuse_port = $4
[admin]
address = "127.0.0.1:$3"
[upstream]
address = "127.0.0.1:$2"
connect_timeout = "5s"
[server]
threads = 1
drain_delay = "0s"
drain_window = "0s"
drain_timeout = "1s"
[log]
level = "error"
[cors]
allowed_origins = ["$ORIGIN"]
require_origin = true
[auth]
mode = "required"
algorithms = ["HS256"]
secret_file = "$WORK/jwt-hs.secret"
close_on_expiry = true
[sse]
heartbeat = "15s"
stale_after = "0s"
[limits]
max_streams = 19500
max_streams_per_user = $5
connects_per_user = "1000000/minute"
requests_per_ip = "1000000/second"
burst = 100000
[limits.store]
kind = "$1"
EOF
  if [ "$1" = redis ]; then
    printf 'url = "unix://%s"\nlease = "30s"\ntimeout = "50ms"\n' "$SOCK"
  fi
}
# Scenario -> configs (one per process): "memory", "redis" (one process), "reuse" (two
# processes on one port, Redis store), "cap" (the two processes, at most 3 streams per user).
configs() {
  case "$1" in
    memory) echo "$WORK/sg-memory.toml" ;;
    redis) echo "$WORK/sg-redis.toml" ;;
    reuse) echo "$WORK/sg-reuse-a.toml $WORK/sg-reuse-b.toml" ;;
    cap) echo "$WORK/sg-cap-a.toml $WORK/sg-cap-b.toml" ;;
  esac
}
config memory 18081 18090 false 64 >"$WORK/sg-memory.toml"
config redis 18081 18090 false 64 >"$WORK/sg-redis.toml"
config redis 18081 18090 true 64 >"$WORK/sg-reuse-a.toml"
config redis 18082 18091 true 64 >"$WORK/sg-reuse-b.toml"
config redis 18081 18090 true 3 >"$WORK/sg-cap-a.toml"
config redis 18082 18091 true 3 >"$WORK/sg-cap-b.toml"
for f in "$WORK"/sg-*.toml; do "$SG" check -c "$f" >/dev/null; done

setting() { sed -n "s/^address = \"127.0.0.1:\([0-9]*\)\"/\1/p" "$1" | sed -n "${2}p"; } # cfg n -> port
schedstat_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }

# Starts one bench upstream and one proxy per config of the scenario. Sets SG_PIDS (the
# streamguard processes), ADMINS (their admin ports) and JOBS (everything to stop).
start_scenario() { # scenario tag
  SG_PIDS=(); ADMINS=(); JOBS=()
  local cfg up admin job pid
  for cfg in $(configs "$1"); do
    admin=$(setting "$cfg" 2); up=$(setting "$cfg" 3)
    taskset -c 0 timeout 900 "$UPSTREAM" --listen "127.0.0.1:$up" --deadline 900 \
      >"$WORK/$2-upstream-$up.log" 2>&1 &
    PIDS+=($!); JOBS+=($!)
    wait_port "$up" || { log "upstream on $up did not start"; return 1; }
    taskset -c 1 timeout 900 "$SG" run -c "$cfg" >"$WORK/$2-proxy-$admin.log" 2>&1 &
    job=$!
    PIDS+=($job); JOBS+=($job)
    wait_port "$admin" && wait_port "$PROXY_PORT" || { log "proxy $cfg did not start"; return 1; }
    pid=$(pgrep -P "$job" -x streamguard) || { log "no streamguard under $job"; return 1; }
    SG_PIDS+=("$pid"); ADMINS+=("$admin")
  done
}
# Saves every proxy's /metrics as <tag>-metrics-<admin port>.txt.
save_metrics() { # tag
  local a
  for a in "${ADMINS[@]}"; do curl -s --max-time 5 "http://127.0.0.1:$a/metrics" >"$WORK/$1-metrics-$a.txt" || true; done
}
stop_scenario() {
  kill "${JOBS[@]}" 2>/dev/null || true
  wait "${JOBS[@]}" 2>/dev/null || true
  sleep 0.5
}
watch_list() { local IFS=,; echo "${SG_PIDS[*]}"; }
active_streams() { # admin port
  curl -s --max-time 5 "http://127.0.0.1:$1/metrics" | awk '/^streamguard_streams_active/ { s += $2 } END { print s + 0 }'
}

# ---- S5: setups per proxy-core second, memory vs Redis vs two reuse_port processes ---------------
ORDERS=()
for round in $(seq "$ROUNDS"); do
  mapfile -t order < <(printf 'memory\nredis\nreuse\n' | shuf)
  ORDERS+=("round $round: ${order[*]}")
  for sc in "${order[@]}"; do
    log "round $round: S5 with $sc (${#order[@]} scenarios a round)"
    tag=r$round-$sc-s5
    start_scenario "$sc" "$tag" || { stop_scenario; continue; }
    rcli flushall >/dev/null
    before=$(redis_counts)
    taskset -c 0 timeout 60 "$LOADGEN" setup --label "$sc" --round "$round" --watch-pid "$(watch_list)" \
      --concurrency 64 --warm 0.5 --window 5 --url "http://127.0.0.1:$PROXY_PORT/short" --origin "$ORIGIN" \
      --jwt-alg HS256 --jwt-key "$HS_SECRET" --users 1000 --name s5.hs256 --deadline 40 \
      --out "$WORK/$tag.json" 2>>"$WORK/loadgen.log" || log "$tag: loadgen failed (see loadgen.log)"
    echo "$before $(redis_counts)" >"$WORK/$tag-redis.txt"
    save_metrics "$tag" # the proxies' counters over the same run as the Redis counters
    # Latency without queueing: 64 loops saturate a core (the proxy's or the generator's), so
    # their p50 is mostly time in a queue; two loops leave both cores idle most of the time.
    taskset -c 0 timeout 60 "$LOADGEN" setup --label "$sc" --round "$round" --watch-pid "$(watch_list)" \
      --concurrency 2 --warm 0.5 --window 4 --url "http://127.0.0.1:$PROXY_PORT/short" --origin "$ORIGIN" \
      --jwt-alg HS256 --jwt-key "$HS_SECRET" --users 1000 --name s5lat.hs256 --deadline 40 \
      --out "$WORK/$tag-lat.json" 2>>"$WORK/loadgen.log" || log "$tag: loadgen (2 loops) failed (see loadgen.log)"
    stop_scenario
  done
done

# ---- lease renewal at 9,500 idle streams -----------------------------------------------------
for store in memory redis; do
  log "renewal: 9,500 idle streams of 9,500 users with the $store store"
  tag=renew-$store
  start_scenario "$store" "$tag" || { stop_scenario; continue; }
  rcli flushall >/dev/null
  taskset -c 0 timeout 200 "$LOADGEN" sse --label "$store" --round 1 --watch-pid "$(watch_list)" \
    --control 127.0.0.1:18081 --connect-rate 1000 --settle 1 \
    --url "http://127.0.0.1:$PROXY_PORT/sse" --origin "$ORIGIN" --jwt-alg HS256 --jwt-key "$HS_SECRET" \
    --users 9500 --steps 9500 --idle-window 70 --idle-name idle --name hold --deadline 150 \
    --out "$WORK/$tag.json" 2>>"$WORK/loadgen.log" &
  GEN=$!
  PIDS+=($GEN)
  # The ramp takes about 10 s; measure 60 s of the idle window (six renewals at lease / 3).
  sleep 16
  c0=$(schedstat_ns "${SG_PIDS[0]}"); r0=$(redis_counts); t0=$(date +%s.%N)
  sleep 60
  c1=$(schedstat_ns "${SG_PIDS[0]}"); r1=$(redis_counts); t1=$(date +%s.%N)
  echo "$c0 $c1 $r0 $r1 $t0 $t1 $(active_streams "${ADMINS[0]}") $(lease_sets)" >"$WORK/$tag-window.txt"
  wait "$GEN" || log "$tag: loadgen failed (see loadgen.log)"
  save_metrics "$tag"
  stop_scenario
done

# ---- reuse_port: the per-user cap across two processes --------------------------------------
log "reuse_port: 200 users x 4 streams, max_streams_per_user = 3, two processes"
tag=cap
if start_scenario cap "$tag"; then
  rcli flushall >/dev/null
  taskset -c 0 timeout 60 "$LOADGEN" sse --label cap --round 1 --watch-pid "$(watch_list)" \
    --connect-rate 1000 --settle 1 --url "http://127.0.0.1:$PROXY_PORT/sse" --origin "$ORIGIN" \
    --jwt-alg HS256 --jwt-key "$HS_SECRET" --users 200 --steps 800 --idle-window 6 --idle-name capidle \
    --name cap --deadline 40 --out "$WORK/$tag.json" 2>>"$WORK/loadgen.log" &
  GEN=$!
  PIDS+=($GEN)
  sleep 4
  echo "$(active_streams "${ADMINS[0]}") $(active_streams "${ADMINS[1]}") $(lease_sets)" >"$WORK/$tag-held.txt"
  wait "$GEN" || log "$tag: loadgen failed (see loadgen.log)"
  sleep 1
  echo "$(active_streams "${ADMINS[0]}") $(active_streams "${ADMINS[1]}") $(lease_sets)" >"$WORK/$tag-after.txt"
  save_metrics "$tag"
fi
stop_scenario

# ---- reuse_port: 15,000 idle streams over two processes ---------------------------------------
log "reuse_port: 15,000 idle streams of 15,000 users, two processes"
tag=hold15k
if start_scenario reuse "$tag"; then
  rcli flushall >/dev/null
  taskset -c 0 timeout 120 "$LOADGEN" sse --label reuse --round 1 --watch-pid "$(watch_list)" \
    --connect-rate 1000 --settle 1 --url "http://127.0.0.1:$PROXY_PORT/sse" --origin "$ORIGIN" \
    --jwt-alg HS256 --jwt-key "$HS_SECRET" --users 15000 --steps 15000 --idle-window 32 --idle-name idle \
    --name hold --deadline 100 --out "$WORK/$tag.json" 2>>"$WORK/loadgen.log" &
  GEN=$!
  PIDS+=($GEN)
  # A 15 s ramp (1,000 a second: faster, admissions queue behind the generator on the shared
  # core past the 50 ms timeout), then 25 s of the idle window.
  sleep 20
  r0=$(redis_counts); t0=$(date +%s.%N)
  sleep 25
  r1=$(redis_counts); t1=$(date +%s.%N)
  echo "$r0 $r1 $t0 $t1 $(active_streams "${ADMINS[0]}") $(active_streams "${ADMINS[1]}") $(lease_sets)" >"$WORK/$tag-window.txt"
  wait "$GEN" || log "$tag: loadgen failed (see loadgen.log)"
  save_metrics "$tag"
fi
stop_scenario
ELAPSED=$(( $(date +%s) - T0 ))

# ---- report --------------------------------------------------------------------------------
{
  echo "date: $DATE ($STAMP)"
  echo "command: \`$COMMAND\` (from the repository root; $((ELAPSED / 60)) min $((ELAPSED % 60)) s without the build)"
  echo "machine: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores, Linux $(uname -r); load average at start $LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "versions: streamguard $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown), $(redis-server --version | cut -d' ' -f1-3)"
  echo "rounds: ${ORDERS[*]}"
} >"$WORK/meta.txt"
python3 "$BENCH/fleet_report.py" "$WORK" "$RESULT.md" "$RESULT.json"
log "done in ${ELAPSED}s: $RESULT.md"
cat "$RESULT.md"
