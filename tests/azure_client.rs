//! `AzureHub` stays correct when the hub misbehaves: it retries faults, waits for its
//! budget instead of tripping the throttle, gives up after bounded attempts and timeouts,
//! and talks plain HTTP to a local server.

mod common;

use common::TestServer;
use ringmaster::client::Hub;
use ringmaster::client::azure::{AzureHub, AzureHubOptions, RequestBudget};
use ringmaster::hub::server::limits::{Faults, ThrottleLimits};
use ringmaster::iothub::error::ErrorCode;
use serde_json::json;
use std::time::{Duration, Instant};

fn client(s: &TestServer, policy: &str, tweak: impl FnOnce(&mut AzureHubOptions)) -> AzureHub {
    let mut o = AzureHubOptions {
        base_url: Some(format!("http://{}", s.addr)),
        budget: RequestBudget::unlimited(),
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        ..Default::default()
    };
    tweak(&mut o);
    AzureHub::new(&s.connection_string(policy), o).unwrap()
}

#[tokio::test]
async fn retries_ride_out_injected_faults() {
    let s = TestServer::start(|o| {
        o.faults = Faults {
            rate: 0.5,
            latency: Duration::ZERO,
        }
    })
    .await;
    let hub = client(&s, "iothubowner", |o| o.max_attempts = 30);
    for i in 0..20 {
        hub.create_device(&json!({"deviceId": format!("r{i}")}))
            .await
            .unwrap();
        let t = hub.get_twin(&format!("r{i}")).await.unwrap().unwrap();
        hub.update_twin(
            &format!("r{i}"),
            &json!({"tags": {"n": i}}),
            t["etag"].as_str(),
        )
        .await
        .unwrap();
    }
    assert_eq!(s.hub.statistics().total_device_count, 20);
    assert_eq!(s.hub.get_twin("r7").unwrap()["tags"]["n"], 7);
}

#[tokio::test]
async fn retries_are_bounded() {
    let s = TestServer::start(|o| {
        o.faults = Faults {
            rate: 1.0,
            latency: Duration::ZERO,
        }
    })
    .await;
    let hub = client(&s, "iothubowner", |o| o.max_attempts = 3);
    let e = hub.list_configurations().await.unwrap_err();
    assert!(
        matches!(
            e.code,
            ErrorCode::ServerError | ErrorCode::ServiceUnavailable
        ),
        "{e}"
    );
}

#[tokio::test]
async fn slow_answers_time_out() {
    let s = TestServer::start(|o| {
        o.faults = Faults {
            rate: 0.0,
            latency: Duration::from_secs(3),
        }
    })
    .await;
    let hub = client(&s, "iothubowner", |o| {
        o.request_timeout = Duration::from_millis(200);
        o.max_attempts = 2;
    });
    let t0 = Instant::now();
    let e = hub.get_twin("d1").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ServiceUnavailable, "{e}");
    assert!(
        e.message.contains("timed out") || e.message.contains("timeout"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn the_budget_keeps_the_client_under_the_hub_throttle() {
    // The hub allows 600 configuration operations a minute (a burst of 600, then 10/s);
    // the client has the same budget and must never see a 429 (it may not retry here).
    let limits = ThrottleLimits {
        configurations_per_min: 600.0,
        ..ThrottleLimits::s1(1)
    };
    let s = TestServer::start(|o| o.throttle = Some(limits)).await;
    let hub = client(&s, "service", |o| {
        o.max_attempts = 1;
        o.budget = RequestBudget {
            configurations_per_min: 600.0,
            ..RequestBudget::s1(1)
        };
    });
    let t0 = Instant::now();
    for _ in 0..615 {
        hub.list_configurations()
            .await
            .expect("the budget waits instead of tripping the throttle");
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(1300),
        "the last 15 were paced: {:?}",
        t0.elapsed()
    );

    // Without a budget the same client is throttled.
    let greedy = client(&s, "service", |o| o.max_attempts = 1);
    let mut throttled = false;
    for _ in 0..50 {
        if let Err(e) = greedy.list_configurations().await {
            assert_eq!(e.code, ErrorCode::ThrottlingException);
            throttled = true;
            break;
        }
    }
    assert!(throttled);
}

#[tokio::test]
async fn wrong_credentials_are_refused_not_retried_forever() {
    let s = TestServer::start(|_| {}).await;
    let mut cs = s.connection_string("service");
    cs = cs.replace(
        &s.keys["service"].expose().to_string(),
        ringmaster::iothub::sas::SasKey::generate().expose(),
    );
    let hub = AzureHub::new(
        &cs,
        AzureHubOptions {
            base_url: Some(format!("http://{}", s.addr)),
            ..Default::default()
        },
    )
    .unwrap();
    let e = hub.get_twin("d1").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::IotHubUnauthorizedAccess);
    assert!(!e.message.contains(s.keys["service"].expose()));
    // A policy without the rights: also 401.
    let reader = client(&s, "registryRead", |_| {});
    assert_eq!(
        reader.list_configurations().await.unwrap_err().code,
        ErrorCode::IotHubUnauthorizedAccess
    );
}
