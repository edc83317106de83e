//! The git source against a real repository served by `git daemon` on loopback: new
//! commits, a force-push, a broken file, a deleted file, and the webhook of a running
//! `ringmaster run --git`.

use ringmaster::sources::Catalog;
use ringmaster::sources::git::GitSource;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn rollout(name: &str, value: u32) -> String {
    format!(
        "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRollout\nmetadata: {{name: {name}, namespace: fleet}}\nspec:\n  target: \"*\"\n  priority: 5\n  content:\n    device:\n      properties.desired.x: {{value: {value}}}\n  rings:\n    - {{name: all, target: \"*\"}}\n  baseline: \"off\"\n"
    )
}

/// A bare "origin" served by `git daemon`, and a work clone that pushes to it.
struct Repo {
    _dir: tempfile::TempDir,
    work: PathBuf,
    url: String,
    daemon: Child,
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("served");
        std::fs::create_dir(&base).unwrap();
        git(&base, &["init", "--bare", "-q", "origin.git"]);
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q"]);
        git(&work, &["remote", "add", "origin", base.join("origin.git").to_str().unwrap()]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let daemon = Command::new("git")
            .args(["daemon", "--export-all", "--reuseaddr", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(&base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts (apt package git)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "git daemon did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Repo { url: format!("git://127.0.0.1:{port}/origin.git"), work, daemon, _dir: dir }
    }

    /// Writes (or with `None` removes) files, commits and pushes; returns the commit id.
    fn commit(&self, files: &[(&str, Option<&str>)], force: bool) -> String {
        for (path, text) in files {
            let p = self.work.join(path);
            match text {
                Some(t) => {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(&p, t).unwrap();
                }
                None => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "--allow-empty", "-m", "change"]);
        git(&self.work, &["push", "-q", if force { "--force" } else { "--no-force" }, "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

#[test]
fn fetches_follow_commits_force_pushes_broken_and_deleted_files() {
    let repo = Repo::new();
    let cache = tempfile::tempdir().unwrap();
    let source = GitSource { url: repo.url.clone(), branch: "main".into(), path: Some("rollouts".into()), cache: cache.path().join("cache.git"), ..Default::default() };
    let mut catalog = Catalog::default();

    let c1 = repo.commit(&[("rollouts/a.yaml", Some(&rollout("a", 1))), ("rollouts/b.yaml", Some(&rollout("b", 1))), ("README.yaml", Some("not: read"))], false);
    let snap = source.fetch().unwrap();
    assert_eq!(snap.revision.as_deref(), Some(c1.as_str()), "the commit id is reported");
    assert_eq!(snap.files.keys().collect::<Vec<_>>(), ["a.yaml", "b.yaml"], "only --path is read");
    catalog.apply(&snap);
    assert_eq!(catalog.rollouts().0.len(), 2);

    // A broken file: its last good version stays.
    let c2 = repo.commit(&[("rollouts/a.yaml", Some("kind: DeviceRollout\nspec: ["))], false);
    let snap = source.fetch().unwrap();
    assert_eq!(snap.revision.as_deref(), Some(c2.as_str()));
    let ch = catalog.apply(&snap);
    assert_eq!(ch.failed.len(), 1);
    assert!(ch.failed[0].1[0].contains("a.yaml"), "{:?}", ch.failed);
    let (rollouts, _) = catalog.rollouts();
    assert!(rollouts.contains_key(&("fleet".into(), "a".into())), "the last good version of a.yaml stays");

    // A force-push that rewrites history: followed like any commit.
    git(&repo.work, &["reset", "-q", "--hard", &c1]);
    let c3 = repo.commit(&[("rollouts/a.yaml", Some(&rollout("a", 3)))], true);
    let snap = source.fetch().unwrap();
    assert_eq!(snap.revision.as_deref(), Some(c3.as_str()), "the force-pushed commit");
    let ch = catalog.apply(&snap);
    assert_eq!(ch.updated, ["a.yaml"]);

    // A deleted file takes its rollout with it.
    repo.commit(&[("rollouts/b.yaml", None)], false);
    let ch = catalog.apply(&source.fetch().unwrap());
    assert_eq!(ch.removed, ["b.yaml"]);
    let (rollouts, _) = catalog.rollouts();
    assert_eq!(rollouts.keys().map(|k| k.1.as_str()).collect::<Vec<_>>(), ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_makes_run_fetch_at_once() {
    let repo = Repo::new();
    let c1 = repo.commit(&[("a.yaml", Some(&rollout("a", 1)))], false);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--interval", "1h", "--git", &repo.url, "--branch", "main"])
        .arg("--git-cache")
        .arg(dir.path().join("cache.git"))
        .arg("--state")
        .arg(dir.path().join("state.db"))
        .args(["--webhook-secret-env", "TEST_WEBHOOK_SECRET"])
        .env("TEST_WEBHOOK_SECRET", "hook-secret")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let api = line.trim().strip_prefix("ringmaster api listening on ").expect("the API address").to_string();
    let http = reqwest::Client::new();
    let revision = async || -> Option<(String, usize)> {
        let body: serde_json::Value = http.get(format!("{api}/api/v1/rollouts")).send().await.ok()?.json().await.ok()?;
        Some((body["sourceRevision"].as_str()?.to_string(), body["items"].as_array()?.len()))
    };
    let start = Instant::now();
    while revision().await.is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "the first fetch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let c2 = repo.commit(&[("b.yaml", Some(&rollout("b", 1)))], false);
    let body = br#"{"ref":"refs/heads/main"}"#;
    let bad = http.post(format!("{api}/webhook/git")).header("X-Hub-Signature-256", "sha256=00").body(&body[..]).send().await.unwrap();
    assert_eq!(bad.status(), 401, "a wrong signature is refused");
    let ok = http
        .post(format!("{api}/webhook/git"))
        .header("X-Hub-Signature-256", ringmaster::api::webhook_signature(b"hook-secret", body))
        .body(&body[..])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    let start = Instant::now();
    loop {
        if revision().await == Some((c2.clone(), 2)) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the webhook's fetch (the poll interval is an hour)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each rollout carries the commit its spec was read at.
    let body: serde_json::Value = http.get(format!("{api}/api/v1/rollouts")).send().await.unwrap().json().await.unwrap();
    let at = |name: &str| body["items"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()["sourceRevision"].as_str().unwrap().to_string();
    assert_eq!((at("a"), at("b")), (c1, c2.clone()));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_file_url_is_fetched_too() {
    let repo = Repo::new();
    let c1 = repo.commit(&[("a.yaml", Some(&rollout("a", 1)))], false);
    let origin = repo.url.rsplit_once('/').map(|(_, name)| name).unwrap();
    let served = repo.work.parent().unwrap().join("served").join(origin);
    let cache = tempfile::tempdir().unwrap();
    let source = GitSource { url: format!("file://{}", served.display()), branch: "main".into(), path: None, cache: cache.path().join("c.git"), ..Default::default() };
    let snap = source.fetch().unwrap();
    assert_eq!(snap.revision, Some(c1));
    assert_eq!(snap.files.keys().collect::<Vec<_>>(), ["a.yaml"]);
}
