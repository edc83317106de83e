//! Scenarios for the kube shell: the controller against a mock API server (every request
//! recorded and asserted) and an in-process embedded hub.

use super::controller::{self, backoff, reconcile, status_patch, transitions};
use super::fixtures::*;
use super::hubs::KubeHubs;
use super::leader::Leadership;
use super::{FINALIZER, HubProblem, KubeArgs};
use crate::clock::ManualClock;
use crate::driver::Driver;
use crate::hub::EmbeddedHub;
use crate::iothub::device::Device;
use crate::resources::{DeviceRollout, DeviceRolloutStatus, Phase};
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const OBJECT: &str = "/apis/ringmaster.dev/v1alpha1/namespaces/fleet/devicerollouts/chiller-fw";
const STATUS: &str = "/apis/ringmaster.dev/v1alpha1/namespaces/fleet/devicerollouts/chiller-fw/status?&force=true&fieldManager=ringmaster";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/fleet/events";
/// A merge patch of the object, as the controller's field manager (finalizers).
const OBJECT_PATCH: &str = "/apis/ringmaster.dev/v1alpha1/namespaces/fleet/devicerollouts/chiller-fw?&fieldManager=ringmaster";

/// An embedded hub with two canary and two broad-ring devices, and a driver on it.
fn hub() -> (EmbeddedHub, Arc<Driver>) {
    let clock = ManualClock::at_epoch();
    let hub = EmbeddedHub::in_memory(Arc::new(clock.clone()));
    for (id, ring) in [
        ("c1", "canary"),
        ("c2", "canary"),
        ("b1", "broad"),
        ("b2", "broad"),
    ] {
        hub.create_device_with_twin(
            Device::new(id),
            &json!({"tags": {"environment": "prod", "ring": ring}}),
        )
        .unwrap();
    }
    let driver = Arc::new(Driver::new(Arc::new(hub.clone()), Arc::new(clock)));
    (hub, driver)
}

/// Runs one reconcile of `ro` against a mock API server that echoes every request;
/// returns the result and the requests, in order.
async fn play(
    ro: DeviceRollout,
    ctx_of: impl FnOnce(kube::Client) -> Arc<super::controller::Context>,
) -> (super::Result<Action>, Vec<Seen>) {
    let (client, server) = mock_client();
    let object = serde_json::to_value(&ro).unwrap();
    let server = tokio::spawn(server.echo_all(object));
    let ctx = ctx_of(client);
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(ro), ctx))
        .await
        .expect("reconcile hangs");
    // The context (and its client) is gone: the server sees the end of the requests.
    let seen = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("mock server hangs")
        .unwrap();
    (result, seen)
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

fn has_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.iter().any(has_null),
        Value::Object(o) => o.values().any(has_null),
        _ => false,
    }
}

