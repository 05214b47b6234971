//! The HTTP adapter: axum routes under `/v1` following the seed's file-system paths, JSON
//! bodies in the protocol's JSON form, and `{"error", "code"}` answers for everything that is
//! refused. Handlers parse, call the engine (store access on the blocking pool), and format.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use metrics_exporter_prometheus::PrometheusHandle;
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::payload::validate_record_id;
use pigeonhole_proto::request::Request as ProtoRequest;
use pigeonhole_store::{RecordMeta, StoredRecord};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::commit::Committer;
use crate::deliveries::Deliveries;
use crate::engine::{Delivery, Engine, PageSize, RequestPath, Verified};
use crate::error::{ErrorCode, RelayError};
use crate::notify::{DropWaiters, Notifier};
use crate::postage::Postage;
use crate::session::Sessions;

/// Everything a handler needs.
pub struct AppState {
    /// The decision engine.
    pub engine: Arc<Engine>,
    /// The group-commit writer.
    pub committer: Committer,
    /// Listener wake-ups.
    pub notifier: Arc<Notifier>,
    /// The delivery group: listens' and long polls' pages, counted together.
    pub deliveries: Deliveries,
    /// Requests per IP.
    pub ip_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Registrations per IP.
    pub registration_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Writes per account.
    pub write_limiter: DefaultKeyedRateLimiter<PublicKey>,
    /// The Prometheus exporter, when metrics are installed.
    pub metrics: Option<PrometheusHandle>,
    /// Session challenges and tokens.
    pub sessions: Sessions,
    /// Becomes `true` when the relay starts shutting down: long polls, slow uploads and
    /// WebSocket sessions end at once instead of holding shutdown up.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Drop postage keys and issuance quotas.
    pub postage: Postage,
    /// Drop long polls and subscriptions.
    pub drop_waiters: Arc<DropWaiters>,
}

impl AppState {
    /// Resolves when the relay starts shutting down.
    pub async fn shutting_down(&self) {
        let mut shutdown = self.shutdown.clone();
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    }
}

impl AppState {
    /// Builds the state with rate limiters from the engine's configuration.
    pub fn new(
        engine: Arc<Engine>,
        committer: Committer,
        notifier: Arc<Notifier>,
        metrics: Option<PrometheusHandle>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let limits = &engine.config().limits;
        let per_sec = NonZeroU32::new(limits.requests_per_sec_per_ip).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst_per_ip).unwrap_or(NonZeroU32::MIN);
        let per_hour = NonZeroU32::new(limits.registrations_per_hour_per_ip).unwrap_or(NonZeroU32::MIN);
        let writes = NonZeroU32::new(limits.writes_per_sec_per_account).unwrap_or(NonZeroU32::MIN);
        let write_burst = NonZeroU32::new(limits.write_burst_per_account).unwrap_or(NonZeroU32::MIN);
        Self {
            postage: Postage::new(&engine),
            drop_waiters: committer.drop_waiters().clone(),
            deliveries: Deliveries::start(engine.clone()),
            ip_limiter: RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            registration_limiter: RateLimiter::keyed(Quota::per_hour(per_hour)),
            write_limiter: RateLimiter::keyed(Quota::per_second(writes).allow_burst(write_burst)),
            engine,
            committer,
            notifier,
            metrics,
            sessions: Sessions::default(),
            shutdown,
        }
    }
}

pub(crate) type Shared = Arc<AppState>;

/// An error as an HTTP response.
pub struct ApiError(pub RelayError);

