//! Hub clients for the controller: one cached [`Driver`] per `Hub` resource.
//!
//! A rollout names a `Hub` in its namespace (`spec.hub`, `default` when omitted). The
//! driver for it is built from the Hub's spec and, where it needs one, the Secret holding
//! the service connection string, and is kept while neither changes: the driver owns the
//! hub's traffic budgets, which every rollout on that hub must share.
//!
//! How each kind of Hub is reached:
//! - `type: azure`: [`AzureHub`] from `connectionStringSecret` (key `connectionString`
//!   by default).
//! - `type: embedded` with `url`: [`AzureHub`] pointed at a `ringmaster hub serve`, with the
//!   connection string from `connectionStringSecret` (required), and the server's CA
//!   from the same Secret's `ca.crt` key when present.
//! - `type: embedded` without `url`: an in-memory [`EmbeddedHub`] inside the controller,
//!   one per Hub resource (its state is lost on restart: for trying the CRDs out, not for
//!   a fleet). It lives as long as its Hub: a reconcile that finds the Hub gone (or
//!   recreated, with a new uid) drops it and stops its configuration cycles.
//!
//! A Hub, Secret or key that is missing, or a spec or connection string that cannot make
//! a client, is an [`Error::HubConfig`] with a [`HubProblem`]: the controller records it
//! in the rollout's status. Its message names the Hub, Secret and key, never what the
//! Secret holds.
//!
//! [`HubClients`] is the seam the tests use to inject an in-process hub.

use super::{Error, HubProblem, Result};
use crate::client::azure::{AzureHub, AzureHubOptions, RequestBudget};
use crate::clock::Clock;
use crate::driver::Driver;
use crate::hub::EmbeddedHub;
use crate::iothub::sas::ConnectionString;
use crate::resources::{Hub, HubType};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// The Secret key read when `connectionStringSecret.key` is omitted.
pub const DEFAULT_SECRET_KEY: &str = "connectionString";
/// The Secret key holding a PEM CA bundle for `type: embedded` with an `https` url.
pub const CA_KEY: &str = "ca.crt";
/// How often an in-process embedded hub runs its configuration cycle.
const EMBEDDED_CYCLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Gives the driver for the Hub a rollout names.
#[async_trait]
pub trait HubClients: Send + Sync {
    /// The driver for Hub `name` in `namespace`.
    async fn driver(&self, namespace: &str, name: &str) -> Result<Arc<Driver>>;
}

/// One driver for every rollout, whatever Hub it names (tests, and single-hub setups).
pub struct FixedHub(pub Arc<Driver>);

#[async_trait]
impl HubClients for FixedHub {
    async fn driver(&self, _namespace: &str, _name: &str) -> Result<Arc<Driver>> {
        Ok(self.0.clone())
    }
}

/// A Hub resource: (namespace, name).
type HubKey = (String, String);

/// A driver and what it was built from (the Hub's uid and spec, the Secret's version).
struct Cached {
    fingerprint: String,
    driver: Arc<Driver>,
}

/// An in-process hub and the task running its configuration cycles. The task holds a
/// clone of the hub, so it is aborted when this is dropped: the hub's memory goes with it.
struct InProcess {
    /// The uid of the Hub resource it was made for: a Hub deleted and created again under
    /// the same name gets a new, empty hub.
    uid: Option<String>,
    hub: EmbeddedHub,
    cycles: tokio::task::JoinHandle<()>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.cycles.abort();
    }
}

/// What a Hub's Secret holds for the client.
struct HubSecret {
    /// The Secret's name and the key read, for messages.
    name: String,
    key: String,
    connection_string: String,
    ca_pem: Option<Vec<u8>>,
    resource_version: String,
}

/// Drivers built from `Hub` resources and Secrets read through the Kubernetes API.
pub struct KubeHubs {
    client: Client,
    clock: Arc<dyn Clock>,
    drivers: Mutex<HashMap<HubKey, Cached>>,
    /// In-process hubs, kept when their Hub's limits change so their state survives, and
    /// dropped when their Hub is found gone.
    embedded: Mutex<HashMap<HubKey, InProcess>>,
}

