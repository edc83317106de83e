//! Tests of the decision core against a small model of the hub's bookkeeping.
//!
//! The model does not parse queries: a configuration's reach follows its labels (which
//! the core writes together with the target, so they agree), rings have fixed sizes, and
//! a revision has a failure rate. The hub's metrics move only on `refresh()`, like a hub
//! that recomputes them on a cycle.

use super::*;
use crate::core::plan::NO_DEVICE_TARGET;
use crate::core::revision::label;
use crate::resources::BaselinePolicy;
use proptest::prelude::*;

fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn mins(m: i64) -> SignedDuration {
    SignedDuration::from_mins(m)
}

use crate::core::fixtures::rollout;

fn set_version(ro: &mut DeviceRollout, v: &str) {
    ro.spec.content.device.insert(
        "properties.desired.firmware".into(),
        serde_json::json!({"version": v}),
    );
    ro.metadata.generation = Some(ro.metadata.generation.unwrap_or(0) + 1);
}

/// A baseline configuration of another owner, lower priority, same path.
fn baseline_config() -> Configuration {
    Configuration {
        id: "baseline".into(),
        priority: 1,
        target_condition: "*".into(),
        created_time_utc: Some(t0() - mins(60 * 24)),
        content: crate::iothub::configuration::ConfigurationContent {
            device_content: Some(serde_json::Map::from_iter([(
                "properties.desired.firmware".to_string(),
                serde_json::json!({"version": "1.0"}),
            )])),
            ..Default::default()
        },
        ..Default::default()
    }
}

struct Sim {
    ro: DeviceRollout,
    status: DeviceRolloutStatus,
    configs: Vec<Configuration>,
    now: Timestamp,
    ring_sizes: Vec<u64>,
    /// Failure rate by content version.
    fail_rate: BTreeMap<String, f64>,
    /// Answer for baseline guard counts.
    uncovered: u64,
    /// Answer for the cleanup count.
    cleanup_uncovered: u64,
    /// Answer for the rollback count.
    rollback_uncovered: u64,
    /// Devices of ring 0 that a higher-priority `hotfix` configuration holds (while it exists).
    shielded: u64,
    ops: Vec<Operation>,
    deletion: Option<Deletion>,
    budget: Budget,
    max_configurations: usize,
    etag: u64,
    log: Vec<Decision>,
}

impl Sim {
    fn new(ro: DeviceRollout) -> Sim {
        Sim {
            ro,
            status: DeviceRolloutStatus::default(),
            configs: vec![baseline_config()],
            now: t0(),
            ring_sizes: vec![10, 100, 1000],
            fail_rate: BTreeMap::new(),
            uncovered: 0,
            cleanup_uncovered: 0,
            rollback_uncovered: 0,
            shielded: 0,
            ops: Vec::new(),
            deletion: None,
            budget: Budget::default(),
            max_configurations: 100,
            etag: 0,
            log: Vec::new(),
        }
    }

    fn version_of(c: &Configuration) -> String {
        c.content
            .device_content
            .as_ref()
            .and_then(|m| m.get("properties.desired.firmware"))
            .and_then(|v| v.get("version"))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    }

    fn reach(&self, c: &Configuration) -> u64 {
        let Some(l) = ConfigLabels::read(c) else {
            return self.ring_sizes.iter().sum();
        };
        match l.state {
            ConfigState::Held => 0,
            ConfigState::Stable => self.ring_sizes.iter().sum(),
            ConfigState::Rolling => self.ring_sizes[..=l.ring.min(self.ring_sizes.len() - 1)]
                .iter()
                .sum(),
        }
    }

    /// Recomputes every configuration's metrics, as the hub does on its cycle.
    fn refresh(&mut self) {
        let ours: Vec<(usize, u64, Option<Timestamp>)> = self
            .configs
            .iter()
            .enumerate()
            .filter(|(_, c)| ConfigLabels::read(c).is_some())
            .map(|(i, c)| (i, self.reach(c), c.created_time_utc))
            .collect();
        let shielded = if self.configs.iter().any(|c| c.id == "hotfix") {
            self.shielded
        } else {
            0
        };
        let results: Vec<(usize, u64, u64)> = ours
            .iter()
            .map(|&(i, reach, created)| {
                // Newer configurations of the rollout outrank older ones where they reach.
                let outranked: u64 = ours
                    .iter()
                    .filter(|o| o.2 > created)
                    .map(|o| o.1)
                    .max()
                    .unwrap_or(0);
                (
                    i,
                    reach,
                    reach
                        .saturating_sub(outranked)
                        .saturating_sub(shielded.min(reach)),
                )
            })
            .collect();
        for (i, targeted, applied) in results {
            let rate = self
                .fail_rate
                .get(&Self::version_of(&self.configs[i]))
                .copied()
                .unwrap_or(0.0);
            let failed = (applied as f64 * rate).round() as i64;
            let c = &mut self.configs[i];
            c.system_metrics.results = BTreeMap::from([
                ("targetedCount".into(), targeted as i64),
                ("appliedCount".into(), applied as i64),
            ]);
            c.metrics.results = BTreeMap::from([
                ("failed".into(), failed),
                ("current".into(), applied as i64 - failed),
            ]);
        }
    }

    fn count(&self, req: &CountRequest) -> u64 {
        if let Some(rest) = req.key.strip_prefix("targeted:") {
            let ring: usize = rest.rsplit(':').next().unwrap().parse().unwrap();
            self.ring_sizes[..=ring].iter().sum()
        } else if req.key.starts_with("baseline:") {
            self.uncovered
        } else if req.key == "cleanup" {
            self.cleanup_uncovered
        } else if req.key.starts_with("rollback:") {
            self.rollback_uncovered
        } else if req.key.starts_with("shielded:") {
            self.shielded
        } else {
            panic!("unexpected count {req:?}")
        }
    }

