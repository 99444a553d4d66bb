//! Scenario tests: the behaviours the issue and Xen's documents name, one test each.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::perms::Access;
use crate::quota::QuotaKind;

fn p(s: &str) -> Perm {
    Perm::parse(s.as_bytes()).unwrap()
}

fn perms(list: &[&str]) -> Vec<Perm> {
    list.iter().map(|s| p(s)).collect()
}

struct Host {
    store: Store,
    dom0: ConnId,
}

impl Host {
    fn new() -> Host {
        Host::with(StoreConfig::default())
    }

    fn with(config: StoreConfig) -> Host {
        let mut store = Store::new(config).unwrap();
        let dom0 = store.connect(DomId::DOM0).unwrap();
        Host { store, dom0 }
    }

    /// Introduces `domid` and returns a connection acting for it.
    fn guest(&mut self, domid: u16) -> ConnId {
        let intro = Introduction {
            gfn: 0x1000,
            evtchn: 3,
        };
        assert_eq!(
            self.store.introduce(self.dom0, DomId(domid), intro),
            Ok(Introduced::New)
        );
        self.store.connect(DomId(domid)).unwrap()
    }

    fn s(&mut self, conn: ConnId) -> Session<'_> {
        self.store.session(conn)
    }

    fn d0(&mut self) -> Session<'_> {
        let c = self.dom0;
        self.store.session(c)
    }

    fn events(&mut self, conn: ConnId) -> Vec<(String, String)> {
        self.store
            .session(conn)
            .drain_events()
            .into_iter()
            .map(|(p, t)| (String::from_utf8(p).unwrap(), String::from_utf8(t).unwrap()))
            .collect()
    }

    fn checked(&self) {
        self.store.check().unwrap();
    }
}

fn ev(path: &str, token: &str) -> (String, String) {
    (path.into(), token.into())
}

fn names(list: Vec<Vec<u8>>) -> Vec<String> {
    list.into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect()
}

// ----- basic operations ----------------------------------------------------------------

#[test]
fn initial_tree_is_xens() {
    let mut h = Host::new();
    assert_eq!(names(h.d0().directory("/").unwrap()), ["tool"]);
    assert_eq!(names(h.d0().directory("/tool").unwrap()), ["xenstored"]);
    assert_eq!(h.d0().get_perms("/").unwrap(), perms(&["n0"]));
    h.checked();
}

#[test]
fn write_read_mkdir_rm_directory() {
    let mut h = Host::new();
    let mut s = h.d0();
    s.write("/a/b/c", b"v\0al").unwrap();
    assert_eq!(s.read("/a/b/c").unwrap(), b"v\0al");
    assert_eq!(s.read("/a/b").unwrap(), b"");
    assert_eq!(s.read("/a/x"), Err(XsError::NoEnt));
    s.mkdir("/a/b/c").unwrap();
    assert_eq!(s.read("/a/b/c").unwrap(), b"v\0al", "mkdir keeps the value");
    s.mkdir("/a/d").unwrap();
    s.write("/a/B", b"").unwrap();
    s.write("/a/0", b"").unwrap();
    assert_eq!(names(s.directory("/a").unwrap()), ["0", "B", "b", "d"]);
    s.rm("/a/b").unwrap();
    assert_eq!(s.read("/a/b/c"), Err(XsError::NoEnt));
    s.rm("/a/b").unwrap();
    assert_eq!(s.rm("/a/b/c"), Err(XsError::NoEnt), "parent missing too");
    assert_eq!(s.rm("/"), Err(XsError::Inval));
    assert_eq!(s.read("/a//b"), Err(XsError::Inval));
    assert_eq!(s.write("/a/", b""), Err(XsError::Inval));
    assert_eq!(s.directory("/nope"), Err(XsError::NoEnt));
    h.checked();
}

#[test]
fn relative_paths_are_under_the_callers_home() {
    let mut h = Host::new();
    let g = h.guest(5);
    h.s(g).write("data/x", b"1").unwrap();
    assert_eq!(h.d0().read("/local/domain/5/data/x").unwrap(), b"1");
    assert_eq!(h.s(g).read("data/x").unwrap(), b"1");
    // dom0's relative paths are under /local/domain/0.
    h.d0().write("y", b"2").unwrap();
    assert_eq!(h.d0().read("/local/domain/0/y").unwrap(), b"2");
}

#[test]
fn path_max_quota_counts_after_the_home_prefix() {
    let mut h = Host::new();
    let g = h.guest(5);
    h.store
        .set_quota(h.dom0, Some(DomId(5)), QuotaKind::PathMax, 10)
        .unwrap();
    assert!(h.s(g).write("data/12345", b"").is_ok()); // "data/12345" is 10 bytes
    assert_eq!(h.s(g).write("data/123456", b""), Err(XsError::Inval));
    assert_eq!(
        h.s(g).write("/local/domain/5/data/123456", b""),
        Err(XsError::Inval)
    );
}

#[test]
fn values_may_hold_any_bytes_up_to_the_payload() {
    let mut h = Host::new();
    let big: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
    h.d0().write("/big", &big).unwrap();
    assert_eq!(h.d0().read("/big").unwrap(), big);
}

