//! The fuzz targets of ringmaster, as plain functions of a byte slice.
//!
//! Each function feeds its input to the library's real parsing code and panics only when
//! the library does, or when an invariant the library promises is broken (printed query
//! text must parse back to the same tree, a connection string must survive its own
//! `expose`, an accepted token must be unexpired and correctly signed, the hub must never
//! answer 500). The `src/bin/<target>.rs` binaries wrap them in `afl::fuzz!`; `replay`
//! runs them over files without AFL (corpus regression runs and crash reproduction).
//! See `fuzz/README.md`.

use ringmaster::clock::ManualClock;
use ringmaster::core::gate::{self, EffectiveGate, GateInputs};
use ringmaster::hub::EmbeddedHub;
use ringmaster::hub::server::auth::{Authenticator, DEFAULT_POLICIES, Policy};
use ringmaster::hub::server::{ServerOptions, router};
use ringmaster::iothub::configuration::{Configuration, ConfigurationContent};
use ringmaster::iothub::device::Device;
use ringmaster::iothub::query::{Condition, MAX_QUERY_CHARS, Query};
use ringmaster::iothub::sas::{self, ConnectionString, SasKey, SasToken};
use ringmaster::iothub::value::{JsonRow, Row};
use ringmaster::manifest::{self, Document};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};

/// The targets by name, for `replay` and `scripts/fuzz`.
pub const TARGETS: [(&str, fn(&[u8])); 7] = [
    ("query", query),
    ("manifest", manifest),
    ("sas", sas),
    ("connection_string", connection_string),
    ("bulk", bulk),
    ("twin", twin),
    ("gate", gate),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

fn sample_twin() -> Value {
    json!({
        "deviceId": "d1",
        "etag": "AAAAAAAAAAE=",
        "tags": {"environment": "prod", "ring": "canary", "n": 5, "f": 2.5, "flag": true,
                 "nothing": null, "list": [1, 2, "x"], "obj": {"a": 1}, "Mixed": "Case"},
        "properties": {
            "desired": {"x": 1},
            "reported": {"model": "4000x", "firmware": {"version": "2.4.0", "status": "Current"}}
        },
        "configurations": {"cfg-1": {"status": "applied"}, "cfg-2": {"status": "targeted"}}
    })
}

// ----- 1. the query language ----------------------------------------------------------

/// `Condition::parse` and `Query::parse` on the text; whatever parses is evaluated,
/// projected and aggregated over a fixed twin, and its printed form must parse back to
/// the same tree (the contract of `src/iothub/query/mod.rs`).
pub fn query(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let twin = sample_twin();
    let other = json!({"deviceId": "d2", "tags": {"n": "5", "ring": "broad"}});
    let rows = [JsonRow(&twin), JsonRow(&other)];
    if let Ok(c) = Condition::parse(s) {
        for r in &rows {
            let _ = c.matches(r);
        }
        let _ = c.paths();
        if let Some(e) = c.expr() {
            let printed = e.to_string();
            if printed.chars().count() <= MAX_QUERY_CHARS {
                match Condition::parse(&printed) {
                    Ok(again) => assert_eq!(again.expr(), Some(e), "printed as {printed:?}"),
                    Err(err) => panic!("{s:?} printed as {printed:?}, which does not parse: {err}"),
                }
            }
        }
    }
    if let Ok(q) = Query::parse(s) {
        for r in &rows {
            let _ = q.condition().map(|c| c.matches(r));
            let _ = q.project(r);
        }
        let _ = (q.top(), q.item_type(), q.is_aggregate());
        let refs: Vec<&dyn Row> = rows.iter().map(|r| r as &dyn Row).collect();
        let _ = q.aggregate(&mut refs.into_iter());
        let printed = q.select().to_string();
        if printed.chars().count() <= MAX_QUERY_CHARS {
            match Query::parse(&printed) {
                Ok(again) => assert_eq!(again.select(), q.select(), "printed as {printed:?}"),
                Err(err) => panic!("{s:?} printed as {printed:?}, which does not parse: {err}"),
            }
        }
    }
}

// ----- 2. the manifest loader ---------------------------------------------------------

/// `load_manifests` on the text; each rollout it accepts has its gates worked out and
/// evaluated, and its targets parse (validation promised they would).
pub fn manifest(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let Ok(docs) = manifest::load_manifests("fuzz.yaml", s) else {
        return;
    };
    for doc in docs {
        let Document::DeviceRollout(ro) = doc else {
            continue;
        };
        let spec = &ro.spec;
        if let Err(e) = Condition::parse(&spec.target) {
            panic!("an accepted rollout's target does not parse: {e}");
        }
        let inputs = GateInputs {
            targeted: 10,
            applied: 9,
            metrics: spec.metrics.keys().map(|k| (k.clone(), 3)).collect(),
        };
        for i in 0..spec.rings.len() {
            let g = EffectiveGate::for_ring(spec, i);
            let _ = gate::evaluate(&g, &inputs);
        }
    }
}

// ----- 3. SAS tokens and connection strings -------------------------------------------

/// The hub's key for tests: fixed, so that runs are reproducible.
const KEY: &str = "ZnV6ei1rZXktZm9yLXJpbmdtYXN0ZXItZnV6ei10ZXN0cw==";
const HOST: &str = "fuzz.azure-devices.net";
/// "Now" for token checks (2026-01-01T00:00:00Z).
const NOW: i64 = 1_767_225_600;

fn key() -> SasKey {
    SasKey::from_base64(KEY).expect("the fixed key is base64")
}

fn authenticator() -> Authenticator {
    let k = key();
    Authenticator::new(
        HOST,
        DEFAULT_POLICIES
            .iter()
            .map(|(name, rights)| Policy {
                name: name.to_string(),
                key: k.clone(),
                rights: *rights,
            })
            .collect(),
    )
}

/// The server's token check (`Authenticator::check`, which parses with `SasToken::parse`
/// and verifies with `SasKey::verify`) on the text as an `Authorization` header. A second
/// pass signs the fuzzer's fields with the hub's key, so that the checks after the
/// signature (expiry, audience) see inputs that get that far.
pub fn sas(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let auth = authenticator();
    let k = key();
    if let Some(t) = SasToken::parse(s) {
        let _ = (t.expiry(), t.resource(), k.verify(&t));
    }
    if let Ok(p) = auth.check(Some(s), NOW) {
        // Only a token signed with the key can pass; the fuzzer cannot forge one.
        let t = SasToken::parse(s).expect("an accepted token parses");
        assert!(k.verify(&t), "accepted without a valid signature");
        assert!(t.expiry().is_some_and(|e| e >= NOW), "accepted expired");
        let _ = &p.name;
    }
    // Signed: the input is `sr \n se \n skn`, each as sent.
    let mut parts = s.splitn(3, '\n');
    let (sr, se, skn) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("iothubowner"),
    );
    if [sr, se, skn].iter().any(|p| p.contains('&')) {
        return;
    }
    let sig = sas::encode(&k.sign(sr, se));
    let header = format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn={skn}");
    if let Ok(p) = auth.check(Some(&header), NOW) {
        let t = SasToken::parse(&header).expect("an accepted token parses");
        assert!(t.expiry().is_some_and(|e| e >= NOW), "accepted expired");
        let host = t
            .resource()
            .trim()
            .trim_end_matches('/')
            .to_ascii_lowercase();
        assert!(
            host.contains(HOST),
            "accepted a token for {host:?}, not for {HOST}"
        );
        let _ = &p.name;
    }
}

