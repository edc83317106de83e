//! The ring machine: a revision starts at ring 0, and each ring passes through
//! `WaitingForBaseline` (the guard and approvals), `Applying`, `Baking`, `Analyzing` and
//! `Passed` before the next is targeted; after the last ring the revision becomes stable
//! (`docs/rollouts.md`, "Rings and widening"). One decision walks as many states as it
//! can without waiting for the hub, a person or the time.

use super::run::{Numbers, Ours, Run, Step, numbers};
use super::*;
use crate::core::revision::ConfigState;
use crate::resources::{RingRecord, RingState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// How many ring states one decision walks at most before it looks again. The longest walk
/// that waits for nothing is a failed ring retried when its numbers are in and its bake
/// time is zero: `Failed`, `Applying`, `Baking`, `Analyzing`, `Passed`, then
/// `WaitingForBaseline` of the next ring, which targets it and waits for the hub: six
/// states. The bound only ends a walk that a defect would make endless; reaching it looks
/// again after [`MIN_REQUEUE`].
const MAX_STATES_PER_DECISION: usize = 8;

/// What targeting the next ring writes.
#[derive(Clone, Copy)]
pub(super) enum Target<'a> {
    /// The revision has no configuration yet: targeting creates it. `configs`: how many
    /// the hub holds once this decision's deletes are done (the quota check).
    Create { configs: usize },
    /// The revision's configuration, whose target includes ring `hub_ring` now (`None`:
    /// it reaches no device, as a held revision that is retried): targeting widens it.
    Widen {
        config: Ours<'a>,
        hub_ring: Option<usize>,
    },
}

impl<'a> Target<'a> {
    /// The revision's configuration, when it has one.
    pub(super) fn config(self) -> Option<Ours<'a>> {
        match self {
            Target::Create { .. } => None,
            Target::Widen { config, .. } => Some(config),
        }
    }

    /// The widest ring the revision's configuration reaches now.
    pub(super) fn hub_ring(self) -> Option<usize> {
        match self {
            Target::Create { .. } => None,
            Target::Widen { hub_ring, .. } => hub_ring,
        }
    }
}

impl<'a> Run<'a> {
    /// A revision without a configuration: held after a rollback (its configuration gone),
    /// aborted before anything was written, or waiting to target ring 0. `configs`: how
    /// many configurations the hub holds once this decision's deletes are done.
    pub(super) fn start(&mut self, stable: Option<Ours<'a>>, configs: usize) {
        if self.st.held_revision.as_deref() == Some(self.plan.revision.as_str())
            && !self.requests.retry
        {
            if self.ring_state() != Some(RingState::RolledBack) {
                self.set_ring(self.ring_index(), RingState::RolledBack);
            }
            self.message = format!(
                "revision {} is held after a rollback; its configuration is gone",
                self.plan.revision
            );
            self.wait(IDLE_POLL);
            return;
        }
        if self.requests.retry {
            self.st.held_revision = None;
        }
        let keep = matches!(
            &self.st.ring,
            Some(r) if r.index == 0 && matches!(r.state, RingState::WaitingForBaseline | RingState::AwaitingApproval)
        );
        if !keep {
            self.set_ring(0, RingState::WaitingForBaseline);
        }
        if self.requests.abort {
            self.st.held_revision = Some(self.plan.revision.clone());
            self.set_ring(0, RingState::RolledBack);
            self.history(
                "Abort",
                Some(0),
                None,
                "aborted by operator before ring 0 was targeted".into(),
            );
            self.message = "aborted before anything was written to the hub".into();
            self.wait(IDLE_POLL);
            return;
        }
        // Ring 0 waits for its approval, then for its guard; targeting it creates the
        // configuration, and the ring machine takes over from the next decision.
        let mut promote = std::mem::take(&mut self.requests.promote);
        if self.ring_state() == Some(RingState::AwaitingApproval) {
            if !std::mem::take(&mut promote) {
                self.message = format!(
                    "ring {} waits for an operator's promote",
                    self.ring_names[0]
                );
                self.wait(HUMAN_POLL);
                return;
            }
            // Approved; the guard runs again before targeting: coverage may have changed
            // while the ring waited.
            self.approve(0);
            self.enter(0, RingState::WaitingForBaseline);
        }
        if let Step::Wait(d) = self.guard(Target::Create { configs }, 0, stable, &mut promote) {
            self.wait(d);
        }
    }

