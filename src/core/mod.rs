//! The decision core: pure functions from a rollout, its last status, what the hub
//! reports and the time, to the hub writes to make and the next status.
//!
//! Pipeline: [`validate`] (every mode runs it before anything else) → [`plan`] (targets,
//! scoped metric queries, configurations; ids and labels in [`revision`]) → [`decide`](mod@decide)
//! (the state machine, with [`gate`] verdicts and [`status`] bookkeeping). Nothing here
//! does I/O or reads a clock: no tokio, kube client, HTTP or SQLite. The
//! [`crate::driver`] performs what the core decides.

pub mod decide;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod gate;
pub mod plan;
pub mod revision;
pub mod rings;
pub mod status;
pub mod validate;

pub use decide::{Action, Budget, CountRequest, Decision, Deletion, Observation, decide, invalid};
pub use validate::{FieldError, validate_hub, validate_rollout};
