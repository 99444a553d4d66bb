//! Model-based property test of the store engine.
//!
//! Random sequences of operations by several connections (two dom0 connections, guests 1, 2
//! and sometimes 3) run against the engine and against a small reference model
//! (`model/reference.rs`), written independently from `docs/misc/xenstore.txt`, C xenstored
//! and the engine's documented contract. After every operation the answers, the whole tree,
//! usage counters and watch events are compared (`model/harness.rs`). Transactions are
//! modelled as full snapshots; commit results are checked against "must fail" / "must
//! succeed" rules, and a successful commit must equal replaying the transaction's changes at
//! commit time.
//!
//! `PROPTEST_CASES` overrides the number of cases (default 512). `XS_MODEL_STATS=1` (with
//! `--nocapture --test-threads 1`) prints what the runs exercised.

#[path = "model/harness.rs"]
mod harness;
#[path = "model/reference.rs"]
mod reference;
#[path = "model/strategies.rs"]
mod strategies;

use proptest::prelude::*;
use xs_core::Perm;

use harness::{Cfg, Op};
use reference::{ANY, NodeOp, QKind};

fn seg() -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => Just("a"), 3 => Just("b"), 1 => Just("c")]
}

fn abs_path() -> impl Strategy<Value = String> {
    let root = prop_oneof![
        4 => Just("/a"),
        2 => Just("/b"),
        3 => Just("/local/domain/1"),
        2 => Just("/local/domain/2"),
        1 => Just("/local/domain/3"),
        1 => Just("/local/domain"),
        1 => Just("/tool"),
    ];
    let segs = prop_oneof![
        3 => proptest::collection::vec(seg(), 0..=0),
        3 => proptest::collection::vec(seg(), 1..=1),
        2 => proptest::collection::vec(seg(), 2..=2),
    ];
    (root, segs).prop_map(|(r, segs)| {
        let mut s = r.to_string();
        for x in segs {
            s.push('/');
            s.push_str(x);
        }
        s
    })
}

fn rel_path() -> impl Strategy<Value = String> {
    (
        prop_oneof![3 => Just(""), 1 => Just("data/")],
        proptest::collection::vec(seg(), 1..3),
    )
        .prop_map(|(pre, segs)| format!("{pre}{}", segs.join("/")))
}

fn bad_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(""),
        Just("/a/"),
        Just("/a//b"),
        Just("/a b"),
        Just("/a@b"),
        Just("a/"),
    ]
    .prop_map(str::to_string)
}

fn special_path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("@releaseDomain"),
        2 => Just("@introduceDomain"),
        1 => Just("@releaseDomain/1"),
        1 => Just("@releaseDomain/2"),
        1 => Just("@foo"),
    ]
    .prop_map(str::to_string)
}

fn node_path() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => abs_path(),
        5 => rel_path(),
        1 => Just("/".to_string()),
        1 => special_path(),
        1 => bad_path(),
    ]
}

fn watch_path() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => abs_path(),
        4 => rel_path(),
        2 => Just("/".to_string()),
        4 => special_path(),
        1 => bad_path(),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"".to_vec()),
        Just(b"1".to_vec()),
        Just(b"v".to_vec()),
        Just(b"a\0b".to_vec()),
    ]
}

fn perms() -> impl Strategy<Value = Vec<Perm>> {
    strategies::perms(
        prop_oneof![30 => 0u16..4, 1 => Just(ANY)],
        prop_oneof![8 => 0u16..4, 1 => Just(ANY)],
    )
}

fn node_op() -> impl Strategy<Value = NodeOp> {
    prop_oneof![
        4 => Just(NodeOp::Read),
        5 => value().prop_map(NodeOp::Write),
        2 => Just(NodeOp::Mkdir),
        3 => Just(NodeOp::Rm),
        3 => Just(NodeOp::Directory),
        1 => Just(NodeOp::DirectoryPart),
        2 => Just(NodeOp::GetPerms),
        3 => perms().prop_map(NodeOp::SetPerms),
    ]
}

