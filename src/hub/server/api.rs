//! The routes of the served hub: IoT Hub's service operations (docs/design.md §3.2) over an
//! [`EmbeddedHub`].
//!
//! Every request first passes [`gate`]: SAS auth, then the rights (every method on every
//! path, HEAD and unknown routes included: a token without the rights gets 401 and
//! nothing else), then the api-version, then the throttle, injected faults and latency.
//! Only then does a handler run. Handlers read the body with a size limit, parse it, and run the hub
//! operation on the blocking pool (`spawn_blocking`): writes commit to SQLite and
//! configuration writes run an engine cycle over every twin, which must not stall the
//! async workers.

use super::auth::{Authenticator, Rights};
use super::error::ApiError;
use super::limits::{Class, Faults, Throttle, ThrottleLimits};
use super::{API_VERSIONS, IfMatchMode, JSON};
use crate::hub::EmbeddedHub;
use crate::iothub::configuration::{Configuration, validate_id};
use crate::iothub::device::{Device, validate_device_id};
use crate::iothub::error::{ErrorCode, HubError};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Most entries in one bulk registry call.
pub const MAX_BULK: usize = 100;
/// Default request body limit (a bulk call of 100 devices with full twins fits).
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The shared access policies requests are checked against.
    pub auth: Authenticator,
    /// `Some`: throttle like IoT Hub.
    pub throttle: Option<ThrottleLimits>,
    /// Injected 5xx rate and added latency.
    pub faults: Faults,
    /// How an unquoted `If-Match` value is treated.
    pub if_match: IfMatchMode,
    /// Largest request body in bytes (413 `MessageTooLarge` beyond).
    pub max_body_bytes: usize,
}

impl ServerOptions {
    /// No throttle, no faults, strict If-Match, the default body limit.
    pub fn new(auth: Authenticator) -> ServerOptions {
        ServerOptions {
            auth,
            throttle: None,
            faults: Faults::default(),
            if_match: IfMatchMode::Strict,
            max_body_bytes: DEFAULT_MAX_BODY,
        }
    }
}

struct AppState {
    hub: EmbeddedHub,
    opts: ServerOptions,
    throttle: Option<Throttle>,
}

type Shared = Arc<AppState>;

