//! The heap: `talc` (a binned, boundary-tagged allocator) behind a `spin` lock, over a fixed
//! region the linker script reserves right after the image (`__heap_start..__heap_end`,
//! `HEAP_SIZE` in `linker/stubdom.ld`).
//!
//! Sizing: the self-test populates 100 introduced domains with 1000 nodes each through the
//! store and reports the bytes then in use (`figure: heap for 100 domains x 1000 nodes`):
//! 10.2 MiB allocated, 11.8 MiB with the allocator's overhead. `HEAP_SIZE` is 32 MiB: that
//! load with room to spare for watches, transactions and queued replies. Out of memory is a
//! panic (reported, then a fatal exit); the store's own memory quotas keep each domain well
//! below it.

use talc::TalcLock;
use talc::source::Manual;

use crate::startinfo::StartInfo;
use crate::trace::{self, Event};

#[global_allocator]
static HEAP: TalcLock<spin::mutex::SpinMutex<()>, Manual> = TalcLock::new(Manual);

unsafe extern "C" {
    static __heap_start: u8;
    static __heap_end: u8;
    static __image_start: u8;
    static __image_end: u8;
}

/// The heap's region `[start, end)`: what [`init`] claimed, or before that the linker
/// script's reservation.
pub(crate) fn region() -> (usize, usize) {
    CLAIMED.get().copied().unwrap_or_else(reserved)
}

/// The linker script's reservation (`HEAP_SIZE` bytes).
fn reserved() -> (usize, usize) {
    (
        (&raw const __heap_start) as usize,
        (&raw const __heap_end) as usize,
    )
}

/// What [`init`] claimed.
static CLAIMED: spin::Once<(usize, usize)> = spin::Once::new();

/// The least heap worth starting with.
const MIN_HEAP: usize = 4 << 20;

/// The image's memory `[start, end)` (text through bss).
pub(crate) fn image() -> (usize, usize) {
    (
        (&raw const __image_start) as usize,
        (&raw const __image_end) as usize,
    )
}

/// Hands the heap to the allocator: the linker script's reservation, cut short where the
/// memory map's RAM ends (a small domain gets a smaller heap; the start info and memory map
/// have been copied out by then, should the loader have put them there).
pub(crate) fn init(info: &StartInfo) {
    let (start, reserved_end) = reserved();
    let end = match info.ram_end(start as u64) {
        Some(ram_end) => reserved_end.min(usize::try_from(ram_end).unwrap_or(usize::MAX)),
        None if info.regions().is_empty() => reserved_end,
        None => panic!("the heap's start {start:#x} is not RAM in the memory map"),
    };
    if end < start + MIN_HEAP {
        panic!(
            "only {} KiB of RAM for the heap at {start:#x}: give the machine at least {} MiB",
            end.saturating_sub(start) / 1024,
            (start + MIN_HEAP).div_ceil(1 << 20)
        );
    }
    // SAFETY: `[start, end)` lies inside the linker script's reservation for the heap
    // (nothing else is linked there), in the identity-mapped first 4 GiB (a linker-script
    // assertion), and in RAM (the memory map says so, when the loader gave one); it is
    // claimed once, here, before anything allocates.
    let claimed = unsafe { HEAP.lock().claim(start as *mut u8, end - start) };
    assert!(claimed.is_some(), "the allocator refused the heap region");
    CLAIMED.call_once(|| (start, end));
    trace::record(Event::Heap, (end - start) as u64);
}

/// The allocator's counters.
pub(crate) fn counters() -> talc::base::Counters {
    *HEAP.lock().counters()
}

/// The heap's use, for the store's `CONTROL memreport`.
pub(crate) fn usage() -> x86_glue::HeapUse {
    let (start, end) = region();
    x86_glue::HeapUse {
        in_use: counters().allocated_bytes,
        size: end.saturating_sub(start),
    }
}
