//! The one error type of the engine crate.

use usage_sync_core::CoreError;
use usage_sync_store::StoreError;

/// Why an engine operation failed. The HTTP layer maps each variant to a
/// status and a stable error code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself was refused by the core (unknown kind, unknown
    /// request id, already refunded, overflow, ...).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The store failed while the operation needed it (loading a user who
    /// is not in memory, an admin change, a manual sync).
    ///
    /// Not marked as the error's source: the message already holds the
    /// store's, and an error chain would print it twice.
    #[error("store unavailable: {0}")]
    Store(StoreError),
    /// The engine cannot answer right now (starting, stopping, sync
    /// disabled).
    #[error("{0}")]
    Unavailable(String),
    /// Invalid admin input (unknown plan, bad limits).
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

impl Error {
    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store(e) => e.is_transient(),
            Error::Unavailable(_) => true,
            Error::Core(_) | Error::Invalid(_) => false,
        }
    }
}
