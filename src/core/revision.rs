//! Revisions, configuration ids and labels (docs/design.md, semantics 1).
//!
//! Configuration content is immutable in IoT Hub, so a rollout gets one configuration per
//! revision of its content. The revision is a short hash of the content, stable across key
//! order and formatting; the configuration id is derived from the rollout's namespace, name
//! and revision, so every write is idempotent and two controllers derive the same ids.
//! Labels on the configuration name the rollout, revision, ring and state, so the state
//! can be rebuilt from the hub alone.
//!
//! Besides those, the current revision's configuration carries [`Marks`]: when its ring
//! was targeted, applied and passed, an approval of the next ring, an operator's pause,
//! and the last operator request applied. They are what the status knows and the hub
//! otherwise would not, so that a controller that lost the status (a restart without the
//! CR's status, a wiped state store) resumes where it was instead of re-baking a ring,
//! forgetting a pause, or applying a `promote` a second time.

use crate::iothub::configuration::{Configuration, MAX_ID_LEN};
use crate::resources::RolloutContent;
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Hex digits in a revision.
pub const REVISION_LEN: usize = 8;
/// Longest label value IoT Hub takes.
pub const MAX_LABEL_LEN: usize = 128;

/// Label keys. IoT Hub's label charset has no `/`, so these are dotted, not
/// Kubernetes-style `ringmaster.dev/rollout`.
pub mod label {
    /// Always `ringmaster`: marks the configurations this tool owns.
    pub const MANAGED_BY: &str = "ringmaster.managed-by";
    /// The value of [`MANAGED_BY`] on every configuration ringmaster writes.
    pub const MANAGED_BY_VALUE: &str = "ringmaster";
    /// The rollout's namespace.
    pub const NAMESPACE: &str = "ringmaster.namespace";
    /// The rollout's name.
    pub const ROLLOUT: &str = "ringmaster.rollout";
    /// The content revision.
    pub const REVISION: &str = "ringmaster.revision";
    /// The index of the widest ring the target condition includes.
    pub const RING: &str = "ringmaster.ring";
    /// `rolling`, `stable` or `held` (see [`super::ConfigState`]).
    pub const STATE: &str = "ringmaster.state";

    // Marks (see [`super::Marks`]): times are Unix seconds.
    /// When the ring in [`RING`] was targeted.
    pub const STARTED: &str = "ringmaster.started";
    /// When the hub reported that ring applied (its bake counts from here).
    pub const APPLIED: &str = "ringmaster.applied";
    /// When that ring's gate passed.
    pub const PASSED: &str = "ringmaster.passed";
    /// When an operator approved the ring after it.
    pub const APPROVED: &str = "ringmaster.approved";
    /// The id of the operator's `pause` in effect.
    pub const PAUSED: &str = "ringmaster.paused";
    /// The id of the last operator request applied.
    pub const OPERATION: &str = "ringmaster.operation";

    /// Every mark key.
    pub const MARKS: [&str; 6] = [STARTED, APPLIED, PASSED, APPROVED, PAUSED, OPERATION];
}

/// What a configuration of a rollout is, as its `ringmaster.state` label says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigState {
    /// Moving through the rings.
    Rolling,
    /// Passed every ring; stays underneath newer revisions.
    Stable,
    /// Rolled back: narrowed to no device, kept until a new revision arrives.
    Held,
}

impl ConfigState {
    /// The `ringmaster.state` label value: `rolling`, `stable` or `held`.
    pub fn label(self) -> &'static str {
        match self {
            ConfigState::Rolling => "rolling",
            ConfigState::Stable => "stable",
            ConfigState::Held => "held",
        }
    }
    /// Reads a `ringmaster.state` label value; `None` for anything but the three values
    /// [`ConfigState::label`] writes.
    pub fn from_label(s: &str) -> Option<ConfigState> {
        match s {
            "rolling" => Some(ConfigState::Rolling),
            "stable" => Some(ConfigState::Stable),
            "held" => Some(ConfigState::Held),
            _ => None,
        }
    }
}

/// The revision of some content: the first 8 hex digits of the SHA-256 of its canonical
/// JSON (object keys sorted at every level, no whitespace).
pub fn revision(content: &RolloutContent) -> String {
    let value = serde_json::to_value(content).expect("content serializes");
    let mut canonical = String::new();
    write_canonical(&value, &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    hex::encode(digest)[..REVISION_LEN].to_string()
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).expect("string"));
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn short_hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))[..8].to_string()
}

