//! The controller's HTTP API on its own: reads, writes that need the bearer token, a
//! read-only API without one, readiness and metrics.

use ringmaster::resources::{DeviceRollout, DeviceRolloutSpec};
use ringmaster::run::api::{ApiState, router};
use ringmaster::run::store::{StateStore, StoredRollout};
use std::sync::Arc;
use std::sync::atomic::Ordering;

async fn serve(token: Option<&str>) -> (String, Arc<ApiState>) {
    let store = StateStore::in_memory().unwrap();
    let spec: DeviceRolloutSpec = serde_json::from_value(serde_json::json!({
        "target": "*", "priority": 1, "content": {"device": {"properties.desired.x": 1}},
        "rings": [{"name": "all", "target": "*"}]
    }))
    .unwrap();
    let mut ro = DeviceRollout::new("fw", spec);
    ro.metadata.namespace = Some("fleet".into());
    store
        .put_rollout(&StoredRollout {
            namespace: "fleet".into(),
            name: "fw".into(),
            source: "fw.yaml".into(),
            rollout: ro,
            status: Default::default(),
            deleting: false,
            error: None,
            hub_problem: None,
            created: "2026-01-01T00:00:00Z".into(),
            source_revision: None,
        })
        .unwrap();
    let mut state = ApiState::new(store);
    state.api_token = token.map(str::to_string);
    let state = Arc::new(state);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let app = router(state.clone());
    tokio::spawn(async move { axum::serve(tcp, app).await.unwrap() });
    (format!("http://{addr}"), state)
}

#[tokio::test]
async fn writes_need_the_token_and_queue_a_request() {
    let (api, state) = serve(Some("tok")).await;
    let http = reqwest::Client::new();
    let url = format!("{api}/api/v1/rollouts/fleet/fw/promote");
    assert_eq!(http.post(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        http.post(&url)
            .bearer_auth("nope")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let ok = http
        .post(&url)
        .bearer_auth("tok")
        .json(&serde_json::json!({"id": "p-1", "ring": "all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    let ops = state.store.operations("fleet", "fw").unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(
        (ops[0].id.as_str(), ops[0].ring.as_deref()),
        ("p-1", Some("all"))
    );
    let missing = http
        .post(format!("{api}/api/v1/rollouts/fleet/other/pause"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let bad = http
        .post(format!("{api}/api/v1/rollouts/fleet/fw/explode"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 404);

    let one: serde_json::Value = http
        .get(format!("{api}/api/v1/rollouts/fleet/fw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["name"], "fw");
    let list: serde_json::Value = http
        .get(format!("{api}/api/v1/rollouts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn without_a_token_the_api_is_read_only_and_says_how_to_allow_writes() {
    let (api, state) = serve(None).await;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{api}/api/v1/rollouts/fleet/fw/pause"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("--api-token-env"),
        "{body}"
    );
    assert!(state.store.operations("fleet", "fw").unwrap().is_empty());

    assert_eq!(
        http.get(format!("{api}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{api}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    state.ready.store(true, Ordering::Relaxed);
    assert_eq!(
        http.get(format!("{api}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let hook = http
        .post(format!("{api}/webhook/git"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 403, "no webhook secret configured");
    state.metrics.set_phase("fleet/fw", Some(None));
    let metrics = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ringmaster_rollouts{phase=\"Pending\"} 1"),
        "{metrics}"
    );
}
