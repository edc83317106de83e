//! The console's view models: what each page shows, computed from a rollout's spec and
//! status alone (no I/O), so that the page's JavaScript only lays them out.
//!
//! - [`overview`]: every rollout, problems first, with per ring bars of targeted / applied
//!   / each metric and what it waits for;
//! - [`rollout_page`]: the rings with their composed target conditions, each gate verdict
//!   with its numbers (counts, Wilson bound, threshold), the timeline, the actions.

use crate::core::gate::{self, EffectiveGate, GateInputs, wilson_lower, wilson_upper};
use crate::core::plan::{Plan, metric_query};
use crate::core::status::{STALLED, condition};
use crate::resources::{
    DeviceRollout, DeviceRolloutStatus, OperationKind, Phase, RingRecord, RingState, Verdict,
};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

/// A rollout as a console backend hands it over.
#[derive(Clone, Debug)]
pub struct RolloutRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The rollout as last read.
    pub rollout: DeviceRollout,
    /// Its status as last written.
    pub status: DeviceRolloutStatus,
    /// A problem outside the status (source file, hub access).
    pub error: Option<String>,
    /// When the controller first saw it.
    pub created: Option<Timestamp>,
    /// Its source is gone: it is being deleted.
    pub deleting: bool,
}

/// The counts of a rollout's current ring at one moment, as the console saw them (it
/// samples the controller's status every few seconds) or as a history entry recorded them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// When.
    pub t: Timestamp,
    /// The revision.
    pub revision: Option<String>,
    /// The ring's name.
    pub ring: String,
    /// Targeted devices.
    pub targeted: Option<u64>,
    /// Applied devices.
    pub applied: Option<u64>,
    /// Metric counts.
    pub metrics: std::collections::BTreeMap<String, u64>,
}

impl Sample {
    /// The current ring's counts of a rollout now; `None` before it has a ring.
    pub fn of(row: &RolloutRow, t: Timestamp) -> Option<Sample> {
        let st = &row.status;
        let ring = st.ring.as_ref()?;
        let rec = st.rings.get(ring.index as usize);
        Some(Sample {
            t,
            revision: st.revision.clone(),
            ring: ring.name.clone(),
            targeted: ring.targeted.or(rec.and_then(|r| r.targeted)),
            applied: ring.applied.or(rec.and_then(|r| r.applied)),
            metrics: rec.map(|r| r.metrics.clone()).unwrap_or_default(),
        })
    }

    /// Same counts, ring and revision (the time aside).
    pub fn same(&self, other: &Sample) -> bool {
        (
            &self.revision,
            &self.ring,
            self.targeted,
            self.applied,
            &self.metrics,
        ) == (
            &other.revision,
            &other.ring,
            other.targeted,
            other.applied,
            &other.metrics,
        )
    }
}

/// One ring's series for its chart: the history entries of the current revision at that
/// ring and the console's samples, by time.
pub fn series(row: &RolloutRow, ring: &str, samples: &[Sample]) -> Vec<Sample> {
    let rev = row.status.revision.as_ref();
    let mut out: Vec<Sample> = row
        .status
        .history
        .iter()
        .filter(|h| h.ring.as_deref() == Some(ring) && h.revision.as_ref() == rev)
        .filter(|h| h.applied.is_some() || !h.metrics.is_empty())
        .map(|h| Sample {
            t: h.time.0,
            revision: h.revision.clone(),
            ring: ring.to_string(),
            targeted: h.targeted,
            applied: h.applied,
            metrics: h.metrics.clone(),
        })
        .chain(
            samples
                .iter()
                .filter(|s| s.ring == ring && s.revision.as_ref() == rev)
                .cloned(),
        )
        .collect();
    out.sort_by_key(|s| s.t);
    thin(out, MAX_CHART_POINTS)
}

/// Most points a chart gets (more are thinned evenly, the last kept).
pub const MAX_CHART_POINTS: usize = 240;

fn thin(v: Vec<Sample>, max: usize) -> Vec<Sample> {
    if v.len() <= max {
        return v;
    }
    let step = v.len().div_ceil(max);
    let last = v.len() - 1;
    v.into_iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i == last)
        .map(|(_, s)| s)
        .collect()
}

/// One ring's bar on the overview.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RingBar {
    /// The ring's name.
    pub name: String,
    /// `done`, `current` or `pending`.
    pub place: &'static str,
    /// Targeted devices (rings 0..=this together), when observed.
    pub targeted: Option<u64>,
    /// Applied devices, when observed.
    pub applied: Option<u64>,
    /// Each metric's count, by name.
    pub metrics: Vec<(String, u64)>,
    /// The gate's last verdict.
    pub verdict: Option<Verdict>,
}

