//! Driver tests against a small in-memory `Hub` (configurations in a list, counts from a
//! table). The embedded hub's story tests live in `tests/`.

use super::*;
use crate::client::{QueryPage, TestQueriesResult};
use crate::clock::ManualClock;
use crate::core::revision::{ConfigLabels, ConfigState};
use crate::iothub::configuration::Configuration;
use crate::resources::{BaselinePolicy, GateSpec, OperationKind, Phase};
use async_trait::async_trait;

#[derive(Default)]
struct FakeHub {
    configs: Mutex<Vec<Configuration>>,
    /// Count answers by condition text; 0 when absent.
    counts: Mutex<BTreeMap<String, u64>>,
    calls: Mutex<Vec<String>>,
    /// Fail the next call whose name starts with this, with this code.
    fail_next: Mutex<Option<(String, ErrorCode)>>,
    etag: Mutex<u64>,
    clock: Option<ManualClock>,
}

impl FakeHub {
    fn call(&self, name: &str) -> Result<(), HubError> {
        self.calls.lock().push(name.to_string());
        let mut f = self.fail_next.lock();
        if let Some((prefix, code)) = f.clone()
            && name.starts_with(&prefix)
        {
            *f = None;
            return Err(HubError::new(code, "injected"));
        }
        Ok(())
    }
    fn next_etag(&self) -> String {
        let mut e = self.etag.lock();
        *e += 1;
        e.to_string()
    }
    fn now(&self) -> Option<Timestamp> {
        self.clock.as_ref().map(|c| c.now())
    }
    /// Sets every configuration's numbers: targeted = applied = what its ring reaches.
    fn settle(&self, ring_sizes: &[u64]) {
        for c in self.configs.lock().iter_mut() {
            let reach = match ConfigLabels::read(c) {
                Some(l) if l.state == ConfigState::Held => 0,
                Some(l) if l.state == ConfigState::Stable => ring_sizes.iter().sum(),
                Some(l) => ring_sizes[..=l.ring].iter().sum(),
                None => 0,
            };
            c.system_metrics.results = BTreeMap::from([
                ("targetedCount".into(), reach as i64),
                ("appliedCount".into(), reach as i64),
            ]);
            c.metrics.results =
                BTreeMap::from([("current".into(), reach as i64), ("failed".into(), 0)]);
        }
    }
}

