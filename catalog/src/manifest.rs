//! The signed manifest (`public/manifest`) and the repository keys.
//!
//! The manifest is a few lines of text, so an operator can `curl` it:
//!
//! ```text
//! depotfs-manifest 1
//! name singularity.example.org
//! revision 42
//! root 3f9c…(64 hex)
//! root-mtime-ns 1769558400000000000
//! root-entries 2
//! published-ns 1769558400000000000
//! ttl 240
//! signature 9a1b…(128 hex)
//! ```
//!
//! The signature is ed25519 over every byte before the `signature` line. A client accepts a
//! manifest only if the signature holds under its configured key, the name is the
//! repository it mounted and the format is one it knows ([`Manifest::parse_verified`]);
//! that the revision only grows is the caller's check, since only the caller knows the last
//! revision it accepted.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::{Error, FORMAT_VERSION, ManifestError, ObjectId};

const MAGIC: &str = "depotfs-manifest";

/// The longest manifest accepted: one is ~450 bytes of text. Clients cut a longer answer
/// while it arrives, and [`Manifest::parse_verified`] refuses it, so a mirror cannot be made
/// to keep (and serve) one its clients would refuse.
pub const MAX_LEN: usize = 64 << 10;
const PUB_PREFIX: &str = "depotfs-ed25519-public ";
const SECRET_PREFIX: &str = "depotfs-ed25519-secret ";

/// The content of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Format version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Repository name.
    pub name: String,
    /// Revision number; grows with every publish.
    pub revision: u64,
    /// Top node of the root directory's tree.
    pub root: ObjectId,
    /// The root directory's mtime.
    pub root_mtime_ns: i64,
    /// Entries in the root directory.
    pub root_entries: u64,
    /// When this revision was published.
    pub published_ns: i64,
    /// Seconds a client may use this manifest before checking for a newer one.
    pub ttl: u64,
}

/// A repository's public key, as stored in `public/repo.pub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

/// A repository's signing key (kept outside `public/`, mode 0600).
#[derive(Debug)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// `body` (manifest lines, each ending in a newline) followed by its signature line. The
    /// publisher signs only bodies [`Manifest::sign`] made; tests and the fuzzer sign any.
    pub fn sign_body(&self, body: &str) -> String {
        let sig = self.0.sign(body.as_bytes());
        format!("{body}signature {}\n", hex::encode(sig.to_bytes()))
    }

    /// A key from 32 secret random bytes.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(&seed))
    }
    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
    /// The key file text.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", hex::encode(self.0.to_bytes()))
    }
    /// Parse a key file.
    pub fn from_text(text: &str) -> Result<Self, Error> {
        let h = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| Error::Key("not a depotfs secret key file".into()))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(h, &mut seed)
            .map_err(|_| Error::Key("bad hex in secret key".into()))?;
        Ok(Self::from_seed(seed))
    }
}

impl PublicKey {
    /// The key file text.
    pub fn to_text(&self) -> String {
        format!("{PUB_PREFIX}{}\n", hex::encode(self.0.to_bytes()))
    }
    /// Parse a key file (`depotfs-ed25519-public <64 hex>`).
    pub fn from_text(text: &str) -> Result<Self, Error> {
        let h = text
            .trim()
            .strip_prefix(PUB_PREFIX)
            .ok_or_else(|| Error::Key("not a depotfs public key file".into()))?;
        let mut b = [0u8; 32];
        hex::decode_to_slice(h, &mut b).map_err(|_| Error::Key("bad hex in public key".into()))?;
        VerifyingKey::from_bytes(&b)
            .map(PublicKey)
            .map_err(|e| Error::Key(format!("invalid public key: {e}")))
    }
}

impl Manifest {
    fn body(&self) -> String {
        format!(
            "{MAGIC} {}\nname {}\nrevision {}\nroot {}\nroot-mtime-ns {}\nroot-entries {}\npublished-ns {}\nttl {}\n",
            self.format,
            self.name,
            self.revision,
            self.root,
            self.root_mtime_ns,
            self.root_entries,
            self.published_ns,
            self.ttl
        )
    }

