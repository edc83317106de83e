//! Proof with independent clients: `ringmaster hub serve` (the built binary, HTTPS with a
//! generated CA, on a port chosen at run time) is driven by Azure's official Python
//! service SDK, unpatched, and by ringmaster's own `AzureHub`, through the same scenarios:
//! devices, bulk, twins, paged queries, configurations, test queries.
//!
//! The Python SDK goes into a venv under `target/sdk-venv` (made on first run from PyPI:
//! `azure-iot-hub==2.7.0`, plus `six`, which the SDK imports without declaring it).

use ringmaster::client::Hub;
use ringmaster::client::azure::{AzureHub, AzureHubOptions, RequestBudget};
use ringmaster::iothub::configuration::{
    Configuration, ConfigurationContent, ConfigurationMetrics,
};
use ringmaster::iothub::error::ErrorCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `ringmaster hub serve`, killed on drop.
struct Served {
    child: Child,
    connection_string: String,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmaster"))
        .args([
            "hub",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-self-signed",
            "--cycle-interval",
            "1s",
            "--store",
        ])
        .arg(dir.path().join("hub.db"))
        .arg("--connection-string-file")
        .arg(dir.path().join("hub.cs"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ringmaster hub serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut cs, mut ca) = (None, None);
    while cs.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("hub serve printed its connection string");
        if let Some(rest) = line.strip_prefix("CA certificate: ") {
            ca = Some(PathBuf::from(rest.split(" (").next().unwrap()));
        }
        if line.starts_with("connection string: written to ") {
            let text = std::fs::read_to_string(dir.path().join("hub.cs")).unwrap();
            cs = text.lines().next().map(str::to_string);
        }
    }
    Served {
        child,
        connection_string: cs.unwrap(),
        ca: ca.expect("hub serve printed the CA path"),
        _dir: dir,
    }
}

/// The venv with the SDK: made when missing.
fn sdk_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv");
    let python = venv.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import azure.iot.hub, six; from importlib.metadata import version; assert version('azure-iot-hub') == '2.7.0'"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return python;
    }
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 is installed");
    assert!(
        st.success(),
        "python3 -m venv {} failed (Debian: apt-get install python3-venv)",
        venv.display()
    );
    let out = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--disable-pip-version-check",
            "-q",
            "azure-iot-hub==2.7.0",
            "six",
        ])
        .output()
        .expect("run pip");
    assert!(
        out.status.success(),
        "pip install azure-iot-hub==2.7.0 six failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ready(&python), "the SDK does not import after pip install");
    python
}

#[test]
fn the_official_python_sdk_drives_the_served_hub() {
    let python = sdk_python();
    let hub = serve();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/scenarios.py");
    let out = Command::new(python)
        .arg(script)
        .env("HUB_CONNECTION_STRING", &hub.connection_string)
        .env("REQUESTS_CA_BUNDLE", &hub.ca)
        .output()
        .expect("run the Python scenarios");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "Python SDK scenarios failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all scenarios passed"));
}

