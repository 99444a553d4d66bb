//! The stub-domain flow against [`FakeServices`], with guests driving their ends of the
//! rings through [`xs_ring::Guest`].

use std::sync::Arc;
use std::vec::Vec;

use xs_core::wire::{MsgType, push_message};
use xs_ring::SharedPage;
use xs_ring::layout::{ERROR_PROTO, RECONNECT};

use super::*;
use crate::fake::{FakeRing, FakeServices};
use crate::testutil::{Client, Msg, watch_event};

/// A guest's client on a fake ring page.
fn client(domid: DomId, page: &Arc<SharedPage>) -> Client<FakeRing> {
    Client::new(domid, page.clone())
}

/// Starts a stub domain on `fake` serving `domid` through `ring` and `port` first.
fn boot(
    fake: FakeServices,
    domid: DomId,
    ring: BootRing<FakeRing>,
    port: BootPort,
) -> Result<StubDomain<FakeServices>, Error> {
    StubDomain::new(fake, StubConfig::default(), Bootstrap { domid, ring, port })
}

/// A store with dom0 served, and dom0's client.
struct Rig {
    stub: StubDomain<FakeServices>,
    dom0: Client<FakeRing>,
    guests: Vec<Client<FakeRing>>,
}

impl Rig {
    fn new() -> Rig {
        let mut fake = FakeServices::new();
        let page = fake.create_domain(DomId::DOM0);
        let stub = boot(
            fake,
            DomId::DOM0,
            BootRing::Grant { gfn: 0 },
            BootPort::Remote(1),
        )
        .unwrap();
        Rig {
            stub,
            dom0: client(DomId::DOM0, &page),
            guests: Vec::new(),
        }
    }

    fn fake(&mut self) -> &mut FakeServices {
        self.stub.services_mut()
    }

    /// The client sends a request and the store gets the event; returns what the client
    /// then has in its reply ring.
    fn request(&mut self, who: Who, kind: MsgType, payload: &[u8]) -> Vec<Msg> {
        let client = self.client(who);
        client.send(kind, payload);
        let domid = client.domid;
        let port = self.stub.local_port(domid).expect("not served");
        self.stub.on_event(port);
        self.client(who).receive()
    }

    /// The reply to a request (the first message; events may follow).
    fn ask(&mut self, who: Who, kind: MsgType, payload: &[u8]) -> Msg {
        let mut msgs = self.request(who, kind, payload);
        assert!(!msgs.is_empty(), "no reply to {kind:?}");
        msgs.remove(0)
    }

    fn client(&mut self, who: Who) -> &mut Client<FakeRing> {
        match who {
            Who::Dom0 => &mut self.dom0,
            Who::Guest(i) => &mut self.guests[i],
        }
    }

    /// dom0 introduces `domid` (whose kernel allocated `remote` for the store).
    /// Returns the guest's index and dom0's reply (events that came with it are dropped).
    fn introduce(&mut self, domid: u16, remote: u32) -> (usize, Msg) {
        let (g, mut msgs) = self.introduce_all(domid, remote);
        (g, msgs.remove(0))
    }

    /// Returns the guest's index and everything dom0 received.
    fn introduce_all(&mut self, domid: u16, remote: u32) -> (usize, Vec<Msg>) {
        let page = self.fake().create_domain(DomId(domid));
        let body = format!("{domid}\0{}\0{remote}\0", 0xfeffc + u64::from(domid));
        let reply = self.request(Who::Dom0, MsgType::Introduce, body.as_bytes());
        self.guests.push(client(DomId(domid), &page));
        (self.guests.len() - 1, reply)
    }
}

#[derive(Clone, Copy)]
enum Who {
    Dom0,
    Guest(usize),
}

const EVENT: u32 = MsgType::WatchEvent as u32;
const ERROR: u32 = MsgType::Error as u32;

#[test]
fn dom0_is_served_from_the_start() {
    let mut rig = Rig::new();
    let port = rig.stub.local_port(DomId::DOM0).unwrap();
    assert_eq!(rig.fake().remote_port(port), Some((DomId::DOM0, 1)));
    // Told the store is there.
    assert_eq!(rig.fake().take_notified(), [port]);
    let page = rig.fake().page(DomId::DOM0).unwrap();
    assert_eq!(
        page.load(Field::ServerFeatures),
        FEATURE_RECONNECTION | FEATURE_ERROR
    );
    let r = rig.ask(Who::Dom0, MsgType::Write, b"/tool/x\0yes");
    assert_eq!((r.kind, r.text()), (MsgType::Write as u32, "OK\0".into()));
    let r = rig.ask(Who::Dom0, MsgType::Read, b"/tool/x\0");
    assert_eq!(r.payload, b"yes");
    // Every reply was followed by a notification.
    assert_eq!(rig.fake().take_notified(), [port, port]);
    let log = rig.stub.take_log();
    assert!(log.iter().any(|l| l.contains("serving dom0")), "{log:?}");
}