    fn observation(&self) -> Observation {
        Observation {
            configurations: std::sync::Arc::new(self.configs.clone()),
            counts: BTreeMap::new(),
            budget: self.budget,
            operations: self.ops.clone(),
            deletion: self.deletion,
            max_configurations: self.max_configurations,
        }
    }

    /// Every count one reconcile would ask for, round after round.
    fn counts_asked(&self) -> Vec<CountRequest> {
        let mut obs = self.observation();
        let mut asked = Vec::new();
        for _ in 0..4 {
            let d = decide(&self.ro, &self.status, &obs, self.now);
            for req in d.counts_needed {
                obs.counts.insert(req.key.clone(), self.count(&req));
                asked.push(req);
            }
        }
        asked
    }

    /// One reconcile: decide (running the counts it asks for), then perform the actions.
    fn step(&mut self) -> Decision {
        let mut obs = self.observation();
        let mut d = decide(&self.ro, &self.status, &obs, self.now);
        for _ in 0..4 {
            if d.counts_needed.is_empty() {
                break;
            }
            assert!(d.actions.is_empty(), "no writes while counts are pending");
            assert!(
                d.counts_needed.len() as u32 <= obs.budget.queries,
                "asked for more counts than the budget"
            );
            for req in &d.counts_needed {
                obs.counts.insert(req.key.clone(), self.count(req));
            }
            obs.budget.queries -= d.counts_needed.len() as u32;
            d = decide(&self.ro, &self.status, &obs, self.now);
        }
        assert!(
            d.requeue_after >= MIN_REQUEUE,
            "requeue {:?} spins",
            d.requeue_after
        );
        assert!(
            d.actions.len() as u32 <= self.budget.writes,
            "more writes than the budget"
        );
        for a in &d.actions {
            self.apply(a);
        }
        self.status = d.status.clone();
        self.log.push(d.clone());
        d
    }

    fn apply(&mut self, a: &Action) {
        self.etag += 1;
        match a {
            Action::Create(c) => {
                assert!(
                    !self.configs.iter().any(|x| x.id == c.id),
                    "create of an existing id {}",
                    c.id
                );
                let mut c = c.clone();
                c.created_time_utc = Some(self.now);
                c.last_updated_time_utc = Some(self.now);
                c.etag = Some(self.etag.to_string());
                self.configs.push(c);
            }
            Action::Update { config, .. } => {
                let now = self.now;
                let etag = self.etag.to_string();
                let c = self
                    .configs
                    .iter_mut()
                    .find(|x| x.id == config.id)
                    .expect("update of a missing configuration");
                assert_eq!(c.content, config.content, "content is immutable");
                c.labels = config.labels.clone();
                c.target_condition = config.target_condition.clone();
                c.priority = config.priority;
                c.metrics.queries = config.metrics.queries.clone();
                c.last_updated_time_utc = Some(now);
                c.etag = Some(etag);
            }
            Action::Delete { id } => self.configs.retain(|c| c.id != *id),
        }
    }

    fn advance(&mut self, d: SignedDuration) {
        self.now = self.now.checked_add(d).unwrap();
    }

    fn ours(&self) -> Vec<(ConfigLabels, &Configuration)> {
        self.configs
            .iter()
            .filter_map(|c| ConfigLabels::read(c).map(|l| (l, c)))
            .collect()
    }

    fn ring_state(&self) -> (usize, RingState) {
        let r = self.status.ring.as_ref().expect("a ring");
        (r.index as usize, r.state)
    }

    fn phase(&self) -> Phase {
        self.status.phase.unwrap_or(Phase::Pending)
    }

    fn op(&mut self, id: &str, kind: OperationKind) {
        self.ops.push(Operation::new(id, kind));
    }

    /// Steps, refreshing and moving time, until the predicate holds (at most `n` steps).
    fn run_until(&mut self, n: usize, pred: impl Fn(&Sim) -> bool) {
        for _ in 0..n {
            if pred(self) {
                return;
            }
            let d = self.step();
            self.refresh();
            self.advance(d.requeue_after);
        }
        assert!(pred(self), "not reached; status: {:#?}", self.status);
    }
}

fn decisions(s: &Sim) -> Vec<String> {
    s.status
        .history
        .iter()
        .map(|h| h.decision.clone())
        .collect()
}

