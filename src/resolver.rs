//! The hub resolver: a `Hub` resource and a secret source → a [`Driver`], for every
//! controller (`run --dir`, `run --git`, `run --kube`).
//!
//! A rollout names a `Hub` in its namespace (`spec.hub`, `default` when omitted). The
//! controller looks the Hub up (in its source, or through the Kubernetes API) and asks
//! [`Resolver::driver`] for the driver of that Hub. The driver is kept while the Hub's
//! uid and spec and the secret's version stay the same: it owns the hub's traffic
//! budgets, which every rollout on that hub must share.
//!
//! How each kind of Hub is reached, in every mode:
//! - `type: embedded` without `url`: a hub inside the controller's process. Kubernetes
//!   mode makes one in-memory hub per Hub resource ([`Resolver::per_hub`]: dropped with
//!   its Hub, replaced when the Hub is recreated under a new uid); directory and git modes
//!   share the one `--embedded-store` hub ([`Resolver::shared`]). Either runs its
//!   configuration cycle every [`EMBEDDED_CYCLE`], as `ringmaster hub serve` does by
//!   default.
//! - `type: azure`, or `type: embedded` with `url`: the Azure REST client with the
//!   service connection string the [`SecretSource`] gives (a Kubernetes Secret, or an
//!   environment variable or file). The connection string is parsed up front, so that a
//!   bad one is reported naming where it came from.
//!
//! **A credential goes only to its own hub.** The client signs its SAS tokens for the
//! connection string's `HostName`, so it sends them only there: without `url`, to
//! `https://<HostName>`; with `url`, only when the url names that same host (and, when
//! `HostName` has a port, that port), else the Hub is `HubConfigInvalid` and nothing is
//! sent. A `type: azure` url must be `https`. See
//! https://learn.microsoft.com/azure/iot-hub/authenticate-authorize-sas for what a token
//! grants.
//!
//! Every reason a Hub cannot be used is one [`HubProblem`] with a message naming the Hub
//! and where its secret was looked for, never what the secret holds. Kubernetes mode
//! shows it as the rollout's `Stalled` condition (the problem's [`HubProblem::reason`]);
//! directory and git modes as the rollout's `error` and `hubProblem` (`(!)` in
//! `ringmaster status`).

use crate::client::Hub as HubClient;
use crate::client::azure::{AzureHub, AzureHubOptions, RequestBudget};
use crate::clock::Clock;
use crate::driver::Driver;
use crate::hub::EmbeddedHub;
use crate::iothub::sas::ConnectionString;
use crate::resources::{Hub, HubType};
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How often an in-process embedded hub runs its configuration cycle, in every mode: the
/// default of `ringmaster hub serve --cycle-interval`, so a Hub behaves the same in
/// process and served.
pub const EMBEDDED_CYCLE: Duration = Duration::from_secs(5);

/// Why a rollout's Hub cannot be used: a person has to create or fix something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HubProblem {
    /// No Hub of the name the rollout gives (`spec.hub`, `default` when omitted).
    HubNotFound,
    /// The secret holding the Hub's connection string does not exist (the Secret the
    /// Hub's `connectionStringSecret` names; the environment variable or file of the Hub).
    SecretNotFound,
    /// The Secret exists but has no such key.
    SecretKeyNotFound,
    /// The Hub's spec, or what its secret holds, cannot make a client (including a `url`
    /// that is not the connection string's host).
    HubConfigInvalid,
}

impl HubProblem {
    /// Every problem.
    pub const ALL: [HubProblem; 4] = [
        HubProblem::HubNotFound,
        HubProblem::SecretNotFound,
        HubProblem::SecretKeyNotFound,
        HubProblem::HubConfigInvalid,
    ];

    /// Its name: the reason of the `Stalled` condition and of the Warning event in
    /// Kubernetes mode, the `hubProblem` of a rollout in directory and git modes.
    pub fn reason(self) -> &'static str {
        match self {
            HubProblem::HubNotFound => "HubNotFound",
            HubProblem::SecretNotFound => "SecretNotFound",
            HubProblem::SecretKeyNotFound => "SecretKeyNotFound",
            HubProblem::HubConfigInvalid => "HubConfigInvalid",
        }
    }
}

impl fmt::Display for HubProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// A Hub that cannot be used: which one, why, and a message that names the Hub and where
/// its secret was looked for but holds no secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Hub {hub}: {message}")]
pub struct HubConfigError {
    /// `namespace/name`.
    pub hub: String,
    /// The kind of problem.
    pub problem: HubProblem,
    /// What is wrong and what would fix it.
    pub message: String,
}

