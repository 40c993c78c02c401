//! Fetching before a reader asks: readahead for sequential readers, and the recorded access
//! list of an image (`depotfs add --trace`) when it is opened.
//!
//! **Readahead** ([`Readahead`]) is adaptive. A file read sequentially (a `cat`, `cp`, a job
//! streaming an image) gets a window once the run is proven: nothing until the reader has
//! gone [`RA_START`] in sequence, then as much again as the run so far, up to [`RA_MAX`], so
//! what it fetches beyond a run that stops is at most that run's length. A file read in
//! scattered pieces — squashfuse reading an image's inode table, then a few blocks of each
//! file a container start touches — gets none, and neither do the short runs squashfuse makes
//! of one file inside an image (the kernel's own readahead ramps them to 1 MiB requests): a
//! fixed 4 MiB window fetched 4.3× the bytes touched (P7 in `benches/RESULTS.md`), a window
//! from 1 MiB on twice the run 2.3×, of which 12 of 30 MB were readahead never read. The
//! kernel issues readahead in parallel, so requests may arrive slightly out of order; a read
//! within [`RA_SLACK`] of where the run ends continues the run.
//!
//! **Access lists** ([`spawn_list`]): a chunk list may carry the indices of the chunks a
//! recorded container start read, in first-touch order. On open, those not yet cached are
//! fetched in the background, [`LIST_PARALLEL`] at a time, under a bandwidth cap
//! (`--prefetch-rate`) after a burst of [`LIST_BURST`]'s worth of it, once per chunk list per
//! mount. The reader does not wait for it: a
//! read of a chunk being prefetched joins that download (the store's single-flight). A read
//! of listed chunks is then not speculated on ([`Chunks::listed`]): the list says what the
//! start needs, so readahead only starts once a reader leaves it (it fetched 12 MB beyond
//! the list's 18 before). Each listed chunk, downloaded or already cached, is then put into
//! the kernel's page cache of the opened file ([`PagePush`], `FUSE_NOTIFY_STORE`): verified
//! bytes only, the whole pages inside the chunk ([`whole_pages`]). The start's reads of them
//! are answered by the kernel without a request to the daemon; a read of a page the push has
//! not reached (or the kernel has evicted) comes to the daemon as before.
//!
//! **Counting** ([`Ahead`]): a prefetch runs its loads inside [`AHEAD`], and the store counts
//! a load for it only when that load was started by it — a memory hit, or a join of a
//! download a reader (or an earlier range) already started, is not counted again. So the
//! counters (`status`: `prefetch:`, metrics `depotfs_prefetched_*`) say what the prefetch
//! added: chunks and their file bytes, and the encoded bytes it downloaded, a part of
//! `fetched`. (Counting every completed request instead counted a chunk once per range it
//! overlapped and once more for each reader it joined: 1.3 GiB "read ahead" for a 1 GiB
//! read.)

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use depotfs_catalog::ChunkRef;

use crate::fs::Ino;
use crate::store::{Chunks, ObjectStore, Stats};

/// A sequential run shorter than this gets no readahead: longer than the files squashfuse
/// reads out of an image in one run at a container start (up to 3 MiB in P7's).
pub const RA_START: u64 = 4 << 20;
/// The largest readahead window.
pub const RA_MAX: u64 = 8 << 20;
/// How far from the end of the run a read may start and still continue it.
pub const RA_SLACK: u64 = 512 << 10;
/// Downloads an access-list prefetch keeps in flight.
pub const LIST_PARALLEL: usize = 4;
/// An access list starts with a burst of this long at its cap, fetched at once (a token
/// bucket's depth: 32 MiB at the default 64 MiB/s); the cap applies past it. Paced from its
/// first byte, the 18 MB list of P7's start could not run ahead of the start's own reads (the
/// start reads about as fast as 64 MiB/s), so the list fetched nothing the start did not wait
/// for (1.39× local with it, 1.35× without).
pub const LIST_BURST: Duration = Duration::from_millis(500);

/// Puts verified bytes of a file into the kernel's page cache: `(inode, file offset, bytes)`
/// (the FUSE adapter's `FUSE_NOTIFY_STORE`).
#[derive(Clone)]
pub struct PagePush(pub Arc<PushFn>);

/// What a [`PagePush`] calls.
pub type PushFn = dyn Fn(Ino, u64, &[u8]) -> std::io::Result<()> + Send + Sync;

impl std::fmt::Debug for PagePush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PagePush")
    }
}

