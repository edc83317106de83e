//! `ringmaster run --kube`: the controller for `DeviceRollout` custom resources.
//!
//! - [`controller`]: reconcile (finalizer → hub → driver → status → events) and the
//!   error policy;
//! - [`hubs`]: a cached [`Driver`](crate::driver::Driver) per `Hub` resource, built by
//!   the [hub resolver](crate::resolver) from its spec and Secret;
//! - [`leader`]: leader election on a Lease (only the leader writes);
//! - [`fence`]: hub writes only while the Lease is held, each bounded below its duration;
//! - [`webhook`]: the validating admission webhook (`kubectl apply` runs `ringmaster
//!   validate`'s checks);
//! - [`metrics`]: Prometheus metrics, `/healthz` and `/readyz`;
//! - [`events`]: one new Event per transition;
//! - [`listings`]: one listing of a hub's configurations per pass;
//! - [`console`]: the operator console on `--console-addr` (sign-in with one's own
//!   Kubernetes token, actions allowed by SubjectAccessReview).
//!
//! The controller watches `DeviceRollout`s and `Hub`s as plain objects (a Hub's change
//! reconciles the rollouts naming it; a rollout's own status write does not, see
//! [`wakes`]). Secrets are read on each reconcile, not watched, so the
//! controller needs no cluster-wide watch on Secrets; a rotated key is picked up at the
//! next reconcile (the Secret's resourceVersion is part of the cached client's key), and
//! a Secret created after a rollout stalled for want of it is found by the failure
//! backoff's retry.
//!
//! RBAC the controller needs (what `manifests/` must grant):
//! - `ringmaster.dev` `devicerollouts`: get, list, watch, patch
//! - `ringmaster.dev` `devicerollouts/status`: get, patch
//! - `ringmaster.dev` `hubs`: get, list, watch
//! - core `secrets`: get
//! - `events.k8s.io` `events`: create (every transition is a new Event)
//! - `coordination.k8s.io` `leases`: get, create, patch (in the lease namespace)
//! - with `--console-addr`: `authentication.k8s.io` `tokenreviews` and
//!   `authorization.k8s.io` `subjectaccessreviews`: create

pub mod console;
pub mod controller;
pub mod drift_events;
pub mod events;
pub mod fence;
pub mod hubs;
pub mod leader;
pub mod listings;
pub mod metrics;
pub mod webhook;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use crate::clock::SystemClock;
use crate::resources::{DeviceRollout, Hub};
use controller::{Context, bounded, error_policy, reconcile_object};
use futures::StreamExt;
use hubs::{HubClients, KubeHubs};
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, PredicateConfig, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use leader::Leadership;
use metrics::{Health, Metrics};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The finalizer that keeps a deleted rollout until its configurations are gone.
pub const FINALIZER: &str = "ringmaster.dev/cleanup";
/// The field manager of every write (status, lease).
pub const FIELD_MANAGER: &str = "ringmaster";
/// The controller's name in Events.
pub const CONTROLLER_NAME: &str = "ringmaster";

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed (retried with backoff).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The rollout's Hub cannot be used as it stands (the reconcile records it in the
    /// status as `Stalled`, reason [`HubProblem::reason`]). The message names the Hub,
    /// Secret and key involved and never holds secret material.
    #[error("Hub {hub}: {message}")]
    HubConfig {
        /// The Hub as `namespace/name`.
        hub: String,
        /// What is missing or wrong.
        problem: HubProblem,
        /// What to create or fix.
        message: String,
    },
    /// The DeviceRollout (named here) came without a namespace; it is a namespaced kind,
    /// so this means the API server sent something unexpected.
    #[error("DeviceRollout {0} has no namespace")]
    NoNamespace(String),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::HubConfig { .. } => "hub_config",
            Error::NoNamespace(_) => "no_namespace",
        }
    }
}

/// Result alias for the controller's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use crate::resolver::HubProblem;

/// Flags of `ringmaster run --kube`.
#[derive(clap::Args, Debug, Clone)]
pub struct KubeArgs {
    /// Watch only this namespace (default: every namespace).
    #[arg(long = "kube-namespace", env = "RINGMASTER_NAMESPACE")]
    pub namespace: Option<String>,

