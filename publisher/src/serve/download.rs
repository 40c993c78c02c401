//! The body of a depot-view download: a file's chunks, read ahead and verified on the
//! blocking pool, sent in order, within one memory budget for every download.
//!
//! **Read-ahead.** The chunks after the ones being sent are read from disk and verified on
//! the blocking pool, in groups of about [`TASK_BYTES`] that one blocking task reads and
//! verifies in turn, [`TASKS_AHEAD`] groups at once per download. One task per group (not a
//! read task, then a verify task, per chunk) keeps the hand-offs between threads few: they
//! were a tenth of a warm download's CPU. A group's verified chunks go to hyper one after the
//! other without a wait, so its writes to the socket are large. Chunks are sent in order,
//! each only after its verification.
//!
//! **Memory.** Every group, the one sent next included, holds a share of one budget,
//! [`READ_AHEAD_TOTAL`] for all downloads together, from the moment its task starts until
//! hyper has taken its last byte. A download whose next group finds the budget spent waits
//! for it (in turn: tokio's semaphore is fair); groups after the next are started only when
//! the budget has room, never waited for. A client that stops reading would keep its share
//! for good, so downloads hyper has taken nothing from for `--read-ahead-timeout` (and is
//! not waiting on) give their share back ([`Downloads::reclaim_idle`], run every quarter of
//! that by `serve`): the groups are dropped and the download goes back to its first byte
//! not handed to hyper, to read and verify it again if the client reads on (one group ahead
//! at first, one more for each group sent: a client that stopped once may stop again). So
//! what downloads hold is bounded by the budget, plus what hyper holds of each: over HTTP/2
//! a stream's send buffer and the one piece it was handed, which a download keeps at
//! [`H2_PIECE`] by copying the piece out of its chunk (a slice would keep the whole chunk's
//! buffer, up to 1 MiB, alive); over HTTP/1 a connection's write buffer and socket; and a
//! download's chunk list, shared by the downloads of one file. Measured in
//! benches/RESULTS.md ("serve under stalled HTTP/2 streams").
//!
//! **Cold downloads** read past the page cache. Each read of a download asks first, without
//! waiting, whether its chunk is in the page cache (`preadv2(RWF_NOWAIT)` of one byte); once
//! one is not, the rest of the download reads its chunks with direct I/O (`O_DIRECT`,
//! [`Objects::read_direct`](crate::store::Objects::read_direct)) into reused buffers, more
//! groups at once ([`COLD_TASKS_AHEAD`] of [`COLD_TASK_BYTES`]). The kernel then neither
//! fills the page cache (allocating, charging and inserting every page: the largest part of
//! a cold download's extra CPU) nor copies the bytes out of it: a cold GiB costs the server
//! about a fifth to a quarter less CPU, close to a warm one (benches/RESULTS.md, "#14 D1
//! (d14, session 13)"). The bytes are verified in the buffer they were read into. What
//! it costs: a download that found its file cold leaves it cold, so the next download of
//! the same file reads the disk again (at about the same CPU per GiB as a warm one), like
//! nginx with `directio`; chunks already in the page cache (read through the store's
//! `/objects/` by clients, say) are served from it up to the first one that is not, after
//! which the download reads the disk even where a later chunk is cached. A file system
//! without direct I/O is read through the page cache.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use depotfs_catalog::{ChunkRef, ObjectId};
use hyper::body::Bytes;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::depot::{Revision, reason};

