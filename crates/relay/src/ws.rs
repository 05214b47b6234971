//! The WebSocket transport (`GET /v1/ws`): one connection, one session, many requests.
//!
//! 1. The relay sends `{"type":"challenge","challenge":"<hex>","expiresAt":ms}`.
//! 2. The client's first frame is `{"id":0,"msg":{...}}` holding a **signed** `session`
//!    request that answers the challenge.
//! 3. Every later frame is `{"id":N,"msg":{...}}` with an **unsigned** request from the
//!    session's key. Answers are `{"id":N,"status":S,"body":{...}}` with exactly the HTTP
//!    status and body the HTTP endpoint would give. Requests may be pipelined; answers can
//!    arrive out of order (match them by `id`).
//! 4. A `listen` answers `{"subscribed":true,"cursor":C}` and then pushes
//!    `{"sub":N,"records":[...],"cursor":C}` as records are committed.
//!
//! Bounded everywhere: at most [`MAX_IN_FLIGHT`] requests in progress and
//! [`MAX_SUBSCRIPTIONS`] listens per connection, and an outbound queue of at most
//! [`OUTBOUND_QUEUE`] frames and [`OUTBOUND_BYTES`] bytes. A listener that reads slower than
//! records arrive is paced: its next push (whose records are already counted as read) waits for
//! room. One that takes nothing for `limits.listener_stall_secs` (30 s) is not skipped: the
//! relay sends everything already queued, then closes the connection with code 4008 and the
//! reason `behind; resume after cursor C`, so the client resumes with nothing lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::{SinkExt as _, StreamExt as _};
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::request::Request as ProtoRequest;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::deliveries::PendingPage;
use crate::engine::{DeliveredPage, Verified};
use crate::error::{ErrorCode, RelayError};
use crate::http::{
    ApiError, ErrorBody, OpResult, Shared, error, implied_path, now_ms, ok_body, op_inventory, op_record,
    op_register, op_usage, op_write, page_of, records_out,
};

/// Requests in progress per connection.
pub const MAX_IN_FLIGHT: usize = 256;
/// Listens per connection.
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// Frames queued for sending per connection.
pub const OUTBOUND_QUEUE: usize = 1024;
/// Bytes queued for sending per connection: the real bound on a slow reader's memory.
pub const OUTBOUND_BYTES: usize = 4 << 20;
/// Most records in one push; a push also stops at [`crate::http::PAGE_BYTES`] of records,
/// so it stays well under the outbound byte budget.
pub const PUSH_RECORDS: usize = 512;
/// Close code sent to a listener that fell behind.
pub const CLOSE_BEHIND: u16 = 4008;
/// How long the client has to answer the challenge.
const AUTH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one frame may take to write before the client is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

enum Outbound {
    /// A text frame and its share of the connection's byte budget, released once sent.
    Frame(String, OwnedSemaphorePermit),
    Close(u16, String),
}

/// The sending side of a connection: a bounded frame queue plus a byte budget.
#[derive(Clone)]
struct Out {
    queue: mpsc::Sender<Outbound>,
    budget: Arc<Semaphore>,
}

fn permits(text: &str) -> u32 {
    // Frames are capped far below 4 GiB; saturate rather than wrap.
    u32::try_from(text.len().clamp(1, OUTBOUND_BYTES)).unwrap_or(u32::MAX)
}

impl Out {
    /// Queues a frame, waiting for room (answers to requests: the client's own pace).
    async fn send(&self, text: String) -> bool {
        let Ok(permit) = self.budget.clone().acquire_many_owned(permits(&text)).await else { return false };
        self.queue.send(Outbound::Frame(text, permit)).await.is_ok()
    }

