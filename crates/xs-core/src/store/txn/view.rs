//! The view: how a transaction resolves a path against its snapshot and its overlay, and
//! how what it relies on is noted in its read set (see the module docs of `txn`).

use super::{Aspects, Info, Origin, Read, Resolved, Src, Transaction, TxEntry, entry_charge};
use crate::error::{XsError, XsResult};
use crate::quota::QuotaKind;
use crate::store::Store;
use crate::store::access::{Caller, Rights};
use crate::store::arena::Id;
use crate::store::tree::KeyedSegments;

impl Store {
    // ----- the view ------------------------------------------------------------------------

    /// Whether a prefix is in the snapshot, given the live node at it (if any).
    fn snap_visible(&self, live: Option<u32>, prefix: &[u8], at: u64) -> Option<Src> {
        if let Some(i) = live
            && self.tree.node(i).is_some_and(|n| n.data_gen <= at)
        {
            return Some(Src::Main(i));
        }
        if !self.history.is_empty() && self.history.version_at(prefix, at).is_some() {
            return Some(Src::History);
        }
        None
    }

    /// `path` in the transaction's view.
    pub(super) fn resolve(&self, t: &Transaction, path: &[u8]) -> Resolved {
        if t.hiding == 0
            && let Some(r) = self.resolve_unhidden(t, path)
        {
            return r;
        }
        self.resolve_walk(t, path)
    }

    /// [`Store::resolve`] prefix by prefix, each checked in the overlay (when it hides parts
    /// of the live tree), in the live tree and in the history.
    fn resolve_walk(&self, t: &Transaction, path: &[u8]) -> Resolved {
        let at = t.view_at();
        let root = self.tree.root;
        let mut r = Resolved {
            exists: false,
            nearest_len: 1,
            nearest: self
                .snap_visible(Some(root), b"/", at)
                .unwrap_or(Src::Main(root)),
            nearest_origin: None,
            missing_from_snapshot: None,
            under_created: false,
        };
        if let Some(n) = t.present(b"/") {
            r.nearest = Src::Overlay;
            r.nearest_origin = Some(n.origin);
        }
        let every_prefix = t.hiding > 0;
        let mut live = Some(root);
        let mut hidden = false;
        let mut under_created = false;
        for seg in KeyedSegments::new(path) {
            let end = seg.end;
            let prefix = path.get(..end).unwrap_or_default();
            live = live.and_then(|m| self.tree.child_keyed(m, seg.key, seg.name));
            let entry = if every_prefix {
                t.overlay.get(prefix)
            } else {
                None
            };
            let found = match entry {
                Some(TxEntry::Deleted { .. }) => None,
                Some(TxEntry::Present(n)) => Some((Src::Overlay, Some(n.origin))),
                None if hidden => None,
                None => self.snap_visible(live, prefix, at).map(|s| (s, None)),
            };
            let Some((src, origin)) = found else {
                if entry.is_none() && (!hidden || under_created) {
                    r.missing_from_snapshot = Some(end);
                }
                break;
            };
            if !hidden && origin == Some(Origin::Created) {
                under_created = true;
            }
            if origin.is_some_and(|o| o != Origin::Snapshot) {
                hidden = true;
            }
            r.nearest_len = end;
            r.nearest = src;
            r.nearest_origin = origin;
        }
        r.under_created = under_created;
        r.exists = r.nearest_len == path.len();
        if !every_prefix {
            let nearest = path.get(..r.nearest_len).unwrap_or_default();
            if let Some(n) = t.present(nearest) {
                r.nearest = Src::Overlay;
                r.nearest_origin = Some(n.origin);
            }
        }
        r
    }

    /// [`Store::resolve`] in the common case, with one walk of the live tree (which the
    /// tree's cursor shortens): nothing in the overlay hides the live tree, and the deepest
    /// live node on the path is unchanged since the snapshot. Its ancestors then existed at
    /// the snapshot and ever since (a node is created after its parent and removed with it),
    /// so every prefix down to it is in the view, each either live and unchanged or kept by
    /// the history. With no history, the first missing segment was missing at the snapshot
    /// too. `None` when these do not hold: the full walk decides.
    fn resolve_unhidden(&self, t: &Transaction, path: &[u8]) -> Option<Resolved> {
        let (node, nearest_len) = self.tree.lookup_nearest(path);
        if self.tree.node(node)?.data_gen > t.view_at() {
            return None;
        }
        let exists = nearest_len == path.len();
        let missing_from_snapshot = if exists {
            None
        } else if self.history.is_empty() {
            KeyedSegments::below(path, nearest_len)
                .next()
                .map(|s| s.end)
        } else {
            return None;
        };
        let mut r = Resolved {
            exists,
            nearest_len,
            nearest: Src::Main(node),
            nearest_origin: None,
            missing_from_snapshot,
            under_created: false,
        };
        if let Some(n) = t.present(path.get(..nearest_len).unwrap_or_default()) {
            r.nearest = Src::Overlay;
            r.nearest_origin = Some(n.origin);
        }
        Some(r)
    }

