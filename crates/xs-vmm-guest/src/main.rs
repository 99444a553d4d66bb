//! The guest of xs-vmm: a freestanding x86_64 program that talks to the VMM exactly as a Xen
//! HVM guest talks to Xen. It finds Xen by CPUID, installs the hypercall page, maps
//! `shared_info`, registers `vcpu_info` and its upcall vector, reads the store's parameters,
//! and runs a self-test through xenbus (x86-glue and xs-serve's guest client in the guest
//! role), ending with the console device handshake; its test lines go out through that PV
//! console, the last one `xs-vmm-guest: N passed, M failed`. If the store holds
//! `xs-vmm/bench`, it then measures READ round trips ([`bench`]).
//!
//! Start-up: [`boot`] (the CPL0 half, assembly), then [`guest_main`] at CPL3.

#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod console;
mod debug;
mod heap;
mod mem;
mod selftest;
mod store;
mod xen;

use core::fmt::Write as _;

/// The first Rust code, at CPL3 on the user stack, with the bytes of RAM.
#[unsafe(no_mangle)]
extern "C" fn guest_main(_ram: u64) -> ! {
    heap::init();
    let xen = match xen::Xen::init() {
        Ok(xen) => xen,
        Err(xen::Failed(what, e)) => {
            let _ = writeln!(debug::DebugPort, "xs-vmm-guest: {what}: {e}");
            debug::exit(3)
        }
    };
    selftest::run(&xen)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(debug::DebugPort, "\nxs-vmm-guest: PANIC: {info}");
    debug::exit(2)
}