    /// Queues a push, waiting up to `stall` for room: `Err(true)` when there was none in time
    /// (the listener is behind), `Err(false)` when the connection is gone.
    async fn push(&self, text: String, stall: Duration) -> Result<(), bool> {
        match tokio::time::timeout(stall, self.send(text)).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(false),
            Err(_) => Err(true),
        }
    }

    /// Queues a close after everything already queued.
    async fn close(&self, code: u16, reason: String) {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, self.queue.send(Outbound::Close(code, reason))).await;
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFrame<'a> {
    id: u64,
    #[serde(borrow)]
    msg: &'a RawValue,
}

/// `GET /v1/ws`.
pub async fn upgrade(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let max = state.engine.config().limits.max_body_bytes;
    // A small read buffer: tungstenite's default 128 KiB buffer is zero-filled before reads,
    // which costs more than the whole request on small frames.
    ws.read_buffer_size(16 * 1024)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| connection(state, socket, peer))
}

/// One answer frame: `{"id": N, "status": S, "body": {...}}`.
#[derive(serde::Serialize)]
struct Answer<B> {
    id: u64,
    status: u16,
    body: B,
}

fn answer(id: u64, result: OpResult) -> String {
    let text = match result {
        Ok((status, body)) => serde_json::to_string(&Answer { id, status: status.as_u16(), body: &*body }),
        Err(ApiError(e)) => {
            metrics::counter!("pigeonhole_rejections_total", "reason" => e.code.as_str()).increment(1);
            serde_json::to_string(&Answer { id, status: e.code.status(), body: ErrorBody::of(&e) })
        }
    };
    // Serializing these plain structs cannot fail (string keys, no maps, no non-finite floats).
    text.unwrap_or_else(|_| {
        format!(r#"{{"id":{id},"status":500,"body":{{"error":"answer JSON","code":"internal"}}}}"#)
    })
}

async fn connection(state: Shared, socket: WebSocket, peer: SocketAddr) {
    let (mut sink, mut stream) = socket.split();
    let (queue, mut outbound) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    let out = Out { queue, budget: Arc::new(Semaphore::new(OUTBOUND_BYTES)) };
    let writer = tokio::spawn(async move {
        while let Some(item) = outbound.recv().await {
            let (message, permit, last) = match item {
                Outbound::Frame(text, permit) => (WsMessage::Text(text.into()), Some(permit), false),
                Outbound::Close(code, reason) => {
                    (WsMessage::Close(Some(CloseFrame { code, reason: reason.into() })), None, true)
                }
            };
            let sent = tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await;
            drop(permit);
            match sent {
                Ok(Ok(())) if !last => {}
                _ => break,
            }
        }
        let _ = sink.close().await;
    });

    let Ok((challenge, expires)) = state.sessions.challenge(now_ms()) else {
        out.close(1013, "too many sessions; retry later".into()).await;
        let _ = writer.await;
        return;
    };
    let hello = json!({"type": "challenge", "challenge": hex::encode(challenge), "expiresAt": expires});
    if !out.send(hello.to_string()).await {
        return;
    }

    // Authentication: the first frame answers the challenge.
    let key = match tokio::time::timeout(AUTH_TIMEOUT, next_text(&mut stream)).await {
        Ok(Some(text)) => match authenticate(&state, &text) {
            Ok((id, key)) => {
                out.send(answer(id, ok_body(StatusCode::OK, &json!({"key": key.to_hex()})))).await;
                key
            }
            Err((id, e)) => {
                out.send(answer(id, Err(ApiError(e)))).await;
                out.close(1008, "authentication failed".into()).await;
                let _ = writer.await;
                return;
            }
        },
        _ => {
            out.close(1008, "no session answer".into()).await;
            let _ = writer.await;
            return;
        }
    };
    metrics::gauge!("pigeonhole_ws_sessions").increment(1.0);

    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut subscriptions = 0usize;
    loop {
        let text = tokio::select! {
            text = next_text(&mut stream) => match text {
                Some(text) => text,
                None => break,
            },
            () = state.shutting_down() => {
                out.close(1001, "the relay is shutting down".into()).await;
                break;
            }
        };
        let received = Instant::now();
        // Reap finished tasks so the set stays as small as the work in progress.
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let parsed = parse_frame(&state, &text, &key);
        let (id, verified) = match parsed {
            Ok(ok) => ok,
            Err((id, e)) => {
                if !out.send(answer(id, Err(ApiError(e)))).await {
                    break;
                }
                continue;
            }
        };
        if matches!(verified.message.request, ProtoRequest::Listen(_)) {
            if subscriptions >= MAX_SUBSCRIPTIONS {
                let e = error(ErrorCode::Busy, format!("at most {MAX_SUBSCRIPTIONS} listens per connection"));
                if !out.send(answer(id, Err(e))).await {
                    break;
                }
                continue;
            }
            subscriptions += 1;
            drop(permit);
            tasks.spawn(subscription(state.clone(), verified, id, out.clone()));
            continue;
        }
        let state = state.clone();
        let out = out.clone();
        tasks.spawn(async move {
            let request = verified.message.request.type_name();
            let result = dispatch(&state, verified, peer).await;
            out.send(answer(id, result)).await;
            drop(permit);
            // From the frame's arrival to its answer queued for sending: the relay's share of
            // the latency a client sees.
            metrics::histogram!("pigeonhole_ws_request_seconds", "request" => request)
                .record(received.elapsed().as_secs_f64());
        });
    }
    tasks.abort_all();
    drop(out);
    let _ = writer.await;
    metrics::gauge!("pigeonhole_ws_sessions").decrement(1.0);
}

/// The next text frame; `None` when the client closed or sent something unusable.
async fn next_text(stream: &mut futures_util::stream::SplitStream<WebSocket>) -> Option<String> {
    loop {
        match stream.next().await? {
            Ok(WsMessage::Text(text)) => return Some(text.to_string()),
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
            Ok(WsMessage::Binary(_) | WsMessage::Close(_)) | Err(_) => return None,
        }
    }
}

/// A frame's id and its `msg` object, as written.
fn frame_parts(text: &str) -> Result<(u64, &str), (u64, RelayError)> {
    let frame: ClientFrame<'_> = serde_json::from_str(text).map_err(|e| {
        (
            0,
            RelayError::new(
                ErrorCode::BadRequest,
                format!("frames are {{\"id\": N, \"msg\": {{...}}}}: {e}"),
            ),
        )
    })?;
    Ok((frame.id, frame.msg.get()))
}

