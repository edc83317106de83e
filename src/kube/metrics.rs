//! The controller's `/metrics` ([`crate::metrics`], the same in every mode), `/healthz`
//! and `/readyz`: the routes of [`crate::net::health_routes`], shared with `run`.

use super::leader::Leadership;
use crate::net::{self, Limits};
use axum::Router;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::metrics::Metrics;

/// What the health endpoints report.
#[derive(Clone)]
pub struct Health {
    /// The metrics `/metrics` serves.
    pub metrics: Arc<Metrics>,
    /// Whether this replica leads: a metric, and the role `/readyz` names.
    pub leader: Leadership,
    /// Set once the API server answered and the DeviceRollout CRD is served; false again
    /// while the controller's watch cannot list DeviceRollouts.
    pub ready: Arc<AtomicBool>,
}

/// `/metrics`, `/healthz` (the process serves), `/readyz` (the API server answered and
/// the CRD is installed; a standby replica is ready too, it is just not the leader).
pub fn router(health: Health) -> Router {
    net::health_routes(readiness, metrics).with_state(health)
}

/// Serves [`router`] on `tcp` within the listener bounds of [`crate::net`], until the
/// process ends.
pub async fn serve(tcp: tokio::net::TcpListener, health: Health) -> std::io::Result<()> {
    net::serve(tcp, router(health), Limits::DEFAULT, std::future::pending()).await
}

fn metrics(h: &Health) -> String {
    h.metrics.set_leader(h.leader.is_leader());
    h.metrics.encode()
}

fn readiness(h: &Health) -> Result<String, String> {
    if h.ready.load(Ordering::Relaxed) {
        let role = if h.leader.is_leader() {
            "leader"
        } else {
            "standby"
        };
        Ok(format!("ok ({role})"))
    } else {
        Err("not ready: the Kubernetes API has not answered yet".into())
    }
}
