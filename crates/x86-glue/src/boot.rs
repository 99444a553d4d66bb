//! Bringing the store up on Xen and running its event loop: [`run_stub_domain`], built from
//! [`start`] and [`EventLoop`], which host tests run against a model of Xen. The store and
//! the rings are served by xs-serve's [`Dispatcher`] over [`XenServices`].
//!
//! # Bring-up ([`start`])
//!
//! 1. `xen_version` (logged).
//! 2. `shared_info` mapped over the given page (`XENMEM_add_to_physmap`,
//!    `XENMAPSPACE_shared_info`); events are taken from vCPU 0's `vcpu_info` in it.
//! 3. `VIRQ_DOM_EXC` bound (the toolstack makes the store domain its handler) and unmasked.
//! 4. [`XenServices`] over the map area; how domain states are asked (`get_domain_state`, else
//!    `getdomaininfo` under the interface version this Xen accepts) is
//!    probed on the privileged domain.
//! 5. The [`Dispatcher`] serving the privileged domain: its grant `GNTTAB_RESERVED_XENSTORE`
//!    mapped, bound to `--event` (or to the ring's `evtchn_port`).
//!
//! # The loop ([`EventLoop::turn`])
//!
//! (A `CONTROL save-state` served in a turn is carried out at its end, before the loop
//! sleeps: [`crate::state`].)
//!
//! No interrupt is used. Each turn clears `evtchn_upcall_pending`, then takes pending ports
//! from the fair [`Scanner`] (each port's pending bit cleared before its service), at most
//! [`EVENT_BUDGET`] per turn. Only when a turn found nothing and nothing is left over does it
//! sleep, in `SCHEDOP_poll` on the `VIRQ_DOM_EXC` port and the served ports: Xen marks the
//! vCPU as polling before it checks the named ports' pending bits, so an event that arrived
//! after the scan is not missed, and with more than one port named any event of the domain
//! wakes it. `SCHEDOP_poll` takes at most 128 ports: with more domains than fit, the sleep
//! gets a 10 ms timeout, which bounds how late an event on an unnamed port that arrived in
//! the window between the scan and the poll is noticed.
//!
//! (`SCHEDOP_block` is not used: for an HVM/PVH guest Xen decides whether an event "needs
//! delivery" through the virtual interrupt path, so without an upcall vector and interrupts
//! enabled, an event arriving just before the block would not wake the vCPU.)

use core::fmt::{self, Write};
use core::ptr::NonNull;

use alloc::borrow::Cow;

use xs_serve::{BootPort, BootRing, Bootstrap, Dispatcher, ServeConfig, Services};

use crate::console::XenConsole;
use crate::cpuid::{Vendor, XenInfo};
use crate::domctl::StateQuery;
use crate::error::Error;
use crate::evtchn::{self, Scanner, VIRQ_DOM_EXC};
use crate::grant::{MapArea, PAGE_SIZE};
use crate::host::{HeapUse, StubHost};
use crate::hypercall::{self, Hypercalls, Transfer, XenHypercalls};
use crate::memory;
use crate::rng::Rng;
use crate::sched::{self, POLL_MAX_PORTS, ShutdownReason};
use crate::services::XenServices;
use crate::shared_info::SharedInfo;
use crate::state;
use crate::version;

/// Ports served per turn before the loop looks at left-over work again.
pub const EVENT_BUDGET: usize = 64;
/// Poll timeout when not every port fits in one `SCHEDOP_poll` (ns).
pub const POLL_SLICE_NS: u64 = 10_000_000;

/// The store on Xen.
pub type XenStub<'s, H> = Dispatcher<XenServices<'s, H>, StubHost>;

/// What the image brings besides memory.
#[derive(Debug)]
pub struct Platform {
    /// Entropy.
    pub rng: Rng,
    /// Reads the TSC.
    pub tsc: fn() -> u64,
    /// The heap's use, for `CONTROL memreport`.
    pub heap: fn() -> HeapUse,
}

/// The vCPU the store runs on (the boot vCPU).
const VCPU: usize = 0;

