//! The operator console: web pages served by the controller under `/console/`
//! (README.md, "Operator console").
//!
//! | route | what |
//! |---|---|
//! | `GET /console/`, `/console/r/{ns}/{name}`, `…/metric/{metric}`, `…/fleet` | the page (one HTML shell; `app.js` draws the view) |
//! | `GET /console/app.js`, `/console/app.css` | the assets, embedded in the binary |
//! | `GET /console/api/overview` | [`view::Overview`] |
//! | `GET /console/api/rollouts/{ns}/{name}` | [`view::RolloutPage`] |
//! | `GET /console/api/rollouts/{ns}/{name}/devices?metric=M&continuation=C` | one page of the devices behind a metric: one hub query, within the hub's query budget |
//! | `GET /console/api/rollouts/{ns}/{name}/devices?metric=notApplied` | the devices the configuration targets but is not applied to |
//! | `GET /console/api/rollouts/{ns}/{name}/fleet` | the fleet composition within the rollout's target: GROUP BY ring tag, model, region; devices no configuration covers (4 queries and a listing, reused for a minute) |
//! | `GET /console/api/session` | signed in or not, the CSRF token, whether writes are possible |
//! | `POST /console/api/login` | `{"token"}`: the API token becomes a session cookie |
//! | `POST /console/api/logout`, `POST /console/api/rollouts/{ns}/{name}/{action}` | need the session cookie and its `X-CSRF-Token` |
//!
//! Reading is open, as the controller's JSON API is. Acting needs the API token given to
//! `run`: the login form sends it once; the answer is an `HttpOnly; SameSite=Strict`
//! cookie naming a random session id (the token itself is never stored in the browser),
//! and a CSRF token that every write must echo in `X-CSRF-Token`. A write whose `Origin`
//! is not the console's own is refused as well. Every answer carries a
//! Content-Security-Policy that allows nothing from another origin, no inline script and
//! no inline style. The pages poll the JSON every second, so a change shows within about
//! two seconds of the controller recording it.
//!
//! The console sits below the controllers: a controller hands it a [`Backend`] (its
//! rollouts, its request queue, the driver of each rollout's hub, its token).

pub mod kube_auth;
pub mod view;

use crate::driver::Driver;
use crate::resources::{Operation, OperationKind};
use async_trait::async_trait;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
pub use view::RolloutRow;

/// What a controller gives the console.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Every rollout with its status.
    async fn rollouts(&self) -> Result<Vec<RolloutRow>, String>;
    /// Queues an operator request; `Ok(false)` when there is no such rollout.
    async fn request(&self, namespace: &str, name: &str, op: Operation) -> Result<bool, String>;
    /// The driver of a rollout's hub (its client and query budget), once the controller
    /// has reconciled the rollout.
    fn driver(&self, namespace: &str, name: &str) -> Option<Arc<Driver>>;
    /// The token that allows writes; `None`: the console is read-only.
    fn token(&self) -> Option<String>;
    /// The controller's clock (the demo's is virtual).
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
    /// Whether anyone can sign in to act (default: a token is configured).
    fn writable(&self) -> bool {
        self.token().is_some()
    }
    /// Who a sign-in token belongs to; `Ok(None)`: nobody. The default compares it with
    /// [`Backend::token`] in constant time and calls the person `operator`. (A backend
    /// for Kubernetes would ask the API server's TokenReview here.)
    async fn sign_in(&self, token: &str) -> Result<Option<Person>, String> {
        Ok(self
            .token()
            .filter(|want| bool::from(token.trim().as_bytes().ct_eq(want.as_bytes())))
            .map(|_| Person {
                name: "operator".to_string(),
                groups: Vec::new(),
            }))
    }
    /// Whether `who` may ask for `kind` on a rollout (default: whoever signed in). (A
    /// backend for Kubernetes would ask SubjectAccessReview whether `who` may `patch`
    /// that DeviceRollout.)
    async fn may_act(
        &self,
        _who: &Person,
        _namespace: &str,
        _name: &str,
        _kind: OperationKind,
    ) -> Result<bool, String> {
        Ok(true)
    }
}

/// Who signed in: a name and the groups the name belongs to (for an authorizer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    /// The name requests are recorded under.
    pub name: String,
    /// The groups, as the authenticator reported them.
    pub groups: Vec<String>,
}

