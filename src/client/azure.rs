//! The `Hub` trait over IoT Hub's service REST API: Azure IoT Hub, or `ringmaster hub serve`.
//!
//! What it takes care of, so the controller does not have to:
//! - **Auth.** A SAS token for the connection string's policy, made on first use and
//!   renewed a quarter of its lifetime before it expires. A 401 is retried once with a
//!   fresh token (clock skew, a token that expired in flight).
//! - **Preconditions.** Etags go out quoted (`If-Match: "<etag>"`); `None` sends `"*"`.
//!   The real hub ignores unquoted etags (docs/design.md §3.3), so quoting is what makes them
//!   count.
//! - **Budget.** A per-class request budget shaped like one S1 unit (configurations
//!   20/min, queries 20/min, registry 100/min, twin reads 100/s, twin updates 50/s). A
//!   request waits for its budget instead of failing, so ringmaster never drives a real
//!   hub into throttling.
//! - **Retries.** 408, 429, 500, 502, 503, 504, timeouts and connection failures are
//!   retried with exponential backoff and full jitter, a bounded number of times
//!   (`Retry-After` is honoured when a server sends it). Creates are idempotent: a create
//!   that meets `ConfigurationAlreadyExists` (say, because an earlier attempt succeeded
//!   before its answer was lost) reads the configuration back and succeeds if it is the
//!   one it tried to create.
//! - **Paging.** [`Hub::query`] returns one page with its continuation; [`AzureHub::query_all`]
//!   walks every page.
//! - **TLS.** Trust a custom CA ([`AzureHubOptions::ca_pem`]) for the embedded server's
//!   generated certificate, or talk plain `http://` to a local server
//!   ([`AzureHubOptions::base_url`]).
//!
//! Secrets never appear in logs, errors or `Debug` output: the key lives in
//! [`ConnectionString`], whose `Debug` hides it, and tokens are never formatted into
//! errors.

use super::{Hub, QueryPage, TestQueriesResult, not_found_as_none};
use crate::clock::SystemClock;
use crate::iothub::configuration::Configuration;
use crate::iothub::error::{ErrorCode, HubError};
use crate::iothub::sas::{ConnectionString, encode};
use crate::iothub::throttle::{Buckets, Class, Rates};
use async_trait::async_trait;
use parking_lot::Mutex;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The api-version the client speaks (that of the published SDKs).
pub const API_VERSION: &str = "2021-04-12";

/// Requests allowed per class. `f64::INFINITY` means no limit; the default is one S1 unit.
pub type RequestBudget = Rates;

impl RequestBudget {
    /// What a `Hub` resource's `limits` declare (its units and tier): configuration
    /// operations, queries and twin updates (the tags `DeviceRings` writes) at those
    /// rates, the rest as one S1 unit.
    pub fn for_limits(limits: &crate::resources::HubLimits) -> RequestBudget {
        RequestBudget {
            configurations_per_min: f64::from(limits.configuration_writes_per_minute.max(1)),
            queries_per_min: f64::from(limits.queries_per_minute.max(1)),
            twin_updates_per_sec: f64::from(limits.twin_updates_per_second.max(1)),
            ..RequestBudget::s1(1)
        }
    }
}

/// How the client connects and behaves.
#[derive(Clone)]
pub struct AzureHubOptions {
    /// Send requests here instead of `https://<HostName>` (e.g. `http://127.0.0.1:8080`
    /// for a plain local `hub serve`). Tokens are still issued for the HostName.
    pub base_url: Option<String>,
    /// Trust only this PEM CA bundle (the embedded server's generated CA).
    pub ca_pem: Option<Vec<u8>>,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Timeout for establishing the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First backoff; doubled each retry, with full jitter, up to `backoff_max`.
    pub backoff_base: Duration,
    /// Longest backoff between attempts; also caps a server's `Retry-After`.
    pub backoff_max: Duration,
    /// Lifetime of the SAS tokens made.
    pub token_ttl: Duration,
    /// Requests per minute (or second) allowed per request class; requests wait for it.
    pub budget: RequestBudget,
    /// Largest answer read from the hub; a larger one is an error, not a memory spike.
    pub max_answer_bytes: usize,
    /// Most pages [`AzureHub::query_all`] follows; a hub that keeps answering with a
    /// continuation past this (or repeats one) is an error, not an endless loop.
    pub max_pages: usize,
}