#[test]
fn a_good_revision_goes_through_every_ring_and_becomes_stable() {
    let mut s = Sim::new(rollout());
    let d = s.step();
    assert_eq!(d.actions.len(), 1);
    let Action::Create(c) = &d.actions[0] else {
        panic!("create first: {:?}", d.actions)
    };
    assert_eq!(
        c.target_condition,
        "(tags.environment='prod') AND (tags.ring='canary')"
    );
    assert_eq!(c.priority, 20);
    assert_eq!(c.labels[label::RING], "0");
    assert_eq!(s.ring_state(), (0, RingState::Applying));
    assert_eq!(s.phase(), Phase::Progressing);
    assert_eq!(d.requeue_after, AFTER_WRITE);

    // The hub has not recomputed its metrics: still applying.
    s.advance(mins(1));
    s.step();
    assert_eq!(s.ring_state(), (0, RingState::Applying));
    s.refresh();
    let d = s.step();
    assert_eq!(s.ring_state(), (0, RingState::Baking));
    assert_eq!(d.requeue_after, BAKE_POLL);
    s.advance(mins(9));
    s.step();
    assert_eq!(
        s.ring_state(),
        (0, RingState::Baking),
        "no verdict before the bake time"
    );
    s.advance(mins(1));
    let d = s.step();
    // Passed and widened in one decision.
    assert_eq!(s.status.rings[0].verdict, Some(Verdict::Pass));
    let Action::Update { config, .. } = &d.actions[0] else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(config.labels[label::RING], "1");
    assert_eq!(
        config.target_condition,
        "(tags.environment='prod') AND ((tags.ring='canary') OR (tags.ring='early'))"
    );
    assert_eq!(s.ring_state(), (1, RingState::Applying));

    s.run_until(40, |s| s.phase() == Phase::Healthy);
    let ours = s.ours();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].0.state, ConfigState::Stable);
    assert_eq!(ours[0].1.target_condition, "tags.environment='prod'");
    assert_eq!(s.status.stable_revision, s.status.revision);
    assert_eq!(status::condition(&s.status, READY).unwrap().status, "True");
    assert_eq!(
        status::condition(&s.status, RECONCILING).unwrap().status,
        "False"
    );
    assert_eq!(
        decisions(&s),
        [
            "Create", "Applied", "Pass", "Widen", "Applied", "Pass", "Widen", "Applied", "Pass",
            "Complete"
        ]
    );
    let last = s.status.history.last().unwrap();
    assert_eq!(last.targeted, Some(1110));
    // Healthy and idle: nothing more to write.
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(d.requeue_after, IDLE_POLL);
}

#[test]
fn a_faulty_revision_is_rolled_back_before_it_leaves_the_canary_ring() {
    let mut s = Sim::new(rollout());
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    let stable = s.status.revision.clone().unwrap();

    set_version(&mut s.ro, "2.5.0");
    s.fail_rate.insert("2.5.0".into(), 0.3);
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Create(c)] if c.priority == 20 && c.labels[label::RING] == "0")
    );
    assert_eq!(s.ours().len(), 2, "the stable revision stays underneath");
    s.refresh();
    s.step();
    s.advance(mins(10));
    let d = s.step();
    assert_eq!(s.status.rings[0].verdict, Some(Verdict::Fail));
    let [Action::Update { config, .. }] = &d.actions[..] else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(config.target_condition, NO_DEVICE_TARGET);
    assert_eq!(config.labels[label::STATE], "held");
    assert_eq!(s.ring_state(), (0, RingState::RollingBack));
    assert_eq!(s.status.held_revision, s.status.revision);
    assert_ne!(s.phase(), Phase::RolledBack, "not before the hub confirms");

    s.refresh();
    s.step();
    assert_eq!(s.ring_state(), (0, RingState::RolledBack));
    assert_eq!(s.phase(), Phase::RolledBack);
    assert_eq!(s.status.stable_revision.as_deref(), Some(stable.as_str()));
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().status,
        "True"
    );
    assert!(
        decisions(&s).ends_with(&["Fail".into(), "Rollback".into(), "RolledBack".into()]),
        "{:?}",
        decisions(&s)
    );
    // Held until new content arrives: nothing changes.
    s.advance(mins(60));
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(s.phase(), Phase::RolledBack);

    // New content: the held configuration goes, a new one starts at ring 0.
    set_version(&mut s.ro, "2.5.1");
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Delete { .. }, Action::Create(_)]),
        "{:?}",
        d.actions
    );
    assert_eq!(s.status.held_revision, None);
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    assert_eq!(
        s.ours().len(),
        1,
        "the previous stable revision is deleted on completion"
    );
}

#[test]
fn retry_restarts_a_rolled_back_revision_at_ring_zero() {
    let mut s = Sim::new(rollout());
    s.fail_rate.insert("2.4.0".into(), 0.5);
    s.run_until(20, |s| s.phase() == Phase::RolledBack);
    s.fail_rate.clear();
    s.op("retry-1", OperationKind::Retry);
    let d = s.step();
    let [Action::Update { config, .. }] = &d.actions[..] else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(config.labels[label::STATE], "rolling");
    assert_eq!(config.labels[label::RING], "0");
    assert_eq!(s.status.held_revision, None);
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    assert_eq!(s.status.handled_operations, ["retry-1"]);
}

#[test]
fn on_failure_pause_holds_the_ring_for_a_human() {
    let mut ro = rollout();
    ro.spec.on_failure = OnFailure::Pause;
    let mut s = Sim::new(ro);
    s.fail_rate.insert("2.4.0".into(), 0.5);
    s.run_until(20, |s| s.phase() == Phase::Failed);
    assert_eq!(s.ring_state(), (0, RingState::Failed));
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().reason,
        "GateFailed"
    );
    let d = s.step();
    assert!(d.actions.is_empty(), "held, not rolled back");
    // Promote moves on despite the failure, recorded as a Pass by the operator.
    s.op("p1", OperationKind::Promote);
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Update { config, .. }] if config.labels[label::RING] == "1"),
        "{:?}",
        d.actions
    );
    assert!(
        s.status.rings[0]
            .message
            .as_deref()
            .unwrap()
            .contains("promoted by operator")
    );
    // The op is applied once: the next ring is judged normally, fails, holds again.
    s.run_until(20, |s| s.phase() == Phase::Failed);
    assert_eq!(s.ring_state(), (1, RingState::Failed));
    s.op("a1", OperationKind::Abort);
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Update { config, .. }] if config.target_condition == NO_DEVICE_TARGET)
    );
    s.refresh();
    s.step();
    assert_eq!(s.phase(), Phase::RolledBack);
}

