//! A global allocator that counts: bytes currently allocated and allocation calls.
//!
//! Install it in a benchmark binary with
//! `#[global_allocator] static ALLOC: CountingAlloc = CountingAlloc::new();`
//! and read [`CountingAlloc::current`] before and after building something to learn its heap
//! footprint (requested sizes, without the allocator's own per-allocation overhead).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// [`System`] plus two counters.
#[derive(Debug)]
pub struct CountingAlloc {
    current: AtomicUsize,
    calls: AtomicU64,
}

impl CountingAlloc {
    /// A counter at zero.
    pub const fn new() -> CountingAlloc {
        CountingAlloc {
            current: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
        }
    }

    /// Bytes currently allocated (as requested by the callers).
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Number of allocation calls so far (`alloc`, `alloc_zeroed` and `realloc`).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        self.current.fetch_add(bytes, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        CountingAlloc::new()
    }
}

// SAFETY: every method forwards to `System` with the arguments it was given, so the
// allocation guarantees are `System`'s; the counters are only bookkeeping on the side and never
// influence what is returned.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller upholds `GlobalAlloc::alloc`'s contract (non-zero size), which is
        // the contract of `System.alloc`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            self.add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            self.add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: our caller guarantees `ptr` came from this allocator (hence from `System`,
        // to which every allocation is forwarded) with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        self.sub(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: our caller guarantees `ptr` came from this allocator (so from `System`) with
        // `layout`, and that `new_size` is valid for it; that is `System.realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // On failure the old block stays allocated and the counter unchanged.
            self.add(new_size);
            self.sub(layout.size());
        }
        p
    }
}
