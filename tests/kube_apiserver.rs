//! The CRDs against a real kube-apiserver (with etcd), started envtest-style by
//! `scripts/kube-env` on loopback. Skips with one line when the API server or etcd is
//! absent (see `scripts/kube-env`; `.ci/run` installs both).

#[path = "common/kube_env.rs"]
mod kube_env;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube_env::{KubeEnv, create_namespace, install_crds};
use std::path::Path;

fn api(client: &kube::Client, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("ringmaster.dev", "v1alpha1", kind);
    Api::namespaced_with(client.clone(), "fleet", &ApiResource::from_gvk(&gvk))
}

fn object(json: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json).unwrap()
}

fn rollout(
    name: &str,
    priority: serde_json::Value,
    min_applied: serde_json::Value,
) -> DynamicObject {
    object(serde_json::json!({
        "apiVersion": "ringmaster.dev/v1alpha1",
        "kind": "DeviceRollout",
        "metadata": {"name": name, "namespace": "fleet"},
        "spec": {
            "target": "tags.environment='prod'",
            "priority": priority,
            "content": {"device": {"properties.desired.firmware": {"version": "2.4.0"}}},
            "gate": {"minApplied": min_applied},
            "rings": [{"name": "all", "target": "*"}]
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_api_server_takes_the_crds_and_refuses_integers_the_controller_cannot_read() {
    let Some(env) = KubeEnv::start() else { return };
    let client = env.client().await;
    install_crds(&client).await;
    create_namespace(&client, "fleet").await;

    let rollouts = api(&client, "DeviceRollout");
    let pp = PostParams::default();
    // In range: stored, and read back by the controller's own type.
    rollouts
        .create(
            &pp,
            &rollout("fine", 2147483647.into(), 4294967295u64.into()),
        )
        .await
        .unwrap();
    let typed: Api<ringmaster::resources::DeviceRollout> = Api::namespaced(client.clone(), "fleet");
    assert_eq!(typed.get("fine").await.unwrap().spec.priority, i32::MAX);

    // Out of range for the Rust types: refused at apply, naming the field.
    for (name, priority, min_applied, field) in [
        (
            "big-priority",
            serde_json::json!(3000000000u64),
            serde_json::json!(5),
            "spec.priority",
        ),
        (
            "big-min-applied",
            serde_json::json!(20),
            serde_json::json!(5000000000u64),
            "spec.gate.minApplied",
        ),
    ] {
        let err = rollouts
            .create(&pp, &rollout(name, priority, min_applied))
            .await
            .expect_err(name);
        let text = err.to_string();
        assert!(
            text.contains(field) && text.contains("less than or equal"),
            "{name}: {text}"
        );
    }
    let hubs = api(&client, "Hub");
    let err = hubs
        .create(
            &pp,
            &object(serde_json::json!({
                "apiVersion": "ringmaster.dev/v1alpha1",
                "kind": "Hub",
                "metadata": {"name": "prod", "namespace": "fleet"},
                "spec": {"type": "embedded", "limits": {"queriesPerMinute": 5000000000u64}}
            })),
        )
        .await
        .expect_err("an out-of-range limit");
    assert!(
        err.to_string().contains("spec.limits.queriesPerMinute"),
        "{err}"
    );
    // Nothing of the refused objects was stored: the list is exactly the good rollout.
    let names: Vec<_> = typed
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    assert_eq!(names, ["fine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_duplicate_ring_names_and_explains_each_kind() {
    let Some(env) = KubeEnv::start() else { return };
    let client = env.client().await;
    install_crds(&client).await;

    // What `kubectl explain dro` / `kubectl explain rmhub` print first.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["devicerollouts.ringmaster.dev", "hubs.ringmaster.dev"] {
        let crd = crds.get(name).await.unwrap();
        let v = &crd.spec.versions[0];
        let top = v
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap();
        let d = top.description.as_deref().unwrap_or("");
        assert!(d.len() > 40 && !d.contains("Auto-generated"), "{name}: {d}");
    }
    let hub = crds.get("hubs.ringmaster.dev").await.unwrap();
    assert_eq!(
        hub.spec.names.short_names.as_deref(),
        Some(&["rmhub".to_string()][..])
    );

    create_namespace(&client, "fleet").await;
    let rollouts = api(&client, "DeviceRollout");
    let pp = PostParams::default();

    let mut dup = rollout("dup-rings", 10.into(), 1.into());
    dup.data["spec"]["rings"] = serde_json::json!([
        {"name": "canary", "target": "tags.ring='canary'"},
        {"name": "canary", "target": "*"}
    ]);
    let err = rollouts
        .create(&pp, &dup)
        .await
        .expect_err("duplicate ring names");
    assert!(
        err.to_string().contains("spec.rings[1]") && err.to_string().contains("Duplicate"),
        "{err}"
    );

    // Content paths (free-form map keys) cannot be checked by a schema rule on this API
    // server: CEL gets no type for a map of arbitrary JSON, so such a rule does not compile.
    // `ringmaster validate` and the controller refuse them.

    // Distinct ring names and desired paths are stored.
    let mut good = rollout("two-rings", 10.into(), 1.into());
    good.data["spec"]["rings"] = serde_json::json!([
        {"name": "canary", "target": "tags.ring='canary'"},
        {"name": "broad", "target": "*"}
    ]);
    rollouts.create(&pp, &good).await.unwrap();
}

/// `kubectl apply -f examples/rollouts/` as a new user types it: files in name order, each
/// document created as it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_apply_to_a_new_cluster_as_written() {
    let Some(env) = KubeEnv::start() else { return };
    let client = env.client().await;
    install_crds(&client).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rollouts");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut created = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let obj: DynamicObject = serde_json::from_value(doc).unwrap();
            let types = obj.types.clone().unwrap();
            let (group, version) = types
                .api_version
                .split_once('/')
                .unwrap_or(("", types.api_version.as_str()));
            let gvk = GroupVersionKind::gvk(group, version, &types.kind);
            let ar = ApiResource::from_gvk(&gvk);
            let api: Api<DynamicObject> = match obj.metadata.namespace.as_deref() {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            api.create(&PostParams::default(), &obj)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: {} {:?}: {e}",
                        f.display(),
                        types.kind,
                        obj.metadata.name
                    )
                });
            created.push(format!("{}/{}", types.kind, obj.metadata.name.unwrap()));
        }
    }
    assert!(
        created.contains(&"Namespace/fleet".to_string()),
        "{created:?}"
    );
    let rollouts: Api<ringmaster::resources::DeviceRollout> =
        Api::namespaced(client.clone(), "fleet");
    let listed = rollouts.list(&Default::default()).await.unwrap().items;
    let in_files = created
        .iter()
        .filter(|c| c.starts_with("DeviceRollout/"))
        .count();
    assert!(in_files >= 3, "{created:?}");
    assert_eq!(
        listed.len(),
        in_files,
        "every DeviceRollout of the examples is stored and reads back"
    );
}
