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
//!   one per Hub resource, kept for the life of the process (its state is lost on restart:
//!   for trying the CRDs out, not for a fleet).
//!
//! [`HubClients`] is the seam the tests use to inject an in-process hub.

use super::{Error, Result};
use crate::client::azure::{AzureHub, AzureHubOptions, RequestBudget};
use crate::clock::Clock;
use crate::driver::Driver;
use crate::hub::EmbeddedHub;
use crate::resources::{Hub, HubType};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
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

/// A driver and what it was built from (the Hub's spec and the Secret's version).
struct Cached {
    fingerprint: String,
    driver: Arc<Driver>,
}

/// What a Hub's Secret holds for the client.
struct HubSecret {
    connection_string: String,
    ca_pem: Option<Vec<u8>>,
    resource_version: String,
}

/// Drivers built from `Hub` resources and Secrets read through the Kubernetes API.
pub struct KubeHubs {
    client: Client,
    clock: Arc<dyn Clock>,
    drivers: Mutex<HashMap<HubKey, Cached>>,
    /// In-process hubs, kept when their Hub's limits change so their state survives.
    embedded: Mutex<HashMap<HubKey, EmbeddedHub>>,
}

impl KubeHubs {
    pub fn new(client: Client, clock: Arc<dyn Clock>) -> KubeHubs {
        KubeHubs { client, clock, drivers: Mutex::default(), embedded: Mutex::default() }
    }

    /// The connection string and optional CA a Hub's Secret holds, with the Secret's
    /// resourceVersion (so a rotated key rebuilds the client).
    async fn secret(&self, namespace: &str, hub: &Hub) -> Result<Option<HubSecret>> {
        let Some(r) = &hub.spec.connection_string_secret else { return Ok(None) };
        let hub_name = hub.metadata.name.clone().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = secrets.get_opt(&r.name).await?.ok_or_else(|| Error::HubConfig {
            hub: format!("{namespace}/{hub_name}"),
            message: format!("Secret '{}' not found", r.name),
        })?;
        let key = r.key.as_deref().unwrap_or(DEFAULT_SECRET_KEY);
        let data = secret.data.unwrap_or_default();
        let conn = data.get(key).ok_or_else(|| Error::HubConfig {
            hub: format!("{namespace}/{hub_name}"),
            message: format!("Secret '{}' has no key '{key}'", r.name),
        })?;
        let conn = String::from_utf8(conn.0.clone()).map_err(|_| Error::HubConfig {
            hub: format!("{namespace}/{hub_name}"),
            message: format!("Secret '{}' key '{key}' is not UTF-8", r.name),
        })?;
        let ca = data.get(CA_KEY).map(|b| b.0.clone());
        Ok(Some(HubSecret {
            connection_string: conn.trim().to_string(),
            ca_pem: ca,
            resource_version: secret.metadata.resource_version.unwrap_or_default(),
        }))
    }

    fn build(&self, namespace: &str, hub: &Hub, secret: Option<HubSecret>) -> Result<Arc<dyn crate::client::Hub>> {
        let name = hub.metadata.name.clone().unwrap_or_default();
        let config_error = |message: String| Error::HubConfig { hub: format!("{namespace}/{name}"), message };
        match (&hub.spec.type_, &hub.spec.url) {
            (HubType::Embedded, None) => {
                let key = (namespace.to_string(), name.clone());
                let hub = self
                    .embedded
                    .lock()
                    .entry(key)
                    .or_insert_with(|| {
                        let h = EmbeddedHub::in_memory(self.clock.clone());
                        h.spawn_cycles(EMBEDDED_CYCLE);
                        h
                    })
                    .clone();
                Ok(Arc::new(hub))
            }
            (type_, url) => {
                let secret = secret.ok_or_else(|| config_error("connectionStringSecret is required".into()))?;
                let opts = AzureHubOptions {
                    base_url: if *type_ == HubType::Embedded { url.clone() } else { None },
                    ca_pem: secret.ca_pem,
                    budget: RequestBudget::for_limits(&hub.spec.limits),
                    ..Default::default()
                };
                let client = AzureHub::new(&secret.connection_string, opts).map_err(|e| config_error(e.to_string()))?;
                Ok(Arc::new(client))
            }
        }
    }
}

#[async_trait]
impl HubClients for KubeHubs {
    async fn driver(&self, namespace: &str, name: &str) -> Result<Arc<Driver>> {
        let hubs: Api<Hub> = Api::namespaced(self.client.clone(), namespace);
        let hub = hubs.get_opt(name).await?.ok_or_else(|| Error::HubConfig {
            hub: format!("{namespace}/{name}"),
            message: "no such Hub".into(),
        })?;
        let secret = self.secret(namespace, &hub).await?;
        let fingerprint = format!(
            "{}|{}",
            serde_json::to_string(&hub.spec).unwrap_or_default(),
            secret.as_ref().map(|s| s.resource_version.as_str()).unwrap_or("")
        );
        let key = (namespace.to_string(), name.to_string());
        if let Some(cached) = self.drivers.lock().get(&key)
            && cached.fingerprint == fingerprint
        {
            return Ok(cached.driver.clone());
        }
        let client = self.build(namespace, &hub, secret)?;
        let driver = Arc::new(Driver::with_limits(client, self.clock.clone(), hub.spec.limits.clone()));
        self.drivers.lock().insert(key, Cached { fingerprint, driver: driver.clone() });
        Ok(driver)
    }
}
