//! Serializability of transactions: a property test against the reference model.
//!
//! Random interleavings of transactions on two to four connections (two dom0 connections,
//! guests 1 and 2), with operations outside transactions between them, on a handful of paths
//! so that they collide often. A transaction takes effect at its commit, atomically: replaying
//! on the reference model (`model/reference.rs`), in commit order, every committed
//! transaction's operations at its commit and every other operation at its time must give
//! each operation the answer the engine gave it (inside a transaction: on its snapshot), and
//! the engine's tree must be the model's after every step. Transactions whose commit failed
//! (`EAGAIN`) or that were aborted are left out.
//!
//! A transaction that changed nothing may instead take effect at any state the store went
//! through while it was open (it read a consistent snapshot, and the engine commits it
//! whatever changed since): some such state must give every answer it got.
//!
//! This is what conflict detection is for: it may fail a commit that would have been fine,
//! never let one through whose answers a serial run at its commit would not give.
//! `overlapping_transactions_do_commit` keeps the property from being met by failing
//! everything. `PROPTEST_CASES` overrides the number of cases (default 1024).

// Shared with `model.rs`, which uses all of it.
#[allow(dead_code)]
#[path = "model/reference.rs"]
mod reference;
#[path = "model/strategies.rs"]
mod strategies;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use xs_core::store::{Introduction, split_names};
use xs_core::{ConnId, DomId, Perm, Store, StoreConfig, XsError};

use reference::{ANY, MNode, NodeOp, Reply, Tree, Who, apply, join, root_tree};

/// The paths operations name: `/a` and below are shared with the guests, `/b` is not.
const PATHS: [&str; 6] = ["/a", "/a/x", "/a/y", "/a/x/z", "/a/y/z", "/b"];
/// The domain behind each connection.
const DOMAINS: [u16; 4] = [0, 0, 1, 2];

#[derive(Clone, Debug)]
enum Step {
    /// Starts a transaction on connection `c` unless one is open there.
    Start { c: usize },
    /// A node operation by connection `c`, in its open transaction if `in_tx` and there is
    /// one.
    Node {
        c: usize,
        in_tx: bool,
        path: &'static str,
        op: NodeOp,
    },
    /// Commits (or aborts) the open transaction of connection `c`, if any.
    End { c: usize, commit: bool },
}

/// A domain of a permission entry other than the owner's.
fn other_dom() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0u16), Just(1), Just(2), Just(ANY)]
}

fn perms() -> impl Strategy<Value = Vec<Perm>> {
    strategies::perms(prop_oneof![Just(0u16), Just(1), Just(2)], other_dom())
}

fn node_op() -> impl Strategy<Value = NodeOp> {
    let value = prop_oneof![Just(b"".to_vec()), Just(b"1".to_vec()), Just(b"2".to_vec())];
    prop_oneof![
        4 => Just(NodeOp::Read),
        5 => value.prop_map(NodeOp::Write),
        2 => Just(NodeOp::Mkdir),
        3 => Just(NodeOp::Rm),
        3 => Just(NodeOp::Directory),
        2 => Just(NodeOp::GetPerms),
        2 => perms().prop_map(NodeOp::SetPerms),
    ]
}

fn step(conns: usize) -> impl Strategy<Value = Step> {
    let c = 0..conns;
    let node = (
        c.clone(),
        prop::bool::weighted(0.75),
        proptest::sample::select(&PATHS[..]),
        node_op(),
    )
        .prop_map(|(c, in_tx, path, op)| Step::Node { c, in_tx, path, op });
    prop_oneof![
        2 => c.clone().prop_map(|c| Step::Start { c }),
        12 => node,
        2 => (c, prop::bool::weighted(0.9)).prop_map(|(c, commit)| Step::End { c, commit }),
    ]
}

fn case() -> impl Strategy<Value = (Vec<NodeOp>, Vec<Step>)> {
    (2..=4usize).prop_flat_map(|conns| {
        (
            // The initial permissions of `/a`, besides dom0's ownership.
            proptest::collection::vec(strategies::entry(other_dom()), 0..3).prop_map(|rest| {
                let mut p = vec![Perm::owner(DomId(0))];
                p.extend(rest);
                vec![NodeOp::Mkdir, NodeOp::SetPerms(p)]
            }),
            proptest::collection::vec(step(conns), 1..60),
        )
    })
}

