//! Status bookkeeping in kstatus form: conditions that keep their transition time, a
//! bounded history, ring records.
//!
//! `Ready`, `Reconciling` and `Stalled` follow kstatus: Reconciling is True while the
//! controller is moving the rollout, Stalled is True when it cannot go on without a person
//! (or new content), Ready is True when the current revision is stable everywhere. A
//! condition keeps its `lastTransitionTime` unless its status flips, so a reconcile that
//! changes nothing writes nothing new (docs/design.md, "Implementation notes").

use crate::resources::{DeviceRolloutStatus, HistoryEntry, RingRecord};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Most history entries kept.
pub const MAX_HISTORY: usize = 20;
/// Most handled operation ids kept.
pub const MAX_HANDLED_OPERATIONS: usize = 20;

/// Condition type: True when the current revision is stable on every ring.
pub const READY: &str = "Ready";
/// Condition type: True while the controller is moving the rollout.
pub const RECONCILING: &str = "Reconciling";
/// Condition type: True when the rollout cannot go on without a person or new content.
pub const STALLED: &str = "Stalled";

/// Condition type: True while the rollout waits for its hub's configuration-operation
/// budget (absent otherwise). A condition of its own, so that `message` keeps explaining
/// the rollout's state.
pub const THROTTLED: &str = "Throttled";

/// Removes a condition, if set.
pub fn clear_condition(status: &mut DeviceRolloutStatus, type_: &str) {
    status.conditions.retain(|c| c.type_ != type_);
}

/// Sets a condition; the transition time moves only when the status changes.
pub fn set_condition(
    status: &mut DeviceRolloutStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let value = if value { "True" } else { "False" }.to_string();
    let existing = status.conditions.iter_mut().find(|c| c.type_ == type_);
    match existing {
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Time(now);
            }
            c.status = value;
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = generation;
        }
        None => status.conditions.push(Condition {
            type_: type_.to_string(),
            status: value,
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
    status.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// The condition of a type, if set.
pub fn condition<'a>(status: &'a DeviceRolloutStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Appends to the history, keeping the newest [`MAX_HISTORY`].
pub fn push_history(status: &mut DeviceRolloutStatus, entry: HistoryEntry) {
    status.history.push(entry);
    let excess = status.history.len().saturating_sub(MAX_HISTORY);
    status.history.drain(..excess);
}

/// Records an operation id as handled, keeping the newest [`MAX_HANDLED_OPERATIONS`].
pub fn mark_handled(status: &mut DeviceRolloutStatus, id: &str) {
    status.handled_operations.push(id.to_string());
    let excess = status
        .handled_operations
        .len()
        .saturating_sub(MAX_HANDLED_OPERATIONS);
    status.handled_operations.drain(..excess);
}

/// The record of ring `index`, created (with the records before it) when missing.
pub fn ring_record<'a>(
    status: &'a mut DeviceRolloutStatus,
    index: usize,
    names: &[String],
) -> &'a mut RingRecord {
    while status.rings.len() <= index {
        let i = status.rings.len();
        status.rings.push(RingRecord {
            name: names.get(i).cloned().unwrap_or_default(),
            ..Default::default()
        });
    }
    &mut status.rings[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_flips() {
        let mut s = DeviceRolloutStatus::default();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let t2: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        set_condition(&mut s, READY, false, "Progressing", "a", Some(1), t0);
        set_condition(&mut s, READY, false, "Baking", "b", Some(2), t1);
        let c = condition(&s, READY).unwrap();
        assert_eq!(c.last_transition_time, Time(t0));
        assert_eq!(c.reason, "Baking");
        set_condition(&mut s, READY, true, "Complete", "c", Some(2), t2);
        assert_eq!(condition(&s, READY).unwrap().last_transition_time, Time(t2));
        assert_eq!(s.conditions.len(), 1);
    }

    #[test]
    fn history_is_bounded() {
        let mut s = DeviceRolloutStatus::default();
        for i in 0..30 {
            push_history(
                &mut s,
                HistoryEntry {
                    time: Time(Timestamp::UNIX_EPOCH),
                    decision: format!("d{i}"),
                    revision: None,
                    ring: None,
                    targeted: None,
                    applied: None,
                    metrics: Default::default(),
                    message: String::new(),
                },
            );
        }
        assert_eq!(s.history.len(), MAX_HISTORY);
        assert_eq!(s.history.last().unwrap().decision, "d29");
        assert_eq!(s.history[0].decision, "d10");
    }
}
