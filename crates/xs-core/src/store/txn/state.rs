//! A transaction as the state stream carries it (`store::state`): its read set and its
//! overlay as a list of per-path entries, and back.
//!
//! The stream is written after every open transaction was rebased to the present
//! (`Store::settle_all`), so that a transaction that is not doomed reads the live tree as it
//! is when the stream is written: its snapshot needs no history, and is the restored tree.
//! What is left to carry is what the transaction relied on (its read set, and what the
//! operations on its overlay nodes relied on) and what it changed (its overlay), with which
//! live node each entry was about. Live nodes are named by path in the stream; "the node
//! seen" (`live`) becomes, on restore, the node at that path, which for a transaction that is
//! not doomed is the same node (rebasing checked it is still there). A doomed transaction's
//! commit fails whatever its entries say, so the node they name does not matter.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::{Aspects, Origin, Read, TX_CHARGE, Transaction, TxEntry, TxNode, entry_charge};
use crate::perms::Perm;
use crate::store::arena::Id;

/// Where an overlay node came from (see `Origin`), as the stream encodes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SavedOrigin {
    /// Existed in the snapshot; changed by the transaction.
    Snapshot,
    /// Created by the transaction.
    Created,
    /// Deleted and created again by the transaction.
    Recreated,
    /// Created below a recreated node.
    Fresh,
}

impl From<Origin> for SavedOrigin {
    fn from(o: Origin) -> SavedOrigin {
        match o {
            Origin::Snapshot => SavedOrigin::Snapshot,
            Origin::Created => SavedOrigin::Created,
            Origin::Recreated => SavedOrigin::Recreated,
            Origin::Fresh => SavedOrigin::Fresh,
        }
    }
}

impl From<SavedOrigin> for Origin {
    fn from(o: SavedOrigin) -> Origin {
        match o {
            SavedOrigin::Snapshot => Origin::Snapshot,
            SavedOrigin::Created => Origin::Created,
            SavedOrigin::Recreated => Origin::Recreated,
            SavedOrigin::Fresh => Origin::Fresh,
        }
    }
}

/// One entry of a transaction, borrowed from it (writing) or owned (reading).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum SavedEntry<P, V, Q> {
    /// The transaction relied on `aspects` (`Aspects` bits) of the path; `live`: it saw a
    /// particular node there.
    Read { path: P, aspects: u8, live: bool },
    /// The transaction deleted the path (`event`: the deletion fires watches at commit).
    Deleted { path: P, event: bool },
    /// The transaction's node at the path.
    Present {
        path: P,
        value: V,
        perms: Q,
        origin: SavedOrigin,
        value_set: bool,
        perms_set: bool,
        event: bool,
        live: bool,
        relied: u8,
    },
}

/// An entry borrowed from a transaction.
pub(crate) type EntryRef<'a> = SavedEntry<&'a [u8], &'a [u8], &'a [Perm]>;

/// An entry read from a stream.
pub(crate) type EntryOwned = SavedEntry<Box<[u8]>, Vec<u8>, Vec<Perm>>;

impl<P: AsRef<[u8]>, V, Q> SavedEntry<P, V, Q> {
    /// The path the entry is about.
    pub(crate) fn path(&self) -> &[u8] {
        match self {
            SavedEntry::Read { path, .. }
            | SavedEntry::Deleted { path, .. }
            | SavedEntry::Present { path, .. } => path.as_ref(),
        }
    }

    /// Whether the entry belongs to the overlay (else to the read set).
    pub(crate) fn is_overlay(&self) -> bool {
        !matches!(self, SavedEntry::Read { .. })
    }
}

/// What the stream keeps of a transaction besides its entries.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct SavedTx {
    /// Its commit fails (see `Transaction::doomed`).
    pub(crate) doomed: bool,
    /// A change request succeeded in it (see `Transaction::wrote`).
    pub(crate) wrote: bool,
    /// Nodes and bytes its commit creates for the caller's domain (for its quota).
    pub(crate) created_nodes: u64,
    pub(crate) created_bytes: u64,
}

impl Transaction {
    /// What the stream keeps of the transaction besides its entries.
    pub(crate) fn saved(&self) -> SavedTx {
        SavedTx {
            doomed: self.doomed,
            wrote: self.wrote,
            created_nodes: self.created_nodes,
            created_bytes: self.created_bytes,
        }
    }

