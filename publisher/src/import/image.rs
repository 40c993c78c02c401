//! OCI image documents shared by every source: indexes (and Docker manifest lists),
//! manifests (OCI and Docker v2 schema 2), configs; choosing a platform; checking digests.

use std::io::{self, Read};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Media types of an image index.
pub const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
/// Media types of an image manifest.
pub const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Largest manifest, index or config document read (the distribution spec suggests 4 MiB).
pub const DOC_MAX: u64 = 4 << 20;

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Its media type.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:HEX`.
    pub digest: String,
    /// Length in bytes.
    #[serde(default)]
    pub size: u64,
    /// For index entries.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations (`org.opencontainers.image.ref.name` in an OCI layout's index).
    #[serde(default)]
    pub annotations: std::collections::HashMap<String, String>,
}

/// An index entry's platform.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v8`.
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image index, a manifest, or (untyped) either: read the fields present.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    /// Declared media type, if any.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Index entries.
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    /// A manifest's config.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// A manifest's layers, bottom first.
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

/// What a document turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// Pick one of these.
    Index(Vec<Descriptor>),
    /// An image: config and layers.
    Manifest {
        /// The config blob.
        config: Descriptor,
        /// The layers, bottom first.
        layers: Vec<Descriptor>,
    },
}

/// Parse a manifest or index (`what` names it in errors); `content_type` is the HTTP
/// header where there is one.
pub fn parse(bytes: &[u8], content_type: Option<&str>, what: &str) -> Result<Parsed> {
    let doc: Document = serde_json::from_slice(bytes)
        .map_err(|e| Error::Input(format!("{what}: not an image manifest or index: {e}")))?;
    let mt = doc
        .media_type
        .clone()
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    if let Some(m) = doc.manifests
        && (INDEX_TYPES.contains(&mt.as_str()) || doc.layers.is_none())
    {
        // An entry's digest names the manifest fetched next, by digest: it must be one.
        for d in &m {
            check_digest_syntax(&d.digest).map_err(|e| Error::Input(format!("{what}: {e}")))?;
        }
        return Ok(Parsed::Index(m));
    }
    match (doc.config, doc.layers) {
        (Some(config), Some(layers)) => {
            for d in std::iter::once(&config).chain(&layers) {
                check_digest_syntax(&d.digest).map_err(|e| Error::Input(format!("{what}: {e}")))?;
            }
            Ok(Parsed::Manifest { config, layers })
        }
        _ => Err(Error::Input(format!(
            "{what}: media type {mt:?} is neither an image manifest nor an index (Docker schema 1 is not supported)"
        ))),
    }
}

/// Choose the entry of an index for `platform` (`os/arch[/variant]`).
pub fn choose(entries: &[Descriptor], platform: &str, what: &str) -> Result<Descriptor> {
    let mut want = platform.split('/');
    let (os, arch, variant) = (
        want.next().unwrap_or(""),
        want.next().unwrap_or(""),
        want.next(),
    );
    entries
        .iter()
        .find(|d| {
            d.platform.as_ref().is_some_and(|p| {
                p.os == os
                    && p.architecture == arch
                    && (variant.is_none() || p.variant.as_deref() == variant)
            })
        })
        .cloned()
        .ok_or_else(|| {
            let have: Vec<String> = entries
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| {
                    format!(
                        "{}/{}{}",
                        p.os,
                        p.architecture,
                        p.variant
                            .as_deref()
                            .map(|v| format!("/{v}"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            Error::Input(format!(
                "{what}: no image for platform {platform} (the index has: {})",
                have.join(", ")
            ))
        })
}

/// The `rootfs.diff_ids` of an image config.
pub fn diff_ids(config: &[u8], what: &str) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    let c: Config = serde_json::from_slice(config)
        .map_err(|e| Error::Input(format!("{what}: not an image config: {e}")))?;
    Ok(c.rootfs.diff_ids)
}

/// `sha256:` + 64 lowercase hex digits, the only algorithm accepted.
pub fn check_digest_syntax(d: &str) -> std::result::Result<(), String> {
    match d.strip_prefix("sha256:") {
        Some(h)
            if h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(format!("digest {d:?} is not sha256:<64 hex digits>")),
    }
}

/// `sha256:HEX` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Check `bytes` against `digest`.
pub fn verify(bytes: &[u8], digest: &str, what: &str) -> Result<()> {
    let got = sha256(bytes);
    if got != digest {
        return Err(Error::Input(format!(
            "{what}: digest mismatch: expected {digest}, content has {got}; refused"
        )));
    }
    Ok(())
}

/// Read a whole small document (at most [`DOC_MAX`] bytes).
pub fn read_doc(r: impl Read, what: &str) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    r.take(DOC_MAX + 1)
        .read_to_end(&mut v)
        .map_err(|e| Error::Input(format!("{what}: {e}")))?;
    if v.len() as u64 > DOC_MAX {
        return Err(Error::Input(format!("{what}: larger than {DOC_MAX} bytes")));
    }
    Ok(v)
}

/// Read a document a descriptor names: exactly `size` bytes (at most [`DOC_MAX`]).
pub fn read_doc_sized(r: impl Read, size: u64, what: &str) -> Result<Vec<u8>> {
    if size > DOC_MAX {
        return Err(Error::Input(format!(
            "{what}: its descriptor gives {size} bytes, more than the {DOC_MAX} a document may have; refused"
        )));
    }
    read_doc(SizeChecked::new(r, size), what)
}

/// A blob held to the length its descriptor gives: reading fails as soon as one byte more
/// arrives (whatever follows is not read), and at the end if fewer came.
#[derive(Debug)]
pub struct SizeChecked<R> {
    inner: R,
    size: u64,
    got: u64,
    failed: bool,
}

impl<R: Read> SizeChecked<R> {
    /// Hold `inner` to `size` bytes.
    pub fn new(inner: R, size: u64) -> Self {
        SizeChecked {
            inner,
            size,
            got: 0,
            failed: false,
        }
    }

    fn fail(&mut self, msg: String) -> io::Error {
        self.failed = true;
        io::Error::new(io::ErrorKind::InvalidData, msg)
    }
}

impl<R: Read> Read for SizeChecked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "blob refused for its length",
            ));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        // One byte past the size is enough to know it is too long.
        let room = (self.size - self.got).saturating_add(1);
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..n])?;
        self.got += n as u64;
        if self.got > self.size {
            let size = self.size;
            return Err(self.fail(format!(
                "longer than the {size} bytes its descriptor gives; refused"
            )));
        }
        if n == 0 && self.got < self.size {
            let (got, size) = (self.got, self.size);
            return Err(self.fail(format!(
                "ends after {got} bytes, its descriptor gives {size}; refused"
            )));
        }
        Ok(n)
    }
}

