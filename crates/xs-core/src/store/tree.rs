//! The live node tree: lookups, sorted child insertion and removal, owner lists.
//!
//! Nothing here recurses: walks use explicit stacks, because a hostile domain can build trees
//! as deep as the path length allows (Xen XSA-418 was a stack exhaustion).

use alloc::vec::Vec;
use core::cell::Cell;
use core::cmp::Ordering;

use super::arena::{Arena, NIL};
use super::node::{ChildRef, Node, NodeSlot, key_decides, name_key};
use crate::error::{XsError, XsResult};
use crate::perms::Perm;

/// The tree.
#[derive(Debug)]
pub(crate) struct Tree {
    pub(crate) nodes: Arena<NodeSlot>,
    pub(crate) root: u32,
    /// Nodes freed so far: while it is unchanged, every node index still names the node it
    /// named (nodes never move, and a slot is reused only after a free).
    removals: u64,
    /// Where the last lookup ended (see [`Cursor`]).
    cursor: Cursor,
}

/// The directory the last lookup ended in, so that the next lookup in it walks one level
/// instead of the whole path: requests come in runs on one directory (a frontend reading
/// `device/vif/0/state`, then `.../backend-id`, ...; a toolstack writing a device's nodes),
/// and most of a cached lookup's time is the walk down from `/`. Like the dentry cache a
/// kernel's path walk starts from, with a single entry.
///
/// Lookups take `&self`, hence the cells; the tree is used from one thread at a time.
#[derive(Default)]
struct Cursor {
    /// The directory's path (canonical, not `/`); empty when there is none.
    dir: Cell<Vec<u8>>,
    /// Its node's index.
    node: Cell<u32>,
    /// [`Tree::removals`] when the cursor was set: the cursor holds only while it is equal.
    removals: Cell<u64>,
}

impl core::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cursor")
            .field("node", &self.node.get())
            .field("removals", &self.removals.get())
            .finish_non_exhaustive()
    }
}

/// Longest directory path the cursor keeps (longer ones are walked from `/` each time),
/// bounding its buffer.
const CURSOR_DIR_MAX: usize = 256;

impl Tree {
    /// A tree holding only the root, with `perms`.
    pub(crate) fn new(root_perms: &[Perm], generation: u64) -> XsResult<Tree> {
        let mut nodes = Arena::default();
        let root = nodes
            .insert(Node::new(b"", b"", root_perms, NIL, generation)?)?
            .index;
        Ok(Tree {
            nodes,
            root,
            removals: 0,
            cursor: Cursor::default(),
        })
    }

    /// Frees the node in slot `index` (every removal goes through here, to count it).
    fn free(&mut self, index: u32) -> Option<Node> {
        self.removals = self.removals.wrapping_add(1);
        self.nodes.remove(index)
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
        self.search_child_keyed(parent, name_key(name), name)
    }