/// One line of the overview.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSummary {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Phase (`Pending` until the first reconcile).
    pub phase: String,
    /// The current ring's name.
    pub ring: Option<String>,
    /// The current ring's state.
    pub ring_state: Option<RingState>,
    /// The current revision.
    pub revision: Option<String>,
    /// Seconds since the controller first saw it.
    pub age_seconds: Option<i64>,
    /// What it waits for, in words.
    pub waiting_for: String,
    /// A problem to show first (failed, rolled back, stalled, hub or source error).
    pub problem: Option<String>,
    /// Sort key: 0 problem, 1 waiting for a person, 2 moving, 3 settled.
    pub rank: u8,
    /// One bar per ring.
    pub rings: Vec<RingBar>,
}

/// The overview page.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// When this view was computed.
    pub now: Timestamp,
    /// Every rollout, problems first.
    pub rollouts: Vec<RolloutSummary>,
}

/// A gate condition and what it says with the current numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// `failure` or `success`.
    pub kind: &'static str,
    /// The CEL expression.
    pub expression: String,
    /// Whether it holds on the ring's last counts (`None`: it cannot be evaluated).
    pub holds: Option<bool>,
    /// The numbers behind it, e.g. `failed 3/10, lowerBound 10.8% > 5%`.
    pub numbers: Vec<String>,
}

/// A metric's count in a ring, with its Wilson interval over the applied devices.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricNumber {
    /// Metric name.
    pub name: String,
    /// Its condition as written.
    pub condition: String,
    /// Count (rings 0..=this).
    pub count: u64,
    /// Applied devices it is a share of.
    pub of: u64,
    /// Wilson lower bound (95%).
    pub lower_bound: f64,
    /// Wilson upper bound (95%).
    pub upper_bound: f64,
}

/// The effective gate of a ring, as text.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GateView {
    /// `minApplied`.
    pub min_applied: u32,
    /// `bake`, e.g. `2m`.
    pub bake: String,
    /// `deadline`.
    pub deadline: String,
}

/// One ring on the rollout page.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RingView {
    /// Index.
    pub index: usize,
    /// Name.
    pub name: String,
    /// Its own target as written.
    pub target: String,
    /// What the configuration targets once widened to it.
    pub composed_target: String,
    /// Waits for an operator's promote.
    pub approval: bool,
    /// `done`, `current` or `pending`.
    pub place: &'static str,
    /// The current ring's state, for the current ring.
    pub state: Option<RingState>,
    /// The ring's record (times, counts, verdict).
    pub record: Option<RingRecord>,
    /// The gate.
    pub gate: GateView,
    /// Each metric against the applied count.
    pub numbers: Vec<MetricNumber>,
    /// The gate's conditions on the ring's last counts.
    pub checks: Vec<Check>,
    /// The counts over time, for the chart.
    pub series: Vec<Sample>,
}

/// One entry of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    /// When.
    pub time: Timestamp,
    /// What (`Create`, `Widen`, `Pass`, `Fail`, `Rollback`, an operator request, ...).
    pub decision: String,
    /// Revision.
    pub revision: Option<String>,
    /// Ring.
    pub ring: Option<String>,
    /// `applied/targeted` and the metrics at the time, as text.
    pub counts: String,
    /// Why.
    pub message: String,
}

/// An action the operator can take, with its confirmation text.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionView {
    /// `promote`, `pause`, `resume`, `abort`, `retry`.
    pub kind: &'static str,
    /// Whether it would do anything now.
    pub enabled: bool,
    /// What will happen, naming the revision and ring the operator sees.
    pub confirm: String,
}

/// A metric and the query that finds its devices.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricView {
    /// Name.
    pub name: String,
    /// Condition as written.
    pub condition: String,
    /// The hub query behind the count.
    pub query: String,
}

/// A kstatus condition.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    /// Type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// Last transition.
    pub since: Timestamp,
}

/// The rollout page.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPage {
    /// The overview line.
    pub summary: RolloutSummary,
    /// `spec.target`.
    pub target: String,
    /// `spec.hub`.
    pub hub: String,
    /// `spec.priority`.
    pub priority: i32,
    /// `spec.onFailure`.
    pub on_failure: String,
    /// The configuration id on the hub.
    pub configuration_id: Option<String>,
    /// The stable revision.
    pub stable_revision: Option<String>,
    /// A held (rolled back) revision.
    pub held_revision: Option<String>,
    /// The status message.
    pub message: Option<String>,
    /// Conditions.
    pub conditions: Vec<ConditionView>,
    /// Rings.
    pub rings: Vec<RingView>,
    /// Metrics and their queries.
    pub metrics: Vec<MetricView>,
    /// History, newest first.
    pub timeline: Vec<TimelineEntry>,
    /// Actions.
    pub actions: Vec<ActionView>,
}