fn rollout(id: &str, target: &str) -> Configuration {
    Configuration {
        id: id.into(),
        schema_version: Some("1.0".into()),
        labels: BTreeMap::from([("rollout".into(), "fw".into())]),
        target_condition: target.into(),
        priority: 10,
        content: ConfigurationContent {
            device_content: Some(
                json!({"properties.desired.firmware": {"version": "2.0.0"}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            ..Default::default()
        },
        metrics: ConfigurationMetrics {
            queries: BTreeMap::from([(
                "current".into(),
                "SELECT deviceId FROM devices WHERE properties.reported.firmware.version = '2.0.0'"
                    .into(),
            )]),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn azure_hub_passes_the_same_scenarios_over_https() {
    let served = serve();
    let opts = AzureHubOptions {
        ca_pem: Some(std::fs::read(&served.ca).unwrap()),
        budget: RequestBudget::unlimited(),
        ..Default::default()
    };
    let hub = AzureHub::new(&served.connection_string, opts).unwrap();

    // Devices: create, duplicate, bulk.
    let d = hub
        .create_device(&json!({"deviceId": "rs-dev-1", "status": "enabled"}))
        .await
        .unwrap();
    assert!(d["etag"].as_str().is_some_and(|e| !e.is_empty()));
    let e = hub
        .create_device(&json!({"deviceId": "rs-dev-1"}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::DeviceAlreadyExists);
    let entries: Vec<Value> = (0..40)
        .map(|i| json!({"id": format!("rs-bulk-{i:03}"), "importMode": "create", "tags": {"fleet": "rs", "ring": if i < 5 { "canary" } else { "broad" }}}))
        .collect();
    let r = hub.bulk(&entries).await.unwrap();
    assert_eq!(r["isSuccessful"], true, "{r}");
    let r = hub.bulk(&entries[..1]).await.unwrap();
    assert_eq!(r["isSuccessful"], false);
    assert_eq!(r["errors"][0]["errorCode"], "DeviceAlreadyExists");
    assert_eq!(hub.statistics().await.unwrap()["totalDeviceCount"], 41);

    // Twins: read, patch with etag, stale etag, missing.
    let t = hub.get_twin("rs-bulk-000").await.unwrap().unwrap();
    assert_eq!(t["tags"]["ring"], "canary");
    let etag = t["etag"].as_str().unwrap().to_string();
    let t2 = hub
        .update_twin(
            "rs-bulk-000",
            &json!({"tags": {"site": "lab"}}),
            Some(&etag),
        )
        .await
        .unwrap();
    assert_eq!(t2["tags"]["site"], "lab");
    let e = hub
        .update_twin("rs-bulk-000", &json!({"tags": {"site": "x"}}), Some(&etag))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PreconditionFailed);
    assert_eq!(hub.get_twin("nobody").await.unwrap(), None);

    // Queries across pages.
    let mut pages = 0;
    let mut seen = Vec::new();
    let mut cont = None;
    loop {
        let p = hub
            .query(
                "SELECT * FROM devices WHERE tags.fleet = 'rs'",
                Some(7),
                cont.as_deref(),
            )
            .await
            .unwrap();
        pages += 1;
        assert_eq!(p.item_type, "twin");
        seen.extend(
            p.items
                .iter()
                .map(|t| t["deviceId"].as_str().unwrap().to_string()),
        );
        match p.continuation {
            Some(c) => cont = Some(c),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (40, 6));
    assert_eq!(
        hub.query_all(
            "SELECT deviceId FROM devices WHERE tags.fleet = 'rs'",
            Some(9)
        )
        .await
        .unwrap()
        .len(),
        40
    );
    assert_eq!(hub.count("tags.ring = 'canary'").await.unwrap(), 5);

    // Configurations: create, duplicate, get, update with etag, stale etag, list, delete.
    let c = hub
        .create_configuration(&rollout("rs-fw-200", "tags.ring = 'canary'"))
        .await
        .unwrap();
    let etag1 = c.etag.clone().unwrap();
    // An identical create is idempotent (as after a lost answer); a different one is not.
    assert_eq!(
        hub.create_configuration(&rollout("rs-fw-200", "tags.ring = 'canary'"))
            .await
            .unwrap()
            .etag,
        c.etag
    );
    let e = hub
        .create_configuration(&rollout("rs-fw-200", "*"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ConfigurationAlreadyExists);
    let twin = hub.get_twin("rs-bulk-001").await.unwrap().unwrap();
    assert_eq!(
        twin["properties"]["desired"]["firmware"]["version"],
        "2.0.0"
    );
    let mut wider = hub.get_configuration("rs-fw-200").await.unwrap().unwrap();
    wider.target_condition = "tags.ring = 'canary' OR tags.ring = 'broad'".into();
    let c2 = hub
        .update_configuration(&wider, Some(&etag1))
        .await
        .unwrap();
    assert_ne!(c2.etag.as_deref(), Some(etag1.as_str()));
    let e = hub
        .update_configuration(&wider, Some(&etag1))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PreconditionFailed);
    assert!(
        hub.list_configurations()
            .await
            .unwrap()
            .iter()
            .any(|c| c.id == "rs-fw-200")
    );
    let ok = hub
        .test_queries("tags.ring = 'canary'", &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(ok.target_condition_error, "");
    let bad = hub
        .test_queries(
            "tags.ring = = 'x'",
            &BTreeMap::from([("bad".into(), "SELEKT".into())]),
        )
        .await
        .unwrap();
    assert!(
        !bad.target_condition_error.is_empty()
            && bad.custom_metric_query_errors.contains_key("bad")
    );
    hub.delete_configuration("rs-fw-200", None).await.unwrap();
    assert_eq!(hub.get_configuration("rs-fw-200").await.unwrap(), None);
    let e = hub
        .delete_configuration("rs-fw-200", None)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ConfigurationNotFound);

    hub.delete_device("rs-dev-1", None).await.unwrap();
    assert_eq!(hub.get_device("rs-dev-1").await.unwrap(), None);
}