/// The router for `hub`: every route behind the gate.
pub fn router(hub: EmbeddedHub, opts: ServerOptions) -> Router {
    let throttle = opts.throttle.as_ref().map(Throttle::new);
    let state = Arc::new(AppState {
        hub,
        opts,
        throttle,
    });
    Router::new()
        .route("/configurations", get(list_configurations))
        .route("/configurations/testQueries", post(test_queries))
        .route(
            "/configurations/{id}",
            get(get_configuration)
                .put(put_configuration)
                .delete(delete_configuration),
        )
        .route("/twins/{id}", get(get_twin).patch(patch_twin).put(put_twin))
        .route("/devices/query", post(query))
        .route("/devices", get(list_devices).post(bulk))
        .route(
            "/devices/{id}",
            get(get_device).put(put_device).delete(delete_device),
        )
        .route("/statistics/devices", get(statistics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

// ----- the gate ----------------------------------------------------------------------

/// The service operations, for rights and throttling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `GET /configurations`.
    ListConfigurations,
    /// `GET /configurations/{id}`.
    GetConfiguration,
    /// `PUT /configurations/{id}`.
    PutConfiguration,
    /// `DELETE /configurations/{id}`.
    DeleteConfiguration,
    /// `POST /configurations/testQueries`.
    TestQueries,
    /// `GET /twins/{id}`.
    GetTwin,
    /// `PATCH` or `PUT /twins/{id}`.
    UpdateTwin,
    /// `POST /devices/query`.
    Query,
    /// `GET /devices`.
    ListDevices,
    /// `GET /devices/{id}`.
    GetDevice,
    /// `PUT /devices/{id}`.
    PutDevice,
    /// `DELETE /devices/{id}`.
    DeleteDevice,
    /// `POST /devices` (bulk registry operations).
    Bulk,
    /// `GET /statistics/devices`.
    Statistics,
}

impl Op {
    /// Which operation a request is (`None`: no such route or method). HEAD is the GET
    /// of the same path without a body, and is the same operation.
    pub fn classify(method: &Method, path: &str) -> Option<Op> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let m = if method == Method::HEAD {
            "GET"
        } else {
            method.as_str()
        };
        Some(match (segs.as_slice(), m) {
            (["configurations"], "GET") => Op::ListConfigurations,
            (["configurations", "testQueries"], "POST") => Op::TestQueries,
            (["configurations", _], "GET") => Op::GetConfiguration,
            (["configurations", _], "PUT") => Op::PutConfiguration,
            (["configurations", _], "DELETE") => Op::DeleteConfiguration,
            (["twins", _], "GET") => Op::GetTwin,
            (["twins", _], "PATCH" | "PUT") => Op::UpdateTwin,
            (["devices", "query"], "POST") => Op::Query,
            (["devices"], "GET") => Op::ListDevices,
            (["devices"], "POST") => Op::Bulk,
            (["devices", _], "GET") => Op::GetDevice,
            (["devices", _], "PUT") => Op::PutDevice,
            (["devices", _], "DELETE") => Op::DeleteDevice,
            (["statistics", "devices"], "GET") => Op::Statistics,
            _ => return None,
        })
    }

    /// The rights a token needs: ServiceConnect for twins, queries and configurations;
    /// RegistryRead / RegistryWrite for device identities.
    pub fn rights(self) -> Rights {
        use Op::*;
        match self {
            ListConfigurations | GetConfiguration | PutConfiguration | DeleteConfiguration
            | TestQueries | GetTwin | UpdateTwin | Query => Rights::SERVICE_CONNECT,
            ListDevices | GetDevice | Statistics => Rights::REGISTRY_READ,
            PutDevice | DeleteDevice | Bulk => Rights::REGISTRY_WRITE,
        }
    }

    /// The rights a request needs, whether or not it names an operation: the operation's
    /// rights; for a method the route does not have, what a write to that route needs
    /// (RegistryWrite for device identities, RegistryRead for statistics, ServiceConnect
    /// for twins and configurations); nothing more for an unknown route (every request
    /// also needs a service right, see [`SERVICE_RIGHTS`]). So a 404 or 405 is only ever
    /// the answer to a token that could have used the route.
    pub fn rights_for(method: &Method, path: &str) -> Rights {
        if let Some(op) = Op::classify(method, path) {
            return op.rights();
        }
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segs.as_slice() {
            ["devices"] | ["devices", _] => Rights::REGISTRY_WRITE,
            ["statistics", "devices"] => Rights::REGISTRY_READ,
            ["configurations"] | ["configurations", _] | ["twins", _] => Rights::SERVICE_CONNECT,
            _ => Rights::NONE,
        }
    }

    /// The throttle class (a bulk call is charged per device by its handler).
    pub fn class(self) -> Class {
        use Op::*;
        match self {
            ListConfigurations | GetConfiguration | PutConfiguration | DeleteConfiguration => {
                Class::Configurations
            }
            TestQueries | Query => Class::Queries,
            GetTwin => Class::TwinReads,
            UpdateTwin => Class::TwinUpdates,
            ListDevices | GetDevice | PutDevice | DeleteDevice => Class::Registry,
            Bulk | Statistics => Class::Free,
        }
    }
}

/// The value of one query-string parameter (no percent-decoding: the values read here are
/// numbers and versions).
fn query_param<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The rights of the service API: a policy needs one of them to reach anything (the
/// `device` policy's DeviceConnect reaches no operation here).
pub const SERVICE_RIGHTS: Rights = Rights::REGISTRY_READ
    .union(Rights::REGISTRY_WRITE)
    .union(Rights::SERVICE_CONNECT);

/// Auth, rights, api-version, throttle, faults, latency: in that order, for every method
/// on every path (HEAD and unknown routes included), so that nothing but a 401 answers a
/// token without the rights.
async fn gate(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let auth_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let policy = match s
        .opts
        .auth
        .check(auth_header, jiff::Timestamp::now().as_second())
    {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let needed = Op::rights_for(req.method(), req.uri().path());
    if !policy.rights.intersects(SERVICE_RIGHTS) || !policy.rights.contains(needed) {
        let needs = if needed == Rights::NONE {
            SERVICE_RIGHTS
        } else {
            needed
        };
        return ApiError::unauthorized(format!(
            "policy '{}' has {:?}; {} {} needs {:?}",
            policy.name,
            policy.rights,
            req.method(),
            req.uri().path().chars().take(200).collect::<String>(),
            needs
        ))
        .into_response();
    }
    match query_param(req.uri(), "api-version") {
        Some(v) if API_VERSIONS.contains(&v) => {}
        Some(v) => {
            return ApiError::new(
                ErrorCode::InvalidProtocolVersion,
                format!(
                    "api-version '{}' is not supported; use one of {}",
                    v.chars().take(40).collect::<String>(),
                    API_VERSIONS.join(", ")
                ),
            )
            .into_response();
        }
        None => {
            return ApiError::new(
                ErrorCode::InvalidProtocolVersion,
                format!(
                    "the request has no api-version; add ?api-version={}",
                    API_VERSIONS[0]
                ),
            )
            .into_response();
        }
    }
    if let Some(op) = Op::classify(req.method(), req.uri().path())
        && let Some(t) = &s.throttle
        && let Err(e) = t.admit(op.class(), 1)
    {
        return e.into_response();
    }
    if let Some(e) = s.opts.faults.draw() {
        return e.into_response();
    }
    if !s.opts.faults.latency.is_zero() {
        tokio::time::sleep(s.opts.faults.latency).await;
    }
    next.run(req).await
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::other(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("no service operation at {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::other(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{method} is not an operation on {}", uri.path()),
    )
}

// ----- helpers -----------------------------------------------------------------------

/// A path id, percent-decoded; a malformed one is 400 `ArgumentInvalid`.
struct Id(String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Id(id))
            .map_err(|e| ApiError::invalid(format!("the id in the path is not valid: {e}")))
    }
}

/// The If-Match precondition of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// No If-Match: create (PUT) or unconditional.
    Absent,
    /// `*` or `"*"`.
    Any,
    /// An etag, without its quotes.
    Etag(String),
}

