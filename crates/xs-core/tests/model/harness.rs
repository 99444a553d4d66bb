//! Runs a sequence of operations against the engine and the reference model side by side,
//! comparing after every operation: the answer, `Store::check`, the whole tree (read back
//! through dom0), usage counters, and the watch events each connection receives.

use std::collections::{BTreeMap, BTreeSet};

use xs_core::store::{Introduced, Introduction};
use xs_core::{ConnId, DomId, Perm, QuotaKind, Store, StoreConfig, XsError};

use crate::reference::{
    CommitInfo, Ev, MConn, MNode, MWatch, Model, NodeOp, QKind, Reply, Tree, at_or_below,
    parent_of, readable,
};

/// How a case is set up.
#[derive(Clone, Debug)]
pub(crate) struct Cfg {
    /// `StoreConfig::domain_nodes`.
    pub(crate) domain_nodes: bool,
    /// An event queue bound of 3 instead of 1024 (events are then drained only by `Drain`
    /// operations, around commits and at the end).
    pub(crate) small_queue: bool,
    /// Guest domain 3 besides 1 and 2.
    pub(crate) guest3: bool,
    /// Start with a few nodes the guests may use (see [`prelude`]).
    pub(crate) prelude: bool,
    /// Guest 1 starts with small quotas: nodes 5, watches 2, transactions 1, permissions 2.
    pub(crate) tight_quotas: bool,
}

/// One generated operation. Connection and transaction selectors are resolved at run time:
/// connection `c % n` (0 and 1 are dom0, 2.. the guests 1, 2, 3); `tx` 0 is "no transaction"
/// (connection `c`), 255 a never-allocated id (on connection `c`), any other `k` the
/// `(k-1) % open`-th of all open transactions (with its connection; none open: no
/// transaction, or for `TxEnd` the never-allocated id).
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Node {
        c: u8,
        tx: u8,
        path: String,
        op: NodeOp,
    },
    TxStart {
        c: u8,
    },
    TxEnd {
        c: u8,
        tx: u8,
        commit: bool,
    },
    Watch {
        c: u8,
        path: String,
        token: u8,
        depth: Option<u32>,
    },
    Unwatch {
        c: u8,
        path: String,
        token: u8,
    },
    /// `INTRODUCE` of guest `dom % guests` by connection `c`.
    Introduce {
        c: u8,
        dom: u8,
    },
    /// `RELEASE` of guest `dom % guests` by connection `c`.
    Release {
        c: u8,
        dom: u8,
    },
    /// `SET_QUOTA` for guest `dom % guests` by dom0.
    SetQuota {
        dom: u8,
        kind: QKind,
        value: u32,
    },
    /// Take every queued event of connection `c` (small-queue runs only).
    Drain {
        c: u8,
    },
}

pub(crate) const TOKENS: [&[u8]; 2] = [b"t", b"u"];
/// A transaction id the engine never hands out in these runs.
const STALE_TX: u32 = 0x7777;
const SMALL_QUEUE: usize = 3;
const LARGE_QUEUE: usize = 1024;

/// Setup the generated operations usually start with: `/a` shared with the guests, without
/// default domain nodes a home owned by each guest, and a few watches.
pub(crate) fn prelude(cfg: &Cfg) -> Vec<Op> {
    let dom0 = |path: &str, op: NodeOp| Op::Node {
        c: 0,
        tx: 0,
        path: path.to_string(),
        op,
    };
    let p = |s: &str| Perm::parse(s.as_bytes()).unwrap();
    let mut ops = vec![
        dom0("/a", NodeOp::Mkdir),
        dom0(
            "/a",
            NodeOp::SetPerms(vec![p("n0"), p("b1"), p("r2"), p("w3")]),
        ),
    ];
    if !cfg.domain_nodes {
        for g in guests(cfg) {
            let home = format!("/local/domain/{g}");
            ops.push(dom0(&home, NodeOp::Mkdir));
            ops.push(dom0(&home, NodeOp::SetPerms(vec![p(&format!("n{g}"))])));
        }
    }
    // Watchers: dom0 on everything, guest 1 on everything (it sees what it may read), guest
    // 2 on its home (relative) and on `/a` one level deep.
    let watch = |c: u8, path: &str, depth: Option<u32>| Op::Watch {
        c,
        path: path.to_string(),
        token: 0,
        depth,
    };
    ops.push(watch(1, "/", None));
    ops.push(watch(2, "/", None));
    ops.push(watch(3, "a", None));
    ops.push(watch(3, "/a", Some(1)));
    ops
}

