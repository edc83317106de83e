//! Planning: what each ring targets, the scoped metric queries, and the configuration
//! the hub should hold for a revision (docs/design.md, semantics 1, 2 and 5).
//!
//! Ring i's target is `(target) AND ((ring_0) OR … OR (ring_i))`; a `*` ring means the
//! base target alone, and a `*` base target means the rings alone. A rolled-back revision
//! is narrowed to [`NO_DEVICE_TARGET`], a condition no twin can satisfy.

use super::revision::{self, ConfigState};
use crate::iothub::configuration::{Configuration, ConfigurationContent, ConfigurationMetrics};
use crate::resources::DeviceRollout;
use std::collections::BTreeMap;

/// The target condition of a held (rolled-back) configuration. It is false for every twin
/// by logic alone (a device id cannot both equal and differ from a value), so it needs no
/// reserved device id, and it is plain IoT Hub query syntax. (`deviceId = '$x'` would not
/// do: `$` is valid in device ids.)
pub const NO_DEVICE_TARGET: &str = "deviceId = 'ringmaster-none' AND deviceId != 'ringmaster-none'";

/// The schema version ringmaster writes (what the .NET SDK sends).
pub const SCHEMA_VERSION: &str = "1.0";

/// A twin predicate, with `*` kept apart so that it composes without text tricks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cond {
    /// Every device (`*`).
    All,
    /// A predicate, as written.
    Expr(String),
}

impl Cond {
    /// Reads a target as written in a rollout: `*` (spaces around allowed) is
    /// [`Cond::All`], anything else a trimmed [`Cond::Expr`]. The text is not checked here.
    pub fn parse(text: &str) -> Cond {
        if text.trim() == "*" {
            Cond::All
        } else {
            Cond::Expr(text.trim().to_string())
        }
    }

    /// `self AND other`.
    pub fn and(&self, other: &Cond) -> Cond {
        match (self, other) {
            (Cond::All, x) | (x, Cond::All) => x.clone(),
            (Cond::Expr(a), Cond::Expr(b)) => Cond::Expr(format!("({a}) AND ({b})")),
        }
    }

    /// `self AND NOT other`; `None` when nothing can match (`other` is `*`).
    pub fn and_not(&self, other: &Cond) -> Option<Cond> {
        match (self, other) {
            (_, Cond::All) => None,
            (Cond::All, Cond::Expr(b)) => Some(Cond::Expr(format!("NOT ({b})"))),
            (Cond::Expr(a), Cond::Expr(b)) => Some(Cond::Expr(format!("({a}) AND NOT ({b})"))),
        }
    }

    /// The text for a target condition or a count (`*` for every device).
    pub fn text(&self) -> &str {
        match self {
            Cond::All => "*",
            Cond::Expr(e) => e,
        }
    }
}

/// Everything derived from a rollout's spec that does not depend on the hub.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The rollout's namespace (`default` when it has none).
    pub namespace: String,
    /// The rollout's name.
    pub name: String,
    /// The current revision: 8 hex digits of the hash of `spec.content`.
    pub revision: String,
    /// The current revision's configuration id.
    pub id: String,
    /// `spec.priority`, written to every configuration of the rollout.
    pub priority: i32,
    base: Cond,
    rings: Vec<Cond>,
    /// Metric name -> condition, as written.
    pub metrics: BTreeMap<String, String>,
    /// `spec.content` as the configuration's `deviceContent`.
    pub content: ConfigurationContent,
}

impl Plan {
    /// Derives the plan of a rollout: its revision, configuration id, ring targets,
    /// metrics and content. It does not validate the spec (see
    /// [`super::validate::validate_rollout`]).
    pub fn new(ro: &DeviceRollout) -> Plan {
        let namespace = ro
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let name = ro.metadata.name.clone().unwrap_or_default();
        let revision = revision::revision(&ro.spec.content);
        let id = revision::configuration_id(&namespace, &name, &revision);
        Plan {
            id,
            revision,
            priority: ro.spec.priority,
            base: Cond::parse(&ro.spec.target),
            rings: ro
                .spec
                .rings
                .iter()
                .map(|r| Cond::parse(&r.target))
                .collect(),
            metrics: ro.spec.metrics.clone(),
            content: ConfigurationContent {
                device_content: Some(ro.spec.content.device.clone().into_iter().collect()),
                ..Default::default()
            },
            namespace,
            name,
        }
    }

    /// Number of rings.
    pub fn ring_count(&self) -> usize {
        self.rings.len()
    }

    /// The index of the last ring.
    pub fn last_ring(&self) -> usize {
        self.rings.len().saturating_sub(1)
    }

