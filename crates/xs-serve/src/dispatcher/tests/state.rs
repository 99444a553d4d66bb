//! The dispatcher's state saved and restored into a new dispatcher over the same pages and
//! ports (what a live update or a new image finds: [`FakeServices::exec`]).

use std::string::String;

use xs_core::state::{self, Global, RestoredConnection, SaveOptions, SavedConnection, Transport};

use super::*;
use crate::dispatcher::map_again;

/// Restores `stream` into a dispatcher over `fake`, with dom0's ring given by the program
/// (as xs-host gives its kernel's) when `dom0_ring` is set, every other ring mapped
/// through the services.
fn restore_into(
    fake: FakeServices,
    stream: &[u8],
    config: StoreConfig,
    dom0_ring: Option<FakeRing>,
) -> (Dispatcher<FakeServices>, Vec<RestoredConnection>) {
    let restored = state::restore(config, stream, |_, _| {
        (Access::default(), Limits::default())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut dom0_ring = dom0_ring;
    Dispatcher::restore(
        fake,
        restored,
        Limits::default(),
        NoHost,
        |services, domid, intro| match (intro, dom0_ring.take()) {
            (None, Some(page)) => {
                assert_eq!(domid, DomId::DOM0);
                Ok(page)
            }
            (intro, page) => {
                dom0_ring = page;
                map_again(services, domid, intro)
            }
        },
    )
}

/// Saves the rig's state (with `program` as the program's connections), drops its
/// dispatcher, and restores the stream into a new one over the same pages and bound ports.
/// Returns the stream and the program's restored connections.
fn save_and_restore(
    rig: &mut Rig,
    program: &[SavedConnection<'_>],
    dom0_ring: Option<FakeRing>,
    script: impl FnOnce(&mut FakeServices),
) -> (Vec<u8>, Vec<RestoredConnection>) {
    let mut stream = Vec::new();
    let stats = rig
        .stub
        .save_state(
            Global::default(),
            program,
            SaveOptions::default(),
            &mut stream,
        )
        .unwrap();
    assert_eq!(stats.bytes, stream.len() as u64);
    let mut fake = rig.stub.services().exec();
    script(&mut fake);
    let config = StoreConfig {
        hash_key: [fake.entropy(), fake.entropy()],
        ..rig.stub.store().config().clone()
    };
    // The old program is gone (nothing of it is unmapped or unbound: it just stops).
    let placeholder = Dispatcher::new(FakeServices::new(), ServeConfig::default()).unwrap();
    drop(mem::replace(&mut rig.stub, placeholder));
    let (stub, program) = restore_into(fake, &stream, config, dom0_ring);
    rig.stub = stub;
    (stream, program)
}

/// Serves `who` until neither side has anything more; returns every message it got.
fn drain(rig: &mut Rig, who: Who) -> Vec<Message> {
    let domid = rig.client(who).domid;
    let port = rig.stub.local_port(domid).unwrap();
    let mut all = Vec::new();
    for _ in 0..64 {
        let got = rig.client(who).receive();
        let quiet = got.is_empty();
        all.extend(got);
        // The guest read (or not): the store writes what it has left, and says so.
        rig.stub.on_event(port);
        if quiet && !rig.fake().take_notified().contains(&port) {
            break;
        }
    }
    all
}

/// The scene saved by the tests: dom0 (the privileged domain, served from the start) with
/// an open transaction; guest 1 with a watch event and a reply unread in its ring and half
/// a request written; guest 2 with a reply too large for its ring (the rest unsent in its
/// connection) and a watch event queued behind it; an in-process connection of the program
/// with a watch event queued.
struct Scene {
    rig: Rig,
    g1: usize,
    g2: usize,
    /// The program's connection.
    prog: ConnId,
    /// dom0's open transaction.
    tx: u32,
    /// The half-written request of guest 1, and how much of it is in the ring.
    half: Vec<u8>,
    /// The value guest 2 reads.
    big: Vec<u8>,
}

const HALF_WRITTEN: usize = 20;
const HALF_REQ_ID: u32 = 77;

fn scene() -> Scene {
    let mut rig = Rig::new();
    let (g1, r) = rig.introduce(1, 3);
    assert_eq!(r.text(), "OK\0");
    let (g2, r) = rig.introduce(2, 4);
    assert_eq!(r.text(), "OK\0");

    // The program's own connection, watching a path dom0 writes.
    let prog = rig.stub.connect(DomId::DOM0).unwrap();
    rig.stub.session(prog, |s| {
        s.watch("/tool/prog", "p", None).unwrap();
        assert!(s.pop_event().is_some(), "the initial event");
    });

    // Guest 1 watches; guest 2 too.
    let msgs = rig.request(Who::Guest(g1), MsgType::Watch, b"data/w\0w1\0");
    assert_eq!(msgs.len(), 2);
    let msgs = rig.request(Who::Guest(g2), MsgType::Watch, b"data/v\0v2\0");
    assert_eq!(msgs.len(), 2);

    // dom0 opens a transaction and writes in it.
    let r = rig.ask(Who::Dom0, MsgType::TransactionStart, b"\0");
    let tx: u32 = r.text().trim_end_matches('\0').parse().unwrap();
    let r = rig.ask_tx(Who::Dom0, tx, MsgType::Write, b"/tool/tx/a\0in-tx");
    assert_eq!(r.text(), "OK\0");

    // Guest 1: a reply and a watch event unread in its ring.
    rig.client(Who::Guest(g1)).send(MsgType::Read, b"domid\0");
    let port1 = rig.stub.local_port(DomId(1)).unwrap();
    rig.stub.on_event(port1);
    let r = rig.ask(Who::Dom0, MsgType::Write, b"/local/domain/1/data/w/x\0v");
    assert_eq!(r.text(), "OK\0");
    // ... and half a request, which the store has taken into its connection.
    let mut half = Vec::new();
    push_message(
        &mut half,
        MsgType::Write as u32,
        HALF_REQ_ID,
        0,
        b"data/half\0done",
    );
    let n = rig.guests[g1]
        .c
        .ring()
        .write(&half[..HALF_WRITTEN])
        .unwrap();
    assert_eq!(n, HALF_WRITTEN);
    rig.stub.on_event(port1);
    let page1 = rig.fake().page(DomId(1)).unwrap();
    assert_eq!(
        page1.load(Field::ReqCons),
        page1.load(Field::ReqProd),
        "taken"
    );

    // Guest 2: a reply larger than its ring, and a watch event behind it.
    let big: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    // (Written in process: it does not fit dom0's ring in one go.)
    rig.stub
        .session(prog, |s| s.write("/local/domain/2/data/big", &big))
        .unwrap();
    rig.client(Who::Guest(g2))
        .send(MsgType::Read, b"data/big\0");
    let port2 = rig.stub.local_port(DomId(2)).unwrap();
    rig.stub.on_event(port2);
    let r = rig.ask(Who::Dom0, MsgType::Write, b"/local/domain/2/data/v/y\0v");
    assert_eq!(r.text(), "OK\0");

    // The program's connection: an event queued, not taken.
    let r = rig.ask(Who::Dom0, MsgType::Write, b"/tool/prog/z\0v");
    assert_eq!(r.text(), "OK\0");
    assert_eq!(rig.stub.take_local_notifications(), [prog]);
    assert!(!rig.stub.has_work());
    rig.stub.take_log();
    rig.fake().take_notified();
    Scene {
        rig,
        g1,
        g2,
        prog,
        tx,
        half,
        big,
    }
}

fn program_conn(prog: ConnId) -> SavedConnection<'static> {
    SavedConnection {
        id: prog,
        transport: Transport::Socket { fd: -1 },
        protocol: None,
        input: &[],
    }
}

#[test]
fn every_guest_carries_on_across_save_and_restore() {
    let Scene {
        mut rig,
        g1,
        g2,
        prog,
        tx,
        half,
        big,
    } = scene();
    let served: Vec<(DomId, u32)> = rig
        .stub
        .served()
        .map(|d| (d, rig.stub.local_port(d).unwrap()))
        .collect();
    assert_eq!(served.len(), 3);
    let bound = rig.fake().bound_ports();
    let dom0_page = rig.fake().page(DomId::DOM0).unwrap();

    let (_, program) = save_and_restore(&mut rig, &[program_conn(prog)], Some(dom0_page), |_| {});

    // Every ring is served again on its port, nothing bound again or unbound; the guests'
    // rings were mapped again (dom0's was the program's own), and each was notified once.
    let again: Vec<(DomId, u32)> = rig
        .stub
        .served()
        .map(|d| (d, rig.stub.local_port(d).unwrap()))
        .collect();
    assert_eq!(again, served);
    assert_eq!(rig.fake().bound_ports(), bound);
    assert!(rig.fake().unbound().is_empty());
    assert!(!rig.fake().is_mapped(DomId::DOM0), "the program's mapping");
    assert!(rig.fake().is_mapped(DomId(1)) && rig.fake().is_mapped(DomId(2)));
    let notified = rig.fake().take_notified();
    for (_, port) in &served {
        assert!(notified.contains(port), "{port} not kicked: {notified:?}");
    }
    let log = rig.stub.take_log();
    assert!(
        log.iter().all(|l| !l.starts_with(WARNING)),
        "no warning: {log:?}"
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("serving dom") && l.contains(" again on port "))
            .count(),
        3,
        "{log:?}"
    );

    // The program's connection comes back to it, reported notified, its event once.
    assert_eq!(program.len(), 1);
    let prog = program[0].id;
    assert_eq!(program[0].domid, DomId::DOM0);
    assert_eq!(rig.stub.take_local_notifications(), [prog]);
    let events = rig.stub.session(prog, |s| s.drain_events());
    assert_eq!(events, [(b"/tool/prog/z".to_vec(), b"p".to_vec())]);

    // Guest 1: the unread reply and event, once; then its half request completes.
    let msgs = rig.guests[g1].receive();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(
        (msgs[0].msg_type, msgs[0].payload.as_slice()),
        (MsgType::Read as u32, &b"1"[..])
    );
    assert_eq!(msgs[1].payload, watch_event("data/w/x", "w1"));
    rig.guests[g1]
        .c
        .ring()
        .write(&half[HALF_WRITTEN..])
        .unwrap();
    let msgs = drain(&mut rig, Who::Guest(g1));
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(
        (msgs[0].req_id, msgs[0].text()),
        (HALF_REQ_ID, "OK\0".into())
    );
    let r = rig.ask(Who::Dom0, MsgType::Read, b"/local/domain/1/data/half\0");
    assert_eq!(r.payload, b"done");

    // Guest 2: the whole of its big reply, then its event, once each.
    let msgs = drain(&mut rig, Who::Guest(g2));
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0].payload, big);
    assert_eq!(msgs[1].payload, watch_event("data/v/y", "v2"));

    // dom0's transaction commits, with what was written in it.
    let r = rig.ask(Who::Dom0, MsgType::Read, b"/tool/tx/a\0");
    assert_eq!(r.text(), "ENOENT\0", "not outside the transaction");
    let r = rig.ask_tx(Who::Dom0, tx, MsgType::TransactionEnd, b"T\0");
    assert_eq!(r.text(), "OK\0");
    let r = rig.ask(Who::Dom0, MsgType::Read, b"/tool/tx/a\0");
    assert_eq!(r.payload, b"in-tx");
    // dom0's own watch-free ring got nothing else; the program's event fired once only.
    assert!(drain(&mut rig, Who::Dom0).is_empty());
    assert!(rig.stub.session(prog, |s| s.pop_event()).is_none());
    assert!(drain(&mut rig, Who::Guest(g1)).is_empty());
    assert!(drain(&mut rig, Who::Guest(g2)).is_empty());

    // Serving goes on: a new guest is introduced, watches still fire.
    let (g3, r) = rig.introduce(3, 5);
    assert_eq!(r.text(), "OK\0");
    let r = rig.ask(Who::Guest(g3), MsgType::Read, b"domid\0");
    assert_eq!(r.payload, b"3");
    let r = rig.ask(
        Who::Dom0,
        MsgType::Write,
        b"/local/domain/1/data/w/x\0again",
    );
    assert_eq!(r.text(), "OK\0");
    let msgs = drain(&mut rig, Who::Guest(g1));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].payload, watch_event("data/w/x", "w1"));
}

