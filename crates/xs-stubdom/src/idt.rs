//! The TSS, the IDT and the interrupt entry stubs.
//!
//! Every one of the 256 vectors has a gate, and every gate switches to an IST stack: the
//! precompiled `core` may keep data in the red zone below `%rsp`, which an exception frame
//! pushed on the same stack would overwrite (design notes §5). Separate stacks for the
//! double fault, NMI and machine check, so that one of those arriving during another handler
//! does not overwrite that handler's frame.
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

use crate::boot::{self, Stack, XS_GDT};
use crate::console::{Console, println};
use crate::trace::{self, Event};
use crate::{cpu, exit};

/// Bytes in each IST stack.
const IST_SIZE: usize = 16 * 1024;

/// IST slots (1-based in the gate; 0 would mean "no stack switch", never used).
const IST_DOUBLE_FAULT: u8 = 1;
const IST_NMI: u8 = 2;
const IST_MACHINE_CHECK: u8 = 3;
const IST_DEBUG: u8 = 4;
const IST_EXCEPTION: u8 = 5;
const IST_INTERRUPT: u8 = 6;
const IST_COUNT: usize = 6;

static IST_STACKS: [Stack<IST_SIZE>; IST_COUNT] = [const { Stack::new() }; IST_COUNT];

/// The 64-bit TSS (Intel SDM vol. 3, 8.7): only the IST pointers matter here.
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

const _: () = assert!(core::mem::size_of::<Tss>() == 104);

/// A 16-byte interrupt gate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    /// Present, DPL 0, type 0xE (64-bit interrupt gate: IF cleared on entry).
    flags: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const _: () = assert!(core::mem::size_of::<Gate>() == 16);

impl Gate {
    fn new(handler: u64, ist: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: boot::CODE64,
            ist,
            flags: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static TSS: spin::Once<Tss> = spin::Once::new();
static IDT: spin::Once<Idt> = spin::Once::new();

/// `lidt`/`lgdt` operand.
#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

unsafe extern "C" {
    /// The first of 256 entry stubs, each in its own 16-byte slot (below).
    static xs_vectors: u8;
    /// The end of the last stub's slot.
    static xs_vectors_end: u8;
}

/// The IST slot of a vector.
fn ist_of(vector: usize) -> u8 {
    match vector {
        8 => IST_DOUBLE_FAULT,
        2 => IST_NMI,
        18 => IST_MACHINE_CHECK,
        1 | 3 => IST_DEBUG,
        0..32 => IST_EXCEPTION,
        _ => IST_INTERRUPT,
    }
}

/// Loads the TSS (with the IST stacks) and the IDT.
pub(crate) fn init() {
    let tss = TSS.call_once(|| {
        let mut ist = [0u64; 7];
        for (slot, stack) in ist.iter_mut().zip(&IST_STACKS) {
            *slot = stack.top() as u64;
        }
        Tss {
            reserved0: 0,
            rsp: [0; 3],
            reserved1: 0,
            ist,
            reserved2: 0,
            reserved3: 0,
            // Past the end of the segment: no I/O permission bitmap.
            iomap_base: core::mem::size_of::<Tss>() as u16,
        }
    });
    // The 16-byte TSS descriptor: limit 103, type 0x9 (available 64-bit TSS), present.
    let base = core::ptr::from_ref(tss) as u64;
    let limit = (core::mem::size_of::<Tss>() - 1) as u64;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    let high = base >> 32;
    XS_GDT.0[3].store(low, Ordering::Relaxed);
    XS_GDT.0[4].store(high, Ordering::Relaxed);

    let stubs = (&raw const xs_vectors) as u64;
    let stubs_end = (&raw const xs_vectors_end) as u64;
    // Gates are computed as `stubs + 16 * vector`: every stub must have fitted its slot.
    assert_eq!(
        stubs_end - stubs,
        16 * 256,
        "an interrupt entry stub outgrew 16 bytes"
    );
    let idt = IDT.call_once(|| {
        let mut gates = [Gate::new(0, 0); 256];
        for (vector, gate) in gates.iter_mut().enumerate() {
            *gate = Gate::new(stubs + 16 * vector as u64, ist_of(vector));
        }
        Idt(gates)
    });
    let pointer = Pointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: core::ptr::from_ref(idt) as u64,
    };
    // SAFETY: the TSS descriptor just written describes a 'static TSS whose IST pointers are
    // the tops of 'static stacks; `ltr` marks it busy in the GDT (atomics, so the CPU's write
    // is expected). The IDT is 'static, every gate points at a stub below, in our code
    // segment, with an IST stack. Interrupts stay disabled.
    unsafe {
        asm!(
            "ltr {sel:x}",
            "lidt [{ptr}]",
            sel = in(reg) boot::TSS,
            ptr = in(reg) &raw const pointer,
            options(readonly, nostack, preserves_flags)
        );
    }
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
/// Set on the first fatal vector: a fault while reporting one must not report again.
static FATAL: AtomicBool = AtomicBool::new(false);

/// Raises `#BP` with `int3` and returns the `%rsp` its handler ran at (0 if it did not run),
/// and whether that lies on the breakpoint's IST stack.
pub(crate) fn breakpoint_probe() -> (u64, bool) {
    BREAKPOINT_RSP.store(0, Ordering::Relaxed);
    EXPECT_BREAKPOINT.store(true, Ordering::SeqCst);
    // SAFETY: the `#BP` gate is installed (`init`) and its handler returns when armed; the
    // stub saves and restores every general register and `iretq` restores flags and stack.
    unsafe { asm!("int3") };
    let rsp = BREAKPOINT_RSP.load(Ordering::SeqCst);
    let stack = &IST_STACKS[usize::from(IST_DEBUG) - 1];
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
    if FATAL.swap(true, Ordering::SeqCst) {
        // A fault while reporting one: leave without another word.
        exit::fatal_quietly();
    }
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
        let _ = writeln!(out, "  cr2 {:#018x}", cpu::cr2());
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
