//! Judging a targeted ring: it counts as applied once the hub's numbers match what its
//! target selects now, bakes for its gate's `bake`, then the gate gives a verdict; a ring
//! without one by its deadline, or with `Fail`, gets the rollout's `onFailure`
//! (`docs/rollouts.md`, "Gates").

use super::coverage::shielded_condition;
use super::run::{Numbers, Ours, Run, Step};
use super::*;
use crate::core::gate::{self, EffectiveGate, GateInputs};
use crate::resources::{OnFailure, RingState, Verdict};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

impl<'a> Run<'a> {
    /// Waits until the hub reports ring `i` applied.
    pub(super) fn applying(&mut self, c: Ours<'a>, i: usize, n: &Numbers, promote: bool) -> Step {
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
            Err(wait) => return Step::Wait(wait),
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
                    Err(wait) => return Step::Wait(wait),
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
        self.wait_applying(poll(APPLY_POLL, &EffectiveGate::for_ring(&self.ro.spec, i)))
    }

    pub(super) fn analyze(&mut self, c: Ours<'a>, i: usize, n: &Numbers, promote: bool) -> Step {
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
                Step::Wait(poll(ANALYZE_POLL, &g))
            }
        }
    }

    pub(super) fn pass(&mut self, i: usize, n: &Numbers, message: String) {
        let now = Time(self.now);
        let rec = self.record(i);
        rec.verdict = Some(Verdict::Pass);
        rec.passed_at = Some(now);
        rec.message = Some(message.clone());
        self.history("Pass", Some(i), Some(n), message);
        self.enter(i, RingState::Passed);
    }

    /// A ring failed (or timed out): apply `onFailure`.
    pub(super) fn failure(
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

    /// Ring `i` bakes for its gate's `bake` from when it was applied; a promote ends the
    /// bake now.
    pub(super) fn baking(&mut self, i: usize, promote: bool) -> Step {
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
            return Step::Continue;
        }
        let left = done.duration_since(self.now);
        self.message = format!(
            "ring {} is baking: {}s left",
            self.ring_names[i],
            left.as_secs()
        );
        Step::Wait(left.min(BAKE_POLL))
    }

    /// Ring `i` failed and `onFailure` is pause: it waits for an operator. `promote`
    /// passes it, `retry` judges it again from a new start (`abort` is the machine's).
    pub(super) fn failed(&mut self, i: usize, n: &Numbers, promote: bool) -> Step {
        if promote {
            self.pass(i, n, "promoted by operator after the gate failed".into());
            return Step::Continue;
        }
        if std::mem::take(&mut self.requests.retry) {
            self.history(
                "Retry",
                Some(i),
                Some(n),
                "operator asked to judge the ring again".into(),
            );
            self.enter(i, RingState::Applying);
            // A new start: applied, baked and judged again, with a new deadline.
            let now = Time(self.now);
            let rec = self.record(i);
            rec.started_at = Some(now);
            rec.applied_at = None;
            return Step::Continue;
        }
        self.message = format!(
            "ring {} failed and onFailure is pause: promote to go on, abort to roll back, retry to judge again",
            self.ring_names[i]
        );
        self.stalled = Some(("GateFailed".into(), self.message.clone()));
        Step::Wait(HUMAN_POLL)
    }
}

/// How long to wait before looking at a ring again: `base`, but never longer than the
/// ring's bake (at least [`MIN_REQUEUE`]). A ring baked for 10 s is judged about when its
/// bake ends, not a minute later; for bakes of minutes nothing changes.
pub(super) fn poll(base: SignedDuration, gate: &EffectiveGate) -> SignedDuration {
    base.min(gate.bake).max(MIN_REQUEUE)
}