pub(crate) fn guests(cfg: &Cfg) -> Vec<u16> {
    if cfg.guest3 {
        vec![1, 2, 3]
    } else {
        vec![1, 2]
    }
}

fn quota_kind(k: QKind) -> QuotaKind {
    match k {
        QKind::Nodes => QuotaKind::Nodes,
        QKind::Watches => QuotaKind::Watches,
        QKind::Transactions => QuotaKind::Transactions,
        QKind::Perms => QuotaKind::NodePermissions,
    }
}

type Event = (Vec<u8>, Vec<u8>);

/// Counters of what the runs exercised, printed at the end when `XS_MODEL_STATS` is set.
pub(crate) mod stats {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    static COUNTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

    pub(crate) fn bump(what: impl Into<String>) {
        if std::env::var_os("XS_MODEL_STATS").is_some()
            && let Ok(mut m) = COUNTS.lock()
        {
            *m.entry(what.into()).or_default() += 1;
        }
    }

    pub(crate) fn print() {
        if let Ok(m) = COUNTS.lock()
            && !m.is_empty()
        {
            for (k, v) in m.iter() {
                println!("{v:>10}  {k}");
            }
        }
    }
}

fn outcome<T>(r: &Result<T, XsError>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => e.name().to_string(),
    }
}

#[derive(Debug)]
pub(crate) struct Harness {
    pub(crate) store: Store,
    pub(crate) conns: Vec<ConnId>,
    pub(crate) model: Model,
    guests: Vec<u16>,
    queue_len: usize,
    small: bool,
    /// Events the model predicts and that were not taken yet, per connection, with the
    /// number of the operation that caused them.
    pending: Vec<Vec<(usize, Ev)>>,
    step: usize,
}

fn engine<T>(r: xs_core::XsResult<T>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e:?}"))
}

/// Runs a whole case: setup, the prelude if configured, the operations, and a final drain.
pub(crate) fn run(cfg: &Cfg, ops: &[Op]) -> Result<(), String> {
    let mut h = Harness::new(cfg)?;
    let mut pre = if cfg.prelude {
        prelude(cfg)
    } else {
        Vec::new()
    };
    if cfg.tight_quotas {
        for (kind, value) in [
            (QKind::Nodes, 5),
            (QKind::Watches, 2),
            (QKind::Transactions, 1),
            (QKind::Perms, 2),
        ] {
            pre.push(Op::SetQuota {
                dom: 0,
                kind,
                value,
            });
        }
    }
    for (i, op) in pre.iter().chain(ops).enumerate() {
        h.step(op)
            .map_err(|e| format!("operation {i} ({op:?}): {e}"))?;
    }
    h.drain_all().map_err(|e| format!("final drain: {e}"))
}

