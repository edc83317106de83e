//! The directory source and the controller loop, in process: real files written,
//! renamed, broken and deleted, reconciled against an in-process embedded hub.

use ringmaster::clock::SystemClock;
use ringmaster::hub::EmbeddedHub;
use ringmaster::run::api::ApiState;
use ringmaster::run::sources::Catalog;
use ringmaster::run::sources::dir::{DirWatcher, scan};
use ringmaster::run::store::StateStore;
use ringmaster::run::{Controller, HubAccess};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");

fn rollout(name: &str, value: u32) -> String {
    format!(
        "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRollout\nmetadata: {{name: {name}, namespace: fleet}}\nspec:\n  target: \"*\"\n  priority: 5\n  content:\n    device:\n      properties.desired.x: {{value: {value}}}\n  rings:\n    - {{name: all, target: \"*\"}}\n  baseline: \"off\"\n"
    )
}

/// The configurations of the hub that belong to `fleet/<name>`.
fn configs(hub: &EmbeddedHub, name: &str) -> Vec<String> {
    hub.list_configurations()
        .into_iter()
        .filter(|c| c.id.starts_with(&format!("fleet_{name}_")))
        .map(|c| c.id)
        .collect()
}

struct Setup {
    ctl: Controller,
    hub: EmbeddedHub,
    store: StateStore,
    api: Arc<ApiState>,
}

fn setup(store: StateStore) -> Setup {
    setup_with(store, Catalog::restore)
}

/// A setup whose catalog is made from the store's good files by `catalog`.
fn setup_with(store: StateStore, catalog: impl FnOnce(Vec<(String, String)>) -> Catalog) -> Setup {
    let hub = EmbeddedHub::in_memory(Arc::new(SystemClock));
    let api = Arc::new(ApiState::new(store.clone()));
    let good = store.good_files().unwrap();
    let ctl = Controller::new(
        api.clone(),
        catalog(good),
        hub.clone(),
        HubAccess::default(),
    );
    Setup {
        ctl,
        hub,
        store,
        api,
    }
}

