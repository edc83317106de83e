//! Stories: the driver and the decision core against the embedded hub and a simulated
//! fleet, in virtual time.
//!
//! Each story builds a [`World`] (a hub with a fleet and a baseline configuration
//! underneath, a driver, a manual clock) and plays the controller's loop: reconcile, then
//! let the fleet and the hub's cycle run until the requeue, again and again. A world can
//! watch an invariant after every reconcile and every fleet tick, and can play a
//! controller that restarts before every reconcile with its status lost.

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use ringmaster::client::Hub;
use ringmaster::clock::{Clock, ManualClock};
use ringmaster::core::gate::wilson_lower;
use ringmaster::core::revision::{self, label};
use ringmaster::core::status::{STALLED, condition};
use ringmaster::driver::Driver;
use ringmaster::hub::EmbeddedHub;
use ringmaster::hub::fleet::{FleetAgent, FleetSpec};
use ringmaster::iothub::configuration::{Configuration, ConfigurationContent};
use ringmaster::manifest::{Document, load_manifests};
use ringmaster::resources::operation::{FORCE_DELETE_ANNOTATION, OPERATION_ANNOTATION};
use ringmaster::resources::{
    DeviceRollout, DeviceRolloutStatus, HistoryEntry, OnFailure, Operation, OperationKind, Phase,
    RingState, Verdict,
};
use serde_json::json;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

// ---- the world --------------------------------------------------------------------

/// A fleet of `devices` chillers running 2.3.0, in three quality rings (canary, early and
/// broad shares), of two models; model 5000x fails to install 2.5.0 at `fail_rate`.
fn fleet(
    devices: usize,
    [canary, early, broad]: [f64; 3],
    share_5000x: f64,
    fail_rate: f64,
    seed: u64,
) -> String {
    format!(
        r#"
devices: {devices}
idPrefix: chiller-
seed: {seed}
tags: {{environment: prod}}
rings: {{canary: {canary}, early: {early}, broad: {broad}}}
models: {{"4000x": {m4}, "5000x": {share_5000x}}}
firmware:
  initial: "2.3.0"
  downloadSeconds: 20
  applySeconds: 10
  failures:
    - {{model: "5000x", version: "2.5.0", rate: {fail_rate}}}
"#,
        m4 = 1.0 - share_5000x,
    )
}

/// 400 chillers, 40 of them canaries; 30% of model 5000x cannot install 2.5.0.
fn chillers() -> String {
    fleet(400, [0.1, 0.3, 0.6], 0.5, 0.3, 7)
}

/// What every device runs today, and what the baseline configuration writes.
const BASELINE_VERSION: &str = "2.3.0";

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
    match load_manifests("rollout.yaml", &text)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .remove(0)
    {
        Document::DeviceRollout(ro) => *ro,
        _ => unreachable!(),
    }
}

fn revision_of(ro: &DeviceRollout) -> String {
    revision::revision(&ro.spec.content)
}

