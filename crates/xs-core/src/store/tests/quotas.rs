//! Quotas and memory accounting, and the scenarios listed after them.

use super::*;

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
    h.s(g).watch("data", "1", None).unwrap();
    assert_eq!(h.s(g).watch("data", "2", None), Err(XsError::NoSpc));
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
fn soft_memory_quota_is_reported_once() {
    let mut h = Host::with(StoreConfig {
        memory_soft: 4000,
        ..StoreConfig::new([1, 2])
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
        ..StoreConfig::new([1, 2])
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
    let known = |h: &Host| h.store.known_domains().collect::<Vec<_>>();
    let before = known(&h);
    let g = h.guest(3);
    h.s(g).write("data/x", b"").unwrap();
    // Refused for not owning the node: the records made for it are dropped again.
    let d0 = h.dom0;
    let unknown = perms(&["n0", "r100", "r200"]);
    assert_eq!(
        h.store
            .set_perms(d0, 0, b"/local/domain/3/data/none", &unknown),
        Err(XsError::NoEnt)
    );
    assert_eq!(known(&h), [before.clone(), vec![DomId(3)]].concat());
    // Allowed, the same request keeps them (for domains introduced later).
    h.d0()
        .set_perms("/local/domain/3/data/x", &perms(&["n3", "r100"]))
        .unwrap();
    assert!(known(&h).contains(&DomId(100)));
    assert!(!known(&h).contains(&DomId(200)));
}

/// The issue: a guest setting permissions that name every domid in turn gave each a domain
/// record, megabytes charged to nobody. A guest's entries for domains the store does not
/// know are dropped instead (C xenstored ignores entries for domains that do not exist);
/// those for known domains still grant access.
#[test]
fn a_guest_naming_every_domid_creates_no_domain_records() {
    let mut h = Host::new();
    let g = h.guest(3);
    let other = h.guest(4);
    h.s(g).write("data/x", b"secret").unwrap();
    let records = |h: &Host| h.store.known_domains().count();
    let before = records(&h);
    for domid in 0..DomId::FIRST_RESERVED.0 {
        let list = [Perm::owner(DomId(3)), Perm::new(DomId(domid), Access::READ)];
        h.store
            .set_perms(g, 0, b"/local/domain/3/data/x", &list)
            .unwrap();
    }
    assert_eq!(records(&h), before);
    h.checked();
    // An entry naming a known domain (or DOMID_ANY) is kept and grants access; one naming
    // an unknown domain is dropped, and grants nothing once that domain is introduced.
    h.s(g)
        .set_perms("data/x", &perms(&["n3", "r4", "r9", "b32757"]))
        .unwrap();
    assert_eq!(
        h.s(g).get_perms("data/x").unwrap(),
        perms(&["n3", "r4", "b32757"])
    );
    h.s(g)
        .set_perms("data/x", &perms(&["n3", "r4", "r9"]))
        .unwrap();
    assert_eq!(h.s(g).get_perms("data/x").unwrap(), perms(&["n3", "r4"]));
    assert_eq!(
        h.s(other).read("/local/domain/3/data/x").unwrap(),
        b"secret"
    );
    let late = h.guest(9);
    assert_eq!(
        h.s(late).read("/local/domain/3/data/x"),
        Err(XsError::Acces)
    );
    // The toolstack's entries still give a domain not yet introduced a record.
    h.d0()
        .set_perms("/local/domain/3/data/x", &perms(&["n3", "r20"]))
        .unwrap();
    assert!(h.store.known_domains().any(|d| d == DomId(20)));
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

/// Quotas set for a domain before `INTRODUCE` (as libxl 4.22 sets a guest's
/// `xenstore_quota`) hold once it is introduced; reading them before answers the global
/// values a domain starts with. Ids that can name no domain are `ENOENT`; `u32::MAX` is
/// refused as C refuses it.
#[test]
fn quotas_set_before_introduction_hold() {
    let mut h = Host::with(StoreConfig {
        domain_nodes: false,
        ..StoreConfig::new([1, 2])
    });
    let d0 = h.dom0;
    assert_eq!(
        h.store.get_quota(d0, Some(DomId(9)), QuotaKind::Nodes),
        Ok(1000)
    );
    assert_eq!(h.store.usage(DomId(9)), None, "reading creates nothing");
    h.store
        .set_quota(d0, Some(DomId(9)), QuotaKind::Nodes, 2)
        .unwrap();
    assert_eq!(
        h.store.get_quota(d0, Some(DomId(9)), QuotaKind::Nodes),
        Ok(2)
    );
    assert!(!h.store.is_introduced(DomId(9)));
    let g = h.guest(9);
    h.d0().mkdir("/local/domain/9").unwrap();
    h.d0()
        .set_perms("/local/domain/9", &perms(&["n9"]))
        .unwrap();
    h.s(g).write("a", b"").unwrap();
    assert_eq!(h.s(g).write("b", b""), Err(XsError::NoSpc));
    for bad in [DomId::SELF, DomId::ANY, DomId(0xFFFF)] {
        assert_eq!(
            h.store.set_quota(d0, Some(bad), QuotaKind::Nodes, 1),
            Err(XsError::NoEnt)
        );
        assert_eq!(
            h.store.get_quota(d0, Some(bad), QuotaKind::Nodes),
            Err(XsError::NoEnt)
        );
    }
    assert_eq!(
        h.store.set_quota(d0, None, QuotaKind::Nodes, u32::MAX),
        Err(XsError::Inval)
    );
    // Released, the domain's own values go with its record.
    h.store.release(d0, DomId(9)).unwrap();
    assert_eq!(
        h.store.get_quota(d0, Some(DomId(9)), QuotaKind::Nodes),
        Ok(1000)
    );
    h.checked();
}

/// `soft-memory`: global and per domain; reaching it is reported, never refused; only
/// memory has a soft level.
#[test]
fn per_domain_soft_memory_quota() {
    let mut h = Host::new();
    let g = h.guest(3);
    let g4 = h.guest(4);
    let d0 = h.dom0;
    let soft = QuotaName::soft(QuotaKind::Memory).unwrap();
    assert_eq!(h.store.get_quota(d0, None, soft), Ok(2 << 20));
    assert_eq!(h.store.get_quota(d0, Some(DomId(3)), soft), Ok(2 << 20));
    let used = h.store.usage(DomId(3)).unwrap().memory as u32;
    h.store
        .set_quota(d0, Some(DomId(3)), soft, used + 1000)
        .unwrap();
    assert_eq!(h.store.get_quota(d0, Some(DomId(3)), soft), Ok(used + 1000));
    assert_eq!(h.store.get_quota(d0, None, soft), Ok(2 << 20));
    for i in 0..20 {
        h.s(g)
            .write(&alloc::format!("data/{i}"), &[b'x'; 100])
            .unwrap();
        h.s(g4)
            .write(&alloc::format!("data/{i}"), &[b'x'; 100])
            .unwrap();
    }
    assert_eq!(h.store.take_warnings(), [DomId(3)]);
    // The global soft level, set through SET_QUOTA, is what CONTROL quota-soft shows.
    h.store.set_quota(d0, None, soft, 1234).unwrap();
    assert_eq!(h.store.memory_soft_quota(), 1234);
    let soft_nodes = QuotaName {
        kind: QuotaKind::Nodes,
        soft: true,
    };
    assert_eq!(
        h.store.set_quota(d0, None, soft_nodes, 1),
        Err(XsError::Inval)
    );
    assert_eq!(
        h.store.get_quota(g, Some(DomId(3)), soft),
        Err(XsError::Acces)
    );
}
