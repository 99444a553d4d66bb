//! Transactions: a snapshot view, a copy-on-write overlay, and validation at commit.
//!
//! ## The view
//!
//! A transaction sees the store as it was at its start (generation `S`), with its own
//! changes on top:
//!
//! * the **snapshot**: live nodes last changed at or before `S`, and for nodes changed or
//!   deleted since, the versions the [`super::history`] kept for open transactions;
//! * the **overlay**: the transaction's own writes, keyed by path. An entry is either
//!   `Deleted` or a present node with its value and permissions. Entries whose node did not
//!   exist in the snapshot (or was deleted and created again in the transaction) hide
//!   whatever the live tree holds below them.
//!
//! Starting a transaction allocates one record: it costs the same with a thousand nodes or a
//! million.
//!
//! ## Commit
//!
//! Every snapshot fact the transaction relied on is recorded in its read set: values and
//! permissions it read or checked (`DATA`), child lists it listed (`CHILDREN`), nodes it
//! needed to exist (`EXISTS`), paths it found missing (`ABSENT`). (An overwritten node's
//! `Snapshot` overlay entry records its read itself: the entry is checked at commit as the
//! read would be, and the read moves to the read set if the entry goes.) The commit fails with
//! `EAGAIN` exactly when one of those changed since `S`; otherwise the overlay is applied in
//! path order (parents before children) at one new generation, and watches fire then.
//! Validation and application cost what the transaction touched, not the size of the store.
//!
//! Writes the transaction did not read are not conflicts: the commit behaves as if it ran
//! after the concurrent change (serializable), so transactions creating disjoint subtrees
//! under a shared parent both commit. Nodes created on the way (missing parents) merge with
//! the same node created concurrently when both got the same permissions (the boot-storm
//! case of two toolstack transactions creating `/local/domain/0/backend/vif/<domid>/0` for
//! different domids). This is stricter than C xenstored in one way: a node the transaction
//! read and then wrote is still checked (C lets such a write silently overwrite a concurrent
//! one), and more permissive in another: C treats any change to a parent's child list as a
//! conflict.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::mem;
use core::ops::Bound;

use bitflags::bitflags;

use super::access::{Caller, Rights};
use super::arena::Id;
use super::ops::WriteKind;
use super::tree::KeyedSegments;
use super::{ConnId, Match, Store, TxId, node_charge};
use crate::error::{XsError, XsResult};
use crate::path;
use crate::perms::Perm;
use crate::quota::QuotaKind;

bitflags! {
    /// What a transaction relied on about one path of its snapshot.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(crate) struct Aspects: u8 {
        /// The node existed (and is the same node).
        const EXISTS = 0x01;
        /// Its value and permissions.
        const DATA = 0x02;
        /// Its set of children.
        const CHILDREN = 0x04;
        /// The path did not exist.
        const ABSENT = 0x08;
    }
}

/// Where an overlay node came from, which decides how it is applied at commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Origin {
    /// Existed in the snapshot; the transaction changed its value or permissions.
    Snapshot,
    /// Did not exist in the snapshot; created by the transaction. Merges with a node created
    /// concurrently at the same path if their permissions agree.
    Created,
    /// Existed in the snapshot, was deleted and created again: replaces the live subtree.
    Recreated,
    /// Created below a `Recreated` node: the live counterpart is removed with it.
    Fresh,
}

/// What a transaction relied on about one path, and the live node it saw there (nodes never
/// move, so the id stands for the path at commit without walking the tree again).
#[derive(Clone, Copy, Debug)]
struct Read {
    aspects: Aspects,
    live: Option<Id>,
}

#[derive(Debug)]
pub(crate) struct TxNode {
    value: Vec<u8>,
    perms: Vec<Perm>,
    /// Generation the permissions were taken at (for the liveness of their entries).
    stamp: u64,
    origin: Origin,
    value_set: bool,
    perms_set: bool,
    /// The node was the target of an operation: its change fires watches at commit.
    event: bool,
    /// For a `Snapshot` node seen in the live tree: that node.
    live: Option<Id>,
}

#[derive(Debug)]
pub(crate) enum TxEntry {
    Deleted { event: bool },
    Present(TxNode),
}

impl TxEntry {
    /// Whether the live tree below this entry is invisible in the transaction's view.
    fn hides(&self) -> bool {
        match self {
            TxEntry::Deleted { .. } => true,
            TxEntry::Present(n) => n.origin != Origin::Snapshot,
        }
    }