/// The part of a chunk at file offset `at`, `len` bytes long, that can go into the page cache
/// as whole pages of `page` bytes: the kernel marks a page it is given readable only when it
/// gets the page whole (or the page holds the end of the file). `None` if no page is whole.
/// The pages a chunk shares with its neighbours are left to reads.
pub fn whole_pages(at: u64, len: u64, file_len: u64, page: u64) -> Option<(u64, u64)> {
    let end = at + len;
    let from = at.next_multiple_of(page);
    let to = if end == file_len {
        end
    } else {
        end / page * page
    };
    (from < to).then_some((from, to))
}

/// Where the chunks of an access list go besides the store: the opened file's inode, and the
/// push into its page cache.
#[derive(Debug, Clone)]
pub struct PushTo {
    /// The opened file.
    pub ino: Ino,
    /// The push.
    pub push: PagePush,
}

/// When the access-list download that has `before` bytes granted ahead of it may start,
/// after the prefetch began: at once within [`LIST_BURST`]'s worth of `rate` (bytes per
/// second), then at `rate`.
pub fn list_delay(before: u64, rate: u64) -> Duration {
    let burst = (rate as f64 * LIST_BURST.as_secs_f64()) as u64;
    Duration::try_from_secs_f64(before.saturating_sub(burst) as f64 / rate.max(1) as f64)
        .unwrap_or(Duration::MAX)
}

/// Who a load is for, when it is not for a reader waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ahead {
    /// Readahead of a sequential reader.
    Readahead,
    /// An image's access list, on open.
    AccessList,
}

tokio::task_local! {
    /// Set around the loads a prefetch starts (see the module's "Counting").
    pub static AHEAD: Ahead;
}

/// The prefetch the current task loads for, if any.
pub fn ahead() -> Option<Ahead> {
    AHEAD.try_with(|a| *a).ok()
}

/// Count a load started by a prefetch: a chunk of `plain` file bytes (from the disk cache or
/// downloaded).
pub(crate) fn count_load(stats: &Stats, by: Ahead, plain: u64) {
    let (n, b) = match by {
        Ahead::Readahead => (&stats.readahead_objects, &stats.readahead_bytes),
        Ahead::AccessList => (&stats.list_objects, &stats.list_bytes),
    };
    n.fetch_add(1, Ordering::Relaxed);
    b.fetch_add(plain, Ordering::Relaxed);
}

/// Count `encoded` bytes downloaded for a prefetch (a part of `bytes_fetched`).
pub(crate) fn count_download(stats: &Stats, encoded: u64) {
    match ahead() {
        Some(Ahead::Readahead) => &stats.readahead_fetched,
        Some(Ahead::AccessList) => &stats.list_fetched,
        None => return,
    }
    .fetch_add(encoded, Ordering::Relaxed);
}

/// Readahead state of one open file.
#[derive(Debug, Default)]
pub struct Readahead {
    state: Mutex<RaState>,
}

#[derive(Debug, Default)]
struct RaState {
    /// Where the current run began.
    start: u64,
    /// Where the current run ends (the furthest byte read in it).
    end: u64,
    /// Bytes read in the current run.
    run: u64,
    /// Bytes before this offset have been handed to the prefetcher.
    ahead_to: u64,
}

impl Readahead {
    /// Account for a read of `offset..end`; the byte range to fetch ahead, if any.
    pub fn on_read(&self, offset: u64, end: u64) -> Option<(u64, u64)> {
        let mut s = self.state.lock().expect("poisoned");
        // The kernel sends a sequential reader's requests side by side, so one may arrive
        // after a later one: a read inside what the run already covered is a straggler of
        // it, and a read up to where readahead already reached continues it. (Either used
        // to start the run over, handing out again ranges fetched already: chunks the
        // memory cache had let go were loaded again from disk and counted again — 1.3 GiB
        // "read ahead" of a 1 GiB file, issue 21.)
        if s.run > 0 && offset >= s.start && end <= s.end {
            return None;
        }
        let continues =
            s.run > 0 && offset + RA_SLACK >= s.end && offset <= s.end.max(s.ahead_to) + RA_SLACK;
        if continues {
            s.run += end.saturating_sub(s.end.max(offset));
            s.end = s.end.max(end);
        } else {
            s.start = offset;
            s.run = end - offset;
            s.end = end;
            s.ahead_to = end;
        }
        if s.run < RA_START {
            return None;
        }
        let window = s.run.min(RA_MAX);
        let from = s.ahead_to.max(end);
        let to = end + window;
        if to <= from {
            return None;
        }
        s.ahead_to = to;
        Some((from, to))
    }
}