#[async_trait]
impl Hub for FakeHub {
    async fn list_configurations(&self) -> Result<Vec<Configuration>, HubError> {
        self.call("list")?;
        Ok(self.configs.lock().clone())
    }
    async fn get_configuration(&self, id: &str) -> Result<Option<Configuration>, HubError> {
        self.call("get")?;
        Ok(self.configs.lock().iter().find(|c| c.id == id).cloned())
    }
    async fn create_configuration(
        &self,
        config: &Configuration,
    ) -> Result<Configuration, HubError> {
        self.call(&format!("create {}", config.id))?;
        let mut configs = self.configs.lock();
        if configs.iter().any(|c| c.id == config.id) {
            return Err(HubError::new(
                ErrorCode::ConfigurationAlreadyExists,
                "exists",
            ));
        }
        let mut c = config.clone();
        c.created_time_utc = self.now();
        c.last_updated_time_utc = self.now();
        c.etag = Some(self.next_etag());
        configs.push(c.clone());
        Ok(c)
    }
    async fn update_configuration(
        &self,
        config: &Configuration,
        etag: Option<&str>,
    ) -> Result<Configuration, HubError> {
        self.call(&format!("update {} {}", config.id, etag.unwrap_or("*")))?;
        let new_etag = self.next_etag();
        let mut configs = self.configs.lock();
        let c = configs
            .iter_mut()
            .find(|c| c.id == config.id)
            .ok_or_else(|| HubError::new(ErrorCode::ConfigurationNotFound, "gone"))?;
        if let Some(e) = etag
            && e != format!("\"{}\"", c.etag.clone().unwrap_or_default())
        {
            return Err(HubError::new(ErrorCode::PreconditionFailed, "etag"));
        }
        c.labels = config.labels.clone();
        c.target_condition = config.target_condition.clone();
        c.priority = config.priority;
        c.metrics.queries = config.metrics.queries.clone();
        c.last_updated_time_utc = self.now();
        c.etag = Some(new_etag);
        Ok(c.clone())
    }
    async fn delete_configuration(&self, id: &str, _etag: Option<&str>) -> Result<(), HubError> {
        self.call(&format!("delete {id}"))?;
        let mut configs = self.configs.lock();
        let before = configs.len();
        configs.retain(|c| c.id != id);
        if configs.len() == before {
            return Err(HubError::new(ErrorCode::ConfigurationNotFound, "gone"));
        }
        Ok(())
    }
    async fn query(
        &self,
        query: &str,
        _page_size: Option<usize>,
        _continuation: Option<&str>,
    ) -> Result<QueryPage, HubError> {
        self.call("query")?;
        let cond = query
            .split_once(" WHERE ")
            .map(|(_, c)| c.to_string())
            .unwrap_or_else(|| "*".into());
        let n = self.counts.lock().get(&cond).copied().unwrap_or(0);
        Ok(QueryPage {
            item_type: "raw".into(),
            items: vec![serde_json::json!({"n": n})],
            continuation: None,
        })
    }
    async fn test_queries(
        &self,
        _t: &str,
        _m: &BTreeMap<String, String>,
    ) -> Result<TestQueriesResult, HubError> {
        Ok(TestQueriesResult::default())
    }
    async fn get_twin(&self, _id: &str) -> Result<Option<serde_json::Value>, HubError> {
        Ok(None)
    }
    async fn update_twin(
        &self,
        _id: &str,
        _p: &serde_json::Value,
        _e: Option<&str>,
    ) -> Result<serde_json::Value, HubError> {
        Err(HubError::new(ErrorCode::DeviceNotFound, "no twins here"))
    }
}

/// The core's fixture with a gate that fails on any error, no deadline, two rings and
/// no baseline.
fn rollout() -> DeviceRollout {
    let mut ro = crate::core::fixtures::rollout();
    ro.spec.gate = GateSpec {
        min_applied: Some(1),
        bake: Some("10m".parse().unwrap()),
        success: None,
        failure: Some("metrics.failed > 0.0".into()),
        deadline: None,
    };
    ro.spec.rings.retain(|r| r.name != "early");
    ro.spec.on_failure = Default::default();
    ro.spec.baseline = BaselinePolicy::Off;
    ro
}

const SIZES: [u64; 2] = [10, 100];

fn setup() -> (Arc<FakeHub>, ManualClock, Driver) {
    let clock = ManualClock::at_epoch();
    let hub = Arc::new(FakeHub {
        clock: Some(clock.clone()),
        ..Default::default()
    });
    hub.counts.lock().insert(
        "(tags.environment='prod') AND (tags.ring='canary')".into(),
        10,
    );
    hub.counts
        .lock()
        .insert("tags.environment='prod'".into(), 110);
    let driver = Driver::new(hub.clone(), Arc::new(clock.clone()));
    (hub, clock, driver)
}

/// Reconciles until `pred` holds, letting the hub settle and the clock follow the requeue.
async fn drive(
    d: &Driver,
    hub: &FakeHub,
    clock: &ManualClock,
    ro: &DeviceRollout,
    st: &mut DeviceRolloutStatus,
    n: usize,
    pred: impl Fn(&DeviceRolloutStatus) -> bool,
) {
    for _ in 0..n {
        if pred(st) {
            return;
        }
        let out = d.reconcile(ro, st).await;
        assert!(out.error.is_none(), "{:?}", out.error);
        *st = out.status;
        hub.settle(&SIZES);
        clock.advance(SignedDuration::try_from(out.requeue_after).unwrap());
    }
    assert!(pred(st), "not reached: {st:#?}");
}

