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
//!   covers (the baseline guard, semantics 7).
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

use super::gate::{self, EffectiveGate, GateInputs};
use super::plan::{self, Cond, Plan};
use super::revision::{ConfigLabels, ConfigState, Marks, belongs_to, label_value};
use super::status::{self, READY, RECONCILING, STALLED};
use super::validate::FieldError;
use crate::iothub::configuration::{Configuration, MAX_QUERY_LEN};
use crate::resources::{
    DeviceRollout, DeviceRolloutStatus, HistoryEntry, OnFailure, Operation, OperationKind,
    PauseState, Phase, RingRecord, RingState, RingStatus, Verdict,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;

/// Shortest requeue: the controller never spins.
pub const MIN_REQUEUE: SignedDuration = SignedDuration::from_secs(5);
/// After a write: look again soon to see the hub's answer.
pub const AFTER_WRITE: SignedDuration = SignedDuration::from_secs(15);
/// While the hub applies a ring.
pub const APPLY_POLL: SignedDuration = SignedDuration::from_secs(30);
/// While a gate has no verdict.
pub const ANALYZE_POLL: SignedDuration = SignedDuration::from_secs(60);
/// Longest wait while baking (the status shows fresh numbers at least this often).
pub const BAKE_POLL: SignedDuration = SignedDuration::from_secs(120);
/// While waiting for a person (approval, a held ring, a blocked guard).
pub const HUMAN_POLL: SignedDuration = SignedDuration::from_secs(300);
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
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            queries: 20,
            writes: 20,
            refill: SignedDuration::from_secs(3),
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
        config: Configuration,
        etag: Option<String>,
    },
    /// Delete a configuration.
    Delete { id: String },
}

impl Action {
    /// The configuration id the action touches.
    pub fn id(&self) -> &str {
        match self {
            Action::Create(c) | Action::Update { config: c, .. } => &c.id,
            Action::Delete { id } => id,
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

/// One of this rollout's configurations with what its labels say.
#[derive(Clone, Copy)]
struct Ours<'a> {
    config: &'a Configuration,
    revision: &'a str,
    ring: usize,
    state: ConfigState,
}

impl Ours<'_> {
    fn marks(&self) -> Marks {
        Marks::read(&self.config.labels)
    }
}

/// The numbers a configuration reports.
#[derive(Clone, Debug, Default, PartialEq)]
struct Numbers {
    targeted: Option<u64>,
    applied: Option<u64>,
    metrics: BTreeMap<String, u64>,
}

fn numbers(c: &Configuration) -> Numbers {
    let get = |k: &str| c.system_metrics.results.get(k).map(|v| (*v).max(0) as u64);
    Numbers {
        targeted: get("targetedCount"),
        applied: get("appliedCount"),
        metrics: c
            .metrics
            .results
            .iter()
            .map(|(k, v)| (k.clone(), (*v).max(0) as u64))
            .collect(),
    }
}

/// Operator requests that apply to this decision.
#[derive(Default)]
struct Requests {
    promote: bool,
    abort: bool,
    retry: bool,
}

/// Whether the state machine should look again in this decision or stop.
enum Step {
    Continue,
    Wait(SignedDuration),
}

struct Run<'a> {
    ro: &'a DeviceRollout,
    plan: &'a Plan,
    obs: &'a Observation,
    now: Timestamp,
    st: DeviceRolloutStatus,
    ring_names: Vec<String>,
    actions: Vec<Action>,
    counts_needed: Vec<CountRequest>,
    queries_left: u32,
    writes_left: u32,
    requeue: Option<SignedDuration>,
    requests: Requests,
    finalized: bool,
    /// A stall to report (reason, message); cleared each decision.
    stalled: Option<(String, String)>,
    /// One of the actions only writes marks (nothing to look at soon after it).
    marks_write: bool,
    message: String,
}