/// Brings the store up over `hc` (see the module notes): `shared_info` is mapped at the
/// given page, foreign rings at `map_area` (base, pages).
///
/// # Safety
///
/// `hc` must reach the Xen this runs on (or a model of it in tests). `shared_info` must be a
/// page-aligned page of the program's identity-mapped memory (virtual = guest-physical),
/// given up to Xen for good. `map_area` must satisfy [`XenServices::new`]'s contract.
pub unsafe fn start<'s, H: Hypercalls>(
    mut hc: H,
    xen: &XenInfo,
    shared_info: &'s mut [u8; 4096],
    map_area: (usize, usize),
    platform: Platform,
    log: &mut dyn Write,
) -> Result<(XenStub<'s, H>, EventLoop), Error> {
    match version::version(&mut hc) {
        Ok((major, minor)) => {
            let _ = writeln!(log, "xs: Xen {major}.{minor} (hypercalls answered)");
        }
        Err(e) => {
            let _ = writeln!(log, "xs: xen_version failed: {e}");
        }
    }
    let page = NonNull::from(shared_info).cast::<u8>();
    let addr = page.as_ptr().expose_provenance();
    if !addr.is_multiple_of(PAGE_SIZE) {
        return Err(Error::Unaligned);
    }
    memory::map_shared_info(&mut hc, (addr / PAGE_SIZE) as u64)?;
    // SAFETY: Xen now maps shared_info at this page's guest frame, which the program maps at
    // the same virtual address (caller); the `&'s mut` was consumed, so nothing else
    // accesses it for `'s`.
    let si: &'s SharedInfo = unsafe { SharedInfo::from_page(page) };
    let vcpu = si
        .vcpu(VCPU)
        .ok_or(Error::Hypercall(hypercall::Errno::EINVAL))?;
    let virq = evtchn::bind_virq(&mut hc, VIRQ_DOM_EXC, 0)?;
    evtchn::unmask(&mut hc, si, vcpu, virq)?;
    let area = MapArea::new(map_area.0, map_area.1).ok_or(Error::BadMapArea)?;
    let rdrand = platform.rng.has_rdrand();
    // SAFETY: the map area's contract is the caller's.
    let mut services = unsafe { XenServices::new(hc, si, VCPU, area, platform.rng, platform.tsc) };
    let priv_domid = xen.boot.priv_domid;
    let states = services.probe_domain_state(priv_domid);
    let _ = writeln!(
        log,
        "xs: VIRQ_DOM_EXC on port {virq}; domain states through {}; entropy {}",
        match states {
            StateQuery::Supported => Cow::from("get_domain_state"),
            StateQuery::DomainInfo(v) => {
                Cow::from(alloc::format!("getdomaininfo (domctl interface {v:#x})"))
            }
            StateQuery::Unsupported => {
                Cow::from("nothing: no domctl answers (dying domains end only by RELEASE)")
            }
        },
        if rdrand { "RDRAND" } else { "WEAK (no RDRAND)" },
    );
    let boot = Bootstrap {
        domid: priv_domid,
        ring: BootRing::Grant { gfn: 0 },
        port: match xen.boot.event {
            Some(p) => BootPort::Remote(p),
            None => BootPort::FromRing,
        },
    };
    let mut config = ServeConfig::default();
    for &(kind, value) in &xen.boot.quotas {
        config.store.quotas.set(kind, value);
    }
    if let Some(soft) = xen.boot.memory_soft {
        config.store.memory_soft = soft;
        let _ = writeln!(log, "xs: soft memory quota from the command line: {soft}");
    }
    // As C xenstored, the store leaves a domain's home to the toolstack, unless asked.
    config.store.domain_nodes = xen.boot.domain_nodes;
    if xen.boot.domain_nodes {
        let _ = writeln!(log, "xs: --domain-nodes: a domain's home made on INTRODUCE");
    }
    if xen.boot.keep_orphans {
        // C's `-K` gives them to its privileged domain.
        config.store.orphans_to = Some(priv_domid);
        let _ = writeln!(
            log,
            "xs: -K: a gone domain's nodes are given to dom{priv_domid}, not removed"
        );
    }
    for note in &xen.boot.notes {
        let _ = writeln!(log, "xs: command line: {note}");
    }
    if !xen.boot.quotas.is_empty() {
        let _ = write!(log, "xs: quotas from the command line:");
        for &(kind, _) in &xen.boot.quotas {
            let _ = write!(log, " {}={}", kind.name(), config.store.quotas.get(kind));
        }
        let _ = writeln!(log);
    }
    let host = StubHost::new(platform.heap);
    let mut stub = Dispatcher::with_host_and_bootstrap(services, config, host, boot)?;
    flush_log(&mut stub, log);
    Ok((stub, EventLoop::new(virq)))
}

