//! The controller's `/metrics` ([`crate::metrics`], the same in every mode), `/healthz`
//! and `/readyz`.

use super::leader::Leadership;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::metrics::Metrics;

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
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.ready.load(Ordering::Relaxed) {
        let role = if h.leader.is_leader() {
            "leader"
        } else {
            "standby"
        };
        (StatusCode::OK, format!("ok ({role})\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the Kubernetes API has not answered yet\n".to_string(),
        )
    }
}
