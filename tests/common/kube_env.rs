//! etcd and kube-apiserver for one test, started by `scripts/kube-env` on loopback
//! (envtest-style); stopped, and their folder removed, on drop. `None` (after one line
//! saying why) when the API server or etcd is not installed.

#![allow(dead_code)]

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct KubeEnv {
    pub dir: PathBuf,
}

impl KubeEnv {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kube-env")
    }

    pub fn start() -> Option<KubeEnv> {
        let available = Command::new(Self::script()).arg("available").status();
        if !available.is_ok_and(|s| s.success()) {
            eprintln!(
                "skipping: no kube-apiserver in target/kube-assets (or $KUBE_ASSETS) or no etcd on PATH"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap().keep();
        let env = KubeEnv { dir };
        let out = Command::new(Self::script())
            .arg("start")
            .arg(&env.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kube-env start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(env)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    pub async fn client(&self) -> kube::Client {
        let kc = Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// Creates `crds` and waits (polling fast) until each is Established and served.
pub async fn install(client: &kube::Client, crds: &[CustomResourceDefinition]) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        api.create(&PostParams::default(), crd).await.unwrap();
    }
    wait_established(client, crds).await;
}

/// Waits until each of `crds` is Established.
pub async fn wait_established(client: &kube::Client, crds: &[CustomResourceDefinition]) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap();
        let mut established = false;
        for _ in 0..300 {
            let got = api.get(&name).await.unwrap();
            established = got
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(established, "{name} never became Established");
    }
    // Discovery of a new group lags the Established condition by a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// ringmaster's CRDs.
pub fn ringmaster_crds() -> Vec<CustomResourceDefinition> {
    ringmaster::resources::crds()
        .into_iter()
        .map(|(_, crd)| crd)
        .collect()
}

pub async fn create_namespace(client: &kube::Client, name: &str) {
    let ns: Api<Namespace> = Api::all(client.clone());
    let object = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    ns.create(&PostParams::default(), &object).await.unwrap();
}

/// Polls `f` every 100 ms until it gives a value; panics naming `what` after `timeout`.
pub async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
