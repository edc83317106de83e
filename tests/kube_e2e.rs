//! The controller of `run --kube` against a real kube-apiserver (with etcd), started by
//! `scripts/kube-env` on loopback: what only a real API server shows. Each test skips with
//! one line when the API server or etcd is absent.
//!
//! The controller runs in the test process ([`run_controller`]) on an in-memory embedded
//! hub, except in the end-to-end test, which runs `ringmaster hub serve --fleet` and
//! `ringmaster run --kube` as the built binary.

#[path = "common/kube_env.rs"]
mod kube_env;

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube_env::{KubeEnv, create_namespace, install, ringmaster_crds, wait_until};
use ringmaster::clock::SystemClock;
use ringmaster::driver::Driver;
use ringmaster::hub::EmbeddedHub;
use ringmaster::kube::controller::Context;
use ringmaster::kube::hubs::FixedHub;
use ringmaster::kube::leader::Leadership;
use ringmaster::kube::metrics::Metrics;
use ringmaster::kube::run_controller;
use ringmaster::resources::{DeviceRollout, HubLimits};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rollouts(client: &kube::Client) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        "fleet",
        &ApiResource::erase::<DeviceRollout>(&()),
    )
}

/// A rollout of firmware 2.4.0 to the devices of team `name`, in two rings, with a
/// short bake.
fn rollout(name: &str, priority: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "ringmaster.dev/v1alpha1",
        "kind": "DeviceRollout",
        "metadata": {"name": name, "namespace": "fleet"},
        "spec": {
            "target": format!("tags.environment='prod' AND tags.team='{name}'"),
            "priority": priority,
            "content": {"device": {"properties.desired.firmware": {"version": "2.4.0"}}},
            "gate": {"minApplied": 1, "bake": "3s", "success": "lowerBound(metrics.current, applied) >= 0.1"},
            "metrics": {"current": "properties.reported.firmware.version='2.4.0'"},
            "rings": [{"name": "canary", "target": "tags.ring='canary'"}, {"name": "broad", "target": "*"}],
            "baseline": "off"
        }
    }))
    .unwrap()
}

/// The controller in this process, on an in-memory hub with generous limits (its
/// configuration cycle every second) and two devices, canary and broad, in each team
/// of `groups`, already reporting firmware 2.4.0; its metrics.
fn controller(
    client: &kube::Client,
    groups: &[String],
) -> (tokio::task::JoinHandle<()>, Arc<Metrics>) {
    let hub = EmbeddedHub::in_memory(Arc::new(SystemClock));
    for group in groups {
        for ring in ["canary", "broad"] {
            let id = format!("{group}-{ring}");
            hub.create_device_with_twin(
                ringmaster::iothub::device::Device::new(&id),
                &json!({"tags": {"environment": "prod", "team": group, "ring": ring}}),
            )
            .unwrap();
            hub.patch_reported(&id, &json!({"firmware": {"version": "2.4.0"}}))
                .unwrap();
        }
    }
    let cycles = hub.spawn_cycles(Duration::from_secs(1));
    let limits = HubLimits {
        queries_per_minute: 1000,
        configuration_writes_per_minute: 1000,
        ..Default::default()
    };
    let driver = Arc::new(Driver::with_limits(
        Arc::new(hub),
        Arc::new(SystemClock),
        limits,
    ));
    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(FixedHub(driver)),
        "ringmaster".into(),
        metrics.clone(),
        Leadership::always(),
    ));
    (
        tokio::spawn(async move {
            run_controller(ctx, Some("fleet")).await;
            cycles.abort();
        }),
        metrics,
    )
}

/// The value of the metric line that starts with `prefix` (0 when absent).
fn metric(metrics: &Metrics, prefix: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0
}

