//! `ringmaster run --dir PATH` and `ringmaster run --git URL`: the controller without
//! Kubernetes.
//!
//! One loop, a pipeline per pass: **read** the source (a directory scan, or a git fetch
//! read from the commit's tree; on a task of its own, one read at a time, so that a slow
//! or hanging read delays no reconcile and no operator request) → **diff** by content hash in the [`Catalog`] (a broken
//! file keeps its last good version) → **reconcile** every rollout that is due (new or
//! changed spec, a queued operator request, its requeue time) through the driver of its
//! hub → **record** its status in the [`StateStore`]. A rollout whose file is gone is
//! reconciled with the driver's deletion input until the driver releases it.
//!
//! What wakes the loop: file events (a hint; the scan decides), the git poll interval, the
//! webhook, an operator request from the API, a rollout's requeue time, and a periodic
//! rescan as the backstop.
//!
//! The parts, one job each:
//! - [`args`]: the flags, and the secrets they name (an empty one is refused);
//! - [`sources`]: the directory and git sources and the catalog of what they hold;
//! - [`hubs`]: where a Hub's connection string comes from (the environment or
//!   `--hub-secrets-dir`, by namespace and name), for the [hub resolver](crate::resolver);
//! - [`controller`]: ingest a snapshot, reconcile what is due, record it;
//! - [`rings`]: the `DeviceRings` of the source, a pass on their hub at least every minute;
//! - [`schedule`]: when each rollout is due;
//! - [`store`]: the SQLite state store; [`api`]: the HTTP API; [`console`]: what the
//!   operator console reads and queues through;
//! - this module: the loop.
//!
//! A rollout whose hub is `default` with no `Hub` document named `default` goes to an
//! in-process embedded hub (`--embedded-store`, in memory by default).

pub mod api;
pub mod args;
pub mod console;
pub mod controller;
pub mod hubs;
pub mod rings;
pub mod schedule;
pub mod sources;
pub mod store;

pub use args::{RunArgs, read_secret};
pub use controller::Controller;
pub use hubs::HubAccess;

use crate::clock::{Clock, SystemClock};
use crate::hub::EmbeddedHub;
use crate::resolver::EMBEDDED_CYCLE;
use crate::run::sources::dir::{DirWatcher, scan};
use crate::run::sources::git::{GitSource, SshKey};
use crate::run::sources::{Catalog, Snapshot};
use crate::run::store::StateStore;
use anyhow::{Context, Result, bail};
use api::ApiState;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The source of manifests.
enum Source {
    Dir {
        root: PathBuf,
        _watcher: Option<DirWatcher>,
    },
    Git(GitSource, Duration),
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
            Source::Git(g, timeout) => {
                let (g, timeout) = (g.clone(), *timeout);
                Ok(tokio::task::spawn_blocking(move || g.fetch_within(timeout)).await??)
            }
        }
    }

    /// Moves the source onto a task of its own that reads it whenever asked, one read at a
    /// time, and hands each result back: the loop never waits on a read, so a fetch that
    /// hangs until its timeout, or a scan of a stuck folder, holds up no reconcile and no
    /// operator request of the rollouts already known.
    fn spawn_reader(self) -> Reader {
        let (ask, mut asked) = mpsc::channel::<()>(1);
        let (deliver, results) = mpsc::channel(1);
        tokio::spawn(async move {
            while asked.recv().await.is_some() {
                if deliver.send(self.read().await).await.is_err() {
                    break;
                }
            }
        });
        Reader {
            ask,
            results,
            reading: false,
            again: false,
        }
    }
}

/// The loop's side of the source's task (see [`Source::spawn_reader`]).
struct Reader {
    ask: mpsc::Sender<()>,
    results: mpsc::Receiver<Result<Snapshot>>,
    /// A read is in flight.
    reading: bool,
    /// A read was asked for (file event, webhook) while one was in flight: read again as
    /// soon as it ends, since it may have started before the change.
    again: bool,
}

