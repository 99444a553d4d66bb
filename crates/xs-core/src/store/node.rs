//! One node of the tree, packed for memory.
//!
//! A node's permissions, name and value share one heap allocation
//! (`[perm entries: 3 bytes each][name][value]`), and a directory's children are one more,
//! an exact-size sorted array that leaves do not have. A node with its arena slot is 56
//! bytes; a child link in its parent is 12.
//!
//! Children are kept sorted by name (bytewise, which for the allowed characters is ASCII
//! order), so `DIRECTORY` lists them in that order: deterministic, independent of history,
//! and the same order every `DIRECTORY_PART` offset refers to. (C xenstored lists in
//! insertion order; no client may depend on either.) Each link carries the first 8 bytes of
//! the child's name, so a lookup binary-searches one contiguous array and usually decides
//! without touching the child: names shorter than 8 bytes (most XenStore names) are decided
//! by the key alone.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::arena::{NIL, Slot};
use crate::domid::DomId;
use crate::error::{XsError, XsResult};
use crate::perms::{Access, Perm};

/// Bytes per packed permission entry: domid (LE u16) and access bits.
const PERM_BYTES: usize = 3;

/// A child link: the first 8 bytes of the child's name (big-endian, zero-padded, so that
/// integer order is name order) and the child's arena index. Three `u32`s keep it at 12
/// bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ChildRef {
    key_hi: u32,
    key_lo: u32,
    pub(crate) index: u32,
}

impl ChildRef {
    pub(crate) fn new(key: u64, index: u32) -> ChildRef {
        ChildRef {
            key_hi: (key >> 32) as u32,
            key_lo: key as u32,
            index,
        }
    }

    /// The name key.
    pub(crate) fn key(&self) -> u64 {
        (u64::from(self.key_hi) << 32) | u64::from(self.key_lo)
    }
}

/// The sort key of a name: its first 8 bytes, big-endian, zero-padded. Computed in
/// registers (a copy into a stack buffer and reload cost a store-forwarding stall on every
/// level of every lookup).
#[inline]
pub(crate) fn name_key(name: &[u8]) -> u64 {
    if let Some(head) = name.first_chunk::<8>() {
        return u64::from_be_bytes(*head);
    }
    name.iter()
        .fold((0u64, 56u32), |(key, shift), &b| {
            (
                key | u64::from(b).wrapping_shl(shift),
                shift.wrapping_sub(8),
            )
        })
        .0
}

/// Whether two names with equal keys are equal without looking at them: true when the name is
/// shorter than the key (its last key byte is padding, which no valid name contains).
pub(crate) fn key_decides(name: &[u8]) -> bool {
    name.len() < 8
}

/// A node.
#[derive(Debug)]
pub(crate) struct Node {
    data: Box<[u8]>,
    /// Empty for a node that never had children. Otherwise entry 0 is a header (the child
    /// set's generation in the key, the byte size of the children's names in the index) and
    /// the children follow, sorted by name. The header stays when the last child goes, so
    /// the generation keeps recording changes.
    children: Box<[ChildRef]>,
    /// Generation stamp of the last change to the value or permissions (or of creation).
    pub(crate) data_gen: u64,
    /// Arena index of the parent ([`NIL`] for the root).
    pub(crate) parent: u32,
    /// Position in the owner's list of owned nodes ([`NIL`] when the owner keeps none).
    pub(crate) owner_pos: u32,
    name_len: u16,
    n_perms: u16,
    /// Generation of the arena slot holding the node.
    generation: u32,
}

/// An arena slot for a node: the node keeps the slot's generation in its own padding.
#[derive(Debug)]
pub(crate) enum NodeSlot {
    Used(Node),
    Free { generation: u32 },
}

impl Slot for NodeSlot {
    type Value = Node;

    fn vacant(generation: u32) -> Self {
        NodeSlot::Free { generation }
    }

    fn generation(&self) -> u32 {
        match self {
            NodeSlot::Used(n) => n.generation,
            NodeSlot::Free { generation } => *generation,
        }
    }

