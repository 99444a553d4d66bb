//! The live node tree: lookups, sorted child insertion and removal, owner lists.
//!
//! Nothing here recurses: walks use explicit stacks, because a hostile domain can build trees
//! as deep as the path length allows (Xen XSA-418 was a stack exhaustion).

use alloc::vec::Vec;
use core::cmp::Ordering;

use super::arena::{Arena, NIL};
use super::node::{Node, NodeSlot, key_decides, name_key};
use crate::error::{XsError, XsResult};
use crate::path::segments;
use crate::perms::Perm;

/// The tree.
#[derive(Debug)]
pub(crate) struct Tree {
    pub(crate) nodes: Arena<NodeSlot>,
    pub(crate) root: u32,
}

impl Tree {
    /// A tree holding only the root, with `perms`.
    pub(crate) fn new(root_perms: &[Perm], generation: u64) -> XsResult<Tree> {
        let mut nodes = Arena::default();
        let root = nodes
            .insert(Node::new(b"", b"", root_perms, NIL, generation)?)?
            .index;
        Ok(Tree { nodes, root })
    }

    pub(crate) fn node(&self, index: u32) -> Option<&Node> {
        self.nodes.get(index)
    }

    pub(crate) fn node_mut(&mut self, index: u32) -> Option<&mut Node> {
        self.nodes.get_mut(index)
    }

    /// Binary search for `name` among `parent`'s children: `Ok(position)` if present, else
    /// `Err(insertion position)`.
    ///
    /// The search runs on the 8-byte name keys alone (a branch-free lower bound over one
    /// contiguous array); only names sharing their first 8 bytes are compared in full.
    pub(crate) fn search_child(&self, parent: &Node, name: &[u8]) -> Result<usize, usize> {
        let key = name_key(name);
        let children = parent.children();
        // Small directories (most of them) are scanned: the loads are independent and the
        // CPU overlaps them, where a binary search's probes wait on each other.
        let first = if children.len() <= 16 {
            children
                .iter()
                .position(|c| c.key() >= key)
                .unwrap_or(children.len())
        } else {
            children.partition_point(|c| c.key() < key)
        };
        let ties = children.get(first..).unwrap_or_default();
        if key_decides(name) {
            return match ties.first() {
                Some(c) if c.key() == key => Ok(first),
                _ => Err(first),
            };
        }
        for (offset, c) in ties.iter().enumerate() {
            let position = first.saturating_add(offset);
            if c.key() != key {
                return Err(position);
            }
            match self.nodes.get(c.index).map(|n| n.name().cmp(name)) {
                Some(Ordering::Equal) => return Ok(position),
                Some(Ordering::Greater) => return Err(position),
                _ => {}
            }
        }
        Err(first.saturating_add(ties.len()))
    }

    /// The child of `parent` called `name`.
    pub(crate) fn child(&self, parent: u32, name: &[u8]) -> Option<u32> {
        let node = self.nodes.get(parent)?;
        let position = self.search_child(node, name).ok()?;
        node.children().get(position).map(|c| c.index)
    }

    /// The node at a canonical node path.
    pub(crate) fn lookup(&self, path: &[u8]) -> Option<u32> {
        segments(path).try_fold(self.root, |cur, seg| self.child(cur, seg))
    }

    /// The deepest existing node on a canonical node path, and the length of the path prefix
    /// it stands for (equal to `path.len()` when the whole path exists).
    pub(crate) fn lookup_nearest(&self, path: &[u8]) -> (u32, usize) {
        let mut cur = self.root;
        let mut covered = 1usize.min(path.len());
        let mut offset = 0usize;
        for seg in path.split(|&b| b == b'/') {
            let end = offset.saturating_add(seg.len());
            offset = end.saturating_add(1);
            if seg.is_empty() {
                continue;
            }
            match self.child(cur, seg) {
                Some(next) => {
                    cur = next;
                    covered = end;
                }
                None => break,
            }
        }
        (cur, covered)
    }

    /// Inserts `node` as a child of `parent` (which must not already have a child of that
    /// name), stamping the parent's child set with `generation`.
    pub(crate) fn add_child(&mut self, parent: u32, node: Node, generation: u64) -> XsResult<u32> {
        let name_len = node.name().len();
        let key = name_key(node.name());
        let parent_node = self.nodes.get(parent).ok_or(XsError::Io)?;
        let position = match self.search_child(parent_node, node.name()) {
            Ok(_) => return Err(XsError::Exist),
            Err(p) => p,
        };
        let index = self.nodes.insert(node)?.index;
        let Some(parent_node) = self.nodes.get_mut(parent) else {
            self.nodes.remove(index);
            return Err(XsError::Io);
        };
        parent_node.insert_child(position, key, index, name_len, generation);
        Ok(index)
    }

