//! Drops (spec §7, §11.6): anonymous sealed messages posted under a tag in the recipient's
//! prefix bucket, each paid for with a single-use blind token from the relay it is posted to.
//!
//! Sending: to a contact, or to anyone whose card we hold (first contact). The drop goes to
//! every relay on the recipient's card (where the recipient polls), the same envelope under
//! the same tag everywhere, each copy with a token from that relay: obtained with this
//! identity's account when it has one there (a signed `postage` request), otherwise
//! anonymously under the relay's per-address quota. Tokens are checked against the relay's
//! published key for the epoch (the DLEQ proof), so the relay cannot mark them per client.
//! To a contact the tag comes from the directional chain key (the contact path: the
//! recipient recognises it with a table lookup); to a stranger from the envelope's own key.
//!
//! Receiving: poll one's own buckets on one's own relays, with a cursor per relay. Each
//! candidate is first looked up among the contact-path tags expected next from every contact
//! (a window of [`CHAIN_WINDOW`] counters); the rest get the stranger-path check (one ECDH),
//! and only a match is decrypted. A letter signed by a contact goes to the inbox; anything
//! else — a stranger's signed letter, an anonymous one — to the "requests" list.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::future::join_all;
use pigeonhole_proto::card::IdentityCard;
use pigeonhole_proto::drops::{open_drop, seal_contact_drop, seal_drop};
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::payload::Payload;
use pigeonhole_proto::postage::{self, IssueResponse, PostageKeys, Token};
use pigeonhole_proto::receipt::{DropReceipt, RelayDocument, drop_hash};
use pigeonhole_proto::request::{Message, Request};
use pigeonhole_proto::seal::{Letter, open};
use pigeonhole_proto::tag::{ChainKey, Prefix, Tag};
use rand_core::{OsRng, RngCore as _};
use serde_json::{Value, json};

use crate::client::Client;
use crate::db::{Folder, NewMessage, StoredMessage, Via};
use crate::error::{ClientError, RelayError, RelayFailures};
use crate::relay::{RelayClient, fresh_timestamp, normalize_url, now_ms};

/// Contact-path counters looked ahead of the highest one seen from each contact.
pub const CHAIN_WINDOW: u64 = 256;
/// Most pages fetched from one relay in one poll.
const MAX_PAGES: usize = 200;

/// Who a drop goes to.
#[derive(Debug, Clone)]
pub struct DropTarget {
    /// The recipient's card (a contact's newest, or one given for a first contact).
    pub card: IdentityCard,
    /// The contact's name, when the recipient is a contact.
    pub contact: Option<String>,
}

/// How posting to one relay went.
#[derive(Debug, Clone)]
pub struct DropPost {
    /// The relay.
    pub url: String,
    /// The verified receipt, or why the relay did not store the drop.
    pub result: Result<DropReceipt, RelayError>,
}

/// The result of sending a drop.
#[derive(Debug, Clone)]
pub struct DropReport {
    /// The recipient.
    pub to: PublicKey,
    /// The contact's name, when a contact.
    pub to_name: Option<String>,
    /// The letter's record id.
    pub record_id: String,
    /// The tag it was posted under.
    pub tag: Tag,
    /// Whether the letter carries this identity's signature (`false`: anonymous).
    pub signed: bool,
    /// Whether the contact-path tag was used.
    pub contact_path: bool,
    /// One entry per relay on the recipient's card.
    pub relays: Vec<DropPost>,
}

impl DropReport {
    /// Relays that stored it.
    pub fn stored(&self) -> usize {
        self.relays.iter().filter(|r| r.result.is_ok()).count()
    }
}

/// What polling one's own buckets found.
#[derive(Debug, Default)]
pub struct DropPoll {
    /// New messages from contacts (inbox) and from strangers (requests), in order.
    pub new_messages: Vec<StoredMessage>,
    /// Relays polled, with the number of candidates fetched or why they failed.
    pub sources: Vec<(String, Result<usize, RelayError>)>,
    /// Candidates that matched this identity but did not open or check.
    pub rejected: Vec<String>,
}

impl RelayClient {
    /// The relay's published postage keys (`GET /v1/info`), verified under `relay_key`.
    pub async fn postage_keys(&self, url: &str, relay_key: &PublicKey) -> Result<PostageKeys, RelayError> {
        let json = self.call(url, reqwest::Method::GET, "/v1/info", None).await?;
        let bytes = json["postageDocument"]
            .as_str()
            .and_then(|b| BASE64.decode(b).ok())
            .ok_or_else(|| Self::bad(url, "the relay publishes no postage keys (does it accept drops?)"))?;
        let document = RelayDocument::from_bytes(&bytes)
            .map_err(|e| Self::bad(url, format!("postage document: {e}")))?;
        PostageKeys::from_document(&document, relay_key)
            .map_err(|e| Self::bad(url, format!("postage document: {e}")))
    }

