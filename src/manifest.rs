//! Loading `DeviceRollout` and `Hub` documents from multi-document YAML.
//!
//! The pipeline, so that every error can name the file, line, column and field:
//! 1. parse the YAML (serde-saphyr, with budgets against alias bombs, deep nesting and
//!    huge inputs) into a tree that remembers where each node was written;
//! 2. turn it into JSON and remember the location of every field path
//!    (`spec.rings[1].target`);
//! 3. dispatch on `apiVersion`/`kind` and deserialize with the field path tracked;
//! 4. report fields the types do not know (checked against the CRD schema, so a typo like
//!    `spec.gate.bakee` is an error, not silently dropped), with the fields that are valid;
//! 5. validate ([`crate::core::validate`]): queries, CEL, IoT Hub limits.
//!
//! Documents of other API groups (a Secret next to the rollouts, say) are skipped; a
//! `ringmaster.dev` document with an unknown kind or version is an error. Scalars follow
//! YAML 1.2 (`off` is a string, not a boolean).

use crate::core::validate::{self, FieldError};
use crate::resources::{API_VERSION, DeviceRollout, GROUP, Hub};
use kube::CustomResourceExt;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::fmt;

/// Largest manifest file read (bytes).
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// One resource read from a manifest.
#[derive(Clone, Debug)]
pub enum Document {
    /// A `DeviceRollout`.
    DeviceRollout(Box<DeviceRollout>),
    /// A `Hub`.
    Hub(Box<Hub>),
    /// A `DeviceRings` (`docs/rings.md`).
    DeviceRings(Box<crate::resources::DeviceRings>),
}

/// A problem in a manifest, located as precisely as the parser allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The file name as given to [`load_manifests`].
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// The field path (`spec.rings[1].target`); empty for errors about the whole file.
    pub path: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Reads every `DeviceRollout` and `Hub` in a YAML stream. Either every document is
/// good, or the errors of all documents come back (the caller leaves what it applied
/// from this file before as it is).
pub fn load_manifests(file_name: &str, text: &str) -> Result<Vec<Document>, Vec<ManifestError>> {
    let err = |line: Option<u64>, column: Option<u64>, path: &str, message: String| ManifestError {
        file: file_name.to_string(),
        line,
        column,
        path: path.to_string(),
        message,
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(vec![err(
            None,
            None,
            "",
            format!(
                "file is {} bytes; at most {MAX_FILE_BYTES} are read",
                text.len()
            ),
        )]);
    }
    let nodes: Vec<Spanned<Node>> =
        match serde_saphyr::from_multiple_with_options(text, yaml_options()) {
            Ok(nodes) => nodes,
            Err(e) => {
                let loc = e.location();
                return Err(vec![err(
                    loc.map(|l| l.line()),
                    loc.map(|l| l.column()),
                    "",
                    format!("not valid YAML: {}", strip_location(&e.to_string())),
                )]);
            }
        };

    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for node in &nodes {
        let mut locs = Locations::default();
        let json = match to_json(node, "", &mut locs) {
            Ok(json) => json,
            Err((path, loc, message)) => {
                errors.push(err(Some(loc.0), Some(loc.1), &path, message));
                continue;
            }
        };
        let doc_loc = (node.referenced.line(), node.referenced.column());
        let mut doc_errors = Vec::new();
        let located = |path: &str, message: String| {
            let (line, col) = locs.find(path).unwrap_or(doc_loc);
            err(Some(line), Some(col), path, message)
        };
        match read_document(&json) {
            Ok(Some(doc)) => {
                for (path, message) in unknown_fields(&json, &doc) {
                    doc_errors.push(located(&path, message));
                }
                let problems = match &doc {
                    Document::DeviceRollout(ro) => validate::validate_rollout(ro),
                    Document::Hub(hub) => validate::validate_hub(hub),
                    Document::DeviceRings(r) => crate::core::rings::validate::validate_rings(r),
                };
                for FieldError { path, message } in problems {
                    doc_errors.push(located(&path, message));
                }
                if doc_errors.is_empty() {
                    docs.push(doc);
                }
            }
            Ok(None) => {}
            Err((path, message)) => doc_errors.push(located(&path, message)),
        }
        errors.extend(doc_errors);
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

/// Checks one object as the API server holds it (the `object` of an admission request,
/// say) with the same checks as [`load_manifests`]: the kind and version, the fields the
/// types know, then [`validate`]. `Ok(None)` for objects of other API groups. The
/// problems carry the field path and message `ringmaster validate` prints (without a
/// file location: there is no file).
pub fn check_object(json: &serde_json::Value) -> Result<Option<Document>, Vec<FieldError>> {
    let to_errors = |v: Vec<(String, String)>| {
        v.into_iter()
            .map(|(path, message)| FieldError { path, message })
            .collect::<Vec<_>>()
    };
    let doc = match read_document(json) {
        Ok(Some(doc)) => doc,
        Ok(None) => return Ok(None),
        Err(e) => return Err(to_errors(vec![e])),
    };
    let mut errors = to_errors(unknown_fields(json, &doc));
    errors.extend(match &doc {
        Document::DeviceRollout(ro) => validate::validate_rollout(ro),
        Document::Hub(hub) => validate::validate_hub(hub),
        Document::DeviceRings(r) => crate::core::rings::validate::validate_rings(r),
    });
    if errors.is_empty() {
        Ok(Some(doc))
    } else {
        Err(errors)
    }
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 64,
            max_documents: 1_000,
            max_nodes: 200_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_total_scalar_bytes: MAX_FILE_BYTES,
        },
        strict_booleans: true,
    }
}

