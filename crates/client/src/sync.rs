//! Pulling: every contact's outbox on every relay their card lists, in parallel, from the
//! stored cursor; opening and checking each letter; storing it once however many relays
//! hand it over; applying identity updates (and following the new relays in the same sync);
//! recording acks contacts sent; and writing acks for what arrived.
//!
//! Only contacts are pulled from, so outbox records from strangers cannot arrive.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt as _;
use futures_util::future::join_all;
use pigeonhole_proto::card::IdentityCard;
use pigeonhole_proto::keys::{PublicKey, SecretKey};
use pigeonhole_proto::payload::{AckEntry, MAX_ACK_ENTRIES, Payload, kind};
use pigeonhole_proto::request::Request;
use pigeonhole_proto::seal::open;

use crate::client::Client;
use crate::db::{Contact, Folder, NewMessage, StoredMessage, Via};
use crate::error::{ClientError, RelayError};
use crate::relay::{Page, RelayClient, now_ms};

/// How many outboxes are pulled at once.
const PARALLEL_SOURCES: usize = 16;
/// Most pages pulled from one outbox in one sync (1,000 records a page on default relays).
const MAX_PAGES: usize = 1_000;
/// Rounds of following identity updates to new relays within one sync.
const MAX_ROUNDS: usize = 3;

/// Progress of a sync, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncProgress {
    /// Outboxes pulled so far.
    pub done: usize,
    /// Outboxes to pull (grows when an identity update names new relays).
    pub total: usize,
    /// Records fetched so far.
    pub records: usize,
}

/// How one contact's outbox on one relay went.
#[derive(Debug, Clone)]
pub struct SourceResult {
    /// The contact's name.
    pub contact: String,
    /// The relay.
    pub url: String,
    /// Records fetched.
    pub fetched: usize,
    /// Why the relay failed, if it did (records fetched before the failure are kept).
    pub error: Option<RelayError>,
}

/// What storing a page changed.
#[derive(Debug, Clone, Default)]
pub struct PageOutcome {
    /// New messages for the inbox (text and other non-bookkeeping kinds).
    pub new_messages: Vec<StoredMessage>,
    /// The contact's card was replaced by a newer one.
    pub card_updated: bool,
    /// Acks that arrived.
    pub acks_received: usize,
    /// Records that did not open or check, with the reason.
    pub rejected: Vec<String>,
}

/// Acks written after a sync.
#[derive(Debug, Default)]
pub struct AckReport {
    /// Ack entries stored on at least one own relay.
    pub sent: usize,
    /// Contacts whose acks could not be written (they are retried on the next sync).
    pub failed: Vec<(String, ClientError)>,
}

/// The result of a sync.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// One entry per (contact, relay) pulled.
    pub sources: Vec<SourceResult>,
    /// New messages, in the order they were stored.
    pub new_messages: Vec<StoredMessage>,
    /// Contacts whose card changed.
    pub card_updates: Vec<String>,
    /// Acks received from contacts.
    pub acks_received: usize,
    /// Records refused (they do not open or are not from the outbox owner).
    pub rejected: Vec<String>,
    /// Acks written for what arrived.
    pub acks: AckReport,
    /// What polling this identity's own drop buckets found.
    pub drops: crate::drops::DropPoll,
}

impl SyncReport {
    /// Outboxes that answered.
    pub fn reached(&self) -> usize {
        self.sources.iter().filter(|s| s.error.is_none()).count()
    }
}

/// Pulls every page of one outbox after `cursor`.
async fn pull(
    relays: RelayClient,
    secret: SecretKey,
    url: String,
    relay_key: PublicKey,
    owner: PublicKey,
    mut cursor: u64,
) -> (Vec<Page>, Option<RelayError>) {
    let mut pages = Vec::new();
    for _ in 0..MAX_PAGES {
        match relays.outbox_page(&url, &relay_key, &secret, &owner, cursor, 0).await {
            Ok(page) if page.records.is_empty() => break,
            Ok(page) => {
                cursor = page.cursor;
                pages.push(page);
            }
            Err(error) => return (pages, Some(error)),
        }
    }
    (pages, None)
}

