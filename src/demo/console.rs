//! The operator console of `demo --keep-running` ([`crate::console`]): the demo's rollouts
//! as the loop last left them, in the demo's (virtual, then real-time) clock; requests
//! are handed to the loop, which reconciles the rollout with them on its next tick.

use super::Tracked;
use crate::clock::{Clock, ManualClock};
use crate::console::{Backend, RolloutRow};
use crate::driver::Driver;
use crate::resources::Operation;
use async_trait::async_trait;
use jiff::Timestamp;
use parking_lot::Mutex;
use std::sync::Arc;

/// What the console reads and queues through.
pub(crate) struct DemoConsole {
    rows: Mutex<Vec<RolloutRow>>,
    requests: Mutex<Vec<(String, String, Operation)>>,
    driver: Arc<Driver>,
    token: String,
    clock: ManualClock,
    start: Timestamp,
}

impl DemoConsole {
    pub(crate) fn new(
        driver: Arc<Driver>,
        token: String,
        clock: ManualClock,
        start: Timestamp,
    ) -> DemoConsole {
        DemoConsole {
            rows: Mutex::default(),
            requests: Mutex::default(),
            driver,
            token,
            clock,
            start,
        }
    }

    /// Publishes the rollouts as they are now.
    pub(crate) fn publish(&self, tracked: &[Tracked]) {
        *self.rows.lock() = tracked
            .iter()
            .map(|t| RolloutRow {
                namespace: t
                    .ro
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name: t.name().to_string(),
                rollout: t.ro.clone(),
                status: t.status.clone(),
                error: None,
                created: Some(self.start),
                deleting: false,
            })
            .collect();
    }

    /// Hands the queued requests to their rollouts (reconciled on the next tick).
    pub(crate) fn deliver(&self, tracked: &mut [Tracked]) {
        for (ns, name, op) in self.requests.lock().drain(..) {
            if let Some(t) = tracked.iter_mut().find(|t| {
                t.name() == name && t.ro.metadata.namespace.as_deref().unwrap_or("default") == ns
            }) {
                t.ops.push(op);
            }
        }
    }
}

#[async_trait]
impl Backend for DemoConsole {
    async fn rollouts(&self) -> Result<Vec<RolloutRow>, String> {
        Ok(self.rows.lock().clone())
    }

    async fn request(&self, namespace: &str, name: &str, op: Operation) -> Result<bool, String> {
        let known = self
            .rows
            .lock()
            .iter()
            .any(|r| r.namespace == namespace && r.name == name);
        if known {
            self.requests
                .lock()
                .push((namespace.to_string(), name.to_string(), op));
        }
        Ok(known)
    }

    fn driver(&self, _: &str, _: &str) -> Option<Arc<Driver>> {
        Some(self.driver.clone())
    }

    fn token(&self) -> Option<String> {
        Some(self.token.clone())
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }
}