#[test]
fn a_restored_dispatcher_saves_the_same_stream() {
    let Scene { mut rig, prog, .. } = scene();
    let (first, program) = save_and_restore(&mut rig, &[program_conn(prog)], None, |_| {});
    let prog = program[0].id;
    let mut again = Vec::new();
    rig.stub
        .save_state(
            Global::default(),
            &[program_conn(prog)],
            SaveOptions::default(),
            &mut again,
        )
        .unwrap();
    assert!(first.len() > 1000);
    assert!(first == again, "{} and {} bytes", first.len(), again.len());
    // Saving changes nothing: a second save is the same too.
    let mut third = Vec::new();
    rig.stub
        .save_state(
            Global::default(),
            &[program_conn(prog)],
            SaveOptions::default(),
            &mut third,
        )
        .unwrap();
    assert!(third == again);
}

#[test]
fn a_ring_that_cannot_be_mapped_again_is_dropped() {
    let Scene {
        mut rig,
        g1,
        prog,
        half,
        ..
    } = scene();
    let msgs = rig.request(Who::Dom0, MsgType::Watch, b"@releaseDomain\0rel\0");
    assert_eq!(msgs.len(), 2);
    let (g3, _) = rig.introduce(3, 5);
    let port2 = rig.stub.local_port(DomId(2)).unwrap();
    let port3 = rig.stub.local_port(DomId(3)).unwrap();
    // Guest 2's ring cannot be mapped again (it is alive); guest 3 died meanwhile.
    let (_, program) = save_and_restore(&mut rig, &[program_conn(prog)], None, |fake| {
        fake.fail_map(DomId(2));
        fake.destroy_domain(DomId(3));
    });
    assert_eq!(program.len(), 1);
    assert_eq!(
        rig.stub.served().collect::<Vec<_>>(),
        [DomId::DOM0, DomId(1)]
    );
    let log = rig.stub.take_log();
    for d in [2, 3] {
        assert!(
            log.iter().any(|l| l.starts_with(WARNING)
                && l.contains(&format!("dom{d}: its ring could not be mapped again"))),
            "{log:?}"
        );
    }
    let mut unbound = rig.fake().unbound().to_vec();
    unbound.sort();
    assert_eq!(unbound, [port2, port3]);
    // Guest 2 stays known to the store (the toolstack decides); guest 3 is forgotten, and
    // @releaseDomain says so.
    assert!(rig.stub.store().is_introduced(DomId(2)));
    assert!(!rig.stub.store().is_introduced(DomId(3)));
    let msgs = drain(&mut rig, Who::Dom0);
    assert!(
        msgs.iter()
            .any(|m| m.payload == watch_event("@releaseDomain", "rel")),
        "{msgs:?}"
    );
    let r = rig.ask(Who::Dom0, MsgType::Read, b"/local/domain/2/data/v/y\0");
    assert_eq!(r.payload, b"v");
    // The others carry on.
    let msgs = drain(&mut rig, Who::Guest(g1));
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    rig.guests[g1]
        .c
        .ring()
        .write(&half[HALF_WRITTEN..])
        .unwrap();
    let msgs = drain(&mut rig, Who::Guest(g1));
    assert_eq!(
        (msgs.len(), msgs[0].req_id, msgs[0].text()),
        (1, HALF_REQ_ID, "OK\0".into())
    );
    let r = rig.ask(Who::Guest(g1), MsgType::Read, b"domid\0");
    assert_eq!(r.payload, b"1");
    let _ = g3;
}

