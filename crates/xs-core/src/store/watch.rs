//! Watches: an index by path for matching, and per-connection bounded event queues.
//!
//! Watches on node paths are indexed by path in a hash table, so an event at depth `d` is
//! matched with `d + 1` lookups (one per prefix of its path), whatever the number of watches
//! (a scan over all watches would let 100k watches slow every write by 100k). The hashes of
//! all prefixes come from one streaming pass over the path, so the lookups are independent
//! of each other and the CPU overlaps them. The hash is SipHash-1-3 keyed with the store's
//! `hash_key`, which the platform draws from real entropy: guests choose watch paths, and
//! without the key they cannot make them collide. Special watches (`@releaseDomain`,
//! `@releaseDomain/<domid>`, ...) are in the same table under their own paths: any domain
//! may register them, so a list scanned on every `WATCH` would let guests make each other's
//! requests slow.
//!
//! ## Event queues and the policy at their bound
//!
//! Events wait in a per-connection queue until the connection's owner drains them. The queue
//! is bounded by a length (`StoreConfig::event_queue_len`) and, for unprivileged domains, by
//! their memory quota (queued events are charged to it). When an event does not fit, it is
//! not queued; instead its watch is marked as having missed events, and as soon as the queue
//! has room again the watch gets one event for its own path. XenStore clients must already
//! treat any event as "something at or below this path changed, re-read it" (events may be
//! spurious, `docs/misc/xenstore.txt`), so a client that falls behind loses detail but never a
//! notification, and memory stays bounded by the queue length plus one flag per watch. An
//! empty queue always takes one event, even over the memory quota (by one event at most):
//! catch-up events are queued as events are popped, so a watcher whose memory is used up by
//! its nodes would otherwise never get the events it is owed.
//! (C xenstored instead drops events after a timeout or over quota; oxenstored stops reading
//! from the connection.)
//!
//! ## Identical events
//!
//! As C xenstored's `send_event`, an event identical (same path and token bytes) to one still
//! pending for the connection is dropped: the watcher has not yet seen the pending one, so it
//! reads the node after this change anyway. Special events (`@introduceDomain`,
//! `@releaseDomain`, ...) are exempt, as in C: each announces that something happened to a
//! domain, not a node to re-read. "Pending" spans the store's queue, checked through
//! [`EventQueue`]'s index when an event is queued, and the connection's unsent output,
//! checked when the connection takes the event (`protocol::Connection::pull_events`, which
//! says what that changes against C's timing). A write storm against a watcher that does
//! not read then costs one event per distinct path and token, as in C, instead of the
//! queue's bound.

use alloc::borrow::Cow;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;

use core::hash::Hasher;

use hashbrown::HashTable;
use siphasher::sip::SipHasher13;

use super::arena::{Id, Slab};
use super::tree::KeyedSegments;
use crate::error::{XsError, XsResult};
use crate::wire::PAYLOAD_MAX;

/// An event waiting to be sent: `WATCH_EVENT <path>|<token>|`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WatchEvent {
    /// The event path, relative if the watch was registered with a relative path.
    pub path: EventPath,
    /// The watch's token.
    pub token: Token,
}

/// A watch's token: inline when short (Linux's xenbus tokens are 16 hex digits), else shared
/// with the watch. Queueing an event then copies a short token from the watch (which
/// matching has just loaded) instead of touching a separate reference count: one cache miss
/// fewer per event when the table is large.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Token(Small<30, Arc<[u8]>>);

impl Token {
    pub(crate) fn new(token: &[u8]) -> Token {
        Token(Small::new(token))
    }
}

impl core::ops::Deref for Token {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.get()
    }
}