    /// Campaign for a Lease and write only while holding it. Default: on inside a
    /// cluster, off outside one.
    #[arg(long, env = "RINGMASTER_LEADER_ELECTION", num_args = 0..=1, default_missing_value = "true")]
    pub leader_election: Option<bool>,

    /// The Lease's name.
    #[arg(
        long,
        env = "RINGMASTER_LEASE_NAME",
        default_value = "ringmaster-controller"
    )]
    pub lease_name: String,

    /// The Lease's namespace. Default: the pod's namespace (`POD_NAMESPACE`, or the
    /// service account's), else the kubeconfig's.
    #[arg(long, env = "RINGMASTER_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// This replica's identity in the Lease and in Events. Default: `POD_NAME`, else the
    /// host name.
    #[arg(long, env = "RINGMASTER_IDENTITY")]
    pub identity: Option<String>,

    /// Where to serve `/metrics`, `/healthz` and `/readyz`. Default: `0.0.0.0:8081` inside
    /// a cluster (probes and scrapers come from outside the pod), `127.0.0.1:8081` outside.
    #[arg(long, env = "RINGMASTER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Where to serve the operator console (`/console/`; [`console`]). Off by default.
    /// People sign in with their own Kubernetes bearer token, and act on a rollout only
    /// if the cluster's RBAC lets them `patch` it. Plain HTTP: keep it on loopback or
    /// behind `kubectl port-forward` or a TLS-terminating proxy.
    #[arg(long, env = "RINGMASTER_CONSOLE_ADDR")]
    pub console_addr: Option<SocketAddr>,

    /// The validating admission webhook ([`webhook`]).
    #[command(flatten)]
    pub webhook: webhook::WebhookArgs,
}

const SA_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// The settings [`run`] works with, every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The namespace watched; `None` watches every namespace.
    pub namespace: Option<String>,
    /// Whether to campaign for the Lease (else this replica always writes).
    pub leader_election: bool,
    /// The Lease's name.
    pub lease_name: String,
    /// The Lease's namespace.
    pub lease_namespace: String,
    /// This replica's identity in the Lease and in Events.
    pub identity: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
}

impl KubeArgs {
    /// Resolves the defaults that depend on where the controller runs.
    pub fn settings(&self, in_cluster: bool, default_namespace: &str) -> Settings {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let lease_namespace = self
            .lease_namespace
            .clone()
            .or_else(|| env("POD_NAMESPACE"))
            .or_else(|| {
                std::fs::read_to_string(SA_NAMESPACE_FILE)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| default_namespace.to_string());
        let identity = self
            .identity
            .clone()
            .or_else(|| env("POD_NAME"))
            .or_else(|| env("HOSTNAME"))
            .unwrap_or_else(|| format!("ringmaster-{}", std::process::id()));
        let metrics_addr = self.metrics_addr.unwrap_or_else(|| {
            if in_cluster {
                ([0, 0, 0, 0], 8081).into()
            } else {
                ([127, 0, 0, 1], 8081).into()
            }
        });
        Settings {
            namespace: self.namespace.clone(),
            leader_election: self.leader_election.unwrap_or(in_cluster),
            lease_name: self.lease_name.clone(),
            lease_namespace,
            identity,
            metrics_addr,
        }
    }
}

/// `ringmaster run --kube`: runs the controller until SIGINT/SIGTERM.
pub async fn run(args: KubeArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach Kubernetes (in-cluster config or kubeconfig): {e}")
    })?;
    let settings = args.settings(in_cluster(), client.default_namespace());
    tracing::info!(?settings, "starting the kube controller");

    let leader = if settings.leader_election {
        Leadership::elect(
            client.clone(),
            &settings.lease_namespace,
            &settings.lease_name,
            &settings.identity,
        )
        .await?
    } else {
        Leadership::always()
    };
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(settings.metrics_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on --metrics-addr {}: {e}",
                settings.metrics_addr
            )
        })?;
    let health = Health {
        metrics: metrics.clone(),
        leader: leader.clone(),
        ready: ready.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(listener, health).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });

    // Refuse to start without the CRD, with the command that installs it.
    let rollouts: Api<DeviceRollout> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Metadata only: one object that cannot be read as a DeviceRollout must not stop the
    // controller (it is marked InvalidSpec once the watch delivers it).
    rollouts
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(|e| start_error(&e, settings.namespace.as_deref()))?;
    start_webhook(&client, &args.webhook, &settings.lease_namespace).await?;

    let reporter = Reporter {
        controller: CONTROLLER_NAME.into(),
        instance: Some(settings.identity.clone()),
    };
    let hubs: Arc<dyn HubClients> = Arc::new(KubeHubs::fenced(
        client.clone(),
        Arc::new(SystemClock),
        leader.clone(),
    ));
    if let Some(addr) = args.console_addr {
        start_console(&client, addr, settings.namespace.clone(), hubs.clone()).await?;
    }
    ready.store(true, Ordering::Relaxed);
    let ctx = Arc::new(
        Context::new(client.clone(), hubs, reporter, metrics, leader.clone()).with_ready(ready),
    );
    run_controller(ctx, settings.namespace.as_deref()).await;
    // SIGINT/SIGTERM: the reconciles in flight have finished; hand the Lease over now
    // rather than make a standby wait for its expiry.
    leader.release().await;
    Ok(())
}

