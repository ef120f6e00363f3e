//! The one error type of the store crate.

/// A storage failure. [`StoreError::is_transient`] tells the sync engine
/// whether retrying the same batch can succeed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[cfg(feature = "sqlite")]
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[cfg(feature = "postgres")]
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool in time.
    #[error("postgres connection pool: {0}")]
    Pool(String),
    /// The database server could not be reached (refused, timed out,
    /// dropped): may heal, retried.
    #[error("cannot reach the database at {0}")]
    Unreachable(String),
    /// The server refused the user or password: waiting will not help.
    #[error("the database refused the login at {0}")]
    Auth(String),
    /// The database named in the URL does not exist.
    #[error("the database does not exist at {0}")]
    MissingDatabase(String),
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
    /// The write-ahead log lost or garbled records it had made durable.
    #[error("the write-ahead log is damaged: {0}")]
    LogDamage(String),
    /// A failure injected by `FaultyStore` (feature `test-util`).
    #[error("injected fault: {0}")]
    Injected(&'static str),
    #[error("store task failed: {0}")]
    Task(String),
    /// Another process holds the log directory's lock: two writers on one
    /// log would replay and delete each other's live segments.
    #[error(
        "{} is in use{} by another usage-sync process; stop it, or give this \
         instance a data directory of its own (USAGE_SYNC_DATA_DIR)",
        path,
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse { path: String, pid: Option<u32> },
}

impl StoreError {
    /// True when the same operation may succeed later (busy or locked
    /// database, I/O trouble, injected outage). Permanent errors (corrupt
    /// data, constraint violations) need an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            #[cfg(feature = "sqlite")]
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
            #[cfg(feature = "postgres")]
            StoreError::Postgres(e) => match e.code() {
                // No SQLSTATE: the connection broke or could not be made.
                None => true,
                Some(code) => {
                    use tokio_postgres::error::SqlState;
                    let c = code.code();
                    // Class 08: connection exceptions; 53: insufficient
                    // resources; 57: operator intervention (timeouts,
                    // shutdown); plus serialization failures, deadlocks
                    // and lock timeouts, which a retry resolves.
                    c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57")
                        || *code == SqlState::T_R_SERIALIZATION_FAILURE
                        || *code == SqlState::T_R_DEADLOCK_DETECTED
                        || *code == SqlState::LOCK_NOT_AVAILABLE
                }
            },
            StoreError::Pool(_) | StoreError::Unreachable(_) => true,
            StoreError::Auth(_) | StoreError::MissingDatabase(_) => false,
            StoreError::Open { .. } | StoreError::Injected(_) | StoreError::Task(_) => true,
            StoreError::InvalidUrl(_)
            | StoreError::Corrupt(_)
            | StoreError::LogDamage(_)
            | StoreError::InUse { .. } => false,
        }
    }
}
