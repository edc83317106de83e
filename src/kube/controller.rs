//! The `DeviceRollout` controller: the kube shell around [`Driver`].
//!
//! One reconcile reads as a pipeline:
//! 1. **gate**: a replica that is not the leader touches nothing;
//! 2. **finalizer**: a live rollout without `ringmaster.dev/cleanup` gets it first (and
//!    is reconciled again on the change that patch makes);
//! 3. **dereference**: the Hub it names → a cached driver ([`HubClients`]). A Hub, Secret
//!    or key that is missing, or a config that cannot make a client, is written to the
//!    status as `Stalled` ([`hub_stalled`]), announced by one Warning event, and the
//!    reconcile fails so that it is retried with the backoff;
//! 4. **drive**: [`Driver::reconcile`], which reads operator requests and deletion from
//!    the object's annotations and `deletionTimestamp`;
//! 5. **update status**: server-side apply to the status subresource, only when it changed;
//! 6. **events**: one per phase change and per ring change ([`transitions`]);
//! 7. **finalize**: while deleting, the finalizer goes only once the driver says every
//!    configuration of the rollout is gone (`finalized`): a fleet is never stripped of a
//!    configuration silently, and never left with one nobody tracks.
//!
//! Then it waits for as long as the driver asked. Failures back off per object
//! ([`error_policy`]).

use super::hubs::HubClients;
use super::leader::Leadership;
use super::metrics::Metrics;
use super::{Error, FIELD_MANAGER, FINALIZER, HubProblem, Result};
use crate::clock::{Clock, SystemClock};
use crate::core::status::{self, READY, RECONCILING, STALLED};
use crate::driver::Driver;
use crate::resources::{API_VERSION, DeviceRollout, DeviceRolloutStatus, Phase};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// First wait after a failed reconcile; doubled per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest wait after failed reconciles.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client: reads Hubs and Secrets, patches rollouts and their status.
    pub client: Client,
    /// A driver per Hub resource, built and cached on demand.
    pub hubs: Arc<dyn HubClients>,
    /// Publishes the rollouts' Events.
    pub recorder: Recorder,
    /// The controller's Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Whether this replica holds the Lease; only the leader writes.
    pub leader: Leadership,
    /// The time of the conditions the controller sets itself (a stalled Hub).
    pub clock: Arc<dyn Clock>,
    /// namespace/name → consecutive failures, for [`error_policy`].
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context on the system clock with no failures counted yet.
    pub fn new(
        client: Client,
        hubs: Arc<dyn HubClients>,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        leader: Leadership,
    ) -> Context {
        Context {
            client,
            hubs,
            recorder,
            metrics,
            leader,
            clock: Arc::new(SystemClock),
            failures: Mutex::default(),
        }
    }

    /// The same context on another clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Context {
        self.clock = clock;
        self
    }
}

fn key(ro: &DeviceRollout) -> String {
    format!("{}/{}", ro.namespace().unwrap_or_default(), ro.name_any())
}

