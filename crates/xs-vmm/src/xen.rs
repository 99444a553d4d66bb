//! Xen's HVM surface, as far as a xenbus guest needs it, played by the VMM: the CPUID leaves,
//! the hypercall page, and the hypercalls (`xen_version`, `memory_op`, `vcpu_op`, `hvm_op`,
//! `event_channel_op` with 2-level channels in `shared_info`, `grant_table_op` v1,
//! `sched_op`, `console_io`).
//!
//! Everything here is plain state plus guest memory: no KVM. The run loop (`vm.rs`) turns
//! an I/O exit on [`crate::layout::HYPERCALL_PORT`] into [`Xen::hypercall`] and acts on what
//! it leaves behind: [`Xen::take_local_events`] (the VMM's own ports the guest signalled:
//! the store's, the console backend's) and [`Xen::take_upcall`] (inject the upcall vector).
//!
//! The guest is hostile: every argument is checked, every guest address goes through
//! [`Access`] (a fault is `EFAULT`), and every answer is a Xen error code. Nothing panics.
//!
//! Differences from Xen, deliberate:
//! * Hypercalls from CPL3 are accepted when [`Config::user_hypercalls`] is set (our own
//!   guest runs its Rust code at CPL3 because this host's KVM emulates CPL0; Xen answers
//!   `EPERM`, as we do with the flag off).
//! * Only the vector callback (`HVMOP_set_evtchn_upcall_vector`, or `HVM_PARAM_CALLBACK_IRQ`
//!   of type vector) delivers events; GSI and PCI INTx callbacks are refused with `EINVAL`.
//! * The RAM page under `shared_info` or a grant frame stays RAM when the mapping moves
//!   (Xen leaves a hole); a `vcpu_info` must be 8-byte aligned.

use x86_glue::Errno;
use x86_glue::hypercall::nr;
use x86_glue::shared_info::{NR_PORTS, SharedInfo, VcpuInfo, WORD_BITS, locate};

use crate::layout::{HYPERCALL_MMIO, HYPERCALL_PORT, PAGE_SHIFT, PAGE_SIZE};
use crate::memory::GuestRam;

/// `DOMID_SELF`.
pub const DOMID_SELF: u16 = 0x7ff0;
/// The VMM's own domain (the store and the backends live in dom0's place).
pub const DOM0: u16 = 0;
/// `__HYPERVISOR_vcpu_op`.
pub const VCPU_OP: u64 = 24;
/// The Xen version the CPUID leaf and `XENVER_version` report.
pub const VERSION: (u16, u16) = (4, 19);
/// The hypercall-page MSR (CPUID leaf base + 2, EBX).
pub const HYPERCALL_MSR: u32 = 0x4000_0000;
/// Grant-table frames a guest may have (`max_grant_frames`).
pub const MAX_GRANT_FRAMES: u32 = 4;
/// Grant entries (v1, 8 bytes) per frame.
pub const GRANTS_PER_FRAME: u32 = (PAGE_SIZE / 8) as u32;
/// The highest event-channel port a guest may allocate (Xen's default `max_event_channels`
/// for a domU is 1023).
pub const MAX_PORT: u32 = 1023;
/// Most bytes one `CONSOLEIO_write` may carry.
pub const CONSOLE_WRITE_MAX: u64 = 64 * 1024;
/// `HVM_NR_PARAMS`.
pub const HVM_NR_PARAMS: u32 = 39;

/// `HVM_PARAM_*` the VMM sets.
pub mod param {
    /// `HVM_PARAM_CALLBACK_IRQ`.
    pub const CALLBACK_IRQ: u32 = 0;
    /// `HVM_PARAM_STORE_PFN`.
    pub const STORE_PFN: u32 = 1;
    /// `HVM_PARAM_STORE_EVTCHN`.
    pub const STORE_EVTCHN: u32 = 2;
    /// `HVM_PARAM_CONSOLE_PFN`.
    pub const CONSOLE_PFN: u32 = 17;
    /// `HVM_PARAM_CONSOLE_EVTCHN`.
    pub const CONSOLE_EVTCHN: u32 = 18;
}

/// Sub-operations (`xen/include/public/*.h`).
pub mod op {
    /// `XENVER_version`.
    pub const XENVER_VERSION: u64 = 0;
    /// `XENVER_extraversion`.
    pub const XENVER_EXTRAVERSION: u64 = 1;
    /// `XENVER_get_features`.
    pub const XENVER_GET_FEATURES: u64 = 6;
    /// `XENVER_pagesize`.
    pub const XENVER_PAGESIZE: u64 = 7;
    /// `XENMEM_current_reservation`.
    pub const XENMEM_CURRENT_RESERVATION: u64 = 3;
    /// `XENMEM_add_to_physmap`.
    pub const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
    /// `XENMAPSPACE_shared_info`.
    pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
    /// `XENMAPSPACE_grant_table`.
    pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
    /// `XENMAPIDX_grant_table_status`.
    pub const XENMAPIDX_GRANT_TABLE_STATUS: u64 = 1 << 31;
    /// `VCPUOP_is_up`.
    pub const VCPUOP_IS_UP: u64 = 3;
    /// `VCPUOP_register_vcpu_info`.
    pub const VCPUOP_REGISTER_VCPU_INFO: u64 = 10;
    /// `HVMOP_set_param`.
    pub const HVMOP_SET_PARAM: u64 = 0;
    /// `HVMOP_get_param`.
    pub const HVMOP_GET_PARAM: u64 = 1;
    /// `HVMOP_set_evtchn_upcall_vector`.
    pub const HVMOP_SET_EVTCHN_UPCALL_VECTOR: u64 = 23;
    /// `EVTCHNOP_bind_interdomain`.
    pub const EVTCHNOP_BIND_INTERDOMAIN: u64 = 0;
    /// `EVTCHNOP_close`.
    pub const EVTCHNOP_CLOSE: u64 = 3;
    /// `EVTCHNOP_send`.
    pub const EVTCHNOP_SEND: u64 = 4;
    /// `EVTCHNOP_status`.
    pub const EVTCHNOP_STATUS: u64 = 5;
    /// `EVTCHNOP_alloc_unbound`.
    pub const EVTCHNOP_ALLOC_UNBOUND: u64 = 6;
    /// `EVTCHNOP_unmask`.
    pub const EVTCHNOP_UNMASK: u64 = 9;
    /// `EVTCHNOP_init_control` (the FIFO ABI: not offered, so `ENOSYS`).
    pub const EVTCHNOP_INIT_CONTROL: u64 = 11;
    /// `GNTTABOP_setup_table`.
    pub const GNTTABOP_SETUP_TABLE: u64 = 2;
    /// `GNTTABOP_query_size`.
    pub const GNTTABOP_QUERY_SIZE: u64 = 6;
    /// `SCHEDOP_yield`.
    pub const SCHEDOP_YIELD: u64 = 0;
    /// `SCHEDOP_block`.
    pub const SCHEDOP_BLOCK: u64 = 1;
    /// `SCHEDOP_shutdown`.
    pub const SCHEDOP_SHUTDOWN: u64 = 2;
    /// `SCHEDOP_poll`.
    pub const SCHEDOP_POLL: u64 = 3;
    /// `CONSOLEIO_write`.
    pub const CONSOLEIO_WRITE: u64 = 0;
    /// `CONSOLEIO_read`.
    pub const CONSOLEIO_READ: u64 = 1;
}