    fn fill(&mut self, mut node: Node) {
        node.generation = self.generation();
        *self = NodeSlot::Used(node);
    }

    fn take(&mut self) -> Option<Node> {
        let generation = match self {
            NodeSlot::Used(n) => n.generation.wrapping_add(1),
            NodeSlot::Free { .. } => return None,
        };
        match core::mem::replace(self, NodeSlot::Free { generation }) {
            NodeSlot::Used(n) => Some(n),
            NodeSlot::Free { .. } => None,
        }
    }

    fn get(&self) -> Option<&Node> {
        match self {
            NodeSlot::Used(n) => Some(n),
            NodeSlot::Free { .. } => None,
        }
    }

    fn get_mut(&mut self) -> Option<&mut Node> {
        match self {
            NodeSlot::Used(n) => Some(n),
            NodeSlot::Free { .. } => None,
        }
    }
}

fn pack(perms: &[Perm], name: &[u8], value: &[u8]) -> XsResult<(Box<[u8]>, u16, u16)> {
    let n_perms = u16::try_from(perms.len()).map_err(|_| XsError::Inval)?;
    let name_len = u16::try_from(name.len()).map_err(|_| XsError::Inval)?;
    let perm_len = perms.len().checked_mul(PERM_BYTES).ok_or(XsError::Inval)?;
    let total = perm_len
        .checked_add(name.len())
        .and_then(|n| n.checked_add(value.len()))
        .ok_or(XsError::Inval)?;
    let mut data = Vec::with_capacity(total);
    for p in perms {
        data.extend_from_slice(&p.domid.0.to_le_bytes());
        data.push(p.access.bits());
    }
    data.extend_from_slice(name);
    data.extend_from_slice(value);
    Ok((data.into_boxed_slice(), name_len, n_perms))
}

impl Node {
    /// A new node without children. `perms` must not be empty.
    pub(crate) fn new(
        name: &[u8],
        value: &[u8],
        perms: &[Perm],
        parent: u32,
        generation: u64,
    ) -> XsResult<Node> {
        if perms.is_empty() {
            return Err(XsError::Inval);
        }
        let (data, name_len, n_perms) = pack(perms, name, value)?;
        Ok(Node {
            data,
            children: Box::default(),
            data_gen: generation,
            parent,
            owner_pos: NIL,
            name_len,
            n_perms,
            generation: 0,
        })
    }

    fn perm_len(&self) -> usize {
        usize::from(self.n_perms).saturating_mul(PERM_BYTES)
    }

    /// The node's own name (its last path segment; empty for the root).
    pub(crate) fn name(&self) -> &[u8] {
        let start = self.perm_len();
        let end = start.saturating_add(usize::from(self.name_len));
        self.data.get(start..end).unwrap_or_default()
    }

    /// The value.
    pub(crate) fn value(&self) -> &[u8] {
        let start = self.perm_len().saturating_add(usize::from(self.name_len));
        self.data.get(start..).unwrap_or_default()
    }

