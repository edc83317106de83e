//! The decision: given a rollout, its last status, what the hub reports and the time,
//! which hub writes to make and what the status becomes. Pure: no I/O, no clock.
//!
//! # How it works
//! The hub is the source of truth for *where* a rollout is: each configuration carries
//! labels naming its revision, the widest ring its target includes, and its state
//! (`rolling`, `stable`, `held`). The status adds verdicts, history and messages. What a
//! restart needs besides (when the ring was targeted, applied and passed, an approval of
//! the next ring, a pause, the last operator request applied) the current revision's
//! configuration carries as [`Marks`], written with the write that changes them or as a
//! small label update of their own. When the status is lost, the decision takes them
//! back: the rollout goes on with the same bake times and deadlines, stays paused, and
//! applies no request twice. (Configurations without marks fall back on
//! `lastUpdatedTimeUtc` as the start time and are re-applied, re-baked and re-judged.)
//!
//! # Where the numbers come from
//! `targeted`, `applied` and the custom metrics are the configuration's own
//! hub-computed `systemMetrics`/`metrics` results: free of query budget, cumulative over
//! rings 0..=i (the configuration targets them all). Count queries (which cost budget)
//! are asked for only where the configuration's numbers cannot answer:
//! - `targeted:<rev>:<ring>`: the devices ring i's target matches right now. The hub
//!   recomputes its metrics on a cycle (5 minutes on Azure), so a ring counts as applied
//!   only when the hub's `targetedCount` equals this and `appliedCount` has caught up.
//! - `baseline:<rev>:<ring>`: newly targeted devices that no lower-priority configuration
//!   covers (the baseline guard, `docs/rollouts.md`, "The baseline guard").
//! - `shielded:<rev>:<ring>`: targeted devices where a higher-priority configuration
//!   writing the same paths is applied, so this one never will be. Asked only when the
//!   numbers fall short and such a configuration exists; they count as settled.
//! - `rollback:<rev>`: devices a held revision reached that no other configuration
//!   writing its paths is applied to: the rollback is confirmed when this is 0 (or, after
//!   [`ROLLBACK_GRACE`], reported as `RollbackIncomplete`).
//! - `cleanup`: devices where this rollout's configurations are applied and no other
//!   lower-priority configuration covers them (deleting the rollout).
//!
//! The core returns the counts it needs in [`Decision::counts_needed`] (never more than
//! the query budget allows); the driver runs them and calls [`decide`] again.
//!
//! # Operator requests
//! [`Operation`]s arrive in [`Observation::operations`]; each id is applied once and
//! recorded in `status.handledOperations` (and the last one as a mark on the hub).
//! `promote` approves an approval ring (the baseline guard still runs before widening),
//! or moves the current ring forward now (a pending gate, a failed ring held by
//! `onFailure: pause`, or a blocked baseline guard), recorded as a Pass "promoted by
//! operator"; `abort` rolls back;
//! `retry` restarts a rolled-back revision at ring 0 (or re-judges a failed ring); `pause`
//! holds widening and completion (rollbacks still happen: safety wins); `resume` lifts it.

//!
//! # Parts
//! One file per job, each an `impl` block on the decision in progress ([`run`]):
//! - [`revisions`]: a new revision's bookkeeping, which configurations stay on the hub
//!   (the current revision and the stable one beneath it), and a stable revision.
//! - [`marks`]: what the status lost, taken back from the configuration's labels, and
//!   the labels the status calls for.
//! - [`requests`]: the operator's requests, each applied once.
//! - [`rings`]: the ring machine: start a revision, widen ring by ring, complete.
//! - [`judging`]: a targeted ring: applied, baked, judged by its gate, `onFailure`.
//! - [`baseline`]: the baseline guard and approvals before a ring is targeted.
//! - [`coverage`]: which other configurations cover or shield this rollout's devices.
//! - [`rollback`]: narrowing a revision to no device and confirming the rollback.
//! - [`cleanup`]: deleting a rollout's configurations when the rollout goes.
//! - [`drift`]: the hub compared with the status: edited, deleted and shadowed configurations.
//! - [`finish`]: the phase, the conditions and the requeue of the decision.