impl<'a> Run<'a> {
    fn new(
        ro: &'a DeviceRollout,
        plan: &'a Plan,
        last: &DeviceRolloutStatus,
        obs: &'a Observation,
        now: Timestamp,
    ) -> Self {
        Run {
            ro,
            plan,
            obs,
            now,
            st: last.clone(),
            ring_names: ro.spec.rings.iter().map(|r| r.name.clone()).collect(),
            actions: Vec::new(),
            counts_needed: Vec::new(),
            queries_left: obs.budget.queries,
            writes_left: obs.budget.writes,
            requeue: None,
            requests: Requests::default(),
            finalized: false,
            stalled: None,
            marks_write: false,
            message: String::new(),
        }
    }

    fn generation(&self) -> Option<i64> {
        self.ro.metadata.generation
    }

    fn wait(&mut self, d: SignedDuration) {
        let d = d.max(MIN_REQUEUE);
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    fn take_write(&mut self) -> bool {
        if self.writes_left == 0 {
            return false;
        }
        self.writes_left -= 1;
        true
    }

    fn budget_wait(&mut self, what: &str) -> Step {
        self.message = format!("waiting for the hub's {what} budget");
        Step::Wait(self.obs.budget.refill)
    }

    /// A count from the observation, or a request for it. `Err` holds the step to return.
    fn count(&mut self, key: String, condition: &Cond) -> Result<u64, Step> {
        if let Some(n) = self.obs.counts.get(&key) {
            return Ok(*n);
        }
        if self.queries_left == 0 {
            return Err(self.budget_wait("query"));
        }
        self.queries_left -= 1;
        self.counts_needed.push(CountRequest {
            key,
            condition: condition.text().to_string(),
        });
        Err(Step::Wait(MIN_REQUEUE))
    }

    fn history(
        &mut self,
        decision: &str,
        ring: Option<usize>,
        numbers: Option<&Numbers>,
        message: String,
    ) {
        let n = numbers.cloned().unwrap_or_default();
        status::push_history(
            &mut self.st,
            HistoryEntry {
                time: Time(self.now),
                decision: decision.to_string(),
                revision: Some(self.plan.revision.clone()),
                ring: ring.and_then(|i| self.ring_names.get(i).cloned()),
                targeted: n.targeted,
                applied: n.applied,
                metrics: n.metrics,
                message,
            },
        );
    }

    fn set_ring(&mut self, index: usize, state: RingState) {
        self.st.ring = Some(RingStatus {
            index: index as u32,
            name: self.ring_names.get(index).cloned().unwrap_or_default(),
            state,
            since: Time(self.now),
            applied_at: None,
            targeted: None,
            applied: None,
            shielded: None,
        });
    }

    fn ring_state(&self) -> Option<RingState> {
        self.st.ring.as_ref().map(|r| r.state)
    }

    fn ring_index(&self) -> usize {
        self.st.ring.as_ref().map_or(0, |r| r.index as usize)
    }

    fn record(&mut self, index: usize) -> &mut RingRecord {
        status::ring_record(&mut self.st, index, &self.ring_names)
    }

    // ---- the pipeline -------------------------------------------------------------

    fn run(&mut self) {
        self.st.observed_generation = self.generation();
        let ours: Vec<Ours<'a>> = self
            .obs
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
            .collect();

        if let Some(deletion) = self.obs.deletion {
            self.cleanup(&ours, deletion);
            return;
        }
        let cur = ours
            .iter()
            .copied()
            .find(|o| o.revision == self.plan.revision);
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

        // Housekeeping: everything that is neither the current revision nor the stable
        // one underneath it goes: superseded unfinished revisions, held revisions once
        // new content arrived, older stable revisions.
        let keep_stable = if cur_is_stable { None } else { stable };
        for o in &ours {
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
        // The stable configuration follows spec changes to target, rings, priority, metrics.
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

        let deleted = self
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Delete { .. }))
            .count();
        match cur {
            Some(c) if c.state == ConfigState::Stable => self.healthy(c),
            Some(c) if c.state == ConfigState::Held => self.held(c, keep_stable),
            other => {
                let others = self.obs.configurations.len() - deleted;
                self.progress(other, keep_stable, others);
            }
        }
        self.sync_marks(cur);
    }

