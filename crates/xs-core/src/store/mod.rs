//! The store: node tree, permissions, transactions, watches, quotas and domains.
//!
//! Sans-I/O: every input is a call with bytes and values, every output a return value or an
//! event queued for a connection; the embedding program moves bytes and learns which
//! connections have new events from [`Store::take_notifications`].
//!
//! Semantics are Xen's (`docs/misc/xenstore.txt`), following C xenstored where it and
//! oxenstored differ; each deliberate difference is stated where it is made.
//!
//! ## Generations
//!
//! A global counter stamps every change. Each node records the stamp of its last value or
//! permission change (`data_gen`) and its child set the stamp of its last change. A
//! transaction's snapshot is the counter value at its start; the stamps decide what it can see
//! (with the version history supplying those changed since) and, at commit, whether anything it
//! relied on changed. Domain records carry the stamp of their creation, which decides whether
//! a permission entry naming that domid was written for this domain or an earlier one.

mod access;
mod arena;
mod conn;
mod domain;
mod history;
mod lifecycle;
mod node;
mod ops;
mod session;
mod tree;
mod txn;
mod watch;

#[cfg(test)]
mod tests;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::mem;

pub use domain::{Introduction, Usage};
pub use lifecycle::Introduced;
pub use session::{Session, split_names};
pub use watch::{EventPath, WatchEvent};

use access::{Caller, Rights};
use arena::{Id, NIL, Slab};
use conn::Conn;
use domain::{Domain, DomainTable};
use history::History;
use tree::Tree;
use watch::WatchTable;

use crate::domid::DomId;
use crate::error::{XsError, XsResult};
use crate::path::{self, Canonical, PathKind};
use crate::perms::{Access, Perm};
use crate::quota::{QuotaKind, Quotas};

/// Largest payload of a message in either direction (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;

/// `XENSTORE_SERVER_FEATURE_*` bits the store implements for every domain.
pub mod features {
    /// The ring can be reconnected.
    pub const RECONNECTION: u32 = 1;
    /// The ring page's `error` field is used.
    pub const ERROR: u32 = 2;
    /// `WATCH` takes a depth argument.
    pub const WATCH_DEPTH: u32 = 4;
    /// Permission entries may name `DOMID_ANY`.
    pub const DOMID_ANY: u32 = 8;
    /// All of the above.
    pub const ALL: u32 = RECONNECTION | ERROR | WATCH_DEPTH | DOMID_ANY;
}

/// Transaction id as on the wire; 0 means "not in a transaction".
pub type TxId = u32;

/// A connection to the store: a ring, a socket, or an in-process client.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConnId(Id);

/// How the store is set up.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Global quotas: the defaults for every unprivileged domain.
    pub quotas: Quotas,
    /// Domains besides dom0 that bypass permission checks and quotas (for example the
    /// hypervisor's own domid when it embeds the store).
    pub privileged: Vec<DomId>,
    /// Create a domain's default nodes under `/local/domain/<domid>` on `INTRODUCE`
    /// (turn off when the toolstack creates its own).
    pub domain_nodes: bool,
    /// Remove `/local/domain/<domid>` on release, so a later domain with the same id finds
    /// nothing left behind even if the toolstack does not clean up.
    pub remove_home_on_release: bool,
    /// Most events queued per connection (see the policy in `watch.rs`).
    pub event_queue_len: usize,
    /// Most bytes of old versions kept for open transactions' snapshots; past it the oldest
    /// transactions are doomed to `EAGAIN`.
    pub history_limit: usize,
    /// Soft memory quota per unprivileged domain (0 = none): crossing it is reported once
    /// (see [`Store::take_warnings`]), as C xenstored logs it, without refusing anything.
    pub memory_soft: u32,
    /// Key of the hash that indexes watches by path. Guests choose the paths, so programs
    /// must draw this from real entropy (the platform's RNG, RDRAND); the default is fixed
    /// and only fit for tests.
    pub hash_key: [u64; 2],
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            quotas: Quotas::XEN_DEFAULTS,
            privileged: Vec::new(),
            domain_nodes: true,
            remove_home_on_release: true,
            event_queue_len: 1024,
            history_limit: 16 << 20,
            memory_soft: 2 << 20,
            hash_key: [0x7873_2d63_6f72_6521, 0x6e6f_742d_7365_6372],
        }
    }
}