mod baseline;
mod cleanup;
mod coverage;
mod drift;
mod finish;
mod judging;
mod marks;
mod requests;
mod revisions;
mod rings;
mod rollback;
mod run;

pub use coverage::paths_overlap;
pub use drift::{DRIFTED, Drift, DriftKind, SHADOWED, spec_hash};

use super::plan::Plan;
use super::revision::{ConfigLabels, ConfigState, belongs_to};
use super::status::{self, READY, RECONCILING, STALLED};
use super::validate::FieldError;
use crate::iothub::configuration::Configuration;
use crate::resources::{DeviceRollout, DeviceRolloutStatus, Operation, Phase};
use jiff::{SignedDuration, Timestamp};
use run::{Ours, Run};
use std::collections::BTreeMap;

// How often a rollout looks again depends on what it waits for. Every requeue is at least
// MIN_REQUEUE; a decision that wrote something looks again within AFTER_WRITE.

/// Shortest requeue: the controller never spins. (The one exception is a ring the hub is
/// applying while the hub's budgets have room: [`APPLYING_POLL`].)
pub const MIN_REQUEUE: SignedDuration = SignedDuration::from_secs(5);
/// While the hub applies a ring and its budgets have room ([`applying_poll`]): look again
/// this soon, so a ring's applied counts reach the status (and the operator console)
/// within seconds of the hub reporting them, not after [`AFTER_WRITE`].
pub const APPLYING_POLL: SignedDuration = SignedDuration::from_secs(2);
/// Count queries and configuration operations the fast polling of an applying ring
/// leaves in the hub's budgets for everything else: below this many of either, an
/// applying ring is looked at as before ([`AFTER_WRITE`], then [`APPLY_POLL`]). On an
/// IoT Hub S1 unit (20 of each a minute) fast looks (a listing and a count or two each)
/// thus take at most about half of each budget, and writes always find tokens.
pub const FAST_POLL_RESERVE: u32 = 10;

/// How soon a ring the hub is applying may be looked at again, given the count queries
/// and configuration operations left in the hub's budgets: [`APPLYING_POLL`] while both
/// hold at least [`FAST_POLL_RESERVE`], else [`APPLY_POLL`] (no faster than usual).
pub fn applying_poll(queries_left: u32, writes_left: u32) -> SignedDuration {
    if queries_left >= FAST_POLL_RESERVE && writes_left >= FAST_POLL_RESERVE {
        APPLYING_POLL
    } else {
        APPLY_POLL
    }
}
/// After a write: look again soon to see the hub's answer.
pub const AFTER_WRITE: SignedDuration = SignedDuration::from_secs(15);
/// While the hub applies a ring or confirms a rollback (the embedded hub recomputes its
/// numbers every few seconds, Azure every few minutes).
pub const APPLY_POLL: SignedDuration = SignedDuration::from_secs(30);
/// While a gate has no verdict.
pub const ANALYZE_POLL: SignedDuration = SignedDuration::from_secs(60);
/// Longest wait while baking (the status shows fresh numbers at least this often).
pub const BAKE_POLL: SignedDuration = SignedDuration::from_secs(120);
/// While waiting for a person: an approval, a pause, a ring held by `onFailure: pause`,
/// a baseline guard blocked for longer than [`COVER_WATCH`], a blocked cleanup, the hub's
/// configuration quota.
pub const HUMAN_POLL: SignedDuration = SignedDuration::from_secs(300);
/// While `baseline: required` waits for cover, during the first [`COVER_WATCH`]: a
/// baseline applied together with the rollout (one directory, one commit, one chart)
/// covers the devices on the hub's next cycle, and the rollout starts within seconds
/// of that. Each look costs one count query.
pub const COVER_POLL: SignedDuration = SignedDuration::from_secs(5);
/// How long a blocked baseline guard looks again every [`COVER_POLL`] before it waits at
/// [`HUMAN_POLL`]: two of Azure's 5-minute cycles, enough for cover that was on its way.
/// Beyond that the cover is a person's job, and a rollout waiting for days does not
/// spend a count query every few seconds of the hub's query budget.
pub const COVER_WATCH: SignedDuration = SignedDuration::from_secs(600);
/// When nothing is expected to change (healthy, rolled back, suspended, invalid): drift checks.
pub const IDLE_POLL: SignedDuration = SignedDuration::from_secs(600);
/// How long a rollback waits for the devices it let go of to get their settings from
/// another configuration before it reports the ones that did not (two hub cycles on Azure).
pub const ROLLBACK_GRACE: SignedDuration = SignedDuration::from_secs(600);

