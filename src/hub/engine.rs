//! The hub's state and the automatic-configuration engine.
//!
//! [`HubState`] owns every device, twin and configuration. It is plain data with no locks
//! and no I/O: [`super::EmbeddedHub`] wraps it with a lock and the SQLite store.
//!
//! The engine is incremental (DESIGN "Performance shape"): each configuration keeps the set
//! of twin slots it targets, applies to, and matches for each metric. A changed twin is
//! re-checked against every configuration (at most 100); a changed configuration is
//! re-checked against every twin once. A cycle in which nothing changed only refreshes the
//! counts, which are popcounts of those sets.
//!
//! Conflicts are decided per content path (reference §1.5): among the configurations that
//! target a twin, the highest priority wins a path, ties go to the most recently created.
//! Each twin remembers which configuration owns each path it received ("owners"), so when
//! a twin stops being targeted, or a configuration is deleted, exactly those settings are
//! removed and the next configuration in line fills in. A value a user wrote over a
//! configuration's path is not re-asserted until the owner of that path changes: the hub
//! does not fight operators (the real hub's behaviour here is undocumented).

use super::bitset::BitSet;
use crate::iothub::configuration::{
    Configuration, ConfigurationMetrics, DEFAULT_MAX_CONFIGURATIONS, MAX_CUSTOM_METRICS,
    MAX_QUERY_LEN, validate_id,
};
use crate::iothub::device::{Device, device_etag, generate_key};
use crate::iothub::error::{ErrorCode, HubError, Result};
use crate::iothub::query::{Condition, Query};
use crate::iothub::twin::{Section, Twin, TwinRow, merge_patch, strip_system_keys};
use crate::iothub::value::Row;
use base64::Engine as _;
use jiff::Timestamp;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// Status values in a twin's `configurations` map (the SDKs serialize them lowercase).
pub const STATUS_TARGETED: &str = "targeted";
pub const STATUS_APPLIED: &str = "applied";

/// Largest page a twin query returns.
pub const MAX_PAGE_SIZE: usize = 100;

/// One device: identity, twin, and which configuration owns each content path it holds.
#[derive(Clone, Debug)]
pub struct Slot {
    pub device: Device,
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

    pub fn row(&self) -> TwinRow<'_> {
        TwinRow {
            device: &self.device,
            twin: &self.twin,
        }
    }
}

struct Metric {
    name: String,
    /// `None`: the query has no WHERE and counts every device.
    condition: Option<Condition>,
    set: BitSet,
}

/// A configuration with the engine's compiled and derived state.
pub struct ConfigState {
    pub config: Configuration,
    /// Creation order: breaks priority ties (later wins).
    pub seq: u64,
    target: Condition,
    metrics: Vec<Metric>,
    targeted: BitSet,
    applied: BitSet,
    /// `(path relative to the desired section, value)` from `deviceContent`.
    content: Vec<(String, Value)>,
    target_dirty: bool,
    metrics_dirty: bool,
}

impl ConfigState {
    /// A configuration not yet evaluated: the next cycle computes its sets.
    fn new(
        config: Configuration,
        seq: u64,
        target: Condition,
        metrics: Vec<Metric>,
        content: Vec<(String, Value)>,
    ) -> ConfigState {
        ConfigState {
            config,
            seq,
            target,
            metrics,
            targeted: BitSet::new(),
            applied: BitSet::new(),
            content,
            target_dirty: true,
            metrics_dirty: true,
        }
    }

    pub fn targeted_count(&self) -> usize {
        self.targeted.len()
    }
    pub fn applied_count(&self) -> usize {
        self.applied.len()
    }
}

/// Limits of one hub.
#[derive(Clone, Debug)]
pub struct Limits {
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
    pub devices: Vec<String>,
    pub deleted_devices: Vec<String>,
    pub configurations: Vec<String>,
    pub deleted_configurations: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
            && self.deleted_devices.is_empty()
            && self.configurations.is_empty()
            && self.deleted_configurations.is_empty()
    }
}

/// Figures from one engine cycle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CycleStats {
    /// Twins re-evaluated because they changed.
    pub twins_checked: usize,
    /// Configurations whose target was re-evaluated over every twin.
    pub configurations_rescanned: usize,
    /// Twins whose desired properties or configuration status changed.
    pub twins_changed: usize,
}

/// Every device, twin and configuration of one hub.
pub struct HubState {
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    index: HashMap<String, u32>,
    configs: Vec<ConfigState>,
    next_seq: u64,
    etag_counter: u64,
    dirty: Vec<u32>,
    dirty_flag: BitSet,
    removed: Vec<ConfigState>,
    pub limits: Limits,
}