#[test]
fn no_verdict_by_the_deadline_stalls_then_applies_on_failure() {
    let mut ro = rollout();
    // A success condition the numbers never reach, and no failure.
    ro.spec.gate.success = Some("applied > 1000000.0".into());
    ro.spec.gate.failure = None;
    let mut s = Sim::new(ro);
    s.run_until(200, |s| s.status.held_revision.is_some());
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().reason,
        "DeadlineExceeded"
    );
    assert_eq!(s.status.rings[0].verdict, Some(Verdict::Inconclusive));
    assert!(decisions(&s).contains(&"Deadline".to_string()));
    let started = s.status.rings[0].started_at.clone().unwrap().0;
    assert!(s.now.duration_since(started) >= mins(120));
}

#[test]
fn approval_rings_wait_for_promote() {
    let mut ro = rollout();
    ro.spec.rings[1].approval = true;
    let mut s = Sim::new(ro);
    s.run_until(20, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.state == RingState::AwaitingApproval)
    });
    assert_eq!(s.ring_state(), (1, RingState::AwaitingApproval));
    assert_eq!(s.phase(), Phase::Paused);
    s.advance(mins(600));
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(d.requeue_after, HUMAN_POLL);
    // A promote aimed at another ring is ignored (and recorded).
    let mut stale = Operation::new("old", OperationKind::Promote);
    stale.ring = Some("canary".into());
    s.ops.push(stale);
    let d = s.step();
    // Recorded on the hub too (so that it stays ignored after a restart), and nothing else.
    let [Action::Update { config, .. }] = &d.actions[..] else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(config.labels[label::RING], "0");
    assert_eq!(config.labels[label::OPERATION], "old");
    assert_eq!(decisions(&s).last().unwrap(), "IgnoredOperation");
    let mut op = Operation::new("go", OperationKind::Promote);
    op.ring = Some("early".into());
    op.revision = s.status.revision.clone();
    s.ops.push(op);
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Update { config, .. }] if config.labels[label::RING] == "1")
    );
    s.run_until(40, |s| s.phase() == Phase::Healthy);
}

#[test]
fn approval_on_the_first_ring_waits_before_anything_is_created() {
    let mut ro = rollout();
    ro.spec.rings[0].approval = true;
    let mut s = Sim::new(ro);
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(s.ring_state(), (0, RingState::AwaitingApproval));
    s.op("go", OperationKind::Promote);
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Create(_)]));
}

#[test]
fn a_newer_revision_supersedes_an_unfinished_one() {
    let mut s = Sim::new(rollout());
    s.step();
    s.refresh();
    s.step();
    let first = s.ours()[0].1.id.clone();
    set_version(&mut s.ro, "2.4.1");
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Delete { id }, Action::Create(c)] if *id == first && c.id != first),
        "{:?}",
        d.actions
    );
    assert_eq!(s.ours().len(), 1);
    assert_eq!(s.ring_state(), (0, RingState::Applying));
    assert!(
        s.status.rings.len() == 1 && s.status.rings[0].verdict.is_none(),
        "ring records restart with the revision"
    );
}

#[test]
fn the_baseline_guard_blocks_widening_until_devices_are_covered() {
    let mut s = Sim::new(rollout());
    s.uncovered = 7;
    let d = s.step();
    assert!(
        d.actions.is_empty(),
        "nothing is created while ring 0 is uncovered"
    );
    assert_eq!(s.ring_state(), (0, RingState::WaitingForBaseline));
    assert_eq!(s.phase(), Phase::Pending);
    let stalled = status::condition(&s.status, STALLED).unwrap();
    assert_eq!(stalled.reason, "BaselineMissing");
    assert!(
        stalled.message.contains("7 devices of ring canary"),
        "{}",
        stalled.message
    );
    s.uncovered = 0;
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Create(_)]));
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().status,
        "False"
    );
}

#[test]
fn the_baseline_guard_asks_for_the_right_count() {
    let mut s = Sim::new(rollout());
    let obs = s.observation();
    let d = decide(&s.ro, &s.status, &obs, s.now);
    let [req] = &d.counts_needed[..] else {
        panic!("{:?}", d.counts_needed)
    };
    assert!(req.key.starts_with("baseline:"));
    assert_eq!(
        req.condition,
        "((tags.environment='prod') AND (tags.ring='canary')) AND NOT (IS_DEFINED(configurations.[[baseline]]))"
    );
    // Widening from ring 0 to 1 counts only the new devices.
    s.run_until(10, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.state == RingState::Baking)
    });
    s.advance(mins(10));
    let obs = s.observation();
    let d = decide(&s.ro, &s.status, &obs, s.now);
    let req = d
        .counts_needed
        .iter()
        .find(|r| r.key.starts_with("baseline:"))
        .expect("a guard count");
    assert!(
        req.condition
            .contains("AND NOT ((tags.environment='prod') AND (tags.ring='canary'))"),
        "{}",
        req.condition
    );
    // A baseline of higher priority, or one writing other paths, does not cover.
    let mut s2 = Sim::new(rollout());
    s2.configs[0].priority = 50;
    let obs = s2.observation();
    let d = decide(&s2.ro, &s2.status, &obs, s2.now);
    assert!(
        !d.counts_needed[0].condition.contains("baseline"),
        "{}",
        d.counts_needed[0].condition
    );
}

