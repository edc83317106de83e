//! The decision in progress ([`Run`]) and the bookkeeping every part shares: the
//! budget (counts and writes), the requeue, the history, and the ring the status is on.
//! A part asks for what it needs through these, so that no part can spend more than the
//! hub's budget or requeue sooner than [`MIN_REQUEUE`].

use super::requests::Requests;
use super::{APPLYING_POLL, Action, CountRequest, MIN_REQUEUE, Observation};
use crate::core::plan::{Cond, Plan};
use crate::core::revision::{ConfigState, Marks};
use crate::core::status;
use crate::iothub::configuration::Configuration;
use crate::resources::{
    DeviceRollout, DeviceRolloutStatus, HistoryEntry, RingRecord, RingState, RingStatus,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;

/// One of this rollout's configurations with what its labels say.
#[derive(Clone, Copy)]
pub(super) struct Ours<'a> {
    pub(super) config: &'a Configuration,
    pub(super) revision: &'a str,
    /// The widest ring its target includes.
    pub(super) ring: usize,
    pub(super) state: ConfigState,
}

impl Ours<'_> {
    /// The marks the configuration carries.
    pub(super) fn marks(&self) -> Marks {
        Marks::read(&self.config.labels)
    }
}

/// The numbers a configuration reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Numbers {
    pub(super) targeted: Option<u64>,
    pub(super) applied: Option<u64>,
    pub(super) metrics: BTreeMap<String, u64>,
}

/// The numbers `c` reports (negative values, which the hub never sends, read as 0).
pub(super) fn numbers(c: &Configuration) -> Numbers {
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

/// Whether the state machine should look again in this decision or stop.
pub(super) enum Step {
    /// The state changed: look at the new one in this decision.
    Continue,
    /// Stop here and look again within this long.
    Wait(SignedDuration),
}

/// The decision in progress: what it reads, what it has decided so far, and what it may
/// still spend. Each part of the decision is an `impl` block on it in its own file.
pub(super) struct Run<'a> {
    pub(super) ro: &'a DeviceRollout,
    pub(super) plan: &'a Plan,
    pub(super) obs: &'a Observation,
    pub(super) now: Timestamp,
    pub(super) st: DeviceRolloutStatus,
    pub(super) ring_names: Vec<String>,
    pub(super) actions: Vec<Action>,
    pub(super) counts_needed: Vec<CountRequest>,
    pub(super) queries_left: u32,
    pub(super) writes_left: u32,
    pub(super) requeue: Option<SignedDuration>,
    pub(super) requests: Requests,
    pub(super) finalized: bool,
    /// A stall to report (reason, message); cleared each decision.
    pub(super) stalled: Option<(String, String)>,
    /// One of the actions only writes marks (nothing to look at soon after it).
    pub(super) marks_write: bool,
    pub(super) message: String,
    /// Which of the hub's budgets this decision waits for: the `Throttled` condition, never
    /// the message (which keeps explaining the rollout's state, a rollback say).
    pub(super) throttled: Option<String>,
    /// Configurations being put back after drift (their update is not a spec change).
    pub(super) healing: Vec<String>,
    /// What differs between the hub and the status ([`super::drift`]).
    pub(super) drifts: Vec<super::Drift>,
}

impl<'a> Run<'a> {
    pub(super) fn new(
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
            throttled: None,
            healing: Vec::new(),
            drifts: Vec::new(),
        }
    }

    /// The spec generation this decision observes.
    pub(super) fn generation(&self) -> Option<i64> {
        self.ro.metadata.generation
    }

    /// Asks to look again within `d` (the shortest wait any part asks for wins).
    pub(super) fn wait(&mut self, d: SignedDuration) {
        let d = d.max(MIN_REQUEUE);
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    /// Asks to look again at a ring the hub is applying within `usual`, or sooner when
    /// the hub's budgets allow ([`Budget::applying`], which may be below
    /// [`MIN_REQUEUE`]).
    pub(super) fn wait_applying(&mut self, usual: SignedDuration) -> Step {
        let d = usual
            .max(MIN_REQUEUE)
            .min(self.obs.budget.applying.max(APPLYING_POLL));
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
        Step::Wait(usual)
    }

    /// Takes one configuration write from the budget; false when none is left.
    pub(super) fn take_write(&mut self) -> bool {
        if self.writes_left == 0 {
            return false;
        }
        self.writes_left -= 1;
        true
    }

    /// Waits for the hub's budget to grow again, saying which one ran out.
    pub(super) fn budget_wait(&mut self, what: &str) -> Step {
        self.throttled = Some(format!("waiting for the hub's {what} budget"));
        Step::Wait(self.obs.budget.refill)
    }

    /// A count from the observation, or a request for it: `Err` holds how long to wait
    /// (for the driver to run the count, or for the query budget to grow).
    pub(super) fn count(&mut self, key: String, condition: &Cond) -> Result<u64, SignedDuration> {
        if let Some(n) = self.obs.counts.get(&key) {
            return Ok(*n);
        }
        if self.queries_left == 0 {
            self.throttled = Some("waiting for the hub's query budget".to_string());
            return Err(self.obs.budget.refill);
        }
        self.queries_left -= 1;
        self.counts_needed.push(CountRequest {
            key,
            condition: condition.text().to_string(),
        });
        Err(MIN_REQUEUE)
    }

    /// Adds an entry to the status's history.
    pub(super) fn history(
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

    /// Puts the status on ring `index` in `state`, starting now, with no numbers yet.
    pub(super) fn set_ring(&mut self, index: usize, state: RingState) {
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

    /// The state of the ring the status is on.
    pub(super) fn ring_state(&self) -> Option<RingState> {
        self.st.ring.as_ref().map(|r| r.state)
    }

    /// The index of the ring the status is on (0 before any).
    pub(super) fn ring_index(&self) -> usize {
        self.st.ring.as_ref().map_or(0, |r| r.index as usize)
    }

    /// Ring `index`'s record in the status (created on first use).
    pub(super) fn record(&mut self, index: usize) -> &mut RingRecord {
        status::ring_record(&mut self.st, index, &self.ring_names)
    }

    /// Moves ring `i` to `state` now (keeping its numbers when the status is on it).
    pub(super) fn enter(&mut self, i: usize, state: RingState) {
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

    /// Records the configuration's numbers on ring `i` and its record.
    pub(super) fn observe_numbers(&mut self, i: usize, n: &Numbers) {
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
}
