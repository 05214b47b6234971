//! The drop endpoints (spec §11.6): anonymous upload, fetch by prefix with a long poll, a
//! WebSocket subscription, and postage issuance.
//!
//! - `POST /v1/drops` — `{"tag","drop","ttl","postage"}`; no key, no signature, nothing that
//!   names the sender. Answers `201 {"seq","expiresAt","receipt"}` once the drop and its spent
//!   stamp are durable.
//! - `GET /v1/drops?bits=L&value=V&after=S[&wait=W][&limit=N]` — drops whose tag starts with
//!   the prefix, after sequence S; with `wait`, holds the request up to W seconds for the
//!   first one. Waiters cost a map entry each and wake only for matching drops.
//! - `GET /v1/drops/ws` — the client sends `{"bits","value","after"}`; the relay answers
//!   `{"subscribed":true,"cursor"}` and pushes `{"drops":[...],"cursor"}` as drops arrive.
//! - `POST /v1/postage` — token issuance: a signed (or in-session) `postage` request from an
//!   account holder, or, under the `open` policy, the bare `{"epoch","blinded"}`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::StreamExt as _;
use pigeonhole_proto::postage::IssueRequest;
use pigeonhole_proto::tag::Prefix;
use pigeonhole_store::StoredDrop;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ErrorCode, RelayError};
use crate::http::{
    ApiError, ErrorBody, OpResult, Shared, admitted_text, blocking, error, now_ms, ok_body, poll_until,
    read_body, respond,
};
use crate::postage::{DropUpload, Postage};

type ApiResult = Result<Response, ApiError>;

/// Largest push on a drop subscription.
pub const PUSH_DROPS: usize = 32;
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

fn enabled(state: &Shared) -> Result<(), ApiError> {
    if state.engine.config().drops.enabled {
        Ok(())
    } else {
        Err(error(ErrorCode::NotFound, "this relay does not accept drops"))
    }
}

/// `POST /v1/drops`.
pub(crate) async fn upload(State(state): State<Shared>, body: Body) -> ApiResult {
    enabled(&state)?;
    let text = read_body(&state, body).await?;
    let upload: DropUpload = serde_json::from_str(&text).map_err(|e| {
        error(
            ErrorCode::BadRequest,
            format!("the body must be {{\"tag\",\"drop\",\"ttl\",\"postage\"}}: {e}"),
        )
    })?;
    let now = now_ms();
    let drop = state.postage.prepare_drop(&state.engine, upload, now)?;
    let expires_at = drop.expires_at;
    let committed = state.committer.submit_drop(drop).await?;
    metrics::counter!("pigeonhole_drops_total", "result" => "stored").increment(1);
    let receipt = serde_json::to_value(&committed.receipt)
        .map_err(|e| ApiError(RelayError::internal("receipt JSON", &e)))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"seq": committed.seq, "expiresAt": expires_at, "receipt": receipt})),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FetchQuery {
    bits: u8,
    #[serde(default)]
    value: u32,
    #[serde(default)]
    after: u64,
    #[serde(default)]
    wait: u32,
    limit: Option<u32>,
}

fn prefix(bits: u8, value: u32) -> Result<Prefix, ApiError> {
    Prefix::new(bits, value).map_err(|_| {
        error(
            ErrorCode::BadRequest,
            "bad prefix: `bits` is at most 32 and `value` may have no bits set past the first `bits`",
        )
    })
}

fn drop_json(drop: &StoredDrop) -> Value {
    json!({
        "seq": drop.seq,
        "tag": drop.tag.to_hex(),
        "drop": BASE64.encode(&drop.bytes),
        "storedAt": drop.stored_at,
        "expiresAt": drop.expires_at,
    })
}

/// Drops matching `prefix` after `cursor`, as JSON, and the cursor after them.
async fn fetch(
    state: &Shared,
    prefix: Prefix,
    cursor: u64,
    limit: usize,
) -> Result<(Vec<Value>, u64), ApiError> {
    let store = state.engine.store().clone();
    let drops = blocking(move || Ok(store.fetch_drops(&prefix, cursor, limit, now_ms())?)).await?;
    let next = drops.last().map_or(cursor, |d| d.seq);
    Ok((drops.iter().map(drop_json).collect(), next))
}

