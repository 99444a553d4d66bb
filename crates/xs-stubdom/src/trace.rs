//! A small fixed-size ring of recent events, dumped on fatal errors (panic, exception) so that
//! a report says what the image was doing, not only where it stopped.
//!
//! Lock-free (one atomic counter hands out slots) so that recording never waits and a dump
//! from an exception handler never deadlocks; the image is single-threaded, so a slot is never
//! written by two parties at once, and a dump racing a write at worst shows one torn entry.

use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use crate::{boot, time};

/// What happened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Event {
    /// The PVH entry (argument: the start-info address).
    Entry = 1,
    /// The GDT, TSS and IDT are loaded.
    Idt,
    /// The heap is ready (argument: its size).
    Heap,
    /// The store is ready to serve (argument: TSC ticks since entry).
    Ready,
    /// A self-test check starts (argument: its number).
    Check,
    /// A self-test check failed (argument: its number).
    CheckFailed,
    /// The pump wants the guest notified (argument: the ring's number).
    Notify,
    /// The pump stopped serving a ring (argument: the `XENSTORE_ERROR_*` code).
    RingFault,
    /// A ring was reconnected (argument: the ring's number).
    Reconnect,
    /// A domain was released (argument: its domid).
    Released,
    /// Running on Xen (argument: the CPUID base leaf).
    Xen,
    /// An exception or interrupt (argument: the vector).
    Vector,
    /// A panic.
    Panic,
    /// Leaving through isa-debug-exit (argument: the value written).
    Exit,
}

impl Event {
    const ALL: [Event; 14] = [
        Event::Entry,
        Event::Idt,
        Event::Heap,
        Event::Ready,
        Event::Check,
        Event::CheckFailed,
        Event::Notify,
        Event::RingFault,
        Event::Reconnect,
        Event::Released,
        Event::Xen,
        Event::Vector,
        Event::Panic,
        Event::Exit,
    ];

    fn name(self) -> &'static str {
        match self {
            Event::Entry => "entry",
            Event::Idt => "idt-loaded",
            Event::Heap => "heap-ready",
            Event::Ready => "store-ready",
            Event::Check => "check",
            Event::CheckFailed => "check-failed",
            Event::Notify => "notify",
            Event::RingFault => "ring-fault",
            Event::Reconnect => "reconnect",
            Event::Released => "released",
            Event::Xen => "xen",
            Event::Vector => "vector",
            Event::Panic => "panic",
            Event::Exit => "exit",
        }
    }

    fn from_code(code: u8) -> Option<Event> {
        Event::ALL.into_iter().find(|e| *e as u8 == code)
    }
}

/// Entries kept.
///
/// The ring is a static array of atomics rather than a `heapless::HistoryBuffer`: events are
/// recorded from fault handlers, which must not take a lock (the faulting code may hold it),
/// and a `HistoryBuffer` needs `&mut` access.
const LEN: usize = 32;

struct Slot {
    tsc: AtomicU64,
    event: AtomicU8,
    arg: AtomicU64,
}

static RING: [Slot; LEN] = [const {
    Slot {
        tsc: AtomicU64::new(0),
        event: AtomicU8::new(0),
        arg: AtomicU64::new(0),
    }
}; LEN];

/// Events recorded so far (the next slot is this modulo [`LEN`]).
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Records `event` with `arg`, at the current TSC.
pub(crate) fn record(event: Event, arg: u64) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let slot = &RING[n % LEN];
    slot.tsc.store(time::rdtsc(), Ordering::Relaxed);
    slot.arg.store(arg, Ordering::Relaxed);
    slot.event.store(event as u8, Ordering::Relaxed);
}

/// Writes the recorded events, oldest first, with their time since the PVH entry.
pub(crate) fn dump(out: &mut dyn fmt::Write) {
    let total = NEXT.load(Ordering::Relaxed);
    let first = total.saturating_sub(LEN);
    let _ = writeln!(
        out,
        "trace: last {} of {} events (time since entry):",
        total - first,
        total
    );
    let entry = boot::entry_tsc();
    for n in first..total {
        let slot = &RING[n % LEN];
        let name = Event::from_code(slot.event.load(Ordering::Relaxed)).map_or("?", Event::name);
        let since = slot.tsc.load(Ordering::Relaxed).wrapping_sub(entry);
        let _ = writeln!(
            out,
            "  #{n:<5} {:>12} {name:<13} {:#x}",
            time::Span(since),
            slot.arg.load(Ordering::Relaxed)
        );
    }
}
