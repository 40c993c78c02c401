//! The client's one error type, and the one place errors become errno values.

/// Everything that can go wrong in the client. `Clone` because one download's outcome is
/// shared by every request that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No such name.
    #[error("no such file or directory")]
    NotFound,
    /// A path component is not a directory.
    #[error("not a directory")]
    NotDir,
    /// A directory where a file was needed.
    #[error("is a directory")]
    IsDir,
    /// Not a symbolic link.
    #[error("not a symbolic link")]
    NotSymlink,
    /// Any attempt to change the file system.
    #[error("read-only file system")]
    ReadOnly,
    /// No such extended attribute.
    #[error("no such attribute")]
    NoAttr,
    /// An extended-attribute namespace the file system does not have (`security.`,
    /// `system.`, `trusted.`): ACLs and SELinux labels.
    #[error("operation not supported")]
    NotSupported,
    /// The caller's buffer is too small.
    #[error("buffer too small")]
    Range,
    /// Unknown inode or file handle.
    #[error("stale handle")]
    Stale,
    /// The server (or local store) could not deliver an object.
    #[error("fetching {what}: {message}")]
    Fetch {
        /// The object or file.
        what: String,
        /// Why.
        message: String,
    },
    /// The server did not answer within the timeout.
    #[error("fetching {what}: no answer within {secs} s")]
    Timeout {
        /// The object or file.
        what: String,
        /// The timeout.
        secs: u64,
    },
    /// Every route failed a moment ago and no probe has found a server since: an object
    /// that is not cached cannot be had now.
    #[error("fetching {0}: offline (all servers unreachable)")]
    Offline(String),
    /// An object failed verification even after a fresh download.
    #[error("corrupt object: {0}")]
    Corrupt(String),
    /// The manifest is unusable: bad signature, wrong name, rolled back, malformed.
    #[error("manifest: {0}")]
    Manifest(String),
    /// Local I/O (cache directory, key file).
    #[error("{0}")]
    Io(String),
    /// The answer needs a download and the caller may not wait (see `fs::Wait`). Never
    /// reaches the kernel: the operation is retried on the blocking pool.
    #[error("needs a download")]
    WouldBlock,
}

/// The message by which a [`depotfs_catalog::dir::NodeSource`] reports [`Error::WouldBlock`]
/// through the catalog's error type.
pub(crate) const WOULD_BLOCK: &str = "depotfs: not in memory";

impl Error {
    /// The errno a FUSE request answers with.
    pub fn to_errno(&self) -> fuser::Errno {
        use fuser::Errno;
        match self {
            Error::NotFound => Errno::ENOENT,
            Error::NotDir => Errno::ENOTDIR,
            Error::IsDir => Errno::EISDIR,
            Error::NotSymlink => Errno::EINVAL,
            Error::ReadOnly => Errno::EROFS,
            Error::NoAttr => Errno::ENODATA,
            Error::NotSupported => Errno::EOPNOTSUPP,
            Error::Range => Errno::ERANGE,
            Error::Stale => Errno::ESTALE,
            Error::WouldBlock => Errno::EAGAIN,
            Error::Fetch { .. }
            | Error::Timeout { .. }
            | Error::Offline(_)
            | Error::Corrupt(_)
            | Error::Manifest(_)
            | Error::Io(_) => Errno::EIO,
        }
    }

    pub(crate) fn io(context: impl std::fmt::Display, e: std::io::Error) -> Self {
        Error::Io(format!("{context}: {e}"))
    }
}

impl From<depotfs_catalog::Error> for Error {
    fn from(e: depotfs_catalog::Error) -> Self {
        match e {
            depotfs_catalog::Error::Manifest(m) => Error::Manifest(m),
            depotfs_catalog::Error::Key(m) => Error::Manifest(format!("key: {m}")),
            depotfs_catalog::Error::Fetch { message, .. } if message == WOULD_BLOCK => {
                Error::WouldBlock
            }
            depotfs_catalog::Error::Fetch { id, message } => Error::Fetch {
                what: id.to_string(),
                message,
            },
            other => Error::Corrupt(other.to_string()),
        }
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;
