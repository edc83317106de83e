//! `COUNT()`, `SUM/AVG/MIN/MAX(path)` and `GROUP BY`: how aggregate queries shape rows.
//!
//! Decisions (IoT Hub documents the shapes, not these corners):
//! - Without `GROUP BY` there is exactly one output row, also over no rows:
//!   `SELECT COUNT() AS n FROM devices` gives `[{"n": 0}]`.
//! - With `GROUP BY` there is one row per distinct key, none over no rows. Rows whose key
//!   is undefined (the property is missing) form one group of their own, in which the key
//!   is left out of the output row, as undefined values always are: `{"c": 2}`. `null` is
//!   a key like any other.
//! - Numbers group by value (`1` and `1.0` are one group); strings case-sensitively.
//!   Objects and arrays group by their JSON text.
//! - Groups come out sorted by key: undefined, null, false, true, numbers, strings (by
//!   code point), then objects and arrays. Stable output makes paging and tests
//!   deterministic; IoT Hub promises no order.
//! - In each row the aggregates come first, then the grouping keys, as in IoT Hub's
//!   documented example `[{"numberOfDevices": 3, "status": "Success"}]`.
//! - `SUM` adds the numbers and ignores other values (0 when there are none); `AVG`,
//!   `MIN` and `MAX` ignore non-numbers too and are left out of the row when there are
//!   no numbers.
//! - `TOP n` keeps the first n output rows.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::ast::AggFunc;
use crate::iothub::path::PathId;
use crate::iothub::value::{Row, Val};

/// One output field of an aggregate query.
#[derive(Clone, Debug)]
pub(crate) enum Out {
    Count,
    Agg(AggFunc, PathId),
    /// The value of the i-th GROUP BY path.
    Key(usize),
}

/// A compiled aggregate query.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub group_by: Vec<PathId>,
    /// Output keys and what they hold, in output order.
    pub outputs: Vec<(String, Out)>,
    pub top: Option<usize>,
}

/// A grouping key component, hashable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Undefined,
    Null,
    Bool(bool),
    Int(i64),
    /// A non-integral float, by its bits.
    Float(u64),
    Str(String),
    /// An object or array, by its JSON text.
    Json(String),
}

impl Key {
    fn rank(&self) -> u8 {
        match self {
            Key::Undefined => 0,
            Key::Null => 1,
            Key::Bool(_) => 2,
            Key::Int(_) | Key::Float(_) => 3,
            Key::Str(_) => 4,
            Key::Json(_) => 5,
        }
    }

    fn num(&self) -> f64 {
        match self {
            Key::Int(i) => *i as f64,
            Key::Float(b) => f64::from_bits(*b),
            _ => 0.0,
        }
    }
}

fn cmp_key(a: &Key, b: &Key) -> Ordering {
    match (a, b) {
        (Key::Bool(x), Key::Bool(y)) => x.cmp(y),
        (Key::Int(x), Key::Int(y)) => x.cmp(y),
        (Key::Int(_) | Key::Float(_), Key::Int(_) | Key::Float(_)) => a.num().total_cmp(&b.num()),
        (Key::Str(x), Key::Str(y)) | (Key::Json(x), Key::Json(y)) => x.cmp(y),
        _ => a.rank().cmp(&b.rank()),
    }
}

/// The grouping key of `row` at `path`, and its output value (first seen wins).
fn key_of(row: &dyn Row, path: PathId) -> (Key, Option<Value>) {
    match row.lookup(path) {
        Val::Undefined => (Key::Undefined, None),
        Val::Null => (Key::Null, Some(Value::Null)),
        Val::Bool(b) => (Key::Bool(b), Some(Value::Bool(b))),
        Val::Int(i) => (Key::Int(i), Some(Value::from(i))),
        Val::Float(f) => {
            let key = if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
                Key::Int(f as i64)
            } else {
                Key::Float(if f == 0.0 { 0 } else { f.to_bits() })
            };
            (key, Some(Value::from(f)))
        }
        Val::Str(s) => (Key::Str(s.to_string()), Some(Value::String(s.to_string()))),
        Val::Object | Val::Array => match row.project(path) {
            Some(v) => (Key::Json(v.to_string()), Some(v)),
            None => (Key::Undefined, None),
        },
    }
}

/// A running aggregate.
#[derive(Clone, Debug)]
enum Acc {
    Count(u64),
    /// Exact integer sum while every input was an integer and it did not overflow.
    Sum {
        int: Option<i64>,
        float: f64,
    },
    Avg {
        sum: f64,
        n: u64,
    },
    /// Min or max so far, as the original number.
    Best(Option<Num>),
    /// A grouping key: nothing to accumulate.
    None,
}