/// `90s`, `2m`, `1h30m`: a short human duration.
pub fn human(d: SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 if s % 60 == 0 => format!("{}m", s / 60),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ if s % 3600 == 0 => format!("{}h", s / 3600),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{}%", p.round())
    } else {
        format!("{p:.1}%")
    }
}

fn phase_name(p: Option<Phase>) -> String {
    match p {
        Some(p) => format!("{p:?}"),
        None => "Pending".into(),
    }
}

fn since(
    t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    now: Timestamp,
) -> SignedDuration {
    now.duration_since(t.0)
}

/// What the rollout waits for, and whether that is a person (rank 1) or time (rank 2).
fn waiting(row: &RolloutRow, now: Timestamp) -> (String, u8) {
    let st = &row.status;
    if row.deleting {
        return ("deletion: its file is gone".into(), 2);
    }
    if let Some(p) = &st.paused {
        return (
            format!(
                "resume: paused by request {} {} ago",
                p.operation,
                human(since(&p.since, now))
            ),
            1,
        );
    }
    if row.rollout.spec.suspend {
        return ("spec.suspend to be lifted".into(), 1);
    }
    let Some(ring) = &st.ring else {
        return (
            st.message
                .clone()
                .unwrap_or_else(|| "the first reconcile".into()),
            2,
        );
    };
    let idx = ring.index as usize;
    let g = EffectiveGate::for_ring(&row.rollout.spec, idx);
    let record = st.rings.get(idx);
    let deadline_left = record
        .and_then(|r| r.started_at.as_ref())
        .map(|t| g.deadline - since(t, now));
    let deadline = match deadline_left {
        Some(left) if left.is_positive() => format!("; deadline in {}", human(left)),
        Some(_) => "; past its deadline".into(),
        None => String::new(),
    };
    match ring.state {
        RingState::AwaitingApproval => (
            format!("approval: promote to widen into ring {}", ring.name),
            1,
        ),
        RingState::WaitingForBaseline => (
            format!(
                "the baseline: ring {}'s devices must be covered by a lower-priority configuration first",
                ring.name
            ),
            1,
        ),
        RingState::Applying => (
            match (ring.applied, ring.targeted) {
                (Some(a), Some(t)) => format!(
                    "the hub to apply ring {}: {a} of {t} applied{deadline}",
                    ring.name
                ),
                _ => format!(
                    "the hub to apply ring {} (not counted yet){deadline}",
                    ring.name
                ),
            },
            2,
        ),
        RingState::Baking => {
            let left = ring
                .applied_at
                .as_ref()
                .map(|t| g.bake - since(t, now))
                .unwrap_or(g.bake);
            (
                format!("bake time: {} left in ring {}", human(left), ring.name),
                2,
            )
        }
        RingState::Analyzing => {
            let applied = ring.applied.unwrap_or(0);
            let why = if applied < u64::from(g.min_applied) {
                format!(
                    "a minimum sample: {applied} of {} applied, minApplied {}",
                    ring.targeted.unwrap_or(0),
                    g.min_applied
                )
            } else {
                "a verdict: neither gate condition holds yet".to_string()
            };
            (format!("{why} in ring {}{deadline}", ring.name), 2)
        }
        RingState::Passed => (
            st.message.clone().unwrap_or_else(|| "the next ring".into()),
            2,
        ),
        RingState::Failed => (
            format!(
                "an operator: ring {} failed its gate (promote to go on, abort to roll back)",
                ring.name
            ),
            1,
        ),
        RingState::RollingBack => ("the hub to confirm the rollback".into(), 2),
        RingState::RolledBack => ("new content, or retry".into(), 1),
    }
}

fn problem(row: &RolloutRow) -> Option<String> {
    if let Some(e) = &row.error {
        return Some(e.clone());
    }
    let st = &row.status;
    match st.phase {
        Some(Phase::Failed) | Some(Phase::RolledBack) => {
            return Some(st.message.clone().unwrap_or_else(|| phase_name(st.phase)));
        }
        _ => {}
    }
    condition(st, STALLED)
        .filter(|c| c.status == "True")
        .map(|c| format!("{}: {}", c.reason, c.message))
}

fn bars(row: &RolloutRow) -> Vec<RingBar> {
    let st = &row.status;
    let current = st.ring.as_ref().map(|r| r.index as usize);
    row.rollout
        .spec
        .rings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let rec = st.rings.get(i);
            let place = place(st, current, i);
            let mut targeted = rec.and_then(|x| x.targeted);
            let mut applied = rec.and_then(|x| x.applied);
            if place == "current"
                && let Some(ring) = &st.ring
            {
                targeted = ring.targeted.or(targeted);
                applied = ring.applied.or(applied);
            }
            RingBar {
                name: r.name.clone(),
                place,
                targeted,
                applied,
                metrics: rec
                    .map(|x| x.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect())
                    .unwrap_or_default(),
                verdict: rec.and_then(|x| x.verdict),
            }
        })
        .collect()
}

