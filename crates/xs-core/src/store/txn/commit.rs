//! Commit: validating the read set against the live tree and applying the overlay at one
//! new generation, firing watches then.

use super::{Aspects, Origin, Transaction, TxEntry, TxNode};
use crate::domid::DomId;
use crate::error::{XsError, XsResult};
use crate::path;
use crate::quota::QuotaKind;
use crate::store::access::{Caller, Rights};
use crate::store::arena::Id;
use crate::store::{ConnId, Match, Store};

impl Store {
    // ----- commit --------------------------------------------------------------------------

    pub(super) fn commit(&mut self, conn: ConnId, t: &Transaction) -> XsResult<()> {
        let caller = self.caller(conn)?;
        if t.doomed {
            return Err(XsError::Again);
        }
        if !t.wrote {
            // It only read: what it read is its snapshot, consistent as of the snapshot's
            // generation (a rebase moves it only when everything read before still holds), so
            // it is serializable there, before whatever changed since. oxenstored commits
            // such a transaction too; C xenstored fails it if a node it read has changed.
            // (One that asked for a change, even one its snapshot made a no-op, such as the
            // removal of a node it did not have, takes effect at its commit.)
            return Ok(());
        }
        if !self.validate(t, &caller) {
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
            ok &= self.apply(path, entry, now, caller.domid).is_ok();
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
    pub(super) fn validate(&self, t: &Transaction, caller: &Caller) -> bool {
        if !t
            .reads
            .iter()
            .all(|(p, r)| self.unchanged(t, p, r.aspects, r.live))
        {
            return false;
        }
        t.overlay.iter().all(|(path, entry)| match entry {
            TxEntry::Present(n) if n.origin == Origin::Snapshot => {
                self.unchanged(t, path, n.relied | Aspects::EXISTS, n.live)
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

    /// Whether `aspects` of `path` are as the transaction's snapshot had them, `live` being
    /// the node it saw there.
    ///
    /// Only what was relied on counts: a node whose value changed conflicts with a read of
    /// the value, not with a listing of its children or a write or a creation below it. C
    /// xenstored compares the generation of every node the transaction accessed, which any
    /// change of value, permissions or children moves; here a change of value or
    /// permissions (one stamp) is compared with the version the snapshot saw, so a node
    /// changed and changed back, or with only its permissions changed, does not conflict
    /// with a read of its value: run at commit, the read would answer the same.
    fn unchanged(&self, t: &Transaction, path: &[u8], aspects: Aspects, live: Option<Id>) -> bool {
        let s = t.snapshot;
        if aspects.contains(Aspects::ABSENT) {
            return self.tree.lookup(path).is_none();
        }
        // A node seen in the live tree and since removed has a stale id: changed.
        let Some(node) = self.live_node(path, live).and_then(|i| self.tree.node(i)) else {
            return false;
        };
        if aspects.contains(Aspects::CHILDREN) && node.children_gen() > s {
            return false;
        }
        if live.is_none() {
            // Not known to be the same node: only one unchanged since is (a node created
            // again since has a newer stamp).
            return node.data_gen <= s;
        }
        let data = aspects & (Aspects::VALUE | Aspects::PERMS);
        if data.is_empty() || node.data_gen <= s {
            return true;
        }
        // Changed since: compared with the version kept for the snapshot (kept for as long
        // as the transaction was open; without it, a conflict).
        let Some(old) = self.history.version_at(path, s) else {
            return false;
        };
        (!data.contains(Aspects::VALUE) || *old.value == *node.value())
            && (!data.contains(Aspects::PERMS)
                || self.sanitize_perms(old.perms.iter().copied(), old.from)
                    == self.sanitize_perms(node.perms(), node.data_gen))
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
    ///
    /// If the transaction read the node's value before writing one (the empty value of a
    /// node created on the way or by `MKDIR`), the other node's must be empty too: run at
    /// commit, the read would return that one.
    fn merge_allowed(&self, caller: &Caller, n: &TxNode, live: &crate::store::node::Node) -> bool {
        if n.perms_set
            || self.sanitize_perms(live.perms(), live.data_gen)
                != self.sanitize_perms(n.perms.iter().copied(), n.stamp)
            || (n.relied.contains(Aspects::VALUE) && !live.value().is_empty())
        {
            return false;
        }
        !n.value_set
            || self
                .rights_for(caller, live.perms(), live.data_gen)
                .contains(Rights::WRITE)
    }

    fn apply(&mut self, path: &[u8], entry: &TxEntry, now: u64, writer: DomId) -> XsResult<()> {
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
                    self.delete_subtree(i, path, now, writer, *event);
                }
                Ok(())
            }
            TxEntry::Present(n) => match (n.origin, live) {
                (Origin::Recreated, Some(i)) if i != self.tree.root => {
                    self.delete_subtree(i, path, now, writer, false);
                    self.apply_create(path, n, now)
                }
                (_, Some(i)) => self.apply_update(i, path, n, now, writer),
                (_, None) => self.apply_create(path, n, now),
            },
        }
    }

    fn apply_update(
        &mut self,
        index: u32,
        path: &[u8],
        n: &TxNode,
        now: u64,
        writer: DomId,
    ) -> XsResult<()> {
        // The permissions before the change, for watchers who could read the node only
        // before it (needed only when the permissions change).
        let old = self
            .tree
            .node(index)
            .filter(|_| n.perms_set && n.event)
            .map(|node| (node.perm_vec(), node.data_gen));
        if n.value_set {
            self.set_node_value(index, path, &n.value, now, writer)?;
        }
        if n.perms_set {
            let perms = self.sanitize_perms(n.perms.iter().copied(), n.stamp);
            self.set_node_perms(index, path, &perms, now, writer)?;
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
