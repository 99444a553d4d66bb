//! Proof that `xs-core` and `xs-serve` need nothing from `std` (`crates/nostd-ring-check`
//! proves that `xs-ring` needs no allocator either).
//!
//! A `#![no_std]` library that links `xs-core` and `xs-serve` and supplies what a
//! freestanding program must:
//! a panic handler and a global allocator. `cargo xtask test` (step `nostd`) builds it as a
//! static library in release with `panic = "abort"` (see `Cargo.toml` for why it is declared
//! an rlib), links the archive into a small C program and runs it. The archive holds `core`,
//! `alloc`, `xs-core` and its dependencies: had any crate in the graph linked `std`, std's
//! `panic_impl` lang item would clash with ours and the build would fail.
//!
//! [`xs_nostd_check`] drives the store through its public API, and then a guest's request
//! through xs-serve's dispatcher over a ring, so the engine and the serving layer are really
//! compiled into the archive and exercised when it runs.
//!
//! In test builds the harness brings `std`, whose panic handler and allocator are used instead
//! of ours (`cfg(not(test))`); the unit test runs the same check on the host.

#![no_std]

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;

use xs_core::store::Introduction;
use xs_core::wire::{HEADER_LEN, MsgType, push_message};
use xs_core::{DomId, Store, StoreConfig};
use xs_ring::{Guest, SharedPage};
use xs_serve::{Dispatcher, DomainState, ServeConfig, Services};

/// Exercises the store: creates one, connects as dom0, writes a node and reads it back; then
/// serves a guest's ring through the dispatcher ([`serve_a_guest`]).
///
/// Returns 0 on success, or the number of the first step that failed.
#[unsafe(no_mangle)]
pub extern "C" fn xs_nostd_check() -> u32 {
    const PATH: &[u8] = b"/local/nostd-check";
    const VALUE: &[u8] = b"no std here";

    let Ok(mut store) = Store::new(StoreConfig::new([1, 2])) else {
        return 1;
    };
    let Ok(conn) = store.connect(DomId::DOM0) else {
        return 2;
    };
    if store.write(conn, 0, PATH, VALUE).is_err() {
        return 3;
    }
    let mut out = Vec::new();
    if store.read(conn, 0, PATH, &mut out).is_err() {
        return 4;
    }
    if out != VALUE {
        return 5;
    }
    if store.check().is_err() {
        return 6;
    }
    serve_a_guest()
}

/// One guest whose page is ours, one port.
struct OnePage(Arc<SharedPage>);

impl Services for OnePage {
    type Ring = Arc<SharedPage>;
    type Error = &'static str;

    fn map_ring(&mut self, _domid: DomId, _gfn: u64) -> Result<Arc<SharedPage>, &'static str> {
        Ok(self.0.clone())
    }
    fn unmap_ring(&mut self, _domid: DomId, _ring: Arc<SharedPage>) {}
    fn bind_interdomain(&mut self, _domid: DomId, _remote: u32) -> Result<u32, &'static str> {
        Ok(7)
    }
    fn unbind(&mut self, _local_port: u32) {}
    fn notify(&mut self, _local_port: u32) {}
    fn domain_state(&mut self, _domid: DomId) -> DomainState {
        DomainState::Running
    }
    fn entropy(&mut self) -> u64 {
        // No entropy source in this proof; a real platform's comes from its RNG.
        0x243f_6a88_85a3_08d3
    }
}

/// A guest introduced to the dispatcher reads its domid over its ring. Steps 7 on.
fn serve_a_guest() -> u32 {
    let page: Arc<SharedPage> = Arc::new(SharedPage::default());
    let Ok(mut xs) = Dispatcher::new(OnePage(page.clone()), ServeConfig::default()) else {
        return 7;
    };
    if xs
        .introduce(DomId(1), Introduction { gfn: 1, evtchn: 1 })
        .is_err()
    {
        return 8;
    }
    let mut guest = Guest::new(page);
    let mut request = Vec::new();
    push_message(&mut request, MsgType::Read as u32, 1, 0, b"domid\0");
    if guest.write(&request) != Ok(request.len()) {
        return 9;
    }
    xs.on_event(7);
    let mut reply = [0u8; 64];
    match guest.read(&mut reply) {
        Ok(n) if reply.get(HEADER_LEN..n) == Some(b"1") => 0,
        _ => 10,
    }
}

/// A panic in a freestanding program has nowhere to go: spin.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(not(test))]
mod heap {
    //! A bump allocator over a static buffer: allocation moves a cursor forward with a
    //! compare-and-swap, freeing does nothing. Enough for a proof that runs once.

    use core::alloc::{GlobalAlloc, Layout};
    use core::cell::UnsafeCell;
    use core::ptr;
    use core::sync::atomic::{AtomicUsize, Ordering};

    /// Bytes available to the whole program.
    const HEAP_SIZE: usize = 1 << 20;

    struct Bump {
        heap: UnsafeCell<[u8; HEAP_SIZE]>,
        /// Offset of the first free byte in `heap`; only ever grows.
        next: AtomicUsize,
    }

    // SAFETY: `heap` is only reached through pointers handed out by `alloc`, and the atomic
    // cursor gives every caller a range no other caller gets, so shared access from several
    // threads never aliases mutable memory.
    unsafe impl Sync for Bump {}

    impl Bump {
        /// The offset range `start..end` of a fresh block for `layout` when the cursor is
        /// at `next`, or `None` if it does not fit.
        fn fit(&self, next: usize, layout: Layout) -> Option<(usize, usize)> {
            let base = self.heap.get() as usize;
            let addr = base.checked_add(next)?;
            let aligned = addr.checked_next_multiple_of(layout.align())?;
            let start = aligned.checked_sub(base)?;
            let end = start.checked_add(layout.size())?;
            (end <= HEAP_SIZE).then_some((start, end))
        }
    }

    // SAFETY: `alloc` returns either null or a pointer to `layout.size()` bytes inside `heap`,
    // aligned to `layout.align()`, that no earlier call returned (the cursor moves past it
    // atomically before the pointer is handed out) and that stay valid for the program's
    // life (`heap` is static and never reused: `dealloc` does nothing).
    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let mut next = self.next.load(Ordering::Relaxed);
            loop {
                let Some((start, end)) = self.fit(next, layout) else {
                    return ptr::null_mut();
                };
                // Relaxed is enough: the cursor only partitions the buffer; the memory
                // handed out is published to other threads by whatever the program uses to
                // share the pointer.
                match self.next.compare_exchange_weak(
                    next,
                    end,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return self.heap.get().cast::<u8>().wrapping_add(start),
                    Err(current) => next = current,
                }
            }
        }

        unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
    }

    #[global_allocator]
    static ALLOCATOR: Bump = Bump {
        heap: UnsafeCell::new([0; HEAP_SIZE]),
        next: AtomicUsize::new(0),
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn store_round_trip() {
        assert_eq!(super::xs_nostd_check(), 0);
    }
}
