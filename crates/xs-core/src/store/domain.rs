//! Domain records: introduction state, target, quota overrides and resource usage.
//!
//! A record exists for every domain the store knows of: introduced domains, domains with a
//! connection, and domains a privileged caller named in a permission entry (so that the
//! entry can take effect once the domain is introduced, as toolstacks create a domain's
//! nodes before introducing it; guests' entries create no records, see `Store::set_perms`). Records are removed when the domain is released; with them go the domain's nodes and
//! every permission entry naming it (see `Store::entry_is_live`), so a later domain with the
//! same domid starts from nothing (Xen XSA-322).

use alloc::vec::Vec;
use core::cell::Cell;

use crate::domid::DomId;
use crate::quota::QuotaOverrides;

/// Where an introduced domain's ring is, as given by `INTRODUCE`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Introduction {
    /// Guest frame of the ring page (`<gfn>` of `INTRODUCE`).
    pub gfn: u64,
    /// The guest's unbound event channel for the store (`<evtchn>`).
    pub evtchn: u32,
}

/// Resources a domain currently uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Usage {
    /// Nodes it owns.
    pub nodes: u64,
    /// Watches its connections registered.
    pub watches: u64,
    /// Transactions its connections have open.
    pub transactions: u64,
    /// Bytes charged to it: owned nodes, watches, queued events, transaction data, and
    /// the replies and events waiting in its connections' output.
    pub memory: u64,
    /// Messages (replies and watch events) waiting in its connections' output, across
    /// all of them: what its `outstanding` quota bounds (unprivileged domains only).
    pub outstanding: u64,
}

/// The record.
#[derive(Debug)]
pub(crate) struct Domain {
    /// Generation at which the record was created: permission entries written before it
    /// refer to an earlier domain with this domid and are ignored.
    pub(crate) created_gen: u64,
    pub(crate) introduced: Option<Introduction>,
    pub(crate) target: Option<DomId>,
    /// `@releaseDomain` was already fired for a shutdown (re-armed by `RESUME`).
    pub(crate) shutdown_reported: bool,
    pub(crate) overrides: QuotaOverrides,
    /// The domain's own soft memory quota (`SET_QUOTA <domid> soft-memory`), if set.
    pub(crate) memory_soft: Option<u32>,
    pub(crate) usage: Usage,
    /// Arena indices of the nodes this domain owns (each node knows its position), so that
    /// releasing the domain costs what it owns, not the size of the store. Kept only for
    /// unprivileged domains: privileged ones are never released.
    pub(crate) owned: Vec<u32>,
    /// `XENSTORE_SERVER_FEATURE_*` bits enabled for this domain.
    pub(crate) features: u32,
    /// Highest value each quota check saw (`xenstore-control quota <domid>`).
    pub(crate) peaks: Peaks,
    /// The domain's memory is at or over the soft quota (already reported).
    pub(crate) soft_reported: Cell<bool>,
}

/// Highest value seen per quota kind. Recorded where quotas are checked, which takes a shared
/// reference, hence the cells.
#[derive(Debug, Default)]
pub(crate) struct Peaks([Cell<u64>; 9]);

impl Peaks {
    pub(crate) fn note(&self, kind: crate::quota::QuotaKind, value: u64) {
        if let Some(c) = self.0.get(kind.index()) {
            c.set(c.get().max(value));
        }
    }

    pub(crate) fn get(&self, kind: crate::quota::QuotaKind) -> u64 {
        self.0.get(kind.index()).map_or(0, Cell::get)
    }

    pub(crate) fn reset(&self) {
        for c in &self.0 {
            c.set(0);
        }
    }
}

impl Domain {
    pub(crate) fn new(created_gen: u64, features: u32) -> Domain {
        Domain {
            created_gen,
            introduced: None,
            target: None,
            shutdown_reported: false,
            overrides: QuotaOverrides::default(),
            memory_soft: None,
            usage: Usage::default(),
            owned: Vec::new(),
            features,
            peaks: Peaks::default(),
            soft_reported: Cell::new(false),
        }
    }
}

/// Consecutive domids whose records share one allocation.
const CHUNK: usize = 64;

/// Domain records indexed directly by domid: a look-up is two dependent loads (the chunk,
/// then the record) whatever the number of domains. A B-tree of 10k domains took three or
/// four cache misses per look-up, and every write and every queued event looks up a domain
/// (charging its owner, checking permission entries are live, charging a watcher).
///
/// Records live in chunks of [`CHUNK`] consecutive domids, allocated with the first record of
/// a chunk and freed with its last, so a host's domids (consecutive, mostly) share chunks.
/// Only privileged callers create records for domids of their choice (naming them in a
/// permission entry); with one domid per chunk they could have every chunk allocated, about
/// 8 MiB for the 32k real domids, the same bound as a map holding a record for each of them.
/// Iteration is in domid order.
#[derive(Debug, Default)]
pub(crate) struct DomainTable {
    /// Chunk `i` holds domids `i * CHUNK ..`; the list grows to the highest chunk in use.
    chunks: Vec<Option<Chunk>>,
}

