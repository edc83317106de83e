//! The `DeviceRollout` controller: the kube shell around [`Driver`].
//!
//! The watch delivers plain objects; [`reconcile_object`] reads each on its own (one that
//! cannot be read is marked `InvalidSpec` and stops nothing else) and hands it to
//! [`reconcile`]. One reconcile reads as a pipeline:
//! 1. **gate**: a replica that is not the leader touches nothing;
//! 2. **finalizer**: a live rollout without `ringmaster.dev/cleanup` gets it first (and
//!    is reconciled again on the change that patch makes);
//! 3. **dereference**: the Hub it names → a cached driver ([`HubClients`]). A Hub, Secret
//!    or key that is missing, or a config that cannot make a client, is written to the
//!    status as `Stalled` ([`hub_stalled`]), announced by one Warning event, and the
//!    reconcile fails so that it is retried with the backoff;
//! 4. **drive**: [`Driver::reconcile_with`] on the pass's shared listing of the hub
//!    ([`Listings`]), reading operator requests and deletion from the object's
//!    annotations and `deletionTimestamp`;
//! 5. **update status**: server-side apply to the status subresource, only when it changed;
//! 6. **events**: one per phase change and per ring change ([`transitions`]), each a new
//!    Event ([`Events`]);
//! 7. **finalize**: while deleting, the finalizer goes only once the driver says every
//!    configuration of the rollout is gone (`finalized`): a fleet is never stripped of a
//!    configuration silently, and never left with one nobody tracks. The removal is
//!    guarded by the resourceVersion of step 5's write.
//!
//! Then it waits for as long as the driver asked. Failures back off per object
//! ([`error_policy`]).

use super::events::Events;
use super::hubs::HubClients;
use super::leader::Leadership;
use super::listings::Listings;
use super::metrics::Metrics;
use super::{Error, FIELD_MANAGER, FINALIZER, HubProblem, Result};
use crate::clock::{Clock, SystemClock};
use crate::core::status::{self, READY, RECONCILING, STALLED};
use crate::driver::{Driver, ReconcileInput};
use crate::resources::{API_VERSION, DeviceRollout, DeviceRolloutStatus, Phase};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// First wait after a failed reconcile; doubled per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Longest wait after failed reconciles.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The look after a deletion removed configurations: the pass that finds them gone
/// removes the finalizer.
pub const DELETION_RECHECK: Duration = Duration::from_secs(1);

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client: reads Hubs and Secrets, patches rollouts and their status.
    pub client: Client,
    /// A driver per Hub resource, built and cached on demand.
    pub hubs: Arc<dyn HubClients>,
    /// Publishes the rollouts' Events.
    pub events: Events,
    /// The listing of each hub's configurations, shared by a pass's reconciles.
    pub listings: Listings,
    /// The controller's Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Whether this replica holds the Lease; only the leader writes.
    pub leader: Leadership,
    /// The time of the conditions the controller sets itself (a stalled Hub).
    pub clock: Arc<dyn Clock>,
    /// False while the controller cannot list rollouts (`/readyz`).
    pub ready: Arc<AtomicBool>,
    /// namespace/name → consecutive failures, for [`error_policy`].
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context on the system clock with no failures counted yet.
    pub fn new(
        client: Client,
        hubs: Arc<dyn HubClients>,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        leader: Leadership,
    ) -> Context {
        Context {
            events: Events::new(client.clone(), reporter),
            listings: Listings::default(),
            client,
            hubs,
            metrics,
            leader,
            clock: Arc::new(SystemClock),
            ready: Arc::new(AtomicBool::new(true)),
            failures: Mutex::default(),
        }
    }

    /// The same context reporting its readiness in `ready` (shared with `/readyz`).
    pub fn with_ready(mut self, ready: Arc<AtomicBool>) -> Context {
        self.ready = ready;
        self
    }

    /// The same context on another clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Context {
        self.clock = clock;
        self
    }

    /// Publishes an event; a failure costs the event (logged), not the reconcile.
    async fn publish(&self, key: &str, event: &Event, regarding: &ObjectReference) {
        if let Err(e) = self.events.publish(event, regarding).await {
            tracing::warn!(rollout = %key, reason = %event.reason, error = %bounded(&e.to_string()), "cannot publish an event");
        }
    }
}

/// The longest error text a log line carries: an API error can hold a whole response
/// (a list of every rollout, say).
pub const MAX_LOGGED_ERROR: usize = 512;

/// `text` cut to [`MAX_LOGGED_ERROR`] bytes, saying how much was left out.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_LOGGED_ERROR {
        return text.to_string();
    }
    let cut = truncate(text.to_string(), MAX_LOGGED_ERROR);
    let left = text.len() - cut.len();
    format!("{cut}… ({left} more bytes)")
}

fn key<K: Resource>(ro: &K) -> String {
    format!("{}/{}", ro.namespace().unwrap_or_default(), ro.name_any())
}

