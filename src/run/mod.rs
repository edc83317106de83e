//! `ringmaster run --dir PATH` and `ringmaster run --git URL`: the controller without
//! Kubernetes.
//!
//! One loop, a pipeline per pass: **read** the source (a directory scan, or a git fetch
//! read from the commit's tree) → **diff** by content hash in the [`Catalog`] (a broken
//! file keeps its last good version) → **reconcile** every rollout that is due (new or
//! changed spec, a queued operator request, its requeue time) through the [`Driver`] of
//! its hub → **record** its status in the [`StateStore`]. A rollout whose file is gone is
//! reconciled with the driver's deletion input until the driver releases it.
//!
//! What wakes the loop: file events (a hint; the scan decides), the git poll interval, the
//! webhook, an operator request from the API, a rollout's requeue time, and a periodic
//! rescan as the backstop.
//!
//! Hubs come from `Hub` documents in the source. Secrets never do: the connection string
//! of hub `<name>` in namespace `<ns>` is read from the environment variable
//! `RINGMASTER_HUB_<NS>_<NAME>` or `RINGMASTER_HUB_<NAME>` (upper case, other characters
//! as `_`), or the file `<--hub-secrets-dir>/<ns>/<name>` or `<--hub-secrets-dir>/<name>`.
//! A rollout whose hub is `default` with no `Hub` document named `default` goes to an
//! in-process embedded hub (`--embedded-store`, in memory by default).

pub mod api;
pub mod sources;
pub mod store;

use crate::client::Hub as HubClient;
use crate::client::azure::{AzureHub, AzureHubOptions, RequestBudget};
use crate::clock::{Clock, SystemClock};
use crate::core::decide::Deletion;
use crate::driver::{Driver, ReconcileInput};
use crate::hub::EmbeddedHub;
use crate::resources::operation::force_delete;
use crate::resources::{DeviceRolloutStatus, Hub, HubType};
use crate::run::sources::dir::{DirWatcher, scan};
use crate::run::sources::git::{GitSource, SshKey};
use crate::run::sources::{Catalog, Key, Snapshot};
use crate::run::store::{StateStore, StoredRollout};
use anyhow::{Context, Result, bail};
use api::ApiState;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Flags of `ringmaster run`. Exactly one source: `--dir` or `--git`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch DeviceRollout and Hub resources on Kubernetes (in cluster, or the kubeconfig's
    /// context) instead of reading files: see `docs/kube.md`.
    #[arg(long, conflicts_with_all = ["dir", "git"])]
    pub kube: bool,
    /// Flags of `--kube`.
    #[command(flatten)]
    pub kube_args: crate::kube::KubeArgs,
    /// Read manifests from this directory (recursively), watching it for changes.
    #[arg(long, conflicts_with = "git", required_unless_present_any = ["git", "kube"])]
    pub dir: Option<PathBuf>,
    /// Read manifests from this git repository (https, ssh, git:// or file:// URL).
    #[arg(long)]
    pub git: Option<String>,
    /// The branch to follow (`--git`).
    #[arg(long, default_value = "main", requires = "git")]
    pub branch: String,
    /// A folder inside the repository (`--git`); the whole tree by default.
    #[arg(long, requires = "git")]
    pub path: Option<String>,
    /// How often to fetch (`--git`), e.g. `1m`, `30s`.
    #[arg(long, default_value = "1m", value_parser = crate::duration::parse_duration)]
    pub interval: Duration,
    /// How often to rescan the directory even without file events (`--dir`).
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse_duration)]
    pub rescan: Duration,
    /// Let a read that finds no DeviceRollout delete every rollout. Without it such a read
    /// (an emptied or unmounted folder, a commit leaving `--path` without rollout files)
    /// changes nothing and is reported, when the last good read had rollouts.
    #[arg(long)]
    pub allow_empty: bool,
    /// The bare cache repository for `--git`.
    #[arg(long, default_value = "ringmaster-git-cache")]
    pub git_cache: PathBuf,
    /// Environment variable holding a token for HTTPS git (sent as `x-access-token`).
    #[arg(long)]
    pub git_token_env: Option<String>,
    /// File holding a token for HTTPS git.
    #[arg(long)]
    pub git_token_file: Option<PathBuf>,
    /// File holding an SSH private key for ssh:// and `user@host:path` URLs (the ssh agent
    /// otherwise).
    #[arg(long)]
    pub git_ssh_key_file: Option<PathBuf>,
    /// Environment variable holding an SSH private key.
    #[arg(long)]
    pub git_ssh_key_env: Option<String>,
    /// Environment variable holding the SSH key's passphrase.
    #[arg(long)]
    pub git_ssh_passphrase_env: Option<String>,
    /// known_hosts file the SSH server's host key must be in (libgit2 checks
    /// ~/.ssh/known_hosts otherwise).
    #[arg(long)]
    pub git_known_hosts: Option<PathBuf>,
    /// Environment variable holding the secret of `POST /webhook/git`.
    #[arg(long)]
    pub webhook_secret_env: Option<String>,
    /// File holding the secret of `POST /webhook/git`.
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// The local state store (SQLite): statuses, last good files, queued requests.
    #[arg(long, default_value = "ringmaster-state.db")]
    pub state: PathBuf,
    /// Where the HTTP API listens (port 0 picks one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Environment variable holding the API's bearer token (writes are refused without one).
    #[arg(long)]
    pub api_token_env: Option<String>,
    /// File holding the API's bearer token.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Folder of hub connection strings: `<ns>/<name>` or `<name>` files.
    #[arg(long)]
    pub hub_secrets_dir: Option<PathBuf>,
    /// PEM CA bundle trusted for hubs at `https` URLs (e.g. the CA that
    /// `ringmaster hub serve --tls-self-signed` prints); the system roots otherwise.
    #[arg(long)]
    pub hub_ca: Option<PathBuf>,
    /// SQLite file of the in-process embedded hub; in memory when omitted.
    #[arg(long)]
    pub embedded_store: Option<PathBuf>,
}