/// Bytes of chunks one blocking task reads and verifies while they come from the page cache
/// (a group; at least one chunk: with ~256 KiB chunks, mostly one). Smaller groups start the
/// sending sooner and keep less verified data waiting between the verifying core and the
/// sending one: in same-moment A/Bs (benches/RESULTS.md, #14 depot4) 256 KiB gave the warm
/// download more throughput than 1 MiB at the same CPU per GiB; 2 MiB gave less.
pub const TASK_BYTES: u64 = 256 << 10;
/// Bytes of chunks per group once the download's reads go to the disk ([`COLD_TASKS_AHEAD`]).
pub const COLD_TASK_BYTES: u64 = 512 << 10;
/// Groups read and verified at once per download while its chunks come from the page cache:
/// the next to send and those after it. (More made them finish together on 2 CPUs and the
/// sending stopped overlapping the verifying.)
pub const TASKS_AHEAD: usize = 3;
/// Groups in flight per download once its reads go to the disk (a group found a chunk not
/// cached): direct reads have no read-ahead of the kernel's, so these are the disk's depth.
/// (8 groups of 512 KiB, 16 of 256 KiB or of 1 MiB, 4 of 1 MiB: within the noise of each
/// other, benches/RESULTS.md "#14 D1 (d14, session 13)".)
pub const COLD_TASKS_AHEAD: usize = 8;
/// Bytes of groups all downloads together hold, read or being read and not yet taken by
/// hyper.
pub const READ_AHEAD_TOTAL: u64 = 256 << 20;
/// By default, a download hyper has taken no byte from for this long gives its read-ahead
/// back (`--read-ahead-timeout`).
pub const READ_AHEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes handed to hyper at once over HTTP/2, copied out of their chunk: a stream whose
/// client opens no window keeps this much (and its send buffer), not a whole chunk.
pub const H2_PIECE: usize = 64 << 10;

/// Part of a chunk to send: the chunk, and the bytes `from..to` of it; where it is in the
/// file (to go back to it).
#[derive(Debug, Clone, Copy)]
struct Piece {
    chunk: ChunkRef,
    from: usize,
    to: usize,
    /// The chunk's index in the file's chunk list, and the file offset it starts at.
    index: usize,
    at: u64,
}

/// What is left to read of a download: a cursor over the file's chunk list (shared by the
/// downloads of that file: a list is 40 bytes a chunk, 160 KB for a GiB).
#[derive(Debug)]
struct Plan {
    chunks: Arc<[ChunkRef]>,
    /// The next chunk to read, and the file offset it starts at.
    next: usize,
    at: u64,
    /// The first byte still to read (in chunk `next`), and one past the last to send.
    pos: u64,
    end: u64,
}

impl Plan {
    fn new(chunks: Arc<[ChunkRef]>, start: u64, end: u64) -> Self {
        let (mut next, mut at) = (0, 0u64);
        while next < chunks.len() && at + u64::from(chunks[next].len) <= start {
            at += u64::from(chunks[next].len);
            next += 1;
        }
        Plan {
            chunks,
            next,
            at,
            pos: start,
            end,
        }
    }

    /// The pieces still to read, in order, without taking them.
    fn peek(&self) -> impl Iterator<Item = Piece> + '_ {
        let (mut index, mut at, mut pos) = (self.next, self.at, self.pos);
        std::iter::from_fn(move || {
            if pos >= self.end || index >= self.chunks.len() {
                return None;
            }
            let chunk = self.chunks[index];
            let piece = Piece {
                chunk,
                from: (pos - at) as usize,
                to: (self.end.min(at + u64::from(chunk.len)) - at) as usize,
                index,
                at,
            };
            index += 1;
            at += u64::from(chunk.len);
            pos = at;
            Some(piece)
        })
    }

    /// Take the next `n` pieces.
    fn take(&mut self, n: usize) -> Vec<Piece> {
        let taken: Vec<Piece> = self.peek().take(n).collect();
        if let Some(last) = taken.last() {
            self.next = last.index + 1;
            self.at = last.at + u64::from(last.chunk.len);
            self.pos = self.at;
        }
        taken
    }

    /// Read again from `piece` on.
    fn rewind(&mut self, piece: &Piece) {
        self.next = piece.index;
        self.at = piece.at;
        self.pos = piece.at + piece.from as u64;
    }
}

/// The read-ahead budget and the downloads that hold shares of it.
#[derive(Debug)]
pub struct Downloads {
    /// [`READ_AHEAD_TOTAL`], in KiB permits.
    budget: Arc<Semaphore>,
    /// Every download started, as long as it lives (pruned as the list grows).
    live: Mutex<Vec<Weak<Mutex<Held>>>>,
}

impl Default for Downloads {
    fn default() -> Self {
        Downloads {
            budget: Arc::new(Semaphore::new((READ_AHEAD_TOTAL >> 10) as usize)),
            live: Mutex::new(Vec::new()),
        }
    }
}

impl Downloads {
    fn add(&self, held: &Arc<Mutex<Held>>) {
        let mut live = self.live.lock().expect("not poisoned");
        if live.len() == live.capacity() {
            // Amortized: a prune per doubling of the list.
            live.retain(|w| w.strong_count() > 0);
        }
        live.push(Arc::downgrade(held));
    }

