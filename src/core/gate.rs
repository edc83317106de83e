//! Gates: the verdict on a ring (docs/design.md, semantics 6).
//!
//! A gate gives Pass, Fail or Inconclusive. Never a verdict below the minimum sample and
//! never before the bake time; then the CEL `failure` condition is checked first, then
//! `success`. The conditions see `targeted`, `applied` and `metrics.<name>` as doubles
//! (CEL's `int / int` is integer division, so `3 / 100 > 0.02` would be false), and the
//! functions `lowerBound(successes, total)` / `upperBound(successes, total)`: the Wilson
//! score interval at 95%, so that a small sample does not pass (or fail) by luck.
//!
//! The counts are the configuration's own hub-computed metrics, cumulative over rings
//! 0..=i (the configuration targets all of them): they cost no query budget.

use crate::resources::{DeviceRolloutSpec, GateSpec, Verdict};
use cel::common::ast::{Expr, IdedExpr};
use cel::extractors::Arguments;
use cel::{Context, ExecutionError, Program, Value};
use jiff::SignedDuration;
use std::collections::{BTreeMap, BTreeSet};

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;
/// `minApplied` when neither the ring nor the rollout sets it: one applied device.
pub const DEFAULT_MIN_APPLIED: u32 = 1;
/// `bake` when neither the ring nor the rollout sets it: judge as soon as the ring is applied.
pub const DEFAULT_BAKE: SignedDuration = SignedDuration::ZERO;
/// `deadline` when neither the ring nor the rollout sets it: 24 hours.
pub const DEFAULT_DEADLINE: SignedDuration = SignedDuration::from_hours(24);

/// Lower bound of the Wilson score interval (95%) for `successes` out of `total`.
/// 0 when `total` is 0 (nothing is known).
pub fn wilson_lower(successes: f64, total: f64) -> f64 {
    wilson(successes, total).0
}

/// Upper bound of the Wilson score interval (95%); 1 when `total` is 0.
pub fn wilson_upper(successes: f64, total: f64) -> f64 {
    wilson(successes, total).1
}

fn wilson(successes: f64, total: f64) -> (f64, f64) {
    if total <= 0.0 || !total.is_finite() || !successes.is_finite() {
        return (0.0, 1.0);
    }
    let n = total;
    let p = (successes / n).clamp(0.0, 1.0);
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let margin = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    ((center - margin).max(0.0), (center + margin).min(1.0))
}

/// The gate that applies to one ring: the ring's overrides, then the rollout's gate,
/// then the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveGate {
    /// `minApplied`: below this many applied devices the verdict is Inconclusive.
    pub min_applied: u32,
    /// `bake`: how long the ring must stay applied before it is judged.
    pub bake: SignedDuration,
    /// `deadline`: how long a ring may go without being applied, or without a verdict,
    /// before it counts as failed.
    pub deadline: SignedDuration,
    /// `success`: a CEL condition that passes the ring; `None` passes once `failure` does
    /// not hold.
    pub success: Option<String>,
    /// `failure`: a CEL condition that fails the ring; checked before `success`.
    pub failure: Option<String>,
}

impl EffectiveGate {
    /// The gate of ring `ring` (an index into `spec.rings`): each field from the ring's
    /// own gate, else the rollout's `gate`, else the `DEFAULT_*` constant.
    pub fn for_ring(spec: &DeviceRolloutSpec, ring: usize) -> EffectiveGate {
        let own = spec.rings.get(ring).and_then(|r| r.gate.as_ref());
        let pick = |f: &dyn Fn(&GateSpec) -> Option<kube::core::Duration>| {
            own.and_then(f).or_else(|| f(&spec.gate))
        };
        let dur = |d: Option<kube::core::Duration>, default: SignedDuration| {
            d.and_then(|d| SignedDuration::try_from(std::time::Duration::from(d)).ok())
                .unwrap_or(default)
        };
        EffectiveGate {
            min_applied: own
                .and_then(|g| g.min_applied)
                .or(spec.gate.min_applied)
                .unwrap_or(DEFAULT_MIN_APPLIED),
            bake: dur(pick(&|g| g.bake), DEFAULT_BAKE),
            deadline: dur(pick(&|g| g.deadline), DEFAULT_DEADLINE),
            success: own
                .and_then(|g| g.success.clone())
                .or_else(|| spec.gate.success.clone()),
            failure: own
                .and_then(|g| g.failure.clone())
                .or_else(|| spec.gate.failure.clone()),
        }
    }
}

