//! Drift on an embedded hub served over its REST API: a rollout's configuration edited
//! or deleted through the API as `az iot hub configuration` would, found by the directory
//! controller's next look, put back (or only reported), with a history entry, a log line
//! and `ringmaster_drift_total` (`docs/rollouts.md`, "Drift").

mod common;

use common::TestServer;
use reqwest::Method;
use ringmaster::run::api::ApiState;
use ringmaster::run::sources::Catalog;
use ringmaster::run::sources::dir::scan;
use ringmaster::run::store::StateStore;
use ringmaster::run::{Controller, HubAccess};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

const OWNER: &str = "iothubowner";

/// A rollout whose canary ring passes at once and whose second ring waits for approval:
/// its configuration stays at ring 0 (`tags.ring='canary'`).
fn rollout(drift: &str) -> String {
    format!(
        "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRollout\nmetadata: {{name: fw, namespace: fleet}}\nspec:\n  target: \"tags.env='prod'\"\n  priority: 5\n  drift: {drift}\n  content:\n    device:\n      properties.desired.fw: {{v: 2}}\n  gate: {{bake: 0s}}\n  rings:\n    - {{name: canary, target: \"tags.ring='canary'\"}}\n    - {{name: all, target: \"*\", approval: true}}\n  baseline: \"off\"\n"
    )
}

struct Setup {
    ctl: Controller,
    server: TestServer,
    store: StateStore,
    api: Arc<ApiState>,
}

async fn setup(root: &Path, drift: &str) -> Setup {
    std::fs::write(root.join("fw.yaml"), rollout(drift)).unwrap();
    let server = TestServer::start(|_| {}).await;
    for (id, ring) in [("d1", "canary"), ("d2", "canary"), ("d3", "broad")] {
        let r = server
            .call(
                Method::PUT,
                &format!("/devices/{id}"),
                OWNER,
                Some(json!({"deviceId": id})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        server
            .hub
            .update_twin(id, &json!({"tags": {"env": "prod", "ring": ring}}), None)
            .unwrap();
    }
    let store = StateStore::in_memory().unwrap();
    let api = Arc::new(ApiState::new(store.clone()));
    let ctl = Controller::new(
        api.clone(),
        Catalog::restore(Vec::new()),
        server.hub.clone(),
        HubAccess::default(),
    );
    let mut s = Setup {
        ctl,
        server,
        store,
        api,
    };
    let snap = scan(root).unwrap();
    s.ctl.ingest(&snap).await.unwrap();
    // Until ring 0 is applied, passed, and ring 1 waits for its approval.
    for _ in 0..20 {
        look(&mut s).await;
        s.server.hub.run_cycle().unwrap();
        if s.status()["ring"]["state"] == "AwaitingApproval" {
            return s;
        }
    }
    panic!("not at the approval: {:#}", s.status());
}

/// One look at every rollout, as the drift interval brings.
async fn look(s: &mut Setup) {
    s.ctl.reconcile_all_now();
    s.ctl.reconcile_due().await.unwrap();
}

impl Setup {
    fn status(&self) -> serde_json::Value {
        let r = self.store.rollout("fleet", "fw").unwrap().unwrap();
        serde_json::to_value(&r.status).unwrap()
    }

    fn id(&self) -> String {
        self.status()["configurationId"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn config(&self) -> common::Reply {
        self.server
            .call(
                Method::GET,
                &format!("/configurations/{}", self.id()),
                OWNER,
                None,
            )
            .await
    }

    /// `ringmaster_drift_total{kind}`.
    fn drift_total(&self, kind: &str) -> u64 {
        let prefix = format!("ringmaster_drift_total{{kind=\"{kind}\"}} ");
        self.api
            .metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn drift_history(&self) -> Vec<String> {
        self.status()["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["decision"] == "Drift")
            .map(|h| h["message"].as_str().unwrap().to_string())
            .collect()
    }

    fn condition(&self, type_: &str) -> Option<serde_json::Value> {
        self.status()["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    }

    /// Edits the configuration's target condition through the REST API (with its etag).
    async fn edit_target(&self, target: &str) {
        let mut c = self.config().await.body;
        c["targetCondition"] = json!(target);
        let etag = format!("\"{}\"", c["etag"].as_str().unwrap());
        let r = self
            .server
            .call_with(
                Method::PUT,
                &format!("/configurations/{}", self.id()),
                OWNER,
                &[("if-match", etag.as_str())],
                Some(c),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    async fn delete(&self) {
        let r = self
            .server
            .call(
                Method::DELETE,
                &format!("/configurations/{}", self.id()),
                OWNER,
                None,
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_configuration_is_put_back_and_a_deleted_one_recreated_at_its_ring() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(dir.path(), "heal").await;
    let canary = s.config().await.body["targetCondition"].clone();
    assert_eq!(canary, "(tags.env='prod') AND (tags.ring='canary')");

    s.edit_target("tags.env='prod'").await;
    look(&mut s).await;
    assert_eq!(s.config().await.body["targetCondition"], canary);
    assert_eq!(s.drift_total("modified"), 1);
    let h = s.drift_history();
    assert_eq!(h.len(), 1, "{h:?}");
    assert!(
        h[0].contains("targetCondition is \"tags.env='prod'\""),
        "{h:?}"
    );
    assert_eq!(s.condition("Drifted").unwrap()["status"], "True");
    // The next look finds the hub as declared.
    look(&mut s).await;
    assert_eq!(s.condition("Drifted").unwrap()["status"], "False");
    assert_eq!(s.drift_total("modified"), 1, "counted once");

    s.delete().await;
    look(&mut s).await;
    let c = s.config().await;
    assert_eq!(c.status, 200, "recreated: {}", c.body);
    assert_eq!(
        c.body["targetCondition"], canary,
        "at its ring, never wider"
    );
    assert_eq!(c.body["labels"]["ringmaster.ring"], "0");
    assert_eq!(s.drift_total("deleted"), 1);
    assert_eq!(s.drift_history().len(), 2);
    // The rollout is where it was: ring 1 waits for its approval.
    look(&mut s).await;
    assert_eq!(s.status()["ring"]["state"], "AwaitingApproval");
    assert_eq!(s.condition("Drifted").unwrap()["status"], "False");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_changes_nothing_and_says_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(dir.path(), "report").await;
    s.edit_target("tags.env='prod'").await;
    let edited = s.config().await.body;
    look(&mut s).await;
    look(&mut s).await;
    let now = s.config().await.body;
    assert_eq!(now["targetCondition"], "tags.env='prod'");
    assert_eq!(now["etag"], edited["etag"], "nothing written");
    assert_eq!(s.drift_total("modified"), 1);
    let stalled = s.condition("Stalled").unwrap();
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "Drifted");
    assert!(
        s.status()["message"]
            .as_str()
            .unwrap()
            .contains("targetCondition"),
        "{:#}",
        s.status()
    );
    s.delete().await;
    look(&mut s).await;
    assert_eq!(s.config().await.status, 404, "not recreated in report mode");
    assert_eq!(s.drift_total("deleted"), 1);
}