/// `ConnectionString::parse` on the text: what parses survives `expose` and parsing
/// again; neither its `Debug` nor an error depends on the key's value (so neither can
/// show it): the same text with another key gives the same `Debug` and the same error.
pub fn connection_string(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let parsed = ConnectionString::parse(s);
    // The text with every SharedAccessKey value replaced by another one that is as valid.
    let other_key = |v: &str| {
        if SasKey::from_base64(v).is_ok() {
            "b3RoZXIta2V5"
        } else {
            "!"
        }
    };
    let swapped: Vec<String> = s
        .trim()
        .split(';')
        .map(|part| match part.split_once('=') {
            Some((k, v)) if k.trim() == "SharedAccessKey" => format!("{k}={}", other_key(v)),
            _ => part.to_string(),
        })
        .collect();
    let swapped = ConnectionString::parse(&swapped.join(";"));
    match parsed {
        Ok(cs) => {
            let again = ConnectionString::parse(&cs.expose())
                .unwrap_or_else(|e| panic!("exposed text does not parse again: {e}"));
            assert_eq!(again, cs);
            let other = swapped.expect("the same text with another key parses");
            assert_eq!(
                format!("{cs:?}"),
                format!("{other:?}"),
                "Debug depends on the key"
            );
        }
        Err(e) => assert_eq!(Err(e), swapped.map(drop), "the error depends on the key"),
    }
}

// ----- 4. bulk-device JSON and twin patches, through the hub's REST router -------------

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    // Expires in 2100: the router checks tokens against the wall clock.
    TOKEN.get_or_init(|| key().token(HOST, "iothubowner", 4_102_444_800))
}

