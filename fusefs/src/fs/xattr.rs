//! Extended attributes: `user.depotfs.*` of every path and file, and on the root the
//! mount's status ([`crate::status`]). Other namespaces are not supported.

use depotfs_catalog::{EntryKind, FileContent, ObjectId};

use super::{DepotFs, Ino, Wait};
use crate::error::{Error, Fast, Result, Stop};
use crate::status::{Status, XATTRS_ANY, XATTRS_ROOT};

/// Attribute names offered on regular files.
const XATTRS_FILE: [&str; 2] = ["user.depotfs.hash", "user.depotfs.cached_bytes"];

impl DepotFs {
    /// The value of extended attribute `name` on `ino`.
    pub fn getxattr(&self, ino: Ino, name: &str, wait: Wait) -> Fast<Vec<u8>> {
        if !name.starts_with("user.") {
            // `ls -l` asks for the SELinux label and the ACLs of every file. ENODATA would
            // only say "this file has none", and ls would ask again for the next one;
            // EOPNOTSUPP says the file system has no such namespace, and ls (coreutils
            // remembers it per device) stops asking: `ls -l` of 118,594 entries went from
            // 4.6 s to 0.7 s warm (benches/RESULTS.md, P3).
            return Err(Error::NotSupported.into());
        }
        if !name.starts_with("user.depotfs.") {
            return Err(Error::NoAttr.into());
        }
        let node = self.node(ino)?;
        if let EntryKind::File { size, content } = &node.entry.kind {
            match name {
                "user.depotfs.hash" => {
                    let id = match content {
                        FileContent::Empty => ObjectId::of(b""),
                        FileContent::Single(id) | FileContent::Chunked(id) => *id,
                    };
                    return Ok(id.to_string().into_bytes());
                }
                "user.depotfs.cached_bytes" => {
                    let n = self.cached_bytes(*size, content, wait)?;
                    return Ok(n.to_string().into_bytes());
                }
                _ => {}
            }
        }
        if ino == Ino::ROOT || XATTRS_ANY.contains(&name) {
            // The root's attributes are the mount's status, one value each.
            if let Some(v) = Status::of(self).xattr(name) {
                return Ok(v.into_bytes());
            }
        }
        Err(Error::NoAttr.into())
    }

    fn cached_bytes(&self, size: u64, content: &FileContent, wait: Wait) -> Fast<u64> {
        Ok(match content {
            FileContent::Empty => 0,
            FileContent::Single(id) => {
                if self.store.has_chunk(id) {
                    size
                } else {
                    0
                }
            }
            FileContent::Chunked(id) => {
                let c = match (self.store.chunk_list_cached(id), wait) {
                    (Some(c), _) => c,
                    (None, Wait::No) => return Err(Stop::Blocking),
                    (None, Wait::Yes) => self.rt.block_on(self.store.chunk_list(*id))?,
                };
                c.list
                    .chunks
                    .iter()
                    .filter(|r| self.store.has_chunk(&r.id))
                    .map(|r| r.len as u64)
                    .sum()
            }
        })
    }

    /// The NUL-separated attribute names of `ino`.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let mut names: Vec<&str> = XATTRS_ANY.to_vec();
        if matches!(node.entry.kind, EntryKind::File { .. }) {
            names.extend(XATTRS_FILE);
        }
        if ino == Ino::ROOT {
            names.extend(XATTRS_ROOT);
        }
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }
}
