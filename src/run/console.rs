//! The operator console's view of `run --dir` / `run --git` ([`crate::console`]): the
//! state store's rollouts, its request queue (as the API's operations), the driver the
//! controller last used for each rollout, and the API token.

use crate::console::{Backend, RolloutRow};
use crate::driver::Driver;
use crate::resources::Operation;
use crate::run::api::ApiState;
use crate::run::store::StoredRollout;
use async_trait::async_trait;
use std::sync::Arc;

fn row(r: StoredRollout) -> RolloutRow {
    RolloutRow {
        created: r.created.parse().ok(),
        namespace: r.namespace,
        name: r.name,
        rollout: r.rollout,
        status: r.status,
        error: r.error,
        deleting: r.deleting,
    }
}

#[async_trait]
impl Backend for ApiState {
    async fn rollouts(&self) -> Result<Vec<RolloutRow>, String> {
        self.store
            .run(|s| s.rollouts())
            .await
            .map(|v| v.into_iter().map(row).collect())
            .map_err(|e| e.to_string())
    }

    async fn request(&self, namespace: &str, name: &str, op: Operation) -> Result<bool, String> {
        let (ns, n) = (namespace.to_string(), name.to_string());
        let queued = self
            .store
            .run(move |s| {
                if s.rollout(&ns, &n)?.is_none() {
                    return Ok(false);
                }
                s.push_operation(&ns, &n, &op)?;
                Ok(true)
            })
            .await
            .map_err(|e| e.to_string())?;
        if queued {
            self.wake.notify_one();
        }
        Ok(queued)
    }

    fn driver(&self, namespace: &str, name: &str) -> Option<Arc<Driver>> {
        self.drivers
            .lock()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    fn token(&self) -> Option<String> {
        self.api_token.clone()
    }
}
