//! The `DeviceRollout` resource: a phased rollout of one automatic device configuration.
//!
//! The spec is what a person writes (docs/design.md, "Resources"); the status is what the
//! decision core ([`crate::core`]) reports back, in kstatus form. Both are plain data: the
//! same types are read from Kubernetes, from a git repository and from a directory.
//!
//! Schema rules that keep the CRD structural (docs/design.md, "Implementation notes"): every
//! `Option` is skipped when `None`, enums are unit-only (a clean `enum:` list), free-form
//! JSON is marked `x-kubernetes-preserve-unknown-fields`, conditions are a list-type map.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The desired state of a phased rollout.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ringmaster.dev",
    version = "v1alpha1",
    kind = "DeviceRollout",
    plural = "devicerollouts",
    doc = "A phased rollout of one IoT Hub automatic device configuration: ring by ring, widened while its metric gates pass, rolled back by narrowing when they fail.",
    shortname = "dro",
    namespaced,
    status = "DeviceRolloutStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ring","type":"string","jsonPath":".status.ring.name"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.ring.state","priority":1}"#,
    printcolumn = r#"{"name":"Applied","type":"integer","jsonPath":".status.ring.applied"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Stable","type":"string","jsonPath":".status.stableRevision","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRolloutSpec {
    /// Name of the Hub resource (same namespace) that says how to reach the IoT hub.
    /// "default" when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,

    /// Base target condition: an IoT Hub twin query predicate (the WHERE part, e.g.
    /// `tags.environment='prod'`), or `*` for every device. Rings narrow it further.
    #[schemars(length(min = 1, max = 8192))]
    pub target: String,

    /// Priority of the hub configuration. The higher number wins where configurations
    /// overlap; on a tie the configuration created later wins, which is how a new
    /// revision takes over from the stable one. Keep a lower-priority baseline underneath.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub priority: i32,

    /// What the configuration writes into the device twins. Changing it makes a new
    /// revision (hub configuration content is immutable).
    pub content: RolloutContent,

    /// Custom metrics, at most 5 (an IoT Hub limit): metric name -> twin query predicate.
    /// ringmaster scopes each one to the devices where this configuration is applied, so
    /// write a condition (`properties.reported.firmware.status='Error'`), not a query.
    /// Gates read them as `metrics.<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 5))]
    pub metrics: BTreeMap<String, String>,

    /// Default gate for every ring; a ring may override any field.
    #[serde(default)]
    pub gate: GateSpec,

    /// Rings in rollout order. Ring i is reached by widening the target to
    /// `(target) AND (ring_0 OR ... OR ring_i)`.
    #[schemars(length(min = 1), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rings: Vec<Ring>,

    /// What to do when a gate fails or no verdict is reached by the deadline.
    #[serde(default)]
    pub on_failure: OnFailure,

    /// Whether every newly targeted device must already be covered by a lower-priority
    /// configuration (the stable revision or a baseline) before a ring is widened to it.
    #[serde(default)]
    pub baseline: BaselinePolicy,

    /// Stop reconciling this rollout: no hub writes and no queries until set back to false.
    #[serde(default)]
    pub suspend: bool,

    /// What to do when the hub's configurations differ from what the rollout's state says
    /// they should be (edited or deleted by someone else): `heal` puts them back, `report`
    /// changes nothing and stalls the rollout with the difference (`docs/rollouts.md`, "Drift").
    #[serde(default, skip_serializing_if = "DriftPolicy::is_heal")]
    pub drift: DriftPolicy,
}

/// What a rollout does about drift on the hub (`docs/rollouts.md`, "Drift").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DriftPolicy {
    /// Put a changed configuration back and recreate a deleted one at the rollout's ring.
    #[default]
    Heal,
    /// Change nothing: report the difference and stall until it is gone.
    Report,
}

impl DriftPolicy {
    /// True for the default, [`DriftPolicy::Heal`].
    pub fn is_heal(&self) -> bool {
        *self == DriftPolicy::Heal
    }
}

/// What the rollout's configuration writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutContent {
    /// Device twin content: a path under `properties.desired.` -> the value to write there
    /// (becomes the configuration's `content.deviceContent`).
    #[schemars(schema_with = "device_content_schema")]
    pub device: BTreeMap<String, serde_json::Value>,
}

fn device_content_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "minProperties": 1,
        "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// Go-style durations, no sign: `90s`, `10m`, `2h`, `1h30m`.
const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// When a ring passes or fails. Every field is optional; unset fields fall back to the
/// rollout's gate, then to the defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateSpec {
    /// No verdict while fewer devices than this have the configuration applied
    /// (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_applied: Option<u32>,

    /// Time to wait after the ring is applied before judging it, e.g. `10m` (default `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub bake: Option<Duration>,

    /// CEL expression that passes the ring, e.g. `lowerBound(metrics.current, applied) >= 0.95`.
    /// Variables: `targeted`, `applied`, `metrics.<name>` (all doubles); functions
    /// `lowerBound(successes, total)` and `upperBound(successes, total)` (Wilson score
    /// interval at 95%). Without it, a ring passes when the failure condition is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<String>,

    /// CEL expression that fails the ring, e.g. `lowerBound(metrics.failed, applied) > 0.02`.
    /// Checked before `success`. Same variables and functions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,

    /// Longest time a ring may go without a verdict, counted from when it was targeted,
    /// e.g. `2h` (default `24h`). Past it the rollout is Stalled and `onFailure` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub deadline: Option<Duration>,
}

fn duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
    })
}

