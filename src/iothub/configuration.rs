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
    pub id: String,
    #[serde(default)]
    pub schema_version: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub content: ConfigurationContent,
    #[serde(default, deserialize_with = "null_as_default")]
    pub target_condition: String,
    #[serde(default)]
    pub created_time_utc: Option<Timestamp>,
    #[serde(default)]
    pub last_updated_time_utc: Option<Timestamp>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub priority: i32,
    #[serde(default, deserialize_with = "null_as_default")]
    pub system_metrics: ConfigurationMetrics,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metrics: ConfigurationMetrics,
    #[serde(default)]
    pub etag: Option<String>,
}

/// What a configuration writes: paths into the twin (`properties.desired.firmware`) and the
/// value for each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_content: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_content: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_content: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Metric queries and the counts the hub computed for them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationMetrics {
    #[serde(default, deserialize_with = "null_as_default")]
    pub queries: BTreeMap<String, String>,
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