/// Default of [`AzureHubOptions::max_answer_bytes`]: a page of 100 twins at IoT Hub's
/// limits (8 KB tags, 32 KB desired and reported each) is under 8 MiB; a listing of 100
/// configurations is smaller.
pub const MAX_ANSWER_BYTES: usize = 32 << 20;
/// Default of [`AzureHubOptions::max_pages`]: a million twins at 100 per page.
pub const MAX_PAGES: usize = 10_000;

impl Default for AzureHubOptions {
    fn default() -> Self {
        AzureHubOptions {
            base_url: None,
            ca_pem: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_attempts: 6,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            token_ttl: Duration::from_secs(3600),
            budget: RequestBudget::default(),
            max_answer_bytes: MAX_ANSWER_BYTES,
            max_pages: MAX_PAGES,
        }
    }
}

impl fmt::Debug for AzureHubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureHubOptions")
            .field("base_url", &self.base_url)
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|p| format!("{} bytes", p.len())),
            )
            .field("request_timeout", &self.request_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// A hub reached over REST.
pub struct AzureHub {
    conn: ConnectionString,
    base_url: String,
    http: reqwest::Client,
    opts: AzureHubOptions,
    token: Mutex<Option<(String, i64)>>,
    /// A bucket per class: a request reserves its slot and waits until it comes (the
    /// tokens may go negative, so waiters are served in order).
    pacers: Buckets,
}

impl fmt::Debug for AzureHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureHub")
            .field("host_name", &self.conn.host_name)
            .field("policy", &self.conn.key_name)
            .field("base_url", &self.base_url)
            .field("options", &self.opts)
            .finish_non_exhaustive()
    }
}

/// A successful answer.
struct Answer {
    status: StatusCode,
    headers: header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Result<Value, HubError> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            HubError::new(
                ErrorCode::ServerError,
                format!(
                    "the hub answered {} with JSON that does not parse: {e}",
                    self.status
                ),
            )
        })
    }
    fn parse<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, HubError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            HubError::new(
                ErrorCode::ServerError,
                format!("the hub's answer is not a valid {what}: {e}"),
            )
        })
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// A request to make.
struct Call<'a> {
    class: Class,
    method: Method,
    path: String,
    headers: Vec<(&'a str, String)>,
    body: Option<Value>,
    /// A non-2xx status that still carries the answer (bulk calls: 400).
    also_ok: Option<StatusCode>,
}

impl<'a> Call<'a> {
    fn new(class: Class, method: Method, path: String) -> Call<'a> {
        Call {
            class,
            method,
            path,
            headers: Vec::new(),
            body: None,
            also_ok: None,
        }
    }
    fn header(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    fn body(mut self, v: Value) -> Self {
        self.body = Some(v);
        self
    }
}

/// `If-Match` for an etag: quoted, `"*"` when none.
pub fn if_match_value(etag: Option<&str>) -> String {
    match etag.map(str::trim).filter(|e| !e.is_empty()) {
        None | Some("*") | Some("\"*\"") => "\"*\"".into(),
        Some(e) if e.starts_with('"') && e.ends_with('"') && e.len() >= 2 => e.to_string(),
        Some(e) => format!("\"{e}\""),
    }
}

