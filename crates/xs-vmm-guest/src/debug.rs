//! xs-vmm's debug output and exit, through its MMIO page (port I/O is refused at CPL3 on
//! this host's KVM): a byte written at `DEBUG_MMIO` is console output, a 32-bit write at
//! `EXIT_MMIO` ends the VM with that status. For the time before the hypercall page exists
//! and for fatal errors; everything else goes through `console_io` or the PV console.

use core::fmt;

/// `DEBUG_MMIO` (crates/xs-vmm/src/layout.rs).
const DEBUG_MMIO: usize = 0xfe00_0008;
/// `EXIT_MMIO`.
const EXIT_MMIO: usize = 0xfe00_0010;

/// One VM exit per byte: only for the first lines and fatal errors.
#[derive(Debug)]
pub(crate) struct DebugPort;

impl fmt::Write for DebugPort {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: the VMM's MMIO page, identity-mapped, with no memory behind it: the
            // write exits to the VMM and touches nothing of ours.
            unsafe { core::ptr::write_volatile(DEBUG_MMIO as *mut u8, b) };
        }
        Ok(())
    }
}

/// Ends the VM with `status`.
pub(crate) fn exit(status: u32) -> ! {
    loop {
        // SAFETY: as above; the VMM stops the vCPU.
        unsafe { core::ptr::write_volatile(EXIT_MMIO as *mut u32, status) };
    }
}
