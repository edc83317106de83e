//! Property tests: printing round-trips, the compiled evaluator agrees with a plain
//! reference evaluator over `serde_json::Value`, and no input panics.

use super::ast::{
    AddOp, AggFunc, CmpOp, Const, Expr, Func, MulOp, Path, Projection, Select, SelectItem,
};
use super::eval::{self, V};
use super::*;
use crate::iothub::value::JsonRow;
use proptest::prelude::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Strategies

/// Any name a twin key can have: no '.', and no ']' (a name ending in ']' cannot be
/// written in `[[...]]`).
fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z_$][a-zA-Z0-9_$]{0,6}",
        prop::sample::select(vec![
            "group", "AND", "select", "null", "devices", "count", "é"
        ])
        .prop_map(String::from),
        "[^.\\]]{1,6}",
    ]
}

fn any_const() -> impl Strategy<Value = Const> {
    prop_oneof![
        Just(Const::Undefined),
        Just(Const::Null),
        any::<bool>().prop_map(Const::Bool),
        any::<i64>().prop_map(Const::Int),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Const::Float),
        any::<String>().prop_map(Const::Str),
    ]
}

fn array_const(c: impl Strategy<Value = Const> + Clone) -> impl Strategy<Value = Vec<Const>> {
    prop::collection::vec(
        c.prop_filter("no undefined in arrays", |c| *c != Const::Undefined),
        0..4,
    )
}

fn func_call(e: BoxedStrategy<Expr>) -> impl Strategy<Value = Expr> {
    (
        prop::sample::select(Func::ALL.to_vec()),
        prop::collection::vec(e, 2),
    )
        .prop_map(|(f, mut args)| {
            args.truncate(f.arity());
            Expr::Call(f, args)
        })
}

/// Expressions over the given leaves and constants, a few levels deep.
fn exprs(
    path: BoxedStrategy<Path>,
    c: BoxedStrategy<Const>,
    depth: u32,
) -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        3 => c.clone().prop_map(Expr::Const),
        1 => array_const(c.clone()).prop_map(Expr::Array),
        4 => path.prop_map(Expr::Path),
    ];
    let cmp_op = prop::sample::select(vec![
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ]);
    let add_op = prop::sample::select(vec![AddOp::Add, AddOp::Sub]);
    let mul_op = prop::sample::select(vec![MulOp::Mul, MulOp::Div, MulOp::Rem]);
    leaf.prop_recursive(depth, 48, 4, move |e| {
        let c = c.clone();
        prop_oneof![
            1 => e.clone().prop_map(|x| Expr::Neg(Box::new(x))),
            2 => e.clone().prop_map(|x| Expr::Not(Box::new(x))),
            2 => prop::collection::vec(e.clone(), 2..4).prop_map(Expr::And),
            2 => prop::collection::vec(e.clone(), 2..4).prop_map(Expr::Or),
            1 => (e.clone(), prop::collection::vec((add_op.clone(), e.clone()), 1..3))
                .prop_map(|(a, rest)| Expr::Sum(Box::new(a), rest)),
            1 => (e.clone(), prop::collection::vec((mul_op.clone(), e.clone()), 1..3))
                .prop_map(|(a, rest)| Expr::Product(Box::new(a), rest)),
            4 => (cmp_op.clone(), e.clone(), e.clone()).prop_map(|(op, a, b)| Expr::Compare(op, Box::new(a), Box::new(b))),
            2 => (e.clone(), array_const(c), any::<bool>())
                .prop_map(|(x, list, negated)| Expr::In { expr: Box::new(x), list, negated }),
            2 => func_call(e.boxed()),
        ]
    })
}

fn any_path() -> BoxedStrategy<Path> {
    prop::collection::vec(any_name(), 1..4)
        .prop_map(Path)
        .boxed()
}

fn any_expr() -> impl Strategy<Value = Expr> {
    exprs(any_path(), any_const().boxed(), 5)
}

