//! Marks: a lost status is rebuilt from the labels, with the same outcome, pause and requests.

use super::*;

#[test]
fn a_lost_status_is_rebuilt_from_the_labels() {
    let mut s = Sim::new(rollout());
    s.run_until(20, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.index == 1 && r.state == RingState::Baking)
    });
    s.status = DeviceRolloutStatus::default();
    let d = s.step();
    assert!(
        d.actions.is_empty(),
        "no create, no regression: {:?}",
        d.actions
    );
    assert_eq!(s.status.ring.as_ref().unwrap().index, 1);
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    assert_eq!(decisions(&s).iter().filter(|d| *d == "Create").count(), 0);

    // Lost while rolled back: the held label says so, and it stays rolled back.
    let mut s = Sim::new(rollout());
    s.fail_rate.insert("2.4.0".into(), 0.5);
    s.run_until(20, |s| s.phase() == Phase::RolledBack);
    s.status = DeviceRolloutStatus::default();
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(s.phase(), Phase::RolledBack);

    // Lost after completion: healthy.
    let mut s = Sim::new(rollout());
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    s.status = DeviceRolloutStatus::default();
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(s.phase(), Phase::Healthy);
}

/// One reconcile by a controller that lost the status just before it.
fn forgetful_step(s: &mut Sim) -> Decision {
    s.status = DeviceRolloutStatus::default();
    let d = s.step();
    s.refresh();
    s.advance(d.requeue_after);
    d
}

#[test]
fn a_status_lost_before_every_step_reaches_the_same_outcome_as_an_uninterrupted_run() {
    let mut a = Sim::new(rollout());
    a.run_until(60, |s| s.phase() == Phase::Healthy);
    let mut b = Sim::new(rollout());
    for _ in 0..200 {
        forgetful_step(&mut b);
        if b.phase() == Phase::Healthy {
            break;
        }
    }
    assert_eq!(b.phase(), Phase::Healthy, "{:#?}", b.status);
    let (la, lb) = (&a.ours()[0].1.labels, &b.ours()[0].1.labels);
    assert_eq!(la, lb, "the same stable configuration");
    assert_eq!(b.ours().len(), 1);
    // Bake times count from the `applied` marks, not from each restart: the run takes
    // no longer than the uninterrupted one, give or take a poll per ring.
    let (ta, tb) = (a.now.duration_since(t0()), b.now.duration_since(t0()));
    assert!(tb <= ta + mins(10), "{tb:?} vs {ta:?}");

    // The faulty revision: rolled back in the canary ring all the same.
    let mut b = Sim::new(rollout());
    b.fail_rate.insert("2.4.0".into(), 0.5);
    for _ in 0..100 {
        forgetful_step(&mut b);
        if b.phase() == Phase::RolledBack {
            break;
        }
    }
    assert_eq!(b.phase(), Phase::RolledBack);
    assert_eq!(b.ours()[0].0.ring, 0);
    assert_eq!(b.ours()[0].0.state, ConfigState::Held);
}

#[test]
fn a_pause_outlives_a_lost_status() {
    let mut s = Sim::new(rollout());
    s.run_until(20, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.state == RingState::Baking)
    });
    s.op("p", OperationKind::Pause);
    let d = s.step();
    let [Action::Update { config, .. }] = &d.actions[..] else {
        panic!("the pause is written to the hub: {:?}", d.actions)
    };
    assert_eq!(config.labels[label::PAUSED], "p");
    for _ in 0..20 {
        forgetful_step(&mut s);
        assert_eq!(s.phase(), Phase::Paused, "{:#?}", s.status);
        assert!(s.status.paused.as_ref().is_some_and(|p| p.operation == "p"));
    }
    assert_eq!(s.ours()[0].0.ring, 0, "no widening while paused");
    s.op("r", OperationKind::Resume);
    forgetful_step(&mut s);
    assert!(s.status.paused.is_none());
    assert!(!s.ours()[0].1.labels.contains_key(label::PAUSED));
    for _ in 0..5 {
        forgetful_step(&mut s);
    }
    assert!(s.ours()[0].0.ring >= 1, "widened after the resume");
}

#[test]
fn an_operation_is_not_applied_again_after_the_status_is_lost() {
    let mut ro = rollout();
    ro.spec.on_failure = OnFailure::Pause;
    let mut s = Sim::new(ro);
    s.fail_rate.insert("2.4.0".into(), 0.5);
    s.run_until(20, |s| s.phase() == Phase::Failed);
    // An id a label cannot hold as it is (space, slash): the mark keeps its label form.
    let id = "promote 1 from alice/cli";
    s.op(id, OperationKind::Promote);
    s.step();
    assert_eq!(s.ours()[0].0.ring, 1, "promoted past the failed ring");
    // The request is still there (an annotation stays until replaced); the status is lost.
    for _ in 0..30 {
        forgetful_step(&mut s);
    }
    assert_eq!(
        s.ours()[0].0.ring,
        1,
        "the same promote does not pass ring 1 too"
    );
    assert_eq!(s.ring_state(), (1, RingState::Failed));
    assert!(s.ours()[0].0.marks.is_operation(id));
}
