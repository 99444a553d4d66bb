//! The TSS, the IDT and the interrupt entry stubs.
//!
//! Every vector has a gate (the reserved ones aside, below), and every gate switches to an
//! IST stack: the precompiled `core` may keep data in the red zone below `%rsp`, which an
//! exception frame pushed on the same stack would overwrite (design notes §5). Separate
//! stacks for the double fault, NMI and machine check, so that one of those arriving during
//! another handler does not overwrite that handler's frame.
//!
//! The TSS, the IDT and their loading are the `x86_64` crate's ([`TaskStateSegment`],
//! [`InterruptDescriptorTable`]; the TSS descriptor goes into the GDT [`boot::load_gdt`]
//! installs). Its typed IDT leaves the architecturally reserved vectors (15, 22–27, 31)
//! without a gate: the CPU never raises them, and an `int` to one of them raises `#NP`
//! instead (error code `vector << 3 | 2`), which is reported like any other fault.
//!
//! The stubs are assembler (`extern "x86-interrupt"` is nightly-only): each pushes a zero in
//! place of the error code for vectors without one, then the vector number, and jumps to a
//! common routine that saves the general registers and calls [`xs_vector`] with the frame.
//! Nothing here enables interrupts: the image polls. Every vector is fatal (a report and
//! exit) except the breakpoint, whose handler returns, so the self-test can prove the
//! machinery works (`int3` lands on its IST stack and comes back).

