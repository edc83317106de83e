//! Validation shared by every mode: the checks a rollout must pass before anything is
//! planned or written (docs/design.md, semantics 9).
//!
//! Every problem is reported, each with its field path (`spec.rings[1].target`) and a
//! message that says what would be valid. Query text is checked with the hub's own
//! parser ([`Condition::parse`]), gate conditions are compiled as CEL with the variables
//! they may use, and IoT Hub's limits are checked before the hub would refuse.

use super::gate;
use super::plan::{Plan, metric_query};
use crate::iothub::configuration::{MAX_CUSTOM_METRICS, MAX_QUERY_LEN, validate_id};
use crate::iothub::query::Condition;
use crate::resources::{DeviceRollout, GateSpec, Hub, HubType};
use std::collections::{BTreeSet, HashSet};

/// Largest content (bytes of JSON): the twin's desired section holds 32 KB.
pub const MAX_CONTENT_BYTES: usize = 32 * 1024;
/// The prefix every content path must have.
pub const CONTENT_PREFIX: &str = "properties.desired.";

/// One problem, at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as a path into the resource (e.g. `spec.rings[1]`, `metadata.name`).
    pub path: String,
    /// What is wrong with it and what would be valid.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// How a map key appears in a field path: `.name` for plain names, `["a.b"]` otherwise.
pub fn key_segment(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        format!(".{key}")
    } else {
        format!("[{}]", serde_json::to_string(key).expect("string"))
    }
}

struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn dns_label(s: &str) -> bool {
    dns_subdomain(s) && s.len() <= 63 && !s.contains('.')
}

fn check_condition(p: &mut Problems, path: &str, text: &str) {
    if text.trim().is_empty() {
        p.add(path, "is empty; write a twin query predicate such as tags.ring='canary', or * for every device");
        return;
    }
    if text.len() > MAX_QUERY_LEN {
        p.add(
            path,
            format!(
                "is {} characters; IoT Hub takes at most {MAX_QUERY_LEN}",
                text.len()
            ),
        );
        return;
    }
    if let Err(e) = Condition::parse(text) {
        p.add(path, format!("{e}"));
    }
}