/// The whole life of a guest: introduced, served, watched, shut down, dead, and a new guest
/// with the same domid starting clean.
#[test]
fn guest_lifecycle() {
    let mut rig = Rig::new();
    // dom0 watches domains come and go.
    let msgs = rig.request(Who::Dom0, MsgType::Watch, b"@releaseDomain\0rel\0");
    assert_eq!(msgs[0].text(), "OK\0");
    assert_eq!(msgs[1].payload, watch_event("@releaseDomain", "rel"));
    let msgs = rig.request(Who::Dom0, MsgType::Watch, b"@introduceDomain\0intro\0");
    assert_eq!(msgs.len(), 2);
    rig.fake().take_notified();

    // INTRODUCE: the ring is mapped, the port bound, and @introduceDomain fires.
    let (g, msgs) = rig.introduce_all(5, 3);
    assert_eq!(msgs[0].text(), "OK\0");
    assert_eq!(msgs[1].kind, EVENT);
    assert_eq!(msgs[1].payload, watch_event("@introduceDomain", "intro"));
    assert!(rig.fake().is_mapped(DomId(5)));
    let port5 = rig.stub.local_port(DomId(5)).unwrap();
    assert_eq!(rig.fake().remote_port(port5), Some((DomId(5), 3)));
    assert!(rig.fake().take_notified().contains(&port5));
    assert_eq!(rig.stub.served().collect::<Vec<_>>(), [DomId(0), DomId(5)]);

    // The guest uses its ring.
    let r = rig.ask(Who::Guest(g), MsgType::Write, b"data/x\0hello");
    assert_eq!(r.text(), "OK\0");
    let r = rig.ask(Who::Guest(g), MsgType::GetDomainPath, b"5\0");
    assert_eq!(r.text(), "/local/domain/5\0");
    let r = rig.ask(Who::Dom0, MsgType::Read, b"/local/domain/5/data/x\0");
    assert_eq!(r.payload, b"hello");
    // A guest may not read dom0's nodes.
    let r = rig.ask(Who::Guest(g), MsgType::Read, b"/tool/xenstored\0");
    assert_eq!((r.kind, r.text()), (ERROR, "EACCES\0".into()));

    // Watch events cross from one ring to another, with a notification.
    let msgs = rig.request(Who::Guest(g), MsgType::Watch, b"data/x\0mine\0");
    assert_eq!(msgs.len(), 2);
    rig.fake().take_notified();
    let r = rig.ask(Who::Dom0, MsgType::Write, b"/local/domain/5/data/x\0bye");
    assert_eq!(r.text(), "OK\0");
    assert!(rig.fake().take_notified().contains(&port5));
    let ev = rig.guests[g].receive();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].payload, watch_event("data/x", "mine"));

    // Shut down: @releaseDomain fires, once.
    rig.fake().set_state(DomId(5), DomainState::Shutdown);
    rig.stub.on_dom_exc();
    let ev = rig.dom0.receive();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].payload, watch_event("@releaseDomain", "rel"));
    rig.stub.on_dom_exc();
    assert!(rig.dom0.receive().is_empty());
    assert!(rig.fake().is_mapped(DomId(5)));

    // Dead: forgotten, unmapped, unbound; @releaseDomain fires for the destruction.
    rig.fake().set_state(DomId(5), DomainState::Dying);
    rig.stub.on_dom_exc();
    let ev = rig.dom0.receive();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].payload, watch_event("@releaseDomain", "rel"));
    assert!(!rig.fake().is_mapped(DomId(5)));
    assert_eq!(rig.fake().unmapped(), [DomId(5)]);
    assert_eq!(rig.fake().unbound(), [port5]);
    assert_eq!(rig.stub.local_port(DomId(5)), None);
    assert!(!rig.stub.store().is_introduced(DomId(5)));
    let r = rig.ask(Who::Dom0, MsgType::Read, b"/local/domain/5/data/x\0");
    assert_eq!(r.text(), "ENOENT\0");
    // An event on the old port is ignored.
    rig.stub.on_event(port5);

    // A new domain 5: a clean slate.
    let (g2, reply) = rig.introduce(5, 9);
    assert_eq!(reply.text(), "OK\0");
    let _ = rig.dom0.receive();
    let port5b = rig.stub.local_port(DomId(5)).unwrap();
    assert_ne!(port5b, port5);
    let r = rig.ask(Who::Guest(g2), MsgType::Read, b"data/x\0");
    assert_eq!(r.text(), "ENOENT\0");
    let r = rig.ask(Who::Guest(g2), MsgType::Read, b"/local/domain/5\0");
    assert_eq!(r.kind, MsgType::Read as u32);
}