/// Reads an error answer into a [`HubError`]: the `iothub-errorcode` header, else the
/// `ErrorCode:<Name>;` prefix of `Message` (or the JSON inside it), else the status.
fn error_from(
    status: StatusCode,
    headers: &header::HeaderMap,
    body: &[u8],
    fallback_404: ErrorCode,
) -> HubError {
    let header_code = headers
        .get("iothub-errorcode")
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::from_name);
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let message = v
        .as_ref()
        .and_then(|v| v.get("Message").or_else(|| v.get("message")))
        .and_then(Value::as_str)
        .map(str::to_string);
    let (body_code, text) = match &message {
        Some(m) if m.starts_with("ErrorCode:") => {
            let rest = &m["ErrorCode:".len()..];
            let (name, text) = rest.split_once(';').unwrap_or((rest, ""));
            (ErrorCode::from_name(name.trim()), text.to_string())
        }
        Some(m) if m.trim_start().starts_with('{') => {
            let inner: Value = serde_json::from_str(m).unwrap_or(Value::Null);
            let text = inner
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or(m)
                .to_string();
            (None, text)
        }
        Some(m) => (None, m.clone()),
        None => (
            None,
            String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
        ),
    };
    let code = header_code.or(body_code).unwrap_or(match status.as_u16() {
        401 | 403 => ErrorCode::IotHubUnauthorizedAccess,
        404 => fallback_404,
        409 => ErrorCode::DeviceAlreadyExists,
        412 => ErrorCode::PreconditionFailed,
        413 => ErrorCode::MessageTooLarge,
        429 => ErrorCode::ThrottlingException,
        503 => ErrorCode::ServiceUnavailable,
        s if s >= 500 => ErrorCode::ServerError,
        _ => ErrorCode::BadRequest,
    });
    HubError::new(code, format!("the hub answered {status}: {}", text.trim()))
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

