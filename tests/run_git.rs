//! The git source against a real repository served by `git daemon` on loopback: new
//! commits, a force-push, a broken file, a deleted file, and the webhook of a running
//! `ringmaster run --git`. Token auth over smart HTTP against the real `git http-backend`
//! behind a loopback server that wants the token: the right token, a wrong one, none, and
//! a running `ringmaster run --git-token-file` whose token is refused for one fetch.

use ringmaster::run::sources::Catalog;
use ringmaster::run::sources::git::GitSource;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    daemon: Option<Child>,
}

impl Drop for Repo {
    fn drop(&mut self) {
        if let Some(d) = &mut self.daemon {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

impl Repo {
    /// Without a server: `served()` holds `origin.git`, to be served some other way.
    fn unserved() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("served");
        std::fs::create_dir(&base).unwrap();
        git(&base, &["init", "--bare", "-q", "origin.git"]);
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q"]);
        git(
            &work,
            &[
                "remote",
                "add",
                "origin",
                base.join("origin.git").to_str().unwrap(),
            ],
        );
        Repo {
            url: String::new(),
            work,
            daemon: None,
            _dir: dir,
        }
    }

    /// The folder that holds the bare `origin.git`.
    fn served(&self) -> PathBuf {
        self.work.parent().unwrap().join("served")
    }

    fn new() -> Repo {
        let mut repo = Repo::unserved();
        let base = repo.served();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let daemon = Command::new("git")
            .args([
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(&base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts (apt package git)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "git daemon did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        repo.url = format!("git://127.0.0.1:{port}/origin.git");
        repo.daemon = Some(daemon);
        repo
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
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", "change"],
        );
        git(
            &self.work,
            &[
                "push",
                "-q",
                if force { "--force" } else { "--no-force" },
                "origin",
                "HEAD:main",
            ],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

#[test]
fn fetches_follow_commits_force_pushes_broken_and_deleted_files() {
    let repo = Repo::new();
    let cache = tempfile::tempdir().unwrap();
    let source = GitSource {
        url: repo.url.clone(),
        branch: "main".into(),
        path: Some("rollouts".into()),
        cache: cache.path().join("cache.git"),
        ..Default::default()
    };
    let mut catalog = Catalog::default();

    let c1 = repo.commit(
        &[
            ("rollouts/a.yaml", Some(&rollout("a", 1))),
            ("rollouts/b.yaml", Some(&rollout("b", 1))),
            ("README.yaml", Some("not: read")),
        ],
        false,
    );
    let snap = source.fetch().unwrap();
    assert_eq!(
        snap.revision.as_deref(),
        Some(c1.as_str()),
        "the commit id is reported"
    );
    assert_eq!(
        snap.files.keys().collect::<Vec<_>>(),
        ["a.yaml", "b.yaml"],
        "only --path is read"
    );
    catalog.apply(&snap);
    assert_eq!(catalog.rollouts().0.len(), 2);

    // A broken file: its last good version stays.
    let c2 = repo.commit(
        &[("rollouts/a.yaml", Some("kind: DeviceRollout\nspec: ["))],
        false,
    );
    let snap = source.fetch().unwrap();
    assert_eq!(snap.revision.as_deref(), Some(c2.as_str()));
    let ch = catalog.apply(&snap);
    assert_eq!(ch.failed.len(), 1);
    assert!(ch.failed[0].1[0].contains("a.yaml"), "{:?}", ch.failed);
    let (rollouts, _) = catalog.rollouts();
    assert!(
        rollouts.contains_key(&("fleet".into(), "a".into())),
        "the last good version of a.yaml stays"
    );

    // A force-push that rewrites history: followed like any commit.
    git(&repo.work, &["reset", "-q", "--hard", &c1]);
    let c3 = repo.commit(&[("rollouts/a.yaml", Some(&rollout("a", 3)))], true);
    let snap = source.fetch().unwrap();
    assert_eq!(
        snap.revision.as_deref(),
        Some(c3.as_str()),
        "the force-pushed commit"
    );
    let ch = catalog.apply(&snap);
    assert_eq!(ch.updated, ["a.yaml"]);

    // A deleted file takes its rollout with it.
    repo.commit(&[("rollouts/b.yaml", None)], false);
    let ch = catalog.apply(&source.fetch().unwrap());
    assert_eq!(ch.removed, ["b.yaml"]);
    let (rollouts, _) = catalog.rollouts();
    assert_eq!(
        rollouts.keys().map(|k| k.1.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_makes_run_fetch_at_once() {
    let repo = Repo::new();
    let c1 = repo.commit(&[("a.yaml", Some(&rollout("a", 1)))], false);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "1h",
            "--git",
            &repo.url,
            "--branch",
            "main",
        ])
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
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let api = line
        .trim()
        .strip_prefix("ringmaster api listening on ")
        .expect("the API address")
        .to_string();
    let http = reqwest::Client::new();
    let revision = async || -> Option<(String, usize)> {
        let body: serde_json::Value = http
            .get(format!("{api}/api/v1/rollouts"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some((
            body["sourceRevision"].as_str()?.to_string(),
            body["items"].as_array()?.len(),
        ))
    };
    let start = Instant::now();
    while revision().await.is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "the first fetch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let c2 = repo.commit(&[("b.yaml", Some(&rollout("b", 1)))], false);
    let body = br#"{"ref":"refs/heads/main"}"#;
    let bad = http
        .post(format!("{api}/webhook/git"))
        .header("X-Hub-Signature-256", "sha256=00")
        .body(&body[..])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401, "a wrong signature is refused");
    post_signed_webhook(&http, &api).await;
    let start = Instant::now();
    loop {
        if revision().await == Some((c2.clone(), 2)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the webhook's fetch (the poll interval is an hour)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each rollout carries the commit its spec was read at.
    let body: serde_json::Value = http
        .get(format!("{api}/api/v1/rollouts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let at = |name: &str| {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["sourceRevision"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!((at("a"), at("b")), (c1, c2.clone()));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_file_url_is_fetched_too() {
    let repo = Repo::new();
    let c1 = repo.commit(&[("a.yaml", Some(&rollout("a", 1)))], false);
    let served = repo.served().join("origin.git");
    let cache = tempfile::tempdir().unwrap();
    let source = GitSource {
        url: format!("file://{}", served.display()),
        branch: "main".into(),
        path: None,
        cache: cache.path().join("c.git"),
        ..Default::default()
    };
    let snap = source.fetch().unwrap();
    assert_eq!(snap.revision, Some(c1));
    assert_eq!(snap.files.keys().collect::<Vec<_>>(), ["a.yaml"]);
}

// Token auth over smart HTTP, against the real `git http-backend` behind a server that
// wants the token.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::Response;
use base64::Engine;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "tok-3f9a2c1d-e2e-secret";

/// A request the HTTP server answered.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: Option<String>,
    status: u16,
}

#[derive(Clone)]
struct HttpState {
    root: PathBuf,
    backend: PathBuf,
    token: Arc<Mutex<String>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Smart HTTP for `served()/origin.git` on a loopback port chosen at run time: a request
/// without `Authorization: Basic base64("x-access-token:<token>")` gets 401 with a Basic
/// challenge, an authorised one goes to the `git http-backend` CGI. Its own thread and
/// runtime, so blocking tests (`GitSource::fetch`) and async ones use it alike.
struct HttpGit {
    url: String,
    state: HttpState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl HttpGit {
    fn start(served: &Path, token: &str) -> HttpGit {
        let exec = Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git runs");
        let backend =
            PathBuf::from(String::from_utf8(exec.stdout).unwrap().trim()).join("git-http-backend");
        assert!(
            backend.exists(),
            "{} (git's http-backend)",
            backend.display()
        );
        let state = HttpState {
            root: served.to_path_buf(),
            backend,
            token: Arc::new(Mutex::new(token.into())),
            seen: Default::default(),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/origin.git", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(serve_git)
            .with_state(state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    r = axum::serve(listener, app) => r.unwrap(),
                    _ = stopped => {}
                }
            });
        });
        HttpGit {
            url,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The token the server wants from now on.
    fn set_token(&self, token: &str) {
        *self.state.token.lock().unwrap() = token.into();
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

fn basic(token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
    )
}

async fn serve_git(State(st): State<HttpState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let want = basic(&st.token.lock().unwrap());
    let res = if authorization.as_deref() == Some(want.as_str()) {
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        cgi(&st, &parts, body).await
    } else {
        Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, r#"Basic realm="git""#)
            .body(Body::from("authentication required\n"))
            .unwrap()
    };
    st.seen.lock().unwrap().push(Seen {
        path: parts.uri.path().into(),
        authorization,
        status: res.status().as_u16(),
    });
    res
}

/// One request through `git http-backend` (CGI/1.1: the request in environment variables
/// and stdin, the response as headers, `Status:` included, a blank line and the body).
async fn cgi(st: &HttpState, parts: &Parts, body: Bytes) -> Response {
    let head = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut cmd = tokio::process::Command::new(&st.backend);
    cmd.env("GIT_PROJECT_ROOT", &st.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("CONTENT_TYPE", head("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, var) in [
        ("git-protocol", "HTTP_GIT_PROTOCOL"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
    ] {
        let v = head(name);
        if !v.is_empty() {
            cmd.env(var, v);
        }
    }
    let mut child = cmd.spawn().expect("git http-backend starts");
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.unwrap();
    let _ = writer.await;
    let stdout = out.stdout;
    let end = (0..stdout.len()).find_map(|i| {
        if stdout[i..].starts_with(b"\r\n\r\n") {
            Some((i, 4))
        } else if stdout[i..].starts_with(b"\n\n") {
            Some((i, 2))
        } else {
            None
        }
    });
    let Some((end, sep)) = end else {
        return Response::builder()
            .status(500)
            .body(Body::from(out.stderr))
            .unwrap();
    };
    let mut res = Response::builder().status(200);
    for line in String::from_utf8_lossy(&stdout[..end]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            res = res.status(
                value
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse::<u16>().ok())
                    .unwrap_or(500),
            );
        } else {
            res = res.header(name.trim(), value);
        }
    }
    res.body(Body::from(stdout[end + sep..].to_vec())).unwrap()
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if std::fs::read(&p)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                found.push(p);
            }
        }
    }
    found
}

/// Asserts that no file of the cache holds the token or the credentials, in any form.
fn assert_cache_clean(cache: &Path, token: &str) {
    let config = std::fs::read_to_string(cache.join("config")).unwrap();
    for bad in [token, "x-access-token", "@127.0.0.1"] {
        assert!(
            !config.contains(bad),
            "{bad:?} in the cache's config:\n{config}"
        );
    }
    for needle in [token.to_string(), basic(token)] {
        let found = files_containing(cache, &needle);
        assert!(found.is_empty(), "{needle:?} in {found:?}");
    }
}

#[test]
fn token_auth_over_smart_http_fetches_and_follows_commits() {
    let repo = Repo::unserved();
    let server = HttpGit::start(&repo.served(), TOKEN);
    let cache = tempfile::tempdir().unwrap();
    let source = GitSource {
        url: server.url.clone(),
        branch: "main".into(),
        path: Some("rollouts".into()),
        cache: cache.path().join("cache.git"),
        token: Some(TOKEN.into()),
        ..Default::default()
    };

    let c1 = repo.commit(&[("rollouts/a.yaml", Some(&rollout("a", 1)))], false);
    let snap = source.fetch().unwrap();
    assert_eq!(snap.revision.as_deref(), Some(c1.as_str()));
    assert_eq!(snap.files.keys().collect::<Vec<_>>(), ["a.yaml"]);
    let mut catalog = Catalog::default();
    catalog.apply(&snap);
    assert_eq!(catalog.rollouts().0.len(), 1);

    // The next fetch sees a new commit.
    let c2 = repo.commit(&[("rollouts/b.yaml", Some(&rollout("b", 1)))], false);
    let snap = source.fetch().unwrap();
    assert_eq!(snap.revision.as_deref(), Some(c2.as_str()));
    assert_eq!(catalog.apply(&snap).updated, ["b.yaml"]);

    // The server did challenge, and the packs came through the authorised backend.
    let seen = server.seen();
    assert!(
        seen.iter()
            .any(|s| s.authorization.is_none() && s.status == 401),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.path.ends_with("/git-upload-pack")
            && s.status == 200
            && s.authorization.as_deref() == Some(basic(TOKEN).as_str())),
        "{seen:?}"
    );
    assert_cache_clean(&cache.path().join("cache.git"), TOKEN);
    assert!(
        !format!("{source:?}").contains(TOKEN),
        "Debug hides the token: {source:?}"
    );
}

#[test]
fn a_wrong_or_missing_token_fails_once_with_a_clear_error_without_the_token() {
    let repo = Repo::unserved();
    let server = HttpGit::start(&repo.served(), TOKEN);
    let c1 = repo.commit(&[("a.yaml", Some(&rollout("a", 1)))], false);
    let cache = tempfile::tempdir().unwrap();
    let source = |token: Option<&str>| GitSource {
        url: server.url.clone(),
        branch: "main".into(),
        path: None,
        cache: cache.path().join("cache.git"),
        token: token.map(Into::into),
        ..Default::default()
    };
    let wrong = "wrong-token-71c4e9";
    for (token, says) in [(Some(wrong), "refused the token"), (None, "no token")] {
        let before = server.seen().len();
        let err = source(token).fetch().unwrap_err().to_string();
        assert!(err.contains(&server.url), "names the URL: {err}");
        assert!(
            err.contains("authentication failed") && err.contains(says),
            "{err}"
        );
        assert!(
            !err.contains(wrong) && !err.contains(TOKEN),
            "no token in the error: {err}"
        );
        // One challenge and at most one try with the token; libgit2 would otherwise replay
        // the refused token up to 15 times.
        let tries = server.seen()[before..].to_vec();
        assert!(
            !tries.is_empty() && tries.len() <= 2 && tries.iter().all(|s| s.status == 401),
            "{tries:?}"
        );
    }
    assert_cache_clean(&cache.path().join("cache.git"), wrong);

    // The same cache, the right token: fine.
    let snap = source(Some(TOKEN)).fetch().unwrap();
    assert_eq!(snap.revision, Some(c1));
    assert_cache_clean(&cache.path().join("cache.git"), TOKEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_token_file_keeps_what_it_applied_while_the_token_is_refused() {
    let repo = Repo::unserved();
    let server = HttpGit::start(&repo.served(), TOKEN);
    let c1 = repo.commit(
        &[
            ("a.yaml", Some(&rollout("a", 1))),
            ("b.yaml", Some(&rollout("b", 1))),
        ],
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("git-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap(); // trimmed by run
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "1h",
            "--git",
            &server.url,
            "--branch",
            "main",
        ])
        .arg("--git-cache")
        .arg(dir.path().join("cache.git"))
        .arg("--state")
        .arg(dir.path().join("state.db"))
        .arg("--git-token-file")
        .arg(&token_file)
        .args(["--webhook-secret-env", "TEST_WEBHOOK_SECRET"])
        .env("TEST_WEBHOOK_SECRET", "hook-secret")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (log, stderr) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
    };
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let api = line
        .trim()
        .strip_prefix("ringmaster api listening on ")
        .expect("the API address")
        .to_string();
    let http = reqwest::Client::new();
    let rollouts = async || -> Option<serde_json::Value> {
        http.get(format!("{api}/api/v1/rollouts"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    };
    let revision = async || -> Option<(String, usize)> {
        let body = rollouts().await?;
        Some((
            body["sourceRevision"].as_str()?.to_string(),
            body["items"].as_array()?.len(),
        ))
    };
    let source_errors = async || -> u64 {
        let text = http
            .get(format!("{api}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("ringmaster_source_errors_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let webhook = async || post_signed_webhook(&http, &api).await;
    let start = Instant::now();
    while revision().await != Some((c1.clone(), 2)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the first fetch, with the token from the file\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The token is rotated on the server, and the branch drops b.yaml: the fetch is
    // refused, and nothing that was applied goes away.
    server.set_token("rotated-on-the-server");
    repo.commit(&[("b.yaml", None)], false);
    webhook().await;
    let start = Instant::now();
    while source_errors().await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the refused fetch\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = rollouts().await.unwrap();
    assert_eq!(body["sourceRevision"], c1.as_str());
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|r| r["deleting"] == false && r.get("error").is_none()),
        "{items:?}"
    );

    // The server takes the token again: the next fetch sees the new commit.
    server.set_token(TOKEN);
    let c2 = repo.commit(&[("a.yaml", Some(&rollout("a", 2)))], false);
    webhook().await;
    let start = Instant::now();
    while revision().await.map(|r| r.0) != Some(c2.clone()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the fetch after the refusal\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    let refused = log
        .lines()
        .find(|l| l.contains("authentication failed"))
        .unwrap_or_else(|| panic!("the refusal is logged:\n{log}"));
    assert!(
        refused.contains(&server.url) && refused.contains("what was applied stays as it is"),
        "{refused}"
    );
    assert!(
        !log.contains(TOKEN) && !log.contains(&basic(TOKEN)),
        "the token is in the log:\n{log}"
    );
    assert_cache_clean(&dir.path().join("cache.git"), TOKEN);
    let state: Vec<_> = files_containing(dir.path(), TOKEN)
        .into_iter()
        .filter(|p| *p != token_file)
        .collect();
    assert!(state.is_empty(), "the token in {state:?}");
}

/// Posts a push webhook signed with the tests' secret (`hook-secret`); it must be accepted.
async fn post_signed_webhook(http: &reqwest::Client, api: &str) {
    let body = br#"{"ref":"refs/heads/main"}"#;
    let res = http
        .post(format!("{api}/webhook/git"))
        .header(
            "X-Hub-Signature-256",
            ringmaster::run::api::webhook_signature(b"hook-secret", body),
        )
        .header(
            "X-GitHub-Delivery",
            format!("{:032x}", rand::random::<u128>()),
        )
        .body(&body[..])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "a signed webhook is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_leaves_the_path_without_rollout_files_deletes_nothing() {
    use ringmaster::clock::SystemClock;
    use ringmaster::hub::EmbeddedHub;
    use ringmaster::run::api::ApiState;
    use ringmaster::run::store::StateStore;
    use ringmaster::run::{Controller, HubAccess};

    let repo = Repo::new();
    let cache = tempfile::tempdir().unwrap();
    let source = GitSource {
        url: repo.url.clone(),
        branch: "main".into(),
        path: Some("rollouts".into()),
        cache: cache.path().join("cache.git"),
        ..Default::default()
    };
    let hub = EmbeddedHub::in_memory(Arc::new(SystemClock));
    let store = StateStore::in_memory().unwrap();
    let api = Arc::new(ApiState::new(store.clone()));
    let mut ctl = Controller::new(api, Catalog::default(), hub.clone(), HubAccess::default());
    let configs = || {
        let mut ids: Vec<String> = hub
            .list_configurations()
            .into_iter()
            .map(|c| c.id)
            .collect();
        ids.sort();
        ids
    };
    let fetch = || {
        let source = source.clone();
        async move {
            tokio::task::spawn_blocking(move || source.fetch())
                .await
                .unwrap()
        }
    };

    repo.commit(
        &[
            ("rollouts/a.yaml", Some(&rollout("a", 1))),
            ("rollouts/b.yaml", Some(&rollout("b", 1))),
        ],
        false,
    );
    ctl.ingest(&fetch().await.unwrap()).await.unwrap();
    ctl.reconcile_due().await.unwrap();
    let applied = configs();
    assert_eq!(applied.len(), 2, "{applied:?}");

    // The folder keeps only a `.keep`: the fetch succeeds with no file, and nothing goes.
    repo.commit(
        &[
            ("rollouts/a.yaml", None),
            ("rollouts/b.yaml", None),
            ("rollouts/.keep", Some("")),
        ],
        false,
    );
    let snap = fetch().await.unwrap();
    assert!(snap.files.is_empty());
    ctl.ingest(&snap).await.unwrap();
    for _ in 0..2 {
        ctl.reconcile_all_now();
        ctl.reconcile_due().await.unwrap();
    }
    assert_eq!(configs(), applied, "nothing deleted on the hub");
    for name in ["a", "b"] {
        let r = store.rollout("fleet", name).unwrap().unwrap();
        assert!(!r.deleting, "{name} is being deleted");
        let error = r.error.unwrap_or_default();
        assert!(error.contains("--allow-empty"), "{name}: {error}");
    }

    // The folder gone altogether: the fetch fails, as it did before.
    repo.commit(&[("rollouts/.keep", None)], false);
    let err = fetch().await.unwrap_err().to_string();
    assert!(err.contains("is not a folder at commit"), "{err}");
}

/// A TCP proxy in front of a git server that, once told to, accepts connections and never
/// answers (a git server that hangs). Counts the hanging connections still open and those
/// the client gave up on.
struct StallingProxy {
    url: String,
    hang: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    given_up: Arc<std::sync::atomic::AtomicUsize>,
}

impl StallingProxy {
    /// Forwards to `upstream` (`git://127.0.0.1:P/path`) until [`StallingProxy::hang`].
    fn start(upstream: &str) -> StallingProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let rest = upstream.strip_prefix("git://").unwrap();
        let (authority, path) = rest.split_once('/').unwrap();
        let upstream = authority.to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("git://{}/{path}", listener.local_addr().unwrap());
        let hang = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let given_up = Arc::new(AtomicUsize::new(0));
        let (h, o, g) = (hang.clone(), open.clone(), given_up.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if h.load(Ordering::SeqCst) {
                    o.fetch_add(1, Ordering::SeqCst);
                    let (o, g) = (o.clone(), g.clone());
                    std::thread::spawn(move || {
                        // Reads what the client sends, answers nothing, until it hangs up.
                        let _ = std::io::copy(&mut &client, &mut std::io::sink());
                        o.fetch_sub(1, Ordering::SeqCst);
                        g.fetch_add(1, Ordering::SeqCst);
                    });
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &client, &mut &server);
                    let _ = server.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &s2, &mut &c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        StallingProxy {
            url,
            hang,
            open,
            given_up,
        }
    }

    fn hang(&self, on: bool) {
        self.hang.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn given_up(&self) -> usize {
        self.given_up.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_fetch_holds_up_no_operator_request_and_its_timeout_is_reported() {
    let repo = Repo::new();
    let c1 = repo.commit(&[("a.yaml", Some(&rollout("a", 1)))], false);
    let proxy = StallingProxy::start(&repo.url);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "1s",
            "--git-timeout",
            "6s",
            "--git",
            &proxy.url,
            "--branch",
            "main",
        ])
        .arg("--git-cache")
        .arg(dir.path().join("cache.git"))
        .arg("--state")
        .arg(dir.path().join("state.db"))
        .args(["--api-token-env", "TEST_API_TOKEN"])
        .env("TEST_API_TOKEN", "tok")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let api = line
        .trim()
        .strip_prefix("ringmaster api listening on ")
        .expect("the API address")
        .to_string();
    let http = reqwest::Client::new();
    let rollouts = async || -> serde_json::Value {
        http.get(format!("{api}/api/v1/rollouts"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let start = Instant::now();
    loop {
        let body = rollouts().await;
        if body["sourceRevision"] == c1.as_str() && body["items"][0]["status"]["phase"].is_string()
        {
            assert!(body["sourceError"].is_null(), "{body}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the first fetch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The git server hangs: the next poll's fetch waits for an answer that never comes.
    proxy.hang(true);
    let start = Instant::now();
    while proxy.open() == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the next fetch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An operator request is served while the fetch hangs.
    let asked = Instant::now();
    let resp = http
        .post(format!("{api}/api/v1/rollouts/fleet/a/pause"))
        .bearer_auth("tok")
        .json(&serde_json::json!({"id": "p-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    loop {
        let one: serde_json::Value = http
            .get(format!("{api}/api/v1/rollouts/fleet/a"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let handled = one["status"]["handledOperations"]
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o == "p-1"));
        if handled {
            assert!(one["status"]["paused"].is_object(), "{one}");
            break;
        }
        assert_eq!(
            proxy.given_up(),
            0,
            "the pause waited for the hanging fetch to time out: {one}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        proxy.given_up(),
        0,
        "the pause was served while the fetch hung"
    );
    eprintln!(
        "the pause took effect {:?} after it was asked, while the fetch hung",
        asked.elapsed()
    );

    // The timeout fires: the API says why, naming the URL, and what was applied stays.
    let start = Instant::now();
    let body = loop {
        let body = rollouts().await;
        if !body["sourceError"].is_null() {
            break body;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the timeout");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = body["sourceError"].as_str().unwrap();
    assert!(
        error.contains(&proxy.url) && error.contains("timed out"),
        "{error}"
    );
    assert_eq!(body["items"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["sourceRevision"], c1.as_str());
    let metrics = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ringmaster_source_errors_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // The server answers again: the next fetch clears the error.
    proxy.hang(false);
    let start = Instant::now();
    while !rollouts().await["sourceError"].is_null() {
        assert!(start.elapsed() < Duration::from_secs(30), "the recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills the child when the test ends, also when it fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_ends_run_while_a_fetch_hangs() {
    // A git server that accepts the connection and never answers, from the first fetch.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("git://{}/origin.git", listener.local_addr().unwrap());
    let (tx, held) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--git-timeout", "10m"])
        .args(["--git", &url])
        .arg("--git-cache")
        .arg(dir.path().join("cache.git"))
        .arg("--state")
        .arg(dir.path().join("state.db"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let guard = KillOnDrop(child);
    let _conn = held
        .recv_timeout(Duration::from_secs(30))
        .expect("the first fetch connects");
    let term = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(term.success());
    // The fetch would hang for ten minutes; the process ends long before.
    let mut guard = guard;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "run did not end after SIGTERM while a fetch hung"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    eprintln!("run ended {:?} after SIGTERM", start.elapsed());
}
