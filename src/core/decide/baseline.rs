//! The baseline guard and approvals: before a ring is targeted, the devices it would
//! newly reach must have a lower-priority configuration writing the same paths (a
//! baseline, or the stable revision), so that a rollback gives them their settings back
//! instead of stripping them (`docs/rollouts.md`, "The baseline guard"). `baseline:
//! required` waits for such cover, `warn` records it and goes on, `off` does not count.
//! Then an approval ring waits for an operator's promote.

use super::rings::Target;
use super::run::{Ours, Run, Step};
use super::*;
use crate::core::plan;
use crate::iothub::configuration::MAX_QUERY_LEN;
use crate::resources::{BaselinePolicy, RingState};

impl<'a> Run<'a> {
    /// The baseline guard before targeting ring `next`, then its approval.
    ///
    /// `promote` on an approval ring approves it (and the guard still runs); on any other
    /// ring, or once approved, it widens past the guard.
    pub(super) fn guard(
        &mut self,
        target: Target<'a>,
        next: usize,
        stable: Option<Ours<'a>>,
        promote: &mut bool,
    ) -> Step {
        let needs_approval = |run: &Self| {
            run.ro.spec.rings.get(next).is_some_and(|r| r.approval)
                && run
                    .st
                    .rings
                    .get(next)
                    .is_none_or(|r| r.approved_at.is_none())
        };
        if std::mem::take(promote) {
            if needs_approval(self) {
                self.approve(next);
            } else {
                self.history(
                    "Promote",
                    Some(next),
                    None,
                    "operator promoted past the baseline guard".into(),
                );
                return self.widen(target, next);
            }
        }
        if let Some(step) = self.baseline_blocks(target, next, stable) {
            return step;
        }
        if needs_approval(self) {
            if self.ring_state() != Some(RingState::AwaitingApproval) || self.ring_index() != next {
                self.enter(next, RingState::AwaitingApproval);
            }
            self.message = format!(
                "ring {} waits for an operator's promote",
                self.ring_names[next]
            );
            return Step::Wait(HUMAN_POLL);
        }
        self.widen(target, next)
    }

    /// The baseline count for ring `next`: `Some(step)` when widening must wait (for the
    /// count, or for a baseline), `None` when it may go on.
    fn baseline_blocks(
        &mut self,
        target: Target<'a>,
        next: usize,
        stable: Option<Ours<'a>>,
    ) -> Option<Step> {
        if self.ro.spec.baseline == BaselinePolicy::Off {
            return None;
        }
        let new_devices = self.plan.new_devices(target.hub_ring(), next)?;
        // The stable revision covers too (it is ours, so covering_ids leaves it out).
        let mut covering: Vec<String> = stable.map(|s| s.config.id.clone()).into_iter().collect();
        covering.extend(self.covering_ids(target.config().and_then(|c| c.config.created_time_utc)));
        let condition = match plan::any_configuration(&covering) {
            Some(covered) => new_devices.and_not(&covered)?,
            None => new_devices,
        };
        if condition.text().len() > MAX_QUERY_LEN {
            let msg = format!(
                "cannot check the baseline for ring {}: the query over {} candidate configurations is longer than {MAX_QUERY_LEN} characters",
                self.ring_names[next],
                covering.len()
            );
            self.stalled = Some(("BaselineUnchecked".into(), msg.clone()));
            self.message = msg;
            return Some(Step::Wait(HUMAN_POLL));
        }
        let uncovered = match self.count(
            format!("baseline:{}:{next}", self.plan.revision),
            &condition,
        ) {
            Ok(n) => n,
            Err(wait) => return Some(Step::Wait(wait)),
        };
        if uncovered == 0 {
            return None;
        }
        let msg = format!(
            "{uncovered} devices of ring {} are not covered by a lower-priority configuration: a rollback would strip their settings instead of restoring them",
            self.ring_names[next]
        );
        if self.ro.spec.baseline == BaselinePolicy::Warn {
            self.history("BaselineWarning", Some(next), None, msg);
            return None;
        }
        if self.ring_state() != Some(RingState::WaitingForBaseline) || self.ring_index() != next {
            self.enter(next, RingState::WaitingForBaseline);
        }
        self.stalled = Some((
            "BaselineMissing".into(),
            format!("{msg}; add a baseline configuration, or promote to go on"),
        ));
        self.message = msg;
        // The cover may be on its way (a baseline applied together with the rollout
        // reaches the devices on the hub's next cycle): look again within seconds while
        // the wait is young. Once it has lasted COVER_WATCH, the cover is a person's job.
        let since = self.st.ring.as_ref().map_or(self.now, |r| r.since.0);
        let young = self.now < since.checked_add(COVER_WATCH).unwrap_or(since);
        Some(Step::Wait(if young { COVER_POLL } else { HUMAN_POLL }))
    }
}
