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
    Manifest(ManifestError),
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
    /// A [`crate::dir::NodeSource`] asked not to wait does not have the object at hand: the
    /// caller may ask again from a thread that can wait for its download.
    #[error("object {0} is not at hand and the source may not wait for it")]
    Pending(ObjectId),
}

/// What is wrong with a manifest ([`Error::Manifest`]); [`ManifestError::refusal`] says
/// under which reason a client counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not a manifest, or a field missing or unreadable.
    #[error("{0}")]
    Malformed(String),
    /// The signature line is missing.
    #[error("no signature line")]
    NoSignature,
    /// The signature line is not a signature.
    #[error("signature is not 128 hex digits")]
    SignatureHex,
    /// The signature does not verify with the key.
    #[error("signature does not verify with the repository key")]
    BadSignature,
    /// A format version newer than this build reads.
    #[error("format {0} is newer than this client understands ({FORMAT_VERSION})", FORMAT_VERSION = crate::FORMAT_VERSION)]
    NewerFormat(u32),
    /// A format version older than this build reads.
    #[error(
        "format {0} is older than this client reads ({FORMAT_VERSION}: objects named by kind); \
         the publisher must re-publish the repository with this depotfs (docs/format.md, \
         \"Format versions\")",
        FORMAT_VERSION = crate::FORMAT_VERSION
    )]
    OlderFormat(u32),
    /// Signed for another repository.
    #[error("is for repository {found:?}, expected {expected:?}")]
    OtherRepository {
        /// The name in the manifest.
        found: String,
        /// The name expected.
        expected: String,
    },
}

impl ManifestError {
    /// The reason a refused manifest of this kind is counted under.
    pub fn refusal(&self) -> Refusal {
        match self {
            ManifestError::Malformed(_) => Refusal::Malformed,
            ManifestError::NoSignature
            | ManifestError::SignatureHex
            | ManifestError::BadSignature => Refusal::Signature,
            ManifestError::NewerFormat(_) | ManifestError::OlderFormat(_) => Refusal::Format,
            ManifestError::OtherRepository { .. } => Refusal::Name,
        }
    }
}

/// Why a manifest offered by a server is not taken: the reasons a client counts refusals
/// under (`depotfs_manifest_refused_total{reason}`). Ordered by name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Refusal {
    /// A format version this client does not read.
    Format,
    /// Not a well-formed manifest.
    Malformed,
    /// Signed for another repository.
    Name,
    /// A revision older than one already accepted (a replay or rollback).
    Older,
    /// No signature, or one that does not verify with the key (another repository's key).
    Signature,
}

impl Refusal {
    /// The reason's name, as counted and labelled.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Format => "format",
            Refusal::Malformed => "malformed",
            Refusal::Name => "name",
            Refusal::Older => "older",
            Refusal::Signature => "signature",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