    /// [`Tree::search_child`] with the name's key already computed (`key == name_key(name)`).
    fn search_child_keyed(&self, parent: &Node, key: u64, name: &[u8]) -> Result<usize, usize> {
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

    /// The child of `parent` called `name`, whose key is `key`.
    pub(crate) fn child_keyed(&self, parent: u32, key: u64, name: &[u8]) -> Option<u32> {
        let node = self.nodes.get(parent)?;
        let position = self.search_child_keyed(node, key, name).ok()?;
        node.children().get(position).map(|c| c.index)
    }

    /// The node at a canonical node path.
    pub(crate) fn lookup(&self, path: &[u8]) -> Option<u32> {
        let (index, covered) = self.lookup_nearest(path);
        (covered == path.len()).then_some(index)
    }

    /// The deepest existing node on a canonical node path, and the length of the path prefix
    /// it stands for (equal to `path.len()` when the whole path exists).
    ///
    /// The walk starts at the cursor when `path` lies below it, else at `/`; it leaves the
    /// cursor at the directory it ended in: the found node's parent, or the nearest node when
    /// the path does not exist (where a write will create it).
    pub(crate) fn lookup_nearest(&self, path: &[u8]) -> (u32, usize) {
        let mut dir = self.cursor.dir.take();
        let below_cursor = self.cursor.removals.get() == self.removals
            && !dir.is_empty()
            && path.get(dir.len()) == Some(&b'/')
            && path.starts_with(&dir);
        let (mut cur, mut covered) = if below_cursor {
            (self.cursor.node.get(), dir.len())
        } else {
            (self.root, 1usize.min(path.len()))
        };
        // The node above `cur` and the length of its path, once the walk has moved.
        let mut above = None;
        for s in KeyedSegments::below(path, covered) {
            match self.child_keyed(cur, s.key, s.name) {
                Some(next) => {
                    above = Some((cur, covered));
                    cur = next;
                    covered = s.end;
                }
                None => break,
            }
        }
        let ended_in = if covered == path.len() {
            above
        } else {
            Some((cur, covered))
        };
        match ended_in {
            Some((node, len)) if len > 1 && len <= CURSOR_DIR_MAX => {
                if !(below_cursor && len == dir.len()) {
                    dir.clear();
                    dir.extend_from_slice(path.get(..len).unwrap_or_default());
                    self.cursor.node.set(node);
                    self.cursor.removals.set(self.removals);
                }
            }
            // Still in the cursor's directory (a lookup of the directory itself), or nowhere
            // worth keeping.
            _ if below_cursor => {}
            _ => dir.clear(),
        }
        self.cursor.dir.set(dir);
        (cur, covered)
    }

    /// Whether the cursor, while it holds, names the node a walk from `/` finds at its
    /// directory (for [`crate::Store::check`]).
    pub(crate) fn cursor_is_sound(&self) -> bool {
        let dir = self.cursor.dir.take();
        let holds = self.cursor.removals.get() == self.removals && !dir.is_empty();
        let found = KeyedSegments::new(&dir)
            .try_fold(self.root, |cur, s| self.child_keyed(cur, s.key, s.name));
        let sound = !holds || found == Some(self.cursor.node.get());
        self.cursor.dir.set(dir);
        sound
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
            self.free(index);
            return Err(XsError::Io);
        };
        parent_node.insert_child(position, key, index, name_len, generation);
        Ok(index)
    }

    /// Links `new[1..]` (nodes already in the arena, each naming `parent` as its parent)
    /// as children of `parent`, beside those it has, in one step; `new[0]` is room for the
    /// header (see [`Node::set_children`]). `new_sorted` says `new[1..]` is in name order.
    /// Fails, changing nothing, if two children would share a name.
    pub(crate) fn attach_children(
        &mut self,
        parent: u32,
        mut new: Vec<ChildRef>,
        new_sorted: bool,
        generation: u64,
    ) -> XsResult<()> {
        let node = self.nodes.get(parent).ok_or(XsError::Io)?;
        let mut bytes = node.child_name_bytes();
        for c in new.get(1..).unwrap_or_default() {
            let len = self.nodes.get(c.index).map_or(0, |n| n.name().len());
            bytes = bytes.saturating_add(len).saturating_add(1);
        }
        if new.is_empty() {
            new.push(ChildRef::default());
        }
        if !(node.children().is_empty() && new_sorted) {
            new.extend_from_slice(node.children());
            let name = |c: &ChildRef| self.nodes.get(c.index).map_or(&[][..], |n| n.name());
            let children = new.get_mut(1..).unwrap_or_default();
            children
                .sort_unstable_by(|a, b| a.key().cmp(&b.key()).then_with(|| name(a).cmp(name(b))));
            if children
                .windows(2)
                .any(|w| matches!(w, [a, b] if a.key() == b.key() && name(a) == name(b)))
            {
                return Err(XsError::Exist);
            }
        }
        let node = self.nodes.get_mut(parent).ok_or(XsError::Io)?;
        node.set_children(new, bytes, generation);
        Ok(())
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
        self.free(index)
    }

    /// Frees a node without unlinking it from its parent: only for nodes whose parent is
    /// being freed too (removing a whole subtree unlinks just its root, so that emptying a
    /// directory of `n` children costs `O(n)`, not `O(n^2)`).
    pub(crate) fn free_detached(&mut self, index: u32) -> Option<Node> {
        if index == self.root {
            return None;
        }
        self.free(index)
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

/// One segment of a canonical node path, with its name key and where it ends in the path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct KeyedSegment<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) key: u64,
    /// Offset just past the segment: `path[..end]` is the prefix naming this node.
    pub(crate) end: usize,
}

/// The segments of a canonical node path with their name keys, found eight bytes at a time:
/// every request walks its path, and a byte loop looking for `/` followed by a second pass
/// building the key was a third of a cached read's time.
pub(crate) struct KeyedSegments<'a> {
    path: &'a [u8],
    /// Offset of the next segment's first byte.
    pos: usize,
}

