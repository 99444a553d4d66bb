//! The panic handler: report on the console, dump the trace ring, exit as a fatal error.

use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::console::Console;
use crate::exit;
use crate::trace::{self, Event};

/// Set by the first panic: a panic while reporting one exits without another word.
static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::SeqCst) {
        exit::fatal_quietly();
    }
    trace::record(Event::Panic, 0);
    let mut out = Console;
    let _ = writeln!(out, "\nPANIC: {info}");
    trace::dump(&mut out);
    exit::fatal()
}