/// Every problem with a rollout. Empty means it can be planned.
pub fn validate_rollout(ro: &DeviceRollout) -> Vec<FieldError> {
    let mut p = Problems(Vec::new());
    match ro.metadata.name.as_deref() {
        None | Some("") => p.add("metadata.name", "is missing; give the rollout a name"),
        Some(n) if !dns_subdomain(n) => p.add(
            "metadata.name",
            format!("`{n}` is not a valid name: use lowercase letters, digits, '-' and '.', at most 253 characters"),
        ),
        _ => {}
    }
    if let Some(ns) = ro.metadata.namespace.as_deref()
        && !dns_label(ns)
    {
        p.add(
            "metadata.namespace",
            format!("`{ns}` is not a valid namespace: use lowercase letters, digits and '-', at most 63 characters"),
        );
    }
    let spec = &ro.spec;
    if let Some(hub) = spec.hub.as_deref()
        && !dns_subdomain(hub)
    {
        p.add("spec.hub", format!("`{hub}` is not a valid Hub name"));
    }
    check_condition(&mut p, "spec.target", &spec.target);
    if spec.priority < 0 {
        p.add(
            "spec.priority",
            format!("is {}; IoT Hub priorities are 0 or more", spec.priority),
        );
    }

    // Content.
    if spec.content.device.is_empty() {
        p.add(
            "spec.content.device",
            "is empty; give at least one path under properties.desired.",
        );
    }
    for (key, value) in &spec.content.device {
        let path = format!("spec.content.device{}", key_segment(key));
        match key.strip_prefix(CONTENT_PREFIX) {
            None => p.add(&path, format!("content paths must start with `{CONTENT_PREFIX}` (e.g. properties.desired.firmware)")),
            Some(rest) => {
                if let Some(bad) = rest.split('.').find(|seg| {
                    seg.is_empty() || seg.chars().any(|c| c.is_control() || matches!(c, '$' | '#' | ' '))
                }) {
                    p.add(&path, format!("segment `{bad}` is not a valid twin property name (no empty names, '$', '#', spaces or control characters)"));
                }
            }
        }
        if value.is_null() {
            p.add(
                &path,
                "is null; a configuration cannot remove a property by rolling out null",
            );
        }
    }
    let size = serde_json::to_string(&spec.content.device)
        .map(|s| s.len())
        .unwrap_or(0);
    if size > MAX_CONTENT_BYTES {
        p.add("spec.content.device", format!("is {size} bytes of JSON; a twin's desired properties hold at most {MAX_CONTENT_BYTES}"));
    }

    // Metrics.
    if spec.metrics.len() > MAX_CUSTOM_METRICS {
        p.add(
            "spec.metrics",
            format!(
                "has {} metrics; IoT Hub allows at most {MAX_CUSTOM_METRICS} per configuration",
                spec.metrics.len()
            ),
        );
    }
    let plan = Plan::new(ro);
    for (name, cond) in &spec.metrics {
        let path = format!("spec.metrics{}", key_segment(name));
        let ident = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            p.add(&path, format!("metric name `{name}` must be letters, digits and '_', starting with a letter (gates read it as metrics.{name})"));
        }
        check_condition(&mut p, &path, cond);
        let q = metric_query(&plan.id, cond);
        if q.len() > MAX_QUERY_LEN {
            p.add(
                &path,
                format!(
                    "the scoped query is {} characters; IoT Hub takes at most {MAX_QUERY_LEN}",
                    q.len()
                ),
            );
        }
    }

    // Rings.
    if spec.rings.is_empty() {
        p.add("spec.rings", "is empty; give at least one ring");
    }
    let mut names = HashSet::new();
    for (i, ring) in spec.rings.iter().enumerate() {
        let path = format!("spec.rings[{i}]");
        if ring.name.trim().is_empty() || ring.name.chars().any(char::is_whitespace) {
            p.add(
                format!("{path}.name"),
                "must be a non-empty name without spaces",
            );
        } else if !names.insert(ring.name.as_str()) {
            p.add(
                format!("{path}.name"),
                format!(
                    "`{}` is used by an earlier ring; ring names must be unique",
                    ring.name
                ),
            );
        }
        check_condition(&mut p, &format!("{path}.target"), &ring.target);
        if let Some(g) = &ring.gate {
            check_gate(&mut p, &format!("{path}.gate"), g, spec);
        }
    }
    check_gate(&mut p, "spec.gate", &spec.gate, spec);
    if !spec.rings.is_empty() {
        let widest = plan.target(plan.last_ring());
        if widest.text().len() > MAX_QUERY_LEN {
            p.add("spec.rings", format!("the target of the last ring is {} characters; IoT Hub takes at most {MAX_QUERY_LEN}", widest.text().len()));
        }
        for i in 0..spec.rings.len() {
            let g = gate::EffectiveGate::for_ring(spec, i);
            if g.deadline <= g.bake {
                p.add(
                    format!("spec.rings[{i}]"),
                    format!(
                        "the gate's deadline ({}) must be longer than its bake time ({})",
                        fmt_dur(g.deadline),
                        fmt_dur(g.bake)
                    ),
                );
            }
        }
    }
    if let Err(e) = validate_id(&plan.id) {
        p.add(
            "metadata.name",
            format!("gives configuration id `{}`: {}", plan.id, e.message),
        );
    }
    p.0
}

fn fmt_dur(d: jiff::SignedDuration) -> String {
    format!("{}s", d.as_secs())
}

fn check_gate(
    p: &mut Problems,
    path: &str,
    g: &GateSpec,
    spec: &crate::resources::DeviceRolloutSpec,
) {
    let metrics: BTreeSet<String> = spec.metrics.keys().cloned().collect();
    for (field, expr) in [("success", &g.success), ("failure", &g.failure)] {
        if let Some(expr) = expr
            && let Err(e) = gate::check(expr, &metrics)
        {
            p.add(format!("{path}.{field}"), e);
        }
    }
    for (field, d) in [("bake", g.bake), ("deadline", g.deadline)] {
        if let Some(d) = d
            && d.is_negative()
        {
            p.add(format!("{path}.{field}"), "must not be negative");
        }
    }
}

