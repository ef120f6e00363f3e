//! The one error type of the store crate.

/// A storage failure. [`StoreError::is_transient`] tells the sync engine
/// whether retrying the same batch can succeed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open the database at {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid DATABASE_URL '{0}'")]
    InvalidUrl(String),
    /// Data in the store that this version cannot read.
    #[error("corrupt data in the store: {0}")]
    Corrupt(String),
    /// A failure injected by [`crate::FaultyStore`].
    #[error("injected fault: {0}")]
    Injected(&'static str),
    #[error("store task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// True when the same operation may succeed later (busy or locked
    /// database, I/O trouble, injected outage). Permanent errors (corrupt
    /// data, constraint violations) need an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite(e) => match e.sqlite_error_code() {
                Some(code) => matches!(
                    code,
                    rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                        | rusqlite::ErrorCode::SystemIoFailure
                        | rusqlite::ErrorCode::DiskFull
                        | rusqlite::ErrorCode::CannotOpen
                        | rusqlite::ErrorCode::ReadOnly
                        | rusqlite::ErrorCode::OutOfMemory
                ),
                None => false,
            },
            StoreError::Open { .. } | StoreError::Injected(_) | StoreError::Task(_) => true,
            StoreError::InvalidUrl(_) | StoreError::Corrupt(_) => false,
        }
    }
}
