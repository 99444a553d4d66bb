//! The dispatcher against [`FakeServices`], with guests driving their ends of the rings
//! through [`GuestClient`] (moved from x86-glue's stub-domain flow tests), and the
//! in-process embedding.

use std::format;
use std::sync::Arc;
use std::vec::Vec;

use xs_core::wire::{MsgType, push_message};
use xs_ring::SharedPage;
use xs_ring::layout::RECONNECT;
use xs_ring::{RingFault, ServerFeatures};

use super::*;
use crate::fake::{FakeError, FakeRing, FakeServices};
use crate::guest::{GuestClient, Message};

/// A guest's client on a fake ring page.
struct Client {
    domid: DomId,
    c: GuestClient<FakeRing>,
}

impl Client {
    /// Writes a request into the ring (which must have room).
    fn send(&mut self, kind: MsgType, payload: &[u8]) -> u32 {
        let id = self.c.send(kind, 0, payload).unwrap();
        assert!(!self.c.has_unsent(), "ring full");
        id
    }

    /// Every whole message waiting in the reply ring.
    fn receive(&mut self) -> Vec<Message> {
        self.c.receive().unwrap()
    }
}

fn client(domid: DomId, page: &Arc<SharedPage>) -> Client {
    Client {
        domid,
        c: GuestClient::new(page.clone()),
    }
}

/// The payload of a watch event.
fn watch_event(path: &str, token: &str) -> Vec<u8> {
    format!("{path}\0{token}\0").into_bytes()
}

/// Starts a dispatcher on `fake` serving `domid` through `ring` and `port` first.
fn boot(
    fake: FakeServices,
    domid: DomId,
    ring: BootRing<FakeRing>,
    port: BootPort,
) -> Result<Dispatcher<FakeServices>, Error<FakeError>> {
    Dispatcher::with_bootstrap(
        fake,
        ServeConfig::default(),
        Bootstrap { domid, ring, port },
    )
}

/// A store with dom0 served, and dom0's client.
struct Rig {
    stub: Dispatcher<FakeServices>,
    dom0: Client,
    guests: Vec<Client>,
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
    fn request(&mut self, who: Who, kind: MsgType, payload: &[u8]) -> Vec<Message> {
        let client = self.client(who);
        client.send(kind, payload);
        let domid = client.domid;
        let port = self.stub.local_port(domid).expect("not served");
        self.stub.on_event(port);
        self.client(who).receive()
    }

    /// The reply to a request in transaction `tx`.
    fn ask_tx(&mut self, who: Who, tx: u32, kind: MsgType, payload: &[u8]) -> Message {
        let client = self.client(who);
        client.c.send(kind, tx, payload).unwrap();
        let domid = client.domid;
        let port = self.stub.local_port(domid).expect("not served");
        self.stub.on_event(port);
        let mut msgs = self.client(who).receive();
        assert!(!msgs.is_empty(), "no reply to {kind:?}");
        msgs.remove(0)
    }

    /// The reply to a request (the first message; events may follow).
    fn ask(&mut self, who: Who, kind: MsgType, payload: &[u8]) -> Message {
        let mut msgs = self.request(who, kind, payload);
        assert!(!msgs.is_empty(), "no reply to {kind:?}");
        msgs.remove(0)
    }

    fn client(&mut self, who: Who) -> &mut Client {
        match who {
            Who::Dom0 => &mut self.dom0,
            Who::Guest(i) => &mut self.guests[i],
        }
    }

    /// dom0 introduces `domid` (whose kernel allocated `remote` for the store).
    /// Returns the guest's index and dom0's reply (events that came with it are dropped).
    fn introduce(&mut self, domid: u16, remote: u32) -> (usize, Message) {
        let (g, mut msgs) = self.introduce_all(domid, remote);
        (g, msgs.remove(0))
    }

