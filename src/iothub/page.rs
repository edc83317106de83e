//! What a twin query and a query test answer, as the service REST API shapes them.

use std::collections::BTreeMap;

/// One page of a twin query.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryPage {
    /// `twin` or `raw` (the `x-ms-item-type` header).
    pub item_type: String,
    /// The rows of this page: whole twins for `twin`, the selected fields for `raw`.
    pub items: Vec<serde_json::Value>,
    /// The token for the next page (the `x-ms-continuation` header); present when more
    /// pages exist.
    pub continuation: Option<String>,
}

/// The answer of `POST /configurations/testQueries`: empty strings mean "valid".
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestQueriesResult {
    /// `targetConditionError`: why the target condition does not parse, or `""`.
    #[serde(default)]
    pub target_condition_error: String,
    /// `customMetricQueryErrors`: metric name to why its query does not parse, or `""`.
    #[serde(default)]
    pub custom_metric_query_errors: BTreeMap<String, String>,
}