impl Client {
    /// Pulls from every contact's relays, stores and acknowledges what arrived, then polls
    /// this identity's drop buckets on its own relays.
    pub async fn sync(&mut self, progress: &mut dyn FnMut(SyncProgress)) -> Result<SyncReport, ClientError> {
        let secret = self.secret()?.clone();
        let mut report = SyncReport::default();
        let mut pulled: BTreeSet<(PublicKey, String)> = BTreeSet::new();
        let mut keys: BTreeMap<String, Result<PublicKey, RelayError>> = BTreeMap::new();
        let mut state = SyncProgress { done: 0, total: 0, records: 0 };
        for _round in 0..MAX_ROUNDS {
            let contacts = self.db.contacts()?;
            let mut sources = Vec::new();
            for contact in &contacts {
                let key = contact.card.content().pubkey;
                for url in &contact.card.content().relays {
                    if pulled.insert((key, url.clone())) {
                        sources.push((contact.clone(), url.clone()));
                    }
                }
            }
            if sources.is_empty() {
                break;
            }
            state.total += sources.len();
            progress(state);
            // Each relay's key, once per sync, from its signed info document.
            let unknown: BTreeSet<String> =
                sources.iter().map(|(_, url)| url.clone()).filter(|u| !keys.contains_key(u)).collect();
            let hellos = join_all(unknown.into_iter().map(|url| {
                let relays = self.relays.clone();
                async move {
                    let result = relays.hello(&url).await.map(|h| h.relay_key);
                    (url, result)
                }
            }))
            .await;
            keys.extend(hellos);

            let mut pulls = Vec::new();
            for (contact, url) in sources {
                let owner = contact.card.content().pubkey;
                match &keys[&url] {
                    Err(error) => {
                        state.done += 1;
                        report.sources.push(SourceResult {
                            contact: contact.name.clone(),
                            url,
                            fetched: 0,
                            error: Some(error.clone()),
                        });
                    }
                    Ok(relay_key) => {
                        let cursor = self.db.cursor(&owner, &url, relay_key)?;
                        let future =
                            pull(self.relays.clone(), secret.clone(), url.clone(), *relay_key, owner, cursor);
                        let relay_key = *relay_key;
                        pulls.push(async move { (contact, url, relay_key, future.await) });
                    }
                }
            }
            progress(state);
            let mut stream = futures_util::stream::iter(pulls).buffer_unordered(PARALLEL_SOURCES);
            while let Some((contact, url, relay_key, (pages, error))) = stream.next().await {
                let mut fetched = 0;
                for page in &pages {
                    fetched += page.records.len();
                    // The card may have changed with an earlier page: re-read the contact.
                    let current =
                        self.db.contact_by_key(&contact.card.content().pubkey)?.unwrap_or(contact.clone());
                    let outcome = self.apply_page(&current, &url, &relay_key, page)?;
                    report.new_messages.extend(outcome.new_messages);
                    report.acks_received += outcome.acks_received;
                    report.rejected.extend(outcome.rejected);
                    if outcome.card_updated && !report.card_updates.contains(&contact.name) {
                        report.card_updates.push(contact.name.clone());
                    }
                }
                state.done += 1;
                state.records += fetched;
                progress(state);
                report.sources.push(SourceResult { contact: contact.name.clone(), url, fetched, error });
            }
        }
        report.acks = self.send_pending_acks().await?;
        report.drops = self.poll_drops().await?;
        Ok(report)
    }

