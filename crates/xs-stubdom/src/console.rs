//! The console: COM1 (a 16550 UART at port 0x3f8), plus a second sink for Xen's console
//! (`HYPERVISOR_console_io`) once the Xen path has registered one.
//!
//! Writing takes no lock, so that a panic or an exception can always print, even in the
//! middle of another message. `\n` goes out as `\r\n`. Where there is no UART (a PVH domain
//! on Xen has none) the scratch-register probe at [`init`] finds none and COM1 is left alone.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use x86_64::instructions::port::Port;

/// COM1's I/O base.
const COM1: u16 = 0x3f8;
/// Line status register (offset 5): bit 5, transmit holding register empty.
const LSR: u16 = 5;
const THR_EMPTY: u8 = 0x20;

/// Scratch register (offset 7): any value written reads back on a 16550.
const SCRATCH: u16 = 7;

/// COM1's register at `offset`.
const fn com1(offset: u16) -> Port<u8> {
    Port::new(COM1 + offset)
}

/// Whether COM1 answered the probe.
static UART: AtomicBool = AtomicBool::new(false);

/// Finds COM1 (its scratch register keeps what is written) and programs it for 115200 baud,
/// 8N1, FIFOs on, interrupts off.
pub(crate) fn init() {
    let present = [0x5a, 0xa5].iter().all(|&probe| {
        // SAFETY: the scratch register of a 16550 has no function; where no UART answers,
        // the write goes nowhere and the read returns whatever the bus floats to.
        unsafe { com1(SCRATCH).write(probe) };
        // SAFETY: as above.
        (unsafe { com1(SCRATCH).read() }) == probe
    });
    UART.store(present, Ordering::Relaxed);
    if !present {
        return;
    }
    let setup: [(u16, u8); 7] = [
        (1, 0x00), // IER: no interrupts
        (3, 0x80), // LCR: DLAB, to set the divisor
        (0, 0x01), // DLL: divisor 1 = 115200 baud
        (1, 0x00), // DLM
        (3, 0x03), // LCR: 8 data bits, no parity, 1 stop bit
        (2, 0xc7), // FCR: enable and clear FIFOs, 14-byte threshold
        (4, 0x03), // MCR: DTR, RTS
    ];
    for (offset, value) in setup {
        // SAFETY: COM1's registers (the probe found a UART there), programmed as the 16550
        // documents; no DMA.
        unsafe { com1(offset).write(value) };
    }
}

fn put(byte: u8) {
    // Bounded wait: a stuck UART must not hang a fatal-error report.
    for _ in 0..100_000 {
        // SAFETY: reading COM1's line status register has no side effect.
        if unsafe { com1(LSR).read() } & THR_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    // SAFETY: writing the transmit register of COM1 sends the byte.
    unsafe { com1(0).write(byte) };
}

/// A second sink (Xen's console), set once by the Xen path; a plain function so that it can
/// be called from any context, a fatal-error report included.
static SINK: spin::Once<fn(&[u8])> = spin::Once::new();

/// Also sends everything written from now on to `sink`.
pub(crate) fn set_sink(sink: fn(&[u8])) {
    SINK.call_once(|| sink);
}

/// Writes raw bytes to every sink.
pub(crate) fn write_bytes(bytes: &[u8]) {
    if UART.load(Ordering::Relaxed) {
        for &b in bytes {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
    }
    if let Some(sink) = SINK.get() {
        sink(bytes);
    }
}

/// The console as a `fmt::Write`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Prints a line on the console.
macro_rules! println {
    () => {
        $crate::console::write_bytes(b"\n")
    };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Console, $($arg)*);
    }};
}

pub(crate) use println;