impl Precondition {
    /// Reads If-Match. `"x"` and `W/"x"` are etags, `*` and `"*"` the wildcard; a bare
    /// `x` is an etag in strict mode and the wildcard in Azure mode (the real hub ignores
    /// unquoted values, docs/design.md §3.3).
    pub fn read(headers: &HeaderMap, mode: IfMatchMode) -> Precondition {
        let Some(v) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
            return Precondition::Absent;
        };
        let v = v.trim();
        if v.is_empty() {
            return Precondition::Absent;
        }
        let v = v.strip_prefix("W/").unwrap_or(v);
        match v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            Some("*") => Precondition::Any,
            Some(inner) => Precondition::Etag(inner.to_string()),
            None if v == "*" => Precondition::Any,
            None => match mode {
                IfMatchMode::Strict => Precondition::Etag(v.to_string()),
                IfMatchMode::Azure => Precondition::Any,
            },
        }
    }

    /// The etag to enforce, if any.
    pub fn etag(&self) -> Option<&str> {
        match self {
            Precondition::Etag(e) => Some(e),
            _ => None,
        }
    }
}

/// A JSON answer, with a quoted `ETag` header when given.
fn json_response<T: serde::Serialize + ?Sized>(
    status: StatusCode,
    body: &T,
    etag: Option<&str>,
) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(b) => b,
        Err(e) => {
            return ApiError::server(format!("cannot serialize the answer: {e}")).into_response();
        }
    };
    let mut resp = (status, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    if let Some(e) = etag.filter(|e| !e.is_empty())
        && let Ok(v) = HeaderValue::from_str(&format!("\"{e}\""))
    {
        h.insert(header::ETAG, v);
    }
    resp
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Runs a hub operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HubError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => {
            tracing::error!(error = %e, "hub operation panicked");
            Err(ApiError::server(
                "the hub failed while running this operation; nothing more is known",
            ))
        }
    }
}

/// Reads the body up to the server's limit: 413 `MessageTooLarge` beyond it.
async fn read_body(s: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let max = s.opts.max_body_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::MessageTooLarge,
            format!("the request body is larger than {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_large())
}

/// Parses a JSON body; an empty one is 400 `ArgumentNull`, a malformed one 400
/// `ArgumentInvalid`.
fn parse_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::ArgumentNull,
            format!("the request has no body; send {what} as JSON"),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("the body is not valid {what}: {e}")))
}

/// Reads a JSON object body.
async fn read_object(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    what: &str,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = read_body(s, headers, body).await?;
    match parse_json::<Value>(&bytes, what)? {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::invalid(format!(
            "the body must be a JSON object ({what})"
        ))),
    }
}

