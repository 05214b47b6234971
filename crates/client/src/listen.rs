//! Staying connected (spec §11.5): one WebSocket session per relay that any contact's card
//! lists, one `listen` per contact outbox on it, starting from the stored cursor. Records
//! pushed by the relays are opened, stored and acknowledged exactly as a sync does. A
//! connection that drops (relay restart, network, a `4008 behind` close) is reopened with
//! exponential backoff and resumes from the last cursor it handed over, so nothing is
//! skipped; a contact's card update that changes their relays restarts the set of sessions.
//! Drops: one subscription to this identity's bucket on each own relay (`/v1/drops/ws`); each
//! push makes the storing loop poll the buckets from their stored cursors.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::request::{Listen, Message, Request, Session};
use pigeonhole_proto::tag::Prefix;
use rand_core::OsRng;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::client::Client;
use crate::db::StoredMessage;
use crate::error::{ClientError, RelayError};
use crate::relay::{Page, RelayClient, fresh_timestamp, parse_page};

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait before reconnecting.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Pages waiting for the storing loop, across all relays.
const QUEUE: usize = 64;

/// Something that happened while listening.
#[derive(Debug, Clone)]
pub enum ListenEvent {
    /// A session to a relay is open and its listens are subscribed.
    Connected {
        /// The relay.
        url: String,
        /// How many contact outboxes it serves.
        outboxes: usize,
    },
    /// A session ended; it is retried after `retry_in`.
    Disconnected {
        /// The relay.
        url: String,
        /// Why.
        error: RelayError,
        /// When the next attempt is.
        retry_in: Duration,
    },
    /// A new message arrived.
    Message(StoredMessage),
    /// A contact's card changed (sessions restart to follow their relays).
    CardUpdated {
        /// The contact's name.
        contact: String,
    },
    /// A record was refused.
    Rejected(String),
}

/// Where to resume one contact's outbox: the relay key and sequence number last stored.
type Resume = Option<(PublicKey, u64)>;

enum FromRelay {
    Page {
        url: String,
        relay_key: PublicKey,
        owner: PublicKey,
        page: Page,
    },
    /// A relay pushed drops in this identity's bucket: poll the buckets.
    Drops,
    Status(ListenEvent),
}

impl Client {
    /// Listens until an error that is not a relay's (a database failure), or until the
    /// future is dropped. `on_event` sees every message as it is stored.
    pub async fn listen(
        &mut self,
        on_event: &mut (dyn FnMut(ListenEvent) + Send),
    ) -> Result<(), ClientError> {
        let secret = self.secret()?.clone();
        loop {
            // Which contact outboxes to follow on which relay, and from where.
            let mut plan: BTreeMap<String, Vec<(PublicKey, Resume)>> = BTreeMap::new();
            for contact in self.db.contacts()? {
                let owner = contact.card.content().pubkey;
                for url in &contact.card.content().relays {
                    let cursor = self.db.cursor_entry(&owner, url)?;
                    plan.entry(url.clone()).or_default().push((owner, cursor));
                }
            }
            let own = self.db.own_relays()?;
            if plan.is_empty() && own.is_empty() {
                return Err(ClientError::NothingToListen);
            }
            let (sender, mut receiver) = mpsc::channel(QUEUE);
            let mut tasks = JoinSet::new();
            for (url, owners) in plan {
                tasks.spawn(relay_loop(self.relays.clone(), secret.clone(), url, owners, sender.clone()));
            }
            // Drops: one subscription to this identity's bucket on each own relay; a push is
            // the signal to poll (cursors and checks are `poll_drops`'s). Catch up first.
            let prefix = self.card()?.content().prefix;
            for relay in own {
                let cursor = self.db.drop_cursor(&relay.url)?;
                tasks.spawn(drops_loop(self.relays.timeout(), relay.url, prefix, cursor, sender.clone()));
            }
            self.report_drops(on_event).await?;
            drop(sender);
            let mut restart = false;
            while let Some(item) = receiver.recv().await {
                match item {
                    FromRelay::Status(event) => on_event(event),
                    FromRelay::Drops => self.report_drops(on_event).await?,
                    FromRelay::Page { url, relay_key, owner, page } => {
                        let Some(contact) = self.db.contact_by_key(&owner)? else { continue };
                        let outcome = self.apply_page(&contact, &url, &relay_key, &page)?;
                        for message in outcome.new_messages {
                            on_event(ListenEvent::Message(message));
                        }
                        for rejected in outcome.rejected {
                            on_event(ListenEvent::Rejected(rejected));
                        }
                        // Acks go out as records arrive; a failure stays pending for later.
                        let _ = self.send_pending_acks().await?;
                        if outcome.card_updated {
                            on_event(ListenEvent::CardUpdated { contact: contact.name.clone() });
                            restart = true;
                            break;
                        }
                    }
                }
            }
            tasks.abort_all();
            if !restart {
                return Ok(());
            }
        }
    }
}