    /// What the configuration targets once widened to ring `i` (clamped to the last ring).
    pub fn target(&self, i: usize) -> Cond {
        let upto = &self.rings[..=i.min(self.last_ring())];
        if upto.contains(&Cond::All) {
            return self.base.clone();
        }
        let rings = if upto.len() == 1 {
            upto[0].clone()
        } else {
            Cond::Expr(
                upto.iter()
                    .map(|r| format!("({})", r.text()))
                    .collect::<Vec<_>>()
                    .join(" OR "),
            )
        };
        self.base.and(&rings)
    }

    /// The devices widening to ring `to` adds to ring `from` (`None`: the configuration
    /// does not exist yet). `None` when it adds none by construction.
    pub fn new_devices(&self, from: Option<usize>, to: usize) -> Option<Cond> {
        let wide = self.target(to);
        match from {
            None => Some(wide),
            Some(f) => wide.and_not(&self.target(f)),
        }
    }

    /// The custom metric queries of configuration `id`: each condition scoped to the
    /// devices where that configuration is applied.
    pub fn metric_queries(&self, id: &str) -> BTreeMap<String, String> {
        self.metrics
            .iter()
            .map(|(name, cond)| (name.clone(), metric_query(id, cond)))
            .collect()
    }

    /// The labels of configuration of `revision` in `state` at `ring`.
    pub fn labels(
        &self,
        revision: &str,
        ring: usize,
        state: ConfigState,
    ) -> BTreeMap<String, String> {
        revision::labels(&self.namespace, &self.name, revision, ring, state)
    }

    /// The target condition a configuration in `state` at `ring` should have.
    pub fn target_for(&self, ring: usize, state: ConfigState) -> String {
        match state {
            ConfigState::Held => NO_DEVICE_TARGET.to_string(),
            ConfigState::Stable => self.target(self.last_ring()).text().to_string(),
            ConfigState::Rolling => self.target(ring).text().to_string(),
        }
    }

    /// The configuration to create for the current revision.
    pub fn new_configuration(&self, ring: usize, state: ConfigState) -> Configuration {
        Configuration {
            id: self.id.clone(),
            schema_version: Some(SCHEMA_VERSION.to_string()),
            labels: self.labels(&self.revision, ring, state),
            content: self.content.clone(),
            target_condition: self.target_for(ring, state),
            priority: self.priority,
            metrics: ConfigurationMetrics {
                queries: self.metric_queries(&self.id),
                results: BTreeMap::new(),
            },
            ..Default::default()
        }
    }

    /// An existing configuration (of any revision of this rollout) with the mutable
    /// fields set as they should be for `state` at `ring`; content, id and the hub's
    /// read-only fields are kept. The labels are the base labels alone: the decision adds
    /// the [`revision::Marks`] the status calls for.
    pub fn retarget(
        &self,
        existing: &Configuration,
        revision: &str,
        ring: usize,
        state: ConfigState,
    ) -> Configuration {
        let mut c = existing.clone();
        c.labels = self.labels(revision, ring, state);
        c.target_condition = self.target_for(ring, state);
        c.priority = self.priority;
        c.metrics.queries = self.metric_queries(&existing.id);
        c
    }

    /// True when `existing` already has the mutable fields `retarget` would give it
    /// (marks aside: they follow the status, not the spec).
    pub fn matches(
        &self,
        existing: &Configuration,
        revision: &str,
        ring: usize,
        state: ConfigState,
    ) -> bool {
        let want = self.retarget(existing, revision, ring, state);
        revision::Marks::default().write(&existing.labels) == want.labels
            && want.target_condition == existing.target_condition
            && want.priority == existing.priority
            && want.metrics.queries == existing.metrics.queries
    }
}

/// `SELECT deviceId FROM devices WHERE configurations.[[id]].status='Applied' AND (cond)`.
pub fn metric_query(id: &str, condition: &str) -> String {
    let scope = format!("configurations.[[{id}]].status='Applied'");
    match Cond::parse(condition) {
        Cond::All => format!("SELECT deviceId FROM devices WHERE {scope}"),
        Cond::Expr(c) => format!("SELECT deviceId FROM devices WHERE {scope} AND ({c})"),
    }
}

/// A predicate true for devices one of `ids` targets or is applied to (the twin carries
/// `configurations.<id>`); `None` for no ids.
pub fn any_configuration(ids: &[String]) -> Option<Cond> {
    if ids.is_empty() {
        return None;
    }
    Some(Cond::Expr(
        ids.iter()
            .map(|id| format!("IS_DEFINED(configurations.[[{id}]])"))
            .collect::<Vec<_>>()
            .join(" OR "),
    ))
}