fn authenticate(state: &Shared, text: &str) -> Result<(u64, PublicKey), (u64, RelayError)> {
    let (id, msg) = frame_parts(text)?;
    let now = now_ms();
    // Once per session: the signed form's parser takes the whole `{"msg": ...}` object.
    let verified = state.engine.parse(&format!("{{\"msg\":{msg}}}")).map_err(|e| (id, e))?;
    state.engine.admit(&verified.message, now).map_err(|e| (id, e))?;
    state.engine.use_once(&verified, now).map_err(|e| (id, e))?;
    let key = state.sessions.answer(&verified.message, now).map_err(|e| (id, e))?;
    Ok((id, key))
}

fn parse_frame(state: &Shared, text: &str, key: &PublicKey) -> Result<(u64, Verified), (u64, RelayError)> {
    let (id, msg) = frame_parts(text)?;
    let verified = state.engine.parse_session_msg(msg, key).map_err(|e| (id, e))?;
    state.engine.admit(&verified.message, now_ms()).map_err(|e| (id, e))?;
    Ok((id, verified))
}

async fn dispatch(state: &Shared, verified: Verified, peer: SocketAddr) -> OpResult {
    let path = implied_path(&verified.message);
    match (&verified.message.request, path) {
        (ProtoRequest::Write(_), Some(path)) => op_write(state, verified, path).await,
        (ProtoRequest::Read(_) | ProtoRequest::Delete(_), Some(path)) => {
            op_record(state, verified, path).await
        }
        (ProtoRequest::Inventory(_), Some(path)) => op_inventory(state, verified, path).await,
        (ProtoRequest::Usage(_), _) => op_usage(state, verified).await,
        (ProtoRequest::Register(_), _) => op_register(state, verified, peer.ip()).await,
        (ProtoRequest::Postage(_), _) => crate::drops::op_postage(state, verified).await,
        _ => Err(error(
            ErrorCode::WrongRequestType,
            "this session is already open; send write, read, delete, inventory, listen, usage, register or postage",
        )),
    }
}