/// Reconciles one `DeviceRollout` (see the module documentation for the steps).
pub async fn reconcile(ro: Arc<DeviceRollout>, ctx: Arc<Context>) -> Result<Action> {
    // Gate: only the leader writes, to hubs or to the API server.
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    let _timer = ctx.metrics.reconcile_started();
    let key = key(&*ro);
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
    // The resourceVersion the finalizer's removal is guarded by: the object's, or the one
    // our own status write gave it (sending the one read before that write would conflict
    // with ourselves, every time).
    let mut version = ro.resource_version();

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
            if let Some(event) = event {
                ctx.publish(&key, &event, &ro.object_ref(&())).await;
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
    // One listing of the hub's configurations per pass, shared with the other
    // reconciles of this hub ([`Listings`]).
    let mut input = ReconcileInput::from_object(&ro);
    let mut listed = Vec::new();
    input.listing = ctx.listings.listing(&driver, &mut listed).await;
    // A stall for want of a usable Hub is over: the driver's own conditions replace it.
    // (Cleared here too, so that a hub error on this pass, which keeps the previous
    // conditions, does not leave a stale `HubNotFound` behind.)
    let mut outcome = driver
        .reconcile_with(
            &ro,
            &hub_resolved(&last, ro.metadata.generation, ctx.clock.now()),
            &input,
        )
        .await;
    listed.append(&mut outcome.requests);
    outcome.requests = listed;
    if !outcome.performed.is_empty() || outcome.error.is_some() {
        ctx.listings.wrote(&driver);
    }
    if let Some(e) = &outcome.error {
        tracing::warn!(rollout = %key, error = %e, "hub error; the status records it");
    }
    // Update status.
    if outcome.status != last {
        let written = patch_status(&api, &ro.name_any(), &outcome.status).await?;
        version = written.resource_version().or(version);
    }

    // Events. A failure to publish one costs the event, not the reconcile: the status
    // that says the same is already written.
    let reference = ro.object_ref(&());
    for event in transitions(&last, &outcome.status) {
        ctx.publish(&key, &event, &reference).await;
    }
    ctx.metrics.observe(&key, &last, &outcome);

    // Finalize.
    if deleting && outcome.finalized {
        remove_finalizer(&api, &ro, version).await?;
        ctx.metrics.set_phase(&key, None);
        ctx.failures.lock().remove(&key);
        return Ok(Action::await_change());
    }
    ctx.failures.lock().remove(&key);
    // A deletion that removed configurations is finalized by the next look; it need not
    // wait the usual requeue after a write (as in run mode).
    if deleting && !outcome.performed.is_empty() && outcome.error.is_none() {
        return Ok(Action::requeue(DELETION_RECHECK));
    }
    Ok(Action::requeue(outcome.requeue_after))
}

/// Reconciles a rollout as the watch delivered it, read leniently: an object that
/// cannot be read as a `DeviceRollout` (an integer out of range, stored before the
/// schema bounded it, say) is marked `Stalled=True, reason InvalidSpec` with a message
/// naming the field, and announced by a Warning event; it never stops the others.
pub async fn reconcile_object(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action> {
    match read_rollout(&obj) {
        Ok(ro) => reconcile(Arc::new(ro), ctx).await,
        Err(message) => unreadable(&obj, &message, &ctx).await,
    }
}

/// The `DeviceRollout` an object holds, or what keeps it from being one: the field's
/// path and serde's complaint (`spec.priority: invalid value: integer `3000000000`,
/// expected i32`).
pub fn read_rollout(obj: &DynamicObject) -> std::result::Result<DeviceRollout, String> {
    let mut value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    if let Some(map) = value.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| json!(API_VERSION));
        map.entry("kind").or_insert_with(|| json!("DeviceRollout"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = truncate(e.inner().to_string(), 300);
        format!("{}: {inner}", e.path())
    })
}

/// The status and event of a rollout that cannot be read (see [`reconcile_object`]).
async fn unreadable(obj: &DynamicObject, problem: &str, ctx: &Context) -> Result<Action> {
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    let key = key(obj);
    let ns = obj
        .namespace()
        .ok_or_else(|| Error::NoNamespace(obj.name_any()))?;
    let last: DeviceRolloutStatus = obj
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    let (next, event) = unreadable_status(&last, problem, obj.metadata.generation, ctx.clock.now());
    tracing::warn!(rollout = %key, problem = %bounded(problem), "cannot read the DeviceRollout; the others go on");
    ctx.metrics.set_phase(&key, Some(next.phase));
    if next != last {
        let ar = kube::api::ApiResource::erase::<DeviceRollout>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
        if let Err(e) = patch_status(&api, &obj.name_any(), &next).await {
            // An API server without CRD validation ratcheting validates the whole object
            // on a status write and refuses it for the very field at fault. The Warning
            // event below still says it.
            tracing::warn!(rollout = %key, error = %bounded(&e.to_string()), "cannot record InvalidSpec in the status; the Warning event says it");
        }
    }
    if let Some(event) = event {
        ctx.publish(
            &key,
            &event,
            &obj.object_ref(&kube::api::ApiResource::erase::<DeviceRollout>(&())),
        )
        .await;
    }
    // Nothing to retry: a change to the object (a fixed spec) wakes it.
    Ok(Action::await_change())
}

/// The status of a rollout that cannot be read: `Failed`, `Stalled=True, reason
/// InvalidSpec` naming the field, `Ready` and `Reconciling` False; and the Warning event
/// to publish when this is news (the message changed).
pub fn unreadable_status(
    last: &DeviceRolloutStatus,
    problem: &str,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> (DeviceRolloutStatus, Option<Event>) {
    let message = format!(
        "the object cannot be read: {problem}; fix that field (`ringmaster validate` and the CRD's schema say what is valid)"
    );
    let mut next = last.clone();
    next.observed_generation = generation;
    next.phase = Some(Phase::Failed);
    next.message = Some(format!("invalid spec: {message}"));
    status::set_condition(
        &mut next,
        STALLED,
        true,
        "InvalidSpec",
        &message,
        generation,
        now,
    );
    status::set_condition(
        &mut next,
        READY,
        false,
        "InvalidSpec",
        &message,
        generation,
        now,
    );
    status::set_condition(
        &mut next,
        RECONCILING,
        false,
        "InvalidSpec",
        "waiting for a valid spec",
        generation,
        now,
    );
    let news = status::condition(last, STALLED).map(|c| (&c.status, &c.reason, &c.message))
        != status::condition(&next, STALLED).map(|c| (&c.status, &c.reason, &c.message));
    let event = news.then(|| Event {
        type_: EventType::Warning,
        reason: "InvalidSpec".into(),
        note: Some(truncate(message, 1024)),
        action: "Read".into(),
        secondary: None,
    });
    (next, event)
}

/// After a failed reconcile: wait `BACKOFF_BASE × 2^(failures-1)`, at most `BACKOFF_MAX`.
pub fn error_policy<K: Resource>(ro: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key(&*ro);
    ctx.metrics.reconcile_failed(error.kind());
    let n = {
        let mut f = ctx.failures.lock();
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let wait = backoff(n);
    tracing::warn!(rollout = %key, error = %bounded(&error.to_string()), failures = n, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// The wait after `failures` consecutive failures (1 → `BACKOFF_BASE`).
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// The parameters of the controller's merge patches: its field manager, so that
/// `managedFields` says who wrote the finalizer (not "unknown").
fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Adds the finalizer. A merge patch carrying the `resourceVersion` read, so that a
/// concurrent change to the finalizers list fails with a conflict instead of being lost.
async fn add_finalizer(api: &Api<DeviceRollout>, ro: &DeviceRollout) -> Result<()> {
    let mut finalizers = ro.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": ro.resource_version()}});
    api.patch(&ro.name_any(), &merge_params(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Removes the finalizer (same concurrency guard as [`add_finalizer`]), guarded by
/// `version`: the object's resourceVersion after this reconcile's own status write.
async fn remove_finalizer(
    api: &Api<DeviceRollout>,
    ro: &DeviceRollout,
    version: Option<String>,
) -> Result<()> {
    let finalizers: Vec<&String> = ro.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": version}});
    api.patch(&ro.name_any(), &merge_params(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Server-side apply of the whole status, as field manager `ringmaster`. The status types
/// skip every `None` (docs/design.md, "Implementation notes": a `null` would delete the field).
/// Returns the object as written (its new resourceVersion).
async fn patch_status<K>(api: &Api<K>, name: &str, status: &DeviceRolloutStatus) -> Result<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = status_patch(status);
    Ok(api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?)
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
    // A rollout that never got going has a phase too (`kubectl get dro` shows it).
    next.phase.get_or_insert(Phase::Pending);
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
    // reason (another key missing, say) updates the status only: retries must not repeat
    // the event.
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

/// `last` with the conditions [`hub_stalled`] set replaced: `Stalled` False
/// (`HubResolved`), and `Ready` and `Reconciling` saying the hub is being reached (the
/// driver's own conditions replace these, or keep them on a hub error: they must not
/// keep naming a problem that is gone).
pub fn hub_resolved(
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
    let message = "the Hub is resolved; reaching the hub";
    if status::condition(last, READY).is_some_and(|c| reasons.contains(&c.reason.as_str())) {
        status::set_condition(
            &mut st,
            READY,
            false,
            "HubResolved",
            message,
            generation,
            now,
        );
    }
    if status::condition(last, RECONCILING).is_some_and(|c| reasons.contains(&c.reason.as_str())) {
        status::set_condition(
            &mut st,
            RECONCILING,
            true,
            "HubResolved",
            message,
            generation,
            now,
        );
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
