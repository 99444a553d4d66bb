//! Leaving: through QEMU's `isa-debug-exit` device when there is one, else by halting.
//!
//! QEMU, started with `-device isa-debug-exit,iobase=0xf4,iosize=0x04`, exits when a value `v`
//! is written to port 0xf4, with status `(v << 1) | 1` (an odd status, so a clean QEMU exit,
//! status 0, can never be mistaken for ours). The values:
//!
//! | written | QEMU's exit status | meaning                                   |
//! |---------|--------------------|-------------------------------------------|
//! | 0x10    | 33                 | the self-test passed                      |
//! | 0x11    | 35                 | the self-test ran and a check failed      |
//! | 0x12    | 37                 | fatal error: panic or unexpected exception|
//!
//! Without the device (on Xen, or QEMU started without it) the write goes nowhere and the
//! CPU halts for good.

use core::sync::atomic::{AtomicU8, Ordering};

use x86_64::instructions::port::PortWriteOnly;
use x86_64::instructions::{hlt, interrupts};

use crate::trace::{self, Event};

/// `isa-debug-exit`'s port.
const PORT: u16 = 0xf4;

/// Written when the self-test passed (QEMU exits with 33).
pub(crate) const SUCCESS: u32 = 0x10;
/// Written when a self-test check failed (QEMU exits with 35).
pub(crate) const FAILURE: u32 = 0x11;
/// Written on a fatal error (QEMU exits with 37).
pub(crate) const FATAL: u32 = 0x12;

/// Exits with `value` (one of the constants above).
pub(crate) fn exit(value: u32) -> ! {
    trace::record(Event::Exit, u64::from(value));
    // SAFETY: port 0xf4 is isa-debug-exit under QEMU (it ends the VM) and nothing elsewhere.
    unsafe { PortWriteOnly::<u32>::new(PORT).write(value) };
    halt()
}

/// Fatal reports begun (a panic or an unexpected vector, and any met while reporting).
static REPORTS: AtomicU8 = AtomicU8::new(0);

/// Starts the report of a fatal error. A second one, met while reporting the first (a fault
/// in the panic message's formatting, say), is reported too, as it tells why the first
/// report broke off; a third exits at once without another word, so a report that faults
/// every time cannot loop.
pub(crate) fn begin_fatal_report() {
    match REPORTS.fetch_add(1, Ordering::SeqCst) {
        0 => {}
        1 => {
            crate::console::println!("\nFATAL: while reporting an earlier fatal error:");
        }
        _ => fatal_quietly(),
    }
}

/// Exits after a fatal error that has been reported.
pub(crate) fn fatal() -> ! {
    exit(FATAL)
}

/// Exits after a fatal error met while reporting another: nothing more is printed or
/// recorded.
fn fatal_quietly() -> ! {
    // SAFETY: as in `exit`.
    unsafe { PortWriteOnly::<u32>::new(PORT).write(FATAL) };
    halt()
}

/// Stops this CPU for good: interrupts off, then `hlt` forever (an NMI would resume it, hence
/// the loop).
fn halt() -> ! {
    interrupts::disable();
    loop {
        hlt();
    }
}
