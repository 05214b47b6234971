//! The local SQLite database: the own card and relays, contacts and their signed cards,
//! per-(contact, relay) cursors, messages, deliveries (which relay handed over which record,
//! the basis of acks), write receipts and the acks contacts sent back.
//!
//! Schema changes are numbered migrations recorded in SQLite's `user_version`; a file from a
//! newer client is refused rather than guessed at.

use std::path::Path;

use pigeonhole_proto::card::IdentityCard;
use pigeonhole_proto::keys::PublicKey;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;

use crate::error::DbError;

/// The migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    card TEXT NOT NULL                 -- the signed card, pigeoncard1...
);
CREATE TABLE own_relays (
    url TEXT PRIMARY KEY,
    relay_key TEXT NOT NULL,
    position INTEGER NOT NULL,
    added_at INTEGER NOT NULL
);
CREATE TABLE contacts (
    pubkey TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    card TEXT NOT NULL,                -- the newest signed card, pigeoncard1...
    updated INTEGER NOT NULL,          -- the card's `updated`
    added_at INTEGER NOT NULL
);
CREATE TABLE cursors (
    contact TEXT NOT NULL,
    relay_url TEXT NOT NULL,
    relay_key TEXT NOT NULL,
    after_seq INTEGER NOT NULL,
    PRIMARY KEY (contact, relay_url)
);
-- direction: 'in' | 'out'; folder: 'inbox' | 'requests' | 'system' | 'sent';
-- sent_via: 'outbox' | 'drop'; kind: the payload kind number.
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    direction TEXT NOT NULL,
    folder TEXT NOT NULL,
    sent_via TEXT NOT NULL,
    peer TEXT,
    record_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    body BLOB NOT NULL,
    text TEXT,
    created_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    read_at INTEGER
);
CREATE UNIQUE INDEX messages_record ON messages (direction, peer, record_id);
CREATE INDEX messages_folder ON messages (folder, id);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    contact TEXT NOT NULL,
    record_id TEXT NOT NULL,
    relay_url TEXT NOT NULL,
    relay_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    read_at INTEGER NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,  -- 0: no ack yet; 1: ack stored; 2: never acked (an ack)
    UNIQUE (contact, relay_url, seq)
);
CREATE INDEX deliveries_pending ON deliveries (acked, contact);
CREATE TABLE receipts (
    id INTEGER PRIMARY KEY,
    receiver TEXT NOT NULL,
    record_id TEXT NOT NULL,
    relay_url TEXT NOT NULL,
    relay_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    receipt TEXT NOT NULL,             -- the verified write receipt, JSON
    stored_at INTEGER NOT NULL
);
CREATE INDEX receipts_record ON receipts (receiver, record_id);
CREATE TABLE acks (
    contact TEXT NOT NULL,
    record_id TEXT NOT NULL,
    relay_key TEXT NOT NULL,
    read_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (contact, record_id, relay_key, read_at)
);
",
    r"
-- Drops (schema 2): where each own relay's bucket was polled up to, the contact-path counters
-- (next to send to a contact; highest seen from a contact), and the drops already handled.
CREATE TABLE drop_cursors (
    relay_url TEXT PRIMARY KEY,
    relay_key TEXT NOT NULL,
    after_seq INTEGER NOT NULL
);
CREATE TABLE drop_counters (
    contact TEXT PRIMARY KEY,
    next_out INTEGER NOT NULL DEFAULT 0,
    seen_in INTEGER                    -- NULL: nothing received on the contact path yet
);
CREATE TABLE drops_seen (
    hash TEXT PRIMARY KEY,             -- SHA-256 of the envelope
    seen_at INTEGER NOT NULL
);
",
];

/// The newest schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Which list a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Folder {
    /// Messages from contacts.
    Inbox,
    /// Messages from strangers (drops), waiting to be accepted.
    Requests,
    /// Acks and identity updates: bookkeeping, not shown in the inbox.
    System,
    /// Messages this identity sent.
    Sent,
}

impl Folder {
    fn as_str(self) -> &'static str {
        match self {
            Self::Inbox => "inbox",
            Self::Requests => "requests",
            Self::System => "system",
            Self::Sent => "sent",
        }
    }

    fn parse(text: &str) -> Result<Self, DbError> {
        Ok(match text {
            "inbox" => Self::Inbox,
            "requests" => Self::Requests,
            "system" => Self::System,
            "sent" => Self::Sent,
            other => return Err(corrupt("messages", format!("unknown folder `{other}`"))),
        })
    }
}

