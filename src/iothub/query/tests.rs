//! Unit and scenario tests of the query language: every construct, the error messages
//! with their columns, and whole queries over `JsonRow` twins.

use super::*;
use crate::iothub::path::intern_lc;
use crate::iothub::value::JsonRow;
use serde_json::{Value, json};

fn cond(text: &str) -> Condition {
    Condition::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
}

fn matches(text: &str, twin: &Value) -> bool {
    cond(text).matches(&JsonRow(twin))
}

fn err(text: &str) -> String {
    match Condition::parse(text) {
        Ok(c) => panic!("{text:?} should not parse, got {:?}", c.expr()),
        Err(e) => e.to_string(),
    }
}

fn qerr(text: &str) -> String {
    match Query::parse(text) {
        Ok(q) => panic!("{text:?} should not parse, got {}", q.select()),
        Err(e) => e.to_string(),
    }
}

fn twin() -> Value {
    json!({
        "deviceId": "test-device-1",
        "etag": "AAAA",
        "tags": {
            "environment": "prod",
            "ring": "canary",
            "group": "g1",
            "odd name": 7,
            "n": 5,
            "f": 2.5,
            "flag": true,
            "nothing": null,
            "list": [1, 2],
            "obj": {"a": 1},
            "Mixed": "Case"
        },
        "properties": {
            "desired": {"x": 1},
            "reported": {"model": "4000x", "x": null, "firmware": {"version": "2.4.0", "status": "Current"}}
        },
        "configurations": {"cfg-1": {"status": "applied"}, "cfg-2": {"status": "targeted"}}
    })
}

// --- constants, paths and case ------------------------------------------------------------

#[test]
fn star_matches_everything() {
    let c = cond("  * ");
    assert!(c.is_all());
    assert!(c.matches(&JsonRow(&json!({}))));
    assert!(c.paths().is_empty());
    assert_eq!(c.text(), "  * ");
    assert!(c.expr().is_none());
    assert!(!cond("tags.n = 5").is_all());
}

#[test]
fn keywords_and_names_are_case_insensitive_values_are_not() {
    let t = twin();
    assert!(matches(
        "tags.environment = 'prod' and TAGS.Environment = 'prod' AnD Tags.RING='canary'",
        &t
    ));
    assert!(!matches("tags.environment = 'Prod'", &t));
    assert!(matches("DEVICEID = 'test-device-1'", &t));
    assert!(!matches("deviceId = 'TEST-DEVICE-1'", &t));
    assert!(matches("tags.mixed = 'Case'", &t));
    assert!(matches("tags.n = 5 Or tags.n = 6", &t));
    assert!(matches("NoT tags.n = 6", &t));
    assert!(matches("tags.flag = TRUE AND tags.nothing = NULL", &t));
}

#[test]
fn bracketed_names() {
    let t = twin();
    assert!(matches("tags.[[group]] = 'g1'", &t));
    assert!(matches("tags.[[odd name]] = 7", &t));
    assert!(matches("[[tags]].[[ring]] = 'canary'", &t));
    assert!(matches("configurations.[[cfg-1]].status = 'applied'", &t));
}

#[test]
fn group_is_a_keyword_with_a_hint() {
    assert_eq!(
        err("tags.group = 'g1'"),
        "column 6: expected a property name after '.', found keyword GROUP: group is a keyword, write tags.[[group]]"
    );
    assert_eq!(
        err("group = 1"),
        "column 1: expected a condition, found keyword GROUP (to use it as a property name, write [[group]])"
    );
    assert!(err("tags.x.select = 1").contains("write tags.x.[[select]]"));
    assert!(err("tags.5 = 1").contains("write tags.[[5]]"));
}

#[test]
fn numbers() {
    let t = json!({"a": 31, "b": -2, "c": 0.5, "d": 1500.0, "big": 9223372036854775807i64, "min": i64::MIN});
    assert!(matches("a = 0x1F AND a = 0X1f", &t));
    assert!(matches("b = -2 AND b < -1.5", &t));
    assert!(matches("c = 0.5 AND c = 5e-1 AND c = 5E-1", &t));
    assert!(matches("d = 1.5e3 AND d = 1500 AND d = 1.5E+3", &t));
    assert!(matches("big = 9223372036854775807", &t));
    assert!(matches("min = -9223372036854775808", &t));
    assert!(matches("a = 31.0", &t), "int and float compare numerically");
    assert!(matches("-a = -31 AND -(a) = -31 AND - -a = 31", &t));
    assert!(matches("a = -0x1F * -1", &t));
    let huge = cond("x = 99999999999999999999");
    assert_eq!(huge.expr().unwrap().to_string(), "x = 1e20");
    assert!(err("x = 0x100000000000000000000000000000000").contains("out of range"));
    assert!(err("x = 1e999").contains("out of range"));
}

