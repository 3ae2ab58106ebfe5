//! `sg-loadgen report`: the results of one `bench/run.sh` as Markdown and JSON.
//!
//! Input: every `*.json` written by the load generator in `--dir` (each names its target and
//! round, and holds flat `metrics`), plus `--meta` (a `key: value` text file from run.sh:
//! command, machine, versions, notes). For each metric and target: the median, min and max of
//! the per-round values; for latency metrics also the value minus `direct` of the same round
//! ("added"); for streamguard, the median over rounds of its ratio to nginx and to HAProxy
//! *from the same round* (interleaved rounds cancel slow drifts of a shared machine).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::args::Args;

const ORDER: &[&str] = &[
    "direct",
    "streamguard-on",
    "streamguard-off",
    "nginx",
    "haproxy",
];
const OURS: &[&str] = &["streamguard-on", "streamguard-off"];
const REFS: &[&str] = &["nginx", "haproxy"];

/// metric -> target -> round -> value
type Table = BTreeMap<String, BTreeMap<String, BTreeMap<u64, f64>>>;

pub fn run(args: &Args) -> i32 {
    let Some(dir) = args.str("dir") else {
        eprintln!("report: --dir is required");
        return 2;
    };
    let (table, notes, incomplete) = match load(Path::new(dir)) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("report: {e}");
            return 1;
        }
    };
    let meta = args.str("meta").map(read_meta).unwrap_or_default();
    let table = with_added(table);
    let md = markdown(&table, &meta, &notes, &incomplete);
    let js = json_doc(&table, &meta, &notes, &incomplete);
    let mut code = 0;
    if let Some(p) = args.str("md") {
        if let Err(e) = std::fs::write(p, &md) {
            eprintln!("report: cannot write {p}: {e}");
            code = 1;
        }
    } else {
        print!("{md}");
    }
    if let Some(p) = args.str("json") {
        let text = serde_json::to_string_pretty(&js).unwrap_or_default();
        if let Err(e) = std::fs::write(p, text) {
            eprintln!("report: cannot write {p}: {e}");
            code = 1;
        }
    }
    code
}

type Loaded = (Table, Vec<String>, Vec<String>);

fn load(dir: &Path) -> Result<Loaded, String> {
    let mut table = Table::new();
    let mut notes = Vec::new();
    let mut incomplete = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for path in entries {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(doc) = serde_json::from_str::<Value>(&text) else {
            notes.push(format!("{}: not JSON, skipped", path.display()));
            continue;
        };
        let Some(metrics) = doc["metrics"].as_object() else {
            continue;
        };
        let target = doc["target"].as_str().unwrap_or("unlabeled").to_owned();
        let round = doc["round"].as_u64().unwrap_or(0);
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if doc["incomplete"].as_bool() == Some(true) {
            incomplete.push(file.clone());
        }
        if let Some(ns) = doc["notes"].as_array() {
            for n in ns.iter().filter_map(Value::as_str) {
                notes.push(format!("{file}: {n}"));
            }
        }
        for (name, v) in metrics {
            if let Some(v) = v.as_f64() {
                table
                    .entry(name.clone())
                    .or_default()
                    .entry(target.clone())
                    .or_default()
                    .insert(round, v);
            }
        }
    }
    Ok((table, notes, incomplete))
}

fn read_meta(path: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn is_latency(name: &str) -> bool {
    ["p50_us", "p99_us", "p999_us"]
        .iter()
        .any(|p| name.contains(p))
}

/// Adds `<metric> added` = value - direct's value of the same round, for latency metrics.
fn with_added(mut table: Table) -> Table {
    let mut extra = Table::new();
    for (name, by_target) in &table {
        if !is_latency(name) {
            continue;
        }
        let Some(direct) = by_target.get("direct") else {
            continue;
        };
        for (target, rounds) in by_target.iter().filter(|(t, _)| t.as_str() != "direct") {
            for (round, v) in rounds {
                if let Some(d) = direct.get(round) {
                    extra
                        .entry(format!("{name} added"))
                        .or_default()
                        .entry(target.clone())
                        .or_default()
                        .insert(*round, v - d);
                }
            }
        }
    }
    table.extend(extra);
    table
}

#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn stats(rounds: &BTreeMap<u64, f64>) -> Option<Stats> {
    let v: Vec<f64> = rounds.values().copied().collect();
    Some(Stats {
        median: median(v.clone())?,
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        n: v.len(),
    })
}