/// A predicate true for devices where one of `ids` is applied; `None` for no ids.
pub fn applied_any(ids: &[String]) -> Option<Cond> {
    if ids.is_empty() {
        return None;
    }
    Some(Cond::Expr(
        ids.iter()
            .map(|id| format!("configurations.[[{id}]].status='Applied'"))
            .collect::<Vec<_>>()
            .join(" OR "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{DeviceRolloutSpec, Ring, RolloutContent};

    pub(crate) fn rollout(target: &str, rings: &[&str]) -> DeviceRollout {
        let mut ro = DeviceRollout::new(
            "chiller-fw",
            DeviceRolloutSpec {
                hub: None,
                target: target.into(),
                priority: 20,
                content: RolloutContent {
                    device: BTreeMap::from([(
                        "properties.desired.fw".to_string(),
                        serde_json::json!({"v": "2"}),
                    )]),
                },
                metrics: BTreeMap::from([(
                    "failed".to_string(),
                    "properties.reported.fw.status='Error'".to_string(),
                )]),
                gate: Default::default(),
                rings: rings
                    .iter()
                    .enumerate()
                    .map(|(i, t)| Ring {
                        name: format!("r{i}"),
                        target: t.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                on_failure: Default::default(),
                baseline: Default::default(),
                suspend: false,
                drift: Default::default(),
            },
        );
        ro.metadata.namespace = Some("fleet".into());
        ro
    }

    #[test]
    fn rings_compose_cumulatively() {
        let p = Plan::new(&rollout(
            "tags.env='prod'",
            &["tags.ring='canary'", "tags.ring='early'", "*"],
        ));
        assert_eq!(
            p.target(0).text(),
            "(tags.env='prod') AND (tags.ring='canary')"
        );
        assert_eq!(
            p.target(1).text(),
            "(tags.env='prod') AND ((tags.ring='canary') OR (tags.ring='early'))"
        );
        assert_eq!(p.target(2).text(), "tags.env='prod'");
        assert_eq!(p.target(9), p.target(2));
        assert_eq!(
            p.new_devices(Some(0), 1).unwrap().text(),
            "((tags.env='prod') AND ((tags.ring='canary') OR (tags.ring='early'))) AND NOT ((tags.env='prod') AND (tags.ring='canary'))"
        );
        assert_eq!(p.new_devices(None, 0), Some(p.target(0)));
    }

    #[test]
    fn every_generated_condition_and_query_parses() {
        use crate::iothub::query::{Condition, Query};
        let p = Plan::new(&rollout(
            "tags.env='prod'",
            &["tags.ring='canary'", "tags.ring='early'", "*"],
        ));
        let ids = vec!["fleet_a_01234567".to_string(), "baseline".to_string()];
        let mut conds = vec![NO_DEVICE_TARGET.to_string()];
        for i in 0..3 {
            conds.push(p.target(i).text().to_string());
        }
        let fresh = p.new_devices(Some(0), 1).unwrap();
        conds.push(fresh.text().to_string());
        conds.push(
            fresh
                .and_not(&any_configuration(&ids).unwrap())
                .unwrap()
                .text()
                .to_string(),
        );
        conds.push(
            applied_any(&ids)
                .unwrap()
                .and_not(&any_configuration(&ids).unwrap())
                .unwrap()
                .text()
                .to_string(),
        );
        for c in &conds {
            Condition::parse(c).unwrap_or_else(|e| panic!("{c}: {e}"));
        }
        for q in p.metric_queries(&p.id).values() {
            Query::parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        }
        Query::parse(&metric_query(&p.id, "*")).unwrap();
    }

    #[test]
    fn star_base_target_means_the_rings_alone() {
        let p = Plan::new(&rollout("*", &["tags.ring='canary'", "*"]));
        assert_eq!(p.target(0).text(), "tags.ring='canary'");
        assert_eq!(p.target(1), Cond::All);
        assert_eq!(
            p.new_devices(Some(0), 1).unwrap().text(),
            "NOT (tags.ring='canary')"
        );
        assert_eq!(p.new_devices(Some(1), 1), None);
    }

    #[test]
    fn configurations_carry_scoped_metrics_and_labels() {
        let p = Plan::new(&rollout("tags.env='prod'", &["tags.ring='canary'", "*"]));
        let c = p.new_configuration(0, ConfigState::Rolling);
        assert_eq!(c.id, p.id);
        assert!(c.id.starts_with("fleet_chiller-fw_"));
        assert_eq!(
            c.metrics.queries["failed"],
            format!(
                "SELECT deviceId FROM devices WHERE configurations.[[{}]].status='Applied' AND (properties.reported.fw.status='Error')",
                p.id
            )
        );
        assert_eq!(c.labels[revision::label::RING], "0");
        assert_eq!(c.labels[revision::label::STATE], "rolling");
        assert!(
            c.content
                .device_content
                .as_ref()
                .unwrap()
                .contains_key("properties.desired.fw")
        );
        let held = p.retarget(&c, &p.revision, 0, ConfigState::Held);
        assert_eq!(held.target_condition, NO_DEVICE_TARGET);
        assert!(p.matches(&held, &p.revision, 0, ConfigState::Held));
        assert!(!p.matches(&c, &p.revision, 1, ConfigState::Rolling));
    }
}
