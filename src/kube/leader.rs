//! Leader election: only the replica holding the Lease writes to hubs and to status.
//!
//! Every replica runs the controller, so its watch caches are warm when it takes over;
//! [`reconcile`](super::controller::reconcile) returns at once, touching nothing, while
//! this replica is not the leader, and the controller reconciles every rollout again
//! when leadership is gained ([`Leadership::gained`]). Leases give no hard fencing (a
//! short window with two leaders is possible, see docs/design.md, "Implementation notes"): every hub write the
//! driver makes is idempotent, so that window does no harm.

use futures::Stream;
use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use std::sync::Arc;
use tokio::sync::watch;

/// Whether this replica is the leader, as it changes.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    /// Keeps the channel open when no lease manager owns the sender.
    _tx: Option<Arc<watch::Sender<bool>>>,
}

/// Lease timing: a Lease is held for this many seconds (its `leaseDurationSeconds`).
pub const LEASE_DURATION_SECS: u64 = 15;
/// The holder renews the Lease this many seconds before it runs out.
pub const LEASE_GRACE_SECS: u64 = 5;

impl Leadership {
    /// Always the leader (`--leader-election=false`, a single replica).
    pub fn always() -> Leadership {
        let (tx, rx) = watch::channel(true);
        Leadership {
            rx,
            _tx: Some(Arc::new(tx)),
        }
    }

    /// Leadership as a channel reports it (tests drive the sender).
    pub fn from_channel(rx: watch::Receiver<bool>) -> Leadership {
        Leadership { rx, _tx: None }
    }

    /// Campaigns for the Lease `name` in `namespace` as `identity`, in a background task
    /// that renews the lease while held and releases it when every [`Leadership`] clone
    /// is dropped.
    pub async fn elect(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
    ) -> anyhow::Result<Leadership> {
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_parameters(LeaseParams::new(
                identity,
                LEASE_DURATION_SECS,
                LEASE_GRACE_SECS,
            ))
            .with_field_manager(super::FIELD_MANAGER)
            .build()
            .await?;
        let (rx, task) = manager.watch().await;
        tokio::spawn(async move {
            match task.await {
                Ok(Ok(_)) => tracing::info!("leader election stopped; the lease is released"),
                Ok(Err(e)) => tracing::error!(error = %e, "leader election failed"),
                Err(e) => tracing::error!(error = %e, "leader election task panicked"),
            }
        });
        Ok(Leadership::from_channel(rx))
    }

    /// True while this replica holds the lease.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
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
