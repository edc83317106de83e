//! The controller's Prometheus metrics, the same in every mode (`run --kube`, `--dir`,
//! `--git`), served as OpenMetrics text on `/metrics`:
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `ringmaster_reconciles_total` | | reconciles started |
//! | `ringmaster_reconcile_errors_total` | `error` | reconciles that failed before the hub was reached (`kube`, `hub_config`, …) |
//! | `ringmaster_reconcile_duration_seconds` | | time one reconcile took (histogram) |
//! | `ringmaster_rollouts` | `phase` | rollouts in each phase (`Pending`: not reconciled yet) |
//! | `ringmaster_gate_verdicts_total` | `verdict` | gate verdicts newly recorded on a ring |
//! | `ringmaster_hub_requests_total` | `operation`, `code` | requests to hubs by operation (`list`, `query`, `create`, `update`, `delete`) and HTTP status |
//! | `ringmaster_hub_request_duration_seconds` | `operation` | their durations, the client's wait for its request budget included (histogram) |
//! | `ringmaster_hub_actions_total` | `action` | configuration writes done |
//! | `ringmaster_hub_errors_total` | `code` | hub errors that stopped a reconcile, by IoT Hub error code |
//! | `ringmaster_drift_total` | `kind` | drift newly found on a hub: `modified`, `labels`, `deleted`, `shadowed` (`docs/rollouts.md`, "Drift") |
//! | `ringmaster_source_errors_total` | | source reads (directory scan, git fetch) that failed |
//! | `ringmaster_webhooks_total` | | accepted git webhooks |
//! | `ringmaster_leader` | | 1 while this replica holds the leader lease (`--kube`) |

use crate::core::decide::Action;
use crate::driver::{HubRequest, ReconcileOutcome};
use crate::resources::{DeviceRolloutStatus, Phase};
use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;

