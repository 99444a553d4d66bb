//! The panic handler: report on the console, dump the trace ring, exit as a fatal error.

use core::fmt::Write as _;

use crate::console::Console;
use crate::exit;
use crate::trace::{self, Event};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // Met while reporting another fatal error, this one is reported once more at most.
    exit::begin_fatal_report();
    trace::record(Event::Panic, 0);
    let mut out = Console;
    let _ = writeln!(out, "\nPANIC: {info}");
    trace::dump(&mut out);
    exit::fatal()
}