fn place(st: &DeviceRolloutStatus, current: Option<usize>, i: usize) -> &'static str {
    if st.phase == Some(Phase::Healthy) {
        return "done";
    }
    match current {
        Some(c) if i < c => "done",
        Some(c) if i == c => "current",
        _ => "pending",
    }
}

/// The overview line of one rollout.
pub fn summary(row: &RolloutRow, now: Timestamp) -> RolloutSummary {
    let st = &row.status;
    let problem = problem(row);
    let (waiting_for, waiting_rank) = match st.phase {
        Some(Phase::Healthy) => ("nothing: stable on every ring".to_string(), 3),
        _ => waiting(row, now),
    };
    RolloutSummary {
        namespace: row.namespace.clone(),
        name: row.name.clone(),
        phase: phase_name(st.phase),
        ring: st.ring.as_ref().map(|r| r.name.clone()),
        ring_state: st.ring.as_ref().map(|r| r.state),
        revision: st.revision.clone(),
        age_seconds: row.created.map(|c| now.duration_since(c).as_secs()),
        waiting_for,
        rank: if problem.is_some() { 0 } else { waiting_rank },
        problem,
        rings: bars(row),
    }
}

/// The overview: every rollout, problems first, then those waiting for a person, then
/// the moving ones, then the settled ones; by namespace and name within each.
pub fn overview(rows: &[RolloutRow], now: Timestamp) -> Overview {
    let mut rollouts: Vec<RolloutSummary> = rows.iter().map(|r| summary(r, now)).collect();
    rollouts.sort_by(|a, b| (a.rank, &a.namespace, &a.name).cmp(&(b.rank, &b.namespace, &b.name)));
    Overview { now, rollouts }
}

/// The numbers a condition speaks of: each `lowerBound(metrics.X, applied)` /
/// `upperBound(...)` with its value and, when a comparison with a number follows, the
/// threshold (e.g. `failed 3/10, lowerBound 10.8% > 5%`).
pub fn explain(expr: &str, inputs: &GateInputs) -> Vec<String> {
    let mut out = Vec::new();
    for func in ["lowerBound", "upperBound"] {
        let mut rest = expr;
        while let Some(at) = rest.find(&format!("{func}(")) {
            let after = &rest[at + func.len() + 1..];
            let Some(close) = after.find(')') else { break };
            let args: Vec<&str> = after[..close].split(',').map(str::trim).collect();
            rest = &after[close + 1..];
            if args.len() != 2 {
                continue;
            }
            let value = |a: &str| -> Option<(String, f64)> {
                match a {
                    "applied" => Some(("applied".into(), inputs.applied as f64)),
                    "targeted" => Some(("targeted".into(), inputs.targeted as f64)),
                    _ => {
                        let m = a.strip_prefix("metrics.")?;
                        Some((m.to_string(), *inputs.metrics.get(m).unwrap_or(&0) as f64))
                    }
                }
            };
            let (Some((name, s)), Some((_, n))) = (value(args[0]), value(args[1])) else {
                continue;
            };
            let bound = if func == "lowerBound" {
                wilson_lower(s, n)
            } else {
                wilson_upper(s, n)
            };
            let mut text = format!("{name} {s}/{n}, {func} {}", pct(bound));
            let tail = rest.trim_start();
            if let Some((op, shown)) = [(">=", "≥"), ("<=", "≤"), (">", ">"), ("<", "<")]
                .into_iter()
                .find(|(op, _)| tail.starts_with(op))
            {
                let num: String = tail[op.len()..]
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                if let Ok(t) = num.parse::<f64>() {
                    text.push_str(&format!(" {shown} {}", pct(t)));
                }
            }
            out.push(text);
        }
    }
    out
}

fn inputs_of(row: &RolloutRow, idx: usize) -> Option<GateInputs> {
    let st = &row.status;
    let rec = st.rings.get(idx)?;
    let current = st.ring.as_ref().filter(|r| r.index as usize == idx);
    let targeted = current.and_then(|r| r.targeted).or(rec.targeted)?;
    let applied = current.and_then(|r| r.applied).or(rec.applied)?;
    let mut metrics = rec.metrics.clone();
    for m in row.rollout.spec.metrics.keys() {
        metrics.entry(m.clone()).or_insert(0);
    }
    Some(GateInputs {
        targeted,
        applied,
        metrics,
    })
}

