//! Transactions: snapshots, conflicts at commit, merges and their quotas.

use super::*;

// ----- transactions --------------------------------------------------------------------

#[test]
fn transactions_see_a_snapshot_and_their_own_writes() {
    let mut h = Host::new();
    h.d0().write("/t/a", b"1").unwrap();
    let other = h.store.connect(DomId::DOM0).unwrap();
    let tx = h.d0().transaction_start().unwrap();
    h.s(other).write("/t/a", b"2").unwrap();
    h.s(other).write("/t/new", b"n").unwrap();
    h.s(other).rm("/t/a").unwrap();
    // The snapshot still has /t/a = 1 and no /t/new.
    assert_eq!(h.d0().in_tx(tx).read("/t/a").unwrap(), b"1");
    assert_eq!(h.d0().in_tx(tx).read("/t/new"), Err(XsError::NoEnt));
    assert_eq!(names(h.d0().in_tx(tx).directory("/t").unwrap()), ["a"]);
    // Its own writes are visible to it, not to others.
    h.d0().in_tx(tx).write("/t/mine", b"m").unwrap();
    assert_eq!(h.d0().in_tx(tx).read("/t/mine").unwrap(), b"m");
    assert_eq!(
        names(h.d0().in_tx(tx).directory("/t").unwrap()),
        ["a", "mine"]
    );
    assert_eq!(h.s(other).read("/t/mine"), Err(XsError::NoEnt));
    // It read /t/a, which changed: the commit fails and changes nothing.
    assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));
    assert_eq!(h.d0().read("/t/mine"), Err(XsError::NoEnt));
    assert_eq!(
        h.store.history_bytes(),
        0,
        "no open transaction, no history"
    );
    h.checked();
}

#[test]
fn abort_discards_and_commit_publishes() {
    let mut h = Host::new();
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).write("/x/y", b"1").unwrap();
    h.d0().transaction_end(tx, false).unwrap();
    assert_eq!(h.d0().read("/x"), Err(XsError::NoEnt));
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).write("/x/y", b"1").unwrap();
    h.d0().in_tx(tx).rm("/tool").unwrap();
    h.d0().transaction_end(tx, true).unwrap();
    assert_eq!(h.d0().read("/x/y").unwrap(), b"1");
    assert_eq!(h.d0().read("/tool"), Err(XsError::NoEnt));
    assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::NoEnt));
    h.checked();
}

#[test]
fn only_changes_to_what_was_read_conflict() {
    let mut h = Host::new();
    h.d0().write("/c/read", b"1").unwrap();
    h.d0().write("/c/other", b"1").unwrap();
    let other = h.store.connect(DomId::DOM0).unwrap();
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).read("/c/read").unwrap();
    h.d0().in_tx(tx).write("/c/written", b"w").unwrap();
    h.s(other).write("/c/other", b"2").unwrap();
    h.s(other).write("/c/sibling", b"2").unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Ok(()));
    // A read node changed: conflict (for a transaction that writes: one that only read
    // commits, see `a_transaction_that_changes_nothing_commits`).
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).write("/c/written", b"w").unwrap();
    h.d0().in_tx(tx).read("/c/read").unwrap();
    h.s(other).write("/c/read", b"2").unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));
    // A path found missing appeared: conflict.
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).write("/c/written", b"w").unwrap();
    assert_eq!(h.d0().in_tx(tx).read("/c/ghost"), Err(XsError::NoEnt));
    h.s(other).write("/c/ghost", b"boo").unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));
    // A listed directory changed: conflict.
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).write("/c/written", b"w").unwrap();
    h.d0().in_tx(tx).directory("/c").unwrap();
    h.s(other).rm("/c/sibling").unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));
}

/// A transaction that overwrites a node relied on its permissions; the overlay entry carries
/// that read, and when the transaction then removes the node (or its parent) the read must
/// stay: a concurrent change of the node's permissions still makes the commit fail.
#[test]
fn a_write_then_rm_in_a_transaction_still_conflicts_with_a_permission_change() {
    for removed in ["data/x", "data"] {
        let mut h = Host::new();
        let g = h.guest(5);
        h.s(g).write("data/x", b"1").unwrap();
        let tx = h.s(g).transaction_start().unwrap();
        h.s(g).in_tx(tx).write("data/x", b"2").unwrap();
        h.s(g).in_tx(tx).rm(removed).unwrap();
        h.d0()
            .set_perms("/local/domain/5/data/x", &perms(&["n0"]))
            .unwrap();
        assert_eq!(
            h.s(g).transaction_end(tx, true),
            Err(XsError::Again),
            "rm {removed}"
        );
        assert!(h.d0().read("/local/domain/5/data/x").is_ok());
        h.checked();
    }
}

