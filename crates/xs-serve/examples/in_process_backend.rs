//! A VMM with the store built in: its PV console backend and a guest's console frontend
//! handshake through the store, the guest over its ring page, the backend in process.
//!
//! ```text
//! cargo run -p xs-serve --example in_process_backend
//! ```
//!
//! What a hypervisor embedding the store writes:
//!
//! 1. [`Services`] for its platform (`Vmm` below): the guest's XenStore page (guest RAM at
//!    `XEN_SPECIAL_PFN(XENSTORE)`), event channels, domain state, entropy, a clock.
//! 2. A [`Dispatcher`] over it; the VMM introduces the guest itself, with no connection.
//! 3. Its own backends use the store in process: a connection of their own, a [`Session`]
//!    through [`Dispatcher::session`], watch events reported by
//!    [`Dispatcher::take_local_notifications`], and the [`XenbusDevice`] helper.
//! 4. When the guest notifies its store event channel (a hypercall, so a VM exit), the VMM
//!    passes the event to [`Dispatcher::on_event`], which serves the ring before the vCPU
//!    resumes; when the store notifies the guest, the VMM injects the upcall.
//!
//! Everything runs on one thread here, exactly as it would in a VMM whose vCPU exits into
//! the store: the guest's blocking XenStore calls "exit" through a [`Waiter`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use xs_serve::prelude::*;

/// Where libxc's HVM domain builder (and QEMU's Xen emulation) put the XenStore page:
/// `XEN_SPECIAL_PFN(XENSTORE)`. The guest learns it from `HVM_PARAM_STORE_PFN`.
const XENSTORE_PFN: u64 = 0xfeffc;
/// The guest.
const GUEST: DomId = DomId(1);
/// The guest's end of its store event channel (`HVM_PARAM_STORE_EVTCHN`).
const GUEST_STORE_PORT: u32 = 1;

/// The VMM's side of the platform.
struct Vmm {
    /// Each guest's XenStore page (in a real VMM: the guest RAM page at `XENSTORE_PFN`,
    /// reached through an `xs_ring::RawPage`).
    store_pages: BTreeMap<DomId, Arc<SharedPage>>,
    /// Local port -> (domain, its port).
    channels: BTreeMap<u32, (DomId, u32)>,
    next_port: u32,
    /// Guest ports with an upcall to inject when the vCPU next runs.
    upcalls: Vec<u32>,
    started: Instant,
}

impl Services for Vmm {
    type Ring = Arc<SharedPage>;
    type Error = String;

    fn map_ring(&mut self, domid: DomId, gfn: u64) -> Result<Arc<SharedPage>, String> {
        if gfn != XENSTORE_PFN {
            return Err(format!("dom{domid} has no store page at gfn {gfn:#x}"));
        }
        self.store_pages
            .get(&domid)
            .cloned()
            .ok_or_else(|| format!("no dom{domid}"))
    }

    fn unmap_ring(&mut self, _domid: DomId, _ring: Arc<SharedPage>) {}

    fn bind_interdomain(&mut self, domid: DomId, remote_port: u32) -> Result<u32, String> {
        let local = self.next_port;
        self.next_port += 1;
        self.channels.insert(local, (domid, remote_port));
        Ok(local)
    }

    fn unbind(&mut self, local_port: u32) {
        self.channels.remove(&local_port);
    }

    fn notify(&mut self, local_port: u32) {
        if let Some(&(_, guest_port)) = self.channels.get(&local_port) {
            self.upcalls.push(guest_port);
        }
    }

    fn domain_state(&mut self, _domid: DomId) -> DomainState {
        DomainState::Running
    }

    fn entropy(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the OS has entropy");
        u64::from_ne_bytes(bytes)
    }

    fn now_ns(&mut self) -> Option<u64> {
        u64::try_from(self.started.elapsed().as_nanos()).ok()
    }
}

/// The guest's `EVTCHNOP_send` on its store port traps into the VMM, which serves the ring
/// at once; the vCPU resumes with the reply there.
struct VmExit<'a> {
    xs: &'a mut Dispatcher<Vmm>,
}

impl Waiter for VmExit<'_> {
    fn kick(&mut self) {
        let local = self.xs.local_port(GUEST).expect("the guest is served");
        self.xs.on_event(local);
    }

    fn wait(&mut self) {
        // A vCPU halted until the upcall: here, the VMM finishes any left-over work.
        assert!(self.xs.has_work(), "the store owes the guest nothing");
        self.xs.run_pending();
    }
}

/// The guest's console frontend (what Linux's `hvc_xen` does).
struct Frontend {
    dev: XenbusDevice,
    state: XenbusState,
}

