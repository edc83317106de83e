//! The controller of directory and git modes: takes source snapshots in, reconciles the
//! rollouts that are due through their hub's driver, and records the outcome.
//!
//! - [`Controller::ingest`]: a snapshot → the catalog diff → rollouts' specs in the store
//!   (new and changed ones due now, missing ones marked for deletion);
//! - [`Controller::reconcile_due`]: every due rollout, concurrently, through the driver the
//!   [hub resolver](crate::resolver) gives for its Hub;
//! - `record`: the one way rollouts change, in the store and in memory.
//!
//! A Hub that cannot be used is the rollout's `error` with its typed `hubProblem` (set and
//! cleared by the reconcile, not by the source); a broken source file is its `error`
//! without one.

use super::hubs::HubAccess;
use super::schedule::{Due, ROUND_CONCURRENCY};
use crate::clock::{Clock, SystemClock};
use crate::core::decide::Deletion;
use crate::driver::{Driver, ReconcileInput};
use crate::hub::EmbeddedHub;
use crate::resolver::{HubConfigError, ResolveError, Resolver};
use crate::resources::DeviceRolloutStatus;
use crate::resources::operation::force_delete;
use crate::run::api::ApiState;
use crate::run::sources::{Catalog, Key, Snapshot};
use crate::run::store::StoredRollout;
use anyhow::Result;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// How long a rollout whose Hub cannot be used waits before it is tried again (sooner
/// when its source changes).
const HUB_PROBLEM_RETRY: Duration = Duration::from_secs(30);

/// How long a rollout whose outcome the state store refused (a full or read-only
/// filesystem) waits before it is reconciled and recorded again.
pub const STORE_RETRY: Duration = Duration::from_secs(2);

/// Two versions of a rollout are the same when they serialize the same.
fn same(a: &crate::resources::DeviceRollout, b: &crate::resources::DeviceRollout) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// The controller: source, catalog, hubs, store.
pub struct Controller {
    api: Arc<ApiState>,
    catalog: Catalog,
    /// Drivers by Hub, built from the Hubs of the source and the connection strings of
    /// [`HubAccess`].
    hubs: Resolver<HubAccess>,
    /// The in-process hub's driver (hub `default` without a `Hub` document).
    embedded_driver: Arc<Driver>,
    /// Every rollout as the store holds it, loaded once: only the controller writes
    /// rollouts, and it writes through to the store.
    rollouts: Option<BTreeMap<Key, StoredRollout>>,
    /// When each rollout is due.
    due: HashMap<Key, Due>,
    /// Whether a snapshot was taken in, and the source revision it had.
    ingested_once: bool,
    source_revision: Option<String>,
    /// How the last read of the source ended, as recorded (`None` before the first).
    source_error: Option<Option<String>>,
    /// The `DeviceRings` of the source: when each is due ([`super::rings`]).
    rings: super::rings::Rings,
}

impl Controller {
    /// A controller over a store and an in-process embedded hub.
    pub fn new(
        api: Arc<ApiState>,
        catalog: Catalog,
        embedded: EmbeddedHub,
        access: HubAccess,
    ) -> Controller {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let embedded_driver = Arc::new(Driver::new(Arc::new(embedded.clone()), clock.clone()));
        Controller {
            api,
            catalog,
            hubs: Resolver::shared(access, clock, embedded),
            embedded_driver,
            rollouts: None,
            due: HashMap::new(),
            ingested_once: false,
            source_revision: None,
            source_error: None,
            rings: Default::default(),
        }
    }

    /// The rollouts, read from the store the first time.
    async fn load(&mut self) -> Result<&mut BTreeMap<Key, StoredRollout>> {
        if self.rollouts.is_none() {
            let all = self.api.store.run(|s| s.rollouts()).await?;
            for r in &all {
                self.api
                    .metrics
                    .set_phase(&format!("{}/{}", r.namespace, r.name), Some(r.status.phase));
            }
            self.rollouts = Some(
                all.into_iter()
                    .map(|r| ((r.namespace.clone(), r.name.clone()), r))
                    .collect(),
            );
        }
        Ok(self.rollouts.get_or_insert_default())
    }

    /// Takes a snapshot in: diffs, records files and source errors, updates rollouts'
    /// specs in the store and marks what changed as due.
    ///
    /// When the store refuses a write (a full or read-only filesystem), the error comes
    /// back, the in-memory copy is dropped (it is read again from the store, which is what
    /// survives a restart), and the next snapshot is compared in full, not only by what
    /// changed since this one: what this one brought is recorded once the store takes
    /// writes again.
    pub async fn ingest(&mut self, snap: &Snapshot) -> Result<()> {
        let res = self.ingest_once(snap).await;
        if res.is_err() {
            self.ingested_once = false;
            self.rollouts = None;
        }
        res
    }

