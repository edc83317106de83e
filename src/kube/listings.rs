//! One listing of a hub's configurations shared by the reconciles of its rollouts.
//!
//! Listing is a configuration operation: it spends the same per-minute budget as a write
//! (docs/rollouts.md, "Budgets"). Run mode reconciles the due rollouts of a hub as one
//! round and lists once for the round ([`crate::driver::ReconcileInput::listing`]); the
//! Kubernetes controller reconciles each rollout on its own schedule, so a *pass* here is
//! a short window ([`PASS`]): reconciles of one hub that start within it share the
//! listing the first of them made (the others wait for it rather than list again). A
//! write through the hub's driver ends the pass at once, so that no reconcile decides on
//! a listing older than a write of this controller (a deletion is never finalized on a
//! listing that predates a create, say).

use crate::driver::{Driver, HubRequest};
use crate::iothub::configuration::Configuration;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How long a listing serves the reconciles of its hub.
pub const PASS: Duration = Duration::from_secs(10);

type Listing = Arc<Vec<Configuration>>;

/// The shared listing of one driver.
struct Slot {
    driver: Weak<Driver>,
    /// Bumped by every write through the driver: a listing taken before it is stale.
    epoch: AtomicU64,
    /// The listing, when it was taken, and the epoch it was taken in. Held across the
    /// listing request, so that concurrent reconciles wait for one listing.
    listing: tokio::sync::Mutex<Option<(Instant, u64, Listing)>>,
}

/// The listings of every hub, by driver.
#[derive(Default)]
pub struct Listings {
    slots: Mutex<HashMap<usize, Arc<Slot>>>,
}

impl Listings {
    fn slot(&self, driver: &Arc<Driver>) -> Arc<Slot> {
        let key = Arc::as_ptr(driver) as usize;
        let mut slots = self.slots.lock();
        slots.retain(|_, s| s.driver.strong_count() > 0);
        let slot = slots.entry(key).or_insert_with(|| {
            Arc::new(Slot {
                driver: Arc::downgrade(driver),
                epoch: AtomicU64::new(0),
                listing: tokio::sync::Mutex::new(None),
            })
        });
        if !Weak::ptr_eq(&slot.driver, &Arc::downgrade(driver)) {
            *slot = Arc::new(Slot {
                driver: Arc::downgrade(driver),
                epoch: AtomicU64::new(0),
                listing: tokio::sync::Mutex::new(None),
            });
        }
        slot.clone()
    }

    /// The pass's listing of `driver`'s hub: the one taken less than [`PASS`] ago with no
    /// write since, else a new one (its request recorded in `requests`). `None` when the
    /// hub's budget is spent or the hub fails: the reconcile then lists itself, and the
    /// driver records the wait or the error in the status as usual.
    pub async fn listing(
        &self,
        driver: &Arc<Driver>,
        requests: &mut Vec<HubRequest>,
    ) -> Option<Listing> {
        let slot = self.slot(driver);
        let mut held = slot.listing.lock().await;
        let epoch = slot.epoch.load(Ordering::SeqCst);
        if let Some((at, e, list)) = held.as_ref()
            && *e == epoch
            && at.elapsed() < PASS
        {
            return Some(list.clone());
        }
        match driver.list(requests).await {
            Ok(Ok(list)) => {
                let list = Arc::new(list);
                *held = Some((Instant::now(), epoch, list.clone()));
                Some(list)
            }
            _ => {
                *held = None;
                None
            }
        }
    }

    /// A reconcile wrote through `driver`: the pass's listing is stale.
    pub fn wrote(&self, driver: &Arc<Driver>) {
        self.slot(driver).epoch.fetch_add(1, Ordering::SeqCst);
    }
}
