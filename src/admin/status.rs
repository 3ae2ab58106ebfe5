//! The status snapshot: what the admin status page shows, as one JSON document.
//!
//! A snapshot is every metric's current value (the same numbers `/metrics` serves, so the page
//! and a Prometheus dashboard never disagree) plus what is not a metric: drain state and, only
//! when `[admin] show_users` is on, the users holding the most streams. Rates and the charts of
//! the last minutes are the page's own work, from consecutive snapshots: the proxy keeps no
//! history, and builds a snapshot only while a page is watching.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::proto::{MetricFamily, MetricType};
use serde::Serialize;

use crate::proxy::State;

/// How many stream holders the page lists when `show_users` is on.
const TOP_USERS: usize = 10;

/// One metric sample: its labels and value (a histogram's count and sum, and cumulative
/// buckets).
#[derive(Debug, Serialize)]
pub struct Sample {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<(f64, u64)>,
}

#[derive(Debug, Serialize)]
pub struct Holder {
    pub key: String,
    pub streams: usize,
}

#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Unix milliseconds when it was taken.
    pub at_ms: u64,
    pub version: &'static str,
    pub draining: bool,
    /// Absent unless `[admin] show_users` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_users: Option<Vec<Holder>>,
    /// Metric name -> samples.
    pub metrics: BTreeMap<String, Vec<Sample>>,
}

impl Snapshot {
    pub fn take(state: &State) -> Snapshot {
        let top_users = state.config.admin.show_users.then(|| {
            state
                .limiter
                .top_holders(TOP_USERS)
                .into_iter()
                .map(|(key, streams)| Holder {
                    key: key.to_string(),
                    streams,
                })
                .collect()
        });
        Snapshot {
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            version: env!("CARGO_PKG_VERSION"),
            draining: state.lifecycle.is_draining(),
            top_users,
            metrics: samples(state.metrics.families()),
        }
    }
}

fn samples(families: Vec<MetricFamily>) -> BTreeMap<String, Vec<Sample>> {
    families
        .iter()
        .map(|family| {
            let kind = family.get_field_type();
            let samples = family
                .get_metric()
                .iter()
                .map(|metric| {
                    let labels = metric
                        .get_label()
                        .iter()
                        .map(|pair| (pair.name().to_owned(), pair.value().to_owned()))
                        .collect();
                    match kind {
                        MetricType::COUNTER => {
                            Sample::plain(labels, metric.get_counter().get_value())
                        }
                        MetricType::GAUGE => Sample::plain(labels, metric.get_gauge().get_value()),
                        MetricType::HISTOGRAM => {
                            let histogram = metric.get_histogram();
                            Sample {
                                labels,
                                value: histogram.get_sample_count() as f64,
                                sum: Some(histogram.get_sample_sum()),
                                buckets: histogram
                                    .get_bucket()
                                    .iter()
                                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                                    .collect(),
                            }
                        }
                        // streamguard registers no summaries or untyped metrics.
                        _ => Sample::plain(labels, f64::NAN),
                    }
                })
                .collect();
            (family.name().to_owned(), samples)
        })
        .collect()
}

impl Sample {
    fn plain(labels: BTreeMap<String, String>, value: f64) -> Sample {
        Sample {
            labels,
            value,
            sum: None,
            buckets: Vec::new(),
        }
    }
}