    /// Unlinks a childless node from its parent and frees it. Returns the node.
    pub(crate) fn remove_leaf(&mut self, index: u32, generation: u64) -> Option<Node> {
        let node = self.nodes.get(index)?;
        if !node.children().is_empty() || index == self.root {
            return None;
        }
        let parent = node.parent;
        let parent_node = self.nodes.get(parent)?;
        let position = self.search_child(parent_node, node.name()).ok()?;
        let name_len = node.name().len();
        self.nodes
            .get_mut(parent)?
            .remove_child(position, name_len, generation);
        self.nodes.remove(index)
    }

    /// Frees a node without unlinking it from its parent: only for nodes whose parent is
    /// being freed too (removing a whole subtree unlinks just its root, so that emptying a
    /// directory of `n` children costs `O(n)`, not `O(n^2)`).
    pub(crate) fn free_detached(&mut self, index: u32) -> Option<Node> {
        if index == self.root {
            return None;
        }
        self.nodes.remove(index)
    }

    /// Writes the canonical path of `index` to `out`.
    pub(crate) fn path_of(&self, index: u32, out: &mut Vec<u8>) {
        out.clear();
        let mut names: Vec<&[u8]> = Vec::new();
        let mut cur = index;
        while cur != self.root {
            let Some(node) = self.nodes.get(cur) else {
                break;
            };
            names.push(node.name());
            cur = node.parent;
        }
        if names.is_empty() {
            out.push(b'/');
        }
        for name in names.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(name);
        }
    }

    /// Number of live nodes (the root included).
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domid::DomId;

    fn leaf(name: &[u8], parent: u32) -> Node {
        Node::new(name, b"v", &[Perm::owner(DomId(0))], parent, 1).unwrap()
    }

    #[test]
    fn insert_lookup_remove_keeps_children_sorted() {
        let mut t = Tree::new(&[Perm::owner(DomId(0))], 0).unwrap();
        let root = t.root;
        let names: [&[u8]; 6] = [b"b", b"a", b"abcdefghij", b"abcdefgh", b"c-d", b"0"];
        for n in names {
            t.add_child(root, leaf(n, root), 5).unwrap();
        }
        assert_eq!(t.add_child(root, leaf(b"a", root), 6), Err(XsError::Exist));
        let listed: Vec<&[u8]> = t
            .node(root)
            .unwrap()
            .children()
            .iter()
            .map(|c| t.node(c.index).unwrap().name())
            .collect();
        let mut sorted = names.to_vec();
        sorted.sort();
        assert_eq!(listed, sorted);
        for n in names {
            let mut p = b"/".to_vec();
            p.extend_from_slice(n);
            let idx = t.lookup(&p).unwrap();
            assert_eq!(t.node(idx).unwrap().name(), n);
        }
        assert_eq!(t.lookup(b"/abcdefghi"), None);
        let idx = t.lookup(b"/abcdefgh").unwrap();
        assert!(t.remove_leaf(idx, 7).is_some());
        assert_eq!(t.lookup(b"/abcdefgh"), None);
        assert!(t.lookup(b"/abcdefghij").is_some());
        assert_eq!(t.node(root).unwrap().children().len(), 5);
        assert_eq!(t.node(root).unwrap().gencnt(), 7);
    }

    #[test]
    fn nearest_and_paths() {
        let mut t = Tree::new(&[Perm::owner(DomId(0))], 0).unwrap();
        let a = t.add_child(t.root, leaf(b"a", t.root), 1).unwrap();
        let b = t.add_child(a, leaf(b"b", a), 1).unwrap();
        assert_eq!(t.lookup_nearest(b"/a/b/c/d"), (b, 4));
        assert_eq!(t.lookup_nearest(b"/a/b"), (b, 4));
        assert_eq!(t.lookup_nearest(b"/x"), (t.root, 1));
        assert_eq!(t.lookup_nearest(b"/"), (t.root, 1));
        let mut p = Vec::new();
        t.path_of(b, &mut p);
        assert_eq!(p, b"/a/b");
        t.path_of(t.root, &mut p);
        assert_eq!(p, b"/");
    }

    #[test]
    fn deep_trees_need_no_recursion() {
        let mut t = Tree::new(&[Perm::owner(DomId(0))], 0).unwrap();
        let mut cur = t.root;
        for _ in 0..100_000 {
            cur = t.add_child(cur, leaf(b"d", cur), 1).unwrap();
        }
        let mut p = Vec::new();
        t.path_of(cur, &mut p);
        assert_eq!(p.len(), 200_000);
    }
}