    /// Whether the entry stands for a read of its node (see `Transaction::keep_read`).
    fn carries_read(&self) -> bool {
        matches!(self, TxEntry::Present(n) if n.origin == Origin::Snapshot)
    }

    fn charge(&self, path_len: usize) -> u64 {
        let payload = match self {
            TxEntry::Deleted { .. } => 0,
            TxEntry::Present(n) => {
                (n.value.len() as u64).saturating_add((n.perms.len() as u64).saturating_mul(4))
            }
        };
        entry_charge(path_len).saturating_add(payload)
    }
}

/// Memory charged for an entry of a transaction's overlay or read set, besides its payload:
/// the path it is keyed by and a share of the map's bookkeeping.
fn entry_charge(path_len: usize) -> u64 {
    const OVERHEAD: u64 = 64;
    OVERHEAD.saturating_add(path_len as u64)
}

/// Memory charged for a transaction besides its entries.
const TX_CHARGE: u64 = 256;

/// An open transaction.
#[derive(Debug)]
pub(crate) struct Transaction {
    pub(crate) snapshot: u64,
    /// Its snapshot could not be kept (history limit): the commit will fail.
    pub(crate) doomed: bool,
    overlay: BTreeMap<Box<[u8]>, TxEntry>,
    reads: BTreeMap<Box<[u8]>, Read>,
    /// Number of overlay entries that hide the live tree below them.
    hiding: usize,
    /// Nodes and bytes the commit will create for the caller's own domain (for its quota).
    created_nodes: u64,
    created_bytes: u64,
    /// Memory charged for the overlay.
    charged: u64,
    /// Generation of the transaction's last change (its view's `DIRECTORY_PART` gencnt).
    last_change: u64,
}

/// Where a node of the view comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Src {
    Main(u32),
    History,
    Overlay,
}

/// A path resolved in a transaction's view.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Resolved {
    /// The whole path exists.
    exists: bool,
    /// Length of the deepest existing prefix (the whole path if it exists).
    nearest_len: usize,
    nearest: Src,
    /// Origin of the deepest existing node if it is an overlay node.
    nearest_origin: Option<Origin>,
    /// Length of the first missing prefix, if that absence could be undone by others: it
    /// comes from the snapshot, or from below a node the transaction created (which, if
    /// someone creates it meanwhile, the commit merges with). Not when the transaction
    /// deleted it (its commit deletes it again).
    missing_from_snapshot: Option<usize>,
    /// The deepest existing node is one the transaction created, or lies below one.
    under_created: bool,
}

/// What an operation needs to know of a node of the view.
struct Info<'a> {
    value: &'a [u8],
    perms: Vec<Perm>,
    stamp: u64,
    child_name_bytes: usize,
}

impl Transaction {
    fn new(snapshot: u64) -> Transaction {
        Transaction {
            snapshot,
            doomed: false,
            overlay: BTreeMap::new(),
            reads: BTreeMap::new(),
            hiding: 0,
            created_nodes: 0,
            created_bytes: 0,
            charged: TX_CHARGE,
            last_change: snapshot,
        }
    }

    /// The generation the view reads at: everything live if the snapshot was given up.
    fn view_at(&self) -> u64 {
        if self.doomed { u64::MAX } else { self.snapshot }
    }

    fn accessed(&self) -> u64 {
        (self.overlay.len() as u64).saturating_add(self.reads.len() as u64)
    }

    fn present(&self, path: &[u8]) -> Option<&TxNode> {
        match self.overlay.get(path) {
            Some(TxEntry::Present(n)) => Some(n),
            _ => None,
        }
    }

    /// Sets an overlay entry; returns the change in charged bytes.
    fn put(&mut self, path: &[u8], entry: TxEntry) -> i64 {
        let new_charge = entry.charge(path.len());
        let new_hides = entry.hides();
        let carries_read = entry.carries_read();
        let old = self.overlay.insert(path.into(), entry);
        let old_charge = old.as_ref().map_or(0, |e| e.charge(path.len()));
        if old.as_ref().is_some_and(TxEntry::hides) {
            self.hiding = self.hiding.saturating_sub(1);
        }
        if new_hides {
            self.hiding = self.hiding.saturating_add(1);
        }
        let kept = match &old {
            // Unless the new entry carries the same read.
            Some(old) if !carries_read => self.keep_read(path, old),
            _ => 0,
        };
        delta(new_charge.saturating_add(kept), old_charge)
    }

