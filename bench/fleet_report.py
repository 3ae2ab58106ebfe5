#!/usr/bin/env python3
"""Turns the raw files of one `bench/fleet.sh` run into bench/results/<date>-fleet.md and .json.

usage: fleet_report.py WORK_DIR OUT.md OUT.json

Inputs in WORK_DIR (written by fleet.sh): the loadgen's JSON of every run, each proxy's
/metrics at the end of a run (`<tag>-metrics-<admin port>.txt`), Redis counters around the
measured windows (`<tag>-redis.txt`, `<tag>-window.txt`: "EVALSHA calls, all commands, Redis
CPU seconds" before and after), and meta.txt. Ratios against the memory store are taken per
round (same machine state) and their median quoted, as bench/run.sh's report does.
"""

import glob
import json
import os
import re
import statistics
import sys

WORK, OUT_MD, OUT_JSON = sys.argv[1:4]
SCENARIOS = ["memory", "redis", "reuse"]
NAMES = {"memory": "memory store", "redis": "Redis store", "reuse": "Redis, 2 reuse_port processes"}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def words(path):
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return None


def prom(tag, name, labels=""):
    """Sum of a Prometheus series over every proxy of a run (labels: a substring to match)."""
    total, seen = 0.0, False
    for path in glob.glob(f"{WORK}/{tag}-metrics-*.txt"):
        for line in open(path):
            m = re.match(r"^([a-z_]+)(\{[^}]*\})?\s+(\S+)$", line.strip())
            if m and m.group(1) == name and labels in (m.group(2) or ""):
                total += float(m.group(3))
                seen = True
    return total if seen else None


def redis_delta(w):
    """(EVALSHA calls, all commands, Redis CPU s) between the two samples of a window."""
    e0, n0, c0, e1, n1, c1 = w[:6]
    return int(e1) - int(e0), int(n1) - int(n0), float(c1) - float(c0)