/// Reads a secret from an environment variable or a file (trimmed).
pub fn read_secret(env: Option<&str>, file: Option<&Path>, what: &str) -> Result<Option<String>> {
    if let Some(name) = env {
        let v = std::env::var(name)
            .with_context(|| format!("{what}: environment variable {name} is not set"))?;
        return Ok(Some(v.trim().to_string()));
    }
    if let Some(f) = file {
        let v = std::fs::read_to_string(f)
            .with_context(|| format!("{what}: cannot read {}", f.display()))?;
        return Ok(Some(v.trim().to_string()));
    }
    Ok(None)
}

/// Two versions of a rollout are the same when they serialize the same.
fn same(a: &crate::resources::DeviceRollout, b: &crate::resources::DeviceRollout) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// Errors about reaching a hub (set and cleared by the reconcile, not by the source).
fn is_hub_error(e: &str) -> bool {
    e.starts_with("Hub ") || e.starts_with("no Hub")
}

fn env_name(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The source of manifests.
enum Source {
    Dir {
        root: PathBuf,
        _watcher: Option<DirWatcher>,
    },
    Git(GitSource),
}

impl Source {
    async fn read(&self) -> Result<Snapshot> {
        match self {
            Source::Dir { root, .. } => {
                let root = root.clone();
                let shown = root.display().to_string();
                tokio::task::spawn_blocking(move || scan(&root))
                    .await?
                    .with_context(|| format!("--dir {shown}: cannot read"))
            }
            Source::Git(g) => {
                let g = g.clone();
                Ok(tokio::task::spawn_blocking(move || g.fetch()).await??)
            }
        }
    }
}

/// How to reach hubs outside the process: where connection strings are, which CA to trust.
#[derive(Clone, Debug, Default)]
pub struct HubAccess {
    /// `--hub-secrets-dir`.
    pub secrets_dir: Option<PathBuf>,
    /// `--hub-ca`, read.
    pub ca_pem: Option<Vec<u8>>,
}

/// The controller: source, catalog, hubs, store.
pub struct Controller {
    api: Arc<ApiState>,
    catalog: Catalog,
    access: HubAccess,
    embedded: EmbeddedHub,
    clock: Arc<dyn Clock>,
    /// Drivers by hub key, with the hub spec they were built from.
    drivers: HashMap<Key, (serde_json::Value, Arc<Driver>)>,
    /// The in-process hub's driver (hub `default` without a `Hub` document).
    embedded_driver: Arc<Driver>,
    /// Every rollout as the store holds it, loaded once: only the controller writes
    /// rollouts, and it writes through to the store.
    rollouts: Option<BTreeMap<Key, StoredRollout>>,
    /// When each rollout is due.
    due: HashMap<Key, Due>,
    /// Whether a snapshot was taken in, and the source revision it had.
    ingested_once: bool,
    source_revision: Option<String>,
}

impl Controller {
    /// A controller over a store and an in-process embedded hub.
    pub fn new(
        api: Arc<ApiState>,
        catalog: Catalog,
        embedded: EmbeddedHub,
        access: HubAccess,
    ) -> Controller {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let embedded_driver = Arc::new(Driver::new(Arc::new(embedded.clone()), clock.clone()));
        Controller {
            api,
            catalog,
            access,
            embedded,
            clock,
            drivers: HashMap::new(),
            embedded_driver,
            rollouts: None,
            due: HashMap::new(),
            ingested_once: false,
            source_revision: None,
        }
    }

    /// The rollouts, read from the store the first time.
    async fn load(&mut self) -> Result<&mut BTreeMap<Key, StoredRollout>> {
        if self.rollouts.is_none() {
            let all = self.api.store.run(|s| s.rollouts()).await?;
            for r in &all {
                self.api
                    .metrics
                    .set_phase(&format!("{}/{}", r.namespace, r.name), Some(r.status.phase));
            }
            self.rollouts = Some(
                all.into_iter()
                    .map(|r| ((r.namespace.clone(), r.name.clone()), r))
                    .collect(),
            );
        }
        Ok(self.rollouts.get_or_insert_default())
    }

    /// Takes a snapshot in: diffs, records files and source errors, updates rollouts'
    /// specs in the store and marks what changed as due.
    pub async fn ingest(&mut self, snap: &Snapshot) -> Result<()> {
        let changes = self.catalog.apply(snap);
        if changes.emptied {
            self.api.metrics.source_error();
        }
        if changes.is_empty() && self.ingested_once && snap.revision == self.source_revision {
            return Ok(()); // nothing new: the rescan found what the last one did
        }
        self.ingested_once = true;
        self.source_revision = snap.revision.clone();
        for (file, errors) in &changes.failed {
            for e in errors {
                tracing::warn!(file, "{e}; its last good version stays in effect");
            }
        }
        let files: Vec<(String, Option<String>, Option<String>)> = self
            .catalog
            .files()
            .iter()
            .map(|(p, f)| {
                (
                    p.clone(),
                    f.good.as_ref().map(|(t, _)| t.clone()),
                    (!f.errors.is_empty()).then(|| f.errors.join("\n")),
                )
            })
            .collect();
        let errors_by_file: BTreeMap<String, String> = files
            .iter()
            .filter_map(|(p, _, e)| e.clone().map(|e| (p.clone(), e)))
            .collect();
        let (desired, duplicates) = self.catalog.rollouts();
        for d in &duplicates {
            tracing::warn!("{d}");
        }
        let revision = snap.revision.clone();
        self.api
            .store
            .run(move |s| {
                s.put_files(&files)?;
                if let Some(r) = &revision {
                    s.set_meta("sourceRevision", r)?;
                }
                Ok(())
            })
            .await?;
        let stored = self.load().await?.clone();
        let now = Instant::now();
        let mut writes = Vec::new();
        for (key, (file, ro)) in &desired {
            let source_error = errors_by_file
                .get(file)
                .map(|e| format!("source file fails, its last good version is in effect: {e}"));
            // A hub problem found by the reconcile stays until the reconcile clears it.
            let hub_error = stored
                .get(key)
                .and_then(|o| o.error.clone())
                .filter(|e| is_hub_error(e));
            let error = source_error.or(hub_error);
            match stored.get(key) {
                Some(old)
                    if same(&old.rollout, ro)
                        && !old.deleting
                        && old.source == *file
                        && old.error == error => {}
                Some(old) => {
                    let changed = !same(&old.rollout, ro) || old.deleting;
                    if changed {
                        self.due.insert(key.clone(), Due::now(now));
                    }
                    // The revision the spec was read at moves only when the spec does (or a
                    // deletion is undone); a broken file keeps the revision of its good version.
                    let source_revision = if changed {
                        snap.revision.clone()
                    } else {
                        old.source_revision.clone()
                    };
                    writes.push(StoredRollout {
                        source: file.clone(),
                        rollout: ro.clone(),
                        deleting: false,
                        error,
                        source_revision,
                        ..old.clone()
                    });
                }
                None => {
                    self.due.insert(key.clone(), Due::now(now));
                    writes.push(StoredRollout {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        source: file.clone(),
                        rollout: ro.clone(),
                        status: DeviceRolloutStatus::default(),
                        deleting: false,
                        error,
                        created: jiff::Timestamp::now().to_string(),
                        source_revision: snap.revision.clone(),
                    });
                }
            }
        }
        for (key, old) in &stored {
            if !desired.contains_key(key) && !old.deleting {
                tracing::info!(rollout = %format!("{}/{}", key.0, key.1), file = %old.source, "its file is gone: deleting the rollout");
                self.due.insert(key.clone(), Due::now(now));
                writes.push(StoredRollout {
                    deleting: true,
                    error: None,
                    ..old.clone()
                });
            }
        }
        self.record(writes, Vec::new(), Vec::new()).await?;
        self.api.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Makes every rollout due now (tests; a forced resync).
    pub fn reconcile_all_now(&mut self) {
        self.due.clear();
    }

    /// The driver for a rollout's hub.
    fn driver_for(&mut self, ro: &StoredRollout) -> Result<Arc<Driver>, String> {
        let name = ro
            .rollout
            .spec
            .hub
            .clone()
            .unwrap_or_else(|| "default".into());
        let key = (ro.namespace.clone(), name.clone());
        let hubs = self.catalog.hubs();
        let Some(hub) = hubs.get(&key) else {
            if name == "default" {
                return Ok(self.embedded_driver.clone());
            }
            return Err(format!("no Hub {}/{name} in the source", ro.namespace));
        };
        let spec_json = serde_json::to_value(&hub.spec).unwrap_or_default();
        if let Some((spec, d)) = self.drivers.get(&key)
            && *spec == spec_json
        {
            return Ok(d.clone());
        }
        let client = self.hub_client(hub, &key)?;
        let driver = Arc::new(Driver::with_limits(
            client,
            self.clock.clone(),
            hub.spec.limits.clone(),
        ));
        self.drivers.insert(key, (spec_json, driver.clone()));
        Ok(driver)
    }

    fn hub_client(&self, hub: &Hub, key: &Key) -> Result<Arc<dyn HubClient>, String> {
        if hub.spec.type_ == HubType::Embedded && hub.spec.url.is_none() {
            return Ok(Arc::new(self.embedded.clone()));
        }
        let conn = self.connection_string(key).ok_or_else(|| {
            format!(
                "Hub {}/{}: no connection string: set RINGMASTER_HUB_{}_{} or RINGMASTER_HUB_{}, or put it in --hub-secrets-dir/{}/{}",
                key.0,
                key.1,
                env_name(&key.0),
                env_name(&key.1),
                env_name(&key.1),
                key.0,
                key.1
            )
        })?;
        let opts = AzureHubOptions {
            base_url: hub.spec.url.clone(),
            ca_pem: self.access.ca_pem.clone(),
            budget: RequestBudget::for_limits(&hub.spec.limits),
            ..Default::default()
        };
        AzureHub::new(&conn, opts)
            .map(|h| Arc::new(h) as Arc<dyn HubClient>)
            .map_err(|e| format!("Hub {}/{}: {e}", key.0, key.1))
    }

    fn connection_string(&self, (ns, name): &Key) -> Option<String> {
        for var in [
            format!("RINGMASTER_HUB_{}_{}", env_name(ns), env_name(name)),
            format!("RINGMASTER_HUB_{}", env_name(name)),
        ] {
            if let Ok(v) = std::env::var(&var) {
                return Some(v.trim().to_string());
            }
        }
        let dir = self.access.secrets_dir.as_ref()?;
        [dir.join(ns).join(name), dir.join(name)]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_string())
    }

    /// Reconciles every rollout that is due (or has a queued request) as one round,
    /// concurrently: the rollouts of one hub share its driver and budget, and one listing
    /// of its configurations. Returns when the next round is due.
    pub async fn reconcile_due(&mut self) -> Result<Option<Instant>> {
        let mut ops = self.api.store.run(|s| s.all_operations()).await?;
        let now = Instant::now();
        self.load().await?;
        let cache = self.rollouts.as_ref().expect("loaded");
        let due: Vec<StoredRollout> = cache
            .iter()
            .filter(|(k, _)| ops.contains_key(*k) || self.due.get(*k).is_none_or(|d| d.at <= now))
            .map(|(_, r)| r.clone())
            .collect();
        let mut work = Vec::new();
        let mut writes = Vec::new();
        for mut r in due {
            let key = (r.namespace.clone(), r.name.clone());
            match self.driver_for(&r) {
                Ok(driver) => {
                    let input = ReconcileInput {
                        operations: ops.remove(&key).unwrap_or_default(),
                        // The file is gone: its last good version's annotation decides.
                        deletion: r.deleting.then(|| Deletion {
                            force: force_delete(r.rollout.metadata.annotations.as_ref()),
                        }),
                        listing: None,
                    };
                    work.push((r, driver, input));
                }
                Err(msg) => {
                    self.api.metrics.reconcile_failed("hub_config");
                    tracing::warn!(rollout = %format!("{}/{}", key.0, key.1), "{msg}");
                    self.due
                        .insert(key, Due::after(now, Duration::from_secs(30)));
                    if r.error.as_deref() != Some(msg.as_str()) {
                        r.error = Some(msg);
                        writes.push(r);
                    }
                }
            }
        }
        // One listing per hub for the round, when more than one of its rollouts is in it.
        let mut per_driver: HashMap<*const Driver, (Arc<Driver>, usize)> = HashMap::new();
        for (_, d, _) in &work {
            per_driver
                .entry(Arc::as_ptr(d))
                .or_insert_with(|| (d.clone(), 0))
                .1 += 1;
        }
        let mut listings = HashMap::new();
        for (ptr, (driver, n)) in per_driver {
            if n > 1 {
                let mut requests = Vec::new();
                let listed = driver.list(&mut requests).await;
                self.api.metrics.hub_requests(&requests);
                if let Ok(Ok(list)) = listed {
                    listings.insert(ptr, Arc::new(list));
                }
            }
        }
        for (_, d, input) in &mut work {
            input.listing = listings.get(&Arc::as_ptr(d)).cloned();
        }
        // At most ROUND_CONCURRENCY at once: a round of a thousand rollouts holds a
        // thousand decisions' worth of memory otherwise.
        let api = self.api.clone();
        let results: Vec<_> = futures::stream::iter(work.into_iter().map(|(r, driver, input)| {
            let api = api.clone();
            async move {
                let _timer = api.metrics.reconcile_started();
                let outcome = driver.reconcile_with(&r.rollout, &r.status, &input).await;
                (r, outcome, !input.operations.is_empty())
            }
        }))
        .buffer_unordered(ROUND_CONCURRENCY)
        .collect()
        .await;
        let mut removed = Vec::new();
        let mut handled_ops = Vec::new();
        for (mut r, outcome, had_ops) in results {
            let key = (r.namespace.clone(), r.name.clone());
            let who = format!("{}/{}", key.0, key.1);
            self.api.metrics.observe(&who, &r.status, &outcome);
            if let Some(e) = &outcome.error {
                tracing::warn!(rollout = %who, "hub error: {e}");
            }
            for h in outcome
                .status
                .history
                .iter()
                .filter(|h| !r.status.history.contains(h))
            {
                tracing::info!(rollout = %who, decision = %h.decision, "{}", h.message);
            }
            if r.deleting && outcome.finalized {
                tracing::info!(rollout = %who, "deleted: every configuration is gone");
                self.due.remove(&key);
                removed.push(key);
                continue;
            }
            // A deletion that removed configurations is finalized by the next look; it
            // need not wait the usual requeue after a write.
            let requeue = if r.deleting && !outcome.performed.is_empty() && outcome.error.is_none()
            {
                Duration::from_secs(1)
            } else {
                outcome.requeue_after
            };
            self.due
                .insert(key.clone(), Due::after(Instant::now(), requeue));
            if had_ops {
                handled_ops.push((key, outcome.status.handled_operations.clone()));
            }
            let error = r.error.clone().filter(|e| !is_hub_error(e));
            if outcome.status == r.status && error == r.error {
                continue; // nothing to record: an idle poll writes nothing
            }
            r.error = error;
            r.status = outcome.status;
            writes.push(r);
        }
        self.record(writes, removed, handled_ops).await?;
        Ok(self.due.values().map(|d| d.latest).min())
    }

    /// Writes rollouts, removes finished ones and drops handled requests in the store, then
    /// brings the in-memory copy and the by-phase gauges in line: the one way rollouts
    /// change.
    async fn record(
        &mut self,
        writes: Vec<StoredRollout>,
        removed: Vec<Key>,
        handled: Vec<(Key, Vec<String>)>,
    ) -> Result<()> {
        if writes.is_empty() && removed.is_empty() && handled.is_empty() {
            return Ok(());
        }
        let (writes, removed) = self
            .api
            .store
            .run(move |s| {
                for r in &writes {
                    s.put_rollout(r)?;
                }
                for (ns, n) in &removed {
                    s.remove_rollout(ns, n)?;
                }
                for ((ns, n), ops) in &handled {
                    s.remove_operations(ns, n, ops)?;
                }
                Ok((writes, removed))
            })
            .await?;
        let api = self.api.clone();
        let cache = self.load().await?;
        for r in writes {
            api.metrics
                .set_phase(&format!("{}/{}", r.namespace, r.name), Some(r.status.phase));
            cache.insert((r.namespace.clone(), r.name.clone()), r);
        }
        for k in removed {
            api.metrics.set_phase(&format!("{}/{}", k.0, k.1), None);
            cache.remove(&k);
        }
        Ok(())
    }
}

/// How many rollouts one round reconciles at once.
const ROUND_CONCURRENCY: usize = 16;

/// When a rollout is due: at `at`, and at the latest by `latest`. The loop wakes for the
/// earliest `latest` and reconciles every rollout whose `at` has come, so polls that fall
/// close together share a round (and one listing of their hub's configurations).
#[derive(Clone, Copy, Debug)]
struct Due {
    at: Instant,
    latest: Instant,
}

impl Due {
    fn now(now: Instant) -> Due {
        Due {
            at: now,
            latest: now,
        }
    }

    /// A poll `wait` from now may run a tenth of `wait` late, at most 5 s.
    fn after(now: Instant, wait: Duration) -> Due {
        let at = now + wait;
        Due {
            at,
            latest: at + (wait / 10).min(Duration::from_secs(5)),
        }
    }
}

/// `ringmaster run`: until Ctrl-C or SIGTERM.
pub async fn run(args: RunArgs) -> Result<()> {
    let store_path = args.state.clone();
    let store = tokio::task::spawn_blocking(move || StateStore::open(&store_path))
        .await?
        .with_context(|| {
            format!(
                "--state {}: cannot open the state store",
                args.state.display()
            )
        })?;
    let mut api = ApiState::new(store.clone());
    api.api_token = read_secret(
        args.api_token_env.as_deref(),
        args.api_token_file.as_deref(),
        "API token",
    )?;
    api.webhook_secret = read_secret(
        args.webhook_secret_env.as_deref(),
        args.webhook_secret_file.as_deref(),
        "webhook secret",
    )?
    .map(String::into_bytes);
    let api = Arc::new(api);

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let embedded = match &args.embedded_store {
        Some(p) => {
            let p = p.clone();
            tokio::task::spawn_blocking(move || EmbeddedHub::open(&p, clock, Default::default()))
                .await??
        }
        None => EmbeddedHub::in_memory(clock),
    };
    let _cycles = embedded.spawn_cycles(Duration::from_secs(5));

    let (hint_tx, mut hint_rx) = mpsc::channel::<()>(1);
    let (source, period) = match (&args.dir, &args.git) {
        (Some(dir), None) => {
            let watcher = match DirWatcher::start(dir, hint_tx.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(
                        "--dir {}: no file events ({e}); rescanning every {:?}",
                        dir.display(),
                        args.rescan
                    );
                    None
                }
            };
            (
                Source::Dir {
                    root: dir.clone(),
                    _watcher: watcher,
                },
                args.rescan,
            )
        }
        (None, Some(url)) => {
            let token = read_secret(
                args.git_token_env.as_deref(),
                args.git_token_file.as_deref(),
                "git token",
            )?;
            let ssh_key = read_secret(
                args.git_ssh_key_env.as_deref(),
                args.git_ssh_key_file.as_deref(),
                "git SSH key",
            )?
            .map(|private_key| SshKey {
                private_key: format!("{private_key}\n"),
                passphrase: args
                    .git_ssh_passphrase_env
                    .as_deref()
                    .and_then(|v| std::env::var(v).ok()),
            });
            let known_hosts =
                match &args.git_known_hosts {
                    Some(f) => Some(std::fs::read_to_string(f).with_context(|| {
                        format!("--git-known-hosts {}: cannot read", f.display())
                    })?),
                    None => None,
                };
            let g = GitSource {
                url: url.clone(),
                branch: args.branch.clone(),
                path: args.path.clone(),
                cache: args.git_cache.clone(),
                token,
                ssh_key,
                known_hosts,
            };
            (Source::Git(g), args.interval)
        }
        _ => bail!("give exactly one source: --dir PATH or --git URL"),
    };

    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen there", args.listen))?;
    println!("ringmaster api listening on http://{}", tcp.local_addr()?);
    let app = api::router(api.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(tcp, app).await {
            tracing::error!("api server: {e}");
        }
    });

    let good = store.run(|s| s.good_files()).await?;
    let ca_pem = match &args.hub_ca {
        Some(f) => Some(
            std::fs::read(f).with_context(|| format!("--hub-ca {}: cannot read", f.display()))?,
        ),
        None => None,
    };
    let access = HubAccess {
        secrets_dir: args.hub_secrets_dir.clone(),
        ca_pem,
    };
    let mut ctl = Controller::new(
        api.clone(),
        Catalog::restore(good).allow_empty(args.allow_empty),
        embedded,
        access,
    );
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut next_read = Instant::now();
    let mut next_due: Option<Instant> = None;
    loop {
        if Instant::now() >= next_read {
            match source.read().await {
                Ok(snap) => {
                    if let Some(rev) = &snap.revision {
                        tracing::debug!(commit = %rev, "source read");
                    }
                    if let Err(e) = ctl.ingest(&snap).await {
                        tracing::error!("{e:#}");
                    }
                }
                Err(e) => {
                    api.metrics.source_error();
                    tracing::warn!("{e:#}; what was applied stays as it is");
                }
            }
            next_read = Instant::now() + period;
        }
        match ctl.reconcile_due().await {
            Ok(n) => next_due = n,
            Err(e) => tracing::error!("{e:#}"),
        }
        let wake_at = next_due
            .map_or(next_read, |d| d.min(next_read))
            .max(Instant::now() + Duration::from_millis(50));
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hint_rx.recv() => next_read = Instant::now(),
            _ = api.fetch.notified() => next_read = Instant::now(),
            _ = api.wake.notified() => {}
            _ = tokio::time::sleep_until(wake_at) => {}
        }
    }
    tracing::info!("stopping");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