    /// Removes an overlay entry; returns the change in charged bytes.
    fn take(&mut self, path: &[u8]) -> i64 {
        match self.overlay.remove(path) {
            Some(old) => {
                if old.hides() {
                    self.hiding = self.hiding.saturating_sub(1);
                }
                let kept = self.keep_read(path, &old);
                delta(kept, old.charge(path.len()))
            }
            None => 0,
        }
    }

    /// A `Snapshot` entry stands for the read of its node that the operation putting it
    /// relied on (its check at commit is that read's, see `validate`), which is then not in
    /// the read set; when the entry goes, the read moves there. Returns the bytes to charge
    /// for it (less than the entry's, which are refunded).
    fn keep_read(&mut self, path: &[u8], old: &TxEntry) -> u64 {
        let TxEntry::Present(n) = old else {
            return 0;
        };
        if !old.carries_read() {
            return 0;
        }
        match self.reads.get_mut(path) {
            Some(r) => {
                r.aspects |= Aspects::DATA;
                r.live = r.live.or(n.live);
                0
            }
            None => {
                self.reads.insert(
                    path.into(),
                    Read {
                        aspects: Aspects::DATA,
                        live: n.live,
                    },
                );
                entry_charge(path.len())
            }
        }
    }
}

fn delta(new: u64, old: u64) -> i64 {
    i64::try_from(new)
        .unwrap_or(i64::MAX)
        .saturating_sub(i64::try_from(old).unwrap_or(i64::MAX))
}

/// The `(start, end)` byte spans of the segments of `path` after its first `from` bytes.
fn segment_spans(path: &[u8], from: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = from;
    core::iter::from_fn(move || {
        while path.get(i) == Some(&b'/') {
            i = i.saturating_add(1);
        }
        if i >= path.len() {
            return None;
        }
        let start = i;
        let len = path
            .get(start..)
            .and_then(|rest| rest.iter().position(|&b| b == b'/'))
            .unwrap_or(path.len().saturating_sub(start));
        i = start.saturating_add(len);
        Some((start, i))
    })
}

/// The overlay keys strictly below `dir`, as a range.
fn below(dir: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut start = dir.to_vec();
    if dir != b"/" {
        start.push(b'/');
    }
    let mut end = start.clone();
    if let Some(last) = end.last_mut() {
        *last = b'/'.saturating_add(1);
    }
    (start, end)
}

impl Store {
    // ----- lifecycle -----------------------------------------------------------------------

    /// `TRANSACTION_START`: opens a transaction on `conn` and returns its id.
    pub fn transaction_start(&mut self, conn: ConnId) -> XsResult<TxId> {
        let caller = self.caller(conn)?;
        let usage = self.usage_of(caller.domid);
        self.check_quota(
            &caller,
            QuotaKind::Transactions,
            usage.transactions.saturating_add(1),
        )?;
        self.check_memory(&caller, TX_CHARGE)?;
        let snapshot = self.next_gen();
        let c = self.conns.get_id_mut(conn.0).ok_or(XsError::Inval)?;
        let id = c.allocate_tx_id();
        c.transactions.insert(id, Transaction::new(snapshot));
        self.open_txs.insert(snapshot, (conn, id));
        if let Some(d) = self.domains.get_mut(&caller.domid) {
            d.usage.transactions = d.usage.transactions.saturating_add(1);
        }
        self.charge(caller.domid, i64::try_from(TX_CHARGE).unwrap_or(i64::MAX));
        Ok(id)
    }

    /// `TRANSACTION_END`: commits (`commit`) or aborts the transaction. The transaction is
    /// over either way; a failed commit (`EAGAIN`, or a quota error) changed nothing.
    pub fn transaction_end(&mut self, conn: ConnId, tx: TxId, commit: bool) -> XsResult<()> {
        let c = self.conns.get_id_mut(conn.0).ok_or(XsError::Inval)?;
        let t = c.transactions.remove(&tx).ok_or(XsError::NoEnt)?;
        let domid = c.domid();
        self.open_txs.remove(&t.snapshot);
        if let Some(d) = self.domains.get_mut(&domid) {
            d.usage.transactions = d.usage.transactions.saturating_sub(1);
        }
        self.charge(
            domid,
            i64::try_from(t.charged)
                .unwrap_or(i64::MAX)
                .saturating_neg(),
        );
        let result = if commit {
            self.commit(conn, &t)
        } else {
            Ok(())
        };
        let oldest = self.open_txs.first_key_value().map(|(s, _)| *s);
        self.history.prune(oldest);
        result
    }