    pub(super) fn info<'a>(
        &'a self,
        t: &'a Transaction,
        path: &[u8],
        src: Src,
    ) -> Option<Info<'a>> {
        match src {
            Src::Main(i) => self.tree.node(i).map(|n| Info {
                value: n.value(),
                perms: n.perm_vec(),
                stamp: n.data_gen,
                child_name_bytes: n.child_name_bytes(),
            }),
            Src::History => self.history.version_at(path, t.view_at()).map(|v| Info {
                value: &v.value,
                perms: v.perms.to_vec(),
                stamp: v.from,
                child_name_bytes: 0,
            }),
            Src::Overlay => t.present(path).map(|n| Info {
                value: &n.value,
                perms: n.perms.clone(),
                stamp: n.stamp,
                child_name_bytes: 0,
            }),
        }
    }

    /// The live node a snapshot node of `path` stands for (for a node changed since the
    /// snapshot, the one its kept version was of).
    pub(super) fn src_id(&self, t: &Transaction, path: &[u8], src: Src) -> Option<Id> {
        match src {
            Src::Main(i) => self.tree.nodes.id_at(i),
            Src::History => self
                .history
                .version_at(path, t.view_at())
                .and_then(|v| v.node),
            Src::Overlay => t.present(path).and_then(|n| n.live),
        }
    }

    pub(super) fn info_rights(&self, caller: &Caller, info: &Info<'_>) -> Rights {
        self.rights_for(caller, info.perms.iter().copied(), info.stamp)
    }

    /// Records that the transaction relied on `aspect` of `path`, as far as that came from
    /// the snapshot (for a node in the overlay, see `TxNode::rely`). `ENOSPC` past the
    /// caller's `transaction-nodes` quota.
    pub(super) fn note(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        src: Src,
        aspect: Aspects,
    ) -> XsResult<()> {
        if src == Src::Overlay {
            if let Some(TxEntry::Present(n)) = t.overlay.get_mut(path) {
                n.rely(aspect);
            }
            return Ok(());
        }
        let live = self.src_id(t, path, src);
        self.note_read(t, caller, path, aspect, live)
    }

    pub(super) fn note_path(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        aspect: Aspects,
    ) -> XsResult<()> {
        self.note_read(t, caller, path, aspect, None)
    }

    fn note_read(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        aspect: Aspects,
        live: Option<Id>,
    ) -> XsResult<()> {
        if let Some(r) = t.reads.get_mut(path) {
            r.aspects |= aspect;
            r.live = r.live.or(live);
            return Ok(());
        }
        self.check_quota(
            caller,
            QuotaKind::TransactionNodes,
            t.accessed().saturating_add(1),
        )?;
        // The read set is kept until the transaction ends: charged like the overlay, so that
        // a guest reading many long paths (missing ones included) meets its memory quota.
        let charge = entry_charge(path.len());
        self.check_memory(caller, charge)?;
        t.reads.insert(
            path.into(),
            Read {
                aspects: aspect,
                live,
            },
        );
        self.tx_charge(t, caller.domid, i64::try_from(charge).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Records what a failed lookup relied on. A privileged caller's result only depends on
    /// `path` being absent; an unprivileged caller's error (`ENOENT` or `EACCES`) also
    /// depends on which ancestor is the nearest existing one and on its permissions, so for
    /// it the first missing prefix must stay missing and the nearest node's permissions
    /// unchanged.
    pub(super) fn note_missing(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        r: &Resolved,
    ) -> XsResult<()> {
        // Missing because the transaction deleted it (no `missing_from_snapshot`): its commit
        // deletes it again, so only the nearest node's permissions remain to be relied on.
        if caller.privileged {
            return match r.missing_from_snapshot {
                Some(_) => self.note_path(t, caller, path, Aspects::ABSENT),
                None => Ok(()),
            };
        }
        if let Some(first_missing) = r.missing_from_snapshot {
            self.note_path(
                t,
                caller,
                path.get(..first_missing).unwrap_or(path),
                Aspects::ABSENT,
            )?;
        }
        self.note(
            t,
            caller,
            path.get(..r.nearest_len).unwrap_or(path),
            r.nearest,
            Aspects::PERMS,
        )
    }

    /// Resolves `path` and checks `need` on it, recording what the outcome relied on.
    pub(super) fn tx_checked(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        need: Rights,
    ) -> XsResult<Resolved> {
        let r = self.resolve(t, path);
        let nearest = path.get(..r.nearest_len).unwrap_or(path);
        let rights = self
            .info(t, nearest, r.nearest)
            .map_or(Rights::empty(), |i| self.info_rights(caller, &i));
        if !r.exists {
            self.note_missing(t, caller, path, &r)?;
            return Err(Store::missing_error(rights, need));
        }
        if !caller.privileged || !rights.contains(need) {
            self.note(t, caller, path, r.nearest, Aspects::PERMS)?;
        }
        if rights.contains(need) {
            Ok(r)
        } else {
            Err(XsError::Acces)
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;

    use proptest::prelude::*;

    use super::*;
    use crate::domid::DomId;
    use crate::store::{StoreConfig, TxId};

    /// Paths over a small name space, so that operations collide.
    fn path() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(proptest::sample::select(&["a", "b", "c"][..]), 1..4)
            .prop_map(|segs| format!("/{}", segs.join("/")).into_bytes())
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write(Vec<u8>),
        Rm(Vec<u8>),
        Start,
        TxWrite(usize, Vec<u8>),
        TxRm(usize, Vec<u8>),
        End(usize, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            path().prop_map(Op::Write),
            path().prop_map(Op::Rm),
            Just(Op::Start),
            (0..3usize, path()).prop_map(|(t, p)| Op::TxWrite(t, p)),
            (0..3usize, path()).prop_map(|(t, p)| Op::TxRm(t, p)),
            (0..3usize, any::<bool>()).prop_map(|(t, c)| Op::End(t, c)),
        ]
    }

    proptest! {
        /// Whenever the one-walk resolution applies, it agrees with the prefix-by-prefix
        /// walk, for every path of the name space in every open transaction, over live
        /// changes (which fill the history) and transactions' own writes and removals.
        #[test]
        fn resolving_in_one_walk_matches_the_full_walk(
            ops in proptest::collection::vec(op(), 1..40)
        ) {
            let mut store = Store::new(StoreConfig::new([1, 2])).unwrap();
            let conn = store.connect(DomId::DOM0).unwrap();
            let mut txs: Vec<TxId> = Vec::new();
            let all: Vec<Vec<u8>> = ["a", "b", "c"]
                .iter()
                .flat_map(|x| ["a", "b", "c"].iter().map(move |y| format!("/{x}/{y}")))
                .chain(["/", "/a", "/b", "/c", "/a/b/c", "/c/c/c"].iter().map(|p| (*p).into()))
                .map(String::into_bytes)
                .collect();
            for op in ops {
                let _ = match op {
                    Op::Write(p) => store.write(conn, 0, &p, b"v"),
                    Op::Rm(p) => store.rm(conn, 0, &p),
                    Op::Start => store.transaction_start(conn).map(|t| txs.push(t)),
                    Op::TxWrite(i, p) => match txs.get(i) {
                        Some(&t) => store.write(conn, t, &p, b"t"),
                        None => Ok(()),
                    },
                    Op::TxRm(i, p) => match txs.get(i) {
                        Some(&t) => store.rm(conn, t, &p),
                        None => Ok(()),
                    },
                    Op::End(i, commit) if i < txs.len() => {
                        let t = txs.remove(i);
                        store.transaction_end(conn, t, commit)
                    }
                    Op::End(..) => Ok(()),
                };
                let c = store.conns.get_id(conn.0).unwrap();
                for t in c.transactions.values().filter(|t| t.hiding == 0) {
                    for p in &all {
                        if let Some(fast) = store.resolve_unhidden(t, p) {
                            prop_assert_eq!(fast, store.resolve_walk(t, p), "{:?}", p);
                        }
                    }
                }
            }
        }
    }
}