impl AzureHub {
    /// A client for the hub a service connection string names.
    pub fn new(connection_string: &str, opts: AzureHubOptions) -> Result<AzureHub, HubError> {
        let conn = ConnectionString::parse(connection_string)
            .map_err(|e| HubError::new(ErrorCode::ArgumentInvalid, e.to_string()))?;
        let base_url = opts
            .base_url
            .clone()
            .unwrap_or_else(|| format!("https://{}", conn.host_name))
            .trim_end_matches('/')
            .to_string();
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(HubError::invalid(format!(
                "base URL '{base_url}' must start with https:// or http://"
            )));
        }
        let mut b = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .connect_timeout(opts.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("ringmaster/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &opts.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                HubError::invalid(format!("the CA bundle is not PEM certificates: {e}"))
            })?;
            b = b.tls_certs_only(certs);
        }
        let http = b.build().map_err(|e| {
            HubError::new(
                ErrorCode::ServerError,
                format!("cannot build the HTTP client: {e}"),
            )
        })?;
        let pacers = Buckets::new(&opts.budget, Arc::new(SystemClock));
        Ok(AzureHub {
            conn,
            base_url,
            http,
            opts,
            token: Mutex::new(None),
            pacers,
        })
    }

    /// The host name the connection string names.
    pub fn host_name(&self) -> &str {
        &self.conn.host_name
    }

    /// The current token, renewed a quarter of its lifetime before it expires.
    fn token(&self, force_new: bool) -> String {
        let now = jiff::Timestamp::now().as_second();
        let ttl = self.opts.token_ttl.as_secs().max(60) as i64;
        let mut t = self.token.lock();
        if let Some((tok, exp)) = t.as_ref()
            && !force_new
            && *exp - now > ttl / 4
        {
            return tok.clone();
        }
        let exp = now + ttl;
        let tok = self
            .conn
            .key
            .token(&self.conn.host_name, &self.conn.key_name, exp);
        *t = Some((tok.clone(), exp));
        tok
    }

    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = self
            .opts
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.opts.backoff_max);
        let jittered = cap.mul_f64(rand::random::<f64>());
        retry_after.map_or(jittered, |r| r.min(self.opts.backoff_max).max(jittered))
    }

    /// Sends a call with budget, auth, retries; `Ok` for 2xx, the hub's error otherwise.
    async fn send(&self, call: Call<'_>, fallback_404: ErrorCode) -> Result<Answer, HubError> {
        let url = format!("{}{}?api-version={API_VERSION}", self.base_url, call.path);
        let mut fresh_token = false;
        let attempts = self.opts.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let wait = self
                .pacers
                .get(call.class)
                .map_or(Duration::ZERO, |b| b.reserve(1.0));
            if !wait.is_zero() {
                tracing::debug!(class = ?call.class, wait_ms = wait.as_millis() as u64, "waiting for request budget");
                tokio::time::sleep(wait).await;
            }
            let mut req = self
                .http
                .request(call.method.clone(), &url)
                .header(header::AUTHORIZATION, self.token(fresh_token))
                .header(header::ACCEPT, "application/json");
            for (k, v) in &call.headers {
                req = req.header(*k, v);
            }
            if let Some(b) = &call.body {
                req = req.json(b);
            }
            let last = attempt >= attempts;
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let body = match read_bounded(resp, self.opts.max_answer_bytes).await {
                        Ok(Ok(b)) => b,
                        Ok(Err(too_big)) => {
                            return Err(HubError::new(
                                ErrorCode::ServerError,
                                format!(
                                    "{} {}: the hub's answer is larger than {too_big} bytes; refusing to read it",
                                    call.method, call.path
                                ),
                            ));
                        }
                        Err(e) if !last => {
                            tracing::debug!(error = %e, attempt, "reading the answer failed; retrying");
                            tokio::time::sleep(self.backoff(attempt, None)).await;
                            continue;
                        }
                        Err(e) => return Err(transport_error(&self.base_url, &e)),
                    };
                    if status.is_success() || call.also_ok == Some(status) {
                        return Ok(Answer {
                            status,
                            headers,
                            body,
                        });
                    }
                    if status == StatusCode::UNAUTHORIZED && !fresh_token && !last {
                        fresh_token = true;
                        continue;
                    }
                    if retryable(status) && !last {
                        let retry_after = headers
                            .get(header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs);
                        let d = self.backoff(attempt, retry_after);
                        tracing::debug!(%status, attempt, backoff_ms = d.as_millis() as u64, path = %call.path, "retrying");
                        tokio::time::sleep(d).await;
                        continue;
                    }
                    return Err(error_from(status, &headers, &body, fallback_404));
                }
                Err(e) if !last && (e.is_timeout() || e.is_connect() || e.is_request()) => {
                    let d = self.backoff(attempt, None);
                    tracing::debug!(error = %e, attempt, backoff_ms = d.as_millis() as u64, "transport error; retrying");
                    tokio::time::sleep(d).await;
                }
                Err(e) => return Err(transport_error(&self.base_url, &e)),
            }
        }
    }

    /// Every page of a query, concatenated.
    pub async fn query_all(
        &self,
        query: &str,
        page_size: Option<usize>,
    ) -> Result<Vec<Value>, HubError> {
        let mut out = Vec::new();
        let mut cont: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..self.opts.max_pages.max(1) {
            let page = self.query(query, page_size, cont.as_deref()).await?;
            out.extend(page.items);
            match page.continuation {
                Some(c) if !c.is_empty() => {
                    if !seen.insert(c.clone()) {
                        return Err(HubError::new(
                            ErrorCode::ServerError,
                            "the hub answered a continuation it had already given: the query's pages loop",
                        ));
                    }
                    cont = Some(c)
                }
                _ => return Ok(out),
            }
        }
        Err(HubError::new(
            ErrorCode::ServerError,
            format!(
                "the hub still had more pages after {} (AzureHubOptions::max_pages); stopped reading",
                self.opts.max_pages.max(1)
            ),
        ))
    }

    /// Creates a device identity with generated SAS keys (`PUT /devices/{id}`).
    pub async fn create_device(&self, device: &Value) -> Result<Value, HubError> {
        let id = device
            .get("deviceId")
            .and_then(Value::as_str)
            .ok_or_else(|| HubError::new(ErrorCode::ArgumentNull, "the device has no deviceId"))?;
        let call = Call::new(
            Class::Registry,
            Method::PUT,
            format!("/devices/{}", encode(id)),
        )
        .body(device.clone());
        self.send(call, ErrorCode::DeviceNotFound).await?.json()
    }

    /// A device identity, or `None`.
    pub async fn get_device(&self, id: &str) -> Result<Option<Value>, HubError> {
        let call = Call::new(
            Class::Registry,
            Method::GET,
            format!("/devices/{}", encode(id)),
        );
        not_found_as_none(
            self.send(call, ErrorCode::DeviceNotFound)
                .await
                .and_then(|a| a.json()),
        )
    }

    /// Deletes a device identity (`etag` `None`: unconditional).
    pub async fn delete_device(&self, id: &str, etag: Option<&str>) -> Result<(), HubError> {
        let call = Call::new(
            Class::Registry,
            Method::DELETE,
            format!("/devices/{}", encode(id)),
        )
        .header("If-Match", if_match_value(etag));
        self.send(call, ErrorCode::DeviceNotFound).await.map(drop)
    }

    /// A bulk registry call (`POST /devices`, at most 100 entries). Returns the
    /// `BulkRegistryOperationResult`, also when some entries failed (HTTP 400).
    pub async fn bulk(&self, entries: &[Value]) -> Result<Value, HubError> {
        let mut call = Call::new(Class::Registry, Method::POST, "/devices".into())
            .body(Value::Array(entries.to_vec()));
        call.also_ok = Some(StatusCode::BAD_REQUEST);
        let a = self.send(call, ErrorCode::DeviceNotFound).await?;
        let v = a.json()?;
        if a.status == StatusCode::BAD_REQUEST && v.get("isSuccessful").is_none() {
            return Err(error_from(
                a.status,
                &a.headers,
                &a.body,
                ErrorCode::DeviceNotFound,
            ));
        }
        Ok(v)
    }

    /// Device counts (`GET /statistics/devices`).
    pub async fn statistics(&self) -> Result<Value, HubError> {
        let call = Call::new(Class::Registry, Method::GET, "/statistics/devices".into());
        self.send(call, ErrorCode::DeviceNotFound).await?.json()
    }
}