impl HubConfigError {
    /// A problem of Hub `name` in `namespace`.
    pub fn new(
        namespace: &str,
        name: &str,
        problem: HubProblem,
        message: impl Into<String>,
    ) -> HubConfigError {
        HubConfigError {
            hub: format!("{namespace}/{name}"),
            problem,
            message: message.into(),
        }
    }
}

/// Why [`Resolver::driver`] gives no driver: the Hub cannot be used, or the secret source
/// failed to answer (the Kubernetes API is unreachable, say: worth a retry, not a stall).
#[derive(Debug)]
pub enum ResolveError<E> {
    /// A person has to create or fix something.
    Hub(HubConfigError),
    /// The secret source failed.
    Source(E),
}

impl<E> From<HubConfigError> for ResolveError<E> {
    fn from(e: HubConfigError) -> Self {
        ResolveError::Hub(e)
    }
}

/// What a secret source holds for a Hub. Its `Debug` shows no secret.
#[derive(Clone)]
pub struct HubSecret {
    /// The service connection string (`HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`).
    pub connection_string: String,
    /// A PEM CA bundle to trust for the hub's `https` url.
    pub ca_pem: Option<Vec<u8>>,
    /// Changes when the secret does (a rotated key rebuilds the client).
    pub version: String,
    /// Where it was read, for messages (`Secret 'iot-hub' key 'connectionString'`,
    /// `environment variable RINGMASTER_HUB_FLEET_PROD`).
    pub origin: String,
}

impl fmt::Debug for HubSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSecret")
            .field("origin", &self.origin)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Where connection strings come from: a Kubernetes Secret, or the environment and files.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// Failures of the source itself (not of what it holds).
    type Error: Send;

    /// The secret of Hub `hub` in `namespace`, which needs one (`type: azure`, or
    /// `type: embedded` with `url`). `what` names the kind of Hub for messages.
    async fn secret(
        &self,
        namespace: &str,
        hub: &Hub,
        what: &str,
    ) -> Result<HubSecret, ResolveError<Self::Error>>;
}

/// Checks that `url` is where a token signed for `host_name` may go: the same host
/// (without case), the same port when `host_name` has one, and `https` when `https_only`.
/// The error says what is wrong, naming the url and the host name (neither is secret).
pub fn check_url(url: &str, host_name: &str, https_only: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("url '{url}' is not a URL ({e}); give e.g. https://{host_name}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if !https_only => {}
        other => {
            let allowed = if https_only { "https" } else { "http or https" };
            return Err(format!(
                "url '{url}' has scheme '{other}'; it must be {allowed}"
            ));
        }
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Not echoed: it holds a password.
        return Err(
            "the Hub's url holds user credentials; remove them, the connection string authenticates"
                .to_string(),
        );
    }
    let (want_host, want_port) = split_host_port(host_name);
    let host = parsed
        .host_str()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let port_ok = match want_port {
        Some(p) => parsed.port_or_known_default() == Some(p),
        None => true,
    };
    if host != want_host || !port_ok {
        return Err(format!(
            "url '{url}' is not the host the connection string is for (HostName '{host_name}'); \
             its SAS tokens are signed for that host and are sent nowhere else: point url at \
             '{host_name}', or use the connection string of the hub at '{url}'"
        ));
    }
    Ok(())
}

/// `host[:port]` (IPv6 in brackets) → the lowercase host (brackets kept, as
/// [`reqwest::Url::host_str`] shows it) and the port if any.
fn split_host_port(host_name: &str) -> (String, Option<u16>) {
    let h = host_name.trim().trim_end_matches('/');
    let (host, port) = if let Some(end) = h.strip_prefix('[').and_then(|r| r.find(']')) {
        let host = &h[..end + 2];
        let rest = &h[end + 2..];
        (host, rest.strip_prefix(':').and_then(|p| p.parse().ok()))
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
                (host, port.parse().ok())
            }
            _ => (h, None),
        }
    };
    (host.trim_end_matches('.').to_ascii_lowercase(), port)
}

