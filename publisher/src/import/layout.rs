//! Images on disk: an OCI image layout directory (`oci:DIR[:TAG]`) and a `docker save`
//! archive (`docker-archive:FILE`). Both are read in place: blobs are streamed from their
//! files (the archive's from their offset in the tar), never extracted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::import::image::{self, Parsed};
use crate::import::layers;
use crate::import::reference::{self, ImageName};
use crate::import::{LayerRef, Resolved, Source};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout directory.
#[derive(Debug)]
pub struct Layout {
    dir: PathBuf,
    tag: Option<String>,
}

impl Layout {
    /// The layout at `dir`, image `tag` (or its only image).
    pub fn new(dir: &Path, tag: Option<String>) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
            tag,
        }
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        image::check_digest_syntax(digest)
            .map_err(|e| Error::Input(format!("{}: {e}", self.dir.display())))?;
        Ok(self
            .dir
            .join("blobs/sha256")
            .join(&digest["sha256:".len()..]))
    }

    /// A document blob, checked against its digest.
    fn doc(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest)?;
        let what = p.display().to_string();
        let bytes = image::read_doc(File::open(&p).map_err(Error::io(&p))?, &what)?;
        image::verify(&bytes, digest, &what)?;
        Ok(bytes)
    }

    fn repo_name(&self) -> String {
        let base = self
            .dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "image".into());
        base.to_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

impl Source for Layout {
    fn resolve(&self, platform: &str) -> Result<Resolved> {
        let index_path = self.dir.join("index.json");
        let what = index_path.display().to_string();
        let index = image::read_doc(
            File::open(&index_path).map_err(Error::io(&index_path))?,
            &what,
        )?;
        let Parsed::Index(entries) = image::parse(&index, None, &what)? else {
            return Err(Error::Input(format!("{what}: not an image index")));
        };
        let tagged = |d: &image::Descriptor| d.annotations.get(REF_NAME).cloned();
        let top = match &self.tag {
            Some(t) => entries.iter().find(|d| tagged(d).as_deref() == Some(t)),
            None if entries.len() == 1 => entries.first(),
            None => None,
        }
        .cloned()
        .ok_or_else(|| {
            let tags: Vec<String> = entries.iter().filter_map(tagged).collect();
            Error::Input(format!(
                "{what}: no image {} (tags: {})",
                self.tag
                    .as_deref()
                    .map(|t| format!("tagged {t:?}"))
                    .unwrap_or_else(|| "chosen: give oci:DIR:TAG".into()),
                tags.join(", ")
            ))
        })?;
        let tag = match (&self.tag, tagged(&top)) {
            (Some(t), _) => t.clone(),
            // The name an image file gives itself becomes a path of the repository: a tag only.
            // A tag ("3.19"), or a whole reference ("docker.io/library/alpine:3.19"): its tag.
            (None, Some(t)) if reference::valid_tag(&t) => t,
            (None, Some(t))
                if t.rsplit_once(':')
                    .is_some_and(|(_, tag)| reference::valid_tag(tag)) =>
            {
                t.rsplit_once(':')
                    .map(|(_, tag)| tag.to_string())
                    .unwrap_or(t)
            }
            (None, Some(t)) => {
                return Err(Error::Input(format!(
                    "{what}: the image's {REF_NAME} annotation {:?} is not a valid tag; name one with oci:DIR:TAG",
                    layers::shown(t.as_bytes())
                )));
            }
            (None, None) => "latest".into(),
        };
        let mut digest = top.digest.clone();
        for _ in 0..2 {
            let what = format!("{} blob {digest}", self.dir.display());
            let bytes = self.doc(&digest)?;
            match image::parse(&bytes, Some(&top.media_type), &what)? {
                Parsed::Index(entries) => digest = image::choose(&entries, platform, &what)?.digest,
                Parsed::Manifest { config, layers } => {
                    let diff_ids = image::diff_ids(&self.doc(&config.digest)?, &what)?;
                    let name = ImageName {
                        repo: self.repo_name(),
                        tag,
                    };
                    return Resolved::new(name, layers, Some(diff_ids), &what);
                }
            }
        }
        Err(Error::Input(format!("{what}: indexes nested too deep")))
    }

    fn open(&self, layer: &LayerRef) -> Result<Box<dyn Read + '_>> {
        let p = self.blob_path(&layer.locator)?;
        Ok(Box::new(File::open(&p).map_err(Error::io(&p))?))
    }
}