    /// Opens, checks and stores one page of `contact`'s outbox from one relay (with the
    /// cursor, in one transaction), then applies acks and identity updates that were new.
    pub(crate) fn apply_page(
        &mut self,
        contact: &Contact,
        url: &str,
        relay_key: &PublicKey,
        page: &Page,
    ) -> Result<PageOutcome, ClientError> {
        let secret = self.secret()?.clone();
        let owner = contact.card.content().pubkey;
        let mut outcome = PageOutcome::default();
        // Opened letters: (seq, record id, payload, created_at).
        let mut opened = Vec::new();
        for record in &page.records {
            let Request::Write(write) = &record.message.request else { continue };
            match open(&secret, &write.content) {
                Ok(letter) if letter.letter.sender != Some(owner) => outcome.rejected.push(format!(
                    "{url} record {}: the letter is not signed by {}",
                    write.record_id, contact.name
                )),
                Ok(letter) if letter.letter.record_id != write.record_id => outcome
                    .rejected
                    .push(format!("{url} record {}: the letter's record id differs", write.record_id)),
                Ok(letter) => opened.push((
                    record.seq,
                    letter.letter.record_id,
                    letter.letter.payload,
                    letter.letter.created_at,
                )),
                Err(error) => outcome.rejected.push(format!("{url} record {}: {error}", write.record_id)),
            }
        }
        let bodies: Vec<Vec<u8>> = opened.iter().map(|(_, _, payload, _)| payload.encode_body()).collect();
        let items: Vec<(NewMessage<'_>, u64, bool)> = opened
            .iter()
            .zip(&bodies)
            .map(|((seq, record_id, payload, created_at), body)| {
                let (folder, text) = match payload {
                    Payload::Text(text) => (Folder::Inbox, Some(text.as_str())),
                    Payload::Ack(_) | Payload::IdentityUpdate(_) => (Folder::System, None),
                    _ => (Folder::Inbox, None),
                };
                let message = NewMessage {
                    folder,
                    via: Via::Outbox,
                    peer: Some(&owner),
                    record_id,
                    kind: payload.kind(),
                    body,
                    text,
                    created_at: *created_at,
                };
                // Acks are never acknowledged, or two clients would ack each other forever.
                (message, *seq, payload.kind() != kind::ACK)
            })
            .collect();
        let fresh = self.db.store_page(&owner, url, relay_key, page.cursor, &items, now_ms())?;
        for ((_, _, payload, _), id) in opened.iter().zip(fresh) {
            let Some(id) = id else { continue };
            match payload {
                Payload::Ack(entries) => {
                    outcome.acks_received += self.db.add_acks(&owner, entries, now_ms())?;
                }
                Payload::IdentityUpdate(bytes) => match IdentityCard::from_bytes(bytes) {
                    Ok(card) if card.content().pubkey == owner => {
                        outcome.card_updated |= self.db.update_contact_card(&card)?;
                    }
                    Ok(_) => outcome.rejected.push(format!("{url}: an identity update for another key")),
                    Err(error) => outcome
                        .rejected
                        .push(format!("{url}: an identity update that does not verify: {error}")),
                },
                _ => {
                    if let Some(message) = self.db.message(id)? {
                        outcome.new_messages.push(message);
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// Writes ack records for every delivery not acknowledged yet, into the own outbox to
    /// each contact, on every own relay. Failures are kept for the next sync.
    pub async fn send_pending_acks(&mut self) -> Result<AckReport, ClientError> {
        let mut report = AckReport::default();
        let relays = self.db.own_relays()?;
        if relays.is_empty() {
            return Ok(report);
        }
        for contact_key in self.db.contacts_with_pending_acks()? {
            let Some(contact) = self.db.contact_by_key(&contact_key)? else { continue };
            loop {
                let pending = self.db.pending_acks(&contact_key, MAX_ACK_ENTRIES)?;
                if pending.is_empty() {
                    break;
                }
                let entries = pending
                    .iter()
                    .map(|p| AckEntry {
                        record_id: p.record_id.clone(),
                        relay: p.relay_key,
                        read_at: p.read_at,
                    })
                    .collect();
                match self.send_via(&contact_key, Some(&contact.name), Payload::Ack(entries), &relays).await {
                    Ok(_) => {
                        report.sent += pending.len();
                        self.db.mark_acked(&pending.iter().map(|p| p.id).collect::<Vec<_>>())?;
                    }
                    Err(error) => {
                        report.failed.push((contact.name.clone(), error));
                        break;
                    }
                }
            }
        }
        Ok(report)
    }
}
