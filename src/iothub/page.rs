//! What a twin query and a query test answer, as the service REST API shapes them.

use std::collections::BTreeMap;

/// One page of a twin query.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryPage {
    /// `twin` or `raw` (the `x-ms-item-type` header).
    pub item_type: String,
    pub items: Vec<serde_json::Value>,
    /// Present when more pages exist.
    pub continuation: Option<String>,
}

/// The answer of `POST /configurations/testQueries`: empty strings mean "valid".
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestQueriesResult {
    #[serde(default)]
    pub target_condition_error: String,
    #[serde(default)]
    pub custom_metric_query_errors: BTreeMap<String, String>,
}