/// Memory charged to a node's owner: a fixed part for the slot, the child link and the
/// allocation, plus its payload.
fn node_charge(name_len: usize, value_len: usize, n_perms: usize) -> u64 {
    const OVERHEAD: u64 = 80;
    OVERHEAD
        .saturating_add(name_len as u64)
        .saturating_add(value_len as u64)
        .saturating_add((n_perms as u64).saturating_mul(3))
}

/// The signed difference of two lengths, for memory accounting.
fn delta_len(new: usize, old: usize) -> i64 {
    i64::try_from(new)
        .unwrap_or(i64::MAX)
        .saturating_sub(i64::try_from(old).unwrap_or(i64::MAX))
}

/// A special node (`@introduceDomain`, `@releaseDomain`): not part of the tree, but with
/// permissions that decide who may watch it.
#[derive(Debug)]
struct SpecialNode {
    name: &'static [u8],
    perms: Vec<Perm>,
    stamp: u64,
}

const INTRODUCE_DOMAIN: &[u8] = b"@introduceDomain";
const RELEASE_DOMAIN: &[u8] = b"@releaseDomain";

/// The store.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    generation: u64,
    tree: Tree,
    domains: DomainTable,
    conns: Slab<Conn>,
    watches: WatchTable,
    history: History,
    /// Open, not doomed transactions by snapshot generation (unique: each start takes one).
    open_txs: BTreeMap<u64, (ConnId, TxId)>,
    specials: [SpecialNode; 2],
    notify: Vec<ConnId>,
    path_buf: path::PathBuffer,
    match_buf: Vec<u32>,
    /// The matched watches' watchers (`fire`), kept to reuse the allocation.
    watcher_buf: Vec<(u32, Caller)>,
    /// Highest values quota checks saw for any unprivileged domain.
    peaks: domain::Peaks,
    /// Domains that crossed their soft memory quota since the last `take_warnings`.
    warnings: core::cell::RefCell<Vec<DomId>>,
    /// The last directory listed by `DIRECTORY_PART`, so that listing a large directory in
    /// 4 KiB parts costs its size once rather than once per part.
    listing: Option<Listing>,
}

/// A cached child list of one node at one generation count.
#[derive(Debug)]
struct Listing {
    node: Id,
    gencnt: u64,
    names: Vec<u8>,
}

/// What kind of change an event reports (C xenstored's `MATCH_SUBTREE`/`MATCH_EXACT`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Match {
    /// The node changed: watches on it and its ancestors fire.
    Subtree,
    /// The node went away with an ancestor: only watches on exactly it fire.
    Exact,
}