/// Writes the store's and the services' log lines.
pub fn flush_log<H: Hypercalls>(stub: &mut XenStub<'_, H>, log: &mut dyn Write) {
    let lines = stub.take_log();
    let errors = stub.services_mut().take_errors();
    let reports = stub.host_mut().take_lines();
    for line in lines.into_iter().chain(errors).chain(reports) {
        let _ = writeln!(log, "xs: {line}");
    }
}

/// What a turn of the loop did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Turn {
    /// Served this many events.
    Served(usize),
    /// Served left-over work.
    Pending,
    /// Slept in `SCHEDOP_poll` (and was woken).
    Slept,
}

/// The event loop's state.
#[derive(Debug)]
pub struct EventLoop {
    virq: u32,
    scan: Scanner,
}

impl EventLoop {
    /// A loop taking `VIRQ_DOM_EXC` on `virq`.
    pub fn new(virq: u32) -> EventLoop {
        EventLoop {
            virq,
            scan: Scanner::new(),
        }
    }

    /// The `VIRQ_DOM_EXC` port.
    pub fn virq(&self) -> u32 {
        self.virq
    }

    /// One turn: serve pending events, or left-over work, or sleep until an event.
    pub fn turn<H: Hypercalls>(&mut self, stub: &mut XenStub<'_, H>, log: &mut dyn Write) -> Turn {
        let si = stub.services().shared_info();
        let Some(vcpu) = si.vcpu(stub.services().vcpu()) else {
            return Turn::Slept;
        };
        // Cleared before the scan: an event during it sets it (and its bits) again.
        evtchn::take_upcall(vcpu);
        let mut served = 0;
        while served < EVENT_BUDGET {
            let Some(port) = self.scan.next(si, vcpu) else {
                break;
            };
            if port == self.virq {
                stub.on_dom_exc();
            } else {
                stub.on_event(port);
            }
            served += 1;
        }
        // Left-over work is done every turn, so that a stream of events cannot hold it back.
        let pending = stub.has_work();
        if pending {
            stub.run_pending();
        }
        // A `CONTROL save-state` of this turn: the state as the turn left it.
        flush_log(stub, log);
        if state::run_requested(stub, log).is_some() {
            flush_log(stub, log);
        }
        if served > 0 {
            return Turn::Served(served);
        }
        if pending {
            return Turn::Pending;
        }
        self.sleep(stub, log);
        Turn::Slept
    }

    /// Sleeps in `SCHEDOP_poll`; with more ports than it takes, with a timeout from Xen
    /// system time ([`Services::now_ns`]; only then is the clock read).
    fn sleep<H: Hypercalls>(&mut self, stub: &mut XenStub<'_, H>, log: &mut dyn Write) {
        // On the stack, at most what `SCHEDOP_poll` takes: the loop sleeps whenever it is
        // idle, and need not allocate to do so.
        let mut named = heapless::Vec::<u32, POLL_MAX_PORTS>::new();
        let all = core::iter::once(self.virq)
            .chain(stub.ports())
            .all(|p| named.push(p).is_ok());
        let ports = named.as_slice();
        let timeout = if all {
            0
        } else {
            match stub.services_mut().now_ns() {
                Some(now) => now.saturating_add(POLL_SLICE_NS),
                None => {
                    // No usable clock: a timeout could lie in the past and spin; yield
                    // instead (late events are then noticed at the next scheduling).
                    let _ = sched::yield_now(stub.services_mut().hypercalls());
                    return;
                }
            }
        };
        if let Err(e) = sched::poll(stub.services_mut().hypercalls(), ports, timeout) {
            let _ = writeln!(log, "xs: SCHEDOP_poll failed: {e}");
            let _ = sched::yield_now(stub.services_mut().hypercalls());
        }
    }
}

