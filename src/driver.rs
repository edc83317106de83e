//! The driver: runs the decision core against a hub.
//!
//! One reconcile is a pipeline: validate → observe (list the configurations; count
//! queries the core asks for) → decide → perform the actions in order → return the new
//! status and when to look again. The driver holds the hub's traffic budgets (token
//! buckets refilled per minute, shared by every rollout reconciled through it) and tells
//! the core what is left, so the core never plans more traffic than the hub allows.
//!
//! Every write is idempotent (derived ids): a create that finds the configuration already
//! there, or a delete that finds it gone, has done its job. If a write fails, the
//! reconcile stops there and the *previous* status is returned with the error: the next
//! reconcile observes the hub again and the core, which reads its position from the
//! configurations' labels, picks up from whatever was done. The same holds when the
//! status is lost altogether (a restart without the CR's status, a wiped state store).

use crate::budget::TokenBucket;
use crate::client::Hub;
use crate::clock::Clock;
use crate::core::decide::{self, Action, Budget, Deletion, Observation};
use crate::core::status::{self, READY, RECONCILING, STALLED, THROTTLED};
use crate::core::validate;
use crate::iothub::error::{ErrorCode, HubError};
use crate::resources::operation::force_delete;
use crate::resources::{DeviceRollout, DeviceRolloutStatus, HubLimits, Operation};
use jiff::{SignedDuration, Timestamp};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How often a rollout is looked at when nothing else wakes it, so that drift on the hub
/// is found (`--drift-interval`, `docs/rollouts.md`, "Drift"): every requeue is at most
/// this long. Process-wide: it is a flag of the controller. Default 3 minutes: one
/// listing of the hub's configurations per round, a small part of S1's 20 a minute.
static DRIFT_INTERVAL_SECS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_DRIFT_INTERVAL.as_secs());

/// The default of `--drift-interval`.
pub const DEFAULT_DRIFT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(180);

/// Sets the longest requeue of every rollout (`--drift-interval`); at least 5 seconds.
pub fn set_drift_interval(d: std::time::Duration) {
    DRIFT_INTERVAL_SECS.store(d.as_secs().max(5), std::sync::atomic::Ordering::Relaxed);
}

/// The longest requeue of every rollout (`--drift-interval`).
pub fn drift_interval() -> std::time::Duration {
    std::time::Duration::from_secs(DRIFT_INTERVAL_SECS.load(std::sync::atomic::Ordering::Relaxed))
}

/// What one reconcile did and what comes next.
#[derive(Clone, Debug)]
pub struct ReconcileOutcome {
    /// The status to record.
    pub status: DeviceRolloutStatus,
    /// When to reconcile again.
    pub requeue_after: std::time::Duration,
    /// The hub writes performed (in order).
    pub performed: Vec<Action>,
    /// Count queries run: key -> count.
    pub counts: BTreeMap<String, u64>,
    /// Deletion: every configuration of the rollout is gone; the finalizer may go.
    pub finalized: bool,
    /// A hub error that stopped the reconcile (the status is the previous one, with the
    /// error in its message and conditions).
    pub error: Option<HubError>,
    /// Every request sent to the hub, for the metrics.
    pub requests: Vec<HubRequest>,
    /// Drift found on the hub (`docs/rollouts.md`, "Drift"); empty when the reconcile failed.
    pub drift: Vec<decide::Drift>,
}

/// One request to the hub: what, the HTTP status it got (or would get, for an in-process
/// hub), and how long it took (the client's wait for its request budget included).
#[derive(Clone, Debug, PartialEq)]
pub struct HubRequest {
    /// The operation: `list`, `query`, `create`, `update` or `delete`.
    pub operation: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// How long it took, in seconds.
    pub seconds: f64,
}