impl AsRef<[u8]> for Token {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// Bytes stored inline when at most `N` (`N` < 256), else in `H` on the heap: tokens and
/// event paths. Equal when their bytes are (whatever the inline array holds past `len`).
#[derive(Clone, Debug)]
enum Small<const N: usize, H> {
    Inline { len: u8, bytes: [u8; N] },
    Heap(H),
}

impl<const N: usize, H> PartialEq for Small<N, H>
where
    H: for<'a> From<&'a [u8]> + core::ops::Deref<Target = [u8]>,
{
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl<const N: usize, H> Eq for Small<N, H> where
    H: for<'a> From<&'a [u8]> + core::ops::Deref<Target = [u8]>
{
}

impl<const N: usize, H> Small<N, H>
where
    H: for<'a> From<&'a [u8]> + core::ops::Deref<Target = [u8]>,
{
    /// No bytes.
    const EMPTY: Self = Small::Inline {
        len: 0,
        bytes: [0; N],
    };

    fn new(data: &[u8]) -> Small<N, H> {
        let mut bytes = [0u8; N];
        match (bytes.get_mut(..data.len()), u8::try_from(data.len())) {
            (Some(head), Ok(len)) => {
                head.copy_from_slice(data);
                Small::Inline { len, bytes }
            }
            _ => Small::Heap(H::from(data)),
        }
    }

    fn get(&self) -> &[u8] {
        match self {
            Small::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Small::Heap(h) => h,
        }
    }

    /// Becomes a copy of `other`: its inline bytes copied straight across (a derived clone
    /// goes through a temporary on the stack), else its heap part cloned.
    fn copy_from(&mut self, other: &Self)
    where
        H: Clone,
    {
        match other {
            Small::Inline { .. } => self.set(other.get()),
            Small::Heap(h) => *self = Small::Heap(h.clone()),
        }
    }

    /// Replaces the bytes, in place when they fit inline.
    fn set(&mut self, data: &[u8]) {
        if let (Small::Inline { len, bytes }, Ok(new_len)) = (&mut *self, u8::try_from(data.len()))
            && let Some(head) = bytes.get_mut(..data.len())
        {
            head.copy_from_slice(data);
            *len = new_len;
            return;
        }
        *self = Small::new(data);
    }
}

/// A path stored inline when short (most are: 46 bytes hold
/// `/local/domain/0/backend/vbd/12345/51712/state`), else on the heap. Watch buckets and
/// queued events use it, so that matching a watch and queueing its event need no
/// allocation and no second memory access.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EventPath(SmallPath);

type SmallPath = Small<46, Box<[u8]>>;

impl EventPath {
    #[cfg(test)]
    pub(crate) fn new(path: &[u8]) -> EventPath {
        EventPath(SmallPath::new(path))
    }
}

impl core::ops::Deref for EventPath {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.get()
    }
}

impl AsRef<[u8]> for EventPath {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// A registered watch. Its path is kept once, in its bucket of the index (found again
/// through `hash`): the bucket must hold it for matching anyway, and a second copy per
/// watch was a heap allocation more.
#[derive(Debug)]
pub(crate) struct Watch {
    pub(crate) conn: Id,
    /// The hash of its path (canonical absolute, or special: `@...`).
    hash: u64,
    /// The length of its path.
    path_len: u32,
    pub(crate) token: Token,
    /// The hash of its token: with the hash of an event's path, the event's key (see
    /// [`event_key`]), without hashing the token again for every event.
    token_hash: u64,
    /// Levels below its path that still match (`XENSTORE_SERVER_FEATURE_WATCHDEPTH`).
    pub(crate) depth: Option<u32>,
    /// Length of `/local/domain/<domid>/` if the watch was registered relative.
    relative_prefix: u32,
    /// Events were dropped at the queue bound; one catch-up event is owed.
    pub(crate) missed: bool,
}

impl Watch {
    /// The path to report for an event at `path` (relative if the watch is).
    pub(crate) fn event_path<'a>(&self, path: &'a [u8]) -> &'a [u8] {
        path.get(self.relative_prefix as usize..).unwrap_or(path)
    }

    /// Whether an event at `path` fits one message with this watch's token.
    fn fits(&self, path: &[u8]) -> bool {
        self.event_path(path)
            .len()
            .saturating_add(self.token.len())
            .saturating_add(2)
            <= PAYLOAD_MAX
    }

    /// The bytes charged to the watching domain.
    pub(crate) fn charge(&self) -> u64 {
        charge_watch(self.path_len as usize, self.token.len())
    }
}

/// Memory charged for a watch.
pub(crate) fn charge_watch(path_len: usize, token_len: usize) -> u64 {
    const OVERHEAD: u64 = 96;
    OVERHEAD
        .saturating_add(path_len as u64)
        .saturating_add(token_len as u64)
}

/// Memory charged for a queued event.
pub(crate) fn charge_event(event: &WatchEvent) -> u64 {
    charge_event_of(event.path.len(), event.token.len())
}

/// Memory charged for a queued event with a path and token of these lengths: 48 bytes for
/// its slot, 24 for its key and its entry in the queue's index.
pub(crate) fn charge_event_of(path_len: usize, token_len: usize) -> u64 {
    const OVERHEAD: u64 = 48 + 24;
    OVERHEAD
        .saturating_add(path_len as u64)
        .saturating_add(token_len as u64)
}

/// Whether the rule against identical pending events (see the module's documentation)
/// covers an event reporting `path`: all but special events do.
pub(crate) fn deduplicated(path: &[u8]) -> bool {
    path.first() != Some(&b'@')
}

/// The key of an event whose path and token have these hashes. Both hashes are keyed, so
/// guests cannot make keys collide; a collision costs a comparison of bytes, never a wrong
/// verdict (equal keys are always checked against the bytes).
pub(crate) fn event_key(path_hash: u64, token_hash: u64) -> u64 {
    // Rotated, so that an event whose path and token are equal does not get key 0, nor
    // swapping path and token the same key.
    path_hash ^ token_hash.rotate_left(32)
}

/// A queued event and its key, if the rule covers it.
#[derive(Debug)]
struct Queued {
    event: WatchEvent,
    key: Option<u64>,
}

/// A connection's queued events, in order, with an index that finds a queued event identical
/// to a new one in constant time: a scan would make every event of a write storm cost the
/// queue's length, for every watcher.
///
/// The index maps the key of each queued event the rule covers (the events queued with a
/// key: [`WatchTable::event_key`] gives none to those [`deduplicated`] exempts) to the
/// event's sequence number, which locates it in the queue (the front's number is kept);
/// a key found is confirmed by comparing path and token, so the rule is exact. Its memory
/// follows the queue's (one entry per queued event, charged with it) and is bounded with it.
#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    events: VecDeque<Queued>,
    index: HashTable<(u64, u64)>,
    /// Sequence number of the front event (of the next one, when empty).
    front: u64,
}