#[tokio::test]
async fn a_new_rollout_gets_the_finalizer_before_anything_else() {
    let (hub, driver) = hub();
    let (result, seen) = play(rollout(), |c| context_with(c, driver)).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(lines(&seen), vec![format!("PATCH {OBJECT_PATCH}")]);
    assert_eq!(
        seen[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        seen[0].body,
        json!({"metadata": {"finalizers": [FINALIZER], "resourceVersion": "100"}})
    );
    assert!(
        hub.list_configurations().is_empty(),
        "no hub write before the finalizer is in place"
    );
}

#[tokio::test]
async fn a_rollout_starts_its_canary_ring_and_records_status_and_events() {
    let (hub, driver) = hub();
    let (result, seen) = play(rollout().finalized(), |c| context_with(c, driver)).await;
    let action = result.unwrap();
    assert_ne!(
        action,
        Action::await_change(),
        "a progressing rollout is looked at again"
    );

    assert_eq!(
        lines(&seen),
        vec![
            format!("PATCH {STATUS}"),
            format!("POST {EVENTS}?"),
            format!("POST {EVENTS}?")
        ]
    );
    // Server-side apply of the status subresource, as `ringmaster`, with no nulls.
    let apply = &seen[0];
    assert_eq!(
        apply.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(apply.body["apiVersion"], "ringmaster.dev/v1alpha1");
    assert_eq!(apply.body["kind"], "DeviceRollout");
    assert_eq!(
        apply.body.as_object().unwrap().len(),
        3,
        "apiVersion, kind and status only: {}",
        apply.body
    );
    assert_eq!(apply.body["status"]["phase"], "Progressing");
    assert_eq!(apply.body["status"]["ring"]["name"], "canary");
    assert!(
        !has_null(&apply.body),
        "a null would delete a field under SSA: {}",
        apply.body
    );

    // One event for the phase, one for the ring, about the rollout.
    let reasons: Vec<&str> = seen[1..]
        .iter()
        .map(|s| s.body["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["Progressing", "RingStarted"]);
    for e in &seen[1..] {
        assert_eq!(e.body["type"], "Normal");
        assert_eq!(e.body["reportingController"], "ringmaster");
        assert_eq!(e.body["regarding"]["kind"], "DeviceRollout");
        assert_eq!(e.body["regarding"]["name"], "chiller-fw");
    }

    // The hub has the canary configuration.
    let configs = hub.list_configurations();
    assert_eq!(configs.len(), 1);
    assert!(
        configs[0].target_condition.contains("canary"),
        "{}",
        configs[0].target_condition
    );
}

/// `ro` with the status a reconcile applied, as the API server would then hold it.
fn with_applied_status(mut ro: DeviceRollout, seen: &[Seen]) -> DeviceRollout {
    if let Some(apply) = seen.iter().find(|s| s.uri.starts_with(STATUS)) {
        ro.status = Some(serde_json::from_value(apply.body["status"].clone()).unwrap());
    }
    ro
}

/// Reconciles `ro` until a reconcile writes no status (at most `max` times); returns the
/// rollout as the API server would hold it, and every pass's requests.
async fn settle(
    mut ro: DeviceRollout,
    driver: &Arc<Driver>,
    max: usize,
) -> (DeviceRollout, Vec<Vec<Seen>>) {
    let mut passes = Vec::new();
    for _ in 0..max {
        let (result, seen) = play(ro.clone(), |c| context_with(c, driver.clone())).await;
        result.unwrap();
        let wrote = seen.iter().any(|s| s.uri.starts_with(STATUS));
        ro = with_applied_status(ro, &seen);
        passes.push(seen);
        if !wrote {
            break;
        }
    }
    (ro, passes)
}

#[tokio::test]
async fn an_unchanged_status_is_not_written_again() {
    let (_hub, driver) = hub();
    let (ro, passes) = settle(rollout().finalized(), &driver, 5).await;
    assert!(
        passes.len() < 5,
        "the status settles while nothing happens on the hub"
    );
    assert_eq!(
        lines(passes.last().unwrap()),
        Vec::<String>::new(),
        "nothing changed, nothing written"
    );
    let (result, seen) = play(ro, |c| context_with(c, driver)).await;
    assert!(
        matches!(result, Ok(a) if a != Action::await_change()),
        "still polled while progressing"
    );
    assert!(seen.is_empty(), "{:#?}", lines(&seen));
}

#[tokio::test]
async fn a_deleted_rollout_without_cover_keeps_its_finalizer_and_its_configuration() {
    let (hub, driver) = hub();
    let (ro, _) = settle(rollout().finalized(), &driver, 5).await;
    assert_eq!(hub.list_configurations().len(), 1);

    // The canary devices have no lower-priority configuration under them: deleting would
    // strip their settings. The driver refuses; the finalizer stays; the status says why.
    let (result, seen) = play(ro.deleted(), |c| context_with(c, driver)).await;
    assert_eq!(
        hub.list_configurations().len(),
        1,
        "the configuration stays"
    );
    assert!(
        matches!(result, Ok(a) if a != Action::await_change()),
        "looked at again later"
    );
    assert_eq!(lines(&seen)[0], format!("PATCH {STATUS}"));
    assert!(
        seen[0].body["status"]["message"]
            .as_str()
            .unwrap()
            .contains("force-delete"),
        "{}",
        seen[0].body
    );
    assert!(
        !seen
            .iter()
            .any(|s| s.uri.starts_with(&format!("{OBJECT}?"))),
        "finalizer kept: {:#?}",
        lines(&seen)
    );
}

#[tokio::test]
async fn a_force_deleted_rollout_loses_its_finalizer_once_its_configurations_are_gone() {
    let (hub, driver) = hub();
    let (mut ro, _) = settle(rollout().finalized(), &driver, 5).await;
    ro.metadata.annotations = Some(
        [(
            crate::resources::operation::FORCE_DELETE_ANNOTATION.to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let mut ro = ro.deleted();

    // First the driver deletes the configuration; the finalizer goes only on the pass
    // that finds nothing of the rollout left on the hub.
    let mut removed_after = None;
    for pass in 0..4 {
        let configurations_before = hub.list_configurations().len();
        let (result, seen) = play(ro.clone(), |c| context_with(c, driver.clone())).await;
        let result = result.unwrap();
        if let Some(last) = seen.last().filter(|s| s.uri == OBJECT_PATCH) {
            assert_eq!(
                configurations_before, 0,
                "the finalizer went while a configuration was on the hub"
            );
            assert_eq!(last.method, "PATCH");
            assert_eq!(
                last.content_type.as_deref(),
                Some("application/merge-patch+json")
            );
            assert_eq!(
                last.body,
                json!({"metadata": {"finalizers": [], "resourceVersion": "100"}})
            );
            assert_eq!(result, Action::await_change());
            removed_after = Some(pass);
            break;
        }
        ro = with_applied_status(ro, &seen);
    }
    assert!(hub.list_configurations().is_empty());
    assert!(
        removed_after.is_some_and(|p| p >= 1),
        "deleted first, finalizer removed on a later pass: {removed_after:?}"
    );
}

/// A driver whose hub cannot be reached: a client for a host that does not resolve,
/// sent to a closed loopback port, with one attempt.
fn unreachable_driver() -> Arc<Driver> {
    let unreachable = crate::client::azure::AzureHub::new(
        "HostName=unreachable.invalid;SharedAccessKeyName=iothubowner;SharedAccessKey=AAAA",
        crate::client::azure::AzureHubOptions {
            base_url: Some("http://127.0.0.1:9".into()),
            max_attempts: 1,
            request_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .unwrap();
    Arc::new(Driver::new(
        Arc::new(unreachable),
        Arc::new(ManualClock::at_epoch()),
    ))
}

#[tokio::test]
async fn a_deleted_rollout_whose_hub_fails_keeps_its_finalizer() {
    let driver = unreachable_driver();
    let (_, seen) = play(rollout().finalized().deleted(), |c| context_with(c, driver)).await;
    assert!(
        seen.iter()
            .all(|s| !(s.method == "PATCH" && s.uri.starts_with(&format!("{OBJECT}?")))),
        "the finalizer stays while the hub cannot confirm the cleanup: {:#?}",
        lines(&seen)
    );
}

#[tokio::test]
async fn a_standby_replica_touches_neither_the_api_nor_the_hub() {
    let (hub, driver) = hub();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let (result, seen) = play(rollout().finalized(), |c| {
        context(
            c,
            Arc::new(super::hubs::FixedHub(driver.clone())),
            Leadership::from_channel(rx.clone()),
        )
    })
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(seen.is_empty());
    assert!(hub.list_configurations().is_empty());

    // Once it holds the lease, the same reconcile writes.
    tx.send(true).unwrap();
    let (_, seen) = play(rollout().finalized(), |c| {
        context(
            c,
            Arc::new(super::hubs::FixedHub(driver)),
            Leadership::from_channel(rx),
        )
    })
    .await;
    assert_eq!(seen[0].line(), format!("PATCH {STATUS}"));
    assert_eq!(hub.list_configurations().len(), 1);
}

#[tokio::test]
async fn the_hub_is_read_from_its_resource() {
    // `type: embedded` without url: an in-process hub, built from the Hub the API serves.
    let (client, mut server) = mock_client();
    let ctx = context(
        client.clone(),
        Arc::new(super::hubs::KubeHubs::new(
            client,
            Arc::new(ManualClock::at_epoch()),
        )),
        Leadership::always(),
    );
    let ro = rollout().finalized();
    let task = tokio::spawn(reconcile(Arc::new(ro), ctx));
    let get = server
        .answer(|_| {
            (
                http::StatusCode::OK,
                json!({
                    "apiVersion": "ringmaster.dev/v1alpha1", "kind": "Hub",
                    "metadata": {"name": "default", "namespace": "fleet", "resourceVersion": "7"},
                    "spec": {"type": "embedded"}
                }),
            )
        })
        .await
        .unwrap();
    assert_eq!(
        get.line(),
        "GET /apis/ringmaster.dev/v1alpha1/namespaces/fleet/hubs/default"
    );
    let rest = server.echo_all(serde_json::to_value(rollout().finalized()).unwrap());
    let (result, seen) = tokio::join!(async { task.await.unwrap() }, rest);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(seen[0].line(), format!("PATCH {STATUS}"));
}

/// A controller reading Hubs and Secrets from a mock API server that serves `world`.
fn world(world: World) -> (Arc<super::controller::Context>, Arc<KubeHubs>, SharedWorld) {
    let (client, server) = mock_client();
    let world = Arc::new(parking_lot::Mutex::new(world));
    tokio::spawn(server.serve(world.clone()));
    let hubs = Arc::new(KubeHubs::new(
        client.clone(),
        Arc::new(ManualClock::at_epoch()),
    ));
    (
        context(client, hubs.clone(), Leadership::always()),
        hubs,
        world,
    )
}

fn world_of(ro: DeviceRollout) -> World {
    World {
        rollout: serde_json::to_value(ro).unwrap(),
        ..Default::default()
    }
}

/// One reconcile of the rollout the world holds; its result and requests.
async fn pass(
    ctx: &Arc<super::controller::Context>,
    world: &SharedWorld,
) -> (super::Result<Action>, Vec<Seen>) {
    let ro = {
        let mut w = world.lock();
        w.seen.clear();
        w.rollout()
    };
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(Arc::new(ro), ctx.clone()),
    )
    .await
    .expect("reconcile hangs");
    (result, std::mem::take(&mut world.lock().seen))
}

const HUB: &str = "/apis/ringmaster.dev/v1alpha1/namespaces/fleet/hubs/default";
const SECRET: &str = "/api/v1/namespaces/fleet/secrets/iot-hub";

fn cond<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// `(status, reason)` of a condition in an applied status.
fn cond_of(status: &Value, type_: &str) -> (String, String) {
    let c = cond(status, type_);
    (
        c["status"].as_str().unwrap_or_default().into(),
        c["reason"].as_str().unwrap_or_default().into(),
    )
}

fn problem_of(result: &super::Result<Action>) -> Option<HubProblem> {
    match result {
        Err(super::Error::HubConfig { problem, .. }) => Some(*problem),
        _ => None,
    }
}

#[tokio::test]
async fn a_missing_hub_stalls_the_rollout_once_backs_off_and_recovers() {
    // A rollout that already made progress: its status must survive the stall.
    let mut ro = rollout().finalized();
    let mut last = DeviceRolloutStatus {
        phase: Some(Phase::Progressing),
        revision: Some("r1".into()),
        ..Default::default()
    };
    crate::core::status::set_condition(
        &mut last,
        "Reconciling",
        true,
        "Progressing",
        "ring canary",
        Some(1),
        "2025-12-31T00:00:00Z".parse().unwrap(),
    );
    ro.status = Some(last);
    ro.metadata.generation = Some(2);
    let (ctx, _hubs, world) = world(world_of(ro));

    // The first failure: the status says Stalled, one Warning event says why.
    let (result, seen) = pass(&ctx, &world).await;
    assert_eq!(
        problem_of(&result),
        Some(HubProblem::HubNotFound),
        "{result:?}"
    );
    assert_eq!(
        lines(&seen),
        vec![
            format!("GET {HUB}"),
            format!("PATCH {STATUS}"),
            format!("POST {EVENTS}?")
        ]
    );
    let status = &seen[1].body["status"];
    assert!(!has_null(&seen[1].body), "{}", seen[1].body);
    assert_eq!(
        cond_of(status, "Stalled"),
        ("True".into(), "HubNotFound".into())
    );
    assert_eq!(
        cond_of(status, "Ready"),
        ("False".into(), "HubNotFound".into())
    );
    assert_eq!(
        cond_of(status, "Reconciling"),
        ("False".into(), "HubNotFound".into())
    );
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(cond(status, "Stalled")["observedGeneration"], 2);
    let message = cond(status, "Stalled")["message"].as_str().unwrap();
    assert!(
        message.contains("Hub 'default' not found in namespace 'fleet'")
            && message.contains("spec.hub"),
        "{message}"
    );
    assert_eq!(
        (status["phase"].as_str(), status["revision"].as_str()),
        (Some("Progressing"), Some("r1")),
        "the rest is kept: {status}"
    );
    let event = &seen[2].body;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("HubNotFound"))
    );
    assert_eq!(event["regarding"]["name"], "chiller-fw");
    assert_eq!(event["note"].as_str(), Some(message));

    // Retried with the backoff, not at once.
    let err = result.unwrap_err();
    let ro = Arc::new(world.lock().rollout());
    assert_eq!(
        controller::error_policy(ro.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        controller::error_policy(ro, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    assert!(
        ctx.metrics
            .encode()
            .contains("ringmaster_reconcile_errors_total{error=\"hub_config\"} 2")
    );

    // A retry that finds the same: no write, no event.
    let (result, seen) = pass(&ctx, &world).await;
    assert_eq!(problem_of(&result), Some(HubProblem::HubNotFound));
    assert_eq!(lines(&seen), vec![format!("GET {HUB}")]);

    // The Hub appears (its watch reconciles the rollout): the normal path clears the stall.
    world.lock().hubs.insert(
        "default".into(),
        hub_object("default", "u1", json!({"type": "embedded"})),
    );
    let (result, seen) = pass(&ctx, &world).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        lines(&seen)[..2],
        [format!("GET {HUB}"), format!("PATCH {STATUS}")]
    );
    let status = &seen[1].body["status"];
    assert_eq!(cond_of(status, "Stalled").0, "False", "{status}");
    assert_eq!(cond_of(status, "Reconciling").0, "True", "{status}");
    assert!(
        seen.iter().all(|s| s.body["type"] != "Warning"),
        "{:#?}",
        seen
    );
}

#[tokio::test]
async fn a_hub_error_right_after_a_stall_leaves_no_stale_stall_behind() {
    // The Hub is back but its hub cannot be reached yet: the driver keeps the previous
    // conditions and says Reconciling; the old `HubNotFound` stall must not stay True.
    let driver = unreachable_driver();
    let (stalled, _) = controller::hub_stalled(
        &DeviceRolloutStatus::default(),
        HubProblem::HubNotFound,
        "gone",
        Some(1),
        jiff::Timestamp::UNIX_EPOCH,
    );
    let mut ro = rollout().finalized();
    ro.status = Some(stalled);
    let (result, seen) = play(ro, |c| context_with(c, driver)).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(lines(&seen)[0], format!("PATCH {STATUS}"));
    let status = &seen[0].body["status"];
    assert_eq!(
        cond_of(status, "Stalled"),
        ("False".into(), "HubResolved".into()),
        "{status}"
    );
    assert_eq!(
        cond_of(status, "Reconciling"),
        ("True".into(), "HubError".into()),
        "{status}"
    );
}

#[tokio::test]
async fn a_deleted_rollout_whose_hub_is_gone_says_why_it_keeps_its_finalizer() {
    let (ctx, _hubs, world) = world(world_of(rollout().finalized().deleted()));
    let (result, seen) = pass(&ctx, &world).await;
    assert_eq!(problem_of(&result), Some(HubProblem::HubNotFound));
    assert_eq!(
        lines(&seen),
        vec![
            format!("GET {HUB}"),
            format!("PATCH {STATUS}"),
            format!("POST {EVENTS}?")
        ]
    );
    let message = cond(&seen[1].body["status"], "Stalled")["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("the finalizer ringmaster.dev/cleanup stays"),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_secret_or_key_or_a_bad_connection_string_stalls_without_showing_it() {
    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY=";
    let mut w = world_of(rollout().finalized());
    w.hubs.insert(
        "default".into(),
        hub_object(
            "default",
            "u1",
            json!({"type": "azure", "connectionStringSecret": {"name": "iot-hub"}}),
        ),
    );
    let (ctx, _hubs, world) = world(w);
    let mut everything = Vec::new();
    let mut errors = Vec::new();

    // One step per state of the Secret: the problem, what the message must name, and
    // whether the first pass announces it (a new reason: status and one event; the same
    // reason with another message: status only).
    let steps: Vec<(Option<Value>, HubProblem, &[&str], bool)> = vec![
        (
            None,
            HubProblem::SecretNotFound,
            &[
                "Secret 'iot-hub'",
                "namespace 'fleet'",
                "key 'connectionString'",
            ],
            true,
        ),
        (
            Some(secret_object("iot-hub", &[("conn", "x")])),
            HubProblem::SecretKeyNotFound,
            &[
                "no key 'connectionString'",
                "it has 'conn'",
                "connectionStringSecret.key",
            ],
            true,
        ),
        (
            Some(secret_object(
                "iot-hub",
                &[(
                    "connectionString",
                    &format!("HostName=h.azure-devices.net;SharedAccessKey={KEY}"),
                )],
            )),
            HubProblem::HubConfigInvalid,
            &[
                "Secret 'iot-hub' key 'connectionString'",
                "no SharedAccessKeyName",
                "HostName=<hub>.azure-devices.net;SharedAccessKeyName=<policy>",
            ],
            true,
        ),
        (
            // A bare key pasted in front: the message must not echo it.
            Some(secret_object(
                "iot-hub",
                &[("connectionString", &format!("{KEY};HostName=h"))],
            )),
            HubProblem::HubConfigInvalid,
            &[
                "key 'connectionString' does not hold a valid service connection string",
                "part number 1",
            ],
            false,
        ),
    ];
    for (secret, problem, names, announced) in steps {
        match secret {
            Some(s) => world.lock().secrets.insert("iot-hub".into(), s),
            None => world.lock().secrets.remove("iot-hub"),
        };
        let (result, seen) = pass(&ctx, &world).await;
        assert_eq!(problem_of(&result), Some(problem), "{result:?}");
        let mut expected = vec![
            format!("GET {HUB}"),
            format!("GET {SECRET}"),
            format!("PATCH {STATUS}"),
        ];
        if announced {
            expected.push(format!("POST {EVENTS}?"));
        }
        assert_eq!(lines(&seen), expected);
        let stalled = cond(&seen[2].body["status"], "Stalled");
        assert_eq!(
            (stalled["status"].as_str(), stalled["reason"].as_str()),
            (Some("True"), Some(problem.reason()))
        );
        let message = stalled["message"].as_str().unwrap();
        for name in names {
            assert!(message.contains(name), "`{name}` missing from: {message}");
        }
        if announced {
            assert_eq!(
                (
                    seen[3].body["type"].as_str(),
                    seen[3].body["reason"].as_str()
                ),
                (Some("Warning"), Some(problem.reason()))
            );
            assert_eq!(seen[3].body["note"].as_str(), Some(message));
        }
        // Retried: nothing new to say.
        let (again, retry) = pass(&ctx, &world).await;
        assert_eq!(
            lines(&retry),
            vec![format!("GET {HUB}"), format!("GET {SECRET}")],
            "a retry writes nothing"
        );
        errors.extend([
            result.unwrap_err().to_string(),
            again.unwrap_err().to_string(),
        ]);
        everything.extend(seen[2..].iter().map(|s| s.body.to_string()));
    }
    // Neither the status, nor the events, nor the error (which error_policy logs) holds
    // the key, or any part of the connection string but the host.
    for text in everything.iter().chain(&errors) {
        assert!(
            !text.contains(KEY) && !text.contains("c2VjcmV0"),
            "secret material in: {text}"
        );
    }
}

#[tokio::test]
async fn a_hub_without_the_secret_it_needs_is_invalid() {
    // `type: embedded` with a url needs a connection string; the CRD cannot require it.
    let mut w = world_of(rollout().finalized());
    w.hubs.insert(
        "default".into(),
        hub_object(
            "default",
            "u1",
            json!({"type": "embedded", "url": "https://hub.fleet:8443"}),
        ),
    );
    let (ctx, _hubs, world) = world(w);
    let (result, seen) = pass(&ctx, &world).await;
    assert_eq!(problem_of(&result), Some(HubProblem::HubConfigInvalid));
    let message = cond(&seen[1].body["status"], "Stalled")["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("type: embedded with url needs connectionStringSecret"),
        "{message}"
    );
}

#[tokio::test]
async fn an_in_process_hub_goes_with_its_hub_resource() {
    let mut w = world_of(rollout().finalized());
    w.hubs.insert(
        "default".into(),
        hub_object("default", "u1", json!({"type": "embedded"})),
    );
    let (ctx, hubs, world) = world(w);
    let (result, _) = pass(&ctx, &world).await;
    result.unwrap();
    let first = hubs
        .in_process("fleet", "default")
        .expect("an in-process hub");
    assert_eq!(
        first.list_configurations().len(),
        1,
        "the rollout wrote to it"
    );
    assert!(
        first.handles() > 1,
        "the map, the driver and the cycle task hold it"
    );

    // The Hub is deleted: the next reconcile drops the hub, its driver and its cycle task.
    world.lock().hubs.clear();
    let (result, _) = pass(&ctx, &world).await;
    assert_eq!(problem_of(&result), Some(HubProblem::HubNotFound));
    assert!(hubs.in_process("fleet", "default").is_none());
    assert!(hubs.cached_driver("fleet", "default").is_none());
    tokio::time::timeout(Duration::from_secs(5), async {
        while first.handles() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the cycle task lets go of the dropped hub");

    // Created again: a new, empty hub, whose driver writes the rollout's configuration anew.
    world.lock().hubs.insert(
        "default".into(),
        hub_object("default", "u2", json!({"type": "embedded"})),
    );
    let (result, _) = pass(&ctx, &world).await;
    result.unwrap();
    let second = hubs.in_process("fleet", "default").unwrap();
    assert_eq!(second.list_configurations().len(), 1);
    assert_eq!(first.handles(), 1, "the old hub stays gone");
}

#[tokio::test]
async fn a_hub_recreated_between_reconciles_gets_a_new_in_process_hub() {
    let mut w = world_of(rollout().finalized());
    w.hubs.insert(
        "default".into(),
        hub_object("default", "u1", json!({"type": "embedded"})),
    );
    let (ctx, hubs, world) = world(w);
    pass(&ctx, &world).await.0.unwrap();
    let first = hubs.in_process("fleet", "default").unwrap();

    // Deleted and created again under the same name without a reconcile seeing the gap.
    world.lock().hubs.insert(
        "default".into(),
        hub_object("default", "u2", json!({"type": "embedded"})),
    );
    pass(&ctx, &world).await.0.unwrap();
    let second = hubs.in_process("fleet", "default").unwrap();
    assert_eq!(
        second.list_configurations().len(),
        1,
        "the rollout's configuration is written to the new hub"
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        while first.handles() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the old hub and its cycle task are gone");
}

#[tokio::test]
async fn a_hub_spec_change_rebuilds_the_driver_and_keeps_the_in_process_hub() {
    let mut w = world_of(rollout().finalized());
    w.hubs.insert(
        "default".into(),
        hub_object("default", "u1", json!({"type": "embedded"})),
    );
    let (ctx, hubs, world) = world(w);
    pass(&ctx, &world).await.0.unwrap();
    let (hub, driver) = (
        hubs.in_process("fleet", "default").unwrap(),
        hubs.cached_driver("fleet", "default").unwrap(),
    );

    // Unchanged: the same driver (it holds the hub's traffic budgets).
    pass(&ctx, &world).await.0.unwrap();
    assert!(Arc::ptr_eq(
        &driver,
        &hubs.cached_driver("fleet", "default").unwrap()
    ));

    // New limits: a new driver on the same in-process hub (its state survives).
    world.lock().hubs.insert(
        "default".into(),
        hub_object(
            "default",
            "u1",
            json!({"type": "embedded", "limits": {"queriesPerMinute": 7}}),
        ),
    );
    pass(&ctx, &world).await.0.unwrap();
    assert!(
        !Arc::ptr_eq(&driver, &hubs.cached_driver("fleet", "default").unwrap()),
        "the driver is rebuilt"
    );
    let still = hubs.in_process("fleet", "default").unwrap();
    assert_eq!(still.list_configurations().len(), 1);
    assert!(
        still.handles() > 1 && hub.handles() == still.handles(),
        "the same hub"
    );
}

#[test]
fn a_stall_is_announced_on_its_transition_only() {
    let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let t1: jiff::Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
    let last = DeviceRolloutStatus {
        phase: Some(Phase::Healthy),
        ..Default::default()
    };
    let (stalled, event) = controller::hub_stalled(
        &last,
        HubProblem::SecretNotFound,
        "Secret 's' not found",
        Some(3),
        t0,
    );
    let event = event.expect("news");
    assert_eq!(
        (event.type_, event.reason.as_str()),
        (kube::runtime::events::EventType::Warning, "SecretNotFound")
    );
    assert_eq!(stalled.phase, Some(Phase::Healthy));
    assert_eq!(stalled.observed_generation, Some(3));
    // The same problem later: the same status (transition times kept), no event.
    let (again, event) = controller::hub_stalled(
        &stalled,
        HubProblem::SecretNotFound,
        "Secret 's' not found",
        Some(3),
        t1,
    );
    assert_eq!(again, stalled);
    assert!(event.is_none());
    // Another message under the same reason: the status changes, no event.
    let (reworded, event) = controller::hub_stalled(
        &stalled,
        HubProblem::SecretNotFound,
        "Secret 't' not found",
        Some(3),
        t1,
    );
    assert_ne!(reworded, stalled);
    assert!(event.is_none());
    // Another problem: news again.
    let (other, event) = controller::hub_stalled(
        &stalled,
        HubProblem::SecretKeyNotFound,
        "Secret 's' has no key 'k'",
        Some(3),
        t1,
    );
    assert_eq!(event.unwrap().reason, "SecretKeyNotFound");
    let c = crate::core::status::condition(&other, "Stalled").unwrap();
    assert_eq!(c.last_transition_time.0, t0, "still stalled: no transition");
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    assert_eq!(backoff(1), Duration::from_secs(5));
    assert_eq!(backoff(2), Duration::from_secs(10));
    assert_eq!(backoff(7), Duration::from_secs(300));
    assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
}

#[test]
fn transitions_name_phase_and_ring_changes_only() {
    let before = DeviceRolloutStatus::default();
    let mut after = before.clone();
    assert!(transitions(&before, &after).is_empty());
    after.phase = Some(Phase::RolledBack);
    after.message = Some("canary failed its gate".into());
    let ev = transitions(&before, &after);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].reason, "RolledBack");
    assert_eq!(ev[0].type_, kube::runtime::events::EventType::Warning);
    assert!(
        ev[0]
            .note
            .as_deref()
            .unwrap()
            .contains("none → RolledBack: canary failed its gate")
    );
    assert!(transitions(&after, &after).is_empty());
}

#[test]
fn status_patch_is_an_apply_configuration() {
    let p = status_patch(&DeviceRolloutStatus::default());
    assert_eq!(
        p,
        json!({"apiVersion": "ringmaster.dev/v1alpha1", "kind": "DeviceRollout", "status": {}})
    );
}

#[test]
fn settings_default_by_where_the_controller_runs() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        kube: KubeArgs,
    }
    let args = Cli::parse_from(["x", "--lease-namespace", "ops", "--identity", "pod-0"]).kube;
    let outside = args.settings(false, "default");
    assert!(!outside.leader_election);
    assert_eq!(outside.metrics_addr.to_string(), "127.0.0.1:8081");
    let inside = args.settings(true, "default");
    assert!(inside.leader_election);
    assert_eq!(inside.metrics_addr.to_string(), "0.0.0.0:8081");
    assert_eq!(
        (inside.lease_namespace.as_str(), inside.identity.as_str()),
        ("ops", "pod-0")
    );
    let off = Cli::parse_from(["x", "--leader-election=false"])
        .kube
        .settings(true, "default");
    assert!(!off.leader_election);
    let on = Cli::parse_from(["x", "--leader-election"])
        .kube
        .settings(false, "default");
    assert!(on.leader_election);
}

#[tokio::test]
async fn a_reconcile_is_counted_in_the_metrics() {
    let (_hub, driver) = hub();
    let metrics = Arc::new(super::metrics::Metrics::default());
    let m = metrics.clone();
    let (result, _) = play(rollout().finalized(), move |c| {
        let reporter: kube::runtime::events::Reporter = "ringmaster".into();
        Arc::new(super::controller::Context::new(
            c,
            Arc::new(super::hubs::FixedHub(driver)),
            reporter,
            m,
            Leadership::always(),
        ))
    })
    .await;
    result.unwrap();
    let text = metrics.encode();
    for line in [
        "ringmaster_reconciles_total 1",
        "ringmaster_rollouts{phase=\"Progressing\"} 1",
        "ringmaster_hub_actions_total{action=\"create\"} 1",
        "ringmaster_reconcile_duration_seconds_count 1",
        "ringmaster_hub_requests_total{operation=\"create\",code=\"200\"} 1",
        "ringmaster_hub_requests_total{operation=\"list\",code=\"200\"} 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
}

#[tokio::test]
async fn health_endpoints_report_readiness_and_role() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ready = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let health = super::metrics::Health {
        metrics: Arc::new(super::metrics::Metrics::default()),
        leader: Leadership::from_channel(rx),
        ready: ready.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, super::metrics::router(health))
            .await
            .unwrap()
    });
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let req = http.get(format!("{base}{path}"));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 503);
    ready.store(true, Ordering::Relaxed);
    assert_eq!(get("/readyz").await, (200, "ok (standby)\n".to_string()));
    tx.send(true).unwrap();
    assert_eq!(get("/readyz").await, (200, "ok (leader)\n".to_string()));
    let (code, text) = get("/metrics").await;
    assert_eq!(code, 200);
    assert!(text.contains("ringmaster_leader 1"), "{text}");
}

/// A world whose Hub `default` is an in-process hub (no devices).
fn embedded_world(
    ro: DeviceRollout,
) -> (Arc<super::controller::Context>, Arc<KubeHubs>, SharedWorld) {
    let mut w = world_of(ro);
    w.hubs.insert(
        "default".into(),
        hub_object("default", "u1", json!({"type": "embedded"})),
    );
    world(w)
}

#[tokio::test]
async fn the_finalizer_goes_with_the_resource_version_of_the_status_write() {
    // Issue 11, defect 2: the removal sent the resourceVersion read before the same
    // reconcile's status write, and always conflicted with it first.
    let (ctx, _hubs, world) = embedded_world(rollout().finalized().deleted());
    let (result, seen) = pass(&ctx, &world).await;
    assert!(result.is_ok(), "{result:?}: {:#?}", lines(&seen));
    let writes: Vec<&Seen> = seen.iter().filter(|s| s.method == "PATCH").collect();
    assert_eq!(
        writes.iter().map(|s| s.line()).collect::<Vec<_>>(),
        [format!("PATCH {STATUS}"), format!("PATCH {OBJECT_PATCH}")],
        "status, then the finalizer, with no conflict in between"
    );
    assert_eq!(writes[1].body["metadata"]["resourceVersion"], "101");
    assert_eq!(
        world.lock().rollout.pointer("/metadata/finalizers"),
        Some(&json!([]))
    );
}

/// The event bodies among `seen`.
fn events_of(seen: &[Seen]) -> Vec<Value> {
    seen.iter()
        .filter(|s| s.uri.starts_with(EVENTS))
        .map(|s| {
            assert_eq!(s.method, "POST", "every event is a new one: {}", s.line());
            s.body.clone()
        })
        .collect()
}

#[tokio::test]
async fn each_transition_is_its_own_event_with_its_own_text() {
    // Issue 11, defect 4: kube's Recorder folded a second `Progressing` into the first
    // (a PATCH raising its count), keeping "phase none → Progressing".
    let (ctx, _hubs, world) = embedded_world(rollout().finalized());
    let (_, first) = pass(&ctx, &world).await;
    let first = events_of(&first);
    assert_eq!(first[0]["reason"], "Progressing", "{first:#?}");
    world.lock().rollout["spec"]["suspend"] = json!(true);
    world.lock().rollout["metadata"]["generation"] = json!(2);
    let (_, paused) = pass(&ctx, &world).await;
    let paused = events_of(&paused);
    assert_eq!(paused.len(), 1, "{paused:#?}");
    assert_eq!(paused[0]["reason"], "Paused");
    world.lock().rollout["spec"]["suspend"] = json!(false);
    world.lock().rollout["metadata"]["generation"] = json!(3);
    let (_, resumed) = pass(&ctx, &world).await;
    let resumed = events_of(&resumed);
    assert_eq!(resumed[0]["reason"], "Progressing", "{resumed:#?}");
    let note = resumed[0]["note"].as_str().unwrap();
    assert!(note.starts_with("phase Paused → Progressing"), "{note}");
    let all = [&first[..], &paused[..], &resumed[..]].concat();
    let names: std::collections::BTreeSet<&str> = all
        .iter()
        .map(|e| e["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        first.len() + paused.len() + resumed.len(),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_long_rollout_name_still_makes_valid_event_names() {
    // Issue 11, defect 7: `<name>.<nanos>` went over 253 characters for names over
    // about 236, and the API server refused the events.
    let (_hub, driver) = hub();
    let mut ro = rollout().finalized();
    let long = format!("{}-x.y", "a".repeat(244));
    ro.metadata.name = Some(long.clone());
    let (_, seen) = play(ro, |c| context_with(c, driver)).await;
    let events = events_of(&seen);
    assert_eq!(events.len(), 2, "{:#?}", lines(&seen));
    // A DNS subdomain: labels of [a-z0-9-], each starting and ending alphanumeric.
    let subdomain = |name: &str| {
        name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
    };
    for e in &events {
        let name = e["metadata"]["name"].as_str().unwrap();
        assert!(name.len() <= 253, "{} characters: {name}", name.len());
        assert!(subdomain(name), "{name}");
        assert_eq!(e["regarding"]["name"], long.as_str());
    }
    assert_eq!(super::events::event_name("short", 255), "short.ff");
}

#[tokio::test]
async fn ready_follows_the_state_once_the_hub_problem_clears() {
    // Issue 11, defect 5: `Ready=False, SecretNotFound` stayed after the Secret was
    // created (with a host that cannot be reached) while `Stalled` said HubResolved.
    let driver = unreachable_driver();
    let (stalled, _) = controller::hub_stalled(
        &DeviceRolloutStatus::default(),
        HubProblem::SecretNotFound,
        "Secret 'iot-hub' not found",
        Some(1),
        jiff::Timestamp::UNIX_EPOCH,
    );
    let mut ro = rollout().finalized();
    ro.status = Some(stalled);
    let (result, seen) = play(ro, |c| context_with(c, driver)).await;
    assert!(result.is_ok(), "{result:?}");
    let status = &seen[0].body["status"];
    for type_ in ["Ready", "Reconciling", "Stalled"] {
        assert_ne!(
            cond_of(status, type_).1,
            "SecretNotFound",
            "{type_} still names the old problem: {status}"
        );
    }
    assert_eq!(
        cond_of(status, "Ready"),
        ("False".into(), "HubError".into()),
        "{status}"
    );
}

#[tokio::test]
async fn a_rollout_stalled_on_its_hub_from_the_start_has_a_phase() {
    // Issue 11, defect 7: the phase was blank (`kubectl get dro` showed nothing).
    let (ctx, _hubs, world) = world(world_of(rollout().finalized()));
    let (result, seen) = pass(&ctx, &world).await;
    assert_eq!(problem_of(&result), Some(HubProblem::HubNotFound));
    assert_eq!(
        seen[1].body["status"]["phase"], "Pending",
        "{}",
        seen[1].body
    );
}

#[tokio::test]
async fn a_blocked_deletion_is_not_healthy_and_is_announced() {
    // Issue 11, defect 7: the phase stayed Healthy during `CleanupBlocked`, with no event.
    let (_hub, driver) = hub();
    let (ro, _) = settle(rollout().finalized(), &driver, 5).await;
    let (_, seen) = play(ro.deleted(), |c| context_with(c, driver)).await;
    let status = &seen[0].body["status"];
    assert_eq!(
        cond_of(status, "Stalled"),
        ("True".into(), "CleanupBlocked".into())
    );
    assert_eq!(status["phase"], "Failed", "{status}");
    let events = events_of(&seen);
    assert!(
        events.iter().any(|e| e["type"] == "Warning"
            && e["note"].as_str().unwrap().contains("force-delete")),
        "{events:#?}"
    );
}

#[tokio::test]
async fn reconciles_of_one_hub_share_a_listing_per_pass() {
    // Issue 11, defect 3: every reconcile listed the hub's configurations, a
    // configuration operation each.
    let (_hub, driver) = hub();
    let mut second = rollout().finalized();
    second.metadata.name = Some("chiller-fw-2".into());
    second.metadata.uid = Some("6d9c0f4e-0000-4000-8000-000000000002".into());
    // Both settled first (their writes done), each on its own.
    let (first, _) = settle(rollout().finalized(), &driver, 5).await;
    let (second, _) = settle(second, &driver, 5).await;
    let metrics = Arc::new(super::metrics::Metrics::default());
    let (client, server) = mock_client();
    let object = serde_json::to_value(&first).unwrap();
    let server = tokio::spawn(server.echo_all(object));
    let ctx = Arc::new(
        super::controller::Context::new(
            client,
            Arc::new(super::hubs::FixedHub(driver)),
            "ringmaster".into(),
            metrics.clone(),
            Leadership::always(),
        )
        .with_clock(Arc::new(ManualClock::at_epoch())),
    );
    let (a, b) = tokio::join!(
        reconcile(Arc::new(first), ctx.clone()),
        reconcile(Arc::new(second), ctx.clone())
    );
    a.unwrap();
    b.unwrap();
    drop(ctx);
    server.await.unwrap();
    let text = metrics.encode();
    assert!(
        text.contains("ringmaster_hub_requests_total{operation=\"list\",code=\"200\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_spent_hub_budget_is_a_condition_not_the_message() {
    // Issue 11, defect 3: "waiting for the hub's configuration-operation budget" replaced
    // the message that explains the rollout's state (a rollback, say).
    let clock = ManualClock::at_epoch();
    let hub = EmbeddedHub::in_memory(Arc::new(clock.clone()));
    let limits = crate::resources::HubLimits {
        configuration_writes_per_minute: 1,
        ..Default::default()
    };
    let driver = Arc::new(Driver::with_limits(Arc::new(hub), Arc::new(clock), limits));
    let mut ro = rollout().finalized();
    ro.status = Some(DeviceRolloutStatus {
        phase: Some(Phase::RolledBack),
        message: Some("ring canary failed its gate; rolled back".into()),
        ..Default::default()
    });
    // The one token goes to the first look; the second finds the budget spent.
    let (_, _) = play(ro.clone(), |c| context_with(c, driver.clone())).await;
    let (result, seen) = play(ro, |c| context_with(c, driver)).await;
    assert!(result.is_ok(), "{result:?}");
    let status = &seen[0].body["status"];
    assert_eq!(
        status["message"], "ring canary failed its gate; rolled back",
        "{status}"
    );
    assert_eq!(
        cond_of(status, "Throttled"),
        ("True".into(), "HubBudget".into())
    );
}

#[test]
fn status_writes_do_not_wake_the_controller() {
    // Issue 11, defect 3: each status write woke another reconcile.
    let object = |v: Value| -> kube::api::DynamicObject { serde_json::from_value(v).unwrap() };
    let base = json!({
        "apiVersion": "ringmaster.dev/v1alpha1", "kind": "DeviceRollout",
        "metadata": {"name": "a", "namespace": "fleet", "generation": 1, "resourceVersion": "5"},
        "spec": {"target": "*"}
    });
    let h = |v: &Value| super::wakes(&object(v.clone()));
    let mut status_only = base.clone();
    status_only["status"] = json!({"phase": "Healthy"});
    status_only["metadata"]["resourceVersion"] = json!("6");
    assert_eq!(h(&base), h(&status_only));
    for change in [
        json!({"metadata": {"generation": 2}}),
        json!({"metadata": {"annotations": {"ringmaster.dev/operation": "promote"}}}),
        json!({"metadata": {"finalizers": ["ringmaster.dev/cleanup"]}}),
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    ] {
        let mut changed = base.clone();
        for (k, v) in change["metadata"].as_object().unwrap() {
            changed["metadata"][k] = v.clone();
        }
        assert_ne!(h(&base), h(&changed), "{change}");
    }
}

#[tokio::test]
async fn an_object_that_cannot_be_read_stalls_alone_naming_the_field() {
    // Issue 11, defect 1: one out-of-range integer made every LIST fail.
    let mut value = serde_json::to_value(rollout().finalized()).unwrap();
    value["spec"]["priority"] = json!(3_000_000_000u64);
    let obj: kube::api::DynamicObject = serde_json::from_value(value.clone()).unwrap();
    let problem = controller::read_rollout(&obj).unwrap_err();
    assert!(problem.starts_with("spec.priority: "), "{problem}");
    assert!(problem.contains("3000000000"), "{problem}");

    let (client, server) = mock_client();
    let server = tokio::spawn(server.echo_all(value));
    let ctx = context(
        client,
        Arc::new(super::hubs::FixedHub(hub().1)),
        Leadership::always(),
    );
    let result = controller::reconcile_object(Arc::new(obj), ctx.clone()).await;
    assert_eq!(result.unwrap(), Action::await_change());
    drop(ctx);
    let seen = server.await.unwrap();
    assert_eq!(
        lines(&seen),
        vec![format!("PATCH {STATUS}"), format!("POST {EVENTS}?")]
    );
    let status = &seen[0].body["status"];
    assert_eq!(
        cond_of(status, "Stalled"),
        ("True".into(), "InvalidSpec".into())
    );
    assert!(
        cond(status, "Stalled")["message"]
            .as_str()
            .unwrap()
            .contains("spec.priority"),
        "{status}"
    );
    assert_eq!(status["phase"], "Failed");
    assert_eq!(seen[1].body["type"], "Warning");
    assert!(
        seen[1].body["note"]
            .as_str()
            .unwrap()
            .contains("spec.priority")
    );
}

#[tokio::test]
async fn readyz_is_false_while_the_controller_cannot_list() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (client, mut server) = mock_client();
    let ready = Arc::new(AtomicBool::new(true));
    let ctx = Arc::new(
        super::controller::Context::new(
            client,
            Arc::new(super::hubs::FixedHub(hub().1)),
            "ringmaster".into(),
            Arc::new(super::metrics::Metrics::default()),
            Leadership::always(),
        )
        .with_ready(ready.clone()),
    );
    let controller = tokio::spawn(async move { super::run_controller(ctx, Some("fleet")).await });
    // Every request refused, as an API server that is down or forbids the list.
    let failing = tokio::spawn(async move {
        while server
            .answer(|_| {
                (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503, "message": "down"}),
                )
            })
            .await
            .is_some()
        {}
    });
    let mut waited = 0;
    while ready.load(Ordering::Relaxed) && waited < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert!(
        !ready.load(Ordering::Relaxed),
        "still ready while nothing can be listed"
    );
    controller.abort();
    failing.abort();
}

#[tokio::test]
async fn a_hub_that_cannot_be_read_is_invalid_naming_the_field() {
    // Issue 11, defect 1: a Hub with `limits.queriesPerMinute: 5000000000`, stored before
    // the schema bounded it, was an API error retried forever with nothing in the status.
    let mut w = world_of(rollout().finalized());
    w.hubs.insert(
        "default".into(),
        hub_object(
            "default",
            "u1",
            json!({"type": "embedded", "limits": {"queriesPerMinute": 5_000_000_000u64}}),
        ),
    );
    let (ctx, _hubs, world) = world(w);
    let (result, seen) = pass(&ctx, &world).await;
    assert_eq!(
        problem_of(&result),
        Some(HubProblem::HubConfigInvalid),
        "{result:?}"
    );
    let status = &seen[1].body["status"];
    let message = cond(status, "Stalled")["message"].as_str().unwrap();
    assert!(
        message.contains("spec.limits.queriesPerMinute"),
        "{message}"
    );
}
