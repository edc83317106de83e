//! The compiled form of a predicate and how it evaluates against a [`Row`].
//!
//! Compiling resolves every path to a lowercase [`PathId`] and every constant to a
//! ready value, and marks the comparisons that ignore case (`configurations.<id>.status`).
//! Evaluating then reads rows through [`Row::lookup`] and compares borrowed values: no
//! allocation and no string work beyond the comparison itself (only `LOWER`/`UPPER`
//! allocate, for their result).
//!
//! Semantics (Cosmos-DB style, as IoT Hub behaves):
//! - A value is undefined when a path is missing, and anything that cannot be computed
//!   (a comparison of different types, arithmetic on a non-number, division by zero, a
//!   non-finite result) is undefined too.
//! - Logic is three-valued over true, false and undefined; any non-Boolean operand of
//!   `AND`, `OR` or `NOT` counts as undefined. `false AND undefined` is false,
//!   `true OR undefined` is true, `NOT undefined` is undefined.
//! - Comparisons work between two values of the same primitive kind: numbers (integers and
//!   floats compare numerically), strings (ordinal by code point, case-sensitive),
//!   Booleans (`false < true`) and `null` (equal to itself). Anything else is undefined.
//! - `x IN [c1, c2]` is `x = c1 OR x = c2`, so it is undefined rather than false when
//!   some constant has another type and none matched; `NIN` is its negation.
//! - A row matches only when the predicate is Boolean true.

use std::borrow::Cow;
use std::cmp::Ordering;

use super::ast::{AddOp, CmpOp, Const, Expr, Func, MulOp};
use crate::iothub::path::{PathId, intern_lc};
use crate::iothub::value::{Row, Val};

/// A constant, ready to compare.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum CVal {
    Undefined,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<str>),
    /// An array constant outside `IN`: only its type is observable.
    Array,
}

impl CVal {
    fn from_const(c: &Const) -> CVal {
        match c {
            Const::Undefined => CVal::Undefined,
            Const::Null => CVal::Null,
            Const::Bool(b) => CVal::Bool(*b),
            Const::Int(i) => CVal::Int(*i),
            Const::Float(f) => CVal::Float(*f),
            Const::Str(s) => CVal::Str(s.as_str().into()),
        }
    }

    fn as_v(&self) -> V<'_> {
        match self {
            CVal::Undefined => V::Undefined,
            CVal::Null => V::Null,
            CVal::Bool(b) => V::Bool(*b),
            CVal::Int(i) => V::Int(*i),
            CVal::Float(f) => V::Float(*f),
            CVal::Str(s) => V::Str(Cow::Borrowed(s)),
            CVal::Array => V::Array,
        }
    }
}

/// An arithmetic operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// A compiled expression.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    Const(CVal),
    Path(PathId),
    Neg(Box<Node>),
    Not(Box<Node>),
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Arith(Box<Node>, Box<[(ArithOp, Node)]>),
    Cmp {
        op: CmpOp,
        /// Ignore ASCII case when comparing strings (`configurations.<id>.status`).
        fold: bool,
        left: Box<Node>,
        right: Box<Node>,
    },
    In {
        expr: Box<Node>,
        list: Box<[CVal]>,
        negated: bool,
        fold: bool,
    },
    Call(Func, Box<[Node]>),
}

/// A value during evaluation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum V<'a> {
    Undefined,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Object,
    Array,
}

impl<'a> From<Val<'a>> for V<'a> {
    fn from(v: Val<'a>) -> V<'a> {
        match v {
            Val::Undefined => V::Undefined,
            Val::Null => V::Null,
            Val::Bool(b) => V::Bool(b),
            Val::Int(i) => V::Int(i),
            Val::Float(f) => V::Float(f),
            Val::Str(s) => V::Str(Cow::Borrowed(s)),
            Val::Object => V::Object,
            Val::Array => V::Array,
        }
    }
}

/// Three-valued truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tri {
    True,
    False,
    Unknown,
}