/// What the driver measured on the hub for one decision.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// Every configuration on the hub. The core finds this rollout's by their labels and
    /// uses the others to find what covers the devices (baseline guard, cleanup). Shared:
    /// the rollouts of one hub reconciled together decide on one listing.
    pub configurations: std::sync::Arc<Vec<Configuration>>,
    /// Results of the count queries asked for in [`Decision::counts_needed`], by key.
    pub counts: BTreeMap<String, u64>,
    /// What the hub's traffic limits still allow right now.
    pub budget: Budget,
    /// Operator requests (see the module docs).
    pub operations: Vec<Operation>,
    /// Set when the rollout is being deleted.
    pub deletion: Option<Deletion>,
    /// The hub's configuration quota.
    pub max_configurations: usize,
}

/// Hub traffic available to this decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Count queries the core may ask for.
    pub queries: u32,
    /// Configuration writes (create, update, delete) the core may emit.
    pub writes: u32,
    /// How long until the budget grows again (used as the requeue when it is spent).
    pub refill: SignedDuration,
    /// How soon a ring the hub is applying may be looked at again ([`applying_poll`] of
    /// what is left); a longer wait than the usual one changes nothing.
    pub applying: SignedDuration,
}

/// What a decision may spend when the driver does not say: enough for a whole ring step
/// (its counts and its writes), refilled within a few seconds.
impl Default for Budget {
    fn default() -> Self {
        Budget {
            queries: 20,
            writes: 20,
            refill: SignedDuration::from_secs(3),
            // The driver did not say how its budgets stand: no faster than usual.
            applying: APPLY_POLL,
        }
    }
}

/// The rollout is being deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deletion {
    /// Delete the configurations even when no lower-priority configuration covers the devices.
    pub force: bool,
}

/// A count the core needs: `SELECT COUNT() FROM devices WHERE <condition>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountRequest {
    /// What the count is for (`targeted:<rev>:<ring>`, `baseline:<rev>:<ring>`, …, see
    /// the module docs); its result goes back under this key in [`Observation::counts`].
    pub key: String,
    /// A bare predicate; `*` for every device.
    pub condition: String,
}

/// A hub write. Every one is idempotent: ids are derived, so a create that finds the
/// configuration already there, or a delete that finds it gone, has done its job.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create a configuration.
    Create(Configuration),
    /// Update a configuration's mutable fields (target, labels, priority, metrics), on
    /// the etag it was observed with.
    Update {
        /// The configuration as it should be.
        config: Configuration,
        /// The etag it was observed with; `None` updates unconditionally.
        etag: Option<String>,
    },
    /// Delete a configuration.
    Delete {
        /// The configuration id.
        id: String,
    },
}

impl Action {
    /// The configuration id the action touches.
    pub fn id(&self) -> &str {
        match self {
            Action::Create(c) | Action::Update { config: c, .. } => &c.id,
            Action::Delete { id } => id,
        }
    }

    /// The configuration a create or an update writes.
    fn written(&self) -> Option<&Configuration> {
        match self {
            Action::Create(c) | Action::Update { config: c, .. } => Some(c),
            Action::Delete { .. } => None,
        }
    }

    /// The configuration a create or an update writes, to change before it is written.
    fn written_mut(&mut self) -> Option<&mut Configuration> {
        match self {
            Action::Create(c) | Action::Update { config: c, .. } => Some(c),
            Action::Delete { .. } => None,
        }
    }
}

/// What to do.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Hub writes, in order. Perform them in order and stop at the first failure.
    pub actions: Vec<Action>,
    /// The status to record once the actions succeeded.
    pub status: DeviceRolloutStatus,
    /// When to look again (at least [`MIN_REQUEUE`]).
    pub requeue_after: SignedDuration,
    /// Counts to measure before deciding again; when non-empty, `actions` is empty.
    pub counts_needed: Vec<CountRequest>,
    /// Deletion only: every configuration of the rollout is gone.
    pub finalized: bool,
    /// What differs between the hub and the rollout's state ([`drift`]).
    pub drift: Vec<Drift>,
}

