//! What one embedded hub holds: every device, twin and configuration, as plain data with no
//! locks and no I/O. [`super::EmbeddedHub`] wraps [`HubState`] with a lock and the SQLite
//! store.
//!
//! The operations are split by job over three files, each an `impl HubState` block:
//! - here: the data itself, the slots devices live in, and restoring from the store;
//! - [`super::registry`]: devices, twins, and twin queries with their paging;
//! - [`super::engine`]: configurations and the incremental engine that applies them.

use super::bitset::BitSet;
use super::engine::ConfigState;
use super::index::Columns;
use super::registry::scan_slots;
use crate::iothub::configuration::DEFAULT_MAX_CONFIGURATIONS;
use crate::iothub::device::Device;
use crate::iothub::query::Condition;
use crate::iothub::twin::{Section, Twin, TwinRow};
use parking_lot::Mutex;
use std::collections::HashMap;

/// Status of a configuration in a twin's `configurations` map that targets the twin but
/// lost every content path to a higher-priority configuration (the SDKs serialize statuses
/// lowercase).
pub const STATUS_TARGETED: &str = "targeted";
/// Status of a configuration whose content the twin holds (at least one path won, or the
/// configuration has no content).
pub const STATUS_APPLIED: &str = "applied";

/// One device: identity, twin, and which configuration owns each content path it holds.
#[derive(Clone, Debug)]
pub struct Slot {
    /// The identity (keys, status, etag).
    pub device: Device,
    /// The twin document.
    pub twin: Twin,
    /// `(content path, configuration id)`, sorted by path.
    pub owners: Vec<(String, String)>,
    /// `(configuration id, applied?)`, sorted by id: the engine's copy of the twin's
    /// `configurations` map, so that deciding "did anything change" compares a few
    /// strings instead of rebuilding JSON.
    pub statuses: Vec<(String, bool)>,
}

impl Slot {
    /// A slot restored from storage: the status copy is read back from the twin.
    pub fn restored(device: Device, twin: Twin, owners: Vec<(String, String)>) -> Slot {
        let mut statuses: Vec<(String, bool)> = twin
            .section(Section::Configurations)
            .iter()
            .map(|(id, v)| (id.clone(), v["status"].as_str() == Some(STATUS_APPLIED)))
            .collect();
        statuses.sort();
        Slot {
            device,
            twin,
            owners,
            statuses,
        }
    }

    /// The slot as a row the query language evaluates.
    pub fn row(&self) -> TwinRow<'_> {
        TwinRow {
            device: &self.device,
            twin: &self.twin,
        }
    }
}

/// Limits of one hub.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most configurations the hub holds at once.
    pub max_configurations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_configurations: DEFAULT_MAX_CONFIGURATIONS,
        }
    }
}

/// What a mutation or cycle changed, for the store to persist.
#[derive(Debug, Default)]
pub struct Changes {
    /// Devices whose identity or twin changed (the store rewrites their rows).
    pub devices: Vec<String>,
    /// Twins only the engine changed: the configuration layer of their desired
    /// properties, their `configurations` statuses and versions (the store writes a small
    /// layer row, not the twin).
    pub layers: Vec<String>,
    /// Devices deleted.
    pub deleted_devices: Vec<String>,
    /// Configurations created or updated.
    pub configurations: Vec<String>,
    /// Configurations deleted.
    pub deleted_configurations: Vec<String>,
}

impl Changes {
    /// True when there is nothing to persist.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
            && self.layers.is_empty()
            && self.deleted_devices.is_empty()
            && self.configurations.is_empty()
            && self.deleted_configurations.is_empty()
    }
}

/// Every device, twin and configuration of one hub.
pub struct HubState {
    /// Devices by slot number; `None` is a free slot (listed in `free`). Slot numbers are
    /// what the engine's bit sets hold.
    pub(super) slots: Vec<Option<Slot>>,
    /// Slots freed by deleted devices, reused before the vector grows.
    pub(super) free: Vec<u32>,
    /// Device id to slot number.
    pub(super) index: HashMap<String, u32>,
    /// Configurations in creation order.
    pub(super) configs: Vec<ConfigState>,
    /// The next configuration's creation sequence number.
    pub(super) next_seq: u64,
    /// The last etag number handed out (devices, twins and configurations share it).
    pub(super) etag_counter: u64,
    /// Twins changed since the last cycle, in the order they changed...
    pub(super) dirty: Vec<u32>,
    /// ...and the same as a set, so a twin is listed once.
    pub(super) dirty_flag: BitSet,
    /// Configurations deleted since the last cycle: their twins are re-decided.
    pub(super) removed: Vec<ConfigState>,
    /// The hub's limits (configuration quota).
    pub limits: Limits,
    /// Before-images of what the current write changed; `None` outside a write.
    pub(super) journal: Option<Journal>,
    /// The columns conditions are answered from ([`super::index`]). Readers share the
    /// hub's lock, so the columns (brought up to date, or grown, on first use by a
    /// reader) sit behind a lock of their own.
    pub(super) columns: Mutex<Columns>,
}