/// A restored ring connection's input (C xenstored's delayed requests) is taken before the
/// ring's requests, in order.
#[test]
fn restored_input_is_taken_before_the_ring() {
    let mut fake = FakeServices::new();
    let page = fake.create_domain(DomId(4));
    let port = fake.bind_interdomain(DomId(4), 6).unwrap();
    let config = StoreConfig::new([1, 2]);
    let mut store = Store::new(config.clone()).unwrap();
    store
        .introduce_domain(DomId(4), Introduction { gfn: 1, evtchn: 6 })
        .unwrap();
    let conn = store.connect(DomId(4)).unwrap();
    let mut input = Vec::new();
    push_message(&mut input, MsgType::Write as u32, 1, 0, b"data/a\0first");
    push_message(&mut input, MsgType::Read as u32, 2, 0, b"data/a\0");
    let mut stream = Vec::new();
    state::save(
        &mut store,
        Global::default(),
        &[SavedConnection {
            id: conn,
            transport: Transport::Ring {
                port,
                unique_id: None,
            },
            protocol: None,
            input: &input,
        }],
        SaveOptions::default(),
        &mut stream,
    )
    .unwrap();
    // Meanwhile the guest wrote another request into its ring.
    let mut guest = client(DomId(4), &page);
    let mut third = Vec::new();
    push_message(&mut third, MsgType::Write as u32, 3, 0, b"data/a\0second");
    guest.c.ring().write(&third).unwrap();

    let (mut xs, program) = restore_into(fake.exec(), &stream, config, None);
    assert!(program.is_empty());
    assert_eq!(xs.local_port(DomId(4)), Some(port));
    let msgs = guest.receive();
    let got: Vec<(u32, String)> = msgs.iter().map(|m| (m.req_id, m.text())).collect();
    assert_eq!(
        got,
        [(1, "OK\0".into()), (2, "first".into()), (3, "OK\0".into())]
    );
    let dom0 = xs.connect(DomId::DOM0).unwrap();
    let out = xs
        .session(dom0, |s| s.read("/local/domain/4/data/a"))
        .unwrap();
    assert_eq!(out, b"second");
}