fn firmware_config(id: &str, target: &str, priority: i32, version: &str) -> Configuration {
    Configuration {
        id: id.into(),
        target_condition: target.into(),
        priority,
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

/// What one reconcile left behind, for the story's assertions and failure messages.
#[derive(Clone, Debug)]
struct Seen {
    at: Timestamp,
    ring: Option<(String, RingState)>,
    stalled: Option<String>,
    /// (ring, state) labels of the current revision's configuration after the reconcile.
    labels: Option<(usize, String)>,
    message: Option<String>,
}

/// Something to check after every reconcile and every fleet tick.
type Watch = Box<dyn FnMut(&EmbeddedHub)>;

struct World {
    hub: Arc<EmbeddedHub>,
    agent: FleetAgent,
    clock: ManualClock,
    driver: Driver,
    ro: DeviceRollout,
    status: DeviceRolloutStatus,
    /// How far the fleet moves per tick (coarser is faster).
    tick: SignedDuration,
    /// Restart the controller before every reconcile: a new driver and no status.
    forgetful: bool,
    watches: Vec<Watch>,
    trace: Vec<Seen>,
}

impl World {
    /// A fleet, a baseline configuration under it, and the rollout of `version`.
    fn new(fleet: &str, version: &str) -> World {
        let clock = ManualClock::at_epoch();
        let hub = Arc::new(EmbeddedHub::in_memory(Arc::new(clock.clone())));
        let agent =
            FleetAgent::create(&hub, FleetSpec::parse("fleet.yaml", fleet).unwrap()).unwrap();
        hub.create_configuration(&firmware_config(
            "baseline",
            "tags.environment='prod'",
            1,
            BASELINE_VERSION,
        ))
        .unwrap();
        let driver = Driver::new(hub.clone() as Arc<dyn Hub>, Arc::new(clock.clone()));
        World {
            hub,
            agent,
            clock,
            driver,
            ro: rollout(version),
            status: DeviceRolloutStatus::default(),
            tick: SignedDuration::from_secs(5),
            forgetful: false,
            watches: Vec::new(),
            trace: Vec::new(),
        }
    }

    fn watch(&mut self, f: impl FnMut(&EmbeddedHub) + 'static) {
        self.watches.push(Box::new(f));
    }

    fn check(&mut self) {
        for w in &mut self.watches {
            w(&self.hub);
        }
    }

    /// One reconcile, as the controller runs it.
    async fn reconcile(&mut self) -> std::time::Duration {
        let last = if self.forgetful {
            self.driver = Driver::new(
                self.hub.clone() as Arc<dyn Hub>,
                Arc::new(self.clock.clone()),
            );
            DeviceRolloutStatus::default()
        } else {
            self.status.clone()
        };
        let out = self.driver.reconcile(&self.ro, &last).await;
        assert!(out.error.is_none(), "the hub refused: {:?}", out.error);
        self.status = out.status;
        let s = &self.status;
        self.trace.push(Seen {
            at: self.clock.now(),
            ring: s.ring.as_ref().map(|r| (r.name.clone(), r.state)),
            stalled: condition(s, STALLED)
                .filter(|c| c.status == "True")
                .map(|c| c.reason.clone()),
            labels: self.current().map(|c| {
                (
                    c.labels[label::RING].parse().unwrap(),
                    c.labels[label::STATE].clone(),
                )
            }),
            message: s.message.clone(),
        });
        self.check();
        out.requeue_after
    }

    /// Lets the fleet and the hub run for `d` (no reconcile).
    fn advance(&mut self, d: SignedDuration) {
        let end = self.clock.now() + d;
        while self.clock.now() < end {
            let step = self.tick.min(end.duration_since(self.clock.now()));
            self.clock.advance(step);
            self.agent.tick().unwrap();
            self.hub.run_cycle().unwrap();
            self.check();
        }
    }

    /// Reconciles, sleeping each requeue, until `done` holds (at most `hours` of virtual time).
    async fn run_until(&mut self, hours: i64, what: &str, done: impl Fn(&World) -> bool) {
        let end = self.clock.now() + SignedDuration::from_hours(hours);
        while self.clock.now() < end {
            let requeue = self.reconcile().await;
            if done(self) {
                return;
            }
            self.advance(SignedDuration::try_from(requeue).unwrap());
        }
        panic!(
            "not {what} within {hours}h; last steps: {:#?}\nstatus: {:#?}",
            &self.trace[self.trace.len().saturating_sub(5)..],
            self.status
        );
    }

    /// Reconciles, sleeping each requeue, for `minutes` of virtual time.
    async fn run_for(&mut self, minutes: i64) {
        let end = self.clock.now() + SignedDuration::from_mins(minutes);
        while self.clock.now() < end {
            let requeue = self.reconcile().await;
            self.advance(SignedDuration::try_from(requeue).unwrap());
        }
    }

    fn phase(&self) -> Option<Phase> {
        self.status.phase
    }

    fn ring_is(&self, name: &str, state: RingState) -> bool {
        self.status
            .ring
            .as_ref()
            .is_some_and(|r| r.name == name && r.state == state)
    }

    /// Sends an operator request the way the CLI does in Kubernetes mode.
    fn operate(&mut self, id: &str, kind: OperationKind, ring: Option<&str>) {
        let op = Operation {
            id: id.into(),
            kind,
            revision: Some(revision_of(&self.ro)),
            ring: ring.map(str::to_string),
        };
        self.ro
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(OPERATION_ANNOTATION.into(), op.to_annotation());
    }

    /// This rollout's configurations on the hub.
    fn ours(&self) -> Vec<Configuration> {
        self.hub
            .list_configurations()
            .into_iter()
            .filter(|c| c.labels.contains_key(label::ROLLOUT))
            .collect()
    }

    /// The configuration of the current revision.
    fn current(&self) -> Option<Configuration> {
        let rev = revision_of(&self.ro);
        self.ours()
            .into_iter()
            .find(|c| c.labels[label::REVISION] == rev)
    }

    fn count(&self, cond: &str) -> u64 {
        count(&self.hub, cond)
    }

    fn history(&self, decision: &str) -> Vec<&HistoryEntry> {
        self.status
            .history
            .iter()
            .filter(|h| h.decision == decision)
            .collect()
    }

    fn decisions(&self) -> Vec<&str> {
        self.status
            .history
            .iter()
            .map(|h| h.decision.as_str())
            .collect()
    }
}

fn count(hub: &EmbeddedHub, cond: &str) -> u64 {
    hub.query(
        &format!("SELECT COUNT() AS n FROM devices WHERE {cond}"),
        None,
        None,
    )
    .unwrap()
    .items[0]["n"]
        .as_u64()
        .unwrap()
}

fn device_ids(hub: &EmbeddedHub, cond: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut token: Option<String> = None;
    loop {
        let page = hub
            .query(
                &format!("SELECT deviceId FROM devices WHERE {cond}"),
                None,
                token.as_deref(),
            )
            .unwrap();
        ids.extend(
            page.items
                .iter()
                .map(|i| i["deviceId"].as_str().unwrap().to_string()),
        );
        match page.continuation {
            Some(t) => token = Some(t),
            None => return ids,
        }
    }
}

fn desired_version(hub: &EmbeddedHub, device: &str) -> Option<String> {
    let twin = hub.get_twin(device).unwrap();
    twin["properties"]["desired"]["firmware"]["version"]
        .as_str()
        .map(str::to_string)
}

/// Watches the faulty revision: it never reaches a device outside the canary ring, and
/// every device it reaches is remembered.
fn watch_faulty(w: &mut World, version: &'static str) -> Rc<RefCell<BTreeSet<String>>> {
    let received = Rc::new(RefCell::new(BTreeSet::new()));
    let seen = received.clone();
    w.watch(move |hub| {
        let outside = count(
            hub,
            &format!(
                "properties.desired.firmware.version = '{version}' AND NOT (tags.ring = 'canary')"
            ),
        );
        assert_eq!(
            outside, 0,
            "{version} reached {outside} devices outside the canary ring"
        );
        seen.borrow_mut().extend(device_ids(
            hub,
            &format!("properties.desired.firmware.version = '{version}'"),
        ));
    });
    received
}

/// After a rollback: every device that received the failed revision has the settings of
/// `expected` (the stable revision or the baseline) again.
fn assert_restored(hub: &EmbeddedHub, received: &BTreeSet<String>, expected: &str) {
    assert!(
        !received.is_empty(),
        "the faulty revision reached no device at all"
    );
    for d in received {
        assert_eq!(
            desired_version(hub, d).as_deref(),
            Some(expected),
            "{d} received the failed revision and was left without {expected}"
        );
    }
}

// ---- stories ------------------------------------------------------------------------

#[tokio::test]
async fn a_good_revision_reaches_ten_thousand_devices_ring_by_ring_each_ring_gated_on_its_counts() {
    let mut w = World::new(&fleet(10_000, [0.02, 0.18, 0.8], 0.5, 0.3, 11), "2.4.0");
    w.tick = SignedDuration::from_secs(10);
    w.ro.spec.gate.min_applied = Some(50);
    w.ro.spec.gate.bake = Some("5m".parse().unwrap());
    w.ro.spec.gate.success = Some("lowerBound(metrics.current, applied) >= 0.95".into());
    // Never widened past a ring without that ring's Pass.
    let hub = w.hub.clone();
    w.run_until(4, "healthy", |w| {
        if let Some((ring, state)) = &w.trace.last().unwrap().labels
            && state == "rolling"
        {
            for r in &w.status.rings[..*ring] {
                assert_eq!(
                    r.verdict,
                    Some(Verdict::Pass),
                    "widened to ring {ring} past {}: {:?}",
                    r.name,
                    w.status.rings
                );
            }
        }
        w.phase() == Some(Phase::Healthy)
    })
    .await;

    assert_eq!(
        w.decisions(),
        [
            "Create", "Applied", "Pass", "Widen", "Applied", "Pass", "Widen", "Applied", "Pass",
            "Complete"
        ]
    );
    // Each ring was judged on its own numbers: the configuration's counts over rings 0..=i.
    let reach = [
        w.count("tags.ring='canary'"),
        w.count("tags.ring='canary' OR tags.ring='early'"),
        w.count("tags.environment='prod'"),
    ];
    assert_eq!(reach, [200, 2000, 10000]);
    let applied = w.history("Applied");
    let passes = w.history("Pass");
    for (i, name) in ["canary", "early", "broad"].into_iter().enumerate() {
        let (a, p) = (applied[i], passes[i]);
        assert_eq!(p.ring.as_deref(), Some(name));
        assert_eq!(
            a.targeted,
            Some(reach[i]),
            "{name}: applied once the hub targeted the whole ring"
        );
        assert_eq!(p.targeted, Some(reach[i]));
        assert_eq!(p.applied, Some(reach[i]));
        let current = p.metrics["current"];
        assert_eq!(p.metrics["failed"], 0);
        assert!(
            wilson_lower(current as f64, reach[i] as f64) >= 0.95,
            "{name} passed with {current} of {} current",
            reach[i]
        );
        assert!(
            p.time.0.duration_since(a.time.0) >= SignedDuration::from_mins(5),
            "{name} passed before its bake time"
        );
        assert!(
            p.message.contains("success condition holds"),
            "{}",
            p.message
        );
        assert_eq!(w.status.rings[i].verdict, Some(Verdict::Pass));
    }
    // One stable configuration over the baseline; every device has the new settings, and
    // soon runs them.
    let ours = w.ours();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].labels[label::STATE], "stable");
    assert_eq!(ours[0].target_condition, "tags.environment='prod'");
    assert_eq!(
        w.count("properties.desired.firmware.version='2.4.0'"),
        10000
    );
    w.advance(SignedDuration::from_mins(2));
    assert_eq!(
        count(
            &hub,
            "properties.reported.firmware.version='2.4.0' AND properties.reported.firmware.status='Current'"
        ),
        10000
    );
}