/// What one write changed, as it was before: enough to undo the write when the store
/// refuses it (see [`HubState::begin`]).
///
/// Slots keep their first before-image; the configurations are copied whole on their first
/// change (they are at most a few hundred, and change rarely) but without the engine's
/// derived sets, which are recomputed instead. A cycle changes only twins and derived
/// state, so a failed cycle journals only the twins it rewrote.
#[derive(Default)]
pub(super) struct Journal {
    /// `(slot, what it held)`: `None` when the slot was free or did not exist.
    slots: Vec<(u32, Option<Slot>)>,
    /// The slots listed in `slots`.
    saved: BitSet,
    /// How many slots there were.
    slot_count: usize,
    /// The free list, copied on its first change.
    free: Option<Vec<u32>>,
    /// The configurations (without their derived sets), copied on their first change.
    configs: Option<Vec<ConfigState>>,
    next_seq: u64,
    etag_counter: u64,
}

impl Journal {
    /// Records what slot `i` holds before its first change in this write; `before` is
    /// called only then.
    pub(super) fn record(&mut self, i: u32, before: impl FnOnce() -> Option<Slot>) {
        if self.saved.set(i, true) {
            self.slots.push((i, before()));
        }
    }
}

impl HubState {
    /// An empty hub.
    pub fn new(limits: Limits) -> HubState {
        HubState {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            configs: Vec::new(),
            next_seq: 1,
            etag_counter: 1,
            dirty: Vec::new(),
            dirty_flag: BitSet::new(),
            removed: Vec::new(),
            limits,
            journal: None,
            columns: Mutex::new(Columns::default()),
        }
    }

    // ----- writes are all or nothing ----------------------------------------------

    /// Starts a write: from here until [`HubState::commit`] or [`HubState::rollback`],
    /// every change keeps what it replaced. [`super::EmbeddedHub`] calls this under its
    /// write lock, changes memory, saves to the store, and commits; when the operation or
    /// the store fails it rolls back, so memory never holds what the store does not.
    pub fn begin(&mut self) {
        self.journal = Some(Journal {
            slot_count: self.slots.len(),
            next_seq: self.next_seq,
            etag_counter: self.etag_counter,
            ..Journal::default()
        });
    }

    /// Ends a write that the store accepted: what it replaced is dropped.
    pub fn commit(&mut self) {
        self.journal = None;
    }

    /// Undoes every change since [`HubState::begin`]. Devices, twins and configurations
    /// are as they were; the engine re-decides the twins this write touched at its next
    /// cycle, and rescans every configuration when configurations were restored.
    pub fn rollback(&mut self) {
        let Some(j) = self.journal.take() else {
            return;
        };
        // Ids first out of the index, then back in: a slot may have changed hands.
        for (i, _) in &j.slots {
            if let Some(Some(now)) = self.slots.get(*i as usize)
                && self.index.get(&now.device.device_id) == Some(i)
            {
                self.index.remove(&now.device.device_id);
            }
        }
        let mut touched = Vec::with_capacity(j.slots.len());
        for (i, before) in j.slots {
            if let Some(b) = &before {
                self.index.insert(b.device.device_id.clone(), i);
            }
            // A slot that did not exist when the write began goes with the truncation.
            if let Some(slot) = self.slots.get_mut(i as usize) {
                *slot = before;
            }
            touched.push(i);
        }
        self.slots.truncate(j.slot_count);
        if let Some(free) = j.free {
            self.free = free;
        }
        if let Some(configs) = j.configs {
            // A configuration deleted before this write and not yet cycled: its twins
            // still hold its content, so they are re-decided.
            for cs in std::mem::take(&mut self.removed) {
                for s in cs.targeted_slots() {
                    self.mark_dirty(s);
                }
            }
            self.configs = configs;
        }
        self.next_seq = j.next_seq;
        self.etag_counter = j.etag_counter;
        // Slots freed by the undo leave the engine's sets and the dirty list; the restored
        // ones are re-decided by the next cycle.
        let live =
            |slots: &[Option<Slot>], s: u32| slots.get(s as usize).is_some_and(Option::is_some);
        for &i in &touched {
            self.columns.get_mut().touch(i);
        }
        for i in touched {
            if live(&self.slots, i) {
                self.mark_dirty(i);
            } else {
                self.forget_slot(i);
            }
        }
        let slots = &self.slots;
        let flag = &mut self.dirty_flag;
        self.dirty.retain(|&s| {
            let keep = live(slots, s);
            if !keep {
                flag.set(s, false);
            }
            keep
        });
    }