fn tx_sel() -> impl Strategy<Value = u8> {
    prop_oneof![10 => Just(0u8), 10 => 1u8..50, 1 => Just(u8::MAX)]
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0u8..5;
    prop_oneof![
        // Any owner, the root's included: dom0 may give the root to a guest, which the
        // guest's release hands back to dom0.
        60 => (conn.clone(), tx_sel(), node_path(), node_op())
            .prop_map(|(c, tx, path, op)| Op::Node { c, tx, path, op }),
        8 => conn.clone().prop_map(|c| Op::TxStart { c }),
        6 => (conn.clone(), prop_oneof![20 => 1u8..50, 1 => Just(u8::MAX)], prop::bool::weighted(0.8))
            .prop_map(|(c, tx, commit)| Op::TxEnd { c, tx, commit }),
        8 => (conn.clone(), watch_path(), 0u8..2, prop_oneof![6 => Just(None), 1 => (0u32..3).prop_map(Some)])
            .prop_map(|(c, path, token, depth)| Op::Watch { c, path, token, depth }),
        2 => (conn.clone(), watch_path(), 0u8..2).prop_map(|(c, path, token)| Op::Unwatch { c, path, token }),
        2 => (prop_oneof![6 => Just(0u8), 1 => conn.clone()], 0u8..3)
            .prop_map(|(c, dom)| Op::Introduce { c, dom }),
        1 => (prop_oneof![6 => Just(0u8), 1 => conn.clone()], 0u8..3)
            .prop_map(|(c, dom)| Op::Release { c, dom }),
        2 => (
            0u8..3,
            prop_oneof![Just(QKind::Nodes), Just(QKind::Watches), Just(QKind::Transactions), Just(QKind::Perms)],
            prop_oneof![Just(0u32), 1u32..4, Just(5u32)],
        )
            .prop_map(|(dom, kind, value)| Op::SetQuota { dom, kind, value }),
        4 => conn.prop_map(|c| Op::Drain { c }),
    ]
}

fn cfg() -> impl Strategy<Value = Cfg> {
    (
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.25),
    )
        .prop_map(
            |(domain_nodes, small_queue, guest3, prelude, tight_quotas)| Cfg {
                domain_nodes,
                small_queue,
                guest3,
                prelude,
                tight_quotas,
            },
        )
}

proptest! {
    #![proptest_config(strategies::config(512))]

    #[test]
    fn engine_matches_model(cfg in cfg(), ops in proptest::collection::vec(op(), 1..60)) {
        harness::run(&cfg, &ops).map_err(TestCaseError::fail)?;
    }
}

/// Prints what the random runs exercised (with `XS_MODEL_STATS=1 ... -- --nocapture
/// --test-threads 1`, after `engine_matches_model`).
#[test]
fn zz_print_stats() {
    harness::stats::print();
}

// ----- regression tests: focused cases for discrepancies the model found ---------------------
//
// The first six were engine bugs found by `engine_matches_model` (all fixed in 58f7d41).

mod regressions {
    use xs_core::store::Introduction;
    use xs_core::{ConnId, DomId, Perm, QuotaKind, Store, StoreConfig, XsError};

    fn store(domain_nodes: bool) -> (Store, ConnId) {
        let mut s = Store::new(StoreConfig {
            domain_nodes,
            ..StoreConfig::new([1, 2])
        })
        .unwrap();
        let dom0 = s.connect(DomId(0)).unwrap();
        (s, dom0)
    }

    fn guest(s: &mut Store, dom0: ConnId, domid: u16) -> ConnId {
        let intro = Introduction { gfn: 1, evtchn: 1 };
        s.introduce(dom0, DomId(domid), intro).unwrap();
        s.connect(DomId(domid)).unwrap()
    }