/// The configuration id of a revision: `<namespace>_<name>_<revision>`, lowercase.
///
/// Kubernetes namespaces hold `[a-z0-9-]` and names `[a-z0-9.-]`; IoT Hub ids take
/// lowercase letters, digits and `- + % _ * ! '`. So `_` separates the parts (it occurs in
/// neither) and a `.` in the name becomes `_`: the mapping stays one-to-one for valid
/// names. Ids longer than 128 characters keep a prefix and add a hash of the full
/// namespace/name.
pub fn configuration_id(namespace: &str, name: &str, revision: &str) -> String {
    let clean = |s: &str| -> String {
        s.to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let stem = format!("{}_{}", clean(namespace), clean(name));
    let id = format!("{stem}_{revision}");
    if id.len() <= MAX_ID_LEN {
        return id;
    }
    let hash = short_hash(&format!("{namespace}/{name}"));
    let keep = MAX_ID_LEN - revision.len() - hash.len() - 2;
    format!("{}_{hash}_{revision}", &stem[..keep])
}

/// A label value IoT Hub accepts: at most 128 characters of its charset. Kubernetes
/// names and namespaces fit the charset; only their length may need a hash.
pub fn label_value(s: &str) -> String {
    const SPECIALS: &str = "-:.+%_#*?!(),=@;'";
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || SPECIALS.contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.len() <= MAX_LABEL_LEN && clean == s {
        return clean;
    }
    let hash = short_hash(s);
    let keep = clean.len().min(MAX_LABEL_LEN - hash.len() - 1);
    format!("{}_{hash}", &clean[..keep])
}

/// The labels of one configuration of a rollout.
pub fn labels(
    namespace: &str,
    name: &str,
    revision: &str,
    ring: usize,
    state: ConfigState,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            label::MANAGED_BY.to_string(),
            label::MANAGED_BY_VALUE.to_string(),
        ),
        (label::NAMESPACE.to_string(), label_value(namespace)),
        (label::ROLLOUT.to_string(), label_value(name)),
        (label::REVISION.to_string(), revision.to_string()),
        (label::RING.to_string(), ring.to_string()),
        (label::STATE.to_string(), state.label().to_string()),
    ])
}

/// True when the configuration belongs to the rollout `namespace/name`.
pub fn belongs_to(config: &Configuration, namespace: &str, name: &str) -> bool {
    let l = &config.labels;
    l.get(label::MANAGED_BY).map(String::as_str) == Some(label::MANAGED_BY_VALUE)
        && l.get(label::NAMESPACE) == Some(&label_value(namespace))
        && l.get(label::ROLLOUT) == Some(&label_value(name))
}

/// What a configuration's labels say about it; `None` when they are not ringmaster's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigLabels {
    /// `ringmaster.revision`: the content revision (8 hex digits).
    pub revision: String,
    /// `ringmaster.ring`: index of the widest ring the target condition includes.
    pub ring: usize,
    /// `ringmaster.state`: rolling, stable or held.
    pub state: ConfigState,
    /// The marks kept in the other `ringmaster.*` labels.
    pub marks: Marks,
}

impl ConfigLabels {
    /// Reads the labels of `config`; `None` when the revision, ring or state label is
    /// missing or does not parse.
    pub fn read(config: &Configuration) -> Option<ConfigLabels> {
        let l = &config.labels;
        Some(ConfigLabels {
            revision: l.get(label::REVISION)?.clone(),
            ring: l.get(label::RING)?.parse().ok()?,
            state: ConfigState::from_label(l.get(label::STATE)?)?,
            marks: Marks::read(l),
        })
    }
}

/// What the status knows about the current revision that the hub should keep too, written
/// as labels on its configuration. A mark that cannot be read (edited by hand) is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// When the ring in the `ringmaster.ring` label was targeted.
    pub started: Option<Timestamp>,
    /// When the hub reported that ring applied.
    pub applied: Option<Timestamp>,
    /// When its gate passed.
    pub passed: Option<Timestamp>,
    /// When an operator approved the ring after it.
    pub approved: Option<Timestamp>,
    /// The operator's `pause` in effect (its id, as a label value).
    pub paused: Option<String>,
    /// The last operator request applied (its id, as a label value).
    pub operation: Option<String>,
}

impl Marks {
    /// The marks among `labels`.
    pub fn read(labels: &BTreeMap<String, String>) -> Marks {
        let time = |k: &str| {
            labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(|s| Timestamp::from_second(s).ok())
        };
        Marks {
            started: time(label::STARTED),
            applied: time(label::APPLIED),
            passed: time(label::PASSED),
            approved: time(label::APPROVED),
            paused: labels.get(label::PAUSED).cloned(),
            operation: labels.get(label::OPERATION).cloned(),
        }
    }

    /// `labels` with these marks in place of whatever marks they had.
    pub fn write(&self, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| !label::MARKS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let times = [
            (label::STARTED, self.started),
            (label::APPLIED, self.applied),
            (label::PASSED, self.passed),
            (label::APPROVED, self.approved),
        ];
        for (k, t) in times {
            if let Some(t) = t {
                out.insert(k.to_string(), t.as_second().to_string());
            }
        }
        for (k, v) in [
            (label::PAUSED, &self.paused),
            (label::OPERATION, &self.operation),
        ] {
            if let Some(v) = v {
                out.insert(k.to_string(), label_value(v));
            }
        }
        out
    }