/// Reconciles one `DeviceRollout` (see the module documentation for the steps).
pub async fn reconcile(ro: Arc<DeviceRollout>, ctx: Arc<Context>) -> Result<Action> {
    // Gate: only the leader writes, to hubs or to the API server.
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    let _timer = ctx.metrics.reconcile_started();
    let key = key(&ro);
    let ns = ro
        .namespace()
        .ok_or_else(|| Error::NoNamespace(ro.name_any()))?;
    let api: Api<DeviceRollout> = Api::namespaced(ctx.client.clone(), &ns);
    let deleting = ro.metadata.deletion_timestamp.is_some();
    let finalizer_at = ro.finalizers().iter().position(|f| f == FINALIZER);

    // Finalizer.
    match (deleting, finalizer_at) {
        (false, None) => {
            add_finalizer(&api, &ro).await?;
            return Ok(Action::await_change());
        }
        (true, None) => {
            // Not ours to clean up (or already cleaned up).
            ctx.metrics.set_phase(&key, None);
            return Ok(Action::await_change());
        }
        _ => {}
    }

    // Dereference and drive.
    let last = ro.status.clone().unwrap_or_default();
    let driver: Arc<Driver> = match ctx
        .hubs
        .driver(&ns, ro.spec.hub.as_deref().unwrap_or("default"))
        .await
    {
        Ok(driver) => driver,
        Err(Error::HubConfig {
            hub,
            problem,
            message,
        }) => {
            let message = if deleting {
                format!("{message}; the finalizer {FINALIZER} stays until the Hub can be reached")
            } else {
                message
            };
            let (next, event) = hub_stalled(
                &last,
                problem,
                &message,
                ro.metadata.generation,
                ctx.clock.now(),
            );
            if next != last {
                patch_status(&api, &ro.name_any(), &next).await?;
            }
            if let Some(event) = event
                && let Err(e) = ctx.recorder.publish(&event, &ro.object_ref(&())).await
            {
                tracing::warn!(rollout = %key, reason = %event.reason, error = %e, "cannot publish an event");
            }
            // Failed: retried with the backoff of `error_policy`, and whenever the Hub changes.
            return Err(Error::HubConfig {
                hub,
                problem,
                message,
            });
        }
        Err(e) => return Err(e),
    };
    // A stall for want of a usable Hub is over: the driver's own conditions replace it.
    // (Cleared here too, so that a hub error on this pass, which keeps the previous
    // conditions, does not leave a stale `HubNotFound` behind.)
    let outcome = driver
        .reconcile(
            &ro,
            &hub_resolved(&last, ro.metadata.generation, ctx.clock.now()),
        )
        .await;
    if let Some(e) = &outcome.error {
        tracing::warn!(rollout = %key, error = %e, "hub error; the status records it");
    }

    // Update status.
    if outcome.status != last {
        patch_status(&api, &ro.name_any(), &outcome.status).await?;
    }

    // Events. A failure to publish one costs the event, not the reconcile: the status
    // that says the same is already written.
    let reference = ro.object_ref(&());
    for event in transitions(&last, &outcome.status) {
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(rollout = %key, reason = %event.reason, error = %e, "cannot publish an event");
        }
    }
    ctx.metrics.observe(&key, &last, &outcome);

    // Finalize.
    if deleting && outcome.finalized {
        remove_finalizer(&api, &ro).await?;
        ctx.metrics.set_phase(&key, None);
        ctx.failures.lock().remove(&key);
        return Ok(Action::await_change());
    }
    ctx.failures.lock().remove(&key);
    Ok(Action::requeue(outcome.requeue_after))
}

