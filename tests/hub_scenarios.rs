//! Scenarios from the IoT Hub reference (§1): how automatic device configurations decide
//! conflicts, fall back, and count, on the embedded hub.

use ringmaster::clock::ManualClock;
use ringmaster::hub::{EmbeddedHub, HubOptions};
use ringmaster::iothub::ErrorCode;
use ringmaster::iothub::configuration::{Configuration, ConfigurationContent};
use ringmaster::iothub::device::Device;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

fn hub() -> (EmbeddedHub, ManualClock) {
    let clock = ManualClock::at_epoch();
    (EmbeddedHub::in_memory(Arc::new(clock.clone())), clock)
}

fn device(hub: &EmbeddedHub, id: &str, tags: Value) {
    hub.create_device_with_twin(Device::new(id), &json!({ "tags": tags }))
        .unwrap();
}

fn config(id: &str, target: &str, priority: i32, content: Value) -> Configuration {
    Configuration {
        id: id.into(),
        target_condition: target.into(),
        priority,
        content: ConfigurationContent {
            device_content: Some(content.as_object().unwrap().clone()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn desired(hub: &EmbeddedHub, id: &str) -> Value {
    let mut d = hub.get_twin(id).unwrap()["properties"]["desired"].clone();
    let m = d.as_object_mut().unwrap();
    m.remove("$metadata");
    m.remove("$version");
    d
}

fn status(hub: &EmbeddedHub, device: &str, config: &str) -> Option<String> {
    hub.get_twin(device).unwrap()["configurations"][config]["status"]
        .as_str()
        .map(String::from)
}

#[test]
fn a_priority_tie_goes_to_the_most_recently_created_configuration() {
    let (hub, clock) = hub();
    device(&hub, "d1", json!({"ring": "canary"}));
    hub.create_configuration(&config(
        "older",
        "tags.ring='canary'",
        10,
        json!({"properties.desired.fw": {"v": "1"}}),
    ))
    .unwrap();
    clock.advance(jiff::SignedDuration::from_secs(1));
    hub.create_configuration(&config(
        "newer",
        "*",
        10,
        json!({"properties.desired.fw": {"v": "2"}}),
    ))
    .unwrap();
    assert_eq!(desired(&hub, "d1"), json!({"fw": {"v": "2"}}));
    assert_eq!(status(&hub, "d1", "newer").as_deref(), Some("applied"));
    assert_eq!(status(&hub, "d1", "older").as_deref(), Some("targeted"));
    // Updating the older one does not make it newer: creation time decides, not update time.
    let mut older = hub.get_configuration("older").unwrap();
    older.labels.insert("touched".into(), "yes".into());
    hub.update_configuration(&older, None).unwrap();
    assert_eq!(desired(&hub, "d1"), json!({"fw": {"v": "2"}}));
    // A higher priority wins regardless of age.
    older.priority = 11;
    hub.update_configuration(&older, None).unwrap();
    assert_eq!(desired(&hub, "d1"), json!({"fw": {"v": "1"}}));
    assert_eq!(status(&hub, "d1", "newer").as_deref(), Some("targeted"));
}

#[test]
fn two_configurations_share_a_twin_on_different_paths() {
    let (hub, _) = hub();
    device(&hub, "d1", json!({"env": "prod"}));
    hub.create_configuration(&config(
        "fw",
        "tags.env='prod'",
        5,
        json!({"properties.desired.firmware": {"version": "2.4.0"}}),
    ))
    .unwrap();
    hub.create_configuration(&config(
        "net",
        "*",
        1,
        json!({"properties.desired.network": {"mtu": 1400}}),
    ))
    .unwrap();
    assert_eq!(
        desired(&hub, "d1"),
        json!({"firmware": {"version": "2.4.0"}, "network": {"mtu": 1400}})
    );
    assert_eq!(status(&hub, "d1", "fw").as_deref(), Some("applied"));
    assert_eq!(status(&hub, "d1", "net").as_deref(), Some("applied"));
    let fw = hub.get_configuration("fw").unwrap();
    assert_eq!(fw.system_metrics.results["appliedCount"], 1);
    assert_eq!(fw.system_metrics.results["targetedCount"], 1);
    assert_eq!(
        fw.system_metrics.queries["targetedCount"],
        "select deviceId from devices where tags.env='prod'"
    );
    assert_eq!(
        fw.system_metrics.queries["appliedCount"],
        "select deviceId from devices where configurations.[[fw]].status = 'Applied'"
    );
}

#[test]
fn untargeting_removes_settings_and_the_lower_priority_configuration_takes_over() {
    let (hub, _) = hub();
    for i in 0..10 {
        let ring = if i < 2 { "canary" } else { "broad" };
        device(&hub, &format!("d{i}"), json!({"ring": ring}));
    }
    hub.create_configuration(&config(
        "baseline",
        "*",
        1,
        json!({"properties.desired.firmware": {"version": "1.0"}}),
    ))
    .unwrap();
    hub.create_configuration(&config(
        "only-new",
        "tags.ring='canary'",
        9,
        json!({"properties.desired.extra": {"on": true}}),
    ))
    .unwrap();
    let mut rollout = config(
        "rollout",
        "tags.ring='canary'",
        10,
        json!({"properties.desired.firmware": {"version": "2.0"}}),
    );
    hub.create_configuration(&rollout).unwrap();
    assert_eq!(desired(&hub, "d0")["firmware"]["version"], "2.0");
    assert_eq!(desired(&hub, "d5")["firmware"]["version"], "1.0");
    assert_eq!(
        hub.get_configuration("rollout")
            .unwrap()
            .system_metrics
            .results["appliedCount"],
        2
    );
    assert_eq!(
        hub.get_configuration("baseline")
            .unwrap()
            .system_metrics
            .results["appliedCount"],
        8
    );

    // Widen, then narrow to nothing: the baseline takes every device back.
    rollout.target_condition = "*".into();
    hub.update_configuration(&rollout, None).unwrap();
    assert_eq!(desired(&hub, "d5")["firmware"]["version"], "2.0");
    rollout.target_condition = "tags.ring='nowhere'".into();
    hub.update_configuration(&rollout, None).unwrap();
    for i in 0..10 {
        assert_eq!(
            desired(&hub, &format!("d{i}"))["firmware"]["version"],
            "1.0",
            "d{i}"
        );
        assert_eq!(status(&hub, &format!("d{i}"), "rollout"), None);
    }
    assert_eq!(
        hub.get_configuration("baseline")
            .unwrap()
            .system_metrics
            .results["appliedCount"],
        10
    );
    assert_eq!(
        hub.get_configuration("rollout")
            .unwrap()
            .system_metrics
            .results["targetedCount"],
        0
    );

    // Deleting a configuration removes exactly its settings; nothing fills in for "extra".
    hub.delete_configuration("only-new", None).unwrap();
    assert_eq!(desired(&hub, "d0"), json!({"firmware": {"version": "1.0"}}));
    // Without any configuration the settings are simply removed.
    hub.delete_configuration("baseline", None).unwrap();
    assert_eq!(desired(&hub, "d0"), json!({}));
}

#[test]
fn a_twin_that_stops_matching_loses_the_configuration_on_the_next_cycle() {
    let (hub, _) = hub();
    device(&hub, "d1", json!({"ring": "canary"}));
    hub.create_configuration(&config(
        "c",
        "tags.ring='canary'",
        1,
        json!({"properties.desired.a": 1}),
    ))
    .unwrap();
    assert_eq!(desired(&hub, "d1"), json!({"a": 1}));
    hub.update_twin("d1", &json!({"tags": {"ring": "broad"}}), None)
        .unwrap();
    // Twin changes are picked up by the cycle, not instantly.
    assert_eq!(desired(&hub, "d1"), json!({"a": 1}));
    let stats = hub.run_cycle().unwrap();
    assert_eq!(stats.twins_checked, 1);
    assert_eq!(desired(&hub, "d1"), json!({}));
    // A cycle with nothing changed checks nothing.
    let idle = hub.run_cycle().unwrap();
    assert_eq!(
        (
            idle.twins_checked,
            idle.configurations_rescanned,
            idle.twins_changed
        ),
        (0, 0, 0)
    );
}

#[test]
fn metric_counts_match_a_query_over_the_twins() {
    let (hub, _) = hub();
    for i in 0..50 {
        device(
            &hub,
            &format!("d{i:02}"),
            json!({"ring": if i % 5 == 0 { "canary" } else { "broad" }}),
        );
    }
    let mut c = config(
        "fw",
        "*",
        1,
        json!({"properties.desired.firmware": {"version": "2"}}),
    );
    let mut q = BTreeMap::new();
    q.insert(
        "current".to_string(),
        "SELECT deviceId FROM devices WHERE properties.reported.firmware.status='Current'"
            .to_string(),
    );
    q.insert("failed".to_string(), "SELECT deviceId FROM devices WHERE properties.reported.firmware.status='Error' AND configurations.[[fw]].status='Applied'".to_string());
    c.metrics.queries = q;
    hub.create_configuration(&c).unwrap();
    for i in 0..50 {
        let st = if i % 7 == 0 {
            "Error"
        } else if i % 2 == 0 {
            "Current"
        } else {
            "Downloading"
        };
        hub.patch_reported(&format!("d{i:02}"), &json!({"firmware": {"status": st}}))
            .unwrap();
    }
    hub.run_cycle().unwrap();
    let got = hub.get_configuration("fw").unwrap().metrics.results;
    let count = |cond: &str| {
        hub.query(
            &format!("SELECT COUNT() AS n FROM devices WHERE {cond}"),
            None,
            None,
        )
        .unwrap()
        .items[0]["n"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(
        got["current"],
        count("properties.reported.firmware.status='Current'")
    );
    assert_eq!(
        got["failed"],
        count(
            "properties.reported.firmware.status='Error' AND configurations.[[fw]].status='Applied'"
        )
    );
    assert_eq!(got["failed"], 8);
}

#[test]
fn content_is_immutable_and_limits_hold() {
    let clock = ManualClock::at_epoch();
    let hub = EmbeddedHub::in_memory_with(
        Arc::new(clock),
        HubOptions {
            max_configurations: 2,
            ..Default::default()
        },
    );
    let c = config("a", "*", 1, json!({"properties.desired.x": 1}));
    let created = hub.create_configuration(&c).unwrap();
    assert_eq!(
        hub.create_configuration(&c).unwrap_err().code,
        ErrorCode::ConfigurationAlreadyExists
    );
    let mut changed = created.clone();
    changed.content = config("a", "*", 1, json!({"properties.desired.x": 2})).content;
    assert_eq!(
        hub.update_configuration(&changed, None).unwrap_err().code,
        ErrorCode::CannotModifyImmutableConfigurationContent
    );
    let stale = created.etag.clone();
    let mut relabel = created.clone();
    relabel.labels.insert("k".into(), "v".into());
    let updated = hub
        .update_configuration(&relabel, stale.as_deref())
        .unwrap();
    assert_ne!(updated.etag, stale);
    assert_eq!(
        hub.update_configuration(&relabel, stale.as_deref())
            .unwrap_err()
            .code,
        ErrorCode::PreconditionFailed
    );
    hub.create_configuration(&config("b", "*", 1, json!({"properties.desired.y": 1})))
        .unwrap();
    let e = hub
        .create_configuration(&config("c", "*", 1, json!({"properties.desired.z": 1})))
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ConfigurationCountLimitExceeded);
    assert_eq!(e.http_status(), 413);
    let mut six = config("d", "*", 1, json!({"properties.desired.z": 1}));
    for i in 0..6 {
        six.metrics
            .queries
            .insert(format!("m{i}"), "SELECT deviceId FROM devices".into());
    }
    hub.delete_configuration("b", None).unwrap();
    assert_eq!(
        hub.create_configuration(&six).unwrap_err().code,
        ErrorCode::InvalidConfigurationCustomMetricsQuery
    );
    let bad_path = config("e", "*", 1, json!({"tags.x": 1}));
    let e = hub.create_configuration(&bad_path).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfigurationContent);
    assert!(e.message.contains("properties.desired."), "{e}");
    let bad_target = config("f", "tags.x = ", 1, json!({"properties.desired.z": 1}));
    let e = hub.create_configuration(&bad_target).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidConfigurationTargetCondition);
    assert!(e.message.contains("column"), "{e}");
    // Nothing of the refused ones was kept.
    let ids: Vec<String> = hub
        .list_configurations()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, vec!["a".to_string()]);
}

#[test]
fn twin_updates_merge_replace_and_respect_etags() {
    let (hub, _) = hub();
    device(&hub, "d1", json!({"a": 1, "b": {"c": 2}}));
    let t = hub.get_twin("d1").unwrap();
    let etag = t["etag"].as_str().unwrap().to_string();
    let after = hub
        .update_twin(
            "d1",
            &json!({"tags": {"a": null, "b": {"d": 3}}, "properties": {"desired": {"x": 1}}}),
            Some(&format!("\"{etag}\"")),
        )
        .unwrap();
    assert_eq!(after["tags"], json!({"b": {"c": 2, "d": 3}}));
    assert_eq!(after["properties"]["desired"]["x"], 1);
    assert_eq!(after["properties"]["desired"]["$version"], 2);
    let e = hub
        .update_twin(
            "d1",
            &json!({"tags": {"z": 1}}),
            Some(&format!("\"{etag}\"")),
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PreconditionFailed);
    let replaced = hub
        .replace_twin("d1", &json!({"tags": {"only": true}}), None)
        .unwrap();
    assert_eq!(replaced["tags"], json!({"only": true}));
    assert_eq!(replaced["properties"]["desired"]["$version"], 3);
    let v = hub
        .patch_reported("d1", &json!({"fw": {"status": "Current"}}))
        .unwrap();
    assert_eq!(v, 2);
    assert_eq!(
        hub.get_twin("d1").unwrap()["properties"]["reported"]["fw"]["status"],
        "Current"
    );
    let e = hub
        .update_twin("d1", &json!({"tags": {"bad.key": 1}}), None)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ArgumentInvalid);
    assert_eq!(
        hub.get_twin("d1").unwrap()["tags"],
        json!({"only": true}),
        "a refused update writes nothing"
    );
    assert_eq!(
        hub.update_twin("nope", &json!({}), None).unwrap_err().code,
        ErrorCode::DeviceNotFound
    );
}

#[test]
fn queries_page_with_continuation_tokens() {
    let (hub, _) = hub();
    for i in 0..250 {
        device(&hub, &format!("d{i:03}"), json!({"n": i}));
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let p = hub
            .query(
                "SELECT * FROM devices WHERE tags.n >= 10",
                Some(1000),
                token.as_deref(),
            )
            .unwrap();
        assert_eq!(p.item_type, "twin");
        assert!(p.items.len() <= 100, "pages are clamped to 100");
        seen.extend(
            p.items
                .iter()
                .map(|t| t["deviceId"].as_str().unwrap().to_string()),
        );
        pages += 1;
        match p.continuation {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen.len(), 240);
    assert_eq!(pages, 3);
    let top = hub
        .query("SELECT TOP 5 deviceId FROM devices", Some(2), None)
        .unwrap();
    assert_eq!(top.item_type, "raw");
    assert_eq!(top.items.len(), 2);
    let bad = hub
        .query("SELECT * FROM devices WHERE", None, None)
        .unwrap_err();
    assert_eq!(bad.code, ErrorCode::BadRequest);
}