/// The session cookie's name.
pub const COOKIE: &str = "ringmaster_console";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Most sessions kept at once (the oldest is dropped first).
pub const MAX_SESSIONS: usize = 256;
/// Failed sign-ins allowed per minute (all clients together); past it every sign-in is
/// refused until the minute is over, so the token cannot be guessed at speed.
pub const MAX_FAILED_LOGINS_PER_MINUTE: u32 = 10;
/// Devices per page of a troubleshooting list.
pub const PAGE_SIZE: usize = 20;

/// The Content-Security-Policy of every console answer: same origin only, no inline
/// script or style, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const FAVICON: &str = include_str!("assets/favicon.svg");

struct Session {
    csrf: String,
    who: Person,
    expires: Instant,
}

/// Samples kept per rollout for its charts (at one every [`SAMPLE_EVERY`] while counts
/// change, about an hour of a moving rollout).
pub const MAX_SAMPLES: usize = 1800;
/// How often the console samples the controller's status for the charts.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

struct Console {
    backend: Arc<dyn Backend>,
    sessions: Mutex<HashMap<String, Session>>,
    samples: Mutex<HashMap<(String, String), std::collections::VecDeque<view::Sample>>>,
    sampling: std::sync::atomic::AtomicBool,
    compositions: Mutex<HashMap<(String, String), (Instant, Value)>>,
    /// Failed sign-ins in the current minute: (window start, count).
    failed_logins: Mutex<(Instant, u32)>,
}

impl Console {
    /// Records the rollouts' current counts where they changed.
    fn record(&self, rows: &[RolloutRow], now: jiff::Timestamp) {
        let mut all = self.samples.lock();
        for r in rows {
            let Some(s) = view::Sample::of(r, now) else {
                continue;
            };
            let q = all
                .entry((r.namespace.clone(), r.name.clone()))
                .or_default();
            if q.back().is_some_and(|last| last.same(&s)) {
                continue;
            }
            if q.len() >= MAX_SAMPLES {
                q.pop_front();
            }
            q.push_back(s);
        }
    }

    /// Starts the sampler on the first request (inside the runtime); it ends with the
    /// router.
    fn start_sampling(self: &Arc<Self>) {
        if self
            .sampling
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SAMPLE_EVERY).await;
                let Some(st) = weak.upgrade() else { return };
                if let Ok(rows) = st.backend.rollouts().await {
                    st.samples.lock().retain(|k, _| {
                        rows.iter().any(|r| (&r.namespace, &r.name) == (&k.0, &k.1))
                    });
                    st.record(&rows, st.backend.now());
                }
            }
        });
    }
}

/// The console's routes, to merge into a controller's router.
pub fn router(backend: Arc<dyn Backend>) -> Router {
    let st = Arc::new(Console {
        backend,
        sessions: Mutex::new(HashMap::new()),
        samples: Mutex::new(HashMap::new()),
        sampling: Default::default(),
        compositions: Mutex::new(HashMap::new()),
        failed_logins: Mutex::new((Instant::now(), 0)),
    });
    Router::new()
        .route("/console", get(|| async { redirect("/console/") }))
        .route("/console/", get(page))
        .route("/console/r/{ns}/{name}", get(page))
        .route("/console/r/{ns}/{name}/metric/{metric}", get(page))
        .route("/console/r/{ns}/{name}/fleet", get(page))
        .route(
            "/console/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/console/favicon.svg",
            get(|| async { asset(FAVICON, "image/svg+xml") }),
        )
        .route("/console/api/overview", get(overview))
        .route("/console/api/rollouts/{ns}/{name}", get(rollout))
        .route("/console/api/rollouts/{ns}/{name}/devices", get(devices))
        .route("/console/api/rollouts/{ns}/{name}/fleet", get(fleet))
        .route("/console/api/rollouts/{ns}/{name}/{action}", post(act))
        .route("/console/api/session", get(session))
        .route("/console/api/login", post(login))
        .route("/console/api/logout", post(logout))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(st)
}

async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