/// The client for a Hub reached over REST (`type: azure`, or `type: embedded` with `url`),
/// after checking the connection string and where it would be sent.
pub fn remote_client(
    namespace: &str,
    hub_name: &str,
    hub: &Hub,
    secret: HubSecret,
) -> Result<Arc<dyn HubClient>, HubConfigError> {
    let invalid = |message: String| {
        HubConfigError::new(namespace, hub_name, HubProblem::HubConfigInvalid, message)
    };
    // The error names the part that is wrong, never its value.
    let conn = ConnectionString::parse(&secret.connection_string).map_err(|e| {
        invalid(format!(
            "{} does not hold a valid service connection string: {e}",
            secret.origin
        ))
    })?;
    if let Some(url) = &hub.spec.url {
        check_url(url, &conn.host_name, hub.spec.type_ == HubType::Azure).map_err(|e| {
            invalid(format!(
                "{e} (the connection string is from {})",
                secret.origin
            ))
        })?;
    }
    let opts = AzureHubOptions {
        base_url: hub.spec.url.clone(),
        ca_pem: secret.ca_pem,
        budget: RequestBudget::for_limits(&hub.spec.limits),
        ..Default::default()
    };
    let client = AzureHub::new(&secret.connection_string, opts)
        .map_err(|e| invalid(format!("cannot make a client for the hub: {}", e.message)))?;
    Ok(Arc::new(client))
}

/// A Hub resource: (namespace, name).
type HubKey = (String, String);

/// A driver and what it was built from (the Hub's uid and spec, the secret's version).
struct Cached {
    fingerprint: String,
    driver: Arc<Driver>,
}

/// An in-process hub of one Hub resource and the task running its configuration cycles.
/// The task holds a clone of the hub, so it is aborted when this is dropped: the hub's
/// memory goes with it.
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

/// Drivers for `Hub` resources, cached, built with the secrets of `S`.
pub struct Resolver<S> {
    secrets: S,
    clock: Arc<dyn Clock>,
    /// The hub every in-process Hub uses (directory and git modes); `None` for one
    /// in-memory hub per Hub resource (Kubernetes mode).
    shared: Option<EmbeddedHub>,
    drivers: Mutex<HashMap<HubKey, Cached>>,
    /// In-process hubs per Hub resource, kept when their Hub's limits change so their
    /// state survives, and dropped when their Hub is found gone.
    embedded: Mutex<HashMap<HubKey, InProcess>>,
    /// Wraps every hub client before a driver gets it (Kubernetes mode: the leader fence).
    wrap: Option<HubWrapper>,
}

/// A function that wraps a hub client ([`Resolver::with_wrapper`]).
pub type HubWrapper = Arc<dyn Fn(Arc<dyn HubClient>) -> Arc<dyn HubClient> + Send + Sync>;

impl<S: SecretSource> Resolver<S> {
    /// One in-memory hub per `type: embedded` Hub without `url` (Kubernetes mode).
    pub fn per_hub(secrets: S, clock: Arc<dyn Clock>) -> Resolver<S> {
        Resolver {
            secrets,
            clock,
            shared: None,
            drivers: Mutex::default(),
            embedded: Mutex::default(),
            wrap: None,
        }
    }

    /// Every hub client goes through `wrap` before a driver gets it.
    pub fn with_wrapper(mut self, wrap: HubWrapper) -> Resolver<S> {
        self.wrap = Some(wrap);
        self
    }

    /// Every `type: embedded` Hub without `url` is `hub` (directory and git modes, whose
    /// in-process hub is `--embedded-store`; the caller runs its cycles).
    pub fn shared(secrets: S, clock: Arc<dyn Clock>, hub: EmbeddedHub) -> Resolver<S> {
        Resolver {
            shared: Some(hub),
            ..Resolver::per_hub(secrets, clock)
        }
    }

    /// The secret source.
    pub fn secrets(&self) -> &S {
        &self.secrets
    }