#[test]
fn release_unmaps_and_unbinds() {
    let mut rig = Rig::new();
    let (_, reply) = rig.introduce(7, 2);
    assert_eq!(reply.text(), "OK\0");
    let port = rig.stub.local_port(DomId(7)).unwrap();
    let r = rig.ask(Who::Dom0, MsgType::Release, b"7\0");
    assert_eq!(r.text(), "OK\0");
    assert_eq!(rig.fake().unmapped(), [DomId(7)]);
    assert_eq!(rig.fake().unbound(), [port]);
    assert_eq!(rig.stub.local_port(DomId(7)), None);
    let r = rig.ask(Who::Dom0, MsgType::IsDomainIntroduced, b"7\0");
    assert_eq!(r.text(), "F\0");
}

#[test]
fn failed_map_or_bind_forgets_the_domain() {
    let mut rig = Rig::new();
    rig.fake().create_domain(DomId(8));
    rig.fake().fail_map(DomId(8));
    let r = rig.ask(Who::Dom0, MsgType::Introduce, b"8\x001\x002\0");
    // The reply was decided before the ring could be mapped (see the crate notes).
    assert_eq!(r.text(), "OK\0");
    assert!(!rig.stub.store().is_introduced(DomId(8)));
    assert_eq!(rig.stub.local_port(DomId(8)), None);

    rig.fake().fail_bind(DomId(8));
    let r = rig.ask(Who::Dom0, MsgType::Introduce, b"8\x001\x002\0");
    assert_eq!(r.text(), "OK\0");
    assert!(!rig.stub.store().is_introduced(DomId(8)));
    assert_eq!(rig.fake().unmapped(), [DomId(8)]);
    assert!(!rig.fake().is_mapped(DomId(8)));
    let log = rig.stub.take_log();
    assert!(
        log.iter().any(|l| l.contains("mapping the ring failed")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("binding its port 2 failed")),
        "{log:?}"
    );
    // A working third attempt.
    let r = rig.ask(Who::Dom0, MsgType::Introduce, b"8\x001\x002\0");
    assert_eq!(r.text(), "OK\0");
    assert!(rig.stub.local_port(DomId(8)).is_some());
}

#[test]
fn ring_evtchn_port_overrides_and_reintroduce_rebinds() {
    let mut rig = Rig::new();
    // A dom0less guest names its port in the ring.
    let page = rig.fake().create_domain(DomId(6));
    page.store(Field::EvtchnPort, 44);
    let r = rig.ask(Who::Dom0, MsgType::Introduce, b"6\x001\x002\0");
    assert_eq!(r.text(), "OK\0");
    let first = rig.stub.local_port(DomId(6)).unwrap();
    assert_eq!(rig.fake().remote_port(first), Some((DomId(6), 44)));
    // INTRODUCE again (after a resume): only the channel is rebound.
    let r = rig.ask(Who::Dom0, MsgType::Introduce, b"6\x001\x005\0");
    assert_eq!(r.text(), "OK\0");
    let second = rig.stub.local_port(DomId(6)).unwrap();
    assert_ne!(first, second);
    assert_eq!(rig.fake().remote_port(second), Some((DomId(6), 5)));
    assert_eq!(rig.fake().unbound(), [first]);
    assert!(rig.fake().unmapped().is_empty());
    let mut guest = client(DomId(6), &page);
    guest.send(MsgType::Read, b"domid\0");
    rig.stub.on_event(second);
    assert_eq!(guest.receive()[0].payload, b"6");
}