/// How a message travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Through the sender's outbox on the sender's relays.
    Outbox,
    /// As an anonymous drop under the recipient's prefix.
    Drop,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Self::Outbox => "outbox",
            Self::Drop => "drop",
        }
    }
}

/// A contact: a name and the newest signed card.
#[derive(Debug, Clone)]
pub struct Contact {
    /// The local name.
    pub name: String,
    /// The newest verified card.
    pub card: IdentityCard,
}

/// One of the identity's own relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnRelay {
    /// Base URL.
    pub url: String,
    /// The relay's key, learned from its signed info document when it was added.
    pub relay_key: PublicKey,
}

/// A stored message.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    /// Local id (for `read ID`).
    pub id: i64,
    /// `in` or `out`.
    pub direction: String,
    /// The list it is in.
    pub folder: Folder,
    /// `outbox` or `drop`.
    pub sent_via: String,
    /// The other party's key (hex), when known.
    pub peer: Option<String>,
    /// The contact's name, when the peer is a contact.
    pub peer_name: Option<String>,
    /// The record id.
    pub record_id: String,
    /// The payload kind number.
    pub kind: u16,
    /// The text, for text messages.
    pub text: Option<String>,
    /// When the sender wrote it (unix ms).
    pub created_at: u64,
    /// When it arrived here or was sent (unix ms).
    pub received_at: u64,
    /// When it was first shown with `read` (unix ms).
    pub read_at: Option<u64>,
}

/// A new incoming message to store.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// The list it goes in.
    pub folder: Folder,
    /// How it came.
    pub via: Via,
    /// The sender, when known.
    pub peer: Option<&'a PublicKey>,
    /// The record id.
    pub record_id: &'a str,
    /// The payload kind.
    pub kind: u16,
    /// The payload body bytes.
    pub body: &'a [u8],
    /// The text, for text messages.
    pub text: Option<&'a str>,
    /// The letter's `created_at`.
    pub created_at: u64,
}

/// A record fetched from a relay that has not been acknowledged yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAck {
    /// The delivery row.
    pub id: i64,
    /// The record id in the contact's outbox.
    pub record_id: String,
    /// The relay that delivered it.
    pub relay_key: PublicKey,
    /// When it was fetched (unix ms).
    pub read_at: u64,
}

/// The client's database handle.
pub struct Db {
    conn: Connection,
}

fn corrupt(table: &'static str, reason: impl Into<String>) -> DbError {
    DbError::Corrupt { table, reason: reason.into() }
}

fn key_of(table: &'static str, hex: &str) -> Result<PublicKey, DbError> {
    PublicKey::from_hex(hex).map_err(|e| corrupt(table, e.to_string()))
}

fn card_of(table: &'static str, text: &str) -> Result<IdentityCard, DbError> {
    IdentityCard::from_bech32m(text).map_err(|e| corrupt(table, e.to_string()))
}

impl Db {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory database (tests, and embedders that keep state elsewhere).
    pub fn open_in_memory() -> Result<Self, DbError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, DbError> {
        // A second process (say `listen` while `send` runs) waits for the lock instead of failing.
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut db = Self { conn };
        db.migrate()?;
        Ok(db)
    }

