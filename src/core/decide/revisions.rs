//! Revisions on the hub: a new revision starts its ring record afresh; only the current
//! revision and the stable one beneath it keep a configuration (superseded, replaced held
//! and older stable revisions are deleted); a stable configuration follows spec changes;
//! and a current revision that is stable is healthy (`docs/rollouts.md`, "Revisions and
//! configurations").

use super::run::{Ours, Run, numbers};
use super::*;
use crate::core::revision::ConfigState;
use crate::resources::RingState;

impl<'a> Run<'a> {
    /// A new revision (the content changed) starts with no ring and no records; a held
    /// revision stays held only while it is the current one.
    pub(super) fn new_revision_bookkeeping(&mut self) {
        let rev = self.plan.revision.clone();
        if self.st.revision.as_deref() != Some(rev.as_str()) {
            if let Some(old) = self.st.revision.clone() {
                self.history(
                    "NewRevision",
                    None,
                    None,
                    format!("content changed: revision {old} -> {rev}"),
                );
            }
            self.st.ring = None;
            self.st.rings.clear();
            if self.st.held_revision.as_deref() != Some(rev.as_str()) {
                self.st.held_revision = None;
            }
        }
        self.st.revision = Some(rev);
        self.st.configuration_id = Some(self.plan.id.clone());
    }

    /// Which of this rollout's configurations stay: the current revision's and the stable
    /// one beneath it (the newest stable configuration of another revision, while the
    /// current one is not stable itself). Everything else goes: superseded unfinished
    /// revisions, held revisions once new content arrived, older stable revisions. The
    /// stable configuration kept follows spec changes to target, rings, priority and
    /// metrics. Returns the stable configuration kept.
    pub(super) fn keep_current_and_stable(
        &mut self,
        ours: &[Ours<'a>],
        cur: Option<Ours<'a>>,
    ) -> Option<Ours<'a>> {
        let stable = ours
            .iter()
            .copied()
            .filter(|o| o.state == ConfigState::Stable && o.revision != self.plan.revision)
            .max_by_key(|o| (o.config.created_time_utc, o.config.id.clone()));
        let cur_is_stable = cur.is_some_and(|c| c.state == ConfigState::Stable);
        self.st.stable_revision = if cur_is_stable {
            Some(self.plan.revision.clone())
        } else {
            stable.map(|s| s.revision.to_string())
        };
        let keep_stable = if cur_is_stable { None } else { stable };
        for o in ours {
            let keep = cur.is_some_and(|c| c.config.id == o.config.id)
                || keep_stable.is_some_and(|s| s.config.id == o.config.id);
            if keep {
                continue;
            }
            if !self.take_write() {
                self.wait(self.obs.budget.refill);
                break;
            }
            let why = match o.state {
                ConfigState::Rolling => format!(
                    "revision {} superseded by {}",
                    o.revision, self.plan.revision
                ),
                ConfigState::Held => format!(
                    "held revision {} replaced by {}",
                    o.revision, self.plan.revision
                ),
                ConfigState::Stable => format!(
                    "revision {} replaced by stable {}",
                    o.revision,
                    self.st.stable_revision.clone().unwrap_or_default()
                ),
            };
            self.history(
                "Delete",
                None,
                Some(&numbers(o.config)),
                format!("{why}: deleting configuration {}", o.config.id),
            );
            self.actions.push(Action::Delete {
                id: o.config.id.clone(),
            });
        }
        if let Some(s) = keep_stable
            && !self.plan.matches(
                s.config,
                s.revision,
                self.plan.last_ring(),
                ConfigState::Stable,
            )
            && self.take_write()
        {
            let config = self.plan.retarget(
                s.config,
                s.revision,
                self.plan.last_ring(),
                ConfigState::Stable,
            );
            self.actions.push(Action::Update {
                config,
                etag: s.config.etag.clone(),
            });
        }
        keep_stable
    }

    /// The current revision is stable on every ring: keep its configuration in line with
    /// the spec, record its numbers, and check for drift now and then.
    pub(super) fn healthy(&mut self, c: Ours<'a>) {
        let last = self.plan.last_ring();
        if !self
            .plan
            .matches(c.config, c.revision, last, ConfigState::Stable)
            && self.take_write()
        {
            let config = self
                .plan
                .retarget(c.config, c.revision, last, ConfigState::Stable);
            self.actions.push(Action::Update {
                config,
                etag: c.config.etag.clone(),
            });
        }
        let n = numbers(c.config);
        if self
            .st
            .ring
            .as_ref()
            .is_none_or(|r| r.state != RingState::Passed || r.index as usize != last)
        {
            self.set_ring(last, RingState::Passed);
        }
        self.observe_numbers(last, &n);
        self.st.held_revision = None;
        if self.requests.promote || self.requests.abort || self.requests.retry {
            self.history(
                "IgnoredOperation",
                Some(last),
                Some(&n),
                "the revision is already stable".into(),
            );
        }
        self.message = format!("revision {} is stable on every ring", self.plan.revision);
        self.wait(IDLE_POLL);
    }
}
