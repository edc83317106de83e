//! Conditions as plans for a columnar executor.
//!
//! A store that keeps, per path, the value every row holds there (a column) can answer a
//! condition without visiting rows: [`Condition::plan`] splits the compiled predicate at
//! its `AND`, `OR` and `NOT` nodes, which combine three-valued truths (see `eval.rs`),
//! into leaves of three kinds:
//! - [`Plan::Const`]: reads no path, so its truth is the same for every row;
//! - [`Plan::Column`]: reads exactly one path, so its truth is a function of the value at
//!   that path; the executor evaluates it once per distinct value ([`ColumnTest::truth`])
//!   and spreads the answer over the rows holding that value;
//! - [`Plan::Row`]: reads several paths (a path compared with another); the executor
//!   evaluates it per row ([`RowTest::truth`]).
//!
//! Every leaf is evaluated by the row evaluator itself, on the same value, so a plan
//! agrees with [`Condition::matches`] by construction: missing paths, type mismatches and
//! the case-insensitive `configurations.<id>.status` behave as they do row by row.
//! A subtree that reads one path only becomes one leaf (`ring = 'a' OR ring = 'b'` is one
//! pass over the `tags.ring` column, not two).

use super::Condition;
use super::ast::CmpOp;
use super::eval::{self, CVal, Node, Tri};
use crate::iothub::path::{PathId, intern_lc};
use crate::iothub::value::{Row, Val};
use std::sync::LazyLock;

/// Three-valued truth of a condition for one row: only `True` matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truth {
    /// Boolean true.
    True,
    /// Boolean false.
    False,
    /// Undefined (a missing path, a comparison of different types, ...).
    Unknown,
}

impl From<Tri> for Truth {
    fn from(t: Tri) -> Truth {
        match t {
            Tri::True => Truth::True,
            Tri::False => Truth::False,
            Tri::Unknown => Truth::Unknown,
        }
    }
}

/// A condition split for a columnar executor (see the module docs).
#[derive(Debug)]
pub enum Plan<'a> {
    /// Every operand must be true (false when one is false, else unknown).
    And(Vec<Plan<'a>>),
    /// Some operand must be true (unknown when none is and one is unknown).
    Or(Vec<Plan<'a>>),
    /// Negation (unknown stays unknown).
    Not(Box<Plan<'a>>),
    /// The same truth for every row.
    Const(Truth),
    /// A test of the value at one path.
    Column(PathId, ColumnTest<'a>),
    /// A test that needs the whole row.
    Row(RowTest<'a>),
}

/// A predicate over the value at one path.
#[derive(Debug)]
pub struct ColumnTest<'a> {
    node: &'a Node,
    path: PathId,
}

/// A row holding one value at one path and nothing else: enough for a node that reads
/// only that path.
struct OneValue<'v> {
    path: PathId,
    val: Val<'v>,
}

impl Row for OneValue<'_> {
    fn lookup(&self, path: PathId) -> Val<'_> {
        if path == self.path {
            self.val
        } else {
            Val::Undefined
        }
    }
    fn project(&self, _: PathId) -> Option<serde_json::Value> {
        None
    }
    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

impl ColumnTest<'_> {
    /// The truth of the test for a row whose value at the path is `val`
    /// ([`Val::Undefined`] when the row has no such path).
    pub fn truth(&self, val: Val<'_>) -> Truth {
        self.node
            .truth(&OneValue {
                path: self.path,
                val,
            })
            .into()
    }
}

/// A predicate evaluated row by row.
#[derive(Debug)]
pub struct RowTest<'a> {
    node: &'a Node,
}

impl RowTest<'_> {
    /// The truth of the test for `row`.
    pub fn truth(&self, row: &dyn Row) -> Truth {
        self.node.truth(row).into()
    }
}

fn plan_of(n: &Node) -> Plan<'_> {
    let mut ps = Vec::new();
    eval::paths(n, &mut ps);
    match ps.as_slice() {
        [] => Plan::Const(
            n.truth(&OneValue {
                path: PathId(u32::MAX),
                val: Val::Undefined,
            })
            .into(),
        ),
        [p] => Plan::Column(*p, ColumnTest { node: n, path: *p }),
        _ => match n {
            Node::And(xs) => Plan::And(xs.iter().map(plan_of).collect()),
            Node::Or(xs) => Plan::Or(xs.iter().map(plan_of).collect()),
            Node::Not(x) => Plan::Not(Box::new(plan_of(x))),
            _ => Plan::Row(RowTest { node: n }),
        },
    }
}

static DEVICE_ID: LazyLock<PathId> = LazyLock::new(|| intern_lc("deviceId"));

impl Condition {
    /// The condition as a plan for a columnar executor; `None` for `*` (every row).
    pub fn plan(&self) -> Option<Plan<'_>> {
        self.compiled.as_ref().map(|c| plan_of(&c.node))
    }

    /// When the condition can only hold for rows whose `deviceId` is one of a few
    /// strings (`deviceId = 'a'`, `deviceId IN ['a', 'b']`, alone or as an operand of a
    /// top-level `AND`), those strings: a caller with a key index then evaluates the
    /// condition on those rows only. `None` when the condition does not pin `deviceId`.
    pub fn device_ids(&self) -> Option<Vec<&str>> {
        let node = &self.compiled.as_ref()?.node;
        let conjuncts: &[Node] = match node {
            Node::And(xs) => xs,
            other => std::slice::from_ref(other),
        };
        conjuncts.iter().find_map(pinned_ids)
    }
}

/// The strings a `deviceId = const` or `deviceId IN [...]` node pins the id to. A
/// constant that is not a string can never equal a device id (ids are strings), so it is
/// left out; case folding never applies to `deviceId`.
fn pinned_ids(n: &Node) -> Option<Vec<&str>> {
    let is_id = |x: &Node| matches!(x, Node::Path(p) if *p == *DEVICE_ID);
    match n {
        Node::Cmp {
            op: CmpOp::Eq,
            fold: false,
            left,
            right,
        } => match (&**left, &**right) {
            (Node::Path(_), Node::Const(c)) if is_id(left) => Some(strs(std::slice::from_ref(c))),
            (Node::Const(c), Node::Path(_)) if is_id(right) => Some(strs(std::slice::from_ref(c))),
            _ => None,
        },
        Node::In {
            expr,
            list,
            negated: false,
            fold: false,
        } if is_id(expr) => Some(strs(list)),
        _ => None,
    }
}

fn strs(cs: &[CVal]) -> Vec<&str> {
    cs.iter()
        .filter_map(|c| match c {
            CVal::Str(s) => Some(&**s),
            _ => None,
        })
        .collect()
}