impl<'a> KeyedSegments<'a> {
    pub(crate) fn new(path: &'a [u8]) -> Self {
        // Canonical node paths start with the `/` of the root; `/` alone has no segments.
        KeyedSegments { path, pos: 1 }
    }

    /// The segments below the node that `path[..covered]` names (`covered` being 1 for `/`).
    pub(crate) fn below(path: &'a [u8], covered: usize) -> Self {
        // Past the `/` that follows the prefix; the root's prefix is that `/`.
        let pos = if covered <= 1 {
            1
        } else {
            covered.saturating_add(1)
        };
        KeyedSegments { path, pos }
    }
}

/// `0x01` in every byte.
const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
/// `0x80` in every byte.
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
/// `/` in every byte.
const SLASHES: u64 = u64::from_ne_bytes([b'/'; 8]);

/// The index of the first `/` among the eight bytes of `word` (loaded little-endian), or 8.
/// Bytes above the first zero may be flagged wrongly by the subtraction's borrow, never
/// below it, so the lowest flag is exact.
#[inline]
fn first_slash(word: u64) -> usize {
    let x = word ^ SLASHES;
    let flags = x.wrapping_sub(ONES) & !x & HIGHS;
    (flags.trailing_zeros() / 8) as usize
}

impl<'a> Iterator for KeyedSegments<'a> {
    type Item = KeyedSegment<'a>;