/// The value of `ringmaster_source_errors_total`.
fn source_errors(api: &ApiState) -> u64 {
    api.metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix("ringmaster_source_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A rollout that reaches no device and stays in the directory: deleting the other files
/// is then a partial deletion (a source left without any rollout changes nothing unless
/// `--allow-empty`).
fn bystander() -> String {
    rollout("bystander", 1).replace("target: \"*\"", "target: \"tags.bystander='yes'\"")
}

const OTHER_HUB: &str = "apiVersion: ringmaster.dev/v1alpha1\nkind: Hub\nmetadata: {name: other, namespace: fleet}\nspec: {type: embedded}\n";

async fn pass(s: &mut Setup, root: &Path) {
    let snap = scan(root).unwrap();
    s.ctl.ingest(&snap).await.unwrap();
    s.ctl.reconcile_due().await.unwrap();
    // A second look, as the requeue would bring (deletions finalize on it).
    s.ctl.reconcile_all_now();
    s.ctl.reconcile_due().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_edited_broken_renamed_and_deleted_drives_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut s = setup(StateStore::in_memory().unwrap());
    std::fs::write(root.join("zz-bystander.yaml"), bystander()).unwrap();

    std::fs::write(root.join("a.yaml"), rollout("a", 1)).unwrap();
    pass(&mut s, root).await;
    let first = configs(&s.hub, "a");
    assert_eq!(first.len(), 1, "the rollout's first revision is on the hub");
    let stored = s.store.rollout("fleet", "a").unwrap().unwrap();
    assert_eq!(stored.source, "a.yaml");
    assert!(stored.status.revision.is_some());

    // An edit of the content: a new revision supersedes the unfinished one.
    std::fs::write(root.join("a.yaml"), rollout("a", 2)).unwrap();
    pass(&mut s, root).await;
    let second = configs(&s.hub, "a");
    assert_eq!(second.len(), 1);
    assert_ne!(first, second, "a new revision, a new configuration");

    // A broken file: the last good version stays, the problem is recorded.
    std::fs::write(root.join("a.yaml"), "kind: DeviceRollout\nspec: [oops").unwrap();
    pass(&mut s, root).await;
    assert_eq!(
        configs(&s.hub, "a"),
        second,
        "nothing deleted because a file broke"
    );
    let stored = s.store.rollout("fleet", "a").unwrap().unwrap();
    assert!(
        stored.error.as_deref().unwrap_or("").contains("a.yaml"),
        "{:?}",
        stored.error
    );
    assert!(s.store.file_errors().unwrap()[0].1.is_some());

    // Fixed again, then renamed: the same rollout, from another file.
    std::fs::write(root.join("a.yaml"), rollout("a", 2)).unwrap();
    pass(&mut s, root).await;
    std::fs::rename(root.join("a.yaml"), root.join("renamed.yaml")).unwrap();
    pass(&mut s, root).await;
    assert_eq!(
        configs(&s.hub, "a"),
        second,
        "a rename changes nothing on the hub"
    );
    let stored = s.store.rollout("fleet", "a").unwrap().unwrap();
    assert_eq!(stored.source, "renamed.yaml");
    assert!(!stored.deleting && stored.error.is_none());

    // Deleted: the rollout is deleted (no device loses anything: the hub has none).
    std::fs::remove_file(root.join("renamed.yaml")).unwrap();
    pass(&mut s, root).await;
    assert!(
        configs(&s.hub, "a").is_empty(),
        "the deleted rollout's configuration is gone"
    );
    assert!(s.store.rollout("fleet", "a").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_keeps_what_devices_need_unless_its_last_good_version_says_force_delete() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut s = setup(StateStore::in_memory().unwrap());
    s.hub
        .create_device(ringmaster::iothub::device::Device::new("d1"))
        .unwrap();
    std::fs::write(root.join("zz-bystander.yaml"), bystander()).unwrap();
    std::fs::write(root.join("kept.yaml"), rollout("kept", 1)).unwrap();
    std::fs::write(root.join("forced.yaml"), rollout("forced", 1)).unwrap();
    pass(&mut s, root).await;
    s.hub.run_cycle().unwrap();
    assert_eq!(configs(&s.hub, "kept").len(), 1);
    assert_eq!(configs(&s.hub, "forced").len(), 1);

    // The annotation lands first (a commit, a save), then the file goes.
    let annotated = rollout("forced", 1).replace(
        "namespace: fleet}",
        "namespace: fleet, annotations: {ringmaster.dev/force-delete: \"true\"}}",
    );
    std::fs::write(root.join("forced.yaml"), annotated).unwrap();
    pass(&mut s, root).await;
    assert_eq!(
        configs(&s.hub, "forced").len(),
        1,
        "an annotation alone deletes nothing"
    );
    std::fs::remove_file(root.join("kept.yaml")).unwrap();
    std::fs::remove_file(root.join("forced.yaml")).unwrap();
    pass(&mut s, root).await;

    // d1 has no other configuration to fall back to: without the annotation the rollout
    // stays, blocked and saying why; with it the configuration goes and the rollout too.
    assert_eq!(
        configs(&s.hub, "kept").len(),
        1,
        "no device is stripped silently"
    );
    let kept = s.store.rollout("fleet", "kept").unwrap().unwrap();
    assert!(kept.deleting);
    let stalled = kept
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap();
    assert_eq!(stalled.reason, "CleanupBlocked", "{stalled:?}");
    assert!(
        configs(&s.hub, "forced").is_empty(),
        "force-delete removes the configuration"
    );
    assert!(s.store.rollout("fleet", "forced").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_broken_while_the_controller_was_down_keeps_its_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    std::fs::create_dir(&root).unwrap();
    let db = dir.path().join("state.db");
    let mut s = setup(StateStore::open(&db).unwrap());
    std::fs::write(root.join("a.yaml"), rollout("a", 1)).unwrap();
    pass(&mut s, &root).await;
    let before = configs(&s.hub, "a");
    assert_eq!(before.len(), 1);

    // Down: the file breaks. A new controller on the same store (and the same hub, as a
    // served hub would be) starts from the last good version.
    std::fs::write(root.join("a.yaml"), "{").unwrap();
    let store = StateStore::open(&db).unwrap();
    let api = Arc::new(ApiState::new(store.clone()));
    let ctl = Controller::new(
        api,
        Catalog::restore(store.good_files().unwrap()),
        s.hub.clone(),
        HubAccess::default(),
    );
    let mut s2 = Setup {
        ctl,
        hub: s.hub.clone(),
        store,
        api: s.api.clone(),
    };
    pass(&mut s2, &root).await;
    assert_eq!(
        configs(&s2.hub, "a"),
        before,
        "the last good version survived the restart"
    );
    let stored = s2.store.rollout("fleet", "a").unwrap().unwrap();
    assert!(!stored.deleting);
    assert!(stored.error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_events_hint_a_rescan_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let _w = DirWatcher::start(dir.path(), tx).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    std::fs::write(dir.path().join("x.yaml"), rollout("x", 1)).unwrap();
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("an event within a second")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(scan(dir.path()).unwrap().files.len(), 1);
    std::fs::rename(dir.path().join("x.yaml"), dir.path().join("y.yaml")).unwrap();
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("an event for the rename")
        .unwrap();
    assert_eq!(
        scan(dir.path()).unwrap().files.keys().collect::<Vec<_>>(),
        ["y.yaml"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_every_rollout_file_out_deletes_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    let away = dir.path().join("away");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&away).unwrap();
    let db = dir.path().join("state.db");
    let mut s = setup(StateStore::open(&db).unwrap());
    std::fs::write(root.join("hub.yaml"), OTHER_HUB).unwrap();
    std::fs::write(root.join("a.yaml"), rollout("a", 1)).unwrap();
    std::fs::write(root.join("b.yaml"), rollout("b", 1)).unwrap();
    pass(&mut s, &root).await;
    let (a, b) = (configs(&s.hub, "a"), configs(&s.hub, "b"));
    assert_eq!((a.len(), b.len()), (1, 1));

    // Every rollout file moved out, the Hub file left: the source holds no rollout where
    // the last good read had two. Nothing is deleted; the files and rollouts say why.
    std::fs::rename(root.join("a.yaml"), away.join("a.yaml")).unwrap();
    std::fs::rename(root.join("b.yaml"), away.join("b.yaml")).unwrap();
    pass(&mut s, &root).await;
    pass(&mut s, &root).await;
    assert_eq!(
        (configs(&s.hub, "a"), configs(&s.hub, "b")),
        (a.clone(), b.clone())
    );
    for name in ["a", "b"] {
        let stored = s.store.rollout("fleet", name).unwrap().unwrap();
        assert!(!stored.deleting, "{name} is being deleted");
        let error = stored.error.unwrap_or_default();
        assert!(
            error.contains(&format!("{name}.yaml"))
                && error.contains("no rollout")
                && error.contains("--allow-empty"),
            "{name}: {error}"
        );
    }
    let files = s.store.file_errors().unwrap();
    assert!(
        files.iter().any(|(p, e)| p == "a.yaml" && e.is_some()),
        "{files:?}"
    );
    assert!(source_errors(&s.api) >= 1, "the refused read is counted");

    // A restart while the source is still empty changes nothing either.
    let store = StateStore::open(&db).unwrap();
    let api = Arc::new(ApiState::new(store.clone()));
    let ctl = Controller::new(
        api.clone(),
        Catalog::restore(store.good_files().unwrap()),
        s.hub.clone(),
        HubAccess::default(),
    );
    let mut s2 = Setup {
        ctl,
        hub: s.hub.clone(),
        store,
        api,
    };
    pass(&mut s2, &root).await;
    assert_eq!(
        (configs(&s2.hub, "a"), configs(&s2.hub, "b")),
        (a.clone(), b.clone())
    );
    assert!(!s2.store.rollout("fleet", "a").unwrap().unwrap().deleting);

    // The files come back: the errors go, nothing changed on the hub.
    std::fs::rename(away.join("a.yaml"), root.join("a.yaml")).unwrap();
    std::fs::rename(away.join("b.yaml"), root.join("b.yaml")).unwrap();
    pass(&mut s2, &root).await;
    for name in ["a", "b"] {
        let stored = s2.store.rollout("fleet", name).unwrap().unwrap();
        assert!(
            !stored.deleting && stored.error.is_none(),
            "{name}: {stored:?}"
        );
    }
    assert!(
        s2.store
            .file_errors()
            .unwrap()
            .iter()
            .all(|(_, e)| e.is_none())
    );
    assert_eq!((configs(&s2.hub, "a"), configs(&s2.hub, "b")), (a, b));

    // Deleting some of the files still deletes those rollouts, as documented.
    std::fs::remove_file(root.join("b.yaml")).unwrap();
    pass(&mut s2, &root).await;
    assert_eq!(configs(&s2.hub, "a").len(), 1);
    assert!(configs(&s2.hub, "b").is_empty());
    assert!(s2.store.rollout("fleet", "b").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_emptied_of_its_rollouts_is_refused_like_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut s = setup(StateStore::in_memory().unwrap());
    std::fs::write(
        root.join("all.yaml"),
        format!("{}---\n{}", rollout("a", 1), OTHER_HUB),
    )
    .unwrap();
    pass(&mut s, root).await;
    assert_eq!(configs(&s.hub, "a").len(), 1);
    // The same file, now with the Hub only.
    std::fs::write(root.join("all.yaml"), OTHER_HUB).unwrap();
    pass(&mut s, root).await;
    assert_eq!(configs(&s.hub, "a").len(), 1);
    let stored = s.store.rollout("fleet", "a").unwrap().unwrap();
    assert!(!stored.deleting);
    assert!(stored.error.unwrap_or_default().contains("--allow-empty"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_allow_empty_an_emptied_source_deletes_every_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut s = setup_with(StateStore::in_memory().unwrap(), |good| {
        Catalog::restore(good).allow_empty(true)
    });
    std::fs::write(root.join("hub.yaml"), OTHER_HUB).unwrap();
    std::fs::write(root.join("a.yaml"), rollout("a", 1)).unwrap();
    pass(&mut s, root).await;
    assert_eq!(configs(&s.hub, "a").len(), 1);
    std::fs::remove_file(root.join("a.yaml")).unwrap();
    pass(&mut s, root).await;
    assert!(configs(&s.hub, "a").is_empty());
    assert!(s.store.rollout("fleet", "a").unwrap().is_none());
    assert_eq!(source_errors(&s.api), 0);
}

/// Runs `ringmaster run --dir root`, returns the child and its API address.
fn run_dir(root: &Path, state: &Path, extra: &[&str]) -> (std::process::Child, String) {
    let mut child = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--rescan", "1h", "--dir"])
        .arg(root)
        .arg("--state")
        .arg(state)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let api = line
        .trim()
        .strip_prefix("ringmaster api listening on ")
        .expect("the API address")
        .to_string();
    (child, api)
}

/// Kills the child when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_dir_keeps_every_rollout_when_all_rollout_files_are_moved_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    let away = dir.path().join("away");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&away).unwrap();
    std::fs::write(root.join("hub.yaml"), OTHER_HUB).unwrap();
    std::fs::write(root.join("a.yaml"), rollout("a", 1)).unwrap();
    std::fs::write(root.join("b.yaml"), rollout("b", 1)).unwrap();
    let (child, api) = run_dir(&root, &dir.path().join("state.db"), &[]);
    let _child = Killed(child);
    let http = reqwest::Client::new();
    let list = format!("{api}/api/v1/rollouts");
    let applied = |body: &serde_json::Value| {
        body["items"].as_array().is_some_and(|items| {
            items.len() == 2 && items.iter().all(|r| r["status"]["revision"].is_string())
        })
    };
    let start = Instant::now();
    while !get_json(&http, &list).await.is_some_and(|b| applied(&b)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "both rollouts applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    std::fs::rename(root.join("a.yaml"), away.join("a.yaml")).unwrap();
    std::fs::rename(root.join("b.yaml"), away.join("b.yaml")).unwrap();
    // Wait for the controller to take the move in: either the refusal (what must happen)
    // or a deletion (what happened before).
    let start = Instant::now();
    let body = loop {
        let body = get_json(&http, &list).await.unwrap_or_default();
        let items = body["items"].as_array().cloned().unwrap_or_default();
        // The refusal shows on the files first, then on each rollout of those files.
        let refused = body["files"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["error"].is_string()))
            && items.iter().all(|r| {
                r["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("--allow-empty"))
            });
        let deleted = items.len() < 2 || items.iter().any(|r| r["deleting"] == true);
        if refused || deleted {
            break body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the move taken in: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{body}");
    for r in items {
        assert_eq!(r["deleting"], false, "{r}");
        let error = r["error"].as_str().unwrap_or("");
        assert!(error.contains("--allow-empty"), "{r}");
    }
    let metrics = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ringmaster_source_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(errors >= 1, "{metrics}");
}

#[test]
fn a_symlink_loop_fails_the_scan_with_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("src");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("a.yaml"), rollout("a", 1)).unwrap();
    std::os::unix::fs::symlink(".", root.join("loop1")).unwrap();
    std::os::unix::fs::symlink("..", root.join("loop2")).unwrap();
    // On a thread: the scan used to never end.
    let (tx, rx) = std::sync::mpsc::channel();
    let r = root.clone();
    std::thread::spawn(move || {
        let _ = tx.send(scan(&r).map_err(|e| e.to_string()));
    });
    let err = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the scan ends")
        .unwrap_err();
    assert!(err.contains("loop1") && err.contains("loop"), "{err}");

    // `..` alone: a link to a folder that holds the scanned one is a loop too.
    std::fs::remove_file(root.join("loop1")).unwrap();
    let err = scan(&root).unwrap_err().to_string();
    assert!(err.contains("loop2") && err.contains("loop"), "{err}");

    // `ringmaster validate` walks the same way.
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("loop2"), "{stderr}");
}

#[test]
fn a_dangling_symlink_fails_the_scan_and_a_hidden_one_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("a.yaml"), rollout("a", 1)).unwrap();
    // An editor's lock file (emacs writes `.#name` links to nowhere): hidden, skipped.
    std::os::unix::fs::symlink("user@host.123", root.join(".#a.yaml")).unwrap();
    assert_eq!(scan(root).unwrap().files.len(), 1);
    // A folder link whose target is gone (an unmounted volume): an error, not an empty
    // folder.
    std::os::unix::fs::symlink(dir.path().join("mnt/rollouts"), root.join("rollouts")).unwrap();
    let err = scan(root).unwrap_err().to_string();
    assert!(
        err.contains("rollouts") && err.contains("does not exist"),
        "{err}"
    );
    std::fs::remove_file(root.join("rollouts")).unwrap();
    // A file link likewise, named by the error.
    std::os::unix::fs::symlink("gone.yaml", root.join("b.yaml")).unwrap();
    let err = scan(root).unwrap_err().to_string();
    assert!(
        err.contains("b.yaml") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn a_configmap_mount_is_read_through_its_links() {
    // The layout the kubelet writes: `..<timestamp>/` holds the files, `..data` links to
    // it, and each visible name links into `..data`.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..2024_01_01")).unwrap();
    std::fs::write(root.join("..2024_01_01/a.yaml"), rollout("a", 1)).unwrap();
    std::os::unix::fs::symlink("..2024_01_01", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/a.yaml", root.join("a.yaml")).unwrap();
    let snap = scan(root).unwrap();
    assert_eq!(snap.files.keys().collect::<Vec<_>>(), ["a.yaml"]);
}