fn transport_error(base: &str, e: &reqwest::Error) -> HubError {
    // reqwest's messages carry the URL (no secrets in it) and the cause.
    let mut msg = format!("cannot reach the hub at {base}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    HubError::new(ErrorCode::ServiceUnavailable, msg)
}

/// A configuration as sent: what the hub owns (etag, times, metric results) left out.
fn configuration_body(c: &Configuration) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        for k in [
            "etag",
            "createdTimeUtc",
            "lastUpdatedTimeUtc",
            "systemMetrics",
        ] {
            m.remove(k);
        }
        if let Some(Value::Object(metrics)) = m.get_mut("metrics") {
            metrics.remove("results");
        }
        if m.get("schemaVersion").is_some_and(Value::is_null) {
            m.insert("schemaVersion".into(), json!("1.0"));
        }
    }
    v
}

#[async_trait]
impl Hub for AzureHub {
    async fn list_configurations(&self) -> Result<Vec<Configuration>, HubError> {
        let call = Call::new(Class::Configurations, Method::GET, "/configurations".into());
        self.send(call, ErrorCode::ConfigurationNotFound)
            .await?
            .parse("list of configurations")
    }

    async fn get_configuration(&self, id: &str) -> Result<Option<Configuration>, HubError> {
        let call = Call::new(
            Class::Configurations,
            Method::GET,
            format!("/configurations/{}", encode(id)),
        );
        not_found_as_none(
            self.send(call, ErrorCode::ConfigurationNotFound)
                .await
                .and_then(|a| a.parse("configuration")),
        )
    }

