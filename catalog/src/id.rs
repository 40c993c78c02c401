use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::object::ObjectKind;

/// The name of an object: the blake3 hash of its plaintext, in a mode that depends on its kind.
///
/// A chunk (file data) is named by plain `blake3(plaintext)` ([`ObjectId::of`]); a chunk list
/// or directory node by blake3 in key-derivation mode with a context string of its own
/// ([`ObjectId::of_kind`]). So one id is one object: a file whose bytes equal an encoded
/// directory node has a different name from that node (format 2; format 1 named every kind by
/// plain blake3, and a store that already held the id skipped the write, see `docs/format.md`).
///
/// Naming by plaintext (rather than by the compressed bytes) keeps the name independent of
/// the codec and lets a publisher skip compressing data it already stores; clients verify by
/// decoding (bounded by the length in the header) and hashing, see [`crate::object::decode`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId(pub [u8; 32]);

/// The blake3 key-derivation context of each metadata kind (format 2). Never change these:
/// they are part of every metadata object's name.
const CHUNK_LIST_CONTEXT: &str = "depotfs 2026-12-06 object name: chunk list";
const DIR_NODE_CONTEXT: &str = "depotfs 2026-12-06 object name: directory node";

impl ObjectId {
    /// The id of a data chunk (a whole small file or one chunk of a large one) holding
    /// `plaintext`. Other kinds are named by [`ObjectId::of_kind`].
    pub fn of(plaintext: &[u8]) -> Self {
        ObjectId(*blake3::hash(plaintext).as_bytes())
    }

    /// The id of an object of `kind` holding `plaintext`: the one function that names objects.
    pub fn of_kind(kind: ObjectKind, plaintext: &[u8]) -> Self {
        let context = match kind {
            ObjectKind::Chunk => return Self::of(plaintext),
            ObjectKind::ChunkList => CHUNK_LIST_CONTEXT,
            ObjectKind::DirNode => DIR_NODE_CONTEXT,
        };
        let mut h = blake3::Hasher::new_derive_key(context);
        h.update(plaintext);
        ObjectId(*h.finalize().as_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The object's path relative to `public/`: `objects/ab/cdef…`.
    pub fn store_path(&self) -> String {
        let h = self.to_hex();
        format!("objects/{}/{}", &h[..2], &h[2..])
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", &self.to_hex()[..16])
    }
}

impl FromStr for ObjectId {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| {
            crate::Error::Invalid(format!("not an object id (64 hex digits): {s:?}"))
        })?;
        Ok(ObjectId(out))
    }
}

impl From<blake3::Hash> for ObjectId {
    fn from(h: blake3::Hash) -> Self {
        ObjectId(*h.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_path() {
        let id = ObjectId::of(b"hello");
        let parsed: ObjectId = id.to_hex().parse().unwrap();
        assert_eq!(id, parsed);
        let p = id.store_path();
        assert!(p.starts_with("objects/ea/"));
        assert_eq!(p.len(), "objects/".len() + 2 + 1 + 62);
        assert!("xyz".parse::<ObjectId>().is_err());
    }

    /// One id is one object: the same plaintext gets a different name as each kind (the
    /// empty directory node and a file of the same bytes were one id in format 1), and a
    /// chunk's name is plain blake3, as before.
    #[test]
    fn kinds_are_named_apart() {
        for data in [&b""[..], &[0, 0][..], b"hello"] {
            let ids = [
                ObjectKind::Chunk,
                ObjectKind::ChunkList,
                ObjectKind::DirNode,
            ]
            .map(|k| ObjectId::of_kind(k, data));
            assert_ne!(ids[0], ids[1]);
            assert_ne!(ids[0], ids[2]);
            assert_ne!(ids[1], ids[2]);
            assert_eq!(ids[0], ObjectId::of(data));
            assert_eq!(ids[0].0, *blake3::hash(data).as_bytes());
        }
        // Golden: these names are the format.
        assert_eq!(
            &ObjectId::of_kind(ObjectKind::DirNode, b"").to_hex()[..16],
            "f31cfe26cf98c05b"
        );
    }
}