impl Store {
    /// A store holding `/`, `/tool` and `/tool/xenstored` (as C xenstored starts), with
    /// dom0 and the configured privileged domains known.
    pub fn new(config: StoreConfig) -> XsResult<Store> {
        let owner = [Perm::owner(DomId::DOM0)];
        let mut store = Store {
            tree: Tree::new(&owner, 1)?,
            generation: 1,
            domains: DomainTable::default(),
            conns: Slab::default(),
            watches: WatchTable::new(config.hash_key),
            history: History::default(),
            open_txs: BTreeMap::new(),
            specials: [
                SpecialNode {
                    name: INTRODUCE_DOMAIN,
                    perms: owner.to_vec(),
                    stamp: 1,
                },
                // Any domain may watch for the release of a domain, as C xenstored allows
                // since 2026 (Xen commit 258263a "allow @releaseDomain watch for all
                // domains"): a guest granting another domain access needs to learn when
                // that domain goes away. @introduceDomain stays dom0's.
                SpecialNode {
                    name: RELEASE_DOMAIN,
                    perms: alloc::vec![owner[0], Perm::new(DomId::ANY, Access::READ)],
                    stamp: 1,
                },
            ],
            notify: Vec::new(),
            path_buf: path::PathBuffer::default(),
            match_buf: Vec::new(),
            watcher_buf: Vec::new(),
            listing: None,
            peaks: domain::Peaks::default(),
            warnings: core::cell::RefCell::new(Vec::new()),
            config,
        };
        store.ensure_domain(DomId::DOM0);
        for d in store.config.privileged.clone() {
            store.ensure_domain(d);
        }
        let root = store.tree.root;
        store.link_owner(root);
        let now = store.next_gen();
        let tool = store.create_node(root, b"tool", b"", &owner, now)?;
        store.create_node(tool, b"xenstored", b"", &owner, now)?;
        Ok(store)
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn next_gen(&mut self) -> u64 {
        // A u64 stamp does not wrap in practice (at 10^9 changes a second: 584 years).
        self.generation = self.generation.saturating_add(1);
        self.generation
    }

    // ----- identity, rights and quotas -----------------------------------------------------

    /// Whether `domid` bypasses permission checks and quotas.
    pub fn is_privileged(&self, domid: DomId) -> bool {
        domid == DomId::DOM0 || self.config.privileged.contains(&domid)
    }

    fn caller_for(&self, domid: DomId) -> Caller {
        let record = self.domains.get(&domid);
        let target = record
            .and_then(|d| d.target)
            .and_then(|t| self.domains.get(&t).map(|r| (t, r.created_gen)));
        Caller {
            domid,
            privileged: self.is_privileged(domid),
            since: record.map_or(u64::MAX, |d| d.created_gen),
            target,
        }
    }

    fn caller(&self, conn: ConnId) -> XsResult<Caller> {
        let c = self.conns.get_id(conn.0).ok_or(XsError::Inval)?;
        if c.dead {
            return Err(XsError::Io);
        }
        Ok(c.caller)
    }

    /// Refreshes the identity cached in `domid`'s connections (after its target changed).
    fn refresh_callers(&mut self, domid: DomId) {
        let caller = self.caller_for(domid);
        let conns: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.domid() == domid)
            .map(|(i, _)| i)
            .collect();
        for i in conns {
            if let Some(c) = self.conns.get_mut(i) {
                c.caller = caller;
            }
        }
    }

    /// Whether a non-owner permission entry naming `domid`, written at generation `stamp`,
    /// still refers to the domain it was written for: the domain must still exist and must
    /// not be younger than the entry (a domain created later reuses the id).
    fn entry_is_live(&self, domid: DomId, stamp: u64) -> bool {
        domid == DomId::ANY
            || self
                .domains
                .get(&domid)
                .is_some_and(|d| d.created_gen <= stamp)
    }

    fn rights_for(&self, caller: &Caller, perms: impl Iterator<Item = Perm>, stamp: u64) -> Rights {
        access::rights(caller, perms, stamp)
    }

    fn node_rights(&self, caller: &Caller, index: u32) -> Rights {
        self.tree.node(index).map_or(Rights::empty(), |n| {
            self.rights_for(caller, n.perms(), n.data_gen)
        })
    }

    /// `perms` without the non-owner entries that are no longer live at `stamp`.
    fn sanitize_perms(&self, perms: impl Iterator<Item = Perm>, stamp: u64) -> Vec<Perm> {
        perms
            .enumerate()
            .filter(|(i, p)| *i == 0 || self.entry_is_live(p.domid, stamp))
            .map(|(_, p)| p)
            .collect()
    }

    /// The error for a request on a missing node, decided by the nearest existing ancestor
    /// as C xenstored does (`errno_from_parents`): `ENOENT` if the ancestor grants any of
    /// `need`, else `EACCES`, so that a caller cannot learn what exists where it cannot look.
    fn missing_error(ancestor_rights: Rights, need: Rights) -> XsError {
        if ancestor_rights.intersects(need) {
            XsError::NoEnt
        } else {
            XsError::Acces
        }
    }

    /// The quotas in force for `domid`.
    pub fn effective_quotas(&self, domid: DomId) -> Quotas {
        self.domains.get(&domid).map_or(self.config.quotas, |d| {
            d.overrides.apply(&self.config.quotas)
        })
    }

    /// One quota in force for `domid` (0 = unlimited): its override, else the global value.
    /// (Checked on every request; [`Store::effective_quotas`] builds the whole set.)
    pub fn quota(&self, domid: DomId, kind: QuotaKind) -> u32 {
        self.quota_in(self.domains.get(&domid), kind)
    }

    /// [`Store::quota`] for a domain whose record (if any) was already looked up.
    fn quota_in(&self, record: Option<&Domain>, kind: QuotaKind) -> u32 {
        let global = &self.config.quotas;
        record.map_or(global.get(kind), |d| d.overrides.effective(global, kind))
    }

