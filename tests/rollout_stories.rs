//! Stories: the driver and the decision core against the embedded hub and a simulated
//! fleet, in virtual time.

use jiff::SignedDuration;
use ringmaster::client::Hub;
use ringmaster::clock::{Clock, ManualClock};
use ringmaster::driver::Driver;
use ringmaster::hub::configuration::{Configuration, ConfigurationContent};
use ringmaster::hub::fleet::{FleetAgent, FleetSpec};
use ringmaster::hub::EmbeddedHub;
use ringmaster::resources::{load_manifests, DeviceRollout, DeviceRolloutStatus, Document, Phase};
use serde_json::json;
use std::sync::Arc;

const FLEET: &str = r#"
devices: 400
idPrefix: chiller-
seed: 7
tags: {environment: prod}
rings: {canary: 0.1, early: 0.3, broad: 0.6}
models: {"4000x": 0.5, "5000x": 0.5}
offline: 0.0
firmware:
  initial: "2.3.0"
  downloadSeconds: 20
  applySeconds: 10
  failures:
    - {model: "5000x", version: "2.5.0", rate: 0.4}
"#;

fn rollout(version: &str) -> DeviceRollout {
    let text = format!(
        r#"
apiVersion: ringmaster.dev/v1alpha1
kind: DeviceRollout
metadata: {{name: chiller-fw, namespace: fleet}}
spec:
  target: "tags.environment='prod'"
  priority: 10
  content:
    device:
      properties.desired.firmware: {{version: "{version}"}}
  metrics:
    current: "properties.reported.firmware.version='{version}' AND properties.reported.firmware.status='Current'"
    failed: "properties.reported.firmware.status='Error'"
  gate:
    minApplied: 5
    bake: 2m
    success: "lowerBound(metrics.current, applied) >= 0.8"
    failure: "lowerBound(metrics.failed, applied) > 0.02"
    deadline: 1h
  rings:
    - {{name: canary, target: "tags.ring='canary'"}}
    - {{name: early, target: "tags.ring='early'"}}
    - {{name: broad, target: "*"}}
"#
    );
    match load_manifests("rollout.yaml", &text).unwrap_or_else(|e| panic!("{e:?}")).remove(0) {
        Document::DeviceRollout(ro) => *ro,
        _ => unreachable!(),
    }
}

struct World {
    hub: Arc<EmbeddedHub>,
    agent: FleetAgent,
    clock: ManualClock,
    driver: Driver,
    status: DeviceRolloutStatus,
}

impl World {
    fn new() -> World {
        let clock = ManualClock::at_epoch();
        let hub = Arc::new(EmbeddedHub::in_memory(Arc::new(clock.clone())));
        let agent = FleetAgent::create(&hub, FleetSpec::parse("fleet.yaml", FLEET).unwrap()).unwrap();
        // The baseline underneath: what every device runs today.
        hub.create_configuration(&Configuration {
            id: "baseline".into(),
            target_condition: "tags.environment='prod'".into(),
            priority: 1,
            content: ConfigurationContent {
                device_content: Some(json!({"properties.desired.firmware": {"version": "2.3.0"}}).as_object().unwrap().clone()),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        let driver = Driver::new(hub.clone() as Arc<dyn Hub>, Arc::new(clock.clone()));
        World { hub, agent, clock, driver, status: DeviceRolloutStatus::default() }
    }

    /// Reconciles, and lets the fleet and the hub's cycle run until the next requeue.
    async fn run_until(&mut self, ro: &DeviceRollout, max_minutes: i64, pred: impl Fn(&DeviceRolloutStatus) -> bool) {
        let end = self.clock.now() + SignedDuration::from_mins(max_minutes);
        while self.clock.now() < end {
            let out = self.driver.reconcile(ro, &self.status).await;
            assert!(out.error.is_none(), "{:?}", out.error);
            self.status = out.status;
            if pred(&self.status) {
                return;
            }
            let until = self.clock.now() + SignedDuration::try_from(out.requeue_after).unwrap();
            while self.clock.now() < until {
                self.clock.advance(SignedDuration::from_secs(5));
                self.agent.tick().unwrap();
                self.hub.run_cycle().unwrap();
            }
        }
        panic!("not reached in {max_minutes} minutes: {:#?}", self.status);
    }

    fn count(&self, cond: &str) -> i64 {
        self.hub.query(&format!("SELECT COUNT() AS n FROM devices WHERE {cond}"), None, None).unwrap().items[0]["n"].as_i64().unwrap()
    }
}

#[tokio::test]
async fn a_good_revision_reaches_every_ring_and_replaces_nothing_it_should_keep() {
    let mut w = World::new();
    let ro = rollout("2.4.0");
    w.run_until(&ro, 120, |s| s.phase == Some(Phase::Healthy)).await;
    assert_eq!(w.count("properties.desired.firmware.version='2.4.0'"), 400);
    let ours: Vec<_> = w.hub.list_configurations().into_iter().filter(|c| c.id != "baseline").collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].labels["ringmaster.state"], "stable");
    let passes = w.status.history.iter().filter(|h| h.decision == "Pass").count();
    assert_eq!(passes, 3, "{:#?}", w.status.history);
}

#[tokio::test]
async fn a_faulty_revision_is_rolled_back_before_it_leaves_the_canary_ring() {
    let mut w = World::new();
    let ro = rollout("2.5.0");
    w.run_until(&ro, 120, |s| s.phase == Some(Phase::RolledBack)).await;
    assert_eq!(w.status.rings.len(), 1, "it never left the canary ring: {:#?}", w.status.rings);
    // The baseline took every device back.
    assert_eq!(w.count("properties.desired.firmware.version='2.3.0'"), 400);
    assert_eq!(w.count("properties.desired.firmware.version='2.5.0'"), 0);
}
