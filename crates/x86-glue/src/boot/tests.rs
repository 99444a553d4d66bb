//! The store domain on the model of Xen: bring-up, the event loop, and a guest's life,
//! through `XenServices` (grant maps, event channels, domain state queries).

use std::boxed::Box;
use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

use xs_core::wire::MsgType;
use xs_ring::layout::Field;
use xs_ring::{Page, RawPage};

use super::*;
use crate::domctl;
use crate::options::BootArgs;
use crate::testutil::{Client, watch_event};
use crate::xenfake::{FakeXen, PageBuf, shared_info_page};

fn info(event: Option<u32>) -> XenInfo {
    XenInfo {
        base: 0x4000_0000,
        major: 4,
        minor: 21,
        hypercall_pages: 1,
        hypercall_msr: 0x4000_0000,
        domid: Some(DomId(1)),
        vcpu_id: Some(0),
        vendor: Vendor::Vmx,
        boot: BootArgs {
            event,
            ..BootArgs::default()
        },
    }
}

use xs_core::protocol::Host;
use xs_core::{DomId, Store};

/// The model of Xen, dom0's store port allocated, and the memory the image would give.
struct Machine {
    si: Box<PageBuf>,
    area: PageBuf,
    xen: Option<FakeXen>,
    dom0_remote: u32,
    /// The TSC the store reads.
    tsc: fn() -> u64,
    /// The image's heap.
    heap: fn() -> HeapUse,
}

impl Machine {
    fn new(area_pages: usize) -> Machine {
        let mut xen = FakeXen::new();
        xen.add_domain(0);
        let dom0_remote = xen.alloc_remote(0);
        Machine {
            si: shared_info_page(),
            area: PageBuf::new(area_pages),
            xen: Some(xen),
            dom0_remote,
            tsc: || 0,
            heap: || HeapUse {
                in_use: 3 << 20,
                size: 6 << 20,
            },
        }
    }

    fn start(&mut self, event: Option<u32>) -> Result<(XenStub<'_, FakeXen>, EventLoop), Error> {
        let area = (self.area.base(), self.area.pages());
        let xen = self.xen.take().unwrap();
        let mut log = String::new();
        // SAFETY: the pages are this test's heap memory, alive for the borrow; the model of
        // Xen leaves the map area in place.
        let r = unsafe {
            start(
                xen,
                &info(event),
                self.si.page(0),
                area,
                Platform {
                    rng: Rng::with_rdrand(false),
                    tsc: self.tsc,
                    heap: self.heap,
                },
                &mut log,
            )
        };
        assert!(log.contains("Xen 4.21"), "{log}");
        r
    }
}

/// A guest's client on the page its ring is grant-mapped at.
fn client_at(addr: u64) -> Client<RawPage> {
    let ptr = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(addr as usize)).unwrap();
    // SAFETY: `addr` is a page of the test's map area (mapped by the model), alive while the
    // machine is; the test plays the guest's side of the ring protocol on it.
    Client::new(unsafe { RawPage::new(ptr) })
}

fn xen<'a>(stub: &'a mut XenStub<'_, FakeXen>) -> &'a mut FakeXen {
    stub.services_mut().hypercalls()
}

fn turn(lp: &mut EventLoop, stub: &mut XenStub<'_, FakeXen>) -> Turn {
    let mut log = String::new();
    lp.turn(stub, &mut log)
}

/// Turns until the loop sleeps.
fn run(lp: &mut EventLoop, stub: &mut XenStub<'_, FakeXen>) {
    for _ in 0..100 {
        if turn(lp, stub) == Turn::Slept {
            return;
        }
    }
    panic!("the loop never went to sleep");
}

