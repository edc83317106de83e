//! `ringmaster run --kube`: the controller for `DeviceRollout` custom resources.
//!
//! - [`controller`]: reconcile (finalizer → hub → driver → status → events) and the
//!   error policy;
//! - [`hubs`]: a cached [`Driver`](crate::driver::Driver) per `Hub` resource, built by
//!   the [hub resolver](crate::resolver) from its spec and Secret;
//! - [`leader`]: leader election on a Lease (only the leader writes);
//! - [`metrics`]: Prometheus metrics, `/healthz` and `/readyz`.
//!
//! The controller watches `DeviceRollout`s and `Hub`s (a Hub's change reconciles the
//! rollouts naming it). Secrets are read on each reconcile, not watched, so the
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
//! - `events.k8s.io` `events`: create, patch
//! - `coordination.k8s.io` `leases`: get, create, patch (in the lease namespace)

pub mod controller;
pub mod drift_events;
pub mod hubs;
pub mod leader;
pub mod metrics;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use crate::clock::SystemClock;
use crate::resources::{DeviceRollout, Hub};
use controller::{Context, error_policy, reconcile};
use futures::StreamExt;
use hubs::{HubClients, KubeHubs};
use kube::api::ListParams;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
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
    rollouts.list(&ListParams::default().limit(1)).await.map_err(|e| {
        anyhow::anyhow!("cannot list DeviceRollouts ({e}); is the CRD installed? `ringmaster crd | kubectl apply -f -`")
    })?;
    ready.store(true, Ordering::Relaxed);

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let hubs: Arc<dyn HubClients> = Arc::new(KubeHubs::new(client.clone(), Arc::new(SystemClock)));
    let ctx = Arc::new(Context::new(
        client.clone(),
        hubs,
        recorder,
        metrics,
        leader,
    ));
    run_controller(ctx, settings.namespace.as_deref()).await;
    Ok(())
}

/// Runs the controller with a prepared context until SIGINT/SIGTERM.
pub async fn run_controller(ctx: Arc<Context>, namespace: Option<&str>) {
    let client = ctx.client.clone();
    let (rollouts, hubs): (Api<DeviceRollout>, Api<Hub>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let controller = Controller::new(rollouts, watcher::Config::default().any_semantic());
    let store = controller.store();
    controller
        .watches(
            hubs,
            watcher::Config::default().any_semantic(),
            move |hub: Hub| {
                let (ns, name) = (hub.namespace(), hub.name_any());
                store
                    .state()
                    .into_iter()
                    .filter(|ro| {
                        ro.namespace() == ns && ro.spec.hub.as_deref().unwrap_or("default") == name
                    })
                    .map(|ro| ObjectRef::from_obj(&*ro))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_all_on(ctx.leader.gained())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(rollout = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
}
