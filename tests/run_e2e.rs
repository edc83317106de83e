//! End to end: `ringmaster hub serve --in-memory` and `ringmaster run --dir` as the
//! built binary, a file edit that changes the configuration on the hub, and the CLI
//! (`status`, `pause`, `promote`) against the running controller's API.

use assert_cmd::Command as AssertCommand;
use ringmaster::client::Hub as _;
use ringmaster::client::azure::{AzureHub, AzureHubOptions};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");

#[path = "common/proc.rs"]
mod proc;
use proc::Proc;

fn rollout(value: u32) -> String {
    format!(
        "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRollout\nmetadata: {{name: fw, namespace: fleet}}\nspec:\n  target: \"*\"\n  priority: 5\n  content:\n    device:\n      properties.desired.firmware: {{version: \"{value}.0\"}}\n  rings:\n    - {{name: canary, target: \"tags.ring='canary'\"}}\n    - {{name: all, target: \"*\"}}\n  baseline: \"off\"\n"
    )
}

async fn wait_until<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A served hub, a client of it, and a source directory with a `Hub` pointing at it and
/// the rollout `fleet/fw`.
struct Setup {
    _hub: Proc,
    cs: String,
    client: AzureHub,
    dir: tempfile::TempDir,
    src: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cs_file = dir.path().join("hub.cs");
    let hub = Proc::spawn(
        Command::new(BIN)
            .args([
                "hub",
                "serve",
                "--in-memory",
                "--listen",
                "127.0.0.1:0",
                "--cycle-interval",
                "1s",
            ])
            .arg("--connection-string-file")
            .arg(&cs_file)
            .env("RUST_LOG", "warn"),
    );
    let (url, cs) = hub.hub_serve_ready(&cs_file);
    let client = AzureHub::new(
        &cs,
        AzureHubOptions {
            base_url: Some(url.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("hub.yaml"),
        format!("apiVersion: ringmaster.dev/v1alpha1\nkind: Hub\nmetadata: {{name: default, namespace: fleet}}\nspec: {{type: embedded, url: \"{url}\"}}\n"),
    )
    .unwrap();
    std::fs::write(src.join("fw.yaml"), rollout(1)).unwrap();
    Setup {
        _hub: hub,
        cs,
        client,
        dir,
        src,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_dir_applies_a_file_edit_to_a_served_hub_and_the_cli_reads_and_operates_it() {
    let Setup {
        _hub,
        cs,
        client,
        dir,
        src,
    } = setup();
    let run = Proc::spawn(
        Command::new(BIN)
            .args(["run", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&src)
            .arg("--state")
            .arg(dir.path().join("state.db"))
            // The test ends by deleting the only rollout file.
            .arg("--allow-empty")
            .args(["--api-token-env", "TEST_API_TOKEN"])
            .env("TEST_API_TOKEN", "s3cret")
            .env("RINGMASTER_HUB_FLEET_DEFAULT", &cs)
            .env("RUST_LOG", "warn"),
    );
    let api = run.wait_for(|l| {
        l.strip_prefix("ringmaster api listening on ")
            .map(str::to_string)
    });

    let ours = async || {
        let list = client.list_configurations().await.ok()?;
        list.into_iter().find(|c| c.id.starts_with("fleet_fw_"))
    };
    let first = wait_until(
        "the first revision's configuration",
        Duration::from_secs(20),
        ours,
    )
    .await;
    assert!(
        format!("{:?}", first.content).contains("1.0"),
        "{:?}",
        first.content
    );

    // Edit the file: the hub gets the new revision's configuration within seconds.
    std::fs::write(src.join("fw.yaml"), rollout(2)).unwrap();
    let start = Instant::now();
    let second = wait_until(
        "the edited revision's configuration",
        Duration::from_secs(20),
        async || ours().await.filter(|c| c.id != first.id),
    )
    .await;
    assert!(
        format!("{:?}", second.content).contains("2.0"),
        "{:?}",
        second.content
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "reacted in {:?}",
        start.elapsed()
    );

    // The CLI: status shows the table; writes need the token.
    let api2 = api.clone();
    let out = tokio::task::spawn_blocking(move || {
        AssertCommand::new(BIN)
            .args(["status", "--api", &api2])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone()
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out);
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(table.contains("fleet") && table.contains("fw"), "{table}");
    for col in ["PHASE", "RING", "STATE", "APPLIED", "REVISION", "AGE"] {
        assert!(table.contains(col), "{table}");
    }

    // `status -w` prints the table, and again when a row changes (the pause below).
    let watch = Proc::spawn(Command::new(BIN).args([
        "status",
        "-w",
        "fw",
        "--interval",
        "200ms",
        "--api",
        &api,
    ]));
    watch.wait_for(|l| l.starts_with("fleet").then_some(()));

    let api2 = api.clone();
    tokio::task::spawn_blocking(move || {
        AssertCommand::new(BIN)
            .args(["status", "nope", "--api", &api2])
            .assert()
            .code(1);
        AssertCommand::new(BIN)
            .args(["pause", "fw", "--api", &api2])
            .env("RINGMASTER_API_TOKEN", "wrong")
            .assert()
            .code(1);
        let out = AssertCommand::new(BIN)
            .args(["pause", "fleet/fw", "--api", &api2])
            .env("RINGMASTER_API_TOKEN", "s3cret")
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("pause queued for fleet/fw"), "{out}");
        AssertCommand::new(BIN)
            .args(["status", "--api", "http://127.0.0.1:1"])
            .assert()
            .code(2);
    })
    .await
    .unwrap();

    // The pause reaches the rollout's status.
    let http = reqwest::Client::new();
    wait_until(
        "the pause in the status",
        Duration::from_secs(10),
        async || {
            let body: serde_json::Value = http
                .get(format!("{api}/api/v1/rollouts/fleet/fw"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            body["status"]["paused"].is_object().then_some(())
        },
    )
    .await;
    watch.wait_for(|l| (l.starts_with("fleet") && l.contains("Paused")).then_some(()));
    drop(watch);
    let metrics = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "ringmaster_reconciles_total",
        "ringmaster_reconcile_duration_seconds_count",
        "ringmaster_rollouts{phase=\"Paused\"} 1",
        "ringmaster_hub_requests_total{operation=\"list\",code=\"200\"}",
        "ringmaster_hub_requests_total{operation=\"create\",code=\"200\"} 2",
        "ringmaster_hub_request_duration_seconds_count{operation=\"list\"}",
        "ringmaster_hub_actions_total{action=\"create\"} 2",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }

    // Deleting the file deletes the rollout's configurations (no device needs them).
    std::fs::remove_file(src.join("fw.yaml")).unwrap();
    wait_until(
        "the configurations gone",
        Duration::from_secs(20),
        async || ours().await.is_none().then_some(()),
    )
    .await;
    drop(run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_killed_and_restarted_continues_where_it_was() {
    let Setup {
        _hub,
        cs,
        client,
        dir,
        src,
    } = setup();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(secrets.join("fleet")).unwrap();
    std::fs::write(secrets.join("fleet").join("default"), &cs).unwrap();
    let start_run = || {
        Proc::spawn(
            Command::new(BIN)
                .args(["run", "--listen", "127.0.0.1:0", "--dir"])
                .arg(&src)
                .arg("--state")
                .arg(dir.path().join("state.db"))
                .arg("--hub-secrets-dir")
                .arg(&secrets)
                .env("RUST_LOG", "warn"),
        )
    };
    let http = reqwest::Client::new();
    let get = async |api: &str| -> Option<serde_json::Value> {
        let v: serde_json::Value = http
            .get(format!("{api}/api/v1/rollouts/fleet/fw"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["status"]["revision"].is_string().then_some(v)
    };

    let run = start_run();
    let api = run.wait_for(|l| {
        l.strip_prefix("ringmaster api listening on ")
            .map(str::to_string)
    });
    let before = wait_until("the first status", Duration::from_secs(20), async || {
        get(&api).await
    })
    .await;
    let config = client
        .list_configurations()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id.starts_with("fleet_fw_"))
        .expect("on the hub");
    drop(run); // SIGKILL

    // While it is down the file breaks: the restarted controller keeps the last good version.
    std::fs::write(src.join("fw.yaml"), "kind: DeviceRollout\nspec: [").unwrap();
    let run = start_run();
    let api = run.wait_for(|l| {
        l.strip_prefix("ringmaster api listening on ")
            .map(str::to_string)
    });
    let after = wait_until(
        "the status after the restart",
        Duration::from_secs(20),
        async || get(&api).await.filter(|v| v["error"].is_string()),
    )
    .await;
    assert_eq!(after["status"]["revision"], before["status"]["revision"]);
    assert_eq!(
        after["created"], before["created"],
        "the same rollout, not a new one"
    );
    assert!(!after["deleting"].as_bool().unwrap());
    assert!(
        after["error"].as_str().unwrap().contains("fw.yaml"),
        "{after}"
    );
    let now = client
        .list_configurations()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.id.starts_with("fleet_fw_"))
        .collect::<Vec<_>>();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].id, config.id, "nothing was recreated or deleted");

    // `status` flags the rollout and names the failing file.
    let out = tokio::task::spawn_blocking(move || {
        AssertCommand::new(BIN)
            .args(["status", "--api", &api])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone()
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("(!)") && out.contains("source file fw.yaml"),
        "{out}"
    );
}