/// Asks Xen for a hypercall page at `page` and checks that it wrote one; otherwise falls back
/// to the vendor's instruction.
///
/// # Safety
///
/// Only on Xen (HVM/PVH, 64-bit, ring 0), with `xen` from its CPUID leaves, `page`
/// identity-mapped (virtual = guest-physical) and executable.
pub unsafe fn setup_hypercalls(xen: &XenInfo, page: &'static mut [u8; 4096]) -> Option<Transfer> {
    let base = NonNull::from(page).cast::<u8>();
    let addr = base.as_ptr().expose_provenance();
    if xen.hypercall_pages >= 1 && addr.is_multiple_of(PAGE_SIZE) {
        // SAFETY: on Xen with its MSR (caller); the page is ours, given up to Xen (the
        // `&'static mut` was consumed) and reached below only through `base`.
        unsafe { hypercall::write_hypercall_page(xen.hypercall_msr, addr as u64) };
        let mut copy = [0u8; 4096];
        for (i, b) in copy.iter_mut().enumerate() {
            let byte = base.as_ptr().wrapping_add(i);
            // SAFETY: `byte` lies in the 4096-byte page; Xen wrote it behind the compiler's
            // back, hence the volatile read.
            *b = unsafe { byte.read_volatile() };
        }
        if hypercall::page_is_written(&copy) {
            return Some(Transfer::Page(base));
        }
    }
    match xen.vendor {
        Vendor::Vmx => Some(Transfer::Vmcall),
        Vendor::Svm => Some(Transfer::Vmmcall),
        Vendor::Unknown => None,
    }
}

/// Logs `error`, asks Xen to crash the domain (so that the toolstack sees it), and halts.
fn fatal(transfer: Option<Transfer>, log: &mut dyn Write, error: &dyn fmt::Display) -> ! {
    let _ = writeln!(log, "xs: fatal: {error}");
    if let Some(t) = transfer {
        // SAFETY: `t` came from `setup_hypercalls` on this Xen.
        let mut hc = unsafe { XenHypercalls::new(t) };
        let _ = sched::shutdown(&mut hc, ShutdownReason::Crash);
    }
    loop {
        core::hint::spin_loop();
    }
}

/// Runs the store as a XenStore stub domain on Xen. `hypercall_page` is a 4 KiB page-aligned
/// writable page for the hypercall page; `shared_info` a page-aligned page to map shared_info
/// at; `map_area` a page-aligned virtual range (base, pages) for mapping guests' rings; `log`
/// the image's console, used until the hypercalls are set up and whenever Xen refuses
/// `console_io` (which it does to unprivileged domains of a release build); `heap` the heap's
/// use. See the crate documentation for the memory each must be.
pub fn run_stub_domain(
    xen: XenInfo,
    hypercall_page: &'static mut [u8; 4096],
    shared_info: &'static mut [u8; 4096],
    map_area: (usize, usize),
    log: &mut dyn Write,
    heap: fn() -> HeapUse,
) -> ! {
    let _ = writeln!(
        log,
        "xs: XenStore stub domain starting (Xen leaves at {:#x}, domid {}, privileged domain {})",
        xen.base,
        xen.domid.map_or(-1, |d| i32::from(d.0)),
        xen.boot.priv_domid,
    );
    // SAFETY: the caller detected Xen (`xen` comes from its CPUID leaves) and runs us in
    // ring 0 with identity-mapped, executable memory (crate documentation).
    let transfer = unsafe { setup_hypercalls(&xen, hypercall_page) };
    let Some(transfer) = transfer else {
        fatal(None, log, &Error::NoHypercalls);
    };
    // From here on the log goes to Xen's console (`console_io`) when Xen lets us, else to
    // the caller's console (the image's: Xen's debug port).
    // SAFETY: `transfer` is what `setup_hypercalls` established on this Xen.
    let console_hc = unsafe { XenHypercalls::new(transfer) };
    let mut console = XenConsole::with_fallback(console_hc, log);
    let log: &mut dyn Write = &mut console;
    let _ = writeln!(log, "xs: hypercalls through {transfer:?}");
    // SAFETY: `transfer` is what `setup_hypercalls` established on this Xen.
    let hc = unsafe { XenHypercalls::new(transfer) };
    // SAFETY: the pages and the map area are as the crate documentation requires of the
    // image.
    let started = unsafe {
        start(
            hc,
            &xen,
            shared_info,
            map_area,
            Platform {
                rng: Rng::detect(),
                tsc: read_tsc,
                heap,
            },
            log,
        )
    };
    let (mut stub, mut event_loop) = match started {
        Ok(s) => s,
        Err(e) => fatal(Some(transfer), log, &e),
    };
    let _ = writeln!(
        log,
        "xs: serving {} domain(s); waiting for events",
        stub.served().count()
    );
    loop {
        event_loop.turn(&mut stub, log);
    }
}

/// The TSC.
fn read_tsc() -> u64 {
    // SAFETY: RDTSC is part of x86_64 and has no memory effects; we run in ring 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(test)]
mod tests;
