//! Sources of manifests for `ringmaster run`: a directory ([`dir`]) and a git repository
//! ([`git`]).
//!
//! Every source produces the same thing, a [`Snapshot`]: the YAML files it holds (path
//! relative to the source root → bytes) and, for git, the commit they were read at. The
//! [`Catalog`] turns successive snapshots into the documents to reconcile, file by file:
//!
//! - a file whose content hash did not change is not parsed again;
//! - a file that fails to read, parse or validate keeps the documents of its **last good
//!   version** (and carries its errors, for the log and the status): a source that became
//!   unreadable never deletes anything from a hub;
//! - a file that is gone takes its documents with it: its rollouts are deleted (through
//!   the driver's deletion semantics, which refuse to strip devices without a baseline).
//! - but a snapshot without any rollout, where the catalog has some, is refused as a whole
//!   (unless `run --allow-empty`): an emptied or unmounted folder, or a commit that leaves
//!   `--path` without rollout files, would otherwise delete every rollout. The files that
//!   lost their rollouts carry the error, and [`Changes::emptied`] says so, for the metric.
//!
//! The catalog is seeded from the state store on start, so the last good version of a
//! broken file survives a restart too.

pub mod dir;
pub mod git;

use crate::manifest::{Document, ManifestError, load_manifests};
use crate::resources::{DeviceRings, DeviceRollout, Hub};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The namespace of a document without one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What a source holds at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Path relative to the source root (with `/`) → content. Only `*.yaml` / `*.yml`.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The commit the files were read at (git), if any.
    pub revision: Option<String>,
}

/// `namespace/name` of a resource.
pub type Key = (String, String);

/// The key of a rollout (namespace defaults to `default`).
pub fn rollout_key(ro: &DeviceRollout) -> Key {
    (
        ro.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        ro.metadata.name.clone().unwrap_or_default(),
    )
}

/// The key of a hub (namespace defaults to `default`).
pub fn hub_key(hub: &Hub) -> Key {
    (
        hub.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        hub.metadata.name.clone().unwrap_or_default(),
    )
}

/// Hex SHA-256 of a file's content.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One file as the catalog knows it.
#[derive(Clone, Debug, Default)]
pub struct FileState {
    /// Hash of the content last seen.
    pub hash: String,
    /// The last good version: its text and documents.
    pub good: Option<(String, Vec<Document>)>,
    /// Problems of the content last seen (empty when it was good).
    pub errors: Vec<String>,
}

/// What a snapshot changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// Files new or changed, read and good.
    pub updated: Vec<String>,
    /// Files new or changed that failed: path → problems. Their last good version stays.
    pub failed: Vec<(String, Vec<String>)>,
    /// Files gone.
    pub removed: Vec<String>,
    /// The snapshot was refused as a whole: it holds no rollout where the catalog had some
    /// (see [`Catalog::allow_empty`]). Set on every refused snapshot, so that each such
    /// read can be counted; the files that lost their rollouts are in `failed` the first
    /// time.
    pub emptied: bool,
}

impl Changes {
    /// True when nothing changed (a refused snapshot changes nothing either).
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.failed.is_empty() && self.removed.is_empty()
    }
}

/// Why an emptied source changes nothing, on each file that lost its rollouts.
fn emptied_error(path: &str, gone: bool) -> String {
    let what = if gone {
        "is gone"
    } else {
        "holds no DeviceRollout now"
    };
    format!(
        "{path} {what}, and with it the last rollout of the source: nothing is deleted while \
         the source holds no rollout (an emptied or unmounted folder, or a commit without \
         rollout files, looks just like that); put the rollout files back, or run with \
         --allow-empty to delete every rollout"
    )
}

/// A file of a snapshot that changed: path, content hash, and its text and documents or
/// its problems.
type Read = (String, String, Result<(String, Vec<Document>), Vec<String>>);

