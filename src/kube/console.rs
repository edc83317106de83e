//! The operator console of `run --kube` ([`crate::console`]), served on `--console-addr`
//! (off by default; docs/kube.md, "Operator console").
//!
//! - **Reading**: the `DeviceRollout`s the controller watches (one namespace or all),
//!   listed from the API server, the list reused for [`LIST_TTL`] so that any number of
//!   open pages costs at most one list a second. Troubleshooting and fleet queries go
//!   through the driver the controller uses for the rollout's Hub (the same client and
//!   query budget), resolved at most every [`DRIVER_TTL`].
//! - **Signing in**: with one's own Kubernetes bearer token, named by `TokenReview`
//!   ([`crate::console::kube_auth`]); there is no console token in this mode.
//! - **Acting**: allowed only when `SubjectAccessReview` says the person may `patch`
//!   that DeviceRollout; the request is then written as `kubectl annotate` would write
//!   it (the annotation `ringmaster.dev/operation`, docs/rollouts.md), its id naming the
//!   person, and the controller reconciles the rollout with it at once (an annotation
//!   change wakes the rollout).
//!
//! The controller's service account then also needs `create` on
//! `authentication.k8s.io` `tokenreviews` and `authorization.k8s.io`
//! `subjectaccessreviews` (the chart grants them when `console.enabled`).

use super::controller::read_rollout;
use super::hubs::HubClients;
use crate::console::kube_auth::KubeAuth;
use crate::console::{Backend, Person, RolloutRow};
use crate::driver::Driver;
use crate::resources::operation::OPERATION_ANNOTATION;
use crate::resources::{DeviceRollout, Operation, OperationKind};
use async_trait::async_trait;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one list of the rollouts serves the console's pages.
pub const LIST_TTL: Duration = Duration::from_secs(1);
/// How long a resolved Hub driver is reused before it is asked for again (a Hub or
/// Secret change is picked up within this time).
pub const DRIVER_TTL: Duration = Duration::from_secs(30);

/// A namespace and a name.
type Key = (String, String);
/// A resolved Hub driver (`None`: the Hub cannot be used) and when it was resolved.
type Resolved = (Instant, Option<Arc<Driver>>);

/// What the console reads and acts through in Kubernetes mode.
pub struct KubeConsole {
    client: Client,
    namespace: Option<String>,
    hubs: Arc<dyn HubClients>,
    auth: KubeAuth,
    listed: tokio::sync::Mutex<Option<(Instant, Vec<RolloutRow>)>>,
    /// (namespace, hub) → the driver (`None`: the Hub cannot be used) and when it was
    /// resolved.
    hub_drivers: Mutex<HashMap<Key, Resolved>>,
    /// (namespace, rollout) → the driver of its Hub.
    drivers: Mutex<HashMap<Key, Arc<Driver>>>,
}

impl KubeConsole {
    /// Over the controller's client (which must be allowed to create TokenReviews and
    /// SubjectAccessReviews), the namespace it watches, and its Hub drivers.
    pub fn new(client: Client, namespace: Option<String>, hubs: Arc<dyn HubClients>) -> Self {
        KubeConsole {
            auth: KubeAuth::new(client.clone()),
            client,
            namespace,
            hubs,
            listed: tokio::sync::Mutex::new(None),
            hub_drivers: Mutex::default(),
            drivers: Mutex::default(),
        }
    }

    fn api(&self) -> Api<DynamicObject> {
        let ar = ApiResource::erase::<DeviceRollout>(&());
        match &self.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// The driver of Hub `hub` in `ns`, or `None` while the Hub cannot be used (the
    /// rollout's status says why); either answer is reused for [`DRIVER_TTL`].
    async fn hub_driver(&self, ns: &str, hub: &str) -> Option<Arc<Driver>> {
        let key = (ns.to_string(), hub.to_string());
        if let Some((at, d)) = self.hub_drivers.lock().get(&key)
            && at.elapsed() < DRIVER_TTL
        {
            return d.clone();
        }
        let d = match self.hubs.driver(ns, hub).await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::debug!(namespace = ns, hub, error = %e, "console: no driver for the Hub");
                None
            }
        };
        self.hub_drivers
            .lock()
            .insert(key, (Instant::now(), d.clone()));
        d
    }

    async fn list(&self) -> Result<Vec<RolloutRow>, String> {
        let objects = self
            .api()
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("cannot list DeviceRollouts: {e}"))?;
        let mut rows = Vec::new();
        for obj in objects {
            // One that cannot be read is shown by its status (InvalidSpec) in `kubectl
            // get`; the console lists the rollouts it can draw.
            let ro = match read_rollout(&obj) {
                Ok(ro) => ro,
                Err(why) => {
                    tracing::debug!(rollout = %obj.name_any(), why, "console: skipped");
                    continue;
                }
            };
            let namespace = ro.namespace().unwrap_or_else(|| "default".into());
            let name = ro.name_any();
            let hub = ro.spec.hub.clone().unwrap_or_else(|| "default".into());
            if let Some(d) = self.hub_driver(&namespace, &hub).await {
                self.drivers
                    .lock()
                    .insert((namespace.clone(), name.clone()), d);
            }
            rows.push(RolloutRow {
                created: ro.metadata.creation_timestamp.as_ref().map(|t| t.0),
                deleting: ro.metadata.deletion_timestamp.is_some(),
                status: ro.status.clone().unwrap_or_default(),
                error: None,
                namespace,
                name,
                rollout: ro,
            });
        }
        Ok(rows)
    }
}

#[async_trait]
impl Backend for KubeConsole {
    async fn rollouts(&self) -> Result<Vec<RolloutRow>, String> {
        let mut listed = self.listed.lock().await;
        if let Some((at, rows)) = &*listed
            && at.elapsed() < LIST_TTL
        {
            return Ok(rows.clone());
        }
        let rows = self.list().await?;
        *listed = Some((Instant::now(), rows.clone()));
        Ok(rows)
    }

    async fn request(&self, namespace: &str, name: &str, op: Operation) -> Result<bool, String> {
        let ar = ApiResource::erase::<DeviceRollout>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
        let patch =
            json!({"metadata": {"annotations": {OPERATION_ANNOTATION: op.to_annotation()}}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(rollout = %format!("{namespace}/{name}"), operation = %op.id, kind = op.kind.name(), "console: operator request written");
                // The next page load shows the rollout as it is now.
                *self.listed.lock().await = None;
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(format!(
                "cannot write the request to DeviceRollout {namespace}/{name}: {e}"
            )),
        }
    }

    fn driver(&self, namespace: &str, name: &str) -> Option<Arc<Driver>> {
        self.drivers
            .lock()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
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
        _kind: OperationKind,
    ) -> Result<bool, String> {
        if let Some(ns) = &self.namespace
            && ns != namespace
        {
            return Ok(false);
        }
        self.auth.may_patch(who, namespace, name).await
    }
}
