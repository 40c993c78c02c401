use crate::ObjectId;

/// Everything that can be wrong with published data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An object's bytes do not hash to its name.
    #[error("object {id}: content hashes to {actual}, not to its name")]
    HashMismatch {
        /// The name the object was fetched by.
        id: ObjectId,
        /// What its content hashes to.
        actual: ObjectId,
    },
    /// An object's header or payload is malformed.
    #[error("object {id}: {what}")]
    BadObject {
        /// The object's name.
        id: ObjectId,
        /// What is wrong.
        what: String,
    },
    /// A manifest is malformed, wrongly signed, or for another repository.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A key file is malformed.
    #[error("key: {0}")]
    Key(String),
    /// A name or path that the format cannot hold.
    #[error("{0}")]
    Invalid(String),
    /// The [`crate::dir::NodeSource`] could not supply an object.
    #[error("fetching {id}: {message}")]
    Fetch {
        /// The object's name.
        id: ObjectId,
        /// The source's explanation.
        message: String,
    },
}
