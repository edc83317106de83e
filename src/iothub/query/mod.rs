//! The IoT Hub query language: parse once, evaluate many times.
//!
//! CONTRACT (used by the engine, the REST layer and the decision core; keep these
//! signatures): [`Condition`] is a compiled bare predicate (a configuration's target
//! condition, `*` for every device); [`Query`] is a compiled `SELECT ... FROM devices ...`.
//! Evaluation runs against any [`Row`].
//!
//! The parts, in the order text flows through them: `lexer.rs` (text → tokens with
//! columns), `parser.rs` (tokens → [`ast`], no recursion), `eval.rs` (tree → compiled
//! nodes over interned [`PathId`]s, and their three-valued evaluation) and `aggregate.rs`
//! (`COUNT()`, `SUM/AVG/MIN/MAX` and `GROUP BY`). Each file's header says what it decided
//! where IoT Hub's documentation is silent: `eval.rs` holds the semantics of undefined
//! values and comparisons, `aggregate.rs` the shape of grouped output.
//!
//! What the language accepts, in short: keywords and property names in any case (names
//! are looked up lowercase; values compare case-sensitively, except
//! `configurations.<id>.status`, which the hub stores lowercase and its own queries
//! compare as `'Applied'`); `[[any name]]` for names that are keywords or not
//! identifiers (`tags.[[group]]`, `configurations.[[my-config]].status`); constants
//! `null undefined true false`, numbers (`12 -3 1.5 2e10 0x1F`), quoted strings with
//! escapes and array constants; `+ - * / %`, `= != <> < <= > >=`, `IN`/`NIN`/`NOT IN`,
//! `AND OR NOT` and parentheses; the functions in [`ast::Func`]. At most
//! [`MAX_QUERY_CHARS`] characters and [`MAX_DEPTH`] levels of nesting.

mod aggregate;
pub mod ast;
mod eval;
mod lexer;
mod parser;
mod plan;

#[cfg(test)]
pub(crate) mod proptests;
#[cfg(test)]
mod tests;

use crate::iothub::path::{PathId, intern_lc};
use crate::iothub::value::Row;

pub use ast::{Expr, Select};
pub use plan::{ColumnTest, Plan, RowTest, Truth};

/// IoT Hub's limit on the length of a query or target condition, in characters.
pub const MAX_QUERY_CHARS: usize = 8192;

/// How deep an expression may nest: open parentheses, calls, `NOT` and unary `-` as
/// written, and the levels of the tree they parse into.
pub const MAX_DEPTH: usize = 200;

/// A syntax or semantic error in a query, with the 1-based column where it was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct QueryError {
    /// 1-based column (in characters) of the query text where the problem starts.
    pub column: usize,
    /// What is wrong and what would be valid there.
    pub message: String,
}

/// The result of parsing.
pub type Result<T> = std::result::Result<T, QueryError>;

/// A compiled predicate (the WHERE expression, or `*`).
#[derive(Clone, Debug)]
pub struct Condition {
    text: String,
    /// `None` for `*`.
    compiled: Option<Compiled>,
}

#[derive(Clone, Debug)]
struct Compiled {
    expr: Expr,
    node: eval::Node,
    paths: Vec<PathId>,
}

impl Condition {
    /// Parses a bare predicate; `*` (surrounding whitespace allowed) matches every device.
    pub fn parse(text: &str) -> Result<Condition> {
        parser::check_length(text)?;
        if text.trim() == "*" {
            return Ok(Condition {
                text: text.to_string(),
                compiled: None,
            });
        }
        let expr = parser::parse_condition(text)?;
        Ok(Condition::from_expr(text, expr))
    }

    fn from_expr(text: &str, expr: Expr) -> Condition {
        let node = eval::compile(&expr);
        let mut paths = Vec::new();
        eval::paths(&node, &mut paths);
        Condition {
            text: text.to_string(),
            compiled: Some(Compiled { expr, node, paths }),
        }
    }

