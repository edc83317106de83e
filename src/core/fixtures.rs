//! Test fixtures shared by the decision core's and the driver's tests.

use crate::resources::{
    BaselinePolicy, DeviceRollout, DeviceRolloutSpec, GateSpec, OnFailure, Ring, RolloutContent,
};
use std::collections::BTreeMap;

/// A firmware rollout over three rings (canary, early, broad) with a baseline required
/// and gates on `current` and `failed`.
pub fn rollout() -> DeviceRollout {
    let mut ro = DeviceRollout::new(
        "chiller-fw",
        DeviceRolloutSpec {
            hub: None,
            target: "tags.environment='prod'".into(),
            priority: 20,
            content: RolloutContent {
                device: BTreeMap::from([(
                    "properties.desired.firmware".to_string(),
                    serde_json::json!({"version": "2.4.0"}),
                )]),
            },
            metrics: BTreeMap::from([
                (
                    "current".to_string(),
                    "properties.reported.firmware.version='2.4.0'".to_string(),
                ),
                (
                    "failed".to_string(),
                    "properties.reported.firmware.status='Error'".to_string(),
                ),
            ]),
            gate: GateSpec {
                min_applied: Some(5),
                bake: Some("10m".parse().unwrap()),
                success: Some("lowerBound(metrics.current, applied) >= 0.7".into()),
                failure: Some("lowerBound(metrics.failed, applied) > 0.02".into()),
                deadline: Some("2h".parse().unwrap()),
            },
            rings: vec![
                Ring {
                    name: "canary".into(),
                    target: "tags.ring='canary'".into(),
                    ..Default::default()
                },
                Ring {
                    name: "early".into(),
                    target: "tags.ring='early'".into(),
                    ..Default::default()
                },
                Ring {
                    name: "broad".into(),
                    target: "*".into(),
                    ..Default::default()
                },
            ],
            on_failure: OnFailure::Rollback,
            baseline: BaselinePolicy::Required,
            suspend: false,
            drift: Default::default(),
        },
    );
    ro.metadata.namespace = Some("fleet".into());
    ro.metadata.generation = Some(1);
    ro
}
