//! A real kube-apiserver (with etcd) for one test, started envtest-style by
//! `scripts/kube-env` on loopback, and what the tests on it share: the CRDs installed,
//! namespaces, `kubectl` and the `ringmaster` binary pointed at it. A test skips with one
//! line when the API server or etcd is absent (see `scripts/kube-env`).

#![allow(dead_code)]

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// etcd and kube-apiserver for one test; stopped (and their folder removed) on drop.
pub struct KubeEnv {
    pub dir: PathBuf,
    kubectl: PathBuf,
}

/// A kubectl that has `create token` (1.24 and later): `$KUBECTL`, the one on PATH, or
/// the one `scripts/check-packaging` downloads.
fn kubectl() -> Option<PathBuf> {
    let packaged = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/packaging/bin/kubectl");
    let candidates = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("kubectl"), packaged]);
    for c in candidates {
        let ok = Command::new(&c)
            .args(["create", "token", "--help"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(c);
        }
    }
    None
}

impl KubeEnv {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kube-env")
    }

    /// `None` (after saying why) when the API server or etcd is not installed.
    pub fn start() -> Option<KubeEnv> {
        let available = Command::new(Self::script()).arg("available").status();
        if !available.is_ok_and(|s| s.success()) {
            eprintln!(
                "skipping: no kube-apiserver in target/kube-assets (or $KUBE_ASSETS) or no etcd on PATH"
            );
            return None;
        }
        let Some(kubectl) = kubectl() else {
            eprintln!(
                "skipping: no kubectl >= 1.24 ($KUBECTL, on PATH, or target/packaging/bin from scripts/check-packaging)"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap().keep();
        let env = KubeEnv { dir, kubectl };
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

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// An admin client.
    pub async fn client(&self) -> kube::Client {
        let kc = Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// `kubectl ARGS` as admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .env("KUBECONFIG", self.kubeconfig())
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// `ringmaster ARGS` with the admin kubeconfig (not started).
    pub fn ringmaster(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmaster"));
        cmd.env("KUBECONFIG", self.kubeconfig())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info");
        cmd
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

/// Installs ringmaster's CRDs and waits (polling fast) until both are Established.
pub async fn install_crds(client: &kube::Client) {
    install(client, &ringmaster_crds()).await;
}

pub async fn create_namespace(client: &kube::Client, name: &str) {
    let ns: Api<Namespace> = Api::all(client.clone());
    let object = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    ns.create(&PostParams::default(), &object).await.unwrap();
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `url` over plain HTTP: the status and body, or `None` when nothing answers.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `secs` seconds.
pub async fn poll<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// A token for ServiceAccount `sa` of `ns` (TokenRequest API, ten minutes).
pub async fn token_of(client: &kube::Client, ns: &str, sa: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    sas.create_token_request(sa, &PostParams::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}
