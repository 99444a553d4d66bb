//! Watches: a path trie for matching, and per-connection bounded event queues.
//!
//! Watches on node paths hang off a trie keyed by path segment, so an event at depth `d` is
//! matched by walking at most `d` trie levels, whatever the number of watches (a scan over all
//! watches would let 100k watches slow every write by 100k). Special watches (`@...`) are few
//! and kept in a list.
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
//! notification, and memory stays bounded by the queue length plus one flag per watch.
//! (C xenstored instead drops events after a timeout or over quota; oxenstored stops reading
//! from the connection.)

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;

use super::arena::{Arena, Id};
use crate::error::XsResult;
use crate::path::segments;

/// An event waiting to be sent: `WATCH_EVENT <path>|<token>|`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WatchEvent {
    /// The event path, relative if the watch was registered with a relative path.
    pub path: Box<[u8]>,
    /// The watch's token.
    pub token: Rc<[u8]>,
}

/// A registered watch.
#[derive(Debug)]
pub(crate) struct Watch {
    pub(crate) conn: Id,
    /// Canonical absolute path, or a special path starting with `@`.
    pub(crate) path: Box<[u8]>,
    pub(crate) token: Rc<[u8]>,
    /// Levels below `path` that still match (`XENSTORE_SERVER_FEATURE_WATCHDEPTH`).
    pub(crate) depth: Option<u32>,
    /// Length of `/local/domain/<domid>/` if the watch was registered relative.
    pub(crate) relative_prefix: usize,
    /// Events were dropped at the queue bound; one catch-up event is owed.
    pub(crate) missed: bool,
}

impl Watch {
    /// The path to report for an event at `path` (relative if the watch is).
    pub(crate) fn event_path<'a>(&self, path: &'a [u8]) -> &'a [u8] {
        path.get(self.relative_prefix..).unwrap_or(path)
    }

    /// The bytes charged to the watching domain.
    pub(crate) fn charge(&self) -> u64 {
        charge_watch(self.path.len(), self.token.len())
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
    const OVERHEAD: u64 = 48;
    OVERHEAD
        .saturating_add(event.path.len() as u64)
        .saturating_add(event.token.len() as u64)
}

#[derive(Debug, Default)]
struct TrieNode {
    children: BTreeMap<Box<[u8]>, u32>,
    watches: Vec<u32>,
}

/// All watches.
#[derive(Debug)]
pub(crate) struct WatchTable {
    pub(crate) watches: Arena<Watch>,
    trie: Arena<TrieNode>,
    root: u32,
    special: Vec<u32>,
}