/// serde-saphyr appends " at line X column Y" to some messages; the location is reported
/// separately, so drop it.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Dispatches on `apiVersion` and `kind`; `Ok(None)` for documents of other API groups.
fn read_document(json: &serde_json::Value) -> Result<Option<Document>, (String, String)> {
    let Some(obj) = json.as_object() else {
        return Err((
            String::new(),
            "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    };
    let api_version = match obj.get("apiVersion") {
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err((
                "apiVersion".into(),
                format!("must be a string; expected {API_VERSION}"),
            ));
        }
        None => {
            return Err((
                String::new(),
                format!("missing field `apiVersion`; expected {API_VERSION}"),
            ));
        }
    };
    let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    if group != GROUP {
        return Ok(None);
    }
    if api_version != API_VERSION {
        return Err((
            "apiVersion".into(),
            format!("unknown version `{api_version}`; expected {API_VERSION}"),
        ));
    }
    let kind = obj.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let doc = match kind {
        "DeviceRollout" => Document::DeviceRollout(Box::new(typed(json)?)),
        "Hub" => Document::Hub(Box::new(typed(json)?)),
        "DeviceRings" => Document::DeviceRings(Box::new(typed(json)?)),
        "" => {
            return Err((
                String::new(),
                "missing field `kind`; expected DeviceRollout or Hub (or DeviceRings)".into(),
            ));
        }
        other => {
            return Err((
                "kind".into(),
                format!("unknown kind `{other}`; expected DeviceRollout or Hub (or DeviceRings)"),
            ));
        }
    };
    Ok(Some(doc))
}

fn typed<T: serde::de::DeserializeOwned>(json: &serde_json::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e
            .path()
            .iter()
            .map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => format!("[{index}]"),
                serde_path_to_error::Segment::Map { key } => validate::key_segment(key),
                serde_path_to_error::Segment::Enum { variant } => validate::key_segment(variant),
                serde_path_to_error::Segment::Unknown => String::new(),
            })
            .collect::<String>();
        let path = path.strip_prefix('.').unwrap_or(&path).to_string();
        (path, e.into_inner().to_string())
    })
}