#[tokio::test]
async fn a_faulty_revision_is_rolled_back_in_the_canary_ring_and_its_devices_get_the_stable_one_back()
 {
    let mut w = World::new(&chillers(), "2.4.0");
    w.run_until(2, "healthy on 2.4.0", |w| w.phase() == Some(Phase::Healthy))
        .await;
    let stable = revision_of(&w.ro);

    w.ro = rollout("2.5.0");
    let received = watch_faulty(&mut w, "2.5.0");
    w.run_until(2, "rolled back", |w| w.phase() == Some(Phase::RolledBack))
        .await;

    // The gate failed on the canary's numbers.
    let fail = w.history("Fail")[0];
    assert_eq!(fail.ring.as_deref(), Some("canary"));
    let (failed, applied) = (fail.metrics["failed"], fail.applied.unwrap());
    assert!(
        wilson_lower(failed as f64, applied as f64) > 0.02,
        "{failed} of {applied}"
    );
    assert!(
        w.decisions().ends_with(&["Fail", "Rollback", "RolledBack"]),
        "{:?}",
        w.decisions()
    );
    assert_eq!(
        w.status.rings.len(),
        1,
        "it never left the canary ring: {:?}",
        w.status.rings
    );
    assert_eq!(w.status.held_revision, Some(revision_of(&w.ro)));
    assert_eq!(w.status.stable_revision, Some(stable.clone()));
    let rolled_back = w.history("RolledBack")[0];
    assert!(
        rolled_back
            .message
            .contains(&format!("has its settings from stable revision {stable}")),
        "{}",
        rolled_back.message
    );

    // Every device that received 2.5.0 has the stable 2.4.0 again, and soon runs it.
    assert_restored(&w.hub, &received.borrow(), "2.4.0");
    assert_eq!(
        received.borrow().len() as u64,
        w.count("tags.ring='canary'")
    );
    assert_eq!(w.count("properties.desired.firmware.version='2.4.0'"), 400);
    w.advance(SignedDuration::from_mins(3));
    assert_eq!(w.count("properties.reported.firmware.version='2.4.0' AND properties.reported.firmware.status='Current'"), 400);
    // Held, not retried: nothing changes while the content stays.
    w.run_for(60).await;
    assert_eq!(w.phase(), Some(Phase::RolledBack));
    let held = w.current().unwrap();
    assert_eq!(held.labels[label::STATE], "held");
    assert_eq!(held.labels[label::RING], "0");
}

