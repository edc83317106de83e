//! Operator requests: each id is applied once (recorded in `status.handledOperations`),
//! and only when it is aimed at the current revision and ring. `pause` and `resume` take
//! effect here; `promote`, `abort` and `retry` are noted for the part that acts on the
//! current state (`docs/rollouts.md`, "Operator requests").

use super::run::Run;
use crate::core::revision::label_value;
use crate::core::status;
use crate::resources::{OperationKind, PauseState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Operator requests that apply to this decision.
#[derive(Default)]
pub(super) struct Requests {
    pub(super) promote: bool,
    pub(super) abort: bool,
    pub(super) retry: bool,
}

impl<'a> Run<'a> {
    /// Applies each new operator request once.
    pub(super) fn operations(&mut self) {
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
}
