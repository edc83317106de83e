//! Stories of the ring machine and judging: widening ring by ring, gates, deadlines, `onFailure: pause`, shielded devices, the quota.

use super::*;

#[test]
fn a_good_revision_goes_through_every_ring_and_becomes_stable() {
    let mut s = Sim::new(rollout());
    let d = s.step();
    assert_eq!(d.actions.len(), 1);
    let Action::Create(c) = &d.actions[0] else {
        panic!("create first: {:?}", d.actions)
    };
    assert_eq!(
        c.target_condition,
        "(tags.environment='prod') AND (tags.ring='canary')"
    );
    assert_eq!(c.priority, 20);
    assert_eq!(c.labels[label::RING], "0");
    assert_eq!(s.ring_state(), (0, RingState::Applying));
    assert_eq!(s.phase(), Phase::Progressing);
    assert_eq!(d.requeue_after, AFTER_WRITE);

    // The hub has not recomputed its metrics: still applying.
    s.advance(mins(1));
    s.step();
    assert_eq!(s.ring_state(), (0, RingState::Applying));
    s.refresh();
    let d = s.step();
    assert_eq!(s.ring_state(), (0, RingState::Baking));
    assert_eq!(d.requeue_after, BAKE_POLL);
    s.advance(mins(9));
    s.step();
    assert_eq!(
        s.ring_state(),
        (0, RingState::Baking),
        "no verdict before the bake time"
    );
    s.advance(mins(1));
    let d = s.step();
    // Passed and widened in one decision.
    assert_eq!(s.status.rings[0].verdict, Some(Verdict::Pass));
    let Action::Update { config, .. } = &d.actions[0] else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(config.labels[label::RING], "1");
    assert_eq!(
        config.target_condition,
        "(tags.environment='prod') AND ((tags.ring='canary') OR (tags.ring='early'))"
    );
    assert_eq!(s.ring_state(), (1, RingState::Applying));

    s.run_until(40, |s| s.phase() == Phase::Healthy);
    let ours = s.ours();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].0.state, ConfigState::Stable);
    assert_eq!(ours[0].1.target_condition, "tags.environment='prod'");
    assert_eq!(s.status.stable_revision, s.status.revision);
    assert_eq!(status::condition(&s.status, READY).unwrap().status, "True");
    assert_eq!(
        status::condition(&s.status, RECONCILING).unwrap().status,
        "False"
    );
    assert_eq!(
        decisions(&s),
        [
            "Create", "Applied", "Pass", "Widen", "Applied", "Pass", "Widen", "Applied", "Pass",
            "Complete"
        ]
    );
    let last = s.status.history.last().unwrap();
    assert_eq!(last.targeted, Some(1110));
    // Healthy and idle: nothing more to write.
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(d.requeue_after, IDLE_POLL);
}

#[test]
fn on_failure_pause_holds_the_ring_for_a_human() {
    let mut ro = rollout();
    ro.spec.on_failure = OnFailure::Pause;
    let mut s = Sim::new(ro);
    s.fail_rate.insert("2.4.0".into(), 0.5);
    s.run_until(20, |s| s.phase() == Phase::Failed);
    assert_eq!(s.ring_state(), (0, RingState::Failed));
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().reason,
        "GateFailed"
    );
    let d = s.step();
    assert!(d.actions.is_empty(), "held, not rolled back");
    // Promote moves on despite the failure, recorded as a Pass by the operator.
    s.op("p1", OperationKind::Promote);
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Update { config, .. }] if config.labels[label::RING] == "1"),
        "{:?}",
        d.actions
    );
    assert!(
        s.status.rings[0]
            .message
            .as_deref()
            .unwrap()
            .contains("promoted by operator")
    );
    // The op is applied once: the next ring is judged normally, fails, holds again.
    s.run_until(20, |s| s.phase() == Phase::Failed);
    assert_eq!(s.ring_state(), (1, RingState::Failed));
    s.op("a1", OperationKind::Abort);
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Update { config, .. }] if config.target_condition == NO_DEVICE_TARGET)
    );
    s.refresh();
    s.step();
    assert_eq!(s.phase(), Phase::RolledBack);
}

#[test]
fn no_verdict_by_the_deadline_stalls_then_applies_on_failure() {
    let mut ro = rollout();
    // A success condition the numbers never reach, and no failure.
    ro.spec.gate.success = Some("applied > 1000000.0".into());
    ro.spec.gate.failure = None;
    let mut s = Sim::new(ro);
    s.run_until(200, |s| s.status.held_revision.is_some());
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().reason,
        "DeadlineExceeded"
    );
    assert_eq!(s.status.rings[0].verdict, Some(Verdict::Inconclusive));
    assert!(decisions(&s).contains(&"Deadline".to_string()));
    let started = s.status.rings[0].started_at.clone().unwrap().0;
    assert!(s.now.duration_since(started) >= mins(120));
}

