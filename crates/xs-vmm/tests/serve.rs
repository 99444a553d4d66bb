//! The store embedded in the VMM's platform, without KVM: the guest's side played by the test
//! through the same hypercall handlers (`EVTCHNOP_send` on its store port) and a client on its
//! store page in guest memory. A guest that breaks its ring gets `XENSTORE_ERROR_RINGIDX` on
//! it and nothing else happens to the VMM.

use std::sync::Arc;

use xs_core::DomId;
use xs_core::store::Introduction;
use xs_core::wire::MsgType;
use xs_ring::RawPage;
use xs_serve::guest::GuestClient;
use xs_serve::{Dispatcher, ServeConfig};
use xs_vmm::layout::{PAGE_SIZE, SPECIAL_AREA, SPECIAL_PAGES, XENSTORE_PFN};
use xs_vmm::memory::GuestRam;
use xs_vmm::platform::Platform;
use xs_vmm::xen::{Access, Config, DOM0, Stubs, Xen};

const ARG: u64 = 0x8000;

struct Vm {
    xs: Dispatcher<Platform>,
    ram: Arc<GuestRam>,
    guest_port: u32,
}

fn vm() -> Vm {
    let ram = Arc::new(
        GuestRam::new(&[
            (0, 1 << 20),
            (SPECIAL_AREA, (SPECIAL_PAGES * PAGE_SIZE) as usize),
        ])
        .unwrap(),
    );
    let mut xen = Xen::new(Config {
        domid: 1,
        ram_pages: 256,
        user_hypercalls: false,
        stubs: Stubs::Port,
    });
    let guest_port = xen.alloc_guest_unbound(DOM0).unwrap();
    let mut xs =
        Dispatcher::new(Platform::new(xen, Arc::clone(&ram)), ServeConfig::default()).unwrap();
    xs.introduce(
        DomId(1),
        Introduction {
            gfn: XENSTORE_PFN,
            evtchn: guest_port,
        },
    )
    .unwrap();
    let conn = xs.connect(DomId::DOM0).unwrap();
    xs.session(conn, |s| s.write("/local/domain/1/name", b"guest"))
        .unwrap();
    Vm {
        xs,
        ram,
        guest_port,
    }
}

impl Vm {
    /// The guest's `EVTCHNOP_send` on its store port, and the run loop's part.
    fn kick(&mut self) {
        self.ram.write(ARG, &self.guest_port.to_le_bytes()).unwrap();
        let ram = Arc::clone(&self.ram);
        let mem = Access {
            ram: &ram,
            cr3: None,
        };
        let (rc, _) = self.xs.services_mut().xen.hypercall(
            &mem,
            0,
            x86_glue::hypercall::nr::EVENT_CHANNEL_OP,
            [xs_vmm::xen::op::EVTCHNOP_SEND, ARG, 0, 0, 0],
        );
        assert_eq!(rc, 0);
        for port in self.xs.services_mut().xen.take_local_events() {
            self.xs.on_event(port);
        }
    }

    fn page(&self) -> RawPage {
        let p = self.ram.page(XENSTORE_PFN).unwrap();
        // SAFETY: the store page in guest memory, alive as long as `self.ram`, which outlives
        // every client of these tests.
        unsafe { RawPage::new(p) }
    }
}

#[test]
fn the_guest_reads_through_its_ring() {
    let mut vm = vm();
    let mut client = GuestClient::new(vm.page());
    let id = client.send(MsgType::Read, 0, b"name\0").unwrap();
    vm.kick();
    let replies = client.receive().unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].req_id, id);
    assert_eq!(replies[0].payload, b"guest");
    // The store notified the guest's port: pending in the guest's shared_info.
    assert!(
        vm.xs.services_mut().xen.take_upcall().is_none(),
        "no upcall vector registered yet"
    );
}

#[test]
fn a_broken_ring_gets_error_and_the_vmm_goes_on() {
    let mut vm = vm();
    // The guest claims 5000 request bytes: more than the ring holds.
    let base = XENSTORE_PFN * PAGE_SIZE;
    vm.ram.write(base + 2052, &5000u32.to_le_bytes()).unwrap();
    vm.kick();
    let mut client = GuestClient::new(vm.page());
    assert_ne!(client.ring().error(), 0, "XENSTORE_ERROR_* set");
    // More events on the port change nothing and break nothing.
    vm.kick();
    vm.kick();
    assert_ne!(client.ring().error(), 0);
}
