//! The operator console of `ringmaster run --kube --console-addr` against a real
//! kube-apiserver (`scripts/kube-env`) and `ringmaster hub serve --fleet`: the overview
//! lists the cluster's DeviceRollouts over HTTP; a person whose RBAC lets them `patch`
//! the rollout signs in with their own token and promotes its approval ring, and the
//! request reaches the rollout (annotation, then `handledOperations`) under their name;
//! a person without that right is refused and nothing is written. Skips with one line
//! when the API server or etcd is absent.

#[path = "common/kube_env.rs"]
mod kube_env;
#[path = "common/proc.rs"]
mod proc;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube_env::{KubeEnv, create_namespace, install_crds, token_of, wait_until};
use serde_json::{Value, json};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");

const FLEET: &str = r#"
devices: 12
idPrefix: chiller-
seed: 7
tags: {environment: prod}
rings: {canary: 0.25, broad: 0.75}
models: {"4000x": 1.0}
regions: {eu-west: 1.0}
offline: 0
firmware:
  initial: "2.3.0"
  downloadSeconds: 1
  applySeconds: 1
  jitter: 0
  failures: []
settings: []
"#;

async fn create(client: &kube::Client, ns: &str, ar: &ApiResource, object: Value) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(object).unwrap(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn run_kube_serves_the_console_and_the_clusters_rbac_decides_who_promotes() {
    let Some(env) = KubeEnv::start() else { return };
    let client = env.client().await;
    install_crds(&client).await;
    create_namespace(&client, "fleet").await;

    // alice may get and patch DeviceRollouts in `fleet`; bob may only read them.
    let role = |name: &str, verbs: &[&str]| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": "fleet"},
            "rules": [{"apiGroups": ["ringmaster.dev"], "resources": ["devicerollouts"], "verbs": verbs}]
        })
    };
    let binding = |name: &str, role: &str, sa: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": "fleet"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "fleet"}]
        })
    };
    let rbac = |kind: &str, plural: &str| ApiResource {
        group: "rbac.authorization.k8s.io".into(),
        version: "v1".into(),
        api_version: "rbac.authorization.k8s.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    let sa = ApiResource::erase::<ServiceAccount>(&());
    for name in ["alice", "bob"] {
        create(&client, "fleet", &sa, json!({"metadata": {"name": name}})).await;
    }
    let roles = rbac("Role", "roles");
    let bindings = rbac("RoleBinding", "rolebindings");
    create(
        &client,
        "fleet",
        &roles,
        role("operator", &["get", "list", "patch"]),
    )
    .await;
    create(&client, "fleet", &roles, role("viewer", &["get", "list"])).await;
    create(
        &client,
        "fleet",
        &bindings,
        binding("alice", "operator", "alice"),
    )
    .await;
    create(&client, "fleet", &bindings, binding("bob", "viewer", "bob")).await;
    let alice_token = token_of(&client, "fleet", "alice").await;
    let bob_token = token_of(&client, "fleet", "bob").await;

    // `ringmaster hub serve --fleet`, its Secret and Hub, and a rollout whose first ring
    // waits for approval.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fleet.yaml"), FLEET).unwrap();
    let cs_file = dir.path().join("hub.cs");
    let hub = proc::Proc::spawn(
        std::process::Command::new(BIN)
            .args(["hub", "serve", "--in-memory", "--listen", "127.0.0.1:0"])
            .args(["--cycle-interval", "1s", "--fleet"])
            .arg(dir.path().join("fleet.yaml"))
            .arg("--connection-string-file")
            .arg(&cs_file)
            .env("RUST_LOG", "warn"),
    );
    let (url, cs) = hub.hub_serve_ready(&cs_file);
    let secret = ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&());
    create(
        &client,
        "fleet",
        &secret,
        json!({"metadata": {"name": "hub"}, "stringData": {"connectionString": cs}}),
    )
    .await;
    create(
        &client,
        "fleet",
        &ApiResource::erase::<ringmaster::resources::Hub>(&()),
        json!({
            "apiVersion": "ringmaster.dev/v1alpha1", "kind": "Hub",
            "metadata": {"name": "default", "namespace": "fleet"},
            "spec": {"type": "embedded", "url": url, "connectionStringSecret": {"name": "hub"}}
        }),
    )
    .await;
    let ro_type = ApiResource::erase::<ringmaster::resources::DeviceRollout>(&());
    create(
        &client,
        "fleet",
        &ro_type,
        json!({
            "apiVersion": "ringmaster.dev/v1alpha1", "kind": "DeviceRollout",
            "metadata": {"name": "chiller-fw", "namespace": "fleet"},
            "spec": {
                "target": "tags.environment='prod'",
                "priority": 20,
                "content": {"device": {"properties.desired.firmware": {"version": "2.4.0"}}},
                "metrics": {"current": "properties.reported.firmware.version='2.4.0'"},
                "gate": {
                    "minApplied": 1, "bake": "1s", "deadline": "5m",
                    "success": "lowerBound(metrics.current, applied) >= 0.0"
                },
                "rings": [
                    {"name": "canary", "target": "tags.ring='canary'", "approval": true},
                    {"name": "broad", "target": "*"}
                ],
                "baseline": "off"
            }
        }),
    )
    .await;

    // `ringmaster run --kube --console-addr`, out of cluster, on the admin kubeconfig.
    let controller = proc::Proc::spawn(
        std::process::Command::new(BIN)
            .args(["run", "--kube", "--kube-namespace", "fleet"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--console-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", env.kubeconfig())
            .env("RUST_LOG", "warn"),
    );
    let console = controller.wait_for(|l| {
        l.strip_prefix("operator console: ")
            .map(|u| u.trim_end_matches('/').to_string())
    });
    let http = reqwest::Client::new();

    // The overview lists the rollout, waiting for approval of its first ring.
    let overview = wait_until(
        "the overview shows chiller-fw awaiting approval",
        Duration::from_secs(120),
        async || {
            let v: Value = http
                .get(format!("{console}/api/overview"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let text = v.to_string();
            (text.contains("chiller-fw") && text.contains("AwaitingApproval")).then_some(v)
        },
    )
    .await;
    let session: Value = http
        .get(format!("{console}/api/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["writable"], json!(true), "{session}");

    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "fleet", &ro_type);
    let seen = api.get("chiller-fw").await.unwrap();
    let revision = seen.data["status"]["revision"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(seen.data["status"]["ring"]["name"], "canary", "{overview}");

    let act = async |token: &str| {
        let r = http
            .post(format!("{console}/api/login"))
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "sign-in");
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let body: Value = r.json().await.unwrap();
        http.post(format!("{console}/api/rollouts/fleet/chiller-fw/promote"))
            .header("cookie", cookie)
            .header("x-csrf-token", body["csrf"].as_str().unwrap())
            .json(&json!({"revision": revision, "ring": "canary"}))
            .send()
            .await
            .unwrap()
    };

    // bob may read but not patch: refused, nothing written.
    let r = act(&bob_token).await;
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("system:serviceaccount:fleet:bob may not promote fleet/chiller-fw"),
        "{text}"
    );
    let after = api.get("chiller-fw").await.unwrap();
    assert!(
        !after
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("ringmaster.dev/operation"),
        "bob's refused promote wrote nothing"
    );

    // alice may: her promote is written as the operation annotation under her name, and
    // the controller applies it (handledOperations) and targets the canary ring.
    let r = act(&alice_token).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    let id = body["operation"]["id"].as_str().unwrap().to_string();
    assert!(
        id.contains("-promote-console-system:serviceaccount:fleet:alice-"),
        "{id}"
    );
    let annotated = api.get("chiller-fw").await.unwrap();
    let annotation =
        annotated.metadata.annotations.unwrap_or_default()["ringmaster.dev/operation"].clone();
    assert!(annotation.contains(&id), "{annotation}");
    wait_until(
        "the promote reaches the rollout",
        Duration::from_secs(60),
        async || {
            let got = api.get("chiller-fw").await.ok()?;
            let handled = got.data["status"]["handledOperations"].to_string();
            let state = got.data["status"]["ring"]["state"].clone();
            (handled.contains(&id) && state != json!("AwaitingApproval")).then_some(())
        },
    )
    .await;
    // And the console shows it: the ring is no longer waiting for approval.
    wait_until(
        "the overview shows the approval",
        Duration::from_secs(30),
        async || {
            let v: Value = http
                .get(format!("{console}/api/overview"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let text = v.to_string();
            (text.contains("chiller-fw") && !text.contains("AwaitingApproval")).then_some(())
        },
    )
    .await;
}