use core::arch::{asm, global_asm};
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use x86_64::VirtAddr;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{Entry, InterruptDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

use crate::boot::{self, Stack};
use crate::console::{Console, println};
use crate::exit;
use crate::trace::{self, Event};

/// Bytes in each IST stack.
const IST_SIZE: usize = 16 * 1024;

/// IST slots, 0-based as `x86_64` counts them (a gate holds the slot + 1; 0 there would mean
/// "no stack switch", which no gate here uses).
const IST_DOUBLE_FAULT: u16 = 0;
const IST_NMI: u16 = 1;
const IST_MACHINE_CHECK: u16 = 2;
const IST_DEBUG: u16 = 3;
const IST_EXCEPTION: u16 = 4;
const IST_INTERRUPT: u16 = 5;
const IST_COUNT: usize = 6;

static IST_STACKS: [Stack<IST_SIZE>; IST_COUNT] = [const { Stack::new() }; IST_COUNT];

static TSS: spin::Once<TaskStateSegment> = spin::Once::new();
static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();

unsafe extern "C" {
    /// The first of 256 entry stubs, each in its own 16-byte slot (below).
    static xs_vectors: u8;
    /// The end of the last stub's slot.
    static xs_vectors_end: u8;
}

/// The IST slot of a vector.
fn ist_of(vector: u8) -> u16 {
    match vector {
        8 => IST_DOUBLE_FAULT,
        2 => IST_NMI,
        18 => IST_MACHINE_CHECK,
        1 | 3 => IST_DEBUG,
        0..32 => IST_EXCEPTION,
        _ => IST_INTERRUPT,
    }
}

/// Points `entry`, the gate of `vector`, at that vector's stub (`stubs + 16 * vector`), on
/// the vector's IST stack.
fn set_gate<F>(entry: &mut Entry<F>, stubs: u64, vector: u8) {
    let stub = VirtAddr::new(stubs + 16 * u64::from(vector));
    // SAFETY: the stub of `vector` is an interrupt entry point in our code segment (the
    // current CS, which the gate takes): for the vectors whose gate type has an error code it
    // relies on the CPU's, for the others it pushes a zero in its place, so the frame has the
    // shape the common part expects; the common part saves and restores every general
    // register and returns with `iretq` (or never returns).
    let options = unsafe { entry.set_handler_addr(stub) };
    // SAFETY: `ist_of` gives a slot below `IST_COUNT`, which `init` filled with the top of its
    // own 'static stack before any gate is used. Vectors that share a slot can only nest by a
    // fault during a fatal report, and a fatal handler never returns to the frame the nested
    // one overwrote (it exits); the one handler that returns, `#BP`'s, raises nothing.
    unsafe { options.set_stack_index(ist_of(vector)) };
}

/// Loads the TSS (with the IST stacks) and the IDT.
pub(crate) fn init() {
    let tss = TSS.call_once(|| {
        let mut ist = [VirtAddr::zero(); 7];
        for (slot, stack) in ist.iter_mut().zip(&IST_STACKS) {
            *slot = VirtAddr::new(stack.top() as u64);
        }
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table = ist;
        tss
    });
    boot::load_gdt(tss);

    let stubs = (&raw const xs_vectors) as u64;
    let stubs_end = (&raw const xs_vectors_end) as u64;
    // Gates are computed as `stubs + 16 * vector`: every stub must have fitted its slot.
    assert_eq!(
        stubs_end - stubs,
        16 * 256,
        "an interrupt entry stub outgrew 16 bytes"
    );
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        // The exceptions through their typed fields (indexing reaches only those without an
        // error code), in vector order; the reserved vectors have no gate (module notes).
        set_gate(&mut idt.divide_error, stubs, 0);
        set_gate(&mut idt.debug, stubs, 1);
        set_gate(&mut idt.non_maskable_interrupt, stubs, 2);
        set_gate(&mut idt.breakpoint, stubs, 3);
        set_gate(&mut idt.overflow, stubs, 4);
        set_gate(&mut idt.bound_range_exceeded, stubs, 5);
        set_gate(&mut idt.invalid_opcode, stubs, 6);
        set_gate(&mut idt.device_not_available, stubs, 7);
        set_gate(&mut idt.double_fault, stubs, 8);
        // Vector 9 (coprocessor segment overrun, obsolete) is no public field; the index has it.
        set_gate(&mut idt[9], stubs, 9);
        set_gate(&mut idt.invalid_tss, stubs, 10);
        set_gate(&mut idt.segment_not_present, stubs, 11);
        set_gate(&mut idt.stack_segment_fault, stubs, 12);
        set_gate(&mut idt.general_protection_fault, stubs, 13);
        set_gate(&mut idt.page_fault, stubs, 14);
        set_gate(&mut idt.x87_floating_point, stubs, 16);
        set_gate(&mut idt.alignment_check, stubs, 17);
        set_gate(&mut idt.machine_check, stubs, 18);
        set_gate(&mut idt.simd_floating_point, stubs, 19);
        set_gate(&mut idt.virtualization, stubs, 20);
        set_gate(&mut idt.cp_protection_exception, stubs, 21);
        set_gate(&mut idt.hv_injection_exception, stubs, 28);
        set_gate(&mut idt.vmm_communication_exception, stubs, 29);
        set_gate(&mut idt.security_exception, stubs, 30);
        // The interrupts, 32 to 255.
        for (entry, vector) in idt[32..].iter_mut().zip(32..=u8::MAX) {
            set_gate(entry, stubs, vector);
        }
        idt
    });
    // Every gate points at a stub with an IST stack, and the TSS holding those stacks is
    // loaded (above). Interrupts stay disabled.
    idt.load();
    trace::record(Event::Idt, 0);
}

// The 256 stubs, then the common part. AT&T syntax.
global_asm!(
    r#"
    .pushsection .text.vectors, "ax"
    .code64
    .balign 16
    .globl xs_vectors
xs_vectors:
    .set xs_vec, 0
    .rept 256
    .balign 16
    /* Vectors for which the CPU pushes an error code: #DF, #TS, #NP, #SS, #GP, #PF,
       #AC, #CP, #VC, #SX. For the others, a zero keeps the frame's shape. */
    .if (xs_vec == 8) || (xs_vec == 10) || (xs_vec == 11) || (xs_vec == 12) || (xs_vec == 13) || (xs_vec == 14) || (xs_vec == 17) || (xs_vec == 21) || (xs_vec == 29) || (xs_vec == 30)
    .else
    pushq $0
    .endif
    pushq $xs_vec
    jmp xs_vector_common
    .set xs_vec, xs_vec + 1
    .endr
    .balign 16
    .globl xs_vectors_end
xs_vectors_end:

xs_vector_common:
    /* Frame so far (growing down): ss, rsp, rflags, cs, rip, error code, vector. */
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    movq %rsp, %rdi
    /* The CPU aligned the stack to 16 before pushing; keep the ABI's alignment anyway. */
    movq %rsp, %rbx
    andq $-16, %rsp
    call xs_vector
    movq %rbx, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
    .popsection
    "#,
    options(att_syntax)
);

