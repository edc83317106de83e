//! The `Hub` trait: what the controller needs from an IoT hub, and nothing more.
//!
//! Two implementations sit behind it: the in-process embedded hub ([`embedded`]) and the
//! REST client for Azure IoT Hub (or `ringmaster hub serve`). The trait is deliberately
//! small: configurations, queries and counts, twin read and patch.

use crate::iothub::configuration::Configuration;
use crate::iothub::error::{ErrorCode, HubError};
use async_trait::async_trait;

pub use crate::iothub::{QueryPage, TestQueriesResult};

pub mod azure;
pub mod embedded;
use std::collections::BTreeMap;

/// What ringmaster needs from an IoT hub.
#[async_trait]
pub trait Hub: Send + Sync {
    /// Every configuration on the hub (ADM configurations and edge deployments).
    async fn list_configurations(&self) -> Result<Vec<Configuration>, HubError>;
    /// One configuration, or `None` when it does not exist.
    async fn get_configuration(&self, id: &str) -> Result<Option<Configuration>, HubError>;
    /// Creates a configuration; `ConfigurationAlreadyExists` when the id is taken.
    async fn create_configuration(&self, config: &Configuration)
    -> Result<Configuration, HubError>;
    /// Updates the mutable fields (target condition, priority, labels, metrics). `etag`
    /// `None` means unconditional (`If-Match: "*"`).
    async fn update_configuration(
        &self,
        config: &Configuration,
        etag: Option<&str>,
    ) -> Result<Configuration, HubError>;
    /// Deletes a configuration; deleting one that does not exist is `ConfigurationNotFound`.
    async fn delete_configuration(&self, id: &str, etag: Option<&str>) -> Result<(), HubError>;
    /// One page of a twin query.
    async fn query(
        &self,
        query: &str,
        page_size: Option<usize>,
        continuation: Option<&str>,
    ) -> Result<QueryPage, HubError>;
    /// Validates a target condition and custom metric queries without creating anything.
    async fn test_queries(
        &self,
        target_condition: &str,
        metric_queries: &BTreeMap<String, String>,
    ) -> Result<TestQueriesResult, HubError>;
    /// A device twin as JSON, or `None` when the device does not exist.
    async fn get_twin(&self, device_id: &str) -> Result<Option<serde_json::Value>, HubError>;
    /// A service-side partial update (JSON merge of `tags` and `properties.desired`).
    async fn update_twin(
        &self,
        device_id: &str,
        patch: &serde_json::Value,
        etag: Option<&str>,
    ) -> Result<serde_json::Value, HubError>;

    /// The number of twins matching a bare predicate (`*` for all), via `SELECT COUNT()`.
    async fn count(&self, condition: &str) -> Result<u64, HubError> {
        let q = if condition.trim() == "*" {
            "SELECT COUNT() AS n FROM devices".to_string()
        } else {
            format!("SELECT COUNT() AS n FROM devices WHERE {condition}")
        };
        let page = self.query(&q, None, None).await?;
        Ok(page
            .items
            .first()
            .and_then(|r| r.get("n"))
            .and_then(|n| n.as_u64())
            .unwrap_or(0))
    }
}

/// A configuration or device that does not exist as `None`, for the `Hub` methods that
/// answer `Option`.
pub(crate) fn not_found_as_none<T>(r: Result<T, HubError>) -> Result<Option<T>, HubError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if matches!(
                e.code,
                ErrorCode::ConfigurationNotFound | ErrorCode::DeviceNotFound
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
