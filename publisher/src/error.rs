use std::path::PathBuf;

/// Everything the publisher reports. Each variant names the input that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named path failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another process holds the store's lock.
    #[error("{store} is locked by pid {pid} (another depotfs publisher is running)")]
    Locked {
        /// The store.
        store: PathBuf,
        /// The holder's pid as it wrote it, or "unknown".
        pid: String,
    },
    /// The store is not a depotfs store, or is damaged.
    #[error("{path}: {what}")]
    BadStore {
        /// The path involved.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A user input (path, name, revision) is not acceptable.
    #[error("{0}")]
    Input(String),
    /// Changes staged by an interrupted run wait for the operator's choice (the message names
    /// them and the two commands).
    #[error("{0}")]
    Interrupted(String),
    /// The catalog database failed.
    #[error("catalog database: {0}")]
    Db(String),
    /// Published data is malformed.
    #[error(transparent)]
    Format(#[from] depotfs_catalog::Error),
}

impl Error {
    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Db(e.to_string())
            }
        }
    )*};
}
db_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The publisher's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