#[test]
fn deep_trees_are_removed_without_recursion() {
    let mut h = Host::new();
    // The deepest path the protocol allows: ~1500 levels.
    let mut path = String::new();
    while path.len() + 2 <= path::ABS_PATH_MAX {
        path.push_str("/a");
    }
    h.d0().write(&path, b"deep").unwrap();
    assert_eq!(h.d0().read(&path).unwrap(), b"deep");
    let before = h.store.node_count();
    h.d0().rm("/a").unwrap();
    assert_eq!(h.store.node_count(), before - path.len() / 2);
    h.checked();
}

#[test]
fn directory_part_walks_a_large_directory() {
    let mut h = Host::new();
    for i in 0..2000 {
        h.d0().mkdir(&alloc::format!("/local/domain/{i}")).unwrap();
    }
    let mut out = Vec::new();
    assert_eq!(
        h.store.directory(h.dom0, 0, b"/local/domain", &mut out),
        Err(XsError::TooBig)
    );
    let mut all = Vec::new();
    let mut offset = 0;
    let mut gencnt = None;
    loop {
        let mut out = Vec::new();
        h.store
            .directory_part(h.dom0, 0, b"/local/domain", offset, &mut out)
            .unwrap();
        let nul = out.iter().position(|&b| b == 0).unwrap();
        let g = out[..nul].to_vec();
        assert!(gencnt.is_none() || gencnt.as_ref() == Some(&g));
        gencnt = Some(g);
        let body = &out[nul + 1..];
        let end = body.ends_with(b"\0\0") || body == b"\0";
        let chunk = if end { &body[..body.len() - 1] } else { body };
        all.extend_from_slice(chunk);
        offset += chunk.len();
        if end {
            break;
        }
    }
    let listed = split_names(&all);
    assert_eq!(listed.len(), 2000);
    assert!(listed.windows(2).all(|w| w[0] < w[1]));
    // The generation count changes when a child is added.
    h.d0().mkdir("/local/domain/99999").unwrap();
    let mut out = Vec::new();
    h.store
        .directory_part(h.dom0, 0, b"/local/domain", 0, &mut out)
        .unwrap();
    assert_ne!(
        Some(out[..out.iter().position(|&b| b == 0).unwrap()].to_vec()),
        gencnt
    );
}

// ----- permissions ---------------------------------------------------------------------

#[test]
fn permissions_owner_default_and_entries() {
    let mut h = Host::new();
    let g1 = h.guest(1);
    let g2 = h.guest(2);
    let g3 = h.guest(3);
    h.d0().write("/p", b"v").unwrap();
    h.d0().set_perms("/p", &perms(&["r1", "w2", "n3"])).unwrap();
    assert_eq!(h.s(g1).read("/p").unwrap(), b"v");
    assert_eq!(h.s(g1).write("/p", b"x"), Ok(()), "owner may write");
    assert_eq!(h.s(g2).read("/p"), Err(XsError::Acces));
    assert_eq!(h.s(g2).write("/p", b"y"), Ok(()));
    assert_eq!(h.s(g3).read("/p"), Err(XsError::Acces));
    let g4 = h.guest(4);
    assert_eq!(
        h.s(g4).read("/p").unwrap(),
        b"y",
        "default is the owner letter"
    );
    assert_eq!(h.s(g4).write("/p", b"z"), Err(XsError::Acces));
    // Only the owner may change permissions; only privileged callers the owner.
    assert_eq!(
        h.s(g2).set_perms("/p", &perms(&["b1"])),
        Err(XsError::Acces)
    );
    assert_eq!(h.s(g1).set_perms("/p", &perms(&["b2"])), Err(XsError::Perm));
    assert_eq!(h.s(g1).set_perms("/p", &perms(&["n1", "r2"])), Ok(()));
    assert_eq!(h.s(g2).read("/p").unwrap(), b"y");
    assert_eq!(h.s(g4).read("/p"), Err(XsError::Acces));
}

#[test]
fn missing_and_unreadable_look_the_same() {
    let mut h = Host::new();
    let g = h.guest(7);
    h.d0().write("/secret/exists", b"x").unwrap();
    h.d0().set_perms("/secret", &perms(&["n0"])).unwrap();
    h.d0().set_perms("/secret/exists", &perms(&["n0"])).unwrap();
    let a = h.s(g).read("/secret/exists");
    let b = h.s(g).read("/secret/missing");
    assert_eq!(a, Err(XsError::Acces));
    assert_eq!(a, b);
    assert_eq!(h.s(g).directory("/secret"), Err(XsError::Acces));
    assert_eq!(h.s(g).directory("/secret/nope"), Err(XsError::Acces));
}

#[test]
fn created_nodes_inherit_and_guests_own_what_they_create() {
    let mut h = Host::new();
    let g = h.guest(6);
    h.d0().mkdir("/shared").unwrap();
    h.d0()
        .set_perms("/shared", &perms(&["n0", "b6", "r9"]))
        .unwrap();
    h.s(g).write("/shared/mine/leaf", b"1").unwrap();
    assert_eq!(
        h.d0().get_perms("/shared/mine").unwrap(),
        perms(&["n6", "b6", "r9"])
    );
    assert_eq!(
        h.d0().get_perms("/shared/mine/leaf").unwrap(),
        perms(&["n6", "b6", "r9"])
    );
    // A privileged creator keeps the inherited owner.
    h.d0().write("/shared/tool", b"").unwrap();
    assert_eq!(
        h.d0().get_perms("/shared/tool").unwrap(),
        perms(&["n0", "b6", "r9"])
    );
    assert_eq!(h.store.usage(DomId(6)).unwrap().nodes, 2 + 13);
}

