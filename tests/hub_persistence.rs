//! The embedded hub's SQLite store: acknowledged writes survive a killed process.

use ringmaster::clock::{ManualClock, SystemClock};
use ringmaster::hub::{EmbeddedHub, HubOptions};
use ringmaster::iothub::ErrorCode;
use ringmaster::iothub::configuration::{Configuration, ConfigurationContent};
use ringmaster::iothub::device::Device;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

const CHILD_ENV: &str = "RINGMASTER_TEST_CHILD_STORE";

fn fw_config() -> Configuration {
    Configuration {
        id: "fw".into(),
        target_condition: "tags.ring='canary'".into(),
        priority: 5,
        content: ConfigurationContent {
            device_content: Some(
                json!({"properties.desired.firmware": {"version": "2"}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The child: writes devices as fast as it can and prints an ACK after each returns.
fn child(path: &str) {
    let hub = EmbeddedHub::open(
        std::path::Path::new(path),
        Arc::new(SystemClock),
        HubOptions::default(),
    )
    .unwrap();
    hub.create_configuration(&fw_config()).unwrap();
    let out = std::io::stdout();
    for i in 0.. {
        let id = format!("d{i}");
        hub.create_device_with_twin(Device::new(&id), &json!({"tags": {"ring": "canary"}}))
            .unwrap();
        hub.patch_reported(&id, &json!({"seq": i})).unwrap();
        let mut o = out.lock();
        writeln!(o, "ACK {i}").unwrap();
        o.flush().unwrap();
    }
}

#[test]
fn reopening_after_sigkill_loses_nothing_acknowledged() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(&path);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reopening_after_sigkill_loses_nothing_acknowledged",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0usize;
    let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if let Some(n) = line.strip_prefix("ACK ") {
            acked = n.parse::<usize>().unwrap() + 1;
            if acked >= 150 {
                break;
            }
        }
    }
    proc.kill().unwrap(); // SIGKILL on Unix
    proc.wait().unwrap();
    assert!(acked >= 150, "the child acknowledged only {acked} writes");

    let clock = ManualClock::at_epoch();
    let hub = EmbeddedHub::open(&db, Arc::new(clock), HubOptions::default()).unwrap();
    for i in 0..acked {
        let t = hub.get_twin(&format!("d{i}")).unwrap();
        assert_eq!(t["properties"]["reported"]["seq"], i, "d{i}");
        assert_eq!(
            t["properties"]["desired"]["firmware"]["version"], "2",
            "d{i}"
        );
        assert_eq!(t["configurations"]["fw"]["status"], "applied", "d{i}");
    }
    let fw = hub.get_configuration("fw").unwrap();
    assert!(fw.system_metrics.results["appliedCount"] as usize >= acked);
}

#[test]
fn a_reopened_hub_keeps_owners_etags_and_creation_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let clock = ManualClock::at_epoch();
    let etag;
    {
        let hub = EmbeddedHub::open(&db, Arc::new(clock.clone()), HubOptions::default()).unwrap();
        hub.create_device_with_twin(Device::new("d1"), &json!({"tags": {"ring": "canary"}}))
            .unwrap();
        let mut base = fw_config();
        base.id = "base".into();
        base.target_condition = "*".into();
        base.content.device_content = Some(
            json!({"properties.desired.firmware": {"version": "1"}})
                .as_object()
                .unwrap()
                .clone(),
        );
        base.priority = 5;
        hub.create_configuration(&base).unwrap();
        clock.advance(jiff::SignedDuration::from_secs(1));
        hub.create_configuration(&fw_config()).unwrap();
        etag = hub.get_twin("d1").unwrap()["etag"].clone();
    }
    let hub = EmbeddedHub::open(&db, Arc::new(clock.clone()), HubOptions::default()).unwrap();
    let t = hub.get_twin("d1").unwrap();
    assert_eq!(t["etag"], etag, "reopening changes nothing");
    assert_eq!(
        t["properties"]["desired"]["firmware"]["version"], "2",
        "the newer config still wins the tie"
    );
    // Narrowing after the restart hands the path back to the base configuration.
    let mut fw = hub.get_configuration("fw").unwrap();
    fw.target_condition = "tags.ring='none'".into();
    hub.update_configuration(&fw, None).unwrap();
    assert_eq!(
        hub.get_twin("d1").unwrap()["properties"]["desired"]["firmware"]["version"],
        "1"
    );
    assert_eq!(
        hub.get_configuration("base")
            .unwrap()
            .system_metrics
            .results["appliedCount"],
        1
    );
}

#[test]
fn a_store_from_a_newer_ringmaster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES ('schema_version', '99');").unwrap();
    }
    let e = EmbeddedHub::open(&db, Arc::new(SystemClock), HubOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.code, ErrorCode::ServerError);
    assert!(e.message.contains("schema version 99"), "{e}");
}

#[test]
fn a_schema_1_store_is_read_and_marked_2_and_every_value_kind_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    {
        // What a schema 1 build wrote: the sections as objects.
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE devices (id TEXT PRIMARY KEY, device TEXT NOT NULL, twin TEXT NOT NULL, owners TEXT NOT NULL);
             CREATE TABLE configurations (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, doc TEXT NOT NULL);
             INSERT INTO meta VALUES ('schema_version', '1');",
        )
        .unwrap();
        let device = serde_json::to_string(&Device::new("old")).unwrap();
        let twin = json!({
            "tags": {"ring": "canary", "site": {"floor": 3}},
            "desired": {"firmware": {"version": "1.0"}},
            "reported": {"firmware": {"status": "Current"}},
            "configurations": {},
            "version": 4, "desiredVersion": 2, "reportedVersion": 3,
            "desiredUpdated": "2026-01-01T00:00:00Z", "reportedUpdated": "2026-01-01T00:00:01Z", "etag": 9,
        });
        c.execute(
            "INSERT INTO devices VALUES ('old', ?1, ?2, '[]')",
            rusqlite::params![device, twin.to_string()],
        )
        .unwrap();
    }
    let values = json!({
        "s": "short", "long": "a string longer than twenty-two bytes, with \"quotes\" and \\ and ünïcödé",
        "i": -42, "big": 4503599627370495i64, "f": 2.5, "t": true, "a": [1, "two", {"three": 3}],
        "o": {"deep": {"er": "x"}, "empty": {}},
    });
    {
        let hub = EmbeddedHub::open(&db, Arc::new(SystemClock), HubOptions::default()).unwrap();
        let t = hub.get_twin("old").unwrap();
        assert_eq!(
            t["tags"],
            json!({"ring": "canary", "site": {"floor": 3}}),
            "a schema 1 row reads"
        );
        assert_eq!(t["properties"]["reported"]["firmware"]["status"], "Current");
        assert_eq!(t["version"], 4);
        hub.create_device_with_twin(Device::new("new"), &json!({"tags": values}))
            .unwrap();
        hub.update_twin("old", &json!({"tags": {"ring": "early"}}), None)
            .unwrap();
    }
    let c = rusqlite::Connection::open(&db).unwrap();
    let v: String = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        v, "2",
        "opening marks the store with the schema this build writes"
    );
    let hub = EmbeddedHub::open(&db, Arc::new(SystemClock), HubOptions::default()).unwrap();
    assert_eq!(
        hub.get_twin("new").unwrap()["tags"],
        values,
        "every kind of value comes back as it went in"
    );
    let old = hub.get_twin("old").unwrap();
    assert_eq!(
        old["tags"],
        json!({"ring": "early", "site": {"floor": 3}}),
        "a row rewritten in schema 2 reads back"
    );
    assert_eq!(old["properties"]["desired"]["firmware"]["version"], "1.0");
}

