//! The one way a metric joins the registry, shared by every group of metrics ([`super::Metrics`]
//! and the operations, store and protocol groups it holds), so none of them imports another
//! for it.

use prometheus::Registry;

/// Registers `metric` and hands it back, so each metric is defined in one expression.
pub(super) fn registered<C>(registry: &Registry, metric: C) -> prometheus::Result<C>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}