fn ring_view(row: &RolloutRow, plan: &Plan, idx: usize, samples: &[Sample]) -> RingView {
    let spec = &row.rollout.spec;
    let st = &row.status;
    let r = &spec.rings[idx];
    let g = EffectiveGate::for_ring(spec, idx);
    let current = st.ring.as_ref().map(|r| r.index as usize);
    let inputs = inputs_of(row, idx);
    let numbers = inputs
        .as_ref()
        .map(|inp| {
            spec.metrics
                .iter()
                .map(|(name, cond)| {
                    let c = *inp.metrics.get(name).unwrap_or(&0);
                    MetricNumber {
                        name: name.clone(),
                        condition: cond.clone(),
                        count: c,
                        of: inp.applied,
                        lower_bound: wilson_lower(c as f64, inp.applied as f64),
                        upper_bound: wilson_upper(c as f64, inp.applied as f64),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let checks = [("failure", &g.failure), ("success", &g.success)]
        .into_iter()
        .filter_map(|(kind, e)| e.as_ref().map(|e| (kind, e)))
        .map(|(kind, e)| Check {
            kind,
            expression: e.clone(),
            holds: inputs.as_ref().and_then(|i| gate::run(e, i).ok()),
            numbers: inputs.as_ref().map(|i| explain(e, i)).unwrap_or_default(),
        })
        .collect();
    RingView {
        index: idx,
        name: r.name.clone(),
        target: r.target.clone(),
        composed_target: plan.target(idx).text().to_string(),
        approval: r.approval,
        place: place(st, current, idx),
        state: st
            .ring
            .as_ref()
            .filter(|x| x.index as usize == idx)
            .map(|x| x.state),
        record: st.rings.get(idx).cloned(),
        gate: GateView {
            min_applied: g.min_applied,
            bake: human(g.bake),
            deadline: human(g.deadline),
        },
        numbers,
        checks,
        series: series(row, &r.name, samples),
    }
}

fn counts_text(
    targeted: Option<u64>,
    applied: Option<u64>,
    metrics: &std::collections::BTreeMap<String, u64>,
) -> String {
    let mut parts = Vec::new();
    if let (Some(a), Some(t)) = (applied, targeted) {
        parts.push(format!("applied {a}/{t}"));
    }
    for (k, v) in metrics {
        parts.push(format!("{k} {v}"));
    }
    parts.join(", ")
}

/// The actions and their confirmations, aimed at the revision and ring shown.
pub fn actions(row: &RolloutRow) -> Vec<ActionView> {
    let st = &row.status;
    let id = format!("{}/{}", row.namespace, row.name);
    let rev = st.revision.as_deref().unwrap_or("(none yet)");
    let ring = st
        .ring
        .as_ref()
        .map(|r| r.name.as_str())
        .unwrap_or("(none)");
    let state = st.ring.as_ref().map(|r| r.state);
    let rolled_back = st.phase == Some(Phase::RolledBack) || st.held_revision.is_some();
    let settled = matches!(st.phase, Some(Phase::Healthy)) || rolled_back;
    let kinds = [
        OperationKind::Promote,
        OperationKind::Pause,
        OperationKind::Resume,
        OperationKind::Abort,
        OperationKind::Retry,
    ];
    kinds
        .into_iter()
        .map(|k| {
            let (enabled, what) = match k {
                OperationKind::Promote => (
                    !settled && st.ring.is_some(),
                    match state {
                        Some(RingState::AwaitingApproval) => {
                            format!("approve widening {id} into ring {ring}")
                        }
                        _ => format!("pass ring {ring} of {id} now, without waiting for its gate"),
                    },
                ),
                OperationKind::Pause => (
                    st.paused.is_none() && !settled,
                    format!("hold {id} at ring {ring}: no widening until resumed (rollbacks still happen)"),
                ),
                OperationKind::Resume => (
                    st.paused.is_some(),
                    format!("lift the pause of {id} at ring {ring}"),
                ),
                OperationKind::Abort => (
                    !settled,
                    format!("roll {id} back now: narrow its configuration to no device, so the stable revision or the baseline takes the devices back"),
                ),
                OperationKind::Retry => (
                    rolled_back || state == Some(RingState::Failed),
                    format!("start {id} again from ring 0, or re-judge its failed ring"),
                ),
            };
            ActionView {
                kind: k.name(),
                enabled,
                confirm: format!("{}: {what}. Aimed at revision {rev}, ring {ring}: if either has changed when the controller reads it, the request is ignored.", capitalize(k.name())),
            }
        })
        .collect()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// The rollout page; `samples` are the console's samples of this rollout, oldest first.
pub fn rollout_page(row: &RolloutRow, now: Timestamp, samples: &[Sample]) -> RolloutPage {
    let spec = &row.rollout.spec;
    let st = &row.status;
    let plan = Plan::new(&row.rollout);
    let config_id = st
        .configuration_id
        .clone()
        .unwrap_or_else(|| plan.id.clone());
    RolloutPage {
        summary: summary(row, now),
        target: spec.target.clone(),
        hub: spec.hub.clone().unwrap_or_else(|| "default".into()),
        priority: spec.priority,
        on_failure: format!("{:?}", spec.on_failure),
        configuration_id: st.configuration_id.clone(),
        stable_revision: st.stable_revision.clone(),
        held_revision: st.held_revision.clone(),
        message: st.message.clone(),
        conditions: st
            .conditions
            .iter()
            .map(|c| ConditionView {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                since: c.last_transition_time.0,
            })
            .collect(),
        rings: if plan.ring_count() == 0 {
            Vec::new()
        } else {
            (0..spec.rings.len())
                .map(|i| ring_view(row, &plan, i, samples))
                .collect()
        },
        metrics: spec
            .metrics
            .iter()
            .map(|(name, cond)| MetricView {
                name: name.clone(),
                condition: cond.clone(),
                query: metric_query(&config_id, cond),
            })
            .collect(),
        timeline: st
            .history
            .iter()
            .rev()
            .map(|h| TimelineEntry {
                time: h.time.0,
                decision: h.decision.clone(),
                revision: h.revision.clone(),
                ring: h.ring.clone(),
                counts: counts_text(h.targeted, h.applied, &h.metrics),
                message: h.message.clone(),
            })
            .collect(),
        actions: actions(row),
    }
}

/// The `metric` parameter that lists the devices the configuration targets where it is
/// not applied (offline, still applying, or shadowed by a higher-priority configuration).
pub const NOT_APPLIED: &str = "notApplied";

/// The query for the devices configuration `config_id` targets but is not applied to.
pub fn not_applied_query(config_id: &str) -> String {
    format!("SELECT * FROM devices WHERE configurations.[[{config_id}]].status = 'Targeted'")
}

/// The tags the fleet composition groups by.
pub const COMPOSITION_TAGS: [&str; 3] = ["ring", "model", "region"];

/// `SELECT tags.<tag> AS value, COUNT() AS n FROM devices [WHERE (target)] GROUP BY tags.<tag>`.
pub fn group_query(target: &str, tag: &str) -> String {
    match crate::core::plan::Cond::parse(target) {
        crate::core::plan::Cond::All => {
            format!("SELECT tags.{tag} AS value, COUNT() AS n FROM devices GROUP BY tags.{tag}")
        }
        crate::core::plan::Cond::Expr(t) => format!(
            "SELECT tags.{tag} AS value, COUNT() AS n FROM devices WHERE ({t}) GROUP BY tags.{tag}"
        ),
    }
}

/// The count of devices of `target` that none of the configurations `ids` targets.
pub fn uncovered_query(target: &str, ids: &[String]) -> String {
    use crate::core::plan::{Cond, any_configuration};
    let base = Cond::parse(target);
    let cond = match any_configuration(ids) {
        Some(any) => base.and_not(&any),
        None => Some(base),
    };
    match cond {
        Some(Cond::Expr(c)) => format!("SELECT COUNT() AS n FROM devices WHERE {c}"),
        _ => "SELECT COUNT() AS n FROM devices".to_string(),
    }
}

/// The query for the devices behind a metric: their twins (the reported section shows
/// why), scoped to where configuration `config_id` is applied.
pub fn devices_query(config_id: &str, condition: &str) -> String {
    metric_query(config_id, condition).replacen("SELECT deviceId FROM", "SELECT * FROM", 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{HistoryEntry, RingStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn rollout() -> DeviceRollout {
        let yaml = r#"
apiVersion: ringmaster.dev/v1alpha1
kind: DeviceRollout
metadata: {name: fw, namespace: fleet}
spec:
  target: "tags.model='5000x'"
  content: {device: {properties.desired.firmware: {version: "2"}}}
  metrics:
    current: "properties.reported.firmware.status='Current'"
    failed: "properties.reported.firmware.status='Error'"
  gate:
    minApplied: 5
    bake: 2m
    success: "lowerBound(metrics.current, applied) >= 0.90"
    failure: "lowerBound(metrics.failed, applied) > 0.05"
  rings:
    - {name: canary, target: "tags.ring='canary'"}
    - {name: early, target: "tags.ring='early'", approval: true}
    - {name: broad, target: "*"}
"#;
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn row(status: DeviceRolloutStatus) -> RolloutRow {
        RolloutRow {
            namespace: "fleet".into(),
            name: "fw".into(),
            rollout: rollout(),
            status,
            error: None,
            created: Some(t("2026-01-01T00:00:00Z")),
            deleting: false,
        }
    }

    fn failed_canary() -> DeviceRolloutStatus {
        let at = Time(t("2026-01-01T00:01:00Z"));
        DeviceRolloutStatus {
            phase: Some(Phase::RolledBack),
            revision: Some("abcd1234".into()),
            held_revision: Some("abcd1234".into()),
            message: Some("ring canary failed: failure condition holds".into()),
            ring: Some(RingStatus {
                index: 0,
                name: "canary".into(),
                state: RingState::RolledBack,
                since: at.clone(),
                applied_at: Some(at.clone()),
                targeted: Some(10),
                applied: Some(10),
                shielded: None,
            }),
            rings: vec![RingRecord {
                name: "canary".into(),
                started_at: Some(at.clone()),
                targeted: Some(10),
                applied: Some(10),
                metrics: [("current".to_string(), 7), ("failed".to_string(), 3)].into(),
                verdict: Some(Verdict::Fail),
                ..Default::default()
            }],
            history: vec![
                HistoryEntry {
                    time: at.clone(),
                    decision: "Create".into(),
                    revision: Some("abcd1234".into()),
                    ring: Some("canary".into()),
                    targeted: None,
                    applied: None,
                    metrics: Default::default(),
                    message: "created".into(),
                },
                HistoryEntry {
                    time: Time(t("2026-01-01T00:05:00Z")),
                    decision: "Fail".into(),
                    revision: Some("abcd1234".into()),
                    ring: Some("canary".into()),
                    targeted: Some(10),
                    applied: Some(10),
                    metrics: [("failed".to_string(), 3)].into(),
                    message: "failure condition holds".into(),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_failed_gate_shows_its_numbers_bound_and_threshold() {
        let sample = Sample::of(&row(failed_canary()), t("2026-01-01T00:04:00Z")).unwrap();
        let page = rollout_page(
            &row(failed_canary()),
            t("2026-01-01T00:10:00Z"),
            std::slice::from_ref(&sample),
        );
        let canary = &page.rings[0];
        assert_eq!(canary.place, "current");
        let failure = canary.checks.iter().find(|c| c.kind == "failure").unwrap();
        assert_eq!(failure.holds, Some(true));
        // 3 of 10: Wilson lower bound 10.8%.
        assert_eq!(failure.numbers, vec!["failed 3/10, lowerBound 10.8% > 5%"]);
        let success = canary.checks.iter().find(|c| c.kind == "success").unwrap();
        assert_eq!(success.holds, Some(false));
        assert_eq!(
            success.numbers,
            vec!["current 7/10, lowerBound 39.7% ≥ 90%"]
        );
        let failed = canary.numbers.iter().find(|m| m.name == "failed").unwrap();
        assert_eq!((failed.count, failed.of), (3, 10));
        assert_eq!(
            canary.composed_target,
            "(tags.model='5000x') AND (tags.ring='canary')"
        );
        assert_eq!(
            page.rings[1].composed_target,
            "(tags.model='5000x') AND ((tags.ring='canary') OR (tags.ring='early'))"
        );
        assert_eq!(page.rings[2].composed_target, "tags.model='5000x'");
        // The chart: the sample, then the Fail entry (Create had no counts).
        let times: Vec<_> = canary.series.iter().map(|s| s.t).collect();
        assert_eq!(
            times,
            [t("2026-01-01T00:04:00Z"), t("2026-01-01T00:05:00Z")]
        );
        assert_eq!(canary.series[0].metrics["failed"], 3);
        assert!(page.rings[1].series.is_empty());
        // Newest first.
        assert_eq!(page.timeline[0].decision, "Fail");
        assert_eq!(page.timeline[0].counts, "applied 10/10, failed 3");
        // The query behind the count is scoped to where the configuration is applied.
        let failed = page.metrics.iter().find(|m| m.name == "failed").unwrap();
        assert!(
            failed
                .query
                .starts_with("SELECT deviceId FROM devices WHERE configurations.[[")
        );
        assert!(
            failed
                .query
                .ends_with("AND (properties.reported.firmware.status='Error')")
        );
        let retry = page.actions.iter().find(|a| a.kind == "retry").unwrap();
        assert!(retry.enabled);
        assert!(retry.confirm.contains("revision abcd1234, ring canary"));
        assert!(
            !page
                .actions
                .iter()
                .find(|a| a.kind == "pause")
                .unwrap()
                .enabled
        );
    }

    #[test]
    fn problems_come_first_then_people_then_time_then_settled() {
        let now = t("2026-01-01T00:10:00Z");
        let mut healthy = row(DeviceRolloutStatus {
            phase: Some(Phase::Healthy),
            ..Default::default()
        });
        healthy.name = "a-healthy".into();
        let mut waiting = row(DeviceRolloutStatus {
            phase: Some(Phase::Paused),
            revision: Some("r1".into()),
            ring: Some(RingStatus {
                index: 1,
                name: "early".into(),
                state: RingState::AwaitingApproval,
                since: Time(now),
                applied_at: None,
                targeted: None,
                applied: None,
                shielded: None,
            }),
            ..Default::default()
        });
        waiting.name = "b-approval".into();
        let mut baking = row(DeviceRolloutStatus {
            phase: Some(Phase::Progressing),
            ring: Some(RingStatus {
                index: 0,
                name: "canary".into(),
                state: RingState::Baking,
                since: Time(t("2026-01-01T00:09:30Z")),
                applied_at: Some(Time(t("2026-01-01T00:09:30Z"))),
                targeted: Some(5),
                applied: Some(5),
                shielded: None,
            }),
            ..Default::default()
        });
        baking.name = "c-baking".into();
        let mut failed = row(failed_canary());
        failed.name = "d-failed".into();
        let o = overview(&[healthy, waiting, baking, failed], now);
        let names: Vec<_> = o.rollouts.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["d-failed", "b-approval", "c-baking", "a-healthy"]);
        assert_eq!(
            o.rollouts[1].waiting_for,
            "approval: promote to widen into ring early"
        );
        assert_eq!(
            o.rollouts[2].waiting_for,
            "bake time: 1m30s left in ring canary"
        );
        assert_eq!(o.rollouts[2].rings[0].place, "current");
        assert_eq!(o.rollouts[2].rings[0].applied, Some(5));
        assert_eq!(
            o.rollouts[3]
                .rings
                .iter()
                .filter(|r| r.place == "done")
                .count(),
            3
        );
        assert_eq!(o.rollouts[0].age_seconds, Some(600));
        assert!(o.rollouts[0].problem.is_some());
    }

    #[test]
    fn a_small_sample_says_so() {
        let now = t("2026-01-01T00:10:00Z");
        let mut st = failed_canary();
        st.phase = Some(Phase::Progressing);
        st.held_revision = None;
        let ring = st.ring.as_mut().unwrap();
        ring.state = RingState::Analyzing;
        ring.applied = Some(3);
        let s = summary(&row(st), now);
        assert_eq!(
            s.waiting_for,
            "a minimum sample: 3 of 10 applied, minApplied 5 in ring canary; deadline in 23h51m"
        );
    }

    #[test]
    fn the_devices_query_reads_whole_twins() {
        assert_eq!(
            devices_query("c1", "properties.reported.firmware.status='Error'"),
            "SELECT * FROM devices WHERE configurations.[[c1]].status='Applied' AND (properties.reported.firmware.status='Error')"
        );
    }

    #[test]
    fn a_long_series_is_thinned_keeping_the_last_point() {
        let s = |i: i64| Sample {
            t: Timestamp::from_second(i).unwrap(),
            revision: None,
            ring: "r".into(),
            targeted: Some(i as u64),
            applied: None,
            metrics: Default::default(),
        };
        let v: Vec<Sample> = (0..1000).map(s).collect();
        let out = thin(v, MAX_CHART_POINTS);
        assert!(out.len() <= MAX_CHART_POINTS + 1, "{}", out.len());
        assert_eq!(out.last().unwrap().targeted, Some(999));
        assert_eq!(out[0].targeted, Some(0));
    }

    #[test]
    fn composition_queries_group_within_the_target() {
        assert_eq!(
            group_query("tags.model='5000x'", "ring"),
            "SELECT tags.ring AS value, COUNT() AS n FROM devices WHERE (tags.model='5000x') GROUP BY tags.ring"
        );
        assert_eq!(
            group_query("*", "region"),
            "SELECT tags.region AS value, COUNT() AS n FROM devices GROUP BY tags.region"
        );
        assert_eq!(
            uncovered_query("tags.model='5000x'", &["a".into(), "b".into()]),
            "SELECT COUNT() AS n FROM devices WHERE (tags.model='5000x') AND NOT (IS_DEFINED(configurations.[[a]]) OR IS_DEFINED(configurations.[[b]]))"
        );
        assert_eq!(
            uncovered_query("*", &[]),
            "SELECT COUNT() AS n FROM devices"
        );
        assert_eq!(
            not_applied_query("c1"),
            "SELECT * FROM devices WHERE configurations.[[c1]].status = 'Targeted'"
        );
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(human(SignedDuration::from_secs(90)), "1m30s");
        assert_eq!(human(SignedDuration::from_secs(120)), "2m");
        assert_eq!(human(SignedDuration::from_secs(5400)), "1h30m");
        assert_eq!(human(SignedDuration::from_secs(-5)), "0s");
    }
}
