//! The [`Client`]: one identity's state and the operations on it — the card, relays,
//! contacts and sending. Syncing, listening and usage audits live in their own modules as
//! further `impl Client` blocks.

use std::time::Duration;

use futures_util::future::join_all;
use pigeonhole_proto::card::{CardContent, IdentityCard};
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::payload::{Payload, kind};
use pigeonhole_proto::request::{Message, Request, SignedMessage, Write};
use pigeonhole_proto::seal::{Letter, seal};
use pigeonhole_proto::tag::Prefix;
use rand_core::{OsRng, RngCore as _};

use crate::db::{Contact, Db, Folder, NewMessage, OwnRelay, Via};
use crate::error::{ClientError, RelayError, RelayFailures};
use crate::home::Home;
use crate::relay::{RelayClient, RelayHello, WriteOutcome, normalize_url, now_ms};

/// Prefix length of new identities' drop prefix: 8 bits, so each bucket holds about 1/256 of
/// all drops (the recipient's anonymity set; it can be changed later).
pub const DEFAULT_PREFIX_BITS: u8 = 8;

/// How a client behaves on the network.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Timeout of one call to one relay.
    pub relay_timeout: Duration,
    /// TTL asked for written records, in seconds (0: the relay's default).
    pub ttl_secs: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self { relay_timeout: crate::relay::DEFAULT_TIMEOUT, ttl_secs: 0 }
    }
}

/// One relay's result for one write.
#[derive(Debug, Clone)]
pub struct RelayWrite {
    /// The relay.
    pub url: String,
    /// The verified outcome, or why this relay failed.
    pub result: Result<WriteOutcome, RelayError>,
}

/// What happened to one sent message.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// The receiver.
    pub to: PublicKey,
    /// The contact's name.
    pub to_name: Option<String>,
    /// The record id.
    pub record_id: String,
    /// The local message id (when at least one relay stored it).
    pub message_id: Option<i64>,
    /// One entry per own relay.
    pub relays: Vec<RelayWrite>,
}

impl SendReport {
    /// How many relays stored it.
    pub fn stored(&self) -> usize {
        self.relays.iter().filter(|r| r.result.is_ok()).count()
    }
}

/// The result of adding or removing a relay.
#[derive(Debug)]
pub struct RelayChange {
    /// The relay's verified info (when adding).
    pub hello: Option<RelayHello>,
    /// The account status the relay reported (when adding).
    pub account_status: Option<String>,
    /// The new card.
    pub card: IdentityCard,
    /// The identity update sent to each contact.
    pub announced: Vec<Result<SendReport, (String, ClientError)>>,
}

/// A relay's state as seen by `relay list`.
#[derive(Debug, Clone)]
pub struct RelayStatus {
    /// The relay.
    pub url: String,
    /// The key recorded when it was added.
    pub relay_key: PublicKey,
    /// The signed info fetched now (verified under `relay_key`), or why it failed.
    pub hello: Result<RelayHello, RelayError>,
}

/// One identity's client.
pub struct Client {
    pub(crate) home: Home,
    pub(crate) db: Db,
    pub(crate) relays: RelayClient,
    pub(crate) secret: Option<SecretKey>,
    pub(crate) config: ClientConfig,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("home", &self.home).field("unlocked", &self.secret.is_some()).finish()
    }
}

