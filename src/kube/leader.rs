//! Leader election: only the replica holding the Lease writes to hubs and to status.
//!
//! Every replica runs the controller, so its watch caches are warm when it takes over;
//! [`reconcile`](super::controller::reconcile) returns at once, touching nothing, while
//! this replica is not the leader, and the controller reconciles every rollout again
//! when leadership is gained ([`Leadership::gained`]).
//!
//! The Lease (`coordination.k8s.io/v1`) is kept the way client-go's leader election keeps
//! it (https://pkg.go.dev/k8s.io/client-go/tools/leaderelection): every replica reads it
//! every [`RETRY_PERIOD`]; the holder renews it then (a merge patch carrying the
//! resourceVersion it read, so two replicas never both win); a standby takes it once it
//! has seen it unchanged for [`LEASE_DURATION_SECS`] on its own clock, or at once when it
//! has no holder.
//! - **Stepping down in time.** This replica counts itself the leader only until
//!   [`RENEW_DEADLINE`] after the start of its last successful renewal, well before a
//!   standby may take over ([`LEASE_DURATION_SECS`] after it last saw a change). So while
//!   the API server cannot be reached, `/readyz`, `ringmaster_leader` and the fenced hub
//!   writes ([`super::fence`]) stop saying leader before the Lease runs out.
//! - **Release.** On SIGTERM ([`Leadership::release`]) the holder stops writing first,
//!   then clears the Lease's holder: a standby takes over within one [`RETRY_PERIOD`],
//!   not at expiry. After a kill -9 the standby waits for the expiry.
//!
//! Leases give no hard fencing on their own; [`super::fence`] bounds every hub write by
//! [`Leadership::valid_until`], and every hub write the driver makes is idempotent.

use futures::Stream;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use parking_lot::Mutex;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Lease timing: a Lease is held for this many seconds (its `leaseDurationSeconds`).
pub const LEASE_DURATION_SECS: u64 = 15;
/// How long after the start of its last successful renewal the holder still counts
/// itself the leader (below [`LEASE_DURATION_SECS`]: the margin covers clock rates and
/// the time a renewal takes).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often every replica reads (and the holder renews) the Lease; also the bound on
/// one call to the API server.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Whether this replica is the leader, as it changes.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    /// Keeps the channel open when no elector owns the sender.
    _tx: Option<Arc<watch::Sender<bool>>>,
    /// The Lease this replica campaigns for (`None`: leadership is given, not elected).
    lease: Option<Arc<Held>>,
}

/// What the elector task and every [`Leadership`] clone share.
#[derive(Debug)]
struct Held {
    /// While this replica holds the Lease: when it stops counting itself the leader
    /// unless it renews before.
    valid_until: Mutex<Option<Instant>>,
    stop: Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Leadership {
    /// Always the leader (`--leader-election=false`, a single replica).
    pub fn always() -> Leadership {
        let (tx, rx) = watch::channel(true);
        Leadership {
            rx,
            _tx: Some(Arc::new(tx)),
            lease: None,
        }
    }

    /// Leadership as a channel reports it (tests drive the sender).
    pub fn from_channel(rx: watch::Receiver<bool>) -> Leadership {
        Leadership {
            rx,
            _tx: None,
            lease: None,
        }
    }

    /// Elected leadership with no elector behind it, valid until `valid_until` (tests).
    #[cfg(test)]
    pub(crate) fn elected_for_test(valid_until: Option<Instant>) -> Leadership {
        let (tx, rx) = watch::channel(true);
        Leadership {
            rx,
            _tx: Some(Arc::new(tx)),
            lease: Some(Arc::new(Held {
                valid_until: Mutex::new(valid_until),
                stop: Notify::new(),
                task: Mutex::new(None),
            })),
        }
    }

    /// Moves the validity of [`Leadership::elected_for_test`] (a renewal, in tests).
    #[cfg(test)]
    pub(crate) fn set_valid_until_for_test(&self, t: Option<Instant>) {
        if let Some(h) = &self.lease {
            *h.valid_until.lock() = t;
        }
    }

    /// Campaigns for the Lease `name` in `namespace` as `identity`, in a background task
    /// that renews the lease while held; [`Leadership::release`] ends it.
    pub async fn elect(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
    ) -> anyhow::Result<Leadership> {
        let api: Api<Lease> = Api::namespaced(client, namespace);
        // Fail at start, with the reason, when the Lease cannot even be read.
        tokio::time::timeout(RETRY_PERIOD * 5, api.get_opt(name))
            .await
            .map_err(|_| anyhow::anyhow!("reading the Lease {namespace}/{name}: the API server did not answer"))?
            .map_err(|e| anyhow::anyhow!("cannot read the Lease {namespace}/{name} for leader election: {e} (the identity needs get, create and patch on leases in {namespace})"))?;
        let (tx, rx) = watch::channel(false);
        let held = Arc::new(Held {
            valid_until: Mutex::new(None),
            stop: Notify::new(),
            task: Mutex::new(None),
        });
        let elector = Elector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            tx,
            held: held.clone(),
            seen: None,
        };
        *held.task.lock() = Some(tokio::spawn(elector.run()));
        Ok(Leadership {
            rx,
            _tx: None,
            lease: Some(held),
        })
    }

