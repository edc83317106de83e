//! The end of a decision: the phase and the conditions the status shows (`Ready`,
//! `Reconciling`, `Stalled`), and when to look again. A decision that asks for counts
//! writes nothing yet; one that wrote something looks again soon to see the hub's answer.

use super::run::Run;
use super::*;
use crate::core::status::{self, READY, RECONCILING, STALLED, THROTTLED};
use crate::resources::{Phase, RingState};

impl<'a> Run<'a> {
    pub(super) fn finish(mut self) -> Decision {
        let g = self.generation();
        let now = self.now;
        if !self.counts_needed.is_empty() {
            // Counts first; nothing is written until the decision is made with them.
            self.actions.clear();
        }
        let state = self.ring_state();
        let blocked = self
            .stalled
            .as_ref()
            .is_some_and(|(r, _)| r == "CleanupBlocked");
        let phase = if self.obs.deletion.is_some() && blocked {
            // Not the phase it had: the deletion waits for a person (docs/rollouts.md,
            // "Deleting a rollout").
            Phase::Failed
        } else if self.obs.deletion.is_some() {
            self.st.phase.unwrap_or(Phase::Progressing)
        } else if self.ro.spec.suspend {
            Phase::Paused
        } else {
            match state {
                Some(RingState::RolledBack) => Phase::RolledBack,
                Some(RingState::Failed) => Phase::Failed,
                _ if self.st.stable_revision.as_deref() == Some(self.plan.revision.as_str()) => {
                    Phase::Healthy
                }
                Some(RingState::AwaitingApproval) => Phase::Paused,
                _ if self.st.paused.is_some() => Phase::Paused,
                Some(RingState::WaitingForBaseline)
                    if self.st.rings.iter().all(|r| r.started_at.is_none()) =>
                {
                    Phase::Pending
                }
                None => Phase::Pending,
                _ => Phase::Progressing,
            }
        };
        self.st.phase = Some(phase);
        if !self.message.is_empty() {
            self.st.message = Some(self.message.clone());
        }
        let message = self.st.message.clone().unwrap_or_default();
        match &self.throttled {
            Some(what) => {
                status::set_condition(&mut self.st, THROTTLED, true, "HubBudget", what, g, now)
            }
            None => status::clear_condition(&mut self.st, THROTTLED),
        }
        let reason = |s: Option<RingState>| s.map_or("Pending".to_string(), |s| format!("{s:?}"));
        match (&self.stalled, phase) {
            (Some((r, m)), _) => {
                status::set_condition(&mut self.st, STALLED, true, r, m, g, now);
                status::set_condition(&mut self.st, RECONCILING, false, r, &message, g, now);
                status::set_condition(&mut self.st, READY, false, r, &message, g, now);
            }
            (None, Phase::Healthy) => {
                status::set_condition(&mut self.st, STALLED, false, "Healthy", "", g, now);
                status::set_condition(&mut self.st, RECONCILING, false, "Healthy", "", g, now);
                status::set_condition(&mut self.st, READY, true, "Healthy", &message, g, now);
            }
            (None, Phase::RolledBack) => {
                status::set_condition(
                    &mut self.st,
                    STALLED,
                    true,
                    "RolledBack",
                    &format!("{message}; new content or retry starts it again"),
                    g,
                    now,
                );
                status::set_condition(
                    &mut self.st,
                    RECONCILING,
                    false,
                    "RolledBack",
                    &message,
                    g,
                    now,
                );
                status::set_condition(&mut self.st, READY, false, "RolledBack", &message, g, now);
            }
            (None, Phase::Paused) => {
                let r = if self.ro.spec.suspend {
                    "Suspended".to_string()
                } else {
                    reason(state)
                };
                let r = if self.st.paused.is_some() && !self.ro.spec.suspend {
                    "Paused".to_string()
                } else {
                    r
                };
                status::set_condition(&mut self.st, STALLED, false, &r, "", g, now);
                status::set_condition(&mut self.st, RECONCILING, false, &r, &message, g, now);
                status::set_condition(&mut self.st, READY, false, &r, &message, g, now);
            }
            (None, _) => {
                let r = reason(state);
                status::set_condition(&mut self.st, STALLED, false, &r, "", g, now);
                status::set_condition(&mut self.st, RECONCILING, true, &r, &message, g, now);
                status::set_condition(&mut self.st, READY, false, &r, &message, g, now);
            }
        }
        let requeue = if self.actions.len() > usize::from(self.marks_write) {
            self.requeue.unwrap_or(AFTER_WRITE).min(AFTER_WRITE)
        } else {
            self.requeue.unwrap_or(IDLE_POLL)
        };
        Decision {
            actions: self.actions,
            status: self.st,
            requeue_after: requeue.max(APPLYING_POLL),
            counts_needed: self.counts_needed,
            finalized: self.finalized,
            drift: self.drifts,
        }
    }
}