fn problem(namespace: &str, hub: &str, problem: HubProblem, message: String) -> Error {
    Error::HubConfig {
        hub: format!("{namespace}/{hub}"),
        problem,
        message,
    }
}

impl KubeHubs {
    pub fn new(client: Client, clock: Arc<dyn Clock>) -> KubeHubs {
        KubeHubs {
            client,
            clock,
            drivers: Mutex::default(),
            embedded: Mutex::default(),
        }
    }

    /// The connection string and optional CA a Hub's Secret holds, with the Secret's
    /// resourceVersion (so a rotated key rebuilds the client). `None` when the Hub names
    /// no Secret, or needs none (an in-process hub).
    async fn secret(&self, namespace: &str, hub: &Hub) -> Result<Option<HubSecret>> {
        let Some(r) = &hub.spec.connection_string_secret else {
            return Ok(None);
        };
        if hub.spec.type_ == HubType::Embedded && hub.spec.url.is_none() {
            return Ok(None);
        }
        let hub_name = hub.name_any();
        let key = r.key.as_deref().unwrap_or(DEFAULT_SECRET_KEY);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = secrets.get_opt(&r.name).await?.ok_or_else(|| {
            problem(namespace, &hub_name, HubProblem::SecretNotFound, format!(
                "Secret '{}' (the Hub's connectionStringSecret) not found in namespace '{namespace}'; \
                 create it with the hub's service connection string under key '{key}'",
                r.name
            ))
        })?;
        let data = secret.data.unwrap_or_default();
        let Some(conn) = data.get(key) else {
            // Key names only: the values are secret.
            let keys = data.keys().map(|k| format!("'{k}'")).collect::<Vec<_>>();
            let has = if keys.is_empty() {
                "it has no keys".to_string()
            } else {
                format!("it has {}", keys.join(", "))
            };
            return Err(problem(
                namespace,
                &hub_name,
                HubProblem::SecretKeyNotFound,
                format!(
                    "Secret '{}' has no key '{key}' ({has}); put the hub's service connection string \
                 under '{key}', or name the key in the Hub's connectionStringSecret.key",
                    r.name
                ),
            ));
        };
        let conn = String::from_utf8(conn.0.clone()).map_err(|_| {
            problem(namespace, &hub_name, HubProblem::HubConfigInvalid, format!(
                "Secret '{}' key '{key}' is not UTF-8 text; it must hold the hub's service connection string",
                r.name
            ))
        })?;
        let ca = data.get(CA_KEY).map(|b| b.0.clone());
        Ok(Some(HubSecret {
            name: r.name.clone(),
            key: key.to_string(),
            connection_string: conn.trim().to_string(),
            ca_pem: ca,
            resource_version: secret.metadata.resource_version.unwrap_or_default(),
        }))
    }

