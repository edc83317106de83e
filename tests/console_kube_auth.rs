//! The console's Kubernetes sign-in against a real kube-apiserver (`scripts/kube-env`):
//! a person's own service-account token is named by TokenReview, and SubjectAccessReview
//! decides, by the cluster's RBAC, who may act on which DeviceRollout; through the
//! console's routes, the one allowed is recorded by name and the other is refused.
//! Skips with one line when the API server or etcd is absent.

#[path = "common/kube_env.rs"]
mod kube_env;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};
use kube_env::{KubeEnv, token_of};
use parking_lot::Mutex;
use ringmaster::console::kube_auth::KubeAuth;
use ringmaster::console::{Backend, Person, RolloutRow};
use ringmaster::driver::Driver;
use ringmaster::resources::{DeviceRollout, Operation, OperationKind};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A console backend whose sign-in and permissions are the cluster's.
struct ClusterBackend {
    auth: KubeAuth,
    rows: Vec<RolloutRow>,
    ops: Mutex<Vec<Operation>>,
}

#[async_trait]
impl Backend for ClusterBackend {
    async fn rollouts(&self) -> Result<Vec<RolloutRow>, String> {
        Ok(self.rows.clone())
    }
    async fn request(&self, _: &str, _: &str, op: Operation) -> Result<bool, String> {
        self.ops.lock().push(op);
        Ok(true)
    }
    fn driver(&self, _: &str, _: &str) -> Option<Arc<Driver>> {
        None
    }
    fn token(&self) -> Option<String> {
        None
    }
    fn writable(&self) -> bool {
        true
    }
    async fn sign_in(&self, token: &str) -> Result<Option<Person>, String> {
        self.auth.sign_in(token).await
    }
    async fn may_act(
        &self,
        who: &Person,
        namespace: &str,
        name: &str,
        _: OperationKind,
    ) -> Result<bool, String> {
        self.auth.may_patch(who, namespace, name).await
    }
}

#[tokio::test]
async fn who_may_act_is_decided_by_token_review_and_the_clusters_rbac() {
    let Some(env) = KubeEnv::start() else { return };
    let client = env.client().await;
    let pp = PostParams::default();
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(
            &pp,
            &Namespace {
                metadata: meta("team"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "team");
    for sa in ["alice", "bob"] {
        sas.create(
            &pp,
            &ServiceAccount {
                metadata: meta(sa),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    Api::<Role>::namespaced(client.clone(), "team")
        .create(
            &pp,
            &Role {
                metadata: meta("rollout-operator"),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec!["ringmaster.dev".into()]),
                    resources: Some(vec!["devicerollouts".into()]),
                    verbs: vec!["get".into(), "patch".into()],
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), "team")
        .create(
            &pp,
            &RoleBinding {
                metadata: meta("alice-operates"),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "rollout-operator".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "alice".into(),
                    namespace: Some("team".into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    let alice_token = token_of(&client, "team", "alice").await;
    let bob_token = token_of(&client, "team", "bob").await;

    // TokenReview names the person; a made-up token names nobody.
    let auth = KubeAuth::new(client.clone());
    let alice = auth.sign_in(&alice_token).await.unwrap().unwrap();
    assert_eq!(alice.name, "system:serviceaccount:team:alice");
    assert!(
        alice
            .groups
            .iter()
            .any(|g| g == "system:serviceaccounts:team"),
        "{:?}",
        alice.groups
    );
    assert_eq!(auth.sign_in("not-a-token").await.unwrap(), None);

    // SubjectAccessReview: alice may patch rollouts in `team` (the binding may take a
    // moment to reach the authorizer), not elsewhere; bob may not.
    let start = Instant::now();
    while !auth.may_patch(&alice, "team", "fw").await.unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "alice's binding never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!auth.may_patch(&alice, "other", "fw").await.unwrap());
    let bob = auth.sign_in(&bob_token).await.unwrap().unwrap();
    assert!(!auth.may_patch(&bob, "team", "fw").await.unwrap());

    // Through the console: each signs in with their own token; alice's promote is queued
    // under her name, bob's is refused.
    let rollout: DeviceRollout = serde_saphyr::from_str(
        "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRollout\nmetadata: {name: fw, namespace: team}\nspec:\n  target: \"*\"\n  content: {device: {properties.desired.x: {v: 1}}}\n  rings: [{name: all, target: \"*\"}]\n",
    )
    .unwrap();
    let backend = Arc::new(ClusterBackend {
        auth,
        rows: vec![RolloutRow {
            namespace: "team".into(),
            name: "fw".into(),
            rollout,
            status: Default::default(),
            error: None,
            created: None,
            deleting: false,
        }],
        ops: Mutex::default(),
    });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", tcp.local_addr().unwrap());
    tokio::spawn(ringmaster::net::serve(
        tcp,
        ringmaster::console::router(backend.clone()),
        ringmaster::net::Limits::DEFAULT,
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    let act = async |token: &str| {
        let r = http
            .post(format!("{url}/console/api/login"))
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let body: serde_json::Value = r.json().await.unwrap();
        http.post(format!("{url}/console/api/rollouts/team/fw/promote"))
            .header("cookie", cookie)
            .header("x-csrf-token", body["csrf"].as_str().unwrap())
            .json(&json!({"revision": "r1", "ring": "all"}))
            .send()
            .await
            .unwrap()
    };
    let r = act(&alice_token).await;
    assert_eq!(r.status(), 202);
    let r = act(&bob_token).await;
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("system:serviceaccount:team:bob may not promote team/fw"),
        "{text}"
    );
    let ops = backend.ops.lock();
    assert_eq!(ops.len(), 1);
    assert!(
        ops[0]
            .id
            .contains("-promote-console-system:serviceaccount:team:alice-"),
        "{}",
        ops[0].id
    );
}
