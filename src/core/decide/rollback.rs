//! Rollback: a failed (or aborted) revision is narrowed to no device and held, and the
//! rollback counts as confirmed when the hub says the held configuration reaches no
//! device and every device it reached has its settings from another configuration
//! again; after [`ROLLBACK_GRACE`](super::ROLLBACK_GRACE) the ones that did not are
//! reported (`docs/rollouts.md`, "Rollback").

use super::run::{Numbers, Ours, Run, Step, numbers};
use super::*;
use crate::core::gate::EffectiveGate;
use crate::core::plan;
use crate::core::revision::ConfigState;
use crate::iothub::configuration::MAX_QUERY_LEN;
use crate::resources::RingState;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

impl<'a> Run<'a> {
    pub(super) fn held(&mut self, c: Ours<'a>, stable: Option<Ours<'a>>) {
        let n = numbers(c.config);
        if self.requests.retry {
            self.history(
                "Retry",
                Some(0),
                Some(&n),
                "operator asked to retry the rolled-back revision from ring 0".into(),
            );
            self.st.held_revision = None;
            self.st.rings.clear();
            self.set_ring(0, RingState::WaitingForBaseline);
            self.machine(c, None, stable);
            return;
        }
        if !self
            .plan
            .matches(c.config, c.revision, c.ring, ConfigState::Held)
            && self.take_write()
        {
            let config = self
                .plan
                .retarget(c.config, c.revision, c.ring, ConfigState::Held);
            self.actions.push(Action::Update {
                config,
                etag: c.config.etag.clone(),
            });
        }
        self.st.held_revision = Some(self.plan.revision.clone());
        let ring = c.ring.min(self.plan.last_ring());
        let rolled_back = self.ring_state() == Some(RingState::RolledBack);
        if !rolled_back && self.ring_state() != Some(RingState::RollingBack) {
            // Rebuilt from the labels: the rollback was the configuration's last update.
            let since = c
                .config
                .last_updated_time_utc
                .unwrap_or(self.now)
                .min(self.now);
            self.set_ring(ring, RingState::RollingBack);
            if let Some(r) = self.st.ring.as_mut() {
                r.since = Time(since);
            }
        }
        if !rolled_back {
            self.observe_numbers(ring, &n);
        }
        // The hub confirms in two steps: the held configuration reaches no device, and
        // every device the revision reached has its settings from another configuration
        // again (the stable revision, a baseline, or one of higher priority).
        let gone = n.targeted == Some(0) && n.applied == Some(0);
        if !gone {
            self.message = format!(
                "rolling back: waiting for the hub to confirm (held configuration targeted {:?}, applied {:?})",
                n.targeted, n.applied
            );
            self.wait(super::judging::poll(
                APPLY_POLL,
                &EffectiveGate::for_ring(&self.ro.spec, ring),
            ));
            return;
        }
        let uncovered = match self.rollback_uncovered(c, ring) {
            Ok(u) => u,
            Err(wait) => {
                self.wait(wait);
                return;
            }
        };
        let reached = format!("rings {}..{}", self.ring_names[0], self.ring_names[ring]);
        let from = match stable {
            Some(s) => format!("stable revision {} or another configuration", s.revision),
            None => "a baseline or another configuration".to_string(),
        };
        match uncovered {
            Some(0) | None => {
                let checked = if uncovered.is_none() {
                    " (not counted: the query over every other configuration is too long)"
                } else {
                    ""
                };
                let msg = format!(
                    "rolled back: revision {} reaches no device; every device of {reached} has its settings from {from}{checked}",
                    self.plan.revision
                );
                if rolled_back {
                    self.message = format!(
                        "revision {} was rolled back and is held",
                        self.plan.revision
                    );
                } else {
                    self.rolled_back(ring, &n, msg.clone());
                    self.message = msg;
                }
                self.wait(IDLE_POLL);
            }
            Some(u) => {
                let since = self.st.ring.as_ref().map_or(self.now, |r| r.since.0);
                if !rolled_back && self.now < since.checked_add(ROLLBACK_GRACE).unwrap_or(since) {
                    self.message = format!(
                        "rolling back: waiting for the hub to give {u} devices of {reached} their settings from {from}"
                    );
                    self.wait(super::judging::poll(
                        APPLY_POLL,
                        &EffectiveGate::for_ring(&self.ro.spec, ring),
                    ));
                    return;
                }
                let msg = format!(
                    "{u} devices that revision {} reached have no other configuration writing its settings: the rollback removed their settings instead of restoring them; add a baseline configuration",
                    self.plan.revision
                );
                if !rolled_back {
                    self.rolled_back(ring, &n, msg.clone());
                }
                self.stalled = Some(("RollbackIncomplete".into(), msg.clone()));
                self.message = msg;
                self.wait(IDLE_POLL);
            }
        }
    }

    pub(super) fn rolled_back(&mut self, ring: usize, n: &Numbers, msg: String) {
        if let Some(r) = self.st.ring.as_mut() {
            r.state = RingState::RolledBack;
            r.since = Time(self.now);
        }
        self.history("RolledBack", Some(ring), Some(n), msg);
    }

    /// Devices that the held configuration `c` reached (rings 0..=`ring`) and that no
    /// other configuration writing one of its paths is applied to: `None` when the query
    /// would be too long to ask.
    pub(super) fn rollback_uncovered(
        &mut self,
        c: Ours<'a>,
        ring: usize,
    ) -> Result<Option<u64>, SignedDuration> {
        let others: Vec<String> = self
            .obs
            .configurations
            .iter()
            .filter(|o| o.id != c.config.id && self.writes_our_paths(o))
            .map(|o| o.id.clone())
            .collect();
        let reach = self.plan.target(ring);
        let condition = match plan::applied_any(&others) {
            Some(covered) => match reach.and_not(&covered) {
                Some(cond) => cond,
                None => return Ok(Some(0)),
            },
            None => reach,
        };
        if condition.text().len() > MAX_QUERY_LEN {
            return Ok(None);
        }
        self.count(format!("rollback:{}", self.plan.revision), &condition)
            .map(Some)
    }

    /// Narrows the revision to no device: the configuration stays, held, so the hub
    /// reports when every device it reached has its settings from another configuration.
    pub(super) fn rollback(&mut self, c: Ours<'a>, reason: String) -> Step {
        if !self.take_write() {
            return self.budget_wait("configuration-write");
        }
        self.actions
            .retain(|a| !matches!(a, Action::Update { config, .. } if config.id == c.config.id));
        let ring = c.ring.min(self.plan.last_ring());
        let config = self
            .plan
            .retarget(c.config, c.revision, ring, ConfigState::Held);
        self.actions.push(Action::Update {
            config,
            etag: c.config.etag.clone(),
        });
        self.st.held_revision = Some(self.plan.revision.clone());
        self.history(
            "Rollback",
            Some(ring),
            Some(&numbers(c.config)),
            format!(
                "{reason}: narrowing revision {} to no device",
                self.plan.revision
            ),
        );
        self.enter(ring, RingState::RollingBack);
        if let Some(r) = self.st.ring.as_mut() {
            r.index = ring as u32;
            r.name = self.ring_names[ring].clone();
        }
        self.message = format!("rolling back: {reason}");
        Step::Wait(AFTER_WRITE)
    }
}
