//! Drift: the hub's configurations compared with what the rollout's state says they
//! should be (`docs/rollouts.md`, "Drift").
//!
//! Every decision (but a deletion's) compares the current revision's configuration, and
//! the stable one beneath it, with what the *status* says: which ring and state (the
//! labels are where a lost status is rebuilt from, so a label edited on the hub is checked
//! against the status, never trusted while the status knows better), and, while the spec
//! is the one last brought onto the hub (`status.appliedSpec`), the target condition,
//! priority and metrics the spec gives. (Content is immutable on IoT Hub.) What differs:
//! - `modified`: target condition, priority or metrics edited; `spec.drift: heal` puts
//!   them back (the ring machine's usual update), `report` changes nothing.
//! - `labels`: the ring, state or revision label edited (or removed): the status's ring
//!   and state win; healing rewrites the labels. A widened ring label never widens.
//! - `deleted`: the configuration is gone while the status says it targets ring *k*:
//!   healing recreates it at ring *k* (never wider), a ring that was baking goes back to
//!   `Applying`. The stable configuration of an older revision cannot be recreated (its
//!   content is not in the spec): reported only.
//! - `shadowed`: another owner's configuration of higher priority writes the same paths:
//!   reported with its numbers (the `Shadowed` condition), whatever `spec.drift` says.
//!
//! Each finding is new once: a history entry and [`Drift::new`] (the controllers count
//! it and publish an event); the `Drifted` condition stays True until the hub matches
//! again. In `report` mode (and while suspended) the rollout stalls with the difference.

use super::run::{Ours, Run};
use super::*;
use crate::core::revision::{ConfigLabels, ConfigState};
use crate::resources::{DriftPolicy, RingState};
use sha2::{Digest, Sha256};

/// Condition type: True while a configuration of the rollout differs from its state.
pub const DRIFTED: &str = "Drifted";
/// Condition type: True while another owner's higher-priority configuration writes the
/// rollout's paths.
pub const SHADOWED: &str = "Shadowed";

/// What kind of drift a finding is (the `kind` label of `ringmaster_drift_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriftKind {
    /// Target condition, priority or metrics edited.
    Modified,
    /// The ring, state or revision label edited or removed.
    Labels,
    /// The configuration deleted.
    Deleted,
    /// A higher-priority configuration of another owner writes the same paths.
    Shadowed,
}

impl DriftKind {
    /// The metric label: `modified`, `labels`, `deleted` or `shadowed`.
    pub fn label(self) -> &'static str {
        match self {
            DriftKind::Modified => "modified",
            DriftKind::Labels => "labels",
            DriftKind::Deleted => "deleted",
            DriftKind::Shadowed => "shadowed",
        }
    }
}

/// One difference between the hub and the rollout's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// What differs.
    pub kind: DriftKind,
    /// The configuration id.
    pub configuration: String,
    /// What differs, for people.
    pub message: String,
    /// Not reported by the previous status: count it and publish an event.
    pub new: bool,
    /// Put back by this decision (`spec.drift: heal`).
    pub healed: bool,
}

/// A hash of the spec fields the configurations follow: base target, ring names and
/// targets, priority and metrics.
pub fn spec_hash(ro: &DeviceRollout) -> String {
    let rings: Vec<(&str, &str)> = ro
        .spec
        .rings
        .iter()
        .map(|r| (r.name.as_str(), r.target.as_str()))
        .collect();
    let v = serde_json::json!([ro.spec.target, rings, ro.spec.priority, ro.spec.metrics]);
    hex::encode(Sha256::digest(v.to_string().as_bytes()))[..12].to_string()
}