#[test]
fn unprivileged_permission_lists_are_limited() {
    let mut h = Host::new();
    let g = h.guest(2);
    h.s(g).write("data/x", b"").unwrap();
    let six = perms(&["n2", "r1", "r3", "r4", "r5", "r6"]);
    assert_eq!(h.s(g).set_perms("data/x", &six), Err(XsError::NoSpc));
    assert_eq!(h.s(g).set_perms("data/x", &six[..5]), Ok(()));
    assert_eq!(h.d0().set_perms("/local/domain/2/data/x", &six), Ok(()));
}

#[test]
fn set_target_lets_a_device_model_act_for_its_guest() {
    let mut h = Host::new();
    let guest = h.guest(3);
    let dm = h.guest(4);
    h.s(guest).write("data/private", b"x").unwrap();
    h.s(guest)
        .set_perms("data/private", &perms(&["n3"]))
        .unwrap();
    assert_eq!(
        h.s(dm).read("/local/domain/3/data/private"),
        Err(XsError::Acces)
    );
    assert_eq!(
        h.store.set_target(guest, DomId(4), DomId(3)),
        Err(XsError::Acces)
    );
    h.store.set_target(h.dom0, DomId(4), DomId(3)).unwrap();
    assert_eq!(h.s(dm).read("/local/domain/3/data/private").unwrap(), b"x");
    assert_eq!(h.s(dm).write("/local/domain/3/data/private", b"y"), Ok(()));
}

/// Xen XSA-175: a guest with write access to its frontend directory may remove it, but
/// cannot re-create it, because it cannot write the directory containing it.
#[test]
fn xsa_175_a_removed_frontend_cannot_be_recreated_by_the_guest() {
    let mut h = Host::new();
    let g = h.guest(8);
    // As libxl creates a vif: the frontend directory is the guest's, readable by the backend.
    let fe = "/local/domain/8/device/vif/0";
    h.d0().mkdir(fe).unwrap();
    h.d0().set_perms(fe, &perms(&["n8", "r0"])).unwrap();
    h.d0()
        .write(&alloc::format!("{fe}/backend-id"), b"0")
        .unwrap();
    assert_eq!(
        h.d0().get_perms("/local/domain/8/device/vif").unwrap(),
        perms(&["n0", "r8"])
    );
    h.s(g).write("device/vif/0/state", b"1").unwrap();
    h.s(g).rm("device/vif/0").unwrap();
    assert_eq!(h.d0().read(fe), Err(XsError::NoEnt));
    assert_eq!(h.s(g).mkdir("device/vif/0"), Err(XsError::Acces));
    assert_eq!(
        h.s(g).write("device/vif/0/state", b"1"),
        Err(XsError::Acces)
    );
    assert_eq!(h.d0().read(fe), Err(XsError::NoEnt));
    h.checked();
}

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
    // A read node changed: conflict.
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).read("/c/read").unwrap();
    h.s(other).write("/c/read", b"2").unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));
    // A path found missing appeared: conflict.
    let tx = h.d0().transaction_start().unwrap();
    assert_eq!(h.d0().in_tx(tx).read("/c/ghost"), Err(XsError::NoEnt));
    h.s(other).write("/c/ghost", b"boo").unwrap();
    assert_eq!(h.d0().transaction_end(tx, true), Err(XsError::Again));
    // A listed directory changed: conflict.
    let tx = h.d0().transaction_start().unwrap();
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
        ..StoreConfig::default()
    });
    for i in 0..1000u32 {
        h.d0().write(&alloc::format!("/h/{i}"), b"old").unwrap();
    }
    let g = h.guest(3);
    let tx = h.s(g).transaction_start().unwrap();
    // Each overwrite of a node the transaction can see keeps its old version...
    for i in 0..1000u32 {
        h.d0().write(&alloc::format!("/h/{i}"), b"new").unwrap();
    }
    // ...but only up to the limit: the transaction holding them is given up instead.
    assert!(h.store.history_bytes() <= 4096);
    assert_eq!(h.s(g).transaction_end(tx, true), Err(XsError::Again));
}

// ----- watches -------------------------------------------------------------------------

#[test]
fn watches_fire_on_registration_and_for_the_subtree() {
    let mut h = Host::new();
    let w = h.store.connect(DomId::DOM0).unwrap();
    h.s(w).watch("/a", "tok").unwrap();
    assert_eq!(h.events(w), [ev("/a", "tok")]);
    assert_eq!(h.s(w).watch("/a", "tok"), Err(XsError::Exist));
    h.d0().write("/a/b/c", b"1").unwrap();
    h.d0().write("/a", b"").unwrap();
    h.d0().write("/ab", b"").unwrap();
    // One event for the write, none for the parent created on the way.
    assert_eq!(h.events(w), [ev("/a/b/c", "tok"), ev("/a", "tok")]);
    h.d0().mkdir("/a/b").unwrap();
    assert_eq!(h.events(w), [], "mkdir of an existing node changes nothing");
    h.s(w).unwatch("/a", "tok").unwrap();
    assert_eq!(h.s(w).unwatch("/a", "tok"), Err(XsError::NoEnt));
    h.d0().write("/a", b"x").unwrap();
    assert_eq!(h.events(w), []);
}

