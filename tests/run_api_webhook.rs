//! The controller API's git webhook: a signed delivery is accepted once; its replay (the
//! same delivery id) is refused with 409, and a delivery without an id with 400.

use ringmaster::run::api::{ApiState, serve, webhook_signature};
use ringmaster::run::store::StateStore;
use std::sync::Arc;

const SECRET: &[u8] = b"hook-secret";

async fn served() -> String {
    let mut st = ApiState::new(StateStore::in_memory().unwrap());
    st.webhook_secret = Some(SECRET.to_vec());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook/git", tcp.local_addr().unwrap());
    tokio::spawn(serve(tcp, Arc::new(st)));
    url
}

async fn post(url: &str, delivery: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("X-Hub-Signature-256", webhook_signature(SECRET, body))
        .body(body.to_vec());
    if let Some(d) = delivery {
        req = req.header("X-GitHub-Delivery", d);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn a_replayed_webhook_delivery_is_refused() {
    let url = served().await;
    let body = br#"{"ref":"refs/heads/main"}"#;
    let id = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    assert_eq!(
        post(&url, Some(id), body).await.0,
        202,
        "the first delivery"
    );
    let (status, msg) = post(&url, Some(id), body).await;
    assert_eq!(status, 409, "the replay: {msg}");
    assert!(msg.contains(id) && msg.contains("replay"), "{msg}");
    // Another delivery with the same body (a second push to the same ref) is fine.
    let other = "9b3a1c7e-cc78-11e3-81ab-4c9367dc0958";
    assert_eq!(post(&url, Some(other), body).await.0, 202);
    // Without an id nothing tells a replay from a delivery: refused, and said why.
    let (status, msg) = post(&url, None, body).await;
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("X-GitHub-Delivery"), "{msg}");
}

#[tokio::test]
async fn a_bad_signature_does_not_spend_the_delivery_id() {
    let url = served().await;
    let id = "0f6b5f0e-cc79-11e3-81ab-4c9367dc0958";
    let res = reqwest::Client::new()
        .post(&url)
        .header("X-Hub-Signature-256", "sha256=00")
        .header("X-GitHub-Delivery", id)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(post(&url, Some(id), b"{}").await.0, 202);
}
