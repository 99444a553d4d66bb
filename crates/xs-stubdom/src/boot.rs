//! From the PVH entry to Rust: 32-bit start-up, long mode, and the first call.
//!
//! The PVH boot ABI (Xen's `docs/misc/pvh.pandoc`, also QEMU's `-kernel` for an ELF with the
//! note): the loader jumps to the address in the `XEN_ELFNOTE_PHYS32_ENTRY` note in 32-bit
//! protected mode, paging off, flat 4 GiB code and data segments, interrupts off, no stack,
//! and `%ebx` = physical address of the `hvm_start_info` structure. Everything else is ours
//! to set up before Rust may run:
//!
//! 1. the entry TSC and `%ebx` are saved in `.data` (the `.bss` is about to be cleared);
//! 2. `.bss` is zeroed (`rep stosb`): the stacks, page tables and every Rust static that is
//!    zero-initialised live there, and a loader is not trusted to have done it;
//! 3. page tables identity-map the first 4 GiB with 2 MiB pages (PML4 → PDPT → 4 PDs);
//! 4. CR4 gets PAE and the SSE bits (OSFXSR, OSXMMEXCPT), EFER gets LME, CR0 gets PG, WP,
//!    NE and MP with EM cleared: long mode is active and SSE usable, which the precompiled
//!    `core` relies on;
//! 5. the boot GDT is loaded and a far jump enters its 64-bit code segment;
//! 6. the data segments are reloaded, the boot stack set, the x87 unit initialised, and
//!    [`crate::stubdom_main`] called with the start-info address (the entry TSC stays in
//!    `xs_boot_tsc`, read by [`entry_tsc`]).
//!
//! The boot GDT (null, code, data) only serves the switch to long mode: it must be loaded
//! before any Rust runs, so it is assembler data, its descriptors `x86_64`'s flag constants.
//! Once Rust runs, [`load_gdt`] replaces it with an `x86_64` [`GlobalDescriptorTable`] with
//! the same code and data segments at the same selectors plus the TSS (`idt.rs`). The page
//! tables, the boot variables and the note are plain assembler data.

use x86_64::PrivilegeLevel;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{
    Descriptor, DescriptorFlags, GlobalDescriptorTable, SegmentSelector,
};
use x86_64::structures::tss::TaskStateSegment;

/// The 64-bit code segment's selector, in the boot GDT and the runtime GDT alike.
const CODE_SELECTOR: SegmentSelector = SegmentSelector::new(1, PrivilegeLevel::Ring0);
/// The data segment's selector, in both GDTs.
const DATA_SELECTOR: SegmentSelector = SegmentSelector::new(2, PrivilegeLevel::Ring0);

/// The boot code identity-maps `[0, MAPPED)` with 2 MiB pages: the image, the heap, the
/// start info and memory map, and (on Xen) the grant-mapping area above the RAM.
pub(crate) const MAPPED: u64 = 4 << 30;

/// The runtime GDT (null, code, data, the two-slot TSS descriptor) and the TSS's selector.
static GDT: spin::Once<(GlobalDescriptorTable<5>, SegmentSelector)> = spin::Once::new();

/// Replaces the boot GDT with the runtime one, which adds the descriptor of `tss`; reloads
/// the segment registers from it and loads the task register. Called once, by `idt::init`.
pub(crate) fn load_gdt(tss: &'static TaskStateSegment) {
    let (gdt, tss_selector) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::empty();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        assert_eq!(
            (code, data),
            (CODE_SELECTOR, DATA_SELECTOR),
            "the runtime GDT must keep the boot GDT's selectors"
        );
        (gdt, tss)
    });
    gdt.load();
    // SAFETY: `CODE_SELECTOR` is the ring-0 64-bit code segment of the GDT just loaded (a
    // 'static, never modified but by the CPU's busy bit); the far return continues right
    // after itself, on the same stack.
    unsafe { CS::set_reg(CODE_SELECTOR) };
    // SAFETY: `DATA_SELECTOR` is a present, writable ring-0 data segment of that GDT; in
    // 64-bit mode its base and limit are ignored, so no memory access changes meaning.
    unsafe { SS::set_reg(DATA_SELECTOR) };
    // SAFETY: as for SS.
    unsafe { DS::set_reg(DATA_SELECTOR) };
    // SAFETY: as for SS.
    unsafe { ES::set_reg(DATA_SELECTOR) };
    // SAFETY: `tss_selector` is that GDT's descriptor of `tss`, a 'static TSS whose IST
    // pointers are the tops of 'static stacks (`idt::init`); it is not busy yet (this runs
    // once), and `ltr` marking it busy is a write the GDT's atomic entries expect.
    unsafe { load_tss(*tss_selector) };
}