impl EventQueue {
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The event with sequence number `seq`, if queued.
    fn at(&self, seq: u64) -> Option<&WatchEvent> {
        let i = usize::try_from(seq.wrapping_sub(self.front)).ok()?;
        self.events.get(i).map(|q| &q.event)
    }

    /// Whether an event with `path` and `token` (with key `key`) is queued. Only events the
    /// rule covers are found.
    pub(crate) fn contains(&self, key: u64, path: &[u8], token: &[u8]) -> bool {
        !self.events.is_empty()
            && self
                .index
                .find(key, |&(k, seq)| {
                    k == key
                        && self
                            .at(seq)
                            .is_some_and(|e| *e.path == *path && *e.token == *token)
                })
                .is_some()
    }

    /// Appends the event `path`/`token` with its key, if the rule covers it (indexed then),
    /// written in place in the queue's
    /// slot: an event built on the stack and then moved in was copied with variable-length
    /// stores and reloaded in fixed pieces, a store-forwarding stall per event.
    pub(crate) fn push(&mut self, path: &[u8], token: &Token, key: Option<u64>) {
        let seq = self.front.wrapping_add(self.events.len() as u64);
        self.events.push_back(Queued {
            event: WatchEvent {
                path: EventPath(Small::EMPTY),
                token: Token(Small::EMPTY),
            },
            key,
        });
        if let Some(q) = self.events.back_mut() {
            q.event.path.0.set(path);
            q.event.token.0.copy_from(&token.0);
        }
        if let Some(key) = key {
            self.index.insert_unique(key, (key, seq), |&(k, _)| k);
        }
    }

    /// Takes the front event, with its key if the rule covers it.
    pub(crate) fn pop(&mut self) -> Option<(WatchEvent, Option<u64>)> {
        let Queued { event, key } = self.events.pop_front()?;
        let seq = self.front;
        self.front = self.front.wrapping_add(1);
        if let Some(key) = key
            && let Ok(entry) = self.index.find_entry(key, |&(_, s)| s == seq)
        {
            entry.remove();
        }
        Some((event, key))
    }

    /// The queued events, front first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &WatchEvent> {
        self.events.iter().map(|q| &q.event)
    }

    /// Whether exactly the queued events the rule covers have a key, and the index lists
    /// each of them under it (for [`crate::store::Store::check`]).
    pub(crate) fn is_consistent(&self) -> bool {
        let keyed = self.events.iter().filter(|q| q.key.is_some()).count();
        self.events
            .iter()
            .all(|q| q.key.is_some() == deduplicated(&q.event.path))
            && keyed == self.index.len()
            && self.index.iter().all(|&(key, seq)| {
                let i = usize::try_from(seq.wrapping_sub(self.front)).ok();
                i.and_then(|i| self.events.get(i))
                    .is_some_and(|q| q.key == Some(key))
            })
    }
}

/// A watch as the index lists it: its index and depth limit (`u32::MAX` for none), so that
/// matching needs no look at the watch itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listed {
    watch: u32,
    depth: u32,
}

/// The watches registered on one node path, in one cache line (64 bytes, aligned, so that
/// matching a path costs one miss for its bucket): most paths have one watch, kept inline;
/// further ones go in `more`.
#[derive(Debug)]
#[repr(align(64))]
struct Bucket {
    path: SmallPath,
    first: Listed,
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer keeps the bucket in one cache line; only paths with several \
                  watches allocate it"
    )]
    more: Option<Box<Vec<Listed>>>,
}

impl Bucket {
    fn watches(&self) -> impl Iterator<Item = &Listed> {
        core::iter::once(&self.first).chain(self.more.iter().flat_map(|more| more.iter()))
    }

    fn contains(&self, watch: u32) -> bool {
        self.watches().any(|l| l.watch == watch)
    }

    fn push(&mut self, listed: Listed) {
        self.more.get_or_insert_with(Box::default).push(listed);
    }

    /// Removes `watch`; returns whether the bucket is now empty.
    fn remove(&mut self, watch: u32) -> bool {
        // Order kept (the next one moves up, not the last): watches on one path are
        // matched in the order they were registered, which the state stream
        // (`store::state`) can then restore.
        if self.first.watch == watch {
            let next = match self.more.as_mut() {
                Some(more) if !more.is_empty() => Some(more.remove(0)),
                _ => None,
            };
            match next {
                Some(next) => self.first = next,
                None => return true,
            }
        } else if let Some(more) = self.more.as_mut() {
            more.retain(|l| l.watch != watch);
        }
        if self.more.as_ref().is_some_and(|more| more.is_empty()) {
            self.more = None;
        }
        false
    }
}

/// Prefixes [`WatchTable::match_subtree`] hashes before probing any (deeper paths are done
/// in several batches): more than typical XenStore paths have levels.
const PROBE_BATCH: usize = 16;

/// A prefix of a changed path, staged for probing.
#[derive(Clone, Copy, Default)]
struct Prefix {
    end: usize,
    level: usize,
    hash: u64,
}

/// Keyed SipHash-1-3 over path bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PathHasher {
    key: [u64; 2],
}

impl PathHasher {
    pub(crate) fn new(key: [u64; 2]) -> PathHasher {
        PathHasher { key }
    }