/// Make the chunks of `c` overlapping `from..to` ready in the background (readahead):
/// downloaded, or loaded from the disk cache, verified and decompressed into memory.
pub fn spawn_range(
    store: &Arc<ObjectStore>,
    rt: &tokio::runtime::Handle,
    c: &Chunks,
    from: u64,
    to: u64,
) {
    let Some(at) = c.list.locate(&c.offsets, from) else {
        return;
    };
    // A chunk that begins before `from` is not this range's: the range before it (which
    // ended at `from`) or the read that asked for this one (which ends there) has it. Loaded
    // again here, once the memory cache had let it go, it was read from disk twice and
    // counted twice (issue 21).
    let mut i = at.index + usize::from(at.offset < from);
    while i < c.list.chunks.len() && c.offsets[i] < to {
        let r = c.list.chunks[i];
        i += 1;
        // A chunk on disk is worth loading ahead too: the reader then finds it verified
        // and decompressed (warm reads from the disk cache run in parallel this way).
        spawn_load(store, rt, r, Some(Ahead::Readahead));
    }
}

/// Load chunk `r` in the background (unless it is in memory): for prefetch `by`, or for a
/// reader who will ask for it next (`None`). A reader asking later joins the load.
pub fn spawn_load(
    store: &Arc<ObjectStore>,
    rt: &tokio::runtime::Handle,
    r: ChunkRef,
    by: Option<Ahead>,
) {
    if store.chunk_in_memory(&r.id) {
        return;
    }
    let store = store.clone();
    let load = async move {
        if let Err(e) = store.chunk(r.id, r.len as u64).await {
            tracing::debug!("loading {} ahead ({by:?}) failed: {e}", r.id);
        }
    };
    match by {
        Some(by) => rt.spawn(AHEAD.scope(by, load)),
        None => rt.spawn(load),
    };
}