    /// Obtains one token for the relay's current epoch: with `account` (signed) when given,
    /// anonymously otherwise. The relay's proof is checked against its published key.
    pub async fn obtain_token(
        &self,
        url: &str,
        relay_key: &PublicKey,
        account: Option<&SecretKey>,
    ) -> Result<Token, RelayError> {
        let keys = self.postage_keys(url, relay_key).await?;
        let (epoch, public) =
            *keys.keys.first().ok_or_else(|| Self::bad(url, "the postage document lists no key"))?;
        let (request, mut state) = postage::blind(1, epoch, &mut OsRng);
        let body = match account {
            Some(secret) => {
                let message = Message {
                    from: secret.public_key(),
                    to: *relay_key,
                    timestamp: fresh_timestamp(),
                    request: Request::Postage(request),
                };
                message
                    .sign(secret, &mut OsRng)
                    .map_err(|e| Self::bad(url, format!("signing a postage request: {e}")))?
                    .to_json()
            }
            None => request.to_json(),
        };
        let json = self.call(url, reqwest::Method::POST, "/v1/postage", Some(body)).await?;
        let response = IssueResponse::from_json(&json.to_string())
            .map_err(|e| Self::bad(url, format!("postage answer: {e}")))?;
        state.truncate(response.evaluated.len());
        let mut tokens = state
            .finalize(&response, &public)
            .map_err(|e| Self::bad(url, format!("the relay's postage proof does not verify: {e}")))?;
        tokens.pop().ok_or_else(|| Self::bad(url, "the relay granted no token"))
    }

    /// Posts a drop with `token`'s stamp; returns the verified receipt.
    pub async fn post_drop(
        &self,
        url: &str,
        relay_key: &PublicKey,
        tag: &Tag,
        envelope: &[u8],
        token: &Token,
        ttl: u32,
    ) -> Result<DropReceipt, RelayError> {
        let stamp = token.stamp(tag, envelope);
        let stamp: Value = serde_json::from_str(&stamp.to_json()).unwrap_or(Value::Null);
        let body =
            json!({"tag": tag.to_hex(), "drop": BASE64.encode(envelope), "ttl": ttl, "postage": stamp});
        let json = self.call(url, reqwest::Method::POST, "/v1/drops", Some(body.to_string())).await?;
        let receipt = DropReceipt::from_json(&json["receipt"].to_string())
            .map_err(|e| Self::bad(url, format!("drop receipt: {e}")))?;
        receipt.verify(relay_key).map_err(|e| Self::bad(url, format!("drop receipt: {e}")))?;
        if receipt.leaf.tag != *tag || receipt.leaf.drop_hash != drop_hash(envelope) {
            return Err(Self::bad(url, "the drop receipt is for another drop"));
        }
        Ok(receipt)
    }

    /// One page of drops under `prefix` after `cursor`: `(seq, tag, envelope)` and the next cursor.
    pub async fn drops_page(
        &self,
        url: &str,
        prefix: &Prefix,
        cursor: u64,
    ) -> Result<(Vec<(u64, Tag, Vec<u8>)>, u64), RelayError> {
        let path = format!("/v1/drops?bits={}&value={}&after={cursor}", prefix.bits(), prefix.value());
        let json = self.call(url, reqwest::Method::GET, &path, None).await?;
        let next = json["cursor"].as_u64().ok_or_else(|| Self::bad(url, "no cursor in a drops page"))?;
        let mut out = Vec::new();
        for item in json["drops"].as_array().ok_or_else(|| Self::bad(url, "no drops in a drops page"))? {
            let seq = item["seq"].as_u64().ok_or_else(|| Self::bad(url, "a drop without seq"))?;
            let tag = item["tag"]
                .as_str()
                .and_then(|t| Tag::from_hex(t).ok())
                .ok_or_else(|| Self::bad(url, "a drop with a bad tag"))?;
            let bytes = item["drop"]
                .as_str()
                .and_then(|b| BASE64.decode(b).ok())
                .ok_or_else(|| Self::bad(url, "a drop with bad base64"))?;
            if !prefix.matches(&tag) || seq <= cursor {
                return Err(Self::bad(url, "the relay sent a drop outside the bucket or cursor asked for"));
            }
            out.push((seq, tag, bytes));
        }
        Ok((out, next))
    }
}

