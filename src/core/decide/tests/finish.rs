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

/// The message of the `Throttled` condition, which must be true.
fn throttled(s: &Sim) -> String {
    let c = s
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::core::status::THROTTLED)
        .expect("a Throttled condition");
    assert_eq!(c.status, "True");
    assert_eq!(c.reason, "HubBudget");
    c.message.clone()
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
    assert!(throttled(&s).contains("query budget"), "{:?}", s.status);
    assert!(
        !s.status.message.as_deref().unwrap_or("").contains("budget"),
        "the message explains the rollout, not the wait: {:?}",
        s.status.message
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
        throttled(&s).contains("configuration-write budget"),
        "{:?}",
        s.status
    );
    assert!(
        !s.status.message.as_deref().unwrap_or("").contains("budget"),
        "the message explains the rollout, not the wait: {:?}",
        s.status.message
    );
    // A refill of zero still does not spin.
    s.budget = Budget {
        queries: 5,
        writes: 0,
        refill: SignedDuration::ZERO,
        ..Budget::default()
    };
    assert_eq!(s.step().requeue_after, MIN_REQUEUE);
    // Budget back: the condition goes.
    s.budget = Budget {
        queries: 5,
        writes: 5,
        refill: SignedDuration::from_secs(20),
        ..Budget::default()
    };
    s.step();
    assert!(
        !s.status
            .conditions
            .iter()
            .any(|c| c.type_ == crate::core::status::THROTTLED),
        "{:?}",
        s.status.conditions
    );
}
