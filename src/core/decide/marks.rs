//! Marks: what a restart needs that the hub's labels do not say by themselves (when the
//! ring was targeted, applied and passed, an approval, a pause, the last request applied)
//! is written onto the current revision's configuration. When the status is lost, the
//! marks give it back, so a rollout goes on with the same bake times and deadlines, stays
//! paused, and applies no request twice (`docs/rollouts.md`, "Restarts and a lost status").

use super::run::{Ours, Run, numbers};
use super::*;
use crate::core::revision::{ConfigLabels, ConfigState, Marks, label_value};
use crate::core::status;
use crate::resources::{DeviceRolloutStatus, PauseState, RingState, Verdict};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

impl<'a> Run<'a> {
    /// Takes back from the current revision's marks what the status does not know: the
    /// last request applied, a pause, and (for a rolling revision) where its ring is.
    pub(super) fn restore(&mut self, c: Ours<'a>) {
        let marks = c.marks();
        let known = |st: &DeviceRolloutStatus, id: &str| {
            st.handled_operations.iter().any(|h| label_value(h) == id)
        };
        // A pause the status has no record of at all: the status was lost, not resumed.
        if let Some(p) = &marks.paused
            && self.st.paused.is_none()
            && !known(&self.st, p)
        {
            let since = c
                .config
                .last_updated_time_utc
                .unwrap_or(self.now)
                .min(self.now);
            self.st.paused = Some(PauseState {
                since: Time(since),
                operation: p.clone(),
            });
        }
        if let Some(op) = &marks.operation
            && !known(&self.st, op)
        {
            status::mark_handled(&mut self.st, op);
        }
        if c.state == ConfigState::Rolling {
            self.rebuild(c, &marks);
        }
    }

    /// Where a rolling revision is, from its labels, when the status says otherwise (it
    /// was lost, or belongs to another revision). The ring its target includes, since
    /// when it was targeted, applied and passed, and an approval of the next ring: the
    /// rollout goes on from there, with the same deadlines and bake times.
    pub(super) fn rebuild(&mut self, c: Ours<'a>, marks: &Marks) {
        let k = c.ring.min(self.plan.last_ring());
        let consistent = match &self.st.ring {
            Some(r) if r.index as usize == k => matches!(
                r.state,
                RingState::Applying
                    | RingState::Baking
                    | RingState::Analyzing
                    | RingState::Passed
                    | RingState::Failed
            ),
            Some(r) if r.index as usize == k + 1 => {
                matches!(
                    r.state,
                    RingState::WaitingForBaseline | RingState::AwaitingApproval
                )
            }
            _ => false,
        };
        if consistent {
            return;
        }
        // Configurations written before marks existed: the last update is when the ring
        // was targeted.
        let started = marks
            .started
            .or(c.config.last_updated_time_utc)
            .or(c.config.created_time_utc)
            .unwrap_or(self.now)
            .min(self.now);
        let rec = self.record(k);
        rec.started_at = Some(Time(started));
        rec.applied_at = marks.applied.map(Time);
        if let Some(p) = marks.passed {
            rec.passed_at = Some(Time(p));
            rec.verdict = Some(Verdict::Pass);
            rec.message = Some("passed (restored from the configuration's labels)".into());
        }
        if let Some(a) = marks.approved
            && k < self.plan.last_ring()
        {
            self.record(k + 1).approved_at = Some(Time(a));
        }
        let (index, state, since) = match (marks.passed, marks.applied) {
            (Some(p), _) if k < self.plan.last_ring() => (k + 1, RingState::WaitingForBaseline, p),
            (Some(p), _) => (k, RingState::Passed, p),
            (None, Some(a)) => (k, RingState::Baking, a),
            (None, None) => (k, RingState::Applying, started),
        };
        self.set_ring(index, state);
        if let Some(r) = self.st.ring.as_mut() {
            r.since = Time(since.min(self.now));
            r.applied_at = if index == k {
                marks.applied.map(Time)
            } else {
                None
            };
        }
        self.history(
            "Restored",
            Some(index),
            Some(&numbers(c.config)),
            format!(
                "status rebuilt from the labels of configuration {}: ring {} {state:?}",
                c.config.id, self.ring_names[index]
            ),
        );
    }

    /// Writes the marks the status calls for onto the current revision's configuration:
    /// into the create or update this decision already makes, or as an update of its own.
    pub(super) fn sync_marks(&mut self, cur: Option<Ours<'a>>) {
        let id = self.plan.id.clone();
        let pending = self
            .actions
            .iter()
            .filter_map(Action::written)
            .find(|c| c.id == id);
        let config = match (pending, cur) {
            (Some(c), _) => c.clone(),
            (None, Some(c)) => c.config.clone(),
            (None, None) => return,
        };
        let pending = pending.is_some();
        let Some(l) = ConfigLabels::read(&config) else {
            return;
        };
        let want = self.marks_for(&l).write(&config.labels);
        if want == config.labels {
            return;
        }
        if pending {
            if let Some(c) = self
                .actions
                .iter_mut()
                .filter_map(Action::written_mut)
                .find(|c| c.id == id)
            {
                c.labels = want;
            }
            return;
        }
        // Marks are for a restart; a spent budget only delays them.
        if let Some(c) = cur
            && self.take_write()
        {
            let mut config = config;
            config.labels = want;
            self.actions.push(Action::Update {
                config,
                etag: c.config.etag.clone(),
            });
            self.marks_write = true;
        }
    }

    /// The marks a configuration with labels `l` should carry, from the status.
    pub(super) fn marks_for(&self, l: &ConfigLabels) -> Marks {
        let operation = self.st.handled_operations.last().cloned();
        let paused = self.st.paused.as_ref().map(|p| p.operation.clone());
        match l.state {
            ConfigState::Stable => Marks::default(),
            ConfigState::Held => Marks {
                paused,
                operation,
                ..Default::default()
            },
            ConfigState::Rolling => {
                let rec = self.st.rings.get(l.ring);
                let passed = rec
                    .filter(|r| r.verdict == Some(Verdict::Pass))
                    .and_then(|r| r.passed_at.clone());
                Marks {
                    started: rec.and_then(|r| r.started_at.clone()).map(|t| t.0),
                    applied: rec.and_then(|r| r.applied_at.clone()).map(|t| t.0),
                    passed: passed.map(|t| t.0),
                    approved: self
                        .st
                        .rings
                        .get(l.ring + 1)
                        .and_then(|r| r.approved_at.clone())
                        .map(|t| t.0),
                    paused,
                    operation,
                }
            }
        }
    }
}
