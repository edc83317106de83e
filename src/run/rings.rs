//! `DeviceRings` in directory and git modes (`docs/rings.md`): the resources the source
//! holds get a pass ([`RingsDriver`]) on their hub at least every [`MAX_INTERVAL`], at
//! once when they are new or their spec changed, sooner while tag writes are pending.
//!
//! Their state lives in memory ([`ApiState::rings`], served as `GET /api/v1/devicerings`):
//! a pass reads the hub's twins again anyway, so nothing is lost on a restart but the
//! counters of the last pass. The generation counts the spec versions this process has
//! seen (1 for the first), so that `observedGeneration` says whether the status is of the
//! spec in the file.
//!
//! Passes run on a task of their own, so that a slow hub (a read of 100 pages, a burst of
//! tag writes, a request that hangs until its timeout) holds up no rollout's reconcile and
//! no operator request; a `DeviceRings` has one pass at a time, and the end of a pass
//! wakes the loop.
//!
//! A `DeviceRings` whose file is gone gets no more passes: the tags it wrote stay on the
//! twins (rollouts target them; removing them would take devices out of their rings).
//!
//! The [`RingsDriver`] of a hub is made from the rollouts' [`Driver`] the
//! [hub resolver](crate::resolver) gives for it (its client and limits), and made again
//! when the resolver makes a new one (the Hub or its secret changed).

use crate::driver::Driver;
use crate::driver::rings::{RingsDriver, RingsOutcome};
use crate::resolver::{HubConfigError, HubProblem};
use crate::resources::{DeviceRings, DeviceRingsSpec, DeviceRingsStatus};
use crate::run::api::ApiState;
use crate::run::sources::Key;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The longest a `DeviceRings` waits for its next pass: a device that starts matching its
/// target gets its tag within about this long.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// How long a `DeviceRings` whose Hub cannot be used waits before it is tried again (at
/// once when its file changes).
const HUB_PROBLEM_RETRY: Duration = Duration::from_secs(30);

/// Passes run at once (each on its own hub's budget).
const CONCURRENCY: usize = 4;

/// A `DeviceRings` of the source as the controller runs it: what `GET /api/v1/devicerings`
/// shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RingsEntry {
    /// Its namespace (`default` when the file gives none).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The file it comes from, relative to the source root.
    pub source: String,
    /// The spec versions seen by this process (1 for the first).
    pub generation: i64,
    /// The spec in effect (of the file's last good version).
    pub spec: DeviceRingsSpec,
    /// What the last pass found and did.
    pub status: DeviceRingsStatus,
    /// The file's problems, when its last good version is in effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_error: Option<String>,
    /// Why its Hub cannot be used (no secret in it); cleared once a pass reaches the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_error: Option<String>,
    /// The kind of problem of `hubError`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_problem: Option<HubProblem>,
    /// When the last pass ended (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_pass: Option<String>,
}

impl RingsEntry {
    /// The resource as a pass gets it: the spec, namespace and generation.
    fn resource(&self) -> DeviceRings {
        let mut r = DeviceRings::new(&self.name, self.spec.clone());
        r.metadata.namespace = Some(self.namespace.clone());
        r.metadata.generation = Some(self.generation);
        r
    }

    /// The `Hub` it names (`default` when omitted).
    pub fn hub(&self) -> &str {
        self.spec.hub.as_deref().unwrap_or("default")
    }
}

/// When each `DeviceRings` is due, and the rings driver of each hub.
#[derive(Default)]
pub(crate) struct Rings {
    due: Arc<Mutex<HashMap<Key, Instant>>>,
    /// Those whose pass is running.
    in_flight: Arc<Mutex<HashSet<Key>>>,
    /// The tasks running passes.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// By the address of the rollouts' driver it was made from (kept alive here, so the
    /// address is not reused while the entry exists).
    drivers: HashMap<usize, (Arc<Driver>, Arc<RingsDriver>)>,
}