#[test]
fn baseline_warn_widens_and_records_a_warning_and_off_does_not_count() {
    let mut ro = rollout();
    ro.spec.baseline = BaselinePolicy::Warn;
    let mut s = Sim::new(ro);
    s.uncovered = 3;
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Create(_)]));
    assert!(decisions(&s).contains(&"BaselineWarning".to_string()));

    let mut ro = rollout();
    ro.spec.baseline = BaselinePolicy::Off;
    let s = Sim::new(ro);
    let d = decide(&s.ro, &s.status, &s.observation(), s.now);
    assert!(d.counts_needed.is_empty());
    assert!(matches!(&d.actions[..], [Action::Create(_)]));
}

#[test]
fn budgets_are_never_exceeded_and_an_empty_budget_waits_for_the_refill() {
    let mut s = Sim::new(rollout());
    s.budget = Budget {
        queries: 0,
        writes: 5,
        refill: SignedDuration::from_secs(40),
    };
    let d = s.step();
    assert!(d.actions.is_empty() && d.counts_needed.is_empty());
    assert_eq!(d.requeue_after, SignedDuration::from_secs(40));
    assert!(
        s.status
            .message
            .as_deref()
            .unwrap()
            .contains("query budget")
    );
    s.budget = Budget {
        queries: 5,
        writes: 0,
        refill: SignedDuration::from_secs(20),
    };
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(d.requeue_after, SignedDuration::from_secs(20));
    assert!(
        s.status
            .message
            .as_deref()
            .unwrap()
            .contains("configuration-write budget")
    );
    // A refill of zero still does not spin.
    s.budget = Budget {
        queries: 5,
        writes: 0,
        refill: SignedDuration::ZERO,
    };
    assert_eq!(s.step().requeue_after, MIN_REQUEUE);
}

#[test]
fn superseding_with_one_write_left_deletes_first_and_creates_next_time() {
    let mut s = Sim::new(rollout());
    s.step();
    set_version(&mut s.ro, "2.4.1");
    s.budget.writes = 1;
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Delete { .. }]),
        "{:?}",
        d.actions
    );
    assert!(s.ours().is_empty());
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Create(_)]));
}

#[test]
fn suspend_writes_nothing() {
    let mut s = Sim::new(rollout());
    s.step();
    s.ro.spec.suspend = true;
    s.refresh();
    let d = s.step();
    assert!(d.actions.is_empty() && d.counts_needed.is_empty());
    assert_eq!(s.phase(), Phase::Paused);
    assert_eq!(
        status::condition(&s.status, READY).unwrap().reason,
        "Suspended"
    );
    assert_eq!(d.requeue_after, IDLE_POLL);
    s.ro.spec.suspend = false;
    s.run_until(40, |s| s.phase() == Phase::Healthy);
}

#[test]
fn pause_holds_widening_and_resume_lifts_it() {
    let mut s = Sim::new(rollout());
    s.op("p", OperationKind::Pause);
    s.step();
    assert_eq!(s.phase(), Phase::Paused);
    assert!(s.status.paused.is_some());
    // Ring 0 was targeted before? No: a pause before the start holds creation too.
    assert!(s.ours().is_empty());
    s.op("r", OperationKind::Resume);
    s.step();
    assert_eq!(s.ours().len(), 1);
    s.op("p2", OperationKind::Pause);
    s.run_until(10, |s| {
        s.status
            .rings
            .first()
            .is_some_and(|r| r.verdict == Some(Verdict::Pass))
    });
    assert_eq!(
        s.ours()[0].0.ring,
        0,
        "ring 0 passed but ring 1 is not targeted"
    );
    assert!(
        s.status
            .message
            .as_deref()
            .unwrap()
            .contains("paused by operator")
    );
    let d = s.step();
    assert!(d.actions.is_empty(), "paused: no widening");
    assert_eq!(s.phase(), Phase::Paused);
    s.op("r2", OperationKind::Resume);
    let d = s.step();
    assert!(
        matches!(&d.actions[..], [Action::Update { config, .. }] if config.labels[label::RING] == "1")
    );
}

#[test]
fn a_pause_does_not_stop_a_rollback() {
    let mut s = Sim::new(rollout());
    s.fail_rate.insert("2.4.0".into(), 0.5);
    s.step();
    s.op("p", OperationKind::Pause);
    s.run_until(20, |s| s.phase() == Phase::RolledBack);
}

#[test]
fn a_lost_status_is_rebuilt_from_the_labels() {
    let mut s = Sim::new(rollout());
    s.run_until(20, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.index == 1 && r.state == RingState::Baking)
    });
    s.status = DeviceRolloutStatus::default();
    let d = s.step();
    assert!(
        d.actions.is_empty(),
        "no create, no regression: {:?}",
        d.actions
    );
    assert_eq!(s.status.ring.as_ref().unwrap().index, 1);
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    assert_eq!(decisions(&s).iter().filter(|d| *d == "Create").count(), 0);

    // Lost while rolled back: the held label says so, and it stays rolled back.
    let mut s = Sim::new(rollout());
    s.fail_rate.insert("2.4.0".into(), 0.5);
    s.run_until(20, |s| s.phase() == Phase::RolledBack);
    s.status = DeviceRolloutStatus::default();
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(s.phase(), Phase::RolledBack);

    // Lost after completion: healthy.
    let mut s = Sim::new(rollout());
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    s.status = DeviceRolloutStatus::default();
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(s.phase(), Phase::Healthy);
}

/// One reconcile by a controller that lost the status just before it.
fn forgetful_step(s: &mut Sim) -> Decision {
    s.status = DeviceRolloutStatus::default();
    let d = s.step();
    s.refresh();
    s.advance(d.requeue_after);
    d
}

