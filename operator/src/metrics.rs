//! Prometheus metrics (prometheus-client): reconciles, errors by kind, reconcile duration,
//! watch health.

use std::time::Instant;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
        MetricType,
    },
    registry::Registry,
};

use crate::{watch_health::WatchHealth, Error};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `app` or `node`.
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    /// [`Error::metric_label`].
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// The name given to [`crate::watch_health::observe`].
    pub watch: &'static str,
}

/// The operator's metrics, registered under the `wasmkube_operator` prefix.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<ControllerLabels, Histogram>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// The controllers' watches (also what `/readyz` checks), exported at each scrape.
    pub watches: WatchHealth,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
            }),
            leader: Gauge::default(),
            watches: WatchHealth::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric into `registry` (which the `/metrics` handler encodes).
    pub fn register(self, registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("wasmkube_operator");
        r.register(
            "reconciles",
            "Reconciliations started",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciliations that failed, by error kind",
            self.errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            self.duration.clone(),
        );
        r.register("leader", "1 while this replica leads", self.leader.clone());
        r.register_collector(Box::new(WatchCollector(self.watches.clone())));
        self
    }

    /// Counts a reconcile and returns a timer that records its duration when dropped.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self
                .duration
                .get_or_create_owned(&ControllerLabels { controller }),
        }
    }

    pub fn error(&self, controller: &'static str, error: &Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller,
                kind: error.metric_label(),
            })
            .inc();
    }
}

/// Drop-based duration recorder.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// `watch_healthy` and `watch_errors_total` by watch, read from [`WatchHealth`] at each scrape
/// (a failing watch recovers by keeping quiet, which no event would set a gauge for).
#[derive(Debug)]
struct WatchCollector(WatchHealth);

impl Collector for WatchCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let watches = self.0.statuses();
        if watches.is_empty() {
            return Ok(());
        }
        {
            let mut healthy = encoder.encode_descriptor(
                "watch_healthy",
                "1 while a watch has listed and is not failing",
                None,
                MetricType::Gauge,
            )?;
            for w in &watches {
                let labels = WatchLabels { watch: w.name };
                ConstGauge::new(i64::from(w.healthy())).encode(healthy.encode_family(&labels)?)?;
            }
        }
        let mut errors = encoder.encode_descriptor(
            "watch_errors",
            "Errors of a watch (list, watch start, watch)",
            None,
            MetricType::Counter,
        )?;
        for w in &watches {
            let labels = WatchLabels { watch: w.name };
            ConstCounter::new(w.errors).encode(errors.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_error_kinds() {
        let mut registry = Registry::default();
        let m = Metrics::default().register(&mut registry);
        drop(m.reconcile("app"));
        m.error("app", &Error::InvalidSpec("x".into()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        assert!(
            out.contains("wasmkube_operator_reconciles_total{controller=\"app\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("wasmkube_operator_reconcile_errors_total{controller=\"app\",kind=\"invalid_spec\"} 1"),
            "{out}"
        );
        assert!(
            out.contains(
                "wasmkube_operator_reconcile_duration_seconds_count{controller=\"app\"} 1"
            ),
            "{out}"
        );
        assert!(
            !out.contains("watch_healthy"),
            "no watches, no series: {out}"
        );
    }

    #[test]
    fn watch_health_is_exported() {
        let mut registry = Registry::default();
        let m = Metrics::default().register(&mut registry);
        m.watches.register("apps");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        assert!(
            out.contains("wasmkube_operator_watch_healthy{watch=\"apps\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("wasmkube_operator_watch_errors_total{watch=\"apps\"} 0"),
            "{out}"
        );
    }
}