fn condition<'a>(obj: &'a DynamicObject, type_: &str) -> Option<&'a Value> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// `value` without any `maximum`, `minimum` or CEL rule: the schema as it was before the
/// bounds, which let the API server store integers the controller cannot read.
fn unbounded(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("maximum");
            map.remove("minimum");
            map.remove("x-kubernetes-validations");
            map.values_mut().for_each(unbounded);
        }
        Value::Array(items) => items.iter_mut().for_each(unbounded),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_the_controller_cannot_read_stalls_alone_and_the_others_reconcile() {
    // Issue 11, defect 1: one `priority: 3000000000`, stored before the schema bounded
    // it, made every LIST fail: nothing reconciled in any namespace.
    let Some(env) = KubeEnv::start() else { return };
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ringmaster=debug")
        .with_test_writer()
        .try_init();
    let client = env.client().await;
    let old: Vec<CustomResourceDefinition> = ringmaster_crds()
        .into_iter()
        .map(|crd| {
            let mut v = serde_json::to_value(crd).unwrap();
            unbounded(&mut v);
            serde_json::from_value(v).unwrap()
        })
        .collect();
    install(&client, &old).await;
    create_namespace(&client, "fleet").await;
    let api = rollouts(&client);
    api.create(
        &PostParams::default(),
        &rollout("bad", json!(3_000_000_000u64)),
    )
    .await
    .unwrap();
    api.create(&PostParams::default(), &rollout("good", json!(10)))
        .await
        .unwrap();
    // The schema of today, with its bounds: the stored object stays as it is.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for mut crd in ringmaster_crds() {
        let name = crd.metadata.name.clone().unwrap();
        crd.metadata.resource_version = crds.get(&name).await.unwrap().metadata.resource_version;
        crds.replace(&name, &PostParams::default(), &crd)
            .await
            .unwrap();
    }

    let (task, _metrics) = controller(&client, &["good".to_string()]);
    let good = wait_until(
        "the good rollout to reconcile",
        Duration::from_secs(60),
        async || {
            let got = api.get("good").await.ok()?;
            got.data["status"]["phase"]
                .as_str()
                .is_some()
                .then_some(got)
        },
    )
    .await;
    assert_eq!(
        good.data["status"]["phase"], "Progressing",
        "{:?}",
        good.data
    );
    // The status cannot always say it: an API server without CRD validation ratcheting
    // (1.26 here) validates the whole object on a status write, and refuses it for the
    // very field at fault. The Warning event says it then.
    let bad = api.get("bad").await.unwrap();
    if let Some(stalled) = condition(&bad, "Stalled") {
        assert_eq!(stalled["reason"], "InvalidSpec", "{stalled}");
        assert!(
            stalled["message"]
                .as_str()
                .unwrap()
                .contains("spec.priority")
        );
    }
    let events: Api<Event> = Api::namespaced(client.clone(), "fleet");
    let warning = wait_until("the Warning event", Duration::from_secs(10), async || {
        let list = events
            .list(&ListParams::default().fields("regarding.name=bad"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|e| e.type_.as_deref() == Some("Warning"))
    })
    .await;
    assert_eq!(warning.reason.as_deref(), Some("InvalidSpec"));
    assert!(warning.note.unwrap().contains("spec.priority"));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rollouts_of_one_hub_deleted_at_once_are_gone_without_conflicts() {
    // Issue 11, defects 2 and 3: each finalizer removal conflicted with the same
    // reconcile's status write (17 rollouts took up to 7 minutes and ~190 conflicts).
    let Some(env) = KubeEnv::start() else { return };
    let client = env.client().await;
    install(&client, &ringmaster_crds()).await;
    create_namespace(&client, "fleet").await;
    let api = rollouts(&client);
    let names: Vec<String> = (0..20).map(|i| format!("fw-{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        api.create(&PostParams::default(), &rollout(name, json!(10 + i)))
            .await
            .unwrap();
    }
    let (task, metrics) = controller(&client, &names);
    wait_until(
        "20 rollouts healthy",
        Duration::from_secs(120),
        async || {
            let list = api.list(&ListParams::default()).await.ok()?;
            (list.items.len() == 20
                && list
                    .items
                    .iter()
                    .all(|o| o.data["status"]["phase"] == "Healthy"))
            .then_some(())
        },
    )
    .await;

    // Idle: the controller's own status writes wake nothing; hub requests per minute
    // (measured over IDLE seconds, `RINGMASTER_IDLE_SECONDS` to change it).
    let idle: u64 = std::env::var("RINGMASTER_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = |m: &Metrics| metric(m, "ringmaster_hub_requests_total");
    let reconciles = |m: &Metrics| metric(m, "ringmaster_reconciles_total");
    let (r0, c0) = (requests(&metrics), reconciles(&metrics));
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let (r1, c1) = (requests(&metrics), reconciles(&metrics));
    eprintln!(
        "idle, 20 rollouts: {:.1} hub requests and {:.1} reconciles per minute (over {idle} s)",
        (r1 - r0) * 60.0 / idle as f64,
        (c1 - c0) * 60.0 / idle as f64
    );

    // No baseline sits under these devices: forced, so the deletion does not wait for one.
    for name in &names {
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"ringmaster.dev/force-delete": "true"}}}),
            ),
        )
        .await
        .unwrap();
    }
    let errors_before = metric(&metrics, "ringmaster_reconcile_errors_total");
    let start = Instant::now();
    for name in &names {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_until("every rollout gone", Duration::from_secs(120), async || {
        let list = api.list(&ListParams::default()).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let conflicts = metric(
        &metrics,
        "ringmaster_reconcile_errors_total{error=\"kube\"}",
    );
    eprintln!(
        "20 rollouts deleted at once: gone in {seconds:.1} s, {conflicts} failed reconciles (409s)"
    );
    assert_eq!(
        metric(&metrics, "ringmaster_reconcile_errors_total") - errors_before,
        0.0,
        "no reconcile failed (no conflict): {}",
        metrics.encode()
    );
    task.abort();
}

#[path = "common/proc.rs"]
mod proc;

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");

const FLEET: &str = r#"
devices: 40
idPrefix: chiller-
seed: 7
tags: {environment: prod}
rings: {canary: 0.25, broad: 0.75}
models: {"4000x": 0.5, "5000x": 0.5}
regions: {eu-west: 1.0}
offline: 0
firmware:
  initial: "2.3.0"
  downloadSeconds: 1
  applySeconds: 1
  jitter: 0
  failures:
    - {model: "5000x", version: "2.5.0-rc1", rate: 1.0}
settings: []
"#;

/// A firmware rollout to one model, ring by ring, with a short bake.
fn firmware(name: &str, model: &str, version: &str, priority: u32) -> Value {
    json!({
        "apiVersion": "ringmaster.dev/v1alpha1",
        "kind": "DeviceRollout",
        "metadata": {"name": name, "namespace": "fleet"},
        "spec": {
            "target": format!("tags.environment='prod' AND tags.model='{model}'"),
            "priority": priority,
            "content": {"device": {"properties.desired.firmware": {"version": version}}},
            "metrics": {
                "current": format!("properties.reported.firmware.version='{version}' AND properties.reported.firmware.status='Current'"),
                "failed": "properties.reported.firmware.status='Error'"
            },
            "gate": {
                "minApplied": 2, "bake": "3s", "deadline": "5m",
                "success": "lowerBound(metrics.current, applied) >= 0.3",
                "failure": "lowerBound(metrics.failed, applied) > 0.05"
            },
            "rings": [{"name": "canary", "target": "tags.ring='canary'"}, {"name": "broad", "target": "*"}],
            "onFailure": "rollback",
            "baseline": "off"
        }
    })
}

fn kubectl(env: &KubeEnv, args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", env.kubeconfig())
        .args(args)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubectl get dro -n fleet` without kubectl: the API server's Table, one line a row.
async fn server_table(client: &kube::Client) -> String {
    let request =
        http::Request::get("/apis/ringmaster.dev/v1alpha1/namespaces/fleet/devicerollouts")
            .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
            .body(Vec::new())
            .unwrap();
    let text = client.request_text(request).await.unwrap();
    let table: Value = serde_json::from_str(&text).unwrap();
    let mut lines = vec![
        table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join("  "),
    ];
    for row in table["rows"].as_array().unwrap() {
        lines.push(
            row["cells"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| match c {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("  "),
        );
    }
    lines.join("\n")
}

fn has_kubectl() -> bool {
    std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `(status, reason)` of a condition.
fn cond(obj: &DynamicObject, type_: &str) -> (String, String) {
    let c = condition(obj, type_).unwrap_or_else(|| panic!("no {type_}: {:?}", obj.data));
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_kube_takes_a_good_rollout_to_healthy_and_rolls_a_faulty_one_back() {
    let Some(env) = KubeEnv::start() else { return };
    let client = env.client().await;
    install(&client, &ringmaster_crds()).await;
    create_namespace(&client, "fleet").await;

    // `ringmaster hub serve --fleet`: 40 simulated chillers; every 5000x fails 2.5.0-rc1.
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

    // The Secret, the Hub, a baseline under everything and the two rollouts.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "fleet");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "hub", "namespace": "fleet"},
                "stringData": {"connectionString": cs}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let hubs: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "fleet",
        &ApiResource::erase::<ringmaster::resources::Hub>(&()),
    );
    hubs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "ringmaster.dev/v1alpha1", "kind": "Hub",
            "metadata": {"name": "default", "namespace": "fleet"},
            "spec": {"type": "embedded", "url": url, "connectionStringSecret": {"name": "hub"}}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let api = rollouts(&client);
    let mut baseline = firmware("fleet-baseline", "4000x", "2.3.0", 1);
    baseline["spec"]["target"] = json!("tags.environment='prod'");
    baseline["spec"]["rings"] = json!([{"name": "all", "target": "*"}]);
    // The baseline is judged on being applied only: the rc's failures are not its own.
    baseline["spec"]["metrics"] =
        json!({"current": "properties.reported.firmware.version='2.3.0'"});
    baseline["spec"]["gate"] = json!({
        "minApplied": 2, "bake": "3s", "deadline": "5m",
        "success": "lowerBound(metrics.current, applied) >= 0.0"
    });
    for ro in [
        baseline,
        firmware("chiller-fw", "4000x", "2.4.0", 20),
        firmware("chiller-fw-rc", "5000x", "2.5.0-rc1", 20),
    ] {
        api.create(&PostParams::default(), &serde_json::from_value(ro).unwrap())
            .await
            .unwrap();
    }

    // `ringmaster run --kube`, out of cluster, on the kubeconfig.
    let _controller = proc::Proc::spawn(
        std::process::Command::new(BIN)
            .args(["run", "--kube", "--kube-namespace", "fleet"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", env.kubeconfig())
            .env("RUST_LOG", "warn"),
    );

    let phase_of = async |name: &str, want: &str| {
        wait_until(
            &format!("{name} {want}"),
            Duration::from_secs(240),
            async || {
                let got = api.get(name).await.ok()?;
                (got.data["status"]["phase"] == want).then_some(got)
            },
        )
        .await
    };
    let good = phase_of("chiller-fw", "Healthy").await;
    let bad = phase_of("chiller-fw-rc", "RolledBack").await;

    // What `kubectl describe` shows: the conditions, for the generation seen.
    assert_eq!(cond(&good, "Ready"), ("True".into(), "Healthy".into()));
    assert_eq!(cond(&good, "Reconciling").0, "False");
    assert_eq!(cond(&good, "Stalled").0, "False");
    assert_eq!(
        good.data["status"]["observedGeneration"],
        json!(good.metadata.generation.unwrap())
    );
    assert_eq!(cond(&bad, "Ready").0, "False");
    assert_eq!(cond(&bad, "Reconciling").0, "False");
    assert_eq!(cond(&bad, "Stalled"), ("True".into(), "RolledBack".into()));
    assert_eq!(
        bad.data["status"]["observedGeneration"],
        json!(bad.metadata.generation.unwrap())
    );

    // The events: each transition its own, with its own text.
    let events: Api<Event> = Api::namespaced(client.clone(), "fleet");
    let about = async |name: &str| -> Vec<Event> {
        events
            .list(&ListParams::default().fields(&format!("regarding.name={name}")))
            .await
            .unwrap()
            .items
    };
    let good_events = about("chiller-fw").await;
    let reasons: Vec<&str> = good_events
        .iter()
        .filter_map(|e| e.reason.as_deref())
        .collect();
    for want in ["Progressing", "RingStarted", "Healthy"] {
        assert!(reasons.contains(&want), "{reasons:?}");
    }
    let ring_notes: std::collections::BTreeSet<&str> = good_events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("RingStarted"))
        .filter_map(|e| e.note.as_deref())
        .collect();
    assert!(
        ring_notes.iter().any(|n| n.contains("'canary'"))
            && ring_notes.iter().any(|n| n.contains("'broad'")),
        "{ring_notes:?}"
    );
    assert!(
        good_events.iter().all(|e| e.series.is_none()),
        "no event folded into another"
    );
    let bad_events = about("chiller-fw-rc").await;
    assert!(
        bad_events
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some("RolledBack")),
        "{:?}",
        bad_events.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );

    // The printer columns, as `kubectl get dro` shows them, and as the API server's
    // Table (what kubectl prints) where kubectl is not installed.
    let mut tables = vec![server_table(&client).await];
    if has_kubectl() {
        tables.push(kubectl(&env, &["get", "dro", "-n", "fleet"]));
    }
    for table in &tables {
        let header = table.lines().next().unwrap();
        for column in ["NAME", "PHASE", "RING", "APPLIED", "REVISION", "AGE"] {
            assert!(header.contains(column), "{table}");
        }
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("no {name} in\n{table}"))
                .to_string()
        };
        assert!(row("chiller-fw").contains("Healthy"), "{table}");
        assert!(row("chiller-fw-rc").contains("RolledBack"), "{table}");
        assert!(row("fleet-baseline").contains("Healthy"), "{table}");
    }
}