/// The status for a rollout that failed validation: nothing is written to the hub (bad
/// input never costs data) and the rollout waits for a change.
pub fn invalid(
    ro: &DeviceRollout,
    last: &DeviceRolloutStatus,
    errors: &[FieldError],
    now: Timestamp,
) -> Decision {
    let mut st = last.clone();
    let generation = ro.metadata.generation;
    st.observed_generation = generation;
    st.phase = Some(Phase::Failed);
    let message = errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    st.message = Some(format!("invalid spec: {message}"));
    status::set_condition(
        &mut st,
        STALLED,
        true,
        "InvalidSpec",
        &message,
        generation,
        now,
    );
    status::set_condition(
        &mut st,
        RECONCILING,
        false,
        "InvalidSpec",
        "waiting for a valid spec",
        generation,
        now,
    );
    status::set_condition(
        &mut st,
        READY,
        false,
        "InvalidSpec",
        &message,
        generation,
        now,
    );
    Decision {
        actions: Vec::new(),
        status: st,
        requeue_after: IDLE_POLL,
        counts_needed: Vec::new(),
        finalized: false,
        drift: Vec::new(),
    }
}

/// Decides the next step of a rollout that passed [`super::validate::validate_rollout`].
pub fn decide(
    ro: &DeviceRollout,
    last: &DeviceRolloutStatus,
    obs: &Observation,
    now: Timestamp,
) -> Decision {
    let plan = Plan::new(ro);
    let mut run = Run::new(ro, &plan, last, obs, now);
    run.run();
    run.finish()
}

impl<'a> Run<'a> {
    /// The pipeline, in the order the parts run: deletion goes to [`cleanup`]; otherwise
    /// the revision's bookkeeping ([`revisions`]), what the marks give back ([`marks`]),
    /// the operator's requests ([`requests`]), suspension, which configurations stay
    /// ([`revisions`]), then the current revision's part: stable ([`revisions`]), held
    /// ([`rollback`]) or on its way through the rings ([`rings`]), and last the marks the
    /// status calls for.
    fn run(&mut self) {
        self.st.observed_generation = self.generation();
        let ours = self.ours();
        if let Some(deletion) = self.obs.deletion {
            self.cleanup(&ours, deletion);
            return;
        }
        // Drift: the hub compared with the status; the rest sees the status's ring.
        let (ours, stop) = self.drift(ours);
        if stop {
            return;
        }
        let cur = ours
            .iter()
            .copied()
            .find(|o| o.config.id == self.plan.id && o.revision == self.plan.revision);
        self.new_revision_bookkeeping();
        // What the status lost, the configuration's marks give back; before the requests,
        // so that a request aimed at the current ring finds it.
        if let Some(c) = cur {
            self.restore(c);
        }
        self.operations();
        if self.ro.spec.suspend {
            self.message = "suspended: spec.suspend is true; nothing is written to the hub".into();
            self.wait(IDLE_POLL);
            return;
        }
        let stable = self.keep_current_and_stable(&ours, cur);
        let deleted = self
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Delete { .. }))
            .count();
        match cur {
            Some(c) if c.state == ConfigState::Stable => self.healthy(c),
            Some(c) if c.state == ConfigState::Held => self.held(c, stable),
            Some(c) => self.progress(c, stable),
            None => {
                let configs_after_deletes = self.obs.configurations.len() - deleted;
                self.start(stable, configs_after_deletes);
            }
        }
        self.sync_marks(cur);
        self.record_applied_spec(&ours);
    }

    /// This rollout's configurations on the hub, with what their labels say.
    fn ours(&self) -> Vec<Ours<'a>> {
        self.obs
            .configurations
            .iter()
            .filter(|c| belongs_to(c, &self.plan.namespace, &self.plan.name))
            .filter_map(|c| {
                let l = ConfigLabels::read(c)?;
                let revision = c.labels.get(super::revision::label::REVISION)?.as_str();
                Some(Ours {
                    config: c,
                    revision,
                    ring: l.ring,
                    state: l.state,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