    /// The transaction's entries: its read set, then its overlay, each in path order.
    /// `exists` says whether a node id still names a node: an entry that saw a node since
    /// removed (possible only in a doomed transaction, whose commit fails anyway) is written
    /// as having seen none, so that the stream does not depend on what replaced it.
    pub(crate) fn entries<'a>(
        &'a self,
        exists: impl Fn(Id) -> bool + Copy + 'a,
    ) -> impl Iterator<Item = EntryRef<'a>> {
        let reads = self.reads.iter().map(move |(path, r)| SavedEntry::Read {
            path: &**path,
            aspects: r.aspects.bits(),
            live: r.live.is_some_and(exists),
        });
        let overlay = self.overlay.iter().map(move |(path, e)| match e {
            TxEntry::Deleted { event } => SavedEntry::Deleted {
                path: &**path,
                event: *event,
            },
            TxEntry::Present(n) => SavedEntry::Present {
                path: &**path,
                value: n.value.as_slice(),
                perms: n.perms.as_slice(),
                origin: n.origin.into(),
                value_set: n.value_set,
                perms_set: n.perms_set,
                event: n.event,
                live: n.live.is_some_and(exists),
                relied: n.relied.bits(),
            },
        });
        reads.chain(overlay)
    }

    /// A transaction restored from its entries, reading at snapshot `snapshot` (the
    /// restored store's generation, at which every restored node was stamped). `live` gives
    /// the id of the live node at a path, for entries that saw one. Returns the transaction
    /// and the memory to charge to its domain (as the original was charged: the
    /// transaction's record, its overlay and its read set).
    pub(crate) fn restore(
        saved: SavedTx,
        entries: Vec<EntryOwned>,
        snapshot: u64,
        live: impl Fn(&[u8]) -> Option<Id>,
    ) -> Transaction {
        let mut overlay: BTreeMap<Box<[u8]>, TxEntry> = BTreeMap::new();
        let mut reads: BTreeMap<Box<[u8]>, Read> = BTreeMap::new();
        for entry in entries {
            match entry {
                SavedEntry::Read {
                    path,
                    aspects,
                    live: seen,
                } => {
                    let read = Read {
                        aspects: Aspects::from_bits_truncate(aspects),
                        live: if seen { live(&path) } else { None },
                    };
                    reads.insert(path, read);
                }
                SavedEntry::Deleted { path, event } => {
                    overlay.insert(path, TxEntry::Deleted { event });
                }
                SavedEntry::Present {
                    path,
                    value,
                    perms,
                    origin,
                    value_set,
                    perms_set,
                    event,
                    live: seen,
                    relied,
                } => {
                    let node = TxNode {
                        value,
                        perms,
                        stamp: snapshot,
                        origin: origin.into(),
                        value_set,
                        perms_set,
                        event,
                        live: if seen { live(&path) } else { None },
                        relied: Aspects::from_bits_truncate(relied),
                    };
                    overlay.insert(path, TxEntry::Present(node));
                }
            }
        }
        let hiding = overlay.values().filter(|e| e.hides()).count();
        let charged = overlay
            .iter()
            .map(|(p, e)| e.charge(p.len()))
            .chain(reads.keys().map(|p| entry_charge(p.len())))
            .fold(TX_CHARGE, u64::saturating_add);
        Transaction {
            snapshot,
            doomed: saved.doomed,
            wrote: saved.wrote,
            overlay,
            reads,
            hiding,
            created_nodes: saved.created_nodes,
            created_bytes: saved.created_bytes,
            charged,
            last_change: snapshot,
        }
    }

    /// Memory charged for the transaction (to its connection's domain).
    pub(crate) fn charged(&self) -> u64 {
        self.charged
    }

    /// The permissions of the overlay's nodes, with the generation they were taken at.
    pub(crate) fn overlay_perms(&self) -> impl Iterator<Item = (&[u8], &[Perm], u64)> {
        self.overlay.iter().filter_map(|(path, e)| match e {
            TxEntry::Present(n) => Some((&**path, n.perms.as_slice(), n.stamp)),
            TxEntry::Deleted { .. } => None,
        })
    }

    /// Replaces the permissions of overlay nodes (`(path, perms)`); returns the change of
    /// the memory charged for them, already applied to the transaction's own charge.
    pub(crate) fn replace_perms(&mut self, fixes: Vec<(Vec<u8>, Vec<Perm>)>) -> i64 {
        let mut change = 0i64;
        for (path, perms) in fixes {
            if let Some(entry) = self.overlay.get_mut(path.as_slice()) {
                let before = entry.charge(path.len());
                if let TxEntry::Present(n) = entry {
                    n.perms = perms;
                }
                change = change.saturating_add(super::delta(entry.charge(path.len()), before));
            }
        }
        self.charged = self.charged.saturating_add_signed(change);
        change
    }
}
