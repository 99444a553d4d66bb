//! The guest's Xen: found by CPUID, the hypercall page installed, `shared_info` and
//! `vcpu_info` mapped, the upcall vector registered, the grant table's first frame placed —
//! what a Linux HVM guest's `xen_hvm_guest_init` does, with x86-glue in the guest role.

use alloc::alloc::{Layout, alloc_zeroed};
use core::ptr::NonNull;

use x86_glue::cpuid::{self, XenInfo};
use x86_glue::hypercall::{Hypercalls, Transfer, XenHypercalls, arg, nr};
use x86_glue::shared_info::{SharedInfo, VcpuInfo};
use x86_glue::{Errno, evtchn, hvm, memory};

use crate::boot;

/// `__HYPERVISOR_vcpu_op`.
const VCPU_OP: u64 = 24;
/// `VCPUOP_register_vcpu_info`.
const VCPUOP_REGISTER_VCPU_INFO: u64 = 10;
/// `HVMOP_set_evtchn_upcall_vector`.
const HVMOP_SET_EVTCHN_UPCALL_VECTOR: u64 = 23;
/// `XENMAPSPACE_grant_table`.
const XENMAPSPACE_GRANT_TABLE: u32 = 1;
/// Where `vcpu_info` goes in its page (not at 0, to show the offset is honoured).
const VCPU_INFO_OFFSET: usize = 64;

/// A zeroed page of our own (from the heap, identity-mapped: its address is its frame).
pub(crate) fn page() -> NonNull<u8> {
    let layout = Layout::from_size_align(4096, 4096).unwrap_or(Layout::new::<u8>());
    // SAFETY: a non-zero size.
    let p = unsafe { alloc_zeroed(layout) };
    NonNull::new(p).unwrap_or_else(|| panic!("out of memory for a page"))
}

/// The page's frame number.
pub(crate) fn gfn(p: NonNull<u8>) -> u64 {
    (p.as_ptr().expose_provenance() as u64) >> 12
}

/// Everything found and set up.
#[derive(Debug)]
pub(crate) struct Xen {
    pub(crate) info: XenInfo,
    page: NonNull<u8>,
    pub(crate) shared_info: &'static SharedInfo,
    pub(crate) vcpu: &'static VcpuInfo,
    pub(crate) grant_frame: NonNull<u8>,
    /// TSC ticks per millisecond (CPUID leaf base + 3).
    pub(crate) tsc_khz: u64,
}

