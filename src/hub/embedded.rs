//! The embedded hub as one object: state behind a lock, written through to the store.
//!
//! One writer at a time holds the lock, changes memory, and commits the same change to
//! SQLite before it returns, so what a caller was told succeeded is on disk. Readers share
//! the lock. A configuration change runs an engine cycle inside the same critical section
//! (IoT Hub: "when you modify a configuration, the changes immediately replicate"); twin
//! changes are picked up by the periodic cycle ([`EmbeddedHub::spawn_cycles`] or an explicit
//! [`EmbeddedHub::run_cycle`] in virtual time).

use super::engine::CycleStats;
use super::state::{Changes, HubState, Limits};
use super::store::{Durability, Store};
use crate::clock::Clock;
use crate::iothub::configuration::{Configuration, DEFAULT_MAX_CONFIGURATIONS};
use crate::iothub::device::Device;
use crate::iothub::error::{ErrorCode, HubError, Result};
use crate::iothub::page::{QueryPage, TestQueriesResult};
use crate::iothub::query::{Condition, ItemType, Query};
use jiff::Timestamp;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// How an embedded hub is set up.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// Most configurations (100 like S1; 10 like the free tier).
    pub max_configurations: usize,
    pub durability: Durability,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            max_configurations: DEFAULT_MAX_CONFIGURATIONS,
            durability: Durability::Full,
        }
    }
}

struct Inner {
    state: RwLock<HubState>,
    store: Mutex<Option<Store>>,
    clock: Arc<dyn Clock>,
}

/// An in-process IoT hub. Cheap to clone; clones share the hub.
#[derive(Clone)]
pub struct EmbeddedHub {
    inner: Arc<Inner>,
}

/// Device counts as `GET /statistics/devices` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatistics {
    pub total_device_count: u64,
    pub enabled_device_count: u64,
    pub disabled_device_count: u64,
}

impl EmbeddedHub {
    /// A hub with no persistence (tests, benchmarks, the demo).
    pub fn in_memory(clock: Arc<dyn Clock>) -> EmbeddedHub {
        Self::build(None, clock, HubOptions::default())
    }

    /// Opens a hub persisted in the SQLite file at `path` (created if missing).
    pub fn open(path: &Path, clock: Arc<dyn Clock>, options: HubOptions) -> Result<EmbeddedHub> {
        let store = Store::open(path, options.durability)?;
        let hub = Self::build(Some(store), clock, options);
        {
            let mut st = hub.inner.state.write();
            let store = hub.inner.store.lock();
            store.as_ref().expect("store just set").load(&mut st)?;
            // Rebuild targets, owners' statuses and counts from what was stored.
            let mut ch = Changes::default();
            st.run_cycle(hub.inner.clock.now(), &mut ch);
        }
        // Persist whatever the restart cycle changed (normally nothing).
        hub.run_cycle()?;
        Ok(hub)
    }

    /// An in-memory hub with options (configuration quota).
    pub fn in_memory_with(clock: Arc<dyn Clock>, options: HubOptions) -> EmbeddedHub {
        Self::build(None, clock, options)
    }

    fn build(store: Option<Store>, clock: Arc<dyn Clock>, options: HubOptions) -> EmbeddedHub {
        EmbeddedHub {
            inner: Arc::new(Inner {
                state: RwLock::new(HubState::new(Limits {
                    max_configurations: options.max_configurations,
                })),
                store: Mutex::new(store),
                clock,
            }),
        }
    }

