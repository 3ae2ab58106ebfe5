//! What an operator watches around the process itself: configuration reloads, the drain and the
//! upstream's readiness. The alert rules in `deploy/prometheus/` are written against these.

use prometheus::{Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::registry::registered;

/// How a reload ended: the `result` label of `streamguard_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Ok,
    /// The new files do not validate: the running configuration stays.
    Error,
    /// The new files change a key that only a restart can apply: the running configuration stays.
    RestartRequired,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 3] = [
        ReloadResult::Ok,
        ReloadResult::Error,
        ReloadResult::RestartRequired,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Error => "error",
            ReloadResult::RestartRequired => "restart_required",
        }
    }
}

pub struct OpsMetrics {
    reloads: IntCounterVec,
    last_reload_success: Gauge,
    config_info: IntGaugeVec,
    /// 1 from SIGTERM (or `POST /drain`) on.
    pub draining: IntGauge,
    /// Streams left to end during a drain.
    pub drain_remaining: IntGauge,
    /// 1 while the upstream accepts connections (checked every few seconds).
    pub upstream_up: IntGauge,
}

impl OpsMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<OpsMetrics> {
        let reloads = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "streamguard_config_reloads_total",
                    "Configuration reloads (SIGHUP, POST /reload, a watched file), by result.",
                ),
                &["result"],
            )?,
        )?;
        for result in ReloadResult::ALL {
            reloads.with_label_values(&[result.label()]);
        }
        let metrics = OpsMetrics {
            reloads,
            last_reload_success: registered(
                registry,
                Gauge::new(
                    "streamguard_config_last_reload_success_timestamp_seconds",
                    "When the configuration in force was loaded (start-up or the last good reload).",
                )?,
            )?,
            config_info: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "streamguard_config_info",
                        "The configuration in force: its content hash as a label; always 1.",
                    ),
                    &["hash"],
                )?,
            )?,
            draining: registered(
                registry,
                IntGauge::new(
                    "streamguard_draining",
                    "1 while the process drains (after SIGTERM or POST /drain).",
                )?,
            )?,
            drain_remaining: registered(
                registry,
                IntGauge::new(
                    "streamguard_drain_streams_remaining",
                    "Streams still open during a drain.",
                )?,
            )?,
            upstream_up: registered(
                registry,
                IntGauge::new(
                    "streamguard_upstream_up",
                    "1 while the upstream accepts connections (checked every few seconds).",
                )?,
            )?,
        };
        Ok(metrics)
    }

    pub fn reloaded(&self, result: ReloadResult) {
        self.reloads.with_label_values(&[result.label()]).inc();
    }

    /// Records the configuration now in force: `hash` becomes the only `config_info` series and
    /// the success timestamp moves to now.
    pub fn config_loaded(&self, hash: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        self.last_reload_success.set(now);
    }
}