/// What a run exercised.
#[derive(Debug, Default)]
struct Stats {
    commits: u64,
    /// Commits of transactions that did something, while the store changed between their
    /// start and their commit.
    concurrent_commits: u64,
    conflicts: u64,
    /// Conflicts of transactions whose every answer a run at their commit would give (not
    /// all avoidable: what it relied on may have changed all the same, e.g. a node removed
    /// and created again).
    answers_held: u64,
    /// Commits of transactions that changed nothing, serializable only before their commit
    /// (at a state they read).
    read_only_commits: u64,
}

/// An open transaction: its id, the store's change count at its start, and what it did with
/// the answers it got.
struct OpenTx {
    id: u32,
    start: u64,
    ops: Vec<(&'static str, NodeOp, Result<Reply, XsError>)>,
}

struct Run {
    store: Store,
    conns: Vec<ConnId>,
    open: Vec<Option<OpenTx>>,
    /// The committed state, as the serial order makes it.
    model: Tree,
    /// Changes to the store so far (commits that changed something, changing operations).
    changes: u64,
    /// The committed state after each change (`states[changes]` is `model`).
    states: Vec<Tree>,
    stats: Stats,
}

fn who(c: usize) -> Who {
    let domid = DOMAINS[c];
    Who {
        domid,
        privileged: domid == 0,
    }
}

fn engine_op(
    store: &mut Store,
    conn: ConnId,
    tx: u32,
    path: &str,
    op: &NodeOp,
) -> Result<Reply, XsError> {
    let p = path.as_bytes();
    match op {
        NodeOp::Read => {
            let mut out = Vec::new();
            store
                .read(conn, tx, p, &mut out)
                .map(|()| Reply::Value(out))
        }
        NodeOp::Write(v) => store.write(conn, tx, p, v).map(|()| Reply::Unit),
        NodeOp::Mkdir => store.mkdir(conn, tx, p).map(|()| Reply::Unit),
        NodeOp::Rm => store.rm(conn, tx, p).map(|()| Reply::Unit),
        NodeOp::Directory | NodeOp::DirectoryPart => {
            let mut out = Vec::new();
            store
                .directory(conn, tx, p, &mut out)
                .map(|()| Reply::Names(split_names(&out)))
        }
        NodeOp::GetPerms => store.get_perms(conn, tx, p).map(Reply::Perms),
        NodeOp::SetPerms(perms) => store.set_perms(conn, tx, p, perms).map(|()| Reply::Unit),
    }
}

/// Runs `op` by connection `c` on the model: its answer, and whether it changed the tree.
fn model_op(model: &mut Tree, c: usize, path: &str, op: &NodeOp) -> (Result<Reply, XsError>, bool) {
    let before = model.clone();
    let result = apply(model, who(c), path, op, &mut |_| false).map(|d| d.reply());
    let changed = *model != before;
    (result, changed)
}

impl Run {
    fn new(conns: usize, history_limit: usize) -> Result<Run, String> {
        let config = StoreConfig {
            domain_nodes: false,
            history_limit,
            ..StoreConfig::new([1, 2])
        };
        let mut store = Store::new(config).map_err(|e| format!("Store::new: {e:?}"))?;
        let dom0 = store.connect(DomId(0)).map_err(|e| format!("{e:?}"))?;
        for g in [1, 2] {
            let intro = Introduction { gfn: 1, evtchn: 1 };
            store
                .introduce(dom0, DomId(g), intro)
                .map_err(|e| format!("introduce {g}: {e:?}"))?;
        }
        let mut ids = vec![dom0];
        for &d in DOMAINS.get(1..conns).unwrap_or_default() {
            ids.push(store.connect(DomId(d)).map_err(|e| format!("{e:?}"))?);
        }
        Ok(Run {
            store,
            open: (0..ids.len()).map(|_| None).collect(),
            conns: ids,
            model: root_tree(),
            changes: 0,
            states: vec![root_tree()],
            stats: Stats::default(),
        })
    }