impl From<RelayError> for ApiError {
    fn from(error: RelayError) -> Self {
        Self(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        metrics::counter!("pigeonhole_rejections_total", "reason" => self.0.code.as_str()).increment(1);
        let mut response = (status, axum::Json(ErrorBody::of(&self.0))).into_response();
        if self.0.code == ErrorCode::RateLimited {
            // A lower bound; the per-address limiter replaces it with its exact wait.
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The body of every error answer, over HTTP and in WebSocket frames: `{"error", "code"}`.
#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
}

impl<'a> ErrorBody<'a> {
    /// The body that answers `error`.
    pub(crate) fn of(error: &'a RelayError) -> Self {
        Self { error: &error.message, code: error.code.as_str() }
    }
}

pub(crate) fn error(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError(RelayError::new(code, message))
}

type ApiResult = Result<Response, ApiError>;

/// Builds the router.
pub fn router(state: Shared) -> Router {
    let max_connections = state.engine.config().limits.max_connections;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_page))
        .route("/v1/info", get(info))
        .route("/v1/openapi.json", get(crate::openapi::serve))
        .route("/v1/accounts", post(register))
        .route("/v1/usage", post(usage))
        .route("/v1/session", get(session_challenge).post(session_open))
        .route("/v1/ws", get(crate::ws::upgrade))
        .route("/v1/drops", post(crate::drops::upload).get(crate::drops::download))
        .route("/v1/drops/ws", get(crate::drops::upgrade))
        .route("/v1/postage", post(crate::drops::issue))
        .route("/v1/{owner}/outbox/{receiver}", post(outbox))
        .route("/v1/{owner}/outbox/{receiver}/{record_id}", post(record_post).put(record_put))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(tower::limit::ConcurrencyLimitLayer::new(max_connections))
        .with_state(state)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Rate limiting per IP, request metrics, and one log line per request.
async fn observe(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |info| info.0.ip());
    let endpoint = endpoint_label(request.uri().path());
    if let Err(not_until) = state.ip_limiter.check_key(&ip) {
        let wait =
            not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        let mut response =
            error(ErrorCode::RateLimited, "too many requests from this address; slow down").into_response();
        let secs = wait.as_secs().max(1).to_string();
        if let Ok(value) = HeaderValue::from_str(&secs) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16().to_string();
    metrics::counter!("pigeonhole_requests_total", "endpoint" => endpoint, "status" => status).increment(1);
    metrics::histogram!("pigeonhole_request_seconds", "endpoint" => endpoint).record(elapsed.as_secs_f64());
    tracing::debug!(%method, endpoint, status = response.status().as_u16(), elapsed_us = elapsed.as_micros() as u64, "request");
    response
}

/// A bounded set of labels for metrics: never a raw path (which would name keys and ids).
fn endpoint_label(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["health"] => "health",
        ["metrics"] => "metrics",
        ["v1", "info"] => "info",
        ["v1", "openapi.json"] => "openapi",
        ["v1", "accounts"] => "register",
        ["v1", "usage"] => "usage",
        ["v1", "session"] => "session",
        ["v1", "ws"] => "ws",
        ["v1", "drops"] => "drops",
        ["v1", "drops", "ws"] => "drops_ws",
        ["v1", "postage"] => "postage",
        ["v1", _, "outbox", _] => "outbox",
        ["v1", _, "outbox", _, _] => "record",
        _ => "other",
    }
}

async fn not_found() -> ApiError {
    error(ErrorCode::NotFound, "no such endpoint; see GET /v1/info and spec/PROTOCOL.md")
}

async fn method_not_allowed() -> Response {
    let mut response =
        error(ErrorCode::BadRequest, "this method is not allowed on this path").into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

async fn health(State(state): State<Shared>) -> Response {
    axum::Json(json!({"status": "ok", "relay": state.engine.public_key().to_hex()})).into_response()
}

async fn metrics_page(State(state): State<Shared>) -> Response {
    match &state.metrics {
        Some(handle) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
        }
        None => error(ErrorCode::NotFound, "metrics are not enabled on this relay").into_response(),
    }
}

async fn info(State(state): State<Shared>) -> Response {
    let now = now_ms();
    let document = state.engine.info_document(now);
    let info = state.engine.info();
    let mut body = json!({
        "relay": state.engine.public_key().to_hex(),
        "timestamp": document.timestamp,
        "info": info,
        "document": BASE64.encode(document.to_bytes()),
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), crate::drops::info_fields(&state, now))
    {
        body.extend(extra);
    }
    axum::Json(body).into_response()
}

/// Reads the body as UTF-8 within the size limit and the slow-client timeout.
pub(crate) async fn read_body(state: &AppState, body: Body) -> Result<String, ApiError> {
    let limits = &state.engine.config().limits;
    let timeout = Duration::from_secs(u64::from(limits.request_timeout_secs));
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limits.max_body_bytes));
    let bytes = match tokio::select! {
        read = read => read,
        () = state.shutting_down() => return Err(error(ErrorCode::Busy, "the relay is shutting down; retry shortly")),
    } {
        Err(_) => return Err(error(ErrorCode::BadRequest, "the request body took too long to arrive")),
        Ok(Err(_)) => {
            return Err(error(
                ErrorCode::TooLarge,
                format!(
                    "the request body is larger than this relay's limit of {} bytes",
                    limits.max_body_bytes
                ),
            ));
        }
        Ok(Ok(bytes)) => bytes,
    };
    String::from_utf8(bytes.to_vec())
        .map_err(|_| error(ErrorCode::BadRequest, "the request body is not UTF-8 JSON"))
}