    /// Records slot `i`'s before-image (a copy) ahead of its first change in this write.
    pub(super) fn journal_slot(&mut self, i: u32) {
        // Every change to a slot goes through here first: the columns re-read it.
        self.columns.get_mut().touch(i);
        if let Some(j) = self.journal.as_mut() {
            let slots = &self.slots;
            j.record(i, || slots.get(i as usize).cloned().flatten());
        }
    }

    /// Records the free list ahead of its first change in this write.
    pub(super) fn journal_free(&mut self) {
        if let Some(j) = self.journal.as_mut()
            && j.free.is_none()
        {
            j.free = Some(self.free.clone());
        }
    }

    /// Records the configurations ahead of their first change in this write.
    pub(super) fn journal_configs(&mut self) {
        if let Some(j) = self.journal.as_mut()
            && j.configs.is_none()
        {
            j.configs = Some(self.configs.iter().map(ConfigState::undo_copy).collect());
        }
    }

    pub(super) fn next_etag(&mut self) -> u64 {
        self.etag_counter += 1;
        self.etag_counter
    }

    /// Queues a changed twin for the next cycle.
    pub(super) fn mark_dirty(&mut self, slot: u32) {
        if self.dirty_flag.set(slot, true) {
            self.dirty.push(slot);
        }
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.index.len()
    }

    /// A device's slot by id.
    pub fn slot(&self, device_id: &str) -> Option<&Slot> {
        let i = *self.index.get(device_id)?;
        self.slots[i as usize].as_ref()
    }

    /// Calls `f(slot number, slot)` for every device matching `cond` (`None`: all), in slot
    /// order. This is the engine's hot loop: it prefetches twins ahead of evaluation.
    pub fn scan<'a>(&'a self, cond: Option<&Condition>, mut f: impl FnMut(u32, &'a Slot)) {
        for i in self.matching(cond).iter() {
            if let Some(Some(slot)) = self.slots.get(i as usize) {
                f(i, slot);
            }
        }
    }

    /// The slots matching `cond` (`None`: every device), from the key index or the
    /// columns ([`super::index`]).
    pub fn matching(&self, cond: Option<&Condition>) -> BitSet {
        select(&self.slots, &self.index, &self.columns, cond)
    }

    /// Number of columns the hub keeps for conditions (tests and the bench).
    pub fn column_count(&self) -> usize {
        self.columns.lock().column_count()
    }

    /// Every device, in slot order.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten()
    }

    /// Restores a slot from the store (used when the hub opens its SQLite file).
    pub fn restore_device(&mut self, slot: Slot) {
        let id = slot.device.device_id.clone();
        self.slots.push(Some(slot));
        let i = (self.slots.len() - 1) as u32;
        self.index.insert(id, i);
        self.columns.get_mut().touch(i);
    }

    /// Sets the etag counter at least to `n` (restored from the store).
    pub fn restore_etag_counter(&mut self, n: u64) {
        self.etag_counter = self.etag_counter.max(n);
    }

    /// The last etag number handed out (the store persists it).
    pub fn etag_counter(&self) -> u64 {
        self.etag_counter
    }
}

/// The slots of `slots` matching `cond`: a condition that pins `deviceId` to a few values
/// is answered from the key index `index`, anything else from the columns, and row by
/// row only when the plan needs more columns than are kept.
pub(super) fn select(
    slots: &[Option<Slot>],
    index: &HashMap<String, u32>,
    columns: &Mutex<Columns>,
    cond: Option<&Condition>,
) -> BitSet {
    let Some(cond) = cond else {
        return columns.lock().live(slots);
    };
    if let Some(ids) = cond.device_ids() {
        let mut out = BitSet::new();
        for id in ids {
            if let Some(&i) = index.get(id)
                && let Some(Some(s)) = slots.get(i as usize)
                && cond.matches(&s.row())
            {
                out.set(i, true);
            }
        }
        return out;
    }
    let from_columns = match cond.plan() {
        None => Some(columns.lock().live(slots)),
        Some(plan) => columns.lock().matching(slots, &plan),
    };
    from_columns.unwrap_or_else(|| {
        let mut out = BitSet::new();
        scan_slots(slots, Some(cond), |i, _| {
            out.set(i, true);
        });
        out
    })
}