/// The numbers a gate judges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GateInputs {
    /// Devices the configuration targets (its `targetedCount`), rings 0..=i together.
    pub targeted: u64,
    /// Devices that applied it (its `appliedCount`), rings 0..=i together.
    pub applied: u64,
    /// Every declared metric; a metric the hub has not reported yet counts 0.
    pub metrics: BTreeMap<String, u64>,
}

/// A verdict and the reason for it.
#[derive(Clone, Debug, PartialEq)]
pub struct GateResult {
    /// Pass, Fail or Inconclusive.
    pub verdict: Verdict,
    /// Why, for the rollout's status and history: the condition that held, or what is
    /// missing.
    pub message: String,
}

/// Judges a ring whose bake time is over.
pub fn evaluate(gate: &EffectiveGate, inputs: &GateInputs) -> GateResult {
    let inconclusive = |message: String| GateResult {
        verdict: Verdict::Inconclusive,
        message,
    };
    if inputs.applied < u64::from(gate.min_applied) {
        return inconclusive(format!(
            "{} of {} devices applied; no verdict below minApplied {}",
            inputs.applied, inputs.targeted, gate.min_applied
        ));
    }
    if let Some(failure) = &gate.failure {
        match run(failure, inputs) {
            Ok(true) => {
                return GateResult {
                    verdict: Verdict::Fail,
                    message: format!("failure condition holds: {failure}"),
                };
            }
            Ok(false) => {}
            Err(e) => {
                return inconclusive(format!("failure condition could not be evaluated: {e}"));
            }
        }
    }
    match &gate.success {
        None => GateResult {
            verdict: Verdict::Pass,
            message: match &gate.failure {
                Some(f) => format!("failure condition does not hold: {f}"),
                None => "no conditions; the ring is applied".to_string(),
            },
        },
        Some(success) => match run(success, inputs) {
            Ok(true) => GateResult {
                verdict: Verdict::Pass,
                message: format!("success condition holds: {success}"),
            },
            Ok(false) => inconclusive(format!("success condition does not hold yet: {success}")),
            Err(e) => inconclusive(format!("success condition could not be evaluated: {e}")),
        },
    }
}

/// Runs one condition against the inputs; it must give a boolean.
pub fn run(expr: &str, inputs: &GateInputs) -> Result<bool, String> {
    let program = Program::compile(expr).map_err(|e| parse_message(&e))?;
    let ctx = context(inputs);
    match program.execute(&ctx) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("gives {other:?}, not a boolean")),
        Err(e) => Err(e.to_string()),
    }
}

fn context(inputs: &GateInputs) -> Context<'static, 'static> {
    let mut ctx = Context::default();
    ctx.add_variable_from_value("targeted", inputs.targeted as f64);
    ctx.add_variable_from_value("applied", inputs.applied as f64);
    let metrics: BTreeMap<String, f64> = inputs
        .metrics
        .iter()
        .map(|(k, v)| (k.clone(), *v as f64))
        .collect();
    let metrics: std::collections::HashMap<String, f64> = metrics.into_iter().collect();
    ctx.add_variable_from_value("metrics", metrics);
    ctx.add_function("lowerBound", |args: Arguments| bound(args, wilson_lower))
        .expect("lowerBound is not a standard function");
    ctx.add_function("upperBound", |args: Arguments| bound(args, wilson_upper))
        .expect("upperBound is not a standard function");
    ctx
}

fn bound(Arguments(args): Arguments, f: fn(f64, f64) -> f64) -> Result<Value, ExecutionError> {
    let num = |v: &Value| match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(x) => Some(*x),
        _ => None,
    };
    match args.as_slice() {
        [s, n] => match (num(s), num(n)) {
            (Some(s), Some(n)) => Ok(Value::Float(f(s, n))),
            _ => Err(ExecutionError::function_error(
                "lowerBound/upperBound",
                "takes two numbers: (successes, total)",
            )),
        },
        _ => Err(ExecutionError::invalid_argument_count(2, args.len())),
    }
}