    fn start(&self) -> SipHasher13 {
        let [k0, k1] = self.key;
        SipHasher13::new_with_keys(k0, k1)
    }

    /// The hash of a whole path (the same as the streaming prefix hashes produce).
    pub(crate) fn hash(&self, path: &[u8]) -> u64 {
        let mut h = self.start();
        h.write(path);
        h.finish()
    }
}

/// All watches.
#[derive(Debug)]
pub(crate) struct WatchTable {
    pub(crate) watches: Slab<Watch>,
    index: HashTable<Bucket>,
    hasher: PathHasher,
    /// Node watches (those not special) per level of their path (`/` is level 0; levels
    /// from 63 share the last count), so that matching hashes and probes only the prefixes
    /// at levels some watch is on: watches are on device, backend and control nodes, rarely
    /// on `/`, `/local` or `/local/domain`.
    per_level: [u32; LEVELS],
    /// Bit `l` set when `per_level[l]` is not zero: none set means no node watches, and
    /// changes need no matching.
    levels: u64,
}

/// Levels [`WatchTable::per_level`] counts apart.
const LEVELS: usize = 64;

/// The level of a canonical node path: its number of segments.
fn level_of(path: &[u8]) -> usize {
    if path.len() <= 1 {
        return 0;
    }
    path.iter().filter(|&&b| b == b'/').count()
}

/// The bit of [`WatchTable::levels`] (and index of [`WatchTable::per_level`]) for `level`.
fn level_slot(level: usize) -> usize {
    level.min(LEVELS.saturating_sub(1))
}

impl WatchTable {
    pub(crate) fn new(hash_key: [u64; 2]) -> WatchTable {
        WatchTable {
            watches: Slab::default(),
            index: HashTable::new(),
            hasher: PathHasher::new(hash_key),
            per_level: [0; LEVELS],
            levels: 0,
        }
    }

    /// Counts a node watch in (`add`) or out of `level`.
    fn count_level(&mut self, level: usize, add: bool) {
        let level = level_slot(level);
        if let Some(n) = self.per_level.get_mut(level) {
            *n = if add {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            };
            let bit = 1u64 << level;
            if *n == 0 {
                self.levels &= !bit;
            } else {
                self.levels |= bit;
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.watches.len() == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.watches.len()
    }

    fn bucket(&self, path: &[u8], hash: u64) -> Option<&Bucket> {
        self.index.find(hash, |b| b.path.get() == path)
    }

    /// Registers a watch of `conn` on `path` (canonical absolute, or special) and returns its
    /// index. `relative_prefix` is the length of `/local/domain/<domid>/` if it was
    /// registered relative.
    pub(crate) fn add(
        &mut self,
        conn: Id,
        path: &[u8],
        token: &[u8],
        depth: Option<u32>,
        relative_prefix: usize,
    ) -> XsResult<u32> {
        let hash = self.hasher.hash(path);
        let watch = Watch {
            conn,
            hash,
            path_len: u32::try_from(path.len()).map_err(|_| XsError::Inval)?,
            token: Token::new(token),
            token_hash: self.hasher.hash(token),
            depth,
            relative_prefix: u32::try_from(relative_prefix).map_err(|_| XsError::Inval)?,
            missed: false,
        };
        let index = self.watches.insert(watch)?.index;
        if !is_special(path) {
            self.count_level(level_of(path), true);
        }
        let listed = Listed {
            watch: index,
            depth: depth.unwrap_or(u32::MAX),
        };
        match self.index.find_mut(hash, |b| b.path.get() == path) {
            Some(bucket) => bucket.push(listed),
            None => {
                let hasher = self.hasher;
                self.index.insert_unique(
                    hash,
                    Bucket {
                        path: SmallPath::new(path),
                        first: listed,
                        more: None,
                    },
                    |b| hasher.hash(b.path.get()),
                );
            }
        }
        Ok(index)
    }

    /// Unregisters a watch.
    pub(crate) fn remove(&mut self, index: u32) -> Option<Watch> {
        let watch = self.watches.remove(index)?;
        if let Ok(mut entry) = self.index.find_entry(watch.hash, |b| b.contains(index)) {
            let path = entry.get().path.get();
            let node_level = (!is_special(path)).then(|| level_of(path));
            if entry.get_mut().remove(index) {
                entry.remove();
            }
            if let Some(level) = node_level {
                self.count_level(level, false);
            }
        }
        Some(watch)
    }

    /// The path watch `index` is registered on.
    pub(crate) fn path_of(&self, index: u32) -> Option<&[u8]> {
        let watch = self.watches.get(index)?;
        self.index
            .find(watch.hash, |b| b.contains(index))
            .map(|b| b.path.get())
    }

    /// The path an event of watch `index` at `path` reports: [`Watch::event_path`], or the
    /// watch's own path when the event would not fit one message (Xen XSA-324), which fits
    /// (its WATCH request did) and still says "look below here". That rare case copies it.
    pub(crate) fn reported_path<'a>(
        &self,
        index: u32,
        watch: &Watch,
        path: &'a [u8],
    ) -> Cow<'a, [u8]> {
        if watch.fits(path) {
            return Cow::Borrowed(watch.event_path(path));
        }
        Cow::Owned(self.own_event_path(index))
    }