/// Authenticates and admits a request: a signed request in the body, or (with
/// `Authorization: Bearer <token>`) an unsigned request from the session's key.
async fn admitted(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Verified, ApiError> {
    // Check the session header before reading the body, so a bad token costs no upload.
    session_key(state, headers)?;
    let text = read_body(state, body).await?;
    admitted_text(state, headers, &text)
}

fn session_key(state: &AppState, headers: &HeaderMap) -> Result<Option<PublicKey>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(t.trim(), &mut out).ok().map(|()| out)
        })
        .ok_or_else(|| error(ErrorCode::BadRequest, "Authorization must be `Bearer <64 hex token>`"))?;
    let key = state.sessions.token_key(&token, now_ms()).ok_or_else(|| {
        error(
            ErrorCode::BadSignature,
            "unknown or expired session token; open a new session (GET /v1/session)",
        )
    })?;
    Ok(Some(key))
}

/// [`admitted`] for a body already read.
pub(crate) fn admitted_text(state: &AppState, headers: &HeaderMap, text: &str) -> Result<Verified, ApiError> {
    let verified = match session_key(state, headers)? {
        Some(key) => state.engine.parse_in_session(text, &key)?,
        None => state.engine.parse(text)?,
    };
    state.engine.admit(&verified.message, now_ms())?;
    Ok(verified)
}

fn parse_key(segment: &str, name: &str) -> Result<PublicKey, ApiError> {
    PublicKey::from_hex(segment).map_err(|_| {
        error(ErrorCode::BadRequest, format!("path segment `{name}` is not a 64-hex-character public key"))
    })
}

fn outbox_path(path: Result<Path<(String, String)>, PathRejection>) -> Result<RequestPath, ApiError> {
    let Path((owner, receiver)) = path.map_err(|e| error(ErrorCode::BadRequest, e.body_text()))?;
    Ok(RequestPath {
        owner: parse_key(&owner, "owner")?,
        receiver: parse_key(&receiver, "receiver")?,
        record_id: None,
    })
}

fn record_path(path: Result<Path<(String, String, String)>, PathRejection>) -> Result<RequestPath, ApiError> {
    let Path((owner, receiver, record_id)) = path.map_err(|e| error(ErrorCode::BadRequest, e.body_text()))?;
    validate_record_id(&record_id)
        .map_err(|e| error(ErrorCode::BadRequest, format!("path segment `recordId`: {e}")))?;
    Ok(RequestPath {
        owner: parse_key(&owner, "owner")?,
        receiver: parse_key(&receiver, "receiver")?,
        record_id: Some(record_id),
    })
}

/// Runs store work on the blocking pool (fjall reads and fsyncs block).
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RelayError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError(RelayError::internal("blocking task failed", &e)))?
        .map_err(ApiError)
}

fn meta_json(meta: &RecordMeta) -> Value {
    json!({
        "recordId": meta.record_id,
        "seq": meta.seq,
        "storedAt": meta.stored_at,
        "expiresAt": meta.expires_at,
        "size": meta.size,
        "pulls": meta.pulls,
        "maxPulls": meta.max_pulls,
        "tag": meta.tag.map(|t| t.to_hex()),
    })
}

/// A record as reads, listens and long polls serve it: its metadata, then the stored request
/// as JSON (written in place by the protocol's encoder, never re-parsed).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecordOut {
    record_id: String,
    seq: u64,
    stored_at: u64,
    expires_at: u64,
    size: u32,
    pulls: u32,
    max_pulls: u32,
    tag: Option<String>,
    record: StoredJson,
}

