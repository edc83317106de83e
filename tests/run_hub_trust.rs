//! A hub credential goes only to its own hub: `ringmaster run --dir` as the built binary,
//! a hostile `Hub` whose `url` is a loopback listener that records every byte it is sent,
//! and connection strings for another hub. The listener must receive nothing, and the
//! rollout must say why its hub cannot be used.

use assert_cmd::Command as AssertCommand;
use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");
/// A made-up key (base64 of "not-a-real-key-only-for-tests-0"): what matters is where
/// tokens signed with it go.
const KEY: &str = "bm90LWEtcmVhbC1rZXktb25seS1mb3ItdGVzdHMtMA==";

/// The service connection string of the hub the credential is really for.
fn victim() -> String {
    format!(
        "HostName=victim.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
    )
}

/// A loopback listener that records what every connection sends (and answers nothing).
struct Recorder {
    url: String,
    got: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    // A connection alone counts: something was about to be sent.
                    sink.lock().unwrap().extend_from_slice(b"<connected>");
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Recorder { url, got }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.got.lock().unwrap()).into_owned()
    }
}

#[path = "common/proc.rs"]
mod proc;
use proc::Proc;

impl Proc {
    fn api(&self) -> String {
        self.wait_for(|line| {
            line.strip_prefix("ringmaster api listening on ")
                .map(str::to_string)
        })
    }
}

/// `GET path` of the API at `api` (`http://host:port`), its JSON body (null on failure).
fn get_json(api: &str, path: &str) -> serde_json::Value {
    use std::io::Write;
    let addr = api.trim_start_matches("http://");
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return serde_json::Value::Null;
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or_default()
}

/// A source with the hostile Hub `evil/prod` at `url` and a rollout on it.
fn source(url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("hub.yaml"),
        format!("apiVersion: ringmaster.dev/v1alpha1\nkind: Hub\nmetadata: {{name: prod, namespace: evil}}\nspec: {{type: embedded, url: \"{url}\"}}\n"),
    )
    .unwrap();
    std::fs::write(
        src.join("fw.yaml"),
        "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRollout\nmetadata: {name: fw, namespace: evil}\nspec:\n  hub: prod\n  target: \"*\"\n  priority: 5\n  content:\n    device:\n      properties.desired.firmware: {version: \"1.0\"}\n  rings:\n    - {name: all, target: \"*\"}\n  baseline: \"off\"\n",
    )
    .unwrap();
    dir
}

/// Runs the controller on `dir` with `env` until the rollout `evil/fw` has an error, and
/// returns it; fails as soon as the recorder receives anything.
fn error_of_the_rollout(dir: &tempfile::TempDir, env: (&str, &str), rec: &Recorder) -> String {
    let run = Proc::spawn(
        Command::new(BIN)
            .args(["run", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir.path().join("src"))
            .arg("--state")
            .arg(dir.path().join("state.db"))
            .env_remove("RINGMASTER_HUB_PROD")
            .env_remove("RINGMASTER_HUB_EVIL_PROD")
            .env(env.0, env.1)
            .env("RUST_LOG", "warn"),
    );
    let api = run.api();
    let start = Instant::now();
    let error = loop {
        let got = rec.received();
        assert!(
            got.is_empty(),
            "the controller sent a request to a url that is not its connection string's host:\n{got}"
        );
        let body = get_json(&api, "/api/v1/rollouts/evil/fw");
        // The rollout once it is in (a 404's body has an `error` too).
        if body["name"] == "fw"
            && let Some(e) = body["error"].as_str()
        {
            break e.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for the rollout's error: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The rollout is retried (every 30 s): a few more passes of the loop send nothing
    // either (it has been looked at once; a second reconcile would come much later).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rec.received(), "", "nothing sent");
    let out = AssertCommand::new(BIN)
        .args(["status", "--api", &api])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.lines()
            .any(|l| l.starts_with("evil") && l.contains("(!)")),
        "`status` flags the rollout: {out}"
    );
    assert!(!error.contains(KEY), "the key is not in the error: {error}");
    error
}

#[test]
fn a_url_that_is_not_the_connection_strings_host_is_refused_and_sent_nothing() {
    let rec = Recorder::start();
    let dir = source(&rec.url);
    let error = error_of_the_rollout(&dir, ("RINGMASTER_HUB_EVIL_PROD", &victim()), &rec);
    assert!(error.contains("HubConfigInvalid"), "{error}");
    assert!(
        error.contains(&rec.url) && error.contains("victim.azure-devices.net"),
        "names the url and the host: {error}"
    );
}

#[test]
fn a_connection_string_is_not_taken_from_a_hub_of_the_same_name_in_another_namespace() {
    // `RINGMASTER_HUB_PROD` (no namespace) is not read for `evil/prod`.
    let rec = Recorder::start();
    let dir = source(&rec.url);
    let error = error_of_the_rollout(&dir, ("RINGMASTER_HUB_PROD", &victim()), &rec);
    assert!(error.contains("SecretNotFound"), "{error}");
    assert!(
        error.contains("RINGMASTER_HUB_EVIL_PROD"),
        "says where the connection string would be read: {error}"
    );
}