    /// Returns the guest's index and everything dom0 received.
    fn introduce_all(&mut self, domid: u16, remote: u32) -> (usize, Vec<Message>) {
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
        (ServerFeatures::RECONNECTION | ServerFeatures::ERROR).bits()
    );
    let r = rig.ask(Who::Dom0, MsgType::Write, b"/tool/x\0yes");
    assert_eq!(
        (r.msg_type, r.text()),
        (MsgType::Write as u32, "OK\0".into())
    );
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
    assert_eq!(msgs[1].msg_type, EVENT);
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
    assert_eq!((r.msg_type, r.text()), (ERROR, "EACCES\0".into()));

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
    assert_eq!(r.msg_type, MsgType::Read as u32);
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

/// As C xenstored maps the ring before it answers: a ring or port that cannot be set up is
/// `INTRODUCE`'s error reply, and nothing changed: not introduced, no `@introduceDomain`,
/// nothing left mapped or bound.
#[test]
fn a_ring_that_cannot_be_set_up_refuses_the_introduction() {
    let mut rig = Rig::new();
    let msgs = rig.request(Who::Dom0, MsgType::Watch, b"@introduceDomain\0intro\0");
    assert_eq!(msgs.len(), 2, "the reply and the initial event");
    rig.fake().create_domain(DomId(8));
    rig.fake().fail_map(DomId(8));
    let msgs = rig.request(Who::Dom0, MsgType::Introduce, b"8\x001\x002\0");
    assert_eq!(msgs.len(), 1, "no @introduceDomain: {msgs:?}");
    assert_eq!(
        (msgs[0].msg_type, msgs[0].text()),
        (ERROR, "EINVAL\0".into())
    );
    assert!(!rig.stub.store().is_introduced(DomId(8)));
    assert_eq!(rig.stub.local_port(DomId(8)), None);

    rig.fake().fail_bind(DomId(8));
    let r = rig.ask(Who::Dom0, MsgType::Introduce, b"8\x001\x002\0");
    assert_eq!((r.msg_type, r.text()), (ERROR, "EINVAL\0".into()));
    assert!(!rig.stub.store().is_introduced(DomId(8)));
    assert_eq!(rig.fake().unmapped(), [DomId(8)]);
    assert!(!rig.fake().is_mapped(DomId(8)));
    let r = rig.ask(Who::Dom0, MsgType::Read, b"/local/domain/8\0");
    assert_eq!(r.text(), "ENOENT\0", "no default nodes");
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
    let msgs = rig.request(Who::Dom0, MsgType::Introduce, b"8\x001\x002\0");
    assert_eq!(msgs[0].text(), "OK\0");
    assert_eq!(msgs[1].payload, watch_event("@introduceDomain", "intro"));
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
    rig.guests[g].c.ring().write(&bad).unwrap();
    rig.stub.on_event(port);
    assert_eq!(page.load(Field::Error), RingFault::Protocol.code());
    assert!(!rig.stub.has_work());
    // dom0 is still served.
    let r = rig.ask(Who::Dom0, MsgType::Read, b"/local/domain/4/domid\0");
    assert_eq!(r.payload, b"4");
    // The guest asks for a reconnection: the ring is reset and served again.
    rig.guests[g].c.ring().request_reconnect();
    assert_eq!(page.load(Field::Connection), RECONNECT);
    rig.stub.on_event(port);
    assert_eq!(page.load(Field::Error), 0);
    assert!(rig.guests[g].c.ring().reconnected());
    rig.guests[g].c.forget_in_flight();
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
        let written = rig.guests[g].c.ring().write(&bytes).unwrap();
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
    assert!(matches!(err, Error::NoEventChannel));

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
    assert!(matches!(err, Error::Services(FakeError::NoSuchDomain)));
}

#[test]
fn hash_key_comes_from_entropy() {
    let rig = Rig::new();
    let key = rig.stub.store().config().hash_key;
    assert_ne!(key, ServeConfig::default().store.hash_key);
    assert_ne!(key[0], key[1]);
}

#[test]
fn control_print_reaches_the_log() {
    let mut rig = Rig::new();
    let r = rig.ask(Who::Dom0, MsgType::Control, b"print\0hello log\0");
    assert_eq!(r.text(), "OK\0");
    let log = rig.stub.take_log();
    assert!(log.iter().any(|l| l == "print: hello log"), "{log:?}");
}

// ----- the embedder's API ------------------------------------------------------------------

/// A VMM-like embedding: no bootstrap ring; the program introduces the guest itself and
/// talks to the store through an in-process connection, whose watch events it is told of.
#[test]
fn in_process_toolstack_introduces_and_watches() {
    let mut fake = FakeServices::new();
    let page = fake.create_domain(DomId(4));
    let mut xs = Dispatcher::new(fake, ServeConfig::default()).unwrap();
    assert_eq!(xs.served().count(), 0);
    let vmm = xs.connect(DomId::DOM0).unwrap();
    xs.session(vmm, |s| s.watch("@introduceDomain", "intro", None))
        .unwrap();
    assert_eq!(xs.take_local_notifications(), [vmm]);
    xs.session(vmm, |s| s.drain_events());

    let kind = xs
        .introduce(DomId(4), Introduction { gfn: 9, evtchn: 3 })
        .unwrap();
    assert_eq!(kind, Introduced::New);
    let port = xs.local_port(DomId(4)).unwrap();
    assert_eq!(xs.services().remote_port(port), Some((DomId(4), 3)));
    assert_eq!(xs.take_local_notifications(), [vmm]);
    let events = xs.session(vmm, |s| s.drain_events());
    assert_eq!(events, [(b"@introduceDomain".to_vec(), b"intro".to_vec())]);

    // The guest's change reaches the in-process watcher; the VMM's change reaches the guest.
    xs.session(vmm, |s| s.watch("/local/domain/4/data", "data", None))
        .unwrap();
    xs.session(vmm, |s| s.drain_events());
    let mut guest = client(DomId(4), &page);
    guest.send(MsgType::Write, b"data/x\0from the guest");
    xs.on_event(port);
    assert_eq!(guest.receive()[0].text(), "OK\0");
    assert_eq!(xs.take_local_notifications(), [vmm]);
    let events = xs.session(vmm, |s| s.drain_events());
    assert_eq!(events[0].0, b"/local/domain/4/data/x");
    guest.send(MsgType::Watch, b"data/y\0y\0");
    xs.on_event(port);
    assert_eq!(guest.receive().len(), 2, "the reply and the initial event");
    xs.services_mut().take_notified();
    xs.session(vmm, |s| s.write("/local/domain/4/data/y", b"from the VMM"))
        .unwrap();
    assert!(xs.services_mut().take_notified().contains(&port));
    let ev = guest.receive();
    assert_eq!(ev[0].payload, watch_event("data/y", "y"));

    // Released by the program: unmapped, unbound, @releaseDomain for the watcher.
    xs.session(vmm, |s| s.watch("@releaseDomain", "rel", None))
        .unwrap();
    xs.session(vmm, |s| s.drain_events());
    xs.release(DomId(4)).unwrap();
    assert_eq!(xs.local_port(DomId(4)), None);
    assert_eq!(xs.services().unmapped(), [DomId(4)]);
    assert_eq!(xs.services().unbound(), [port]);
    let events = xs.session(vmm, |s| s.drain_events());
    assert!(events.contains(&(b"@releaseDomain".to_vec(), b"rel".to_vec())));
    assert_eq!(xs.release(DomId(4)), Err(Error::Store(XsError::NoEnt)));
}

/// What the protocol path can only log, the host-side introduction returns.
#[test]
fn host_side_introduce_returns_what_failed() {
    let mut fake = FakeServices::new();
    fake.create_domain(DomId(6));
    let mut xs = Dispatcher::new(fake, ServeConfig::default()).unwrap();
    xs.services_mut().fail_map(DomId(6));
    let intro = Introduction { gfn: 0, evtchn: 2 };
    assert_eq!(
        xs.introduce(DomId(6), intro),
        Err(Error::Services(FakeError::Scripted))
    );
    assert!(!xs.store().is_introduced(DomId(6)));
    xs.services_mut().fail_bind(DomId(6));
    assert_eq!(
        xs.introduce(DomId(6), intro),
        Err(Error::Services(FakeError::Scripted))
    );
    assert!(!xs.store().is_introduced(DomId(6)));
    assert_eq!(xs.services().unmapped(), [DomId(6)]);
    assert_eq!(
        xs.introduce(DomId(6), Introduction { gfn: 0, evtchn: 0 }),
        Err(Error::Store(XsError::Inval))
    );
    assert_eq!(xs.introduce(DomId(6), intro), Ok(Introduced::New));
    // Again: only the channel is rebound.
    assert_eq!(
        xs.introduce(DomId(6), Introduction { gfn: 0, evtchn: 5 }),
        Ok(Introduced::Rebind)
    );
    let port = xs.local_port(DomId(6)).unwrap();
    assert_eq!(xs.services().remote_port(port), Some((DomId(6), 5)));
}

/// Every service of a ring ends with its port re-armed (then the fenced re-check), broken
/// rings included, so that the platform's next event is delivered.
#[test]
fn every_service_rearms_the_port() {
    let mut rig = Rig::new();
    let (g, _) = rig.introduce(3, 1);
    let port = rig.stub.local_port(DomId(3)).unwrap();
    rig.fake().take_rearmed();
    rig.ask(Who::Guest(g), MsgType::Read, b"domid\0");
    assert_eq!(rig.fake().take_rearmed(), [port]);
    // A broken ring: re-armed, so that the guest's reconnection request is heard.
    let mut bad = Vec::new();
    push_message(&mut bad, MsgType::Read as u32, 1, 0, b"");
    bad[12..16].copy_from_slice(&5000u32.to_le_bytes());
    rig.guests[g].c.ring().write(&bad).unwrap();
    rig.stub.on_event(port);
    assert_eq!(rig.fake().take_rearmed(), [port]);
}

/// With a platform clock, log lines carry the time of the event that caused them.
#[test]
fn log_lines_are_stamped_with_the_platform_clock() {
    let mut rig = Rig::new();
    rig.stub.take_log();
    rig.fake().set_now_ns(Some(12_345_678_901));
    rig.ask(Who::Dom0, MsgType::Control, b"print\0tick\0");
    assert_eq!(rig.stub.take_log(), ["[12.345678] print: tick"]);
}

/// A VMM hands the dispatcher (and so the store) to its device thread.
#[test]
fn the_dispatcher_is_send_when_its_services_are() {
    fn send<T: Send>() {}
    send::<Dispatcher<FakeServices>>();
}

/// A guest's write to what a starving dom0 transaction read waits in the guest's ring
/// connection, unanswered, and is answered once that transaction ends: the store's
/// notification reaches the dispatcher, which serves the ring again with nothing new in it.
#[test]
fn a_held_guest_request_is_answered_when_the_protected_transaction_ends() {
    let mut rig = Rig::new();
    let (g, _) = rig.introduce(5, 3);
    let guest = Who::Guest(g);
    assert_eq!(
        rig.ask(guest, MsgType::Write, b"data/hot\x000").text(),
        "OK\0"
    );
    let hot = b"/local/domain/5/data/hot\0";
    let start = |rig: &mut Rig| -> u32 {
        let id = rig.ask(Who::Dom0, MsgType::TransactionStart, b"\0").text();
        id.trim_end_matches('\0').parse().unwrap()
    };
    for round in 1..=xs_core::store::PROTECT_AFTER {
        let tx = start(&mut rig);
        assert_eq!(
            rig.ask_tx(Who::Dom0, tx, MsgType::Read, hot).payload.len(),
            1
        );
        // It writes too (one that only read would commit).
        assert_eq!(
            rig.ask_tx(Who::Dom0, tx, MsgType::Write, b"/z\0t").text(),
            "OK\0"
        );
        let write = [&b"data/hot\0"[..], &[b'a' + round]].concat();
        assert_eq!(rig.ask(guest, MsgType::Write, &write).text(), "OK\0");
        let end = rig.ask_tx(Who::Dom0, tx, MsgType::TransactionEnd, b"T\0");
        assert_eq!(end.text(), "EAGAIN\0");
    }
    let tx = start(&mut rig);
    rig.ask_tx(Who::Dom0, tx, MsgType::Read, hot);
    rig.ask_tx(Who::Dom0, tx, MsgType::Write, b"/z\0t");
    let held = rig.request(guest, MsgType::Write, b"data/hot\0y");
    assert!(
        held.is_empty(),
        "answered while the transaction is open: {held:?}"
    );
    let end = rig.ask_tx(Who::Dom0, tx, MsgType::TransactionEnd, b"T\0");
    assert_eq!(end.text(), "OK\0");
    let replies = rig.client(guest).receive();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].text(), "OK\0");
    let read = rig.ask(Who::Dom0, MsgType::Read, hot);
    assert_eq!(read.payload, b"y");
}

mod state;