#[test]
fn removing_an_ancestor_fires_watches_below_with_their_paths() {
    let mut h = Host::new();
    let w = h.store.connect(DomId::DOM0).unwrap();
    h.d0().write("/dev/vif/0/state", b"4").unwrap();
    h.s(w).watch("/dev/vif/0/state", "st").unwrap();
    h.s(w).watch("/dev", "top").unwrap();
    h.s(w).watch("/dev/vif/9", "missing").unwrap();
    h.events(w);
    h.d0().rm("/dev/vif").unwrap();
    let mut got = h.events(w);
    got.sort();
    assert_eq!(got, [ev("/dev/vif", "top"), ev("/dev/vif/0/state", "st")]);
}

#[test]
fn relative_watches_report_relative_paths() {
    let mut h = Host::new();
    let g = h.guest(9);
    h.s(g).watch("device", "dev").unwrap();
    assert_eq!(h.events(g), [ev("device", "dev")]);
    h.d0()
        .write("/local/domain/9/device/vbd/1/state", b"1")
        .unwrap();
    assert_eq!(h.events(g), [ev("device/vbd/1/state", "dev")]);
}

#[test]
fn events_only_for_nodes_the_watcher_may_read() {
    let mut h = Host::new();
    let g = h.guest(2);
    h.d0().mkdir("/open").unwrap();
    h.d0().set_perms("/open", &perms(&["n0", "r2"])).unwrap();
    h.s(g).watch("/open", "t").unwrap();
    h.events(g);
    h.d0().write("/open/visible", b"").unwrap();
    h.d0().write("/open/hidden/x", b"").unwrap();
    h.d0().set_perms("/open/hidden", &perms(&["n0"])).unwrap();
    h.d0().set_perms("/open/hidden/x", &perms(&["n0"])).unwrap();
    assert_eq!(
        h.events(g),
        [
            ev("/open/visible", "t"),
            ev("/open/hidden/x", "t"),
            // A watcher losing access still hears of the change that took it away.
            ev("/open/hidden", "t"),
            ev("/open/hidden/x", "t"),
        ]
    );
    h.d0().write("/open/hidden/x", b"secret").unwrap();
    assert_eq!(h.events(g), []);
}

#[test]
fn watch_depth_limits_matching() {
    let mut h = Host::new();
    h.store.watch(h.dom0, b"/d", b"0", Some(0)).unwrap();
    h.store.watch(h.dom0, b"/d", b"1", Some(1)).unwrap();
    let d0 = h.dom0;
    h.events(d0);
    h.d0().write("/d/a/b", b"").unwrap();
    h.d0().write("/d/a", b"").unwrap();
    h.d0().write("/d", b"").unwrap();
    assert_eq!(
        h.events(d0),
        [ev("/d/a", "1"), ev("/d", "0"), ev("/d", "1")]
    );
}

#[test]
fn transaction_changes_fire_only_on_commit() {
    let mut h = Host::new();
    let w = h.store.connect(DomId::DOM0).unwrap();
    h.s(w).watch("/t", "t").unwrap();
    h.events(w);
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).write("/t/a/b", b"1").unwrap();
    h.d0().in_tx(tx).write("/t/a/b", b"2").unwrap();
    h.d0().in_tx(tx).write("/t/c", b"1").unwrap();
    assert_eq!(h.events(w), []);
    h.d0().transaction_end(tx, true).unwrap();
    assert_eq!(h.events(w), [ev("/t/a/b", "t"), ev("/t/c", "t")]);
    let tx = h.d0().transaction_start().unwrap();
    h.d0().in_tx(tx).write("/t/x", b"1").unwrap();
    h.d0().transaction_end(tx, false).unwrap();
    assert_eq!(h.events(w), []);
}

#[test]
fn special_watches_need_privilege_or_permission() {
    let mut h = Host::new();
    let g = h.guest(3);
    let d0 = h.dom0;
    h.store.watch(d0, b"@introduceDomain", b"in", None).unwrap();
    h.store.watch(d0, b"@releaseDomain", b"out", None).unwrap();
    h.store
        .watch(d0, b"@releaseDomain", b"out1", Some(1))
        .unwrap();
    h.s(g).watch("@introduceDomain", "in").unwrap();
    h.s(g).watch("@releaseDomain/4", "four").unwrap();
    h.events(d0);
    h.events(g);
    let g4 = h.guest(4);
    assert_eq!(h.events(d0), [ev("@introduceDomain", "in")]);
    assert_eq!(
        h.events(g),
        [],
        "@introduceDomain is not readable by guests"
    );
    h.store.release(d0, DomId(4)).unwrap();
    assert_eq!(
        h.events(d0),
        [ev("@releaseDomain", "out"), ev("@releaseDomain/4", "out1")]
    );
    assert_eq!(h.events(g), [ev("@releaseDomain/4", "four")]);
    assert!(h.store.is_dead(g4));
    // Granting read on the special node lets a guest watch it.
    h.d0()
        .set_perms("@introduceDomain", &perms(&["n0", "r3"]))
        .unwrap();
    h.guest(5);
    assert_eq!(h.events(g), [ev("@introduceDomain", "in")]);
}