impl Rings {
    /// Takes the source's `DeviceRings` in: new ones and changed specs are due now; ones
    /// whose file is gone are dropped (their tags stay).
    pub(crate) fn ingest(
        &mut self,
        api: &ApiState,
        desired: BTreeMap<Key, (String, DeviceRings)>,
        errors_by_file: &BTreeMap<String, String>,
        now: Instant,
    ) {
        let mut entries = api.rings.lock();
        let gone: Vec<Key> = entries
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = entries.remove(&key) {
                tracing::info!(devicerings = %format!("{}/{}", key.0, key.1), file = %old.source, "its file is gone: no more passes; the tags it wrote stay");
            }
            self.due.lock().remove(&key);
            for (_, d) in self.drivers.values() {
                d.forget(&key.0, &key.1);
            }
        }
        for (key, (file, r)) in desired {
            let source_error = errors_by_file
                .get(&file)
                .map(|e| format!("source file fails, its last good version is in effect: {e}"));
            match entries.get_mut(&key) {
                Some(e) => {
                    if e.spec != r.spec {
                        e.spec = r.spec;
                        e.generation += 1;
                        self.due.lock().insert(key.clone(), now);
                    }
                    e.source = file;
                    e.source_error = source_error;
                }
                None => {
                    self.due.lock().insert(key.clone(), now);
                    entries.insert(
                        key.clone(),
                        RingsEntry {
                            namespace: key.0.clone(),
                            name: key.1.clone(),
                            source: file,
                            generation: 1,
                            spec: r.spec,
                            status: DeviceRingsStatus::default(),
                            source_error,
                            hub_error: None,
                            hub_problem: None,
                            last_pass: None,
                        },
                    );
                }
            }
        }
    }

    /// The `DeviceRings` due by `now`, with the `Hub` each names: `(key, hub name)`.
    pub(crate) fn due(&self, api: &ApiState, now: Instant) -> Vec<(Key, String)> {
        let (due, in_flight) = (self.due.lock(), self.in_flight.lock());
        let entries = api.rings.lock();
        entries
            .iter()
            .filter(|(k, _)| !in_flight.contains(*k))
            .filter(|(k, _)| due.get(*k).is_none_or(|at| *at <= now))
            .map(|(k, e)| (k.clone(), e.hub().to_string()))
            .collect()
    }

    /// Makes every `DeviceRings` due now.
    pub(crate) fn all_now(&mut self) {
        self.due.lock().clear();
    }

    /// When the next `DeviceRings` is due (the end of a running pass wakes the loop).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let in_flight = self.in_flight.lock();
        self.due
            .lock()
            .iter()
            .filter(|(k, _)| !in_flight.contains(*k))
            .map(|(_, at)| *at)
            .min()
    }

    /// Waits for the passes that run.
    pub(crate) async fn wait(&mut self) {
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }

    fn rings_driver(&mut self, driver: &Arc<Driver>) -> Arc<RingsDriver> {
        // Drivers the resolver replaced go (with their queues: the next pass reads again).
        self.drivers.retain(|_, (d, _)| Arc::strong_count(d) > 1);
        let at = Arc::as_ptr(driver) as usize;
        self.drivers
            .entry(at)
            .or_insert_with(|| {
                let rings = RingsDriver::new(
                    driver.hub().clone(),
                    Arc::new(crate::clock::SystemClock),
                    driver.limits(),
                );
                (driver.clone(), Arc::new(rings))
            })
            .1
            .clone()
    }

    /// Starts a pass of each due `DeviceRings` whose hub resolved (`Ok`) on a task, at
    /// most [`CONCURRENCY`] at once; a hub problem is recorded and tried again later.
    pub(crate) fn pass(
        &mut self,
        api: &Arc<ApiState>,
        resolved: Vec<(Key, Result<Arc<Driver>, HubConfigError>)>,
    ) {
        self.tasks.retain(|t| !t.is_finished());
        let mut work = Vec::new();
        for (key, driver) in resolved {
            let Some(entry) = api.rings.lock().get(&key).cloned() else {
                continue;
            };
            match driver {
                Ok(driver) => work.push((key, entry, self.rings_driver(&driver))),
                Err(e) => {
                    let msg = format!("{}: {e}", e.problem);
                    tracing::warn!(devicerings = %format!("{}/{}", key.0, key.1), "{msg}");
                    self.due
                        .lock()
                        .insert(key.clone(), Instant::now() + HUB_PROBLEM_RETRY);
                    if let Some(en) = api.rings.lock().get_mut(&key) {
                        en.hub_error = Some(msg);
                        en.hub_problem = Some(e.problem);
                    }
                }
            }
        }
        if work.is_empty() {
            return;
        }
        self.in_flight
            .lock()
            .extend(work.iter().map(|(k, _, _)| k.clone()));
        let (api, due, in_flight) = (api.clone(), self.due.clone(), self.in_flight.clone());
        self.tasks.push(tokio::spawn(async move {
            let done: Vec<_> =
                futures::stream::iter(work.into_iter().map(|(key, entry, driver)| async move {
                    let r = entry.resource();
                    let outcome = driver.reconcile(&r, &entry.status).await;
                    (key, entry.generation, driver, outcome)
                }))
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            record(&api, &due, &in_flight, done);
            api.wake.notify_one();
        }));
    }
}

/// What a pass gives back: the key, the generation it ran on, its driver, its outcome.
type Done = (Key, i64, Arc<RingsDriver>, RingsOutcome);

/// Records what passes found, and when each `DeviceRings` is due next.
fn record(
    api: &ApiState,
    due: &Mutex<HashMap<Key, Instant>>,
    in_flight: &Mutex<HashSet<Key>>,
    done: Vec<Done>,
) {
    let now = Instant::now();
    let mut entries = api.rings.lock();
    let mut due = due.lock();
    let mut in_flight = in_flight.lock();
    for (key, generation, driver, outcome) in done {
        in_flight.remove(&key);
        let who = format!("{}/{}", key.0, key.1);
        if outcome.updates > 0 || outcome.queries > 0 {
            tracing::debug!(devicerings = %who, queries = outcome.queries, updates = outcome.updates, "pass");
        }
        let Some(e) = entries.get_mut(&key) else {
            // Its file went while the pass ran.
            driver.forget(&key.0, &key.1);
            continue;
        };
        if e.status.message != outcome.status.message
            && let Some(m) = &outcome.status.message
        {
            tracing::info!(devicerings = %who, "{m}");
        }
        e.status = outcome.status;
        e.hub_error = None;
        e.hub_problem = None;
        e.last_pass = Some(jiff::Timestamp::now().to_string());
        // A spec changed while the pass ran stays due now.
        if e.generation == generation {
            due.insert(key, now + outcome.requeue_after.min(MAX_INTERVAL));
        }
    }
}
