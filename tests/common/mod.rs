//! A served hub on a loopback port chosen at run time, with known policy keys, for the REST
//! and client tests.

#![allow(dead_code)]

use reqwest::{Method, StatusCode, header::HeaderMap};
use ringmaster::clock::SystemClock;
use ringmaster::hub::EmbeddedHub;
use ringmaster::hub::server::ServerOptions;
use ringmaster::hub::server::auth::{Authenticator, DEFAULT_POLICIES, Policy};
use ringmaster::iothub::sas::{SasKey, encode};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct TestServer {
    pub addr: SocketAddr,
    pub host: String,
    pub keys: HashMap<String, SasKey>,
    pub hub: EmbeddedHub,
    pub http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reply: status, headers and the body as JSON (`Null` when empty).
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `iothub-errorcode` header.
    pub fn code(&self) -> &str {
        self.headers
            .get("iothub-errorcode")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn etag(&self) -> Option<String> {
        self.headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
    /// Asserts an IoT Hub error: status, header, and the `ErrorCode:<Name>;` body.
    pub fn assert_error(&self, status: u16, name: &str) {
        assert_eq!(self.status.as_u16(), status, "status; body {}", self.body);
        assert_eq!(self.code(), name, "iothub-errorcode; body {}", self.body);
        let msg = self.body["Message"].as_str().unwrap_or("");
        assert!(msg.starts_with(&format!("ErrorCode:{name};")), "{msg}");
        assert!(
            self.body["ExceptionMessage"]
                .as_str()
                .unwrap_or("")
                .starts_with("Tracking ID:")
        );
        assert!(
            self.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
}

impl TestServer {
    /// Starts a server over a fresh in-memory hub.
    pub async fn start(configure: impl FnOnce(&mut ServerOptions)) -> TestServer {
        Self::start_with(EmbeddedHub::in_memory(Arc::new(SystemClock)), configure).await
    }

    pub async fn start_with(
        hub: EmbeddedHub,
        configure: impl FnOnce(&mut ServerOptions),
    ) -> TestServer {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let host = format!("localhost:{}", addr.port());
        let mut keys = HashMap::new();
        let policies = DEFAULT_POLICIES
            .iter()
            .map(|(name, rights)| {
                let key = SasKey::generate();
                keys.insert(name.to_string(), key.clone());
                Policy {
                    name: name.to_string(),
                    key,
                    rights: *rights,
                }
            })
            .collect();
        let mut opts = ServerOptions::new(Authenticator::new(&host, policies));
        configure(&mut opts);
        let app = ringmaster::hub::server::router(hub.clone(), opts);
        let task = tokio::spawn(async move {
            axum::serve(tcp, app).await.unwrap();
        });
        TestServer {
            addr,
            host,
            keys,
            hub,
            http: reqwest::Client::new(),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("http://{}{path}{sep}api-version=2021-04-12", self.addr)
    }

    /// A valid token for `policy`, made as the Python SDK makes it.
    pub fn token(&self, policy: &str) -> String {
        let se = (jiff::Timestamp::now().as_second() + 3600).to_string();
        let sr = encode(&self.host);
        let sig = self.keys[policy]
            .sign(&sr, &se)
            .replace('+', "%2B")
            .replace('=', "%3D");
        format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn={policy}")
    }

    /// The owner's connection string.
    pub fn connection_string(&self, policy: &str) -> String {
        format!(
            "HostName={};SharedAccessKeyName={policy};SharedAccessKey={}",
            self.host,
            self.keys[policy].expose()
        )
    }

    /// Sends a request with `url` as given (api-version included by the caller).
    pub async fn raw(
        &self,
        method: Method,
        url: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut req = self.http.request(method, url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Sends a request as `policy` with a JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        policy: &str,
        body: Option<Value>,
    ) -> Reply {
        self.call_with(method, path, policy, &[], body).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        policy: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let tok = self.token(policy);
        self.raw(
            method,
            &self.url(path),
            Some(&tok),
            headers,
            body.map(|b| serde_json::to_vec(&b).unwrap()),
        )
        .await
    }
}