#[tokio::test]
async fn new_content_mid_rollout_supersedes_the_unfinished_revision() {
    let mut w = World::new(&chillers(), "2.4.0");
    w.run_until(2, "baking the early ring", |w| {
        w.ring_is("early", RingState::Baking)
    })
    .await;
    let first = w.current().unwrap().id;
    assert_eq!(w.count("properties.desired.firmware.version='2.4.0'"), 160);

    w.ro = rollout("2.4.1");
    w.reconcile().await;
    // The unfinished revision's configuration is gone; the new one starts at ring 0.
    let ours = w.ours();
    assert!(
        ours.iter().all(|c| c.id != first),
        "{first} is still on the hub"
    );
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].labels[label::RING], "0");
    assert_eq!(
        ours[0].target_condition,
        "(tags.environment='prod') AND (tags.ring='canary')"
    );
    assert_eq!(w.count("properties.desired.firmware.version='2.4.0'"), 0);
    assert_eq!(w.count("properties.desired.firmware.version='2.4.1'"), 40);
    assert_eq!(
        w.count("tags.ring='early' AND properties.desired.firmware.version='2.3.0'"),
        120,
        "the early ring is back on the baseline"
    );
    assert!(w.ring_is("canary", RingState::Applying) || w.ring_is("canary", RingState::Baking));
    assert!(w.decisions().contains(&"NewRevision"));
    assert!(
        w.history("Delete")
            .iter()
            .any(|h| h.message.contains("superseded"))
    );

    w.run_until(2, "healthy on 2.4.1", |w| w.phase() == Some(Phase::Healthy))
        .await;
    assert_eq!(w.count("properties.desired.firmware.version='2.4.1'"), 400);
    assert_eq!(w.ours().len(), 1);
}