#[test]
fn a_status_lost_before_every_step_reaches_the_same_outcome_as_an_uninterrupted_run() {
    let mut a = Sim::new(rollout());
    a.run_until(60, |s| s.phase() == Phase::Healthy);
    let mut b = Sim::new(rollout());
    for _ in 0..200 {
        forgetful_step(&mut b);
        if b.phase() == Phase::Healthy {
            break;
        }
    }
    assert_eq!(b.phase(), Phase::Healthy, "{:#?}", b.status);
    let (la, lb) = (&a.ours()[0].1.labels, &b.ours()[0].1.labels);
    assert_eq!(la, lb, "the same stable configuration");
    assert_eq!(b.ours().len(), 1);
    // Bake times count from the `applied` marks, not from each restart: the run takes
    // no longer than the uninterrupted one, give or take a poll per ring.
    let (ta, tb) = (a.now.duration_since(t0()), b.now.duration_since(t0()));
    assert!(tb <= ta + mins(10), "{tb:?} vs {ta:?}");

    // The faulty revision: rolled back in the canary ring all the same.
    let mut b = Sim::new(rollout());
    b.fail_rate.insert("2.4.0".into(), 0.5);
    for _ in 0..100 {
        forgetful_step(&mut b);
        if b.phase() == Phase::RolledBack {
            break;
        }
    }
    assert_eq!(b.phase(), Phase::RolledBack);
    assert_eq!(b.ours()[0].0.ring, 0);
    assert_eq!(b.ours()[0].0.state, ConfigState::Held);
}

#[test]
fn a_pause_outlives_a_lost_status() {
    let mut s = Sim::new(rollout());
    s.run_until(20, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.state == RingState::Baking)
    });
    s.op("p", OperationKind::Pause);
    let d = s.step();
    let [Action::Update { config, .. }] = &d.actions[..] else {
        panic!("the pause is written to the hub: {:?}", d.actions)
    };
    assert_eq!(config.labels[label::PAUSED], "p");
    for _ in 0..20 {
        forgetful_step(&mut s);
        assert_eq!(s.phase(), Phase::Paused, "{:#?}", s.status);
        assert!(s.status.paused.as_ref().is_some_and(|p| p.operation == "p"));
    }
    assert_eq!(s.ours()[0].0.ring, 0, "no widening while paused");
    s.op("r", OperationKind::Resume);
    forgetful_step(&mut s);
    assert!(s.status.paused.is_none());
    assert!(!s.ours()[0].1.labels.contains_key(label::PAUSED));
    for _ in 0..5 {
        forgetful_step(&mut s);
    }
    assert!(s.ours()[0].0.ring >= 1, "widened after the resume");
}

#[test]
fn an_operation_is_not_applied_again_after_the_status_is_lost() {
    let mut ro = rollout();
    ro.spec.on_failure = OnFailure::Pause;
    let mut s = Sim::new(ro);
    s.fail_rate.insert("2.4.0".into(), 0.5);
    s.run_until(20, |s| s.phase() == Phase::Failed);
    // An id a label cannot hold as it is (space, slash): the mark keeps its label form.
    let id = "promote 1 from alice/cli";
    s.op(id, OperationKind::Promote);
    s.step();
    assert_eq!(s.ours()[0].0.ring, 1, "promoted past the failed ring");
    // The request is still there (an annotation stays until replaced); the status is lost.
    for _ in 0..30 {
        forgetful_step(&mut s);
    }
    assert_eq!(
        s.ours()[0].0.ring,
        1,
        "the same promote does not pass ring 1 too"
    );
    assert_eq!(s.ring_state(), (1, RingState::Failed));
    assert!(s.ours()[0].0.marks.is_operation(id));
}

#[test]
fn devices_a_higher_priority_configuration_holds_count_as_settled() {
    let mut s = Sim::new(rollout());
    s.shielded = 3;
    // Without a configuration that could hold them, the numbers fall short and nothing is
    // counted: the ring waits.
    s.step();
    s.refresh();
    assert!(
        s.counts_asked()
            .iter()
            .all(|r| !r.key.starts_with("shielded:"))
    );
    let mut hotfix = baseline_config();
    hotfix.id = "hotfix".into();
    hotfix.priority = 50;
    hotfix.created_time_utc = Some(s.now);
    s.configs.push(hotfix);
    s.refresh();
    let asked = s.counts_asked();
    let req = asked
        .iter()
        .find(|r| r.key.starts_with("shielded:"))
        .expect("a shielded count");
    assert_eq!(
        req.condition,
        format!(
            "(configurations.[[{}]].status='Targeted') AND (configurations.[[hotfix]].status='Applied')",
            s.ours()[0].1.id
        )
    );
    s.step();
    assert_eq!(s.ring_state(), (0, RingState::Baking));
    assert_eq!(s.status.ring.as_ref().unwrap().shielded, Some(3));
    assert_eq!(s.status.rings[0].shielded, Some(3));
    assert!(
        s.status
            .history
            .last()
            .unwrap()
            .message
            .contains("3 more are held by higher-priority configuration(s) hotfix")
    );
}