/// Why the first list of DeviceRollouts failed, and what to do: a 404 means the CRD is
/// missing, a 403 that this identity lacks RBAC (the verb and resource named).
fn start_error(e: &kube::Error, namespace: Option<&str>) -> anyhow::Error {
    let scope = match namespace {
        Some(ns) => format!("in namespace {ns}"),
        None => "in every namespace (a ClusterRole)".to_string(),
    };
    match e {
        kube::Error::Api(s) if s.code == 404 => anyhow::anyhow!(
            "cannot list DeviceRollouts: the API server does not serve them (404); is the CRD installed? `ringmaster crd | kubectl apply -f -`"
        ),
        kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
            "cannot list DeviceRollouts: forbidden (403: {}). This identity needs RBAC for `list` (and get, watch, patch) on `devicerollouts.ringmaster.dev` {scope}; the chart and manifests/install.yaml grant it to the ringmaster ServiceAccount (src/kube/mod.rs lists every rule)",
            s.message
        ),
        kube::Error::Api(s) if s.code == 401 => anyhow::anyhow!(
            "cannot list DeviceRollouts: the API server does not accept these credentials (401: {})",
            s.message
        ),
        other => anyhow::anyhow!("cannot list DeviceRollouts: {other}"),
    }
}

/// Serves the operator console on `addr` ([`console`]).
async fn start_console(
    client: &Client,
    addr: SocketAddr,
    namespace: Option<String>,
    hubs: Arc<dyn HubClients>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --console-addr {addr}: {e}"))?;
    let url = format!("http://{}/console/", listener.local_addr()?);
    let backend = Arc::new(console::KubeConsole::new(client.clone(), namespace, hubs));
    tokio::spawn(async move {
        let served = crate::net::serve(
            listener,
            crate::console::router(backend),
            crate::net::Limits::DEFAULT,
            std::future::pending(),
        );
        if let Err(e) = served.await {
            tracing::error!(error = %e, "the operator console stopped");
        }
    });
    tracing::info!(%url, "serving the operator console");
    println!("operator console: {url}");
    Ok(())
}