/// Two toolstack transactions creating device directories for two domains under the same
/// backend parent both commit, whether or not the parent existed before.
#[test]
fn boot_storm_transactions_under_a_shared_parent_both_commit() {
    for parent_exists in [true, false] {
        let mut h = Host::new();
        let other = h.store.connect(DomId::DOM0).unwrap();
        if parent_exists {
            h.d0().mkdir("/local/domain/0/backend/vif").unwrap();
        }
        let create = |h: &mut Host, conn: ConnId, tx: TxId, domid: u16| {
            let mut s = h.store.session(conn);
            let mut s = s.in_tx(tx);
            let be = alloc::format!("/local/domain/0/backend/vif/{domid}/0");
            let fe = alloc::format!("/local/domain/{domid}/device/vif/0");
            // As libxl: remove whatever was there (ENOENT when the parent is missing too).
            let _ = s.rm(&be);
            s.mkdir(&be).unwrap();
            s.set_perms(&be, &perms(&["n0", &alloc::format!("r{domid}")]))
                .unwrap();
            for (k, v) in [("frontend", fe.as_str()), ("state", "1"), ("online", "1")] {
                s.write(&alloc::format!("{be}/{k}"), v.as_bytes()).unwrap();
            }
            let _ = s.rm(&fe);
            s.mkdir(&fe).unwrap();
            s.set_perms(&fe, &perms(&[&alloc::format!("n{domid}"), "r0"]))
                .unwrap();
            s.write(&alloc::format!("{fe}/backend"), be.as_bytes())
                .unwrap();
            s.write(&alloc::format!("{fe}/state"), b"1").unwrap();
            let lib = alloc::format!("/libxl/{domid}/device/vif/0");
            s.write(&alloc::format!("{lib}/frontend"), fe.as_bytes())
                .unwrap();
            s.write(&alloc::format!("{lib}/backend"), be.as_bytes())
                .unwrap();
        };
        let t1 = h.d0().transaction_start().unwrap();
        let t2 = h.s(other).transaction_start().unwrap();
        let d0 = h.dom0;
        create(&mut h, d0, t1, 1);
        create(&mut h, other, t2, 2);
        assert_eq!(
            h.d0().transaction_end(t1, true),
            Ok(()),
            "parent_exists={parent_exists}"
        );
        assert_eq!(
            h.s(other).transaction_end(t2, true),
            Ok(()),
            "parent_exists={parent_exists}"
        );
        assert_eq!(
            names(h.d0().directory("/local/domain/0/backend/vif").unwrap()),
            ["1", "2"]
        );
        assert_eq!(
            h.d0().read("/local/domain/2/device/vif/0/state").unwrap(),
            b"1"
        );
        assert_eq!(
            h.d0().get_perms("/local/domain/1/device/vif/0").unwrap(),
            perms(&["n1", "r0"])
        );
        h.checked();
    }
}

#[test]
fn concurrently_created_parents_with_different_permissions_conflict() {
    let mut h = Host::new();
    let other = h.store.connect(DomId::DOM0).unwrap();
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).write("/n/child", b"1").unwrap();
    h.s(other).write("/n", b"").unwrap();
    h.s(other).set_perms("/n", &perms(&["n0", "r5"])).unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));
}

/// A node the transaction created, created below and then set permissions on, does not
/// merge with the same node created meanwhile: the child inherited the permissions the node
/// was created with, which the other creation did not have (the commit would otherwise leave
/// the child with permissions no serial order gives it).
#[test]
fn a_created_node_whose_permissions_the_transaction_set_does_not_merge() {
    let mut h = Host::new();
    let other = h.store.connect(DomId::DOM0).unwrap();
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).write("/n/child", b"1").unwrap();
    h.d0()
        .in_tx(tx)
        .set_perms("/n", &perms(&["n0", "r5"]))
        .unwrap();
    h.s(other).mkdir("/n").unwrap();
    h.s(other).set_perms("/n", &perms(&["n0", "r7"])).unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));
    assert_eq!(h.d0().read("/n/child"), Err(XsError::NoEnt));
    assert_eq!(h.d0().get_perms("/n").unwrap(), perms(&["n0", "r7"]));
    h.checked();
}

