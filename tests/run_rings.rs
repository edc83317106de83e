//! `DeviceRings` in directory mode: in process (a file over untagged devices of an
//! embedded hub, run by the controller loop's steps, its status read through the HTTP
//! API; a change of percents; the file deleted), and end to end (`ringmaster run --dir`
//! on `ringmaster hub serve --fleet`).

#[path = "common/proc.rs"]
mod proc;

use proc::Proc;
use ringmaster::client::Hub as _;
use ringmaster::client::azure::{AzureHub, AzureHubOptions};
use ringmaster::clock::SystemClock;
use ringmaster::hub::EmbeddedHub;
use ringmaster::iothub::device::Device;
use ringmaster::run::api::{self, ApiState};
use ringmaster::run::sources::Catalog;
use ringmaster::run::sources::dir::scan;
use ringmaster::run::store::StateStore;
use ringmaster::run::{Controller, HubAccess};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");

const DEVICES: usize = 400;

/// A Hub in the source: the shared in-process hub, with a twin-update budget that tags
/// the whole fleet in one pass.
const HUB: &str = "apiVersion: ringmaster.dev/v1alpha1\nkind: Hub\nmetadata: {name: plant, namespace: fleet}\nspec:\n  type: embedded\n  limits: {twinUpdatesPerSecond: 100000}\n";

fn rings(canary: u32, early: u32) -> String {
    let broad = 100 - canary - early;
    format!(
        "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRings\nmetadata: {{name: chillers, namespace: fleet}}\nspec:\n  hub: plant\n  target: \"tags.environment='prod'\"\n  tag: ring\n  rings:\n    - {{name: canary, percent: {canary}}}\n    - {{name: early, percent: {early}}}\n    - {{name: broad, percent: {broad}}}\n  spreadBy: [tags.model]\n  salt: \"2026-11\"\n"
    )
}

struct Setup {
    ctl: Controller,
    hub: EmbeddedHub,
    api: Arc<ApiState>,
}

fn setup(dir: &Path) -> Setup {
    setup_with(dir, HubAccess::default())
}

fn setup_with(dir: &Path, access: HubAccess) -> Setup {
    let store = StateStore::open(&dir.join("state.db")).unwrap();
    let hub = EmbeddedHub::in_memory(Arc::new(SystemClock));
    let devices = (0..DEVICES)
        .map(|i| {
            let model = ["4000x", "4000x", "5000x"][i % 3];
            (
                Device::new(&format!("dev-{i:04}")),
                Some(json!({"tags": {"environment": "prod", "model": model}})),
            )
        })
        .collect();
    hub.create_devices(devices).unwrap();
    hub.create_device_with_twin(
        Device::new("lab-1"),
        &json!({"tags": {"environment": "lab"}}),
    )
    .unwrap();
    let api = Arc::new(ApiState::new(store.clone()));
    let ctl = Controller::new(
        api.clone(),
        Catalog::restore(store.good_files().unwrap()),
        hub.clone(),
        access,
    );
    Setup { ctl, hub, api }
}

/// Reads the source and reconciles what is due, as one turn of the loop does.
async fn pass(s: &mut Setup, root: &Path) {
    s.ctl.ingest(&scan(root).unwrap()).await.unwrap();
    s.ctl.reconcile_due().await.unwrap();
    s.ctl.rings_passed().await;
}

/// Every device's ring tag.
fn tags(hub: &EmbeddedHub) -> BTreeMap<String, Option<String>> {
    hub.list_devices(usize::MAX)
        .into_iter()
        .map(|d| {
            let t = hub.get_twin(&d.device_id).unwrap();
            (d.device_id, t["tags"]["ring"].as_str().map(str::to_string))
        })
        .collect()
}

fn count(tags: &BTreeMap<String, Option<String>>, ring: &str) -> usize {
    tags.values().filter(|t| t.as_deref() == Some(ring)).count()
}