#[test]
fn store_domain_on_a_model_of_xen() {
    let mut m = Machine::new(4);
    let dom0_remote = m.dom0_remote;
    let (mut stub, mut lp) = m.start(Some(dom0_remote)).unwrap();

    // Bring-up: shared_info at the page's frame, VIRQ_DOM_EXC bound, dom0's grant mapped
    // into the area and its port bound.
    let dom0_port = xen(&mut stub).local_port_for(0, dom0_remote).unwrap();
    let dom0_ring = xen(&mut stub).mapping_of(0).unwrap();
    assert_eq!(stub.local_port(DomId::DOM0), Some(dom0_port));
    assert!(xen(&mut stub).shared_info_gpfn().is_some());
    let virq = lp.virq();
    assert_ne!(virq, dom0_port);
    // dom0 was told the store is up.
    assert!(xen(&mut stub).take_sent().contains(&dom0_port));
    // Xen marked the freshly bound port pending; serving it finds nothing to do.
    run(&mut lp, &mut stub);
    let polls = xen(&mut stub).polls().to_vec();
    assert_eq!(polls.last().unwrap(), &(vec![virq, dom0_port], 0));

    let mut dom0 = client_at(dom0_ring);
    assert_eq!(
        dom0.guest().server_features(),
        xs_ring::ServerFeatures::RECONNECTION | xs_ring::ServerFeatures::ERROR
    );
    dom0.send(MsgType::Watch, b"@releaseDomain\0rel\0");
    xen(&mut stub).raise(dom0_port);
    run(&mut lp, &mut stub);
    assert_eq!(dom0.receive().len(), 2);
    assert!(xen(&mut stub).take_sent().contains(&dom0_port));

    // A guest is created, its home made by the toolstack (the store makes none, as C's
    // does not: `BootArgs::domain_nodes`), and introduced.
    xen(&mut stub).add_domain(5);
    dom0.send(MsgType::Mkdir, b"/local/domain/5\0");
    dom0.send(MsgType::SetPerms, b"/local/domain/5\0n5\0");
    xen(&mut stub).raise(dom0_port);
    run(&mut lp, &mut stub);
    let made = dom0.receive();
    assert!(made.iter().all(|r| r.text() == "OK\0"), "{made:?}");
    let remote5 = xen(&mut stub).alloc_remote(5);
    dom0.send(
        MsgType::Introduce,
        format!("5\0{}\0{remote5}\0", 0xfeffc).as_bytes(),
    );
    xen(&mut stub).raise(dom0_port);
    run(&mut lp, &mut stub);
    assert_eq!(dom0.receive()[0].text(), "OK\0");
    let ring5 = xen(&mut stub).mapping_of(5).unwrap();
    let port5 = xen(&mut stub).local_port_for(5, remote5).unwrap();
    assert_eq!(stub.local_port(DomId(5)), Some(port5));
    assert_eq!(
        xen(&mut stub).polls().last().unwrap(),
        &(vec![virq, dom0_port, port5], 0)
    );

    // The guest talks to the store through its ring and event channel.
    xen(&mut stub).take_sent();
    let mut g5 = client_at(ring5);
    g5.send(MsgType::Write, b"data/x\0hello");
    xen(&mut stub).raise(port5);
    assert_eq!(turn(&mut lp, &mut stub), Turn::Served(1));
    assert_eq!(g5.receive()[0].text(), "OK\0");
    assert_eq!(xen(&mut stub).take_sent(), [port5]);
    g5.send(MsgType::Read, b"data/x\0");
    xen(&mut stub).raise(port5);
    run(&mut lp, &mut stub);
    assert_eq!(g5.receive()[0].payload, b"hello");

    // Shut down: @releaseDomain for dom0, once.
    xen(&mut stub).set_domain_state(5, domctl::STATE_EXIST | domctl::STATE_SHUTDOWN);
    xen(&mut stub).raise(virq);
    run(&mut lp, &mut stub);
    let ev = dom0.receive();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].payload, watch_event("@releaseDomain", "rel"));
    xen(&mut stub).raise(virq);
    run(&mut lp, &mut stub);
    assert!(dom0.receive().is_empty());

    // Destroyed: the grant is unmapped, the port closed, the nodes gone.
    xen(&mut stub).remove_domain(5);
    xen(&mut stub).raise(virq);
    run(&mut lp, &mut stub);
    assert_eq!(
        dom0.receive()[0].payload,
        watch_event("@releaseDomain", "rel")
    );
    assert_eq!(xen(&mut stub).mapping_of(5), None);
    assert!(!xen(&mut stub).bound_ports().contains(&port5));
    assert_eq!(stub.local_port(DomId(5)), None);
    assert_eq!(
        xen(&mut stub).polls().last().unwrap(),
        &(vec![virq, dom0_port], 0)
    );
    dom0.send(MsgType::Read, b"/local/domain/5/data/x\0");
    xen(&mut stub).raise(dom0_port);
    run(&mut lp, &mut stub);
    assert_eq!(dom0.receive()[0].text(), "ENOENT\0");

    // A new domain 5 gets the freed page of the area and a clean store. Its ring page is
    // new (zeroed): the model of Xen does not remap, so the test clears the area's page.
    // SAFETY: the page of the area the old ring was mapped at, unmapped and unused now.
    unsafe {
        core::ptr::write_bytes(
            core::ptr::with_exposed_provenance_mut::<u8>(ring5 as usize),
            0,
            4096,
        )
    };
    xen(&mut stub).add_domain(5);
    let remote5 = xen(&mut stub).alloc_remote(5);
    dom0.send(MsgType::Mkdir, b"/local/domain/5\0");
    dom0.send(MsgType::SetPerms, b"/local/domain/5\0n5\0");
    dom0.send(MsgType::Introduce, format!("5\00\0{remote5}\0").as_bytes());
    xen(&mut stub).raise(dom0_port);
    run(&mut lp, &mut stub);
    let made = dom0.receive();
    assert!(made.iter().all(|r| r.text() == "OK\0"), "{made:?}");
    let ring5b = xen(&mut stub).mapping_of(5).unwrap();
    assert_eq!(ring5b, ring5);
    let mut g5 = client_at(ring5b);
    g5.send(MsgType::Read, b"data/x\0");
    let port5b = stub.local_port(DomId(5)).unwrap();
    xen(&mut stub).raise(port5b);
    run(&mut lp, &mut stub);
    let msgs = g5.receive();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].text(), "ENOENT\0");
}