#[test]
fn rm_then_recreate_in_a_transaction_replaces_the_subtree() {
    let mut h = Host::new();
    h.d0().write("/r/old/deep", b"1").unwrap();
    h.d0().write("/r/keep", b"k").unwrap();
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).rm("/r").unwrap();
    assert_eq!(h.d0().in_tx(tx).read("/r/keep"), Err(XsError::NoEnt));
    h.d0().in_tx(tx).write("/r/new", b"n").unwrap();
    assert_eq!(names(h.d0().in_tx(tx).directory("/r").unwrap()), ["new"]);
    assert_eq!(h.d0().in_tx(tx).read("/r/old/deep"), Err(XsError::NoEnt));
    h.d0().transaction_end(tx, true).unwrap();
    assert_eq!(names(h.d0().directory("/r").unwrap()), ["new"]);
    h.checked();
}

#[test]
fn transaction_quotas() {
    let mut h = Host::new();
    let g = h.guest(4);
    h.store
        .set_quota(h.dom0, Some(DomId(4)), QuotaKind::Transactions, 2)
        .unwrap();
    let t1 = h.s(g).transaction_start().unwrap();
    let _t2 = h.s(g).transaction_start().unwrap();
    assert_eq!(h.s(g).transaction_start(), Err(XsError::NoSpc));
    h.s(g).transaction_end(t1, false).unwrap();
    let t3 = h.s(g).transaction_start().unwrap();
    h.store
        .set_quota(h.dom0, Some(DomId(4)), QuotaKind::TransactionNodes, 3)
        .unwrap();
    h.s(g).in_tx(t3).write("data/a", b"").unwrap();
    h.s(g).in_tx(t3).write("data/b", b"").unwrap();
    // data was checked (1 read) + a + b: a fourth access is over the limit.
    assert_eq!(h.s(g).in_tx(t3).write("data/c", b""), Err(XsError::NoSpc));
    assert_eq!(h.s(g).transaction_end(t3, true), Ok(()));
    assert_eq!(h.s(g).read("data/b").unwrap(), b"");
}

#[test]
fn a_transaction_held_open_cannot_pin_unbounded_history() {
    let mut h = Host::with(StoreConfig {
        history_limit: 4096,
        ..StoreConfig::new([1, 2])
    });
    for i in 0..1000u32 {
        h.d0().write(&alloc::format!("/h/{i}"), b"old").unwrap();
    }
    h.d0().write("/mine", b"m").unwrap();
    let g = h.store.connect(DomId::DOM0).unwrap();
    let relies = h.s(g).transaction_start().unwrap();
    assert_eq!(h.s(g).in_tx(relies).read("/h/0").unwrap(), b"old");
    let unrelated = h.s(g).transaction_start().unwrap();
    assert_eq!(h.s(g).in_tx(unrelated).read("/mine").unwrap(), b"m");
    // Each overwrite of a node the transactions can see keeps its old version...
    for i in 0..1000u32 {
        h.d0().write(&alloc::format!("/h/{i}"), b"new").unwrap();
        // ...but only up to the limit (one change's versions past it, until the next).
        assert!(h.store.history_bytes() <= 4096 + 128);
    }
    // Past it the transactions were rebased: the one whose read changed fails, as it would
    // have anyway; the other sees the store as it is now and commits.
    assert_eq!(h.s(g).in_tx(unrelated).read("/h/0").unwrap(), b"new");
    h.s(g).in_tx(unrelated).write("/mine2", b"x").unwrap();
    assert_eq!(h.s(g).transaction_end(relies, true), Err(XsError::Again));
    assert_eq!(h.s(g).transaction_end(unrelated, true), Ok(()));
    assert_eq!(h.d0().read("/mine2").unwrap(), b"x");
    h.checked();
}