async fn get(url: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(url).await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rings_file_tags_the_fleet_moves_only_what_a_change_asks_and_stops_when_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("hub.yaml"), HUB).unwrap();
    std::fs::write(root.join("rings.yaml"), rings(10, 30)).unwrap();
    let mut s = setup(dir.path());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", tcp.local_addr().unwrap());
    tokio::spawn(api::serve(tcp, s.api.clone()));

    // One pass tags every device the target matches, in the declared proportions; the
    // device outside the target is left alone.
    pass(&mut s, &root).await;
    let before = tags(&s.hub);
    assert_eq!(before["lab-1"], None);
    let (canary, early, broad) = (
        count(&before, "canary"),
        count(&before, "early"),
        count(&before, "broad"),
    );
    assert_eq!(canary + early + broad, DEVICES, "{before:?}");
    // Two strata (4000x, 5000x): each ring within one device per stratum.
    assert!(canary.abs_diff(DEVICES / 10) <= 2, "canary {canary}");
    assert!(early.abs_diff(DEVICES * 3 / 10) <= 2, "early {early}");

    let (code, list) = get(&format!("{base}/api/v1/devicerings")).await;
    assert_eq!(code, 200, "{list}");
    let item = &list["items"][0];
    assert_eq!(item["namespace"], "fleet");
    assert_eq!(item["name"], "chillers");
    assert_eq!(item["source"], "rings.yaml");
    let st = &item["status"];
    assert_eq!(st["devices"], DEVICES as u64, "{st}");
    assert_eq!(st["rings"]["canary"], canary as u64, "{st}");
    assert_eq!(st["rings"]["early"], early as u64);
    assert_eq!(st["rings"]["broad"], broad as u64);
    assert_eq!(st["pendingWrites"], 0);
    assert_eq!(st["written"], DEVICES as u64);
    assert_eq!(st["observedGeneration"], 1);
    assert!(
        st["strata"]["5000x"]["canary"].as_u64().unwrap() > 0,
        "{st}"
    );
    let ready = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True", "{st}");

    // Canary grows from 10% to 20%, early shrinks by as much: only early devices move,
    // all into canary; every canary device stays; broad is untouched.
    std::fs::write(root.join("rings.yaml"), rings(20, 20)).unwrap();
    pass(&mut s, &root).await;
    let after = tags(&s.hub);
    let moved: Vec<(&String, &Option<String>, &Option<String>)> = before
        .iter()
        .filter(|(id, t)| after[*id] != **t)
        .map(|(id, t)| (id, t, &after[id]))
        .collect();
    assert!(!moved.is_empty());
    for (id, from, to) in &moved {
        assert_eq!(from.as_deref(), Some("early"), "{id} moved from {from:?}");
        assert_eq!(to.as_deref(), Some("canary"), "{id} moved to {to:?}");
    }
    assert_eq!(count(&after, "canary"), canary + moved.len());
    assert!(count(&after, "canary").abs_diff(DEVICES / 5) <= 2);
    assert_eq!(count(&after, "broad"), broad);
    let (_, one) = get(&format!("{base}/api/v1/devicerings/fleet/chillers")).await;
    assert_eq!(one["generation"], 2);
    assert_eq!(one["status"]["observedGeneration"], 2, "{one}");
    assert_eq!(one["status"]["written"], moved.len() as u64);
    assert_eq!(
        one["status"]["rings"]["canary"],
        count(&after, "canary") as u64
    );

    // A device that arrives is tagged by the next pass.
    s.hub
        .create_device_with_twin(
            Device::new("new-1"),
            &json!({"tags": {"environment": "prod", "model": "5000x"}}),
        )
        .unwrap();
    s.ctl.reconcile_all_now();
    pass(&mut s, &root).await;
    assert!(tags(&s.hub)["new-1"].is_some());

    // A broken version (percents add up to 110) keeps the last good one in effect, and
    // says so.
    let good = tags(&s.hub);
    std::fs::write(
        root.join("rings.yaml"),
        rings(30, 20).replace("percent: 50", "percent: 60"),
    )
    .unwrap();
    pass(&mut s, &root).await;
    let (_, one) = get(&format!("{base}/api/v1/devicerings/fleet/chillers")).await;
    assert_eq!(one["generation"], 2, "{one}");
    assert!(
        one["sourceError"].as_str().unwrap().contains("rings.yaml"),
        "{one}"
    );
    assert_eq!(tags(&s.hub), good);

    // The file deleted: no more passes (a new device stays untagged), the tags stay, the
    // API no longer lists it.
    std::fs::remove_file(root.join("rings.yaml")).unwrap();
    pass(&mut s, &root).await;
    s.hub
        .create_device_with_twin(
            Device::new("new-2"),
            &json!({"tags": {"environment": "prod", "model": "5000x"}}),
        )
        .unwrap();
    s.ctl.reconcile_all_now();
    pass(&mut s, &root).await;
    let last = tags(&s.hub);
    assert_eq!(last["new-2"], None);
    assert_eq!(count(&last, "canary"), count(&after, "canary"));
    let (_, list) = get(&format!("{base}/api/v1/devicerings")).await;
    assert_eq!(list["items"], json!([]));
    let (code, _) = get(&format!("{base}/api/v1/devicerings/fleet/chillers")).await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rings_file_naming_a_missing_hub_says_so_and_tags_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("rings.yaml"), rings(10, 30)).unwrap();
    let mut s = setup(dir.path());
    pass(&mut s, &root).await;
    assert!(tags(&s.hub).values().all(Option::is_none));
    let entries = s.api.rings.lock().clone();
    let e = &entries[&("fleet".to_string(), "chillers".to_string())];
    assert_eq!(
        e.hub_problem,
        Some(ringmaster::resolver::HubProblem::HubNotFound)
    );
    assert!(e.hub_error.as_deref().unwrap().contains("plant"), "{e:?}");
}