/// `XENFEAT_hvm_callback_vector`.
pub const XENFEAT_HVM_CALLBACK_VECTOR: u32 = 8;
/// Grant status `GNTST_general_error`.
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// Grant status `GNTST_bad_domain`.
pub const GNTST_BAD_DOMAIN: i16 = -2;
/// Grant status `GNTST_bad_gntref`.
pub const GNTST_BAD_GNTREF: i16 = -3;
/// `GTF_permit_access`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_readonly`.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading`.
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing`.
pub const GTF_WRITING: u16 = 1 << 4;

/// The CPUID leaves of Xen's range: `(leaf, subleaf, [eax, ebx, ecx, edx])`.
/// `tsc_khz` goes into leaf base + 3 (subleaf 0, ECX), as Xen reports the guest's TSC rate.
pub fn cpuid_leaves(tsc_khz: u32, domid: u16) -> [(u32, u32, [u32; 4]); 5] {
    let base = 0x4000_0000;
    [
        (
            base,
            0,
            [
                base + 4,
                x86_glue::cpuid::SIGNATURE_EBX,
                x86_glue::cpuid::SIGNATURE_ECX,
                x86_glue::cpuid::SIGNATURE_EDX,
            ],
        ),
        (
            base + 1,
            0,
            [(u32::from(VERSION.0) << 16) | u32::from(VERSION.1), 0, 0, 0],
        ),
        (base + 2, 0, [1, HYPERCALL_MSR, 0, 0]),
        (base + 3, 0, [0, 0, tsc_khz, 0]),
        // XEN_HVM_CPUID_VCPU_ID_PRESENT | DOMID_PRESENT | UPCALL_VECTOR.
        (
            base + 4,
            0,
            [(1 << 3) | (1 << 4) | (1 << 6), 0, u32::from(domid), 0],
        ),
    ]
}

/// How the hypercall page's stubs exit to the VMM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stubs {
    /// `mov eax, nr; out HYPERCALL_PORT, eax; ret`: a fast I/O exit, from CPL0 only (a
    /// kernel's hypercalls, as Xen's `vmcall` stubs are).
    Port,
    /// `mov eax, nr; movabs [HYPERCALL_MMIO], eax; ret`: an MMIO exit, from any privilege
    /// level (our guest, whose Rust code runs at CPL3 on this host).
    Mmio,
}

/// The hypercall page: at `32 * nr`, `mov eax, nr`, the exit of `stubs`, `ret` (Xen's
/// stubs with `vmcall` replaced by an exit this host's KVM delivers to user space);
/// `iret`'s stub is `ud2`, as Xen writes it for HVM guests.
pub fn hypercall_page(stubs: Stubs) -> [u8; PAGE_SIZE as usize] {
    let mut page = [0xcc; PAGE_SIZE as usize];
    for (i, stub) in page.chunks_exact_mut(32).enumerate() {
        if i as u64 == nr::IRET {
            stub[..2].copy_from_slice(&[0x0f, 0x0b]);
            continue;
        }
        stub[0] = 0xb8;
        stub[1..5].copy_from_slice(&(i as u32).to_le_bytes());
        match stubs {
            Stubs::Port => {
                stub[5] = 0xe7;
                stub[6] = HYPERCALL_PORT as u8;
                stub[7] = 0xc3;
            }
            Stubs::Mmio => {
                stub[5] = 0xa3;
                stub[6..14].copy_from_slice(&HYPERCALL_MMIO.to_le_bytes());
                stub[14] = 0xc3;
            }
        }
    }
    page
}

/// Rewrites the `vmcall` (`0f 01 c1`) and `vmmcall` (`0f 01 d9`) instructions in `code` into
/// `out HYPERCALL_PORT, eax; nop` (`e7 e5 90`, the same length); returns how many it rewrote.
///
/// For kernels that no longer call a hypercall page but issue the instruction themselves
/// (Linux from 6.13: `xen_hypercall_intel` and `xen_hypercall_amd`, with the hypercall
/// number already in `eax`): without KVM's Xen intercept (`KVM_CAP_XEN_HVM`, absent on this
/// host) `vmcall` never reaches the VMM, an `out` does. `code` must be exactly those
/// functions' bytes (found by their symbols): matching the pattern anywhere else in a kernel
/// could hit the middle of another instruction.
pub fn rewrite_direct_hypercalls(code: &mut [u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i + 3 <= code.len() {
        if code[i] == 0x0f && code[i + 1] == 0x01 && matches!(code[i + 2], 0xc1 | 0xd9) {
            code[i..i + 3].copy_from_slice(&[0xe7, HYPERCALL_PORT as u8, 0x90]);
            n += 1;
            i += 3;
        } else {
            i += 1;
        }
    }
    n
}

/// How guest addresses in hypercall arguments are reached: guest-virtual addresses
/// translated through the guest's page tables (as Xen does for an HVM guest), or, with
/// paging off, guest-physical.
#[derive(Clone, Copy, Debug)]
pub struct Access<'a> {
    /// Guest memory.
    pub ram: &'a GuestRam,
    /// CR3, if paging is on (4-level).
    pub cr3: Option<u64>,
}

impl Access<'_> {
    /// The guest-physical address of guest-virtual `va`.
    pub fn translate(&self, va: u64) -> Result<u64, Errno> {
        let Some(cr3) = self.cr3 else {
            return Ok(va);
        };
        // Canonical addresses only.
        if ((va as i64) << 16 >> 16) as u64 != va {
            return Err(Errno::EFAULT);
        }
        let mut table = cr3 & 0x000f_ffff_ffff_f000;
        for level in (0..4).rev() {
            let shift = 12 + 9 * level;
            let index = (va >> shift) & 511;
            let entry = self
                .ram
                .read_u64(table + index * 8)
                .map_err(|_| Errno::EFAULT)?;
            if entry & 1 == 0 {
                return Err(Errno::EFAULT);
            }
            let frame = entry & 0x000f_ffff_ffff_f000;
            if level == 0 || (level <= 2 && entry & 0x80 != 0) {
                let size_mask = (1u64 << shift) - 1;
                return Ok((frame & !size_mask) | (va & size_mask));
            }
            table = frame;
        }
        Err(Errno::EFAULT)
    }

    /// Reads `buf.len()` bytes at guest-virtual `va`, page by page.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mut done = 0;
        while done < buf.len() {
            let at = va.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let in_page = (PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(buf.len() - done);
            let gpa = self.translate(at)?;
            self.ram
                .read(gpa, &mut buf[done..done + n])
                .map_err(|_| Errno::EFAULT)?;
            done += n;
        }
        Ok(())
    }

    /// Writes `buf` at guest-virtual `va`, page by page.
    pub fn write(&self, va: u64, buf: &[u8]) -> Result<(), Errno> {
        let mut done = 0;
        while done < buf.len() {
            let at = va.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let in_page = (PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(buf.len() - done);
            let gpa = self.translate(at)?;
            self.ram
                .write(gpa, &buf[done..done + n])
                .map_err(|_| Errno::EFAULT)?;
            done += n;
        }
        Ok(())
    }

    /// Reads the `N`-byte argument structure at `va`.
    fn get<const N: usize>(&self, va: u64) -> Result<[u8; N], Errno> {
        let mut b = [0; N];
        self.read(va, &mut b)?;
        Ok(b)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(d) = b.get_mut(at..at + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

/// One end of an event channel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Chan {
    /// Not allocated.
    Free,
    /// Allocated, waiting for `remote_dom` to bind.
    Unbound {
        /// Who may bind.
        remote_dom: u16,
    },
    /// Connected to `remote_port` of `remote_dom`.
    Interdomain {
        /// The other domain (the guest's own id for a loopback channel).
        remote_dom: u16,
        /// Its port.
        remote_port: u32,
    },
}

/// A domain's port table.
#[derive(Clone, Debug)]
struct Ports {
    chans: Vec<Chan>,
}

impl Ports {
    fn new() -> Ports {
        // Port 0 is never valid.
        Ports {
            chans: vec![Chan::Free],
        }
    }

    fn get(&self, port: u32) -> Option<Chan> {
        if port == 0 {
            return None;
        }
        self.chans.get(port as usize).copied()
    }

    fn set(&mut self, port: u32, chan: Chan) {
        if let Some(c) = self.chans.get_mut(port as usize) {
            *c = chan;
        }
    }

    /// The lowest free port, allocated as `chan`.
    fn alloc(&mut self, chan: Chan) -> Result<u32, Errno> {
        let free = self
            .chans
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, c)| **c == Chan::Free)
            .map(|(i, _)| i);
        let port = match free {
            Some(p) => p,
            None if self.chans.len() as u32 <= MAX_PORT => {
                self.chans.push(Chan::Free);
                self.chans.len() - 1
            }
            None => return Err(Errno::ENOSPC),
        };
        self.chans[port] = chan;
        Ok(port as u32)
    }
}

/// Policy and identity.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The guest's domain id.
    pub domid: u16,
    /// Pages of RAM (`XENMEM_current_reservation`).
    pub ram_pages: u64,
    /// Accept hypercalls made at CPL3 (see the module docs).
    pub user_hypercalls: bool,
    /// The hypercall page's stubs.
    pub stubs: Stubs,
}

/// Counters for the figures and the tests.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Hypercalls handled.
    pub hypercalls: u64,
    /// Hypercalls or sub-operations answered `ENOSYS`.
    pub unknown: u64,
    /// Hypercalls answered with any other error.
    pub errors: u64,
    /// Upcalls requested (each an MSI).
    pub upcalls: u64,
}

/// What a hypercall asks of the run loop besides its result.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Request {
    /// Nothing.
    None,
    /// The guest shut down (`SCHEDOP_shutdown`) with this reason.
    Shutdown(u32),
    /// The guest waits for an event (`SCHEDOP_block`, `SCHEDOP_poll`): run the VMM's own
    /// work before resuming it.
    Block,
}

/// The guest's Xen, as the VMM plays it.
#[derive(Debug)]
pub struct Xen {
    config: Config,
    params: [u64; HVM_NR_PARAMS as usize],
    /// Where the guest mapped `shared_info` (before that, events wait in `early`).
    shared_info_gfn: Option<u64>,
    /// `shared_info` before the guest maps it (Xen's own page).
    early: Box<SharedInfo>,
    /// The registered `vcpu_info` (guest-physical address), if moved out of `shared_info`.
    vcpu_info_gpa: Option<u64>,
    upcall_vector: Option<u8>,
    upcall_due: bool,
    grant_frames: Vec<Option<u64>>,
    hypercall_page: Option<u64>,
    guest: Ports,
    local: Ports,
    local_events: Vec<u32>,
    /// Counters.
    pub counters: Counters,
    /// `CONSOLEIO_write` output not yet taken.
    console: Vec<u8>,
}

impl Xen {
    /// A fresh domain.
    pub fn new(config: Config) -> Xen {
        Xen {
            config,
            params: [0; HVM_NR_PARAMS as usize],
            shared_info_gfn: None,
            early: Box::new(SharedInfo::new()),
            vcpu_info_gpa: None,
            upcall_vector: None,
            upcall_due: false,
            grant_frames: vec![None; MAX_GRANT_FRAMES as usize],
            hypercall_page: None,
            guest: Ports::new(),
            local: Ports::new(),
            local_events: Vec::new(),
            counters: Counters::default(),
            console: Vec::new(),
        }
    }

    /// The guest's domain id.
    pub fn domid(&self) -> u16 {
        self.config.domid
    }

    /// Sets an HVM parameter (the toolstack's side).
    pub fn set_param(&mut self, index: u32, value: u64) {
        if let Some(p) = self.params.get_mut(index as usize) {
            *p = value;
        }
    }

    /// The upcall vector the guest registered.
    pub fn upcall_vector(&self) -> Option<u8> {
        self.upcall_vector
    }

    /// Where the hypercall page was written.
    pub fn hypercall_page_gfn(&self) -> Option<u64> {
        self.hypercall_page
    }

    /// Whether an upcall is to be injected (and forgets it).
    pub fn take_upcall(&mut self) -> Option<u8> {
        if !std::mem::take(&mut self.upcall_due) {
            return None;
        }
        self.counters.upcalls += 1;
        self.upcall_vector
    }

    /// The VMM's local ports the guest signalled since the last call.
    pub fn take_local_events(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.local_events)
    }

    /// `CONSOLEIO_write` output since the last call.
    pub fn take_console(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.console)
    }

    /// The guest's write of `value` to the hypercall-page MSR: writes the page. `Err` means
    /// the write faults (`#GP`), as on Xen for a bad page index or address.
    pub fn write_hypercall_msr(&mut self, ram: &GuestRam, value: u64) -> Result<(), Errno> {
        let gfn = value >> PAGE_SHIFT;
        if value & (PAGE_SIZE - 1) != 0 || !ram.has_page(gfn) {
            return Err(Errno::EINVAL);
        }
        ram.write(gfn << PAGE_SHIFT, &hypercall_page(self.config.stubs))
            .map_err(|_| Errno::EFAULT)?;
        self.hypercall_page = Some(gfn);
        Ok(())
    }

    // ---- shared_info and event delivery --------------------------------------------------

    /// The `shared_info` page in use.
    fn shared_info<'a>(&'a self, ram: &'a GuestRam) -> &'a SharedInfo {
        match self.shared_info_gfn.and_then(|gfn| ram.page(gfn)) {
            // SAFETY: the page is a whole, 4096-aligned page of guest memory (`page` checks
            // it lies in one region; regions are page-aligned mmaps), valid as long as `ram`
            // is borrowed; every field of `SharedInfo` is an atomic, valid for any bytes,
            // and the guest's concurrent accesses are atomic as well (x86).
            Some(page) => unsafe { SharedInfo::from_page(page) },
            None => &self.early,
        }
    }

    /// vCPU 0's `vcpu_info`.
    fn vcpu_info<'a>(&'a self, ram: &'a GuestRam) -> &'a VcpuInfo {
        let registered = self
            .vcpu_info_gpa
            .and_then(|gpa| ram.host_range(gpa, std::mem::size_of::<VcpuInfo>() as u64));
        match registered {
            // SAFETY: 64 bytes of guest memory, 8-byte aligned (checked at registration;
            // regions are page-aligned), valid while `ram` is borrowed; all atomics, as above.
            Some(p) => unsafe { p.cast::<VcpuInfo>().as_ref() },
            None => match self.shared_info(ram).vcpu(0) {
                Some(v) => v,
                None => &self.early.vcpu_info[0],
            },
        }
    }

    /// Raises guest `port` (`evtchn_2l_set_pending`): pending; if it was clear and the port
    /// unmasked, the selector bit; if that was clear, `evtchn_upcall_pending`; if that was
    /// clear, an upcall.
    pub fn raise(&mut self, ram: &GuestRam, port: u32) {
        let Some((w, bit)) = locate(port) else { return };
        let si = self.shared_info(ram);
        let (Some(pending), Some(mask)) = (si.evtchn_pending.get(w), si.evtchn_mask.get(w)) else {
            return;
        };
        use std::sync::atomic::Ordering::SeqCst;
        // ORDERING: SeqCst, Xen's `lock bts`, then the mask load; pairs with the guest
        // clearing the mask and then loading the pending bit (x86-glue `evtchn::unmask`).
        if pending.fetch_or(bit, SeqCst) & bit != 0 || mask.load(SeqCst) & bit != 0 {
            return;
        }
        self.mark_pending(ram, w);
    }

    /// Sets selector bit `w` and the upcall flag; an upcall is due if the flag was clear.
    fn mark_pending(&mut self, ram: &GuestRam, w: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        let v = self.vcpu_info(ram);
        let sel = 1u64 << (w % WORD_BITS);
        // ORDERING: SeqCst; the selector before the flag, pairing with the guest clearing
        // the flag before it takes the selector (x86-glue `evtchn::take_upcall`).
        if v.evtchn_pending_sel.fetch_or(sel, SeqCst) & sel != 0 {
            return;
        }
        if v.evtchn_upcall_pending.swap(1, SeqCst) == 0 {
            self.upcall_due = true;
        }
    }

    // ---- the VMM's own ports ---------------------------------------------------------------

    /// A guest port the toolstack allocates for `remote_dom` (the store's channel, whose
    /// number goes into `HVM_PARAM_STORE_EVTCHN`).
    pub fn alloc_guest_unbound(&mut self, remote_dom: u16) -> Result<u32, Errno> {
        self.guest.alloc(Chan::Unbound { remote_dom })
    }

    /// Binds a new local (VMM) port to the guest's `remote_port`, which must be unbound for
    /// dom0.
    pub fn bind_local(&mut self, remote_port: u32) -> Result<u32, Errno> {
        match self.guest.get(remote_port) {
            Some(Chan::Unbound { remote_dom: DOM0 }) => {}
            Some(_) => return Err(Errno::EINVAL),
            None => return Err(Errno::EINVAL),
        }
        let local = self.local.alloc(Chan::Interdomain {
            remote_dom: self.config.domid,
            remote_port,
        })?;
        self.guest.set(
            remote_port,
            Chan::Interdomain {
                remote_dom: DOM0,
                remote_port: local,
            },
        );
        Ok(local)
    }

    /// Closes a local port; the guest's end reverts to unbound.
    pub fn close_local(&mut self, port: u32) {
        if let Some(Chan::Interdomain { remote_port, .. }) = self.local.get(port) {
            self.guest
                .set(remote_port, Chan::Unbound { remote_dom: DOM0 });
        }
        self.local.set(port, Chan::Free);
    }

    /// Signals the guest end of local `port`.
    pub fn notify_local(&mut self, ram: &GuestRam, port: u32) {
        if let Some(Chan::Interdomain { remote_port, .. }) = self.local.get(port) {
            self.raise(ram, remote_port);
        }
    }

    /// The guest port a local port is connected to.
    pub fn local_peer(&self, port: u32) -> Option<u32> {
        match self.local.get(port) {
            Some(Chan::Interdomain { remote_port, .. }) => Some(remote_port),
            _ => None,
        }
    }

    /// A guest port's state.
    pub fn guest_chan(&self, port: u32) -> Option<Chan> {
        self.guest.get(port)
    }

    // ---- grant table -----------------------------------------------------------------------

    /// The guest-physical frame that grant `gref` lets dom0 map, after checking the entry
    /// (`GTF_permit_access` for dom0, writable unless `readonly`), marking it in use as Xen
    /// does (`GTF_reading`, and `GTF_writing` unless read-only). Errors are grant statuses.
    pub fn map_grant(&self, ram: &GuestRam, gref: u32, readonly: bool) -> Result<u64, i16> {
        let frame = gref / GRANTS_PER_FRAME;
        let gfn = self
            .grant_frames
            .get(frame as usize)
            .copied()
            .flatten()
            .ok_or(GNTST_BAD_GNTREF)?;
        let at = (gfn << PAGE_SHIFT) + u64::from(gref % GRANTS_PER_FRAME) * 8;
        let mut e = [0u8; 8];
        ram.read(at, &mut e).map_err(|_| GNTST_GENERAL_ERROR)?;
        let flags = u16_at(&e, 0);
        let domid = u16_at(&e, 2);
        let target = u64::from(u32_at(&e, 4));
        if flags & 3 != GTF_PERMIT_ACCESS || domid != DOM0 {
            return Err(GNTST_BAD_GNTREF);
        }
        if !readonly && flags & GTF_READONLY != 0 {
            return Err(GNTST_BAD_GNTREF);
        }
        if !ram.has_page(target) {
            return Err(GNTST_GENERAL_ERROR);
        }
        let used = GTF_READING | if readonly { 0 } else { GTF_WRITING };
        ram.write(at, &(flags | used).to_le_bytes())
            .map_err(|_| GNTST_GENERAL_ERROR)?;
        Ok(target)
    }

    // ---- hypercalls --------------------------------------------------------------------------

    /// Hypercall `op` with the ABI's five arguments, made at privilege level `cpl`.
    pub fn hypercall(&mut self, mem: &Access<'_>, cpl: u8, op: u64, a: [u64; 5]) -> (i64, Request) {
        self.counters.hypercalls += 1;
        let result = if cpl != 0 && !self.config.user_hypercalls {
            Err(Errno::EPERM)
        } else {
            match op {
                nr::XEN_VERSION => self
                    .xen_version(mem, a[0], a[1])
                    .map(|v| (v, Request::None)),
                nr::MEMORY_OP => self.memory_op(mem, a[0], a[1]).map(|v| (v, Request::None)),
                VCPU_OP => self
                    .vcpu_op(mem, a[0], a[1], a[2])
                    .map(|v| (v, Request::None)),
                nr::HVM_OP => self.hvm_op(mem, a[0], a[1]).map(|v| (v, Request::None)),
                nr::EVENT_CHANNEL_OP => self.evtchn_op(mem, a[0], a[1]).map(|v| (v, Request::None)),
                nr::GRANT_TABLE_OP => self
                    .grant_table_op(mem, a[0], a[1], a[2])
                    .map(|v| (v, Request::None)),
                nr::SCHED_OP => self.sched_op(mem, a[0], a[1]),
                nr::CONSOLE_IO => self
                    .console_io(mem, a[0], a[1], a[2])
                    .map(|v| (v, Request::None)),
                _ => Err(Errno::ENOSYS),
            }
        };
        match result {
            Ok((v, req)) => (v, req),
            Err(e) => {
                if e == Errno::ENOSYS {
                    self.counters.unknown += 1;
                } else {
                    self.counters.errors += 1;
                }
                (e.as_result(), Request::None)
            }
        }
    }

    /// Whether `dom` names this guest.
    fn is_self(&self, dom: u16) -> bool {
        dom == DOMID_SELF || dom == self.config.domid
    }

    fn xen_version(&mut self, mem: &Access<'_>, cmd: u64, arg: u64) -> Result<i64, Errno> {
        match cmd {
            op::XENVER_VERSION => Ok((i64::from(VERSION.0) << 16) | i64::from(VERSION.1)),
            op::XENVER_EXTRAVERSION => {
                let mut v = [0u8; 16];
                put(&mut v, 0, b".0-xs-vmm");
                mem.write(arg, &v)?;
                Ok(0)
            }
            op::XENVER_GET_FEATURES => {
                let mut fi = mem.get::<8>(arg)?;
                let submap = if u32_at(&fi, 0) == 0 {
                    1 << XENFEAT_HVM_CALLBACK_VECTOR
                } else {
                    0
                };
                put(&mut fi, 4, &u32::to_le_bytes(submap));
                mem.write(arg, &fi)?;
                Ok(0)
            }
            op::XENVER_PAGESIZE => Ok(PAGE_SIZE as i64),
            _ => Err(Errno::ENOSYS),
        }
    }

    fn memory_op(&mut self, mem: &Access<'_>, cmd: u64, arg: u64) -> Result<i64, Errno> {
        // MEMOP_CMD_MASK: the bits above hold a continuation's progress.
        match cmd & 0x3f {
            op::XENMEM_CURRENT_RESERVATION => {
                let mut dom = [0u8; 2];
                mem.read(arg, &mut dom)?;
                if !self.is_self(u16::from_le_bytes(dom)) {
                    return Err(Errno::ESRCH);
                }
                Ok(self.config.ram_pages as i64)
            }
            op::XENMEM_ADD_TO_PHYSMAP => {
                let x = mem.get::<24>(arg)?;
                let (domid, space, idx, gpfn) =
                    (u16_at(&x, 0), u32_at(&x, 4), u64_at(&x, 8), u64_at(&x, 16));
                if !self.is_self(domid) {
                    return Err(Errno::ESRCH);
                }
                if !mem.ram.has_page(gpfn) {
                    return Err(Errno::EINVAL);
                }
                match space {
                    op::XENMAPSPACE_SHARED_INFO if idx == 0 => {
                        self.map_shared_info(mem.ram, gpfn)?;
                        Ok(0)
                    }
                    op::XENMAPSPACE_GRANT_TABLE if idx & op::XENMAPIDX_GRANT_TABLE_STATUS == 0 => {
                        let slot = usize::try_from(idx)
                            .ok()
                            .and_then(|i| self.grant_frames.get_mut(i))
                            .ok_or(Errno::EINVAL)?;
                        if slot.is_none() {
                            mem.ram.zero_page(gpfn).map_err(|_| Errno::EFAULT)?;
                        }
                        *slot = Some(gpfn);
                        Ok(0)
                    }
                    _ => Err(Errno::EINVAL),
                }
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    /// Moves `shared_info` to guest frame `gfn`, keeping its contents.
    fn map_shared_info(&mut self, ram: &GuestRam, gfn: u64) -> Result<(), Errno> {
        let mut now = [0u8; PAGE_SIZE as usize];
        match self.shared_info_gfn {
            Some(old) => ram
                .read(old << PAGE_SHIFT, &mut now)
                .map_err(|_| Errno::EFAULT)?,
            None => {
                let si: &SharedInfo = &self.early;
                // SAFETY: `SharedInfo` is 3136 plain bytes of atomics (repr(C), no padding
                // the compiler may leave uninitialised: checked layout in x86-glue), read
                // here as bytes while nothing else accesses the VMM's private copy.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        (si as *const SharedInfo).cast::<u8>(),
                        std::mem::size_of::<SharedInfo>(),
                    )
                };
                now[..bytes.len()].copy_from_slice(bytes);
            }
        }
        ram.write(gfn << PAGE_SHIFT, &now)
            .map_err(|_| Errno::EFAULT)?;
        self.shared_info_gfn = Some(gfn);
        Ok(())
    }

    fn vcpu_op(&mut self, mem: &Access<'_>, cmd: u64, vcpu: u64, arg: u64) -> Result<i64, Errno> {
        if vcpu != 0 {
            return Err(Errno::ENOENT);
        }
        match cmd {
            op::VCPUOP_IS_UP => Ok(1),
            op::VCPUOP_REGISTER_VCPU_INFO => {
                let r = mem.get::<16>(arg)?;
                let (mfn, offset, rsvd) = (u64_at(&r, 0), u64::from(u32_at(&r, 8)), u32_at(&r, 12));
                let size = std::mem::size_of::<VcpuInfo>() as u64;
                if rsvd != 0 || offset + size > PAGE_SIZE || offset % 8 != 0 {
                    return Err(Errno::EINVAL);
                }
                if self.vcpu_info_gpa.is_some() {
                    return Err(Errno::EINVAL);
                }
                if !mem.ram.has_page(mfn) {
                    return Err(Errno::EINVAL);
                }
                let gpa = (mfn << PAGE_SHIFT) + offset;
                let old = self.vcpu_info(mem.ram);
                // Xen copies the old area over, then marks every word pending "to be safe"
                // (`map_guest_area` and `vcpu_info_populate`).
                let mut bytes = [0u8; 64];
                put(
                    &mut bytes,
                    0,
                    &[old
                        .evtchn_upcall_pending
                        .load(std::sync::atomic::Ordering::SeqCst)],
                );
                put(
                    &mut bytes,
                    1,
                    &[old
                        .evtchn_upcall_mask
                        .load(std::sync::atomic::Ordering::SeqCst)],
                );
                mem.ram.write(gpa, &bytes).map_err(|_| Errno::EFAULT)?;
                self.vcpu_info_gpa = Some(gpa);
                let v = self.vcpu_info(mem.ram);
                v.evtchn_pending_sel
                    .store(!0, std::sync::atomic::Ordering::SeqCst);
                if v.evtchn_upcall_pending
                    .swap(1, std::sync::atomic::Ordering::SeqCst)
                    == 0
                {
                    self.upcall_due = true;
                }
                Ok(0)
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    fn hvm_op(&mut self, mem: &Access<'_>, cmd: u64, arg: u64) -> Result<i64, Errno> {
        match cmd {
            op::HVMOP_SET_PARAM | op::HVMOP_GET_PARAM => {
                let mut p = mem.get::<16>(arg)?;
                let (domid, index, value) = (u16_at(&p, 0), u32_at(&p, 4), u64_at(&p, 8));
                if !self.is_self(domid) {
                    return Err(Errno::ESRCH);
                }
                if index >= HVM_NR_PARAMS {
                    return Err(Errno::EINVAL);
                }
                if cmd == op::HVMOP_GET_PARAM {
                    put(&mut p, 8, &self.params[index as usize].to_le_bytes());
                    mem.write(arg, &p)?;
                    return Ok(0);
                }
                // A domU may set only its callback (hvm_allow_set_param).
                if index != param::CALLBACK_IRQ {
                    return Err(Errno::EPERM);
                }
                match value >> 56 {
                    0 if value == 0 => self.upcall_vector = None,
                    2 if value & 0xff >= 0x10 => self.upcall_vector = Some(value as u8),
                    _ => return Err(Errno::EINVAL),
                }
                self.params[index as usize] = value;
                Ok(0)
            }
            op::HVMOP_SET_EVTCHN_UPCALL_VECTOR => {
                let v = mem.get::<8>(arg)?;
                if u32_at(&v, 0) != 0 {
                    return Err(Errno::ENOENT);
                }
                let vector = v[4];
                if vector < 0x10 {
                    return Err(Errno::EINVAL);
                }
                self.upcall_vector = Some(vector);
                Ok(0)
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    fn evtchn_op(&mut self, mem: &Access<'_>, cmd: u64, arg: u64) -> Result<i64, Errno> {
        match cmd {
            op::EVTCHNOP_ALLOC_UNBOUND => {
                let mut a = mem.get::<8>(arg)?;
                let (dom, remote) = (u16_at(&a, 0), u16_at(&a, 2));
                if !self.is_self(dom) {
                    return Err(Errno::EPERM);
                }
                let remote = if self.is_self(remote) {
                    self.config.domid
                } else {
                    remote
                };
                if remote != DOM0 && remote != self.config.domid {
                    return Err(Errno::ESRCH);
                }
                let port = self.guest.alloc(Chan::Unbound { remote_dom: remote })?;
                put(&mut a, 4, &port.to_le_bytes());
                if let Err(e) = mem.write(arg, &a) {
                    self.guest.set(port, Chan::Free);
                    return Err(e);
                }
                Ok(0)
            }
            op::EVTCHNOP_BIND_INTERDOMAIN => {
                let mut b = mem.get::<12>(arg)?;
                let (rdom, rport) = (u16_at(&b, 0), u32_at(&b, 4));
                let me = self.config.domid;
                let rdom = if self.is_self(rdom) { me } else { rdom };
                let table = match rdom {
                    DOM0 => &self.local,
                    d if d == me => &self.guest,
                    _ => return Err(Errno::ESRCH),
                };
                if table.get(rport) != Some(Chan::Unbound { remote_dom: me }) {
                    return Err(Errno::EINVAL);
                }
                let local = self.guest.alloc(Chan::Interdomain {
                    remote_dom: rdom,
                    remote_port: rport,
                })?;
                put(&mut b, 8, &local.to_le_bytes());
                if let Err(e) = mem.write(arg, &b) {
                    self.guest.set(local, Chan::Free);
                    return Err(e);
                }
                let peer = Chan::Interdomain {
                    remote_dom: me,
                    remote_port: local,
                };
                if rdom == DOM0 {
                    self.local.set(rport, peer);
                } else {
                    self.guest.set(rport, peer);
                }
                Ok(0)
            }
            op::EVTCHNOP_SEND => {
                let port = u32::from_le_bytes(mem.get::<4>(arg)?);
                match self.guest.get(port) {
                    Some(Chan::Interdomain {
                        remote_dom,
                        remote_port,
                    }) => {
                        if remote_dom == DOM0 {
                            self.local_events.push(remote_port);
                        } else {
                            self.raise(mem.ram, remote_port);
                        }
                        Ok(0)
                    }
                    // Xen drops a send on an unbound port silently.
                    Some(Chan::Unbound { .. }) => Ok(0),
                    _ => Err(Errno::EINVAL),
                }
            }
            op::EVTCHNOP_CLOSE => {
                let port = u32::from_le_bytes(mem.get::<4>(arg)?);
                match self.guest.get(port) {
                    Some(Chan::Free) | None => Err(Errno::EINVAL),
                    Some(Chan::Unbound { .. }) => {
                        self.guest.set(port, Chan::Free);
                        Ok(0)
                    }
                    Some(Chan::Interdomain {
                        remote_dom,
                        remote_port,
                    }) => {
                        let me = self.config.domid;
                        let unbound = Chan::Unbound { remote_dom: me };
                        if remote_dom == DOM0 {
                            self.local.set(remote_port, unbound);
                        } else {
                            self.guest.set(remote_port, unbound);
                        }
                        self.guest.set(port, Chan::Free);
                        Ok(0)
                    }
                }
            }
            op::EVTCHNOP_STATUS => {
                let mut s = mem.get::<24>(arg)?;
                let (dom, port) = (u16_at(&s, 0), u32_at(&s, 4));
                if !self.is_self(dom) {
                    return Err(Errno::EPERM);
                }
                if port == 0 || port > MAX_PORT {
                    return Err(Errno::EINVAL);
                }
                let (status, u0, u1) = match self.guest.get(port) {
                    None | Some(Chan::Free) => (0, 0, 0),
                    Some(Chan::Unbound { remote_dom }) => (1, u32::from(remote_dom), 0),
                    Some(Chan::Interdomain {
                        remote_dom,
                        remote_port,
                    }) => (2, u32::from(remote_dom), remote_port),
                };
                put(&mut s, 8, &u32::to_le_bytes(status));
                put(&mut s, 12, &0u32.to_le_bytes());
                put(&mut s, 16, &u0.to_le_bytes());
                put(&mut s, 20, &u1.to_le_bytes());
                mem.write(arg, &s)?;
                Ok(0)
            }
            op::EVTCHNOP_UNMASK => {
                let port = u32::from_le_bytes(mem.get::<4>(arg)?);
                if port as usize >= NR_PORTS || self.guest.get(port).is_none() {
                    return Err(Errno::EINVAL);
                }
                let Some((w, bit)) = locate(port) else {
                    return Err(Errno::EINVAL);
                };
                use std::sync::atomic::Ordering::SeqCst;
                let si = self.shared_info(mem.ram);
                let (Some(pending), Some(mask)) = (si.evtchn_pending.get(w), si.evtchn_mask.get(w))
                else {
                    return Err(Errno::EINVAL);
                };
                // ORDERING: SeqCst, Xen's `evtchn_2l_unmask`: clear the mask, then load the
                // pending bit; pairs with `raise` (set pending, then load the mask).
                if mask.fetch_and(!bit, SeqCst) & bit != 0 && pending.load(SeqCst) & bit != 0 {
                    self.mark_pending(mem.ram, w);
                }
                Ok(0)
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    fn grant_table_op(
        &mut self,
        mem: &Access<'_>,
        cmd: u64,
        arg: u64,
        count: u64,
    ) -> Result<i64, Errno> {
        match cmd {
            op::GNTTABOP_SETUP_TABLE => {
                if count != 1 {
                    return Err(Errno::EINVAL);
                }
                let mut s = mem.get::<24>(arg)?;
                let (dom, nr_frames, list) = (u16_at(&s, 0), u32_at(&s, 4), u64_at(&s, 16));
                let status = if !self.is_self(dom) {
                    GNTST_BAD_DOMAIN
                } else if nr_frames > MAX_GRANT_FRAMES {
                    GNTST_GENERAL_ERROR
                } else {
                    for i in 0..nr_frames {
                        let gfn = self.grant_frames[i as usize].unwrap_or(u64::MAX);
                        let at = list.checked_add(u64::from(i) * 8).ok_or(Errno::EFAULT)?;
                        mem.write(at, &gfn.to_le_bytes())?;
                    }
                    0
                };
                put(&mut s, 8, &status.to_le_bytes());
                mem.write(arg, &s)?;
                Ok(0)
            }
            op::GNTTABOP_QUERY_SIZE => {
                if count != 1 {
                    return Err(Errno::EINVAL);
                }
                let mut q = mem.get::<16>(arg)?;
                if self.is_self(u16_at(&q, 0)) {
                    let nr = self
                        .grant_frames
                        .iter()
                        .rposition(Option::is_some)
                        .map_or(0, |i| i + 1);
                    put(&mut q, 4, &(nr as u32).to_le_bytes());
                    put(&mut q, 8, &MAX_GRANT_FRAMES.to_le_bytes());
                    put(&mut q, 12, &0i16.to_le_bytes());
                } else {
                    put(&mut q, 12, &GNTST_BAD_DOMAIN.to_le_bytes());
                }
                mem.write(arg, &q)?;
                Ok(0)
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    fn sched_op(&mut self, mem: &Access<'_>, cmd: u64, arg: u64) -> Result<(i64, Request), Errno> {
        match cmd {
            op::SCHEDOP_YIELD => Ok((0, Request::None)),
            op::SCHEDOP_BLOCK => Ok((0, Request::Block)),
            op::SCHEDOP_SHUTDOWN => {
                let reason = u32::from_le_bytes(mem.get::<4>(arg)?);
                Ok((0, Request::Shutdown(reason)))
            }
            op::SCHEDOP_POLL => {
                let p = mem.get::<24>(arg)?;
                let (ports, nr_ports) = (u64_at(&p, 0), u32_at(&p, 8));
                if nr_ports > 128 {
                    return Err(Errno::EINVAL);
                }
                for i in 0..u64::from(nr_ports) {
                    let at = ports.checked_add(i * 4).ok_or(Errno::EFAULT)?;
                    let port = u32::from_le_bytes(mem.get::<4>(at)?);
                    if self.guest.get(port).is_none() {
                        return Err(Errno::EINVAL);
                    }
                }
                Ok((0, Request::Block))
            }
            _ => Err(Errno::ENOSYS),
        }
    }

    fn console_io(
        &mut self,
        mem: &Access<'_>,
        cmd: u64,
        count: u64,
        buf: u64,
    ) -> Result<i64, Errno> {
        match cmd {
            op::CONSOLEIO_WRITE => {
                if count > CONSOLE_WRITE_MAX {
                    return Err(Errno::EINVAL);
                }
                let mut bytes = vec![0; count as usize];
                mem.read(buf, &mut bytes)?;
                self.console.extend_from_slice(&bytes);
                Ok(0)
            }
            op::CONSOLEIO_READ => Ok(0),
            _ => Err(Errno::ENOSYS),
        }
    }
}

#[cfg(test)]
mod tests;