#[tokio::test]
async fn an_approval_ring_waits_for_promote_and_widens_once_it_arrives() {
    let mut w = World::new(&chillers(), "2.4.0");
    w.ro.spec.rings[1].approval = true;
    w.run_until(2, "awaiting approval", |w| {
        w.ring_is("early", RingState::AwaitingApproval)
    })
    .await;
    assert_eq!(w.phase(), Some(Phase::Paused));

    // Hours pass: no widening.
    let waiting_since = w.trace.len();
    w.run_for(180).await;
    assert!(
        w.trace[waiting_since..]
            .iter()
            .all(|s| s.labels == Some((0, "rolling".into()))),
        "widened without a promote"
    );
    assert_eq!(w.count("properties.desired.firmware.version='2.4.0'"), 40);
    assert!(w.ring_is("early", RingState::AwaitingApproval));

    // A promote aimed at another ring is ignored.
    w.operate("promote-canary", OperationKind::Promote, Some("canary"));
    w.reconcile().await;
    assert_eq!(w.current().unwrap().labels[label::RING], "0");
    assert_eq!(w.decisions().last(), Some(&"IgnoredOperation"));

    w.operate("promote-early", OperationKind::Promote, Some("early"));
    w.reconcile().await;
    assert_eq!(
        w.current().unwrap().labels[label::RING],
        "1",
        "widened on the promote"
    );
    assert_eq!(w.count("properties.desired.firmware.version='2.4.0'"), 160);
    assert!(
        w.decisions().ends_with(&["Approve", "Widen"]),
        "{:?}",
        w.decisions()
    );
    assert!(w.status.rings[1].approved_at.is_some());

    // The early ring is still judged on its gate; the promote stays in the annotation and
    // does not pass it.
    w.run_until(2, "healthy", |w| w.phase() == Some(Phase::Healthy))
        .await;
    let early = w
        .history("Pass")
        .into_iter()
        .find(|h| h.ring.as_deref() == Some("early"))
        .unwrap();
    assert!(
        early.message.contains("success condition holds"),
        "{}",
        early.message
    );
}

#[tokio::test]
async fn an_approval_given_after_the_baseline_went_away_waits_for_the_baseline() {
    let mut w = World::new(&chillers(), "2.4.0");
    w.ro.spec.rings[1].approval = true;
    w.run_until(2, "awaiting approval", |w| {
        w.ring_is("early", RingState::AwaitingApproval)
    })
    .await;
    // While the ring waits, the baseline is narrowed to the canary ring.
    let mut baseline = w.hub.get_configuration("baseline").unwrap();
    baseline.target_condition = "tags.ring='canary'".into();
    w.hub.update_configuration(&baseline, None).unwrap();

    w.operate("approve-early", OperationKind::Promote, Some("early"));
    w.run_for(30).await;
    assert_eq!(
        w.current().unwrap().labels[label::RING],
        "0",
        "no widening onto devices nothing would restore"
    );
    assert!(w.ring_is("early", RingState::WaitingForBaseline));
    let stalled = condition(&w.status, STALLED).unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "BaselineMissing")
    );
    assert!(
        stalled.message.contains("120 devices of ring early"),
        "{}",
        stalled.message
    );

    // The baseline is back: it widens on the approval already given.
    baseline.target_condition = "tags.environment='prod'".into();
    w.hub.update_configuration(&baseline, None).unwrap();
    w.run_until(1, "widened", |w| {
        w.current().unwrap().labels[label::RING] == "1"
    })
    .await;
    w.run_until(2, "healthy", |w| w.phase() == Some(Phase::Healthy))
        .await;
}

#[tokio::test]
async fn a_rollout_and_the_baseline_it_requires_start_together_and_it_goes_within_seconds() {
    // A fresh hub: the rollout looks before the baseline (applied in the same round, as
    // `run --dir` does with a directory holding both) reaches any device.
    let mut w = World::new(&chillers(), "2.4.0");
    w.hub.delete_configuration("baseline", None).unwrap();
    w.advance(SignedDuration::from_secs(10));
    let requeue = w.reconcile().await;
    assert_eq!(w.phase(), Some(Phase::Pending));
    assert!(w.ring_is("canary", RingState::WaitingForBaseline));
    let stalled = condition(&w.status, STALLED).unwrap();
    assert_eq!(stalled.reason, "BaselineMissing");

    w.hub
        .create_configuration(&firmware_config(
            "baseline",
            "tags.environment='prod'",
            1,
            BASELINE_VERSION,
        ))
        .unwrap();
    let created = w.clock.now();
    w.advance(SignedDuration::try_from(requeue).unwrap());
    w.run_until(1, "out of Pending", |w| w.phase() != Some(Phase::Pending))
        .await;
    let waited = w.clock.now().duration_since(created);
    assert!(
        waited <= SignedDuration::from_secs(20),
        "the rollout started {}s after its baseline was created",
        waited.as_secs()
    );
    assert!(w.ring_is("canary", RingState::Applying));
}

