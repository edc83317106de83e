//! The `DeviceRings` resource: ring membership as code (`docs/rings.md`). It organizes the
//! devices its `target` matches into rings by writing one tag (`tags.<tag>`), so that
//! rollouts can target `tags.ring='canary'` with a fleet nobody had to tag by hand.
//!
//! The same schema rules as `DeviceRollout` (see [`super::rollout`]): options skipped when
//! `None`, unit-only enums, conditions a list-type map.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a fleet is split into rings.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ringmaster.dev",
    version = "v1alpha1",
    kind = "DeviceRings",
    plural = "devicerings",
    doc = "Ring membership as code: the devices a target matches, split into rings by percent (stable under changes, representative of spreadBy strata), written as one twin tag.",
    shortname = "drg",
    namespaced,
    status = "DeviceRingsStatus",
    printcolumn = r#"{"name":"Tag","type":"string","jsonPath":".spec.tag"}"#,
    printcolumn = r#"{"name":"Devices","type":"integer","jsonPath":".status.devices"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.pendingWrites"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRingsSpec {
    /// The `Hub` resource (same namespace) whose devices are organized; `default` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,

    /// The devices organized: an IoT Hub twin condition (`tags.environment='prod'`), or
    /// `*` for every device.
    pub target: String,

    /// The tag written: `ring` writes `tags.ring`. One key (letters, digits, `-`, `_`).
    #[serde(default = "default_tag")]
    pub tag: String,

    /// The rings, in order; their percents add up to 100.
    pub rings: Vec<RingShare>,

    /// Tag paths (`tags.model`, `tags.location.region`) whose combinations are strata:
    /// each ring holds every stratum in the fleet's proportion (within one device).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread_by: Vec<String>,

    /// Devices put in a ring whatever their hash says: ring name -> device ids.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pinned: BTreeMap<String, Vec<String>>,

    /// Mixed into each device's hash: a new salt reshuffles every ring; the same salt
    /// keeps membership stable.
    #[serde(default)]
    pub salt: String,

    /// A device whose tag someone else set (not ringmaster): `leave` it in that ring and
    /// report it (default), or `correct` it to the ring ringmaster assigns.
    #[serde(default, skip_serializing_if = "HandSetPolicy::is_leave")]
    pub hand_set: HandSetPolicy,

    /// Stop writing tags until set back to false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

fn default_tag() -> String {
    "ring".to_string()
}

/// One ring of a [`DeviceRingsSpec`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RingShare {
    /// The ring's name: the tag's value (`canary`).
    pub name: String,
    /// Its share of the devices, in percent (decimals allowed: `0.5`).
    pub percent: f64,
    /// At least this many devices, taken from the later rings, where the fleet has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_devices: Option<u32>,
}

/// What happens to a device whose tag someone else set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum HandSetPolicy {
    /// Leave it in the ring it was put in (counted there) and report it.
    #[default]
    Leave,
    /// Write the ring ringmaster assigns over it (reported too).
    Correct,
}

impl HandSetPolicy {
    /// True for the default, [`HandSetPolicy::Leave`].
    pub fn is_leave(&self) -> bool {
        *self == HandSetPolicy::Leave
    }
}

/// What the hub's devices look like against the spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRingsStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Devices the target matches.
    #[serde(default)]
    pub devices: u64,
    /// Devices per ring, as assigned (tags written or pending).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rings: BTreeMap<String, u64>,
    /// Devices per stratum (values of `spreadBy` joined by `/`) per ring.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub strata: BTreeMap<String, BTreeMap<String, u64>>,
    /// Tag writes still to do (the twin-update budget spreads them over passes).
    #[serde(default)]
    pub pending_writes: u64,
    /// Tag writes done by the last pass.
    #[serde(default)]
    pub written: u64,
    /// Devices whose tag someone else set (first 20 ids with their value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hand_set: Vec<String>,
    /// How many devices have a hand-set tag.
    #[serde(default)]
    pub hand_set_count: u64,
    /// Writes refused because the twin changed since it was read (etag), retried next pass.
    #[serde(default)]
    pub conflicts: u64,
    /// What the spec asks that the fleet cannot give (a `minDevices` larger than the fleet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// `Ready` (every device tagged as assigned), `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Human summary of the last pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
