"""S7's tables (bench/h2.sh): medians over rounds of sg-h2load's runs, as Markdown and JSON."""
import json
import os
import statistics
import sys

raw, out, rev, rounds, nginx = sys.argv[1:6]
runs = [json.load(open(os.path.join(raw, f))) for f in sorted(os.listdir(raw)) if f.endswith(".json")]
values = {}
for run in runs:
    for key, value in run["metrics"].items():
        values.setdefault((run["label"], key), []).append(value)
medians = {f"{label} {key}": statistics.median(v) for (label, key), v in values.items()}


def get(label, key):
    return medians.get(f"{label} {key}")


def fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def proto_name(proto):
    return "HTTP/2" if proto == "h2" else "HTTP/1.1"


lines = [
    "# S7: SSE over HTTP/2 (h2c) and HTTP/1.1",
    "",
    f"`bash bench/h2.sh --rounds {rounds}`; streamguard {rev}; {nginx}; medians of {rounds} "
    "round(s). The proxy runs one worker/thread pinned to core 1; the generator (`sg-h2load`) "
    "and the bench upstream share core 0.",
    "",
    "## Idle memory: userspace RSS growth per open stream, 9,500 streams",
    "",
    "| protocol | streams per connection | KB per stream | streams open |",
    "|---|---|---|---|",
]
per_stream = {}
for proto, per in [("h2", 1), ("h2", 10), ("h2", 100), ("h1", 1)]:
    key = f"{proto}-9500x{per}"
    kb = get("streamguard", f"s7.rss_kb_per_stream@{key}")
    per_stream[(proto, per)] = kb
    opened = get("streamguard", f"s7.open@{key}")
    lines.append(f"| {proto_name(proto)} | {per} | {fmt(kb, 2)} | {fmt(opened, 0)} |")
r1, r100 = per_stream.get(("h2", 1)), per_stream.get(("h2", 100))
if r1 is not None and r100 is not None:
    connection = (r1 - r100) * 100 / 99
    stream = r100 - connection / 100
    lines += [
        "",
        "Fitting `KB per stream = s + c / (streams per connection)` to 1 and 100 streams per "
        f"connection: an HTTP/2 connection costs about **{connection:.1f} KB** (c), each stream "
        f"on it about **{stream:.2f} KB** (s).",
    ]
lines += [
    "",
    "## CPU per event: 1,000 streams x 10 events/s (HTTP/2: 100 streams per connection)",
    "",
    "| proxy | protocol | µs of proxy CPU per event | events/s delivered | proxy CPU, % of a core |",
    "|---|---|---|---|---|",
]
for label in ["streamguard", "nginx"]:
    for proto, per in [("h2", 100), ("h1", 1)]:
        key = f"{proto}-1000x{per}x10"
        lines.append(
            f"| {label} | {proto_name(proto)} | {fmt(get(label, f's7.cpu_us_per_event@{key}'), 2)} "
            f"| {fmt(get(label, f's7.eps@{key}'), 0)} | {fmt(get(label, f's7.cpu_pct_core@{key}'), 1)} |"
        )
with open(out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
with open(out + ".json", "w") as f:
    json.dump({"revision": rev, "rounds": int(rounds), "medians": medians, "runs": runs}, f, indent=1)
print("\n".join(lines))