    fn migrate(&mut self) -> Result<(), DbError> {
        let found: i64 = self.conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(DbError::TooNew { found, known: SCHEMA_VERSION });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<i64, DbError> {
        Ok(self.conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    // --- own identity ------------------------------------------------------------------

    /// The identity's current signed card, if an identity was created.
    pub fn own_card(&self) -> Result<Option<IdentityCard>, DbError> {
        let text: Option<String> =
            self.conn.query_row("SELECT card FROM identity WHERE id = 1", [], |r| r.get(0)).optional()?;
        text.map(|t| card_of("identity", &t)).transpose()
    }

    /// Replaces the identity's card.
    pub fn set_own_card(&self, card: &IdentityCard) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO identity (id, card) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET card = ?1",
            params![card.to_bech32m()],
        )?;
        Ok(())
    }

    /// The identity's relays, in card order.
    pub fn own_relays(&self) -> Result<Vec<OwnRelay>, DbError> {
        let mut stmt = self.conn.prepare("SELECT url, relay_key FROM own_relays ORDER BY position, url")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (url, key) = row?;
            Ok(OwnRelay { url, relay_key: key_of("own_relays", &key)? })
        })
        .collect()
    }

    /// Adds (or updates the key of) an own relay, at the end of the list.
    pub fn add_own_relay(&self, relay: &OwnRelay, now: u64) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO own_relays (url, relay_key, position, added_at)
             VALUES (?1, ?2, (SELECT COALESCE(MAX(position), 0) + 1 FROM own_relays), ?3)
             ON CONFLICT (url) DO UPDATE SET relay_key = ?2",
            params![relay.url, relay.relay_key.to_hex(), now as i64],
        )?;
        Ok(())
    }

    /// Removes an own relay; returns whether it was there.
    pub fn remove_own_relay(&self, url: &str) -> Result<bool, DbError> {
        Ok(self.conn.execute("DELETE FROM own_relays WHERE url = ?1", params![url])? > 0)
    }

    // --- contacts ----------------------------------------------------------------------

    /// Adds a contact. Fails with a constraint error if the name or key is taken.
    pub fn add_contact(&self, name: &str, card: &IdentityCard, now: u64) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO contacts (pubkey, name, card, updated, added_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                card.content().pubkey.to_hex(),
                name,
                card.to_bech32m(),
                card.content().updated as i64,
                now as i64
            ],
        )?;
        Ok(())
    }

    /// Replaces a contact's card if `card` is newer than the stored one; returns whether it did.
    pub fn update_contact_card(&self, card: &IdentityCard) -> Result<bool, DbError> {
        let changed = self.conn.execute(
            "UPDATE contacts SET card = ?2, updated = ?3 WHERE pubkey = ?1 AND updated < ?3",
            params![card.content().pubkey.to_hex(), card.to_bech32m(), card.content().updated as i64],
        )?;
        Ok(changed > 0)
    }

    /// The contact with this local name.
    pub fn contact_by_name(&self, name: &str) -> Result<Option<Contact>, DbError> {
        self.contact_where("name = ?1", name)
    }

    /// The contact with this key.
    pub fn contact_by_key(&self, key: &PublicKey) -> Result<Option<Contact>, DbError> {
        self.contact_where("pubkey = ?1", &key.to_hex())
    }

    fn contact_where(&self, condition: &str, value: &str) -> Result<Option<Contact>, DbError> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(&format!("SELECT name, card FROM contacts WHERE {condition}"), params![value], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        row.map(|(name, card)| Ok(Contact { name, card: card_of("contacts", &card)? })).transpose()
    }

    /// Every contact, by name.
    pub fn contacts(&self) -> Result<Vec<Contact>, DbError> {
        let mut stmt = self.conn.prepare("SELECT name, card FROM contacts ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (name, card) = row?;
            Ok(Contact { name, card: card_of("contacts", &card)? })
        })
        .collect()
    }

    /// Removes a contact by name (and its cursors); returns whether it existed.
    pub fn remove_contact(&self, name: &str) -> Result<bool, DbError> {
        let key: Option<String> = self
            .conn
            .query_row("SELECT pubkey FROM contacts WHERE name = ?1", params![name], |r| r.get(0))
            .optional()?;
        let Some(key) = key else { return Ok(false) };
        self.conn.execute("DELETE FROM cursors WHERE contact = ?1", params![key])?;
        self.conn.execute("DELETE FROM contacts WHERE pubkey = ?1", params![key])?;
        Ok(true)
    }

    // --- cursors -----------------------------------------------------------------------

    /// The sequence number after which to continue reading `contact`'s outbox on a relay, or
    /// 0 when nothing was read there yet. A cursor belongs to one relay key: if the relay at
    /// that URL now has another key (a new relay), the cursor starts over.
    pub fn cursor(
        &self,
        contact: &PublicKey,
        relay_url: &str,
        relay_key: &PublicKey,
    ) -> Result<u64, DbError> {
        let row: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT relay_key, after_seq FROM cursors WHERE contact = ?1 AND relay_url = ?2",
                params![contact.to_hex(), relay_url],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match row {
            Some((key, seq)) if key == relay_key.to_hex() => seq.max(0) as u64,
            _ => 0,
        })
    }

    /// The stored cursor of `contact`'s outbox on a relay URL, with the relay key it belongs to.
    pub fn cursor_entry(
        &self,
        contact: &PublicKey,
        relay_url: &str,
    ) -> Result<Option<(PublicKey, u64)>, DbError> {
        let row: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT relay_key, after_seq FROM cursors WHERE contact = ?1 AND relay_url = ?2",
                params![contact.to_hex(), relay_url],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(key, seq)| Ok((key_of("cursors", &key)?, seq.max(0) as u64))).transpose()
    }

    /// Every cursor: `(contact hex, relay url, after_seq)`.
    pub fn cursors(&self) -> Result<Vec<(String, String, u64)>, DbError> {
        let mut stmt = self
            .conn
            .prepare("SELECT contact, relay_url, after_seq FROM cursors ORDER BY contact, relay_url")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // --- messages and deliveries ---------------------------------------------------------

    /// Stores one page of records fetched from `contact`'s outbox on a relay, in one
    /// transaction: each new message (de-duplicated by `(sender, record id)`), a delivery row
    /// per record (the basis of acks; `ack` false for records that are never acknowledged,
    /// like acks themselves), and the cursor. Returns, for each item, the id of the message if
    /// it was new (`None` for a duplicate).
    pub fn store_page(
        &mut self,
        contact: &PublicKey,
        relay_url: &str,
        relay_key: &PublicKey,
        cursor: u64,
        items: &[(NewMessage<'_>, u64, bool)],
        now: u64,
    ) -> Result<Vec<Option<i64>>, DbError> {
        let tx = self.conn.transaction()?;
        let mut fresh = Vec::with_capacity(items.len());
        for (message, seq, ack) in items {
            fresh.push(insert_message(&tx, "in", message, now)?);
            tx.execute(
                "INSERT OR IGNORE INTO deliveries (contact, record_id, relay_url, relay_key, seq, read_at, acked)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    contact.to_hex(),
                    message.record_id,
                    relay_url,
                    relay_key.to_hex(),
                    *seq as i64,
                    now as i64,
                    if *ack { 0 } else { 2 }
                ],
            )?;
        }
        tx.execute(
            "INSERT INTO cursors (contact, relay_url, relay_key, after_seq) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (contact, relay_url) DO UPDATE SET relay_key = ?3, after_seq = ?4",
            params![contact.to_hex(), relay_url, relay_key.to_hex(), cursor as i64],
        )?;
        tx.commit()?;
        Ok(fresh)
    }

    /// Stores a message this identity sent (de-duplicated by receiver and record id).
    pub fn store_sent(&self, message: &NewMessage<'_>, now: u64) -> Result<Option<i64>, DbError> {
        insert_message(&self.conn, "out", message, now)
    }

    /// Stores a message that arrived other than through an outbox page (a drop), de-duplicated
    /// by sender and record id.
    pub fn store_received(&self, message: &NewMessage<'_>, now: u64) -> Result<Option<i64>, DbError> {
        insert_message(&self.conn, "in", message, now)
    }

    // --- drops ---------------------------------------------------------------------------

    /// The contact-path counter to use for the next drop to `contact`, reserved (incremented)
    /// before it is used, so no counter is ever used twice.
    pub fn next_drop_counter(&self, contact: &PublicKey) -> Result<u64, DbError> {
        let counter: i64 = self.conn.query_row(
            "INSERT INTO drop_counters (contact, next_out) VALUES (?1, 1)
             ON CONFLICT (contact) DO UPDATE SET next_out = next_out + 1
             RETURNING next_out - 1",
            params![contact.to_hex()],
            |r| r.get(0),
        )?;
        Ok(counter.max(0) as u64)
    }

    /// The highest contact-path counter received from `contact`, if any.
    pub fn drop_counter_seen(&self, contact: &PublicKey) -> Result<Option<u64>, DbError> {
        let seen: Option<Option<i64>> = self
            .conn
            .query_row(
                "SELECT seen_in FROM drop_counters WHERE contact = ?1",
                params![contact.to_hex()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(seen.flatten().map(|s| s.max(0) as u64))
    }

    /// Records that `counter` was received from `contact` (keeps the highest).
    pub fn set_drop_counter_seen(&self, contact: &PublicKey, counter: u64) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO drop_counters (contact, seen_in) VALUES (?1, ?2)
             ON CONFLICT (contact) DO UPDATE SET seen_in = max(coalesce(seen_in, -1), ?2)",
            params![contact.to_hex(), counter as i64],
        )?;
        Ok(())
    }

    /// Whether the drop with this envelope hash was handled already.
    pub fn drop_seen(&self, hash: &[u8; 32]) -> Result<bool, DbError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM drops_seen WHERE hash = ?1", params![hex::encode(hash)], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Records a drop as handled.
    pub fn mark_drop_seen(&self, hash: &[u8; 32], now: u64) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO drops_seen (hash, seen_at) VALUES (?1, ?2)",
            params![hex::encode(hash), now as i64],
        )?;
        Ok(())
    }

    /// Where this identity's bucket on `relay_url` was polled up to.
    pub fn drop_cursor(&self, relay_url: &str) -> Result<u64, DbError> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT after_seq FROM drop_cursors WHERE relay_url = ?1", params![relay_url], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(seq.unwrap_or(0).max(0) as u64)
    }

    /// Stores the drop cursor of `relay_url`.
    pub fn set_drop_cursor(
        &self,
        relay_url: &str,
        relay_key: &PublicKey,
        cursor: u64,
    ) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO drop_cursors (relay_url, relay_key, after_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (relay_url) DO UPDATE SET relay_key = ?2, after_seq = ?3",
            params![relay_url, relay_key.to_hex(), cursor as i64],
        )?;
        Ok(())
    }

    /// Records a write receipt (already verified) from the relay at `relay_url`.
    pub fn add_receipt(
        &self,
        relay_url: &str,
        receipt: &pigeonhole_proto::receipt::WriteReceipt,
        now: u64,
    ) -> Result<(), DbError> {
        let leaf = &receipt.leaf;
        self.conn.execute(
            "INSERT INTO receipts (receiver, record_id, relay_url, relay_key, seq, receipt, stored_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                leaf.receiver.to_hex(),
                leaf.record_id,
                relay_url,
                leaf.relay.to_hex(),
                leaf.seq as i64,
                receipt.to_json(),
                now as i64
            ],
        )?;
        Ok(())
    }

    /// How many receipts are stored for a sent record.
    pub fn receipt_count(&self, receiver: &PublicKey, record_id: &str) -> Result<u64, DbError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM receipts WHERE receiver = ?1 AND record_id = ?2",
            params![receiver.to_hex(), record_id],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Messages in a folder, newest last.
    pub fn messages(&self, folder: Folder) -> Result<Vec<StoredMessage>, DbError> {
        self.query_messages("WHERE m.folder = ?1 ORDER BY m.id", params![folder.as_str()])
    }

    /// One message by id.
    pub fn message(&self, id: i64) -> Result<Option<StoredMessage>, DbError> {
        Ok(self.query_messages("WHERE m.id = ?1", params![id])?.into_iter().next())
    }

    /// The kind of a message this identity sent, by receiver and record id.
    pub fn sent_kind(&self, receiver: &PublicKey, record_id: &str) -> Result<Option<u16>, DbError> {
        let kind: Option<i64> = self
            .conn
            .query_row(
                "SELECT kind FROM messages WHERE direction = 'out' AND peer = ?1 AND record_id = ?2",
                params![receiver.to_hex(), record_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(kind.map(|k| k as u16))
    }

    /// Marks a message read (first time only).
    pub fn mark_read(&self, id: i64, now: u64) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE messages SET read_at = ?2 WHERE id = ?1 AND read_at IS NULL",
            params![id, now as i64],
        )?;
        Ok(())
    }

    fn query_messages(&self, tail: &str, args: impl rusqlite::Params) -> Result<Vec<StoredMessage>, DbError> {
        let sql = format!(
            "SELECT m.id, m.direction, m.folder, m.sent_via, m.peer, c.name, m.record_id, m.kind, m.text,
                    m.created_at, m.received_at, m.read_at
             FROM messages m LEFT JOIN contacts c ON c.pubkey = m.peer {tail}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(args, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, Option<String>>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, i64>(10)?,
                r.get::<_, Option<i64>>(11)?,
            ))
        })?;
        rows.map(|row| {
            let (
                id,
                direction,
                folder,
                sent_via,
                peer,
                peer_name,
                record_id,
                kind,
                text,
                created,
                received,
                read,
            ) = row?;
            Ok(StoredMessage {
                id,
                direction,
                folder: Folder::parse(&folder)?,
                sent_via,
                peer,
                peer_name,
                record_id,
                kind: kind as u16,
                text,
                created_at: created as u64,
                received_at: received as u64,
                read_at: read.map(|t| t as u64),
            })
        })
        .collect()
    }

    /// Deliveries from `contact` not acknowledged yet (at most `limit`).
    pub fn pending_acks(&self, contact: &PublicKey, limit: usize) -> Result<Vec<PendingAck>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, record_id, relay_key, read_at FROM deliveries
             WHERE acked = 0 AND contact = ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![contact.to_hex(), limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
        })?;
        rows.map(|row| {
            let (id, record_id, key, read_at) = row?;
            Ok(PendingAck { id, record_id, relay_key: key_of("deliveries", &key)?, read_at: read_at as u64 })
        })
        .collect()
    }

    /// Contacts with deliveries waiting for an ack.
    pub fn contacts_with_pending_acks(&self) -> Result<Vec<PublicKey>, DbError> {
        let mut stmt = self.conn.prepare("SELECT DISTINCT contact FROM deliveries WHERE acked = 0")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|row| key_of("deliveries", &row?)).collect()
    }

    /// Marks deliveries acknowledged.
    pub fn mark_acked(&mut self, ids: &[i64]) -> Result<(), DbError> {
        let tx = self.conn.transaction()?;
        for id in ids {
            tx.execute("UPDATE deliveries SET acked = 1 WHERE id = ?1", params![id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records acks a contact sent (duplicates ignored); returns how many were new.
    pub fn add_acks(
        &mut self,
        contact: &PublicKey,
        entries: &[pigeonhole_proto::payload::AckEntry],
        now: u64,
    ) -> Result<usize, DbError> {
        let tx = self.conn.transaction()?;
        let mut added = 0;
        for entry in entries {
            added += tx.execute(
                "INSERT OR IGNORE INTO acks (contact, record_id, relay_key, read_at, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    contact.to_hex(),
                    entry.record_id,
                    entry.relay.to_hex(),
                    entry.read_at as i64,
                    now as i64
                ],
            )?;
        }
        tx.commit()?;
        Ok(added)
    }

    /// Acks received for records read from one relay: `(contact, record id) -> count`.
    pub fn acks_for_relay(
        &self,
        relay_key: &PublicKey,
    ) -> Result<std::collections::BTreeMap<(String, String), u64>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT contact, record_id, COUNT(*) FROM acks WHERE relay_key = ?1 GROUP BY contact, record_id",
        )?;
        let rows = stmt.query_map(params![relay_key.to_hex()], |r| {
            Ok(((r.get::<_, String>(0)?, r.get::<_, String>(1)?), r.get::<_, i64>(2)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn insert_message(
    conn: &Connection,
    direction: &str,
    message: &NewMessage<'_>,
    now: u64,
) -> Result<Option<i64>, DbError> {
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO messages
         (direction, folder, sent_via, peer, record_id, kind, body, text, created_at, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            direction,
            message.folder.as_str(),
            message.via.as_str(),
            message.peer.map(PublicKey::to_hex),
            message.record_id,
            i64::from(message.kind),
            message.body,
            message.text,
            message.created_at as i64,
            now as i64
        ],
    )?;
    Ok((inserted > 0).then(|| conn.last_insert_rowid()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;
    use pigeonhole_proto::card::CardContent;
    use pigeonhole_proto::keys::SecretKey;
    use pigeonhole_proto::payload::AckEntry;
    use pigeonhole_proto::tag::Prefix;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(&[byte; 32]).unwrap()
    }

    fn card(byte: u8, updated: u64, relays: &[&str]) -> IdentityCard {
        CardContent {
            label: format!("person {byte}"),
            pubkey: key(byte).public_key(),
            relays: relays.iter().map(|r| (*r).to_owned()).collect(),
            prefix: Prefix::new(0, 0).unwrap(),
            updated,
        }
        .sign_with_aux(&key(byte), &[0; 32])
        .unwrap()
    }

    fn text<'a>(peer: &'a PublicKey, record_id: &'a str, body: &'a str) -> NewMessage<'a> {
        NewMessage {
            folder: Folder::Inbox,
            via: Via::Outbox,
            peer: Some(peer),
            record_id,
            kind: 1,
            body: body.as_bytes(),
            text: Some(body),
            created_at: 5,
        }
    }

    #[test]
    fn migrations_set_user_version_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let db = Db::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        db.set_own_card(&card(1, 10, &[])).unwrap();
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.own_card().unwrap().unwrap().content().updated, 10);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        drop(Db::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(conn);
        assert!(matches!(Db::open(&path), Err(DbError::TooNew { .. })));
    }

    #[test]
    fn contacts_by_name_and_key_and_only_newer_cards_replace() {
        let db = Db::open_in_memory().unwrap();
        db.add_contact("bob", &card(2, 100, &["http://a.example"]), 1).unwrap();
        assert!(db.add_contact("bob", &card(3, 100, &[]), 1).is_err(), "names are unique");
        assert!(db.add_contact("robert", &card(2, 100, &[]), 1).is_err(), "keys are unique");
        assert!(!db.update_contact_card(&card(2, 50, &["http://old.example"])).unwrap());
        assert!(!db.update_contact_card(&card(2, 100, &["http://same.example"])).unwrap());
        assert!(db.update_contact_card(&card(2, 101, &["http://b.example"])).unwrap());
        let bob = db.contact_by_key(&key(2).public_key()).unwrap().unwrap();
        assert_eq!(bob.card.content().relays, vec!["http://b.example".to_owned()]);
        assert_eq!(db.contact_by_name("bob").unwrap().unwrap().card, bob.card);
        assert!(db.remove_contact("bob").unwrap());
        assert!(db.contact_by_name("bob").unwrap().is_none());
    }

    #[test]
    fn pages_deduplicate_by_record_id_and_move_cursors() {
        let mut db = Db::open_in_memory().unwrap();
        let alice = key(1).public_key();
        let (r1, r2) = (key(8).public_key(), key(9).public_key());
        assert_eq!(db.cursor(&alice, "http://r1", &r1).unwrap(), 0);
        let fresh = db
            .store_page(
                &alice,
                "http://r1",
                &r1,
                7,
                &[(text(&alice, "a", "hi"), 6, true), (text(&alice, "b", "yo"), 7, true)],
                10,
            )
            .unwrap();
        assert!(fresh.iter().all(Option::is_some));
        // The same record from the second relay is not a new message, but is a delivery.
        let fresh =
            db.store_page(&alice, "http://r2", &r2, 3, &[(text(&alice, "a", "hi"), 3, true)], 11).unwrap();
        assert_eq!(fresh, vec![None]);
        assert_eq!(db.messages(Folder::Inbox).unwrap().len(), 2);
        assert_eq!(db.cursor(&alice, "http://r1", &r1).unwrap(), 7);
        assert_eq!(db.cursor(&alice, "http://r2", &r2).unwrap(), 3);
        // A relay at the same URL with another key starts over.
        assert_eq!(db.cursor(&alice, "http://r1", &r2).unwrap(), 0);
        let pending = db.pending_acks(&alice, 10).unwrap();
        assert_eq!(pending.len(), 3);
        assert_eq!(db.contacts_with_pending_acks().unwrap(), vec![alice]);
        db.mark_acked(&pending.iter().map(|p| p.id).collect::<Vec<_>>()).unwrap();
        assert!(db.pending_acks(&alice, 10).unwrap().is_empty());
    }

    #[test]
    fn acks_count_per_relay_and_ignore_duplicates() {
        let mut db = Db::open_in_memory().unwrap();
        let bob = key(2).public_key();
        let relay = key(9).public_key();
        let entry = |id: &str, at| AckEntry { record_id: id.into(), relay, read_at: at };
        assert_eq!(db.add_acks(&bob, &[entry("a", 1), entry("b", 1)], 5).unwrap(), 2);
        assert_eq!(db.add_acks(&bob, &[entry("a", 1), entry("a", 2)], 6).unwrap(), 1);
        let acks = db.acks_for_relay(&relay).unwrap();
        assert_eq!(acks[&(bob.to_hex(), "a".to_owned())], 2);
        assert_eq!(acks[&(bob.to_hex(), "b".to_owned())], 1);
        assert!(db.acks_for_relay(&key(3).public_key()).unwrap().is_empty());
    }
}