#[tokio::test]
async fn a_too_small_sample_stays_inconclusive_and_stalls_at_the_deadline() {
    // Three canaries, and no verdict below five applied devices.
    let fleet = fleet(200, [0.015, 0.285, 0.7], 0.5, 0.3, 7);
    let mut w = World::new(&fleet, "2.4.0");
    w.ro.spec.gate.deadline = Some("30m".parse().unwrap());
    w.run_until(2, "rolled back", |w| w.phase() == Some(Phase::RolledBack))
        .await;
    assert_eq!(w.count("tags.ring='canary'"), 3);

    let started = w.trace[0].at;
    let deadline = started + SignedDuration::from_mins(30);
    // Before the deadline: Inconclusive, never stalled, never widened.
    for s in w.trace.iter().filter(|s| s.at < deadline) {
        assert_eq!(s.stalled, None, "{s:?}");
        assert_eq!(s.labels, Some((0, "rolling".into())));
        if s.ring
            .as_ref()
            .is_some_and(|(_, st)| *st == RingState::Analyzing)
        {
            assert_eq!(
                s.message.as_deref(),
                Some("ring canary: 3 of 3 devices applied; no verdict below minApplied 5")
            );
        }
    }
    // At the deadline: Stalled, and onFailure (rollback) applied.
    let at = w.trace.iter().find(|s| s.stalled.is_some()).unwrap();
    assert!(at.at >= deadline);
    assert_eq!(at.stalled.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(w.status.rings[0].verdict, Some(Verdict::Inconclusive));
    let entry = w.history("Deadline")[0];
    assert_eq!((entry.targeted, entry.applied), (Some(3), Some(3)));
    assert!(
        w.decisions()
            .ends_with(&["Deadline", "Rollback", "RolledBack"]),
        "{:?}",
        w.decisions()
    );
    assert_eq!(w.count("properties.desired.firmware.version='2.3.0'"), 200);

    // With onFailure: pause the ring is held for a person instead.
    let mut w = World::new(&fleet, "2.4.0");
    w.ro.spec.gate.deadline = Some("30m".parse().unwrap());
    w.ro.spec.on_failure = OnFailure::Pause;
    w.run_until(2, "failed", |w| w.phase() == Some(Phase::Failed))
        .await;
    assert!(w.ring_is("canary", RingState::Failed));
    assert_eq!(condition(&w.status, STALLED).unwrap().status, "True");
    assert_eq!(
        w.current().unwrap().labels[label::STATE],
        "rolling",
        "held at the canary ring, not rolled back"
    );
    assert_eq!(w.count("properties.desired.firmware.version='2.4.0'"), 3);
}

#[tokio::test]
async fn a_controller_that_loses_its_status_before_every_step_reaches_the_same_outcome() {
    // Uninterrupted, then restarting before every reconcile; an approval ring on the way.
    let mut outcomes = Vec::new();
    for forgetful in [false, true] {
        let mut w = World::new(&chillers(), "2.4.0");
        w.forgetful = forgetful;
        w.ro.spec.rings[1].approval = true;
        w.run_until(2, "awaiting approval", |w| {
            w.ring_is("early", RingState::AwaitingApproval)
        })
        .await;
        w.operate("approve-early", OperationKind::Promote, Some("early"));
        w.run_until(3, "healthy", |w| w.phase() == Some(Phase::Healthy))
            .await;
        // The early ring baked its full time after the approval: the promote, still in the
        // annotation after every restart, approved it once and passed no gate.
        let widened = |to: usize| {
            w.trace
                .iter()
                .find(|s| s.labels.as_ref().is_some_and(|l| l.0 >= to))
                .unwrap()
                .at
        };
        assert!(
            widened(2).duration_since(widened(1)) >= SignedDuration::from_mins(2),
            "forgetful={forgetful}"
        );
        let stable = w.current().unwrap();
        let elapsed = w.clock.now().duration_since(w.trace[0].at);
        outcomes.push((
            stable.labels.clone(),
            stable.target_condition.clone(),
            w.count("properties.desired.firmware.version='2.4.0'"),
            w.ours().len(),
            elapsed,
        ));
    }
    let (a, b) = (&outcomes[0], &outcomes[1]);
    assert_eq!((&a.0, &a.1, a.2, a.3), (&b.0, &b.1, b.2, b.3));
    assert!(
        b.4 <= a.4 + SignedDuration::from_mins(10),
        "restarts cost {:?} against {:?}",
        b.4,
        a.4
    );

    // The faulty revision, restarting all the way: rolled back in the canary ring.
    let mut w = World::new(&chillers(), "2.5.0");
    w.forgetful = true;
    let received = watch_faulty(&mut w, "2.5.0");
    w.run_until(2, "rolled back", |w| w.phase() == Some(Phase::RolledBack))
        .await;
    assert_eq!(w.current().unwrap().labels[label::STATE], "held");
    assert_restored(&w.hub, &received.borrow(), BASELINE_VERSION);
    w.run_for(60).await;
    assert_eq!(w.phase(), Some(Phase::RolledBack));
}

#[tokio::test]
async fn a_pause_holds_through_restarts_until_resume() {
    let mut w = World::new(&chillers(), "2.4.0");
    w.forgetful = true;
    w.run_until(1, "baking the canary ring", |w| {
        w.ring_is("canary", RingState::Baking)
    })
    .await;
    w.operate("hold-on", OperationKind::Pause, None);
    let paused_at = w.trace.len();
    w.run_for(60).await;
    // Every step started from nothing; the pause came back from the configuration's label.
    assert!(
        w.trace[paused_at..]
            .iter()
            .all(|s| s.labels == Some((0, "rolling".into()))),
        "widened while paused"
    );
    assert_eq!(w.phase(), Some(Phase::Paused));
    assert_eq!(w.current().unwrap().labels[label::PAUSED], "hold-on");
    assert_eq!(w.count("properties.desired.firmware.version='2.4.0'"), 40);

    w.operate("go-on", OperationKind::Resume, None);
    w.run_until(2, "healthy", |w| w.phase() == Some(Phase::Healthy))
        .await;
    assert_eq!(w.count("properties.desired.firmware.version='2.4.0'"), 400);
}

#[tokio::test]
async fn a_rollback_with_nothing_underneath_says_how_many_devices_lost_their_settings() {
    let mut w = World::new(&chillers(), "2.5.0");
    w.hub.delete_configuration("baseline", None).unwrap();
    w.ro.spec.baseline = ringmaster::resources::BaselinePolicy::Warn;
    let received = watch_faulty(&mut w, "2.5.0");
    w.run_until(2, "rolled back", |w| w.phase() == Some(Phase::RolledBack))
        .await;
    assert!(
        w.decisions().contains(&"BaselineWarning"),
        "{:?}",
        w.decisions()
    );
    // The held revision reaches no device, and nothing gave the canaries their firmware
    // settings back: reported, not hidden.
    assert_eq!(received.borrow().len(), 40);
    assert_eq!(
        w.count("tags.ring='canary' AND IS_DEFINED(properties.desired.firmware)"),
        0
    );
    let stalled = condition(&w.status, STALLED).unwrap();
    assert_eq!(stalled.reason, "RollbackIncomplete");
    assert!(
        stalled.message.contains("40 devices"),
        "{}",
        stalled.message
    );
    let rollback = w.history("Rollback")[0].time.0;
    let confirmed = w.history("RolledBack")[0].time.0;
    assert!(confirmed.duration_since(rollback) >= ringmaster::core::decide::ROLLBACK_GRACE);
}

#[tokio::test]
async fn deleting_a_rollout_removes_its_configurations_only_once_something_else_covers_the_devices()
{
    let mut w = World::new(&chillers(), "2.4.0");
    w.run_until(2, "healthy", |w| w.phase() == Some(Phase::Healthy))
        .await;
    // The baseline goes; then the rollout is deleted.
    w.hub.delete_configuration("baseline", None).unwrap();
    w.ro.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        w.clock.now(),
    ));
    w.run_for(30).await;
    assert_eq!(
        w.ours().len(),
        1,
        "kept: nothing would take the devices back"
    );
    assert_eq!(w.count("properties.desired.firmware.version='2.4.0'"), 400);
    let stalled = condition(&w.status, STALLED).unwrap();
    assert_eq!(stalled.reason, "CleanupBlocked");
    assert!(
        stalled.message.contains("400 devices"),
        "{}",
        stalled.message
    );

    // A baseline covers them again: the configurations go, the baseline takes over.
    w.hub
        .create_configuration(&firmware_config(
            "baseline-2",
            "tags.environment='prod'",
            1,
            BASELINE_VERSION,
        ))
        .unwrap();
    w.run_until(1, "finalized", |w| w.ours().is_empty()).await;
    assert_eq!(w.count("properties.desired.firmware.version='2.3.0'"), 400);
    let out = w.driver.reconcile(&w.ro, &w.status).await;
    assert!(out.finalized);

    // Forced: deleted even with nothing underneath (the settings are stripped).
    let mut w = World::new(&chillers(), "2.4.0");
    w.run_until(2, "healthy", |w| w.phase() == Some(Phase::Healthy))
        .await;
    w.hub.delete_configuration("baseline", None).unwrap();
    w.ro.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        w.clock.now(),
    ));
    w.ro.metadata
        .annotations
        .get_or_insert_default()
        .insert(FORCE_DELETE_ANNOTATION.into(), "true".into());
    w.run_until(1, "finalized", |w| w.ours().is_empty()).await;
    assert_eq!(w.count("IS_DEFINED(properties.desired.firmware)"), 0);
}