impl Frontend {
    /// Reacts to what its watch reported: the backend's state.
    fn react(&mut self, c: &mut impl XsClient) -> XsResult<()> {
        while c.next_event()?.is_some() {}
        let backend = self.dev.state(c, End::Backend)?;
        let Some(next) = frontend_next(backend, self.state) else {
            return Ok(());
        };
        if next == XenbusState::Initialised {
            // The ring and its event channel, published with the state in one transaction
            // (a backend never sees the state without them).
            let dev = &self.dev;
            c.transaction(|t| {
                t.write(&dev.node(End::Frontend, "ring-ref"), b"8")?;
                t.write(&dev.node(End::Frontend, "port"), b"2")?;
                t.write(&dev.node(End::Frontend, "state"), next.value())
            })?;
            println!(
                "frontend: {:?} -> {next:?} (ring-ref 8, port 2, in one transaction)",
                self.state
            );
        } else {
            self.dev.switch_state(c, End::Frontend, next)?;
            println!("frontend: {:?} -> {next:?}", self.state);
        }
        self.state = next;
        Ok(())
    }
}

/// The VMM's console backend.
struct Backend {
    dev: XenbusDevice,
    state: XenbusState,
}

impl Backend {
    /// Reacts to what its watch reported: the frontend's state.
    fn react(&mut self, c: &mut impl XsClient) -> XsResult<()> {
        while c.next_event()?.is_some() {}
        let frontend = self.dev.state(c, End::Frontend)?;
        let Some(next) = backend_next(frontend, self.state) else {
            return Ok(());
        };
        let mut how = String::new();
        if next == XenbusState::Connected {
            // What the frontend published: map its ring, bind its channel.
            let ring_ref = self.dev.read(c, End::Frontend, "ring-ref")?;
            let port = self.dev.read(c, End::Frontend, "port")?;
            how = format!(" (frontend ring-ref {ring_ref}, port {port})");
        }
        self.dev.switch_state(c, End::Backend, next)?;
        println!("backend:  {:?} -> {next:?}{how}", self.state);
        self.state = next;
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let guest_page = Arc::new(SharedPage::default());
    let vmm = Vmm {
        store_pages: BTreeMap::from([(GUEST, guest_page.clone())]),
        channels: BTreeMap::new(),
        next_port: 100,
        upcalls: Vec::new(),
        started: Instant::now(),
    };
    let mut xs = Dispatcher::new(vmm, ServeConfig::default())?;

    // The toolstack's part: introduce the guest, create its console device.
    xs.introduce(
        GUEST,
        Introduction {
            gfn: XENSTORE_PFN,
            evtchn: GUEST_STORE_PORT,
        },
    )?;
    for line in xs.take_log() {
        println!("store:    {line}");
    }
    let vmm_conn = xs.connect(DomId::DOM0)?;
    let dev = XenbusDevice::new("console", 0, DomId::DOM0, GUEST);
    xs.session(vmm_conn, |s| dev.create(s, &[("protocol", "vt100")], &[]))?;
    println!(
        "toolstack: created {} and {}",
        dev.backend_path(),
        dev.frontend_path()
    );

    // The backend offers the device and watches the frontend.
    let mut backend = Backend {
        dev: dev.clone(),
        state: XenbusState::Initialising,
    };
    xs.session(vmm_conn, |s| {
        dev.switch_state(s, End::Backend, XenbusState::InitWait)?;
        dev.watch_state(s, End::Frontend, "frontend-state")
    })?;
    println!("backend:  Initialising -> InitWait");
    backend.state = XenbusState::InitWait;

    // The guest boots: its xenbus driver finds the page and watches the backend.
    let mut guest = GuestClient::new(guest_page);
    let mut frontend = Frontend {
        dev: dev.clone(),
        state: XenbusState::Initialising,
    };
    dev.watch_state(
        &mut guest.blocking(&mut VmExit { xs: &mut xs }),
        End::Backend,
        "backend-state",
    )?;

    for _ in 0..16 {
        // The vCPU runs: its frontend reacts to its watch.
        frontend.react(&mut guest.blocking(&mut VmExit { xs: &mut xs }))?;
        // The VMM runs: the upcalls are injected (here the frontend looks at its ring each
        // time it runs anyway), and its backend reacts to its watch.
        xs.services_mut().upcalls.clear();
        if xs.take_local_notifications().contains(&vmm_conn) {
            xs.session(vmm_conn, |s| backend.react(s))?;
        }
        if backend.state == XenbusState::Connected && frontend.state == XenbusState::Connected {
            println!("handshake complete: backend Connected, frontend Connected");
            return Ok(());
        }
    }
    Err("the handshake did not complete".into())
}