/// Where the status says the current revision's configuration is: its state and ring;
/// `None` when the status expects no configuration (or knows nothing).
fn expected(
    st: &DeviceRolloutStatus,
    revision: &str,
    last_ring: usize,
) -> Option<(ConfigState, usize)> {
    if st.revision.as_deref() != Some(revision) {
        return None;
    }
    if st.stable_revision.as_deref() == Some(revision) {
        return Some((ConfigState::Stable, last_ring));
    }
    let r = st.ring.as_ref()?;
    let i = (r.index as usize).min(last_ring);
    match r.state {
        RingState::RollingBack | RingState::RolledBack => Some((ConfigState::Held, i)),
        _ if st.held_revision.as_deref() == Some(revision) => Some((ConfigState::Held, i)),
        RingState::Applying
        | RingState::Baking
        | RingState::Analyzing
        | RingState::Passed
        | RingState::Failed => Some((ConfigState::Rolling, i)),
        RingState::WaitingForBaseline | RingState::AwaitingApproval if i > 0 => {
            Some((ConfigState::Rolling, i - 1))
        }
        _ => None,
    }
}

/// The differences in the mutable fields between `have` and `want`.
fn differences(have: &Configuration, want: &Configuration) -> Vec<String> {
    let mut d = Vec::new();
    if have.target_condition != want.target_condition {
        d.push(format!(
            "targetCondition is \"{}\", should be \"{}\"",
            have.target_condition, want.target_condition
        ));
    }
    if have.priority != want.priority {
        d.push(format!(
            "priority is {}, should be {}",
            have.priority, want.priority
        ));
    }
    if have.metrics.queries != want.metrics.queries {
        d.push("metrics differ".to_string());
    }
    d
}

