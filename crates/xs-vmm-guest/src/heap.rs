//! The heap: `talc` behind a `spin` lock, over the region the linker script reserves after
//! the image (`__heap_start..__heap_end`, `HEAP_SIZE` in `linker/vmm-guest.ld`). The store
//! client and the self-test need a few hundred KiB; the benchmark none more.

use talc::TalcLock;
use talc::source::Manual;

#[global_allocator]
static HEAP: TalcLock<spin::mutex::SpinMutex<()>, Manual> = TalcLock::new(Manual);

unsafe extern "C" {
    static __heap_start: u8;
    static __heap_end: u8;
}

/// Hands the heap region to the allocator (once, before anything allocates).
pub(crate) fn init() {
    let start = (&raw const __heap_start) as usize;
    let end = (&raw const __heap_end) as usize;
    // SAFETY: the region is the linker script's reservation for the heap (nothing else is
    // linked there), inside the guest's RAM (a linker-script assertion) and identity-mapped;
    // it is claimed once, here, before anything allocates.
    let claimed = unsafe { HEAP.lock().claim(start as *mut u8, end - start) };
    assert!(claimed.is_some(), "the allocator refused the heap region");
}
