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
    ///
    /// Fails closed: an answer without a non-negative integer `n` in its first row is a
    /// `ServerError`, never 0, because 0 is what confirms a rollback and permits cleanup.
    /// (The hub answers `[{"n": 0}]` when nothing matches.)
    async fn count(&self, condition: &str) -> Result<u64, HubError> {
        let q = if condition.trim() == "*" {
            "SELECT COUNT() AS n FROM devices".to_string()
        } else {
            format!("SELECT COUNT() AS n FROM devices WHERE {condition}")
        };
        let page = self.query(&q, None, None).await?;
        page.items
            .first()
            .and_then(|r| r.get("n"))
            .and_then(|n| n.as_u64())
            .ok_or_else(|| {
                let got = match page.items.first() {
                    None => "no row".to_string(),
                    Some(r) => match r.get("n") {
                        None => "a row without n".to_string(),
                        Some(n) => format!("n = {}", n.to_string().chars().take(40).collect::<String>()),
                    },
                };
                HubError::new(
                    ErrorCode::ServerError,
                    format!(
                        "the hub answered the query `{q}` with {got}; expected one row with a non-negative integer n"
                    ),
                )
            })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A hub whose every query answers `items`; nothing else is called.
    struct Answers(Vec<Value>);

    #[async_trait]
    impl Hub for Answers {
        async fn list_configurations(&self) -> Result<Vec<Configuration>, HubError> {
            unimplemented!()
        }
        async fn get_configuration(&self, _: &str) -> Result<Option<Configuration>, HubError> {
            unimplemented!()
        }
        async fn create_configuration(&self, _: &Configuration) -> Result<Configuration, HubError> {
            unimplemented!()
        }
        async fn update_configuration(
            &self,
            _: &Configuration,
            _: Option<&str>,
        ) -> Result<Configuration, HubError> {
            unimplemented!()
        }
        async fn delete_configuration(&self, _: &str, _: Option<&str>) -> Result<(), HubError> {
            unimplemented!()
        }
        async fn query(
            &self,
            _: &str,
            _: Option<usize>,
            _: Option<&str>,
        ) -> Result<QueryPage, HubError> {
            Ok(QueryPage {
                item_type: "raw".into(),
                items: self.0.clone(),
                continuation: None,
            })
        }
        async fn test_queries(
            &self,
            _: &str,
            _: &BTreeMap<String, String>,
        ) -> Result<TestQueriesResult, HubError> {
            unimplemented!()
        }
        async fn get_twin(&self, _: &str) -> Result<Option<Value>, HubError> {
            unimplemented!()
        }
        async fn update_twin(
            &self,
            _: &str,
            _: &Value,
            _: Option<&str>,
        ) -> Result<Value, HubError> {
            unimplemented!()
        }
    }

    #[tokio::test]
    async fn a_count_without_an_integer_n_is_a_hub_error_not_zero() {
        for items in [
            vec![json!({})],
            vec![],
            vec![json!({"n": "x"})],
            vec![json!({"n": -1})],
            vec![json!({"n": 1.5})],
            vec![json!({"n": 3.0})],
            vec![json!({"n": null})],
            vec![json!(7)],
        ] {
            let e = Answers(items.clone())
                .count("tags.ring='canary'")
                .await
                .expect_err(&format!("{items:?} is not a count"));
            assert_eq!(e.code, ErrorCode::ServerError, "{items:?}");
            assert!(
                e.message
                    .contains("SELECT COUNT() AS n FROM devices WHERE tags.ring='canary'"),
                "{}",
                e.message
            );
        }
        for (items, n) in [(vec![json!({"n": 0})], 0), (vec![json!({"n": 12})], 12)] {
            assert_eq!(Answers(items).count("*").await.unwrap(), n);
        }
    }
}
