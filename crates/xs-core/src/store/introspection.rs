//! Introspection: counts and sizes for the embedding program and its tests, and the
//! store's consistency check (C xenstored's `check` control command).

use alloc::collections::BTreeMap;

use super::conn::Conn;
use super::{ConnId, Store, node};
use crate::domid::DomId;

impl Store {
    // ----- introspection -------------------------------------------------------------------

    /// Number of nodes in the tree, the root included.
    pub fn node_count(&self) -> usize {
        self.tree.len()
    }

    /// Number of registered watches.
    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }

    /// Number of open transactions (doomed ones included).
    pub fn transaction_count(&self) -> usize {
        self.conns_iter().map(|(_, c)| c.transactions.len()).sum()
    }

    /// Number of transactions `conn` has open (doomed ones included).
    pub fn open_transactions(&self, conn: ConnId) -> usize {
        self.conns
            .get_id(conn.0)
            .map_or(0, |c| c.transactions.len())
    }

    pub(super) fn conns_iter(&self) -> impl Iterator<Item = (u32, &Conn)> {
        self.conns.iter()
    }

    /// Heap bytes held by the node tree: arena slots plus each node's own allocations
    /// (an estimate of what the allocator holds, without its per-allocation overhead).
    pub fn tree_heap_bytes(&self) -> usize {
        self.tree
            .nodes
            .iter()
            .map(|(_, n)| n.heap_bytes())
            .fold(self.tree.nodes.heap_bytes(), usize::saturating_add)
    }

    /// Bytes of old versions currently kept for transaction snapshots.
    pub fn history_bytes(&self) -> usize {
        self.history.bytes()
    }

    /// Approximate bytes of old versions kept for the changes `writer` made.
    pub fn history_bytes_of(&self, writer: DomId) -> usize {
        self.history.bytes_of(writer)
    }

    /// Checks the store's invariants (C xenstored's `check` control command): parent links,
    /// sorted children, owner lists, node counts, the event queues' indices and the
    /// domains' outstanding counts. Returns a description of the first inconsistency found.
    pub fn check(&self) -> Result<(), &'static str> {
        let mut counted: BTreeMap<DomId, u64> = BTreeMap::new();
        let mut stack = alloc::vec![self.tree.root];
        let mut seen = 0usize;
        while let Some(i) = stack.pop() {
            let node = self.tree.node(i).ok_or("dangling child link")?;
            seen = seen.saturating_add(1);
            if node.perm_count() == 0 {
                return Err("node without permissions");
            }
            let count = counted.entry(node.owner()).or_default();
            *count = count.saturating_add(1);
            let mut prev: Option<&[u8]> = None;
            let mut bytes = 0usize;
            for c in node.children() {
                let child = self.tree.node(c.index).ok_or("dangling child link")?;
                if child.parent != i {
                    return Err("child with wrong parent");
                }
                if c.key() != node::name_key(child.name()) {
                    return Err("child key does not match name");
                }
                if prev.is_some_and(|p| p >= child.name()) {
                    return Err("children not sorted");
                }
                prev = Some(child.name());
                bytes = bytes.saturating_add(child.name().len().saturating_add(1));
                stack.push(c.index);
            }
            if bytes != node.child_name_bytes() {
                return Err("children byte count wrong");
            }
        }
        if seen != self.tree.len() {
            return Err("unreachable nodes");
        }
        if !self.tree.cursor_is_sound() {
            return Err("lookup cursor names the wrong node");
        }
        if self.conns.iter().any(|(_, c)| !c.events.is_consistent()) {
            return Err("event queue index out of step with the queue");
        }
        // Every open transaction not doomed is in `open_txs` under its snapshot, and only
        // those: the history keeps what they need, and rebasing finds them.
        let mut open = 0usize;
        for (i, c) in self.conns.iter() {
            let conn = self
                .conns
                .id_at(i)
                .map(ConnId)
                .ok_or("connection without id")?;
            for (&tx, t) in c.transactions.iter().filter(|(_, t)| !t.doomed) {
                open = open.saturating_add(1);
                if !self.open_txs.contains(&(t.snapshot, conn, tx)) {
                    return Err("open transaction missing from the snapshot index");
                }
            }
        }
        if open != self.open_txs.len() {
            return Err("snapshot index names transactions that are not open");
        }
        let mut unsent: BTreeMap<DomId, u64> = BTreeMap::new();
        for (_, c) in self.conns.iter().filter(|(_, c)| !c.dead) {
            let n = unsent.entry(c.domid()).or_default();
            *n = n.saturating_add(c.unsent.msgs);
        }
        for (domid, d) in self.domains.iter() {
            if unsent.get(&domid).copied().unwrap_or(0) != d.usage.outstanding {
                return Err("outstanding count does not match the connections' output");
            }
        }
        if counted.keys().any(|d| !self.domains.contains_key(d)) {
            return Err("node owned by an unknown domain");
        }
        for (domid, d) in self.domains.iter() {
            let counted = counted.get(&domid).copied().unwrap_or(0);
            if counted != d.usage.nodes {
                return Err("node count does not match the owner's usage");
            }
            let listed = !self.is_privileged(domid);
            if listed && d.owned.len() as u64 != counted {
                return Err("owner list does not match node count");
            }
            for (position, &index) in d.owned.iter().enumerate() {
                let node = self
                    .tree
                    .node(index)
                    .ok_or("owner list names a free slot")?;
                if node.owner() != domid {
                    return Err("node in the wrong owner list");
                }
                if node.owner_pos as usize != position {
                    return Err("node's owner position is wrong");
                }
            }
        }
        Ok(())
    }
}
