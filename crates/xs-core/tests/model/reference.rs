//! The reference model: a deliberately simple XenStore.
//!
//! Written from `docs/misc/xenstore.txt`, C xenstored's behaviour (`core.c`, `watch.c`,
//! `domain.c`) and the engine's documented contract, without looking at how the engine
//! implements it. The tree is a `BTreeMap` from absolute path to value and permission list;
//! parents are derived from path strings; a transaction is a full copy of the tree taken at
//! its start plus the list of what it did.

use std::collections::{BTreeMap, BTreeSet};

use xs_core::{Access, DomId, Perm, XsError};

/// `DOMID_ANY`: a permission entry naming it matches every domain.
pub(crate) const ANY: u16 = 0x7FF5;
/// First domid that does not name a real domain.
const FIRST_RESERVED: u16 = 0x7FF0;

/// Rights, as bits.
pub(crate) const R: u8 = 1;
pub(crate) const W: u8 = 2;
pub(crate) const O: u8 = 4;

pub(crate) const INTRODUCE_DOMAIN: &str = "@introduceDomain";
pub(crate) const RELEASE_DOMAIN: &str = "@releaseDomain";

/// C xenstored's default quotas (`docs`: `Quotas::XEN_DEFAULTS`) for the kinds modelled.
const DEFAULT_NODES: u32 = 1000;
const DEFAULT_WATCHES: u32 = 128;
const DEFAULT_TRANSACTIONS: u32 = 10;
const DEFAULT_PERMS: u32 = 5;

/// The nodes `INTRODUCE` creates below `/local/domain/<domid>` when `domain_nodes` is on,
/// as the engine documents them (libxl's layout): `(relative path, value, guest-owned)`.
/// Toolstack-owned nodes get `n0 r<domid>`, guest-owned ones `n<domid>`; `domid` (value:
/// the domid) and the home itself are toolstack-owned.
const GUEST_NODES: &[(&str, &str, bool)] = &[
    ("control", "", false),
    ("control/shutdown", "", true),
    ("control/feature-poweroff", "", true),
    ("control/feature-reboot", "", true),
    ("control/feature-suspend", "", true),
    ("control/feature-s3", "", true),
    ("control/feature-s4", "", true),
    ("control/sysrq", "", true),
    (
        "control/platform-feature-multiprocessor-suspend",
        "1",
        false,
    ),
    ("control/platform-feature-xs_reset_watches", "1", false),
    ("platform", "", false),
    ("platform/acpi", "1", false),
    ("platform/acpi_s3", "1", false),
    ("platform/acpi_s4", "1", false),
    ("platform/acpi_laptop_slate", "0", false),
    ("device", "", false),
    ("device/suspend", "", false),
    ("device/suspend/event-channel", "", true),
    ("attr", "", true),
    ("data", "", true),
    ("drivers", "", true),
    ("error", "", true),
    ("feature", "", true),
];

// ----- paths ---------------------------------------------------------------------------------

pub(crate) fn parent_of(p: &str) -> Option<&str> {
    if p == "/" {
        return None;
    }
    let i = p.rfind('/')?;
    Some(if i == 0 { "/" } else { &p[..i] })
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// `p` is `anc` or below it.
pub(crate) fn at_or_below(p: &str, anc: &str) -> bool {
    anc == "/" || p == anc || (p.starts_with(anc) && p.as_bytes().get(anc.len()) == Some(&b'/'))
}

pub(crate) fn levels(p: &str) -> usize {
    p.split('/').filter(|s| !s.is_empty()).count()
}

/// `p` itself, then its ancestors up to `/`.
pub(crate) fn ancestors_or_self(p: &str) -> Vec<String> {
    let mut v = vec![p.to_string()];
    let mut cur = p;
    while let Some(q) = parent_of(cur) {
        v.push(q.to_string());
        cur = q;
    }
    v
}

fn basename(p: &str) -> &str {
    p.rfind('/').map_or(p, |i| &p[i + 1..])
}

/// A validated path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Canon {
    /// A node path (absolute), and the length of the prefix added to a relative one.
    Node { abs: String, prefix: usize },
    /// A special watch path (`@...`).
    Special(String),
}

/// Path rules of `docs/misc/xenstore.txt`: ASCII alphanumerics and `-/_@`, no doubled or
/// trailing slashes (except the root), not empty; relative paths are below
/// `/local/domain/<domid>`. `@` starts a special path (only where allowed) and, as the engine
/// documents in `path.rs`, is refused anywhere else.
pub(crate) fn canon(raw: &str, domid: u16, allow_special: bool) -> Result<Canon, XsError> {
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || b"-/_@".contains(&b);
    if raw.is_empty() || !raw.bytes().all(ok_char) {
        return Err(XsError::Inval);
    }
    let special = raw.starts_with('@');
    if special && !allow_special {
        return Err(XsError::Inval);
    }
    let (full, prefix) = if special || raw.starts_with('/') {
        (raw.to_string(), 0)
    } else {
        let home = format!("/local/domain/{domid}/");
        (format!("{home}{raw}"), home.len())
    };
    if !special && raw.contains('@') {
        return Err(XsError::Inval);
    }
    if (full.len() > 1 && full.ends_with('/')) || full.contains("//") {
        return Err(XsError::Inval);
    }
    Ok(if special {
        Canon::Special(full)
    } else {
        Canon::Node { abs: full, prefix }
    })
}

// ----- nodes and permissions -----------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MNode {
    pub(crate) value: Vec<u8>,
    pub(crate) perms: Vec<Perm>,
}

pub(crate) type Tree = BTreeMap<String, MNode>;