/// Puts the path's id into the body's `field`, or refuses a body that names another id.
fn reconcile_id(body: &mut Map<String, Value>, field: &str, id: &str) -> Result<(), ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) if s == id => return Ok(()),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "the body's {field} {other} differs from the id '{id}' in the path"
            )));
        }
    }
    body.insert(field.to_string(), Value::String(id.to_string()));
    Ok(())
}

/// Removes `null` members everywhere, so that serde defaults apply to what a client left
/// empty.
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// A device identity from a request body. Fields the hub owns (etag, times, connection
/// state) are dropped, so that clients echoing a device they read (with .NET's
/// `0001-01-01T00:00:00` dates, say) are not refused for them.
fn device_from(mut body: Map<String, Value>) -> Result<Device, ApiError> {
    for k in [
        "generationId",
        "etag",
        "connectionState",
        "connectionStateUpdatedTime",
        "statusUpdatedTime",
        "lastActivityTime",
        "cloudToDeviceMessageCount",
    ] {
        body.remove(k);
    }
    let mut v = Value::Object(body);
    drop_nulls(&mut v);
    serde_json::from_value(v)
        .map_err(|e| ApiError::invalid(format!("the body is not a valid device identity: {e}")))
}

fn top(uri: &Uri) -> Option<i64> {
    query_param(uri, "top").and_then(|t| t.parse().ok())
}

// ----- configurations ----------------------------------------------------------------

async fn list_configurations(State(s): State<Shared>, uri: Uri) -> Result<Response, ApiError> {
    let hub = s.hub.clone();
    let mut all = blocking(move || Ok(hub.list_configurations())).await?;
    if let Some(n) = top(&uri).filter(|n| *n > 0) {
        all.truncate(n as usize);
    }
    Ok(json_response(StatusCode::OK, &all, None))
}

async fn get_configuration(State(s): State<Shared>, Id(id): Id) -> Result<Response, ApiError> {
    validate_id(&id)?;
    let hub = s.hub.clone();
    let c = blocking(move || hub.get_configuration(&id)).await?;
    Ok(json_response(StatusCode::OK, &c, c.etag.as_deref()))
}

async fn put_configuration(
    State(s): State<Shared>,
    Id(id): Id,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    validate_id(&id)?;
    let mut obj = read_object(&s, &headers, body, "configuration").await?;
    reconcile_id(&mut obj, "id", &id)?;
    let config: Configuration = serde_json::from_value(Value::Object(obj))
        .map_err(|e| ApiError::invalid(format!("the body is not a valid configuration: {e}")))?;
    let pre = Precondition::read(&headers, s.opts.if_match);
    let hub = s.hub.clone();
    let c = blocking(move || match pre {
        Precondition::Absent => hub.create_configuration(&config),
        _ => hub.update_configuration(&config, pre.etag()),
    })
    .await?;
    Ok(json_response(StatusCode::OK, &c, c.etag.as_deref()))
}

async fn delete_configuration(
    State(s): State<Shared>,
    Id(id): Id,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    validate_id(&id)?;
    let pre = Precondition::read(&headers, s.opts.if_match);
    let hub = s.hub.clone();
    blocking(move || hub.delete_configuration(&id, pre.etag())).await?;
    Ok(no_content())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestQueriesInput {
    #[serde(default)]
    target_condition: Option<String>,
    #[serde(default)]
    custom_metric_queries: Option<BTreeMap<String, String>>,
}

async fn test_queries(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&s, &headers, body).await?;
    let input: TestQueriesInput = parse_json(&bytes, "ConfigurationQueriesTestInput")?;
    let hub = s.hub.clone();
    let r = blocking(move || {
        Ok(hub.test_queries(
            input.target_condition.as_deref().unwrap_or(""),
            &input.custom_metric_queries.unwrap_or_default(),
        ))
    })
    .await?;
    Ok(json_response(StatusCode::OK, &r, None))
}

// ----- twins -------------------------------------------------------------------------

fn twin_response(twin: &Value) -> Response {
    json_response(
        StatusCode::OK,
        twin,
        twin.get("etag").and_then(Value::as_str),
    )
}

async fn get_twin(State(s): State<Shared>, Id(id): Id) -> Result<Response, ApiError> {
    validate_device_id(&id)?;
    let hub = s.hub.clone();
    let twin = blocking(move || hub.get_twin(&id)).await?;
    Ok(twin_response(&twin))
}