#[test]
fn strings_and_escapes() {
    let t = json!({"s": "it's \"q\" \\ é\n\t", "d": "x"});
    assert!(matches(r#"s = 'it\'s "q" \\ \u00e9\n\t'"#, &t));
    assert!(matches(r#"s = "it's \"q\" \\ \u00E9\n\t""#, &t));
    assert!(matches(r#"d = "x" AND d = 'x' AND d = '\u0078'"#, &t));
    assert!(matches(r#"'\uD83D\uDE00' = '😀'"#, &t));
}

// --- truthiness and undefined --------------------------------------------------------------

#[test]
fn only_boolean_true_selects() {
    let t = twin();
    for c in [
        "tags.nothing",
        "tags.missing",
        "tags.obj",
        "tags.list",
        "tags.ring",
        "tags.n",
        "false",
        "null",
        "undefined",
        "'true'",
        "1",
        "['a']",
    ] {
        assert!(!matches(c, &t), "{c} must not select");
    }
    assert!(matches("tags.flag", &t));
    assert!(matches("true", &t));
    assert!(matches("(tags.flag)", &t));
}

#[test]
fn undefined_propagates_three_valued() {
    let t = twin();
    assert!(!matches("tags.missing = 1", &t));
    assert!(!matches("tags.missing != 1", &t));
    assert!(
        !matches("NOT (tags.missing = 1)", &t),
        "NOT undefined is undefined, not true"
    );
    assert!(!matches("NOT tags.missing", &t));
    assert!(!matches("tags.missing = 1 AND true", &t));
    assert!(
        matches("NOT (tags.missing = 1 AND false)", &t),
        "undefined AND false is false"
    );
    assert!(
        matches("tags.missing = 1 OR true", &t),
        "undefined OR true is true"
    );
    assert!(!matches("tags.missing = 1 OR false", &t));
    assert!(!matches("NOT (tags.missing = 1 OR false)", &t));
    assert!(!matches("undefined = undefined", &t));
    assert!(!matches("tags.missing = tags.missing2", &t));
    assert!(matches("NOT (true AND false)", &t));
    assert!(
        !matches("NOT (true AND 'x')", &t),
        "non-Booleans are undefined in logic"
    );
    assert!(matches("false OR 'x' OR true", &t));
}

#[test]
fn comparisons_only_between_same_primitive_kinds() {
    let t = twin();
    assert!(matches("tags.nothing = null", &t));
    assert!(!matches("tags.nothing != null", &t));
    assert!(matches(
        "null = null AND null <= null AND NOT (null < null)",
        &t
    ));
    assert!(!matches("tags.n = '5'", &t));
    assert!(
        !matches("tags.n != '5'", &t),
        "different types: undefined, not unequal"
    );
    assert!(!matches("NOT (tags.n = '5')", &t));
    assert!(!matches("tags.nothing = 0", &t));
    assert!(!matches("tags.nothing != 0", &t));
    assert!(!matches("tags.obj = tags.obj", &t));
    assert!(!matches("tags.list = tags.list", &t));
    assert!(!matches("tags.obj != 1", &t));
    assert!(matches("tags.flag = true AND tags.flag != false", &t));
    assert!(
        matches("false < true AND true >= true", &t),
        "Booleans order false < true"
    );
    assert!(!matches("tags.flag = 1", &t));
}

#[test]
fn every_comparison_operator() {
    let t = json!({"n": 5, "s": "b"});
    let cases = [
        ("n = 5", true),
        ("n != 5", false),
        ("n <> 5", false),
        ("n <> 4", true),
        ("n < 6", true),
        ("n < 5", false),
        ("n <= 5", true),
        ("n > 4.5", true),
        ("n > 5", false),
        ("n >= 5", true),
        ("n >= 5.01", false),
        ("s < 'c'", true),
        ("s > 'a'", true),
        ("s > 'B'", true),
        ("s >= 'b'", true),
        ("s <= 'a'", false),
        ("s < 'ba'", true),
    ];
    for (c, want) in cases {
        assert_eq!(matches(c, &t), want, "{c}");
    }
}

#[test]
fn configuration_status_compares_ignoring_case() {
    let t = twin();
    assert!(matches("configurations.[[cfg-1]].status = 'Applied'", &t));
    assert!(matches("configurations.[[cfg-1]].status = 'APPLIED'", &t));
    assert!(matches("'Applied' = configurations.[[cfg-1]].status", &t));
    assert!(matches("Configurations.[[CFG-1]].Status = 'Applied'", &t));
    assert!(!matches("configurations.[[cfg-1]].status != 'Applied'", &t));
    assert!(matches(
        "configurations.[[cfg-2]].status IN ['Applied', 'Targeted']",
        &t
    ));
    assert!(!matches(
        "configurations.[[cfg-2]].status NIN ['TARGETED']",
        &t
    ));
    assert!(!matches("configurations.[[cfg-3]].status = 'Applied'", &t));
    // Other values stay case-sensitive, also under `configurations`.
    let other = json!({"configurations": {"c": {"status": "applied", "x": {"status": "applied"}}}, "tags": {"status": "applied"}});
    assert!(!matches("tags.status = 'Applied'", &other));
    assert!(!matches("configurations.c.x.status = 'Applied'", &other));
    assert!(matches("configurations.c.status = 'Applied'", &other));
}

// --- operators ------------------------------------------------------------------------

#[test]
fn arithmetic() {
    let t = json!({"a": 7, "b": 2, "f": 0.5, "s": "x", "max": i64::MAX});
    assert!(matches(
        "a + b = 9 AND a - b = 5 AND a * b = 14 AND a % b = 1",
        &t
    ));
    assert!(matches("a / b = 3.5 AND a / 7 = 1", &t));
    assert!(matches("a * f = 3.5 AND a + f > 7", &t));
    assert!(matches(
        "1 + 2 * 3 = 7 AND (1 + 2) * 3 = 9 AND 10 - 4 - 3 = 3 AND 12 / 2 / 3 = 2",
        &t
    ));
    assert!(matches("-a + 10 = 3 AND 7.5 % 2 = 1.5", &t));
    assert!(
        matches("-a % b = -1 AND a % -b = 1 AND -7.5 % 2 = -1.5", &t),
        "the remainder takes the dividend's sign"
    );
    assert!(
        matches(
            "max + 1 >= max AND max * 2 > max AND IS_NUMBER(max + 1)",
            &t
        ),
        "overflow widens to float"
    );
    assert!(!matches("a / 0 = 0", &t));
    assert!(
        !matches("NOT (a / 0 = 0)", &t),
        "division by zero is undefined"
    );
    assert!(!matches("a % 0 = 0 OR NOT (a % 0 = 0)", &t));
    assert!(!matches("s + 1 = 1 OR NOT (s + 1 = 1)", &t));
    assert!(!matches("'a' + 'b' = 'ab'", &t), "no string concatenation");
    assert!(!matches("-s = 1 OR NOT (-s = 1)", &t));
    assert!(
        !matches("1e308 * 10 > 0 OR NOT (1e308 * 10 > 0)", &t),
        "non-finite is undefined"
    );
}

#[test]
fn precedence_as_sql() {
    let t = json!({});
    assert!(
        matches("true OR true AND false", &t),
        "AND binds tighter than OR"
    );
    assert!(!matches("(true OR true) AND false", &t));
    assert!(
        matches("NOT false AND true", &t),
        "NOT binds tighter than AND"
    );
    assert!(
        matches("NOT 1 = 2", &t),
        "comparison binds tighter than NOT"
    );
    assert!(matches("NOT NOT true", &t));
    assert_eq!(
        cond("a OR b AND NOT c = 1 + 2 * -d")
            .expr()
            .unwrap()
            .to_string(),
        "a OR b AND NOT c = 1 + 2 * -d"
    );
    assert_eq!(
        cond("((a OR b)) AND (c)").expr().unwrap().to_string(),
        "(a OR b) AND c"
    );
    assert_eq!(
        cond("a - (b - c)").expr().unwrap().to_string(),
        "a - (b - c)"
    );
    assert_eq!(
        cond("(a - b) - c").expr().unwrap().to_string(),
        "(a - b) - c"
    );
    assert_eq!(cond("a - b - c").expr().unwrap().to_string(), "a - b - c");
}

#[test]
fn in_and_nin() {
    let t = twin();
    assert!(matches("deviceId IN ['a', 'test-device-1']", &t));
    assert!(!matches("deviceId IN ['a', 'b']", &t));
    assert!(matches("deviceId NIN ['a', 'b']", &t));
    assert!(matches("deviceId NOT IN ['a', 'b']", &t));
    assert!(matches("deviceId nin []", &t));
    assert!(matches("tags.n IN [1, 5.0, -3]", &t));
    assert!(matches("tags.nothing IN [null]", &t));
    assert!(matches("tags.flag in [true]", &t));
    assert!(!matches("tags.missing IN ['a']", &t));
    assert!(
        !matches("tags.missing NIN ['a']", &t),
        "undefined NIN is undefined"
    );
    assert!(!matches("tags.obj NIN ['a']", &t));
    assert!(
        !matches("tags.n NIN ['a', 'b']", &t),
        "no comparable constant: undefined"
    );
    assert!(matches("tags.n IN ['a', 5]", &t));
    assert!(!matches("tags.n NIN ['a', 5]", &t));
    assert!(matches("tags.n NIN [1, 2]", &t));
    assert!(!matches("deviceId IN ['TEST-DEVICE-1']", &t));
}

#[test]
fn functions() {
    let t = twin();
    let yes = [
        "IS_DEFINED(tags.nothing)",
        "is_defined(tags.ring)",
        "NOT IS_DEFINED(tags.missing)",
        "IS_NULL(tags.nothing) AND NOT IS_NULL(tags.missing) AND NOT IS_NULL(tags.n)",
        "IS_BOOL(tags.flag) AND NOT IS_BOOL(tags.n)",
        "IS_NUMBER(tags.n) AND IS_NUMBER(tags.f) AND NOT IS_NUMBER('1')",
        "IS_STRING(tags.ring) AND NOT IS_STRING(tags.n)",
        "IS_OBJECT(tags.obj) AND NOT IS_OBJECT(tags.list)",
        "IS_ARRAY(tags.list) AND IS_ARRAY(['a']) AND NOT IS_ARRAY(tags.obj)",
        "IS_PRIMITIVE(tags.nothing) AND IS_PRIMITIVE(tags.ring) AND NOT IS_PRIMITIVE(tags.obj) AND NOT IS_PRIMITIVE(tags.missing)",
        "STARTSWITH(deviceId, 'test') AND startsWith(deviceId, '')",
        "NOT STARTSWITH(deviceId, 'Test')",
        "ENDSWITH(deviceId, '-1') AND NOT ENDSWITH(deviceId, 'x')",
        "CONTAINS(deviceId, 'device') AND NOT CONTAINS(deviceId, 'DEVICE')",
        "LOWER(tags.mixed) = 'case' AND UPPER(tags.mixed) = 'CASE'",
        "LENGTH(deviceId) = 13 AND LENGTH('é') = 1",
        "IS_DEFINED(tags.n + 1) AND NOT IS_DEFINED(tags.n + 'a')",
    ];
    for c in yes {
        assert!(matches(c, &t), "{c}");
    }
    let undefined = [
        "STARTSWITH(tags.n, '5')",
        "STARTSWITH(tags.missing, 'a')",
        "ENDSWITH(deviceId, 1)",
        "LOWER(tags.n) = 5",
        "LENGTH(tags.list) = 2",
    ];
    for c in undefined {
        assert!(!matches(c, &t), "{c}");
        assert!(!matches(&format!("NOT {c}"), &t), "NOT {c}");
    }
}

#[test]
fn function_errors() {
    assert_eq!(
        err("STARTS_WITH(deviceId, 'x')"),
        "column 1: unknown function STARTS_WITH: write STARTSWITH (supported functions: IS_DEFINED, IS_NULL, \
         IS_BOOL, IS_NUMBER, IS_STRING, IS_OBJECT, IS_ARRAY, IS_PRIMITIVE, STARTSWITH, ENDSWITH, CONTAINS, LOWER, \
         UPPER, LENGTH)"
    );
    assert!(err("ends_with(deviceId, 'x')").contains("write ENDSWITH"));
    assert!(err("ISDEFINED(x)").contains("write IS_DEFINED"));
    let e = err("tags.a = 1 AND FOO(x)");
    assert!(
        e.starts_with("column 16: unknown function FOO (supported functions: IS_DEFINED"),
        "{e}"
    );
    assert_eq!(
        err("STARTSWITH(deviceId)"),
        "column 1: STARTSWITH takes 2 arguments, found 1"
    );
    assert_eq!(
        err("IS_DEFINED()"),
        "column 1: IS_DEFINED takes 1 argument, found 0"
    );
    assert_eq!(
        err("COUNT() = 1"),
        "column 1: COUNT() is an aggregate: it is allowed only in the SELECT list"
    );
    assert_eq!(
        err("IS_DEFINED(a b)"),
        "column 14: expected ',' or ')' in the arguments of IS_DEFINED, found name 'b'"
    );
}

// --- errors and columns ---------------------------------------------------------------

#[test]
fn error_messages_with_columns() {
    assert_eq!(err("tags.a = "), "column 10: expected a value after '='");
    assert_eq!(
        err("tags.a = AND"),
        "column 10: expected a value after '=', found keyword AND"
    );
    assert_eq!(
        err("tags.a = 1 AND"),
        "column 15: expected a value after 'AND'"
    );
    assert_eq!(
        err("tags.a = 1 and"),
        "column 15: expected a value after 'and'"
    );
    assert_eq!(
        err(""),
        "column 1: expected a condition, found the end of the query"
    );
    assert_eq!(
        err("   "),
        "column 4: expected a condition, found the end of the query"
    );
    assert_eq!(err("= 1"), "column 1: expected a condition, found '='");
    assert_eq!(
        err("tags.a = 1 tags.b = 2"),
        "column 12: expected an operator, AND, OR or the end of the condition, found name 'tags'"
    );
    assert_eq!(
        err("(tags.a = 1"),
        "column 12: expected ')' to close the '(' at column 1, found the end of the query"
    );
    assert_eq!(
        err("tags.a = 1)"),
        "column 11: expected an operator, AND, OR or the end of the condition, found ')'"
    );
    assert_eq!(
        err("tags. = 1"),
        "column 7: expected a property name after '.', found '='"
    );
    assert_eq!(
        err("tags.a IN 'x'"),
        "column 11: expected an array constant like ['a', 'b'] after 'IN', found string 'x'"
    );
    assert_eq!(
        err("tags.a IN ['x',]"),
        "column 16: expected a constant (a string, a number, true, false or null) in the array, found ']'"
    );
    assert_eq!(
        err("tags.a IN ['x' 'y']"),
        "column 16: expected ',' or ']' in the array, found string 'y'"
    );
    assert_eq!(
        err("tags.a IN [tags.b]"),
        "column 12: expected a constant (a string, a number, true, false or null) in the array, found name 'tags'"
    );
    assert_eq!(
        err("a = b = c"),
        "column 7: comparisons cannot be chained: found '=' after a comparison; add parentheses, like (a = b) = c"
    );
    assert_eq!(
        err("a = NOT b"),
        "column 5: expected a value after '=', found keyword NOT"
    );
    assert_eq!(
        err("tags.a == 1"),
        "column 9: expected a value after '=', found '='"
    );
    assert_eq!(
        err("tags.a = 'x"),
        "column 10: unterminated string: expected a closing ' for the string started here"
    );
    assert!(err("SELECT * FROM devices").contains("a target condition is only the predicate"));
    assert!(err("FROM devices.modules WHERE x = 1").contains("module"));
    let e = Condition::parse("tags.a = ").unwrap_err();
    assert_eq!(
        (e.column, e.message.as_str()),
        (10, "expected a value after '='")
    );
}

#[test]
fn length_limit() {
    let ok = format!("tags.a = '{}'", "x".repeat(MAX_QUERY_CHARS - 11));
    assert_eq!(ok.chars().count(), MAX_QUERY_CHARS);
    assert!(Condition::parse(&ok).is_ok());
    let long = format!("tags.a = '{}'", "x".repeat(MAX_QUERY_CHARS - 10));
    let e = Condition::parse(&long).unwrap_err();
    assert_eq!(e.column, MAX_QUERY_CHARS + 1);
    assert_eq!(
        e.message,
        "the query is 8193 characters long; IoT Hub allows at most 8192 characters"
    );
    let e = Query::parse(&format!("SELECT * FROM devices WHERE {long}")).unwrap_err();
    assert!(e.message.contains("at most 8192 characters"));
    // Characters, not bytes.
    let wide = format!("tags.a = '{}'", "é".repeat(MAX_QUERY_CHARS - 11));
    assert!(Condition::parse(&wide).is_ok());
    assert!(Condition::parse(&format!("{}*", " ".repeat(MAX_QUERY_CHARS))).is_err());
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep =
        |open: &str, close: &str, n: usize| format!("{}true{}", open.repeat(n), close.repeat(n));
    assert!(Condition::parse(&deep("(", ")", MAX_DEPTH - 1)).is_ok());
    let e = Condition::parse(&deep("(", ")", 4000)).unwrap_err();
    assert!(e.message.contains("nests deeper than 200 levels"), "{e}");
    assert!(Condition::parse(&deep("NOT ", "", 3000)).is_err());
    assert!(Condition::parse(&deep("NOT ", "", 150)).is_ok());
    assert!(Condition::parse(&deep("-", "", 5000)).is_err());
    assert!(Condition::parse(&deep("IS_DEFINED(", ")", 1000)).is_err());
    assert!(Condition::parse(&deep("[", "]", 3000)).is_err());
    assert!(
        Query::parse(&format!(
            "SELECT * FROM devices WHERE {}",
            deep("(", ")", 3000)
        ))
        .is_err()
    );
    // The tree's depth counts too, not only what is written nested.
    let layered = |n: usize| format!("{}1{}", "x OR x AND x = x + x * (".repeat(n), ")".repeat(n));
    assert!(Condition::parse(&layered(39)).is_ok());
    let e = Condition::parse(&layered(41)).unwrap_err();
    assert!(e.message.contains("nests deeper than 200 levels"), "{e}");
    assert_eq!(
        err(&deep("(", ")", 201)),
        "column 200: the expression nests deeper than 200 levels (of parentheses, operators and function calls)"
    );
    // Long flat chains are fine: they do not nest.
    let chain = vec!["tags.ring = 'a'"; 400].join(" OR ");
    assert!(Condition::parse(&chain).is_ok());
    let sum = format!("{} = 1000", vec!["1"; 1000].join(" + "));
    assert!(matches(&sum, &json!({})));
}

// --- Condition API ---------------------------------------------------------------------

#[test]
fn paths_are_lowercase_ids_in_order() {
    let c = cond(
        "Tags.Ring = 'a' AND STARTSWITH(DeviceId, 'x') OR tags.ring IN ['b'] OR configurations.[[My-Cfg]].status = 1",
    );
    assert_eq!(
        c.paths(),
        vec![
            intern_lc("tags.ring"),
            intern_lc("deviceid"),
            intern_lc("configurations.my-cfg.status")
        ]
    );
    assert_eq!(
        crate::iothub::path::name(c.paths()[2]),
        "configurations.my-cfg.status"
    );
    assert!(cond("1 = 1").paths().is_empty());
}

#[test]
fn text_is_kept_and_expr_prints_normalized() {
    let c = cond("tags.x=1   and  tags.[[y]]<>'a'");
    assert_eq!(c.text(), "tags.x=1   and  tags.[[y]]<>'a'");
    assert_eq!(
        c.expr().unwrap().to_string(),
        "tags.x = 1 AND tags.y != 'a'"
    );
}

// --- scenarios ------------------------------------------------------------------------

fn fleet() -> Vec<Value> {
    vec![
        json!({"deviceId": "a", "tags": {"environment": "prod", "ring": "canary"},
               "properties": {"reported": {"model": "4000x", "s": "Success", "v": 1}},
               "configurations": {"cfg-1": {"status": "applied"}}}),
        json!({"deviceId": "b", "tags": {"environment": "prod", "ring": "early"},
               "properties": {"reported": {"model": "4000x", "s": "Success", "v": 2.5}},
               "configurations": {"cfg-1": {"status": "targeted"}}}),
        json!({"deviceId": "test-1", "tags": {"environment": "test"},
               "properties": {"reported": {"model": "3000", "s": "Error", "v": 3}}}),
        json!({"deviceId": "test-2", "tags": {"environment": "prod"},
               "properties": {"reported": {"model": "4000x", "s": "Success", "v": "n/a"}}}),
        json!({"deviceId": "c", "tags": {"environment": "prod"},
               "properties": {"reported": {"model": "4000x"}}}),
    ]
}

fn ids(cond_text: &str) -> Vec<String> {
    let c = cond(cond_text);
    fleet()
        .iter()
        .filter(|t| c.matches(&JsonRow(t)))
        .map(|t| t["deviceId"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn scenario_target_conditions() {
    assert_eq!(
        ids("tags.environment='prod' AND properties.reported.model='4000x'"),
        ["a", "b", "test-2", "c"]
    );
    assert_eq!(ids("deviceId IN ['a','b']"), ["a", "b"]);
    assert_eq!(ids("STARTSWITH(deviceId,'test')"), ["test-1", "test-2"]);
    assert_eq!(ids("configurations.[[cfg-1]].status = 'Applied'"), ["a"]);
    assert_eq!(
        ids(
            "(tags.environment='prod' AND properties.reported.model='4000x') AND (tags.ring='canary' OR tags.ring='early')"
        ),
        ["a", "b"]
    );
    assert_eq!(
        ids("NOT (tags.ring = 'canary')"),
        ["b"],
        "devices without a ring are not 'not canary'"
    );
    assert_eq!(
        ids("NOT IS_DEFINED(tags.ring) OR tags.ring != 'canary'"),
        ["b", "test-1", "test-2", "c"]
    );
    assert_eq!(ids("*"), ["a", "b", "test-1", "test-2", "c"]);
}

#[test]
fn scenario_is_defined_with_null() {
    let t = json!({"deviceId": "d", "properties": {"reported": {"x": null}}});
    assert!(matches("IS_DEFINED(properties.reported.x)", &t));
    assert!(!matches("IS_DEFINED(properties.reported.y)", &t));
    assert!(matches("properties.reported.x = null", &t));
}

fn run(q: &Query, twins: &[Value]) -> Vec<Value> {
    let rows: Vec<JsonRow> = twins.iter().map(JsonRow).collect();
    let matching: Vec<&dyn Row> = rows
        .iter()
        .map(|r| r as &dyn Row)
        .filter(|r| q.condition().is_none_or(|c| c.matches(*r)))
        .collect();
    if q.is_aggregate() {
        q.aggregate(&mut matching.into_iter())
    } else {
        matching
            .into_iter()
            .take(q.top().unwrap_or(usize::MAX))
            .map(|r| q.project(r))
            .collect()
    }
}

fn query(text: &str) -> Query {
    Query::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
}

#[test]
fn scenario_count() {
    let q = query("SELECT COUNT() AS n FROM devices");
    assert!(q.is_aggregate());
    assert_eq!(q.item_type(), ItemType::Raw);
    assert_eq!(run(&q, &fleet()), vec![json!({"n": 5})]);
    assert_eq!(run(&q, &[]), vec![json!({"n": 0})]);
    let q = query(
        "select count() as totalNumberOfDevices from devices where tags.environment = 'test'",
    );
    assert_eq!(run(&q, &fleet()), vec![json!({"totalNumberOfDevices": 1})]);
    let q = query("SELECT COUNT() AS n FROM devices WHERE tags.environment = 'none'");
    assert_eq!(run(&q, &fleet()), vec![json!({"n": 0})]);
}

#[test]
fn scenario_group_by() {
    let q = query(
        "SELECT properties.reported.s AS status, COUNT() AS c FROM devices GROUP BY properties.reported.s",
    );
    assert!(q.is_aggregate());
    let out = run(&q, &fleet());
    assert_eq!(
        out,
        vec![
            json!({"c": 1}),
            json!({"c": 1, "status": "Error"}),
            json!({"c": 3, "status": "Success"})
        ]
    );
    // Aggregates come first in each row, as in IoT Hub's example.
    assert_eq!(
        serde_json::to_string(&out[2]).unwrap(),
        r#"{"c":3,"status":"Success"}"#
    );
    assert_eq!(run(&q, &[]), Vec::<Value>::new());
    let q = query(
        "SELECT tags.environment, COUNT() AS n FROM devices WHERE tags.environment != 'x' GROUP BY Tags.Environment",
    );
    assert_eq!(
        run(&q, &fleet()),
        vec![
            json!({"n": 4, "environment": "prod"}),
            json!({"n": 1, "environment": "test"})
        ]
    );
    // Distinct values, without aggregates.
    let q = query("SELECT tags.ring FROM devices GROUP BY tags.ring");
    assert!(q.is_aggregate());
    assert_eq!(
        run(&q, &fleet()),
        vec![
            json!({}),
            json!({"ring": "canary"}),
            json!({"ring": "early"})
        ]
    );
    // TOP applies to the groups.
    let q = query(
        "SELECT TOP 1 tags.environment AS e, COUNT() AS n FROM devices GROUP BY tags.environment",
    );
    assert_eq!(run(&q, &fleet()), vec![json!({"n": 4, "e": "prod"})]);
}

#[test]
fn group_keys_by_value() {
    let twins = vec![
        json!({"k": 1}),
        json!({"k": 1.0}),
        json!({"k": "1"}),
        json!({"k": null}),
        json!({"k": true}),
        json!({"k": {"a": 1}}),
        json!({"k": {"a": 1}}),
        json!({"k": 0.5}),
        json!({}),
    ];
    let q = query("SELECT k, COUNT() AS n FROM devices GROUP BY k");
    assert_eq!(
        run(&q, &twins),
        vec![
            json!({"n": 1}),
            json!({"n": 1, "k": null}),
            json!({"n": 1, "k": true}),
            json!({"n": 1, "k": 0.5}),
            json!({"n": 2, "k": 1}),
            json!({"n": 1, "k": "1"}),
            json!({"n": 2, "k": {"a": 1}}),
        ]
    );
    let q = query("SELECT a, b, COUNT() AS n FROM devices GROUP BY a, b");
    let twins = vec![
        json!({"a": 1, "b": 1}),
        json!({"a": 1, "b": 2}),
        json!({"a": 1, "b": 1}),
    ];
    assert_eq!(
        run(&q, &twins),
        vec![
            json!({"n": 2, "a": 1, "b": 1}),
            json!({"n": 1, "a": 1, "b": 2})
        ]
    );
}

#[test]
fn sum_avg_min_max() {
    let q = query(
        "SELECT SUM(properties.reported.v) AS s, AVG(properties.reported.v) AS a, MIN(properties.reported.v) AS lo, \
         MAX(properties.reported.v) AS hi, COUNT() AS n FROM devices",
    );
    assert_eq!(
        run(&q, &fleet()),
        vec![json!({"s": 6.5, "a": 6.5 / 3.0, "lo": 1, "hi": 3, "n": 5})]
    );
    assert_eq!(run(&q, &[]), vec![json!({"s": 0, "n": 0})]);
    let q = query("SELECT SUM(x) AS s FROM devices");
    assert_eq!(
        run(&q, &[json!({"x": 2}), json!({"x": 3})]),
        vec![json!({"s": 5})]
    );
    assert_eq!(
        run(&q, &[json!({"x": i64::MAX}), json!({"x": 1})]),
        vec![json!({"s": i64::MAX as f64 + 1.0})]
    );
}

#[test]
fn scenario_projections() {
    let q = query(
        "SELECT DeviceId, properties.reported.model, Tags.Ring FROM devices WHERE tags.environment = 'prod'",
    );
    assert!(!q.is_aggregate());
    assert_eq!(q.item_type(), ItemType::Raw);
    assert_eq!(q.condition().unwrap().text(), "tags.environment = 'prod'");
    assert_eq!(
        run(&q, &fleet()),
        vec![
            json!({"deviceId": "a", "model": "4000x", "ring": "canary"}),
            json!({"deviceId": "b", "model": "4000x", "ring": "early"}),
            json!({"deviceId": "test-2", "model": "4000x"}),
            json!({"deviceId": "c", "model": "4000x"}),
        ]
    );
    let q =
        query("SELECT deviceId AS id, properties.reported AS r, tags.[[Odd Name]] FROM devices");
    let t = json!({"deviceId": "x", "tags": {"Odd Name": [1]}, "properties": {"reported": {"a": {"b": null}}}});
    assert_eq!(
        q.project(&JsonRow(&t)),
        json!({"id": "x", "r": {"a": {"b": null}}, "odd Name": [1]})
    );
    let q = query("SELECT LastActivityTime, DeviceID FROM devices");
    let t = json!({"deviceId": "x", "lastActivityTime": "2020"});
    assert_eq!(
        serde_json::to_string(&q.project(&JsonRow(&t))).unwrap(),
        r#"{"lastActivityTime":"2020","deviceID":"x"}"#
    );
}

#[test]
fn scenario_select_star_and_top() {
    let q = query("SELECT * FROM devices");
    assert_eq!(q.item_type(), ItemType::Twin);
    assert!(!q.is_aggregate());
    assert!(q.condition().is_none());
    assert_eq!(q.top(), None);
    assert_eq!(run(&q, &fleet()), fleet());
    let q = query("select top 2 * from Devices where tags.environment = 'prod'");
    assert_eq!(q.top(), Some(2));
    assert_eq!(run(&q, &fleet()), fleet()[..2].to_vec());
    let q = query("SELECT TOP 0x3 deviceId FROM devices");
    assert_eq!(q.top(), Some(3));
    assert_eq!(run(&q, &fleet()).len(), 3);
    assert_eq!(
        q.aggregate(
            &mut fleet()
                .iter()
                .map(JsonRow)
                .collect::<Vec<_>>()
                .iter()
                .map(|r| r as &dyn Row)
        )
        .len(),
        3,
        "aggregate() on a plain query projects and applies TOP"
    );
}

#[test]
fn hub_generated_queries_parse() {
    for text in [
        "select deviceId from devices where tags.environment='test'",
        "select deviceId from devices where configurations.[[my-config]].status = 'Applied'",
        "select deviceId from devices where capabilities.iotEdge = true",
        "SELECT deviceId FROM devices WHERE properties.reported.firmware.version = '2.4.0' AND properties.reported.firmware.status = 'Current'",
        "SELECT * FROM devices WHERE tags.location.region = 'US'",
        "SELECT * FROM devices WHERE tags.location.region = 'US' AND properties.reported.telemetryConfig.sendFrequency = '5m'",
        "SELECT * FROM devices WHERE properties.reported.connectivity IN ['wired', 'wifi']",
        "SELECT * FROM devices WHERE is_defined(properties.reported.connectivity)",
        "SELECT LastActivityTime FROM devices WHERE status = 'enabled'",
        "SELECT * FROM devices WHERE deviceId IN ['device1', 'device2']",
        "SELECT * FROM devices WHERE tags.[[group]].name = 'a'",
        "SELECT properties.reported.telemetryConfig.status AS status, COUNT() AS numberOfDevices FROM devices GROUP BY properties.reported.telemetryConfig.status",
        "SELECT * FROM devices WHERE properties.reported.$metadata.$lastUpdated > '2020'",
    ] {
        query(text);
    }
}

#[test]
fn query_errors() {
    assert_eq!(
        qerr("SELECT * FROM devices.modules"),
        "column 15: FROM devices.modules is not supported: the embedded hub supports FROM devices only (not devices.modules or devices.jobs)"
    );
    assert!(qerr("SELECT * FROM devices.jobs WHERE x = 1").contains("supports FROM devices only"));
    assert_eq!(
        qerr("SELECT * FROM twins"),
        "column 15: expected devices after FROM, found name 'twins'"
    );
    assert_eq!(
        qerr("DELETE FROM devices"),
        "column 1: expected SELECT at the start of the query, found name 'DELETE'"
    );
    assert_eq!(
        qerr("SELECT * devices"),
        "column 10: expected FROM after '*', found name 'devices'"
    );
    assert_eq!(
        qerr("SELECT deviceId tags FROM devices"),
        "column 17: expected ',' or FROM after the selected item, found name 'tags'"
    );
    assert_eq!(
        qerr("SELECT * FROM devices WHERE"),
        "column 28: expected a value after 'WHERE'"
    );
    assert_eq!(
        qerr("SELECT * FROM devices WHERE tags.a = "),
        "column 38: expected a value after '='"
    );
    assert_eq!(
        qerr("SELECT * FROM devices WHERE x = 1 ORDER BY x"),
        "column 35: expected an operator, AND, OR, GROUP BY or the end of the query, found name 'ORDER'"
    );
    assert_eq!(
        qerr("SELECT * FROM devices x"),
        "column 23: expected WHERE, GROUP BY or the end of the query, found name 'x'"
    );
    assert_eq!(
        qerr("SELECT TOP x * FROM devices"),
        "column 12: expected a whole number of rows after TOP (like TOP 10), found name 'x'"
    );
    assert!(qerr("SELECT TOP -1 * FROM devices").contains("whole number"));
    assert!(qerr("SELECT TOP 1.5 * FROM devices").contains("whole number"));
    assert_eq!(
        qerr("SELECT COUNT() FROM devices"),
        "column 16: expected AS and a name after COUNT() (like COUNT() AS n), found keyword FROM"
    );
    assert_eq!(
        qerr("SELECT COUNT(x) AS n FROM devices"),
        "column 14: expected ')' after 'COUNT(' (COUNT takes no argument), found name 'x'"
    );
    assert!(
        qerr("SELECT LOWER(deviceId) AS d FROM devices")
            .starts_with("column 8: LOWER() cannot be selected")
    );
    assert_eq!(
        qerr("SELECT deviceId, COUNT() AS n FROM devices"),
        "column 8: deviceId is selected next to an aggregate but is not in GROUP BY: add GROUP BY deviceId"
    );
    assert_eq!(
        qerr("SELECT tags.a, COUNT() AS n FROM devices GROUP BY tags.b"),
        "column 8: tags.a is selected next to an aggregate but is not in GROUP BY: select only grouped properties and aggregates"
    );
    assert!(
        qerr("SELECT * FROM devices GROUP BY tags.b")
            .starts_with("column 8: SELECT * cannot be used with GROUP BY")
    );
    assert_eq!(
        qerr("SELECT tags.x, properties.reported.x FROM devices"),
        "column 16: properties.reported.x is named 'x' like an earlier selected item: give one of them another name with AS"
    );
    assert_eq!(
        qerr("SELECT * FROM devices GROUP tags.x"),
        "column 29: expected BY after GROUP, found name 'tags'"
    );
    assert_eq!(
        qerr("SELECT * FROM devices GROUP BY"),
        "column 31: expected a property path after 'BY', found the end of the query"
    );
    assert_eq!(
        qerr("SELECT deviceId AS FROM devices"),
        "column 20: expected a name after AS, found keyword FROM (to use it as a property name, write [[FROM]])"
    );
    assert_eq!(
        qerr("SELECT tags.group FROM devices"),
        "column 13: expected a property name after '.', found keyword GROUP: group is a keyword, write tags.[[group]]"
    );
    assert_eq!(
        qerr(""),
        "column 1: expected SELECT at the start of the query, found the end of the query"
    );
}

#[test]
fn query_aliases_and_printing() {
    let q = query(
        "select top 5 tags.[[odd name]] as [[Odd Alias]], count() as n, sum(x) as s from devices where x > 1 group by tags.[[odd name]]",
    );
    assert_eq!(
        q.select().to_string(),
        "SELECT TOP 5 tags.[[odd name]] AS [[Odd Alias]], COUNT() AS n, SUM(x) AS s FROM devices WHERE x > 1 GROUP BY tags.[[odd name]]"
    );
    assert_eq!(
        run(&q, &[json!({"x": 2, "tags": {"odd name": "v"}})]),
        vec![json!({"n": 1, "s": 2, "Odd Alias": "v"})]
    );
}

#[test]
fn the_deepest_accepted_expressions_fit_a_small_stack() {
    // Evaluation, printing, cloning and dropping recurse over the tree; the cap on its
    // depth keeps them within 1 MiB even in a debug build (tokio workers have 2 MiB).
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(|| {
            let n = MAX_DEPTH - 1;
            let texts = [
                format!(
                    "{}1{}",
                    "x OR x AND x = x + x * (".repeat(39),
                    ")".repeat(39)
                ),
                format!("{}1{}", "LOWER(".repeat(n), ")".repeat(n)),
                format!("{}true", "NOT ".repeat(n)),
                format!("{}1{}", "-(".repeat(n / 2), ")".repeat(n / 2)),
            ];
            let t = json!({"x": 1});
            for text in texts {
                let c = Condition::parse(&text).unwrap_or_else(|e| panic!("{e}"));
                let _ = c.matches(&JsonRow(&t));
                let _ = c.paths();
                let printed = c.expr().unwrap().to_string();
                assert_eq!(
                    super::parser::parse_condition(&printed).as_ref(),
                    Ok(c.expr().unwrap())
                );
                let q = Query::parse(&format!("SELECT * FROM devices WHERE {text}")).unwrap();
                drop((c.clone(), q.clone()));
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn compiled_forms_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Condition>();
    shareable::<Query>();
    shareable::<QueryError>();
}

#[test]
fn odd_inputs() {
    assert_eq!(
        qerr("SELECT * FROM devices WHERE *"),
        "column 29: expected a value after 'WHERE', found '*'"
    );
    assert_eq!(
        err("* AND tags.a = 1"),
        "column 1: expected a condition, found '*'"
    );
    assert_eq!(
        err("IS_DEFINED(a,)"),
        "column 14: expected a value after ',', found ')'"
    );
    assert_eq!(
        err("IS_DEFINED((a, b))"),
        "column 14: expected ')' to close the '(' at column 12, found ','"
    );
    assert_eq!(
        err("IS_DEFINED(a"),
        "column 13: expected ',' or ')' in the arguments of IS_DEFINED, found the end of the query"
    );
    assert_eq!(
        err("tags.a NOT = 1"),
        "column 8: expected an operator, AND, OR or the end of the condition, found keyword NOT"
    );
    assert_eq!(err("()"), "column 2: expected a value after '(', found ')'");
    assert_eq!(
        err("tags.a = 1,"),
        "column 11: expected an operator, AND, OR or the end of the condition, found ','"
    );
    assert!(matches(
        "NOT(tags.a = 2) AND (((tags.a)) = 1)",
        &json!({"tags": {"a": 1}})
    ));
    assert!(matches(
        "tags.a IN [1] AND NOT tags.a IN [2] AND tags.a NOT IN [3]",
        &json!({"tags": {"a": 1}})
    ));
    assert!(matches(
        "tags.list = tags.list OR true",
        &json!({"tags": {"list": [1]}})
    ));
    // Whitespace of any kind between tokens.
    assert!(matches(
        "tags.a\n=\t1\r\nAND\u{a0}true",
        &json!({"tags": {"a": 1}})
    ));
}
