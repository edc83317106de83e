//! The `Hub` trait over the in-process embedded hub.

use super::{Hub, QueryPage, TestQueriesResult, not_found_as_none};
use crate::hub::EmbeddedHub;
use crate::iothub::configuration::Configuration;
use crate::iothub::error::HubError;
use async_trait::async_trait;
use std::collections::BTreeMap;

#[async_trait]
impl Hub for EmbeddedHub {
    async fn list_configurations(&self) -> Result<Vec<Configuration>, HubError> {
        Ok(EmbeddedHub::list_configurations(self))
    }
    async fn get_configuration(&self, id: &str) -> Result<Option<Configuration>, HubError> {
        not_found_as_none(EmbeddedHub::get_configuration(self, id))
    }
    async fn create_configuration(
        &self,
        config: &Configuration,
    ) -> Result<Configuration, HubError> {
        EmbeddedHub::create_configuration(self, config)
    }
    async fn update_configuration(
        &self,
        config: &Configuration,
        etag: Option<&str>,
    ) -> Result<Configuration, HubError> {
        EmbeddedHub::update_configuration(self, config, etag)
    }
    async fn delete_configuration(&self, id: &str, etag: Option<&str>) -> Result<(), HubError> {
        EmbeddedHub::delete_configuration(self, id, etag)
    }
    async fn query(
        &self,
        query: &str,
        page_size: Option<usize>,
        continuation: Option<&str>,
    ) -> Result<QueryPage, HubError> {
        EmbeddedHub::query(self, query, page_size, continuation)
    }
    async fn test_queries(
        &self,
        target_condition: &str,
        metric_queries: &BTreeMap<String, String>,
    ) -> Result<TestQueriesResult, HubError> {
        Ok(EmbeddedHub::test_queries(
            self,
            target_condition,
            metric_queries,
        ))
    }
    async fn get_twin(&self, device_id: &str) -> Result<Option<serde_json::Value>, HubError> {
        not_found_as_none(EmbeddedHub::get_twin(self, device_id))
    }
    async fn update_twin(
        &self,
        device_id: &str,
        patch: &serde_json::Value,
        etag: Option<&str>,
    ) -> Result<serde_json::Value, HubError> {
        EmbeddedHub::update_twin(self, device_id, patch, etag)
    }
}