    /// Bytes of the budget held now.
    pub fn held_bytes(&self) -> u64 {
        let free = self.budget.available_permits() as u64;
        ((READ_AHEAD_TOTAL >> 10).saturating_sub(free)) << 10
    }

    /// Take back the read-ahead of every download that hyper has taken no byte from for
    /// `after` and is not waiting on: its groups are dropped and their pieces put back to be
    /// read again. Returns the downloads and the bytes of budget taken back.
    pub fn reclaim_idle(&self, after: Duration) -> (usize, u64) {
        let live: Vec<_> = {
            let mut live = self.live.lock().expect("not poisoned");
            live.retain(|w| w.strong_count() > 0);
            live.iter().filter_map(Weak::upgrade).collect()
        };
        let (mut downloads, mut bytes) = (0, 0);
        for held in live {
            // A download being polled right now is not idle.
            let Ok(mut h) = held.try_lock() else { continue };
            if h.asked || h.handed.elapsed() < after {
                continue;
            }
            let freed = h.reclaim();
            if freed > 0 {
                downloads += 1;
                bytes += freed;
            }
        }
        (downloads, bytes)
    }
}

/// The body of a file download: the chunks covering the range, read and verified in groups
/// of about [`TASK_BYTES`] by one blocking task each, [`TASKS_AHEAD`] groups at a time
/// (module docs), sent in order and cut to the range. Holds its revision.
#[derive(Debug)]
pub struct VerifiedStream {
    rev: Arc<Revision>,
    path: String,
    /// The read-ahead, shared with [`Downloads::reclaim_idle`].
    held: Arc<Mutex<Held>>,
    /// HTTP/2: hand hyper copies of at most this many bytes ([`H2_PIECE`]).
    copy_at: Option<usize>,
    /// Waiting for the budget of the group sent next.
    waiting: Option<Waiting>,
    remaining: u64,
    failed: bool,
    failures: prometheus::IntCounterVec,
}

/// A wait for permits of the budget.
struct Waiting(Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>);

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waiting")
    }
}

/// What a download has read ahead, and what is left to read.
#[derive(Debug)]
struct Held {
    /// What is still to read.
    plan: Plan,
    /// Groups being read and verified, in file order.
    reading: VecDeque<Group>,
    /// The first finished group, being handed to hyper.
    ready: Option<Ready>,
    /// A group finished read a chunk that was not in the page cache: from then on the
    /// chunks are read with direct I/O, in [`COLD_TASKS_AHEAD`] groups of [`COLD_TASK_BYTES`].
    cold: bool,
    /// Groups in flight at most, besides the mode's own limit: 1 after a reclaim (a client
    /// that stopped once may stop again: what it is not sent is read for nothing), one
    /// more for every group handed out since, so a client that reads on at speed gets its
    /// read-ahead back within a few groups.
    depth: usize,
    /// hyper asked for the next bytes and waits for us (a group, or budget): not idle.
    asked: bool,
    /// When hyper last took bytes (or the download started).
    handed: Instant,
}

/// Consecutive pieces read and verified by one blocking task.
#[derive(Debug)]
struct Group {
    task: JoinHandle<GroupDone>,
    pieces: Vec<Piece>,
    permit: OwnedSemaphorePermit,
}

/// A finished group whose bytes are being handed to hyper.
#[derive(Debug)]
struct Ready {
    /// The pieces not handed yet (the first one possibly in part); the first `bytes.len()`
    /// of them are in `bytes`, the rest were not read (`failure` says why).
    pieces: VecDeque<Piece>,
    bytes: VecDeque<Bytes>,
    failure: Option<(ObjectId, crate::Error)>,
    /// Held until the last byte is handed over.
    permit: OwnedSemaphorePermit,
}

/// What a group's task gives back: the verified parts of its pieces in order, up to the
/// first piece that failed (and why); whether every piece was in the page cache.
type GroupDone = (Vec<Bytes>, Option<(ObjectId, crate::Error)>, bool);