    fn build(
        &self,
        namespace: &str,
        hub: &Hub,
        secret: Option<HubSecret>,
    ) -> Result<Arc<dyn crate::client::Hub>> {
        let name = hub.name_any();
        let key = (namespace.to_string(), name.clone());
        let invalid =
            |message: String| problem(namespace, &name, HubProblem::HubConfigInvalid, message);
        match (&hub.spec.type_, &hub.spec.url) {
            (HubType::Embedded, None) => {
                let uid = hub.uid();
                let mut embedded = self.embedded.lock();
                if embedded.get(&key).is_some_and(|e| e.uid != uid) {
                    embedded.remove(&key);
                }
                let hub = embedded
                    .entry(key)
                    .or_insert_with(|| {
                        let hub = EmbeddedHub::in_memory(self.clock.clone());
                        let cycles = hub.spawn_cycles(EMBEDDED_CYCLE);
                        InProcess { uid, hub, cycles }
                    })
                    .hub
                    .clone();
                Ok(Arc::new(hub))
            }
            (type_, url) => {
                // No longer (or never) in process.
                self.embedded.lock().remove(&key);
                let what = if *type_ == HubType::Embedded {
                    "type: embedded with url"
                } else {
                    "type: azure"
                };
                let secret = secret.ok_or_else(|| {
                    invalid(format!(
                        "{what} needs connectionStringSecret, naming a Secret that holds the hub's service connection string"
                    ))
                })?;
                // Parsed here for a message that names the Secret; the error names the part
                // that is wrong, never its value.
                if let Err(e) = ConnectionString::parse(&secret.connection_string) {
                    return Err(invalid(format!(
                        "Secret '{}' key '{}' does not hold a valid service connection string: {e}",
                        secret.name, secret.key
                    )));
                }
                let opts = AzureHubOptions {
                    base_url: if *type_ == HubType::Embedded {
                        url.clone()
                    } else {
                        None
                    },
                    ca_pem: secret.ca_pem,
                    budget: RequestBudget::for_limits(&hub.spec.limits),
                    ..Default::default()
                };
                let client = AzureHub::new(&secret.connection_string, opts).map_err(|e| {
                    invalid(format!("cannot make a client for the hub: {}", e.message))
                })?;
                Ok(Arc::new(client))
            }
        }
    }

    /// Forgets a Hub that is gone: its cached driver and, for an in-process hub, the hub
    /// itself and its cycle task.
    fn forget(&self, key: &HubKey) {
        let driver = self.drivers.lock().remove(key);
        let in_process = self.embedded.lock().remove(key);
        if driver.is_some() || in_process.is_some() {
            tracing::info!(hub = %format!("{}/{}", key.0, key.1), in_process = in_process.is_some(), "the Hub is gone; its client is dropped");
        }
    }

    /// The driver cached for a Hub resource (tests).
    #[cfg(test)]
    pub(crate) fn cached_driver(&self, namespace: &str, name: &str) -> Option<Arc<Driver>> {
        self.drivers
            .lock()
            .get(&(namespace.to_string(), name.to_string()))
            .map(|c| c.driver.clone())
    }

    /// The in-process hub kept for a Hub resource (tests).
    #[cfg(test)]
    pub(crate) fn in_process(&self, namespace: &str, name: &str) -> Option<EmbeddedHub> {
        self.embedded
            .lock()
            .get(&(namespace.to_string(), name.to_string()))
            .map(|e| e.hub.clone())
    }
}

#[async_trait]
impl HubClients for KubeHubs {
    async fn driver(&self, namespace: &str, name: &str) -> Result<Arc<Driver>> {
        let key = (namespace.to_string(), name.to_string());
        let hubs: Api<Hub> = Api::namespaced(self.client.clone(), namespace);
        let Some(hub) = hubs.get_opt(name).await? else {
            self.forget(&key);
            return Err(problem(
                namespace,
                name,
                HubProblem::HubNotFound,
                format!(
                    "Hub '{name}' not found in namespace '{namespace}'; create it, or set the rollout's \
                 spec.hub to an existing Hub (spec.hub defaults to 'default')"
                ),
            ));
        };
        let secret = self.secret(namespace, &hub).await?;
        let fingerprint = format!(
            "{}|{}|{}",
            hub.uid().unwrap_or_default(),
            serde_json::to_string(&hub.spec).unwrap_or_default(),
            secret
                .as_ref()
                .map(|s| s.resource_version.as_str())
                .unwrap_or("")
        );
        if let Some(cached) = self.drivers.lock().get(&key)
            && cached.fingerprint == fingerprint
        {
            return Ok(cached.driver.clone());
        }
        let client = self.build(namespace, &hub, secret)?;
        let driver = Arc::new(Driver::with_limits(
            client,
            self.clock.clone(),
            hub.spec.limits.clone(),
        ));
        self.drivers.lock().insert(
            key,
            Cached {
                fingerprint,
                driver: driver.clone(),
            },
        );
        Ok(driver)
    }
}