#[test]
fn a_rollback_is_confirmed_only_when_the_devices_have_other_settings() {
    let mut s = Sim::new(rollout());
    s.fail_rate.insert("2.4.0".into(), 0.5);
    s.rollback_uncovered = 4;
    s.run_until(20, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.state == RingState::RollingBack)
    });
    let started = s.now;
    s.refresh();
    let asked = s.counts_asked();
    let [req] = &asked[..] else {
        panic!("{asked:?}")
    };
    assert!(req.key.starts_with("rollback:"));
    assert_eq!(
        req.condition,
        "((tags.environment='prod') AND (tags.ring='canary')) AND NOT (configurations.[[baseline]].status='Applied')"
    );
    // Within the grace period: still rolling back.
    s.step();
    assert_eq!(s.ring_state(), (0, RingState::RollingBack));
    assert!(s.status.message.as_deref().unwrap().contains("4 devices"));
    // After it: rolled back, and stalled on the devices that lost their settings.
    s.run_until(40, |s| s.phase() == Phase::RolledBack);
    assert!(s.now.duration_since(started) >= ROLLBACK_GRACE);
    let stalled = status::condition(&s.status, STALLED).unwrap();
    assert_eq!(stalled.reason, "RollbackIncomplete");
    assert!(stalled.message.contains("4 devices"), "{}", stalled.message);
    // A baseline that covers them clears it.
    s.rollback_uncovered = 0;
    s.step();
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().reason,
        "RolledBack"
    );
}

#[test]
fn an_approval_runs_the_baseline_guard_again() {
    let mut ro = rollout();
    ro.spec.rings[1].approval = true;
    let mut s = Sim::new(ro);
    s.run_until(20, |s| {
        s.status
            .ring
            .as_ref()
            .is_some_and(|r| r.state == RingState::AwaitingApproval)
    });
    // Coverage went away while the ring waited for its approval.
    s.uncovered = 5;
    s.op("go", OperationKind::Promote);
    let d = s.step();
    assert!(
        d.actions.iter().all(
            |a| !matches!(a, Action::Update { config, .. } if config.labels[label::RING] == "1")
        ),
        "no widening onto uncovered devices: {:?}",
        d.actions
    );
    assert_eq!(s.ring_state(), (1, RingState::WaitingForBaseline));
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().reason,
        "BaselineMissing"
    );
    assert!(s.status.rings[1].approved_at.is_some());
    // Covered again: it widens without asking for a second approval.
    s.uncovered = 0;
    let d = s.step();
    assert!(
        d.actions.iter().any(
            |a| matches!(a, Action::Update { config, .. } if config.labels[label::RING] == "1")
        ),
        "{:?}",
        d.actions
    );
}

#[test]
fn spec_changes_that_keep_the_content_retarget_in_place() {
    let mut s = Sim::new(rollout());
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    s.ro.spec.target = "tags.environment='prod' AND tags.site='lyon'".into();
    s.ro.spec.priority = 30;
    let d = s.step();
    let [Action::Update { config, .. }] = &d.actions[..] else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(
        config.target_condition,
        "tags.environment='prod' AND tags.site='lyon'"
    );
    assert_eq!(config.priority, 30);
    assert!(s.step().actions.is_empty());
}

#[test]
fn the_quota_is_respected() {
    let mut s = Sim::new(rollout());
    s.max_configurations = 1;
    let d = s.step();
    assert!(d.actions.is_empty());
    assert_eq!(
        status::condition(&s.status, STALLED).unwrap().reason,
        "ConfigurationQuota"
    );
}

#[test]
fn deleting_a_rollout_refuses_to_strip_settings_unless_forced() {
    let mut s = Sim::new(rollout());
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    s.deletion = Some(Deletion { force: false });
    s.cleanup_uncovered = 12;
    let obs = s.observation();
    let d = decide(&s.ro, &s.status, &obs, s.now);
    assert_eq!(d.counts_needed[0].key, "cleanup");
    assert!(
        d.counts_needed[0]
            .condition
            .contains("AND NOT (IS_DEFINED(configurations.[[baseline]]))"),
        "{}",
        d.counts_needed[0].condition
    );
    let d = s.step();
    assert!(d.actions.is_empty() && !d.finalized);
    let stalled = status::condition(&s.status, STALLED).unwrap();
    assert_eq!(stalled.reason, "CleanupBlocked");
    assert!(
        stalled.message.contains("12 devices") && stalled.message.contains("force-delete"),
        "{}",
        stalled.message
    );
    s.cleanup_uncovered = 0;
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Delete { .. }]));
    let d = s.step();
    assert!(d.finalized);
    assert!(s.ours().is_empty());
    assert_eq!(s.configs.len(), 1, "the baseline is not ours and stays");

    let mut s = Sim::new(rollout());
    s.run_until(40, |s| s.phase() == Phase::Healthy);
    s.deletion = Some(Deletion { force: true });
    s.cleanup_uncovered = 12;
    let d = s.step();
    assert!(matches!(&d.actions[..], [Action::Delete { .. }]));
}

#[test]
fn an_invalid_spec_writes_nothing_and_says_why() {
    let s = Sim::new(rollout());
    let errors = vec![FieldError {
        path: "spec.rings[1].target".into(),
        message: "column 5: unexpected token".into(),
    }];
    let d = invalid(&s.ro, &s.status, &errors, s.now);
    assert!(d.actions.is_empty());
    assert_eq!(d.status.phase, Some(Phase::Failed));
    let stalled = status::condition(&d.status, STALLED).unwrap();
    assert_eq!(stalled.reason, "InvalidSpec");
    assert!(stalled.message.contains("spec.rings[1].target: column 5"));
}