async fn update_twin(
    s: Shared,
    id: String,
    headers: HeaderMap,
    body: Body,
    replace: bool,
) -> Result<Response, ApiError> {
    validate_device_id(&id)?;
    let patch = Value::Object(read_object(&s, &headers, body, "twin").await?);
    let pre = Precondition::read(&headers, s.opts.if_match);
    let hub = s.hub.clone();
    let twin = blocking(move || {
        if replace {
            hub.replace_twin(&id, &patch, pre.etag())
        } else {
            hub.update_twin(&id, &patch, pre.etag())
        }
    })
    .await?;
    Ok(twin_response(&twin))
}

async fn patch_twin(
    State(s): State<Shared>,
    Id(id): Id,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    update_twin(s, id, headers, body, false).await
}

async fn put_twin(
    State(s): State<Shared>,
    Id(id): Id,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    update_twin(s, id, headers, body, true).await
}

#[derive(Deserialize)]
struct QuerySpecification {
    #[serde(default)]
    query: Option<String>,
}

async fn query(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&s, &headers, body).await?;
    let spec: QuerySpecification = parse_json(&bytes, "QuerySpecification")?;
    let text = spec.query.filter(|q| !q.trim().is_empty()).ok_or_else(|| {
        ApiError::new(
            ErrorCode::ArgumentNull,
            "the body has no query; send {\"query\": \"SELECT * FROM devices\"}",
        )
    })?;
    let header_str = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    // The hub clamps the page size (to 100) rather than refusing it; junk means default.
    let page = header_str("x-ms-max-item-count")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .map(|n| n as usize);
    let continuation = header_str("x-ms-continuation")
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let hub = s.hub.clone();
    let p = blocking(move || hub.query(&text, page, continuation.as_deref())).await?;
    let mut resp = json_response(StatusCode::OK, &p.items, None);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&p.item_type) {
        h.insert("x-ms-item-type", v);
    }
    // Absent on the last page: an empty-but-present header makes clients start over.
    if let Some(c) = p.continuation.filter(|c| !c.is_empty())
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        h.insert("x-ms-continuation", v);
    }
    Ok(resp)
}

// ----- devices -----------------------------------------------------------------------

async fn list_devices(State(s): State<Shared>, uri: Uri) -> Result<Response, ApiError> {
    // Outside 1..=1000 counts as 1000 (the service's rule).
    let n = top(&uri).filter(|n| (1..=1000).contains(n)).unwrap_or(1000) as usize;
    let hub = s.hub.clone();
    let devices = blocking(move || Ok(hub.list_devices(n))).await?;
    Ok(json_response(StatusCode::OK, &devices, None))
}

async fn get_device(State(s): State<Shared>, Id(id): Id) -> Result<Response, ApiError> {
    validate_device_id(&id)?;
    let hub = s.hub.clone();
    let d = blocking(move || hub.get_device(&id)).await?;
    Ok(json_response(StatusCode::OK, &d, Some(&d.etag)))
}

async fn put_device(
    State(s): State<Shared>,
    Id(id): Id,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    validate_device_id(&id)?;
    let mut obj = read_object(&s, &headers, body, "device identity").await?;
    reconcile_id(&mut obj, "deviceId", &id)?;
    let device = device_from(obj)?;
    let pre = Precondition::read(&headers, s.opts.if_match);
    let hub = s.hub.clone();
    let d = blocking(move || match pre {
        Precondition::Absent => hub.create_device(device),
        _ => hub.update_device(device, pre.etag()),
    })
    .await?;
    Ok(json_response(StatusCode::OK, &d, Some(&d.etag)))
}

async fn delete_device(
    State(s): State<Shared>,
    Id(id): Id,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    validate_device_id(&id)?;
    let pre = Precondition::read(&headers, s.opts.if_match);
    let hub = s.hub.clone();
    blocking(move || hub.delete_device(&id, pre.etag())).await?;
    Ok(no_content())
}

async fn statistics(State(s): State<Shared>) -> Result<Response, ApiError> {
    let hub = s.hub.clone();
    let st = blocking(move || Ok(hub.statistics())).await?;
    Ok(json_response(StatusCode::OK, &st, None))
}

// ----- bulk registry -----------------------------------------------------------------

/// An `importMode` of `ExportImportDevice`, read without regard to case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ImportMode {
    Create,
    CreateOrUpdate,
    CreateOrUpdateIfMatchETag,
    Update,
    UpdateIfMatchETag,
    Delete,
    DeleteIfMatchETag,
    UpdateTwin,
    UpdateTwinIfMatchETag,
}