pub(crate) fn root_tree() -> Tree {
    let node = || MNode {
        value: Vec::new(),
        perms: vec![Perm::owner(DomId(0))],
    };
    let mut t = Tree::new();
    for p in ["/", "/tool", "/tool/xenstored"] {
        t.insert(p.to_string(), node());
    }
    t
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Who {
    pub(crate) domid: u16,
    pub(crate) privileged: bool,
}

fn bits(a: Access) -> u8 {
    let mut r = 0;
    if a.contains(Access::READ) {
        r |= R;
    }
    if a.contains(Access::WRITE) {
        r |= W;
    }
    r
}

/// C xenstored's `perm_for_conn`: privileged callers and the owner (first entry) have every
/// right; otherwise the first later entry naming the caller (or `DOMID_ANY`) decides;
/// otherwise the owner entry's letter is the default.
pub(crate) fn rights(who: Who, perms: &[Perm]) -> u8 {
    if who.privileged {
        return R | W | O;
    }
    let Some((owner, rest)) = perms.split_first() else {
        return 0;
    };
    if owner.domid.0 == who.domid {
        return R | W | O;
    }
    let entry = rest
        .iter()
        .find(|p| p.domid.0 == who.domid || p.domid.0 == ANY)
        .unwrap_or(owner);
    bits(entry.access)
}

pub(crate) fn readable(t: &Tree, who: Who, p: &str) -> bool {
    t.get(p).is_some_and(|n| rights(who, &n.perms) & R != 0)
}

/// The deepest existing node on the way to `p` (`p` itself if it exists).
pub(crate) fn nearest(t: &Tree, p: &str) -> String {
    ancestors_or_self(p)
        .into_iter()
        .find(|a| t.contains_key(a))
        .unwrap_or_else(|| "/".to_string())
}

pub(crate) fn child_names(t: &Tree, p: &str) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = t
        .keys()
        .filter(|k| k.as_str() != p && parent_of(k) == Some(p))
        .map(|k| basename(k).as_bytes().to_vec())
        .collect();
    v.sort();
    v
}

/// `p` and everything below it, parents before children.
pub(crate) fn subtree(t: &Tree, p: &str) -> Vec<String> {
    t.keys().filter(|k| at_or_below(k, p)).cloned().collect()
}

/// The node at `p` if `who` has all of `need` on it. For a missing node, C xenstored's
/// `errno_from_parents`: `ENOENT` if the nearest existing ancestor grants any of `need`,
/// else `EACCES`.
fn lookup<'a>(t: &'a Tree, who: Who, p: &str, need: u8) -> Result<&'a MNode, XsError> {
    match t.get(p) {
        Some(n) if rights(who, &n.perms) & need == need => Ok(n),
        Some(_) => Err(XsError::Acces),
        None => {
            let near = nearest(t, p);
            let granted = t.get(&near).map_or(0, |n| rights(who, &n.perms));
            Err(if granted & need != 0 {
                XsError::NoEnt
            } else {
                XsError::Acces
            })
        }
    }
}

/// A node operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NodeOp {
    Read,
    Write(Vec<u8>),
    Mkdir,
    Rm,
    Directory,
    /// `DIRECTORY_PART` at offset 0 (the whole list, for the small lists here).
    DirectoryPart,
    GetPerms,
    SetPerms(Vec<Perm>),
}

impl NodeOp {
    fn mutates(&self) -> bool {
        matches!(
            self,
            NodeOp::Write(_) | NodeOp::Mkdir | NodeOp::Rm | NodeOp::SetPerms(_)
        )
    }
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Unit,
    Value(Vec<u8>),
    Names(Vec<Vec<u8>>),
    Perms(Vec<Perm>),
}

/// What a node operation did to one tree.
#[derive(Debug)]
pub(crate) enum Done {
    Value(Vec<u8>),
    Names(Vec<Vec<u8>>),
    Perms(Vec<Perm>),
    /// `MKDIR` of an existing node: nothing at all.
    Unchanged,
    Wrote {
        created: Vec<String>,
        changed: bool,
    },
    /// Removed nodes, parents first (empty: removing a missing node).
    Removed(Vec<(String, MNode)>),
    PermsSet {
        old: Vec<Perm>,
        changed: bool,
    },
}

impl Done {
    pub(crate) fn reply(&self) -> Reply {
        match self {
            Done::Value(v) => Reply::Value(v.clone()),
            Done::Names(n) => Reply::Names(n.clone()),
            Done::Perms(p) => Reply::Perms(p.clone()),
            _ => Reply::Unit,
        }
    }
}

/// Runs a node operation on a tree. `nospc(count)` says whether creating `count` nodes is over
/// the caller's node quota.
pub(crate) fn apply(
    t: &mut Tree,
    who: Who,
    path: &str,
    op: &NodeOp,
    nospc: &mut dyn FnMut(u64) -> bool,
) -> Result<Done, XsError> {
    match op {
        NodeOp::Read => lookup(t, who, path, R).map(|n| Done::Value(n.value.clone())),
        NodeOp::GetPerms => lookup(t, who, path, R).map(|n| Done::Perms(n.perms.clone())),
        NodeOp::Directory | NodeOp::DirectoryPart => {
            lookup(t, who, path, R)?;
            Ok(Done::Names(child_names(t, path)))
        }
        NodeOp::Write(v) => write(t, who, path, Some(v), nospc),
        NodeOp::Mkdir => write(t, who, path, None, nospc),
        NodeOp::Rm => rm(t, who, path),
        NodeOp::SetPerms(perms) => {
            let node = lookup(t, who, path, W | O)?;
            let old = node.perms.clone();
            if !who.privileged && perms.first().map(|p| p.domid) != old.first().map(|p| p.domid) {
                return Err(XsError::Perm);
            }
            let changed = old != *perms;
            if let Some(n) = t.get_mut(path) {
                n.perms = perms.clone();
            }
            Ok(Done::PermsSet { old, changed })
        }
    }
}

/// `WRITE` (`value` given) or `MKDIR`: needs write access to the nearest existing node;
/// missing nodes are created with the nearest existing ancestor's permissions, owned by the
/// creator if it is unprivileged.
fn write(
    t: &mut Tree,
    who: Who,
    path: &str,
    value: Option<&Vec<u8>>,
    nospc: &mut dyn FnMut(u64) -> bool,
) -> Result<Done, XsError> {
    let near = nearest(t, path);
    let Some(near_node) = t.get(&near) else {
        return Err(XsError::Io);
    };
    if rights(who, &near_node.perms) & W == 0 {
        return Err(XsError::Acces);
    }
    if near == path {
        let Some(v) = value else {
            return Ok(Done::Unchanged);
        };
        let mut changed = false;
        if let Some(n) = t.get_mut(path) {
            changed = n.value != *v;
            n.value = v.clone();
        }
        return Ok(Done::Wrote {
            created: Vec::new(),
            changed,
        });
    }
    let mut perms = near_node.perms.clone();
    let mut missing: Vec<String> = ancestors_or_self(path)
        .into_iter()
        .take_while(|a| *a != near)
        .collect();
    missing.reverse();
    if nospc(missing.len() as u64) {
        return Err(XsError::NoSpc);
    }
    if !who.privileged
        && let Some(owner) = perms.first_mut()
    {
        owner.domid = DomId(who.domid);
    }
    for p in &missing {
        let v = if p == path {
            value.cloned().unwrap_or_default()
        } else {
            Vec::new()
        };
        t.insert(
            p.clone(),
            MNode {
                value: v,
                perms: perms.clone(),
            },
        );
    }
    Ok(Done::Wrote {
        created: missing,
        changed: true,
    })
}