impl HubRequest {
    fn of<T>(
        operation: &'static str,
        start: std::time::Instant,
        result: &Result<T, HubError>,
        ok: u16,
    ) -> HubRequest {
        HubRequest {
            operation,
            status: result.as_ref().map_or_else(|e| e.http_status(), |_| ok),
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

/// Inputs besides the rollout and its status, for sources that do not carry them in
/// annotations (git and directory modes).
#[derive(Clone, Debug, Default)]
pub struct ReconcileInput {
    /// Operator requests (promote, abort, retry, …); ids already handled are skipped.
    pub operations: Vec<Operation>,
    /// Set when the rollout is being deleted.
    pub deletion: Option<Deletion>,
    /// The hub's configurations, listed for a round of rollouts reconciled together
    /// ([`Driver::list`]); `None`: this reconcile lists them itself.
    pub listing: Option<Arc<Vec<crate::iothub::configuration::Configuration>>>,
}

impl ReconcileInput {
    /// Operator requests and deletion as a Kubernetes object carries them: the
    /// `ringmaster.dev/operation` annotation, `deletionTimestamp`, and
    /// `ringmaster.dev/force-delete`.
    pub fn from_object(ro: &DeviceRollout) -> ReconcileInput {
        let ann = ro.metadata.annotations.as_ref();
        ReconcileInput {
            operations: Operation::from_annotations(ann),
            deletion: ro.metadata.deletion_timestamp.as_ref().map(|_| Deletion {
                force: force_delete(ann),
            }),
            listing: None,
        }
    }
}

/// The hub's traffic budgets, shared by every rollout reconciled through the driver.
struct Budgets {
    queries: TokenBucket,
    writes: TokenBucket,
}

impl Budgets {
    fn new(limits: &HubLimits, now: Timestamp) -> Budgets {
        let per_minute = |n: u32| TokenBucket::per_minute(f64::from(n.max(1)), now);
        Budgets {
            queries: per_minute(limits.queries_per_minute),
            writes: per_minute(limits.configuration_writes_per_minute),
        }
    }
}

/// How long until `bucket` has one more whole token, at least a second.
fn refill_in(bucket: &TokenBucket) -> SignedDuration {
    SignedDuration::try_from(bucket.next_token_in())
        .unwrap_or(SignedDuration::MAX)
        .max(SignedDuration::from_secs(1))
}

/// Runs the decision core against one hub.
pub struct Driver {
    hub: Arc<dyn Hub>,
    clock: Arc<dyn Clock>,
    limits: HubLimits,
    budgets: Mutex<Budgets>,
}

/// Rounds of count queries per reconcile (each round answers what the core asked for).
const MAX_COUNT_ROUNDS: usize = 4;

impl Driver {
    /// A driver with IoT Hub S1 limits (20 queries and 20 configuration operations a
    /// minute, 100 configurations).
    pub fn new(hub: Arc<dyn Hub>, clock: Arc<dyn Clock>) -> Driver {
        Driver::with_limits(hub, clock, HubLimits::default())
    }

    /// A driver with the limits of a `Hub` resource.
    pub fn with_limits(hub: Arc<dyn Hub>, clock: Arc<dyn Clock>, limits: HubLimits) -> Driver {
        let budgets = Budgets::new(&limits, clock.now());
        Driver {
            hub,
            clock,
            limits,
            budgets: Mutex::new(budgets),
        }
    }

    /// The hub this driver writes to.
    pub fn hub(&self) -> &Arc<dyn Hub> {
        &self.hub
    }

    /// The limits of the hub's `Hub` resource (S1's without one).
    pub fn limits(&self) -> &HubLimits {
        &self.limits
    }

    /// One reconcile, with operator requests and deletion read from the object.
    pub async fn reconcile(
        &self,
        rollout: &DeviceRollout,
        status: &DeviceRolloutStatus,
    ) -> ReconcileOutcome {
        self.reconcile_with(rollout, status, &ReconcileInput::from_object(rollout))
            .await
    }

    /// One reconcile with explicit inputs.
    pub async fn reconcile_with(
        &self,
        rollout: &DeviceRollout,
        last: &DeviceRolloutStatus,
        input: &ReconcileInput,
    ) -> ReconcileOutcome {
        let now = self.clock.now();
        let mut outcome = ReconcileOutcome {
            status: last.clone(),
            requeue_after: std::time::Duration::from_secs(decide::IDLE_POLL.as_secs() as u64),
            performed: Vec::new(),
            counts: BTreeMap::new(),
            finalized: false,
            error: None,
            requests: Vec::new(),
            drift: Vec::new(),
        };

        // Validate: bad input never costs data, and needs no hub traffic. (A rollout being
        // deleted is cleaned up even if its spec no longer validates.)
        let errors = validate::validate_rollout(rollout);
        if !errors.is_empty() && input.deletion.is_none() {
            let d = decide::invalid(rollout, last, &errors, now);
            outcome.status = d.status;
            outcome.requeue_after = to_std(d.requeue_after);
            return outcome;
        }

        // Observe: the round's listing, or one of our own.
        let configurations = match &input.listing {
            Some(shared) => shared.clone(),
            None => match self.list(&mut outcome.requests).await {
                Ok(Ok(c)) => Arc::new(c),
                Ok(Err(wait)) => {
                    // A condition of its own: the message keeps explaining the rollout's
                    // state (a rollback, say), which the wait does not change.
                    status::set_condition(
                        &mut outcome.status,
                        THROTTLED,
                        true,
                        "HubBudget",
                        "waiting for the hub's configuration-operation budget (the Hub's limits.configurationWritesPerMinute)",
                        rollout.metadata.generation,
                        now,
                    );
                    outcome.requeue_after = wait;
                    return outcome;
                }
                Err(e) => return self.failed(outcome, rollout, e, now),
            },
        };
        // The hub answered: a wait for its budget is over.
        let mut unthrottled = last.clone();
        status::clear_condition(&mut unthrottled, THROTTLED);
        let last = &unthrottled;
        outcome.status = last.clone();
        let mut obs = Observation {
            configurations,
            counts: BTreeMap::new(),
            budget: self.budget(now),
            operations: input.operations.clone(),
            deletion: input.deletion,
            max_configurations: self.limits.max_configurations as usize,
        };

        // Decide, running the counts the core asks for.
        let mut decision = decide::decide(rollout, last, &obs, now);
        for _ in 0..MAX_COUNT_ROUNDS {
            if decision.counts_needed.is_empty() {
                break;
            }
            for req in &decision.counts_needed {
                if !self.budgets.lock().queries.try_take(1.0, now) {
                    break;
                }
                let start = std::time::Instant::now();
                let counted = self.hub.count(&req.condition).await;
                outcome
                    .requests
                    .push(HubRequest::of("query", start, &counted, 200));
                match counted {
                    Ok(n) => {
                        obs.counts.insert(req.key.clone(), n);
                        outcome.counts.insert(req.key.clone(), n);
                    }
                    Err(e) => return self.failed(outcome, rollout, e, now),
                }
            }
            obs.budget = self.budget(now);
            decision = decide::decide(rollout, last, &obs, now);
        }

        // Act, in order; stop at the first failure.
        for action in &decision.actions {
            if !self.budgets.lock().writes.try_take(1.0, now) {
                // Another rollout spent the budget since the decision: try again later.
                outcome.requeue_after =
                    to_std(refill_in(&self.budgets.lock().writes).max(decide::MIN_REQUEUE));
                return outcome;
            }
            let start = std::time::Instant::now();
            let (operation, ok, sent) = match action {
                Action::Create(c) => (
                    "create",
                    200,
                    self.hub.create_configuration(c).await.map(|_| ()),
                ),
                Action::Update { config, etag } => {
                    let etag = etag.as_deref().map(quote_etag);
                    (
                        "update",
                        200,
                        self.hub
                            .update_configuration(config, etag.as_deref())
                            .await
                            .map(|_| ()),
                    )
                }
                Action::Delete { id } => {
                    ("delete", 204, self.hub.delete_configuration(id, None).await)
                }
            };
            outcome
                .requests
                .push(HubRequest::of(operation, start, &sent, ok));
            // A create that finds it there, or a delete that finds it gone, did its job.
            let result = match (action, sent) {
                (Action::Create(_), Err(e)) if e.code == ErrorCode::ConfigurationAlreadyExists => {
                    Ok(())
                }
                (Action::Delete { .. }, Err(e)) if e.code == ErrorCode::ConfigurationNotFound => {
                    Ok(())
                }
                (_, other) => other,
            };
            if let Err(e) = result {
                return self.failed(outcome, rollout, e, now);
            }
            outcome.performed.push(action.clone());
        }
        outcome.status = decision.status;
        outcome.requeue_after = to_std(decision.requeue_after);
        outcome.finalized = decision.finalized;
        outcome.drift = decision.drift;
        outcome.requeue_after = outcome.requeue_after.min(drift_interval());
        outcome
    }

    /// Lists the hub's configurations within the budget: listing is a configuration
    /// operation (it counts against the same per-minute throttle as writes). `Ok(Err(wait))`
    /// when the budget is spent. A controller that reconciles several rollouts of this hub
    /// at once lists once and hands the listing to each ([`ReconcileInput::listing`]).
    pub async fn list(
        &self,
        requests: &mut Vec<HubRequest>,
    ) -> Result<
        Result<Vec<crate::iothub::configuration::Configuration>, std::time::Duration>,
        HubError,
    > {
        let now = self.clock.now();
        let listed = {
            let mut b = self.budgets.lock();
            if b.writes.try_take(1.0, now) {
                Ok(())
            } else {
                Err(refill_in(&b.writes))
            }
        };
        if let Err(wait) = listed {
            return Ok(Err(to_std(wait.max(decide::MIN_REQUEUE))));
        }
        let start = std::time::Instant::now();
        let listed = self.hub.list_configurations().await;
        requests.push(HubRequest::of("list", start, &listed, 200));
        listed.map(Ok)
    }

    /// One page of a twin query within the hub's query budget (the same bucket the
    /// reconciles draw from): `Ok(Err(wait))` when the budget is spent, with the time until
    /// a query is allowed again. For reads beside the reconcile (the console's device
    /// lists), so that they never push the controller past the hub's throttle.
    pub async fn query_page(
        &self,
        query: &str,
        page_size: Option<usize>,
        continuation: Option<&str>,
    ) -> Result<Result<crate::iothub::QueryPage, std::time::Duration>, HubError> {
        let now = self.clock.now();
        let taken = {
            let mut b = self.budgets.lock();
            if b.queries.try_take(1.0, now) {
                Ok(())
            } else {
                Err(refill_in(&b.queries))
            }
        };
        if let Err(wait) = taken {
            return Ok(Err(to_std(wait)));
        }
        self.hub.query(query, page_size, continuation).await.map(Ok)
    }

    fn budget(&self, now: Timestamp) -> Budget {
        let mut b = self.budgets.lock();
        // Whole tokens (`as` saturates: a negative count is 0).
        let queries = b.queries.available(now).floor() as u32;
        let writes = b.writes.available(now).floor() as u32;
        let refill = refill_in(&b.queries).min(refill_in(&b.writes));
        Budget {
            queries,
            writes,
            refill,
            applying: decide::applying_poll(queries, writes),
        }
    }

    /// The previous status, with the hub's error in it.
    fn failed(
        &self,
        mut outcome: ReconcileOutcome,
        ro: &DeviceRollout,
        e: HubError,
        now: Timestamp,
    ) -> ReconcileOutcome {
        let g = ro.metadata.generation;
        let st = &mut outcome.status;
        let message = format!("the hub refused: {e}");
        st.message = Some(message.clone());
        // A refusal about the request itself will not go away by retrying: Stalled.
        // Throttling, outages and races are transient: still Reconciling.
        let (stalled, wait) = match e.code {
            ErrorCode::ThrottlingException | ErrorCode::IotHubQuotaExceeded => (false, 60),
            ErrorCode::ServerError
            | ErrorCode::ServiceUnavailable
            | ErrorCode::PreconditionFailed
            | ErrorCode::ConfigurationNotFound => (false, 15),
            _ => (true, 120),
        };
        if stalled {
            status::set_condition(st, STALLED, true, e.code.name(), &message, g, now);
        }
        status::set_condition(st, RECONCILING, !stalled, "HubError", &message, g, now);
        // Not ready while the hub refuses: `Ready` follows the current state.
        let reason = if stalled { e.code.name() } else { "HubError" };
        status::set_condition(st, READY, false, reason, &message, g, now);
        outcome.requeue_after = std::time::Duration::from_secs(wait);
        outcome.error = Some(e);
        outcome
    }
}

/// IoT Hub ignores an unquoted If-Match (docs/design.md §3.3): quote it.
fn quote_etag(etag: &str) -> String {
    if etag.starts_with('"') {
        etag.to_string()
    } else {
        format!("\"{etag}\"")
    }
}

/// A decision's requeue as a std duration: never below [`decide::APPLYING_POLL`] (the
/// core's own floor; only an applying ring goes below [`decide::MIN_REQUEUE`]).
fn to_std(d: SignedDuration) -> std::time::Duration {
    std::time::Duration::try_from(d.max(decide::APPLYING_POLL))
        .unwrap_or(std::time::Duration::from_secs(5))
}

pub mod rings;

#[cfg(test)]
mod tests;