    /// Runs `f` on transaction `tx` of `conn`.
    pub(crate) fn in_tx<R>(
        &mut self,
        conn: ConnId,
        tx: TxId,
        f: impl FnOnce(&mut Self, &mut Transaction) -> XsResult<R>,
    ) -> XsResult<R> {
        // The transaction is moved out for `f` (which needs the whole store) and back, an
        // empty placeholder (which allocates nothing) holding its place in the map: cheaper
        // than a removal and a re-insertion. Operations inside a transaction change nothing
        // live, so nothing looks at the placeholder meanwhile.
        let slot = self
            .conns
            .get_id_mut(conn.0)
            .ok_or(XsError::Inval)?
            .transactions
            .get_mut(&tx)
            .ok_or(XsError::NoEnt)?;
        let mut t = mem::replace(slot, Transaction::new(0));
        let result = f(self, &mut t);
        if let Some(slot) = self
            .conns
            .get_id_mut(conn.0)
            .and_then(|c| c.transactions.get_mut(&tx))
        {
            *slot = t;
        }
        result
    }

    /// Applies a change of a transaction's overlay charge to it and to `domid`'s usage.
    fn tx_charge(&mut self, t: &mut Transaction, domid: crate::domid::DomId, change: i64) {
        t.charged = t.charged.saturating_add_signed(change);
        self.charge(domid, change);
    }

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
    fn resolve(&self, t: &Transaction, path: &[u8]) -> Resolved {
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

    fn info<'a>(&'a self, t: &'a Transaction, path: &[u8], src: Src) -> Option<Info<'a>> {
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

    /// The live node's id behind a source, if it is the live tree.
    fn src_id(&self, src: Src) -> Option<Id> {
        match src {
            Src::Main(i) => self.tree.nodes.id_at(i),
            Src::History | Src::Overlay => None,
        }
    }

    fn info_rights(&self, caller: &Caller, info: &Info<'_>) -> Rights {
        self.rights_for(caller, info.perms.iter().copied(), info.stamp)
    }

    /// Records that the transaction relied on `aspect` of `path`, if that came from the
    /// snapshot. `ENOSPC` past the caller's `transaction-nodes` quota.
    fn note(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        src: Src,
        aspect: Aspects,
    ) -> XsResult<()> {
        let live = match src {
            Src::Overlay => return Ok(()),
            Src::History => None,
            Src::Main(i) => self.tree.nodes.id_at(i),
        };
        self.note_read(t, caller, path, aspect, live)
    }

    fn note_path(
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
    /// it the first missing prefix must stay missing and the nearest node unchanged.
    fn note_missing(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        r: &Resolved,
    ) -> XsResult<()> {
        let Some(first_missing) = r.missing_from_snapshot else {
            // Missing because the transaction deleted it: its commit deletes it again.
            return Ok(());
        };
        if caller.privileged {
            return self.note_path(t, caller, path, Aspects::ABSENT);
        }
        self.note_path(
            t,
            caller,
            path.get(..first_missing).unwrap_or(path),
            Aspects::ABSENT,
        )?;
        self.note(
            t,
            caller,
            path.get(..r.nearest_len).unwrap_or(path),
            r.nearest,
            Aspects::DATA,
        )
    }

    /// Resolves `path` and checks `need` on it, recording what the outcome relied on.
    fn tx_checked(
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
            self.note(t, caller, path, r.nearest, Aspects::DATA)?;
        }
        if rights.contains(need) {
            Ok(r)
        } else {
            Err(XsError::Acces)
        }
    }

    // ----- operations ----------------------------------------------------------------------

    pub(crate) fn tx_read(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        out: &mut Vec<u8>,
    ) -> XsResult<()> {
        let r = self.tx_checked(t, caller, path, Rights::READ)?;
        if let Some(info) = self.info(t, path, r.nearest) {
            out.extend_from_slice(info.value);
        }
        self.note(t, caller, path, r.nearest, Aspects::DATA)
    }

    pub(crate) fn tx_get_perms(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
    ) -> XsResult<Vec<Perm>> {
        let r = self.tx_checked(t, caller, path, Rights::READ)?;
        let perms = self
            .info(t, path, r.nearest)
            .map(|i| self.sanitize_perms(i.perms.into_iter(), i.stamp))
            .ok_or(XsError::Io)?;
        self.note(t, caller, path, r.nearest, Aspects::DATA)?;
        Ok(perms)
    }

    pub(crate) fn tx_write(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        kind: WriteKind<'_>,
    ) -> XsResult<()> {
        let r = self.resolve(t, path);
        let nearest_path = path.get(..r.nearest_len).unwrap_or(path);
        let (rights, perms, stamp, child_bytes) = {
            let info = self.info(t, nearest_path, r.nearest).ok_or(XsError::Io)?;
            let rights = self.info_rights(caller, &info);
            (rights, info.perms, info.stamp, info.child_name_bytes)
        };
        if !rights.contains(Rights::WRITE) {
            if !r.exists {
                self.note_missing(t, caller, path, &r)?;
            } else {
                self.note(t, caller, path, r.nearest, Aspects::DATA)?;
            }
            return Err(XsError::Acces);
        }
        // What the outcome relies on: the permissions checked (unprivileged callers) or the
        // node written to / created under still being there. A write to an existing node
        // records nothing here: the `Snapshot` overlay entry it puts is checked at commit
        // exactly as this read would be, and keeps it if it goes (`Transaction::put`).
        let aspect = if caller.privileged {
            Aspects::EXISTS
        } else {
            Aspects::DATA
        };
        let overwrite = r.exists && matches!(kind, WriteKind::Value(_));
        if !overwrite {
            self.note(t, caller, nearest_path, r.nearest, aspect)?;
        }
        let value = match kind {
            WriteKind::Value(v) => v,
            WriteKind::Mkdir if r.exists => return Ok(()),
            WriteKind::Mkdir => b"",
        };
        if r.exists {
            let size = value.len().saturating_add(child_bytes);
            self.check_quota(caller, QuotaKind::NodeSize, size as u64)?;
            let now = self.next_gen();
            let node = match t.present(path) {
                Some(n) => TxNode {
                    value: value.to_vec(),
                    perms: n.perms.clone(),
                    stamp: n.stamp,
                    origin: n.origin,
                    value_set: true,
                    perms_set: n.perms_set,
                    event: true,
                    live: n.live,
                },
                None => TxNode {
                    value: value.to_vec(),
                    perms,
                    stamp,
                    origin: Origin::Snapshot,
                    value_set: true,
                    perms_set: false,
                    event: true,
                    live: self.src_id(r.nearest),
                },
            };
            self.tx_put(t, caller, path, TxEntry::Present(node))?;
            t.last_change = now;
            return Ok(());
        }
        // Create the missing nodes below the nearest existing one.
        let rest = path.get(r.nearest_len..).unwrap_or_default();
        let count = path::segments(rest).count() as u64;
        let usage = self.usage_of(caller.domid);
        self.check_quota(
            caller,
            QuotaKind::Nodes,
            usage
                .nodes
                .saturating_add(t.created_nodes)
                .saturating_add(count),
        )?;
        self.check_quota(caller, QuotaKind::NodeSize, value.len() as u64)?;
        self.check_quota(
            caller,
            QuotaKind::TransactionNodes,
            t.accessed().saturating_add(count),
        )?;
        let mut perms = self.sanitize_perms(perms.into_iter(), stamp);
        if !caller.privileged
            && let Some(owner) = perms.first_mut()
        {
            owner.domid = caller.domid;
        }
        let below_fresh = matches!(r.nearest_origin, Some(Origin::Recreated | Origin::Fresh));
        let now = self.next_gen();
        let mut bytes = 0u64;
        let mut chain_origin: Option<Origin> = None;
        for (seg_start, seg_end) in segment_spans(path, r.nearest_len) {
            let prefix = path.get(..seg_end).unwrap_or(path);
            let seg_len = seg_end.saturating_sub(seg_start);
            let was_deleted = matches!(t.overlay.get(prefix), Some(TxEntry::Deleted { .. }));
            let origin = match chain_origin {
                None if was_deleted => Origin::Recreated,
                None if below_fresh => Origin::Fresh,
                None => Origin::Created,
                Some(Origin::Created) => Origin::Created,
                Some(_) => Origin::Fresh,
            };
            chain_origin = Some(origin);
            let last = seg_end >= path.len();
            let node = TxNode {
                value: if last { value.to_vec() } else { Vec::new() },
                perms: perms.clone(),
                stamp: now,
                origin,
                value_set: last && matches!(kind, WriteKind::Value(_)),
                perms_set: false,
                event: last || was_deleted,
                live: None,
            };
            bytes = bytes.saturating_add(node_charge(seg_len, node.value.len(), perms.len()));
            self.tx_put(t, caller, prefix, TxEntry::Present(node))?;
        }
        if !caller.privileged {
            t.created_nodes = t.created_nodes.saturating_add(count);
            t.created_bytes = t.created_bytes.saturating_add(bytes);
        }
        t.last_change = now;
        Ok(())
    }

    /// Puts an overlay entry, charging its memory to the caller (within an unprivileged
    /// caller's quotas).
    fn tx_put(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        entry: TxEntry,
    ) -> XsResult<()> {
        let old_charge = t.overlay.get(path).map(|e| e.charge(path.len()));
        if old_charge.is_none() {
            self.check_quota(
                caller,
                QuotaKind::TransactionNodes,
                t.accessed().saturating_add(1),
            )?;
        }
        let growth = entry
            .charge(path.len())
            .saturating_sub(old_charge.unwrap_or(0));
        self.check_memory(caller, growth)?;
        let change = t.put(path, entry);
        self.tx_charge(t, caller.domid, change);
        Ok(())
    }

    pub(crate) fn tx_rm(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
    ) -> XsResult<()> {
        match self.tx_checked(t, caller, path, Rights::WRITE) {
            Ok(_) => {}
            Err(XsError::NoEnt) => {
                // Fine if the parent exists (C xenstored), ENOENT if it is missing too.
                let r = self.resolve(t, path);
                let parent = path::parent(path).ok_or(XsError::NoEnt)?;
                if r.nearest_len == parent.len() {
                    return self.note(t, caller, parent, r.nearest, Aspects::EXISTS);
                }
                if r.missing_from_snapshot.is_some() {
                    self.note_path(t, caller, parent, Aspects::ABSENT)?;
                }
                return Err(XsError::NoEnt);
            }
            Err(e) => return Err(e),
        }
        if path == b"/" {
            return Err(XsError::Inval);
        }
        let (start, end) = below(path);
        let doomed_keys: Vec<Box<[u8]>> = t
            .overlay
            .range::<[u8], _>((
                Bound::Included(start.as_slice()),
                Bound::Excluded(end.as_slice()),
            ))
            .map(|(k, _)| k.clone())
            .collect();
        let mut change = 0i64;
        for k in doomed_keys {
            change = change.saturating_add(t.take(&k));
        }
        // Even a node the transaction created itself stays deleted: if another creates it
        // meanwhile, the commit (ordered after that creation) must remove it.
        change = change.saturating_add(t.put(path, TxEntry::Deleted { event: true }));
        self.tx_charge(t, caller.domid, change);
        t.last_change = self.next_gen();
        Ok(())
    }

    /// Appends the children of `path` in the view to `out`; returns the gencnt to report.
    pub(crate) fn tx_directory(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        out: &mut Vec<u8>,
    ) -> XsResult<u64> {
        let r = self.tx_checked(t, caller, path, Rights::READ)?;
        let at = t.view_at();
        let hides = r.nearest_origin.is_some_and(|o| o != Origin::Snapshot);
        let mut gencnt = t.last_change;
        {
            let mut names: BTreeSet<&[u8]> = BTreeSet::new();
            if !hides {
                if let Some(live) = self.tree.lookup(path)
                    && let Some(node) = self.tree.node(live)
                {
                    gencnt = gencnt.max(node.gencnt());
                    let mut child_path = path.to_vec();
                    for c in node.children() {
                        let Some(child) = self.tree.node(c.index) else {
                            continue;
                        };
                        let visible = child.data_gen <= at || {
                            path::push_segment(&mut child_path, child.name());
                            let v = self.history.version_at(&child_path, at).is_some();
                            path::pop_segment(&mut child_path);
                            v
                        };
                        if visible {
                            names.insert(child.name());
                        }
                    }
                }
                if !self.history.is_empty() {
                    names.extend(self.history.children_at(path, at).map(|(n, _)| n));
                }
            }
            let (start, end) = below(path);
            let prefix_len = start.len();
            for (key, entry) in t.overlay.range::<[u8], _>((
                Bound::Included(start.as_slice()),
                Bound::Excluded(end.as_slice()),
            )) {
                let Some(name) = key.get(prefix_len..) else {
                    continue;
                };
                // The range starts at the directory itself when it is `/`.
                if name.is_empty() || name.contains(&b'/') {
                    continue;
                }
                match entry {
                    TxEntry::Present(_) => {
                        names.insert(name);
                    }
                    TxEntry::Deleted { .. } => {
                        names.remove(name);
                    }
                }
            }
            for name in names {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        if !hides {
            // Its children came (at least partly) from the snapshot.
            self.note_path(t, caller, path, Aspects::CHILDREN)?;
        } else if r.under_created {
            // Only the transaction's own children, which holds only if nobody else creates
            // the node meanwhile (the commit would merge with it, children unseen).
            self.note_path(t, caller, path, Aspects::ABSENT)?;
        }
        Ok(gencnt)
    }

    pub(crate) fn tx_set_perms(
        &mut self,
        t: &mut Transaction,
        caller: &Caller,
        path: &[u8],
        perms: &[Perm],
    ) -> XsResult<()> {
        let r = self.tx_checked(t, caller, path, Rights::WRITE | Rights::OWNER)?;
        let (owner, value) = {
            let info = self.info(t, path, r.nearest).ok_or(XsError::Io)?;
            (info.perms.first().map(|p| p.domid), info.value.to_vec())
        };
        if !caller.privileged && perms.first().map(|p| p.domid) != owner {
            return Err(XsError::Perm);
        }
        self.note(t, caller, path, r.nearest, Aspects::EXISTS)?;
        let now = self.next_gen();
        let perms = self.sanitize_perms(perms.iter().copied(), now);
        let node = match t.present(path) {
            Some(n) => TxNode {
                value: n.value.clone(),
                perms,
                stamp: now,
                origin: n.origin,
                value_set: n.value_set,
                perms_set: true,
                event: true,
                live: n.live,
            },
            None => TxNode {
                value,
                perms,
                stamp: now,
                origin: Origin::Snapshot,
                value_set: false,
                perms_set: true,
                event: true,
                live: self.src_id(r.nearest),
            },
        };
        self.tx_put(t, caller, path, TxEntry::Present(node))?;
        t.last_change = now;
        Ok(())
    }

    // ----- commit --------------------------------------------------------------------------

    fn commit(&mut self, conn: ConnId, t: &Transaction) -> XsResult<()> {
        let caller = self.caller(conn)?;
        if t.doomed || !self.validate(t, &caller) {
            return Err(XsError::Again);
        }
        if t.created_nodes > 0 {
            // A domain over its quota may go on as long as it does not create more.
            let usage = self.usage_of(caller.domid);
            self.check_quota(
                &caller,
                QuotaKind::Nodes,
                usage.nodes.saturating_add(t.created_nodes),
            )?;
            self.check_memory(&caller, t.created_bytes)?;
        }
        let now = self.next_gen();
        let mut ok = true;
        for (path, entry) in &t.overlay {
            ok &= self.apply(path, entry, now).is_ok();
        }
        if ok { Ok(()) } else { Err(XsError::Io) }
    }

    /// The live node at `path`, through `live` when it is still that node.
    fn live_node(&self, path: &[u8], live: Option<Id>) -> Option<u32> {
        match live {
            Some(id) => self.still_there(id),
            None => self.tree.lookup(path),
        }
    }

    /// The index of node `id` if it is still that node (nodes never move; a removed one's
    /// slot has a new generation).
    fn still_there(&self, id: Id) -> Option<u32> {
        self.tree.nodes.get_id(id).map(|_| id.index)
    }

    /// Whether everything the transaction relied on is unchanged since its snapshot.
    fn validate(&self, t: &Transaction, caller: &Caller) -> bool {
        let s = t.snapshot;
        let unchanged = |path: &[u8], aspects: Aspects, live: Option<Id>| -> bool {
            if aspects.contains(Aspects::ABSENT) {
                return self.tree.lookup(path).is_none();
            }
            // A node seen in the live tree and since removed has a stale id: changed.
            self.live_node(path, live)
                .and_then(|i| self.tree.node(i))
                .is_some_and(|n| {
                    n.data_gen <= s && (!aspects.contains(Aspects::CHILDREN) || n.gencnt() <= s)
                })
        };
        if !t.reads.iter().all(|(p, r)| unchanged(p, r.aspects, r.live)) {
            return false;
        }
        t.overlay.iter().all(|(path, entry)| match entry {
            TxEntry::Present(n) if n.origin == Origin::Snapshot => {
                unchanged(path, Aspects::EXISTS, n.live)
            }
            TxEntry::Present(n) if n.origin == Origin::Created => {
                match self.tree.lookup(path).and_then(|i| self.tree.node(i)) {
                    None => true,
                    Some(live) => self.merge_allowed(caller, n, live),
                }
            }
            _ => true,
        })
    }

    /// Whether a node the transaction created may merge with the same node created
    /// meanwhile by someone else, as if the transaction ran after that creation. Its
    /// operations must then be allowed on that node: with the same permissions (so that
    /// everything it did below was checked against, and everything it created below
    /// inherited, the right ones), and its value written only with write access.
    ///
    /// A node whose permissions the transaction set does not merge: what it did below before
    /// setting them relied on the permissions it was created with, which are no longer known
    /// (a child it created then inherited them, not the other node's). The boot-storm case
    /// merges parents created on the way, whose permissions it never sets.
    fn merge_allowed(&self, caller: &Caller, n: &TxNode, live: &super::node::Node) -> bool {
        if n.perms_set
            || self.sanitize_perms(live.perms(), live.data_gen)
                != self.sanitize_perms(n.perms.iter().copied(), n.stamp)
        {
            return false;
        }
        !n.value_set
            || self
                .rights_for(caller, live.perms(), live.data_gen)
                .contains(Rights::WRITE)
    }

    fn apply(&mut self, path: &[u8], entry: &TxEntry, now: u64) -> XsResult<()> {
        let known = match entry {
            TxEntry::Present(n) => n.live,
            TxEntry::Deleted { .. } => None,
        };
        // The node seen when the entry was made, if it is still there; else whatever is at
        // the path now.
        let live = known
            .and_then(|id| self.still_there(id))
            .or_else(|| self.tree.lookup(path));
        match entry {
            TxEntry::Deleted { event } => {
                if let Some(i) = live.filter(|&i| i != self.tree.root) {
                    self.delete_subtree(i, path, now, *event);
                }
                Ok(())
            }
            TxEntry::Present(n) => match (n.origin, live) {
                (Origin::Recreated, Some(i)) if i != self.tree.root => {
                    self.delete_subtree(i, path, now, false);
                    self.apply_create(path, n, now)
                }
                (_, Some(i)) => self.apply_update(i, path, n, now),
                (_, None) => self.apply_create(path, n, now),
            },
        }
    }

    fn apply_update(&mut self, index: u32, path: &[u8], n: &TxNode, now: u64) -> XsResult<()> {
        // The permissions before the change, for watchers who could read the node only
        // before it (needed only when the permissions change).
        let old = self
            .tree
            .node(index)
            .filter(|_| n.perms_set && n.event)
            .map(|node| (node.perm_vec(), node.data_gen));
        if n.value_set {
            self.set_node_value(index, path, &n.value, now)?;
        }
        if n.perms_set {
            let perms = self.sanitize_perms(n.perms.iter().copied(), n.stamp);
            self.set_node_perms(index, path, &perms, now)?;
        }
        if n.event {
            let old_perms = old.as_ref().map(|(p, s)| (p.as_slice(), *s));
            self.fire(path, Match::Subtree, Some(index), old_perms);
        }
        Ok(())
    }

    fn apply_create(&mut self, path: &[u8], n: &TxNode, now: u64) -> XsResult<()> {
        let parent = path::parent(path)
            .and_then(|p| self.tree.lookup(p))
            .ok_or(XsError::Io)?;
        let perms = self.sanitize_perms(n.perms.iter().copied(), n.stamp);
        let index = self.create_node(parent, path::basename(path), &n.value, &perms, now)?;
        if n.event {
            self.fire(path, Match::Subtree, Some(index), None);
        }
        Ok(())
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
    use crate::store::StoreConfig;

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
            let mut store = Store::new(StoreConfig::default()).unwrap();
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