impl Client {
    /// Polls this identity's drop buckets and reports what arrived.
    async fn report_drops(
        &mut self,
        on_event: &mut (dyn FnMut(ListenEvent) + Send),
    ) -> Result<(), ClientError> {
        let polled = self.poll_drops().await?;
        for message in polled.new_messages {
            on_event(ListenEvent::Message(message));
        }
        for rejected in polled.rejected {
            on_event(ListenEvent::Rejected(rejected));
        }
        Ok(())
    }
}

/// Keeps a drop subscription (`/v1/drops/ws`) open on one own relay, reconnecting with
/// backoff, and signals the storing loop on every push.
async fn drops_loop(
    timeout: Duration,
    url: String,
    prefix: Prefix,
    mut cursor: u64,
    sender: mpsc::Sender<FromRelay>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let error = match drops_session(timeout, &url, &prefix, &mut cursor, &sender, &mut backoff).await {
            Ok(()) => return,
            Err(error) => error,
        };
        if !back_off(&sender, &url, error, &mut backoff).await {
            return;
        }
        // Whatever arrived while disconnected is picked up by the poll after reconnecting.
        if sender.send(FromRelay::Drops).await.is_err() {
            return;
        }
    }
}

/// One drop subscription: returns `Ok` only when the storing loop is gone.
async fn drops_session(
    timeout: Duration,
    url: &str,
    prefix: &Prefix,
    cursor: &mut u64,
    sender: &mpsc::Sender<FromRelay>,
    backoff: &mut Duration,
) -> Result<(), RelayError> {
    let mut socket = connect(timeout, url, "/v1/drops/ws").await?;
    let subscribe = json!({"bits": prefix.bits(), "value": prefix.value(), "after": *cursor});
    send_text(&mut socket, url, subscribe.to_string()).await?;
    let answer = next_frame(&mut socket, url).await?;
    if answer["subscribed"] != true {
        return Err(RelayError::Refused {
            url: url.to_owned(),
            status: 0,
            code: answer["code"].as_str().unwrap_or_default().to_owned(),
            message: answer["error"].as_str().unwrap_or_default().to_owned(),
        });
    }
    *backoff = FIRST_BACKOFF;
    loop {
        let push = next_frame(&mut socket, url).await?;
        if let Some(next) = push["cursor"].as_u64() {
            *cursor = (*cursor).max(next);
        }
        if sender.send(FromRelay::Drops).await.is_err() {
            return Ok(());
        }
    }
}

/// Keeps one relay's session open, reconnecting with backoff, resuming from the last cursor
/// handed over for each outbox.
async fn relay_loop(
    relays: RelayClient,
    secret: SecretKey,
    url: String,
    owners: Vec<(PublicKey, Resume)>,
    sender: mpsc::Sender<FromRelay>,
) {
    let mut cursors: BTreeMap<PublicKey, Resume> = owners.into_iter().collect();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let error = match session(&relays, &secret, &url, &mut cursors, &sender, &mut backoff).await {
            Ok(()) => return, // the storing loop is gone
            Err(error) => error,
        };
        if !back_off(&sender, &url, error, &mut backoff).await {
            return;
        }
    }
}

/// Reports a dropped connection, waits `backoff`, and doubles it (up to [`MAX_BACKOFF`]).
/// `false` when the storing loop is gone.
async fn back_off(
    sender: &mpsc::Sender<FromRelay>,
    url: &str,
    error: RelayError,
    backoff: &mut Duration,
) -> bool {
    let status =
        FromRelay::Status(ListenEvent::Disconnected { url: url.to_owned(), error, retry_in: *backoff });
    if sender.send(status).await.is_err() {
        return false;
    }
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    true
}

/// Opens a WebSocket to `path` on the relay at `url` (`ws://` or `wss://` to match it).
async fn connect(timeout: Duration, url: &str, path: &str) -> Result<Socket, RelayError> {
    let ws_url = match url.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}{path}"),
        None => format!("ws://{}{path}", url.strip_prefix("http://").unwrap_or(url)),
    };
    crate::relay::install_tls_provider();
    let (socket, _) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::connect_async_with_config(ws_url.as_str(), None, true),
    )
    .await
    .map_err(|_| RelayError::Timeout { url: url.to_owned(), secs: timeout.as_secs() })?
    .map_err(|e| RelayError::Unreachable { url: url.to_owned(), reason: e.to_string() })?;
    Ok(socket)
}

fn frame(id: u64, message_json: &str) -> Result<String, serde_json::Error> {
    let value: Value = serde_json::from_str(message_json)?;
    Ok(json!({"id": id, "msg": value["msg"]}).to_string())
}

