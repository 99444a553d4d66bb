//! Paths and nodes on the live tree: the canonical form of a request's path, and node
//! creation, change and removal with their accounting to the owner and the versions kept
//! for open transactions. Every change to the live tree goes through here, so that usage,
//! history and watches stay consistent with the tree.

use alloc::vec::Vec;
use core::mem;

use super::access::Caller;
use super::arena::NIL;
use super::{Match, Store, node, node_charge};
use crate::domid::DomId;
use crate::error::{XsError, XsResult};
use crate::path::{self, Canonical, PathKind};
use crate::perms::Perm;
use crate::quota::QuotaKind;

/// The signed difference of two lengths, for memory accounting.
fn delta_len(new: usize, old: usize) -> i64 {
    i64::try_from(new)
        .unwrap_or(i64::MAX)
        .saturating_sub(i64::try_from(old).unwrap_or(i64::MAX))
}

impl Store {
    // ----- paths ---------------------------------------------------------------------------

    /// Runs `f` with the canonical form of `raw` (see [`path::canonicalize`]), after the
    /// `path-max` quota check, reusing the store's path buffer for relative paths.
    pub(super) fn with_path<R>(
        &mut self,
        caller: &Caller,
        raw: &[u8],
        allow_special: bool,
        f: impl FnOnce(&mut Self, &[u8], Canonical) -> XsResult<R>,
    ) -> XsResult<R> {
        let mut buf = mem::take(&mut self.path_buf);
        let result = match buf.canonicalize(raw, caller.domid, allow_special) {
            Ok((canonical, canon)) => {
                let within = canon.kind != PathKind::Node
                    || self
                        .check_quota(
                            caller,
                            QuotaKind::PathMax,
                            path::local_suffix_len(canonical) as u64,
                        )
                        .is_ok();
                if within {
                    f(self, canonical, canon)
                } else {
                    Err(XsError::Inval)
                }
            }
            Err(e) => Err(e),
        };
        self.path_buf = buf;
        result
    }

    // ----- node creation and removal with accounting ---------------------------------------

    /// Accounts the node at `index` to its owner (and lists it, for an unprivileged owner).
    pub(super) fn link_owner(&mut self, index: u32) {
        let Some(node) = self.tree.node(index) else {
            return;
        };
        let owner = node.owner();
        let charge = node_charge(node.name().len(), node.value().len(), node.perm_count());
        let listed = !self.is_privileged(owner);
        let Some(domain) = self.ensure_domain(owner) else {
            return;
        };
        domain.usage.nodes = domain.usage.nodes.saturating_add(1);
        domain.usage.memory = domain.usage.memory.saturating_add(charge);
        let mut position = NIL;
        if let (true, Ok(p)) = (listed, u32::try_from(domain.owned.len())) {
            domain.owned.push(index);
            position = p;
        }
        if let Some(node) = self.tree.node_mut(index) {
            node.owner_pos = position;
        }
    }

    /// Takes the node at `index` off its owner's account.
    pub(super) fn unlink_owner(&mut self, index: u32) {
        let Some(node) = self.tree.node(index) else {
            return;
        };
        let owner = node.owner();
        let charge = node_charge(node.name().len(), node.value().len(), node.perm_count());
        let position = node.owner_pos;
        let Some(domain) = self.domains.get_mut(&owner) else {
            return;
        };
        domain.usage.nodes = domain.usage.nodes.saturating_sub(1);
        domain.usage.memory = domain.usage.memory.saturating_sub(charge);
        let position = position as usize;
        if position < domain.owned.len() {
            domain.owned.swap_remove(position);
            let moved = domain.owned.get(position).copied();
            if let Some(moved) = moved.and_then(|m| self.tree.node_mut(m)) {
                moved.owner_pos = u32::try_from(position).unwrap_or(NIL);
            }
        }
        if let Some(node) = self.tree.node_mut(index) {
            node.owner_pos = NIL;
        }
    }

    /// Creates a child node, accounted to its owner.
    pub(super) fn create_node(
        &mut self,
        parent: u32,
        name: &[u8],
        value: &[u8],
        perms: &[Perm],
        now: u64,
    ) -> XsResult<u32> {
        let node = node::Node::new(name, value, perms, parent, now)?;
        let index = self.tree.add_child(parent, node, now)?;
        self.link_owner(index);
        Ok(index)
    }

    /// Whether an open transaction may still need the current version of a node last
    /// changed at `data_gen` (then it must be recorded before changing it).
    fn history_needed(&self, data_gen: u64) -> bool {
        self.open_txs
            .last()
            .is_some_and(|(snapshot, _, _)| *snapshot >= data_gen)
    }

