//! Image references on the command line: `docker://HOST[:PORT]/REPO:TAG`,
//! `docker://HOST[:PORT]/REPO@sha256:DIGEST`, `oci:DIR[:TAG]`, `docker-archive:FILE`.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::import::image::check_digest_syntax;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A registry (OCI distribution API).
    Registry {
        /// `HOST[:PORT]`.
        host: String,
        /// Repository path, e.g. `biocontainers/samtools`.
        repo: String,
        /// A tag or a `sha256:` digest.
        reference: String,
    },
    /// An OCI image layout directory, with the tag to pick (`org.opencontainers.image.ref.name`).
    Layout {
        /// The directory.
        dir: PathBuf,
        /// The tag, if given.
        tag: Option<String>,
    },
    /// A `docker save` archive.
    DockerArchive {
        /// The tar file.
        file: PathBuf,
    },
}

fn bad(r: &str, what: &str) -> Error {
    Error::Input(format!("image reference {r:?}: {what}"))
}

/// A tag as the distribution spec has it: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(crate) fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && !t.starts_with(['.', '-'])
}

/// A repository name: lowercase components of `[a-z0-9._-]`, each starting alphanumeric,
/// joined by `/`.
pub(crate) fn valid_repo(r: &str) -> bool {
    !r.is_empty()
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        })
}

impl Reference {
    /// Parse one reference.
    pub fn parse(r: &str) -> Result<Reference> {
        if let Some(rest) = r.strip_prefix("docker://") {
            let (host, path) = rest
                .split_once('/')
                .ok_or_else(|| bad(r, "expected docker://HOST[:PORT]/REPO:TAG"))?;
            if host.is_empty() || host.contains(['@', ' ']) {
                return Err(bad(r, "missing or bad registry host"));
            }
            let (repo, reference) = if let Some((repo, digest)) = path.split_once('@') {
                check_digest_syntax(digest).map_err(|e| bad(r, &e))?;
                (repo, digest.to_string())
            } else {
                let (repo, tag) = path.rsplit_once(':').ok_or_else(|| {
                    bad(r, "a tag (REPO:TAG) or digest (REPO@sha256:…) is required")
                })?;
                if !valid_tag(tag) {
                    return Err(bad(r, &format!("{tag:?} is not a valid tag")));
                }
                (repo, tag.to_string())
            };
            if !valid_repo(repo) {
                return Err(bad(r, &format!("{repo:?} is not a valid repository name")));
            }
            return Ok(Reference::Registry {
                host: host.to_string(),
                repo: repo.to_string(),
                reference,
            });
        }
        if let Some(rest) = r.strip_prefix("oci:") {
            // DIR[:TAG]: the last ':' starts a tag when what follows is a valid tag.
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !d.is_empty() && valid_tag(t) => (d, Some(t.to_string())),
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(bad(r, "expected oci:DIR[:TAG]"));
            }
            return Ok(Reference::Layout {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        if let Some(file) = r.strip_prefix("docker-archive:") {
            if file.is_empty() {
                return Err(bad(r, "expected docker-archive:FILE"));
            }
            return Ok(Reference::DockerArchive {
                file: PathBuf::from(file),
            });
        }
        Err(bad(
            r,
            "expected docker://HOST[:PORT]/REPO:TAG, docker://HOST/REPO@sha256:DIGEST, oci:DIR[:TAG] or docker-archive:FILE",
        ))
    }
}

/// The name an imported image gets: `repo` (may contain `/`) and `tag` (or `sha256:HEX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// Repository path.
    pub repo: String,
    /// Tag, or digest for a by-digest reference.
    pub tag: String,
}

impl ImageName {
    /// `repo:tag` (`repo@sha256:…` for a digest): the `--format dir` path below DIR.
    pub fn dir_path(&self) -> String {
        if self.tag.starts_with("sha256:") {
            format!("{}@{}", self.repo, self.tag)
        } else {
            format!("{}:{}", self.repo, self.tag)
        }
    }

    /// `basename:tag`: the `--format sif` file name, as the depot names its images.
    pub fn sif_name(&self) -> String {
        let base = self.repo.rsplit('/').next().unwrap_or(&self.repo);
        ImageName {
            repo: base.to_string(),
            tag: self.tag.clone(),
        }
        .dir_path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_bad_ones_are_named() {
        let d = "sha256:".to_string() + &"ab".repeat(32);
        assert_eq!(
            Reference::parse("docker://127.0.0.1:5000/biocontainers/samtools:1.9--h91753b0_8")
                .unwrap(),
            Reference::Registry {
                host: "127.0.0.1:5000".into(),
                repo: "biocontainers/samtools".into(),
                reference: "1.9--h91753b0_8".into()
            }
        );
        assert_eq!(
            Reference::parse(&format!("docker://quay.io/a/b@{d}")).unwrap(),
            Reference::Registry {
                host: "quay.io".into(),
                repo: "a/b".into(),
                reference: d.clone()
            }
        );
        assert_eq!(
            Reference::parse("oci:/tmp/x:v1").unwrap(),
            Reference::Layout {
                dir: "/tmp/x".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Reference::parse("oci:/tmp/x").unwrap(),
            Reference::Layout {
                dir: "/tmp/x".into(),
                tag: None
            }
        );
        for (r, what) in [
            ("docker://host/repo", "a tag"),
            ("docker://host/Repo:1", "not a valid repository"),
            ("docker://host/repo:a/b", "not a valid tag"),
            ("docker://host/r@sha256:12", "not sha256"),
            ("docker://host/r:..", "not a valid tag"),
            ("http://x/y:1", "expected docker://"),
            ("docker-archive:", "expected docker-archive:FILE"),
        ] {
            let e = Reference::parse(r).unwrap_err().to_string();
            assert!(e.contains(what) && e.contains(r), "{r}: {e}");
        }
        let n = ImageName {
            repo: "biocontainers/samtools".into(),
            tag: "1.9".into(),
        };
        assert_eq!(n.dir_path(), "biocontainers/samtools:1.9");
        assert_eq!(n.sif_name(), "samtools:1.9");
    }
}
