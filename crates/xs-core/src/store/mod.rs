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
//! transaction's snapshot is the counter value at its start (or at its last rebase); the
//! stamps decide what it can see (with the version history supplying those changed since)
//! and, at commit, whether anything it relied on changed. Domain records carry the stamp of their creation, which decides whether
//! a permission entry naming that domid was written for this domain or an earlier one.

mod access;
mod accounting;
mod arena;
mod conn;
mod domain;
mod events;
mod history;
mod introspection;
mod lifecycle;
mod node;
mod nodes;
mod ops;
mod session;
pub mod state;
mod tree;
mod txn;
mod watch;

#[cfg(test)]
mod tests;

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::mem;

pub use domain::{Introduction, Usage};
pub use lifecycle::Introduced;
pub use session::{Session, split_names};
pub use txn::fairness::{ChangeKind, PROTECT_AFTER};
pub use watch::{EventPath, WatchEvent};

use access::Caller;
use arena::{Id, Slab};
use conn::Conn;
use domain::DomainTable;
use history::History;
use tree::Tree;
use watch::WatchTable;

use crate::domid::DomId;
use crate::error::{XsError, XsResult};
use crate::path;
use crate::perms::{Access, Perm};
use crate::quota::Quotas;

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
    /// Create a domain's default nodes under `/local/domain/<domid>` on `INTRODUCE`, as
    /// libxl lays them out: for a program that is itself the toolstack (a VMM). C xenstored
    /// never creates them (libxl does, before it introduces the domain), and a store under
    /// Xen's toolstack turns this off, as xs-host does.
    pub domain_nodes: bool,
    /// Remove `/local/domain/<domid>` on release, so a later domain with the same id finds
    /// nothing left behind even if the toolstack does not clean up.
    pub remove_home_on_release: bool,
    /// Who inherits the nodes of a domain that is gone: `None` (Xen's default) removes them,
    /// each with everything below it; `Some(heir)` gives them to `heir` instead, which C
    /// xenstored's `-K`/`--keep-orphans` does (to its privileged domain), at the risk it
    /// warns of: a guest's nodes outlive it and pile up. Only the owner changes; entries
    /// naming the gone domain are dropped as in any case. Its home still goes if
    /// [`StoreConfig::remove_home_on_release`] says so, with what is below it.
    pub orphans_to: Option<DomId>,
    /// Most events queued per connection (see the policy in `watch.rs`).
    pub event_queue_len: usize,
    /// Most bytes of old versions kept for open transactions' snapshots (an unprivileged
    /// writer's versions are also bounded by its memory quota); past it the open
    /// transactions are rebased (see the module docs of `txn`).
    pub history_limit: usize,
    /// Soft memory quota per unprivileged domain (0 = none): crossing it is reported once
    /// (see [`Store::take_warnings`]), as C xenstored logs it, without refusing anything.
    pub memory_soft: u32,
    /// Key of the hash that indexes watches by path. Guests choose the paths, so programs
    /// must draw this from real entropy (the platform's RNG, RDRAND, `getrandom`): with a
    /// key a guest can guess it can make every watch land in one bucket.
    pub hash_key: [u64; 2],
}