/// One WebSocket session: returns `Ok` only when the storing loop is gone.
async fn session(
    relays: &RelayClient,
    secret: &SecretKey,
    url: &str,
    cursors: &mut BTreeMap<PublicKey, Resume>,
    sender: &mpsc::Sender<FromRelay>,
    backoff: &mut Duration,
) -> Result<(), RelayError> {
    let bad = |reason: String| RelayError::BadAnswer { url: url.to_owned(), reason };
    let me = secret.public_key();
    let hello = relays.hello(url).await?;
    let relay_key = hello.relay_key;
    let timeout = relays.timeout();
    let mut socket = connect(timeout, url, "/v1/ws").await?;
    // 1-2: answer the challenge with a signed `session` request.
    let hello_frame = tokio::time::timeout(timeout, next_frame(&mut socket, url))
        .await
        .map_err(|_| RelayError::Timeout { url: url.to_owned(), secs: timeout.as_secs() })??;
    let mut challenge = [0u8; 32];
    hello_frame["challenge"]
        .as_str()
        .and_then(|c| hex::decode_to_slice(c, &mut challenge).ok())
        .ok_or_else(|| bad("no challenge".into()))?;
    let open = Message {
        from: me,
        to: relay_key,
        timestamp: fresh_timestamp(),
        request: Request::Session(Session { challenge }),
    }
    .sign(secret, &mut OsRng)
    .map_err(|e| bad(e.to_string()))?;
    send_text(&mut socket, url, frame(0, &open.to_json()).map_err(|e| bad(e.to_string()))?).await?;
    let answer = next_frame(&mut socket, url).await?;
    if answer["status"] != 200 {
        return Err(refused(url, &answer));
    }
    // 3-4: one listen per contact outbox, from its cursor on this relay.
    let mut subscriptions: BTreeMap<u64, PublicKey> = BTreeMap::new();
    for (index, (owner, cursor)) in cursors.iter().enumerate() {
        let after_seq = match cursor {
            Some((key, seq)) if *key == relay_key => *seq,
            _ => 0,
        };
        let id = index as u64 + 1;
        let listen = Message {
            from: me,
            to: relay_key,
            timestamp: fresh_timestamp(),
            request: Request::Listen(Listen {
                owner: *owner,
                receiver: me,
                after_ts: None,
                after_seq: Some(after_seq),
            }),
        };
        send_text(&mut socket, url, frame(id, &listen.to_json()).map_err(|e| bad(e.to_string()))?).await?;
        subscriptions.insert(id, *owner);
    }
    let mut subscribed = 0;
    loop {
        let value = next_frame(&mut socket, url).await?;
        if let Some(sub) = value["sub"].as_u64() {
            let owner =
                *subscriptions.get(&sub).ok_or_else(|| bad(format!("a push for unknown listen {sub}")))?;
            let after = match cursors.get(&owner) {
                Some(Some((key, seq))) if *key == relay_key => *seq,
                _ => 0,
            };
            let page = parse_page(url, &value, &owner, &me, after)?;
            cursors.insert(owner, Some((relay_key, page.cursor)));
            let item = FromRelay::Page { url: url.to_owned(), relay_key, owner, page };
            if sender.send(item).await.is_err() {
                return Ok(());
            }
        } else if let Some(id) = value["id"].as_u64() {
            if value["status"] != 200 {
                return Err(refused(url, &value));
            }
            if subscriptions.contains_key(&id) && value["body"]["subscribed"] == true {
                subscribed += 1;
                if subscribed == subscriptions.len() {
                    *backoff = FIRST_BACKOFF;
                    let event = ListenEvent::Connected { url: url.to_owned(), outboxes: subscribed };
                    if sender.send(FromRelay::Status(event)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame as JSON; a close or a transport error is an error.
async fn next_frame(socket: &mut Socket, url: &str) -> Result<Value, RelayError> {
    loop {
        match socket.next().await {
            Some(Ok(WsMessage::Text(text))) => {
                return serde_json::from_str(&text).map_err(|e| RelayError::BadAnswer {
                    url: url.to_owned(),
                    reason: format!("frame: {e}"),
                });
            }
            Some(Ok(WsMessage::Close(close))) => {
                let reason = close
                    .map_or_else(|| "closed".to_owned(), |c| format!("closed ({}): {}", c.code, c.reason));
                return Err(RelayError::Unreachable { url: url.to_owned(), reason });
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                return Err(RelayError::Unreachable { url: url.to_owned(), reason: e.to_string() });
            }
            None => {
                return Err(RelayError::Unreachable {
                    url: url.to_owned(),
                    reason: "connection closed".into(),
                });
            }
        }
    }
}

async fn send_text(socket: &mut Socket, url: &str, text: String) -> Result<(), RelayError> {
    socket
        .send(WsMessage::Text(text.into()))
        .await
        .map_err(|e| RelayError::Unreachable { url: url.to_owned(), reason: e.to_string() })
}

fn refused(url: &str, answer: &Value) -> RelayError {
    RelayError::Refused {
        url: url.to_owned(),
        status: answer["status"].as_u64().unwrap_or(0) as u16,
        code: answer["body"]["code"].as_str().unwrap_or_default().to_owned(),
        message: answer["body"]["error"].as_str().unwrap_or_default().to_owned(),
    }
}
