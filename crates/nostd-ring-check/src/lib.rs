//! Proof that `xs-ring` needs neither `std` nor an allocator.
//!
//! A `#![no_std]` library with no `extern crate alloc` and no global allocator that links
//! `xs-ring` and supplies only a panic handler. `cargo xtask test` (step `nostd`) builds it as
//! a static library in release with `panic = "abort"` and links it into a small C program.
//! Had any crate in xs-ring's graph linked `alloc`, the final artifact would need a global
//! allocator and rustc would refuse to build it ("no global memory allocator found"); had one
//! linked `std`, its panic handler would clash with ours.
//!
//! [`xs_ring_nostd_check`] runs both ends of a ring over a page on the stack, reconnection
//! included, so the ring code is really compiled in and exercised.

#![no_std]

use xs_ring::{Guest, RingFault, Server, SharedPage};

/// Runs a round trip, a broken index and a reconnection. Returns 0 on success, or the number
/// of the first step that failed.
#[unsafe(no_mangle)]
pub extern "C" fn xs_ring_nostd_check() -> u32 {
    let page: SharedPage = SharedPage::default();
    let mut server = Server::new(&page, Server::<&SharedPage>::FEATURES);
    let mut guest = Guest::new(&page);
    if guest.write(b"request") != Ok(7) {
        return 1;
    }
    match server.peek_request() {
        Ok(b"request") => {}
        _ => return 2,
    }
    server.consume(7);
    if server.write(b"reply") != Ok(5) {
        return 3;
    }
    let mut buf = [0u8; 8];
    match guest.read(&mut buf) {
        Ok(5) if buf.starts_with(b"reply") => {}
        _ => return 4,
    }
    // The guest corrupts its producer index: the server stops serving and says why.
    page_store_req_prod(&page, 0x8000_0000);
    if server.peek_request() != Err(RingFault::Index) {
        return 5;
    }
    if RingFault::from_code(guest.error()) != Some(RingFault::Index) {
        return 6;
    }
    guest.request_reconnect();
    if !server.recheck(false) {
        return 7;
    }
    server.reconnect();
    if !guest.reconnected() || guest.write(b"again") != Ok(5) {
        return 8;
    }
    0
}

fn page_store_req_prod(page: &SharedPage, value: u32) {
    use xs_ring::Page;
    page.store(xs_ring::layout::Field::ReqProd, value);
}

/// A panic in a freestanding program has nowhere to go: spin.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_check_passes_on_the_host() {
        assert_eq!(super::xs_ring_nostd_check(), 0);
    }
}