    /// How many messages a connection may have waiting to be sent before it takes no more
    /// input: its domain's `outstanding` quota, `None` for a privileged (or unknown)
    /// connection or an unlimited quota.
    pub fn outstanding_limit(&self, conn: ConnId) -> Option<usize> {
        let caller = self.conns.get_id(conn.0)?.caller;
        if caller.privileged {
            return None;
        }
        match self.quota(caller.domid, QuotaKind::Outstanding) {
            0 => None,
            q => Some(q as usize),
        }
    }

    /// `Ok` if an unprivileged `caller` stays within `kind` when its usage becomes `value`.
    fn check_quota(&self, caller: &Caller, kind: QuotaKind, value: u64) -> XsResult<()> {
        // One record look-up: this runs on every request (path length at least).
        let record = self.domains.get(&caller.domid);
        if !caller.privileged {
            let limit = self.quota_in(record, kind);
            if limit != 0 && value > u64::from(limit) {
                // Xen's errors since its quota checks were unified (C xenstored commit
                // 70fcc25, 2026): ENOSPC for every count and size, ENOMEM for memory. (Xen
                // 4.17 still answered a watch over quota with E2BIG.)
                return Err(if kind == QuotaKind::Memory {
                    XsError::NoMem
                } else {
                    XsError::NoSpc
                });
            }
            self.peaks.note(kind, value);
        }
        if let Some(d) = record {
            d.peaks.note(kind, value);
        }
        Ok(())
    }

    /// The highest value a quota check saw, for one domain or (with `None`) any unprivileged
    /// domain (`xenstore-control quota <domid>` / `quota max`).
    pub fn peak(&self, domid: Option<DomId>, kind: QuotaKind) -> u64 {
        match domid {
            None => self.peaks.get(kind),
            Some(d) => self.domains.get(&d).map_or(0, |d| d.peaks.get(kind)),
        }
    }

    /// Forgets the global peaks (`xenstore-control quota max -r`).
    pub fn reset_peaks(&mut self) {
        self.peaks.reset();
    }

    fn usage_of(&self, domid: DomId) -> Usage {
        self.domains
            .get(&domid)
            .map(|d| d.usage)
            .unwrap_or_default()
    }

    /// Checks that an unprivileged caller's memory stays within quota after adding `more`
    /// (and notes when it crosses the soft quota).
    fn check_memory(&self, caller: &Caller, more: u64) -> XsResult<()> {
        if caller.privileged {
            return Ok(());
        }
        let after = self.usage_of(caller.domid).memory.saturating_add(more);
        self.check_quota(caller, QuotaKind::Memory, after)?;
        self.note_soft(caller.domid, after);
        Ok(())
    }

    /// Reports a domain whose memory reaches the soft quota, once until it is back below.
    fn note_soft(&self, domid: DomId, memory: u64) {
        let soft = u64::from(self.config.memory_soft);
        let Some(d) = self.domains.get(&domid) else {
            return;
        };
        let over = soft != 0 && memory >= soft;
        if over && !d.soft_reported.get() {
            // At most one entry per domain until taken: a guest going up and down across
            // the soft quota must not grow the list.
            let mut warnings = self.warnings.borrow_mut();
            if !warnings.contains(&domid) {
                warnings.push(domid);
            }
        }
        d.soft_reported.set(over);
    }

    /// Domains that reached their soft memory quota since the last call (for the log).
    pub fn take_warnings(&mut self) -> Vec<DomId> {
        core::mem::take(self.warnings.get_mut())
    }

    /// The soft memory quota (`xenstore-control quota-soft`).
    pub fn memory_soft_quota(&self) -> u32 {
        self.config.memory_soft
    }

    /// Sets the soft memory quota (0 = none).
    pub fn set_memory_soft_quota(&mut self, conn: ConnId, value: u32) -> XsResult<()> {
        if !self.caller(conn)?.privileged {
            return Err(XsError::Acces);
        }
        self.config.memory_soft = value;
        Ok(())
    }

    /// Adds (or with a negative delta, removes) memory charged to `domid`.
    fn charge(&mut self, domid: DomId, delta: i64) {
        if let Some(d) = self.domains.get_mut(&domid) {
            d.usage.memory = d.usage.memory.saturating_add_signed(delta);
        }
    }