    /// Records the current version of the node at `index` (path `path`) if an open
    /// transaction may need it, before `writer` changes it at generation `now`. Past a bound
    /// the open transactions are rebased before the next change (see `settle_history`).
    fn preserve(&mut self, index: u32, path: &[u8], now: u64, writer: DomId) {
        let Some(node) = self.tree.node(index) else {
            return;
        };
        if !self.history_needed(node.data_gen) {
            return;
        }
        let perms = node.perm_vec();
        let id = self.tree.nodes.id_at(index);
        self.history
            .record(path, id, node.data_gen, now, node.value(), &perms, writer);
        if self.history.bytes() > self.config.history_limit
            || self
                .history_bound(writer)
                .is_some_and(|bound| self.history.bytes_of(writer) > bound)
        {
            self.history_over = true;
        }
    }

    /// Sets the value of an existing node.
    pub(super) fn set_node_value(
        &mut self,
        index: u32,
        path: &[u8],
        value: &[u8],
        now: u64,
        writer: DomId,
    ) -> XsResult<()> {
        self.preserve(index, path, now, writer);
        let node = self.tree.node(index).ok_or(XsError::Io)?;
        // Entries for domains gone since the node was last written must not come back to
        // life with the new stamp (see `entry_is_live`).
        let stamp = node.data_gen;
        let stale = node
            .perms()
            .skip(1)
            .any(|p| !self.entry_is_live(p.domid, stamp));
        if stale {
            let perms = self.sanitize_perms(node.perms(), stamp);
            self.set_node_perms(index, path, &perms, now, writer)?;
        }
        let node = self.tree.node(index).ok_or(XsError::Io)?;
        let owner = node.owner();
        let change = delta_len(value.len(), node.value().len());
        let node = self.tree.node_mut(index).ok_or(XsError::Io)?;
        node.set_value(value)?;
        node.data_gen = now;
        self.charge(owner, change);
        Ok(())
    }

    /// Replaces the permissions of an existing node (moving it to its new owner's account).
    pub(super) fn set_node_perms(
        &mut self,
        index: u32,
        path: &[u8],
        perms: &[Perm],
        now: u64,
        writer: DomId,
    ) -> XsResult<()> {
        self.preserve(index, path, now, writer);
        self.unlink_owner(index);
        let result = match self.tree.node_mut(index) {
            Some(node) => {
                node.data_gen = now;
                node.set_perms(perms)
            }
            None => Err(XsError::Io),
        };
        self.link_owner(index);
        result
    }

    /// Removes the subtree at `index` (path `path`), firing watches as C xenstored does:
    /// every removed node fires watches on exactly it, children before parents, and the
    /// subtree's root fires watches on it and its ancestors if `fire_root`.
    ///
    /// One depth-first walk with an explicit stack (no recursion: a guest can build deep
    /// trees) that keeps the current node's path, so each node's path costs only its name.
    /// Only the root is unlinked from its parent; the nodes below are freed with it.
    pub(super) fn delete_subtree(
        &mut self,
        index: u32,
        path: &[u8],
        now: u64,
        writer: DomId,
        fire_root: bool,
    ) {
        let watched = self.watches.any_node_watches();
        let mut node_path = path.to_vec();
        // (node, next child to visit, length of the path without the node's own name)
        let mut stack: Vec<(u32, usize, usize)> = alloc::vec![(index, 0, path.len())];
        while let Some(&mut (node, ref mut next, path_len)) = stack.last_mut() {
            let child = self
                .tree
                .node(node)
                .and_then(|n| n.children().get(*next))
                .map(|c| c.index);
            if let Some(child) = child {
                *next = next.saturating_add(1);
                let before = node_path.len();
                let name = self.tree.node(child).map_or(&[][..], |n| n.name());
                path::push_segment(&mut node_path, name);
                stack.push((child, 0, before));
                continue;
            }
            // All children gone: the node itself.
            stack.pop();
            let is_root = node == index;
            self.preserve(node, &node_path, now, writer);
            if is_root {
                if fire_root {
                    self.fire(&node_path, Match::Subtree, Some(node), None);
                }
            } else if watched {
                self.fire(&node_path, Match::Exact, Some(node), None);
            }
            self.unlink_owner(node);
            if is_root {
                if let Some(n) = self.tree.node_mut(node) {
                    n.clear_children(now);
                }
                self.tree.remove_leaf(node, now);
            } else {
                self.tree.free_detached(node);
            }
            node_path.truncate(path_len);
        }
    }
}