/// Starts the admission webhook when `--webhook-addr` is given: its certificate, the
/// listener, and the webhook configuration's `caBundle` (kept current in the background).
async fn start_webhook(
    client: &Client,
    args: &webhook::WebhookArgs,
    namespace: &str,
) -> anyhow::Result<()> {
    let Some(addr) = args.webhook_addr else {
        if args.webhook_url.is_some() || args.webhook_service.is_some() {
            anyhow::bail!(
                "--webhook-url and --webhook-service need --webhook-addr (where to serve it)"
            );
        }
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on --webhook-addr {addr}: {e}"))?;
    let name = args.webhook_configuration.clone();
    let certs = if let Some(url) = &args.webhook_url {
        let host = url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow::anyhow!("--webhook-url {url}: must start with https://"))?
            .split(['/', '?'])
            .next()
            .unwrap_or("");
        let host = match host.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let certs = webhook::Certs::generate(&[host])?;
        webhook::register_url(client, &name, url, &args.webhook_failure_policy, &certs).await?;
        certs
    } else if let Some(service) = &args.webhook_service {
        let secret = args
            .webhook_secret
            .clone()
            .unwrap_or_else(|| format!("{service}-webhook-tls"));
        webhook::certs_from_secret(client, namespace, &secret, service).await?
    } else {
        anyhow::bail!(
            "--webhook-addr needs --webhook-url (out of a cluster) or --webhook-service (in one)"
        );
    };
    let served = certs.clone();
    tokio::spawn(async move {
        if let Err(e) = webhook::serve(listener, &served).await {
            tracing::error!(error = %e, "the admission webhook stopped");
        }
    });
    if args.webhook_url.is_none() {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                match webhook::ensure_ca_bundle(&client, &name, &certs.ca).await {
                    Ok(true) => tracing::info!(configuration = %name, "set the webhook's caBundle"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "the webhook's caBundle"),
                }
                tokio::time::sleep(webhook::CA_BUNDLE_CHECK).await;
            }
        });
    }
    tracing::info!(%addr, "serving the admission webhook");
    Ok(())
}

/// What wakes a rollout's reconcile: its generation (the spec), annotations (operator
/// requests, force-delete), finalizers and deletion. Not its status: the controller's
/// own status writes never wake it (each would cost a listing of the hub otherwise).
pub fn wakes(obj: &DynamicObject) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let m = obj.meta();
    m.generation.hash(&mut h);
    m.annotations.hash(&mut h);
    m.finalizers.hash(&mut h);
    m.deletion_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .hash(&mut h);
    Some(h.finish())
}

/// Runs the controller with a prepared context until SIGINT/SIGTERM.
///
/// Rollouts and Hubs are watched as plain objects and read one by one
/// ([`reconcile_object`]): an object that cannot be read stalls alone. While the watch
/// cannot list (the API server is down, RBAC was taken away), `/readyz` says not ready.
pub async fn run_controller(ctx: Arc<Context>, namespace: Option<&str>) {
    let client = ctx.client.clone();
    let rollout_type = ApiResource::erase::<DeviceRollout>(&());
    let hub_type = ApiResource::erase::<Hub>(&());
    let (rollouts, hubs): (Api<DynamicObject>, Api<DynamicObject>) = match namespace {
        Some(ns) => (
            Api::namespaced_with(client.clone(), ns, &rollout_type),
            Api::namespaced_with(client, ns, &hub_type),
        ),
        None => (
            Api::all_with(client.clone(), &rollout_type),
            Api::all_with(client, &hub_type),
        ),
    };
    let writer = reflector::store::Writer::new(rollout_type.clone());
    let store = writer.as_reader();
    let ready = ctx.ready.clone();
    let trigger = watcher(rollouts, watcher::Config::default().any_semantic())
        .inspect(move |event| match event {
            Ok(_) => ready.store(true, Ordering::Relaxed),
            Err(e) => {
                ready.store(false, Ordering::Relaxed);
                tracing::warn!(error = %bounded(&e.to_string()), "cannot list or watch DeviceRollouts; retrying");
            }
        })
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .predicate_filter(wakes, PredicateConfig::default());
    let mapper_store = store.clone();
    let mapper_type = rollout_type.clone();
    Controller::for_stream_with(trigger, store, rollout_type)
        .watches_with(
            hubs,
            hub_type,
            watcher::Config::default().any_semantic(),
            move |hub: DynamicObject| {
                let (ns, name) = (hub.namespace(), hub.name_any());
                mapper_store
                    .state()
                    .into_iter()
                    .filter(|ro| {
                        let named = ro.data["spec"]["hub"].as_str().unwrap_or("default");
                        ro.namespace() == ns && named == name
                    })
                    .map(|ro| ObjectRef::from_obj_with(&*ro, mapper_type.clone()))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_all_on(ctx.leader.gained())
        .shutdown_on_signal()
        .run(reconcile_object, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(rollout = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %bounded(&e.to_string()), "reconcile failed"),
            }
        })
        .await;
}