    /// True when the row satisfies the predicate (only Boolean `true` counts).
    pub fn matches(&self, row: &dyn Row) -> bool {
        match &self.compiled {
            None => true,
            Some(c) => c.node.truth(row) == eval::Tri::True,
        }
    }

    /// True for `*`.
    pub fn is_all(&self) -> bool {
        self.compiled.is_none()
    }

    /// The source text as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The lowercase paths this predicate reads (what a twin change must touch to matter),
    /// each once, in order of first appearance.
    pub fn paths(&self) -> Vec<PathId> {
        self.compiled
            .as_ref()
            .map(|c| c.paths.clone())
            .unwrap_or_default()
    }

    /// The syntax tree (`None` for `*`); its `Display` prints normalized query text.
    pub fn expr(&self) -> Option<&Expr> {
        self.compiled.as_ref().map(|c| &c.expr)
    }
}

/// What `x-ms-item-type` a query's rows are: whole twins or projected rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemType {
    /// `twin`: each row is a whole twin (`SELECT *`).
    Twin,
    /// `raw`: each row is an object of projections or aggregates.
    Raw,
}

/// A compiled `SELECT ... FROM devices [WHERE ...] [GROUP BY ...]`.
#[derive(Clone, Debug)]
pub struct Query {
    text: String,
    select: Select,
    condition: Option<Condition>,
    shape: Shape,
}

/// What a query outputs per row.
#[derive(Clone, Debug)]
enum Shape {
    /// `SELECT *`.
    Twin,
    /// Projections: output key and lowercase path.
    Project(Vec<(String, PathId)>),
    Aggregate(aggregate::Plan),
}

impl Query {
    /// Parses a full query. Refuses more than 8192 characters.
    pub fn parse(text: &str) -> Result<Query> {
        let parser::Parsed {
            select,
            where_span,
            item_cols,
        } = parser::parse_select(text)?;
        let condition = match (&select.filter, where_span) {
            (Some(e), Some((start, end))) => {
                Some(Condition::from_expr(&text[start..end], e.clone()))
            }
            _ => None,
        };
        let shape = shape(&select, text, &item_cols)?;
        Ok(Query {
            text: text.to_string(),
            select,
            condition,
            shape,
        })
    }

    /// The query text as given to [`Query::parse`].
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The WHERE predicate (`None`: every row). Its text is the WHERE clause's source.
    pub fn condition(&self) -> Option<&Condition> {
        self.condition.as_ref()
    }