/// `GET /v1/drops`.
pub(crate) async fn download(
    State(state): State<Shared>,
    query: Result<Query<FetchQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    enabled(&state)?;
    let Query(query) = query.map_err(|e| {
        error(
            ErrorCode::BadRequest,
            format!("{}; expected ?bits=L&value=V&after=SEQ[&wait=SECS][&limit=N]", e.body_text()),
        )
    })?;
    let prefix = prefix(query.bits, query.value)?;
    let config = &state.engine.config();
    let max_wait = config.limits.max_wait_secs;
    if query.wait > max_wait {
        return Err(error(
            ErrorCode::BadRequest,
            format!("`wait` is at most {max_wait} seconds on this relay"),
        ));
    }
    let max_page = config.drops.max_page;
    let limit = query.limit.unwrap_or(max_page).clamp(1, max_page) as usize;
    let cursor = query.after;
    let (list, next) = fetch(&state, prefix, cursor, limit).await?;
    if !list.is_empty() || query.wait == 0 {
        return Ok(axum::Json(json!({"drops": list, "cursor": next})).into_response());
    }
    let Some(subscription) = state.drop_waiters.subscribe(&prefix, config.drops.max_waiters) else {
        return Err(error(ErrorCode::Busy, "too many waiting clients; poll again shortly"));
    };
    let wait = Duration::from_secs(u64::from(query.wait));
    let found = poll_until(&state, subscription.notify(), wait, || {
        let state = state.clone();
        async move {
            let (list, next) = fetch(&state, prefix, cursor, limit).await?;
            Ok((!list.is_empty()).then_some((list, next)))
        }
    })
    .await?;
    let (list, next) = found.unwrap_or((Vec::new(), cursor));
    Ok(axum::Json(json!({"drops": list, "cursor": next})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Subscribe {
    bits: u8,
    #[serde(default)]
    value: u32,
    #[serde(default)]
    after: u64,
}

/// `GET /v1/drops/ws`.
pub(crate) async fn upgrade(State(state): State<Shared>, ws: WebSocketUpgrade) -> Response {
    if let Err(e) = enabled(&state) {
        return e.into_response();
    }
    ws.read_buffer_size(4 * 1024).max_message_size(4096).on_upgrade(move |socket| subscription(state, socket))
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    matches!(tokio::time::timeout(WRITE_TIMEOUT, socket.send(WsMessage::Text(text.into()))).await, Ok(Ok(())))
}

async fn refuse(mut socket: WebSocket, e: RelayError) {
    // A plain struct of two strings: serializing it cannot fail.
    let body = serde_json::to_string(&ErrorBody::of(&e)).unwrap_or_default();
    if send(&mut socket, body).await {
        let close = CloseFrame { code: 1008, reason: e.code.as_str().into() };
        let _ = tokio::time::timeout(WRITE_TIMEOUT, socket.send(WsMessage::Close(Some(close)))).await;
    }
}

/// One subscription per connection: the first frame names the prefix and cursor; then each
/// push waits for the previous one to be written (a slow reader slows only itself, and holds
/// at most one push in memory).
async fn subscription(state: Shared, mut socket: WebSocket) {
    let first = tokio::time::timeout(SUBSCRIBE_TIMEOUT, socket.next()).await;
    let Ok(Some(Ok(WsMessage::Text(text)))) = first else {
        refuse(socket, RelayError::new(ErrorCode::BadRequest, "send {\"bits\",\"value\",\"after\"} first"))
            .await;
        return;
    };
    let request: Subscribe = match serde_json::from_str(text.as_str()) {
        Ok(request) => request,
        Err(e) => {
            refuse(
                socket,
                RelayError::new(
                    ErrorCode::BadRequest,
                    format!("expected {{\"bits\",\"value\",\"after\"}}: {e}"),
                ),
            )
            .await;
            return;
        }
    };
    let prefix = match prefix(request.bits, request.value) {
        Ok(prefix) => prefix,
        Err(ApiError(e)) => return refuse(socket, e).await,
    };
    let Some(waiter) = state.drop_waiters.subscribe(&prefix, state.engine.config().drops.max_waiters) else {
        refuse(socket, RelayError::new(ErrorCode::Busy, "too many waiting clients; retry shortly")).await;
        return;
    };
    let mut cursor = request.after;
    if !send(&mut socket, json!({"subscribed": true, "cursor": cursor}).to_string()).await {
        return;
    }
    loop {
        let notified = waiter.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (drops, next) = match fetch(&state, prefix, cursor, PUSH_DROPS).await {
            Ok(page) => page,
            Err(ApiError(e)) => return refuse(socket, e).await,
        };
        if !drops.is_empty() {
            let full = drops.len() >= PUSH_DROPS;
            if !send(&mut socket, json!({"drops": drops, "cursor": next}).to_string()).await {
                return;
            }
            cursor = next;
            if full {
                continue;
            }
        }
        tokio::select! {
            () = &mut notified => {}
            incoming = socket.next() => match incoming {
                // Pings are answered by the library; anything else from the client is ignored.
                Some(Ok(WsMessage::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            () = state.shutting_down() => {
                let close = CloseFrame { code: 1001, reason: "the relay is shutting down".into() };
                let _ = tokio::time::timeout(WRITE_TIMEOUT, socket.send(WsMessage::Close(Some(close)))).await;
                return;
            }
        }
    }
}

/// `POST /v1/postage`.
pub(crate) async fn issue(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    enabled(&state)?;
    let text = read_body(&state, body).await?;
    let signed = headers.contains_key(axum::http::header::AUTHORIZATION)
        || serde_json::from_str::<serde_json::Map<String, Value>>(&text).is_ok_and(|m| m.contains_key("msg"));
    let engine = state.engine.clone();
    let postage = state.clone();
    let now = now_ms();
    let response = if signed {
        let verified = admitted_text(&state, &headers, &text)?;
        return respond(op_postage(&state, verified).await);
    } else {
        let request = IssueRequest::from_json(&text).map_err(|e| {
            error(
                ErrorCode::BadRequest,
                format!("the body must be a signed `postage` request or {{\"epoch\",\"blinded\"}}: {e}"),
            )
        })?;
        let ip = peer.ip();
        blocking(move || postage.postage.issue_anonymous(&engine, &request, ip, now)).await?
    };
    let body =
        serde_json::to_value(&response).map_err(|e| ApiError(RelayError::internal("postage JSON", &e)))?;
    Ok(axum::Json(body).into_response())
}

/// Token issuance to an account (HTTP and WebSocket sessions share it).
pub(crate) async fn op_postage(state: &Shared, verified: crate::engine::Verified) -> OpResult {
    enabled(state)?;
    let shared = state.clone();
    let now = now_ms();
    let response = blocking(move || shared.postage.issue_for_account(&shared.engine, &verified, now)).await?;
    ok_body(StatusCode::OK, &response)
}

/// The postage keys for `GET /v1/info`: the document (base64) and its JSON.
pub fn info_fields(state: &Shared, now: u64) -> Value {
    let (keys, document) = state.postage.keys_document(&state.engine, now);
    json!({
        "postage": serde_json::to_value(&keys).unwrap_or(Value::Null),
        "postageDocument": BASE64.encode(document.to_bytes()),
        "drops": {
            "enabled": state.engine.config().drops.enabled,
            "maxDropBytes": state.engine.config().drops.max_drop_bytes,
            "defaultTtlSecs": state.engine.config().drops.default_ttl_secs,
            "maxTtlSecs": state.engine.config().drops.max_ttl_secs,
            "bucketBits": pigeonhole_store::DROP_BUCKET_BITS,
            "bucketCap": state.engine.config().drops.bucket_cap,
            "epoch": Postage::epoch(&state.engine, now),
        },
    })
}
