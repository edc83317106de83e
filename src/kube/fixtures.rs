//! Test fixtures: a mock Kubernetes API server (tower-test) that plays a scenario and
//! records every request, and builders for the objects the scenarios use.

use super::controller::Context;
use super::hubs::{FixedHub, HubClients};
use super::leader::Leadership;
use super::metrics::Metrics;
use crate::manifest::{Document, load_manifests};
use crate::resources::DeviceRollout;
use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::Reporter;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request the controller made.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Seen {
    /// `METHOD path?query`, for asserting the sequence.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }
}

/// The mock API server: answers each request with what `respond` returns, in order.
pub struct ApiServer(pub Handle);

impl ApiServer {
    /// Answers the next request; `None` if the client went away.
    pub async fn answer(
        &mut self,
        respond: impl FnOnce(&Seen) -> (StatusCode, Value),
    ) -> Option<Seen> {
        let (request, send) = self.0.next_request().await?;
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let seen = Seen {
            method: parts.method.to_string(),
            uri: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string()),
            body: if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("a JSON body")
            },
        };
        let (code, reply) = respond(&seen);
        let response = Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap();
        send.send_response(response);
        Some(seen)
    }

    /// Answers every request by echoing an object built from its body (a patch applied
    /// to `object`, an event created as sent), until the client goes away.
    pub async fn echo_all(mut self, object: Value) -> Vec<Seen> {
        let mut seen = Vec::new();
        while let Some(s) = self.answer(|s| (StatusCode::OK, echo(&object, s))).await {
            seen.push(s);
        }
        seen
    }
}

/// What the mock API server of [`ApiServer::serve`] holds: the rollout, Hubs and Secrets
/// by name (a GET of a missing one is a 404), and every request, recorded before it is
/// answered.
#[derive(Default)]
pub struct World {
    pub rollout: Value,
    pub hubs: HashMap<String, Value>,
    pub secrets: HashMap<String, Value>,
    pub seen: Vec<Seen>,
}

pub type SharedWorld = Arc<parking_lot::Mutex<World>>;

impl World {
    /// The rollout as the API server holds it (with the last status applied).
    pub fn rollout(&self) -> DeviceRollout {
        serde_json::from_value(self.rollout.clone()).unwrap()
    }

    /// A write changed the rollout: a new resourceVersion, as a real API server gives.
    fn bump(&mut self) {
        let rv = &mut self.rollout["metadata"]["resourceVersion"];
        let next = rv.as_str().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
        *rv = Value::String(next.to_string());
    }

    fn respond(&mut self, s: &Seen) -> (StatusCode, Value) {
        self.seen.push(s.clone());
        let path = s.uri.split('?').next().unwrap_or_default();
        let name = path.rsplit('/').next().unwrap_or_default();
        let found = |v: Option<&Value>| match v {
            Some(v) => (StatusCode::OK, v.clone()),
            None => (
                StatusCode::NOT_FOUND,
                serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                    "message": format!("\"{name}\" not found")
                }),
            ),
        };
        match s.method.as_str() {
            "GET" if path.contains("/hubs/") => found(self.hubs.get(name)),
            "GET" if path.contains("/secrets/") => found(self.secrets.get(name)),
            "PATCH" if path.contains("/devicerollouts/") && path.ends_with("/status") => {
                self.rollout["status"] = s.body["status"].clone();
                self.bump();
                (StatusCode::OK, self.rollout.clone())
            }
            "PATCH" if path.contains("/devicerollouts/") => {
                // As a real API server: a patch that names a resourceVersion other than
                // the object's conflicts.
                let sent = &s.body["metadata"]["resourceVersion"];
                if sent.is_string() && *sent != self.rollout["metadata"]["resourceVersion"] {
                    return (
                        StatusCode::CONFLICT,
                        serde_json::json!({
                            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                            "message": "the object has been modified; please apply your changes to the latest version and try again"
                        }),
                    );
                }
                let mut patch = s.body.clone();
                if let Some(m) = patch["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                merge(&mut self.rollout, &patch);
                self.bump();
                (StatusCode::OK, self.rollout.clone())
            }
            _ => (StatusCode::OK, echo(&self.rollout, s)),
        }
    }
}