/// A stored request, serialized as its JSON form.
pub(crate) struct StoredJson(Verified);

impl Serialize for StoredJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.json().serialize(serializer)
    }
}

fn record_out(record: StoredRecord) -> Result<RecordOut, ApiError> {
    let stored = Verified::from_stored_bytes(&record.bytes)
        .map_err(|e| ApiError(RelayError::internal("a stored record does not decode", &e)))?;
    let meta = record.meta;
    Ok(RecordOut {
        record_id: meta.record_id,
        seq: meta.seq,
        stored_at: meta.stored_at,
        expires_at: meta.expires_at,
        size: meta.size,
        pulls: meta.pulls,
        max_pulls: meta.max_pulls,
        tag: meta.tag.map(|t| t.to_hex()),
        record: StoredJson(stored),
    })
}

fn record_json(record: StoredRecord) -> Result<Value, ApiError> {
    serde_json::to_value(record_out(record)?).map_err(|e| ApiError(RelayError::internal("record JSON", &e)))
}

/// The outcome of one operation: a status and its JSON body, already rendered. HTTP handlers
/// and WebSocket frames share these, so both transports answer identically.
pub(crate) type OpResult = Result<(StatusCode, Box<RawValue>), ApiError>;

/// A successful outcome with `body` rendered to JSON once (straight from its type, without
/// building a `serde_json::Value` tree first).
pub(crate) fn ok_body(status: StatusCode, body: &impl Serialize) -> OpResult {
    let body = serde_json::value::to_raw_value(body)
        .map_err(|e| ApiError(RelayError::internal("answer JSON", &e)))?;
    Ok((status, body))
}