#[test]
fn the_event_port_can_come_from_the_ring() {
    let mut m = Machine::new(2);
    // dom0less: dom0's ring names the port.
    let ring_page = m.area.page(0);
    let page_ptr = NonNull::new(ring_page.as_mut_ptr()).unwrap();
    // SAFETY: the area's first page, which the store will map dom0's grant at.
    let page = unsafe { RawPage::new(page_ptr) };
    page.store(Field::EvtchnPort, m.dom0_remote);
    let dom0_remote = m.dom0_remote;
    let (mut stub, _) = m.start(None).unwrap();
    let port = stub.local_port(DomId::DOM0).unwrap();
    assert_eq!(xen(&mut stub).local_port_for(0, dom0_remote), Some(port));
}

#[test]
fn bring_up_failures() {
    // No port given and none in the ring.
    let mut m = Machine::new(1);
    assert_eq!(m.start(None).unwrap_err(), Error::NoEventChannel);
    // A wrong port.
    let mut m = Machine::new(1);
    assert!(matches!(m.start(Some(99)), Err(Error::Hypercall(_))));
    // A map area of zero pages.
    let mut m = Machine::new(0);
    let r = m.start(Some(1));
    assert_eq!(r.unwrap_err(), Error::BadMapArea);
}

/// Beyond 127 served domains not every port fits one `SCHEDOP_poll`: the loop names the
/// first 128 and sleeps with a timeout from Xen's clock.
#[test]
fn many_domains_poll_with_a_timeout() {
    let n = 130u16;
    let mut m = Machine::new(usize::from(n) + 1);
    m.tsc = || 2000;
    let dom0_remote = m.dom0_remote;
    let (mut stub, mut lp) = m.start(Some(dom0_remote)).unwrap();
    let dom0_port = stub.local_port(DomId::DOM0).unwrap();
    let dom0_ring = xen(&mut stub).mapping_of(0).unwrap();
    let mut dom0 = client_at(dom0_ring);
    for d in 1..=n {
        xen(&mut stub).add_domain(d);
        let remote = xen(&mut stub).alloc_remote(d);
        dom0.send(MsgType::Introduce, format!("{d}\00\0{remote}\0").as_bytes());
        xen(&mut stub).raise(dom0_port);
        run(&mut lp, &mut stub);
        assert_eq!(dom0.receive()[0].text(), "OK\0", "introducing {d}");
    }
    assert_eq!(stub.served().count(), usize::from(n) + 1);
    // Xen's clock: 0.5 ns per tick from tick 0 at 1000 ns.
    let t = &stub.services().shared_info().vcpu(0).unwrap().time;
    t.version.store(2, core::sync::atomic::Ordering::SeqCst);
    t.system_time
        .store(1000, core::sync::atomic::Ordering::SeqCst);
    t.tsc_to_system_mul
        .store(1 << 31, core::sync::atomic::Ordering::SeqCst);
    let mut log = String::new();
    assert_eq!(lp.turn(&mut stub, &mut log), Turn::Slept);
    let (ports, timeout) = xen(&mut stub).polls().last().unwrap().clone();
    assert_eq!(ports.len(), sched::POLL_MAX_PORTS);
    assert_eq!(ports[0], lp.virq());
    assert_eq!(timeout, 2000 + POLL_SLICE_NS);
    // Without a usable clock the loop yields instead.
    t.tsc_to_system_mul
        .store(0, core::sync::atomic::Ordering::SeqCst);
    let yields = xen(&mut stub).yields();
    assert_eq!(lp.turn(&mut stub, &mut log), Turn::Slept);
    assert_eq!(xen(&mut stub).yields(), yields + 1);
    // Every domain is still reachable.
    let last: Vec<u32> = stub.ports().collect();
    assert_eq!(last.len(), usize::from(n) + 1);
}