/// A Hub object as the API server would serve it.
pub fn hub_object(name: &str, uid: &str, spec: Value) -> Value {
    serde_json::json!({
        "apiVersion": "ringmaster.dev/v1alpha1", "kind": "Hub",
        "metadata": {"name": name, "namespace": "fleet", "uid": uid, "resourceVersion": "7"},
        "spec": spec
    })
}

/// A Secret object with `data` (values given as text, served base64-encoded).
pub fn secret_object(name: &str, data: &[(&str, &str)]) -> Value {
    use base64::Engine as _;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "fleet", "resourceVersion": "3"},
        "data": data
    })
}

impl ApiServer {
    /// Answers every request from `world` until the client goes away.
    pub async fn serve(mut self, world: SharedWorld) {
        loop {
            let w = world.clone();
            if self.answer(move |s| w.lock().respond(s)).await.is_none() {
                break;
            }
        }
    }
}

/// A plausible answer: the object with a merge/apply patch laid over it, or the body.
fn echo(object: &Value, seen: &Seen) -> Value {
    if seen.method == "PATCH" && seen.uri.contains("/devicerollouts/") {
        let mut out = object.clone();
        merge(&mut out, &seen.body);
        out
    } else {
        seen.body.clone()
    }
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// A client talking to a mock API server.
pub fn mock_client() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer(handle))
}

/// A controller context on a mock client, with `hubs` and `leader`.
pub fn context(client: Client, hubs: Arc<dyn HubClients>, leader: Leadership) -> Arc<Context> {
    let reporter = Reporter {
        controller: "ringmaster".into(),
        instance: Some("test-0".into()),
    };
    Arc::new(
        Context::new(client, hubs, reporter, Arc::new(Metrics::default()), leader)
            .with_clock(Arc::new(crate::clock::ManualClock::at_epoch())),
    )
}

/// A context whose every rollout uses `driver`.
pub fn context_with(client: Client, driver: Arc<crate::driver::Driver>) -> Arc<Context> {
    context(client, Arc::new(FixedHub(driver)), Leadership::always())
}

/// The scenarios' rollout: three rings on `tags.environment='prod'`, no baseline guard.
pub fn rollout() -> DeviceRollout {
    let text = r#"
apiVersion: ringmaster.dev/v1alpha1
kind: DeviceRollout
metadata: {name: chiller-fw, namespace: fleet, uid: 6d9c0f4e-0000-4000-8000-000000000001, resourceVersion: "100", generation: 1}
spec:
  target: "tags.environment='prod'"
  priority: 10
  content:
    device:
      properties.desired.firmware: {version: "2.4.0"}
  metrics:
    current: "properties.reported.firmware.version='2.4.0'"
  gate:
    minApplied: 1
    bake: 2m
    success: "lowerBound(metrics.current, applied) >= 0.5"
  rings:
    - {name: canary, target: "tags.ring='canary'"}
    - {name: broad, target: "*"}
  baseline: "off"
"#;
    match load_manifests("rollout.yaml", text)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .remove(0)
    {
        Document::DeviceRollout(ro) => *ro,
        _ => unreachable!(),
    }
}

/// Chainable changes to a test rollout.
pub trait RolloutExt {
    fn finalized(self) -> Self;
    fn deleted(self) -> Self;
}

impl RolloutExt for DeviceRollout {
    fn finalized(mut self) -> Self {
        self.metadata.finalizers = Some(vec![super::FINALIZER.to_string()]);
        self
    }
    fn deleted(mut self) -> Self {
        self.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:05:00Z".parse().unwrap(),
            ));
        self
    }
}