    #[inline]
    fn next(&mut self) -> Option<KeyedSegment<'a>> {
        let start = self.pos;
        let rest = self.path.get(start..).filter(|r| !r.is_empty())?;
        // A name of 1 to 7 bytes followed by `/` (most of them): found and keyed from one
        // word, the key being the name's bytes with the rest zeroed.
        let short = rest.first_chunk::<8>().and_then(|head| {
            let word = u64::from_le_bytes(*head);
            let n = first_slash(word);
            (1..8).contains(&n).then(|| {
                let keep = u64::MAX.wrapping_shl(64u32.wrapping_sub(8u32.wrapping_mul(n as u32)));
                (n, word.swap_bytes() & keep)
            })
        });
        // Otherwise (a long name, the path's last few bytes, or the empty name of a
        // non-canonical path) a plain search.
        let (len, key) = short.unwrap_or_else(|| {
            let len = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            (len, name_key(rest.get(..len).unwrap_or_default()))
        });
        let name = rest.get(..len).unwrap_or_default();
        let end = start.saturating_add(len);
        self.pos = end.saturating_add(1);
        Some(KeyedSegment { name, key, end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domid::DomId;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;
    use proptest::prelude::*;

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

    /// The segments, keys and ends the plain definitions give.
    fn reference(path: &[u8]) -> Vec<(Vec<u8>, u64, usize)> {
        let mut out = Vec::new();
        let mut offset = 0usize;
        for seg in path.split(|&b| b == b'/') {
            let end = offset + seg.len();
            offset = end + 1;
            if !seg.is_empty() {
                out.push((seg.to_vec(), name_key(seg), end));
            }
        }
        out
    }

    fn keyed(path: &[u8]) -> Vec<(Vec<u8>, u64, usize)> {
        KeyedSegments::new(path)
            .map(|s| (s.name.to_vec(), s.key, s.end))
            .collect()
    }

    #[test]
    fn keyed_segments_match_the_plain_split() {
        let names: [&str; 9] = [
            "a",
            "ab",
            "abcdefg",
            "abcdefgh",
            "abcdefghi",
            "0",
            "vif",
            "backend",
            "x-y_z0123456789",
        ];
        let mut paths = vec![b"/".to_vec()];
        for a in names {
            paths.push(format!("/{a}").into_bytes());
            for b in names {
                paths.push(format!("/{a}/{b}").into_bytes());
                for c in names {
                    paths.push(format!("/local/{a}/{b}/{c}").into_bytes());
                }
            }
        }
        for p in &paths {
            assert_eq!(keyed(p), reference(p), "{}", String::from_utf8_lossy(p));
        }
        assert!(keyed(b"/").is_empty());
    }

    proptest::proptest! {
        #[test]
        fn keyed_segments_on_random_paths(segs in proptest::collection::vec("[a-z0-9_-]{1,12}", 0..6)) {
            let mut p = b"/".to_vec();
            p.extend_from_slice(segs.join("/").as_bytes());
            proptest::prop_assert_eq!(keyed(&p), reference(&p));
        }

        #[test]
        fn keyed_segments_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let _ = keyed(&bytes);
        }
    }

    /// `lookup_nearest` without the cursor: a walk from `/`.
    fn nearest_from_root(t: &Tree, path: &[u8]) -> (u32, usize) {
        let mut cur = t.root;
        let mut covered = 1usize.min(path.len());
        for s in KeyedSegments::new(path) {
            match t.child_keyed(cur, s.key, s.name) {
                Some(next) => {
                    cur = next;
                    covered = s.end;
                }
                None => break,
            }
        }
        (cur, covered)
    }

    /// Creates the missing nodes of `path`; returns the last.
    fn add_path(t: &mut Tree, path: &[u8]) -> u32 {
        let (mut cur, covered) = nearest_from_root(t, path);
        for s in KeyedSegments::below(path, covered) {
            cur = t.add_child(cur, leaf(s.name, cur), 1).unwrap();
        }
        cur
    }

    #[test]
    fn cursor_survives_growth_and_not_removal() {
        let mut t = Tree::new(&[Perm::owner(DomId(0))], 0).unwrap();
        let c = add_path(&mut t, b"/a/b/c");
        let b = t.lookup(b"/a/b").unwrap();
        assert_eq!(t.lookup(b"/a/b/c"), Some(c));
        // Growth keeps the cursor (at /a/b): a new sibling is found through it.
        let d = add_path(&mut t, b"/a/b/d");
        assert_eq!(t.lookup(b"/a/b/d"), Some(d));
        assert_eq!(t.lookup_nearest(b"/a/b/x/y"), (b, 4));
        // /a/b freed while the cursor is on it, its slot reused by /a/e (which has a child
        // c too): the cursor must not lead to /a/e/c.
        t.remove_leaf(c, 2).unwrap();
        t.remove_leaf(d, 2).unwrap();
        t.remove_leaf(b, 2).unwrap();
        let e = add_path(&mut t, b"/a/e");
        assert_eq!(e, b, "the freed slot is reused");
        let ec = add_path(&mut t, b"/a/e/c");
        assert_eq!(t.lookup(b"/a/b/c"), None);
        assert_eq!(t.lookup_nearest(b"/a/b/c"), (t.lookup(b"/a").unwrap(), 2));
        assert_eq!(t.lookup(b"/a/e/c"), Some(ec));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Add(Vec<u8>),
        Remove(Vec<u8>),
        Look(Vec<u8>),
    }

    fn small_path() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("long-name-1")], 1..5)
            .prop_map(|segs| format!("/{}", segs.join("/")).into_bytes())
    }

    proptest::proptest! {
        /// Whatever the history of additions and removals, a lookup through the cursor finds
        /// what a walk from `/` finds.
        #[test]
        fn cursor_lookups_match_walks_from_the_root(ops in proptest::collection::vec(
            proptest::prop_oneof![
                small_path().prop_map(Op::Add),
                small_path().prop_map(Op::Remove),
                small_path().prop_map(Op::Look),
            ],
            1..60,
        )) {
            let mut t = Tree::new(&[Perm::owner(DomId(0))], 0).unwrap();
            for op in ops {
                match op {
                    Op::Add(p) => {
                        add_path(&mut t, &p);
                    }
                    Op::Remove(p) => {
                        // Found without the cursor, which may well stay on the node.
                        let (i, covered) = nearest_from_root(&t, &p);
                        if covered == p.len() {
                            t.remove_leaf(i, 2);
                        }
                    }
                    Op::Look(p) => {
                        prop_assert_eq!(t.lookup_nearest(&p), nearest_from_root(&t, &p));
                    }
                }
            }
        }
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
