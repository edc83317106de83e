//! The IoT Hub query language: parse once, evaluate many times.
//!
//! CONTRACT (used by the engine, the REST layer and the decision core; keep these
//! signatures): [`Condition`] is a compiled bare predicate (a configuration's target
//! condition, `*` for every device); [`Query`] is a compiled `SELECT ... FROM devices ...`.
//! Evaluation runs against any [`Row`](crate::hub::value::Row).

use crate::hub::path::PathId;
use crate::hub::value::Row;

/// A syntax or semantic error in a query, with the 1-based column where it was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct QueryError {
    pub column: usize,
    pub message: String,
}

/// A compiled predicate (the WHERE expression, or `*`).
#[derive(Clone, Debug)]
pub struct Condition {
    text: String,
}

impl Condition {
    /// Parses a bare predicate; `*` (surrounding whitespace allowed) matches every device.
    pub fn parse(text: &str) -> Result<Condition, QueryError> {
        let _ = text;
        todo!("query language")
    }
    /// True when the row satisfies the predicate (only Boolean `true` counts).
    pub fn matches(&self, row: &dyn Row) -> bool {
        let _ = row;
        todo!("query language")
    }
    /// True for `*`.
    pub fn is_all(&self) -> bool {
        todo!("query language")
    }
    /// The source text as given.
    pub fn text(&self) -> &str {
        &self.text
    }
    /// The lowercase paths this predicate reads (what a twin change must touch to matter).
    pub fn paths(&self) -> Vec<PathId> {
        todo!("query language")
    }
}

/// What `x-ms-item-type` a query's rows are: whole twins or projected rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemType {
    Twin,
    Raw,
}

/// A compiled `SELECT ... FROM devices [WHERE ...] [GROUP BY ...]`.
#[derive(Clone, Debug)]
pub struct Query {
    text: String,
}

impl Query {
    /// Parses a full query. Refuses more than 8192 characters.
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        let _ = text;
        todo!("query language")
    }
    pub fn text(&self) -> &str {
        &self.text
    }
    /// The WHERE predicate (`None`: every row).
    pub fn condition(&self) -> Option<&Condition> {
        todo!("query language")
    }
    /// `TOP n`, if given.
    pub fn top(&self) -> Option<usize> {
        todo!("query language")
    }
    /// True when the query aggregates (`COUNT()` or GROUP BY): use [`Query::aggregate`].
    pub fn is_aggregate(&self) -> bool {
        todo!("query language")
    }
    /// `Twin` for `SELECT *`, `Raw` otherwise.
    pub fn item_type(&self) -> ItemType {
        todo!("query language")
    }
    /// The output row for one matching row of a non-aggregate query.
    pub fn project(&self, row: &dyn Row) -> serde_json::Value {
        let _ = row;
        todo!("query language")
    }
    /// Runs an aggregate query over the rows that match the condition (the caller filters).
    pub fn aggregate<'a>(&self, rows: &mut dyn Iterator<Item = &'a dyn Row>) -> Vec<serde_json::Value> {
        let _ = rows;
        todo!("query language")
    }
}
