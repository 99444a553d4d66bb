//! Everything that runs at CPL0: the entry, the interrupt gates, and the one privileged
//! service the CPL3 code needs (`wrmsr`, through `syscall`). All of it is assembly.
//!
//! On this project's KVM (`kvm_pvm`, a paravirtual KVM without VMX/SVM) every instruction at
//! CPL0 goes through KVM's instruction emulator, which is slow and fails on SSE, `int3` and
//! `xrstor`; code at CPL3 runs natively. So the guest is a kernel cut in two: this file is
//! its CPL0 half, a few dozen SSE-free instructions written by hand, and all Rust code runs
//! at CPL3 with IOPL 3 (so that the hypercall page's `out` works there) and every page
//! user-accessible (one address space, one program: nothing to protect from itself).
//!
//! # Entry (xs-vmm's boot protocol, `crates/xs-vmm/src/boot.rs`)
//!
//! `_start` is entered in 64-bit mode at CPL0, interrupts off, paging on with `[0, 4 GiB)`
//! identity-mapped, the VMM's GDT loaded (0x08 kernel code, 0x10 kernel data, 0x18 user
//! data, 0x20 user code, 0x28 the TSS whose RSP0 is the kernel stack), `rsp` at the top of
//! that kernel stack, `rdi` = bytes of RAM from 0. It fills the IDT, enables the local APIC,
//! and `iretq`s to [`USER_ENTRY`] at CPL3 on the user stack.
//!
//! # Gates
//!
//! * Vectors 0 to 31 (exceptions): `out` of the vector to [`FAULT_PORT`], which ends the VM;
//!   the VMM prints the registers and the interrupt frame it finds on the kernel stack.
//! * [`UPCALL_VECTOR`] (the event-channel upcall, `HVMOP_set_evtchn_upcall_vector`): counts
//!   the upcall in [`upcalls`], writes the local APIC's EOI, returns. The CPL3 code scans
//!   the event bitmaps itself.
//!
//! # Hypercalls
//!
//! Xen takes hypercalls from CPL0 only, and the VMM's hypercall page (`mov eax, nr; out
//! 0xe5, eax; ret`) works only there (this host's KVM forces IOPL 0 at CPL3). The CPL3 code
//! calls a trampoline page instead ([`hypercall_trampoline`]): stubs `mov eax, nr; ud2;
//! ret`, whose `#UD` the handler turns into a call of the real stub at CPL0, returning past
//! the `ud2`. Arguments and result stay in the ABI's registers throughout.
//!
//! # The way in from CPL3
//!
//! A `ud2` at one known address, `wrmsr_gate`: the `#UD` handler sees it there, performs
//! `wrmsr` of `rsi` with `rdx` (the one privileged operation the CPL3 code needs: the
//! hypercall-page MSR a Xen guest must write), and returns past it. A `#UD` anywhere else is
//! a fault like any other. (This host's KVM offers no better way in: `int n` at CPL3 raises
//! `#UD`, and `syscall` does not leave CPL3 for a guest that is not PVM-aware; exceptions are
//! delivered to the guest's IDT as on hardware.)

use core::arch::global_asm;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

/// The event-channel upcall vector (Linux's `HYPERVISOR_CALLBACK_VECTOR`).
pub(crate) const UPCALL_VECTOR: u8 = 0xf3;
/// Where a CPU exception is reported (xs-vmm's debug port for fatal guest faults).
pub(crate) const FAULT_PORT: u8 = 0xe6;

/// The hypercall page Xen (the VMM) wrote (read by the CPL0 `#UD` handler).
#[unsafe(no_mangle)]
static HYPERCALL_PAGE: AtomicU64 = AtomicU64::new(0);
/// The page of trampoline stubs the CPL3 code calls (`mov eax, nr; ud2; ret`).
#[unsafe(no_mangle)]
static TRAMPOLINE: AtomicU64 = AtomicU64::new(u64::MAX - 4096);

/// Makes hypercalls from CPL3 possible: `trampoline` gets a stub per hypercall whose `ud2`
/// the CPL0 `#UD` handler turns into a call of Xen's stub in `hypercall_page` (so every
/// hypercall is made at CPL0, as Xen wants, the way Linux's `privcmd` makes them for its
/// user space). Returns the trampoline, to be used as a hypercall page.
pub(crate) fn hypercall_trampoline(
    hypercall_page: NonNull<u8>,
    trampoline: NonNull<u8>,
) -> NonNull<u8> {
    // SAFETY: `trampoline` is a whole page of ours, written only here.
    let page = unsafe { core::slice::from_raw_parts_mut(trampoline.as_ptr(), 4096) };
    for (nr, stub) in page.chunks_exact_mut(32).enumerate() {
        stub[0] = 0xb8;
        stub[1..5].copy_from_slice(&(nr as u32).to_le_bytes());
        stub[5..7].copy_from_slice(&[0x0f, 0x0b]);
        stub[7] = 0xc3;
    }
    // ORDERING: the handler runs on this vCPU after these stores, on a later `ud2`.
    HYPERCALL_PAGE.store(
        hypercall_page.as_ptr().expose_provenance() as u64,
        Ordering::SeqCst,
    );
    TRAMPOLINE.store(
        trampoline.as_ptr().expose_provenance() as u64,
        Ordering::SeqCst,
    );
    trampoline
}