/// What the common stub saved, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Frame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Exception names (Intel SDM vol. 3, table 6-1).
fn name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack fault",
        "#GP general protection",
        "#PF page fault",
        "reserved (15)",
        "#MF x87 floating point",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD floating point",
        "#VE virtualization",
        "#CP control protection",
        "reserved (22)",
        "reserved (23)",
        "reserved (24)",
        "reserved (25)",
        "reserved (26)",
        "reserved (27)",
        "#HV hypervisor injection",
        "#VC VMM communication",
        "#SX security",
        "reserved (31)",
    ];
    NAMES.get(vector as usize).copied().unwrap_or("interrupt")
}

/// Armed by [`breakpoint_probe`]: the next `#BP` is expected and returns.
static EXPECT_BREAKPOINT: AtomicBool = AtomicBool::new(false);
/// The `%rsp` at which the last expected `#BP` was handled.
static BREAKPOINT_RSP: AtomicU64 = AtomicU64::new(0);

/// Raises `#BP` with `int3` and returns the `%rsp` its handler ran at (0 if it did not run),
/// and whether that lies on the breakpoint's IST stack.
pub(crate) fn breakpoint_probe() -> (u64, bool) {
    BREAKPOINT_RSP.store(0, Ordering::Relaxed);
    EXPECT_BREAKPOINT.store(true, Ordering::SeqCst);
    // Not `x86_64::instructions::interrupts::int3`: that one is `nomem`, which would let the
    // compiler move the accesses above and below (which the handler pairs with) across it.
    // SAFETY: the `#BP` gate is installed (`init`) and its handler returns when armed; the
    // stub saves and restores every general register and `iretq` restores flags and stack.
    unsafe { asm!("int3") };
    let rsp = BREAKPOINT_RSP.load(Ordering::SeqCst);
    let stack = &IST_STACKS[usize::from(IST_DEBUG)];
    let on_ist = (stack.bottom() as u64..stack.top() as u64).contains(&rsp);
    (rsp, on_ist)
}

/// Called by the common stub with the saved frame.
#[unsafe(no_mangle)]
extern "C" fn xs_vector(frame: &mut Frame) {
    if frame.vector == 3 && EXPECT_BREAKPOINT.swap(false, Ordering::SeqCst) {
        BREAKPOINT_RSP.store(core::ptr::from_mut(frame) as u64, Ordering::SeqCst);
        return;
    }
    trace::record(Event::Vector, frame.vector);
    // Met while reporting another fatal error, this one is reported once more at most.
    exit::begin_fatal_report();
    let mut out = Console;
    println!();
    let _ = writeln!(
        out,
        "FATAL: vector {} ({}) error {:#x} at rip {:#018x}",
        frame.vector,
        name(frame.vector),
        frame.error,
        frame.rip
    );
    if frame.vector == 14 {
        let _ = writeln!(out, "  cr2 {:#018x}", Cr2::read_raw());
    }
    let f = &*frame;
    let _ = writeln!(
        out,
        "  cs {:#x} ss {:#x} rflags {:#x} rsp {:#018x}",
        f.cs, f.ss, f.rflags, f.rsp
    );
    let regs = [
        ("rax", f.rax),
        ("rbx", f.rbx),
        ("rcx", f.rcx),
        ("rdx", f.rdx),
        ("rsi", f.rsi),
        ("rdi", f.rdi),
        ("rbp", f.rbp),
        ("r8", f.r8),
        ("r9", f.r9),
        ("r10", f.r10),
        ("r11", f.r11),
        ("r12", f.r12),
        ("r13", f.r13),
        ("r14", f.r14),
        ("r15", f.r15),
    ];
    for row in regs.chunks(4) {
        let _ = write!(out, " ");
        for (name, value) in row {
            let _ = write!(out, " {name:>3} {value:#018x}");
        }
        let _ = writeln!(out);
    }
    trace::dump(&mut out);
    exit::fatal();
}

/// Bytes of the deepest use of each IST stack so far.
pub(crate) fn ist_high_water() -> [usize; IST_COUNT] {
    let mut out = [0; IST_COUNT];
    for (o, s) in out.iter_mut().zip(&IST_STACKS) {
        *o = s.high_water();
    }
    out
}
