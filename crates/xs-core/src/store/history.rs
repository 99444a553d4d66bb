//! Old versions of nodes, kept while an open transaction's snapshot still needs them.
//!
//! A transaction reads the store as it was when the transaction started (its snapshot
//! generation `S`). Nodes unchanged since `S` are read from the live tree. When a node that an
//! open transaction can still see is changed or deleted, its old value and permissions are
//! recorded here with the generations they were valid for (`from <= S < to`). Nothing is
//! recorded while no transaction is open, so starting a transaction costs the same whatever
//! the size of the store.
//!
//! Versions are appended in increasing `to` order and dropped from the front once no open
//! transaction started before their `to`. The total size is bounded by the store's history
//! limit: past it, the oldest transactions are doomed (their commit fails with `EAGAIN`)
//! instead of letting a transaction held open forever pin unbounded memory.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::arena::Id;
use crate::perms::Perm;

/// One old version of a node.
#[derive(Debug)]
pub(crate) struct Version {
    /// The node it is a version of: a transaction that read it checks at commit that this is
    /// still the node at the path (and not one created there again since).
    pub(crate) node: Option<Id>,
    /// First generation at which this version was current.
    pub(crate) from: u64,
    /// Generation of the change that replaced or deleted it.
    pub(crate) to: u64,
    pub(crate) value: Box<[u8]>,
    pub(crate) perms: Box<[Perm]>,
}

impl Version {
    fn covers(&self, snapshot: u64) -> bool {
        self.from <= snapshot && snapshot < self.to
    }

    fn bytes(&self, path_len: usize) -> usize {
        const OVERHEAD: usize = 64;
        OVERHEAD
            .saturating_add(path_len.saturating_mul(2))
            .saturating_add(self.value.len())
            .saturating_add(
                self.perms
                    .len()
                    .saturating_mul(core::mem::size_of::<Perm>()),
            )
    }
}

/// The history.
#[derive(Debug, Default)]
pub(crate) struct History {
    by_path: BTreeMap<Arc<[u8]>, Vec<Version>>,
    /// `(to, path)` in recording order, for pruning from the oldest.
    log: VecDeque<(u64, Arc<[u8]>)>,
    bytes: usize,
}

impl History {
    pub(crate) fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// Approximate heap bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records that `path` (node `node`) had `value`/`perms` from generation `from` until
    /// `to`.
    pub(crate) fn record(
        &mut self,
        path: &[u8],
        node: Option<Id>,
        from: u64,
        to: u64,
        value: &[u8],
        perms: &[Perm],
    ) {
        let version = Version {
            node,
            from,
            to,
            value: value.into(),
            perms: perms.into(),
        };
        self.bytes = self.bytes.saturating_add(version.bytes(path.len()));
        let key: Arc<[u8]> = match self.by_path.get_key_value(path) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(path),
        };
        self.by_path
            .entry(Arc::clone(&key))
            .or_default()
            .push(version);
        self.log.push_back((to, key));
    }

    /// The version of `path` current at `snapshot`, if one was recorded.
    pub(crate) fn version_at(&self, path: &[u8], snapshot: u64) -> Option<&Version> {
        self.by_path.get(path)?.iter().find(|v| v.covers(snapshot))
    }

    /// Children of `dir` (names and versions) that existed at `snapshot` according to the
    /// history, in name order.
    pub(crate) fn children_at<'a>(
        &'a self,
        dir: &'a [u8],
        snapshot: u64,
    ) -> impl Iterator<Item = (&'a [u8], &'a Version)> + 'a {
        let prefix_len = if dir == b"/" {
            1
        } else {
            dir.len().saturating_add(1)
        };
        let mut start = dir.to_vec();
        if dir != b"/" {
            start.push(b'/');
        }
        let mut end = start.clone();
        if let Some(last) = end.last_mut() {
            *last = b'/'.saturating_add(1);
        }
        let range: (core::ops::Bound<&[u8]>, core::ops::Bound<&[u8]>) = (
            core::ops::Bound::Included(start.as_slice()),
            core::ops::Bound::Excluded(end.as_slice()),
        );
        let found: Vec<(&'a [u8], &'a Version)> = self
            .by_path
            .range::<[u8], _>(range)
            .filter_map(|(path, versions)| {
                let name = path.get(prefix_len..)?;
                if name.is_empty() || name.contains(&b'/') {
                    return None;
                }
                versions
                    .iter()
                    .find(|v| v.covers(snapshot))
                    .map(|v| (name, v))
            })
            .collect();
        found.into_iter()
    }

    /// Drops every version no transaction that started at or after `oldest_open` can need
    /// (those replaced at or before it).
    pub(crate) fn prune(&mut self, oldest_open: Option<u64>) {
        let Some(oldest) = oldest_open else {
            self.by_path.clear();
            self.log.clear();
            self.bytes = 0;
            return;
        };
        while let Some((to, _)) = self.log.front() {
            if *to > oldest {
                break;
            }
            let Some((_, path)) = self.log.pop_front() else {
                break;
            };
            let mut now_empty = false;
            if let Some(versions) = self.by_path.get_mut(&path) {
                if !versions.is_empty() {
                    let v = versions.remove(0);
                    self.bytes = self.bytes.saturating_sub(v.bytes(path.len()));
                }
                now_empty = versions.is_empty();
            }
            if now_empty {
                self.by_path.remove(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domid::DomId;

    #[test]
    fn versions_cover_their_range_and_prune() {
        let mut h = History::default();
        let p = [Perm::owner(DomId(0))];
        h.record(b"/a", None, 1, 5, b"one", &p);
        h.record(b"/a", None, 5, 9, b"two", &p);
        h.record(b"/a/b", None, 2, 9, b"child", &p);
        h.record(b"/a/b/c", None, 2, 9, b"grandchild", &p);
        assert_eq!(&*h.version_at(b"/a", 4).unwrap().value, b"one");
        assert_eq!(&*h.version_at(b"/a", 5).unwrap().value, b"two");
        assert!(h.version_at(b"/a", 9).is_none());
        assert!(h.version_at(b"/a", 0).is_none());
        let kids: Vec<&[u8]> = h.children_at(b"/a", 3).map(|(n, _)| n).collect();
        assert_eq!(kids, [&b"b"[..]]);
        let top: Vec<&[u8]> = h.children_at(b"/", 3).map(|(n, _)| n).collect();
        assert_eq!(top, [&b"a"[..]]);
        h.prune(Some(5));
        assert!(h.version_at(b"/a", 4).is_none());
        assert!(h.version_at(b"/a", 6).is_some());
        h.prune(None);
        assert!(h.is_empty());
        assert_eq!(h.bytes(), 0);
    }
}