    /// A revision whose configuration is rolling through the rings.
    pub(super) fn progress(&mut self, c: Ours<'a>, stable: Option<Ours<'a>>) {
        // `restore` made the status agree with the labels.
        let k = c.ring.min(self.plan.last_ring());
        // A spec change to targets, priority or metrics: bring the configuration in line.
        if !self
            .plan
            .matches(c.config, c.revision, k, ConfigState::Rolling)
            && self.take_write()
        {
            let config = self
                .plan
                .retarget(c.config, c.revision, k, ConfigState::Rolling);
            if !self.healing.contains(&c.config.id) {
                self.history(
                    "Retarget",
                    Some(k),
                    Some(&numbers(c.config)),
                    "the spec changed: configuration updated".into(),
                );
            }
            self.actions.push(Action::Update {
                config,
                etag: c.config.etag.clone(),
            });
        }
        self.machine(c, Some(k), stable);
    }

    /// Runs the ring machine on the revision's configuration `c` until it has to wait.
    /// `hub_ring`: the ring `c`'s target includes now (`None`: it reaches no device, as a
    /// held revision that is retried).
    pub(super) fn machine(
        &mut self,
        c: Ours<'a>,
        hub_ring: Option<usize>,
        stable: Option<Ours<'a>>,
    ) {
        let n = numbers(c.config);
        let target = Target::Widen {
            config: c,
            hub_ring,
        };
        let mut promote = std::mem::take(&mut self.requests.promote);
        for _ in 0..MAX_STATES_PER_DECISION {
            let state = self.ring_state().unwrap_or(RingState::WaitingForBaseline);
            let i = self.ring_index();
            if matches!(
                state,
                RingState::Applying | RingState::Baking | RingState::Analyzing | RingState::Failed
            ) {
                self.observe_numbers(i, &n);
            }
            // An abort rolls back whatever the ring is doing, once the revision reaches devices.
            if self.requests.abort && hub_ring.is_some() {
                self.requests.abort = false;
                self.history("Abort", Some(i), Some(&n), "aborted by operator".into());
                let step = self.rollback(c, "aborted by operator".into());
                if let Step::Wait(d) = step {
                    self.wait(d);
                }
                return;
            }
            let step = match state {
                RingState::WaitingForBaseline => self.guard(target, i, stable, &mut promote),
                RingState::AwaitingApproval => {
                    if std::mem::take(&mut promote) {
                        // Approved; the guard runs again before widening: coverage may have
                        // changed while the ring waited.
                        self.approve(i);
                        self.enter(i, RingState::WaitingForBaseline);
                        Step::Continue
                    } else {
                        self.message = format!(
                            "ring {} waits for an operator's promote",
                            self.ring_names[i]
                        );
                        Step::Wait(HUMAN_POLL)
                    }
                }
                RingState::Applying => self.applying(c, i, &n, std::mem::take(&mut promote)),
                // A promote skips the rest of the bake and is taken by the gate's judgement.
                RingState::Baking => self.baking(i, promote),
                RingState::Analyzing => self.analyze(c, i, &n, std::mem::take(&mut promote)),
                RingState::Passed => self.passed(c, i, &n, stable),
                RingState::Failed => self.failed(i, &n, std::mem::take(&mut promote)),
                // The configuration is not held yet (the rollback write did not happen).
                RingState::RollingBack | RingState::RolledBack => {
                    self.rollback(c, "finishing an interrupted rollback".into())
                }
            };
            match step {
                Step::Continue => continue,
                Step::Wait(d) => {
                    self.wait(d);
                    return;
                }
            }
        }
        self.wait(MIN_REQUEUE);
    }

    /// Records an operator's approval of ring `i`.
    pub(super) fn approve(&mut self, i: usize) {
        self.history("Approve", Some(i), None, "approved by operator".into());
        let now = Time(self.now);
        self.record(i).approved_at = Some(now);
    }