impl ImportMode {
    const ALL: [(&'static str, ImportMode); 9] = [
        ("create", ImportMode::Create),
        ("createOrUpdate", ImportMode::CreateOrUpdate),
        (
            "createOrUpdateIfMatchETag",
            ImportMode::CreateOrUpdateIfMatchETag,
        ),
        ("update", ImportMode::Update),
        ("updateIfMatchETag", ImportMode::UpdateIfMatchETag),
        ("delete", ImportMode::Delete),
        ("deleteIfMatchETag", ImportMode::DeleteIfMatchETag),
        ("updateTwin", ImportMode::UpdateTwin),
        ("updateTwinIfMatchETag", ImportMode::UpdateTwinIfMatchETag),
    ];

    fn parse(s: &str) -> Option<ImportMode> {
        Self::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s.trim()))
            .map(|(_, m)| *m)
    }

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// One validated entry of a bulk call.
struct BulkEntry {
    id: String,
    mode: ImportMode,
    etag: Option<String>,
    twin_etag: Option<String>,
    device: Device,
    /// `{"tags": ..., "properties": {"desired": ...}}` when the entry carries any.
    twin: Option<Value>,
    reported: Option<Value>,
}

fn bulk_entry(i: usize, v: Value) -> Result<BulkEntry, ApiError> {
    let Value::Object(mut m) = v else {
        return Err(ApiError::invalid(format!("entry {i} is not a JSON object")));
    };
    let id = match m.get("id").or_else(|| m.get("deviceId")) {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(ApiError::new(
                ErrorCode::ArgumentNull,
                format!("entry {i} has no id"),
            ));
        }
    };
    validate_device_id(&id)
        .map_err(|e| ApiError::new(e.code, format!("entry {i}: {}", e.message)))?;
    let mode = match m.get("importMode") {
        None | Some(Value::Null) => ImportMode::CreateOrUpdate,
        Some(Value::String(s)) => ImportMode::parse(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "entry {i} ('{id}'): importMode '{}' is not one of {}",
                s.chars().take(40).collect::<String>(),
                ImportMode::ALL
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "entry {i} ('{id}'): importMode must be a string"
            )));
        }
    };
    if m.get("moduleId").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid(format!(
            "entry {i} ('{id}'): modules are not supported by this hub"
        )));
    }
    let text =
        |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    let etag = text(&m, "eTag");
    let twin_etag = text(&m, "twinETag");
    // Shapes are checked here, for every entry, before the call writes anything.
    let object = |v: Option<&Value>, field: &str| match v {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(ApiError::invalid(format!(
            "entry {i} ('{id}'): {field} must be a JSON object"
        ))),
    };
    object(m.get("tags"), "tags")?;
    object(m.get("properties"), "properties")?;
    if let Some(Value::Object(props)) = m.get("properties") {
        object(props.get("desired"), "properties.desired")?;
        object(props.get("reported"), "properties.reported")?;
    }
    let mut twin = Map::new();
    if let Some(t) = m.remove("tags").filter(|t| !t.is_null()) {
        twin.insert("tags".into(), t);
    }
    let mut reported = None;
    if let Some(Value::Object(mut props)) = m.remove("properties") {
        if let Some(d) = props.remove("desired").filter(|d| !d.is_null()) {
            twin.insert("properties".into(), json!({ "desired": d }));
        }
        reported = props.remove("reported").filter(|r| !r.is_null());
    }
    let mut dev = Map::new();
    dev.insert("deviceId".into(), Value::String(id.clone()));
    for k in [
        "status",
        "statusReason",
        "authentication",
        "capabilities",
        "deviceScope",
        "parentScopes",
    ] {
        if let Some(v) = m.remove(k) {
            dev.insert(k.into(), v);
        }
    }
    let device = device_from(dev)
        .map_err(|e| ApiError::invalid(format!("entry {i} ('{id}'): {}", e.message)))?;
    device
        .validate()
        .map_err(|e| ApiError::new(e.code, format!("entry {i}: {}", e.message)))?;
    Ok(BulkEntry {
        id,
        mode,
        etag,
        twin_etag,
        device,
        twin: (!twin.is_empty()).then_some(Value::Object(twin)),
        reported,
    })
}