    /// The hash of `path` (an event's path), for [`WatchTable::event_key`].
    pub(crate) fn hash_path(&self, path: &[u8]) -> u64 {
        self.hasher.hash(path)
    }

    /// The key of an event of `watch` that reports `reported`, or `None` if the rule
    /// against identical events does not cover it ([`deduplicated`]). `path_hash`, if given,
    /// is the hash of `path`, the changed path, hashed once for all its watchers: it is used
    /// when the watch reports `path` itself (absolute, and fitting one message), the common
    /// case.
    pub(crate) fn event_key(
        &self,
        watch: &Watch,
        reported: &[u8],
        path: &[u8],
        path_hash: Option<u64>,
    ) -> Option<u64> {
        if !deduplicated(reported) {
            return None;
        }
        let path_hash = match path_hash {
            Some(h) if core::ptr::eq(reported, path) => h,
            _ => self.hasher.hash(reported),
        };
        Some(event_key(path_hash, watch.token_hash))
    }

    /// The key of an event reporting `path` with `token` (as [`WatchTable::event_key`]
    /// gives it), or `None` if the rule against identical events does not cover it: for
    /// events restored from a state stream, which names no watch.
    pub(crate) fn key_of(&self, path: &[u8], token: &[u8]) -> Option<u64> {
        deduplicated(path).then(|| event_key(self.hasher.hash(path), self.hasher.hash(token)))
    }

    /// The length of `/local/domain/<domid>/` if watch `index` was registered relative.
    pub(crate) fn relative_prefix(&self, index: u32) -> usize {
        self.watches
            .get(index)
            .map_or(0, |w| w.relative_prefix as usize)
    }

    /// The event path of watch `index` at its own path (a catch-up event), copied.
    pub(crate) fn own_event_path(&self, index: u32) -> Vec<u8> {
        match (self.watches.get(index), self.path_of(index)) {
            (Some(watch), Some(own)) => watch.event_path(own).to_vec(),
            _ => Vec::new(),
        }
    }

    /// The watch of `conn` on `path` with `token`, if registered.
    pub(crate) fn find(&self, conn: Id, path: &[u8], token: &[u8]) -> Option<u32> {
        self.bucket(path, self.hasher.hash(path))?
            .watches()
            .map(|l| l.watch)
            .find(|&w| {
                self.watches
                    .get(w)
                    .is_some_and(|w| w.conn == conn && &*w.token == token)
            })
    }

    /// Watches matching a change at `path` that affects its subtree: watches on `path` and on
    /// its ancestors, within their depth limits.
    pub(crate) fn match_subtree(&self, path: &[u8], out: &mut Vec<u32>) {
        if self.levels == 0 {
            return;
        }
        let total = level_of(path);
        // The prefixes' hashes are computed a batch at a time before any bucket is probed, so
        // that the probes (each a likely cache miss in a large table, independent of one
        // another) overlap instead of each waiting behind the previous one's compare and
        // branch. One streaming hash covers all prefixes; only those at a level some watch
        // is on are finished and probed.
        let mut staged = [Prefix::default(); PROBE_BATCH];
        let mut count = 0usize;
        let mut h = self.hasher.start();
        h.write(b"/");
        let mut hashed = 1usize;
        let segments = KeyedSegments::new(path).map(|s| s.end);
        for (level, end) in core::iter::once(1usize).chain(segments).enumerate() {
            if end > hashed {
                h.write(path.get(hashed..end).unwrap_or_default());
                hashed = end;
            }
            if self.levels & (1u64 << level_slot(level)) == 0 {
                continue;
            }
            if let Some(slot) = staged.get_mut(count) {
                *slot = Prefix {
                    end,
                    level,
                    hash: h.finish(),
                };
                count = count.saturating_add(1);
            }
            if count == PROBE_BATCH {
                self.probe(path, total, &staged, out);
                count = 0;
            }
        }
        self.probe(path, total, staged.get(..count).unwrap_or_default(), out);
    }

    /// Adds the watches on the staged prefixes of `path` (at level `total`) that reach it.
    fn probe(&self, path: &[u8], total: usize, staged: &[Prefix], out: &mut Vec<u32>) {
        for p in staged {
            let prefix = path.get(..p.end).unwrap_or(path);
            if let Some(bucket) = self.bucket(prefix, p.hash) {
                let below = u32::try_from(total.saturating_sub(p.level)).unwrap_or(u32::MAX);
                for l in bucket.watches() {
                    if below <= l.depth {
                        out.push(l.watch);
                    }
                }
            }
        }
    }

    /// Watches registered exactly on `path`.
    pub(crate) fn match_exact(&self, path: &[u8], out: &mut Vec<u32>) {
        if self.levels == 0 {
            return;
        }
        if let Some(bucket) = self.bucket(path, self.hasher.hash(path)) {
            out.extend(bucket.watches().map(|l| l.watch));
        }
    }

    /// Whether any watch is registered on a node path (so removals must look for them).
    pub(crate) fn any_node_watches(&self) -> bool {
        self.levels != 0
    }