fn config_etag(n: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(n.to_string())
}

/// Strips one layer of quotes from an If-Match value; `None` and `*` mean unconditional.
pub fn if_match(etag: Option<&str>) -> Option<&str> {
    let e = etag?.trim();
    let e = e
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(e);
    if e == "*" || e.is_empty() {
        None
    } else {
        Some(e)
    }
}

fn precondition_failed(what: &str) -> HubError {
    HubError::new(
        ErrorCode::PreconditionFailed,
        format!(
            "The etag in the request does not match the etag of the existing {what}, as per RFC7232; read it again and retry with its current etag"
        ),
    )
}

/// Compiles a custom metric query (a full `SELECT ... FROM devices WHERE ...`).
fn compile_metric(name: &str, text: &str) -> Result<Option<Condition>> {
    let q = Query::parse(text).map_err(|e| {
        HubError::new(
            ErrorCode::InvalidConfigurationCustomMetricsQuery,
            format!("metric '{name}': {e}"),
        )
    })?;
    Ok(q.condition().cloned())
}

fn compile_target(text: &str) -> Result<Condition> {
    if text.trim().is_empty() {
        return Err(HubError::new(
            ErrorCode::InvalidConfigurationTargetCondition,
            "targetCondition is empty; give a condition such as tags.environment='test', or * for every device",
        ));
    }
    if text.len() > MAX_QUERY_LEN {
        return Err(HubError::new(
            ErrorCode::InvalidConfigurationTargetCondition,
            format!(
                "targetCondition is {} characters long; at most {MAX_QUERY_LEN} are allowed",
                text.len()
            ),
        ));
    }
    Condition::parse(text).map_err(|e| {
        HubError::new(
            ErrorCode::InvalidConfigurationTargetCondition,
            format!("targetCondition: {e}"),
        )
    })
}

fn check_metrics(m: &ConfigurationMetrics) -> Result<Vec<Metric>> {
    if m.queries.len() > MAX_CUSTOM_METRICS {
        return Err(HubError::new(
            ErrorCode::InvalidConfigurationCustomMetricsQuery,
            format!(
                "{} custom metrics given; a configuration has at most {MAX_CUSTOM_METRICS}",
                m.queries.len()
            ),
        ));
    }
    m.queries
        .iter()
        .map(|(name, text)| {
            Ok(Metric {
                name: name.clone(),
                condition: compile_metric(name, text)?,
                set: BitSet::new(),
            })
        })
        .collect()
}

