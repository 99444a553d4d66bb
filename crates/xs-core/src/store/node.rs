//! One node of the tree, packed for memory.
//!
//! A node's permissions, name and value share one heap allocation
//! (`[perm entries: 3 bytes each][name][value]`); children are a separate, sorted array that
//! only directories carry. A leaf therefore costs one arena slot plus its payload, which is
//! what lets a million-node store stay within a couple of times its payload
//! (see the `heap-per-node` benchmark).
//!
//! Children are kept sorted by name (bytewise, which for the allowed characters is ASCII
//! order), so `DIRECTORY` lists them in that order: deterministic, independent of history,
//! and the same order every `DIRECTORY_PART` offset refers to. (C xenstored lists in
//! insertion order; no client may depend on either.) Each entry carries the first 8 bytes of
//! the child's name, so a lookup binary-searches a contiguous array and usually needs no
//! pointer chase: names shorter than 8 bytes — most XenStore names — are decided by the key
//! alone.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::domid::DomId;
use crate::error::{XsError, XsResult};
use crate::perms::{Access, Perm};

/// Bytes per packed permission entry: domid (LE u16) and access bits.
const PERM_BYTES: usize = 3;

/// A child link: the first 8 bytes of the child's name (big-endian, zero-padded, so that
/// integer order is name order) and the child's arena index.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChildRef {
    pub(crate) key: u64,
    pub(crate) index: u32,
}

/// The sort key of a name.
pub(crate) fn name_key(name: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    for (dst, src) in bytes.iter_mut().zip(name) {
        *dst = *src;
    }
    u64::from_be_bytes(bytes)
}

/// Whether two names with equal keys are equal without looking at them: true when the name is
/// shorter than the key (its last key byte is padding, which no valid name contains).
pub(crate) fn key_decides(name: &[u8]) -> bool {
    name.len() < 8
}

/// The children of a directory.
#[derive(Debug, Default)]
pub(crate) struct Children {
    /// Generation stamp of the last change to the set of children.
    pub(crate) generation: u64,
    /// Sum of (name length + 1) over the children: the size of a `DIRECTORY` reply.
    pub(crate) name_bytes: usize,
    pub(crate) entries: Vec<ChildRef>,
}

/// A node.
#[derive(Debug)]
pub(crate) struct Node {
    data: Box<[u8]>,
    children: Option<Box<Children>>,
    /// Arena index of the parent ([`super::arena::NIL`] for the root).
    pub(crate) parent: u32,
    name_len: u16,
    n_perms: u16,
    /// Links in the owner's list of owned nodes.
    pub(crate) owner_prev: u32,
    pub(crate) owner_next: u32,
    /// Generation stamp of the last change to the value or permissions (or of creation).
    pub(crate) data_gen: u64,
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
            children: None,
            parent,
            name_len,
            n_perms,
            owner_prev: super::arena::NIL,
            owner_next: super::arena::NIL,
            data_gen: generation,
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

    /// Replaces the value.
    pub(crate) fn set_value(&mut self, value: &[u8]) -> XsResult<()> {
        let keep = self.perm_len().saturating_add(usize::from(self.name_len));
        let head = self.data.get(..keep).ok_or(XsError::Io)?;
        let mut data = Vec::with_capacity(keep.saturating_add(value.len()));
        data.extend_from_slice(head);
        data.extend_from_slice(value);
        self.data = data.into_boxed_slice();
        Ok(())
    }

    /// Drops the child list (when the children were freed with their whole subtree).
    pub(crate) fn clear_children(&mut self) {
        if let Some(c) = self.children.as_deref_mut() {
            c.entries = Vec::new();
            c.name_bytes = 0;
        }
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
        self.children
            .as_deref()
            .map_or(&[], |c| c.entries.as_slice())
    }

    /// The children container, created on first use. Once created it stays (even when empty)
    /// so that its generation keeps recording changes.
    pub(crate) fn children_mut(&mut self) -> &mut Children {
        self.children.get_or_insert_with(Box::default)
    }

    /// Bytes of the children's names as a `DIRECTORY` reply carries them.
    pub(crate) fn child_name_bytes(&self) -> usize {
        self.children.as_deref().map_or(0, |c| c.name_bytes)
    }

    /// The generation count `DIRECTORY_PART` reports: changes whenever the value, the
    /// permissions or the set of children change.
    pub(crate) fn gencnt(&self) -> u64 {
        self.children
            .as_deref()
            .map_or(self.data_gen, |c| c.generation.max(self.data_gen))
    }

    /// The size the `node-size` quota limits: value plus children's names.
    pub(crate) fn quota_size(&self) -> usize {
        self.value().len().saturating_add(self.child_name_bytes())
    }

    /// Heap bytes owned by this node (its packed data and child array), not its arena slot.
    pub(crate) fn heap_bytes(&self) -> usize {
        let children = self.children.as_deref().map_or(0, |c| {
            core::mem::size_of::<Children>().saturating_add(
                c.entries
                    .capacity()
                    .saturating_mul(core::mem::size_of::<ChildRef>()),
            )
        });
        self.data.len().saturating_add(children)
    }
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
    }

    #[test]
    fn leaf_is_small() {
        // One arena slot per node: keep the node itself compact.
        assert!(core::mem::size_of::<Node>() <= 48);
    }
}
