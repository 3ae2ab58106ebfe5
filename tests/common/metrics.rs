//! Reading the proxy's `/metrics` (and its memory) from a test.
//!
//! Counters move in the logging phase and stream gauges as a stream's task ends, a moment
//! after the client saw its answer or its close: a test that reads a scrape once right after
//! races the proxy. These helpers poll instead, within a bound, and fail with what they saw.

use std::time::{Duration, Instant};

use super::proxy::{metric, Proxy};
use super::streams::SOON;

/// `name{labels}` in one scrape now (0 when absent; `&[]` totals a labelled family).
pub async fn metric_now(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&proxy.metrics().await, name, labels).unwrap_or(0.0)
}

/// Polls `name{labels}` until `check` holds or `timeout` has passed; its last value, for the
/// caller to assert on with its own message.
pub async fn metric_until(
    proxy: &Proxy,
    name: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
    check: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let value = metric_now(proxy, name, labels).await;
        if check(value) || Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `name{labels}` until `want` holds; fails the test with the last value after
/// `timeout`.
pub async fn wait_metric_within(
    proxy: &Proxy,
    name: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
    want: impl Fn(f64) -> bool,
) -> f64 {
    let value = metric_until(proxy, name, labels, timeout, &want).await;
    assert!(want(value), "{name}{labels:?} stayed at {value}");
    value
}

/// [`wait_metric_within`] for something the proxy does at once ([`SOON`]).
pub async fn wait_metric(
    proxy: &Proxy,
    name: &str,
    labels: &[(&str, &str)],
    want: impl Fn(f64) -> bool,
) -> f64 {
    wait_metric_within(proxy, name, labels, SOON, want).await
}

/// Waits ([`SOON`] at most) until `name{labels}` reads exactly `want`.
pub async fn assert_metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)], want: f64) {
    let got = metric_until(proxy, name, labels, SOON, |v| v == want).await;
    assert_eq!(got, want, "{name}{labels:?}");
}

/// Polls whole scrapes until `check` holds; that scrape, or a failed test after `timeout` that
/// shows the last one's non-zero streamguard samples.
pub async fn wait_metrics_within(
    proxy: &Proxy,
    timeout: Duration,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = proxy.metrics().await;
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what}; last scrape:\n{}",
            text.lines()
                .filter(|l| l.starts_with("streamguard_") && !l.ends_with(" 0"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`wait_metrics_within`] for something the proxy does at once ([`SOON`]).
pub async fn wait_metrics(proxy: &Proxy, what: &str, check: impl Fn(&str) -> bool) -> String {
    wait_metrics_within(proxy, SOON, what, check).await
}

/// The resident set size of process `pid` (the proxy's, mostly), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}
