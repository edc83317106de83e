//! `ringmaster demo` end to end: the built binary, a fleet of 5,000 simulated chillers
//! and the example rollouts, as fast as the machine allows.
//!
//! 5,000 is about the smallest fleet whose canary rings are large enough for the
//! examples' gates (a Wilson lower bound of 0.90 needs 35 devices all current).

use assert_cmd::Command;

fn demo(args: &[&str]) -> (i32, String) {
    let out = Command::cargo_bin("ringmaster")
        .unwrap()
        .args(["demo", "--speed", "1000000"])
        .args(args)
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().is_empty(),
        "stderr: {stderr}\nstdout: {stdout}"
    );
    (out.status.code().unwrap_or(-1), stdout)
}

/// The line of the log about `rollout` whose ring and decision columns match.
fn event<'a>(log: &'a str, rollout: &str, ring: &str, decision: &str) -> Option<&'a str> {
    log.lines().find(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() > 3 && cols[1] == rollout && cols[2] == ring && cols[3] == decision
    })
}

#[test]
fn the_faulty_release_candidate_fails_its_canary_gate_and_is_rolled_back_while_the_good_firmware_reaches_every_ring()
 {
    let (code, log) = demo(&["--devices", "5000"]);
    assert_eq!(code, 0, "{log}");

    // The canary gate of the release candidate fails on its numbers, then it is rolled back.
    let fail = event(&log, "chiller-fw-rc", "canary", "Fail")
        .unwrap_or_else(|| panic!("no canary Fail for chiller-fw-rc:\n{log}"));
    assert!(
        fail.contains("failure condition holds")
            && fail.contains("failed ")
            && fail.contains("lowerBound"),
        "{fail}"
    );
    assert!(
        event(&log, "chiller-fw-rc", "canary", "Rollback").is_some(),
        "{log}"
    );
    assert!(
        event(&log, "chiller-fw-rc", "canary", "RolledBack").is_some(),
        "{log}"
    );
    assert!(
        event(&log, "chiller-fw-rc", "early", "Create").is_none()
            && event(&log, "chiller-fw-rc", "early", "Widen").is_none(),
        "the faulty revision left the canary ring:\n{log}"
    );

    // The good firmware passes every ring in order and is stable.
    let passes: Vec<&str> = ["canary", "early", "broad"]
        .into_iter()
        .map(|ring| {
            event(&log, "chiller-fw", ring, "Pass")
                .unwrap_or_else(|| panic!("chiller-fw {ring} did not pass:\n{log}"))
        })
        .collect();
    let order: Vec<usize> = passes.iter().map(|l| log.find(l).unwrap()).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "rings passed out of order:\n{log}"
    );

    // The summary: final phases and devices per firmware version.
    let summary = &log[log.find("summary after").expect("a summary")..];
    let phase = |name: &str| {
        summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
    };
    assert_eq!(phase("chiller-fw").as_deref(), Some("Healthy"), "{summary}");
    assert_eq!(
        phase("chiller-fw-rc").as_deref(),
        Some("RolledBack"),
        "{summary}"
    );
    // Devices per reported firmware version add up to the fleet; 2.4.0 reached the 4000x units.
    let rows: Vec<(&str, u64)> = summary
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() == 3 && cols[0].starts_with("2."))
                .then(|| (cols[0], cols[2].parse().unwrap()))
        })
        .collect();
    assert_eq!(rows.iter().map(|r| r.1).sum::<u64>(), 5000, "{summary}");
    assert!(
        rows.iter().any(|(v, n)| *v == "2.4.0" && *n > 3000),
        "{summary}"
    );
    assert!(!summary.contains("2.5.0-rc1        Current"), "{summary}");
    assert!(summary.contains("expected outcome"), "{summary}");
    // Piped output is a plain log: no ANSI escapes.
    assert!(!log.contains('\x1b'), "escape codes in a non-terminal log");
}

#[test]
fn a_fleet_too_small_for_the_gates_is_warned_about_and_ends_with_exit_1() {
    let (code, log) = demo(&["--devices", "200", "--timeout", "40m"]);
    assert!(log.contains("too small for the examples' gates"), "{log}");
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("unexpected outcome"), "{log}");
}