    /// The driver for Hub `name` in `namespace`, as `hub` (`None`: there is no such Hub,
    /// which forgets what was kept for it).
    pub async fn driver(
        &self,
        namespace: &str,
        name: &str,
        hub: Option<&Hub>,
    ) -> Result<Arc<Driver>, ResolveError<S::Error>> {
        let key = (namespace.to_string(), name.to_string());
        let Some(hub) = hub else {
            self.forget(namespace, name);
            return Err(HubConfigError::new(
                namespace,
                name,
                HubProblem::HubNotFound,
                format!(
                    "Hub '{name}' not found in namespace '{namespace}'; create it, or set the rollout's \
                     spec.hub to an existing Hub (spec.hub defaults to 'default')"
                ),
            )
            .into());
        };
        let in_process = hub.spec.type_ == HubType::Embedded && hub.spec.url.is_none();
        let secret = if in_process {
            None
        } else {
            let what = if hub.spec.type_ == HubType::Embedded {
                "type: embedded with url"
            } else {
                "type: azure"
            };
            Some(self.secrets.secret(namespace, hub, what).await?)
        };
        let fingerprint = format!(
            "{}|{}|{}",
            hub.metadata.uid.as_deref().unwrap_or_default(),
            serde_json::to_string(&hub.spec).unwrap_or_default(),
            secret.as_ref().map(|s| s.version.as_str()).unwrap_or("")
        );
        if let Some(cached) = self.drivers.lock().get(&key)
            && cached.fingerprint == fingerprint
        {
            return Ok(cached.driver.clone());
        }
        let client: Arc<dyn HubClient> = match secret {
            None => Arc::new(self.in_process(&key, hub)),
            Some(secret) => {
                // No longer (or never) in process.
                self.embedded.lock().remove(&key);
                remote_client(namespace, name, hub, secret)?
            }
        };
        let client = match &self.wrap {
            Some(wrap) => wrap(client),
            None => client,
        };
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

    /// The in-process hub of a `type: embedded` Hub without `url`.
    fn in_process(&self, key: &HubKey, hub: &Hub) -> EmbeddedHub {
        if let Some(shared) = &self.shared {
            return shared.clone();
        }
        let uid = hub.metadata.uid.clone();
        let mut embedded = self.embedded.lock();
        if embedded.get(key).is_some_and(|e| e.uid != uid) {
            embedded.remove(key);
        }
        embedded
            .entry(key.clone())
            .or_insert_with(|| {
                let hub = EmbeddedHub::in_memory(self.clock.clone());
                let cycles = hub.spawn_cycles(EMBEDDED_CYCLE);
                InProcess { uid, hub, cycles }
            })
            .hub
            .clone()
    }

    /// Forgets a Hub that is gone: its cached driver and, for an in-process hub of its
    /// own, the hub itself and its cycle task.
    pub fn forget(&self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        let driver = self.drivers.lock().remove(&key);
        let in_process = self.embedded.lock().remove(&key);
        if driver.is_some() || in_process.is_some() {
            tracing::info!(hub = %format!("{namespace}/{name}"), in_process = in_process.is_some(), "the Hub is gone; its client is dropped");
        }
    }

    /// The driver cached for a Hub resource.
    pub fn cached_driver(&self, namespace: &str, name: &str) -> Option<Arc<Driver>> {
        self.drivers
            .lock()
            .get(&(namespace.to_string(), name.to_string()))
            .map(|c| c.driver.clone())
    }

    /// The in-process hub kept for a Hub resource of its own (Kubernetes mode).
    pub fn in_process_hub(&self, namespace: &str, name: &str) -> Option<EmbeddedHub> {
        self.embedded
            .lock()
            .get(&(namespace.to_string(), name.to_string()))
            .map(|e| e.hub.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_must_name_the_connection_strings_host() {
        // Same host, same port (as `hub serve` prints them).
        assert!(check_url("http://127.0.0.1:8080", "127.0.0.1:8080", false).is_ok());
        assert!(check_url("https://LOCALHOST:8443/", "localhost:8443", false).is_ok());
        assert!(check_url("https://[::1]:8443", "[::1]:8443", false).is_ok());
        assert!(check_url("https://h.azure-devices.net", "H.azure-devices.net", true).is_ok());
        // Another host, or another port of a host:port, is refused.
        for (url, host) in [
            ("http://127.0.0.1:9", "victim.azure-devices.net"),
            ("http://127.0.0.1:9", "127.0.0.1:8080"),
            ("https://evil.example", "h.azure-devices.net"),
            (
                "https://h.azure-devices.net.evil.example",
                "h.azure-devices.net",
            ),
            ("https://user:pw@h.azure-devices.net", "h.azure-devices.net"),
            ("http://h.azure-devices.net", "h.azure-devices.net"),
            ("ftp://h.azure-devices.net", "h.azure-devices.net"),
            ("not a url", "h.azure-devices.net"),
        ] {
            let https_only = host.ends_with("azure-devices.net");
            let e = check_url(url, host, https_only).expect_err(url);
            if url.contains('@') {
                assert!(!e.contains("pw"), "{e}");
            } else {
                assert!(e.contains(url), "{e}");
            }
        }
    }
}