/// Whether documents hold a rollout.
fn has_rollout(docs: &[Document]) -> bool {
    docs.iter().any(|d| matches!(d, Document::DeviceRollout(_)))
}

/// The documents of a source, file by file, with the last good version of each.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    files: BTreeMap<String, FileState>,
    allow_empty: bool,
}

impl Catalog {
    /// A catalog seeded with last good versions (path → text) from the state store. The
    /// hashes are empty, so the first snapshot compares every file again.
    pub fn restore(good: impl IntoIterator<Item = (String, String)>) -> Catalog {
        let mut files = BTreeMap::new();
        for (path, text) in good {
            if let Ok(docs) = load_manifests(&path, &text) {
                files.insert(
                    path,
                    FileState {
                        hash: String::new(),
                        good: Some((text, docs)),
                        errors: Vec::new(),
                    },
                );
            }
        }
        Catalog {
            files,
            allow_empty: false,
        }
    }

    /// Whether a snapshot without any rollout may replace a catalog that has some
    /// (`run --allow-empty`, after Argo CD's `allowEmpty`). By default it may not: an
    /// emptied or unmounted folder, or a commit that leaves `--path` without rollout files,
    /// would delete every rollout; such a snapshot changes nothing and the files that lost
    /// their rollouts carry the error instead.
    pub fn allow_empty(mut self, allow: bool) -> Catalog {
        self.allow_empty = allow;
        self
    }

    /// Whether a good version holds a rollout.
    fn has_rollouts(&self) -> bool {
        self.files
            .values()
            .any(|f| f.good.as_ref().is_some_and(|(_, d)| has_rollout(d)))
    }

    /// Takes a new snapshot in: parses what changed, keeps last good versions of broken
    /// files, forgets files that are gone. A snapshot that would leave no rollout where
    /// there were some is refused (unless [`Catalog::allow_empty`]): see [`Changes::emptied`].
    pub fn apply(&mut self, snap: &Snapshot) -> Changes {
        // First read what changed, without touching the catalog.
        let mut read: Vec<Read> = Vec::new();
        for (path, bytes) in &snap.files {
            let hash = content_hash(bytes);
            if self.files.get(path).is_some_and(|f| f.hash == hash) {
                continue;
            }
            let parsed = match std::str::from_utf8(bytes) {
                Ok(text) => load_manifests(path, text)
                    .map(|docs| (text.to_string(), docs))
                    .map_err(|errs| errs.iter().map(ManifestError::to_string).collect()),
                Err(e) => Err(vec![format!("{path}: not UTF-8 text: {e}")]),
            };
            read.push((path.clone(), hash, parsed));
        }
        if !self.allow_empty && self.has_rollouts() && !self.keeps_a_rollout(snap, &read) {
            return self.refuse_emptied(snap);
        }
        let mut changes = Changes::default();
        let gone: Vec<String> = self
            .files
            .keys()
            .filter(|p| !snap.files.contains_key(*p))
            .cloned()
            .collect();
        for p in gone {
            self.files.remove(&p);
            changes.removed.push(p);
        }
        for (path, hash, parsed) in read {
            let entry = self.files.entry(path.clone()).or_default();
            entry.hash = hash;
            match parsed {
                Ok((text, docs)) => {
                    if entry.good.as_ref().is_some_and(|(t, _)| *t == text)
                        && entry.errors.is_empty()
                    {
                        continue; // restored from the store with the same text
                    }
                    entry.good = Some((text, docs));
                    entry.errors.clear();
                    changes.updated.push(path);
                }
                Err(errors) => {
                    entry.errors = errors.clone();
                    changes.failed.push((path, errors));
                }
            }
        }
        changes
    }