    /// Special watches matching the special event `name` about `domid`, each with whether the
    /// event path carries the domid (`@releaseDomain/<domid>`): exact watches on `name` without
    /// a depth get `name`; watches on `name/<domid>`, and watches on `name` with a depth of at
    /// least 1, get `name/<domid>` (`docs/misc/xenstore.txt`, WATCH).
    pub(crate) fn match_special(&self, name: &[u8], with_domid: &[u8], out: &mut Vec<(u32, bool)>) {
        let on = |path: &[u8]| {
            self.bucket(path, self.hasher.hash(path))
                .into_iter()
                .flat_map(Bucket::watches)
                .map(|l| l.watch)
        };
        for w in on(name) {
            match self.watches.get(w).map(|w| w.depth) {
                Some(None) => out.push((w, false)),
                Some(Some(d)) if d >= 1 => out.push((w, true)),
                _ => {}
            }
        }
        out.extend(on(with_domid).map(|w| (w, true)));
    }
}

/// Whether a watch path is special (`@...`) rather than a node path.
fn is_special(path: &[u8]) -> bool {
    path.first() == Some(&b'@')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registers a watch of `conn` on `path` with token `t`.
    fn add(t: &mut WatchTable, conn: Id, path: &str, depth: Option<u32>) -> XsResult<u32> {
        t.add(conn, path.as_bytes(), b"t", depth, 0)
    }

    #[test]
    fn subtree_exact_depth_and_pruning() {
        let c = Id {
            index: 0,
            generation: 0,
        };
        let mut t = WatchTable::new([1, 2]);
        let root = add(&mut t, c, "/", None).unwrap();
        let a = add(&mut t, c, "/a", None).unwrap();
        let ab = add(&mut t, c, "/a/b", Some(0)).unwrap();
        let a1 = add(&mut t, c, "/a", Some(1)).unwrap();
        let mut out = Vec::new();
        t.match_subtree(b"/a/b", &mut out);
        out.sort();
        let mut want = alloc::vec![root, a, ab, a1];
        want.sort();
        assert_eq!(out, want);
        out.clear();
        t.match_subtree(b"/a/b/c", &mut out);
        out.sort();
        let mut want = alloc::vec![root, a];
        want.sort();
        assert_eq!(out, want);
        out.clear();
        t.match_exact(b"/a", &mut out);
        out.sort();
        assert_eq!(out, [a, a1]);
        assert_eq!(t.find(c, b"/a/b", b"t"), Some(ab));
        assert_eq!(t.find(c, b"/a/b", b"u"), None);
        t.remove(ab).unwrap();
        out.clear();
        t.match_exact(b"/a/b", &mut out);
        assert_eq!(out, []);
        for w in [root, a, a1] {
            t.remove(w).unwrap();
        }
        assert!(t.is_empty());
        assert!(!t.any_node_watches());
        assert_eq!(t.levels, 0, "no level left to probe");
    }

    #[test]
    fn long_paths_and_shared_buckets() {
        let c = Id {
            index: 0,
            generation: 0,
        };
        let mut t = WatchTable::new([3, 4]);
        let long = alloc::format!("/{}", "x".repeat(100));
        let a = add(&mut t, c, &long, None).unwrap();
        let b = add(&mut t, c, &long, None).unwrap();
        let mut out = Vec::new();
        t.match_subtree(alloc::format!("{long}/y").as_bytes(), &mut out);
        assert_eq!(out, [a, b]);
        t.remove(a).unwrap();
        out.clear();
        t.match_exact(long.as_bytes(), &mut out);
        assert_eq!(out, [b]);
        assert_eq!(core::mem::size_of::<Bucket>(), 64);
        assert_eq!(core::mem::align_of::<Bucket>(), 64);
    }

    #[test]
    fn tokens_and_event_paths_inline_or_on_the_heap() {
        for len in [0usize, 1, 16, 30, 31, 200, 300] {
            let bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let token = Token::new(&bytes);
            assert_eq!(&*token, &bytes[..]);
            assert_eq!(
                matches!(token.0, Small::Inline { .. }),
                len <= 30,
                "token of {len}"
            );
            assert_eq!(token.clone(), token);
            let path = EventPath::new(&bytes);
            assert_eq!(&*path, &bytes[..]);
            assert_eq!(
                matches!(path.0, Small::Inline { .. }),
                len <= 46,
                "path of {len}"
            );
        }
        assert!(core::mem::size_of::<WatchEvent>() <= 80);
        // Written over in place, shorter: equal to a fresh one with the same bytes.
        let mut reused: SmallPath = Small::new(b"/a/longer/path");
        reused.set(b"/a");
        assert_eq!(reused, Small::new(b"/a"));
        let mut queue = EventQueue::default();
        let long_token = Token::new(&[b't'; 40]);
        queue.push(b"/p", &Token::new(b"tok"), Some(1));
        queue.push(b"/q", &long_token, Some(2));
        let got: Vec<(&[u8], &[u8])> = queue.iter().map(|e| (&*e.path, &*e.token)).collect();
        assert_eq!(got, [(&b"/p"[..], &b"tok"[..]), (b"/q", &[b't'; 40])]);
    }

    /// The queue's index finds exactly the queued events the rule covers, by key and bytes:
    /// not after they are taken, not under another event's key, not special events; keys
    /// that collide are told apart by their bytes.
    #[test]
    fn the_event_queue_finds_queued_events_by_key_and_bytes() {
        let mut q = EventQueue::default();
        let (t, u) = (Token::new(b"t"), Token::new(b"u"));
        assert!(!q.contains(1, b"/a", b"t"));
        q.push(b"/a", &t, Some(1));
        // Same key, other bytes: a collision.
        q.push(b"/b", &t, Some(1));
        q.push(b"@releaseDomain", &t, None);
        q.push(b"/a", &u, Some(4));
        assert!(q.is_consistent());
        assert!(q.contains(1, b"/a", b"t"));
        assert!(q.contains(1, b"/b", b"t"));
        assert!(!q.contains(1, b"/c", b"t"), "key alone does not decide");
        assert!(!q.contains(2, b"/a", b"t"), "bytes alone do not either");
        assert!(
            !q.contains(3, b"@releaseDomain", b"t"),
            "special: not indexed"
        );
        assert!(q.contains(4, b"/a", b"u"));
        let (first, key) = q.pop().unwrap();
        assert_eq!((&*first.path, key), (&b"/a"[..], Some(1)));
        assert!(!q.contains(1, b"/a", b"t"));
        assert!(q.contains(1, b"/b", b"t"));
        q.pop();
        let (special, key) = q.pop().unwrap();
        assert_eq!((&*special.path, key), (&b"@releaseDomain"[..], None));
        assert!(q.is_consistent());
        // Sequence numbers carry on across a drained queue.
        q.pop();
        assert!(q.is_empty());
        for round in 0..3u64 {
            q.push(b"/a", &t, Some(1));
            q.push(b"/b", &t, Some(7));
            assert!(
                q.contains(1, b"/a", b"t") && q.contains(7, b"/b", b"t"),
                "{round}"
            );
            assert_eq!(q.pop().map(|(_, k)| k), Some(Some(1)));
            assert!(!q.contains(1, b"/a", b"t"));
            assert!(q.is_consistent());
            q.pop();
        }
        assert_eq!(q.index.len(), 0);
    }

    /// Event keys: computed once per path for all watchers of a change, or per reported
    /// path when a watch reports something else (relative), equal for equal path and token.
    #[test]
    fn event_keys_depend_on_path_and_token_only() {
        let c = Id {
            index: 0,
            generation: 0,
        };
        let mut t = WatchTable::new([13, 14]);
        let a = t.add(c, b"/x", b"tok", None, 0).unwrap();
        let b = t.add(c, b"/", b"tok", None, 0).unwrap();
        let other = t.add(c, b"/x/y", b"other", None, 0).unwrap();
        let path: &[u8] = b"/x/y";
        let hash = t.hash_path(path);
        let key = |w: u32, reported: &[u8], h: Option<u64>| {
            let watch = t.watches.get(w).unwrap();
            t.event_key(watch, reported, path, h)
        };
        assert_eq!(key(a, path, Some(hash)), key(b, path, Some(hash)));
        assert_eq!(key(a, path, Some(hash)), key(a, path, None));
        assert_ne!(key(a, path, Some(hash)), key(other, path, Some(hash)));
        // A reported path other than the changed one is hashed itself (the hash given is
        // for `path`).
        let copy = path.to_vec();
        assert_eq!(key(a, &copy, Some(hash ^ 1)), key(a, path, None));
        assert_ne!(key(a, b"/x", None), key(a, path, None));
        assert_ne!(event_key(5, 5), 0);
        assert_ne!(event_key(5, 6), event_key(6, 5));
    }

    /// Paths deeper than one probe batch: every ancestor is still matched once, with its
    /// depth limit, checked against a plain prefix comparison.
    #[test]
    fn paths_deeper_than_a_probe_batch() {
        let c = Id {
            index: 0,
            generation: 0,
        };
        let mut t = WatchTable::new([7, 8]);
        // Past the levels counted apart, too.
        let levels = LEVELS + PROBE_BATCH + 2;
        let path_at = |level: usize| -> alloc::string::String {
            if level == 0 {
                return "/".into();
            }
            (0..level).map(|i| alloc::format!("/s{i}")).collect()
        };
        // A watch on every level, those on odd levels limited to one level below.
        let mut registered = Vec::new();
        for level in 0..=levels {
            let depth = (level % 2 == 1).then_some(1);
            let w = add(&mut t, c, &path_at(level), depth).unwrap();
            registered.push((level, depth, w));
        }
        for changed in [
            1,
            PROBE_BATCH - 1,
            PROBE_BATCH,
            PROBE_BATCH + 1,
            LEVELS - 1,
            LEVELS,
            LEVELS + 1,
            levels,
        ] {
            let mut out = Vec::new();
            t.match_subtree(path_at(changed).as_bytes(), &mut out);
            out.sort();
            let mut want: Vec<u32> = registered
                .iter()
                .filter(|&&(level, depth, _)| {
                    level <= changed && depth.is_none_or(|d| changed - level <= d as usize)
                })
                .map(|&(_, _, w)| w)
                .collect();
            want.sort();
            assert_eq!(out, want, "change at level {changed}");
        }
    }

    /// Watches at a few levels, added and removed at random: matching (which probes only
    /// the levels some watch is on) agrees with a plain prefix comparison over all of them.
    #[test]
    fn matching_skips_only_levels_without_watches() {
        use proptest::prelude::*;
        let c = Id {
            index: 0,
            generation: 0,
        };
        let path = proptest::collection::vec(proptest::sample::select(&["a", "b"][..]), 0..5)
            .prop_map(|segs| alloc::format!("/{}", segs.join("/")));
        let op = (any::<bool>(), path.clone(), proptest::option::of(0u32..3));
        proptest!(|(ops in proptest::collection::vec(op, 1..30), changed in path)| {
            let mut t = WatchTable::new([9, 10]);
            let mut live: Vec<(u32, alloc::string::String, Option<u32>)> = Vec::new();
            for (adding, p, depth) in ops {
                if adding || live.is_empty() {
                    let w = add(&mut t, c, &p, depth).unwrap();
                    live.push((w, p, depth));
                } else {
                    let (w, ..) = live.swap_remove(p.len() % live.len());
                    t.remove(w).unwrap();
                }
            }
            let level = |p: &str| p.split('/').filter(|s| !s.is_empty()).count();
            let mut want: Vec<u32> = live
                .iter()
                .filter(|(_, p, depth)| {
                    let under = p == "/" || changed == *p || changed.starts_with(&alloc::format!("{p}/"));
                    under && depth.is_none_or(|d| level(&changed) - level(p) <= d as usize)
                })
                .map(|(w, ..)| *w)
                .collect();
            want.sort();
            let mut out = Vec::new();
            t.match_subtree(changed.as_bytes(), &mut out);
            out.sort();
            prop_assert_eq!(out, want);
        });
    }

    /// A watch's path is found through its bucket, also after the table grew (its buckets
    /// moved) and after other watches on the same path went; removing a special watch
    /// leaves the node-watch counts alone.
    #[test]
    fn a_watch_finds_its_path_in_its_bucket() {
        let c = Id {
            index: 0,
            generation: 0,
        };
        let mut t = WatchTable::new([11, 12]);
        let path = |i: u32| alloc::format!("/local/domain/{}/device/vif/{}/state", i / 3, i % 3);
        let ids: Vec<u32> = (0..3000)
            .map(|i| add(&mut t, c, &path(i), None).unwrap())
            .collect();
        let shared = add(&mut t, c, &path(7), None).unwrap();
        let special = add(&mut t, c, "@releaseDomain", None).unwrap();
        for (i, &w) in ids.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
            assert_eq!(t.path_of(w), Some(path(i as u32).as_bytes()));
            t.remove(w).unwrap();
            assert_eq!(t.path_of(w), None, "removed");
        }
        for (i, &w) in ids.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
            assert_eq!(t.path_of(w), Some(path(i as u32).as_bytes()));
        }
        assert_eq!(t.path_of(shared), Some(path(7).as_bytes()));
        assert_eq!(t.path_of(special), Some(&b"@releaseDomain"[..]));
        let nodes = t.per_level;
        t.remove(special).unwrap();
        assert_eq!(t.per_level, nodes);
        assert_eq!(t.own_event_path(shared), path(7).into_bytes());
    }

    #[test]
    fn special_depth_rules() {
        let c = Id {
            index: 0,
            generation: 0,
        };
        let mut t = WatchTable::new([1, 2]);
        let plain = add(&mut t, c, "@releaseDomain", None).unwrap();
        let deep = add(&mut t, c, "@releaseDomain", Some(1)).unwrap();
        let zero = add(&mut t, c, "@releaseDomain", Some(0)).unwrap();
        let one = add(&mut t, c, "@releaseDomain/5", None).unwrap();
        let other = add(&mut t, c, "@releaseDomain/6", None).unwrap();
        let mut out = Vec::new();
        t.match_special(b"@releaseDomain", b"@releaseDomain/5", &mut out);
        assert_eq!(out, [(plain, false), (deep, true), (one, true)]);
        let _ = (zero, other);
    }

    #[test]
    fn special_watches_are_indexed_like_node_watches() {
        let mut t = WatchTable::new([5, 6]);
        let conn = |i: u32| Id {
            index: i,
            generation: 0,
        };
        let mut ids = Vec::new();
        for i in 0..1000 {
            let path = if i % 2 == 0 {
                "@releaseDomain"
            } else {
                "@releaseDomain/7"
            };
            ids.push(add(&mut t, conn(i), path, None).unwrap());
        }
        assert!(!t.any_node_watches());
        let mut out = Vec::new();
        t.match_subtree(b"/local", &mut out);
        assert!(out.is_empty());
        assert_eq!(t.find(conn(10), b"@releaseDomain", b"t"), Some(ids[10]));
        assert_eq!(t.find(conn(11), b"@releaseDomain/7", b"t"), Some(ids[11]));
        assert_eq!(t.find(conn(11), b"@releaseDomain", b"t"), None);
        for &w in ids.iter().take(500) {
            t.remove(w).unwrap();
        }
        let mut matched = Vec::new();
        t.match_special(b"@releaseDomain", b"@releaseDomain/7", &mut matched);
        matched.sort();
        let mut want: Vec<(u32, bool)> = ids[500..]
            .iter()
            .enumerate()
            .map(|(i, &w)| (w, i % 2 == 1))
            .collect();
        want.sort();
        assert_eq!(matched, want);
        matched.clear();
        t.match_special(b"@releaseDomain", b"@releaseDomain/8", &mut matched);
        assert_eq!(matched.len(), 250);
        assert!(matched.iter().all(|&(_, with_domid)| !with_domid));
    }
}
