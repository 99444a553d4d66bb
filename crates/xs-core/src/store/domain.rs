//! Domain records: introduction state, target, quota overrides and resource usage.
//!
//! A record exists for every domain the store knows of: introduced domains, domains with a
//! connection, and domains named in a permission entry (so that the entry can take effect
//! once the domain is introduced, as toolstacks create a domain's nodes before introducing
//! it). Records are removed when the domain is released; with them go the domain's nodes and
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
    /// Bytes charged to it: owned nodes, watches, queued events, transaction data.
    pub memory: u64,
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
            usage: Usage::default(),
            owned: Vec::new(),
            features,
            peaks: Peaks::default(),
            soft_reported: Cell::new(false),
        }
    }
}
