//! # depotfs-catalog: the published format
//!
//! Everything a publisher writes and a client reads is defined here, and only here:
//!
//! - [`ObjectId`] — the blake3 hash of an object's *plaintext*, in a mode of its kind (one id,
//!   one object: [`ObjectId::of_kind`]); objects live at
//!   `objects/ab/cdef…` ([`ObjectId::store_path`]).
//! - [`object`] — the on-the-wire encoding of one object: a 16-byte header that records the
//!   object kind, the codec (zstd or raw) and the plaintext length, then the payload.
//!   [`object::decode`] is the one place where fetched bytes are decompressed (bounded) and
//!   checked against their name; it returns [`object::Verified`] so unverified bytes cannot be
//!   used by accident.
//! - [`chunking`] — the content-defined chunking parameters (FastCDC 2020, `fastcdc =5.0.0`:
//!   cut points are part of the format) and the [`ChunkList`] object of a large file.
//! - [`dir`] — directory entries and the directory tree: a directory is a content-defined
//!   B-tree ("prolly tree") of [`dir::DirNode`] objects, so a 118,594-entry directory is a
//!   few hundred small pieces, a change rewrites one leaf and its path to the top, and a
//!   client can look up one name or stream a listing piece by piece.
//! - [`graph`] — the object graph: the children of a verified object (kind and size bound of
//!   each reference), for every walk: replicate, gc, verify, the client's prefetch.
//! - [`manifest`] — the signed `public/manifest`: repository name, revision, root, times, TTL.
//!
//! - [`object_file`] — writing a file atomically, the one way depotfs does it: an object file
//!   in a store or cache directory, whole or not at all (`O_TMPFILE` + link, direct I/O for
//!   large ones), and a file replaced through a temporary name and a rename (manifests, keys,
//!   records).
//!
//! Apart from [`object_file`], the crate does no I/O: it encodes, decodes and verifies.
//! Publisher and client supply objects through the [`dir::NodeSource`] trait. See `docs/format.md` for the decisions and
//! the measurements behind them.
//!
//! Crate choices: `postcard` for compact, deterministic serde encoding of objects (bincode is
//! unmaintained); `ed25519-dalek` 3 for signatures; `zstd` for compression; `blake3` for names; `rustix` for `O_TMPFILE`, `linkat` and
//! direct I/O without `unsafe`.
#![forbid(unsafe_code)]

pub mod chunking;
pub mod dir;
mod error;
pub mod graph;
mod id;
pub mod manifest;
pub mod object;
pub mod object_file;
#[cfg(test)]
mod test_data;

pub use chunking::{ChunkList, ChunkRef};
pub use dir::{DirNode, Entry, EntryKind, FileContent};
pub use error::{Error, ManifestError, Refusal};
pub use id::ObjectId;
pub use manifest::{Manifest, PublicKey, SecretKey};
pub use object::{ObjectKind, Verified};

/// The format version written into every manifest and every publisher's catalog. A client
/// refuses manifests of any other format; a publisher refuses to open a store of another
/// format. 2: objects are named by kind ([`ObjectId::of_kind`]); 1 named every kind by plain
/// blake3, so a file equal to a metadata object's bytes shared its id (`docs/format.md`).
pub const FORMAT_VERSION: u32 = 2;