/// A small hub: devices d0 and d1 (d1 with tags), one configuration targeting canaries.
fn small_hub() -> (EmbeddedHub, axum::Router) {
    let hub = EmbeddedHub::in_memory(Arc::new(ManualClock::at_epoch()));
    hub.create_device(Device::new("d0")).expect("d0");
    hub.create_device_with_twin(
        Device::new("d1"),
        &json!({"tags": {"ring": "canary", "n": 5}, "properties": {"desired": {"x": 1}}}),
    )
    .expect("d1");
    hub.create_configuration(&Configuration {
        id: "cfg-1".into(),
        target_condition: "tags.ring='canary' AND tags.n > 1".into(),
        priority: 10,
        content: ConfigurationContent {
            device_content: Some(
                json!({"properties.desired.firmware": {"version": "2.4.0"}})
                    .as_object()
                    .expect("an object")
                    .clone(),
            ),
            ..Default::default()
        },
        metrics: serde_json::from_value(json!({"queries": {
            "current": "SELECT deviceId FROM devices WHERE properties.reported.firmware.version='2.4.0'"
        }}))
        .expect("metrics"),
        ..Default::default()
    })
    .expect("cfg-1");
    let opts = ServerOptions::new(authenticator());
    let app = router(hub.clone(), opts);
    (hub, app)
}

fn call(app: &axum::Router, method: &str, uri: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use tower::ServiceExt as _;
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", token())
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_vec()))
        .expect("a request");
    runtime().block_on(async {
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("a body");
        (status, bytes.to_vec())
    })
}

/// The hub answers 500 only when an operation panicked (faults are off): a bug.
fn no_500(what: &str, (status, body): (u16, Vec<u8>)) -> (u16, Vec<u8>) {
    assert!(
        status != 500,
        "{what} answered 500: {}",
        String::from_utf8_lossy(&body)
    );
    (status, body)
}

const V: &str = "api-version=2021-04-12";

/// The body of `POST /devices` (a bulk import) on a small hub; then the hub must still
/// list its devices, run a cycle and answer queries.
pub fn bulk(data: &[u8]) {
    let (hub, app) = small_hub();
    no_500(
        "POST /devices",
        call(&app, "POST", &format!("/devices?{V}"), data),
    );
    hub.run_cycle().expect("a cycle after a bulk call");
    let (status, body) = no_500(
        "GET /devices",
        call(&app, "GET", &format!("/devices?{V}&top=1000"), b""),
    );
    assert_eq!(status, 200);
    let listed: Value = serde_json::from_slice(&body).expect("the device list is JSON");
    let n = listed.as_array().map_or(0, Vec::len);
    assert_eq!(n as u64, hub.statistics().total_device_count);
    for d in hub.list_devices(1000) {
        hub.get_twin(&d.device_id)
            .expect("a listed device has a twin");
    }
}

/// The body of `PATCH /twins/d1` and of `PUT /twins/d1` on a small hub; after each the
/// twin must still read back, and a cycle must run.
pub fn twin(data: &[u8]) {
    let (hub, app) = small_hub();
    for method in ["PATCH", "PUT"] {
        let (status, _) = no_500(
            "twin update",
            call(&app, method, &format!("/twins/d1?{V}"), data),
        );
        hub.run_cycle().expect("a cycle after a twin update");
        let (get, body) = no_500(
            "GET /twins/d1",
            call(&app, "GET", &format!("/twins/d1?{V}"), b""),
        );
        assert_eq!(get, 200, "{}", String::from_utf8_lossy(&body));
        let twin: Value = serde_json::from_slice(&body).expect("the twin is JSON");
        if status == 200 {
            assert_eq!(twin["deviceId"], "d1");
        }
        let _ = hub.query(
            "SELECT deviceId FROM devices WHERE tags.ring='canary'",
            None,
            None,
        );
    }
}

// ----- 5. CEL gate expressions --------------------------------------------------------

/// `gate::check` (what validation runs on `success` and `failure`) and `gate::run` /
/// `gate::evaluate` (what the controller runs on every gate) on the text.
pub fn gate(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let names: BTreeSet<String> = ["current", "failed"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let _ = gate::check(s, &names);
    for (targeted, applied, each) in [
        (100u64, 80u64, 7u64),
        (0, 0, 0),
        (u64::MAX, u64::MAX, u64::MAX),
    ] {
        let inputs = GateInputs {
            targeted,
            applied,
            metrics: names
                .iter()
                .map(|m| (m.clone(), each))
                .collect::<BTreeMap<_, _>>(),
        };
        let _ = gate::run(s, &inputs);
    }
    let g = EffectiveGate {
        min_applied: 1,
        bake: jiff::SignedDuration::ZERO,
        deadline: jiff::SignedDuration::from_hours(1),
        success: Some(s.to_string()),
        failure: Some(s.to_string()),
    };
    let _ = gate::evaluate(
        &g,
        &GateInputs {
            targeted: 10,
            applied: 10,
            metrics: BTreeMap::new(),
        },
    );
}
