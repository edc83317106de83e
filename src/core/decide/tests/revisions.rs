//! Revisions: a newer one supersedes an unfinished one; spec changes retarget in place.

use super::*;

#[test]
fn a_newer_revision_supersedes_an_unfinished_one() {
    let mut s = Sim::new(rollout());
    s.step();
    s.refresh();
    s.step();
    let first = s.ours()[0].1.id.clone();
    set_version(&mut s.ro, "2.4.1");
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Delete { id }, Action::Create(c)] if *id == first && c.id != first),
        "{:?}",
        d.actions
    );
    assert_eq!(s.ours().len(), 1);
    assert_eq!(s.ring_state(), (0, RingState::Applying));
    assert!(
        s.status.rings.len() == 1 && s.status.rings[0].verdict.is_none(),
        "ring records restart with the revision"
    );
}

#[test]
fn superseding_with_one_write_left_deletes_first_and_creates_next_time() {
    let mut s = Sim::new(rollout());
    s.step();
    set_version(&mut s.ro, "2.4.1");
    s.budget.writes = 1;
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Delete { .. }]),
        "{:?}",
        d.actions
    );
    assert!(s.ours().is_empty());
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Create(_)]));
}

#[test]
fn spec_changes_that_keep_the_content_retarget_in_place() {
    let mut s = Sim::new(rollout());
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    s.ro.spec.target = "tags.environment='prod' AND tags.site='lyon'".into();
    s.ro.spec.priority = 30;
    let d = s.step();
    let [Action::Update { config, .. }] = &d.actions[..] else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(
        config.target_condition,
        "tags.environment='prod' AND tags.site='lyon'"
    );
    assert_eq!(config.priority, 30);
    assert!(s.step().actions.is_empty());
}