/// A `docker save` archive: `manifest.json`, configs and layers as members of one tar.
#[derive(Debug)]
pub struct DockerArchive {
    file: PathBuf,
    /// member name → (offset of its data, length)
    members: HashMap<String, (u64, u64)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveManifest {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

impl DockerArchive {
    /// Index the members of `file` (one pass over its headers, seeking past the members'
    /// data; their headers bounded as a layer's are).
    pub fn open(file: &Path) -> Result<DockerArchive> {
        let what =
            |e: std::io::Error| Error::Input(format!("{}: not a tar archive: {e}", file.display()));
        let f = File::open(file).map_err(Error::io(file))?;
        let (f, count) = layers::MetaBounded::new(f);
        let mut ar = tar::Archive::new(f);
        let mut members = HashMap::new();
        for e in ar.entries_with_seek().map_err(what)? {
            let e = e.map_err(what)?;
            count.entry();
            let name = String::from_utf8_lossy(&e.path_bytes())
                .trim_start_matches("./")
                .to_string();
            members.insert(name, (e.raw_file_position(), e.size()));
        }
        Ok(DockerArchive {
            file: file.to_path_buf(),
            members,
        })
    }

    fn member(&self, name: &str) -> Result<impl Read + use<>> {
        let &(off, len) = self
            .members
            .get(name.trim_start_matches("./"))
            .ok_or_else(|| {
                Error::Input(format!("{}: has no member {name:?}", self.file.display()))
            })?;
        let mut f = File::open(&self.file).map_err(Error::io(&self.file))?;
        f.seek(SeekFrom::Start(off))
            .map_err(Error::io(&self.file))?;
        Ok(f.take(len))
    }
}

impl Source for DockerArchive {
    fn resolve(&self, _platform: &str) -> Result<Resolved> {
        let what = format!("{} manifest.json", self.file.display());
        let m: Vec<ArchiveManifest> =
            serde_json::from_slice(&image::read_doc(self.member("manifest.json")?, &what)?)
                .map_err(|e| Error::Input(format!("{what}: {e}")))?;
        let [m] = &m[..] else {
            return Err(Error::Input(format!(
                "{what}: holds {} images; import archives of one image",
                m.len()
            )));
        };
        let cwhat = format!("{} {}", self.file.display(), m.config);
        let diff_ids = image::diff_ids(&image::read_doc(self.member(&m.config)?, &cwhat)?, &cwhat)?;
        if diff_ids.len() != m.layers.len() {
            return Err(Error::Input(format!(
                "{cwhat}: {} diff_ids for {} layers",
                diff_ids.len(),
                m.layers.len()
            )));
        }
        let name = match m.repo_tags.first().and_then(|t| t.rsplit_once(':')) {
            Some((repo, tag)) if !repo.contains(':') || repo.rfind('/') > repo.rfind(':') => {
                // drop a registry host (first component with a '.' or ':')
                let repo = match repo.split_once('/') {
                    Some((h, rest)) if h.contains(['.', ':']) || h == "localhost" => rest,
                    _ => repo,
                };
                // The name becomes a path of the repository: a repository and a tag only.
                if !reference::valid_repo(repo) || !reference::valid_tag(tag) {
                    return Err(Error::Input(format!(
                        "{what}: RepoTags {:?} is not REPO:TAG with a valid repository name and tag; refused",
                        layers::shown(m.repo_tags[0].as_bytes())
                    )));
                }
                ImageName {
                    repo: repo.to_string(),
                    tag: tag.to_string(),
                }
            }
            _ => ImageName {
                repo: self
                    .file
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_lowercase())
                    .unwrap_or_else(|| "image".into()),
                tag: "latest".into(),
            },
        };
        let layers = m
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(path, diff_id)| {
                image::check_digest_syntax(&diff_id)
                    .map_err(|e| Error::Input(format!("{cwhat}: {e}")))?;
                let size = self
                    .members
                    .get(path.trim_start_matches("./"))
                    .map_or(0, |m| m.1);
                Ok(LayerRef {
                    key: diff_id.clone(),
                    blob_digest: None,
                    diff_id: Some(diff_id),
                    size,
                    locator: path.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Resolved { name, layers })
    }

    fn open(&self, layer: &LayerRef) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.member(&layer.locator)?))
    }
}
