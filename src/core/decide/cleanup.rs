//! Deleting a rollout: its configurations go only when every device they are applied to
//! has a lower-priority configuration to fall back on (or deletion is forced), so that
//! deleting a rollout never strips settings from a fleet (`docs/rollouts.md`, "Deleting
//! a rollout").

use super::run::{Ours, Run};
use super::*;
use crate::core::plan;

impl<'a> Run<'a> {
    pub(super) fn cleanup(&mut self, ours: &[Ours<'a>], deletion: Deletion) {
        if ours.is_empty() {
            self.finalized = true;
            self.message = "every configuration of the rollout is deleted".into();
            self.wait(IDLE_POLL);
            return;
        }
        let our_ids: Vec<String> = ours.iter().map(|o| o.config.id.clone()).collect();
        let oldest = ours.iter().filter_map(|o| o.config.created_time_utc).min();
        let covering = self.covering_ids(oldest);
        let applied = plan::applied_any(&our_ids).expect("ours is not empty");
        let condition = match plan::any_configuration(&covering) {
            Some(cov) => applied.and_not(&cov).expect("a predicate"),
            None => applied,
        };
        let uncovered = if deletion.force {
            0
        } else {
            match self.count("cleanup".to_string(), &condition) {
                Ok(n) => n,
                Err(wait) => {
                    self.wait(wait);
                    return;
                }
            }
        };
        if uncovered > 0 {
            let msg = format!(
                "{uncovered} devices would lose this rollout's settings: no lower-priority configuration covers them. \
                 Add a baseline configuration, or set the annotation ringmaster.dev/force-delete=true to delete anyway"
            );
            self.stalled = Some(("CleanupBlocked".into(), msg.clone()));
            self.message = msg;
            self.wait(HUMAN_POLL);
            return;
        }
        for o in ours {
            if !self.take_write() {
                self.wait(self.obs.budget.refill);
                break;
            }
            self.actions.push(Action::Delete {
                id: o.config.id.clone(),
            });
        }
        self.history(
            "Cleanup",
            None,
            None,
            format!(
                "rollout deleted{}: deleting {}",
                if deletion.force { " (forced)" } else { "" },
                our_ids.join(", ")
            ),
        );
        self.message = "deleting the rollout's configurations".into();
        self.wait(AFTER_WRITE);
    }
}
