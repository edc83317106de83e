//! Automatic device configurations and the incremental engine that applies them
//! (<https://learn.microsoft.com/azure/iot-hub/iot-hub-automatic-device-management>).
//!
//! The engine is incremental: each configuration keeps the set of twin slots it targets,
//! applies to, and matches for each metric. A changed twin is re-checked against every
//! configuration (at most 100); a changed configuration is re-checked against every twin
//! once. A cycle in which nothing changed only refreshes the counts, which are popcounts of
//! those sets. `ringmaster hub bench` prints what this costs.
//!
//! Conflicts are decided per content path, as IoT Hub documents for automatic device
//! configurations: among the configurations that target a twin, the highest priority wins a
//! path, ties go to the most recently created. Each twin remembers which configuration owns
//! each path it received ("owners"), so when a twin stops being targeted, or a configuration
//! is deleted, exactly those settings are removed and the next configuration in line fills
//! in. A value a user wrote over a configuration's path is not re-asserted until the owner
//! of that path changes: the hub does not fight operators (the real hub's behaviour here is
//! undocumented).

use super::bitset::BitSet;
use super::registry::{if_match, precondition_failed};
use super::state::{Changes, HubState, STATUS_APPLIED, STATUS_TARGETED, Slot, select};
use crate::iothub::configuration::{
    Configuration, ConfigurationMetrics, MAX_CUSTOM_METRICS, MAX_QUERY_LEN, validate_id,
};
use crate::iothub::error::{ErrorCode, HubError, Result};
use crate::iothub::query::{Condition, Query};
use crate::iothub::twin::Section;
use base64::Engine as _;
use jiff::Timestamp;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The `schemaVersion` a configuration gets when its author gave none (the only version
/// IoT Hub defines for configurations).
const DEFAULT_SCHEMA_VERSION: &str = "1.0";

/// A custom metric: its name, compiled condition, and the twins it counts.
pub(super) struct Metric {
    name: String,
    /// `None`: the query has no WHERE and counts every device.
    condition: Option<Condition>,
    set: BitSet,
}

/// A configuration with the engine's compiled and derived state.
pub struct ConfigState {
    /// The configuration as the hub reports it (counts included).
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

    /// A copy for undoing a write: the configuration and its compiled form, with the
    /// derived sets left empty and marked for a full recount at the next cycle.
    pub(super) fn undo_copy(&self) -> ConfigState {
        ConfigState::new(
            self.config.clone(),
            self.seq,
            self.target.clone(),
            self.metrics
                .iter()
                .map(|m| Metric {
                    name: m.name.clone(),
                    condition: m.condition.clone(),
                    set: BitSet::new(),
                })
                .collect(),
            self.content.clone(),
        )
    }

    /// The slots it targets now.
    pub(super) fn targeted_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.targeted.iter()
    }

    /// Twins the configuration targets now.
    pub fn targeted_count(&self) -> usize {
        self.targeted.len()
    }
    /// Twins it is applied to: those holding at least one of its content paths (every
    /// twin it targets when it has no content).
    pub fn applied_count(&self) -> usize {
        self.applied.len()
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

fn config_etag(n: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(n.to_string())
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
    // ----- configurations ---------------------------------------------------------

    /// Every configuration, in creation order.
    pub fn configurations(&self) -> Vec<Configuration> {
        self.configs.iter().map(|c| c.config.clone()).collect()
    }

    /// One configuration by id.
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
        c.schema_version = c.schema_version.or(Some(DEFAULT_SCHEMA_VERSION.into()));
        let e = self.next_etag();
        c.etag = Some(config_etag(e));
        c.metrics.results.clear();
        c.system_metrics = system_metrics(&c.id, &c.target_condition);
        self.journal_configs();
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
        let Some(pos) = self.configs.iter().position(|c| c.config.id == config.id) else {
            return Err(HubError::new(
                ErrorCode::ConfigurationNotFound,
                format!("configuration '{}' does not exist", config.id),
            ));
        };
        let cs = &self.configs[pos];
        if let Some(want) = if_match(etag)
            && Some(want) != cs.config.etag.as_deref()
        {
            return Err(precondition_failed("configuration"));
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
        // Checked: from here on the configuration changes.
        self.journal_configs();
        let e = self.next_etag();
        let cs = &mut self.configs[pos];
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
        if let Some(want) = if_match(etag)
            && Some(want) != self.configs[pos].config.etag.as_deref()
        {
            return Err(precondition_failed("configuration"));
        }
        self.journal_configs();
        let cs = self.configs.remove(pos);
        self.removed.push(cs);
        changes.deleted_configurations.push(id.to_string());
        Ok(())
    }

    // ----- the engine -------------------------------------------------------------

    /// Drops a freed slot from every configuration's sets (its device was deleted).
    pub(super) fn forget_slot(&mut self, i: u32) {
        for c in &mut self.configs {
            c.targeted.set(i, false);
            c.applied.set(i, false);
            for m in &mut c.metrics {
                m.set.set(i, false);
            }
        }
    }

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
            let fresh = select(&self.slots, &self.index, &self.columns, Some(&cs.target));
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
                    changes.layers.push(slot.device.device_id.clone());
                }
            }
        }

        // Metrics: full recount for changed definitions, incremental for changed twins.
        for cs in &mut self.configs {
            if cs.metrics_dirty {
                for m in &mut cs.metrics {
                    m.set = select(
                        &self.slots,
                        &self.index,
                        &self.columns,
                        m.condition.as_ref(),
                    );
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
        // A twin rewritten whole in this write needs no layer row.
        changes.layers.sort();
        changes.layers.dedup();
        let whole = &changes.devices;
        changes.layers.retain(|id| whole.binary_search(id).is_err());
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
        self.columns.get_mut().touch(s);
        let slot = self.slots[s as usize].as_mut().expect("slot checked above");
        let twin = std::mem::replace(&mut slot.twin, twin);
        let owners = std::mem::replace(&mut slot.owners, new_owners);
        let statuses = std::mem::replace(&mut slot.statuses, new_statuses);
        if let Some(j) = self.journal.as_mut() {
            // The replaced parts are the before-image: no copy of the twin.
            j.record(s, || {
                Some(Slot {
                    device: slot.device.clone(),
                    twin,
                    owners,
                    statuses,
                })
            });
        }
        for (i, on) in applied_bits {
            self.configs[i].applied.set(s, on);
        }
        true
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

    /// The creation sequence number of a configuration.
    pub fn configuration_seq(&self, id: &str) -> Option<u64> {
        self.configuration(id).map(|c| c.seq)
    }
}

/// The `systemMetrics.queries` the hub writes for a configuration: `targetedCount` and
/// `appliedCount`, as IoT Hub reports them for automatic device configurations.
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
