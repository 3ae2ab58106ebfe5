#!/usr/bin/env bash
# The shared (Redis) limit store's costs, against the in-memory store, on this machine:
#   S5 with Redis: HS256-checked stream setups per proxy-core second and setup p50/p99, with
#     [limits.store] kind = "redis" on a local unix socket, against kind = "memory";
#   lease renewal: proxy CPU and Redis commands per second while 9,500 idle SSE streams (one
#     user each, the most renewal work per stream) are held, against the in-memory store.
# The proxy runs one worker pinned to core 1; generator, upstream and redis-server share core 0.
#   usage: bash bench/fleet.sh [--rounds N] [--skip-build]
# Writes bench/results/<date>-fleet.md; raw files stay in bench/results/tmp/fleet-<stamp>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
ROUNDS=3
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --skip-build) BUILD=0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install redis-server" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then
  (cd "$ROOT" && cargo build --release --bin streamguard)
  cargo build --release --manifest-path "$BENCH/Cargo.toml"
fi
SG=$ROOT/target/release/streamguard
LOADGEN=$BENCH/target/release/sg-loadgen
UPSTREAM=$BENCH/target/release/sg-bench-upstream

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
WORK=$BENCH/results/tmp/fleet-$STAMP
RESULT=$BENCH/results/$(date -u +%Y-%m-%d)-fleet.md
mkdir -p "$WORK"
PROXY_PORT=18080; UP_PORT=18081; ADMIN_PORT=18090
ORIGIN=http://bench.example
HS_SECRET=fleet-bench-hs256-secret-0123456789abcdef
printf '%s' "$HS_SECRET" >"$WORK/jwt-hs.secret"
log() { printf '[fleet %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# ---- redis --------------------------------------------------------------------------------
SOCK=$WORK/redis.sock
taskset -c 0 timeout 3600 redis-server --port 0 --unixsocket "$SOCK" --unixsocketperm 700 \
  --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
REDIS_PID=$!
for _ in $(seq 100); do [ "$(redis-cli -s "$SOCK" ping 2>/dev/null)" = PONG ] && break; sleep 0.05; done
rcli() { redis-cli -s "$SOCK" "$@"; }

# ---- configs: streamguard-on of run.sh, with and without the Redis store -------------------
config() { # $1 = memory | redis
  cat <<EOF
[listen]
address = "127.0.0.1:$PROXY_PORT"
[admin]
address = "127.0.0.1:$ADMIN_PORT"
[upstream]
address = "127.0.0.1:$UP_PORT"
connect_timeout = "5s"
[server]
threads = 1
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
max_streams_per_user = 64
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
for store in memory redis; do
  config $store >"$WORK/sg-$store.toml"
  "$SG" check -c "$WORK/sg-$store.toml" >/dev/null
done

start_bg() { # log-name cpu command...
  local name=$1 cpu=$2; shift 2
  taskset -c "$cpu" timeout 900 "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  LAST=$!
}
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
proxy_pid() { pgrep -P "$1" -f 'streamguard run' | head -n1 || echo "$1"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
commands() { rcli info stats | awk -F: '/^total_commands_processed/ {print $2+0}'; }
evalshas() { rcli info commandstats | awk -F'[:=,]' '/^cmdstat_evalsha/ {print $3+0}'; }

start_pair() { # store
  start_bg "upstream-$1" 0 "$UPSTREAM" --listen 127.0.0.1:$UP_PORT --deadline 900
  UP=$LAST
  wait_port $UP_PORT
  start_bg "proxy-$1" 1 "$SG" run -c "$WORK/sg-$1.toml"
  PROXY=$(proxy_pid "$LAST")
  PROXY_JOB=$LAST
  wait_port $PROXY_PORT
}
stop_pair() { kill "$PROXY_JOB" "$UP" 2>/dev/null || true; wait "$PROXY_JOB" "$UP" 2>/dev/null || true; sleep 1; }

# ---- S5 ------------------------------------------------------------------------------------
for round in $(seq "$ROUNDS"); do
  for store in $(printf 'memory\nredis\n' | shuf); do
    log "round $round: S5 with the $store store"
    start_pair $store
    rcli flushall >/dev/null
    before=$(evalshas)
    taskset -c 0 timeout 60 "$LOADGEN" setup --label "$store" --round "$round" --watch-pid "$PROXY" \
      --concurrency 64 --warm 0.5 --window 5 --url "http://127.0.0.1:$PROXY_PORT/short" --origin "$ORIGIN" \
      --jwt-alg HS256 --jwt-key "$HS_SECRET" --users 1000 --name s5.hs256 --deadline 40 \
      --out "$WORK/r$round-$store-s5.json" 2>>"$WORK/loadgen.log"
    echo "$round $store $(( $(evalshas) - before ))" >>"$WORK/s5-evalsha.txt"
    stop_pair
  done
done

# ---- lease renewal at 9.5k idle streams -----------------------------------------------------
HZ=$(getconf CLK_TCK)
for store in memory redis; do
  log "renewal: 9,500 idle streams with the $store store"
  start_pair $store
  rcli flushall >/dev/null
  taskset -c 0 timeout 200 "$LOADGEN" sse --label "$store" --round 1 --watch-pid "$PROXY" \
    --control 127.0.0.1:$UP_PORT --connect-rate 2500 --settle 1 --warm 0.5 \
    --url "http://127.0.0.1:$PROXY_PORT/sse" --origin "$ORIGIN" --jwt-alg HS256 --jwt-key "$HS_SECRET" \
    --users 9500 --steps 9500 --idle-window 75 --name idle --deadline 150 \
    --out "$WORK/renew-$store.json" 2>>"$WORK/loadgen.log" &
  GEN=$!
  # The ramp takes about 5 s; measure 60 s of the idle window (six renewals at lease/3 = 10 s).
  sleep 12
  c0=$(cpu_ticks "$PROXY"); n0=$(commands); e0=$(evalshas); t0=$(date +%s.%N)
  sleep 60
  c1=$(cpu_ticks "$PROXY"); n1=$(commands); e1=$(evalshas); t1=$(date +%s.%N)
  streams=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^streamguard_streams_active/ {s += $2} END {print s+0}')
  leases=$(rcli --scan --pattern 'streamguard:*:l' | wc -l)
  echo "$store $c0 $c1 $n0 $n1 $e0 $e1 $t0 $t1 $streams $leases" >>"$WORK/renew.txt"
  wait "$GEN" || true
  stop_pair
done

# ---- report --------------------------------------------------------------------------------
python3 - "$WORK" "$HZ" "$ROUNDS" >"$RESULT" <<'EOF'
import glob, json, statistics, sys
work, hz, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
def s5(store, key):
    vals = []
    for f in sorted(glob.glob(f"{work}/r*-{store}-s5.json")):
        m = json.load(open(f)).get("metrics", {})
        if key in m: vals.append(m[key])
    return vals
print(f"# Shared limit store (Redis) benchmark, {rounds} round(s)\n")
print("`bash bench/fleet.sh` (proxy: one worker pinned to core 1; generator, bench upstream and")
print("redis-server share core 0; Redis on a unix socket). Medians of the rounds.\n")
print("| S5: HS256-checked setups, 64 loops, 5 s | memory store | Redis store | Redis / memory |")
print("|---|---|---|---|")
for key, label in [("s5.hs256.setups_per_core_s", "setups per proxy-core second"),
                   ("s5.hs256.cpu_us_per_setup", "proxy CPU per setup (us)"),
                   ("s5.hs256.setups_per_s", "setups per second"),
                   ("s5.hs256.setup_p50_us", "setup p50 (us)"),
                   ("s5.hs256.setup_p99_us", "setup p99 (us)")]:
    m, r = s5("memory", key), s5("redis", key)
    if m and r:
        mm, rm = statistics.median(m), statistics.median(r)
        print(f"| {label} | {mm:,.1f} | {rm:,.1f} | {rm / mm:.2f} |")
ev = [l.split() for l in open(f"{work}/s5-evalsha.txt")]
per = {}
for rnd, store, n in ev:
    per.setdefault(store, []).append(int(n))
for f in sorted(glob.glob(f"{work}/r*-redis-s5.json")):
    pass
print(f"\nScript calls (EVALSHA) per S5 window with the Redis store: {per.get('redis')}; every setup is one.\n")
print("| 9,500 idle SSE streams, 9,500 users, 60 s | memory store | Redis store |")
print("|---|---|---|")
rows = {}
for line in open(f"{work}/renew.txt"):
    store, c0, c1, n0, n1, e0, e1, t0, t1, streams, leases = line.split()
    secs = float(t1) - float(t0)
    rows[store] = dict(cpu=(float(c1) - float(c0)) / hz / secs * 100, cmds=(int(n1) - int(n0)) / secs,
                       evals=(int(e1) - int(e0)) / secs, streams=streams, leases=leases)
m, r = rows.get("memory", {}), rows.get("redis", {})
print(f"| streams held | {m.get('streams')} | {r.get('streams')} |")
print(f"| proxy CPU, % of one core (heartbeats included) | {m.get('cpu', 0):.2f} | {r.get('cpu', 0):.2f} |")
print(f"| Redis commands per second sent by the replica (EVALSHA) | - | {r.get('evals', 0):.1f} |")
print(f"| Redis commands per second, script calls inside included | - | {r.get('cmds', 0):.1f} |")
print(f"| users with leases in Redis | - | {r.get('leases')} |")
EOF
log "wrote $RESULT"
cat "$RESULT"
