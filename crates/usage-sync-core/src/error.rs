//! The one error type of the core crate.

/// Everything the core can refuse. Parse errors carry the offending value's
/// description (never the value itself when it may be huge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("user_id must be 1 to 128 bytes without control or format characters ({0})")]
    InvalidUserId(&'static str),
    #[error("request_id must be 1 to 128 bytes without control or format characters ({0})")]
    InvalidRequestId(&'static str),
    #[error("amount must be an integer from 1 to 1000000000 (got {0})")]
    InvalidAmount(i128),
    #[error("unknown kind '{0}'")]
    UnknownKind(String),
    #[error("unknown plan '{0}'")]
    UnknownPlan(String),
    #[error("invalid period '{0}' (expected monthly, daily or none)")]
    InvalidPeriod(String),
    #[error("invalid timestamp '{0}'")]
    InvalidTimestamp(String),
    #[error(
        "limit for kind '{0}' must be null (unlimited) or an integer from 0 to 9223372036854775807"
    )]
    InvalidLimit(String),
    /// The user is not in memory; the caller must load it from the store
    /// and call `warm` before retrying. Never seen by API clients.
    #[error("user is not resident in memory")]
    NotResident,
    #[error("no consume with this request_id is known")]
    UnknownRequest,
    #[error("this request_id has already been refunded")]
    AlreadyRefunded,
    /// A request id reused for another request: another user, kind or
    /// amount than its first use. Nothing was counted; the message says
    /// what differs.
    #[error("{0}")]
    RequestIdConflict(String),
    /// The table of remembered request ids is full: a consume with a new
    /// id counts nothing until older ids expire.
    #[error(
        "the service remembers as many request ids as it may (USAGE_SYNC_MAX_REQUEST_IDS) and \
         takes no new one until older ones leave the dedup window; nothing was counted: retry later"
    )]
    RequestIdsFull,
    #[error("the counter would overflow")]
    Overflow,
}
