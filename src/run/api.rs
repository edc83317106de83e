//! The controller's HTTP API (`ringmaster run`, default `127.0.0.1:9090`).
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/rollouts` | every rollout with its status, the source files' problems, the source revision, `sourceError` (why the last read of the source failed; `null` once one succeeds) |
//! | `GET /api/v1/rollouts/{namespace}/{name}` | one rollout |
//! | `POST /api/v1/rollouts/{namespace}/{name}/{promote\|pause\|resume\|abort\|retry}` | queue an operator request (bearer token) |
//! | `GET /api/v1/devicerings` | every `DeviceRings` of the source with what its last pass found (devices per ring and stratum, pending writes, conflicts, hand-set tags, conditions), `sourceError`/`hubError` ([`super::rings`]) |
//! | `GET /api/v1/devicerings/{namespace}/{name}` | one `DeviceRings` |
//! | `POST /webhook/git` | fetch now (GitHub-style `X-Hub-Signature-256` and `X-GitHub-Delivery`; a delivery id seen before is refused) |
//! | `/healthz`, `/readyz`, `/metrics` | liveness, readiness (first source read done), Prometheus |
//! | `/console/` | the operator console ([`crate::console`], backed by [`super::console`]) |
//!
//! Writes need `Authorization: Bearer <token>` with the token given to `run` by
//! `--api-token-env` or `--api-token-file`. Without a configured token the API is
//! read-only: every write answers 403 and says how to enable writes.

use crate::net::{self, Limits};
use crate::resources::{Operation, OperationKind};
use crate::run::rings::RingsEntry;
use crate::run::store::StateStore;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

pub use crate::metrics::Metrics;

/// How many webhook delivery ids are remembered to refuse replays (the oldest is
/// forgotten first). A replay needs a captured delivery and as many newer genuine ones
/// to get through.
pub const REMEMBERED_DELIVERIES: usize = 4096;

/// The delivery ids of accepted webhooks, newest last, at most [`REMEMBERED_DELIVERIES`].
#[derive(Debug, Default)]
pub struct Deliveries {
    seen: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl Deliveries {
    /// Records `id`; false when it was seen before (a replay).
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= REMEMBERED_DELIVERIES
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

/// What the API shares with the controller loop.
pub struct ApiState {
    /// The state store the API reads rollouts from and queues requests in.
    pub store: StateStore,
    /// Wakes the controller loop (a request was queued).
    pub wake: Notify,
    /// Asks the source for an immediate read (the git webhook).
    pub fetch: Notify,
    /// Bearer token for writes; `None` makes the API read-only.
    pub api_token: Option<String>,
    /// Secret of the git webhook's HMAC; `None` refuses webhooks.
    pub webhook_secret: Option<Vec<u8>>,
    /// The metrics `/metrics` serves.
    pub metrics: Metrics,
    /// True once the source has been read once.
    pub ready: AtomicBool,
    /// Webhook deliveries already accepted.
    pub deliveries: parking_lot::Mutex<Deliveries>,
    /// The driver of each rollout's hub, as the controller last used it (the console's
    /// device lists query through it, within the same budget).
    pub drivers:
        parking_lot::Mutex<std::collections::HashMap<(String, String), Arc<crate::driver::Driver>>>,
    /// The `DeviceRings` of the source and what their last pass found (`GET
    /// /api/v1/devicerings`), kept by the controller ([`super::rings`]).
    pub rings: parking_lot::Mutex<std::collections::BTreeMap<(String, String), RingsEntry>>,
}

impl ApiState {
    /// A state over a store, with no token and no webhook secret.
    pub fn new(store: StateStore) -> ApiState {
        ApiState {
            store,
            wake: Notify::new(),
            fetch: Notify::new(),
            api_token: None,
            webhook_secret: None,
            metrics: Metrics::default(),
            ready: AtomicBool::new(false),
            deliveries: parking_lot::Mutex::new(Deliveries::default()),
            drivers: parking_lot::Mutex::default(),
            rings: parking_lot::Mutex::default(),
        }
    }
}

/// The routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/rollouts", get(list))
        .route("/api/v1/rollouts/{namespace}/{name}", get(one))
        .route(
            "/api/v1/rollouts/{namespace}/{name}/{action}",
            post(operation),
        )
        .route("/api/v1/devicerings", get(list_rings))
        .route("/api/v1/devicerings/{namespace}/{name}", get(one_rings))
        .route("/webhook/git", post(webhook))
        .merge(net::health_routes(readiness, |st: &Arc<ApiState>| {
            st.metrics.encode()
        }))
        .with_state(state.clone())
        .merge(crate::console::router(state))
}

/// Serves the API on `tcp` within the listener bounds of [`crate::net`], until the
/// process ends.
pub async fn serve(tcp: tokio::net::TcpListener, state: Arc<ApiState>) -> std::io::Result<()> {
    net::serve(tcp, router(state), Limits::DEFAULT, std::future::pending()).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn list(State(st): State<Arc<ApiState>>) -> Response {
    let res = st
        .store
        .run(|s| {
            Ok((
                s.rollouts()?,
                s.file_errors()?,
                s.meta("sourceRevision")?,
                s.meta("sourceError")?.filter(|e| !e.is_empty()),
            ))
        })
        .await;
    match res {
        Ok((items, files, revision, source_error)) => {
            let files: Vec<_> = files
                .into_iter()
                .map(|(path, error)| json!({"path": path, "error": error}))
                .collect();
            Json(json!({
                "items": items,
                "files": files,
                "sourceRevision": revision,
                "sourceError": source_error,
            }))
            .into_response()
        }
        Err(e) => internal(e),
    }
}

async fn one(
    State(st): State<Arc<ApiState>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let (ns, n) = (namespace.clone(), name.clone());
    match st.store.run(move |s| s.rollout(&ns, &n)).await {
        Ok(Some(r)) => Json(r).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no DeviceRollout {namespace}/{name}"),
        ),
        Err(e) => internal(e),
    }
}

