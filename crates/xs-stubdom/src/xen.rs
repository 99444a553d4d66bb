//! Running on Xen: the XenStore stub domain, driven by `x86-glue`.
//!
//! [`x86_glue::cpuid::detect`] decides the path at boot. On Xen this module hands the glue
//! what it needs from the image (`x86-glue`'s crate documentation states the contract):
//!
//! * a page for the hypercall page ([`HYPERCALL_PAGE`]: RAM in `.bss`; the identity map
//!   leaves every page executable),
//! * a page where Xen maps `shared_info` ([`SHARED_INFO`]: RAM in `.bss`),
//! * a map area for the guests' rings: [`MAP_PAGES`] pages of guest-physical address space
//!   that is mapped in our page tables but is *not* RAM or MMIO (Xen puts each grant-mapped
//!   ring page there), found in the PVH memory map above the highest RAM,
//! * the console: COM1 as everywhere, plus Xen's debug port 0xE9, which every HVM/PVH
//!   domain may write and Xen prints as the domain's log (until the hypercalls are set up,
//!   and after that when Xen refuses `console_io` to this domain: `run_stub_domain` writes
//!   its log through `console_io` when it may, `x86_glue::console::XenConsole`),
//! * the boot parameters from the command line (`--event`, `--priv-domid`, ...).
//!
//! The pages are page-aligned statics handed out once as `&'static mut`.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use x86_glue::XenHypercalls;
use x86_glue::cpuid::{Vendor, XenInfo};
use x86_glue::hypercall::Transfer;
use x86_glue::memory::{self, E820Entry};

use crate::console::{self, Console, println};
use crate::startinfo::{RAM, Region, StartInfo};
use crate::trace::{self, Event};
use crate::{boot, heap};

/// Pages in the grant-mapping area: one per served domain, the privileged one included.
pub(crate) const MAP_PAGES: usize = 1024;

/// A page-aligned static region that is handed out once, as `&'static mut`.
#[repr(C, align(4096))]
pub(crate) struct Pages<const N: usize> {
    bytes: UnsafeCell<[u8; N]>,
    taken: AtomicBool,
}

// SAFETY: the bytes are reached only through the one `&'static mut` that `take` hands out
// (the flag makes it one).
unsafe impl<const N: usize> Sync for Pages<N> {}

impl<const N: usize> Pages<N> {
    const fn new() -> Self {
        Pages {
            bytes: UnsafeCell::new([0; N]),
            taken: AtomicBool::new(false),
        }
    }

    /// The region, the first time; `None` afterwards.
    #[allow(
        clippy::mut_from_ref,
        reason = "the flag hands out the one and only reference, as a `&'static mut`"
    )]
    pub(crate) fn take(&'static self) -> Option<&'static mut [u8; N]> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the flag guarantees this runs at most once, so this is the only reference
        // ever made to the bytes; the static lives forever.
        Some(unsafe { &mut *self.bytes.get() })
    }
}

/// Where Xen writes the hypercall stubs.
pub(crate) static HYPERCALL_PAGE: Pages<4096> = Pages::new();
/// Where Xen maps `shared_info`.
pub(crate) static SHARED_INFO: Pages<4096> = Pages::new();

/// Writes to Xen's debug console port (`XEN_HVM_DEBUGCONS_IOPORT`).
fn debug_port(bytes: &[u8]) {
    // SAFETY: on Xen, port 0xE9 is the hypervisor's debug console for HVM/PVH domains
    // (`hvm_print_line`), and the image runs in ring 0; this sink is only installed on Xen.
    unsafe { x86_glue::console::debug_port_write(bytes) };
}

/// From now on the log goes to Xen's debug port too (COM1 is no one's on Xen): Xen prints it
/// as the domain's console lines (`(dN) ...` in its log).
pub(crate) fn use_debug_console() {
    console::set_sink(debug_port);
}