impl Held {
    /// The next group to start: how many pieces of the plan, and its budget in KiB.
    fn next_group(&self) -> Option<(usize, u32)> {
        let task_bytes = if self.cold {
            COLD_TASK_BYTES
        } else {
            TASK_BYTES
        };
        let (mut take, mut bytes) = (0, 0u64);
        for p in self.plan.peek() {
            if take > 0 && bytes >= task_bytes {
                break;
            }
            take += 1;
            bytes += u64::from(p.chunk.len);
        }
        if take == 0 {
            return None;
        }
        if self.cold {
            // Each piece holds a whole pooled buffer while it waits to be sent.
            bytes = take as u64 * crate::store::DIRECT_BUF as u64;
        }
        Some((
            take,
            u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX),
        ))
    }

    /// Start groups while [`TASKS_AHEAD`] (when cold: [`COLD_TASKS_AHEAD`]) and the budget
    /// allow, the first with `first` if given (the budget waited for). Returns the budget
    /// (KiB) the group sent next needs when there is none for it.
    fn fill(
        &mut self,
        rev: &Arc<Revision>,
        mut first: Option<OwnedSemaphorePermit>,
    ) -> Option<u32> {
        let ahead = if self.cold {
            COLD_TASKS_AHEAD
        } else {
            TASKS_AHEAD
        }
        .min(self.depth);
        while self.reading.len() < ahead {
            let (take, kib) = self.next_group()?;
            let permit = match first.take() {
                // The plan does not change while a download waits (it is not idle then).
                Some(p) => p,
                None => match Arc::clone(&rev.downloads().budget).try_acquire_many_owned(kib) {
                    Ok(p) => p,
                    Err(_) if self.reading.is_empty() && self.ready.is_none() => {
                        return Some(kib);
                    }
                    Err(_) => return None, // the budget is spent: read on as it frees
                },
            };
            let pieces = self.plan.take(take);
            let direct = self.cold;
            let rev = Arc::clone(rev);
            let group = pieces.clone();
            let task = tokio::task::spawn_blocking(move || {
                let mut out = Vec::with_capacity(group.len());
                let mut all_cached = true;
                for p in group {
                    let read = if direct {
                        rev.tree()
                            .piece_bytes_direct(&p.chunk, p.from, p.to)
                            .map(|b| (b, false))
                    } else {
                        rev.tree()
                            .piece_bytes_noting_cache(&p.chunk, p.from, p.to, true)
                    };
                    match read {
                        Ok((b, cached)) => {
                            out.push(b);
                            all_cached &= cached;
                        }
                        Err(e) => return (out, Some((p.chunk.id, e)), all_cached),
                    }
                }
                (out, None, all_cached)
            });
            self.reading.push_back(Group {
                task,
                pieces,
                permit,
            });
        }
        None
    }

    /// Drop what is read ahead and go back in the plan to the first byte not handed to
    /// hyper. Returns the bytes of budget given back.
    fn reclaim(&mut self) -> u64 {
        let mut kib = 0;
        let mut first = None;
        if let Some(r) = self.ready.take() {
            kib += r.permit.num_permits();
            first = r.pieces.front().copied();
        }
        for g in self.reading.drain(..) {
            kib += g.permit.num_permits();
            // A task already running finishes on its own; its bytes are dropped.
            g.task.abort();
            first = first.or(g.pieces.first().copied());
        }
        if let Some(p) = first {
            self.plan.rewind(&p);
        }
        self.depth = 1;
        (kib as u64) << 10
    }
}

impl Ready {
    /// The next bytes to hand to hyper: a whole verified part, or (`copy_at`) a copy of at
    /// most that many bytes of it.
    fn take(&mut self, copy_at: Option<usize>) -> Option<Bytes> {
        let front = self.bytes.front_mut()?;
        let b = match copy_at {
            Some(n) if front.len() > n => Bytes::copy_from_slice(&front.split_to(n)),
            Some(_) => {
                let b = Bytes::copy_from_slice(front);
                self.bytes.pop_front();
                b
            }
            None => self.bytes.pop_front().expect("a front"),
        };
        let piece = self.pieces.front_mut().expect("a piece per verified part");
        piece.from += b.len();
        if piece.from >= piece.to {
            self.pieces.pop_front();
        }
        Some(b)
    }
}

