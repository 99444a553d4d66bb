//! Domains: introduction, release, shutdown and domid reuse.

use super::*;

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
        ..StoreConfig::new([1, 2])
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
    h.s(g).watch("/granted", "w", None).unwrap();
    let tx = h.s(g).transaction_start().unwrap();
    assert!(h.store.usage(DomId(7)).unwrap().nodes > 0);
    let watcher = h.store.connect(DomId::DOM0).unwrap();
    h.s(watcher).watch("/elsewhere", "gone", None).unwrap();
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
        ..StoreConfig::new([1, 2])
    });
    h.d0().mkdir("/local/domain/20").unwrap();
    h.d0()
        .set_perms("/local/domain/20", &perms(&["n0", "r20"]))
        .unwrap();
    let g = h.guest(20);
    assert_eq!(h.s(g).read("/local/domain/20").unwrap(), b"");
}

#[test]
fn privileged_domains_can_be_introduced_but_not_released() {
    let mut h = Host::with(StoreConfig {
        privileged: alloc::vec![DomId(3)],
        ..StoreConfig::new([1, 2])
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
    h.s(g2).watch("/a", "t", None).unwrap();
    assert_eq!(h.events(g2).len(), 1, "the initial event");
    h.store.release(h.dom0, DomId(1)).unwrap();
    h.checked();
    assert_eq!(h.d0().read("/a"), Err(XsError::NoEnt));
    assert_eq!(h.d0().get_perms("/").unwrap(), perms(&["n0"]));
    assert_eq!(h.events(g2), [ev("/a", "t")]);
}

/// Found by the store_ops fuzz harness: dom0 gives the root to a guest, the guest creates
/// nodes below it, the guest is released. The root is handed back to dom0 (it cannot be
/// removed) and must not shelter the guest's nodes below it: they are removed as any
/// other nodes the guest owned, so nothing is left owned by a domain that is gone.
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

/// C xenstored's `-K` (`orphans_to`): a released domain's nodes stay, owned by the heir,
/// with their access for others and their other entries, less those naming the gone
/// domain; nothing fires; the domain's record still goes, so a later domain with the same
/// id owns none of them.
#[test]
fn kept_orphans_go_to_the_heir() {
    let mut h = Host::with(StoreConfig {
        orphans_to: Some(DomId::DOM0),
        domain_nodes: false,
        ..StoreConfig::new([1, 2])
    });
    let g = h.guest(7);
    let _g8 = h.guest(8);
    h.d0().mkdir("/shared").unwrap();
    h.d0().set_perms("/shared", &perms(&["n7"])).unwrap();
    h.s(g).write("/shared/a/b", b"x").unwrap();
    h.s(g)
        .set_perms("/shared/a", &perms(&["r7", "w8", "b7"]))
        .unwrap();
    let watcher = h.store.connect(DomId::DOM0).unwrap();
    h.s(watcher).watch("/shared", "w", None).unwrap();
    h.events(watcher);
    h.store.release(h.dom0, DomId(7)).unwrap();
    h.checked();
    assert_eq!(h.events(watcher), []);
    assert_eq!(h.d0().read("/shared/a/b").unwrap(), b"x");
    assert_eq!(h.d0().get_perms("/shared").unwrap(), perms(&["n0"]));
    assert_eq!(h.d0().get_perms("/shared/a").unwrap(), perms(&["r0", "w8"]));
    assert_eq!(h.d0().get_perms("/shared/a/b").unwrap(), perms(&["n0"]));
    assert_eq!(h.store.usage(DomId(7)), None);
    let g2 = h.guest(7);
    assert_eq!(h.store.usage(DomId(7)).unwrap().nodes, 0);
    assert_eq!(h.s(g2).write("/shared/a/b", b"y"), Err(XsError::Acces));
}

/// `SET_FEATURE` as C xenstored 4.22 answers it: before `INTRODUCE` only, never for dom0
/// (`EBUSY`), only bits the store has (`EINVAL`), only ids that can name a domain
/// (`ENOENT`); the bits set are what the domain is offered once introduced.
#[test]
fn set_feature_before_introduction_only() {
    let mut h = Host::new();
    let d0 = h.dom0;
    assert_eq!(h.store.set_features(d0, DomId(4), features::ERROR), Ok(()));
    assert_eq!(
        h.store.get_features(d0, Some(DomId(4))),
        Ok(features::ERROR)
    );
    assert_eq!(
        h.store.set_features(d0, DomId(4), features::ALL + 1),
        Err(XsError::Inval)
    );
    assert_eq!(h.store.set_features(d0, DomId::ANY, 0), Err(XsError::NoEnt));
    assert_eq!(
        h.store.get_features(d0, Some(DomId::SELF)),
        Err(XsError::NoEnt)
    );
    assert_eq!(h.store.set_features(d0, DomId::DOM0, 0), Err(XsError::Busy));
    let g = h.guest(4);
    assert_eq!(h.store.domain_features(DomId(4)), features::ERROR);
    assert_eq!(h.store.get_features(g, None), Ok(features::ERROR));
    assert_eq!(h.store.set_features(d0, DomId(4), 0), Err(XsError::Busy));
    // Checked in C's order: introduced before the bits.
    assert_eq!(
        h.store.set_features(d0, DomId(4), u32::MAX),
        Err(XsError::Busy)
    );
    assert_eq!(h.store.set_features(g, DomId(5), 0), Err(XsError::Acces));
    assert_eq!(h.store.get_features(g, Some(DomId(4))), Err(XsError::Acces));
    // A domain never named has all features.
    assert_eq!(h.store.get_features(d0, Some(DomId(9))), Ok(features::ALL));
}