/// One step of the rollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ring {
    /// Ring name, unique within the rollout (shown in status and used by `promote`).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// Twin query predicate picking this ring's devices, e.g. `tags.ring='canary'`; `*`
    /// means every device of the base target.
    #[schemars(length(min = 1, max = 8192))]
    pub target: String,

    /// Widening into this ring waits for an operator's `promote`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval: bool,

    /// Overrides of the rollout's gate for this ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateSpec>,
}

/// What happens when a ring fails its gate (or reaches its deadline without a verdict).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnFailure {
    /// Narrow the revision to no device, so the stable revision or the baseline takes the
    /// devices back.
    #[default]
    Rollback,
    /// Hold at the current ring for a human (`promote` or `abort`).
    Pause,
}

/// The baseline guard (docs/design.md, semantics 7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BaselinePolicy {
    /// Do not widen until every newly targeted device is covered by a lower-priority configuration.
    #[default]
    Required,
    /// Widen anyway, and record a warning with the number of uncovered devices.
    Warn,
    /// Do not check.
    Off,
}

/// The observed state of a rollout, in kstatus form.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRolloutStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One-word summary of where the rollout is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Hash of the current content: the revision being rolled out (or already stable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,

    /// The revision every ring has accepted; its configuration stays underneath a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,

    /// A revision that was rolled back; it stays held (narrowed to no device) until new
    /// content arrives or an operator asks to `retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_revision: Option<String>,

    /// The hub configuration id of the current revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_id: Option<String>,

    /// The ring being worked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<RingStatus>,

    /// A record per ring of the current revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rings: Vec<RingRecord>,

    /// kstatus conditions: `Ready`, `Reconciling`, `Stalled`; and `Throttled` while the
    /// rollout waits for one of its hub's budgets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The last decisions (at most 20), newest last, with the numbers behind each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,

    /// Set while an operator's `pause` holds the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PauseState>,

    /// Ids of the operator requests already applied (newest last, at most 20), so each
    /// request takes effect once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handled_operations: Vec<String>,

    /// Human summary of the latest decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// A hash of the spec fields the configurations follow (targets, rings, priority,
    /// metrics) as last brought onto the hub: a configuration that differs from the spec
    /// while this is unchanged has drifted (`docs/rollouts.md`, "Drift").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_spec: Option<String>,
}

/// One-word summary of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Nothing is on the hub yet (waiting for approval, the baseline or the budget).
    Pending,
    /// A revision is moving through the rings, or being rolled back.
    Progressing,
    /// Held by an operator (`pause`, `suspend`) or waiting for an approval.
    Paused,
    /// The current revision is stable on every ring.
    Healthy,
    /// The current revision failed and was rolled back; waiting for new content or `retry`.
    RolledBack,
    /// The spec is invalid, the hub refused it, or a failed ring or a blocked deletion
    /// (`CleanupBlocked`) waits for a human.
    Failed,
}

/// Where the current ring is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RingStatus {
    /// Index into `spec.rings`.
    pub index: u32,
    /// The ring's name.
    pub name: String,
    /// What the ring is waiting for.
    pub state: RingState,
    /// When the ring entered this state.
    pub since: Time,
    /// When the hub reported the ring applied (the bake time counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<Time>,
    /// Devices the configuration targets (rings 0..=index), as the hub last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeted: Option<u64>,
    /// Devices where the configuration is applied, as the hub last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<u64>,
    /// Targeted devices where a higher-priority configuration writes the same settings, so
    /// this one is never applied there; they count as settled when waiting for the ring to
    /// be applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shielded: Option<u64>,
}

/// What a ring is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RingState {
    /// Widening into this ring waits until its devices are covered by a lower-priority configuration.
    WaitingForBaseline,
    /// Widening into this ring waits for an operator's `promote`.
    AwaitingApproval,
    /// The ring is targeted; the hub has not reported it applied yet.
    Applying,
    /// Applied; the bake time is not over.
    Baking,
    /// Baked; the gate has no verdict yet (too small a sample, or neither condition holds).
    Analyzing,
    /// The gate passed.
    Passed,
    /// The gate failed (or the deadline passed) and `onFailure: pause` holds the ring.
    Failed,
    /// The revision was narrowed to no device; waiting for the hub to confirm.
    RollingBack,
    /// The hub confirmed the rollback.
    RolledBack,
}

/// What happened in one ring of the current revision. Counts are cumulative over rings
/// 0..=this one: they are the configuration's own hub-computed metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RingRecord {
    /// The ring's name.
    pub name: String,
    /// When the ring was targeted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the hub reported it applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<Time>,
    /// When its gate passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed_at: Option<Time>,
    /// When an operator approved widening into this ring (`approval: true` rings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<Time>,
    /// Targeted devices at the last observation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeted: Option<u64>,
    /// Applied devices at the last observation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<u64>,
    /// Targeted devices shielded by a higher-priority configuration when the ring was
    /// found applied (see `RingStatus.shielded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shielded: Option<u64>,
    /// Custom metric counts at the last observation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, u64>,
    /// The gate's last verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A gate's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Verdict {
    /// The success condition holds (or there is none and the failure condition is false).
    Pass,
    /// The failure condition holds.
    Fail,
    /// Too early, too small a sample, or neither condition holds yet.
    Inconclusive,
}

/// One decision of the controller, with the numbers behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// When it was decided.
    pub time: Time,
    /// What was decided: `Create`, `Widen`, `Pass`, `Fail`, `Rollback`, `Complete`, ...
    pub decision: String,
    /// The revision it concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The ring it concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<String>,
    /// Targeted devices at the time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeted: Option<u64>,
    /// Applied devices at the time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<u64>,
    /// Custom metric counts at the time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, u64>,
    /// Why.
    pub message: String,
}

/// An operator's pause.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseState {
    /// When the pause took effect.
    pub since: Time,
    /// The id of the request that paused it.
    pub operation: String,
}