/// After a failed reconcile: wait `BACKOFF_BASE × 2^(failures-1)`, at most `BACKOFF_MAX`.
pub fn error_policy(ro: Arc<DeviceRollout>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key(&ro);
    ctx.metrics.reconcile_failed(error.kind());
    let n = {
        let mut f = ctx.failures.lock();
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let wait = backoff(n);
    tracing::warn!(rollout = %key, error = %error, failures = n, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// The wait after `failures` consecutive failures (1 → `BACKOFF_BASE`).
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// Adds the finalizer. A merge patch carrying the `resourceVersion` read, so that a
/// concurrent change to the finalizers list fails with a conflict instead of being lost.
async fn add_finalizer(api: &Api<DeviceRollout>, ro: &DeviceRollout) -> Result<()> {
    let mut finalizers = ro.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": ro.resource_version()}});
    api.patch(
        &ro.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Removes the finalizer (same concurrency guard as [`add_finalizer`]).
async fn remove_finalizer(api: &Api<DeviceRollout>, ro: &DeviceRollout) -> Result<()> {
    let finalizers: Vec<&String> = ro.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": ro.resource_version()}});
    api.patch(
        &ro.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Server-side apply of the whole status, as field manager `ringmaster`. The status types
/// skip every `None` (docs/design.md, "Implementation notes": a `null` would delete the field).
async fn patch_status(
    api: &Api<DeviceRollout>,
    name: &str,
    status: &DeviceRolloutStatus,
) -> Result<()> {
    let patch = status_patch(status);
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The apply configuration for the status subresource.
pub fn status_patch(status: &DeviceRolloutStatus) -> serde_json::Value {
    json!({"apiVersion": API_VERSION, "kind": "DeviceRollout", "status": status})
}

/// The status of a rollout whose Hub cannot be used, and the Warning event to publish if
/// this is news (the stall starts, or its reason changes): `Stalled=True` (reason
/// [`HubProblem::reason`]), `Ready=False`, `Reconciling=False`, `observedGeneration` set,
/// the rest of `last` as it was. A retry that finds the same problem changes nothing and
/// publishes nothing. `message` must hold no secret material (it goes to the status and
/// the event).
pub fn hub_stalled(
    last: &DeviceRolloutStatus,
    problem: HubProblem,
    message: &str,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> (DeviceRolloutStatus, Option<Event>) {
    let reason = problem.reason();
    let mut next = last.clone();
    next.observed_generation = generation;
    status::set_condition(&mut next, STALLED, true, reason, message, generation, now);
    status::set_condition(&mut next, READY, false, reason, message, generation, now);
    status::set_condition(
        &mut next,
        RECONCILING,
        false,
        reason,
        message,
        generation,
        now,
    );
    // News when the stall starts or its reason changes. A new message under the same
    // reason (another key missing, say) updates the status only: the Recorder would fold a
    // second event of the same reason into the first's series, keeping the old note.
    let stall = |s: &DeviceRolloutStatus| {
        status::condition(s, STALLED)
            .filter(|c| c.status == "True")
            .map(|c| c.reason.clone())
    };
    let event = (stall(last) != stall(&next)).then(|| Event {
        type_: EventType::Warning,
        reason: reason.to_string(),
        note: Some(truncate(message.to_string(), 1024)),
        action: "ResolveHub".into(),
        secondary: None,
    });
    (next, event)
}

/// `last` with a `Stalled` condition set by [`hub_stalled`] turned False.
fn hub_resolved(
    last: &DeviceRolloutStatus,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> DeviceRolloutStatus {
    let reasons = HubProblem::ALL.map(HubProblem::reason);
    let mut st = last.clone();
    if status::condition(last, STALLED)
        .is_some_and(|c| c.status == "True" && reasons.contains(&c.reason.as_str()))
    {
        status::set_condition(&mut st, STALLED, false, "HubResolved", "", generation, now);
    }
    st
}

/// The events a status change deserves: the phase changed, or the current ring did.
pub fn transitions(last: &DeviceRolloutStatus, next: &DeviceRolloutStatus) -> Vec<Event> {
    let mut events = Vec::new();
    if next.phase != last.phase
        && let Some(phase) = next.phase
    {
        let from = last
            .phase
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "none".into());
        let mut note = format!("phase {from} → {phase:?}");
        if let Some(m) = &next.message {
            note.push_str(": ");
            note.push_str(m);
        }
        events.push(Event {
            type_: match phase {
                Phase::RolledBack | Phase::Failed => EventType::Warning,
                _ => EventType::Normal,
            },
            reason: format!("{phase:?}"),
            note: Some(truncate(note, 1024)),
            action: "Phase".into(),
            secondary: None,
        });
    }
    events.extend(crate::kube::drift_events::drift_events(last, next));
    let ring_of = |s: &DeviceRolloutStatus| s.ring.as_ref().map(|r| (r.index, r.name.clone()));
    if ring_of(next) != ring_of(last)
        && let Some(ring) = &next.ring
    {
        let revision = next.revision.as_deref().unwrap_or("?");
        events.push(Event {
            type_: EventType::Normal,
            reason: "RingStarted".into(),
            note: Some(format!(
                "revision {revision}: ring {} '{}' ({:?})",
                ring.index, ring.name, ring.state
            )),
            action: "Ring".into(),
            secondary: None,
        });
    }
    events
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
