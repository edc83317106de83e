//! Operator requests: approvals, pause and resume, each request applied once.

use super::*;

#[test]
fn approval_rings_wait_for_promote() {
    let mut ro = rollout();
    ro.spec.rings[1].approval = true;
    let mut s = Sim::new(ro);
    s.run_until(20, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.state == RingState::AwaitingApproval)
    });
    assert_eq!(s.ring_state(), (1, RingState::AwaitingApproval));
    assert_eq!(s.phase(), Phase::Paused);
    s.advance(mins(600));
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(d.requeue_after, HUMAN_POLL);
    // A promote aimed at another ring is ignored (and recorded).
    let mut stale = Operation::new("old", OperationKind::Promote);
    stale.ring = Some("canary".into());
    s.ops.push(stale);
    let d = s.step();
    // Recorded on the hub too (so that it stays ignored after a restart), and nothing else.
    let [Action::Update { config, .. }] = &d.actions[..] else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(config.labels[label::RING], "0");
    assert_eq!(config.labels[label::OPERATION], "old");
    assert_eq!(decisions(&s).last().unwrap(), "IgnoredOperation");
    let mut op = Operation::new("go", OperationKind::Promote);
    op.ring = Some("early".into());
    op.revision = s.status.revision.clone();
    s.ops.push(op);
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Update { config, .. }] if config.labels[label::RING] == "1")
    );
    s.run_until(40, |s| s.phase() == Phase::Healthy);
}

#[test]
fn approval_on_the_first_ring_waits_before_anything_is_created() {
    let mut ro = rollout();
    ro.spec.rings[0].approval = true;
    let mut s = Sim::new(ro);
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(s.ring_state(), (0, RingState::AwaitingApproval));
    s.op("go", OperationKind::Promote);
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Create(_)]));
}

#[test]
fn pause_holds_widening_and_resume_lifts_it() {
    let mut s = Sim::new(rollout());
    s.op("p", OperationKind::Pause);
    s.step();
    assert_eq!(s.phase(), Phase::Paused);
    assert!(s.status.paused.is_some());
    // Ring 0 was targeted before? No: a pause before the start holds creation too.
    assert!(s.ours().is_empty());
    s.op("r", OperationKind::Resume);
    s.step();
    assert_eq!(s.ours().len(), 1);
    s.op("p2", OperationKind::Pause);
    s.run_until(10, |s| {
        s.status
            .rings
            .first()
            .is_some_and(|r| r.verdict == Some(Verdict::Pass))
    });
    assert_eq!(
        s.ours()[0].0.ring,
        0,
        "ring 0 passed but ring 1 is not targeted"
    );
    assert!(
        s.status
            .message
            .as_deref()
            .unwrap()
            .contains("paused by operator")
    );
    let d = s.step();
    assert!(d.actions.is_empty(), "paused: no widening");
    assert_eq!(s.phase(), Phase::Paused);
    s.op("r2", OperationKind::Resume);
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Update { config, .. }] if config.labels[label::RING] == "1")
    );
}

#[test]
fn operations_are_applied_once() {
    let mut s = Sim::new(rollout());
    s.op("p", OperationKind::Pause);
    s.step();
    s.op("r", OperationKind::Resume);
    s.step();
    assert!(s.status.paused.is_none());
    // The pause request is still in the input; it must not pause again.
    s.step();
    assert!(s.status.paused.is_none());
    assert_eq!(s.status.handled_operations, ["p", "r"]);
}