    /// Whether the catalog would hold a rollout after taking `snap` in (`read`: the files
    /// of `snap` that changed, parsed).
    fn keeps_a_rollout(&self, snap: &Snapshot, read: &[Read]) -> bool {
        let changed: BTreeMap<&str, _> = read.iter().map(|(p, _, r)| (p.as_str(), r)).collect();
        snap.files.keys().any(|path| {
            let kept = self.files.get(path).and_then(|f| f.good.as_ref());
            match changed.get(path.as_str()) {
                Some(Ok((_, docs))) => has_rollout(docs),
                // A broken or unchanged file keeps its last good version.
                Some(Err(_)) | None => kept.is_some_and(|(_, d)| has_rollout(d)),
            }
        })
    }

    /// Refuses an emptied snapshot: nothing changes but the errors of the files that had
    /// rollouts. Their hashes are forgotten, so that each comes back (and is read again)
    /// as soon as the source holds it again.
    fn refuse_emptied(&mut self, snap: &Snapshot) -> Changes {
        let mut changes = Changes {
            emptied: true,
            ..Default::default()
        };
        for (path, f) in &mut self.files {
            if !f.good.as_ref().is_some_and(|(_, d)| has_rollout(d)) {
                continue;
            }
            f.hash.clear();
            let errors = vec![emptied_error(path, !snap.files.contains_key(path))];
            if f.errors != errors {
                f.errors = errors.clone();
                changes.failed.push((path.clone(), errors));
            }
        }
        changes
    }

    /// Every file with its state.
    pub fn files(&self) -> &BTreeMap<String, FileState> {
        &self.files
    }

    /// The rollouts of the good versions, each with the file it came from. A rollout
    /// defined in two files is taken from the first (by path); the second is reported.
    pub fn rollouts(&self) -> (BTreeMap<Key, (String, DeviceRollout)>, Vec<String>) {
        let mut out = BTreeMap::new();
        let mut duplicates = Vec::new();
        for (path, f) in &self.files {
            for doc in f.good.iter().flat_map(|(_, d)| d) {
                if let Document::DeviceRollout(ro) = doc {
                    let key = rollout_key(ro);
                    if let Some((first, _)) = out.get(&key) {
                        duplicates.push(format!("{path}: DeviceRollout {}/{} is already defined in {first}; this one is ignored", key.0, key.1));
                        continue;
                    }
                    let mut ro = (**ro).clone();
                    ro.metadata.namespace = Some(key.0.clone());
                    out.insert(key, (path.clone(), ro));
                }
            }
        }
        (out, duplicates)
    }

    /// The `DeviceRings` of the good versions, each with the file it came from (namespace
    /// defaulted). One defined in two files is taken from the first (by path); the second
    /// is reported.
    pub fn device_rings(&self) -> (BTreeMap<Key, (String, DeviceRings)>, Vec<String>) {
        let mut out = BTreeMap::new();
        let mut duplicates = Vec::new();
        for (path, f) in &self.files {
            for doc in f.good.iter().flat_map(|(_, d)| d) {
                if let Document::DeviceRings(r) = doc {
                    let key = (
                        r.metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
                        r.metadata.name.clone().unwrap_or_default(),
                    );
                    if let Some((first, _)) = out.get(&key) {
                        duplicates.push(format!("{path}: DeviceRings {}/{} is already defined in {first}; this one is ignored", key.0, key.1));
                        continue;
                    }
                    let mut r = (**r).clone();
                    r.metadata.namespace = Some(key.0.clone());
                    out.insert(key, (path.clone(), r));
                }
            }
        }
        (out, duplicates)
    }

