//! Rollback: before the canary ring is left, retried, not stopped by a pause, confirmed from the hub.

use super::*;

#[test]
fn a_faulty_revision_is_rolled_back_before_it_leaves_the_canary_ring() {
    let mut s = Sim::new(rollout());
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    let stable = s.status.revision.clone().unwrap();

    set_version(&mut s.ro, "2.5.0");
    s.fail_rate.insert("2.5.0".into(), 0.3);
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Create(c)] if c.priority == 20 && c.labels[label::RING] == "0")
    );
    assert_eq!(s.ours().len(), 2, "the stable revision stays underneath");
    s.refresh();
    s.step();
    s.advance(mins(10));
    let d = s.step();
    assert_eq!(s.status.rings[0].verdict, Some(Verdict::Fail));
    let [Action::Update { config, .. }] = &d.actions[..] else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(config.target_condition, NO_DEVICE_TARGET);
    assert_eq!(config.labels[label::STATE], "held");
    assert_eq!(s.ring_state(), (0, RingState::RollingBack));
    assert_eq!(s.status.held_revision, s.status.revision);
    assert_ne!(s.phase(), Phase::RolledBack, "not before the hub confirms");

    s.refresh();
    s.step();
    assert_eq!(s.ring_state(), (0, RingState::RolledBack));
    assert_eq!(s.phase(), Phase::RolledBack);
    assert_eq!(s.status.stable_revision.as_deref(), Some(stable.as_str()));
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().status,
        "True"
    );
    assert!(
        decisions(&s).ends_with(&["Fail".into(), "Rollback".into(), "RolledBack".into()]),
        "{:?}",
        decisions(&s)
    );
    // Held until new content arrives: nothing changes.
    s.advance(mins(60));
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(s.phase(), Phase::RolledBack);

    // New content: the held configuration goes, a new one starts at ring 0.
    set_version(&mut s.ro, "2.5.1");
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Delete { .. }, Action::Create(_)]),
        "{:?}",
        d.actions
    );
    assert_eq!(s.status.held_revision, None);
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    assert_eq!(
        s.ours().len(),
        1,
        "the previous stable revision is deleted on completion"
    );
}

#[test]
fn retry_restarts_a_rolled_back_revision_at_ring_zero() {
    let mut s = Sim::new(rollout());
    s.fail_rate.insert("2.4.0".into(), 0.5);
    s.run_until(20, |s| s.phase() == Phase::RolledBack);
    s.fail_rate.clear();
    s.op("retry-1", OperationKind::Retry);
    let d = s.step();
    let [Action::Update { config, .. }] = &d.actions[..] else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(config.labels[label::STATE], "rolling");
    assert_eq!(config.labels[label::RING], "0");
    assert_eq!(s.status.held_revision, None);
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    assert_eq!(s.status.handled_operations, ["retry-1"]);
}

#[test]
fn a_pause_does_not_stop_a_rollback() {
    let mut s = Sim::new(rollout());
    s.fail_rate.insert("2.4.0".into(), 0.5);
    s.step();
    s.op("p", OperationKind::Pause);
    s.run_until(20, |s| s.phase() == Phase::RolledBack);
}

#[test]
fn a_rollback_is_confirmed_only_when_the_devices_have_other_settings() {
    let mut s = Sim::new(rollout());
    s.fail_rate.insert("2.4.0".into(), 0.5);
    s.rollback_uncovered = 4;
    s.run_until(20, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.state == RingState::RollingBack)
    });
    let started = s.now;
    s.refresh();
    let asked = s.counts_asked();
    let [req] = &asked[..] else {
        panic!("{asked:?}")
    };
    assert!(req.key.starts_with("rollback:"));
    assert_eq!(
        req.condition,
        "((tags.environment='prod') AND (tags.ring='canary')) AND NOT (configurations.[[baseline]].status='Applied')"
    );
    // Within the grace period: still rolling back.
    s.step();
    assert_eq!(s.ring_state(), (0, RingState::RollingBack));
    assert!(s.status.message.as_deref().unwrap().contains("4 devices"));
    // After it: rolled back, and stalled on the devices that lost their settings.
    s.run_until(40, |s| s.phase() == Phase::RolledBack);
    assert!(s.now.duration_since(started) >= ROLLBACK_GRACE);
    let stalled = status::condition(&s.status, STALLED).unwrap();
    assert_eq!(stalled.reason, "RollbackIncomplete");
    assert!(stalled.message.contains("4 devices"), "{}", stalled.message);
    // A baseline that covers them clears it.
    s.rollback_uncovered = 0;
    s.step();
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().reason,
        "RolledBack"
    );
}
