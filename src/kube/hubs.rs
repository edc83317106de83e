//! Hub clients for the Kubernetes controller: the [hub resolver](crate::resolver) with
//! Hubs and Secrets read through the Kubernetes API.
//!
//! A rollout names a `Hub` in its namespace (`spec.hub`, `default` when omitted). The
//! Hub is read from the API on each reconcile and handed to the resolver, which keeps one
//! driver per Hub while neither its spec nor its Secret changes.
//!
//! Where the connection string comes from: the Secret the Hub's `connectionStringSecret`
//! names, in the Hub's namespace (key `connectionString` by default), and for an `https`
//! url, the server's CA from the same Secret's `ca.crt` key when present. Every other rule
//! (when `url` is used, the in-process hub, the problems) is the resolver's, the same as
//! in directory and git modes.
//!
//! A Hub, Secret or key that is missing, or a spec or connection string that cannot make
//! a client, is an [`Error::HubConfig`] with a [`HubProblem`]: the controller records it
//! in the rollout's status. Its message names the Hub, Secret and key, never what the
//! Secret holds.
//!
//! [`HubClients`] is the seam the tests use to inject an in-process hub.

use super::{Error, HubProblem, Result};
use crate::clock::Clock;
use crate::driver::Driver;
use crate::resolver::{HubConfigError, HubSecret, ResolveError, Resolver, SecretSource};
use crate::resources::Hub;
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject};
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;

/// The Secret key read when `connectionStringSecret.key` is omitted.
pub const DEFAULT_SECRET_KEY: &str = "connectionString";
/// The Secret key holding a PEM CA bundle for `type: embedded` with an `https` url.
pub const CA_KEY: &str = "ca.crt";

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

impl From<HubConfigError> for Error {
    fn from(e: HubConfigError) -> Error {
        Error::HubConfig {
            hub: e.hub,
            problem: e.problem,
            message: e.message,
        }
    }
}

impl From<ResolveError<kube::Error>> for Error {
    fn from(e: ResolveError<kube::Error>) -> Error {
        match e {
            ResolveError::Hub(h) => h.into(),
            ResolveError::Source(k) => Error::Kube(k),
        }
    }
}

/// Connection strings from the Secret a Hub's `connectionStringSecret` names.
pub struct KubeSecrets {
    client: Client,
}

#[async_trait]
impl SecretSource for KubeSecrets {
    type Error = kube::Error;

    async fn secret(
        &self,
        namespace: &str,
        hub: &Hub,
        what: &str,
    ) -> std::result::Result<HubSecret, ResolveError<kube::Error>> {
        let hub_name = hub.name_any();
        let problem = |problem: HubProblem, message: String| {
            ResolveError::Hub(HubConfigError::new(namespace, &hub_name, problem, message))
        };
        let Some(r) = &hub.spec.connection_string_secret else {
            return Err(problem(
                HubProblem::HubConfigInvalid,
                format!(
                    "{what} needs connectionStringSecret, naming a Secret that holds the hub's service connection string"
                ),
            ));
        };
        let key = r.key.as_deref().unwrap_or(DEFAULT_SECRET_KEY);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let Some(secret) = secrets
            .get_opt(&r.name)
            .await
            .map_err(ResolveError::Source)?
        else {
            return Err(problem(
                HubProblem::SecretNotFound,
                format!(
                    "Secret '{}' (the Hub's connectionStringSecret) not found in namespace '{namespace}'; \
                     create it with the hub's service connection string under key '{key}'",
                    r.name
                ),
            ));
        };
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
                HubProblem::SecretKeyNotFound,
                format!(
                    "Secret '{}' has no key '{key}' ({has}); put the hub's service connection string \
                     under '{key}', or name the key in the Hub's connectionStringSecret.key",
                    r.name
                ),
            ));
        };
        let conn = String::from_utf8(conn.0.clone()).map_err(|_| {
            problem(
                HubProblem::HubConfigInvalid,
                format!(
                    "Secret '{}' key '{key}' is not UTF-8 text; it must hold the hub's service connection string",
                    r.name
                ),
            )
        })?;
        Ok(HubSecret {
            connection_string: conn.trim().to_string(),
            ca_pem: data.get(CA_KEY).map(|b| b.0.clone()),
            version: secret.metadata.resource_version.unwrap_or_default(),
            origin: format!("Secret '{}' key '{key}'", r.name),
        })
    }
}

/// The `Hub` an object holds, or the field that keeps it from being one.
fn read_hub(obj: DynamicObject) -> std::result::Result<Hub, String> {
    let mut value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    if let Some(map) = value.as_object_mut() {
        map.entry("apiVersion")
            .or_insert_with(|| crate::resources::API_VERSION.into());
        map.entry("kind").or_insert_with(|| "Hub".into());
    }
    serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

/// Drivers built from `Hub` resources and Secrets read through the Kubernetes API.
pub struct KubeHubs {
    client: Client,
    resolver: Resolver<KubeSecrets>,
}

impl KubeHubs {
    /// Hubs and Secrets read with `client`; one in-memory hub per in-process Hub.
    pub fn new(client: Client, clock: Arc<dyn Clock>) -> KubeHubs {
        KubeHubs {
            resolver: Resolver::per_hub(
                KubeSecrets {
                    client: client.clone(),
                },
                clock,
            ),
            client,
        }
    }

    /// [`KubeHubs::new`] whose hub writes go through only while `leader` leads
    /// ([`super::fence`]).
    pub fn fenced(
        client: Client,
        clock: Arc<dyn Clock>,
        leader: super::leader::Leadership,
    ) -> KubeHubs {
        let mut hubs = KubeHubs::new(client, clock);
        hubs.resolver = hubs
            .resolver
            .with_wrapper(super::fence::FencedHub::wrapper(leader));
        hubs
    }

    /// The driver cached for a Hub resource (tests).
    #[cfg(test)]
    pub(crate) fn cached_driver(&self, namespace: &str, name: &str) -> Option<Arc<Driver>> {
        self.resolver.cached_driver(namespace, name)
    }

    /// The in-process hub kept for a Hub resource (tests).
    #[cfg(test)]
    pub(crate) fn in_process(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<crate::hub::EmbeddedHub> {
        self.resolver.in_process_hub(namespace, name)
    }
}

#[async_trait]
impl HubClients for KubeHubs {
    async fn driver(&self, namespace: &str, name: &str) -> Result<Arc<Driver>> {
        // Read as a plain object and converted here: a Hub that cannot be read (an
        // integer out of range, stored before the schema bounded it) is a problem of
        // that Hub's rollouts, named in their status, not an API error retried forever.
        let hubs: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            namespace,
            &ApiResource::erase::<Hub>(&()),
        );
        let hub = match hubs.get_opt(name).await? {
            Some(obj) => Some(read_hub(obj).map_err(|problem| {
                Error::from(HubConfigError::new(
                    namespace,
                    name,
                    HubProblem::HubConfigInvalid,
                    format!("Hub '{name}' cannot be read: {problem}; fix that field"),
                ))
            })?),
            None => None,
        };
        Ok(self.resolver.driver(namespace, name, hub.as_ref()).await?)
    }
}