/// Issue 17, item 1 (the XSA-206 class): a guest rewriting its own nodes over and over while
/// dom0 holds a transaction open cannot make that transaction fail. The versions its churn
/// leaves are accounted to it and bounded by its memory quota; past that the open
/// transactions are rebased, which fails only those that relied on what changed.
#[test]
fn a_guest_churning_its_own_nodes_cannot_fail_others_transactions() {
    let mut h = Host::new();
    let g = h.guest(5);
    let quota = 64 << 10;
    let dom0 = h.dom0;
    h.store
        .set_quota(dom0, Some(DomId(5)), QuotaKind::Memory, quota)
        .unwrap();
    let big = [b'x'; 2048];
    for i in 0..20u32 {
        h.s(g).write(&alloc::format!("data/{i}"), &big).unwrap();
    }
    h.d0().write("/dom0/y", b"0").unwrap();
    let tx = h.d0().transaction_start().unwrap();
    assert_eq!(h.d0().in_tx(tx).read("/dom0/y").unwrap(), b"0");
    let reader = h.d0().transaction_start().unwrap();
    h.d0().in_tx(reader).read("/local/domain/5/data/0").unwrap();
    let mut peak = 0;
    for round in 0..50u8 {
        let gt = h.s(g).transaction_start().unwrap();
        for i in 0..20u32 {
            let mut v = big;
            v[0] = round;
            h.s(g).write(&alloc::format!("data/{i}"), &v).unwrap();
            peak = peak.max(h.store.history_bytes_of(DomId(5)));
        }
        h.s(g).transaction_end(gt, false).unwrap();
    }
    // Bounded by its quota, give or take the one version recorded past it.
    assert!(peak <= quota as usize + 2048 + 256, "{peak}");
    assert!(
        peak > quota as usize / 2,
        "the churn did fill the bound: {peak}"
    );
    assert_eq!(h.store.history_bytes_of(DomId::DOM0), 0);
    h.d0().in_tx(tx).write("/dom0/y", b"1").unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Ok(()));
    assert_eq!(h.d0().read("/dom0/y").unwrap(), b"1");
    // The transaction that read a node the guest rewrote fails, as it would have anyway.
    assert_eq!(h.d0().transaction_end(reader, true), Err(XsError::Again));
    h.checked();
}

/// Found by `serializable.rs`: a node the transaction wrote keeps a copy of the permissions
/// it did not set; once the transaction is rebased they must be the new snapshot's, which a
/// child created below it afterwards inherits, as it would in a serial run at the commit.
#[test]
fn a_rebased_transaction_sees_the_new_snapshot_in_nodes_it_wrote() {
    let mut h = Host::with(StoreConfig {
        history_limit: 0,
        ..StoreConfig::new([1, 2])
    });
    h.d0().write("/a", b"").unwrap();
    let other = h.store.connect(DomId::DOM0).unwrap();
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).write("/a", b"v").unwrap();
    h.s(other).set_perms("/a", &perms(&["n0", "r1"])).unwrap();
    // Any change or start after a kept version rebases the open transactions.
    let t2 = h.s(other).transaction_start().unwrap();
    h.d0().in_tx(tx).write("/a/x", b"").unwrap();
    assert_eq!(
        h.d0().in_tx(tx).get_perms("/a/x").unwrap(),
        perms(&["n0", "r1"])
    );
    assert_eq!(h.d0().transaction_end(tx, true), Ok(()));
    assert_eq!(h.d0().get_perms("/a/x").unwrap(), perms(&["n0", "r1"]));
    assert_eq!(h.d0().read("/a").unwrap(), b"v");
    h.s(other).transaction_end(t2, false).unwrap();
    h.checked();
}

/// A transaction that creates a node and removes it again changes nothing at its commit, so a
/// transaction that listed the parent meanwhile still commits: the listing it saw is the
/// committed one in either serial order. (C xenstored rewrites the parent at the first
/// commit, so the second gets EAGAIN; fewer spurious conflicts is the point of comparing
/// what was read.) A real change of the listed children still conflicts.
#[test]
fn a_create_then_rm_elsewhere_does_not_conflict_with_a_listing() {
    let mut h = Host::new();
    let other = h.store.connect(DomId::DOM0).unwrap();
    for (then_write, expect) in [(false, Ok(())), (true, Err(XsError::Again))] {
        let a = h.s(other).transaction_start().unwrap();
        h.s(other).in_tx(a).write("/a", b"").unwrap();
        h.s(other).in_tx(a).rm("/a").unwrap();
        if then_write {
            h.s(other).in_tx(a).write("/b", b"").unwrap();
        }
        let d = h.d0().transaction_start().unwrap();
        let listed = h.d0().in_tx(d).directory("/").unwrap();
        assert_eq!(names(listed), ["tool"]);
        h.d0().in_tx(d).write("/tool/seen", b"").unwrap();
        assert_eq!(h.s(other).transaction_end(a, true), Ok(()));
        assert_eq!(
            h.d0().directory("/").unwrap().len(),
            1 + usize::from(then_write)
        );
        assert_eq!(h.d0().transaction_end(d, true), expect);
        h.checked();
    }
}

