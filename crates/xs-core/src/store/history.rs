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
//! transaction's snapshot is older than their `to`. Each version is accounted to the domain
//! whose change replaced it (its writer). Past a bound (the store's history limit, or a
//! writer's memory quota), the store rebases the open transactions instead of keeping more
//! (see `Store::settle_history`): a transaction held open forever cannot pin unbounded
//! memory, and a guest churning its own nodes cannot make unrelated transactions fail.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::arena::Id;
use crate::domid::DomId;
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
    /// The domain that made that change, which the version is accounted to.
    writer: DomId,
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
    /// Bytes by writer: at most one entry per domain with versions kept.
    by_writer: BTreeMap<DomId, usize>,
}

impl History {
    pub(crate) fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// Approximate heap bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Approximate heap bytes held for versions `writer` replaced.
    pub(crate) fn bytes_of(&self, writer: DomId) -> usize {
        self.by_writer.get(&writer).copied().unwrap_or(0)
    }

    /// Records that `path` (node `node`) had `value`/`perms` from generation `from` until
    /// `to`, when `writer` changed it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &mut self,
        path: &[u8],
        node: Option<Id>,
        from: u64,
        to: u64,
        value: &[u8],
        perms: &[Perm],
        writer: DomId,
    ) {
        let version = Version {
            node,
            from,
            to,
            writer,
            value: value.into(),
            perms: perms.into(),
        };
        let size = version.bytes(path.len());
        self.bytes = self.bytes.saturating_add(size);
        let of_writer = self.by_writer.entry(writer).or_insert(0);
        *of_writer = of_writer.saturating_add(size);
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
            self.by_writer.clear();
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
                    let size = v.bytes(path.len());
                    self.bytes = self.bytes.saturating_sub(size);
                    if let Some(of_writer) = self.by_writer.get_mut(&v.writer) {
                        *of_writer = of_writer.saturating_sub(size);
                        if *of_writer == 0 {
                            self.by_writer.remove(&v.writer);
                        }
                    }
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
        let (d0, d7) = (DomId(0), DomId(7));
        h.record(b"/a", None, 1, 5, b"one", &p, d7);
        h.record(b"/a", None, 5, 9, b"two", &p, d0);
        h.record(b"/a/b", None, 2, 9, b"child", &p, d7);
        h.record(b"/a/b/c", None, 2, 9, b"grandchild", &p, d7);
        assert_eq!(h.bytes_of(d0) + h.bytes_of(d7), h.bytes());
        assert_eq!(&*h.version_at(b"/a", 4).unwrap().value, b"one");
        assert_eq!(&*h.version_at(b"/a", 5).unwrap().value, b"two");
        assert!(h.version_at(b"/a", 9).is_none());
        assert!(h.version_at(b"/a", 0).is_none());
        let kids: Vec<&[u8]> = h.children_at(b"/a", 3).map(|(n, _)| n).collect();
        assert_eq!(kids, [&b"b"[..]]);
        let top: Vec<&[u8]> = h.children_at(b"/", 3).map(|(n, _)| n).collect();
        assert_eq!(top, [&b"a"[..]]);
        let before = h.bytes_of(d7);
        h.prune(Some(5));
        assert!(
            h.bytes_of(d7) < before,
            "the pruned version was accounted to its writer"
        );
        assert_eq!(h.bytes_of(d0) + h.bytes_of(d7), h.bytes());
        assert!(h.version_at(b"/a", 4).is_none());
        assert!(h.version_at(b"/a", 6).is_some());
        h.prune(None);
        assert!(h.is_empty());
        assert_eq!(h.bytes(), 0);
        assert_eq!(h.bytes_of(d7), 0);
    }
}