/// Upcalls taken so far (written by the CPL0 upcall stub, read at CPL3).
#[unsafe(no_mangle)]
static UPCALLS: AtomicU64 = AtomicU64::new(0);

/// Upcalls taken so far.
pub(crate) fn upcalls() -> u64 {
    // ORDERING: the stub's `inc` runs on this vCPU between two instructions of ours: any
    // load sees it or an earlier value; Relaxed is enough for a counter.
    UPCALLS.load(Ordering::Relaxed)
}

/// `wrmsr(msr, value)` through the `#UD` gate.
///
/// # Safety
///
/// Writing `msr` must be harmless to this program (the hypercall-page MSR: the VMM writes
/// the stubs into a page the caller owns).
pub(crate) unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: `wrmsr_gate` is `ud2; ret`; the `#UD` handler performs `wrmsr` and resumes
    // at the `ret` with every register preserved; the caller vouches for the MSR's effect.
    unsafe {
        core::arch::asm!(
            "call wrmsr_gate",
            in("rsi") u64::from(msr),
            in("rdx") value,
        );
    }
}

global_asm!(
    r#"
    .section .text.boot, "ax"
    .code64
    .global _start
_start:
    mov r15, rdi

    /* Exceptions 0-31: the stubs at fault_stubs + 16 * n. */
    xor ecx, ecx
2:
    lea rax, [rip + fault_stubs]
    mov rdx, rcx
    shl rdx, 4
    add rax, rdx
    lea rdi, [rip + IDT]
    add rdi, rdx
    mov edx, 0x8e
    call set_gate
    inc ecx
    cmp ecx, 32
    jb 2b

    lea rax, [rip + upcall_entry]
    lea rdi, [rip + IDT + 16 * {upcall}]
    mov edx, 0x8e
    call set_gate
    lea rax, [rip + ud_entry]
    lea rdi, [rip + IDT + 16 * 6]
    mov edx, 0x8e
    call set_gate
    lidt [rip + IDT_DESC]

    /* Enable the local APIC (spurious vector 0xff, software enable). */
    mov rax, 0xfee000f0
    mov dword ptr [rax], 0x1ff

    /* To CPL3: SS, RSP, RFLAGS (IOPL 3, IF), CS, RIP. */
    push 0x1b
    lea rax, [rip + USER_STACK_TOP]
    push rax
    push 0x3202
    push 0x23
    lea rax, [rip + user_entry]
    push rax
    iretq

/* rax = handler, rdi = the IDT entry, edx = type and attributes. Clobbers rax. */
set_gate:
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov byte ptr [rdi + 4], 0
    mov byte ptr [rdi + 5], dl
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    ret

    .balign 16
fault_stubs:
    .set vec, 0
    .rept 32
    .balign 16
    mov eax, vec
    out {fault_port}, eax
    cli
1:
    hlt
    jmp 1b
    .set vec, vec + 1
    .endr

    .balign 16
upcall_entry:
    push rax
    inc qword ptr [rip + UPCALLS]
    mov rax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq

    .balign 16
ud_entry:
    /* A hypercall: the `ud2` of a trampoline stub (`mov eax, nr; ud2; ret`). */
    push rcx
    mov rcx, [rsp + 8]
    sub rcx, [rip + TRAMPOLINE]
    cmp rcx, 4096
    jb 5f
    pop rcx
    push rax
    lea rax, [rip + wrmsr_gate]
    cmp [rsp + 8], rax
    jne 4f
    push rcx
    push rdx
    mov ecx, esi
    mov eax, edx
    shr rdx, 32
    wrmsr
    pop rdx
    pop rcx
    pop rax
    add qword ptr [rsp], 2
    iretq
4:
    pop rax
    jmp fault_stubs + 16 * 6
5:
    /* rax = nr < 128: Xen's stub at HYPERCALL_PAGE + 32 * nr, made at CPL0. */
    mov rcx, rax
    and ecx, 127
    shl ecx, 5
    add rcx, [rip + HYPERCALL_PAGE]
    call rcx
    pop rcx
    add qword ptr [rsp], 2
    iretq

    /* CPL3 from here on. */
    .text
    .global wrmsr_gate
wrmsr_gate:
    ud2
    ret

user_entry:
    mov rdi, r15
    call guest_main
    ud2

    .section .data
    .balign 8
    .word 0, 0, 0
IDT_DESC:
    .word 256 * 16 - 1
    .quad IDT

    .section .bss
    .balign 4096
IDT:
    .skip 256 * 16
    .balign 16
USER_STACK:
    .skip 512 * 1024
USER_STACK_TOP:
    "#,
    upcall = const UPCALL_VECTOR,
    fault_port = const FAULT_PORT,
);