/// Median over rounds of ours/reference, both from the same round.
fn ratio(
    by_target: &BTreeMap<String, BTreeMap<u64, f64>>,
    ours: &str,
    reference: &str,
) -> Option<f64> {
    let a = by_target.get(ours)?;
    let b = by_target.get(reference)?;
    let v: Vec<f64> = a
        .iter()
        .filter_map(|(r, x)| b.get(r).filter(|y| **y != 0.0).map(|y| x / y))
        .collect();
    median(v)
}

fn targets(table: &Table) -> Vec<String> {
    let mut seen: Vec<String> = ORDER.iter().map(|s| s.to_string()).collect();
    for by_target in table.values() {
        for t in by_target.keys() {
            if !seen.contains(t) {
                seen.push(t.clone());
            }
        }
    }
    seen.retain(|t| table.values().any(|m| m.contains_key(t)));
    seen
}

fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 || a == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn cell(s: Option<Stats>) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n <= 1 => fmt(s.median),
        Some(s) => format!("{} [{}–{}]", fmt(s.median), fmt(s.min), fmt(s.max)),
    }
}

const SCENARIOS: &[(&str, &str)] = &[
    (
        "s1",
        "S1 idle memory: userspace RSS and open files per idle SSE stream",
    ),
    (
        "s2",
        "S2 fan-out: max events/s with no loss and p99 < 50 ms; proxy CPU per delivered event",
    ),
    (
        "s3",
        "S3 latency (arrival - upstream stamp); `added` = minus direct, same round",
    ),
    (
        "s4",
        "S4 WebSocket: echo round trip, CPU per echoed message, RSS per idle socket",
    ),
    (
        "s5",
        "S5 connection setup: new one-event streams per second (JWT HS256/RS256, none)",
    ),
    (
        "s6",
        "S6 heartbeats: proxy CPU on idle streams (heartbeat every 15 s)",
    ),
    (
        "s2slow",
        "S2 slow clients: 10 ev/s of 4 KiB events, `stalled` = 10 % of the streams stop reading, \
         `none` = the same without; p99 of the reading streams, proxy CPU per delivered event, \
         the upstream's longest wait on a write (`upstream_stall_us`)",
    ),
];

/// The most the app may wait on a write with stalled clients behind streamguard (`skip`): "a
/// few milliseconds".
const SLOW_STALL_LIMIT_US: f64 = 5_000.0;

/// One check from the targets, judged on medians.
struct Check {
    what: String,
    ours: Option<f64>,
    reference: Option<f64>,
    verdict: &'static str,
}

fn med(table: &Table, metric: &str, target: &str) -> Option<f64> {
    table
        .get(metric)?
        .get(target)
        .and_then(stats)
        .map(|s| s.median)
}

