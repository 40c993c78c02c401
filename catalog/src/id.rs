use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name of an object: the blake3 hash of its plaintext.
///
/// Naming by plaintext (rather than by the compressed bytes) keeps the name independent of
/// the codec and lets a publisher skip compressing data it already stores; clients verify by
/// decoding (bounded by the length in the header) and hashing, see [`crate::object::decode`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The id of `plaintext`.
    pub fn of(plaintext: &[u8]) -> Self {
        ObjectId(*blake3::hash(plaintext).as_bytes())
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
}