/// Validates `deviceContent` and turns it into desired-relative paths.
fn compile_content(c: &Configuration) -> Result<Vec<(String, Value)>> {
    let content = &c.content;
    if content.modules_content.is_some() || content.module_content.is_some() {
        return Err(HubError::new(
            ErrorCode::InvalidConfigurationContent,
            "the embedded hub supports device configurations only (content.deviceContent); moduleContent and modulesContent (IoT Edge) are not supported",
        ));
    }
    let Some(dc) = &content.device_content else {
        return Err(HubError::new(
            ErrorCode::InvalidConfigurationContent,
            "content.deviceContent is missing; give a map of paths such as properties.desired.firmware to values",
        ));
    };
    let mut out = Vec::new();
    for (path, value) in dc {
        let rel = path
            .strip_prefix("properties.desired.")
            .filter(|r| !r.is_empty());
        let Some(rel) = rel else {
            return Err(HubError::new(
                ErrorCode::InvalidConfigurationContent,
                format!(
                    "content path '{path}' must start with 'properties.desired.' (device configurations write desired properties)"
                ),
            ));
        };
        // Validate the path and value as the twin would hold them.
        let mut probe = Map::new();
        set_path(&mut probe, rel, value.clone());
        crate::iothub::twin::validate_section(Section::Desired, &probe).map_err(|e| {
            HubError::new(
                ErrorCode::InvalidConfigurationContent,
                format!("content path '{path}': {}", e.message),
            )
        })?;
        out.push((rel.to_string(), value.clone()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Sets a value at a dotted path inside an object, creating objects on the way.
fn set_path(root: &mut Map<String, Value>, rel: &str, value: Value) {
    let mut cur = root;
    let segs: Vec<&str> = rel.split('.').collect();
    for (i, seg) in segs.iter().enumerate() {
        if i + 1 == segs.len() {
            cur.insert(seg.to_string(), value);
            return;
        }
        let slot = cur
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        cur = slot.as_object_mut().expect("object");
    }
}

/// Removes the value at a dotted path, if present.
fn remove_path(root: &mut Map<String, Value>, rel: &str) {
    let mut cur = root;
    let segs: Vec<&str> = rel.split('.').collect();
    for (i, seg) in segs.iter().enumerate() {
        if i + 1 == segs.len() {
            cur.remove(*seg);
            return;
        }
        match cur.get_mut(*seg) {
            Some(Value::Object(m)) => cur = m,
            _ => return,
        }
    }
}

impl HubState {
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
        }
    }

    fn next_etag(&mut self) -> u64 {
        self.etag_counter += 1;
        self.etag_counter
    }

    fn mark_dirty(&mut self, slot: u32) {
        if self.dirty_flag.set(slot, true) {
            self.dirty.push(slot);
        }
    }

    // ----- devices -----------------------------------------------------------------

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.index.len()
    }

    pub fn slot(&self, device_id: &str) -> Option<&Slot> {
        let i = *self.index.get(device_id)?;
        self.slots[i as usize].as_ref()
    }

    /// Calls `f(slot number, slot)` for every device matching `cond` (`None`: all), in slot
    /// order. This is the engine's hot loop: it prefetches twins ahead of evaluation.
    pub fn scan<'a>(&'a self, cond: Option<&Condition>, f: impl FnMut(u32, &'a Slot)) {
        scan_slots(&self.slots, cond, f)
    }

    /// Every device, in slot order.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten()
    }

    fn slot_mut(&mut self, device_id: &str) -> Result<(u32, &mut Slot)> {
        let i = *self
            .index
            .get(device_id)
            .ok_or_else(|| not_found(device_id))?;
        Ok((
            i,
            self.slots[i as usize]
                .as_mut()
                .expect("indexed slot exists"),
        ))
    }

    /// Creates a device and its twin. The twin may start with tags and desired properties
    /// (bulk import does this).
    pub fn create_device(
        &mut self,
        mut device: Device,
        initial: Option<&Value>,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<Device> {
        device.validate()?;
        if self.index.contains_key(&device.device_id) {
            return Err(HubError::new(
                ErrorCode::DeviceAlreadyExists,
                format!(
                    "A device with ID '{}' is already registered",
                    device.device_id
                ),
            ));
        }
        if device.authentication.kind == "sas" {
            let k = &mut device.authentication.symmetric_key;
            if k.primary_key.as_deref().unwrap_or("").is_empty() {
                k.primary_key = Some(generate_key());
            }
            if k.secondary_key.as_deref().unwrap_or("").is_empty() {
                k.secondary_key = Some(generate_key());
            }
        }
        device.generation_id = format!("{:018}", rand::random::<u64>() % 10u64.pow(18));
        let e = self.next_etag();
        device.etag = device_etag(e);
        device.status_updated_time = now;
        let mut twin = Twin::new(now);
        if let Some(init) = initial {
            apply_twin_sections(&mut twin, init, false)?;
        }
        let slot = Slot {
            device: device.clone(),
            twin,
            owners: Vec::new(),
            statuses: Vec::new(),
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(device.device_id.clone(), i);
        self.mark_dirty(i);
        changes.devices.push(device.device_id.clone());
        Ok(device)
    }

    /// Updates a device identity (status, status reason, keys).
    pub fn update_device(
        &mut self,
        device: Device,
        etag: Option<&str>,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<Device> {
        device.validate()?;
        let e = self.next_etag();
        let (_, slot) = self.slot_mut(&device.device_id)?;
        if let Some(want) = if_match(etag) {
            if want != slot.device.etag {
                return Err(precondition_failed("device"));
            }
        }
        let cur = &mut slot.device;
        if cur.status != device.status || cur.status_reason != device.status_reason {
            cur.status_updated_time = now;
        }
        cur.status = device.status;
        cur.status_reason = device.status_reason;
        if device.authentication.kind == "sas" {
            let k = &device.authentication.symmetric_key;
            if k.primary_key.as_deref().is_some_and(|s| !s.is_empty()) {
                cur.authentication.symmetric_key = k.clone();
            }
        } else {
            cur.authentication = device.authentication;
        }
        cur.capabilities = device.capabilities;
        cur.etag = device_etag(e);
        let out = cur.clone();
        changes.devices.push(out.device_id.clone());
        Ok(out)
    }

    /// Deletes a device and its twin.
    pub fn delete_device(
        &mut self,
        device_id: &str,
        etag: Option<&str>,
        changes: &mut Changes,
    ) -> Result<()> {
        let (i, slot) = self.slot_mut(device_id)?;
        if let Some(want) = if_match(etag) {
            if want != slot.device.etag {
                return Err(precondition_failed("device"));
            }
        }
        self.slots[i as usize] = None;
        self.index.remove(device_id);
        self.free.push(i);
        for c in &mut self.configs {
            c.targeted.set(i, false);
            c.applied.set(i, false);
            for m in &mut c.metrics {
                m.set.set(i, false);
            }
        }
        self.dirty_flag.set(i, false);
        self.dirty.retain(|&d| d != i);
        changes.deleted_devices.push(device_id.to_string());
        Ok(())
    }

    /// A twin as JSON.
    pub fn twin_json(&self, device_id: &str) -> Result<Value> {
        self.slot(device_id)
            .map(|s| s.row().to_json())
            .ok_or_else(|| not_found(device_id))
    }

    /// Service-side twin update: `replace` swaps tags and desired whole (PUT), otherwise
    /// they are merged (PATCH, `null` deletes).
    pub fn update_twin(
        &mut self,
        device_id: &str,
        patch: &Value,
        etag: Option<&str>,
        replace: bool,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<Value> {
        if !patch.is_object() {
            return Err(HubError::invalid(
                "the twin patch must be a JSON object with tags and/or properties.desired",
            ));
        }
        let e = self.next_etag();
        let (i, slot) = self.slot_mut(device_id)?;
        if let Some(want) = if_match(etag) {
            if want != slot.twin.etag() {
                return Err(precondition_failed("twin"));
            }
        }
        let mut twin = slot.twin.clone();
        let (tags_changed, desired_changed) = apply_twin_sections(&mut twin, patch, replace)?;
        if tags_changed || desired_changed {
            twin.version += 1;
        }
        if desired_changed {
            twin.desired_version += 1;
            twin.desired_updated = now;
        }
        twin.etag_counter = e;
        slot.twin = twin;
        let out = slot.row().to_json();
        self.mark_dirty(i);
        changes.devices.push(device_id.to_string());
        Ok(out)
    }

    /// Device-side reported-properties patch (merge, `null` deletes). Returns the new
    /// reported `$version`.
    pub fn patch_reported(
        &mut self,
        device_id: &str,
        patch: &Value,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<i64> {
        let Some(p) = patch.as_object() else {
            return Err(HubError::invalid(
                "a reported-properties patch must be a JSON object",
            ));
        };
        let e = self.next_etag();
        let (i, slot) = self.slot_mut(device_id)?;
        if slot.device.status == "disabled" {
            return Err(HubError::new(
                ErrorCode::IotHubUnauthorizedAccess,
                format!("device '{device_id}' is disabled"),
            ));
        }
        let mut p = p.clone();
        strip_system_keys(&mut p);
        let mut rep = slot.twin.section(Section::Reported);
        merge_patch(&mut rep, &p);
        slot.twin.set_section(Section::Reported, &rep)?;
        slot.twin.reported_version += 1;
        slot.twin.reported_updated = now;
        slot.twin.etag_counter = e;
        slot.device.last_activity_time = now;
        let v = slot.twin.reported_version;
        self.mark_dirty(i);
        changes.devices.push(device_id.to_string());
        Ok(v)
    }

    // ----- configurations ---------------------------------------------------------

    pub fn configurations(&self) -> Vec<Configuration> {
        self.configs.iter().map(|c| c.config.clone()).collect()
    }

    pub fn configuration(&self, id: &str) -> Option<&ConfigState> {
        self.configs.iter().find(|c| c.config.id == id)
    }

    /// Creates a configuration and applies it at once.
    pub fn create_configuration(
        &mut self,
        config: &Configuration,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<Configuration> {
        validate_id(&config.id)?;
        if self.configuration(&config.id).is_some() {
            return Err(HubError::new(
                ErrorCode::ConfigurationAlreadyExists,
                format!(
                    "configuration '{}' already exists; update it with If-Match, or pick another id",
                    config.id
                ),
            ));
        }
        if self.configs.len() >= self.limits.max_configurations {
            return Err(HubError::new(
                ErrorCode::ConfigurationCountLimitExceeded,
                format!(
                    "Number of deployments exceed the maximum quota {} for this IotHub",
                    self.limits.max_configurations
                ),
            ));
        }
        let target = compile_target(&config.target_condition)?;
        let metrics = check_metrics(&config.metrics)?;
        let content = compile_content(config)?;
        let mut c = config.clone();
        c.created_time_utc = Some(now);
        c.last_updated_time_utc = Some(now);
        c.schema_version = c.schema_version.or(Some("1.0".into()));
        let e = self.next_etag();
        c.etag = Some(config_etag(e));
        c.metrics.results.clear();
        c.system_metrics = system_metrics(&c.id, &c.target_condition);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.configs
            .push(ConfigState::new(c.clone(), seq, target, metrics, content));
        changes.configurations.push(c.id.clone());
        Ok(c)
    }

    /// Updates the mutable fields of a configuration (target, priority, labels, metrics).
    pub fn update_configuration(
        &mut self,
        config: &Configuration,
        etag: Option<&str>,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<Configuration> {
        let e = self.next_etag();
        let Some(cs) = self.configs.iter_mut().find(|c| c.config.id == config.id) else {
            return Err(HubError::new(
                ErrorCode::ConfigurationNotFound,
                format!("configuration '{}' does not exist", config.id),
            ));
        };
        if let Some(want) = if_match(etag) {
            if Some(want) != cs.config.etag.as_deref() {
                return Err(precondition_failed("configuration"));
            }
        }
        if config.content != cs.config.content {
            return Err(HubError::new(
                ErrorCode::CannotModifyImmutableConfigurationContent,
                format!(
                    "the content of configuration '{}' cannot be changed after creation; create a configuration with a new id (only targetCondition, priority, labels and metrics may change)",
                    config.id
                ),
            ));
        }
        let target = if config.target_condition != cs.config.target_condition {
            Some(compile_target(&config.target_condition)?)
        } else {
            None
        };
        let metrics = if config.metrics.queries != cs.config.metrics.queries {
            Some(check_metrics(&config.metrics)?)
        } else {
            None
        };
        if let Some(t) = target {
            cs.target = t;
            cs.target_dirty = true;
            cs.config.target_condition = config.target_condition.clone();
            cs.config.system_metrics.queries =
                system_metrics(&cs.config.id, &cs.config.target_condition).queries;
        }
        if let Some(m) = metrics {
            cs.metrics = m;
            cs.metrics_dirty = true;
            cs.config.metrics.queries = config.metrics.queries.clone();
            cs.config.metrics.results.clear();
        }
        if config.priority != cs.config.priority {
            cs.config.priority = config.priority;
            // Re-decide every twin it targets; a full rescan does exactly that.
            cs.target_dirty = true;
        }
        cs.config.labels = config.labels.clone();
        cs.config.last_updated_time_utc = Some(now);
        cs.config.etag = Some(config_etag(e));
        changes.configurations.push(cs.config.id.clone());
        Ok(cs.config.clone())
    }

    /// Deletes a configuration; its twins fall back to the next configuration in line.
    pub fn delete_configuration(
        &mut self,
        id: &str,
        etag: Option<&str>,
        changes: &mut Changes,
    ) -> Result<()> {
        let Some(pos) = self.configs.iter().position(|c| c.config.id == id) else {
            return Err(HubError::new(
                ErrorCode::ConfigurationNotFound,
                format!("configuration '{id}' does not exist"),
            ));
        };
        if let Some(want) = if_match(etag) {
            if Some(want) != self.configs[pos].config.etag.as_deref() {
                return Err(precondition_failed("configuration"));
            }
        }
        let cs = self.configs.remove(pos);
        self.removed.push(cs);
        changes.deleted_configurations.push(id.to_string());
        Ok(())
    }

    // ----- the engine -------------------------------------------------------------

    /// Runs one configuration cycle: re-target what changed, apply content, refresh counts.
    pub fn run_cycle(&mut self, now: Timestamp, changes: &mut Changes) -> CycleStats {
        let mut stats = CycleStats::default();
        let mut reapply = BitSet::new();

        for cs in std::mem::take(&mut self.removed) {
            for s in cs.targeted.iter() {
                reapply.set(s, true);
            }
        }
        for cs in self.configs.iter_mut().filter(|c| c.target_dirty) {
            stats.configurations_rescanned += 1;
            let mut fresh = BitSet::new();
            scan_slots(&self.slots, Some(&cs.target), |i, _| {
                fresh.set(i, true);
            });
            // Every twin it targets, or targeted before, is re-decided (covers priority
            // changes as well as target changes).
            for s in cs.targeted.iter().chain(fresh.iter()) {
                reapply.set(s, true);
            }
            cs.targeted = fresh;
        }
        let dirty = std::mem::take(&mut self.dirty);
        self.dirty_flag.clear();
        stats.twins_checked = dirty.len();
        for &s in &dirty {
            let Some(slot) = self.slots[s as usize].as_ref() else {
                continue;
            };
            let row = slot.row();
            for cs in self.configs.iter_mut().filter(|c| !c.target_dirty) {
                if cs.targeted.set(s, cs.target.matches(&row)) {
                    reapply.set(s, true);
                }
            }
            // A twin whose desired section a user rewrote may have lost a configuration's
            // path; re-deciding it is cheap and keeps the status honest.
            reapply.set(s, true);
        }
        for cs in &mut self.configs {
            cs.target_dirty = false;
        }

        let mut touched: Vec<u32> = dirty;
        for s in reapply.iter() {
            if self.apply(s, now) {
                stats.twins_changed += 1;
                touched.push(s);
                if let Some(slot) = &self.slots[s as usize] {
                    changes.devices.push(slot.device.device_id.clone());
                }
            }
        }

        // Metrics: full recount for changed definitions, incremental for changed twins.
        for cs in &mut self.configs {
            if cs.metrics_dirty {
                for m in &mut cs.metrics {
                    m.set.clear();
                    let set = &mut m.set;
                    scan_slots(&self.slots, m.condition.as_ref(), |i, _| {
                        set.set(i, true);
                    });
                }
                cs.metrics_dirty = false;
            } else if !touched.is_empty() {
                for m in &mut cs.metrics {
                    for &s in &touched {
                        if let Some(slot) = &self.slots[s as usize] {
                            let hit = m.condition.as_ref().is_none_or(|c| c.matches(&slot.row()));
                            m.set.set(s, hit);
                        }
                    }
                }
            }
            let r = &mut cs.config.system_metrics.results;
            r.insert("targetedCount".into(), cs.targeted.len() as i64);
            r.insert("appliedCount".into(), cs.applied.len() as i64);
            let mr: BTreeMap<String, i64> = cs
                .metrics
                .iter()
                .map(|m| (m.name.clone(), m.set.len() as i64))
                .collect();
            cs.config.metrics.results = mr;
        }
        changes.devices.sort();
        changes.devices.dedup();
        stats
    }

    /// Re-decides which configuration owns each content path of one twin and writes the
    /// result into its desired section and `configurations` map. Returns true on change.
    fn apply(&mut self, s: u32, now: Timestamp) -> bool {
        let Some(slot) = self.slots[s as usize].as_ref() else {
            return false;
        };
        // With their indexes: the applied bits below are set by index, not found by id.
        let mut targeting: Vec<(usize, &ConfigState)> = self
            .configs
            .iter()
            .enumerate()
            .filter(|(_, c)| c.targeted.contains(s))
            .collect();
        targeting.sort_by(|(_, a), (_, b)| {
            b.config
                .priority
                .cmp(&a.config.priority)
                .then(b.seq.cmp(&a.seq))
        });
        let mut winners: BTreeMap<&str, (&str, &Value)> = BTreeMap::new();
        for (_, c) in &targeting {
            for (p, v) in &c.content {
                winners
                    .entry(p.as_str())
                    .or_insert((c.config.id.as_str(), v));
            }
        }
        let new_owners: Vec<(String, String)> = winners
            .iter()
            .map(|(p, (id, _))| (p.to_string(), id.to_string()))
            .collect();

        let applied_ids: Vec<&str> = winners.values().map(|(id, _)| *id).collect();
        let mut indexed: Vec<(&str, bool, usize)> = targeting
            .iter()
            .map(|(i, c)| {
                let id = c.config.id.as_str();
                (id, applied_ids.contains(&id) || c.content.is_empty(), *i)
            })
            .collect();
        indexed.sort_unstable();
        let statuses: Vec<(&str, bool)> = indexed.iter().map(|(id, a, _)| (*id, *a)).collect();
        let owners_changed = new_owners != slot.owners;
        let status_changed = statuses.len() != slot.statuses.len()
            || statuses
                .iter()
                .zip(&slot.statuses)
                .any(|(a, b)| a.0 != b.0 || a.1 != b.1);
        // The configurations whose applied bit may differ: those named now (by index), and
        // those named before that no longer target the twin (found by id: rare).
        let mut applied_bits: Vec<(usize, bool)> =
            indexed.iter().map(|(_, on, i)| (*i, *on)).collect();
        for (id, _) in &slot.statuses {
            if statuses
                .binary_search_by(|(x, _)| x.cmp(&id.as_str()))
                .is_err()
                && let Some(i) = self.configs.iter().position(|c| c.config.id == *id)
            {
                applied_bits.push((i, false));
            }
        }
        if !owners_changed && !status_changed {
            for (i, on) in applied_bits {
                self.configs[i].applied.set(s, on);
            }
            return false;
        }

        let mut desired_changed = false;
        let mut desired = Map::new();
        if owners_changed {
            desired = slot.twin.section(Section::Desired);
            for (p, old) in &slot.owners {
                if !winners.contains_key(p.as_str()) {
                    remove_path(&mut desired, p);
                    desired_changed = true;
                } else if winners[p.as_str()].0 != old {
                    desired_changed = true;
                }
            }
            for (p, (id, v)) in &winners {
                let prev = slot
                    .owners
                    .iter()
                    .find(|(op, _)| op == p)
                    .map(|(_, o)| o.as_str());
                if prev != Some(*id) {
                    set_path(&mut desired, p, (*v).clone());
                    desired_changed = true;
                }
            }
        }
        let section: Map<String, Value>;
        let mut updates: Vec<(Section, &Map<String, Value>)> = Vec::with_capacity(2);
        if desired_changed {
            updates.push((Section::Desired, &desired));
        }
        if status_changed {
            section = statuses
                .iter()
                .map(|(id, applied)| {
                    let st = if *applied {
                        STATUS_APPLIED
                    } else {
                        STATUS_TARGETED
                    };
                    (id.to_string(), serde_json::json!({ "status": st }))
                })
                .collect();
            updates.push((Section::Configurations, &section));
        }
        let mut twin = match slot.twin.with_sections(&updates) {
            Ok(t) => t,
            // Content that would push the twin over its limits is not applied.
            Err(_) => return false,
        };
        let new_statuses: Vec<(String, bool)> = statuses
            .iter()
            .map(|(id, a)| (id.to_string(), *a))
            .collect();
        if desired_changed {
            twin.version += 1;
            twin.desired_version += 1;
            twin.desired_updated = now;
        }
        let e = self.next_etag();
        twin.etag_counter = e;
        let slot = self.slots[s as usize].as_mut().expect("slot checked above");
        slot.twin = twin;
        slot.owners = new_owners;
        slot.statuses = new_statuses;
        for (i, on) in applied_bits {
            self.configs[i].applied.set(s, on);
        }
        true
    }

    // ----- queries ----------------------------------------------------------------

    /// Runs a twin query and returns one page (see [`super::QueryPage`] for the shape).
    pub fn query(
        &self,
        text: &str,
        page_size: Option<usize>,
        continuation: Option<&str>,
    ) -> Result<(crate::iothub::query::ItemType, Vec<Value>, Option<String>)> {
        if text.len() > MAX_QUERY_LEN {
            return Err(HubError::new(
                ErrorCode::BadRequest,
                format!(
                    "query is {} characters long; at most {MAX_QUERY_LEN} are allowed",
                    text.len()
                ),
            ));
        }
        let q = Query::parse(text)
            .map_err(|e| HubError::new(ErrorCode::BadRequest, format!("query: {e}")))?;
        let cond = q.condition();
        if q.is_aggregate() {
            let rows: Vec<TwinRow<'_>> = self
                .slots
                .iter()
                .flatten()
                .map(|s| s.row())
                .filter(|r| cond.is_none_or(|c| c.matches(r)))
                .collect();
            let mut it = rows.iter().map(|r| r as &dyn Row);
            let mut out = q.aggregate(&mut it);
            if let Some(top) = q.top() {
                out.truncate(top);
            }
            return Ok((q.item_type(), out, None));
        }
        let page = page_size.unwrap_or(MAX_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
        let (mut start, mut emitted) = match continuation {
            Some(tok) if !tok.is_empty() => decode_continuation(tok)?,
            _ => (0, 0),
        };
        let top = q.top();
        let mut out = Vec::new();
        while (start as usize) < self.slots.len() {
            if out.len() >= page || top.is_some_and(|t| emitted >= t) {
                break;
            }
            if let Some(slot) = &self.slots[start as usize] {
                let row = slot.row();
                if cond.is_none_or(|c| c.matches(&row)) {
                    out.push(q.project(&row));
                    emitted += 1;
                }
            }
            start += 1;
        }
        let more = (start as usize) < self.slots.len()
            && top.is_none_or(|t| emitted < t)
            && self.slots[start as usize..]
                .iter()
                .flatten()
                .any(|s| cond.is_none_or(|c| c.matches(&s.row())));
        let token = more.then(|| encode_continuation(start, emitted));
        Ok((q.item_type(), out, token))
    }
}

/// See [`HubState::scan`].
fn scan_slots<'a>(
    slots: &'a [Option<Slot>],
    cond: Option<&Condition>,
    mut f: impl FnMut(u32, &'a Slot),
) {
    const AHEAD: usize = 12;
    for i in 0..slots.len() {
        if let Some(Some(next)) = slots.get(i + AHEAD) {
            next.twin.prefetch();
        }
        if let Some(slot) = &slots[i] {
            if cond.is_none_or(|c| c.matches(&slot.row())) {
                f(i as u32, slot);
            }
        }
    }
}

fn encode_continuation(slot: u32, emitted: usize) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("rm1:{slot}:{emitted}"))
}

fn decode_continuation(tok: &str) -> Result<(u32, usize)> {
    let bad = || {
        HubError::new(
            ErrorCode::BadRequest,
            "x-ms-continuation is not a token this hub issued; start the query again without it",
        )
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(tok.trim())
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let mut it = s.split(':');
    if it.next() != Some("rm1") {
        return Err(bad());
    }
    let slot = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
    let emitted = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
    Ok((slot, emitted))
}

/// The `systemMetrics.queries` the hub writes for a configuration (reference §1.9).
pub fn system_metrics(id: &str, target: &str) -> ConfigurationMetrics {
    let mut q = BTreeMap::new();
    let targeted = if target.trim() == "*" {
        "select deviceId from devices".to_string()
    } else {
        format!("select deviceId from devices where {target}")
    };
    q.insert("targetedCount".into(), targeted);
    q.insert(
        "appliedCount".into(),
        format!("select deviceId from devices where configurations.[[{id}]].status = 'Applied'"),
    );
    ConfigurationMetrics {
        queries: q,
        results: BTreeMap::new(),
    }
}

/// Applies the `tags` and `properties.desired` members of a service-side twin update.
/// Returns which of the two changed. Nothing is written to `twin` on error.
fn apply_twin_sections(twin: &mut Twin, patch: &Value, replace: bool) -> Result<(bool, bool)> {
    let mut work = twin.clone();
    let mut tags_changed = false;
    let mut desired_changed = false;
    let tags = patch.get("tags");
    if let Some(t) = tags.filter(|t| !t.is_null()) {
        let Some(t) = t.as_object() else {
            return Err(HubError::invalid("'tags' must be a JSON object"));
        };
        let mut cur = if replace {
            Map::new()
        } else {
            work.section(Section::Tags)
        };
        merge_patch(&mut cur, t);
        if cur != work.section(Section::Tags) {
            work.set_section(Section::Tags, &cur)?;
            tags_changed = true;
        }
    } else if replace {
        if !work.section(Section::Tags).is_empty() {
            work.set_section(Section::Tags, &Map::new())?;
            tags_changed = true;
        }
    }
    let desired = patch.get("properties").and_then(|p| p.get("desired"));
    if let Some(d) = desired.filter(|d| !d.is_null()) {
        let Some(d) = d.as_object() else {
            return Err(HubError::invalid(
                "'properties.desired' must be a JSON object",
            ));
        };
        let mut d = d.clone();
        strip_system_keys(&mut d);
        let mut cur = if replace {
            Map::new()
        } else {
            work.section(Section::Desired)
        };
        merge_patch(&mut cur, &d);
        if cur != work.section(Section::Desired) {
            work.set_section(Section::Desired, &cur)?;
            desired_changed = true;
        }
    } else if replace && !work.section(Section::Desired).is_empty() {
        work.set_section(Section::Desired, &Map::new())?;
        desired_changed = true;
    }
    if patch
        .get("properties")
        .and_then(|p| p.get("reported"))
        .is_some_and(|r| !r.is_null() && r.as_object().is_some_and(|m| !m.is_empty()))
    {
        return Err(HubError::invalid(
            "reported properties are written by the device; a service twin update may change tags and properties.desired only",
        ));
    }
    *twin = work;
    Ok((tags_changed, desired_changed))
}

fn not_found(device_id: &str) -> HubError {
    HubError::new(
        ErrorCode::DeviceNotFound,
        format!("Device {device_id} not registered"),
    )
}

/// Restores a slot from the store (used when the hub opens its SQLite file).
impl HubState {
    pub fn restore_device(&mut self, slot: Slot) {
        let id = slot.device.device_id.clone();
        self.slots.push(Some(slot));
        let i = (self.slots.len() - 1) as u32;
        self.index.insert(id, i);
    }

    /// Restores a configuration; targets and counts are recomputed by the next cycle.
    pub fn restore_configuration(&mut self, config: Configuration, seq: u64) -> Result<()> {
        let target = compile_target(&config.target_condition)?;
        let metrics = check_metrics(&config.metrics)?;
        let content = compile_content(&config)?;
        self.next_seq = self.next_seq.max(seq + 1);
        self.configs
            .push(ConfigState::new(config, seq, target, metrics, content));
        self.configs.sort_by_key(|c| c.seq);
        Ok(())
    }

    /// Sets the etag counter at least to `n` (restored from the store).
    pub fn restore_etag_counter(&mut self, n: u64) {
        self.etag_counter = self.etag_counter.max(n);
    }

    pub fn etag_counter(&self) -> u64 {
        self.etag_counter
    }

    /// The creation sequence number of a configuration.
    pub fn configuration_seq(&self, id: &str) -> Option<u64> {
        self.configuration(id).map(|c| c.seq)
    }
}
