//! The XenStore stub-domain image: a freestanding x86_64 program that boots through the PVH
//! entry (so Xen and QEMU's `-kernel` both start it) and serves `xs-core` over rings.
//!
//! * On Xen (found through CPUID) it is the XenStore stub domain: `x86-glue` takes over
//!   ([`xen`]).
//! * Anywhere else (plain QEMU) it runs the self-test ([`selftest`]): the store serves
//!   guest-side clients over real ring pages in the image's memory, through the production
//!   pump and fences, and the result leaves through QEMU's `isa-debug-exit` ([`exit`]).
//!
//! Start-up: [`boot`] (32-bit entry, long mode, first call), then [`stubdom_main`]: console,
//! GDT, TSS and IDT with an IST stack for every gate ([`idt`]), heap ([`heap`]). A small ring
//! of recent events ([`trace`]) is dumped on fatal errors; [`time`] turns TSC ticks into
//! durations. Supplied here because nothing else supplies them freestanding: the panic
//! handler ([`mod@panic`]), `mem*` and `rust_eh_personality` ([`mem`]).
//!
//! Built with `cargo xtask stubdom` (see `targets/stubdom.toml`).

#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod console;
mod exit;
mod heap;
mod idt;
mod mem;
mod panic;
mod selftest;
mod startinfo;
mod time;
mod trace;
mod xen;

use console::println;
use startinfo::StartInfo;
use trace::Event;

/// The first Rust code, called by the boot code in 64-bit mode on the boot stack, with the
/// physical address of the PVH start-info structure.
#[unsafe(no_mangle)]
extern "C" fn stubdom_main(start_info: u64) -> ! {
    console::init();
    trace::record(Event::Entry, start_info);
    // The firmware leaves the cursor mid-line ("Booting from ROM.."): start a fresh one.
    println!();
    println!("xs-stubdom {}: PVH entry", env!("CARGO_PKG_VERSION"));
    idt::init();
    let mut info = StartInfo::parse(start_info);
    if !info.valid {
        panic!("no PVH start info at {start_info:#x} (not started through the PVH entry?)");
    }
    // Xen, if this runs on it: before the heap, which must know where RAM ends.
    let xen = x86_glue::cpuid::detect();
    if let Some(xen) = &xen {
        xen::use_debug_console();
        xen::read_memory(xen, &mut info);
    }
    heap::init(&info);
    let (image_start, image_end) = heap::image();
    let (heap_start, heap_end) = heap::region();
    println!(
        "boot: start info v{} at {:#x}, cmdline \"{}\"; image {:#x}..{:#x}, heap {:#x}..{:#x} ({} MiB)",
        info.version,
        info.addr,
        info.cmdline(),
        image_start,
        image_end,
        heap_start,
        heap_end,
        (heap_end - heap_start) >> 20
    );
    match xen {
        Some(xen) => xen::run(xen, &info),
        None => selftest::run(&info),
    }
}
