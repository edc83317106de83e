//! `ringmaster plan` against a served hub: per ring, the devices reached and added, the
//! higher-priority configuration that shadows a device, the devices no baseline covers;
//! exit 1 while the rollout is not on the hub, 0 once it is.

use assert_cmd::Command as AssertCommand;
use ringmaster::client::Hub as _;
use ringmaster::client::azure::{AzureHub, AzureHubOptions};
use ringmaster::clock::SystemClock;
use ringmaster::driver::Driver;
use ringmaster::iothub::configuration::Configuration;
use ringmaster::manifest::{Document, load_manifests};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");

const ROLLOUT: &str = "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRollout\nmetadata: {name: fw, namespace: fleet}\nspec:\n  target: \"*\"\n  priority: 5\n  content:\n    device:\n      properties.desired.firmware: {version: \"2.0\"}\n  rings:\n    - {name: canary, target: \"tags.ring='canary'\"}\n    - {name: all, target: \"*\"}\n  baseline: \"off\"\n";

fn config(id: &str, priority: i32, target: &str) -> Configuration {
    serde_json::from_value(json!({
        "id": id, "priority": priority, "targetCondition": target,
        "content": {"deviceContent": {"properties.desired.firmware": {"version": "1.0"}}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_counts_each_ring_and_exits_1_until_the_rollout_is_on_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let cs_file = dir.path().join("hub.cs");
    let mut child = Command::new(BIN)
        .args(["hub", "serve", "--in-memory", "--listen", "127.0.0.1:0"])
        .arg("--connection-string-file")
        .arg(&cs_file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let url = lines
        .find_map(|l| {
            l.strip_prefix("ringmaster hub listening on ")
                .map(str::to_string)
        })
        .unwrap();
    lines
        .find(|l| l.starts_with("connection string: written to "))
        .unwrap();
    let cs = std::fs::read_to_string(&cs_file).unwrap();
    let cs = cs.lines().next().unwrap().to_string();
    let hub = AzureHub::new(
        &cs,
        AzureHubOptions {
            base_url: Some(url.clone()),
            ..Default::default()
        },
    )
    .unwrap();

    // 10 devices: d0, d1 in the canary ring; d0..d5 in prod.
    for i in 0..10 {
        let id = format!("d{i}");
        hub.create_device(&json!({"deviceId": id})).await.unwrap();
        let ring = if i < 2 { "canary" } else { "broad" };
        let env = if i < 6 { "prod" } else { "lab" };
        hub.update_twin(&id, &json!({"tags": {"ring": ring, "env": env}}), None)
            .await
            .unwrap();
    }
    // A baseline under it for prod, and an override above it on d0.
    hub.create_configuration(&config("baseline", 1, "tags.env='prod'"))
        .await
        .unwrap();
    hub.create_configuration(&config("hotfix", 50, "deviceId='d0'"))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fw.yaml");
    std::fs::write(&file, ROLLOUT).unwrap();
    let (cs2, url2, file2) = (cs.clone(), url.clone(), file.clone());
    let out = tokio::task::spawn_blocking(move || {
        AssertCommand::new(BIN)
            .arg("plan")
            .arg(&file2)
            .args(["--hub", &cs2, "--hub-url", &url2])
            .assert()
            .code(1)
            .get_output()
            .stdout
            .clone()
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&out).to_string();
    assert!(out.contains("fleet/fw: new rollout"), "{out}");
    let row = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let canary = row("canary");
    assert_eq!(
        &canary[1..4],
        ["2", "2", "0"],
        "reached, added, uncovered: {out}"
    );
    assert!(
        canary[4].starts_with("hotfix"),
        "d0 is shadowed by the hotfix: {out}"
    );
    let all = row("all");
    assert_eq!(
        &all[1..4],
        ["10", "8", "4"],
        "d6..d9 are outside the baseline: {out}"
    );

    // Once the rollout's configuration is on the hub, nothing changes: exit 0.
    let Document::DeviceRollout(ro) = load_manifests("fw.yaml", ROLLOUT).unwrap().remove(0) else {
        panic!()
    };
    let driver = Driver::new(Arc::new(hub), Arc::new(SystemClock));
    let outcome = driver.reconcile(&ro, &Default::default()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    tokio::task::spawn_blocking(move || {
        AssertCommand::new(BIN)
            .arg("plan")
            .arg(&file)
            .args(["--hub", &cs, "--hub-url", &url])
            .assert()
            .code(0);
        AssertCommand::new(BIN)
            .args(["plan", "/nonexistent.yaml", "--hub", &cs, "--hub-url", &url])
            .assert()
            .code(2);
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
}