/// Configuration changes are stored as small layer rows over the twin rows: every twin
/// reads back exactly as it was served (content, versions, etag, `$metadata`, statuses)
/// through creates, a user write over a configuration's path, narrowing, deleting, and
/// more reopens.
#[test]
fn twins_read_back_the_same_after_configuration_changes_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hub.db");
    let clock = ManualClock::at_epoch();
    let open = || EmbeddedHub::open(&db, Arc::new(clock.clone()), HubOptions::default()).unwrap();
    let twins = |hub: &EmbeddedHub| -> Vec<serde_json::Value> {
        (0..6)
            .map(|i| hub.get_twin(&format!("d{i}")).unwrap())
            .collect()
    };
    let tick = || clock.advance(jiff::SignedDuration::from_secs(1));
    type Step = Box<dyn Fn(&EmbeddedHub)>;
    let mut steps: Vec<Step> = Vec::new();
    steps.push(Box::new(|hub| {
        for i in 0..6 {
            let ring = if i < 3 { "canary" } else { "broad" };
            hub.create_device_with_twin(
                Device::new(&format!("d{i}")),
                &json!({"tags": {"ring": ring}, "properties": {"desired": {"own": i}}}),
            )
            .unwrap();
        }
        hub.create_configuration(&fw_config()).unwrap();
    }));
    steps.push(Box::new(|hub| {
        let mut all = fw_config();
        all.id = "all".into();
        all.target_condition = "*".into();
        all.priority = 1;
        all.content.device_content = Some(
            json!({"properties.desired.firmware": {"version": "1"}, "properties.desired.net.mtu": 1400})
                .as_object()
                .unwrap()
                .clone(),
        );
        hub.create_configuration(&all).unwrap();
    }));
    steps.push(Box::new(|hub| {
        // A user writes over a configuration's path: kept until the owner changes.
        hub.update_twin(
            "d1",
            &json!({"properties": {"desired": {"firmware": {"version": "mine"}}}}),
            None,
        )
        .unwrap();
        hub.patch_reported("d2", &json!({"seen": true})).unwrap();
    }));
    steps.push(Box::new(|hub| {
        let mut fw = hub.get_configuration("fw").unwrap();
        fw.target_condition = "tags.ring='canary' AND deviceId != 'd0'".into();
        hub.update_configuration(&fw, None).unwrap();
    }));
    steps.push(Box::new(|hub| {
        hub.delete_configuration("all", None).unwrap();
        hub.delete_device("d5", None).unwrap();
        hub.create_device(Device::new("d5")).unwrap();
    }));
    for (n, step) in steps.iter().enumerate() {
        let before = {
            let hub = open();
            tick();
            step(&hub);
            twins(&hub)
        };
        let hub = open();
        assert_eq!(twins(&hub), before, "after step {n} and a reopen");
        let again = open();
        assert_eq!(twins(&again), before, "after step {n} and a second reopen");
    }
    let hub = open();
    let t = hub.get_twin("d1").unwrap();
    // The user's value over fw's path stays: its owner never changed.
    assert_eq!(t["properties"]["desired"]["firmware"]["version"], "mine");
    assert_eq!(t["properties"]["desired"]["own"], 1);
    assert_eq!(t["configurations"]["fw"]["status"], "applied");
}