/// Bytes in the boot stack (the stack every Rust function but the interrupt handlers runs
/// on). xs-core walks trees with explicit stacks, never recursion, so this is generous.
pub(crate) const BOOT_STACK_SIZE: usize = 256 * 1024;

/// A stack: plain bytes the CPU writes through `%rsp`; Rust never forms a reference to them.
#[repr(C, align(4096))]
pub(crate) struct Stack<const N: usize>(core::cell::UnsafeCell<[u8; N]>);

// SAFETY: only the CPU uses a stack's bytes (as the stack of one context at a time); Rust
// code only takes the address, and reads it in `Stack::high_water` (a diagnostic that tolerates
// any value it sees).
unsafe impl<const N: usize> Sync for Stack<N> {}

impl<const N: usize> Stack<N> {
    pub(crate) const fn new() -> Self {
        Stack(core::cell::UnsafeCell::new([0; N]))
    }

    /// Lowest address.
    pub(crate) fn bottom(&self) -> usize {
        self.0.get() as usize
    }

    /// One past the highest address (16-byte aligned): the initial `%rsp`.
    pub(crate) fn top(&self) -> usize {
        self.bottom() + N
    }

    /// Bytes of the stack that were ever written with something other than zero: the stack
    /// is zeroed at boot (it is in `.bss`) and grows down, so the lowest non-zero byte is
    /// the deepest point reached (a lower bound: zeroes written by the program look unused).
    pub(crate) fn high_water(&self) -> usize {
        let base = self.0.get().cast::<u8>();
        let mut used = 0;
        for i in 0..N {
            // SAFETY: `base + i` is inside this static; a volatile byte read of memory that
            // the CPU writes as a stack is a plain load of an initialised byte (the static is
            // zero-initialised), and the value is only counted.
            let b = unsafe { base.wrapping_add(i).read_volatile() };
            if b != 0 {
                used = N - i;
                break;
            }
        }
        used
    }
}

/// The boot stack, referenced by name from the boot code.
#[unsafe(no_mangle)]
pub(crate) static XS_BOOT_STACK: Stack<BOOT_STACK_SIZE> = Stack::new();

unsafe extern "C" {
    /// TSC value read by the first instruction of `_start32` (in `.data`).
    static xs_boot_tsc: u64;
}

/// The TSC value at the PVH entry.
pub(crate) fn entry_tsc() -> u64 {
    // SAFETY: `xs_boot_tsc` is an initialised 8-byte `.data` variable written once by the
    // 32-bit boot code before any Rust ran, never written again.
    unsafe { xs_boot_tsc }
}