type Labels = Vec<(&'static str, String)>;

fn durations() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The metrics, registered once per process.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<Labels, Counter>,
    duration: Histogram,
    rollouts: Family<Labels, Gauge>,
    verdicts: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    request_duration: Family<Labels, Histogram, fn() -> Histogram>,
    actions: Family<Labels, Counter>,
    hub_errors: Family<Labels, Counter>,
    drift: Family<Labels, Counter>,
    source_errors: Counter,
    webhooks: Counter,
    leader: Gauge,
    /// Rollout key → the phase it is counted under in `rollouts`.
    phases: Mutex<HashMap<String, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ringmaster");
        let m = Metrics {
            registry: Registry::default(),
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: durations(),
            rollouts: Family::default(),
            verdicts: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(durations as fn() -> Histogram),
            actions: Family::default(),
            hub_errors: Family::default(),
            drift: Family::default(),
            source_errors: Counter::default(),
            webhooks: Counter::default(),
            leader: Gauge::default(),
            phases: Mutex::default(),
        };
        registry.register("reconciles", "Reconciles started", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed before the hub was reached, by error kind",
            m.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            m.duration.clone(),
        );
        registry.register("rollouts", "Rollouts by phase", m.rollouts.clone());
        registry.register(
            "gate_verdicts",
            "Gate verdicts newly recorded on a ring",
            m.verdicts.clone(),
        );
        registry.register(
            "hub_requests",
            "Requests to hubs by operation and HTTP status",
            m.requests.clone(),
        );
        registry.register(
            "hub_request_duration_seconds",
            "Hub request durations by operation",
            m.request_duration.clone(),
        );
        registry.register(
            "hub_actions",
            "Configuration writes done on hubs",
            m.actions.clone(),
        );
        registry.register(
            "hub_errors",
            "Hub errors that stopped a reconcile, by IoT Hub error code",
            m.hub_errors.clone(),
        );
        registry.register(
            "drift",
            "Drift newly found on a hub, by kind",
            m.drift.clone(),
        );
        registry.register(
            "source_errors",
            "Source reads that failed",
            m.source_errors.clone(),
        );
        registry.register("webhooks", "Accepted git webhooks", m.webhooks.clone());
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            m.leader.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: std::time::Instant::now(),
        }
    }

    /// Counts a reconcile that failed before the hub was reached.
    pub fn reconcile_failed(&self, kind: &str) {
        self.errors
            .get_or_create(&vec![("error", kind.to_string())])
            .inc();
    }

    /// Counts hub requests made outside a reconcile (a listing shared by a round).
    pub fn hub_requests(&self, requests: &[HubRequest]) {
        for r in requests {
            self.requests
                .get_or_create(&vec![
                    ("operation", r.operation.to_string()),
                    ("code", r.status.to_string()),
                ])
                .inc();
            self.request_duration
                .get_or_create(&vec![("operation", r.operation.to_string())])
                .observe(r.seconds);
        }
    }

    /// Records what one reconcile of `key` (namespace/name) did and changed.
    pub fn observe(&self, key: &str, last: &DeviceRolloutStatus, outcome: &ReconcileOutcome) {
        self.hub_requests(&outcome.requests);
        for a in &outcome.performed {
            let action = match a {
                Action::Create(_) => "create",
                Action::Update { .. } => "update",
                Action::Delete { .. } => "delete",
            };
            self.actions
                .get_or_create(&vec![("action", action.to_string())])
                .inc();
        }
        for d in outcome.drift.iter().filter(|d| d.new) {
            self.drift
                .get_or_create(&vec![("kind", d.kind.label().to_string())])
                .inc();
        }
        if let Some(e) = &outcome.error {
            self.hub_errors
                .get_or_create(&vec![("code", e.code.name().to_string())])
                .inc();
        }
        for (i, ring) in outcome.status.rings.iter().enumerate() {
            let before = last
                .rings
                .get(i)
                .filter(|r| r.name == ring.name)
                .and_then(|r| r.verdict);
            if let Some(v) = ring.verdict
                && before != Some(v)
            {
                self.verdicts
                    .get_or_create(&vec![("verdict", format!("{v:?}"))])
                    .inc();
            }
        }
        self.set_phase(key, Some(outcome.status.phase));
    }

    /// A rollout's phase for the by-phase gauges (`Some(None)`: not reconciled yet,
    /// counted as `Pending`); `None` forgets the rollout.
    pub fn set_phase(&self, key: &str, phase: Option<Option<Phase>>) {
        let label = phase.map(|p| p.map_or_else(|| "Pending".to_string(), |p| format!("{p:?}")));
        let mut phases = self.phases.lock();
        let old = match &label {
            Some(l) => phases.insert(key.to_string(), l.clone()),
            None => phases.remove(key),
        };
        if old == label {
            return;
        }
        if let Some(o) = old {
            self.rollouts.get_or_create(&vec![("phase", o)]).dec();
        }
        if let Some(l) = label {
            self.rollouts.get_or_create(&vec![("phase", l)]).inc();
        }
    }

    /// Counts a failed source read.
    pub fn source_error(&self) {
        self.source_errors.inc();
    }

    /// Counts an accepted webhook.
    pub fn webhook(&self) {
        self.webhooks.inc();
    }

    /// Sets `ringmaster_leader`: 1 while this replica holds the leader lease, else 0.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }
}

/// Observes the reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: std::time::Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_move_between_gauges_and_requests_count_by_status() {
        let m = Metrics::default();
        m.set_phase("a/x", Some(None));
        m.set_phase("a/y", Some(Some(Phase::Progressing)));
        m.set_phase("a/x", Some(Some(Phase::Progressing)));
        m.set_phase("a/x", Some(Some(Phase::Progressing)));
        m.set_phase("a/y", None);
        m.hub_requests(&[
            HubRequest {
                operation: "list",
                status: 200,
                seconds: 0.002,
            },
            HubRequest {
                operation: "list",
                status: 429,
                seconds: 0.001,
            },
            HubRequest {
                operation: "list",
                status: 200,
                seconds: 0.003,
            },
        ]);
        let text = m.encode();
        for line in [
            "ringmaster_rollouts{phase=\"Pending\"} 0",
            "ringmaster_rollouts{phase=\"Progressing\"} 1",
            "ringmaster_hub_requests_total{operation=\"list\",code=\"200\"} 2",
            "ringmaster_hub_requests_total{operation=\"list\",code=\"429\"} 1",
            "ringmaster_hub_request_duration_seconds_count{operation=\"list\"} 3",
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
    }
}