/// `RM`: needs write access; a missing node is fine if its parent exists; `/` is refused.
fn rm(t: &mut Tree, who: Who, path: &str) -> Result<Done, XsError> {
    match lookup(t, who, path, W) {
        Ok(_) => {
            if path == "/" {
                return Err(XsError::Inval);
            }
            let removed = subtree(t, path)
                .into_iter()
                .filter_map(|k| t.remove(&k).map(|n| (k, n)))
                .collect();
            Ok(Done::Removed(removed))
        }
        Err(XsError::NoEnt) => match parent_of(path) {
            Some(p) if t.contains_key(p) => Ok(Done::Removed(Vec::new())),
            _ => Err(XsError::NoEnt),
        },
        Err(e) => Err(e),
    }
}

// ----- the model -----------------------------------------------------------------------------

/// A change to the committed tree, as transactions' conflict rules see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Created(String),
    Deleted(String),
    /// The value or the permissions really changed.
    Data(String),
    /// Written (perhaps with the same value or permissions).
    Touched(String),
    /// The set of children changed.
    Children(String),
}

impl Change {
    fn path(&self) -> &str {
        match self {
            Change::Created(p)
            | Change::Deleted(p)
            | Change::Data(p)
            | Change::Touched(p)
            | Change::Children(p) => p,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct MWatch {
    pub(crate) id: u64,
    /// Canonical absolute path, or the special path.
    pub(crate) path: String,
    pub(crate) token: Vec<u8>,
    pub(crate) depth: Option<u32>,
    /// Length of `/local/domain/<domid>/` if registered relative.
    pub(crate) prefix: usize,
}

impl MWatch {
    pub(crate) fn special(&self) -> bool {
        self.path.starts_with('@')
    }

    /// Whether a change at `p` that affects its subtree fires this watch.
    pub(crate) fn matches_subtree(&self, p: &str) -> bool {
        !self.special()
            && at_or_below(p, &self.path)
            && self
                .depth
                .is_none_or(|d| levels(p) - levels(&self.path) <= d as usize)
    }

    /// The path reported for an event at `p` (relative if the watch is).
    pub(crate) fn report(&self, p: &str) -> Vec<u8> {
        p.as_bytes()[self.prefix..].to_vec()
    }

    /// The event naming the watch's own path (initial and catch-up events).
    pub(crate) fn own_event(&self) -> (Vec<u8>, Vec<u8>) {
        (self.report(&self.path), self.token.clone())
    }

    /// The absolute path of an event as reported to this watch.
    pub(crate) fn absolute(&self, reported: &[u8]) -> Option<String> {
        if self.special() {
            return None;
        }
        let s = std::str::from_utf8(reported).ok()?;
        match (self.prefix, s.starts_with('/')) {
            (0, true) => Some(s.to_string()),
            (n, false) if n > 0 => Some(format!("{}{s}", &self.path[..n])),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Ev {
    pub(crate) conn: usize,
    pub(crate) path: Vec<u8>,
    pub(crate) token: Vec<u8>,
    pub(crate) watch: u64,
}

impl std::fmt::Debug for Ev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "conn {} ({:?}, {:?}) by watch #{}",
            self.conn,
            String::from_utf8_lossy(&self.path),
            String::from_utf8_lossy(&self.token),
            self.watch
        )
    }
}

/// An open transaction: a copy of the tree at its start, changed by its own operations, and
/// what it did.
#[derive(Clone, Debug)]
pub(crate) struct MTx {
    pub(crate) id: u32,
    pub(crate) view: Tree,
    /// The committed tree at the start (the view before the transaction's own changes).
    pub(crate) snapshot: Tree,
    /// Position in the change log at the start.
    pub(crate) start: usize,
    /// Successful changing operations, in order (replayed at commit).
    pub(crate) replay: Vec<(String, NodeOp)>,
    /// Every path an operation named.
    pub(crate) accessed: BTreeSet<String>,
    /// Paths whose value was read (`READ`) from the snapshot, not from its own changes.
    pub(crate) value_reads: BTreeSet<String>,
    /// Paths whose permissions were read from the snapshot: `GET_PERMS`, and `READ` by an
    /// unprivileged caller (its answer depends on them).
    pub(crate) perm_reads: BTreeSet<String>,
    /// Paths listed with children from the snapshot.
    pub(crate) listed: BTreeSet<String>,
    /// Paths it got `ENOENT` for, not because of its own removals.
    pub(crate) enoent: BTreeSet<String>,
    own_mod: BTreeSet<String>,
    own_created: BTreeSet<String>,
    own_rm: BTreeSet<String>,
    /// Paths of successful changing operations.
    pub(crate) targets: BTreeSet<String>,
    /// Paths of operations that fire an event (write, set-perms, mkdir that created).
    pub(crate) fire_targets: BTreeSet<String>,
    /// Paths of successful removals.
    pub(crate) rm_targets: BTreeSet<String>,
    /// Nodes created for an unprivileged caller (never decremented).
    pub(crate) cum_created: u64,
}

impl MTx {
    fn own_rm_covers(&self, p: &str) -> bool {
        ancestors_or_self(p).iter().any(|a| self.own_rm.contains(a))
    }
}

#[derive(Clone, Debug)]
pub(crate) struct MConn {
    pub(crate) domid: u16,
    pub(crate) dead: bool,
    pub(crate) watches: Vec<MWatch>,
    pub(crate) txs: Vec<MTx>,
}

impl MConn {
    pub(crate) fn new(domid: u16) -> MConn {
        MConn {
            domid,
            dead: false,
            watches: Vec::new(),
            txs: Vec::new(),
        }
    }

    pub(crate) fn who(&self) -> Who {
        Who {
            domid: self.domid,
            privileged: self.domid == 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QKind {
    Nodes,
    Watches,
    Transactions,
    Perms,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct MDom {
    pub(crate) introduced: bool,
    pub(crate) nodes: Option<u32>,
    pub(crate) watches: Option<u32>,
    pub(crate) transactions: Option<u32>,
    pub(crate) perms: Option<u32>,
}

/// What the engine must answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expect<T> {
    Is(Result<T, XsError>),
    /// Some error (a released domain's connection).
    AnyErr,
}

impl<T: PartialEq + std::fmt::Debug> Expect<T> {
    pub(crate) fn check(&self, got: &Result<T, XsError>) -> Result<(), String> {
        match self {
            Expect::Is(want) if want == got => Ok(()),
            Expect::AnyErr if got.is_err() => Ok(()),
            _ => Err(format!("engine answered {got:?}, model expects {self:?}")),
        }
    }
}

/// The judgement of a commit.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub(crate) must_fail: Option<String>,
    pub(crate) must_succeed: bool,
    pub(crate) nospc_ok: bool,
}

/// What a successful commit changed, for the event check.
#[derive(Debug)]
pub(crate) struct CommitInfo {
    pub(crate) pre: Tree,
    pub(crate) post: Tree,
    pub(crate) targets: BTreeSet<String>,
    pub(crate) fire_targets: BTreeSet<String>,
    pub(crate) rm_targets: BTreeSet<String>,
}

#[derive(Debug)]
pub(crate) struct Model {
    pub(crate) tree: Tree,
    pub(crate) specials: BTreeMap<String, Vec<Perm>>,
    pub(crate) doms: BTreeMap<u16, MDom>,
    /// Domains the store has a record of: dom0, introduced guests, and domains a privileged
    /// caller named in a permission entry; released ones are forgotten. An unprivileged
    /// caller's entries naming any other domain are dropped (the engine's `set_perms`).
    known: BTreeSet<u16>,
    pub(crate) conns: Vec<MConn>,
    pub(crate) log: Vec<Change>,
    pub(crate) domain_nodes: bool,
    next_watch: u64,
}

/// What `RELEASE` does: the answer, the events, the connections reset.
pub(crate) type Released = (Expect<()>, Vec<Ev>, Vec<usize>);

fn is_real(d: DomId) -> bool {
    d.0 < FIRST_RESERVED
}

impl Model {
    pub(crate) fn new(domain_nodes: bool, guests: &[u16]) -> Model {
        let mut specials = BTreeMap::new();
        specials.insert(INTRODUCE_DOMAIN.to_string(), vec![Perm::owner(DomId(0))]);
        // Any domain may watch for domains going away (the engine's documented default).
        specials.insert(
            RELEASE_DOMAIN.to_string(),
            vec![Perm::owner(DomId(0)), Perm::new(DomId(ANY), Access::READ)],
        );
        Model {
            tree: root_tree(),
            specials,
            doms: guests.iter().map(|&g| (g, MDom::default())).collect(),
            known: BTreeSet::from([0]),
            conns: vec![MConn::new(0), MConn::new(0)],
            log: Vec::new(),
            domain_nodes,
            next_watch: 0,
        }
    }

    fn limit(&self, domid: u16, kind: QKind) -> Option<u64> {
        let d = self.doms.get(&domid);
        let v = match kind {
            QKind::Nodes => d.and_then(|d| d.nodes).unwrap_or(DEFAULT_NODES),
            QKind::Watches => d.and_then(|d| d.watches).unwrap_or(DEFAULT_WATCHES),
            QKind::Transactions => d
                .and_then(|d| d.transactions)
                .unwrap_or(DEFAULT_TRANSACTIONS),
            QKind::Perms => d.and_then(|d| d.perms).unwrap_or(DEFAULT_PERMS),
        };
        (v != 0).then_some(u64::from(v))
    }

    /// Nodes of the committed tree owned by `domid`.
    pub(crate) fn owned(&self, domid: u16) -> u64 {
        self.tree
            .values()
            .filter(|n| n.perms.first().is_some_and(|p| p.domid.0 == domid))
            .count() as u64
    }

    pub(crate) fn watch_count(&self, domid: u16) -> u64 {
        self.conns
            .iter()
            .filter(|c| c.domid == domid && !c.dead)
            .map(|c| c.watches.len() as u64)
            .sum()
    }

    pub(crate) fn tx_count(&self, domid: u16) -> u64 {
        self.conns
            .iter()
            .filter(|c| c.domid == domid && !c.dead)
            .map(|c| c.txs.len() as u64)
            .sum()
    }

    // ----- events ----------------------------------------------------------------------------

    /// C xenstored's `fire_watches` + `watch_permitted`: the watches of every connection
    /// whose domain is privileged, or may read the node (under `old` or its current
    /// permissions) or its parent.
    fn fire(
        &self,
        p: &str,
        exact: bool,
        node: &[Perm],
        parent: Option<&[Perm]>,
        old: Option<&[Perm]>,
    ) -> Vec<Ev> {
        let mut out = Vec::new();
        for (ci, c) in self.conns.iter().enumerate() {
            if c.dead {
                continue;
            }
            let who = c.who();
            let can = |perms: &[Perm]| rights(who, perms) & R != 0;
            let permitted =
                who.privileged || old.is_some_and(can) || can(node) || parent.is_some_and(can);
            if !permitted {
                continue;
            }
            for w in &c.watches {
                let hit = if exact {
                    w.path == p
                } else {
                    w.matches_subtree(p)
                };
                if hit {
                    out.push(Ev {
                        conn: ci,
                        path: w.report(p),
                        token: w.token.clone(),
                        watch: w.id,
                    });
                }
            }
        }
        out
    }

    /// Events for a node that was written, created or had its permissions set (it exists).
    fn fire_node(&self, p: &str, old: Option<&[Perm]>) -> Vec<Ev> {
        let Some(node) = self.tree.get(p) else {
            return Vec::new();
        };
        let parent = parent_of(p).and_then(|q| self.tree.get(q));
        self.fire(
            p,
            false,
            &node.perms,
            parent.map(|n| n.perms.as_slice()),
            old,
        )
    }

    /// Events for a removed subtree: its root fires watches on it and its ancestors, every
    /// other removed node the watches on exactly it; permissions as before the removal.
    fn fire_removed(&self, removed: &[(String, MNode)]) -> Vec<Ev> {
        let before: BTreeMap<&str, &MNode> = removed.iter().map(|(k, n)| (k.as_str(), n)).collect();
        let mut out = Vec::new();
        for (i, (k, n)) in removed.iter().enumerate() {
            let parent = parent_of(k).and_then(|q| before.get(q).copied().or(self.tree.get(q)));
            out.extend(self.fire(
                k,
                i != 0,
                &n.perms,
                parent.map(|n| n.perms.as_slice()),
                None,
            ));
        }
        out
    }

    /// `@introduceDomain` / `@releaseDomain` about `domid`, for domains the special node's
    /// permissions let read: a watch on the name without depth gets the name, one with a
    /// depth of at least 1 or on `<name>/<domid>` gets `<name>/<domid>`.
    fn fire_special(&self, name: &str, domid: u16) -> Vec<Ev> {
        let with = format!("{name}/{domid}");
        let perms = self.specials.get(name).cloned().unwrap_or_default();
        let mut out = Vec::new();
        for (ci, c) in self.conns.iter().enumerate() {
            if c.dead || rights(c.who(), &perms) & R == 0 {
                continue;
            }
            for w in &c.watches {
                let path = if w.path == name {
                    match w.depth {
                        None => name,
                        Some(0) => continue,
                        Some(_) => with.as_str(),
                    }
                } else if w.path == with {
                    with.as_str()
                } else {
                    continue;
                };
                out.push(Ev {
                    conn: ci,
                    path: path.as_bytes().to_vec(),
                    token: w.token.clone(),
                    watch: w.id,
                });
            }
        }
        out
    }

    // ----- the change log --------------------------------------------------------------------

    fn log_done(&mut self, path: &str, done: &Done) {
        match done {
            Done::Wrote { created, changed } => {
                if created.is_empty() {
                    self.log.push(Change::Touched(path.to_string()));
                    if *changed {
                        self.log.push(Change::Data(path.to_string()));
                    }
                }
                for c in created {
                    self.log.push(Change::Created(c.clone()));
                    if let Some(p) = parent_of(c) {
                        self.log.push(Change::Children(p.to_string()));
                    }
                }
            }
            Done::Removed(list) => self.log_removed(list),
            Done::PermsSet { changed, .. } => {
                self.log.push(Change::Touched(path.to_string()));
                if *changed {
                    self.log.push(Change::Data(path.to_string()));
                }
            }
            _ => {}
        }
    }

    fn log_removed(&mut self, list: &[(String, MNode)]) {
        for (k, _) in list {
            self.log.push(Change::Deleted(k.clone()));
            if let Some(p) = parent_of(k) {
                self.log.push(Change::Children(p.to_string()));
            }
        }
    }

    // ----- node operations -------------------------------------------------------------------

    /// A node operation by connection `ci`, in transaction `tx` if given. `engine_nospc` (the
    /// engine answered `ENOSPC`) only decides cases the model leaves open: node creation in a
    /// transaction between the lower and upper bound of the caller's node usage.
    pub(crate) fn node_op(
        &mut self,
        ci: usize,
        tx: Option<u32>,
        raw: &str,
        op: &NodeOp,
        engine_nospc: bool,
    ) -> (Expect<Reply>, Vec<Ev>) {
        let conn = &self.conns[ci];
        if conn.dead {
            return (Expect::AnyErr, Vec::new());
        }
        let who = conn.who();
        let (result, events) = self.node_op_inner(ci, who, tx, raw, op, engine_nospc);
        if let (NodeOp::SetPerms(perms), Ok(_), true) = (op, &result, who.privileged) {
            self.known
                .extend(perms.iter().filter(|p| is_real(p.domid)).map(|p| p.domid.0));
        }
        (Expect::Is(result), events)
    }

    fn node_op_inner(
        &mut self,
        ci: usize,
        who: Who,
        tx: Option<u32>,
        raw: &str,
        op: &NodeOp,
        engine_nospc: bool,
    ) -> (Result<Reply, XsError>, Vec<Ev>) {
        if let NodeOp::SetPerms(perms) = op {
            // C xenstored's do_set_perms: the list is checked before the path.
            if perms.first().is_none_or(|o| !is_real(o.domid)) {
                return (Err(XsError::Inval), Vec::new());
            }
            if !who.privileged
                && self
                    .limit(who.domid, QKind::Perms)
                    .is_some_and(|l| perms.len() as u64 > l)
            {
                return (Err(XsError::NoSpc), Vec::new());
            }
        }
        let kept;
        let op = match op {
            NodeOp::SetPerms(perms) if !who.privileged => {
                kept = NodeOp::SetPerms(
                    perms
                        .iter()
                        .enumerate()
                        .filter(|(i, p)| {
                            *i == 0 || p.domid.0 == ANY || self.known.contains(&p.domid.0)
                        })
                        .map(|(_, p)| *p)
                        .collect(),
                );
                &kept
            }
            _ => op,
        };
        let allow_special = matches!(op, NodeOp::GetPerms | NodeOp::SetPerms(_));
        let path = match canon(raw, who.domid, allow_special) {
            Err(e) => return (Err(e), Vec::new()),
            Ok(Canon::Special(name)) => return (self.special_op(who, &name, op), Vec::new()),
            Ok(Canon::Node { abs, .. }) => abs,
        };
        match tx {
            None => self.main_op(who, &path, op),
            Some(id) => (self.tx_op(ci, who, id, &path, op, engine_nospc), Vec::new()),
        }
    }

    /// `GET_PERMS` / `SET_PERMS` on a special node (transactions do not apply to them).
    fn special_op(&mut self, who: Who, name: &str, op: &NodeOp) -> Result<Reply, XsError> {
        let Some(perms) = self.specials.get_mut(name) else {
            return Err(XsError::NoEnt);
        };
        let granted = rights(who, perms);
        match op {
            NodeOp::GetPerms if granted & R == 0 => Err(XsError::Acces),
            NodeOp::GetPerms => Ok(Reply::Perms(perms.clone())),
            NodeOp::SetPerms(new) => {
                if granted & (W | O) != W | O {
                    return Err(XsError::Acces);
                }
                if !who.privileged && new.first().map(|p| p.domid) != perms.first().map(|p| p.domid)
                {
                    return Err(XsError::Perm);
                }
                *perms = new.clone();
                Ok(Reply::Unit)
            }
            _ => Err(XsError::Inval),
        }
    }

    fn main_op(&mut self, who: Who, path: &str, op: &NodeOp) -> (Result<Reply, XsError>, Vec<Ev>) {
        let limit = if who.privileged {
            None
        } else {
            self.limit(who.domid, QKind::Nodes)
        };
        let owned = self.owned(who.domid);
        let mut nospc = |count: u64| limit.is_some_and(|l| owned + count > l);
        let done = match apply(&mut self.tree, who, path, op, &mut nospc) {
            Ok(d) => d,
            Err(e) => return (Err(e), Vec::new()),
        };
        self.log_done(path, &done);
        let events = match &done {
            Done::Wrote { .. } => self.fire_node(path, None),
            Done::Removed(list) => self.fire_removed(list),
            Done::PermsSet { old, .. } => self.fire_node(path, Some(old)),
            _ => Vec::new(),
        };
        (Ok(done.reply()), events)
    }

    fn tx_op(
        &mut self,
        ci: usize,
        who: Who,
        id: u32,
        path: &str,
        op: &NodeOp,
        engine_nospc: bool,
    ) -> Result<Reply, XsError> {
        let limit = if who.privileged {
            None
        } else {
            self.limit(who.domid, QKind::Nodes)
        };
        let owned = self.owned(who.domid);
        let Some(tx) = self.conns[ci].txs.iter_mut().find(|t| t.id == id) else {
            return Err(XsError::NoEnt);
        };
        // The node quota in a transaction: certainly over if the committed usage plus the
        // new nodes is; certainly not if that plus everything the transaction created so far
        // is not; in between the model accepts either answer.
        let cum = tx.cum_created;
        let mut nospc = |count: u64| match limit {
            None => false,
            Some(l) if owned + count > l => true,
            Some(l) if owned + count + cum <= l => false,
            Some(_) => engine_nospc,
        };
        let result = apply(&mut tx.view, who, path, op, &mut nospc);
        tx.accessed.insert(path.to_string());
        let own_rm = tx.own_rm_covers(path);
        match &result {
            Ok(done @ (Done::Value(_) | Done::Perms(_)))
                if !own_rm && !tx.own_mod.contains(path) && !tx.own_created.contains(path) =>
            {
                if matches!(done, Done::Value(_)) {
                    tx.value_reads.insert(path.to_string());
                }
                if matches!(done, Done::Perms(_)) || !who.privileged {
                    tx.perm_reads.insert(path.to_string());
                }
            }
            Ok(Done::Names(_)) if !own_rm && !tx.own_created.contains(path) => {
                tx.listed.insert(path.to_string());
            }
            Err(XsError::NoEnt) if !own_rm => {
                tx.enoent.insert(path.to_string());
            }
            Ok(Done::Wrote { created, .. }) => {
                tx.own_mod.insert(path.to_string());
                tx.own_created.extend(created.iter().cloned());
                if !who.privileged {
                    tx.cum_created += created.len() as u64;
                }
                tx.fire_targets.insert(path.to_string());
            }
            Ok(Done::Removed(list)) => {
                tx.rm_targets.insert(path.to_string());
                if !list.is_empty() {
                    tx.own_rm.insert(path.to_string());
                }
            }
            Ok(Done::PermsSet { .. }) => {
                tx.own_mod.insert(path.to_string());
                tx.fire_targets.insert(path.to_string());
            }
            _ => {}
        }
        if result.is_ok() && op.mutates() {
            tx.targets.insert(path.to_string());
            tx.replay.push((path.to_string(), op.clone()));
        }
        result.map(|d| d.reply())
    }

    // ----- transactions ----------------------------------------------------------------------

    pub(crate) fn tx_start_expect(&self, ci: usize) -> Expect<()> {
        let c = &self.conns[ci];
        if c.dead {
            return Expect::AnyErr;
        }
        let who = c.who();
        if !who.privileged
            && self
                .limit(who.domid, QKind::Transactions)
                .is_some_and(|l| self.tx_count(who.domid) + 1 > l)
        {
            return Expect::Is(Err(XsError::NoSpc));
        }
        Expect::Is(Ok(()))
    }

    pub(crate) fn tx_started(&mut self, ci: usize, id: u32) {
        let tx = MTx {
            id,
            view: self.tree.clone(),
            snapshot: self.tree.clone(),
            start: self.log.len(),
            replay: Vec::new(),
            accessed: BTreeSet::new(),
            value_reads: BTreeSet::new(),
            perm_reads: BTreeSet::new(),
            listed: BTreeSet::new(),
            enoent: BTreeSet::new(),
            own_mod: BTreeSet::new(),
            own_created: BTreeSet::new(),
            own_rm: BTreeSet::new(),
            targets: BTreeSet::new(),
            fire_targets: BTreeSet::new(),
            rm_targets: BTreeSet::new(),
            cum_created: 0,
        };
        self.conns[ci].txs.push(tx);
    }

    /// The conflict rules for committing `tx` now.
    pub(crate) fn judge(&self, tx: &MTx, who: Who) -> Verdict {
        let since = &self.log[tx.start.min(self.log.len())..];
        let changed =
            |p: &str, f: &dyn Fn(&Change) -> bool| since.iter().any(|c| c.path() == p && f(c));
        let mut must_fail = None;
        // A read must conflict when its node was deleted since, or when what it read was
        // changed and is not the snapshot's again (a change and its undoing leave the engine
        // free to conflict or not: run at commit, the read answers the same).
        let differs = |p: &str, what: &dyn Fn(&MNode) -> Vec<u8>| {
            changed(p, &|c| matches!(c, Change::Data(_)))
                && self.tree.get(p).map(what) != tx.snapshot.get(p).map(what)
        };
        let deleted = |p: &str| changed(p, &|c| matches!(c, Change::Deleted(_)));
        for p in &tx.value_reads {
            if deleted(p) || differs(p, &|n| n.value.clone()) {
                must_fail = Some(format!("it read {p}, whose value changed since"));
            }
        }
        for p in &tx.perm_reads {
            if deleted(p) || differs(p, &|n| format!("{:?}", n.perms).into_bytes()) {
                must_fail = Some(format!("it read {p}, whose permissions changed since"));
            }
        }
        // A listing must conflict when its node was deleted since, or when its children
        // changed and are not the snapshot's again: commits that changed them and changed
        // them back (another transaction's create-then-rm, run at its commit) leave the
        // engine free to report the ABA (as C xenstored, which rewrites the parent) or not.
        for p in &tx.listed {
            let deleted = changed(p, &|c| matches!(c, Change::Deleted(_)));
            let children = changed(p, &|c| matches!(c, Change::Children(_)))
                && child_names(&self.tree, p) != child_names(&tx.snapshot, p);
            if deleted || children {
                must_fail = Some(format!("it listed {p}, whose children changed since"));
            }
        }
        for p in &tx.enoent {
            if self.tree.contains_key(p) {
                must_fail = Some(format!("it got ENOENT for {p}, which exists now"));
            }
        }
        let touched: BTreeSet<&str> = since
            .iter()
            .filter(|c| !matches!(c, Change::Children(_)))
            .map(Change::path)
            .collect();
        let children: BTreeSet<&str> = since
            .iter()
            .filter(|c| matches!(c, Change::Children(_)))
            .map(Change::path)
            .collect();
        let closure: BTreeSet<String> = tx
            .accessed
            .iter()
            .flat_map(|p| ancestors_or_self(p))
            .collect();
        let must_succeed = closure.iter().all(|p| !touched.contains(p.as_str()))
            && tx.listed.iter().all(|p| !children.contains(p.as_str()));
        // Over the node quota only if it creates nodes (and someone set a small quota).
        let nospc_ok = !who.privileged
            && self.doms.get(&who.domid).is_some_and(|d| d.nodes.is_some())
            && tx.cum_created > 0;
        Verdict {
            must_fail,
            must_succeed,
            nospc_ok,
        }
    }

    /// `TRANSACTION_END`, given the engine's answer. A successful commit replays the
    /// transaction's changing operations on the committed tree (as if it ran at commit time).
    pub(crate) fn tx_end(
        &mut self,
        ci: usize,
        id: u32,
        commit: bool,
        engine: &Result<(), XsError>,
    ) -> Result<Option<CommitInfo>, String> {
        let c = &mut self.conns[ci];
        if c.dead {
            return Expect::AnyErr.check(engine).map(|()| None);
        }
        let who = c.who();
        let Some(pos) = c.txs.iter().position(|t| t.id == id) else {
            return Expect::Is(Err(XsError::NoEnt)).check(engine).map(|()| None);
        };
        let tx = c.txs.remove(pos);
        if !commit {
            return Expect::Is(Ok(())).check(engine).map(|()| None);
        }
        let verdict = self.judge(&tx, who);
        match engine {
            Ok(()) => {
                // A transaction that changes nothing commits whatever changed since: it read
                // a consistent snapshot (the engine's rule, as oxenstored's).
                if let Some(reason) = verdict.must_fail.filter(|_| !tx.replay.is_empty()) {
                    return Err(format!("commit succeeded, but must fail: {reason}"));
                }
                let pre = self.tree.clone();
                for (path, op) in &tx.replay {
                    let mut no_quota = |_: u64| false;
                    if let Ok(done) = apply(&mut self.tree, who, path, op, &mut no_quota) {
                        self.log_done(path, &done);
                    }
                }
                Ok(Some(CommitInfo {
                    pre,
                    post: self.tree.clone(),
                    targets: tx.targets,
                    fire_targets: tx.fire_targets,
                    rm_targets: tx.rm_targets,
                }))
            }
            Err(XsError::Again) if verdict.must_succeed => Err(format!(
                "commit failed with EAGAIN, but must succeed (accessed {:?}, listed {:?}; changed since: {:?})",
                tx.accessed,
                tx.listed,
                &self.log[tx.start..]
            )),
            Err(XsError::Again) => Ok(None),
            Err(XsError::NoSpc) if verdict.nospc_ok => Ok(None),
            Err(e) => Err(format!("commit failed with {e:?} ({verdict:?})")),
        }
    }

    // ----- watches ---------------------------------------------------------------------------

    pub(crate) fn watch(
        &mut self,
        ci: usize,
        raw: &str,
        token: &[u8],
        depth: Option<u32>,
    ) -> (Expect<()>, Vec<Ev>) {
        let c = &self.conns[ci];
        if c.dead {
            return (Expect::AnyErr, Vec::new());
        }
        let who = c.who();
        let (path, prefix) = match canon(raw, who.domid, true) {
            Err(e) => return (Expect::Is(Err(e)), Vec::new()),
            Ok(Canon::Node { abs, prefix }) => (abs, prefix),
            Ok(Canon::Special(s)) => (s, 0),
        };
        if c.watches.iter().any(|w| w.path == path && w.token == token) {
            return (Expect::Is(Err(XsError::Exist)), Vec::new());
        }
        if !who.privileged
            && self
                .limit(who.domid, QKind::Watches)
                .is_some_and(|l| self.watch_count(who.domid) + 1 > l)
        {
            return (Expect::Is(Err(XsError::NoSpc)), Vec::new());
        }
        self.next_watch += 1;
        let w = MWatch {
            id: self.next_watch,
            path,
            token: token.to_vec(),
            depth,
            prefix,
        };
        let (path, token) = w.own_event();
        let ev = Ev {
            conn: ci,
            path,
            token,
            watch: w.id,
        };
        self.conns[ci].watches.push(w);
        (Expect::Is(Ok(())), vec![ev])
    }

    pub(crate) fn unwatch(&mut self, ci: usize, raw: &str, token: &[u8]) -> Expect<()> {
        let c = &mut self.conns[ci];
        if c.dead {
            return Expect::AnyErr;
        }
        let path = match canon(raw, c.domid, true) {
            Err(e) => return Expect::Is(Err(e)),
            Ok(Canon::Node { abs, .. }) => abs,
            Ok(Canon::Special(s)) => s,
        };
        match c
            .watches
            .iter()
            .position(|w| w.path == path && w.token == token)
        {
            Some(i) => {
                c.watches.remove(i);
                Expect::Is(Ok(()))
            }
            None => Expect::Is(Err(XsError::NoEnt)),
        }
    }

    // ----- domains ---------------------------------------------------------------------------

    /// `INTRODUCE` by connection `ci`: `Ok(true)` for a new domain, `Ok(false)` for a rebind.
    pub(crate) fn introduce(&mut self, ci: usize, dom: u16) -> (Expect<bool>, Vec<Ev>) {
        let c = &self.conns[ci];
        if c.dead {
            return (Expect::AnyErr, Vec::new());
        }
        if !c.who().privileged {
            return (Expect::Is(Err(XsError::Acces)), Vec::new());
        }
        if dom == 0 || !is_real(DomId(dom)) {
            return (Expect::Is(Err(XsError::Inval)), Vec::new());
        }
        self.known.insert(dom);
        let d = self.doms.entry(dom).or_default();
        if d.introduced {
            return (Expect::Is(Ok(false)), Vec::new());
        }
        d.introduced = true;
        let mut events = Vec::new();
        if self.domain_nodes {
            events.extend(self.create_domain_nodes(dom));
        }
        events.extend(self.fire_special(INTRODUCE_DOMAIN, dom));
        (Expect::Is(Ok(true)), events)
    }

    fn create_domain_nodes(&mut self, dom: u16) -> Vec<Ev> {
        let home = format!("/local/domain/{dom}");
        let toolstack = vec![Perm::owner(DomId(0)), Perm::new(DomId(dom), Access::READ)];
        let guest = vec![Perm::owner(DomId(dom))];
        let created = self.ensure(&home, b"", &toolstack);
        self.ensure(
            &join(&home, "domid"),
            dom.to_string().as_bytes(),
            &toolstack,
        );
        for (rel, value, guest_owned) in GUEST_NODES {
            let perms = if *guest_owned { &guest } else { &toolstack };
            self.ensure(&join(&home, rel), value.as_bytes(), perms);
        }
        if created {
            self.fire_node(&home, None)
        } else {
            Vec::new()
        }
    }

    /// Creates `path` with `value` and `perms` unless it exists; missing parents get their
    /// parent's permissions.
    fn ensure(&mut self, path: &str, value: &[u8], perms: &[Perm]) -> bool {
        if self.tree.contains_key(path) {
            return false;
        }
        let near = nearest(&self.tree, path);
        let mut missing: Vec<String> = ancestors_or_self(path)
            .into_iter()
            .take_while(|a| *a != near)
            .collect();
        missing.reverse();
        for p in &missing {
            let node = if p == path {
                MNode {
                    value: value.to_vec(),
                    perms: perms.to_vec(),
                }
            } else {
                let inherited = parent_of(p)
                    .and_then(|q| self.tree.get(q))
                    .map(|n| n.perms.clone())
                    .unwrap_or_default();
                MNode {
                    value: Vec::new(),
                    perms: inherited,
                }
            };
            self.tree.insert(p.clone(), node);
            self.log.push(Change::Created(p.clone()));
            if let Some(q) = parent_of(p) {
                self.log.push(Change::Children(q.to_string()));
            }
        }
        true
    }

    /// `RELEASE` by connection `ci`. Returns the events and the connections that were reset.
    pub(crate) fn release(&mut self, ci: usize, dom: u16) -> Released {
        let c = &self.conns[ci];
        let refused = |e: Expect<()>| (e, Vec::new(), Vec::new());
        if c.dead {
            return refused(Expect::AnyErr);
        }
        if !c.who().privileged {
            return refused(Expect::Is(Err(XsError::Acces)));
        }
        if dom == 0 || !is_real(DomId(dom)) {
            return refused(Expect::Is(Err(XsError::Inval)));
        }
        if !self.doms.get(&dom).is_some_and(|d| d.introduced) {
            return refused(Expect::Is(Err(XsError::NoEnt)));
        }
        // Its connections first: their watches and transactions go.
        let mut reset = Vec::new();
        for (i, c) in self.conns.iter_mut().enumerate() {
            if c.domid == dom && !c.dead {
                c.dead = true;
                c.watches.clear();
                c.txs.clear();
                reset.push(i);
            }
        }
        // Nodes it owns go with their subtrees (C's domain_tree_remove: a pre-order walk
        // removing the topmost owned nodes), then its home.
        let mut roots: Vec<String> = Vec::new();
        for (k, n) in &self.tree {
            let owner = n.perms.first().map(|p| p.domid.0);
            if k != "/" && owner == Some(dom) && !roots.iter().any(|r| at_or_below(k, r)) {
                roots.push(k.clone());
            }
        }
        roots.push(format!("/local/domain/{dom}"));
        let mut events = Vec::new();
        for r in roots {
            if !self.tree.contains_key(&r) {
                continue;
            }
            let removed: Vec<(String, MNode)> = subtree(&self.tree, &r)
                .into_iter()
                .filter_map(|k| self.tree.remove(&k).map(|n| (k, n)))
                .collect();
            self.log_removed(&removed);
            events.extend(self.fire_removed(&removed));
        }
        // The root cannot be removed: if it owned it, it goes back to dom0 (as the store's
        // `domain_gone` does), with dom0's default list.
        if let Some(root) = self.tree.get_mut("/")
            && root.perms.first().map(|p| p.domid.0) == Some(dom)
        {
            root.perms = vec![Perm::owner(DomId(0))];
            self.log.push(Change::Touched("/".to_string()));
            self.log.push(Change::Data("/".to_string()));
        }
        // Permission entries naming it stop counting (and are no longer shown).
        let strip = |perms: &mut Vec<Perm>| {
            let before = perms.len();
            let mut i = 0;
            perms.retain(|p| {
                i += 1;
                i == 1 || p.domid.0 != dom
            });
            before != perms.len()
        };
        let mut stripped = Vec::new();
        for (k, n) in self.tree.iter_mut() {
            if strip(&mut n.perms) {
                stripped.push(k.clone());
            }
        }
        for k in stripped {
            self.log.push(Change::Touched(k));
        }
        for perms in self.specials.values_mut() {
            strip(perms);
        }
        for c in &mut self.conns {
            for tx in &mut c.txs {
                for n in tx.view.values_mut() {
                    strip(&mut n.perms);
                }
                for (_, op) in &mut tx.replay {
                    if let NodeOp::SetPerms(p) = op {
                        strip(p);
                    }
                }
            }
        }
        self.doms.insert(dom, MDom::default());
        self.known.remove(&dom);
        events.extend(self.fire_special(RELEASE_DOMAIN, dom));
        (Expect::Is(Ok(())), events, reset)
    }

    /// `SET_QUOTA` for a domain (by dom0), given whether the engine accepted it. The engine
    /// may refuse a domain it has no record of (released and not yet back).
    pub(crate) fn set_quota(
        &mut self,
        dom: u16,
        kind: QKind,
        value: u32,
        engine: &Result<(), XsError>,
    ) -> Result<(), String> {
        let introduced = self.doms.get(&dom).is_some_and(|d| d.introduced);
        match engine {
            Ok(()) => {}
            Err(XsError::NoEnt) if !introduced => return Ok(()),
            Err(e) => return Err(format!("set_quota failed with {e:?}")),
        }
        let d = self.doms.entry(dom).or_default();
        let slot = match kind {
            QKind::Nodes => &mut d.nodes,
            QKind::Watches => &mut d.watches,
            QKind::Transactions => &mut d.transactions,
            QKind::Perms => &mut d.perms,
        };
        *slot = Some(value);
        Ok(())
    }
}