fn any_select() -> impl Strategy<Value = Select> {
    let projection = prop_oneof![
        any_path().prop_map(Projection::Path),
        Just(Projection::Count),
        (
            prop::sample::select(vec![AggFunc::Sum, AggFunc::Avg, AggFunc::Min, AggFunc::Max]),
            any_path()
        )
            .prop_map(|(f, p)| Projection::Agg(f, p)),
    ];
    let item = (projection, proptest::option::of(any_name())).prop_map(|(projection, alias)| {
        // COUNT() needs an alias.
        let alias = match (&projection, alias) {
            (Projection::Count, None) => Some("n".to_string()),
            (_, a) => a,
        };
        SelectItem { projection, alias }
    });
    (
        proptest::option::of(0..=i64::MAX as u64),
        proptest::option::of(prop::collection::vec(item, 1..4)),
        proptest::option::of(any_expr()),
        prop::collection::vec(any_path(), 0..3),
    )
        .prop_map(|(top, items, filter, group_by)| Select {
            top,
            items,
            filter,
            group_by,
        })
}

// Twins and conditions over a small vocabulary, so that conditions hit real values.

pub(crate) fn small_path() -> BoxedStrategy<Path> {
    let p = |s: &str| Path(s.split('.').map(String::from).collect());
    prop::sample::select(vec![
        p("deviceId"),
        p("DeviceID"),
        p("tags.a"),
        p("tags.b"),
        p("Tags.Ring"),
        p("tags.mixed"),
        p("tags.missing"),
        p("tags"),
        p("properties.reported.x"),
        p("properties.reported.s"),
        p("configurations.c1.status"),
        p("Configurations.C1.STATUS"),
        p("configurations.c1"),
        p("configurations.c1.x"),
    ])
    .boxed()
}

pub(crate) fn small_const() -> BoxedStrategy<Const> {
    prop_oneof![
        Just(Const::Undefined),
        Just(Const::Null),
        any::<bool>().prop_map(Const::Bool),
        (-3i64..4).prop_map(Const::Int),
        prop::sample::select(vec![i64::MAX, i64::MIN]).prop_map(Const::Int),
        prop::sample::select(vec![0.5, -1.5, 2.0, 0.0, 1e300]).prop_map(Const::Float),
        prop::sample::select(vec![
            "a", "b", "A", "applied", "Applied", "TARGETED", "d1", "", "é"
        ])
        .prop_map(|s| Const::Str(s.into())),
    ]
    .boxed()
}

pub(crate) fn small_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => (-3i64..4).prop_map(Value::from),
        1 => prop::sample::select(vec![i64::MAX, i64::MIN]).prop_map(Value::from),
        1 => prop::sample::select(vec![0.5, -1.5, 2.0, 1e300]).prop_map(Value::from),
        4 => prop::sample::select(vec!["a", "b", "A", "applied", "APPLIED", "targeted", "d1", "é"]).prop_map(Value::from),
    ];
    prop_oneof![
        8 => leaf.clone(),
        1 => prop::collection::vec(leaf.clone(), 0..2).prop_map(Value::Array),
        1 => proptest::option::of(leaf).prop_map(|x| match x {
            Some(x) => json!({"k": x}),
            None => json!({}),
        }),
    ]
}

pub(crate) fn opt_fields(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::vec(proptest::option::of(small_value()), keys.len()).prop_map(move |vals| {
        let mut m = serde_json::Map::new();
        for (k, v) in keys.iter().zip(vals) {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        }
        Value::Object(m)
    })
}

pub(crate) fn twin() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(prop::sample::select(vec!["d1", "d2", "a"])),
        opt_fields(&["a", "b", "ring", "Mixed"]),
        opt_fields(&["x", "s"]),
        proptest::option::of(prop_oneof![
            4 => prop::sample::select(vec!["applied", "Applied", "targeted", "APPLIED"]).prop_map(Value::from),
            1 => small_value(),
        ]),
    )
        .prop_map(|(id, tags, reported, status)| {
            let mut t = json!({"tags": tags, "properties": {"reported": reported}});
            if let Some(id) = id {
                t["deviceId"] = Value::from(id);
            }
            if let Some(s) = status {
                t["configurations"] = json!({"c1": {"status": s}});
            }
            t
        })
}