/// `POST /devices`: at most 100 entries, each id once. A malformed request writes
/// nothing; otherwise each entry succeeds or fails on its own, and the answer is 200 when
/// all succeeded, 400 with the same `BulkRegistryOperationResult` body when any failed.
async fn bulk(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&s, &headers, body).await?;
    let Value::Array(items) = parse_json::<Value>(&bytes, "list of ExportImportDevice")? else {
        return Err(ApiError::invalid(
            "the body must be a JSON array of ExportImportDevice",
        ));
    };
    if items.len() > MAX_BULK {
        return Err(ApiError::new(
            ErrorCode::TooManyDevices,
            format!(
                "{} devices in one bulk call; at most {MAX_BULK} are allowed",
                items.len()
            ),
        ));
    }
    if items.is_empty() {
        return Err(ApiError::new(
            ErrorCode::ArgumentNull,
            "the bulk call names no device",
        ));
    }
    let entries = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| bulk_entry(i, v))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = HashSet::new();
    if let Some(dup) = entries.iter().find(|e| !seen.insert(e.id.as_str())) {
        return Err(ApiError::invalid(format!(
            "device '{}' appears more than once; a bulk call may name each device once",
            dup.id
        )));
    }
    if let Some(t) = &s.throttle {
        t.admit(Class::Registry, entries.len() as u32)?;
    }
    let hub = s.hub.clone();
    let errors = blocking(move || Ok(apply_bulk(&hub, entries))).await?;
    let ok = errors.is_empty();
    let result = json!({ "isSuccessful": ok, "errors": errors, "warnings": [] });
    Ok(json_response(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        },
        &result,
        None,
    ))
}

