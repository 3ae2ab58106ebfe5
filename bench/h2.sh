#!/usr/bin/env bash
# S7: SSE over HTTP/2 against HTTP/1.1, streamguard and nginx (`listen ... http2`), h2c.
#
#   bash bench/h2.sh                 # 3 interleaved rounds (about 10 minutes on 2 cores)
#   bash bench/h2.sh --rounds 1 --skip-build
#
# Per round, each case on a fresh upstream and proxy, in a shuffled order:
# - memory: 9,500 idle SSE streams over HTTP/2 with 1, 10 and 100 streams per connection, and
#   over HTTP/1.1 (streamguard): the proxy's userspace RSS growth per stream;
# - CPU: 1,000 streams at 10 events/s each, over HTTP/2 (100 streams per connection) and over
#   HTTP/1.1, through streamguard and through nginx: the proxy's CPU per delivered event.
# h2c (prior knowledge) on both proxies keeps TLS, which both protocols pay for, out of it.
# Writes bench/results/<date>-h2.md and .json; raw runs and logs in bench/results/tmp/<stamp>-h2/.
# nginx must be installed (bash bench/run.sh installs it).
set -euo pipefail

main() {
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
ROUNDS=3
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --skip-build) BUILD=0 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done
command -v nginx >/dev/null || { echo "nginx is missing: bash bench/run.sh installs it" >&2; exit 1; }

IDLE_N=9500
IDLE_PERS="1 10 100"
RATE_N=1000; RATE=10; RATE_PER=100; WARM=3; WINDOW=10
CONNECT_RATE=2500
PROXY_PORT=18080; UP_PORT=18081; ADMIN_PORT=18090
PROXY_CPU=1; GEN_CPU=0
DATE=$(date -u +%Y-%m-%d)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUTDIR=$BENCH/results
WORK=$OUTDIR/tmp/$STAMP-h2
RAW=$WORK/raw; LOGS=$WORK/logs
mkdir -p "$RAW" "$LOGS" "$WORK/nginx/tmp" "$WORK/bin"
log() { printf '[bench-h2 %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Building and run copies, process bookkeeping (start, stop, child_of, cleanup on exit), wait_port.
source "$BENCH/lib.sh"

if [ "$BUILD" = 1 ]; then
  build_release
fi
SG_REVISION=$(revision)
run_copies "$WORK/bin" "$ROOT/target/release/streamguard" "$BENCH/target/release/sg-h2load" \
  "$BENCH/target/release/sg-bench-upstream"
SG=$WORK/bin/streamguard
H2LOAD=$WORK/bin/sg-h2load
UPSTREAM=$WORK/bin/sg-bench-upstream

# streamguard as streamguard-off in run.sh (auth off, no heartbeats, no limits), h2c on for the
# HTTP/2 cases.
cat >"$WORK/sg.toml" <<CONF
[listen]
address = "127.0.0.1:$PROXY_PORT"
h2c = true
[admin]
address = "127.0.0.1:$ADMIN_PORT"
[upstream]
address = "127.0.0.1:$UP_PORT"
connect_timeout = "5s"
[server]
threads = 1
[log]
level = "error"
[auth]
mode = "off"
[sse]
heartbeat = "0s"
stale_after = "0s"
CONF
# HTTP/1.1 cases run without h2c: looking for the preface costs every HTTP/1.1 connection
# about 1.3 KB more (measured), which is h2c's price, not HTTP/1.1's.
grep -v '^h2c = true$' "$WORK/sg.toml" >"$WORK/sg-h1.toml"
for c in sg sg-h1; do "$SG" check -c "$WORK/$c.toml" >"$LOGS/check-$c.log"; done

# nginx as in run.sh; HTTP/2 is h2c with prior knowledge on its plain listener (`listen ...
# http2`, which nginx 1.25 spells `http2 on`).
nginx_conf() { # $1: listen parameters after the address
  cat <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
master_process on;
user root;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log crit;
events { worker_connections 19900; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  http2_max_concurrent_streams 128;
  upstream bench { server 127.0.0.1:$UP_PORT; }
  server {
    listen 127.0.0.1:$PROXY_PORT backlog=4096$1;
    location / {
      proxy_pass http://bench;
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_set_header Connection "";
      proxy_read_timeout 1h;
    }
  }
}
CONF
}
nginx_conf " http2" >"$WORK/nginx-h2.conf"
nginx_conf "" >"$WORK/nginx-h1.conf"
for c in nginx-h2 nginx-h1; do
  nginx -t -c "$WORK/$c.conf" -e "$WORK/nginx/error.log" >"$LOGS/check-$c.log" 2>&1
done

run_case() { # TARGET PROTO N PER RATE ROUND
  local target=$1 proto=$2 n=$3 per=$4 rate=$5 round=$6 name up proxy pid
  name="r$round-$target-$proto-${n}x$per-r$rate"
  start "$name-upstream" $GEN_CPU 300 "$UPSTREAM" --listen 127.0.0.1:$UP_PORT --deadline 300
  up=$LAST_PID
  wait_port $UP_PORT || { log "upstream did not start"; stop "$up"; return 1; }
  case "$target" in
    streamguard) start "$name-proxy" $PROXY_CPU 300 "$SG" run -c "$WORK/sg$([ "$proto" = h1 ] && echo -h1).toml" ;;
    nginx) start "$name-proxy" $PROXY_CPU 300 nginx -c "$WORK/nginx-$proto.conf" -e "$WORK/nginx/error.log" ;;
  esac
  proxy=$LAST_PID
  pid=$(child_of "$proxy")
  wait_port $PROXY_PORT || { log "$target did not start"; stop "$proxy" INT; stop "$up"; return 1; }
  sleep 0.5
  log "round $round: $target $proto: $n streams, $per per connection, $rate events/s"
  taskset -c $GEN_CPU timeout -k 5 120 "$H2LOAD" --proto "$proto" --addr 127.0.0.1:$PROXY_PORT \
    --n "$n" --per "$per" --watch-pid "$pid" --control 127.0.0.1:$UP_PORT --rate "$rate" \
    --warm $WARM --window $WINDOW --connect-rate $CONNECT_RATE --label "$target" --round "$round" \
    --out "$RAW/$name.json" >>"$LOGS/h2load.log" 2>&1 || log "sg-h2load exited $? ($name)"
  # SIGINT: a fast stop for both proxies (SIGTERM would start streamguard's drain).
  stop "$proxy" INT
  stop "$up"
}

for round in $(seq 1 "$ROUNDS"); do
  cases=()
  for per in $IDLE_PERS; do cases+=("streamguard h2 $IDLE_N $per 0"); done
  cases+=("streamguard h1 $IDLE_N 1 0")
  cases+=("streamguard h2 $RATE_N $RATE_PER $RATE" "streamguard h1 $RATE_N 1 $RATE")
  cases+=("nginx h2 $RATE_N $RATE_PER $RATE" "nginx h1 $RATE_N 1 $RATE")
  while read -r c; do
    # shellcheck disable=SC2086
    run_case $c "$round" || true
  done < <(printf '%s\n' "${cases[@]}" | shuf)
done

python3 "$BENCH/h2_report.py" "$RAW" "$OUTDIR/$DATE-h2" "$SG_REVISION" "$ROUNDS" "$(nginx -v 2>&1)"
}
main "$@"