#[tokio::test]
async fn drives_a_rollout_to_healthy_with_counts_from_the_hub() {
    let (hub, clock, d) = setup();
    let ro = rollout();
    let mut st = DeviceRolloutStatus::default();
    let out = d.reconcile(&ro, &st).await;
    assert!(matches!(&out.performed[..], [Action::Create(_)]));
    assert!(
        out.counts.is_empty(),
        "baseline off: no count before creating"
    );
    st = out.status;
    hub.settle(&SIZES);
    let out = d.reconcile(&ro, &st).await;
    assert_eq!(out.counts.len(), 1, "the ring's expected size was counted");
    st = out.status;
    drive(&d, &hub, &clock, &ro, &mut st, 30, |s| {
        s.phase == Some(Phase::Healthy)
    })
    .await;
    let configs = hub.configs.lock().clone();
    assert_eq!(configs.len(), 1);
    assert_eq!(configs[0].target_condition, "tags.environment='prod'");
    // Updates carry a quoted etag.
    assert!(
        hub.calls
            .lock()
            .iter()
            .any(|c| c.starts_with("update ") && c.ends_with('"'))
    );
}

#[tokio::test]
async fn writes_are_idempotent() {
    let (hub, _clock, d) = setup();
    let ro = rollout();
    let st = DeviceRolloutStatus::default();
    // Another controller created the configuration between our list and our create.
    let first = d.reconcile(&ro, &st).await;
    let Action::Create(c) = &first.performed[0] else {
        panic!()
    };
    hub.configs.lock().clear();
    hub.configs.lock().push(c.clone());
    let again = d.reconcile(&ro, &st).await;
    assert!(again.error.is_none());
    // A delete of something already gone is fine too.
    assert!(d.hub().delete_configuration("nope", None).await.is_err());
    let mut ro2 = ro.clone();
    ro2.spec.content.device.insert(
        "properties.desired.firmware".into(),
        serde_json::json!({"version": "9"}),
    );
    *hub.fail_next.lock() = Some(("delete".into(), ErrorCode::ConfigurationNotFound));
    let out = d.reconcile(&ro2, &first.status).await;
    assert!(out.error.is_none(), "{:?}", out.error);
}

#[tokio::test]
async fn a_failed_write_keeps_the_previous_status() {
    let (hub, _clock, d) = setup();
    let ro = rollout();
    let st = DeviceRolloutStatus::default();
    *hub.fail_next.lock() = Some((
        "create".into(),
        ErrorCode::InvalidConfigurationTargetCondition,
    ));
    let out = d.reconcile(&ro, &st).await;
    assert_eq!(
        out.error.as_ref().unwrap().code,
        ErrorCode::InvalidConfigurationTargetCondition
    );
    assert!(out.performed.is_empty());
    assert_eq!(out.status.ring, None, "the status did not advance");
    let stalled = status::condition(&out.status, STALLED).unwrap();
    assert_eq!(stalled.reason, "InvalidConfigurationTargetCondition");
    // Throttling is transient.
    *hub.fail_next.lock() = Some(("list".into(), ErrorCode::ThrottlingException));
    let out = d.reconcile(&ro, &st).await;
    assert_eq!(out.requeue_after, std::time::Duration::from_secs(60));
    assert_eq!(
        status::condition(&out.status, RECONCILING).unwrap().status,
        "True"
    );
}

#[tokio::test]
async fn restart_without_status_reaches_the_same_outcome() {
    let (hub, clock, d) = setup();
    let ro = rollout();
    let mut st = DeviceRolloutStatus::default();
    drive(&d, &hub, &clock, &ro, &mut st, 10, |s| {
        s.ring.as_ref().is_some_and(|r| r.index == 1)
    })
    .await;
    // A new driver, no status.
    let d2 = Driver::new(hub.clone(), Arc::new(clock.clone()));
    let mut st2 = DeviceRolloutStatus::default();
    drive(&d2, &hub, &clock, &ro, &mut st2, 30, |s| {
        s.phase == Some(Phase::Healthy)
    })
    .await;
    assert_eq!(hub.configs.lock().len(), 1);
    assert_eq!(
        hub.calls
            .lock()
            .iter()
            .filter(|c| c.starts_with("create"))
            .count(),
        1
    );
}

