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
//! Every snapshot fact the transaction relied on is recorded in its read set, per path
//! ([`Aspects`]): a node's value it read (`VALUE`); its permissions, read with `GET_PERMS`,
//! checked for an unprivileged caller or inherited by nodes created below it (`PERMS`); a
//! directory's set of children it listed (`CHILDREN`); a node that had to be there, to be
//! written to, removed or created under (`EXISTS`, implied by the others: the same node, not
//! one removed and created again); a path it found missing (`ABSENT`). (A node's `Snapshot`
//! overlay entry records what the operations on it relied on itself, and hands that to the
//! read set if the entry goes.) A transaction that changed nothing commits whatever
//! happened since: it read a consistent snapshot, and is serializable at it (oxenstored
//! commits it too). Any other commit fails with `EAGAIN` exactly when one of those
//! changed since `S`; otherwise the overlay is applied in path order (parents before children)
//! at one new generation, and watches fire then. Validation and application cost what the
//! transaction touched, not the size of the store.
//!
//! Changes to what the transaction did not rely on are not conflicts: the commit behaves as
//! if it ran after them (serializable, in commit order). A write that did not read the value
//! overwrites a concurrent change of it (the last writer wins); a listing does not conflict
//! with a change of a child's value or the directory's own; a creation does not conflict with
//! a change of its parent's value; a read of a value (by dom0, whose reads the permissions do
//! not decide) does not conflict with a change of the permissions alone, nor with a change
//! undone before the commit (values and permissions are compared with the version the
//! snapshot saw). Transactions creating disjoint subtrees under a shared parent both commit.
//! Nodes created on the way (missing parents) merge with the same node created concurrently
//! when both got the same permissions (the boot-storm case of two toolstack transactions
//! creating `/local/domain/0/backend/vif/<domid>/0` for different domids).
//!
//! C xenstored (`transaction.c`) instead records the generation of every node a transaction
//! accesses when it first does, and fails the commit if any of them moved; a node's
//! generation moves with any change of its value, permissions or children, and every write
//! reads the node first, a creation its parent too (whose child list it rewrites). So C
//! conflicts in all the cases above where the change came after the transaction's first
//! access to the node. It is more permissive in one way: it reads the live node at first
//! access, so a change between the start and that access is seen and is no conflict, where
//! here the transaction reads its snapshot and a change to what it read conflicts.
//! Permission checks, and the errors of a missing path, rely on the whole permission list
//! (not only on the rights it gives the caller): simpler, and still no stricter than C.
//!
//! ## Bounded history: rebasing
//!
//! The versions a snapshot needs are kept only while a transaction that can see them is
//! open, accounted to the domain whose change replaced them, and bounded twice: by the
//! store's history limit, and for an unprivileged writer by its memory quota. When a change
//! takes either past its bound, every open transaction is rebased before the next change
//! (`Store::settle_history`): what it relied on is validated as its commit would; if it
//! holds, its snapshot moves to the present and all old versions can go; if not, the
//! transaction is doomed (its commit would fail anyway, unless the change were undone in
//! time). So a guest that churns its own nodes while dom0 holds a transaction open (the
//! XSA-206 class of attack) fills only its own bound and fails no transaction that did not
//! rely on its nodes; a transaction held open forever pins no more than the bounds. A
//! rebased transaction reads what it has not read yet from the new snapshot, as C xenstored
//! reads every node at first access.

mod commit;
pub(crate) mod fairness;
mod operations;
pub(crate) mod state;
mod view;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::mem;

use bitflags::bitflags;

use super::arena::Id;
use super::{ConnId, Store, TxId};
use crate::error::{XsError, XsResult};
use crate::perms::Perm;
use crate::quota::QuotaKind;