impl VerifiedStream {
    /// The download of bytes `start..end` of a file made of `chunks`, from `rev`; over
    /// HTTP/2 when `h2`.
    pub fn new(
        rev: Arc<Revision>,
        path: String,
        chunks: Arc<[ChunkRef]>,
        (start, end): (u64, u64),
        h2: bool,
        failures: prometheus::IntCounterVec,
    ) -> Self {
        let held = Arc::new(Mutex::new(Held {
            plan: Plan::new(chunks, start, end),
            reading: VecDeque::new(),
            ready: None,
            cold: false,
            depth: COLD_TASKS_AHEAD,
            asked: false,
            handed: Instant::now(),
        }));
        rev.downloads().add(&held);
        VerifiedStream {
            rev,
            path,
            held,
            copy_at: h2.then_some(H2_PIECE),
            waiting: None,
            remaining: end - start,
            failed: false,
            failures,
        }
    }

    /// The only piece to send, if there is exactly one and nothing was read yet (it is
    /// taken out of the plan): the chunk and its bytes to send.
    pub fn only_piece(&mut self) -> Option<(ChunkRef, usize, usize)> {
        let mut h = self.held.lock().expect("not poisoned");
        if !h.reading.is_empty() || h.plan.peek().nth(1).is_some() {
            return None;
        }
        let p = h.plan.take(1).pop()?;
        Some((p.chunk, p.from, p.to))
    }

    /// Start reading ahead now (before the response head goes out), as far as the budget
    /// allows without waiting.
    pub fn start(&mut self) {
        let mut h = self.held.lock().expect("not poisoned");
        h.fill(&self.rev, None);
    }

    /// End the response: count and log why.
    fn fail(&mut self, id: ObjectId, e: crate::Error) -> Poll<Option<io::Result<Bytes>>> {
        self.failed = true;
        let why = reason(&e);
        self.failures.with_label_values(&["body", why]).inc();
        tracing::error!(
            path = self.path,
            revision = self.rev.revision(),
            object = %id,
            "depot view: cutting the response short ({} bytes unsent): {e}",
            self.remaining
        );
        Poll::Ready(Some(Err(io::Error::other(e))))
    }
}