impl StoreConfig {
    /// Xen's defaults (C xenstored's quotas; a domain's default nodes made on `INTRODUCE`
    /// and its home removed on release, which C leaves to the toolstack), with the watch-hash
    /// key `hash_key`, which must come from real
    /// entropy (see [`StoreConfig::hash_key`]). There is deliberately no `Default`: the easy
    /// thing to write must not be a fixed key. Adjust the other fields with struct update
    /// syntax.
    ///
    /// # Examples
    ///
    /// ```
    /// use xs_core::{DomId, Store, StoreConfig};
    ///
    /// # fn entropy() -> [u64; 2] { [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344] }
    /// let config = StoreConfig {
    ///     privileged: vec![DomId(1)],
    ///     ..StoreConfig::new(entropy())
    /// };
    /// let store = Store::new(config)?;
    /// assert!(store.is_privileged(DomId(1)));
    /// # Ok::<(), xs_core::XsError>(())
    /// ```
    pub fn new(hash_key: [u64; 2]) -> StoreConfig {
        StoreConfig {
            quotas: Quotas::XEN_DEFAULTS,
            privileged: Vec::new(),
            domain_nodes: true,
            remove_home_on_release: true,
            orphans_to: None,
            event_queue_len: 1024,
            history_limit: 16 << 20,
            memory_soft: 2 << 20,
            hash_key,
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
///
/// `Send`: a program can build it on one thread and hand it to another (a VMM's device
/// thread), or share it behind a `Mutex`. Not `Sync`: lookups and quota checks take `&self`
/// and update small caches in cells (the last directory walked, quota peaks), which a
/// `Mutex` serializes anyway, and making them atomic or locked would cost every request.
///
/// # Examples
///
/// ```
/// use xs_core::{DomId, Store, StoreConfig};
///
/// # let entropy = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];
/// let mut store = Store::new(StoreConfig::new(entropy))?;
/// let dom0 = store.connect(DomId::DOM0)?;
/// let mut s = store.session(dom0);
/// s.write("/vm/name", b"guest")?;
/// assert_eq!(s.read("/vm/name")?, b"guest");
///
/// // Shared with another thread, as a VMM shares it with its device thread.
/// let shared = std::sync::Arc::new(std::sync::Mutex::new(store));
/// let worker = std::thread::spawn({
///     let shared = shared.clone();
///     move || shared.lock().unwrap().session(dom0).read("/vm/name")
/// });
/// assert_eq!(worker.join().unwrap()?, b"guest");
/// # Ok::<(), xs_core::XsError>(())
/// ```
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    generation: u64,
    tree: Tree,
    domains: DomainTable,
    conns: Slab<Conn>,
    watches: WatchTable,
    history: History,
    /// Open, not doomed transactions by snapshot generation (rebased ones share one).
    open_txs: BTreeSet<(u64, ConnId, TxId)>,
    /// Open protected transactions (see `txn::fairness`); almost always empty.
    protected: Vec<(ConnId, TxId)>,
    /// Connections holding a request until a protected transaction ends.
    waiting: Vec<ConnId>,
    /// The history went past a bound: the open transactions are rebased before the next
    /// change (`settle_history`).
    history_over: bool,
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

// The promise of the documentation above, checked at compile time.
const _: () = {
    const fn send<T: Send>() {}
    send::<Store>();
    send::<StoreConfig>();
};

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
        let mut store = Store::bare(config)?;
        let root = store.tree.root;
        let now = store.next_gen();
        let tool = store.create_node(root, b"tool", b"", &owner, now)?;
        store.create_node(tool, b"xenstored", b"", &owner, now)?;
        Ok(store)
    }

    /// A store holding only `/` (stamped with generation 1, the current one), with dom0 and
    /// the configured privileged domains known: what [`Store::new`] starts from, and what a
    /// state stream is restored into.
    fn bare(config: StoreConfig) -> XsResult<Store> {
        let owner = [Perm::owner(DomId::DOM0)];
        let mut store = Store {
            tree: Tree::new(&owner, 1)?,
            generation: 1,
            domains: DomainTable::default(),
            conns: Slab::default(),
            watches: WatchTable::new(config.hash_key),
            history: History::default(),
            open_txs: BTreeSet::new(),
            history_over: false,
            protected: Vec::new(),
            waiting: Vec::new(),
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
        Ok(store)
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The generation of a change of the live tree about to be made, after rebasing the
    /// open transactions if the history went past a bound (`settle_history`).
    fn change_gen(&mut self) -> u64 {
        self.settle_history();
        self.next_gen()
    }

    fn next_gen(&mut self) -> u64 {
        // A u64 stamp does not wrap in practice (at 10^9 changes a second: 584 years).
        self.generation = self.generation.saturating_add(1);
        self.generation
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
    /// are dropped, and the output it held unsent no longer counts for its domain.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.output_dropped(conn);
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
        self.pop_event_with_key(conn).map(|(event, _)| event)
    }

    /// Takes the next queued watch event of a connection, with its key if the rule against
    /// identical pending events covers it (see `watch.rs`): a connection that keeps the
    /// event unsent for a while applies the rule to it with the key.
    pub(crate) fn pop_event_with_key(&mut self, conn: ConnId) -> Option<(WatchEvent, Option<u64>)> {
        let c = self.conns.get_id_mut(conn.0)?;
        let (event, key) = c.events.pop()?;
        let watcher = c.caller;
        self.refund_events(&watcher, watch::charge_event(&event));
        self.refill_missed(conn);
        Some((event, key))
    }

    /// The key of a watch event reporting `path` with `token` for the rule against
    /// identical events (see `watch.rs`), or `None` if the rule does not cover it.
    pub(crate) fn event_key_of(&self, path: &[u8], token: &[u8]) -> Option<u64> {
        self.watches.key_of(path, token)
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
}