bitflags! {
    /// What a transaction relied on about one path of its snapshot. Every aspect but
    /// `ABSENT` includes `EXISTS`: the node is still there and is the same node (nodes never
    /// move; one removed and created again is another node).
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(crate) struct Aspects: u8 {
        /// The node existed (and is the same node).
        const EXISTS = 0x01;
        /// Its value (`READ`).
        const VALUE = 0x02;
        /// Its set of children (`DIRECTORY`).
        const CHILDREN = 0x04;
        /// The path did not exist.
        const ABSENT = 0x08;
        /// Its permissions: returned (`GET_PERMS`), checked for an unprivileged caller, or
        /// inherited by the nodes the transaction created below it.
        const PERMS = 0x10;
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
    /// For a `Snapshot` node: the live node it stands for.
    live: Option<Id>,
    /// For a `Snapshot` node: what the operations on it relied on about the snapshot's node
    /// (see `Transaction::keep_read`). For a `Created` node: `VALUE` if the transaction read
    /// the (empty) value it was created with, which a merge must then find.
    relied: Aspects,
}

impl TxNode {
    /// Notes that an operation relied on `aspects` of this node, as far as they are the
    /// snapshot's: not the value or permissions the transaction set itself, nothing of a node
    /// it created (`Created` merges check permissions and, if read, the value).
    fn rely(&mut self, aspects: Aspects) {
        match self.origin {
            Origin::Snapshot => {
                let mut own = Aspects::empty();
                if self.value_set {
                    own |= Aspects::VALUE;
                }
                if self.perms_set {
                    own |= Aspects::PERMS;
                }
                self.relied |= aspects.difference(own) | Aspects::EXISTS;
            }
            Origin::Created if !self.value_set => self.relied |= aspects & Aspects::VALUE,
            Origin::Created | Origin::Recreated | Origin::Fresh => {}
        }
    }
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
    /// What it relied on changed when it was rebased (see the module docs): the commit will
    /// fail.
    pub(crate) doomed: bool,
    /// A change request (`WRITE`, `MKDIR`, `RM`, `SET_PERMS`) succeeded in it; one without
    /// only read, and commits whatever changed since (see `commit`).
    pub(crate) wrote: bool,
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
            wrote: false,
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

    /// A `Snapshot` entry stands for the reads of its node that the operations on it relied
    /// on (`TxNode::relied`, checked at commit as reads are, see `validate`), which are then
    /// not in the read set; when the entry goes, they move there. Returns the bytes to
    /// charge for them (less than the entry's, which are refunded).
    fn keep_read(&mut self, path: &[u8], old: &TxEntry) -> u64 {
        let TxEntry::Present(n) = old else {
            return 0;
        };
        if !old.carries_read() {
            return 0;
        }
        match self.reads.get_mut(path) {
            Some(r) => {
                r.aspects |= n.relied;
                r.live = r.live.or(n.live);
                0
            }
            None => {
                self.reads.insert(
                    path.into(),
                    Read {
                        aspects: n.relied,
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
        self.settle_history();
        let snapshot = self.next_gen();
        let c = self.conns.get_id_mut(conn.0).ok_or(XsError::Inval)?;
        let id = c.allocate_tx_id();
        c.transactions.insert(id, Transaction::new(snapshot));
        self.open_txs.insert((snapshot, conn, id));
        if self.earns_protection(conn) {
            self.protected.push((conn, id));
        }
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
        self.open_txs.remove(&(t.snapshot, conn, tx));
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
            let result = self.commit(conn, &t);
            self.note_commit(conn, result == Err(XsError::Again));
            result
        } else {
            Ok(())
        };
        if self.protected.contains(&(conn, tx)) {
            self.unprotect(conn, tx);
        }
        self.settle_history();
        self.prune_history();
        result
    }

    /// Drops the versions no open transaction can need.
    pub(crate) fn prune_history(&mut self) {
        let oldest = self.open_txs.first().map(|(s, _, _)| *s);
        self.history.prune(oldest);
    }

    /// How many bytes of versions `writer`'s changes may keep: its memory quota for an
    /// unprivileged domain (0 is no limit), the store's history limit alone for a privileged
    /// one.
    pub(crate) fn history_bound(&self, writer: crate::domid::DomId) -> Option<usize> {
        if self.is_privileged(writer) {
            return None;
        }
        match self.quota(writer, QuotaKind::Memory) {
            0 => None,
            q => usize::try_from(q).ok(),
        }
    }

    /// Rebases every open transaction once the history went past a bound (`preserve` says
    /// so): validates what it relied on now, as its commit would; if that holds, moves its
    /// snapshot to the current generation (every change so far is applied: this runs between
    /// changes), else dooms it (its commit fails with `EAGAIN`, as it would have unless the
    /// change were undone meanwhile). No transaction then needs a version older than now,
    /// so the whole history goes.
    ///
    /// Rebasing is what makes a guest's churn of its own nodes harmless to others: a
    /// transaction that relied on none of them commits, whatever the churn; one that relied
    /// on them fails, as it would at its commit. Moving the snapshot is serializable: what
    /// it read is as it is now, so it commits (or not) as if it had started now and read
    /// the same (what it reads from here on comes from the new snapshot, which its commit
    /// validates in turn). It is what C xenstored does for every read (it reads the live
    /// node at a transaction's first access of it); here only past the bound.
    pub(crate) fn settle_history(&mut self) {
        if !mem::take(&mut self.history_over) {
            return;
        }
        let open: Vec<(u64, ConnId, TxId)> = self.open_txs.iter().copied().collect();
        for (snapshot, conn, tx) in open {
            self.rebase(snapshot, conn, tx, true);
        }
        self.prune_history();
    }

    /// Rebases one open transaction (snapshot `snapshot`) to the present if what it relied
    /// on holds; else dooms it if `doom` (see `settle_history`), or leaves it as it is (its
    /// commit will fail, and meanwhile it reads its snapshot as before). Runs between
    /// changes: every change up to the current generation is applied.
    fn rebase(&mut self, snapshot: u64, conn: ConnId, tx: TxId, doom: bool) {
        let now = self.generation;
        let Ok(caller) = self.caller(conn) else {
            return;
        };
        let valid = self
            .conns
            .get_id(conn.0)
            .and_then(|c| c.transactions.get(&tx))
            .is_some_and(|t| self.validate(t, &caller));
        if !valid && !doom {
            return;
        }
        self.open_txs.remove(&(snapshot, conn, tx));
        let Some(t) = self
            .conns
            .get_id_mut(conn.0)
            .and_then(|c| c.transactions.get_mut(&tx))
        else {
            return;
        };
        if valid {
            t.snapshot = now;
            // The view changed: a client paging through a directory must start again.
            t.last_change = now;
            self.open_txs.insert((now, conn, tx));
            self.refresh_overlay(conn, tx);
        } else {
            t.doomed = true;
        }
    }

    /// A protected transaction (see `fairness`) reads the present: the writers that could
    /// fail it wait only once it relied on what they change, so what changed before must not
    /// count against it. Before each of its operations, if anything changed since its
    /// snapshot, it is rebased (the cost is its read set's, and it is rare), unless what it
    /// relied on changed already (a privileged writer, who never waits): then it keeps its
    /// snapshot, so that it reads again what it read (Xen's `test-xenstore` checks this), and
    /// its commit fails.
    fn refresh_protected(&mut self, conn: ConnId, tx: TxId) {
        if !self.protected.contains(&(conn, tx)) {
            return;
        }
        let Some(snapshot) = self
            .conns
            .get_id(conn.0)
            .and_then(|c| c.transactions.get(&tx))
            .filter(|t| !t.doomed)
            .map(|t| t.snapshot)
        else {
            return;
        };
        if snapshot < self.generation {
            self.rebase(snapshot, conn, tx, false);
            self.prune_history();
        }
    }

    /// After a rebase: a `Snapshot` overlay node holds a copy of the old snapshot's value
    /// and permissions where the transaction did not set them; they become the new
    /// snapshot's (the live node's), which nodes created below it inherit from here on. (What
    /// the transaction relied on of them was just validated, so only the rest changes.)
    fn refresh_overlay(&mut self, conn: ConnId, tx: TxId) {
        let tree = &self.tree;
        let Some(c) = self.conns.get_id_mut(conn.0) else {
            return;
        };
        let domid = c.domid();
        let Some(t) = c.transactions.get_mut(&tx) else {
            return;
        };
        let mut change: i64 = 0;
        for (path, entry) in &mut t.overlay {
            let before = entry.charge(path.len());
            let TxEntry::Present(n) = entry else {
                continue;
            };
            if n.origin != Origin::Snapshot || (n.value_set && n.perms_set) {
                continue;
            }
            let live = match n.live {
                Some(id) => tree.nodes.get_id(id).map(|_| id.index),
                None => tree.lookup(path),
            };
            let Some(node) = live.and_then(|i| tree.node(i)) else {
                continue;
            };
            if !n.value_set {
                n.value.clear();
                n.value.extend_from_slice(node.value());
            }
            if !n.perms_set {
                n.perms = node.perm_vec();
                n.stamp = node.data_gen;
            }
            change = change.saturating_add(delta(entry.charge(path.len()), before));
        }
        t.charged = t.charged.saturating_add_signed(change);
        self.charge(domid, change);
    }

    /// Runs `f` on transaction `tx` of `conn`.
    pub(crate) fn in_tx<R>(
        &mut self,
        conn: ConnId,
        tx: TxId,
        f: impl FnOnce(&mut Self, &mut Transaction) -> XsResult<R>,
    ) -> XsResult<R> {
        self.refresh_protected(conn, tx);
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

    /// [`Store::in_tx`] for a change request (`WRITE`, `MKDIR`, `RM`, `SET_PERMS`): one that
    /// succeeds marks the transaction as having asked for a change (`Transaction::wrote`).
    pub(crate) fn in_tx_change(
        &mut self,
        conn: ConnId,
        tx: TxId,
        f: impl FnOnce(&mut Self, &mut Transaction) -> XsResult<()>,
    ) -> XsResult<()> {
        self.in_tx(conn, tx, |s, t| {
            let done = f(s, t);
            t.wrote |= done.is_ok();
            done
        })
    }

    /// Applies a change of a transaction's overlay charge to it and to `domid`'s usage.
    fn tx_charge(&mut self, t: &mut Transaction, domid: crate::domid::DomId, change: i64) {
        t.charged = t.charged.saturating_add_signed(change);
        self.charge(domid, change);
    }
}
