//! Device twins, stored flat.
//!
//! A twin in memory is one sorted vector of entries, one per JSON node of its tags,
//! desired, reported and `configurations` sections, keyed by interned paths (see
//! [`super::path`]). A query looks a path up with one binary search and compares a scalar;
//! nothing is parsed or allocated. The JSON document is rebuilt only when someone reads
//! the twin. This keeps a typical twin near a kilobyte, so a million fit in memory.
//!
//! Writes go through whole sections: the section is rebuilt as JSON, merged or replaced,
//! validated against the twin limits (docs/design.md §5.3), and flattened again. Twins are small,
//! so this costs microseconds and keeps one code path for every kind of update.

use super::device::Device;
use super::error::{ErrorCode, HubError, Result};
use super::path::{self, PathId, intern, intern_lc};
use super::value::{Row, Val};
use base64::Engine as _;
use jiff::Timestamp;
use serde_json::{Map, Value};
use std::sync::LazyLock;

/// Largest tags section, in bytes as the hub counts them.
pub const MAX_TAGS_BYTES: usize = 8 * 1024;
/// Largest desired or reported section.
pub const MAX_PROPERTIES_BYTES: usize = 32 * 1024;
/// Largest single value (strings).
pub const MAX_VALUE_BYTES: usize = 4096;
/// Longest key.
pub const MAX_KEY_BYTES: usize = 1024;
/// Deepest nesting of objects inside a section.
pub const MAX_DEPTH: usize = 10;
/// Smallest integer the hub accepts in a twin: -2^52.
pub const MIN_INT: i64 = -4503599627370496;
/// Largest integer the hub accepts in a twin: 2^52 - 1.
pub const MAX_INT: i64 = 4503599627370495;

/// The parts of a twin that hold user JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Section {
    /// `tags`: set by the service only; what target conditions usually match on.
    Tags = 0,
    /// `properties.desired`: set by the service and by configurations, read by the device.
    Desired = 1,
    /// `properties.reported`: set by the device.
    Reported = 2,
    /// `configurations.<id>.status`: written by the configuration engine only.
    Configurations = 3,
}

impl Section {
    /// The dotted path of the section root.
    pub fn root(self) -> &'static str {
        match self {
            Section::Tags => "tags",
            Section::Desired => "properties.desired",
            Section::Reported => "properties.reported",
            Section::Configurations => "configurations",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Section::Tags => "Tags",
            Section::Desired => "Properties.Desired",
            Section::Reported => "Properties.Reported",
            Section::Configurations => "Configurations",
        }
    }
}

/// Longest string kept inline in a node (no heap allocation).
const INLINE: usize = 22;

/// A stored node value. Objects are markers (their children are entries of their own);
/// arrays are kept as JSON text because queries never look inside them. Short strings
/// (most tag and status values) live inline: no allocation, no pointer to chase.
#[derive(Clone, Debug, PartialEq)]
enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Short { len: u8, bytes: [u8; INLINE] },
    Str(Box<str>),
    Object,
    Array(Box<str>),
}

/// One node: its exact-case path with the section in the top two bits, and its value.
#[derive(Clone, Debug)]
struct Node {
    key: u32,
    val: Scalar,
}

const SECTION_SHIFT: u32 = 30;

impl Node {
    fn new(section: Section, key: PathId, val: Scalar) -> Node {
        debug_assert!(key.0 < 1 << SECTION_SHIFT);
        Node {
            key: (section as u32) << SECTION_SHIFT | key.0,
            val,
        }
    }
    fn section(&self) -> Section {
        match self.key >> SECTION_SHIFT {
            0 => Section::Tags,
            1 => Section::Desired,
            2 => Section::Reported,
            _ => Section::Configurations,
        }
    }
    fn path(&self) -> PathId {
        PathId(self.key & ((1 << SECTION_SHIFT) - 1))
    }
}

/// A node before it is stored, with its lowercase lookup key.
struct Entry {
    lc: PathId,
    node: Node,
}