/// Every device's ring tag, through the hub's REST query.
async fn remote_tags(hub: &AzureHub) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    let mut continuation: Option<String> = None;
    loop {
        let page = hub
            .query(
                "SELECT deviceId, tags FROM devices",
                Some(1000),
                continuation.as_deref(),
            )
            .await
            .unwrap();
        for row in &page.items {
            out.insert(
                row["deviceId"].as_str().unwrap().to_string(),
                row["tags"]["ring"].as_str().map(str::to_string),
            );
        }
        match page.continuation {
            Some(c) => continuation = Some(c),
            None => return out,
        }
    }
}

/// Polls `GET url` until `done` holds for its body (30 s at most).
async fn until(
    url: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(url).await
            && let Ok(v) = r.json::<serde_json::Value>().await
            && done(&v)
        {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const FLEET: &str = "devices: 300\nidPrefix: dev-\nseed: 7\nmodels: {\"4000x\": 0.5, \"5000x\": 0.5}\nregions: {eu-west: 0.5, us-east: 0.5}\n";

/// `ringmaster hub serve --fleet` with 300 untagged devices: the process, its url, its
/// connection string and a client.
fn hub_serve(dir: &Path) -> (Proc, String, String, AzureHub) {
    let fleet = dir.join("fleet.yaml");
    std::fs::write(&fleet, FLEET).unwrap();
    let cs_file = dir.join("hub.cs");
    let hub = Proc::spawn(
        Command::new(BIN)
            .args([
                "hub",
                "serve",
                "--in-memory",
                "--listen",
                "127.0.0.1:0",
                "--fleet",
            ])
            .arg(&fleet)
            .arg("--connection-string-file")
            .arg(&cs_file)
            .env("RUST_LOG", "warn"),
    );
    let (hub_url, cs) = hub.hub_serve_ready(&cs_file);
    let client = AzureHub::new(
        &cs,
        AzureHubOptions {
            base_url: Some(hub_url.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    (hub, hub_url, cs, client)
}

fn hub_file(hub_url: &str) -> String {
    format!(
        "apiVersion: ringmaster.dev/v1alpha1\nkind: Hub\nmetadata: {{name: plant, namespace: fleet}}\nspec: {{type: embedded, url: \"{hub_url}\", limits: {{twinUpdatesPerSecond: 1000}}}}\n"
    )
}

/// A DeviceRings over every device, in the Hub `plant`.
fn file(canary: u32, early: u32) -> String {
    rings(canary, early).replace("\"tags.environment='prod'\"", "\"*\"")
}

/// Whether a `GET /api/v1/devicerings/...` body shows generation `g` applied to the 300
/// devices, nothing pending, Ready.
fn settled(g: i64) -> impl Fn(&serde_json::Value) -> bool {
    move |v: &serde_json::Value| {
        v["status"]["observedGeneration"] == g
            && v["status"]["devices"] == 300
            && v["status"]["pendingWrites"] == 0
            && v["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_dir_on_hub_serve_tags_the_fleet_and_follows_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_hub, hub_url, cs, client) = hub_serve(dir.path());
    assert!(remote_tags(&client).await.values().all(Option::is_none));

    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hub.yaml"), hub_file(&hub_url)).unwrap();
    std::fs::write(src.join("rings.yaml"), file(10, 30)).unwrap();
    let run = Proc::spawn(
        Command::new(BIN)
            .args(["run", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&src)
            .arg("--state")
            .arg(dir.path().join("state.db"))
            .env("RINGMASTER_HUB_FLEET_PLANT", &cs)
            .env("RUST_LOG", "warn"),
    );
    let api = run.wait_for(|l| {
        l.strip_prefix("ringmaster api listening on ")
            .map(str::to_string)
    });
    let one = format!("{api}/api/v1/devicerings/fleet/chillers");
    let st = until(&one, "every device tagged", settled(1)).await;
    let before = remote_tags(&client).await;
    assert_eq!(before.len(), 300);
    for ring in ["canary", "early", "broad"] {
        assert_eq!(
            st["status"]["rings"][ring],
            count(&before, ring) as u64,
            "{st}"
        );
    }
    assert!(count(&before, "canary").abs_diff(30) <= 2, "{before:?}");
    // `ringmaster status` shows it under the rollouts.
    let out = Command::new(BIN)
        .args(["status", "--api", &api])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "devicerings fleet/chillers: 300 devices (canary {}, early {}, broad {}), 0 writes pending",
            count(&before, "canary"),
            count(&before, "early"),
            count(&before, "broad")
        )),
        "{text}"
    );
    assert!(count(&before, "early").abs_diff(90) <= 2, "{before:?}");

    // Canary 10% -> 20% (early 30% -> 20%): the file event brings a pass at once; only
    // early devices move, into canary.
    std::fs::write(src.join("rings.yaml"), file(20, 20)).unwrap();
    until(&one, "the new percents applied", settled(2)).await;
    let after = remote_tags(&client).await;
    let moved: Vec<_> = before
        .iter()
        .filter(|(id, t)| after[*id] != **t)
        .map(|(id, t)| (id.clone(), t.clone(), after[id].clone()))
        .collect();
    assert!(!moved.is_empty());
    for (id, from, to) in &moved {
        assert_eq!(
            (from.as_deref(), to.as_deref()),
            (Some("early"), Some("canary")),
            "{id}"
        );
    }
    assert_eq!(count(&after, "broad"), count(&before, "broad"));

    // The file deleted: the API stops listing it; the tags stay.
    std::fs::remove_file(src.join("rings.yaml")).unwrap();
    until(
        &format!("{api}/api/v1/devicerings"),
        "the DeviceRings gone",
        |v| v["items"] == json!([]),
    )
    .await;
    assert_eq!(remote_tags(&client).await, after);
    drop(run);
}

/// Runs `git` in `dir`.
fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_git_on_hub_serve_tags_the_fleet_and_follows_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (_hub, hub_url, cs, client) = hub_serve(dir.path());
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("hub.yaml"), hub_file(&hub_url)).unwrap();
    std::fs::write(work.join("rings.yaml"), file(10, 30)).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "rings"]);
    let run = Proc::spawn(
        Command::new(BIN)
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--interval",
                "1s",
                "--git",
            ])
            .arg(format!("file://{}", work.display()))
            .args(["--branch", "main", "--git-cache"])
            .arg(dir.path().join("cache.git"))
            .arg("--state")
            .arg(dir.path().join("state.db"))
            .env("RINGMASTER_HUB_FLEET_PLANT", &cs)
            .env("RUST_LOG", "warn"),
    );
    let api = run.wait_for(|l| {
        l.strip_prefix("ringmaster api listening on ")
            .map(str::to_string)
    });
    let one = format!("{api}/api/v1/devicerings/fleet/chillers");
    until(&one, "every device tagged", settled(1)).await;
    let before = remote_tags(&client).await;
    assert!(count(&before, "canary").abs_diff(30) <= 2, "{before:?}");

    // A commit grows canary: the next fetch applies it, moving early devices only.
    std::fs::write(work.join("rings.yaml"), file(20, 20)).unwrap();
    git(&work, &["commit", "-q", "-am", "canary 20%"]);
    until(&one, "the commit applied", settled(2)).await;
    let after = remote_tags(&client).await;
    for (id, t) in &before {
        if after[id] != *t {
            assert_eq!(
                (t.as_deref(), after[id].as_deref()),
                (Some("early"), Some("canary")),
                "{id}"
            );
        }
    }
    assert!(count(&after, "canary").abs_diff(60) <= 2, "{after:?}");

    // A commit removes the file: it drops out; the tags stay.
    git(&work, &["rm", "-q", "rings.yaml"]);
    git(&work, &["commit", "-q", "-m", "no rings"]);
    until(
        &format!("{api}/api/v1/devicerings"),
        "the DeviceRings gone",
        |v| v["items"] == json!([]),
    )
    .await;
    assert_eq!(remote_tags(&client).await, after);
    drop(run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_never_answers_a_pass_holds_up_no_rollout() {
    // A hub that takes connections and never answers.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = stuck.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = stuck.accept().await {
            held.push(sock);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(secrets.join("fleet")).unwrap();
    std::fs::write(
        secrets.join("fleet").join("stuck"),
        format!("HostName={at};SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY="),
    )
    .unwrap();
    let root = dir.path().join("src");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(
        root.join("hub.yaml"),
        format!("apiVersion: ringmaster.dev/v1alpha1\nkind: Hub\nmetadata: {{name: stuck, namespace: fleet}}\nspec: {{type: embedded, url: \"http://{at}\"}}\n"),
    )
    .unwrap();
    std::fs::write(
        root.join("rings.yaml"),
        rings(10, 30).replace("hub: plant", "hub: stuck"),
    )
    .unwrap();
    std::fs::write(
        root.join("rollout.yaml"),
        "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRollout\nmetadata: {name: a, namespace: fleet}\nspec:\n  target: \"*\"\n  priority: 5\n  content:\n    device:\n      properties.desired.x: {value: 1}\n  rings:\n    - {name: all, target: \"*\"}\n  baseline: \"off\"\n",
    )
    .unwrap();
    let mut s = setup_with(
        dir.path(),
        HubAccess {
            secrets_dir: Some(secrets),
            ca_pem: None,
        },
    );
    s.ctl.ingest(&scan(&root).unwrap()).await.unwrap();
    // The round returns with the rollout applied while the pass still waits on the hub.
    s.ctl.reconcile_due().await.unwrap();
    assert!(
        s.hub
            .list_configurations()
            .iter()
            .any(|c| c.id.starts_with("fleet_a_")),
        "the rollout was reconciled"
    );
    let entry = s.api.rings.lock()[&("fleet".to_string(), "chillers".to_string())].clone();
    assert_eq!(entry.last_pass, None, "{entry:?}");
    // The next round starts no second pass of it.
    s.ctl.reconcile_all_now();
    s.ctl.reconcile_due().await.unwrap();
}
