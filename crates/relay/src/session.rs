//! Authenticated sessions: a client answers a relay-issued challenge with one signed `session`
//! request, and then sends any number of unsigned requests over the session (a WebSocket, or
//! HTTP with a short-lived bearer token bound to its key). One signature check per session
//! instead of one per request is what lets a relay take tens of thousands of writes a second.
//!
//! Both tables are bounded: past their capacity, new challenges or tokens are refused (503)
//! rather than growing without limit. Time is an argument.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use pigeonhole_proto::keys::PublicKey;
use pigeonhole_proto::request::{Message, Request};

use crate::error::{ErrorCode, RelayError};

/// How long a challenge may be answered, in ms.
pub const CHALLENGE_TTL_MS: u64 = 60_000;
/// How long an HTTP session token lives, in ms.
pub const TOKEN_TTL_MS: u64 = 3_600_000;
/// Most outstanding challenges.
pub const MAX_CHALLENGES: usize = 100_000;
/// Most live tokens.
pub const MAX_TOKENS: usize = 100_000;

/// A table of entries that expire, oldest first, with a capacity.
struct Expiring<K, V> {
    entries: HashMap<K, (V, u64)>,
    order: VecDeque<(K, u64)>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Copy, V> Expiring<K, V> {
    fn new(capacity: usize) -> Self {
        Self { entries: HashMap::new(), order: VecDeque::new(), capacity }
    }

    fn purge(&mut self, now: u64) {
        while let Some(&(key, expires)) = self.order.front() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&key).is_some_and(|(_, at)| *at == expires) {
                self.entries.remove(&key);
            }
        }
    }

    fn insert(&mut self, key: K, value: V, expires: u64, now: u64) -> Result<(), RelayError> {
        self.purge(now);
        if self.entries.len() >= self.capacity {
            return Err(RelayError::new(ErrorCode::Busy, "too many open sessions; retry shortly"));
        }
        self.entries.insert(key, (value, expires));
        self.order.push_back((key, expires));
        Ok(())
    }

    fn take(&mut self, key: &K, now: u64) -> Option<V> {
        self.purge(now);
        self.entries.remove(key).map(|(value, _)| value)
    }

    fn get(&mut self, key: &K, now: u64) -> Option<(&V, u64)> {
        self.purge(now);
        self.entries.get(key).map(|(value, expires)| (value, *expires))
    }
}

/// Outstanding challenges and live HTTP session tokens.
pub struct Sessions {
    challenges: Mutex<Expiring<[u8; 32], ()>>,
    tokens: Mutex<Expiring<[u8; 32], PublicKey>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            challenges: Mutex::new(Expiring::new(MAX_CHALLENGES)),
            tokens: Mutex::new(Expiring::new(MAX_TOKENS)),
        }
    }
}

/// 32 random bytes from the OS.
pub fn random32() -> [u8; 32] {
    use rand_core::RngCore;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
}

impl Sessions {
    /// Issues a challenge valid for [`CHALLENGE_TTL_MS`].
    pub fn challenge(&self, now: u64) -> Result<([u8; 32], u64), RelayError> {
        let challenge = random32();
        let expires = now + CHALLENGE_TTL_MS;
        self.challenges.lock().insert(challenge, (), expires, now)?;
        Ok((challenge, expires))
    }

    /// Checks a verified, admitted `session` request against an outstanding challenge and
    /// consumes the challenge (each answers one session). Returns the session's key.
    pub fn answer(&self, message: &Message, now: u64) -> Result<PublicKey, RelayError> {
        let Request::Session(session) = &message.request else {
            return Err(RelayError::new(ErrorCode::WrongRequestType, "expected a `session` request"));
        };
        if self.challenges.lock().take(&session.challenge, now).is_none() {
            return Err(RelayError::new(
                ErrorCode::Forbidden,
                "unknown or expired challenge; fetch a new one (GET /v1/session) and answer within 60 s",
            ));
        }
        Ok(message.from)
    }

    /// Issues an HTTP bearer token for `key`.
    pub fn issue_token(&self, key: PublicKey, now: u64) -> Result<([u8; 32], u64), RelayError> {
        let token = random32();
        let expires = now + TOKEN_TTL_MS;
        self.tokens.lock().insert(token, key, expires, now)?;
        Ok((token, expires))
    }

    /// The key a live token is bound to.
    pub fn token_key(&self, token: &[u8; 32], now: u64) -> Option<PublicKey> {
        self.tokens.lock().get(token, now).map(|(key, _)| *key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pigeonhole_proto::keys::SecretKey;
    use pigeonhole_proto::request::Session;

    fn message(challenge: [u8; 32]) -> Message {
        let key = SecretKey::from_bytes(&[1; 32]).expect("valid");
        Message {
            from: key.public_key(),
            to: key.public_key(),
            timestamp: 0,
            request: Request::Session(Session { challenge }),
        }
    }

    #[test]
    fn a_challenge_answers_once_and_expires() {
        let sessions = Sessions::default();
        let (challenge, expires) = sessions.challenge(1000).expect("issued");
        assert_eq!(expires, 1000 + CHALLENGE_TTL_MS);
        assert!(sessions.answer(&message(challenge), 2000).is_ok());
        assert!(sessions.answer(&message(challenge), 2000).is_err(), "used twice");
        let (late, _) = sessions.challenge(1000).expect("issued");
        assert!(sessions.answer(&message(late), 1000 + CHALLENGE_TTL_MS).is_err(), "expired");
        assert!(sessions.answer(&message([9; 32]), 1000).is_err(), "never issued");
    }

    #[test]
    fn tokens_are_bound_and_expire() {
        let sessions = Sessions::default();
        let key = SecretKey::from_bytes(&[2; 32]).expect("valid").public_key();
        let (token, _) = sessions.issue_token(key, 0).expect("issued");
        assert_eq!(sessions.token_key(&token, 10), Some(key));
        assert_eq!(sessions.token_key(&token, TOKEN_TTL_MS), None);
        assert_eq!(sessions.token_key(&[0; 32], 10), None);
    }

    #[test]
    fn capacity_is_enforced() {
        let mut table: Expiring<u32, ()> = Expiring::new(2);
        table.insert(1, (), 10, 0).expect("room");
        table.insert(2, (), 10, 0).expect("room");
        assert!(table.insert(3, (), 10, 0).is_err());
        table.insert(3, (), 20, 10).expect("the first two expired");
    }
}
