//! Where things are in the guest's physical address space, and the VMM's I/O ports.
//!
//! ```text
//! 0x0000_0000  0x1000      unused (a null page)
//! 0x0000_1000  0x6000      boot page tables: PML4, PDPT, 4 PDs (2 MiB pages, [0, 4 GiB))
//! 0x0000_8000  0x1000      GDT (0x8000) and TSS (0x8100)
//! 0x0000_9000  0x1000      the kernel stack (TSS RSP0; the guest's CPL0 stubs run on it)
//! 0x0010_0000  ...         the guest image (its PT_LOAD segments), then its heap
//!              RAM_SIZE    end of RAM
//! 0xfeff_8000  8 pages     Xen's special pages (XEN_SPECIAL_PFN(x) = 0xfeff8 + x, where libxc's
//!                          HVM builder and QEMU's Xen emulation put them): the XenStore page
//!                          at XEN_SPECIAL_PFN(XENSTORE) = 0xfeffc, the console page at 0xfefff
//! 0xfe00_0000  1 page      the VMM's MMIO page (hypercalls and debug output from CPL3)
//! 0xfee0_0000              the local APIC (KVM's, in kernel)
//! ```

/// Guest RAM from address 0.
pub const RAM_SIZE: u64 = 64 << 20;
/// The special pages' first address (libxc's `X86_HVM_END_SPECIAL_REGION - 8` pages).
pub const SPECIAL_AREA: u64 = 0xfeff_8000;
/// Pages in the special area (`X86_HVM_NR_SPECIAL_PAGES`).
pub const SPECIAL_PAGES: u64 = 8;
/// `SPECIALPAGE_XENSTORE`.
pub const SPECIALPAGE_XENSTORE: u64 = 4;
/// `SPECIALPAGE_CONSOLE`.
pub const SPECIALPAGE_CONSOLE: u64 = 7;

/// `XEN_SPECIAL_PFN(x)`.
pub const fn special_pfn(x: u64) -> u64 {
    (SPECIAL_AREA >> PAGE_SHIFT) + x
}

/// The XenStore page's frame (`HVM_PARAM_STORE_PFN`).
pub const XENSTORE_PFN: u64 = special_pfn(SPECIALPAGE_XENSTORE);

/// Page size.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;

/// The boot PML4.
pub const PML4: u64 = 0x1000;
/// The boot PDPT.
pub const PDPT: u64 = 0x2000;
/// The first of the four boot page directories.
pub const PD: u64 = 0x3000;
/// The GDT.
pub const GDT: u64 = 0x8000;
/// The TSS.
pub const TSS: u64 = 0x8100;
/// Top of the kernel stack (TSS RSP0 and the entry `rsp`).
pub const KERNEL_STACK_TOP: u64 = 0xa000;
/// Lowest address a guest image may load at.
pub const IMAGE_MIN: u64 = 0x10_0000;

/// Where the guest's local APIC is (its default base).
pub const LAPIC_BASE: u64 = 0xfee0_0000;

/// The VMM's MMIO page (no memory behind it: every access exits to the VMM). On this host's
/// KVM, CPL3 cannot do port I/O (it forces IOPL 0 there), but an MMIO write exits from any
/// privilege level; so the hypercall page of a guest whose hypercalls come from CPL3 writes
/// the hypercall number to [`HYPERCALL_MMIO`], and its debug output goes to [`DEBUG_MMIO`].
pub const MMIO_PAGE: u64 = 0xfe00_0000;
/// A 32-bit write of the hypercall number here is a hypercall (the stub `mov eax, nr;
/// movabs [HYPERCALL_MMIO], eax; ret`), the arguments in the registers of Xen's ABI.
pub const HYPERCALL_MMIO: u64 = MMIO_PAGE;
/// One byte of debug console output per write.
pub const DEBUG_MMIO: u64 = MMIO_PAGE + 8;
/// A 32-bit write ends the VM with that status.
pub const EXIT_MMIO: u64 = MMIO_PAGE + 16;

/// The hypercall page's stubs `out` the hypercall number here (`mov eax, nr; out 0xe5, eax;
/// ret`); the arguments are in the registers of Xen's ABI.
pub const HYPERCALL_PORT: u16 = 0xe5;
/// The guest's CPU exceptions are reported here (the vector, from its CPL0 stub).
pub const FAULT_PORT: u16 = 0xe6;
/// The debug console: one byte per `out` (Bochs' and QEMU's port).
pub const DEBUG_PORT: u16 = 0xe9;
/// A 32-bit write ends the VM with that status (for guests that cannot make hypercalls).
pub const EXIT_PORT: u16 = 0xf4;

/// The guest's domain id.
pub const GUEST_DOMID: u16 = 1;