/// Fields present in the input that the types do not know: checked against the CRD's
/// schema (which lists every field with its description), and for `metadata` (which
/// the schema leaves open) by reading the parsed object back.
fn unknown_fields(input: &serde_json::Value, doc: &Document) -> Vec<(String, String)> {
    let (schema, meta) = match doc {
        Document::DeviceRollout(ro) => (DeviceRollout::crd(), serde_json::to_value(&ro.metadata)),
        Document::Hub(hub) => (Hub::crd(), serde_json::to_value(&hub.metadata)),
        Document::DeviceRings(r) => (
            crate::resources::DeviceRings::crd(),
            serde_json::to_value(&r.metadata),
        ),
    };
    let schema = schema
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut top = schema.clone();
    if let Some(props) = top.get_mut("properties").and_then(|p| p.as_object_mut()) {
        for key in ["apiVersion", "kind", "metadata"] {
            props.entry(key).or_insert(
                serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
            );
        }
    }
    walk_schema(input, &top, "", &mut out);
    if let (Some(given), Ok(read)) = (input.get("metadata"), meta) {
        walk_readback(given, &read, "metadata", &mut out);
    }
    out
}

fn walk_schema(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    path: &str,
    out: &mut Vec<(String, String)>,
) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&serde_json::Value::Bool(true)) {
        return;
    }
    match value {
        serde_json::Value::Object(map) => {
            let props = schema.get("properties").and_then(|p| p.as_object());
            let additional = schema.get("additionalProperties");
            for (key, v) in map {
                let child_path = join(path, key);
                if let Some(child) = props.and_then(|p| p.get(key)) {
                    walk_schema(v, child, &child_path, out);
                } else if let Some(add) = additional.filter(|a| a.is_object()) {
                    walk_schema(v, add, &child_path, out);
                } else if let Some(props) = props {
                    let valid: Vec<&str> = props.keys().map(|k| k.as_str()).collect();
                    out.push((
                        child_path,
                        format!(
                            "unknown field `{key}`; valid fields here: {}",
                            valid.join(", ")
                        ),
                    ));
                }
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    walk_schema(v, item_schema, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn walk_readback(
    given: &serde_json::Value,
    read: &serde_json::Value,
    path: &str,
    out: &mut Vec<(String, String)>,
) {
    let (Some(given), Some(read)) = (given.as_object(), read.as_object()) else {
        return;
    };
    for (key, v) in given {
        let child_path = join(path, key);
        match read.get(key) {
            Some(r) if !matches!(key.as_str(), "labels" | "annotations") => walk_readback(v, r, &child_path, out),
            Some(_) => {}
            None if v.is_null() => {}
            None => out.push((
                child_path,
                format!("unknown field `{key}`; metadata takes name, namespace, labels, annotations and the other ObjectMeta fields"),
            )),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    let seg = validate::key_segment(key);
    if path.is_empty() {
        seg.strip_prefix('.').unwrap_or(&seg).to_string()
    } else {
        format!("{path}{seg}")
    }
}

/// Where each field path of one document was written: (line, column) of its value.
#[derive(Default)]
struct Locations(BTreeMap<String, (u64, u64)>);

impl Locations {
    /// The location of `path`, or of its nearest ancestor that has one.
    fn find(&self, path: &str) -> Option<(u64, u64)> {
        let mut p = path.to_string();
        loop {
            if let Some(loc) = self.0.get(&p) {
                return Some(*loc);
            }
            if p.is_empty() {
                return None;
            }
            p = parent(&p);
        }
    }
}

/// `spec.rings[1].target` -> `spec.rings[1]` -> `spec.rings` -> `spec` -> ``.
fn parent(path: &str) -> String {
    if path.ends_with(']') {
        // `[1]` or `["a.b"]`: cut at the matching `[` (keys never contain `"]`).
        let cut = if path.ends_with("\"]") {
            path.rfind("[\"")
        } else {
            path.rfind('[')
        };
        return path[..cut.unwrap_or(0)].to_string();
    }
    match path.rfind('.') {
        Some(i) => path[..i].to_string(),
        None => String::new(),
    }
}

/// A YAML node as parsed, each child with the place it was written.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
                Ok(Node::UInt(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry()? {
                    entries.push((k, v));
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

type Located = (String, (u64, u64), String);

fn loc_of(node: &Spanned<Node>) -> (u64, u64) {
    (node.referenced.line(), node.referenced.column())
}

fn to_json(
    node: &Spanned<Node>,
    path: &str,
    locs: &mut Locations,
) -> Result<serde_json::Value, Located> {
    locs.0.insert(path.to_string(), loc_of(node));
    Ok(match &node.value {
        Node::Null => serde_json::Value::Null,
        Node::Bool(b) => serde_json::Value::Bool(*b),
        Node::Int(i) => serde_json::Value::from(*i),
        Node::UInt(u) => serde_json::Value::from(*u),
        Node::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| {
                (
                    path.to_string(),
                    loc_of(node),
                    format!("{f} is not a finite number"),
                )
            })?,
        Node::Str(s) => serde_json::Value::String(s.clone()),
        Node::Seq(items) => serde_json::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| to_json(item, &format!("{path}[{i}]"), locs))
                .collect::<Result<_, _>>()?,
        ),
        Node::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let key = match &k.value {
                    Node::Str(s) => s.clone(),
                    Node::Int(i) => i.to_string(),
                    Node::UInt(u) => u.to_string(),
                    Node::Bool(b) => b.to_string(),
                    _ => {
                        return Err((
                            path.to_string(),
                            loc_of(k),
                            "mapping keys must be strings".into(),
                        ));
                    }
                };
                let child = join(path, &key);
                if map.contains_key(&key) {
                    return Err((child, loc_of(k), format!("duplicate key `{key}`")));
                }
                let value = to_json(v, &child, locs)?;
                // Point the field at its key: that is where a person looks for it.
                locs.0.insert(child, loc_of(k));
                map.insert(key, value);
            }
            serde_json::Value::Object(map)
        }
    })
}

/// Deepest folder level below the root that [`yaml_files`] reads; a folder deeper than
/// that is an error.
pub const MAX_DEPTH: usize = 32;

/// Most entries (files, folders, links) [`yaml_files`] looks at before it gives up.
pub const MAX_ENTRIES: usize = 100_000;

/// Every YAML file (`*.yaml`, `*.yml`) under `path` (or `path` itself when it is a file),
/// sorted by path. Hidden entries (`.name`) are skipped, without following them: a
/// Kubernetes ConfigMap mount keeps its data behind `..data`, and editors leave dangling
/// `.#name` lock links. Other symbolic links are followed, and the walk fails, with an
/// error naming the entry, on anything that would make it incomplete or endless:
/// - a link loop: a link to a folder above it, or to one that holds `path` (walkdir
///   compares each linked folder with the folders above it, up to the file system's root);
/// - a dangling link (an unmounted volume looks like one): a missing folder must not read
///   as an empty one;
/// - a `*.yaml` entry that is not a regular file (a FIFO would block the read);
/// - more than [`MAX_DEPTH`] folder levels or [`MAX_ENTRIES`] entries.
pub fn yaml_files(path: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    use std::io::{Error, ErrorKind};
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let hidden = |name: &std::ffi::OsStr, depth: usize| {
        depth > 0 && name.as_encoded_bytes().starts_with(b".")
    };
    let walk = walkdir::WalkDir::new(path)
        .follow_links(true)
        .max_depth(MAX_DEPTH)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| !hidden(e.file_name(), e.depth()));
    let mut out = Vec::new();
    for (seen, entry) in walk.enumerate() {
        if seen >= MAX_ENTRIES {
            return Err(Error::other(format!(
                "{}: more than {MAX_ENTRIES} files, folders and links below it; point at a \
                 smaller folder (or check for links that lead far away)",
                path.display()
            )));
        }
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let name = e.path().and_then(|p| p.file_name());
                if name.is_some_and(|n| hidden(n, e.depth())) {
                    continue; // a hidden link that leads nowhere: not ours to follow
                }
                return Err(walk_error(e));
            }
        };
        let p = entry.path();
        if entry.file_type().is_dir() {
            if entry.depth() == MAX_DEPTH {
                return Err(Error::other(format!(
                    "{}: more than {MAX_DEPTH} folder levels below {}; move the manifests up",
                    p.display(),
                    path.display()
                )));
            }
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        if !entry.file_type().is_file() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{}: not a regular file", p.display()),
            ));
        }
        out.push(entry.into_path());
    }
    Ok(out)
}