    /// True while this replica holds the lease (and, when elected, has renewed it
    /// within [`RENEW_DEADLINE`]).
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
            && match &self.lease {
                None => true,
                Some(h) => h.valid_until.lock().is_some_and(|t| Instant::now() < t),
            }
    }

    /// Until when this replica may write as the leader: `None` when it is not the
    /// leader; `Some(None)` when leadership has no time bound (not elected).
    pub fn valid_until(&self) -> Option<Option<Instant>> {
        if !self.is_leader() {
            return None;
        }
        Some(self.lease.as_ref().and_then(|h| *h.valid_until.lock()))
    }

    /// Stops campaigning: stops counting itself the leader at once, then clears the
    /// Lease's holder if it is this replica (so a standby takes over without waiting for
    /// the expiry), and returns when that is done or has failed. A no-op when not
    /// elected.
    pub async fn release(&self) {
        let Some(h) = &self.lease else { return };
        h.stop.notify_one();
        let task = h.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Yields once each time this replica becomes the leader (and once at the start if
    /// it already is), to reconcile every rollout then.
    pub fn gained(&self) -> impl Stream<Item = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        rx.mark_changed();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                rx.changed().await.ok()?;
                if *rx.borrow_and_update() {
                    return Some(((), rx));
                }
            }
        })
    }
}

/// The campaign for one Lease.
struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    tx: watch::Sender<bool>,
    held: Arc<Held>,
    /// The Lease's resourceVersion as last read, and when it was first seen.
    seen: Option<(String, Instant)>,
}

fn now_micro() -> String {
    let t = jiff::Timestamp::now();
    format!(
        "{}.{:06}Z",
        t.strftime("%Y-%m-%dT%H:%M:%S"),
        t.subsec_microsecond()
    )
}

impl Elector {
    async fn run(mut self) {
        let mut next = Instant::now();
        loop {
            tokio::select! {
                () = self.held.stop.notified() => break,
                () = tokio::time::sleep_until(next) => {}
            }
            let start = Instant::now();
            next = start + RETRY_PERIOD;
            let outcome = tokio::time::timeout(RETRY_PERIOD, self.step()).await;
            match outcome {
                Ok(Ok(true)) => {
                    let lapsed = self
                        .held
                        .valid_until
                        .lock()
                        .replace(start + RENEW_DEADLINE)
                        .is_none_or(|t| Instant::now() >= t);
                    if !*self.tx.borrow() {
                        tracing::info!(lease = %self.name, identity = %self.identity, "acquired the Lease: leading");
                        let _ = self.tx.send(true);
                    } else if lapsed {
                        // Renewed after leadership had lapsed: reconciles skipped meanwhile
                        // (they wait for a change) must run again, as on a new acquisition.
                        tracing::info!(lease = %self.name, "renewed the Lease after a lapse: leading again");
                        let _ = self.tx.send(false);
                        let _ = self.tx.send(true);
                    }
                }
                Ok(Ok(false)) => self.step_down("another replica holds the Lease"),
                Ok(Err(e)) => self.check_deadline(&format!("{e}")),
                Err(_) => self.check_deadline("the API server did not answer"),
            }
        }
        self.release().await;
    }

    /// After a failed renewal: steps down once the renew deadline has passed.
    fn check_deadline(&mut self, why: &str) {
        let lapsed = self
            .held
            .valid_until
            .lock()
            .is_some_and(|t| Instant::now() >= t);
        if lapsed {
            self.step_down(&format!(
                "could not renew the Lease within {}s: {why}",
                RENEW_DEADLINE.as_secs()
            ));
        } else if *self.tx.borrow() {
            tracing::debug!(error = %why, "renewing the Lease failed; retrying");
        }
    }