async fn overview(State(st): State<Arc<Console>>) -> Response {
    st.start_sampling();
    match st.backend.rollouts().await {
        Ok(rows) => {
            let now = st.backend.now();
            st.record(&rows, now);
            Json(view::overview(&rows, now)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn find(st: &Console, ns: &str, name: &str) -> Result<RolloutRow, Response> {
    let rows = st
        .backend
        .rollouts()
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    rows.into_iter()
        .find(|r| r.namespace == ns && r.name == name)
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("no DeviceRollout {ns}/{name}"),
            )
        })
}

async fn rollout(
    State(st): State<Arc<Console>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    st.start_sampling();
    match find(&st, &ns, &name).await {
        Ok(row) => {
            let now = st.backend.now();
            st.record(std::slice::from_ref(&row), now);
            let samples: Vec<view::Sample> = st
                .samples
                .lock()
                .get(&(ns, name))
                .map(|q| q.iter().cloned().collect())
                .unwrap_or_default();
            Json(view::rollout_page(&row, now, &samples)).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct DevicesParams {
    metric: String,
    continuation: Option<String>,
}

/// The twin without the hub's bookkeeping (`$metadata`, `$version`).
fn strip_meta(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_meta(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

async fn devices(
    State(st): State<Arc<Console>>,
    Path((ns, name)): Path<(String, String)>,
    Query(p): Query<DevicesParams>,
) -> Response {
    let row = match find(&st, &ns, &name).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let not_applied =
        p.metric == view::NOT_APPLIED && !row.rollout.spec.metrics.contains_key(view::NOT_APPLIED);
    let Some(cond) = row
        .rollout
        .spec
        .metrics
        .get(&p.metric)
        .cloned()
        .or_else(|| not_applied.then(|| "targeted, not applied".to_string()))
    else {
        let known: Vec<_> = row.rollout.spec.metrics.keys().cloned().collect();
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "metric={:?}: {ns}/{name} has no such metric (it has: {}; or notApplied)",
                p.metric,
                known.join(", ")
            ),
        );
    };
    let Some(id) = row.status.configuration_id.clone() else {
        return error(
            StatusCode::CONFLICT,
            format!("{ns}/{name} has no configuration on the hub yet"),
        );
    };
    let Some(driver) = st.backend.driver(&ns, &name) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the hub of {ns}/{name} is not connected yet; try again after its first reconcile"
            ),
        );
    };
    let query = if not_applied {
        view::not_applied_query(&id)
    } else {
        view::devices_query(&id, &cond)
    };
    let page = driver
        .query_page(&query, Some(PAGE_SIZE), p.continuation.as_deref())
        .await;
    match page {
        Ok(Ok(page)) => {
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|t| {
                    json!({
                        "deviceId": t.get("deviceId"),
                        "tags": t.get("tags").map(strip_meta),
                        "reported": t.pointer("/properties/reported").map(strip_meta),
                        "configuration": t.pointer(&format!("/configurations/{id}")),
                    })
                })
                .collect();
            Json(json!({
                "metric": p.metric,
                "condition": cond,
                "query": query,
                "items": items,
                "continuation": page.continuation,
            }))
            .into_response()
        }
        Ok(Err(wait)) => {
            let secs = wait.as_secs().max(1);
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the hub's query budget is spent for now; the next query is allowed in {secs}s"
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("the hub refused `{query}`: {e}"),
        ),
    }
}

/// How long a fleet composition is reused before it is asked of the hub again.
pub const COMPOSITION_TTL: Duration = Duration::from_secs(60);

/// One query within the budget, as JSON rows or the reason it was not asked.
async fn budgeted(driver: &Driver, query: &str) -> Result<Vec<Value>, String> {
    match driver.query_page(query, None, None).await {
        Ok(Ok(page)) => Ok(page.items),
        Ok(Err(wait)) => Err(format!(
            "not asked: the hub's query budget is spent for now (next query in {}s)",
            wait.as_secs().max(1)
        )),
        Err(e) => Err(format!("the hub refused `{query}`: {e}")),
    }
}

