//! The directory source: every YAML file under a directory, re-read on change.
//!
//! File system events (notify, debounced) are only a **hint** to rescan soon; a rescan
//! reads every file and the [`Catalog`](super::Catalog) diffs them by content hash. A
//! periodic rescan is the backstop for events that never come (network and overlay
//! filesystems drop them; a Kubernetes ConfigMap mount swaps a `..data` symlink, which is
//! why hidden entries are skipped and symlinks followed). Rename and delete need no special
//! case: the next scan simply sees the new set of files.

use super::Snapshot;
use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long events are gathered before a rescan is hinted.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Reads every `*.yaml` / `*.yml` under `root` (hidden entries skipped). An error reading
/// the directory or any file fails the whole scan: a partial view would look like deleted
/// files, and nothing may be deleted because a source could not be read.
pub fn scan(root: &Path) -> std::io::Result<Snapshot> {
    let mut snap = Snapshot::default();
    for path in crate::cli::yaml_files(root)? {
        let bytes = std::fs::read(&path)?;
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let rel = if rel.as_os_str().is_empty() { path.file_name().map(PathBuf::from).unwrap_or_default() } else { rel.to_path_buf() };
        let rel = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/");
        snap.files.insert(rel, bytes);
    }
    Ok(snap)
}

/// Watches a directory and sends a hint on every batch of events. Dropping it stops the
/// watch.
pub struct DirWatcher {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

impl DirWatcher {
    /// Starts watching `root` recursively; `hint` receives `()` after each debounced batch.
    pub fn start(root: &Path, hint: mpsc::Sender<()>) -> notify::Result<DirWatcher> {
        let mut debouncer = new_debouncer(DEBOUNCE, None, move |res: DebounceEventResult| {
            // Errors are hints too: a rescan will find out what happened.
            let _ = res;
            let _ = hint.try_send(());
        })?;
        debouncer.watch(root, RecursiveMode::Recursive)?;
        Ok(DirWatcher { _debouncer: debouncer })
    }
}
