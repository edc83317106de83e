//! The value a query sees when it looks a path up in a row.
//!
//! Rows (twins, or the identity fields around them) hand the evaluator a borrowed [`Val`]:
//! no allocation and no JSON tree per lookup. Objects and arrays are opaque here because
//! the IoT Hub query language compares only primitives; they matter only to the type
//! checks (`IS_OBJECT`, `IS_DEFINED`, ...) and to projections, which go through
//! [`Row::project`].

use super::path::PathId;

/// A borrowed view of one value in a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Val<'a> {
    /// The path does not exist in the row.
    Undefined,
    /// JSON `null`.
    Null,
    /// JSON `true` or `false`.
    Bool(bool),
    /// A JSON integer that fits in `i64`.
    Int(i64),
    /// Any other JSON number.
    Float(f64),
    /// A JSON string.
    Str(&'a str),
    /// A JSON object (contents not visible here).
    Object,
    /// A JSON array (contents not visible here).
    Array,
}

impl Val<'_> {
    /// The number, if this is one (integers widen to `f64`).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Val::Int(i) => Some(i as f64),
            Val::Float(f) => Some(f),
            _ => None,
        }
    }

    /// True for `null`, booleans, numbers and strings.
    pub fn is_primitive(&self) -> bool {
        matches!(
            self,
            Val::Null | Val::Bool(_) | Val::Int(_) | Val::Float(_) | Val::Str(_)
        )
    }
}

/// Something a query can be evaluated against: a device twin.
///
/// `path` is a *lowercase* interned path (see [`super::path::intern_lc`]) relative to the
/// twin root, for example `tags.ring`, `deviceid` or `properties.reported.firmware.version`.
pub trait Row {
    /// The value at a lowercase path, or `Val::Undefined`.
    fn lookup(&self, path: PathId) -> Val<'_>;
    /// The JSON value at a lowercase path (objects and arrays rebuilt), for projections.
    fn project(&self, path: PathId) -> Option<serde_json::Value>;
    /// The whole row as JSON, for `SELECT *`.
    fn to_json(&self) -> serde_json::Value;
}

/// A `Row` over a plain JSON document: the reference implementation used by tests and by
/// callers that hold a twin as JSON (for example a twin fetched over REST).
pub struct JsonRow<'a>(pub &'a serde_json::Value);

impl JsonRow<'_> {
    fn find(&self, path: PathId) -> Option<&serde_json::Value> {
        super::path::with_name(path, |p| {
            let mut cur = self.0;
            for seg in p.split('.') {
                let obj = cur.as_object()?;
                // Names are case-insensitive in queries; keys are case-sensitive in twins.
                cur = obj
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(seg) || k.to_lowercase() == seg)
                    .map(|(_, v)| v)?;
            }
            Some(cur)
        })
    }
}

impl Row for JsonRow<'_> {
    fn lookup(&self, path: PathId) -> Val<'_> {
        match self.find(path) {
            None => Val::Undefined,
            Some(v) => json_val(v),
        }
    }
    fn project(&self, path: PathId) -> Option<serde_json::Value> {
        self.find(path).cloned()
    }
    fn to_json(&self) -> serde_json::Value {
        self.0.clone()
    }
}

/// Borrows a JSON value as a [`Val`].
pub fn json_val(v: &serde_json::Value) -> Val<'_> {
    use serde_json::Value as J;
    match v {
        J::Null => Val::Null,
        J::Bool(b) => Val::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Val::Int(i),
            None => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Val::Str(s),
        J::Array(_) => Val::Array,
        J::Object(_) => Val::Object,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iothub::path::intern_lc;
    use serde_json::json;

    #[test]
    fn json_row_lookup_is_case_insensitive_on_names() {
        let doc = json!({"deviceId": "d1", "tags": {"Ring": "canary", "n": 3}});
        let row = JsonRow(&doc);
        assert_eq!(row.lookup(intern_lc("tags.ring")), Val::Str("canary"));
        assert_eq!(row.lookup(intern_lc("DeviceId")), Val::Str("d1"));
        assert_eq!(row.lookup(intern_lc("tags.n")), Val::Int(3));
        assert_eq!(row.lookup(intern_lc("tags")), Val::Object);
        assert_eq!(row.lookup(intern_lc("tags.missing")), Val::Undefined);
    }
}
