//! Watches: registration, matching, permissions and the bounded event queue.

use super::*;

// ----- watches -------------------------------------------------------------------------

#[test]
fn watches_fire_on_registration_and_for_the_subtree() {
    let mut h = Host::new();
    let w = h.store.connect(DomId::DOM0).unwrap();
    h.s(w).watch("/a", "tok", None).unwrap();
    assert_eq!(h.events(w), [ev("/a", "tok")]);
    assert_eq!(h.s(w).watch("/a", "tok", None), Err(XsError::Exist));
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
    h.s(w).watch("/dev/vif/0/state", "st", None).unwrap();
    h.s(w).watch("/dev", "top", None).unwrap();
    h.s(w).watch("/dev/vif/9", "missing", None).unwrap();
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
    h.s(g).watch("device", "dev", None).unwrap();
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
    h.s(g).watch("/open", "t", None).unwrap();
    h.events(g);
    h.d0().write("/open/visible", b"").unwrap();
    h.d0().write("/open/hidden/x", b"").unwrap();
    assert_eq!(
        h.events(g),
        [ev("/open/visible", "t"), ev("/open/hidden/x", "t")]
    );
    // Taken first: an identical event still pending would be dropped (C xenstored's rule).
    h.d0().set_perms("/open/hidden", &perms(&["n0"])).unwrap();
    h.d0().set_perms("/open/hidden/x", &perms(&["n0"])).unwrap();
    assert_eq!(
        h.events(g),
        [
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
    h.s(w).watch("/t", "t", None).unwrap();
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
    h.s(g).watch("@introduceDomain", "in", None).unwrap();
    h.s(g).watch("@releaseDomain/4", "four", None).unwrap();
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
        ..StoreConfig::new([1, 2])
    });
    let w = h.store.connect(DomId::DOM0).unwrap();
    h.s(w).watch("/q", "q", None).unwrap();
    h.s(w).watch("/r", "r", None).unwrap();
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
    h.s(g).watch("/shared", "d", None).unwrap();
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
    h.s(g).watch("/shared", "d", None).unwrap();
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

// ----- identical pending events (C xenstored's `send_event`) ------------------------------

#[test]
fn an_event_identical_to_a_queued_one_is_dropped_until_that_one_is_taken() {
    let mut h = Host::new();
    let w = h.store.connect(DomId::DOM0).unwrap();
    h.s(w).watch("/a", "tok", None).unwrap();
    h.events(w);
    for v in [b"1", b"2", b"3"] {
        h.d0().write("/a/b", v).unwrap();
    }
    assert_eq!(h.store.queued_events(w), 1);
    h.d0().write("/a/c", b"").unwrap();
    h.d0().write("/a/b", b"4").unwrap();
    assert_eq!(h.events(w), [ev("/a/b", "tok"), ev("/a/c", "tok")]);
    // Taken: the next change is reported again.
    h.d0().write("/a/b", b"5").unwrap();
    assert_eq!(h.events(w), [ev("/a/b", "tok")]);
    // Only the bytes decide, not the watch: a second watch with the same token reports the
    // same event, which is dropped too; another token is another event.
    h.s(w).watch("/a/b", "tok", None).unwrap();
    h.s(w).watch("/a/b", "other", None).unwrap();
    h.events(w);
    h.d0().write("/a/b", b"6").unwrap();
    assert_eq!(h.events(w), [ev("/a/b", "tok"), ev("/a/b", "other")]);
    h.checked();
}

#[test]
fn relative_events_are_compared_as_reported() {
    let mut h = Host::new();
    let g = h.guest(4);
    h.s(g).watch("data", "rel", None).unwrap();
    h.s(g).watch("/local/domain/4/data/x", "rel", None).unwrap();
    h.events(g);
    h.s(g).write("data/x", b"1").unwrap();
    h.s(g).write("data/x", b"2").unwrap();
    // The same change reported two ways (relative and absolute): different paths, so two
    // events; each repeat is dropped.
    assert_eq!(
        h.events(g),
        [ev("data/x", "rel"), ev("/local/domain/4/data/x", "rel")]
    );
}

#[test]
fn special_events_are_never_dropped() {
    let mut h = Host::new();
    let d0 = h.dom0;
    h.store.watch(d0, b"@introduceDomain", b"in", None).unwrap();
    h.store.watch(d0, b"@releaseDomain", b"out", None).unwrap();
    h.events(d0);
    h.guest(5);
    h.guest(6);
    h.store.release(d0, DomId(5)).unwrap();
    h.store.release(d0, DomId(6)).unwrap();
    assert_eq!(
        h.events(d0),
        [
            ev("@introduceDomain", "in"),
            ev("@introduceDomain", "in"),
            ev("@releaseDomain", "out"),
            ev("@releaseDomain", "out"),
        ]
    );
}

/// The bound still coalesces distinct events into catch-up events; a duplicate of a queued
/// event is not a missed one (the queued one reports it), and a catch-up event identical
/// to a queued one is dropped with the watch's debt.
#[test]
fn duplicates_at_the_bound_owe_no_catch_up() {
    let mut h = Host::with(StoreConfig {
        event_queue_len: 2,
        ..StoreConfig::new([1, 2])
    });
    let w = h.store.connect(DomId::DOM0).unwrap();
    h.s(w).watch("/q", "q", None).unwrap();
    h.d0().write("/q/a", b"").unwrap();
    // Full: [/q, /q/a]. Repeats of /q/a are dropped, not missed.
    for _ in 0..5 {
        h.d0().write("/q/a", b"1").unwrap();
    }
    assert_eq!(h.events(w), [ev("/q", "q"), ev("/q/a", "q")]);
    // Full again: [/q/a, /q]; /q/b does not fit, the watch misses it.
    h.d0().write("/q/a", b"2").unwrap();
    h.d0().write("/q", b"2").unwrap();
    h.d0().write("/q/b", b"").unwrap();
    // Its catch-up event (/q) would be identical to the queued /q: dropped, and the watch
    // owes nothing more.
    assert_eq!(h.events(w), [ev("/q/a", "q"), ev("/q", "q")]);
    assert_eq!(h.events(w), []);
    // Distinct events past the bound coalesce as before.
    for i in 0..10 {
        h.d0().write(&alloc::format!("/q/n{i}"), b"").unwrap();
    }
    assert_eq!(
        h.events(w),
        [ev("/q/n0", "q"), ev("/q/n1", "q"), ev("/q", "q")]
    );
    h.checked();
}

/// Dropped events cost nothing; queued ones are charged until taken.
#[test]
fn dropped_duplicates_are_not_charged() {
    let mut h = Host::new();
    let g = h.guest(2);
    h.s(g).watch("data", "d", None).unwrap();
    h.events(g);
    let memory = |h: &Host| h.store.usage(DomId(2)).unwrap().memory;
    h.s(g).write("data/x", b"v").unwrap();
    h.events(g);
    let idle = memory(&h);
    h.d0().write("/local/domain/2/data/x", b"v").unwrap();
    let with_one = memory(&h);
    assert!(with_one > idle);
    for _ in 0..100 {
        h.d0().write("/local/domain/2/data/x", b"v").unwrap();
    }
    assert_eq!(memory(&h), with_one);
    assert_eq!(h.store.queued_events(g), 1);
    h.events(g);
    assert_eq!(memory(&h), idle);
    h.checked();
}

/// The issue's measurement, in the store: a watcher that does not read while nodes it
/// watches are written 5000 times. C xenstored keeps one event pending per path and token;
/// so does the store's queue.
#[test]
fn a_write_storm_queues_one_event_per_path_and_token() {
    let mut h = Host::new();
    let g = h.guest(3);
    h.s(g).watch("data", "a", None).unwrap();
    h.s(g).watch("data/node", "b", None).unwrap();
    h.s(g).write("data/node", b"").unwrap();
    h.s(g).write("data/other", b"").unwrap();
    for i in 0..5000u32 {
        let node = if i % 2 == 0 { "node" } else { "other" };
        h.d0()
            .write(&alloc::format!("/local/domain/3/data/{node}"), b"v")
            .unwrap();
    }
    let mut got = h.events(g);
    got.sort();
    assert_eq!(
        got,
        [
            ev("data", "a"),
            ev("data/node", "a"),
            ev("data/node", "b"),
            ev("data/other", "a"),
        ]
    );
}
