//! Checks of a `DeviceRings` before anything reaches a hub (`ringmaster validate`, the
//! controllers): every problem with its field path and what would be valid.

use crate::core::validate::FieldError;
use crate::iothub::configuration::MAX_QUERY_LEN;
use crate::iothub::query::Condition;
use crate::resources::DeviceRings;
use std::collections::BTreeSet;

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A tag key or value ringmaster writes: letters, digits, `-` and `_`, at most 64.
fn key_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Every problem with a `DeviceRings`. Empty means it can be assigned.
pub fn validate_rings(r: &DeviceRings) -> Vec<FieldError> {
    let mut p = Vec::new();
    let mut add = |path: &str, message: String| {
        p.push(FieldError {
            path: path.to_string(),
            message,
        })
    };
    match r.metadata.name.as_deref() {
        None | Some("") => add("metadata.name", "is missing; give the rings a name".into()),
        Some(n) if !name_ok(n) => add(
            "metadata.name",
            format!("`{n}` is not a valid name: use lowercase letters, digits, '-' and '.'"),
        ),
        _ => {}
    }
    let spec = &r.spec;
    if let Some(hub) = spec.hub.as_deref()
        && !name_ok(hub)
    {
        add("spec.hub", format!("`{hub}` is not a valid Hub name"));
    }
    let t = spec.target.trim();
    if t.is_empty() {
        add(
            "spec.target",
            "is empty; write a twin query predicate such as tags.environment='prod', or * for every device".into(),
        );
    } else if t.len() > MAX_QUERY_LEN {
        add(
            "spec.target",
            format!(
                "is {} characters; IoT Hub takes at most {MAX_QUERY_LEN}",
                t.len()
            ),
        );
    } else if t != "*"
        && let Err(e) = Condition::parse(t)
    {
        add("spec.target", e.to_string());
    }
    if !key_ok(&spec.tag) || spec.tag == super::OWNER_TAG {
        add(
            "spec.tag",
            format!(
                "`{}` is not a tag key ringmaster can write: one key of letters, digits, '-' and '_' (not `{}`), e.g. ring",
                spec.tag,
                super::OWNER_TAG
            ),
        );
    }
    if spec.rings.is_empty() {
        add(
            "spec.rings",
            "is empty; list the rings in order, e.g. {name: canary, percent: 2}".into(),
        );
    }
    let mut names = BTreeSet::new();
    let mut total = 0.0;
    for (i, ring) in spec.rings.iter().enumerate() {
        let path = format!("spec.rings[{i}]");
        if !key_ok(&ring.name) {
            add(
                &format!("{path}.name"),
                format!(
                    "`{}` is not a valid ring name: letters, digits, '-' and '_', at most 64",
                    ring.name
                ),
            );
        } else if !names.insert(ring.name.as_str()) {
            add(
                &format!("{path}.name"),
                format!("`{}` appears twice; ring names are unique", ring.name),
            );
        }
        if !(ring.percent.is_finite() && ring.percent >= 0.0 && ring.percent <= 100.0) {
            add(
                &format!("{path}.percent"),
                format!("is {}; a percent from 0 to 100", ring.percent),
            );
        } else {
            total += ring.percent;
        }
    }
    if !spec.rings.is_empty() && (total - 100.0).abs() > 1e-6 {
        add(
            "spec.rings",
            format!("percents add up to {total}; they must add up to 100"),
        );
    }
    for (i, path) in spec.spread_by.iter().enumerate() {
        let ok = path
            .strip_prefix("tags.")
            .is_some_and(|rest| rest.split('.').all(key_ok));
        if !ok {
            add(
                &format!("spec.spreadBy[{i}]"),
                format!(
                    "`{path}` is not a tag path: write tags.<key>[.<key>…] (tags are stable; reported properties change)"
                ),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (ring, ids) in &spec.pinned {
        if !names.contains(ring.as_str()) {
            add(
                &format!("spec.pinned.{ring}"),
                format!(
                    "`{ring}` is not one of the rings ({})",
                    names.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        for id in ids {
            if !seen.insert(id.as_str()) {
                add(
                    &format!("spec.pinned.{ring}"),
                    format!("device `{id}` is pinned to more than one ring"),
                );
            }
        }
    }
    p
}