/// What Xen says of this domain's memory, before the heap exists (nothing here allocates),
/// through `vmcall`/`vmmcall` (the hypercall page is set up later, once, by x86-glue):
/// * the memory map (`XENMEM_memory_map`) when the start info has none: Xen 4.17's domain
///   builder gives a domain built by `init-xenstore-domain` a version-0 start info, which has
///   no map (without one the heap would take the linker script's whole reservation, which a
///   small domain may not have);
/// * the pages populated (`XENMEM_current_reservation`): with `--maxmem` above `--memory` the
///   map holds RAM up to the maximum, of which only `--memory` is there.
///
/// Xen 4.17's `init-xenstore-domain` writes a broken map when given `--maxmem`: its `MB()`
/// macro leaves `maxmem` in bytes, so the map's RAM is 32 bytes for `--maxmem 32` (fixed in
/// later Xen). A map whose RAM does not even hold this image is that map: RAM is then taken as
/// what the builder populated, from address 0 up.
pub(crate) fn read_memory(xen: &XenInfo, info: &mut StartInfo) {
    let transfer = match xen.vendor {
        Vendor::Vmx => Transfer::Vmcall,
        Vendor::Svm => Transfer::Vmmcall,
        Vendor::Unknown => {
            println!("xen: no known hypercall instruction: the memory map is the start info's");
            return;
        }
    };
    // SAFETY: on Xen (CPUID says so), in an HVM/PVH domain in ring 0, where the vendor's
    // instruction is Xen's hypercall.
    let mut hc = unsafe { XenHypercalls::new(transfer) };
    if info.regions().is_empty() {
        let mut entries = [E820Entry::default(); 32];
        match memory::memory_map(&mut hc, &mut entries) {
            Ok(n) => {
                info.set_regions(entries.iter().take(n).map(|e| Region {
                    addr: e.addr,
                    size: e.size,
                    kind: e.kind,
                }));
                println!(
                    "xen: memory map from XENMEM_memory_map ({n} entries; the start info v{} has none)",
                    info.version
                );
            }
            Err(e) => println!("xen: XENMEM_memory_map failed: {e}"),
        }
    }
    for r in info.regions() {
        let end = r.addr.saturating_add(r.size);
        println!("xen:   {:#012x}..{end:#012x} type {}", r.addr, r.kind);
    }
    let pages = match memory::current_reservation(&mut hc) {
        Ok(pages) => pages,
        Err(e) => {
            println!(
                "xen: XENMEM_current_reservation failed: {e}; all of the map's RAM taken as there"
            );
            return;
        }
    };
    let ram = memory::populated_ram_bytes(pages);
    println!("xen: {pages} pages populated: {} KiB of RAM", ram / 1024);
    let (image_start, _) = heap::image();
    if info.ram_end(image_start as u64).is_none() && !info.regions().is_empty() {
        println!(
            "xen: the memory map's RAM does not hold this image ({image_start:#x}): taken as \
             0..{ram:#x}, what was populated (Xen 4.17's init-xenstore-domain with --maxmem)"
        );
        let mut regions = [Region::default(); 32];
        regions[0] = Region {
            addr: 0,
            size: ram,
            kind: RAM,
        };
        let mut n = 1;
        for r in info.regions().iter().filter(|r| r.kind != RAM) {
            if let Some(slot) = regions.get_mut(n) {
                *slot = *r;
                n += 1;
            }
        }
        info.set_regions(regions.into_iter().take(n));
    }
    info.set_populated(pages);
}

/// The map area: `MAP_PAGES` pages from the first 2 MiB boundary above the highest RAM (and
/// above the heap), if no region of the memory map overlaps them and the boot page tables
/// map them. Returns (base, pages).
fn map_area(info: &StartInfo) -> Result<(usize, usize), &'static str> {
    let regions = info.regions();
    if regions.is_empty() {
        return Err("the start info has no memory map (PVH start info version 0)");
    }
    let top_ram = regions
        .iter()
        .filter(|r| r.kind == RAM)
        .map(|r| r.addr.saturating_add(r.size))
        .max()
        .unwrap_or(0);
    let (_, heap_end) = heap::region();
    let start = top_ram.max(heap_end as u64).next_multiple_of(2 << 20);
    let end = start + (MAP_PAGES * 4096) as u64;
    if end > boot::MAPPED {
        return Err("no room for the map area below the end of the identity map");
    }
    if regions
        .iter()
        .any(|r| r.addr < end && start < r.addr.saturating_add(r.size))
    {
        return Err("the memory map has a region where the map area would go");
    }
    Ok((start as usize, MAP_PAGES))
}

/// The stub-domain path: never returns.
pub(crate) fn run(mut xen: XenInfo, info: &StartInfo) -> ! {
    trace::record(Event::Xen, u64::from(xen.base));
    println!(
        "xen: Xen {}.{} (CPUID base {:#x}), command line \"{}\"",
        xen.major,
        xen.minor,
        xen.base,
        info.cmdline()
    );
    xen.boot = x86_glue::BootArgs::parse(info.cmdline_bytes());
    let area = match map_area(info) {
        Ok(area) => area,
        Err(why) => panic!("xen: cannot place the grant-mapping area: {why}"),
    };
    let (Some(hypercall_page), Some(shared_info)) = (HYPERCALL_PAGE.take(), SHARED_INFO.take())
    else {
        panic!("xen: the hypercall and shared_info pages were already handed out");
    };
    println!(
        "xen: hypercall page {:#x}, shared_info page {:#x}, map area {:#x} ({} pages)",
        hypercall_page.as_ptr() as usize,
        shared_info.as_ptr() as usize,
        area.0,
        area.1
    );
    x86_glue::run_stub_domain(
        xen,
        hypercall_page,
        shared_info,
        area,
        &mut Console,
        heap::usage,
    )
}
