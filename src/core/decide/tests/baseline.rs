//! The baseline guard: it blocks, asks for the right count, warns, and runs again after an approval.

use super::*;

#[test]
fn the_baseline_guard_blocks_widening_until_devices_are_covered() {
    let mut s = Sim::new(rollout());
    s.uncovered = 7;
    let d = s.step();
    assert!(
        d.actions.is_empty(),
        "nothing is created while ring 0 is uncovered"
    );
    assert_eq!(s.ring_state(), (0, RingState::WaitingForBaseline));
    assert_eq!(s.phase(), Phase::Pending);
    let stalled = status::condition(&s.status, STALLED).unwrap();
    assert_eq!(stalled.reason, "BaselineMissing");
    assert!(
        stalled.message.contains("7 devices of ring canary"),
        "{}",
        stalled.message
    );
    s.uncovered = 0;
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Create(_)]));
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().status,
        "False"
    );
}

#[test]
fn the_baseline_guard_asks_for_the_right_count() {
    let mut s = Sim::new(rollout());
    let obs = s.observation();
    let d = decide(&s.ro, &s.status, &obs, s.now);
    let [req] = &d.counts_needed[..] else {
        panic!("{:?}", d.counts_needed)
    };
    assert!(req.key.starts_with("baseline:"));
    assert_eq!(
        req.condition,
        "((tags.environment='prod') AND (tags.ring='canary')) AND NOT (IS_DEFINED(configurations.[[baseline]]))"
    );
    // Widening from ring 0 to 1 counts only the new devices.
    s.run_until(10, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.state == RingState::Baking)
    });
    s.advance(mins(10));
    let obs = s.observation();
    let d = decide(&s.ro, &s.status, &obs, s.now);
    let req = d
        .counts_needed
        .iter()
        .find(|r| r.key.starts_with("baseline:"))
        .expect("a guard count");
    assert!(
        req.condition
            .contains("AND NOT ((tags.environment='prod') AND (tags.ring='canary'))"),
        "{}",
        req.condition
    );
    // A baseline of higher priority, or one writing other paths, does not cover.
    let mut s2 = Sim::new(rollout());
    s2.configs[0].priority = 50;
    let obs = s2.observation();
    let d = decide(&s2.ro, &s2.status, &obs, s2.now);
    assert!(
        !d.counts_needed[0].condition.contains("baseline"),
        "{}",
        d.counts_needed[0].condition
    );
}

#[test]
fn baseline_warn_widens_and_records_a_warning_and_off_does_not_count() {
    let mut ro = rollout();
    ro.spec.baseline = BaselinePolicy::Warn;
    let mut s = Sim::new(ro);
    s.uncovered = 3;
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Create(_)]));
    assert!(decisions(&s).contains(&"BaselineWarning".to_string()));

    let mut ro = rollout();
    ro.spec.baseline = BaselinePolicy::Off;
    let s = Sim::new(ro);
    let d = decide(&s.ro, &s.status, &s.observation(), s.now);
    assert!(d.counts_needed.is_empty());
    assert!(matches!(&d.actions[..], [Action::Create(_)]));
}

#[test]
fn an_approval_runs_the_baseline_guard_again() {
    let mut ro = rollout();
    ro.spec.rings[1].approval = true;
    let mut s = Sim::new(ro);
    s.run_until(20, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.state == RingState::AwaitingApproval)
    });
    // Coverage went away while the ring waited for its approval.
    s.uncovered = 5;
    s.op("go", OperationKind::Promote);
    let d = s.step();
    assert!(
        d.actions.iter().all(
            |a| !matches!(a, Action::Update { config, .. } if config.labels[label::RING] == "1")
        ),
        "no widening onto uncovered devices: {:?}",
        d.actions
    );
    assert_eq!(s.ring_state(), (1, RingState::WaitingForBaseline));
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().reason,
        "BaselineMissing"
    );
    assert!(s.status.rings[1].approved_at.is_some());
    // Covered again: it widens without asking for a second approval.
    s.uncovered = 0;
    let d = s.step();
    assert!(
        d.actions.iter().any(
            |a| matches!(a, Action::Update { config, .. } if config.labels[label::RING] == "1")
        ),
        "{:?}",
        d.actions
    );
}

#[test]
fn a_rollout_waiting_for_cover_looks_again_within_seconds() {
    // The cover may be on its way (a baseline applied together with the rollout): the
    // rollout must see it within seconds, not at a person's pace.
    let mut s = Sim::new(rollout());
    s.uncovered = 400;
    for _ in 0..3 {
        let d = s.step();
        assert_eq!(s.ring_state(), (0, RingState::WaitingForBaseline));
        assert!(
            d.requeue_after <= SignedDuration::from_secs(10),
            "waits {:?} for cover",
            d.requeue_after
        );
        s.advance(d.requeue_after);
    }
    s.uncovered = 0;
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Create(_)]));
}

#[test]
fn a_guard_blocked_for_longer_than_the_watch_waits_at_a_persons_pace() {
    let mut s = Sim::new(rollout());
    s.uncovered = 400;
    assert_eq!(s.step().requeue_after, COVER_POLL);
    s.advance(COVER_WATCH);
    let d = s.step();
    assert_eq!(s.ring_state(), (0, RingState::WaitingForBaseline));
    assert_eq!(d.requeue_after, HUMAN_POLL);
    // A later ring's wait is watched from when that ring started waiting.
    s.uncovered = 0;
    s.run_until(40, |s| s.ring_state() == (0, RingState::Baking));
    s.uncovered = 100;
    s.run_until(40, |s| s.ring_state() == (1, RingState::WaitingForBaseline));
    assert_eq!(s.log.last().unwrap().requeue_after, COVER_POLL);
}