/// Fetch the access list of `c` in the background: the listed chunks not yet cached, in
/// order, [`LIST_PARALLEL`] at a time, at most `rate` bytes per second on average; with
/// `push`, every listed chunk (downloaded, or loaded from the caches, which the rate does not
/// pace) then goes into the file's page cache too.
pub fn spawn_list(
    store: &Arc<ObjectStore>,
    rt: &tokio::runtime::Handle,
    c: Arc<Chunks>,
    rate: u64,
    push: Option<PushTo>,
) {
    if rate == 0 || c.list.prefetch.is_empty() {
        return;
    }
    let store = store.clone();
    rt.spawn(async move {
        let t0 = Instant::now();
        let file_len = c.list.total_len();
        let page = rustix::param::page_size() as u64;
        // (chunk, its file offset, whether it must be downloaded); a cached one is only worth
        // loading to push it.
        let todo: Vec<_> = c
            .list
            .prefetch
            .iter()
            .filter_map(|&i| {
                let r = c.list.chunks.get(i as usize).copied()?;
                Some((r, c.offsets[i as usize], !store.has_chunk(&r.id)))
            })
            .filter(|&(_, _, download)| download || push.is_some())
            .collect();
        let queue = Arc::new(Mutex::new((todo.into_iter(), 0u64)));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..LIST_PARALLEL {
            let (store, queue, push) = (store.clone(), queue.clone(), push.clone());
            workers.spawn(async move {
                loop {
                    // Take the next chunk and the bytes granted before it: a download may
                    // start once those bytes' share of the time at `rate` has passed.
                    let (r, at, download, before) = {
                        let mut q = queue.lock().expect("poisoned");
                        let Some((r, at, download)) = q.0.next() else {
                            return;
                        };
                        let before = q.1;
                        if download {
                            q.1 += r.len as u64;
                        }
                        (r, at, download, before)
                    };
                    if download {
                        let due = t0 + list_delay(before, rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    // A reader may have fetched it meanwhile. Only what the list itself
                    // downloads counts as its prefetch.
                    let loaded = if download && !store.has_chunk(&r.id) {
                        AHEAD
                            .scope(Ahead::AccessList, store.chunk(r.id, r.len as u64))
                            .await
                    } else if push.is_some() {
                        store.chunk(r.id, r.len as u64).await
                    } else {
                        continue;
                    };
                    let v = match loaded {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::debug!("access-list prefetch of {} failed: {e}", r.id);
                            return;
                        }
                    };
                    let Some(p) = &push else { continue };
                    if let Some((from, to)) = whole_pages(at, r.len as u64, file_len, page) {
                        // On the blocking pool, never on a runtime thread: the kernel locks
                        // each page it stores into, so the write waits while a read of that
                        // page is in flight, and that read is answered on the runtime. (On the
                        // runtime, two pushes waiting so held both its threads, the read never
                        // got its answer, and even the unmount waited: a deadlock.)
                        let p = p.clone();
                        let pushed = tokio::task::spawn_blocking(move || {
                            let bytes = &v.data()[(from - at) as usize..(to - at) as usize];
                            (p.push.0)(p.ino, from, bytes)
                        })
                        .await
                        .map_err(std::io::Error::other)
                        .and_then(|r| r);
                        if let Err(e) = pushed {
                            tracing::debug!("access list: the page cache took no pages: {e}");
                            return;
                        }
                        store
                            .stats
                            .list_pushed
                            .fetch_add(to - from, Ordering::Relaxed);
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
        tracing::debug!("access-list prefetch done in {:?}", t0.elapsed());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;

    /// Only pages a chunk holds whole go to the page cache, and the file's last page.
    #[test]
    fn whole_pages_of_a_chunk() {
        let p = 4 * K;
        assert_eq!(whole_pages(0, 10 * K, 100 * K, p), Some((0, 8 * K)));
        assert_eq!(
            whole_pages(10 * K, 10 * K, 100 * K, p),
            Some((12 * K, 20 * K))
        );
        assert_eq!(
            whole_pages(5 * K, 2 * K, 100 * K, p),
            None,
            "inside one page"
        );
        assert_eq!(
            whole_pages(5 * K, 3 * K, 100 * K, p),
            None,
            "ends where a page ends"
        );
        assert_eq!(
            whole_pages(90 * K, 10 * K, 100 * K, p),
            Some((92 * K, 100 * K))
        );
        assert_eq!(
            whole_pages(90 * K, 10 * K - 5, 100 * K - 5, p),
            Some((92 * K, 100 * K - 5)),
            "the file's last page, partly"
        );
    }

    /// An access list's first LIST_BURST worth of its rate starts at once; past it, at the
    /// rate.
    #[test]
    fn access_list_starts_with_a_burst_then_keeps_to_the_rate() {
        let rate = 64 << 20;
        assert_eq!(list_delay(0, rate), Duration::ZERO);
        assert_eq!(list_delay(32 << 20, rate), Duration::ZERO);
        assert_eq!(list_delay(64 << 20, rate), Duration::from_millis(500));
        assert_eq!(list_delay(3 << 20, 2 << 20), Duration::from_secs(1));
        assert!(!list_delay(u64::MAX, 0).is_zero());
    }

    #[test]
    fn scattered_reads_get_no_readahead() {
        let ra = Readahead::default();
        for off in [0, 10 << 20, 3 << 20, 50 << 20, 7 << 20] {
            assert_eq!(ra.on_read(off, off + 128 * K), None, "{off}");
        }
        // Short sequential bursts (a squashfs block or two) neither, nor a file of 3 MiB
        // inside an image read in the kernel's growing requests.
        for b in 0..7 {
            assert_eq!(
                ra.on_read((90 << 20) | (b * 128 * K), (90 << 20) + (b + 1) * 128 * K),
                None
            );
        }
        let mut at = 200 << 20;
        for n in [
            32 * K,
            128 * K,
            256 * K,
            512 * K,
            1024 * K,
            1024 * K,
            96 * K,
        ] {
            assert_eq!(ra.on_read(at, at + n), None, "{at}");
            at += n;
        }
    }

    #[test]
    fn sequential_run_grows_the_window_to_the_max() {
        let ra = Readahead::default();
        let mut windows = Vec::new();
        for b in 0..200u64 {
            let (o, e) = (b * 128 * K, (b + 1) * 128 * K);
            if let Some((from, to)) = ra.on_read(o, e) {
                assert!(from >= e && to > from);
                windows.push(to - e);
            }
        }
        assert_eq!(windows.first(), Some(&RA_START), "{windows:?}");
        assert!(windows.iter().all(|w| *w <= RA_MAX));
        assert_eq!(windows.last(), Some(&RA_MAX));
        // Each range is handed out once: later ones start where earlier ones ended.
        let ra = Readahead::default();
        let mut ahead = 0;
        for b in 0..100u64 {
            if let Some((from, to)) = ra.on_read(b * 128 * K, (b + 1) * 128 * K) {
                assert!(from >= ahead, "{from} < {ahead}");
                ahead = to;
            }
        }
    }

    #[test]
    fn slightly_out_of_order_reads_continue_the_run() {
        let ra = Readahead::default();
        let mut got = None;
        // Pairs of 128 KiB reads arriving swapped.
        for b in (0..96u64).step_by(2) {
            for p in [b + 1, b] {
                got = got.or(ra.on_read(p * 128 * K, (p + 1) * 128 * K));
            }
        }
        assert!(got.is_some());
        // A jump far away starts over.
        assert_eq!(ra.on_read(500 << 20, (500 << 20) + 128 * K), None);
    }
}