/// A device twin (without its identity fields, which live in [`Device`]).
#[derive(Clone, Debug)]
pub struct Twin {
    /// Lowercase paths, sorted: the lookup index (a few cache lines per twin).
    lcs: Box<[PathId]>,
    /// The nodes, parallel to `lcs`.
    nodes: Box<[Node]>,
    /// Twin version: counts changes to tags and desired properties.
    pub version: i64,
    /// `properties.desired.$version`: counts changes to the desired section, from 1.
    pub desired_version: i64,
    /// `properties.reported.$version`: counts changes to the reported section, from 1.
    pub reported_version: i64,
    /// `properties.desired.$metadata.$lastUpdated`: when the desired section last changed.
    pub desired_updated: Timestamp,
    /// `properties.reported.$metadata.$lastUpdated`: when the reported section last changed.
    pub reported_updated: Timestamp,
    /// Counter behind the twin etag; bumped by every change.
    pub etag_counter: u64,
}

/// Interned ids of the paths every twin answers without an entry.
struct Known {
    device_id: PathId,
    status: PathId,
    status_reason: PathId,
    connection_state: PathId,
    last_activity_time: PathId,
    version: PathId,
    etag: PathId,
    capabilities: PathId,
    iot_edge: PathId,
    authentication_type: PathId,
    c2d_count: PathId,
    tags: PathId,
    properties: PathId,
    desired: PathId,
    reported: PathId,
    configurations: PathId,
    desired_version: PathId,
    reported_version: PathId,
}

static KNOWN: LazyLock<Known> = LazyLock::new(|| Known {
    device_id: intern_lc("deviceId"),
    status: intern_lc("status"),
    status_reason: intern_lc("statusReason"),
    connection_state: intern_lc("connectionState"),
    last_activity_time: intern_lc("lastActivityTime"),
    version: intern_lc("version"),
    etag: intern_lc("etag"),
    capabilities: intern_lc("capabilities"),
    iot_edge: intern_lc("capabilities.iotEdge"),
    authentication_type: intern_lc("authenticationType"),
    c2d_count: intern_lc("cloudToDeviceMessageCount"),
    tags: intern_lc("tags"),
    properties: intern_lc("properties"),
    desired: intern_lc("properties.desired"),
    reported: intern_lc("properties.reported"),
    configurations: intern_lc("configurations"),
    desired_version: intern_lc("properties.desired.$version"),
    reported_version: intern_lc("properties.reported.$version"),
});

/// A twin's etag: base64 of its 8-byte big-endian change counter (`AAAAAAAAAAc=` is 7).
pub fn twin_etag(counter: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(counter.to_be_bytes())
}