// ----- what conflicts: only what the transaction relied on -------------------------------

/// A transaction that overwrites a node without reading it commits after a concurrent change
/// of its value, before or after its own write (C xenstored only when the change came before
/// the transaction first accessed the node), and its value wins. A concurrent permission
/// change survives it: the transaction did not set them.
#[test]
fn a_blind_write_commits_over_a_concurrent_change() {
    for change_first in [true, false] {
        let mut h = Host::new();
        let other = h.store.connect(DomId::DOM0).unwrap();
        h.d0().write("/w/x", b"0").unwrap();
        let tx = h.d0().transaction_start().unwrap();
        if change_first {
            h.s(other).write("/w/x", b"other").unwrap();
        }
        h.d0().in_tx(tx).write("/w/x", b"mine").unwrap();
        if !change_first {
            h.s(other).write("/w/x", b"other").unwrap();
        }
        h.s(other).set_perms("/w/x", &perms(&["n0", "r5"])).unwrap();
        assert_eq!(h.d0().transaction_end(tx, true), Ok(()), "{change_first}");
        assert_eq!(h.d0().read("/w/x").unwrap(), b"mine");
        assert_eq!(h.d0().get_perms("/w/x").unwrap(), perms(&["n0", "r5"]));
        h.checked();
    }
}

/// An unprivileged caller's write relied on the permissions it was checked against, not on
/// the value: a change of the value alone does not conflict, one of the permissions does.
#[test]
fn a_guests_blind_write_conflicts_only_with_a_permission_change() {
    let mut h = Host::new();
    let g = h.guest(5);
    h.s(g).write("data/x", b"0").unwrap();
    let tx = h.s(g).transaction_start().unwrap();
    h.s(g).in_tx(tx).write("data/x", b"mine").unwrap();
    h.d0().write("/local/domain/5/data/x", b"other").unwrap();
    assert_eq!(h.s(g).transaction_end(tx, true), Ok(()));
    assert_eq!(h.s(g).read("data/x").unwrap(), b"mine");
    let tx = h.s(g).transaction_start().unwrap();
    h.s(g).in_tx(tx).write("data/x", b"again").unwrap();
    h.d0()
        .set_perms("/local/domain/5/data/x", &perms(&["n0", "r5"]))
        .unwrap();
    assert_eq!(h.s(g).transaction_end(tx, true), Err(XsError::Again));
    assert_eq!(h.s(g).read("data/x").unwrap(), b"mine");
    h.checked();
}

/// A listing relied on the set of children only: a change of a child's value, or of the
/// directory's own value, does not conflict with it; a child added or removed does.
#[test]
fn a_listing_conflicts_only_with_a_change_of_the_children() {
    let mut h = Host::new();
    let other = h.store.connect(DomId::DOM0).unwrap();
    h.d0().write("/d/c", b"0").unwrap();
    for change in ["/d/c", "/d"] {
        let tx = h.d0().transaction_start().unwrap();
        assert_eq!(names(h.d0().in_tx(tx).directory("/d").unwrap()), ["c"]);
        h.s(other).write(change, b"changed").unwrap();
        h.d0().in_tx(tx).write("/seen", b"c").unwrap();
        assert_eq!(h.d0().transaction_end(tx, true), Ok(()), "{change}");
        assert_eq!(h.d0().read("/seen").unwrap(), b"c");
    }
    for (add, path) in [(true, "/d/new"), (false, "/d/new")] {
        let tx = h.d0().transaction_start().unwrap();
        h.d0().in_tx(tx).directory("/d").unwrap();
        h.d0().in_tx(tx).write("/seen", b"").unwrap();
        if add {
            h.s(other).write(path, b"").unwrap();
        } else {
            h.s(other).rm(path).unwrap();
        }
        assert_eq!(
            h.d0().transaction_end(tx, true),
            Err(XsError::Again),
            "{add}"
        );
    }
    h.checked();
}