    /// An operation outside transactions: it takes effect now.
    fn direct(&mut self, c: usize, path: &'static str, op: &NodeOp) -> Result<(), String> {
        let got = engine_op(&mut self.store, self.conns[c], 0, path, op);
        let (want, changed) = model_op(&mut self.model, c, path, op);
        if got != want {
            return Err(format!(
                "connection {c}, {op:?} {path}: engine {got:?}, serial {want:?}"
            ));
        }
        if changed {
            self.changed();
        }
        Ok(())
    }

    /// The model changed: keep the new state.
    fn changed(&mut self) {
        self.changes += 1;
        self.states.push(self.model.clone());
    }

    /// Whether the transaction's operations, run on some state the store went through while
    /// it was open, get the answers it got and change nothing: a transaction that changed
    /// nothing is serializable at any point of its life (the engine commits one that wrote
    /// nothing: it read a consistent snapshot).
    fn read_only_at_some_point(&self, c: usize, tx: &OpenTx) -> bool {
        let from = usize::try_from(tx.start).unwrap_or(usize::MAX);
        self.states
            .get(from..)
            .unwrap_or_default()
            .iter()
            .any(|state| {
                let mut copy = state.clone();
                tx.ops.iter().all(|(path, op, got)| {
                    let (want, changed) = model_op(&mut copy, c, path, op);
                    want == *got && !changed
                })
            })
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        match *step {
            Step::Start { c } => {
                if self.open[c].is_none() {
                    let id = self
                        .store
                        .transaction_start(self.conns[c])
                        .map_err(|e| format!("transaction_start: {e:?}"))?;
                    self.open[c] = Some(OpenTx {
                        id,
                        start: self.changes,
                        ops: Vec::new(),
                    });
                }
            }
            Step::Node {
                c,
                in_tx,
                path,
                ref op,
            } => match self.open[c].as_mut().filter(|_| in_tx) {
                Some(tx) => {
                    let got = engine_op(&mut self.store, self.conns[c], tx.id, path, op);
                    tx.ops.push((path, op.clone(), got));
                }
                None => self.direct(c, path, op)?,
            },
            Step::End { c, commit } => self.end(c, commit)?,
        }
        self.compare_trees()
    }

    /// Ends the open transaction of connection `c`, if any. A committed one is replayed on
    /// the model at once: its commit is its place in the serial order.
    fn end(&mut self, c: usize, commit: bool) -> Result<(), String> {
        let Some(tx) = self.open[c].take() else {
            return Ok(());
        };
        let result = self.store.transaction_end(self.conns[c], tx.id, commit);
        match result {
            Ok(()) if commit => {}
            Ok(()) => return Ok(()),
            Err(XsError::Again) if commit => {
                self.stats.conflicts += 1;
                let mut copy = self.model.clone();
                if tx
                    .ops
                    .iter()
                    .all(|(path, op, got)| model_op(&mut copy, c, path, op).0 == *got)
                {
                    self.stats.answers_held += 1;
                }
                return Ok(());
            }
            Err(e) => return Err(format!("transaction_end: {e:?}")),
        }
        self.stats.commits += 1;
        if self.changes != tx.start && !tx.ops.is_empty() {
            self.stats.concurrent_commits += 1;
        }
        let mut at_commit = self.model.clone();
        let mut changed = false;
        let mut mismatch = None;
        for (i, (path, op, got)) in tx.ops.iter().enumerate() {
            let (want, ch) = model_op(&mut at_commit, c, path, op);
            if *got != want && mismatch.is_none() {
                mismatch = Some((i, want));
            }
            changed |= ch;
        }
        // The engine applied its changes at the commit, or (one that changed nothing) took
        // effect earlier: which one, its tree says.
        let engine = self.engine_tree()?;
        if mismatch.is_none() && engine == at_commit {
            self.model = at_commit;
            if changed {
                self.changed();
            }
            return Ok(());
        }
        if engine == self.model && self.read_only_at_some_point(c, &tx) {
            self.stats.read_only_commits += 1;
            return Ok(());
        }
        match mismatch {
            Some((i, want)) => {
                let (path, op, got) = &tx.ops[i];
                Err(format!(
                    "connection {c} committed a transaction whose operation {i} ({op:?} \
                     {path}) got {got:?}; run at its commit it gets {want:?}, and no state \
                     while it was open gives all its answers without a change (the \
                     transaction: {:?})",
                    tx.ops
                ))
            }
            None => Err(format!(
                "trees differ after a commit: engine {engine:?}, serial order {at_commit:?}"
            )),
        }
    }

