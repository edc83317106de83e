//! Stories of drift: the hub's configurations edited, relabelled or deleted by someone
//! else, healed or reported (`docs/rollouts.md`, "Drift").

use super::*;
use crate::core::decide::{DRIFTED, DriftKind, SHADOWED};
use crate::resources::DriftPolicy;

/// A rollout that baked its canary ring and waits in ring 1 (early, approval-free).
fn at_ring_one() -> Sim {
    let mut s = Sim::new(rollout());
    s.run_until(40, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.index == 1 && r.state == RingState::Baking)
    });
    s
}

fn current(s: &mut Sim) -> &mut Configuration {
    let id = s.status.configuration_id.clone().unwrap();
    s.configs.iter_mut().find(|c| c.id == id).unwrap()
}

fn drifted(s: &Sim) -> Option<String> {
    status::condition(&s.status, DRIFTED)
        .filter(|c| c.status == "True")
        .map(|c| c.message.clone())
}

#[test]
fn an_edited_target_condition_is_put_back_and_reported_once() {
    let mut s = at_ring_one();
    let want = current(&mut s).target_condition.clone();
    current(&mut s).target_condition = "tags.environment='prod'".into();
    let d = s.step();
    assert_eq!(d.drift.len(), 1, "{:?}", d.drift);
    assert_eq!(d.drift[0].kind, DriftKind::Modified);
    assert!(d.drift[0].new && d.drift[0].healed);
    let Action::Update { config, .. } = &d.actions[0] else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(config.target_condition, want);
    assert!(drifted(&s).unwrap().contains("targetCondition"));
    let h = s.status.history.last().unwrap();
    assert_eq!(h.decision, "Drift");
    assert!(h.message.contains("put back"), "{}", h.message);
    assert!(!decisions(&s).contains(&"Retarget".to_string()));
    // Healed: the next decision finds nothing and clears the condition.
    let d = s.step();
    assert!(d.drift.is_empty(), "{:?}", d.drift);
    let c = status::condition(&s.status, DRIFTED).unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "InSync"));
    assert_eq!(s.ring_state(), (1, RingState::Baking));
}

#[test]
fn a_spec_change_is_not_drift() {
    let mut s = at_ring_one();
    s.ro.spec.priority = 30;
    let d = s.step();
    assert!(d.drift.is_empty(), "{:?}", d.drift);
    assert!(decisions(&s).contains(&"Retarget".to_string()));
    assert_eq!(current(&mut s).priority, 30);
    assert!(status::condition(&s.status, DRIFTED).is_none());
    // And once on the hub, editing it back is drift.
    current(&mut s).priority = 20;
    let d = s.step();
    assert_eq!(d.drift.len(), 1);
    assert_eq!(current(&mut s).priority, 30);
}

#[test]
fn a_widened_ring_label_is_not_trusted() {
    let mut s = at_ring_one();
    let target = current(&mut s).target_condition.clone();
    current(&mut s)
        .labels
        .insert(label::RING.into(), "2".into());
    let d = s.step();
    assert_eq!(d.drift.len(), 1, "{:?}", d.drift);
    assert_eq!(d.drift[0].kind, DriftKind::Labels);
    assert_eq!(current(&mut s).labels[label::RING], "1");
    assert_eq!(current(&mut s).target_condition, target, "never wider");
    assert_eq!(s.ring_state(), (1, RingState::Baking));
    // A state label edited to `stable` does not make the revision stable either.
    current(&mut s)
        .labels
        .insert(label::STATE.into(), "stable".into());
    let d = s.step();
    assert_eq!(d.drift[0].kind, DriftKind::Labels);
    assert_eq!(current(&mut s).labels[label::STATE], "rolling");
    assert_eq!(current(&mut s).target_condition, target);
    assert_ne!(s.phase(), Phase::Healthy);
}

#[test]
fn a_deleted_configuration_is_recreated_at_its_ring() {
    let mut s = at_ring_one();
    let id = s.status.configuration_id.clone().unwrap();
    let target = current(&mut s).target_condition.clone();
    s.configs.retain(|c| c.id != id);
    let d = s.step();
    assert_eq!(d.drift.len(), 1);
    assert_eq!(d.drift[0].kind, DriftKind::Deleted);
    let Action::Create(c) = &d.actions[0] else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(c.target_condition, target, "recreated at ring 1, not wider");
    assert_eq!(c.labels[label::RING], "1");
    assert!(c.labels.contains_key(label::STARTED), "marks kept");
    // The ring re-applies before it is judged again.
    assert_eq!(s.ring_state(), (1, RingState::Applying));
    s.refresh();
    s.run_until(40, |s| s.phase() == Phase::Healthy);
}

#[test]
fn report_mode_changes_nothing_and_stalls() {
    let mut s = at_ring_one();
    s.ro.spec.drift = DriftPolicy::Report;
    let id = s.status.configuration_id.clone().unwrap();
    current(&mut s).target_condition = "tags.environment='prod'".into();
    let before = s.configs.clone();
    let d = s.step();
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.drift.len(), 1);
    assert!(d.drift[0].new && !d.drift[0].healed);
    assert_eq!(s.configs, before);
    let stalled = status::condition(&s.status, STALLED).unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "Drifted")
    );
    assert!(
        s.status
            .message
            .as_deref()
            .unwrap()
            .contains("targetCondition")
    );
    // Reported once: the next look finds the same and adds no history.
    let n = s.status.history.len();
    s.advance(mins(10));
    let d = s.step();
    assert!(!d.drift[0].new);
    assert_eq!(s.status.history.len(), n);
    // Deleted in report mode: not recreated.
    s.configs.retain(|c| c.id != id);
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(d.drift[0].kind, DriftKind::Deleted);
    // Switched to heal: recreated.
    s.ro.spec.drift = DriftPolicy::Heal;
    let d = s.step();
    assert!(matches!(d.actions[0], Action::Create(_)));
}

#[test]
fn a_higher_priority_configuration_on_the_same_paths_is_reported_as_shadowed() {
    let mut s = at_ring_one();
    let mut hotfix = baseline_config();
    hotfix.id = "hotfix".into();
    hotfix.priority = 50;
    hotfix.system_metrics.results =
        BTreeMap::from([("targetedCount".into(), 7), ("appliedCount".into(), 7)]);
    s.configs.push(hotfix);
    let d = s.step();
    let shadow: Vec<_> = d
        .drift
        .iter()
        .filter(|d| d.kind == DriftKind::Shadowed)
        .collect();
    assert_eq!(shadow.len(), 1, "{:?}", d.drift);
    let c = status::condition(&s.status, SHADOWED).unwrap();
    assert_eq!(c.status, "True");
    assert!(
        c.message.contains("hotfix (priority 50 over 20)"),
        "{}",
        c.message
    );
    assert!(c.message.contains("targets 7 devices"), "{}", c.message);
    assert!(
        d.actions.iter().all(|a| a.id() != "hotfix"),
        "never touched"
    );
    let d = s.step();
    assert!(d.drift.iter().all(|d| !d.new), "reported once");
    s.configs.retain(|c| c.id != "hotfix");
    s.step();
    assert_eq!(
        status::condition(&s.status, SHADOWED).unwrap().status,
        "False"
    );
}

#[test]
fn a_lost_status_still_trusts_the_labels() {
    let mut s = at_ring_one();
    s.status = DeviceRolloutStatus::default();
    let d = s.step();
    assert!(d.drift.is_empty(), "{:?}", d.drift);
    assert_eq!(s.ring_state().0, 1);
}
