//! Storage faults: the hub's store (`hub serve --store`) and the controller's state store
//! (`run --dir --state`) on a small tmpfs that fills up mid-run. Writes the filesystem
//! refuses are answered with an error naming the file and what happened, memory keeps
//! what disk holds (a refused write is not visible, before or after a restart), and
//! writes work again once space is back, losing nothing that was acknowledged.
//!
//! Mounting needs root (or CAP_SYS_ADMIN): without it each test says so in one line and
//! passes. `scripts/drill --storage-faults` runs the longer version.

use reqwest::StatusCode;
use ringmaster::clock::SystemClock;
use ringmaster::hub::{EmbeddedHub, HubOptions};
use ringmaster::iothub::sas::{SasKey, encode};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");

/// A tmpfs of a given size on a fresh folder, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts one, or says in one line why it cannot and gives `None`.
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { dir }),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Fills the filesystem to the last byte.
    fn fill(&self) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "ENOSPC: {e}");
                    break;
                }
            }
        }
    }

    /// Gives the space back.
    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A child process killed when dropped (also when the test fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary with `args`; returns it and the address of its first `listening on`
/// line. Its stderr (the log) is collected into the returned buffer.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> (Killed, String, Arc<std::sync::Mutex<String>>) {
    let mut child = Killed(
        Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = child.0.stderr.take().unwrap();
    let l = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = l.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the listening line").unwrap();
        if let Some((_, a)) = line.split_once("listening on ") {
            break a.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr, log)
}

/// A SAS token of the owner policy for `host`.
fn token(key: &SasKey, host: &str) -> String {
    let se = (jiff::Timestamp::now().as_second() + 3600).to_string();
    let sr = encode(host);
    let sig = key.sign(&sr, &se).replace('+', "%2B").replace('=', "%3D");
    format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn=iothubowner")
}

struct HubClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl HubClient {
    /// Creates device `id`: the status and the answer's text.
    async fn create(&self, id: &str) -> (StatusCode, String) {
        let r = self
            .http
            .put(format!("{}/devices/{id}?api-version=2021-04-12", self.base))
            .header("Authorization", &self.token)
            .json(&serde_json::json!({"deviceId": id, "status": "enabled"}))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn exists(&self, id: &str) -> bool {
        let r = self
            .http
            .get(format!("{}/devices/{id}?api-version=2021-04-12", self.base))
            .header("Authorization", &self.token)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => true,
            404 => false,
            s => panic!("GET /devices/{id}: {s}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_store_on_a_full_filesystem_refuses_writes_clearly_and_loses_nothing() {
    let Some(fs) = SmallFs::mount("2m") else {
        return;
    };
    let db = fs.path().join("hub.db");
    let key = SasKey::generate();
    let keys = format!("iothubowner={}", key.expose());
    let (hub, addr, log) = spawn(
        &[
            "hub",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            db.to_str().unwrap(),
            "--cycle-interval",
            "1h",
        ],
        &[("RINGMASTER_HUB_KEYS", keys.as_str())],
    );
    let host = addr.trim_start_matches("http://").to_string();
    let c = HubClient {
        http: reqwest::Client::new(),
        base: addr.clone(),
        token: token(&key, &host),
    };
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = format!("before-{i}");
        let (s, body) = c.create(&id).await;
        assert_eq!(s, 200, "{body}");
        acked.push(id);
    }

    // The filesystem fills up: writes are refused, each with an error that names the
    // store and says what happened, and a refused device is not there.
    fs.fill();
    let mut refused = Vec::new();
    for i in 0..2000 {
        let id = format!("full-{i}");
        let (s, body) = c.create(&id).await;
        if s == 200 {
            acked.push(id);
            continue;
        }
        assert_eq!(s, 500, "{body}");
        assert!(
            body.contains("hub.db")
                && body.contains("full")
                && body.contains("nothing was changed"),
            "the error names the file and what happened: {body}"
        );
        assert!(!c.exists(&id).await, "a refused device is not there");
        refused.push(id);
        if refused.len() >= 5 {
            break;
        }
    }
    assert_eq!(refused.len(), 5, "the full filesystem refuses writes");
    let logged = log.lock().unwrap().clone();
    assert!(
        logged.contains("hub.db") && logged.contains("full"),
        "the log says it too: {logged}"
    );

    // Space comes back: writes work again, without a restart.
    fs.free();
    for i in 0..20 {
        let id = format!("after-{i}");
        let (s, body) = c.create(&id).await;
        assert_eq!(s, 200, "{body}");
        acked.push(id);
    }
    drop(hub); // SIGKILL

    // Reopened: exactly what was acknowledged.
    let reopened = EmbeddedHub::open(&db, Arc::new(SystemClock), HubOptions::default()).unwrap();
    for id in &acked {
        assert!(reopened.get_twin(id).is_ok(), "{id} was acknowledged");
    }
    for id in &refused {
        assert!(reopened.get_twin(id).is_err(), "{id} was refused");
    }
}

fn rollout(name: &str, value: u32) -> String {
    format!(
        "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRollout\nmetadata: {{name: {name}, namespace: fleet}}\nspec:\n  target: \"*\"\n  priority: 5\n  content:\n    device:\n      properties.desired.x: {{value: {value}}}\n  rings:\n    - {{name: all, target: \"*\"}}\n  baseline: \"off\"\n"
    )
}

async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_store_on_a_full_filesystem_reports_the_error_and_resumes() {
    let Some(fs) = SmallFs::mount("2m") else {
        return;
    };
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a.yaml"), rollout("a", 1)).unwrap();
    let state = fs.path().join("state.db");
    let (run, api, log) = spawn(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            src.path().to_str().unwrap(),
            "--rescan",
            "200ms",
            "--state",
            state.to_str().unwrap(),
            "--api-token-env",
            "TEST_API_TOKEN",
        ],
        &[("TEST_API_TOKEN", "tok")],
    );
    let http = reqwest::Client::new();
    let wait = async |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        let start = Instant::now();
        loop {
            let body = get_json(&http, &format!("{api}/api/v1/rollouts")).await;
            if f(&body) {
                return body;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what}: {body}\n{}",
                log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait("the first reconcile", &|b| {
        b["items"][0]["status"]["phase"].is_string()
    })
    .await;

    // The filesystem fills up; a new rollout file arrives and an operator asks for a pause.
    fs.fill();
    std::fs::write(src.path().join("b.yaml"), rollout("b", 1)).unwrap();
    let pause = http
        .post(format!("{api}/api/v1/rollouts/fleet/a/pause"))
        .bearer_auth("tok")
        .json(&serde_json::json!({"id": "p-1"}))
        .send()
        .await
        .unwrap();
    let refused = pause.status() != 202;
    if refused {
        let body = pause.text().await.unwrap();
        assert!(
            body.contains("state.db") && body.contains("full"),
            "the refused request says why: {body}"
        );
    }
    // The controller says why it cannot record, naming the file; it does not crash.
    let start = Instant::now();
    while !(log.lock().unwrap().contains("state.db") && log.lock().unwrap().contains("full")) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the log names the state file: {}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut run = run;
    assert!(
        run.0.try_wait().unwrap().is_none(),
        "the controller runs on"
    );

    // Space comes back: b is taken in and the pause (asked again if it was refused) served.
    fs.free();
    if refused {
        let again = http
            .post(format!("{api}/api/v1/rollouts/fleet/a/pause"))
            .bearer_auth("tok")
            .json(&serde_json::json!({"id": "p-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 202);
    }
    let handled = |b: &serde_json::Value| {
        b["items"].as_array().is_some_and(|items| {
            items.len() == 2
                && items.iter().all(|r| r["status"]["phase"].is_string())
                && items.iter().any(|r| {
                    r["name"] == "a"
                        && r["status"]["handledOperations"]
                            .as_array()
                            .is_some_and(|o| o.iter().any(|o| o == "p-1"))
                })
        })
    };
    wait(
        "b taken in and the pause served after space is back",
        &handled,
    )
    .await;
    drop(run);

    // A restart on the same state shows the same.
    let (_run, api, _log) = spawn(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--dir",
            src.path().to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ],
        &[],
    );
    let body = get_json(&http, &format!("{api}/api/v1/rollouts")).await;
    assert!(handled(&body), "after a restart: {body}");
}

#[test]
fn a_store_on_a_read_only_filesystem_is_refused_at_start_naming_the_file() {
    let Some(fs) = SmallFs::mount("1m") else {
        return;
    };
    let ro = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(fs.path())
        .status()
        .unwrap();
    assert!(ro.success(), "remount read-only");
    let src = tempfile::tempdir().unwrap();
    for (args, file) in [
        (
            vec![
                "run",
                "--listen",
                "127.0.0.1:0",
                "--dir",
                src.path().to_str().unwrap(),
                "--state",
            ],
            "state.db",
        ),
        (
            vec!["hub", "serve", "--listen", "127.0.0.1:0", "--store"],
            "hub.db",
        ),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .arg(fs.path().join(file))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} started on a read-only disk"
        );
        assert!(
            err.contains(file) && err.to_lowercase().contains("read-only"),
            "{args:?}: the error names the file and says why: {err}"
        );
    }
}
