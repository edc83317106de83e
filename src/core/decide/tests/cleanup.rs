//! Deleting a rollout.

use super::*;

#[test]
fn deleting_a_rollout_refuses_to_strip_settings_unless_forced() {
    let mut s = Sim::new(rollout());
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    s.deletion = Some(Deletion { force: false });
    s.cleanup_uncovered = 12;
    let obs = s.observation();
    let d = decide(&s.ro, &s.status, &obs, s.now);
    assert_eq!(d.counts_needed[0].key, "cleanup");
    assert!(
        d.counts_needed[0]
            .condition
            .contains("AND NOT (IS_DEFINED(configurations.[[baseline]]))"),
        "{}",
        d.counts_needed[0].condition
    );
    let d = s.step();
    assert!(d.actions.is_empty() && !d.finalized);
    let stalled = status::condition(&s.status, STALLED).unwrap();
    assert_eq!(stalled.reason, "CleanupBlocked");
    assert!(
        stalled.message.contains("12 devices") && stalled.message.contains("force-delete"),
        "{}",
        stalled.message
    );
    s.cleanup_uncovered = 0;
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Delete { .. }]));
    let d = s.step();
    assert!(d.finalized);
    assert!(s.ours().is_empty());
    assert_eq!(s.configs.len(), 1, "the baseline is not ours and stays");

    let mut s = Sim::new(rollout());
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    s.deletion = Some(Deletion { force: true });
    s.cleanup_uncovered = 12;
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Delete { .. }]));
}