#[test]
fn a_full_event_queue_coalesces_into_one_catch_up_event_per_watch() {
    let mut h = Host::with(StoreConfig {
        event_queue_len: 4,
        ..StoreConfig::default()
    });
    let w = h.store.connect(DomId::DOM0).unwrap();
    h.s(w).watch("/q", "q").unwrap();
    h.s(w).watch("/r", "r").unwrap();
    for i in 0..100 {
        h.d0().write(&alloc::format!("/q/{i}"), b"").unwrap();
        h.d0().write(&alloc::format!("/r/{i}"), b"").unwrap();
    }
    assert_eq!(h.store.queued_events(w), 4);
    let got = h.events(w);
    assert_eq!(
        got,
        [
            ev("/q", "q"),
            ev("/r", "r"),
            ev("/q/0", "q"),
            ev("/r/0", "r"),
            // Catch-up: the watches missed events; each gets one for its own path.
            ev("/q", "q"),
            ev("/r", "r"),
        ]
    );
    assert_eq!(h.events(w), []);
}

#[test]
fn unprivileged_event_queues_are_bounded_by_memory_quota() {
    let mut h = Host::new();
    let g = h.guest(2);
    h.store
        .set_quota(h.dom0, Some(DomId(2)), QuotaKind::Memory, 20_000)
        .unwrap();
    h.d0().mkdir("/shared").unwrap();
    h.d0().set_perms("/shared", &perms(&["n0", "r2"])).unwrap();
    h.s(g).watch("/shared", "d").unwrap();
    for i in 0..1000 {
        h.d0().write(&alloc::format!("/shared/{i}"), b"").unwrap();
    }
    assert!(h.store.usage(DomId(2)).unwrap().memory <= 20_000);
    assert!(h.store.queued_events(g) < 1000);
}

#[test]
fn a_watcher_out_of_memory_quota_still_gets_its_events_one_at_a_time() {
    let mut h = Host::new();
    let g = h.guest(2);
    h.d0().mkdir("/shared").unwrap();
    h.d0().set_perms("/shared", &perms(&["n0", "r2"])).unwrap();
    h.s(g).watch("/shared", "d").unwrap();
    assert_eq!(h.events(g), [ev("/shared", "d")]);
    // The guest's nodes and watch use up its memory quota exactly.
    let used = h.store.usage(DomId(2)).unwrap().memory;
    h.store
        .set_quota(h.dom0, Some(DomId(2)), QuotaKind::Memory, used as u32)
        .unwrap();
    h.d0().write("/shared/a", b"").unwrap();
    h.d0().write("/shared/b", b"").unwrap();
    // An empty queue always takes one event (memory stays bounded: the quota plus one
    // event), so the watch is not owed an event that no later pop would ever deliver. The
    // second event did not fit; the watch's catch-up event follows once the first is taken.
    assert!(h.store.usage(DomId(2)).unwrap().memory > used);
    assert_eq!(h.events(g), [ev("/shared/a", "d"), ev("/shared", "d")]);
    assert_eq!(h.events(g), []);
    assert_eq!(h.store.usage(DomId(2)).unwrap().memory, used);
    h.checked();
}

// ----- domains -------------------------------------------------------------------------

#[test]
fn introduce_creates_the_default_nodes() {
    let mut h = Host::new();
    let g = h.guest(12);
    let ro = perms(&["n0", "r12"]);
    let rw = perms(&["n12"]);
    for (path, want) in [
        ("/local/domain/12", &ro),
        ("/local/domain/12/domid", &ro),
        (
            "/local/domain/12/control/platform-feature-xs_reset_watches",
            &ro,
        ),
        (
            "/local/domain/12/control/platform-feature-multiprocessor-suspend",
            &ro,
        ),
        ("/local/domain/12/platform/acpi", &ro),
        ("/local/domain/12/platform/acpi_s3", &ro),
        ("/local/domain/12/platform/acpi_s4", &ro),
        ("/local/domain/12/platform/acpi_laptop_slate", &ro),
        ("/local/domain/12/device", &ro),
        ("/local/domain/12/attr", &rw),
        ("/local/domain/12/control/shutdown", &rw),
        ("/local/domain/12/control/feature-poweroff", &rw),
        ("/local/domain/12/control/feature-reboot", &rw),
        ("/local/domain/12/control/feature-suspend", &rw),
        ("/local/domain/12/control/feature-s3", &rw),
        ("/local/domain/12/control/feature-s4", &rw),
        ("/local/domain/12/data", &rw),
        ("/local/domain/12/drivers", &rw),
        ("/local/domain/12/error", &rw),
        ("/local/domain/12/feature", &rw),
        ("/local/domain/12/device/suspend/event-channel", &rw),
    ] {
        assert_eq!(&h.d0().get_perms(path).unwrap(), want, "{path}");
    }
    assert_eq!(h.s(g).read("domid").unwrap(), b"12");
    assert_eq!(h.s(g).write("domid", b"1"), Err(XsError::Acces));
    assert_eq!(h.s(g).write("control/shutdown", b""), Ok(()));
    assert_eq!(
        h.store
            .introduce(h.dom0, DomId(12), Introduction { gfn: 1, evtchn: 9 }),
        Ok(Introduced::Rebind)
    );
    assert!(h.store.is_introduced(DomId(12)));
    assert_eq!(
        h.store
            .introduce(g, DomId(13), Introduction { gfn: 1, evtchn: 9 }),
        Err(XsError::Acces)
    );
    // As C xenstored: dom0 counts as introduced already; a special domid is no domain.
    assert_eq!(
        h.store
            .introduce(h.dom0, DomId(0), Introduction { gfn: 1, evtchn: 9 }),
        Ok(Introduced::Rebind)
    );
    assert_eq!(
        h.store
            .introduce(h.dom0, DomId::SELF, Introduction { gfn: 1, evtchn: 9 }),
        Err(XsError::Inval)
    );
}