impl Harness {
    pub(crate) fn new(cfg: &Cfg) -> Result<Harness, String> {
        let guests = guests(cfg);
        let queue_len = if cfg.small_queue {
            SMALL_QUEUE
        } else {
            LARGE_QUEUE
        };
        let config = StoreConfig {
            domain_nodes: cfg.domain_nodes,
            event_queue_len: queue_len,
            ..StoreConfig::new([1, 2])
        };
        let mut store = engine(Store::new(config), "Store::new")?;
        let c0 = engine(store.connect(DomId(0)), "connect")?;
        let c1 = engine(store.connect(DomId(0)), "connect")?;
        let mut h = Harness {
            store,
            conns: vec![c0, c1],
            model: Model::new(cfg.domain_nodes, &guests),
            guests: guests.clone(),
            queue_len,
            small: cfg.small_queue,
            pending: vec![Vec::new(), Vec::new()],
            step: 0,
        };
        for g in guests {
            let got = h
                .store
                .introduce(c0, DomId(g), Introduction { gfn: 1, evtchn: 1 })
                .map(|i| i == Introduced::New);
            let (expect, _) = h.model.introduce(0, g);
            expect.check(&got)?;
            let conn = engine(h.store.connect(DomId(g)), "connect")?;
            h.conns.push(conn);
            h.model.conns.push(MConn::new(g));
            h.pending.push(Vec::new());
        }
        h.check_invariants()?;
        Ok(h)
    }

    fn conn_index(&self, c: u8) -> usize {
        usize::from(c) % self.conns.len()
    }

    fn guest(&self, dom: u8) -> u16 {
        self.guests[usize::from(dom) % self.guests.len()]
    }