impl<'a> Run<'a> {
    /// Compares the hub with the status; returns this rollout's configurations as the
    /// rest of the decision should see them (ring and state from the status where the
    /// labels drifted), and whether the decision stops here (report mode, a recreate).
    pub(super) fn drift(&mut self, mut ours: Vec<Ours<'a>>) -> (Vec<Ours<'a>>, bool) {
        let plan = self.plan;
        let hash = spec_hash(self.ro);
        let same_spec = self.st.applied_spec.as_deref() == Some(hash.as_str());
        let last_ring = plan.last_ring();
        let want = expected(&self.st, &plan.revision, last_ring);
        let mut found: Vec<(Drift, Option<usize>)> = Vec::new();
        let mut recreate: Option<(ConfigState, usize)> = None;

        // The current revision's configuration, found by its id (derived, so it cannot
        // drift), whatever its labels say.
        let by_id = self.obs.configurations.iter().find(|c| c.id == plan.id);
        match by_id {
            Some(cfg) => {
                let labelled = ours.iter().find(|o| o.config.id == plan.id).copied();
                let seen = labelled
                    .filter(|o| o.revision == plan.revision)
                    .map(|o| (o.state, o.ring));
                let (state, ring) = match (want, seen) {
                    (Some((ConfigState::Held, _)), Some((ConfigState::Held, r))) => {
                        (ConfigState::Held, r)
                    }
                    (Some(w), _) => w,
                    (None, Some(s)) => s,
                    // Labels unreadable and nothing in the status: never wider than ring 0.
                    (None, None) => (ConfigState::Rolling, 0),
                };
                if seen != Some((state, ring)) {
                    let said = match ConfigLabels::read(cfg) {
                        Some(l) => format!(
                            "its labels say revision {} {} at ring {}",
                            l.revision,
                            l.state.label(),
                            l.ring
                        ),
                        None => "its ringmaster labels are missing".to_string(),
                    };
                    found.push((
                        Drift {
                            kind: DriftKind::Labels,
                            configuration: cfg.id.clone(),
                            message: format!(
                                "configuration {}: {said}, the rollout is {} at ring {}",
                                cfg.id,
                                state.label(),
                                self.ring_names.get(ring).cloned().unwrap_or_default()
                            ),
                            new: false,
                            healed: false,
                        },
                        Some(ring),
                    ));
                } else if same_spec {
                    let should = plan.retarget(cfg, &plan.revision, ring, state);
                    let d = differences(cfg, &should);
                    if !d.is_empty() {
                        found.push((
                            Drift {
                                kind: DriftKind::Modified,
                                configuration: cfg.id.clone(),
                                message: format!("configuration {}: {}", cfg.id, d.join(", ")),
                                new: false,
                                healed: false,
                            },
                            Some(ring),
                        ));
                    }
                }
                // The rest of the decision sees the configuration where the status says.
                ours.retain(|o| o.config.id != plan.id);
                ours.push(Ours {
                    config: cfg,
                    revision: plan.revision.as_str(),
                    ring,
                    state,
                });
            }
            None => {
                if let Some((state, ring)) = want
                    && state != ConfigState::Held
                {
                    found.push((
                        Drift {
                            kind: DriftKind::Deleted,
                            configuration: plan.id.clone(),
                            message: format!(
                                "configuration {} was deleted while {} at ring {}",
                                plan.id,
                                state.label(),
                                self.ring_names.get(ring).cloned().unwrap_or_default()
                            ),
                            new: false,
                            healed: false,
                        },
                        Some(ring),
                    ));
                    recreate = Some((state, ring));
                }
            }
        }

        // The stable revision beneath the current one.
        if let Some(stable_rev) = self.st.stable_revision.clone()
            && stable_rev != plan.revision
        {
            let stable = ours
                .iter()
                .filter(|o| o.revision == stable_rev && o.state == ConfigState::Stable)
                .max_by_key(|o| o.config.created_time_utc)
                .copied();
            match stable {
                Some(s) if same_spec => {
                    let should =
                        plan.retarget(s.config, s.revision, last_ring, ConfigState::Stable);
                    let d = differences(s.config, &should);
                    if !d.is_empty() {
                        found.push((
                            Drift {
                                kind: DriftKind::Modified,
                                configuration: s.config.id.clone(),
                                message: format!(
                                    "stable configuration {}: {}",
                                    s.config.id,
                                    d.join(", ")
                                ),
                                new: false,
                                healed: false,
                            },
                            Some(last_ring),
                        ));
                    }
                }
                Some(_) => {}
                None if !ours.iter().any(|o| o.revision == stable_rev) => {
                    let id = crate::core::revision::configuration_id(
                        &plan.namespace,
                        &plan.name,
                        &stable_rev,
                    );
                    found.push((
                        Drift {
                            kind: DriftKind::Deleted,
                            configuration: id.clone(),
                            message: format!(
                                "stable configuration {id} (revision {stable_rev}) was deleted; \
                                 its content is not in the spec, so it cannot be recreated"
                            ),
                            new: false,
                            healed: false,
                        },
                        None,
                    ));
                }
                None => {}
            }
        }

        self.shadowed(&ours);
        let heal = self.ro.spec.drift == DriftPolicy::Heal && !self.ro.spec.suspend;
        let g = self.generation();
        let now = self.now;
        let before = status::condition(&self.st, DRIFTED)
            .filter(|c| c.status == "True")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        if found.is_empty() {
            if status::condition(&self.st, DRIFTED).is_some_and(|c| c.status == "True") {
                status::set_condition(
                    &mut self.st,
                    DRIFTED,
                    false,
                    "InSync",
                    "the hub's configurations match the rollout",
                    g,
                    now,
                );
            }
            return (ours, false);
        }
        let summary = found
            .iter()
            .map(|(d, _)| d.message.clone())
            .collect::<Vec<_>>()
            .join("; ");
        for (d, ring) in &mut found {
            d.new = !before.contains(&d.message);
            d.healed = heal && (d.configuration == plan.id || d.kind == DriftKind::Modified);
            if d.new {
                let what = match (heal, d.healed) {
                    (_, true) => "put back",
                    (true, false) => "reported",
                    (false, _) => "reported (spec.drift: report)",
                };
                self.history("Drift", *ring, None, format!("{}: {what}", d.message));
            }
            if d.healed {
                self.healing.push(d.configuration.clone());
            }
        }
        let (reason, message) = if heal {
            ("Healing", format!("healing: {summary}"))
        } else {
            (
                "Reported",
                format!("drift (spec.drift: report, nothing changed): {summary}"),
            )
        };
        status::set_condition(&mut self.st, DRIFTED, true, reason, &summary, g, now);
        self.drifts.extend(found.into_iter().map(|(d, _)| d));
        if !heal {
            self.message = message.clone();
            if !self.ro.spec.suspend {
                self.stalled = Some(("Drifted".into(), message));
            }
            self.wait(HUMAN_POLL);
            return (ours, true);
        }
        if let Some((state, ring)) = recreate {
            if !self.take_write() {
                let _ = self.budget_wait("configuration-write");
                self.wait(self.obs.budget.refill);
                return (ours, true);
            }
            self.actions
                .push(Action::Create(plan.new_configuration(ring, state)));
            if matches!(
                self.ring_state(),
                Some(RingState::Baking | RingState::Analyzing)
            ) {
                self.enter(self.ring_index(), RingState::Applying);
            }
            self.message = format!(
                "configuration {} was deleted: recreated at ring {}",
                plan.id,
                self.ring_names.get(ring).cloned().unwrap_or_default()
            );
            self.sync_marks(None);
            self.wait(AFTER_WRITE);
            return (ours, true);
        }
        self.message = message;
        (ours, false)
    }

