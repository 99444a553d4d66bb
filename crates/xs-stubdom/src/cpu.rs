//! The few CPU instructions the image needs, each wrapped once: port I/O, the TSC, CPUID,
//! RDRAND, CR2, and halting.

use core::arch::asm;
use core::arch::x86_64::{__cpuid_count, CpuidResult};

/// Writes a byte to an I/O port.
///
/// # Safety
///
/// `port` must be a port whose device the caller knows, and writing `value` to it must not
/// break memory safety (no port here drives DMA).
pub(crate) unsafe fn outb(port: u16, value: u8) {
    // SAFETY: `out` touches no memory and no flags; the caller vouches for the device.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
///
/// As for [`outb`].
pub(crate) unsafe fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
///
/// # Safety
///
/// As for [`outb`] (reads can have side effects on devices too).
pub(crate) unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` touches no memory and no flags; the caller vouches for the device.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// The time-stamp counter.
pub(crate) fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; CR4.TSD is clear (we never set it), so it cannot fault.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// CPUID leaf `leaf`, sub-leaf `sub`.
pub(crate) fn cpuid(leaf: u32, sub: u32) -> CpuidResult {
    __cpuid_count(leaf, sub)
}

/// Highest basic CPUID leaf.
pub(crate) fn max_leaf() -> u32 {
    cpuid(0, 0).eax
}

/// A random 64-bit value from RDRAND, if the CPU has it and it delivers within a few tries.
pub(crate) fn rdrand() -> Option<u64> {
    if cpuid(1, 0).ecx & (1 << 30) == 0 {
        return None;
    }
    for _ in 0..32 {
        let value: u64;
        let ok: u8;
        // SAFETY: CPUID said RDRAND exists; it only writes the named registers and flags.
        unsafe {
            asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack));
        }
        if ok != 0 {
            return Some(value);
        }
    }
    None
}

/// CR2: the faulting address of the last page fault.
pub(crate) fn cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 at CPL 0 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Stops this CPU for good: interrupts off, then `hlt` forever (an NMI would resume it, hence
/// the loop).
pub(crate) fn halt() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops the CPU; nothing runs afterwards.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