    /// The signed manifest text.
    pub fn sign(&self, key: &SecretKey) -> String {
        key.sign_body(&self.body())
    }

    /// Parse a manifest and check its signature, its name (when `expect_name` is given) and
    /// its format version. Errors say which of these failed.
    pub fn parse_verified(
        bytes: &[u8],
        key: &PublicKey,
        expect_name: Option<&str>,
    ) -> Result<Manifest, Error> {
        use ManifestError as M;
        if bytes.len() > MAX_LEN {
            return Err(Error::Manifest(M::Malformed(format!(
                "{} bytes, more than a manifest may have ({MAX_LEN})",
                bytes.len()
            ))));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Error::Manifest(M::Malformed("not UTF-8 text".into())))?;
        let at = text
            .find("\nsignature ")
            .ok_or(Error::Manifest(M::NoSignature))?;
        let (body, sig_line) = text.split_at(at + 1);
        // Exactly as signed: the hex digits and the newline, nothing after them.
        let sig_hex = sig_line
            .strip_prefix("signature ")
            .map(|s| s.strip_suffix('\n').unwrap_or(s))
            .ok_or(Error::Manifest(M::NoSignature))?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(sig_hex, &mut sig).map_err(|_| Error::Manifest(M::SignatureHex))?;
        key.0
            .verify_strict(body.as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| Error::Manifest(M::BadSignature))?;
        let m = Self::parse_body(body)?;
        if m.format > FORMAT_VERSION {
            return Err(Error::Manifest(M::NewerFormat(m.format)));
        }
        if m.format < FORMAT_VERSION {
            return Err(Error::Manifest(M::OlderFormat(m.format)));
        }
        if let Some(n) = expect_name
            && n != m.name
        {
            return Err(Error::Manifest(M::OtherRepository {
                found: m.name,
                expected: n.to_string(),
            }));
        }
        Ok(m)
    }

    fn parse_body(body: &str) -> Result<Manifest, Error> {
        let bad = |s: String| Error::Manifest(ManifestError::Malformed(s));
        let mut lines = body.lines();
        let first = lines.next().unwrap_or_default();
        let format = first
            .strip_prefix(MAGIC)
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| bad("not a depotfs manifest".into()))?;
        let mut fields = std::collections::HashMap::new();
        for l in lines {
            let (k, v) = l
                .split_once(' ')
                .ok_or_else(|| bad(format!("bad line {l:?}")))?;
            fields.insert(k, v);
        }
        let get = |k: &str| {
            fields
                .get(k)
                .copied()
                .ok_or_else(|| bad(format!("missing {k}")))
        };
        let num = |k: &str| -> Result<i64, Error> {
            get(k)?
                .parse()
                .map_err(|_| bad(format!("{k} is not a number")))
        };
        let unsigned = |k: &str| -> Result<u64, Error> {
            get(k)?
                .parse()
                .map_err(|_| bad(format!("{k} is not a number")))
        };
        Ok(Manifest {
            format,
            name: get("name")?.to_string(),
            revision: unsigned("revision")?,
            root: get("root")?.parse()?,
            root_mtime_ns: num("root-mtime-ns")?,
            root_entries: unsigned("root-entries")?,
            published_ns: num("published-ns")?,
            ttl: unsigned("ttl")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            name: "test.repo".into(),
            revision: 7,
            root: ObjectId::of(b"root"),
            root_mtime_ns: 1_700_000_000_123_456_789,
            root_entries: 3,
            published_ns: 1_700_000_000_123_456_789,
            ttl: 240,
        }
    }