fn parse_message(e: &cel::ParseErrors) -> String {
    e.errors
        .iter()
        .map(|e| {
            let col = e.pos.1 + 1;
            format!("column {col}: {}", e.msg)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks a gate condition: it compiles, names only `targeted`, `applied` and declared
/// metrics, and gives a boolean on sample numbers.
pub fn check(expr: &str, metric_names: &BTreeSet<String>) -> Result<(), String> {
    let program = Program::compile(expr).map_err(|e| parse_message(&e))?;
    let mut problems = Vec::new();
    walk(
        program.expression(),
        metric_names,
        &mut Vec::new(),
        &mut problems,
    );
    if let Some(p) = problems.first() {
        return Err(p.clone());
    }
    // Two samples, so that both sides of a typical comparison are exercised.
    for (targeted, applied, each) in [(100u64, 80u64, 10u64), (0, 0, 0)] {
        let inputs = GateInputs {
            targeted,
            applied,
            metrics: metric_names.iter().map(|m| (m.clone(), each)).collect(),
        };
        let ctx = context(&inputs);
        match program.execute(&ctx) {
            Ok(Value::Bool(_)) => {}
            Ok(other) => return Err(format!("must give a boolean, gives {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

const VARIABLES: [&str; 3] = ["targeted", "applied", "metrics"];

fn walk(e: &IdedExpr, metrics: &BTreeSet<String>, scope: &mut Vec<String>, out: &mut Vec<String>) {
    match &e.expr {
        Expr::Ident(name) if !VARIABLES.contains(&name.as_str()) && !scope.contains(name) => {
            out.push(format!(
                "unknown variable `{name}`; conditions can use targeted, applied and metrics.<name>"
            ));
        }
        Expr::Select(sel) => {
            if let Expr::Ident(root) = &sel.operand.expr
                && root == "metrics"
                && !scope.contains(root)
            {
                if !metrics.contains(&sel.field) {
                    let known: Vec<&str> = metrics.iter().map(|s| s.as_str()).collect();
                    out.push(format!(
                        "unknown metric `metrics.{}`; declared metrics: {}",
                        sel.field,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
                return;
            }
            walk(&sel.operand, metrics, scope, out);
        }
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                walk(t, metrics, scope, out);
            }
            for a in &call.args {
                walk(a, metrics, scope, out);
            }
        }
        Expr::List(list) => {
            for el in &list.elements {
                walk(el, metrics, scope, out);
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, metrics, scope, out);
            scope.push(c.iter_var.clone());
            scope.extend(c.iter_var2.clone());
            scope.push(c.accu_var.clone());
            walk(&c.accu_init, metrics, scope, out);
            walk(&c.loop_cond, metrics, scope, out);
            walk(&c.loop_step, metrics, scope, out);
            walk(&c.result, metrics, scope, out);
            scope.truncate(scope.len() - 2 - usize::from(c.iter_var2.is_some()));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn wilson_bounds_match_known_values() {
        // Reference values: Wilson score interval, z = 1.96.
        assert!(
            close(wilson_lower(95.0, 100.0), 0.8882),
            "{}",
            wilson_lower(95.0, 100.0)
        );
        assert!(
            close(wilson_upper(95.0, 100.0), 0.9785),
            "{}",
            wilson_upper(95.0, 100.0)
        );
        assert!(
            close(wilson_lower(10.0, 10.0), 0.7225),
            "{}",
            wilson_lower(10.0, 10.0)
        );
        assert!(
            close(wilson_upper(0.0, 10.0), 0.2775),
            "{}",
            wilson_upper(0.0, 10.0)
        );
        assert!(close(wilson_lower(0.0, 10.0), 0.0));
        assert!(
            close(wilson_lower(50.0, 100.0), 0.4038),
            "{}",
            wilson_lower(50.0, 100.0)
        );
        assert_eq!(wilson_lower(0.0, 0.0), 0.0);
        assert_eq!(wilson_upper(0.0, 0.0), 1.0);
        // More successes than total are clamped, never above 1.
        assert!(wilson_upper(12.0, 10.0) <= 1.0);
    }

    fn inputs(targeted: u64, applied: u64, metrics: &[(&str, u64)]) -> GateInputs {
        GateInputs {
            targeted,
            applied,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    fn gate(success: Option<&str>, failure: Option<&str>, min_applied: u32) -> EffectiveGate {
        EffectiveGate {
            min_applied,
            bake: SignedDuration::ZERO,
            deadline: DEFAULT_DEADLINE,
            success: success.map(str::to_string),
            failure: failure.map(str::to_string),
        }
    }

    #[test]
    fn counts_are_doubles_so_division_is_not_integer_division() {
        let i = inputs(100, 100, &[("failed", 3)]);
        assert_eq!(run("metrics.failed / applied > 0.02", &i), Ok(true));
        assert_eq!(run("applied >= 100", &i), Ok(true));
        assert_eq!(run("lowerBound(metrics.failed, 100) < 0.02", &i), Ok(true));
    }

    #[test]
    fn small_samples_do_not_pass_by_luck() {
        let g = gate(
            Some("lowerBound(metrics.current, applied) >= 0.95"),
            Some("lowerBound(metrics.failed, applied) > 0.02"),
            5,
        );
        // 10 of 10: the lower bound is 0.72, not enough.
        let r = evaluate(&g, &inputs(10, 10, &[("current", 10), ("failed", 0)]));
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        // 200 of 200 passes.
        let r = evaluate(&g, &inputs(200, 200, &[("current", 200), ("failed", 0)]));
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        // 3 failures in 10: the lower bound is above 2%: fail.
        let r = evaluate(&g, &inputs(10, 10, &[("current", 7), ("failed", 3)]));
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        // Below the minimum sample: no verdict even if failing.
        let r = evaluate(&g, &inputs(4, 4, &[("current", 0), ("failed", 4)]));
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(r.message.contains("minApplied 5"), "{r:?}");
    }

    #[test]
    fn failure_is_checked_before_success_and_no_success_means_pass() {
        let g = gate(Some("true"), Some("true"), 0);
        assert_eq!(evaluate(&g, &inputs(1, 1, &[])).verdict, Verdict::Fail);
        let g = gate(None, Some("metrics.failed > 0.0"), 1);
        assert_eq!(
            evaluate(&g, &inputs(5, 5, &[("failed", 0)])).verdict,
            Verdict::Pass
        );
        assert_eq!(
            evaluate(&g, &inputs(5, 5, &[("failed", 1)])).verdict,
            Verdict::Fail
        );
        let g = gate(None, None, 1);
        assert_eq!(evaluate(&g, &inputs(5, 5, &[])).verdict, Verdict::Pass);
    }

    #[test]
    fn evaluation_errors_are_inconclusive() {
        let g = gate(Some("applied"), None, 0);
        let r = evaluate(&g, &inputs(1, 1, &[]));
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert!(r.message.contains("not a boolean"), "{r:?}");
    }

    #[test]
    fn check_finds_unknown_names_and_syntax_errors() {
        let metrics: BTreeSet<String> = ["current".to_string(), "failed".to_string()].into();
        assert_eq!(
            check("lowerBound(metrics.current, applied) >= 0.95", &metrics),
            Ok(())
        );
        assert_eq!(
            check("metrics.failed / targeted < 0.1 && applied > 2.0", &metrics),
            Ok(())
        );
        let e = check("metrics.curent > 1.0", &metrics).unwrap_err();
        assert!(
            e.contains("unknown metric `metrics.curent`") && e.contains("current, failed"),
            "{e}"
        );
        let e = check("appled > 1.0", &metrics).unwrap_err();
        assert!(e.contains("unknown variable `appled`"), "{e}");
        let e = check("applied >", &metrics).unwrap_err();
        assert!(e.contains("column"), "{e}");
        let e = check("applied + 1.0", &metrics).unwrap_err();
        assert!(e.contains("boolean"), "{e}");
        let e = check("nosuch(applied)", &metrics).unwrap_err();
        assert!(!e.is_empty());
        assert_eq!(check("[1.0, 2.0].exists(x, x < applied)", &metrics), Ok(()));
    }
}
