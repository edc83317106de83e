//! The served hub answers like Azure IoT Hub: auth, api-versions, status codes, etags,
//! errors, bulk calls, paging, throttles and faults, and bad input that writes nothing.

mod common;

use common::TestServer;
use reqwest::Method;
use ringmaster::clock::SystemClock;
use ringmaster::hub::server::IfMatchMode;
use ringmaster::hub::server::limits::{Faults, ThrottleLimits};
use ringmaster::hub::{EmbeddedHub, HubOptions};
use serde_json::{Value, json};
use std::sync::Arc;

const OWNER: &str = "iothubowner";

async fn device(s: &TestServer, id: &str) -> Value {
    let r = s
        .call(
            Method::PUT,
            &format!("/devices/{id}"),
            OWNER,
            Some(json!({"deviceId": id})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn device_count(s: &TestServer) -> u64 {
    s.hub.statistics().total_device_count
}

// ----- auth ------------------------------------------------------------------------

#[tokio::test]
async fn no_endpoint_answers_without_a_valid_token() {
    let s = TestServer::start(|_| {}).await;
    let routes = [
        (Method::GET, "/configurations"),
        (Method::GET, "/configurations/c1"),
        (Method::PUT, "/configurations/c1"),
        (Method::POST, "/configurations/testQueries"),
        (Method::GET, "/twins/d1"),
        (Method::PATCH, "/twins/d1"),
        (Method::POST, "/devices/query"),
        (Method::GET, "/devices"),
        (Method::POST, "/devices"),
        (Method::PUT, "/devices/d1"),
        (Method::DELETE, "/devices/d1"),
        (Method::GET, "/statistics/devices"),
        (Method::GET, "/no/such/route"),
    ];
    let owner = s.keys[OWNER].clone();
    let now = jiff::Timestamp::now().as_second();
    let expired = owner.token(&s.host, OWNER, now - 10);
    let unknown_policy = owner.token(&s.host, "nobody", now + 600);
    let wrong_key = s.keys["service"].token(&s.host, OWNER, now + 600);
    let tampered = owner
        .token(&s.host, OWNER, now + 600)
        .replace("se=", "se=1");
    let other_hub = owner.token("other.azure-devices.net", OWNER, now + 600);
    for (m, path) in routes {
        for auth in [
            None,
            Some("Bearer abc"),
            Some(expired.as_str()),
            Some(unknown_policy.as_str()),
            Some(wrong_key.as_str()),
            Some(tampered.as_str()),
            Some(other_hub.as_str()),
        ] {
            let r = s
                .raw(m.clone(), &s.url(path), auth, &[], Some(b"{}".to_vec()))
                .await;
            r.assert_error(401, "IotHubUnauthorizedAccess");
        }
    }
    assert_eq!(device_count(&s), 0, "nothing was written");
}

#[tokio::test]
async fn each_policy_reaches_only_what_its_rights_allow() {
    let s = TestServer::start(|_| {}).await;
    device(&s, "d1").await;
    // registryRead: identities read-only; no twins, no configurations.
    assert_eq!(
        s.call(Method::GET, "/devices/d1", "registryRead", None)
            .await
            .status,
        200
    );
    assert_eq!(
        s.call(Method::GET, "/statistics/devices", "registryRead", None)
            .await
            .status,
        200
    );
    s.call(Method::PUT, "/devices/d2", "registryRead", Some(json!({})))
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    s.call(Method::GET, "/twins/d1", "registryRead", None)
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    // registryReadWrite: identities, still no twins.
    assert_eq!(
        s.call(
            Method::PUT,
            "/devices/d2",
            "registryReadWrite",
            Some(json!({}))
        )
        .await
        .status,
        200
    );
    s.call(
        Method::PATCH,
        "/twins/d1",
        "registryReadWrite",
        Some(json!({"tags": {"a": 1}})),
    )
    .await
    .assert_error(401, "IotHubUnauthorizedAccess");
    // service: twins and configurations, no identities.
    assert_eq!(
        s.call(Method::GET, "/twins/d1", "service", None)
            .await
            .status,
        200
    );
    assert_eq!(
        s.call(Method::GET, "/configurations", "service", None)
            .await
            .status,
        200
    );
    s.call(Method::GET, "/devices/d1", "service", None)
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    s.call(Method::DELETE, "/devices/d1", "service", None)
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    // device: nothing on the service API.
    s.call(Method::GET, "/twins/d1", "device", None)
        .await
        .assert_error(401, "IotHubUnauthorizedAccess");
    assert_eq!(device_count(&s), 2);
}

/// Every method on every route (and on no route) passes the same rights check: a policy
/// without the rights gets 401, never a 2xx, a 404 that says whether a device exists, a 405
/// or a 400. HEAD is GET without a body and needs what GET needs.
#[tokio::test]
async fn every_method_on_every_route_checks_rights_first() {
    let s = TestServer::start(|_| {}).await;
    device(&s, "d1").await;
    let r = s
        .call(
            Method::PUT,
            "/configurations/c1",
            OWNER,
            Some(config("c1", "*")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    const SVC: &str = "ServiceConnect";
    const READ: &str = "RegistryRead";
    const WRITE: &str = "RegistryWrite";
    // What each request needs, by the hub's documented rights: twins, queries and
    // configurations ServiceConnect; device identities RegistryRead to read (GET, HEAD)
    // and RegistryWrite for anything else; statistics RegistryRead; an unknown route any
    // service right (the `device` policy reaches nothing).
    let needs = |m: &Method, path: &str| -> &str {
        let read = *m == Method::GET || *m == Method::HEAD;
        match path {
            "/devices/query" if *m == Method::POST => SVC,
            "/devices" | "/devices/d1" | "/devices/nobody" | "/devices/query" if read => READ,
            "/devices" | "/devices/d1" | "/devices/nobody" | "/devices/query" => WRITE,
            "/statistics/devices" => READ,
            "/no/such/route" => "any",
            _ => SVC,
        }
    };
    let routes = [
        "/twins/d1",
        "/twins/nobody",
        "/devices/d1",
        "/devices/nobody",
        "/configurations/c1",
        "/configurations/nothing",
        "/configurations",
        "/configurations/testQueries",
        "/devices/query",
        "/statistics/devices",
        "/devices",
        "/no/such/route",
    ];
    let methods = [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::PATCH,
        Method::POST,
        Method::DELETE,
    ];
    let now = jiff::Timestamp::now().as_second();
    let wrong_key = s.keys["service"].token(&s.host, OWNER, now + 600);
    // (name, token, its rights by name)
    let policies: Vec<(&str, Option<String>, &[&str])> = vec![
        ("none", None, &[]),
        ("wrong key", Some(wrong_key), &[]),
        ("device", Some(s.token("device")), &[]),
        ("registryRead", Some(s.token("registryRead")), &[READ]),
        ("service", Some(s.token("service")), &[SVC]),
        (OWNER, Some(s.token(OWNER)), &[SVC, READ, WRITE]),
    ];
    let mut leaks = Vec::new();
    for path in routes {
        for m in &methods {
            let needs = needs(m, path);
            for (name, token, rights) in &policies {
                let allowed = if needs == "any" {
                    !rights.is_empty()
                } else {
                    rights.contains(&needs)
                };
                if allowed {
                    continue;
                }
                // Writes that were allowed would change what the next requests see; only
                // refusals are sent, so the hub stays as it was set up.
                let r = s
                    .raw(
                        m.clone(),
                        &s.url(path),
                        token.as_deref(),
                        &[],
                        Some(b"{}".to_vec()),
                    )
                    .await;
                if r.status != 401 {
                    leaks.push(format!(
                        "{m} {path} as {name}: {} etag {:?}",
                        r.status,
                        r.etag()
                    ));
                } else if *m != Method::HEAD {
                    r.assert_error(401, "IotHubUnauthorizedAccess");
                } else {
                    assert_eq!(
                        r.code(),
                        "IotHubUnauthorizedAccess",
                        "HEAD {path} as {name}"
                    );
                    assert!(r.etag().is_none(), "HEAD {path} as {name} shows an etag");
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "answers without the rights:\n{}",
        leaks.join("\n")
    );
    // What a policy with the rights sees: HEAD is GET without a body.
    let r = s.call(Method::HEAD, "/twins/d1", "service", None).await;
    assert_eq!(r.status, 200);
    assert!(r.etag().is_some());
    let r = s
        .call(Method::HEAD, "/devices/nobody", "registryRead", None)
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(device_count(&s), 1, "nothing was written");
    assert!(s.hub.get_configuration("c1").is_ok());
}

#[tokio::test]
async fn api_versions_are_checked() {
    let s = TestServer::start(|_| {}).await;
    let tok = s.token(OWNER);
    let base = format!("http://{}", s.addr);
    for v in ["2021-04-12", "2020-09-30", "2024-03-31"] {
        let r = s
            .raw(
                Method::GET,
                &format!("{base}/statistics/devices?api-version={v}"),
                Some(&tok),
                &[],
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{v}");
    }
    s.raw(
        Method::GET,
        &format!("{base}/statistics/devices"),
        Some(&tok),
        &[],
        None,
    )
    .await
    .assert_error(400, "InvalidProtocolVersion");
    s.raw(
        Method::GET,
        &format!("{base}/statistics/devices?api-version=2016-11-14"),
        Some(&tok),
        &[],
        None,
    )
    .await
    .assert_error(400, "InvalidProtocolVersion");
}

// ----- devices ---------------------------------------------------------------------

#[tokio::test]
async fn device_identities_follow_put_semantics_and_etags() {
    let s = TestServer::start(|_| {}).await;
    let r = s
        .call(
            Method::PUT,
            "/devices/chiller-1",
            OWNER,
            Some(json!({"deviceId": "chiller-1", "someFutureField": 1})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let etag = r.body["etag"].as_str().unwrap().to_string();
    assert_eq!(
        r.etag().unwrap(),
        format!("\"{etag}\""),
        "ETag header is the quoted body etag"
    );
    assert!(
        r.body["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .len()
            > 20,
        "keys are generated"
    );

    // PUT on an existing id without If-Match is a create: 409.
    s.call(Method::PUT, "/devices/chiller-1", OWNER, Some(json!({})))
        .await
        .assert_error(409, "DeviceAlreadyExists");
    // A stale etag: 412, unchanged.
    s.call_with(
        Method::PUT,
        "/devices/chiller-1",
        OWNER,
        &[("if-match", "\"bm9wZQ==\"")],
        Some(json!({"status": "disabled"})),
    )
    .await
    .assert_error(412, "PreconditionFailed");
    assert_eq!(s.hub.get_device("chiller-1").unwrap().status, "enabled");
    // The right etag updates.
    let quoted = format!("\"{etag}\"");
    let r = s
        .call_with(
            Method::PUT,
            "/devices/chiller-1",
            OWNER,
            &[("if-match", &quoted)],
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "disabled");
    // If-Match on a device that does not exist: 404.
    s.call_with(
        Method::PUT,
        "/devices/ghost",
        OWNER,
        &[("if-match", "*")],
        Some(json!({})),
    )
    .await
    .assert_error(404, "DeviceNotFound");

    let r = s.call(Method::GET, "/devices/chiller-1", OWNER, None).await;
    assert_eq!(r.status, 200);
    assert!(r.etag().is_some());
    let r = s.call(Method::GET, "/devices?top=5", OWNER, None).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    let r = s
        .call(Method::GET, "/statistics/devices", OWNER, None)
        .await;
    assert_eq!(
        r.body,
        json!({"totalDeviceCount": 1, "enabledDeviceCount": 0, "disabledDeviceCount": 1})
    );

    let r = s
        .call_with(
            Method::DELETE,
            "/devices/chiller-1",
            OWNER,
            &[("if-match", "\"*\"")],
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    s.call(Method::GET, "/devices/chiller-1", OWNER, None)
        .await
        .assert_error(404, "DeviceNotFound");
    s.call(Method::DELETE, "/devices/chiller-1", OWNER, None)
        .await
        .assert_error(404, "DeviceNotFound");
}

#[tokio::test]
async fn bad_device_input_writes_nothing() {
    let server = TestServer::start(|o| o.max_body_bytes = 2048).await;
    let s = &server;
    async fn put_raw(s: &TestServer, id: &str, body: &[u8]) -> common::Reply {
        let tok = s.token(OWNER);
        s.raw(
            Method::PUT,
            &s.url(&format!("/devices/{id}")),
            Some(&tok),
            &[],
            Some(body.to_vec()),
        )
        .await
    }
    let put = |id: &'static str, body: &'static [u8]| put_raw(s, id, body);
    put("d1", b"{\"deviceId\": ")
        .await
        .assert_error(400, "ArgumentInvalid");
    put("d1", b"[1, 2]")
        .await
        .assert_error(400, "ArgumentInvalid");
    put("d1", b"").await.assert_error(400, "ArgumentNull");
    put("d1", br#"{"deviceId": "d2"}"#)
        .await
        .assert_error(400, "ArgumentInvalid");
    put("d1", br#"{"status": "sleepy"}"#)
        .await
        .assert_error(400, "ArgumentInvalid");
    put("has%20space", b"{}")
        .await
        .assert_error(400, "ArgumentInvalid");
    put_raw(s, &"x".repeat(129), b"{}")
        .await
        .assert_error(400, "ArgumentInvalid");
    let big = format!("{{\"statusReason\": \"{}\"}}", "x".repeat(4000));
    put_raw(s, "d1", big.as_bytes())
        .await
        .assert_error(413, "MessageTooLarge");
    assert_eq!(device_count(s), 0);
    // Unknown fields and nulls are accepted and ignored.
    let r = put("d1", br#"{"deviceId": "d1", "parentScopes": null, "etag": "whatever", "lastActivityTime": "0001-01-01T00:00:00", "x": {"y": 1}}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_hub_shape() {
    let s = TestServer::start(|_| {}).await;
    s.call(Method::GET, "/nothing/here", OWNER, None)
        .await
        .assert_error(404, "NotFound");
    s.call(Method::POST, "/twins/d1", OWNER, Some(json!({})))
        .await
        .assert_error(405, "MethodNotAllowed");
}

// ----- twins -----------------------------------------------------------------------

#[tokio::test]
async fn twins_merge_patches_and_enforce_etags() {
    let s = TestServer::start(|_| {}).await;
    device(&s, "d1").await;
    let r = s.call(Method::GET, "/twins/d1", "service", None).await;
    assert_eq!(r.status, 200);
    let etag0 = r.body["etag"].as_str().unwrap().to_string();
    assert_eq!(r.etag().unwrap(), format!("\"{etag0}\""));
    assert_eq!(r.body["deviceId"], "d1");

    let q0 = format!("\"{etag0}\"");
    let r = s
        .call_with(
            Method::PATCH,
            "/twins/d1",
            "service",
            &[("if-match", &q0)],
            Some(json!({"tags": {"ring": "canary", "model": "4000x"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["tags"], json!({"ring": "canary", "model": "4000x"}));
    let etag1 = r.body["etag"].as_str().unwrap().to_string();
    assert_ne!(etag1, etag0);

    // null deletes; no If-Match is unconditional.
    let r = s
        .call(
            Method::PATCH,
            "/twins/d1",
            "service",
            Some(json!({"tags": {"model": null}})),
        )
        .await;
    assert_eq!(r.body["tags"], json!({"ring": "canary"}));

    // A stale etag, quoted or bare (strict mode), is refused and writes nothing.
    for stale in [q0.as_str(), etag0.as_str()] {
        s.call_with(
            Method::PATCH,
            "/twins/d1",
            "service",
            &[("if-match", stale)],
            Some(json!({"tags": {"ring": "broad"}})),
        )
        .await
        .assert_error(412, "PreconditionFailed");
    }
    assert_eq!(s.hub.get_twin("d1").unwrap()["tags"]["ring"], "canary");

    // PUT replaces tags whole.
    let r = s
        .call(
            Method::PUT,
            "/twins/d1",
            "service",
            Some(json!({"tags": {"region": "eu"}})),
        )
        .await;
    assert_eq!(r.body["tags"], json!({"region": "eu"}));

    s.call(Method::GET, "/twins/ghost", "service", None)
        .await
        .assert_error(404, "DeviceNotFound");
    s.call(
        Method::PATCH,
        "/twins/d1",
        "service",
        Some(json!({"tags": {"bad.key": 1}})),
    )
    .await
    .assert_error(400, "ArgumentInvalid");
    assert_eq!(
        s.hub.get_twin("d1").unwrap()["tags"],
        json!({"region": "eu"})
    );
}

#[tokio::test]
async fn azure_if_match_mode_ignores_bare_etags() {
    let s = TestServer::start(|o| o.if_match = IfMatchMode::Azure).await;
    device(&s, "d1").await;
    let r = s
        .call_with(
            Method::PATCH,
            "/twins/d1",
            "service",
            &[("if-match", "c3RhbGU=")],
            Some(json!({"tags": {"a": 1}})),
        )
        .await;
    assert_eq!(r.status, 200, "a bare etag is ignored, as Azure does");
    s.call_with(
        Method::PATCH,
        "/twins/d1",
        "service",
        &[("if-match", "\"c3RhbGU=\"")],
        Some(json!({"tags": {"a": 2}})),
    )
    .await
    .assert_error(412, "PreconditionFailed");
}

// ----- bulk ------------------------------------------------------------------------

#[tokio::test]
async fn bulk_registry_calls_report_per_device_and_refuse_bad_requests_whole() {
    let s = TestServer::start(|_| {}).await;
    let entries: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("b{i}"), "importMode": if i == 0 { "Create" } else { "create" }, "status": "enabled", "tags": {"ring": "canary"}, "properties": {"desired": {"x": i}}}))
        .collect();
    let r = s
        .call(Method::POST, "/devices", OWNER, Some(Value::Array(entries)))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["isSuccessful"], true);
    assert_eq!(r.body["errors"], json!([]));
    assert_eq!(s.hub.get_twin("b2").unwrap()["tags"]["ring"], "canary");
    assert_eq!(
        s.hub.get_twin("b2").unwrap()["properties"]["desired"]["x"],
        2
    );

    // One entry fails: 400 with the same body shape; the others are done.
    let r = s
        .call(Method::POST, "/devices", OWNER, Some(json!([{"id": "b0", "importMode": "create"}, {"id": "b9", "importMode": "CREATE"}, {"id": "b1", "importMode": "Delete"}])))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["isSuccessful"], false);
    assert_eq!(r.body["errors"][0]["deviceId"], "b0");
    assert_eq!(r.body["errors"][0]["errorCode"], "DeviceAlreadyExists");
    assert_eq!(r.body["errors"].as_array().unwrap().len(), 1);
    assert!(s.hub.get_device("b9").is_ok());
    assert!(s.hub.get_device("b1").is_err());

    // Malformed requests write nothing.
    let before = device_count(&s);
    let too_many: Vec<Value> = (0..101)
        .map(|i| json!({"id": format!("m{i}"), "importMode": "create"}))
        .collect();
    s.call(
        Method::POST,
        "/devices",
        OWNER,
        Some(Value::Array(too_many)),
    )
    .await
    .assert_error(413, "TooManyDevices");
    s.call(
        Method::POST,
        "/devices",
        OWNER,
        Some(json!([{"id": "n1", "importMode": "create"}, {"id": "n1", "importMode": "create"}])),
    )
    .await
    .assert_error(400, "ArgumentInvalid");
    s.call(
        Method::POST,
        "/devices",
        OWNER,
        Some(json!([{"id": "n1", "importMode": "create"}, {"id": "n2", "importMode": "upsert"}])),
    )
    .await
    .assert_error(400, "ArgumentInvalid");
    s.call(
        Method::POST,
        "/devices",
        OWNER,
        Some(
            json!([{"id": "n1", "importMode": "create"}, {"id": "bad id", "importMode": "create"}]),
        ),
    )
    .await
    .assert_error(400, "ArgumentInvalid");
    s.call(Method::POST, "/devices", OWNER, Some(json!({"id": "n1"})))
        .await
        .assert_error(400, "ArgumentInvalid");
    assert_eq!(device_count(&s), before);
}

#[tokio::test]
async fn a_bulk_entry_of_the_wrong_shape_refuses_the_call_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let open = || EmbeddedHub::open(&path, Arc::new(SystemClock), HubOptions::default()).unwrap();
    let s = TestServer::start_with(open(), |_| {}).await;
    let r = s
        .call(
            Method::POST,
            "/devices",
            OWNER,
            Some(json!([{"id": "bk0", "importMode": "create"}, {"id": "bk1", "importMode": "create", "tags": "x"}])),
        )
        .await;
    r.assert_error(400, "ArgumentInvalid");
    let msg = r.body["Message"].as_str().unwrap();
    assert!(
        msg.contains("entry 1 ('bk1')") && msg.contains("tags"),
        "{msg}"
    );
    s.call(Method::GET, "/devices/bk0", OWNER, None)
        .await
        .assert_error(404, "DeviceNotFound");
    for (body, field) in [
        (json!({"id": "p1", "properties": []}), "properties"),
        (
            json!({"id": "p1", "properties": {"desired": 1}}),
            "properties.desired",
        ),
        (
            json!({"id": "p1", "properties": {"reported": "x"}}),
            "properties.reported",
        ),
    ] {
        let r = s
            .call(
                Method::POST,
                "/devices",
                OWNER,
                Some(json!([{"id": "p0"}, body])),
            )
            .await;
        r.assert_error(400, "ArgumentInvalid");
        let msg = r.body["Message"].as_str().unwrap();
        assert!(msg.contains(&format!("entry 1 ('p1'): {field}")), "{msg}");
    }
    assert_eq!(device_count(&s), 0);
    // Memory and disk agree: a fresh process sees no device either.
    assert_eq!(open().statistics().total_device_count, 0);
}

// ----- knobs -----------------------------------------------------------------------

#[tokio::test]
async fn the_throttle_answers_429_like_an_s1_unit() {
    let s = TestServer::start(|o| o.throttle = Some(ThrottleLimits::s1(1))).await;
    for _ in 0..20 {
        assert_eq!(
            s.call(Method::GET, "/configurations", "service", None)
                .await
                .status,
            200
        );
    }
    s.call(Method::GET, "/configurations", "service", None)
        .await
        .assert_error(429, "ThrottlingException");
    // Other classes have their own budgets.
    assert_eq!(
        s.call(Method::GET, "/statistics/devices", OWNER, None)
            .await
            .status,
        200
    );
    // A bulk call costs one per device: 101 entries never fit 100/min, and 60 + 60 do not either.
    let batch = |p: &str| {
        Value::Array(
            (0..60)
                .map(|i| json!({"id": format!("{p}{i}"), "importMode": "create"}))
                .collect(),
        )
    };
    assert_eq!(
        s.call(Method::POST, "/devices", OWNER, Some(batch("a")))
            .await
            .status,
        200
    );
    s.call(Method::POST, "/devices", OWNER, Some(batch("b")))
        .await
        .assert_error(429, "ThrottlingException");
    assert_eq!(device_count(&s), 60);
}

#[tokio::test]
async fn injected_faults_come_before_the_operation_and_write_nothing() {
    let s = TestServer::start(|o| {
        o.faults = Faults {
            rate: 1.0,
            latency: std::time::Duration::ZERO,
        }
    })
    .await;
    for i in 0..10 {
        let r = s
            .call(
                Method::PUT,
                &format!("/devices/f{i}"),
                OWNER,
                Some(json!({})),
            )
            .await;
        assert!(r.status == 500 || r.status == 503, "{}", r.status);
        assert!(matches!(r.code(), "ServerError" | "ServiceUnavailable"));
    }
    assert_eq!(device_count(&s), 0);
}

// ----- configurations and queries (need the query language) ------------------------

fn config(id: &str, target: &str) -> Value {
    json!({
        "id": id,
        "schemaVersion": "1.0",
        "labels": {"rollout": "fw"},
        "content": {"deviceContent": {"properties.desired.firmware": {"version": "2.0.0"}}},
        "targetCondition": target,
        "priority": 10,
        "metrics": {"queries": {"current": "SELECT deviceId FROM devices WHERE properties.reported.firmware.version = '2.0.0'"}},
        "contentType": "assignment"
    })
}

#[tokio::test]
async fn configurations_follow_put_semantics_etags_and_apply_at_once() {
    let s = TestServer::start(|_| {}).await;
    for i in 0..3 {
        device(&s, &format!("d{i}")).await;
    }
    s.call(
        Method::PATCH,
        "/twins/d0",
        "service",
        Some(json!({"tags": {"ring": "canary"}})),
    )
    .await;

    let r = s
        .call(
            Method::PUT,
            "/configurations/fw-1",
            "service",
            Some(config("fw-1", "tags.ring = 'canary'")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let etag1 = r.body["etag"].as_str().unwrap().to_string();
    assert_eq!(r.etag().unwrap(), format!("\"{etag1}\""));
    assert!(
        r.body["systemMetrics"]["queries"]["targetedCount"].is_string(),
        "{}",
        r.body
    );
    // Applied at once: the canary twin has the content.
    assert_eq!(
        s.hub.get_twin("d0").unwrap()["properties"]["desired"]["firmware"]["version"],
        "2.0.0"
    );

    s.call(
        Method::PUT,
        "/configurations/fw-1",
        "service",
        Some(config("fw-1", "*")),
    )
    .await
    .assert_error(409, "ConfigurationAlreadyExists");
    let r = s
        .call(Method::GET, "/configurations/fw-1", "service", None)
        .await;
    assert_eq!(r.body["targetCondition"], "tags.ring = 'canary'");
    assert_eq!(r.etag().unwrap(), format!("\"{etag1}\""));

    // Update with the bare etag (as the Python SDK sends it): enforced and right, so it passes.
    let r = s
        .call_with(
            Method::PUT,
            "/configurations/fw-1",
            "service",
            &[("if-match", &etag1)],
            Some(config("fw-1", "*")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let etag2 = r.body["etag"].as_str().unwrap().to_string();
    assert_ne!(etag1, etag2);
    // The stale one, bare or quoted: 412 in strict mode.
    for stale in [etag1.clone(), format!("\"{etag1}\"")] {
        s.call_with(
            Method::PUT,
            "/configurations/fw-1",
            "service",
            &[("if-match", &stale)],
            Some(config("fw-1", "tags.x = 1")),
        )
        .await
        .assert_error(412, "PreconditionFailed");
    }
    // Content is immutable.
    let mut changed = config("fw-1", "*");
    changed["content"]["deviceContent"]["properties.desired.firmware"]["version"] = json!("3.0.0");
    s.call_with(
        Method::PUT,
        "/configurations/fw-1",
        "service",
        &[("if-match", "*")],
        Some(changed),
    )
    .await
    .assert_error(400, "CannotModifyImmutableConfigurationContent");

    let r = s
        .call(Method::GET, "/configurations?top=10", "service", None)
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(r.body[0]["targetCondition"], "*");

    let r = s
        .call_with(
            Method::DELETE,
            "/configurations/fw-1",
            "service",
            &[("if-match", "*")],
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    s.call(Method::GET, "/configurations/fw-1", "service", None)
        .await
        .assert_error(404, "ConfigurationNotFound");
}

#[tokio::test]
async fn bad_configurations_write_nothing() {
    let s = TestServer::start(|_| {}).await;
    async fn put_config(s: &TestServer, id: &str, body: Value) -> common::Reply {
        s.call(
            Method::PUT,
            &format!("/configurations/{id}"),
            "service",
            Some(body),
        )
        .await
    }
    let put = |id: &'static str, body: Value| put_config(&s, id, body);
    put("Upper", config("Upper", "*"))
        .await
        .assert_error(400, "ArgumentInvalid");
    put("fw-1", config("fw-2", "*"))
        .await
        .assert_error(400, "ArgumentInvalid");
    put("fw-1", config("fw-1", "tags.ring = = 'x'"))
        .await
        .assert_error(400, "InvalidConfigurationTargetCondition");
    let mut bad_metric = config("fw-1", "*");
    bad_metric["metrics"]["queries"]["m"] = json!("SELEKT nonsense");
    put("fw-1", bad_metric)
        .await
        .assert_error(400, "InvalidConfigurationCustomMetricsQuery");
    put("fw-1", json!({"id": "fw-1", "priority": "high"}))
        .await
        .assert_error(400, "ArgumentInvalid");
    assert!(s.hub.list_configurations().is_empty());
}

#[tokio::test]
async fn test_queries_report_errors_without_creating_anything() {
    let s = TestServer::start(|_| {}).await;
    let r = s
        .call(Method::POST, "/configurations/testQueries", "service", Some(json!({"targetCondition": "tags.ring = 'canary'", "customMetricQueries": {"ok": "SELECT deviceId FROM devices WHERE properties.reported.x = 1"}})))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["targetConditionError"], "");
    assert_eq!(r.body["customMetricQueryErrors"], json!({}));
    let r = s
        .call(Method::POST, "/configurations/testQueries", "service", Some(json!({"targetCondition": "tags.ring = = 'x'", "customMetricQueries": {"bad": "SELEKT"}})))
        .await;
    assert_ne!(r.body["targetConditionError"], "");
    assert!(
        r.body["customMetricQueryErrors"]["bad"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert!(s.hub.list_configurations().is_empty());
}

#[tokio::test]
async fn queries_page_with_continuations_and_clamp_page_size() {
    let s = TestServer::start(|_| {}).await;
    let entries: Vec<Value> = (0..100)
        .map(|i| json!({"id": format!("q{i:03}"), "importMode": "create", "tags": {"n": i}}))
        .collect();
    assert_eq!(
        s.call(Method::POST, "/devices", OWNER, Some(Value::Array(entries)))
            .await
            .status,
        200
    );
    let entries: Vec<Value> = (100..250)
        .map(|i| json!({"id": format!("q{i:03}"), "importMode": "create", "tags": {"n": i}}))
        .collect();
    for chunk in entries.chunks(100) {
        assert_eq!(
            s.call(
                Method::POST,
                "/devices",
                OWNER,
                Some(Value::Array(chunk.to_vec()))
            )
            .await
            .status,
            200
        );
    }

    // Pages of 40 until the continuation is absent.
    let mut seen = Vec::new();
    let mut cont: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut h = vec![("x-ms-max-item-count", "40")];
        if let Some(c) = &cont {
            h.push(("x-ms-continuation", c.as_str()));
        }
        let r = s
            .call_with(
                Method::POST,
                "/devices/query",
                "service",
                &h,
                Some(json!({"query": "SELECT * FROM devices WHERE tags.n >= 10"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["x-ms-item-type"], "twin");
        pages += 1;
        for t in r.body.as_array().unwrap() {
            seen.push(t["deviceId"].as_str().unwrap().to_string());
        }
        match r.headers.get("x-ms-continuation") {
            Some(c) => {
                assert!(!c.is_empty(), "never an empty continuation");
                cont = Some(c.to_str().unwrap().to_string());
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 240);
    assert_eq!(pages, 6);
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 240);

    // More than 100 is clamped, not refused.
    let r = s
        .call_with(
            Method::POST,
            "/devices/query",
            "service",
            &[("x-ms-max-item-count", "1000")],
            Some(json!({"query": "SELECT deviceId FROM devices"})),
        )
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 100);
    assert_eq!(r.headers["x-ms-item-type"], "raw");
    assert!(r.headers.get("x-ms-continuation").is_some());

    // Bad queries and bad tokens: 400.
    let r = s
        .call(
            Method::POST,
            "/devices/query",
            "service",
            Some(json!({"query": "SELEKT * FROM devices"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = s
        .call_with(
            Method::POST,
            "/devices/query",
            "service",
            &[("x-ms-continuation", "garbage!")],
            Some(json!({"query": "SELECT * FROM devices"})),
        )
        .await;
    assert_eq!(r.status, 400);
    s.call(Method::POST, "/devices/query", "service", Some(json!({})))
        .await
        .assert_error(400, "ArgumentNull");
}
