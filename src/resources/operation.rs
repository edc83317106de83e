//! Operator requests: pause, resume, abort, promote, retry.
//!
//! A request reaches the decision core as an [`Operation`] with an id; the status records
//! the ids it has applied (`status.handledOperations`), so a request takes effect once
//! however often it is seen. In Kubernetes mode a request is the annotation
//! `ringmaster.dev/operation` holding the request as JSON (the CLI writes it); in git and
//! directory modes the local state store keeps a queue of them.
//!
//! A request may name the revision and ring it was aimed at. The core ignores one whose
//! revision or ring is no longer the current one, so a stale `promote` cannot approve a
//! ring the operator never saw, even after the status was lost.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The annotation that carries an operator request in Kubernetes mode.
pub const OPERATION_ANNOTATION: &str = "ringmaster.dev/operation";
/// The annotation that lets a deletion remove configurations even when no lower-priority
/// configuration covers the devices (`"true"`).
pub const FORCE_DELETE_ANNOTATION: &str = "ringmaster.dev/force-delete";

/// What an operator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OperationKind {
    /// Hold the rollout where it is: no widening, no completion (rollbacks still happen).
    Pause,
    /// Lift a pause.
    Resume,
    /// Roll the current revision back now, whatever `onFailure` says.
    Abort,
    /// Approve an approval ring, or pass the current ring without waiting for its gate.
    Promote,
    /// Start a rolled-back revision again from ring 0, or re-judge a failed ring.
    Retry,
}

impl OperationKind {
    /// The lowercase name (`promote`).
    pub fn name(self) -> &'static str {
        match self {
            OperationKind::Pause => "pause",
            OperationKind::Resume => "resume",
            OperationKind::Abort => "abort",
            OperationKind::Promote => "promote",
            OperationKind::Retry => "retry",
        }
    }
}

/// One operator request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Unique per request (the CLI uses the time and a random suffix).
    pub id: String,
    /// What is asked.
    pub kind: OperationKind,
    /// The revision the operator saw; the request is ignored for any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The ring the operator saw (by name); the request is ignored for any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<String>,
}

impl Operation {
    /// A request with no revision or ring attached.
    pub fn new(id: impl Into<String>, kind: OperationKind) -> Self {
        Operation {
            id: id.into(),
            kind,
            revision: None,
            ring: None,
        }
    }

    /// The annotation value for this request.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("an operation serializes")
    }

    /// The requests found in an object's annotations (at most one in Kubernetes mode).
    /// A malformed annotation is ignored: it cannot be acted on, and refusing the whole
    /// rollout for it would be worse.
    pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> Vec<Operation> {
        annotations
            .and_then(|a| a.get(OPERATION_ANNOTATION))
            .and_then(|v| serde_json::from_str(v).ok())
            .into_iter()
            .collect()
    }
}

/// True when the annotations ask for a forced deletion.
pub fn force_delete(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(FORCE_DELETE_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_round_trip() {
        let mut op = Operation::new("op-1", OperationKind::Promote);
        op.ring = Some("early".into());
        let ann = BTreeMap::from([(OPERATION_ANNOTATION.to_string(), op.to_annotation())]);
        assert_eq!(Operation::from_annotations(Some(&ann)), vec![op]);
        let bad = BTreeMap::from([(OPERATION_ANNOTATION.to_string(), "promote".to_string())]);
        assert!(Operation::from_annotations(Some(&bad)).is_empty());
        assert!(!force_delete(Some(&bad)));
    }
}
