use std::path::PathBuf;

/// Everything the publisher reports. Each variant names the input that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named path failed.
    // Not a `source`: its text is already in the message (anyhow's `{:#}` printed it twice).
    #[error("{path}: {error}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// Another process holds the store's lock.
    #[error("{store} is locked by pid {pid} (another depotfs publisher is running)")]
    Locked {
        /// The store.
        store: PathBuf,
        /// The holder's pid (from /proc/locks, else as it wrote it).
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
    /// The catalog database is damaged (redb's integrity check failed, or redb panicked on
    /// it). The published store is not: `depotfs rebuild-catalog` makes a new catalog from it.
    #[error(
        "{}: the catalog is damaged ({what}); the published store is intact: rebuild the catalog from it with `depotfs rebuild-catalog {}` (see docs/reliability.md)",
        store.join("catalog.redb").display(),
        store.display()
    )]
    CatalogDamaged {
        /// The store.
        store: PathBuf,
        /// What redb reported.
        what: String,
    },
    /// A revision was committed to the catalog but its manifest could not be written.
    #[error(
        "revision {rev} is committed in the catalog of {} but its manifest could not be written ({source}); it is not served yet: the next depotfs command that opens this store (e.g. `depotfs publish {}`) writes the manifest and publishes it",
        store.display(),
        store.display()
    )]
    ManifestPending {
        /// The store.
        store: PathBuf,
        /// The committed revision.
        rev: u64,
        /// Why the manifest write failed.
        source: Box<Error>,
    },
    /// A request to the store's bucket failed (after the client's retries).
    #[error("{url}: {message}")]
    Bucket {
        /// `s3://BUCKET/PREFIX/…` of the object concerned.
        url: String,
        /// What went wrong.
        message: String,
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
        move |error| Error::Io { path, error }
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
