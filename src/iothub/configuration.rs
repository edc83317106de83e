//! Automatic device configurations: the wire type and its validation rules.
//!
//! The shape follows the service's `Configuration` definition (docs/design.md §1.2). Unknown
//! fields are ignored on input (the .NET SDK sends `contentType`), and timestamps and etags
//! are written by the hub, never trusted from the caller.

use super::error::{ErrorCode, HubError, Result};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most configurations a hub holds (S1/S2); the free tier allows 10.
pub const DEFAULT_MAX_CONFIGURATIONS: usize = 100;
/// Most custom metrics per configuration.
pub const MAX_CUSTOM_METRICS: usize = 5;
/// Longest configuration id.
pub const MAX_ID_LEN: usize = 128;
/// Longest query or target condition.
pub const MAX_QUERY_LEN: usize = 8192;

/// An automatic device configuration, as IoT Hub returns it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Configuration {
    /// `id`: lowercase, at most 128 characters (docs/design.md §1.3; see [`validate_id`]).
    pub id: String,
    /// `schemaVersion`: the configuration schema version; the hub fills `"1.0"` when absent.
    #[serde(default)]
    pub schema_version: Option<String>,
    /// `labels`: free-form name/value pairs; `null` reads as empty.
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    /// `content`: what the configuration writes into targeted twins; immutable after
    /// creation (docs/design.md §1.6).
    #[serde(default)]
    pub content: ConfigurationContent,
    /// `targetCondition`: a twin query condition (`tags.ring = 'canary'`) choosing the
    /// targeted devices, at most 8192 characters; `null` reads as empty.
    #[serde(default, deserialize_with = "null_as_default")]
    pub target_condition: String,
    /// `createdTimeUtc`: when the hub created the configuration; written by the hub only.
    #[serde(default)]
    pub created_time_utc: Option<Timestamp>,
    /// `lastUpdatedTimeUtc`: when the hub last changed the configuration; written by the
    /// hub only.
    #[serde(default)]
    pub last_updated_time_utc: Option<Timestamp>,
    /// `priority`: the higher number wins a twin path; ties go to the configuration created
    /// last (docs/design.md §1.5).
    #[serde(default, deserialize_with = "null_as_default")]
    pub priority: i32,
    /// `systemMetrics`: `targetedCount` and `appliedCount`, queries and results both
    /// filled by the hub (docs/design.md §1.9).
    #[serde(default, deserialize_with = "null_as_default")]
    pub system_metrics: ConfigurationMetrics,
    /// `metrics`: up to 5 custom metric queries and the hub's counts for them.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metrics: ConfigurationMetrics,
    /// `etag`: the hub's version tag, sent back quoted in `If-Match` (docs/design.md §3.3).
    #[serde(default)]
    pub etag: Option<String>,
}

/// What a configuration writes: paths into the twin (`properties.desired.firmware`) and the
/// value for each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationContent {
    /// `deviceContent`: twin path (`properties.desired.…`) to value; the only kind the
    /// embedded hub accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_content: Option<serde_json::Map<String, serde_json::Value>>,
    /// `moduleContent`: module twin content (IoT Edge); the embedded hub refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_content: Option<serde_json::Map<String, serde_json::Value>>,
    /// `modulesContent`: IoT Edge deployment content per module; the embedded hub refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_content: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Metric queries and the counts the hub computed for them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationMetrics {
    /// `queries`: metric name to its query (`SELECT deviceId FROM devices WHERE …`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub queries: BTreeMap<String, String>,
    /// `results`: metric name to the number of devices its query returned, as last
    /// computed by the hub.
    #[serde(default, deserialize_with = "null_as_default")]
    pub results: BTreeMap<String, i64>,
}

fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Characters IoT Hub allows in a configuration id besides lowercase letters and digits.
const ID_SPECIALS: &str = "-+%_*!'";

/// Checks a configuration id against IoT Hub's rules (docs/design.md §1.3): at most 128
/// characters of lowercase letters, digits and `- + % _ * ! '`.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(HubError::new(
            ErrorCode::ArgumentNull,
            "configuration id is empty; give 1 to 128 characters of lowercase letters, digits and - + % _ * ! '",
        ));
    }
    if id.chars().count() > MAX_ID_LEN {
        return Err(HubError::invalid(format!(
            "configuration id '{id}' is {} characters long; at most {MAX_ID_LEN} are allowed",
            id.chars().count()
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || ID_SPECIALS.contains(*c)))
    {
        return Err(HubError::invalid(format!(
            "configuration id '{id}' contains '{bad}'; allowed are lowercase letters, digits and - + % _ * ! '"
        )));
    }
    Ok(())
}

impl Configuration {
    /// The device content, or an empty map.
    pub fn device_content(&self) -> serde_json::Map<String, serde_json::Value> {
        self.content.device_content.clone().unwrap_or_default()
    }

    /// True when the two configurations differ in what is immutable after creation
    /// (id and content).
    pub fn content_differs(&self, other: &Configuration) -> bool {
        self.content != other.content
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_follow_iot_hub_rules() {
        assert!(validate_id("chiller-fw-3f9a2c1d").is_ok());
        assert!(validate_id("a+b%c_d*e!f'g").is_ok());
        assert_eq!(validate_id("").unwrap_err().code, ErrorCode::ArgumentNull);
        let e = validate_id("Upper").unwrap_err();
        assert_eq!(e.code, ErrorCode::ArgumentInvalid);
        assert!(e.message.contains("'U'"), "{e}");
        assert!(validate_id("has space").is_err());
        assert!(validate_id("has/slash").is_err());
        assert!(validate_id(&"a".repeat(128)).is_ok());
        assert!(validate_id(&"a".repeat(129)).is_err());
    }

    #[test]
    fn unknown_fields_and_nulls_are_accepted() {
        let c: Configuration = serde_json::from_value(json!({
            "id": "x", "contentType": "assignment", "labels": null, "priority": null,
            "content": {"deviceContent": {"properties.desired.a": {"b": 1}}},
            "metrics": {"queries": {"m": "SELECT deviceId FROM devices"}, "results": null}
        }))
        .unwrap();
        assert_eq!(c.priority, 0);
        assert!(c.labels.is_empty());
        assert_eq!(c.metrics.queries.len(), 1);
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["targetCondition"], json!(""));
        assert!(back["content"].get("moduleContent").is_none());
    }
}
