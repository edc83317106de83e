//! The validating admission webhook of `run --kube` on a real kube-apiserver: `kubectl
//! apply` refuses what `ringmaster validate` refuses, with its messages, and accepts the
//! rest; while no controller answers, the failure policy (`Ignore`) lets applies through.
//! Skips with one line when the API server or etcd is absent (`scripts/kube-env`).

#[path = "common/kube_env.rs"]
mod kube_env;
#[path = "common/proc.rs"]
mod proc;

use kube_env::{KubeEnv, create_namespace, free_port, http_get, install_crds, poll};
use std::path::Path;

const GOOD: &str = r#"apiVersion: ringmaster.dev/v1alpha1
kind: DeviceRollout
metadata: {name: NAME, namespace: fleet}
spec:
  target: "tags.environment='prod'"
  priority: 10
  content:
    device:
      properties.desired.firmware: {version: "2.4.0"}
  metrics:
    current: "properties.reported.firmware.version='2.4.0'"
  gate:
    minApplied: 1
    success: "metrics.current >= applied"
  rings:
    - {name: canary, target: "tags.ring='canary'"}
    - {name: broad, target: "*"}
"#;

fn rollout(name: &str, from: &str, to: &str) -> String {
    let good = GOOD.replace("NAME", name);
    assert!(good.contains(from), "{from}");
    good.replace(from, to)
}

/// What `ringmaster validate FILE` says is wrong: its `path: message` parts (the file
/// location in front dropped).
fn validate_says(file: &Path) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringmaster"))
        .arg("validate")
        .arg(file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "validate accepts {}", file.display());
    let prefix = file.display().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            // ":LINE:COL: path: message"
            let rest = rest.trim_start_matches(':');
            let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == ':');
            rest.trim_start().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_refuses_what_ringmaster_validate_refuses_with_its_message() {
    let Some(env) = KubeEnv::start() else { return };
    let client = env.client().await;
    install_crds(&client).await;
    create_namespace(&client, "fleet").await;

    let (hook, metrics) = (free_port(), free_port());
    let controller = proc::Proc::spawn(env.ringmaster().args([
        "run",
        "--kube",
        "--leader-election=false",
        "--metrics-addr",
        &format!("127.0.0.1:{metrics}"),
        "--webhook-addr",
        &format!("127.0.0.1:{hook}"),
        "--webhook-url",
        &format!("https://127.0.0.1:{hook}/validate"),
    ]));
    let readyz = format!("http://127.0.0.1:{metrics}/readyz");
    poll(60, "the controller's /readyz", || async {
        http_get(&readyz).await.filter(|(s, _)| *s == 200)
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&p, text).unwrap();
        p
    };
    let bad_target = write(
        "bad-target",
        &rollout("bad-target", "tags.ring='canary'", "tags.ring = = 'canary'"),
    );
    // The API server takes a webhook configuration into use a moment after it is written:
    // wait until a bad manifest is refused by a server-side dry run.
    let f = bad_target.display().to_string();
    poll(30, "the webhook taking effect", || async {
        let out = env.kubectl(&["apply", "--dry-run=server", "-f", &f]);
        (!out.status.success()).then_some(())
    })
    .await;

    let cases = [
        bad_target,
        write(
            "bad-cel",
            &rollout(
                "bad-cel",
                "metrics.current >= applied",
                "metrics.current >=",
            ),
        ),
        write(
            "unknown-metric",
            &rollout(
                "unknown-metric",
                "metrics.current >= applied",
                "metrics.installed >= applied",
            ),
        ),
        write(
            "tags-path",
            &rollout(
                "tags-path",
                "properties.desired.firmware: {",
                "tags.firmware: {",
            ),
        ),
        // A Hub the schema takes but validate does not: a url without a scheme.
        write(
            "bad-hub",
            "apiVersion: ringmaster.dev/v1alpha1\nkind: Hub\nmetadata: {name: prod, namespace: fleet}\nspec:\n  type: embedded\n  url: hub.example.com:8080\n",
        ),
    ];
    for file in &cases {
        let expected = validate_says(file);
        assert!(!expected.is_empty(), "{}", file.display());
        let out = env.kubectl(&["apply", "-f", &file.display().to_string()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", file.display());
        assert!(
            stderr.contains("denied the request"),
            "{}: {stderr}",
            file.display()
        );
        for message in &expected {
            assert!(
                stderr.contains(message.as_str()),
                "{}: kubectl says {stderr}\nvalidate says {message}",
                file.display()
            );
        }
    }

    // A good rollout and Hub are accepted, and an edit that keeps them valid too.
    let good = write("good", &GOOD.replace("NAME", "good"));
    let hub = write(
        "hub",
        "apiVersion: ringmaster.dev/v1alpha1\nkind: Hub\nmetadata: {name: default, namespace: fleet}\nspec: {type: embedded}\n",
    );
    for f in [&good, &hub] {
        let out = env.kubectl(&["apply", "-f", &f.display().to_string()]);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = env.kubectl(&[
        "annotate",
        "devicerollouts.ringmaster.dev",
        "good",
        "-n",
        "fleet",
        "example.com/note=kept",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An edit that breaks the stored rollout is refused too.
    let broken = write(
        "good-broken",
        &GOOD
            .replace("NAME", "good")
            .replace("tags.ring='canary'", "tags.ring=="),
    );
    let out = env.kubectl(&["apply", "-f", &broken.display().to_string()]);
    assert!(!out.status.success(), "a breaking edit was accepted");

    // Failure policy Ignore: with the controller gone, applies go through unchecked (the
    // controller marks such a rollout Failed when it is back).
    drop(controller);
    let unknown = cases[2].display().to_string();
    let out = env.kubectl(&["apply", "-f", &unknown]);
    assert!(
        out.status.success(),
        "with no controller: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