/// `CONTROL memreport` from dom0 reaches the log, with the image's heap.
#[test]
fn memreport_goes_to_the_log_with_the_heap() {
    let mut m = Machine::new(4);
    let dom0_remote = m.dom0_remote;
    let (mut stub, mut lp) = m.start(Some(dom0_remote)).unwrap();
    let dom0_port = xen(&mut stub).local_port_for(0, dom0_remote).unwrap();
    let mut dom0 = client_at(xen(&mut stub).mapping_of(0).unwrap());
    run(&mut lp, &mut stub);

    dom0.send(MsgType::Control, b"memreport\0");
    xen(&mut stub).raise(dom0_port);
    let mut log = String::new();
    for _ in 0..10 {
        if lp.turn(&mut stub, &mut log) == Turn::Slept {
            break;
        }
    }
    assert_eq!(dom0.receive()[0].text(), "OK\0");
    assert!(log.contains("xs: xs memory report\n"), "{log}");
    assert!(
        log.contains("xs: heap: 3072 KiB in use of 6144 KiB\n"),
        "{log}"
    );
}

/// Turns until the loop sleeps, keeping the log.
fn run_logged(lp: &mut EventLoop, stub: &mut XenStub<'_, FakeXen>) -> String {
    let mut log = String::new();
    for _ in 0..100 {
        if lp.turn(stub, &mut log) == Turn::Slept {
            return log;
        }
    }
    panic!("the loop never went to sleep");
}