/// Formats a timestamp the way the hub does in `$metadata` (milliseconds, `Z`).
pub fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl Twin {
    /// An empty twin, created at `now`.
    pub fn new(now: Timestamp) -> Twin {
        Twin {
            lcs: Box::new([]),
            nodes: Box::new([]),
            version: 1,
            desired_version: 1,
            reported_version: 1,
            desired_updated: now,
            reported_updated: now,
            etag_counter: 1,
        }
    }

    /// The current etag.
    pub fn etag(&self) -> String {
        twin_etag(self.etag_counter)
    }

    /// Number of stored nodes (for memory accounting and tests).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn find(&self, lc: PathId) -> Option<&Node> {
        self.lcs.binary_search(&lc).ok().map(|i| &self.nodes[i])
    }

    /// Hints the CPU to load this twin's lookup index and nodes: scans call it a few
    /// twins ahead, so the memory latency of one twin overlaps the evaluation of another.
    #[inline]
    pub fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: prefetching is a hint; it never faults, even on an invalid address.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(self.lcs.as_ptr().cast());
            let n = self.nodes.as_ptr().cast::<i8>();
            _mm_prefetch::<_MM_HINT_T0>(n);
            _mm_prefetch::<_MM_HINT_T0>(n.wrapping_add(self.nodes.len() * 16));
        }
    }

    /// A section rebuilt as a JSON object (without `$version` / `$metadata`).
    pub fn section(&self, s: Section) -> Map<String, Value> {
        let root_len = s.root().len() + 1;
        let mut out = Map::new();
        for e in self.nodes.iter().filter(|e| e.section() == s) {
            path::with_name(e.path(), |full| {
                insert_at(&mut out, &full[root_len..], e.val.to_json());
            });
        }
        out
    }

    /// The stored form of the nodes: a JSON array of `[section, "exact.path", value]`
    /// (section 0 tags, 1 desired, 2 reported, 3 configurations; objects as `{}` markers,
    /// arrays as stored), written straight into `out` without building JSON values.
    pub fn write_nodes(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        out.push(b'[');
        for (i, n) in self.nodes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = write!(out, "[{},", n.section() as u8);
            path::with_name(n.path(), |full| {
                let _ = serde_json::to_writer(&mut *out, full);
            });
            out.push(b',');
            match &n.val {
                Scalar::Null => out.extend_from_slice(b"null"),
                Scalar::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
                Scalar::Int(v) => {
                    let _ = write!(out, "{v}");
                }
                Scalar::Float(f) => {
                    let _ = serde_json::to_writer(&mut *out, f);
                }
                Scalar::Object => out.extend_from_slice(b"{}"),
                Scalar::Array(text) => out.extend_from_slice(text.as_bytes()),
                short_or_str => {
                    if let Val::Str(text) = short_or_str.val() {
                        let _ = serde_json::to_writer(&mut *out, text);
                    }
                }
            }
            out.push(b']');
        }
        out.push(b']');
    }

    /// Replaces every node from the stored form ([`Twin::write_nodes`]). The store wrote
    /// what the twin held, so values are taken as they are (the limits were checked when
    /// they came in).
    pub fn set_nodes(&mut self, nodes: &[Value]) -> Result<()> {
        let bad = |why: &str| HubError::new(ErrorCode::ServerError, format!("stored twin: {why}"));
        let mut entries = Vec::with_capacity(nodes.len());
        for n in nodes {
            let [s, p, v] = n.as_array().map(Vec::as_slice).unwrap_or_default() else {
                return Err(bad("a node is not [section, path, value]"));
            };
            let s = match s.as_u64() {
                Some(0) => Section::Tags,
                Some(1) => Section::Desired,
                Some(2) => Section::Reported,
                Some(3) => Section::Configurations,
                _ => return Err(bad("unknown section")),
            };
            let p = p.as_str().ok_or_else(|| bad("a path is not a string"))?;
            entries.push(Entry {
                lc: intern_lc(p),
                node: Node::new(s, intern(p), Scalar::from_json(v)),
            });
        }
        entries.sort_by_key(|e| e.lc);
        self.lcs = entries.iter().map(|e| e.lc).collect();
        self.nodes = entries.into_iter().map(|e| e.node).collect();
        Ok(())
    }

    /// Replaces a whole section after validating it. On error the twin is unchanged.
    pub fn set_section(&mut self, s: Section, value: &Map<String, Value>) -> Result<()> {
        *self = self.with_sections(&[(s, value)])?;
        Ok(())
    }

    /// A copy of this twin with whole sections replaced, built in one pass (the engine
    /// replaces desired and `configurations` together). Sections are validated first; on
    /// error nothing is built.
    pub fn with_sections(&self, updates: &[(Section, &Map<String, Value>)]) -> Result<Twin> {
        for (s, value) in updates {
            if *s != Section::Configurations {
                validate_section(*s, value)?;
            }
        }
        let replaced = |sec: Section| updates.iter().any(|(s, _)| *s == sec);
        let mut entries: Vec<Entry> = self
            .lcs
            .iter()
            .zip(self.nodes.iter())
            .filter(|(_, n)| !replaced(n.section()))
            .map(|(lc, n)| Entry {
                lc: *lc,
                node: n.clone(),
            })
            .collect();
        for (s, value) in updates {
            flatten(*s, s.root(), value, &mut entries);
        }
        entries.sort_by_key(|e| e.lc);
        if let Some(w) = entries.windows(2).find(|w| w[0].lc == w[1].lc) {
            let (a, b) = (path::name(w[0].node.path()), path::name(w[1].node.path()));
            return Err(HubError::invalid(format!(
                "'{a}' and '{b}' differ only in letter case; queries match names case-insensitively, so the embedded hub keeps one of them per twin"
            )));
        }
        Ok(Twin {
            lcs: entries.iter().map(|e| e.lc).collect(),
            nodes: entries.into_iter().map(|e| e.node).collect(),
            ..*self
        })
    }

    /// The `configurations` status of one configuration, if any.
    pub fn configuration_status(&self, config_id: &str) -> Option<String> {
        let lc = path::lookup(&format!(
            "configurations.{}.status",
            config_id.to_lowercase()
        ))?;
        match self.find(lc).map(|e| &e.val) {
            Some(v) => match v.val() {
                Val::Str(s) => Some(s.to_string()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Sets (or with `None` removes) the `configurations.<id>.status` of one configuration.
    pub fn set_configuration_status(&mut self, config_id: &str, status: Option<&str>) {
        let mut sec = self.section(Section::Configurations);
        match status {
            Some(st) => {
                let mut m = Map::new();
                m.insert("status".into(), Value::String(st.into()));
                sec.insert(config_id.into(), Value::Object(m));
            }
            None => {
                sec.remove(config_id);
            }
        }
        // Configuration ids are valid keys by construction, so this cannot fail.
        let _ = self.set_section(Section::Configurations, &sec);
    }

    /// The whole twin as IoT Hub returns it from `GET /twins/{id}`.
    pub fn to_json(&self, device: &Device) -> Value {
        let mut desired = self.section(Section::Desired);
        let mut reported = self.section(Section::Reported);
        desired.insert(
            "$metadata".into(),
            serde_json::json!({"$lastUpdated": format_time(self.desired_updated), "$lastUpdatedVersion": self.desired_version}),
        );
        desired.insert("$version".into(), self.desired_version.into());
        reported.insert(
            "$metadata".into(),
            serde_json::json!({"$lastUpdated": format_time(self.reported_updated)}),
        );
        reported.insert("$version".into(), self.reported_version.into());
        let mut doc = Map::new();
        doc.insert("deviceId".into(), device.device_id.clone().into());
        doc.insert("etag".into(), self.etag().into());
        doc.insert("deviceEtag".into(), device.etag.clone().into());
        doc.insert("version".into(), self.version.into());
        doc.insert("status".into(), device.status.clone().into());
        if let Some(r) = &device.status_reason {
            doc.insert("statusReason".into(), r.clone().into());
        }
        doc.insert(
            "statusUpdateTime".into(),
            device.status_updated_time.to_string().into(),
        );
        doc.insert(
            "connectionState".into(),
            device.connection_state.clone().into(),
        );
        doc.insert(
            "lastActivityTime".into(),
            device.last_activity_time.to_string().into(),
        );
        doc.insert(
            "cloudToDeviceMessageCount".into(),
            device.cloud_to_device_message_count.into(),
        );
        doc.insert(
            "authenticationType".into(),
            device.authentication.kind.clone().into(),
        );
        doc.insert(
            "x509Thumbprint".into(),
            serde_json::to_value(&device.authentication.x509_thumbprint).unwrap_or(Value::Null),
        );
        doc.insert("modelId".into(), "".into());
        doc.insert(
            "capabilities".into(),
            serde_json::json!({"iotEdge": device.capabilities.iot_edge}),
        );
        doc.insert("tags".into(), Value::Object(self.section(Section::Tags)));
        doc.insert(
            "properties".into(),
            serde_json::json!({"desired": desired, "reported": reported}),
        );
        let configs = self.section(Section::Configurations);
        if !configs.is_empty() {
            doc.insert("configurations".into(), Value::Object(configs));
        }
        Value::Object(doc)
    }
}

impl Scalar {
    fn from_json(v: &Value) -> Scalar {
        match v {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Scalar::Int(i),
                None => Scalar::Float(n.as_f64().unwrap_or(0.0)),
            },
            Value::String(s) if s.len() <= INLINE => {
                let mut bytes = [0u8; INLINE];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                Scalar::Short {
                    len: s.len() as u8,
                    bytes,
                }
            }
            Value::String(s) => Scalar::Str(s.as_str().into()),
            Value::Array(_) => Scalar::Array(v.to_string().into()),
            Value::Object(_) => Scalar::Object,
        }
    }
    fn to_json(&self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Int(i) => Value::from(*i),
            Scalar::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Scalar::Str(s) => Value::String(s.to_string()),
            Scalar::Short { .. } => match self.val() {
                Val::Str(s) => Value::String(s.to_string()),
                _ => Value::Null,
            },
            Scalar::Object => Value::Object(Map::new()),
            Scalar::Array(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        }
    }
    fn val(&self) -> Val<'_> {
        match self {
            Scalar::Null => Val::Null,
            Scalar::Bool(b) => Val::Bool(*b),
            Scalar::Int(i) => Val::Int(*i),
            Scalar::Float(f) => Val::Float(*f),
            Scalar::Str(s) => Val::Str(s),
            // Built from a &str, so always valid UTF-8.
            Scalar::Short { len, bytes } => {
                Val::Str(std::str::from_utf8(&bytes[..*len as usize]).unwrap_or(""))
            }
            Scalar::Object => Val::Object,
            Scalar::Array(_) => Val::Array,
        }
    }
}

/// Inserts `value` at a dotted relative path, creating objects on the way. An object
/// marker never overwrites children already inserted.
fn insert_at(root: &mut Map<String, Value>, rel: &str, value: Value) {
    let mut cur = root;
    let mut segs = rel.split('.').peekable();
    while let Some(seg) = segs.next() {
        if segs.peek().is_none() {
            match (cur.get(seg), &value) {
                (Some(Value::Object(_)), Value::Object(_)) => {}
                _ => {
                    cur.insert(seg.to_string(), value);
                }
            }
            return;
        }
        let slot = cur
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        cur = slot.as_object_mut().expect("just made an object");
    }
}

fn flatten(s: Section, prefix: &str, obj: &Map<String, Value>, out: &mut Vec<Entry>) {
    for (k, v) in obj {
        let p = path::join(prefix, k);
        out.push(Entry {
            lc: intern_lc(&p),
            node: Node::new(s, intern(&p), Scalar::from_json(v)),
        });
        if let Value::Object(m) = v {
            flatten(s, &p, m, out);
        }
    }
}

/// Applies a JSON merge patch: members add or overwrite, `null` removes, objects merge.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                if let Some(Value::Object(t)) = target.get_mut(k) {
                    merge_patch(t, p);
                } else {
                    let mut fresh = Map::new();
                    merge_patch(&mut fresh, p);
                    target.insert(k.clone(), Value::Object(fresh));
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// Drops the read-only `$version` / `$metadata` members a client may echo back.
pub fn strip_system_keys(m: &mut Map<String, Value>) {
    m.remove("$version");
    m.remove("$metadata");
}

/// Checks a section against the hub's limits and key rules.
pub fn validate_section(s: Section, value: &Map<String, Value>) -> Result<()> {
    let size = check_object(s, s.root(), value, 1)?;
    let max = if s == Section::Tags {
        MAX_TAGS_BYTES
    } else {
        MAX_PROPERTIES_BYTES
    };
    if size > max {
        return Err(HubError::new(
            ErrorCode::DeviceModelMaxPropertiesExceeded,
            format!(
                "'{}' size should be less than {max} bytes; this update makes it {size} bytes",
                s.label()
            ),
        ));
    }
    Ok(())
}

/// Validates keys, values and depth; returns the size the hub would count.
fn check_object(s: Section, at: &str, obj: &Map<String, Value>, depth: usize) -> Result<usize> {
    if depth > MAX_DEPTH {
        return Err(HubError::invalid(format!(
            "'{at}' is nested deeper than {MAX_DEPTH} levels in {}; flatten the structure",
            s.label()
        )));
    }
    let mut size = 0;
    for (k, v) in obj {
        let p = path::join(at, k);
        if k.is_empty() || k.len() > MAX_KEY_BYTES {
            return Err(HubError::invalid(format!(
                "Property or Tag name at '{p}' must be 1 to {MAX_KEY_BYTES} bytes long"
            )));
        }
        if k.chars()
            .any(|c| c.is_control() || matches!(c, '.' | '$' | '#' | ' '))
        {
            return Err(HubError::invalid(format!(
                "Property or Tag name has invalid characters. Error in Property/Tag '{}' under '{at}'. Must not contain Control Characters, '.', '$', '#', or ' '.",
                k.escape_debug()
            )));
        }
        size += k.len();
        size += check_value(s, &p, v, depth)?;
    }
    Ok(size)
}

fn check_value(s: Section, p: &str, v: &Value, depth: usize) -> Result<usize> {
    Ok(match v {
        Value::Null => 0,
        Value::Bool(_) => 4,
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                if !(MIN_INT..=MAX_INT).contains(&i) {
                    return Err(HubError::invalid(format!(
                        "'{p}' = {i} is outside the integer range {MIN_INT}..{MAX_INT}"
                    )));
                }
            } else if n.as_u64().is_some() {
                return Err(HubError::invalid(format!(
                    "'{p}' = {n} is outside the integer range {MIN_INT}..{MAX_INT}"
                )));
            }
            8
        }
        Value::String(st) => {
            if st.len() > MAX_VALUE_BYTES {
                return Err(HubError::invalid(format!(
                    "Property or Tag value should be maximum {MAX_VALUE_BYTES} bytes; '{p}' is {} bytes",
                    st.len()
                )));
            }
            st.chars()
                .filter(|c| !c.is_control())
                .map(char::len_utf8)
                .sum()
        }
        Value::Array(items) => {
            let mut total = 0;
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{p}[{i}]");
                total += match item {
                    Value::Object(m) => check_object(s, &ip, m, depth + 1)?,
                    other => check_value(s, &ip, other, depth + 1)?,
                };
            }
            total
        }
        Value::Object(m) => check_object(s, p, m, depth + 1)?,
    })
}