    /// Reports other owners' configurations of higher priority that write the
    /// rollout's paths (the `Shadowed` condition), with their numbers.
    fn shadowed(&mut self, ours: &[Ours<'a>]) {
        let Some(cur) = ours
            .iter()
            .find(|o| o.config.id == self.plan.id && o.state != ConfigState::Held)
        else {
            return;
        };
        let ids = self.shielding_ids(cur.config);
        let g = self.generation();
        let now = self.now;
        let had = status::condition(&self.st, SHADOWED).is_some_and(|c| c.status == "True");
        if ids.is_empty() {
            if had {
                status::set_condition(&mut self.st, SHADOWED, false, "NotShadowed", "", g, now);
            }
            return;
        }
        let before = status::condition(&self.st, SHADOWED)
            .filter(|c| c.status == "True")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let mut parts = Vec::new();
        for id in &ids {
            let Some(c) = self.obs.configurations.iter().find(|c| &c.id == id) else {
                continue;
            };
            let get = |k: &str| c.system_metrics.results.get(k).copied().unwrap_or(0).max(0);
            let part = format!(
                "configuration {id} (priority {} over {}) writes the same paths: it targets {} devices, applied on {}",
                c.priority,
                self.plan.priority,
                get("targetedCount"),
                get("appliedCount")
            );
            // The numbers move; a configuration is new when its id was not reported.
            if !before.contains(&format!("configuration {id} ")) {
                self.history("Shadowed", None, None, part.clone());
                self.drifts.push(Drift {
                    kind: DriftKind::Shadowed,
                    configuration: id.clone(),
                    message: part.clone(),
                    new: true,
                    healed: false,
                });
            }
            parts.push(part);
        }
        let ours_n = super::run::numbers(cur.config);
        let mut msg = parts.join("; ");
        if let (Some(t), Some(a)) = (ours_n.targeted, ours_n.applied) {
            msg.push_str(&format!(
                "; {} of the {t} devices this rollout targets do not have it applied",
                t.saturating_sub(a)
            ));
        }
        status::set_condition(&mut self.st, SHADOWED, true, "Shadowed", &msg, g, now);
    }

    /// Records the spec as brought onto the hub once every configuration of the rollout
    /// that stays matches it (on the hub or in this decision's writes).
    pub(super) fn record_applied_spec(&mut self, ours: &[Ours<'a>]) {
        let plan = self.plan;
        let all_match = ours.iter().all(|o| {
            if self
                .actions
                .iter()
                .any(|a| matches!(a, Action::Delete { id } if *id == o.config.id))
            {
                return true;
            }
            let written = self
                .actions
                .iter()
                .filter_map(Action::written)
                .rfind(|c| c.id == o.config.id);
            let c = written.unwrap_or(o.config);
            match ConfigLabels::read(c) {
                Some(l) => plan.matches(c, &l.revision, l.ring, l.state),
                None => false,
            }
        });
        if all_match {
            self.st.applied_spec = Some(spec_hash(self.ro));
        }
    }
}