    async fn ingest_once(&mut self, snap: &Snapshot) -> Result<()> {
        let changes = self.catalog.apply(snap);
        if changes.emptied {
            self.api.metrics.source_error();
        }
        if changes.is_empty() && self.ingested_once && snap.revision == self.source_revision {
            return Ok(()); // nothing new: the rescan found what the last one did
        }
        self.ingested_once = true;
        self.source_revision = snap.revision.clone();
        for (file, errors) in &changes.failed {
            for e in errors {
                tracing::warn!(file, "{e}; its last good version stays in effect");
            }
        }
        let files: Vec<(String, Option<String>, Option<String>)> = self
            .catalog
            .files()
            .iter()
            .map(|(p, f)| {
                (
                    p.clone(),
                    f.good.as_ref().map(|(t, _)| t.clone()),
                    (!f.errors.is_empty()).then(|| f.errors.join("\n")),
                )
            })
            .collect();
        let errors_by_file: BTreeMap<String, String> = files
            .iter()
            .filter_map(|(p, _, e)| e.clone().map(|e| (p.clone(), e)))
            .collect();
        let (desired, duplicates) = self.catalog.rollouts();
        for d in &duplicates {
            tracing::warn!("{d}");
        }
        let revision = snap.revision.clone();
        self.api
            .store
            .run(move |s| {
                s.put_files(&files)?;
                if let Some(r) = &revision {
                    s.set_meta("sourceRevision", r)?;
                }
                Ok(())
            })
            .await?;
        let stored = self.load().await?.clone();
        let now = Instant::now();
        let mut writes = Vec::new();
        for (key, (file, ro)) in &desired {
            let source_error = errors_by_file
                .get(file)
                .map(|e| format!("source file fails, its last good version is in effect: {e}"));
            // A hub problem found by the reconcile stays until the reconcile clears it.
            let hub_error = stored
                .get(key)
                .filter(|o| o.hub_problem.is_some())
                .map(|o| (o.error.clone(), o.hub_problem));
            let (error, hub_problem) = match (source_error, hub_error) {
                (Some(e), _) => (Some(e), None),
                (None, Some(h)) => h,
                (None, None) => (None, None),
            };
            match stored.get(key) {
                Some(old)
                    if same(&old.rollout, ro)
                        && !old.deleting
                        && old.source == *file
                        && old.error == error
                        && old.hub_problem == hub_problem => {}
                Some(old) => {
                    let changed = !same(&old.rollout, ro) || old.deleting;
                    if changed {
                        self.due.insert(key.clone(), Due::now(now));
                    }
                    // The revision the spec was read at moves only when the spec does (or a
                    // deletion is undone); a broken file keeps the revision of its good version.
                    let source_revision = if changed {
                        snap.revision.clone()
                    } else {
                        old.source_revision.clone()
                    };
                    writes.push(StoredRollout {
                        source: file.clone(),
                        rollout: ro.clone(),
                        deleting: false,
                        error,
                        hub_problem,
                        source_revision,
                        ..old.clone()
                    });
                }
                None => {
                    self.due.insert(key.clone(), Due::now(now));
                    writes.push(StoredRollout {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        source: file.clone(),
                        rollout: ro.clone(),
                        status: DeviceRolloutStatus::default(),
                        deleting: false,
                        error,
                        hub_problem,
                        created: jiff::Timestamp::now().to_string(),
                        source_revision: snap.revision.clone(),
                    });
                }
            }
        }
        for (key, old) in &stored {
            if !desired.contains_key(key) && !old.deleting {
                tracing::info!(rollout = %format!("{}/{}", key.0, key.1), file = %old.source, "its file is gone: deleting the rollout");
                self.due.insert(key.clone(), Due::now(now));
                writes.push(StoredRollout {
                    deleting: true,
                    error: None,
                    hub_problem: None,
                    ..old.clone()
                });
            }
        }
        let (rings, duplicates) = self.catalog.device_rings();
        for d in &duplicates {
            tracing::warn!("{d}");
        }
        self.rings.ingest(&self.api, rings, &errors_by_file, now);
        self.record(writes, Vec::new(), Vec::new()).await?;
        self.api.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Records how the last read of the source ended: `Some(error)` when it failed (the
    /// API's `sourceError`), `None` when it succeeded. A failed write is logged.
    pub async fn source_read(&mut self, error: Option<String>) {
        if self.source_error.as_ref() == Some(&error) {
            return;
        }
        self.source_error = Some(error.clone());
        let res = self
            .api
            .store
            .run(move |s| s.set_meta("sourceError", error.as_deref().unwrap_or("")))
            .await;
        if let Err(e) = res {
            tracing::error!("cannot record the source's state: {e:#}");
        }
    }

    /// Waits for the `DeviceRings` passes that run (on a task of their own, see
    /// [`super::rings`]; tests).
    pub async fn rings_passed(&mut self) {
        self.rings.wait().await;
    }

    /// Makes every rollout due now (tests; a forced resync).
    pub fn reconcile_all_now(&mut self) {
        self.due.clear();
        self.rings.all_now();
    }

    /// The driver for a rollout's hub: the resolver's for a Hub of the source, the
    /// in-process hub's for `default` when the source has no Hub of that name.
    async fn driver_for(&self, ro: &StoredRollout) -> Result<Arc<Driver>, HubConfigError> {
        let name = ro.rollout.spec.hub.as_deref().unwrap_or("default");
        self.hub_driver(&ro.namespace, name).await
    }

    /// The driver for Hub `name` in `namespace` (see [`Controller::driver_for`]).
    async fn hub_driver(&self, namespace: &str, name: &str) -> Result<Arc<Driver>, HubConfigError> {
        let hubs = self.catalog.hubs();
        let hub = hubs.get(&(namespace.to_string(), name.to_string()));
        if hub.is_none() && name == "default" {
            return Ok(self.embedded_driver.clone());
        }
        match self.hubs.driver(namespace, name, hub).await {
            Ok(d) => Ok(d),
            Err(ResolveError::Hub(e)) => Err(e),
            Err(ResolveError::Source(never)) => match never {},
        }
    }

    /// Reconciles every rollout that is due (or has a queued request) as one round,
    /// concurrently: the rollouts of one hub share its driver and budget, and one listing
    /// of its configurations. Returns when the next round is due.
    ///
    /// When the store refuses to record the round (a full or read-only filesystem), the
    /// error comes back and the in-memory copy is dropped, to be read again from the
    /// store: memory never holds what the store does not. The rollouts stay due as their
    /// outcomes said, and their next reconcile records them once the store takes writes.
    pub async fn reconcile_due(&mut self) -> Result<Option<Instant>> {
        let res = self.reconcile_round().await;
        if res.is_err() {
            self.rollouts = None;
        }
        // The DeviceRings of the source: a pass each when due (they keep no store state).
        let due = self.rings.due(&self.api, Instant::now());
        let mut resolved = Vec::with_capacity(due.len());
        for (key, hub) in due {
            let driver = self.hub_driver(&key.0, &hub).await;
            resolved.push((key, driver));
        }
        self.rings.pass(&self.api, resolved);
        let rings_next = self.rings.next_due();
        res.map(|next| match (next, rings_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn reconcile_round(&mut self) -> Result<Option<Instant>> {
        let mut ops = self.api.store.run(|s| s.all_operations()).await?;
        let now = Instant::now();
        self.load().await?;
        let cache = self.rollouts.as_ref().expect("loaded");
        let due: Vec<StoredRollout> = cache
            .iter()
            .filter(|(k, _)| ops.contains_key(*k) || self.due.get(*k).is_none_or(|d| d.at <= now))
            .map(|(_, r)| r.clone())
            .collect();
        let mut work = Vec::new();
        let mut writes = Vec::new();
        for mut r in due {
            let key = (r.namespace.clone(), r.name.clone());
            match self.driver_for(&r).await {
                Ok(driver) => {
                    self.api.drivers.lock().insert(key.clone(), driver.clone());
                    let input = ReconcileInput {
                        operations: ops.remove(&key).unwrap_or_default(),
                        // The file is gone: its last good version's annotation decides.
                        deletion: r.deleting.then(|| Deletion {
                            force: force_delete(r.rollout.metadata.annotations.as_ref()),
                        }),
                        listing: None,
                    };
                    work.push((r, driver, input));
                }
                Err(e) => {
                    self.api.metrics.reconcile_failed("hub_config");
                    // The reason first, as `status` and the API show it (no secret in it).
                    let msg = format!("{}: {e}", e.problem);
                    tracing::warn!(rollout = %format!("{}/{}", key.0, key.1), "{msg}");
                    self.due.insert(key, Due::after(now, HUB_PROBLEM_RETRY));
                    if r.error.as_deref() != Some(msg.as_str()) || r.hub_problem != Some(e.problem)
                    {
                        r.error = Some(msg);
                        r.hub_problem = Some(e.problem);
                        writes.push(r);
                    }
                }
            }
        }
        // One listing per hub for the round, when more than one of its rollouts is in it.
        let mut per_driver: HashMap<*const Driver, (Arc<Driver>, usize)> = HashMap::new();
        for (_, d, _) in &work {
            per_driver
                .entry(Arc::as_ptr(d))
                .or_insert_with(|| (d.clone(), 0))
                .1 += 1;
        }
        let mut listings = HashMap::new();
        for (ptr, (driver, n)) in per_driver {
            if n > 1 {
                let mut requests = Vec::new();
                let listed = driver.list(&mut requests).await;
                self.api.metrics.hub_requests(&requests);
                if let Ok(Ok(list)) = listed {
                    listings.insert(ptr, Arc::new(list));
                }
            }
        }
        for (_, d, input) in &mut work {
            input.listing = listings.get(&Arc::as_ptr(d)).cloned();
        }
        // At most ROUND_CONCURRENCY at once: a round of a thousand rollouts holds a
        // thousand decisions' worth of memory otherwise.
        let api = self.api.clone();
        let results: Vec<_> = futures::stream::iter(work.into_iter().map(|(r, driver, input)| {
            let api = api.clone();
            async move {
                let _timer = api.metrics.reconcile_started();
                let outcome = driver.reconcile_with(&r.rollout, &r.status, &input).await;
                (r, outcome, !input.operations.is_empty())
            }
        }))
        .buffer_unordered(ROUND_CONCURRENCY)
        .collect()
        .await;
        let mut removed = Vec::new();
        let mut handled_ops = Vec::new();
        for (mut r, outcome, had_ops) in results {
            let key = (r.namespace.clone(), r.name.clone());
            let who = format!("{}/{}", key.0, key.1);
            self.api.metrics.observe(&who, &r.status, &outcome);
            if let Some(e) = &outcome.error {
                tracing::warn!(rollout = %who, "hub error: {e}");
            }
            for h in outcome
                .status
                .history
                .iter()
                .filter(|h| !r.status.history.contains(h))
            {
                tracing::info!(rollout = %who, decision = %h.decision, "{}", h.message);
            }
            if r.deleting && outcome.finalized {
                tracing::info!(rollout = %who, "deleted: every configuration is gone");
                self.due.remove(&key);
                self.api.drivers.lock().remove(&key);
                removed.push(key);
                continue;
            }
            // A deletion that removed configurations is finalized by the next look; it
            // need not wait the usual requeue after a write.
            let requeue = if r.deleting && !outcome.performed.is_empty() && outcome.error.is_none()
            {
                Duration::from_secs(1)
            } else {
                outcome.requeue_after
            };
            self.due
                .insert(key.clone(), Due::after(Instant::now(), requeue));
            if had_ops {
                handled_ops.push((key, outcome.status.handled_operations.clone()));
            }
            // The hub was reached: a hub problem is over (a source error stays).
            let error = r.error.clone().filter(|_| r.hub_problem.is_none());
            if outcome.status == r.status && error == r.error && r.hub_problem.is_none() {
                continue; // nothing to record: an idle poll writes nothing
            }
            r.error = error;
            r.hub_problem = None;
            r.status = outcome.status;
            writes.push(r);
        }
        let recorded: Vec<Key> = writes
            .iter()
            .map(|r| (r.namespace.clone(), r.name.clone()))
            .chain(removed.iter().cloned())
            .collect();
        if let Err(e) = self.record(writes, removed, handled_ops).await {
            let now = Instant::now();
            for k in recorded {
                self.due.insert(k, Due::after(now, STORE_RETRY));
            }
            return Err(e);
        }
        Ok(self.due.values().map(|d| d.latest).min())
    }

    /// Writes rollouts, removes finished ones and drops handled requests in the store, then
    /// brings the in-memory copy and the by-phase gauges in line: the one way rollouts
    /// change.
    async fn record(
        &mut self,
        writes: Vec<StoredRollout>,
        removed: Vec<Key>,
        handled: Vec<(Key, Vec<String>)>,
    ) -> Result<()> {
        if writes.is_empty() && removed.is_empty() && handled.is_empty() {
            return Ok(());
        }
        let (writes, removed) = self
            .api
            .store
            .run(move |s| {
                for r in &writes {
                    s.put_rollout(r)?;
                }
                for (ns, n) in &removed {
                    s.remove_rollout(ns, n)?;
                }
                for ((ns, n), ops) in &handled {
                    s.remove_operations(ns, n, ops)?;
                }
                Ok((writes, removed))
            })
            .await?;
        let api = self.api.clone();
        let cache = self.load().await?;
        for r in writes {
            api.metrics
                .set_phase(&format!("{}/{}", r.namespace, r.name), Some(r.status.phase));
            cache.insert((r.namespace.clone(), r.name.clone()), r);
        }
        for k in removed {
            api.metrics.set_phase(&format!("{}/{}", k.0, k.1), None);
            cache.remove(&k);
        }
        Ok(())
    }
}