/// The chain key for drops from `sender` to `recipient`, as computed by either side.
fn chain(my_secret: &SecretKey, their: &PublicKey, sender: &PublicKey, recipient: &PublicKey) -> ChainKey {
    ChainKey::derive(my_secret, their, sender, recipient)
}

impl Client {
    /// Resolves a drop's recipient: a contact's name or key, a card string, or a `.pigeon` file.
    pub fn drop_target(&self, to: &str) -> Result<DropTarget, ClientError> {
        if let Ok(contact) = self.resolve_contact(to) {
            return Ok(DropTarget { card: contact.card, contact: Some(contact.name) });
        }
        let path = std::path::Path::new(to);
        let text = if path.is_file() {
            std::fs::read_to_string(path)
                .map_err(|source| ClientError::Io { path: path.to_owned(), source })?
        } else if to.starts_with("pigeoncard1") || to.trim_start().starts_with('{') {
            to.to_owned()
        } else {
            return Err(ClientError::UnknownContact { name: to.to_owned() });
        };
        let card = IdentityCard::parse(text.trim()).map_err(ClientError::BadCard)?;
        // A card of someone we know: use the contact (and its newer card, if ours is newer).
        if let Some(contact) = self.db.contact_by_key(&card.content().pubkey)? {
            return Ok(DropTarget { card: contact.card, contact: Some(contact.name) });
        }
        Ok(DropTarget { card, contact: None })
    }

    /// Sends `text` as a drop to `target`'s prefix on every relay of its card. Signed by this
    /// identity unless `anonymous`; to a contact (and signed) on the contact path.
    pub async fn send_drop(
        &mut self,
        target: &DropTarget,
        text: &str,
        anonymous: bool,
    ) -> Result<DropReport, ClientError> {
        let secret = self.secret()?.clone();
        let me = secret.public_key();
        let content = target.card.content();
        let to = content.pubkey;
        if to == me {
            return Err(ClientError::OwnCard);
        }
        if content.relays.is_empty() {
            return Err(ClientError::AllRelaysFailed(RelayFailures(vec![RelayError::BadAnswer {
                url: String::new(),
                reason: "the recipient's card lists no relays to post to".into(),
            }])));
        }
        let record_id = {
            let mut bytes = [0u8; 16];
            OsRng.fill_bytes(&mut bytes);
            hex::encode(bytes)
        };
        let now = now_ms();
        let letter = Letter {
            sender: (!anonymous).then_some(me),
            recipient: to,
            created_at: now,
            record_id: record_id.clone(),
            payload: Payload::Text(text.to_owned()),
        };
        let contact_path = target.contact.is_some() && !anonymous;
        let (tag, envelope) = if contact_path {
            let counter = self.db.next_drop_counter(&to)?;
            let key = chain(&secret, &to, &me, &to);
            seal_contact_drop(&letter, &secret, &content.prefix, &key, counter, &mut OsRng)?
        } else {
            seal_drop(&letter, (!anonymous).then_some(&secret), &content.prefix, &mut OsRng)?
        };
        let own: std::collections::HashSet<String> =
            self.db.own_relays()?.into_iter().map(|r| r.url).collect();
        let client = &self.relays;
        let posts = content.relays.iter().map(|url| {
            let (tag, envelope, secret) = (&tag, &envelope, &secret);
            let account = own.contains(url);
            let ttl = self.config.ttl_secs;
            async move {
                let result = async {
                    let url = normalize_url(url)?;
                    let hello = client.hello(&url).await?;
                    let token =
                        match client.obtain_token(&url, &hello.relay_key, account.then_some(secret)).await {
                            Ok(token) => token,
                            // An account that cannot obtain tokens here: try the anonymous quota.
                            Err(RelayError::Refused { .. }) if account => {
                                client.obtain_token(&url, &hello.relay_key, None).await?
                            }
                            Err(error) => return Err(error),
                        };
                    client.post_drop(&url, &hello.relay_key, tag, envelope, &token, ttl).await
                }
                .await;
                DropPost { url: url.clone(), result }
            }
        });
        let relays: Vec<DropPost> = join_all(posts).await;
        let report = DropReport {
            to,
            to_name: target.contact.clone(),
            record_id: record_id.clone(),
            tag,
            signed: !anonymous,
            contact_path,
            relays,
        };
        if report.stored() == 0 {
            return Err(ClientError::AllRelaysFailed(RelayFailures(
                report.relays.into_iter().filter_map(|r| r.result.err()).collect(),
            )));
        }
        let payload = Payload::Text(text.to_owned());
        self.db.store_sent(
            &NewMessage {
                folder: Folder::Sent,
                via: Via::Drop,
                peer: Some(&to),
                record_id: &record_id,
                kind: payload.kind(),
                body: &payload.encode_body(),
                text: Some(text),
                created_at: now,
            },
            now_ms(),
        )?;
        Ok(report)
    }