#[tokio::test]
async fn devices_a_higher_priority_configuration_holds_do_not_hold_up_the_ring() {
    let mut w = World::new(&chillers(), "2.4.0");
    // A hotfix pinned five canaries to 2.3.1 at a higher priority.
    let pinned: Vec<String> = device_ids(&w.hub, "tags.ring='canary'")
        .into_iter()
        .take(5)
        .collect();
    let ids = pinned
        .iter()
        .map(|d| format!("'{d}'"))
        .collect::<Vec<_>>()
        .join(", ");
    w.hub
        .create_configuration(&firmware_config(
            "hotfix",
            &format!("deviceId IN [{ids}]"),
            50,
            "2.3.1",
        ))
        .unwrap();

    w.run_until(1, "past the canary ring", |w| {
        w.status.ring.as_ref().is_some_and(|r| r.index >= 1)
    })
    .await;
    let canary = &w.status.rings[0];
    assert_eq!(
        (canary.targeted, canary.applied, canary.shielded),
        (Some(40), Some(35), Some(5))
    );
    assert_eq!(canary.verdict, Some(Verdict::Pass));
    let applied = w.history("Applied")[0];
    assert!(
        applied
            .message
            .contains("5 more are held by higher-priority configuration(s) hotfix"),
        "{}",
        applied.message
    );
    // Well before the deadline (1h): the five did not keep the ring in Applying.
    assert!(w.clock.now().duration_since(w.trace[0].at) < SignedDuration::from_mins(15));

    w.run_until(2, "healthy", |w| w.phase() == Some(Phase::Healthy))
        .await;
    for d in &pinned {
        assert_eq!(desired_version(&w.hub, d).as_deref(), Some("2.3.1"));
    }
    assert_eq!(w.count("properties.desired.firmware.version='2.4.0'"), 395);
}

