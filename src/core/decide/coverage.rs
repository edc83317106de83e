//! Which other configurations matter for this rollout's devices: those that *cover* them
//! (lower priority, the same paths: they take a device back when this rollout lets go of
//! it) and those that *shield* them (higher priority, the same paths: this rollout is
//! never applied where they are). The baseline guard, rollback and cleanup count against
//! the first; judging a ring counts the second as settled.

use super::run::Run;
use crate::core::plan::{self, Cond};
use crate::core::revision::belongs_to;
use crate::iothub::configuration::{Configuration, MAX_QUERY_LEN};
use jiff::Timestamp;

impl<'a> Run<'a> {
    /// Configurations that would take a device back if this rollout let go of it: other
    /// owners' configurations of lower priority (or equal priority and created before
    /// `created`) that write one of the same paths.
    pub(super) fn covering_ids(&self, created: Option<Timestamp>) -> Vec<String> {
        self.obs
            .configurations
            .iter()
            .filter(|c| !belongs_to(c, &self.plan.namespace, &self.plan.name))
            .filter(|c| {
                c.priority < self.plan.priority
                    || (c.priority == self.plan.priority
                        && match (c.created_time_utc, created) {
                            (Some(a), Some(b)) => a < b,
                            _ => true,
                        })
            })
            .filter(|c| self.writes_our_paths(c))
            .map(|c| c.id.clone())
            .collect()
    }

    /// Configurations that win over `ours` where both target a device: other owners'
    /// configurations of higher priority (or equal priority and created later) that write
    /// one of the same paths.
    pub(super) fn shielding_ids(&self, ours: &Configuration) -> Vec<String> {
        self.obs
            .configurations
            .iter()
            .filter(|c| !belongs_to(c, &self.plan.namespace, &self.plan.name))
            .filter(|c| {
                c.priority > ours.priority
                    || (c.priority == ours.priority
                        && match (c.created_time_utc, ours.created_time_utc) {
                            (Some(a), Some(b)) => a > b,
                            _ => false,
                        })
            })
            .filter(|c| self.writes_our_paths(c))
            .map(|c| c.id.clone())
            .collect()
    }

    /// True when `c` writes a twin path the rollout's content writes too.
    pub(super) fn writes_our_paths(&self, c: &Configuration) -> bool {
        let ours = || {
            self.plan
                .content
                .device_content
                .iter()
                .flat_map(|m| m.keys())
        };
        c.content
            .device_content
            .iter()
            .flat_map(|m| m.keys())
            .any(|p| ours().any(|q| paths_overlap(p, q)))
    }
}

/// Devices `id` targets but is not applied to because one of `shielding` is applied there;
/// `None` when there is nothing to count (no such configuration, or too long a query).
pub(super) fn shielded_condition(id: &str, shielding: &[String]) -> Option<Cond> {
    let winners = plan::applied_any(shielding)?;
    let cond = Cond::Expr(format!("configurations.[[{id}]].status='Targeted'")).and(&winners);
    (cond.text().len() <= MAX_QUERY_LEN).then_some(cond)
}

/// True when two content paths touch the same twin property (equal, or one inside the other).
pub fn paths_overlap(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}."))
}