/// A ring the previous server had stopped serving (broken by its guest) stays stopped until
/// the guest asks for a reconnection.
#[test]
fn a_broken_ring_stays_broken_across_restore() {
    let mut rig = Rig::new();
    let (g, _) = rig.introduce(4, 1);
    let port = rig.stub.local_port(DomId(4)).unwrap();
    let page = rig.fake().page(DomId(4)).unwrap();
    let mut bad = Vec::new();
    push_message(&mut bad, MsgType::Read as u32, 1, 0, b"");
    bad[12..16].copy_from_slice(&5000u32.to_le_bytes());
    rig.guests[g].c.ring().write(&bad).unwrap();
    rig.stub.on_event(port);
    assert_eq!(page.load(Field::Error), RingFault::Protocol.code());
    rig.stub.take_log();
    save_and_restore(&mut rig, &[], None, |_| {});
    // Not served again (the bad bytes are still in the ring), and no second warning.
    assert_eq!(page.load(Field::Error), RingFault::Protocol.code());
    let log = rig.stub.take_log();
    assert!(log.iter().all(|l| !l.starts_with(WARNING)), "{log:?}");
    assert!(rig.guests[g].receive().is_empty());
    rig.guests[g].c.ring().request_reconnect();
    rig.stub.on_event(port);
    assert!(rig.guests[g].c.ring().reconnected());
    rig.guests[g].c.forget_in_flight();
    let r = rig.ask(Who::Guest(g), MsgType::Read, b"domid\0");
    assert_eq!(r.payload, b"4");
}