    /// Takes back from the current revision's marks what the status does not know: the
    /// last request applied, a pause, and (for a rolling revision) where its ring is.
    fn restore(&mut self, c: Ours<'a>) {
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
    fn rebuild(&mut self, c: Ours<'a>, marks: &Marks) {
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
    fn sync_marks(&mut self, cur: Option<Ours<'a>>) {
        let id = self.plan.id.clone();
        let pending = self.actions.iter().position(|a| match a {
            Action::Create(c) | Action::Update { config: c, .. } => c.id == id,
            Action::Delete { .. } => false,
        });
        let config = match (pending, cur) {
            (Some(i), _) => match &self.actions[i] {
                Action::Create(c) | Action::Update { config: c, .. } => c.clone(),
                Action::Delete { .. } => unreachable!("pending is a create or an update"),
            },
            (None, Some(c)) => c.config.clone(),
            (None, None) => return,
        };
        let Some(l) = ConfigLabels::read(&config) else {
            return;
        };
        let want = self.marks_for(&l).write(&config.labels);
        if want == config.labels {
            return;
        }
        match pending {
            Some(i) => match &mut self.actions[i] {
                Action::Create(c) | Action::Update { config: c, .. } => c.labels = want,
                Action::Delete { .. } => unreachable!("pending is a create or an update"),
            },
            None => {
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
        }
    }

    /// The marks a configuration with labels `l` should carry, from the status.
    fn marks_for(&self, l: &ConfigLabels) -> Marks {
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

    fn new_revision_bookkeeping(&mut self) {
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

    /// Applies each new operator request once.
    fn operations(&mut self) {
        let ring_name = self.st.ring.as_ref().map(|r| r.name.clone());
        for op in &self.obs.operations {
            // An id restored from the `operation` mark is in its label form.
            let as_label = label_value(&op.id);
            if self
                .st
                .handled_operations
                .iter()
                .any(|h| *h == op.id || *h == as_label)
            {
                continue;
            }
            status::mark_handled(&mut self.st, &op.id);
            let kind = op.kind.name();
            if op
                .revision
                .as_ref()
                .is_some_and(|r| *r != self.plan.revision)
            {
                self.history(
                    "IgnoredOperation",
                    None,
                    None,
                    format!(
                        "{kind} {} was aimed at revision {}",
                        op.id,
                        op.revision.clone().unwrap_or_default()
                    ),
                );
                continue;
            }
            if op.ring.is_some() && op.ring != ring_name {
                self.history(
                    "IgnoredOperation",
                    None,
                    None,
                    format!(
                        "{kind} {} was aimed at ring {}",
                        op.id,
                        op.ring.clone().unwrap_or_default()
                    ),
                );
                continue;
            }
            match op.kind {
                OperationKind::Pause => {
                    self.st.paused = Some(PauseState {
                        since: Time(self.now),
                        operation: op.id.clone(),
                    });
                    self.history(
                        "Pause",
                        None,
                        None,
                        format!("paused by operator ({})", op.id),
                    );
                }
                OperationKind::Resume => {
                    if self.st.paused.take().is_some() {
                        self.history(
                            "Resume",
                            None,
                            None,
                            format!("resumed by operator ({})", op.id),
                        );
                    }
                }
                OperationKind::Promote => self.requests.promote = true,
                OperationKind::Abort => self.requests.abort = true,
                OperationKind::Retry => self.requests.retry = true,
            }
        }
    }

    // ---- the current revision -----------------------------------------------------

    fn healthy(&mut self, c: Ours<'a>) {
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

    fn held(&mut self, c: Ours<'a>, stable: Option<Ours<'a>>) {
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
            self.machine(Some(c), None, stable, usize::MAX);
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
            self.wait(APPLY_POLL);
            return;
        }
        let uncovered = match self.rollback_uncovered(c, ring) {
            Ok(u) => u,
            Err(step) => {
                if let Step::Wait(d) = step {
                    self.wait(d);
                }
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
                    self.wait(APPLY_POLL);
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

    fn rolled_back(&mut self, ring: usize, n: &Numbers, msg: String) {
        if let Some(r) = self.st.ring.as_mut() {
            r.state = RingState::RolledBack;
            r.since = Time(self.now);
        }
        self.history("RolledBack", Some(ring), Some(n), msg);
    }

    /// Devices that the held configuration `c` reached (rings 0..=`ring`) and that no
    /// other configuration writing one of its paths is applied to: `None` when the query
    /// would be too long to ask.
    fn rollback_uncovered(&mut self, c: Ours<'a>, ring: usize) -> Result<Option<u64>, Step> {
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

    /// A revision without a configuration yet, or one moving through the rings.
    fn progress(
        &mut self,
        cur: Option<Ours<'a>>,
        stable: Option<Ours<'a>>,
        configs_after_deletes: usize,
    ) {
        match cur {
            None => {
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
                self.machine(None, None, stable, configs_after_deletes);
            }
            Some(c) => {
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
                    self.history(
                        "Retarget",
                        Some(k),
                        Some(&numbers(c.config)),
                        "the spec changed: configuration updated".into(),
                    );
                    self.actions.push(Action::Update {
                        config,
                        etag: c.config.etag.clone(),
                    });
                }
                self.machine(Some(c), Some(k), stable, configs_after_deletes);
            }
        }
    }

    /// Runs the ring state machine until it has to wait.
    /// `hub_ring`: the ring the configuration's target includes now (`None`: it reaches no device).
    fn machine(
        &mut self,
        cur: Option<Ours<'a>>,
        hub_ring: Option<usize>,
        stable: Option<Ours<'a>>,
        configs: usize,
    ) {
        let n = cur.map(|c| numbers(c.config)).unwrap_or_default();
        let mut promote = std::mem::take(&mut self.requests.promote);
        for _ in 0..8 {
            let state = self.ring_state().unwrap_or(RingState::WaitingForBaseline);
            let i = self.ring_index();
            if matches!(
                state,
                RingState::Applying | RingState::Baking | RingState::Analyzing | RingState::Failed
            ) {
                self.observe_numbers(i, &n);
            }
            if let (true, Some(c), Some(_)) = (self.requests.abort, cur, hub_ring) {
                self.requests.abort = false;
                self.history("Abort", Some(i), Some(&n), "aborted by operator".into());
                let step = self.rollback(c, "aborted by operator".into());
                if let Step::Wait(d) = step {
                    self.wait(d);
                }
                return;
            }
            let step = match state {
                RingState::WaitingForBaseline => {
                    self.guard(cur, hub_ring, i, stable, &mut promote, configs)
                }
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
                RingState::Applying => self.applying(
                    cur.expect("a targeted ring has a configuration"),
                    i,
                    &n,
                    std::mem::take(&mut promote),
                ),
                RingState::Baking => {
                    let applied_at = self
                        .st
                        .ring
                        .as_ref()
                        .and_then(|r| r.applied_at.clone())
                        .map_or(self.now, |t| t.0);
                    let bake = EffectiveGate::for_ring(&self.ro.spec, i).bake;
                    let done = applied_at.checked_add(bake).unwrap_or(applied_at);
                    if promote || self.now >= done {
                        self.enter(i, RingState::Analyzing);
                        Step::Continue
                    } else {
                        let left = done.duration_since(self.now);
                        self.message = format!(
                            "ring {} is baking: {}s left",
                            self.ring_names[i],
                            left.as_secs()
                        );
                        Step::Wait(left.min(BAKE_POLL))
                    }
                }
                RingState::Analyzing => self.analyze(
                    cur.expect("a judged ring has a configuration"),
                    i,
                    &n,
                    std::mem::take(&mut promote),
                ),
                RingState::Passed => self.passed(
                    cur.expect("a passed ring has a configuration"),
                    i,
                    &n,
                    stable,
                ),
                RingState::Failed => {
                    let c = cur.expect("a failed ring has a configuration");
                    if std::mem::take(&mut promote) {
                        self.pass(i, &n, "promoted by operator after the gate failed".into());
                        Step::Continue
                    } else if std::mem::take(&mut self.requests.retry) {
                        self.history(
                            "Retry",
                            Some(i),
                            Some(&n),
                            "operator asked to judge the ring again".into(),
                        );
                        self.enter(i, RingState::Applying);
                        // A new start: applied, baked and judged again, with a new deadline.
                        let now = Time(self.now);
                        let rec = self.record(i);
                        rec.started_at = Some(now);
                        rec.applied_at = None;
                        Step::Continue
                    } else {
                        let _ = c;
                        self.message = format!(
                            "ring {} failed and onFailure is pause: promote to go on, abort to roll back, retry to judge again",
                            self.ring_names[i]
                        );
                        self.stalled = Some(("GateFailed".into(), self.message.clone()));
                        Step::Wait(HUMAN_POLL)
                    }
                }
                RingState::RollingBack | RingState::RolledBack => {
                    // The configuration is not held yet (the rollback write did not happen).
                    match cur {
                        Some(c) => self.rollback(c, "finishing an interrupted rollback".into()),
                        None => Step::Wait(IDLE_POLL),
                    }
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

    fn enter(&mut self, i: usize, state: RingState) {
        if let Some(r) = self.st.ring.as_mut()
            && r.index as usize == i
        {
            r.state = state;
            r.since = Time(self.now);
            if state == RingState::Applying {
                r.applied_at = None;
            }
            return;
        }
        self.set_ring(i, state);
    }

    fn observe_numbers(&mut self, i: usize, n: &Numbers) {
        if let Some(r) = self.st.ring.as_mut()
            && r.index as usize == i
        {
            r.targeted = n.targeted;
            r.applied = n.applied;
        }
        let rec = self.record(i);
        rec.targeted = n.targeted;
        rec.applied = n.applied;
        rec.metrics = n.metrics.clone();
    }

    /// The baseline guard before targeting ring `next` (semantics 7), then its approval.
    ///
    /// `promote` on an approval ring approves it (and the guard still runs); on any other
    /// ring, or once approved, it widens past the guard.
    fn guard(
        &mut self,
        cur: Option<Ours<'a>>,
        hub_ring: Option<usize>,
        next: usize,
        stable: Option<Ours<'a>>,
        promote: &mut bool,
        configs: usize,
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
                return self.widen(cur, next, configs);
            }
        }
        if let Some(step) = self.baseline_blocks(cur, hub_ring, next, stable) {
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
        self.widen(cur, next, configs)
    }

    /// Records an operator's approval of ring `i`.
    fn approve(&mut self, i: usize) {
        self.history("Approve", Some(i), None, "approved by operator".into());
        let now = Time(self.now);
        self.record(i).approved_at = Some(now);
    }

    /// The baseline count for ring `next`: `Some(step)` when widening must wait (for the
    /// count, or for a baseline), `None` when it may go on.
    fn baseline_blocks(
        &mut self,
        cur: Option<Ours<'a>>,
        hub_ring: Option<usize>,
        next: usize,
        stable: Option<Ours<'a>>,
    ) -> Option<Step> {
        if self.ro.spec.baseline == crate::resources::BaselinePolicy::Off {
            return None;
        }
        let new_devices = self.plan.new_devices(hub_ring, next)?;
        // The stable revision covers too (it is ours, so covering_ids leaves it out).
        let mut covering: Vec<String> = stable.map(|s| s.config.id.clone()).into_iter().collect();
        covering.extend(self.covering_ids(cur.and_then(|c| c.config.created_time_utc)));
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
            Err(step) => return Some(step),
        };
        if uncovered == 0 {
            return None;
        }
        let msg = format!(
            "{uncovered} devices of ring {} are not covered by a lower-priority configuration: a rollback would strip their settings instead of restoring them",
            self.ring_names[next]
        );
        if self.ro.spec.baseline == crate::resources::BaselinePolicy::Warn {
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
        Some(Step::Wait(HUMAN_POLL))
    }

    /// Configurations that would take a device back if this rollout let go of it: other
    /// owners' configurations of lower priority (or equal priority and created before
    /// `created`) that write one of the same paths.
    fn covering_ids(&self, created: Option<Timestamp>) -> Vec<String> {
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
    fn shielding_ids(&self, ours: &Configuration) -> Vec<String> {
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
    fn writes_our_paths(&self, c: &Configuration) -> bool {
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

    /// Targets ring `next`: creates the configuration, or widens its target.
    fn widen(&mut self, cur: Option<Ours<'a>>, next: usize, configs: usize) -> Step {
        if let Some(p) = &self.st.paused {
            self.message = format!(
                "paused by operator ({}): ring {} is not targeted until resume",
                p.operation, self.ring_names[next]
            );
            return Step::Wait(HUMAN_POLL);
        }
        match cur {
            None => {
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
            Some(c) => {
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
        Step::Wait(AFTER_WRITE)
    }

    /// Waits until the hub reports ring `i` applied.
    fn applying(&mut self, c: Ours<'a>, i: usize, n: &Numbers, promote: bool) -> Step {
        if promote {
            self.pass(
                i,
                n,
                "promoted by operator before the ring was applied".into(),
            );
            return Step::Continue;
        }
        let expected = match self.count(
            format!("targeted:{}:{i}", self.plan.revision),
            &self.plan.target(i),
        ) {
            Ok(e) => e,
            Err(step) => return step,
        };
        // Devices a higher-priority configuration holds are never applied: they settle as
        // shielded. Counted only when the numbers fall short and such a configuration exists.
        let mut shielded = 0;
        let mut shielding = Vec::new();
        if let (Some(t), Some(a)) = (n.targeted, n.applied)
            && t == expected
            && a < t
        {
            shielding = self.shielding_ids(c.config);
            if let Some(cond) = shielded_condition(&c.config.id, &shielding) {
                shielded = match self.count(format!("shielded:{}:{i}", self.plan.revision), &cond) {
                    Ok(s) => s,
                    Err(step) => return step,
                };
            }
        }
        let shielded_note = if shielded > 0 {
            format!(
                "; {shielded} more are held by higher-priority configuration(s) {} and count as settled",
                shielding.join(", ")
            )
        } else {
            String::new()
        };
        let applied = matches!((n.targeted, n.applied), (Some(t), Some(a)) if t == expected && a + shielded >= t);
        if applied {
            let shielded = (shielded > 0).then_some(shielded);
            if let Some(r) = self.st.ring.as_mut() {
                r.state = RingState::Baking;
                r.since = Time(self.now);
                r.applied_at = Some(Time(self.now));
                r.shielded = shielded;
            }
            let now = Time(self.now);
            let rec = self.record(i);
            rec.applied_at = Some(now);
            rec.shielded = shielded;
            let applied = n.applied.unwrap_or(0);
            self.history(
                "Applied",
                Some(i),
                Some(n),
                format!(
                    "the hub applied ring {} to {applied} devices{shielded_note}",
                    self.ring_names[i]
                ),
            );
            return Step::Continue;
        }
        let since = self.st.ring.as_ref().map_or(self.now, |r| r.since.0);
        let deadline = EffectiveGate::for_ring(&self.ro.spec, i).deadline;
        if self.now >= since.checked_add(deadline).unwrap_or(since) {
            let reason = format!(
                "ring {} was not applied within its deadline: the hub reports {} targeted and {} applied, the target matches {expected}",
                self.ring_names[i],
                n.targeted.unwrap_or(0),
                n.applied.unwrap_or(0)
            );
            return self.failure(c, i, n, reason, true);
        }
        if let Some(r) = self.st.ring.as_mut() {
            r.shielded = (shielded > 0).then_some(shielded);
        }
        self.message = format!(
            "waiting for the hub to apply ring {}: {} targeted, {} applied, the target matches {expected}{shielded_note}",
            self.ring_names[i],
            n.targeted.map_or("?".to_string(), |v| v.to_string()),
            n.applied.map_or("?".to_string(), |v| v.to_string())
        );
        Step::Wait(APPLY_POLL)
    }

    fn analyze(&mut self, c: Ours<'a>, i: usize, n: &Numbers, promote: bool) -> Step {
        let g = EffectiveGate::for_ring(&self.ro.spec, i);
        let inputs = GateInputs {
            targeted: n.targeted.unwrap_or(0),
            applied: n.applied.unwrap_or(0),
            metrics: self
                .plan
                .metrics
                .keys()
                .map(|k| (k.clone(), n.metrics.get(k).copied().unwrap_or(0)))
                .collect(),
        };
        let result = gate::evaluate(&g, &inputs);
        if promote {
            self.pass(
                i,
                n,
                format!(
                    "promoted by operator (the gate said {:?}: {})",
                    result.verdict, result.message
                ),
            );
            return Step::Continue;
        }
        let rec = self.record(i);
        rec.verdict = Some(result.verdict);
        rec.message = Some(result.message.clone());
        match result.verdict {
            Verdict::Pass => {
                self.pass(i, n, result.message);
                Step::Continue
            }
            Verdict::Fail => {
                self.history("Fail", Some(i), Some(n), result.message.clone());
                self.failure(
                    c,
                    i,
                    n,
                    format!(
                        "ring {} failed its gate: {}",
                        self.ring_names[i], result.message
                    ),
                    false,
                )
            }
            Verdict::Inconclusive => {
                let since = self.st.ring.as_ref().map_or(self.now, |r| r.since.0);
                let started = self
                    .st
                    .rings
                    .get(i)
                    .and_then(|r| r.started_at.clone())
                    .map_or(since, |t| t.0);
                if self.now >= started.checked_add(g.deadline).unwrap_or(started) {
                    let reason = format!(
                        "ring {} reached its deadline without a verdict: {}",
                        self.ring_names[i], result.message
                    );
                    self.history("Deadline", Some(i), Some(n), reason.clone());
                    return self.failure(c, i, n, reason, true);
                }
                self.message = format!("ring {}: {}", self.ring_names[i], result.message);
                Step::Wait(ANALYZE_POLL)
            }
        }
    }

    fn pass(&mut self, i: usize, n: &Numbers, message: String) {
        let now = Time(self.now);
        let rec = self.record(i);
        rec.verdict = Some(Verdict::Pass);
        rec.passed_at = Some(now);
        rec.message = Some(message.clone());
        self.history("Pass", Some(i), Some(n), message);
        self.enter(i, RingState::Passed);
    }

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

    /// A ring failed (or timed out): apply `onFailure`.
    fn failure(
        &mut self,
        c: Ours<'a>,
        i: usize,
        n: &Numbers,
        reason: String,
        deadline: bool,
    ) -> Step {
        let rec = self.record(i);
        rec.verdict = Some(if deadline {
            Verdict::Inconclusive
        } else {
            Verdict::Fail
        });
        rec.message = Some(reason.clone());
        if deadline {
            self.stalled = Some(("DeadlineExceeded".into(), reason.clone()));
        }
        match self.ro.spec.on_failure {
            OnFailure::Rollback => self.rollback(c, reason),
            OnFailure::Pause => {
                self.enter(i, RingState::Failed);
                self.history(
                    "Hold",
                    Some(i),
                    Some(n),
                    format!("{reason}; onFailure is pause: holding for an operator"),
                );
                self.message = reason.clone();
                self.stalled = Some(("GateFailed".into(), reason));
                Step::Wait(HUMAN_POLL)
            }
        }
    }

    /// Narrows the revision to no device (semantics 4).
    fn rollback(&mut self, c: Ours<'a>, reason: String) -> Step {
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

    // ---- deletion -----------------------------------------------------------------

    fn cleanup(&mut self, ours: &[Ours<'a>], deletion: Deletion) {
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
                Err(Step::Wait(d)) => {
                    self.wait(d);
                    return;
                }
                Err(Step::Continue) => unreachable!("count never continues"),
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

    // ---- the status ---------------------------------------------------------------

    fn finish(mut self) -> Decision {
        let g = self.generation();
        let now = self.now;
        if !self.counts_needed.is_empty() {
            // Counts first; nothing is written until the decision is made with them.
            self.actions.clear();
        }
        let state = self.ring_state();
        let phase = if self.obs.deletion.is_some() {
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
            requeue_after: requeue.max(MIN_REQUEUE),
            counts_needed: self.counts_needed,
            finalized: self.finalized,
        }
    }
}

/// Devices `id` targets but is not applied to because one of `shielding` is applied there;
/// `None` when there is nothing to count (no such configuration, or too long a query).
fn shielded_condition(id: &str, shielding: &[String]) -> Option<Cond> {
    let winners = plan::applied_any(shielding)?;
    let cond = Cond::Expr(format!("configurations.[[{id}]].status='Targeted'")).and(&winners);
    (cond.text().len() <= MAX_QUERY_LEN).then_some(cond)
}

/// True when two content paths touch the same twin property (equal, or one inside the other).
pub fn paths_overlap(a: &str, b: &str) -> bool {
    a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}."))
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