    /// Polls this identity's drop bucket on each of its own relays, from the stored cursors;
    /// opens what is addressed to it; contacts' letters go to the inbox, others to requests.
    pub async fn poll_drops(&mut self) -> Result<DropPoll, ClientError> {
        let secret = self.secret()?.clone();
        let me = secret.public_key();
        let prefix = self.card()?.content().prefix;
        let mut poll = DropPoll::default();
        let relays = self.db.own_relays()?;
        let fetches = relays.iter().map(|relay| {
            let client = self.relays.clone();
            let cursor = self.db.drop_cursor(&relay.url).unwrap_or(0);
            let url = relay.url.clone();
            async move {
                let mut cursor = cursor;
                let mut items = Vec::new();
                for _ in 0..MAX_PAGES {
                    match client.drops_page(&url, &prefix, cursor).await {
                        Ok((page, _)) if page.is_empty() => break,
                        Ok((page, next)) => {
                            items.extend(page);
                            cursor = next;
                        }
                        Err(error) => return (url, items, cursor, Some(error)),
                    }
                }
                (url, items, cursor, None)
            }
        });
        let fetched = join_all(fetches).await;

        // The contact-path tags expected next from every contact. (A window per contact: the
        // table costs one hash per entry, far less than one ECDH per candidate.)
        let mut expected: HashMap<Tag, (PublicKey, u64)> = HashMap::new();
        for contact in self.db.contacts()? {
            let them = contact.card.content().pubkey;
            let seen = self.db.drop_counter_seen(&them)?;
            let key = chain(&secret, &them, &them, &me);
            let start = seen.map_or(0, |s| s + 1);
            for counter in start..start + CHAIN_WINDOW {
                expected.insert(key.tag(&prefix, counter), (them, counter));
            }
        }

        for (url, items, cursor, error) in fetched {
            let count = items.len();
            for (seq, tag, envelope) in items {
                let hash = drop_hash(&envelope);
                if self.db.drop_seen(&hash)? {
                    continue;
                }
                let opened = match expected.get(&tag) {
                    Some((contact, counter)) => {
                        match open(&secret, &envelope) {
                            Ok(opened) if opened.letter.sender == Some(*contact) => {
                                self.db.set_drop_counter_seen(contact, *counter)?;
                                Some(opened)
                            }
                            Ok(_) => {
                                poll.rejected.push(format!("{url} drop {seq}: a contact-path tag on a letter not signed by that contact"));
                                None
                            }
                            Err(e) => {
                                poll.rejected.push(format!("{url} drop {seq}: {e}"));
                                None
                            }
                        }
                    }
                    None => match open_drop(&secret, &prefix, &tag, &envelope) {
                        Ok(opened) => Some(opened),
                        Err(pigeonhole_proto::drops::DropError::NotMine) => None,
                        Err(e) => {
                            poll.rejected.push(format!("{url} drop {seq}: {e}"));
                            None
                        }
                    },
                };
                // Only drops addressed here are remembered (the same drop arrives from each
                // relay on the card); others are passed by the cursor.
                let Some(opened) = opened else { continue };
                self.db.mark_drop_seen(&hash, now_ms())?;
                let letter = &opened.letter;
                let from_contact = match &letter.sender {
                    Some(sender) => self.db.contact_by_key(sender)?.is_some(),
                    None => false,
                };
                let text = match &letter.payload {
                    Payload::Text(text) => Some(text.as_str()),
                    _ => None,
                };
                // Anonymous letters have no sender to de-duplicate by: the drop's hash does.
                let record_id =
                    if letter.sender.is_some() { letter.record_id.clone() } else { hex::encode(&hash[..16]) };
                let body = letter.payload.encode_body();
                let id = self.db.store_received(
                    &NewMessage {
                        folder: if from_contact { Folder::Inbox } else { Folder::Requests },
                        via: Via::Drop,
                        peer: letter.sender.as_ref(),
                        record_id: &record_id,
                        kind: letter.payload.kind(),
                        body: &body,
                        text,
                        created_at: letter.created_at,
                    },
                    now_ms(),
                )?;
                if let Some(id) = id
                    && let Some(message) = self.db.message(id)?
                {
                    poll.new_messages.push(message);
                }
            }
            if let Some(relay) = relays.iter().find(|r| r.url == url) {
                self.db.set_drop_cursor(&relay.url, &relay.relay_key, cursor)?;
            }
            poll.sources.push((url, error.map_or(Ok(count), Err)));
        }
        Ok(poll)
    }
}