def fmt(v, digits=1):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def spread(vals, digits=1):
    """median [min-max] of the rounds."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return fmt(vals[0], digits)
    return f"{fmt(statistics.median(vals), digits)} [{fmt(min(vals), digits)}-{fmt(max(vals), digits)}]"


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


out = {"s5": {}, "renewal": {}, "cap": {}, "hold15k": {}}
md = []
meta = open(f"{WORK}/meta.txt").read().strip().splitlines() if os.path.exists(f"{WORK}/meta.txt") else []
md.append("# Shared limit store (Redis) and reuse_port: fleet benchmark\n")
md.extend(f"- {line}" for line in meta)
md.append(
    "- layout: each proxy process runs one worker pinned to core 1 (the two reuse_port processes"
    " share it); the load generator, one bench upstream per proxy process and redis-server"
    " (unix socket, no persistence, nice -5 so it is not queued behind the generator) share core 0"
)
md.append(
    "- proxies: run.sh's streamguard-on (CORS allowlist, HS256 JWT required, limits, heartbeats"
    " 15 s) with `[limits.store] kind = \"memory\"` or `\"redis\"` (lease 30 s, timeout 50 ms)"
)
md.append(
    "- the machine is shared with other builds: single values move by 10-20 % between runs;"
    " quote the per-round ratios, which compare neighbours in time\n"
)

# ---- S5 ----------------------------------------------------------------------------------------
rounds = sorted({int(m.group(1)) for p in glob.glob(f"{WORK}/r*-s5.json")
                 if (m := re.search(r"/r(\d+)-", p))})
per = {sc: {} for sc in SCENARIOS}  # scenario -> metric -> [per round]
ratio = {sc: {} for sc in SCENARIOS if sc != "memory"}
KEYS = [
    ("setups_per_core_s", "setups per proxy-core second", 0),
    ("cpu_us_per_setup", "proxy CPU per setup (us)", 1),
    ("setups_per_s", "setups per second", 0),
    ("proxy_core_pct", "proxy CPU, % of one core", 0),
    ("setup_p50_us", "setup p50 (us)", 0),
    ("setup_p99_us", "setup p99 (us)", 0),
    ("failed", "failed setups", 0),
]
# The same setups from 2 loops: latency without queueing in front of a saturated core.
LAT_KEYS = [
    ("lat_setups_per_s", "2 loops: setups per second", 0),
    ("lat_setup_p50_us", "2 loops: setup p50 (us)", 0),
    ("lat_setup_p99_us", "2 loops: setup p99 (us)", 0),
    ("lat_failed", "2 loops: failed setups", 0),
]
for r in rounds:
    row = {}
    for sc in SCENARIOS:
        tag = f"r{r}-{sc}-s5"
        doc = load(f"{WORK}/{tag}.json") or {}
        m = {k: doc.get("metrics", {}).get(f"s5.hs256.{k}") for k, _, _ in KEYS}
        lat = (load(f"{WORK}/{tag}-lat.json") or {}).get("metrics", {})
        for k, _, _ in LAT_KEYS:
            m[k] = lat.get(f"s5lat.hs256.{k.removeprefix('lat_')}")
        served = prom(tag, "streamguard_requests_total")
        w = words(f"{WORK}/{tag}-redis.txt")
        if w and served:
            evals, cmds, cpu = redis_delta(w)
            m["evalsha_per_setup"] = evals / served
            m["commands_per_setup"] = cmds / served
            m["redis_cpu_us_per_setup"] = cpu * 1e6 / served
        n = prom(tag, "streamguard_store_seconds_count", 'op="admit"')
        s = prom(tag, "streamguard_store_seconds_sum", 'op="admit"')
        if n:
            m["admit_round_trip_us"] = s * 1e6 / n
        m["store_errors"] = prom(tag, "streamguard_store_errors_total")
        if sc == "reuse":
            counts = [sum(float(line.split()[-1]) for line in open(path)
                          if line.startswith("streamguard_requests_total"))
                      for path in glob.glob(f"{WORK}/{tag}-metrics-*.txt")]
            if counts and sum(counts):
                m["busier_process_share"] = max(counts) / sum(counts) * 100
        row[sc] = m
        for k, v in m.items():
            per[sc].setdefault(k, []).append(v)
    base = row.get("memory", {})
    for sc in ratio:
        for k in ("setups_per_core_s", "cpu_us_per_setup", "setup_p50_us", "setup_p99_us"):
            a, b = row.get(sc, {}).get(k), base.get(k)
            if a is not None and b:
                ratio[sc].setdefault(k, []).append(a / b)
        for k in ("setup_p50_us", "setup_p99_us", "cpu_us_per_setup", "lat_setup_p50_us", "lat_setup_p99_us"):
            a, b = row.get(sc, {}).get(k), base.get(k)
            if a is not None and b is not None:
                ratio[sc].setdefault(k + "_added", []).append(a - b)
out["s5"] = {"rounds": rounds, "per_round": per, "ratios_to_memory": ratio}

md.append(f"## S5: HS256-checked stream setups, 64 loops for 5 s, then 2 loops for 4 s ({len(rounds)} rounds)\n")
md.append("Median of the rounds [min-max]; ratios are per round against the memory store of the same round.\n")
md.append("| | " + " | ".join(NAMES[sc] for sc in SCENARIOS) + " |")
md.append("|---|" + "---|" * len(SCENARIOS))
for k, label, d in KEYS + LAT_KEYS:
    md.append(f"| {label} | " + " | ".join(spread(per[sc].get(k, []), d) for sc in SCENARIOS) + " |")
for k, label, d in [
    ("evalsha_per_setup", "Redis script calls (EVALSHA) per setup", 2),
    ("commands_per_setup", "Redis commands per setup (inside the scripts included)", 1),
    ("redis_cpu_us_per_setup", "Redis CPU per setup (us)", 1),
    ("admit_round_trip_us", "admission round trip seen by the proxy, mean (us)", 0),
    ("store_errors", "store errors", 0),
    ("busier_process_share", "requests served by the busier process (%)", 0),
]:
    md.append(f"| {label} | " + " | ".join(spread(per[sc].get(k, []), d) if sc != "memory" else "-"
                                            for sc in SCENARIOS) + " |")
md.append("")
md.append("| per-round ratio or difference against the memory store | " + " | ".join(NAMES[sc] for sc in ratio) + " |")
md.append("|---|" + "---|" * len(ratio))
for k, label, d in [
    ("setups_per_core_s", "setups per proxy-core second, ratio", 2),
    ("cpu_us_per_setup_added", "added proxy CPU per setup (us)", 1),
    ("lat_setup_p50_us_added", "added setup p50, 2 loops (us)", 0),
    ("lat_setup_p99_us_added", "added setup p99, 2 loops (us)", 0),
    ("setup_p50_us_added", "added setup p50, 64 loops (queueing included; us)", 0),
    ("setup_p99_us_added", "added setup p99, 64 loops (queueing included; us)", 0),
]:
    md.append(f"| {label} | " + " | ".join(spread(ratio[sc].get(k, []), d) for sc in ratio) + " |")
md.append("")

# ---- renewal -----------------------------------------------------------------------------------
md.append("## Lease renewal: 9,500 idle SSE streams of 9,500 users, 60 s window\n")
md.append("One process; proxy CPU by schedstat over the window (heartbeats every 15 s included in both);"
          " Redis counters from INFO over the same window.\n")
ren = {}
for store in ("memory", "redis"):
    w = words(f"{WORK}/renew-{store}-window.txt")
    doc = load(f"{WORK}/renew-{store}.json") or {}
    if not w:
        continue
    c0, c1 = int(w[0]), int(w[1])
    t0, t1 = float(w[8]), float(w[9])
    secs = t1 - t0
    evals, cmds, rcpu = redis_delta(w[2:8])
    r = {
        "seconds": secs,
        "proxy_core_pct": (c1 - c0) / 1e9 / secs * 100,
        "loadgen_idle_core_pct": doc.get("metrics", {}).get("idle.cpu_pct_core@9500"),
        "streams_active": int(w[10]),
        "lease_users": int(w[11]),
        "max_leases_per_user": int(w[12]),
        "evalsha_per_s": evals / secs,
        "commands_per_s": cmds / secs,
        "redis_core_pct": rcpu / secs * 100,
        "open": doc.get("metrics", {}).get("hold.open@9500"),
        "failed": doc.get("metrics", {}).get("hold.failed@9500"),
    }
    n = prom(f"renew-{store}", "streamguard_store_seconds_count", 'op="renew"')
    s = prom(f"renew-{store}", "streamguard_store_seconds_sum", 'op="renew"')
    if n:
        r["renew_calls"] = n
        r["renew_round_trip_us"] = s * 1e6 / n
    r["store_errors"] = prom(f"renew-{store}", "streamguard_store_errors_total")
    ren[store] = r
out["renewal"] = ren
m, rd = ren.get("memory", {}), ren.get("redis", {})
md.append("| | memory store | Redis store |")
md.append("|---|---|---|")
for k, label, d in [
    ("streams_active", "streams held (proxy's gauge)", 0),
    ("failed", "streams that failed to open", 0),
    ("proxy_core_pct", "proxy CPU, % of one core (window)", 3),
    ("loadgen_idle_core_pct", "proxy CPU, % of one core (the generator's 70 s idle window)", 3),
    ("evalsha_per_s", "Redis script calls (EVALSHA) per second", 2),
    ("commands_per_s", "Redis commands per second, inside the scripts included", 1),
    ("redis_core_pct", "redis-server CPU, % of one core", 3),
    ("lease_users", "users with a lease set in Redis", 0),
    ("max_leases_per_user", "largest lease set", 0),
    ("renew_calls", "renewal calls over the whole run (proxy's histogram)", 0),
    ("renew_round_trip_us", "renewal round trip, mean (us)", 0),
    ("store_errors", "store errors", 0),
]:
    md.append(f"| {label} | {fmt(m.get(k), d) if k in m else '-'} | {fmt(rd.get(k), d)} |")
if m.get("proxy_core_pct") is not None and rd.get("proxy_core_pct") is not None:
    diff = rd["proxy_core_pct"] - m["proxy_core_pct"]
    ren["renewal_core_pct"] = diff
    md.append(f"\nRenewal's own cost (Redis minus memory store, same window): {diff:.3f} % of one core.\n")

# ---- reuse_port: caps --------------------------------------------------------------------------
md.append("## reuse_port: the per-user cap across two processes\n")
md.append("Two processes on one port, one Redis, `max_streams_per_user = 3`; 200 users open 4 SSE streams"
          " each (800 attempts): exactly 600 should open, 200 be refused with 429, whichever process"
          " each connection landed on.\n")
cap = {}
doc = load(f"{WORK}/cap.json") or {}
held, after = words(f"{WORK}/cap-held.txt"), words(f"{WORK}/cap-after.txt")
status = (doc.get("steps") or [{}])[0].get("status", {})
if held:
    cap = {
        "open": status.get("open"),
        "failed": status.get("failed"),
        "ended_early": status.get("dropped"),
        "active_process_a": int(held[0]),
        "active_process_b": int(held[1]),
        "lease_users": int(held[2]),
        "max_leases_per_user": int(held[3]),
        "cap_rejections": prom("cap", "streamguard_rejections_total"),
    }
if after:
    cap.update(after_active=int(after[0]) + int(after[1]), after_lease_users=int(after[2]))
out["cap"] = cap
md.append("| | value |")
md.append("|---|---|")
for k, label in [
    ("open", "streams open (generator)"),
    ("failed", "refused, by cause (generator)"),
    ("ended_early", "ended early (generator)"),
    ("active_process_a", "streams on process A"),
    ("active_process_b", "streams on process B"),
    ("lease_users", "users with leases in Redis"),
    ("max_leases_per_user", "largest lease set (the cap is 3)"),
    ("cap_rejections", "rejections counted by the two proxies"),
    ("after_active", "streams active after the generator closed them all"),
    ("after_lease_users", "lease sets left in Redis after that"),
]:
    v = cap.get(k)
    md.append(f"| {label} | {json.dumps(v) if isinstance(v, dict) else v} |")
md.append("")

# ---- reuse_port: 15,000 idle streams -------------------------------------------------------------
md.append("## reuse_port: 15,000 idle SSE streams over two processes\n")
md.append("15,000 users, one stream each, Redis store; one process could not hold them (two files per"
          " stream, 20,000 open files per process). RSS and files summed over the two processes.\n")
hold = {}
doc = load(f"{WORK}/hold15k.json") or {}
w = words(f"{WORK}/hold15k-window.txt")
mets = doc.get("metrics", {})
if w:
    evals, cmds, rcpu = redis_delta(w[:6])
    secs = float(w[7]) - float(w[6])
    hold = {
        "open": mets.get("hold.open@15000"),
        "failed": mets.get("hold.failed@15000"),
        "active_process_a": int(w[8]),
        "active_process_b": int(w[9]),
        "lease_users": int(w[10]),
        "rss_kb_per_stream": mets.get("hold.rss_kb_per_stream@15000"),
        "fds_per_stream": mets.get("hold.fds_per_stream@15000"),
        "proxy_core_pct": mets.get("idle.cpu_pct_core@15000"),
        "evalsha_per_s": evals / secs,
        "commands_per_s": cmds / secs,
        "redis_core_pct": rcpu / secs * 100,
        "store_errors": prom("hold15k", "streamguard_store_errors_total"),
    }
out["hold15k"] = hold
md.append("| | value |")
md.append("|---|---|")
for k, label, d in [
    ("open", "streams open", 0),
    ("failed", "streams that failed to open", 0),
    ("active_process_a", "streams on process A", 0),
    ("active_process_b", "streams on process B", 0),
    ("lease_users", "users with leases in Redis", 0),
    ("rss_kb_per_stream", "userspace RSS per stream, both processes (KB)", 2),
    ("fds_per_stream", "open files per stream, both processes", 2),
    ("proxy_core_pct", "CPU of both processes, idle (heartbeats and renewal), % of one core", 3),
    ("evalsha_per_s", "Redis script calls per second (both replicas)", 2),
    ("commands_per_s", "Redis commands per second, inside the scripts included", 1),
    ("redis_core_pct", "redis-server CPU, % of one core", 3),
    ("store_errors", "store errors", 0),
]:
    md.append(f"| {label} | {fmt(hold.get(k), d)} |")
md.append("")
md.append(f"Raw files: `{os.path.relpath(WORK, os.path.dirname(os.path.dirname(OUT_MD)) )}`"
          " (loadgen JSON, /metrics of every proxy, Redis counters, configs, logs).")

with open(OUT_MD, "w") as f:
    f.write("\n".join(md) + "\n")
with open(OUT_JSON, "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