/// The devices of the rollout's base target per ring tag, model and region (GROUP BY
/// queries), and how many of them no configuration covers: 4 queries and one listing,
/// reused for [`COMPOSITION_TTL`].
async fn fleet(
    State(st): State<Arc<Console>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let key = (ns.clone(), name.clone());
    if let Some((at, v)) = st.compositions.lock().get(&key)
        && at.elapsed() < COMPOSITION_TTL
    {
        return Json(v.clone()).into_response();
    }
    let row = match find(&st, &ns, &name).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(driver) = st.backend.driver(&ns, &name) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the hub of {ns}/{name} is not connected yet; try again after its first reconcile"
            ),
        );
    };
    let target = row.rollout.spec.target.clone();
    let mut groups = Vec::new();
    for tag in view::COMPOSITION_TAGS {
        let query = view::group_query(&target, tag);
        let (rows, problem) = match budgeted(&driver, &query).await {
            Ok(items) => {
                let mut rows: Vec<(String, u64)> = items
                    .iter()
                    .map(|r| {
                        let value = match r.get("value") {
                            Some(Value::String(s)) => s.clone(),
                            None | Some(Value::Null) => "(none)".to_string(),
                            Some(other) => other.to_string(),
                        };
                        (value, r.get("n").and_then(Value::as_u64).unwrap_or(0))
                    })
                    .collect();
                rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                (rows, None)
            }
            Err(e) => (Vec::new(), Some(e)),
        };
        groups.push(json!({"tag": tag, "query": query, "rows": rows, "problem": problem}));
    }
    let mut requests = Vec::new();
    let uncovered = match driver.list(&mut requests).await {
        Ok(Ok(configs)) => {
            let ids: Vec<String> = configs.into_iter().map(|c| c.id).collect();
            let query = view::uncovered_query(&target, &ids);
            match budgeted(&driver, &query).await {
                Ok(items) => json!({
                    "query": query,
                    "configurations": ids.len(),
                    "n": items.first().and_then(|r| r.get("n")).and_then(Value::as_u64),
                }),
                Err(e) => json!({"query": query, "problem": e}),
            }
        }
        Ok(Err(wait)) => json!({"problem": format!(
            "not asked: the hub's configuration budget is spent for now (next listing in {}s)",
            wait.as_secs().max(1)
        )}),
        Err(e) => json!({"problem": format!("the hub refused to list its configurations: {e}")}),
    };
    let v = json!({
        "namespace": ns,
        "name": name,
        "target": target,
        "groups": groups,
        "uncovered": uncovered,
        "at": st.backend.now(),
    });
    st.compositions
        .lock()
        .insert(key, (Instant::now(), v.clone()));
    Json(v).into_response()
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The CSRF token and the person of the request's live session.
fn session_of(st: &Console, headers: &HeaderMap) -> Option<(String, Person)> {
    let id = cookie_value(headers)?;
    let mut sessions = st.sessions.lock();
    let now = Instant::now();
    sessions.retain(|_, s| s.expires > now);
    sessions.get(&id).map(|s| (s.csrf.clone(), s.who.clone()))
}

/// `Origin`, when sent, must be the console's own (`Host`).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest == host)
}

/// A write's session and CSRF check: who is acting; `Err` is the answer to send.
fn check_write(st: &Console, headers: &HeaderMap) -> Result<Person, Box<Response>> {
    if !same_origin(headers) {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "the request's Origin is not this console's",
        )));
    }
    let Some((csrf, who)) = session_of(st, headers) else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "sign in first: actions need a console session (the API token, given once to the login form)",
        )));
    };
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())) {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "missing or wrong X-CSRF-Token: send the one /console/api/session gives",
        )));
    }
    Ok(who)
}

async fn session(State(st): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let s = session_of(&st, &headers);
    Json(json!({
        "signedIn": s.is_some(),
        "csrf": s.as_ref().map(|s| &s.0),
        "who": s.as_ref().map(|s| &s.1.name),
        "writable": st.backend.writable(),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct LoginBody {
    token: String,
}

async fn login(State(st): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    if !same_origin(&headers) {
        return error(
            StatusCode::FORBIDDEN,
            "the request's Origin is not this console's",
        );
    }
    if !st.backend.writable() {
        return error(
            StatusCode::FORBIDDEN,
            "the console is read-only: start `ringmaster run` with --api-token-env or --api-token-file to allow actions",
        );
    };
    let Ok(b) = serde_json::from_slice::<LoginBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "body: expected {\"token\": \"...\"}",
        );
    };
    {
        let mut failed = st.failed_logins.lock();
        if failed.0.elapsed() >= Duration::from_secs(60) {
            *failed = (Instant::now(), 0);
        }
        if failed.1 >= MAX_FAILED_LOGINS_PER_MINUTE {
            let wait = 60u64.saturating_sub(failed.0.elapsed().as_secs()).max(1);
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed sign-ins this minute; try again in {wait}s"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return r;
        }
    }
    let who = match st.backend.sign_in(&b.token).await {
        Ok(Some(who)) => who,
        Ok(None) => {
            st.failed_logins.lock().1 += 1;
            return error(
                StatusCode::UNAUTHORIZED,
                "the token was not accepted: give the API token `ringmaster run` was started with (or, where the console signs in with Kubernetes, your own bearer token)",
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("cannot check the token: {e}"),
            );
        }
    };
    let id = random_hex();
    let csrf = random_hex();
    {
        let mut sessions = st.sessions.lock();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                who: who.clone(),
                expires: now + SESSION_TTL,
            },
        );
    }
    let cookie = format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    (
        [(header::SET_COOKIE, cookie)],
        Json(json!({"signedIn": true, "csrf": csrf, "who": who.name})),
    )
        .into_response()
}