    /// The permission entries, owner first.
    pub(crate) fn perms(&self) -> impl Iterator<Item = Perm> + Clone + '_ {
        self.data
            .get(..self.perm_len())
            .unwrap_or_default()
            .chunks_exact(PERM_BYTES)
            .map(|c| match *c {
                [lo, hi, bits] => Perm::new(
                    DomId(u16::from_le_bytes([lo, hi])),
                    Access::from_bits_truncate(bits),
                ),
                _ => Perm::owner(DomId::DOM0),
            })
    }

    /// The permission entries as a vector.
    pub(crate) fn perm_vec(&self) -> Vec<Perm> {
        self.perms().collect()
    }

    /// Number of permission entries.
    pub(crate) fn perm_count(&self) -> usize {
        usize::from(self.n_perms)
    }

    /// The owner (first permission entry).
    pub(crate) fn owner(&self) -> DomId {
        self.perms().next().map_or(DomId::DOM0, |p| p.domid)
    }

    /// Replaces the value, reusing the allocation (the allocator can often resize in place).
    pub(crate) fn set_value(&mut self, value: &[u8]) -> XsResult<()> {
        let keep = self.perm_len().saturating_add(usize::from(self.name_len));
        if keep > self.data.len() {
            return Err(XsError::Io);
        }
        let mut data = core::mem::take(&mut self.data).into_vec();
        data.truncate(keep);
        data.reserve_exact(value.len());
        data.extend_from_slice(value);
        self.data = data.into_boxed_slice();
        Ok(())
    }

    /// Replaces the permissions. `perms` must not be empty.
    pub(crate) fn set_perms(&mut self, perms: &[Perm]) -> XsResult<()> {
        if perms.is_empty() {
            return Err(XsError::Inval);
        }
        let (data, _, n_perms) = pack(perms, self.name(), self.value())?;
        self.data = data;
        self.n_perms = n_perms;
        Ok(())
    }

    /// The children, sorted by name.
    pub(crate) fn children(&self) -> &[ChildRef] {
        self.children.get(1..).unwrap_or_default()
    }

    fn header(&self) -> Option<&ChildRef> {
        self.children.first()
    }

    /// Generation stamp of the last change to the set of children (0 if it never had any).
    pub(crate) fn children_gen(&self) -> u64 {
        self.header().map_or(0, ChildRef::key)
    }

    /// Bytes of the children's names as a `DIRECTORY` reply carries them.
    pub(crate) fn child_name_bytes(&self) -> usize {
        self.header().map_or(0, |h| h.index as usize)
    }

    /// Inserts a child link at `position` among the children.
    ///
    /// The array stays exact-size (a capacity field would cost every node 8 bytes), so it is
    /// grown by one in place: `realloc` usually extends the block without copying it, and the
    /// links after `position` move once. A directory of n children then costs O(n) per
    /// insert in moved bytes, as C xenstored's rewrite of the parent's record does.
    pub(crate) fn insert_child(
        &mut self,
        position: usize,
        key: u64,
        index: u32,
        name_len: usize,
        generation: u64,
    ) {
        let bytes = self
            .child_name_bytes()
            .saturating_add(name_len)
            .saturating_add(1);
        let mut entries = core::mem::take(&mut self.children).into_vec();
        if entries.is_empty() {
            entries.reserve_exact(2);
            entries.push(header(generation, bytes));
        } else {
            entries.reserve_exact(1);
            if let Some(h) = entries.first_mut() {
                *h = header(generation, bytes);
            }
        }
        let at = position.saturating_add(1).min(entries.len());
        entries.insert(at, ChildRef::new(key, index));
        self.children = entries.into_boxed_slice();
    }

    /// Replaces the children with `entries[1..]` (sorted by name, no two alike), whose
    /// names take `name_bytes` as a `DIRECTORY` reply carries them; `entries[0]` is room
    /// for the header. A restore links a directory's children at once this way instead of
    /// growing the array by one for each.
    pub(crate) fn set_children(
        &mut self,
        mut entries: Vec<ChildRef>,
        name_bytes: usize,
        generation: u64,
    ) {
        match entries.first_mut() {
            Some(h) => *h = header(generation, name_bytes),
            None => entries.push(header(generation, name_bytes)),
        }
        self.children = entries.into_boxed_slice();
    }

    /// Removes the child link at `position`, shrinking the array in place.
    pub(crate) fn remove_child(&mut self, position: usize, name_len: usize, generation: u64) {
        let bytes = self
            .child_name_bytes()
            .saturating_sub(name_len.saturating_add(1));
        let mut entries = core::mem::take(&mut self.children).into_vec();
        match entries.first_mut() {
            Some(h) => *h = header(generation, bytes),
            None => entries.push(header(generation, bytes)),
        }
        let at = position.saturating_add(1);
        if at < entries.len() {
            entries.remove(at);
        }
        self.children = entries.into_boxed_slice();
    }

    /// Forgets all children (when they were freed with their whole subtree).
    pub(crate) fn clear_children(&mut self, generation: u64) {
        if !self.children.is_empty() {
            self.children = alloc::vec![header(generation, 0)].into_boxed_slice();
        }
    }

    /// The generation count `DIRECTORY_PART` reports: changes whenever the value, the
    /// permissions or the set of children change.
    pub(crate) fn gencnt(&self) -> u64 {
        self.children_gen().max(self.data_gen)
    }

    /// The size the `node-size` quota limits: value plus children's names.
    pub(crate) fn quota_size(&self) -> usize {
        self.value().len().saturating_add(self.child_name_bytes())
    }

    /// Heap bytes owned by this node (its packed data and child array), not its arena slot.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.data.len().saturating_add(
            self.children
                .len()
                .saturating_mul(core::mem::size_of::<ChildRef>()),
        )
    }
}