/// A twin with its identity: what queries and twin reads see.
pub struct TwinRow<'a> {
    /// The device identity: `deviceId`, `status`, `etag` and the other registry fields.
    pub device: &'a Device,
    /// The twin's sections and versions.
    pub twin: &'a Twin,
}

impl TwinRow<'_> {
    /// The value at a lowercase path, found in the rebuilt JSON document: the slow path,
    /// for projections of objects and of identity fields.
    fn project_from_document(&self, p: PathId) -> Option<Value> {
        let doc = self.to_json();
        path::with_name(p, |lc| {
            let mut cur = &doc;
            for seg in lc.split('.') {
                cur = cur
                    .as_object()?
                    .iter()
                    .find(|(k, _)| k.to_lowercase() == seg)
                    .map(|(_, v)| v)?;
            }
            Some(cur.clone())
        })
    }
}

impl Row for TwinRow<'_> {
    fn lookup(&self, p: PathId) -> Val<'_> {
        let k = &*KNOWN;
        if let Some(e) = self.twin.find(p) {
            return e.val.val();
        }
        match p {
            _ if p == k.device_id => Val::Str(&self.device.device_id),
            _ if p == k.status => Val::Str(&self.device.status),
            _ if p == k.status_reason => match &self.device.status_reason {
                Some(r) => Val::Str(r),
                None => Val::Undefined,
            },
            _ if p == k.connection_state => Val::Str(&self.device.connection_state),
            _ if p == k.version => Val::Int(self.twin.version),
            _ if p == k.c2d_count => Val::Int(self.device.cloud_to_device_message_count),
            _ if p == k.authentication_type => Val::Str(&self.device.authentication.kind),
            _ if p == k.iot_edge => Val::Bool(self.device.capabilities.iot_edge),
            _ if p == k.desired_version => Val::Int(self.twin.desired_version),
            _ if p == k.reported_version => Val::Int(self.twin.reported_version),
            _ if p == k.tags
                || p == k.properties
                || p == k.desired
                || p == k.reported
                || p == k.capabilities =>
            {
                Val::Object
            }
            _ if p == k.configurations => {
                if self
                    .twin
                    .nodes
                    .iter()
                    .any(|e| e.section() == Section::Configurations)
                {
                    Val::Object
                } else {
                    Val::Undefined
                }
            }
            // Strings that must be formatted are answered through `project`.
            _ if p == k.etag || p == k.last_activity_time => Val::Undefined,
            _ => Val::Undefined,
        }
    }

    fn project(&self, p: PathId) -> Option<Value> {
        let k = &*KNOWN;
        if p == k.etag {
            return Some(self.twin.etag().into());
        }
        if p == k.last_activity_time {
            return Some(self.device.last_activity_time.to_string().into());
        }
        match self.lookup(p) {
            Val::Undefined => None,
            Val::Object => self.project_from_document(p),
            _ => self
                .twin
                .find(p)
                .map(|e| e.val.to_json())
                .or_else(|| self.project_from_document(p)),
        }
    }

    fn to_json(&self) -> Value {
        self.twin.to_json(self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn sections_round_trip_through_the_flat_form() {
        let mut t = Twin::new(now());
        let tags = obj(
            json!({"ring": "canary", "Model": "4000x", "loc": {"region": "eu", "n": 2, "f": 1.5, "ok": true, "none": null}, "list": [1, "a"], "empty": {}}),
        );
        t.set_section(Section::Tags, &tags).unwrap();
        assert_eq!(Value::Object(t.section(Section::Tags)), Value::Object(tags));
        let d = Device::new("d1");
        let row = TwinRow {
            device: &d,
            twin: &t,
        };
        assert_eq!(row.lookup(intern_lc("tags.model")), Val::Str("4000x"));
        assert_eq!(row.lookup(intern_lc("TAGS.LOC.N")), Val::Int(2));
        assert_eq!(row.lookup(intern_lc("tags.loc.none")), Val::Null);
        assert_eq!(row.lookup(intern_lc("tags.list")), Val::Array);
        assert_eq!(row.lookup(intern_lc("tags.loc")), Val::Object);
        assert_eq!(row.lookup(intern_lc("deviceid")), Val::Str("d1"));
        assert_eq!(row.lookup(intern_lc("tags.nope")), Val::Undefined);
        assert_eq!(row.project(intern_lc("tags.loc")).unwrap()["region"], "eu");
        assert_eq!(
            row.project(intern_lc("tags.list")).unwrap(),
            json!([1, "a"])
        );
    }

    #[test]
    fn merge_patch_adds_overwrites_and_deletes_with_null() {
        let mut m = obj(json!({"a": 1, "b": {"c": 2, "d": 3}, "e": 4}));
        merge_patch(
            &mut m,
            &obj(json!({"a": null, "b": {"c": null, "x": 9}, "f": {"g": null, "h": 1}})),
        );
        assert_eq!(
            Value::Object(m),
            json!({"b": {"d": 3, "x": 9}, "e": 4, "f": {"h": 1}})
        );
    }

    #[test]
    fn limits_carry_the_hub_error_names() {
        let bad_key = validate_section(Section::Tags, &obj(json!({"a.b": 1}))).unwrap_err();
        assert_eq!(bad_key.code, ErrorCode::ArgumentInvalid);
        assert!(bad_key.message.contains("Must not contain"), "{bad_key}");
        for k in ["a$b", "a#b", "a b", "a\u{1}b"] {
            let mut m = Map::new();
            m.insert(k.into(), json!(1));
            assert!(validate_section(Section::Desired, &m).is_err(), "{k:?}");
        }
        let big = "x".repeat(4097);
        let e = validate_section(Section::Reported, &obj(json!({"v": big}))).unwrap_err();
        assert!(e.message.contains("4096"), "{e}");
        let mut tags = Map::new();
        for i in 0..10 {
            tags.insert(format!("k{i}"), json!("y".repeat(1000)));
        }
        let e = validate_section(Section::Tags, &tags).unwrap_err();
        assert_eq!(e.code, ErrorCode::DeviceModelMaxPropertiesExceeded);
        assert!(e.message.contains("'Tags' size"), "{e}");
        assert!(validate_section(Section::Desired, &tags).is_ok());
        let mut deep = json!(1);
        for _ in 0..11 {
            deep = json!({"n": deep});
        }
        let e = validate_section(Section::Desired, &obj(deep)).unwrap_err();
        assert!(e.message.contains("nested deeper than 10"), "{e}");
        let e = validate_section(Section::Desired, &obj(json!({"big": 4503599627370496i64})))
            .unwrap_err();
        assert!(e.message.contains("integer range"), "{e}");
    }

    #[test]
    fn case_collisions_are_refused() {
        let mut t = Twin::new(now());
        let e = t
            .set_section(Section::Tags, &obj(json!({"Ring": 1, "ring": 2})))
            .unwrap_err();
        assert!(e.message.contains("letter case"), "{e}");
    }

    #[test]
    fn twin_json_has_versions_metadata_and_configurations() {
        let mut t = Twin::new(now());
        t.set_section(Section::Desired, &obj(json!({"fw": {"v": "1"}})))
            .unwrap();
        t.set_configuration_status("cfg-1", Some("applied"));
        assert_eq!(t.configuration_status("cfg-1").as_deref(), Some("applied"));
        let d = Device::new("dev");
        let j = t.to_json(&d);
        assert_eq!(j["properties"]["desired"]["fw"]["v"], "1");
        assert_eq!(j["properties"]["desired"]["$version"], 1);
        assert_eq!(
            j["properties"]["reported"]["$metadata"]["$lastUpdated"],
            "2026-01-01T00:00:00.000Z"
        );
        assert_eq!(j["configurations"]["cfg-1"]["status"], "applied");
        assert_eq!(j["etag"], "AAAAAAAAAAE=");
        t.set_configuration_status("cfg-1", None);
        assert!(t.to_json(&d).get("configurations").is_none());
        assert_eq!(twin_etag(7), "AAAAAAAAAAc=");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-zA-Z][a-zA-Z0-9_-]{0,8}",
                "[a-z .$#]{1,4}",
                any::<String>().prop_map(|s| s.chars().take(6).collect()),
            ]
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                (-1e9f64..1e9).prop_map(Value::from),
                "[ -~]{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(12, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                    prop::collection::btree_map(key(), inner, 0..5)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// Any object either round-trips through the flat form exactly or is refused
            /// with the twin left as it was; nothing panics.
            #[test]
            fn sections_round_trip_or_are_refused(
                m in prop::collection::btree_map(key(), json_value(), 0..6),
                patch in prop::collection::btree_map(key(), json_value(), 0..4),
            ) {
                let m: Map<String, Value> = m.into_iter().collect();
                let mut t = Twin::new(now());
                match t.set_section(Section::Reported, &m) {
                    Ok(()) => prop_assert_eq!(t.section(Section::Reported), m.clone()),
                    Err(_) => prop_assert!(t.section(Section::Reported).is_empty()),
                }
                let before = t.section(Section::Reported);
                let mut merged = before.clone();
                merge_patch(&mut merged, &patch.into_iter().collect());
                match t.set_section(Section::Reported, &merged) {
                    Ok(()) => prop_assert_eq!(t.section(Section::Reported), merged),
                    Err(_) => prop_assert_eq!(t.section(Section::Reported), before),
                }
            }
        }
    }
}