impl Reader {
    /// Starts a read unless one is in flight.
    fn start(&mut self) {
        if !self.reading && self.ask.try_send(()).is_ok() {
            self.reading = true;
        }
    }

    /// Asks for a read now: at once, or right after the one in flight.
    fn asked(&mut self, next_read: &mut Instant) {
        if self.reading {
            self.again = true;
        } else {
            *next_read = Instant::now();
        }
    }
}

/// The secrets the flags name, read (and refused when empty) before anything is created.
struct Secrets {
    api_token: Option<String>,
    webhook: Option<String>,
    git_token: Option<String>,
    ssh_key: Option<String>,
}

impl Secrets {
    fn read(args: &RunArgs) -> Result<Secrets> {
        Ok(Secrets {
            api_token: read_secret(
                args.api_token_env.as_deref(),
                args.api_token_file.as_deref(),
                "--api-token",
            )?,
            webhook: read_secret(
                args.webhook_secret_env.as_deref(),
                args.webhook_secret_file.as_deref(),
                "--webhook-secret",
            )?,
            git_token: read_secret(
                args.git_token_env.as_deref(),
                args.git_token_file.as_deref(),
                "--git-token",
            )?,
            ssh_key: read_secret(
                args.git_ssh_key_env.as_deref(),
                args.git_ssh_key_file.as_deref(),
                "--git-ssh-key",
            )?,
        })
    }
}

/// `ringmaster run`: until Ctrl-C or SIGTERM.
pub async fn run(args: RunArgs) -> Result<()> {
    crate::driver::set_drift_interval(args.drift_interval);
    let secrets = Secrets::read(&args)?;
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
    api.api_token = secrets.api_token;
    api.webhook_secret = secrets.webhook.map(String::into_bytes);
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
    let _cycles = embedded.spawn_cycles(EMBEDDED_CYCLE);

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
            let token = secrets.git_token.clone();
            let ssh_key = secrets.ssh_key.clone().map(|private_key| SshKey {
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
            (Source::Git(g, args.git_timeout), args.interval)
        }
        _ => bail!("give exactly one source: --dir PATH or --git URL"),
    };

    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen there", args.listen))?;
    println!("ringmaster api listening on http://{}", tcp.local_addr()?);
    let served = api.clone();
    tokio::spawn(async move {
        if let Err(e) = api::serve(tcp, served).await {
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
    let mut reader = source.spawn_reader();
    let mut next_read = Instant::now();
    loop {
        if !reader.reading && Instant::now() >= next_read {
            reader.start();
        }
        let next_due = match ctl.reconcile_due().await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("{e:#}; tried again in {:?}", controller::STORE_RETRY);
                Some(Instant::now() + controller::STORE_RETRY)
            }
        };
        // While a read is in flight, its result wakes the loop; the next one is timed
        // from its end.
        let read_at = (!reader.reading).then_some(next_read);
        let wake_at = match (next_due, read_at) {
            (Some(d), Some(r)) => d.min(r),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => Instant::now() + period,
        }
        .max(Instant::now() + Duration::from_millis(50));
        tokio::select! {
            _ = &mut shutdown => break,
            Some(read) = reader.results.recv() => {
                reader.reading = false;
                match read {
                    Ok(snap) => {
                        if let Some(rev) = &snap.revision {
                            tracing::debug!(commit = %rev, "source read");
                        }
                        ctl.source_read(None).await;
                        if let Err(e) = ctl.ingest(&snap).await {
                            tracing::error!("{e:#}");
                        }
                    }
                    Err(e) => {
                        api.metrics.source_error();
                        tracing::warn!("{e:#}; what was applied stays as it is");
                        ctl.source_read(Some(format!("{e:#}"))).await;
                    }
                }
                next_read = if std::mem::take(&mut reader.again) {
                    Instant::now()
                } else {
                    Instant::now() + period
                };
            }
            _ = hint_rx.recv() => reader.asked(&mut next_read),
            _ = api.fetch.notified() => reader.asked(&mut next_read),
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