/// A step of the bring-up that failed.
#[derive(Debug)]
pub(crate) struct Failed(pub(crate) &'static str, pub(crate) Errno);

impl Xen {
    /// Hypercalls through the page, or the trampoline to it (see `boot`).
    pub(crate) fn hc(&self) -> XenHypercalls {
        // SAFETY: the VMM's stubs (checked in `init`), called directly when they work at
        // CPL3, else through the trampoline's stubs at CPL0; all memory is executable; the
        // pages live as long as the program.
        unsafe { XenHypercalls::new(Transfer::Page(self.page)) }
    }

    /// Finds Xen and sets up the hypercall page (the steps that may fail are reported).
    pub(crate) fn init() -> Result<Xen, Failed> {
        let info = cpuid::detect().ok_or(Failed("cpuid finds no Xen", Errno::ENOSYS))?;
        let hypercall_page = page();
        // SAFETY: the hypercall-page MSR from Xen's CPUID leaf; the VMM writes the stubs into
        // our page, which nothing else uses.
        unsafe { boot::wrmsr(info.hypercall_msr, gfn(hypercall_page) << 12) };
        // SAFETY: the page is ours and 4096 bytes long.
        let stubs = unsafe { core::slice::from_raw_parts(hypercall_page.as_ptr(), 4096) };
        let at = nr::XEN_VERSION as usize * 32;
        if stubs[at] != 0xb8 || stubs[at + 1] != nr::XEN_VERSION as u8 {
            return Err(Failed("the hypercall page was not written", Errno::EIO));
        }
        let tsc_khz = u64::from(core::arch::x86_64::__cpuid_count(info.base + 3, 0).ecx);
        // Stubs that exit by MMIO (`movabs [addr], eax` after the `mov`) work at CPL3: call
        // them directly. Port-I/O stubs need CPL0: go through the trampoline.
        let calls = if stubs[at + 5] == 0xa3 {
            hypercall_page
        } else {
            boot::hypercall_trampoline(hypercall_page, page())
        };
        let si_page = page();
        let vcpu_page = page();
        let grant_frame = page();
        // SAFETY: a page of our own, 4096-aligned, that Xen now shares with us; accessed only
        // through this reference from now on.
        let shared_info = unsafe { SharedInfo::from_page(si_page) };
        let vcpu_ptr = vcpu_page
            .as_ptr()
            .wrapping_add(VCPU_INFO_OFFSET)
            .cast::<VcpuInfo>();
        // SAFETY: 64 bytes inside our zeroed page, 8-aligned; all atomics, shared with the VMM.
        let vcpu = unsafe { &*vcpu_ptr };
        let xen = Xen {
            info,
            page: calls,
            shared_info,
            vcpu,
            grant_frame,
            tsc_khz,
        };
        let mut hc = xen.hc();
        memory::map_shared_info(&mut hc, gfn(si_page)).map_err(|e| Failed("shared_info", e))?;
        let mut reg = [gfn(vcpu_page), VCPU_INFO_OFFSET as u64];
        Errno::check(hc.call3(VCPU_OP, VCPUOP_REGISTER_VCPU_INFO, 0, arg(&mut reg)))
            .map_err(|e| Failed("register_vcpu_info", e))?;
        let mut vector = [0u32, u32::from(boot::UPCALL_VECTOR)];
        Errno::check(hc.call2(nr::HVM_OP, HVMOP_SET_EVTCHN_UPCALL_VECTOR, arg(&mut vector)))
            .map_err(|e| Failed("set_evtchn_upcall_vector", e))?;
        memory::add_to_physmap(&mut hc, XENMAPSPACE_GRANT_TABLE, 0, gfn(grant_frame))
            .map_err(|e| Failed("grant table frame", e))?;
        Ok(xen)
    }

    /// `HVM_PARAM_STORE_PFN` and `HVM_PARAM_STORE_EVTCHN`.
    pub(crate) fn store(&self) -> Result<(u64, u32), Errno> {
        let mut hc = self.hc();
        let pfn = hvm::get_param(&mut hc, hvm::HVM_PARAM_STORE_PFN)?;
        let port = hvm::get_param(&mut hc, hvm::HVM_PARAM_STORE_EVTCHN)?;
        Ok((pfn, u32::try_from(port).map_err(|_| Errno::EINVAL)?))
    }

    /// Grants dom0 access to frame `frame` as grant `gref` (v1: `domid` and `frame` first,
    /// then the flags, as Linux's `gnttab_grant_foreign_access` does).
    pub(crate) fn grant(&self, gref: usize, frame: u64) {
        let entry = self.grant_frame.as_ptr().wrapping_add(gref * 8);
        // Entry `gref` (< 512) of our grant frame, which the VMM reads: plain volatile writes
        // in Xen's order, with a fence before the flags.
        let domid = entry.wrapping_add(2).cast::<u16>();
        let frame_at = entry.wrapping_add(4).cast::<u32>();
        // SAFETY: an aligned u16 inside our grant frame.
        unsafe { core::ptr::write_volatile(domid, 0) };
        // SAFETY: an aligned u32 inside our grant frame.
        unsafe { core::ptr::write_volatile(frame_at, frame as u32) };
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        // SAFETY: the entry's flags, an aligned u16 inside our grant frame.
        unsafe { core::ptr::write_volatile(entry.cast::<u16>(), 1) };
    }

    /// Sends on `port`.
    pub(crate) fn send(&self, port: u32) -> Result<(), Errno> {
        evtchn::send(&mut self.hc(), port)
    }
}