#[derive(Debug)]
struct Chunk {
    slots: alloc::boxed::Box<[Option<Domain>]>,
    used: usize,
}

/// The chunk and slot of `domid`.
fn place(domid: DomId) -> (usize, usize) {
    let i = usize::from(domid.0);
    (i / CHUNK, i % CHUNK)
}

impl DomainTable {
    pub(crate) fn get(&self, domid: &DomId) -> Option<&Domain> {
        let (c, s) = place(*domid);
        self.chunks.get(c)?.as_ref()?.slots.get(s)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, domid: &DomId) -> Option<&mut Domain> {
        let (c, s) = place(*domid);
        self.chunks.get_mut(c)?.as_mut()?.slots.get_mut(s)?.as_mut()
    }

    pub(crate) fn contains_key(&self, domid: &DomId) -> bool {
        self.get(domid).is_some()
    }

    /// The record of `domid`, created with `new` if there is none.
    pub(crate) fn get_or_insert_with(
        &mut self,
        domid: DomId,
        new: impl FnOnce() -> Domain,
    ) -> Option<&mut Domain> {
        let (c, s) = place(domid);
        if self.chunks.len() <= c {
            self.chunks.resize_with(c.saturating_add(1), || None);
        }
        let chunk = self.chunks.get_mut(c)?.get_or_insert_with(|| Chunk {
            slots: (0..CHUNK).map(|_| None).collect(),
            used: 0,
        });
        let slot = chunk.slots.get_mut(s)?;
        if slot.is_none() {
            chunk.used = chunk.used.saturating_add(1);
        }
        Some(slot.get_or_insert_with(new))
    }

    pub(crate) fn remove(&mut self, domid: &DomId) -> Option<Domain> {
        let (c, s) = place(*domid);
        let entry = self.chunks.get_mut(c)?;
        let chunk = entry.as_mut()?;
        let removed = chunk.slots.get_mut(s)?.take()?;
        chunk.used = chunk.used.saturating_sub(1);
        if chunk.used == 0 {
            *entry = None;
            while self.chunks.last().is_some_and(Option::is_none) {
                self.chunks.pop();
            }
        }
        Some(removed)
    }

    /// The records in domid order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (DomId, &Domain)> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .filter_map(|(c, chunk)| Some((c, chunk.as_ref()?)))
            .flat_map(|(c, chunk)| {
                chunk
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(move |(s, d)| Some((domid_at(c, s)?, d.as_ref()?)))
            })
    }

    /// The records in domid order, mutably.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (DomId, &mut Domain)> + '_ {
        self.chunks
            .iter_mut()
            .enumerate()
            .filter_map(|(c, chunk)| Some((c, chunk.as_mut()?)))
            .flat_map(|(c, chunk)| {
                chunk
                    .slots
                    .iter_mut()
                    .enumerate()
                    .filter_map(move |(s, d)| Some((domid_at(c, s)?, d.as_mut()?)))
            })
    }

    /// The domids with a record, in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = DomId> + '_ {
        self.iter().map(|(domid, _)| domid)
    }
}

/// The domid in slot `s` of chunk `c`.
fn domid_at(c: usize, s: usize) -> Option<DomId> {
    let i = c.checked_mul(CHUNK)?.checked_add(s)?;
    u16::try_from(i).ok().map(DomId)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    /// The table against a map, over insertions and removals that fill, empty and refill
    /// chunks at both ends of the domid range.
    #[test]
    fn domain_table_behaves_like_a_map() {
        let mut table = DomainTable::default();
        let mut model: BTreeMap<u16, u64> = BTreeMap::new();
        let ids = [
            0u16, 1, 63, 64, 65, 127, 1000, 32751, 65535, 5, 64, 0, 65535,
        ];
        for (step, &id) in ids.iter().enumerate() {
            let created = step as u64;
            match model.remove(&id) {
                Some(was) => {
                    assert_eq!(table.remove(&DomId(id)).map(|d| d.created_gen), Some(was));
                }
                None => {
                    table
                        .get_or_insert_with(DomId(id), || Domain::new(created, 0))
                        .unwrap();
                    model.insert(id, created);
                }
            }
            let got: Vec<(u16, u64)> = table.iter().map(|(d, r)| (d.0, r.created_gen)).collect();
            let want: Vec<(u16, u64)> = model.iter().map(|(&d, &g)| (d, g)).collect();
            assert_eq!(got, want, "after step {step}");
            for probe in [0u16, 1, 63, 64, 65, 66, 1000, 65535] {
                assert_eq!(
                    table.contains_key(&DomId(probe)),
                    model.contains_key(&probe)
                );
            }
        }
        // An existing record is returned, not replaced.
        let first = model.keys().next().copied().unwrap();
        let existing = table
            .get_or_insert_with(DomId(first), || Domain::new(999, 0))
            .unwrap()
            .created_gen;
        assert_eq!(Some(existing), model.get(&first).copied());
        for &id in model.keys() {
            table.remove(&DomId(id)).unwrap();
        }
        assert!(table.chunks.is_empty(), "empty chunks are freed");
        assert_eq!(table.iter_mut().count(), 0);
    }
}