    fn resolve_tx(&self, c: u8, sel: u8) -> (usize, Option<u32>) {
        let ci = self.conn_index(c);
        if sel == 0 {
            return (ci, None);
        }
        if sel == u8::MAX {
            return (ci, Some(STALE_TX));
        }
        let open: Vec<(usize, u32)> = self
            .model
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.dead)
            .flat_map(|(i, c)| c.txs.iter().map(move |t| (i, t.id)))
            .collect();
        match open.len() {
            0 => (ci, None),
            n => {
                let (i, id) = open[(usize::from(sel) - 1) % n];
                (i, Some(id))
            }
        }
    }

    fn push_events(&mut self, events: Vec<Ev>) {
        for ev in events {
            self.pending[ev.conn].push((self.step, ev));
        }
    }

    pub(crate) fn step(&mut self, op: &Op) -> Result<(), String> {
        self.step += 1;
        match op {
            Op::Node { c, tx, path, op } => {
                let (ci, tx) = self.resolve_tx(*c, *tx);
                let got = self.engine_node(ci, tx.unwrap_or(0), path, op);
                let nospc = got == Err(XsError::NoSpc);
                let (expect, events) = self.model.node_op(ci, tx, path, op, nospc);
                expect.check(&got)?;
                let kind = format!("{op:?}");
                let kind = kind.split('(').next().unwrap_or_default();
                let inside = if tx.is_some() { "in tx" } else { "" };
                stats::bump(format!("node {kind} {inside} {}", outcome(&got)));
                self.push_events(events);
            }
            Op::TxStart { c } => {
                let ci = self.conn_index(*c);
                let expect = self.model.tx_start_expect(ci);
                let got = self.store.transaction_start(self.conns[ci]);
                expect.check(&got.map(|_| ()))?;
                stats::bump(format!("tx start {}", outcome(&got)));
                if let Ok(id) = got {
                    if id == 0 || self.model.conns[ci].txs.iter().any(|t| t.id == id) {
                        return Err(format!("transaction id {id} is 0 or in use"));
                    }
                    self.model.tx_started(ci, id);
                }
            }
            Op::TxEnd { c, tx, commit } => {
                let (ci, id) = self.resolve_tx(*c, *tx);
                let id = id.unwrap_or(STALE_TX);
                if self.small {
                    self.drain_all()?;
                }
                let got = self.store.transaction_end(self.conns[ci], id, *commit);
                let verdict = self.model.conns[ci]
                    .txs
                    .iter()
                    .find(|t| t.id == id)
                    .map(|t| self.model.judge(t, self.model.conns[ci].who()));
                let info = self.model.tx_end(ci, id, *commit, &got)?;
                if let Some(v) = verdict.filter(|_| *commit) {
                    let class = match (&v.must_fail, v.must_succeed) {
                        (Some(_), _) => "must fail",
                        (None, true) => "must succeed",
                        (None, false) => "either",
                    };
                    stats::bump(format!("commit ({class}) {}", outcome(&got)));
                } else {
                    stats::bump(format!("tx end commit={commit} {}", outcome(&got)));
                }
                let taken = self.take_all();
                self.check_commit_events(info.as_ref(), &taken)
                    .map_err(|e| format!("commit events: {e} (taken: {})", show_all(&taken)))?;
            }
            Op::Watch {
                c,
                path,
                token,
                depth,
            } => {
                let ci = self.conn_index(*c);
                let token = TOKENS[usize::from(*token) % TOKENS.len()];
                let got = self
                    .store
                    .watch(self.conns[ci], path.as_bytes(), token, *depth);
                let (expect, events) = self.model.watch(ci, path, token, *depth);
                expect.check(&got)?;
                stats::bump(format!("watch {}", outcome(&got)));
                self.push_events(events);
            }
            Op::Unwatch { c, path, token } => {
                let ci = self.conn_index(*c);
                let token = TOKENS[usize::from(*token) % TOKENS.len()];
                let got = self.store.unwatch(self.conns[ci], path.as_bytes(), token);
                self.model.unwatch(ci, path, token).check(&got)?;
            }
            Op::Introduce { c, dom } => {
                let ci = self.conn_index(*c);
                let g = self.guest(*dom);
                let got = self
                    .store
                    .introduce(self.conns[ci], DomId(g), Introduction { gfn: 1, evtchn: 1 })
                    .map(|i| i == Introduced::New);
                let (expect, events) = self.model.introduce(ci, g);
                expect.check(&got)?;
                stats::bump(format!("introduce {}", outcome(&got)));
                self.push_events(events);
                if got == Ok(true) {
                    self.reconnect(g)?;
                }
            }
            Op::Release { c, dom } => {
                let ci = self.conn_index(*c);
                let g = self.guest(*dom);
                let got = self.store.release(self.conns[ci], DomId(g));
                let (expect, events, reset) = self.model.release(ci, g);
                expect.check(&got)?;
                stats::bump(format!("release {}", outcome(&got)));
                for r in reset {
                    self.pending[r].clear();
                }
                self.push_events(events);
            }
            Op::SetQuota { dom, kind, value } => {
                let g = self.guest(*dom);
                let got =
                    self.store
                        .set_quota(self.conns[0], Some(DomId(g)), quota_kind(*kind), *value);
                self.model.set_quota(g, *kind, *value, &got)?;
            }
            Op::Drain { c } => {
                if self.small {
                    let ci = self.conn_index(*c);
                    self.drain(ci)?;
                }
            }
        }
        self.check_invariants()?;
        if !self.small {
            self.drain_all()?;
        }
        Ok(())
    }

    /// A guest came back: its slot gets a fresh connection.
    fn reconnect(&mut self, g: u16) -> Result<(), String> {
        let Some(slot) = self.guests.iter().position(|&x| x == g).map(|i| i + 2) else {
            return Err(format!("no slot for guest {g}"));
        };
        if self.model.conns[slot].dead {
            self.store.disconnect(self.conns[slot]);
            self.conns[slot] = engine(self.store.connect(DomId(g)), "connect")?;
            self.model.conns[slot] = MConn::new(g);
            self.pending[slot].clear();
        }
        Ok(())
    }

    fn engine_node(
        &mut self,
        ci: usize,
        tx: u32,
        path: &str,
        op: &NodeOp,
    ) -> Result<Reply, XsError> {
        let conn = self.conns[ci];
        let p = path.as_bytes();
        let s = &mut self.store;
        match op {
            NodeOp::Read => {
                let mut out = Vec::new();
                s.read(conn, tx, p, &mut out).map(|()| Reply::Value(out))
            }
            NodeOp::Write(v) => s.write(conn, tx, p, v).map(|()| Reply::Unit),
            NodeOp::Mkdir => s.mkdir(conn, tx, p).map(|()| Reply::Unit),
            NodeOp::Rm => s.rm(conn, tx, p).map(|()| Reply::Unit),
            NodeOp::Directory => {
                let mut out = Vec::new();
                s.directory(conn, tx, p, &mut out)
                    .map(|()| Reply::Names(split_names(&out)))
            }
            NodeOp::DirectoryPart => {
                let mut out = Vec::new();
                s.directory_part(conn, tx, p, 0, &mut out)
                    .map(|()| Reply::Names(parse_directory_part(&out)))
            }
            NodeOp::GetPerms => s.get_perms(conn, tx, p).map(Reply::Perms),
            NodeOp::SetPerms(perms) => s.set_perms(conn, tx, p, perms).map(|()| Reply::Unit),
        }
    }

    // ----- invariants ------------------------------------------------------------------------

    fn check_invariants(&mut self) -> Result<(), String> {
        self.store
            .check()
            .map_err(|e| format!("Store::check: {e}"))?;
        let got = self.engine_tree()?;
        if got != self.model.tree {
            return Err(format!(
                "trees differ:\n{}",
                tree_diff(&got, &self.model.tree)
            ));
        }
        if self.store.node_count() != self.model.tree.len() {
            return Err(format!(
                "node_count {} but the tree has {} nodes",
                self.store.node_count(),
                self.model.tree.len()
            ));
        }
        let live = || self.model.conns.iter().filter(|c| !c.dead);
        let watches: usize = live().map(|c| c.watches.len()).sum();
        let txs: usize = live().map(|c| c.txs.len()).sum();
        if self.store.watch_count() != watches || self.store.transaction_count() != txs {
            return Err(format!(
                "engine has {} watches and {} transactions, model {watches} and {txs}",
                self.store.watch_count(),
                self.store.transaction_count()
            ));
        }
        for d in [0u16, 1, 2, 3] {
            let want = (
                self.model.owned(d),
                self.model.watch_count(d),
                self.model.tx_count(d),
            );
            let got = self
                .store
                .usage(DomId(d))
                .map_or((0, 0, 0), |u| (u.nodes, u.watches, u.transactions));
            if got != want {
                return Err(format!(
                    "usage of domain {d} (nodes, watches, transactions): engine {got:?}, model {want:?}"
                ));
            }
        }
        for (ci, c) in self.model.conns.iter().enumerate() {
            let queued = self.store.queued_events(self.conns[ci]);
            if queued > self.queue_len || (c.dead && queued > 0) {
                return Err(format!(
                    "connection {ci} has {queued} events queued (bound {}, dead {})",
                    self.queue_len, c.dead
                ));
            }
        }
        Ok(())
    }

    /// The whole tree as dom0 sees it outside transactions.
    pub(crate) fn engine_tree(&mut self) -> Result<Tree, String> {
        let conn = self.conns[0];
        let mut tree = Tree::new();
        let mut stack = vec!["/".to_string()];
        while let Some(p) = stack.pop() {
            let mut value = Vec::new();
            engine(self.store.read(conn, 0, p.as_bytes(), &mut value), &p)?;
            let perms = engine(self.store.get_perms(conn, 0, p.as_bytes()), &p)?;
            let mut list = Vec::new();
            engine(self.store.directory(conn, 0, p.as_bytes(), &mut list), &p)?;
            for name in split_names(&list) {
                let name = String::from_utf8(name).map_err(|e| format!("{p}: {e}"))?;
                stack.push(crate::reference::join(&p, &name));
            }
            tree.insert(p, MNode { value, perms });
        }
        Ok(tree)
    }

    // ----- events ----------------------------------------------------------------------------

    fn take(&mut self, ci: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.store.pop_event(self.conns[ci]) {
            out.push((e.path.to_vec(), e.token.to_vec()));
            if out.len() > 100_000 {
                break;
            }
        }
        out
    }

    fn take_all(&mut self) -> Vec<Vec<Event>> {
        (0..self.conns.len()).map(|ci| self.take(ci)).collect()
    }

    pub(crate) fn drain_all(&mut self) -> Result<(), String> {
        for ci in 0..self.conns.len() {
            self.drain(ci)?;
        }
        Ok(())
    }

    /// Takes every event of a connection and checks them against the predicted ones under
    /// the queue policy of `watch.rs`: the first `bound` predicted events are queued (in
    /// operation order; which events of the operation that crossed the bound is open), every
    /// watch that lost one gets one catch-up event with its own path after them.
    fn drain(&mut self, ci: usize) -> Result<(), String> {
        let got = self.take(ci);
        let pending = std::mem::take(&mut self.pending[ci]);
        let watches = &self.model.conns[ci].watches;
        check_drain(&got, &pending, self.queue_len, watches).map_err(|e| {
            format!(
                "events of connection {ci}: {e}\n  got {}\n  predicted {pending:?}",
                show(&got)
            )
        })
    }

    /// The events of a commit, checked loosely: every event is about a watch that matches
    /// it, at or below something the transaction changed, readable before or after; every
    /// watcher of a changed node that may read it (before and after) gets an event on the
    /// line of that node (it, an ancestor or a descendant).
    fn check_commit_events(
        &self,
        info: Option<&CommitInfo>,
        taken: &[Vec<Event>],
    ) -> Result<(), String> {
        let Some(info) = info else {
            return match taken.iter().position(|t| !t.is_empty()) {
                Some(ci) => Err(format!("connection {ci} got events, nothing was committed")),
                None => Ok(()),
            };
        };
        let mut roots: BTreeSet<String> = info.targets.clone();
        roots.extend(
            info.post
                .keys()
                .filter(|k| !info.pre.contains_key(*k))
                .cloned(),
        );
        let changed: Vec<&String> = info
            .pre
            .keys()
            .chain(info.post.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|k| info.pre.get(*k) != info.post.get(*k))
            .collect();
        for (ci, c) in self.model.conns.iter().enumerate() {
            let got = &taken[ci];
            if c.dead {
                if !got.is_empty() {
                    return Err(format!("dead connection {ci} got {got:?}"));
                }
                continue;
            }
            let who = c.who();
            let n = got.len().min(self.queue_len);
            let (regular, catch) = got.split_at(n);
            stats::bump(format!("commit events per conn {}", got.len().min(4)));
            for (p, t) in regular {
                let explained = c.watches.iter().any(|w| {
                    w.token == *t
                        && w.absolute(p).is_some_and(|a| {
                            (w.matches_subtree(&a) || w.path == a)
                                && roots.iter().any(|r| at_or_below(&a, r))
                                && (who.privileged
                                    || [&info.pre, &info.post].iter().any(|t| {
                                        readable(t, who, &a)
                                            || parent_of(&a).is_some_and(|q| readable(t, who, q))
                                    }))
                        })
                });
                if !explained {
                    return Err(format!(
                        "connection {ci}: unexplained event ({}, {})",
                        String::from_utf8_lossy(p),
                        String::from_utf8_lossy(t)
                    ));
                }
            }
            check_catch_ups(catch, &c.watches, None)?;
            for q in &changed {
                let deleted = !info.post.contains_key(*q);
                if !(deleted || info.fire_targets.contains(*q)) {
                    continue;
                }
                if !who.privileged && !may_see(who, q, info) {
                    continue;
                }
                // A removed node fires the watches on it and its ancestors only if it is
                // the root of a removal (its parent stays); otherwise only those on it.
                let removal_root = deleted
                    && info.rm_targets.contains(*q)
                    && parent_of(q).is_some_and(|p| {
                        info.post.contains_key(p)
                            && !info.rm_targets.iter().any(|r| at_or_below(p, r))
                    });
                for w in &c.watches {
                    let relevant = if deleted && !removal_root {
                        w.path == **q
                    } else {
                        w.matches_subtree(q)
                    };
                    if !relevant {
                        continue;
                    }
                    let seen = got.iter().any(|(p, t)| {
                        *t == w.token
                            && w.absolute(p)
                                .is_some_and(|a| at_or_below(&a, q) || at_or_below(q, &a))
                    });
                    if !seen {
                        return Err(format!(
                            "connection {ci}: no event for watch {:?} about changed {q}",
                            w.path
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether an unprivileged watcher is certainly entitled to hear of a change at `q` by a
/// commit: it can read `q` or its parent after the change (if `q` exists then) and before
/// (if it existed); for a removed node, it could read it, or its parent before and after.
fn may_see(who: crate::reference::Who, q: &str, info: &CommitInfo) -> bool {
    let rd = |t: &Tree, p: &str| readable(t, who, p);
    let parent = parent_of(q);
    let pre = info.pre.contains_key(q);
    let post = info.post.contains_key(q);
    let pre_ok = rd(&info.pre, q) || parent.is_some_and(|p| rd(&info.pre, p));
    let post_ok = rd(&info.post, q) || parent.is_some_and(|p| rd(&info.post, p));
    if post {
        post_ok && (!pre || pre_ok)
    } else {
        rd(&info.pre, q) || parent.is_some_and(|p| rd(&info.pre, p) && rd(&info.post, p))
    }
}

/// Catch-up events: each names the own path of a distinct registered watch, from `allowed`
/// if given.
fn check_catch_ups(
    catch: &[Event],
    watches: &[MWatch],
    allowed: Option<&BTreeSet<u64>>,
) -> Result<BTreeSet<u64>, String> {
    let mut seen = BTreeSet::new();
    for e in catch {
        let Some(w) = watches.iter().find(|w| w.own_event() == *e) else {
            return Err(format!(
                "catch-up event {} names no registered watch",
                show(std::slice::from_ref(e))
            ));
        };
        if allowed.is_some_and(|a| !a.contains(&w.id)) {
            return Err(format!(
                "catch-up event {} for a watch that missed nothing",
                show(std::slice::from_ref(e))
            ));
        }
        if !seen.insert(w.id) {
            return Err(format!(
                "two catch-up events {}",
                show(std::slice::from_ref(e))
            ));
        }
    }
    Ok(seen)
}

fn key(e: &Ev) -> Event {
    (e.path.clone(), e.token.clone())
}

/// Whether C xenstored's rule against identical pending events covers an event (all but
/// special events).
fn deduplicated(e: &Event) -> bool {
    e.0.first() != Some(&b'@')
}

/// See [`Harness::drain`]. The queue also follows C xenstored's rule against identical
/// events (`watch.rs`): an event identical to one queued since the last drain is dropped,
/// special events excepted. Within one operation the order of events is open, so its
/// identical events collapse to one: queued (the others dropped), or missed with the others
/// (the queue was full for all of them).
fn check_drain(
    got: &[Event],
    pending: &[(usize, Ev)],
    bound: usize,
    watches: &[MWatch],
) -> Result<(), String> {
    if !got.is_empty() {
        stats::bump(format!("drain: events {}", got.len().min(5)));
    }
    let mut groups: BTreeMap<usize, Vec<&Ev>> = BTreeMap::new();
    for (op, e) in pending {
        groups.entry(*op).or_default().push(e);
    }
    // Keys queued so far (of events the rule covers).
    let mut queued: BTreeSet<Event> = BTreeSet::new();
    let mut cursor = 0;
    let mut predicted = 0;
    let mut certain = BTreeSet::new();
    let mut possible = BTreeSet::new();
    for group in groups.values() {
        // The group's events as the queue sees them: each with the watches that predicted
        // it (several for identical events the rule collapses).
        let mut units: Vec<(Event, Vec<u64>)> = Vec::new();
        for e in group {
            let k = key(e);
            if deduplicated(&k) {
                if queued.contains(&k) {
                    stats::bump("drain: duplicate of a queued event");
                    continue;
                }
                if let Some(unit) = units.iter_mut().find(|(u, _)| *u == k) {
                    stats::bump("drain: duplicate within an operation");
                    unit.1.push(e.watch);
                    continue;
                }
            }
            units.push((k, vec![e.watch]));
        }
        predicted += units.len();
        let take = bound.saturating_sub(cursor).min(units.len());
        let Some(taken) = got.get(cursor..cursor + take) else {
            return Err(format!(
                "{} events, at least {} expected",
                got.len(),
                cursor + take
            ));
        };
        cursor += take;
        let mut left = units.clone();
        for e in taken {
            let Some(i) = left.iter().position(|(u, _)| u == e) else {
                let predicted: Vec<Event> = units.iter().map(|(u, _)| u.clone()).collect();
                return Err(format!(
                    "event {} is not among the predicted {}",
                    show(std::slice::from_ref(e)),
                    show(&predicted)
                ));
            };
            let (k, _) = left.remove(i);
            if deduplicated(&k) {
                queued.insert(k);
            }
        }
        // What did not fit: every watch of a collapsed event missed one. For special
        // events, the watch missed one for sure if no other watch of the group predicted the
        // same event.
        for (k, owners) in &left {
            if deduplicated(k) {
                certain.extend(owners.iter().copied());
                possible.extend(owners.iter().copied());
                continue;
            }
            let owners: BTreeSet<u64> = units
                .iter()
                .filter(|(u, _)| u == k)
                .flat_map(|(_, o)| o.iter().copied())
                .collect();
            if owners.len() == 1 || taken.is_empty() {
                certain.extend(owners.iter().copied());
            }
            possible.extend(owners);
        }
    }
    let (regular, catch) = got.split_at(cursor);
    if !catch.is_empty() {
        stats::bump("drain: with catch-ups");
    }
    if predicted <= bound && !catch.is_empty() {
        return Err(format!("unexpected events {}", show(catch)));
    }
    let seen = check_catch_ups(catch, watches, Some(&possible))?;
    for w in watches {
        // A catch-up event identical to a queued event is dropped by the rule, too.
        let covered = regular.contains(&w.own_event());
        if certain.contains(&w.id) && !seen.contains(&w.id) && !covered {
            return Err(format!(
                "watch {:?} missed events and got no catch-up",
                w.path
            ));
        }
    }
    Ok(())
}

/// `<gencnt>|<name>|*` plus the terminating empty string (the whole list at offset 0).
fn parse_directory_part(out: &[u8]) -> Vec<Vec<u8>> {
    let bad = || vec![format!("<bad DIRECTORY_PART reply {out:?}>").into_bytes()];
    let Some(i) = out.iter().position(|&b| b == 0) else {
        return bad();
    };
    let (gencnt, rest) = (&out[..i], &out[i + 1..]);
    if gencnt.is_empty() || !gencnt.iter().all(u8::is_ascii_digit) {
        return bad();
    }
    match rest.split_last() {
        Some((0, list)) => split_names(list),
        _ => bad(),
    }
}

pub(crate) fn split_names(list: &[u8]) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = list.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    // Every name is followed by a NUL: the last piece is empty.
    if names.pop().is_some_and(|last| !last.is_empty()) {
        names.push(b"<missing NUL>".to_vec());
    }
    names
}

fn tree_diff(engine: &Tree, model: &Tree) -> String {
    let mut out = String::new();
    let keys: BTreeSet<&String> = engine.keys().chain(model.keys()).collect();
    for k in keys {
        let (e, m) = (engine.get(k), model.get(k));
        if e != m {
            out.push_str(&format!("  {k}: engine {e:?}, model {m:?}\n"));
        }
    }
    out
}

pub(crate) fn show(events: &[Event]) -> String {
    let items: Vec<String> = events
        .iter()
        .map(|(p, t)| {
            format!(
                "({:?}, {:?})",
                String::from_utf8_lossy(p),
                String::from_utf8_lossy(t)
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn show_all(taken: &[Vec<Event>]) -> String {
    let items: Vec<String> = taken
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.is_empty())
        .map(|(ci, t)| format!("conn {ci}: {}", show(t)))
        .collect();
    items.join("; ")
}
