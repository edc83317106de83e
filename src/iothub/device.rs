//! Device identities: the registry entry that owns a twin.
//!
//! The JSON shape is the service's `Device` definition (docs/design.md §3.2). Keys are generated
//! when the caller gives none; dates the hub has not set are `0001-01-01T00:00:00Z`, as the
//! service writes them (never `""`).

use super::error::{ErrorCode, HubError, Result};
use base64::Engine as _;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Longest device id.
pub const MAX_DEVICE_ID_LEN: usize = 128;
const DEVICE_ID_SPECIALS: &str = "-:.+%_#*?!(),=@;$'";

/// The instant IoT Hub writes for "never".
pub fn never() -> Timestamp {
    "0001-01-01T00:00:00Z".parse().expect("valid timestamp")
}

/// A device identity as the registry returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub device_id: String,
    #[serde(default)]
    pub generation_id: String,
    #[serde(default)]
    pub etag: String,
    #[serde(default = "disconnected")]
    pub connection_state: String,
    #[serde(default = "enabled")]
    pub status: String,
    #[serde(default)]
    pub status_reason: Option<String>,
    #[serde(default = "never")]
    pub connection_state_updated_time: Timestamp,
    #[serde(default = "never")]
    pub status_updated_time: Timestamp,
    #[serde(default = "never")]
    pub last_activity_time: Timestamp,
    #[serde(default)]
    pub cloud_to_device_message_count: i64,
    #[serde(default)]
    pub authentication: Authentication,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub device_scope: Option<String>,
    #[serde(default)]
    pub parent_scopes: Vec<String>,
}

fn disconnected() -> String {
    "Disconnected".into()
}
fn enabled() -> String {
    "enabled".into()
}

/// How a device authenticates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    #[serde(rename = "type", default = "sas")]
    pub kind: String,
    #[serde(default)]
    pub symmetric_key: SymmetricKey,
    #[serde(default)]
    pub x509_thumbprint: X509Thumbprint,
}

fn sas() -> String {
    "sas".into()
}

impl Default for Authentication {
    fn default() -> Self {
        Authentication {
            kind: sas(),
            symmetric_key: SymmetricKey::default(),
            x509_thumbprint: X509Thumbprint::default(),
        }
    }
}

/// The device's symmetric keys (base64).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKey {
    #[serde(default)]
    pub primary_key: Option<String>,
    #[serde(default)]
    pub secondary_key: Option<String>,
}

/// X.509 thumbprints, for certificate-authenticated devices.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprint {
    #[serde(default)]
    pub primary_thumbprint: Option<String>,
    #[serde(default)]
    pub secondary_thumbprint: Option<String>,
}

/// Device capabilities.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    #[serde(default)]
    pub iot_edge: bool,
}

/// Checks a device id (docs/design.md §5.3): 1 to 128 ASCII alphanumerics or `- : . + % _ # * ? ! ( ) , = @ ; $ '`.
pub fn validate_device_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(HubError::new(
            ErrorCode::ArgumentNull,
            "device id is empty; give 1 to 128 ASCII letters, digits or - : . + % _ # * ? ! ( ) , = @ ; $ '",
        ));
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(HubError::invalid(format!(
            "device id is {} characters long; at most {MAX_DEVICE_ID_LEN} are allowed",
            id.chars().count()
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || DEVICE_ID_SPECIALS.contains(*c)))
    {
        return Err(HubError::invalid(format!(
            "device id '{}' contains {bad:?}; allowed are ASCII letters, digits and - : . + % _ # * ? ! ( ) , = @ ; $ '",
            id.escape_debug()
        )));
    }
    Ok(())
}

/// A new random base64 key of 32 bytes, as the hub generates for SAS devices.
pub fn generate_key() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The etag format the registry uses for devices: base64 of a decimal counter.
pub fn device_etag(counter: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(counter.to_string())
}

impl Device {
    /// A new enabled device with generated SAS keys.
    pub fn new(device_id: &str) -> Device {
        Device {
            device_id: device_id.to_string(),
            generation_id: String::new(),
            etag: String::new(),
            connection_state: disconnected(),
            status: enabled(),
            status_reason: None,
            connection_state_updated_time: never(),
            status_updated_time: never(),
            last_activity_time: never(),
            cloud_to_device_message_count: 0,
            authentication: Authentication::default(),
            capabilities: Capabilities::default(),
            device_scope: None,
            parent_scopes: Vec::new(),
        }
    }

    /// Checks the caller-settable fields.
    pub fn validate(&self) -> Result<()> {
        validate_device_id(&self.device_id)?;
        if self.status != "enabled" && self.status != "disabled" {
            return Err(HubError::invalid(format!(
                "device '{}': status '{}' is not valid; use 'enabled' or 'disabled'",
                self.device_id, self.status
            )));
        }
        if self.status_reason.as_deref().map(str::len).unwrap_or(0) > 128 {
            return Err(HubError::invalid(format!(
                "device '{}': statusReason is longer than 128 characters",
                self.device_id
            )));
        }
        match self.authentication.kind.as_str() {
            "sas" | "selfSigned" | "certificateAuthority" | "none" => Ok(()),
            other => Err(HubError::invalid(format!(
                "device '{}': authentication.type '{other}' is not valid; use sas, selfSigned, certificateAuthority or none",
                self.device_id
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_follow_the_registry_rules() {
        assert!(validate_device_id("chiller-0001").is_ok());
        assert!(validate_device_id("a:b.c+d%e_f#g*h?i!j(k)l,m=n@o;p$q'r").is_ok());
        assert_eq!(
            validate_device_id("").unwrap_err().code,
            ErrorCode::ArgumentNull
        );
        assert!(validate_device_id("has space").is_err());
        assert!(validate_device_id("slash/no").is_err());
        assert!(validate_device_id("ü").is_err());
        assert!(validate_device_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn device_json_has_the_service_shape() {
        let mut d = Device::new("d1");
        d.etag = device_etag(530254372);
        let j = serde_json::to_value(&d).unwrap();
        assert_eq!(j["etag"], "NTMwMjU0Mzcy");
        assert_eq!(j["status"], "enabled");
        assert_eq!(j["connectionState"], "Disconnected");
        assert_eq!(j["authentication"]["type"], "sas");
        assert_eq!(j["lastActivityTime"], "0001-01-01T00:00:00Z");
        let back: Device = serde_json::from_value(serde_json::json!({"deviceId": "d2"})).unwrap();
        assert_eq!(back.status, "enabled");
    }
}