#[test]
fn devices_a_higher_priority_configuration_holds_count_as_settled() {
    let mut s = Sim::new(rollout());
    s.shielded = 3;
    // Without a configuration that could hold them, the numbers fall short and nothing is
    // counted: the ring waits.
    s.step();
    s.refresh();
    assert!(
        s.counts_asked()
            .iter()
            .all(|r| !r.key.starts_with("shielded:"))
    );
    let mut hotfix = baseline_config();
    hotfix.id = "hotfix".into();
    hotfix.priority = 50;
    hotfix.created_time_utc = Some(s.now);
    s.configs.push(hotfix);
    s.refresh();
    let asked = s.counts_asked();
    let req = asked
        .iter()
        .find(|r| r.key.starts_with("shielded:"))
        .expect("a shielded count");
    assert_eq!(
        req.condition,
        format!(
            "(configurations.[[{}]].status='Targeted') AND (configurations.[[hotfix]].status='Applied')",
            s.ours()[0].1.id
        )
    );
    s.step();
    assert_eq!(s.ring_state(), (0, RingState::Baking));
    assert_eq!(s.status.ring.as_ref().unwrap().shielded, Some(3));
    assert_eq!(s.status.rings[0].shielded, Some(3));
    assert!(
        s.status
            .history
            .last()
            .unwrap()
            .message
            .contains("3 more are held by higher-priority configuration(s) hotfix")
    );
}

#[test]
fn the_hub_must_catch_up_before_a_ring_counts_as_applied() {
    let mut s = Sim::new(rollout());
    s.step();
    s.refresh();
    s.step();
    s.advance(mins(10));
    s.step(); // passes ring 0, widens to ring 1
    assert_eq!(s.ring_state(), (1, RingState::Applying));
    // The hub still reports ring 0's numbers (10 targeted): not applied.
    for _ in 0..3 {
        s.advance(mins(1));
        s.step();
        assert_eq!(s.ring_state(), (1, RingState::Applying));
    }
    s.refresh();
    s.step();
    assert_eq!(s.ring_state(), (1, RingState::Baking));
}

#[test]
fn the_quota_is_respected() {
    let mut s = Sim::new(rollout());
    s.max_configurations = 1;
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().reason,
        "ConfigurationQuota"
    );
}

#[test]
fn a_short_bake_is_looked_at_about_when_it_ends_a_long_one_as_before() {
    use super::super::judging::poll;
    use crate::core::gate::EffectiveGate;
    let gate = |secs: i64| EffectiveGate {
        min_applied: 1,
        bake: SignedDuration::from_secs(secs),
        deadline: SignedDuration::from_secs(1800),
        success: None,
        failure: None,
    };
    assert_eq!(poll(APPLY_POLL, &gate(10)), SignedDuration::from_secs(10));
    assert_eq!(poll(ANALYZE_POLL, &gate(10)), SignedDuration::from_secs(10));
    assert_eq!(poll(ANALYZE_POLL, &gate(0)), MIN_REQUEUE);
    assert_eq!(poll(APPLY_POLL, &gate(120)), APPLY_POLL);
    assert_eq!(poll(ANALYZE_POLL, &gate(120)), ANALYZE_POLL);
}

#[test]
fn an_applying_ring_is_looked_at_every_few_seconds_while_the_hubs_budgets_have_room() {
    // The interval: fast while both budgets keep their reserve, as before otherwise.
    assert_eq!(applying_poll(20, 20), APPLYING_POLL);
    assert_eq!(
        applying_poll(FAST_POLL_RESERVE, FAST_POLL_RESERVE),
        APPLYING_POLL
    );
    assert_eq!(applying_poll(FAST_POLL_RESERVE - 1, 20), APPLY_POLL);
    assert_eq!(applying_poll(20, FAST_POLL_RESERVE - 1), APPLY_POLL);

    // A driver whose budgets have room: the ring just targeted is looked at again after
    // APPLYING_POLL, and so on while the hub applies it.
    let mut s = Sim::new(rollout());
    s.budget = Budget {
        applying: applying_poll(20, 20),
        ..Budget::default()
    };
    let d = s.step();
    assert_eq!(s.ring_state(), (0, RingState::Applying));
    assert_eq!(d.requeue_after, APPLYING_POLL);
    s.advance(APPLYING_POLL);
    let d = s.step();
    assert_eq!(s.ring_state(), (0, RingState::Applying));
    assert_eq!(d.requeue_after, APPLYING_POLL);
    // Applied: baking waits as before.
    s.refresh();
    let d = s.step();
    assert_eq!(s.ring_state(), (0, RingState::Baking));
    assert_eq!(d.requeue_after, BAKE_POLL);

    // Budgets short of the reserve: as before (AFTER_WRITE after the write, then
    // APPLY_POLL while applying).
    let mut s = Sim::new(rollout());
    s.budget = Budget {
        applying: applying_poll(FAST_POLL_RESERVE - 1, 20),
        ..Budget::default()
    };
    assert_eq!(s.step().requeue_after, AFTER_WRITE);
    s.advance(AFTER_WRITE);
    assert_eq!(s.step().requeue_after, APPLY_POLL);
}