    /// The hubs of the good versions.
    pub fn hubs(&self) -> BTreeMap<Key, Hub> {
        let mut out = BTreeMap::new();
        for f in self.files.values() {
            for doc in f.good.iter().flat_map(|(_, d)| d) {
                if let Document::Hub(h) = doc {
                    out.entry(hub_key(h)).or_insert_with(|| (**h).clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRollout\nmetadata: {name: a, namespace: fleet}\nspec:\n  target: \"*\"\n  priority: 5\n  content: {device: {properties.desired.x: 1}}\n  rings: [{name: all, target: \"*\"}]\n  baseline: \"off\"\n";

    fn snap(files: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            files: files
                .iter()
                .map(|(p, t)| (p.to_string(), t.as_bytes().to_vec()))
                .collect(),
            revision: None,
        }
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_version_and_a_removed_file_goes() {
        let mut c = Catalog::default();
        let ch = c.apply(&snap(&[("a.yaml", GOOD)]));
        assert_eq!(ch.updated, ["a.yaml"]);
        assert_eq!(c.rollouts().0.len(), 1);
        assert!(
            c.apply(&snap(&[("a.yaml", GOOD)])).is_empty(),
            "same content: nothing to do"
        );
        let ch = c.apply(&snap(&[("a.yaml", "kind: DeviceRollout\nspec: [")]));
        assert_eq!(ch.failed.len(), 1);
        assert_eq!(c.rollouts().0.len(), 1, "the last good version stays");
        // The last rollout file gone: only with --allow-empty (see the next test).
        let mut c = c.allow_empty(true);
        let ch = c.apply(&snap(&[]));
        assert_eq!(ch.removed, ["a.yaml"]);
        assert!(c.rollouts().0.is_empty());
    }

    #[test]
    fn a_restored_catalog_keeps_the_good_version_of_a_file_broken_since() {
        let mut c = Catalog::restore([("a.yaml".to_string(), GOOD.to_string())]);
        let ch = c.apply(&snap(&[("a.yaml", GOOD)]));
        assert!(ch.updated.is_empty());
        c.apply(&snap(&[("a.yaml", "{")]));
        assert_eq!(c.rollouts().0.len(), 1);
    }

    const HUB: &str = "apiVersion: ringmaster.dev/v1alpha1\nkind: Hub\nmetadata: {name: h, namespace: fleet}\nspec: {type: embedded}\n";

    #[test]
    fn a_snapshot_without_rollouts_is_refused_unless_allowed() {
        let b = GOOD.replace("name: a,", "name: b,");
        let mut c = Catalog::default();
        c.apply(&snap(&[
            ("a.yaml", GOOD),
            ("b.yaml", &b),
            ("hub.yaml", HUB),
        ]));
        // Some files gone: those rollouts go.
        let ch = c.apply(&snap(&[("a.yaml", GOOD), ("hub.yaml", HUB)]));
        assert_eq!(ch.removed, ["b.yaml"]);
        assert!(!ch.emptied);
        // The last one gone: refused, said once, counted each time.
        let ch = c.apply(&snap(&[("hub.yaml", HUB)]));
        assert!(ch.emptied && ch.removed.is_empty(), "{ch:?}");
        assert_eq!(ch.failed.len(), 1);
        assert!(ch.failed[0].1[0].contains("--allow-empty"), "{ch:?}");
        assert_eq!(c.rollouts().0.len(), 1);
        let ch = c.apply(&snap(&[("hub.yaml", HUB)]));
        assert!(ch.emptied && ch.is_empty(), "{ch:?}");
        // Back: read again, the error goes.
        let ch = c.apply(&snap(&[("a.yaml", GOOD), ("hub.yaml", HUB)]));
        assert_eq!(ch.updated, ["a.yaml"]);
        assert!(c.files()["a.yaml"].errors.is_empty());
        // A broken file keeps its rollouts: the rest may go.
        let ch = c.apply(&snap(&[("a.yaml", "{")]));
        assert!(!ch.emptied && ch.removed == ["hub.yaml"], "{ch:?}");
        // Allowed: the source may empty.
        let mut c = c.allow_empty(true);
        let ch = c.apply(&snap(&[]));
        assert!(!ch.emptied && ch.removed == ["a.yaml"], "{ch:?}");
        assert!(c.rollouts().0.is_empty());
        // With nothing to lose, an empty source is no error.
        let mut c = Catalog::default();
        assert!(!c.apply(&snap(&[("hub.yaml", HUB)])).emptied);
        assert!(!c.apply(&snap(&[])).emptied);
    }
}