    fn step_down(&mut self, why: &str) {
        *self.held.valid_until.lock() = None;
        if *self.tx.borrow() {
            tracing::warn!(lease = %self.name, reason = %why, "no longer the leader");
            let _ = self.tx.send(false);
        }
    }

    /// One read of the Lease, and the write it calls for. `Ok(true)` when this replica
    /// holds the Lease afterwards.
    async fn step(&mut self) -> Result<bool, kube::Error> {
        let duration = LEASE_DURATION_SECS as i32;
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let now = now_micro();
            let obj: Lease = serde_json::from_value(json!({
                "metadata": {"name": self.name},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": duration,
                         "acquireTime": now, "renewTime": now, "leaseTransitions": 0}
            }))
            .expect("a Lease");
            return match self
                .api
                .create(
                    &PostParams {
                        field_manager: Some(super::FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    &obj,
                )
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let now_instant = Instant::now();
        match &self.seen {
            Some((seen, _)) if *seen == rv => {}
            _ => self.seen = Some((rv.clone(), now_instant)),
        }
        let spec = lease.spec.unwrap_or_default();
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        let held_for =
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(duration).max(1) as u64);
        let expired = self
            .seen
            .as_ref()
            .is_some_and(|(_, at)| now_instant.duration_since(*at) >= held_for);
        let now = now_micro();
        let patch = match holder.as_deref() {
            Some(h) if h == self.identity => json!({
                "metadata": {"resourceVersion": rv},
                "spec": {"renewTime": now, "leaseDurationSeconds": duration}
            }),
            Some(_) if !expired => return Ok(false),
            _ => {
                if let Some(h) = &holder {
                    tracing::info!(lease = %self.name, previous = %h, "the Lease expired; taking it");
                }
                json!({
                    "metadata": {"resourceVersion": rv},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": duration,
                             "acquireTime": now, "renewTime": now,
                             "leaseTransitions": spec.lease_transitions.unwrap_or(0) + 1}
                })
            }
        };
        let pp = PatchParams {
            field_manager: Some(super::FIELD_MANAGER.into()),
            ..Default::default()
        };
        match self.api.patch(&self.name, &pp, &Patch::Merge(&patch)).await {
            Ok(_) => Ok(true),
            // Someone else wrote it since the read: read again at the next step.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stops counting itself the leader, then clears the Lease's holder if it is still
    /// this replica.
    async fn release(&mut self) {
        let was_leader = *self.tx.borrow();
        *self.held.valid_until.lock() = None;
        let _ = self.tx.send(false);
        if !was_leader {
            return;
        }
        let clear = async {
            let lease = self.api.get_opt(&self.name).await?;
            let Some(lease) = lease else { return Ok(()) };
            let ours = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str());
            if !ours {
                return Ok(());
            }
            let patch = json!({
                "metadata": {"resourceVersion": lease.metadata.resource_version},
                "spec": {"holderIdentity": null, "renewTime": null, "acquireTime": null}
            });
            let pp = PatchParams {
                field_manager: Some(super::FIELD_MANAGER.into()),
                ..Default::default()
            };
            self.api
                .patch(&self.name, &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(RETRY_PERIOD * 2, clear).await {
            Ok(Ok(())) => tracing::info!(lease = %self.name, "released the Lease"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not release the Lease; a standby takes over at its expiry")
            }
            Err(_) => tracing::warn!(
                "could not release the Lease in time; a standby takes over at its expiry"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn gained_fires_on_each_acquisition_only() {
        let (tx, rx) = watch::channel(false);
        let l = Leadership::from_channel(rx);
        assert!(!l.is_leader());
        let mut gained = Box::pin(l.gained());
        tx.send(true).unwrap();
        assert_eq!(gained.next().await, Some(()));
        assert!(l.is_leader());
        tx.send(false).unwrap();
        tx.send(true).unwrap();
        assert_eq!(gained.next().await, Some(()));
        drop(tx);
        assert_eq!(gained.next().await, None);
    }

    #[tokio::test]
    async fn always_is_leader_from_the_start() {
        let l = Leadership::always();
        assert!(l.is_leader());
        let mut gained = Box::pin(l.gained());
        assert_eq!(gained.next().await, Some(()));
    }
}