fn new_record_id() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Client {
    /// Creates an identity in `home`: a new key (or `key` to import one), the key file
    /// encrypted under `passphrase`, the database, and a first card with no relays.
    pub fn create(
        home: Home,
        label: &str,
        passphrase: &str,
        key: Option<SecretKey>,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        if home.has_identity() {
            return Err(ClientError::IdentityExists { home: home.dir().to_owned() });
        }
        let secret = key.unwrap_or_else(|| SecretKey::generate(&mut OsRng));
        let prefix = Prefix::truncate(DEFAULT_PREFIX_BITS, OsRng.next_u32())
            .map_err(|_| ClientError::CardLimit(pigeonhole_proto::card::CardError::Invalid("prefix")))?;
        let content = CardContent {
            label: label.to_owned(),
            pubkey: secret.public_key(),
            relays: Vec::new(),
            prefix,
            updated: now_ms(),
        };
        content.validate().map_err(ClientError::BadCard)?;
        home.write_key_file(&secret, passphrase)?;
        let db = Db::open(&home.db_path())?;
        let card = content.sign(&secret, &mut OsRng).map_err(ClientError::BadCard)?;
        db.set_own_card(&card)?;
        let relays = RelayClient::new(config.relay_timeout)?;
        Ok(Self { home, db, relays, secret: Some(secret), config })
    }

    /// Opens the identity in `home` without decrypting its key: enough to list contacts and
    /// messages. Call [`Client::unlock`] before anything that signs or opens letters.
    pub fn open(home: Home, config: ClientConfig) -> Result<Self, ClientError> {
        home.read_key_file()?;
        let db = Db::open(&home.db_path())?;
        if db.own_card()?.is_none() {
            return Err(ClientError::NoIdentity { home: home.dir().to_owned() });
        }
        let relays = RelayClient::new(config.relay_timeout)?;
        Ok(Self { home, db, relays, secret: None, config })
    }

    /// Decrypts the key file.
    pub fn unlock(&mut self, passphrase: &str) -> Result<(), ClientError> {
        let secret = self.home.unlock(passphrase)?;
        self.secret = Some(secret);
        Ok(())
    }

    pub(crate) fn secret(&self) -> Result<&SecretKey, ClientError> {
        self.secret.as_ref().ok_or(ClientError::Locked)
    }

    /// The home directory.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The database (read access for listings).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The identity's public key.
    pub fn public_key(&self) -> Result<PublicKey, ClientError> {
        Ok(self.card()?.content().pubkey)
    }

    /// The identity's current signed card.
    pub fn card(&self) -> Result<IdentityCard, ClientError> {
        self.db.own_card()?.ok_or_else(|| ClientError::NoIdentity { home: self.home.dir().to_owned() })
    }

    /// The identity's relays.
    pub fn own_relays(&self) -> Result<Vec<OwnRelay>, ClientError> {
        Ok(self.db.own_relays()?)
    }

    /// Signs a new card with `relays`, strictly newer than the current one.
    fn resign_card(&self, relays: Vec<String>) -> Result<IdentityCard, ClientError> {
        let current = self.card()?;
        let mut content = current.content().clone();
        content.relays = relays;
        content.updated = now_ms().max(current.content().updated + 1);
        content.validate().map_err(ClientError::CardLimit)?;
        content.sign(self.secret()?, &mut OsRng).map_err(ClientError::CardLimit)
    }

    // --- relays ------------------------------------------------------------------------

    /// Adds a relay: fetches and verifies its info document, registers an account with a
    /// signed `register` (with `invite` if the relay wants one), adds it to the card, signs
    /// the card again and sends it to every contact as an identity update.
    pub async fn add_relay(&mut self, url: &str, invite: Option<&str>) -> Result<RelayChange, ClientError> {
        let url = normalize_url(url)?;
        let mut urls: Vec<String> = self.card()?.content().relays.clone();
        if urls.contains(&url) {
            return Err(ClientError::RelayExists { url });
        }
        urls.push(url.clone());
        // Check the card limits before touching the relay.
        let mut probe = self.card()?.content().clone();
        probe.relays = urls.clone();
        probe.validate().map_err(ClientError::CardLimit)?;
        let hello = self.relays.hello(&url).await?;
        let status = self.relays.register(&url, &hello.relay_key, self.secret()?, invite).await?;
        let card = self.resign_card(urls)?;
        self.db.add_own_relay(&OwnRelay { url: url.clone(), relay_key: hello.relay_key }, now_ms())?;
        self.db.set_own_card(&card)?;
        let announced = self.announce(&card, &self.db.own_relays()?).await?;
        Ok(RelayChange { hello: Some(hello), account_status: Some(status), card, announced })
    }

    /// Removes a relay from the card and tells every contact, through the remaining relays
    /// and the removed one (so contacts who only know the old list still learn the new one).
    pub async fn remove_relay(&mut self, url: &str) -> Result<RelayChange, ClientError> {
        let url = normalize_url(url).unwrap_or_else(|_| url.trim().to_owned());
        let relays = self.db.own_relays()?;
        if !relays.iter().any(|r| r.url == url) {
            return Err(ClientError::UnknownRelay { url });
        }
        let urls = self.card()?.content().relays.iter().filter(|u| **u != url).cloned().collect();
        let card = self.resign_card(urls)?;
        self.db.set_own_card(&card)?;
        let announced = self.announce(&card, &relays).await?;
        self.db.remove_own_relay(&url)?;
        Ok(RelayChange { hello: None, account_status: None, card, announced })
    }

    /// Sends `card` to every contact as an identity update, through `relays`.
    async fn announce(
        &mut self,
        card: &IdentityCard,
        relays: &[OwnRelay],
    ) -> Result<Vec<Result<SendReport, (String, ClientError)>>, ClientError> {
        let mut out = Vec::new();
        if relays.is_empty() {
            return Ok(out);
        }
        for contact in self.db.contacts()? {
            let payload = Payload::IdentityUpdate(card.to_bytes());
            let result =
                self.send_via(&contact.card.content().pubkey, Some(&contact.name), payload, relays).await;
            out.push(result.map_err(|e| (contact.name.clone(), e)));
        }
        Ok(out)
    }

    /// Each own relay's liveness and signed info, fetched in parallel.
    pub async fn relay_status(&self) -> Result<Vec<RelayStatus>, ClientError> {
        let relays = self.db.own_relays()?;
        let checks = relays.iter().map(|relay| async move {
            let hello = self.relays.hello(&relay.url).await.and_then(|hello| {
                if hello.relay_key == relay.relay_key {
                    Ok(hello)
                } else {
                    Err(RelayError::BadAnswer {
                        url: relay.url.clone(),
                        reason: format!(
                            "its key changed from {} to {}: it is not the relay you registered with",
                            relay.relay_key, hello.relay_key
                        ),
                    })
                }
            });
            RelayStatus { url: relay.url.clone(), relay_key: relay.relay_key, hello }
        });
        Ok(join_all(checks).await)
    }

    // --- contacts ------------------------------------------------------------------------

    /// Adds a contact from a card (`.pigeon` JSON or `pigeoncard1...` string), verified. The
    /// name defaults to the card's label. A card for a known key that is newer replaces the
    /// stored one.
    pub fn add_contact(&mut self, card_text: &str, name: Option<&str>) -> Result<Contact, ClientError> {
        let card = IdentityCard::parse(card_text).map_err(ClientError::BadCard)?;
        if card.content().pubkey == self.public_key()? {
            return Err(ClientError::OwnCard);
        }
        if let Some(existing) = self.db.contact_by_key(&card.content().pubkey)? {
            self.db.update_contact_card(&card)?;
            return Ok(self.db.contact_by_key(&card.content().pubkey)?.unwrap_or(existing));
        }
        let name = name.map_or_else(|| card.content().label.trim().to_owned(), |n| n.trim().to_owned());
        check_name(&name)?;
        if self.db.contact_by_name(&name)?.is_some() {
            return Err(ClientError::NameTaken { name });
        }
        self.db.add_contact(&name, &card, now_ms())?;
        Ok(Contact { name, card })
    }

    /// Every contact, by name.
    pub fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        Ok(self.db.contacts()?)
    }

    /// Removes a contact by name (or key).
    pub fn remove_contact(&mut self, name: &str) -> Result<Contact, ClientError> {
        let contact = self.resolve_contact(name)?;
        self.db.remove_contact(&contact.name)?;
        Ok(contact)
    }

    /// Finds a contact by local name, or by key (hex, `pigeon1...`, `npub1...`).
    pub fn resolve_contact(&self, name_or_key: &str) -> Result<Contact, ClientError> {
        if let Some(contact) = self.db.contact_by_name(name_or_key.trim())? {
            return Ok(contact);
        }
        if let Ok(key) = PublicKey::parse(name_or_key.trim())
            && let Some(contact) = self.db.contact_by_key(&key)?
        {
            return Ok(contact);
        }
        Err(ClientError::UnknownContact { name: name_or_key.trim().to_owned() })
    }

    // --- sending -------------------------------------------------------------------------

    /// Sends a text to a contact (by name or key) through every own relay in parallel.
    /// Succeeds when at least one relay stored it; the report says which failed.
    pub async fn send_text(&mut self, to: &str, text: &str) -> Result<SendReport, ClientError> {
        let contact = self.resolve_contact(to)?;
        let relays = self.db.own_relays()?;
        self.send_via(
            &contact.card.content().pubkey,
            Some(&contact.name),
            Payload::Text(text.to_owned()),
            &relays,
        )
        .await
    }

    /// Seals `payload` to `to`, signs one write and PUTs the same bytes to each of `relays` in
    /// parallel; stores the message and every verified receipt. Fails only when no relay
    /// stored it.
    pub(crate) async fn send_via(
        &mut self,
        to: &PublicKey,
        to_name: Option<&str>,
        payload: Payload,
        relays: &[OwnRelay],
    ) -> Result<SendReport, ClientError> {
        if relays.is_empty() {
            return Err(ClientError::NoRelays);
        }
        let secret = self.secret()?.clone();
        let me = secret.public_key();
        let record_id = new_record_id();
        let now = now_ms();
        let letter = Letter {
            sender: Some(me),
            recipient: *to,
            created_at: now,
            record_id: record_id.clone(),
            payload: payload.clone(),
        };
        let envelope = seal(&letter, Some(&secret), &mut OsRng)?;
        let message = Message {
            from: me,
            to: *to,
            timestamp: crate::relay::fresh_timestamp(),
            request: Request::Write(Write {
                record_id: record_id.clone(),
                ttl: self.config.ttl_secs,
                tag: None,
                content: envelope,
            }),
        };
        let signed: SignedMessage = message.sign(&secret, &mut OsRng).map_err(ClientError::Sign)?;
        let client = &self.relays;
        let writes = relays.iter().map(|relay| {
            let signed = &signed;
            async move {
                RelayWrite {
                    url: relay.url.clone(),
                    result: client.write(&relay.url, &relay.relay_key, signed).await,
                }
            }
        });
        let results: Vec<RelayWrite> = join_all(writes).await;
        let mut report = SendReport {
            to: *to,
            to_name: to_name.map(str::to_owned),
            record_id: record_id.clone(),
            message_id: None,
            relays: results,
        };
        if report.stored() == 0 {
            return Err(ClientError::AllRelaysFailed(RelayFailures(
                report.relays.into_iter().filter_map(|r| r.result.err()).collect(),
            )));
        }
        let text = match &payload {
            Payload::Text(text) => Some(text.as_str()),
            _ => None,
        };
        let folder = if matches!(payload.kind(), kind::ACK | kind::IDENTITY_UPDATE) {
            Folder::System
        } else {
            Folder::Sent
        };
        let body = payload.encode_body();
        report.message_id = self.db.store_sent(
            &NewMessage {
                folder,
                via: Via::Outbox,
                peer: Some(to),
                record_id: &record_id,
                kind: payload.kind(),
                body: &body,
                text,
                created_at: now,
            },
            now_ms(),
        )?;
        for (relay, write) in relays.iter().zip(&report.relays) {
            if let Ok(outcome) = &write.result {
                self.db.add_receipt(&relay.url, &outcome.receipt, now_ms())?;
            }
        }
        Ok(report)
    }
}

/// A contact name is shown and typed: non-empty, at most 64 bytes, no control characters,
/// and not something that parses as a key (which would make `send KEY` ambiguous).
fn check_name(name: &str) -> Result<(), ClientError> {
    let bad = |reason| Err(ClientError::BadName { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 64 {
        return bad("it is longer than 64 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    if PublicKey::parse(name).is_ok() {
        return bad("it looks like a key");
    }
    Ok(())
}