#[test]
fn toolstack_nodes_are_kept_when_it_turns_default_nodes_off() {
    let mut h = Host::with(StoreConfig {
        domain_nodes: false,
        ..StoreConfig::default()
    });
    h.guest(3);
    assert_eq!(h.d0().read("/local/domain/3"), Err(XsError::NoEnt));
}

/// Xen XSA-322/417/419/483: after a domain is released, a new domain with the same domid
/// inherits none of its nodes, permissions, watches, transactions or quota usage.
#[test]
fn domid_reuse_inherits_nothing() {
    let mut h = Host::new();
    let g = h.guest(7);
    // Old domain 7: its own nodes, a node elsewhere it owns, a grant naming it, a watch,
    // an open transaction.
    h.s(g).write("data/mine", b"old").unwrap();
    h.d0().mkdir("/elsewhere").unwrap();
    h.d0().set_perms("/elsewhere", &perms(&["n7"])).unwrap();
    h.s(g).write("/elsewhere/child", b"x").unwrap();
    h.d0().write("/granted", b"secret").unwrap();
    h.d0().set_perms("/granted", &perms(&["n0", "b7"])).unwrap();
    h.s(g).watch("/granted", "w").unwrap();
    let tx = h.s(g).transaction_start().unwrap();
    assert!(h.store.usage(DomId(7)).unwrap().nodes > 0);
    let watcher = h.store.connect(DomId::DOM0).unwrap();
    h.s(watcher).watch("/elsewhere", "gone").unwrap();
    h.events(watcher);

    h.store.release(h.dom0, DomId(7)).unwrap();
    assert!(h.store.is_dead(g));
    assert_eq!(h.store.transaction_end(g, tx, true), Err(XsError::NoEnt));
    assert_eq!(h.store.watch_count(), 1);
    assert_eq!(h.d0().read("/elsewhere"), Err(XsError::NoEnt));
    assert_eq!(h.d0().read("/local/domain/7"), Err(XsError::NoEnt));
    // The topmost owned node goes with its subtree: one event for the watch on it (no
    // watch is on the child itself).
    assert_eq!(h.events(watcher), [ev("/elsewhere", "gone")]);
    assert_eq!(h.d0().get_perms("/granted").unwrap(), perms(&["n0"]));
    assert_eq!(h.store.usage(DomId(7)), None);
    assert_eq!(h.store.release(h.dom0, DomId(7)), Err(XsError::NoEnt));

    // New domain 7.
    let g2 = h.guest(7);
    assert_eq!(h.s(g2).read("/granted"), Err(XsError::Acces));
    assert_eq!(h.s(g2).read("data/mine"), Err(XsError::NoEnt));
    assert_eq!(
        h.store.usage(DomId(7)).unwrap().nodes,
        13,
        "just its default nodes"
    );
    assert_eq!(h.store.usage(DomId(7)).unwrap().watches, 0);
    assert_eq!(h.store.usage(DomId(7)).unwrap().transactions, 0);
    h.checked();
}

#[test]
fn shutdown_fires_release_once_until_resume() {
    let mut h = Host::new();
    h.guest(3);
    let d0 = h.dom0;
    h.store.watch(d0, b"@releaseDomain", b"r", None).unwrap();
    h.events(d0);
    h.store.domain_shutdown(DomId(3));
    h.store.domain_shutdown(DomId(3));
    assert_eq!(h.events(d0), [ev("@releaseDomain", "r")]);
    h.store.resume(d0, DomId(3)).unwrap();
    h.store.domain_shutdown(DomId(3));
    assert_eq!(h.events(d0), [ev("@releaseDomain", "r")]);
}

#[test]
fn toolstack_may_set_permissions_before_introducing() {
    let mut h = Host::with(StoreConfig {
        domain_nodes: false,
        ..StoreConfig::default()
    });
    h.d0().mkdir("/local/domain/20").unwrap();
    h.d0()
        .set_perms("/local/domain/20", &perms(&["n0", "r20"]))
        .unwrap();
    let g = h.guest(20);
    assert_eq!(h.s(g).read("/local/domain/20").unwrap(), b"");
}

// ----- quotas --------------------------------------------------------------------------

#[test]
fn quota_errors_change_nothing() {
    let mut h = Host::new();
    let g = h.guest(3);
    let d0 = h.dom0;
    let used = h.store.usage(DomId(3)).unwrap().nodes;
    h.store
        .set_quota(d0, Some(DomId(3)), QuotaKind::Nodes, (used + 2) as u32)
        .unwrap();
    assert_eq!(h.s(g).write("data/a/b/c", b""), Err(XsError::NoSpc));
    assert_eq!(h.s(g).read("data/a"), Err(XsError::NoEnt));
    h.s(g).write("data/a/b", b"").unwrap();
    assert_eq!(h.s(g).write("data/z", b""), Err(XsError::NoSpc));
    h.s(g).rm("data/a").unwrap();
    h.s(g).write("data/z", b"").unwrap();

    h.store
        .set_quota(d0, Some(DomId(3)), QuotaKind::NodeSize, 8)
        .unwrap();
    assert_eq!(h.s(g).write("data/z", b"123456789"), Err(XsError::NoSpc));
    assert_eq!(h.s(g).read("data/z").unwrap(), b"");
    h.s(g).write("data/z", b"12345678").unwrap();

    h.store
        .set_quota(d0, Some(DomId(3)), QuotaKind::Watches, 1)
        .unwrap();
    h.s(g).watch("data", "1").unwrap();
    assert_eq!(h.s(g).watch("data", "2"), Err(XsError::NoSpc));
    assert_eq!(h.store.usage(DomId(3)).unwrap().watches, 1);

    // dom0 is never limited.
    h.store.set_quota(d0, None, QuotaKind::Nodes, 1).unwrap();
    h.d0().write("/many/a/b/c/d", b"").unwrap();
    assert_eq!(h.store.get_quota(d0, None, QuotaKind::Nodes), Ok(1));
    assert_eq!(
        h.store.get_quota(g, None, QuotaKind::Nodes),
        Err(XsError::Acces)
    );
    h.checked();
}