#[derive(Clone, Copy, Debug)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn f(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
    fn cmp(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            _ => self.f().total_cmp(&other.f()),
        }
    }
    fn json(self) -> Value {
        match self {
            Num::Int(i) => Value::from(i),
            Num::Float(f) => Value::from(f),
        }
    }
}

fn number(v: Val<'_>) -> Option<Num> {
    match v {
        Val::Int(i) => Some(Num::Int(i)),
        Val::Float(f) if f.is_finite() => Some(Num::Float(f)),
        _ => None,
    }
}

struct Group {
    keys: Vec<Key>,
    values: Vec<Option<Value>>,
    accs: Vec<Acc>,
}

impl Plan {
    fn new_accs(&self) -> Vec<Acc> {
        self.outputs
            .iter()
            .map(|(_, out)| match out {
                Out::Count => Acc::Count(0),
                Out::Agg(AggFunc::Sum, _) => Acc::Sum {
                    int: Some(0),
                    float: 0.0,
                },
                Out::Agg(AggFunc::Avg, _) => Acc::Avg { sum: 0.0, n: 0 },
                Out::Agg(AggFunc::Min | AggFunc::Max, _) => Acc::Best(None),
                Out::Key(_) => Acc::None,
            })
            .collect()
    }

    /// Runs the plan over rows that already passed the WHERE condition.
    pub(crate) fn run(&self, rows: &mut dyn Iterator<Item = &dyn Row>) -> Vec<Value> {
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<Vec<Key>, usize> = HashMap::new();
        if self.group_by.is_empty() {
            groups.push(Group {
                keys: Vec::new(),
                values: Vec::new(),
                accs: self.new_accs(),
            });
        }
        for row in rows {
            let g = if self.group_by.is_empty() {
                0
            } else {
                let (keys, values): (Vec<Key>, Vec<Option<Value>>) =
                    self.group_by.iter().map(|&p| key_of(row, p)).unzip();
                match index.get(&keys) {
                    Some(&g) => g,
                    None => {
                        index.insert(keys.clone(), groups.len());
                        groups.push(Group {
                            keys,
                            values,
                            accs: self.new_accs(),
                        });
                        groups.len() - 1
                    }
                }
            };
            let group = &mut groups[g];
            for ((_, out), acc) in self.outputs.iter().zip(group.accs.iter_mut()) {
                let Out::Agg(func, path) = out else {
                    if let Acc::Count(n) = acc {
                        *n += 1;
                    }
                    continue;
                };
                let Some(x) = number(row.lookup(*path)) else {
                    continue;
                };
                match acc {
                    Acc::Sum { int, float } => {
                        *float += x.f();
                        *int = match (*int, x) {
                            (Some(s), Num::Int(i)) => s.checked_add(i),
                            _ => None,
                        };
                    }
                    Acc::Avg { sum, n } => {
                        *sum += x.f();
                        *n += 1;
                    }
                    Acc::Best(best) => {
                        let want = if *func == AggFunc::Min {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        };
                        if best.is_none_or(|b| x.cmp(b) == want) {
                            *best = Some(x);
                        }
                    }
                    Acc::Count(_) | Acc::None => {}
                }
            }
        }
        groups.sort_by(|a, b| {
            a.keys
                .iter()
                .zip(&b.keys)
                .map(|(x, y)| cmp_key(x, y))
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        });
        let limit = self.top.unwrap_or(usize::MAX);
        groups
            .into_iter()
            .take(limit)
            .map(|g| self.output(g))
            .collect()
    }

    fn output(&self, g: Group) -> Value {
        let mut m = Map::new();
        for ((name, out), acc) in self.outputs.iter().zip(g.accs) {
            let v = match (out, acc) {
                (Out::Key(i), _) => g.values[*i].clone(),
                (_, Acc::Count(n)) => Some(Value::from(n)),
                (_, Acc::Sum { int: Some(i), .. }) => Some(Value::from(i)),
                (_, Acc::Sum { int: None, float }) => Some(Value::from(float)),
                (_, Acc::Avg { n: 0, .. }) => None,
                (_, Acc::Avg { sum, n }) => Some(Value::from(sum / n as f64)),
                (_, Acc::Best(b)) => b.map(Num::json),
                (_, Acc::None) => None,
            };
            if let Some(v) = v {
                m.insert(name.clone(), v);
            }
        }
        Value::Object(m)
    }
}