fn header(generation: u64, name_bytes: usize) -> ChildRef {
    ChildRef::new(generation, u32::try_from(name_bytes).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_unpacks() {
        let perms = [
            Perm::owner(DomId(7)),
            Perm::new(DomId(0x1234), Access::READ | Access::WRITE),
        ];
        let mut n = Node::new(b"name", b"val\0ue", &perms, 3, 9).unwrap();
        assert_eq!(n.name(), b"name");
        assert_eq!(n.value(), b"val\0ue");
        assert_eq!(n.perm_vec(), perms);
        assert_eq!(n.owner(), DomId(7));
        n.set_value(b"").unwrap();
        assert_eq!((n.name(), n.value()), (&b"name"[..], &b""[..]));
        n.set_perms(&[Perm::owner(DomId(1))]).unwrap();
        assert_eq!(n.perm_count(), 1);
        assert_eq!((n.name(), n.value()), (&b"name"[..], &b""[..]));
        assert!(Node::new(b"x", b"", &[], 0, 0).is_err());
    }

    #[test]
    fn child_links_and_header() {
        let mut n = Node::new(b"d", b"", &[Perm::owner(DomId(0))], NIL, 1).unwrap();
        assert_eq!(
            (n.children().len(), n.children_gen(), n.child_name_bytes()),
            (0, 0, 0)
        );
        n.insert_child(0, name_key(b"b"), 10, 1, 5);
        n.insert_child(0, name_key(b"a"), 11, 1, 6);
        n.insert_child(2, name_key(b"ccc"), 12, 3, 7);
        let idx: Vec<u32> = n.children().iter().map(|c| c.index).collect();
        assert_eq!(idx, [11, 10, 12]);
        assert_eq!((n.children_gen(), n.child_name_bytes()), (7, 8));
        n.remove_child(1, 1, 8);
        let idx: Vec<u32> = n.children().iter().map(|c| c.index).collect();
        assert_eq!(idx, [11, 12]);
        assert_eq!(
            (n.children_gen(), n.child_name_bytes(), n.gencnt()),
            (8, 6, 8)
        );
        n.remove_child(0, 1, 9);
        n.remove_child(0, 3, 10);
        assert_eq!(
            (n.children().len(), n.children_gen(), n.child_name_bytes()),
            (0, 10, 0)
        );
    }

    #[test]
    fn keys_order_like_names() {
        let mut names: Vec<&[u8]> = alloc::vec![
            b"a",
            b"ab",
            b"abcdefgh",
            b"abcdefghi",
            b"abcdefgz",
            b"b",
            b"B",
            b"0",
            b"-",
            b"_"
        ];
        names.sort();
        for w in names.windows(2) {
            assert!(name_key(w[0]) <= name_key(w[1]), "{:?}", w);
        }
        assert_eq!(name_key(b"abcdefgh"), name_key(b"abcdefghi"));
        assert!(key_decides(b"abcdefg"));
        assert!(!key_decides(b"abcdefgh"));
        assert_eq!(
            ChildRef::new(0x0102_0304_0506_0708, 1).key(),
            0x0102_0304_0506_0708
        );
    }

    #[test]
    fn slots_are_compact() {
        assert_eq!(core::mem::size_of::<ChildRef>(), 12);
        assert_eq!(core::mem::size_of::<Node>(), 56);
        assert_eq!(core::mem::size_of::<NodeSlot>(), 56);
    }
}