#[test]
fn memory_quota_limits_a_domain() {
    let mut h = Host::new();
    let g = h.guest(3);
    h.store
        .set_quota(h.dom0, Some(DomId(3)), QuotaKind::Memory, 8192)
        .unwrap();
    let value = [b'x'; 1000];
    let mut ok = 0;
    for i in 0..100 {
        match h.s(g).write(&alloc::format!("data/{i}"), &value) {
            Ok(()) => ok += 1,
            Err(e) => {
                assert_eq!(e, XsError::NoMem);
                break;
            }
        }
    }
    assert!(ok > 0 && ok < 10, "{ok}");
    assert!(h.store.usage(DomId(3)).unwrap().memory <= 8192);
}

#[test]
fn usage_follows_ownership_changes() {
    let mut h = Host::new();
    let _g = h.guest(3);
    let before = h.store.usage(DomId(3)).unwrap().nodes;
    h.d0().write("/given", b"").unwrap();
    h.d0().set_perms("/given", &perms(&["n3"])).unwrap();
    assert_eq!(h.store.usage(DomId(3)).unwrap().nodes, before + 1);
    h.d0().rm("/given").unwrap();
    assert_eq!(h.store.usage(DomId(3)).unwrap().nodes, before);
    h.checked();
}

#[test]
fn dead_and_unknown_connections_are_refused() {
    let mut h = Host::new();
    let g = h.guest(3);
    h.store.release(h.dom0, DomId(3)).unwrap();
    assert_eq!(h.s(g).read("/"), Err(XsError::Io));
    h.store.disconnect(g);
    assert_eq!(h.s(g).read("/"), Err(XsError::Inval));
    assert_eq!(h.store.connect(DomId(0x7FF5)), Err(XsError::Inval));
    let _ = Access::READ;
    let _ = vec![0u8];
}

#[test]
fn soft_memory_quota_is_reported_once() {
    let mut h = Host::with(StoreConfig {
        memory_soft: 4000,
        ..StoreConfig::default()
    });
    let g = h.guest(3);
    assert_eq!(h.store.take_warnings(), []);
    for i in 0..40 {
        h.s(g)
            .write(&alloc::format!("data/{i}"), &[b'x'; 100])
            .unwrap();
    }
    assert!(h.store.usage(DomId(3)).unwrap().memory >= 4000);
    assert_eq!(h.store.take_warnings(), [DomId(3)]);
    h.s(g).write("data/more", b"").unwrap();
    assert_eq!(h.store.take_warnings(), [], "reported once");
}

#[test]
fn soft_memory_quota_crossings_queue_one_warning_per_domain() {
    let mut h = Host::with(StoreConfig {
        memory_soft: 4000,
        ..StoreConfig::default()
    });
    let g = h.guest(3);
    for _ in 0..20 {
        // Up across the soft quota, then back below, without anyone taking the warnings.
        for i in 0..40 {
            h.s(g)
                .write(&alloc::format!("data/{i}"), &[b'x'; 100])
                .unwrap();
        }
        assert!(h.store.usage(DomId(3)).unwrap().memory >= 4000);
        for i in 0..40 {
            h.s(g).rm(&alloc::format!("data/{i}")).unwrap();
        }
        h.s(g).write("data/small", b"").unwrap();
    }
    assert_eq!(h.store.take_warnings(), [DomId(3)]);
}

#[test]
fn resetting_a_privileged_watcher_refunds_nothing_it_was_not_charged() {
    let mut h = Host::new();
    h.d0().write("/acct/a", b"1").unwrap();
    let memory = |h: &Host| h.store.usage(DomId::DOM0).unwrap().memory;
    let watcher = h.store.connect(DomId::DOM0).unwrap();
    let unwatched = memory(&h);
    h.store.watch(watcher, b"/acct", b"t", None).unwrap();
    let watch_charge = memory(&h) - unwatched;
    for i in 0..10 {
        h.d0().write(&alloc::format!("/acct/{i}"), b"x").unwrap();
    }
    assert!(h.store.queued_events(watcher) > 0);
    let before = memory(&h);
    h.store.reset_connection(watcher);
    assert_eq!(h.store.queued_events(watcher), 0);
    // The watch is refunded; the queued events never were charged (privileged queues are
    // bounded by length).
    assert_eq!(memory(&h), before - watch_charge);
}