#[test]
fn conditions_keep_their_transition_time_while_nothing_flips() {
    let mut s = Sim::new(rollout());
    s.step();
    let t = status::condition(&s.status, RECONCILING)
        .unwrap()
        .last_transition_time
        .clone();
    s.advance(mins(1));
    s.step();
    s.refresh();
    s.advance(mins(1));
    s.step();
    assert_eq!(
        status::condition(&s.status, RECONCILING)
            .unwrap()
            .last_transition_time,
        t
    );
    assert_eq!(s.status.observed_generation, Some(1));
}

#[test]
fn operations_are_applied_once() {
    let mut s = Sim::new(rollout());
    s.op("p", OperationKind::Pause);
    s.step();
    s.op("r", OperationKind::Resume);
    s.step();
    assert!(s.status.paused.is_none());
    // The pause request is still in the input; it must not pause again.
    s.step();
    assert!(s.status.paused.is_none());
    assert_eq!(s.status.handled_operations, ["p", "r"]);
}

#[test]
fn the_hub_must_catch_up_before_a_ring_counts_as_applied() {
    let mut s = Sim::new(rollout());
    s.step();
    s.refresh();
    s.step();
    s.advance(mins(10));
    s.step(); // passes ring 0, widens to ring 1
    assert_eq!(s.ring_state(), (1, RingState::Applying));
    // The hub still reports ring 0's numbers (10 targeted): not applied.
    for _ in 0..3 {
        s.advance(mins(1));
        s.step();
        assert_eq!(s.ring_state(), (1, RingState::Applying));
    }
    s.refresh();
    s.step();
    assert_eq!(s.ring_state(), (1, RingState::Baking));
}

// ---- properties ------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Event {
    Advance(i64),
    Refresh,
    Step,
    /// A reconcile as the controller runs it: step, let the hub recompute, sleep the requeue.
    Cycle,
    SetFailure(u8),
    NewContent(u8),
    Op(OperationKind),
    LoseStatus,
    Uncovered(u8),
    WriteBudget(u8),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => (1i64..120).prop_map(Event::Advance),
        1 => Just(Event::Refresh),
        2 => Just(Event::Step),
        20 => Just(Event::Cycle),
        1 => (0u8..4).prop_map(Event::SetFailure),
        1 => (0u8..3).prop_map(Event::NewContent),
        1 => prop_oneof![
            Just(OperationKind::Pause),
            Just(OperationKind::Resume),
            Just(OperationKind::Abort),
            Just(OperationKind::Retry),
        ]
        .prop_map(Event::Op),
        1 => Just(Event::LoseStatus),
        1 => (0u8..3).prop_map(|u| Event::Uncovered(u.saturating_sub(1))),
        1 => (0u8..4).prop_map(Event::WriteBudget),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Never widens without a Pass, never more than one unfinished revision, never spins.
    #[test]
    fn invariants_hold_under_any_sequence(events in proptest::collection::vec(event(), 1..120), pause in any::<bool>()) {
        let mut ro = rollout();
        if pause {
            ro.spec.on_failure = OnFailure::Pause;
        }
        let mut s = Sim::new(ro);
        let mut n = 0;
        for e in events {
            match e.clone() {
                Event::Advance(m) => s.advance(mins(m)),
                Event::Refresh => s.refresh(),
                Event::Step | Event::Cycle => {
                    let before: BTreeMap<String, (usize, ConfigState)> =
                        s.ours().iter().map(|(l, c)| (c.id.clone(), (l.ring, l.state))).collect();
                    let records = s.status.rings.clone();
                    let d = s.step();
                    for a in &d.actions {
                        if let Action::Update { config, .. } = a {
                            let l = ConfigLabels::read(config).unwrap();
                            if let Some(&(ring, ConfigState::Rolling)) = before.get(&config.id)
                                && l.state == ConfigState::Rolling
                                && l.ring > ring
                            {
                                // Widening: the ring it leaves passed (in this decision or earlier).
                                let passed = d.status.rings.get(ring).and_then(|r| r.verdict) == Some(Verdict::Pass)
                                    || records.get(ring).and_then(|r| r.verdict) == Some(Verdict::Pass);
                                prop_assert!(passed, "widened from ring {} without a Pass: {:?}", ring, d.status.rings);
                                prop_assert_eq!(l.ring, ring + 1, "widened by more than one ring");
                            }
                        }
                    }
                    let unfinished = s.ours().iter().filter(|(l, _)| l.state == ConfigState::Rolling).count();
                    prop_assert!(unfinished <= 1, "{} unfinished revisions", unfinished);
                    prop_assert!(d.requeue_after >= MIN_REQUEUE);
                    prop_assert!(d.status.history.len() <= status::MAX_HISTORY);
                    if matches!(e, Event::Cycle) {
                        s.refresh();
                        s.advance(d.requeue_after);
                    }
                }
                Event::SetFailure(r) => {
                    let v = SimVersion::of(&s.ro);
                    s.fail_rate.insert(v, [0.0, 0.0, 0.01, 0.5][r as usize]);
                }
                Event::NewContent(v) => set_version(&mut s.ro, ["2.4.0", "2.5.0", "2.6.0"][v as usize]),
                Event::Op(kind) => {
                    n += 1;
                    s.op(&format!("op{n}"), kind);
                }
                Event::LoseStatus => s.status = DeviceRolloutStatus::default(),
                Event::Uncovered(u) => s.uncovered = u as u64,
                Event::WriteBudget(w) => s.budget.writes = w as u32,
            }
        }
    }
}

struct SimVersion;
impl SimVersion {
    fn of(ro: &DeviceRollout) -> String {
        ro.spec.content.device["properties.desired.firmware"]["version"]
            .as_str()
            .unwrap()
            .to_string()
    }
}