    /// The record of `domid`, created if the store did not know the domain yet (`None`
    /// only if the table could not place it, which every domid fits).
    fn ensure_domain(&mut self, domid: DomId) -> Option<&mut Domain> {
        let now = self.generation;
        self.domains
            .get_or_insert_with(domid, || Domain::new(now, features::ALL))
    }

    // ----- paths ---------------------------------------------------------------------------

    /// Runs `f` with the canonical form of `raw` (see [`path::canonicalize`]), after the
    /// `path-max` quota check, reusing the store's path buffer for relative paths.
    fn with_path<R>(
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
    fn link_owner(&mut self, index: u32) {
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
    fn unlink_owner(&mut self, index: u32) {
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
    fn create_node(
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
            .last_key_value()
            .is_some_and(|(snapshot, _)| *snapshot >= data_gen)
    }

    /// Records the current version of the node at `index` (path `path`) if an open
    /// transaction may need it, before it is changed at generation `now`.
    fn preserve(&mut self, index: u32, path: &[u8], now: u64) {
        let Some(node) = self.tree.node(index) else {
            return;
        };
        if !self.history_needed(node.data_gen) {
            return;
        }
        let perms = node.perm_vec();
        self.history
            .record(path, node.data_gen, now, node.value(), &perms);
        self.enforce_history_limit();
    }

    /// Dooms the oldest transactions while the history is over its limit.
    fn enforce_history_limit(&mut self) {
        while self.history.bytes() > self.config.history_limit {
            let Some((_, (conn, tx))) = self.open_txs.pop_first() else {
                break;
            };
            if let Some(t) = self
                .conns
                .get_id_mut(conn.0)
                .and_then(|c| c.transactions.get_mut(&tx))
            {
                t.doomed = true;
            }
            let oldest = self.open_txs.first_key_value().map(|(s, _)| *s);
            self.history.prune(oldest);
        }
    }

    /// Sets the value of an existing node.
    fn set_node_value(&mut self, index: u32, path: &[u8], value: &[u8], now: u64) -> XsResult<()> {
        self.preserve(index, path, now);
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
            self.set_node_perms(index, path, &perms, now)?;
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
    fn set_node_perms(
        &mut self,
        index: u32,
        path: &[u8],
        perms: &[Perm],
        now: u64,
    ) -> XsResult<()> {
        self.preserve(index, path, now);
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
    fn delete_subtree(&mut self, index: u32, path: &[u8], now: u64, fire_root: bool) {
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
            self.preserve(node, &node_path, now);
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

    // ----- watches and events --------------------------------------------------------------

    /// Whether `watcher` may see an event about the node at `index`: it can read the node or
    /// its parent, or could read the node under `old_perms` (so that a watcher losing access
    /// still learns of the change), as C xenstored's `watch_permitted`.
    fn watch_permitted(
        &self,
        watcher: &Caller,
        index: Option<u32>,
        old_perms: Option<(&[Perm], u64)>,
    ) -> bool {
        if watcher.privileged {
            return true;
        }
        if let Some((perms, stamp)) = old_perms
            && self
                .rights_for(watcher, perms.iter().copied(), stamp)
                .contains(Rights::READ)
        {
            return true;
        }
        let Some(node) = index.and_then(|i| self.tree.node(i)) else {
            return false;
        };
        if self
            .rights_for(watcher, node.perms(), node.data_gen)
            .contains(Rights::READ)
        {
            return true;
        }
        self.tree.node(node.parent).is_some_and(|p| {
            self.rights_for(watcher, p.perms(), p.data_gen)
                .contains(Rights::READ)
        })
    }

    /// Queues events for the watches matching a change at `path`.
    fn fire(&mut self, path: &[u8], kind: Match, index: Option<u32>, old: Option<(&[Perm], u64)>) {
        if self.watches.is_empty() {
            return;
        }
        let mut matched = mem::take(&mut self.match_buf);
        matched.clear();
        match kind {
            Match::Subtree => self.watches.match_subtree(path, &mut matched),
            Match::Exact => self.watches.match_exact(path, &mut matched),
        }
        // The watchers first, in a pass of its own: each watch is a likely cache miss, and
        // these loads are independent of one another, so they overlap here instead of each
        // waiting behind the previous event's queueing.
        let mut watchers = mem::take(&mut self.watcher_buf);
        watchers.clear();
        watchers.extend(matched.iter().filter_map(|&w| {
            let conn = self.watches.watches.get(w)?.conn;
            Some((w, self.conns.get_id(conn)?.caller))
        }));
        for (w, watcher) in &watchers {
            if self.watch_permitted(watcher, index, old) {
                self.queue_event(*w, path);
            }
        }
        self.match_buf = matched;
        self.watcher_buf = watchers;
    }

    /// Fires a special event (`@introduceDomain` / `@releaseDomain`) about `domid`.
    fn fire_special(&mut self, which: usize, domid: DomId) {
        let Some(special) = self.specials.get(which) else {
            return;
        };
        let name = special.name;
        let mut with_domid = name.to_vec();
        with_domid.push(b'/');
        crate::domid::push_decimal(&mut with_domid, u64::from(domid.0));
        let mut matched = Vec::new();
        self.watches.match_special(name, &with_domid, &mut matched);
        for (w, domid_form) in matched {
            let Some(conn) = self.watches.watches.get(w).map(|w| w.conn) else {
                continue;
            };
            let Some(watcher) = self.conns.get_id(conn).map(|c| c.caller) else {
                continue;
            };
            let allowed = self.specials.get(which).is_some_and(|s| {
                self.rights_for(&watcher, s.perms.iter().copied(), s.stamp)
                    .contains(Rights::READ)
            });
            if allowed {
                let path = if domid_form {
                    with_domid.as_slice()
                } else {
                    name
                };
                self.queue_event(w, path);
            }
        }
    }

    /// Queues one event for watch `w` about `path`, or marks the watch as having missed one.
    fn queue_event(&mut self, w: u32, path: &[u8]) {
        let Some(watch) = self.watches.watches.get(w) else {
            return;
        };
        let conn_id = watch.conn;
        let reported = self.watches.reported_path(w, watch, path);
        let charge = watch::charge_event_of(reported.len(), watch.token.len());
        let queue_len = self.config.event_queue_len;
        let Some(conn) = self.conns.get_id(conn_id) else {
            return;
        };
        let watcher = conn.caller;
        let (has_room, empty) = (conn.events.len() < queue_len, conn.events.is_empty());
        let fits = has_room && self.try_charge(&watcher, charge, empty);
        let (Some(watch), Some(conn)) = (
            self.watches.watches.get_mut(w),
            self.conns.get_id_mut(conn_id),
        ) else {
            return;
        };
        if fits {
            watch::enqueue(&mut conn.events, &reported, &watch.token);
            if !conn.notify {
                conn.notify = true;
                self.notify.push(ConnId(conn_id));
            }
        } else if !watch.missed {
            watch.missed = true;
            conn.missed.push_back(w);
        }
    }

    /// Charges `bytes` of queued events to an unprivileged watcher if its memory quota allows
    /// (one look-up for both); privileged watchers' queues are bounded by length alone.
    ///
    /// An event for an empty queue is always taken (`into_empty`), over the quota if need
    /// be: otherwise a watcher whose memory is used up by other things would be owed events
    /// that no later pop ever delivers (catch-up events are queued when an event is popped).
    /// A domain's memory stays bounded, by its quota plus one event.
    fn try_charge(&mut self, watcher: &Caller, bytes: u64, into_empty: bool) -> bool {
        if watcher.privileged {
            return true;
        }
        let Some(d) = self.domains.get_mut(&watcher.domid) else {
            return true;
        };
        let limit = d
            .overrides
            .effective(&self.config.quotas, QuotaKind::Memory);
        let after = d.usage.memory.saturating_add(bytes);
        if limit != 0 && after > u64::from(limit) && !into_empty {
            return false;
        }
        d.usage.memory = after;
        true
    }

    /// Refunds queued events to an unprivileged watcher's memory (what [`Store::try_charge`]
    /// charged). Privileged watchers' queues are bounded by length alone.
    fn refund_events(&mut self, watcher: &Caller, bytes: u64) {
        if watcher.privileged {
            return;
        }
        let change = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.charge(watcher.domid, change.saturating_neg());
    }

    /// Moves owed catch-up events into the queue while it has room.
    fn refill_missed(&mut self, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_id(conn.0) else {
                return;
            };
            if c.events.len() >= self.config.event_queue_len {
                return;
            }
            let Some(&w) = c.missed.front() else {
                return;
            };
            let (watcher, into_empty) = (c.caller, c.events.is_empty());
            let Some(watch) = self.watches.watches.get(w) else {
                if let Some(c) = self.conns.get_id_mut(conn.0) {
                    c.missed.pop_front();
                }
                continue;
            };
            let own = self.watches.own_event_path(w);
            let charge = watch::charge_event_of(own.len(), watch.token.len());
            if !self.try_charge(&watcher, charge, into_empty) {
                return;
            }
            if let (Some(c), Some(watch)) = (
                self.conns.get_id_mut(conn.0),
                self.watches.watches.get_mut(w),
            ) {
                c.missed.pop_front();
                watch::enqueue(&mut c.events, &own, &watch.token);
                watch.missed = false;
            }
        }
    }

    // ----- connections ---------------------------------------------------------------------

    /// Opens a connection acting for `domid` (privileged if `domid` is).
    pub fn connect(&mut self, domid: DomId) -> XsResult<ConnId> {
        if !domid.is_real() {
            return Err(XsError::Inval);
        }
        self.ensure_domain(domid);
        let caller = self.caller_for(domid);
        Ok(ConnId(self.conns.insert(Conn::new(caller))?))
    }

    /// Closes a connection: its watches go, its transactions are aborted, its queued events
    /// are dropped.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.reset_connection(conn);
        self.conns.remove(conn.0.index);
    }

    /// Drops a connection's watches, transactions and queued events (`RESET_WATCHES` also
    /// uses this, as does a ring reconnection).
    pub fn reset_connection(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_id_mut(conn.0) else {
            return;
        };
        let watcher = c.caller;
        let domid = c.domid();
        let watches = mem::take(&mut c.watches);
        let txs: Vec<TxId> = c.transactions.keys().copied().collect();
        let events = mem::take(&mut c.events);
        c.missed.clear();
        for w in watches {
            if let Some(watch) = self.watches.remove(w) {
                let charge = i64::try_from(watch.charge()).unwrap_or(i64::MAX);
                self.charge(domid, charge.saturating_neg());
                if let Some(d) = self.domains.get_mut(&domid) {
                    d.usage.watches = d.usage.watches.saturating_sub(1);
                }
            }
        }
        for tx in txs {
            let _ = self.transaction_end(conn, tx, false);
        }
        let freed = events
            .iter()
            .map(watch::charge_event)
            .fold(0u64, u64::saturating_add);
        self.refund_events(&watcher, freed);
    }

    /// The domain a connection acts for.
    pub fn conn_domid(&self, conn: ConnId) -> Option<DomId> {
        self.conns.get_id(conn.0).map(|c| c.domid())
    }

    /// Whether the connection's domain was released (it should be closed).
    pub fn is_dead(&self, conn: ConnId) -> bool {
        self.conns.get_id(conn.0).is_none_or(|c| c.dead)
    }

    /// Takes the next queued watch event of a connection.
    pub fn pop_event(&mut self, conn: ConnId) -> Option<WatchEvent> {
        let c = self.conns.get_id_mut(conn.0)?;
        let event = c.events.pop_front()?;
        let watcher = c.caller;
        self.refund_events(&watcher, watch::charge_event(&event));
        self.refill_missed(conn);
        Some(event)
    }

    /// Whether `conn` has a transaction `tx`.
    pub fn has_transaction(&self, conn: ConnId, tx: TxId) -> bool {
        self.conns
            .get_id(conn.0)
            .is_some_and(|c| c.transactions.contains_key(&tx))
    }

    /// Number of events queued for a connection.
    #[inline]
    pub fn queued_events(&self, conn: ConnId) -> usize {
        self.conns.get_id(conn.0).map_or(0, |c| c.events.len())
    }

    /// Connections that got events since the last call (each listed once).
    pub fn take_notifications(&mut self) -> Vec<ConnId> {
        let list = mem::take(&mut self.notify);
        for c in &list {
            if let Some(conn) = self.conns.get_id_mut(c.0) {
                conn.notify = false;
            }
        }
        list
    }

    // ----- watches -------------------------------------------------------------------------

    /// `WATCH`: registers a watch on `path` (or a special path) with `token` and queues the
    /// initial event. `depth` limits how many levels below `path` match.
    pub fn watch(
        &mut self,
        conn: ConnId,
        path: &[u8],
        token: &[u8],
        depth: Option<u32>,
    ) -> XsResult<()> {
        let caller = self.caller(conn)?;
        self.with_path(&caller, path, true, |s, canonical, canon| {
            if s.watches.find(conn.0, canonical, token).is_some() {
                return Err(XsError::Exist);
            }
            let usage = s.usage_of(caller.domid);
            s.check_quota(&caller, QuotaKind::Watches, usage.watches.saturating_add(1))?;
            let charge = watch::charge_watch(canonical.len(), token.len());
            s.check_memory(&caller, charge)?;
            let index = s
                .watches
                .add(conn.0, canonical, token, depth, canon.relative_prefix)?;
            if let Some(c) = s.conns.get_id_mut(conn.0) {
                c.watches.push(index);
            }
            if let Some(d) = s.domains.get_mut(&caller.domid) {
                d.usage.watches = d.usage.watches.saturating_add(1);
            }
            s.charge(caller.domid, i64::try_from(charge).unwrap_or(i64::MAX));
            // "When a watch is first set up it is triggered once straight away."
            s.queue_event(index, canonical);
            Ok(())
        })
    }

    /// `UNWATCH`.
    pub fn unwatch(&mut self, conn: ConnId, path: &[u8], token: &[u8]) -> XsResult<()> {
        let caller = self.caller(conn)?;
        self.with_path(&caller, path, true, |s, canonical, _| {
            let index = s
                .watches
                .find(conn.0, canonical, token)
                .ok_or(XsError::NoEnt)?;
            if let Some(c) = s.conns.get_id_mut(conn.0) {
                c.watches.retain(|&w| w != index);
                c.missed.retain(|&w| w != index);
            }
            if let Some(watch) = s.watches.remove(index) {
                let charge = i64::try_from(watch.charge()).unwrap_or(i64::MAX);
                s.charge(caller.domid, charge.saturating_neg());
                if let Some(d) = s.domains.get_mut(&caller.domid) {
                    d.usage.watches = d.usage.watches.saturating_sub(1);
                }
            }
            Ok(())
        })
    }

    /// `RESET_WATCHES`: drops the connection's watches and transactions.
    pub fn reset_watches(&mut self, conn: ConnId) -> XsResult<()> {
        self.caller(conn)?;
        self.reset_connection(conn);
        Ok(())
    }

    // ----- quotas --------------------------------------------------------------------------

    /// `GET_QUOTA`: a global quota (`domid` `None`) or one domain's effective quota.
    pub fn get_quota(&self, conn: ConnId, domid: Option<DomId>, kind: QuotaKind) -> XsResult<u32> {
        let caller = self.caller(conn)?;
        if !caller.privileged {
            return Err(XsError::Acces);
        }
        match domid {
            None => Ok(self.config.quotas.get(kind)),
            Some(d) if self.domains.contains_key(&d) => Ok(self.effective_quotas(d).get(kind)),
            Some(_) => Err(XsError::NoEnt),
        }
    }

    /// `SET_QUOTA`: sets a global quota or one domain's override (0 = unlimited).
    pub fn set_quota(
        &mut self,
        conn: ConnId,
        domid: Option<DomId>,
        kind: QuotaKind,
        value: u32,
    ) -> XsResult<()> {
        let caller = self.caller(conn)?;
        if !caller.privileged {
            return Err(XsError::Acces);
        }
        match domid {
            None => {
                self.config.quotas.set(kind, value);
                Ok(())
            }
            Some(d) => {
                let record = self.domains.get_mut(&d).ok_or(XsError::NoEnt)?;
                record.overrides.set(kind, Some(value));
                Ok(())
            }
        }
    }

    /// What a domain currently uses, if the store knows it.
    pub fn usage(&self, domid: DomId) -> Option<Usage> {
        self.domains.get(&domid).map(|d| d.usage)
    }

    /// Domains the store knows, in domid order.
    pub fn known_domains(&self) -> impl Iterator<Item = DomId> + '_ {
        self.domains.keys()
    }

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

    fn conns_iter(&self) -> impl Iterator<Item = (u32, &Conn)> {
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

    /// Checks the store's invariants (C xenstored's `check` control command): parent links,
    /// sorted children, owner lists and node counts. Returns a description of the first
    /// inconsistency found.
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