/// An introduction the store took and the dispatcher had not carried out yet (its settle
/// rounds were used up) is carried out by the save: the domain is saved as served, and
/// served after the restore. A ring set up for an introduction the store did not take is
/// given back, not saved.
#[test]
fn introductions_pending_at_save_are_carried_out() {
    let mut rig = Rig::new();
    let page6 = rig.fake().create_domain(DomId(6));
    rig.fake().create_domain(DomId(7));
    let stub = &mut rig.stub;
    // What `Dispatcher::introduce` does before it settles.
    protocol::introduce(
        &mut stub.store,
        &mut hooks!(stub),
        DomId(6),
        Introduction { gfn: 1, evtchn: 2 },
    )
    .unwrap();
    // A set-up for dom7 whose introduction the store then refused.
    let ring = stub.services.map_ring(DomId(7), 1).unwrap();
    let local_port = stub.services.bind_interdomain(DomId(7), 2).unwrap();
    let conn = stub.store.connect(DomId(7)).unwrap();
    stub.prepared.insert(
        DomId(7),
        Prepared::Ring {
            ring,
            local_port,
            conn,
        },
    );
    assert!(rig.stub.has_work());
    assert_eq!(rig.stub.local_port(DomId(6)), None);

    let (_, program) = save_and_restore(&mut rig, &[], None, |fake| {
        assert!(fake.local_port(DomId(7)).is_none(), "dom7's port unbound");
    });
    assert!(program.is_empty(), "dom7's connection closed, not saved");
    assert_eq!(
        rig.stub.served().collect::<Vec<_>>(),
        [DomId::DOM0, DomId(6)]
    );
    assert!(!rig.stub.store().is_introduced(DomId(7)));
    rig.guests.push(client(DomId(6), &page6));
    let r = rig.ask(Who::Guest(0), MsgType::Read, b"domid\0");
    assert_eq!(r.payload, b"6");
}
