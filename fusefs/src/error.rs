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
}

/// Why an operation run without waiting ([`crate::fs::Wait::No`]) gave no answer: it
/// needs a download, or it failed. `Result<T, Stop>` is its typed result: `Ok` the answer,
/// `Err(Stop::Blocking)` "run me again where I may wait", `Err(Stop::Failed)` the error.
#[derive(Debug, Clone)]
pub enum Stop {
    /// The answer needs an object that is not in memory: the FUSE adapter runs the
    /// operation again on the blocking pool with [`crate::fs::Wait::Yes`]. Never reaches
    /// the kernel.
    Blocking,
    /// The operation failed.
    Failed(Error),
}

impl Stop {
    /// The error of an operation that was allowed to wait ([`crate::fs::Wait::Yes`]), which
    /// never stops for [`Stop::Blocking`].
    pub fn into_error(self) -> Error {
        match self {
            Stop::Failed(e) => e,
            Stop::Blocking => Error::Io("internal: an operation allowed to wait did not".into()),
        }
    }
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

impl From<depotfs_catalog::Error> for Stop {
    fn from(e: depotfs_catalog::Error) -> Self {
        match e {
            depotfs_catalog::Error::Pending(_) => Stop::Blocking,
            other => Stop::Failed(other.into()),
        }
    }
}

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
            depotfs_catalog::Error::Manifest(m) => Error::Manifest(m.to_string()),
            depotfs_catalog::Error::Key(m) => Error::Manifest(format!("key: {m}")),
            e @ depotfs_catalog::Error::Pending(id) => Error::Fetch {
                what: id.to_string(),
                message: e.to_string(),
            },
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

/// The result of an operation that may have to wait for a download (see [`Stop`]).
pub type Fast<T> = std::result::Result<T, Stop>;

#[cfg(test)]
mod tests {
    use super::*;
    use depotfs_catalog::ObjectId;

    /// "Not at hand" from a directory reader is the typed [`Stop::Blocking`], never an
    /// errno; every other catalog error is a failure with its errno.
    #[test]
    fn pending_objects_stop_for_the_blocking_pool() {
        let id = ObjectId::of(b"node");
        assert!(matches!(
            Stop::from(depotfs_catalog::Error::Pending(id)),
            Stop::Blocking
        ));
        let fetch = depotfs_catalog::Error::Fetch {
            id,
            message: "connection refused".into(),
        };
        match Stop::from(fetch) {
            Stop::Failed(e) => assert_eq!(e.to_errno(), fuser::Errno::EIO),
            Stop::Blocking => panic!("a failed fetch is not a miss"),
        }
        assert!(matches!(
            Stop::from(Error::NotFound).into_error(),
            Error::NotFound
        ));
    }
}