/// Creating a node relied on its parent being there with the permissions it inherits, not
/// on the parent's value (C xenstored rewrites the parent, so any change to it conflicts).
/// A parent removed meanwhile, or given other permissions, conflicts: run at commit, the
/// write would have created the parent again, or given the child other permissions. That
/// holds for dom0 too, whose permission checks always pass.
#[test]
fn creating_below_a_node_relies_on_its_existence_and_permissions_only() {
    let mut h = Host::new();
    let other = h.store.connect(DomId::DOM0).unwrap();
    h.d0().write("/p", b"0").unwrap();
    let tx = h.d0().transaction_start().unwrap();
    h.s(other).write("/p", b"1").unwrap();
    h.d0().in_tx(tx).write("/p/child", b"c").unwrap();
    h.s(other).write("/p", b"2").unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Ok(()));
    assert_eq!(h.d0().read("/p").unwrap(), b"2");
    assert_eq!(h.d0().read("/p/child").unwrap(), b"c");

    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).write("/p/second", b"c").unwrap();
    h.s(other).set_perms("/p", &perms(&["n0", "r5"])).unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));

    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).mkdir("/p/third/deep").unwrap();
    h.s(other).rm("/p").unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));
    assert_eq!(h.d0().read("/p"), Err(XsError::NoEnt));
    h.checked();
}

/// What a transaction read conflicts when it changed: a value, a node's existence (a node
/// removed and created again with the same value is another node), permissions. A read of
/// the value does not conflict with a change of the permissions alone (for dom0, whose
/// reads they do not decide), nor with a change undone before the commit.
#[test]
fn reads_conflict_with_changes_of_what_they_returned() {
    let mut h = Host::new();
    let other = h.store.connect(DomId::DOM0).unwrap();
    h.d0().write("/r", b"0").unwrap();
    let read = |h: &mut Host, tx| h.d0().in_tx(tx).read("/r").unwrap();
    let get_perms = |h: &mut Host, tx| {
        h.d0().in_tx(tx).get_perms("/r").unwrap();
    };
    type Change = fn(&mut Session<'_>);
    let cases: [(&str, Change, bool, bool); 4] = [
        ("value", |s| s.write("/r", b"1").unwrap(), false, true),
        (
            "perms",
            |s| s.set_perms("/r", &perms(&["n0", "r5"])).unwrap(),
            true,
            false,
        ),
        (
            "value back",
            |s| {
                s.write("/r", b"1").unwrap();
                s.write("/r", b"0").unwrap();
            },
            false,
            false,
        ),
        (
            "recreated",
            |s| {
                s.rm("/r").unwrap();
                s.write("/r", b"0").unwrap();
            },
            true,
            true,
        ),
    ];
    for (what, change, perms_conflict, value_conflict) in cases {
        h.d0().write("/r", b"0").unwrap();
        h.d0().set_perms("/r", &perms(&["n0"])).unwrap();
        let by_value = h.d0().transaction_start().unwrap();
        assert_eq!(read(&mut h, by_value), b"0");
        h.d0().in_tx(by_value).write("/w", b"").unwrap();
        let by_perms = h.d0().transaction_start().unwrap();
        get_perms(&mut h, by_perms);
        h.d0().in_tx(by_perms).write("/w", b"").unwrap();
        change(&mut h.s(other));
        let expect = |conflict: bool| {
            if conflict {
                Err(XsError::Again)
            } else {
                Ok(())
            }
        };
        assert_eq!(
            h.d0().transaction_end(by_value, true),
            expect(value_conflict),
            "READ, {what}"
        );
        assert_eq!(
            h.d0().transaction_end(by_perms, true),
            expect(perms_conflict),
            "GET_PERMS, {what}"
        );
    }
    h.checked();
}

/// Removing a node relied on it being there: run at commit, removing a missing node whose
/// parent is missing too fails, so a concurrent removal conflicts (as in C xenstored). Its
/// value may change meanwhile: it goes anyway.
#[test]
fn a_removal_relies_on_the_node_being_there() {
    let mut h = Host::new();
    let other = h.store.connect(DomId::DOM0).unwrap();
    h.d0().write("/q/x", b"0").unwrap();
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).rm("/q/x").unwrap();
    h.s(other).write("/q/x", b"1").unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Ok(()));
    assert_eq!(h.d0().read("/q/x"), Err(XsError::NoEnt));
    h.d0().write("/q/x", b"0").unwrap();
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).rm("/q/x").unwrap();
    h.s(other).rm("/q").unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));
    h.checked();
}

