//! The `Hub` resource: how to reach an IoT hub, and the traffic limits to keep to.
//!
//! `type: azure` names a Secret key holding the service connection string (in git and
//! directory modes the same reference names an environment variable or file, never a
//! value in the repository); `type: embedded` is the in-process hub, or a `ringmaster hub
//! serve` at `url`. The limits shape the controller's traffic (docs/design.md, semantics 8).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to reach an IoT hub.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ringmaster.dev",
    version = "v1alpha1",
    kind = "Hub",
    plural = "hubs",
    shortname = "rmhub",
    doc = "How ringmaster reaches an IoT hub (Azure IoT Hub, or its embedded hub in process or at a URL) and the traffic limits it keeps to there.",
    namespaced,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.type != 'azure' || has(self.connectionStringSecret)", "message": "type: azure needs connectionStringSecret"},
    {"rule": "self.type != 'azure' || !has(self.url)", "message": "url is only for type: embedded"},
    {"rule": "self.type == 'azure' || has(self.url) || !has(self.connectionStringSecret)", "message": "connectionStringSecret is only for type: azure, or type: embedded with a url"}
]))]
pub struct HubSpec {
    /// `azure` (a real IoT hub, reached with a connection string) or `embedded`
    /// (ringmaster's own hub, in process or at `url`).
    #[serde(rename = "type")]
    pub type_: HubType,

    /// The Secret key holding the hub's service connection string
    /// (`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`): required for `type:
    /// azure`, and for `type: embedded` with a `url` (a `ringmaster hub serve` checks SAS
    /// tokens too). The connection string's `HostName` must be the host of `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_string_secret: Option<SecretKeyRef>,

    /// For `type: embedded`: the URL of a `ringmaster hub serve`; omitted means the hub
    /// runs inside the controller's process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Traffic limits; the defaults are those of one S1 unit.
    #[serde(default)]
    pub limits: HubLimits,
}

/// Which kind of hub.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HubType {
    /// Azure IoT Hub, through its REST API with SAS auth.
    Azure,
    /// ringmaster's embedded hub.
    #[default]
    Embedded,
}

/// A key of a Secret in the Hub's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The key inside the Secret; `connectionString` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// How much traffic the controller may send to the hub, shared by every rollout on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubLimits {
    /// Twin queries per minute (IoT Hub S1/S2: 20 per unit).
    #[serde(default = "default_per_minute")]
    #[schemars(range(min = 1))]
    pub queries_per_minute: u32,
    /// Configuration operations (create, update, delete, list) per minute (20 per unit).
    #[serde(default = "default_per_minute")]
    #[schemars(range(min = 1))]
    pub configuration_writes_per_minute: u32,
    /// Most configurations the hub holds (100 on S1/S2, 10 on the free tier).
    #[serde(default = "default_quota")]
    #[schemars(range(min = 1))]
    pub max_configurations: u32,
    /// Twin updates per second (IoT Hub S1: 50 per unit, docs/design.md §3): the pace of
    /// the tags a `DeviceRings` writes.
    #[serde(default = "default_twin_updates")]
    #[schemars(range(min = 1))]
    pub twin_updates_per_second: u32,
}

fn default_twin_updates() -> u32 {
    50
}

fn default_per_minute() -> u32 {
    20
}
fn default_quota() -> u32 {
    crate::iothub::configuration::DEFAULT_MAX_CONFIGURATIONS as u32
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            queries_per_minute: default_per_minute(),
            configuration_writes_per_minute: default_per_minute(),
            max_configurations: default_quota(),
            twin_updates_per_second: default_twin_updates(),
        }
    }
}