// ---- the property -------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    /// After a rollback, no device that received the failed revision is left without the
    /// stable revision's or the baseline's settings, whatever the fleet and failure rate.
    #[test]
    fn after_a_rollback_every_device_that_received_the_failed_revision_has_the_stable_or_baseline_settings(
        devices in 40usize..150,
        canary in 0.1f64..0.3,
        share_5000x in 0.2f64..0.8,
        rate in 0.2f64..1.0,
        with_stable in any::<bool>(),
        restarts in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let fleet = fleet(devices, [canary, 0.5 - canary, 0.5], share_5000x, rate, seed);
            let mut w = World::new(&fleet, "2.4.0");
            w.tick = SignedDuration::from_secs(10);
            w.forgetful = restarts;
            // A canary ring smaller than the gate's minApplied (5) never gets a verdict and
            // reaches its deadline: no revision could become stable there, so such a fleet
            // is not a case of this property (small fleets drew one now and then).
            let min_applied = w.ro.spec.gate.min_applied.unwrap_or(1) as u64;
            if w.count(&format!("({}) AND tags.ring='canary'", w.ro.spec.target)) < min_applied {
                return;
            }
            // Rings of five devices can pass (the Wilson bound of 5 in 5 is 0.57).
            let success = Some("lowerBound(metrics.current, applied) >= 0.5".to_string());
            w.ro.spec.gate.success = success.clone();
            let expected = if with_stable {
                w.run_until(3, "healthy on 2.4.0", |w| w.phase() == Some(Phase::Healthy)).await;
                "2.4.0"
            } else {
                BASELINE_VERSION
            };
            w.ro = rollout("2.5.0");
            w.ro.spec.gate.success = success;
            let received = Rc::new(RefCell::new(BTreeSet::new()));
            let seen = received.clone();
            w.watch(move |hub| seen.borrow_mut().extend(device_ids(hub, "properties.desired.firmware.version = '2.5.0'")));
            w.run_until(4, "rolled back or healthy", |w| matches!(w.phase(), Some(Phase::RolledBack | Phase::Healthy))).await;
            if w.phase() == Some(Phase::RolledBack) {
                assert_restored(&w.hub, &received.borrow(), expected);
                assert_eq!(w.count("properties.desired.firmware.version = '2.5.0'"), 0);
            }
        });
    }
}