    /// How many handles share this hub (tests: proves a dropped hub is really gone).
    #[cfg(test)]
    pub(crate) fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// The hub's clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }

    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Runs a mutation under the write lock and commits what it changed before returning.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut HubState, Timestamp, &mut Changes) -> Result<T>,
    ) -> Result<T> {
        let mut st = self.inner.state.write();
        let mut ch = Changes::default();
        let out = f(&mut st, self.inner.clock.now(), &mut ch)?;
        if let Some(store) = self.inner.store.lock().as_mut() {
            store.save(&st, &ch)?;
        }
        Ok(out)
    }

    /// Read access to the whole state (the fleet simulator and benchmarks use it).
    pub fn read<R>(&self, f: impl FnOnce(&HubState) -> R) -> R {
        f(&self.inner.state.read())
    }

    /// A value from the store's `meta` table (`None` in memory).
    pub fn store_meta(&self, key: &str) -> Result<Option<String>> {
        match self.inner.store.lock().as_ref() {
            Some(s) => s.meta(key),
            None => Ok(None),
        }
    }

    /// Writes a value into the store's `meta` table (ignored in memory).
    pub fn set_store_meta(&self, key: &str, value: &str) -> Result<()> {
        match self.inner.store.lock().as_ref() {
            Some(s) => s.set_meta(key, value),
            None => Ok(()),
        }
    }

    // ----- devices -----------------------------------------------------------------

    pub fn create_device(&self, device: Device) -> Result<Device> {
        self.write(|st, now, ch| st.create_device(device, None, now, ch))
    }

    /// Creates a device whose twin starts with `twin`'s tags and desired properties.
    pub fn create_device_with_twin(&self, device: Device, twin: &Value) -> Result<Device> {
        self.write(|st, now, ch| st.create_device(device, Some(twin), now, ch))
    }

    /// Creates many devices in one transaction; stops at the first error (nothing is
    /// written when any fails).
    pub fn create_devices(&self, devices: Vec<(Device, Option<Value>)>) -> Result<usize> {
        let mut st = self.inner.state.write();
        // Check everything first so that a bad entry writes nothing.
        let mut seen = std::collections::HashSet::new();
        for (d, _) in &devices {
            d.validate()?;
            if st.slot(&d.device_id).is_some() || !seen.insert(d.device_id.clone()) {
                return Err(HubError::new(
                    ErrorCode::DeviceAlreadyExists,
                    format!("A device with ID '{}' is already registered", d.device_id),
                ));
            }
        }
        let now = self.inner.clock.now();
        let mut ch = Changes::default();
        let n = devices.len();
        for (d, twin) in devices {
            st.create_device(d, twin.as_ref(), now, &mut ch)?;
        }
        if let Some(store) = self.inner.store.lock().as_mut() {
            store.save(&st, &ch)?;
        }
        Ok(n)
    }

    pub fn get_device(&self, device_id: &str) -> Result<Device> {
        self.read(|st| {
            st.slot(device_id).map(|s| s.device.clone()).ok_or_else(|| {
                HubError::new(
                    ErrorCode::DeviceNotFound,
                    format!("Device {device_id} not registered"),
                )
            })
        })
    }

    pub fn update_device(&self, device: Device, etag: Option<&str>) -> Result<Device> {
        self.write(|st, now, ch| st.update_device(device, etag, now, ch))
    }

    pub fn delete_device(&self, device_id: &str, etag: Option<&str>) -> Result<()> {
        self.write(|st, _, ch| st.delete_device(device_id, etag, ch))
    }

    /// Up to `top` devices in registry order.
    pub fn list_devices(&self, top: usize) -> Vec<Device> {
        self.read(|st| st.slots().take(top).map(|s| s.device.clone()).collect())
    }

    pub fn statistics(&self) -> DeviceStatistics {
        self.read(|st| {
            let mut s = DeviceStatistics::default();
            for slot in st.slots() {
                s.total_device_count += 1;
                if slot.device.status == "enabled" {
                    s.enabled_device_count += 1;
                } else {
                    s.disabled_device_count += 1;
                }
            }
            s
        })
    }

    // ----- twins --------------------------------------------------------------------

    pub fn get_twin(&self, device_id: &str) -> Result<Value> {
        self.read(|st| st.twin_json(device_id))
    }

    /// Service-side partial update (PATCH): merge of tags and desired, `null` deletes.
    pub fn update_twin(&self, device_id: &str, patch: &Value, etag: Option<&str>) -> Result<Value> {
        self.write(|st, now, ch| st.update_twin(device_id, patch, etag, false, now, ch))
    }

    /// Service-side replace (PUT): tags and desired are replaced whole.
    pub fn replace_twin(&self, device_id: &str, twin: &Value, etag: Option<&str>) -> Result<Value> {
        self.write(|st, now, ch| st.update_twin(device_id, twin, etag, true, now, ch))
    }

    /// Device-side reported patch; returns the new reported `$version`.
    pub fn patch_reported(&self, device_id: &str, patch: &Value) -> Result<i64> {
        self.write(|st, now, ch| st.patch_reported(device_id, patch, now, ch))
    }

    /// Many reported patches in one transaction (the simulated fleet's tick). Each result
    /// stands alone: a refused patch does not stop the others.
    pub fn patch_reported_many(&self, patches: &[(String, Value)]) -> Result<Vec<Result<i64>>> {
        self.write(|st, now, ch| {
            Ok(patches
                .iter()
                .map(|(id, p)| st.patch_reported(id, p, now, ch))
                .collect())
        })
    }

    // ----- configurations ---------------------------------------------------------

    pub fn list_configurations(&self) -> Vec<Configuration> {
        self.read(|st| st.configurations())
    }

    pub fn get_configuration(&self, id: &str) -> Result<Configuration> {
        self.read(|st| {
            st.configuration(id)
                .map(|c| c.config.clone())
                .ok_or_else(|| {
                    HubError::new(
                        ErrorCode::ConfigurationNotFound,
                        format!("configuration '{id}' does not exist"),
                    )
                })
        })
    }

    /// Creates a configuration and applies it at once.
    pub fn create_configuration(&self, config: &Configuration) -> Result<Configuration> {
        self.write(|st, now, ch| {
            let c = st.create_configuration(config, now, ch)?;
            st.run_cycle(now, ch);
            Ok(st
                .configuration(&c.id)
                .map(|s| s.config.clone())
                .unwrap_or(c))
        })
    }

    /// Updates the mutable fields and applies the change at once.
    pub fn update_configuration(
        &self,
        config: &Configuration,
        etag: Option<&str>,
    ) -> Result<Configuration> {
        self.write(|st, now, ch| {
            let c = st.update_configuration(config, etag, now, ch)?;
            st.run_cycle(now, ch);
            Ok(st
                .configuration(&c.id)
                .map(|s| s.config.clone())
                .unwrap_or(c))
        })
    }

    /// Deletes a configuration; its twins fall back at once.
    pub fn delete_configuration(&self, id: &str, etag: Option<&str>) -> Result<()> {
        self.write(|st, now, ch| {
            st.delete_configuration(id, etag, ch)?;
            st.run_cycle(now, ch);
            Ok(())
        })
    }

    /// Validates a target condition and metric queries (`POST /configurations/testQueries`).
    pub fn test_queries(
        &self,
        target: &str,
        metrics: &BTreeMap<String, String>,
    ) -> TestQueriesResult {
        let mut r = TestQueriesResult::default();
        if !target.trim().is_empty()
            && let Err(e) = Condition::parse(target)
        {
            r.target_condition_error = e.to_string();
        }
        for (name, q) in metrics {
            if let Err(e) = Query::parse(q) {
                r.custom_metric_query_errors
                    .insert(name.clone(), e.to_string());
            }
        }
        r
    }

    // ----- queries and the engine -------------------------------------------------

    /// One page of a twin query.
    pub fn query(
        &self,
        query: &str,
        page_size: Option<usize>,
        continuation: Option<&str>,
    ) -> Result<QueryPage> {
        let (ty, items, continuation) = self.read(|st| st.query(query, page_size, continuation))?;
        Ok(QueryPage {
            item_type: match ty {
                ItemType::Twin => "twin".into(),
                ItemType::Raw => "raw".into(),
            },
            items,
            continuation,
        })
    }

    /// Runs one configuration cycle now and commits what it changed.
    pub fn run_cycle(&self) -> Result<CycleStats> {
        self.write(|st, now, ch| Ok(st.run_cycle(now, ch)))
    }

    /// Runs a cycle every `interval` of wall time until the returned handle is aborted.
    pub fn spawn_cycles(&self, interval: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let h = hub.clone();
                match tokio::task::spawn_blocking(move || h.run_cycle()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "configuration cycle failed"),
                    Err(e) => tracing::error!(error = %e, "configuration cycle panicked"),
                }
            }
        })
    }
}
