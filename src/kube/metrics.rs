//! The controller's Prometheus metrics and its `/metrics`, `/healthz` and `/readyz`.
//!
//! - `ringmaster_kube_reconciles_total`, `ringmaster_kube_reconcile_errors_total{error}`
//! - `ringmaster_kube_reconcile_duration_seconds` (histogram)
//! - `ringmaster_rollouts{phase}`: rollouts this replica last saw in each phase
//! - `ringmaster_gate_verdicts_total{verdict}`: gate verdicts newly recorded on a ring
//! - `ringmaster_hub_actions_total{action}`: configuration writes performed
//! - `ringmaster_hub_errors_total{code}`: hub errors that stopped a reconcile
//! - `ringmaster_leader`: 1 while this replica holds the lease

use super::leader::Leadership;
use crate::driver::ReconcileOutcome;
use crate::core::decide::Action;
use crate::resources::{DeviceRolloutStatus, Phase};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

type Labels = Vec<(&'static str, String)>;

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<Labels, Counter>,
    duration: Histogram,
    rollouts: Family<Labels, Gauge>,
    verdicts: Family<Labels, Counter>,
    actions: Family<Labels, Counter>,
    hub_errors: Family<Labels, Counter>,
    leader: Gauge,
    /// namespace/name → phase, behind the `ringmaster_rollouts` gauges.
    phases: Mutex<HashMap<String, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ringmaster");
        let reconciles = Counter::default();
        let errors = Family::<Labels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let rollouts = Family::<Labels, Gauge>::default();
        let verdicts = Family::<Labels, Counter>::default();
        let actions = Family::<Labels, Counter>::default();
        let hub_errors = Family::<Labels, Counter>::default();
        let leader = Gauge::default();
        registry.register("kube_reconciles", "DeviceRollout reconciles started", reconciles.clone());
        registry.register("kube_reconcile_errors", "Reconciles that failed, by error kind", errors.clone());
        registry.register("kube_reconcile_duration_seconds", "Time one reconcile took", duration.clone());
        registry.register("rollouts", "DeviceRollouts by phase", rollouts.clone());
        registry.register("gate_verdicts", "Gate verdicts recorded on a ring", verdicts.clone());
        registry.register("hub_actions", "Configuration writes performed on hubs", actions.clone());
        registry.register("hub_errors", "Hub errors that stopped a reconcile, by IoT Hub error code", hub_errors.clone());
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            rollouts,
            verdicts,
            actions,
            hub_errors,
            leader,
            phases: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer { metrics: self, start: std::time::Instant::now() }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, kind: &str) {
        self.errors.get_or_create(&vec![("error", kind.to_string())]).inc();
    }

    /// Records what one reconcile of `key` (namespace/name) changed.
    pub fn observe(&self, key: &str, last: &DeviceRolloutStatus, outcome: &ReconcileOutcome) {
        for a in &outcome.performed {
            let action = match a {
                Action::Create(_) => "create",
                Action::Update { .. } => "update",
                Action::Delete { .. } => "delete",
            };
            self.actions.get_or_create(&vec![("action", action.to_string())]).inc();
        }
        if let Some(e) = &outcome.error {
            self.hub_errors.get_or_create(&vec![("code", format!("{:?}", e.code))]).inc();
        }
        for (i, ring) in outcome.status.rings.iter().enumerate() {
            let before = last.rings.get(i).filter(|r| r.name == ring.name).and_then(|r| r.verdict);
            if let Some(v) = ring.verdict
                && before != Some(v)
            {
                self.verdicts.get_or_create(&vec![("verdict", format!("{v:?}"))]).inc();
            }
        }
        self.set_phase(key, outcome.status.phase);
    }

    /// A rollout's phase, for the by-phase gauges; `None` forgets the rollout.
    pub fn set_phase(&self, key: &str, phase: Option<Phase>) {
        let mut phases = self.phases.lock();
        match phase {
            Some(p) => phases.insert(key.to_string(), format!("{p:?}")),
            None => phases.remove(key),
        };
        self.rollouts.clear();
        for p in phases.values() {
            self.rollouts.get_or_create(&vec![("phase", p.clone())]).inc();
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The text exposition format.
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
        self.metrics.duration.observe(self.start.elapsed().as_secs_f64());
    }
}

/// What the health endpoints report.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub leader: Leadership,
    /// Set once the API server answered and the DeviceRollout CRD is served.
    pub ready: Arc<AtomicBool>,
}

/// `/metrics`, `/healthz` (the process serves), `/readyz` (the API server answered and
/// the CRD is installed; a standby replica is ready too, it is just not the leader).
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    h.metrics.set_leader(h.leader.is_leader());
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        h.metrics.encode(),
    )
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.ready.load(Ordering::Relaxed) {
        let role = if h.leader.is_leader() { "leader" } else { "standby" };
        (StatusCode::OK, format!("ok ({role})\n"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: the Kubernetes API has not answered yet\n".to_string())
    }
}