/// Conditions shaped like real ones: comparisons, IN and functions over paths and
/// constants (sometimes with arithmetic), combined with AND, OR and NOT; and now and then
/// a fully random expression.
pub(crate) fn small_expr() -> impl Strategy<Value = Expr> {
    let c = small_const();
    let value = prop_oneof![
        6 => small_path().prop_map(Expr::Path),
        4 => c.clone().prop_map(Expr::Const),
        1 => (small_path(), prop::sample::select(vec![AddOp::Add, AddOp::Sub]), c.clone())
            .prop_map(|(p, op, k)| Expr::Sum(Box::new(Expr::Path(p)), vec![(op, Expr::Const(k))])),
        1 => (small_path(), prop::sample::select(vec![MulOp::Mul, MulOp::Div, MulOp::Rem]), c.clone())
            .prop_map(|(p, op, k)| Expr::Product(Box::new(Expr::Path(p)), vec![(op, Expr::Const(k))])),
        1 => (prop::sample::select(vec![Func::Lower, Func::Upper, Func::Length]), small_path())
            .prop_map(|(f, p)| Expr::Call(f, vec![Expr::Path(p)])),
        1 => small_path().prop_map(|p| Expr::Neg(Box::new(Expr::Path(p)))),
    ];
    let cmp_op = prop::sample::select(vec![
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
    ]);
    let predicate = prop_oneof![
        8 => (cmp_op, value.clone(), value.clone()).prop_map(|(op, a, b)| Expr::Compare(op, Box::new(a), Box::new(b))),
        3 => (value.clone(), array_const(c.clone()), any::<bool>())
            .prop_map(|(x, list, negated)| Expr::In { expr: Box::new(x), list, negated }),
        3 => (prop::sample::select(Func::ALL.to_vec()), value.clone(), value)
            .prop_map(|(f, a, b)| Expr::Call(f, [a, b].into_iter().take(f.arity()).collect())),
        1 => small_path().prop_map(Expr::Path),
        1 => c.prop_map(Expr::Const),
        1 => exprs(small_path(), small_const(), 3),
    ];
    predicate.prop_recursive(4, 24, 3, |p| {
        prop_oneof![
            2 => prop::collection::vec(p.clone(), 2..4).prop_map(Expr::And),
            2 => prop::collection::vec(p.clone(), 2..4).prop_map(Expr::Or),
            1 => p.prop_map(|x| Expr::Not(Box::new(x))),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// The reference evaluator: a direct reading of the semantics over `serde_json::Value`.

#[derive(Clone, Debug, PartialEq)]
enum R {
    Undefined,
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Object,
    Array,
}

fn from_json(v: &Value) -> R {
    match v {
        Value::Null => R::Null,
        Value::Bool(b) => R::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => R::Int(i),
            None => R::Float(n.as_f64().unwrap()),
        },
        Value::String(s) => R::Str(s.clone()),
        Value::Array(_) => R::Array,
        Value::Object(_) => R::Object,
    }
}

fn ref_lookup(twin: &Value, path: &Path) -> R {
    let mut cur = twin;
    for seg in &path.0 {
        let seg = seg.to_lowercase();
        let Some(next) = cur.as_object().and_then(|o| {
            o.iter()
                .find(|(k, _)| k.to_lowercase() == seg)
                .map(|(_, v)| v)
        }) else {
            return R::Undefined;
        };
        cur = next;
    }
    from_json(cur)
}

fn tri(b: Option<bool>) -> R {
    b.map_or(R::Undefined, R::Bool)
}

fn as_bool(r: &R) -> Option<bool> {
    match r {
        R::Bool(b) => Some(*b),
        _ => None,
    }
}

fn finite(f: f64) -> R {
    if f.is_finite() {
        R::Float(f)
    } else {
        R::Undefined
    }
}

fn ref_arith(op: char, a: &R, b: &R) -> R {
    let float = |x: &R| match x {
        R::Int(i) => Some(*i as f64),
        R::Float(f) => Some(*f),
        _ => None,
    };
    if let (R::Int(x), R::Int(y)) = (a, b) {
        let (x, y) = (*x as i128, *y as i128);
        let exact = match op {
            '+' => Some(x + y),
            '-' => Some(x - y),
            '*' => Some(x * y),
            '/' if y != 0 && x % y == 0 => Some(x / y),
            '/' => None,
            _ if y == 0 => return R::Undefined,
            _ => Some(x % y),
        };
        if let Some(v) = exact.and_then(|v| i64::try_from(v).ok()) {
            return R::Int(v);
        }
    }
    let (Some(x), Some(y)) = (float(a), float(b)) else {
        return R::Undefined;
    };
    match op {
        '+' => finite(x + y),
        '-' => finite(x - y),
        '*' => finite(x * y),
        _ if y == 0.0 => R::Undefined,
        '/' => finite(x / y),
        _ => finite(x % y),
    }
}

fn ref_compare(op: CmpOp, a: &R, b: &R, fold: bool) -> R {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (R::Null, R::Null) => Some(Ordering::Equal),
        (R::Bool(x), R::Bool(y)) => Some(x.cmp(y)),
        (R::Int(x), R::Int(y)) => Some(x.cmp(y)),
        (R::Int(x), R::Float(y)) => (*x as f64).partial_cmp(y),
        (R::Float(x), R::Int(y)) => x.partial_cmp(&(*y as f64)),
        (R::Float(x), R::Float(y)) => x.partial_cmp(y),
        (R::Str(x), R::Str(y)) if fold => Some(x.to_ascii_lowercase().cmp(&y.to_ascii_lowercase())),
        (R::Str(x), R::Str(y)) => Some(x.cmp(y)),
        _ => None,
    };
    tri(ord.map(|o| match op {
        CmpOp::Eq => o.is_eq(),
        CmpOp::Ne => o.is_ne(),
        CmpOp::Lt => o.is_lt(),
        CmpOp::Le => o.is_le(),
        CmpOp::Gt => o.is_gt(),
        CmpOp::Ge => o.is_ge(),
    }))
}

fn const_r(c: &Const) -> R {
    match c {
        Const::Undefined => R::Undefined,
        Const::Null => R::Null,
        Const::Bool(b) => R::Bool(*b),
        Const::Int(i) => R::Int(*i),
        Const::Float(f) => R::Float(*f),
        Const::Str(s) => R::Str(s.clone()),
    }
}

fn is_status(e: &Expr) -> bool {
    matches!(e, Expr::Path(p) if p.0.len() == 3 && p.0[0].to_lowercase() == "configurations" && p.0[2].to_lowercase() == "status")
}

/// Evaluates every operand (no short-circuit) and combines by the truth tables.
fn reference(e: &Expr, t: &Value) -> R {
    match e {
        Expr::Const(c) => const_r(c),
        Expr::Array(_) => R::Array,
        Expr::Path(p) => ref_lookup(t, p),
        Expr::Neg(x) => match reference(x, t) {
            R::Int(i) => ref_arith('-', &R::Int(0), &R::Int(i)),
            R::Float(f) => R::Float(-f),
            _ => R::Undefined,
        },
        Expr::Not(x) => tri(as_bool(&reference(x, t)).map(|b| !b)),
        Expr::And(xs) => {
            let vals: Vec<Option<bool>> = xs.iter().map(|x| as_bool(&reference(x, t))).collect();
            if vals.contains(&Some(false)) {
                R::Bool(false)
            } else if vals.iter().all(|v| *v == Some(true)) {
                R::Bool(true)
            } else {
                R::Undefined
            }
        }
        Expr::Or(xs) => {
            let vals: Vec<Option<bool>> = xs.iter().map(|x| as_bool(&reference(x, t))).collect();
            if vals.contains(&Some(true)) {
                R::Bool(true)
            } else if vals.iter().all(|v| *v == Some(false)) {
                R::Bool(false)
            } else {
                R::Undefined
            }
        }
        Expr::Sum(first, rest) => rest.iter().fold(reference(first, t), |acc, (op, x)| {
            ref_arith(
                if *op == AddOp::Add { '+' } else { '-' },
                &acc,
                &reference(x, t),
            )
        }),
        Expr::Product(first, rest) => rest.iter().fold(reference(first, t), |acc, (op, x)| {
            let c = match op {
                MulOp::Mul => '*',
                MulOp::Div => '/',
                MulOp::Rem => '%',
            };
            ref_arith(c, &acc, &reference(x, t))
        }),
        Expr::Compare(op, a, b) => ref_compare(
            *op,
            &reference(a, t),
            &reference(b, t),
            is_status(a) || is_status(b),
        ),
        Expr::In {
            expr,
            list,
            negated,
        } => {
            // x IN [a, b] is x = a OR x = b (false for an empty list); NIN is NOT IN.
            let ors = list
                .iter()
                .map(|c| Expr::Compare(CmpOp::Eq, expr.clone(), Box::new(Expr::Const(c.clone()))))
                .collect::<Vec<_>>();
            let any = if ors.is_empty() {
                R::Bool(false)
            } else {
                reference(&Expr::Or(ors), t)
            };
            if *negated {
                tri(as_bool(&any).map(|b| !b))
            } else {
                any
            }
        }
        Expr::Call(f, args) => {
            let a = reference(&args[0], t);
            let b = args.get(1).map(|x| reference(x, t));
            match (f, &a, &b) {
                (Func::IsDefined, _, _) => R::Bool(a != R::Undefined),
                (Func::IsNull, _, _) => R::Bool(a == R::Null),
                (Func::IsBool, _, _) => R::Bool(matches!(a, R::Bool(_))),
                (Func::IsNumber, _, _) => R::Bool(matches!(a, R::Int(_) | R::Float(_))),
                (Func::IsString, _, _) => R::Bool(matches!(a, R::Str(_))),
                (Func::IsObject, _, _) => R::Bool(a == R::Object),
                (Func::IsArray, _, _) => R::Bool(a == R::Array),
                (Func::IsPrimitive, _, _) => {
                    R::Bool(!matches!(a, R::Undefined | R::Object | R::Array))
                }
                (Func::StartsWith, R::Str(s), Some(R::Str(p))) => {
                    R::Bool(s.starts_with(p.as_str()))
                }
                (Func::EndsWith, R::Str(s), Some(R::Str(p))) => R::Bool(s.ends_with(p.as_str())),
                (Func::Contains, R::Str(s), Some(R::Str(p))) => R::Bool(s.contains(p.as_str())),
                (Func::Lower, R::Str(s), _) => R::Str(s.to_lowercase()),
                (Func::Upper, R::Str(s), _) => R::Str(s.to_uppercase()),
                (Func::Length, R::Str(s), _) => R::Int(s.chars().count() as i64),
                _ => R::Undefined,
            }
        }
    }
}

fn compiled_value(c: &Condition, row: &JsonRow) -> R {
    let node = &c.compiled.as_ref().unwrap().node;
    match node.eval(row) {
        V::Undefined => R::Undefined,
        V::Null => R::Null,
        V::Bool(b) => R::Bool(b),
        V::Int(i) => R::Int(i),
        V::Float(f) => R::Float(f),
        V::Str(s) => R::Str(s.into_owned()),
        V::Object => R::Object,
        V::Array => R::Array,
    }
}

fn expr_paths(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Path(p) => out.push(p.lowercase()),
        Expr::Const(_) | Expr::Array(_) => {}
        Expr::Neg(x) | Expr::Not(x) => expr_paths(x, out),
        Expr::And(xs) | Expr::Or(xs) | Expr::Call(_, xs) => {
            xs.iter().for_each(|x| expr_paths(x, out))
        }
        Expr::Sum(x, rest) => {
            expr_paths(x, out);
            rest.iter().for_each(|(_, x)| expr_paths(x, out));
        }
        Expr::Product(x, rest) => {
            expr_paths(x, out);
            rest.iter().for_each(|(_, x)| expr_paths(x, out));
        }
        Expr::Compare(_, a, b) => {
            expr_paths(a, out);
            expr_paths(b, out);
        }
        Expr::In { expr, .. } => expr_paths(expr, out),
    }
}

// ---------------------------------------------------------------------------------------
// Properties

/// Fragments that make random text likely to get deep into the parser.
fn token_soup() -> impl Strategy<Value = String> {
    let frag = prop::sample::select(vec![
        "(",
        ")",
        "NOT",
        "not",
        "AND",
        "OR",
        "tags.a",
        "tags.",
        "=",
        "!=",
        "<>",
        "<",
        ">=",
        "'x'",
        "\"y",
        "'\\u00",
        "\\",
        "[",
        "]",
        ",",
        "-",
        "+",
        "*",
        "/",
        "%",
        "1",
        "1.5e3",
        "0x",
        "0x1F",
        "-9223372036854775808",
        "[[",
        "]]",
        "[[a]]",
        "IN",
        "NIN",
        "SELECT",
        "TOP",
        "*",
        "FROM",
        "devices",
        "devices.modules",
        "WHERE",
        "GROUP",
        "BY",
        "COUNT()",
        "COUNT",
        "SUM(",
        "AS",
        ".",
        "é",
        "null",
        "undefined",
        "true",
        "STARTSWITH(",
        "IS_DEFINED(",
        "LOWER(",
        "group",
        " ",
        "\u{0}",
        "😀",
    ]);
    prop::collection::vec((frag, any::<bool>()), 0..40).prop_map(|parts| {
        let mut s = String::new();
        for (f, space) in parts {
            s.push_str(f);
            if space {
                s.push(' ');
            }
        }
        s
    })
}

/// Whatever parses must evaluate, project and aggregate without panicking, and its
/// printed form must parse back to the same tree.
fn exercise(text: &str) {
    let sample = json!({"deviceId": "d1", "tags": {"a": 1, "x": "y"}, "properties": {"reported": {"s": "ok"}}});
    if let Ok(c) = Condition::parse(text) {
        let _ = c.matches(&JsonRow(&sample));
        let _ = c.paths();
        if let Some(e) = c.expr() {
            assert_eq!(
                parser::parse_condition(&e.to_string()).as_ref(),
                Ok(e),
                "{e}"
            );
        }
    }
    if let Ok(q) = Query::parse(text) {
        let row = JsonRow(&sample);
        let _ = q.condition().map(|c| c.matches(&row));
        let _ = q.project(&row);
        let rows: Vec<&dyn Row> = vec![&row, &row];
        let _ = q.aggregate(&mut rows.into_iter());
        let printed = q.select().to_string();
        assert_eq!(
            &parser::parse_select(&printed).unwrap().select,
            q.select(),
            "{printed}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn printing_round_trips_expressions(e in any_expr()) {
        let text = e.to_string();
        let parsed = parser::parse_condition(&text);
        prop_assert_eq!(parsed.as_ref(), Ok(&e), "printed as {}", text);
    }

    #[test]
    fn printing_round_trips_statements(s in any_select()) {
        let text = s.to_string();
        let parsed = parser::parse_select(&text).map(|p| p.select);
        prop_assert_eq!(parsed.as_ref(), Ok(&s), "printed as {}", text);
    }

    #[test]
    fn random_strings_never_panic(s in any::<String>()) {
        exercise(&s);
    }

    #[test]
    fn random_token_soup_never_panics(s in token_soup()) {
        exercise(&s);
        exercise(&format!("SELECT * FROM devices WHERE {s}"));
        exercise(&format!("SELECT {s}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn compiled_evaluator_agrees_with_reference(e in small_expr(), twins in prop::collection::vec(twin(), 1..4)) {
        let text = e.to_string();
        let c = Condition::parse(&text).map_err(|err| TestCaseError::fail(format!("{text}: {err}")))?;
        let mut want_paths = Vec::new();
        expr_paths(&e, &mut want_paths);
        let got_paths: Vec<String> = c.paths().into_iter().map(crate::iothub::path::name).collect();
        for p in &want_paths {
            prop_assert!(got_paths.contains(p), "{} not in {:?}", p, got_paths);
        }
        prop_assert!(got_paths.iter().all(|p| want_paths.contains(p)));
        for t in &twins {
            let want = reference(&e, t);
            let row = JsonRow(t);
            prop_assert_eq!(compiled_value(&c, &row), want.clone(), "{} on {}", text, t);
            prop_assert_eq!(c.matches(&row), want == R::Bool(true), "{} on {}", text, t);
        }
    }
}

#[test]
fn reference_truth_tables_hold_in_the_compiled_evaluator() {
    // Every combination of true / false / undefined through AND, OR and NOT.
    let vals = ["true", "false", "undefined"];
    let t = json!({});
    for a in vals {
        for b in vals {
            for text in [
                format!("{a} AND {b}"),
                format!("{a} OR {b}"),
                format!("NOT {a}"),
            ] {
                let c = Condition::parse(&text).unwrap();
                let e = c.expr().unwrap();
                assert_eq!(compiled_value(&c, &JsonRow(&t)), reference(e, &t), "{text}");
            }
        }
    }
    let _ = eval::Tri::True;
}
