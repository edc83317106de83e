//! The embedded hub as one object: state behind a lock, written through to the store.
//!
//! One writer at a time holds the lock, changes memory, and commits the same change to
//! SQLite before it returns, so what a caller was told succeeded is on disk. A write is all
//! or nothing: when the operation or the commit fails, memory is rolled back to what the
//! store holds (see [`HubState::begin`]), so memory and disk never disagree. Readers share
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
    /// How hard the SQLite store syncs each commit (ignored in memory).
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
    /// Every registered device (`totalDeviceCount`).
    pub total_device_count: u64,
    /// Devices whose status is `enabled` (`enabledDeviceCount`).
    pub enabled_device_count: u64,
    /// Devices with any other status (`disabledDeviceCount`).
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
            let mut store = hub.inner.store.lock();
            let store = store.as_mut().expect("store just set");
            store.load(&mut st)?;
            store.fold(&st)?;
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

    /// Tests: makes the store refuse (`true`) or accept (`false`) writes.
    #[cfg(test)]
    pub(crate) fn set_store_read_only(&self, on: bool) {
        if let Some(s) = self.inner.store.lock().as_ref() {
            s.set_read_only(on);
        }
    }

    /// The hub's clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }

    /// The current time on the hub's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Runs a mutation under the write lock and commits what it changed before returning.
    ///
    /// All or nothing: when the mutation fails, or the store refuses its changes (disk
    /// full, read-only, I/O error), memory is rolled back to what it was, which is what the
    /// store still holds, and the caller gets the error. Readers wait on the lock, so none
    /// sees a change that is later undone.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut HubState, Timestamp, &mut Changes) -> Result<T>,
    ) -> Result<T> {
        let mut st = self.inner.state.write();
        st.begin();
        let mut ch = Changes::default();
        let out = match f(&mut st, self.inner.clock.now(), &mut ch) {
            Ok(out) => out,
            Err(e) => {
                st.rollback();
                return Err(e);
            }
        };
        if let Some(store) = self.inner.store.lock().as_mut()
            && let Err(e) = store.save(&st, &ch)
        {
            st.rollback();
            let message = format!("{}; nothing was changed", e.message);
            tracing::error!("{message}");
            return Err(HubError::new(e.code, message));
        }
        st.commit();
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

    /// Registers a device with an empty twin; returns it with its etag, generation id and
    /// any generated SAS keys. Fails when the id is taken or invalid, or the store refuses.
    pub fn create_device(&self, device: Device) -> Result<Device> {
        self.write(|st, now, ch| st.create_device(device, None, now, ch))
    }

    /// Creates a device whose twin starts with `twin`'s tags and desired properties.
    pub fn create_device_with_twin(&self, device: Device, twin: &Value) -> Result<Device> {
        self.write(|st, now, ch| st.create_device(device, Some(twin), now, ch))
    }

    /// Creates many devices in one transaction: all of them, or none when any is refused.
    pub fn create_devices(&self, devices: Vec<(Device, Option<Value>)>) -> Result<usize> {
        self.write(|st, now, ch| {
            let n = devices.len();
            for (d, twin) in devices {
                st.create_device(d, twin.as_ref(), now, ch)?;
            }
            Ok(n)
        })
    }

    /// The device identity; `DeviceNotFound` when it is not registered.
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

    /// Updates a device identity (status, keys, capabilities) and returns it with a new
    /// etag. Fails when it is not registered, `etag` does not match, or the store refuses.
    pub fn update_device(&self, device: Device, etag: Option<&str>) -> Result<Device> {
        self.write(|st, now, ch| st.update_device(device, etag, now, ch))
    }

    /// Deletes a device and its twin. Fails when it is not registered, `etag` does not
    /// match, or the store refuses.
    pub fn delete_device(&self, device_id: &str, etag: Option<&str>) -> Result<()> {
        self.write(|st, _, ch| st.delete_device(device_id, etag, ch))
    }

    /// Up to `top` devices in registry order.
    pub fn list_devices(&self, top: usize) -> Vec<Device> {
        self.read(|st| st.slots().take(top).map(|s| s.device.clone()).collect())
    }

    /// Counts of all, enabled and disabled devices.
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

    /// The device's twin as IoT Hub's JSON; `DeviceNotFound` when it is not registered.
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

    /// Every configuration, with its current metrics.
    pub fn list_configurations(&self) -> Vec<Configuration> {
        self.read(|st| st.configurations())
    }

    /// One configuration; `ConfigurationNotFound` when there is none with `id`.
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

#[cfg(test)]
mod tests {
    //! A write is all-or-nothing across memory and disk: what a refused write changed in
    //! memory is undone, so a reopened store shows exactly what memory showed.

    use super::*;
    use crate::clock::ManualClock;
    use crate::iothub::configuration::ConfigurationContent;
    use serde_json::json;

    fn open(path: &Path) -> EmbeddedHub {
        let clock = Arc::new(ManualClock::new("2024-01-01T00:00:00Z".parse().unwrap()));
        EmbeddedHub::open(path, clock, HubOptions::default()).unwrap()
    }

    fn config(id: &str, ring: &str, firmware: &str) -> Configuration {
        Configuration {
            id: id.into(),
            target_condition: format!("tags.ring='{ring}'"),
            priority: 5,
            content: ConfigurationContent {
                device_content: Some(
                    json!({ "properties.desired.firmware": firmware })
                        .as_object()
                        .unwrap()
                        .clone(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Everything a client can read: every twin and every configuration (with counts).
    fn snapshot(hub: &EmbeddedHub) -> (Vec<Value>, Vec<Value>) {
        let twins = hub
            .list_devices(usize::MAX)
            .iter()
            .map(|d| hub.get_twin(&d.device_id).unwrap())
            .collect();
        let configs = hub
            .list_configurations()
            .iter()
            .map(|c| serde_json::to_value(c).unwrap())
            .collect();
        (twins, configs)
    }

    /// What a fresh process would read from the same file.
    fn reopened(path: &Path) -> (Vec<Value>, Vec<Value>) {
        snapshot(&open(path))
    }

    #[test]
    fn a_bulk_create_refused_by_one_entry_creates_none_in_memory_or_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let hub = open(&path);
        // A freed slot, which the first entry takes and the undo gives back.
        hub.create_device(Device::new("gone")).unwrap();
        hub.delete_device("gone", None).unwrap();
        let err = hub
            .create_devices(vec![
                (Device::new("bk0"), None),
                (Device::new("bk1"), Some(json!({ "tags": "x" }))),
            ])
            .unwrap_err();
        assert!(err.message.contains("tags"), "{}", err.message);
        assert!(
            hub.get_device("bk0").is_err(),
            "bk0 must not exist in memory"
        );
        assert_eq!(snapshot(&hub), reopened(&path));
        // The same call without the bad entry goes through.
        assert_eq!(
            hub.create_devices(vec![(Device::new("bk0"), None), (Device::new("bk2"), None)])
                .unwrap(),
            2
        );
        assert!(hub.get_device("gone").is_err());
        assert!(hub.get_device("bk0").is_ok());
        assert_eq!(snapshot(&hub), reopened(&path));
    }

    #[test]
    fn a_write_the_store_refuses_changes_nothing_and_writes_work_once_the_fault_clears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let hub = open(&path);
        hub.create_configuration(&config("fw", "canary", "2"))
            .unwrap();
        hub.create_device_with_twin(Device::new("d1"), &json!({"tags": {"ring": "canary"}}))
            .unwrap();
        hub.run_cycle().unwrap();
        assert_eq!(
            hub.get_twin("d1").unwrap()["properties"]["desired"]["firmware"],
            "2"
        );
        let settled = snapshot(&hub);

        hub.set_store_read_only(true);
        let refused = |e: HubError| {
            assert_eq!(e.code, ErrorCode::ServerError);
            assert!(e.message.contains("hub store"), "{}", e.message);
            assert!(e.message.contains("nothing was changed"), "{}", e.message);
        };
        refused(hub.create_device(Device::new("d2")).unwrap_err());
        assert!(
            hub.get_device("d2").is_err(),
            "a refused create leaves no device"
        );
        refused(
            hub.create_devices(vec![(Device::new("d3"), None), (Device::new("d4"), None)])
                .unwrap_err(),
        );
        refused(
            hub.update_twin("d1", &json!({"tags": {"ring": "early"}}), None)
                .unwrap_err(),
        );
        refused(hub.patch_reported("d1", &json!({"x": 1})).unwrap_err());
        refused(hub.delete_device("d1", None).unwrap_err());
        refused(
            hub.create_configuration(&config("fw3", "canary", "3"))
                .unwrap_err(),
        );
        refused(hub.delete_configuration("fw", None).unwrap_err());
        let mut higher = hub.get_configuration("fw").unwrap();
        higher.priority = 9;
        refused(hub.update_configuration(&higher, None).unwrap_err());
        assert_eq!(
            snapshot(&hub),
            settled,
            "memory is as before the refused writes"
        );

        // A cycle whose result the store refuses is undone as well, and redone later.
        hub.set_store_read_only(false);
        hub.update_twin("d1", &json!({"tags": {"ring": "early"}}), None)
            .unwrap();
        hub.set_store_read_only(true);
        refused(hub.run_cycle().unwrap_err());
        assert_eq!(
            hub.get_twin("d1").unwrap()["properties"]["desired"]["firmware"],
            "2",
            "the refused cycle's change is not in memory"
        );
        let before_cycle = snapshot(&hub);
        hub.set_store_read_only(false);
        // A second process sees what memory shows (its own open-time cycle aside).
        let on_disk = {
            let mut other = Store::open(&path, Durability::Full).unwrap();
            let mut st = HubState::new(Limits::default());
            other.load(&mut st).unwrap();
            st.twin_json("d1").unwrap()
        };
        assert_eq!(on_disk, before_cycle.0[0]);

        // Writes work again, and the undone cycle is redone.
        hub.run_cycle().unwrap();
        assert!(
            hub.get_twin("d1").unwrap()["properties"]["desired"]
                .get("firmware")
                .is_none()
        );
        hub.create_device(Device::new("d2")).unwrap();
        hub.create_configuration(&config("fw3", "early", "3"))
            .unwrap();
        assert_eq!(
            hub.get_twin("d1").unwrap()["properties"]["desired"]["firmware"],
            "3"
        );
        let c = hub.get_configuration("fw3").unwrap();
        assert_eq!(c.system_metrics.results["appliedCount"], 1);
        assert_eq!(snapshot(&hub), reopened(&path));
    }
}
