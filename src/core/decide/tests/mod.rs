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
use crate::resources::{OnFailure, OperationKind, RingState, Verdict};
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
        // Never below MIN_REQUEUE, except APPLYING_POLL while the hub applies a ring.
        let applying = d
            .status
            .ring
            .as_ref()
            .is_some_and(|r| r.state == RingState::Applying);
        assert!(
            d.requeue_after >= MIN_REQUEUE || (applying && d.requeue_after >= APPLYING_POLL),
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

mod baseline;
mod cleanup;
mod drift;
mod finish;
mod marks;
mod properties;
mod requests;
mod revisions;
mod rings;
mod rollback;