/// One push to a listener: `{"sub": id, "records": [...], "cursor": C}`.
#[derive(serde::Serialize)]
struct Push<'a> {
    sub: u64,
    records: &'a [crate::http::RecordOut],
    cursor: u64,
}

/// Pushes an outbox's records to the client as they are committed, from the listen's start.
async fn subscription(state: Shared, verified: Verified, id: u64, out: Out) {
    let Some(path) = implied_path(&verified.message) else { return };
    let engine = state.engine.clone();
    let now = now_ms();
    let reader = verified.message.from;
    let stall = Duration::from_secs(u64::from(state.engine.config().limits.listener_stall_secs));
    let request = verified.clone();
    let start = tokio::task::spawn_blocking(move || engine.listen_start(&request, &path, now)).await;
    let (owner, receiver, mut cursor) = match start {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            out.send(answer(id, Err(ApiError(e)))).await;
            return;
        }
        Err(e) => {
            out.send(answer(id, Err(ApiError(RelayError::internal("listen", &e))))).await;
            return;
        }
    };
    let subscription = state.notifier.subscribe_outbox(owner, receiver);
    if !out.send(answer(id, ok_body(StatusCode::OK, &json!({"subscribed": true, "cursor": cursor})))).await {
        return;
    }
    let page = |after| page_of(reader, owner, receiver, after, PUSH_RECORDS);
    // The next page, queued while this one is rendered and sent (a backlog streams with the
    // delivery thread reading one page while a tokio thread renders the one before).
    let mut queued: Option<PendingPage> = None;
    loop {
        let notified = subscription.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (fetched, prefetched) = match queued.take() {
            Some(pending) => (pending.wait().await, true),
            None => (state.deliveries.deliver(page(cursor)).await, false),
        };
        let DeliveredPage { records, cursor: next, more } = match fetched {
            Ok(page) => page,
            Err(e) => {
                out.send(answer(id, Err(ApiError(e)))).await;
                return;
            }
        };
        if more {
            match state.deliveries.submit(page(next)).await {
                Ok(pending) => queued = Some(pending),
                Err(e) => {
                    out.send(answer(id, Err(ApiError(e)))).await;
                    return;
                }
            }
        }
        if !records.is_empty() {
            let records = match records_out(records) {
                Ok(records) => records,
                Err(e) => {
                    out.send(answer(id, Err(e))).await;
                    return;
                }
            };
            let push = match serde_json::to_string(&Push { sub: id, records: &records, cursor: next }) {
                Ok(push) => push,
                Err(e) => {
                    out.send(answer(id, Err(ApiError(RelayError::internal("push JSON", &e))))).await;
                    return;
                }
            };
            match out.push(push, stall).await {
                Ok(()) => cursor = next,
                Err(true) => {
                    metrics::counter!("pigeonhole_rejections_total", "reason" => "listener_behind")
                        .increment(1);
                    // Everything up to `cursor` is queued and is sent before the close.
                    out.close(CLOSE_BEHIND, format!("behind; resume after cursor {cursor}")).await;
                    return;
                }
                Err(false) => return,
            }
        }
        // Wait for a commit only after a page that reached the end of the outbox and was read
        // after `notified` was armed: the queued next page of a cut one is taken at once, and
        // a page queued before the arming may have missed a commit's wake-up (read again).
        if more || prefetched {
            continue;
        }
        tokio::select! {
            () = &mut notified => {}
            () = state.shutting_down() => return,
        }
    }
}