async fn logout(State(st): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = check_write(&st, &headers) {
        return *r;
    }
    if let Some(id) = cookie_value(&headers) {
        st.sessions.lock().remove(&id);
    }
    let cookie = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        [(header::SET_COOKIE, cookie)],
        Json(json!({"signedIn": false})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ActBody {
    revision: Option<String>,
    ring: Option<String>,
}

/// A person's name as it goes into a request id: letters, digits, `.`, `-`, `_`, `@`
/// and `:` kept, anything else `_`, at most 48 characters.
fn id_part(who: &str) -> String {
    who.chars()
        .take(48)
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_@:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn kind_of(action: &str) -> Option<OperationKind> {
    Some(match action {
        "promote" => OperationKind::Promote,
        "pause" => OperationKind::Pause,
        "resume" => OperationKind::Resume,
        "abort" => OperationKind::Abort,
        "retry" => OperationKind::Retry,
        _ => return None,
    })
}

async fn act(
    State(st): State<Arc<Console>>,
    Path((ns, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(kind) = kind_of(&action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown action {action:?}: use promote, pause, resume, abort or retry"),
        );
    };
    let who = match check_write(&st, &headers) {
        Ok(who) => who,
        Err(r) => return *r,
    };
    match st.backend.may_act(&who, &ns, &name, kind).await {
        Ok(true) => {}
        Ok(false) => {
            return error(
                StatusCode::FORBIDDEN,
                format!("{} may not {action} {ns}/{name}", who.name),
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "cannot check whether {} may {action} {ns}/{name}: {e}",
                    who.name
                ),
            );
        }
    }
    let b: ActBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body: {e} (expected {{\"revision\", \"ring\"}}: what the page showed)"),
            );
        }
    };
    let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    let op = Operation {
        id: format!(
            "{now}-{}-console-{}-{:04x}",
            kind.name(),
            id_part(&who.name),
            rand::random::<u16>()
        ),
        kind,
        revision: b.revision,
        ring: b.ring,
    };
    match st.backend.request(&ns, &name, op.clone()).await {
        Ok(true) => (StatusCode::ACCEPTED, Json(json!({"operation": op}))).into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("no DeviceRollout {ns}/{name}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// A new random token for a console whose controller has none of its own (the demo).
pub fn new_token() -> String {
    random_hex()
}

/// Hands a generated console token to the person who started the process: written to
/// `file` (mode 0600) when given, printed to `out` only when it is a terminal, never to
/// a log stream.
pub fn hand_over_token(
    token: &str,
    file: Option<&std::path::Path>,
    out_is_terminal: bool,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(path) = file {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{}: cannot write the console token: {e}", path.display()),
            )
        })?;
        writeln!(f, "{token}")?;
        writeln!(out, "console token: written to {}", path.display())?;
    } else if out_is_terminal {
        writeln!(out, "console token (sign in with it to act): {token}")?;
    } else {
        writeln!(
            out,
            "console token: not printed, stdout is not a terminal; give --console-token-file PATH to have it written to a file only you can read"
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::resources::DeviceRollout;

    struct Fake {
        rows: Vec<RolloutRow>,
        ops: Mutex<Vec<(String, String, Operation)>>,
    }

    #[async_trait]
    impl Backend for Fake {
        async fn rollouts(&self) -> Result<Vec<RolloutRow>, String> {
            Ok(self.rows.clone())
        }
        async fn request(&self, ns: &str, name: &str, op: Operation) -> Result<bool, String> {
            let known = self
                .rows
                .iter()
                .any(|r| r.namespace == ns && r.name == name);
            if known {
                self.ops.lock().push((ns.into(), name.into(), op));
            }
            Ok(known)
        }
        fn driver(&self, _: &str, _: &str) -> Option<Arc<Driver>> {
            None
        }
        fn token(&self) -> Option<String> {
            Some("right-token".into())
        }
    }

    async fn serve_fake() -> (String, Arc<Fake>) {
        let rollout: DeviceRollout = serde_saphyr::from_str(
            "apiVersion: ringmaster.dev/v1alpha1\nkind: DeviceRollout\nmetadata: {name: fw, namespace: fleet}\nspec:\n  target: \"*\"\n  content: {device: {properties.desired.x: {v: 1}}}\n  rings: [{name: all, target: \"*\"}]\n",
        )
        .unwrap();
        let fake = Arc::new(Fake {
            rows: vec![RolloutRow {
                namespace: "fleet".into(),
                name: "fw".into(),
                rollout,
                status: Default::default(),
                error: None,
                created: None,
                deleting: false,
            }],
            ops: Mutex::default(),
        });
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", tcp.local_addr().unwrap());
        tokio::spawn(crate::net::serve(
            tcp,
            router(fake.clone()),
            crate::net::Limits::DEFAULT,
            std::future::pending(),
        ));
        (url, fake)
    }

    async fn login(http: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
        http.post(format!("{url}/console/api/login"))
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_write_needs_a_session_its_csrf_token_and_the_same_origin() {
        let (url, fake) = serve_fake().await;
        let http = reqwest::Client::new();
        let promote = format!("{url}/console/api/rollouts/fleet/fw/promote");
        let aimed = json!({"revision": "r1", "ring": "all"});

        // The page carries the CSP; reading needs nothing.
        let page = http.get(format!("{url}/console/")).send().await.unwrap();
        assert_eq!(page.headers()["content-security-policy"], CSP);
        let o = http
            .get(format!("{url}/console/api/overview"))
            .send()
            .await
            .unwrap();
        assert_eq!(o.status(), 200);

        // No session.
        let r = http.post(&promote).json(&aimed).send().await.unwrap();
        assert_eq!(r.status(), 401);
        // A wrong token signs nobody in.
        let r = login(&http, &url, "wrong").await;
        assert_eq!(r.status(), 401);
        assert!(r.headers().get(header::SET_COOKIE).is_none());

        // The right one: an HttpOnly, SameSite=Strict cookie and a CSRF token.
        let r = login(&http, &url, "right-token").await;
        assert_eq!(r.status(), 200);
        let set = r.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            set.contains("HttpOnly")
                && set.contains("SameSite=Strict")
                && set.contains("Path=/console"),
            "{set}"
        );
        assert!(!set.contains("right-token"), "{set}");
        let cookie = set.split(';').next().unwrap().to_string();
        let csrf = r.json::<Value>().await.unwrap()["csrf"]
            .as_str()
            .unwrap()
            .to_string();

        // A session without its CSRF token, or from another origin, is refused.
        let r = http
            .post(&promote)
            .header(header::COOKIE, &cookie)
            .json(&aimed)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let r = http
            .post(&promote)
            .header(header::COOKIE, &cookie)
            .header("x-csrf-token", &csrf)
            .header(header::ORIGIN, "http://evil.example")
            .json(&aimed)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(fake.ops.lock().is_empty());

        // Both: queued, aimed at what the page showed.
        let r = http
            .post(&promote)
            .header(header::COOKIE, &cookie)
            .header("x-csrf-token", &csrf)
            .header(header::ORIGIN, &url)
            .json(&aimed)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        {
            let ops = fake.ops.lock();
            let (_, _, op) = &ops[0];
            assert_eq!(op.kind, OperationKind::Promote);
            assert_eq!(
                (op.revision.as_deref(), op.ring.as_deref()),
                (Some("r1"), Some("all"))
            );
            assert!(op.id.contains("-promote-console-operator-"), "{}", op.id);
        }

        // Signed out, the cookie acts no more.
        let r = http
            .post(format!("{url}/console/api/logout"))
            .header(header::COOKIE, &cookie)
            .header("x-csrf-token", &csrf)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = http
            .post(&promote)
            .header(header::COOKIE, &cookie)
            .header("x-csrf-token", &csrf)
            .json(&aimed)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);

        // Guessing is throttled: past the failed sign-ins of a minute, even the right
        // token waits.
        for _ in 1..MAX_FAILED_LOGINS_PER_MINUTE {
            assert_eq!(login(&http, &url, "guess").await.status(), 401);
        }
        assert_eq!(login(&http, &url, "right-token").await.status(), 429);
    }

    #[test]
    fn a_name_in_a_request_id_keeps_to_safe_characters() {
        assert_eq!(
            id_part("system:serviceaccount:ops:alice bob/x"),
            "system:serviceaccount:ops:alice_bob_x"
        );
        assert_eq!(id_part(&"a".repeat(100)).len(), 48);
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; ringmaster_console=abc; b=2"),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("abc"));
    }

    #[test]
    fn a_foreign_origin_is_not_same_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9090"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9090"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
    }
}