/// A reader that hashes (sha256) and counts what passes through it.
#[derive(Debug)]
pub struct Hashing<R> {
    inner: R,
    hash: Sha256,
    /// Bytes read so far.
    pub len: u64,
}

impl<R: Read> Hashing<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }

    /// Read the rest and return `sha256:HEX` of everything.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hash.finalize())),
            self.len,
        ))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that would yield `len` bytes and counts what was asked of it.
    struct Endless {
        len: u64,
        given: u64,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min((self.len - self.given) as usize);
            buf[..n].fill(7);
            self.given += n as u64;
            Ok(n)
        }
    }

    fn read_all(r: &mut impl Read) -> io::Result<u64> {
        io::copy(r, &mut io::sink())
    }

    #[test]
    fn a_longer_blob_is_refused_at_its_size_not_at_its_end() {
        let mut r = SizeChecked::new(
            Endless {
                len: 1 << 40,
                given: 0,
            },
            100_000,
        );
        let e = read_all(&mut r).unwrap_err();
        assert!(
            e.to_string().contains("longer than the 100000 bytes"),
            "{e}"
        );
        assert_eq!(
            r.inner.given, 100_001,
            "read one byte past the size, no more"
        );
        assert!(read_all(&mut r).is_err(), "stays refused");
    }

    #[test]
    fn a_shorter_blob_is_refused_and_an_exact_one_passes() {
        let mut short = SizeChecked::new(Endless { len: 99, given: 0 }, 100);
        let e = read_all(&mut short).unwrap_err();
        assert!(e.to_string().contains("ends after 99 bytes"), "{e}");
        let mut exact = SizeChecked::new(Endless { len: 100, given: 0 }, 100);
        assert_eq!(read_all(&mut exact).unwrap(), 100);
    }

    #[test]
    fn a_document_is_bounded_by_its_descriptor() {
        let doc = br#"{"schemaVersion":2}"#;
        assert_eq!(
            read_doc_sized(&doc[..], doc.len() as u64, "m").unwrap(),
            doc
        );
        let e = read_doc_sized(&doc[..], 5, "m").unwrap_err().to_string();
        assert!(e.contains("m: longer than the 5 bytes"), "{e}");
        let e = read_doc_sized(&doc[..], DOC_MAX + 1, "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the"), "{e}");
        // Without a descriptor the document is still bounded.
        let big = Endless {
            len: 1 << 30,
            given: 0,
        };
        let e = read_doc(big, "m").unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    /// An index entry names the manifest fetched next by its digest, so its digest must be
    /// one: a tag (mutable) or a path there is refused, naming the index.
    #[test]
    fn an_index_entry_must_name_a_digest() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let index = |digest: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":7,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
            )
        };
        assert!(matches!(
            parse(index(&d).as_bytes(), None, "idx").unwrap(),
            Parsed::Index(e) if e[0].digest == d
        ));
        for bad in [
            "mutable",
            "../../other/manifests/t",
            "sha256:AB",
            "sha512:00",
        ] {
            let e = parse(index(bad).as_bytes(), None, "idx")
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"))
                .to_string();
            assert!(
                e.contains("idx: digest") && e.contains("is not sha256:"),
                "{e}"
            );
        }
    }
}
