//! The directory source: every YAML file under a directory, re-read on change.
//!
//! File system events (notify, debounced) are only a **hint** to rescan soon; a rescan
//! reads every file and the [`Catalog`](super::Catalog) diffs them by content hash. A
//! periodic rescan is the backstop for events that never come (network and overlay
//! filesystems drop them; a Kubernetes ConfigMap mount swaps a `..data` symlink, which is
//! why hidden entries are skipped and symlinks followed). Rename and delete need no special
//! case: the next scan simply sees the new set of files. A link loop, a dangling link or a
//! tree too deep or too large fails the scan ([`crate::manifest::yaml_files`]), and a failed
//! scan changes nothing.

use super::Snapshot;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long events are gathered before a rescan is hinted.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Reads every `*.yaml` / `*.yml` under `root` (hidden entries skipped, links followed:
/// see [`yaml_files`](crate::manifest::yaml_files)). An error reading the directory or any
/// file fails the whole scan, and so does a link loop, a dangling link, or a tree too deep
/// or too large: a partial view would look like deleted files, and nothing may be deleted
/// because a source could not be read.
pub fn scan(root: &Path) -> std::io::Result<Snapshot> {
    let mut snap = Snapshot::default();
    for path in crate::manifest::yaml_files(root)? {
        let bytes = std::fs::read(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let rel = if rel.as_os_str().is_empty() {
            path.file_name().map(PathBuf::from).unwrap_or_default()
        } else {
            rel.to_path_buf()
        };
        let rel = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
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
            // Errors are hints too: a rescan will find out what happened. Reads are not:
            // the scan opens every file, and taking its own opens and closes for changes
            // would rescan forever.
            let changed = match &res {
                Ok(events) => events
                    .iter()
                    .any(|e| !matches!(e.event.kind, EventKind::Access(_))),
                Err(_) => true,
            };
            if changed {
                let _ = hint.try_send(());
            }
        })?;
        debouncer.watch(root, RecursiveMode::Recursive)?;
        Ok(DirWatcher {
            _debouncer: debouncer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn hinted(rx: &mut mpsc::Receiver<()>, within: Duration) -> bool {
        tokio::time::timeout(within, rx.recv()).await.is_ok()
    }

    #[tokio::test]
    async fn a_write_hints_and_a_scan_does_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "kind: Hub\n").unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let _w = DirWatcher::start(dir.path(), tx).unwrap();
        // Reading every file (what a rescan does) is not a change: no hint, so no loop.
        for _ in 0..3 {
            let snap = scan(dir.path()).unwrap();
            assert_eq!(snap.files.len(), 1);
        }
        assert!(
            !hinted(&mut rx, DEBOUNCE * 5).await,
            "a scan's own reads hinted a rescan"
        );
        // A write, a rename and a delete each do.
        std::fs::write(dir.path().join("b.yaml"), "kind: Hub\n").unwrap();
        assert!(
            hinted(&mut rx, Duration::from_secs(10)).await,
            "a new file gave no hint"
        );
        std::fs::rename(dir.path().join("b.yaml"), dir.path().join("c.yaml")).unwrap();
        assert!(
            hinted(&mut rx, Duration::from_secs(10)).await,
            "a rename gave no hint"
        );
        std::fs::remove_file(dir.path().join("c.yaml")).unwrap();
        assert!(
            hinted(&mut rx, Duration::from_secs(10)).await,
            "a delete gave no hint"
        );
    }
}