/// A walk error that names the entry and says what is wrong with it.
fn walk_error(e: walkdir::Error) -> std::io::Error {
    use std::io::{Error, ErrorKind};
    let shown = e
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if let Some(ancestor) = e.loop_ancestor() {
        return Error::other(format!(
            "{shown}: a symbolic link loop: it leads back to {}, which holds it; remove the \
             link or point it elsewhere",
            ancestor.display()
        ));
    }
    let link = e.path().and_then(|p| std::fs::read_link(p).ok());
    let kind = e.io_error().map_or(ErrorKind::Other, |io| io.kind());
    match link {
        Some(target) if kind == ErrorKind::NotFound => Error::new(
            kind,
            format!(
                "{shown}: a symbolic link to {}, which does not exist (an unmounted volume?); \
                 restore its target or remove the link",
                target.display()
            ),
        ),
        _ => {
            let why = e
                .io_error()
                .map_or_else(|| e.to_string(), |io| io.to_string());
            Error::new(kind, format!("{shown}: {why}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: ringmaster.dev/v1alpha1
kind: DeviceRollout
metadata: {name: chiller-fw, namespace: fleet}
spec:
  target: "tags.environment='prod'"
  priority: 20
  content:
    device:
      properties.desired.firmware: {version: "2.4.0"}
  metrics:
    current: "properties.reported.firmware.version='2.4.0'"
    failed: "properties.reported.firmware.status='Error'"
  gate:
    minApplied: 5
    bake: 10m
    success: "lowerBound(metrics.current, applied) >= 0.95"
    failure: "lowerBound(metrics.failed, applied) > 0.02"
    deadline: 2h
  rings:
    - {name: canary, target: "tags.ring='canary'"}
    - {name: early, target: "tags.ring='early'", approval: true}
    - {name: broad, target: "*"}
  onFailure: rollback
  baseline: off
---
apiVersion: v1
kind: Secret
metadata: {name: hub-conn}
---
apiVersion: ringmaster.dev/v1alpha1
kind: Hub
metadata: {name: default, namespace: fleet}
spec:
  type: embedded
"#;

    #[test]
    fn reads_rollouts_and_hubs_and_skips_other_groups() {
        let docs = load_manifests("fleet.yaml", GOOD).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(docs.len(), 2);
        let Document::DeviceRollout(ro) = &docs[0] else {
            panic!("first is a rollout")
        };
        assert_eq!(ro.spec.rings.len(), 3);
        assert_eq!(ro.spec.baseline, crate::resources::BaselinePolicy::Off);
        assert_eq!(
            ro.spec
                .gate
                .bake
                .map(|d| std::time::Duration::from(d).as_secs()),
            Some(600)
        );
        assert!(matches!(&docs[1], Document::Hub(_)));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = load_manifests("bad.yaml", "apiVersion: ringmaster.dev/v1alpha1\nkind: [\n")
            .unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].file, "bad.yaml");
        assert!(e[0].line.is_some(), "{}", e[0]);
        assert!(e[0].message.starts_with("not valid YAML"), "{}", e[0]);
    }

    #[test]
    fn type_errors_name_file_line_and_field() {
        let text = GOOD.replace("priority: 20", "priority: high");
        let e = load_manifests("fleet.yaml", &text).unwrap_err();
        let first = &e[0];
        assert_eq!(first.path, "spec.priority", "{first}");
        assert_eq!(first.line, Some(7), "{first}");
        assert!(
            first
                .to_string()
                .starts_with("fleet.yaml:7:3: spec.priority: invalid type"),
            "{first}"
        );
    }

    #[test]
    fn bad_enum_values_say_what_is_valid() {
        let text = GOOD.replace("onFailure: rollback", "onFailure: rollbak");
        let e = load_manifests("fleet.yaml", &text).unwrap_err();
        assert_eq!(e[0].path, "spec.onFailure", "{}", e[0]);
        assert!(
            e[0].message.contains("rollback") && e[0].message.contains("pause"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn unknown_fields_are_reported_with_the_valid_ones() {
        let text = GOOD.replace("    bake: 10m", "    bakee: 10m").replace(
            "metadata: {name: chiller-fw,",
            "metadata: {nmae: x, name: chiller-fw,",
        );
        let e = load_manifests("fleet.yaml", &text).unwrap_err();
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"spec.gate.bakee"), "{e:?}");
        assert!(paths.contains(&"metadata.nmae"), "{e:?}");
        let bakee = e.iter().find(|e| e.path == "spec.gate.bakee").unwrap();
        assert_eq!(bakee.line, Some(16));
        assert!(
            bakee
                .message
                .contains("bake, deadline, failure, minApplied, success"),
            "{bakee}"
        );
    }

    #[test]
    fn validation_errors_point_at_the_field() {
        let text = GOOD.replace(
            "{name: early, target: \"tags.ring='early'\"",
            "{name: early, target: \"tags.ring = = 'x' !!\"",
        );
        let e = load_manifests("fleet.yaml", &text).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path, "spec.rings[1].target");
        assert_eq!(e[0].line, Some(22), "{}", e[0]);
        assert!(e[0].to_string().starts_with("fleet.yaml:22:"), "{}", e[0]);
        assert!(e[0].message.contains("column"), "{}", e[0]);
    }

    #[test]
    fn wrong_kind_and_version_are_errors() {
        let e = load_manifests(
            "x.yaml",
            "apiVersion: ringmaster.dev/v1\nkind: DeviceRollout\n",
        )
        .unwrap_err();
        assert_eq!(e[0].path, "apiVersion");
        assert!(e[0].message.contains("ringmaster.dev/v1alpha1"));
        let e = load_manifests(
            "x.yaml",
            "apiVersion: ringmaster.dev/v1alpha1\nkind: Rollout\n",
        )
        .unwrap_err();
        assert_eq!(e[0].path, "kind");
        assert!(e[0].message.contains("DeviceRollout or Hub"));
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            };
            bomb.push_str(&format!("b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let e = load_manifests("bomb.yaml", &bomb).unwrap_err();
        assert!(e[0].message.starts_with("not valid YAML"), "{}", e[0]);
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(load_manifests("deep.yaml", &deep).is_err());
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = load_manifests(
            "d.yaml",
            "apiVersion: ringmaster.dev/v1alpha1\napiVersion: x\n",
        )
        .unwrap_err();
        assert!(e[0].message.contains("duplicate"), "{}", e[0]);
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("spec.rings[1].target"), "spec.rings[1]");
        assert_eq!(parent("spec.rings[1]"), "spec.rings");
        assert_eq!(
            parent("spec.content.device[\"properties.desired.a\"]"),
            "spec.content.device"
        );
        assert_eq!(parent("spec"), "");
    }

    #[test]
    fn the_walk_is_bounded_in_depth_and_reads_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_path_buf();
        for _ in 0..MAX_DEPTH - 1 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("a.yaml"), "").unwrap();
        let found = yaml_files(dir.path()).unwrap();
        assert_eq!(found, [deep.join("a.yaml")]);
        std::fs::create_dir(deep.join("d")).unwrap();
        let err = yaml_files(dir.path()).unwrap_err().to_string();
        assert!(err.contains("more than 32 folder levels"), "{err}");
        std::fs::remove_dir(deep.join("d")).unwrap();

        // A FIFO would block the read forever.
        let fifo = dir.path().join("f.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let err = yaml_files(dir.path()).unwrap_err().to_string();
            assert!(err.contains("f.yaml: not a regular file"), "{err}");
        }
    }
}