/// `CONTROL save-state` from dom0: answered at once, the state saved at the end of the turn
/// into a heap buffer, verified and logged; serving goes on.
#[test]
fn save_state_is_saved_at_the_end_of_the_turn_and_verified() {
    let mut m = Machine::new(4);
    m.heap = || HeapUse {
        in_use: 1 << 20,
        size: 32 << 20,
    };
    let dom0_remote = m.dom0_remote;
    let (mut stub, mut lp) = m.start(Some(dom0_remote)).unwrap();
    let dom0_port = xen(&mut stub).local_port_for(0, dom0_remote).unwrap();
    let mut dom0 = client_at(xen(&mut stub).mapping_of(0).unwrap());
    run(&mut lp, &mut stub);
    // A guest with a watch (its home made by the toolstack), dom0 with a transaction open.
    xen(&mut stub).add_domain(5);
    let remote5 = xen(&mut stub).alloc_remote(5);
    dom0.send(MsgType::Mkdir, b"/local/domain/5\0");
    dom0.send(MsgType::SetPerms, b"/local/domain/5\0n5\0");
    xen(&mut stub).raise(dom0_port);
    run(&mut lp, &mut stub);
    assert_eq!(dom0.receive().len(), 2);
    dom0.send(MsgType::Introduce, format!("5\00\0{remote5}\0").as_bytes());
    dom0.send(MsgType::TransactionStart, b"\0");
    xen(&mut stub).raise(dom0_port);
    run(&mut lp, &mut stub);
    let replies = dom0.receive();
    assert_eq!(replies[0].text(), "OK\0");
    let port5 = stub.local_port(DomId(5)).unwrap();
    let mut g5 = client_at(xen(&mut stub).mapping_of(5).unwrap());
    g5.send(MsgType::Watch, b"data\0w\0");
    g5.send(MsgType::Write, b"data/x\0hello");
    xen(&mut stub).raise(port5);
    run(&mut lp, &mut stub);
    assert_eq!(g5.receive().len(), 4, "two replies, two events");

    dom0.send(MsgType::Control, b"save-state\0");
    xen(&mut stub).raise(dom0_port);
    let log = run_logged(&mut lp, &mut stub);
    assert_eq!(dom0.receive()[0].text(), "OK\0");
    let line = log
        .lines()
        .find(|l| l.starts_with("xs: state: "))
        .unwrap_or_else(|| panic!("no state line: {log}"));
    assert!(line.starts_with("xs: state: saved "), "{line}");
    assert!(
        line.contains("; verified: ")
            && line.contains(" 2 connections, saved again to the same bytes"),
        "{line}"
    );
    // Once per request.
    assert!(!run_logged(&mut lp, &mut stub).contains("xs: state: "));

    // Serving goes on.
    g5.send(MsgType::Read, b"data/x\0");
    xen(&mut stub).raise(port5);
    run(&mut lp, &mut stub);
    assert_eq!(g5.receive()[0].payload, b"hello");
}

/// A heap without room for the buffer refuses the save; one without room for a second
/// store saves without verifying; both say so.
#[test]
fn save_state_on_a_small_heap_refuses_or_skips_verification() {
    let mut m = Machine::new(2);
    m.heap = || HeapUse {
        in_use: 6 << 20,
        size: 6 << 20,
    };
    let dom0_remote = m.dom0_remote;
    let (mut stub, _) = m.start(Some(dom0_remote)).unwrap();
    stub.host_mut()
        .save_state(
            &mut Store::new(xs_core::StoreConfig::new([1, 2])).unwrap(),
            b"",
        )
        .unwrap();
    let mut log = String::new();
    let outcome = state::run_requested(&mut stub, &mut log).unwrap();
    assert!(
        matches!(outcome, Err(state::Refused::NoMemory { free: 0, .. })),
        "{outcome:?}"
    );
    assert!(
        log.starts_with("xs: state: not saved: no heap for a buffer of "),
        "{log}"
    );
    assert!(
        state::run_requested(&mut stub, &mut log).is_none(),
        "asked once"
    );

    let mut m = Machine::new(2);
    let dom0_remote = m.dom0_remote;
    let (mut stub, _) = m.start(Some(dom0_remote)).unwrap();
    let (buf, saved) = state::save_to_buffer(&mut stub).unwrap();
    assert_eq!(saved.bytes, buf.len());
    assert!(matches!(saved.verified, state::Verified::Skipped { .. }));
    assert!(
        format!("{saved}").contains("; not verified: a second store needs about "),
        "{saved}"
    );
}