    /// Targets ring `next`: creates the configuration, or widens its target.
    pub(super) fn widen(&mut self, target: Target<'a>, next: usize) -> Step {
        if let Some(p) = &self.st.paused {
            self.message = format!(
                "paused by operator ({}): ring {} is not targeted until resume",
                p.operation, self.ring_names[next]
            );
            return Step::Wait(HUMAN_POLL);
        }
        match target {
            Target::Create { configs } => {
                if configs >= self.obs.max_configurations {
                    let msg = format!(
                        "the hub holds {configs} configurations, its quota is {}: cannot create {}",
                        self.obs.max_configurations, self.plan.id
                    );
                    self.stalled = Some(("ConfigurationQuota".into(), msg.clone()));
                    self.message = msg;
                    return Step::Wait(HUMAN_POLL);
                }
                if !self.take_write() {
                    return self.budget_wait("configuration-write");
                }
                let config = self.plan.new_configuration(next, ConfigState::Rolling);
                self.history(
                    "Create",
                    Some(next),
                    None,
                    format!(
                        "configuration {} created for ring {}",
                        self.plan.id, self.ring_names[next]
                    ),
                );
                self.actions.push(Action::Create(config));
            }
            Target::Widen { config: c, .. } => {
                if !self.take_write() {
                    return self.budget_wait("configuration-write");
                }
                // Drop an earlier drift update of the same configuration: this one supersedes it.
                self.actions.retain(
                    |a| !matches!(a, Action::Update { config, .. } if config.id == c.config.id),
                );
                let config = self
                    .plan
                    .retarget(c.config, c.revision, next, ConfigState::Rolling);
                self.history(
                    "Widen",
                    Some(next),
                    Some(&numbers(c.config)),
                    format!(
                        "target widened to ring {}: {}",
                        self.ring_names[next], config.target_condition
                    ),
                );
                self.actions.push(Action::Update {
                    config,
                    etag: c.config.etag.clone(),
                });
            }
        }
        self.set_ring(next, RingState::Applying);
        let now = Time(self.now);
        let rec = self.record(next);
        *rec = RingRecord {
            name: rec.name.clone(),
            started_at: Some(now),
            approved_at: rec.approved_at.clone(),
            ..Default::default()
        };
        self.message = format!("ring {} targeted", self.ring_names[next]);
        self.wait_applying(AFTER_WRITE)
    }

    /// Ring `i` passed: the next ring waits for its guard, or, after the last ring, the
    /// revision becomes stable and the previous stable revision goes.
    fn passed(&mut self, c: Ours<'a>, i: usize, n: &Numbers, stable: Option<Ours<'a>>) -> Step {
        if i < self.plan.last_ring() {
            self.enter(i + 1, RingState::WaitingForBaseline);
            if let Some(r) = self.st.ring.as_mut() {
                r.index = (i + 1) as u32;
                r.name = self.ring_names[i + 1].clone();
            }
            return Step::Continue;
        }
        // The last ring passed: the revision becomes stable, the previous one goes.
        if let Some(p) = &self.st.paused {
            self.message = format!(
                "paused by operator ({}): the revision is not made stable until resume",
                p.operation
            );
            return Step::Wait(HUMAN_POLL);
        }
        if !self.take_write() {
            return self.budget_wait("configuration-write");
        }
        self.actions
            .retain(|a| !matches!(a, Action::Update { config, .. } if config.id == c.config.id));
        let config = self
            .plan
            .retarget(c.config, c.revision, i, ConfigState::Stable);
        self.actions.push(Action::Update {
            config,
            etag: c.config.etag.clone(),
        });
        self.st.stable_revision = Some(self.plan.revision.clone());
        self.history(
            "Complete",
            Some(i),
            Some(n),
            format!(
                "revision {} passed every ring and is stable",
                self.plan.revision
            ),
        );
        if let Some(s) = stable
            && self.take_write()
        {
            self.history(
                "Delete",
                None,
                Some(&numbers(s.config)),
                format!(
                    "previous stable revision {}: deleting configuration {}",
                    s.revision, s.config.id
                ),
            );
            self.actions.push(Action::Delete {
                id: s.config.id.clone(),
            });
        }
        self.message = format!("revision {} is stable on every ring", self.plan.revision);
        Step::Wait(AFTER_WRITE)
    }
}