/// Every problem with a Hub.
pub fn validate_hub(hub: &Hub) -> Vec<FieldError> {
    let mut p = Problems(Vec::new());
    if hub
        .metadata
        .name
        .as_deref()
        .is_none_or(|n| !dns_subdomain(n))
    {
        p.add(
            "metadata.name",
            "is missing or not a valid name (lowercase letters, digits, '-' and '.')",
        );
    }
    let s = &hub.spec;
    match s.type_ {
        HubType::Azure => {
            match &s.connection_string_secret {
                None => p.add("spec.connectionStringSecret", "is required for type: azure (a Secret key holding the service connection string)"),
                Some(r) if r.name.is_empty() => p.add("spec.connectionStringSecret.name", "is empty"),
                _ => {}
            }
            if s.url.is_some() {
                p.add("spec.url", "is only for type: embedded; an Azure hub's address comes from its connection string");
            }
        }
        HubType::Embedded => {
            if let Some(url) = &s.url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                p.add(
                    "spec.url",
                    format!("`{url}` is not an http:// or https:// URL"),
                );
            }
            // A served hub (`url`) checks SAS tokens, so it needs a connection string like
            // an Azure hub; one in process needs none.
            match (&s.url, &s.connection_string_secret) {
                (None, Some(_)) => p.add(
                    "spec.connectionStringSecret",
                    "is only for type: azure, or type: embedded with a url; an in-process hub needs no connection string",
                ),
                (Some(_), Some(r)) if r.name.is_empty() => {
                    p.add("spec.connectionStringSecret.name", "is empty")
                }
                _ => {}
            }
        }
    }
    for (field, v) in [
        ("queriesPerMinute", s.limits.queries_per_minute),
        (
            "configurationWritesPerMinute",
            s.limits.configuration_writes_per_minute,
        ),
        ("maxConfigurations", s.limits.max_configurations),
    ] {
        if v == 0 {
            p.add(format!("spec.limits.{field}"), "must be at least 1");
        }
    }
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{DeviceRolloutSpec, Ring, RolloutContent};
    use std::collections::BTreeMap;

    fn good() -> DeviceRollout {
        let mut ro = DeviceRollout::new(
            "chiller-fw",
            DeviceRolloutSpec {
                hub: Some("prod".into()),
                target: "tags.environment='prod'".into(),
                priority: 20,
                content: RolloutContent {
                    device: BTreeMap::from([(
                        "properties.desired.firmware".to_string(),
                        serde_json::json!({"version": "2.4.0"}),
                    )]),
                },
                metrics: BTreeMap::from([(
                    "failed".to_string(),
                    "properties.reported.firmware.status='Error'".to_string(),
                )]),
                gate: GateSpec {
                    failure: Some("lowerBound(metrics.failed, applied) > 0.02".into()),
                    bake: Some("10m".parse().unwrap()),
                    deadline: Some("2h".parse().unwrap()),
                    ..Default::default()
                },
                rings: vec![
                    Ring {
                        name: "canary".into(),
                        target: "tags.ring='canary'".into(),
                        ..Default::default()
                    },
                    Ring {
                        name: "broad".into(),
                        target: "*".into(),
                        ..Default::default()
                    },
                ],
                on_failure: Default::default(),
                baseline: Default::default(),
                suspend: false,
                drift: Default::default(),
            },
        );
        ro.metadata.namespace = Some("fleet".into());
        ro
    }

    fn paths(ro: &DeviceRollout) -> Vec<String> {
        validate_rollout(ro).into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn key_segments() {
        assert_eq!(key_segment("rings"), ".rings");
        assert_eq!(
            key_segment("properties.desired.fw"),
            "[\"properties.desired.fw\"]"
        );
        assert_eq!(key_segment("1x"), "[\"1x\"]");
    }

    #[test]
    fn a_good_rollout_passes() {
        assert_eq!(validate_rollout(&good()), vec![]);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut ro = good();
        ro.metadata.name = Some("Chiller FW".into());
        ro.spec.rings.push(Ring {
            name: "canary".into(),
            target: "tags.ring = = 'x' !!".into(),
            ..Default::default()
        });
        ro.spec
            .content
            .device
            .insert("tags.x".into(), serde_json::json!(1));
        ro.spec.gate.success = Some("metrics.curent > 1.0".into());
        ro.spec.rings[0].gate = Some(GateSpec {
            bake: Some("3h".parse().unwrap()),
            ..Default::default()
        });
        for i in 0..5 {
            ro.spec.metrics.insert(format!("m{i}"), "*".into());
        }
        let errors = validate_rollout(&ro);
        let p: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "metadata.name",
            "spec.rings[2].name",
            "spec.rings[2].target",
            "spec.content.device[\"tags.x\"]",
            "spec.gate.success",
            "spec.rings[0]",
            "spec.metrics",
        ] {
            assert!(p.contains(&want), "missing {want} in {errors:#?}");
        }
        let target = errors
            .iter()
            .find(|e| e.path == "spec.rings[2].target")
            .unwrap();
        assert!(target.message.contains("column"), "{target}");
        let dup = errors
            .iter()
            .find(|e| e.path == "spec.rings[2].name")
            .unwrap();
        assert!(dup.message.contains("unique"), "{dup}");
        let success = errors
            .iter()
            .find(|e| e.path == "spec.gate.success")
            .unwrap();
        assert!(success.message.contains("metrics.curent"), "{success}");
    }

    #[test]
    fn limits_are_checked() {
        let mut ro = good();
        ro.spec.rings.clear();
        assert!(paths(&ro).contains(&"spec.rings".to_string()));
        let mut ro = good();
        ro.spec.content.device.insert(
            "properties.desired.blob".into(),
            serde_json::json!("x".repeat(40_000)),
        );
        assert!(paths(&ro).contains(&"spec.content.device".to_string()));
        let mut ro = good();
        ro.spec.target = format!("tags.x IN [{}]", vec!["'abcdefgh'"; 1000].join(","));
        assert!(paths(&ro).contains(&"spec.target".to_string()));
        let mut ro = good();
        ro.spec.metrics.insert("bad-name".into(), "*".into());
        assert!(paths(&ro).contains(&"spec.metrics.bad-name".to_string()));
        let mut ro = good();
        ro.spec
            .content
            .device
            .insert("properties.desired.a$b".into(), serde_json::json!(1));
        assert!(
            paths(&ro).contains(&"spec.content.device[\"properties.desired.a$b\"]".to_string())
        );
    }

    #[test]
    fn hubs_are_checked() {
        use crate::resources::{HubSpec, SecretKeyRef};
        let mut hub = Hub::new(
            "prod",
            HubSpec {
                type_: HubType::Azure,
                connection_string_secret: None,
                url: None,
                limits: Default::default(),
            },
        );
        let e = validate_hub(&hub);
        assert_eq!(e[0].path, "spec.connectionStringSecret");
        hub.spec.connection_string_secret = Some(SecretKeyRef {
            name: "conn".into(),
            key: None,
        });
        assert_eq!(validate_hub(&hub), vec![]);
        hub.spec.type_ = HubType::Embedded;
        hub.spec.url = Some("ftp://x".into());
        let p: Vec<String> = validate_hub(&hub).into_iter().map(|e| e.path).collect();
        assert_eq!(p, ["spec.url"]);
        // A served hub checks SAS tokens: a connection string goes with its url. One in
        // process needs none.
        hub.spec.url = Some("http://127.0.0.1:8080".into());
        assert_eq!(validate_hub(&hub), vec![]);
        hub.spec.url = None;
        let p: Vec<String> = validate_hub(&hub).into_iter().map(|e| e.path).collect();
        assert_eq!(p, ["spec.connectionStringSecret"]);
    }
}
