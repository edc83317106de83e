//! The operator console in a real browser: headless Chromium driven through chromedriver's
//! WebDriver HTTP protocol (https://www.w3.org/TR/webdriver2/), against `ringmaster run
//! --dir` on `ringmaster hub serve --fleet` (a small simulated fleet).
//!
//! One test, one story: the overview lists the rollouts with their phases; the faulty
//! rollout's page shows its failed gate with the numbers, and its `failed` devices are ids
//! whose twins report `Error` on the hub; an action without a session is refused; the
//! approval ring waits, the test signs in with the token, promotes, and the ring advances.
//! Screenshots go to `<target>/tmp/console-screenshots/` (not committed).
//!
//! Skipped (one line on stderr) when `chromium` or `chromedriver` is not installed
//! (Debian: `apt-get install chromium chromium-driver`).

use ringmaster::client::Hub as _;
use ringmaster::client::azure::{AzureHub, AzureHubOptions};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringmaster");
const TOKEN: &str = "console-test-token";

#[path = "common/proc.rs"]
mod proc;
use proc::Proc;

const FLEET: &str = "devices: 120
idPrefix: dev-
seed: 7
rings: {canary: 0.25, early: 0.25, broad: 0.5}
models: {\"4000x\": 0.5, \"5000x\": 0.5}
regions: {eu-west: 0.5, us-east: 0.5}
firmware:
  initial: \"1.0\"
  downloadSeconds: 1
  applySeconds: 1
  jitter: 0.2
  failures:
    - {model: \"5000x\", version: \"9.9-bad\", rate: 0.5}
";

/// Applies to 4000x units: canary passes, early waits for a promote.
const GOOD: &str = "apiVersion: ringmaster.dev/v1alpha1
kind: DeviceRollout
metadata: {name: good, namespace: fleet}
spec:
  target: \"tags.model='4000x'\"
  priority: 10
  baseline: \"off\"
  content:
    device:
      properties.desired.firmware: {version: \"2.0\"}
  metrics:
    current: \"properties.reported.firmware.version='2.0' AND properties.reported.firmware.status='Current'\"
    failed: \"properties.reported.firmware.status='Error'\"
  gate:
    minApplied: 3
    success: \"lowerBound(metrics.current, applied) >= 0.5\"
    failure: \"lowerBound(metrics.failed, applied) > 0.05\"
  rings:
    - {name: canary, target: \"tags.ring='canary'\"}
    - {name: early, target: \"tags.ring='early'\", approval: true}
    - {name: broad, target: \"*\"}
";

/// Applies a build half the 5000x units fail to install; the failed ring is held.
const FAULTY: &str = "apiVersion: ringmaster.dev/v1alpha1
kind: DeviceRollout
metadata: {name: faulty, namespace: fleet}
spec:
  target: \"tags.model='5000x'\"
  priority: 20
  baseline: \"off\"
  onFailure: pause
  content:
    device:
      properties.desired.firmware: {version: \"9.9-bad\"}
  metrics:
    current: \"properties.reported.firmware.version='9.9-bad' AND properties.reported.firmware.status='Current'\"
    failed: \"properties.reported.firmware.status='Error'\"
  gate:
    minApplied: 5
    success: \"lowerBound(metrics.current, applied) >= 0.9\"
    failure: \"lowerBound(metrics.failed, applied) > 0.05\"
  rings:
    - {name: canary, target: \"tags.ring='canary'\"}
    - {name: broad, target: \"*\"}
";

fn found(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A WebDriver session.
struct Browser {
    http: reqwest::Client,
    base: String,
    _driver: Proc,
}

impl Browser {
    async fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let port = free_port();
        let driver = Proc::spawn(
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1"),
        );
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{root}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800"]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let r: Value = http
            .post(format!("{root}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        Browser {
            http,
            base: format!("{root}/session/{id}"),
            _driver: driver,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if v["value"].get("error").is_some() {
            panic!("WebDriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn js_async(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Polls `script` (a JS expression) until it gives something truthy.
    async fn until(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(&format!("return ({script});")).await;
            if !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0)) {
                return v;
            }
            if start.elapsed() > timeout {
                let body = self.js("return document.body.innerText").await;
                panic!("timed out waiting for {what}; the page says:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn window(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// The browser's console messages since the last call (chromedriver's log endpoint).
    async fn logs(&self) -> Vec<String> {
        let r = self
            .http
            .post(format!("{}/se/log", self.base))
            .json(&json!({"type": "browser"}))
            .send()
            .await;
        let Ok(r) = r else { return Vec::new() };
        let v: Value = r.json().await.unwrap_or_default();
        v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["message"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Emulates `prefers-color-scheme` (chromedriver's CDP endpoint); false where it is
    /// not available.
    async fn color_scheme(&self, value: &str) -> bool {
        let r = self
            .http
            .post(format!("{}/goog/cdp/execute", self.base))
            .json(&json!({"cmd": "Emulation.setEmulatedMedia", "params": {"features": [{"name": "prefers-color-scheme", "value": value}]}}))
            .send()
            .await;
        matches!(r, Ok(r) if r.status().is_success())
    }

    async fn close(&self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

async fn status(http: &reqwest::Client, api: &str, name: &str) -> Value {
    http.get(format!("{api}/api/v1/rollouts/fleet/{name}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_status(
    http: &reqwest::Client,
    api: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let v = status(http, api, name).await;
        if f(&v["status"]) {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {name}: {what}; status {}",
            v["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_explains_troubleshoots_and_acts_in_a_browser() {
    let (Some(chromium), Some(chromedriver)) = (found("chromium"), found("chromedriver")) else {
        eprintln!(
            "skipped: chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.yaml");
    std::fs::write(&fleet, FLEET).unwrap();
    let cs_file = dir.path().join("hub.cs");
    let hub = Proc::spawn(
        Command::new(BIN)
            .args(["hub", "serve", "--in-memory", "--listen", "127.0.0.1:0"])
            .args(["--cycle-interval", "1s", "--fleet"])
            .arg(&fleet)
            .arg("--connection-string-file")
            .arg(&cs_file)
            .env("RUST_LOG", "warn"),
    );
    let (hub_url, cs) = hub.hub_serve_ready(&cs_file);
    let hub_client = AzureHub::new(
        &cs,
        AzureHubOptions {
            base_url: Some(hub_url.clone()),
            ..Default::default()
        },
    )
    .unwrap();

    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("hub.yaml"),
        format!("apiVersion: ringmaster.dev/v1alpha1\nkind: Hub\nmetadata: {{name: default, namespace: fleet}}\nspec: {{type: embedded, url: \"{hub_url}\"}}\n"),
    )
    .unwrap();
    std::fs::write(src.join("good.yaml"), GOOD).unwrap();
    std::fs::write(src.join("faulty.yaml"), FAULTY).unwrap();
    let run = Proc::spawn(
        Command::new(BIN)
            .args(["run", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&src)
            .arg("--state")
            .arg(dir.path().join("state.db"))
            .args(["--api-token-env", "CONSOLE_TEST_TOKEN"])
            .env("CONSOLE_TEST_TOKEN", TOKEN)
            .env("RINGMASTER_HUB_FLEET_DEFAULT", &cs)
            .env("RUST_LOG", "warn"),
    );
    let api = run.wait_for(|l| {
        l.strip_prefix("ringmaster api listening on ")
            .map(str::to_string)
    });
    let http = reqwest::Client::new();
    let browser = Browser::start(&chromium, &chromedriver).await;

    // The overview lists both rollouts with their phases; the first load's weight.
    browser.goto(&format!("{api}/console/")).await;
    browser
        .until(
            "both rollouts on the overview",
            Duration::from_secs(30),
            "document.querySelector('[data-rollout=\"fleet/good\"][data-phase]') && document.querySelector('[data-rollout=\"fleet/faulty\"][data-phase]')",
        )
        .await;
    let weight = browser
        .js("const n = performance.getEntriesByType('navigation')[0]; return [n.transferSize, ...performance.getEntriesByType('resource').map(r => r.transferSize)].reduce((a, b) => a + b, 0);")
        .await;
    eprintln!("console: first load transferred {weight} bytes (overview JSON included)");
    browser.screenshot("1-overview-starting").await;

    // The faulty rollout fails its canary gate and is held there (onFailure: pause).
    wait_status(
        &http,
        &api,
        "faulty",
        "its canary failed",
        Duration::from_secs(90),
        |s| s["phase"] == "Failed",
    )
    .await;
    browser
        .until(
            "the faulty rollout shown Failed, first",
            Duration::from_secs(5),
            "document.querySelector('#rollouts article').getAttribute('data-rollout') === 'fleet/faulty' && document.querySelector('[data-rollout=\"fleet/faulty\"]').getAttribute('data-phase') === 'Failed'",
        )
        .await;
    browser.screenshot("2-overview").await;

    browser.goto(&format!("{api}/console/r/fleet/faulty")).await;
    let failure = browser
        .until(
            "the failed gate with its numbers",
            Duration::from_secs(10),
            "(() => { const c = document.querySelector('[data-ring=\"canary\"] [data-check=\"failure\"]'); return c && c.innerText.includes('holds') && !c.innerText.includes('does not hold') && c.querySelector('.numbers') ? c.querySelector('.numbers').innerText : null })()",
        )
        .await;
    let failure = failure.as_str().unwrap().to_string();
    assert!(
        failure.starts_with("failed ")
            && failure.contains("lowerBound")
            && failure.ends_with("> 5%"),
        "{failure}"
    );
    // The canary's counts over time, as a chart.
    browser
        .until(
            "the canary's chart",
            Duration::from_secs(10),
            "document.querySelector('[data-ring=\"canary\"] svg.chart polyline.s-bad')",
        )
        .await;
    browser.screenshot("3-faulty-rollout").await;
    browser.window(1280, 2400).await;
    browser.screenshot("3-faulty-rollout-full").await;
    browser.window(1280, 800).await;

    // Troubleshooting: the devices behind `failed` really report Error on the hub.
    browser.click("a[data-key='dev-0-failed']").await;
    let ids = browser
        .until(
            "the failed devices",
            Duration::from_secs(10),
            "(() => { const r = [...document.querySelectorAll('#devices tr[data-device]')].map(e => e.getAttribute('data-device')); return r.length ? r : null })()",
        )
        .await;
    let ids: Vec<String> = serde_json::from_value(ids).unwrap();
    let query = browser
        .js("return document.querySelector('#query').innerText")
        .await;
    assert!(
        query
            .as_str()
            .unwrap()
            .contains("properties.reported.firmware.status='Error'"),
        "{query}"
    );
    for id in &ids {
        let twin = hub_client.get_twin(id).await.unwrap().unwrap();
        assert_eq!(
            twin.pointer("/properties/reported/firmware/status"),
            Some(&json!("Error")),
            "{id}: {twin}"
        );
    }
    browser.screenshot("4-failed-devices").await;

    // The fleet composition within the faulty rollout's target: 5000x units only, per
    // ring tag as the hub counts them.
    browser
        .goto(&format!("{api}/console/r/fleet/faulty/fleet"))
        .await;
    let by_model = browser
        .until(
            "the composition by model",
            Duration::from_secs(10),
            "(() => { const r = [...document.querySelectorAll('table[data-group=\"model\"] tr[data-value]')].map(e => e.getAttribute('data-value')); return r.length ? r : null })()",
        )
        .await;
    assert_eq!(by_model, json!(["5000x"]));
    let canary_shown = browser
        .js("return Number(document.querySelector('table[data-group=\"ring\"] tr[data-value=\"canary\"] td:nth-child(2)').innerText)")
        .await;
    let canary_5000x = hub_client
        .count("tags.model='5000x' AND tags.ring='canary'")
        .await
        .unwrap();
    assert_eq!(canary_shown, json!(canary_5000x));
    browser.screenshot("4b-fleet-composition").await;

    // The approval ring waits.
    let seen = wait_status(
        &http,
        &api,
        "good",
        "ring early awaits approval",
        Duration::from_secs(90),
        |s| s["ring"]["name"] == "early" && s["ring"]["state"] == "AwaitingApproval",
    )
    .await;
    let revision = seen["status"]["revision"].as_str().unwrap().to_string();
    browser.goto(&format!("{api}/console/r/fleet/good")).await;
    browser
        .until(
            "the approval wait",
            Duration::from_secs(5),
            "document.querySelector('#ring') && document.querySelector('#ring').innerText === 'early (AwaitingApproval)'",
        )
        .await;

    // An action without a session is refused, from the page and from outside it.
    let refused = browser
        .js_async("const done = arguments[arguments.length - 1]; fetch('/console/api/rollouts/fleet/good/promote', {method: 'POST', headers: {'content-type': 'application/json', 'x-csrf-token': 'guess'}, body: '{}'}).then(r => done(r.status));")
        .await;
    assert_eq!(refused, json!(401));
    let r = http
        .post(format!("{api}/console/api/rollouts/fleet/good/promote"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A wrong token does not sign in.
    let r = http
        .post(format!("{api}/console/api/login"))
        .json(&json!({"token": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());

    // Sign in with the token, by keyboard (Enter on the button, Enter in the field); the
    // cookie is HttpOnly (not visible to scripts).
    browser.type_into("#signin-open", "\u{E007}").await;
    browser
        .until(
            "the sign-in dialog, focused on the token",
            Duration::from_secs(5),
            "document.querySelector('#signin').open && document.activeElement.id === 'token'",
        )
        .await;
    browser
        .type_into("#token", &format!("{TOKEN}\u{E007}"))
        .await;
    browser
        .until(
            "signed in",
            Duration::from_secs(5),
            "document.querySelector('#signed-in')",
        )
        .await;
    assert_eq!(browser.js("return document.cookie").await, json!(""));
    // Signed in, a write still needs the CSRF token.
    let no_csrf = browser
        .js_async("const done = arguments[arguments.length - 1]; fetch('/console/api/rollouts/fleet/good/pause', {method: 'POST', headers: {'content-type': 'application/json'}, body: '{}'}).then(r => done(r.status));")
        .await;
    assert_eq!(no_csrf, json!(403));

    // Promote: the confirmation names the revision and ring seen; the ring advances.
    browser
        .until(
            "promote enabled",
            Duration::from_secs(5),
            "!document.querySelector('#act-promote').disabled",
        )
        .await;
    // By keyboard: Enter on the button opens the confirmation with Cancel focused.
    browser.type_into("#act-promote", "\u{E007}").await;
    let text = browser
        .until(
            "the confirmation",
            Duration::from_secs(5),
            "document.querySelector('#confirm').open && document.activeElement.id === 'confirm-cancel' && document.querySelector('#confirm-text').innerText",
        )
        .await;
    let text = text.as_str().unwrap();
    assert!(
        text.contains(&format!("revision {revision}, ring early")),
        "{text}"
    );
    browser.screenshot("5-confirm-promote").await;
    browser.type_into("#confirm-ok", "\u{E007}").await;
    let clicked = Instant::now();
    browser
        .until(
            "the request accepted",
            Duration::from_secs(5),
            "document.querySelector('#act-result').innerText.startsWith('Requested promote')",
        )
        .await;
    let advanced = wait_status(
        &http,
        &api,
        "good",
        "ring early approved",
        Duration::from_secs(30),
        |s| s["ring"]["name"] == "early" && s["ring"]["state"] != "AwaitingApproval",
    )
    .await;
    let recorded = Instant::now();
    let state = advanced["status"]["ring"]["state"]
        .as_str()
        .unwrap()
        .to_string();
    browser
        .until(
            "the page showing the advanced ring",
            Duration::from_secs(5),
            "document.querySelector('#ring').innerText.startsWith('early (') && document.querySelector('#ring').innerText !== 'early (AwaitingApproval)'",
        )
        .await;
    eprintln!(
        "console: promote clicked -> controller recorded {state} in {:?}; recorded -> page shows it in {:?}",
        recorded - clicked,
        recorded.elapsed()
    );
    assert!(advanced["status"]["rings"][1]["approvedAt"].is_string());

    // From a change on the hub (ring early's first devices applied) to the page showing
    // it: the controller's next look at the hub, then the page's next poll.
    let id = advanced["status"]["configurationId"]
        .as_str()
        .unwrap()
        .to_string();
    let start = Instant::now();
    while hub_client
        .count(&format!(
            "configurations.[[{id}]].status = 'Applied' AND tags.ring = 'early'"
        ))
        .await
        .unwrap()
        == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ring early never applied on the hub"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hub_changed = Instant::now();
    browser
        .until(
            "the page showing ring early applied",
            Duration::from_secs(45),
            "/applied [1-9][0-9]* of/.test(document.querySelector('[data-ring=\"early\"] .kv').innerText)",
        )
        .await;
    eprintln!(
        "console: ring early first seen applied on the hub -> the page showing it: {:?} (the controller's next look at the applying ring, every 2 s within the hub's budget, then the page's poll)",
        hub_changed.elapsed()
    );
    browser.screenshot("6-good-promoted").await;

    // Dark: the page follows prefers-color-scheme.
    if browser.color_scheme("dark").await {
        browser.goto(&format!("{api}/console/")).await;
        browser
            .until(
                "loaded",
                Duration::from_secs(10),
                "document.body.getAttribute('data-loaded')",
            )
            .await;
        let bg = browser
            .js("return getComputedStyle(document.body).backgroundColor")
            .await;
        assert_eq!(bg, json!("rgb(13, 17, 23)"));
        browser.screenshot("6b-overview-dark").await;
        browser.color_scheme("light").await;
    }

    // Phone width: nothing wider than the screen.
    browser.window(390, 844).await;
    browser.goto(&format!("{api}/console/r/fleet/faulty")).await;
    browser
        .until(
            "loaded",
            Duration::from_secs(10),
            "document.body.getAttribute('data-loaded')",
        )
        .await;
    let overflow = browser
        .js("return document.documentElement.scrollWidth - window.innerWidth")
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "wider than a phone by {overflow}px"
    );
    browser.screenshot("7-phone-rollout").await;

    // Sign out: the session no longer acts.
    browser.window(1280, 800).await;
    browser.goto(&format!("{api}/console/")).await;
    browser
        .until(
            "signed in",
            Duration::from_secs(5),
            "document.querySelector('#signout')",
        )
        .await;
    browser.click("#signout").await;
    browser
        .until(
            "signed out",
            Duration::from_secs(5),
            "document.querySelector('#signin-open')",
        )
        .await;

    // No CSP violation or script error on the way.
    let logs = browser.logs().await;
    let bad: Vec<_> = logs
        .iter()
        .filter(|m| m.contains("Content Security Policy") || m.contains("Uncaught"))
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    browser.close().await;
    drop(run);
    drop(hub);
}