pub(crate) fn respond(result: OpResult) -> ApiResult {
    let (status, body) = result?;
    let body = String::from(Box::<str>::from(body));
    Ok((status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// The path a request names by itself (for transports without URLs, like WebSocket frames).
pub(crate) fn implied_path(message: &pigeonhole_proto::request::Message) -> Option<RequestPath> {
    let (owner, receiver, record_id) = match &message.request {
        ProtoRequest::Write(w) => (message.from, message.to, Some(w.record_id.clone())),
        ProtoRequest::Read(r) => (r.owner, r.receiver, Some(r.record_id.clone())),
        ProtoRequest::Delete(d) => (message.from, d.receiver, Some(d.record_id.clone())),
        ProtoRequest::Inventory(i) => (i.owner, i.receiver, None),
        ProtoRequest::Listen(l) => (l.owner, l.receiver, None),
        _ => return None,
    };
    Some(RequestPath { owner, receiver, record_id })
}

pub(crate) async fn op_write(state: &Shared, verified: Verified, path: RequestPath) -> OpResult {
    if state.write_limiter.check_key(&verified.message.from).is_err() {
        return Err(error(
            ErrorCode::RateLimited,
            "this account is writing faster than the relay allows; slow down",
        ));
    }
    // The checks before a write are a few point lookups that the store's cache serves from
    // memory; running them inline saves two thread hops per write (measured: the hops cost
    // more than the lookups). Anything that scans or syncs stays on the blocking pool.
    let record = state.engine.prepare_write(&verified, &path, now_ms())?;
    let outcome = state.committer.submit(record).await?;
    let status = if outcome.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    ok_body(status, &Written { seq: outcome.seq, duplicate: outcome.duplicate, receipt: &outcome.receipt })
}

/// The answer to a write.
#[derive(Serialize)]
struct Written<'a> {
    seq: u64,
    duplicate: bool,
    receipt: &'a pigeonhole_proto::receipt::WriteReceipt,
}

pub(crate) async fn op_record(state: &Shared, verified: Verified, path: RequestPath) -> OpResult {
    let engine = state.engine.clone();
    let now = now_ms();
    let result = blocking(move || engine.record_op(&verified, &path, now)).await?;
    match result {
        Some(read) => {
            let mut body = record_json(read.record)?;
            body["exhausted"] = json!(read.exhausted);
            ok_body(StatusCode::OK, &body)
        }
        None => ok_body(StatusCode::OK, &json!({"deleted": true})),
    }
}

pub(crate) async fn op_inventory(state: &Shared, verified: Verified, path: RequestPath) -> OpResult {
    let engine = state.engine.clone();
    let now = now_ms();
    // An empty page leaves the cursor where the client asked to start.
    let start = match &verified.message.request {
        ProtoRequest::Inventory(inventory) => inventory.after_seq.unwrap_or(0),
        _ => 0,
    };
    let records = blocking(move || engine.inventory(&verified, &path, now)).await?;
    let last = records.last().map_or(start, |m| m.seq);
    let list: Vec<Value> = records.iter().map(meta_json).collect();
    ok_body(StatusCode::OK, &json!({"records": list, "lastSeq": last}))
}

pub(crate) async fn op_register(state: &Shared, verified: Verified, peer: IpAddr) -> OpResult {
    let engine = state.engine.clone();
    let existing = {
        let engine = engine.clone();
        let key = verified.message.from;
        blocking(move || Ok(engine.store().account(&key)?)).await?
    };
    if existing.is_none() && state.registration_limiter.check_key(&peer).is_err() {
        return Err(error(
            ErrorCode::RateLimited,
            "too many registrations from this address; try again later",
        ));
    }
    let now = now_ms();
    let account = blocking(move || engine.register(&verified, now)).await?;
    let status = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    let account_status = match account.status {
        pigeonhole_store::AccountStatus::Active => "active",
        pigeonhole_store::AccountStatus::Suspended => "suspended",
    };
    ok_body(
        status,
        &json!({"account": {"key": account.key.to_hex(), "status": account_status, "createdAt": account.created_at}}),
    )
}

pub(crate) async fn op_usage(state: &Shared, verified: Verified) -> OpResult {
    let engine = state.engine.clone();
    let now = now_ms();
    let document = blocking(move || engine.usage(&verified, now)).await?;
    let report = pigeonhole_proto::receipt::UsageReport::from_body(&document.body)
        .map_err(|e| ApiError(RelayError::internal("usage report", &e)))?;
    ok_body(StatusCode::OK, &json!({"report": report, "document": BASE64.encode(document.to_bytes())}))
}

async fn record_put(
    State(state): State<Shared>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let path = record_path(path)?;
    let verified = admitted(&state, &headers, body).await?;
    respond(op_write(&state, verified, path).await)
}

async fn record_post(
    State(state): State<Shared>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let path = record_path(path)?;
    let verified = admitted(&state, &headers, body).await?;
    respond(op_record(&state, verified, path).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    /// Seconds to wait for a first record (long-poll `listen`).
    wait: Option<u32>,
}

async fn outbox(
    State(state): State<Shared>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let path = outbox_path(path)?;
    let Query(query) = query.map_err(|e| error(ErrorCode::BadRequest, e.body_text()))?;
    let verified = admitted(&state, &headers, body).await?;
    match verified.message.request {
        ProtoRequest::Inventory(_) => respond(op_inventory(&state, verified, path).await),
        ProtoRequest::Listen(_) => long_poll(state, verified, path, query.wait.unwrap_or(0)).await,
        _ => Err(error(ErrorCode::WrongRequestType, "POST to an outbox path takes `inventory` or `listen`")),
    }
}

/// A page of records: a long poll's answer.
#[derive(Serialize)]
struct Page {
    records: Vec<RecordOut>,
    cursor: u64,
}

/// Most bytes of stored records in one page of a listen (a push or a long poll's answer), past
/// its first record: large pages make few durable commits of read counts, bounded ones keep a
/// page well inside a connection's outbound byte budget.
pub(crate) const PAGE_BYTES: usize = 1 << 20;

/// `listen` as a long poll: returns records after the cursor at once if there are any, or
/// waits up to `wait` seconds for the first commit to this outbox.
async fn long_poll(state: Shared, verified: Verified, path: RequestPath, wait: u32) -> ApiResult {
    let max_wait = state.engine.config().limits.max_wait_secs;
    if wait > max_wait {
        return Err(error(
            ErrorCode::BadRequest,
            format!("`wait` is at most {max_wait} seconds on this relay"),
        ));
    }
    let engine = state.engine.clone();
    let now = now_ms();
    let reader = verified.message.from;
    let (owner, receiver, cursor) = blocking(move || engine.listen_start(&verified, &path, now)).await?;
    let subscription = state.notifier.subscribe_outbox(owner, receiver);
    let page = state.engine.config().limits.max_inventory as usize;
    let found = poll_until(&state, subscription.notify(), Duration::from_secs(u64::from(wait)), || {
        let state = state.clone();
        async move {
            let (list, next) = fetch_page(&state, reader, owner, receiver, cursor, page).await?;
            Ok((!list.is_empty()).then_some((list, next)))
        }
    })
    .await?;
    let (records, cursor) = found.unwrap_or((Vec::new(), cursor));
    Ok(axum::Json(Page { records, cursor }).into_response())
}

/// The long-poll loop that outbox listens and drop fetches share: `fetch` (armed on `notify`
/// first, so a commit between the fetch and the wait is not missed); a page with anything in
/// it is returned at once; otherwise wait for a wake-up, the end of `wait`, or shutdown.
/// `None` when the wait ended with nothing (the caller answers an empty page).
pub(crate) async fn poll_until<T, F>(
    state: &AppState,
    notify: &tokio::sync::Notify,
    wait: Duration,
    mut fetch: impl FnMut() -> F,
) -> Result<Option<T>, ApiError>
where
    F: Future<Output = Result<Option<T>, ApiError>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(page) = fetch().await? {
            return Ok(Some(page));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        let woken = tokio::select! {
            woken = tokio::time::timeout_at(deadline, notified) => woken.is_ok(),
            () = state.shutting_down() => false,
        };
        if !woken {
            return Ok(None);
        }
    }
}

/// Records of an outbox after `cursor`, delivered to `reader` (counted as reads when the
/// reader is the receiver), as JSON, and the cursor after them.
pub(crate) async fn fetch_page(
    state: &Shared,
    reader: PublicKey,
    owner: PublicKey,
    receiver: PublicKey,
    cursor: u64,
    limit: usize,
) -> Result<(Vec<RecordOut>, u64), ApiError> {
    let page = state.deliveries.deliver(page_of(reader, owner, receiver, cursor, limit)).await?;
    Ok((records_out(page.records)?, page.cursor))
}

/// The page of an outbox after `cursor` that a listen of `reader` asks for, at most `limit`
/// records and [`PAGE_BYTES`] of them.
pub(crate) fn page_of(
    reader: PublicKey,
    owner: PublicKey,
    receiver: PublicKey,
    cursor: u64,
    limit: usize,
) -> Delivery {
    Delivery {
        reader,
        owner,
        receiver,
        after_seq: cursor,
        size: PageSize { records: limit, bytes: PAGE_BYTES },
    }
}

/// Records as listens serve them.
pub(crate) fn records_out(records: Vec<StoredRecord>) -> Result<Vec<RecordOut>, ApiError> {
    records.into_iter().map(record_out).collect()
}

async fn register(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let verified = admitted(&state, &headers, body).await?;
    respond(op_register(&state, verified, peer.ip()).await)
}

async fn usage(State(state): State<Shared>, headers: HeaderMap, body: Body) -> ApiResult {
    let verified = admitted(&state, &headers, body).await?;
    respond(op_usage(&state, verified).await)
}

async fn session_challenge(State(state): State<Shared>) -> ApiResult {
    let (challenge, expires) = state.sessions.challenge(now_ms())?;
    Ok(axum::Json(json!({"challenge": hex::encode(challenge), "expiresAt": expires})).into_response())
}

/// Opens an HTTP session: the body is a signed `session` request answering a challenge; the
/// answer is a bearer token bound to the signer's key.
async fn session_open(State(state): State<Shared>, body: Body) -> ApiResult {
    let text = read_body(&state, body).await?;
    let verified = state.engine.parse(&text)?;
    let now = now_ms();
    state.engine.admit(&verified.message, now)?;
    state.engine.use_once(&verified, now)?;
    let key = state.sessions.answer(&verified.message, now)?;
    let (token, expires) = state.sessions.issue_token(key, now)?;
    Ok(axum::Json(json!({"token": hex::encode(token), "key": key.to_hex(), "expiresAt": expires}))
        .into_response())
}