/// The metric with `prefix` whose `@N` is largest (steps differ between quick and full runs).
fn largest_step(table: &Table, prefix: &str, suffix: &str) -> Option<String> {
    table
        .keys()
        .filter(|k| k.starts_with(prefix) && k.ends_with(suffix) && !k.contains("churn"))
        .max_by_key(|k| {
            k[prefix.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .cloned()
}

fn checks(table: &Table) -> Vec<Check> {
    let on = "streamguard-on";
    let mut out = Vec::new();
    let mut compare = |what: String,
                       metric: Option<String>,
                       reference: &str,
                       lower_is_better: bool| {
        let Some(m) = metric else { return };
        let a = med(table, &m, on);
        let b = med(table, &m, reference);
        let verdict = match (a, b) {
            (Some(a), Some(b)) if (lower_is_better && a <= b) || (!lower_is_better && a > b) => {
                "met"
            }
            (Some(_), Some(_)) => "NOT met",
            _ => "no data",
        };
        out.push(Check {
            what: format!("{what} (`{m}`, streamguard-on vs {reference})"),
            ours: a,
            reference: b,
            verdict,
        });
    };
    compare(
        "S1 memory per idle stream at most nginx's".into(),
        largest_step(table, "s1.rss_kb_per_stream@", ""),
        "nginx",
        true,
    );
    compare(
        "S2 CPU per event at 10 ev/s no worse than nginx's".into(),
        table
            .keys()
            .find(|k| k.starts_with("s2.cpu_us_per_event@") && k.ends_with("x10"))
            .cloned(),
        "nginx",
        true,
    );
    for k in table
        .keys()
        .filter(|k| k.starts_with("s3.p99_us@") && k.ends_with(" added"))
    {
        compare(
            "S3 added p99 no worse than nginx's".into(),
            Some(k.clone()),
            "nginx",
            true,
        );
    }
    compare(
        "S5 JWT-checked setups per proxy-core second above HAProxy's".into(),
        Some("s5.hs256.setups_per_core_s".into()).filter(|m| table.contains_key(m)),
        "haproxy",
        false,
    );
    compare(
        "S5 RS256 setups per proxy-core second above HAProxy's".into(),
        Some("s5.rs256.setups_per_core_s".into()).filter(|m| table.contains_key(m)),
        "haproxy",
        false,
    );
    if let Some(m) = largest_step(table, "s2slow.stalled.upstream_stall_us@", "") {
        let v = med(table, &m, on);
        out.push(Check {
            what: format!(
                "S2 slow: with 10 % of the streams stalled the app never waits more than a few ms \
                 on a write (`{m}`, streamguard-on with skip; reference nginx)"
            ),
            ours: v,
            reference: med(table, &m, "nginx"),
            verdict: match v {
                Some(v) if v < SLOW_STALL_LIMIT_US => "met",
                Some(_) => "NOT met",
                None => "no data",
            },
        });
    }
    if let Some(m) = largest_step(table, "s6.cpu_pct_core@", "") {
        let v = med(table, &m, on);
        out.push(Check {
            what: format!("S6 heartbeat CPU under 1 % of one core (`{m}`)"),
            ours: v,
            reference: Some(1.0),
            verdict: match v {
                Some(v) if v < 1.0 => "met",
                Some(_) => "NOT met",
                None => "no data",
            },
        });
    }
    out
}

fn markdown(
    table: &Table,
    meta: &[(String, String)],
    notes: &[String],
    incomplete: &[String],
) -> String {
    let targets = targets(table);
    let mut md = String::new();
    let date = meta
        .iter()
        .find(|(k, _)| k == "date")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let _ = writeln!(md, "# streamguard benchmark {date}\n");
    for (k, v) in meta.iter().filter(|(k, _)| k != "date") {
        let _ = writeln!(md, "- **{k}**: {v}");
    }
    let rounds = table
        .values()
        .flat_map(|m| m.values().flat_map(|r| r.keys().copied()))
        .collect::<std::collections::BTreeSet<u64>>();
    let _ = writeln!(
        md,
        "\nCells: median [min–max] over {} round(s). Ratios: median over rounds of \
         streamguard / reference from the same round (< 1 = streamguard lower).\n",
        rounds.len()
    );

    let _ = writeln!(md, "## Targets from the issue\n");
    let _ = writeln!(
        md,
        "| check | streamguard-on | reference | verdict |\n|---|---|---|---|"
    );
    for c in checks(table) {
        let f = |v: Option<f64>| v.map(fmt).unwrap_or_else(|| "–".into());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.what,
            f(c.ours),
            f(c.reference),
            c.verdict
        );
    }

    let mut ratio_cols = Vec::new();
    for o in OURS {
        for r in REFS {
            if targets.iter().any(|t| t == o) && targets.iter().any(|t| t == r) {
                ratio_cols.push((*o, *r));
            }
        }
    }
    for (prefix, title) in SCENARIOS {
        let names: Vec<&String> = table
            .keys()
            .filter(|k| k.starts_with(&format!("{prefix}.")))
            .collect();
        if names.is_empty() {
            continue;
        }
        let _ = writeln!(md, "\n## {title}\n");
        let mut header = String::from("| metric |");
        let mut rule = String::from("|---|");
        for t in &targets {
            let _ = write!(header, " {t} |");
            rule.push_str("---|");
        }
        for (o, r) in &ratio_cols {
            let short = o.trim_start_matches("streamguard-");
            let _ = write!(header, " {short}/{r} |");
            rule.push_str("---|");
        }
        let _ = writeln!(md, "{header}\n{rule}");
        for name in names {
            let by_target = &table[name];
            let mut row = format!("| `{name}` |");
            for t in &targets {
                let _ = write!(row, " {} |", cell(by_target.get(t).and_then(stats)));
            }
            for (o, r) in &ratio_cols {
                let _ = write!(
                    row,
                    " {} |",
                    ratio(by_target, o, r)
                        .map(fmt)
                        .unwrap_or_else(|| "–".into())
                );
            }
            let _ = writeln!(md, "{row}");
        }
    }
    let other: Vec<&String> = table
        .keys()
        .filter(|k| {
            !SCENARIOS
                .iter()
                .any(|(p, _)| k.starts_with(&format!("{p}.")))
        })
        .collect();
    if !other.is_empty() {
        let _ = writeln!(md, "\n## Other metrics\n");
        for name in other {
            let _ = writeln!(md, "- `{name}`: {:?}", table[name]);
        }
    }
    if !incomplete.is_empty() || !notes.is_empty() {
        let _ = writeln!(md, "\n## Run notes\n");
        for f in incomplete {
            let _ = writeln!(md, "- {f}: hit its deadline, partial results");
        }
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

fn json_doc(
    table: &Table,
    meta: &[(String, String)],
    notes: &[String],
    incomplete: &[String],
) -> Value {
    let mut metrics = Map::new();
    for (name, by_target) in table {
        let mut m = Map::new();
        for (t, rounds) in by_target {
            let s = stats(rounds);
            m.insert(
                t.clone(),
                json!({
                    "rounds": rounds.iter().map(|(r, v)| (r.to_string(), json!(v))).collect::<Map<_, _>>(),
                    "median": s.map(|s| s.median), "min": s.map(|s| s.min), "max": s.map(|s| s.max),
                }),
            );
        }
        let mut ratios = Map::new();
        for o in OURS {
            for r in REFS {
                if let Some(x) = ratio(by_target, o, r) {
                    ratios.insert(format!("{o}/{r}"), json!(x));
                }
            }
        }
        metrics.insert(name.clone(), json!({"targets": m, "ratios": ratios}));
    }
    let checks: Vec<Value> = checks(table)
        .into_iter()
        .map(|c| json!({"check": c.what, "streamguard_on": c.ours, "reference": c.reference, "verdict": c.verdict}))
        .collect();
    json!({
        "meta": meta.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>(),
        "checks": checks,
        "metrics": metrics,
        "notes": notes,
        "incomplete": incomplete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_rounds_and_take_the_median() {
        let mut by: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
        by.insert(
            "streamguard-on".into(),
            [(1, 10.0), (2, 30.0), (3, 8.0)].into(),
        );
        by.insert("nginx".into(), [(1, 20.0), (2, 10.0), (4, 1.0)].into());
        // Round 3 and 4 have no partner; ratios 0.5 and 3.0 -> median 1.75.
        assert_eq!(ratio(&by, "streamguard-on", "nginx"), Some(1.75));
    }

    #[test]
    fn added_latency_subtracts_direct_of_the_same_round() {
        let mut t = Table::new();
        let m = t.entry("s3.p99_us@1000x1".into()).or_default();
        m.insert("direct".into(), [(1, 100.0), (2, 200.0)].into());
        m.insert("nginx".into(), [(1, 150.0), (2, 260.0), (3, 999.0)].into());
        let t = with_added(t);
        let added = &t["s3.p99_us@1000x1 added"]["nginx"];
        assert_eq!(added, &BTreeMap::from([(1, 50.0), (2, 60.0)]));
    }
}