    #[test]
    fn other_formats_are_refused() {
        let k = SecretKey::from_seed([7; 32]);
        let m = sample();
        for (format, says) in [(FORMAT_VERSION - 1, "older"), (FORMAT_VERSION + 1, "newer")] {
            let text = Manifest {
                format,
                ..m.clone()
            }
            .sign(&k);
            let e = Manifest::parse_verified(text.as_bytes(), &k.public(), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("format {format} is {says}")), "{e}");
        }
    }

    /// Each refusal is typed by what failed, not by the words of its message: a malformed
    /// line that mentions "format" or "signature" is malformed (matching the message's text
    /// counted it under "format").
    #[test]
    fn refusals_are_typed_by_what_failed() {
        use crate::Refusal;
        let k = SecretKey::from_seed([7; 32]);
        let other = SecretKey::from_seed([8; 32]);
        let refusal = |text: &str, name: Option<&str>| match Manifest::parse_verified(
            text.as_bytes(),
            &k.public(),
            name,
        )
        .unwrap_err()
        {
            Error::Manifest(m) => (m.refusal(), format!("manifest: {m}")),
            e => panic!("not a manifest error: {e}"),
        };
        let good = sample().sign(&k);
        let body = good.split("signature ").next().unwrap();
        let newer = Manifest {
            format: FORMAT_VERSION + 1,
            ..sample()
        };
        for (text, name, want, says) in [
            (
                sample().sign(&other),
                None,
                Refusal::Signature,
                "signature does not verify",
            ),
            (
                body.to_string(),
                None,
                Refusal::Signature,
                "no signature line",
            ),
            (
                format!("{body}signature zz\n"),
                None,
                Refusal::Signature,
                "128 hex digits",
            ),
            (
                format!("{good}\n"),
                None,
                Refusal::Signature,
                "128 hex digits",
            ),
            (
                format!("{}  \n", good.trim_end()),
                None,
                Refusal::Signature,
                "128 hex digits",
            ),
            (
                format!("{good}{}", " ".repeat(MAX_LEN)),
                None,
                Refusal::Malformed,
                "more than a manifest may have",
            ),
            (
                good.clone(),
                Some("other"),
                Refusal::Name,
                "is for repository",
            ),
            (newer.sign(&k), None, Refusal::Format, "is newer than"),
            (
                k.sign_body(&format!("{body}format-signature\n")),
                None,
                Refusal::Malformed,
                "bad line \"format-signature\"",
            ),
        ] {
            let (got, message) = refusal(&text, name);
            assert_eq!(got, want, "{message}");
            assert!(
                message.starts_with("manifest: ") && message.contains(says),
                "{message}"
            );
        }
        match Manifest::parse_verified(&[0xff; 3], &k.public(), None) {
            Err(Error::Manifest(m)) => assert_eq!(m.refusal(), Refusal::Malformed),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sign_and_verify() {
        let k = SecretKey::from_seed([7; 32]);
        let text = sample().sign(&k);
        let pubk = PublicKey::from_text(&k.public().to_text()).unwrap();
        let m = Manifest::parse_verified(text.as_bytes(), &pubk, Some("test.repo")).unwrap();
        assert_eq!(m, sample());
        let k2 = SecretKey::from_text(&k.to_text()).unwrap();
        assert_eq!(k2.public(), k.public());
    }

    #[test]
    fn tampering_wrong_key_wrong_name_refused() {
        let k = SecretKey::from_seed([7; 32]);
        let text = sample().sign(&k);
        let tampered = text.replace("revision 7", "revision 8");
        assert!(Manifest::parse_verified(tampered.as_bytes(), &k.public(), None).is_err());
        let other = SecretKey::from_seed([8; 32]);
        assert!(Manifest::parse_verified(text.as_bytes(), &other.public(), None).is_err());
        let e = Manifest::parse_verified(text.as_bytes(), &k.public(), Some("other")).unwrap_err();
        assert!(e.to_string().contains("expected \"other\""), "{e}");
        assert!(Manifest::parse_verified(b"garbage", &k.public(), None).is_err());
    }
}