#[test]
fn a_broken_ring_is_dropped_until_reconnection() {
    let mut rig = Rig::new();
    let (g, _) = rig.introduce(4, 1);
    let port = rig.stub.local_port(DomId(4)).unwrap();
    let page = rig.fake().page(DomId(4)).unwrap();
    // A header announcing more than 4096 bytes.
    let mut bad = Vec::new();
    push_message(&mut bad, MsgType::Read as u32, 1, 0, b"");
    bad[12..16].copy_from_slice(&5000u32.to_le_bytes());
    rig.guests[g].guest.write(&bad).unwrap();
    rig.stub.on_event(port);
    assert_eq!(page.load(Field::Error), ERROR_PROTO);
    assert!(!rig.stub.has_work());
    // dom0 is still served.
    let r = rig.ask(Who::Dom0, MsgType::Read, b"/local/domain/4/domid\0");
    assert_eq!(r.payload, b"4");
    // The guest asks for a reconnection: the ring is reset and served again.
    rig.guests[g].guest.request_reconnect();
    assert_eq!(page.load(Field::Connection), RECONNECT);
    rig.stub.on_event(port);
    assert_eq!(page.load(Field::Error), 0);
    assert!(rig.guests[g].guest.reconnected());
    rig.guests[g].partial.clear();
    let r = rig.ask(Who::Guest(g), MsgType::Read, b"domid\0");
    assert_eq!(r.payload, b"4");
}

/// A guest that writes requests and never reads its replies: the store serves until the
/// reply ring is full and the connection stops taking input, then waits for the guest
/// (no busy loop, nothing pending), and resumes when the guest reads.
#[test]
fn a_guest_that_does_not_read_is_waited_for() {
    let mut rig = Rig::new();
    let (g, _) = rig.introduce(3, 1);
    let port = rig.stub.local_port(DomId(3)).unwrap();
    let mut sent = 0;
    for _ in 0..200 {
        let mut bytes = Vec::new();
        push_message(&mut bytes, MsgType::Read as u32, 1, 0, b"domid\0");
        let written = rig.guests[g].guest.write(&bytes).unwrap();
        if written < bytes.len() {
            break;
        }
        sent += 1;
        rig.stub.on_event(port);
    }
    assert!(sent > 10);
    assert!(!rig.stub.has_work());
    let mut got = 0;
    for _ in 0..100 {
        let n = rig.guests[g].receive().len();
        got += n;
        rig.stub.on_event(port);
        if n == 0 && !rig.stub.has_work() {
            break;
        }
    }
    assert!(got >= sent, "got {got} of {sent}");
}

#[test]
fn bootstrap_variants() {
    // The port from the ring page.
    let mut fake = FakeServices::new();
    let page = fake.create_domain(DomId::DOM0);
    page.store(Field::EvtchnPort, 12);
    let stub = boot(
        fake,
        DomId::DOM0,
        BootRing::Grant { gfn: 0 },
        BootPort::FromRing,
    )
    .unwrap();
    let port = stub.local_port(DomId::DOM0).unwrap();
    assert_eq!(stub.services().remote_port(port), Some((DomId::DOM0, 12)));

    // No port anywhere: refused, and the ring unmapped again.
    let mut fake = FakeServices::new();
    fake.create_domain(DomId::DOM0);
    let err = boot(
        fake,
        DomId::DOM0,
        BootRing::Grant { gfn: 0 },
        BootPort::FromRing,
    )
    .unwrap_err();
    assert_eq!(err, Error::NoEventChannel);

    // An already mapped ring and bound port, for a privileged domain other than dom0.
    let mut fake = FakeServices::new();
    let page = fake.create_domain(DomId(2));
    let stub = boot(
        fake,
        DomId(2),
        BootRing::Mapped(page.clone()),
        BootPort::Local(77),
    )
    .unwrap();
    assert_eq!(stub.local_port(DomId(2)), Some(77));
    assert!(stub.store().is_privileged(DomId(2)));
    let mut c = client(DomId(2), &page);
    let mut stub = stub;
    c.send(MsgType::Write, b"/tool/y\0z");
    stub.on_event(77);
    assert_eq!(c.receive()[0].text(), "OK\0");

    // A domain that cannot be mapped.
    let err = boot(
        FakeServices::new(),
        DomId::DOM0,
        BootRing::Grant { gfn: 0 },
        BootPort::Remote(1),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Hypercall(_)));
}

#[test]
fn hash_key_comes_from_entropy() {
    let rig = Rig::new();
    assert_ne!(
        rig.stub.store().config().hash_key,
        StoreConfig::default().hash_key
    );
}

#[test]
fn control_print_reaches_the_log() {
    let mut rig = Rig::new();
    let r = rig.ask(Who::Dom0, MsgType::Control, b"print\0hello log\0");
    assert_eq!(r.text(), "OK\0");
    let log = rig.stub.take_log();
    assert!(log.iter().any(|l| l == "print: hello log"), "{log:?}");
}
