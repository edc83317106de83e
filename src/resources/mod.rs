//! The resources ringmaster reads: `DeviceRollout` and `Hub` (group `ringmaster.dev`,
//! version `v1alpha1`), operator requests, and the loader for YAML manifests.
//!
//! The same types serve every source: Kubernetes custom resources, a git repository and
//! a directory. [`crds_yaml`] prints the CustomResourceDefinitions generated from them;
//! `crds/` holds a checked-in copy that a test keeps in sync.

pub mod hub;
pub mod operation;
pub mod rings;
pub mod rollout;

pub use hub::{Hub, HubLimits, HubSpec, HubType, SecretKeyRef};
pub use operation::{Operation, OperationKind};
pub use rings::{DeviceRings, DeviceRingsSpec, DeviceRingsStatus, HandSetPolicy, RingShare};
pub use rollout::{
    BaselinePolicy, DeviceRollout, DeviceRolloutSpec, DeviceRolloutStatus, DriftPolicy, GateSpec,
    HistoryEntry, OnFailure, PauseState, Phase, Ring, RingRecord, RingState, RingStatus,
    RolloutContent, Verdict,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every ringmaster resource.
pub const GROUP: &str = "ringmaster.dev";
/// The version of every ringmaster resource.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "ringmaster.dev/v1alpha1";

/// The CustomResourceDefinitions, one per resource, with the file name each has in `crds/`.
pub fn crds() -> Vec<(String, CustomResourceDefinition)> {
    [DeviceRollout::crd(), Hub::crd(), DeviceRings::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            (format!("{name}.yaml"), finish_schema(crd))
        })
        .collect()
}

/// Joins the lines of each paragraph of a description: doc comments wrap at 100
/// columns, and `kubectl explain` wraps again, so a hard break would show mid-sentence.
fn unwrap_description(text: &str) -> String {
    text.split("\n\n")
        .map(|para| {
            if para
                .lines()
                .any(|l| l.trim_start().starts_with(['-', '*', '|', '`']))
            {
                para.to_string() // a list or a table keeps its lines
            } else {
                para.lines().map(str::trim).collect::<Vec<_>>().join(" ")
            }
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// What the derive leaves to do: every 32-bit integer gets the bounds of its Rust type,
/// and descriptions lose the line breaks of the doc comments they come from.
///
/// schemars writes `format: int32` / `uint32` without a `maximum`, and the API server does
/// not enforce formats, so it would store `priority: 3000000000`, which no controller can
/// then read. With the bounds in the schema, `kubectl apply` refuses such a value, as
/// `ringmaster validate` does.
fn finish_schema(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(obj) => {
                let bounds = match obj.get("format").and_then(|f| f.as_str()) {
                    Some("int32") => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
                    Some("uint32") => Some((0, i64::from(u32::MAX))),
                    _ => None,
                };
                if let Some((min, max)) = bounds {
                    obj.entry("minimum").or_insert(min.into());
                    obj.entry("maximum").or_insert(max.into());
                }
                if let Some(serde_json::Value::String(d)) = obj.get_mut("description") {
                    *d = unwrap_description(d);
                }
                obj.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut json = serde_json::to_value(&crd).expect("a CRD serializes to JSON");
    walk(&mut json);
    serde_json::from_value(json).expect("bounds keep the CRD valid")
}

/// One CRD as YAML, as the files in `crds/` hold it.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    serde_saphyr::to_string(crd).expect("a CRD serializes to YAML")
}

/// Both CRDs as one multi-document YAML stream (what `ringmaster crd` prints).
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|(_, crd)| format!("---\n{}", crd_yaml(crd)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// `crds/` must match the types. Regenerate with `UPDATE_CRDS=1 cargo test --lib crds`.
    #[test]
    fn crds_in_the_repository_match_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        let update = std::env::var_os("UPDATE_CRDS").is_some();
        let mut stale = Vec::new();
        for (file, crd) in crds() {
            let path = dir.join(&file);
            let want = crd_yaml(&crd);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &want).unwrap();
                continue;
            }
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                stale.push(format!("crds/{file}"));
            }
        }
        assert!(
            stale.is_empty(),
            "{} differ from the resource types; regenerate with `UPDATE_CRDS=1 cargo test --lib crds`",
            stale.join(", ")
        );
    }

    #[test]
    fn every_32_bit_integer_in_the_crds_has_the_bounds_of_its_type() {
        fn walk(v: &serde_json::Value, path: &str, seen: &mut usize, bad: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(obj) => {
                    let want = match obj.get("format").and_then(|f| f.as_str()) {
                        Some("int32") => Some((i32::MIN as f64, i32::MAX as f64)),
                        Some("uint32") => Some((0.0, u32::MAX as f64)),
                        _ => None,
                    };
                    if let Some((min, max)) = want {
                        *seen += 1;
                        let got = |k: &str| obj.get(k).and_then(|n| n.as_f64());
                        if got("minimum").is_none_or(|m| m < min) || got("maximum") != Some(max) {
                            bad.push(path.to_string());
                        }
                    }
                    for (k, child) in obj {
                        walk(child, &format!("{path}.{k}"), seen, bad);
                    }
                }
                serde_json::Value::Array(items) => {
                    for (i, child) in items.iter().enumerate() {
                        walk(child, &format!("{path}[{i}]"), seen, bad);
                    }
                }
                _ => {}
            }
        }
        for (file, crd) in crds() {
            let (mut seen, mut bad) = (0, Vec::new());
            walk(
                &serde_json::to_value(&crd).unwrap(),
                "",
                &mut seen,
                &mut bad,
            );
            assert!(seen > 0, "{file}: no 32-bit integer found");
            assert!(bad.is_empty(), "{file}: unbounded integers at {bad:?}");
        }
    }

    #[test]
    fn crds_are_structural() {
        // The API server refuses a schema node without a type unless it preserves unknown
        // fields or is int-or-string (docs/design.md, "Implementation notes").
        fn walk(v: &serde_json::Value, path: &str, bad: &mut Vec<String>) {
            let Some(obj) = v.as_object() else { return };
            let open = obj.get("x-kubernetes-preserve-unknown-fields")
                == Some(&serde_json::Value::Bool(true))
                || obj.contains_key("x-kubernetes-int-or-string");
            if !obj.contains_key("type") && !open {
                bad.push(path.to_string());
            }
            for key in ["anyOf", "oneOf", "allOf"] {
                if obj.contains_key(key) {
                    bad.push(format!("{path} ({key})"));
                }
            }
            if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
                for (k, p) in props {
                    walk(p, &format!("{path}.{k}"), bad);
                }
            }
            for key in ["items", "additionalProperties"] {
                if let Some(child) = obj.get(key).filter(|c| c.is_object()) {
                    walk(child, &format!("{path}.{key}"), bad);
                }
            }
        }
        for (file, crd) in crds() {
            let schema = serde_json::to_value(
                &crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema,
            )
            .unwrap();
            let mut bad = Vec::new();
            walk(&schema, "", &mut bad);
            assert!(bad.is_empty(), "{file}: nodes without a type: {bad:?}");
        }
        let yaml = crds_yaml();
        assert!(yaml.contains("x-kubernetes-list-type: map"));
        assert!(yaml.contains("shortNames:\n    - dro"));
        assert!(yaml.contains("status: {}"));
    }
}