impl super::files::ChunkStream for VerifiedStream {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let held = Arc::clone(&self.held);
        let mut h = held.lock().expect("not poisoned");
        loop {
            if let Some(ready) = h.ready.as_mut() {
                if let Some(b) = ready.take(self.copy_at) {
                    h.asked = false;
                    h.handed = Instant::now();
                    drop(h);
                    self.remaining -= b.len() as u64;
                    return Poll::Ready(Some(Ok(b)));
                }
                let failure = ready.failure.take();
                h.ready = None; // gives its budget back
                h.depth = (h.depth + 1).min(COLD_TASKS_AHEAD);
                if let Some((id, e)) = failure {
                    drop(h);
                    return self.fail(id, e);
                }
            }
            let first = match self.waiting.as_mut() {
                Some(w) => match w.0.as_mut().poll(cx) {
                    Poll::Pending => {
                        h.asked = true;
                        return Poll::Pending;
                    }
                    Poll::Ready(p) => {
                        self.waiting = None;
                        Some(p.expect("the budget is never closed"))
                    }
                },
                None => None,
            };
            if let Some(kib) = h.fill(&self.rev, first) {
                let budget = Arc::clone(&self.rev.downloads().budget);
                self.waiting = Some(Waiting(Box::pin(budget.acquire_many_owned(kib))));
                continue;
            }
            let Some(next) = h.reading.front_mut() else {
                return Poll::Ready(None);
            };
            let done = match Pin::new(&mut next.task).poll(cx) {
                Poll::Pending => {
                    h.asked = true;
                    return Poll::Pending;
                }
                Poll::Ready(d) => d,
            };
            let group = h.reading.pop_front().expect("polled it");
            let (bytes, failure, cached) = done.unwrap_or_else(|e| {
                let e = crate::Error::Io {
                    path: self.path.clone().into(),
                    error: io::Error::other(e),
                };
                (Vec::new(), Some((group.pieces[0].chunk.id, e)), true)
            });
            // Once cold, a download stays cold: its reads go past the page cache, which they
            // no longer fill, so a probe would find the next chunks uncached anyway.
            h.cold |= !cached;
            h.ready = Some(Ready {
                pieces: group.pieces.into(),
                bytes: bytes.into(),
                failure,
                permit: group.permit,
            });
            // The next groups run while this one's bytes go out.
            h.fill(&self.rev, None);
        }
    }

    fn remaining(&self) -> u64 {
        self.remaining
    }

    fn ended(&self) -> bool {
        self.failed || self.remaining == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(lens: &[u32]) -> Arc<[ChunkRef]> {
        lens.iter()
            .enumerate()
            .map(|(i, &len)| ChunkRef {
                id: ObjectId::of(&i.to_le_bytes()),
                len,
            })
            .collect()
    }

    fn spans(p: &Plan) -> Vec<(usize, usize, usize)> {
        p.peek().map(|x| (x.index, x.from, x.to)).collect()
    }

    /// The plan gives the pieces covering the range, cut at its ends, and goes back to any
    /// byte of a piece it gave.
    #[test]
    fn plan_cuts_the_range_and_rewinds_inside_a_piece() {
        let c = chunks(&[10, 20, 30, 40]);
        assert_eq!(
            spans(&Plan::new(Arc::clone(&c), 0, 100)),
            [(0, 0, 10), (1, 0, 20), (2, 0, 30), (3, 0, 40)]
        );
        let mut p = Plan::new(Arc::clone(&c), 15, 55);
        assert_eq!(spans(&p), [(1, 5, 20), (2, 0, 25)]);
        assert!(Plan::new(Arc::clone(&c), 30, 30).peek().next().is_none());
        assert_eq!(spans(&Plan::new(Arc::clone(&c), 30, 31)), [(2, 0, 1)]);

        let mut taken = p.take(1);
        assert_eq!(spans(&p), [(2, 0, 25)]);
        // Part of the piece was handed out; the rest is read again from there.
        taken[0].from += 7;
        p.rewind(&taken[0]);
        assert_eq!(spans(&p), [(1, 12, 20), (2, 0, 25)]);
        assert_eq!(p.take(5).len(), 2);
        assert!(p.peek().next().is_none());
    }

    /// A ready group hands out its parts (copies of at most `copy_at` bytes when asked) and
    /// keeps its pieces in step; reclaiming it gives its budget back and the plan goes back
    /// to the first byte not handed out.
    #[test]
    fn ready_parts_and_reclaim_stay_in_step() {
        let c = chunks(&[100, 50, 70]);
        let budget = Arc::new(Semaphore::new(64));
        let mut plan = Plan::new(Arc::clone(&c), 20, 220);
        let pieces: VecDeque<Piece> = plan.take(2).into();
        let parts: VecDeque<Bytes> = [Bytes::from(vec![1u8; 80]), Bytes::from(vec![2u8; 50])]
            .into_iter()
            .collect();
        let mut held = Held {
            plan,
            reading: VecDeque::new(),
            ready: Some(Ready {
                pieces,
                bytes: parts,
                failure: None,
                permit: Arc::clone(&budget).try_acquire_many_owned(5).unwrap(),
            }),
            cold: false,
            depth: COLD_TASKS_AHEAD,
            asked: false,
            handed: Instant::now(),
        };
        let r = held.ready.as_mut().unwrap();
        assert_eq!(r.take(Some(32)).unwrap(), vec![1u8; 32]);
        assert_eq!(r.take(Some(32)).unwrap(), vec![1u8; 32]);
        assert_eq!(r.pieces.front().unwrap().from, 84);
        assert_eq!(budget.available_permits(), 59);
        assert_eq!(held.reclaim(), 5 << 10);
        assert_eq!(budget.available_permits(), 64);
        assert_eq!(spans(&held.plan), [(0, 84, 100), (1, 0, 50), (2, 0, 70)]);
        assert_eq!(held.depth, 1, "reads one group ahead after a reclaim");

        // Without copies, a part goes out whole.
        let pieces: VecDeque<Piece> = held.plan.take(1).into();
        let mut r = Ready {
            pieces,
            bytes: [Bytes::from(vec![3u8; 16])].into_iter().collect(),
            failure: None,
            permit: Arc::clone(&budget).try_acquire_many_owned(1).unwrap(),
        };
        assert_eq!(r.take(None).unwrap().len(), 16);
        assert!(r.pieces.is_empty() && r.take(None).is_none());
    }
}