#[tokio::test]
async fn the_write_budget_is_shared_and_never_exceeded() {
    let clock = ManualClock::at_epoch();
    let hub = Arc::new(FakeHub {
        clock: Some(clock.clone()),
        ..Default::default()
    });
    let limits = HubLimits {
        configuration_writes_per_minute: 3,
        ..Default::default()
    };
    let d = Driver::with_limits(hub.clone(), Arc::new(clock.clone()), limits);
    let mut statuses = Vec::new();
    for i in 0..4 {
        let mut ro = rollout();
        ro.metadata.name = Some(format!("r{i}"));
        let out = d.reconcile(&ro, &DeviceRolloutStatus::default()).await;
        statuses.push(out);
    }
    // 3 operations a minute: list + create for the first, list for the second, nothing after.
    let calls = hub.calls.lock().clone();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(statuses[3].requeue_after >= std::time::Duration::from_secs(5));
    clock.advance(SignedDuration::from_secs(60));
    let mut ro = rollout();
    ro.metadata.name = Some("r1".into());
    let out = d.reconcile(&ro, &DeviceRolloutStatus::default()).await;
    assert!(matches!(&out.performed[..], [Action::Create(_)]));
}

#[tokio::test]
async fn an_invalid_rollout_costs_no_hub_traffic() {
    let (hub, _clock, d) = setup();
    let mut ro = rollout();
    ro.spec.rings.clear();
    let out = d.reconcile(&ro, &DeviceRolloutStatus::default()).await;
    assert_eq!(out.status.phase, Some(Phase::Failed));
    assert!(hub.calls.lock().is_empty());
}

#[tokio::test]
async fn operations_and_deletion_come_from_the_object() {
    let mut ro = rollout();
    let op = Operation::new("x", OperationKind::Promote);
    ro.metadata.annotations = Some(BTreeMap::from([
        (
            crate::resources::operation::OPERATION_ANNOTATION.to_string(),
            op.to_annotation(),
        ),
        (
            crate::resources::operation::FORCE_DELETE_ANNOTATION.to_string(),
            "true".to_string(),
        ),
    ]));
    let input = ReconcileInput::from_object(&ro);
    assert_eq!(input.operations, vec![op]);
    assert!(input.deletion.is_none());
    ro.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::UNIX_EPOCH,
    ));
    assert_eq!(
        ReconcileInput::from_object(&ro).deletion,
        Some(Deletion { force: true })
    );
}

#[test]
fn buckets_refill_per_minute() {
    let t0 = Timestamp::UNIX_EPOCH;
    let limits = HubLimits {
        queries_per_minute: 20,
        ..HubLimits::default()
    };
    let mut b = Budgets::new(&limits, t0).queries;
    for _ in 0..20 {
        assert!(b.try_take(1.0, t0));
    }
    assert!(!b.try_take(1.0, t0));
    assert_eq!(refill_in(&b), SignedDuration::from_secs(3));
    assert!(b.try_take(1.0, t0 + SignedDuration::from_secs(3)));
    assert_eq!(b.available(t0 + SignedDuration::from_secs(600)), 20.0);
}

#[tokio::test]
async fn a_query_page_beside_the_reconciles_spends_the_same_query_budget() {
    let clock = ManualClock::at_epoch();
    let hub = Arc::new(FakeHub {
        clock: Some(clock.clone()),
        ..Default::default()
    });
    let limits = HubLimits {
        queries_per_minute: 2,
        ..Default::default()
    };
    let d = Driver::with_limits(hub.clone(), Arc::new(clock.clone()), limits);
    for _ in 0..2 {
        assert!(
            d.query_page("SELECT * FROM devices", Some(20), None)
                .await
                .unwrap()
                .is_ok()
        );
    }
    // Spent: not asked, with the time until the next token.
    let wait = d
        .query_page("SELECT * FROM devices", Some(20), None)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(30),
        "{wait:?}"
    );
    assert_eq!(hub.calls.lock().iter().filter(|c| *c == "query").count(), 2);
    clock.advance(SignedDuration::from_secs(30));
    assert!(
        d.query_page("SELECT * FROM devices", None, None)
            .await
            .unwrap()
            .is_ok()
    );
}
