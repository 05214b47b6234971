//! The errors the client returns: one enum for the local database, one for a single relay's
//! answer, and one for the client's operations, each variant saying what to do about it.

use std::path::PathBuf;

use pigeonhole_proto::card::CardError;
use pigeonhole_proto::keyfile::KeyFileError;
use pigeonhole_proto::keys::KeyError;
use pigeonhole_proto::seal::SealError;

/// A failure of the local SQLite database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused an operation (a locked, damaged or unwritable database file).
    #[error("local database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer version of the client.
    #[error(
        "the local database has schema version {found}, newer than this client's {known}: upgrade pigeonhole"
    )]
    TooNew {
        /// The `user_version` found in the file.
        found: i64,
        /// The newest schema this build knows.
        known: i64,
    },
    /// A row holds a value this client cannot read back (edited by hand, or damaged).
    #[error("the local database holds a damaged value in `{table}`: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Why one relay could not do what was asked. A relay that fails never stops the others:
/// operations on several relays collect these per relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The URL is not an `http://` or `https://` URL with a host.
    #[error("`{url}` is not a relay URL: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be made (down, wrong address, DNS, TLS).
    #[error("cannot reach relay {url}: {reason} (is it running, and is the URL right?)")]
    Unreachable {
        /// The relay.
        url: String,
        /// The transport's explanation.
        reason: String,
    },
    /// The relay did not answer in time.
    #[error("relay {url} did not answer within {secs} s")]
    Timeout {
        /// The relay.
        url: String,
        /// The time allowed.
        secs: u64,
    },
    /// The relay answered with an error (`{"error", "code"}`).
    #[error("relay {url} refused ({status} {code}): {message}")]
    Refused {
        /// The relay.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The stable error code (spec §11.3).
        code: String,
        /// The relay's explanation.
        message: String,
    },
    /// The relay answered something that does not verify or parse: a bad signature on a
    /// receipt or document, a record not written by whom it should be, malformed JSON.
    #[error("relay {url} sent an invalid answer: {reason}")]
    BadAnswer {
        /// The relay.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl RelayError {
    /// The relay URL the error is about.
    pub fn url(&self) -> &str {
        match self {
            Self::BadUrl { url, .. }
            | Self::Unreachable { url, .. }
            | Self::Timeout { url, .. }
            | Self::Refused { url, .. }
            | Self::BadAnswer { url, .. } => url,
        }
    }

    /// Whether the relay could not be reached at all (down, wrong address or too slow), as
    /// opposed to answering with a refusal or something invalid.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Timeout { .. })
    }
}

/// A list of relays that failed, for errors that happen only when every relay failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayFailures(pub Vec<RelayError>);

impl std::fmt::Display for RelayFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// There is no identity in this home directory yet.
    #[error(
        "no identity in {home}: create one first with `pigeonhole id new --label NAME` (or pass the right --home)"
    )]
    NoIdentity {
        /// The home directory.
        home: PathBuf,
    },
    /// `id new` or `id import-key` on a home that already has an identity.
    #[error("{home} already holds an identity; use another --home to create a second one")]
    IdentityExists {
        /// The home directory.
        home: PathBuf,
    },
    /// The passphrase does not decrypt the key file.
    #[error("wrong passphrase for the key file {path} (or the file was altered)")]
    WrongPassphrase {
        /// The key file.
        path: PathBuf,
    },
    /// The key file could not be read or written as a key file.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: KeyFileError,
    },
    /// An empty passphrase was given for a new key file.
    #[error("the passphrase is empty: choose one (or set PIGEONHOLE_PASSPHRASE)")]
    EmptyPassphrase,
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The local database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A card did not parse or verify.
    #[error("{0}; ask its owner for a fresh card (`pigeonhole id export` or `id show`)")]
    BadCard(#[source] CardError),
    /// A key did not parse.
    #[error("invalid key: {0}")]
    BadKey(#[source] KeyError),
    /// No contact has this name or key.
    #[error(
        "no contact named `{name}`; see `pigeonhole contact list`, or add their card with `pigeonhole contact add`"
    )]
    UnknownContact {
        /// The name or key asked for.
        name: String,
    },
    /// The name is already used by another contact.
    #[error("the name `{name}` is already used by another contact; pick another with --name")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// A contact name that cannot be used (empty, or looks like a key).
    #[error("invalid contact name `{name}`: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The card given is the user's own.
    #[error("this is your own card; add the other person's card")]
    OwnCard,
    /// The identity has no relays, so nothing can be sent or acknowledged.
    #[error("you have no relays yet: add one with `pigeonhole relay add URL`")]
    NoRelays,
    /// The relay is already on the card.
    #[error("{url} is already one of your relays")]
    RelayExists {
        /// The relay.
        url: String,
    },
    /// The relay is not on the card.
    #[error("{url} is not one of your relays (see `pigeonhole relay list`)")]
    UnknownRelay {
        /// The relay.
        url: String,
    },
    /// The card would break a limit (8 relays, total size).
    #[error("cannot update your card: {0}")]
    CardLimit(#[source] CardError),
    /// One relay failed where only that relay was involved.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// Every relay involved failed.
    #[error("no relay could be reached or accepted the request: {0}")]
    AllRelaysFailed(RelayFailures),
    /// The message could not be sealed (too long).
    #[error("cannot seal the message: {0}")]
    Seal(#[from] SealError),
    /// A request could not be signed (a limit was broken).
    #[error("cannot sign the request: {0}")]
    Sign(#[source] pigeonhole_proto::request::RequestError),
    /// The operation signs or opens letters, and the key file was not unlocked.
    #[error("the key is locked: unlock the key file with its passphrase first")]
    Locked,
    /// `listen` was started with no contact whose card lists a relay and no relay of one's own.
    #[error(
        "nothing to listen to: add a relay (`pigeonhole relay add URL`) or a contact whose card lists one (`pigeonhole contact add`)"
    )]
    NothingToListen,
    /// No message has this id.
    #[error("no message with id {id}; see `pigeonhole inbox`")]
    NoSuchMessage {
        /// The id asked for.
        id: i64,
    },
}
