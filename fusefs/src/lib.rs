//! # depotfs-fusefs: the client
//!
//! Mounts a depotfs repository read-only with FUSE, fetching lazily and verifying every byte.
//! The data flow of one read, module by module:
//!
//! - [`fuse`] — the fuser adapter. Thin: every method hands its request to a [`fs::DepotFs`]
//!   operation on the tokio runtime (reads as async tasks, metadata on the blocking pool) and
//!   maps the one error type to an errno ([`Error::to_errno`]).
//! - [`fs`] — no FUSE types: lookup through the catalog's prolly-tree readers
//!   ([`depotfs_catalog::dir::lookup`], [`depotfs_catalog::dir::list_from`]), open files and
//!   reads; beside it [`fs::inodes`] (the inode table, [`fs::Ino`]), [`fs::attr`],
//!   [`fs::listing`], [`fs::xattr`] and [`fs::state`] (what `reload` hands over). The current
//!   revision is a [`fs::Tree`] behind an `RwLock<Arc<_>>`; open files keep the tree they
//!   were opened in.
//! - [`prefetch`] — adaptive readahead for sequential readers, and the background fetch of an
//!   image's recorded access list when it is opened; [`record`] — `--record`, the trace of
//!   reads that `depotfs add --trace` turns into such a list.
//! - [`store`] — the one place an object is fetched, verified
//!   ([`depotfs_catalog::object::decode`]) and cached: memory LRUs of parsed directory nodes,
//!   chunk lists and decompressed chunks, single-flight downloads, refetch-once on corruption.
//! - [`cache`] — the disk cache: content-addressed files, LRU eviction to a byte limit,
//!   crash-safe (files appear whole through [`depotfs_catalog::object_file`], verified on
//!   load), the rollback guard.
//! - [`backend`] — moving bytes: HTTP(S) servers × proxies (one `reqwest` client per
//!   proxy) with proxy-vs-server failover, failback, retries, a request bound and offline
//!   mode; or a local directory.
//! - [`mount`] — manifest check, mount session and revision checks (TTL, offline probe,
//!   SIGUSR1); [`reload`] — `depotfs reload`, a new daemon taking the live mount over (the
//!   FUSE descriptor and [`fs::FsState`] over the control socket); [`fusermount`] — what a
//!   non-root mount needs of fusermount3; [`cli`] — `mount`, `umount`, `remount`, `status`;
//!   [`status`] — the mount's status as one typed value, serialised once (JSON in the root's
//!   `user.depotfs.status`), read by `status`, `remount`, the root's attributes and
//!   [`metrics`] — `--metrics-listen`, Prometheus metrics (served by `depotfs_http`);
//!   [`doctor`] — `depotfs doctor`, a node's checks one line each.
//!
//! Metadata operations first run on the FUSE thread from memory ([`fs::Wait::No`]) and move
//! to the blocking pool only when they need a download. Inode numbers derive from paths, so
//! they are stable across remounts and survive FORGET. The design, the cache layout, the
//! numbers measured and the issue-5 networking (routes, failover, bounds, offline mode,
//! remount, metric names) are in `fusefs/README.md`.
//!
//! Crate choices: `fuser` 0.18 (pure-Rust mount, `Send` replies so requests can be answered
//! from tasks, multi-threaded sessions with `clone_fd`), vendored in `fusefs/vendor/fuser/`
//! with a small patch for `depotfs reload` (listed in its `PATCH.md`: a session on an
//! initialised descriptor, a stop handle, the descriptor back without unmounting); `postcard`
//! for the state handed to the new daemon; `serde_json` for the status attribute (readable by
//! any tool); `tokio` for the async fetch layer and
//! signals; `reqwest` (rustls) for HTTP, set up by `depotfs-http` like every depotfs client;
//! `prometheus` for the metrics' types and encoding; `rustix` for xattrs, unmount, ids and
//! SCM_RIGHTS without `unsafe`; a 60-line LRU of our own rather than another dependency.
#![forbid(unsafe_code)]

pub mod backend;
pub mod cache;
pub mod cli;
pub mod doctor;
mod error;
pub mod fs;
pub mod fuse;
pub mod fusermount;
mod lru;
pub mod metrics;
pub mod mount;
pub mod prefetch;
pub mod record;
pub mod reload;
pub mod stages;
pub mod status;
pub mod store;

pub use error::{Error, Fast, Result, Stop};