/// Stops the child on every path out of the test.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn with_keep_running_the_demo_hub_is_served_over_the_rest_api_with_its_rollouts_configurations()
 {
    use ringmaster::client::Hub;
    use ringmaster::client::azure::{AzureHub, AzureHubOptions};
    use std::io::BufRead;

    let dir = tempfile::tempdir().unwrap();
    let cs_file = dir.path().join("hub.cs");
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("ringmaster"))
        .args([
            "demo",
            "--devices",
            "300",
            "--speed",
            "1000000",
            "--timeout",
            "5m",
            "--keep-running",
            "--listen",
            "127.0.0.1:0",
            "--console-listen",
            "127.0.0.1:0",
        ])
        .arg("--connection-string-file")
        .arg(&cs_file)
        .arg("--console-token-file")
        .arg(dir.path().join("console.token"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let stdout = child.0.stdout.take().unwrap();
    let file = cs_file.clone();
    let (url, cs, console) = tokio::task::spawn_blocking(move || {
        let mut url = None;
        let mut cs = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("the hub keeps running in real time at ") {
                url = rest.split_whitespace().next().map(str::to_string);
            }
            if line.starts_with("connection string: written to ") {
                let text = std::fs::read_to_string(&file).unwrap();
                cs = Some(text.lines().next().unwrap().to_string());
            }
            if let Some(console) = line.strip_prefix("operator console: ") {
                return (
                    url.expect("the URL is printed before the console's"),
                    cs.expect("the connection string is handed over before the console's URL"),
                    console.to_string(),
                );
            }
        }
        panic!("the demo ended without serving its hub");
    })
    .await
    .unwrap();

    let hub = AzureHub::new(
        &cs,
        AzureHubOptions {
            base_url: Some(url),
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<String> = hub
        .list_configurations()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    for rollout in ["fleet-baseline", "chiller-fw", "chiller-fw-rc", "jumbo-mtu"] {
        assert!(
            ids.iter()
                .any(|id| id.starts_with(&format!("fleet_{rollout}_"))),
            "{rollout} has no configuration on the served hub: {ids:?}"
        );
    }
    assert_eq!(hub.count("tags.environment = 'prod'").await.unwrap(), 300);

    // The operator console shows the demo's rollouts, under its CSP.
    let page = reqwest::get(&console).await.unwrap();
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    let overview: serde_json::Value = reqwest::get(format!("{console}api/overview"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown: Vec<&str> = overview["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for rollout in ["fleet-baseline", "chiller-fw", "chiller-fw-rc", "jumbo-mtu"] {
        assert!(
            shown.contains(&rollout),
            "{rollout} is not on the console: {shown:?}"
        );
    }
    assert!(
        std::fs::read_to_string(dir.path().join("console.token"))
            .unwrap()
            .trim()
            .len()
            >= 32
    );
}

#[test]
fn a_ring_that_needs_approval_is_promoted_by_the_demo_and_the_rollout_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::copy(
        format!("{root}/examples/rollouts/10-baseline.yaml"),
        dir.path().join("10-baseline.yaml"),
    )
    .unwrap();
    let fw = std::fs::read_to_string(format!("{root}/examples/rollouts/20-chiller-firmware.yaml"))
        .unwrap();
    let gated = fw.replace(
        "{name: early, target: \"tags.ring='early'\"}",
        "{name: early, target: \"tags.ring='early'\", approval: true}",
    );
    assert_ne!(
        fw, gated,
        "the example's early ring changed shape; update this test"
    );
    std::fs::write(dir.path().join("20-chiller-firmware.yaml"), gated).unwrap();

    let (code, log) = demo(&[
        "--devices",
        "5000",
        "--rollouts",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.lines().any(|l| l.contains("chiller-fw")
            && l.contains("ring early needs approval: the demo promotes it")),
        "{log}"
    );
    assert!(
        event(&log, "chiller-fw", "early", "Approve").is_some(),
        "{log}"
    );
    assert!(
        event(&log, "chiller-fw", "broad", "Pass").is_some(),
        "{log}"
    );
}
