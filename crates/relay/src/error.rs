//! Errors a relay answers with: a stable machine-readable code, an HTTP status and a message
//! a person can act on. 5xx answers never carry internal details.

use std::fmt;

/// Stable error codes, sent as `{"error": ..., "code": ...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The body is not valid JSON of the expected shape, or a field is malformed.
    BadRequest,
    /// The signature does not verify over the request.
    BadSignature,
    /// The request is addressed to another relay.
    WrongRelay,
    /// The timestamp is outside the accepted window.
    StaleRequest,
    /// The same signed request was already accepted.
    Replay,
    /// The URL path does not match the signed request.
    PathMismatch,
    /// This request type is not accepted at this endpoint.
    WrongRequestType,
    /// The signer may not do this.
    Forbidden,
    /// The signer has no account on this relay.
    NoAccount,
    /// The account may not write at the moment.
    AccountSuspended,
    /// Registration needs an invite on this relay.
    InviteRequired,
    /// An account quota (bytes stored, records per day) would be exceeded.
    QuotaExceeded,
    /// No such record or endpoint.
    NotFound,
    /// A different record already has this path.
    Conflict,
    /// The body or record is larger than the relay accepts.
    TooLarge,
    /// Too many requests; retry after the indicated time.
    RateLimited,
    /// The relay's storage is full: writes are refused, reads still work.
    StorageFull,
    /// The relay is overloaded or shutting down; retry later.
    Busy,
    /// A drop's postage stamp does not verify for this drop (forged, or made for another drop).
    PostageInvalid,
    /// A drop's postage stamp was already spent.
    PostageSpent,
    /// A drop's postage stamp belongs to an epoch that is over (or has not begun).
    PostageExpired,
    /// The drop's bucket is full until some of its drops expire.
    BucketFull,
    /// Something failed inside the relay.
    Internal,
}

impl ErrorCode {
    /// The code string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::WrongRelay => "wrong_relay",
            ErrorCode::StaleRequest => "stale_request",
            ErrorCode::Replay => "replay",
            ErrorCode::PathMismatch => "path_mismatch",
            ErrorCode::WrongRequestType => "wrong_request_type",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NoAccount => "no_account",
            ErrorCode::AccountSuspended => "account_suspended",
            ErrorCode::InviteRequired => "invite_required",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::Busy => "busy",
            ErrorCode::PostageInvalid => "postage_invalid",
            ErrorCode::PostageSpent => "postage_spent",
            ErrorCode::PostageExpired => "postage_expired",
            ErrorCode::BucketFull => "bucket_full",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status for the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::PathMismatch | ErrorCode::WrongRequestType => 400,
            ErrorCode::BadSignature | ErrorCode::StaleRequest => 401,
            ErrorCode::WrongRelay
            | ErrorCode::Forbidden
            | ErrorCode::NoAccount
            | ErrorCode::AccountSuspended
            | ErrorCode::InviteRequired
            | ErrorCode::QuotaExceeded => 403,
            ErrorCode::PostageInvalid | ErrorCode::PostageExpired => 402,
            ErrorCode::NotFound => 404,
            ErrorCode::Replay | ErrorCode::Conflict | ErrorCode::PostageSpent => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Busy => 503,
            ErrorCode::StorageFull | ErrorCode::BucketFull => 507,
        }
    }
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayError {
    /// The code.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl RelayError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// A 500 whose details are logged, not sent.
    pub fn internal(context: &str, error: &dyn fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        Self::new(ErrorCode::Internal, "internal error; the relay operator has the details in the log")
    }
}

impl fmt::Display for RelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code.as_str())
    }
}

impl std::error::Error for RelayError {}

impl From<pigeonhole_store::StoreError> for RelayError {
    fn from(error: pigeonhole_store::StoreError) -> Self {
        match error {
            pigeonhole_store::StoreError::Full => RelayError::new(
                ErrorCode::StorageFull,
                "the relay's storage is full; try another relay or later",
            ),
            other => RelayError::internal("store operation failed", &other),
        }
    }
}