    fn events(s: &mut Store, conn: ConnId) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Some(e) = s.pop_event(conn) {
            out.push((
                String::from_utf8_lossy(&e.path).into_owned(),
                String::from_utf8_lossy(&e.token).into_owned(),
            ));
        }
        out
    }

    fn ev(path: &str, token: &str) -> (String, String) {
        (path.to_string(), token.to_string())
    }

    /// Releasing a domain removes the nodes it owns with their subtrees. C xenstored walks the
    /// tree top-down and removes the topmost owned nodes (`domain_tree_remove`): nodes below
    /// them fire only watches on exactly them (like any `RM`). The engine used to remove them
    /// in owner-list order (newest first), so `/local/domain/2/a` went first, as a subtree
    /// root, and the watch on `/` got an extra event for it.
    #[test]
    fn release_fires_like_c() {
        let (mut s, dom0) = store(false);
        let g = guest(&mut s, dom0, 2);
        s.mkdir(dom0, 0, b"/local/domain/2").unwrap();
        s.set_perms(dom0, 0, b"/local/domain/2", &[Perm::owner(DomId(2))])
            .unwrap();
        s.write(g, 0, b"a", b"").unwrap();
        s.watch(dom0, b"/", b"t", None).unwrap();
        assert_eq!(events(&mut s, dom0), [ev("/", "t")]);
        s.release(dom0, DomId(2)).unwrap();
        assert_eq!(events(&mut s, dom0), [ev("/local/domain/2", "t")]);
    }

    /// A domain over its node quota (here dom0 lowered it below the 13 default nodes the
    /// guest owns) may go on as long as it does not create more (`docs/misc/xenstore.txt`,
    /// `quota set`: "Xenstored may continue to handle requests from the domain as long as the
    /// resource violating the new quota setting isn't increased further"). Outside
    /// transactions the engine did so, but committing a transaction that creates nothing
    /// failed with `ENOSPC`.
    #[test]
    fn commit_without_new_nodes_ignores_node_quota() {
        let (mut s, dom0) = store(true);
        let g = guest(&mut s, dom0, 1);
        s.set_quota(dom0, Some(DomId(1)), QuotaKind::Nodes, 1)
            .unwrap();
        // Outside a transaction, changing an existing node is fine.
        s.write(g, 0, b"data", b"x").unwrap();
        let tx = s.transaction_start(g).unwrap();
        s.write(g, tx, b"data", b"y").unwrap();
        assert_eq!(s.transaction_end(g, tx, true), Ok(()));
        let tx = s.transaction_start(g).unwrap();
        assert_eq!(s.transaction_end(g, tx, true), Ok(()));
    }

    fn p(s: &str) -> Perm {
        Perm::parse(s.as_bytes()).unwrap()
    }

    fn read(s: &mut Store, conn: ConnId, path: &str) -> Result<String, XsError> {
        let mut out = Vec::new();
        s.read(conn, 0, path.as_bytes(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// A transaction that read a path as missing must not commit once it exists. Here the
    /// absence was observed below a node the transaction created itself (`/x`), which the
    /// engine merges with the `/x` another transaction created meanwhile; it used to do so
    /// without checking what the first transaction learnt below it, with a result no serial
    /// order gives: `/x/a` had T's value (T after U), while T read `/x/b` as missing (T
    /// before U).
    #[test]
    fn absence_below_created_node_conflicts() {
        let (mut s, a) = store(false);
        let b = s.connect(DomId(0)).unwrap();
        let t = s.transaction_start(a).unwrap();
        s.write(a, t, b"/x/a", b"T").unwrap();
        let mut out = Vec::new();
        assert_eq!(s.read(a, t, b"/x/b", &mut out), Err(XsError::NoEnt));
        let u = s.transaction_start(b).unwrap();
        s.write(b, u, b"/x/a", b"U").unwrap();
        s.write(b, u, b"/x/b", b"U").unwrap();
        assert_eq!(s.transaction_end(b, u, true), Ok(()));
        assert_eq!(s.transaction_end(a, t, true), Err(XsError::Again));
        assert_eq!(read(&mut s, a, "/x/a").as_deref(), Ok("U"));
    }

    /// Same family: T creates `/p` and removes it again (no net change to `/p`), and creates
    /// `/q`; U creates both. The engine used to keep U's `/p` (as if T ran first) and T's
    /// `/q` (as if T ran last): no serial order gives that. Run serially at commit time, T
    /// removes `/p`; otherwise the commit must fail.
    #[test]
    fn created_then_removed_is_serializable() {
        let (mut s, a) = store(false);
        let b = s.connect(DomId(0)).unwrap();
        let t = s.transaction_start(a).unwrap();
        s.write(a, t, b"/p", b"T").unwrap();
        s.rm(a, t, b"/p").unwrap();
        s.write(a, t, b"/q", b"T").unwrap();
        let u = s.transaction_start(b).unwrap();
        s.write(b, u, b"/p", b"U").unwrap();
        s.write(b, u, b"/q", b"U").unwrap();
        assert_eq!(s.transaction_end(b, u, true), Ok(()));
        match s.transaction_end(a, t, true) {
            Err(XsError::Again) => {}
            Ok(()) => {
                assert_eq!(read(&mut s, a, "/p"), Err(XsError::NoEnt));
                assert_eq!(read(&mut s, a, "/q").as_deref(), Ok("T"));
            }
            Err(e) => panic!("commit failed with {e:?}"),
        }
    }

    /// Only the control domain may change a node's owner (`docs/misc/xenstore.txt`). Guest 1
    /// creates `/a/x` in a transaction and sets its permissions (it owns it there); meanwhile
    /// guest 2 (or dom0) creates `/a/x` outside. At commit the engine used to overwrite the
    /// live node's permissions with the transaction's, so guest 1 became the owner of guest
    /// 2's (and dom0's) node and locked them out (a security bug). Run at commit time, guest
    /// 1's `SET_PERMS` on a node it does not own fails; so the commit must fail or leave the
    /// owner alone.
    #[test]
    fn transaction_cannot_take_over_concurrently_created_node() {
        let (mut s, dom0) = store(false);
        let g1 = guest(&mut s, dom0, 1);
        let g2 = guest(&mut s, dom0, 2);
        s.mkdir(dom0, 0, b"/a").unwrap();
        s.set_perms(dom0, 0, b"/a", &[p("n0"), p("b1"), p("b2")])
            .unwrap();
        for (victim, path) in [(g2, "/a/x"), (dom0, "/a/y")] {
            let t = s.transaction_start(g1).unwrap();
            s.write(g1, t, path.as_bytes(), b"T").unwrap();
            s.set_perms(g1, t, path.as_bytes(), &[p("n1")]).unwrap();
            s.write(victim, 0, path.as_bytes(), b"victim's").unwrap();
            let owner = s.get_perms(dom0, 0, path.as_bytes()).unwrap()[0];
            let result = s.transaction_end(g1, t, true);
            assert!(matches!(result, Ok(()) | Err(XsError::Again)), "{result:?}");
            assert_eq!(
                s.get_perms(dom0, 0, path.as_bytes()).unwrap()[0],
                owner,
                "{path}: the owner changed"
            );
        }
    }

    /// In a transaction that changed `/` (its value or permissions), `DIRECTORY /` used to
    /// list an extra empty name (the root's own change, taken for a child).
    #[test]
    fn directory_of_changed_root_in_transaction() {
        let (mut s, dom0) = store(false);
        let t = s.transaction_start(dom0).unwrap();
        s.set_perms(dom0, t, b"/", &[p("n0")]).unwrap();
        let mut out = Vec::new();
        s.directory(dom0, t, b"/", &mut out).unwrap();
        assert_eq!(out, b"tool\0");
        s.write(dom0, t, b"/", b"v").unwrap();
        out.clear();
        s.directory(dom0, t, b"/", &mut out).unwrap();
        assert_eq!(out, b"tool\0");
    }

    // ----- verified behaviour worth pinning down ---------------------------------------------

    /// A released domain's nodes go, and a new domain with the same id inherits nothing:
    /// permission entries naming the old one grant nothing and are not shown, and its usage
    /// starts from zero.
    #[test]
    fn domid_reuse_inherits_nothing() {
        let (mut s, dom0) = store(false);
        let g = guest(&mut s, dom0, 1);
        s.mkdir(dom0, 0, b"/a").unwrap();
        s.set_perms(dom0, 0, b"/a", &[p("n0"), p("b1")]).unwrap();
        s.write(g, 0, b"/a/mine", b"1").unwrap();
        s.release(dom0, DomId(1)).unwrap();
        assert_eq!(read(&mut s, dom0, "/a/mine"), Err(XsError::NoEnt));
        assert_eq!(s.get_perms(dom0, 0, b"/a").unwrap(), [p("n0")]);
        let g = guest(&mut s, dom0, 1);
        assert_eq!(s.usage(DomId(1)).map(|u| u.nodes), Some(0));
        assert_eq!(s.write(g, 0, b"/a/x", b"1"), Err(XsError::Acces));
        assert_eq!(read(&mut s, g, "/a"), Err(XsError::Acces));
        // Entries written after the new domain was introduced do count.
        s.set_perms(dom0, 0, b"/a", &[p("n0"), p("r1")]).unwrap();
        assert_eq!(read(&mut s, g, "/a").as_deref(), Ok(""));
    }

    /// The queue bound policy of `watch.rs`: at most `event_queue_len` events are queued; a
    /// watch that lost events gets one event for its own path once there is room. (Distinct
    /// paths: an event identical to a queued one would be dropped, not lost.)
    #[test]
    fn event_queue_bound_and_catch_up() {
        let mut s = Store::new(StoreConfig {
            domain_nodes: false,
            event_queue_len: 2,
            ..StoreConfig::new([1, 2])
        })
        .unwrap();
        let dom0 = s.connect(DomId(0)).unwrap();
        s.watch(dom0, b"/a", b"t", None).unwrap();
        for child in ["b", "c", "d", "e"] {
            s.write(dom0, 0, format!("/a/{child}").as_bytes(), b"1")
                .unwrap();
            assert!(s.queued_events(dom0) <= 2);
        }
        assert_eq!(
            events(&mut s, dom0),
            [ev("/a", "t"), ev("/a/b", "t"), ev("/a", "t")]
        );
    }

    /// C xenstored's rule (`watch.rs`): writes to a watched node while its event is still
    /// queued add nothing; once it is taken, the next write is reported again.
    #[test]
    fn identical_pending_events_are_dropped() {
        let (mut s, dom0) = store(false);
        s.watch(dom0, b"/a", b"t", None).unwrap();
        for v in [b"1", b"2", b"3", b"4"] {
            s.write(dom0, 0, b"/a/b", v).unwrap();
        }
        assert_eq!(events(&mut s, dom0), [ev("/a", "t"), ev("/a/b", "t")]);
        s.write(dom0, 0, b"/a/b", b"5").unwrap();
        assert_eq!(events(&mut s, dom0), [ev("/a/b", "t")]);
    }
}
