//! The simulated fleet reacts to desired properties the way the seed says devices should
//! report progress, in virtual time.

use jiff::SignedDuration;
use ringmaster::clock::ManualClock;
use ringmaster::hub::EmbeddedHub;
use ringmaster::hub::fleet::{FleetAgent, FleetSpec};
use ringmaster::iothub::configuration::{Configuration, ConfigurationContent};
use serde_json::json;
use std::sync::Arc;

const SPEC: &str = r#"
devices: 400
idPrefix: chiller-
seed: 11
tags: {environment: prod}
rings: {canary: 0.1, early: 0.3, broad: 0.6}
models: {"4000x": 0.5, "5000x": 0.5}
regions: {eu: 0.5, us: 0.5}
offline: 0.05
firmware:
  initial: "2.3.0"
  downloadSeconds: 20
  applySeconds: 10
  jitter: 0.5
  failures:
    - {model: "5000x", version: "2.5.0", rate: 0.3}
settings: [network]
"#;

fn count(hub: &EmbeddedHub, cond: &str) -> i64 {
    hub.query(
        &format!("SELECT COUNT() AS n FROM devices WHERE {cond}"),
        None,
        None,
    )
    .unwrap()
    .items[0]["n"]
        .as_i64()
        .unwrap()
}

fn rollout(id: &str, version: &str, target: &str) -> Configuration {
    Configuration {
        id: id.into(),
        target_condition: target.into(),
        priority: 10,
        content: ConfigurationContent {
            device_content: Some(
                json!({"properties.desired.firmware": {"version": version}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn run_for(hub: &EmbeddedHub, agent: &mut FleetAgent, clock: &ManualClock, secs: i64) {
    for _ in 0..secs {
        clock.advance(SignedDuration::from_secs(1));
        agent.tick().unwrap();
    }
    hub.run_cycle().unwrap();
}

#[test]
fn the_fleet_is_tagged_by_share_and_reports_its_firmware() {
    let clock = ManualClock::at_epoch();
    let hub = EmbeddedHub::in_memory(Arc::new(clock.clone()));
    let spec = FleetSpec::parse("fleet.yaml", SPEC).unwrap();
    let _agent = FleetAgent::create(&hub, spec).unwrap();
    assert_eq!(count(&hub, "tags.ring='canary'"), 40);
    assert_eq!(count(&hub, "tags.ring='early'"), 120);
    assert_eq!(count(&hub, "tags.model='5000x'"), 200);
    assert_eq!(count(&hub, "tags.environment='prod'"), 400);
    assert_eq!(
        count(
            &hub,
            "properties.reported.firmware.version='2.3.0' AND properties.reported.firmware.status='Current'"
        ),
        400
    );
    assert_eq!(count(&hub, "properties.reported.model = tags.model"), 400);
}

#[test]
fn devices_download_apply_and_report_current_or_error() {
    let clock = ManualClock::at_epoch();
    let hub = EmbeddedHub::in_memory(Arc::new(clock.clone()));
    let mut agent =
        FleetAgent::create(&hub, FleetSpec::parse("fleet.yaml", SPEC).unwrap()).unwrap();
    hub.create_configuration(&rollout("good", "2.4.0", "tags.ring='canary'"))
        .unwrap();
    run_for(&hub, &mut agent, &clock, 1);
    let downloading = count(
        &hub,
        "properties.reported.firmware.status='Downloading' AND properties.reported.firmware.target='2.4.0'",
    );
    let online_canary = (0..400)
        .map(|i| agent.spec().device_id(i))
        .filter(|id| !agent.is_offline(id))
        .filter(|id| hub.get_twin(id).unwrap()["tags"]["ring"] == "canary")
        .count() as i64;
    assert_eq!(downloading, online_canary);
    assert!(online_canary < 40, "some canary devices are offline");
    run_for(&hub, &mut agent, &clock, 60);
    assert_eq!(
        count(
            &hub,
            "properties.reported.firmware.version='2.4.0' AND properties.reported.firmware.status='Current'"
        ),
        online_canary
    );
    assert_eq!(
        count(&hub, "properties.reported.firmware.status='Error'"),
        0
    );

    // A faulty version fails on about 30% of the 5000x devices and on no 4000x.
    hub.delete_configuration("good", None).unwrap();
    hub.create_configuration(&rollout("bad", "2.5.0", "*"))
        .unwrap();
    run_for(&hub, &mut agent, &clock, 90);
    let errors_5000 = count(
        &hub,
        "properties.reported.firmware.status='Error' AND tags.model='5000x'",
    );
    let errors_4000 = count(
        &hub,
        "properties.reported.firmware.status='Error' AND tags.model='4000x'",
    );
    assert_eq!(errors_4000, 0);
    assert!(
        (35..=85).contains(&errors_5000),
        "{errors_5000} errors of ~190 online 5000x devices"
    );
    // Failed devices keep running their old version.
    assert_eq!(
        count(
            &hub,
            "properties.reported.firmware.status='Error' AND properties.reported.firmware.version='2.5.0'"
        ),
        0
    );

    // Rolling back (delete the bad configuration, a baseline takes over) heals the errors.
    hub.delete_configuration("bad", None).unwrap();
    let mut base = rollout("baseline", "2.3.0", "*");
    base.priority = 1;
    hub.create_configuration(&base).unwrap();
    run_for(&hub, &mut agent, &clock, 90);
    assert_eq!(
        count(&hub, "properties.reported.firmware.status='Error'"),
        0
    );
    assert_eq!(
        count(
            &hub,
            "properties.reported.firmware.status='Current' AND properties.reported.firmware.version='2.3.0'"
        ),
        count(&hub, "properties.reported.firmware.status='Current'")
    );
}

#[test]
fn settings_sections_are_echoed_back_as_applied() {
    let clock = ManualClock::at_epoch();
    let hub = EmbeddedHub::in_memory(Arc::new(clock.clone()));
    let mut agent =
        FleetAgent::create(&hub, FleetSpec::parse("fleet.yaml", SPEC).unwrap()).unwrap();
    let mut c = rollout("net", "x", "tags.ring='canary'");
    c.content.device_content = Some(
        json!({"properties.desired.network": {"mtu": 1400}})
            .as_object()
            .unwrap()
            .clone(),
    );
    hub.create_configuration(&c).unwrap();
    run_for(&hub, &mut agent, &clock, 30);
    let applied = count(
        &hub,
        "properties.reported.network.mtu = 1400 AND properties.reported.network.status = 'Applied'",
    );
    assert!(applied > 30 && applied <= 40, "{applied}");
}
