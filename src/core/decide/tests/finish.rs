//! The decision as a whole: suspension, invalid specs, conditions, budgets.

use super::*;

#[test]
fn suspend_writes_nothing() {
    let mut s = Sim::new(rollout());
    s.step();
    s.ro.spec.suspend = true;
    s.refresh();
    let d = s.step();
    assert!(d.actions.is_empty() && d.counts_needed.is_empty());
    assert_eq!(s.phase(), Phase::Paused);
    assert_eq!(
        status::condition(&s.status, READY).unwrap().reason,
        "Suspended"
    );
    assert_eq!(d.requeue_after, IDLE_POLL);
    s.ro.spec.suspend = false;
    s.run_until(40, |s| s.phase() == Phase::Healthy);
}

#[test]
fn an_invalid_spec_writes_nothing_and_says_why() {
    let s = Sim::new(rollout());
    let errors = vec![FieldError {
        path: "spec.rings[1].target".into(),
        message: "column 5: unexpected token".into(),
    }];
    let d = invalid(&s.ro, &s.status, &errors, s.now);
    assert!(d.actions.is_empty());
    assert_eq!(d.status.phase, Some(Phase::Failed));
    let stalled = status::condition(&d.status, STALLED).unwrap();
    assert_eq!(stalled.reason, "InvalidSpec");
    assert!(stalled.message.contains("spec.rings[1].target: column 5"));
}

#[test]
fn conditions_keep_their_transition_time_while_nothing_flips() {
    let mut s = Sim::new(rollout());
    s.step();
    let t = status::condition(&s.status, RECONCILING)
        .unwrap()
        .last_transition_time
        .clone();
    s.advance(mins(1));
    s.step();
    s.refresh();
    s.advance(mins(1));
    s.step();
    assert_eq!(
        status::condition(&s.status, RECONCILING)
            .unwrap()
            .last_transition_time,
        t
    );
    assert_eq!(s.status.observed_generation, Some(1));
}

#[test]
fn budgets_are_never_exceeded_and_an_empty_budget_waits_for_the_refill() {
    let mut s = Sim::new(rollout());
    s.budget = Budget {
        queries: 0,
        writes: 5,
        refill: SignedDuration::from_secs(40),
        ..Budget::default()
    };
    let d = s.step();
    assert!(d.actions.is_empty() && d.counts_needed.is_empty());
    assert_eq!(d.requeue_after, SignedDuration::from_secs(40));
    assert!(
        s.status
            .message
            .as_deref()
            .unwrap()
            .contains("query budget")
    );
    s.budget = Budget {
        queries: 5,
        writes: 0,
        refill: SignedDuration::from_secs(20),
        ..Budget::default()
    };
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(d.requeue_after, SignedDuration::from_secs(20));
    assert!(
        s.status
            .message
            .as_deref()
            .unwrap()
            .contains("configuration-write budget")
    );
    // A refill of zero still does not spin.
    s.budget = Budget {
        queries: 5,
        writes: 0,
        refill: SignedDuration::ZERO,
        ..Budget::default()
    };
    assert_eq!(s.step().requeue_after, MIN_REQUEUE);
}