/// A node the transaction created on the way (empty) merges with the same node created
/// meanwhile; if the transaction read its value, the other's must be empty too, even if the
/// transaction wrote the node afterwards (with the other's value, say). If the transaction
/// removed the node again, the other node must not have appeared at all: its commit would
/// remove it, but what the transaction saw of its own (here, the value) would not be what a
/// run at commit time sees.
#[test]
fn what_a_transaction_saw_of_a_node_it_created_must_hold_at_commit() {
    for (other_value, then, expect) in [
        ("", "", Ok(())),
        ("1", "", Err(XsError::Again)),
        ("1", "write", Err(XsError::Again)),
        ("", "rm", Err(XsError::Again)),
    ] {
        let mut h = Host::new();
        let other = h.store.connect(DomId::DOM0).unwrap();
        let tx = h.d0().transaction_start().unwrap();
        h.d0().in_tx(tx).write("/n/c", b"t").unwrap();
        assert_eq!(h.d0().in_tx(tx).read("/n").unwrap(), b"");
        match then {
            "rm" => h.d0().in_tx(tx).rm("/n").unwrap(),
            "write" => h.d0().in_tx(tx).write("/n", b"1").unwrap(),
            _ => {}
        }
        h.s(other).write("/n", other_value.as_bytes()).unwrap();
        assert_eq!(
            h.d0().transaction_end(tx, true),
            expect,
            "{other_value:?} {then}"
        );
        h.checked();
    }
}

/// For an unprivileged caller, the answer on a missing node depends on the permissions of
/// the nearest node above, also where the transaction removed the node itself: here the
/// second `RM` succeeds because the parent lets the guest write, which it no longer does at
/// commit. (Found by the serializability test.)
#[test]
fn a_guests_answer_on_a_node_it_removed_relies_on_the_parents_permissions() {
    let mut h = Host::new();
    let g = h.guest(5);
    h.d0().mkdir("/s/x").unwrap();
    h.d0().set_perms("/s", &perms(&["n0", "w5"])).unwrap();
    h.d0().set_perms("/s/x", &perms(&["n0", "w5"])).unwrap();
    let tx = h.s(g).transaction_start().unwrap();
    h.s(g).in_tx(tx).rm("/s/x").unwrap();
    h.s(g).in_tx(tx).rm("/s/x").unwrap();
    h.d0().set_perms("/s", &perms(&["n0"])).unwrap();
    assert_eq!(h.s(g).transaction_end(tx, true), Err(XsError::Again));
    assert!(h.d0().read("/s/x").is_ok());
    h.checked();
}

