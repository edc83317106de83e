//! Interned property paths.
//!
//! A twin is stored flat: every node (object, array or scalar) is one entry keyed by its
//! full dotted path from the twin root (`tags.ring`, `properties.reported.firmware.version`).
//! Twin keys may not contain `.`, so the dotted form is unambiguous. Paths are interned
//! once into a process-wide table and compared as `u32`s afterwards: a compiled query holds
//! path ids, and evaluating it never touches a string it does not compare.
//!
//! Query property *names* are case-insensitive while twin keys are case-sensitive, so two
//! ids exist for each node: the exact-case path (used to rebuild the JSON document) and the
//! lowercase path (used for lookup). Both come from the same table.
//!
//! The table is append-only; its size is bounded by the number of distinct paths in the
//! fleet, which is small (hundreds to thousands) even for a million twins.

use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use std::sync::LazyLock;

/// An interned dotted path. Cheap to copy and compare; ordering is by interning order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId(pub u32);

struct Table {
    /// FxHash: paths are short and hashed on every flatten and lookup.
    by_name: FxHashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

static TABLE: LazyLock<RwLock<Table>> = LazyLock::new(|| {
    RwLock::new(Table {
        by_name: FxHashMap::default(),
        names: Vec::new(),
    })
});

/// Interns `path` exactly as given (no case folding).
pub fn intern(path: &str) -> PathId {
    if let Some(&id) = TABLE.read().by_name.get(path) {
        return PathId(id);
    }
    let mut t = TABLE.write();
    if let Some(&id) = t.by_name.get(path) {
        return PathId(id);
    }
    let id = t.names.len() as u32;
    t.names.push(path.into());
    t.by_name.insert(path.into(), id);
    PathId(id)
}

/// Interns the lowercase form of `path`: the id queries use for lookup.
pub fn intern_lc(path: &str) -> PathId {
    if path.bytes().any(|b| b.is_ascii_uppercase()) || !path.is_ascii() {
        intern(&path.to_lowercase())
    } else {
        intern(path)
    }
}

/// Looks a path up without interning it; `None` when no twin or query ever used it.
pub fn lookup(path: &str) -> Option<PathId> {
    TABLE.read().by_name.get(path).map(|&id| PathId(id))
}

/// The text of an interned path.
pub fn name(id: PathId) -> String {
    TABLE.read().names[id.0 as usize].to_string()
}

/// Runs `f` with the text of an interned path, without allocating.
pub fn with_name<R>(id: PathId, f: impl FnOnce(&str) -> R) -> R {
    let t = TABLE.read();
    f(&t.names[id.0 as usize])
}

/// Joins a parent path and a key into a child path.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        let mut s = String::with_capacity(parent.len() + 1 + key.len());
        s.push_str(parent);
        s.push('.');
        s.push_str(key);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_case_folding_is_separate() {
        let a = intern("tags.Ring");
        let b = intern("tags.Ring");
        assert_eq!(a, b);
        let lc = intern_lc("tags.Ring");
        assert_ne!(a, lc);
        assert_eq!(name(lc), "tags.ring");
        assert_eq!(lookup("tags.ring"), Some(lc));
        assert_eq!(join("", "tags"), "tags");
        assert_eq!(join("tags", "ring"), "tags.ring");
    }
}