async fn list_rings(State(st): State<Arc<ApiState>>) -> Response {
    let items: Vec<RingsEntry> = st.rings.lock().values().cloned().collect();
    Json(json!({"items": items})).into_response()
}

async fn one_rings(
    State(st): State<Arc<ApiState>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let found = st
        .rings
        .lock()
        .get(&(namespace.clone(), name.clone()))
        .cloned();
    match found {
        Some(r) => Json(r).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no DeviceRings {namespace}/{name} in the source"),
        ),
    }
}

/// Optional body of an operation request.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperationBody {
    id: Option<String>,
    revision: Option<String>,
    ring: Option<String>,
}

fn kind_of(action: &str) -> Option<OperationKind> {
    Some(match action {
        "promote" => OperationKind::Promote,
        "pause" => OperationKind::Pause,
        "resume" => OperationKind::Resume,
        "abort" => OperationKind::Abort,
        "retry" => OperationKind::Retry,
        _ => return None,
    })
}

/// Checks the bearer token of a write; `Err` is the answer to send.
fn authorize(st: &ApiState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(want) = &st.api_token else {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "the API is read-only: start `ringmaster run` with --api-token-env or --api-token-file to allow operations",
        )));
    };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match got {
        Some(t) if bool::from(t.trim().as_bytes().ct_eq(want.as_bytes())) => Ok(()),
        Some(_) => Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "the bearer token is not the one `ringmaster run` was given",
        ))),
        None => Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <token>` (the token given to `ringmaster run`)",
        ))),
    }
}

async fn operation(
    State(st): State<Arc<ApiState>>,
    Path((namespace, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown operation {action:?}: use promote, pause, resume, abort or retry"),
        );
    };
    if let Err(resp) = authorize(&st, &headers) {
        return *resp;
    }
    let body: OperationBody = if body.is_empty() {
        OperationBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "body: {e} (expected {{\"id\", \"revision\", \"ring\"}}, all optional)"
                    ),
                );
            }
        }
    };
    let id = body.id.unwrap_or_else(|| new_operation_id(kind));
    let op = Operation {
        id,
        kind,
        revision: body.revision,
        ring: body.ring,
    };
    let (ns, n, queued) = (namespace.clone(), name.clone(), op.clone());
    let res = st
        .store
        .run(move |s| {
            if s.rollout(&ns, &n)?.is_none() {
                return Ok(false);
            }
            s.push_operation(&ns, &n, &queued)?;
            Ok(true)
        })
        .await;
    match res {
        Ok(true) => {
            st.wake.notify_one();
            (StatusCode::ACCEPTED, Json(json!({"operation": op}))).into_response()
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("no DeviceRollout {namespace}/{name}"),
        ),
        Err(e) => internal(e),
    }
}

/// A request id: the time and a random suffix (`20260101T120000Z-promote-7f3a`).
pub fn new_operation_id(kind: OperationKind) -> String {
    let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    format!("{now}-{}-{:04x}", kind.name(), rand::random::<u16>())
}

async fn webhook(State(st): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &st.webhook_secret else {
        return error(
            StatusCode::FORBIDDEN,
            "no webhook secret configured: start `ringmaster run` with --webhook-secret-env or --webhook-secret-file",
        );
    };
    let sig = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="));
    let Some(sig) = sig.and_then(|s| hex::decode(s).ok()) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or malformed X-Hub-Signature-256 (expected sha256=<hex HMAC of the body>)",
        );
    };
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(&body);
    if mac.verify_slice(&sig).is_err() {
        return error(
            StatusCode::UNAUTHORIZED,
            "X-Hub-Signature-256 does not match the body and the webhook secret",
        );
    }
    let delivery = ["x-github-delivery", "x-gitea-delivery"]
        .iter()
        .find_map(|h| headers.get(*h))
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|d| !d.is_empty());
    let delivery = match delivery {
        Some(d) if d.len() <= 128 => d.to_string(),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "X-GitHub-Delivery is longer than 128 characters; it should be the delivery's GUID",
            );
        }
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "missing X-GitHub-Delivery: each delivery needs its id (GitHub, Gitea and Forgejo send it) so that replays can be refused",
            );
        }
    };
    // Checked after the signature, so that only genuine deliveries take a place in the
    // bounded set.
    if !st.deliveries.lock().first_time(&delivery) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "delivery {delivery} was already received; a webhook delivery is accepted once (replays are refused)"
            ),
        );
    }
    st.metrics.webhook();
    st.fetch.notify_one();
    (StatusCode::ACCEPTED, Json(json!({"fetch": "queued"}))).into_response()
}

/// The `X-Hub-Signature-256` value for a body (for clients and tests).
pub fn webhook_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn readiness(st: &Arc<ApiState>) -> Result<String, String> {
    if st.ready.load(Ordering::Relaxed) {
        Ok("ready".into())
    } else {
        Err("the source has not been read yet".into())
    }
}