/// Issue 17, item 5: a privileged connection whose commits keep failing gets its next
/// transaction protected; while it is open, a guest's change to what it read waits (and is
/// notified when it may go on), a change to anything else does not, and it commits.
#[test]
fn a_starving_privileged_transaction_is_protected_from_guest_writers() {
    let mut h = Host::new();
    let g = h.guest(5);
    h.s(g).write("data/hot", b"0").unwrap();
    h.s(g).write("data/cold", b"0").unwrap();
    let hot = "/local/domain/5/data/hot";
    for i in 0..PROTECT_AFTER {
        let tx = h.d0().transaction_start().unwrap();
        assert_eq!(h.store.protected_transactions(), 0);
        h.d0().in_tx(tx).read(hot).unwrap();
        h.d0().in_tx(tx).write("/dom0/z", b"1").unwrap();
        // The guest is not held before its writes made the connection starve.
        assert!(!h.store.change_must_wait(g, b"data/hot", ChangeKind::Node));
        h.s(g).write("data/hot", &[b'a' + i]).unwrap();
        assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));
    }
    let tx = h.d0().transaction_start().unwrap();
    assert_eq!(h.store.protected_transactions(), 1);
    h.d0().in_tx(tx).read(hot).unwrap();
    h.d0().in_tx(tx).write("/dom0/z", b"1").unwrap();
    h.store.take_notifications();
    // What it read: the guest waits (absolute or relative path, a write or a removal of an
    // ancestor); the rest goes on.
    assert!(h.store.change_must_wait(g, b"data/hot", ChangeKind::Node));
    assert!(
        h.store
            .change_must_wait(g, hot.as_bytes(), ChangeKind::Node)
    );
    assert!(h.store.change_must_wait(g, b"data", ChangeKind::Subtree));
    assert!(!h.store.change_must_wait(g, b"data", ChangeKind::Node));
    assert!(!h.store.change_must_wait(g, b"data/cold", ChangeKind::Node));
    assert!(
        !h.store
            .change_must_wait(g, b"data/hot/below", ChangeKind::Node)
    );
    // A guest transaction's commit that writes it waits too; one that only reads it not.
    let gt = h.s(g).transaction_start().unwrap();
    h.s(g).in_tx(gt).read("data/hot").unwrap();
    assert!(!h.store.commit_must_wait(g, gt));
    h.s(g).in_tx(gt).write("data/hot", b"x").unwrap();
    assert!(h.store.commit_must_wait(g, gt));
    // Privileged writers never wait.
    let other = h.store.connect(DomId::DOM0).unwrap();
    assert!(
        !h.store
            .change_must_wait(other, hot.as_bytes(), ChangeKind::Node)
    );
    assert_eq!(h.d0().transaction_end(tx, true), Ok(()));
    assert_eq!(h.store.protected_transactions(), 0);
    assert!(
        h.store.take_notifications().contains(&g),
        "the waiting guest is told"
    );
    assert!(!h.store.change_must_wait(g, b"data/hot", ChangeKind::Node));
    // A success ends the protection.
    let tx = h.d0().transaction_start().unwrap();
    assert_eq!(h.store.protected_transactions(), 0);
    h.d0().transaction_end(tx, false).unwrap();
    h.s(g).transaction_end(gt, false).unwrap();
    h.checked();
}

/// Xen's `test-xenstore` ("ta err"), on a connection whose commits keep failing: its own
/// write outside the transaction (a privileged writer never waits) changes what the
/// protected transaction read, which then reads again what it read (it keeps its snapshot
/// rather than move to the present) and fails its commit.
#[test]
fn a_protected_transaction_still_reads_again_what_it_read() {
    let mut h = Host::new();
    for round in 0..=PROTECT_AFTER {
        h.d0().write("/ta", b"a").unwrap();
        let tx = h.d0().transaction_start().unwrap();
        assert_eq!(
            h.store.protected_transactions(),
            usize::from(round == PROTECT_AFTER)
        );
        assert_eq!(h.d0().in_tx(tx).read("/ta").unwrap(), b"a");
        h.d0().write("/ta", b"b").unwrap();
        assert_eq!(h.d0().in_tx(tx).read("/ta").unwrap(), b"a", "round {round}");
        h.d0().in_tx(tx).write("/ta", b"c").unwrap();
        assert_eq!(h.d0().in_tx(tx).read("/ta").unwrap(), b"c");
        assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));
        assert_eq!(h.d0().read("/ta").unwrap(), b"b");
    }
    h.checked();
}

/// A transaction that changed nothing commits whatever changed since its start: it read a
/// consistent snapshot, and is serializable there (as oxenstored commits it; the
/// differential tester found xs-host failing it). One whose view was given up (doomed) fails.
#[test]
fn a_transaction_that_changes_nothing_commits() {
    let mut h = Host::new();
    let other = h.store.connect(DomId::DOM0).unwrap();
    h.d0().write("/t/b/a", b"0").unwrap();
    let tx = h.d0().transaction_start().unwrap();
    assert_eq!(h.d0().in_tx(tx).read("/t/b/a").unwrap(), b"0");
    assert_eq!(names(h.d0().in_tx(tx).directory("/t/b").unwrap()), ["a"]);
    assert_eq!(h.d0().in_tx(tx).read("/t/c"), Err(XsError::NoEnt));
    h.s(other).write("/t/b/a", b"1").unwrap();
    h.s(other).write("/t/b/new", b"").unwrap();
    h.s(other).write("/t/c", b"").unwrap();
    // It still reads its snapshot, and commits.
    assert_eq!(h.d0().in_tx(tx).read("/t/b/a").unwrap(), b"0");
    assert_eq!(h.d0().transaction_end(tx, true), Ok(()));
    h.checked();
}