// The entry, the note and the boot data. AT&T syntax.
core::arch::global_asm!(
    r#"
    /* ---- The PVH note: Xen's ELF note, type XEN_ELFNOTE_PHYS32_ENTRY (18), whose
       descriptor is the 32-bit physical entry address. QEMU reads the descriptor as a
       machine word, so it is a .quad (Linux does the same); Xen reads 32 bits of it. */
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                 /* namesz: "Xen\0" */
    .long 8                 /* descsz */
    .long 18                /* type: XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad _start32
    .balign 4
    .popsection

    /* ---- Boot variables, in .data so that clearing .bss keeps them. */
    .pushsection .data.boot, "aw"
    .balign 8
    .globl xs_boot_tsc
xs_boot_tsc:
    .quad 0
xs_boot_info:
    .quad 0
    /* The boot GDT: null, 64-bit code, data (x86_64's KERNEL_CODE64 and KERNEL_DATA:
       flat, ring 0, accessed bits preset so that the CPU never writes them). */
    .balign 8
xs_boot_gdt:
    .quad 0
    .quad {code64}
    .quad {data}
    /* lgdt operand: limit, then base (6 bytes read in 32-bit mode). */
    .balign 8
xs_gdt_ptr:
    .word 3 * 8 - 1
    .quad xs_boot_gdt
    .popsection

    /* ---- Page tables (in .bss: zeroed with it, then filled in below). */
    .pushsection .bss.pagetables, "aw", @nobits
    .balign 4096
xs_pml4:
    .skip 4096
xs_pdpt:
    .skip 4096
xs_pd:
    .skip 4 * 4096
    .popsection

    .pushsection .text.boot, "ax"
    .code32
    .globl _start32
_start32:
    cli
    cld
    /* The entry time, before anything else. */
    rdtsc
    movl %eax, xs_boot_tsc
    movl %edx, xs_boot_tsc + 4
    movl %ebx, xs_boot_info
    movl $0, xs_boot_info + 4

    /* Zero .bss (page-aligned bounds from the linker script). */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    /* PML4[0] -> PDPT; PDPT[0..4] -> the four PDs (present, writable, accessed). The
       accessed and dirty bits are set up front so that a hypervisor shadowing our page
       tables need not trap the first access to every page to set them. */
    movl $xs_pdpt, %eax
    orl $0x23, %eax
    movl %eax, xs_pml4
    movl $xs_pd, %eax
    orl $0x23, %eax
    movl $xs_pdpt, %edi
    movl $4, %ecx
4:
    movl %eax, (%edi)
    addl $0x1000, %eax
    addl $8, %edi
    loop 4b
    /* PD entry i = i * 2 MiB | PS | D | A | RW | P, for the first 4 GiB (every address
       fits in the low half; the high halves stay zero). */
    movl $xs_pd, %edi
    movl $0xe3, %eax
    movl $2048, %ecx
5:
    movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 5b

    /* CR4: PAE (bit 5), OSFXSR (bit 9), OSXMMEXCPT (bit 10). */
    movl %cr4, %eax
    orl $0x620, %eax
    movl %eax, %cr4
    movl $xs_pml4, %eax
    movl %eax, %cr3
    /* EFER (MSR 0xc0000080): LME (bit 8). */
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    /* CR0: clear EM (bit 2); set PE (0), MP (1), NE (5), WP (16), PG (31). */
    movl %cr0, %eax
    andl $0xfffffffb, %eax
    orl $0x80010023, %eax
    movl %eax, %cr0

    lgdt xs_gdt_ptr
    ljmpl ${code_sel}, $2f

    .code64
2:
    movw ${data_sel}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    /* Boot stack: 16-byte aligned top, so %rsp is 8 mod 16 at the callee's entry. */
    movabsq $XS_BOOT_STACK + {stack_size}, %rsp
    xorl %ebp, %ebp
    fninit
    /* The legacy PICs (absent on Xen PVH): moved off the exception vectors (IRQs 0-15 to
       vectors 0x20-0x2f; the BIOS left them at 0x08-0x0f) and every line masked. The image
       polls and keeps interrupts disabled throughout. */
    movb $0x11, %al
    outb %al, $0x20
    outb %al, $0xa0
    movb $0x20, %al
    outb %al, $0x21
    movb $0x28, %al
    outb %al, $0xa1
    movb $0x04, %al
    outb %al, $0x21
    movb $0x02, %al
    outb %al, $0xa1
    movb $0x01, %al
    outb %al, $0x21
    outb %al, $0xa1
    movb $0xff, %al
    outb %al, $0x21
    outb %al, $0xa1
    movq xs_boot_info(%rip), %rdi
    call stubdom_main
3:
    cli
    hlt
    jmp 3b
    .popsection
    "#,
    stack_size = const BOOT_STACK_SIZE,
    code64 = const DescriptorFlags::KERNEL_CODE64.bits(),
    data = const DescriptorFlags::KERNEL_DATA.bits(),
    code_sel = const CODE_SELECTOR.0,
    data_sel = const DATA_SELECTOR.0,
    options(att_syntax)
);