    /// `TOP n`, if given.
    pub fn top(&self) -> Option<usize> {
        self.select
            .top
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// True when the query aggregates (`COUNT()` or GROUP BY): use [`Query::aggregate`].
    pub fn is_aggregate(&self) -> bool {
        matches!(self.shape, Shape::Aggregate(_))
    }

    /// `Twin` for `SELECT *`, `Raw` otherwise.
    pub fn item_type(&self) -> ItemType {
        match self.shape {
            Shape::Twin => ItemType::Twin,
            _ => ItemType::Raw,
        }
    }

    /// The output row for one matching row of a non-aggregate query: the whole twin for
    /// `SELECT *`, else an object with one key per projection whose value is defined.
    /// For an aggregate query it returns an empty object (use [`Query::aggregate`]).
    pub fn project(&self, row: &dyn Row) -> serde_json::Value {
        match &self.shape {
            Shape::Twin => row.to_json(),
            Shape::Project(items) => {
                let mut m = serde_json::Map::new();
                for (key, path) in items {
                    if let Some(v) = row.project(*path) {
                        m.insert(key.clone(), v);
                    }
                }
                serde_json::Value::Object(m)
            }
            Shape::Aggregate(_) => serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// Runs an aggregate query over the rows that match the condition (the caller filters).
    /// Applies `TOP`. See the `aggregate` module for the output shape; a non-aggregate
    /// query gives the projection of every row.
    #[allow(clippy::needless_lifetimes)] // the contract's signature, kept as written
    pub fn aggregate<'a>(
        &self,
        rows: &mut dyn Iterator<Item = &'a dyn Row>,
    ) -> Vec<serde_json::Value> {
        match &self.shape {
            Shape::Aggregate(plan) => plan.run(rows),
            _ => rows
                .take(self.top().unwrap_or(usize::MAX))
                .map(|r| self.project(r))
                .collect(),
        }
    }

    /// The syntax tree; its `Display` prints normalized query text.
    pub fn select(&self) -> &Select {
        &self.select
    }
}

/// Checks the SELECT list against GROUP BY and works out the output keys.
/// Errors point at the offending SELECT item (`item_cols` holds their columns).
fn shape(select: &Select, text: &str, item_cols: &[usize]) -> Result<Shape> {
    use ast::Projection;
    let err = |i: usize, message: String| QueryError {
        column: item_cols.get(i).copied().unwrap_or(1),
        message,
    };
    let Some(items) = &select.items else {
        if !select.group_by.is_empty() {
            let col = text.find('*').map_or(1, |b| text[..b].chars().count() + 1);
            return Err(QueryError { column: col, message: "SELECT * cannot be used with GROUP BY: select the grouped property and aggregates, \
                 like SELECT tags.ring, COUNT() AS n FROM devices GROUP BY tags.ring"
                .into() });
        }
        return Ok(Shape::Twin);
    };
    let mut names: Vec<&str> = Vec::new();
    let keys: Vec<String> = items
        .iter()
        .map(|item| match (&item.alias, &item.projection) {
            (Some(a), _) => a.clone(),
            (None, Projection::Path(p)) => p.output_name(),
            (None, p) => p.to_string(),
        })
        .collect();
    for (i, (key, item)) in keys.iter().zip(items).enumerate() {
        if names.contains(&key.as_str()) {
            return Err(err(
                i,
                format!(
                    "{} is named '{key}' like an earlier selected item: give one of them another name with AS",
                    item.projection
                ),
            ));
        }
        names.push(key);
    }
    let aggregate = !select.group_by.is_empty()
        || items
            .iter()
            .any(|i| !matches!(i.projection, Projection::Path(_)));
    if !aggregate {
        return Ok(Shape::Project(
            keys.into_iter()
                .zip(items)
                .map(|(k, i)| match &i.projection {
                    Projection::Path(p) => (k, intern_lc(&p.lowercase())),
                    _ => unreachable!("not an aggregate query"),
                })
                .collect(),
        ));
    }
    let group_by: Vec<PathId> = select
        .group_by
        .iter()
        .map(|p| intern_lc(&p.lowercase()))
        .collect();
    let mut aggs = Vec::new();
    let mut group_keys = Vec::new();
    for (i, (key, item)) in keys.into_iter().zip(items).enumerate() {
        match &item.projection {
            Projection::Count => aggs.push((key, aggregate::Out::Count)),
            Projection::Agg(f, p) => {
                aggs.push((key, aggregate::Out::Agg(*f, intern_lc(&p.lowercase()))))
            }
            Projection::Path(p) => {
                let id = intern_lc(&p.lowercase());
                let Some(i) = group_by.iter().position(|&g| g == id) else {
                    let hint = if select.group_by.is_empty() {
                        format!("add GROUP BY {p}")
                    } else {
                        "select only grouped properties and aggregates".to_string()
                    };
                    return Err(err(
                        i,
                        format!(
                            "{p} is selected next to an aggregate but is not in GROUP BY: {hint}"
                        ),
                    ));
                };
                group_keys.push((key, aggregate::Out::Key(i)));
            }
        }
    }
    aggs.extend(group_keys);
    Ok(Shape::Aggregate(aggregate::Plan {
        group_by,
        outputs: aggs,
        top: select.top.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    }))
}