impl WatchTable {
    pub(crate) fn new() -> XsResult<WatchTable> {
        let mut trie = Arena::default();
        let root = trie.insert(TrieNode::default())?.index;
        Ok(WatchTable {
            watches: Arena::default(),
            trie,
            root,
            special: Vec::new(),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.watches.len() == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.watches.len()
    }

    fn trie_child(&self, node: u32, seg: &[u8]) -> Option<u32> {
        self.trie.get(node)?.children.get(seg).copied()
    }

    /// The trie node of a node path, if any watch is at or below it.
    fn trie_find(&self, path: &[u8]) -> Option<u32> {
        segments(path).try_fold(self.root, |cur, seg| self.trie_child(cur, seg))
    }

    /// Registers a watch and returns its index.
    pub(crate) fn add(&mut self, watch: Watch) -> XsResult<u32> {
        let special = watch.path.first() == Some(&b'@');
        let path = watch.path.clone();
        let index = self.watches.insert(watch)?.index;
        if special {
            self.special.push(index);
            return Ok(index);
        }
        let mut cur = self.root;
        for seg in segments(&path) {
            cur = match self.trie_child(cur, seg) {
                Some(next) => next,
                None => {
                    let next = self.trie.insert(TrieNode::default())?.index;
                    if let Some(node) = self.trie.get_mut(cur) {
                        node.children.insert(seg.into(), next);
                    }
                    next
                }
            };
        }
        if let Some(node) = self.trie.get_mut(cur) {
            node.watches.push(index);
        }
        Ok(index)
    }

    /// Unregisters a watch, pruning trie nodes left empty.
    pub(crate) fn remove(&mut self, index: u32) -> Option<Watch> {
        let watch = self.watches.remove(index)?;
        if watch.path.first() == Some(&b'@') {
            self.special.retain(|&w| w != index);
            return Some(watch);
        }
        let mut trail = alloc::vec![self.root];
        for seg in segments(&watch.path) {
            let next = trail.last().and_then(|&cur| self.trie_child(cur, seg));
            match next {
                Some(next) => trail.push(next),
                None => break,
            }
        }
        if trail.len() != segments(&watch.path).count().saturating_add(1) {
            return Some(watch);
        }
        if let Some(node) = trail.last().and_then(|&t| self.trie.get_mut(t)) {
            node.watches.retain(|&w| w != index);
        }
        // Prune from the bottom while nodes are empty.
        let segs: Vec<&[u8]> = segments(&watch.path).collect();
        for (level, seg) in segs.iter().enumerate().rev() {
            let (Some(&node), Some(&parent)) =
                (trail.get(level.saturating_add(1)), trail.get(level))
            else {
                break;
            };
            let empty = self
                .trie
                .get(node)
                .is_some_and(|n| n.children.is_empty() && n.watches.is_empty());
            if !empty {
                break;
            }
            self.trie.remove(node);
            if let Some(p) = self.trie.get_mut(parent) {
                p.children.remove(*seg);
            }
        }
        Some(watch)
    }

    /// The watch of `conn` on `path` with `token`, if registered.
    pub(crate) fn find(&self, conn: Id, path: &[u8], token: &[u8]) -> Option<u32> {
        let candidates: &[u32] = if path.first() == Some(&b'@') {
            &self.special
        } else {
            self.trie_find(path)
                .and_then(|t| self.trie.get(t))
                .map_or(&[], |n| n.watches.as_slice())
        };
        candidates.iter().copied().find(|&w| {
            self.watches
                .get(w)
                .is_some_and(|w| w.conn == conn && &*w.path == path && &*w.token == token)
        })
    }

    /// Watches matching a change at `path` that affects its subtree: watches on `path` and on
    /// its ancestors, within their depth limits.
    pub(crate) fn match_subtree(&self, path: &[u8], out: &mut Vec<u32>) {
        let total = segments(path).count();
        let mut cur = Some(self.root);
        let mut level = 0usize;
        let mut segs = segments(path);
        while let Some(t) = cur {
            let Some(node) = self.trie.get(t) else {
                break;
            };
            let below = total.saturating_sub(level);
            out.extend(node.watches.iter().copied().filter(|&w| {
                self.watches.get(w).is_some_and(|w| {
                    w.depth
                        .is_none_or(|d| u64::try_from(below).is_ok_and(|b| b <= u64::from(d)))
                })
            }));
            cur = segs.next().and_then(|seg| node.children.get(seg).copied());
            level = level.saturating_add(1);
        }
    }

    /// Watches registered exactly on `path`.
    pub(crate) fn match_exact(&self, path: &[u8], out: &mut Vec<u32>) {
        if let Some(node) = self.trie_find(path).and_then(|t| self.trie.get(t)) {
            out.extend_from_slice(&node.watches);
        }
    }

    /// Whether any watch is registered strictly below `path`.
    pub(crate) fn any_below(&self, path: &[u8]) -> bool {
        self.trie_find(path)
            .and_then(|t| self.trie.get(t))
            .is_some_and(|n| !n.children.is_empty())
    }

    /// Special watches matching the special event `name` about `domid`, each with whether the
    /// event path carries the domid (`@releaseDomain/<domid>`): exact watches on `name` without
    /// a depth get `name`; watches on `name/<domid>`, and watches on `name` with a depth of at
    /// least 1, get `name/<domid>` (`docs/misc/xenstore.txt`, WATCH).
    pub(crate) fn match_special(&self, name: &[u8], with_domid: &[u8], out: &mut Vec<(u32, bool)>) {
        for &w in &self.special {
            let Some(watch) = self.watches.get(w) else {
                continue;
            };
            if &*watch.path == name {
                match watch.depth {
                    None => out.push((w, false)),
                    Some(d) if d >= 1 => out.push((w, true)),
                    Some(_) => {}
                }
            } else if &*watch.path == with_domid {
                out.push((w, true));
            }
        }
    }

    /// Number of trie nodes.
    #[cfg(test)]
    pub(crate) fn trie_nodes(&self) -> usize {
        self.trie.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(conn: Id, path: &str, depth: Option<u32>) -> Watch {
        Watch {
            conn,
            path: path.as_bytes().into(),
            token: Rc::from(&b"t"[..]),
            depth,
            relative_prefix: 0,
            missed: false,
        }
    }

    #[test]
    fn subtree_exact_depth_and_pruning() {
        let c = Id {
            index: 0,
            generation: 0,
        };
        let mut t = WatchTable::new().unwrap();
        let root = t.add(watch(c, "/", None)).unwrap();
        let a = t.add(watch(c, "/a", None)).unwrap();
        let ab = t.add(watch(c, "/a/b", Some(0))).unwrap();
        let a1 = t.add(watch(c, "/a", Some(1))).unwrap();
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
        assert!(t.any_below(b"/a"));
        assert!(!t.any_below(b"/a/b"));
        assert_eq!(t.find(c, b"/a/b", b"t"), Some(ab));
        assert_eq!(t.find(c, b"/a/b", b"u"), None);
        t.remove(ab).unwrap();
        assert!(!t.any_below(b"/a"));
        for w in [root, a, a1] {
            t.remove(w).unwrap();
        }
        assert!(t.is_empty());
        assert_eq!(t.trie_nodes(), 1);
    }

    #[test]
    fn special_depth_rules() {
        let c = Id {
            index: 0,
            generation: 0,
        };
        let mut t = WatchTable::new().unwrap();
        let plain = t.add(watch(c, "@releaseDomain", None)).unwrap();
        let deep = t.add(watch(c, "@releaseDomain", Some(1))).unwrap();
        let zero = t.add(watch(c, "@releaseDomain", Some(0))).unwrap();
        let one = t.add(watch(c, "@releaseDomain/5", None)).unwrap();
        let other = t.add(watch(c, "@releaseDomain/6", None)).unwrap();
        let mut out = Vec::new();
        t.match_special(b"@releaseDomain", b"@releaseDomain/5", &mut out);
        assert_eq!(out, [(plain, false), (deep, true), (one, true)]);
        let _ = (zero, other);
    }
}