#[test]
fn a_refused_set_perms_leaves_no_domain_records_behind() {
    let mut h = Host::new();
    let g = h.guest(3);
    let known = |h: &Host| h.store.known_domains().collect::<Vec<_>>();
    let before = known(&h);
    assert_eq!(
        h.s(g).set_perms("/", &perms(&["n0", "r100", "r200"])),
        Err(XsError::Acces)
    );
    assert_eq!(known(&h), before);
    // Allowed, the same request keeps them (for domains introduced later).
    h.s(g).write("data/x", b"").unwrap();
    h.s(g).set_perms("data/x", &perms(&["n3", "r100"])).unwrap();
    assert!(known(&h).contains(&DomId(100)));
    assert!(!known(&h).contains(&DomId(200)));
}

#[test]
fn privileged_domains_can_be_introduced_but_not_released() {
    let mut h = Host::with(StoreConfig {
        privileged: alloc::vec![DomId(3)],
        ..StoreConfig::default()
    });
    let intro = Introduction { gfn: 1, evtchn: 2 };
    assert_eq!(
        h.store.introduce(h.dom0, DomId(3), intro),
        Ok(Introduced::New)
    );
    assert_eq!(
        h.store.introduce(h.dom0, DomId(0), intro),
        Ok(Introduced::Rebind)
    );
    let p = h.store.connect(DomId(3)).unwrap();
    h.s(p).write("/anywhere", b"x").unwrap();
    assert_eq!(h.store.release(h.dom0, DomId(3)), Err(XsError::Inval));
    assert_eq!(h.store.release(h.dom0, DomId(0)), Err(XsError::Inval));
}

#[test]
fn a_transactions_read_set_is_charged_to_the_readers_memory() {
    let mut h = Host::new();
    let g = h.guest(3);
    let quota = 64 * 1024;
    h.store
        .set_quota(h.dom0, Some(DomId(3)), QuotaKind::Memory, quota)
        .unwrap();
    h.store
        .set_quota(h.dom0, Some(DomId(3)), QuotaKind::TransactionNodes, 0)
        .unwrap();
    let before = h.store.usage(DomId(3)).unwrap().memory;
    let tx = h.store.transaction_start(g).unwrap();
    // Reads of long missing paths: each is remembered (for the commit's check) and costs
    // the store its path; they must run into the memory quota, not grow without bound.
    let long = "x".repeat(1500);
    let mut out = Vec::new();
    let mut refused = None;
    for i in 0..1000 {
        let path = alloc::format!("data/{long}{i}");
        match h.store.read(g, tx, path.as_bytes(), &mut out) {
            Err(XsError::NoEnt) => {}
            other => {
                refused = Some((i, other));
                break;
            }
        }
    }
    let (i, result) = refused.expect("a thousand 1.5 KB reads fit a 64 KiB quota");
    assert_eq!(result, Err(XsError::NoMem));
    assert!(i > 10, "refused after {i} reads");
    assert!(h.store.usage(DomId(3)).unwrap().memory <= u64::from(quota));
    h.store.transaction_end(g, tx, false).unwrap();
    assert_eq!(h.store.usage(DomId(3)).unwrap().memory, before);
    h.checked();
}

/// Found by the store_ops fuzz harness: dom0 gives the root to a guest, the guest creates
/// nodes below it, the guest is released. The root is handed back to dom0 (it cannot be
/// removed) and must not shelter the guest's nodes below it: they are removed as any
/// other nodes the guest owned, so nothing is left owned by a domain that is gone.
/// The root goes back to dom0 only after the released owner's nodes below it are removed:
/// a watcher who could read the root (and so list the removed node) is told of the removal,
/// as it would be if the nodes went one by one.
#[test]
fn removals_at_release_are_reported_with_the_permissions_before_it() {
    let mut h = Host::new();
    let _g1 = h.guest(1);
    let g2 = h.guest(2);
    h.d0().mkdir("/a").unwrap();
    h.d0().set_perms("/a", &perms(&["n1"])).unwrap();
    h.d0().set_perms("/", &perms(&["r1"])).unwrap();
    h.s(g2).watch("/a", "t").unwrap();
    assert_eq!(h.events(g2).len(), 1, "the initial event");
    h.store.release(h.dom0, DomId(1)).unwrap();
    h.checked();
    assert_eq!(h.d0().read("/a"), Err(XsError::NoEnt));
    assert_eq!(h.d0().get_perms("/").unwrap(), perms(&["n0"]));
    assert_eq!(h.events(g2), [ev("/a", "t")]);
}

#[test]
fn releasing_the_owner_of_the_root_removes_its_nodes_below_it() {
    let mut h = Host::new();
    let g = h.guest(1);
    h.d0().set_perms("/", &perms(&["w1", "r0"])).unwrap();
    h.s(g).write("/a/d", b"x").unwrap();
    // dom0's own node there survives (created under the guest's root it inherits the guest
    // as owner, so dom0 takes it).
    h.d0().write("/kept", b"y").unwrap();
    h.d0().set_perms("/kept", &perms(&["n0"])).unwrap();
    assert_eq!(h.d0().get_perms("/a").unwrap(), perms(&["w1", "r0"]));
    h.store.release(h.dom0, DomId(1)).unwrap();
    h.checked();
    assert_eq!(h.d0().get_perms("/").unwrap(), perms(&["n0"]));
    assert_eq!(h.d0().read("/a"), Err(XsError::NoEnt));
    assert_eq!(h.d0().read("/kept").unwrap(), b"y");
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
        assert_eq!(h.s(other).transaction_end(a, true), Ok(()));
        assert_eq!(
            h.d0().directory("/").unwrap().len(),
            1 + usize::from(then_write)
        );
        assert_eq!(h.d0().transaction_end(d, true), expect);
        h.checked();
    }
}