fn apply_bulk(hub: &EmbeddedHub, entries: Vec<BulkEntry>) -> Vec<Value> {
    let mut errors = Vec::new();
    let mut fail = |e: &BulkEntry, err: HubError| {
        errors.push(json!({
            "deviceId": e.id,
            "errorCode": err.code.name(),
            "errorStatus": err.message,
            "operation": e.mode.name(),
        }));
    };
    let exists = |id: &str| hub.read(|st| st.slot(id).is_some());
    // Creates go into the store in one transaction.
    let (creates, others): (Vec<BulkEntry>, Vec<BulkEntry>) =
        entries.into_iter().partition(|e| match e.mode {
            ImportMode::Create => true,
            ImportMode::CreateOrUpdate | ImportMode::CreateOrUpdateIfMatchETag => !exists(&e.id),
            _ => false,
        });
    let mut created = Vec::new();
    let mut batch = Vec::new();
    for e in creates {
        if exists(&e.id) {
            let msg = format!("A device with ID '{}' is already registered", e.id);
            fail(&e, HubError::new(ErrorCode::DeviceAlreadyExists, msg));
        } else {
            batch.push((e.device.clone(), e.twin.clone()));
            created.push(e);
        }
    }
    if !batch.is_empty() && hub.create_devices(batch).is_err() {
        // Something in the batch was refused (a twin over its limits, say): one by one,
        // so that each entry gets its own answer.
        for e in &created {
            let r = match &e.twin {
                Some(t) => hub.create_device_with_twin(e.device.clone(), t),
                None => hub.create_device(e.device.clone()),
            };
            if let Err(err) = r {
                fail(e, err);
            }
        }
    }
    let reported: Vec<(String, Value)> = created
        .iter()
        .filter_map(|e| e.reported.clone().map(|r| (e.id.clone(), r)))
        .filter(|(id, _)| exists(id))
        .collect();
    if !reported.is_empty() {
        match hub.patch_reported_many(&reported) {
            Ok(rs) => {
                for ((id, _), r) in reported.iter().zip(rs) {
                    if let (Err(err), Some(e)) = (r, created.iter().find(|e| &e.id == id)) {
                        fail(e, err);
                    }
                }
            }
            Err(err) => {
                for e in created.iter().filter(|e| e.reported.is_some()) {
                    fail(e, err.clone());
                }
            }
        }
    }
    for e in others {
        let r = match e.mode {
            ImportMode::Create => unreachable!("creates were handled above"),
            ImportMode::CreateOrUpdate | ImportMode::Update => {
                hub.update_device(e.device.clone(), None).map(drop)
            }
            ImportMode::CreateOrUpdateIfMatchETag | ImportMode::UpdateIfMatchETag => hub
                .update_device(e.device.clone(), e.etag.as_deref())
                .map(drop),
            ImportMode::Delete => hub.delete_device(&e.id, None),
            ImportMode::DeleteIfMatchETag => hub.delete_device(&e.id, e.etag.as_deref()),
            ImportMode::UpdateTwin | ImportMode::UpdateTwinIfMatchETag => {
                let etag = (e.mode == ImportMode::UpdateTwinIfMatchETag)
                    .then_some(e.twin_etag.as_deref())
                    .flatten();
                let patch = e.twin.clone().unwrap_or_else(|| json!({}));
                hub.update_twin(&e.id, &patch, etag).map(drop)
            }
        };
        // Update modes also carry twin content.
        let r = r.and_then(|()| match (e.mode, &e.twin) {
            (ImportMode::CreateOrUpdate | ImportMode::Update, Some(t)) => {
                hub.update_twin(&e.id, t, None).map(drop)
            }
            _ => Ok(()),
        });
        if let Err(err) = r {
            fail(&e, err);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::IF_MATCH, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn if_match_forms() {
        use IfMatchMode::*;
        use Precondition::*;
        assert_eq!(Precondition::read(&HeaderMap::new(), Strict), Absent);
        assert_eq!(Precondition::read(&h("*"), Strict), Any);
        assert_eq!(Precondition::read(&h("\"*\""), Strict), Any);
        assert_eq!(
            Precondition::read(&h("\"MQ==\""), Strict),
            Etag("MQ==".into())
        );
        assert_eq!(
            Precondition::read(&h("W/\"MQ==\""), Azure),
            Etag("MQ==".into())
        );
        assert_eq!(Precondition::read(&h("MQ=="), Strict), Etag("MQ==".into()));
        assert_eq!(Precondition::read(&h("MQ=="), Azure), Any);
    }

    #[test]
    fn operations_and_rights() {
        let c = |m: Method, p: &str| Op::classify(&m, p);
        assert_eq!(
            c(Method::POST, "/configurations/testQueries"),
            Some(Op::TestQueries)
        );
        assert_eq!(
            c(Method::PUT, "/configurations/abc"),
            Some(Op::PutConfiguration)
        );
        assert_eq!(c(Method::POST, "/devices/query"), Some(Op::Query));
        assert_eq!(c(Method::PUT, "/devices/query"), Some(Op::PutDevice));
        assert_eq!(c(Method::PATCH, "/twins/d1"), Some(Op::UpdateTwin));
        assert_eq!(c(Method::GET, "/nothing"), None);
        assert_eq!(c(Method::HEAD, "/twins/d1"), Some(Op::GetTwin));
        assert_eq!(c(Method::HEAD, "/devices"), Some(Op::ListDevices));
        assert_eq!(c(Method::POST, "/twins/d1"), None);
        let r = |m: Method, p: &str| Op::rights_for(&m, p);
        assert_eq!(
            r(Method::HEAD, "/configurations/c1"),
            Rights::SERVICE_CONNECT
        );
        assert_eq!(r(Method::POST, "/twins/d1"), Rights::SERVICE_CONNECT);
        assert_eq!(r(Method::PATCH, "/devices/d1"), Rights::REGISTRY_WRITE);
        assert_eq!(
            r(Method::POST, "/statistics/devices"),
            Rights::REGISTRY_READ
        );
        assert_eq!(r(Method::GET, "/no/such/route"), Rights::NONE);
        assert_eq!(Op::GetTwin.rights(), Rights::SERVICE_CONNECT);
        assert_eq!(Op::Bulk.rights(), Rights::REGISTRY_WRITE);
        assert_eq!(Op::Statistics.rights(), Rights::REGISTRY_READ);
    }

    #[test]
    fn import_modes_ignore_case() {
        assert_eq!(ImportMode::parse("Delete"), Some(ImportMode::Delete));
        assert_eq!(
            ImportMode::parse("UPDATETWINIFMATCHETAG"),
            Some(ImportMode::UpdateTwinIfMatchETag)
        );
        assert_eq!(ImportMode::parse("upsert"), None);
    }

    #[test]
    fn query_params_are_found() {
        let u: Uri = "/devices?top=5&api-version=2021-04-12".parse().unwrap();
        assert_eq!(query_param(&u, "api-version"), Some("2021-04-12"));
        assert_eq!(top(&u), Some(5));
        let u: Uri = "/devices".parse().unwrap();
        assert_eq!(query_param(&u, "api-version"), None);
    }
}