impl Tri {
    fn from_bool(b: bool) -> Tri {
        if b { Tri::True } else { Tri::False }
    }
    fn not(self) -> Tri {
        match self {
            Tri::True => Tri::False,
            Tri::False => Tri::True,
            Tri::Unknown => Tri::Unknown,
        }
    }
    fn into_v<'a>(self) -> V<'a> {
        match self {
            Tri::True => V::Bool(true),
            Tri::False => V::Bool(false),
            Tri::Unknown => V::Undefined,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Compiling

/// Compiles a syntax tree. Paths are interned lowercase.
pub(crate) fn compile(e: &Expr) -> Node {
    match e {
        Expr::Const(c) => Node::Const(CVal::from_const(c)),
        Expr::Array(_) => Node::Const(CVal::Array),
        Expr::Path(p) => Node::Path(intern_lc(&p.lowercase())),
        Expr::Neg(x) => Node::Neg(Box::new(compile(x))),
        Expr::Not(x) => Node::Not(Box::new(compile(x))),
        Expr::And(xs) => Node::And(xs.iter().map(compile).collect()),
        Expr::Or(xs) => Node::Or(xs.iter().map(compile).collect()),
        Expr::Sum(first, rest) => Node::Arith(
            Box::new(compile(first)),
            rest.iter()
                .map(|(op, x)| {
                    let op = match op {
                        AddOp::Add => ArithOp::Add,
                        AddOp::Sub => ArithOp::Sub,
                    };
                    (op, compile(x))
                })
                .collect(),
        ),
        Expr::Product(first, rest) => Node::Arith(
            Box::new(compile(first)),
            rest.iter()
                .map(|(op, x)| {
                    let op = match op {
                        MulOp::Mul => ArithOp::Mul,
                        MulOp::Div => ArithOp::Div,
                        MulOp::Rem => ArithOp::Rem,
                    };
                    (op, compile(x))
                })
                .collect(),
        ),
        Expr::Compare(op, l, r) => Node::Cmp {
            op: *op,
            fold: is_status(l) || is_status(r),
            left: Box::new(compile(l)),
            right: Box::new(compile(r)),
        },
        Expr::In {
            expr,
            list,
            negated,
        } => Node::In {
            fold: is_status(expr),
            expr: Box::new(compile(expr)),
            list: list.iter().map(CVal::from_const).collect(),
            negated: *negated,
        },
        Expr::Call(f, args) => Node::Call(*f, args.iter().map(compile).collect()),
    }
}

fn is_status(e: &Expr) -> bool {
    matches!(e, Expr::Path(p) if p.is_configuration_status())
}

/// The lowercase paths an expression reads, each once, in order of first appearance.
pub(crate) fn paths(n: &Node, out: &mut Vec<PathId>) {
    match n {
        Node::Const(_) => {}
        Node::Path(p) => {
            if !out.contains(p) {
                out.push(*p);
            }
        }
        Node::Neg(x) | Node::Not(x) => paths(x, out),
        Node::And(xs) | Node::Or(xs) | Node::Call(_, xs) => xs.iter().for_each(|x| paths(x, out)),
        Node::Arith(first, rest) => {
            paths(first, out);
            rest.iter().for_each(|(_, x)| paths(x, out));
        }
        Node::Cmp { left, right, .. } => {
            paths(left, out);
            paths(right, out);
        }
        Node::In { expr, .. } => paths(expr, out),
    }
}

// ---------------------------------------------------------------------------------------
// Evaluating

impl Node {
    /// The truth of this node for `row`: what `WHERE` needs.
    pub(crate) fn truth(&self, row: &dyn Row) -> Tri {
        match self {
            Node::And(xs) => {
                let mut all = true;
                for x in xs.iter() {
                    match x.truth(row) {
                        Tri::False => return Tri::False,
                        Tri::Unknown => all = false,
                        Tri::True => {}
                    }
                }
                if all { Tri::True } else { Tri::Unknown }
            }
            Node::Or(xs) => {
                let mut any_unknown = false;
                for x in xs.iter() {
                    match x.truth(row) {
                        Tri::True => return Tri::True,
                        Tri::Unknown => any_unknown = true,
                        Tri::False => {}
                    }
                }
                if any_unknown {
                    Tri::Unknown
                } else {
                    Tri::False
                }
            }
            Node::Not(x) => x.truth(row).not(),
            Node::Cmp {
                op,
                fold,
                left,
                right,
            } => compare(*op, *fold, &left.eval(row), &right.eval(row)),
            Node::In {
                expr,
                list,
                negated,
                fold,
            } => {
                let t = in_list(&expr.eval(row), list, *fold);
                if *negated { t.not() } else { t }
            }
            Node::Path(p) => match row.lookup(*p) {
                Val::Bool(b) => Tri::from_bool(b),
                _ => Tri::Unknown,
            },
            _ => match self.eval(row) {
                V::Bool(b) => Tri::from_bool(b),
                _ => Tri::Unknown,
            },
        }
    }

    /// The value of this node for `row`.
    pub(crate) fn eval<'a>(&'a self, row: &'a dyn Row) -> V<'a> {
        match self {
            Node::Const(c) => c.as_v(),
            Node::Path(p) => row.lookup(*p).into(),
            Node::Neg(x) => match x.eval(row) {
                V::Int(i) => match i.checked_neg() {
                    Some(n) => V::Int(n),
                    None => V::Float(-(i as f64)),
                },
                V::Float(f) => V::Float(-f),
                _ => V::Undefined,
            },
            Node::And(_) | Node::Or(_) | Node::Not(_) | Node::Cmp { .. } | Node::In { .. } => {
                self.truth(row).into_v()
            }
            Node::Arith(first, rest) => {
                let mut acc = first.eval(row);
                for (op, x) in rest.iter() {
                    acc = arith(*op, &acc, &x.eval(row));
                }
                acc
            }
            Node::Call(f, args) => call(*f, args, row),
        }
    }
}

fn call<'a>(f: Func, args: &'a [Node], row: &'a dyn Row) -> V<'a> {
    let a = args[0].eval(row);
    let ty = |b: bool| V::Bool(b);
    match f {
        Func::IsDefined => ty(a != V::Undefined),
        Func::IsNull => ty(a == V::Null),
        Func::IsBool => ty(matches!(a, V::Bool(_))),
        Func::IsNumber => ty(matches!(a, V::Int(_) | V::Float(_))),
        Func::IsString => ty(matches!(a, V::Str(_))),
        Func::IsObject => ty(a == V::Object),
        Func::IsArray => ty(a == V::Array),
        Func::IsPrimitive => ty(matches!(
            a,
            V::Null | V::Bool(_) | V::Int(_) | V::Float(_) | V::Str(_)
        )),
        Func::Lower | Func::Upper | Func::Length => match a {
            V::Str(s) => match f {
                Func::Lower => V::Str(Cow::Owned(s.to_lowercase())),
                Func::Upper => V::Str(Cow::Owned(s.to_uppercase())),
                _ => V::Int(s.chars().count() as i64),
            },
            _ => V::Undefined,
        },
        Func::StartsWith | Func::EndsWith | Func::Contains => {
            let b = args[1].eval(row);
            match (&a, &b) {
                (V::Str(s), V::Str(t)) => V::Bool(match f {
                    Func::StartsWith => s.starts_with(&**t),
                    Func::EndsWith => s.ends_with(&**t),
                    _ => s.contains(&**t),
                }),
                _ => V::Undefined,
            }
        }
    }
}

/// Compares two values; undefined unless both are primitives of the same kind.
pub(crate) fn compare(op: CmpOp, fold: bool, a: &V<'_>, b: &V<'_>) -> Tri {
    let Some(ord) = order(a, b, fold) else {
        return Tri::Unknown;
    };
    Tri::from_bool(match op {
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::Ne => ord != Ordering::Equal,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Le => ord != Ordering::Greater,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Ge => ord != Ordering::Less,
    })
}

/// The order of two primitives of the same kind, or `None` when they do not compare.
fn order(a: &V<'_>, b: &V<'_>, fold: bool) -> Option<Ordering> {
    match (a, b) {
        (V::Null, V::Null) => Some(Ordering::Equal),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
        (V::Int(_) | V::Float(_), V::Int(_) | V::Float(_)) => num(a)?.partial_cmp(&num(b)?),
        (V::Str(x), V::Str(y)) if fold => Some(cmp_ignore_ascii_case(x, y)),
        (V::Str(x), V::Str(y)) => Some(x.as_ref().cmp(y.as_ref())),
        _ => None,
    }
}

fn num(v: &V<'_>) -> Option<f64> {
    match *v {
        V::Int(i) => Some(i as f64),
        V::Float(f) => Some(f),
        _ => None,
    }
}

fn cmp_ignore_ascii_case(a: &str, b: &str) -> Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

/// `x IN list`: true when some constant equals `x`, else undefined when some comparison
/// was undefined, else false.
fn in_list(x: &V<'_>, list: &[CVal], fold: bool) -> Tri {
    let mut unknown = false;
    for c in list {
        match compare(CmpOp::Eq, fold, x, &c.as_v()) {
            Tri::True => return Tri::True,
            Tri::Unknown => unknown = true,
            Tri::False => {}
        }
    }
    if unknown { Tri::Unknown } else { Tri::False }
}

/// Arithmetic on numbers: integers stay integers while exact and in range.
pub(crate) fn arith<'a>(op: ArithOp, a: &V<'_>, b: &V<'_>) -> V<'a> {
    if let (V::Int(x), V::Int(y)) = (a, b) {
        let (x, y) = (*x, *y);
        let exact = match op {
            ArithOp::Add => x.checked_add(y),
            ArithOp::Sub => x.checked_sub(y),
            ArithOp::Mul => x.checked_mul(y),
            ArithOp::Div if y != 0 && x.checked_rem(y) == Some(0) => x.checked_div(y),
            ArithOp::Div => None,
            ArithOp::Rem if y == 0 => return V::Undefined,
            ArithOp::Rem => Some(x.checked_rem(y).unwrap_or(0)),
        };
        if let Some(v) = exact {
            return V::Int(v);
        }
    }
    let (Some(x), Some(y)) = (num(a), num(b)) else {
        return V::Undefined;
    };
    let r = match op {
        ArithOp::Add => x + y,
        ArithOp::Sub => x - y,
        ArithOp::Mul => x * y,
        ArithOp::Div if y == 0.0 => return V::Undefined,
        ArithOp::Div => x / y,
        ArithOp::Rem if y == 0.0 => return V::Undefined,
        ArithOp::Rem => x % y,
    };
    if r.is_finite() {
        V::Float(r)
    } else {
        V::Undefined
    }
}
