//! Prometheus metrics of the controller (`GET /metrics`, OpenMetrics text).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The metrics, registered once.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconciles stopped by a hub error.
    pub errors: Counter,
    /// Rollouts by phase (`phase` label), set after every pass.
    pub rollouts: Family<Labels, Gauge>,
    /// Gate verdicts (`verdict`: Pass, Fail, Deadline).
    pub verdicts: Family<Labels, Counter>,
    /// Source reads that failed.
    pub source_errors: Counter,
    /// Accepted webhooks.
    pub webhooks: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ringmaster");
        let m = Metrics {
            reconciles: Counter::default(),
            errors: Counter::default(),
            rollouts: Family::default(),
            verdicts: Family::default(),
            source_errors: Counter::default(),
            webhooks: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciles run", m.reconciles.clone());
        registry.register("reconcile_errors", "Reconciles stopped by a hub error", m.errors.clone());
        registry.register("rollouts", "Rollouts by phase", m.rollouts.clone());
        registry.register("gate_verdicts", "Gate verdicts by verdict", m.verdicts.clone());
        registry.register("source_errors", "Source reads that failed", m.source_errors.clone());
        registry.register("webhooks", "Accepted git webhooks", m.webhooks.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The metrics as OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Counts one gate verdict.
    pub fn verdict(&self, verdict: &str) {
        self.verdicts.get_or_create(&vec![("verdict".to_string(), verdict.to_string())]).inc();
    }

    /// Sets the number of rollouts per phase.
    pub fn set_phases(&self, counts: &std::collections::BTreeMap<String, i64>) {
        self.rollouts.clear();
        for (phase, n) in counts {
            self.rollouts.get_or_create(&vec![("phase".to_string(), phase.clone())]).set(*n);
        }
    }
}