    /// True when `id` is the operation recorded here (ids are compared as label values).
    pub fn is_operation(&self, id: &str) -> bool {
        self.operation.as_deref() == Some(label_value(id).as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iothub::configuration::validate_id;
    use proptest::prelude::*;

    fn content(json: &str) -> RolloutContent {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn revision_is_stable_under_key_order_and_formatting() {
        let a = content(
            r#"{"device": {"properties.desired.fw": {"version": "2.4.0", "url": "u"}, "properties.desired.x": 1}}"#,
        );
        let b = content(
            r#"{ "device": { "properties.desired.x": 1,
            "properties.desired.fw": { "url": "u", "version": "2.4.0" } } }"#,
        );
        assert_eq!(revision(&a), revision(&b));
        assert_eq!(revision(&a).len(), REVISION_LEN);
        let c = content(
            r#"{"device": {"properties.desired.fw": {"version": "2.4.1", "url": "u"}, "properties.desired.x": 1}}"#,
        );
        assert_ne!(revision(&a), revision(&c));
        // Arrays keep their order: it is content.
        let d = content(r#"{"device": {"properties.desired.a": [1, 2]}}"#);
        let e = content(r#"{"device": {"properties.desired.a": [2, 1]}}"#);
        assert_ne!(revision(&d), revision(&e));
    }

    #[test]
    fn ids_are_valid_deterministic_and_bounded() {
        let id = configuration_id("fleet", "chiller-fw", "3f9a2c1d");
        assert_eq!(id, "fleet_chiller-fw_3f9a2c1d");
        validate_id(&id).unwrap();
        let dotted = configuration_id("fleet", "chiller.fw", "3f9a2c1d");
        assert_eq!(dotted, "fleet_chiller_fw_3f9a2c1d");
        validate_id(&dotted).unwrap();
        let long = configuration_id("fleet", &"n".repeat(250), "3f9a2c1d");
        assert!(long.len() <= MAX_ID_LEN);
        validate_id(&long).unwrap();
        assert!(long.ends_with("_3f9a2c1d"));
        assert_eq!(
            long,
            configuration_id("fleet", &"n".repeat(250), "3f9a2c1d")
        );
        assert_ne!(
            long,
            configuration_id("fleet", &"n".repeat(249), "3f9a2c1d")
        );
    }

    #[test]
    fn labels_round_trip() {
        let c = Configuration {
            labels: labels("fleet", "chiller-fw", "3f9a2c1d", 2, ConfigState::Held),
            ..Default::default()
        };
        assert!(belongs_to(&c, "fleet", "chiller-fw"));
        assert!(!belongs_to(&c, "fleet", "chiller"));
        assert_eq!(
            ConfigLabels::read(&c),
            Some(ConfigLabels {
                revision: "3f9a2c1d".into(),
                ring: 2,
                state: ConfigState::Held,
                marks: Marks::default()
            })
        );
        let long = label_value(&"x".repeat(300));
        assert!(long.len() <= MAX_LABEL_LEN);
    }

    #[test]
    fn marks_round_trip_and_replace_only_marks() {
        let t: Timestamp = "2026-01-01T00:05:00.750Z".parse().unwrap();
        let marks = Marks {
            started: Some(t),
            applied: Some(t),
            passed: None,
            approved: Some(t),
            paused: Some("pause/1".into()),
            operation: Some("op-7".into()),
        };
        let base = labels("fleet", "chiller-fw", "3f9a2c1d", 1, ConfigState::Rolling);
        let with = marks.write(&base);
        assert_eq!(with[label::STARTED], "1767225900");
        assert_eq!(with[label::PAUSED], label_value("pause/1"));
        let back = Marks::read(&with);
        assert_eq!(
            back.started,
            Some(Timestamp::from_second(1767225900).unwrap()),
            "seconds are kept"
        );
        assert_eq!(back.passed, None);
        assert!(back.is_operation("op-7"));
        assert_eq!(
            Marks::default().write(&with),
            base,
            "no marks: the base labels alone"
        );
        for v in with.values() {
            assert_eq!(&label_value(v), v, "every value is a valid label value");
        }
    }

    proptest! {
        #[test]
        fn ids_always_pass_iot_hub_rules(ns in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
                                        name in "[a-z0-9]([-a-z0-9.]{0,200}[a-z0-9])?") {
            let id = configuration_id(&ns, &name, "0123abcd");
            prop_assert!(validate_id(&id).is_ok(), "{}", id);
        }
    }
}