    /// The engine's tree, as dom0 sees it outside transactions (after `Store::check`).
    fn engine_tree(&mut self) -> Result<Tree, String> {
        self.store
            .check()
            .map_err(|e| format!("Store::check: {e}"))?;
        let conn = self.conns[0];
        let mut tree = Tree::new();
        let mut stack = vec!["/".to_string()];
        while let Some(p) = stack.pop() {
            let path = p.as_bytes();
            let err = |e: XsError| format!("reading the tree at {p}: {e:?}");
            let mut value = Vec::new();
            self.store.read(conn, 0, path, &mut value).map_err(err)?;
            let perms = self.store.get_perms(conn, 0, path).map_err(err)?;
            let mut list = Vec::new();
            self.store
                .directory(conn, 0, path, &mut list)
                .map_err(err)?;
            for name in split_names(&list) {
                stack.push(join(&p, &String::from_utf8_lossy(&name)));
            }
            tree.insert(p, MNode { value, perms });
        }
        Ok(tree)
    }

    /// The engine's tree, as dom0 sees it outside transactions, must be the model's.
    fn compare_trees(&mut self) -> Result<(), String> {
        let tree = self.engine_tree()?;
        if tree != self.model {
            return Err(format!(
                "trees differ: engine {tree:?}, serial order {:?}",
                self.model
            ));
        }
        Ok(())
    }
}

/// Runs a case: the setup of `/a`, the steps, then the commit of every transaction still
/// open. Past `history_limit` bytes of old versions the store rebases the open
/// transactions (a limit of 0 does so before every change that follows one it kept a
/// version for): that must keep them serializable too.
fn run(setup: &[NodeOp], steps: &[Step], history_limit: usize) -> Result<Stats, String> {
    let conns = steps
        .iter()
        .map(|s| match *s {
            Step::Start { c } | Step::Node { c, .. } | Step::End { c, .. } => c + 1,
        })
        .max()
        .unwrap_or(1)
        .max(2);
    let mut r = Run::new(conns, history_limit)?;
    for op in setup {
        r.direct(0, "/a", op).map_err(|e| format!("setup: {e}"))?;
    }
    for (i, s) in steps.iter().enumerate() {
        r.step(s).map_err(|e| format!("step {i} ({s:?}): {e}"))?;
    }
    for c in 0..r.conns.len() {
        r.end(c, true).map_err(|e| format!("final commit: {e}"))?;
        r.compare_trees()?;
    }
    Ok(r.stats)
}

proptest! {
    #![proptest_config(strategies::config(1024))]

    #[test]
    fn committed_transactions_are_serializable(
        (setup, steps) in case(),
        history_limit in prop_oneof![Just(16 << 20), Just(0), Just(300)],
    ) {
        run(&setup, &steps, history_limit).map_err(TestCaseError::fail)?;
    }
}

/// The property holds trivially if every transaction that overlaps a change fails to commit:
/// over a fixed set of cases, many must commit all the same (most do not rely on what
/// changed), and some must conflict.
#[test]
fn overlapping_transactions_do_commit() {
    // With the history limit at 0 every transaction open across a kept version is rebased:
    // those that relied on nothing that changed still commit.
    for history_limit in [16 << 20, 0] {
        let mut runner = TestRunner::deterministic();
        let strategy = case();
        let mut total = Stats::default();
        for _ in 0..300 {
            let (setup, steps) = strategy.new_tree(&mut runner).unwrap().current();
            let stats = run(&setup, &steps, history_limit).unwrap();
            total.commits += stats.commits;
            total.concurrent_commits += stats.concurrent_commits;
            total.conflicts += stats.conflicts;
            total.answers_held += stats.answers_held;
            total.read_only_commits += stats.read_only_commits;
        }
        if std::env::var_os("XS_MODEL_STATS").is_some() {
            println!("history limit {history_limit}: {total:?}");
        }
        assert!(total.conflicts > 0, "{total:?}");
        assert!(total.concurrent_commits * 4 > total.conflicts, "{total:?}");
        assert!(total.read_only_commits > 0, "{total:?}");
    }
}
