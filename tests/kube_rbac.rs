//! `run --kube` on the chart's ServiceAccount and nothing else, on a real kube-apiserver:
//! `manifests/install.yaml` (the chart rendered) applied as an administrator would, a
//! token for the ServiceAccount from the TokenRequest API (`kubectl create token`), and
//! the controller on that token alone reconciles a rollout, holds the Lease, and sets up
//! the admission webhook's certificate Secret and caBundle. And an identity without the
//! rights is told which verb on which resource it lacks. And the chart's `console.enabled`
//! ClusterRole lets the ServiceAccount review tokens and access for the console. Skips with one line when the API
//! server or etcd is absent (`scripts/kube-env`).

#[path = "common/kube_env.rs"]
mod kube_env;
#[path = "common/proc.rs"]
mod proc;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube_env::{KubeEnv, free_port, poll};
use ringmaster::resources::DeviceRollout;
use std::path::{Path, PathBuf};

/// A kubeconfig like the admin's, authenticating with `token` instead.
fn kubeconfig_with_token(env: &KubeEnv, token: &str) -> PathBuf {
    let admin = std::fs::read_to_string(env.kubeconfig()).unwrap();
    let mut out = String::new();
    for line in admin.lines() {
        if line.trim_start().starts_with("user: {token:") {
            out.push_str(&format!("  user: {{token: \"{token}\"}}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(out.contains(token), "no token line in the admin kubeconfig");
    let path = env
        .dir
        .join(format!("kubeconfig-{}", &token[token.len() - 8..]));
    std::fs::write(&path, out).unwrap();
    path
}

fn create_token(env: &KubeEnv, namespace: &str, sa: &str) -> String {
    let out = env.kubectl(&["create", "token", sa, "-n", namespace]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn apply(env: &KubeEnv, file: &Path) {
    let out = env.kubectl(&["apply", "-f", &file.display().to_string()]);
    assert!(
        out.status.success(),
        "kubectl apply -f {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_runs_on_the_charts_service_account_alone() {
    let Some(env) = KubeEnv::start() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The CRDs come first in the file; their kinds need a moment to be served.
    let install = root.join("manifests/install.yaml");
    poll(60, "manifests/install.yaml applies", || async {
        env.kubectl(&["apply", "-f", &install.display().to_string()])
            .status
            .success()
            .then_some(())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("fleet.yaml");
    std::fs::write(
        &objects,
        r#"apiVersion: v1
kind: Namespace
metadata: {name: fleet}
---
apiVersion: ringmaster.dev/v1alpha1
kind: Hub
metadata: {name: default, namespace: fleet}
spec: {type: embedded}
---
apiVersion: ringmaster.dev/v1alpha1
kind: DeviceRollout
metadata: {name: fw, namespace: fleet}
spec:
  target: "*"
  content:
    device:
      properties.desired.firmware: {version: "2.4.0"}
  rings:
    - {name: all, target: "*"}
"#,
    )
    .unwrap();
    // The chart's webhook configuration points at a Service with no pods here: with the
    // failure policy Ignore, the API server stores the objects anyway.
    apply(&env, &objects);

    let token = create_token(&env, "ringmaster-system", "ringmaster");
    let kubeconfig = kubeconfig_with_token(&env, &token);
    let (hook, metrics) = (free_port(), free_port());
    let mut cmd = env.ringmaster();
    cmd.env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "ringmaster-system")
        .args([
            "run",
            "--kube",
            "--leader-election",
            "--identity",
            "sa-replica",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics}"),
            "--webhook-addr",
            &format!("127.0.0.1:{hook}"),
            "--webhook-service",
            "ringmaster",
            "--webhook-configuration",
            "ringmaster",
        ]);
    let _controller = proc::Proc::spawn(&mut cmd);

    let admin = env.client().await;
    let rollouts: Api<DeviceRollout> = Api::namespaced(admin.clone(), "fleet");
    let status = poll(90, "the rollout is reconciled", || async {
        let ro = rollouts.get("fw").await.ok()?;
        let st = ro.status?;
        (st.observed_generation == ro.metadata.generation && st.phase.is_some()).then_some(st)
    })
    .await;
    assert!(status.phase.is_some(), "{status:?}");

    // Its Events, created on the ServiceAccount's `create` alone (every transition is a
    // new Event; the Role grants no `patch`).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), "fleet");
    poll(30, "an Event about the rollout", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("fw"))
    })
    .await;

    let leases: Api<Lease> = Api::namespaced(admin.clone(), "ringmaster-system");
    let holder = leases
        .get("ringmaster-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(holder.as_deref(), Some("sa-replica"));

    // The webhook's CA and certificate, made on the ServiceAccount's rights, and the
    // chart's webhook configuration trusting that CA.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "ringmaster-system");
    let secret = poll(30, "the webhook's Secret", || async {
        secrets
            .get_opt("ringmaster-webhook-tls")
            .await
            .ok()
            .flatten()
    })
    .await;
    let ca = secret.data.unwrap()["ca.crt"].0.clone();
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    poll(30, "the caBundle is the webhook's CA", || async {
        let vwc = vwcs.get("ringmaster").await.ok()?;
        let hooks = vwc.webhooks?;
        hooks
            .iter()
            .all(|w| w.client_config.ca_bundle.as_ref().map(|b| &b.0) == Some(&ca))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_without_rbac_is_told_which_verb_on_which_resource_it_lacks() {
    let Some(env) = KubeEnv::start() else { return };
    kube_env::install_crds(&env.client().await).await;
    // A ServiceAccount with no rights at all.
    let out = env.kubectl(&["create", "serviceaccount", "nobody", "-n", "default"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = create_token(&env, "default", "nobody");
    let kubeconfig = kubeconfig_with_token(&env, &token);
    let out = env
        .ringmaster()
        .env("KUBECONFIG", &kubeconfig)
        .args([
            "run",
            "--kube",
            "--leader-election=false",
            "--metrics-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("forbidden")
            && stderr.contains("`list`")
            && stderr.contains("devicerollouts.ringmaster.dev")
            && !stderr.contains("is the CRD installed"),
        "{stderr}"
    );
}

/// The chart's `console.enabled` ClusterRole is what the console's sign-in needs: on the
/// ServiceAccount's token alone, TokenReview names a person and SubjectAccessReview
/// answers for them (no 403). Skips with one line without helm (`scripts/check-packaging
/// --tools` puts it in target/packaging/bin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_console_role_lets_the_controller_sign_people_in() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let helm = root.join("target/packaging/bin/helm");
    if !helm.exists() {
        eprintln!("skipping: no helm in target/packaging/bin (scripts/check-packaging --tools)");
        return;
    }
    let Some(env) = KubeEnv::start() else { return };
    let install = root.join("manifests/install.yaml");
    poll(60, "manifests/install.yaml applies", || async {
        env.kubectl(&["apply", "-f", &install.display().to_string()])
            .status
            .success()
            .then_some(())
    })
    .await;
    let rendered = std::process::Command::new(&helm)
        .args(["template", "ringmaster"])
        .arg(root.join("charts/ringmaster"))
        .args([
            "--namespace",
            "ringmaster-system",
            "--set",
            "console.enabled=true",
        ])
        .args(["--show-only", "templates/rbac.yaml"])
        .env("HELM_CACHE_HOME", env.dir.join("helm-cache"))
        .env("HELM_CONFIG_HOME", env.dir.join("helm-config"))
        .env("HELM_DATA_HOME", env.dir.join("helm-data"))
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let rbac = env.dir.join("rbac-console.yaml");
    std::fs::write(&rbac, &rendered.stdout).unwrap();
    apply(&env, &rbac);

    let controller_token = create_token(&env, "ringmaster-system", "ringmaster");
    let kc = kube::config::Kubeconfig::read_from(kubeconfig_with_token(&env, &controller_token))
        .unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    let auth =
        ringmaster::console::kube_auth::KubeAuth::new(kube::Client::try_from(config).unwrap());
    // A person: a ServiceAccount of ringmaster-system with no rights.
    let out = env.kubectl(&[
        "create",
        "serviceaccount",
        "viewer",
        "-n",
        "ringmaster-system",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let person_token = create_token(&env, "ringmaster-system", "viewer");
    let person = poll(30, "TokenReview on the chart's console role", || async {
        auth.sign_in(&person_token).await.ok().flatten()
    })
    .await;
    assert_eq!(
        person.name,
        "system:serviceaccount:ringmaster-system:viewer"
    );
    assert_eq!(
        auth.may_patch(&person, "fleet", "fw").await,
        Ok(false),
        "SubjectAccessReview answers (the person may not patch)"
    );
}