    async fn create_configuration(
        &self,
        config: &Configuration,
    ) -> Result<Configuration, HubError> {
        let call = Call::new(
            Class::Configurations,
            Method::PUT,
            format!("/configurations/{}", encode(&config.id)),
        )
        .body(configuration_body(config));
        match self.send(call, ErrorCode::ConfigurationNotFound).await {
            Ok(a) => a.parse("configuration"),
            // An earlier attempt may have created it before failing: if what is there is
            // what we asked for, the create succeeded.
            Err(e) if e.code == ErrorCode::ConfigurationAlreadyExists => {
                match self.get_configuration(&config.id).await? {
                    Some(c)
                        if c.content == config.content
                            && c.target_condition == config.target_condition
                            && c.priority == config.priority
                            && c.labels == config.labels =>
                    {
                        Ok(c)
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn update_configuration(
        &self,
        config: &Configuration,
        etag: Option<&str>,
    ) -> Result<Configuration, HubError> {
        let call = Call::new(
            Class::Configurations,
            Method::PUT,
            format!("/configurations/{}", encode(&config.id)),
        )
        .header("If-Match", if_match_value(etag))
        .body(configuration_body(config));
        self.send(call, ErrorCode::ConfigurationNotFound)
            .await?
            .parse("configuration")
    }

    async fn delete_configuration(&self, id: &str, etag: Option<&str>) -> Result<(), HubError> {
        let call = Call::new(
            Class::Configurations,
            Method::DELETE,
            format!("/configurations/{}", encode(id)),
        )
        .header("If-Match", if_match_value(etag));
        self.send(call, ErrorCode::ConfigurationNotFound)
            .await
            .map(drop)
    }

    async fn query(
        &self,
        query: &str,
        page_size: Option<usize>,
        continuation: Option<&str>,
    ) -> Result<QueryPage, HubError> {
        let mut call = Call::new(Class::Queries, Method::POST, "/devices/query".into())
            .body(json!({ "query": query }));
        if let Some(n) = page_size {
            call = call.header("x-ms-max-item-count", n.to_string());
        }
        if let Some(c) = continuation.filter(|c| !c.is_empty()) {
            call = call.header("x-ms-continuation", c);
        }
        let a = self.send(call, ErrorCode::BadRequest).await?;
        let items: Vec<Value> = a.parse("list of query results")?;
        Ok(QueryPage {
            item_type: a.header("x-ms-item-type").unwrap_or_else(|| "twin".into()),
            items,
            continuation: a
                .header("x-ms-continuation")
                .filter(|c| !c.trim().is_empty()),
        })
    }

    async fn test_queries(
        &self,
        target_condition: &str,
        metric_queries: &BTreeMap<String, String>,
    ) -> Result<TestQueriesResult, HubError> {
        let call = Call::new(
            Class::Queries,
            Method::POST,
            "/configurations/testQueries".into(),
        )
        .body(
            json!({ "targetCondition": target_condition, "customMetricQueries": metric_queries }),
        );
        let v = self.send(call, ErrorCode::BadRequest).await?.json()?;
        // Real hubs send null for "no error".
        let mut v = v;
        if let Value::Object(m) = &mut v {
            m.retain(|_, x| !x.is_null());
            if let Some(Value::Object(q)) = m.get_mut("customMetricQueryErrors") {
                q.retain(|_, x| x.as_str().is_some_and(|s| !s.is_empty()));
            }
        }
        serde_json::from_value(v).map_err(|e| {
            HubError::new(
                ErrorCode::ServerError,
                format!("the hub's answer is not a test-queries result: {e}"),
            )
        })
    }

    async fn get_twin(&self, device_id: &str) -> Result<Option<Value>, HubError> {
        let call = Call::new(
            Class::TwinReads,
            Method::GET,
            format!("/twins/{}", encode(device_id)),
        );
        not_found_as_none(
            self.send(call, ErrorCode::DeviceNotFound)
                .await
                .and_then(|a| a.json()),
        )
    }

    async fn update_twin(
        &self,
        device_id: &str,
        patch: &Value,
        etag: Option<&str>,
    ) -> Result<Value, HubError> {
        let call = Call::new(
            Class::TwinUpdates,
            Method::PATCH,
            format!("/twins/{}", encode(device_id)),
        )
        .header("If-Match", if_match_value(etag))
        .body(patch.clone());
        self.send(call, ErrorCode::DeviceNotFound).await?.json()
    }
}

/// Reads an answer's body up to `limit` bytes: `Ok(Err(limit))` when it is larger (the
/// declared length is checked first, then what arrives).
async fn read_bounded(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Result<Vec<u8>, usize>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(Err(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(Err(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: &str = "HostName=hub.example:8443;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY=";

    #[test]
    fn the_budget_of_a_hub_takes_its_declared_twin_update_rate() {
        let limits = crate::resources::HubLimits {
            twin_updates_per_second: 200,
            ..Default::default()
        };
        let b = RequestBudget::for_limits(&limits);
        assert_eq!(b.twin_updates_per_sec, 200.0);
        assert_eq!(b.queries_per_min, 20.0);
    }

    #[test]
    fn debug_output_hides_the_key_and_tokens() {
        let hub = AzureHub::new(CS, AzureHubOptions::default()).unwrap();
        let _ = hub.token(false);
        let dbg = format!("{hub:?}");
        assert!(!dbg.contains("c2VjcmV0"), "{dbg}");
        assert!(!dbg.contains("SharedAccessSignature"), "{dbg}");
        assert!(dbg.contains("hub.example:8443"));
        let e = AzureHub::new(
            "HostName=h;SharedAccessKeyName=p;SharedAccessKey=c2VjcmV0!!",
            AzureHubOptions::default(),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
    }

    #[test]
    fn tokens_are_reused_then_renewed() {
        let hub = AzureHub::new(CS, AzureHubOptions::default()).unwrap();
        let a = hub.token(false);
        assert_eq!(a, hub.token(false));
        assert!(a.contains("sr=hub.example%3A8443"), "{a}");
        *hub.token.lock() = Some(("old".into(), jiff::Timestamp::now().as_second() + 60));
        assert_ne!(hub.token(false), "old", "a token near expiry is renewed");
    }

    #[test]
    fn if_match_is_always_quoted() {
        assert_eq!(if_match_value(None), "\"*\"");
        assert_eq!(if_match_value(Some("*")), "\"*\"");
        assert_eq!(if_match_value(Some("MQ==")), "\"MQ==\"");
        assert_eq!(if_match_value(Some("\"MQ==\"")), "\"MQ==\"");
    }

    #[test]
    fn errors_are_read_from_header_body_or_status() {
        let mut h = header::HeaderMap::new();
        let body =
            br#"{"Message":"ErrorCode:PreconditionFailed;etag mismatch","ExceptionMessage":"x"}"#;
        let e = error_from(
            StatusCode::PRECONDITION_FAILED,
            &h,
            body,
            ErrorCode::DeviceNotFound,
        );
        assert_eq!(e.code, ErrorCode::PreconditionFailed);
        assert!(e.message.ends_with("etag mismatch"), "{}", e.message);
        h.insert("iothub-errorcode", "DeviceNotFound".parse().unwrap());
        assert_eq!(
            error_from(StatusCode::NOT_FOUND, &h, b"", ErrorCode::BadRequest).code,
            ErrorCode::DeviceNotFound
        );
        let newer =
            br#"{"Message":"{\"errorCode\":404001,\"message\":\"gone\"}","ExceptionMessage":""}"#;
        let e = error_from(
            StatusCode::NOT_FOUND,
            &header::HeaderMap::new(),
            newer,
            ErrorCode::ConfigurationNotFound,
        );
        assert_eq!(e.code, ErrorCode::ConfigurationNotFound);
        assert!(e.message.contains("gone"));
        assert_eq!(
            error_from(
                StatusCode::TOO_MANY_REQUESTS,
                &header::HeaderMap::new(),
                b"",
                ErrorCode::BadRequest
            )
            .code,
            ErrorCode::ThrottlingException
        );
    }

    #[test]
    fn pacer_spaces_requests_once_the_burst_is_spent() {
        // Two at once, then one every 100 ms.
        let clock = crate::clock::ManualClock::at_epoch();
        let p = crate::budget::SharedBucket::new(Arc::new(clock), 2.0, Duration::from_millis(200));
        assert_eq!(p.reserve(1.0), Duration::ZERO);
        assert_eq!(p.reserve(1.0), Duration::ZERO);
        let w = p.reserve(1.0);
        assert!(
            w > Duration::from_millis(80) && w <= Duration::from_millis(100),
            "{w:?}"
        );
        let w2 = p.reserve(1.0);
        assert!(w2 > w, "waiters queue up: {w2:?}");
        let unlimited = Buckets::new(&RequestBudget::unlimited(), Arc::new(SystemClock));
        for class in [Class::Configurations, Class::Queries, Class::TwinReads] {
            for _ in 0..100 {
                assert_eq!(unlimited.get(class).unwrap().reserve(1.0), Duration::ZERO);
            }
        }
    }
}
